//! `facekit align`: one aligned PNG chip per face, `<stem>_<k>.png`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use facekit::align::{Aligner, Template};
use facekit::io::{self, LoadOptions};
use facekit::models::ModelSource;
use facekit::Detector;

use super::output::display_path;
use super::runner::{collect_inputs, exit_status, progress, run_ordered, thread_pool};
use super::CommonArgs;

/// Alignment templates.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TemplateArg {
    /// dlib's 150 px chip from dlib's 5-point shape predictor (what the dlib ResNet expects).
    Dlib,
    /// dlib's 150 px chip frame from MTCNN's 5 points (no shape predictor).
    DlibMtcnn,
    /// ArcFace 112 px template.
    Arcface,
    /// FaceNet crop: box plus 44 px margin, 160 px, no rotation.
    Facenet,
}

impl From<TemplateArg> for Template {
    fn from(t: TemplateArg) -> Self {
        match t {
            TemplateArg::Dlib => Template::Dlib,
            TemplateArg::DlibMtcnn => Template::DlibMtcnn,
            TemplateArg::Arcface => Template::Arcface,
            TemplateArg::Facenet => Template::Facenet,
        }
    }
}

/// Arguments of `facekit align`.
#[derive(Args, Debug)]
pub struct AlignArgs {
    /// Image files or directories (walked recursively).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Directory for the chips (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Chip side in pixels (default: the template's own, 150 / 112 / 160).
    #[arg(long)]
    size: Option<u32>,
    /// Alignment template.
    #[arg(long, value_enum, default_value_t = TemplateArg::Dlib)]
    template: TemplateArg,
    /// Replace chips that already exist.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    common: CommonArgs,
}

pub fn run(args: AlignArgs) -> anyhow::Result<ExitCode> {
    let template: Template = args.template.into();
    let size = args.size.unwrap_or(template.default_size());
    anyhow::ensure!(
        (16..=2048).contains(&size),
        "--size must be between 16 and 2048"
    );
    let source = ModelSource::resolve(args.common.models.as_deref());
    let detector =
        Detector::new(&source, Default::default()).context("cannot load the MTCNN detector")?;
    let aligner = Aligner::new(&source, template, size).context("cannot load the aligner")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let load = LoadOptions {
        max_pixels: args.common.max_pixels,
        ..LoadOptions::default()
    };
    let pool = thread_pool(args.common.threads)?;
    let (inputs, mut failures) = collect_inputs(&args.paths, |e| eprintln!("facekit: error: {e}"));
    let pb = progress(inputs.len(), "images");
    let job = |path: &PathBuf| -> facekit::Result<Vec<facekit::Result<PathBuf>>> {
        let img = io::load_image(path, &load)?;
        let faces = detector.detect(&img)?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".to_string());
        Ok(faces
            .iter()
            .enumerate()
            .map(|(k, f)| {
                let chip = aligner.chip(&img, &f.bbox, &f.landmarks);
                let mut png = Vec::new();
                chip.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                    .map_err(|e| facekit::Error::image(path, format!("cannot encode chip: {e}")))?;
                let target = args.out.join(format!("{stem}_{k}.png"));
                io::write_file_atomic(&target, &png, args.force)?;
                Ok(target)
            })
            .collect())
    };
    let mut chips = 0usize;
    run_ordered(&pool, &inputs, &pb, job, |i, result| match result {
        Ok(written) => {
            for w in written {
                match w {
                    Ok(p) => {
                        chips += 1;
                        println!("{}\t{}", display_path(&inputs[i]), display_path(&p));
                    }
                    Err(e) => {
                        failures += 1;
                        eprintln!("facekit: error: {e}");
                    }
                }
            }
        }
        Err(e) => {
            failures += 1;
            eprintln!("facekit: error: {e}");
        }
    });
    eprintln!("{chips} chip(s) written to {}", args.out.display());
    Ok(exit_status(failures))
}
