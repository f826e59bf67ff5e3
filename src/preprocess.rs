//! Image resampling shared by the pipeline stages: area ("adaptive average") resizing of an image
//! region into a normalised CHW float buffer, as PyTorch's `interpolate(mode="area")` does.

use image::RgbImage;

/// A pixel rectangle `[x0, x1) x [y0, y1)` inside an image (0-based, end exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Left column (inclusive).
    pub x0: usize,
    /// Top row (inclusive).
    pub y0: usize,
    /// Right column (exclusive).
    pub x1: usize,
    /// Bottom row (exclusive).
    pub y1: usize,
}

impl Region {
    /// The whole image.
    pub fn full(img: &RgbImage) -> Self {
        Region {
            x0: 0,
            y0: 0,
            x1: img.width() as usize,
            y1: img.height() as usize,
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.x1 - self.x0
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.y1 - self.y0
    }
}

/// Input cells `[start, end)` averaged into output cell `i` when `n_in` cells become `n_out`:
/// PyTorch's adaptive pooling bounds `floor(i*in/out)` and `ceil((i+1)*in/out)`.
fn area_bounds(n_in: usize, n_out: usize) -> Vec<(usize, usize)> {
    (0..n_out)
        .map(|i| {
            let start = i * n_in / n_out;
            let end = ((i + 1) * n_in).div_ceil(n_out);
            (start, end)
        })
        .collect()
}

/// Area-resizes `region` of `img` to `out_w x out_h` and writes it as planar R,G,B floats
/// (`3 * out_h * out_w` values) into `dst`, each value mapped through `norm`.
///
/// The region must be non-empty and inside the image; callers clip first.
pub fn area_resize_chw(
    img: &RgbImage,
    region: Region,
    out_w: usize,
    out_h: usize,
    norm: impl Fn(f32) -> f32,
    dst: &mut [f32],
) {
    area_resize_chw_rows(img, region, out_w, out_h, 0..out_h, norm, dst);
}

/// Output rows `out_rows` of [`area_resize_chw`]'s result (`3 * out_rows.len() * out_w` values,
/// planar), computed from only the source rows they need and bit-identical to the same rows of
/// the whole resize: a large image is resized band by band in bounded memory.
pub fn area_resize_chw_rows(
    img: &RgbImage,
    region: Region,
    out_w: usize,
    out_h: usize,
    out_rows: std::ops::Range<usize>,
    norm: impl Fn(f32) -> f32,
    dst: &mut [f32],
) {
    assert!(region.width() > 0 && region.height() > 0, "empty region");
    assert!(region.x1 <= img.width() as usize && region.y1 <= img.height() as usize);
    assert!(out_rows.start < out_rows.end && out_rows.end <= out_h);
    assert_eq!(dst.len(), 3 * out_w * out_rows.len());
    let cols = area_bounds(region.width(), out_w);
    let rows = &area_bounds(region.height(), out_h)[out_rows.clone()];
    // Source rows (relative to the region) the requested output rows average.
    let src0 = rows[0].0;
    let src1 = rows.iter().map(|r| r.1).max().unwrap_or(src0);
    let stride = img.width() as usize * 3;
    let raw = img.as_raw();

    // Horizontal pass: every needed region row becomes out_w column means (interleaved RGB).
    let mut tmp = vec![0f32; (src1 - src0) * out_w * 3];
    for (r, tmp_row) in tmp.chunks_exact_mut(out_w * 3).enumerate() {
        let row = &raw[(region.y0 + src0 + r) * stride..][region.x0 * 3..region.x1 * 3];
        for (j, &(c0, c1)) in cols.iter().enumerate() {
            let mut acc = [0f32; 3];
            for px in row[c0 * 3..c1 * 3].chunks_exact(3) {
                acc[0] += px[0] as f32;
                acc[1] += px[1] as f32;
                acc[2] += px[2] as f32;
            }
            let n = (c1 - c0) as f32;
            tmp_row[j * 3..j * 3 + 3].copy_from_slice(&[acc[0] / n, acc[1] / n, acc[2] / n]);
        }
    }

    // Vertical pass: average the row means, then normalise into the planes.
    let plane = out_w * out_rows.len();
    let mut acc = vec![0f32; out_w * 3];
    for (i, &(r0, r1)) in rows.iter().enumerate() {
        let (r0, r1) = (r0 - src0, r1 - src0);
        acc.iter_mut().for_each(|a| *a = 0.0);
        for tmp_row in tmp[r0 * out_w * 3..r1 * out_w * 3].chunks_exact(out_w * 3) {
            acc.iter_mut().zip(tmp_row).for_each(|(a, v)| *a += v);
        }
        let n = (r1 - r0) as f32;
        for j in 0..out_w {
            for c in 0..3 {
                dst[c * plane + i * out_w + j] = norm(acc[j * 3 + c] / n);
            }
        }
    }
}

/// Area-downscales `img` to `out_w x out_h` (8-bit RGB, rounded), in bands of output rows so
/// the working memory stays small whatever the source's size.
pub fn area_downscale(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    use rayon::prelude::*;
    let (ow, oh) = (out_w as usize, out_h as usize);
    let mut out = RgbImage::new(out_w, out_h);
    if ow == 0 || oh == 0 {
        return out;
    }
    // Bands of about a million output values, resized in parallel (each band reads only the
    // source rows it needs, so the result does not depend on the number of threads).
    let band = (1 << 20) / (ow * 3) + 1;
    out.as_mut()
        .par_chunks_mut(band * ow * 3)
        .enumerate()
        .for_each(|(b, dst)| {
            let r0 = b * band;
            let r1 = (r0 + band).min(oh);
            let n = (r1 - r0) * ow;
            let mut planes = vec![0.0; 3 * n];
            area_resize_chw_rows(img, Region::full(img), ow, oh, r0..r1, |v| v, &mut planes);
            for (i, px) in dst.chunks_exact_mut(3).enumerate() {
                for (c, v) in px.iter_mut().enumerate() {
                    *v = planes[c * n + i].round().clamp(0.0, 255.0) as u8;
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_bounds_match_pytorch_adaptive_pooling() {
        // 5 -> 3: [0,2), [1,4), [3,5)
        assert_eq!(area_bounds(5, 3), vec![(0, 2), (1, 4), (3, 5)]);
        // Upsampling 2 -> 4 repeats cells.
        assert_eq!(area_bounds(2, 4), vec![(0, 1), (0, 1), (1, 2), (1, 2)]);
    }

    #[test]
    fn area_resize_averages_exact_blocks() {
        let img = RgbImage::from_fn(4, 2, |x, y| image::Rgb([(x * 10 + y) as u8, 100, 200]));
        let mut out = vec![0f32; 3 * 2];
        area_resize_chw(&img, Region::full(&img), 2, 1, |v| v, &mut out);
        // Block (0..2, 0..2) of R: 0,10,1,11 -> 5.5; block (2..4): 20,30,21,31 -> 25.5
        assert_eq!(out, vec![5.5, 25.5, 100.0, 100.0, 200.0, 200.0]);
    }
}
