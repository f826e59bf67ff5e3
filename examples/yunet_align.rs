//! How to align YuNet's faces into dlib's chip: fits the candidate maps on the golden faces only
//! (`../shared/golden`: dlib's HOG boxes and 5-point parts, YuNet found by this port), scores
//! each candidate against dlib's own chips of the same faces, and optionally measures each on
//! LFW (10-fold, flip) from one YuNet detection pass.
//!
//! cargo run --release --example yunet_align -- [--shared DIR] [--lfw] [--variants A,B,...]
//!     [--threads N]
//!
//! Candidates (all end in dlib's 150 px chip, padding 0.25):
//! - `box`: the 5-point predictor in a box derived from YuNet's box (the constants in
//!   `src/align/shape_predictor.rs`);
//! - `lmbox`: the predictor in a square box derived from YuNet's landmarks: centre on the line
//!   from the eye midpoint to the mouth midpoint, side from the eye distance and the eye-mouth
//!   distance (least squares on the golden faces);
//! - `box+refit` / `lmbox+refit`: the predictor run a second time, in the box dlib's HOG detector
//!   would have given for the parts the first run found (fitted on dlib's own parts and boxes);
//! - `avgbox` / `avgbox+refit`: the mean of the `box` and `lmbox` boxes (two estimates of the same
//!   HOG box), without or with the second run; `box+refit2`: `box` with two second runs;
//! - `template`: no predictor; YuNet's 5 points mapped onto their mean position in dlib's chip
//!   frame (made mirror-symmetric), as `MTCNN_IN_DLIB_150` does for MTCNN.
//!
//! Measured (2 threads, loaded machine; LFW 10-fold with flip, most central face; golden: mean
//! alignment error in chip px / median descriptor distance to dlib's on the 79 golden faces):
//!
//! | variant | golden err px | golden desc median | LFW 10-fold |
//! |---|---|---|---|
//! | `box` (facekit's YuNet alignment) | 1.34 | 0.085 | 99.17 % +- 0.31 |
//! | `lmbox` | 0.90 | 0.082 | 99.12 % +- 0.32 |
//! | `box+refit` | 0.91 | 0.074 | 99.15 % +- 0.27 |
//! | `lmbox+refit` | 0.90 | 0.074 | 99.05 % +- 0.33 |
//! | `avgbox` | 1.10 | 0.080 | 99.10 % +- 0.41 |
//! | `avgbox+refit` | 0.88 | 0.073 | 99.03 % +- 0.40 |
//! | `template` | 5.43 | 0.192 | 99.03 % +- 0.36 |
//!
//! Better agreement with dlib on the golden faces does not carry over to LFW: the LFW spread
//! of the predictor variants (0.14 points, about 8 of 6,000 pairs) is within the fold-to-fold
//! noise, and none reaches MTCNN's 99.18 %, so facekit keeps `box`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use facekit::align::shape_predictor::ShapePredictor;
use facekit::align::{dlib_parts_template, extract_chip, Similarity, Template};
use facekit::detect::{BBox, Detection, Detector, DetectorConfig, DetectorKind, Point};
use facekit::io::{load_image, LoadOptions};
use facekit::metrics::{self, Scored};
use facekit::models::ModelSource;
use facekit::pairs::parse_lfw_pairs;
use facekit::pipeline::{select_face, FacePolicy, Pipeline, PipelineConfig};
use image::RgbImage;
use rayon::prelude::*;
use serde_json::Value;

const VARIANTS: [&str; 8] = [
    "box",
    "lmbox",
    "box+refit",
    "lmbox+refit",
    "template",
    "avgbox",
    "avgbox+refit",
    "box+refit2",
];

/// A square box of side `side` centred `beta` of the way from `top` to `bottom` (dlib rects
/// have whole-pixel corners).
fn axis_box(top: Point, bottom: Point, beta: f32, side: f32) -> BBox {
    let c = Point {
        x: top.x + beta * (bottom.x - top.x),
        y: top.y + beta * (bottom.y - top.y),
    };
    BBox {
        x1: (c.x - side / 2.0).round(),
        y1: (c.y - side / 2.0).round(),
        x2: (c.x + side / 2.0).round(),
        y2: (c.y + side / 2.0).round(),
    }
}

fn mid(a: Point, b: Point) -> Point {
    Point {
        x: (a.x + b.x) / 2.0,
        y: (a.y + b.y) / 2.0,
    }
}

fn dist(a: Point, b: Point) -> f32 {
    (a.x - b.x).hypot(a.y - b.y)
}

/// A face axis: top point, bottom point, and two sizes a box's side is fitted on.
type Axis = (Point, Point, f32, f32);

/// (top, bottom, first size, second size) of YuNet's landmarks: eye midpoint, mouth midpoint,
/// eye distance, eye-mouth distance.
fn yunet_axis(l: &[Point; 5]) -> Axis {
    let (e, m) = (mid(l[0], l[1]), mid(l[3], l[4]));
    (e, m, dist(l[0], l[1]), dist(e, m))
}

/// The same for dlib's parts: midpoint of the 4 eye corners, nose base, outer-corner distance,
/// eye-nose distance.
fn dlib_axis(p: &[Point]) -> Axis {
    let e = Point {
        x: (p[0].x + p[1].x + p[2].x + p[3].x) / 4.0,
        y: (p[0].y + p[1].y + p[2].y + p[3].y) / 4.0,
    };
    (e, p[4], dist(p[0], p[2]), dist(e, p[4]))
}

/// Least squares for a box on an axis: `beta` (centre along top->bottom) and `side = k0 s0 + k1 s1`.
#[derive(Debug, Clone, Copy)]
struct AxisFit {
    beta: f32,
    k: [f32; 2],
}

impl AxisFit {
    fn fit(samples: &[(Axis, BBox)]) -> AxisFit {
        let (mut num, mut den) = (0f64, 0f64);
        let (mut a00, mut a01, mut a11, mut b0, mut b1) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for ((t, b, s0, s1), r) in samples {
            let c = r.center();
            let (ax, ay) = ((b.x - t.x) as f64, (b.y - t.y) as f64);
            num += (c.x - t.x) as f64 * ax + (c.y - t.y) as f64 * ay;
            den += ax * ax + ay * ay;
            let side = ((r.width() + r.height()) / 2.0) as f64;
            let (s0, s1) = (*s0 as f64, *s1 as f64);
            a00 += s0 * s0;
            a01 += s0 * s1;
            a11 += s1 * s1;
            b0 += s0 * side;
            b1 += s1 * side;
        }
        let det = a00 * a11 - a01 * a01;
        AxisFit {
            beta: (num / den) as f32,
            k: [
                ((a11 * b0 - a01 * b1) / det) as f32,
                ((a00 * b1 - a01 * b0) / det) as f32,
            ],
        }
    }

    fn apply(&self, (t, b, s0, s1): Axis) -> BBox {
        axis_box(t, b, self.beta, self.k[0] * s0 + self.k[1] * s1)
    }
}

struct Fits {
    lm: AxisFit,
    parts: AxisFit,
    template: [Point; 5],
}

struct Aligners<'a> {
    predictor: &'a ShapePredictor,
    fits: &'a Fits,
}

impl Aligners<'_> {
    /// Chip-to-image transform of `variant` for one YuNet detection.
    fn transform(&self, variant: &str, img: &RgbImage, det: &Detection) -> Option<Similarity> {
        let dst = dlib_parts_template(150, 0.25);
        let run = |rect: BBox, refits: usize| {
            let mut parts = self.predictor.predict(img, &rect);
            for _ in 0..refits {
                let rect = self.fits.parts.apply(dlib_axis(&parts));
                parts = self.predictor.predict(img, &rect);
            }
            Similarity::estimate(&dst, &parts)
        };
        let yunet_box = || ShapePredictor::box_from_detection(&det.bbox, DetectorKind::YuNet);
        let lm_box = || self.fits.lm.apply(yunet_axis(&det.landmarks));
        let avg_box = || {
            let (a, b) = (yunet_box(), lm_box());
            BBox {
                x1: ((a.x1 + b.x1) / 2.0).round(),
                y1: ((a.y1 + b.y1) / 2.0).round(),
                x2: ((a.x2 + b.x2) / 2.0).round(),
                y2: ((a.y2 + b.y2) / 2.0).round(),
            }
        };
        match variant {
            "box" => run(yunet_box(), 0),
            "lmbox" => run(lm_box(), 0),
            "box+refit" => run(yunet_box(), 1),
            "lmbox+refit" => run(lm_box(), 1),
            "avgbox" => run(avg_box(), 0),
            "avgbox+refit" => run(avg_box(), 1),
            "box+refit2" => run(yunet_box(), 2),
            "template" => Similarity::estimate(&self.fits.template, &det.landmarks),
            _ => None,
        }
    }

    fn chip(&self, variant: &str, img: &RgbImage, det: &Detection) -> RgbImage {
        match self.transform(variant, img, det) {
            Some(t) => extract_chip(img, &t, 150),
            None => facekit::align::crop_box(img, &det.bbox, 0.0, 150),
        }
    }
}

struct GoldenFace {
    image: usize,
    hog: BBox,
    parts: Vec<Point>,
    encoding: Vec<f32>,
    det: Detection,
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_f64)
                .map(|x| x as f32)
                .collect()
        })
        .unwrap_or_default()
}

fn main() -> Result<()> {
    let mut shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let mut lfw = false;
    let mut threads = 0;
    let mut only: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--shared" => shared = PathBuf::from(args.next().context("--shared DIR")?),
            "--lfw" => lfw = true,
            "--threads" => threads = args.next().context("--threads N")?.parse()?,
            "--variants" => {
                only = args
                    .next()
                    .context("--variants A,B,...")?
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let mut pool = rayon::ThreadPoolBuilder::new();
    if threads > 0 {
        pool = pool.num_threads(threads);
    }
    let pool = pool.build()?;
    let source = ModelSource::resolve(None);
    let predictor = ShapePredictor::new(&source)?;
    let detector_config = DetectorConfig {
        kind: DetectorKind::YuNet,
        ..Default::default()
    };

    // Golden faces: dlib's HOG boxes and parts, matched to this port's YuNet faces (score >=
    // 0.5, best IoU >= 0.3).
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(shared.join("golden/dlib.json"))?)?;
    let mut golden_config = detector_config.clone();
    golden_config.lower_score_threshold(0.5);
    let detector = Detector::new(&source, golden_config)?;
    let mut images = Vec::new();
    let mut faces = Vec::new();
    for im in golden["images"].as_array().context("images")? {
        let img = load_image(
            &shared.join(im["path"].as_str().context("path")?),
            &LoadOptions::default(),
        )?;
        let dets = detector.detect(&img)?;
        let rects = im["hog"]["raw_rects_ltrb"].as_array().context("rects")?;
        for (f, r) in im["faces"].as_array().context("faces")?.iter().zip(rects) {
            let r = floats(r);
            let hog = BBox::from_array([r[0], r[1], r[2], r[3]]);
            let parts: Vec<Point> = f["landmarks5_parts"]
                .as_array()
                .context("parts")?
                .iter()
                .map(|p| {
                    let p = floats(p);
                    Point { x: p[0], y: p[1] }
                })
                .collect();
            let best = dets
                .iter()
                .max_by(|a, b| a.bbox.iou(&hog).total_cmp(&b.bbox.iou(&hog)));
            if let Some(d) = best.filter(|d| d.bbox.iou(&hog) >= 0.3) {
                faces.push(GoldenFace {
                    image: images.len(),
                    hog,
                    parts,
                    encoding: floats(&f["encoding"]),
                    det: d.clone(),
                });
            }
        }
        images.push(img);
    }
    println!("golden faces matched: {}", faces.len());

    let dst = dlib_parts_template(150, 0.25);
    let lm = AxisFit::fit(
        &faces
            .iter()
            .map(|f| (yunet_axis(&f.det.landmarks), f.hog))
            .collect::<Vec<_>>(),
    );
    let parts = AxisFit::fit(
        &faces
            .iter()
            .map(|f| (dlib_axis(&f.parts), f.hog))
            .collect::<Vec<_>>(),
    );
    // YuNet's points in dlib's chip frame, averaged, then mirror-symmetric about the
    // template's axis (the nose base's x).
    let mut mean = [Point { x: 0.0, y: 0.0 }; 5];
    for f in &faces {
        let Some(t) = Similarity::estimate(&f.parts, &dst) else {
            continue;
        };
        for (m, p) in mean.iter_mut().zip(&f.det.landmarks) {
            let q = t.apply(*p);
            m.x += q.x / faces.len() as f32;
            m.y += q.y / faces.len() as f32;
        }
    }
    let axis = dst[4].x;
    let sym = |a: Point, b: Point| {
        let (half, y) = (((b.x - axis) - (a.x - axis)) / 4.0, (a.y + b.y) / 2.0);
        (
            Point {
                x: axis - 2.0 * half,
                y,
            },
            Point {
                x: axis + 2.0 * half,
                y,
            },
        )
    };
    let (e0, e1) = sym(mean[0], mean[1]);
    let (m0, m1) = sym(mean[3], mean[4]);
    let template = [
        e0,
        e1,
        Point {
            x: axis,
            y: mean[2].y,
        },
        m0,
        m1,
    ];
    println!(
        "lmbox: centre {:.4} of the way eyes->mouth, side {:.4} * eye distance + {:.4} * eye-mouth distance",
        lm.beta, lm.k[0], lm.k[1]
    );
    println!(
        "refit (dlib parts -> HOG box): centre {:.4} of the way eyes->nose base, side {:.4} * outer-corner distance + {:.4} * eye-nose distance",
        parts.beta, parts.k[0], parts.k[1]
    );
    println!(
        "template (YuNet points in dlib's 150 px chip): {}",
        template
            .iter()
            .map(|p| format!("[{:.2}, {:.2}]", p.x, p.y))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let fits = Fits {
        lm,
        parts,
        template,
    };
    let al = Aligners {
        predictor: &predictor,
        fits: &fits,
    };

    // Golden scores: alignment error in chip pixels (dlib's template points through the
    // candidate's transform vs dlib's parts) and the distance of the chip's descriptor (no
    // flip) to dlib's.
    let plain = Pipeline::with_models(
        &source,
        PipelineConfig {
            detector: detector_config.clone(),
            flip: false,
            ..Default::default()
        },
    )?;
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>10}",
        "variant", "err px", "err max", "desc med", "desc mean"
    );
    for v in VARIANTS {
        let mut errs = Vec::new();
        let mut chips = Vec::new();
        for f in &faces {
            let img = &images[f.image];
            let t = al.transform(v, img, &f.det).context("no transform")?;
            let Some(truth) = Similarity::estimate(&f.parts, &dst) else {
                continue;
            };
            // Candidate's image points of the template, back in dlib's chip frame.
            let e = dst
                .iter()
                .map(|p| dist(truth.apply(t.apply(*p)), *p))
                .sum::<f32>()
                / 5.0;
            errs.push(e);
            chips.push(al.chip(v, img, &f.det));
        }
        let embs = plain.embed_chips(&chips)?;
        let mut d: Vec<f32> = embs
            .iter()
            .zip(&faces)
            .map(|(e, f)| facekit::distance::euclidean(e, &f.encoding))
            .collect();
        d.sort_by(f32::total_cmp);
        println!(
            "{:<12} {:>10.3} {:>10.3} {:>10.4} {:>10.4}",
            v,
            errs.iter().sum::<f32>() / errs.len() as f32,
            errs.iter().cloned().fold(0.0, f32::max),
            d[d.len() / 2],
            d.iter().sum::<f32>() / d.len() as f32
        );
    }
    if !lfw {
        return Ok(());
    }

    // LFW: one YuNet pass, then every variant's chips embedded with flip.
    let lfw_dir = shared.join("data/lfw");
    let root = lfw_dir.join("lfw-deepfunneled");
    let file = lfw_dir.join("pairs.txt");
    let pairs = parse_lfw_pairs(&std::fs::read_to_string(&file)?, &root, &file)?.pairs;
    let mut names: Vec<&Path> = pairs
        .iter()
        .flat_map(|p| [p.a.as_path(), p.b.as_path()])
        .collect();
    names.sort();
    names.dedup();
    let pipeline = Pipeline::with_models(
        &source,
        PipelineConfig {
            detector: detector_config,
            ..Default::default()
        },
    )?;
    let detections: Vec<(RgbImage, Detection)> = pool.install(|| {
        names
            .par_iter()
            .map(|n| -> Result<_> {
                let img = load_image(n, &LoadOptions::default())?;
                let dets = facekit::serial(|| pipeline.detector().detect(&img))?;
                let pick = select_face(
                    dets.iter().map(|d| &d.bbox),
                    FacePolicy::Center,
                    img.width(),
                    img.height(),
                )
                .map(|i| dets[i].clone())
                .unwrap_or_else(|| pipeline.central_detection(img.width(), img.height()));
                Ok((img, pick))
            })
            .collect::<Result<_>>()
    })?;
    let index: HashMap<&Path, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let folds: Vec<usize> = pairs.iter().map(|p| p.fold.unwrap_or(0)).collect();
    assert_eq!(pipeline.config().template, Template::Dlib);
    for v in VARIANTS
        .into_iter()
        .filter(|v| only.is_empty() || only.iter().any(|o| o == v))
    {
        let start = std::time::Instant::now();
        let embeddings: Vec<Vec<f32>> = pool
            .install(|| {
                detections
                    .par_chunks(8)
                    .map(|chunk| -> Result<Vec<Vec<f32>>> {
                        facekit::serial(|| {
                            let chips: Vec<_> =
                                chunk.iter().map(|(img, d)| al.chip(v, img, d)).collect();
                            Ok(pipeline.embed_chips(&chips)?)
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })?
            .into_iter()
            .flatten()
            .collect();
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
        let kf = metrics::k_fold(&scored, &folds, 10);
        println!(
            "LFW {:<12} 10-fold {:.2} % +- {:.2} (threshold mean {:.4}; {:.0} s)",
            v,
            100.0 * kf.accuracy_mean,
            100.0 * kf.accuracy_std,
            kf.threshold_mean,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
