//! Writes camera-photo stand-ins for benchmarks: N images of the WIDER FACE val subset (sorted
//! by path, after the first S) resized (bicubic) to about MP megapixels each, as JPEG (quality 92).
//!
//! cargo run --release --example camera_photos -- OUT_DIR [--count N] [--skip S]
//!     [--megapixels MP] [--shared DIR] [--from DIR]
//!
//! `--from DIR` takes the images of DIR (walked recursively) instead of WIDER's.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use facekit::io::{load_image, LoadOptions};

fn main() -> Result<()> {
    let mut shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let mut out: Option<PathBuf> = None;
    let mut count = 5usize;
    let mut skip = 0usize;
    let mut from: Option<PathBuf> = None;
    let mut megapixels = 24.0f64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--count" => count = args.next().context("--count N")?.parse()?,
            "--skip" => skip = args.next().context("--skip S")?.parse()?,
            "--megapixels" => megapixels = args.next().context("--megapixels MP")?.parse()?,
            "--from" => from = Some(PathBuf::from(args.next().context("--from DIR")?)),
            "--shared" => shared = PathBuf::from(args.next().context("--shared DIR")?),
            other if out.is_none() && !other.starts_with('-') => out = Some(other.into()),
            other => bail!("unknown argument {other}"),
        }
    }
    let out =
        out.context("usage: camera_photos OUT_DIR [--count N] [--skip S] [--megapixels MP]")?;
    let root = from.unwrap_or_else(|| shared.join("data/widerface-val-subset/images"));
    let mut images: Vec<PathBuf> = facekit::io::collect_inputs(std::slice::from_ref(&root))
        .into_iter()
        .filter_map(|r| r.ok())
        .collect();
    if images.is_empty() {
        bail!("no images under {}", root.display());
    }
    images.sort();
    std::fs::create_dir_all(&out)?;
    for path in images.iter().skip(skip).take(count) {
        let img = load_image(path, &LoadOptions::default())?;
        let k = (megapixels * 1e6 / (img.width() as f64 * img.height() as f64)).sqrt();
        let (w, h) = (
            (img.width() as f64 * k).round() as u32,
            (img.height() as f64 * k).round() as u32,
        );
        let big = image::imageops::resize(&img, w, h, image::imageops::FilterType::CatmullRom);
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 92).encode_image(&big)?;
        // Folder and file name: photo collections often reuse file names (1.jpg) per folder.
        let folder = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|f| format!("{}_", f.to_string_lossy()))
            .unwrap_or_default();
        let name = path
            .file_name()
            .context("image without a name")?
            .to_string_lossy();
        let dst = out.join(format!("{folder}{name}"));
        std::fs::write(&dst, bytes)?;
        println!("{}\t{w}x{h}", dst.display());
    }
    Ok(())
}
