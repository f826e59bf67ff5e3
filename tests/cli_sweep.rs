//! `facekit threshold-sweep` end to end on real photos: flat digit-stripped folders, identity
//! subfolders, TSV and LFW-format pair files, the no-face fallback, the cache and the plot.

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
