//! Detection quality on labelled photos: recall at IoU >= 0.5 per face-size bucket and false
//! positives per image, on the WIDER FACE val subset and dlib's example faces in ../shared.
//!
//! cargo run --release --example eval_detect -- [--shared DIR] [--min-face PX] [--threads N]
//!
//! Recall counts valid ground-truth faces (WIDER `invalid` = 0) matched one-to-one by a detection
//! with IoU >= 0.5; a false positive is a detection with IoU < 0.3 against every ground-truth box
//! (invalid ones included). Buckets by ground-truth box height: < 20, 20-40, 40-80, >= 80 px.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use facekit::io::{load_image, LoadOptions};
use facekit::models::ModelSource;
use facekit::{BBox, Detector, DetectorConfig};
use rayon::prelude::*;

struct Gt {
    bbox: BBox,
    valid: bool,
}

const BUCKETS: [(&str, f32, f32); 4] = [
    ("< 20 px", 0.0, 20.0),
    ("20-40 px", 20.0, 40.0),
    ("40-80 px", 40.0, 80.0),
    (">= 80 px", 80.0, f32::INFINITY),
];

fn parse_wider(root: &Path) -> Result<Vec<(PathBuf, Vec<Gt>)>> {
    let gt_file = root.join("wider_face_val_bbx_gt.present_only.txt");
    let text = std::fs::read_to_string(&gt_file).with_context(|| gt_file.display().to_string())?;
    let mut lines = text.lines();
    let mut out = Vec::new();
    while let Some(name) = lines.next() {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        let n: usize = lines.next().context("missing face count")?.trim().parse()?;
        let mut boxes = Vec::new();
        for _ in 0..n.max(1) {
            let v: Vec<f32> = lines
                .next()
                .context("missing box line")?
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0.0))
                .collect();
            if n == 0 || v.len() < 8 {
                continue;
            }
            boxes.push(Gt {
                bbox: BBox {
                    x1: v[0],
                    y1: v[1],
                    x2: v[0] + v[2],
                    y2: v[1] + v[3],
                },
                valid: v[7] == 0.0 && v[2] > 0.0 && v[3] > 0.0,
            });
        }
        out.push((root.join("images").join(name), boxes));
    }
    Ok(out)
}

fn parse_dlib(root: &Path) -> Result<Vec<(PathBuf, Vec<Gt>)>> {
    let tsv = root.join("faces_boxes.tsv");
    let text = std::fs::read_to_string(&tsv).with_context(|| tsv.display().to_string())?;
    let mut map: BTreeMap<String, Vec<Gt>> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 6 {
            continue;
        }
        let v: Vec<f32> = f[2..6].iter().map(|x| x.parse().unwrap_or(0.0)).collect();
        map.entry(f[1].to_string()).or_default().push(Gt {
            bbox: BBox {
                x1: v[0],
                y1: v[1],
                x2: v[0] + v[2],
                y2: v[1] + v[3],
            },
            valid: true,
        });
    }
    Ok(map
        .into_iter()
        .map(|(k, v)| (root.join("faces").join(k), v))
        .collect())
}

#[derive(Default)]
struct Tally {
    found: [usize; 4],
    total: [usize; 4],
    false_pos: usize,
    images: usize,
}

fn evaluate(detector: &Detector, set: &[(PathBuf, Vec<Gt>)]) -> Result<Tally> {
    let per_image: Vec<Result<(Vec<bool>, usize)>> = set
        .par_iter()
        .map(|(path, gts)| {
            let img = load_image(path, &LoadOptions::default())?;
            let dets = detector.detect(&img)?;
            // One-to-one matching, best IoU pairs first.
            let mut pairs = Vec::new();
            for (g, gt) in gts.iter().enumerate() {
                for (d, det) in dets.iter().enumerate() {
                    let iou = gt.bbox.iou(&det.bbox);
                    if iou >= 0.5 {
                        pairs.push((iou, g, d));
                    }
                }
            }
            pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
            let (mut gt_hit, mut det_used) = (vec![false; gts.len()], vec![false; dets.len()]);
            for (_, g, d) in pairs {
                if !gt_hit[g] && !det_used[d] {
                    gt_hit[g] = true;
                    det_used[d] = true;
                }
            }
            let fp = dets
                .iter()
                .filter(|d| gts.iter().all(|g| g.bbox.iou(&d.bbox) < 0.3))
                .count();
            Ok((gt_hit, fp))
        })
        .collect();
    let mut t = Tally::default();
    for ((_, gts), r) in set.iter().zip(per_image) {
        let (hit, fp) = r?;
        t.images += 1;
        t.false_pos += fp;
        for (gt, h) in gts.iter().zip(hit) {
            if !gt.valid {
                continue;
            }
            let height = gt.bbox.height();
            let b = BUCKETS
                .iter()
                .position(|(_, lo, hi)| height >= *lo && height < *hi)
                .unwrap_or(3);
            t.total[b] += 1;
            t.found[b] += h as usize;
        }
    }
    Ok(t)
}

fn pct(a: usize, b: usize) -> String {
    if b == 0 {
        "-".to_string()
    } else {
        format!("{:.1} %", 100.0 * a as f64 / b as f64)
    }
}

fn main() -> Result<()> {
    let mut shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let mut config = DetectorConfig::default();
    let mut threads = 0;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--shared" => shared = PathBuf::from(args.next().context("--shared DIR")?),
            "--min-face" => config.min_face = Some(args.next().context("--min-face PX")?.parse()?),
            "--threads" => threads = args.next().context("--threads N")?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    if !shared.join("data").is_dir() {
        eprintln!(
            "SKIPPED: {} not found; the evaluation needs ../shared/data",
            shared.display()
        );
        return Ok(());
    }
    let mut pool = rayon::ThreadPoolBuilder::new();
    if threads > 0 {
        pool = pool.num_threads(threads);
    }
    let pool = pool.build()?;
    let detector = Detector::new(&ModelSource::resolve(None), config)?;
    let sets = [
        (
            "WIDER FACE val subset",
            parse_wider(&shared.join("data/widerface-val-subset"))?,
        ),
        ("dlib example faces", parse_dlib(&shared.join("data/dlib"))?),
    ];
    let start = std::time::Instant::now();
    println!(
        "{:<24} {:>6} {:>16} {:>16} {:>16} {:>16} {:>12} {:>8}",
        "set",
        "images",
        BUCKETS[0].0,
        BUCKETS[1].0,
        BUCKETS[2].0,
        BUCKETS[3].0,
        ">= 20 px",
        "FP/img"
    );
    for (name, set) in &sets {
        let t = pool.install(|| evaluate(&detector, set))?;
        let cell = |b: usize| {
            format!(
                "{} ({}/{})",
                pct(t.found[b], t.total[b]),
                t.found[b],
                t.total[b]
            )
        };
        let found20: usize = t.found[1..].iter().sum();
        let total20: usize = t.total[1..].iter().sum();
        println!(
            "{:<24} {:>6} {:>16} {:>16} {:>16} {:>16} {:>12} {:>8.2}",
            name,
            t.images,
            cell(0),
            cell(1),
            cell(2),
            cell(3),
            pct(found20, total20),
            t.false_pos as f64 / t.images.max(1) as f64
        );
    }
    eprintln!("evaluated in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
