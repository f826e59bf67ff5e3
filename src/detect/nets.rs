//! The three MTCNN networks (P-Net, R-Net, O-Net) as facenet-pytorch defines them.
//!
//! Weight names mirror facenet-pytorch's state dicts (`conv1`, `prelu1`, `dense4`, ...), so each
//! builder reads like the module it ports. All convolutions are stride 1 without padding; every
//! max-pool uses PyTorch's `ceil_mode=True`.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{max_pool_ceil, Act, Conv2d, Linear, PRelu};

/// A stride-1, unpadded convolution with bias.
fn conv(c_in: usize, c_out: usize, k: usize, vb: VarBuilder) -> Result<Conv2d> {
    Conv2d::load(c_in, c_out, k, 1, 0, true, vb)
}

/// Flatten NCHW in (W, H, C) order, as facenet-pytorch's `permute(0, 3, 2, 1)` does.
fn flatten_whc(x: &Tensor) -> Result<Tensor> {
    x.permute((0, 3, 2, 1))?.contiguous()?.flatten_from(1)
}

/// Proposal network: fully convolutional, 12x12 receptive field, stride 2.
pub struct PNet {
    conv1: Conv2d,
    prelu1: PRelu,
    conv2: Conv2d,
    prelu2: PRelu,
    conv3: Conv2d,
    prelu3: PRelu,
    conv4_1: Conv2d,
    conv4_2: Conv2d,
}

impl PNet {
    /// Builds P-Net from `pnet.*` weights.
    pub fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: conv(3, 10, 3, vb.pp("conv1"))?,
            prelu1: PRelu::load(10, vb.pp("prelu1"))?,
            conv2: conv(10, 16, 3, vb.pp("conv2"))?,
            prelu2: PRelu::load(16, vb.pp("prelu2"))?,
            conv3: conv(16, 32, 3, vb.pp("conv3"))?,
            prelu3: PRelu::load(32, vb.pp("prelu3"))?,
            conv4_1: conv(32, 2, 1, vb.pp("conv4_1"))?,
            conv4_2: conv(32, 4, 1, vb.pp("conv4_2"))?,
        })
    }

    /// Returns (regression `[N,4,H',W']`, face probability `[N,2,H',W']`).
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = self.conv1.forward_act(x, Act::PRelu(&self.prelu1))?;
        let x = max_pool_ceil(&x, 2, 2)?;
        let x = self.conv2.forward_act(&x, Act::PRelu(&self.prelu2))?;
        let x = self.conv3.forward_act(&x, Act::PRelu(&self.prelu3))?;
        let prob = candle_nn::ops::softmax(&self.conv4_1.forward_act(&x, Act::Identity)?, 1)?;
        let reg = self.conv4_2.forward_act(&x, Act::Identity)?;
        Ok((reg, prob))
    }
}

/// Refinement network on 24x24 crops.
pub struct RNet {
    conv1: Conv2d,
    prelu1: PRelu,
    conv2: Conv2d,
    prelu2: PRelu,
    conv3: Conv2d,
    prelu3: PRelu,
    dense4: Linear,
    prelu4: PRelu,
    dense5_1: Linear,
    dense5_2: Linear,
}

impl RNet {
    /// Builds R-Net from `rnet.*` weights.
    pub fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: conv(3, 28, 3, vb.pp("conv1"))?,
            prelu1: PRelu::load(28, vb.pp("prelu1"))?,
            conv2: conv(28, 48, 3, vb.pp("conv2"))?,
            prelu2: PRelu::load(48, vb.pp("prelu2"))?,
            conv3: conv(48, 64, 2, vb.pp("conv3"))?,
            prelu3: PRelu::load(64, vb.pp("prelu3"))?,
            dense4: Linear::load(576, 128, vb.pp("dense4"))?,
            prelu4: PRelu::load(128, vb.pp("prelu4"))?,
            dense5_1: Linear::load(128, 2, vb.pp("dense5_1"))?,
            dense5_2: Linear::load(128, 4, vb.pp("dense5_2"))?,
        })
    }

    /// Returns (regression `[N,4]`, face probability `[N,2]`).
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = self.conv1.forward_act(x, Act::PRelu(&self.prelu1))?;
        let x = max_pool_ceil(&x, 3, 2)?;
        let x = self.conv2.forward_act(&x, Act::PRelu(&self.prelu2))?;
        let x = max_pool_ceil(&x, 3, 2)?;
        let x = self.conv3.forward_act(&x, Act::PRelu(&self.prelu3))?;
        let x = self
            .dense4
            .forward_act(&flatten_whc(&x)?, Act::PRelu(&self.prelu4))?;
        let prob = candle_nn::ops::softmax(&self.dense5_1.forward_act(&x, Act::Identity)?, 1)?;
        let reg = self.dense5_2.forward_act(&x, Act::Identity)?;
        Ok((reg, prob))
    }
}

/// Output network on 48x48 crops: box regression, 5 landmarks, face probability.
pub struct ONet {
    conv1: Conv2d,
    prelu1: PRelu,
    conv2: Conv2d,
    prelu2: PRelu,
    conv3: Conv2d,
    prelu3: PRelu,
    conv4: Conv2d,
    prelu4: PRelu,
    dense5: Linear,
    prelu5: PRelu,
    dense6_1: Linear,
    dense6_2: Linear,
    dense6_3: Linear,
}

impl ONet {
    /// Builds O-Net from `onet.*` weights.
    pub fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: conv(3, 32, 3, vb.pp("conv1"))?,
            prelu1: PRelu::load(32, vb.pp("prelu1"))?,
            conv2: conv(32, 64, 3, vb.pp("conv2"))?,
            prelu2: PRelu::load(64, vb.pp("prelu2"))?,
            conv3: conv(64, 64, 3, vb.pp("conv3"))?,
            prelu3: PRelu::load(64, vb.pp("prelu3"))?,
            conv4: conv(64, 128, 2, vb.pp("conv4"))?,
            prelu4: PRelu::load(128, vb.pp("prelu4"))?,
            dense5: Linear::load(1152, 256, vb.pp("dense5"))?,
            prelu5: PRelu::load(256, vb.pp("prelu5"))?,
            dense6_1: Linear::load(256, 2, vb.pp("dense6_1"))?,
            dense6_2: Linear::load(256, 4, vb.pp("dense6_2"))?,
            dense6_3: Linear::load(256, 10, vb.pp("dense6_3"))?,
        })
    }

    /// Returns (regression `[N,4]`, landmarks `[N,10]` (x1..x5, y1..y5), probability `[N,2]`).
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let x = self.conv1.forward_act(x, Act::PRelu(&self.prelu1))?;
        let x = max_pool_ceil(&x, 3, 2)?;
        let x = self.conv2.forward_act(&x, Act::PRelu(&self.prelu2))?;
        let x = max_pool_ceil(&x, 3, 2)?;
        let x = self.conv3.forward_act(&x, Act::PRelu(&self.prelu3))?;
        let x = max_pool_ceil(&x, 2, 2)?;
        let x = self.conv4.forward_act(&x, Act::PRelu(&self.prelu4))?;
        let x = self
            .dense5
            .forward_act(&flatten_whc(&x)?, Act::PRelu(&self.prelu5))?;
        let prob = candle_nn::ops::softmax(&self.dense6_1.forward_act(&x, Act::Identity)?, 1)?;
        let reg = self.dense6_2.forward_act(&x, Act::Identity)?;
        let landmarks = self.dense6_3.forward_act(&x, Act::Identity)?;
        Ok((reg, landmarks, prob))
    }
}
