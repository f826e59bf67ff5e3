//! Times `Detector::detect` per image: median milliseconds over repeats, at the image's own size
//! and with the long side resized to `--long-side` px. Used by `scripts/bench-detect.sh`.
//!
//! cargo run --release --example bench_detect -- [--repeat R] [--long-side L] [--threads N]
//!     [--stages] IMAGE...
//! Prints one JSON object: {"tool": "facekit", "threads", "long_side", "images", "median_ms", ...}.
//! `--stages` adds an MTCNN per-stage breakdown from separate runs of `Mtcnn::detect_profiled`:
//! `"stages"`: mean over images of each image's median ms per stage (P-Net with the pyramid, R-Net
//! and O-Net with their crops and NMS) and the mean number of R-Net and O-Net candidates.
//! `--reference` times the breakdown on the candle networks (`Mtcnn::detect_profiled_reference`,
//! the code the CPU kernels replaced) instead.

use std::time::Instant;

use facekit::detect::mtcnn::StageProfile;
use facekit::io::{load_image, LoadOptions};
use facekit::models::ModelSource;
use facekit::Detector;
use image::imageops::FilterType;

fn main() -> anyhow::Result<()> {
    let mut repeat = 3usize;
    let mut long_side = 0u32;
    let mut threads = 0usize;
    let mut stages = false;
    let mut reference = false;
    let mut paths = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--repeat" => repeat = args.next().unwrap_or_default().parse()?,
            "--long-side" => long_side = args.next().unwrap_or_default().parse()?,
            "--threads" => threads = args.next().unwrap_or_default().parse()?,
            "--stages" => stages = true,
            "--reference" => {
                stages = true;
                reference = true;
            }
            _ => paths.push(a),
        }
    }
    anyhow::ensure!(
        !paths.is_empty(),
        "usage: bench_detect [--repeat R] [--long-side L] [--threads N] [--stages] [--reference] IMAGE..."
    );
    let mut pool = rayon::ThreadPoolBuilder::new();
    if threads > 0 {
        pool = pool.num_threads(threads);
    }
    // Run inside the pool, as the CLI does, so parallel kernels do not pay for injection.
    pool.build()?
        .install(|| run(repeat, long_side, stages, reference, &paths))
}

fn run(
    repeat: usize,
    long_side: u32,
    stages: bool,
    reference: bool,
    paths: &[String],
) -> anyhow::Result<()> {
    let detector = Detector::new(&ModelSource::resolve(None), Default::default())?;
    let mut images = Vec::new();
    for p in paths {
        let mut img = load_image(p.as_ref(), &LoadOptions::default())?;
        let (w, h) = img.dimensions();
        if long_side > 0 && w.max(h) != long_side {
            let s = long_side as f64 / w.max(h) as f64;
            let (nw, nh) = ((w as f64 * s).round() as u32, (h as f64 * s).round() as u32);
            img = image::imageops::resize(&img, nw.max(1), nh.max(1), FilterType::Triangle);
        }
        images.push((p.clone(), img));
    }
    detector.detect(&images[0].1)?; // warm-up
    let mut all = Vec::new();
    let mut per_image = serde_json::Map::new();
    for (p, img) in &images {
        let mut times = Vec::new();
        for _ in 0..repeat {
            let t = Instant::now();
            std::hint::black_box(detector.detect(img)?);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        all.extend(&times);
        per_image.insert(p.clone(), median(&mut times).into());
    }
    let stages = if stages {
        stage_breakdown(&detector, &images, repeat, reference)?
    } else {
        serde_json::Value::Null
    };
    let out = serde_json::json!({
        "tool": "facekit",
        "threads": rayon::current_num_threads(),
        "long_side": long_side,
        "images": images.len(),
        "median_ms": median(&mut all),
        "per_image_median_ms": per_image,
        "stages": stages,
    });
    println!("{out}");
    Ok(())
}

/// Per-stage MTCNN times: for each image the median of `repeat` runs per stage, then the mean
/// over images; and the mean candidates per stage.
fn stage_breakdown(
    detector: &Detector,
    images: &[(String, image::RgbImage)],
    repeat: usize,
    reference: bool,
) -> anyhow::Result<serde_json::Value> {
    let mtcnn = detector
        .mtcnn()
        .ok_or_else(|| anyhow::anyhow!("--stages needs the MTCNN detector"))?;
    let min_face = mtcnn.config().min_face_size;
    let (mut pnet, mut rnet, mut onet) = (0.0, 0.0, 0.0);
    let (mut rc, mut oc) = (0usize, 0usize);
    for (_, img) in images {
        let mut runs = Vec::new();
        for _ in 0..repeat {
            let (_, profile) = if reference {
                mtcnn.detect_profiled_reference(img, min_face)?
            } else {
                mtcnn.detect_profiled(img, min_face)?
            };
            runs.push(profile);
        }
        let pick =
            |f: fn(&StageProfile) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
        pnet += pick(|p| p.pnet_ms);
        rnet += pick(|p| p.rnet_ms);
        onet += pick(|p| p.onet_ms);
        rc += runs[0].rnet_candidates;
        oc += runs[0].onet_candidates;
    }
    let n = images.len() as f64;
    Ok(serde_json::json!({
        "pnet_ms": pnet / n,
        "rnet_ms": rnet / n,
        "onet_ms": onet / n,
        "rnet_candidates": rc as f64 / n,
        "onet_candidates": oc as f64 / n,
        "path": if reference { "candle reference" } else { "cpu kernels" },
    }))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
