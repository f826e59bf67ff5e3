//! `facekit train DATA --out MODEL.safetensors`: fine-tune an embedding head, the last stage or
//! the whole ResNet on a labeled folder (triplet, contrastive, dlib's hinge, ArcFace or CosFace
//! loss); the result loads with `--model` everywhere.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, ValueEnum};
use facekit::io::LoadOptions;
use facekit::models::ModelSource;
use facekit::progress::Progress;
use facekit::train::{
    self, Calibration, HeadInit, Layers, LossKind, Mining, Ready, TrainConfig, TrainProgress,
    TrainReport, TrainSettings, Validation,
};
use facekit::FacePolicy;
use serde::Serialize;

use super::output::{display_path, note, outln, verbose};
use super::runner::Bars;
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
    /// ArcFace: softmax over the training identities with an additive angular margin
    /// (training only; default --margin-scale 30, --margin 0.3).
    Arcface,
    /// CosFace: softmax over the training identities with an additive cosine margin
    /// (training only; default --margin-scale 30, --margin 0.2; with --arch 16 and 0, the
    /// normalised softmax).
    Cosface,
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
    /// Every layer of the ResNet and dlib's final layer, on augmented chips (needs --head
    /// pretrained; about 0.4 s per face per epoch on 2 shared cores).
    All,
}

/// Augmentations of the training chips (`--train-layers all`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AugmentArg {
    /// A random mirror image.
    Mirror,
    /// Jitter of the alignment: scale +-5 %, rotation +-5 degrees, translation +-3 px.
    Jitter,
    /// Jitter of contrast (+-20 %) and brightness (+-20 levels).
    Color,
    /// All of the above (default).
    All,
    /// None.
    None,
}

/// Networks trained from scratch (`--arch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArchArg {
    /// ResNet-18's [2, 2, 2, 2] BasicBlocks at widths 32-64-128-256 on the centre 128 px of
    /// the chip, 128-d L2-normalised embedding (2.8 M weights).
    Resnet18Small,
    /// The same at widths 16-32-64-128 (0.7 M weights, ~4x fewer multiply-adds).
    Resnet18Tiny,
}

impl ArchArg {
    fn arch(self) -> facekit::train::arch::Arch {
        let name = match self {
            ArchArg::Resnet18Small => "resnet18-small",
            ArchArg::Resnet18Tiny => "resnet18-tiny",
        };
        // Every name here is one of facekit's architectures.
        facekit::train::arch::ARCHS
            .iter()
            .copied()
            .find(|a| a.name == name)
            .unwrap_or(facekit::train::arch::ARCHS[0])
    }
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
    /// Loss (default: triplet; arcface with --train-layers all, where triplet lowered accuracy;
    /// cosface with --margin 0 --margin-scale 16 with --arch, the recipe that learned from
    /// scratch).
    #[arg(long, value_enum)]
    loss: Option<LossArg>,
    /// Triplet mining.
    #[arg(long, value_enum, default_value_t = MiningArg::SemiHard)]
    mining: MiningArg,
    /// Margin (default: 0.2 triplet, 1.0 contrastive, 0.04 hinge, 0.3 arcface (radians),
    /// 0.2 cosface, 0 cosface with --arch).
    #[arg(long, value_parser = super::parse::non_negative_f64)]
    margin: Option<f64>,
    /// Logit scale s of arcface and cosface (default: 30; 16 for cosface with --arch).
    #[arg(long, value_name = "S", value_parser = super::parse::positive_f64)]
    margin_scale: Option<f64>,
    /// Identities per batch (P).
    #[arg(long, value_name = "P", default_value_t = 16, value_parser = super::parse::at_least_one)]
    identities: usize,
    /// Images per identity per batch (K).
    #[arg(long, value_name = "K", default_value_t = 4, value_parser = super::parse::at_least_one)]
    per_identity: usize,
    /// Epochs.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = super::parse::at_least_one)]
    epochs: usize,
    /// Batches per epoch (default: as many as cover the training faces once).
    #[arg(long, value_name = "N", value_parser = super::parse::at_least_one)]
    epoch_batches: Option<usize>,
    /// AdamW learning rate (default: 1e-4 fine-tuning the pretrained head or the last stage,
    /// 1e-3 for a new head, 1e-5 for all layers, 1e-3 for a network from scratch with --arch).
    #[arg(long, value_parser = super::parse::positive_f64)]
    lr: Option<f64>,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 1e-4, value_parser = super::parse::non_negative_f64)]
    weight_decay: f64,
    /// Which layers train (default: head; all with --arch).
    #[arg(long, value_enum)]
    train_layers: Option<LayersArg>,
    /// Train this network from scratch (random initialisation) instead of dlib's ResNet; every
    /// layer trains, on augmented chips (default: loss cosface with --margin 0 --margin-scale
    /// 16, learning rate 1e-3).
    #[arg(long, value_enum)]
    arch: Option<ArchArg>,
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
    /// Augmentations of the training chips with --train-layers all (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    augment: Vec<AugmentArg>,
    #[command(flatten)]
    faces: super::FaceSizeArgs,
    #[command(flatten)]
    common: CommonArgs,
}

/// The `--json` summary.
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
    /// What the threshold was calibrated on: `validation` or `training` identities.
    threshold_from: &'static str,
    threshold_identities: usize,
    threshold_pairs: usize,
    epochs: &'a [train::EpochLog],
    seconds: f64,
}

fn pct(v: Option<Validation>) -> String {
    v.map_or("-".into(), |v| {
        format!("{:.2} % (AUC {:.4})", 100.0 * v.accuracy, v.auc)
    })
}

/// Runs `facekit train`.
pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    // The device is --device's (opened, or refused with exit 2, before any subcommand runs) or
    // the default one; `TrainSettings::new` takes it.
    let settings = settings(&args)?;
    verbose!("training on {}", facekit::device::describe());
    let ckpt_path = train::checkpoint_path(&args.out);
    for p in [&args.out, &ckpt_path] {
        let replace = args.force || args.resume.as_deref() == Some(p.as_path());
        facekit::io::check_output_file(p, replace)?;
    }
    let cache = args.cache.open()?;
    if !args.data.is_dir() {
        bail!(
            "{}: not a folder of identity subfolders",
            args.data.display()
        );
    }
    let log = Log {
        bars: Bars::default(),
        json: args.json,
    };
    let report = train::run(&settings, &cache, &log)?;
    let basis = report.threshold_basis;
    if report.val_identities < train::MIN_RELIABLE_IDENTITIES {
        eprintln!(
            "facekit: warning: the calibrated threshold {:.4} rests on {} {} identities / {} \
             pairs{}: unreliable below {} validation identities (hold out more people with \
             --val-split, or measure it with threshold-sweep on more photos)",
            report.threshold,
            basis.identities,
            basis.from.name(),
            basis.pairs,
            if basis.from == Calibration::Training {
                " (no validation identities)"
            } else {
                ""
            },
            train::MIN_RELIABLE_IDENTITIES
        );
    }
    if args.json {
        outln!("{}", serde_json::to_string(&summary(&report))?);
    } else {
        print_text(&report);
    }
    Ok(super::runner::exit_status(report.failed.len()))
}

/// The training settings the arguments ask for (refusing combinations that cannot work).
fn settings(args: &TrainArgs) -> anyhow::Result<TrainSettings> {
    let layers = match args.train_layers.unwrap_or(if args.arch.is_some() {
        LayersArg::All
    } else {
        LayersArg::Head
    }) {
        _ if args.arch.is_some() && args.train_layers.is_some_and(|l| l != LayersArg::All) => {
            bail!("--arch trains a network from scratch: every layer trains (--train-layers all)")
        }
        LayersArg::All if args.arch.is_some() => Layers::All,
        LayersArg::Head => Layers::Head,
        LayersArg::LastStage if args.head == HeadArg::Pretrained => Layers::LastStage,
        LayersArg::LastStage => {
            bail!("--train-layers last-stage trains dlib's own final layer: use --head pretrained")
        }
        LayersArg::All if args.head == HeadArg::Pretrained => Layers::All,
        LayersArg::All => {
            bail!("--train-layers all trains dlib's own final layer: use --head pretrained")
        }
    };
    let mut augment = facekit::train::augment::Augment::NONE;
    for a in &args.augment {
        match a {
            AugmentArg::Mirror => augment.mirror = true,
            AugmentArg::Jitter => augment.jitter = true,
            AugmentArg::Color => augment.color = true,
            AugmentArg::All => augment = facekit::train::augment::Augment::ALL,
            AugmentArg::None if args.augment.len() > 1 => {
                bail!("--augment none cannot be combined with other augmentations")
            }
            AugmentArg::None => {}
        }
    }
    if !(0.0..1.0).contains(&args.val_split) {
        bail!("--val-split must be in [0, 1)");
    }
    // A network from scratch learns with the normalised softmax (CosFace without a margin, scale
    // 16); ArcFace (s 30, m 0.3) did not leave the plateau. Explicit flags still win.
    let scratch = args.arch.is_some();
    let loss = match args.loss.unwrap_or(if scratch {
        LossArg::Cosface
    } else if layers == Layers::All {
        LossArg::Arcface
    } else {
        LossArg::Triplet
    }) {
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
        LossArg::Arcface => LossKind::ArcFace {
            scale: args.margin_scale.unwrap_or(30.0),
            margin: args.margin.unwrap_or(0.3),
        },
        LossArg::Cosface if scratch => LossKind::CosFace {
            scale: args.margin_scale.unwrap_or(16.0),
            margin: args.margin.unwrap_or(0.0),
        },
        LossArg::Cosface => LossKind::CosFace {
            scale: args.margin_scale.unwrap_or(30.0),
            margin: args.margin.unwrap_or(0.2),
        },
    };
    let init = match args.head {
        HeadArg::Pretrained => HeadInit::Pretrained,
        HeadArg::New if args.dim == 0 => bail!("--dim must be at least 1"),
        HeadArg::New => HeadInit::New { dim: args.dim },
    };
    Ok(TrainSettings {
        config: TrainConfig {
            loss,
            identities: args.identities,
            per_identity: args.per_identity,
            epochs: args.epochs,
            epoch_batches: args.epoch_batches,
            lr: args.lr.unwrap_or(match (args.head, layers) {
                _ if args.arch.is_some() => 1e-3,
                (_, Layers::All) => 1e-5,
                (HeadArg::Pretrained, _) => 1e-4,
                (HeadArg::New, _) => 1e-3,
            }),
            weight_decay: args.weight_decay,
            seed: args.seed,
        },
        init,
        layers,
        arch: args.arch.map(ArchArg::arch),
        min_images: args.min_images,
        val_split: args.val_split,
        resume: args.resume.clone(),
        policy: FacePolicy::from(args.face_select),
        flip: !args.no_flip,
        augment,
        models: ModelSource::resolve(args.common.models.as_deref()),
        detector: args.common.detector_config(args.faces.min_face),
        load: LoadOptions {
            max_pixels: args.common.max_pixels,
            ..Default::default()
        },
        threads: args.common.threads,
        ..TrainSettings::new(&args.data, &args.out)
    })
}

/// The run's progress on stderr: bars, files left out, and (without `--json`) the data and
/// each epoch.
struct Log {
    bars: Bars,
    json: bool,
}

impl Progress for Log {
    fn start(&self, what: &str, len: usize) {
        self.bars.start(what, len);
    }

    fn step(&self) {
        self.bars.step();
    }

    fn finish(&self) {
        self.bars.finish();
    }
}

impl TrainProgress for Log {
    fn loaded(&self, failed: &[facekit::Error], no_face: &[PathBuf]) {
        for e in failed {
            super::output::report(e);
        }
        for p in no_face {
            note!("facekit: {}: no face found; left out", display_path(p));
        }
    }

    fn ready(&self, r: &Ready) {
        if !self.json {
            note!(
                "{} faces of {} identities ({} train, {} validation); base model {}; before training {}",
                r.faces,
                r.identities,
                r.train_identities,
                r.val_identities,
                pct(r.base),
                pct(r.before)
            );
        }
    }

    fn epoch(&self, log: &train::EpochLog, epochs: usize) {
        if !self.json {
            note!(
                "epoch {:>3}/{}  loss {:.5}  active {:>5.1} %  validation {}  ({:.0} s + {:.0} s)",
                log.epoch,
                epochs,
                log.loss,
                100.0 * log.active,
                pct(log.validation),
                log.seconds,
                log.validation_seconds
            );
        }
    }
}

fn summary(r: &TrainReport) -> Summary<'_> {
    Summary {
        out: display_path(&r.out),
        checkpoint: display_path(&r.checkpoint),
        images: r.images,
        faces: r.faces,
        no_face: r.no_face.len(),
        failed: r.failed.len(),
        identities: r.identities,
        train_identities: r.train_identities,
        val_identities: r.val_identities,
        base: r.base,
        before: r.before,
        best: r.best,
        best_epoch: r.best_epoch,
        threshold: Some(r.threshold),
        threshold_from: r.threshold_basis.from.name(),
        threshold_identities: r.threshold_basis.identities,
        threshold_pairs: r.threshold_basis.pairs,
        epochs: &r.epochs,
        seconds: r.seconds,
    }
}

/// The text summary.
fn print_text(r: &TrainReport) {
    outln!("validation accuracy (10-fold on held-out identities):");
    outln!("  base model (dlib ResNet)   {}", pct(r.base));
    outln!("  head before training       {}", pct(r.before));
    outln!(
        "  best head (epoch {:>3})      {}",
        r.best_epoch,
        pct(r.best)
    );
    outln!(
        "threshold {:.4} calibrated on {} {} identities ({} pairs)",
        r.threshold,
        r.threshold_basis.identities,
        r.threshold_basis.from.name(),
        r.threshold_basis.pairs
    );
    outln!(
        "wrote {} (threshold {:.4}) and {}",
        display_path(&r.out),
        r.threshold,
        display_path(&r.checkpoint)
    );
    outln!(
        "use it: facekit verify --model {} a.jpg b.jpg",
        display_path(&r.out)
    );
}
