//! The face library end to end, with the real binary and real photos (issue 12, acceptance 3
//! and 4):
//!
//! - an album clustered, one person named, photos added, clustered again: the named folder keeps
//!   its name and every earlier photo, no earlier assignment changes, the new photos are assigned
//!   (a new person gets a new folder) and only they are embedded; `--recluster` keeps confirmed
//!   and enrolled faces; `identify` names the person on a held-out photo. Always run on the four
//!   LFW fixtures, and on more LFW photos when ../shared is there.
//! - SIGKILL of `people import` and of `cluster` at seeded random moments spread over a measured
//!   run: the database opens, passes `PRAGMA integrity_check` (and `foreign_key_check`), and the
//!   re-run gives what an uninterrupted run gives.
//!
//! The old JSON Lines caches of the user are kept out: FACEKIT_CACHE is an empty folder.
#![cfg(unix)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use facekit::library::people::folder_name;
use facekit::library::Library;
use serde_json::Value;

/// The tests time the real binary (kill points scale with a measured run) and each keeps the
/// two cores busy: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn lfw(shared: &Path, person: &str, n: u32) -> PathBuf {
    shared
        .join("data/lfw/lfw-deepfunneled")
        .join(person)
        .join(format!("{person}_{n:04}.jpg"))
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// The real binary on library `db`, with an empty folder for old JSON Lines caches (so none of
/// the user's is imported).
fn command(root: &Path, db: &Path, args: &[&str]) -> Command {
    let caches = root.join("no-old-caches");
    std::fs::create_dir_all(&caches).unwrap();
    let mut cmd = common::facekit_command();
    cmd.env("FACEKIT_CACHE", caches)
        .args(args)
        .arg("--library")
        .arg(db);
    cmd
}

/// Runs `cmd`, which must succeed.
fn run_ok(mut cmd: Command) -> Output {
    let o = cmd.output().expect("run facekit");
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&o.stdout).trim()
        )
    })
}

/// Copies `photos` into `dir`.
fn copy_into(dir: &Path, photos: &[PathBuf]) {
    std::fs::create_dir_all(dir).unwrap();
    for p in photos {
        std::fs::copy(p, dir.join(file_name(p))).unwrap();
    }
}

/// A face of clusters.json: (photo file name, face index).
type FaceKey = (String, u64);

/// Every face of a clusters.json: its person and source.
fn faces_of(clusters: &Value) -> BTreeMap<FaceKey, (Option<i64>, Option<String>)> {
    clusters["faces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let key = (
                file_name(Path::new(f["path"].as_str().unwrap())),
                f["face"].as_u64().unwrap(),
            );
            let source = f["source"].as_str().map(str::to_string);
            (key, (f["person"].as_i64(), source))
        })
        .collect()
}

/// The main (largest) face of each photo of a clusters.json: face index and person.
fn main_faces(clusters: &Value) -> BTreeMap<String, (u64, Option<i64>)> {
    let mut best: BTreeMap<String, (f64, u64, Option<i64>)> = BTreeMap::new();
    for f in clusters["faces"].as_array().unwrap() {
        let b: Vec<f64> = f["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let area = (b[2] - b[0]) * (b[3] - b[1]);
        let name = file_name(Path::new(f["path"].as_str().unwrap()));
        let entry = (area, f["face"].as_u64().unwrap(), f["person"].as_i64());
        if best.get(&name).is_none_or(|e| e.0 < area) {
            best.insert(name, entry);
        }
    }
    best.into_iter().map(|(k, v)| (k, (v.1, v.2))).collect()
}

/// The folders of OUT and the file names in each.
fn folders(out: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut map = BTreeMap::new();
    for e in std::fs::read_dir(out).unwrap() {
        let e = e.unwrap();
        if !e.file_type().unwrap().is_dir() {
            continue;
        }
        let files = std::fs::read_dir(e.path())
            .unwrap()
            .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        map.insert(e.file_name().to_string_lossy().into_owned(), files);
    }
    map
}

fn names(photos: &[PathBuf]) -> BTreeSet<String> {
    photos.iter().map(|p| file_name(p)).collect()
}

/// One person's photos through the incremental album workflow.
struct Scenario {
    /// The name given to the person after the first run.
    name: &'static str,
    /// Their photos in the first album.
    named_first: Vec<PathBuf>,
    /// Other people's photos in the first album.
    others_first: Vec<PathBuf>,
    /// Their photos added before the second run.
    named_new: Vec<PathBuf>,
    /// Photos of someone new added before the second run.
    newcomer: Vec<PathBuf>,
    /// A photo of them outside the album, enrolled with `people add` before `--recluster`.
    enroll: Option<PathBuf>,
    /// A photo of them that is never in the album nor enrolled (`identify` must name them).
    held_out: PathBuf,
    /// A photo of someone the library never saw (`identify` must say unknown).
    stranger: Option<PathBuf>,
    /// Extra `cluster` arguments.
    cluster_args: &'static [&'static str],
}

/// Clusters the album into `out`: the `--json` summary and clusters.json.
fn cluster(
    sc: &Scenario,
    root: &Path,
    db: &Path,
    album: &Path,
    out: &Path,
    extra: &[&str],
) -> (Value, Value) {
    let args = [
        &["cluster", s(album), "--out", s(out), "--json"],
        sc.cluster_args,
        extra,
    ]
    .concat();
    let summary = json(&run_ok(command(root, db, &args)));
    (summary, common::read_json(&out.join("clusters.json")))
}

fn person_listed(root: &Path, db: &Path, name: &str) -> Value {
    let list = json(&run_ok(command(root, db, &["people", "list", "--json"])));
    list.as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in `people list`: {list}"))
        .clone()
}

fn incremental_album(sc: &Scenario) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let db = root.join("library.db");
    let album = root.join("album");
    let first: Vec<PathBuf> = [sc.named_first.clone(), sc.others_first.clone()].concat();
    copy_into(&album, &first);

    // 1. The first album: the person's photos form one person, nobody else's main face is theirs.
    let out1 = root.join("out1");
    let (sum1, c1) = cluster(sc, root, &db, &album, &out1, &[]);
    assert_eq!(sum1["images"], first.len(), "{sum1}");
    assert_eq!(
        sum1["analysed"],
        first.len(),
        "a fresh library embeds every photo: {sum1}"
    );
    let main1 = main_faces(&c1);
    assert_eq!(main1.len(), first.len(), "a face in every photo: {c1}");
    let theirs: BTreeSet<Option<i64>> = names(&sc.named_first).iter().map(|n| main1[n].1).collect();
    assert_eq!(theirs.len(), 1, "{}'s photos split: {theirs:?}", sc.name);
    let person = theirs.into_iter().next().unwrap().expect("clustered");
    for n in names(&sc.others_first) {
        assert_ne!(main1[&n].1, Some(person), "{n} taken for {}", sc.name);
    }
    let numbered = format!("person_{person:04}");
    let earlier = folders(&out1)[&numbered].clone();
    assert!(earlier.is_superset(&names(&sc.named_first)), "{earlier:?}");
    let faces1 = faces_of(&c1);
    let people1: BTreeSet<i64> = faces1.values().filter_map(|f| f.0).collect();

    // 2. Name them, add photos (theirs and a newcomer's), cluster again.
    let o = run_ok(command(
        root,
        &db,
        &["people", "rename", &numbered, sc.name],
    ));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(sc.name),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let added: Vec<PathBuf> = [sc.named_new.clone(), sc.newcomer.clone()].concat();
    copy_into(&album, &added);
    let out2 = root.join("out2");
    let (sum2, c2) = cluster(sc, root, &db, &album, &out2, &[]);
    assert_eq!(sum2["images"], first.len() + added.len(), "{sum2}");
    assert_eq!(
        sum2["analysed"],
        added.len(),
        "only the new photos are detected and embedded: {sum2}"
    );
    let faces2 = faces_of(&c2);
    let mut kept = 0;
    for (key, (p, _)) in &faces1 {
        if p.is_some() {
            assert_eq!(faces2[key].0, *p, "{key:?} changed person");
            kept += 1;
        }
    }
    assert!(
        kept >= first.len(),
        "{kept} assigned faces in the first run"
    );
    let folder = folder_name(sc.name);
    assert_eq!(folder, sc.name.replace(' ', "_"));
    let folders2 = folders(&out2);
    assert!(!folders2.contains_key(&numbered), "{folders2:?}");
    let expected: BTreeSet<String> = earlier.union(&names(&sc.named_new)).cloned().collect();
    assert_eq!(
        folders2.get(&folder),
        Some(&expected),
        "{folder}/ holds every earlier photo of theirs and the new ones: {folders2:?}"
    );
    let entry = sum2["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == person)
        .unwrap_or_else(|| panic!("person {person} not in the summary: {sum2}"));
    assert_eq!(entry["name"], sc.name);
    assert_eq!(entry["folder"], folder.as_str());
    let main2 = main_faces(&c2);
    for n in names(&sc.named_new) {
        assert_eq!(main2[&n].1, Some(person), "new photo {n} not {}'s", sc.name);
        assert_eq!(
            faces2[&(n.clone(), main2[&n].0)].1.as_deref(),
            Some("clustered")
        );
    }
    let newcomer: BTreeSet<Option<i64>> = names(&sc.newcomer).iter().map(|n| main2[n].1).collect();
    assert_eq!(
        newcomer.len(),
        1,
        "the newcomer's photos split: {newcomer:?}"
    );
    let new_person = newcomer
        .into_iter()
        .next()
        .unwrap()
        .expect("newcomer assigned");
    assert!(
        !people1.contains(&new_person),
        "the newcomer joined an earlier person {new_person}"
    );
    let new_folder = format!("person_{new_person:04}");
    assert!(
        folders2
            .get(&new_folder)
            .is_some_and(|f| f.is_superset(&names(&sc.newcomer))),
        "{new_folder}/ holds the newcomer's photos: {folders2:?}"
    );

    // 3. Confirm one of their faces (and enroll a photo from outside the album), then start the
    //    album's clustering over: those faces stay theirs and seed their folder again.
    let confirmed = file_name(&sc.named_first[0]);
    let face = main1[&confirmed].0.to_string();
    let photo = album.join(&confirmed);
    run_ok(command(
        root,
        &db,
        &["people", "assign", sc.name, s(&photo), "--face", &face],
    ));
    let enrolled = usize::from(sc.enroll.is_some());
    if let Some(e) = &sc.enroll {
        run_ok(command(root, &db, &["people", "add", sc.name, s(e)]));
    }
    let listed = person_listed(root, &db, sc.name);
    assert_eq!(listed["id"], person, "{listed}");
    assert_eq!(listed["confirmed"], 1, "{listed}");
    assert_eq!(listed["enrolled"], enrolled, "{listed}");
    let out3 = root.join("out3");
    let (sum3, c3) = cluster(sc, root, &db, &album, &out3, &["--recluster"]);
    assert_eq!(sum3["analysed"], 0, "nothing is embedded again: {sum3}");
    let faces3 = faces_of(&c3);
    assert_eq!(
        faces3[&(confirmed.clone(), main1[&confirmed].0)],
        (Some(person), Some("confirmed".to_string())),
        "--recluster kept the confirmed face"
    );
    let folders3 = folders(&out3);
    let again = folders3
        .get(&folder)
        .unwrap_or_else(|| panic!("no {folder}/ after --recluster: {folders3:?}"));
    assert!(again.contains(&confirmed), "{again:?}");
    let main3 = main_faces(&c3);
    for n in names(&sc.named_first).union(&names(&sc.named_new)) {
        assert_eq!(main3[n].1, Some(person), "{n} after --recluster");
    }
    let listed = person_listed(root, &db, sc.name);
    assert_eq!(
        (&listed["confirmed"], &listed["enrolled"]),
        (&Value::from(1), &Value::from(enrolled)),
        "{listed}"
    );

    // 4. identify names them on a photo neither clustered nor enrolled.
    let o = run_ok(command(root, &db, &["identify", s(&sc.held_out), "--json"]));
    let records = common::json_lines(&o.stdout);
    assert_eq!(records.len(), 1, "{records:?}");
    let faces = records[0]["faces"].as_array().unwrap();
    let main = faces
        .iter()
        .max_by(|a, b| {
            let area = |f: &Value| {
                let b = f["box"].as_array().unwrap();
                let v = |i: usize| b[i].as_f64().unwrap();
                (v(2) - v(0)) * (v(3) - v(1))
            };
            area(a).total_cmp(&area(b))
        })
        .expect("a face in the held-out photo");
    assert_eq!(main["name"], sc.name, "{main}");
    assert_eq!(main["person"], person, "{main}");
    if let Some(stranger) = &sc.stranger {
        let o = run_ok(command(root, &db, &["identify", s(stranger), "--json"]));
        let records = common::json_lines(&o.stdout);
        for f in records[0]["faces"].as_array().unwrap() {
            assert!(f["name"].is_null(), "a stranger taken for someone: {f}");
        }
    }
}

/// The always-run variant on the four LFW fixtures (and Tom Cruise as the newcomer): Abel
/// Pacheco's two photos are 0.51 apart, so the threshold is 0.55, and a person may be one photo.
#[test]
fn incremental_album_on_the_fixtures() {
    let _serial = serial();
    let lfw = common::fixture("lfw");
    incremental_album(&Scenario {
        name: "Abel Pacheco",
        named_first: vec![lfw.join("Abel_Pacheco_0001.jpg")],
        others_first: vec![
            lfw.join("Akhmed_Zakayev_0001.jpg"),
            lfw.join("Akhmed_Zakayev_0003.jpg"),
        ],
        named_new: vec![lfw.join("Abel_Pacheco_0004.jpg")],
        newcomer: vec![common::fixture("Tom_Cruise_avp_2014_4.jpg")],
        enroll: None,
        // The same pixels as Abel_Pacheco_0001 in other bytes: a photo the library never saw.
        held_out: common::fixture("Abel_Pacheco_0001_arithmetic.jpg"),
        stranger: None,
        cluster_args: &["--threshold", "0.55", "--min-size", "1"],
    });
}

/// The same workflow on more LFW photos, with the default settings.
#[test]
fn incremental_album_on_lfw() {
    let Some(shared) = common::shared("incremental_album_on_lfw") else {
        return;
    };
    let _serial = serial();
    let p = |person: &str, n: std::ops::RangeInclusive<u32>| -> Vec<PathBuf> {
        n.map(|i| lfw(&shared, person, i)).collect()
    };
    incremental_album(&Scenario {
        name: "Jimmy Carter",
        named_first: p("Jimmy_Carter", 1..=4),
        others_first: [p("Hugh_Grant", 1..=4), p("Bill_Frist", 1..=4)].concat(),
        named_new: p("Jimmy_Carter", 5..=6),
        newcomer: p("Colin_Farrell", 1..=4),
        enroll: Some(lfw(&shared, "Jimmy_Carter", 7)),
        held_out: lfw(&shared, "Jimmy_Carter", 9),
        stranger: Some(lfw(&shared, "Vaclav_Havel", 1)),
        cluster_args: &[],
    });
}

/// Runs `cmd` (output discarded) and SIGKILLs it `jitter` after `ready` (given the time since
/// the start) says so, unless it ended first. True when the kill ended it (it was running).
fn kill_when(mut cmd: Command, ready: impl Fn(Duration) -> bool, jitter: Duration) -> bool {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start facekit");
    let start = Instant::now();
    let mut exited = false;
    while !ready(start.elapsed()) && start.elapsed() < Duration::from_secs(60) {
        if child.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if !exited {
        std::thread::sleep(jitter);
    }
    let _ = child.kill(); // SIGKILL
    let status = child.wait().unwrap();
    if status.signal().is_none() {
        assert!(
            status.success(),
            "a run that was not killed failed: {status}"
        );
    }
    status.signal() == Some(9)
}

/// Photos the library at `db` has analyses of, read while a run writes it (WAL: a reader is
/// not blocked); 0 while it cannot be read yet.
fn analyses_now(db: &Path) -> usize {
    use rusqlite::OpenFlags;
    rusqlite::Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| c.query_row("SELECT count(*) FROM analyses", [], |r| r.get::<_, i64>(0)))
        .map_or(0, |n| n as usize)
}

/// True when OUT has a folder (the run is placing photos: its clustering is committed).
fn placing(out: &Path) -> bool {
    std::fs::read_dir(out).is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.path().is_dir())))
}

/// After a kill: the library opens and passes SQLite's integrity and foreign key checks. Returns
/// a connection to count what the killed run committed.
fn check_database(db: &Path, round: usize) -> rusqlite::Connection {
    let lib = Library::open_with(db, None)
        .unwrap_or_else(|e| panic!("round {round}: the library does not open: {e}"));
    lib.integrity_check()
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
    drop(lib);
    let conn = rusqlite::Connection::open(db).unwrap();
    let violations = conn
        .prepare("PRAGMA foreign_key_check")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .count();
    assert_eq!(violations, 0, "round {round}: foreign key violations");
    conn
}

fn count(conn: &rusqlite::Connection, sql: &str) -> usize {
    conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as usize
}

/// Kill rounds until this many kills landed while the process ran (at most [`MAX_ROUNDS`]).
const MID_RUN_KILLS: usize = 10;
const MAX_ROUNDS: usize = 16;
/// Mid-run kills of `cluster` from an empty library (slow rounds: every re-run embeds what the
/// killed run had not committed) and from an analysed one (quick rounds).
const CLUSTER_KILLS: [usize; 2] = [4, 6];

/// A kill moment: uniform over 90 % of the measured duration of an uninterrupted run (runs on a
/// loaded machine vary; the last moments are the likeliest to find the run ended).
fn kill_delay(rng: &mut facekit::Rng, run: Duration) -> Duration {
    run.mul_f64(0.9 * rng.f64())
}

/// Writes straight to stderr (not captured by the test harness), so the statistics show.
fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// `people list --json` without the ids (the order people are created in depends on which
/// thread enrolls first, in an uninterrupted run too).
fn people_without_ids(root: &Path, db: &Path) -> Vec<Value> {
    let list = json(&run_ok(command(root, db, &["people", "list", "--json"])));
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p.as_object_mut().unwrap().remove("id");
            p
        })
        .collect()
}

/// SIGKILL of `people import KNOWN_DIR` (6 people, 2 to 4 photos each) at seeded random
/// moments; after each: the library opens, passes its integrity check, and the same import
/// completes with the people an uninterrupted import gives.
#[test]
fn people_import_killed_at_random_moments() {
    let Some(shared) = common::shared("people_import_killed_at_random_moments") else {
        return;
    };
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let known = root.join("known");
    let people = [
        "Albert_Costa",
        "Angela_Bassett",
        "Billy_Crystal",
        "Boris_Becker",
        "Cameron_Diaz",
        "Clint_Eastwood",
    ];
    let mut photos = 0;
    for (i, person) in people.iter().enumerate() {
        let n = 2 + i as u32 % 3;
        let files: Vec<PathBuf> = (1..=n).map(|k| lfw(&shared, person, k)).collect();
        copy_into(&known.join(person), &files);
        photos += files.len();
    }
    let import = |db: &Path| command(root, db, &["people", "import", s(&known)]);

    let db = root.join("reference.db");
    let started = Instant::now();
    run_ok(import(&db));
    let duration = started.elapsed();
    let reference = people_without_ids(root, &db);
    assert_eq!(reference.len(), people.len(), "{reference:?}");
    let enrolled: u64 = reference
        .iter()
        .map(|p| p["enrolled"].as_u64().unwrap())
        .sum();
    assert_eq!(enrolled as usize, photos, "{reference:?}");

    let mut rng = facekit::Rng::new(0x1b_0a7);
    let (mut mid_run, mut partial, mut rounds) = (0, 0, 0);
    while mid_run < MID_RUN_KILLS && rounds < MAX_ROUNDS {
        let round = rounds;
        rounds += 1;
        let db = root.join(format!("import{round}.db"));
        let delay = kill_delay(&mut rng, duration);
        let killed = kill_when(import(&db), |t| t >= delay, Duration::ZERO);
        let conn = check_database(&db, round);
        let committed = count(
            &conn,
            "SELECT count(*) FROM assignments WHERE source = 'enrolled'",
        );
        let named = count(&conn, "SELECT count(*) FROM people");
        drop(conn);
        mid_run += usize::from(killed);
        partial += usize::from(committed > 0 && committed < photos);
        eprintln!(
            "round {round}: {} after {delay:?}: {committed} of {photos} photos and {named} \
             people committed",
            if killed { "killed" } else { "ended" }
        );
        run_ok(import(&db));
        assert_eq!(
            people_without_ids(root, &db),
            reference,
            "round {round}: the re-run differs from an uninterrupted import"
        );
    }
    report(&format!(
        "people import: {rounds} rounds over a {duration:?} run: {mid_run} kills landed mid-run, \
         {partial} with some but not all photos enrolled"
    ));
    assert!(
        mid_run >= MID_RUN_KILLS,
        "only {mid_run} kills landed mid-run"
    );
}

/// SIGKILL of `facekit cluster` (36 LFW photos of 9 people: more than one write batch) at seeded
/// random moments, from an empty library (kills land while photos are analysed) and from a
/// library where every photo is analysed but none clustered (kills land while people are
/// recorded and photos placed); each start state's delays spread over its own measured run.
/// After each kill: the library opens and passes its integrity checks, what the killed run put
/// in its OUT is where the uninterrupted run put it, and the re-run (into a fresh OUT) embeds
/// only the photos the killed run had not committed and gives every face the same person, and
/// every folder the same photos, as the uninterrupted run. Also: clustering the unchanged album
/// again changes nothing.
#[test]
fn cluster_killed_at_random_moments() {
    let Some(shared) = common::shared("cluster_killed_at_random_moments") else {
        return;
    };
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let album = root.join("album");
    let people = [
        "Bill_Frist",
        "Colin_Farrell",
        "George_Clooney",
        "Hugh_Grant",
        "Jimmy_Carter",
        "Kate_Hudson",
        "Li_Peng",
        "Ray_Romano",
        "Vaclav_Havel",
    ];
    let photos: Vec<PathBuf> = people
        .iter()
        .flat_map(|p| (1..=4).map(|k| lfw(&shared, p, k)))
        .collect();
    assert!(photos.len() > facekit::library::BATCH);
    copy_into(&album, &photos);
    let run = |db: &Path, out: &Path| {
        command(root, db, &["cluster", s(&album), "--out", s(out), "--json"])
    };

    // The uninterrupted run, then the same album again on its library: nothing changes.
    let (db, out) = (root.join("reference.db"), root.join("reference"));
    let started = Instant::now();
    run_ok(run(&db, &out));
    let cold_duration = started.elapsed();
    let reference = faces_of(&common::read_json(&out.join("clusters.json")));
    let ref_folders = folders(&out);
    let clustered: BTreeSet<i64> = reference.values().filter_map(|f| f.0).collect();
    assert!(clustered.len() >= people.len(), "{ref_folders:?}");
    let again = root.join("again");
    let summary = json(&run_ok(run(&db, &again)));
    assert_eq!(summary["analysed"], 0, "{summary}");
    assert_eq!(
        faces_of(&common::read_json(&again.join("clusters.json"))),
        reference,
        "clustering the unchanged album again changed who is who"
    );
    assert_eq!(folders(&again), ref_folders);

    // Every photo analysed, nobody clustered: the state a run reaches before it records people.
    let warm = root.join("warm.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute("VACUUM INTO ?1", [s(&warm)]).unwrap();
        let conn = rusqlite::Connection::open(&warm).unwrap();
        conn.execute_batch("DELETE FROM assignments; DELETE FROM people;")
            .unwrap();
    }
    // The shortest of three runs: one run can be slowed by the other tests of this binary, and
    // kill moments past the end of the real run never land mid-run.
    let mut warm_duration = Duration::MAX;
    for i in 0..3 {
        let (db, out) = (
            root.join(format!("warm-run{i}.db")),
            root.join(format!("warm-run{i}")),
        );
        std::fs::copy(&warm, &db).unwrap();
        let started = Instant::now();
        let summary = json(&run_ok(run(&db, &out)));
        warm_duration = warm_duration.min(started.elapsed());
        assert_eq!(summary["analysed"], 0, "{summary}");
        assert_eq!(
            faces_of(&common::read_json(&out.join("clusters.json"))),
            reference
        );
    }

    let mut rng = facekit::Rng::new(0xc1_0575);
    let (mut mid_run, mut rounds) = (0, 0);
    // Where the kills landed: nothing committed, some photos committed, every photo analysed
    // but nobody clustered, clustering committed (placing photos or writing reports).
    let mut phases = [0usize; 4];
    let starts = [(None, cold_duration), (Some(&warm), warm_duration)];
    for ((start, duration), kills) in starts.into_iter().zip(CLUSTER_KILLS) {
        let (mut mid_run_here, mut rounds_here) = (0, 0);
        while mid_run_here < kills && rounds_here < MAX_ROUNDS / 2 {
            let round = rounds;
            rounds += 1;
            rounds_here += 1;
            let db = root.join(format!("cluster{round}.db"));
            if let Some(warm) = start {
                std::fs::copy(warm, &db).unwrap();
            }
            let killed_out = root.join(format!("killed{round}"));
            // Most kills at a random moment of the run; some aimed at the short windows a
            // uniform moment rarely hits: after the first batch of photos is committed (empty
            // library), while photos are placed (analysed library); then a random few ms.
            let delay = kill_delay(&mut rng, duration);
            let aimed = round % 3 == 2;
            // The aimed windows shrink as the runs get faster: the jitter stays within an
            // eighth of the measured run (placing photos takes a few ms of a ~100 ms run).
            let cap: u64 = if start.is_some() { 50_000 } else { 300_000 };
            let cap = cap.min(duration.as_micros() as u64 / 8).max(1);
            let jitter = Duration::from_micros(rng.below(cap as _) as u64);
            let killed = match (aimed, start) {
                (false, _) => kill_when(run(&db, &killed_out), |t| t >= delay, Duration::ZERO),
                (true, None) => kill_when(run(&db, &killed_out), |_| analyses_now(&db) > 0, jitter),
                (true, Some(_)) => {
                    kill_when(run(&db, &killed_out), |_| placing(&killed_out), jitter)
                }
            };
            let conn = check_database(&db, round);
            let analysed = count(&conn, "SELECT count(*) FROM analyses");
            let assigned = count(&conn, "SELECT count(*) FROM assignments");
            drop(conn);
            mid_run_here += usize::from(killed);
            let phase = match (analysed, assigned) {
                (0, _) => 0,
                (a, 0) if a < photos.len() => 1,
                (_, 0) => 2,
                _ => 3,
            };
            if killed {
                phases[phase] += 1;
            }
            eprintln!(
                "round {round} ({} library): {} {}: {analysed} photos analysed, {assigned} faces \
                 assigned",
                if start.is_some() { "analysed" } else { "empty" },
                if killed { "killed" } else { "ended" },
                if aimed {
                    format!("{jitter:?} after the aimed moment")
                } else {
                    format!("after {delay:?}")
                }
            );
            // What the killed run placed is where it belongs.
            if killed_out.exists() {
                for (folder, files) in folders(&killed_out) {
                    for f in files.iter().filter(|f| !f.starts_with(".fk-")) {
                        assert!(
                            ref_folders.get(&folder).is_some_and(|r| r.contains(f)),
                            "round {round}: the killed run put {f} in {folder}/"
                        );
                    }
                }
            }
            let rerun_out = root.join(format!("rerun{round}"));
            let summary = json(&run_ok(run(&db, &rerun_out)));
            assert_eq!(
                summary["analysed"],
                photos.len() - analysed,
                "round {round}: the re-run embeds exactly what the killed run had not committed"
            );
            let c = common::read_json(&rerun_out.join("clusters.json"));
            assert_eq!(
                faces_of(&c),
                reference,
                "round {round}: a face's person differs from the uninterrupted run"
            );
            assert_eq!(
                folders(&rerun_out),
                ref_folders,
                "round {round}: folders differ from the uninterrupted run"
            );
        }
        mid_run += mid_run_here;
    }
    report(&format!(
        "cluster: {rounds} rounds over runs of {cold_duration:?} (empty library) and \
         {warm_duration:?} (photos analysed): {mid_run} kills landed mid-run ({} before any \
         commit, {} with some photos committed, {} with every photo analysed and nobody \
         clustered, {} after the clustering was committed)",
        phases[0], phases[1], phases[2], phases[3]
    ));
    assert!(
        mid_run >= MID_RUN_KILLS,
        "only {mid_run} kills landed mid-run"
    );
}
