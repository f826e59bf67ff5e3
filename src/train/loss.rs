//! Metric-learning losses for `facekit train`: FaceNet's triplet loss with semi-hard, batch-hard or all-triplet mining, the contrastive (siamese) loss, and dlib's pairwise hinge loss.
//!
//! Everything that carries a gradient is built from candle ops (`matmul`, `sqr`, `sqrt`,
//! `relu`, `broadcast_add`/`broadcast_div`, `sum_keepdim`, `sum_all`, `affine`, `mul`, `sub`,
//! `flatten_all`, `index_select`), all of which have backward passes in candle-core, so
//! `loss.backward()` yields gradients w.r.t. the embeddings (and through them w.r.t. whatever
//! produced them). Mining decisions (which triplets / pairs enter the loss) are made on host
//! copies of the *detached* distance matrix; the chosen entries are then gathered from the
//! differentiable distance matrix with `flatten_all` + `index_select` on a `u32` index tensor.
//! Mining is therefore piecewise constant: gradients flow through the selected distances only.
//!
//! Distances: `squared_distances` gives squared Euclidean distances (Gram-matrix form, clamped
//! at 0, diagonal exactly 0). Where a loss needs the plain Euclidean distance `d`, it uses
//! `d = sqrt(d² + ε)` (ε = [`DIST_EPS`], 1e-6 for f16) so identical embeddings give finite
//! gradients instead of NaN.
//!
//! Mining strategies for [`LossKind::Triplet`] (all distances squared Euclidean, `margin` α):
//! - [`Mining::SemiHard`] (FaceNet, Schroff et al. 2015, §3.2): for every ordered
//!   anchor-positive pair `(a, p)`, `a != p`, same label (both directions are separate pairs),
//!   the semi-hard negatives are the `n` with a different label and
//!   `d_ap < d_an < d_ap + α`; the one with the smallest `d_an` (hardest semi-hard) is used,
//!   ties broken by the lowest index. Pairs without a semi-hard negative contribute nothing.
//!   `candidates` = number of `(a, p)` pairs, `active` = mined triplets with loss > 0,
//!   loss = mean over the mined triplets of `max(d_ap - d_an + α, 0)`.
//! - [`Mining::BatchHard`] (Hermans et al. 2017, "In Defense of the Triplet Loss"): for every
//!   anchor with at least one positive (same label, other row) and one negative, its hardest
//!   positive (max `d_ap`) and hardest negative (min `d_an`), ties broken by the lowest index;
//!   loss = mean over those anchors of `max(d_ap - d_an + α, 0)`. `candidates` = such anchors,
//!   `active` = those with loss > 0.
//! - [`Mining::All`] ("batch all", Hermans et al. 2017): every valid triplet `(a, p, n)`
//!   (`a != p` same label, `n` different label); loss = mean over the triplets with positive
//!   loss (0 if there are none). `candidates` = all valid triplets, `active` = those with
//!   positive loss.
//!
//! Pair losses (over unordered pairs `i < j`, `d` Euclidean):
//! - [`LossKind::Contrastive`] (Hadsell, Chopra & LeCun 2006): same label `d²/2` (using the
//!   squared distance itself, no ε), different label `max(m - d, 0)²/2`; mean over all pairs.
//!   `candidates` = all pairs `B(B-1)/2`, `active` = pairs with loss > 0.
//! - [`LossKind::Hinge`] (dlib's `loss_metric`): same label `max(0, d - (t - m))`; different
//!   label `max(0, (t + m) - d)`, but only the `k = min(#different, #same)` hardest different
//!   pairs (largest loss, i.e. smallest `d`, ties by lowest pair index) are used; loss = sum
//!   over the used pairs / (#same + k). `candidates` = pairs used (#same + k), `active` = used
//!   pairs with loss > 0. With no same-label pair nothing is used (loss 0), as in dlib.
//!
//! When no triplet or pair is used (all rows share one label, all labels distinct, `B < 2`,
//! zero margin for semi-hard, ...), the loss is a scalar zero that is still connected to the
//! embeddings (`sum(emb) * zeros`, a real `mul` node), so `backward()` succeeds and yields an
//! all-zero gradient for `emb`.

use candle_core::{DType, Error, Result, Tensor, D};

/// ε added under square roots: `d = sqrt(d² + ε)` and `‖x‖ = sqrt(Σx² + ε)` (f16 uses 1e-6).
pub const DIST_EPS: f64 = 1e-12;

/// Triplet mining strategy for [`LossKind::Triplet`] (see the module docs for definitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mining {
    /// FaceNet's hardest semi-hard negative per anchor-positive pair.
    SemiHard,
    /// Hardest positive and hardest negative per anchor (Hermans et al. 2017).
    BatchHard,
    /// Every valid triplet, averaged over those with positive loss ("batch all").
    All,
}

/// Which metric-learning loss to compute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossKind {
    /// FaceNet: mean over mined triplets of max(|a-p|^2 - |a-n|^2 + margin, 0), squared Euclidean distances.
    Triplet {
        /// How triplets are mined from the batch.
        mining: Mining,
        /// Margin α between positive and negative squared distances.
        margin: f64,
    },
    /// Hadsell et al. 2006 over all pairs i<j of the batch: same: d^2 / 2, different: max(margin - d, 0)^2 / 2; mean over pairs. d Euclidean.
    Contrastive {
        /// Distance beyond which different-label pairs cost nothing.
        margin: f64,
    },
    /// dlib's loss_metric: same pairs: max(0, d - (threshold - margin)); different pairs: max(0, (threshold + margin) - d), only the hardest (largest-loss) different pairs, as many as there are same pairs (all of them if fewer); mean over the pairs used. d Euclidean.
    Hinge {
        /// Decision threshold on the Euclidean distance (dlib uses 0.6).
        threshold: f64,
        /// Margin on either side of the threshold (dlib uses 0.04).
        margin: f64,
    },
    /// ArcFace (Deng et al. 2019): softmax cross-entropy over the training identities on
    /// `scale * cos(theta_y + margin)` for the true class and `scale * cos(theta_j)` for the
    /// others, `theta` the angle between the L2-normalised embedding and class weight (see
    /// [`super::margin`]; needs a [`super::margin::MarginHead`]).
    ArcFace {
        /// Logit scale `s`.
        scale: f64,
        /// Additive angular margin `m` (radians).
        margin: f64,
    },
    /// CosFace (Wang et al. 2018): as [`LossKind::ArcFace`] with `scale * (cos(theta_y) - margin)`
    /// for the true class.
    CosFace {
        /// Logit scale `s`.
        scale: f64,
        /// Additive cosine margin `m`.
        margin: f64,
    },
}

impl LossKind {
    /// True for the softmax-family losses that train class weights ([`super::margin`]).
    pub fn is_margin_softmax(self) -> bool {
        matches!(self, LossKind::ArcFace { .. } | LossKind::CosFace { .. })
    }
}

/// Result of [`compute`]: the differentiable loss plus mining statistics.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// Scalar loss (rank 0), same dtype as the embeddings, connected to them for `backward()`.
    pub loss: Tensor,
    /// Triplets, anchors or pairs that entered the loss with a positive value.
    pub active: usize,
    /// Triplets, anchors or pairs considered (per-kind definition in the module docs).
    pub candidates: usize,
}

fn dist_eps(dtype: DType) -> f64 {
    if dtype == DType::F16 {
        1e-6
    } else {
        DIST_EPS
    }
}

/// Row-wise L2 normalisation along the last dimension, `x / sqrt(Σx² + ε)`; zero rows stay zero.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let eps = dist_eps(x.dtype());
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)? + eps)?.sqrt()?;
    x.broadcast_div(&norm)
}

/// Pairwise squared Euclidean distances `[B, B]` of `[B, D]` rows: `|a|² + |b|² - 2a·b` clamped at 0, diagonal exactly 0.
pub fn squared_distances(emb: &Tensor) -> Result<Tensor> {
    let (b, _) = emb.dims2()?;
    let sq = emb.sqr()?.sum_keepdim(1)?; // [B, 1]
    let gram = emb.matmul(&emb.t()?)?; // [B, B]
    let d2 = sq.broadcast_add(&sq.t()?)?.sub(&(gram * 2.0)?)?.relu()?;
    // Exact zeros on the diagonal (the Gram form leaves rounding residue there), and no
    // gradient through it: multiply by an off-diagonal mask.
    let off_diag = Tensor::eye(b, emb.dtype(), emb.device())?.affine(-1.0, 1.0)?;
    d2.mul(&off_diag)
}

/// Computes `kind` on `emb` (`[B, D]`, row `i` has identity `labels[i]`); triplet/contrastive callers should pass `l2_normalize`d rows.
pub fn compute(emb: &Tensor, labels: &[u32], kind: LossKind) -> Result<LossOutput> {
    let (b, _) = emb.dims2()?;
    if labels.len() != b {
        return Err(Error::Msg(format!(
            "loss: {} labels for a batch of {} embeddings",
            labels.len(),
            b
        )));
    }
    if b.checked_mul(b).is_none_or(|n| n > u32::MAX as usize) {
        return Err(Error::Msg(format!("loss: batch of {b} is too large")));
    }
    if b < 2 {
        return Ok(LossOutput {
            loss: connected_zero(emb)?,
            active: 0,
            candidates: 0,
        });
    }
    if kind.is_margin_softmax() {
        return Err(Error::Msg(
            "loss: ArcFace and CosFace need class weights (train::margin::MarginHead)".into(),
        ));
    }
    let d2 = squared_distances(emb)?;
    let host: Vec<Vec<f64>> = d2.detach().to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let flat = d2.flatten_all()?;
    let eps = dist_eps(emb.dtype());
    match kind {
        LossKind::Triplet { mining, margin } => {
            let mined = match mining {
                Mining::SemiHard => mine_semi_hard(&host, labels, margin),
                Mining::BatchHard => mine_batch_hard(&host, labels, margin),
                Mining::All => mine_all(&host, labels, margin),
            };
            if mined.ap.is_empty() {
                return Ok(LossOutput {
                    loss: connected_zero(emb)?,
                    active: mined.active,
                    candidates: mined.candidates,
                });
            }
            let d_ap = select(&flat, &mined.ap)?;
            let d_an = select(&flat, &mined.an)?;
            let per = (d_ap.sub(&d_an)? + margin)?.relu()?;
            let loss = mean_of_sum(&per.sum_all()?, mined.ap.len())?;
            Ok(LossOutput {
                loss,
                active: mined.active,
                candidates: mined.candidates,
            })
        }
        LossKind::Contrastive { margin } => {
            let (mut same, mut diff) = (Vec::new(), Vec::new());
            let mut active = 0;
            for i in 0..b {
                for j in i + 1..b {
                    let idx = (i * b + j) as u32;
                    if labels[i] == labels[j] {
                        same.push(idx);
                        active += usize::from(host[i][j] > 0.0);
                    } else {
                        diff.push(idx);
                        active += usize::from(margin - (host[i][j] + eps).sqrt() > 0.0);
                    }
                }
            }
            let n = same.len() + diff.len();
            let mut total: Option<Tensor> = None;
            if !same.is_empty() {
                total = Some(select(&flat, &same)?.sum_all()?);
            }
            if !diff.is_empty() {
                let d = (select(&flat, &diff)? + eps)?.sqrt()?;
                let s = d.affine(-1.0, margin)?.relu()?.sqr()?.sum_all()?;
                total = Some(match total {
                    Some(t) => t.add(&s)?,
                    None => s,
                });
            }
            let loss = match total {
                Some(t) => mean_of_sum(&(t * 0.5)?, n)?,
                None => connected_zero(emb)?,
            };
            Ok(LossOutput {
                loss,
                active,
                candidates: n,
            })
        }
        LossKind::Hinge { threshold, margin } => {
            let pos_thresh = threshold - margin;
            let neg_thresh = threshold + margin;
            let mut same = Vec::new();
            let mut diff: Vec<(f64, u32)> = Vec::new();
            let mut active = 0;
            for i in 0..b {
                for j in i + 1..b {
                    let idx = (i * b + j) as u32;
                    let d = (host[i][j] + eps).sqrt();
                    if labels[i] == labels[j] {
                        same.push(idx);
                        active += usize::from(d - pos_thresh > 0.0);
                    } else {
                        diff.push((d, idx));
                    }
                }
            }
            // Hardest different pairs = smallest distance (largest hinge loss).
            diff.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
            let k = diff.len().min(same.len());
            diff.truncate(k);
            active += diff.iter().filter(|(d, _)| neg_thresh - d > 0.0).count();
            let n = same.len() + k;
            if n == 0 {
                return Ok(LossOutput {
                    loss: connected_zero(emb)?,
                    active: 0,
                    candidates: 0,
                });
            }
            // n > 0 implies at least one same pair.
            let ds = (select(&flat, &same)? + eps)?.sqrt()?;
            let mut total = (ds - pos_thresh)?.relu()?.sum_all()?;
            if k > 0 {
                let ids: Vec<u32> = diff.iter().map(|&(_, idx)| idx).collect();
                let dd = (select(&flat, &ids)? + eps)?.sqrt()?;
                total = total.add(&dd.affine(-1.0, neg_thresh)?.relu()?.sum_all()?)?;
            }
            Ok(LossOutput {
                loss: mean_of_sum(&total, n)?,
                active,
                candidates: n,
            })
        }
        LossKind::ArcFace { .. } | LossKind::CosFace { .. } => unreachable!("refused above"),
    }
}

/// A scalar zero with a real backward edge to `emb` (`sum(emb) * 0` via `mul`, not `affine`:
/// candle prunes `affine(0, _)` from the backward graph, which would leave no gradient entry).
fn connected_zero(emb: &Tensor) -> Result<Tensor> {
    let s = emb.sum_all()?;
    s.mul(&s.zeros_like()?)
}

fn mean_of_sum(sum: &Tensor, n: usize) -> Result<Tensor> {
    sum.affine(1.0 / n as f64, 0.0)
}

/// Gathers entries of the flattened `[B*B]` distance matrix (differentiable via `index_select`).
fn select(flat: &Tensor, idx: &[u32]) -> Result<Tensor> {
    let ids = Tensor::from_vec(idx.to_vec(), idx.len(), flat.device())?;
    flat.index_select(&ids, 0)
}

/// Mined triplets as flat indices `a*B+p` / `a*B+n` into the distance matrix.
struct Mined {
    ap: Vec<u32>,
    an: Vec<u32>,
    active: usize,
    candidates: usize,
}

fn mine_semi_hard(d: &[Vec<f64>], labels: &[u32], margin: f64) -> Mined {
    let b = labels.len();
    let mut m = Mined {
        ap: Vec::new(),
        an: Vec::new(),
        active: 0,
        candidates: 0,
    };
    for a in 0..b {
        for p in 0..b {
            if p == a || labels[p] != labels[a] {
                continue;
            }
            m.candidates += 1;
            let d_ap = d[a][p];
            let mut best: Option<usize> = None;
            for n in 0..b {
                if labels[n] == labels[a] {
                    continue;
                }
                let d_an = d[a][n];
                if d_an > d_ap && d_an < d_ap + margin && best.is_none_or(|bn| d_an < d[a][bn]) {
                    best = Some(n);
                }
            }
            if let Some(n) = best {
                m.ap.push((a * b + p) as u32);
                m.an.push((a * b + n) as u32);
                m.active += usize::from(d_ap - d[a][n] + margin > 0.0);
            }
        }
    }
    m
}

fn mine_batch_hard(d: &[Vec<f64>], labels: &[u32], margin: f64) -> Mined {
    let b = labels.len();
    let mut m = Mined {
        ap: Vec::new(),
        an: Vec::new(),
        active: 0,
        candidates: 0,
    };
    for a in 0..b {
        let mut hp: Option<usize> = None;
        let mut hn: Option<usize> = None;
        for j in 0..b {
            if j == a {
                continue;
            }
            if labels[j] == labels[a] {
                if hp.is_none_or(|p| d[a][j] > d[a][p]) {
                    hp = Some(j);
                }
            } else if hn.is_none_or(|n| d[a][j] < d[a][n]) {
                hn = Some(j);
            }
        }
        if let (Some(p), Some(n)) = (hp, hn) {
            m.candidates += 1;
            m.ap.push((a * b + p) as u32);
            m.an.push((a * b + n) as u32);
            m.active += usize::from(d[a][p] - d[a][n] + margin > 0.0);
        }
    }
    m
}

fn mine_all(d: &[Vec<f64>], labels: &[u32], margin: f64) -> Mined {
    let b = labels.len();
    let mut m = Mined {
        ap: Vec::new(),
        an: Vec::new(),
        active: 0,
        candidates: 0,
    };
    for a in 0..b {
        for p in 0..b {
            if p == a || labels[p] != labels[a] {
                continue;
            }
            for n in 0..b {
                if labels[n] == labels[a] {
                    continue;
                }
                m.candidates += 1;
                if d[a][p] - d[a][n] + margin > 0.0 {
                    m.ap.push((a * b + p) as u32);
                    m.an.push((a * b + n) as u32);
                }
            }
        }
    }
    m.active = m.ap.len();
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use candle_nn::{AdamW, Optimizer, ParamsAdamW};

    use crate::rng::Rng as SplitMix64;

    const KINDS: [LossKind; 6] = [
        LossKind::Triplet {
            mining: Mining::SemiHard,
            margin: 0.5,
        },
        LossKind::Triplet {
            mining: Mining::BatchHard,
            margin: 0.5,
        },
        LossKind::Triplet {
            mining: Mining::All,
            margin: 0.5,
        },
        LossKind::Contrastive { margin: 1.2 },
        LossKind::Hinge {
            threshold: 1.0,
            margin: 0.2,
        },
        LossKind::Hinge {
            threshold: 2.0,
            margin: 0.5,
        },
    ];

    // ---------- naive reference, straight from the definitions ----------

    fn ref_sq(x: &[f64], y: &[f64]) -> f64 {
        x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum()
    }

    fn ref_normalize(x: &[Vec<f64>]) -> Vec<Vec<f64>> {
        x.iter()
            .map(|r| {
                let n = (r.iter().map(|v| v * v).sum::<f64>() + DIST_EPS).sqrt();
                r.iter().map(|v| v / n).collect()
            })
            .collect()
    }

    /// (loss, active, candidates)
    fn reference(x: &[Vec<f64>], y: &[u32], kind: LossKind) -> (f64, usize, usize) {
        let b = x.len();
        let sq = |i: usize, j: usize| ref_sq(&x[i], &x[j]);
        let eu = |i: usize, j: usize| (ref_sq(&x[i], &x[j]) + DIST_EPS).sqrt();
        match kind {
            LossKind::Triplet {
                mining: Mining::SemiHard,
                margin,
            } => {
                let (mut sum, mut cnt, mut act, mut cand) = (0.0, 0usize, 0usize, 0usize);
                for a in 0..b {
                    for p in 0..b {
                        if a == p || y[a] != y[p] {
                            continue;
                        }
                        cand += 1;
                        let dap = sq(a, p);
                        let semi: Vec<f64> = (0..b)
                            .filter(|&n| y[n] != y[a])
                            .map(|n| sq(a, n))
                            .filter(|&dan| dap < dan && dan < dap + margin)
                            .collect();
                        if let Some(dan) = semi.into_iter().reduce(f64::min) {
                            let l = (dap - dan + margin).max(0.0);
                            sum += l;
                            cnt += 1;
                            if l > 0.0 {
                                act += 1;
                            }
                        }
                    }
                }
                (if cnt > 0 { sum / cnt as f64 } else { 0.0 }, act, cand)
            }
            LossKind::Triplet {
                mining: Mining::BatchHard,
                margin,
            } => {
                let (mut sum, mut act, mut cand) = (0.0, 0usize, 0usize);
                for a in 0..b {
                    let pos: Vec<f64> = (0..b)
                        .filter(|&p| p != a && y[p] == y[a])
                        .map(|p| sq(a, p))
                        .collect();
                    let neg: Vec<f64> =
                        (0..b).filter(|&n| y[n] != y[a]).map(|n| sq(a, n)).collect();
                    if pos.is_empty() || neg.is_empty() {
                        continue;
                    }
                    cand += 1;
                    let hp = pos.iter().cloned().fold(f64::MIN, f64::max);
                    let hn = neg.iter().cloned().fold(f64::MAX, f64::min);
                    let l = (hp - hn + margin).max(0.0);
                    sum += l;
                    if l > 0.0 {
                        act += 1;
                    }
                }
                (if cand > 0 { sum / cand as f64 } else { 0.0 }, act, cand)
            }
            LossKind::Triplet {
                mining: Mining::All,
                margin,
            } => {
                let (mut sum, mut act, mut cand) = (0.0, 0usize, 0usize);
                for a in 0..b {
                    for p in 0..b {
                        for n in 0..b {
                            if a != p && y[a] == y[p] && y[n] != y[a] {
                                cand += 1;
                                let l = (sq(a, p) - sq(a, n) + margin).max(0.0);
                                if l > 0.0 {
                                    sum += l;
                                    act += 1;
                                }
                            }
                        }
                    }
                }
                (if act > 0 { sum / act as f64 } else { 0.0 }, act, cand)
            }
            LossKind::Contrastive { margin } => {
                let (mut sum, mut act, mut cand) = (0.0, 0usize, 0usize);
                for i in 0..b {
                    for j in i + 1..b {
                        cand += 1;
                        let l = if y[i] == y[j] {
                            sq(i, j) / 2.0
                        } else {
                            (margin - eu(i, j)).max(0.0).powi(2) / 2.0
                        };
                        sum += l;
                        if l > 0.0 {
                            act += 1;
                        }
                    }
                }
                (if cand > 0 { sum / cand as f64 } else { 0.0 }, act, cand)
            }
            LossKind::Hinge { threshold, margin } => {
                let mut pos = Vec::new();
                let mut neg = Vec::new();
                for i in 0..b {
                    for j in i + 1..b {
                        if y[i] == y[j] {
                            pos.push((eu(i, j) - (threshold - margin)).max(0.0));
                        } else {
                            neg.push((threshold + margin - eu(i, j)).max(0.0));
                        }
                    }
                }
                neg.sort_by(|a, b| b.partial_cmp(a).unwrap());
                neg.truncate(pos.len());
                let used: Vec<f64> = pos.iter().chain(neg.iter()).cloned().collect();
                let act = used.iter().filter(|&&l| l > 0.0).count();
                let n = used.len();
                let loss = if n > 0 {
                    used.iter().sum::<f64>() / n as f64
                } else {
                    0.0
                };
                (loss, act, n)
            }
            LossKind::ArcFace { .. } | LossKind::CosFace { .. } => {
                unreachable!("margin losses are tested in train::margin")
            }
        }
    }

    // ---------- helpers ----------

    fn random_batch(rng: &mut SplitMix64, b: usize, d: usize, ids: usize) -> (Vec<f64>, Vec<u32>) {
        // Every identity appears at least twice when b >= 2 * ids.
        let mut labels: Vec<u32> = (0..b).map(|i| (i % ids) as u32).collect();
        for i in (1..b).rev() {
            let j = rng.below(i + 1);
            labels.swap(i, j);
        }
        let centers: Vec<Vec<f64>> = (0..ids)
            .map(|_| (0..d).map(|_| rng.normal()).collect())
            .collect();
        let data = labels
            .iter()
            .flat_map(|&l| {
                let c = centers[l as usize].clone();
                c.into_iter()
                    .map(|v| 0.6 * v + rng.normal())
                    .collect::<Vec<_>>()
            })
            .collect();
        (data, labels)
    }

    fn rows(data: &[f64], d: usize) -> Vec<Vec<f64>> {
        data.chunks(d).map(|c| c.to_vec()).collect()
    }

    fn loss_value(
        data: &[f64],
        b: usize,
        d: usize,
        labels: &[u32],
        kind: LossKind,
        norm: bool,
    ) -> f64 {
        let t = Tensor::from_vec(data.to_vec(), (b, d), &Device::Cpu).unwrap();
        let t = if norm { l2_normalize(&t).unwrap() } else { t };
        compute(&t, labels, kind)
            .unwrap()
            .loss
            .to_scalar::<f64>()
            .unwrap()
    }

    /// True when no mining decision of `kind` is within `tol` of a tie/boundary (conservative).
    fn tie_free(x: &[Vec<f64>], kind: LossKind, tol: f64) -> bool {
        let b = x.len();
        let mut sq = Vec::new();
        for i in 0..b {
            for j in i + 1..b {
                sq.push(ref_sq(&x[i], &x[j]));
            }
        }
        let eu: Vec<f64> = sq.iter().map(|v| (v + DIST_EPS).sqrt()).collect();
        let distinct = |v: &[f64]| {
            v.iter()
                .enumerate()
                .all(|(i, a)| v[i + 1..].iter().all(|c| (a - c).abs() > tol))
        };
        if !distinct(&sq) || !distinct(&eu) {
            return false;
        }
        match kind {
            LossKind::Triplet { margin, .. } => sq
                .iter()
                .all(|a| sq.iter().all(|c| (a - c + margin).abs() > tol)),
            LossKind::Contrastive { margin } => eu.iter().all(|e| (e - margin).abs() > tol),
            LossKind::Hinge { threshold, margin } => eu.iter().all(|e| {
                (e - threshold + margin).abs() > tol && (e - threshold - margin).abs() > tol
            }),
            LossKind::ArcFace { .. } | LossKind::CosFace { .. } => true,
        }
    }

    // ---------- tests ----------

    #[test]
    fn values_match_naive_reference() {
        let mut rng = SplitMix64::new(0xFACE_0001);
        for trial in 0..40 {
            let b = 8 + trial % 5;
            let ids = 3 + trial % 2;
            let d = 5;
            let (data, labels) = random_batch(&mut rng, b, d, ids);
            for norm in [false, true] {
                let x = rows(&data, d);
                let x = if norm { ref_normalize(&x) } else { x };
                let t = Tensor::from_vec(data.clone(), (b, d), &Device::Cpu).unwrap();
                let t = if norm { l2_normalize(&t).unwrap() } else { t };
                for kind in KINDS {
                    let out = compute(&t, &labels, kind).unwrap();
                    let got = out.loss.to_scalar::<f64>().unwrap();
                    let (want, act, cand) = reference(&x, &labels, kind);
                    assert!(
                        (got - want).abs() <= 1e-9 * (1.0 + want.abs()),
                        "{kind:?} norm={norm} trial={trial}: {got} vs {want}"
                    );
                    assert_eq!(out.active, act, "{kind:?} active, trial {trial}");
                    assert_eq!(out.candidates, cand, "{kind:?} candidates, trial {trial}");
                    assert_eq!(out.loss.dims(), &[] as &[usize]);
                }
            }
        }
    }

    #[test]
    fn f32_matches_f64() {
        let mut rng = SplitMix64::new(99);
        let (data, labels) = random_batch(&mut rng, 10, 5, 3);
        let t64 =
            l2_normalize(&Tensor::from_vec(data.clone(), (10, 5), &Device::Cpu).unwrap()).unwrap();
        let t32 = t64.to_dtype(DType::F32).unwrap();
        for kind in KINDS {
            let a = compute(&t64, &labels, kind).unwrap();
            let b = compute(&t32, &labels, kind).unwrap();
            assert_eq!(b.loss.dtype(), DType::F32);
            let (a, b) = (
                a.loss.to_scalar::<f64>().unwrap(),
                b.loss.to_scalar::<f32>().unwrap() as f64,
            );
            assert!((a - b).abs() < 1e-4, "{kind:?}: {a} vs {b}");
        }
    }

    #[test]
    fn squared_distances_properties() {
        let mut rng = SplitMix64::new(7);
        let (data, _) = random_batch(&mut rng, 9, 5, 3);
        let t = Tensor::from_vec(data.clone(), (9, 5), &Device::Cpu).unwrap();
        let d2 = squared_distances(&t).unwrap().to_vec2::<f64>().unwrap();
        let x = rows(&data, 5);
        for i in 0..9 {
            assert_eq!(d2[i][i], 0.0);
            for j in 0..9 {
                assert!((d2[i][j] - ref_sq(&x[i], &x[j])).abs() < 1e-12);
                assert_eq!(d2[i][j], d2[j][i]);
            }
        }
        // l2_normalize: unit rows, zero rows stay zero.
        let z = Tensor::from_vec(vec![3.0, 4.0, 0.0, 0.0], (2, 2), &Device::Cpu).unwrap();
        let n = l2_normalize(&z).unwrap().to_vec2::<f64>().unwrap();
        assert!((n[0][0] - 0.6).abs() < 1e-12 && (n[0][1] - 0.8).abs() < 1e-12);
        assert_eq!(n[1], vec![0.0, 0.0]);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (b, d) = (8, 5);
        for kind in KINDS {
            for norm in [false, true] {
                // Pick the first seed whose data is safely away from every mining boundary and
                // actually exercises the loss.
                let mut found = None;
                for seed in 0..500u64 {
                    let mut rng = SplitMix64::new(0xBEEF + seed);
                    let (data, labels) = random_batch(&mut rng, b, d, 3);
                    let x = rows(&data, d);
                    let x = if norm { ref_normalize(&x) } else { x };
                    let (_, act, _) = reference(&x, &labels, kind);
                    if act >= 2 && tie_free(&x, kind, 1e-4) {
                        found = Some((data, labels));
                        break;
                    }
                }
                let (data, labels) = found.expect("no tie-free seed");
                let var = Var::from_vec(data.clone(), (b, d), &Device::Cpu).unwrap();
                let inp = if norm {
                    l2_normalize(var.as_tensor()).unwrap()
                } else {
                    var.as_tensor().clone()
                };
                let out = compute(&inp, &labels, kind).unwrap();
                assert!(out.active > 0);
                let grads = out.loss.backward().unwrap();
                let g = grads
                    .get(var.as_tensor())
                    .expect("gradient")
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap();
                let h = 1e-6;
                let mut max_abs = 0.0f64;
                for k in 0..data.len() {
                    let mut plus = data.clone();
                    plus[k] += h;
                    let mut minus = data.clone();
                    minus[k] -= h;
                    let fd = (loss_value(&plus, b, d, &labels, kind, norm)
                        - loss_value(&minus, b, d, &labels, kind, norm))
                        / (2.0 * h);
                    max_abs = max_abs.max(fd.abs());
                    let err = (fd - g[k]).abs();
                    assert!(
                        err <= 1e-5 * fd.abs().max(g[k].abs()) + 1e-8,
                        "{kind:?} norm={norm} entry {k}: fd {fd} vs backprop {}",
                        g[k]
                    );
                }
                assert!(max_abs > 1e-3, "{kind:?}: gradient trivially zero");
            }
        }
    }

    fn check_edge(
        data: Vec<f64>,
        b: usize,
        d: usize,
        labels: &[u32],
        kind: LossKind,
    ) -> LossOutput {
        let var = Var::from_vec(data, (b, d), &Device::Cpu).unwrap();
        let inp = l2_normalize(var.as_tensor()).unwrap();
        let out = compute(&inp, labels, kind).unwrap();
        let v = out.loss.to_scalar::<f64>().unwrap();
        assert!(v.is_finite() && v >= 0.0, "{kind:?}: loss {v}");
        let grads = out.loss.backward().unwrap();
        let g = grads
            .get(var.as_tensor())
            .expect("emb must stay connected to the loss")
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert!(g.iter().all(|x| x.is_finite()), "{kind:?}: grad {g:?}");
        assert!(out.active <= out.candidates);
        out
    }

    fn grad_is_zero(data: Vec<f64>, b: usize, d: usize, labels: &[u32], kind: LossKind) -> bool {
        let var = Var::from_vec(data, (b, d), &Device::Cpu).unwrap();
        let out = compute(var.as_tensor(), labels, kind).unwrap();
        let grads = out.loss.backward().unwrap();
        let g = grads.get(var.as_tensor()).expect("connected");
        let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        g.iter().all(|&x| x == 0.0)
    }

    #[test]
    fn edge_cases() {
        let mut rng = SplitMix64::new(42);
        let (b, d) = (6, 4);
        let data: Vec<f64> = (0..b * d).map(|_| rng.normal()).collect();
        let same = vec![1u32; b];
        let distinct: Vec<u32> = (0..b as u32).collect();
        let triplets = &KINDS[..3];

        // All one label / all distinct labels: no triplet is valid.
        for &kind in triplets {
            for labels in [&same, &distinct] {
                let out = check_edge(data.clone(), b, d, labels, kind);
                assert_eq!(out.loss.to_scalar::<f64>().unwrap(), 0.0);
                assert_eq!(out.active, 0);
                assert!(grad_is_zero(data.clone(), b, d, labels, kind));
            }
            let out = check_edge(data.clone(), b, d, &same, kind);
            let want_cand = match kind {
                LossKind::Triplet {
                    mining: Mining::SemiHard,
                    ..
                } => b * (b - 1), // (a, p) pairs exist, no negatives
                _ => 0,
            };
            assert_eq!(out.candidates, want_cand, "{kind:?}");
        }
        // Contrastive: all-same still has same pairs; all-distinct has different pairs.
        let c = LossKind::Contrastive { margin: 1.0 };
        let out = check_edge(data.clone(), b, d, &same, c);
        assert_eq!((out.active, out.candidates), (15, 15));
        let out = check_edge(data.clone(), b, d, &distinct, c);
        assert_eq!(out.candidates, 15);
        // Hinge: all distinct → no same pair → nothing used.
        let h = LossKind::Hinge {
            threshold: 0.6,
            margin: 0.04,
        };
        let out = check_edge(data.clone(), b, d, &distinct, h);
        assert_eq!((out.active, out.candidates), (0, 0));
        assert!(grad_is_zero(data.clone(), b, d, &distinct, h));
        let out = check_edge(data.clone(), b, d, &same, h);
        assert_eq!(out.candidates, 15);

        // B = 1 and B = 0.
        for kind in KINDS {
            let out = check_edge(vec![0.3, -0.2, 0.1, 0.9], 1, d, &[5], kind);
            assert_eq!((out.active, out.candidates), (0, 0));
            assert!(grad_is_zero(vec![0.3, -0.2, 0.1, 0.9], 1, d, &[5], kind));
            let e = Tensor::zeros((0, d), DType::F64, &Device::Cpu).unwrap();
            let out = compute(&e, &[], kind).unwrap();
            assert_eq!(out.loss.to_scalar::<f64>().unwrap(), 0.0);
        }

        // Wrong label count → error, not panic.
        let t = Tensor::from_vec(data.clone(), (b, d), &Device::Cpu).unwrap();
        assert!(compute(&t, &[1, 2], KINDS[0]).is_err());

        // Zero margin.
        let labels = [0u32, 0, 1, 1, 2, 2];
        let semi0 = LossKind::Triplet {
            mining: Mining::SemiHard,
            margin: 0.0,
        };
        let out = check_edge(data.clone(), b, d, &labels, semi0);
        assert_eq!(out.active, 0);
        assert_eq!(out.candidates, 6);
        assert_eq!(out.loss.to_scalar::<f64>().unwrap(), 0.0);
        for kind in [
            LossKind::Triplet {
                mining: Mining::BatchHard,
                margin: 0.0,
            },
            LossKind::Triplet {
                mining: Mining::All,
                margin: 0.0,
            },
            LossKind::Contrastive { margin: 0.0 },
            LossKind::Hinge {
                threshold: 0.6,
                margin: 0.0,
            },
        ] {
            check_edge(data.clone(), b, d, &labels, kind);
        }

        // Duplicate embeddings (d = 0 everywhere, including across identities), and zero rows.
        let row = [0.5, -1.0, 2.0, 0.25];
        let dup: Vec<f64> = (0..b).flat_map(|_| row).collect();
        for kind in KINDS {
            let out = check_edge(dup.clone(), b, d, &labels, kind);
            let v = out.loss.to_scalar::<f64>().unwrap();
            match kind {
                // d_ap = d_an = 0: loss is exactly the margin for batch-hard / batch-all.
                LossKind::Triplet {
                    mining: Mining::BatchHard | Mining::All,
                    margin,
                } => assert!((v - margin).abs() < 1e-9),
                // No negative is strictly farther than the positive.
                LossKind::Triplet {
                    mining: Mining::SemiHard,
                    ..
                } => assert_eq!(out.active, 0),
                _ => {}
            }
            check_edge(vec![0.0; b * d], b, d, &labels, kind);
        }
    }

    #[test]
    fn training_decreases_loss() {
        let (n, d_in, d_out, ids) = (16, 12, 6, 4);
        let kinds = [
            LossKind::Triplet {
                mining: Mining::SemiHard,
                margin: 0.2,
            },
            LossKind::Triplet {
                mining: Mining::BatchHard,
                margin: 0.2,
            },
            LossKind::Triplet {
                mining: Mining::All,
                margin: 0.2,
            },
            LossKind::Contrastive { margin: 1.0 },
            LossKind::Hinge {
                threshold: 0.6,
                margin: 0.04,
            },
        ];
        for kind in kinds {
            let mut rng = SplitMix64::new(2024);
            let labels: Vec<u32> = (0..n).map(|i| (i % ids) as u32).collect();
            let centers: Vec<Vec<f64>> = (0..ids)
                .map(|_| (0..d_in).map(|_| rng.normal()).collect())
                .collect();
            let xs: Vec<f64> = labels
                .iter()
                .flat_map(|&l| {
                    centers[l as usize]
                        .iter()
                        .map(|c| c + 0.8 * rng.normal())
                        .collect::<Vec<_>>()
                })
                .collect();
            let x = Tensor::from_vec(xs, (n, d_in), &Device::Cpu).unwrap();
            let w0: Vec<f64> = (0..d_in * d_out).map(|_| 0.3 * rng.normal()).collect();
            let w = Var::from_vec(w0, (d_in, d_out), &Device::Cpu).unwrap();
            let mut opt = AdamW::new(
                vec![w.clone()],
                ParamsAdamW {
                    lr: 0.02,
                    weight_decay: 0.0,
                    ..Default::default()
                },
            )
            .unwrap();
            let normalize = !matches!(kind, LossKind::Hinge { .. });
            let step = |w: &Var| {
                let e = x.matmul(w.as_tensor()).unwrap();
                let e = if normalize {
                    l2_normalize(&e).unwrap()
                } else {
                    e
                };
                compute(&e, &labels, kind).unwrap()
            };
            let first = step(&w).loss.to_scalar::<f64>().unwrap();
            assert!(first > 0.0, "{kind:?}");
            for _ in 0..150 {
                let out = step(&w);
                opt.backward_step(&out.loss).unwrap();
            }
            let last = step(&w).loss.to_scalar::<f64>().unwrap();
            eprintln!("{kind:?}: {first:.5} -> {last:.5}");
            assert!(last < 0.3 * first, "{kind:?}: {first} -> {last}");
        }
    }
}
