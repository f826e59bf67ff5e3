//! Command-line definitions (clap) and one small driver per subcommand. No model or maths code
//! lives here: drivers loop over inputs, call the library and hand results to a writer.

mod about;
mod align;
#[cfg(target_os = "linux")]
pub mod alloc;
mod cluster;
mod detect;
mod embed;
mod help;
mod identify;
mod output;
mod parse;
mod people;
mod plot;
mod runner;
mod shell;
mod sweep;
mod train;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// What `facekit --help` and the man page's DESCRIPTION say beyond the one-line summary.
const LONG_ABOUT: &str = "Face detection (MTCNN or YuNet), alignment and 128-d embeddings \
(dlib's ResNet) for photos at the shell: verify two photos, sweep the decision threshold over \
labeled photos, cluster an album into one folder per person, know people and identify them. \
Weights are compiled in; nothing is downloaded at run time. Every run keeps going past a bad \
file (named on stderr, exit code 2) and never modifies or deletes your photos unless asked.";

/// facekit: fast face detection and recognition, one static binary, no downloads at run time.
#[derive(Parser)]
#[command(name = "facekit", version, about, long_about = LONG_ABOUT, after_help = help::after_help(""))]
#[command(disable_version_flag = true)]
struct Cli {
    /// Print the version (--version: also the models and their SHA-256, the build, the CPU).
    #[arg(short = 'V', long, action = clap::ArgAction::Version)]
    version: Option<bool>,
    /// No progress bars and no notes on stderr (errors and warnings are still printed).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Say on stderr what the run uses: device, CPU kernels, threads, models, face library.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Where the networks run: cpu, cuda or cuda:N (default: the CPU, or in a CUDA build the
    /// first GPU when there is one). Asking for a GPU that this build or machine lacks is an
    /// error, never a silent fallback to the CPU.
    #[arg(long, global = true, value_name = "DEVICE", value_parser = parse::device)]
    device: Option<facekit::device::DeviceSpec>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Detect faces (MTCNN): boxes, scores and 5 landmarks per face.
    #[command(after_help = help::after_help("detect"))]
    Detect(detect::DetectArgs),
    /// Cut aligned face chips (PNG, `<stem>_<k>.png`) for every face.
    #[command(after_help = help::after_help("align"))]
    Align(align::AlignArgs),
    /// One embedding per face (JSON Lines, CSV or .npy).
    #[command(after_help = help::after_help("embed"))]
    Embed(embed::EmbedArgs),
    /// Same person? Compares the main face of two photos (exit 0 same, 1 different, 2 error).
    #[command(after_help = help::after_help("verify"))]
    Verify(verify::VerifyArgs),
    /// Which threshold? Accuracy, ROC, EER and the LFW k-fold protocol over labeled photos.
    #[command(after_help = help::after_help("threshold-sweep"))]
    ThresholdSweep(sweep::SweepArgs),
    /// An album into one folder per person (copy, link or move; never overwrites).
    #[command(after_help = help::after_help("cluster"))]
    Cluster(cluster::ClusterArgs),
    /// Who is in these photos? Every face against the people of the face library.
    #[command(after_help = help::after_help("identify"))]
    Identify(identify::IdentifyArgs),
    /// The people you know: add, import, list, rename, merge, remove, assign faces.
    #[command(after_help = help::after_help("people"))]
    People(people::PeopleArgs),
    /// Fine-tune the embedding (triplet / contrastive / hinge loss) on your labeled photos.
    #[command(after_help = help::after_help("train"))]
    Train(train::TrainArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    #[command(after_help = help::after_help("completions"))]
    Completions(shell::CompletionsArgs),
    /// Print the man page (roff) to stdout: facekit's, or a subcommand's.
    #[command(after_help = help::after_help("man"))]
    Man(shell::ManArgs),
}

/// Options shared by every subcommand that runs networks.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Directory with the model weights (default: $FACEKIT_MODELS, else the embedded copies).
    #[arg(long, value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// Refuse images with more pixels than this (decoding is skipped).
    #[arg(long, value_name = "N", default_value_t = facekit::io::DEFAULT_MAX_PIXELS, value_parser = parse::at_least_one_u64)]
    pub max_pixels: u64,
    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N", value_parser = parse::at_least_one)]
    pub threads: Option<usize>,
    /// The face detector.
    #[arg(long, value_enum, default_value_t = DetectorArg::Mtcnn)]
    pub detector: DetectorArg,
    /// Keep only faces whose detection score is at least S (the detector's final threshold;
    /// default 0.70 for both detectors; e.g. 0.95 drops doubtful faces before they are embedded).
    #[arg(long = "min-score", value_name = "S", value_parser = parse::unit_f32)]
    pub min_score: Option<f32>,
    /// How dlib's ResNet computes: `exact` (fp32, as dlib) or `fast` (Winograd 3x3
    /// convolutions; embeddings within 0.0001 of exact). The face library keeps the two apart.
    #[arg(long, value_enum, default_value_t = PrecisionArg::Exact)]
    pub precision: PrecisionArg,
}

/// `--precision` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    /// Direct fp32 convolutions (dlib's arithmetic).
    Exact,
    /// Winograd's minimal filtering for the 3x3 convolutions.
    Fast,
}

impl From<PrecisionArg> for facekit::Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::Exact => facekit::Precision::Exact,
            PrecisionArg::Fast => facekit::Precision::Fast,
        }
    }
}

/// Face detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DetectorArg {
    /// MTCNN (numerically identical to facenet-pytorch).
    Mtcnn,
    /// YuNet (libfacedetection): more faces found, fewer false ones, faster on large photos.
    Yunet,
}

impl CommonArgs {
    /// The detector settings these options ask for, searching faces down to `min_face` pixels
    /// (`None`: automatic, see `facekit::detect::WORKING_SIZE`).
    pub fn detector_config(&self, min_face: Option<f64>) -> facekit::DetectorConfig {
        facekit::DetectorConfig {
            kind: match self.detector {
                DetectorArg::Mtcnn => facekit::detect::DetectorKind::Mtcnn,
                DetectorArg::Yunet => facekit::detect::DetectorKind::YuNet,
            },
            min_face,
            ..Default::default()
        }
        .with_min_score(self.min_score)
    }
}

/// The smallest face to search for (subcommands that detect, except `cluster`, whose
/// `--min-face` is about which faces are clustered).
#[derive(Args, Debug, Clone)]
pub struct FaceSizeArgs {
    /// Smallest face to search for, in pixels of the original photo (default: 20 px, or on
    /// photos larger than 2048 px the same fraction of the photo, ~1 % of its long side).
    #[arg(long = "min-face", value_name = "PX", value_parser = parse::positive_f64)]
    pub min_face: Option<f64>,
}

/// Options of every subcommand that computes embeddings.
#[derive(Args, Debug, Clone)]
pub struct EmbeddingArgs {
    /// A trained model from `facekit train`: a head on dlib's ResNet, or a network trained
    /// from scratch with --arch (default: dlib's ResNet as published).
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Do not average each embedding with its mirror image's.
    #[arg(long)]
    pub no_flip: bool,
}

impl EmbeddingArgs {
    /// The pipeline these options and `common` ask for.
    pub fn pipeline(
        &self,
        common: &CommonArgs,
        min_face: Option<f64>,
    ) -> anyhow::Result<facekit::Pipeline> {
        use anyhow::Context;
        use facekit::embed::TrainedModel;
        let (head, net) = match &self.model {
            Some(path) => match TrainedModel::load(path)? {
                TrainedModel::Head(h) => (Some(std::sync::Arc::new(h)), None),
                TrainedModel::Net(n) => (None, Some(n)),
            },
            None => (None, None),
        };
        let config = facekit::PipelineConfig {
            flip: !self.no_flip,
            head,
            detector: common.detector_config(min_face),
            precision: common.precision.into(),
            ..Default::default()
        };
        let source = facekit::models::ModelSource::resolve(common.models.as_deref());
        let mut builder = facekit::Pipeline::builder().models(&source).config(config);
        if let Some(net) = net {
            builder = builder.embedder(net);
        }
        let pipeline = builder.build().context("cannot load the models")?;
        about::verbose_pipeline(&source, &pipeline);
        Ok(pipeline)
    }
}

/// Where the face library is (subcommands that detect and embed photos keep their results
/// there, so a photo is never analysed twice by the same pipeline).
#[derive(Args, Debug, Clone)]
pub struct LibraryArgs {
    /// The face library (default: $FACEKIT_LIBRARY, else $XDG_DATA_HOME/facekit/library.db,
    /// else ~/.local/share/facekit/library.db).
    #[arg(long, value_name = "FILE")]
    pub library: Option<PathBuf>,
    /// Neither read nor write the library: detect and embed everything again.
    #[arg(long)]
    pub no_cache: bool,
    /// Older spelling: the library is DIR/library.db (and DIR's old embedding caches are
    /// imported into it).
    #[arg(long, value_name = "DIR", hide = true)]
    pub cache_dir: Option<PathBuf>,
}

impl LibraryArgs {
    /// The library to use: in memory with --no-cache. When the default location cannot be
    /// used, a warning and an in-memory library (an explicit --library must work).
    pub fn open(&self) -> anyhow::Result<facekit::library::Library> {
        let library = self.open_any()?;
        about::verbose_library(&library);
        Ok(library)
    }

    /// [`LibraryArgs::open`] without the `-v` line.
    fn open_any(&self) -> anyhow::Result<facekit::library::Library> {
        use facekit::library::Library;
        if self.no_cache {
            return Ok(Library::in_memory()?);
        }
        if let Some(dir) = &self.cache_dir {
            let path = dir.join(facekit::library::FILE_NAME);
            return Ok(Library::open_with(&path, Some(dir.clone()))?);
        }
        if let Some(path) = &self.library {
            return Ok(Library::open(path)?);
        }
        match Library::default_path() {
            Some(path) => match Library::open(&path) {
                Ok(lib) => Ok(lib),
                Err(e) => {
                    eprintln!("facekit: warning: {e}; results are not kept (pass --library FILE)");
                    Ok(Library::in_memory()?)
                }
            },
            None => {
                eprintln!(
                    "facekit: warning: no place for the face library (set FACEKIT_LIBRARY or \
                     HOME, or pass --library FILE); results are not kept"
                );
                Ok(Library::in_memory()?)
            }
        }
    }

    /// The library a people/identify command works on: never in memory.
    pub fn open_persistent(&self) -> anyhow::Result<facekit::library::Library> {
        let library = self.open_file()?;
        about::verbose_library(&library);
        Ok(library)
    }

    /// [`LibraryArgs::open_persistent`] without the `-v` line.
    fn open_file(&self) -> anyhow::Result<facekit::library::Library> {
        use facekit::library::Library;
        if self.no_cache {
            anyhow::bail!("--no-cache: this command needs the library");
        }
        if let Some(dir) = &self.cache_dir {
            let path = dir.join(facekit::library::FILE_NAME);
            return Ok(Library::open_with(&path, Some(dir.clone()))?);
        }
        let path = match &self.library {
            Some(p) => p.clone(),
            None => Library::default_path().ok_or_else(|| {
                anyhow::anyhow!("no place for the face library: set FACEKIT_LIBRARY or HOME, or pass --library FILE")
            })?,
        };
        Ok(Library::open(&path)?)
    }
}

/// Exit status: 0 when every input was processed, 2 when any failed (or the run could not start).
pub const EXIT_FAILURE: u8 = 2;

/// Parses the command line and runs the subcommand.
pub fn main() -> ExitCode {
    // Panics are caught at the per-file boundary and reported as that file's error; the default
    // hook's "thread panicked" text would only confuse (RUST_BACKTRACE=1 restores it).
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        std::panic::set_hook(Box::new(|_| {}));
    }
    let cli = parse();
    output::set_verbosity(if cli.quiet {
        output::Verbosity::Quiet
    } else if cli.verbose {
        output::Verbosity::Verbose
    } else {
        output::Verbosity::Normal
    });
    if let Some(spec) = cli.device {
        if let Err(e) = facekit::device::select(spec) {
            eprintln!("facekit: error: --device {spec}: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    }
    about::verbose_start();
    let result = std::panic::catch_unwind(|| run(cli)).unwrap_or_else(|payload| {
        Err(anyhow::anyhow!(
            "internal error: {} (please report this bug)",
            facekit::io::panic_message(&*payload)
        ))
    });
    output::flush_stdout();
    match result {
        Ok(code) => code,
        Err(e) => {
            let hint = e.downcast_ref::<facekit::Error>().map_or("", output::hint);
            eprintln!("facekit: error: {e:#}{hint}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Parses the command line (exits on usage errors, `--help` and `--version`). The long
/// `--version` text hashes the model files, so it is built only when `--version` is asked for.
fn parse() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut cmd = Cli::command();
    if args.iter().skip(1).any(|a| a == "--version") {
        cmd = cmd.long_version(about::long_version());
    }
    let matches = cmd.get_matches_from(args);
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Detect(args) => detect::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Align(args) => align::run(args),
        Command::Embed(args) => embed::run(args),
        Command::ThresholdSweep(args) => sweep::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Train(args) => train::run(args),
        Command::People(args) => people::run(args),
        Command::Identify(args) => identify::run(args),
        Command::Completions(args) => shell::completions(args),
        Command::Man(args) => shell::man(args),
    }
}
