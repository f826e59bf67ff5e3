//! Everything that touches files: decoding images by content (JPEG, PNG, WebP, BMP, TIFF, GIF),
//! EXIF orientation, pixel limits, walking directories, and atomic no-overwrite writes.

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::{Error, Result};

/// Default refusal limit: images over 100 megapixels are not decoded.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// Formats facekit decodes (the first frame of a GIF).
const SUPPORTED: &[ImageFormat] = &[
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::WebP,
    ImageFormat::Bmp,
    ImageFormat::Tiff,
    ImageFormat::Gif,
];

/// How images are decoded.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Refuse images with more pixels than this (checked before decoding).
    pub max_pixels: u64,
    /// Apply the EXIF orientation tag so coordinates refer to the upright image.
    pub apply_exif_orientation: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_pixels: DEFAULT_MAX_PIXELS,
            apply_exif_orientation: true,
        }
    }
}

/// The image format of `bytes`, recognised by content (magic bytes), if facekit supports it.
pub fn sniff_format(bytes: &[u8]) -> Option<ImageFormat> {
    image::guess_format(bytes)
        .ok()
        .filter(|f| SUPPORTED.contains(f))
}

/// Reads and decodes an image file into upright 8-bit RGB.
///
/// Errors name the file and the reason: unreadable, empty, not an image, truncated, or over the
/// pixel limit.
pub fn load_image(path: &Path, opts: &LoadOptions) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_image(&bytes, opts).map_err(|reason| Error::image(path, reason))
}

/// Decodes image bytes (format by content) into upright 8-bit RGB; the error is a reason
/// suitable for showing after a file name.
pub fn decode_image(bytes: &[u8], opts: &LoadOptions) -> std::result::Result<RgbImage, String> {
    if bytes.is_empty() {
        return Err("empty file (0 bytes)".to_string());
    }
    let format = match image::guess_format(bytes) {
        Ok(f) if SUPPORTED.contains(&f) => f,
        Ok(f) => return Err(format!("unsupported image format {f:?}")),
        Err(_) => {
            return Err(
                "not a recognised image (content is not JPEG, PNG, WebP, BMP, TIFF or GIF)"
                    .to_string(),
            )
        }
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    // Room for the largest accepted image at 16-bit RGBA plus decoder scratch.
    limits.max_alloc = Some(opts.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| format!("cannot decode {format:?}: {e}"))?;
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    if pixels > opts.max_pixels {
        return Err(format!(
            "image is {w}x{h} ({:.1} MP), over the {:.1} MP limit (raise it with --max-pixels)",
            pixels as f64 / 1e6,
            opts.max_pixels as f64 / 1e6
        ));
    }
    if pixels == 0 {
        return Err(format!("image has no pixels ({w}x{h})"));
    }
    // A malformed EXIF block is not worth refusing the image for: keep it as stored.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = match format {
        // libjpeg-turbo's decoder (via mozjpeg): the same pixels Pillow, OpenCV and so the Python
        // peers see. zune-jpeg (image's default) differs by a grey level here and there, which is
        // enough to flip MTCNN's NMS choices on some faces. Unusual JPEGs (CMYK, arithmetic
        // coding) fall back to image's decoder.
        ImageFormat::Jpeg => match decode_jpeg_libjpeg(bytes) {
            Ok(rgb) => DynamicImage::ImageRgb8(rgb),
            Err(JpegError::Truncated) => {
                return Err(
                    "truncated JPEG (no end-of-image marker after the last scan)".to_string(),
                )
            }
            Err(JpegError::Unsupported) => DynamicImage::from_decoder(decoder)
                .map_err(|e| format!("cannot decode {format:?}: {e}"))?,
        },
        _ => DynamicImage::from_decoder(decoder)
            .map_err(|e| format!("cannot decode {format:?}: {e}"))?,
    };
    if opts.apply_exif_orientation {
        img.apply_orientation(orientation);
    }
    Ok(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

enum JpegError {
    /// The file ends before its end-of-image marker.
    Truncated,
    /// libjpeg refused it (e.g. CMYK or arithmetic coding): try image's decoder.
    Unsupported,
}

/// True when a JPEG's last scan is followed by an end-of-image marker. Entropy-coded data cannot
/// contain `FF D9` or `FF DA` (0xFF bytes are stuffed), so a missing EOI after the last SOS means
/// the file was cut short; libjpeg would silently pad such a file with grey.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        Some(sos) => bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

/// Decodes a JPEG to RGB with libjpeg-turbo's algorithms (accurate integer IDCT, fancy upsampling).
fn decode_jpeg_libjpeg(bytes: &[u8]) -> std::result::Result<RgbImage, JpegError> {
    if !jpeg_is_complete(bytes) {
        return Err(JpegError::Truncated);
    }
    let other = |_: std::io::Error| JpegError::Unsupported;
    let mut started = mozjpeg::Decompress::new_mem(bytes)
        .map_err(other)?
        .rgb()
        .map_err(other)?;
    let (w, h) = (started.width() as u32, started.height() as u32);
    let pixels: Vec<u8> = started.read_scanlines().map_err(other)?;
    started.finish().map_err(other)?;
    RgbImage::from_raw(w, h, pixels).ok_or(JpegError::Unsupported)
}

/// The input files named by `paths`: files as given, directories walked recursively (sorted)
/// keeping only files whose content is a supported image. Paths that do not exist or cannot be
/// read are returned as errors, in order, so a run can report them and go on.
pub fn collect_inputs(paths: &[PathBuf]) -> Vec<std::result::Result<PathBuf, Error>> {
    let mut out = Vec::new();
    for path in paths {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => walk_dir(path, &mut out),
            Ok(_) => out.push(Ok(path.clone())),
            Err(e) => out.push(Err(Error::io(path, e))),
        }
    }
    out
}

fn walk_dir(dir: &Path, out: &mut Vec<std::result::Result<PathBuf, Error>>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => return out.push(Err(Error::io(dir, e))),
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        // symlink_metadata: do not follow links into directories (no cycles); linked files are
        // followed by the content check below.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk_dir(&path, out);
        } else if looks_like_image(&path) {
            out.push(Ok(path));
        }
    }
}

/// True when the file's first bytes are those of a supported image format.
fn looks_like_image(path: &Path) -> bool {
    let mut head = [0u8; 32];
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return false,
        }
    }
    sniff_format(&head[..n]).is_some()
}

/// Writes `bytes` to a new file `dir/<stem><suffix>` without ever replacing an existing file:
/// on a name collision `-1`, `-2`, ... is appended to the stem. The data goes to a temporary file
/// first and appears under its final name complete or not at all. Returns the path written.
pub fn write_new_file(dir: &Path, stem: &str, suffix: &str, bytes: &[u8]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = write_temp(dir, &format!("{stem}{suffix}"), bytes)?;
    // A hard link fails if the target exists: an atomic "create new".
    let result = place_new(dir, stem, suffix, |target| std::fs::hard_link(&tmp, target));
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Creates `dir/<stem><suffix>` with `place`, which must fail with `AlreadyExists` rather than
/// replace a file (a hard link, a symlink, `create_new`); on a collision it tries `<stem>-1`,
/// `<stem>-2`, ... Returns the path created.
pub fn place_new(
    dir: &Path,
    stem: &str,
    suffix: &str,
    mut place: impl FnMut(&Path) -> std::io::Result<()>,
) -> Result<PathBuf> {
    for k in 0..100_000 {
        let target = match k {
            0 => dir.join(format!("{stem}{suffix}")),
            k => dir.join(format!("{stem}-{k}{suffix}")),
        };
        match place(&target) {
            Ok(()) => return Ok(target),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&target, e)),
        }
    }
    Err(Error::io(
        dir,
        std::io::Error::other("no free file name left"),
    ))
}

/// Writes `bytes` to a hidden temporary file in `dir` (named after `name`, the process and the
/// thread) and syncs it; the caller links or renames it into place and removes it.
fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let tmp = dir.join(format!(
        ".{name}.{}.{:?}.tmp",
        std::process::id(),
        std::thread::current().id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    match write() {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(Error::io(&tmp, e))
        }
    }
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory, then rename).
/// An existing file is an error unless `overwrite`.
pub fn write_file_atomic(path: &Path, bytes: &[u8], overwrite: bool) -> Result<()> {
    if !overwrite && path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "already exists (use --force to replace it)",
            ),
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = write_temp(&dir, &name, bytes)?;
    let result = if overwrite {
        std::fs::rename(&tmp, path)
    } else {
        // hard_link fails if `path` appeared meanwhile: never replace it.
        std::fs::hard_link(&tmp, path)
    }
    .map_err(|e| Error::io(path, e));
    let _ = std::fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_new_file_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_new_file(dir.path(), "x", ".txt", b"one").unwrap();
        let b = write_new_file(dir.path(), "x", ".txt", b"two").unwrap();
        assert_eq!(a.file_name().unwrap(), "x.txt");
        assert_eq!(b.file_name().unwrap(), "x-1.txt");
        assert_eq!(std::fs::read(a).unwrap(), b"one");
        assert_eq!(std::fs::read(b).unwrap(), b"two");
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn decode_rejects_non_images_with_a_reason() {
        let opts = LoadOptions::default();
        assert!(decode_image(b"", &opts).unwrap_err().contains("empty"));
        assert!(decode_image(b"hello, not an image", &opts)
            .unwrap_err()
            .contains("not a recognised image"));
    }
}
