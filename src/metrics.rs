//! Verification metrics over scored pairs: threshold sweeps, ROC and its AUC, EER, TAR at a
//! given FAR, the best threshold and the LFW k-fold protocol. A pair counts as "same" when its
//! distance is below the threshold (`distance < t`), the rule `facekit verify` applies.

use serde::Serialize;

/// One compared pair: its distance and whether the two faces are the same person.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Distance between the two embeddings.
    pub distance: f32,
    /// Ground truth: same person.
    pub same: bool,
}

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClassScores {
    /// Of the pairs predicted in this class, the fraction that are.
    pub precision: f64,
    /// Of the pairs in this class, the fraction predicted so.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
}

impl ClassScores {
    fn new(hit: usize, predicted: usize, actual: usize) -> Self {
        let precision = ratio(hit, predicted);
        let recall = ratio(hit, actual);
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        ClassScores {
            precision,
            recall,
            f1,
        }
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Everything measured at one threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ThresholdRow {
    /// The threshold (`distance < threshold` means "same").
    pub threshold: f32,
    /// Fraction of pairs decided correctly.
    pub accuracy: f64,
    /// True positive rate: same pairs accepted (= recall of "same", TAR).
    pub tpr: f64,
    /// False positive rate: different pairs accepted (FAR).
    pub fpr: f64,
    /// Scores of the "same" class.
    pub same: ClassScores,
    /// Scores of the "different" class.
    pub different: ClassScores,
}

/// The pairs sorted by distance with running counts, so any threshold is evaluated by a binary
/// search.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// Distances, ascending.
    distances: Vec<f32>,
    /// `same_below[i]`: same pairs among the first `i` sorted pairs.
    same_below: Vec<usize>,
}

impl Sweep {
    /// Sorts the pairs once.
    pub fn new(pairs: &[Scored]) -> Self {
        let mut sorted: Vec<Scored> = pairs.to_vec();
        sorted.sort_by(|a, b| a.distance.total_cmp(&b.distance));
        let mut same_below = Vec::with_capacity(sorted.len() + 1);
        same_below.push(0);
        for p in &sorted {
            let last = same_below[same_below.len() - 1];
            same_below.push(last + usize::from(p.same));
        }
        Sweep {
            distances: sorted.iter().map(|p| p.distance).collect(),
            same_below,
        }
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.distances.len()
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.distances.is_empty()
    }

    /// Number of same pairs.
    pub fn same_count(&self) -> usize {
        self.same_below[self.len()]
    }

    /// Number of different pairs.
    pub fn different_count(&self) -> usize {
        self.len() - self.same_count()
    }

    /// Smallest and largest distance (`None` without pairs).
    pub fn range(&self) -> Option<(f32, f32)> {
        Some((*self.distances.first()?, *self.distances.last()?))
    }

    /// (accepted same, accepted different) at threshold `t`.
    fn accepted(&self, t: f32) -> (usize, usize) {
        let k = self.distances.partition_point(|&d| d < t);
        let tp = self.same_below[k];
        (tp, k - tp)
    }

    /// Every measure at threshold `t`.
    pub fn at(&self, t: f32) -> ThresholdRow {
        let (tp, fp) = self.accepted(t);
        let (p, n) = (self.same_count(), self.different_count());
        let (fneg, tn) = (p - tp, n - fp);
        ThresholdRow {
            threshold: t,
            accuracy: ratio(tp + tn, p + n),
            tpr: ratio(tp, p),
            fpr: ratio(fp, n),
            same: ClassScores::new(tp, tp + fp, p),
            different: ClassScores::new(tn, tn + fneg, n),
        }
    }

    /// Thresholds between consecutive distinct distances, plus one below all and one above all:
    /// every distinct decision the data allows.
    fn candidates(&self) -> Vec<f32> {
        let Some((lo, hi)) = self.range() else {
            return vec![0.0];
        };
        let mut out = vec![lo - 1e-3_f32.max(lo.abs() * 1e-6)];
        for w in self.distances.windows(2) {
            if w[0] < w[1] {
                // The midpoint, unless rounding puts it on w[0] (adjacent floats): then w[1]
                // itself, which `d < t` still separates.
                let mid = w[0] + (w[1] - w[0]) / 2.0;
                out.push(if mid > w[0] { mid } else { w[1] });
            }
        }
        out.push(hi + 1e-3_f32.max(hi.abs() * 1e-6));
        out
    }

    /// The threshold with the highest accuracy (the lowest one on ties) and that accuracy.
    pub fn best_threshold(&self) -> (f32, f64) {
        let mut best = (0.0, -1.0);
        for t in self.candidates() {
            let acc = self.at(t).accuracy;
            if acc > best.1 {
                best = (t, acc);
            }
        }
        best
    }

    /// The ROC curve as (threshold, FPR, TPR), FPR ascending, from (0, 0) to (1, 1).
    pub fn roc(&self) -> Vec<RocPoint> {
        self.candidates()
            .into_iter()
            .map(|t| {
                let row = self.at(t);
                RocPoint {
                    threshold: t,
                    fpr: row.fpr,
                    tpr: row.tpr,
                }
            })
            .collect()
    }
}

/// One point of a ROC curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RocPoint {
    /// The threshold producing this point.
    pub threshold: f32,
    /// False positive rate (FAR).
    pub fpr: f64,
    /// True positive rate (TAR).
    pub tpr: f64,
}

/// Area under a ROC curve (trapezoids; ties in distance become diagonal segments, so this is
/// the probability that a random same pair is closer than a random different pair, ties half).
pub fn auc(roc: &[RocPoint]) -> f64 {
    roc.windows(2)
        .map(|w| (w[1].fpr - w[0].fpr) * (w[1].tpr + w[0].tpr) / 2.0)
        .sum()
}

/// Equal error rate: where the false accept rate equals the false reject rate (linear
/// interpolation along the ROC), with the threshold there.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Eer {
    /// The common error rate.
    pub rate: f64,
    /// Threshold at that point.
    pub threshold: f32,
}

/// The equal error rate of a ROC curve (`None` for an empty curve).
pub fn eer(roc: &[RocPoint]) -> Option<Eer> {
    // g = FPR - FNR rises from -1 at (0, 0) to +1 at (1, 1); find its zero crossing.
    let g = |p: &RocPoint| p.fpr - (1.0 - p.tpr);
    for w in roc.windows(2) {
        let (g0, g1) = (g(&w[0]), g(&w[1]));
        if g0 <= 0.0 && g1 >= 0.0 {
            let s = if g1 > g0 { -g0 / (g1 - g0) } else { 0.0 };
            let fpr = w[0].fpr + s * (w[1].fpr - w[0].fpr);
            let fnr = 1.0 - (w[0].tpr + s * (w[1].tpr - w[0].tpr));
            return Some(Eer {
                rate: (fpr + fnr) / 2.0,
                threshold: w[0].threshold + s as f32 * (w[1].threshold - w[0].threshold),
            });
        }
    }
    roc.first().map(|p| Eer {
        rate: (p.fpr + 1.0 - p.tpr) / 2.0,
        threshold: p.threshold,
    })
}

/// True accept rate at a false accept rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TarAtFar {
    /// The FAR bound.
    pub far: f64,
    /// Highest TPR whose FPR is at most `far`.
    pub tar: f64,
    /// The threshold achieving it.
    pub threshold: f32,
}

/// The highest TPR with FPR <= `far` (the ROC always has the point (0, 0)).
pub fn tar_at_far(roc: &[RocPoint], far: f64) -> TarAtFar {
    roc.iter()
        .filter(|p| p.fpr <= far)
        .max_by(|a, b| a.tpr.total_cmp(&b.tpr))
        .map(|p| TarAtFar {
            far,
            tar: p.tpr,
            threshold: p.threshold,
        })
        .unwrap_or(TarAtFar {
            far,
            tar: 0.0,
            threshold: 0.0,
        })
}

/// One held-out fold of the k-fold protocol.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FoldResult {
    /// Fold number (1-based).
    pub fold: usize,
    /// Threshold chosen on the other folds.
    pub threshold: f32,
    /// Accuracy on this fold at that threshold.
    pub accuracy: f64,
    /// Pairs in this fold.
    pub pairs: usize,
}

/// The k-fold protocol's result (LFW View 2: 10 folds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KFold {
    /// Number of folds.
    pub k: usize,
    /// Mean held-out accuracy.
    pub accuracy_mean: f64,
    /// Standard deviation of the held-out accuracies (population, as LFW reports).
    pub accuracy_std: f64,
    /// Mean of the chosen thresholds.
    pub threshold_mean: f32,
    /// Each fold.
    pub folds: Vec<FoldResult>,
}

/// For each fold, picks the best threshold on the other folds and measures it on this one.
/// `fold[i]` is pair i's fold in `0..k`; folds without pairs are left out.
pub fn k_fold(pairs: &[Scored], fold: &[usize], k: usize) -> KFold {
    let mut folds = Vec::new();
    for f in 0..k {
        let pick = |held_out: bool| -> Vec<Scored> {
            pairs
                .iter()
                .zip(fold)
                .filter(|&(_, &g)| (g == f) == held_out)
                .map(|(p, _)| *p)
                .collect()
        };
        let test = pick(true);
        if test.is_empty() {
            continue;
        }
        let train = pick(false);
        let (threshold, _) = Sweep::new(&train).best_threshold();
        let accuracy = Sweep::new(&test).at(threshold).accuracy;
        folds.push(FoldResult {
            fold: f + 1,
            threshold,
            accuracy,
            pairs: test.len(),
        });
    }
    let n = folds.len().max(1) as f64;
    let mean = folds.iter().map(|f| f.accuracy).sum::<f64>() / n;
    let var = folds
        .iter()
        .map(|f| (f.accuracy - mean).powi(2))
        .sum::<f64>()
        / n;
    KFold {
        k,
        accuracy_mean: mean,
        accuracy_std: var.sqrt(),
        threshold_mean: (folds.iter().map(|f| f.threshold as f64).sum::<f64>() / n) as f32,
        folds,
    }
}

/// Parses a sweep range `start:stop:step` (inclusive of `stop`, within rounding).
pub fn parse_range(text: &str) -> Result<Vec<f32>, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let nums: Vec<f64> = parts
        .iter()
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("range {text:?}: expected start:stop:step, e.g. 0.5:1.5:0.01"))?;
    let [start, stop, step] = nums[..] else {
        return Err(format!(
            "range {text:?}: expected start:stop:step, e.g. 0.5:1.5:0.01"
        ));
    };
    if step.is_nan() || step <= 0.0 || !start.is_finite() || !stop.is_finite() || stop < start {
        return Err(format!(
            "range {text:?}: need start <= stop and a positive step"
        ));
    }
    let n = ((stop - start) / step + 1e-9).floor() as usize + 1;
    if n > 100_000 {
        return Err(format!("range {text:?}: {n} thresholds is too many"));
    }
    Ok((0..n).map(|i| (start + i as f64 * step) as f32).collect())
}

/// About `steps` round-numbered thresholds spanning `lo..=hi` (a step of 1, 2 or 5 x 10^k).
pub fn default_range(lo: f32, hi: f32, steps: usize) -> Vec<f32> {
    let (lo, hi) = (lo as f64, hi as f64);
    let span = (hi - lo).max(1e-6);
    let raw = span / steps.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let start = (lo / step).floor() * step;
    let n = ((hi - start) / step).ceil() as usize + 1;
    (0..n)
        .map(|i| {
            let t = start + i as f64 * step;
            // Round away binary noise so thresholds print as typed.
            ((t / step).round() * step) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(items: &[(f32, bool)]) -> Vec<Scored> {
        items
            .iter()
            .map(|&(distance, same)| Scored { distance, same })
            .collect()
    }

    /// Direct O(n) evaluation to check the sorted one against.
    fn naive(pairs: &[Scored], t: f32) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for p in pairs {
            match (p.distance < t, p.same) {
                (true, true) => c.0 += 1,
                (true, false) => c.1 += 1,
                (false, false) => c.2 += 1,
                (false, true) => c.3 += 1,
            }
        }
        c
    }

    #[test]
    fn rows_match_direct_counting() {
        let mut r = crate::rng::Rng::new(3);
        let pairs: Vec<Scored> = (0..500)
            .map(|i| {
                let same = i % 3 == 0;
                let d = if same { 0.4 } else { 0.8 } + 0.15 * r.normal() as f32;
                // Some exact ties.
                Scored {
                    distance: (d * 50.0).round() / 50.0,
                    same,
                }
            })
            .collect();
        let sweep = Sweep::new(&pairs);
        for t in parse_range("0:1.2:0.01").unwrap() {
            let row = sweep.at(t);
            let (tp, fp, tn, fneg) = naive(&pairs, t);
            assert_eq!(row.accuracy, (tp + tn) as f64 / 500.0);
            assert_eq!(row.tpr, ratio(tp, tp + fneg));
            assert_eq!(row.fpr, ratio(fp, fp + tn));
            assert_eq!(row.same.precision, ratio(tp, tp + fp));
            assert_eq!(row.different.recall, ratio(tn, tn + fp));
            assert_eq!(row.different.precision, ratio(tn, tn + fneg));
        }
        // The best threshold beats every grid threshold.
        let (_, best) = sweep.best_threshold();
        for t in parse_range("0:1.2:0.001").unwrap() {
            assert!(sweep.at(t).accuracy <= best + 1e-12);
        }
    }

    #[test]
    fn auc_is_the_pairwise_ranking_probability() {
        let mut r = crate::rng::Rng::new(9);
        let pairs: Vec<Scored> = (0..300)
            .map(|i| Scored {
                distance: ((0.5 + 0.3 * r.normal()) * 20.0).round() as f32 / 20.0
                    - if i % 2 == 0 { 0.2 } else { 0.0 },
                same: i % 2 == 0,
            })
            .collect();
        let mut wins = 0.0;
        let mut total = 0.0;
        for s in pairs.iter().filter(|p| p.same) {
            for d in pairs.iter().filter(|p| !p.same) {
                total += 1.0;
                if s.distance < d.distance {
                    wins += 1.0;
                } else if s.distance == d.distance {
                    wins += 0.5;
                }
            }
        }
        let got = auc(&Sweep::new(&pairs).roc());
        assert!(
            (got - wins / total).abs() < 1e-12,
            "{got} vs {}",
            wins / total
        );
    }

    #[test]
    fn perfect_and_edge_cases() {
        let pairs = scored(&[(0.1, true), (0.2, true), (0.9, false), (1.0, false)]);
        let sweep = Sweep::new(&pairs);
        let (t, acc) = sweep.best_threshold();
        assert_eq!(acc, 1.0);
        assert!(t > 0.2 && t < 0.9);
        let roc = sweep.roc();
        assert_eq!(auc(&roc), 1.0);
        let e = eer(&roc).unwrap();
        assert_eq!(e.rate, 0.0);
        assert_eq!(tar_at_far(&roc, 1e-3).tar, 1.0);
        // Symmetric overlap: EER 0.5 when the classes are identical.
        let same_dist = scored(&[(0.5, true), (0.5, false)]);
        let roc = Sweep::new(&same_dist).roc();
        assert_eq!(auc(&roc), 0.5);
        assert!((eer(&roc).unwrap().rate - 0.5).abs() < 1e-12);
        // No pairs at all: nothing panics.
        let empty = Sweep::new(&[]);
        assert_eq!(empty.at(0.5).accuracy, 0.0);
        assert!(empty.range().is_none());
        let _ = eer(&empty.roc());
        let _ = k_fold(&[], &[], 10);
    }

    #[test]
    fn k_fold_picks_thresholds_on_the_other_folds() {
        // Fold 0 is separable at 0.5, fold 1 at 0.7: each fold's threshold comes from the other.
        let pairs = scored(&[
            (0.4, true),
            (0.6, false),
            (0.6, true),
            (0.8, false),
            (0.45, true),
            (0.65, true),
        ]);
        let fold = [0, 0, 1, 1, 0, 1];
        let kf = k_fold(&pairs, &fold, 2);
        assert_eq!(kf.folds.len(), 2);
        // Trained on fold 1 (same <= 0.65, different 0.8): threshold between 0.65 and 0.8,
        // which calls fold 0's 0.6 different pair "same".
        assert!(kf.folds[0].threshold > 0.65 && kf.folds[0].threshold < 0.8);
        assert!((kf.folds[0].accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(kf.folds[0].pairs, 3);
    }

    #[test]
    fn ranges() {
        let r = parse_range("0.5:1.5:0.01").unwrap();
        assert_eq!(r.len(), 101);
        assert_eq!(r[100], 1.5);
        assert!(parse_range("1:0:0.1").is_err());
        assert!(parse_range("0:1").is_err());
        assert!(parse_range("0:1:0").is_err());
        let d = default_range(0.213, 1.187, 50);
        assert!(d[0] <= 0.213 && *d.last().unwrap() >= 1.187);
        assert!((d[1] - d[0] - 0.02).abs() < 1e-6);
    }
}
