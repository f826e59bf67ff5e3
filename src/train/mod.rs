//! `facekit train`: metric learning of an embedding head on frozen, cached backbone features —
//! FaceNet's triplet loss with semi-hard / batch-hard mining on P x K batches, the contrastive
//! loss, or dlib's pairwise hinge loss — with validation on held-out identities, the best
//! checkpoint kept, and exact resume (weights, AdamW moments and the epoch are checkpointed).
//! [`run`] is the whole workflow `facekit train` performs, from a labeled folder to a saved
//! model with its calibrated threshold and what that threshold rests on. The model trains on
//! [`TrainSettings::device`] (any candle device); on the CPU through facekit's own convolution
//! and max-pool kernels, elsewhere through candle ops ([`with_generic_ops`] checks the latter on
//! the CPU).

pub mod arch;
pub mod augment;
pub mod conv;
pub mod loss;
pub mod margin;
pub mod maxpool;
pub mod resnet;
mod run;
pub mod stage;

use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};

use crate::distance;
use crate::embed::head::HeadInput;
use crate::metrics::{self, Scored, Sweep};
use crate::rng::Rng;
use crate::{Error, Result};

pub use loss::{LossKind, Mining};
pub use run::{
    checkpoint_path, run, Calibration, Layers, Ready, ThresholdBasis, TrainProgress, TrainReport,
    TrainSettings, MIN_RELIABLE_IDENTITIES,
};

thread_local! {
    /// Set inside [`with_generic_ops`].
    static GENERIC_OPS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the device-generic training ops on the CPU too: candle's own convolution in
/// place of [`conv::conv2d`]'s CPU kernels and [`maxpool::max_pool_generic`] in place of the
/// CPU max-pool op, i.e. the ops a run on a GPU uses. For checks (the two paths compute the
/// same values to rounding); on this thread only, for the forward passes built inside `f`.
pub fn with_generic_ops<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the previous setting, also when `f` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GENERIC_OPS.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GENERIC_OPS.with(|g| g.replace(true)));
    f()
}

/// Whether this thread is inside [`with_generic_ops`].
pub(crate) fn generic_ops_forced() -> bool {
    GENERIC_OPS.with(|g| g.get())
}

/// Backbone features of labeled faces: the training set.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Row-major `len x dim` features.
    pub features: Vec<f32>,
    /// Feature size.
    pub dim: usize,
    /// Identity index of each row.
    pub labels: Vec<u32>,
    /// Identity names, by index.
    pub identities: Vec<String>,
}

impl Dataset {
    /// Number of faces.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True without faces.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }

    /// Splits identities (not images) into train and validation sets, seeded: about
    /// `val_fraction` of the identities go to validation. Returns row indices.
    pub fn split(&self, val_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
        let mut ids: Vec<u32> = (0..self.identities.len() as u32).collect();
        Rng::new(seed ^ 0x5917).shuffle(&mut ids);
        let n_val = ((ids.len() as f64) * val_fraction).round() as usize;
        let val: std::collections::HashSet<u32> =
            ids[..n_val.min(ids.len())].iter().copied().collect();
        (0..self.len()).partition(|&i| !val.contains(&self.labels[i]))
    }
}

/// What [`load_dataset`] found.
pub struct Loaded {
    /// The faces' features and identities.
    pub dataset: Dataset,
    /// The image of each row.
    pub paths: Vec<std::path::PathBuf>,
    /// The face of each row (the one `policy` chose in its image).
    pub faces: Vec<crate::Detection>,
    /// Images without a detected face (left out).
    pub no_face: Vec<std::path::PathBuf>,
    /// Images that could not be read (left out), with the reason.
    pub failed: Vec<Error>,
    /// Images answered by the cache.
    pub cached: usize,
}

/// The images of a labeled folder (sorted) whose identity has at least `min_images` of them,
/// and the paths that could not be read.
pub fn labeled_images(
    root: &std::path::Path,
    min_images: usize,
) -> (Vec<std::path::PathBuf>, Vec<Error>) {
    let mut images = Vec::new();
    let mut failed = Vec::new();
    for item in crate::io::collect_inputs(&[root.to_path_buf()]) {
        match item {
            Ok(p) => images.push(p),
            Err(e) => failed.push(e),
        }
    }
    images.sort();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for p in &images {
        *counts.entry(crate::pairs::label_of(root, p)).or_default() += 1;
    }
    images.retain(|p| counts[&crate::pairs::label_of(root, p)] >= min_images);
    (images, failed)
}

/// Detects, aligns and embeds (to `pipeline`'s backbone output, cached) the face each of
/// `images` (from [`labeled_images`] under `root`) stands for (`policy`), labeling it by its
/// subfolder (or digit-stripped file name for flat folders). Runs data-parallel in the current
/// rayon pool; `tick` is called once per image.
pub fn load_dataset(
    root: &std::path::Path,
    images: Vec<std::path::PathBuf>,
    pipeline: &crate::Pipeline,
    cache: &crate::library::Library,
    opts: &crate::io::LoadOptions,
    policy: crate::FacePolicy,
    tick: impl Fn() + Sync,
) -> Result<Loaded> {
    let mut failed = Vec::new();
    type Pick = (Option<(Vec<f32>, crate::Detection)>, bool);
    let results: Vec<Result<Pick>> = cache
        .faces_of_files_in_order(pipeline, &images, opts, false, &tick)
        .into_iter()
        .map(|r| {
            let (faces, hit) = r?;
            let boxes = faces.faces.iter().map(|f| &f.bbox);
            let pick = crate::pipeline::select_face(boxes, policy, faces.width, faces.height);
            Ok((
                pick.map(|i| (faces.faces[i].embedding.clone(), faces.faces[i].detection())),
                hit,
            ))
        })
        .collect();
    let mut names: BTreeMap<String, u32> = BTreeMap::new();
    let (mut features, mut labels, mut paths, mut no_face, mut picked) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut dim = 0;
    let mut cached = 0;
    for (path, r) in images.into_iter().zip(results) {
        match r {
            Ok((Some((f, det)), hit)) => {
                picked.push(det);
                cached += usize::from(hit);
                let label = crate::pairs::label_of(root, &path);
                let next = names.len() as u32;
                labels.push(*names.entry(label).or_insert(next));
                dim = f.len();
                features.extend(f);
                paths.push(path);
            }
            Ok((None, hit)) => {
                cached += usize::from(hit);
                no_face.push(path);
            }
            Err(e) => failed.push(e),
        }
    }
    let mut identities = vec![String::new(); names.len()];
    for (name, id) in names {
        identities[id as usize] = name;
    }
    Ok(Loaded {
        dataset: Dataset {
            features,
            dim,
            labels,
            identities,
        },
        paths,
        faces: picked,
        no_face,
        failed,
        cached,
    })
}

/// How the head starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadInit {
    /// dlib's own final fc layer (256 -> 128), fine-tuned from its pretrained weights.
    Pretrained,
    /// A new projection of the 128-d dlib embedding to `dim`, randomly initialised (seeded).
    New {
        /// Output size.
        dim: usize,
    },
}

impl HeadInit {
    /// The backbone output this head takes.
    pub fn input(self) -> HeadInput {
        match self {
            HeadInit::Pretrained => HeadInput::Pooled,
            HeadInit::New { .. } => HeadInput::Embedding,
        }
    }
}

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// The loss (and its mining).
    pub loss: LossKind,
    /// Identities per batch (P).
    pub identities: usize,
    /// Images per identity per batch (K).
    pub per_identity: usize,
    /// Epochs (an epoch is as many batches as cover the training faces once, or
    /// `epoch_batches`).
    pub epochs: usize,
    /// Batches per epoch (`None`: as many as cover the training faces once).
    pub epoch_batches: Option<usize>,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Seed for the head's initialisation and the batch sampling.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            loss: LossKind::Triplet {
                mining: Mining::SemiHard,
                margin: 0.2,
            },
            identities: 16,
            per_identity: 4,
            epochs: 20,
            epoch_batches: None,
            lr: 1e-3,
            weight_decay: 1e-4,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// Whether the head's output is L2-normalised (triplet and contrastive work on the sphere;
    /// dlib's hinge loss on raw distances).
    pub fn normalize(&self) -> bool {
        !matches!(self.loss, LossKind::Hinge { .. })
    }
}

/// Verification quality on held-out identities.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Validation {
    /// 10-fold accuracy (threshold chosen on 9 folds).
    pub accuracy: f64,
    /// ROC AUC.
    pub auc: f64,
    /// Best single threshold over all validation pairs.
    pub threshold: f32,
    /// Pairs compared.
    pub pairs: usize,
}

/// Measures verification on the faces `rows` of `data` after mapping them with `map`:
/// all same pairs and as many different pairs (seeded sample, at most 20,000 pairs).
pub fn validate(data: &Dataset, rows: &[usize], map: impl Fn(&[f32]) -> Vec<f32>) -> Validation {
    let mapped: Vec<Vec<f32>> = rows.iter().map(|&i| map(data.row(i))).collect();
    let labels: Vec<u32> = rows.iter().map(|&i| data.labels[i]).collect();
    validate_embeddings(&mapped, &labels)
}

/// [`validate`] on embeddings already computed, with their identities.
pub fn validate_embeddings(embeddings: &[Vec<f32>], labels: &[u32]) -> Validation {
    let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
    let drawn = crate::pairs::labeled_pairs(&labels, 20_000, 7);
    let scored: Vec<Scored> = drawn
        .pairs
        .iter()
        .map(|&(a, b, same)| Scored {
            distance: distance::euclidean(&embeddings[a], &embeddings[b]),
            same,
        })
        .collect();
    let mut fold: Vec<usize> = (0..scored.len()).map(|i| i % 10).collect();
    Rng::new(11).shuffle(&mut fold);
    let kf = metrics::k_fold(&scored, &fold, 10);
    let sweep = Sweep::new(&scored);
    Validation {
        accuracy: kf.accuracy_mean,
        auc: metrics::auc(&sweep.roc()),
        threshold: sweep.best_threshold().0,
        pairs: scored.len(),
    }
}

/// One epoch's log line.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct EpochLog {
    /// Epoch number (1-based).
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub loss: f64,
    /// Fraction of mined triplets (or pairs) with a positive loss.
    pub active: f64,
    /// Validation after the epoch (none without validation identities).
    pub validation: Option<Validation>,
    /// Wall time of the epoch's batches, in seconds.
    pub seconds: f64,
    /// Wall time of the validation after it, in seconds.
    pub validation_seconds: f64,
}

/// The training state a checkpoint holds: weights, AdamW moments, epochs done, best so far.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Current head weights.
    pub weight: Vec<f32>,
    /// AdamW first moments.
    pub m: Vec<f32>,
    /// AdamW second moments.
    pub v: Vec<f32>,
    /// Epochs completed.
    pub epoch: usize,
    /// Best weights by validation so far, with their accuracy and epoch.
    pub best: Option<(Vec<f32>, f64, usize)>,
}

/// A trained model and its history.
pub struct Trained {
    /// The best weights by validation accuracy (the last ones without validation), all
    /// variables concatenated in [`Trainable::vars`] order.
    pub best_weights: Vec<f32>,
    /// Epoch the best weights come from (0: the starting point).
    pub best_epoch: usize,
    /// The state after the last epoch (for `--resume`).
    pub checkpoint: Checkpoint,
    /// Per-epoch logs (this run's epochs).
    pub logs: Vec<EpochLog>,
}

/// Initial weights `out x in` for `init`: dlib's fc (`fc_weight`, row-major 128 x 256) or a
/// seeded random projection (Gaussian, variance 1/in).
pub fn initial_weights(init: HeadInit, fc_weight: &[f32], seed: u64) -> (Vec<f32>, usize, usize) {
    match init {
        HeadInit::Pretrained => (
            fc_weight.to_vec(),
            crate::embed::dlib_resnet::FEATURES,
            crate::embed::dlib_resnet::DIM,
        ),
        HeadInit::New { dim } => {
            let n = crate::embed::dlib_resnet::DIM;
            let mut r = Rng::new(seed ^ 0x1e7);
            let scale = (1.0 / n as f64).sqrt();
            (
                (0..dim * n).map(|_| (r.normal() * scale) as f32).collect(),
                n,
                dim,
            )
        }
    }
}

/// The augmentation seed of step `step` of epoch `epoch`.
fn batch_seed(seed: u64, epoch: usize, step: usize) -> u64 {
    let mut r =
        Rng::new(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (step as u64) << 20);
    r.next_u64()
}

/// One P x K batch from the training rows, seeded: P identities with at least two faces, K
/// faces each (without repeats when the identity has K).
fn sample_batch(groups: &[Vec<usize>], p: usize, k: usize, rng: &mut Rng) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..groups.len()).collect();
    rng.shuffle(&mut ids);
    let mut batch = Vec::with_capacity(p * k);
    for &g in ids.iter().take(p) {
        let mut members = groups[g].clone();
        rng.shuffle(&mut members);
        for j in 0..k {
            batch.push(members[j % members.len()]);
        }
    }
    batch
}

/// What [`train`] trains: a set of variables and a batched forward pass from its inputs (see
/// [`Inputs`]) to embeddings (before any L2 normalisation).
pub trait Trainable {
    /// The trainable variables, in a fixed order (checkpoints store them concatenated).
    fn vars(&self) -> Vec<Var>;
    /// Embeddings `[B, out]` of a batch of inputs, differentiable.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;
    /// Embeddings for evaluation: the same values, and a model may skip building the graph.
    fn evaluate(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward(x)
    }
}

/// Where the input tensors of a model come from: the dataset's rows of cached features, or
/// chips cut from the photos batch by batch ([`augment::Chips`]).
pub trait Inputs: Sync {
    /// The input of a training batch of dataset rows; `seed` (distinct per batch) drives any
    /// augmentation.
    fn train_input(&self, rows: &[usize], seed: u64) -> Result<Tensor>;
    /// The input of an evaluation batch (no augmentation).
    fn eval_input(&self, rows: &[usize]) -> Result<Tensor>;
    /// Rows per evaluation batch.
    fn eval_batch(&self) -> usize {
        256
    }
}

impl Inputs for Dataset {
    fn train_input(&self, rows: &[usize], _seed: u64) -> Result<Tensor> {
        self.eval_input(rows)
    }

    fn eval_input(&self, rows: &[usize]) -> Result<Tensor> {
        let x: Vec<f32> = rows
            .iter()
            .flat_map(|&i| self.row(i).iter().copied())
            .collect();
        Ok(Tensor::from_vec(x, (rows.len(), self.dim), &Device::Cpu)?)
    }
}

/// A linear head `y = W x` (`W`: `out x in`).
pub struct LinearHead {
    w: Var,
}

impl LinearHead {
    /// A head with weights `out x in` (row-major), on the CPU.
    pub fn new(weight: Vec<f32>, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(LinearHead {
            w: Var::from_vec(weight, (out_dim, in_dim), &Device::Cpu)?,
        })
    }

    /// The head with its weights on `device`.
    pub fn to_device(self, device: &Device) -> Result<Self> {
        Ok(LinearHead {
            w: var_to_device(self.w, device)?,
        })
    }
}

/// `var` as a variable on `device` (the same variable when it is there already).
pub(crate) fn var_to_device(var: Var, device: &Device) -> Result<Var> {
    if var.device().same_device(device) {
        Ok(var)
    } else {
        Ok(Var::from_tensor(&var.as_tensor().to_device(device)?)?)
    }
}

/// `vars` as variables on `device` (see [`var_to_device`]).
pub(crate) fn vars_to_device(vars: Vec<Var>, device: &Device) -> Result<Vec<Var>> {
    vars.into_iter().map(|v| var_to_device(v, device)).collect()
}

/// The device a model's variables are on (the CPU for a model without variables).
pub fn device_of(model: &dyn Trainable) -> Device {
    model
        .vars()
        .first()
        .map_or(Device::Cpu, |v| v.device().clone())
}

impl Trainable for LinearHead {
    fn vars(&self) -> Vec<Var> {
        vec![self.w.clone()]
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.w.as_tensor().t()?)
    }
}

/// A model's variables flattened and concatenated (the checkpoint layout).
pub fn flat_weights(model: &dyn Trainable) -> Result<Vec<f32>> {
    flat(&model.vars())
}

/// Sets a model's variables from a concatenation written by [`flat_weights`].
pub fn set_weights(model: &dyn Trainable, weights: &[f32]) -> Result<()> {
    let vars = model.vars();
    for (var, value) in vars.iter().zip(unflat(weights, &vars)?) {
        var.set(&value)?;
    }
    Ok(())
}

/// All variables flattened and concatenated.
fn flat(vars: &[Var]) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for v in vars {
        out.extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Tensors shaped like `vars` from a concatenation.
fn unflat(values: &[f32], vars: &[Var]) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(vars.len());
    let mut at = 0;
    for v in vars {
        let n = v.as_tensor().elem_count();
        let part = values
            .get(at..at + n)
            .ok_or_else(|| Error::Config("checkpoint does not match the model".into()))?;
        out.push(Tensor::from_slice(part, v.as_tensor().shape(), v.device())?);
        at += n;
    }
    if at != values.len() {
        return Err(Error::Config("checkpoint does not match the model".into()));
    }
    Ok(out)
}

/// Embeddings of `rows` through `model` (batched, normalised when `normalize`).
pub fn embed_rows(
    model: &dyn Trainable,
    inputs: &dyn Inputs,
    rows: &[usize],
    normalize: bool,
) -> Result<Vec<Vec<f32>>> {
    let device = device_of(model);
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(inputs.eval_batch().max(1)) {
        let x = inputs.eval_input(chunk)?.to_device(&device)?;
        let mut y = model.evaluate(&x)?;
        if normalize {
            y = loss::l2_normalize(&y)?;
        }
        out.extend(y.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// Trains `model` on `data`'s `train_rows` (its inputs from `inputs`, prepared one batch
/// ahead on another thread), validating on `val_rows` after every epoch. ArcFace and CosFace
/// train `margin`'s class weights along (checkpointed after the model's variables). `start` is
/// the initial state (fresh from the variables' current values, or a resumed checkpoint);
/// `on_epoch` sees each log.
#[allow(clippy::too_many_arguments)]
pub fn train(
    data: &Dataset,
    inputs: &dyn Inputs,
    train_rows: &[usize],
    val_rows: &[usize],
    config: &TrainConfig,
    model: &dyn Trainable,
    margin: Option<&margin::MarginHead>,
    start: Checkpoint,
    mut on_epoch: impl FnMut(&EpochLog),
) -> Result<Trained> {
    if config.loss.is_margin_softmax() != margin.is_some() {
        return Err(Error::Config(
            "ArcFace and CosFace (and only they) train class weights".into(),
        ));
    }
    if config.identities < 2 || config.per_identity < 2 {
        return Err(Error::Config(format!(
            "batches need at least 2 identities x 2 images each, got {} x {}",
            config.identities, config.per_identity
        )));
    }
    // Identities with at least two training faces.
    let mut by_id: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for &i in train_rows {
        by_id.entry(data.labels[i]).or_default().push(i);
    }
    let groups: Vec<Vec<usize>> = by_id.into_values().filter(|g| g.len() >= 2).collect();
    if groups.len() < 2 {
        return Err(Error::Config(format!(
            "training needs at least 2 identities with 2+ images each; found {}",
            groups.len()
        )));
    }
    let model_len = flat_weights(model)?.len();
    // Batches are made on the CPU and go to the model's device (a no-op on the CPU).
    let device = device_of(model);
    let mut vars = model.vars();
    vars.extend(margin.map(|h| h.var()));
    for (var, value) in vars.iter().zip(unflat(&start.weight, &vars)?) {
        var.set(&value)?;
    }
    let mut m = unflat(&start.m, &vars)?;
    let mut v = unflat(&start.v, &vars)?;
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let p = config.identities.min(groups.len());
    let k = config.per_identity;
    let steps = config
        .epoch_batches
        .unwrap_or_else(|| train_rows.len().div_ceil(p * k))
        .max(1);
    let normalize = config.normalize();
    let validation = |model: &dyn Trainable| -> Result<Validation> {
        let emb = embed_rows(model, inputs, val_rows, normalize)?;
        Ok(validate_embeddings(
            &emb,
            &val_rows.iter().map(|&i| data.labels[i]).collect::<Vec<_>>(),
        ))
    };
    let mut best = start.best.clone();
    if best.is_none() && !val_rows.is_empty() {
        // The starting point is a candidate too (epoch 0): fine-tuning never returns a model
        // worse on validation than the one it started from.
        best = Some((
            start.weight.clone(),
            validation(model)?.accuracy,
            start.epoch,
        ));
    }
    let mut logs = Vec::new();
    let mut step_count = start.epoch * steps;
    let mut epoch = start.epoch;
    while epoch < config.epochs {
        epoch += 1;
        // Each epoch's sampling depends only on (seed, epoch): resumed runs match.
        let mut rng = Rng::new(
            config
                .seed
                .wrapping_mul(0x9E37_79B9)
                .wrapping_add(epoch as u64),
        );
        let (mut loss_sum, mut active, mut candidates) = (0.0, 0usize, 0usize);
        let groups = &groups;
        let clock = std::time::Instant::now();
        std::thread::scope(|scope| -> Result<()> {
            // The next batch's input is prepared while the optimizer works on this one.
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(Vec<usize>, Tensor)>>(1);
            scope.spawn(move || {
                for step in 0..steps {
                    let batch = sample_batch(groups, p, k, &mut rng);
                    let seed = batch_seed(config.seed, epoch, step);
                    let x = inputs.train_input(&batch, seed).map(|x| (batch, x));
                    if tx.send(x).is_err() {
                        break;
                    }
                }
            });
            for _ in 0..steps {
                let (batch, x) = rx
                    .recv()
                    .map_err(|_| Error::Config("the batch preparation stopped".into()))??;
                let labels: Vec<u32> = batch.iter().map(|&i| data.labels[i]).collect();
                let mut emb = model.forward(&x.to_device(&device)?)?;
                if normalize {
                    emb = loss::l2_normalize(&emb)?;
                }
                let out = match margin {
                    Some(head) => head.loss(&emb, &labels, config.loss)?,
                    None => loss::compute(&emb, &labels, config.loss)?,
                };
                loss_sum += out.loss.to_scalar::<f32>()? as f64;
                active += out.active;
                candidates += out.candidates;
                let grads = out.loss.backward()?;
                drop(out);
                drop(emb);
                // AdamW (Loshchilov & Hutter): decoupled weight decay, bias-corrected moments.
                step_count += 1;
                let t = step_count as i32;
                for (i, var) in vars.iter().enumerate() {
                    let Some(g) = grads.get(var.as_tensor()) else {
                        continue;
                    };
                    // Gradients carry the graph of the batch that made them: detached, the
                    // moments do not keep every batch's activations alive.
                    let g = g.detach();
                    m[i] = ((&m[i] * b1)? + (&g * (1.0 - b1))?)?.detach();
                    v[i] = ((&v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?.detach();
                    let m_hat = (&m[i] / (1.0 - b1.powi(t)))?;
                    let v_hat = (&v[i] / (1.0 - b2.powi(t)))?;
                    let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
                    let decayed = (var.as_tensor() * (1.0 - config.lr * config.weight_decay))?;
                    var.set(&(decayed - (update * config.lr)?)?.detach())?;
                }
            }
            Ok(())
        })?;
        let seconds = clock.elapsed().as_secs_f64();
        let clock = std::time::Instant::now();
        let val = if val_rows.is_empty() {
            None
        } else {
            Some(validation(model)?)
        };
        if let Some(val) = val {
            if best.as_ref().is_none_or(|b| val.accuracy > b.1) {
                best = Some((flat(&vars)?, val.accuracy, epoch));
            }
        }
        let log = EpochLog {
            epoch,
            loss: loss_sum / steps as f64,
            active: if candidates == 0 {
                0.0
            } else {
                active as f64 / candidates as f64
            },
            validation: val,
            seconds,
            validation_seconds: clock.elapsed().as_secs_f64(),
        };
        on_epoch(&log);
        logs.push(log);
    }
    let last = flat(&vars)?;
    let (mut best_weights, best_epoch) = match &best {
        Some((wts, _, e)) => (wts.clone(), *e),
        None => (last.clone(), epoch),
    };
    // The saved model: without the class weights.
    best_weights.truncate(model_len);
    let flat_tensors = |t: &[Tensor]| -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for x in t {
            out.extend(x.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    };
    Ok(Trained {
        best_weights,
        best_epoch,
        checkpoint: Checkpoint {
            weight: last,
            m: flat_tensors(&m)?,
            v: flat_tensors(&v)?,
            epoch,
            best,
        },
        logs,
    })
}

impl Checkpoint {
    /// A fresh start from `weight`.
    pub fn fresh(weight: Vec<f32>) -> Self {
        let n = weight.len();
        Checkpoint {
            weight,
            m: vec![0.0; n],
            v: vec![0.0; n],
            epoch: 0,
            best: None,
        }
    }

    /// The checkpoint as safetensors bytes (tensors `weight`, `adam_m`, `adam_v`, `best`;
    /// metadata: epoch, best accuracy and epoch, and `settings`).
    pub fn to_bytes(&self, settings: &BTreeMap<String, String>) -> Result<Vec<u8>> {
        let n = self.weight.len();
        let best = self.best.as_ref().map_or(&self.weight, |b| &b.0);
        if [&self.weight, &self.m, &self.v, best]
            .iter()
            .any(|t| t.len() != n)
        {
            return Err(Error::Config("checkpoint tensors differ in length".into()));
        }
        let mut meta = settings.clone();
        meta.insert("format".into(), "facekit-train-checkpoint-v1".into());
        meta.insert("epoch".into(), self.epoch.to_string());
        if let Some((_, acc, e)) = &self.best {
            meta.insert("best_accuracy".into(), acc.to_string());
            meta.insert("best_epoch".into(), e.to_string());
        }
        // All variables concatenated, in the model's order.
        let shape = vec![n];
        Ok(crate::models::safetensors_f32(
            &[
                ("weight", shape.clone(), &self.weight),
                ("adam_m", shape.clone(), &self.m),
                ("adam_v", shape.clone(), &self.v),
                ("best", shape, best),
            ],
            &meta,
        ))
    }

    /// Reads a checkpoint written by [`Checkpoint::to_bytes`], with its settings metadata.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<(Self, BTreeMap<String, String>)> {
        let bad = |r: String| Error::Model {
            name: name.to_string(),
            reason: r,
        };
        let meta = crate::models::safetensors_metadata(bytes).map_err(bad)?;
        if meta.get("format").map(String::as_str) != Some("facekit-train-checkpoint-v1") {
            return Err(bad("not a facekit training checkpoint (`*.ckpt.safetensors` written by `facekit train`)".into()));
        }
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let get = |n: &str| -> Result<Vec<f32>> {
            let t = st.tensor(n).map_err(|_| bad(format!("no tensor `{n}`")))?;
            Ok(crate::models::f32_from_le(t.data()))
        };
        let num = |k: &str| meta.get(k).and_then(|v| v.parse::<f64>().ok());
        let epoch = num("epoch").ok_or_else(|| bad("no epoch".into()))? as usize;
        let best = match (num("best_accuracy"), num("best_epoch")) {
            (Some(acc), Some(e)) => Some((get("best")?, acc, e as usize)),
            _ => None,
        };
        Ok((
            Checkpoint {
                weight: get("weight")?,
                m: get("adam_m")?,
                v: get("adam_v")?,
                epoch,
                best,
            },
            meta,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::head::Head;

    /// Synthetic features: `ids` identities, `per` noisy samples each around a random centre in
    /// a 128-d space where a few directions carry identity and the rest is noise.
    fn synthetic(ids: usize, per: usize, seed: u64) -> Dataset {
        let dim = 128;
        let mut r = Rng::new(seed);
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for id in 0..ids {
            let centre: Vec<f32> = (0..dim).map(|_| r.normal() as f32 * 0.1).collect();
            for _ in 0..per {
                features.extend(centre.iter().map(|c| c + 0.08 * r.normal() as f32));
                labels.push(id as u32);
            }
        }
        Dataset {
            features,
            dim,
            labels,
            identities: (0..ids).map(|i| format!("p{i}")).collect(),
        }
    }

    #[test]
    fn trains_validates_and_resumes_exactly() {
        let data = synthetic(30, 8, 1);
        let (tr, val) = data.split(0.3, 2);
        assert!(!tr.is_empty() && !val.is_empty());
        let val_ids: std::collections::HashSet<u32> = val.iter().map(|&i| data.labels[i]).collect();
        assert!(
            tr.iter().all(|&i| !val_ids.contains(&data.labels[i])),
            "identities disjoint"
        );
        let config = TrainConfig {
            epochs: 6,
            identities: 6,
            per_identity: 3,
            ..Default::default()
        };
        let (w0, i, o) = initial_weights(HeadInit::New { dim: 32 }, &[], 3);
        let before = validate(&data, &val, |x| {
            Head::new(w0.clone(), i, o, HeadInput::Embedding, true).apply(x)
        });
        let full = train(
            &data,
            &data,
            &tr,
            &val,
            &config,
            &LinearHead::new(w0.clone(), i, o).unwrap(),
            None,
            Checkpoint::fresh(w0.clone()),
            |_| {},
        )
        .unwrap();
        assert_eq!(full.logs.len(), 6);
        assert!(full.logs[5].loss < full.logs[0].loss, "{:?}", full.logs);
        let after = full
            .logs
            .iter()
            .filter_map(|l| l.validation)
            .map(|v| v.accuracy)
            .fold(0.0, f64::max);
        assert!(after >= before.accuracy, "{after} < {}", before.accuracy);
        // 3 epochs, checkpoint, 3 more: identical to 6 in one go.
        let short = TrainConfig {
            epochs: 3,
            ..config.clone()
        };
        let half = train(
            &data,
            &data,
            &tr,
            &val,
            &short,
            &LinearHead::new(w0.clone(), i, o).unwrap(),
            None,
            Checkpoint::fresh(w0.clone()),
            |_| {},
        )
        .unwrap();
        let bytes = half.checkpoint.to_bytes(&BTreeMap::new()).unwrap();
        let (ck, _) = Checkpoint::from_bytes(&bytes, "ck").unwrap();
        let rest = train(
            &data,
            &data,
            &tr,
            &val,
            &config,
            &LinearHead::new(w0.clone(), i, o).unwrap(),
            None,
            ck,
            |_| {},
        )
        .unwrap();
        assert_eq!(rest.checkpoint.weight, full.checkpoint.weight);
        assert_eq!(rest.best_weights, full.best_weights);
    }
}
