//! `facekit threshold-sweep`: accuracy, ROC, EER and TAR@FAR over a labeled folder or a pairs
//! file, with the LFW k-fold protocol, to choose a verify threshold from data.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use facekit::distance::Metric;
use facekit::io::LoadOptions;
use facekit::metrics;
use facekit::pairs::LabelSource;
use facekit::pipeline::FacePolicy;
use facekit::sweep::{
    self, Data, HardPair, Identities, Identity, ImageOutcome, Layout, Protocol, ProtocolConfig,
    Report, SweepConfig,
};

use super::output::{display_path, note, outln};
use super::runner::{exit_status, progress, thread_pool};
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
    /// List this many hardest pairs of each kind: the closest different-person pairs and the
    /// farthest same-person pairs, judged at the chosen threshold.
    #[arg(long, value_name = "N", default_value_t = 5)]
    hardest: usize,
    /// Use a labeled folder with identity subfolders plus loose photos at the top level (each
    /// loose photo labeled by its file name without digits); refused otherwise.
    #[arg(long)]
    allow_mixed: bool,
    #[command(flatten)]
    cache: super::LibraryArgs,
    #[command(flatten)]
    faces: super::FaceSizeArgs,
    #[command(flatten)]
    embedding: super::EmbeddingArgs,
    #[command(flatten)]
    common: CommonArgs,
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
        facekit::io::check_output_file(p, args.force)?;
    }
    let config = SweepConfig {
        metric: args.metric,
        policy: FacePolicy::from(args.face_select),
        load: LoadOptions {
            max_pixels: args.common.max_pixels,
            ..Default::default()
        },
        thresholds: match &args.range {
            Some(r) => Some(metrics::parse_range(r).map_err(anyhow::Error::msg)?),
            None => None,
        },
        hardest: args.hardest,
    };
    let protocol = load_protocol(&args)?;
    let pipeline = args.embedding.pipeline(&args.common, args.faces.min_face)?;
    let library = args.cache.open()?;
    let pool = thread_pool(args.common.threads)?;
    let pb = progress(protocol.images.len(), "images");
    let embedded =
        pool.install(|| sweep::embed(&protocol, &library, &pipeline, &config, &|| pb.inc(1)));
    pb.finish_and_clear();
    for (path, outcome) in protocol.images.iter().zip(&embedded.outcomes) {
        match outcome {
            ImageOutcome::CentralCrop => note!(
                "facekit: {}: no face found; using the central crop",
                display_path(path)
            ),
            ImageOutcome::Failed(e) => super::output::report(e),
            _ => {}
        }
    }
    let report = sweep::measure(&protocol, &embedded, &config)?;
    if let Some((path, format)) = plot {
        write_plot(path, format, &report, args.force)?;
        note!("facekit: wrote {}", display_path(path));
    }
    if args.json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        print_text(
            &report,
            &args,
            library.file(),
            start.elapsed().as_secs_f64(),
        );
    }
    Ok(exit_status(report.images.failed))
}

/// Reads the protocol, names on stderr the identities a labeled folder implies and the
/// entries it cannot use, and refuses a mixed layout unless `--allow-mixed`.
fn load_protocol(args: &SweepArgs) -> anyhow::Result<Protocol> {
    let data = match &args.pairs {
        Some(file) => Data::PairsFile {
            file: file.clone(),
            root: args.data.clone(),
        },
        None if !args.data.is_dir() => bail!(
            "{}: not a folder (give a labeled folder, or --pairs FILE)",
            args.data.display()
        ),
        None => Data::Folder(args.data.clone()),
    };
    let config = ProtocolConfig {
        max_pairs: args.max_pairs,
        seed: args.seed,
        folds: args.folds,
    };
    let protocol = Protocol::load(&data, &config)?;
    if let Some(ids) = &protocol.identities {
        note!("facekit: {}", identities_note(ids));
        if ids.layout == Layout::Mixed {
            let what = format!(
                "{}: mixed layout: identity subfolders plus {} loose photo(s) at the top level, \
                 each labeled by its file name without digits",
                display_path(&args.data),
                ids.loose_photos()
            );
            if !args.allow_mixed {
                bail!("{what}; move the loose photos into identity subfolders (or out), or pass --allow-mixed to use them as labeled");
            }
            eprintln!("facekit: warning: {what} (--allow-mixed)");
        }
    }
    for e in &protocol.unusable {
        eprintln!("facekit: {e}");
    }
    if protocol.pairs.is_empty() {
        bail!(
            "{}: no pairs to compare (need at least two images)",
            args.data.display()
        );
    }
    Ok(protocol)
}

/// "inferred 3 identities from file names (...): obama (2 photos), obama_partial_face (1)".
fn identities_note(ids: &Identities) -> String {
    const SHOWN: usize = 12;
    let of = |from: LabelSource| -> Vec<&Identity> {
        ids.list.iter().filter(|i| i.from == from).collect()
    };
    let names = |of: &[&Identity]| -> String {
        let mut parts: Vec<String> = of
            .iter()
            .take(SHOWN)
            .enumerate()
            .map(|(k, i)| match (k, i.photos) {
                (0, 1) => format!("{} (1 photo)", i.name),
                (0, n) => format!("{} ({n} photos)", i.name),
                (_, n) => format!("{} ({n})", i.name),
            })
            .collect();
        if of.len() > SHOWN {
            parts.push(format!("... and {} more", of.len() - SHOWN));
        }
        parts.join(", ")
    };
    let count = |n: usize| format!("{n} {}", if n == 1 { "identity" } else { "identities" });
    let (sub, file) = (of(LabelSource::Subfolder), of(LabelSource::FileName));
    let mut note = match ids.layout {
        Layout::Mixed => format!(
            "inferred {}: {} from subfolders: {}; {} from {}: {}",
            count(ids.list.len()),
            sub.len(),
            names(&sub),
            file.len(),
            FROM_FILE_NAMES,
            names(&file)
        ),
        Layout::FileNames => format!(
            "inferred {} from {FROM_FILE_NAMES}: {}",
            count(file.len()),
            names(&file)
        ),
        _ => format!(
            "inferred {} from subfolders: {}",
            count(sub.len()),
            names(&sub)
        ),
    };
    let single = ids.list.iter().filter(|i| i.photos == 1).count();
    if single > 0 {
        note.push_str(&format!(
            " ({single} with a single photo, so in no same-person pair)"
        ));
    }
    note
}

const FROM_FILE_NAMES: &str = "file names (stem with digits stripped)";

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

/// Draws the ROC curve and the distance histograms with the operating threshold.
fn write_plot(path: &Path, format: PlotFormat, report: &Report, force: bool) -> anyhow::Result<()> {
    let threshold = report.threshold();
    let (same, different) = report.distances();
    let curve: Vec<(f64, f64)> = report.roc.iter().map(|p| (p.fpr, p.tpr)).collect();
    let title = format!(
        "{} - {} pairs - {}",
        report.protocol.name(),
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
        operating_point: report.operating_point(),
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

/// The text report: the threshold table, the summary, the hardest pairs.
fn print_text(r: &Report, args: &SweepArgs, cache: Option<&Path>, seconds: f64) {
    print_table(r);
    print_summary(r, args, cache, seconds);
    print_hardest(r);
}

/// The hardest pairs at the operating threshold, different then same.
fn print_hardest(r: &Report) {
    let h = &r.hardest;
    if h.different.is_empty() && h.same.is_empty() {
        return;
    }
    outln!();
    outln!(
        "hardest pairs at threshold {:.4} ({} false accept{}, {} false reject{}):",
        h.threshold,
        h.false_accepts,
        if h.false_accepts == 1 { "" } else { "s" },
        h.false_rejects,
        if h.false_rejects == 1 { "" } else { "s" }
    );
    let row = |kind: &str, p: &HardPair, error: &str| {
        outln!(
            "  {kind:<9}  {:.4}  {:<13}  {}  {}",
            p.distance,
            if p.error { error } else { "" },
            display_path(&p.a),
            display_path(&p.b)
        );
    };
    for p in &h.different {
        row("different", p, "FALSE ACCEPT");
    }
    for p in &h.same {
        row("same", p, "FALSE REJECT");
    }
}

/// The threshold table.
fn print_table(r: &Report) {
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
}

/// The summary: model, counts, best threshold, ROC AUC, EER, TAR at FAR, k-fold, library.
fn print_summary(r: &Report, args: &SweepArgs, cache: Option<&Path>, seconds: f64) {
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
