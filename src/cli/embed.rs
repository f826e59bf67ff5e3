//! `facekit embed`: one embedding per face, as JSON Lines, CSV or a NumPy `.npy` matrix.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use facekit::io::{self, LoadOptions};
use facekit::Face;
use serde::Serialize;

use super::output::{display_path, json_line};
use super::runner::{collect_inputs, exit_status, progress, run_ordered, thread_pool};
use super::CommonArgs;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per face.
    Jsonl,
    /// A header, then one row per face: path, face, box, score, e0..eN.
    Csv,
    /// A float32 matrix (faces x dims) in NumPy's .npy format; needs --out.
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
    embedding: super::EmbeddingArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Serialize)]
struct FaceRecord<'a> {
    path: &'a str,
    face: usize,
    #[serde(rename = "box")]
    bbox: [f32; 4],
    score: f32,
    embedding: &'a [f32],
}

/// The `.npy` bytes of a row-major float32 matrix.
fn npy(rows: &[Vec<f32>], dim: usize) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        rows.len(),
        dim
    );
    // Magic (6) + version (2) + length (2) + header + '\n', padded to a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    for r in rows {
        for v in r {
            out.extend(v.to_le_bytes());
        }
    }
    out
}

pub fn run(args: EmbedArgs) -> anyhow::Result<ExitCode> {
    if args.format == Format::Npy && args.out.is_none() {
        anyhow::bail!("--format npy writes binary data: give --out FILE");
    }
    if let Some(out) = &args.out {
        if out.exists() && !args.force {
            anyhow::bail!(
                "{} already exists (use --force to replace it)",
                out.display()
            );
        }
    }
    let pipeline = args.embedding.pipeline(&args.common)?;
    let dim = pipeline.dim();
    let load = LoadOptions {
        max_pixels: args.common.max_pixels,
        ..LoadOptions::default()
    };
    let pool = thread_pool(args.common.threads)?;
    let (inputs, mut failures) = collect_inputs(&args.paths, |e| eprintln!("facekit: error: {e}"));
    // Text goes to stdout as it is produced, or into a buffer written atomically at the end.
    let mut text = String::new();
    let mut rows: Vec<Vec<f32>> = Vec::new();
    let to_stdout = args.out.is_none();
    if args.format == Format::Csv {
        let mut line = String::from("path,face,x1,y1,x2,y2,score");
        (0..dim).for_each(|i| line.push_str(&format!(",e{i}")));
        emit(&mut text, to_stdout, &line);
    }
    let pb = progress(inputs.len(), "images");
    let job = |path: &PathBuf| -> facekit::Result<Vec<Face>> {
        let img = io::load_image(path, &load)?;
        pipeline.faces(&img)
    };
    let (mut images, mut faces_total) = (0usize, 0usize);
    run_ordered(&pool, &inputs, &pb, job, |i, result| {
        let path = display_path(&inputs[i]);
        match result {
            Ok(faces) => {
                images += 1;
                faces_total += faces.len();
                for (k, f) in faces.iter().enumerate() {
                    match args.format {
                        Format::Jsonl => {
                            let rec = FaceRecord {
                                path: &path,
                                face: k,
                                bbox: f.bbox.to_array(),
                                score: f.score,
                                embedding: &f.embedding,
                            };
                            if to_stdout {
                                json_line(&rec);
                            } else if let Ok(s) = serde_json::to_string(&rec) {
                                text.push_str(&s);
                                text.push('\n');
                            }
                        }
                        Format::Csv => {
                            let b = f.bbox;
                            let mut line = format!(
                                "{},{k},{},{},{},{},{}",
                                csv_field(&path),
                                b.x1,
                                b.y1,
                                b.x2,
                                b.y2,
                                f.score
                            );
                            f.embedding
                                .iter()
                                .for_each(|v| line.push_str(&format!(",{v}")));
                            emit(&mut text, to_stdout, &line);
                        }
                        Format::Npy => rows.push(f.embedding.clone()),
                    }
                }
            }
            Err(e) => {
                failures += 1;
                eprintln!("facekit: error: {e}");
            }
        }
    });
    if let Some(out) = &args.out {
        let bytes = match args.format {
            Format::Npy => npy(&rows, dim),
            _ => text.into_bytes(),
        };
        io::write_file_atomic(out, &bytes, args.force)?;
    }
    eprintln!(
        "{images} image(s), {faces_total} face(s) embedded{}",
        if failures > 0 {
            format!(", {failures} failed")
        } else {
            String::new()
        }
    );
    Ok(exit_status(failures))
}

fn emit(buf: &mut String, to_stdout: bool, line: &str) {
    if to_stdout {
        println!("{line}");
    } else {
        buf.push_str(line);
        buf.push('\n');
    }
}

/// A CSV field, quoted when it holds a comma, quote or newline.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
