//! Face alignment: a least-squares similarity transform (Umeyama, no reflection) from 5 landmarks
//! to a template, and bilinear sampling of a square chip.
//!
//! Templates are data: dlib's 150 px chip (padding 0.25) for dlib's own 5 parts, the same chip
//! frame for MTCNN's 5 points (the default for the dlib ResNet), the ArcFace 112 px template, and
//! the FaceNet-style crop (detection box plus a 44 px margin, no rotation).

pub mod shape_predictor;

use image::{Rgb, RgbImage};

use crate::detect::{BBox, Point};

/// dlib's 5-point template in the unit square, in `shape_predictor_5` part order: image-right
/// eye outer and inner corner, image-left eye outer and inner corner, nose base.
pub const DLIB_5_UNIT: [[f32; 2]; 5] = [
    [0.859_567_5, 0.213_498_15],
    [0.646_060_5, 0.228_967_44],
    [0.120_575_06, 0.213_727_45],
    [0.334_085_06, 0.229_064_24],
    [0.490_112_3, 0.627_797_5],
];

/// MTCNN's 5 points (eye centres, nose tip, mouth corners; image-left first) in dlib's 150 px
/// chip frame (padding 0.25). Measured: for the 78 faces that both dlib (HOG + 5-point
/// predictor, `../shared/golden/dlib_chips.json`) and facenet-pytorch's MTCNN
/// (`golden/mtcnn.json`) find, MTCNN's points mapped through dlib's own chip transform, averaged,
/// then made mirror-symmetric about the axis of dlib's template (x = 74.01).
pub const MTCNN_IN_DLIB_150: [[f32; 2]; 5] = [
    [46.78, 47.11],
    [101.24, 47.11],
    [74.01, 79.63],
    [48.74, 105.23],
    [99.28, 105.23],
];

/// The ArcFace/insightface 112x112 template for MTCNN-style points.
pub const ARCFACE_112: [[f32; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// How a chip is cut out of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// dlib's own chip: dlib's 5-point shape predictor run in the face box, its parts aligned
    /// to dlib's template (padding 0.25), exactly what the dlib ResNet was trained on.
    Dlib,
    /// dlib's chip frame with MTCNN's 5 points mapped onto [`MTCNN_IN_DLIB_150`] (no predictor).
    DlibMtcnn,
    /// ArcFace 112 px template for MTCNN's 5 points, scaled to the chip size.
    Arcface,
    /// FaceNet crop: the detection box grown by 44 px (22 a side), resized, no rotation.
    Facenet,
}

impl Template {
    /// The chip side this template is defined for (dlib 150, ArcFace 112, FaceNet 160).
    pub fn default_size(self) -> u32 {
        match self {
            Template::Dlib | Template::DlibMtcnn => 150,
            Template::Arcface => 112,
            Template::Facenet => 160,
        }
    }

    /// Where MTCNN's 5 points go in a `size` chip (`None` for templates not built on them).
    pub fn points(self, size: u32) -> Option<[Point; 5]> {
        let (table, base) = match self {
            Template::DlibMtcnn => (&MTCNN_IN_DLIB_150, 150.0),
            Template::Arcface => (&ARCFACE_112, 112.0),
            Template::Dlib | Template::Facenet => return None,
        };
        let s = size as f32 / base;
        Some(table.map(|[x, y]| Point { x: x * s, y: y * s }))
    }
}

/// dlib's 5-part template points in a `size` chip with `padding` (dlib's
/// `get_face_chip_details`: `(padding + p) / (1 + 2 padding) * size`).
pub fn dlib_parts_template(size: u32, padding: f32) -> [Point; 5] {
    DLIB_5_UNIT.map(|[x, y]| Point {
        x: (padding + x) / (1.0 + 2.0 * padding) * size as f32,
        y: (padding + y) / (1.0 + 2.0 * padding) * size as f32,
    })
}

/// A similarity transform `p -> [a -b; b a] p + t` (rotation, uniform scale, translation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    /// `scale * cos(angle)`.
    pub a: f32,
    /// `scale * sin(angle)`.
    pub b: f32,
    /// Translation x.
    pub tx: f32,
    /// Translation y.
    pub ty: f32,
}

impl Similarity {
    /// The least-squares similarity mapping `from[i]` onto `to[i]` (Umeyama's solution without
    /// reflection). `None` when the source points coincide.
    pub fn estimate(from: &[Point], to: &[Point]) -> Option<Self> {
        let n = from.len().min(to.len()) as f64;
        if n < 2.0 {
            return None;
        }
        let mean = |ps: &[Point]| {
            let (sx, sy) = ps
                .iter()
                .fold((0.0, 0.0), |(x, y), p| (x + p.x as f64, y + p.y as f64));
            (sx / n, sy / n)
        };
        let (msx, msy) = mean(from);
        let (mdx, mdy) = mean(to);
        let (mut dot, mut cross, mut norm) = (0f64, 0f64, 0f64);
        for (s, d) in from.iter().zip(to) {
            let (sx, sy) = (s.x as f64 - msx, s.y as f64 - msy);
            let (dx, dy) = (d.x as f64 - mdx, d.y as f64 - mdy);
            dot += sx * dx + sy * dy;
            cross += sx * dy - sy * dx;
            norm += sx * sx + sy * sy;
        }
        if norm <= f64::EPSILON {
            return None;
        }
        let (a, b) = (dot / norm, cross / norm);
        Some(Similarity {
            a: a as f32,
            b: b as f32,
            tx: (mdx - (a * msx - b * msy)) as f32,
            ty: (mdy - (b * msx + a * msy)) as f32,
        })
    }

    /// Maps a point.
    pub fn apply(&self, p: Point) -> Point {
        Point {
            x: self.a * p.x - self.b * p.y + self.tx,
            y: self.b * p.x + self.a * p.y + self.ty,
        }
    }

    /// Uniform scale factor.
    pub fn scale(&self) -> f32 {
        self.a.hypot(self.b)
    }
}

/// Bilinear sample of `img` at `(x, y)`; black outside the image (as dlib).
fn sample(img: &RgbImage, x: f32, y: f32) -> Rgb<u8> {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (xi, yi) = (x0 as i64, y0 as i64);
    if xi < 0 || yi < 0 || xi + 1 >= w || yi + 1 >= h {
        // dlib only interpolates when all four neighbours are inside.
        return Rgb([0, 0, 0]);
    }
    let px = |dx: i64, dy: i64| img.get_pixel((xi + dx) as u32, (yi + dy) as u32).0;
    let (p00, p10, p01, p11) = (px(0, 0), px(1, 0), px(0, 1), px(1, 1));
    Rgb(std::array::from_fn(|c| {
        let top = p00[c] as f32 * (1.0 - fx) + p10[c] as f32 * fx;
        let bottom = p01[c] as f32 * (1.0 - fx) + p11[c] as f32 * fx;
        (top * (1.0 - fy) + bottom * fy + 0.5).clamp(0.0, 255.0) as u8
    }))
}

/// Cuts a `size` x `size` chip given the chip-to-image transform, as dlib's
/// `extract_image_chip` maps it: the chip's corners go to the corners of the rotated rectangle
/// of side `size * scale` centred on the image of the chip centre.
pub fn extract_chip(img: &RgbImage, chip_to_image: &Similarity, size: u32) -> RgbImage {
    let s = size as f32;
    let centre = chip_to_image.apply(Point {
        x: s / 2.0,
        y: s / 2.0,
    });
    let side = s * chip_to_image.scale();
    let (cos, sin) = (
        chip_to_image.a / chip_to_image.scale(),
        chip_to_image.b / chip_to_image.scale(),
    );
    let corner = |u: f32, v: f32| Point {
        x: centre.x + cos * u - sin * v,
        y: centre.y + sin * u + cos * v,
    };
    let tl = corner(-side / 2.0, -side / 2.0);
    let tr = corner(side / 2.0, -side / 2.0);
    let bl = corner(-side / 2.0, side / 2.0);
    let span = (size.max(2) - 1) as f32;
    let (ux, uy) = ((tr.x - tl.x) / span, (tr.y - tl.y) / span);
    let (vx, vy) = ((bl.x - tl.x) / span, (bl.y - tl.y) / span);
    RgbImage::from_fn(size, size, |cx, cy| {
        let (cx, cy) = (cx as f32, cy as f32);
        sample(img, tl.x + ux * cx + vx * cy, tl.y + uy * cx + vy * cy)
    })
}

/// Cuts aligned chips of detected faces with one template and size.
pub struct Aligner {
    template: Template,
    size: u32,
    predictor: Option<shape_predictor::ShapePredictor>,
    detector: crate::detect::DetectorKind,
}

impl Aligner {
    /// An aligner; the dlib template loads the shape predictor from `source`.
    pub fn new(
        source: &crate::models::ModelSource,
        template: Template,
        size: u32,
    ) -> crate::Result<Self> {
        let predictor = match template {
            Template::Dlib => Some(shape_predictor::ShapePredictor::new(source)?),
            _ => None,
        };
        Ok(Aligner {
            template,
            size,
            predictor,
            detector: Default::default(),
        })
    }

    /// The same aligner for boxes found by `kind` (the shape predictor's box is derived from
    /// the detector's box by that detector's own offsets).
    pub fn for_detector(mut self, kind: crate::detect::DetectorKind) -> Self {
        self.detector = kind;
        self
    }

    /// The template.
    pub fn template(&self) -> Template {
        self.template
    }

    /// The chip side.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The aligned chip of a face given its detected box and landmarks. The FaceNet template uses
    /// the box (grown by `44 * size / 160` px, no rotation).
    pub fn chip(&self, img: &RgbImage, bbox: &BBox, landmarks: &[Point; 5]) -> RgbImage {
        let size = self.size;
        if let Some(predictor) = &self.predictor {
            let rect = shape_predictor::ShapePredictor::box_from_detection(bbox, self.detector);
            let parts = predictor.predict(img, &rect);
            if let Some(t) = Similarity::estimate(&dlib_parts_template(size, 0.25), &parts) {
                return extract_chip(img, &t, size);
            }
        }
        match self.template.points(size) {
            Some(dst) => match Similarity::estimate(&dst, landmarks) {
                Some(t) => extract_chip(img, &t, size),
                None => crop_box(img, bbox, 0.0, size),
            },
            None => crop_box(img, bbox, 44.0 * size as f32 / 160.0, size),
        }
    }
}

/// The box grown by `margin` px in total (half a side), clipped to the image, resized to
/// `size` x `size` (bilinear), as facenet-pytorch's `extract_face`.
pub fn crop_box(img: &RgbImage, bbox: &BBox, margin: f32, size: u32) -> RgbImage {
    let (w, h) = (img.width() as f32, img.height() as f32);
    let x1 = (bbox.x1 - margin / 2.0).max(0.0).floor() as u32;
    let y1 = (bbox.y1 - margin / 2.0).max(0.0).floor() as u32;
    let x2 = ((bbox.x2 + margin / 2.0).min(w).ceil() as u32)
        .max(x1 + 1)
        .min(img.width());
    let y2 = ((bbox.y2 + margin / 2.0).min(h).ceil() as u32)
        .max(y1 + 1)
        .min(img.height());
    let x1 = x1.min(x2.saturating_sub(1));
    let y1 = y1.min(y2.saturating_sub(1));
    let view = image::imageops::crop_imm(img, x1, y1, x2 - x1, y2 - y1).to_image();
    image::imageops::resize(&view, size, size, image::imageops::FilterType::Triangle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_recovers_a_known_transform() {
        let t = Similarity {
            a: 1.2,
            b: -0.3,
            tx: 5.0,
            ty: -7.0,
        };
        let from = dlib_parts_template(150, 0.25);
        let to = from.map(|p| t.apply(p));
        let est = Similarity::estimate(&from, &to).unwrap();
        assert!((est.a - t.a).abs() < 1e-4 && (est.b - t.b).abs() < 1e-4);
        assert!((est.tx - t.tx).abs() < 1e-2 && (est.ty - t.ty).abs() < 1e-2);
    }

    #[test]
    fn dlib_template_matches_the_documented_chip_points() {
        let p = dlib_parts_template(150, 0.25);
        assert!((p[0].x - 110.957).abs() < 1e-3 && (p[0].y - 46.350).abs() < 1e-3);
        assert!((p[4].x - 74.011).abs() < 1e-3 && (p[4].y - 87.780).abs() < 1e-3);
    }

    #[test]
    fn identity_transform_copies_pixels() {
        let img = RgbImage::from_fn(20, 20, |x, y| Rgb([x as u8 * 10, y as u8 * 10, 7]));
        // Chip of 10 px whose corners map onto pixels (5,5) .. (14,14).
        let t = Similarity {
            a: 1.0,
            b: 0.0,
            tx: 5.0,
            ty: 5.0,
        };
        let chip = extract_chip(&img, &t, 10);
        // side 10 -> corners at 5 and 15 with span 9 -> step 10/9: near, not exactly, a copy.
        assert_eq!(chip.get_pixel(0, 0), img.get_pixel(5, 5));
        assert_eq!(chip.dimensions(), (10, 10));
    }
}
