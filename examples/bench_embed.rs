//! Times the dlib ResNet: median ms per face at batch 1 and batch 16 on aligned 150 px chips.
//! Used by `scripts/bench-embed.sh`.
//!
//! cargo run --release --example bench_embed -- [--repeat R] [--threads N]
//!     [--precision exact|fast] [--stages] CHIP.png...
//! Prints one JSON object: {"tool": "facekit", "precision", "threads", "chips",
//! "per_face_ms_batch1", "per_face_ms_batch16"}. With `--stages`, also a table on stderr: per
//! group of layers at batch 16, median ms per face, direct and actual multiply-adds per face,
//! and the achieved GFLOP/s counted both ways (2 FLOPs per multiply-add), then the machine's
//! limits measured in the same run on the same threads: the fp32 FMA peak (independent AVX2 and,
//! where present, AVX-512 FMAs in registers), a large fp32 gemm, where present independent bf16
//! dot products (`vdpbf16ps`) and int8 dot products (`vpdpbusd`) in registers.

use std::time::Instant;

// The binary's allocator (huge pages for large blocks, freed large blocks reused), so that the
// times here are what `facekit` itself pays: with the system allocator every layer's output was
// a fresh mapping whose pages fault in at first touch.
#[path = "../src/cli/alloc.rs"]
mod alloc;
#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;

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
            print_peaks();
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

/// The machine's limits on the pool's threads (see the module doc), on stderr.
fn print_peaks() {
    let threads = rayon::current_num_threads();
    let mut fma: Vec<f64> = (0..5).map(|_| fma_peak_gflops(false)).collect();
    let mut fma512: Vec<f64> = (0..5).map(|_| fma_peak_gflops(true)).collect();
    let mut gemm: Vec<f64> = (0..5).map(|_| gemm_gflops(768)).collect();
    eprintln!("machine, {threads} threads (median of 5):");
    eprintln!(
        "  fp32 FMA peak (AVX2, registers only)   {:>7.1} GFLOP/s",
        median(&mut fma)
    );
    let wide = median(&mut fma512);
    if wide > 0.0 {
        eprintln!("  fp32 FMA peak (AVX-512, registers only) {wide:>6.1} GFLOP/s");
    } else {
        eprintln!("  fp32 FMA peak (AVX-512)                not on this CPU");
    }
    eprintln!(
        "  fp32 gemm 768x768x768 (gemm crate)     {:>7.1} GFLOP/s",
        median(&mut gemm)
    );
    let mut bf16: Vec<f64> = (0..5).map(|_| bf16_peak_gflops()).collect();
    let bf16 = median(&mut bf16);
    if bf16 > 0.0 {
        eprintln!("  bf16 dot products (vdpbf16ps, regs)    {bf16:>7.1} GFLOP/s");
    } else {
        eprintln!("  bf16 dot products (avx512_bf16)        not on this CPU");
    }
    let mut int8: Vec<f64> = (0..5).map(|_| int8_peak_gops()).collect();
    let int8 = median(&mut int8);
    if int8 > 0.0 {
        eprintln!("  int8 dot products (vpdpbusd, regs)     {int8:>7.1} GOP/s (no facekit kernel)");
    } else {
        eprintln!("  int8 dot products (avx512_vnni)        not on this CPU");
    }
}

/// Iterations of every register loop below.
const ITERS: usize = 20_000_000;

/// Billions of operations per second when every pool thread runs `run(thread)` at once, each
/// doing `ops` operations per iteration of [`ITERS`]; 0 when `run` returns `None` (the CPU
/// lacks the instructions).
fn peak_rate<T: Send>(ops: usize, run: impl Fn(usize) -> Option<T> + Sync + Send) -> f64 {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    let t = Instant::now();
    let sums: Vec<Option<T>> = (0..threads).into_par_iter().map(run).collect();
    let secs = t.elapsed().as_secs_f64();
    if sums.iter().any(Option::is_none) {
        return 0.0;
    }
    std::hint::black_box(sums);
    (threads * ITERS * ops) as f64 / secs / 1e9
}

/// GFLOP/s of independent 8-lane (`wide`: 16-lane) FMAs on every pool thread at once (0
/// without AVX2/FMA, or AVX-512F when `wide`).
fn fma_peak_gflops(wide: bool) -> f64 {
    // 12 FMAs of 8 (16) lanes, 2 FLOPs each, per iteration.
    let lanes = if wide { 16 } else { 8 };
    peak_rate(12 * lanes * 2, |i| {
        let sum = if wide {
            fma_loop_wide(ITERS, i as f32)
        } else {
            fma_loop(ITERS, i as f32)
        };
        (!sum.is_nan()).then_some(sum)
    })
}

/// GFLOP/s of independent `vdpbf16ps` (16 lanes x 2 bf16 products) on every pool thread at
/// once; 0 without AVX512_BF16.
fn bf16_peak_gflops() -> f64 {
    // 12 dot products of 16 lanes x 2 products, 2 FLOPs each, per iteration.
    peak_rate(12 * 32 * 2, |i| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512bf16") {
            // SAFETY: AVX512_BF16 (and so AVX-512F) was detected.
            return Some(unsafe { bf16_loop(ITERS, i as f32) });
        }
        let _ = i;
        None
    })
}

/// GOP/s (2 per multiply-add) of independent `vpdpbusd` (16 lanes x 4 u8 x i8 products) on
/// every pool thread at once; 0 without AVX512_VNNI.
fn int8_peak_gops() -> f64 {
    // 12 dot products of 16 lanes x 4 products, 2 operations each, per iteration.
    peak_rate(12 * 64 * 2, |i| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512vnni") {
            // SAFETY: AVX512_VNNI (and so AVX-512F) was detected.
            return Some(unsafe { int8_loop(ITERS, i as i32) });
        }
        let _ = i;
        None
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_loop(iters: usize, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    // bf16 pairs (1.0, 1.0) and (2^-16, 2^-16): the sums grow slowly and stay finite.
    let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
    let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3780_3780));
    let mut acc: [__m512; 12] = std::array::from_fn(|i| _mm512_set1_ps(seed + i as f32));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_dpbf16_ps(*v, a, b);
        }
    }
    let sum = acc
        .iter()
        .fold(_mm512_setzero_ps(), |s, &v| _mm512_add_ps(s, v));
    _mm512_reduce_add_ps(sum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn int8_loop(iters: usize, seed: i32) -> i32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_epi8(1);
    let b = _mm512_set1_epi8(1);
    let mut acc: [__m512i; 12] = std::array::from_fn(|i| _mm512_set1_epi32(seed + i as i32));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_dpbusd_epi32(*v, a, b);
        }
    }
    let sum = acc
        .iter()
        .fold(_mm512_setzero_si512(), |s, &v| _mm512_add_epi32(s, v));
    _mm512_reduce_add_epi32(sum)
}

/// [`fma_loop`] with 16-lane registers; NaN without AVX-512F.
fn fma_loop_wide(iters: usize, seed: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected.
            return unsafe { fma_loop_avx512(iters, seed) };
        }
    }
    let _ = (iters, seed);
    f32::NAN
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_avx512(iters: usize, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    let mut acc: [__m512; 12] = std::array::from_fn(|i| _mm512_set1_ps(seed + i as f32));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    let sum = acc
        .iter()
        .fold(_mm512_setzero_ps(), |s, &v| _mm512_add_ps(s, v));
    _mm512_reduce_add_ps(sum)
}

/// `iters` rounds of 12 independent FMA chains; returns a sum so nothing is optimised away.
fn fma_loop(iters: usize, seed: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: AVX2 and FMA were detected.
            return unsafe { fma_loop_avx2(iters, seed) };
        }
    }
    let _ = (iters, seed);
    0.0
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(iters: usize, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc: [__m256; 12] = std::array::from_fn(|i| _mm256_set1_ps(seed + i as f32));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut out = [0f32; 8];
    let sum = acc
        .iter()
        .fold(_mm256_setzero_ps(), |s, &v| _mm256_add_ps(s, v));
    _mm256_storeu_ps(out.as_mut_ptr(), sum);
    out.iter().sum()
}

/// GFLOP/s of one `n x n x n` fp32 product with the gemm crate on the pool's threads.
fn gemm_gflops(n: usize) -> f64 {
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; n * n];
    let t = Instant::now();
    // SAFETY: the three buffers hold n x n values, row-major, and do not overlap.
    unsafe {
        gemm::gemm(
            n,
            n,
            n,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            n as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
    let secs = t.elapsed().as_secs_f64();
    std::hint::black_box(&c);
    2.0 * (n * n * n) as f64 / secs / 1e9
}
