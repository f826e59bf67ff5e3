//! The whole dlib ResNet as trainable variables (`facekit train --train-layers all`): the 7x7
//! stem, all 14 residual blocks (29 convolutions with their affine layers) and the final fc
//! layer, written with differentiable candle ops (and [`super::maxpool`] for the stem's 3x3 / 2
//! max-pool) that compute what the inference network ([`crate::embed::dlib_resnet`]) does.
//! Each affine layer is folded into the convolution before it inside the graph
//! (`conv(x, gamma W) + gamma b + beta`), as the inference network folds it, so gradients reach
//! the convolution and the affine parameters alike while only two activations per convolution
//! are kept for the backward pass.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};

use super::stage::{add_padded_relu, avg_pool2};
use super::Trainable;
use crate::embed::dlib_resnet::{CHIP_SIZE, FEATURES, PLAN};
use crate::models::{ModelSource, DLIB_RESNET};
use crate::{Error, Result};

/// Values in one chip's input: `3 x 150 x 150`.
pub const CHIP_VALUES: usize = 3 * CHIP_SIZE * CHIP_SIZE;

/// The names of every tensor of `dlib_resnet.safetensors`, the fc layer last.
pub fn tensor_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "conv1.weight",
        "conv1.bias",
        "affine1.weight",
        "affine1.bias",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for b in 0..PLAN.len() {
        for part in super::stage::PARTS {
            names.push(format!("layers.{b}.{part}"));
        }
    }
    names.push("fc.weight".into());
    names
}

/// The network, every tensor a variable. Its input is `[B, V, 3, 150, 150]` normalised chips
/// (see [`crate::embed::dlib_resnet::normalise_chip`]): `V` views of each face (the chip, or
/// the chip and its mirror image) whose pooled features are averaged before the fc layer, as
/// the pipeline's flip averaging does.
pub struct ResNet {
    names: Vec<String>,
    vars: Vec<Var>,
    index: HashMap<String, usize>,
}

impl ResNet {
    /// The network with dlib's pretrained weights from `source`.
    pub fn pretrained(source: &ModelSource) -> Result<Self> {
        Self::pretrained_as(source, DType::F32)
    }

    /// The pretrained network with variables of type `dtype` (f64 for gradient checks).
    pub fn pretrained_as(source: &ModelSource, dtype: DType) -> Result<Self> {
        let bytes = source.read(DLIB_RESNET)?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        Self::from_tensors(&tensors, dtype)
    }

    /// The network from named tensors (as in `dlib_resnet.safetensors`), as `dtype`.
    pub fn from_tensors(tensors: &HashMap<String, Tensor>, dtype: DType) -> Result<Self> {
        let names = tensor_names();
        let vars = names
            .iter()
            .map(|n| {
                let t = tensors.get(n).ok_or_else(|| Error::Model {
                    name: DLIB_RESNET.into(),
                    reason: format!("no tensor {n}"),
                })?;
                Ok(Var::from_tensor(&t.to_dtype(dtype)?)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        Ok(ResNet { names, vars, index })
    }

    /// The network with its variables on `device` (unchanged when they are there already).
    pub fn to_device(self, device: &Device) -> Result<Self> {
        Ok(ResNet {
            vars: super::vars_to_device(self.vars, device)?,
            ..self
        })
    }

    /// A variable's value; `detached` cuts it from the graph (evaluation keeps no activations).
    fn get(&self, name: &str, detached: bool) -> candle_core::Result<Tensor> {
        let i = *self
            .index
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("the network has no {name}")))?;
        let t = self.vars[i].as_tensor();
        Ok(if detached { t.detach() } else { t.clone() })
    }

    /// `conv(x, gamma W) + (gamma b + beta)`: convolution `prefix.conv` and affine
    /// `prefix.affine`, folded as the inference network folds them.
    #[allow(clippy::too_many_arguments)]
    fn conv_affine(
        &self,
        x: &Tensor,
        prefix: &str,
        conv: &str,
        affine: &str,
        stride: usize,
        pad: usize,
        detached: bool,
    ) -> candle_core::Result<Tensor> {
        let p = |n: &str| self.get(&format!("{prefix}{n}"), detached);
        let w = p(&format!("{conv}.weight"))?;
        let b = p(&format!("{conv}.bias"))?;
        let gamma = p(&format!("{affine}.weight"))?;
        let beta = p(&format!("{affine}.bias"))?;
        let c = gamma.dim(0)?;
        let w = w.broadcast_mul(&gamma.reshape((c, 1, 1, 1))?)?;
        let b = ((b * &gamma)? + beta)?;
        super::conv::conv2d(x, &w, stride, pad)?.broadcast_add(&b.reshape((1, c, 1, 1))?)
    }

    /// Pooled 256-d features `[N, 256]` of normalised chips `[N, 3, 150, 150]`.
    pub fn pooled(&self, x: &Tensor, detached: bool) -> candle_core::Result<Tensor> {
        let x = self
            .conv_affine(x, "", "conv1", "affine1", 2, 0, detached)?
            .relu()?;
        let mut x = super::maxpool::max_pool(&x, 3, 2)?;
        for (b, &(_, _, down)) in PLAN.iter().enumerate() {
            let pre = format!("layers.{b}.");
            let (stride, pad) = if down { (2, 0) } else { (1, 1) };
            let y = self
                .conv_affine(&x, &pre, "conv1", "affine1", stride, pad, detached)?
                .relu()?;
            let y = self.conv_affine(&y, &pre, "conv2", "affine2", 1, 1, detached)?;
            let skip = if down { avg_pool2(&x)? } else { x };
            x = add_padded_relu(&skip, &y)?;
        }
        x.mean((2, 3))
    }

    /// Embeddings `[B, 128]` of `[B, V, 3, 150, 150]` chips (views averaged).
    fn run(&self, x: &Tensor, detached: bool) -> candle_core::Result<Tensor> {
        let (b, views) = (x.dim(0)?, x.dim(1)?);
        let chips = x.reshape((b * views, 3, CHIP_SIZE, CHIP_SIZE))?;
        let mut pooled = self.pooled(&chips, detached)?;
        if views > 1 {
            pooled = pooled.reshape((b, views, FEATURES))?.mean(1)?;
        }
        pooled.matmul(&self.get("fc.weight", detached)?.t()?)
    }

    /// The variables with their names (as in `dlib_resnet.safetensors`).
    pub fn named_vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.names.iter().map(String::as_str).zip(&self.vars)
    }

    /// Every tensor but the fc layer, named as in `dlib_resnet.safetensors`.
    pub fn backbone_tensors(&self) -> Result<Vec<crate::embed::head::NamedTensor>> {
        backbone_tensors(&self.names, &self.vars)
    }

    /// The fc layer's weight, `[128, 256]` row-major.
    pub fn fc_weight(&self) -> Result<Vec<f32>> {
        Ok(self
            .get("fc.weight", true)?
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?)
    }
}

impl Trainable for ResNet {
    fn vars(&self) -> Vec<Var> {
        self.vars.clone()
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.run(x, false)
    }

    fn evaluate(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.run(x, true)
    }
}

/// The variables `vars` named `names` (as in `dlib_resnet.safetensors`), all but the fc layer,
/// as f32 values: what a trained model saves in place of dlib's backbone.
pub(crate) fn backbone_tensors(
    names: &[String],
    vars: &[Var],
) -> Result<Vec<crate::embed::head::NamedTensor>> {
    names
        .iter()
        .zip(vars)
        .filter(|(n, _)| n.as_str() != "fc.weight")
        .map(|(n, v)| {
            let t = v.as_tensor();
            Ok((
                n.clone(),
                t.dims().to_vec(),
                t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            ))
        })
        .collect()
}
