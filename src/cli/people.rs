//! `facekit people ...`: the people of the face library: enroll from reference photos (one at
//! a time or a known-people folder), list, rename, merge, remove, and confirm or correct which
//! person a face is.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use facekit::io::LoadOptions;
use facekit::library::{people, Library, Source};
use serde::Serialize;

use super::output::{display_path, outln};
use super::runner::{exit_status, progress, run_ordered, thread_pool};
use super::{CommonArgs, EmbeddingArgs, LibraryArgs};

/// Arguments of `facekit people`.
#[derive(Args, Debug)]
pub struct PeopleArgs {
    #[command(subcommand)]
    action: Action,
}

/// What `facekit people` does.
#[derive(Subcommand, Debug)]
enum Action {
    /// Enroll NAME from photos: the largest face of each photo becomes theirs.
    #[command(after_help = super::help::after_help("people add"))]
    Add(AddArgs),
    /// Enroll a known-people folder: each subfolder is a person (its name), each photo
    /// directly inside is a person named by its file stem (face_recognition's layout).
    #[command(after_help = super::help::after_help("people import"))]
    Import(ImportArgs),
    /// List the people: id, name, faces (enrolled, confirmed, clustered), photos.
    #[command(after_help = super::help::after_help("people list"))]
    List(ListArgs),
    /// Give a person a (new) name: `facekit people rename person_0007 "Ada Lovelace"`.
    #[command(after_help = super::help::after_help("people rename"))]
    Rename(RenameArgs),
    /// Make several people one: every face of FROM... becomes INTO's.
    #[command(after_help = super::help::after_help("people merge"))]
    Merge(MergeArgs),
    /// Remove a person (their faces stay in the library, unassigned).
    #[command(after_help = super::help::after_help("people remove"))]
    Remove(RemoveArgs),
    /// Confirm or correct: face --face of PHOTO is WHO's (it stays so through re-clustering).
    #[command(after_help = super::help::after_help("people assign"))]
    Assign(AssignArgs),
    /// Take face --face of PHOTO away from whoever it was assigned to.
    #[command(after_help = super::help::after_help("people unassign"))]
    Unassign(UnassignArgs),
}

/// Where photos are analysed into: the library, the embedding and the detector.
#[derive(Args, Debug)]
struct Analysis {
    #[command(flatten)]
    library: LibraryArgs,
    #[command(flatten)]
    embedding: EmbeddingArgs,
    #[command(flatten)]
    common: CommonArgs,
}

/// `people add`.
#[derive(Args, Debug)]
struct AddArgs {
    /// The person's name (created if new).
    name: String,
    /// Reference photos of them (folders are walked).
    #[arg(required = true, value_name = "PHOTO")]
    photos: Vec<PathBuf>,
    /// One JSON record per photo.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    with: Analysis,
}

/// `people import`.
#[derive(Args, Debug)]
struct ImportArgs {
    /// The known-people folder.
    dir: PathBuf,
    /// One JSON record per photo.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    with: Analysis,
}

/// `people list`.
#[derive(Args, Debug)]
struct ListArgs {
    /// A JSON array instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    library: LibraryArgs,
}

/// `people rename`.
#[derive(Args, Debug)]
struct RenameArgs {
    /// The person: a name, or person_0007 / #7 for an id.
    who: String,
    /// The new name.
    name: String,
    #[command(flatten)]
    library: LibraryArgs,
}

/// `people merge`.
#[derive(Args, Debug)]
struct MergeArgs {
    /// The person who stays.
    into: String,
    /// The people merged into them.
    #[arg(required = true)]
    from: Vec<String>,
    #[command(flatten)]
    library: LibraryArgs,
}

/// `people remove`.
#[derive(Args, Debug)]
struct RemoveArgs {
    /// The person: a name, or person_0007 / #7.
    who: String,
    #[command(flatten)]
    library: LibraryArgs,
}

/// `people assign`.
#[derive(Args, Debug)]
struct AssignArgs {
    /// The person (created if it is a new name).
    who: String,
    /// The photo.
    photo: PathBuf,
    /// Which face of the photo (from 0, as `detect` and `clusters.json` number them); needed
    /// when the photo has several.
    #[arg(long, value_name = "N")]
    face: Option<usize>,
    #[command(flatten)]
    with: Analysis,
}

/// `people unassign`.
#[derive(Args, Debug)]
struct UnassignArgs {
    /// The photo.
    photo: PathBuf,
    /// Which face of the photo (from 0); needed when the photo has several.
    #[arg(long, value_name = "N")]
    face: Option<usize>,
    #[command(flatten)]
    with: Analysis,
}

/// One enrolled photo (`--json`).
#[derive(Serialize)]
struct EnrollRecord {
    #[serde(serialize_with = "facekit::io::serialize_path")]
    path: PathBuf,
    name: String,
    person: Option<i64>,
    face: Option<usize>,
    faces: Option<usize>,
    error: Option<String>,
}

/// Runs `facekit people`.
pub fn run(args: PeopleArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Add(a) => {
            let items: Vec<(String, super::runner::Input)> = super::runner::inputs(&a.photos)
                .into_iter()
                .map(|p| (a.name.clone(), p))
                .collect();
            enroll(items, &a.with, a.json)
        }
        Action::Import(a) => {
            let items = people::known_folder(&a.dir)?;
            if items.is_empty() {
                anyhow::bail!(
                    "{}: no photos (expected one folder per person, or photos named after people)",
                    a.dir.display()
                );
            }
            enroll(items, &a.with, a.json)
        }
        Action::List(a) => list(&a.library.open_persistent()?, a.json),
        Action::Rename(a) => {
            let lib = a.library.open_persistent()?;
            let old = lib.person(&a.who)?;
            let p = lib.rename_person(&a.who, &a.name)?;
            outln!("{} is now {}", old.label(), p.label());
            Ok(ExitCode::SUCCESS)
        }
        Action::Merge(a) => {
            let lib = a.library.open_persistent()?;
            let from: Vec<&str> = a.from.iter().map(String::as_str).collect();
            let p = lib.merge_people(&a.into, &from)?;
            outln!(
                "{}: {} face(s) in {} photo(s)",
                p.label(),
                p.faces(),
                p.photos
            );
            Ok(ExitCode::SUCCESS)
        }
        Action::Remove(a) => {
            let lib = a.library.open_persistent()?;
            let p = lib.remove_person(&a.who)?;
            outln!(
                "removed {} ({} face(s) are unassigned now)",
                p.label(),
                p.faces()
            );
            Ok(ExitCode::SUCCESS)
        }
        Action::Assign(a) => {
            let lib = a.with.library.open_persistent()?;
            let pipeline = a.with.embedding.pipeline(&a.with.common, None)?;
            let opts = load_options(&a.with.common);
            let (face, index, n) = lib.face_of_file(&pipeline, &a.photo, a.face, &opts)?;
            let person = match lib.person(&a.who) {
                Ok(p) => p.id,
                Err(_) => lib.person_named(&a.who)?.0,
            };
            let before = lib.assignments_of(&[face])?.pop().flatten();
            lib.assign(face, person, Source::Confirmed)?;
            let p = lib.person(&format!("#{person}"))?;
            let was = match before {
                Some((old, _)) if old != person => format!(
                    " (was {})",
                    lib.person(&format!("#{old}"))
                        .map_or_else(|_| format!("#{old}"), |o| o.label())
                ),
                _ => String::new(),
            };
            outln!(
                "{} face {index} of {n}: {}{was}",
                display_path(&a.photo),
                p.label()
            );
            Ok(ExitCode::SUCCESS)
        }
        Action::Unassign(a) => {
            let lib = a.with.library.open_persistent()?;
            let pipeline = a.with.embedding.pipeline(&a.with.common, None)?;
            let opts = load_options(&a.with.common);
            let (face, index, n) = lib.face_of_file(&pipeline, &a.photo, a.face, &opts)?;
            let was = lib.unassign(face)?;
            outln!(
                "{} face {index} of {n}: {}",
                display_path(&a.photo),
                if was {
                    "unassigned"
                } else {
                    "was not assigned to anyone"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load_options(common: &CommonArgs) -> LoadOptions {
    LoadOptions {
        max_pixels: common.max_pixels,
        ..Default::default()
    }
}

/// Enrolls the largest face of each photo as its person; one line (or record) per photo.
fn enroll(items: Vec<people::KnownPhoto>, with: &Analysis, json: bool) -> anyhow::Result<ExitCode> {
    let common = &with.common;
    let lib = with.library.open_persistent()?;
    let pipeline = with.embedding.pipeline(common, None)?;
    let opts = load_options(common);
    let pool = thread_pool(common.threads)?;
    let names: Vec<String> = items.iter().map(|(n, _)| n.clone()).collect();
    let inputs: Vec<super::runner::Input> = items.into_iter().map(|(_, p)| p).collect();
    let by_path: std::collections::HashMap<PathBuf, usize> = inputs
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.as_ref().ok().map(|p| (p.clone(), i)))
        .collect();
    let pb = progress(inputs.len(), "photos");
    let mut failed = 0;
    let mut people = std::collections::BTreeSet::new();
    run_ordered(
        &pool,
        &inputs,
        &pb,
        |p| {
            let name = &names[by_path[p]];
            facekit::serial(|| lib.enroll(&pipeline, name, p, &opts))
        },
        |i, r| {
            let path = match &inputs[i] {
                Ok(p) => p.clone(),
                Err(e) => e.path().map(|p| p.to_path_buf()).unwrap_or_default(),
            };
            let mut rec = EnrollRecord {
                path: path.clone(),
                name: names[i].clone(),
                person: None,
                face: None,
                faces: None,
                error: None,
            };
            match r {
                Ok(e) => {
                    people.insert(names[i].clone());
                    rec.person = Some(e.person);
                    rec.face = Some(e.index);
                    rec.faces = Some(e.faces_in_photo);
                    if !json {
                        let note = if e.faces_in_photo > 1 {
                            format!(
                                " (the largest of {} faces; to pick another: facekit people \
                                 assign NAME PHOTO --face N)",
                                e.faces_in_photo
                            )
                        } else {
                            String::new()
                        };
                        outln!(
                            "{}: {} face {}{note}",
                            display_path(&path),
                            names[i],
                            e.index
                        );
                    }
                }
                Err(e) => {
                    failed += 1;
                    super::output::report(&e);
                    rec.error = Some(e.reason());
                }
            }
            if json {
                if let Ok(line) = serde_json::to_string(&rec) {
                    outln!("{line}");
                }
            }
        },
    );
    pb.finish_and_clear();
    lib.flush()?;
    if !json {
        outln!(
            "{} photo(s) enrolled for {} people, {failed} failed; library {}",
            inputs.len() - failed,
            people.len(),
            lib.path().display()
        );
    }
    Ok(exit_status(failed))
}

/// `people list`.
fn list(lib: &Library, json: bool) -> anyhow::Result<ExitCode> {
    let people = lib.people()?;
    if json {
        outln!("{}", serde_json::to_string(&people)?);
        return Ok(ExitCode::SUCCESS);
    }
    if people.is_empty() {
        outln!(
            "no people yet in {} (facekit people add NAME PHOTO..., or facekit people import DIR)",
            lib.path().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:>6}  {:<30}  {:>8}  {:>9}  {:>9}  {:>6}",
        "ID",
        "NAME",
        "ENROLLED",
        "CONFIRMED",
        "CLUSTERED",
        "PHOTOS"
    );
    for p in &people {
        outln!(
            "{:>6}  {:<30}  {:>8}  {:>9}  {:>9}  {:>6}",
            p.id,
            p.label(),
            p.enrolled,
            p.confirmed,
            p.clustered,
            p.photos
        );
    }
    Ok(ExitCode::SUCCESS)
}
