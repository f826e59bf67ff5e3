//! Output records and writers: standard output through one buffered writer (a closed pipe ends
//! the run quietly, any other write error is reported with exit 2), the JSON Lines schema, paths
//! in JSON and CSV, the human-readable table, and how much is said on stderr besides errors
//! (`-q` / `-v`: [`Verbosity`], [`note!`], [`verbose!`]).

use std::io::{BufWriter, IsTerminal, Stdout, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use facekit::io::JsonPath;
use facekit::Detection;
use serde::Serialize;

/// Standard output, buffered (flushed per line on a terminal).
static STDOUT: Mutex<Option<BufWriter<Stdout>>> = Mutex::new(None);

/// What happens when standard output cannot be written: a closed pipe (`| head`) ends the run
/// quietly with exit 0, as ripgrep does; anything else (a full disk) is an error, exit 2.
fn write_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("facekit: error: cannot write to standard output: {e}");
    std::process::exit(super::EXIT_FAILURE.into());
}

/// Writes `text` to standard output.
pub fn write_stdout(text: &[u8]) {
    let mut guard = STDOUT.lock().unwrap_or_else(|p| p.into_inner());
    let out = guard.get_or_insert_with(|| BufWriter::with_capacity(1 << 16, std::io::stdout()));
    if let Err(e) = out.write_all(text) {
        write_failed(e);
    }
    if std::io::stdout().is_terminal() {
        if let Err(e) = out.flush() {
            write_failed(e);
        }
    }
}

/// Flushes standard output (at the end of a run); a failure is reported as any write failure.
pub fn flush_stdout() {
    let mut guard = STDOUT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(out) = guard.as_mut() {
        if let Err(e) = out.flush() {
            write_failed(e);
        }
    }
}

/// How much facekit says on stderr besides its data (stdout) and its errors and warnings (always
/// printed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// `-q`: no progress bars, no notes.
    Quiet,
    /// The default: progress bars on a terminal, and notes (summaries, files written).
    Normal,
    /// `-v`: also what the run uses (device, kernels, threads, models, library), once each.
    Verbose,
}

/// The run's [`Verbosity`], set once by the parser ([`set_verbosity`]).
static VERBOSITY: AtomicU8 = AtomicU8::new(Verbosity::Normal as u8);

/// Sets the run's verbosity (from `-q` / `-v`).
pub fn set_verbosity(v: Verbosity) {
    VERBOSITY.store(v as u8, Ordering::Relaxed);
}

/// The run's verbosity.
pub fn verbosity() -> Verbosity {
    match VERBOSITY.load(Ordering::Relaxed) {
        0 => Verbosity::Quiet,
        1 => Verbosity::Normal,
        _ => Verbosity::Verbose,
    }
}

/// Writes an informational line to stderr, unless `-q`.
pub fn note_line(line: &str) {
    if verbosity() > Verbosity::Quiet {
        eprintln!("{line}");
    }
}

/// Lines already written by [`verbose_line`] (each is said once per run).
static SAID: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Writes `facekit: <line>` to stderr with `-v`, once per run for the same line.
pub fn verbose_line(line: &str) {
    if verbosity() < Verbosity::Verbose {
        return;
    }
    let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
    if !said.iter().any(|s| s == line) {
        eprintln!("facekit: {line}");
        said.push(line.to_string());
    }
}

/// `eprintln!` for informational notes (summaries, files written): silenced by `-q`. Errors and
/// warnings use `eprintln!` and are always printed.
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::cli::output::note_line(&format!($($arg)*))
    };
}
pub(crate) use note;

/// A `-v` line on stderr (`facekit: ...`), said once per run; the text is only formatted with
/// `-v`.
macro_rules! verbose {
    ($($arg:tt)*) => {
        if $crate::cli::output::verbosity() == $crate::cli::output::Verbosity::Verbose {
            $crate::cli::output::verbose_line(&format!($($arg)*))
        }
    };
}
pub(crate) use verbose;

/// `println!` through the buffered standard output.
macro_rules! outln {
    () => {
        $crate::cli::output::write_stdout(b"\n")
    };
    ($($arg:tt)*) => {{
        let mut line = format!($($arg)*);
        line.push('\n');
        $crate::cli::output::write_stdout(line.as_bytes())
    }};
}
pub(crate) use outln;

/// One face as printed: `{"box": [x1,y1,x2,y2], "score": s, "landmarks": [[x,y] x5]}`.
#[derive(Serialize)]
pub struct FaceRecord {
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub score: f32,
    pub landmarks: [[f32; 2]; 5],
}

impl From<&Detection> for FaceRecord {
    fn from(d: &Detection) -> Self {
        FaceRecord {
            bbox: d.bbox.to_array(),
            score: d.score,
            landmarks: d.landmarks.map(|p| [p.x, p.y]),
        }
    }
}

/// One image's detections (`facekit detect --json`).
#[derive(Serialize)]
pub struct ImageRecord<'a> {
    pub path: JsonPath<'a>,
    pub width: u32,
    pub height: u32,
    pub faces: Vec<FaceRecord>,
}

/// A file that could not be processed.
#[derive(Serialize)]
pub struct ErrorRecord<'a> {
    pub path: JsonPath<'a>,
    pub error: &'a str,
}

/// Prints one JSON object on its own line.
pub fn json_line<T: Serialize>(value: &T) {
    match serde_json::to_vec(value) {
        Ok(mut s) => {
            s.push(b'\n');
            write_stdout(&s);
        }
        Err(e) => eprintln!("facekit: error: cannot serialise output: {e}"),
    }
}

/// A path as shown to people (lossy UTF-8; machine-readable output uses [`JsonPath`] or
/// [`csv_path`]).
pub fn display_path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A path as a CSV field: its bytes exactly as they are (so a name that is not UTF-8 still
/// identifies its file), quoted when it holds a comma, quote or line break.
pub fn csv_path(path: &Path) -> Vec<u8> {
    let bytes = facekit::io::path_bytes(path);
    if bytes
        .iter()
        .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
    {
        let mut out = vec![b'"'];
        for &b in &bytes {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
        out
    } else {
        bytes
    }
}

/// The detection table: a header, then one row per face (or one "no faces" row per image).
pub struct DetectTable;

impl DetectTable {
    /// Prints the column header.
    pub fn header() {
        outln!(
            "{:>4}  {:>6}  {:>7} {:>7} {:>7} {:>7}  PATH",
            "FACE",
            "SCORE",
            "X1",
            "Y1",
            "X2",
            "Y2"
        );
    }

    /// Prints one image's rows.
    pub fn rows(path: &str, faces: &[Detection]) {
        if faces.is_empty() {
            outln!("{:>4}  {:>6}  {:<31}  {path}", "-", "-", "(no faces)");
        }
        for (k, f) in faces.iter().enumerate() {
            let b = f.bbox;
            outln!(
                "{:>4}  {:>6.4}  {:>7.1} {:>7.1} {:>7.1} {:>7.1}  {path}",
                k,
                f.score,
                b.x1,
                b.y1,
                b.x2,
                b.y2
            );
        }
    }
}

/// What a user can do about an error, in this CLI's flags (the library's messages name none).
pub fn hint(e: &facekit::Error) -> &'static str {
    match e {
        facekit::Error::TooLarge { .. } => " (raise the limit with --max-pixels)",
        facekit::Error::Exists { .. } => " (use --force to replace it)",
        _ => "",
    }
}

/// Prints a per-file error on stderr with its hint; the run goes on.
pub fn report(e: &facekit::Error) {
    eprintln!("facekit: error: {e}{}", hint(e));
}
