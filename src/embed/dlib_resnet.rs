//! dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1`, CC0), as dlib runs it.
//!
//! 150x150 RGB chip, `(pixel - mean) / 256` -> conv 7x7/2 -> affine -> relu -> max-pool 3x3/2 ->
//! 3 x res(32) -> down(64) + 3 x res(64) -> down(128) + 2 x res(128) -> down(256) + 2 x res(256)
//! -> down(256) -> global average -> fc 256->128 without bias. A residual block is conv -> affine
//! -> relu -> conv -> affine, added to its input then relu; a down block starts with a stride-2
//! conv and adds a 2x2 average-pooled input, zero-padded to the larger shape (dlib's `add_prev`).
//! Each `affine` (batch-norm folded by dlib into `gamma * x + beta`) is folded once more into the
//! convolution before it, so a block is two fused conv layers.
//!
//! On the CPU every convolution whose output map is 8x8 or larger (the 7x7 stem, the
//! 35x35, 17x17 and 8x8 stages and the stride-2 convolutions into them) runs on the direct
//! kernels of `src/dconv.rs` (no patch matrix); the 3x3 and 1x1 maps keep im2col + gemm. With
//! [`Precision::Fast`] the 3x3 stride-1 convolutions of the 17x17, 8x8 and 3x3 stages run
//! with Winograd's minimal filtering (`src/winograd.rs`); at 35x35 the exact direct kernels
//! are as fast, and on AVX-512 CPUs at 17x17 too, so there they stay. On CPUs with AVX512_BF16
//! `Precision::Fast` instead runs every convolution on the bf16 direct kernels (weights and
//! inputs rounded to bf16, sums in f32; `src/dconv.rs`).

use std::time::Instant;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::Precision;
use crate::nn::{add_padded_relu, avg_pool2, max_pool, Act, Conv2d};
use crate::winograd::Tile;

/// Channel means subtracted from the R, G, B planes before dividing by 256.
pub const MEAN_RGB: [f32; 3] = [122.782, 117.001, 104.298];
/// Chip side the network expects.
pub const CHIP_SIZE: usize = 150;
/// Embedding size.
pub const DIM: usize = 128;
/// Size of the pooled features before the final fc layer.
pub const FEATURES: usize = 256;
/// dlib's own "same person" distance threshold (stored in the model file).
pub const DLIB_THRESHOLD: f32 = 0.6;

/// (input channels, output channels, down-sampling) of the 14 residual blocks, input to output.
pub(crate) const PLAN: [(usize, usize, bool); 14] = [
    (32, 32, false),
    (32, 32, false),
    (32, 32, false),
    (32, 64, true),
    (64, 64, false),
    (64, 64, false),
    (64, 64, false),
    (64, 128, true),
    (128, 128, false),
    (128, 128, false),
    (128, 256, true),
    (256, 256, false),
    (256, 256, false),
    (256, 256, true),
];

/// A convolution followed by dlib's affine layer, folded into one convolution:
/// `gamma * (W x + b) + beta = (gamma W) x + (gamma b + beta)`.
#[allow(clippy::too_many_arguments)]
fn conv_affine(
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    vb: &VarBuilder,
    conv: &str,
    affine: &str,
) -> Result<Conv2d> {
    let w = vb.pp(conv).get((c_out, c_in, k, k), "weight")?;
    let b = vb.pp(conv).get(c_out, "bias")?;
    let gamma = vb.pp(affine).get(c_out, "weight")?;
    let beta = vb.pp(affine).get(c_out, "bias")?;
    if w.device().is_cpu() {
        // The same f32 products and sums as the tensor ops below, in plain loops: candle's ops
        // would allocate a second copy of every weight and wake its thread pool per layer.
        let (gamma, beta, b) = (
            gamma.to_vec1::<f32>()?,
            beta.to_vec1::<f32>()?,
            b.to_vec1::<f32>()?,
        );
        let mut w = w.flatten_all()?.to_vec1::<f32>()?;
        for (row, g) in w.chunks_mut(c_in * k * k).zip(&gamma) {
            row.iter_mut().for_each(|x| *x *= g);
        }
        let bias: Vec<f32> = b
            .iter()
            .zip(&gamma)
            .zip(&beta)
            .map(|((b, g), beta)| b * g + beta)
            .collect();
        let w = Tensor::from_vec(w, (c_out, c_in, k, k), &candle_core::Device::Cpu)?;
        let b = Tensor::from_vec(bias, c_out, &candle_core::Device::Cpu)?;
        return Conv2d::new(w, Some(b), stride, padding);
    }
    let w = w.broadcast_mul(&gamma.reshape((c_out, 1, 1, 1))?)?;
    let b = ((b * &gamma)? + beta)?;
    Conv2d::new(w, Some(b), stride, padding)
}

/// One residual block: `relu(block(x) + skip(x))`.
struct Residual {
    conv1: Conv2d,
    conv2: Conv2d,
    down: bool,
}

/// Which kernels run a block's convolutions on the CPU.
#[derive(Debug, Clone, Copy)]
enum Kernels {
    /// f32 direct kernels or im2col + gemm: [`Precision::Exact`].
    Exact,
    /// Winograd's `tile` for the stride-1 convolutions where it is faster: [`Precision::Fast`]
    /// without bf16 dot products.
    Winograd(Tile),
    /// The bf16 direct kernels for every convolution: [`Precision::Fast`] on CPUs with
    /// AVX512_BF16 ([`crate::dconv::bf16_usable`]).
    Bf16,
}

impl Kernels {
    /// The kernels of `precision` for a block whose output is `side x side`.
    fn new(precision: Precision, side: usize) -> Kernels {
        match precision {
            Precision::Exact => Kernels::Exact,
            Precision::Fast if crate::dconv::bf16_usable() => Kernels::Bf16,
            Precision::Fast => Tile::for_side(side).map_or(Kernels::Exact, Kernels::Winograd),
        }
    }
}

/// The CPU kernel of one convolution whose output is `side x side` (see the module doc):
/// direct kernels for maps of 8x8 and more, unless `kernels` asks for Winograd (and the direct
/// kernels are not faster there) or bf16.
fn kernel(conv: Conv2d, side: usize, kernels: Kernels) -> Conv2d {
    let tile = match kernels {
        Kernels::Bf16 => return conv.bf16(),
        Kernels::Winograd(tile) => Some(tile),
        Kernels::Exact => None,
    };
    let conv = if side >= DIRECT_MIN_SIDE {
        conv.direct()
    } else {
        conv
    };
    match tile {
        // Where the direct kernels are as fast as Winograd, they are used: they are exact.
        Some(_) if side >= direct_over_winograd_side() && conv.is_direct() => conv,
        Some(tile) => conv.winograd(tile),
        None => conv,
    }
}

/// Smallest output side where the fast path keeps the direct kernels rather than Winograd.
/// With AVX2 that is 35x35 (32 channels; 2.15-2.26 against 2.24-2.29 ms per chip on one
/// thread). With AVX-512 ([`crate::dconv::wide`]) the direct block also beats F(6x6) at
/// 17x17x64: `bench_embed --precision fast --stages --threads 2`, batch 16, three alternating
/// rounds: that stage 3.44 / 2.99 / 2.86 ms per chip direct against 4.58 / 5.42 / 3.76 with
/// Winograd (whole chip 14.7 / 13.2 / 12.1 against 17.1 / 17.7 / 13.9 ms). At 8x8 Winograd
/// still wins (1.5 against 3.1 ms).
fn direct_over_winograd_side() -> usize {
    if crate::dconv::wide() {
        17
    } else {
        35
    }
}

/// Smallest output side where the direct kernels beat im2col + gemm (`bench_embed --stages`,
/// one thread: 8x8x128 1.93 -> 1.45 ms per chip, while the 3x3 maps, padded to 16 positions a
/// row block, were slower: 1.43 -> 1.89 ms).
const DIRECT_MIN_SIDE: usize = 8;

impl Residual {
    /// A block on `side_in x side_in` inputs whose convolutions run on `kernels`.
    fn new(
        c_in: usize,
        c_out: usize,
        down: bool,
        side_in: usize,
        kernels: Kernels,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (stride, pad) = if down { (2, 0) } else { (1, 1) };
        let conv1 = conv_affine(c_in, c_out, 3, stride, pad, &vb, "conv1", "affine1")?;
        let side_out = conv1.out_size(side_in, side_in).0;
        // (`Conv2d::winograd` leaves a down block's stride-2 convolution as it is.)
        let conv1 = kernel(conv1, side_out, kernels);
        let conv2 = conv_affine(c_out, c_out, 3, 1, 1, &vb, "conv2", "affine2")?;
        Ok(Residual {
            conv1,
            conv2: kernel(conv2, side_out, kernels),
            down,
        })
    }

    /// Multiply-adds of this block's products on an input of `side x side`.
    fn macs(&self, side: usize) -> (usize, usize) {
        let (out, _) = self.conv1.out_size(side, side);
        (
            self.conv1.macs(side, side) + self.conv2.macs(out, out),
            self.conv1.product_macs(side, side) + self.conv2.product_macs(out, out),
        )
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.conv1.forward_act(x, Act::Relu)?;
        let y = self.conv2.forward_act(&y, Act::Identity)?;
        let skip = if self.down { avg_pool2(x)? } else { x.clone() };
        add_padded_relu(&skip, &y)
    }
}

/// Time and work of one group of layers in [`DlibResNet::stage_times`].
#[derive(Debug, Clone)]
pub struct StageTime {
    /// The group: `conv1` (7x7 conv and max-pool), `35x35x32`, `17x17x64`, `8x8x128`,
    /// `3x3x256` (a stage: its down block, if any, and its residual blocks), `1x1x256+fc`.
    pub name: &'static str,
    /// Wall time for the whole batch.
    pub seconds: f64,
    /// Multiply-adds per chip of a direct convolution.
    pub direct_macs: usize,
    /// Multiply-adds per chip in the products actually run (fewer with Winograd).
    pub product_macs: usize,
}

/// Side of the maps the residual blocks start from (150 -> conv 7x7/2 -> 72 -> pool 3/2 -> 35).
const BLOCK_INPUT_SIDE: usize = 35;

/// The network.
pub struct DlibResNet {
    conv1: Conv2d,
    layers: Vec<Residual>,
    fc: Tensor,
}

impl DlibResNet {
    /// Builds the network from `dlib_resnet.safetensors` weights (exact fp32 path).
    pub fn new(vb: VarBuilder) -> Result<Self> {
        Self::with_precision(vb, Precision::Exact)
    }

    /// Builds the network with the given [`Precision`].
    pub fn with_precision(vb: VarBuilder, precision: Precision) -> Result<Self> {
        let conv1 = conv_affine(3, 32, 7, 2, 0, &vb, "conv1", "affine1")?;
        let conv1 = match Kernels::new(precision, CHIP_SIZE) {
            Kernels::Bf16 => conv1.bf16(),
            _ => conv1.direct(),
        };
        let mut side = BLOCK_INPUT_SIDE;
        let layers = PLAN
            .iter()
            .enumerate()
            .map(|(i, &(c_in, c_out, down))| {
                let side_in = side;
                if down {
                    side = (side - 3) / 2 + 1;
                }
                Residual::new(
                    c_in,
                    c_out,
                    down,
                    side_in,
                    Kernels::new(precision, side),
                    vb.pp(format!("layers.{i}")),
                )
            })
            .collect::<Result<_>>()?;
        let fc = vb
            .pp("fc")
            .get((DIM, FEATURES), "weight")?
            .t()?
            .contiguous()?;
        Ok(DlibResNet { conv1, layers, fc })
    }

    /// Embeddings `[N, 128]` of normalised chips `[N, 3, 150, 150]` (see [`normalise_chip`]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.features(x)?.matmul(&self.fc)
    }

    /// The globally averaged features `[N, 256]` the final fc layer maps to the embedding.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        self.prefix(x, self.layers.len())?.mean((2, 3))
    }

    /// The activations after conv1, the max-pool and the first `blocks` residual blocks (of 14).
    pub fn prefix(&self, x: &Tensor, blocks: usize) -> Result<Tensor> {
        let x = self.conv1.forward_act(x, Act::Relu)?;
        let mut x = max_pool(&x, 3, 2, false)?;
        for layer in self.layers.iter().take(blocks) {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }

    /// Runs [`Self::forward`] on `x` and times each group of layers (see [`StageTime`]).
    pub fn stage_times(&self, x: &Tensor) -> Result<Vec<StageTime>> {
        let mut times = Vec::new();
        let side = x.dim(2)?;
        let start = Instant::now();
        let y = self.conv1.forward_act(x, Act::Relu)?;
        let mut y = max_pool(&y, 3, 2, false)?;
        let macs = self.conv1.macs(side, side);
        times.push(StageTime {
            name: "conv1",
            seconds: start.elapsed().as_secs_f64(),
            direct_macs: macs,
            product_macs: macs,
        });
        let groups: [(&str, std::ops::Range<usize>); 5] = [
            ("35x35x32", 0..3),
            ("17x17x64", 3..7),
            ("8x8x128", 7..10),
            ("3x3x256", 10..13),
            ("1x1x256+fc", 13..14),
        ];
        for (name, blocks) in groups {
            let start = Instant::now();
            let (mut direct, mut product) = (0, 0);
            for layer in &self.layers[blocks] {
                let (d, p) = layer.macs(y.dim(2)?);
                direct += d;
                product += p;
                y = layer.forward(&y)?;
            }
            if name.ends_with("fc") {
                y = y.mean((2, 3))?.matmul(&self.fc)?;
                direct += FEATURES * DIM;
                product += FEATURES * DIM;
            }
            times.push(StageTime {
                name,
                seconds: start.elapsed().as_secs_f64(),
                direct_macs: direct,
                product_macs: product,
            });
        }
        Ok(times)
    }

    /// The final fc layer's weight, `[256, 128]` (features x embedding).
    pub fn fc(&self) -> &Tensor {
        &self.fc
    }

    /// Whether the convolutions run on the bf16 kernels ([`Precision::Fast`] on a CPU with
    /// AVX512_BF16).
    pub fn is_bf16(&self) -> bool {
        self.conv1.is_bf16()
    }
}

/// Writes an RGB chip as planar `(pixel - mean) / 256` floats (dlib's `input_rgb_image_sized`).
pub fn normalise_chip(rgb: &[u8], dst: &mut [f32]) {
    let plane = rgb.len() / 3;
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            dst[c * plane + i] = (px[c] as f32 - MEAN_RGB[c]) / 256.0;
        }
    }
}
