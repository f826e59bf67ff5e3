//! Generators of bad and odd image files, shared by `tests/robustness.rs` and
//! `examples/bad_corpus.rs` (included there with `#[path]`): one small real image per format, a
//! seeded mutator (SplitMix64), decompression/dimension bombs, EXIF orientations, CMYK/YCCK JPEGs,
//! 16-bit, palette, animated and grayscale variants. Everything is built in memory from a committed
//! photo: no network, no large fixtures.
#![allow(dead_code)]

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat, RgbImage};

/// SplitMix64: a tiny, well-mixed, seedable generator (the mutants depend only on the seed).
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A committed photo decoded with the `image` crate and downscaled to `width` pixels wide.
pub fn photo(name: &str, width: u32) -> RgbImage {
    let img = image::open(fixture(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .to_rgb8();
    let height = (img.height() as u64 * width as u64 / img.width() as u64).max(1) as u32;
    image::imageops::resize(&img, width, height, image::imageops::FilterType::Triangle)
}

/// The small group photo (3 faces) every mutant is made from: 160 px wide.
pub fn small_photo() -> RgbImage {
    photo("2008_001322.jpg", 160)
}

/// A one-face portrait, large enough for the detector to find the face: 200 px wide.
pub fn portrait() -> RgbImage {
    photo("Tom_Cruise_avp_2014_4.jpg", 200)
}

fn mozjpeg_encode(
    color: mozjpeg::ColorSpace,
    jpeg_color: Option<mozjpeg::ColorSpace>,
    w: u32,
    h: u32,
    data: &[u8],
    progressive: bool,
) -> Vec<u8> {
    let mut comp = mozjpeg::Compress::new(color);
    if let Some(c) = jpeg_color {
        comp.set_color_space(c);
    }
    comp.set_size(w as usize, h as usize);
    comp.set_quality(90.0);
    if progressive {
        comp.set_progressive_mode();
    } else {
        // Plain baseline libjpeg output (no mozjpeg scan tricks).
        comp.set_fastest_defaults();
        comp.set_quality(90.0);
    }
    let mut started = comp.start_compress(Vec::new()).expect("start JPEG");
    started.write_scanlines(data).expect("write JPEG");
    started.finish().expect("finish JPEG")
}

/// Baseline (sequential) JPEG.
pub fn jpeg_baseline(img: &RgbImage) -> Vec<u8> {
    mozjpeg_encode(
        mozjpeg::ColorSpace::JCS_RGB,
        None,
        img.width(),
        img.height(),
        img.as_raw(),
        false,
    )
}

/// Progressive JPEG.
pub fn jpeg_progressive(img: &RgbImage) -> Vec<u8> {
    mozjpeg_encode(
        mozjpeg::ColorSpace::JCS_RGB,
        None,
        img.width(),
        img.height(),
        img.as_raw(),
        true,
    )
}

/// Grayscale JPEG.
pub fn jpeg_gray(img: &RgbImage) -> Vec<u8> {
    let gray = DynamicImage::ImageRgb8(img.clone()).to_luma8();
    mozjpeg_encode(
        mozjpeg::ColorSpace::JCS_GRAYSCALE,
        None,
        img.width(),
        img.height(),
        gray.as_raw(),
        false,
    )
}

/// The CMYK samples of `img` as Adobe (Photoshop) writes them: inverted (255 = no ink), with
/// black generation (K = 255 - max(R,G,B) in ink). A reader honouring the Adobe convention gets
/// the RGB back exactly: R = C' * K' / 255.
pub fn cmyk_inverted(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::with_capacity(img.as_raw().len() / 3 * 4);
    for p in img.pixels() {
        let [r, g, b] = p.0;
        let max = r.max(g).max(b);
        if max == 0 {
            out.extend([255, 255, 255, 0]);
            continue;
        }
        let scale = |v: u8| ((v as u32 * 255 + max as u32 / 2) / max as u32) as u8;
        out.extend([scale(r), scale(g), scale(b), max]);
    }
    out
}

/// A CMYK JPEG (Adobe APP14 marker, inverted samples) of `img`.
pub fn jpeg_cmyk(img: &RgbImage) -> Vec<u8> {
    mozjpeg_encode(
        mozjpeg::ColorSpace::JCS_CMYK,
        None,
        img.width(),
        img.height(),
        &cmyk_inverted(img),
        false,
    )
}

/// A YCCK JPEG (CMYK input, stored as YCCK; Adobe transform 2) of `img`.
pub fn jpeg_ycck(img: &RgbImage) -> Vec<u8> {
    mozjpeg_encode(
        mozjpeg::ColorSpace::JCS_CMYK,
        Some(mozjpeg::ColorSpace::JCS_YCCK),
        img.width(),
        img.height(),
        &cmyk_inverted(img),
        false,
    )
}

/// `img` in `format` with the `image` crate's encoder (WebP: lossless).
pub fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format)
        .unwrap_or_else(|e| panic!("encode {format:?}: {e}"));
    out.into_inner()
}

/// One small valid file per format: (name, extension, bytes).
pub fn small_formats(img: &RgbImage) -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let dynamic = DynamicImage::ImageRgb8(img.clone());
    vec![
        ("jpeg-baseline", "jpg", jpeg_baseline(img)),
        ("jpeg-progressive", "jpg", jpeg_progressive(img)),
        ("png", "png", encode(&dynamic, ImageFormat::Png)),
        ("gif", "gif", encode(&dynamic, ImageFormat::Gif)),
        ("webp", "webp", encode(&dynamic, ImageFormat::WebP)),
        ("tiff", "tiff", encode(&dynamic, ImageFormat::Tiff)),
        ("bmp", "bmp", encode(&dynamic, ImageFormat::Bmp)),
    ]
}

// ---------------------------------------------------------------------------------------------
// Structure: segments and chunks, for structure-aware mutations.

/// JPEG marker segments with a length field: (offset of the 0xFF, total length incl. marker).
pub fn jpeg_segments(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 2;
    while i + 4 <= bytes.len() && bytes[i] == 0xFF {
        let marker = bytes[i + 1];
        if marker == 0xD8 || (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            i += 2;
            continue;
        }
        let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        out.push((i, len + 2));
        if marker == 0xDA {
            break; // entropy-coded data follows
        }
        i += len + 2;
    }
    out
}

/// PNG chunks: (offset of the length field, total length incl. length, type and CRC).
pub fn png_chunks(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 8;
    while i + 12 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
        out.push((i, len + 12));
        i += len + 12;
    }
    out
}

/// RIFF (WebP) chunks: (offset of the fourcc, total length incl. header and padding).
pub fn riff_chunks(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 12;
    while i + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[i + 4..i + 8].try_into().unwrap()) as usize;
        let total = 8 + len + (len & 1);
        out.push((i, total));
        i += total;
    }
    out
}

/// Offsets of length / size fields worth corrupting, with their width in bytes and endianness
/// (true = big-endian).
fn length_fields(ext: &str, bytes: &[u8]) -> Vec<(usize, usize, bool)> {
    match ext {
        "jpg" => {
            let mut v: Vec<_> = jpeg_segments(bytes)
                .into_iter()
                .map(|(o, _)| (o + 2, 2, true))
                .collect();
            // SOF dimensions.
            if let Some(sof) = find_sof(bytes) {
                v.push((sof + 5, 2, true));
                v.push((sof + 7, 2, true));
            }
            v
        }
        "png" => {
            let mut v: Vec<_> = png_chunks(bytes)
                .into_iter()
                .map(|(o, _)| (o, 4, true))
                .collect();
            v.push((16, 4, true)); // IHDR width
            v.push((20, 4, true)); // IHDR height
            v
        }
        "webp" => {
            let mut v = vec![(4, 4, false)];
            v.extend(
                riff_chunks(bytes)
                    .into_iter()
                    .map(|(o, _)| (o + 4, 4, false)),
            );
            v.push((21, 4, false)); // VP8L width/height bits
            v
        }
        "gif" => vec![(6, 2, false), (8, 2, false)],
        "bmp" => vec![
            (2, 4, false),
            (10, 4, false),
            (14, 4, false),
            (18, 4, false),
            (22, 4, false),
            (34, 4, false),
        ],
        "tiff" => {
            // The first IFD's entry counts and values/offsets.
            let ifd = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
            let mut v = vec![(4, 4, false)];
            if ifd + 2 <= bytes.len() {
                v.push((ifd, 2, false));
                let n = u16::from_le_bytes([bytes[ifd], bytes[ifd + 1]]) as usize;
                for k in 0..n.min(20) {
                    let e = ifd + 2 + 12 * k;
                    if e + 12 <= bytes.len() {
                        v.push((e + 4, 4, false)); // count
                        v.push((e + 8, 4, false)); // value or offset
                    }
                }
            }
            v
        }
        _ => Vec::new(),
    }
}

/// Offset of the first SOFn marker of a JPEG.
pub fn find_sof(bytes: &[u8]) -> Option<usize> {
    jpeg_segments(bytes).into_iter().map(|(o, _)| o).find(|&o| {
        let m = bytes[o + 1];
        (0xC0..=0xCF).contains(&m) && m != 0xC4 && m != 0xC8 && m != 0xCC
    })
}

/// Structural units (segments, chunks) worth duplicating: (offset, length).
fn units(ext: &str, bytes: &[u8]) -> Vec<(usize, usize)> {
    match ext {
        "jpg" => jpeg_segments(bytes),
        "png" => png_chunks(bytes),
        "webp" => riff_chunks(bytes),
        _ => Vec::new(),
    }
}

/// One seeded mutant of `bytes` (a valid file with extension `ext`): (kind, bytes).
pub fn mutate(rng: &mut SplitMix64, ext: &str, bytes: &[u8]) -> (&'static str, Vec<u8>) {
    let mut b = bytes.to_vec();
    let len = b.len();
    // Most damage near the start, where the headers are.
    let offset = |rng: &mut SplitMix64| {
        if rng.below(2) == 0 {
            rng.below(len.min(256))
        } else {
            rng.below(len)
        }
    };
    match rng.below(6) {
        0 => {
            for _ in 0..1 + rng.below(4) {
                let o = offset(rng);
                b[o] ^= 1 << rng.below(8);
            }
            ("bitflip", b)
        }
        1 => {
            const INTERESTING: [u8; 6] = [0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE];
            for _ in 0..1 + rng.below(8) {
                let o = offset(rng);
                b[o] = if rng.below(2) == 0 {
                    INTERESTING[rng.below(INTERESTING.len())]
                } else {
                    rng.byte()
                };
            }
            ("overwrite", b)
        }
        2 => {
            let cut = offset(rng);
            b.truncate(cut);
            ("truncate", b)
        }
        3 => {
            let u = units(ext, bytes);
            let (start, n) = if u.is_empty() || rng.below(3) == 0 {
                let s = offset(rng);
                (s, 1 + rng.below((len - s).min(512)))
            } else {
                u[rng.below(u.len())]
            };
            let end = (start + n).min(len);
            let copy = b[start..end].to_vec();
            let times = 1 + rng.below(3);
            for _ in 0..times {
                b.splice(end..end, copy.iter().copied());
            }
            ("duplicate", b)
        }
        4 => {
            let fields = length_fields(ext, bytes);
            if fields.is_empty() {
                let o = offset(rng);
                b[o] = 0xFF;
                return ("overwrite", b);
            }
            let (o, width, be) = fields[rng.below(fields.len())];
            if o + width > len {
                b.truncate(o.min(len));
                return ("truncate", b);
            }
            let value: u64 = match rng.below(5) {
                0 => 0,
                1 => u64::MAX,
                2 => 1,
                3 => rng.next_u64() >> rng.below(64),
                _ => {
                    let old = read_uint(&b[o..o + width], be);
                    old.wrapping_add(1 + rng.below(16) as u64)
                        .wrapping_sub(rng.below(32) as u64)
                }
            };
            write_uint(&mut b[o..o + width], value, be);
            ("length", b)
        }
        _ => {
            // Remove a structural unit or a random range.
            let u = units(ext, bytes);
            let (start, n) = if u.len() > 1 && rng.below(2) == 0 {
                u[rng.below(u.len())]
            } else {
                let s = offset(rng);
                (s, 1 + rng.below((len - s).min(64)))
            };
            let end = (start + n).min(len);
            b.drain(start..end);
            ("delete", b)
        }
    }
}

fn read_uint(b: &[u8], be: bool) -> u64 {
    let mut v = 0u64;
    for k in 0..b.len() {
        let byte = if be { b[k] } else { b[b.len() - 1 - k] };
        v = (v << 8) | byte as u64;
    }
    v
}

fn write_uint(b: &mut [u8], v: u64, be: bool) {
    let n = b.len();
    for k in 0..n {
        let byte = (v >> (8 * (n - 1 - k))) as u8;
        if be {
            b[k] = byte;
        } else {
            b[n - 1 - k] = byte;
        }
    }
}

/// `count` seeded mutants spread over `formats`: (file name, bytes). Names start with a zero-padded
/// index, so a sorted walk sees them in generation order.
pub fn mutants(
    formats: &[(&'static str, &'static str, Vec<u8>)],
    count: usize,
    seed: u64,
) -> Vec<(String, Vec<u8>)> {
    let mut rng = SplitMix64(seed);
    (0..count)
        .map(|i| {
            let (name, ext, bytes) = &formats[i % formats.len()];
            let (kind, b) = mutate(&mut rng, ext, bytes);
            (format!("m{i:04}-{name}-{kind}.{ext}"), b)
        })
        .collect()
}

/// Truncations of `bytes` at `n` offsets: every one of the first 64 bytes, then spread evenly.
pub fn truncation_offsets(len: usize, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..len.min(64)).collect();
    if len > 64 && n > 64 {
        let rest = n - 64;
        for k in 0..rest {
            v.push(64 + (len - 64) * k / rest);
        }
    }
    v.sort_unstable();
    v.dedup();
    v.truncate(n);
    v
}

// ---------------------------------------------------------------------------------------------
// Bombs: tiny files declaring huge images.

/// A 35-byte GIF whose logical screen is `w`x`h`, holding one 1x1 frame.
pub fn gif_screen_bomb(w: u16, h: u16) -> Vec<u8> {
    let mut b = b"GIF89a".to_vec();
    b.extend(w.to_le_bytes());
    b.extend(h.to_le_bytes());
    b.extend([0x80, 0, 0]); // global colour table of 2 entries
    b.extend([0, 0, 0, 255, 255, 255]);
    b.extend([0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0]); // 1x1 frame at (0,0)
    b.extend([2, 2, 0x44, 0x01, 0]); // LZW: clear, 0, end
    b.push(0x3B);
    b
}

/// A GIF whose single frame is `w`x`h` (frame descriptor, not just the screen), data truncated.
pub fn gif_frame_bomb(w: u16, h: u16) -> Vec<u8> {
    let mut b = b"GIF89a".to_vec();
    b.extend(w.to_le_bytes());
    b.extend(h.to_le_bytes());
    b.extend([0x80, 0, 0]);
    b.extend([0, 0, 0, 255, 255, 255]);
    b.push(0x2C);
    b.extend([0, 0, 0, 0]);
    b.extend(w.to_le_bytes());
    b.extend(h.to_le_bytes());
    b.push(0);
    b.extend([2, 2, 0x44, 0x01, 0]);
    b.push(0x3B);
    b
}

/// A `w`x`h` all-black grayscale PNG (compressed zeros; 10000x10000 is about 100 KB).
pub fn png_zero_bomb(w: u32, h: u32) -> Vec<u8> {
    let raw = vec![0u8; w as usize * h as usize];
    let mut out = Vec::new();
    let enc = image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::NoFilter,
    );
    image::ImageEncoder::write_image(enc, &raw, w, h, image::ExtendedColorType::L8)
        .expect("encode PNG bomb");
    out
}

/// A PNG whose IHDR declares `w`x`h` (CRC fixed) but whose data is a 1x1 image's.
pub fn png_header_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut b = encode(
        &DynamicImage::ImageRgb8(RgbImage::new(1, 1)),
        ImageFormat::Png,
    );
    b[16..20].copy_from_slice(&w.to_be_bytes());
    b[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&b[12..29]);
    b[29..33].copy_from_slice(&crc.to_be_bytes());
    b
}

/// A small JPEG whose SOF is patched to `w`x`h` (the scan data is that of the small image).
pub fn jpeg_sof_bomb(w: u16, h: u16) -> Vec<u8> {
    let mut b = jpeg_baseline(&small_photo());
    let sof = find_sof(&b).expect("SOF");
    b[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    b[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    b
}

/// A progressive JPEG whose SOF is patched to `w`x`h` (libjpeg buffers whole coefficient planes).
pub fn jpeg_progressive_sof_bomb(w: u16, h: u16) -> Vec<u8> {
    let mut b = jpeg_progressive(&small_photo());
    let sof = find_sof(&b).expect("SOF");
    b[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    b[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    b
}

/// A little-endian TIFF of `w`x`h` 8-bit RGB whose one strip holds only `data_len` bytes.
pub fn tiff_header_bomb(w: u32, h: u32, data_len: u32) -> Vec<u8> {
    tiff(w, h, 3, 8, None, &vec![0x80u8; data_len as usize])
}

/// A BMP (BITMAPINFOHEADER, 24-bit) declaring `w`x`h` with `data_len` bytes of pixels.
pub fn bmp_header_bomb(w: i32, h: i32, data_len: u32) -> Vec<u8> {
    let mut b = b"BM".to_vec();
    b.extend((54 + data_len).to_le_bytes());
    b.extend([0, 0, 0, 0]);
    b.extend(54u32.to_le_bytes());
    b.extend(40u32.to_le_bytes());
    b.extend(w.to_le_bytes());
    b.extend(h.to_le_bytes());
    b.extend(1u16.to_le_bytes());
    b.extend(24u16.to_le_bytes());
    b.extend(0u32.to_le_bytes()); // BI_RGB
    b.extend(0u32.to_le_bytes());
    b.extend(2835u32.to_le_bytes());
    b.extend(2835u32.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend(std::iter::repeat_n(0x40u8, data_len as usize));
    b
}

/// A lossless WebP (VP8L) whose header declares `w`x`h` (at most 16384 each) followed by a few
/// bytes of a real bitstream: the decoder must give up, not allocate the declared canvas first.
pub fn webp_vp8l_bomb(w: u32, h: u32) -> Vec<u8> {
    let small = encode(
        &DynamicImage::ImageRgb8(RgbImage::from_pixel(8, 8, image::Rgb([90, 120, 200]))),
        ImageFormat::WebP,
    );
    // RIFF(4) size(4) WEBP(4) VP8L(4) size(4) signature 0x2f (1) then 14+14 bits of size.
    let mut b = small.clone();
    assert_eq!(&b[12..16], b"VP8L");
    let bits = u32::from_le_bytes(b[21..25].try_into().unwrap());
    let keep = bits & 0xF000_0000;
    let new = keep | ((w - 1) & 0x3FFF) | (((h - 1) & 0x3FFF) << 14);
    b[21..25].copy_from_slice(&new.to_le_bytes());
    b
}

/// A WebP with a VP8X header whose canvas is `w`x`h` (24-bit fields) around a 1x1 VP8L image.
pub fn webp_vp8x_bomb(w: u32, h: u32) -> Vec<u8> {
    let one = encode(
        &DynamicImage::ImageRgb8(RgbImage::new(1, 1)),
        ImageFormat::WebP,
    );
    let vp8l = &one[12..];
    let mut vp8x = vec![0u8; 10];
    vp8x[4..7].copy_from_slice(&(w - 1).to_le_bytes()[..3]);
    vp8x[7..10].copy_from_slice(&(h - 1).to_le_bytes()[..3]);
    let mut body = b"WEBP".to_vec();
    body.extend(riff_chunk(b"VP8X", &vp8x));
    body.extend(vp8l);
    riff(&body)
}

/// Every bomb, by name. `at_limit` ones declare exactly 100 MP (accepted by the default limit).
pub fn bombs() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("gif-screen-10000x10000.gif", gif_screen_bomb(10000, 10000)),
        ("gif-screen-65535x65535.gif", gif_screen_bomb(65535, 65535)),
        ("gif-frame-10000x10000.gif", gif_frame_bomb(10000, 10000)),
        ("png-zeros-10000x10000.png", png_zero_bomb(10000, 10000)),
        ("png-ihdr-10000x10000.png", png_header_bomb(10000, 10000)),
        (
            "png-ihdr-2147483647x2147483647.png",
            png_header_bomb(0x7FFF_FFFF, 0x7FFF_FFFF),
        ),
        ("jpeg-sof-20000x20000.jpg", jpeg_sof_bomb(20000, 20000)),
        ("jpeg-sof-10000x10000.jpg", jpeg_sof_bomb(10000, 10000)),
        ("jpeg-sof-65535x65535.jpg", jpeg_sof_bomb(65535, 65535)),
        (
            "jpeg-progressive-sof-10000x10000.jpg",
            jpeg_progressive_sof_bomb(10000, 10000),
        ),
        (
            "tiff-10000x10000-short-strip.tiff",
            tiff_header_bomb(10000, 10000, 64),
        ),
        (
            "tiff-100000x100000.tiff",
            tiff_header_bomb(100_000, 100_000, 64),
        ),
        (
            "bmp-10000x10000-no-data.bmp",
            bmp_header_bomb(10000, 10000, 16),
        ),
        (
            "bmp-10000x-10000-top-down.bmp",
            bmp_header_bomb(10000, -10000, 16),
        ),
        (
            "bmp-100000x100000.bmp",
            bmp_header_bomb(100_000, 100_000, 16),
        ),
        ("webp-vp8l-10000x10000.webp", webp_vp8l_bomb(10000, 10000)),
        ("webp-vp8l-16384x16384.webp", webp_vp8l_bomb(16384, 16384)),
        ("webp-vp8x-10000x10000.webp", webp_vp8x_bomb(10000, 10000)),
        (
            "webp-vp8x-16777216x16777216.webp",
            webp_vp8x_bomb(1 << 24, 1 << 24),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Containers and metadata.

pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A RIFF chunk (fourcc, size, payload, pad byte).
pub fn riff_chunk(fourcc: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut c = fourcc.to_vec();
    c.extend((payload.len() as u32).to_le_bytes());
    c.extend(payload);
    if payload.len() % 2 == 1 {
        c.push(0);
    }
    c
}

/// `RIFF<size><body>`.
pub fn riff(body: &[u8]) -> Vec<u8> {
    let mut b = b"RIFF".to_vec();
    b.extend((body.len() as u32).to_le_bytes());
    b.extend(body);
    b
}

/// A TIFF-structured EXIF block holding only the orientation tag.
pub fn exif_orientation(value: u16) -> Vec<u8> {
    let mut t = b"II*\0".to_vec();
    t.extend(8u32.to_le_bytes());
    t.extend(1u16.to_le_bytes());
    t.extend(0x0112u16.to_le_bytes());
    t.extend(3u16.to_le_bytes());
    t.extend(1u32.to_le_bytes());
    t.extend(value.to_le_bytes());
    t.extend([0, 0]);
    t.extend(0u32.to_le_bytes());
    t
}

/// A JPEG with an APP1 EXIF orientation segment after SOI.
pub fn jpeg_with_orientation(img: &RgbImage, value: u16) -> Vec<u8> {
    let jpeg = jpeg_baseline(img);
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend(exif_orientation(value));
    let mut out = jpeg[..2].to_vec();
    out.extend([0xFF, 0xE1]);
    out.extend(((payload.len() + 2) as u16).to_be_bytes());
    out.extend(payload);
    out.extend(&jpeg[2..]);
    out
}

/// A PNG with an eXIf orientation chunk.
pub fn png_with_orientation(img: &RgbImage, value: u16) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = image::codecs::png::PngEncoder::new(&mut out);
    image::ImageEncoder::set_exif_metadata(&mut enc, exif_orientation(value)).expect("exif");
    image::ImageEncoder::write_image(
        enc,
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )
    .expect("encode PNG");
    out
}

/// An extended WebP (VP8X, EXIF flag) with an EXIF orientation chunk after the image.
pub fn webp_with_orientation(img: &RgbImage, value: u16) -> Vec<u8> {
    let plain = encode(&DynamicImage::ImageRgb8(img.clone()), ImageFormat::WebP);
    let mut vp8x = vec![0x08, 0, 0, 0];
    vp8x.extend(&(img.width() - 1).to_le_bytes()[..3]);
    vp8x.extend(&(img.height() - 1).to_le_bytes()[..3]);
    let mut body = b"WEBP".to_vec();
    body.extend(riff_chunk(b"VP8X", &vp8x));
    body.extend(&plain[12..]);
    body.extend(riff_chunk(b"EXIF", &exif_orientation(value)));
    riff(&body)
}

/// An animated WebP (VP8X + ANIM + one ANMF per frame, each a lossless VP8L bitstream).
pub fn webp_animated(frames: &[RgbImage]) -> Vec<u8> {
    let (w, h) = (frames[0].width(), frames[0].height());
    let mut vp8x = vec![0x02, 0, 0, 0];
    vp8x.extend(&(w - 1).to_le_bytes()[..3]);
    vp8x.extend(&(h - 1).to_le_bytes()[..3]);
    let mut body = b"WEBP".to_vec();
    body.extend(riff_chunk(b"VP8X", &vp8x));
    body.extend(riff_chunk(b"ANIM", &[0, 0, 0, 0, 0, 0]));
    for f in frames {
        let plain = encode(&DynamicImage::ImageRgb8(f.clone()), ImageFormat::WebP);
        let mut anmf = vec![0u8; 6];
        anmf.extend(&(f.width() - 1).to_le_bytes()[..3]);
        anmf.extend(&(f.height() - 1).to_le_bytes()[..3]);
        anmf.extend(&100u32.to_le_bytes()[..3]);
        anmf.push(0);
        anmf.extend(&plain[12..]);
        body.extend(riff_chunk(b"ANMF", &anmf));
    }
    riff(&body)
}

/// An animated GIF of `frames`.
pub fn gif_animated(frames: &[RgbImage]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut out);
        enc.set_repeat(image::codecs::gif::Repeat::Infinite)
            .expect("repeat");
        let frames = frames
            .iter()
            .map(|f| image::Frame::new(DynamicImage::ImageRgb8(f.clone()).to_rgba8()));
        enc.encode_frames(frames).expect("encode GIF frames");
    }
    out
}

/// A minimal uncompressed little-endian TIFF: `spp` samples per pixel of `bits` bits, one strip
/// holding `data`, and an optional orientation tag.
pub fn tiff(w: u32, h: u32, spp: u16, bits: u16, orientation: Option<u16>, data: &[u8]) -> Vec<u8> {
    let mut entries: Vec<(u16, u16, u32, u32)> = Vec::new(); // tag, type, count, value
    let mut extra: Vec<u8> = Vec::new();
    let n_entries = 9 + orientation.is_some() as u32;
    let ifd_size = 2 + 12 * n_entries + 4;
    let extra_at = 8 + ifd_size;
    // BitsPerSample: inline when one value fits, else an offset to `spp` SHORTs.
    let bps_value = if spp <= 2 {
        (bits as u32) | if spp == 2 { (bits as u32) << 16 } else { 0 }
    } else {
        let off = extra_at + extra.len() as u32;
        for _ in 0..spp {
            extra.extend(bits.to_le_bytes());
        }
        off
    };
    if extra.len() % 2 == 1 {
        extra.push(0);
    }
    let data_at = extra_at + extra.len() as u32;
    let photometric = if spp >= 3 { 2 } else { 1 };
    entries.push((256, 4, 1, w));
    entries.push((257, 4, 1, h));
    entries.push((258, 3, spp as u32, bps_value));
    entries.push((259, 3, 1, 1));
    entries.push((262, 3, 1, photometric));
    entries.push((273, 4, 1, data_at));
    if let Some(o) = orientation {
        entries.push((274, 3, 1, o as u32));
    }
    entries.push((277, 3, 1, spp as u32));
    entries.push((278, 4, 1, h));
    entries.push((279, 4, 1, data.len() as u32));
    let mut b = b"II*\0".to_vec();
    b.extend(8u32.to_le_bytes());
    b.extend((entries.len() as u16).to_le_bytes());
    for (tag, ty, count, value) in &entries {
        b.extend(tag.to_le_bytes());
        b.extend(ty.to_le_bytes());
        b.extend(count.to_le_bytes());
        if *ty == 3 && *count == 1 {
            b.extend((*value as u16).to_le_bytes());
            b.extend([0, 0]);
        } else {
            b.extend(value.to_le_bytes());
        }
    }
    b.extend(0u32.to_le_bytes());
    // ExtraSamples would be needed for gray+alpha; 9 entries reserved, pad if fewer were used.
    while b.len() < extra_at as usize {
        b.push(0);
    }
    b.extend(&extra);
    b.extend(data);
    b
}

/// `img` as an 8-bit RGB TIFF with an orientation tag.
pub fn tiff_with_orientation(img: &RgbImage, value: u16) -> Vec<u8> {
    tiff(img.width(), img.height(), 3, 8, Some(value), img.as_raw())
}

/// `img` as a 16-bit RGB TIFF (little-endian samples).
pub fn tiff_16bit(img: &RgbImage) -> Vec<u8> {
    let data: Vec<u8> = img
        .as_raw()
        .iter()
        .flat_map(|&v| (v as u16 * 257).to_le_bytes())
        .collect();
    tiff(img.width(), img.height(), 3, 16, None, &data)
}

/// Writes `bytes` to `dir/name` (a `Path` name, so non-UTF-8 names work on unix).
pub fn write(dir: &Path, name: impl AsRef<Path>, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}
