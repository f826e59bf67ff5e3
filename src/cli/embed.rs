//! `facekit embed`: one embedding per face, as JSON Lines, CSV or a NumPy `.npy` matrix.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use facekit::io::{self, LoadOptions};
use facekit::Face;
use serde::Serialize;

use facekit::io::JsonPath;

use super::output::{csv_path, flush_stdout, note, write_stdout};
use super::runner::{exit_status, inputs, progress, run_ordered_with, thread_pool};
use super::CommonArgs;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per face.
    Jsonl,
    /// A header, then one row per face: path, face, box, score, e0..eN.
    Csv,
    /// A float32 matrix (faces x dims) in NumPy's .npy format, plus a CSV sidecar naming each
    /// row's file and face (`faces.npy` -> `faces.csv`); needs --out.
    Npy,
}

/// Arguments of `facekit embed`.
#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Image files or directories (walked recursively).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    format: Format,
    /// Write to FILE (atomically) instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Replace FILE if it exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    faces: super::FaceSizeArgs,
    #[command(flatten)]
    library: super::LibraryArgs,
    #[command(flatten)]
    embedding: super::EmbeddingArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Serialize)]
struct FaceRecord<'a> {
    path: JsonPath<'a>,
    face: usize,
    #[serde(rename = "box")]
    bbox: [f32; 4],
    score: f32,
    embedding: &'a [f32],
}

/// The `.npy` bytes of a row-major float32 matrix (faces x dims), written with ndarray-npy.
fn npy(rows: &[Vec<f32>], dim: usize) -> anyhow::Result<Vec<u8>> {
    use ndarray_npy::WriteNpyExt;
    let flat: Vec<f32> = rows.concat();
    let matrix = ndarray::Array2::from_shape_vec((rows.len(), dim), flat)?;
    let mut out = Vec::new();
    matrix.write_npy(&mut out)?;
    Ok(out)
}

/// The sidecar of an `.npy` output: `faces.npy` -> `faces.csv` (`x` -> `x.csv`).
fn sidecar_path(out: &Path) -> PathBuf {
    if out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
    {
        out.with_extension("csv")
    } else {
        let mut name = out.as_os_str().to_owned();
        name.push(".csv");
        PathBuf::from(name)
    }
}

/// The header of the `.npy` sidecar: which file and face each matrix row is.
const SIDECAR_HEADER: &str = "row,path,face,x1,y1,x2,y2,score\n";

/// One sidecar line: the matrix row, then the face as `--format csv` gives it.
fn sidecar_line(row: usize, path: &Path, k: usize, f: &Face) -> Vec<u8> {
    let b = f.bbox;
    let mut line = format!("{row},").into_bytes();
    line.extend(csv_path(path));
    line.extend(format!(",{k},{},{},{},{},{}\n", b.x1, b.y1, b.x2, b.y2, f.score).as_bytes());
    line
}

pub fn run(args: EmbedArgs) -> anyhow::Result<ExitCode> {
    if args.format == Format::Npy && args.out.is_none() {
        anyhow::bail!("--format npy writes binary data: give --out FILE");
    }
    let sidecar = match (&args.out, args.format) {
        (Some(out), Format::Npy) => Some(sidecar_path(out)),
        _ => None,
    };
    for file in args.out.iter().chain(&sidecar) {
        io::check_output_file(file, args.force)?;
    }
    let pipeline = args.embedding.pipeline(&args.common, args.faces.min_face)?;
    let dim = pipeline.dim();
    let load = LoadOptions {
        max_pixels: args.common.max_pixels,
        ..LoadOptions::default()
    };
    let pool = thread_pool(args.common.threads)?;
    let inputs = inputs(&args.paths);
    // Records go to stdout as they are produced, or into a buffer written atomically at the end.
    let mut sink = Sink {
        format: args.format,
        to_stdout: args.out.is_none(),
        buf: Vec::new(),
        rows: Vec::new(),
        index: SIDECAR_HEADER.as_bytes().to_vec(),
    };
    if args.format == Format::Csv {
        let mut line = String::from("path,face,x1,y1,x2,y2,score");
        (0..dim).for_each(|i| line.push_str(&format!(",e{i}")));
        line.push('\n');
        sink.emit(line.as_bytes());
    }
    let pb = progress(inputs.len(), "images");
    let library = args.library.open()?;
    // Photos seen before by the same pipeline come from the face library; the others are
    // detected in parallel and their faces embedded in batches across photos.
    let drive = |files: &[&Path], done: &(dyn Fn(usize, facekit::Result<Vec<Face>>) + Sync)| {
        library.faces_of_files(&pipeline, files, &load, false, &|k, r| {
            done(k, r.map(|(faces, _)| faces.faces.clone()))
        })
    };
    let (mut images, mut faces_total, mut failures) = (0usize, 0usize, 0usize);
    run_ordered_with(&pool, &inputs, &pb, drive, |i, result| match result {
        Ok(faces) => {
            let path = inputs[i].as_deref().unwrap_or(Path::new(""));
            images += 1;
            faces_total += faces.len();
            for (k, f) in faces.iter().enumerate() {
                sink.face(path, k, f);
            }
        }
        Err(e) => {
            failures += 1;
            super::output::report(&e);
        }
    });
    flush_stdout();
    library.flush()?;
    if let Some(out) = &args.out {
        sink.write(out, sidecar.as_deref(), dim, args.force)?;
    }
    note!(
        "{images} image(s), {faces_total} face(s) embedded{}",
        if failures > 0 {
            format!(", {failures} failed")
        } else {
            String::new()
        }
    );
    Ok(exit_status(failures))
}

/// Where records go: standard output as they come, or a buffer for `--out` (for `npy`, the
/// matrix rows and the sidecar's lines).
struct Sink {
    format: Format,
    to_stdout: bool,
    buf: Vec<u8>,
    rows: Vec<Vec<f32>>,
    index: Vec<u8>,
}

impl Sink {
    fn emit(&mut self, bytes: &[u8]) {
        if self.to_stdout {
            write_stdout(bytes);
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Face `k` of the photo at `path`, in the output format.
    fn face(&mut self, path: &Path, k: usize, f: &Face) {
        match self.format {
            Format::Jsonl => {
                let rec = FaceRecord {
                    path: JsonPath(path),
                    face: k,
                    bbox: f.bbox.to_array(),
                    score: f.score,
                    embedding: &f.embedding,
                };
                if let Ok(mut line) = serde_json::to_vec(&rec) {
                    line.push(b'\n');
                    self.emit(&line);
                }
            }
            Format::Csv => {
                let b = f.bbox;
                let mut line = csv_path(path);
                let mut rest = format!(",{k},{},{},{},{},{}", b.x1, b.y1, b.x2, b.y2, f.score);
                f.embedding
                    .iter()
                    .for_each(|v| rest.push_str(&format!(",{v}")));
                rest.push('\n');
                line.extend(rest.as_bytes());
                self.emit(&line);
            }
            Format::Npy => {
                let line = sidecar_line(self.rows.len(), path, k, f);
                self.index.extend(line);
                self.rows.push(f.embedding.clone());
            }
        }
    }

    /// Writes the buffered output to `out` (and the `.npy` sidecar), atomically.
    fn write(
        self,
        out: &Path,
        sidecar: Option<&Path>,
        dim: usize,
        force: bool,
    ) -> anyhow::Result<()> {
        let bytes = match self.format {
            Format::Npy => npy(&self.rows, dim)?,
            _ => self.buf,
        };
        io::write_file_atomic(out, &bytes, force)?;
        if let Some(sidecar) = sidecar {
            io::write_file_atomic(sidecar, &self.index, force)?;
            note!(
                "facekit: wrote {} ({} x {dim} float32) and {} (row -> path, face, box, score)",
                out.display(),
                self.rows.len(),
                sidecar.display()
            );
        }
        Ok(())
    }
}
