//! `facekit verify`, `embed` and `align` as a user runs them: the real binary on real photos.

mod common;

use common::{facekit, fixture, json_lines, shared};
use serde_json::Value;

fn lfw(name: &str) -> String {
    fixture(&format!("lfw/{name}"))
        .to_string_lossy()
        .into_owned()
}

#[test]
fn verify_exit_codes_and_json() {
    let same = facekit(&[
        "verify",
        "--json",
        &lfw("Akhmed_Zakayev_0001.jpg"),
        &lfw("Akhmed_Zakayev_0003.jpg"),
    ]);
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&same.stderr)
    );
    let v: Value = serde_json::from_slice(&same.stdout).unwrap();
    assert_eq!(v["same"], true);
    assert_eq!(v["a"], lfw("Akhmed_Zakayev_0001.jpg").as_str());
    let (d, t) = (
        v["distance"].as_f64().unwrap(),
        v["threshold"].as_f64().unwrap(),
    );
    assert!(d < t && (t - 0.60).abs() < 1e-6, "{v}");
    assert!(v["model"].as_str().unwrap().starts_with("dlib_resnet_v1"));

    let diff = facekit(&[
        "verify",
        &lfw("Abel_Pacheco_0001.jpg"),
        &lfw("Akhmed_Zakayev_0001.jpg"),
    ]);
    assert_eq!(diff.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&diff.stdout).starts_with("different people: distance"));

    // A stricter threshold turns "same" into "different".
    let strict = facekit(&[
        "verify",
        "--threshold",
        "0.1",
        &lfw("Akhmed_Zakayev_0001.jpg"),
        &lfw("Akhmed_Zakayev_0003.jpg"),
    ]);
    assert_eq!(strict.status.code(), Some(1));
}

#[test]
fn verify_policies_pick_the_right_face() {
    // The group photo holds 3 people; best-pair finds the one matching dlib's chip of face 0.
    let chip = fixture("dlib_chips/2008_001322_0.png");
    let group = fixture("2008_001322.jpg");
    let out = facekit(&[
        "verify",
        "--json",
        "--policy",
        "best-pair",
        group.to_str().unwrap(),
        chip.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["distance"].as_f64().unwrap() < 0.4, "{v}");
}

#[test]
fn verify_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, "not a photo").unwrap();
    let blank = dir.path().join("blank.png");
    image::RgbImage::from_pixel(200, 200, image::Rgb([128, 128, 128]))
        .save(&blank)
        .unwrap();
    let a = lfw("Abel_Pacheco_0001.jpg");

    let out = facekit(&["verify", &a, text.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("notes.jpg") && err.contains("not a recognised image"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    let out = facekit(&["verify", blank.to_str().unwrap(), &a]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("blank.png") && err.contains("no face found"),
        "{err}"
    );

    let out = facekit(&[
        "verify",
        &a,
        dir.path().join("missing.jpg").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.jpg"));
}

#[test]
fn embed_formats() {
    let dir = tempfile::tempdir().unwrap();
    let group = fixture("2008_001322.jpg");
    let out = facekit(&[
        "embed",
        group.to_str().unwrap(),
        &lfw("Abel_Pacheco_0001.jpg"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = json_lines(&out.stdout);
    assert_eq!(
        recs.len(),
        4,
        "3 faces in the group photo, 1 in the portrait"
    );
    for r in &recs {
        assert_eq!(r["embedding"].as_array().unwrap().len(), 128);
        assert_eq!(r["box"].as_array().unwrap().len(), 4);
    }
    assert_eq!(recs[2]["face"], 2);

    let npy = dir.path().join("faces.npy");
    let out = facekit(&[
        "embed",
        "--format",
        "npy",
        "--out",
        npy.to_str().unwrap(),
        group.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&npy).unwrap();
    assert!(bytes.starts_with(b"\x93NUMPY"));
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'shape': (3, 128)"), "{header}");
    assert_eq!((10 + header_len) % 64, 0);
    assert_eq!(bytes.len(), 10 + header_len + 3 * 128 * 4);
    // The same values as the JSON Lines.
    let first = f32::from_le_bytes(bytes[10 + header_len..14 + header_len].try_into().unwrap());
    assert!((first as f64 - recs[0]["embedding"][0].as_f64().unwrap()).abs() < 1e-6);
    // The sidecar names each row's file, face, box and score, in the matrix's order.
    let sidecar = std::fs::read_to_string(dir.path().join("faces.csv")).unwrap();
    let lines: Vec<&str> = sidecar.lines().collect();
    assert_eq!(lines[0], "row,path,face,x1,y1,x2,y2,score");
    assert_eq!(lines.len(), 4, "{sidecar}");
    for (row, (line, rec)) in lines[1..].iter().zip(&recs).enumerate() {
        let cols: Vec<&str> = line.split(',').collect();
        assert_eq!(cols[0], row.to_string());
        assert_eq!(cols[1], rec["path"].as_str().unwrap());
        assert_eq!(cols[2], rec["face"].to_string());
        for (c, want) in cols[3..7].iter().zip(rec["box"].as_array().unwrap()) {
            assert!((c.parse::<f64>().unwrap() - want.as_f64().unwrap()).abs() < 1e-3);
        }
    }
    std::fs::remove_file(dir.path().join("faces.csv")).unwrap();

    // An existing --out is refused without --force, and kept intact.
    let out = facekit(&[
        "embed",
        "--format",
        "csv",
        "--out",
        npy.to_str().unwrap(),
        group.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(std::fs::read(&npy).unwrap().starts_with(b"\x93NUMPY"));
    let csv = dir.path().join("faces.csv");
    let out = facekit(&[
        "embed",
        "--format",
        "csv",
        "--out",
        csv.to_str().unwrap(),
        group.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(lines[0].starts_with("path,face,x1,y1,x2,y2,score,e0,"));
    assert_eq!(lines[1].split(',').count(), 7 + 128);
}

#[test]
fn align_writes_chips_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let group = fixture("2008_001322.jpg");
    for (template, size) in [("dlib", 150), ("arcface", 112), ("facenet", 160)] {
        let out_dir = dir.path().join(template);
        let out = facekit(&[
            "align",
            "--template",
            template,
            "--out",
            out_dir.to_str().unwrap(),
            group.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for k in 0..3 {
            let chip = image::open(out_dir.join(format!("2008_001322_{k}.png"))).unwrap();
            assert_eq!((chip.width(), chip.height()), (size, size), "{template}");
        }
    }
    let out_dir = dir.path().join("dlib");
    let before = std::fs::read(out_dir.join("2008_001322_0.png")).unwrap();
    std::fs::write(out_dir.join("2008_001322_1.png"), b"mine").unwrap();
    let out = facekit(&[
        "align",
        "--out",
        out_dir.to_str().unwrap(),
        group.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read(out_dir.join("2008_001322_1.png")).unwrap(),
        b"mine"
    );
    let out = facekit(&[
        "align",
        "--force",
        "--size",
        "64",
        "--out",
        out_dir.to_str().unwrap(),
        group.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert_ne!(
        std::fs::read(out_dir.join("2008_001322_0.png")).unwrap(),
        before
    );
    assert_eq!(
        image::open(out_dir.join("2008_001322_1.png"))
            .unwrap()
            .width(),
        64
    );
}

/// facenet-pytorch's 4 test identities (one photo each): every pair is "different" at the
/// default threshold. Prints the distance matrix (README).
#[test]
fn facenet_pytorch_test_people_are_all_different() {
    let Some(shared) = shared("facenet_pytorch_test_people_are_all_different") else {
        return;
    };
    let people = ["angelina_jolie", "kate_siegel", "paul_rudd", "shea_whigham"];
    let paths: Vec<String> = people
        .iter()
        .map(|p| {
            shared
                .join(format!("data/facenet-pytorch/test_images/{p}/1.jpg"))
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let mut args = vec!["embed"];
    args.extend(paths.iter().map(|s| s.as_str()));
    let out = facekit(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = json_lines(&out.stdout);
    // The largest face of each photo (angelina_jolie's photo has small background faces).
    let main: Vec<Vec<f32>> = paths
        .iter()
        .map(|p| {
            let faces: Vec<&Value> = recs.iter().filter(|r| r["path"] == p.as_str()).collect();
            let area = |r: &Value| {
                let b: Vec<f64> = r["box"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                (b[2] - b[0]) * (b[3] - b[1])
            };
            let best = faces
                .iter()
                .max_by(|a, b| area(a).total_cmp(&area(b)))
                .unwrap();
            best["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let mut table = String::from("                ");
    people
        .iter()
        .for_each(|p| table.push_str(&format!("{:>15}", p)));
    for (i, a) in main.iter().enumerate() {
        table.push_str(&format!("\n{:<16}", people[i]));
        for (j, b) in main.iter().enumerate() {
            let d = facekit::distance::euclidean(a, b);
            table.push_str(&format!("{d:>15.4}"));
            if i != j {
                assert!(
                    d >= 0.60,
                    "{} vs {}: {d} should be 'different'",
                    people[i],
                    people[j]
                );
            }
        }
    }
    eprintln!("{table}");
}
