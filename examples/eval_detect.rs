//! Detection quality on labelled photos: recall at IoU >= 0.5 per face-size bucket and false
//! positives per image, on the WIDER FACE val subset and dlib's example faces in ../shared.
//!
//! cargo run --release --example eval_detect -- [--shared DIR] [--detector mtcnn] [--min-face PX]
//!     [--threads N] [--scores S,S,...] [--halves] [--upscale K]
//!
//! `--scores` tabulates several final score thresholds from one detection pass; `--halves` also
//! reports the even- and odd-numbered images apart (choose a threshold on one, report the other);
//! `--upscale K` runs on the images upscaled K times (bicubic) with the ground truth scaled too,
//! so the buckets are in the upscaled frame (a camera-photo stand-in).
//!
//! Recall counts valid ground-truth faces (WIDER `invalid` = 0) matched one-to-one by a detection
//! with IoU >= 0.5; a false positive is a detection with IoU < 0.3 against every ground-truth box
//! (invalid ones included). Buckets by ground-truth box height: < 20, 20-40, 40-80, >= 80 px.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use facekit::detect::DetectorKind;
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

#[derive(Default, Clone)]
struct Tally {
    found: [usize; 4],
    total: [usize; 4],
    false_pos: usize,
    images: usize,
}

/// One image's detections: (box, score), scaled to the frame the ground truth is in.
type Dets = Vec<(BBox, f32)>;

/// Detects every image once (optionally upscaled `upscale` times, bicubic), keeping the scores.
fn detect_all(detector: &Detector, set: &[(PathBuf, Vec<Gt>)], upscale: u32) -> Result<Vec<Dets>> {
    set.par_iter()
        .map(|(path, _)| {
            let mut img = load_image(path, &LoadOptions::default())?;
            if upscale > 1 {
                img = image::imageops::resize(
                    &img,
                    img.width() * upscale,
                    img.height() * upscale,
                    image::imageops::FilterType::CatmullRom,
                );
            }
            Ok(detector
                .detect(&img)?
                .into_iter()
                .map(|d| (d.bbox, d.score))
                .collect())
        })
        .collect()
}

/// Recall per bucket and false positives over the images `pick` selects, counting detections
/// scoring at least `min_score`; ground truth scaled by `scale` (buckets by the scaled height).
fn tally(
    set: &[(PathBuf, Vec<Gt>)],
    dets: &[Dets],
    min_score: f32,
    scale: f32,
    pick: impl Fn(usize) -> bool,
) -> Tally {
    let mut t = Tally::default();
    for (i, ((_, gts), dets)) in set.iter().zip(dets).enumerate() {
        if !pick(i) {
            continue;
        }
        let dets: Vec<BBox> = dets
            .iter()
            .filter(|d| d.1 >= min_score)
            .map(|d| d.0)
            .collect();
        let gts: Vec<(BBox, bool)> = gts
            .iter()
            .map(|g| {
                let b = g.bbox;
                (
                    BBox {
                        x1: b.x1 * scale,
                        y1: b.y1 * scale,
                        x2: b.x2 * scale,
                        y2: b.y2 * scale,
                    },
                    g.valid,
                )
            })
            .collect();
        // One-to-one matching, best IoU pairs first.
        let mut pairs = Vec::new();
        for (g, gt) in gts.iter().enumerate() {
            for (d, det) in dets.iter().enumerate() {
                let iou = gt.0.iou(det);
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
        t.false_pos += dets
            .iter()
            .filter(|d| gts.iter().all(|g| g.0.iou(d) < 0.3))
            .count();
        t.images += 1;
        for (gt, h) in gts.iter().zip(gt_hit) {
            if !gt.1 {
                continue;
            }
            let height = gt.0.height();
            let b = BUCKETS
                .iter()
                .position(|(_, lo, hi)| height >= *lo && height < *hi)
                .unwrap_or(3);
            t.total[b] += 1;
            t.found[b] += h as usize;
        }
    }
    t
}

fn pct(a: usize, b: usize) -> String {
    if b == 0 {
        "-".to_string()
    } else {
        format!("{:.1} %", 100.0 * a as f64 / b as f64)
    }
}

fn row(name: &str, t: &Tally) {
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
        "{:<40} {:>6} {:>18} {:>18} {:>18} {:>18} {:>9} {:>7.2}",
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

fn main() -> Result<()> {
    let mut shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let mut config = DetectorConfig::default();
    let mut threads = 0;
    let mut scores: Vec<f32> = Vec::new();
    let mut upscale = 1u32;
    let mut halves = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--shared" => shared = PathBuf::from(args.next().context("--shared DIR")?),
            "--min-face" => config.min_face = Some(args.next().context("--min-face PX")?.parse()?),
            "--threads" => threads = args.next().context("--threads N")?.parse()?,
            "--detector" => {
                config.kind = match args.next().context("--detector NAME")?.as_str() {
                    "mtcnn" => DetectorKind::Mtcnn,
                    "yunet" => DetectorKind::YuNet,
                    other => bail!("unknown detector {other}"),
                }
            }
            // Final score thresholds to tabulate (detections are computed once, at the
            // detector's own threshold or --floor, whichever is lower).
            "--scores" => {
                scores = args
                    .next()
                    .context("--scores S,S,...")?
                    .split(',')
                    .map(|s| s.parse())
                    .collect::<Result<_, _>>()?
            }
            "--upscale" => upscale = args.next().context("--upscale K")?.parse()?,
            "--halves" => halves = true,
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
    let floor = scores.iter().copied().fold(f32::INFINITY, f32::min);
    if floor.is_finite() {
        config.lower_score_threshold(floor);
    }
    if scores.is_empty() {
        scores.push(0.0);
    }
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
        "detector {}{}",
        detector.id(),
        if upscale > 1 {
            format!(", images upscaled x{upscale} (bicubic), ground truth scaled with them")
        } else {
            String::new()
        }
    );
    println!(
        "{:<40} {:>6} {:>18} {:>18} {:>18} {:>18} {:>9} {:>7}",
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
        let dets = pool.install(|| detect_all(&detector, set, upscale))?;
        let scale = upscale as f32;
        for &s in &scores {
            let label = if scores.len() > 1 || s > 0.0 {
                format!("{name}, score >= {s}")
            } else {
                name.to_string()
            };
            row(&label, &tally(set, &dets, s, scale, |_| true));
            if halves {
                row(
                    "  half A (even images)",
                    &tally(set, &dets, s, scale, |i| i % 2 == 0),
                );
                row(
                    "  half B (odd images)",
                    &tally(set, &dets, s, scale, |i| i % 2 == 1),
                );
            }
        }
    }
    eprintln!("evaluated in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
