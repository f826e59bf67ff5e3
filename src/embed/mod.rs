//! Face embeddings: the [`Embedder`] trait, and its backbones (dlib's ResNet first).
//!
//! An embedder maps aligned face chips (see [`crate::align`]) to vectors whose Euclidean distance
//! says "same person" below a threshold.

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

/// dlib's 128-d ResNet (unnormalised embeddings; dlib's own threshold is 0.6).
pub struct DlibEmbedder {
    net: dlib_resnet::DlibResNet,
    device: Device,
    output: Output,
}

impl DlibEmbedder {
    /// Loads the network from `source` onto [`crate::default_device`].
    pub fn new(source: &ModelSource) -> Result<Self> {
        Self::with_output(source, Output::Embedding)
    }

    /// Loads the network, returning `output` from [`Embedder::embed`].
    pub fn with_output(source: &ModelSource, output: Output) -> Result<Self> {
        let device = crate::default_device();
        let vb = source.var_builder(DLIB_RESNET, &device)?;
        let net = dlib_resnet::DlibResNet::new(vb).map_err(|e| Error::Model {
            name: DLIB_RESNET.to_string(),
            reason: e.to_string(),
        })?;
        Ok(DlibEmbedder {
            net,
            device,
            output,
        })
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
        match self.output {
            Output::Embedding => "dlib_resnet_v1",
            Output::Pooled => "dlib_resnet_v1/pooled",
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
        let size = dlib_resnet::CHIP_SIZE;
        let per = 3 * size * size;
        let mut out = Vec::with_capacity(chips.len());
        for batch in chips.chunks(BATCH) {
            let mut data = vec![0f32; batch.len() * per];
            for (chip, dst) in batch.iter().zip(data.chunks_mut(per)) {
                if chip.dimensions() != (size as u32, size as u32) {
                    return Err(Error::Config(format!(
                        "dlib ResNet takes {size}x{size} chips, got {}x{}",
                        chip.width(),
                        chip.height()
                    )));
                }
                dlib_resnet::normalise_chip(chip.as_raw(), dst);
            }
            let x = Tensor::from_vec(data, (batch.len(), 3, size, size), &self.device)?;
            let y = match self.output {
                Output::Embedding => self.net.forward(&x)?,
                Output::Pooled => self.net.features(&x)?,
            };
            out.extend(y.to_vec2::<f32>()?);
        }
        Ok(out)
    }
}
