//! The training run `facekit train` performs, as one library call ([`run`]): the labeled photos'
//! faces (features cached in the face library), the split into training and validation
//! identities, the baselines, training from scratch or a checkpoint, and the saved model (the
//! best epoch, its calibrated threshold and what that threshold rests on) with its checkpoint.
//! Progress goes to a [`TrainProgress`]; nothing here prints.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;

use super::arch::{Arch, Net};
use super::augment::{Augment, Chips};
use super::margin::MarginHead;
use super::resnet::ResNet;
use super::stage::{self, Stage};
use super::{
    embed_rows, flat_weights, initial_weights, labeled_images, load_dataset, set_weights, train,
    validate, validate_embeddings, Checkpoint, Dataset, EpochLog, HeadInit, Inputs, LinearHead,
    Loaded, TrainConfig, Trainable, Validation,
};
use crate::embed::dlib_resnet::{DIM, FEATURES};
use crate::embed::head::{Head, HeadInput};
use crate::embed::{DlibEmbedder, Output};
use crate::io::LoadOptions;
use crate::library::Library;
use crate::models::ModelSource;
use crate::progress::Progress;
use crate::{DetectorConfig, Error, FacePolicy, Pipeline, PipelineConfig, Result};

/// Below this many identities, a threshold calibrated on them is unreliable (a handful of
/// people decide it; see [`ThresholdBasis::reliable`]).
pub const MIN_RELIABLE_IDENTITIES: usize = 20;

/// Which layers train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Layers {
    /// The head only, on frozen cached backbone features.
    Head,
    /// The ResNet's four 256-channel residual blocks and dlib's final layer (needs
    /// [`HeadInit::Pretrained`]).
    LastStage,
    /// Every layer of the ResNet and dlib's final layer, on chips cut from the photos batch by
    /// batch (needs [`HeadInit::Pretrained`]).
    All,
}

impl Layers {
    /// The name recorded in model and checkpoint metadata (`train_layers`).
    pub fn name(self) -> &'static str {
        match self {
            Layers::Head => "head",
            Layers::LastStage => "last-stage",
            Layers::All => "all",
        }
    }
}

/// Everything a training run needs.
#[derive(Debug, Clone)]
pub struct TrainSettings {
    /// Labeled photos: one subfolder per identity (or identity-named files).
    pub data: PathBuf,
    /// The model file written (replaced if it exists); the checkpoint goes beside it
    /// ([`checkpoint_path`]).
    pub out: PathBuf,
    /// Loss, batches, epochs, optimiser, seed.
    pub config: TrainConfig,
    /// How the head starts.
    pub init: HeadInit,
    /// Which layers train.
    pub layers: Layers,
    /// A network trained from scratch in place of dlib's ResNet (`None`: dlib's ResNet);
    /// needs [`Layers::All`].
    pub arch: Option<Arch>,
    /// Identities with fewer photos are left out.
    pub min_images: usize,
    /// Fraction of the identities held out for validation, in `[0, 1)`.
    pub val_split: f64,
    /// A checkpoint to continue from (up to `config.epochs`).
    pub resume: Option<PathBuf>,
    /// Which face of each photo is used.
    pub policy: FacePolicy,
    /// Average each face's features with its mirror image's.
    pub flip: bool,
    /// How training chips are augmented ([`Layers::All`] only: the other layers train on
    /// features computed once).
    pub augment: Augment,
    /// Where the networks' weights come from.
    pub models: ModelSource,
    /// Detector settings.
    pub detector: DetectorConfig,
    /// How photos are decoded.
    pub load: LoadOptions,
    /// Worker threads for detecting and embedding (`None`: one per core).
    pub threads: Option<usize>,
    /// Where the trained model's tensors live and its forward and backward passes run (batches
    /// are made on the CPU and copied there; weights come back through the CPU to be saved).
    pub device: Device,
}

impl TrainSettings {
    /// The defaults of `facekit train DATA --out OUT` (a pretrained head, triplet loss with
    /// semi-hard mining, 16 x 4 batches, 20 epochs, learning rate 1e-4, 20 % validation, on
    /// [`crate::default_device`]).
    pub fn new(data: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        TrainSettings {
            data: data.into(),
            out: out.into(),
            config: TrainConfig {
                lr: 1e-4,
                ..Default::default()
            },
            init: HeadInit::Pretrained,
            layers: Layers::Head,
            arch: None,
            min_images: 1,
            val_split: 0.2,
            resume: None,
            policy: FacePolicy::Center,
            flip: true,
            augment: Augment::ALL,
            models: ModelSource::resolve(None),
            detector: DetectorConfig::default(),
            load: LoadOptions::default(),
            threads: None,
            device: crate::default_device(),
        }
    }

    /// Settings that cannot work, refused before anything runs.
    fn check(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.val_split) {
            return Err(Error::Config(
                "the validation fraction must be in [0, 1)".into(),
            ));
        }
        if let Some(arch) = self.arch {
            if self.layers != Layers::All {
                return Err(Error::Config(format!(
                    "a network trained from scratch ({}) trains all its layers, not the {} layers",
                    arch.name,
                    self.layers.name()
                )));
            }
        } else if self.layers != Layers::Head && self.init != HeadInit::Pretrained {
            return Err(Error::Config(format!(
                "training the {} layers trains dlib's own final layer: it needs the pretrained \
                 head",
                self.layers.name()
            )));
        }
        if self.init == (HeadInit::New { dim: 0 }) {
            return Err(Error::Config(
                "a new head needs at least 1 output value".into(),
            ));
        }
        if !self.data.is_dir() {
            return Err(Error::Config(format!(
                "{}: not a folder of identity subfolders",
                self.data.display()
            )));
        }
        Ok(())
    }

    /// The head's name in metadata (`head`).
    fn head_name(&self) -> String {
        if let Some(arch) = self.arch {
            return format!("net-{}", arch.name);
        }
        match self.init {
            HeadInit::Pretrained => "pretrained-fc".into(),
            HeadInit::New { dim } => format!("new-projection-{dim}"),
        }
    }

    /// The settings recorded in the model's and the checkpoint's metadata.
    fn metadata(&self) -> BTreeMap<String, String> {
        let c = &self.config;
        let mut m = BTreeMap::new();
        m.insert("head".to_string(), self.head_name());
        m.insert("train_layers".into(), self.layers.name().into());
        m.insert("loss".into(), format!("{:?}", c.loss));
        m.insert("identities_per_batch".into(), c.identities.to_string());
        m.insert("images_per_identity".into(), c.per_identity.to_string());
        m.insert("epochs".into(), c.epochs.to_string());
        if let Some(n) = c.epoch_batches {
            m.insert("epoch_batches".into(), n.to_string());
        }
        m.insert("lr".into(), c.lr.to_string());
        m.insert("weight_decay".into(), c.weight_decay.to_string());
        m.insert("val_split".into(), self.val_split.to_string());
        m.insert("min_images".into(), self.min_images.to_string());
        m.insert("seed".into(), c.seed.to_string());
        m.insert("flip".into(), self.flip.to_string());
        if self.layers == Layers::All {
            m.insert("augment".into(), self.augment.name());
        }
        m.insert("data".into(), self.data.to_string_lossy().into_owned());
        m
    }
}

/// `MODEL.safetensors` -> `MODEL.ckpt.safetensors`: where a run's checkpoint goes.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    out.with_file_name(format!("{stem}.ckpt.safetensors"))
}

/// Which identities the calibrated threshold was chosen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Calibration {
    /// The held-out validation identities.
    Validation,
    /// The training identities (no validation split).
    Training,
}

impl Calibration {
    /// `validation` or `training` (as in metadata and JSON).
    pub fn name(self) -> &'static str {
        match self {
            Calibration::Validation => "validation",
            Calibration::Training => "training",
        }
    }
}

/// What the calibrated threshold rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ThresholdBasis {
    /// Validation identities, or training ones without a validation split.
    pub from: Calibration,
    /// Identities whose faces were paired.
    pub identities: usize,
    /// Pairs compared (every pair of their faces, or a seeded sample of 20,000 with up to half
    /// same-identity pairs).
    pub pairs: usize,
}

impl ThresholdBasis {
    /// True when the threshold was chosen on at least [`MIN_RELIABLE_IDENTITIES`] held-out
    /// identities (a threshold chosen on the training identities is always optimistic).
    pub fn reliable(&self) -> bool {
        self.from == Calibration::Validation && self.identities >= MIN_RELIABLE_IDENTITIES
    }
}

/// The data of a run as training starts (for [`TrainProgress::ready`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ready {
    /// Faces kept (one per photo).
    pub faces: usize,
    /// Identities.
    pub identities: usize,
    /// Training identities.
    pub train_identities: usize,
    /// Validation identities.
    pub val_identities: usize,
    /// dlib's embedding as published, on validation.
    pub base: Option<Validation>,
    /// The starting point (fresh or resumed), on validation.
    pub before: Option<Validation>,
}

/// What a training run reports as it goes, besides the phases and steps of [`Progress`]
/// ("faces", "stage inputs"). Every method does nothing by default; `()` hears nothing.
pub trait TrainProgress: Progress {
    /// The photos are analysed: those that failed and those without a face are left out.
    fn loaded(&self, _failed: &[Error], _no_face: &[PathBuf]) {}
    /// The data is split and measured; training starts.
    fn ready(&self, _ready: &Ready) {}
    /// Epoch `log.epoch` of `epochs` is done.
    fn epoch(&self, _log: &EpochLog, _epochs: usize) {}
}

impl TrainProgress for () {}

/// What a training run did and wrote.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The model written.
    pub out: PathBuf,
    /// The checkpoint written.
    pub checkpoint: PathBuf,
    /// Photos found (after `min_images`).
    pub images: usize,
    /// Faces kept (one per photo).
    pub faces: usize,
    /// Photos without a detected face (left out).
    pub no_face: Vec<PathBuf>,
    /// Photos that could not be used (left out), with the reason.
    pub failed: Vec<Error>,
    /// Identities.
    pub identities: usize,
    /// Training identities.
    pub train_identities: usize,
    /// Validation identities.
    pub val_identities: usize,
    /// dlib's embedding as published, on validation.
    pub base: Option<Validation>,
    /// The starting point, on validation.
    pub before: Option<Validation>,
    /// The saved model, on validation (none without validation identities).
    pub best: Option<Validation>,
    /// The epoch the saved model comes from (0: the starting point).
    pub best_epoch: usize,
    /// The saved model's calibrated threshold (`verify`'s default with it).
    pub threshold: f32,
    /// What the threshold rests on.
    pub threshold_basis: ThresholdBasis,
    /// This run's epochs.
    pub epochs: Vec<EpochLog>,
    /// Wall time.
    pub seconds: f64,
}

/// What trains: a linear head on cached features, the last stage of the ResNet, all of it, or
/// a network from scratch.
enum Model {
    Head {
        head: LinearHead,
        in_dim: usize,
        out_dim: usize,
    },
    Stage(Stage),
    All(ResNet),
    Net(Net),
}

impl Model {
    fn trainable(&self) -> &dyn Trainable {
        match self {
            Model::Head { head, .. } => head,
            Model::Stage(st) => st,
            Model::All(net) => net,
            Model::Net(net) => net,
        }
    }

    /// The saved model file from the weights the model holds now, with `metadata` and
    /// `threshold`.
    fn file(
        &self,
        weights: &[f32],
        input: HeadInput,
        normalize: bool,
        metadata: BTreeMap<String, String>,
        threshold: f32,
    ) -> Result<Vec<u8>> {
        if let Model::Net(net) = self {
            return net.to_bytes(&metadata, normalize, Some(threshold));
        }
        let mut head = self.head(weights, input, normalize)?;
        head.threshold = Some(threshold);
        head.metadata = metadata;
        head.to_bytes()
    }

    /// The saved head from the weights the model holds now (not for [`Model::Net`]).
    fn head(&self, weights: &[f32], input: HeadInput, normalize: bool) -> Result<Head> {
        Ok(match self {
            Model::Net(_) => {
                return Err(Error::Config(
                    "a network from scratch saves no head on dlib's ResNet".into(),
                ))
            }
            Model::Stage(st) => {
                let mut h = Head::new(st.fc_weight()?, FEATURES, DIM, HeadInput::Pooled, normalize);
                h.backbone = st.backbone_tensors()?;
                h
            }
            Model::All(net) => {
                let mut h = Head::new(
                    net.fc_weight()?,
                    FEATURES,
                    DIM,
                    HeadInput::Pooled,
                    normalize,
                );
                h.backbone = net.backbone_tensors()?;
                h
            }
            Model::Head {
                in_dim, out_dim, ..
            } => Head::new(weights.to_vec(), *in_dim, *out_dim, input, normalize),
        })
    }
}

/// Trains an embedding as `settings` say on the labeled photos in `settings.data` (their faces
/// and features kept in `library`), saves the best epoch's model with its calibrated threshold
/// and the checkpoint, and reports what it did. Photos that fail or show no face are left out
/// (listed in the report); settings that cannot work and too little data are errors.
pub fn run(
    settings: &TrainSettings,
    library: &Library,
    progress: &dyn TrainProgress,
) -> Result<TrainReport> {
    let start = Instant::now();
    settings.check()?;
    let stage = settings.layers == Layers::LastStage;
    let input = settings.init.input();
    let normalize = settings.config.normalize();
    let dlib = DlibEmbedder::new(&settings.models)?;
    let pipeline = Pipeline::with_models(
        &settings.models,
        PipelineConfig {
            flip: settings.flip,
            output: match settings.init.input() {
                // The stage and the whole network start from the chips: the library only
                // supplies the faces (and dlib's embedding for the baseline).
                HeadInput::Pooled if settings.layers == Layers::Head => Output::Pooled,
                _ => Output::Embedding,
            },
            detector: settings.detector.clone(),
            ..Default::default()
        },
    )?;
    let (loaded, images) = load(settings, library, &pipeline, &dlib, progress)?;
    let data = &loaded.dataset;
    let chips = Chips {
        pipeline: &pipeline,
        paths: &loaded.paths,
        faces: &loaded.faces,
        load: &settings.load,
        augment: settings.augment,
        flip: settings.flip,
    };
    let inputs: &dyn Inputs = if settings.layers == Layers::All {
        &chips
    } else {
        data
    };
    let (train_rows, val_rows) = data.split(settings.val_split, settings.config.seed);
    let has_val = !val_rows.is_empty();

    // The model and its starting point: fresh, or a checkpoint. Made on the CPU (seeded
    // initialisation, weight files), then moved to the device.
    let device = &settings.device;
    let fc = dlib.fc_weight()?;
    let model = if let Some(arch) = settings.arch {
        Model::Net(
            Net::init(arch, settings.config.seed, candle_core::DType::F32)?.to_device(device)?,
        )
    } else if settings.layers == Layers::All {
        Model::All(ResNet::pretrained(&settings.models)?.to_device(device)?)
    } else if stage {
        Model::Stage(Stage::pretrained(&settings.models, settings.flip)?.to_device(device)?)
    } else {
        let (w0, in_dim, out_dim) = initial_weights(settings.init, &fc, settings.config.seed);
        Model::Head {
            head: LinearHead::new(w0, in_dim, out_dim)?.to_device(device)?,
            in_dim,
            out_dim,
        }
    };
    if let Model::Net(net) = &model {
        // Centre the new network's output on up to 64 training faces spread over the
        // identities (a resumed run then loads its checkpoint over it).
        let step = train_rows.len().div_ceil(64).max(1);
        let sample: Vec<usize> = train_rows.iter().step_by(step).copied().collect();
        if !sample.is_empty() {
            net.center_output(&inputs.eval_input(&sample)?.to_device(device)?)?;
        }
    }
    let base = has_val
        .then(|| baseline(data, &val_rows, &model, input, &fc))
        .transpose()?;
    // ArcFace / CosFace: class weights from the training identities' mean directions.
    let margin = if settings.config.loss.is_margin_softmax() {
        if let Model::Net(net) = &model {
            Some(
                random_classes(
                    &labels_of(data, &train_rows),
                    net.arch().dim,
                    settings.config.seed,
                )?
                .to_device(device)?,
            )
        } else {
            let emb = if settings.layers == Layers::All {
                // The cached features are dlib's embedding, which the network starts from.
                train_rows.iter().map(|&i| data.row(i).to_vec()).collect()
            } else {
                embed_rows(model.trainable(), data, &train_rows, normalize)?
            };
            Some(MarginHead::from_centres(&emb, &labels_of(data, &train_rows))?.to_device(device)?)
        }
    } else {
        None
    };
    let mut start_state = start_state(settings, &model, margin.as_ref())?;
    let n_model = flat_weights(model.trainable())?.len();
    set_weights(model.trainable(), &start_state.weight[..n_model])?;
    if let Some(h) = &margin {
        let w = &start_state.weight[n_model..];
        let var = h.var();
        var.set(&candle_core::Tensor::from_slice(
            w,
            var.as_tensor().shape(),
            var.device(),
        )?)?;
    }
    let measure = |rows: &[usize]| -> Result<Validation> {
        let emb = embed_rows(model.trainable(), inputs, rows, normalize)?;
        Ok(validate_embeddings(&emb, &labels_of(data, rows)))
    };
    let before = has_val.then(|| measure(&val_rows)).transpose()?;
    if let (None, Some(b)) = (&start_state.best, before) {
        // The starting point is the first candidate for the best epoch (measured once here).
        start_state.best = Some((start_state.weight.clone(), b.accuracy, start_state.epoch));
    }
    let ready = Ready {
        faces: data.len(),
        identities: data.identities.len(),
        train_identities: identities_of(data, &train_rows),
        val_identities: identities_of(data, &val_rows),
        base,
        before,
    };
    progress.ready(&ready);
    let epochs = settings.config.epochs;
    let start_epoch = start_state.epoch;
    let trained = train(
        data,
        inputs,
        &train_rows,
        &val_rows,
        &settings.config,
        model.trainable(),
        margin.as_ref(),
        start_state,
        |log| progress.epoch(log, epochs),
    )?;

    // The saved model: the best checkpoint, its threshold calibrated on validation (or on the
    // training identities without a validation split).
    set_weights(model.trainable(), &trained.best_weights)?;
    let rows = if has_val { &val_rows } else { &train_rows };
    // The best epoch's validation when this run measured it (a pass over the validation
    // faces costs minutes with the whole network), else measured now.
    let measured = match trained.best_epoch {
        e if e == start_epoch => before,
        e => trained
            .logs
            .iter()
            .find(|l| l.epoch == e)
            .and_then(|l| l.validation),
    };
    let best = match measured {
        Some(v) if has_val => v,
        _ => measure(rows)?,
    };
    let threshold_basis = ThresholdBasis {
        from: if has_val {
            Calibration::Validation
        } else {
            Calibration::Training
        },
        identities: identities_of(data, rows),
        pairs: best.pairs,
    };
    let checkpoint = save(
        settings,
        &model,
        (input, normalize),
        &trained,
        best,
        threshold_basis,
    )?;
    Ok(TrainReport {
        out: settings.out.clone(),
        checkpoint,
        images,
        faces: data.len(),
        no_face: loaded.no_face,
        failed: loaded.failed,
        identities: ready.identities,
        train_identities: ready.train_identities,
        val_identities: ready.val_identities,
        base,
        before,
        best: has_val.then_some(best),
        best_epoch: trained.best_epoch,
        threshold: best.threshold,
        threshold_basis,
        epochs: trained.logs,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Writes the model (`model` holding the best epoch's weights, with its `best` validation, its
/// threshold and what it rests on) and the checkpoint; returns the checkpoint's path.
fn save(
    settings: &TrainSettings,
    model: &Model,
    (input, normalize): (HeadInput, bool),
    trained: &super::Trained,
    best: Validation,
    basis: ThresholdBasis,
) -> Result<PathBuf> {
    let meta = settings.metadata();
    let mut file_meta = meta.clone();
    let m = &mut file_meta;
    m.insert("best_epoch".into(), trained.best_epoch.to_string());
    let accuracy = match basis.from {
        Calibration::Validation => "val_accuracy",
        Calibration::Training => "train_accuracy",
    };
    m.insert(accuracy.into(), best.accuracy.to_string());
    m.insert("threshold_from".into(), basis.from.name().into());
    m.insert("threshold_identities".into(), basis.identities.to_string());
    m.insert("threshold_pairs".into(), basis.pairs.to_string());
    let checkpoint = checkpoint_path(&settings.out);
    let bytes = model.file(
        &trained.best_weights,
        input,
        normalize,
        file_meta,
        best.threshold,
    )?;
    crate::io::write_file_atomic(&settings.out, &bytes, true)?;
    crate::io::write_file_atomic(&checkpoint, &trained.checkpoint.to_bytes(&meta)?, true)?;
    Ok(checkpoint)
}

/// The faces of the labeled photos (features from the library, data-parallel in a pool of
/// `settings.threads`) and, to train the last stage, each face's input to it (the frozen blocks
/// run once per face and its mirror). Returns them with the number of photos found.
fn load(
    settings: &TrainSettings,
    library: &Library,
    pipeline: &Pipeline,
    dlib: &DlibEmbedder,
    progress: &dyn TrainProgress,
) -> Result<(Loaded, usize)> {
    let stage = settings.layers == Layers::LastStage;
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(n) = settings.threads {
        builder = builder.num_threads(n);
    }
    let pool = builder
        .build()
        .map_err(|e| Error::Config(format!("cannot start worker threads: {e}")))?;
    let (images, unreadable) = labeled_images(&settings.data, settings.min_images);
    let n_images = images.len();
    progress.start("faces", n_images);
    let (root, opts, policy) = (&settings.data, &settings.load, settings.policy);
    let mut loaded = pool.install(|| {
        load_dataset(root, images, pipeline, library, opts, policy, || {
            progress.step()
        })
    })?;
    progress.finish();
    loaded.failed.extend(unreadable);
    progress.loaded(&loaded.failed, &loaded.no_face);
    if stage {
        progress.start("stage inputs", loaded.paths.len());
        let rows: Vec<Vec<f32>> = pool.install(|| {
            use rayon::prelude::*;
            loaded
                .paths
                .par_iter()
                .zip(&loaded.faces)
                .map(|(path, det)| -> Result<Vec<f32>> {
                    let r = crate::nn::serial(|| {
                        let img = crate::io::load_image(path, opts)?;
                        let chip = pipeline.chip(&img, det);
                        let mut chips = vec![chip.clone()];
                        if settings.flip {
                            chips.push(image::imageops::flip_horizontal(&chip));
                        }
                        Ok(dlib.prefix(&chips, stage::FIRST_BLOCK)?.concat())
                    });
                    progress.step();
                    r
                })
                .collect::<Result<Vec<_>>>()
        })?;
        progress.finish();
        loaded.dataset.dim = rows.first().map_or(0, Vec::len);
        loaded.dataset.features = rows.concat();
    }
    Ok((loaded, n_images))
}

/// dlib's embedding as published (the pretrained model without normalisation), on `val_rows`.
fn baseline(
    data: &Dataset,
    val_rows: &[usize],
    model: &Model,
    input: HeadInput,
    fc: &[f32],
) -> Result<Validation> {
    Ok(match model {
        _ if input == HeadInput::Embedding => validate(data, val_rows, |x| x.to_vec()),
        // The cached features are dlib's embedding.
        Model::All(_) | Model::Net(_) => validate(data, val_rows, |x| x.to_vec()),
        Model::Stage(_) => {
            let emb = embed_rows(model.trainable(), data, val_rows, false)?;
            validate_embeddings(&emb, &labels_of(data, val_rows))
        }
        Model::Head { .. } => {
            let dlib = Head::new(fc.to_vec(), FEATURES, DIM, input, false);
            validate(data, val_rows, |x| dlib.apply(x))
        }
    })
}

/// The state training starts from: fresh from the model's weights, or `settings.resume`'s
/// checkpoint when it was trained with the same head and layers.
fn start_state(
    settings: &TrainSettings,
    model: &Model,
    margin: Option<&MarginHead>,
) -> Result<Checkpoint> {
    let mut w0 = flat_weights(model.trainable())?;
    if let Some(h) = margin {
        w0.extend(h.var().as_tensor().flatten_all()?.to_vec1::<f32>()?);
    }
    let Some(path) = &settings.resume else {
        return Ok(Checkpoint::fresh(w0));
    };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let name = path.display().to_string();
    let (ck, meta) = Checkpoint::from_bytes(&bytes, &name)?;
    // The checkpoint is readable but does not fit these settings.
    let bad = |reason: String| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
        )
    };
    if ck.weight.len() != w0.len() {
        return Err(bad(format!(
            "the checkpoint holds {} weights, these settings need {}",
            ck.weight.len(),
            w0.len()
        )));
    }
    let (head, layers) = (settings.head_name(), settings.layers.name());
    if meta.get("head") != Some(&head)
        || meta.get("train_layers").map(String::as_str) != Some(layers)
    {
        return Err(bad(format!(
            "the checkpoint was trained with another head or layers (it has head {}, layers {}; \
             these settings: head {head}, layers {layers})",
            meta.get("head").map_or("?", String::as_str),
            meta.get("train_layers").map_or("?", String::as_str),
        )));
    }
    Ok(ck)
}

/// ArcFace / CosFace class weights for a network from scratch: a seeded random unit vector of
/// size `dim` per training identity (the network's own embeddings say nothing yet).
fn random_classes(labels: &[u32], dim: usize, seed: u64) -> Result<MarginHead> {
    let identities: Vec<u32> = labels
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut rng = crate::rng::Rng::new(seed ^ 0x0C1A_55E5);
    let mut init = Vec::with_capacity(identities.len() * dim);
    for _ in &identities {
        let v: Vec<f64> = (0..dim).map(|_| rng.normal()).collect();
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        init.extend(v.iter().map(|x| (x / n) as f32));
    }
    MarginHead::new(init, &identities, dim)
}

/// The identity of each of `rows`.
fn labels_of(data: &Dataset, rows: &[usize]) -> Vec<u32> {
    rows.iter().map(|&i| data.labels[i]).collect()
}

/// The number of distinct identities among `rows`.
fn identities_of(data: &Dataset, rows: &[usize]) -> usize {
    rows.iter()
        .map(|&i| data.labels[i])
        .collect::<BTreeSet<_>>()
        .len()
}
