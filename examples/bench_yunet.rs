//! Times `YuNet::detect` per image (median milliseconds over repeats) on exactly the pixels that
//! `scripts/bench_yunet_peer.py` feeds libfacedetection. Used by `scripts/bench-yunet.sh`.
//!
//! Prepare (decode with facekit's libjpeg-turbo-compatible decoder, EXIF orientation ignored as
//! in `../shared/golden/yunet.json`; for `--size 640` resize once so the long side is 640 px,
//! bilinear), write every image as raw BGR bytes plus `manifest.tsv`, then exit:
//!
//!   bench_yunet --size 640|native --write-bgr DIR IMAGE...
//!
//! Time (from such a directory, so both sides see the same bytes, or from IMAGE... directly):
//!
//!   bench_yunet [--threads N] [--repeat R] [--bgr-dir DIR | --size 640|native IMAGE...]
//!
//! `manifest.tsv` has one line per image: `file<TAB>width<TAB>height<TAB>source path`, where
//! `file` is relative to DIR and holds `height * width * 3` bytes, row-major BGR.
//! Timing: one warm-up call on the first image, then per image `R` timed calls of
//! `YuNet::detect` (default `YuNetConfig`, as libfacedetection's `facedetect_cnn`) on an
//! `RgbImage` built before timing. Prints one JSON object: `median_ms` is the median over all
//! image x repeat calls; `per_image` lists each image's median and its face count the way
//! `yuface.detect(img)` counts (`(int)(score * 100) > 50`), for the sanity check against the peer.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use facekit::detect::{YuNet, YuNetConfig};
use facekit::io::{load_image, LoadOptions};
use facekit::models::ModelSource;
use image::imageops::FilterType;
use image::RgbImage;

/// `yuface.detect`'s default `conf=0.5`: rows with `score_pct > 50` are returned.
const PEER_CONF_PCT: i32 = 50;

struct Args {
    repeat: usize,
    threads: usize,
    size: Option<u32>,
    write_bgr: Option<PathBuf>,
    bgr_dir: Option<PathBuf>,
    paths: Vec<String>,
}

const USAGE: &str = "usage: bench_yunet --size 640|native --write-bgr DIR IMAGE...\n       \
     bench_yunet [--threads N] [--repeat R] [--bgr-dir DIR | --size 640|native IMAGE...]";

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        repeat: 3,
        threads: 0,
        size: None,
        write_bgr: None,
        bgr_dir: None,
        paths: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(s) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{s} needs a value\n{USAGE}"))
        };
        match s.as_str() {
            "--repeat" => a.repeat = value()?.parse()?,
            "--threads" => a.threads = value()?.parse()?,
            "--size" => {
                a.size = Some(match value()?.as_str() {
                    "native" | "0" => 0,
                    v => v.parse()?,
                })
            }
            "--write-bgr" => a.write_bgr = Some(value()?.into()),
            "--bgr-dir" => a.bgr_dir = Some(value()?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ if s.starts_with("--") => anyhow::bail!("unknown option {s}\n{USAGE}"),
            _ => a.paths.push(s),
        }
    }
    anyhow::ensure!(a.repeat >= 1, "--repeat must be >= 1");
    if a.bgr_dir.is_some() {
        anyhow::ensure!(
            a.paths.is_empty() && a.size.is_none() && a.write_bgr.is_none(),
            "--bgr-dir takes no IMAGE, --size or --write-bgr\n{USAGE}"
        );
    } else {
        anyhow::ensure!(
            !a.paths.is_empty() && a.size.is_some(),
            "IMAGE... and --size are needed\n{USAGE}"
        );
    }
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if let Some(dir) = &args.write_bgr {
        let images = prepare(&args.paths, args.size.unwrap_or(0))?;
        return write_bgr(dir, &images);
    }
    let images = match &args.bgr_dir {
        Some(dir) => read_bgr(dir)?,
        None => prepare(&args.paths, args.size.unwrap_or(0))?,
    };
    let mut pool = rayon::ThreadPoolBuilder::new();
    if args.threads > 0 {
        pool = pool.num_threads(args.threads);
    }
    // Run inside the pool, as the CLI does, so parallel kernels do not pay for injection.
    pool.build()?
        .install(|| run(args.repeat, args.size, &images))
}

/// Decodes (EXIF orientation ignored, as the golden file and the wheel) and, when `long_side`
/// is not 0, resizes so the long side is `long_side` px (bilinear).
fn prepare(paths: &[String], long_side: u32) -> anyhow::Result<Vec<(String, RgbImage)>> {
    let opts = LoadOptions {
        apply_exif_orientation: false,
        ..LoadOptions::default()
    };
    let mut images = Vec::new();
    for p in paths {
        let mut img = load_image(p.as_ref(), &opts)?;
        let (w, h) = img.dimensions();
        if long_side > 0 && w.max(h) != long_side {
            let s = long_side as f64 / w.max(h) as f64;
            let (nw, nh) = ((w as f64 * s).round() as u32, (h as f64 * s).round() as u32);
            img = image::imageops::resize(&img, nw.max(1), nh.max(1), FilterType::Triangle);
        }
        images.push((p.clone(), img));
    }
    Ok(images)
}

fn write_bgr(dir: &Path, images: &[(String, RgbImage)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut manifest = String::new();
    for (i, (src, img)) in images.iter().enumerate() {
        let (w, h) = img.dimensions();
        let file = format!("{i:03}_{w}x{h}.bgr");
        let bgr: Vec<u8> = img
            .as_raw()
            .chunks_exact(3)
            .flat_map(|p| [p[2], p[1], p[0]])
            .collect();
        std::fs::File::create(dir.join(&file))?.write_all(&bgr)?;
        manifest.push_str(&format!("{file}\t{w}\t{h}\t{src}\n"));
    }
    std::fs::write(dir.join("manifest.tsv"), manifest)?;
    eprintln!(
        "bench_yunet: wrote {} images to {}",
        images.len(),
        dir.display()
    );
    Ok(())
}

fn read_bgr(dir: &Path) -> anyhow::Result<Vec<(String, RgbImage)>> {
    let manifest = std::fs::read_to_string(dir.join("manifest.tsv"))?;
    let mut images = Vec::new();
    for line in manifest.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        anyhow::ensure!(f.len() >= 3, "bad manifest line {line:?}");
        let (w, h): (u32, u32) = (f[1].parse()?, f[2].parse()?);
        let bgr = std::fs::read(dir.join(f[0]))?;
        anyhow::ensure!(
            bgr.len() == w as usize * h as usize * 3,
            "{}: {} bytes, expected {w}x{h}x3",
            f[0],
            bgr.len()
        );
        let rgb: Vec<u8> = bgr
            .chunks_exact(3)
            .flat_map(|p| [p[2], p[1], p[0]])
            .collect();
        let img = RgbImage::from_raw(w, h, rgb).expect("size checked");
        images.push((f[0].to_string(), img));
    }
    anyhow::ensure!(!images.is_empty(), "{}: empty manifest", dir.display());
    Ok(images)
}

fn run(repeat: usize, size: Option<u32>, images: &[(String, RgbImage)]) -> anyhow::Result<()> {
    let yunet = YuNet::new(&ModelSource::Embedded, YuNetConfig::default())?;
    yunet.detect(&images[0].1)?; // warm-up
    let mut all = Vec::new();
    let mut per_image = Vec::new();
    for (name, img) in images {
        let mut times = Vec::with_capacity(repeat);
        let mut faces = 0;
        for _ in 0..repeat {
            let t = Instant::now();
            let dets = std::hint::black_box(yunet.detect(img)?);
            times.push(t.elapsed().as_secs_f64() * 1e3);
            // The wheel's score_pct is (short)(score * 100) with a float32 multiply.
            faces = dets
                .iter()
                .filter(|d| (d.score * 100.0) as i32 > PEER_CONF_PCT)
                .count();
        }
        all.extend(&times);
        let (w, h) = img.dimensions();
        per_image.push(serde_json::json!({
            "file": name,
            "width": w,
            "height": h,
            "faces": faces,
            "median_ms": round3(median(&mut times)),
        }));
    }
    let out = serde_json::json!({
        "tool": "facekit",
        "threads": rayon::current_num_threads(),
        "size": size.map_or("bgr-dir".to_string(), |s| if s == 0 { "native".into() } else { s.to_string() }),
        "repeat": repeat,
        "images": images.len(),
        "faces": per_image.iter().map(|p| p["faces"].as_u64().unwrap_or(0)).sum::<u64>(),
        "median_ms": round3(median(&mut all)),
        "per_image": per_image,
    });
    println!("{out}");
    Ok(())
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
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
