//! One-to-one verification: are the faces of two photos the same person? Owns the workflow
//! `facekit verify` runs: detect every face of both photos, pick the compared face(s) by a
//! [`Policy`], embed them, and decide on the Euclidean distance. The verdict names how many
//! faces each photo has and which pair was compared (face indices count from 0 in the
//! detector's order, best score first, as everywhere in facekit).
//!
//! ```no_run
//! use facekit::verify::{verify_files, Policy};
//! let pipeline = facekit::Pipeline::new()?;
//! let v = verify_files(&pipeline, "a.jpg".as_ref(), "b.jpg".as_ref(), Policy::Largest, 0.6,
//!                      &Default::default())?;
//! println!("{} at {:.3}: face {} of A vs face {} of B", v.same, v.distance, v.pair.0, v.pair.1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::detect::Detection;
use crate::io::{self, LoadOptions};
use crate::pipeline::{select_face, FacePolicy, Pipeline};
use crate::{distance, Error, Result};

/// Which face of each photo is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Policy {
    /// The largest face of each photo.
    Largest,
    /// The face nearest each image's centre (the LFW convention).
    Center,
    /// The closest pair over every face of A and every face of B.
    BestPair,
}

impl Policy {
    /// The policy's name as typed on the command line (`largest`, `center`, `best-pair`).
    pub fn name(self) -> &'static str {
        match self {
            Policy::Largest => "largest",
            Policy::Center => "center",
            Policy::BestPair => "best-pair",
        }
    }

    /// The single-face policy, or `None` for [`Policy::BestPair`].
    fn single(self) -> Option<FacePolicy> {
        match self {
            Policy::Largest => Some(FacePolicy::Largest),
            Policy::Center => Some(FacePolicy::Center),
            Policy::BestPair => None,
        }
    }
}

/// One photo as verification saw it: every detected face, and the embeddings of the faces the
/// policy compares.
#[derive(Debug, Clone, PartialEq)]
pub struct PhotoFaces {
    /// Every detected face, in the detector's order (index 0 = best score).
    pub faces: Vec<Detection>,
    /// (face index, embedding) of each face the policy compares: one face for
    /// [`Policy::Largest`] and [`Policy::Center`], every face for [`Policy::BestPair`].
    pub embedded: Vec<(usize, Vec<f32>)>,
}

impl PhotoFaces {
    /// Detects every face of `img` and embeds the ones `policy` compares. `path` names the
    /// photo in the error when there is no face.
    pub fn of_image(
        pipeline: &Pipeline,
        img: &RgbImage,
        policy: Policy,
        path: &Path,
    ) -> Result<Self> {
        let faces = pipeline.detector().detect(img)?;
        Self::embed_chosen(pipeline, faces, img.dimensions(), policy, path, || {
            Ok(std::borrow::Cow::Borrowed(img))
        })
    }

    /// [`PhotoFaces::of_image`] on a decoded photo: detection on its decoded (possibly
    /// reduced) pixels, chips from the full-resolution image.
    pub fn of_photo(
        pipeline: &Pipeline,
        photo: &io::Photo,
        policy: Policy,
        path: &Path,
    ) -> Result<Self> {
        let faces = pipeline.detector().detect_photo(photo)?;
        Self::embed_chosen(pipeline, faces, photo.dimensions(), policy, path, || {
            photo.full().map_err(|reason| Error::image(path, reason))
        })
    }

    /// Embeds the faces `policy` compares among `faces` of a `width` x `height` photo, cutting
    /// the chips from `full()` (asked for only when there is a face to embed).
    fn embed_chosen<'a>(
        pipeline: &Pipeline,
        faces: Vec<Detection>,
        (width, height): (u32, u32),
        policy: Policy,
        path: &Path,
        full: impl FnOnce() -> Result<std::borrow::Cow<'a, RgbImage>>,
    ) -> Result<Self> {
        let chosen: Vec<usize> = match policy.single() {
            None => (0..faces.len()).collect(),
            Some(p) => select_face(faces.iter().map(|d| &d.bbox), p, width, height)
                .into_iter()
                .collect(),
        };
        if chosen.is_empty() {
            return Err(Error::image(path, "no face found"));
        }
        let dets: Vec<Detection> = chosen.iter().map(|&i| faces[i].clone()).collect();
        let full = full()?;
        let embs = pipeline.embed_detections(&full, &dets)?;
        Ok(PhotoFaces {
            faces,
            embedded: chosen.into_iter().zip(embs).collect(),
        })
    }

    /// Loads the photo at `path` (see [`io::load_photo`]) and runs [`PhotoFaces::of_photo`] on
    /// it, inside the per-file fault boundary.
    pub fn of_file(
        pipeline: &Pipeline,
        path: &Path,
        policy: Policy,
        load: &LoadOptions,
    ) -> Result<Self> {
        io::guard(path, || {
            let photo = io::load_photo(path, load, |w, h| pipeline.detector().working_scale(w, h))?;
            Self::of_photo(pipeline, &photo, policy, path)
        })
    }
}

/// The compared face of one photo.
#[derive(Debug, Clone, PartialEq)]
pub struct Compared {
    /// Index of the face among the photo's faces (0 = the detector's best).
    pub index: usize,
    /// Its detection (box, score, landmarks).
    pub face: Detection,
}

/// The outcome of comparing two photos.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Every face of photo A, in the detector's order.
    pub faces_a: Vec<Detection>,
    /// Every face of photo B.
    pub faces_b: Vec<Detection>,
    /// The compared pair: (face index in A, face index in B).
    pub pair: (usize, usize),
    /// Euclidean distance between the compared faces' embeddings.
    pub distance: f32,
    /// The threshold applied.
    pub threshold: f32,
    /// `distance < threshold`.
    pub same: bool,
    /// The policy that chose the pair.
    pub policy: Policy,
}

impl Verdict {
    /// The compared face of A.
    pub fn compared_a(&self) -> Compared {
        Compared {
            index: self.pair.0,
            face: self.faces_a[self.pair.0].clone(),
        }
    }

    /// The compared face of B.
    pub fn compared_b(&self) -> Compared {
        Compared {
            index: self.pair.1,
            face: self.faces_b[self.pair.1].clone(),
        }
    }
}

/// Compares two examined photos: the closest pair among their embedded faces (the only pair
/// under a single-face policy). `None` when either photo has no embedded face.
pub fn compare(a: PhotoFaces, b: PhotoFaces, policy: Policy, threshold: f32) -> Option<Verdict> {
    let mut best: Option<(usize, usize, f32)> = None;
    for (i, x) in &a.embedded {
        for (j, y) in &b.embedded {
            let d = distance::euclidean(x, y);
            if best.is_none_or(|(_, _, bd)| d < bd) {
                best = Some((*i, *j, d));
            }
        }
    }
    let (i, j, distance) = best?;
    Some(Verdict {
        faces_a: a.faces,
        faces_b: b.faces,
        pair: (i, j),
        distance,
        threshold,
        same: distance < threshold,
        policy,
    })
}

/// Why [`verify_files`] could not decide: one error per photo that failed (A's first), each
/// naming its file and the reason.
#[derive(Debug, Clone)]
pub struct VerifyError {
    /// The errors, in photo order.
    pub errors: Vec<Error>,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let texts: Vec<String> = self.errors.iter().map(|e| e.to_string()).collect();
        f.write_str(&texts.join("; "))
    }
}

impl std::error::Error for VerifyError {}

/// Verifies the photos at `a` and `b` (both examined in parallel on the current rayon pool):
/// every face detected, the policy's faces embedded, the closest compared pair decided against
/// `threshold`.
pub fn verify_files(
    pipeline: &Pipeline,
    a: &Path,
    b: &Path,
    policy: Policy,
    threshold: f32,
    load: &LoadOptions,
) -> std::result::Result<Verdict, VerifyError> {
    let (fa, fb) = rayon::join(
        || PhotoFaces::of_file(pipeline, a, policy, load),
        || PhotoFaces::of_file(pipeline, b, policy, load),
    );
    match (fa, fb) {
        (Ok(fa), Ok(fb)) => compare(fa, fb, policy, threshold).ok_or_else(|| VerifyError {
            // Unreachable: of_file refuses a photo without a face.
            errors: vec![Error::image(PathBuf::from(a), "no face found")],
        }),
        (fa, fb) => Err(VerifyError {
            errors: [fa.err(), fb.err()].into_iter().flatten().collect(),
        }),
    }
}
