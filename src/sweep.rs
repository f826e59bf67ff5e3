//! The pair protocols `facekit threshold-sweep` runs, as a workflow: read the protocol (a
//! labeled folder with its inferred identities, LFW's `pairs.txt` or a TSV pair list), embed
//! each image's face through the face library, score the pairs and measure every threshold
//! (accuracy, ROC, EER, TAR at FAR, k-fold), and name the hardest pairs. The pure pieces are
//! [`crate::pairs`] (parsing, labels, drawing pairs) and [`crate::metrics`] (the measures).
//!
//! ```no_run
//! use facekit::sweep::{self, Data, Protocol, ProtocolConfig, SweepConfig};
//! let pipeline = facekit::Pipeline::new()?;
//! let library = facekit::library::Library::in_memory()?;
//! let protocol = Protocol::load(&Data::Folder("people".into()), &ProtocolConfig::default())?;
//! let report = sweep::run(&protocol, &library, &pipeline, &SweepConfig::default(), &|| {})?;
//! println!("best threshold {:.4}: {:.2} %", report.best.threshold, 100.0 * report.best.accuracy);
//! # Ok::<(), facekit::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

use crate::distance::Metric;
use crate::io::{JsonPath, LoadOptions};
use crate::library::Library;
use crate::metrics::{self, Eer, KFold, RocPoint, Scored, Sweep, TarAtFar, ThresholdRow};
use crate::pairs::{self, LabelSource, Pair};
use crate::pipeline::{select_face, FacePolicy, Pipeline};
use crate::{Error, Result};

/// Where the labeled pairs come from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Data {
    /// A labeled folder: one subfolder per identity, or files named by identity plus digits.
    Folder(PathBuf),
    /// A pair list (LFW `pairs.txt` or TSV) whose paths are relative to `root`.
    PairsFile {
        /// The pairs file.
        file: PathBuf,
        /// The folder the pair paths are under.
        root: PathBuf,
    },
}

/// How the pairs are drawn and split into folds.
#[derive(Debug, Clone)]
pub struct ProtocolConfig {
    /// For a labeled folder, at most this many pairs (a seeded sample, up to half same).
    pub max_pairs: usize,
    /// Seed for pair sampling and fold assignment.
    pub seed: u64,
    /// Number of folds (`None`: `pairs.txt`'s own, else no k-fold protocol).
    pub folds: Option<usize>,
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        ProtocolConfig {
            max_pairs: 1_000_000,
            seed: 0,
            folds: None,
        }
    }
}

/// Which protocol the pairs follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ProtocolKind {
    /// LFW's `pairs.txt`.
    LfwPairs,
    /// A tab-separated pair list.
    TsvPairs,
    /// Every pair (or a sample) of a labeled folder.
    LabeledFolder,
}

impl ProtocolKind {
    /// The name used in reports (`lfw-pairs`, `tsv-pairs`, `labeled-folder`).
    pub fn name(self) -> &'static str {
        match self {
            ProtocolKind::LfwPairs => "lfw-pairs",
            ProtocolKind::TsvPairs => "tsv-pairs",
            ProtocolKind::LabeledFolder => "labeled-folder",
        }
    }
}

/// One identity inferred from a labeled folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The label.
    pub name: String,
    /// Photos with this label.
    pub photos: usize,
    /// Where the label came from.
    pub from: LabelSource,
}

/// How a labeled folder is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Layout {
    /// One subfolder per identity, no photos at the top level.
    Subfolders,
    /// Photos at the top level only, labeled by file name.
    FileNames,
    /// Identity subfolders plus loose photos at the top level (labeled by file name): usually
    /// scene or group photos that are not one identity each.
    Mixed,
}

/// The identities a labeled folder's layout implies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identities {
    /// The layout they were read from.
    pub layout: Layout,
    /// Every identity, by name.
    pub list: Vec<Identity>,
}

impl Identities {
    fn infer(labels: &[(String, LabelSource)]) -> Self {
        let mut by_name: BTreeMap<(&str, LabelSource), usize> = BTreeMap::new();
        for (name, from) in labels {
            *by_name.entry((name, *from)).or_default() += 1;
        }
        let list: Vec<Identity> = by_name
            .into_iter()
            .map(|((name, from), photos)| Identity {
                name: name.to_string(),
                photos,
                from,
            })
            .collect();
        let has = |s| list.iter().any(|i| i.from == s);
        let layout = match (has(LabelSource::Subfolder), has(LabelSource::FileName)) {
            (true, true) => Layout::Mixed,
            (false, true) => Layout::FileNames,
            _ => Layout::Subfolders,
        };
        Identities { layout, list }
    }

    /// Photos labeled by file name (the loose photos of a [`Layout::Mixed`] folder).
    pub fn loose_photos(&self) -> usize {
        self.list
            .iter()
            .filter(|i| i.from == LabelSource::FileName)
            .map(|i| i.photos)
            .sum()
    }
}

/// The pairs to score, as indices into the image list.
#[derive(Debug, Clone)]
pub struct Protocol {
    /// The protocol followed.
    pub kind: ProtocolKind,
    /// Distinct images.
    pub images: Vec<PathBuf>,
    /// (image a, image b, same person).
    pub pairs: Vec<(usize, usize, bool)>,
    /// Each pair's fold, when there is a k-fold protocol.
    pub folds: Option<Vec<usize>>,
    /// Number of folds.
    pub k: usize,
    /// When the pairs are a sample: how many same and different pairs exist.
    pub sampled_from: Option<(u64, u64)>,
    /// Entries of a labeled folder that could not be used.
    pub unusable: Vec<Error>,
    /// For a labeled folder, the identities inferred from its layout.
    pub identities: Option<Identities>,
}

impl Protocol {
    /// Reads the protocol `data` describes: parses a pairs file, or walks a labeled folder,
    /// infers each image's identity and draws the pairs.
    pub fn load(data: &Data, config: &ProtocolConfig) -> Result<Self> {
        match data {
            Data::PairsFile { file, root } => Self::from_pairs_file(file, root, config),
            Data::Folder(root) => Self::from_folder(root, config),
        }
    }

    fn from_pairs_file(file: &Path, root: &Path, config: &ProtocolConfig) -> Result<Self> {
        let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
        let (kind, list, own_folds) = if pairs::looks_like_lfw(&text) {
            let lfw = pairs::parse_lfw_pairs(&text, root, file)?;
            (ProtocolKind::LfwPairs, lfw.pairs, Some(lfw.folds))
        } else {
            let list = pairs::parse_tsv_pairs(&text, root, file)?;
            (ProtocolKind::TsvPairs, list, None)
        };
        let (images, list, file_folds) = index_pairs(list);
        let k = config.folds.or(own_folds).unwrap_or(1);
        let folds = if Some(k) == own_folds {
            Some(file_folds.into_iter().map(|f| f.unwrap_or(0)).collect())
        } else {
            seeded_folds(list.len(), k, config.seed)
        };
        Ok(Protocol {
            kind,
            images,
            pairs: list,
            folds,
            k,
            sampled_from: None,
            unusable: Vec::new(),
            identities: None,
        })
    }

    fn from_folder(root: &Path, config: &ProtocolConfig) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::Config(format!(
                "{}: not a folder (a labeled folder is needed unless a pairs file is given)",
                root.display()
            )));
        }
        let mut images = Vec::new();
        let mut unusable = Vec::new();
        for item in crate::io::collect_inputs(&[root.to_path_buf()]) {
            match item {
                Ok(p) => images.push(p),
                Err(e) => unusable.push(e),
            }
        }
        images.sort();
        let labeled: Vec<(String, LabelSource)> =
            images.iter().map(|p| pairs::labeled(root, p)).collect();
        let labels: Vec<String> = labeled.iter().map(|(l, _)| l.clone()).collect();
        let drawn = pairs::labeled_pairs(&labels, config.max_pairs, config.seed);
        let k = config.folds.unwrap_or(1);
        Ok(Protocol {
            kind: ProtocolKind::LabeledFolder,
            images,
            folds: seeded_folds(drawn.pairs.len(), k, config.seed),
            pairs: drawn.pairs,
            k,
            sampled_from: drawn
                .sampled
                .then_some((drawn.same_total, drawn.different_total)),
            unusable,
            identities: Some(Identities::infer(&labeled)),
        })
    }
}

/// Distinct images, pairs as indices into them, and each pair's fold.
type IndexedPairs = (Vec<PathBuf>, Vec<(usize, usize, bool)>, Vec<Option<usize>>);

fn index_pairs(list: Vec<Pair>) -> IndexedPairs {
    let mut index: HashMap<PathBuf, usize> = HashMap::new();
    let mut images = Vec::new();
    let mut id = |p: PathBuf| {
        *index.entry(p.clone()).or_insert_with(|| {
            images.push(p);
            images.len() - 1
        })
    };
    let mut pairs = Vec::new();
    let mut folds = Vec::new();
    for p in list {
        pairs.push((id(p.a), id(p.b), p.same));
        folds.push(p.fold);
    }
    (images, pairs, folds)
}

/// Pairs spread over `k` folds in a seeded random order (none for k <= 1).
fn seeded_folds(n: usize, k: usize, seed: u64) -> Option<Vec<usize>> {
    if k <= 1 {
        return None;
    }
    let mut order: Vec<usize> = (0..n).collect();
    crate::rng::Rng::new(seed ^ 0x5eed_f01d).shuffle(&mut order);
    let mut fold = vec![0; n];
    for (rank, &i) in order.iter().enumerate() {
        fold[i] = rank % k;
    }
    Some(fold)
}

/// How the pairs are scored and measured.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Distance between embeddings.
    pub metric: Metric,
    /// Which face of an image stands for it.
    pub policy: FacePolicy,
    /// How images are decoded.
    pub load: LoadOptions,
    /// Thresholds to tabulate (`None`: about 40 round steps over the observed distances).
    pub thresholds: Option<Vec<f32>>,
    /// How many hardest pairs of each kind to name.
    pub hardest: usize,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            metric: Metric::Euclidean,
            policy: FacePolicy::Center,
            load: LoadOptions::default(),
            thresholds: None,
            hardest: 5,
        }
    }
}

/// What became of one image.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ImageOutcome {
    /// A detected face stands for it.
    Face,
    /// No face was detected: the central crop stands in.
    CentralCrop,
    /// It could not be used; its pairs are skipped.
    Failed(Error),
}

/// Image counts of a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct ImageCounts {
    /// Images named by the protocol (including unusable entries of a folder).
    pub total: usize,
    /// Images without a detected face (the central crop stood in).
    pub no_face: usize,
    /// Images that could not be used.
    pub failed: usize,
    /// Images the face library answered.
    pub cached: usize,
}

/// Pair counts of a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct PairCounts {
    /// Same pairs scored.
    pub same: usize,
    /// Different pairs scored.
    pub different: usize,
    /// Pairs skipped (an unusable image).
    pub skipped: usize,
    /// When the pairs are a sample: how many exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampled_from: Option<SampledFrom>,
}

/// Same and different pairs a sample was drawn from.
#[derive(Debug, Clone, Serialize)]
pub struct SampledFrom {
    /// Same pairs that exist.
    pub same: u64,
    /// Different pairs that exist.
    pub different: u64,
}

/// The threshold with the highest accuracy over all pairs.
#[derive(Debug, Clone, Serialize)]
pub struct Best {
    /// The threshold.
    pub threshold: f32,
    /// Its accuracy.
    pub accuracy: f64,
}

/// One scored pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoredPair {
    /// Index of image a in [`Protocol::images`].
    pub a: usize,
    /// Index of image b.
    pub b: usize,
    /// Distance between their embeddings.
    pub distance: f32,
    /// Ground truth.
    pub same: bool,
}

/// A pair near the decision boundary.
#[derive(Debug, Clone, Serialize)]
pub struct HardPair {
    /// First image.
    #[serde(serialize_with = "json_path")]
    pub a: PathBuf,
    /// Second image.
    #[serde(serialize_with = "json_path")]
    pub b: PathBuf,
    /// Their distance.
    pub distance: f32,
    /// True when the pair is decided wrongly at [`Hardest::threshold`] (a false accept among
    /// different pairs, a false reject among same pairs).
    pub error: bool,
}

fn json_path<S: Serializer>(p: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    JsonPath(p).serialize(s)
}

/// The pairs that decide the result: the closest different-person pairs and the farthest
/// same-person pairs, at the operating threshold.
#[derive(Debug, Clone, Serialize)]
pub struct Hardest {
    /// The operating threshold: the k-fold mean threshold, else the best threshold.
    pub threshold: f32,
    /// Different pairs accepted at that threshold.
    pub false_accepts: usize,
    /// Same pairs rejected at that threshold.
    pub false_rejects: usize,
    /// The closest different-person pairs, closest first.
    pub different: Vec<HardPair>,
    /// The farthest same-person pairs, farthest first.
    pub same: Vec<HardPair>,
}

/// The result of a sweep (its JSON form is `facekit threshold-sweep --json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The pipeline's model id.
    pub model: String,
    /// The metric's name.
    pub metric: String,
    /// The protocol followed.
    pub protocol: ProtocolKind,
    /// Which face stood for each image (`center` or `largest`).
    pub face_select: &'static str,
    /// For a labeled folder, the identities inferred.
    pub identities: Option<Identities>,
    /// Image counts.
    pub images: ImageCounts,
    /// Pair counts.
    pub pairs: PairCounts,
    /// The best threshold over all pairs.
    pub best: Best,
    /// Area under the ROC curve.
    pub roc_auc: f64,
    /// Equal error rate.
    pub eer: Option<Eer>,
    /// TAR at FAR 1e-3 and 1e-2.
    pub tar_at_far: Vec<TarAtFar>,
    /// The k-fold protocol's result, when there are folds.
    pub k_fold: Option<KFold>,
    /// Every tabulated threshold.
    pub thresholds: Vec<ThresholdRow>,
    /// The hardest pairs.
    pub hardest: Hardest,
    /// What became of each image of [`Protocol::images`], in order.
    #[serde(skip)]
    pub outcomes: Vec<ImageOutcome>,
    /// Every scored pair.
    #[serde(skip)]
    pub scored: Vec<ScoredPair>,
    /// The ROC curve.
    #[serde(skip)]
    pub roc: Vec<RocPoint>,
}

impl Report {
    /// The operating threshold: the k-fold mean threshold when there are folds, else the best.
    pub fn threshold(&self) -> f32 {
        self.hardest.threshold
    }

    /// (FPR, TPR) at the operating threshold.
    pub fn operating_point(&self) -> (f64, f64) {
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let (same, different) = (self.pairs.same, self.pairs.different);
        (
            ratio(self.hardest.false_accepts, different),
            ratio(same - self.hardest.false_rejects.min(same), same),
        )
    }

    /// Distances of the same pairs, then of the different pairs.
    pub fn distances(&self) -> (Vec<f32>, Vec<f32>) {
        let pick = |same: bool| -> Vec<f32> {
            self.scored
                .iter()
                .filter(|p| p.same == same)
                .map(|p| p.distance)
                .collect()
        };
        (pick(true), pick(false))
    }
}

/// The embedding that stands for one image, from its faces (or its central crop).
fn pick_one(
    path: &Path,
    faces: Result<(std::sync::Arc<crate::library::ImageFaces>, bool)>,
    config: &SweepConfig,
) -> Result<(Vec<f32>, bool, bool)> {
    let (faces, hit) = faces?;
    let boxes = faces.faces.iter().map(|f| &f.bbox);
    match select_face(boxes, config.policy, faces.width, faces.height) {
        Some(i) => Ok((faces.faces[i].embedding.clone(), false, hit)),
        None => match &faces.central {
            Some(c) => Ok((c.clone(), true, hit)),
            None => Err(Error::image(path, "no face found and no central crop")),
        },
    }
}

/// The embeddings of a protocol's images: one per image (`None` for an image that failed),
/// what became of each, and the counts.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// The embedding standing for each image of [`Protocol::images`].
    pub embeddings: Vec<Option<Vec<f32>>>,
    /// What became of each image, in order.
    pub outcomes: Vec<ImageOutcome>,
    /// Image counts (including the protocol's unusable entries).
    pub images: ImageCounts,
    /// The pipeline's model id.
    pub model: String,
}

/// Embeds every image of `protocol` in parallel on the current rayon pool, through `library`
/// (each image inside the per-file fault boundary; `progress` is called once per image). An
/// image that fails is recorded, never fatal.
pub fn embed(
    protocol: &Protocol,
    library: &Library,
    pipeline: &Pipeline,
    config: &SweepConfig,
    progress: &(dyn Fn() + Sync),
) -> Embedded {
    let results: Vec<Result<(Vec<f32>, bool, bool)>> = library
        .faces_of_files_in_order(pipeline, &protocol.images, &config.load, true, progress)
        .into_iter()
        .zip(&protocol.images)
        .map(|(faces, path)| pick_one(path, faces, config))
        .collect();
    let mut images = ImageCounts {
        total: protocol.images.len() + protocol.unusable.len(),
        no_face: 0,
        failed: protocol.unusable.len(),
        cached: 0,
    };
    let mut embeddings = Vec::with_capacity(results.len());
    let mut outcomes = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Ok((emb, fallback, hit)) => {
                images.no_face += usize::from(fallback);
                images.cached += usize::from(hit);
                outcomes.push(if fallback {
                    ImageOutcome::CentralCrop
                } else {
                    ImageOutcome::Face
                });
                embeddings.push(Some(emb));
            }
            Err(e) => {
                images.failed += 1;
                outcomes.push(ImageOutcome::Failed(e));
                embeddings.push(None);
            }
        }
    }
    Embedded {
        embeddings,
        outcomes,
        images,
        model: pipeline.model_id(),
    }
}

/// The whole sweep: [`embed`] then [`measure`].
pub fn run(
    protocol: &Protocol,
    library: &Library,
    pipeline: &Pipeline,
    config: &SweepConfig,
    progress: &(dyn Fn() + Sync),
) -> Result<Report> {
    let embedded = embed(protocol, library, pipeline, config, progress);
    measure(protocol, &embedded, config)
}

/// Scores the pairs whose images both have an embedding and measures every threshold. Fails
/// when there is no pair, or no pair could be scored.
pub fn measure(protocol: &Protocol, embedded: &Embedded, config: &SweepConfig) -> Result<Report> {
    if protocol.pairs.is_empty() {
        return Err(Error::Config(
            "no pairs to compare (need at least two images)".into(),
        ));
    }
    let embeddings = &embedded.embeddings;
    let mut scored = Vec::with_capacity(protocol.pairs.len());
    let mut folds = Vec::with_capacity(protocol.pairs.len());
    for (n, &(a, b, same)) in protocol.pairs.iter().enumerate() {
        if let (Some(Some(ea)), Some(Some(eb))) = (embeddings.get(a), embeddings.get(b)) {
            if ea.len() != eb.len() {
                continue;
            }
            scored.push(ScoredPair {
                a,
                b,
                distance: config.metric.distance(ea, eb),
                same,
            });
            if let Some(f) = &protocol.folds {
                folds.push(f[n]);
            }
        }
    }
    if scored.is_empty() {
        return Err(Error::Data(
            "no pair could be scored: every pair has an unusable image".into(),
        ));
    }
    let plain: Vec<Scored> = scored
        .iter()
        .map(|p| Scored {
            distance: p.distance,
            same: p.same,
        })
        .collect();
    let sweep = Sweep::new(&plain);
    let thresholds = config.thresholds.clone().unwrap_or_else(|| {
        let (lo, hi) = sweep.range().unwrap_or((0.0, 1.0));
        metrics::default_range(lo, hi, 40)
    });
    let roc = sweep.roc();
    let (best_t, best_acc) = sweep.best_threshold();
    let k_fold = (protocol.folds.is_some() && protocol.k > 1)
        .then(|| metrics::k_fold(&plain, &folds, protocol.k));
    let operating = k_fold.as_ref().map_or(best_t, |k| k.threshold_mean);
    Ok(Report {
        model: embedded.model.clone(),
        metric: config.metric.to_string(),
        protocol: protocol.kind,
        face_select: match config.policy {
            FacePolicy::Center => "center",
            FacePolicy::Largest => "largest",
        },
        identities: protocol.identities.clone(),
        images: embedded.images.clone(),
        pairs: PairCounts {
            same: sweep.same_count(),
            different: sweep.different_count(),
            skipped: protocol.pairs.len() - scored.len(),
            sampled_from: protocol
                .sampled_from
                .map(|(same, different)| SampledFrom { same, different }),
        },
        best: Best {
            threshold: best_t,
            accuracy: best_acc,
        },
        roc_auc: metrics::auc(&roc),
        eer: metrics::eer(&roc),
        tar_at_far: [1e-3, 1e-2]
            .iter()
            .map(|&far| metrics::tar_at_far(&roc, far))
            .collect(),
        k_fold,
        thresholds: thresholds.iter().map(|&t| sweep.at(t)).collect(),
        hardest: hardest(&protocol.images, &scored, operating, config.hardest),
        outcomes: embedded.outcomes.clone(),
        scored,
        roc,
    })
}

/// The `n` closest different pairs and the `n` farthest same pairs, judged at `threshold`
/// (`distance < threshold` is "same").
pub fn hardest(images: &[PathBuf], scored: &[ScoredPair], threshold: f32, n: usize) -> Hardest {
    let pick = |same: bool| -> Vec<HardPair> {
        let mut list: Vec<&ScoredPair> = scored.iter().filter(|p| p.same == same).collect();
        // Different pairs: closest first; same pairs: farthest first (ties by input order).
        list.sort_by(|x, y| {
            let order = x.distance.total_cmp(&y.distance);
            if same {
                order.reverse()
            } else {
                order
            }
        });
        list.into_iter()
            .take(n)
            .map(|p| HardPair {
                a: images[p.a].clone(),
                b: images[p.b].clone(),
                distance: p.distance,
                error: (p.distance < threshold) != same,
            })
            .collect()
    };
    Hardest {
        threshold,
        false_accepts: scored
            .iter()
            .filter(|p| !p.same && p.distance < threshold)
            .count(),
        false_rejects: scored
            .iter()
            .filter(|p| p.same && p.distance >= threshold)
            .count(),
        different: pick(false),
        same: pick(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: usize, b: usize, distance: f32, same: bool) -> ScoredPair {
        ScoredPair {
            a,
            b,
            distance,
            same,
        }
    }

    #[test]
    fn hardest_pairs_at_a_threshold() {
        let images: Vec<PathBuf> = ["a", "b", "c", "d"].iter().map(PathBuf::from).collect();
        let scored = [
            pair(0, 1, 0.3, true),
            pair(2, 3, 0.7, true),
            pair(0, 2, 0.5, false),
            pair(1, 3, 0.9, false),
            pair(0, 3, 0.8, false),
        ];
        let h = hardest(&images, &scored, 0.6, 2);
        assert_eq!((h.false_accepts, h.false_rejects), (1, 1));
        let d: Vec<f32> = h.different.iter().map(|p| p.distance).collect();
        assert_eq!(d, [0.5, 0.8]);
        assert!(h.different[0].error && !h.different[1].error);
        assert_eq!(h.different[0].a, Path::new("a"));
        assert_eq!(h.different[0].b, Path::new("c"));
        let s: Vec<f32> = h.same.iter().map(|p| p.distance).collect();
        assert_eq!(s, [0.7, 0.3]);
        assert!(h.same[0].error && !h.same[1].error);
    }

    #[test]
    fn identities_and_layouts() {
        let l = |n: &str, s| (n.to_string(), s);
        let flat = Identities::infer(&[
            l("obama", LabelSource::FileName),
            l("obama", LabelSource::FileName),
            l("obama_partial_face", LabelSource::FileName),
        ]);
        assert_eq!(flat.layout, Layout::FileNames);
        assert_eq!(flat.list.len(), 2);
        assert_eq!(flat.list[0].photos, 2);
        let mixed = Identities::infer(&[
            l("alice", LabelSource::Subfolder),
            l("scene", LabelSource::FileName),
        ]);
        assert_eq!(mixed.layout, Layout::Mixed);
        assert_eq!(mixed.loose_photos(), 1);
        let sub = Identities::infer(&[l("alice", LabelSource::Subfolder)]);
        assert_eq!(sub.layout, Layout::Subfolders);
    }
}
