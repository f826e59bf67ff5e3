//! The MTCNN cascade as facenet-pytorch 2.6.0 runs it.
//!
//! P-Net scans an image pyramid, R-Net and O-Net re-score 24x24 and 48x48 crops, each stage
//! followed by non-maximum suppression and box regression; O-Net adds 5 landmarks. The details
//! that decide numerical parity (area resampling, pyramid sizes, the +1 conventions of each stage,
//! NMS modes, crops clipped without padding) follow `facenet_pytorch/models/utils/detect_face.py`.

use std::time::Instant;

use candle_core::{Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;

#[path = "mtcnn_kernels.rs"]
mod kernels;

use kernels::{FastNets, Planes, Source};

use super::nets::{ONet, PNet, RNet};
use super::{BBox, Detection, Point};
use crate::models::{ModelSource, MTCNN};
use crate::preprocess::{area_resize_chw, area_resize_chw_rows, Region};
use crate::{Error, Result};

/// MTCNN settings; the defaults are facenet-pytorch's.
#[derive(Debug, Clone, PartialEq)]
pub struct MtcnnConfig {
    /// Smallest face side searched for, in pixels (pyramid starts at scale 12 / min_face).
    pub min_face_size: f64,
    /// Score thresholds of P-Net, R-Net and O-Net.
    pub thresholds: [f32; 3],
    /// Scale step between pyramid levels, in (0, 1).
    pub factor: f64,
}

impl Default for MtcnnConfig {
    fn default() -> Self {
        MtcnnConfig {
            min_face_size: 20.0,
            thresholds: [0.6, 0.7, 0.7],
            factor: 0.709,
        }
    }
}

impl MtcnnConfig {
    /// Checks that the settings can work (a factor >= 1 would never end the pyramid).
    pub fn validate(&self) -> Result<()> {
        if !(self.factor > 0.0 && self.factor < 1.0) {
            return Err(Error::Config(format!(
                "pyramid factor must be in (0, 1), got {}",
                self.factor
            )));
        }
        if !(self.min_face_size >= 1.0 && self.min_face_size.is_finite()) {
            return Err(Error::Config(format!(
                "minimum face size must be at least 1 px, got {}",
                self.min_face_size
            )));
        }
        if let Some(t) = self.thresholds.iter().find(|t| !(0.0..=1.0).contains(*t)) {
            return Err(Error::Config(format!(
                "thresholds must be in [0, 1], got {t}"
            )));
        }
        Ok(())
    }
}

/// One level of the P-Net image pyramid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PyramidLevel {
    /// Scale relative to the original image.
    pub scale: f64,
    /// Level width: `floor(w * scale + 1)`.
    pub width: usize,
    /// Level height: `floor(h * scale + 1)`.
    pub height: usize,
}

/// The pyramid facenet-pytorch builds for a `width x height` image: scales from
/// `12 / min_face` down by `factor` while the short side stays >= 12 px (in f64).
pub fn pyramid(width: u32, height: u32, min_face: f64, factor: f64) -> Vec<PyramidLevel> {
    let m = 12.0 / min_face;
    let mut minl = width.min(height) as f64 * m;
    let mut scale = m;
    let mut levels = Vec::new();
    while minl >= 12.0 {
        levels.push(PyramidLevel {
            scale,
            width: (width as f64 * scale + 1.0) as usize,
            height: (height as f64 * scale + 1.0) as usize,
        });
        scale *= factor;
        minl *= factor;
    }
    levels
}

/// Level pixels P-Net takes in one pass; larger levels run in bands (about 60 bytes of
/// activations per pixel: ~120 MB at this size).
const PNET_BAND_PIXELS: usize = 2_000_000;

/// A candidate box during the cascade: coordinates, score and the regression to apply.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    b: [f32; 4],
    score: f32,
    reg: [f32; 4],
}

/// MTCNN's input normalisation: `(v - 127.5) / 128`.
fn mtcnn_norm(v: f32) -> f32 {
    (v - 127.5) * 0.0078125
}

/// Greedy NMS as torchvision's `nms`: highest score first; a box is dropped when its IoU (areas
/// without +1) with a kept box is `> threshold`. Returns kept indices, by descending score.
fn nms_union(cands: &[Candidate], threshold: f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..cands.len()).collect();
    order.sort_by(|&a, &b| cands[b].score.total_cmp(&cands[a].score));
    let area = |c: &Candidate| (c.b[2] - c.b[0]) * (c.b[3] - c.b[1]);
    let mut suppressed = vec![false; cands.len()];
    let mut keep = Vec::new();
    for (pos, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let bi = &cands[i].b;
        for &j in &order[pos + 1..] {
            if suppressed[j] {
                continue;
            }
            let bj = &cands[j].b;
            let iw = (bi[2].min(bj[2]) - bi[0].max(bj[0])).max(0.0);
            let ih = (bi[3].min(bj[3]) - bi[1].max(bj[1])).max(0.0);
            let inter = iw * ih;
            let iou = inter / (area(&cands[i]) + area(&cands[j]) - inter);
            if iou > threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// facenet-pytorch's final numpy NMS in "Min" mode: overlap = intersection / smaller area, both
/// with the +1 pixel convention; boxes with overlap `<= threshold` survive.
fn nms_min(cands: &[Candidate], threshold: f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..cands.len()).collect();
    // np.argsort ascending, then repeatedly take the last: visit by descending score.
    order.sort_by(|&a, &b| cands[a].score.total_cmp(&cands[b].score));
    let area = |c: &Candidate| (c.b[2] - c.b[0] + 1.0) * (c.b[3] - c.b[1] + 1.0);
    let mut keep = Vec::new();
    while let Some(i) = order.pop() {
        keep.push(i);
        let bi = &cands[i].b;
        order.retain(|&j| {
            let bj = &cands[j].b;
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0]) + 1.0).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1]) + 1.0).max(0.0);
            let overlap = w * h / area(&cands[i]).min(area(&cands[j]));
            overlap <= threshold
        });
    }
    keep
}

/// Squares a box around its centre ("rerec"), sides without +1.
fn square(b: [f32; 4]) -> [f32; 4] {
    let w = b[2] - b[0];
    let h = b[3] - b[1];
    let l = w.max(h);
    let x1 = b[0] + w * 0.5 - l * 0.5;
    let y1 = b[1] + h * 0.5 - l * 0.5;
    [x1, y1, x1 + l, y1 + l]
}

/// Applies a stage-2/3 regression ("bbreg"): offsets scaled by the +1 width and height.
fn bbreg(b: [f32; 4], r: [f32; 4]) -> [f32; 4] {
    let w = b[2] - b[0] + 1.0;
    let h = b[3] - b[1] + 1.0;
    [
        b[0] + r[0] * w,
        b[1] + r[1] * h,
        b[2] + r[2] * w,
        b[3] + r[3] * h,
    ]
}

/// The pixel region facenet-pytorch crops for a box ("pad"): coordinates truncated toward
/// zero, clamped to the 1-based image, then turned into a 0-based slice. `None` when empty.
fn crop_region(b: [f32; 4], width: u32, height: u32) -> Option<Region> {
    let (w, h) = (width as i64, height as i64);
    let x = (b[0].trunc() as i64).max(1);
    let y = (b[1].trunc() as i64).max(1);
    let ex = (b[2].trunc() as i64).min(w);
    let ey = (b[3].trunc() as i64).min(h);
    if ex > x - 1 && ey > y - 1 {
        Some(Region {
            x0: (x - 1) as usize,
            y0: (y - 1) as usize,
            x1: ex as usize,
            y1: ey as usize,
        })
    } else {
        None
    }
}

/// Most crops sent through R-Net / O-Net at once (bounds memory on crowded images).
const BATCH: usize = 128;

/// The MTCNN face detector. Cheap to share across threads (`&Mtcnn` is `Sync`).
pub struct Mtcnn {
    pnet: PNet,
    rnet: RNet,
    onet: ONet,
    /// The same weights for the CPU kernels of `mtcnn_kernels.rs` (`None` on other devices).
    fast: Option<FastNets>,
    config: MtcnnConfig,
    device: Device,
}

impl Mtcnn {
    /// Loads the three networks from `source` onto [`crate::default_device`].
    pub fn new(source: &ModelSource, config: MtcnnConfig) -> Result<Self> {
        Self::with_device(source, config, crate::default_device())
    }

    /// Loads the three networks from `source` onto `device`.
    pub fn with_device(source: &ModelSource, config: MtcnnConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let vb = source.var_builder(MTCNN, &device)?;
        let load_err = |e: candle_core::Error| Error::Model {
            name: MTCNN.to_string(),
            reason: e.to_string(),
        };
        Ok(Mtcnn {
            pnet: PNet::new(vb.pp("pnet")).map_err(load_err)?,
            rnet: RNet::new(vb.pp("rnet")).map_err(load_err)?,
            onet: ONet::new(vb.pp("onet")).map_err(load_err)?,
            fast: if device.is_cpu() {
                Some(FastNets::load(&vb).map_err(load_err)?)
            } else {
                None
            },
            config,
            device,
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &MtcnnConfig {
        &self.config
    }

    /// The networks, for checking each alone.
    pub fn nets(&self) -> (&PNet, &RNet, &ONet) {
        (&self.pnet, &self.rnet, &self.onet)
    }

    /// The device the networks run on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Detects faces in an RGB image; faces sorted by score, best first.
    pub fn detect(&self, img: &RgbImage) -> Result<Vec<Detection>> {
        self.detect_min_face(img, self.config.min_face_size)
    }

    /// [`Self::detect`] searching faces down to `min_face` pixels (instead of the configured
    /// size).
    pub fn detect_min_face(&self, img: &RgbImage, min_face: f64) -> Result<Vec<Detection>> {
        Ok(self.detect_staged(img, min_face, self.fast.as_ref())?.0)
    }

    /// [`Self::detect_min_face`] with the time and candidate count of each stage (for
    /// benchmarks: `examples/bench_detect.rs`).
    pub fn detect_profiled(
        &self,
        img: &RgbImage,
        min_face: f64,
    ) -> Result<(Vec<Detection>, StageProfile)> {
        self.detect_staged(img, min_face, self.fast.as_ref())
    }

    /// [`Self::detect_profiled`] on the candle networks through `crate::nn` (the path other
    /// devices take, and the reference the CPU kernels are checked against bit for bit).
    pub fn detect_profiled_reference(
        &self,
        img: &RgbImage,
        min_face: f64,
    ) -> Result<(Vec<Detection>, StageProfile)> {
        self.detect_staged(img, min_face, None)
    }

    /// The cascade on the CPU kernels of `mtcnn_kernels.rs` when `fast` is given, else on the
    /// candle networks (other devices; and the reference the fast path is tested against).
    fn detect_staged(
        &self,
        img: &RgbImage,
        min_face: f64,
        fast: Option<&FastNets>,
    ) -> Result<(Vec<Detection>, StageProfile)> {
        if !(min_face >= 1.0 && min_face.is_finite()) {
            return Err(Error::Config(format!(
                "minimum face size must be at least 1 px, got {min_face}"
            )));
        }
        let (w, h) = img.dimensions();
        let mut profile = StageProfile::default();
        let t = Instant::now();
        let src = Source::new(img, fast.is_some());
        let stage1 = self.stage1(&src, min_face, fast)?;
        profile.pnet_ms = ms_since(t);
        profile.rnet_candidates = stage1.len();
        let t = Instant::now();
        let stage2 = self.stage2(&src, stage1, fast)?;
        profile.rnet_ms = ms_since(t);
        profile.onet_candidates = stage2.len();
        let t = Instant::now();
        let (boxes, landmarks) = self.stage3(&src, stage2, fast)?;
        profile.onet_ms = ms_since(t);
        let mut faces: Vec<Detection> = boxes
            .iter()
            .zip(landmarks)
            .map(|(c, lm)| Detection {
                bbox: BBox::from_array(c.b).clip(w, h),
                score: c.score,
                landmarks: lm,
            })
            .collect();
        faces.sort_by(|a, b| b.score.total_cmp(&a.score));
        Ok((faces, profile))
    }

    /// P-Net over the pyramid: candidates per level, NMS 0.5 per level, NMS 0.7 across levels,
    /// regression (no +1), squared.
    fn stage1(
        &self,
        src: &Source,
        min_face: f64,
        fast: Option<&FastNets>,
    ) -> Result<Vec<Candidate>> {
        let img = src.image();
        let (w, h) = img.dimensions();
        let levels = pyramid(w, h, min_face, self.config.factor);
        let per_level: Vec<Vec<Candidate>> = match fast {
            Some(nets) => self.stage1_fast(src, &levels, nets)?,
            None => {
                // The largest levels (each >= 1/4 of all pyramid pixels) run one at a time
                // with multi-threaded kernels; the many small ones run side by side,
                // single-threaded each.
                let total: usize = levels.iter().map(|l| l.width * l.height).sum();
                let split = levels
                    .iter()
                    .take_while(|l| 4 * l.width * l.height >= total)
                    .count();
                let mut out = Vec::new();
                for level in &levels[..split] {
                    out.push(self.pnet_level(src, level, None)?);
                }
                let small: Vec<Vec<Candidate>> = levels[split..]
                    .par_iter()
                    .map(|level| crate::nn::serial(|| self.pnet_level(src, level, None)))
                    .collect::<Result<_>>()?;
                out.extend(small);
                out
            }
        };
        let all: Vec<Candidate> = per_level.into_iter().flatten().collect();
        let keep = nms_union(&all, 0.7);
        Ok(keep
            .into_iter()
            .map(|i| {
                let Candidate { b, score, reg: r } = all[i];
                let (bw, bh) = (b[2] - b[0], b[3] - b[1]);
                let moved = [
                    b[0] + r[0] * bw,
                    b[1] + r[1] * bh,
                    b[2] + r[2] * bw,
                    b[3] + r[3] * bh,
                ];
                Candidate {
                    b: square(moved),
                    score,
                    reg: [0.0; 4],
                }
            })
            .collect())
    }

    /// The fast path's P-Net: every (level, band) is one single-threaded job, and the jobs
    /// (largest first) are spread over the pool; bands are bit-identical to whole levels, so
    /// the split is free to follow the thread count. Returns each level's candidates after
    /// its NMS 0.5, by level.
    fn stage1_fast(
        &self,
        src: &Source,
        levels: &[PyramidLevel],
        nets: &FastNets,
    ) -> Result<Vec<Vec<Candidate>>> {
        let threads = rayon::current_num_threads();
        let total: usize = levels.iter().map(|l| l.width * l.height).sum();
        // With more than two threads, cut the large levels so no job holds more than a
        // thread's share (the first level alone is half the pyramid).
        let share = if threads > 2 {
            (total / threads).max(64 * 1024)
        } else {
            usize::MAX
        };
        let jobs: Vec<(usize, std::ops::Range<usize>, usize)> = levels
            .iter()
            .enumerate()
            .flat_map(|(i, level)| {
                pnet_bands(level, PNET_BAND_PIXELS.min(share))
                    .into_iter()
                    .map(move |(rows, y0)| (i, rows, y0))
            })
            .collect();
        let run = |(i, rows, y0): &(usize, std::ops::Range<usize>, usize)| {
            let mut cands = Vec::new();
            self.pnet_band(src, &levels[*i], rows.clone(), *y0, Some(nets), &mut cands)?;
            Ok((*i, cands))
        };
        let done: Vec<(usize, Vec<Candidate>)> = if threads > 1 && jobs.len() > 1 {
            jobs.par_iter()
                .with_max_len(1)
                .map(run)
                .collect::<Result<_>>()?
        } else {
            jobs.iter().map(run).collect::<Result<_>>()?
        };
        let mut per_level: Vec<Vec<Candidate>> = vec![Vec::new(); levels.len()];
        for (i, cands) in done {
            per_level[i].extend(cands);
        }
        Ok(per_level
            .into_iter()
            .map(|cands| {
                let keep = nms_union(&cands, 0.5);
                keep.into_iter().map(|i| cands[i]).collect()
            })
            .collect())
    }

    /// P-Net on one pyramid level: cells scoring >= t1 become boxes, NMS 0.5 within the level.
    ///
    /// A level larger than [`PNET_BAND_PIXELS`] runs in horizontal bands of output rows, each
    /// resized from only the source rows it needs: P-Net is fully convolutional (output row `y`
    /// sees input rows `2y .. 2y + 12`, and even band starts keep the 2x2 pools aligned), so
    /// the cells are bit-identical to one pass over the whole level while the working memory
    /// stays bounded whatever the image's size.
    fn pnet_level(
        &self,
        src: &Source,
        level: &PyramidLevel,
        fast: Option<&FastNets>,
    ) -> Result<Vec<Candidate>> {
        self.pnet_level_banded(src, level, PNET_BAND_PIXELS, fast)
    }

    /// [`Self::pnet_level`] with bands of about `band_pixels` level pixels.
    fn pnet_level_banded(
        &self,
        src: &Source,
        level: &PyramidLevel,
        band_pixels: usize,
        fast: Option<&FastNets>,
    ) -> Result<Vec<Candidate>> {
        let mut cands = Vec::new();
        for (rows, y0) in pnet_bands(level, band_pixels) {
            self.pnet_band(src, level, rows, y0, fast, &mut cands)?;
        }
        let keep = nms_union(&cands, 0.5);
        Ok(keep.into_iter().map(|i| cands[i]).collect())
    }

    /// P-Net on level rows `rows` (whose first output row is level output row `y_offset`).
    fn pnet_band(
        &self,
        src: &Source,
        level: &PyramidLevel,
        rows: std::ops::Range<usize>,
        y_offset: usize,
        fast: Option<&FastNets>,
        cands: &mut Vec<Candidate>,
    ) -> Result<()> {
        let img = src.image();
        let (lw, lh) = (level.width, level.height);
        let bh = rows.len();
        let scale = level.scale as f32;
        let t1 = self.config.thresholds[0];
        let mut push = |x: usize, y: usize, score: f32, reg: [f32; 4]| {
            let (bx, by) = (x as f32, (y + y_offset) as f32);
            cands.push(Candidate {
                b: [
                    ((2.0 * bx + 1.0) / scale).floor(),
                    ((2.0 * by + 1.0) / scale).floor(),
                    ((2.0 * bx + 12.0) / scale).floor(),
                    ((2.0 * by + 12.0) / scale).floor(),
                ],
                score,
                reg,
            });
        };
        if let Some(nets) = fast {
            let mut data = kernels::take(3 * lw * bh);
            src.area_resize(
                Region::full(img),
                lw,
                lh,
                rows,
                mtcnn_norm,
                &mut data,
                lw * bh,
            );
            let x = Planes {
                data,
                c: 3,
                b: 1,
                h: bh,
                w: lw,
            };
            let out = nets.pnet.forward(x, false);
            let n = out.h * out.w;
            for (i, &score) in out.prob.iter().enumerate() {
                if score >= t1 {
                    let reg = std::array::from_fn(|c| out.reg[c * n + i]);
                    push(i % out.w, i / out.w, score, reg);
                }
            }
            kernels::give(out.prob);
            kernels::give(out.reg);
            return Ok(());
        }
        let mut data = vec![0f32; 3 * lw * bh];
        area_resize_chw_rows(img, Region::full(img), lw, lh, rows, mtcnn_norm, &mut data);
        let x = Tensor::from_vec(data, (1, 3, bh, lw), &self.device)?;
        let (reg, prob) = self.pnet.forward(&x)?;
        let reg = reg.squeeze(0)?.to_vec3::<f32>()?;
        let prob = prob.squeeze(0)?.to_vec3::<f32>()?;
        for (y, row) in prob[1].iter().enumerate() {
            for (x, &score) in row.iter().enumerate() {
                if score >= t1 {
                    push(
                        x,
                        y,
                        score,
                        [reg[0][y][x], reg[1][y][x], reg[2][y][x], reg[3][y][x]],
                    );
                }
            }
        }
        Ok(())
    }

    /// Crops each candidate (clipped, no padding), area-resizes it to `size`, normalises.
    /// Candidates whose crop would be empty are dropped (facenet-pytorch never produces one).
    fn crops(
        &self,
        img: &RgbImage,
        cands: &[Candidate],
        size: usize,
    ) -> Result<(Vec<Candidate>, Tensor)> {
        let (w, h) = img.dimensions();
        let per = 3 * size * size;
        let mut kept = Vec::with_capacity(cands.len());
        let mut data = Vec::with_capacity(cands.len() * per);
        for c in cands {
            if let Some(region) = crop_region(c.b, w, h) {
                let start = data.len();
                data.resize(start + per, 0.0);
                area_resize_chw(img, region, size, size, mtcnn_norm, &mut data[start..]);
                kept.push(*c);
            }
        }
        let x = Tensor::from_vec(data, (kept.len(), 3, size, size), &self.device)?;
        Ok((kept, x))
    }

    /// The fast path's crops: `[3, kept, size, size]` planes.
    fn crop_planes(src: &Source, cands: &[Candidate], size: usize) -> (Vec<Candidate>, Planes) {
        let (w, h) = src.image().dimensions();
        let regions: Vec<(Candidate, Region)> = cands
            .iter()
            .filter_map(|c| crop_region(c.b, w, h).map(|r| (*c, r)))
            .collect();
        let b = regions.len();
        let per = size * size;
        let mut data = kernels::take(3 * b * per);
        for (i, (_, region)) in regions.iter().enumerate() {
            src.area_resize(
                *region,
                size,
                size,
                0..size,
                mtcnn_norm,
                &mut data[i * per..],
                b * per,
            );
        }
        let kept = regions.into_iter().map(|(c, _)| c).collect();
        let planes = Planes {
            data,
            c: 3,
            b,
            h: size,
            w: size,
        };
        (kept, planes)
    }

    /// Runs `f` over `cands` in chunks spread across the thread pool (each chunk's kernels
    /// single-threaded), concatenating the results in order.
    fn in_chunks<T: Send>(
        &self,
        cands: &[Candidate],
        f: impl Fn(&[Candidate]) -> Result<Vec<T>> + Sync + Send,
    ) -> Result<Vec<T>> {
        // Chunks do not depend on the thread count, so neither do the results.
        let chunk = cands.len().div_ceil(8).clamp(16, BATCH);
        let parts: Vec<Vec<T>> = cands
            .par_chunks(chunk)
            .map(|part| crate::nn::serial(|| f(part)))
            .collect::<Result<_>>()?;
        Ok(parts.into_iter().flatten().collect())
    }

    /// R-Net on one chunk of candidates: each kept candidate with (probability, regression).
    fn rnet_chunk(
        &self,
        src: &Source,
        part: &[Candidate],
        fast: Option<&FastNets>,
    ) -> Result<Vec<(Candidate, f32, [f32; 4])>> {
        if let Some(nets) = fast {
            let (kept, x) = Self::crop_planes(src, part, 24);
            if kept.is_empty() {
                x.recycle();
                return Ok(Vec::new());
            }
            let out = nets.rnet.forward(x);
            return Ok(kept
                .into_iter()
                .zip(out)
                .map(|(c, (p, r))| (c, p, r))
                .collect());
        }
        let (kept, x) = self.crops(src.image(), part, 24)?;
        if kept.is_empty() {
            return Ok(Vec::new());
        }
        let (reg, prob) = self.rnet.forward(&x)?;
        let reg = reg.to_vec2::<f32>()?;
        let prob = prob.to_vec2::<f32>()?;
        Ok(kept
            .into_iter()
            .zip(reg)
            .zip(prob)
            .map(|((c, r), p)| (c, p[1], [r[0], r[1], r[2], r[3]]))
            .collect())
    }

    /// R-Net on 24x24 crops: keep score > t2, NMS 0.7, regression (+1), squared.
    fn stage2(
        &self,
        src: &Source,
        cands: Vec<Candidate>,
        fast: Option<&FastNets>,
    ) -> Result<Vec<Candidate>> {
        if cands.is_empty() {
            return Ok(cands);
        }
        let passed = self.in_chunks(&cands, |part| {
            Ok(self
                .rnet_chunk(src, part, fast)?
                .into_iter()
                .filter(|(_, p, _)| *p > self.config.thresholds[1])
                .map(|(c, p, r)| Candidate {
                    b: c.b,
                    score: p,
                    reg: r,
                })
                .collect())
        })?;
        let keep = nms_union(&passed, 0.7);
        Ok(keep
            .into_iter()
            .map(|i| {
                let c = passed[i];
                Candidate {
                    b: square(bbreg(c.b, c.reg)),
                    score: c.score,
                    reg: [0.0; 4],
                }
            })
            .collect())
    }

    /// O-Net on one chunk of candidates: each kept candidate with (probability, regression,
    /// landmarks x1..x5, y1..y5).
    #[allow(clippy::type_complexity)]
    fn onet_chunk(
        &self,
        src: &Source,
        part: &[Candidate],
        fast: Option<&FastNets>,
    ) -> Result<Vec<(Candidate, f32, [f32; 4], [f32; 10])>> {
        if let Some(nets) = fast {
            let (kept, x) = Self::crop_planes(src, part, 48);
            if kept.is_empty() {
                x.recycle();
                return Ok(Vec::new());
            }
            let out = nets.onet.forward(x);
            return Ok(kept
                .into_iter()
                .zip(out)
                .map(|(c, o)| (c, o.prob, o.reg, o.landmarks))
                .collect());
        }
        let (kept, x) = self.crops(src.image(), part, 48)?;
        if kept.is_empty() {
            return Ok(Vec::new());
        }
        let (reg, lms, prob) = self.onet.forward(&x)?;
        let reg = reg.to_vec2::<f32>()?;
        let lms = lms.to_vec2::<f32>()?;
        let prob = prob.to_vec2::<f32>()?;
        Ok(kept
            .into_iter()
            .zip(reg)
            .zip(lms)
            .zip(prob)
            .map(|(((c, r), lm), p)| {
                (
                    c,
                    p[1],
                    [r[0], r[1], r[2], r[3]],
                    std::array::from_fn(|i| lm[i]),
                )
            })
            .collect())
    }

    /// O-Net on 48x48 crops: keep score > t3, landmarks against the pre-regression box,
    /// regression (+1), NMS "Min" 0.7.
    fn stage3(
        &self,
        src: &Source,
        cands: Vec<Candidate>,
        fast: Option<&FastNets>,
    ) -> Result<(Vec<Candidate>, Vec<[Point; 5]>)> {
        if cands.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let passed = self.in_chunks(&cands, |part| {
            let mut out = Vec::new();
            for (c, p, r, lm) in self.onet_chunk(src, part, fast)? {
                if p > self.config.thresholds[2] {
                    let bw = c.b[2] - c.b[0] + 1.0;
                    let bh = c.b[3] - c.b[1] + 1.0;
                    let points: [Point; 5] = std::array::from_fn(|k| Point {
                        x: bw * lm[k] + c.b[0] - 1.0,
                        y: bh * lm[5 + k] + c.b[1] - 1.0,
                    });
                    let cand = Candidate {
                        b: bbreg(c.b, r),
                        score: p,
                        reg: [0.0; 4],
                    };
                    out.push((cand, points));
                }
            }
            Ok(out)
        })?;
        let (boxes, points): (Vec<Candidate>, Vec<[Point; 5]>) = passed.into_iter().unzip();
        let keep = nms_min(&boxes, 0.7);
        Ok((
            keep.iter().map(|&i| boxes[i]).collect(),
            keep.iter().map(|&i| points[i]).collect(),
        ))
    }
}

/// Time and candidates of each MTCNN stage of one detection ([`Mtcnn::detect_profiled`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageProfile {
    /// Pyramid resampling, P-Net and its NMS, in milliseconds.
    pub pnet_ms: f64,
    /// Crops, R-Net and its NMS, in milliseconds.
    pub rnet_ms: f64,
    /// Crops, O-Net and the final NMS, in milliseconds.
    pub onet_ms: f64,
    /// Candidates P-Net passed to R-Net.
    pub rnet_candidates: usize,
    /// Candidates R-Net passed to O-Net.
    pub onet_candidates: usize,
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The bands P-Net runs `level` in: (level input rows, first output row), each about
/// `band_pixels` level pixels (at least 8 output rows); even starts keep the pools aligned.
fn pnet_bands(level: &PyramidLevel, band_pixels: usize) -> Vec<(std::ops::Range<usize>, usize)> {
    let (lw, lh) = (level.width, level.height);
    // Output rows: conv 3x3 (-2), ceil-mode 2x2 pool, then two more 3x3 convs (-2 each).
    let oh = (lh - 2).div_ceil(2) - 4;
    let band = (band_pixels / (2 * lw)).max(8);
    (0..oh)
        .step_by(band)
        .map(|y0| {
            let y1 = (y0 + band).min(oh);
            let rows = 2 * y0..if y1 == oh { lh } else { 2 * y1 + 10 };
            (rows, y0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pyramid_matches_facenet_pytorch_sizes() {
        // From mtcnn_notes.md: 500x375 at s = 0.6 -> 226 x 301 (H x W).
        let levels = pyramid(500, 375, 20.0, 0.709);
        assert_eq!((levels[0].height, levels[0].width), (226, 301));
        assert_eq!(levels.len(), 9);
        assert_eq!((levels[8].height, levels[8].width), (15, 20));
    }

    #[test]
    fn nms_min_uses_smaller_area() {
        let c = |b: [f32; 4], s: f32| Candidate {
            b,
            score: s,
            reg: [0.0; 4],
        };
        // A small box inside a big one: IoU is small but "Min" overlap is 1.
        let cands = [
            c([0.0, 0.0, 99.0, 99.0], 0.9),
            c([10.0, 10.0, 19.0, 19.0], 0.8),
        ];
        assert_eq!(nms_min(&cands, 0.7), vec![0]);
        assert_eq!(nms_union(&cands, 0.7), vec![0, 1]);
    }

    #[test]
    fn crop_region_clips_like_facenet_pytorch() {
        // Truncation toward zero, clamp to 1-based [1, w], then 0-based slice.
        let r = crop_region([-5.7, 3.9, 20.2, 400.0], 100, 50).unwrap();
        assert_eq!(
            r,
            Region {
                x0: 0,
                y0: 2,
                x1: 20,
                y1: 50
            }
        );
        assert!(crop_region([120.0, 0.0, 130.0, 10.0], 100, 50).is_none());
    }

    fn fixture_detector() -> (Mtcnn, RgbImage) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let img = crate::io::load_image(
            &root.join("tests/fixtures/2008_001322.jpg"),
            &Default::default(),
        )
        .unwrap();
        let det = Mtcnn::new(&ModelSource::Embedded, MtcnnConfig::default()).unwrap();
        (det, img)
    }

    #[test]
    fn pnet_bands_are_bit_identical_to_one_pass() {
        let (det, img) = fixture_detector();
        let level = pyramid(img.width(), img.height(), 20.0, 0.709)[0];
        for fast in [None, det.fast.as_ref()] {
            let src = Source::new(&img, fast.is_some());
            let whole = det
                .pnet_level_banded(&src, &level, usize::MAX / 4, fast)
                .unwrap();
            assert!(!whole.is_empty());
            // Bands of 8 output rows (the smallest), and of a size that does not divide it.
            for band_pixels in [1, 37 * 2 * level.width] {
                let banded = det
                    .pnet_level_banded(&src, &level, band_pixels, fast)
                    .unwrap();
                assert_eq!(banded.len(), whole.len());
                for (a, b) in banded.iter().zip(&whole) {
                    assert_eq!(
                        (a.b, a.score.to_bits(), a.reg),
                        (b.b, b.score.to_bits(), b.reg)
                    );
                }
            }
        }
    }

    /// Bit patterns of everything a detection reports.
    fn bits(faces: &[Detection]) -> Vec<u32> {
        faces
            .iter()
            .flat_map(|f| {
                let b = f.bbox;
                let mut v = vec![b.x1, b.y1, b.x2, b.y2, f.score];
                v.extend(f.landmarks.iter().flat_map(|p| [p.x, p.y]));
                v
            })
            .map(f32::to_bits)
            .collect()
    }

    /// The CPU kernels of `mtcnn_kernels.rs` against the candle networks through `nn`: every
    /// stage's candidates and the detections, bit for bit, on photos of several sizes (crowded,
    /// one face, large), at 1 and 2 threads and a minimum face that gives a deep pyramid.
    #[test]
    fn fast_path_is_bit_identical_to_the_candle_networks() {
        let (det, _) = fixture_detector();
        let fast = det.fast.as_ref().expect("CPU detector has the fast path");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut photos = 0;
        for entry in std::fs::read_dir(&root).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("jpg") {
                continue;
            }
            let Ok(img) = crate::io::load_image(&path, &Default::default()) else {
                continue;
            };
            photos += 1;
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                for min_face in [20.0, 12.0] {
                    let (a, b) = pool.install(|| {
                        let reference = det.detect_staged(&img, min_face, None).unwrap();
                        let ours = det.detect_staged(&img, min_face, Some(fast)).unwrap();
                        (reference, ours)
                    });
                    let what = format!("{} ({threads} threads, min {min_face})", path.display());
                    assert_eq!(
                        (a.1.rnet_candidates, a.1.onet_candidates),
                        (b.1.rnet_candidates, b.1.onet_candidates),
                        "{what}: stage candidates"
                    );
                    assert_eq!(bits(&a.0), bits(&b.0), "{what}: detections");
                }
            }
        }
        assert!(photos >= 3, "only {photos} fixture photos");
    }

    /// Each fast layer stack against the candle network on real crops, output for output.
    #[test]
    fn fast_nets_match_candle_nets_bit_for_bit() {
        let (det, img) = fixture_detector();
        let fast = det.fast.as_ref().unwrap();
        let src = Source::new(&img, true);
        let (w, h) = img.dimensions();
        // Crops spread over the photo, of several sizes (and one clipped at the border).
        let cands: Vec<Candidate> = (0..37)
            .map(|i| {
                let s = 20.0 + (i * 7 % 90) as f32;
                let x = (i * 53 % w as usize) as f32 - 10.0;
                let y = (i * 31 % h as usize) as f32 - 5.0;
                Candidate {
                    b: [x, y, x + s, y + s],
                    score: 1.0,
                    reg: [0.0; 4],
                }
            })
            .collect();
        for batch in [1, 16, 37] {
            let part = &cands[..batch];
            let a = det.rnet_chunk(&src, part, None).unwrap();
            let b = det.rnet_chunk(&src, part, Some(fast)).unwrap();
            assert_eq!(a.len(), b.len());
            for ((_, pa, ra), (_, pb, rb)) in a.iter().zip(&b) {
                assert_eq!(pa.to_bits(), pb.to_bits(), "rnet prob, batch {batch}");
                assert_eq!(ra.map(f32::to_bits), rb.map(f32::to_bits), "rnet reg");
            }
            let a = det.onet_chunk(&src, part, None).unwrap();
            let b = det.onet_chunk(&src, part, Some(fast)).unwrap();
            assert_eq!(a.len(), b.len());
            for ((_, pa, ra, la), (_, pb, rb, lb)) in a.iter().zip(&b) {
                assert_eq!(pa.to_bits(), pb.to_bits(), "onet prob, batch {batch}");
                assert_eq!(ra.map(f32::to_bits), rb.map(f32::to_bits), "onet reg");
                assert_eq!(la.map(f32::to_bits), lb.map(f32::to_bits), "onet landmarks");
            }
        }
    }

    #[test]
    fn detections_do_not_depend_on_the_thread_count() {
        let (det, img) = fixture_detector();
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| det.detect(&img).unwrap())
        };
        let one = run(1);
        assert!(!one.is_empty());
        for threads in [2, 3, 5] {
            assert_eq!(run(threads), one, "{threads} threads");
        }
    }
}
