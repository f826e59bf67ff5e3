//! The face library at scale: builds a library of N synthetic faces (seeded; 128-d vectors
//! around P person centres, as dlib's embeddings cluster) registered under the default
//! pipeline, so `facekit identify --library FILE photo.jpg` searches them, and times loading
//! the gallery and searching it.
//!
//! cargo run --release --example bench_library -- build FILE [--faces N] [--people P] [--seed S]
//! cargo run --release --example bench_library -- search FILE [--queries Q]
//!
//! `scripts/bench-library.sh` runs both and times whole `facekit identify` processes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use facekit::detect::{BBox, Point};
use facekit::library::{ImageFaces, Library};
use facekit::Rng;
use facekit::{Face, Pipeline};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().context("build FILE | search FILE")?;
    let file = PathBuf::from(args.next().context("FILE")?);
    let (mut faces, mut people, mut seed, mut queries) =
        (1_000_000usize, 100_000usize, 1u64, 100usize);
    while let Some(a) = args.next() {
        let mut value = || args.next().context("a value");
        match a.as_str() {
            "--faces" => faces = value()?.parse()?,
            "--people" => people = value()?.parse()?,
            "--seed" => seed = value()?.parse()?,
            "--queries" => queries = value()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    let pipeline = Pipeline::new()?;
    match cmd.as_str() {
        "build" => build(&file, &pipeline, faces, people, seed),
        "search" => search(&file, &pipeline, queries, seed),
        other => bail!("unknown command {other} (build, search)"),
    }
}

const DIM: usize = 128;

/// A person's centre: a random direction at dlib's typical embedding norm (~0.9 after flip
/// averaging); faces scatter around it by ~0.25 in distance, as same-person pairs do.
fn centre(rng: &mut Rng) -> Vec<f32> {
    let v: Vec<f32> = (0..DIM).map(|_| rng.normal() as f32).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n * 0.9).collect()
}

fn build(file: &Path, pipeline: &Pipeline, n: usize, people: usize, seed: u64) -> Result<()> {
    if file.exists() {
        bail!("{} exists; remove it first", file.display());
    }
    let start = Instant::now();
    let lib = Library::open_with(file, None)?;
    let pid = lib.pipeline_id(pipeline)?;
    let mut rng = Rng::new(seed);
    let centres: Vec<Vec<f32>> = (0..people).map(|_| centre(&mut rng)).collect();
    let mut ids = Vec::with_capacity(people);
    for p in 0..people {
        ids.push(lib.person_named(&format!("Person {p:07}"))?.0);
    }
    let batch = 10_000;
    let mut done = 0;
    while done < n {
        let items: Vec<(ImageFaces, i64)> = (done..(done + batch).min(n))
            .map(|i| {
                let p = i % people;
                let embedding: Vec<f32> = centres[p]
                    .iter()
                    .map(|c| c + rng.normal() as f32 * 0.022)
                    .collect();
                let faces = ImageFaces {
                    sha256: format!("{:064x}", (seed as u128) << 64 | i as u128),
                    width: 250,
                    height: 250,
                    faces: vec![Face {
                        bbox: BBox {
                            x1: 70.0,
                            y1: 70.0,
                            x2: 180.0,
                            y2: 180.0,
                        },
                        score: 0.99,
                        landmarks: [Point { x: 125.0, y: 125.0 }; 5],
                        embedding,
                    }],
                    central: None,
                };
                (faces, ids[p])
            })
            .collect();
        lib.enroll_computed(pid, &items)?;
        done += items.len();
    }
    drop(lib);
    let secs = start.elapsed().as_secs_f64();
    let size: u64 = ["", "-wal", "-shm"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", file.display())).ok())
        .map(|m| m.len())
        .sum();
    println!("build_seconds {secs:.1}");
    println!("faces {n}");
    println!("people {people}");
    println!("file_mb {:.1}", size as f64 / 1e6);
    Ok(())
}

fn search(file: &Path, pipeline: &Pipeline, queries: usize, seed: u64) -> Result<()> {
    let lib = Library::open_with(file, None)?;
    let t = Instant::now();
    let known = lib.known(pipeline)?;
    let load = t.elapsed().as_secs_f64();
    let mut rng = Rng::new(seed ^ 0x9e37);
    let q: Vec<Vec<f32>> = (0..queries).map(|_| centre(&mut rng)).collect();
    let mut times = Vec::new();
    for v in &q {
        let t = Instant::now();
        let r = known.identify(&[v.as_slice()], 1, facekit::library::IDENTIFY_THRESHOLD)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(r);
    }
    times.sort_by(f64::total_cmp);
    println!("gallery_faces {}", known.faces());
    println!("gallery_people {}", known.people());
    println!("load_seconds {load:.3}");
    println!("search_ms_median {:.2}", times[times.len() / 2]);
    println!("search_ms_p90 {:.2}", times[times.len() * 9 / 10]);
    Ok(())
}
