//! `facekit train DATA --out MODEL.safetensors`: fine-tune an embedding head on a labeled folder
//! (triplet, contrastive or dlib's hinge loss); the result loads with `--model` everywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use facekit::embed::dlib_resnet::{DIM, FEATURES};
use facekit::embed::head::{Head, HeadInput};
use facekit::embed::{DlibEmbedder, Output};
use facekit::io::LoadOptions;
use facekit::models::ModelSource;
use facekit::train::stage::{self, Stage};
use facekit::train::{
    self, Checkpoint, HeadInit, LinearHead, LossKind, Mining, TrainConfig, Trainable, Validation,
};
use facekit::{FacePolicy, Pipeline, PipelineConfig};
use serde::Serialize;

use super::output::{display_path, outln};
use super::runner::{progress, thread_pool};
use super::CommonArgs;

/// Losses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LossArg {
    /// FaceNet's triplet loss on L2-normalised embeddings (default margin 0.2).
    Triplet,
    /// Siamese contrastive loss on L2-normalised embeddings (default margin 1.0).
    Contrastive,
    /// dlib's pairwise hinge loss on raw distances: threshold 0.6, margin 0.04.
    Hinge,
}

/// Triplet mining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MiningArg {
    /// Negatives farther than the positive but inside the margin (FaceNet).
    SemiHard,
    /// Hardest positive and hardest negative per anchor.
    BatchHard,
    /// Every triplet with a positive loss.
    All,
}

/// Which layers train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LayersArg {
    /// The head only, on frozen cached backbone features (minutes on a CPU).
    Head,
    /// The four 256-channel residual blocks and dlib's final layer (needs --head pretrained).
    LastStage,
    /// Every layer (not available yet: see the error).
    All,
}

/// The head to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HeadArg {
    /// dlib's own final layer (256 -> 128), from its pretrained weights.
    Pretrained,
    /// A new random projection of the 128-d embedding to --dim values.
    New,
}

/// Arguments of `facekit train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Labeled photos: one subfolder per identity.
    #[arg(value_name = "DATA")]
    data: PathBuf,
    /// The trained model (best checkpoint by validation); the training state goes beside it as
    /// <stem>.ckpt.safetensors.
    #[arg(long, value_name = "MODEL.safetensors")]
    out: PathBuf,
    /// Loss.
    #[arg(long, value_enum, default_value_t = LossArg::Triplet)]
    loss: LossArg,
    /// Triplet mining.
    #[arg(long, value_enum, default_value_t = MiningArg::SemiHard)]
    mining: MiningArg,
    /// Margin (default: 0.2 triplet, 1.0 contrastive, 0.04 hinge).
    #[arg(long, value_parser = super::parse::non_negative_f64)]
    margin: Option<f64>,
    /// Identities per batch (P).
    #[arg(long, value_name = "P", default_value_t = 16, value_parser = super::parse::at_least_one)]
    identities: usize,
    /// Images per identity per batch (K).
    #[arg(long, value_name = "K", default_value_t = 4, value_parser = super::parse::at_least_one)]
    per_identity: usize,
    /// Epochs.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = super::parse::at_least_one)]
    epochs: usize,
    /// AdamW learning rate (default: 1e-4 fine-tuning the pretrained head, 1e-3 for a new one).
    #[arg(long, value_parser = super::parse::positive_f64)]
    lr: Option<f64>,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 1e-4, value_parser = super::parse::non_negative_f64)]
    weight_decay: f64,
    /// Which layers train.
    #[arg(long, value_enum, default_value_t = LayersArg::Head)]
    train_layers: LayersArg,
    /// Start from dlib's final layer, or a new projection.
    #[arg(long, value_enum, default_value_t = HeadArg::Pretrained)]
    head: HeadArg,
    /// Output size of a new head.
    #[arg(long, default_value_t = 64, value_parser = super::parse::at_least_one)]
    dim: usize,
    /// Leave out identities with fewer photos than this.
    #[arg(long, value_name = "N", default_value_t = 1)]
    min_images: usize,
    /// Fraction of identities held out for validation.
    #[arg(long, default_value_t = 0.2, value_parser = super::parse::fraction_f64)]
    val_split: f64,
    /// Seed (head initialisation, identity split, batches): same seed, same result.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue from a checkpoint (`<stem>.ckpt.safetensors`) up to --epochs.
    #[arg(long, value_name = "CKPT")]
    resume: Option<PathBuf>,
    /// Which face of each photo is used.
    #[arg(long, value_enum, default_value_t = super::sweep::FaceSelect::Center)]
    face_select: super::sweep::FaceSelect,
    /// Replace --out and its checkpoint if they exist.
    #[arg(long)]
    force: bool,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cache: super::LibraryArgs,
    /// Do not average each face's features with its mirror image's.
    #[arg(long)]
    no_flip: bool,
    #[command(flatten)]
    faces: super::FaceSizeArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Serialize)]
struct Summary<'a> {
    out: String,
    checkpoint: String,
    images: usize,
    faces: usize,
    no_face: usize,
    failed: usize,
    identities: usize,
    train_identities: usize,
    val_identities: usize,
    base: Option<Validation>,
    before: Option<Validation>,
    best: Option<Validation>,
    best_epoch: usize,
    threshold: Option<f32>,
    epochs: &'a [train::EpochLog],
    seconds: f64,
}

/// `MODEL.safetensors` -> `MODEL.ckpt.safetensors`.
fn checkpoint_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    out.with_file_name(format!("{stem}.ckpt.safetensors"))
}

fn pct(v: Option<Validation>) -> String {
    v.map_or("-".into(), |v| {
        format!("{:.2} % (AUC {:.4})", 100.0 * v.accuracy, v.auc)
    })
}

/// Runs `facekit train`.
pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let stage = match args.train_layers {
        LayersArg::Head => false,
        LayersArg::LastStage if args.head == HeadArg::Pretrained => true,
        LayersArg::LastStage => {
            bail!("--train-layers last-stage trains dlib's own final layer: use --head pretrained")
        }
        LayersArg::All => bail!(
            "--train-layers all is not available yet: candle has no backward pass for the \
             ResNet's first 3x3/2 max-pool (kernel != stride); use last-stage (the four \
             256-channel blocks and the final layer) or head"
        ),
    };
    if !(0.0..1.0).contains(&args.val_split) {
        bail!("--val-split must be in [0, 1)");
    }
    let ckpt_path = checkpoint_path(&args.out);
    for p in [&args.out, &ckpt_path] {
        if p.exists() && !args.force && args.resume.as_deref() != Some(p.as_path()) {
            bail!(
                "{}: already exists (use --force to replace it)",
                p.display()
            );
        }
    }
    let loss = match args.loss {
        LossArg::Triplet => LossKind::Triplet {
            mining: match args.mining {
                MiningArg::SemiHard => Mining::SemiHard,
                MiningArg::BatchHard => Mining::BatchHard,
                MiningArg::All => Mining::All,
            },
            margin: args.margin.unwrap_or(0.2),
        },
        LossArg::Contrastive => LossKind::Contrastive {
            margin: args.margin.unwrap_or(1.0),
        },
        LossArg::Hinge => LossKind::Hinge {
            threshold: facekit::pipeline::DEFAULT_THRESHOLD as f64,
            margin: args.margin.unwrap_or(0.04),
        },
    };
    let config = TrainConfig {
        loss,
        identities: args.identities,
        per_identity: args.per_identity,
        epochs: args.epochs,
        lr: args.lr.unwrap_or(match args.head {
            HeadArg::Pretrained => 1e-4,
            HeadArg::New => 1e-3,
        }),
        weight_decay: args.weight_decay,
        seed: args.seed,
    };
    let init = match args.head {
        HeadArg::Pretrained => HeadInit::Pretrained,
        HeadArg::New => {
            if args.dim == 0 {
                bail!("--dim must be at least 1");
            }
            HeadInit::New { dim: args.dim }
        }
    };

    // Features of every face, cached by content (the backbone is frozen).
    let source = ModelSource::resolve(args.common.models.as_deref());
    let pipeline = Pipeline::with_models(
        &source,
        PipelineConfig {
            flip: !args.no_flip,
            output: match init.input() {
                // The last stage starts from the chips: the cache only supplies the faces.
                HeadInput::Pooled if !stage => Output::Pooled,
                _ => Output::Embedding,
            },
            detector: args.common.detector_config(args.faces.min_face),
            ..Default::default()
        },
    )
    .context("cannot load the models")?;
    let cache = args.cache.open()?;
    let opts = LoadOptions {
        max_pixels: args.common.max_pixels,
        ..Default::default()
    };
    let policy = FacePolicy::from(args.face_select);
    if !args.data.is_dir() {
        bail!(
            "{}: not a folder of identity subfolders",
            args.data.display()
        );
    }
    let pool = thread_pool(args.common.threads)?;
    let (images, unreadable) = train::labeled_images(&args.data, args.min_images);
    let n_images = images.len();
    let pb = progress(n_images, "faces");
    let mut loaded = pool.install(|| {
        train::load_dataset(&args.data, images, &pipeline, &cache, &opts, policy, || {
            pb.inc(1)
        })
    })?;
    pb.finish_and_clear();
    loaded.failed.extend(unreadable);
    for e in &loaded.failed {
        eprintln!("facekit: {e}");
    }
    for p in &loaded.no_face {
        eprintln!("facekit: {}: no face found; left out", display_path(p));
    }
    // dlib's network: the frozen part for the last stage, and its final layer.
    let dlib = DlibEmbedder::new(&source)?;
    if stage {
        // The frozen blocks 0-9 run once per face (and its mirror); their output is the row.
        let flip = !args.no_flip;
        let pb = progress(loaded.paths.len(), "stage inputs");
        let rows: Vec<Vec<f32>> = pool.install(|| {
            use rayon::prelude::*;
            loaded
                .paths
                .par_iter()
                .zip(&loaded.faces)
                .map(|(path, det)| -> facekit::Result<Vec<f32>> {
                    let r = facekit::nn::serial(|| {
                        let img = facekit::io::load_image(path, &opts)?;
                        let chip = pipeline.chip(&img, det);
                        let mut chips = vec![chip.clone()];
                        if flip {
                            chips.push(image::imageops::flip_horizontal(&chip));
                        }
                        Ok(dlib.prefix(&chips, stage::FIRST_BLOCK)?.concat())
                    });
                    pb.inc(1);
                    r
                })
                .collect::<facekit::Result<Vec<_>>>()
        })?;
        pb.finish_and_clear();
        loaded.dataset.dim = rows.first().map_or(0, Vec::len);
        loaded.dataset.features = rows.concat();
    }
    let data = &loaded.dataset;
    let (train_rows, val_rows) = data.split(args.val_split, args.seed);
    let ids = |rows: &[usize]| {
        rows.iter()
            .map(|&i| data.labels[i])
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };

    // The model and its starting point: fresh, or a checkpoint.
    let input = init.input();
    let normalize = config.normalize();
    let fc = dlib.fc_weight()?;
    let model = if stage {
        Model::Stage(Stage::pretrained(&source, !args.no_flip)?)
    } else {
        let (w0, in_dim, out_dim) = train::initial_weights(init, &fc, args.seed);
        Model::Head {
            head: LinearHead::new(w0, in_dim, out_dim)?,
            in_dim,
            out_dim,
        }
    };
    let w0 = train::flat_weights(model.trainable())?;
    let has_val = !val_rows.is_empty();
    // dlib's embedding as published: the pretrained model without normalisation.
    let base = if !has_val {
        None
    } else if input == HeadInput::Embedding {
        Some(train::validate(data, &val_rows, |x| x.to_vec()))
    } else if stage {
        let emb = train::embed_rows(model.trainable(), data, &val_rows, false)?;
        Some(train::validate_embeddings(
            &emb,
            &labels_of(data, &val_rows),
        ))
    } else {
        let dlib = Head::new(fc.clone(), FEATURES, DIM, input, false);
        Some(train::validate(data, &val_rows, |x| dlib.apply(x)))
    };
    let start_state = match &args.resume {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
            let (ck, meta) = Checkpoint::from_bytes(&bytes, &path.display().to_string())?;
            if ck.weight.len() != w0.len() {
                bail!(
                    "{}: the checkpoint holds {} weights, these settings need {}",
                    path.display(),
                    ck.weight.len(),
                    w0.len()
                );
            }
            if meta.get("head").map(String::as_str) != Some(head_name(init).as_str())
                || meta.get("train_layers").map(String::as_str) != Some(layers_name(stage))
            {
                bail!(
                    "{}: the checkpoint was trained with another --head/--dim/--train-layers",
                    path.display()
                );
            }
            ck
        }
        None => Checkpoint::fresh(w0.clone()),
    };
    train::set_weights(model.trainable(), &start_state.weight)?;
    let before = if has_val {
        let emb = train::embed_rows(model.trainable(), data, &val_rows, normalize)?;
        Some(train::validate_embeddings(
            &emb,
            &labels_of(data, &val_rows),
        ))
    } else {
        None
    };
    if !args.json {
        eprintln!(
            "{} faces of {} identities ({} train, {} validation); base model {}; before training {}",
            data.len(),
            data.identities.len(),
            ids(&train_rows),
            ids(&val_rows),
            pct(base),
            pct(before)
        );
    }
    let trained = train::train(
        data,
        &train_rows,
        &val_rows,
        &config,
        model.trainable(),
        start_state,
        |log| {
            if !args.json {
                eprintln!(
                    "epoch {:>3}/{}  loss {:.5}  active {:>5.1} %  validation {}",
                    log.epoch,
                    config.epochs,
                    log.loss,
                    100.0 * log.active,
                    pct(log.validation)
                );
            }
        },
    )?;

    // The saved model: the best checkpoint, its threshold calibrated on validation (or on the
    // training identities without a validation split).
    train::set_weights(model.trainable(), &trained.best_weights)?;
    let rows = if has_val { &val_rows } else { &train_rows };
    let emb = train::embed_rows(model.trainable(), data, rows, normalize)?;
    let best = train::validate_embeddings(&emb, &labels_of(data, rows));
    let mut head = match &model {
        // The model holds the best weights now (set above).
        Model::Stage(st) => {
            let mut h = Head::new(st.fc_weight()?, FEATURES, DIM, HeadInput::Pooled, normalize);
            h.backbone = st.backbone_tensors()?;
            h
        }
        Model::Head {
            in_dim, out_dim, ..
        } => Head::new(
            trained.best_weights.clone(),
            *in_dim,
            *out_dim,
            input,
            normalize,
        ),
    };
    head.threshold = Some(best.threshold);
    let mut settings = BTreeMap::new();
    settings.insert("head".to_string(), head_name(init));
    settings.insert("train_layers".into(), layers_name(stage).into());
    settings.insert("loss".into(), format!("{:?}", config.loss));
    settings.insert("identities_per_batch".into(), config.identities.to_string());
    settings.insert(
        "images_per_identity".into(),
        config.per_identity.to_string(),
    );
    settings.insert("epochs".into(), config.epochs.to_string());
    settings.insert("lr".into(), config.lr.to_string());
    settings.insert("weight_decay".into(), config.weight_decay.to_string());
    settings.insert("val_split".into(), args.val_split.to_string());
    settings.insert("min_images".into(), args.min_images.to_string());
    settings.insert("seed".into(), config.seed.to_string());
    settings.insert("flip".into(), (!args.no_flip).to_string());
    settings.insert("data".into(), display_path(&args.data));
    head.metadata = settings.clone();
    head.metadata
        .insert("best_epoch".into(), trained.best_epoch.to_string());
    head.metadata.insert(
        if has_val {
            "val_accuracy"
        } else {
            "train_accuracy"
        }
        .into(),
        best.accuracy.to_string(),
    );
    facekit::io::write_file_atomic(&args.out, &head.to_bytes()?, true)?;
    let ck_bytes = trained.checkpoint.to_bytes(&settings)?;
    facekit::io::write_file_atomic(&ckpt_path, &ck_bytes, true)?;

    let summary = Summary {
        out: display_path(&args.out),
        checkpoint: display_path(&ckpt_path),
        images: n_images,
        faces: data.len(),
        no_face: loaded.no_face.len(),
        failed: loaded.failed.len(),
        identities: data.identities.len(),
        train_identities: ids(&train_rows),
        val_identities: ids(&val_rows),
        base,
        before,
        best: has_val.then_some(best),
        best_epoch: trained.best_epoch,
        threshold: head.threshold,
        epochs: &trained.logs,
        seconds: start.elapsed().as_secs_f64(),
    };
    if args.json {
        outln!("{}", serde_json::to_string(&summary)?);
    } else {
        outln!("validation accuracy (10-fold on held-out identities):");
        outln!("  base model (dlib ResNet)   {}", pct(base));
        outln!("  head before training       {}", pct(before));
        outln!(
            "  best head (epoch {:>3})      {}",
            trained.best_epoch,
            pct(has_val.then_some(best))
        );
        outln!(
            "wrote {} (threshold {:.4}) and {}",
            display_path(&args.out),
            best.threshold,
            display_path(&ckpt_path)
        );
        outln!(
            "use it: facekit verify --model {} a.jpg b.jpg",
            display_path(&args.out)
        );
    }
    Ok(super::runner::exit_status(loaded.failed.len()))
}

/// What trains: a linear head on cached features, or the last stage of the ResNet.
enum Model {
    Head {
        head: LinearHead,
        in_dim: usize,
        out_dim: usize,
    },
    Stage(Stage),
}

impl Model {
    fn trainable(&self) -> &dyn Trainable {
        match self {
            Model::Head { head, .. } => head,
            Model::Stage(st) => st,
        }
    }
}

fn layers_name(stage: bool) -> &'static str {
    if stage {
        "last-stage"
    } else {
        "head"
    }
}

fn labels_of(data: &train::Dataset, rows: &[usize]) -> Vec<u32> {
    rows.iter().map(|&i| data.labels[i]).collect()
}

fn head_name(init: HeadInit) -> String {
    match init {
        HeadInit::Pretrained => "pretrained-fc".into(),
        HeadInit::New { dim } => format!("new-projection-{dim}"),
    }
}
