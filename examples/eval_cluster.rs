//! Clustering quality on a seeded LFW "photo album": pairwise and BCubed precision / recall / F1
//! of Chinese Whispers, DBSCAN and k-means with the library defaults, a sweep of the Chinese
//! Whispers threshold, and an end-to-end cross-check of the album workflow `facekit cluster`
//! runs (`facekit::album::run`) on the same album.
//!
//! cargo run --release --example eval_cluster -- [--shared DIR] [--images 1000] [--seed 0]
//!     [--cache-dir DIR] [--threshold T] [--no-workflow]
//!
//! Acceptance: BCubed F1 >= 0.95 for Chinese Whispers with the defaults (threshold 0.50,
//! faces at least 70 px wide, min size 2).
//!
//! Album recipe (seeded with `--seed`, from `../shared/data/lfw/lfw-deepfunneled`; prints
//! `SKIPPED:` and exits 0 when it is missing):
//! - 88 % of the images (880 of 1,000) come from identities with at least 5 images in LFW:
//!   the identities are visited in a seeded random order and each contributes a seeded random
//!   subset of min(its image count, 20, images still needed) images, so that no single person
//!   (George_W_Bush has 530) dominates; the last identity may contribute fewer.
//! - The other 12 % are distractors: one image each of seeded random identities that have
//!   exactly 1 image in LFW.
//! - The album is shuffled (seeded); image `i` of the album is also photo id `i`.
//!
//! Ground truth: the LFW identity folder. Every detected face is clustered; the identity
//! applies to the face whose box centre is nearest the image centre (LFW's subject is
//! centred). Any other face in the same photo (a background person, or a false detection)
//! gets its own unique ground-truth label: each is assumed to be a different person seen once.
//! Images where no face is detected are reported and excluded.
//!
//! Metrics (a face left unknown, i.e. in a cluster under the minimum size or DBSCAN noise,
//! counts as its own singleton cluster):
//! - pairwise: precision = true pairs among the pairs put together, recall = pairs put
//!   together among the truly-together pairs, F1 their harmonic mean;
//! - BCubed (Amigó, Gonzalo, Artiles and Verdejo 2009): per face, precision = share of its
//!   cluster with its identity, recall = share of its identity in its cluster; each averaged
//!   over faces, F1 the harmonic mean of the two averages.
//!
//! k-means gets k = the number of distinct LFW identities with a detected face in the album
//! (an oracle no real user has; background faces are not counted).
//!
//! Printed after the main table: the Chinese Whispers threshold sweep (and a DBSCAN one); the
//! links of the threshold graph by kind (same identity, different identities, involving a
//! background face), which is what explains the sweep; and variants that are not library
//! defaults (Chinese Whispers with faces whose box is narrower than 60 or 70 px left unknown),
//! to show what a library change would have to do to pass.
//!
//! The workflow cross-check calls `facekit::album::run` (what `facekit cluster` runs before it
//! places the photos) on the album's files in album order, with the same threshold and seed, on
//! a copy of the library without people, and scores its people the same way. The faces both
//! put in clusters must be grouped as `cluster_faces` grouped them; faces the clustering left
//! unknown may join a person within the threshold in `album::cluster`'s leftover pass (which
//! keeps a second run from changing anything), and are counted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use facekit::album::AlbumConfig;
use facekit::cluster::{cluster_faces, Algorithm, ClusterConfig, Clustering};
use facekit::io::LoadOptions;
use facekit::library::{ImageFaces, Library};
use facekit::Pipeline;
use facekit::Rng;
use rayon::prelude::*;

/// Share of the album drawn from identities with >= `MIN_IMAGES` images.
const MULTI_SHARE: f64 = 0.88;
/// Identities with at least this many LFW images are the "people" of the album.
const MIN_IMAGES: usize = 5;
/// At most this many images of one identity.
const CAP: usize = 20;

/// Precision, recall, F1.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Prf {
    p: f64,
    r: f64,
    f1: f64,
}

fn prf(p: f64, r: f64) -> Prf {
    let f1 = if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    };
    Prf { p, r, f1 }
}

/// Predicted cluster ids with every unknown face made its own singleton cluster.
fn dense_predictions(pred: &[Option<usize>]) -> Vec<usize> {
    let base = pred.iter().flatten().max().map_or(0, |m| m + 1);
    pred.iter()
        .enumerate()
        .map(|(i, l)| l.unwrap_or(base + i))
        .collect()
}

/// Sizes of clusters, of classes, and of their intersections.
struct Contingency {
    cells: HashMap<(usize, usize), usize>,
    pred: HashMap<usize, usize>,
    truth: HashMap<usize, usize>,
    n: usize,
}

fn contingency(pred: &[Option<usize>], truth: &[usize]) -> Contingency {
    assert_eq!(pred.len(), truth.len());
    let pred = dense_predictions(pred);
    let mut c = Contingency {
        cells: HashMap::new(),
        pred: HashMap::new(),
        truth: HashMap::new(),
        n: truth.len(),
    };
    for (&p, &t) in pred.iter().zip(truth) {
        *c.cells.entry((p, t)).or_default() += 1;
        *c.pred.entry(p).or_default() += 1;
        *c.truth.entry(t).or_default() += 1;
    }
    c
}

fn pairs(k: usize) -> f64 {
    (k * k.saturating_sub(1) / 2) as f64
}

/// Pairwise precision / recall / F1 (no pair at all on one side counts as 1.0).
fn pairwise(pred: &[Option<usize>], truth: &[usize]) -> Prf {
    let c = contingency(pred, truth);
    let tp: f64 = c.cells.values().map(|&k| pairs(k)).sum();
    let together: f64 = c.pred.values().map(|&k| pairs(k)).sum();
    let truly: f64 = c.truth.values().map(|&k| pairs(k)).sum();
    prf(
        if together > 0.0 { tp / together } else { 1.0 },
        if truly > 0.0 { tp / truly } else { 1.0 },
    )
}

/// BCubed precision / recall / F1 (Amigó et al. 2009).
fn bcubed(pred: &[Option<usize>], truth: &[usize]) -> Prf {
    let c = contingency(pred, truth);
    if c.n == 0 {
        return prf(1.0, 1.0);
    }
    let (mut p, mut r) = (0.0, 0.0);
    for (&(pc, tc), &k) in &c.cells {
        // k faces share this cell; each has k / |cluster| precision and k / |class| recall.
        let k = k as f64;
        p += k * k / c.pred[&pc] as f64;
        r += k * k / c.truth[&tc] as f64;
    }
    prf(p / c.n as f64, r / c.n as f64)
}

/// One image of the album.
struct Item {
    /// `Name/Name_NNNN.jpg` under the LFW root.
    rel: String,
    identity: String,
}

fn list_identities(root: &Path) -> Result<Vec<(String, Vec<String>)>> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(root).with_context(|| root.display().to_string())? {
        let e = e?;
        if !e.file_type()?.is_dir() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let mut files: Vec<String> = std::fs::read_dir(e.path())?
            .filter_map(|f| f.ok())
            .map(|f| f.file_name().to_string_lossy().into_owned())
            .filter(|f| f.ends_with(".jpg"))
            .collect();
        files.sort();
        if !files.is_empty() {
            ids.push((name, files));
        }
    }
    ids.sort();
    Ok(ids)
}

/// The seeded album (see the header). Returns the items and a printable recipe.
fn build_album(root: &Path, images: usize, seed: u64) -> Result<(Vec<Item>, String)> {
    let ids = list_identities(root)?;
    let mut rng = Rng::new(seed);
    let mut multi: Vec<&(String, Vec<String>)> =
        ids.iter().filter(|(_, f)| f.len() >= MIN_IMAGES).collect();
    let mut single: Vec<&(String, Vec<String>)> =
        ids.iter().filter(|(_, f)| f.len() == 1).collect();
    rng.shuffle(&mut multi);
    rng.shuffle(&mut single);
    let want_multi = ((images as f64) * MULTI_SHARE).round() as usize;
    let want_single = images - want_multi;
    let mut album = Vec::new();
    let mut people = 0;
    for (name, files) in &multi {
        let left = want_multi - album.len();
        if left == 0 {
            break;
        }
        let mut files = files.clone();
        rng.shuffle(&mut files);
        files.truncate(files.len().min(CAP).min(left));
        files.sort();
        people += 1;
        album.extend(files.into_iter().map(|f| Item {
            rel: format!("{name}/{f}"),
            identity: name.clone(),
        }));
    }
    let from_multi = album.len();
    for (name, files) in single.iter().take(want_single) {
        album.push(Item {
            rel: format!("{name}/{}", files[0]),
            identity: name.clone(),
        });
    }
    let singles = album.len() - from_multi;
    rng.shuffle(&mut album);
    let recipe = format!(
        "album: {} images, seed {seed}: {from_multi} from {people} identities with >= {MIN_IMAGES} \
         LFW images (<= {CAP} each, seeded subsets; {} such identities exist) + {singles} \
         distractors from identities with exactly 1 LFW image ({} exist)",
        album.len(),
        multi.len(),
        single.len()
    );
    Ok((album, recipe))
}

/// Index of the face whose box centre is nearest the image centre.
fn central_face(f: &ImageFaces) -> Option<usize> {
    let (cx, cy) = (f.width as f32 / 2.0, f.height as f32 / 2.0);
    let d = |k: usize| {
        let c = f.faces[k].bbox.center();
        (c.x - cx).hypot(c.y - cy)
    };
    (0..f.faces.len()).min_by(|&a, &b| d(a).total_cmp(&d(b)))
}

struct Row {
    name: String,
    clusters: usize,
    unknown: usize,
    pairwise: Prf,
    bcubed: Prf,
    seconds: f64,
}

fn header() {
    println!(
        "{:<24} {:>8} {:>7}  {:>6} {:>6} {:>6}  {:>6} {:>6} {:>6}  {:>8}",
        "algorithm",
        "clusters",
        "unknown",
        "pw P",
        "pw R",
        "pw F1",
        "B3 P",
        "B3 R",
        "B3 F1",
        "time ms"
    );
}

fn print_row(r: &Row) {
    println!(
        "{:<24} {:>8} {:>7}  {:>6.4} {:>6.4} {:>6.4}  {:>6.4} {:>6.4} {:>6.4}  {:>8.1}",
        r.name,
        r.clusters,
        r.unknown,
        r.pairwise.p,
        r.pairwise.r,
        r.pairwise.f1,
        r.bcubed.p,
        r.bcubed.r,
        r.bcubed.f1,
        r.seconds * 1e3
    );
}

fn score(name: String, c: &Clustering, truth: &[usize], seconds: f64) -> Row {
    Row {
        name,
        clusters: c.clusters.len(),
        unknown: c.labels.iter().filter(|l| l.is_none()).count(),
        pairwise: pairwise(&c.labels, truth),
        bcubed: bcubed(&c.labels, truth),
        seconds,
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    name: String,
    emb: &[f32],
    dim: usize,
    photo: &[u32],
    widths: &[f32],
    truth: &[usize],
    config: &ClusterConfig,
) -> Result<(Row, Clustering)> {
    let start = Instant::now();
    let c = cluster_faces(emb, dim, photo, widths, config)?;
    let seconds = start.elapsed().as_secs_f64();
    Ok((score(name, &c, truth, seconds), c))
}

fn main() -> Result<()> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut shared = manifest.join("../shared");
    let mut images = 1000usize;
    let mut seed = 0u64;
    let mut cache_dir: Option<PathBuf> = None;
    let mut threshold = ClusterConfig::default().threshold;
    let mut workflow = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--shared" => shared = PathBuf::from(args.next().context("--shared DIR")?),
            "--images" => images = args.next().context("--images N")?.parse()?,
            "--seed" => seed = args.next().context("--seed N")?.parse()?,
            "--cache-dir" => cache_dir = Some(PathBuf::from(args.next().context("--cache-dir")?)),
            "--threshold" => threshold = args.next().context("--threshold T")?.parse()?,
            "--no-workflow" | "--no-cli" => workflow = false,
            other => bail!("unknown argument {other}"),
        }
    }
    let root = shared.join("data/lfw/lfw-deepfunneled");
    if !root.is_dir() {
        eprintln!(
            "SKIPPED: {} not found; the clustering evaluation needs LFW (deep-funneled) in \
             ../shared/data/lfw",
            root.display()
        );
        return Ok(());
    }
    let (album, recipe) = build_album(&root, images, seed)?;
    println!("{recipe}");

    // Every face of every album image, via the embedding cache.
    let pipeline = Pipeline::new()?;
    let lib_path = match &cache_dir {
        Some(d) => d.join(facekit::library::FILE_NAME),
        None => Library::default_path().context("no place for the face library")?,
    };
    let legacy = cache_dir.clone().or_else(Library::legacy_cache_dir);
    let cache = Library::open_with(&lib_path, legacy)?;
    println!(
        "library: {} ({} photos)",
        lib_path.display(),
        cache.stats()?.photos
    );
    let opts = LoadOptions::default();
    let start = Instant::now();
    let faces: Vec<(std::sync::Arc<ImageFaces>, bool)> = album
        .par_iter()
        .map(|it| {
            facekit::serial(|| cache.faces_of_file(&pipeline, &root.join(&it.rel), &opts, false))
        })
        .collect::<std::result::Result<_, _>>()?;
    let hits = faces.iter().filter(|f| f.1).count();
    println!(
        "faces: {} images in {:.1} s ({hits} cache hits, {} computed)",
        album.len(),
        start.elapsed().as_secs_f64(),
        album.len() - hits
    );

    // Faces, photo ids and ground truth.
    let mut identity_ids: HashMap<&str, usize> = HashMap::new();
    let mut emb: Vec<f32> = Vec::new();
    let mut photo: Vec<u32> = Vec::new();
    let mut truth: Vec<usize> = Vec::new();
    // (album index, face index) -> face row, for the CLI cross-check.
    let mut row_of: HashMap<(usize, usize), usize> = HashMap::new();
    let mut no_face = Vec::new();
    let mut background = 0;
    let mut dim = 0;
    // Background faces get labels from a range no identity reaches.
    let mut next_background = usize::MAX / 2;
    for (i, (it, (f, _))) in album.iter().zip(&faces).enumerate() {
        let Some(central) = central_face(f) else {
            no_face.push(it.rel.as_str());
            continue;
        };
        for (k, face) in f.faces.iter().enumerate() {
            dim = face.embedding.len();
            row_of.insert((i, k), photo.len());
            emb.extend_from_slice(&face.embedding);
            photo.push(i as u32);
            truth.push(if k == central {
                let next = identity_ids.len();
                *identity_ids.entry(it.identity.as_str()).or_insert(next)
            } else {
                background += 1;
                next_background += 1;
                next_background
            });
        }
    }
    let mut class_sizes: HashMap<usize, usize> = HashMap::new();
    truth
        .iter()
        .for_each(|&t| *class_sizes.entry(t).or_default() += 1);
    let true_pairs: f64 = class_sizes.values().map(|&k| pairs(k)).sum();
    println!(
        "{} faces ({} central, {background} background faces each labelled as its own person), \
         {} identities with a face ({} with >= 2 faces), {} true pairs; {} image(s) without a \
         detected face excluded{}",
        truth.len(),
        truth.len() - background,
        identity_ids.len(),
        class_sizes
            .iter()
            .filter(|(&t, &k)| t < usize::MAX / 2 && k >= 2)
            .count(),
        true_pairs,
        no_face.len(),
        if no_face.is_empty() {
            String::new()
        } else {
            format!(
                ": {}{}",
                no_face
                    .iter()
                    .take(5)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", "),
                if no_face.len() > 5 { ", ..." } else { "" }
            )
        }
    );
    let oracle = {
        let all_single: Vec<Option<usize>> = vec![None; truth.len()];
        let perfect: Vec<Option<usize>> = truth.iter().map(|&t| Some(t)).collect();
        (bcubed(&all_single, &truth), bcubed(&perfect, &truth))
    };
    println!(
        "reference: every face alone -> BCubed F1 {:.4}; the truth itself -> {:.4}",
        oracle.0.f1, oracle.1.f1
    );

    // The three algorithms with the defaults.
    let widths: Vec<f32> = faces
        .iter()
        .filter(|(f, _)| !f.faces.is_empty())
        .flat_map(|(f, _)| f.faces.iter().map(|x| x.bbox.width()).collect::<Vec<_>>())
        .collect();
    assert_eq!(widths.len(), truth.len());
    let k = identity_ids.len();
    let base = ClusterConfig {
        threshold,
        seed,
        ..Default::default()
    };
    println!();
    println!(
        "defaults (threshold {threshold}, min size {}, Euclidean, seed {seed}); k-means k = {k} \
         (oracle: true identity count)",
        base.min_size
    );
    header();
    let (cw, cw_clustering) = run(
        "chinese-whispers".into(),
        &emb,
        dim,
        &photo,
        &widths,
        &truth,
        &base,
    )?;
    print_row(&cw);
    let (db, _) = run(
        "dbscan".into(),
        &emb,
        dim,
        &photo,
        &widths,
        &truth,
        &ClusterConfig {
            algorithm: Algorithm::Dbscan,
            ..base.clone()
        },
    )?;
    print_row(&db);
    let (km, _) = run(
        format!("kmeans (k={k})"),
        &emb,
        dim,
        &photo,
        &widths,
        &truth,
        &ClusterConfig {
            algorithm: Algorithm::KMeans,
            k: Some(k),
            ..base.clone()
        },
    )?;
    print_row(&km);
    println!(
        "acceptance (Chinese Whispers BCubed F1 >= 0.95): {} ({:.4})",
        if cw.bcubed.f1 >= 0.95 { "PASS" } else { "FAIL" },
        cw.bcubed.f1
    );

    // Why: the links of the threshold graph, by kind. A link between different people is
    // what merges clusters; a background face (not the subject) has no true partner at all.
    println!();
    println!(
        "links of the threshold graph (faces closer than t): same identity / different \
         identities (both central faces) / involving a background face; faces with a false link"
    );
    let central: Vec<bool> = truth.iter().map(|&t| t < usize::MAX / 2).collect();
    for t in [0.45f32, 0.50, 0.55, 0.60] {
        let graph = facekit::distance::within(
            &emb,
            &emb,
            dim,
            t,
            facekit::distance::Metric::Euclidean,
            true,
        );
        let (mut same, mut diff, mut bg) = (0usize, 0usize, 0usize);
        let mut with_false = 0usize;
        for (i, nbs) in graph.iter().enumerate() {
            let mut false_link = false;
            for nb in nbs {
                let j = nb.index as usize;
                if truth[i] == truth[j] {
                    same += (j > i) as usize;
                } else {
                    false_link = true;
                    if central[i] && central[j] {
                        diff += (j > i) as usize;
                    } else {
                        bg += (j > i) as usize;
                    }
                }
            }
            with_false += false_link as usize;
        }
        println!(
            "  t={t:.2}: {same:>5} same ({:.1} % of {true_pairs} true pairs), {diff:>5} different \
             ({:.3} % of different-identity central pairs), {bg:>5} with a background face; \
             {with_false} faces with a false link",
            100.0 * same as f64 / true_pairs.max(1.0),
            {
                let c = central.iter().filter(|c| **c).count() as f64;
                let different = c * (c - 1.0) / 2.0 - true_pairs;
                100.0 * diff as f64 / different.max(1.0)
            }
        );
    }

    // Threshold sweep.
    println!();
    println!(
        "Chinese Whispers threshold sweep (min size {})",
        base.min_size
    );
    header();
    for t in [0.40f32, 0.45, 0.50, 0.55, 0.60, 0.65] {
        let (row, _) = run(
            format!("chinese-whispers t={t:.2}"),
            &emb,
            dim,
            &photo,
            &widths,
            &truth,
            &ClusterConfig {
                threshold: t,
                ..base.clone()
            },
        )?;
        print_row(&row);
    }
    println!("DBSCAN threshold sweep (min size {})", base.min_size);
    for t in [0.45f32, 0.50, 0.55, 0.60] {
        let (row, _) = run(
            format!("dbscan t={t:.2}"),
            &emb,
            dim,
            &photo,
            &widths,
            &truth,
            &ClusterConfig {
                algorithm: Algorithm::Dbscan,
                threshold: t,
                ..base.clone()
            },
        )?;
        print_row(&row);
    }

    // Variants that are not library defaults, to show what would reach the target: dlib's own
    // clustering threshold (face_clustering.py uses 0.5), and small faces (background people,
    // blurry partial faces whose embeddings link to everyone) left unknown before clustering.
    println!();
    println!("Chinese Whispers by threshold and smallest clustered face width (--min-face)");
    header();
    for t in [0.45f32, 0.50, 0.55, 0.60] {
        for min_px in [0.0f32, 50.0, 60.0, 70.0] {
            let (mut row, _) = run(
                String::new(),
                &emb,
                dim,
                &photo,
                &widths,
                &truth,
                &ClusterConfig {
                    threshold: t,
                    min_face: min_px,
                    ..base.clone()
                },
            )?;
            row.name = format!("t={t:.2} box >= {min_px:.0} px");
            print_row(&row);
        }
    }
    println!();

    // End-to-end cross-check of the album workflow `facekit cluster` runs.
    println!();
    if !workflow {
        println!("album workflow cross-check: skipped (--no-workflow)");
        return Ok(());
    }
    // The workflow runs on a copy of the library without people, so earlier runs' people (the
    // library remembers them) cannot seed this album: it is clustered from scratch.
    cache.flush()?;
    let tmp = tempfile::tempdir()?;
    let lib_copy = tmp.path().join("library.db");
    for suffix in ["", "-wal"] {
        let from = PathBuf::from(format!("{}{suffix}", lib_path.display()));
        if from.exists() {
            std::fs::copy(&from, format!("{}{suffix}", lib_copy.display()))?;
        }
    }
    let copy = Library::open_with(&lib_copy, None)?;
    for p in copy.people()? {
        copy.remove_person(&format!("#{}", p.id))?;
    }
    // The album's files in album order: photo `i` of the run is album image `i`.
    let paths: Vec<PathBuf> = album.iter().map(|it| root.join(&it.rel)).collect();
    let config = AlbumConfig {
        cluster: base.clone(),
        ..Default::default()
    };
    let start = Instant::now();
    let report = facekit::album::run(&paths, &copy, &pipeline, &config, &())?;
    let run_seconds = start.elapsed().as_secs_f64();
    if !report.failed.is_empty() {
        bail!(
            "album workflow: {} photo(s) failed, first: {}",
            report.failed.len(),
            report.failed[0].error
        );
    }
    let mut run_labels: Vec<Option<usize>> = vec![None; truth.len()];
    let mut seen = vec![false; truth.len()];
    for f in &report.album.faces {
        let row = *row_of.get(&(f.photo, f.index)).with_context(|| {
            format!(
                "{} face {}: not a face the library saw",
                paths[f.photo].display(),
                f.index
            )
        })?;
        seen[row] = true;
        run_labels[row] = f.person.map(|p| p as usize);
    }
    let missing = seen.iter().filter(|s| !**s).count();
    let run_row = Row {
        name: "album::run (workflow)".into(),
        clusters: report.album.people.len(),
        unknown: run_labels.iter().filter(|l| l.is_none()).count(),
        pairwise: pairwise(&run_labels, &truth),
        bcubed: bcubed(&run_labels, &truth),
        seconds: run_seconds,
    };
    println!(
        "album workflow cross-check: `facekit::album::run` (what `facekit cluster` runs) on the \
         album's {} files (time = the whole call: library look-ups, clustering, recording people)",
        album.len()
    );
    header();
    print_row(&Row {
        name: "library chinese-whispers".into(),
        ..cw
    });
    print_row(&run_row);
    // album::cluster's leftover pass joins faces the clustering left unknown to a person
    // within the threshold (so that clustering the album again changes nothing): those are the
    // expected differences; the faces both put in clusters must be grouped the same.
    let lib = &cw_clustering.labels;
    let joined = lib
        .iter()
        .zip(&run_labels)
        .filter(|(a, b)| a.is_none() && b.is_some())
        .count();
    let both: Vec<usize> = (0..lib.len())
        .filter(|&i| lib[i].is_some() && run_labels[i].is_some())
        .collect();
    let pick = |l: &[Option<usize>]| both.iter().map(|&i| l[i]).collect::<Vec<_>>();
    let dropped = lib
        .iter()
        .zip(&run_labels)
        .filter(|(a, b)| a.is_some() && b.is_none())
        .count();
    println!(
        "workflow vs library: {}; {joined} face(s) left unknown by cluster_faces joined a person \
         (album::cluster's leftover pass), {dropped} clustered face(s) left unknown; the {} \
         face(s) both cluster are grouped {} ({missing} face(s) missing from the run)",
        if same_partition(lib, &run_labels) {
            "identical partition"
        } else {
            "partitions differ"
        },
        both.len(),
        if same_partition(&pick(lib), &pick(&run_labels)) {
            "identically"
        } else {
            "DIFFERENTLY"
        },
    );
    Ok(())
}

/// True when `a` and `b` put the same faces together (labels may differ by any renaming;
/// unknown faces must be unknown in both).
fn same_partition(a: &[Option<usize>], b: &[Option<usize>]) -> bool {
    let (mut ab, mut ba) = (HashMap::new(), HashMap::new());
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (None, None) => true,
            (Some(x), Some(y)) => {
                *ab.entry(*x).or_insert(*y) == *y && *ba.entry(*y).or_insert(*x) == *x
            }
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Prf, p: f64, r: f64) {
        assert!((a.p - p).abs() < 1e-12 && (a.r - r).abs() < 1e-12, "{a:?}");
    }

    #[test]
    fn perfect_and_hand_computed() {
        let truth = [0, 0, 1, 1, 2];
        // Perfect (the singleton left unknown is still perfect).
        let perfect = [Some(5), Some(5), Some(1), Some(1), None];
        close(bcubed(&perfect, &truth), 1.0, 1.0);
        close(pairwise(&perfect, &truth), 1.0, 1.0);
        // {0,1,2} {3} {4}: BCubed P = (2/3 + 2/3 + 1/3 + 1 + 1) / 5, R = (1 + 1 + 1/2 + 1/2 + 1) / 5.
        let pred = [Some(0), Some(0), Some(0), None, None];
        close(bcubed(&pred, &truth), (11.0 / 3.0) / 5.0, 4.0 / 5.0);
        // Pairs together: 3, truly together: 2, both: 1.
        close(pairwise(&pred, &truth), 1.0 / 3.0, 1.0 / 2.0);
        // Everything unknown: precision 1; BCubed recall = (1/2 * 4 + 1) / 5.
        let none = [None; 5];
        close(bcubed(&none, &truth), 1.0, 3.0 / 5.0);
        close(pairwise(&none, &truth), 1.0, 0.0);
        assert_eq!(pairwise(&none, &truth).f1, 0.0);
    }
}
