//! `facekit detect` as a user runs it: the real binary on real photos and on every kind of bad
//! input (each gets an error naming the file, the run goes on, exit code 2).

mod common;

use std::path::Path;

use common::{facekit, fixture, json_lines};
use image::{DynamicImage, ImageEncoder, RgbImage};
use serde_json::Value;

fn upright() -> RgbImage {
    facekit::io::load_image(&fixture("2008_001322.jpg"), &Default::default()).unwrap()
}

fn png_bytes(img: &DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// A TIFF-structured EXIF block holding only the orientation tag.
fn exif_orientation(value: u16) -> Vec<u8> {
    let mut t = b"II*\0".to_vec();
    t.extend(8u32.to_le_bytes()); // first IFD offset
    t.extend(1u16.to_le_bytes()); // one entry
    t.extend(0x0112u16.to_le_bytes()); // Orientation
    t.extend(3u16.to_le_bytes()); // SHORT
    t.extend(1u32.to_le_bytes()); // count
    t.extend(value.to_le_bytes());
    t.extend([0, 0]);
    t.extend(0u32.to_le_bytes()); // no next IFD
    t
}

/// A JPEG of `img` with an APP1 EXIF orientation segment after SOI.
fn jpeg_with_orientation(img: &RgbImage, value: u16) -> Vec<u8> {
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .encode_image(img)
        .unwrap();
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend(exif_orientation(value));
    let mut out = jpeg[..2].to_vec();
    out.extend([0xFF, 0xE1]);
    out.extend(((payload.len() + 2) as u16).to_be_bytes());
    out.extend(payload);
    out.extend(&jpeg[2..]);
    out
}

/// A PNG of `img` with an eXIf orientation chunk (lossless, so boxes must match exactly).
fn png_with_orientation(img: &RgbImage, value: u16) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = image::codecs::png::PngEncoder::new(&mut out);
    enc.set_exif_metadata(exif_orientation(value)).unwrap();
    enc.write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )
    .unwrap();
    out
}

fn crc32(data: &[u8]) -> u32 {
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

/// A PNG whose header declares `w x h` pixels, with no image data behind it.
fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    out.extend(13u32.to_be_bytes());
    out.extend(&ihdr);
    out.extend(crc32(&ihdr).to_be_bytes());
    // A token IDAT and IEND, so a decoder reads the header and reaches the data.
    for (kind, data) in [
        (&b"IDAT"[..], &b"\x78\x9c\x03\x00\x00\x00\x00\x01"[..]),
        (&b"IEND"[..], &b""[..]),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend(data);
        out.extend((data.len() as u32).to_be_bytes());
        out.extend(&chunk);
        out.extend(crc32(&chunk).to_be_bytes());
    }
    out
}

fn faces_of(record: &Value) -> Vec<[f64; 4]> {
    common::face_boxes(record)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn json_schema_on_real_photos() {
    let a = fixture("2008_001322.jpg");
    let out = facekit(&["detect", "--json", a.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = json_lines(&out.stdout);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r["path"], a.to_str().unwrap());
    assert_eq!(
        (r["width"].as_u64(), r["height"].as_u64()),
        (Some(500), Some(375))
    );
    let faces = r["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 3);
    let scores: Vec<f64> = faces.iter().map(|f| f["score"].as_f64().unwrap()).collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "sorted by score: {scores:?}"
    );
    for f in faces {
        let b = f["box"].as_array().unwrap();
        assert_eq!(b.len(), 4);
        let lm = f["landmarks"].as_array().unwrap();
        assert_eq!(lm.len(), 5);
        // Landmarks in facenet-pytorch's order: eyes left-to-right above nose above mouth corners.
        let p = |i: usize, j: usize| lm[i][j].as_f64().unwrap();
        assert!(p(0, 0) < p(1, 0) && p(3, 0) < p(4, 0));
        assert!(p(0, 1) < p(2, 1) && p(2, 1) < p(3, 1));
    }
}

#[test]
fn table_output_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("album/nested");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::copy(fixture("2008_001322.jpg"), sub.join("party.jpg")).unwrap();
    std::fs::copy(
        fixture("bradley_cooper_aligned.png"),
        dir.path().join("album/face.dat"),
    )
    .unwrap();
    std::fs::write(dir.path().join("album/notes.txt"), "not an image").unwrap();
    let out = facekit(&["detect", dir.path().join("album").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("FACE"), "{text}");
    // 1 face in the PNG (recognised by content despite .dat), 3 in the JPEG; the text file is skipped.
    assert_eq!(lines.len(), 1 + 1 + 3, "{text}");
    assert!(lines.iter().any(|l| l.ends_with("face.dat")));
    assert!(!text.contains("notes.txt"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 image(s), 4 face(s)"));
}

#[test]
fn bad_inputs_are_reported_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let photo = std::fs::read(fixture("2008_001322.jpg")).unwrap();
    let webp = {
        let mut out = Vec::new();
        DynamicImage::ImageRgb8(upright())
            .write_to(
                &mut std::io::Cursor::new(&mut out),
                image::ImageFormat::WebP,
            )
            .unwrap();
        out
    };
    let gray = png_bytes(&DynamicImage::ImageLuma8(
        DynamicImage::ImageRgb8(upright()).to_luma8(),
    ));
    let rgba = png_bytes(&DynamicImage::ImageRgba8(
        DynamicImage::ImageRgb8(upright()).to_rgba8(),
    ));
    let rgb16 = png_bytes(&DynamicImage::ImageRgb16(
        DynamicImage::ImageRgb8(upright()).to_rgb16(),
    ));
    let tiny = png_bytes(&DynamicImage::ImageRgb8(RgbImage::new(1, 1)));

    let cases: Vec<(String, Option<&str>)> = vec![
        (write(d, "empty.jpg", b""), Some("empty file")),
        (
            write(d, "truncated.jpg", &photo[..photo.len() / 2]),
            Some("truncated JPEG"),
        ),
        (
            write(d, "text.jpg", b"this is a text file, not a photo\n"),
            Some("not a recognised image"),
        ),
        (
            write(d, "huge.png", &png_declaring(100_000, 100_000)),
            Some("over the 100.0 MP limit"),
        ),
        (
            d.join("missing.jpg").to_string_lossy().into_owned(),
            Some("No such file"),
        ),
        (write(d, "webp.jpg", &webp), None),
        (write(d, "tiny.png", &tiny), None),
        (write(d, "gray.png", &gray), None),
        (write(d, "rgba.png", &rgba), None),
        (write(d, "rgb16.png", &rgb16), None),
    ];
    let mut args = vec!["detect", "--json"];
    args.extend(cases.iter().map(|(p, _)| p.as_str()));
    let out = facekit(&args);
    assert_eq!(out.status.code(), Some(2), "some inputs failed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The library's typed error gets the CLI's hint on stderr (the JSON reason names no flag).
    assert!(
        stderr.contains("over the 100.0 MP limit (raise the limit with --max-pixels)"),
        "{stderr}"
    );
    let recs = json_lines(&out.stdout);
    assert_eq!(recs.len(), cases.len(), "one record per input: {recs:?}");
    for (path, want_err) in &cases {
        let rec = recs
            .iter()
            .find(|r| r["path"] == path.as_str())
            .unwrap_or_else(|| panic!("no record for {path}"));
        match want_err {
            Some(reason) => {
                let err = rec["error"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{path}: expected an error, got {rec}"));
                assert!(
                    err.contains(reason),
                    "{path}: {err:?} should say {reason:?}"
                );
                assert!(
                    stderr.contains(path.as_str()),
                    "stderr names {path}: {stderr}"
                );
            }
            None => {
                assert!(rec.get("error").is_none(), "{path}: unexpected error {rec}");
                let n = faces_of(rec).len();
                if path.ends_with("tiny.png") {
                    assert_eq!(n, 0);
                    assert_eq!(
                        (rec["width"].as_u64(), rec["height"].as_u64()),
                        (Some(1), Some(1))
                    );
                } else {
                    assert_eq!(n, 3, "{path}: faces found in every colour format");
                }
            }
        }
    }
}

#[test]
fn exif_orientation_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let up = upright();
    let (w, h) = (up.width() as f64, up.height() as f64);
    // Orientation 6: stored rotated 90 degrees counter-clockwise, shown after a clockwise turn.
    // Orientation 8: the other way round.
    let stored6 = image::imageops::rotate270(&up);
    let stored8 = image::imageops::rotate90(&up);
    let up_png = write(
        dir.path(),
        "up.png",
        &png_bytes(&DynamicImage::ImageRgb8(up.clone())),
    );
    let up_jpg = write(dir.path(), "up.jpg", &{
        let mut v = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut v, 95)
            .encode_image(&up)
            .unwrap();
        v
    });
    let files = [
        up_png.clone(),
        write(dir.path(), "o6.png", &png_with_orientation(&stored6, 6)),
        write(dir.path(), "o8.png", &png_with_orientation(&stored8, 8)),
        up_jpg.clone(),
        write(dir.path(), "o6.jpg", &jpeg_with_orientation(&stored6, 6)),
        write(dir.path(), "o8.jpg", &jpeg_with_orientation(&stored8, 8)),
    ];
    let mut args = vec!["detect", "--json"];
    args.extend(files.iter().map(|s| s.as_str()));
    let out = facekit(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = json_lines(&out.stdout);
    let sorted = |r: &Value| {
        let mut f = faces_of(r);
        f.sort_by(|a, b| a[0].total_cmp(&b[0]));
        f
    };
    for (i, tol) in [(0usize, 0.01), (3, 3.0)] {
        let want = sorted(&recs[i]);
        assert_eq!(want.len(), 3);
        for rec in &recs[i + 1..i + 3] {
            // Reported in the upright image's coordinates.
            assert_eq!(
                (rec["width"].as_f64(), rec["height"].as_f64()),
                (Some(w), Some(h)),
                "{rec}"
            );
            let got = sorted(rec);
            assert_eq!(got.len(), 3, "{rec}");
            for (g, e) in got.iter().zip(&want) {
                for k in 0..4 {
                    assert!(
                        (g[k] - e[k]).abs() <= tol,
                        "{}: {g:?} vs upright {e:?}",
                        rec["path"]
                    );
                }
            }
        }
    }
}

#[test]
fn annotate_writes_copies_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("party.jpg");
    std::fs::copy(fixture("2008_001322.jpg"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let out_dir = dir.path().join("annotated");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::write(out_dir.join("party_faces.jpg"), b"user's own file").unwrap();
    for _ in 0..2 {
        let out = facekit(&[
            "detect",
            "--annotate",
            out_dir.to_str().unwrap(),
            input.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(std::fs::read(&input).unwrap(), before, "input untouched");
    assert_eq!(
        std::fs::read(out_dir.join("party_faces.jpg")).unwrap(),
        b"user's own file"
    );
    for name in ["party_faces-1.jpg", "party_faces-2.jpg"] {
        let img = image::open(out_dir.join(name)).unwrap();
        assert_eq!((img.width(), img.height()), (500, 375));
    }
    assert_eq!(
        std::fs::read_dir(&out_dir).unwrap().count(),
        3,
        "no temporary files left"
    );
}

#[test]
fn invalid_options_fail_cleanly() {
    let a = fixture("2008_001322.jpg");
    let out = facekit(&["detect", "--factor", "1.5", a.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("factor"));
    let out = facekit(&[
        "detect",
        "--models",
        "/nonexistent/models",
        a.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/models/mtcnn.safetensors"));
}

/// A camera-sized JPEG (the fixture upscaled 6 times, optionally stored rotated with an EXIF
/// orientation) is detected on a copy reduced in the decoder, and the faces are where detection
/// on the fully decoded image finds them, in the upright full image's pixels; `align` cuts its
/// chips from the full-resolution image.
#[test]
fn large_jpegs_are_detected_on_a_reduced_decode() {
    let dir = tempfile::tempdir().unwrap();
    let big = image::imageops::resize(&upright(), 3000, 2250, image::imageops::Triangle);
    let plain = write(dir.path(), "big.jpg", &{
        let mut v = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut v, 92)
            .encode_image(&big)
            .unwrap();
        v
    });
    let rotated = write(
        dir.path(),
        "big_o6.jpg",
        &jpeg_with_orientation(&image::imageops::rotate270(&big), 6),
    );
    // The library on the fully decoded image (area-downscaled working copy).
    let full = facekit::io::load_image(Path::new(&plain), &Default::default()).unwrap();
    let mut want: Vec<[f64; 4]> = common::detector()
        .detect(&full)
        .unwrap()
        .iter()
        .map(|d| d.bbox.to_array().map(f64::from))
        .collect();
    want.sort_by(|a, b| a[0].total_cmp(&b[0]));
    assert_eq!(want.len(), 3);
    let out = facekit(&["detect", "--json", &plain, &rotated]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for rec in json_lines(&out.stdout) {
        assert_eq!(
            (rec["width"].as_u64(), rec["height"].as_u64()),
            (Some(3000), Some(2250)),
            "{rec}"
        );
        let mut got = faces_of(&rec);
        got.sort_by(|a, b| a[0].total_cmp(&b[0]));
        assert_eq!(got.len(), want.len(), "{rec}");
        for (g, w) in got.iter().zip(&want) {
            let size = w[2] - w[0];
            for k in 0..4 {
                // Within 3 % of the face's width (the rotated file's JPEG blocks differ too).
                assert!((g[k] - w[k]).abs() < 0.03 * size, "{g:?} vs {w:?}");
            }
        }
    }
    let chips = dir.path().join("chips");
    let out = facekit(&["align", &plain, "--out", chips.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The chips are cut from the full-resolution image at the detections `detect` reported.
    let out = facekit(&["detect", "--json", &plain]);
    let rec = &json_lines(&out.stdout)[0];
    let pipeline = facekit::Pipeline::new().unwrap();
    for (k, f) in rec["faces"].as_array().unwrap().iter().enumerate() {
        let num = |v: &Value| v.as_f64().unwrap() as f32;
        let b: Vec<f32> = f["box"].as_array().unwrap().iter().map(num).collect();
        let lm = f["landmarks"].as_array().unwrap();
        let det = facekit::Detection {
            bbox: facekit::BBox::from_array([b[0], b[1], b[2], b[3]]),
            score: num(&f["score"]),
            landmarks: std::array::from_fn(|i| facekit::Point {
                x: num(&lm[i][0]),
                y: num(&lm[i][1]),
            }),
        };
        let chip = image::open(chips.join(format!("big_{k}.png")))
            .unwrap()
            .to_rgb8();
        assert_eq!(chip, pipeline.chip(&full, &det), "chip {k}");
    }
}

/// One face numbering everywhere: `detect`'s table, its JSON order, `embed`'s `face` field and
/// `align`'s chip names all count a photo's faces from 0 in the same (score) order.
#[test]
fn faces_are_numbered_from_zero_everywhere() {
    let photo = fixture("2008_001322.jpg");
    let p = photo.to_str().unwrap();
    let table = facekit(&["detect", p]);
    let text = String::from_utf8_lossy(&table.stdout);
    let numbers: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(numbers, ["0", "1", "2"], "{text}");
    let detected = json_lines(&facekit(&["detect", "--json", p]).stdout);
    let embedded = json_lines(&facekit(&["embed", p]).stdout);
    for (k, rec) in embedded.iter().enumerate() {
        assert_eq!(rec["face"], k);
        // The same face: the k-th of detect's JSON and the k-th row of its table.
        assert_eq!(rec["box"], detected[0]["faces"][k]["box"]);
        let cols: Vec<&str> = text
            .lines()
            .nth(1 + k)
            .unwrap()
            .split_whitespace()
            .collect();
        let x1: f64 = cols[2].parse().unwrap();
        assert!(
            (x1 - rec["box"][0].as_f64().unwrap()).abs() < 0.06,
            "{text}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = facekit(&["align", p, "--out", dir.path().to_str().unwrap()]);
    assert!(out.status.success());
    let mut chips: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    chips.sort();
    assert_eq!(
        chips,
        [
            "2008_001322_0.png",
            "2008_001322_1.png",
            "2008_001322_2.png"
        ]
    );
}

/// `--min-score` drops faces below the score before anything else sees them, on every
/// subcommand that detects; out-of-range values are refused.
#[test]
fn min_score_drops_doubtful_faces() {
    let photo = fixture("2008_001322.jpg");
    let p = photo.to_str().unwrap();
    let all = json_lines(&facekit(&["detect", "--json", p]).stdout);
    let scores: Vec<f64> = all[0]["faces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["score"].as_f64().unwrap())
        .collect();
    assert_eq!(scores.len(), 3);
    // Between the lowest score and the next: the lowest-scoring face goes.
    let cut = (scores[1] + scores[2]) / 2.0;
    assert!(scores[2] < cut && cut < scores[1], "{scores:?}");
    let cut = format!("{cut:.6}");
    for detector in ["mtcnn", "yunet"] {
        let base = json_lines(&facekit(&["detect", "--json", "--detector", detector, p]).stdout);
        let n = base[0]["faces"].as_array().unwrap().len();
        let lowest = base[0]["faces"][n - 1]["score"].as_f64().unwrap();
        let keep = base[0]["faces"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["score"].as_f64().unwrap() >= lowest + 1e-4)
            .count();
        let s = format!("{:.6}", lowest + 1e-4);
        let out = facekit(&[
            "detect",
            "--json",
            "--detector",
            detector,
            "--min-score",
            &s,
            p,
        ]);
        let got = json_lines(&out.stdout);
        assert_eq!(
            got[0]["faces"].as_array().unwrap().len(),
            keep,
            "{detector}"
        );
    }
    let embedded = json_lines(&facekit(&["embed", "--min-score", &cut, p]).stdout);
    assert_eq!(embedded.len(), 2);
    let out = facekit(&["verify", "--min-score", "1.5", p, p]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("between 0 and 1"));
}

/// `--min-face` is on every subcommand that detects, `embed` and `verify` included: the search
/// starts at that face size, so the group photo's 62-87 px faces go as it grows past them.
#[test]
fn min_face_on_embed_and_verify() {
    let photo = fixture("2008_001322.jpg");
    let p = photo.to_str().unwrap();
    let faces = |min: &str| json_lines(&facekit(&["embed", "--min-face", min, p]).stdout).len();
    assert_eq!(json_lines(&facekit(&["embed", p]).stdout).len(), 3);
    assert_eq!(faces("40"), 3);
    let (some, none) = (faces("150"), faces("300"));
    assert!((1..3).contains(&some), "{some} faces at 150 px");
    assert_eq!(none, 0);
    let out = facekit(&["verify", "--min-face", "300", p, p]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no face found"));
    assert_eq!(
        facekit(&["verify", "--min-face", "40", p, p]).status.code(),
        Some(0)
    );
}
