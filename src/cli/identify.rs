//! `facekit identify PHOTO|DIR...`: every face of every photo against the known people of the
//! face library: the best name or `unknown`, its distance and the next person's.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use facekit::io::{JsonPath, LoadOptions};
use facekit::library::{Identity, IDENTIFY_THRESHOLD};
use serde::Serialize;

use super::output::{csv_path, display_path, outln, write_stdout};
use super::runner::{exit_status, inputs, progress, run_ordered_with, thread_pool};
use super::{CommonArgs, EmbeddingArgs, FaceSizeArgs, LibraryArgs};

/// Arguments of `facekit identify`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  facekit people import known_people/       # one folder (or photo) per person
  facekit identify party.jpg                # who is in this photo?
  facekit identify --csv unknown_pictures/  # face_recognition's path,name,distance lines")]
pub struct IdentifyArgs {
    /// Photos and folders (walked recursively).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Distance under which a face is taken for a known person (default 0.41 for dlib's
    /// embeddings: 1 % of strangers taken for someone among LFW's 1,680 people; a small
    /// library can afford more, up to verify's 0.60; required with --model).
    #[arg(long, value_name = "T", value_parser = super::parse::non_negative_f32)]
    threshold: Option<f32>,
    /// Also list the N nearest people per face.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = super::parse::at_least_one)]
    top_k: usize,
    /// One JSON record per photo.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// face_recognition's CSV lines: path,name,distance per face (unknown_person for strangers,
    /// path,no_persons_found for photos without faces).
    #[arg(long)]
    csv: bool,
    #[command(flatten)]
    faces: FaceSizeArgs,
    #[command(flatten)]
    library: LibraryArgs,
    #[command(flatten)]
    embedding: EmbeddingArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Serialize)]
struct FaceRecord<'a> {
    face: usize,
    #[serde(rename = "box")]
    bbox: [f32; 4],
    score: f32,
    /// The person's name (or person_0007), `null` when unknown.
    name: Option<&'a str>,
    person: Option<i64>,
    distance: Option<f32>,
    next_distance: Option<f32>,
    candidates: &'a [facekit::library::Candidate],
}

#[derive(Serialize)]
struct PhotoRecord<'a> {
    path: JsonPath<'a>,
    faces: Vec<FaceRecord<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Runs `facekit identify`.
pub fn run(args: IdentifyArgs) -> anyhow::Result<ExitCode> {
    let lib = args.library.open_persistent()?;
    let pipeline = args.embedding.pipeline(&args.common, args.faces.min_face)?;
    let threshold = match (args.threshold, &args.embedding.model) {
        (Some(t), _) => t,
        (None, None) => IDENTIFY_THRESHOLD,
        (None, Some(_)) => anyhow::bail!(
            "with --model, pass --threshold (identification needs its own operating point; \
             measure it on labeled photos)"
        ),
    };
    let known = lib.known(&pipeline)?;
    if known.people() == 0 {
        let elsewhere = lib.people_missing_from(&pipeline)?;
        if elsewhere > 0 {
            anyhow::bail!(
                "{elsewhere} people are known, but none with this model and detector; enroll \
                 them again with the same --detector/--model (facekit people add ...)"
            );
        }
        anyhow::bail!(
            "no known people in {} yet: facekit people add NAME PHOTO..., or facekit people \
             import DIR (one folder per person)",
            lib.path().display()
        );
    }
    let opts = LoadOptions {
        max_pixels: args.common.max_pixels,
        ..Default::default()
    };
    let pool = thread_pool(args.common.threads)?;
    let inputs = inputs(&args.paths);
    let pb = progress(inputs.len(), "photos");
    let mut failed = 0;
    if !args.json && !args.csv {
        outln!(
            "{:<40}  {:>4}  {:<24}  {:<24}  {:>8}  {:>8}",
            "PATH",
            "FACE",
            "BOX",
            "NAME",
            "DISTANCE",
            "NEXT"
        );
    }
    // The photos' faces come in batches across photos; each photo is identified as it is done.
    let drive = |files: &[&Path], done: &(dyn Fn(usize, facekit::Result<_>) + Sync)| {
        lib.faces_of_files(&pipeline, files, &opts, false, &|k, r| {
            // Inside the photo's fault boundary, as its detection and embedding were.
            let identified = facekit::io::guard(files[k], || {
                let (faces, _) = r?;
                let embeddings: Vec<&[f32]> =
                    faces.faces.iter().map(|f| f.embedding.as_slice()).collect();
                let ids = known.identify(&embeddings, args.top_k, threshold)?;
                Ok((faces.clone(), ids))
            });
            done(k, identified)
        })
    };
    run_ordered_with(&pool, &inputs, &pb, drive, |i, r| {
        let path = match &inputs[i] {
            Ok(p) => p.clone(),
            Err(e) => e.path().map(Path::to_path_buf).unwrap_or_default(),
        };
        match r {
            Ok((faces, ids)) => print_photo(&args, &path, &faces.faces, &ids),
            Err(e) => {
                failed += 1;
                {
                    super::output::report(&e);
                    if args.json {
                        let rec = PhotoRecord {
                            path: JsonPath(&path),
                            faces: Vec::new(),
                            error: Some(e.reason()),
                        };
                        if let Ok(line) = serde_json::to_string(&rec) {
                            outln!("{line}");
                        }
                    }
                }
            }
        }
    });
    pb.finish_and_clear();
    lib.flush()?;
    Ok(exit_status(failed))
}

fn print_photo(args: &IdentifyArgs, path: &Path, faces: &[facekit::Face], ids: &[Identity]) {
    if args.json {
        let rec = PhotoRecord {
            path: JsonPath(path),
            faces: faces
                .iter()
                .zip(ids)
                .enumerate()
                .map(|(k, (f, id))| FaceRecord {
                    face: k,
                    bbox: f.bbox.to_array(),
                    score: f.score,
                    name: id.known.as_ref().map(|c| c.name.as_str()),
                    person: id.known.as_ref().map(|c| c.person),
                    distance: id.distance,
                    next_distance: id.next_distance,
                    candidates: &id.candidates,
                })
                .collect(),
            error: None,
        };
        if let Ok(line) = serde_json::to_string(&rec) {
            outln!("{line}");
        }
        return;
    }
    if args.csv {
        if faces.is_empty() {
            let mut line = csv_path(path);
            line.extend_from_slice(b",no_persons_found\n");
            write_stdout(&line);
        }
        for id in ids {
            let mut line = csv_path(path);
            let rest = match (&id.known, id.distance) {
                (Some(c), Some(d)) => format!(",{},{d:.4}\n", csv_field(&c.name)),
                (None, Some(d)) => format!(",unknown_person,{d:.4}\n"),
                _ => ",unknown_person\n".to_string(),
            };
            line.extend_from_slice(rest.as_bytes());
            write_stdout(&line);
        }
        return;
    }
    let shown = display_path(path);
    if faces.is_empty() {
        outln!("{shown:<40}  {:>4}  no faces", "-");
    }
    for (k, (f, id)) in faces.iter().zip(ids).enumerate() {
        let b = f.bbox;
        let bbox = format!("{:.0},{:.0},{:.0},{:.0}", b.x1, b.y1, b.x2, b.y2);
        let name = id.known.as_ref().map_or("unknown", |c| c.name.as_str());
        let dist = id.distance.map_or("-".into(), |d| format!("{d:.4}"));
        let next = id.next_distance.map_or("-".into(), |d| format!("{d:.4}"));
        outln!("{shown:<40}  {k:>4}  {bbox:<24}  {name:<24}  {dist:>8}  {next:>8}");
        if args.top_k > 1 {
            for c in &id.candidates {
                outln!(
                    "{:<40}  {:>4}  {:<24}    {:<22}  {:>8.4}",
                    "",
                    "",
                    "",
                    c.name,
                    c.distance
                );
            }
        }
    }
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
