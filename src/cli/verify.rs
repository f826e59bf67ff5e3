//! `facekit verify A B`: same person or not, for shell scripts (exit 0 same, 1 different, 2 error).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use facekit::io::{self, LoadOptions};
use facekit::pipeline::{select_face, FacePolicy};
use serde::Serialize;

use super::output::outln;
use super::{CommonArgs, EXIT_FAILURE};

/// Which face of each photo is compared.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Policy {
    /// The largest face.
    Largest,
    /// The face nearest the image centre (the LFW convention).
    Center,
    /// The closest pair over all faces of A and B.
    BestPair,
}

/// Arguments of `facekit verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// First photo.
    a: PathBuf,
    /// Second photo.
    b: PathBuf,
    /// Distance below which the faces are the same person.
    /// (default: 0.60, calibrated on LFW; a trained --model's own calibrated threshold)
    #[arg(long, value_parser = super::parse::non_negative_f32)]
    threshold: Option<f32>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Which face of each photo to compare.
    #[arg(long, value_enum, default_value_t = Policy::Largest)]
    policy: Policy,
    #[command(flatten)]
    faces: super::FaceSizeArgs,
    #[command(flatten)]
    embedding: super::EmbeddingArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Serialize)]
struct Verdict<'a> {
    a: facekit::io::JsonPath<'a>,
    b: facekit::io::JsonPath<'a>,
    distance: f32,
    threshold: f32,
    same: bool,
    model: &'a str,
}

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let pipeline = args.embedding.pipeline(&args.common, args.faces.min_face)?;
    let threshold = match args.threshold.or(pipeline.default_threshold()) {
        Some(t) => t,
        None => anyhow::bail!("this model records no threshold: pass --threshold"),
    };
    let load = LoadOptions {
        max_pixels: args.common.max_pixels,
        ..LoadOptions::default()
    };
    let pool = super::runner::thread_pool(args.common.threads)?;
    // Faces (and their embeddings) of each photo; the policy decides which to embed.
    let faces_in = |path: &PathBuf| -> facekit::Result<Vec<Vec<f32>>> {
        let img = io::load_image(path, &load)?;
        let dets = pipeline.detector().detect(&img)?;
        let chosen = match args.policy {
            Policy::BestPair => dets,
            Policy::Largest | Policy::Center => {
                let policy = if matches!(args.policy, Policy::Largest) {
                    FacePolicy::Largest
                } else {
                    FacePolicy::Center
                };
                select_face(
                    dets.iter().map(|d| &d.bbox),
                    policy,
                    img.width(),
                    img.height(),
                )
                .map(|i| vec![dets[i].clone()])
                .unwrap_or_default()
            }
        };
        if chosen.is_empty() {
            return Err(facekit::Error::image(path, "no face found"));
        }
        pipeline.embed_detections(&img, &chosen)
    };
    let faces_of =
        |path: &PathBuf| -> facekit::Result<Vec<Vec<f32>>> { io::guard(path, || faces_in(path)) };
    let (ea, eb) = pool.install(|| rayon::join(|| faces_of(&args.a), || faces_of(&args.b)));
    let (ea, eb) = match (ea, eb) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            for e in [a.err(), b.err()].into_iter().flatten() {
                eprintln!("facekit: error: {e:#}");
            }
            return Ok(ExitCode::from(EXIT_FAILURE));
        }
    };
    let distance = ea
        .iter()
        .flat_map(|x| eb.iter().map(move |y| facekit::distance::euclidean(x, y)))
        .fold(f32::INFINITY, f32::min);
    let same = distance < threshold;
    if args.json {
        super::output::json_line(&Verdict {
            a: facekit::io::JsonPath(&args.a),
            b: facekit::io::JsonPath(&args.b),
            distance,
            threshold,
            same,
            model: &pipeline.model_id(),
        });
    } else {
        outln!(
            "{}: distance {distance:.4} (threshold {:.4})",
            if same {
                "same person"
            } else {
                "different people"
            },
            threshold
        );
    }
    Ok(if same {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
