//! `facekit train DATA --out MODEL.safetensors`: fine-tune an embedding head on a labeled folder
//! (triplet, contrastive or dlib's hinge loss); the result loads with `--model` everywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use facekit::embed::head::{Head, HeadInput};
use facekit::embed::{DlibEmbedder, Output};
use facekit::io::LoadOptions;
use facekit::models::ModelSource;
use facekit::train::{self, Checkpoint, HeadInit, LossKind, Mining, TrainConfig, Validation};
use facekit::{FacePolicy, Pipeline, PipelineConfig};
use serde::Serialize;

use super::output::display_path;
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
    /// The last residual stage and the head.
    LastStage,
    /// Every layer.
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
    #[arg(long)]
    margin: Option<f64>,
    /// Identities per batch (P).
    #[arg(long, value_name = "P", default_value_t = 16)]
    identities: usize,
    /// Images per identity per batch (K).
    #[arg(long, value_name = "K", default_value_t = 4)]
    per_identity: usize,
    /// Epochs.
    #[arg(long, value_name = "N", default_value_t = 20)]
    epochs: usize,
    /// AdamW learning rate (default: 1e-4 fine-tuning the pretrained head, 1e-3 for a new one).
    #[arg(long)]
    lr: Option<f64>,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    /// Which layers train.
    #[arg(long, value_enum, default_value_t = LayersArg::Head)]
    train_layers: LayersArg,
    /// Start from dlib's final layer, or a new projection.
    #[arg(long, value_enum, default_value_t = HeadArg::Pretrained)]
    head: HeadArg,
    /// Output size of a new head.
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Leave out identities with fewer photos than this.
    #[arg(long, value_name = "N", default_value_t = 1)]
    min_images: usize,
    /// Fraction of identities held out for validation.
    #[arg(long, default_value_t = 0.2)]
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
    cache: super::CacheArgs,
    /// Do not average each face's features with its mirror image's.
    #[arg(long)]
    no_flip: bool,
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
    if args.train_layers != LayersArg::Head {
        bail!(
            "--train-layers {:?} is not available yet: facekit trains the head on frozen, cached \
             backbone features (--train-layers head)",
            args.train_layers
        );
    }
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
                HeadInput::Pooled => Output::Pooled,
                HeadInput::Embedding => Output::Embedding,
            },
            ..Default::default()
        },
    )
    .context("cannot load the models")?;
    let cache = args.cache.open(&pipeline)?;
    let opts = LoadOptions {
        max_pixels: args.common.max_pixels,
        ..Default::default()
    };
    let policy = match args.face_select {
        super::sweep::FaceSelect::Center => FacePolicy::Center,
        super::sweep::FaceSelect::Largest => FacePolicy::Largest,
    };
    if !args.data.is_dir() {
        bail!(
            "{}: not a folder of identity subfolders",
            args.data.display()
        );
    }
    let pool = thread_pool(args.common.threads)?;
    let n_images = facekit::io::collect_inputs(std::slice::from_ref(&args.data)).len();
    let pb = progress(n_images, "faces");
    let loaded = pool.install(|| {
        train::load_dataset(
            &args.data,
            &pipeline,
            &cache,
            &opts,
            policy,
            args.min_images,
            || pb.inc(1),
        )
    })?;
    pb.finish_and_clear();
    for e in &loaded.failed {
        eprintln!("facekit: {e}");
    }
    for p in &loaded.no_face {
        eprintln!("facekit: {}: no face found; left out", display_path(p));
    }
    let data = &loaded.dataset;
    let (train_rows, val_rows) = data.split(args.val_split, args.seed);
    let ids = |rows: &[usize]| {
        rows.iter()
            .map(|&i| data.labels[i])
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };

    // Starting point: fresh, or a checkpoint.
    let fc = DlibEmbedder::new(&source)?.fc_weight()?;
    let (w0, in_dim, out_dim) = train::initial_weights(init, &fc, args.seed);
    let start_state = match &args.resume {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
            let (ck, meta) = Checkpoint::from_bytes(&bytes, &path.display().to_string())?;
            if ck.weight.len() != w0.len() {
                bail!(
                    "{}: the checkpoint's head has {} weights, these settings need {}",
                    path.display(),
                    ck.weight.len(),
                    w0.len()
                );
            }
            if meta.get("head").map(String::as_str) != Some(head_name(init).as_str()) {
                bail!(
                    "{}: the checkpoint was trained with another --head/--dim",
                    path.display()
                );
            }
            ck
        }
        None => Checkpoint::fresh(w0.clone()),
    };
    let input = init.input();
    let normalize = config.normalize();
    let has_val = !val_rows.is_empty();
    let base = has_val.then(|| match input {
        // dlib's embedding as published.
        HeadInput::Pooled => {
            let dlib = Head::new(fc.clone(), in_dim, out_dim, input, false);
            train::validate(data, &val_rows, |x| dlib.apply(x))
        }
        HeadInput::Embedding => train::validate(data, &val_rows, |x| x.to_vec()),
    });
    let before = has_val.then(|| {
        let h = Head::new(
            start_state.weight.clone(),
            in_dim,
            out_dim,
            input,
            normalize,
        );
        train::validate(data, &val_rows, |x| h.apply(x))
    });
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
        input,
        in_dim,
        out_dim,
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

    // The saved head: the best checkpoint, its threshold calibrated on validation (or on the
    // training identities without a validation split).
    let mut head = trained.best.clone();
    let rows = if has_val { &val_rows } else { &train_rows };
    let best = train::validate(data, rows, |x| head.apply(x));
    head.threshold = Some(best.threshold);
    let mut settings = BTreeMap::new();
    settings.insert("head".to_string(), head_name(init));
    settings.insert("train_layers".into(), "head".into());
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
    let ck_bytes = trained.checkpoint.to_bytes((out_dim, in_dim), &settings)?;
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
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("validation accuracy (10-fold on held-out identities):");
        println!("  base model (dlib ResNet)   {}", pct(base));
        println!("  head before training       {}", pct(before));
        println!(
            "  best head (epoch {:>3})      {}",
            trained.best_epoch,
            pct(has_val.then_some(best))
        );
        println!(
            "wrote {} (threshold {:.4}) and {}",
            display_path(&args.out),
            best.threshold,
            display_path(&ckpt_path)
        );
        println!(
            "use it: facekit verify --model {} a.jpg b.jpg",
            display_path(&args.out)
        );
    }
    Ok(super::runner::exit_status(loaded.failed.len()))
}

fn head_name(init: HeadInit) -> String {
    match init {
        HeadInit::Pretrained => "pretrained-fc".into(),
        HeadInit::New { dim } => format!("new-projection-{dim}"),
    }
}
