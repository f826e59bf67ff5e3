//! `facekit threshold-sweep` end to end on real photos: flat digit-stripped folders, identity
//! subfolders, TSV and LFW-format pair files, the no-face fallback, the cache and the plot; the
//! identities it infers (and from what), the mixed-layout refusal, and the hardest pairs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{facekit, fixture};
use serde_json::Value;

const PEOPLE: [&str; 4] = [
    "Abel_Pacheco_0001.jpg",
    "Abel_Pacheco_0004.jpg",
    "Akhmed_Zakayev_0001.jpg",
    "Akhmed_Zakayev_0003.jpg",
];

fn sweep(args: &[&str]) -> (Output, Value) {
    let out = facekit(&[&["threshold-sweep", "--json"], args].concat());
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bad JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, v)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A flat folder labelled by file name with digits stripped: 2 people x 2 photos.
#[test]
fn flat_folder_labels_by_name_and_separates_people() {
    let cache = tempfile::tempdir().unwrap();
    let dir = fixture("lfw");
    let (out, v) = sweep(&[s(&dir), "--cache-dir", s(cache.path())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["protocol"], "labeled-folder");
    assert_eq!(v["pairs"]["same"], 2);
    assert_eq!(v["pairs"]["different"], 4);
    assert_eq!(v["images"]["total"], 4);
    assert_eq!(v["images"]["no_face"], 0);
    assert_eq!(v["images"]["cached"], 0);
    // Every same pair is closer than every different pair, and the default threshold sits
    // between them.
    assert_eq!(v["roc_auc"], 1.0);
    assert_eq!(v["best"]["accuracy"], 1.0);
    let rows = v["thresholds"].as_array().unwrap();
    assert!(rows.len() >= 10);
    let at = |t: f64| {
        rows.iter()
            .min_by(|a, b| {
                let da = (a["threshold"].as_f64().unwrap() - t).abs();
                let db = (b["threshold"].as_f64().unwrap() - t).abs();
                da.total_cmp(&db)
            })
            .unwrap()
    };
    let row = at(0.6);
    assert_eq!(row["accuracy"], 1.0, "{row}");
    assert_eq!(row["tpr"], 1.0);
    assert_eq!(row["fpr"], 0.0);
    assert_eq!(row["same"]["f1"], 1.0);
    assert_eq!(v["tar_at_far"][0]["far"], 0.001);
    // The identities it inferred, and from what, on stderr and in the JSON.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "inferred 2 identities from file names (stem with digits stripped): \
             Abel_Pacheco (2 photos), Akhmed_Zakayev (2)"
        ),
        "{err}"
    );
    assert_eq!(v["identities"]["layout"], "file-names");
    let ids = v["identities"]["list"].as_array().unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0]["name"], "Abel_Pacheco");
    assert_eq!(ids[0]["photos"], 2);
    assert_eq!(ids[0]["from"], "file-name");
    // Separable: the hardest pairs are listed, none is an error at the chosen threshold.
    let h = &v["hardest"];
    assert_eq!(h["threshold"], v["best"]["threshold"]);
    assert_eq!(
        (h["false_accepts"].as_u64(), h["false_rejects"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(h["different"].as_array().unwrap().len(), 4);
    assert_eq!(h["same"].as_array().unwrap().len(), 2);

    // The second run answers from the cache.
    let (_, again) = sweep(&[s(&dir), "--cache-dir", s(cache.path())]);
    assert_eq!(again["images"]["cached"], 4);
    assert_eq!(again["best"], v["best"]);
    // --no-cache neither reads nor writes.
    let empty = tempfile::tempdir().unwrap();
    let (_, off) = sweep(&[s(&dir), "--no-cache", "--cache-dir", s(empty.path())]);
    assert_eq!(off["images"]["cached"], 0);
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
}

/// A TSV pairs file with paths relative to DATA; a missing image is reported by name, its pair
/// skipped, and the exit code says something failed.
#[test]
fn tsv_pairs_with_a_missing_image() {
    let tmp = tempfile::tempdir().unwrap();
    let tsv = tmp.path().join("pairs.tsv");
    std::fs::write(
        &tsv,
        format!(
            "# a b label\n{}\t{}\tsame\n{}\t{}\tsame\n{}\t{}\tdifferent\n{}\t{}\tdifferent\n\
             gone.jpg\t{}\tsame\n",
            PEOPLE[0],
            PEOPLE[1],
            PEOPLE[2],
            PEOPLE[3],
            PEOPLE[0],
            PEOPLE[2],
            PEOPLE[1],
            PEOPLE[3],
            PEOPLE[0]
        ),
    )
    .unwrap();
    let (out, v) = sweep(&[
        s(&fixture("lfw")),
        "--pairs",
        s(&tsv),
        "--metric",
        "cosine",
        "--range",
        "0:1:0.05",
        "--no-cache",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gone.jpg"), "{err}");
    assert_eq!(v["protocol"], "tsv-pairs");
    assert_eq!(v["metric"], "cosine");
    assert_eq!(v["pairs"]["same"], 2);
    assert_eq!(v["pairs"]["different"], 2);
    assert_eq!(v["pairs"]["skipped"], 1);
    assert_eq!(v["images"]["failed"], 1);
    assert_eq!(v["thresholds"].as_array().unwrap().len(), 21);
    assert_eq!(v["roc_auc"], 1.0);
    // A malformed label is refused with the line number.
    std::fs::write(&tsv, "a.jpg\tb.jpg\tperhaps\n").unwrap();
    let out = facekit(&["threshold-sweep", s(&fixture("lfw")), "--pairs", s(&tsv)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));
}

/// Copies the fixture photos into LFW's layout (`name/name_000i.jpg`) plus one photo without a
/// face (a background crop of a real photo).
fn lfw_layout(root: &Path) -> PathBuf {
    for f in PEOPLE {
        let name = &f[..f.len() - 9];
        std::fs::create_dir_all(root.join(name)).unwrap();
        std::fs::copy(fixture("lfw").join(f), root.join(name).join(f)).unwrap();
    }
    let photo = image::open(fixture("2008_001322.jpg")).unwrap().to_rgb8();
    let corner = image::imageops::crop_imm(&photo, 0, 0, 120, 90).to_image();
    std::fs::create_dir_all(root.join("Nobody")).unwrap();
    corner.save(root.join("Nobody/Nobody_0001.jpg")).unwrap();
    root.to_path_buf()
}

/// LFW's pairs format with 2 folds, identity subfolders, and an image without a face: the
/// central crop stands in and is counted.
#[test]
fn lfw_pairs_folds_and_no_face_fallback() {
    let tmp = tempfile::tempdir().unwrap();
    let root = lfw_layout(&tmp.path().join("lfw"));
    let pairs = tmp.path().join("pairs.txt");
    std::fs::write(
        &pairs,
        "2 2\nAbel_Pacheco 1 4\nAkhmed_Zakayev 1 3\nAbel_Pacheco 1 Akhmed_Zakayev 1\n\
         Nobody 1 Abel_Pacheco 4\nAkhmed_Zakayev 3 1\nAbel_Pacheco 4 1\n\
         Abel_Pacheco 4 Akhmed_Zakayev 3\nAkhmed_Zakayev 1 Nobody 1\n",
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (out, v) = sweep(&[
        s(&root),
        "--pairs",
        s(&pairs),
        "--cache-dir",
        s(cache.path()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["protocol"], "lfw-pairs");
    assert_eq!(
        v["identities"],
        Value::Null,
        "a pairs file defines the identities"
    );
    assert_eq!(v["images"]["no_face"], 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Nobody_0001.jpg: no face found"));
    assert_eq!(v["pairs"]["same"], 4);
    assert_eq!(v["pairs"]["different"], 4);
    let kf = &v["k_fold"];
    assert_eq!(kf["k"], 2);
    assert_eq!(kf["folds"].as_array().unwrap().len(), 2);
    assert_eq!(kf["folds"][0]["pairs"], 4);
    assert_eq!(kf["accuracy_mean"], 1.0);
    // The cached run keeps the fallback embedding too.
    let (_, again) = sweep(&[
        s(&root),
        "--pairs",
        s(&pairs),
        "--cache-dir",
        s(cache.path()),
    ]);
    assert_eq!(again["images"]["cached"], 5);
    assert_eq!(again["images"]["no_face"], 1);
    assert_eq!(again["k_fold"], v["k_fold"]);

    // The same folder as labeled subfolders, with 3 seeded folds.
    let (out, v) = sweep(&[s(&root), "--folds", "3", "--no-cache"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "inferred 3 identities from subfolders: Abel_Pacheco (2 photos), Akhmed_Zakayev (2), \
             Nobody (1) (1 with a single photo, so in no same-person pair)"
        ),
        "{err}"
    );
    assert_eq!(v["identities"]["layout"], "subfolders");
    assert_eq!(v["identities"]["list"][2]["from"], "subfolder");
    assert_eq!(v["pairs"]["same"], 2);
    assert_eq!(v["pairs"]["different"], 8);
    assert_eq!(v["k_fold"]["k"], 3);
    // Text output names the protocol's result.
    let text = facekit(&[
        "threshold-sweep",
        s(&root),
        "--pairs",
        s(&pairs),
        "--no-cache",
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("2-fold"), "{text}");
    assert!(text.contains("1 without a detected face"), "{text}");
}

/// `--plot` writes a real PNG (or SVG) and never replaces a file without --force.
#[test]
fn plot_files() {
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("roc.png");
    let svg = tmp.path().join("roc.svg");
    let dir = fixture("lfw");
    for p in [&png, &svg] {
        let out = facekit(&["threshold-sweep", s(&dir), "--no-cache", "--plot", s(p)]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The written file is named on stderr.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("facekit: wrote {}\n", s(p))), "{err}");
    }
    let img = image::open(&png).unwrap().to_rgb8();
    assert!(img.width() >= 800 && img.height() >= 400);
    let colours: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 10, "a blank image");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
    // Existing file: refused, untouched.
    let before = std::fs::read(&png).unwrap();
    let out = facekit(&["threshold-sweep", s(&dir), "--no-cache", "--plot", s(&png)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("roc.png"));
    assert_eq!(std::fs::read(&png).unwrap(), before);
    let out = facekit(&[
        "threshold-sweep",
        s(&dir),
        "--no-cache",
        "--plot",
        s(&png),
        "--force",
    ]);
    assert!(out.status.success());
}

/// Identity subfolders plus a loose group photo at the top level: refused (the loose photo
/// would be an identity named after its file), and with --allow-mixed used with a warning.
#[test]
fn mixed_layout_is_refused_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("people");
    for f in PEOPLE {
        let name = &f[..f.len() - 9];
        std::fs::create_dir_all(root.join(name)).unwrap();
        std::fs::copy(fixture("lfw").join(f), root.join(name).join(f)).unwrap();
    }
    std::fs::copy(fixture("2008_001322.jpg"), root.join("party1.jpg")).unwrap();
    std::fs::copy(
        fixture("Tom_Cruise_avp_2014_4.jpg"),
        root.join("party2.jpg"),
    )
    .unwrap();
    let out = facekit(&["threshold-sweep", s(&root), "--no-cache"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mixed layout: identity subfolders plus 2 loose photo(s) at the top level")
            && err.contains("--allow-mixed"),
        "{err}"
    );
    assert!(
        err.contains("1 from file names (stem with digits stripped): party (2 photos)"),
        "{err}"
    );

    let (out, v) = sweep(&[s(&root), "--no-cache", "--allow-mixed"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: ") && err.contains("mixed layout"),
        "{err}"
    );
    assert_eq!(v["identities"]["layout"], "mixed");
    let list = v["identities"]["list"].as_array().unwrap();
    let party = list.iter().find(|i| i["name"] == "party").unwrap();
    assert_eq!(party["photos"], 2);
    assert_eq!(party["from"], "file-name");
    // The two group photos became one identity: 2 + 1 same pairs.
    assert_eq!(v["pairs"]["same"], 3);
}

/// A mislabeled photo (Abel Pacheco's second photo filed as Akhmed Zakayev's) shows up as the
/// worst false rejects, and as the closest different pair against Abel's other photo. The
/// listed distances are the ones `verify` measures for the same two files.
#[test]
fn hardest_pairs_expose_a_mislabeled_photo() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("flat");
    std::fs::create_dir_all(&dir).unwrap();
    for f in [PEOPLE[0], PEOPLE[2], PEOPLE[3]] {
        std::fs::copy(fixture("lfw").join(f), dir.join(f)).unwrap();
    }
    let wrong = dir.join("Akhmed_Zakayev_0004.jpg");
    std::fs::copy(fixture("lfw").join(PEOPLE[1]), &wrong).unwrap();
    let (out, v) = sweep(&[s(&dir), "--no-cache", "--hardest", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h = &v["hardest"];
    let t = h["threshold"].as_f64().unwrap();
    assert_eq!(h["threshold"], v["best"]["threshold"]);
    let different = h["different"].as_array().unwrap();
    let same = h["same"].as_array().unwrap();
    assert_eq!((different.len(), same.len()), (3, 3));
    // The two farthest same pairs are the mislabeled photo against Akhmed's: false rejects.
    for p in &same[..2] {
        assert!(p["a"] == s(&wrong) || p["b"] == s(&wrong), "{h}");
        assert_eq!(p["error"], true, "{h}");
    }
    assert_eq!(same[2]["error"], false, "{h}");
    assert_eq!(
        (h["false_accepts"].as_u64(), h["false_rejects"].as_u64()),
        (Some(0), Some(2)),
        "{h}"
    );
    // The closest different pair is the mislabeled photo against Abel's other photo.
    let first = &different[0];
    let abel = dir.join(PEOPLE[0]);
    assert_eq!(first["a"], s(&abel), "{h}");
    assert_eq!(first["b"], s(&wrong), "{h}");
    // Order and error flags follow the distances and the threshold.
    let d =
        |l: &[Value]| -> Vec<f64> { l.iter().map(|p| p["distance"].as_f64().unwrap()).collect() };
    assert!(d(different).windows(2).all(|w| w[0] <= w[1]), "{h}");
    assert!(d(same).windows(2).all(|w| w[0] >= w[1]), "{h}");
    for p in different {
        assert_eq!(p["error"], p["distance"].as_f64().unwrap() < t);
    }
    for p in same {
        assert_eq!(p["error"], p["distance"].as_f64().unwrap() >= t);
    }
    // The error counts are the best accuracy's complement.
    let count = |k: &str| v["pairs"][k].as_u64().unwrap() as f64;
    let errors = 2.0;
    let accuracy = v["best"]["accuracy"].as_f64().unwrap();
    assert!(
        (errors - (1.0 - accuracy) * (count("same") + count("different"))).abs() < 1e-6,
        "{v}"
    );
    // verify (centre face, as the sweep) measures the same distances.
    for p in [first, &same[0]] {
        let out = facekit(&[
            "verify",
            "--json",
            "--policy",
            "center",
            p["a"].as_str().unwrap(),
            p["b"].as_str().unwrap(),
        ]);
        let vv: Value = serde_json::from_slice(&out.stdout).unwrap();
        let (x, y) = (
            vv["distance"].as_f64().unwrap(),
            p["distance"].as_f64().unwrap(),
        );
        assert!((x - y).abs() < 1e-4, "verify {x} vs sweep {y}");
    }
    // The text report lists them with both paths.
    let text = facekit(&["threshold-sweep", s(&dir), "--no-cache", "--hardest", "1"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("hardest pairs at threshold")
            && text.contains("0 false accepts, 2 false rejects"),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("FALSE REJECT"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(s(&wrong)), "{line}");
    let listed = |kind: &str| {
        text.lines()
            .filter(|l| l.trim_start().starts_with(kind))
            .count()
    };
    assert_eq!((listed("same "), listed("different ")), (1, 1), "{text}");
}
