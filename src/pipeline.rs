//! The one-call entry point: image in, faces with embeddings out.
//!
//! ```no_run
//! let pipeline = facekit::Pipeline::new()?;
//! let img = facekit::io::load_image("photo.jpg".as_ref(), &Default::default())?;
//! for face in pipeline.faces(&img)? {
//!     println!("{:?} {:.3} {:?}", face.bbox, face.score, &face.embedding[..4]);
//! }
//! # Ok::<(), facekit::Error>(())
//! ```

use image::RgbImage;
use rayon::prelude::*;

use crate::align::{Aligner, Template};
use crate::detect::{BBox, Detection, Detector, DetectorConfig, Point};
use crate::embed::head::{Head, HeadInput};
use crate::embed::{DlibEmbedder, Embedder, Output, Precision};
use crate::models::ModelSource;
use crate::Result;

/// A detected face with its embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    /// Face box, clipped to the image.
    pub bbox: BBox,
    /// Detector probability.
    pub score: f32,
    /// MTCNN's 5 landmarks (eyes, nose, mouth corners).
    pub landmarks: [Point; 5],
    /// The embedding (128-d for the dlib ResNet; not normalised).
    pub embedding: Vec<f32>,
}

impl Face {
    /// The detection this face came from (box, score, landmarks).
    pub fn detection(&self) -> Detection {
        Detection {
            bbox: self.bbox,
            score: self.score,
            landmarks: self.landmarks,
        }
    }
}

/// Which face of an image stands for the image (verify, pair protocols).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FacePolicy {
    /// The face with the largest box.
    Largest,
    /// The face whose box centre is nearest the image centre (LFW's subject is centred).
    Center,
}

/// Index of the face chosen by `policy` among face boxes in an image of `width` x `height`
/// (the first on ties).
pub fn select_face<'a>(
    boxes: impl IntoIterator<Item = &'a BBox>,
    policy: FacePolicy,
    width: u32,
    height: u32,
) -> Option<usize> {
    let (cx, cy) = (width as f32 / 2.0, height as f32 / 2.0);
    let key = |b: &BBox| match policy {
        FacePolicy::Largest => -b.area(),
        FacePolicy::Center => {
            let c = b.center();
            (c.x - cx).hypot(c.y - cy)
        }
    };
    boxes
        .into_iter()
        .enumerate()
        .min_by(|a, b| key(a.1).total_cmp(&key(b.1)))
        .map(|(i, _)| i)
}

/// Default "same person" threshold on the Euclidean distance of flip-averaged dlib embeddings,
/// calibrated on LFW by `facekit threshold-sweep ... --pairs pairs.txt --folds 10` (README): the
/// 10 fold thresholds span 0.5991-0.6002 (mean 0.6000), the best single threshold over all 6,000
/// pairs is 0.6001. It happens to equal dlib's own.
pub const DEFAULT_THRESHOLD: f32 = 0.60;

/// Mean centre-face box on LFW's 250 x 250 images relative to the shorter side, centred:
/// (width, height, vertical offset of the centre); landmarks relative to that box.
const CENTRAL_BOX: (f32, f32, f32) = (0.3744, 0.4978, 0.0088);
const CENTRAL_LANDMARKS: [(f32, f32); 5] = [
    (0.287, 0.389),
    (0.738, 0.381),
    (0.514, 0.582),
    (0.322, 0.760),
    (0.718, 0.754),
];

/// Pipeline settings.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Detector settings.
    pub detector: DetectorConfig,
    /// Alignment template for the embedder's chips.
    pub template: Template,
    /// Average each embedding with the embedding of the mirrored chip (test-time flip).
    pub flip: bool,
    /// What the backbone outputs when there is no head (training caches pooled features).
    pub output: Output,
    /// A trained head (`facekit train`) applied to the flip-averaged backbone output.
    pub head: Option<std::sync::Arc<Head>>,
    /// How dlib's ResNet computes (exact fp32, or the faster Winograd path); part of the
    /// model id, so the face library never mixes the two.
    pub precision: Precision,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            detector: DetectorConfig::default(),
            template: Template::Dlib,
            flip: true,
            output: Output::Embedding,
            head: None,
            precision: Precision::Exact,
        }
    }
}

/// Detector + aligner + embedder.
pub struct Pipeline {
    detector: Detector,
    aligner: Aligner,
    embedder: Box<dyn Embedder>,
    /// Whether the embedder is dlib's ResNet read from `source` (its weights then enter
    /// [`Pipeline::cache_key`]; another embedder is identified by its model id).
    dlib_weights: bool,
    config: PipelineConfig,
    source: ModelSource,
    /// [`Pipeline::cache_key`], once computed (it hashes ~30 MB of weights; the library asks
    /// for it for every photo).
    key: std::sync::OnceLock<String>,
}

/// Builds a [`Pipeline`] from parts: any [`Detector`] and any [`Embedder`], or the default ones
/// (MTCNN, dlib's ResNet with flip averaging) loaded from a model source.
///
/// ```no_run
/// use facekit::{detect::DetectorKind, Detector, DetectorConfig, Pipeline};
/// let source = facekit::models::ModelSource::resolve(None);
/// let yunet = DetectorConfig { kind: DetectorKind::YuNet, ..Default::default() };
/// let pipeline = Pipeline::builder()
///     .models(&source)
///     .detector(Detector::new(&source, yunet)?)
///     .flip(false)
///     .build()?;
/// # Ok::<(), facekit::Error>(())
/// ```
pub struct PipelineBuilder {
    source: ModelSource,
    config: PipelineConfig,
    detector: Option<Detector>,
    embedder: Option<Box<dyn Embedder>>,
}

impl PipelineBuilder {
    /// Where the default parts and the aligner read their weights (default: the embedded
    /// copies, or `$FACEKIT_MODELS`).
    pub fn models(mut self, source: &ModelSource) -> Self {
        self.source = source.clone();
        self
    }

    /// Every setting at once (detector settings, template, flip, output, head).
    pub fn config(mut self, config: PipelineConfig) -> Self {
        self.config = config;
        self
    }

    /// Use this detector (its settings replace the configured detector settings).
    pub fn detector(mut self, detector: Detector) -> Self {
        self.detector = Some(detector);
        self
    }

    /// Use this embedder instead of dlib's ResNet. Its [`Embedder::model_id`] must change
    /// whenever its weights do: it is what the face library tells embeddings apart by.
    pub fn embedder(mut self, embedder: impl Embedder + 'static) -> Self {
        self.embedder = Some(Box::new(embedder));
        self
    }

    /// Alignment template for the embedder's chips.
    pub fn template(mut self, template: Template) -> Self {
        self.config.template = template;
        self
    }

    /// Average each embedding with the mirrored chip's (default: on).
    pub fn flip(mut self, flip: bool) -> Self {
        self.config.flip = flip;
        self
    }

    /// How dlib's ResNet computes (default: [`Precision::Exact`]; ignored with
    /// [`Self::embedder`]).
    pub fn precision(mut self, precision: Precision) -> Self {
        self.config.precision = precision;
        self
    }

    /// Loads what was not given and assembles the pipeline.
    pub fn build(self) -> Result<Pipeline> {
        let PipelineBuilder {
            source,
            mut config,
            detector,
            embedder,
        } = self;
        if let Some(d) = &detector {
            config.detector = d.config().clone();
        }
        let dlib_weights = embedder.is_none();
        // The detector and the ResNet load at the same time (each is mostly memory traffic:
        // a visible part of a short run such as `verify`).
        let (detector, embedder) = rayon::join(
            || match detector {
                Some(d) => Ok(d),
                None => Detector::new(&source, config.detector.clone()),
            },
            || -> Result<Box<dyn Embedder>> {
                if let Some(e) = embedder {
                    return Ok(e);
                }
                let output = match config.head.as_deref().map(|h| h.input) {
                    Some(HeadInput::Pooled) => Output::Pooled,
                    Some(HeadInput::Embedding) => Output::Embedding,
                    None => config.output,
                };
                let overrides = config.head.as_deref().map_or(&[][..], |h| &h.backbone[..]);
                Ok(Box::new(DlibEmbedder::load(
                    &source,
                    output,
                    overrides,
                    config.precision,
                )?))
            },
        );
        let (detector, embedder) = (detector?, embedder?);
        let aligner = Aligner::new(&source, config.template, embedder.chip_size() as u32)?
            .for_detector(config.detector.kind);
        Ok(Pipeline {
            detector,
            aligner,
            embedder,
            dlib_weights,
            config,
            source,
            key: std::sync::OnceLock::new(),
        })
    }
}

impl Pipeline {
    /// The default pipeline (MTCNN, dlib alignment, dlib ResNet with flip) on the embedded
    /// weights, or `$FACEKIT_MODELS` when set.
    pub fn new() -> Result<Self> {
        Self::builder().build()
    }

    /// A pipeline assembled from parts ([`PipelineBuilder`]).
    pub fn builder() -> PipelineBuilder {
        PipelineBuilder {
            source: ModelSource::resolve(None),
            config: PipelineConfig::default(),
            detector: None,
            embedder: None,
        }
    }

    /// A pipeline with weights from `source`.
    pub fn with_models(source: &ModelSource, config: PipelineConfig) -> Result<Self> {
        Self::builder().models(source).config(config).build()
    }

    /// The detector.
    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// The embedder.
    pub fn embedder(&self) -> &dyn Embedder {
        self.embedder.as_ref()
    }

    /// The settings.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// An identifier of what produced the embeddings (model, alignment, flip).
    pub fn model_id(&self) -> String {
        let mut id = format!(
            "{}+{:?}{}",
            self.embedder.model_id(),
            self.config.template,
            if self.config.flip { "+flip" } else { "" }
        )
        .to_lowercase();
        if let Some(h) = &self.config.head {
            id.push_str(&format!("+head:{}", h.id()));
        }
        id
    }

    /// Length of the vectors [`Pipeline::faces`] returns.
    pub fn dim(&self) -> usize {
        self.config
            .head
            .as_ref()
            .map_or(self.embedder.dim(), |h| h.out_dim)
    }

    /// The calibrated Euclidean "same person" threshold: the head's, or [`DEFAULT_THRESHOLD`]
    /// for dlib's embeddings (`None` for a head trained without one).
    pub fn default_threshold(&self) -> Option<f32> {
        match &self.config.head {
            Some(h) => h.threshold,
            None => self.embedder.threshold().or(Some(DEFAULT_THRESHOLD)),
        }
    }

    /// Everything that changes what the pipeline outputs for an image (model, alignment, flip,
    /// detector settings, and the SHA-256 of every weights file it reads, so other weights in
    /// `--models DIR` never reuse stale embeddings): the embedding cache's key.
    pub fn cache_key(&self) -> Result<String> {
        if let Some(key) = self.key.get() {
            return Ok(key.clone());
        }
        let mut key = format!(
            "{}|{}|{}:{}",
            self.model_id(),
            self.detector.id(),
            self.detector.weights_file(),
            self.detector.weights_sha256()?
        );
        let mut files = Vec::new();
        if self.dlib_weights {
            files.push(crate::models::DLIB_RESNET);
        }
        if self.config.template == Template::Dlib {
            files.push(crate::models::SHAPE_PREDICTOR_5);
        }
        for name in files {
            key.push_str(&format!("|{name}:{}", self.source.sha256(name)?));
        }
        Ok(self.key.get_or_init(|| key).clone())
    }

    /// The face a centred portrait would have: the fallback for pair protocols when no face is
    /// detected (LFW's subject is centred). The box and landmarks are the mean of the centre
    /// faces MTCNN finds on LFW, scaled to the image's shorter side.
    pub fn central_detection(&self, width: u32, height: u32) -> Detection {
        let s = width.min(height) as f32;
        let (w, h) = (CENTRAL_BOX.0 * s, CENTRAL_BOX.1 * s);
        let (cx, cy) = (width as f32 / 2.0, height as f32 / 2.0 + CENTRAL_BOX.2 * s);
        let bbox = BBox {
            x1: cx - w / 2.0,
            y1: cy - h / 2.0,
            x2: cx + w / 2.0,
            y2: cy + h / 2.0,
        };
        Detection {
            bbox,
            score: 0.0,
            landmarks: CENTRAL_LANDMARKS.map(|(u, v)| Point {
                x: bbox.x1 + u * w,
                y: bbox.y1 + v * h,
            }),
        }
    }

    /// The aligned chip of one detection, as the embedder takes it.
    pub fn chip(&self, img: &RgbImage, det: &Detection) -> RgbImage {
        self.aligner.chip(img, &det.bbox, &det.landmarks)
    }

    /// Embeddings of the given detections of `img`, in order.
    pub fn embed_detections(&self, img: &RgbImage, dets: &[Detection]) -> Result<Vec<Vec<f32>>> {
        let chips: Vec<RgbImage> = dets.par_iter().map(|d| self.chip(img, d)).collect();
        self.embed_chips(&chips)
    }

    /// Embeddings of aligned chips (with flip averaging when configured, then the head).
    pub fn embed_chips(&self, chips: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        let mut out = if !self.config.flip {
            self.embedder.embed(chips)?
        } else {
            let mut all: Vec<RgbImage> = chips.to_vec();
            all.extend(chips.iter().map(image::imageops::flip_horizontal));
            let embs = self.embedder.embed(&all)?;
            let (plain, mirrored) = embs.split_at(chips.len());
            plain
                .iter()
                .zip(mirrored)
                .map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x + y) / 2.0).collect())
                .collect()
        };
        out.iter_mut().for_each(|e| self.embedder.finish(e));
        Ok(match &self.config.head {
            Some(h) => out.iter().map(|x| h.apply(x)).collect(),
            None => out,
        })
    }

    /// Every face in `img` with its embedding, best score first.
    pub fn faces(&self, img: &RgbImage) -> Result<Vec<Face>> {
        let dets = self.detector.detect(img)?;
        let embs = self.embed_detections(img, &dets)?;
        Ok(Self::zip_faces(dets, embs))
    }

    /// Every face of a decoded photo with its embedding, best score first: detection on the
    /// decoded (possibly reduced) pixels, chips from the full-resolution image, which is decoded
    /// only when there is a face. `path` names the file in errors.
    pub fn faces_of_photo(
        &self,
        photo: &crate::io::Photo,
        path: &std::path::Path,
    ) -> Result<Vec<Face>> {
        let (dets, chips) = self.chips_of_photo(photo, path)?;
        let embs = self.embed_chips(&chips)?;
        Ok(Self::zip_faces(dets, embs))
    }

    /// The detections of a decoded photo, best score first, and their aligned chips, cut from
    /// the full-resolution image (decoded only when there is a face): [`Pipeline::faces_of_photo`]
    /// without the embedding, for callers that embed the chips of many photos together.
    pub fn chips_of_photo(
        &self,
        photo: &crate::io::Photo,
        path: &std::path::Path,
    ) -> Result<(Vec<Detection>, Vec<RgbImage>)> {
        let dets = self.detector.detect_photo(photo)?;
        if dets.is_empty() {
            return Ok((dets, Vec::new()));
        }
        let full = photo
            .full()
            .map_err(|reason| crate::Error::image(path, reason))?;
        let chips = dets.par_iter().map(|d| self.chip(&full, d)).collect();
        Ok((dets, chips))
    }

    /// Faces from detections and their embeddings, in order.
    pub(crate) fn zip_faces(dets: Vec<Detection>, embs: Vec<Vec<f32>>) -> Vec<Face> {
        dets.into_iter()
            .zip(embs)
            .map(|(d, embedding)| Face {
                bbox: d.bbox,
                score: d.score,
                landmarks: d.landmarks,
                embedding,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::DetectorKind;

    /// A tiny real embedder: the mean colour of the chip (3-d).
    struct MeanColour;

    impl Embedder for MeanColour {
        fn model_id(&self) -> &str {
            "mean-colour"
        }
        fn dim(&self) -> usize {
            3
        }
        fn chip_size(&self) -> usize {
            64
        }
        fn embed(&self, chips: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
            Ok(chips
                .iter()
                .map(|c| {
                    let n = (c.width() * c.height()) as f32;
                    (0..3)
                        .map(|k| c.pixels().map(|p| p.0[k] as f32).sum::<f32>() / n)
                        .collect()
                })
                .collect())
        }
    }

    #[test]
    fn builder_takes_any_detector_and_embedder() {
        let source = ModelSource::Embedded;
        let img = crate::io::load_image(
            std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/2008_001322.jpg"
            )),
            &Default::default(),
        )
        .unwrap();
        let yunet = DetectorConfig {
            kind: DetectorKind::YuNet,
            ..Default::default()
        };
        let p = Pipeline::builder()
            .models(&source)
            .detector(Detector::new(&source, yunet.clone()).unwrap())
            .embedder(MeanColour)
            .build()
            .unwrap();
        assert_eq!(p.config().detector.kind, DetectorKind::YuNet);
        assert_eq!(p.dim(), 3);
        let faces = p.faces(&img).unwrap();
        let dets = Detector::new(&source, yunet).unwrap().detect(&img).unwrap();
        assert_eq!(faces.len(), dets.len());
        assert!(!faces.is_empty());
        for (f, d) in faces.iter().zip(&dets) {
            assert_eq!(f.bbox, d.bbox);
            // The 64 px chip's mean colour (the mirrored chip has the same mean).
            let chip = p.chip(&img, d);
            assert_eq!(chip.dimensions(), (64, 64));
            let want = MeanColour.embed(&[chip]).unwrap().remove(0);
            for (a, b) in f.embedding.iter().zip(&want) {
                assert!((a - b).abs() < 1e-3, "{:?} vs {want:?}", f.embedding);
            }
        }
        // The library keeps these apart from the default pipeline's embeddings.
        let key = p.cache_key().unwrap();
        assert!(key.starts_with("mean-colour+dlib+flip|yunet("), "{key}");
        assert!(key.contains("yunet.safetensors:") && !key.contains("dlib_resnet"));
        let default = Pipeline::new().unwrap().cache_key().unwrap();
        assert!(default.contains("mtcnn.safetensors:") && default.contains("dlib_resnet"));
    }
}
