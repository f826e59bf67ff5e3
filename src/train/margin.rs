//! The additive-margin softmax heads of `facekit train --loss arcface|cosface`, for training
//! only: a weight vector per training identity, and softmax cross-entropy on the scaled cosines
//! between the L2-normalised embedding and the L2-normalised class weights, the true class's
//! cosine penalised by a margin. The embedding the model saves is taken before this head.
//!
//! With `cos_j` the cosine to class `j` and `y` the true class, the logits are
//! - ArcFace (Deng et al. 2019): `s * cos(theta_y + m)` for `y` (`theta_y = acos(cos_y)`,
//!   computed as `cos_y cos m - sin_y sin m`), and, past `theta_y + m > pi` where that stops
//!   decreasing, `s * (cos_y - m sin m)` (insightface's linear continuation);
//! - CosFace (Wang et al. 2018): `s * (cos_y - m)` for `y`;
//!
//! and `s * cos_j` for every other class. The class weights are variables trained with the
//! model (and checkpointed with it).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var, D};

use super::loss::{l2_normalize, LossKind, LossOutput};
use crate::{Error, Result};

/// Class weights `[classes, dim]` and the class of each training identity.
pub struct MarginHead {
    weight: Var,
    class_of: BTreeMap<u32, u32>,
}

impl MarginHead {
    /// A head whose class `i` stands for identity `identities[i]`, with weights `init`
    /// (row-major `[identities.len(), dim]`).
    pub fn new(init: Vec<f32>, identities: &[u32], dim: usize) -> Result<Self> {
        if init.len() != identities.len() * dim || identities.is_empty() {
            return Err(Error::Config(format!(
                "class weights: {} values for {} classes of {dim}",
                init.len(),
                identities.len()
            )));
        }
        let class_of = identities
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, i as u32))
            .collect();
        Ok(MarginHead {
            weight: Var::from_vec(init, (identities.len(), dim), &Device::Cpu)?,
            class_of,
        })
    }

    /// A head whose class weights start at the mean direction of each identity's embeddings
    /// (`embeddings[i]` has identity `labels[i]`; classes in identity order): fine-tuning then
    /// starts from a classifier that already fits the pretrained embedding, instead of sending
    /// random gradients into it.
    pub fn from_centres(embeddings: &[Vec<f32>], labels: &[u32]) -> Result<Self> {
        let dim = embeddings.first().map_or(0, Vec::len);
        let mut sums: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
        for (e, &l) in embeddings.iter().zip(labels) {
            let n = e
                .iter()
                .map(|v| (v * v) as f64)
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            let s = sums.entry(l).or_insert_with(|| vec![0.0; dim]);
            s.iter_mut().zip(e).for_each(|(s, &v)| *s += v as f64 / n);
        }
        let identities: Vec<u32> = sums.keys().copied().collect();
        let mut init = Vec::with_capacity(identities.len() * dim);
        for s in sums.values() {
            let n = s.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            init.extend(s.iter().map(|v| (v / n) as f32));
        }
        Self::new(init, &identities, dim)
    }

    /// The head with its class weights on `device`.
    pub fn to_device(self, device: &Device) -> Result<Self> {
        Ok(MarginHead {
            weight: super::var_to_device(self.weight, device)?,
            ..self
        })
    }

    /// The class weights (a training variable).
    pub fn var(&self) -> Var {
        self.weight.clone()
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.class_of.len()
    }

    /// The class indices of `labels`.
    fn targets(&self, labels: &[u32]) -> candle_core::Result<Vec<u32>> {
        labels
            .iter()
            .map(|l| {
                self.class_of.get(l).copied().ok_or_else(|| {
                    candle_core::Error::Msg(format!("identity {l} has no class weight"))
                })
            })
            .collect()
    }

    /// The logits `[B, classes]` of embeddings `emb` (`[B, dim]`, normalised here) whose
    /// identities are `labels`, for `kind` (ArcFace or CosFace).
    pub fn logits(
        &self,
        emb: &Tensor,
        labels: &[u32],
        kind: LossKind,
    ) -> candle_core::Result<Tensor> {
        let (scale, margin) = match kind {
            LossKind::ArcFace { scale, margin } | LossKind::CosFace { scale, margin } => {
                (scale, margin)
            }
            _ => candle_core::bail!("{kind:?} is not a margin softmax loss"),
        };
        let (b, _) = emb.dims2()?;
        if labels.len() != b {
            candle_core::bail!("{} labels for {b} embeddings", labels.len());
        }
        let targets = self.targets(labels)?;
        let c = self.classes();
        let mut onehot = vec![0f32; b * c];
        for (i, &t) in targets.iter().enumerate() {
            onehot[i * c + t as usize] = 1.0;
        }
        let onehot = Tensor::from_vec(onehot, (b, c), emb.device())?.to_dtype(emb.dtype())?;
        let cos = l2_normalize(emb)?.matmul(&l2_normalize(self.weight.as_tensor())?.t()?)?;
        let target = (&cos * &onehot)?.sum_keepdim(1)?; // [B, 1]
        let adjusted = match kind {
            LossKind::CosFace { .. } => (&target - margin)?,
            _ => {
                // cos(theta + m) = cos cos m - sin sin m, sin = sqrt(1 - cos^2) (kept off 0).
                let sin = target.sqr()?.affine(-1.0, 1.0)?.clamp(1e-6, 1.0)?.sqrt()?;
                let arc = (target.affine(margin.cos(), 0.0)? - sin.affine(margin.sin(), 0.0)?)?;
                // theta + m > pi (cos_y < cos(pi - m)): the linear continuation.
                let limit = (std::f64::consts::PI - margin).cos();
                let host = target.detach().to_dtype(DType::F64)?.flatten_all()?;
                let keep: Vec<f32> = host
                    .to_vec1::<f64>()?
                    .iter()
                    .map(|&t| f32::from(t > limit))
                    .collect();
                let keep = Tensor::from_vec(keep, (b, 1), emb.device())?.to_dtype(emb.dtype())?;
                let linear = (&target - margin * margin.sin())?;
                ((arc * &keep)? + (linear * keep.affine(-1.0, 1.0)?)?)?
            }
        };
        (cos + onehot.broadcast_mul(&(adjusted - target)?)?)? * scale
    }

    /// The loss (mean cross-entropy of [`Self::logits`]); `active` counts the rows whose true
    /// class does not win under the margin, `candidates` the rows.
    pub fn loss(
        &self,
        emb: &Tensor,
        labels: &[u32],
        kind: LossKind,
    ) -> candle_core::Result<LossOutput> {
        let logits = self.logits(emb, labels, kind)?;
        let targets = self.targets(labels)?;
        let winners = logits.detach().argmax(D::Minus1)?.to_vec1::<u32>()?;
        let active = winners.iter().zip(&targets).filter(|(w, t)| w != t).count();
        let t = Tensor::from_vec(targets, labels.len(), emb.device())?;
        Ok(LossOutput {
            loss: candle_nn::loss::cross_entropy(&logits, &t)?,
            active,
            candidates: labels.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two embeddings, three classes in 2-D, worked out by hand with `acos`/`cos`.
    #[test]
    fn logits_and_loss_match_a_hand_computation() {
        let emb = Tensor::new(&[[1.6f32, -1.2], [0.6, 0.8]], &Device::Cpu).unwrap();
        // Class weights: (1, 0), (0, 2) and (-1, 1); identities 7, 3 and 5.
        let head = MarginHead::new(vec![1.0, 0.0, 0.0, 2.0, -1.0, 1.0], &[7, 3, 5], 2).unwrap();
        let labels = [7u32, 3];
        let r = std::f64::consts::FRAC_1_SQRT_2;
        let (s, m) = (10.0, 0.5);
        for kind in [
            LossKind::ArcFace {
                scale: s,
                margin: m,
            },
            LossKind::CosFace {
                scale: s,
                margin: m,
            },
        ] {
            let target = |c: f64| match kind {
                LossKind::ArcFace { .. } => (c.acos() + m).cos(),
                _ => c - m,
            };
            let want = [
                [s * target(0.8), s * -0.6, s * -1.4 * r],
                [s * 0.6, s * target(0.8), s * 0.2 * r],
            ];
            let got = head
                .logits(&emb, &labels, kind)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                assert!(
                    (*g as f64 - w).abs() < 1e-4,
                    "{kind:?}: {got:?} vs {want:?}"
                );
            }
            // Mean cross-entropy, the true classes 0 and 1.
            let ce = |row: &[f64; 3], t: usize| {
                let z: f64 = row.iter().map(|v| v.exp()).sum();
                z.ln() - row[t]
            };
            let want_loss = (ce(&want[0], 0) + ce(&want[1], 1)) / 2.0;
            let out = head.loss(&emb, &labels, kind).unwrap();
            let got_loss = out.loss.to_scalar::<f32>().unwrap() as f64;
            assert!(
                (got_loss - want_loss).abs() < 1e-4,
                "{got_loss} vs {want_loss}"
            );
            assert_eq!(out.candidates, 2);
            // Gradients reach the class weights.
            let grads = out.loss.backward().unwrap();
            let g = grads.get(head.var().as_tensor()).unwrap();
            assert!(
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
            );
        }
        // Past theta + m > pi ArcFace continues linearly: cos_y = -0.99, m = 0.5.
        let far = Tensor::new(&[[-0.99f32, (1.0f32 - 0.99 * 0.99).sqrt()]], &Device::Cpu).unwrap();
        let got = head
            .logits(
                &far,
                &[7],
                LossKind::ArcFace {
                    scale: 1.0,
                    margin: m,
                },
            )
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!(
            (got[0][0] as f64 - (-0.99 - m * m.sin())).abs() < 1e-5,
            "{got:?}"
        );
    }

    /// The backward pass of both losses against central finite differences (f64), w.r.t. the
    /// embeddings and the class weights.
    #[test]
    fn gradients_match_finite_differences() {
        let mut r = crate::rng::Rng::new(8);
        let (b, c, d) = (6, 4, 5);
        let e0: Vec<f64> = (0..b * d).map(|_| r.normal()).collect();
        let w0: Vec<f64> = (0..c * d).map(|_| r.normal()).collect();
        let labels = [0u32, 1, 2, 3, 0, 1];
        for kind in [
            LossKind::ArcFace {
                scale: 8.0,
                margin: 0.4,
            },
            LossKind::CosFace {
                scale: 8.0,
                margin: 0.3,
            },
        ] {
            let loss = |e: &[f64], w: &[f64]| -> (f64, Vec<f64>, Vec<f64>) {
                let head = MarginHead {
                    weight: Var::from_vec(w.to_vec(), (c, d), &Device::Cpu).unwrap(),
                    class_of: (0..c as u32).map(|i| (i, i)).collect(),
                };
                let emb = Var::from_vec(e.to_vec(), (b, d), &Device::Cpu).unwrap();
                let out = head.loss(emb.as_tensor(), &labels, kind).unwrap();
                let g = out.loss.backward().unwrap();
                let flat = |t: &Tensor| {
                    g.get(t)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f64>()
                        .unwrap()
                };
                (
                    out.loss.to_scalar::<f64>().unwrap(),
                    flat(emb.as_tensor()),
                    flat(head.weight.as_tensor()),
                )
            };
            let (_, ge, gw) = loss(&e0, &w0);
            let eps = 1e-6;
            let (mut num, mut den) = (0f64, 0f64);
            for i in 0..e0.len() + w0.len() {
                let (mut ep, mut wp) = (e0.clone(), w0.clone());
                let (mut em, mut wm) = (e0.clone(), w0.clone());
                let analytic = if i < e0.len() {
                    ep[i] += eps;
                    em[i] -= eps;
                    ge[i]
                } else {
                    wp[i - e0.len()] += eps;
                    wm[i - e0.len()] -= eps;
                    gw[i - e0.len()]
                };
                let fd = (loss(&ep, &wp).0 - loss(&em, &wm).0) / (2.0 * eps);
                num += (fd - analytic).powi(2);
                den += fd.powi(2);
            }
            let rel = (num / den).sqrt();
            assert!(rel < 1e-5, "{kind:?}: relative error {rel}");
        }
    }

    #[test]
    fn class_centres_start_at_the_mean_direction() {
        let emb = vec![
            vec![3.0f32, 0.0],
            vec![0.0, 1.0],
            vec![0.0, 2.0],
            vec![1.0, 1.0],
        ];
        let head = MarginHead::from_centres(&emb, &[4, 2, 2, 4]).unwrap();
        let w = head.var().as_tensor().to_vec2::<f32>().unwrap();
        // Identity 2 (class 0): (0, 1); identity 4 (class 1): (1, 0) + (0.707, 0.707), normalised.
        assert_eq!(w[0], vec![0.0, 1.0]);
        let (x, y) = (1.0 + 0.5f32.sqrt(), 0.5f32.sqrt());
        let n = x.hypot(y);
        assert!((w[1][0] - x / n).abs() < 1e-6 && (w[1][1] - y / n).abs() < 1e-6);
    }
}
