//! `facekit verify A B`: same person or not, for shell scripts (exit 0 same, 1 different, 2 error).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use facekit::io::{self, LoadOptions};
use facekit::models::ModelSource;
use facekit::pipeline::{select_face, FacePolicy};
use facekit::{Pipeline, PipelineConfig};
use serde::Serialize;

use super::{CommonArgs, EXIT_FAILURE};

/// Default threshold on the Euclidean distance of flip-averaged dlib embeddings, calibrated on
/// LFW by `facekit threshold-sweep ... --pairs pairs.txt --folds 10` (README): the 10 fold
/// thresholds span 0.5991-0.6002 (mean 0.6000) and the best single threshold over all 6,000
/// pairs is 0.6001.
pub const DEFAULT_THRESHOLD: f32 = 0.60;

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
    #[arg(long, default_value_t = DEFAULT_THRESHOLD)]
    threshold: f32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Which face of each photo to compare.
    #[arg(long, value_enum, default_value_t = Policy::Largest)]
    policy: Policy,
    /// Do not average each embedding with its mirror image's.
    #[arg(long)]
    no_flip: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Serialize)]
struct Verdict<'a> {
    a: &'a str,
    b: &'a str,
    distance: f32,
    threshold: f32,
    same: bool,
    model: &'a str,
}

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let config = PipelineConfig {
        flip: !args.no_flip,
        ..PipelineConfig::default()
    };
    let source = ModelSource::resolve(args.common.models.as_deref());
    let pipeline = Pipeline::with_models(&source, config).context("cannot load the models")?;
    let load = LoadOptions {
        max_pixels: args.common.max_pixels,
        ..LoadOptions::default()
    };
    let pool = super::runner::thread_pool(args.common.threads)?;
    // Faces (and their embeddings) of each photo; the policy decides which to embed.
    let faces_of = |path: &PathBuf| -> anyhow::Result<Vec<Vec<f32>>> {
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
                select_face(&dets, policy, img.width(), img.height())
                    .map(|i| vec![dets[i].clone()])
                    .unwrap_or_default()
            }
        };
        anyhow::ensure!(!chosen.is_empty(), "{}: no face found", path.display());
        Ok(pipeline.embed_detections(&img, &chosen)?)
    };
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
    let same = distance < args.threshold;
    let (a, b) = (args.a.to_string_lossy(), args.b.to_string_lossy());
    if args.json {
        super::output::json_line(&Verdict {
            a: &a,
            b: &b,
            distance,
            threshold: args.threshold,
            same,
            model: &pipeline.model_id(),
        });
    } else {
        println!(
            "{}: distance {distance:.4} (threshold {:.4})",
            if same {
                "same person"
            } else {
                "different people"
            },
            args.threshold
        );
    }
    Ok(if same {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
