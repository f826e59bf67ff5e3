//! Times the dlib ResNet: median ms per face at batch 1 and batch 16 on aligned 150 px chips.
//! Used by `scripts/bench-embed.sh`.
//!
//! cargo run --release --example bench_embed -- [--repeat R] [--threads N]
//!     [--precision exact|fast] [--stages] CHIP.png...
//! Prints one JSON object: {"tool": "facekit", "precision", "threads", "chips",
//! "per_face_ms_batch1", "per_face_ms_batch16"}. With `--stages`, also a table on stderr: per
//! group of layers at batch 16, median ms per face, direct and actual multiply-adds per face,
//! and the achieved GFLOP/s counted both ways (2 FLOPs per multiply-add).

use std::time::Instant;

use facekit::embed::{DlibEmbedder, Embedder};
use facekit::models::ModelSource;
use facekit::Precision;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

const USAGE: &str =
    "usage: bench_embed [--repeat R] [--threads N] [--precision exact|fast] [--stages] CHIP.png...";

fn main() -> anyhow::Result<()> {
    let mut repeat = 3usize;
    let mut threads = 0usize;
    let mut precision = Precision::Exact;
    let mut stages = false;
    let mut paths = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--repeat" => repeat = args.next().unwrap_or_default().parse()?,
            "--threads" => threads = args.next().unwrap_or_default().parse()?,
            "--precision" => {
                precision = match args.next().as_deref() {
                    Some("exact") => Precision::Exact,
                    Some("fast") => Precision::Fast,
                    other => anyhow::bail!("--precision exact|fast, got {other:?}\n{USAGE}"),
                }
            }
            "--stages" => stages = true,
            _ => paths.push(a),
        }
    }
    anyhow::ensure!(!paths.is_empty(), USAGE);
    let mut pool = rayon::ThreadPoolBuilder::new();
    if threads > 0 {
        pool = pool.num_threads(threads);
    }
    let pool = pool.build()?;
    let embedder = DlibEmbedder::with_precision(&ModelSource::resolve(None), precision)?;
    let chips: Vec<image::RgbImage> = paths
        .iter()
        .map(|p| Ok(image::open(p)?.to_rgb8()))
        .collect::<anyhow::Result<_>>()?;
    pool.install(|| -> anyhow::Result<()> {
        embedder.embed(&chips[..1])?; // warm-up
        let mut batch1 = Vec::new();
        for _ in 0..repeat {
            for chip in &chips {
                let t = Instant::now();
                std::hint::black_box(embedder.embed(std::slice::from_ref(chip))?);
                batch1.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let mut batch16 = Vec::new();
        for _ in 0..repeat {
            for group in chips.chunks(16).filter(|g| g.len() == 16) {
                let t = Instant::now();
                std::hint::black_box(embedder.embed(group)?);
                batch16.push(t.elapsed().as_secs_f64() * 1e3 / 16.0);
            }
        }
        if stages {
            print_stages(&embedder, &chips, repeat)?;
        }
        println!(
            "{}",
            serde_json::json!({
                "tool": "facekit",
                "precision": precision.name(),
                "threads": rayon::current_num_threads(),
                "chips": chips.len(),
                "per_face_ms_batch1": median(&mut batch1),
                "per_face_ms_batch16": if batch16.is_empty() { serde_json::Value::Null } else { median(&mut batch16).into() },
            })
        );
        Ok(())
    })
}

/// Per group of layers at batch 16 (or all chips if fewer): median ms per face and GFLOP/s.
fn print_stages(
    embedder: &DlibEmbedder,
    chips: &[image::RgbImage],
    repeat: usize,
) -> anyhow::Result<()> {
    let groups: Vec<&[image::RgbImage]> = chips.chunks(16).filter(|g| g.len() == 16).collect();
    let groups = if groups.is_empty() {
        vec![chips]
    } else {
        groups
    };
    let mut runs = Vec::new();
    for _ in 0..repeat {
        for group in &groups {
            runs.push((group.len(), embedder.stage_times(group)?));
        }
    }
    eprintln!(
        "{:<12} {:>9} {:>12} {:>12} {:>13} {:>13}",
        "stage", "ms/face", "direct MMAC", "actual MMAC", "direct GFLOP/s", "actual GFLOP/s"
    );
    let mut total = (0.0, 0, 0);
    for (i, first) in runs[0].1.iter().enumerate() {
        let mut ms: Vec<f64> = runs
            .iter()
            .map(|(n, t)| t[i].seconds * 1e3 / *n as f64)
            .collect();
        let ms = median(&mut ms);
        let gflops = |macs: usize| 2.0 * macs as f64 / (ms * 1e6);
        eprintln!(
            "{:<12} {:>9.3} {:>12.1} {:>12.1} {:>13.1} {:>13.1}",
            first.name,
            ms,
            first.direct_macs as f64 / 1e6,
            first.product_macs as f64 / 1e6,
            gflops(first.direct_macs),
            gflops(first.product_macs)
        );
        total = (
            total.0 + ms,
            total.1 + first.direct_macs,
            total.2 + first.product_macs,
        );
    }
    eprintln!(
        "{:<12} {:>9.3} {:>12.1} {:>12.1} {:>13.1} {:>13.1}",
        "total",
        total.0,
        total.1 as f64 / 1e6,
        total.2 as f64 / 1e6,
        2.0 * total.1 as f64 / (total.0 * 1e6),
        2.0 * total.2 as f64 / (total.0 * 1e6)
    );
    Ok(())
}
