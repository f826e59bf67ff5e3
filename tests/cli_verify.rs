//! `facekit verify` says what it compared: each photo's face count, the compared face (index
//! from 0, box, score), the pair `--policy best-pair` chose, and a note when the default policy
//! picked one face among several. Real photos: the 3-person group photo and an LFW portrait.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{facekit, fixture};
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every face box `facekit detect --json` finds in `photo`, in its order.
fn detected_boxes(photo: &Path) -> Vec<[f64; 4]> {
    let out = facekit(&["detect", "--json", s(photo)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    common::face_boxes(&v)
}

fn area(b: &[f64; 4]) -> f64 {
    (b[2] - b[0]) * (b[3] - b[1])
}

fn close(a: &[f64; 4], b: &[f64; 4]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() < 0.01)
}

/// The group photo cropped around its face `k` (with a margin): a one-face portrait of that
/// person.
fn portrait_of_face(dir: &Path, group: &Path, k: usize) -> PathBuf {
    let b = detected_boxes(group)[k];
    let img = image::open(group).unwrap().to_rgb8();
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    let x = (b[0] - 0.6 * w).max(0.0) as u32;
    let y = (b[1] - 0.6 * h).max(0.0) as u32;
    let cw = ((2.2 * w) as u32).min(img.width() - x);
    let ch = ((2.2 * h) as u32).min(img.height() - y);
    let crop = image::imageops::crop_imm(&img, x, y, cw, ch).to_image();
    let path = dir.join(format!("face{k}.png"));
    crop.save(&path).unwrap();
    path
}

#[test]
fn json_names_face_counts_and_the_compared_faces() {
    let group = fixture("2008_001322.jpg");
    let portrait = fixture("lfw/Abel_Pacheco_0001.jpg");
    let out = facekit(&["verify", "--json", s(&group), s(&portrait)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["policy"], "largest");
    assert_eq!(v["faces"]["a"], 3, "{v}");
    assert_eq!(v["faces"]["b"], 1, "{v}");
    // A's compared face is the largest of the boxes detect finds, named by its index there.
    let boxes = detected_boxes(&group);
    assert_eq!(boxes.len(), 3);
    let largest = (0..3)
        .max_by(|&i, &j| area(&boxes[i]).total_cmp(&area(&boxes[j])))
        .unwrap();
    let a = &v["compared"]["a"];
    assert_eq!(a["face"], largest, "{v}");
    assert!(close(&common::json_box(&a["box"]), &boxes[largest]), "{v}");
    assert!(a["score"].as_f64().unwrap() > 0.9);
    let b = &v["compared"]["b"];
    assert_eq!(b["face"], 0);
    assert!(
        close(&common::json_box(&b["box"]), &detected_boxes(&portrait)[0]),
        "{v}"
    );
    // The old keys are unchanged.
    assert_eq!(v["same"], false);
    assert!(v["distance"].as_f64().unwrap() > v["threshold"].as_f64().unwrap());
}

/// The selfie case: the person is face 2 of the group photo, not its largest face. The default
/// policy compares the largest face and says so on stderr; best-pair finds and names the pair.
#[test]
fn best_pair_names_the_pair_and_largest_notes_the_other_faces() {
    let dir = tempfile::tempdir().unwrap();
    let group = fixture("2008_001322.jpg");
    let boxes = detected_boxes(&group);
    let largest = (0..3)
        .max_by(|&i, &j| area(&boxes[i]).total_cmp(&area(&boxes[j])))
        .unwrap();
    let k = (0..3).find(|&i| i != largest && i != 0).unwrap();
    let portrait = portrait_of_face(dir.path(), &group, k);

    let best = facekit(&[
        "verify",
        "--json",
        "--policy",
        "best-pair",
        s(&group),
        s(&portrait),
    ]);
    assert_eq!(best.status.code(), Some(0), "{}", stderr(&best));
    let v: Value = serde_json::from_slice(&best.stdout).unwrap();
    assert_eq!(v["policy"], "best-pair");
    assert_eq!(v["compared"]["a"]["face"], k, "{v}");
    assert_eq!(v["compared"]["b"]["face"], 0, "{v}");
    assert!(
        close(&common::json_box(&v["compared"]["a"]["box"]), &boxes[k]),
        "{v}"
    );
    assert!(v["distance"].as_f64().unwrap() < 0.4, "{v}");
    assert!(!stderr(&best).contains("note:"), "{}", stderr(&best));

    // Text: the verdict line, then each photo's faces and the compared one.
    let text = facekit(&["verify", "--policy", "best-pair", s(&group), s(&portrait)]);
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(out.starts_with("same person: distance"), "{out}");
    assert!(
        out.contains(&format!("A {}: 3 faces, compared face {k} (box", s(&group))),
        "{out}"
    );
    assert!(out.contains("1 face, compared face 0"), "{out}");

    // The default policy compares the largest face, and a note suggests best-pair.
    let largest_run = facekit(&["verify", "--json", s(&group), s(&portrait)]);
    let v: Value = serde_json::from_slice(&largest_run.stdout).unwrap();
    assert_eq!(v["compared"]["a"]["face"], largest, "{v}");
    let err = stderr(&largest_run);
    assert!(
        err.contains(&format!(
            "note: {} has 3 faces; compared the largest (face {largest})",
            s(&group)
        )) && err.contains("--policy best-pair"),
        "{err}"
    );
    // One note: the portrait has a single face.
    assert_eq!(err.matches("note:").count(), 1, "{err}");
}

#[test]
fn single_face_photos_get_no_note() {
    let a = fixture("lfw/Akhmed_Zakayev_0001.jpg");
    let b = fixture("lfw/Akhmed_Zakayev_0003.jpg");
    let out = facekit(&["verify", s(&a), s(&b)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[1].starts_with(&format!("  A {}: 1 face, compared face 0 (box ", s(&a))));
    assert!(lines[2].starts_with(&format!("  B {}: 1 face, compared face 0 (box ", s(&b))));
}
