//! Face detection: the shared result type ([`Detection`]: box, score, 5 landmarks) and the
//! [`Detector`] every workflow uses, which runs one of the networks ([`yunet`], [`mtcnn`]) under
//! one policy for large photos: detection runs on a working copy of bounded size unless smaller
//! faces are asked for, and boxes and landmarks are mapped back to the original image (crops for
//! alignment are taken from the full-resolution image).

pub mod mtcnn;
mod nets;
pub mod yunet;

use image::RgbImage;
use serde::Serialize;

pub use mtcnn::{pyramid, Mtcnn, MtcnnConfig, PyramidLevel};
pub use nets::{ONet, PNet, RNet};
pub use yunet::{YuNet, YuNetConfig};

use crate::models::ModelSource;
use crate::Result;

/// A point in image pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Column.
    pub x: f32,
    /// Row.
    pub y: f32,
}

/// An axis-aligned box `[x1, y1, x2, y2]` in image pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BBox {
    /// Left.
    pub x1: f32,
    /// Top.
    pub y1: f32,
    /// Right.
    pub x2: f32,
    /// Bottom.
    pub y2: f32,
}

impl BBox {
    /// Width (`x2 - x1`).
    pub fn width(&self) -> f32 {
        self.x2 - self.x1
    }

    /// Height (`y2 - y1`).
    pub fn height(&self) -> f32 {
        self.y2 - self.y1
    }

    /// Area (`width * height`).
    pub fn area(&self) -> f32 {
        self.width().max(0.0) * self.height().max(0.0)
    }

    /// Centre point.
    pub fn center(&self) -> Point {
        Point {
            x: (self.x1 + self.x2) / 2.0,
            y: (self.y1 + self.y2) / 2.0,
        }
    }

    /// The box clipped to `[0, width] x [0, height]`.
    pub fn clip(&self, width: u32, height: u32) -> BBox {
        let (w, h) = (width as f32, height as f32);
        BBox {
            x1: self.x1.clamp(0.0, w),
            y1: self.y1.clamp(0.0, h),
            x2: self.x2.clamp(0.0, w),
            y2: self.y2.clamp(0.0, h),
        }
    }

    /// Intersection over union with another box (no +1 convention).
    pub fn iou(&self, other: &BBox) -> f32 {
        let iw = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let ih = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        let inter = iw * ih;
        let union = self.area() + other.area() - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }

    /// As `[x1, y1, x2, y2]`.
    pub fn to_array(&self) -> [f32; 4] {
        [self.x1, self.y1, self.x2, self.y2]
    }

    /// From `[x1, y1, x2, y2]`.
    pub fn from_array([x1, y1, x2, y2]: [f32; 4]) -> Self {
        BBox { x1, y1, x2, y2 }
    }
}

/// One detected face: box (clipped to the image), O-Net probability, and 5 landmarks in
/// facenet-pytorch's order: left eye (image-left), right eye, nose, mouth left, mouth right.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// Face box, clipped to the image.
    pub bbox: BBox,
    /// Face probability from O-Net, in `[0, 1]`.
    pub score: f32,
    /// Eye centres, nose tip, mouth corners.
    pub landmarks: [Point; 5],
}

/// Which network finds the faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DetectorKind {
    /// MTCNN, numerically identical to facenet-pytorch 2.6.0.
    #[default]
    Mtcnn,
    /// YuNet (libfacedetection), identical to its float reference.
    YuNet,
}

impl DetectorKind {
    /// The name used on the command line and in model ids.
    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::Mtcnn => "mtcnn",
            DetectorKind::YuNet => "yunet",
        }
    }
}

/// MTCNN searches photos up to this long side as they are, down to [`DEFAULT_MIN_FACE`] pixels
/// (exactly what facenet-pytorch does); larger photos, when the smallest face is left to the
/// default, are searched on a working copy of [`LARGE_WORKING_SIZE`] px.
pub const WORKING_SIZE: u32 = 2048;

/// Long side of MTCNN's working copy of photos larger than [`WORKING_SIZE`]: an area-downscaled
/// copy (decoded reduced from large JPEGs) searched down to [`DEFAULT_MIN_FACE`] px, i.e. faces
/// of about 1.6 % of the photo's long side and more, so the work stays bounded whatever the
/// resolution.
pub const LARGE_WORKING_SIZE: u32 = 1280;

/// Smallest face searched for by default, in pixels of the working copy.
pub const DEFAULT_MIN_FACE: f64 = 20.0;

/// YuNet's working copy when the smallest face is left to the default: long side at most this
/// (YuNet finds faces from about [`YUNET_MIN_FACE`] px at any input size, so a smaller copy
/// suffices and costs less).
pub const YUNET_WORKING_SIZE: u32 = 1280;

/// Face size YuNet finds reliably (its finest head has stride 8): a `--min-face` of M px is
/// searched for on a copy scaled by `YUNET_MIN_FACE / M` (never enlarged).
pub const YUNET_MIN_FACE: f64 = 10.0;

/// Most pixels of YuNet's working copy (bounds its memory: about 30 bytes of activations per
/// pixel at the first layer); smaller faces than that copy allows are not found.
pub const YUNET_MAX_PIXELS: f64 = 12e6;

/// Detector settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorConfig {
    /// The network.
    pub kind: DetectorKind,
    /// Smallest face searched for, in pixels of the original image. `None`: automatic
    /// ([`DEFAULT_MIN_FACE`] px at full size up to [`WORKING_SIZE`] px, on a
    /// [`LARGE_WORKING_SIZE`] px copy above). A given size
    /// is searched for exactly, at full resolution (slower on large photos).
    pub min_face: Option<f64>,
    /// MTCNN's stage thresholds and pyramid factor (its own `min_face_size` is set from
    /// `min_face`).
    pub mtcnn: MtcnnConfig,
    /// YuNet's score and NMS settings.
    pub yunet: YuNetConfig,
}

/// YuNet's default score threshold in facekit, chosen on half of the WIDER FACE subset (README).
pub const YUNET_SCORE_THRESHOLD: f32 = 0.7;

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            kind: DetectorKind::Mtcnn,
            min_face: None,
            mtcnn: MtcnnConfig::default(),
            yunet: YuNetConfig {
                score_threshold: YUNET_SCORE_THRESHOLD,
                ..Default::default()
            },
        }
    }
}

impl DetectorConfig {
    /// The final score a face needs to be reported (MTCNN: O-Net's threshold).
    pub fn score_threshold(&self) -> f32 {
        match self.kind {
            DetectorKind::Mtcnn => self.mtcnn.thresholds[2],
            DetectorKind::YuNet => self.yunet.score_threshold,
        }
    }

    /// These settings with the final score threshold (MTCNN's O-Net threshold, YuNet's score
    /// threshold) set to `min_score`, when given.
    pub fn with_min_score(mut self, min_score: Option<f32>) -> Self {
        if let Some(s) = min_score {
            self.mtcnn.thresholds[2] = s;
            self.yunet.score_threshold = s;
        }
        self
    }

    /// Lowers the final score threshold to `floor` when it is higher (evaluations that
    /// tabulate several thresholds from one pass).
    pub fn lower_score_threshold(&mut self, floor: f32) {
        match self.kind {
            DetectorKind::Mtcnn => self.mtcnn.thresholds[2] = self.mtcnn.thresholds[2].min(floor),
            DetectorKind::YuNet => {
                self.yunet.score_threshold = self.yunet.score_threshold.min(floor)
            }
        }
    }
}

/// The network behind a [`Detector`].
enum Backend {
    Mtcnn(Box<Mtcnn>),
    YuNet(Box<YuNet>),
}

/// Finds faces with the configured network and the working-copy policy. Cheap to share
/// across threads.
pub struct Detector {
    backend: Backend,
    config: DetectorConfig,
    /// Where the weights came from (for [`Detector::weights_sha256`]).
    source: ModelSource,
}

impl Detector {
    /// Loads the configured network's weights from `source`.
    pub fn new(source: &ModelSource, config: DetectorConfig) -> Result<Self> {
        if let Some(m) = config.min_face {
            if !(m >= 1.0 && m.is_finite()) {
                return Err(crate::Error::Config(format!(
                    "minimum face size must be at least 1 px, got {m}"
                )));
            }
        }
        let backend = match config.kind {
            DetectorKind::Mtcnn => {
                Backend::Mtcnn(Box::new(Mtcnn::new(source, config.mtcnn.clone())?))
            }
            DetectorKind::YuNet => {
                Backend::YuNet(Box::new(YuNet::new(source, config.yunet.clone())?))
            }
        };
        Ok(Detector {
            backend,
            config,
            source: source.clone(),
        })
    }

    /// The weights file the network reads ([`crate::models::MTCNN`] or
    /// [`crate::models::YUNET`]).
    pub fn weights_file(&self) -> &'static str {
        match self.config.kind {
            DetectorKind::Mtcnn => crate::models::MTCNN,
            DetectorKind::YuNet => crate::models::YUNET,
        }
    }

    /// SHA-256 of the weights the network was loaded from.
    pub fn weights_sha256(&self) -> Result<String> {
        self.source.sha256(self.weights_file())
    }

    /// The settings in use.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// The MTCNN networks, when MTCNN is the detector (for checking each stage alone).
    pub fn mtcnn(&self) -> Option<&Mtcnn> {
        match &self.backend {
            Backend::Mtcnn(m) => Some(m),
            Backend::YuNet(_) => None,
        }
    }

    /// What produced the detections: the network and every setting that changes them (part of
    /// the embedding cache's key and of model ids).
    pub fn id(&self) -> String {
        let c = &self.config;
        let min_face = |auto: String| {
            c.min_face
                .map_or_else(|| format!("auto{auto}"), |m| m.to_string())
        };
        match c.kind {
            DetectorKind::Mtcnn => format!(
                "mtcnn(min_face={},thresholds={:?},factor={})",
                min_face(format!("{WORKING_SIZE}/{LARGE_WORKING_SIZE}")),
                c.mtcnn.thresholds,
                c.mtcnn.factor
            ),
            DetectorKind::YuNet => format!(
                "yunet(min_face={},score={},nms={},top_k={},keep={})",
                min_face(YUNET_WORKING_SIZE.to_string()),
                c.yunet.score_threshold,
                c.yunet.nms_threshold,
                c.yunet.top_k,
                c.yunet.keep_top_k
            ),
        }
    }

    /// The working copy's scale (1 = the original) and the smallest face to search for in it.
    pub fn plan(&self, width: u32, height: u32) -> (f64, f64) {
        let long = width.max(height) as f64;
        match self.config.kind {
            DetectorKind::Mtcnn => match self.config.min_face {
                Some(m) => (1.0, m),
                None if long <= WORKING_SIZE as f64 => (1.0, DEFAULT_MIN_FACE),
                None => (LARGE_WORKING_SIZE as f64 / long, DEFAULT_MIN_FACE),
            },
            DetectorKind::YuNet => {
                let scale = match self.config.min_face {
                    Some(m) => (YUNET_MIN_FACE / m).min(1.0),
                    None => (YUNET_WORKING_SIZE as f64 / long).min(1.0),
                };
                let cap = (YUNET_MAX_PIXELS / (width as f64 * height as f64)).sqrt();
                (scale.min(cap), YUNET_MIN_FACE)
            }
        }
    }

    /// The scale of the working copy detection runs on for a `width` x `height` image (1 = the
    /// original; see [`io::decode_photo`](crate::io::decode_photo), which decodes large JPEGs
    /// reduced to about this size).
    pub fn working_scale(&self, width: u32, height: u32) -> f64 {
        self.plan(width, height).0
    }

    /// Detects faces; boxes (clipped) and landmarks are in the original image's pixels, faces
    /// sorted by score, best first.
    pub fn detect(&self, img: &RgbImage) -> Result<Vec<Detection>> {
        self.detect_in(img, img.dimensions())
    }

    /// Detects faces in a decoded photo (full or reduced); boxes and landmarks are in the
    /// full-resolution image's pixels.
    pub fn detect_photo(&self, photo: &crate::io::Photo) -> Result<Vec<Detection>> {
        self.detect_in(photo.decoded(), photo.dimensions())
    }

    /// Detection on `src`, an image that shows a `w` x `h` original at its own size or reduced.
    fn detect_in(&self, src: &RgbImage, (w, h): (u32, u32)) -> Result<Vec<Detection>> {
        let (scale, min_face) = self.plan(w, h);
        if scale >= 1.0 && src.dimensions() == (w, h) {
            return self.run(src, min_face);
        }
        let scale = scale.min(1.0);
        let ww = ((w as f64 * scale).round() as u32).max(1);
        let wh = ((h as f64 * scale).round() as u32).max(1);
        let resized;
        let small = if src.dimensions() == (ww, wh) {
            src
        } else {
            resized = crate::preprocess::area_downscale(src, ww, wh);
            &resized
        };
        let (sx, sy) = (w as f32 / ww as f32, h as f32 / wh as f32);
        let mut faces = self.run(small, min_face)?;
        for f in &mut faces {
            f.bbox = BBox {
                x1: f.bbox.x1 * sx,
                y1: f.bbox.y1 * sy,
                x2: f.bbox.x2 * sx,
                y2: f.bbox.y2 * sy,
            }
            .clip(w, h);
            for p in &mut f.landmarks {
                p.x *= sx;
                p.y *= sy;
            }
        }
        Ok(faces)
    }

    fn run(&self, img: &RgbImage, min_face: f64) -> Result<Vec<Detection>> {
        match &self.backend {
            Backend::Mtcnn(m) => m.detect_min_face(img, min_face),
            Backend::YuNet(y) => y.detect(img),
        }
    }
}
