//! The inputs of whole-network training (`--train-layers all`): each batch's chips are cut from
//! the photos when the batch is drawn (so memory does not grow with the data set), data-parallel
//! in the rayon pool while the optimizer works on the previous batch, and augmented on the fly:
//! a random mirror image, a small jitter of the alignment (scale, rotation, translation of the
//! chip about its centre) and of brightness and contrast. Every random choice comes from the
//! batch's seed and the face's place in the batch, so a seed gives the same batches on any
//! number of threads.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;

use super::Inputs;
use crate::embed::dlib_resnet::{normalise_chip, CHIP_SIZE};
use crate::io::LoadOptions;
use crate::{Detection, Error, Pipeline, Result, Rng};

/// Which augmentations a training chip gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Augment {
    /// Mirror the chip with probability 1/2.
    pub mirror: bool,
    /// Jitter the alignment: scale x[0.95, 1.05], rotation +-5 degrees, translation +-3 px.
    pub jitter: bool,
    /// Jitter contrast (x[0.8, 1.2] about mid-grey) and brightness (+-20 levels).
    pub color: bool,
}

impl Augment {
    /// No augmentation.
    pub const NONE: Augment = Augment {
        mirror: false,
        jitter: false,
        color: false,
    };
    /// Every augmentation.
    pub const ALL: Augment = Augment {
        mirror: true,
        jitter: true,
        color: true,
    };

    /// The name recorded in metadata (`mirror+jitter+color`, or `none`).
    pub fn name(self) -> String {
        let parts: Vec<&str> = [
            (self.mirror, "mirror"),
            (self.jitter, "jitter"),
            (self.color, "color"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|&(_, n)| n)
        .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join("+")
        }
    }

    /// `chip` augmented with the random choices of `rng`.
    pub fn apply(self, chip: RgbImage, rng: &mut Rng) -> RgbImage {
        // Draw every number whatever is enabled: each choice depends only on the seed.
        let (flip, scale, angle, tx, ty, contrast, brightness) = (
            rng.f64() < 0.5,
            1.0 + 0.05 * (2.0 * rng.f64() - 1.0),
            5f64.to_radians() * (2.0 * rng.f64() - 1.0),
            3.0 * (2.0 * rng.f64() - 1.0),
            3.0 * (2.0 * rng.f64() - 1.0),
            1.0 + 0.2 * (2.0 * rng.f64() - 1.0),
            20.0 * (2.0 * rng.f64() - 1.0),
        );
        let mut chip = chip;
        if self.jitter {
            chip = warp(&chip, scale, angle, tx, ty);
        }
        if self.mirror && flip {
            image::imageops::flip_horizontal_in_place(&mut chip);
        }
        if self.color {
            for v in chip.iter_mut() {
                let x = (*v as f64 - 128.0) * contrast + 128.0 + brightness;
                *v = x.round().clamp(0.0, 255.0) as u8;
            }
        }
        chip
    }
}

/// The chip resampled by a similarity about its centre: output pixel `p` shows input point
/// `scale * R(angle) (p - c) + c + (tx, ty)` (bilinear; points outside take the nearest edge
/// pixel, so the jitter adds no black border).
fn warp(chip: &RgbImage, scale: f64, angle: f64, tx: f64, ty: f64) -> RgbImage {
    let (w, h) = (chip.width() as i64, chip.height() as i64);
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    let (a, b) = (scale * angle.cos(), scale * angle.sin());
    let px = |x: i64, y: i64| {
        chip.get_pixel(x.clamp(0, w - 1) as u32, y.clamp(0, h - 1) as u32)
            .0
    };
    RgbImage::from_fn(chip.width(), chip.height(), |x, y| {
        let (u, v) = (x as f64 - cx, y as f64 - cy);
        let sx = a * u - b * v + cx + tx;
        let sy = b * u + a * v + cy + ty;
        let (x0, y0) = (sx.floor(), sy.floor());
        let (fx, fy) = (sx - x0, sy - y0);
        let (xi, yi) = (x0 as i64, y0 as i64);
        let (p00, p10, p01, p11) = (
            px(xi, yi),
            px(xi + 1, yi),
            px(xi, yi + 1),
            px(xi + 1, yi + 1),
        );
        image::Rgb(std::array::from_fn(|c| {
            let top = p00[c] as f64 * (1.0 - fx) + p10[c] as f64 * fx;
            let bottom = p01[c] as f64 * (1.0 - fx) + p11[c] as f64 * fx;
            (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8
        }))
    })
}

/// Chips of the dataset's faces, cut from their photos on demand.
pub struct Chips<'a> {
    /// The pipeline whose aligner cuts the chips.
    pub pipeline: &'a Pipeline,
    /// The photo of each dataset row.
    pub paths: &'a [PathBuf],
    /// The face of each dataset row.
    pub faces: &'a [Detection],
    /// How photos are decoded.
    pub load: &'a LoadOptions,
    /// Training augmentation.
    pub augment: Augment,
    /// Evaluate each face as the mean of its chip's and its mirror image's features.
    pub flip: bool,
}

impl Chips<'_> {
    /// The aligned chip of dataset row `row`.
    fn chip(&self, row: usize) -> Result<RgbImage> {
        let (path, face) = self
            .paths
            .get(row)
            .zip(self.faces.get(row))
            .ok_or_else(|| Error::Config(format!("no photo for dataset row {row}")))?;
        let img = crate::io::load_image(path, self.load)?;
        let chip = self.pipeline.chip(&img, face);
        if chip.dimensions() != (CHIP_SIZE as u32, CHIP_SIZE as u32) {
            return Err(Error::Config(format!(
                "{}: the aligner cut a {}x{} chip, the ResNet takes {CHIP_SIZE}x{CHIP_SIZE}",
                path.display(),
                chip.width(),
                chip.height()
            )));
        }
        Ok(chip)
    }

    /// `[rows, views, 3, 150, 150]` from each row's views, made in parallel.
    fn tensor(
        &self,
        rows: &[usize],
        views: usize,
        make: impl Fn(usize, usize) -> Result<Vec<RgbImage>> + Sync,
    ) -> Result<Tensor> {
        let per = 3 * CHIP_SIZE * CHIP_SIZE;
        let mut data = vec![0f32; rows.len() * views * per];
        data.par_chunks_mut(views * per)
            .zip(rows.par_iter().enumerate())
            .try_for_each(|(dst, (j, &row))| -> Result<()> {
                let chips = crate::nn::serial(|| make(j, row))?;
                for (chip, d) in chips.iter().zip(dst.chunks_mut(per)) {
                    normalise_chip(chip.as_raw(), d);
                }
                Ok(())
            })?;
        Ok(Tensor::from_vec(
            data,
            (rows.len(), views, 3, CHIP_SIZE, CHIP_SIZE),
            &Device::Cpu,
        )?)
    }
}

impl Inputs for Chips<'_> {
    fn train_input(&self, rows: &[usize], seed: u64) -> Result<Tensor> {
        self.tensor(rows, 1, |j, row| {
            let mut rng = Rng::new(seed ^ (j as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
            Ok(vec![self.augment.apply(self.chip(row)?, &mut rng)])
        })
    }

    fn eval_input(&self, rows: &[usize]) -> Result<Tensor> {
        let views = if self.flip { 2 } else { 1 };
        self.tensor(rows, views, |_, row| {
            let chip = self.chip(row)?;
            Ok(if self.flip {
                let mirror = image::imageops::flip_horizontal(&chip);
                vec![chip, mirror]
            } else {
                vec![chip]
            })
        })
    }

    fn eval_batch(&self) -> usize {
        16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chip() -> RgbImage {
        image::open(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/dlib_chips/2008_001322_0.png"
        ))
        .unwrap()
        .to_rgb8()
    }

    /// Same seed, same chip; another seed, another chip; each augmentation changes it, and the
    /// jitter stays small (the centre of the chip moves by at most a few pixels).
    #[test]
    fn augmentation_is_seeded_and_small() {
        let c = chip();
        let a = Augment::ALL.apply(c.clone(), &mut Rng::new(5));
        let b = Augment::ALL.apply(c.clone(), &mut Rng::new(5));
        assert_eq!(a, b);
        let others = (6..12)
            .filter(|&s| Augment::ALL.apply(c.clone(), &mut Rng::new(s)) != a)
            .count();
        assert_eq!(others, 6);
        assert_eq!(Augment::NONE.apply(c.clone(), &mut Rng::new(5)), c);
        // Mirror alone: the chip or its mirror image.
        let m = Augment {
            mirror: true,
            ..Augment::NONE
        };
        let flipped = image::imageops::flip_horizontal(&c);
        let seen: Vec<bool> = (0..16)
            .map(|s| m.apply(c.clone(), &mut Rng::new(s)) == flipped)
            .collect();
        assert!(seen.iter().any(|&f| f) && seen.iter().any(|&f| !f));
        // The identity warp is the identity; a whole-pixel shift moves the chip.
        assert_eq!(warp(&c, 1.0, 0.0, 0.0, 0.0), c);
        let shifted = warp(&c, 1.0, 0.0, 2.0, 1.0);
        assert_eq!(shifted.get_pixel(10, 20), c.get_pixel(12, 21));
        // A jittered chip stays close to the original: mean absolute difference well below
        // that of an unrelated image (the mirror image).
        let j = Augment {
            jitter: true,
            ..Augment::NONE
        };
        let mad = |x: &RgbImage, y: &RgbImage| {
            x.iter()
                .zip(y.iter())
                .map(|(&p, &q)| (p as f64 - q as f64).abs())
                .sum::<f64>()
                / x.len() as f64
        };
        let jittered = j.apply(c.clone(), &mut Rng::new(9));
        assert_ne!(jittered, c);
        assert!(mad(&jittered, &c) < mad(&flipped, &c), "jitter too large");
    }
}
