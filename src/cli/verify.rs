//! `facekit verify A B`: same person or not, for shell scripts (exit 0 same, 1 different, 2 error).
//! The workflow is [`facekit::verify`]'s; this parses the arguments and prints the verdict.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use facekit::io::{JsonPath, LoadOptions};
use facekit::verify::{self, Compared, Verdict};
use serde::Serialize;

use super::output::{display_path, note, outln};
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

impl From<Policy> for verify::Policy {
    fn from(p: Policy) -> Self {
        match p {
            Policy::Largest => verify::Policy::Largest,
            Policy::Center => verify::Policy::Center,
            Policy::BestPair => verify::Policy::BestPair,
        }
    }
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
    /// Print one JSON object instead of text (schema in the README).
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

/// The compared face of one photo in `--json`.
#[derive(Serialize)]
struct ComparedRecord {
    face: usize,
    #[serde(rename = "box")]
    bbox: [f32; 4],
    score: f32,
}

impl From<Compared> for ComparedRecord {
    fn from(c: Compared) -> Self {
        ComparedRecord {
            face: c.index,
            bbox: c.face.bbox.to_array(),
            score: c.face.score,
        }
    }
}

/// A value per photo.
#[derive(Serialize)]
struct PerPhoto<T> {
    a: T,
    b: T,
}

/// The `--json` object (schema in the README).
#[derive(Serialize)]
struct VerdictRecord<'a> {
    a: JsonPath<'a>,
    b: JsonPath<'a>,
    distance: f32,
    threshold: f32,
    same: bool,
    model: &'a str,
    policy: &'static str,
    faces: PerPhoto<usize>,
    compared: PerPhoto<ComparedRecord>,
}

/// Runs `facekit verify`.
pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let pipeline = args.embedding.pipeline(&args.common, args.faces.min_face)?;
    let Some(threshold) = args.threshold.or(pipeline.default_threshold()) else {
        anyhow::bail!("this model records no threshold: pass --threshold");
    };
    let load = LoadOptions {
        max_pixels: args.common.max_pixels,
        ..LoadOptions::default()
    };
    let pool = super::runner::thread_pool(args.common.threads)?;
    let policy = verify::Policy::from(args.policy);
    let verdict = match pool
        .install(|| verify::verify_files(&pipeline, &args.a, &args.b, policy, threshold, &load))
    {
        Ok(v) => v,
        Err(e) => {
            for e in &e.errors {
                super::output::report(e);
            }
            return Ok(ExitCode::from(EXIT_FAILURE));
        }
    };
    note_several_faces(&verdict, &args.a, &args.b);
    if args.json {
        super::output::json_line(&VerdictRecord {
            a: JsonPath(&args.a),
            b: JsonPath(&args.b),
            distance: verdict.distance,
            threshold,
            same: verdict.same,
            model: &pipeline.model_id(),
            policy: policy.name(),
            faces: PerPhoto {
                a: verdict.faces_a.len(),
                b: verdict.faces_b.len(),
            },
            compared: PerPhoto {
                a: verdict.compared_a().into(),
                b: verdict.compared_b().into(),
            },
        });
    } else {
        print_text(&verdict, &args.a, &args.b);
    }
    Ok(if verdict.same {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The verdict line, then one line per photo: its face count and the compared face.
fn print_text(v: &Verdict, a: &Path, b: &Path) {
    outln!(
        "{}: distance {:.4} (threshold {:.4})",
        if v.same {
            "same person"
        } else {
            "different people"
        },
        v.distance,
        v.threshold
    );
    for (tag, path, faces, c) in [
        ("A", a, v.faces_a.len(), v.compared_a()),
        ("B", b, v.faces_b.len(), v.compared_b()),
    ] {
        let bb = c.face.bbox;
        outln!(
            "  {tag} {}: {faces} face{}, compared face {} (box {:.0},{:.0}-{:.0},{:.0}, score {:.3})",
            display_path(path),
            if faces == 1 { "" } else { "s" },
            c.index,
            bb.x1,
            bb.y1,
            bb.x2,
            bb.y2,
            c.face.score
        );
    }
}

/// Under a single-face policy, a note on stderr for each photo with several faces: which one
/// was compared, and that `--policy best-pair` compares them all.
fn note_several_faces(v: &Verdict, a: &Path, b: &Path) {
    let which = match v.policy {
        verify::Policy::Largest => "the largest",
        verify::Policy::Center => "the one nearest the centre",
        _ => return,
    };
    for (path, n, index) in [
        (a, v.faces_a.len(), v.pair.0),
        (b, v.faces_b.len(), v.pair.1),
    ] {
        if n > 1 {
            note!(
                "facekit: note: {} has {n} faces; compared {which} (face {index}). \
                 --policy best-pair compares every face of A with every face of B",
                display_path(path)
            );
        }
    }
}
