//! Everything that touches files: opening only regular files within a byte budget, decoding
//! images by content (JPEG, PNG, WebP, BMP, TIFF, GIF) within a memory budget, EXIF orientation,
//! walking directories (loops, dangling links and unreadable entries reported per file), the
//! per-file fault boundary, paths in machine-readable output, and atomic no-overwrite writes.

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::{Error, Result};

/// Default refusal limit: images over 100 megapixels are not decoded.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// Memory one image may take while it is decoded: the file's bytes, the decoder's own buffer in
/// the image's native layout and the 8-bit RGB result, at their largest simultaneous use.
/// Images that would need more are refused with the reason (together with the detector's
/// bounded working memory this keeps one input under 1 GB).
pub const DECODE_BUDGET: u64 = 768 << 20;

/// How much of a file is read before its header must have said how large the image is.
const HEADER_PREFIX: usize = 1 << 20;

/// Bytes a file may hold past what its declared image can need uncompressed (metadata,
/// embedded previews, trailing data such as a phone's motion-photo video).
const BYTE_MARGIN: u64 = 32 << 20;

/// Formats facekit decodes (the first frame of a GIF).
const SUPPORTED: &[ImageFormat] = &[
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::WebP,
    ImageFormat::Bmp,
    ImageFormat::Tiff,
    ImageFormat::Gif,
];

/// File name extensions of the supported formats: in a walked folder, a file with one of these
/// that is not a readable image is reported rather than passed over.
const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jpe", "jfif", "png", "webp", "bmp", "dib", "tif", "tiff", "gif",
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

/// Runs `f`, the work on one input file, so that nothing that goes wrong inside it (a panic in
/// a C decoder or a kernel included) escapes: it becomes an error naming `path`. This is the
/// per-file fault boundary every multi-file run goes through.
pub fn guard<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let _scope = GateScope::enter();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(Error::image(
            path,
            format!(
                "internal error while processing it: {}",
                panic_message(&*payload)
            ),
        )),
    }
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "unknown panic".to_string()
    }
}

/// What a path that is not a regular file is, for error messages.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    let ft = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_socket() {
            return "a socket";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
    }
    if ft.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
}

/// Opens `path` for reading only if it is a regular file (after following links). FIFOs,
/// devices and sockets are refused without being read; opening does not block on a FIFO.
pub fn open_regular(path: &Path) -> Result<(std::fs::File, u64)> {
    let not_regular = |meta: &std::fs::Metadata| {
        Error::image(path, format!("not a regular file ({})", kind_of(meta)))
    };
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Swapped for a FIFO between the check and the open: do not wait for a writer.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    Ok((file, meta.len()))
}

/// Reads an image file's bytes: a regular file only, and no more than its declared image can
/// need (the header's dimensions, uncompressed, plus a margin). Images over the pixel limit are
/// refused from their header, before the rest is read.
pub fn read_image_bytes(path: &Path, opts: &LoadOptions) -> Result<Vec<u8>> {
    let (mut file, len) = open_regular(path)?;
    if len == 0 {
        return Err(Error::image(path, "empty file (0 bytes)"));
    }
    let mut bytes = Vec::new();
    let prefix = len.min(HEADER_PREFIX as u64);
    (&mut file)
        .take(prefix)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    let cap = match header_dimensions(&bytes) {
        Some((w, h)) => {
            if w as u64 * h as u64 > opts.max_pixels {
                return Err(Error::TooLarge {
                    path: path.to_path_buf(),
                    width: w,
                    height: h,
                    limit: opts.max_pixels,
                });
            }
            check_pixels(w, h, opts).map_err(|reason| Error::image(path, reason))?;
            (w as u64 * h as u64).saturating_mul(8) + BYTE_MARGIN
        }
        None => opts.max_pixels.saturating_mul(8) + BYTE_MARGIN,
    };
    if len > bytes.len() as u64 {
        let rest = len.min(cap).saturating_sub(bytes.len() as u64);
        bytes
            .try_reserve_exact(rest as usize)
            .map_err(|_| Error::image(path, "out of memory reading the file"))?;
        file.take(rest)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(bytes)
}

/// The width and height an image's header declares, when `prefix` holds the header.
fn header_dimensions(prefix: &[u8]) -> Option<(u32, u32)> {
    let format = sniff_format(prefix)?;
    std::panic::catch_unwind(|| {
        ImageReader::with_format(Cursor::new(prefix), format)
            .into_dimensions()
            .ok()
    })
    .ok()
    .flatten()
}

/// The pixel-limit check, with the reason for refusing.
fn check_pixels(w: u32, h: u32, opts: &LoadOptions) -> std::result::Result<(), String> {
    let pixels = w as u64 * h as u64;
    if pixels > opts.max_pixels {
        return Err(format!(
            "image is {w}x{h} ({:.1} MP), over the {:.1} MP limit",
            pixels as f64 / 1e6,
            opts.max_pixels as f64 / 1e6
        ));
    }
    if pixels == 0 {
        return Err(format!("image has no pixels ({w}x{h})"));
    }
    Ok(())
}

/// Reads and decodes an image file into upright 8-bit RGB.
///
/// Errors name the file and the reason: not a regular file, unreadable, empty, not an image,
/// truncated or corrupt, over the pixel limit or the decoding memory budget.
pub fn load_image(path: &Path, opts: &LoadOptions) -> Result<RgbImage> {
    let bytes = read_image_bytes(path, opts)?;
    decode_image(bytes, opts).map_err(|reason| Error::image(path, reason))
}

/// Decodes image bytes (format by content) into upright 8-bit RGB; the error is a reason
/// suitable for showing after a file name. A panic inside a decoder is caught and returned as
/// the reason. `bytes` is dropped as soon as the decoder is done with it.
pub fn decode_image(
    bytes: impl Into<Vec<u8>>,
    opts: &LoadOptions,
) -> std::result::Result<RgbImage, String> {
    let bytes = bytes.into();
    catch_decoder_panic(|| decode_unguarded(bytes, opts))
}

/// A photo decoded for detection. A large JPEG whose detection runs on a working copy at most
/// half its size is decoded reduced, by libjpeg's DCT scaling (1/2, 1/4 or 1/8: a fraction of
/// the work and memory of a full decode), and the full-resolution image that alignment needs is
/// decoded only when asked for ([`Photo::full`]), so photos without faces never need it. Other
/// images are decoded once at full size.
#[derive(Debug)]
pub struct Photo {
    /// Upright full-resolution width and height.
    dims: (u32, u32),
    /// The decoded pixels: the full image, or the reduced copy.
    image: RgbImage,
    /// The file's bytes, kept to decode the full image later (reduced photos only).
    bytes: Option<Vec<u8>>,
    opts: LoadOptions,
}

impl Photo {
    /// A photo that is already decoded at full resolution.
    pub fn from_image(image: RgbImage) -> Photo {
        Photo {
            dims: image.dimensions(),
            image,
            bytes: None,
            opts: LoadOptions::default(),
        }
    }

    /// Upright width and height of the full-resolution image.
    pub fn dimensions(&self) -> (u32, u32) {
        self.dims
    }

    /// The decoded pixels: the full image, or (see [`Photo::is_reduced`]) the reduced copy
    /// that covers the same scene at fewer pixels.
    pub fn decoded(&self) -> &RgbImage {
        &self.image
    }

    /// Whether [`Photo::decoded`] is a reduced copy rather than the full image.
    pub fn is_reduced(&self) -> bool {
        self.bytes.is_some()
    }

    /// The full-resolution image (decoded now when the photo was decoded reduced); the error is
    /// a reason to show after the file name.
    pub fn full(&self) -> std::result::Result<std::borrow::Cow<'_, RgbImage>, String> {
        match &self.bytes {
            None => Ok(std::borrow::Cow::Borrowed(&self.image)),
            Some(bytes) => {
                let full = catch_decoder_panic(|| decode_jpeg_scaled(bytes, &self.opts, 8))?;
                if full.dimensions() != self.dims {
                    return Err("JPEG size changed between decodes".to_string());
                }
                Ok(std::borrow::Cow::Owned(full))
            }
        }
    }
}

/// Decodes image bytes for detection (see [`Photo`]): `working_scale(width, height)` is the
/// scale of the copy detection will run on for an upright image of that size (1 = full size).
pub fn decode_photo(
    bytes: Vec<u8>,
    opts: &LoadOptions,
    working_scale: impl Fn(u32, u32) -> f64,
) -> std::result::Result<Photo, String> {
    let reduced = match (sniff_format(&bytes), header_dimensions(&bytes)) {
        (Some(ImageFormat::Jpeg), Some((w, h))) => {
            Some((jpeg_reduction(w, h, working_scale(w, h)), (w, h))).filter(|(n, _)| *n != 8)
        }
        _ => None,
    };
    let Some((numerator, (sw, sh))) = reduced else {
        return Ok(Photo {
            opts: opts.clone(),
            ..Photo::from_image(decode_image(bytes, opts)?)
        });
    };
    let image = catch_decoder_panic(|| decode_jpeg_scaled(&bytes, opts, numerator))?;
    let rotated = opts.apply_exif_orientation
        && jpeg_exif(&bytes)
            .and_then(image::metadata::Orientation::from_exif_chunk)
            .is_some_and(|o| {
                use image::metadata::Orientation::*;
                matches!(o, Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH)
            });
    let dims = if rotated { (sh, sw) } else { (sw, sh) };
    Ok(Photo {
        dims,
        image,
        bytes: Some(bytes),
        opts: opts.clone(),
    })
}

/// Reads an image file and decodes it for detection ([`decode_photo`]).
pub fn load_photo(
    path: &Path,
    opts: &LoadOptions,
    working_scale: impl Fn(u32, u32) -> f64,
) -> Result<Photo> {
    let bytes = read_image_bytes(path, opts)?;
    decode_photo(bytes, opts, working_scale).map_err(|reason| Error::image(path, reason))
}

/// The DCT scaling numerator (of 8) for decoding a `w` x `h` JPEG whose detection copy is
/// `scale` times its size: the smallest of 1, 2 and 4 whose output is still at least the copy's
/// size on both sides, else 8 (a full decode).
fn jpeg_reduction(w: u32, h: u32, scale: f64) -> u8 {
    let target = |side: u32| ((side as f64 * scale).round() as u64).max(1);
    let out = |side: u32, n: u64| (side as u64 * n).div_ceil(8);
    [1u8, 2, 4]
        .into_iter()
        .find(|&n| out(w, n as u64) >= target(w) && out(h, n as u64) >= target(h))
        .unwrap_or(8)
}

/// Runs a decoder, turning a panic inside it (libjpeg's fatal errors unwind) into the reason.
fn catch_decoder_panic<T>(
    f: impl FnOnce() -> std::result::Result<T, String>,
) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        Err(format!(
            "cannot decode: {}",
            panic_message(&*payload).trim_start_matches("libjpeg fatal error: ")
        ))
    })
}

fn decode_unguarded(bytes: Vec<u8>, opts: &LoadOptions) -> std::result::Result<RgbImage, String> {
    if bytes.is_empty() {
        return Err("empty file (0 bytes)".to_string());
    }
    let format = match image::guess_format(&bytes) {
        Ok(f) if SUPPORTED.contains(&f) => f,
        Ok(f) => return Err(format!("unsupported image format {f:?}")),
        Err(_) => {
            return Err(
                "not a recognised image (content is not JPEG, PNG, WebP, BMP, TIFF or GIF)"
                    .to_string(),
            )
        }
    };
    if format == ImageFormat::Jpeg {
        return decode_jpeg(bytes, opts);
    }
    let file_len = bytes.len() as u64;
    let mut reader = ImageReader::with_format(Cursor::new(&bytes[..]), format);
    let mut limits = Limits::default();
    limits.max_alloc = Some(DECODE_BUDGET);
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| format!("cannot decode {format:?}: {e}"))?;
    let (w, h) = decoder.dimensions();
    check_pixels(w, h, opts)?;
    let pixels = w as u64 * h as u64;
    gate_acquire(pixels);
    let native = decoder.total_bytes();
    let rgb = pixels * 3;
    let is_rgb8 = decoder.color_type() == image::ColorType::Rgb8;
    let needed = (file_len + native)
        .max(if is_rgb8 { 0 } else { native + rgb })
        .max(2 * rgb);
    if needed > DECODE_BUDGET {
        return Err(format!(
            "image is {w}x{h} {:?}: decoding it needs {} MB, over the {} MB memory budget",
            decoder.color_type(),
            needed >> 20,
            DECODE_BUDGET >> 20
        ));
    }
    // A malformed EXIF block is not worth refusing the image for: keep it as stored.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let native = DynamicImage::from_decoder(decoder)
        .map_err(|e| format!("cannot decode {format:?}: {e}"))?;
    drop(bytes);
    let img = match native {
        DynamicImage::ImageRgb8(_) => native,
        other => DynamicImage::ImageRgb8(other.to_rgb8()),
    };
    Ok(upright(img, orientation, opts))
}

/// The image turned upright by its EXIF orientation (when asked for), as 8-bit RGB.
fn upright(
    mut img: DynamicImage,
    orientation: image::metadata::Orientation,
    opts: &LoadOptions,
) -> RgbImage {
    if opts.apply_exif_orientation {
        img.apply_orientation(orientation);
    }
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    }
}

/// JPEGs go to libjpeg-turbo's decoder (via mozjpeg) alone, header included: the same pixels
/// Pillow, OpenCV and so the Python peers see (zune-jpeg, image's default, differs by a grey
/// level here and there, which is enough to flip MTCNN's NMS choices on some faces, and does
/// not read arithmetic-coded files). The orientation comes from the EXIF segment.
fn decode_jpeg(bytes: Vec<u8>, opts: &LoadOptions) -> std::result::Result<RgbImage, String> {
    let rgb = decode_jpeg_scaled(&bytes, opts, 8)?;
    drop(bytes);
    Ok(rgb)
}

/// A JPEG decoded upright at `numerator / 8` of its size (libjpeg's DCT scaling; 8 = full size).
fn decode_jpeg_scaled(
    bytes: &[u8],
    opts: &LoadOptions,
    numerator: u8,
) -> std::result::Result<RgbImage, String> {
    let orientation = jpeg_exif(bytes)
        .and_then(image::metadata::Orientation::from_exif_chunk)
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let rgb = decode_jpeg_libjpeg(bytes, opts, numerator)?;
    Ok(upright(DynamicImage::ImageRgb8(rgb), orientation, opts))
}

/// The TIFF-structured payload of a JPEG's EXIF (APP1 `Exif\0\0`) segment, if it has one
/// before the first scan.
fn jpeg_exif(bytes: &[u8]) -> Option<&[u8]> {
    let mut i = 2;
    while i + 4 <= bytes.len() && bytes[i] == 0xFF {
        let marker = bytes[i + 1];
        if marker == 0xDA || marker == 0xD9 {
            return None;
        }
        let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        let body = bytes.get(i + 4..i + 2 + len)?;
        if marker == 0xE1 && body.starts_with(b"Exif\0\0") {
            return Some(&body[6..]);
        }
        i += 2 + len;
    }
    None
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

/// True when the JPEG has an Adobe APP14 segment: its CMYK/YCCK samples are stored inverted
/// (as Photoshop writes them).
fn jpeg_has_adobe_marker(bytes: &[u8]) -> bool {
    bytes
        .windows(9)
        .any(|w| w[0] == 0xFF && w[1] == 0xEE && &w[4..9] == b"Adobe")
}

/// Decodes a JPEG to RGB with libjpeg-turbo's algorithms (accurate integer IDCT, fancy
/// upsampling). CMYK and YCCK JPEGs are converted to RGB (as Pillow does); arithmetic coding is
/// supported. libjpeg's fatal errors unwind; [`decode_image`] catches them.
fn decode_jpeg_libjpeg(
    bytes: &[u8],
    opts: &LoadOptions,
    numerator: u8,
) -> std::result::Result<RgbImage, String> {
    use mozjpeg::ColorSpace;
    if !jpeg_is_complete(bytes) {
        return Err("truncated JPEG (no end-of-image marker after the last scan)".to_string());
    }
    let fail = |e: std::io::Error| format!("cannot decode JPEG: {e}");
    let mut decompress = mozjpeg::Decompress::new_mem(bytes).map_err(fail)?;
    let (w, h) = (decompress.width() as u32, decompress.height() as u32);
    check_pixels(w, h, opts)?;
    // libjpeg's scaled output: ceil(side * numerator / 8).
    let scaled = |side: u32| (side as u64 * numerator as u64).div_ceil(8);
    gate_acquire(scaled(w) * scaled(h));
    if numerator != 8 {
        decompress.scale(numerator);
    }
    let cmyk = matches!(
        decompress.color_space(),
        ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK
    );
    if cmyk {
        let mut started = decompress
            .to_colorspace(ColorSpace::JCS_CMYK)
            .map_err(fail)?;
        let (w, h) = (started.width() as u32, started.height() as u32);
        let mut rgb = Vec::new();
        rgb.try_reserve_exact(w as usize * h as usize * 3)
            .map_err(|_| "out of memory".to_string())?;
        let mut row = vec![0u8; w as usize * 4];
        let inverted = jpeg_has_adobe_marker(bytes);
        for _ in 0..h {
            started.read_scanlines_into(&mut row).map_err(fail)?;
            for px in row.chunks_exact(4) {
                let [c, m, y, k] = if inverted {
                    [px[0], px[1], px[2], px[3]].map(u32::from)
                } else {
                    [px[0], px[1], px[2], px[3]].map(|v| 255 - u32::from(v))
                };
                // Stored (inverted) values are 255 - ink: R = (255 - C)(255 - K) / 255.
                rgb.extend([c, m, y].map(|v| ((v * k + 127) / 255) as u8));
            }
        }
        started.finish().map_err(fail)?;
        return RgbImage::from_raw(w, h, rgb).ok_or_else(|| "JPEG size mismatch".to_string());
    }
    let mut started = decompress.rgb().map_err(fail)?;
    let (w, h) = (started.width() as u32, started.height() as u32);
    let pixels: Vec<u8> = started.read_scanlines().map_err(fail)?;
    started.finish().map_err(fail)?;
    RgbImage::from_raw(w, h, pixels).ok_or_else(|| "JPEG size mismatch".to_string())
}

/// A bound on the pixels of the images being decoded and processed at once across threads, so
/// that running on several threads cannot multiply the memory one large image takes: a thread
/// inside [`guard`] that loads an image waits until the images other threads hold leave room.
/// What a decode takes is what it holds: a JPEG decoded reduced for detection takes the reduced
/// copy's pixels, and the full-resolution decode that alignment needs later takes its own. So
/// camera photos are detected in parallel and only their full-resolution phases queue. One
/// image at a time always proceeds: a thread that holds pixels already waits only while
/// another holder is running (so threads never wait for each other in a circle).
struct Gate {
    state: Mutex<GateState>,
    freed: Condvar,
}

/// The gate's counters.
struct GateState {
    /// Pixels held by all threads.
    used: u64,
    /// Threads holding pixels that are not waiting for more.
    running: usize,
}

/// Pixels of images in flight at once (two 24 MP photos with their reduced detection copies, or
/// one larger image alone).
const GATE_PIXELS: u64 = 56_000_000;

static GATE: Gate = Gate {
    state: Mutex::new(GateState {
        used: 0,
        running: 0,
    }),
    freed: Condvar::new(),
};

thread_local! {
    /// Pixels this thread holds in the gate, while inside [`guard`] (`None` outside).
    static HELD: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Marks the current thread as inside a fault boundary; on leaving, the pixels it acquired are
/// given back.
struct GateScope {
    outer: Option<u64>,
}

impl GateScope {
    fn enter() -> Self {
        GateScope {
            outer: HELD.with(|h| h.replace(Some(0))),
        }
    }
}

impl Drop for GateScope {
    fn drop(&mut self) {
        let held = HELD.with(|h| h.replace(self.outer)).unwrap_or(0);
        if held > 0 {
            let mut state = GATE.state.lock().unwrap_or_else(|p| p.into_inner());
            state.used = state.used.saturating_sub(held);
            state.running = state.running.saturating_sub(1);
            GATE.freed.notify_all();
        }
    }
}

/// Takes `pixels` from the gate for the rest of the current [`guard`] scope (nothing outside
/// one).
fn gate_acquire(pixels: u64) {
    let Some(held) = HELD.with(|h| h.get()) else {
        return;
    };
    let pixels = pixels.min(GATE_PIXELS);
    let mut state = GATE.state.lock().unwrap_or_else(|p| p.into_inner());
    let full = |s: &GateState| s.used + pixels > GATE_PIXELS;
    if held == 0 {
        // This thread holds nothing yet: wait for room, unless nobody holds anything (then
        // any size goes ahead).
        while state.used > 0 && full(&state) {
            state = GATE.freed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.running += 1;
    } else {
        // A holder waits only while another holder runs and will free pixels.
        while full(&state) && state.running > 1 {
            state.running -= 1;
            state = GATE.freed.wait(state).unwrap_or_else(|p| p.into_inner());
            state.running += 1;
        }
    }
    state.used += pixels;
    HELD.with(|h| h.set(Some(held + pixels)));
}

/// The input files named by `paths`, in order: files as given, directories walked recursively
/// (entries sorted by name) keeping files whose content is a supported image. Symlinked
/// directories are followed, once each (a loop is reported, not walked again). Everything that
/// cannot be used is returned as an error in its place, so a run reports it and goes on: paths
/// that do not exist, dangling links, directories or entries that cannot be read, special files
/// (FIFOs, sockets, devices), and files named like images whose content is not one. Files named
/// otherwise that are not images (`notes.txt`) are passed over silently in walks.
pub fn collect_inputs(paths: &[PathBuf]) -> Vec<std::result::Result<PathBuf, Error>> {
    let mut out = Vec::new();
    for path in paths {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                let mut seen = Vec::new();
                walk_dir(path, &meta, &mut seen, &mut out);
            }
            Ok(_) => out.push(Ok(path.clone())),
            Err(e) => out.push(Err(Error::io(path, e))),
        }
    }
    out
}

/// A directory's identity (device and inode), for loop detection.
fn dir_id(meta: &std::fs::Metadata) -> (u64, u64) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        (0, 0)
    }
}

fn walk_dir(
    dir: &Path,
    meta: &std::fs::Metadata,
    ancestors: &mut Vec<(u64, u64)>,
    out: &mut Vec<std::result::Result<PathBuf, Error>>,
) {
    let id = dir_id(meta);
    if cfg!(unix) && ancestors.contains(&id) {
        out.push(Err(Error::image(
            dir,
            "symbolic link loop (a directory that contains itself); not walked again",
        )));
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => return out.push(Err(Error::io(dir, e))),
    };
    let mut paths = Vec::new();
    for entry in entries {
        match entry {
            Ok(e) => paths.push(e.path()),
            Err(e) => out.push(Err(Error::io(dir, e))),
        }
    }
    paths.sort();
    ancestors.push(id);
    for path in paths {
        let link = std::fs::symlink_metadata(&path)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if link && e.kind() == std::io::ErrorKind::NotFound => {
                out.push(Err(Error::image(
                    &path,
                    "dangling symbolic link (its target does not exist)",
                )));
                continue;
            }
            Err(e) => {
                // ELOOP: a link that points at itself, directly or not.
                out.push(Err(Error::io(&path, e)));
                continue;
            }
        };
        if meta.is_dir() {
            walk_dir(&path, &meta, ancestors, out);
        } else if !meta.is_file() {
            if has_image_extension(&path) || !link {
                out.push(Err(Error::image(
                    &path,
                    format!("not a regular file ({})", kind_of(&meta)),
                )));
            }
        } else {
            match sniff_file(&path) {
                Ok(true) => out.push(Ok(path)),
                Ok(false) if has_image_extension(&path) => out.push(Err(Error::image(
                    &path,
                    "not a recognised image (content is not JPEG, PNG, WebP, BMP, TIFF or GIF)",
                ))),
                Ok(false) => {}
                Err(e) => out.push(Err(e)),
            }
        }
    }
    ancestors.pop();
}

/// True when the name ends in an image format's extension (any case).
/// True when the file name ends in an image extension (`.jpg`, `.png`, ...).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Whether the file's first bytes are those of a supported image format; an error when it
/// cannot be opened or read.
fn sniff_file(path: &Path) -> Result<bool> {
    let (f, _) = open_regular(path)?;
    let mut head = Vec::with_capacity(32);
    f.take(32)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    Ok(sniff_format(&head).is_some())
}

/// The inverse of [`base64`]; `None` for anything that is not padded standard base64.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let t = text.as_bytes();
    if !t.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(t.len() / 4 * 3);
    for (i, chunk) in t.chunks(4).enumerate() {
        let last = i + 1 == t.len() / 4;
        let pad = chunk.iter().rev().take_while(|&&b| b == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &b in &chunk[..4 - pad] {
            n = n << 6 | BASE64_ALPHABET.iter().position(|&x| x == b)? as u32;
        }
        n <<= 6 * pad as u32;
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

/// A path as it goes into JSON: a string when it is valid UTF-8, otherwise
/// `{"bytes": "<base64 of the raw bytes>"}` (ripgrep's convention), so every file stays
/// identifiable.
#[derive(Debug, Clone, Copy)]
pub struct JsonPath<'a>(pub &'a Path);

impl serde::Serialize for JsonPath<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self.0.to_str() {
            Some(text) => s.serialize_str(text),
            None => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("bytes", &base64(&path_bytes(self.0)))?;
                map.end()
            }
        }
    }
}

/// serde `serialize_with` for a path field, as [`JsonPath`].
pub fn serialize_path<S: serde::Serializer>(
    path: &Path,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&JsonPath(path), s)
}

/// serde `serialize_with` for a list of paths, each as [`JsonPath`].
pub fn serialize_paths<S: serde::Serializer>(
    paths: &[PathBuf],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(paths.iter().map(|p| JsonPath(p)))
}

/// The raw bytes of a path (on unix; elsewhere its lossy UTF-8 text).
pub fn path_bytes(path: &Path) -> Vec<u8> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        path.as_os_str().as_bytes().to_vec()
    }
    #[cfg(not(unix))]
    {
        path.to_string_lossy().into_owned().into_bytes()
    }
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// SHA-256 of `bytes`, lowercase hex: a photo's identity in the library.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = BASE64_ALPHABET;
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(T[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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
            // A missing folder is named as such, not as the temporary file's path.
            if e.kind() == std::io::ErrorKind::NotFound && !dir.is_dir() {
                return Err(Error::io(dir, e));
            }
            Err(Error::io(&tmp, e))
        }
    }
}

/// Checks, before any work, that an output file can be written: its folder exists and it does
/// not exist itself (unless `overwrite`).
pub fn check_output_file(path: &Path, overwrite: bool) -> Result<()> {
    if !overwrite && path.exists() {
        return Err(Error::Exists {
            path: path.to_path_buf(),
        });
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(Error::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the output's folder does not exist",
            ),
        ));
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory, then rename).
/// An existing file is an error unless `overwrite`.
pub fn write_file_atomic(path: &Path, bytes: &[u8], overwrite: bool) -> Result<()> {
    if !overwrite && path.exists() {
        return Err(Error::Exists {
            path: path.to_path_buf(),
        });
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

    /// The gate tests share the process-wide gate: one at a time.
    static GATE_TESTS: Mutex<()> = Mutex::new(());

    /// A thread inside a fault boundary that holds `first` pixels, reports `first`, then on
    /// `go` asks for `second` more and reports `second`; its scope (and its pixels) ends on
    /// `release`.
    struct GateUser {
        go: std::sync::mpsc::Sender<()>,
        release: std::sync::mpsc::Sender<()>,
        done: std::sync::mpsc::Receiver<&'static str>,
        thread: std::thread::JoinHandle<()>,
    }

    impl GateUser {
        fn start(first: u64, second: u64) -> GateUser {
            let (go, go_rx) = std::sync::mpsc::channel();
            let (release, release_rx) = std::sync::mpsc::channel();
            let (done_tx, done) = std::sync::mpsc::channel();
            let thread = std::thread::spawn(move || {
                let _ = guard(Path::new("gate-test"), || {
                    gate_acquire(first);
                    let _ = done_tx.send("first");
                    let _ = go_rx.recv();
                    gate_acquire(second);
                    let _ = done_tx.send("second");
                    let _ = release_rx.recv();
                    Ok(())
                });
            });
            GateUser {
                go,
                release,
                done,
                thread,
            }
        }

        /// What it reported next, if anything within `secs` seconds.
        fn next(&self, secs: f64) -> Option<&'static str> {
            self.done
                .recv_timeout(std::time::Duration::from_secs_f64(secs))
                .ok()
        }
    }

    /// Two users each holding a reduced copy of 2 MP, each then asking for 60 % of the gate.
    fn two_gate_users() -> (GateUser, GateUser) {
        let big = GATE_PIXELS * 3 / 5;
        let (a, b) = (
            GateUser::start(2_000_000, big),
            GateUser::start(2_000_000, big),
        );
        // Two small (reduced) copies are held at once.
        assert_eq!(a.next(20.0), Some("first"));
        assert_eq!(b.next(20.0), Some("first"));
        (a, b)
    }

    #[test]
    fn gate_lets_reduced_copies_run_together_and_queues_full_decodes() {
        let _one = GATE_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        let (a, b) = two_gate_users();
        // A's full decode fits; B's does not while A holds its own and runs.
        a.go.send(()).unwrap();
        assert_eq!(a.next(20.0), Some("second"));
        b.go.send(()).unwrap();
        assert_eq!(b.next(0.3), None);
        // A's photo is done: B goes on.
        a.release.send(()).unwrap();
        assert_eq!(b.next(20.0), Some("second"));
        b.release.send(()).unwrap();
        a.thread.join().unwrap();
        b.thread.join().unwrap();
    }

    #[test]
    fn gate_holders_asking_for_more_at_once_do_not_wait_for_each_other() {
        let _one = GATE_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        let (a, b) = two_gate_users();
        // Both holders ask for more than fits together; scopes end as soon as served, so
        // whichever goes first lets the other through (no circle of waits).
        for user in [&a, &b] {
            user.go.send(()).unwrap();
            user.release.send(()).unwrap();
        }
        assert_eq!(a.next(20.0), Some("second"));
        assert_eq!(b.next(20.0), Some("second"));
        a.thread.join().unwrap();
        b.thread.join().unwrap();
    }

    #[test]
    fn jpeg_reduction_keeps_at_least_the_working_size() {
        // 6000 x 4000 to a 1280 px copy: 2/8 (1500 x 1000) is the smallest that covers it.
        assert_eq!(jpeg_reduction(6000, 4000, 1280.0 / 6000.0), 2);
        // 3000 x 2000 to 1280: 4/8 (1500 x 1000).
        assert_eq!(jpeg_reduction(3000, 2000, 1280.0 / 3000.0), 4);
        assert_eq!(jpeg_reduction(2000, 1500, 1280.0 / 2000.0), 8);
        // A tiny copy of a large photo: 1/8.
        assert_eq!(jpeg_reduction(8000, 8000, 0.1), 1);
        assert_eq!(jpeg_reduction(500, 375, 1.0), 8);
    }

    /// A large JPEG: a fixture upscaled 6 times. (Rotated files, through an EXIF orientation,
    /// are covered end to end by `tests/cli_detect.rs`.)
    fn large_jpeg() -> Vec<u8> {
        let small = load_image(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/2008_001322.jpg"),
            &LoadOptions::default(),
        )
        .unwrap();
        let big = image::imageops::resize(&small, 3000, 2250, image::imageops::Triangle);
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&big)
            .unwrap();
        jpeg
    }

    #[test]
    fn a_large_jpeg_is_decoded_reduced_and_its_full_image_on_demand() {
        let opts = LoadOptions::default();
        let jpeg = large_jpeg();
        let full = decode_image(jpeg.clone(), &opts).unwrap();
        assert_eq!(full.dimensions(), (3000, 2250));
        let photo = decode_photo(jpeg.clone(), &opts, |w, h| 1280.0 / w.max(h) as f64).unwrap();
        assert!(photo.is_reduced());
        assert_eq!(photo.dimensions(), (3000, 2250));
        // 4/8 of 3000 x 2250.
        assert_eq!(photo.decoded().dimensions(), (1500, 1125));
        assert_eq!(*photo.full().unwrap(), full);
        // The reduced copy shows the same scene: close to the full image averaged 2 x 2.
        let halved = crate::preprocess::area_downscale(&full, 1500, 1125);
        let diff: f64 = halved
            .as_raw()
            .iter()
            .zip(photo.decoded().as_raw())
            .map(|(&a, &b)| (a as f64 - b as f64).abs())
            .sum::<f64>()
            / halved.as_raw().len() as f64;
        assert!(diff < 2.0, "mean difference {diff}");
        // No reduction asked for: decoded once at full size.
        let same = decode_photo(jpeg, &opts, |_, _| 1.0).unwrap();
        assert!(!same.is_reduced());
        assert_eq!(*same.decoded(), full);
    }

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
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
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
