//! facekit: end-to-end face recognition in Rust.
//!
//! The pipeline flows one way: [`io`] decodes an image, [`detect`] finds faces (MTCNN or YuNet:
//! boxes, scores, 5 landmarks), [`align`] cuts chips, [`embed`] turns them into vectors, and
//! [`pipeline`] chains the three ([`Pipeline::faces`]). Weights are found by [`models`]. The
//! workflows above it share the face [`library`]: [`verify`], [`sweep`], [`album`] (clustering
//! an album into people), [`identify`] and [`train`]; [`distance`], [`metrics`] and
//! [`cluster`] are the pure pieces they use.
//!
//! ```no_run
//! use facekit::{detect::Detector, io};
//! let detector = Detector::new(&facekit::models::ModelSource::resolve(None), Default::default())?;
//! let img = io::load_image("photo.jpg".as_ref(), &io::LoadOptions::default())?;
//! for face in detector.detect(&img)? {
//!     println!("{:?} {:.3}", face.bbox, face.score);
//! }
//! # Ok::<(), facekit::Error>(())
//! ```

pub mod album;
pub mod align;
pub mod cluster;
pub(crate) mod dconv;
pub mod detect;
pub mod device;
pub mod distance;
pub mod embed;
pub mod error;
pub mod identify;
pub mod io;
pub mod library;
pub mod metrics;
pub mod models;
pub(crate) mod nn;
pub mod organize;
pub mod pairs;
pub mod pipeline;
pub(crate) mod preprocess;
pub mod progress;
pub(crate) mod rng;
pub mod sweep;
pub mod train;
pub mod verify;
pub(crate) mod winograd;

pub use detect::{BBox, Detection, Detector, DetectorConfig, Point};
pub use embed::Precision;
pub use error::{Error, Result};
/// Runs a closure with facekit's CPU kernels single-threaded on this thread: for callers that
/// already spread photos over threads themselves (two single-threaded networks at once beat one
/// split over two threads).
pub use nn::serial;
pub use pipeline::{Face, FacePolicy, Pipeline, PipelineBuilder, PipelineConfig};
/// The seeded generator (SplitMix64) behind every `seed` setting: evaluations use it to draw the
/// same samples the library would.
pub use rng::Rng;

/// The compute device facekit builds its networks on: the one chosen with
/// [`device::select`], else CUDA when built with `cuda` and a GPU is present, else the CPU.
pub fn default_device() -> candle_core::Device {
    device::current()
}
