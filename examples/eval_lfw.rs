//! LFW verification accuracy with the standard View 2 protocol (10 folds of 300 same + 300
//! different pairs): the threshold is chosen on 9 folds and tested on the held-out one.
//!
//! cargo run --release --example eval_lfw -- [--shared DIR] [--no-flip] [--policy center|largest]
//!     [--template dlib|dlib-mtcnn|arcface|facenet] [--threads N] [--limit N]
//!
//! Uses `../shared/data/lfw/lfw-deepfunneled` and `pairs.txt`. For each image the face nearest
//! the image centre is used (LFW's subject is centred); images where no face is found use the
//! mean landmarks of all detections (a centred face) and are counted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use facekit::align::Template;
use facekit::detect::{BBox, Detection, Point};
use facekit::io::{load_image, LoadOptions};
use facekit::models::ModelSource;
use facekit::pipeline::{select_face, FacePolicy, Pipeline, PipelineConfig};
use rayon::prelude::*;

struct Pair {
    a: String,
    b: String,
    same: bool,
    fold: usize,
}

fn parse_pairs(text: &str) -> Result<Vec<Pair>> {
    let mut lines = text.lines();
    let header: Vec<usize> = lines
        .next()
        .context("empty pairs file")?
        .split_whitespace()
        .map(|x| x.parse())
        .collect::<Result<_, _>>()?;
    let (folds, n) = (header[0], header[1]);
    let name = |p: &str, i: &str| -> Result<String> {
        Ok(format!("{p}/{p}_{:04}.jpg", i.parse::<u32>()?))
    };
    let mut pairs = Vec::new();
    for (k, line) in lines.filter(|l| !l.trim().is_empty()).enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let fold = k / (2 * n);
        let pair = match f.len() {
            3 => Pair {
                a: name(f[0], f[1])?,
                b: name(f[0], f[2])?,
                same: true,
                fold,
            },
            4 => Pair {
                a: name(f[0], f[1])?,
                b: name(f[2], f[3])?,
                same: false,
                fold,
            },
            _ => bail!("bad pairs line {line:?}"),
        };
        pairs.push(pair);
    }
    anyhow::ensure!(
        pairs.len() == folds * 2 * n,
        "expected {} pairs, got {}",
        folds * 2 * n,
        pairs.len()
    );
    Ok(pairs)
}

/// Accuracy of `dist < t` predicting "same".
fn accuracy(items: &[(f32, bool)], t: f32) -> f64 {
    items.iter().filter(|(d, s)| (*d < t) == *s).count() as f64 / items.len() as f64
}

/// The threshold (midpoint between consecutive distances) with the best accuracy.
fn best_threshold(items: &[(f32, bool)]) -> (f32, f64) {
    let mut d: Vec<f32> = items.iter().map(|x| x.0).collect();
    d.sort_by(f32::total_cmp);
    let mut best = (0.0, 0.0);
    for w in d.windows(2) {
        let t = (w[0] + w[1]) / 2.0;
        let acc = accuracy(items, t);
        if acc > best.1 {
            best = (t, acc);
        }
    }
    best
}

fn main() -> Result<()> {
    let mut shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let mut config = PipelineConfig::default();
    let mut policy = FacePolicy::Center;
    let mut threads = 0;
    let mut limit = usize::MAX;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--shared" => shared = PathBuf::from(args.next().context("--shared DIR")?),
            "--no-flip" => config.flip = false,
            "--policy" => {
                policy = match args.next().as_deref() {
                    Some("center") => FacePolicy::Center,
                    Some("largest") => FacePolicy::Largest,
                    other => bail!("--policy center|largest, got {other:?}"),
                }
            }
            "--template" => {
                config.template = match args.next().as_deref() {
                    Some("dlib") => Template::Dlib,
                    Some("dlib-mtcnn") => Template::DlibMtcnn,
                    Some("arcface") => Template::Arcface,
                    Some("facenet") => Template::Facenet,
                    other => bail!("--template dlib|dlib-mtcnn|arcface|facenet, got {other:?}"),
                }
            }
            "--threads" => threads = args.next().context("--threads N")?.parse()?,
            "--limit" => limit = args.next().context("--limit N")?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    let lfw = shared.join("data/lfw");
    if !lfw.join("pairs.txt").is_file() {
        eprintln!(
            "SKIPPED: {} not found; the LFW evaluation needs ../shared/data/lfw",
            lfw.display()
        );
        return Ok(());
    }
    let mut pairs = parse_pairs(&std::fs::read_to_string(lfw.join("pairs.txt"))?)?;
    if limit < pairs.len() {
        // A quick look: the first `limit` pairs of every fold.
        let per = limit.div_ceil(10);
        let mut counts = [0usize; 10];
        pairs.retain(|p| {
            counts[p.fold] += 1;
            counts[p.fold] <= per
        });
    }
    let mut names: Vec<&str> = pairs
        .iter()
        .flat_map(|p| [p.a.as_str(), p.b.as_str()])
        .collect();
    names.sort();
    names.dedup();

    let mut pool = rayon::ThreadPoolBuilder::new();
    if threads > 0 {
        pool = pool.num_threads(threads);
    }
    let pool = pool.build()?;
    let pipeline = Pipeline::with_models(&ModelSource::resolve(None), config.clone())?;
    let start = Instant::now();
    let root = lfw.join("lfw-deepfunneled");
    // Pass 1: detect and choose the central face.
    let detections: Vec<(image::RgbImage, Option<Detection>)> = pool.install(|| {
        names
            .par_iter()
            .map(|n| -> Result<_> {
                let img = load_image(&root.join(n), &LoadOptions::default())?;
                let faces = facekit::nn::serial(|| pipeline.detector().detect(&img))?;
                let pick = select_face(&faces, policy, img.width(), img.height())
                    .map(|i| faces[i].clone());
                Ok((img, pick))
            })
            .collect::<Result<_>>()
    })?;
    let found: Vec<&Detection> = detections.iter().filter_map(|(_, d)| d.as_ref()).collect();
    let missing = detections.len() - found.len();
    let mean_landmarks: [Point; 5] = std::array::from_fn(|k| Point {
        x: found.iter().map(|d| d.landmarks[k].x).sum::<f32>() / found.len().max(1) as f32,
        y: found.iter().map(|d| d.landmarks[k].y).sum::<f32>() / found.len().max(1) as f32,
    });
    let mean_box = BBox {
        x1: found.iter().map(|d| d.bbox.x1).sum::<f32>() / found.len().max(1) as f32,
        y1: found.iter().map(|d| d.bbox.y1).sum::<f32>() / found.len().max(1) as f32,
        x2: found.iter().map(|d| d.bbox.x2).sum::<f32>() / found.len().max(1) as f32,
        y2: found.iter().map(|d| d.bbox.y2).sum::<f32>() / found.len().max(1) as f32,
    };
    let detect_time = start.elapsed().as_secs_f64();
    // Pass 2: embed.
    let embeddings: Vec<Vec<f32>> = pool
        .install(|| {
            detections
                .par_chunks(8)
                .map(|chunk| -> Result<Vec<Vec<f32>>> {
                    facekit::nn::serial(|| {
                        let chips: Vec<_> = chunk
                            .iter()
                            .map(|(img, det)| {
                                let det = det.clone().unwrap_or(Detection {
                                    bbox: mean_box,
                                    score: 0.0,
                                    landmarks: mean_landmarks,
                                });
                                pipeline.chip(img, &det)
                            })
                            .collect();
                        Ok(pipeline.embed_chips(&chips)?)
                    })
                })
                .collect::<Result<Vec<_>>>()
        })?
        .into_iter()
        .flatten()
        .collect();
    let total_time = start.elapsed().as_secs_f64();
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let items: Vec<(f32, bool, usize)> = pairs
        .iter()
        .map(|p| {
            let d = facekit::distance::euclidean(
                &embeddings[index[p.a.as_str()]],
                &embeddings[index[p.b.as_str()]],
            );
            (d, p.same, p.fold)
        })
        .collect();
    let mut accs = Vec::new();
    let mut thresholds = Vec::new();
    for k in 0..10 {
        let train: Vec<(f32, bool)> = items
            .iter()
            .filter(|x| x.2 != k)
            .map(|x| (x.0, x.1))
            .collect();
        let test: Vec<(f32, bool)> = items
            .iter()
            .filter(|x| x.2 == k)
            .map(|x| (x.0, x.1))
            .collect();
        if test.is_empty() {
            continue;
        }
        let (t, _) = best_threshold(&train);
        thresholds.push(t);
        accs.push(accuracy(&test, t));
    }
    let mean = accs.iter().sum::<f64>() / accs.len() as f64;
    let std = (accs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / accs.len() as f64).sqrt();
    let all: Vec<(f32, bool)> = items.iter().map(|x| (x.0, x.1)).collect();
    let (best_t, best_acc) = best_threshold(&all);
    let mean_t = thresholds.iter().sum::<f32>() / thresholds.len() as f32;
    println!("model            {}", pipeline.model_id());
    println!(
        "pairs            {} ({} images, {} without a detected face)",
        items.len(),
        names.len(),
        missing
    );
    println!(
        "10-fold accuracy {:.2} % +- {:.2}",
        100.0 * mean,
        100.0 * std
    );
    println!(
        "fold thresholds  mean {mean_t:.4} (min {:.4}, max {:.4})",
        thresholds.iter().cloned().fold(f32::MAX, f32::min),
        thresholds.iter().cloned().fold(f32::MIN, f32::max)
    );
    println!(
        "best threshold   {best_t:.4} -> {:.2} % on all pairs",
        100.0 * best_acc
    );
    println!(
        "wall time        {total_time:.1} s (detection {detect_time:.1} s, {:.1} images/s)",
        names.len() as f64 / total_time
    );
    Ok(())
}
