//! YuNet parity with libfacedetection (`../shared/golden/yunet.json`): per image the float
//! reference's detections (boxes and landmarks within 1 px, scores within 0.01), the wheel's
//! integer rows reproduced by truncating like the C code, and `net_checks` (every stage of the
//! network on a synthetic input) to 1e-4.

mod common;

use facekit::detect::yunet::{Map, YuNet, YuNetConfig, HEAD_CHANNELS};
use facekit::io::{load_image, LoadOptions};
use facekit::models::ModelSource;
use serde_json::Value;

fn yunet() -> YuNet {
    YuNet::new(&ModelSource::Embedded, YuNetConfig::default()).expect("embedded YuNet weights load")
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn golden_images() {
    let Some(shared) = common::shared("yunet_parity::golden_images") else {
        return;
    };
    let golden = common::read_json(&shared.join("golden/yunet.json"));
    let net = yunet();
    let opts = LoadOptions {
        apply_exif_orientation: false,
        ..Default::default()
    };
    let (mut max_box, mut max_lm, mut max_score) = (0f32, 0f32, 0f32);
    let (mut rows, mut rows_exact, mut rows_pm1, mut faces, mut c_total) = (0, 0, 0, 0, 0);
    for rec in golden["images"].as_array().expect("images") {
        let path = rec["path"].as_str().expect("path");
        let img = load_image(&shared.join(path), &opts).expect("golden image loads");
        let bgr: Vec<u8> = img.pixels().flat_map(|p| [p[2], p[1], p[0]]).collect();
        assert_eq!(
            hex_sha256(&bgr),
            rec["bgr_sha256"].as_str().unwrap(),
            "{path}: decoder differs"
        );
        let (w, h) = img.dimensions();
        let dets = net.detect_unclipped(&img).expect("detect");
        // The RGB entry point is the BGR one after a channel swap.
        assert_eq!(dets, net.detect_bgr(&bgr, w as usize, h as usize).unwrap());
        // detect() is the same list with boxes clipped to the image.
        let clipped = net.detect(&img).expect("detect");
        assert_eq!(clipped.len(), dets.len());
        for (c, d) in clipped.iter().zip(&dets) {
            assert_eq!(c.bbox, d.bbox.clip(w, h));
            assert_eq!((c.score, c.landmarks), (d.score, d.landmarks));
        }
        // What the C library returns (c_detect, score >= 0.2): the same number of rows.
        let c_rows = rec["check"]["c_rows_ge_0.2"].as_u64().unwrap() as usize;
        assert_eq!(dets.len(), c_rows, "{path}: rows at score >= 0.2");
        c_total += c_rows;
        // The float list: every detection at score >= 0.3, in order.
        let ours: Vec<_> = dets.iter().filter(|d| d.score >= 0.3).collect();
        let float = rec["float"].as_array().expect("float");
        assert_eq!(
            ours.len(),
            float.len(),
            "{path}: {} faces vs {} in the reference",
            ours.len(),
            float.len()
        );
        for (d, f) in ours.iter().zip(float) {
            faces += 1;
            let b = f32s(&f["box"]);
            for (a, e) in d.bbox.to_array().iter().zip(&b) {
                max_box = max_box.max((a - e).abs());
            }
            for (k, p) in f["landmarks"].as_array().unwrap().iter().enumerate() {
                let p = f32s(p);
                max_lm = max_lm
                    .max((d.landmarks[k].x - p[0]).abs())
                    .max((d.landmarks[k].y - p[1]).abs());
            }
            max_score = max_score.max((d.score - f["score"].as_f64().unwrap() as f32).abs());
        }
        // The wheel's rows: score_pct = trunc(score * 100) > 50, coordinates truncated toward
        // zero, w and h truncated from the float differences.
        let ints: Vec<Vec<i64>> = dets
            .iter()
            .map(|d| {
                let mut r = vec![
                    (d.score * 100.0) as i64,
                    d.bbox.x1 as i64,
                    d.bbox.y1 as i64,
                    (d.bbox.x2 - d.bbox.x1) as i64,
                    (d.bbox.y2 - d.bbox.y1) as i64,
                ];
                for p in &d.landmarks {
                    r.push(p.x as i64);
                    r.push(p.y as i64);
                }
                r
            })
            .filter(|r| r[0] > 50)
            .collect();
        let wheel: Vec<Vec<i64>> = rec["wheel"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(ints.len(), wheel.len(), "{path}: wheel row count");
        for (a, e) in ints.iter().zip(&wheel) {
            rows += 1;
            if a == e {
                rows_exact += 1;
            }
            if a.iter().zip(e).all(|(x, y)| (x - y).abs() <= 1) {
                rows_pm1 += 1;
            }
        }
    }
    eprintln!(
        "yunet parity: {faces} float detections, max |box| {max_box:.2e} px, max |landmark| {max_lm:.2e} px, \
         max |score| {max_score:.2e}; wheel rows {rows_exact}/{rows} exact, {rows_pm1}/{rows} within +-1; {c_total} rows at >= 0.2"
    );
    assert_eq!(
        c_total,
        golden["summary"]["c_rows_ge_0.2"].as_u64().unwrap() as usize
    );
    assert!(max_box <= 1.0 && max_lm <= 1.0 && max_score <= 0.01);
    assert_eq!(rows_pm1, rows);
    assert_eq!(
        rows,
        golden["summary"]["wheel_rows"].as_u64().unwrap() as usize
    );
}

fn check_map(
    name: &str,
    m: &Map,
    channels: std::ops::Range<usize>,
    rec: &Value,
    max_err: &mut f32,
) {
    let shape: Vec<usize> = rec["shape_HWC"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(shape, vec![m.h, m.w, channels.len()], "{name}: shape");
    let vals: Vec<f32> = m
        .data
        .chunks_exact(m.c)
        .flat_map(|px| px[channels.clone()].to_vec())
        .collect();
    let mut cmp = |ours: &[f32], theirs: &[f32]| {
        for (a, e) in ours.iter().zip(theirs) {
            let err = (a - e).abs();
            *max_err = max_err.max(err);
            assert!(err <= 1e-4 + 1e-5 * e.abs(), "{name}: {a} vs {e}");
        }
    };
    let first = f32s(&rec["first"]);
    let last = f32s(&rec["last"]);
    cmp(&vals[..first.len()], &first);
    cmp(&vals[vals.len() - last.len()..], &last);
    if let Some(values) = rec.get("values") {
        let values = f32s(values);
        assert_eq!(values.len(), vals.len(), "{name}: values");
        cmp(&vals, &values);
    }
    let sum: f64 = vals.iter().map(|&v| v as f64).sum();
    let abs_sum: f64 = vals.iter().map(|&v| (v as f64).abs()).sum();
    let (es, ea) = (
        rec["sum"].as_f64().unwrap(),
        rec["abs_sum"].as_f64().unwrap(),
    );
    let tol = |e: f64| 1e-4 * vals.len() as f64 + 1e-5 * e.abs();
    assert!((sum - es).abs() <= tol(es), "{name}: sum {sum} vs {es}");
    assert!(
        (abs_sum - ea).abs() <= tol(ea),
        "{name}: abs_sum {abs_sum} vs {ea}"
    );
}

#[test]
fn net_checks() {
    let Some(shared) = common::shared("yunet_parity::net_checks") else {
        return;
    };
    let golden = common::read_json(&shared.join("golden/yunet.json"));
    let nc = &golden["net_checks"];
    let (h, w) = (70usize, 100usize);
    let mut bgr = vec![0u8; h * w * 3];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                bgr[(y * w + x) * 3 + c] = ((3 * x + 5 * y + 80 * c + (x * y) % 23) % 256) as u8;
            }
        }
    }
    assert_eq!(
        hex_sha256(&bgr),
        nc["input"]["sha256_of_bytes"].as_str().unwrap()
    );
    let net = yunet();
    let mut max_err = 0f32;
    let mut seen = 0;
    for (name, m) in net.stages(&bgr, w, h).expect("stages") {
        if let Some(rec) = nc["stages"].get(&name) {
            check_map(&name, &m, 0..m.c, rec, &mut max_err);
            seen += 1;
        } else if let Some(s) = name.strip_prefix("heads_s") {
            assert_eq!(m.c, HEAD_CHANNELS);
            for (head, range) in [("cls", 0..1), ("bbox", 1..5), ("obj", 5..6), ("kps", 6..16)] {
                let key = format!("{head}_s{s}");
                check_map(&key, &m, range, &nc["heads_raw"][&key], &mut max_err);
                seen += 1;
            }
        }
    }
    assert_eq!(seen, nc["stages"].as_object().unwrap().len() + 12);
    // The decoded top-5 anchors (no threshold, no NMS) and the wheel's own row on this input.
    let top = nc["decoded_top5"].as_array().unwrap();
    let all = YuNet::new(
        &ModelSource::Embedded,
        YuNetConfig {
            score_threshold: 0.0,
            nms_threshold: 1.0,
            top_k: usize::MAX,
            keep_top_k: usize::MAX,
        },
    )
    .unwrap()
    .detect_bgr(&bgr, w, h)
    .unwrap();
    let mut max_px = 0f32;
    for (d, e) in all.iter().zip(top) {
        assert!((d.score - e["score"].as_f64().unwrap() as f32).abs() < 1e-5);
        for (a, b) in d.bbox.to_array().iter().zip(f32s(&e["box"])) {
            max_px = max_px.max((a - b).abs());
        }
        for (k, p) in e["landmarks"].as_array().unwrap().iter().enumerate() {
            let p = f32s(p);
            max_px = max_px
                .max((d.landmarks[k].x - p[0]).abs())
                .max((d.landmarks[k].y - p[1]).abs());
        }
    }
    assert!(max_px <= 1e-3, "decoded top-5: {max_px} px");
    let c_rows: Vec<Vec<i64>> = net
        .detect_bgr(&bgr, w, h)
        .unwrap()
        .iter()
        .map(|d| {
            let mut r = vec![(d.score * 100.0) as i64, d.bbox.x1 as i64, d.bbox.y1 as i64];
            r.push((d.bbox.x2 - d.bbox.x1) as i64);
            r.push((d.bbox.y2 - d.bbox.y1) as i64);
            r.extend(d.landmarks.iter().flat_map(|p| [p.x as i64, p.y as i64]));
            r
        })
        .collect();
    let expected: Vec<Vec<i64>> = nc["wheel_c_detect_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(c_rows, expected);
    eprintln!("yunet net_checks: {seen} maps, max |diff| {max_err:.2e}; decoded top-5 max {max_px:.2e} px");
}
