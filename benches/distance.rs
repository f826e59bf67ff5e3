//! Distance kernels against the machine's own matmul rate.
//!
//! `cargo bench --bench distance` runs the criterion groups (single pairs; pairwise
//! 10k x 10k and 20k x 20k x 128; top-10 of 10k queries against a 100k base; a plain
//! single-call multithreaded `gemm` of the pairwise shapes), then prints a table of medians,
//! GFLOP/s (2 n m dim flops per case) and the ratio to the matmul of the same shape, from its
//! own loop that interleaves the cases so that load from other processes hits them alike.
//! Under `cargo test` (criterion's test mode) each case runs once and the table is skipped;
//! so it is with a filter argument.

use criterion::{Criterion, SamplingMode, Throughput};
use facekit::distance::{self, Metric};
use std::hint::black_box;
use std::time::{Duration, Instant};

const DIM: usize = 128;
const SMALL: usize = 10_000;
const LARGE: usize = 20_000;
// Top-k uses 10k queries, not all 100k: one all-vs-all iteration would take ~20 s (2.56 TFLOP)
// on a 2-core machine, too long for repeated sampling; the rate per query is the same.
const TOPK_QUERIES: usize = 10_000;
const TOPK_BASE: usize = 100_000;
const K: usize = 10;
/// Repetitions of each case in the summary table.
const TABLE_REPS: usize = 5;

/// SplitMix64 rows with norms uniform in [0.4, 1.0], like face embeddings.
fn embeddings(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut out = Vec::with_capacity(n * DIM);
    for _ in 0..n {
        let row: Vec<f32> = (0..DIM).map(|_| 2.0 * next() - 1.0).collect();
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        let target = 0.4 + 0.6 * next();
        out.extend(row.iter().map(|x| x / norm * target));
    }
    out
}

fn flops(n: usize, m: usize) -> u64 {
    2 * (n * m * DIM) as u64
}

/// The machine's matmul: one multithreaded gemm call, `out = a b^T` (n x m, row-major).
fn matmul(a: &[f32], b: &[f32], out: &mut [f32]) {
    let (n, m) = (a.len() / DIM, b.len() / DIM);
    assert_eq!(out.len(), n * m);
    // SAFETY: a is n x DIM and b is m x DIM row-major (b^T read with column stride DIM); out
    // holds n x m values.
    unsafe {
        gemm::gemm(
            n,
            m,
            DIM,
            out.as_mut_ptr(),
            1,
            m as isize,
            false,
            a.as_ptr(),
            1,
            DIM as isize,
            b.as_ptr(),
            DIM as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

struct Data {
    a: Vec<f32>,
    b: Vec<f32>,
    /// Output buffer for the largest shape, reused (prefixes) by every pairwise/matmul case.
    out: Vec<f32>,
    queries: Vec<f32>,
    base: Vec<f32>,
}

impl Data {
    fn new() -> Data {
        let mut out = vec![0f32; LARGE * LARGE];
        out.fill(1.0); // fault the pages in before timing
        Data {
            a: embeddings(LARGE, 1),
            b: embeddings(LARGE, 2),
            out,
            queries: embeddings(TOPK_QUERIES, 3),
            base: embeddings(TOPK_BASE, 4),
        }
    }

    fn pairwise(&mut self, n: usize) {
        distance::pairwise_into(
            &self.a[..n * DIM],
            &self.b[..n * DIM],
            DIM,
            Metric::Euclidean,
            &mut self.out[..n * n],
        );
    }

    fn matmul(&mut self, n: usize) {
        matmul(
            &self.a[..n * DIM],
            &self.b[..n * DIM],
            &mut self.out[..n * n],
        );
    }

    fn top_k(&self) -> Vec<Vec<distance::Neighbor>> {
        distance::top_k(&self.queries, &self.base, DIM, K, Metric::Euclidean, false)
    }
}

fn bench_pairs(c: &mut Criterion, d: &Data) {
    let (x, y) = (&d.a[..DIM], &d.b[..DIM]);
    let mut g = c.benchmark_group("pair");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.bench_function("euclidean/128", |bch| {
        bch.iter(|| distance::euclidean(black_box(x), black_box(y)))
    });
    g.bench_function("cosine/128", |bch| {
        bch.iter(|| distance::cosine(black_box(x), black_box(y)))
    });
    g.finish();
}

fn bench_matrices(c: &mut Criterion, d: &mut Data) {
    for (name, n, secs) in [("10k", SMALL, 6), ("20k", LARGE, 20)] {
        let mut g = c.benchmark_group(format!("{name}x{name}x128"));
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(secs))
            .throughput(Throughput::Elements(flops(n, n)));
        g.bench_function("pairwise_euclidean", |bch| bch.iter(|| d.pairwise(n)));
        g.bench_function("matmul_gemm", |bch| bch.iter(|| d.matmul(n)));
        g.finish();
    }
}

fn bench_top_k(c: &mut Criterion, d: &Data) {
    let mut g = c.benchmark_group("top10_10k_vs_100kx128");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(30))
        .throughput(Throughput::Elements(flops(TOPK_QUERIES, TOPK_BASE)));
    g.bench_function("top_k_euclidean", |bch| bch.iter(|| black_box(d.top_k())));
    g.finish();
}

fn time(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The summary table, from its own loop: every round times each case once, in turn.
fn table(d: &mut Data) {
    let cases = [
        "matmul 10000x10000x128",
        "pairwise 10000x10000x128",
        "matmul 20000x20000x128",
        "pairwise 20000x20000x128",
        "top-10 10000 vs 100000 x128",
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    d.matmul(SMALL); // warm-up
    d.pairwise(SMALL);
    for _ in 0..TABLE_REPS {
        times[0].push(time(|| d.matmul(SMALL)));
        times[1].push(time(|| d.pairwise(SMALL)));
        times[2].push(time(|| d.matmul(LARGE)));
        times[3].push(time(|| d.pairwise(LARGE)));
        times[4].push(time(|| {
            black_box(d.top_k());
        }));
    }
    let med: Vec<f64> = times.into_iter().map(median).collect();
    let work = [
        flops(SMALL, SMALL),
        flops(SMALL, SMALL),
        flops(LARGE, LARGE),
        flops(LARGE, LARGE),
        flops(TOPK_QUERIES, TOPK_BASE),
    ];
    let rate: Vec<f64> = med
        .iter()
        .zip(work)
        .map(|(t, f)| f as f64 / t / 1e9)
        .collect();
    // Ratio to the matmul of the same shape; top-k against the 10k x 10k matmul rate (a
    // 10k x 100k matmul output would be 4 GB).
    let reference = [0, 0, 2, 2, 0];

    let pair = |f: fn(&[f32], &[f32]) -> f32| {
        let (x, y) = (&d.a[..DIM], &d.b[..DIM]);
        let reps = 2_000_000;
        let t = time(|| {
            for _ in 0..reps {
                black_box(f(black_box(x), black_box(y)));
            }
        });
        t / reps as f64 * 1e9
    };
    let (pe, pc) = (pair(distance::euclidean), pair(distance::cosine));

    println!();
    println!(
        "summary: medians of {TABLE_REPS} interleaved rounds, {} rayon threads",
        rayon::current_num_threads()
    );
    println!(
        "{:<30} {:>12} {:>10} {:>10}",
        "case", "median", "GFLOP/s", "vs matmul"
    );
    for i in 0..cases.len() {
        println!(
            "{:<30} {:>10.3} s {:>10.1} {:>10.2}",
            cases[i],
            med[i],
            rate[i],
            rate[i] / rate[reference[i]]
        );
    }
    println!("{:<30} {:>9.1} ns", "pair euclidean 128", pe);
    println!("{:<30} {:>9.1} ns", "pair cosine 128", pc);
    println!(
        "(top-k: 10k queries, since all 100k would take ~20 s an iteration; its ratio is \
         against the 10k x 10k matmul rate)"
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench_mode = args.iter().any(|a| a == "--bench");
    let filtered = args.iter().any(|a| !a.starts_with('-'));
    let mut c = Criterion::default().configure_from_args();
    let mut d = Data::new();
    bench_pairs(&mut c, &d);
    bench_matrices(&mut c, &mut d);
    bench_top_k(&mut c, &d);
    c.final_summary();
    if bench_mode && !filtered {
        table(&mut d);
    }
}
