//! Times the dlib ResNet: median ms per face at batch 1 and batch 16 on aligned 150 px chips.
//! Used by `scripts/bench-embed.sh`.
//!
//! cargo run --release --example bench_embed -- [--repeat R] [--threads N] CHIP.png...
//! Prints one JSON object: {"tool": "facekit", "per_face_ms_batch1", "per_face_ms_batch16", ...}.

use std::time::Instant;

use facekit::embed::{DlibEmbedder, Embedder};
use facekit::models::ModelSource;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> anyhow::Result<()> {
    let mut repeat = 3usize;
    let mut threads = 0usize;
    let mut paths = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--repeat" => repeat = args.next().unwrap_or_default().parse()?,
            "--threads" => threads = args.next().unwrap_or_default().parse()?,
            _ => paths.push(a),
        }
    }
    anyhow::ensure!(
        !paths.is_empty(),
        "usage: bench_embed [--repeat R] [--threads N] CHIP.png..."
    );
    let mut pool = rayon::ThreadPoolBuilder::new();
    if threads > 0 {
        pool = pool.num_threads(threads);
    }
    let pool = pool.build()?;
    let embedder = DlibEmbedder::new(&ModelSource::resolve(None))?;
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
        println!(
            "{}",
            serde_json::json!({
                "tool": "facekit",
                "threads": rayon::current_num_threads(),
                "chips": chips.len(),
                "per_face_ms_batch1": median(&mut batch1),
                "per_face_ms_batch16": if batch16.is_empty() { serde_json::Value::Null } else { median(&mut batch16).into() },
            })
        );
        Ok(())
    })
}
