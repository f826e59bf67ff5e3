//! Face embeddings: the [`Embedder`] trait, and its backbones (dlib's ResNet first).
//!
//! An embedder maps aligned face chips (see [`crate::align`]) to vectors whose Euclidean distance
//! says "same person" below a threshold.

pub mod arch;
pub mod dlib_resnet;
pub mod head;

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::models::{ModelSource, DLIB_RESNET};
use crate::{Error, Result};

/// Chips per forward pass.
const BATCH: usize = 16;

/// A face embedding backbone.
pub trait Embedder: Send + Sync {
    /// Identifies the model (weights and preprocessing): part of cache keys and JSON output.
    fn model_id(&self) -> &str;
    /// Embedding length.
    fn dim(&self) -> usize;
    /// Side of the square chips it takes.
    fn chip_size(&self) -> usize;
    /// Embeds chips (each `chip_size` x `chip_size` RGB), one vector per chip, in order.
    fn embed(&self, chips: &[RgbImage]) -> Result<Vec<Vec<f32>>>;
    /// Finishes an embedding after flip averaging (an L2-normalised network normalises the
    /// average here); nothing by default.
    fn finish(&self, _embedding: &mut [f32]) {}
    /// The "same person" distance threshold calibrated for this model, if it has one.
    fn threshold(&self) -> Option<f32> {
        None
    }
}

/// A model file from `facekit train`, as `--model FILE` loads it.
pub enum TrainedModel {
    /// A head on dlib's ResNet (`facekit-head-v1`), possibly with backbone tensors.
    Head(head::Head),
    /// A network trained from scratch (`facekit-net-v1`, `facekit train --arch`).
    Net(arch::NetEmbedder),
}

impl TrainedModel {
    /// Reads `path`, telling the formats apart by the `format` in its metadata.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let name = path.display().to_string();
        let meta = crate::models::safetensors_metadata(&bytes).map_err(|reason| Error::Model {
            name: name.clone(),
            reason,
        })?;
        match meta.get("format").map(String::as_str) {
            Some(crate::train::arch::FORMAT) => Ok(TrainedModel::Net(
                arch::NetEmbedder::from_bytes(&bytes, &name)?,
            )),
            Some(head::FORMAT) => Ok(TrainedModel::Head(head::Head::from_bytes(&bytes, &name)?)),
            other => Err(Error::Model {
                name,
                reason: format!(
                    "not a facekit model: its metadata has format {:?}, expected {} or {} \
                     (make one with `facekit train`)",
                    other.unwrap_or("(none)"),
                    head::FORMAT,
                    crate::train::arch::FORMAT
                ),
            }),
        }
    }
}

/// What a backbone outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// The embedding (dlib: 128-d).
    #[default]
    Embedding,
    /// The pooled features before the final fc layer (dlib: 256-d): what a fine-tuned head
    /// replacing that layer takes.
    Pooled,
}

/// How dlib's ResNet computes its convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Direct fp32 convolutions (im2col + gemm): dlib's own arithmetic up to summation order
    /// (largest distance to dlib's descriptors on its 79 golden chips: below 0.00001).
    #[default]
    Exact,
    /// On CPUs with AVX512_BF16: every convolution on bf16 direct kernels (`vdpbf16ps`, weights
    /// and inputs rounded to bf16, sums in f32), 1.4x faster at batch 16; largest embedding
    /// distance to `Exact` on dlib's 79 golden chips 0.0058, mean 0.0040. Elsewhere: the 3x3
    /// stride-1 convolutions of the 17x17 (AVX2 CPUs only: with AVX-512 the direct kernels are
    /// faster there), 8x8 and 3x3 stages with Winograd's minimal filtering in fp32
    /// (`winograd.rs`), 1.1-1.4x faster at batch 16, largest distance 0.000003 (README, Speed).
    /// dlib's same-person threshold is 0.6.
    Fast,
}

impl Precision {
    /// `exact` or `fast`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Exact => "exact",
            Precision::Fast => "fast",
        }
    }

    /// What computes the ResNet's convolutions with this precision on this CPU.
    pub fn kernels(self) -> &'static str {
        match self {
            Precision::Exact => "direct fp32 convolutions",
            Precision::Fast if crate::dconv::bf16_usable() => {
                "bf16 direct convolutions with fp32 sums, avx512_bf16"
            }
            Precision::Fast if crate::dconv::usable() => {
                "Winograd F(4x4)/F(6x6) 3x3 convolutions, avx2+fma transforms"
            }
            Precision::Fast => "Winograd F(4x4)/F(6x6) 3x3 convolutions, scalar transforms",
        }
    }
}

/// dlib's 128-d ResNet (unnormalised embeddings; dlib's own threshold is 0.6).
pub struct DlibEmbedder {
    net: dlib_resnet::DlibResNet,
    device: Device,
    output: Output,
    precision: Precision,
}

impl DlibEmbedder {
    /// Loads the network from `source` onto [`crate::default_device`].
    pub fn new(source: &ModelSource) -> Result<Self> {
        Self::with_output(source, Output::Embedding)
    }

    /// Loads the network computing with `precision`.
    pub fn with_precision(source: &ModelSource, precision: Precision) -> Result<Self> {
        Self::load(source, Output::Embedding, &[], precision)
    }

    /// Loads the network, returning `output` from [`Embedder::embed`].
    pub fn with_output(source: &ModelSource, output: Output) -> Result<Self> {
        Self::with_overrides(source, output, &[])
    }

    /// Loads the network with some of its tensors replaced (a model trained with
    /// `--train-layers last-stage`): (name, shape, values), names as in the weights file.
    pub fn with_overrides(
        source: &ModelSource,
        output: Output,
        overrides: &[head::NamedTensor],
    ) -> Result<Self> {
        Self::load(source, output, overrides, Precision::Exact)
    }

    /// Loads the network with every setting: `output`, `overrides` (see
    /// [`Self::with_overrides`]) and `precision`.
    pub fn load(
        source: &ModelSource,
        output: Output,
        overrides: &[head::NamedTensor],
        precision: Precision,
    ) -> Result<Self> {
        let device = crate::default_device();
        let bad = |reason: String| Error::Model {
            name: DLIB_RESNET.to_string(),
            reason,
        };
        let vb = if overrides.is_empty() {
            source.var_builder(DLIB_RESNET, &device)?
        } else {
            let bytes = source.read(DLIB_RESNET)?;
            let mut map = candle_core::safetensors::load_buffer(&bytes, &device)?;
            for (name, shape, values) in overrides {
                let base = map.get(name).ok_or_else(|| {
                    bad(format!(
                        "the model replaces {name}, which dlib's ResNet has not"
                    ))
                })?;
                if base.dims() != shape.as_slice() {
                    return Err(bad(format!(
                        "{name}: shape {shape:?}, dlib's is {:?}",
                        base.dims()
                    )));
                }
                map.insert(
                    name.clone(),
                    Tensor::from_slice(values, shape.as_slice(), &device)?,
                );
            }
            candle_nn::VarBuilder::from_tensors(map, candle_core::DType::F32, &device)
        };
        let net = dlib_resnet::DlibResNet::with_precision(vb, precision)
            .map_err(|e| bad(e.to_string()))?;
        Ok(DlibEmbedder {
            net,
            device,
            output,
            precision,
        })
    }

    /// How the network computes.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Embeds `chips` (at most one batch of 16 is timed as given) and times each group of
    /// layers: for benchmarks (`examples/bench_embed.rs --stages`).
    pub fn stage_times(&self, chips: &[RgbImage]) -> Result<Vec<dlib_resnet::StageTime>> {
        Ok(self.net.stage_times(&self.batch(chips)?)?)
    }

    /// Normalised chips as one `[N, 3, 150, 150]` tensor.
    fn batch(&self, chips: &[RgbImage]) -> Result<Tensor> {
        let size = dlib_resnet::CHIP_SIZE;
        let per = 3 * size * size;
        let mut data = vec![0f32; chips.len() * per];
        for (chip, dst) in chips.iter().zip(data.chunks_mut(per)) {
            if chip.dimensions() != (size as u32, size as u32) {
                return Err(Error::Config(format!(
                    "dlib ResNet takes {size}x{size} chips, got {}x{}",
                    chip.width(),
                    chip.height()
                )));
            }
            dlib_resnet::normalise_chip(chip.as_raw(), dst);
        }
        Ok(Tensor::from_vec(
            data,
            (chips.len(), 3, size, size),
            &self.device,
        )?)
    }

    /// The activations after the first `blocks` residual blocks, flattened, one per chip (the
    /// frozen part when training the last stage).
    pub fn prefix(&self, chips: &[RgbImage], blocks: usize) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(chips.len());
        for batch in chips.chunks(BATCH) {
            let y = self.net.prefix(&self.batch(batch)?, blocks)?;
            out.extend(y.flatten_from(1)?.to_vec2::<f32>()?);
        }
        Ok(out)
    }

    /// The final fc layer's weight, `[128, 256]` row-major (embedding x features).
    pub fn fc_weight(&self) -> Result<Vec<f32>> {
        Ok(self
            .net
            .fc()
            .t()?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }
}

impl Embedder for DlibEmbedder {
    fn model_id(&self) -> &str {
        match (self.output, self.precision) {
            (Output::Embedding, Precision::Exact) => "dlib_resnet_v1",
            (Output::Pooled, Precision::Exact) => "dlib_resnet_v1/pooled",
            // bf16 and Winograd give different (close) embeddings: never mixed in one library.
            (Output::Embedding, Precision::Fast) if self.net.is_bf16() => "dlib_resnet_v1+bf16",
            (Output::Pooled, Precision::Fast) if self.net.is_bf16() => "dlib_resnet_v1/pooled+bf16",
            (Output::Embedding, Precision::Fast) => "dlib_resnet_v1+fast",
            (Output::Pooled, Precision::Fast) => "dlib_resnet_v1/pooled+fast",
        }
    }

    fn dim(&self) -> usize {
        match self.output {
            Output::Embedding => dlib_resnet::DIM,
            Output::Pooled => dlib_resnet::FEATURES,
        }
    }

    fn chip_size(&self) -> usize {
        dlib_resnet::CHIP_SIZE
    }

    fn embed(&self, chips: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(chips.len());
        for batch in chips.chunks(BATCH) {
            let x = self.batch(batch)?;
            let y = match self.output {
                Output::Embedding => self.net.forward(&x)?,
                Output::Pooled => self.net.features(&x)?,
            };
            out.extend(y.to_vec2::<f32>()?);
        }
        Ok(out)
    }
}
