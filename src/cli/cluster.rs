//! `facekit cluster ALBUM --out OUT`: one folder per person, never losing or overwriting a
//! photo; `facekit cluster --undo OUT` puts moved photos back.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use facekit::album::{self, AlbumConfig, AlbumRun};
use facekit::cluster::{self, Algorithm, ClusterConfig};
use facekit::distance::Metric;
use facekit::io::{self, LoadOptions};
use facekit::organize::{self, Mode, Organizer};
use serde::Serialize;

use super::output::{display_path, note, outln};
use super::runner::{exit_status, thread_pool, Bars};
use super::{CommonArgs, EXIT_FAILURE};

/// How photos get into the output folders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Copy (the album is untouched).
    Copy,
    /// Hard links on the same filesystem, else symlinks (the album is untouched).
    Link,
    /// Move, with a manifest in OUT; `--undo OUT` puts every photo back.
    Move,
}

/// Clustering algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlgorithmArg {
    /// Chinese Whispers on the graph of faces closer than the threshold (dlib's method).
    ChineseWhispers,
    /// DBSCAN: eps = threshold, min points = --min-size.
    Dbscan,
    /// k-means with --k clusters.
    Kmeans,
}

/// Arguments of `facekit cluster`.
#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// The album: image files and folders (walked recursively); several may be given.
    #[arg(value_name = "ALBUM", required_unless_present = "undo")]
    album: Vec<PathBuf>,
    /// Output folder: one folder per person (the name given with `facekit people rename`, else
    /// person_0007 by the library's stable id), OUT/unknown, OUT/no_faces, clusters.json,
    /// index.html.
    #[arg(long, value_name = "OUT", required_unless_present = "undo")]
    out: Option<PathBuf>,
    /// copy (default), link, or move (undoable with --undo OUT).
    #[arg(long, value_enum, default_value_t = ModeArg::Copy)]
    mode: ModeArg,
    /// Clustering algorithm.
    #[arg(long, value_enum, default_value_t = AlgorithmArg::ChineseWhispers)]
    algorithm: AlgorithmArg,
    /// Faces closer than this are linked (default 0.50: stricter than verify's 0.60, see the
    /// README; required with --model or --metric cosine).
    #[arg(long, value_name = "T", value_parser = super::parse::non_negative_f32)]
    threshold: Option<f32>,
    /// Clusters with fewer faces go to OUT/unknown.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = super::parse::at_least_one)]
    min_size: usize,
    /// Faces narrower than this (pixels) are not clustered and go to OUT/unknown.
    #[arg(long, value_name = "PX", default_value_t = cluster::DEFAULT_MIN_FACE, value_parser = super::parse::non_negative_size)]
    min_face: f32,
    /// Number of clusters (k-means only).
    #[arg(long, value_name = "K", value_parser = super::parse::at_least_one)]
    k: Option<usize>,
    /// Distance between embeddings.
    #[arg(long, default_value_t = Metric::Euclidean)]
    metric: Metric,
    /// Seed for the algorithms' random choices.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Forget how earlier runs clustered this album's faces and cluster them again (enrolled
    /// and confirmed faces stay with their people and seed the clusters).
    #[arg(long)]
    recluster: bool,
    /// Use OUT even if it is not empty (nothing in it is ever deleted or replaced).
    #[arg(long)]
    force: bool,
    /// Put back every photo a `--mode move` run moved into OUT.
    #[arg(long, value_name = "OUT", conflicts_with_all = ["album", "out"])]
    undo: Option<PathBuf>,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cache: super::LibraryArgs,
    #[command(flatten)]
    embedding: super::EmbeddingArgs,
    #[command(flatten)]
    common: CommonArgs,
}

/// One face in `clusters.json`.
#[derive(Serialize)]
struct FaceEntry {
    #[serde(serialize_with = "io::serialize_path")]
    path: PathBuf,
    face: usize,
    #[serde(rename = "box")]
    bbox: [f32; 4],
    /// The library's person id.
    person: Option<i64>,
    folder: Option<String>,
    source: Option<&'static str>,
}

#[derive(Serialize)]
struct Representative {
    #[serde(serialize_with = "io::serialize_path")]
    path: PathBuf,
    face: usize,
}

/// One person in `clusters.json` and the summary.
#[derive(Serialize)]
struct ClusterEntry {
    /// The library's person id (stable across runs).
    id: i64,
    name: Option<String>,
    folder: String,
    /// Faces this run assigned (new photos, or all with --recluster).
    new_faces: usize,
    size: usize,
    photos: usize,
    representative: Representative,
}

#[derive(Serialize)]
struct FailedEntry {
    #[serde(serialize_with = "io::serialize_path")]
    path: PathBuf,
    error: String,
}

/// `OUT/clusters.json`.
#[derive(Serialize)]
struct ClustersFile {
    faces: Vec<FaceEntry>,
    clusters: Vec<ClusterEntry>,
    #[serde(serialize_with = "io::serialize_paths")]
    no_faces: Vec<PathBuf>,
    failed: Vec<FailedEntry>,
}

/// The `--json` summary.
#[derive(Serialize)]
struct Summary<'a> {
    out: String,
    mode: &'static str,
    algorithm: &'static str,
    threshold: f32,
    images: usize,
    /// Photos detected and embedded by this run (the rest came from the library).
    analysed: usize,
    faces: usize,
    people: usize,
    unknown_faces: usize,
    no_faces: usize,
    failed: usize,
    clusters: &'a [ClusterEntry],
}

/// Runs `facekit cluster`.
pub fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    if let Some(out) = &args.undo {
        return run_undo(out, args.json);
    }
    let (albums, Some(out)) = (args.album.clone(), args.out.clone()) else {
        bail!("give ALBUM and --out OUT (or --undo OUT)");
    };
    if albums.is_empty() {
        bail!("give ALBUM and --out OUT (or --undo OUT)");
    }
    if args.algorithm == AlgorithmArg::Kmeans && args.k.is_none() {
        bail!("--algorithm kmeans needs --k (the number of people)");
    }
    // Held until the run ends: a second run into OUT refuses.
    let _lock = check_out(&albums, &out, args.force)?;
    let pipeline = args.embedding.pipeline(&args.common, None)?;
    let config = album_config(&args, &out)?;
    let cache = args.cache.open()?;
    let pool = thread_pool(args.common.threads)?;
    let bars = Bars::default();
    // Everything under ALBUM except OUT itself (OUT may live inside the album).
    let mut report = pool.install(|| album::run(&albums, &cache, &pipeline, &config, &bars))?;
    // The contact sheet, from the photos where they are now (before any move).
    let sheet = pool.install(|| album::sheet::contact_sheet(&report, &config.load));
    let mode = match args.mode {
        ModeArg::Copy => Mode::Copy,
        ModeArg::Link => Mode::Link,
        ModeArg::Move => Mode::Move,
    };
    let mut organizer = Organizer::new(&out, mode)?;
    for dir in &report.skipped_outputs {
        note!(
            "facekit: {}: an earlier cluster output inside the album; its photos are left out",
            display_path(dir)
        );
    }
    report.place(&mut organizer, &bars);

    let file = clusters_file(&report);
    let written_json =
        organizer.write_report("clusters", ".json", &serde_json::to_vec_pretty(&file)?)?;
    let written_html = organizer.write_report("index", ".html", sheet.as_bytes())?;
    let summary = Summary {
        out: display_path(&out),
        mode: match mode {
            Mode::Copy => "copy",
            Mode::Link => "link",
            Mode::Move => "move",
        },
        algorithm: match args.algorithm {
            AlgorithmArg::ChineseWhispers => "chinese-whispers",
            AlgorithmArg::Dbscan => "dbscan",
            AlgorithmArg::Kmeans => "kmeans",
        },
        threshold: config.cluster.threshold,
        images: report.inputs.len(),
        analysed: report.analysed,
        faces: report.album.faces.len(),
        people: file.clusters.len(),
        unknown_faces: report.album.unknown(),
        no_faces: file.no_faces.len(),
        failed: file.failed.len(),
        clusters: &file.clusters,
    };
    if args.json {
        outln!("{}", serde_json::to_string(&summary)?);
    } else {
        print_summary(&summary, &written_json, &written_html);
    }
    Ok(exit_status(report.failed.len()))
}

/// The album settings the arguments ask for; the linking threshold is required with a trained
/// model or the cosine metric.
fn album_config(args: &ClusterArgs, out: &Path) -> anyhow::Result<AlbumConfig> {
    let threshold = match (args.threshold, args.metric) {
        (Some(t), _) => t,
        (None, Metric::Euclidean) if args.embedding.model.is_none() => cluster::DEFAULT_THRESHOLD,
        (None, Metric::Euclidean) => bail!(
            "with --model, pass --threshold (clustering needs a stricter one than the model's \
             verify threshold; measure it with threshold-sweep)"
        ),
        (None, Metric::Cosine) => bail!("--metric cosine needs --threshold"),
    };
    Ok(AlbumConfig {
        cluster: ClusterConfig {
            algorithm: match args.algorithm {
                AlgorithmArg::ChineseWhispers => Algorithm::ChineseWhispers,
                AlgorithmArg::Dbscan => Algorithm::Dbscan,
                AlgorithmArg::Kmeans => Algorithm::KMeans,
            },
            threshold,
            min_size: args.min_size,
            min_face: args.min_face,
            k: args.k,
            metric: args.metric,
            seed: args.seed,
            ..Default::default()
        },
        recluster: args.recluster,
        load: LoadOptions {
            max_pixels: args.common.max_pixels,
            ..Default::default()
        },
        exclude: vec![out.to_path_buf()],
    })
}

/// `clusters.json`: the faces, the people, the photos without faces and what failed.
fn clusters_file(report: &AlbumRun) -> ClustersFile {
    let faces = report
        .album
        .faces
        .iter()
        .map(|f| FaceEntry {
            path: report.inputs[f.photo].clone(),
            face: f.index,
            bbox: f.bbox.to_array(),
            person: f.person,
            folder: f
                .person
                .and_then(|p| report.folder_of(p))
                .map(str::to_string),
            source: f.source.map(|s| s.as_str()),
        })
        .collect();
    let clusters = report
        .album
        .people
        .iter()
        .map(|p| {
            let r = &report.album.faces[p.representative];
            ClusterEntry {
                id: p.id,
                name: p.name.clone(),
                folder: p.folder.clone(),
                size: p.faces.len(),
                photos: p.photos,
                new_faces: p.new_faces,
                representative: Representative {
                    path: report.inputs[r.photo].clone(),
                    face: r.index,
                },
            }
        })
        .collect();
    ClustersFile {
        faces,
        clusters,
        no_faces: report
            .no_faces
            .iter()
            .map(|&i| report.inputs[i].clone())
            .collect(),
        failed: report
            .failed
            .iter()
            .map(|f| FailedEntry {
                path: f.path.clone(),
                error: f.error.to_string(),
            })
            .collect(),
    }
}

/// The text summary: one line per person, the totals, the files written.
fn print_summary(s: &Summary, written_json: &Path, written_html: &Path) {
    for c in s.clusters {
        outln!(
            "{}  {:>5} face(s) in {:>5} photo(s)",
            c.folder,
            c.size,
            c.photos
        );
    }
    outln!(
        "{} photo(s), {} face(s): {} people, {} unknown face(s), {} photo(s) without faces, {} failed",
        s.images,
        s.faces,
        s.people,
        s.unknown_faces,
        s.no_faces,
        s.failed
    );
    outln!(
        "wrote {} and {}",
        display_path(written_json),
        display_path(written_html)
    );
    if s.mode == "move" {
        outln!(
            "moved; to put every photo back: facekit cluster --undo {}",
            s.out
        );
    }
}

/// OUT must be empty (or absent) unless --force, and must not be the album itself. Returns
/// OUT's lock, held for the whole run (another run into OUT is refused).
fn check_out(albums: &[PathBuf], out: &Path, force: bool) -> anyhow::Result<organize::OutLock> {
    for album in albums {
        if let (Ok(a), Ok(o)) = (album.canonicalize(), out.canonicalize()) {
            if a == o {
                bail!("{}: OUT cannot be the album itself", out.display());
            }
        }
    }
    // User content: anything but the lock file of an earlier run.
    let has_content = || -> anyhow::Result<bool> {
        match std::fs::read_dir(out) {
            Ok(entries) => Ok(entries
                .filter_map(|e| e.ok())
                .any(|e| e.file_name() != organize::LOCK)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("{}: cannot use as OUT", out.display())),
        }
    };
    let not_empty = || {
        anyhow::anyhow!(
            "{}: not empty; choose a new folder, or pass --force to add to it (nothing in it is \
             deleted or replaced)",
            out.display()
        )
    };
    if !force && has_content()? {
        // A run still writing there is the better reason (the lock file exists: no new file).
        if out.join(organize::LOCK).exists() {
            drop(organize::lock_out(out)?);
        }
        return Err(not_empty());
    }
    let lock = organize::lock_out(out)?;
    // Filled by a run that ended between the check and the lock.
    if !force && has_content()? {
        return Err(not_empty());
    }
    Ok(lock)
}

fn run_undo(out: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let report = organize::undo(out)?;
    if json {
        outln!("{}", serde_json::to_string(&report)?);
    } else if report.nothing_to_undo {
        outln!(
            "nothing to undo: no move was recorded in {}",
            display_path(out)
        );
    } else {
        let temporaries = match report.temporaries_removed {
            0 => String::new(),
            n => format!(", {n} temporary file(s) of an interrupted run removed"),
        };
        outln!(
            "{} photo(s) moved back, {} were still in place, {} copies removed{temporaries}",
            report.restored,
            report.already_in_place,
            report.copies_removed
        );
    }
    for p in &report.problems {
        eprintln!("facekit: {p}");
    }
    Ok(if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    })
}
