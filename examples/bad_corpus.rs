//! Writes a corpus of bad and odd inputs for issue #10's acceptance run (`scripts/bad-inputs.sh`):
//! truncations of every format at many offsets, bombs in every format, odd file names, EXIF
//! orientations 1-8 in JPEG/PNG/WebP/TIFF, CMYK/YCCK JPEGs, 16-bit PNG/TIFF, palette PNG/GIF,
//! animated GIF/WebP, grayscale and gray+alpha, zero-size and 1x1 images, special files (FIFO,
//! symlink loop, dangling link, directory cycle, text with an image extension) and N seeded
//! mutants of the small valid images. Generated from the committed photos; nothing is downloaded.
//!
//! ```text
//! cargo run --release --example bad_corpus -- OUT_DIR [--mutants N] [--seed S]
//! ```
//!
//! Prints one line per folder and the total. OUT_DIR must not exist or be empty.

#[path = "../tests/badgen/mod.rs"]
mod badgen;

use std::path::{Path, PathBuf};

use badgen::write;
use image::{DynamicImage, ImageFormat, RgbImage};

struct Opts {
    out: PathBuf,
    mutants: usize,
    seed: u64,
}

fn parse_args() -> Result<Opts, String> {
    let mut args = std::env::args_os().skip(1);
    let mut out = None;
    let mut mutants = 500;
    let mut seed = 1;
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--mutants") => {
                mutants = next_number(&mut args, "--mutants")? as usize;
            }
            Some("--seed") => seed = next_number(&mut args, "--seed")?,
            Some("-h") | Some("--help") => {
                return Err("usage: bad_corpus OUT_DIR [--mutants N] [--seed S]".into())
            }
            _ if out.is_none() => out = Some(PathBuf::from(a)),
            _ => return Err(format!("unexpected argument {a:?}")),
        }
    }
    Ok(Opts {
        out: out.ok_or("usage: bad_corpus OUT_DIR [--mutants N] [--seed S]")?,
        mutants,
        seed,
    })
}

fn next_number(
    args: &mut impl Iterator<Item = std::ffi::OsString>,
    flag: &str,
) -> Result<u64, String> {
    args.next()
        .and_then(|v| v.to_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| format!("{flag} needs a non-negative integer"))
}

fn main() -> std::process::ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    if opts.out.exists() && std::fs::read_dir(&opts.out).map_or(true, |mut d| d.next().is_some()) {
        eprintln!("{}: exists and is not empty", opts.out.display());
        return std::process::ExitCode::from(2);
    }
    let mut total = 0;
    let mut section = |name: &str, f: &dyn Fn(&Path) -> usize| {
        let dir = opts.out.join(name);
        std::fs::create_dir_all(&dir).expect("create folder");
        let n = f(&dir);
        println!("{name:>12}: {n} files");
        total += n;
    };
    section("truncations", &truncations);
    section("bombs", &bombs);
    section("names", &odd_names);
    section("exif", &exif);
    section("color", &color_and_layout);
    section("special", &special);
    let (mutants, seed) = (opts.mutants, opts.seed);
    section("mutants", &move |dir| mutants_into(dir, mutants, seed));
    println!("{:>12}: {total} files in {}", "total", opts.out.display());
    std::process::ExitCode::SUCCESS
}

/// Every format, cut at 20 offsets (the first bytes, then spread over the file).
fn truncations(dir: &Path) -> usize {
    let mut n = 0;
    for (name, ext, bytes) in badgen::small_formats(&badgen::small_photo()) {
        let offsets: Vec<usize> = (0..12)
            .chain((1..=8).map(|k| bytes.len() * k / 9))
            .collect();
        for cut in offsets {
            write(dir, format!("{name}-cut{cut:06}.{ext}"), &bytes[..cut]);
            n += 1;
        }
    }
    n
}

fn bombs(dir: &Path) -> usize {
    let all = badgen::bombs();
    for (name, bytes) in &all {
        write(dir, name, bytes);
    }
    all.len()
}

fn odd_names(dir: &Path) -> usize {
    let jpeg = badgen::jpeg_baseline(&badgen::portrait());
    let mut names: Vec<std::ffi::OsString> = vec![
        "with space.jpg".into(),
        "-leading-dash.jpg".into(),
        "--help.jpg".into(),
        "new\nline.jpg".into(),
        "tab\there.jpg".into(),
        "quote\"comma,.jpg".into(),
        "фото-写真-📷.jpg".into(),
        format!("{}.jpg", "a".repeat(246)).into(), // 250 bytes
        "UPPER.JPG".into(),
        "no-extension".into(),
    ];
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        names.push(std::ffi::OsString::from_vec(b"caf\xe9-\xff.jpg".to_vec()));
    }
    for name in &names {
        write(dir, name, &jpeg);
    }
    names.len()
}

/// EXIF orientations 1-8 in JPEG (APP1), PNG (eXIf), WebP (VP8X + EXIF) and TIFF (tag 274).
fn exif(dir: &Path) -> usize {
    let img = badgen::portrait();
    for o in 1..=8u16 {
        write(
            dir,
            format!("orient{o}.jpg"),
            &badgen::jpeg_with_orientation(&img, o),
        );
        write(
            dir,
            format!("orient{o}.png"),
            &badgen::png_with_orientation(&img, o),
        );
        write(
            dir,
            format!("orient{o}.webp"),
            &badgen::webp_with_orientation(&img, o),
        );
        write(
            dir,
            format!("orient{o}.tiff"),
            &badgen::tiff_with_orientation(&img, o),
        );
    }
    // Out-of-range orientations.
    for o in [0u16, 9, 0xFFFF] {
        write(
            dir,
            format!("orient{o}.jpg"),
            &badgen::jpeg_with_orientation(&img, o),
        );
    }
    35
}

/// A zlib stream of `data` in stored (uncompressed) deflate blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut z = vec![0x78, 0x01];
    let chunks: Vec<&[u8]> = data.chunks(65535).collect();
    for (i, c) in chunks.iter().enumerate() {
        z.push((i + 1 == chunks.len()) as u8);
        z.extend((c.len() as u16).to_le_bytes());
        z.extend((!(c.len() as u16)).to_le_bytes());
        z.extend(*c);
    }
    if data.is_empty() {
        z.extend([1, 0, 0, 0xFF, 0xFF]);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    z.extend(((b << 16) | a).to_be_bytes());
    z
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend(data);
    c.extend(&body);
    c.extend(badgen::crc32(&body).to_be_bytes());
    c
}

/// A PNG with any header (bit depth, colour type) and already-filtered scanlines.
fn png_raw(w: u32, h: u32, depth: u8, color: u8, plte: Option<&[u8]>, raw: &[u8]) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([depth, color, 0, 0, 0]);
    b.extend(png_chunk(b"IHDR", &ihdr));
    if let Some(p) = plte {
        b.extend(png_chunk(b"PLTE", p));
    }
    b.extend(png_chunk(b"IDAT", &zlib_stored(raw)));
    b.extend(png_chunk(b"IEND", &[]));
    b
}

/// `img` as an 8-bit palette PNG (a 6x6x6 colour cube).
fn png_palette(img: &RgbImage) -> Vec<u8> {
    let mut plte = Vec::new();
    for r in 0..6u8 {
        for g in 0..6u8 {
            for b in 0..6u8 {
                plte.extend([r * 51, g * 51, b * 51]);
            }
        }
    }
    let mut raw = Vec::new();
    for y in 0..img.height() {
        raw.push(0);
        for x in 0..img.width() {
            let [r, g, b] = img.get_pixel(x, y).0;
            let q = |v: u8| (v as u16 * 5 / 255) as u8;
            raw.push(q(r) * 36 + q(g) * 6 + q(b));
        }
    }
    png_raw(img.width(), img.height(), 8, 3, Some(&plte), &raw)
}

fn color_and_layout(dir: &Path) -> usize {
    let img = badgen::portrait();
    let dynamic = DynamicImage::ImageRgb8(img.clone());
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("cmyk.jpg".into(), badgen::jpeg_cmyk(&img)),
        ("ycck.jpg".into(), badgen::jpeg_ycck(&img)),
        ("gray.jpg".into(), badgen::jpeg_gray(&img)),
        ("progressive.jpg".into(), badgen::jpeg_progressive(&img)),
        (
            "rgb16.png".into(),
            badgen::encode(
                &DynamicImage::ImageRgb16(dynamic.to_rgb16()),
                ImageFormat::Png,
            ),
        ),
        (
            "gray16.png".into(),
            badgen::encode(
                &DynamicImage::ImageLuma16(dynamic.to_luma16()),
                ImageFormat::Png,
            ),
        ),
        (
            "gray.png".into(),
            badgen::encode(
                &DynamicImage::ImageLuma8(dynamic.to_luma8()),
                ImageFormat::Png,
            ),
        ),
        (
            "gray-alpha.png".into(),
            badgen::encode(
                &DynamicImage::ImageLumaA8(dynamic.to_luma_alpha8()),
                ImageFormat::Png,
            ),
        ),
        (
            "rgba.png".into(),
            badgen::encode(
                &DynamicImage::ImageRgba8(dynamic.to_rgba8()),
                ImageFormat::Png,
            ),
        ),
        (
            "rgba.webp".into(),
            badgen::encode(
                &DynamicImage::ImageRgba8(dynamic.to_rgba8()),
                ImageFormat::WebP,
            ),
        ),
        ("palette.png".into(), png_palette(&img)),
        (
            "palette.gif".into(),
            badgen::encode(&dynamic, ImageFormat::Gif),
        ),
        ("rgb16.tiff".into(), badgen::tiff_16bit(&img)),
        (
            "gray.tiff".into(),
            badgen::tiff(
                img.width(),
                img.height(),
                1,
                8,
                None,
                dynamic.to_luma8().as_raw(),
            ),
        ),
        (
            "gray.bmp".into(),
            badgen::encode(
                &DynamicImage::ImageLuma8(dynamic.to_luma8()),
                ImageFormat::Bmp,
            ),
        ),
        (
            "animated.gif".into(),
            badgen::gif_animated(&[img.clone(), image::imageops::flip_horizontal(&img)]),
        ),
        (
            "animated.webp".into(),
            badgen::webp_animated(&[img.clone(), image::imageops::flip_horizontal(&img)]),
        ),
        ("empty.jpg".into(), Vec::new()),
        ("png-0x0.png".into(), badgen::png_header_bomb(0, 0)),
        ("png-0x1.png".into(), badgen::png_header_bomb(0, 1)),
        ("gif-0x0.gif".into(), badgen::gif_screen_bomb(0, 0)),
        ("bmp-0x0.bmp".into(), badgen::bmp_header_bomb(0, 0, 0)),
        ("tiff-0x0.tiff".into(), badgen::tiff(0, 0, 3, 8, None, &[])),
        ("webp-1x1-vp8x-0.webp".into(), badgen::webp_vp8x_bomb(1, 1)),
    ];
    // 1x1 images in every format.
    let one = RgbImage::from_pixel(1, 1, image::Rgb([200, 150, 100]));
    for (name, ext, bytes) in badgen::small_formats(&one) {
        files.push((format!("1x1-{name}.{ext}"), bytes));
    }
    // Extreme aspect ratios.
    let strip = RgbImage::from_pixel(4000, 1, image::Rgb([10, 20, 30]));
    files.push((
        "strip-4000x1.png".into(),
        badgen::encode(&DynamicImage::ImageRgb8(strip.clone()), ImageFormat::Png),
    ));
    let tall = image::imageops::rotate90(&strip);
    files.push((
        "strip-1x4000.png".into(),
        badgen::encode(&DynamicImage::ImageRgb8(tall), ImageFormat::Png),
    ));
    for (name, bytes) in &files {
        write(dir, name, bytes);
    }
    files.len()
}

/// FIFOs, links and text files where images are expected (unix); text files elsewhere.
fn special(dir: &Path) -> usize {
    let mut n = 0;
    write(dir, "notes.jpg", b"shopping list: milk, eggs\n");
    write(dir, "README.txt", b"holiday photos\n");
    write(dir, "html.png", b"<!doctype html><title>404</title>\n");
    n += 3;
    #[cfg(unix)]
    {
        use std::os::unix::fs::symlink;
        let good = write(dir, "good.jpg", &badgen::jpeg_baseline(&badgen::portrait()));
        symlink(good.file_name().unwrap(), dir.join("link-to-good.jpg")).unwrap();
        symlink("loop.jpg", dir.join("loop.jpg")).unwrap();
        symlink("nowhere.jpg", dir.join("dangling.jpg")).unwrap();
        symlink("/dev/zero", dir.join("zero.jpg")).unwrap();
        std::fs::create_dir(dir.join("cycle")).unwrap();
        symlink("..", dir.join("cycle/back")).unwrap();
        let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(
            dir.join("fifo.jpg").as_os_str(),
        ))
        .unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
        n += 7;
    }
    n
}

fn mutants_into(dir: &Path, count: usize, seed: u64) -> usize {
    let formats = badgen::small_formats(&badgen::small_photo());
    for (name, bytes) in badgen::mutants(&formats, count, seed) {
        write(dir, name, &bytes);
    }
    count
}
