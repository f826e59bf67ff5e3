//! The CLI contract under faults that are not about one bad image: unusable entries of a labeled
//! folder are counted as failures, a damaged embedding cache is read around (never a failure),
//! the cache key follows the weights' bytes, and `align` never lets one input's chips replace
//! another's.

mod common;

use std::path::Path;

use common::{facekit, fixture, json_lines};
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A labeled folder (two identity subfolders) with the committed LFW photos.
fn labeled(root: &Path) {
    for (who, files) in [
        (
            "Abel_Pacheco",
            ["Abel_Pacheco_0001.jpg", "Abel_Pacheco_0004.jpg"],
        ),
        (
            "Akhmed_Zakayev",
            ["Akhmed_Zakayev_0001.jpg", "Akhmed_Zakayev_0003.jpg"],
        ),
    ] {
        std::fs::create_dir_all(root.join(who)).unwrap();
        for f in files {
            std::fs::copy(fixture("lfw").join(f), root.join(who).join(f)).unwrap();
        }
    }
}

/// An identity folder entry that cannot be used (here a dangling link and a file named like a
/// photo that is not one) is named, counted in `images.failed`, and the exit code is 2; the
/// sweep over the rest still completes.
#[test]
fn sweep_counts_unusable_entries_of_a_labeled_folder() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    labeled(dir.path());
    #[cfg(unix)]
    std::os::unix::fs::symlink(
        dir.path().join("gone.jpg"),
        dir.path().join("Abel_Pacheco/Abel_Pacheco_0009.jpg"),
    )
    .unwrap();
    std::fs::write(dir.path().join("Akhmed_Zakayev/notes.jpg"), b"not a photo").unwrap();
    let out = facekit(&[
        "threshold-sweep",
        "--json",
        s(dir.path()),
        "--cache-dir",
        s(cache.path()),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let unusable = if cfg!(unix) { 2 } else { 1 };
    assert_eq!(v["images"]["failed"], unusable, "{v}");
    assert_eq!(v["images"]["total"], 4 + unusable);
    assert_eq!(v["pairs"]["same"], 2);
    let err = stderr(&out);
    assert!(
        err.contains("notes.jpg") && err.contains("not a recognised image"),
        "{err}"
    );
    #[cfg(unix)]
    assert!(
        err.contains("Abel_Pacheco_0009.jpg") && err.contains("dangling"),
        "{err}"
    );
}

/// A library file that is not a database is refused with the reason, exit 2, and left as it
/// was; `--no-cache` still works.
#[test]
fn a_library_that_is_not_a_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    labeled(dir.path());
    let bogus = tmp.path().join("library.db");
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&bogus, &garbage).unwrap();
    let out = facekit(&[
        "threshold-sweep",
        "--json",
        s(dir.path()),
        "--library",
        s(&bogus),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("library.db") && err.contains("not a facekit library"),
        "{err}"
    );
    assert_eq!(std::fs::read(&bogus).unwrap(), garbage);
    let ok = facekit(&["threshold-sweep", "--json", s(dir.path()), "--no-cache"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
}

/// The cache key includes the SHA-256 of the weights: the same weights from a directory share
/// the embedded weights' cache, other weights get a cache of their own.
#[test]
fn the_cache_key_follows_the_weights_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    labeled(dir.path());
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let same = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    for f in [
        "mtcnn.safetensors",
        "dlib_resnet.safetensors",
        "shape_predictor_5.safetensors",
    ] {
        std::fs::copy(models.join(f), same.path().join(f)).unwrap();
        std::fs::copy(models.join(f), other.path().join(f)).unwrap();
    }
    // Other weights: the last float of the ResNet's file changes (still a valid file).
    let resnet = other.path().join("dlib_resnet.safetensors");
    let mut bytes = std::fs::read(&resnet).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0x01;
    std::fs::write(&resnet, bytes).unwrap();
    let sweep = |models: Option<&Path>| {
        let mut args = vec![
            "threshold-sweep",
            "--json",
            s(dir.path()),
            "--cache-dir",
            s(cache.path()),
        ];
        if let Some(m) = models {
            args.extend(["--models", s(m)]);
        }
        let out = facekit(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    assert_eq!(sweep(None)["images"]["cached"], 0);
    assert_eq!(sweep(Some(same.path()))["images"]["cached"], 4);
    assert_eq!(sweep(Some(other.path()))["images"]["cached"], 0);
    // Both pipelines' results are kept: each is answered from the library now.
    assert_eq!(sweep(None)["images"]["cached"], 4);
    assert_eq!(sweep(Some(other.path()))["images"]["cached"], 4);
}

/// Two inputs with the same file stem from different folders: every chip gets its own name,
/// without and with --force (which used to refuse, or silently replace, the first one's chip).
#[test]
fn align_keeps_chips_of_same_named_inputs_apart() {
    let dir = tempfile::tempdir().unwrap();
    for (sub, src) in [
        ("a", "Abel_Pacheco_0001.jpg"),
        ("b", "Akhmed_Zakayev_0001.jpg"),
    ] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        std::fs::copy(fixture("lfw").join(src), dir.path().join(sub).join("x.jpg")).unwrap();
    }
    let a = dir.path().join("a/x.jpg");
    let b = dir.path().join("b/x.jpg");
    for force in [false, true] {
        let out_dir = tempfile::tempdir().unwrap();
        let mut args = vec!["align", s(&a), s(&b), "--out", s(out_dir.path())];
        if force {
            args.push("--force");
        }
        let out = facekit(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let written: Vec<(&str, &str)> =
            text.lines().map(|l| l.split_once('\t').unwrap()).collect();
        assert_eq!(written.len(), 2, "{text}");
        assert_ne!(written[0].1, written[1].1);
        assert!(written[0].1.ends_with("a_x_0.png") && written[1].1.ends_with("b_x_0.png"));
        let chips: Vec<Vec<u8>> = written
            .iter()
            .map(|w| std::fs::read(w.1).unwrap())
            .collect();
        assert_ne!(chips[0], chips[1], "two different faces");
        assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 2);
    }
}

/// Errors found while collecting inputs keep their place among the records.
#[test]
fn detect_json_records_follow_input_order() {
    let a = fixture("lfw/Abel_Pacheco_0001.jpg");
    let b = fixture("lfw/Akhmed_Zakayev_0001.jpg");
    let out = facekit(&["detect", "--json", s(&a), "missing.jpg", s(&b)]);
    assert_eq!(out.status.code(), Some(2));
    let recs = json_lines(&out.stdout);
    let paths: Vec<&str> = recs.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(paths, [s(&a), "missing.jpg", s(&b)]);
    assert!(recs[1]["error"].is_string() && recs[0]["faces"].is_array());
}

/// An arithmetic-coded JPEG (the same photo re-coded losslessly) decodes to exactly the pixels of
/// its Huffman-coded original, and its face is found.
#[test]
fn arithmetic_coded_jpeg_decodes_to_the_same_pixels() {
    let opts = facekit::io::LoadOptions::default();
    let huffman = facekit::io::load_image(&fixture("lfw/Abel_Pacheco_0001.jpg"), &opts).unwrap();
    let arith =
        facekit::io::load_image(&fixture("Abel_Pacheco_0001_arithmetic.jpg"), &opts).unwrap();
    assert_eq!(huffman, arith);
    let out = facekit(&[
        "detect",
        "--json",
        s(&fixture("Abel_Pacheco_0001_arithmetic.jpg")),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        json_lines(&out.stdout)[0]["faces"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// An output in a folder that does not exist is refused before any work, naming the folder
/// (never a temporary file); an existing output is refused with the way to replace it.
#[test]
fn outputs_are_checked_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let photo = common::fixture("2008_001322.jpg");
    let missing = dir.path().join("no/such");
    for args in [vec!["embed", "--out"], vec!["threshold-sweep", "--plot"]] {
        let out_file = missing.join(if args[0] == "embed" {
            "x.jsonl"
        } else {
            "x.png"
        });
        let mut argv = args.clone();
        argv.push(out_file.to_str().unwrap());
        argv.push(photo.to_str().unwrap());
        let out = common::facekit(&argv);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "{}: the output's folder does not exist",
                missing.display()
            )),
            "{args:?}: {err}"
        );
        // Not the temporary file (`.x.jsonl.<pid>.<thread>.tmp`).
        assert!(!err.contains("/.x."), "{err}");
    }
    let model = missing.join("m.safetensors");
    let data = common::fixture("lfw");
    let out = common::facekit(&[
        "train",
        data.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the output's folder does not exist"), "{err}");
    assert!(!err.contains("epoch"), "refused before training: {err}");
    let existing = dir.path().join("e.jsonl");
    std::fs::write(&existing, "keep").unwrap();
    let out = common::facekit(&[
        "embed",
        "--out",
        existing.to_str().unwrap(),
        photo.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already exists (use --force to replace it)"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep");
}
