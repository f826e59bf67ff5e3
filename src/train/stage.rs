//! The last stage of dlib's ResNet as trainable variables (`facekit train --train-layers
//! last-stage`): the four 256-channel residual blocks (10-13) and the final fc layer, written
//! with differentiable candle ops that compute exactly what the inference network
//! ([`crate::embed::dlib_resnet`]) does. The frozen blocks before them run once per face; their
//! output (128 x 8 x 8 per chip) is the dataset row.

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};

use super::Trainable;
use crate::embed::dlib_resnet::FEATURES;
use crate::models::{ModelSource, DLIB_RESNET};
use crate::{Error, Result};

/// Index of the first trainable residual block.
pub const FIRST_BLOCK: usize = 10;
/// Shape of one chip's input to the stage: the output of block 9.
pub const INPUT: (usize, usize, usize) = (128, 8, 8);
/// (input channels, output channels, down-sampling) of blocks 10-13.
const PLAN: [(usize, usize, bool); 4] = [
    (128, 256, true),
    (256, 256, false),
    (256, 256, false),
    (256, 256, true),
];
/// Tensors of one block, as named in `dlib_resnet.safetensors`.
pub(super) const PARTS: [&str; 8] = [
    "conv1.weight",
    "conv1.bias",
    "affine1.weight",
    "affine1.bias",
    "conv2.weight",
    "conv2.bias",
    "affine2.weight",
    "affine2.bias",
];

/// Blocks 10-13 and the fc layer, trainable. With `flip`, a dataset row holds the stage inputs
/// of a chip and of its mirror image, and the pooled features of the two are averaged (as the
/// pipeline's flip averaging does).
pub struct Stage {
    names: Vec<String>,
    vars: Vec<Var>,
    flip: bool,
}

/// Average pooling 2x2 / 2 that drops an odd last row or column (dlib's, and candle's forward),
/// written so that its gradient ignores the dropped cells too.
pub(super) fn avg_pool2(x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (h2, w2) = (h / 2, w / 2);
    x.narrow(2, 0, 2 * h2)?
        .narrow(3, 0, 2 * w2)?
        .contiguous()?
        .reshape((n, c, h2, 2, w2, 2))?
        .sum(5)?
        .sum(3)?
        .affine(0.25, 0.0)
}

/// dlib's `add_prev`: the smaller tensor is zero-padded (channels, rows, columns) to the
/// larger one's shape, then the two are added and passed through relu.
pub(super) fn add_padded_relu(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (_, ca, ha, wa) = a.dims4()?;
    let (_, cb, hb, wb) = b.dims4()?;
    let (c, h, w) = (ca.max(cb), ha.max(hb), wa.max(wb));
    let pad = |t: &Tensor, tc: usize, th: usize, tw: usize| -> candle_core::Result<Tensor> {
        let mut t = t.clone();
        for (dim, have, want) in [(1, tc, c), (2, th, h), (3, tw, w)] {
            if have < want {
                t = t.pad_with_zeros(dim, 0, want - have)?;
            }
        }
        Ok(t)
    };
    (pad(a, ca, ha, wa)? + pad(b, cb, hb, wb)?)?.relu()
}

impl Stage {
    /// The stage with dlib's pretrained weights from `source`.
    pub fn pretrained(source: &ModelSource, flip: bool) -> Result<Self> {
        let bytes = source.read(DLIB_RESNET)?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        Self::from_tensors(&tensors, flip)
    }

    fn from_tensors(tensors: &HashMap<String, Tensor>, flip: bool) -> Result<Self> {
        let mut names = Vec::new();
        for b in FIRST_BLOCK..FIRST_BLOCK + PLAN.len() {
            for part in PARTS {
                names.push(format!("layers.{b}.{part}"));
            }
        }
        names.push("fc.weight".into());
        let vars = names
            .iter()
            .map(|n| {
                let t = tensors.get(n).ok_or_else(|| Error::Model {
                    name: DLIB_RESNET.into(),
                    reason: format!("no tensor {n}"),
                })?;
                Ok(Var::from_tensor(&t.to_dtype(candle_core::DType::F32)?)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Stage { names, vars, flip })
    }

    /// The stage with its variables on `device` (unchanged when they are there already).
    pub fn to_device(self, device: &Device) -> Result<Self> {
        Ok(Stage {
            vars: super::vars_to_device(self.vars, device)?,
            ..self
        })
    }

    fn get(&self, name: &str) -> candle_core::Result<&Tensor> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| self.vars[i].as_tensor())
            .ok_or_else(|| candle_core::Error::Msg(format!("stage has no {name}")))
    }

    /// One residual block: conv -> affine -> relu -> conv -> affine, added to the (pooled)
    /// input with zero padding, relu.
    fn block(&self, x: &Tensor, b: usize, down: bool) -> candle_core::Result<Tensor> {
        let p = |part: &str| self.get(&format!("layers.{b}.{part}"));
        let col = |t: &Tensor| t.reshape((1, t.dim(0)?, 1, 1));
        let (stride, pad) = if down { (2, 0) } else { (1, 1) };
        let conv_affine = |x: &Tensor, i: usize, stride: usize, pad: usize| {
            super::conv::conv2d(x, p(&format!("conv{i}.weight"))?, stride, pad)?
                .broadcast_add(&col(p(&format!("conv{i}.bias"))?)?)?
                .broadcast_mul(&col(p(&format!("affine{i}.weight"))?)?)?
                .broadcast_add(&col(p(&format!("affine{i}.bias"))?)?)
        };
        let y = conv_affine(x, 1, stride, pad)?.relu()?;
        let y = conv_affine(&y, 2, 1, 1)?;
        let skip = if down { avg_pool2(x)? } else { x.clone() };
        add_padded_relu(&skip, &y)
    }

    /// Pooled 256-d features of stage inputs `[B, 128, 8, 8]`.
    pub fn pooled(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for (k, &(_, _, down)) in PLAN.iter().enumerate() {
            x = self.block(&x, FIRST_BLOCK + k, down)?;
        }
        x.mean((2, 3))
    }

    /// The trained tensors other than the fc layer, named as in `dlib_resnet.safetensors`.
    pub fn backbone_tensors(&self) -> Result<Vec<crate::embed::head::NamedTensor>> {
        super::resnet::backbone_tensors(&self.names, &self.vars)
    }

    /// The fc layer's weight, `[128, 256]` row-major.
    pub fn fc_weight(&self) -> Result<Vec<f32>> {
        Ok(self.get("fc.weight")?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Length of a dataset row: one chip's stage input, or two with flip.
    pub fn row_len(&self) -> usize {
        INPUT.0 * INPUT.1 * INPUT.2 * if self.flip { 2 } else { 1 }
    }
}

impl Trainable for Stage {
    fn vars(&self) -> Vec<Var> {
        self.vars.clone()
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b = x.dim(0)?;
        let (c, h, w) = INPUT;
        let pooled = if self.flip {
            // [B, 2 * chw] -> [2B, c, h, w]: each row's chip, then its mirror.
            let both = x.reshape((b * 2, c, h, w))?;
            self.pooled(&both)?.reshape((b, 2, FEATURES))?.mean(1)?
        } else {
            self.pooled(&x.reshape((b, c, h, w))?)?
        };
        pooled.matmul(&self.get("fc.weight")?.t()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::dlib_resnet::{normalise_chip, DlibResNet, CHIP_SIZE};

    /// The trainable stage on top of the frozen prefix gives the inference network's embedding.
    #[test]
    fn stage_matches_the_inference_network() {
        let source = ModelSource::Embedded;
        let vb = source.var_builder(DLIB_RESNET, &Device::Cpu).unwrap();
        let net = DlibResNet::new(vb).unwrap();
        let chip = image::open(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/dlib_chips/2008_001322_0.png"
        ))
        .unwrap()
        .to_rgb8();
        let mut data = vec![0f32; 3 * CHIP_SIZE * CHIP_SIZE];
        normalise_chip(chip.as_raw(), &mut data);
        let x = Tensor::from_vec(data, (1, 3, CHIP_SIZE, CHIP_SIZE), &Device::Cpu).unwrap();
        let want = net
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let prefix = net.prefix(&x, FIRST_BLOCK).unwrap();
        assert_eq!(prefix.dims(), &[1, INPUT.0, INPUT.1, INPUT.2]);
        let stage = Stage::pretrained(&source, false).unwrap();
        let got = stage
            .forward(&prefix.flatten_from(1).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let d = crate::distance::euclidean(&want, &got);
        assert!(d < 1e-4, "stage differs from the network by {d}");
        // Gradients reach every variable.
        let loss = stage
            .forward(&prefix.flatten_from(1).unwrap())
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        for v in stage.vars() {
            assert!(grads.get(v.as_tensor()).is_some());
        }
    }
}
