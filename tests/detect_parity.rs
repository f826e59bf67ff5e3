//! MTCNN parity with facenet-pytorch 2.6.0: each network alone on the golden synthetic inputs,
//! and the whole cascade on real photos (the committed fixtures always; all 18 golden photos
//! when ../shared is present).

mod common;

use candle_core::{Device, Tensor};
use common::{detector, fixture, read_json, shared};
use facekit::detect::pyramid;
use facekit::io::{load_image, LoadOptions};
use serde_json::Value;

/// The synthetic input of `net_checks`: x[n,c,y,x] = (((n*7 + c*131 + y*17 + x*3) mod 256) - 127.5) / 128.
fn synthetic(n: usize, h: usize, w: usize) -> Tensor {
    let mut v = Vec::with_capacity(n * 3 * h * w);
    for b in 0..n {
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    v.push((((b * 7 + c * 131 + y * 17 + x * 3) % 256) as f32 - 127.5) * 0.0078125);
                }
            }
        }
    }
    Tensor::from_vec(v, (n, 3, h, w), &Device::Cpu).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        other => panic!("not a number array: {other}"),
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, want {w}");
    }
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn each_network_reproduces_net_checks() {
    let golden = read_json(&fixture("mtcnn_golden_subset.json"));
    let checks = &golden["net_checks"];
    let det = detector();
    let (pnet, rnet, onet) = det.mtcnn().expect("MTCNN is the default").nets();

    let (reg, prob) = pnet.forward(&synthetic(1, 12, 12)).unwrap();
    let c = &checks["pnet_1x3x12x12"];
    assert_close("pnet reg", &flat(&reg), &floats(&c["reg(1x4x1x1)"]), 1e-5);
    assert_close(
        "pnet prob",
        &flat(&prob),
        &floats(&c["prob(1x2x1x1)"]),
        1e-5,
    );

    let (reg, prob) = pnet.forward(&synthetic(1, 30, 40)).unwrap();
    let c = &checks["pnet_1x3x30x40"];
    assert_eq!(reg.dims(), [1, 4, 10, 15]);
    assert_eq!(prob.dims(), [1, 2, 10, 15]);
    let face = flat(&prob.narrow(1, 1, 1).unwrap());
    assert_close(
        "pnet prob map",
        &face,
        &floats(&c["prob_face_channel(row-major HxW)"]),
        1e-5,
    );
    let reg_sum: f32 = flat(&reg).iter().sum();
    let want_sum = c["reg_sum"].as_f64().unwrap() as f32;
    assert!(
        (reg_sum - want_sum).abs() < 1e-3,
        "pnet reg sum {reg_sum} vs {want_sum}"
    );

    let (reg, prob) = rnet.forward(&synthetic(2, 24, 24)).unwrap();
    let c = &checks["rnet_2x3x24x24"];
    assert_close("rnet reg", &flat(&reg), &floats(&c["reg(2x4)"]), 1e-5);
    assert_close("rnet prob", &flat(&prob), &floats(&c["prob(2x2)"]), 1e-5);

    let (reg, lm, prob) = onet.forward(&synthetic(2, 48, 48)).unwrap();
    let c = &checks["onet_2x3x48x48"];
    assert_close("onet reg", &flat(&reg), &floats(&c["reg(2x4)"]), 1e-5);
    let lm_key = c
        .as_object()
        .unwrap()
        .keys()
        .find(|k| k.starts_with("landmarks_raw"))
        .unwrap();
    assert_close("onet landmarks", &flat(&lm), &floats(&c[lm_key]), 1e-5);
    assert_close("onet prob", &flat(&prob), &floats(&c["prob(2x2)"]), 1e-5);
}

/// Compares facekit's detections on one image with a golden record: the same faces with score
/// >= 0.9, boxes (both clipped) and landmarks within `px`, scores within 0.01.
fn check_image(path: &std::path::Path, record: &Value, px: f32) -> usize {
    let img = load_image(path, &LoadOptions::default()).unwrap();
    let (w, h) = img.dimensions();
    assert_eq!(
        (w as u64, h as u64),
        (
            record["width"].as_u64().unwrap(),
            record["height"].as_u64().unwrap()
        )
    );

    // The pyramid P-Net sees, level by level.
    let levels = pyramid(w, h, 20.0, 0.709);
    let shapes: Vec<[usize; 2]> = levels.iter().map(|l| [l.height, l.width]).collect();
    let want_shapes: Vec<[usize; 2]> = record["debug"]["pnet_input_shapes_NCHW"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            [
                s[2].as_u64().unwrap() as usize,
                s[3].as_u64().unwrap() as usize,
            ]
        })
        .collect();
    assert_eq!(shapes, want_shapes, "{}: pyramid", path.display());

    let faces = detector().detect(&img).unwrap();
    let golden: Vec<&Value> = record["faces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["prob"].as_f64().unwrap() >= 0.9)
        .collect();
    let ours: Vec<_> = faces.iter().filter(|f| f.score >= 0.9).collect();
    assert_eq!(
        ours.len(),
        golden.len(),
        "{}: number of faces with score >= 0.9",
        path.display()
    );
    for g in golden {
        let b = floats(&g["box"]);
        let gb = facekit::BBox {
            x1: b[0],
            y1: b[1],
            x2: b[2],
            y2: b[3],
        }
        .clip(w, h);
        let mine = ours
            .iter()
            .min_by(|a, b| {
                let d = |f: &&&facekit::Detection| {
                    f.bbox
                        .to_array()
                        .iter()
                        .zip(gb.to_array())
                        .map(|(x, y)| (x - y).abs())
                        .sum::<f32>()
                };
                d(a).total_cmp(&d(b))
            })
            .unwrap();
        for (x, y) in mine.bbox.to_array().iter().zip(gb.to_array()) {
            assert!(
                (x - y).abs() <= px,
                "{}: box {:?} vs golden {:?}",
                path.display(),
                mine.bbox,
                gb
            );
        }
        let lms = floats(&g["landmarks"]);
        for (k, p) in mine.landmarks.iter().enumerate() {
            assert!(
                (p.x - lms[2 * k]).abs() <= px && (p.y - lms[2 * k + 1]).abs() <= px,
                "{}: landmark {k} {:?} vs golden ({}, {})",
                path.display(),
                p,
                lms[2 * k],
                lms[2 * k + 1]
            );
        }
        let gp = g["prob"].as_f64().unwrap() as f32;
        assert!(
            (mine.score - gp).abs() <= 0.01,
            "{}: score {} vs {gp}",
            path.display(),
            mine.score
        );
    }
    ours.len()
}

#[test]
fn cascade_matches_facenet_pytorch_on_committed_photos() {
    let golden = read_json(&fixture("mtcnn_golden_subset.json"));
    let mut faces = 0;
    for record in golden["images"].as_array().unwrap() {
        faces += check_image(&fixture(record["fixture"].as_str().unwrap()), record, 2.0);
    }
    assert_eq!(faces, 5);
}

#[test]
fn cascade_matches_facenet_pytorch_on_all_golden_photos() {
    let Some(shared) = shared("cascade_matches_facenet_pytorch_on_all_golden_photos") else {
        return;
    };
    let golden = read_json(&shared.join("golden/mtcnn.json"));
    let images = golden["images"].as_array().unwrap();
    assert_eq!(images.len(), 18);
    let faces: usize = images
        .iter()
        .map(|record| check_image(&shared.join(record["path"].as_str().unwrap()), record, 2.0))
        .sum();
    // 80 faces in all, of which 78 score >= 0.9.
    assert_eq!(faces, 78);
}
