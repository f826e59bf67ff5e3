//! `facekit cluster` output safety with the real binary: the OUT lock, symlinked photos, non-UTF-8
//! and 255-byte names through move + undo, "nothing to undo", and SIGKILL of a move at seeded
//! random moments followed by undo (albums of files, relative and absolute symlinks and an odd
//! name: nothing lost or changed, nothing left behind in OUT).
#![cfg(unix)]

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::fixture;
use facekit::organize::{LOCK, MANIFEST};

const PEOPLE: [&str; 4] = [
    "Abel_Pacheco_0001.jpg",
    "Abel_Pacheco_0004.jpg",
    "Akhmed_Zakayev_0001.jpg",
    "Akhmed_Zakayev_0003.jpg",
];

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `facekit cluster` (linking at 0.55: Abel Pacheco's two photos are 0.51 apart).
fn cluster(args: &[&str]) -> Output {
    let threshold: &[&str] = if args.contains(&"--undo") {
        &[]
    } else {
        &["--threshold", "0.55"]
    };
    common::facekit(&[&["cluster"], args, threshold].concat())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Everything under `dir` (relative path -> the SHA-256 of a file, `-> text` for a symlink, `/`
/// for a folder).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if meta.is_dir() {
                stack.push(p.clone());
                "/".into()
            } else {
                facekit::io::content_hash(&std::fs::read(&p).unwrap())
            };
            out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), what);
        }
    }
    out
}

/// The four portraits in `dir`.
fn portraits(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for f in PEOPLE {
        std::fs::copy(fixture("lfw").join(f), dir.join(f)).unwrap();
    }
    dir.to_path_buf()
}

#[test]
fn a_run_into_a_locked_out_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let album = portraits(&tmp.path().join("album"));
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // Another run holds OUT.
    let lock = std::fs::File::create(out.join(LOCK)).unwrap();
    lock.lock().unwrap();
    let album_before = snapshot(&album);
    for (user_file, extra) in [
        (false, &[][..]),
        (true, &[][..]),
        (true, &["--force", "--mode", "move"][..]),
    ] {
        if user_file {
            std::fs::write(out.join("mine.txt"), "the user's").unwrap();
        }
        let out_before = snapshot(&out);
        let o = cluster(&[&[s(&album), "--out", s(&out), "--no-cache"], extra].concat());
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("OUT is being written by another facekit run"),
            "{}",
            stderr(&o)
        );
        assert_eq!(snapshot(&out), out_before, "{extra:?}: OUT changed");
        assert_eq!(snapshot(&album), album_before, "{extra:?}: album changed");
    }
    let o = cluster(&["--undo", s(&out)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("OUT is being written by another facekit run"));
    // Released: the lock file an earlier run left is not content, so no --force is needed.
    drop(lock);
    std::fs::remove_file(out.join("mine.txt")).unwrap();
    let o = cluster(&[s(&album), "--out", s(&out), "--no-cache"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("person_0001").is_dir());
    // A copy-mode output has nothing to undo.
    let o = cluster(&["--undo", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("nothing to undo"), "{}", stdout(&o));
}

#[test]
fn undo_without_moves_says_nothing_to_undo() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = cluster(&["--undo", s(&empty)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("nothing to undo"), "{}", stdout(&o));
    assert!(
        snapshot(&empty).is_empty(),
        "undo wrote into an empty folder"
    );
    let o = cluster(&["--undo", s(&empty), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["nothing_to_undo"], true);
    // A missing OUT is still an error that names it.
    let missing = tmp.path().join("no-such-out");
    let o = cluster(&["--undo", s(&missing)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no-such-out"), "{}", stderr(&o));
    assert!(!missing.exists());
}

/// An album of symlinks: four relative links (two folders deep) and one absolute link to photos
/// in a library folder beside it.
fn linked_album(root: &Path) -> (PathBuf, PathBuf) {
    let lib = portraits(&root.join("lib"));
    let album = root.join("album");
    std::fs::create_dir_all(album.join("trip")).unwrap();
    for (k, f) in PEOPLE.iter().enumerate() {
        let (link, text) = if k % 2 == 0 {
            (album.join(format!("l{k}.jpg")), format!("../lib/{f}"))
        } else {
            (
                album.join(format!("trip/l{k}.jpg")),
                format!("../../lib/{f}"),
            )
        };
        symlink(text, link).unwrap();
    }
    symlink(lib.join(PEOPLE[3]), album.join("abs.jpg")).unwrap();
    (album, lib)
}

#[test]
fn symlinked_photos_keep_their_target_in_link_and_move_modes_and_undo_restores_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let (album, lib) = linked_album(tmp.path());
    let before = snapshot(&album);
    let lib_before = snapshot(&lib);

    // Link mode links the real photo, not the (relative) link.
    let linked = tmp.path().join("linked");
    let o = cluster(&[s(&album), "--out", s(&linked), "--mode", "link"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let real_inodes: Vec<u64> = PEOPLE
        .iter()
        .map(|f| std::fs::metadata(lib.join(f)).unwrap().ino())
        .collect();
    let mut n = 0;
    for (p, what) in snapshot(&linked) {
        if p.starts_with("person_0001") || p.starts_with("person_0002") {
            if what == "/" {
                continue;
            }
            let m = std::fs::symlink_metadata(linked.join(&p)).unwrap();
            assert!(
                m.is_file() && real_inodes.contains(&m.ino()),
                "{}: {what}",
                p.display()
            );
            n += 1;
        }
    }
    assert_eq!(n, 5);

    // Move: the moved links still reach their photos; undo puts back the same link texts.
    let out = tmp.path().join("out");
    let o = cluster(&[
        s(&album),
        "--out",
        s(&out),
        "--mode",
        "move",
        "--cache-dir",
        s(&cache),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        snapshot(&album).values().all(|w| w == "/"),
        "every link moved"
    );
    let mut moved = 0;
    for (p, what) in snapshot(&out) {
        if p.starts_with("person_0001") || p.starts_with("person_0002") {
            if what == "/" {
                continue;
            }
            let bytes = std::fs::read(out.join(&p)).unwrap_or_else(|e| {
                panic!("{} ({what}) does not reach its photo: {e}", p.display())
            });
            assert!(PEOPLE
                .iter()
                .any(|f| std::fs::read(lib.join(f)).unwrap() == bytes));
            moved += 1;
        }
    }
    assert_eq!(moved, 5);
    let o = cluster(&["--undo", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("5 photo(s) moved back"),
        "{}",
        stdout(&o)
    );
    assert_eq!(snapshot(&album), before);
    assert_eq!(snapshot(&lib), lib_before);
}

#[test]
fn odd_and_long_names_move_and_undo_and_no_empty_file_is_left() {
    let tmp = tempfile::tempdir().unwrap();
    let album = tmp.path().join("album");
    for d in ["x", "y"] {
        std::fs::create_dir_all(album.join(d)).unwrap();
    }
    let lfw = fixture("lfw");
    // Not UTF-8; 251 bytes (the old temporary name was too long); 255 bytes twice, into one
    // person's folder (the collision suffix must shorten the stem).
    let odd = album.join(OsStr::from_bytes(b"Abel \xff\xfe\xe9.jpg"));
    std::fs::copy(lfw.join(PEOPLE[0]), &odd).unwrap();
    let n251 = format!("{}.jpg", "a".repeat(247));
    std::fs::copy(lfw.join(PEOPLE[1]), album.join(&n251)).unwrap();
    let n255 = format!("{}.jpg", "é".repeat(125) + "z");
    assert_eq!(n255.len(), 255);
    std::fs::copy(lfw.join(PEOPLE[2]), album.join("x").join(&n255)).unwrap();
    std::fs::copy(lfw.join(PEOPLE[3]), album.join("y").join(&n255)).unwrap();
    let before = snapshot(&album);

    // Copy mode: the 251-byte name copies; the collision fits in 255 bytes.
    let copied = tmp.path().join("copied");
    let o = cluster(&[s(&album), "--out", s(&copied), "--no-cache"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(snapshot(&album), before);
    let names = |out: &Path| -> Vec<(PathBuf, String)> {
        snapshot(out)
            .into_iter()
            .filter(|(p, w)| p.to_string_lossy().starts_with("person_00") && w != "/")
            .collect()
    };
    assert_eq!(names(&copied).len(), 4);
    for (p, _) in names(&copied) {
        assert!(p.file_name().unwrap().len() <= 255);
    }

    let out = tmp.path().join("out");
    let o = cluster(&[s(&album), "--out", s(&out), "--mode", "move", "--no-cache"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(snapshot(&album).values().all(|w| w == "/"), "all moved");
    let moved = names(&out);
    assert_eq!(moved.len(), 4);
    assert!(moved
        .iter()
        .any(|(p, _)| p.file_name().unwrap().as_bytes() == b"Abel \xff\xfe\xe9.jpg"));
    for (p, _) in snapshot(&out) {
        let m = std::fs::symlink_metadata(out.join(&p)).unwrap();
        assert!(
            m.is_dir() || m.len() > 0 || p == Path::new(LOCK),
            "{}: empty",
            p.display()
        );
    }
    let manifest = std::fs::read_to_string(out.join(MANIFEST)).unwrap();
    assert!(manifest.contains("{\"bytes\":"), "{manifest}");
    let o = cluster(&["--undo", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("4 photo(s) moved back"),
        "{}",
        stdout(&o)
    );
    assert_eq!(snapshot(&album), before);
}

/// One round's album: regular photos, relative links (in the album and a subfolder), absolute
/// links, and a photo whose name is not UTF-8.
fn mixed_album(album: &Path, lib: &Path) {
    assert_eq!(album.parent(), lib.parent(), "relative links go ../lib");
    std::fs::create_dir_all(album.join("sub")).unwrap();
    for k in 0..24 {
        let f = PEOPLE[k % 4];
        std::fs::copy(lib.join(f), album.join(format!("{k:02}_{f}"))).unwrap();
    }
    for (k, f) in PEOPLE.iter().enumerate() {
        symlink(format!("../lib/{f}"), album.join(format!("rel{k}_{f}"))).unwrap();
        symlink(
            format!("../../lib/{f}"),
            album.join("sub").join(format!("rel{k}_{f}")),
        )
        .unwrap();
        symlink(lib.join(f), album.join(format!("abs{k}_{f}"))).unwrap();
    }
    std::fs::copy(
        lib.join(PEOPLE[1]),
        album.join(OsStr::from_bytes(b"odd_\xff\xfe.jpg")),
    )
    .unwrap();
}

/// SIGKILL of the real `cluster --mode move` at 24 seeded random moments (a random number of
/// manifest lines, or a random delay after start, then a random few hundred microseconds), then
/// `--undo`: every album entry is back with the same content (links: the same text), and OUT
/// holds nothing but the manifest, the lock and what undo reported.
#[test]
fn move_killed_at_random_moments_then_undo_restores_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let lib = portraits(&root.join("lib"));
    let cache = root.join("cache");
    // Warm the embedding cache so each round reaches the moves at once.
    let o = cluster(&[
        s(&lib),
        "--out",
        s(&root.join("warm")),
        "--cache-dir",
        s(&cache),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut rng = facekit::Rng::new(0x5afe);
    let started = Instant::now();
    let (mut kills_mid_move, mut completed) = (0, 0);
    for round in 0..24 {
        let album = root.join(format!("album{round}"));
        mixed_album(&album, &lib);
        let before = snapshot(&album);
        let entries = before.values().filter(|w| *w != "/").count();
        let out = root.join(format!("out{round}"));
        let manifest = out.join(MANIFEST);
        // About one manifest line per entry plus one per folder.
        let by_lines = rng.below(2) == 0;
        let target_lines = rng.below(entries + 2);
        let delay = Duration::from_millis(rng.below(600) as u64);
        let jitter = Duration::from_micros(rng.below(400) as u64);
        let mut child = Command::new(env!("CARGO_BIN_EXE_facekit"))
            .args(["cluster", s(&album), "--out", s(&out), "--mode", "move"])
            .args(["--threshold", "0.55", "--cache-dir", s(&cache)])
            .env_remove("FACEKIT_MODELS")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let mut exited = false;
        loop {
            if child.try_wait().unwrap().is_some() {
                exited = true;
                break;
            }
            let reached = if by_lines {
                std::fs::read(&manifest)
                    .map(|t| t.iter().filter(|&&b| b == b'\n').count())
                    .is_ok_and(|n| n >= target_lines)
            } else {
                start.elapsed() >= delay
            };
            if reached || start.elapsed() > Duration::from_secs(30) {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        std::thread::sleep(jitter);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let left_in_album = snapshot(&album).values().filter(|w| *w != "/").count();
        let all_moved = left_in_album == 0;
        completed += usize::from(exited);
        kills_mid_move += usize::from(left_in_album > 0 && left_in_album < entries);
        eprintln!(
            "round {round}: {} at {}, {} of {entries} moved{}",
            if by_lines { "manifest lines" } else { "delay" },
            if by_lines {
                target_lines.to_string()
            } else {
                format!("{delay:?}")
            },
            entries - left_in_album,
            if exited { " (run had ended)" } else { "" }
        );

        let o = cluster(&["--undo", s(&out), "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("round {round}: {e}: {}", stderr(&o)));
        let problems = report["problems"].as_array().unwrap();
        assert!(problems.is_empty(), "round {round}: {problems:?}");
        assert!(o.status.success(), "round {round}: {}", stderr(&o));
        assert_eq!(
            snapshot(&album),
            before,
            "round {round}: album not restored"
        );
        // Nothing is left in OUT but the manifest, the lock, and the reports a run writes
        // after its last move.
        if out.exists() {
            for (p, _) in snapshot(&out) {
                let name = p.to_string_lossy();
                let ok = name == MANIFEST
                    || name == LOCK
                    || (all_moved
                        && (name == "clusters.json"
                            || name == "index.html"
                            || name.starts_with(".clusters.json.")
                            || name.starts_with(".index.html.")));
                assert!(ok, "round {round}: {name} left in OUT");
            }
        }
        // Each round's checks are done: a fresh album for the next one.
        std::fs::remove_dir_all(&album).unwrap();
        let _ = std::fs::remove_dir_all(&out);
    }
    eprintln!(
        "{kills_mid_move} kills in the middle of the moves, {completed} runs ended first, {:?}",
        started.elapsed()
    );
    assert!(kills_mid_move >= 10, "too few kills hit the moves");
}
