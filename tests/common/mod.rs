//! Helpers shared by the integration tests: fixture paths, the optional ../shared data, the
//! detector, and running the real binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// `../shared` beside the project root, when present. Prints a loud SKIP line when it is not.
pub fn shared(test: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if dir.join("golden").is_dir() {
        Some(dir)
    } else {
        // Written straight to stderr (not eprintln!, which the test harness captures), so the
        // skip shows in every `cargo test` run.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: ../shared (golden outputs and data sets) is not beside the project root"
        );
        None
    }
}

/// The default detector with the embedded weights.
pub fn detector() -> facekit::Detector {
    facekit::Detector::new(&facekit::models::ModelSource::Embedded, Default::default())
        .expect("embedded MTCNN weights load")
}

/// The real `facekit` binary, isolated from the user's environment: no `FACEKIT_MODELS`, and a
/// face library of its own (a fresh file under cargo's test scratch folder) unless the
/// arguments name one.
pub fn facekit_command() -> Command {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("libraries");
    std::fs::create_dir_all(&dir).expect("test scratch folder");
    let db = dir.join(format!(
        "{}-{}.db",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_facekit"));
    cmd.env_remove("FACEKIT_MODELS")
        .env_remove("FACEKIT_CACHE")
        .env("FACEKIT_LIBRARY", db);
    cmd
}

/// Runs the real `facekit` binary (see [`facekit_command`]).
pub fn facekit(args: &[&str]) -> Output {
    facekit_command().args(args).output().expect("run facekit")
}

/// Reads a JSON file.
pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Parses JSON Lines output (one object per line).
pub fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// A `[x1, y1, x2, y2]` JSON array as numbers.
pub fn json_box(v: &serde_json::Value) -> [f64; 4] {
    let b: Vec<f64> = v
        .as_array()
        .unwrap_or_else(|| panic!("not a box: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    [b[0], b[1], b[2], b[3]]
}

/// The boxes of a `detect --json` record's faces, in its order.
pub fn face_boxes(record: &serde_json::Value) -> Vec<[f64; 4]> {
    record["faces"]
        .as_array()
        .unwrap_or_else(|| panic!("no faces in {record}"))
        .iter()
        .map(|f| json_box(&f["box"]))
        .collect()
}
