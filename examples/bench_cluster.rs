//! Clustering at scale: 100,000 seeded synthetic face embeddings, one algorithm per process
//! (so the peak memory is that algorithm's). Goal on a 2-core machine: <= 60 s and <= 2 GB.
//!
//! cargo run --release --example bench_cluster -- --algorithm chinese-whispers|dbscan|kmeans
//!     [--n 100000] [--seed 0] [--phases]
//!
//! The data looks like dlib's 128-d embeddings under the default Euclidean threshold 0.6:
//! - every point is `m + c_g + e`: `m` a fixed offset of norm ~1.3 (real dlib embeddings have
//!   norm ~1.4 and a common mean of norm ~1.3), `c_g` the group centre, N(0, 0.06^2) per
//!   dimension (two centres are ~0.96 apart), `e` the point's own N(0, s_g^2) noise, with the
//!   group's `s_g` uniform in [0.015, 0.028] (same-group pairs ~0.24-0.45 apart);
//! - 7 % of the points are isolated noise (a group of one); the rest form groups whose sizes
//!   are uniform in 2..=200 (the last group takes what is left);
//! - points are shuffled, and every point is its own photo.
//!
//! The distance statistics of sampled same-group and different-group pairs are printed, so
//! "inter mostly > 0.8, intra < 0.5" can be checked. Clustering uses the library defaults
//! (threshold 0.6, min size 2, seed 0); k-means gets k = the true number of groups (noise
//! points excluded). Printed: n, algorithm, clustering wall time (and CPU time, which other
//! work on a shared machine inflates much less), peak RSS (VmHWM of
//! /proc/self/status at the end, the whole process), clusters found, and the BCubed F1 against
//! the synthetic truth (a noise point or an unknown face is its own singleton). The line
//! `RESULT key=value ...` is what scripts/bench-cluster.sh reads.
//!
//! `--phases` also times the pieces separately after the main run: the radius search
//! (`distance::within`), the Chinese Whispers passes, DBSCAN's expansion; for k-means one
//! assignment round (`distance::pairwise` of n x k and the argmin over it), the k-means++
//! seeding, and whole runs capped at 1 and 3 rounds (=> seconds per round and the number of
//! rounds the main run made), to show where the time goes.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use facekit::cluster::{self, cluster, Algorithm, ClusterConfig};
use facekit::distance::{self, Metric};
use facekit::Rng;

const DIM: usize = 128;
const NOISE_SHARE: f64 = 0.07;
const CENTER_SD: f64 = 0.06;
const SPREAD: (f64, f64) = (0.015, 0.028);
const SIZES: (usize, usize) = (2, 200);

/// Synthetic embeddings (n x DIM, row-major), the true group of each point, and the number of
/// groups of two or more.
fn generate(n: usize, seed: u64) -> (Vec<f32>, Vec<usize>, usize) {
    let mut rng = Rng::new(seed);
    let offset: Vec<f64> = (0..DIM)
        .map(|_| 1.3 / (DIM as f64).sqrt() * rng.normal())
        .collect();
    let noise = (n as f64 * NOISE_SHARE).round() as usize;
    let mut sizes = Vec::new();
    let mut left = n - noise;
    while left > 0 {
        let s = SIZES.0 + rng.below(SIZES.1 - SIZES.0 + 1);
        let s = if left - s.min(left) < SIZES.0 {
            left
        } else {
            s
        };
        sizes.push(s);
        left -= s;
    }
    let groups = sizes.len();
    sizes.extend(std::iter::repeat_n(1, noise));
    let mut rows: Vec<(usize, Vec<f32>)> = Vec::with_capacity(n);
    for (g, &size) in sizes.iter().enumerate() {
        let center: Vec<f64> = offset
            .iter()
            .map(|m| m + CENTER_SD * rng.normal())
            .collect();
        let sd = SPREAD.0 + (SPREAD.1 - SPREAD.0) * rng.f64();
        for _ in 0..size {
            rows.push((
                g,
                center
                    .iter()
                    .map(|c| (c + sd * rng.normal()) as f32)
                    .collect(),
            ));
        }
    }
    rng.shuffle(&mut rows);
    let truth = rows.iter().map(|r| r.0).collect();
    let emb = rows.into_iter().flat_map(|r| r.1).collect();
    (emb, truth, groups)
}

/// BCubed F1 (Amigó et al. 2009); unknown = its own singleton cluster.
fn bcubed_f1(pred: &[Option<usize>], truth: &[usize]) -> f64 {
    let base = pred.iter().flatten().max().map_or(0, |m| m + 1);
    let mut cells: HashMap<(usize, usize), usize> = HashMap::new();
    let mut csize: HashMap<usize, usize> = HashMap::new();
    let mut tsize: HashMap<usize, usize> = HashMap::new();
    for (i, (p, &t)) in pred.iter().zip(truth).enumerate() {
        let p = p.unwrap_or(base + i);
        *cells.entry((p, t)).or_default() += 1;
        *csize.entry(p).or_default() += 1;
        *tsize.entry(t).or_default() += 1;
    }
    let (mut p, mut r) = (0.0, 0.0);
    for (&(c, t), &k) in &cells {
        let k = k as f64;
        p += k * k / csize[&c] as f64;
        r += k * k / tsize[&t] as f64;
    }
    let n = truth.len().max(1) as f64;
    let (p, r) = (p / n, r / n);
    if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    }
}

fn percentiles(mut d: Vec<f32>) -> String {
    d.sort_by(f32::total_cmp);
    let at = |q: f64| d[((d.len() - 1) as f64 * q).round() as usize];
    format!(
        "min {:.3}  p1 {:.3}  median {:.3}  p99 {:.3}  max {:.3}",
        at(0.0),
        at(0.01),
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

/// Distances of sampled same-group and different-group pairs.
fn pair_stats(emb: &[f32], truth: &[usize], seed: u64) {
    let n = truth.len();
    let row = |i: usize| &emb[i * DIM..(i + 1) * DIM];
    let mut members: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, &t) in truth.iter().enumerate() {
        members.entry(t).or_default().push(i);
    }
    let mut rng = Rng::new(seed ^ 0x5eed);
    let samples = 20_000;
    let (mut intra, mut inter) = (Vec::new(), Vec::new());
    while intra.len() < samples {
        let i = rng.below(n);
        let m = &members[&truth[i]];
        if m.len() < 2 {
            continue;
        }
        let j = m[rng.below(m.len())];
        if j != i {
            intra.push(distance::euclidean(row(i), row(j)));
        }
    }
    while inter.len() < samples {
        let (i, j) = (rng.below(n), rng.below(n));
        if truth[i] != truth[j] {
            inter.push(distance::euclidean(row(i), row(j)));
        }
    }
    let share = |d: &[f32], f: &dyn Fn(f32) -> bool| {
        100.0 * d.iter().filter(|&&x| f(x)).count() as f64 / d.len() as f64
    };
    println!(
        "same-group pairs ({samples} sampled):      {}; < 0.5: {:.2} %, < 0.6: {:.2} %",
        percentiles(intra.clone()),
        share(&intra, &|x| x < 0.5),
        share(&intra, &|x| x < 0.6)
    );
    println!(
        "different-group pairs ({samples} sampled): {}; > 0.8: {:.2} %, < 0.6: {:.3} %",
        percentiles(inter.clone()),
        share(&inter, &|x| x > 0.8),
        share(&inter, &|x| x < 0.6)
    );
    let norms: Vec<f32> = (0..n.min(10_000))
        .map(|i| distance::dot(row(i), row(i)).sqrt())
        .collect();
    println!("norms (first 10,000):     {}", percentiles(norms));
}

/// Peak resident set size in MB (VmHWM), if /proc says.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU seconds used so far by the whole process (all threads; user + system), from
/// /proc/self/stat (clock ticks of 1/100 s). With other work on the machine, wall time grows but
/// CPU time mostly does not: wall ~= CPU / threads when the cores are free.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The 1-minute load average.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn main() -> Result<()> {
    let mut algorithm = None;
    let mut n = 100_000usize;
    let mut seed = 0u64;
    let mut phases = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--algorithm" => {
                algorithm = Some(match args.next().as_deref() {
                    Some("chinese-whispers") => Algorithm::ChineseWhispers,
                    Some("dbscan") => Algorithm::Dbscan,
                    Some("kmeans") => Algorithm::KMeans,
                    other => bail!("--algorithm chinese-whispers|dbscan|kmeans, got {other:?}"),
                })
            }
            "--n" => n = args.next().context("--n N")?.parse()?,
            "--seed" => seed = args.next().context("--seed N")?.parse()?,
            "--phases" => phases = true,
            other => bail!("unknown argument {other}"),
        }
    }
    let algorithm = algorithm.context("--algorithm chinese-whispers|dbscan|kmeans")?;
    let name = match algorithm {
        Algorithm::ChineseWhispers => "chinese-whispers",
        Algorithm::Dbscan => "dbscan",
        Algorithm::KMeans => "kmeans",
    };

    let start = Instant::now();
    let (emb, truth, groups) = generate(n, seed);
    let noise = truth.iter().filter(|&&t| t >= groups).count();
    println!(
        "data: n {n}, dim {DIM}, {groups} groups of {}..={} ({} points) + {noise} noise points, \
         seed {seed}, generated in {:.1} s",
        SIZES.0,
        SIZES.1,
        n - noise,
        start.elapsed().as_secs_f64()
    );
    pair_stats(&emb, &truth, seed);

    let photo: Vec<u32> = (0..n as u32).collect();
    let config = ClusterConfig {
        algorithm,
        k: (algorithm == Algorithm::KMeans).then_some(groups),
        ..Default::default()
    };
    println!(
        "clustering: {name}, threshold {}, min size {}, k {:?}, {} rayon threads",
        config.threshold,
        config.min_size,
        config.k,
        rayon::current_num_threads()
    );
    let load = load_average().unwrap_or(f64::NAN);
    let cpu0 = cpu_seconds().unwrap_or(f64::NAN);
    let start = Instant::now();
    let result = cluster(&emb, DIM, &photo, &config)?;
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds().unwrap_or(f64::NAN) - cpu0;
    let peak = peak_rss_mb().unwrap_or(f64::NAN);
    let unknown = result.labels.iter().filter(|l| l.is_none()).count();
    let f1 = bcubed_f1(&result.labels, &truth);
    println!("n                {n}");
    println!("algorithm        {name}");
    println!(
        "time             {seconds:.2} s wall, {cpu:.2} s CPU (clustering only; load average \
         {load:.2} before it, {} cores)",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!("peak RSS         {peak:.0} MB (VmHWM, whole process)");
    println!(
        "clusters         {} (>= min size; true groups {groups}), unknown faces {unknown}",
        result.clusters.len()
    );
    println!("BCubed F1        {f1:.4}");
    println!(
        "RESULT algorithm={name} n={n} seconds={seconds:.2} cpu_seconds={cpu:.2} load={load:.2} peak_mb={peak:.0} clusters={} \
         groups={groups} unknown={unknown} bcubed_f1={f1:.4}",
        result.clusters.len()
    );

    if phases {
        println!("phases (run again, separately):");
        match algorithm {
            Algorithm::ChineseWhispers | Algorithm::Dbscan => {
                let t = Instant::now();
                let graph =
                    distance::within(&emb, &emb, DIM, config.threshold, config.metric, true);
                let within_s = t.elapsed().as_secs_f64();
                let edges: usize = graph.iter().map(Vec::len).sum();
                println!(
                    "  distance::within radius {}: {within_s:.2} s, {edges} directed edges ({:.1} \
                     per point), peak RSS now {:.0} MB",
                    config.threshold,
                    edges as f64 / n as f64,
                    peak_rss_mb().unwrap_or(f64::NAN)
                );
                let t = Instant::now();
                if algorithm == Algorithm::ChineseWhispers {
                    let _ =
                        cluster::chinese_whispers(&graph, &photo, config.iterations, config.seed);
                    println!(
                        "  chinese_whispers passes: {:.2} s",
                        t.elapsed().as_secs_f64()
                    );
                } else {
                    let _ = cluster::dbscan(&graph, config.min_size);
                    println!("  dbscan expansion: {:.2} s", t.elapsed().as_secs_f64());
                }
            }
            Algorithm::KMeans => {
                let k = groups;
                let centers: Vec<f32> = emb[..k * DIM].to_vec();
                let t = Instant::now();
                let d = distance::pairwise(&emb, &centers, DIM, Metric::Euclidean);
                println!(
                    "  one assignment round, distance::pairwise {n} x {k}: {:.2} s ({} MB matrix)",
                    t.elapsed().as_secs_f64(),
                    d.len() * 4 / (1 << 20)
                );
                // The library's assignment step: a serial argmin over every row of the matrix.
                let t = Instant::now();
                let next: Vec<Option<usize>> = d
                    .chunks(k)
                    .map(|row| (0..k).min_by(|&a, &b| row[a].total_cmp(&row[b])))
                    .collect();
                println!(
                    "  its serial argmin over the {n} x {k} matrix: {:.2} s ({} assigned)",
                    t.elapsed().as_secs_f64(),
                    next.iter().flatten().count()
                );
                drop(d);
                // k-means++ seeding does k sequential passes of n scalar distances.
                let t = Instant::now();
                let mut d2 = vec![f32::INFINITY; n];
                let passes = 20.min(k);
                for c in 0..passes {
                    let center = &emb[c * DIM..(c + 1) * DIM];
                    for (x, r) in d2.iter_mut().zip(emb.chunks(DIM)) {
                        *x = x.min(distance::squared_euclidean(r, center));
                    }
                }
                let per = t.elapsed().as_secs_f64() / passes as f64;
                println!(
                    "  k-means++ seeding: {per:.4} s per centre x {k} centres = ~{:.1} s \
                     (single-threaded)",
                    per * k as f64
                );
                // Whole runs capped at 1 and 3 Lloyd rounds: the difference is two rounds; the
                // main run's time then says how many rounds it made (100 = the cap).
                let capped = |iterations: usize| -> Result<f64> {
                    let t = Instant::now();
                    cluster(
                        &emb,
                        DIM,
                        &photo,
                        &ClusterConfig {
                            iterations,
                            ..config.clone()
                        },
                    )?;
                    Ok(t.elapsed().as_secs_f64())
                };
                let (t1, t3) = (capped(1)?, capped(3)?);
                let round = (t3 - t1) / 2.0;
                println!(
                    "  whole k-means capped at 1 round: {t1:.2} s, at 3 rounds: {t3:.2} s => \
                     {round:.2} s per Lloyd round (pairwise + serial argmin + means) => ~{:.0} \
                     rounds in the main run (cap {}; noisy under load)",
                    1.0 + (seconds - t1) / round.max(1e-9),
                    config.iterations
                );
            }
        }
    }
    Ok(())
}
