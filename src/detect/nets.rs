//! The three MTCNN networks (P-Net, R-Net, O-Net) as facenet-pytorch defines them.
//!
//! Weight names mirror facenet-pytorch's state dicts (`conv1`, `prelu1`, `dense4`, ...), so each
//! builder reads like the module it ports. Every max-pool uses PyTorch's `ceil_mode=True`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{conv2d, linear, prelu, Conv2d, Conv2dConfig, Linear, PReLU, VarBuilder};

/// A 3x3 (or 2x2, 1x1) stride-1, unpadded convolution with bias.
fn conv(c_in: usize, c_out: usize, k: usize, vb: VarBuilder) -> Result<Conv2d> {
    conv2d(c_in, c_out, k, Conv2dConfig::default(), vb)
}

/// Max-pool with PyTorch's `ceil_mode=True`: the last, partial window is kept.
///
/// Padding the bottom/right edge by replicating the last row/column is exact for a max: every
/// partial window already contains the row/column being replicated.
fn max_pool_ceil(x: &Tensor, k: usize, s: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    // Input extent the ceil-mode output needs: (out - 1) * s + k with out = ceil((n - k) / s) + 1.
    let needed = |n: usize| n.saturating_sub(k).div_ceil(s) * s + k;
    let pad_h = needed(h) - h;
    let pad_w = needed(w) - w;
    let x = if pad_h > 0 {
        x.pad_with_same(2, 0, pad_h)?
    } else {
        x.clone()
    };
    let x = if pad_w > 0 {
        x.pad_with_same(3, 0, pad_w)?
    } else {
        x
    };
    x.max_pool2d_with_stride(k, s)
}

/// Flatten NCHW in (W, H, C) order, as facenet-pytorch's `permute(0, 3, 2, 1)` does.
fn flatten_whc(x: &Tensor) -> Result<Tensor> {
    x.permute((0, 3, 2, 1))?.contiguous()?.flatten_from(1)
}

/// Proposal network: fully convolutional, 12x12 receptive field, stride 2.
pub struct PNet {
    conv1: Conv2d,
    prelu1: PReLU,
    conv2: Conv2d,
    prelu2: PReLU,
    conv3: Conv2d,
    prelu3: PReLU,
    conv4_1: Conv2d,
    conv4_2: Conv2d,
}

impl PNet {
    /// Builds P-Net from `pnet.*` weights.
    pub fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: conv(3, 10, 3, vb.pp("conv1"))?,
            prelu1: prelu(Some(10), vb.pp("prelu1"))?,
            conv2: conv(10, 16, 3, vb.pp("conv2"))?,
            prelu2: prelu(Some(16), vb.pp("prelu2"))?,
            conv3: conv(16, 32, 3, vb.pp("conv3"))?,
            prelu3: prelu(Some(32), vb.pp("prelu3"))?,
            conv4_1: conv(32, 2, 1, vb.pp("conv4_1"))?,
            conv4_2: conv(32, 4, 1, vb.pp("conv4_2"))?,
        })
    }

    /// Returns (regression `[N,4,H',W']`, face probability `[N,2,H',W']`).
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = self.prelu1.forward(&self.conv1.forward(x)?)?;
        let x = max_pool_ceil(&x, 2, 2)?;
        let x = self.prelu2.forward(&self.conv2.forward(&x)?)?;
        let x = self.prelu3.forward(&self.conv3.forward(&x)?)?;
        let prob = candle_nn::ops::softmax(&self.conv4_1.forward(&x)?, 1)?;
        let reg = self.conv4_2.forward(&x)?;
        Ok((reg, prob))
    }
}

/// Refinement network on 24x24 crops.
pub struct RNet {
    conv1: Conv2d,
    prelu1: PReLU,
    conv2: Conv2d,
    prelu2: PReLU,
    conv3: Conv2d,
    prelu3: PReLU,
    dense4: Linear,
    prelu4: PReLU,
    dense5_1: Linear,
    dense5_2: Linear,
}

impl RNet {
    /// Builds R-Net from `rnet.*` weights.
    pub fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: conv(3, 28, 3, vb.pp("conv1"))?,
            prelu1: prelu(Some(28), vb.pp("prelu1"))?,
            conv2: conv(28, 48, 3, vb.pp("conv2"))?,
            prelu2: prelu(Some(48), vb.pp("prelu2"))?,
            conv3: conv(48, 64, 2, vb.pp("conv3"))?,
            prelu3: prelu(Some(64), vb.pp("prelu3"))?,
            dense4: linear(576, 128, vb.pp("dense4"))?,
            prelu4: prelu(Some(128), vb.pp("prelu4"))?,
            dense5_1: linear(128, 2, vb.pp("dense5_1"))?,
            dense5_2: linear(128, 4, vb.pp("dense5_2"))?,
        })
    }

    /// Returns (regression `[N,4]`, face probability `[N,2]`).
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = self.prelu1.forward(&self.conv1.forward(x)?)?;
        let x = max_pool_ceil(&x, 3, 2)?;
        let x = self.prelu2.forward(&self.conv2.forward(&x)?)?;
        let x = max_pool_ceil(&x, 3, 2)?;
        let x = self.prelu3.forward(&self.conv3.forward(&x)?)?;
        let x = self
            .prelu4
            .forward(&self.dense4.forward(&flatten_whc(&x)?)?)?;
        let prob = candle_nn::ops::softmax(&self.dense5_1.forward(&x)?, 1)?;
        let reg = self.dense5_2.forward(&x)?;
        Ok((reg, prob))
    }
}

/// Output network on 48x48 crops: box regression, 5 landmarks, face probability.
pub struct ONet {
    conv1: Conv2d,
    prelu1: PReLU,
    conv2: Conv2d,
    prelu2: PReLU,
    conv3: Conv2d,
    prelu3: PReLU,
    conv4: Conv2d,
    prelu4: PReLU,
    dense5: Linear,
    prelu5: PReLU,
    dense6_1: Linear,
    dense6_2: Linear,
    dense6_3: Linear,
}

impl ONet {
    /// Builds O-Net from `onet.*` weights.
    pub fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: conv(3, 32, 3, vb.pp("conv1"))?,
            prelu1: prelu(Some(32), vb.pp("prelu1"))?,
            conv2: conv(32, 64, 3, vb.pp("conv2"))?,
            prelu2: prelu(Some(64), vb.pp("prelu2"))?,
            conv3: conv(64, 64, 3, vb.pp("conv3"))?,
            prelu3: prelu(Some(64), vb.pp("prelu3"))?,
            conv4: conv(64, 128, 2, vb.pp("conv4"))?,
            prelu4: prelu(Some(128), vb.pp("prelu4"))?,
            dense5: linear(1152, 256, vb.pp("dense5"))?,
            prelu5: prelu(Some(256), vb.pp("prelu5"))?,
            dense6_1: linear(256, 2, vb.pp("dense6_1"))?,
            dense6_2: linear(256, 4, vb.pp("dense6_2"))?,
            dense6_3: linear(256, 10, vb.pp("dense6_3"))?,
        })
    }

    /// Returns (regression `[N,4]`, landmarks `[N,10]` (x1..x5, y1..y5), probability `[N,2]`).
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let x = self.prelu1.forward(&self.conv1.forward(x)?)?;
        let x = max_pool_ceil(&x, 3, 2)?;
        let x = self.prelu2.forward(&self.conv2.forward(&x)?)?;
        let x = max_pool_ceil(&x, 3, 2)?;
        let x = self.prelu3.forward(&self.conv3.forward(&x)?)?;
        let x = max_pool_ceil(&x, 2, 2)?;
        let x = self.prelu4.forward(&self.conv4.forward(&x)?)?;
        let x = self
            .prelu5
            .forward(&self.dense5.forward(&flatten_whc(&x)?)?)?;
        let prob = candle_nn::ops::softmax(&self.dense6_1.forward(&x)?, 1)?;
        let reg = self.dense6_2.forward(&x)?;
        let landmarks = self.dense6_3.forward(&x)?;
        Ok((reg, landmarks, prob))
    }
}
