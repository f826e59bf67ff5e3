//! `facekit align`: one aligned PNG chip per face, `<stem>_<k>.png`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use facekit::align::{Aligner, Template};
use facekit::io::{self, LoadOptions};
use facekit::models::ModelSource;
use facekit::Detector;

use super::output::{display_path, flush_stdout, note, outln};
use super::runner::{exit_status, inputs, progress, run_ordered, thread_pool, Input};
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
    faces: super::FaceSizeArgs,
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
    let detector = Detector::new(&source, args.common.detector_config(args.faces.min_face))
        .context("cannot load the detector")?;
    super::about::verbose_detector(&source, &detector);
    let aligner = Aligner::new(&source, template, size)
        .context("cannot load the aligner")?
        .for_detector(detector.config().kind);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let load = LoadOptions {
        max_pixels: args.common.max_pixels,
        ..LoadOptions::default()
    };
    let pool = thread_pool(args.common.threads)?;
    let inputs = inputs(&args.paths);
    let names = chip_names(&inputs);
    let name_of: std::collections::HashMap<&Path, &str> = inputs
        .iter()
        .zip(&names)
        .filter_map(|(i, n)| Some((i.as_deref().ok()?, n.as_str())))
        .collect();
    let pb = progress(inputs.len(), "images");
    let job = |path: &Path| -> facekit::Result<Vec<facekit::Result<PathBuf>>> {
        let photo = io::load_photo(path, &load, |w, h| detector.working_scale(w, h))?;
        let faces = detector.detect_photo(&photo)?;
        let img = if faces.is_empty() {
            std::borrow::Cow::Borrowed(photo.decoded())
        } else {
            photo
                .full()
                .map_err(|reason| facekit::Error::image(path, reason))?
        };
        let stem = name_of.get(path).copied().unwrap_or("image");
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
    let (mut chips, mut failures) = (0usize, 0usize);
    run_ordered(&pool, &inputs, &pb, job, |i, result| match result {
        Ok(written) => {
            for w in written {
                match w {
                    Ok(p) => {
                        chips += 1;
                        let src = inputs[i].as_deref().unwrap_or(Path::new(""));
                        outln!("{}\t{}", display_path(src), display_path(&p));
                    }
                    Err(e) => {
                        failures += 1;
                        super::output::report(&e);
                    }
                }
            }
        }
        Err(e) => {
            failures += 1;
            super::output::report(&e);
        }
    });
    flush_stdout();
    note!("{chips} chip(s) written to {}", args.out.display());
    Ok(exit_status(failures))
}

/// The name each input's chips start with: its file stem, or where two inputs share a stem
/// (`a/x.jpg`, `b/x.jpg`), the parent folder's name and the stem (`a_x`, `b_x`), with `-N`
/// added if that is still not unique. No chip of one input can replace another's.
fn chip_names(inputs: &[Input]) -> Vec<String> {
    let stem = |p: &Path| {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".to_string())
    };
    let mut names: Vec<String> = inputs
        .iter()
        .map(|i| i.as_deref().map(stem).unwrap_or_default())
        .collect();
    // How often each name occurs (one pass; a large folder stays linear).
    let counts = |names: &[String]| {
        let mut c: std::collections::HashMap<String, usize> = Default::default();
        names
            .iter()
            .for_each(|n| *c.entry(n.clone()).or_default() += 1);
        c
    };
    let first = counts(&names);
    for (input, name) in inputs.iter().zip(names.iter_mut()) {
        if let Ok(p) = input {
            if first[name.as_str()] > 1 {
                let parent = p
                    .parent()
                    .and_then(|d| d.file_name())
                    .map(|d| d.to_string_lossy().into_owned())
                    .unwrap_or_default();
                *name = format!("{parent}_{name}");
            }
        }
    }
    let second = counts(&names);
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    for (input, name) in inputs.iter().zip(names.iter_mut()) {
        if input.is_ok() && second[name.as_str()] > 1 {
            let n = seen.entry(name.clone()).or_default();
            *n += 1;
            *name = format!("{name}-{n}");
        }
    }
    names
}
