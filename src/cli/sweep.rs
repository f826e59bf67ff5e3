//! `facekit threshold-sweep`: accuracy, ROC, EER and TAR@FAR over a labeled folder or a pairs
//! file, with the LFW k-fold protocol, to choose a verify threshold from data.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use facekit::distance::Metric;
use facekit::io::LoadOptions;
use facekit::metrics::{self, KFold, Scored, Sweep, ThresholdRow};
use facekit::pairs::{self, Pair};
use facekit::pipeline::{select_face, FacePolicy};
use serde::Serialize;

use super::output::{display_path, outln};
use super::runner::{exit_status, progress, run_ordered, thread_pool};
use super::CommonArgs;

/// Which face of an image stands for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FaceSelect {
    /// The face nearest the image centre (LFW's subject is centred).
    Center,
    /// The largest face.
    Largest,
}

impl From<FaceSelect> for FacePolicy {
    fn from(f: FaceSelect) -> Self {
        match f {
            FaceSelect::Center => FacePolicy::Center,
            FaceSelect::Largest => FacePolicy::Largest,
        }
    }
}

/// Arguments of `facekit threshold-sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Labeled folder: one subfolder per identity, or files named by identity plus digits
    /// (alice1.jpg, alice2.jpg, bob1.jpg). With --pairs, the folder the pair paths are under.
    #[arg(value_name = "DATA")]
    data: PathBuf,
    /// Pairs file: LFW pairs.txt (header `10 300`) or TSV `a<TAB>b<TAB>same|different`, paths
    /// relative to DATA.
    #[arg(long, value_name = "FILE")]
    pairs: Option<PathBuf>,
    /// k-fold protocol: choose the threshold on k-1 folds, measure on the held-out one
    /// (default: pairs.txt's own folds, else none).
    #[arg(long, value_name = "K", value_parser = super::parse::at_least_one)]
    folds: Option<usize>,
    /// Distance between embeddings.
    #[arg(long, default_value_t = Metric::Euclidean)]
    metric: Metric,
    /// Thresholds to tabulate, start:stop:step (default: about 40 round steps spanning the
    /// observed distances).
    #[arg(long, value_name = "START:STOP:STEP")]
    range: Option<String>,
    /// For a labeled folder, at most this many pairs (a seeded sample, up to half of them same).
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = super::parse::at_least_one)]
    max_pairs: usize,
    /// Seed for pair sampling and fold assignment.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Which face of each image is compared.
    #[arg(long, value_enum, default_value_t = FaceSelect::Center)]
    face_select: FaceSelect,
    /// Print one JSON object (schema in the README) instead of text.
    #[arg(long)]
    json: bool,
    /// Write the ROC curve and distance histograms to FILE (.png or .svg).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Replace the plot file if it exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    cache: super::LibraryArgs,
    #[command(flatten)]
    faces: super::FaceSizeArgs,
    #[command(flatten)]
    embedding: super::EmbeddingArgs,
    #[command(flatten)]
    common: CommonArgs,
}

/// The pairs to score, as indices into the image list.
struct Protocol {
    kind: &'static str,
    images: Vec<PathBuf>,
    pairs: Vec<(usize, usize, bool)>,
    folds: Option<Vec<usize>>,
    k: usize,
    sampled_from: Option<(u64, u64)>,
    /// Entries of a labeled folder that could not be used (each named on stderr, counted as
    /// failed images).
    unusable: Vec<facekit::Error>,
}

/// Distinct images, pairs as indices into them, and each pair's fold.
type IndexedPairs = (Vec<PathBuf>, Vec<(usize, usize, bool)>, Vec<Option<usize>>);

fn index_pairs(list: Vec<Pair>) -> IndexedPairs {
    let mut index: HashMap<PathBuf, usize> = HashMap::new();
    let mut images = Vec::new();
    let mut id = |p: PathBuf| {
        *index.entry(p.clone()).or_insert_with(|| {
            images.push(p);
            images.len() - 1
        })
    };
    let mut pairs = Vec::new();
    let mut folds = Vec::new();
    for p in list {
        pairs.push((id(p.a), id(p.b), p.same));
        folds.push(p.fold);
    }
    (images, pairs, folds)
}

fn build_protocol(args: &SweepArgs) -> anyhow::Result<Protocol> {
    if let Some(file) = &args.pairs {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("{}: cannot read pairs file", file.display()))?;
        if pairs::looks_like_lfw(&text) {
            let lfw = pairs::parse_lfw_pairs(&text, &args.data, file)?;
            let (images, list, folds) = index_pairs(lfw.pairs);
            let k = args.folds.unwrap_or(lfw.folds);
            let folds = if k == lfw.folds {
                Some(folds.into_iter().map(|f| f.unwrap_or(0)).collect())
            } else {
                seeded_folds(list.len(), k, args.seed)
            };
            return Ok(Protocol {
                kind: "lfw-pairs",
                images,
                pairs: list,
                folds,
                k,
                sampled_from: None,
                unusable: Vec::new(),
            });
        }
        let list = pairs::parse_tsv_pairs(&text, &args.data, file)?;
        let (images, list, _) = index_pairs(list);
        let k = args.folds.unwrap_or(1);
        return Ok(Protocol {
            kind: "tsv-pairs",
            images,
            folds: seeded_folds(list.len(), k, args.seed),
            pairs: list,
            k,
            sampled_from: None,
            unusable: Vec::new(),
        });
    }
    if !args.data.is_dir() {
        bail!(
            "{}: not a folder (give a labeled folder, or --pairs FILE)",
            args.data.display()
        );
    }
    let mut images = Vec::new();
    let mut unusable = Vec::new();
    for item in facekit::io::collect_inputs(std::slice::from_ref(&args.data)) {
        match item {
            Ok(p) => images.push(p),
            Err(e) => unusable.push(e),
        }
    }
    images.sort();
    let labels: Vec<String> = images
        .iter()
        .map(|p| pairs::label_of(&args.data, p))
        .collect();
    let drawn = pairs::labeled_pairs(&labels, args.max_pairs, args.seed);
    let k = args.folds.unwrap_or(1);
    Ok(Protocol {
        kind: "labeled-folder",
        images,
        folds: seeded_folds(drawn.pairs.len(), k, args.seed),
        pairs: drawn.pairs,
        k,
        sampled_from: drawn
            .sampled
            .then_some((drawn.same_total, drawn.different_total)),
        unusable,
    })
}

/// Pairs spread over `k` folds in a seeded random order (none for k <= 1).
fn seeded_folds(n: usize, k: usize, seed: u64) -> Option<Vec<usize>> {
    if k <= 1 {
        return None;
    }
    let mut order: Vec<usize> = (0..n).collect();
    facekit::rng::Rng::new(seed ^ 0x5eed_f01d).shuffle(&mut order);
    let mut fold = vec![0; n];
    for (rank, &i) in order.iter().enumerate() {
        fold[i] = rank % k;
    }
    Some(fold)
}

/// The embedding that stands for one image, and whether it is the central-crop fallback.
type Chosen = Result<(Vec<f32>, bool, bool), facekit::Error>;

#[derive(Serialize)]
struct ImageCounts {
    total: usize,
    no_face: usize,
    failed: usize,
    cached: usize,
}

#[derive(Serialize)]
struct PairCounts {
    same: usize,
    different: usize,
    skipped: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    sampled_from: Option<SampledFrom>,
}

#[derive(Serialize)]
struct SampledFrom {
    same: u64,
    different: u64,
}

#[derive(Serialize)]
struct Best {
    threshold: f32,
    accuracy: f64,
}

/// The `--json` report.
#[derive(Serialize)]
struct Report {
    model: String,
    metric: String,
    protocol: &'static str,
    face_select: &'static str,
    images: ImageCounts,
    pairs: PairCounts,
    best: Best,
    roc_auc: f64,
    eer: Option<metrics::Eer>,
    tar_at_far: Vec<metrics::TarAtFar>,
    k_fold: Option<KFold>,
    thresholds: Vec<ThresholdRow>,
}

/// Runs `facekit threshold-sweep`.
pub fn run(args: SweepArgs) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    // Checked before any work: the format (from the name) and no silent replacement.
    let plot = match &args.plot {
        Some(p) => Some((p, PlotFormat::of(p)?)),
        None => None,
    };
    if let Some((p, _)) = plot {
        if p.exists() && !args.force {
            bail!(
                "{}: already exists (use --force to replace it)",
                p.display()
            );
        }
    }
    let protocol = build_protocol(&args)?;
    if protocol.pairs.is_empty() {
        bail!(
            "{}: no pairs to compare (need at least two images)",
            args.data.display()
        );
    }
    let pipeline = args.embedding.pipeline(&args.common, args.faces.min_face)?;
    let cache = args.cache.open()?;
    let opts = LoadOptions {
        max_pixels: args.common.max_pixels,
        ..Default::default()
    };
    let policy = FacePolicy::from(args.face_select);
    let pool = thread_pool(args.common.threads)?;
    let pb = progress(protocol.images.len(), "images");
    let mut chosen: Vec<Option<Vec<f32>>> = vec![None; protocol.images.len()];
    let mut counts = ImageCounts {
        total: protocol.images.len() + protocol.unusable.len(),
        no_face: 0,
        failed: protocol.unusable.len(),
        cached: 0,
    };
    for e in &protocol.unusable {
        eprintln!("facekit: {e}");
    }
    let items: Vec<super::runner::Input> = protocol.images.iter().cloned().map(Ok).collect();
    let job = |path: &std::path::Path| -> Chosen {
        let (faces, hit) =
            facekit::nn::serial(|| cache.faces_of_file(&pipeline, path, &opts, true))?;
        let boxes = faces.faces.iter().map(|f| &f.bbox);
        Ok(
            match select_face(boxes, policy, faces.width, faces.height) {
                Some(i) => (faces.faces[i].embedding.clone(), false, hit),
                None => (faces.central.clone().unwrap_or_default(), true, hit),
            },
        )
    };
    run_ordered(&pool, &items, &pb, job, |i, result| match result {
        Ok((emb, fallback, hit)) => {
            counts.no_face += usize::from(fallback);
            counts.cached += usize::from(hit);
            if fallback {
                eprintln!(
                    "facekit: {}: no face found; using the central crop",
                    display_path(&protocol.images[i])
                );
            }
            chosen[i] = Some(emb);
        }
        Err(e) => {
            counts.failed += 1;
            eprintln!("facekit: {e}");
        }
    });

    // Score the pairs whose images both have an embedding.
    let mut scored = Vec::with_capacity(protocol.pairs.len());
    let mut folds = Vec::with_capacity(protocol.pairs.len());
    let mut skipped = 0;
    for (n, &(a, b, same)) in protocol.pairs.iter().enumerate() {
        match (&chosen[a], &chosen[b]) {
            (Some(ea), Some(eb)) => {
                scored.push(Scored {
                    distance: args.metric.distance(ea, eb),
                    same,
                });
                if let Some(f) = &protocol.folds {
                    folds.push(f[n]);
                }
            }
            _ => skipped += 1,
        }
    }
    if scored.is_empty() {
        bail!("no pair could be scored: every pair has an unreadable image");
    }
    let sweep = Sweep::new(&scored);
    let thresholds = match &args.range {
        Some(r) => metrics::parse_range(r).map_err(anyhow::Error::msg)?,
        None => {
            let (lo, hi) = sweep.range().unwrap_or((0.0, 1.0));
            metrics::default_range(lo, hi, 40)
        }
    };
    let roc = sweep.roc();
    let (best_t, best_acc) = sweep.best_threshold();
    let k_fold = (protocol.folds.is_some() && protocol.k > 1)
        .then(|| metrics::k_fold(&scored, &folds, protocol.k));
    let report = Report {
        model: pipeline.model_id(),
        metric: args.metric.to_string(),
        protocol: protocol.kind,
        face_select: match args.face_select {
            FaceSelect::Center => "center",
            FaceSelect::Largest => "largest",
        },
        images: counts,
        pairs: PairCounts {
            same: sweep.same_count(),
            different: sweep.different_count(),
            skipped,
            sampled_from: protocol
                .sampled_from
                .map(|(same, different)| SampledFrom { same, different }),
        },
        best: Best {
            threshold: best_t,
            accuracy: best_acc,
        },
        roc_auc: metrics::auc(&roc),
        eer: metrics::eer(&roc),
        tar_at_far: [1e-3, 1e-2]
            .iter()
            .map(|&far| metrics::tar_at_far(&roc, far))
            .collect(),
        k_fold,
        thresholds: thresholds.iter().map(|&t| sweep.at(t)).collect(),
    };
    if let Some((path, format)) = plot {
        write_plot(path, format, &report, &sweep, &scored, &roc, args.force)?;
    }
    if args.json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        print_text(&report, &args, cache.file(), start.elapsed().as_secs_f64());
    }
    Ok(exit_status(report.images.failed))
}

/// The file formats `--plot` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlotFormat {
    Png,
    Svg,
}

impl PlotFormat {
    /// The format a file name asks for.
    fn of(path: &Path) -> anyhow::Result<Self> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("png") => Ok(PlotFormat::Png),
            Some("svg") => Ok(PlotFormat::Svg),
            _ => bail!("{}: --plot needs a .png or .svg file name", path.display()),
        }
    }
}

fn write_plot(
    path: &Path,
    format: PlotFormat,
    report: &Report,
    sweep: &Sweep,
    scored: &[Scored],
    roc: &[metrics::RocPoint],
    force: bool,
) -> anyhow::Result<()> {
    let threshold = report
        .k_fold
        .as_ref()
        .map_or(report.best.threshold, |k| k.threshold_mean);
    let same: Vec<f32> = scored
        .iter()
        .filter(|p| p.same)
        .map(|p| p.distance)
        .collect();
    let different: Vec<f32> = scored
        .iter()
        .filter(|p| !p.same)
        .map(|p| p.distance)
        .collect();
    let curve: Vec<(f64, f64)> = roc.iter().map(|p| (p.fpr, p.tpr)).collect();
    let at = sweep.at(threshold);
    let title = format!(
        "{} - {} pairs - {}",
        report.protocol,
        report.pairs.same + report.pairs.different,
        report.model
    );
    let metric = format!("{} distance", report.metric);
    let chart = super::plot::SweepPlot {
        title: &title,
        metric: &metric,
        roc: &curve,
        auc: report.roc_auc,
        same: &same,
        different: &different,
        threshold,
        operating_point: (at.fpr, at.tpr),
    };
    let bytes = match format {
        PlotFormat::Svg => super::plot::render_svg(&chart).into_bytes(),
        PlotFormat::Png => {
            let mut bytes = Vec::new();
            super::plot::render_png(&chart)
                .write_to(
                    &mut std::io::Cursor::new(&mut bytes),
                    image::ImageFormat::Png,
                )
                .context("encoding the plot")?;
            bytes
        }
    };
    facekit::io::write_file_atomic(path, &bytes, force)?;
    Ok(())
}

fn pct(x: f64) -> String {
    format!("{:.2} %", 100.0 * x)
}

fn print_text(r: &Report, args: &SweepArgs, cache: Option<&Path>, seconds: f64) {
    outln!(
        "{:>9}  {:>8}  {:>6}  {:>6}  {:>20}  {:>20}",
        "threshold",
        "accuracy",
        "TPR",
        "FPR",
        "same P / R / F1",
        "different P / R / F1"
    );
    for row in &r.thresholds {
        outln!(
            "{:>9.4}  {:>8.4}  {:>6.4}  {:>6.4}  {:>6.4} {:>6.4} {:>6.4}  {:>6.4} {:>6.4} {:>6.4}",
            row.threshold,
            row.accuracy,
            row.tpr,
            row.fpr,
            row.same.precision,
            row.same.recall,
            row.same.f1,
            row.different.precision,
            row.different.recall,
            row.different.f1
        );
    }
    outln!();
    outln!("model          {} ({})", r.model, r.metric);
    outln!(
        "images         {} ({} without a detected face: central crop used; {} unreadable)",
        r.images.total,
        r.images.no_face,
        r.images.failed
    );
    let sampled = r
        .pairs
        .sampled_from
        .as_ref()
        .map(|s| {
            format!(
                ", a seeded sample (--seed {}) of {} same and {} different",
                args.seed, s.same, s.different
            )
        })
        .unwrap_or_default();
    outln!(
        "pairs          {} same, {} different{}{}",
        r.pairs.same,
        r.pairs.different,
        sampled,
        if r.pairs.skipped > 0 {
            format!(" ({} skipped: unreadable image)", r.pairs.skipped)
        } else {
            String::new()
        }
    );
    outln!(
        "best           threshold {:.4} -> accuracy {}",
        r.best.threshold,
        pct(r.best.accuracy)
    );
    outln!("ROC AUC        {:.5}", r.roc_auc);
    if let Some(e) = &r.eer {
        outln!(
            "EER            {} at threshold {:.4}",
            pct(e.rate),
            e.threshold
        );
    }
    for t in &r.tar_at_far {
        outln!(
            "TAR @ FAR {:<5} {} (threshold {:.4})",
            t.far,
            pct(t.tar),
            t.threshold
        );
    }
    if let Some(kf) = &r.k_fold {
        let (lo, hi) = kf.folds.iter().fold((f32::MAX, f32::MIN), |(lo, hi), f| {
            (lo.min(f.threshold), hi.max(f.threshold))
        });
        outln!(
            "{}-fold         {} +- {} (fold thresholds {:.4}-{:.4}, mean {:.4})",
            kf.k,
            pct(kf.accuracy_mean),
            pct(kf.accuracy_std),
            lo,
            hi,
            kf.threshold_mean
        );
    }
    match cache {
        Some(p) => outln!(
            "library        {} of {} images from {}",
            r.images.cached,
            r.images.total,
            p.display()
        ),
        None => outln!("library        off"),
    }
    outln!("wall time      {seconds:.1} s");
}
