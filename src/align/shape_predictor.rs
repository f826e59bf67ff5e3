//! dlib's 5-point shape predictor (an ensemble of regression trees, Kazemi & Sullivan 2014), as
//! `dlib::shape_predictor::operator()` evaluates it. It gives the 5 parts dlib's ResNet was
//! trained to be aligned on: the outer and inner corner of each eye and the base of the nose.

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use crate::detect::{BBox, DetectorKind, Point};
use crate::models::{ModelSource, SHAPE_PREDICTOR_5};
use crate::{Error, Result};

/// How far a dlib HOG box sits from an MTCNN box of the same face (the predictor was trained on
/// HOG boxes). Medians over the 78 faces both find in `../shared/golden`: same centre x, centre
/// 0.040 box heights lower, 1.120 times as wide, 0.823 times as tall.
const HOG_FROM_MTCNN: [f32; 3] = [0.040, 1.120, 0.823];

/// The same for a YuNet box: medians over the 78 faces dlib's HOG detector and YuNet (the float
/// reference of `../shared/golden/yunet.json`, score >= 0.5) both find: centre 0.037 box heights
/// lower, 1.102 times as wide, 0.814 times as tall (the centre's horizontal offset, -0.033 box
/// widths, is left out as for MTCNN, so a mirrored face gets the mirrored box).
const HOG_FROM_YUNET: [f32; 3] = [0.037, 1.102, 0.814];

/// The predictor's trees and feature-pixel layout.
pub struct ShapePredictor {
    initial: Vec<[f32; 2]>,
    cascades: Vec<Cascade>,
}

struct Cascade {
    /// Per tree: (idx1, idx2, threshold) of each split, in heap order.
    splits: Vec<Vec<(usize, usize, f32)>>,
    /// Per tree: leaf vectors (2 * parts floats each).
    leaves: Vec<Vec<Vec<f32>>>,
    anchors: Vec<usize>,
    deltas: Vec<[f32; 2]>,
}

fn get(map: &std::collections::HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    map.get(name).cloned().ok_or_else(|| Error::Model {
        name: SHAPE_PREDICTOR_5.to_string(),
        reason: format!("missing tensor {name}"),
    })
}

impl ShapePredictor {
    /// Loads `shape_predictor_5.safetensors` from `source`.
    pub fn new(source: &ModelSource) -> Result<Self> {
        let bytes = source.read(SHAPE_PREDICTOR_5)?;
        let map = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        let initial: Vec<f32> = get(&map, "initial_shape")?.to_vec1()?;
        let split_idx = get(&map, "split_idx")?;
        let (nc, nt, ns, _) = split_idx.dims4()?;
        let split_idx: Vec<u32> = split_idx.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
        let thresh: Vec<f32> = get(&map, "split_thresh")?.flatten_all()?.to_vec1()?;
        let leaves_t = get(&map, "leaf_values")?;
        let (_, _, nl, dim) = leaves_t.dims4()?;
        let leaves: Vec<f32> = leaves_t.flatten_all()?.to_vec1()?;
        let anchors_t = get(&map, "anchor_idx")?;
        let (_, np) = anchors_t.dims2()?;
        let anchors: Vec<u32> = anchors_t.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
        let deltas: Vec<f32> = get(&map, "deltas")?.flatten_all()?.to_vec1()?;
        let parts = initial.len() / 2;
        if dim != initial.len() || nl != ns + 1 {
            return Err(Error::Model {
                name: SHAPE_PREDICTOR_5.to_string(),
                reason: "inconsistent tree shapes".to_string(),
            });
        }
        let cascades = (0..nc)
            .map(|c| Cascade {
                splits: (0..nt)
                    .map(|t| {
                        (0..ns)
                            .map(|s| {
                                let i = (c * nt + t) * ns + s;
                                (
                                    split_idx[2 * i] as usize,
                                    split_idx[2 * i + 1] as usize,
                                    thresh[i],
                                )
                            })
                            .collect()
                    })
                    .collect(),
                leaves: (0..nt)
                    .map(|t| {
                        (0..nl)
                            .map(|l| leaves[((c * nt + t) * nl + l) * dim..][..dim].to_vec())
                            .collect()
                    })
                    .collect(),
                anchors: anchors[c * np..(c + 1) * np]
                    .iter()
                    .map(|&a| (a as usize).min(parts - 1))
                    .collect(),
                deltas: (0..np)
                    .map(|i| [deltas[(c * np + i) * 2], deltas[(c * np + i) * 2 + 1]])
                    .collect(),
            })
            .collect();
        Ok(ShapePredictor {
            initial: initial.chunks(2).map(|p| [p[0], p[1]]).collect(),
            cascades,
        })
    }

    /// The dlib-style box the predictor expects for an MTCNN face box.
    pub fn box_from_mtcnn(b: &BBox) -> BBox {
        Self::box_from_detection(b, DetectorKind::Mtcnn)
    }

    /// The dlib-style box the predictor expects for a face box found by `kind`.
    pub fn box_from_detection(b: &BBox, kind: DetectorKind) -> BBox {
        let k = match kind {
            DetectorKind::Mtcnn => HOG_FROM_MTCNN,
            DetectorKind::YuNet => HOG_FROM_YUNET,
        };
        let (w, h) = (b.width(), b.height());
        let c = b.center();
        let (cy, hw, hh) = (c.y + k[0] * h, k[1] * w / 2.0, k[2] * h / 2.0);
        BBox {
            x1: (c.x - hw).round(),
            y1: (cy - hh).round(),
            x2: (c.x + hw).round(),
            y2: (cy + hh).round(),
        }
    }

    /// The 5 parts (dlib order) of the face in `rect` (a dlib-style box).
    pub fn predict(&self, img: &RgbImage, rect: &BBox) -> Vec<Point> {
        let (w, h) = (img.width() as i64, img.height() as i64);
        let (rw, rh) = (rect.x2 - rect.x1, rect.y2 - rect.y1);
        let to_img = |p: [f32; 2]| Point {
            x: rect.x1 + p[0] * rw,
            y: rect.y1 + p[1] * rh,
        };
        let mut shape = self.initial.clone();
        for cascade in &self.cascades {
            // The 2x2 part of the similarity from the initial shape to the current one.
            let from: Vec<Point> = self
                .initial
                .iter()
                .map(|p| Point { x: p[0], y: p[1] })
                .collect();
            let to: Vec<Point> = shape.iter().map(|p| Point { x: p[0], y: p[1] }).collect();
            let t = super::Similarity::estimate(&from, &to).unwrap_or(super::Similarity {
                a: 1.0,
                b: 0.0,
                tx: 0.0,
                ty: 0.0,
            });
            let feats: Vec<f32> = cascade
                .anchors
                .iter()
                .zip(&cascade.deltas)
                .map(|(&a, d)| {
                    let p = [
                        t.a * d[0] - t.b * d[1] + shape[a][0],
                        t.b * d[0] + t.a * d[1] + shape[a][1],
                    ];
                    let q = to_img(p);
                    let (x, y) = ((q.x + 0.5).floor() as i64, (q.y + 0.5).floor() as i64);
                    if x < 0 || y < 0 || x >= w || y >= h {
                        0.0
                    } else {
                        let px = img.get_pixel(x as u32, y as u32).0;
                        ((px[0] as u32 + px[1] as u32 + px[2] as u32) / 3) as f32
                    }
                })
                .collect();
            for (splits, leaves) in cascade.splits.iter().zip(&cascade.leaves) {
                let mut i = 0;
                while i < splits.len() {
                    let (a, b, th) = splits[i];
                    i = if feats[a] - feats[b] > th {
                        2 * i + 1
                    } else {
                        2 * i + 2
                    };
                }
                let leaf = &leaves[i - splits.len()];
                for (k, p) in shape.iter_mut().enumerate() {
                    p[0] += leaf[2 * k];
                    p[1] += leaf[2 * k + 1];
                }
            }
        }
        shape.into_iter().map(to_img).collect()
    }
}
