//! LFW identification, closed and open set, with `facekit::identify` (issue 12, acceptance 1).
//!
//! cargo run --release --example eval_identify -- [--shared DIR] [--threads N]
//!     [--peer DIR] [--bench-rows N [--bench-only]]
//!
//! Protocol (`../shared/data/lfw/lfw-deepfunneled`, 13,233 photos of 5,749 people):
//! - gallery: the first photo (lowest number) of each of the 1,680 people with >= 2 photos;
//! - genuine probes: every other photo of those people (closed set: rank-1 accuracy);
//! - impostor probes: the one photo of each of the 4,069 single-photo people (open set).
//!
//! FAR(t) is the fraction of impostor probes whose nearest gallery person is within t; the
//! threshold at FAR f is the largest t with FAR(t) <= f (just below the impostor distance that
//! would exceed it). DIR(t), the detection-and-identification rate, is the fraction of genuine
//! probes whose nearest person is right and within t. The identification threshold for
//! `facekit identify` is calibrated at FAR 1 % on the people of even index (sorted names) and
//! tested on the odd ones; full-set figures are printed too.
//!
//! Per photo the face nearest the centre is used (LFW's subject is centred), or the central
//! crop when no face is found; embeddings go through the face library, so re-runs are fast.
//!
//! `--peer DIR`: the same protocol on face_recognition's encodings as written by
//! `scripts/eval_identify_peer.py` (`lfw_paths.txt`, `lfw_encodings.f32`, `lfw_meta.json`),
//! nearest match = smallest Euclidean distance (face_recognition's `face_distance`), printed
//! side by side. `--bench-rows N`: also time one-query search in a seeded gallery of N x 128
//! rows (0 = skip; default 0) before the evaluation, and with `--bench-only` nothing else.
//! Prints one table to stdout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use facekit::identify::{decide, Gallery};
use facekit::io::LoadOptions;
use facekit::library::Library;
use facekit::pipeline::{select_face, FacePolicy, Pipeline};
use rayon::prelude::*;

/// One LFW photo: its path relative to the root and its person (index in sorted names).
struct Photo {
    rel: String,
    person: usize,
}

/// The protocol's split of the photos (indices into the photo list).
struct Protocol {
    photos: Vec<Photo>,
    names: Vec<String>,
    /// Photo indices: the gallery (one per person with >= 2 photos), genuine and impostor probes.
    gallery: Vec<usize>,
    genuine: Vec<usize>,
    impostor: Vec<usize>,
}

/// Lists the photos and splits them as the protocol says.
fn protocol(root: &Path) -> Result<Protocol> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .with_context(|| root.display().to_string())?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    let mut photos = Vec::new();
    let (mut gallery, mut genuine, mut impostor) = (Vec::new(), Vec::new(), Vec::new());
    for (person, name) in names.iter().enumerate() {
        let dir = root.join(name);
        let mut files: Vec<(u32, String)> = std::fs::read_dir(&dir)
            .with_context(|| dir.display().to_string())?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|f| f.ends_with(".jpg"))
            .map(|f| {
                // Name_0001.jpg -> 1; anything else sorts last, by name.
                let number = f
                    .trim_end_matches(".jpg")
                    .rsplit('_')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(u32::MAX);
                (number, f)
            })
            .collect();
        files.sort();
        let single = files.len() == 1;
        for (i, (_, f)) in files.into_iter().enumerate() {
            let idx = photos.len();
            photos.push(Photo {
                rel: format!("{name}/{f}"),
                person,
            });
            match (single, i) {
                (true, _) => impostor.push(idx),
                (false, 0) => gallery.push(idx),
                (false, _) => genuine.push(idx),
            }
        }
    }
    Ok(Protocol {
        photos,
        names,
        gallery,
        genuine,
        impostor,
    })
}

/// facekit's embedding of every photo (central face, else the central crop) and the number of
/// central-crop fallbacks and cache hits. The only place that knows the cache API.
fn facekit_embeddings(
    root: &Path,
    photos: &[Photo],
    pool: &rayon::ThreadPool,
) -> Result<(String, Vec<Vec<f32>>, usize, usize)> {
    let pipeline = Pipeline::new()?;
    let cache = Library::open(&Library::default_path().context("no place for the face library")?)?;
    let opts = LoadOptions::default();
    let rows: Vec<(Vec<f32>, bool, bool)> = pool.install(|| {
        photos
            .par_iter()
            .map(|p| -> Result<_> {
                let path = root.join(&p.rel);
                let (faces, hit) =
                    facekit::serial(|| cache.faces_of_file(&pipeline, &path, &opts, true))?;
                let boxes = faces.faces.iter().map(|f| &f.bbox);
                Ok(
                    match select_face(boxes, FacePolicy::Center, faces.width, faces.height) {
                        Some(i) => (faces.faces[i].embedding.clone(), false, hit),
                        None => (
                            faces
                                .central
                                .clone()
                                .with_context(|| format!("{}: no central crop", p.rel))?,
                            true,
                            hit,
                        ),
                    },
                )
            })
            .collect::<Result<_>>()
    })?;
    cache.flush()?;
    let fallback = rows.iter().filter(|r| r.1).count();
    let hits = rows.iter().filter(|r| r.2).count();
    Ok((
        pipeline.model_id(),
        rows.into_iter().map(|r| r.0).collect(),
        fallback,
        hits,
    ))
}

/// face_recognition's encodings from `scripts/eval_identify_peer.py`, in `photos` order.
struct Peer {
    embeddings: Vec<Vec<f32>>,
    meta: serde_json::Value,
}

fn load_peer(dir: &Path, photos: &[Photo]) -> Result<Peer> {
    let paths = std::fs::read_to_string(dir.join("lfw_paths.txt"))
        .with_context(|| format!("{}/lfw_paths.txt", dir.display()))?;
    let bytes = std::fs::read(dir.join("lfw_encodings.f32"))
        .with_context(|| format!("{}/lfw_encodings.f32", dir.display()))?;
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("lfw_meta.json"))?)?;
    let paths: Vec<&str> = paths.lines().collect();
    let dim = 128;
    ensure!(
        bytes.len() == paths.len() * dim * 4,
        "peer: {} bytes of encodings for {} paths",
        bytes.len(),
        paths.len()
    );
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let by_path: HashMap<&str, usize> = paths.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    let embeddings = photos
        .iter()
        .map(|p| {
            let i = *by_path
                .get(p.rel.as_str())
                .with_context(|| format!("peer: no encoding for {}", p.rel))?;
            Ok(values[i * dim..(i + 1) * dim].to_vec())
        })
        .collect::<Result<_>>()?;
    Ok(Peer { embeddings, meta })
}

/// Nearest gallery person and its distance for each probe.
struct Scores {
    /// (person correct, distance) per genuine probe.
    genuine: Vec<(bool, f32)>,
    /// Nearest distance per impostor probe.
    impostor: Vec<f32>,
    /// Person index (sorted names) of each genuine and impostor probe, for the split.
    genuine_person: Vec<usize>,
    impostor_person: Vec<usize>,
    search_seconds: f64,
}

fn score(p: &Protocol, embeddings: &[Vec<f32>]) -> Result<Scores> {
    let dim = embeddings.first().map_or(0, Vec::len);
    let flat = |idx: &[usize]| -> Vec<f32> {
        idx.iter()
            .flat_map(|&i| embeddings[i].iter().copied())
            .collect()
    };
    let people: Vec<u32> = p
        .gallery
        .iter()
        .map(|&i| p.photos[i].person as u32)
        .collect();
    let gallery = Gallery::new(dim, flat(&p.gallery), people)?;
    let start = Instant::now();
    let genuine = gallery.search(&flat(&p.genuine), 2)?;
    let impostor = gallery.search(&flat(&p.impostor), 2)?;
    let search_seconds = start.elapsed().as_secs_f64();
    let best = |m: &[facekit::identify::PersonMatch]| m.first().copied().context("empty result");
    Ok(Scores {
        genuine: p
            .genuine
            .iter()
            .zip(&genuine)
            .map(|(&i, m)| {
                let b = best(m)?;
                Ok((b.person as usize == p.photos[i].person, b.distance))
            })
            .collect::<Result<_>>()?,
        impostor: impostor
            .iter()
            .map(|m| Ok(best(m)?.distance))
            .collect::<Result<_>>()?,
        genuine_person: p.genuine.iter().map(|&i| p.photos[i].person).collect(),
        impostor_person: p.impostor.iter().map(|&i| p.photos[i].person).collect(),
        search_seconds,
    })
}

/// The largest threshold whose FAR on `impostor` distances is at most `far`.
fn threshold_at(impostor: &[f32], far: f64) -> f32 {
    let mut d = impostor.to_vec();
    d.sort_by(f32::total_cmp);
    let allowed = (far * d.len() as f64 + 1e-9).floor() as usize;
    match d.get(allowed) {
        // Just below the first impostor that would exceed the allowance (`decide` accepts <=).
        Some(&next) => f32::from_bits(next.to_bits() - 1).max(0.0),
        None => f32::INFINITY,
    }
}

/// (DIR, FAR) at threshold `t`, using `decide` as `facekit identify` does.
fn rates(genuine: &[(bool, f32)], impostor: &[f32], t: f32) -> (f64, f64) {
    let m = |person, distance| facekit::identify::PersonMatch {
        person,
        distance,
        row: 0,
    };
    let dir = genuine
        .iter()
        .filter(|&&(right, d)| right && decide(&[m(0, d)], t).known.is_some())
        .count();
    let far = impostor
        .iter()
        .filter(|&&d| decide(&[m(0, d)], t).known.is_some())
        .count();
    (
        dir as f64 / genuine.len().max(1) as f64,
        far as f64 / impostor.len().max(1) as f64,
    )
}

/// Every figure of the table for one tool.
struct Figures {
    rank1: f64,
    at: Vec<(f64, f32, f64, f64)>,
    calibrated: f32,
    held_out: (f64, f64),
    full: (f64, f64),
    search_ms: f64,
}

fn figures(s: &Scores) -> Figures {
    let rank1 = s.genuine.iter().filter(|g| g.0).count() as f64 / s.genuine.len().max(1) as f64;
    let at = [0.01, 0.001]
        .iter()
        .map(|&far| {
            let t = threshold_at(&s.impostor, far);
            let (dir, got) = rates(&s.genuine, &s.impostor, t);
            (far, t, dir, got)
        })
        .collect();
    let half = |persons: &[usize], even: bool| -> Vec<bool> {
        persons.iter().map(|p| (p % 2 == 0) == even).collect()
    };
    let pick = |keep: &[bool], xs: &[f32]| -> Vec<f32> {
        xs.iter()
            .zip(keep)
            .filter(|(_, k)| **k)
            .map(|(x, _)| *x)
            .collect()
    };
    let calibrated = threshold_at(&pick(&half(&s.impostor_person, true), &s.impostor), 0.01);
    let odd_g: Vec<(bool, f32)> = s
        .genuine
        .iter()
        .zip(half(&s.genuine_person, false))
        .filter(|(_, k)| *k)
        .map(|(g, _)| *g)
        .collect();
    let odd_i = pick(&half(&s.impostor_person, false), &s.impostor);
    Figures {
        rank1,
        at,
        calibrated,
        held_out: rates(&odd_g, &odd_i, calibrated),
        full: rates(&s.genuine, &s.impostor, calibrated),
        search_ms: s.search_seconds * 1e3,
    }
}

/// Wall time of one single-query search in a seeded `rows x 128` gallery of 1,000 people,
/// after one warm-up: (gallery build seconds, median ms, min ms, median ms of a plain
/// `distance::top_k` of 64 rows, which also recomputes the gallery's norms, median ms of one
/// parallel pass reading the matrix: the machine's floor for a search).
fn bench_search(rows: usize, reps: usize) -> Result<(f64, f64, f64, f64, f64)> {
    let dim = 128;
    let mut rng = facekit::Rng::new(12);
    let start = Instant::now();
    let mut vectors = Vec::with_capacity(rows * dim);
    let mut owner = Vec::with_capacity(rows);
    for _ in 0..rows {
        let row: Vec<f32> = (0..dim).map(|_| rng.f64() as f32 - 0.5).collect();
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        vectors.extend(row.iter().map(|x| x / norm * 0.7));
        owner.push(rng.below(1000) as u32);
    }
    let gallery = Gallery::new(dim, vectors, owner)?;
    let build = start.elapsed().as_secs_f64();
    let (mut times, mut plain, mut read) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..=reps {
        // A query near one gallery row, as a known face is.
        let near = rng.below(rows) * dim;
        let q: Vec<f32> = (0..dim)
            .map(|d| gallery.vectors()[near + d] + 0.05 * (rng.f64() as f32 - 0.5))
            .collect();
        let t = Instant::now();
        let m = gallery.search(&q, 2)?;
        std::hint::black_box(&m);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let m = facekit::distance::top_k(
            &q,
            gallery.vectors(),
            dim,
            64,
            facekit::distance::Metric::Euclidean,
            false,
        );
        std::hint::black_box(&m);
        let plain_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        // XOR of the bits: vectorises, so this measures memory, not an add chain.
        let x = gallery
            .vectors()
            .par_chunks(1 << 16)
            .map(|c| c.iter().fold(0u32, |a, v| a ^ v.to_bits()))
            .reduce(|| 0, |a, b| a ^ b);
        std::hint::black_box(x);
        if r > 0 {
            times.push(ms);
            plain.push(plain_ms);
            read.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    Ok((
        build,
        median(&mut times),
        min,
        median(&mut plain),
        median(&mut read),
    ))
}

fn pct(x: f64) -> String {
    format!("{:.2} %", 100.0 * x)
}

fn main() -> Result<()> {
    let mut shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let mut threads = 0;
    let mut peer_dir = None;
    let mut bench_rows = 0;
    let mut bench_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--shared" => shared = PathBuf::from(args.next().context("--shared DIR")?),
            "--threads" => threads = args.next().context("--threads N")?.parse()?,
            "--peer" => peer_dir = Some(PathBuf::from(args.next().context("--peer DIR")?)),
            "--bench-rows" => bench_rows = args.next().context("--bench-rows N")?.parse()?,
            "--bench-only" => bench_only = true,
            other => bail!("unknown argument {other}"),
        }
    }
    let mut pool = rayon::ThreadPoolBuilder::new();
    if threads > 0 {
        pool = pool.num_threads(threads);
    }
    let pool = pool.build()?;
    let bench = if bench_rows > 0 {
        let (build, median, min, plain, read) = pool.install(|| bench_search(bench_rows, 20))?;
        Some(format!(
            "search bench: 1 query, k 2, gallery {bench_rows} x 128 (1,000 people, seeded; built \
             in {build:.1} s), {} threads: Gallery::search median {median:.1} ms (min {min:.1}) \
             over 20 queries; plain distance::top_k (norms recomputed) median {plain:.1} ms; \
             one pass reading the matrix (xor) median {read:.1} ms",
            pool.current_num_threads()
        ))
    } else {
        None
    };
    if bench_only {
        println!("{}", bench.unwrap_or_default());
        return Ok(());
    }
    let root = shared.join("data/lfw/lfw-deepfunneled");
    if !root.is_dir() {
        eprintln!(
            "SKIPPED: {} not found; the identification evaluation needs ../shared/data/lfw",
            root.display()
        );
        return Ok(());
    }
    let p = protocol(&root)?;
    let multi = p.gallery.len();
    if p.photos.len() != 13_233 || multi != 1_680 || p.impostor.len() != 4_069 {
        eprintln!(
            "WARNING: expected 13,233 photos, 1,680 gallery people and 4,069 impostors (LFW); \
             found {}, {multi}, {}",
            p.photos.len(),
            p.impostor.len()
        );
    }

    let start = Instant::now();
    let (model, ours, fallback, hits) = facekit_embeddings(&root, &p.photos, &pool)?;
    let embed_seconds = start.elapsed().as_secs_f64();
    let (ours_scores, peer) = pool.install(|| -> Result<_> {
        let ours = score(&p, &ours)?;
        let peer = match &peer_dir {
            Some(dir) => {
                let peer = load_peer(dir, &p.photos)?;
                let scores = score(&p, &peer.embeddings)?;
                Some((peer.meta, scores))
            }
            None => None,
        };
        Ok((ours, peer))
    })?;
    let f_ours = figures(&ours_scores);
    let f_peer = peer.as_ref().map(|(_, s)| figures(s));

    println!(
        "LFW identification: gallery {} people (first photo each), {} genuine probes, {} \
         impostor probes ({} people)",
        multi,
        p.genuine.len(),
        p.impostor.len(),
        p.names.len()
    );
    println!(
        "facekit: {model}; face_recognition: HOG (upsample 1) + 5-point + ResNet, nearest encoding"
    );
    let w = 34;
    let row = |label: &str, a: String, b: Option<String>| {
        println!(
            "{label:<w$} {a:>18} {:>30}",
            b.unwrap_or_else(|| "-".into())
        );
    };
    row("", "facekit".into(), Some("face_recognition".into()));
    row(
        "rank-1 (closed set)",
        pct(f_ours.rank1),
        f_peer.as_ref().map(|f| pct(f.rank1)),
    );
    for (i, &(far, t, dir, got)) in f_ours.at.iter().enumerate() {
        let other = f_peer.as_ref().map(|f| f.at[i]);
        let far_label = if far >= 0.01 { "1 %" } else { "0.1 %" };
        row(
            &format!("DIR @ FAR {far_label}"),
            pct(dir),
            other.map(|o| pct(o.2)),
        );
        row(
            "  threshold (FAR reached)",
            format!("{t:.4} ({:.2} %)", 100.0 * got),
            other.map(|o| format!("{:.4} ({:.2} %)", o.1, 100.0 * o.3)),
        );
    }
    row(
        "calibrated (FAR 1 %, even people)",
        format!("{:.4}", f_ours.calibrated),
        f_peer.as_ref().map(|f| format!("{:.4}", f.calibrated)),
    );
    row(
        "  held-out odd people DIR / FAR",
        format!("{} / {}", pct(f_ours.held_out.0), pct(f_ours.held_out.1)),
        f_peer
            .as_ref()
            .map(|f| format!("{} / {}", pct(f.held_out.0), pct(f.held_out.1))),
    );
    row(
        "  all people DIR / FAR",
        format!("{} / {}", pct(f_ours.full.0), pct(f_ours.full.1)),
        f_peer
            .as_ref()
            .map(|f| format!("{} / {}", pct(f.full.0), pct(f.full.1))),
    );
    let meta = peer.as_ref().map(|(m, _)| m);
    let num = |k: &str| meta.and_then(|m| m.get(k)).and_then(|v| v.as_f64());
    row(
        "photos without a face (fallback)",
        fallback.to_string(),
        num("hog_fallback").map(|v| format!("{v}")),
    );
    let computed = p.photos.len() - hits;
    row(
        "embedding wall time (this run)",
        format!("{embed_seconds:.1} s"),
        num("seconds").map(|s| match num("computed") {
            Some(0.0) => format!("{s:.1} s (computed earlier)"),
            _ => format!("{s:.1} s"),
        }),
    );
    row(
        "  images computed (rest cached)",
        computed.to_string(),
        num("computed").map(|v| format!("{v}")),
    );
    row(
        "  images/s when computed",
        if computed > 0 {
            format!("{:.1}", computed as f64 / embed_seconds)
        } else {
            "(cached)".into()
        },
        num("images_per_second").map(|v| format!("{v:.1}")),
    );
    row(
        "search, all probes (identify::Gallery)",
        format!("{:.1} ms", f_ours.search_ms),
        f_peer.as_ref().map(|f| format!("{:.1} ms", f.search_ms)),
    );
    if let Some(m) = meta {
        if let Some(d) = m.get("npz_max_l2").and_then(|v| v.as_f64()) {
            println!(
                "face_recognition encodings vs ../shared/golden/lfw_face_recognition.npz: max L2 \
                 {d:.2e} over {} shared images",
                m.get("npz_overlap").and_then(|v| v.as_u64()).unwrap_or(0)
            );
        }
        // The peer script's own rank-1 with face_recognition.face_distance: must agree.
        if let (Some(theirs), Some(f)) = (m.get("rank1").and_then(|v| v.as_f64()), &f_peer) {
            if (theirs - f.rank1).abs() > 1e-9 {
                println!(
                    "WARNING: face_recognition rank-1 by its own face_distance is {}, here {}",
                    pct(theirs),
                    pct(f.rank1)
                );
            }
        }
    }
    if let Some(b) = bench {
        println!("{b}");
    }
    Ok(())
}
