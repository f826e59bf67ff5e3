//! dlib's 5-point shape predictor (an ensemble of regression trees, Kazemi & Sullivan 2014), as
//! `dlib::shape_predictor::operator()` evaluates it. It gives the 5 parts dlib's ResNet was
//! trained to be aligned on: the outer and inner corner of each eye and the base of the nose.

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

/// The predictor's trees and feature-pixel layout, stored flat: a few large buffers read
/// straight from the weights file (one allocation per leaf made loading cost ~15 ms).
pub struct ShapePredictor {
    initial: Vec<[f32; 2]>,
    /// Trees per cascade level.
    trees: usize,
    /// Splits per tree (each tree is a complete binary tree: `splits + 1` leaves).
    splits_per_tree: usize,
    /// (idx1, idx2, threshold) of each split: level after level, tree after tree, heap order.
    splits: Vec<(u32, u32, f32)>,
    /// Leaf vectors (2 * parts floats each), in the same order as the trees.
    leaves: Vec<f32>,
    /// Feature pixels per level.
    pixels: usize,
    /// Anchor part of each feature pixel, level after level.
    anchors: Vec<usize>,
    /// Offset of each feature pixel from its anchor, level after level.
    deltas: Vec<[f32; 2]>,
}

/// A tensor of the weights file with its dims, checked for dtype and rank.
fn tensor<'a>(
    st: &'a safetensors::SafeTensors<'a>,
    name: &str,
    dtype: safetensors::Dtype,
    rank: usize,
) -> Result<(Vec<usize>, &'a [u8])> {
    let bad = |reason: String| Error::Model {
        name: SHAPE_PREDICTOR_5.to_string(),
        reason,
    };
    let view = st
        .tensor(name)
        .map_err(|_| bad(format!("missing tensor {name}")))?;
    if view.dtype() != dtype || view.shape().len() != rank {
        return Err(bad(format!(
            "{name}: {:?} {:?}, expected {dtype:?} of rank {rank}",
            view.dtype(),
            view.shape()
        )));
    }
    Ok((view.shape().to_vec(), view.data()))
}

/// Little-endian 4-byte values.
fn words<T>(data: &[u8], f: impl Fn([u8; 4]) -> T) -> Vec<T> {
    data.chunks_exact(4)
        .map(|c| f([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl ShapePredictor {
    /// Loads `shape_predictor_5.safetensors` from `source`.
    pub fn new(source: &ModelSource) -> Result<Self> {
        use safetensors::Dtype::{F32, U32};
        let bytes = source.bytes(SHAPE_PREDICTOR_5)?;
        let bad = |reason: &str| Error::Model {
            name: SHAPE_PREDICTOR_5.to_string(),
            reason: reason.to_string(),
        };
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(&format!("not a valid safetensors file: {e}")))?;
        let (_, initial) = tensor(&st, "initial_shape", F32, 1)?;
        let initial = words(initial, f32::from_le_bytes);
        let (dims, split_idx) = tensor(&st, "split_idx", U32, 4)?;
        let (nc, nt, ns) = (dims[0], dims[1], dims[2]);
        let (_, thresh) = tensor(&st, "split_thresh", F32, 3)?;
        let (leaf_dims, leaves) = tensor(&st, "leaf_values", F32, 4)?;
        let (nl, dim) = (leaf_dims[2], leaf_dims[3]);
        let (anchor_dims, anchors) = tensor(&st, "anchor_idx", U32, 2)?;
        let np = anchor_dims[1];
        let (_, deltas) = tensor(&st, "deltas", F32, 3)?;
        let parts = initial.len() / 2;
        let consistent = dim == initial.len()
            && parts > 0
            && ns > 0
            && nl == ns + 1
            && dims[3] == 2
            && leaf_dims[..2] == [nc, nt]
            && anchor_dims[0] == nc
            && split_idx.len() == nc * nt * ns * 8
            && thresh.len() == nc * nt * ns * 4
            && deltas.len() == nc * np * 8;
        if !consistent {
            return Err(bad("inconsistent tree shapes"));
        }
        let idx = words(split_idx, u32::from_le_bytes);
        if idx.iter().any(|&i| i as usize >= np) {
            return Err(bad("a split names a feature pixel that does not exist"));
        }
        let splits = idx
            .chunks_exact(2)
            .zip(words(thresh, f32::from_le_bytes))
            .map(|(ab, th)| (ab[0], ab[1], th))
            .collect();
        let deltas = words(deltas, f32::from_le_bytes);
        Ok(ShapePredictor {
            initial: initial.chunks(2).map(|p| [p[0], p[1]]).collect(),
            trees: nt,
            splits_per_tree: ns,
            splits,
            leaves: words(leaves, f32::from_le_bytes),
            pixels: np,
            anchors: words(anchors, |b| (u32::from_le_bytes(b) as usize).min(parts - 1)),
            deltas: deltas.chunks_exact(2).map(|d| [d[0], d[1]]).collect(),
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
        let (ns, dim) = (self.splits_per_tree, 2 * shape.len());
        let levels = self.splits.len() / (self.trees * ns);
        for level in 0..levels {
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
            let pixels = level * self.pixels..(level + 1) * self.pixels;
            let feats: Vec<f32> = self.anchors[pixels.clone()]
                .iter()
                .zip(&self.deltas[pixels])
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
            let per_level = self.trees * ns;
            let trees = self.splits[level * per_level..(level + 1) * per_level]
                .chunks(ns)
                .zip(self.leaves[level * self.trees * (ns + 1) * dim..].chunks(dim * (ns + 1)));
            for (splits, leaves) in trees {
                let mut i = 0;
                while i < splits.len() {
                    let (a, b, th) = splits[i];
                    i = if feats[a as usize] - feats[b as usize] > th {
                        2 * i + 1
                    } else {
                        2 * i + 2
                    };
                }
                let leaf = &leaves[(i - splits.len()) * dim..][..dim];
                for (k, p) in shape.iter_mut().enumerate() {
                    p[0] += leaf[2 * k];
                    p[1] += leaf[2 * k + 1];
                }
            }
        }
        shape.into_iter().map(to_img).collect()
    }
}
