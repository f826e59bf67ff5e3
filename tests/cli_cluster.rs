//! `facekit cluster` on real photos: the output tree and clusters.json, safety of copy / link /
//! move (+ undo, + SIGKILL mid-move), name collisions, non-empty OUT, and the same-photo rule.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{facekit, fixture};
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every file under `dir` (relative path -> SHA-256 of its bytes).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    facekit::io::content_hash(&bytes),
                );
            }
        }
    }
    out
}

/// A small real album: two people with two photos each (in subfolders), a group photo, a photo
/// without a face, a corrupt JPEG and a text file.
fn album(root: &Path) -> PathBuf {
    let a = root.join("album");
    std::fs::create_dir_all(a.join("trip")).unwrap();
    std::fs::create_dir_all(a.join("home")).unwrap();
    for (f, dir) in [
        ("Abel_Pacheco_0001.jpg", "trip"),
        ("Abel_Pacheco_0004.jpg", "home"),
        ("Akhmed_Zakayev_0001.jpg", "trip"),
        ("Akhmed_Zakayev_0003.jpg", "home"),
    ] {
        std::fs::copy(fixture("lfw").join(f), a.join(dir).join(f)).unwrap();
    }
    std::fs::copy(fixture("2008_001322.jpg"), a.join("group.jpg")).unwrap();
    let photo = image::open(fixture("2008_001322.jpg")).unwrap().to_rgb8();
    image::imageops::crop_imm(&photo, 0, 0, 120, 90)
        .to_image()
        .save(a.join("wall.jpg"))
        .unwrap();
    let jpeg = std::fs::read(fixture("lfw/Abel_Pacheco_0001.jpg")).unwrap();
    std::fs::write(a.join("broken.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
    std::fs::write(a.join("notes.txt"), "not a photo").unwrap();
    a
}

/// Runs `facekit cluster`. Abel Pacheco's two photos are 0.51 apart, just over the default
/// clustering threshold (0.50), so the tree tests link at 0.55.
fn run_cluster(args: &[&str]) -> (std::process::Output, Option<Value>) {
    let threshold: &[&str] = if args.contains(&"--undo") || args.contains(&"--threshold") {
        &[]
    } else {
        &["--threshold", "0.55"]
    };
    let out = facekit(&[&["cluster"], args, threshold].concat());
    let v = serde_json::from_slice(&out.stdout).ok();
    (out, v)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn copy_builds_the_tree_and_leaves_the_album_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let album = album(tmp.path());
    let before = snapshot(&album);
    let out = tmp.path().join("out");
    let (o, v) = run_cluster(&[s(&album), "--out", s(&out), "--json", "--no-cache"]);
    // The corrupt JPEG is reported by name and makes the exit code 2; the rest is done.
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("broken.jpg"));
    assert_eq!(snapshot(&album), before, "copy mode changed the album");
    let v = v.expect("JSON summary");
    assert_eq!(v["people"], 2);
    assert_eq!(v["images"], 7);
    assert_eq!(v["failed"], 1);
    assert_eq!(v["no_faces"], 1);
    // One folder per person with both of their photos; the group photo's faces are unknown.
    let p1 = files_in(&out.join("person_0001"));
    let p2 = files_in(&out.join("person_0002"));
    let mut people = [p1.join(","), p2.join(",")];
    people.sort();
    assert_eq!(
        people,
        [
            "Abel_Pacheco_0001.jpg,Abel_Pacheco_0004.jpg",
            "Akhmed_Zakayev_0001.jpg,Akhmed_Zakayev_0003.jpg"
        ]
    );
    assert_eq!(files_in(&out.join("unknown")), ["group.jpg"]);
    assert_eq!(files_in(&out.join("no_faces")), ["wall.jpg"]);
    // Copies are byte-identical.
    assert_eq!(
        std::fs::read(out.join("unknown/group.jpg")).unwrap(),
        std::fs::read(album.join("group.jpg")).unwrap()
    );
    let json = common::read_json(&out.join("clusters.json"));
    let faces = json["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 7, "4 portraits + 3 faces in the group photo");
    let group: Vec<&Value> = faces
        .iter()
        .filter(|f| f["path"].as_str().unwrap().ends_with("group.jpg"))
        .collect();
    assert_eq!(group.len(), 3);
    assert!(group.iter().all(|f| f["person"].is_null()));
    assert_eq!(group[0]["box"].as_array().unwrap().len(), 4);
    let clusters = json["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 2);
    assert_eq!(clusters[0]["size"], 2);
    assert!(clusters[0]["representative"]["path"].is_string());
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert_eq!(html.matches("<img").count(), 7);

    // A non-empty OUT is refused (untouched) without --force.
    let out_before = snapshot(&out);
    let (o, _) = run_cluster(&[s(&album), "--out", s(&out), "--no-cache"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));
    assert_eq!(snapshot(&out), out_before);
    // With --force nothing is replaced: every name collision gets a suffix.
    let (o, _) = run_cluster(&[s(&album), "--out", s(&out), "--force", "--no-cache"]);
    assert_eq!(o.status.code(), Some(2));
    for (path, hash) in &out_before {
        assert_eq!(&snapshot(&out)[path], hash, "{} changed", path.display());
    }
    assert!(out.join("unknown/group-1.jpg").exists());
    assert!(out.join("clusters-1.json").exists());
    assert_eq!(snapshot(&album), before);
}

#[test]
fn link_mode_links_and_collisions_get_suffixes() {
    let tmp = tempfile::tempdir().unwrap();
    let album = tmp.path().join("album");
    // Two different photos of one person with the same file name, in two folders.
    for (d, f) in [
        ("a", "Abel_Pacheco_0001.jpg"),
        ("b", "Abel_Pacheco_0004.jpg"),
    ] {
        std::fs::create_dir_all(album.join(d)).unwrap();
        std::fs::copy(fixture("lfw").join(f), album.join(d).join("me.jpg")).unwrap();
    }
    let before = snapshot(&album);
    let out = tmp.path().join("out");
    let (o, _) = run_cluster(&[s(&album), "--out", s(&out), "--mode", "link", "--no-cache"]);
    // (linked at 0.55: the two photos are 0.51 apart)
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(files_in(&out.join("person_0001")), ["me-1.jpg", "me.jpg"]);
    assert_eq!(snapshot(&album), before);
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let linked = std::fs::metadata(out.join("person_0001/me.jpg")).unwrap();
        let original = std::fs::metadata(album.join("a/me.jpg")).unwrap();
        assert_eq!(
            linked.ino(),
            original.ino(),
            "a hard link on the same filesystem"
        );
    }
}

#[test]
fn move_and_undo_round_trip_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let album = album(tmp.path());
    let before = snapshot(&album);
    let out = tmp.path().join("out");
    let (o, _) = run_cluster(&[s(&album), "--out", s(&out), "--mode", "move", "--no-cache"]);
    assert_eq!(o.status.code(), Some(2), "the broken JPEG");
    assert!(String::from_utf8_lossy(&o.stdout).contains("--undo"));
    // Only the unreadable file and the text file stay behind.
    let left: Vec<PathBuf> = snapshot(&album).into_keys().collect();
    assert_eq!(
        left,
        [PathBuf::from("broken.jpg"), PathBuf::from("notes.txt")]
    );
    let (o, _) = run_cluster(&["--undo", s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("6 photo(s) moved back"));
    assert_eq!(snapshot(&album), before);
}

/// Kills the real process (SIGKILL) during the move phase at several points; every photo is
/// either in place or at a destination the manifest records, and undo restores the album.
#[test]
fn move_killed_at_any_point_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let seed_album = tmp.path().join("seed");
    std::fs::create_dir_all(&seed_album).unwrap();
    let people = [
        "Abel_Pacheco_0001.jpg",
        "Abel_Pacheco_0004.jpg",
        "Akhmed_Zakayev_0001.jpg",
        "Akhmed_Zakayev_0003.jpg",
    ];
    for f in people {
        std::fs::copy(fixture("lfw").join(f), seed_album.join(f)).unwrap();
    }
    // Warm the cache so the runs below reach the move phase at once.
    let (o, _) = run_cluster(&[
        s(&seed_album),
        "--out",
        s(&tmp.path().join("warm")),
        "--cache-dir",
        s(&cache),
    ]);
    assert!(o.status.success());
    for (round, kill_after_lines) in [0usize, 1, 7, 40, 120].into_iter().enumerate() {
        let album = tmp.path().join(format!("album{round}"));
        std::fs::create_dir_all(&album).unwrap();
        for k in 0..160 {
            let f = people[k % 4];
            std::fs::copy(seed_album.join(f), album.join(format!("{k:03}_{f}"))).unwrap();
        }
        let before = snapshot(&album);
        let out = tmp.path().join(format!("out{round}"));
        let manifest = out.join(facekit::organize::MANIFEST);
        let mut child = Command::new(env!("CARGO_BIN_EXE_facekit"))
            .args(["cluster", s(&album), "--out", s(&out), "--mode", "move"])
            .args(["--cache-dir", s(&cache)])
            .env_remove("FACEKIT_MODELS")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            let lines = std::fs::read_to_string(&manifest)
                .map(|t| t.lines().count())
                .unwrap_or(0);
            let done = child.try_wait().unwrap().is_some();
            if lines >= kill_after_lines.max(1) || done || start.elapsed() > Duration::from_secs(60)
            {
                break;
            }
            if kill_after_lines == 0 && out.exists() {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // Every original is in place or recorded (and present) in the manifest.
        let text = std::fs::read_to_string(&manifest).unwrap_or_default();
        let recorded: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        for rel in before.keys() {
            let original = album.join(rel);
            if original.exists() {
                continue;
            }
            let abs = std::path::absolute(&original).unwrap();
            let rec = recorded
                .iter()
                .find(|r| r["op"] == "move" && Path::new(r["from"].as_str().unwrap()) == abs)
                .unwrap_or_else(|| {
                    panic!("round {round}: {} gone, not in manifest", rel.display())
                });
            assert!(Path::new(rec["to"].as_str().unwrap()).exists());
        }
        let in_place = before.keys().filter(|r| album.join(r).exists()).count();
        eprintln!(
            "round {round}: killed with {} of {} photos moved",
            before.len() - in_place,
            before.len()
        );
        if manifest.exists() {
            let (o, _) = run_cluster(&["--undo", s(&out)]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        assert_eq!(
            snapshot(&album),
            before,
            "round {round}: album not restored"
        );
    }
}

/// Two near-identical faces in one photo (the same portrait twice, side by side) never end up in
/// the same person, even with --min-size 1 and a generous threshold.
#[test]
fn faces_of_one_photo_are_never_the_same_person() {
    let tmp = tempfile::tempdir().unwrap();
    let album = tmp.path().join("album");
    std::fs::create_dir_all(&album).unwrap();
    let face = image::open(fixture("lfw/Abel_Pacheco_0001.jpg"))
        .unwrap()
        .to_rgb8();
    let mut twice = image::RgbImage::new(face.width() * 2, face.height());
    image::imageops::replace(&mut twice, &face, 0, 0);
    image::imageops::replace(&mut twice, &face, face.width() as i64, 0);
    twice.save(album.join("twice.png")).unwrap();
    std::fs::copy(
        fixture("lfw/Abel_Pacheco_0004.jpg"),
        album.join("other.jpg"),
    )
    .unwrap();
    for algorithm in ["chinese-whispers", "dbscan", "kmeans"] {
        let out = tmp.path().join(format!("out-{algorithm}"));
        let (o, _) = run_cluster(&[
            s(&album),
            "--out",
            s(&out),
            "--no-cache",
            "--algorithm",
            algorithm,
            "--min-size",
            "1",
            "--threshold",
            "0.9",
            "--k",
            "2",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let json = common::read_json(&out.join("clusters.json"));
        let twins: Vec<&Value> = json["faces"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["path"].as_str().unwrap().ends_with("twice.png"))
            .collect();
        assert_eq!(twins.len(), 2, "{algorithm}: both faces detected");
        assert!(
            twins[0]["person"].is_null() || twins[0]["person"] != twins[1]["person"],
            "{algorithm}: {twins:?}"
        );
    }
}

/// The workflow `facekit cluster` runs is a library call: `facekit::album::run` on the same
/// album (fresh library, same threshold) finds the same photos, faces, people and failures the
/// CLI wrote to clusters.json, and the folders each photo went to are its `destinations`.
#[test]
fn the_library_workflow_is_what_the_cli_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let a = album(tmp.path());
    // OUT inside the album: left out of the album by both.
    let out = a.join("people");
    let (o, v) = run_cluster(&[s(&a), "--out", s(&out), "--no-cache", "--json"]);
    assert_eq!(o.status.code(), Some(2), "broken.jpg fails");
    let v = v.unwrap();
    let file = common::read_json(&out.join("clusters.json"));

    let library = facekit::library::Library::in_memory().unwrap();
    let pipeline = facekit::Pipeline::new().unwrap();
    let config = facekit::album::AlbumConfig {
        cluster: facekit::cluster::ClusterConfig {
            threshold: 0.55,
            ..Default::default()
        },
        exclude: vec![out.clone()],
        ..Default::default()
    };
    let report =
        facekit::album::run(std::slice::from_ref(&a), &library, &pipeline, &config, &()).unwrap();
    assert_eq!(report.inputs.len(), v["images"].as_u64().unwrap() as usize);
    assert!(report.inputs.iter().all(|p| !p.starts_with(&out)));
    assert_eq!(report.album.people.len(), 2);
    assert_eq!(
        report.album.people.len(),
        v["people"].as_u64().unwrap() as usize
    );
    assert_eq!(
        report.album.unknown(),
        v["unknown_faces"].as_u64().unwrap() as usize
    );
    let faces: Vec<(String, u64, Option<i64>)> = file["faces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["face"].as_u64().unwrap(),
                f["person"].as_i64(),
            )
        })
        .collect();
    let ours: Vec<(String, u64, Option<i64>)> = report
        .album
        .faces
        .iter()
        .map(|f| {
            (
                report.inputs[f.photo].to_str().unwrap().to_string(),
                f.index as u64,
                f.person,
            )
        })
        .collect();
    assert_eq!(ours, faces);
    let no_faces: Vec<&Path> = report
        .no_faces
        .iter()
        .map(|&i| report.inputs[i].as_path())
        .collect();
    assert_eq!(no_faces, [a.join("wall.jpg")]);
    let failed: Vec<&Path> = report.failed.iter().map(|f| f.path.as_path()).collect();
    assert_eq!(failed, [a.join("broken.jpg")]);
    // Each photo is in exactly the folders `destinations` names (file names are unique here).
    for (input, dests) in report.inputs.iter().zip(report.destinations()) {
        let name = input.file_name().unwrap().to_string_lossy().into_owned();
        for d in &dests {
            assert!(files_in(&out.join(d)).contains(&name), "{name} not in {d}");
        }
        let placed = ["person_0001", "person_0002", "unknown", "no_faces"]
            .iter()
            .filter(|d| files_in(&out.join(d)).contains(&name))
            .count();
        assert_eq!(placed, dests.len(), "{name}: {dests:?}");
    }
}

/// An earlier run's OUT inside the album (here `people/`, then a second run into `people2/`) is
/// recognised by its clusters.json and left out, so no photo counts twice; clustering an output
/// folder itself, named as the album, still works.
#[test]
fn earlier_outputs_inside_the_album_are_not_counted_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let a = album(tmp.path());
    let first = a.join("people");
    let (_, v1) = run_cluster(&[s(&a), "--out", s(&first), "--json"]);
    let images = v1.unwrap()["images"].as_u64().unwrap();
    let second = a.join("people2");
    let (o, v2) = run_cluster(&[s(&a), "--out", s(&second), "--json"]);
    assert_eq!(v2.unwrap()["images"].as_u64().unwrap(), images);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{}: an earlier cluster output", s(&first))),
        "{err}"
    );
    // The earlier output as the album itself: its photos are clustered.
    let (_, v3) = run_cluster(&[s(&first), "--out", s(&tmp.path().join("again")), "--json"]);
    assert!(v3.unwrap()["images"].as_u64().unwrap() > 0);
}
