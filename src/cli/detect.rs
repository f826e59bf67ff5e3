//! `facekit detect`: MTCNN over files and directories, as a table, JSON Lines, or annotated copies.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use facekit::io::{self, LoadOptions};
use facekit::models::ModelSource;
use facekit::{Detection, Detector};
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_filled_circle_mut, draw_hollow_rect_mut};
use imageproc::rect::Rect;

use facekit::io::JsonPath;

use super::output::{
    display_path, flush_stdout, json_line, note, DetectTable, ErrorRecord, FaceRecord, ImageRecord,
};
use super::runner::{exit_status, inputs, progress, run_ordered, thread_pool};
use super::CommonArgs;

/// Arguments of `facekit detect`.
#[derive(Args, Debug)]
pub struct DetectArgs {
    /// Image files or directories (walked recursively; images recognised by content).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Print JSON Lines (one object per image) instead of a table.
    #[arg(long)]
    json: bool,
    /// Write copies of the images with boxes and landmarks drawn into DIR (never overwrites).
    #[arg(long, value_name = "DIR")]
    annotate: Option<PathBuf>,
    #[command(flatten)]
    faces: super::FaceSizeArgs,
    /// P-Net, R-Net and O-Net score thresholds, each in [0, 1] (comma-separated).
    #[arg(long, value_name = "P,R,O", value_delimiter = ',', num_args = 1, default_values_t = [0.6f32, 0.7, 0.7], value_parser = super::parse::unit_f32)]
    thresholds: Vec<f32>,
    /// Scale factor between image pyramid levels.
    #[arg(long, default_value_t = 0.709, value_parser = super::parse::open_unit_f64)]
    factor: f64,
    #[command(flatten)]
    common: CommonArgs,
}

/// What one image produced.
struct Outcome {
    width: u32,
    height: u32,
    faces: Vec<Detection>,
    annotated: Option<facekit::Result<PathBuf>>,
}

pub fn run(args: DetectArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.thresholds.len() == 3,
        "--thresholds takes three values, P,R,O (e.g. 0.6,0.7,0.7), got {}",
        args.thresholds.len()
    );
    let mut config = args.common.detector_config(args.faces.min_face);
    config.mtcnn.thresholds = [args.thresholds[0], args.thresholds[1], args.thresholds[2]];
    config.mtcnn.factor = args.factor;
    let config = config.with_min_score(args.common.min_score);
    let source = ModelSource::resolve(args.common.models.as_deref());
    let detector = Detector::new(&source, config).context("cannot load the detector")?;
    super::about::verbose_detector(&source, &detector);
    let load = LoadOptions {
        max_pixels: args.common.max_pixels,
        ..LoadOptions::default()
    };
    if let Some(dir) = &args.annotate {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create annotation directory {}", dir.display()))?;
    }
    let pool = thread_pool(args.common.threads)?;

    let inputs = inputs(&args.paths);
    if !args.json {
        DetectTable::header();
    }
    let pb = progress(inputs.len(), "images");
    let (mut images, mut faces_total, mut failures) = (0usize, 0usize, 0usize);
    let job = |path: &Path| -> facekit::Result<Outcome> {
        let photo = io::load_photo(path, &load, |w, h| detector.working_scale(w, h))?;
        let faces = detector.detect_photo(&photo)?;
        let (width, height) = photo.dimensions();
        let annotated = match args.annotate.as_deref() {
            Some(dir) => {
                let img = photo
                    .full()
                    .map_err(|reason| facekit::Error::image(path, reason))?;
                Some(annotate(dir, path, &img, &faces))
            }
            None => None,
        };
        Ok(Outcome {
            width,
            height,
            faces,
            annotated,
        })
    };
    run_ordered(&pool, &inputs, &pb, job, |i, outcome| match outcome {
        Ok(Outcome {
            width,
            height,
            faces,
            annotated,
        }) => {
            let path = inputs[i].as_deref().unwrap_or(Path::new(""));
            images += 1;
            faces_total += faces.len();
            if args.json {
                json_line(&ImageRecord {
                    path: JsonPath(path),
                    width,
                    height,
                    faces: faces.iter().map(FaceRecord::from).collect(),
                });
            } else {
                DetectTable::rows(&display_path(path), &faces);
            }
            if let Some(Err(e)) = annotated {
                failures += 1;
                eprintln!("facekit: error: cannot write annotated copy: {e}");
            }
        }
        Err(e) => {
            failures += 1;
            report_failure(args.json, &e);
        }
    });
    flush_stdout();
    if !args.json {
        note!(
            "{images} image(s), {faces_total} face(s){}",
            if failures > 0 {
                format!(", {failures} failed")
            } else {
                String::new()
            }
        );
    }
    Ok(exit_status(failures))
}

/// An error line on stderr, and with `--json` an error record on stdout.
fn report_failure(json: bool, e: &facekit::Error) {
    super::output::report(e);
    if json {
        json_line(&ErrorRecord {
            path: JsonPath(e.path().unwrap_or(Path::new(""))),
            error: &e.reason(),
        });
    }
}

/// Draws boxes and landmarks on a copy of `img` and writes it as `DIR/<stem>_faces.jpg`.
fn annotate(
    dir: &Path,
    src: &Path,
    img: &RgbImage,
    faces: &[Detection],
) -> facekit::Result<PathBuf> {
    let mut canvas = img.clone();
    let thickness = (img.width().max(img.height()) / 400).max(1) as i32;
    let radius = thickness + 1;
    let green = Rgb([0u8, 255, 0]);
    let red = Rgb([255u8, 0, 0]);
    for f in faces {
        let b = f.bbox;
        for t in 0..thickness {
            let x = b.x1.round() as i32 - t;
            let y = b.y1.round() as i32 - t;
            let w = (b.width().round() as i32 + 2 * t).max(1) as u32;
            let h = (b.height().round() as i32 + 2 * t).max(1) as u32;
            draw_hollow_rect_mut(&mut canvas, Rect::at(x, y).of_size(w, h), green);
        }
        for p in f.landmarks {
            draw_filled_circle_mut(
                &mut canvas,
                (p.x.round() as i32, p.y.round() as i32),
                radius,
                red,
            );
        }
    }
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(&canvas)
        .map_err(|e| facekit::Error::image(src, format!("cannot encode annotated copy: {e}")))?;
    let stem = src
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".to_string());
    io::write_new_file(dir, &format!("{stem}_faces"), ".jpg", &bytes)
}
