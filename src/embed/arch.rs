//! A network trained from scratch by `facekit train --arch` as an [`Embedder`]: the same
//! forward pass as in training ([`crate::train::Trainable::evaluate`]), on the pipeline's
//! 150 x 150 aligned chips, L2-normalised after flip averaging ([`Embedder::finish`]), on
//! [`crate::default_device`].

use candle_core::{Device, Tensor};
use image::RgbImage;

use super::dlib_resnet::{normalise_chip, CHIP_SIZE};
use super::Embedder;
use crate::train::arch::NetFile;
use crate::{Error, Result};

/// Chips per forward pass.
const BATCH: usize = 16;

/// A trained `facekit-net-v1` model.
pub struct NetEmbedder {
    file: NetFile,
    id: String,
}

impl NetEmbedder {
    /// The model in `bytes` (a file written by `facekit train --arch`); `name` names it in
    /// errors.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Self> {
        let mut file = NetFile::from_bytes(bytes, name)?;
        // Inference runs where the other networks do (`--device`, or the default device).
        file.net = file.net.to_device(&crate::default_device())?;
        // The weights and settings decide the embeddings: the face library keys them by this.
        let id = format!(
            "facekit_net_v1:{}:{}",
            file.net.arch().name,
            &crate::io::content_hash(bytes)[..12]
        );
        Ok(NetEmbedder { file, id })
    }

    /// The training settings and figures recorded with the model.
    pub fn metadata(&self) -> &std::collections::BTreeMap<String, String> {
        &self.file.metadata
    }
}

impl Embedder for NetEmbedder {
    fn model_id(&self) -> &str {
        &self.id
    }

    fn dim(&self) -> usize {
        self.file.net.arch().dim
    }

    fn chip_size(&self) -> usize {
        CHIP_SIZE
    }

    fn embed(&self, chips: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        use crate::train::Trainable;
        let per = 3 * CHIP_SIZE * CHIP_SIZE;
        let mut out = Vec::with_capacity(chips.len());
        for batch in chips.chunks(BATCH) {
            let mut data = vec![0f32; batch.len() * per];
            for (chip, dst) in batch.iter().zip(data.chunks_mut(per)) {
                if chip.dimensions() != (CHIP_SIZE as u32, CHIP_SIZE as u32) {
                    return Err(Error::Config(format!(
                        "{} takes {CHIP_SIZE}x{CHIP_SIZE} chips, got {}x{}",
                        self.file.net.arch().name,
                        chip.width(),
                        chip.height()
                    )));
                }
                normalise_chip(chip.as_raw(), dst);
            }
            let x = Tensor::from_vec(
                data,
                (batch.len(), 1, 3, CHIP_SIZE, CHIP_SIZE),
                &Device::Cpu,
            )?
            .to_device(&crate::default_device())?;
            out.extend(self.file.net.evaluate(&x)?.to_vec2::<f32>()?);
        }
        Ok(out)
    }

    fn finish(&self, embedding: &mut [f32]) {
        if self.file.normalize {
            let n = crate::distance::dot(embedding, embedding).sqrt();
            if n > 0.0 {
                embedding.iter_mut().for_each(|v| *v /= n);
            }
        }
    }

    fn threshold(&self) -> Option<f32> {
        self.file.threshold
    }
}
