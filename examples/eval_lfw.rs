//! LFW verification accuracy with the standard View 2 protocol (10 folds of 300 same + 300
//! different pairs): the threshold is chosen on 9 folds and tested on the held-out one.
//!
//! cargo run --release --example eval_lfw -- [--shared DIR] [--no-flip] [--policy center|largest]
//!     [--template dlib|dlib-mtcnn|arcface|facenet] [--detector mtcnn|yunet] [--threads N]
//!     [--limit N]
//!
//! Uses `../shared/data/lfw/lfw-deepfunneled` and `pairs.txt`. For each image the face nearest
//! the image centre is used (LFW's subject is centred); images where no face is found use the
//! mean landmarks of all detections (a centred face) and are counted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use facekit::align::Template;
use facekit::detect::{BBox, Detection, DetectorKind, Point};
use facekit::io::{load_image, LoadOptions};
use facekit::metrics::{self, Scored, Sweep};
use facekit::models::ModelSource;
use facekit::pairs::parse_lfw_pairs;
use facekit::pipeline::{select_face, FacePolicy, Pipeline, PipelineConfig};
use rayon::prelude::*;

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
            "--detector" => {
                config.detector.kind = match args.next().as_deref() {
                    Some("mtcnn") => DetectorKind::Mtcnn,
                    Some("yunet") => DetectorKind::YuNet,
                    other => bail!("--detector mtcnn|yunet, got {other:?}"),
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
    let root = lfw.join("lfw-deepfunneled");
    let file = lfw.join("pairs.txt");
    let mut pairs = parse_lfw_pairs(&std::fs::read_to_string(&file)?, &root, &file)?.pairs;
    let fold_of = |p: &facekit::pairs::Pair| p.fold.unwrap_or(0);
    if limit < pairs.len() {
        // A quick look: the first `limit` pairs of every fold.
        let per = limit.div_ceil(10);
        let mut counts = [0usize; 10];
        pairs.retain(|p| {
            counts[fold_of(p)] += 1;
            counts[fold_of(p)] <= per
        });
    }
    let mut names: Vec<&Path> = pairs
        .iter()
        .flat_map(|p| [p.a.as_path(), p.b.as_path()])
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
    // Pass 1: detect and choose the central face.
    let detections: Vec<(image::RgbImage, Option<Detection>)> = pool.install(|| {
        names
            .par_iter()
            .map(|n| -> Result<_> {
                let img = load_image(n, &LoadOptions::default())?;
                let faces = facekit::serial(|| pipeline.detector().detect(&img))?;
                let pick = select_face(
                    faces.iter().map(|d| &d.bbox),
                    policy,
                    img.width(),
                    img.height(),
                )
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
                    facekit::serial(|| {
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
    let index: HashMap<&Path, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let scored: Vec<Scored> = pairs
        .iter()
        .map(|p| Scored {
            distance: facekit::distance::euclidean(
                &embeddings[index[p.a.as_path()]],
                &embeddings[index[p.b.as_path()]],
            ),
            same: p.same,
        })
        .collect();
    let folds: Vec<usize> = pairs.iter().map(fold_of).collect();
    let kf = metrics::k_fold(&scored, &folds, 10);
    let thresholds: Vec<f32> = kf.folds.iter().map(|f| f.threshold).collect();
    let (mean, std) = (kf.accuracy_mean, kf.accuracy_std);
    let (best_t, best_acc) = Sweep::new(&scored).best_threshold();
    let mean_t = kf.threshold_mean;
    println!("model            {}", pipeline.model_id());
    println!("detector         {}", pipeline.detector().id());
    println!(
        "pairs            {} ({} images, {} without a detected face)",
        scored.len(),
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
