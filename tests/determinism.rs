//! The exact path gives bit-identical results whatever the thread count and the batch size:
//! detection boxes, landmarks and embeddings, through the library and through `facekit embed`.

mod common;

use common::{facekit, fixture};
use facekit::{Face, Pipeline};
use image::RgbImage;

/// The committed photos: 3 faces, 1 face, and four 250x250 LFW photos.
fn photos() -> Vec<RgbImage> {
    let mut paths = vec![
        fixture("2008_001322.jpg"),
        fixture("Tom_Cruise_avp_2014_4.jpg"),
    ];
    let mut lfw: Vec<_> = std::fs::read_dir(fixture("lfw"))
        .expect("tests/fixtures/lfw")
        .map(|e| e.expect("fixture entry").path())
        .collect();
    lfw.sort();
    paths.extend(lfw);
    paths
        .iter()
        .map(|p| image::open(p).expect("fixture decodes").to_rgb8())
        .collect()
}

/// Every number of every face, as bits, so that equality means bit-identical.
fn bits(faces: &[Vec<Face>]) -> Vec<Vec<u32>> {
    faces
        .iter()
        .flatten()
        .map(|f| {
            let b = f.bbox;
            let mut v: Vec<u32> = [b.x1, b.y1, b.x2, b.y2, f.score]
                .iter()
                .map(|x| x.to_bits())
                .collect();
            v.extend(
                f.landmarks
                    .iter()
                    .flat_map(|p| [p.x.to_bits(), p.y.to_bits()]),
            );
            v.extend(f.embedding.iter().map(|x| x.to_bits()));
            v
        })
        .collect()
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(f)
}

#[test]
fn faces_are_bit_identical_for_any_thread_count() {
    let pipeline = Pipeline::new().expect("pipeline with embedded weights");
    let photos = photos();
    let run = |threads| {
        in_pool(threads, || {
            photos
                .iter()
                .map(|img| pipeline.faces(img).expect("faces"))
                .collect::<Vec<_>>()
        })
    };
    let one = run(1);
    let faces: usize = one.iter().map(Vec::len).sum();
    assert!(
        faces >= 8,
        "the fixtures hold at least 8 faces, found {faces}"
    );
    for threads in [2, 3, 4] {
        assert!(
            bits(&run(threads)) == bits(&one),
            "{threads} threads differ from 1 thread"
        );
    }
}

#[test]
fn embeddings_are_bit_identical_for_any_batch_size() {
    let pipeline = Pipeline::new().expect("pipeline with embedded weights");
    let mut chips = Vec::new();
    for img in photos() {
        for det in pipeline.detector().detect(&img).expect("detect") {
            chips.push(pipeline.chip(&img, &det));
        }
    }
    // Enough chips for a batch of 16 plus a partial one (with flips: twice as many rows).
    while chips.len() < 19 {
        let again = chips[chips.len() % 8].clone();
        chips.push(again);
    }
    let as_bits = |e: Vec<Vec<f32>>| -> Vec<Vec<u32>> {
        e.iter()
            .map(|v| v.iter().map(|x| x.to_bits()).collect())
            .collect()
    };
    for threads in [1, 2] {
        in_pool(threads, || {
            let all = as_bits(pipeline.embed_chips(&chips).expect("embed all"));
            let one_by_one: Vec<Vec<f32>> = chips
                .iter()
                .flat_map(|c| {
                    pipeline
                        .embed_chips(std::slice::from_ref(c))
                        .expect("embed one")
                })
                .collect();
            assert!(
                as_bits(one_by_one) == all,
                "batch 1 differs from a whole batch ({threads} threads)"
            );
            let by_five: Vec<Vec<f32>> = chips
                .chunks(5)
                .flat_map(|c| pipeline.embed_chips(c).expect("embed five"))
                .collect();
            assert!(
                as_bits(by_five) == all,
                "batches of 5 differ from a whole batch ({threads} threads)"
            );
        });
    }
}

/// The fixture files, with a file that is not an image and a repeated photo among them.
fn files(tmp: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut lfw: Vec<_> = std::fs::read_dir(fixture("lfw"))
        .expect("tests/fixtures/lfw")
        .map(|e| e.expect("fixture entry").path())
        .collect();
    lfw.sort();
    let bad = tmp.join("not-a-photo.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 this is no JPEG").expect("write the bad file");
    let mut files = vec![fixture("2008_001322.jpg"), bad];
    files.extend(lfw.iter().cloned());
    files.push(fixture("Tom_Cruise_avp_2014_4.jpg"));
    files.push(lfw[0].clone());
    files
}

#[test]
fn photos_batched_across_files_match_one_at_a_time() {
    use facekit::library::Library;
    let pipeline = Pipeline::new().expect("pipeline with embedded weights");
    let tmp = tempfile::tempdir().expect("temp dir");
    let files = files(tmp.path());
    let opts = Default::default();
    let one_at_a_time: Vec<_> = in_pool(1, || {
        let lib = Library::in_memory().expect("library");
        files
            .iter()
            .map(|p| lib.faces_of_file(&pipeline, p, &opts, true))
            .collect()
    });
    let faces = |r: &Vec<facekit::Result<(std::sync::Arc<facekit::library::ImageFaces>, bool)>>| {
        r.iter()
            .map(|r| match r {
                Ok((f, _)) => {
                    let mut b = bits(std::slice::from_ref(&f.faces));
                    b.push(f.central.iter().flatten().map(|x| x.to_bits()).collect());
                    Some(b)
                }
                Err(_) => None,
            })
            .collect::<Vec<_>>()
    };
    let want = faces(&one_at_a_time);
    assert!(want[1].is_none(), "the bad file fails");
    assert_eq!(want.iter().filter(|f| f.is_none()).count(), 1);
    let detected: usize = one_at_a_time
        .iter()
        .flatten()
        .map(|(f, _)| f.faces.len())
        .sum();
    assert!(
        detected >= 9,
        "the fixtures hold at least 9 faces, found {detected}"
    );
    for threads in [1, 2, 3] {
        let lib = Library::in_memory().expect("library");
        let got = in_pool(threads, || {
            lib.faces_of_files_in_order(&pipeline, &files, &opts, true, &|| {})
        });
        assert!(
            faces(&got) == want,
            "batched across photos on {threads} threads differs from one photo at a time"
        );
        let err = got[1].as_ref().expect_err("the bad file fails");
        assert!(
            err.to_string().contains("not-a-photo.jpg"),
            "the error names the file: {err}"
        );
        // The repeated photo is the same content: the library answers for it (or analyses it
        // once, when both copies were in flight together).
        assert_eq!(lib.stats().expect("stats").photos, files.len() as u64 - 2);
    }
}

#[test]
fn cli_embed_is_byte_identical_for_any_threads() {
    let dir = fixture("lfw");
    let dir = dir.to_str().expect("utf-8 path");
    let photo = fixture("2008_001322.jpg");
    let photo = photo.to_str().expect("utf-8 path");
    let run = |threads: &str| {
        let out = facekit(&[
            "embed",
            "--no-cache",
            "-q",
            "--threads",
            threads,
            "--format",
            "csv",
            dir,
            photo,
        ]);
        assert!(
            out.status.success(),
            "embed --threads {threads}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let one = run("1");
    assert!(
        String::from_utf8_lossy(&one).lines().count() >= 8,
        "a header and at least 7 faces"
    );
    for threads in ["2", "3"] {
        assert!(
            run(threads) == one,
            "embed --threads {threads} differs from --threads 1"
        );
    }
}
