//! `facekit cluster ALBUM --out OUT`: one folder per person, never losing or overwriting a
//! photo; `facekit cluster --undo OUT` puts moved photos back.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use facekit::cluster::{self, Algorithm, ClusterConfig};
use facekit::distance::Metric;
use facekit::io::{self, LoadOptions};
use facekit::organize::{self, Mode, Organizer};
use facekit::BBox;
use rayon::prelude::*;
use serde::Serialize;

use super::output::{display_path, outln};
use super::runner::{collect_inputs, exit_status, progress, run_ordered, thread_pool};
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
struct ClustersFile<'a> {
    faces: &'a [FaceEntry],
    clusters: &'a [ClusterEntry],
    #[serde(serialize_with = "io::serialize_paths")]
    no_faces: &'a [PathBuf],
    failed: &'a [FailedEntry],
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

    // Inputs: everything under ALBUM except OUT itself (OUT may live inside the album).
    let out_abs = std::path::absolute(&out)?;
    let mut failed: Vec<FailedEntry> = Vec::new();
    let (inputs, _) = collect_inputs(&albums, |e| {
        eprintln!("facekit: {e}");
        failed.push(FailedEntry {
            path: e.path().map(Path::to_path_buf).unwrap_or_default(),
            error: e.to_string(),
        });
    });
    let inputs: Vec<PathBuf> = inputs
        .into_iter()
        .filter(|p| std::path::absolute(p).map_or(true, |a| !a.starts_with(&out_abs)))
        .collect();

    let pipeline = args.embedding.pipeline(&args.common, None)?;
    let threshold = match (args.threshold, args.metric) {
        (Some(t), _) => t,
        (None, Metric::Euclidean) if args.embedding.model.is_none() => cluster::DEFAULT_THRESHOLD,
        (None, Metric::Euclidean) => bail!(
            "with --model, pass --threshold (clustering needs a stricter one than the model's \
             verify threshold; measure it with threshold-sweep)"
        ),
        (None, Metric::Cosine) => bail!("--metric cosine needs --threshold"),
    };
    let cache = args.cache.open()?;
    let opts = LoadOptions {
        max_pixels: args.common.max_pixels,
        ..Default::default()
    };
    let pool = thread_pool(args.common.threads)?;

    // 1. Every face of every photo (cached by content).
    let pb = progress(inputs.len(), "photos");
    let mut photos: Vec<Option<std::sync::Arc<facekit::library::ImageFaces>>> =
        vec![None; inputs.len()];
    let items: Vec<super::runner::Input> = inputs.iter().cloned().map(Ok).collect();
    run_ordered(
        &pool,
        &items,
        &pb,
        |p| facekit::nn::serial(|| cache.faces_of_file(&pipeline, p, &opts, false)),
        |i, r| match r {
            Ok((faces, _)) => photos[i] = Some(faces),
            Err(e) => {
                eprintln!("facekit: {e}");
                failed.push(FailedEntry {
                    path: inputs[i].clone(),
                    error: e.to_string(),
                });
            }
        },
    );
    // 2. Who is who: known people keep their faces, new faces join them or form new people.
    let ccfg = ClusterConfig {
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
    };
    cache.flush()?;
    let album = pool.install(|| {
        facekit::album::cluster(
            &cache,
            &pipeline,
            &photos,
            &facekit::album::AlbumConfig {
                cluster: ccfg,
                recluster: args.recluster,
            },
        )
    })?;
    let folder_of: std::collections::HashMap<i64, &str> = album
        .people
        .iter()
        .map(|p| (p.id, p.folder.as_str()))
        .collect();

    // 3. Which folders each photo goes to.
    let mut destinations: Vec<BTreeSet<String>> = vec![BTreeSet::new(); inputs.len()];
    for f in &album.faces {
        destinations[f.photo].insert(match f.person {
            Some(p) => folder_of[&p].to_string(),
            None => "unknown".to_string(),
        });
    }
    let mut no_faces = Vec::new();
    for (i, p) in photos.iter().enumerate() {
        if p.as_ref().is_some_and(|p| p.faces.is_empty()) {
            destinations[i].insert("no_faces".to_string());
            no_faces.push(inputs[i].clone());
        }
    }
    let faces: Vec<FaceEntry> = album
        .faces
        .iter()
        .map(|f| FaceEntry {
            path: inputs[f.photo].clone(),
            face: f.index,
            bbox: f.bbox.to_array(),
            person: f.person,
            folder: f.person.map(|p| folder_of[&p].to_string()),
            source: f.source.map(|s| s.as_str()),
        })
        .collect();
    let clusters: Vec<ClusterEntry> = album
        .people
        .iter()
        .map(|p| {
            let r = &album.faces[p.representative];
            ClusterEntry {
                id: p.id,
                name: p.name.clone(),
                folder: p.folder.clone(),
                size: p.faces.len(),
                photos: p.photos,
                new_faces: p.new_faces,
                representative: Representative {
                    path: inputs[r.photo].clone(),
                    face: r.index,
                },
            }
        })
        .collect();

    // 4. The contact sheet, from the photos where they are now (before any move).
    let sheet = pool.install(|| contact_sheet(&inputs, &photos, &album, &no_faces, &opts));

    // 5. Place the photos.
    let mode = match args.mode {
        ModeArg::Copy => Mode::Copy,
        ModeArg::Link => Mode::Link,
        ModeArg::Move => Mode::Move,
    };
    let mut organizer = Organizer::new(&out, mode)?;
    let pb = progress(inputs.len(), "placing");
    for (i, dests) in destinations.iter().enumerate() {
        pb.inc(1);
        if dests.is_empty() {
            continue;
        }
        let dests: Vec<String> = dests.iter().cloned().collect();
        if let Err(e) = organizer.place(&inputs[i], &dests) {
            pb.suspend(|| eprintln!("facekit: {e}"));
            failed.push(FailedEntry {
                path: inputs[i].clone(),
                error: e.to_string(),
            });
        }
    }
    pb.finish_and_clear();

    let json = serde_json::to_vec_pretty(&ClustersFile {
        faces: &faces,
        clusters: &clusters,
        no_faces: &no_faces,
        failed: &failed,
    })?;
    let written_json = organizer.write_report("clusters", ".json", &json)?;
    let written_html = organizer.write_report("index", ".html", sheet.as_bytes())?;

    let unknown = album.unknown();
    if args.json {
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
            threshold,
            images: inputs.len(),
            analysed: cache.analysed_count(),
            faces: album.faces.len(),
            people: clusters.len(),
            unknown_faces: unknown,
            no_faces: no_faces.len(),
            failed: failed.len(),
            clusters: &clusters,
        };
        outln!("{}", serde_json::to_string(&summary)?);
    } else {
        for c in &clusters {
            outln!(
                "{}  {:>5} face(s) in {:>5} photo(s)",
                c.folder,
                c.size,
                c.photos
            );
        }
        outln!(
            "{} photo(s), {} face(s): {} people, {} unknown face(s), {} photo(s) without faces, {} failed",
            inputs.len(),
            album.faces.len(),
            clusters.len(),
            unknown,
            no_faces.len(),
            failed.len()
        );
        outln!(
            "wrote {} and {}",
            display_path(&written_json),
            display_path(&written_html)
        );
        if mode == Mode::Move {
            outln!(
                "moved; to put every photo back: facekit cluster --undo {}",
                display_path(&out)
            );
        }
    }
    Ok(exit_status(failed.len()))
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

/// Faces shown per person on the contact sheet.
const SHEET_FACES: usize = 24;

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A 96 px JPEG thumbnail of the face box (with some margin), base64.
fn thumbnail(img: &image::RgbImage, b: &BBox) -> Option<String> {
    let (w, h) = (b.width(), b.height());
    let side = w.max(h) * 1.3;
    let (cx, cy) = (b.center().x, b.center().y);
    let x0 = (cx - side / 2.0).max(0.0) as u32;
    let y0 = (cy - side / 2.0).max(0.0) as u32;
    let x1 = ((cx + side / 2.0) as u32).min(img.width());
    let y1 = ((cy + side / 2.0) as u32).min(img.height());
    if x1 <= x0 || y1 <= y0 {
        return None;
    }
    let crop = image::imageops::crop_imm(img, x0, y0, x1 - x0, y1 - y0).to_image();
    let thumb = image::imageops::resize(&crop, 96, 96, image::imageops::FilterType::Triangle);
    let mut bytes = Vec::new();
    thumb
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
        .ok()?;
    Some(io::base64(&bytes))
}

/// `index.html`: per person, up to [`SHEET_FACES`] face crops (each titled with its file and
/// face index, linking to the photo), the unknown faces, and the photos without faces.
fn contact_sheet(
    inputs: &[PathBuf],
    photos: &[Option<std::sync::Arc<facekit::library::ImageFaces>>],
    album: &facekit::album::Album,
    no_faces: &[PathBuf],
    opts: &LoadOptions,
) -> String {
    let mut sections: Vec<(String, Vec<usize>, usize)> = album
        .people
        .iter()
        .map(|p| {
            let title = if p.folder == p.label {
                p.label.clone()
            } else {
                format!("{} ({})", p.label, p.folder)
            };
            (
                title,
                p.faces.iter().copied().take(SHEET_FACES).collect(),
                p.faces.len(),
            )
        })
        .collect();
    let unknown: Vec<usize> = (0..album.faces.len())
        .filter(|&f| album.faces[f].person.is_none())
        .collect();
    if !unknown.is_empty() {
        sections.push((
            "unknown".into(),
            unknown.iter().copied().take(SHEET_FACES).collect(),
            unknown.len(),
        ));
    }
    // The faces shown, grouped by photo: each photo is decoded once, and only the faces the
    // sheet shows are cut out.
    let mut needed: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for &f in sections.iter().flat_map(|s| s.1.iter()) {
        needed.entry(album.faces[f].photo).or_default().push(f);
    }
    let needed: Vec<(usize, Vec<usize>)> = needed.into_iter().collect();
    let thumbs: std::collections::HashMap<usize, String> = needed
        .par_iter()
        .flat_map_iter(|(i, faces)| {
            let img = io::load_image(&inputs[*i], opts).ok();
            faces
                .iter()
                .filter_map(|&f| {
                    let b = photos[*i].as_ref()?.faces.get(album.faces[f].index)?.bbox;
                    thumbnail(img.as_ref()?, &b).map(|t| (f, t))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let href = |p: &Path| {
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        html_escape(&format!("file://{}", abs.to_string_lossy()))
    };
    let mut html = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>facekit cluster</title>\n\
         <style>body{font-family:sans-serif;margin:1em}h2{font-size:1em;margin:1em 0 .3em}\
         img{width:96px;height:96px;margin:1px;border-radius:3px}li{font-size:.9em}</style>\
         </head><body>\n<h1>facekit cluster</h1>\n",
    );
    for (name, faces, total) in &sections {
        html.push_str(&format!(
            "<h2>{} &mdash; {} face(s){}</h2>\n<div>",
            html_escape(name),
            total,
            if *total > faces.len() {
                format!(", first {}", faces.len())
            } else {
                String::new()
            }
        ));
        for &f in faces {
            if let Some(t) = thumbs.get(&f) {
                let face = &album.faces[f];
                let title = html_escape(&format!(
                    "{} face {}",
                    display_path(&inputs[face.photo]),
                    face.index
                ));
                html.push_str(&format!(
                    "<a href=\"{}\"><img src=\"data:image/jpeg;base64,{t}\" title=\"{title}\" \
                     alt=\"{title}\"></a>",
                    href(&inputs[face.photo])
                ));
            }
        }
        html.push_str("</div>\n");
    }
    if !no_faces.is_empty() {
        html.push_str(&format!(
            "<h2>no faces &mdash; {} photo(s)</h2>\n<ul>",
            no_faces.len()
        ));
        for p in no_faces {
            html.push_str(&format!(
                "<li><a href=\"{}\">{}</a></li>",
                href(p),
                html_escape(&display_path(p))
            ));
        }
        html.push_str("</ul>\n");
    }
    html.push_str("</body></html>\n");
    html
}
