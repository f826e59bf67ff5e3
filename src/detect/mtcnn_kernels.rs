//! MTCNN's CPU forward passes on plain f32 buffers, bit-identical to the candle networks of
//! `nets.rs` run through `crate::nn`.
//!
//! The generic layers spend most of an MTCNN detection outside the arithmetic: every layer
//! allocates and zero-fills its output, transposes batched outputs from `[c, b, h*w]` to
//! `[b, c, h*w]` (which the next layer's patch matrix reads back plane by plane), takes a
//! separate pass for PReLU and softmax, and every candle matmul reads `/proc/cpuinfo` to pick
//! its thread count. Here activations stay in the `[channel, image, h, w]` layout the batched
//! product writes, buffers come from a per-thread pool, and the crops and pyramid levels are
//! averaged from per-row prefix sums of the photo built once per detection.
//!
//! Convolutions with at most 512 taps run in [`direct`], which does for every output value the
//! exact arithmetic of `gemm`'s FMA kernels (one fused chain over the taps in patch-matrix
//! order, then `+ bias`) without building a patch matrix or packing operands. Every other
//! product is the same `gemm` call (same m, n, k, operand layouts and accumulation onto the
//! bias) that `crate::nn` or candle makes for the same layer and batch, and every element-wise
//! step uses the same expression, so the results are bit-identical (tests in `mtcnn.rs`
//! compare both paths bit for bit; candidate chunking is unchanged, since `gemm`'s depth
//! blocking above 512 taps depends on the product's size).

use std::cell::RefCell;
use std::ops::Range;

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use image::RgbImage;
use rayon::prelude::*;

use crate::preprocess::Region;

// ---------------------------------------------------------------------------------------------
// Buffers

thread_local! {
    /// Reusable f32 buffers of this thread (a fresh large buffer costs a page fault per 4 KiB).
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// Buffers larger than this many floats (16 MB) go back to the allocator instead of the pool,
/// so the pool does not hold on to a large photo's P-Net activations.
const POOL_MAX_FLOATS: usize = 4 << 20;
/// Most buffers the pool keeps per thread.
const POOL_MAX_BUFFERS: usize = 12;
/// Most floats the pool keeps per thread (32 MB): a large photo's P-Net buffers are not held
/// for the rest of the run.
const POOL_MAX_TOTAL: usize = 8 << 20;

/// A float buffer from this thread's pool: the first `len` values of a vector that keeps its
/// whole (initialised) length while pooled, so reusing it needs no zero-fill.
pub(super) struct Buf {
    v: Vec<f32>,
    len: usize,
}

impl std::ops::Deref for Buf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.v[..self.len]
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.v[..self.len]
    }
}

/// A buffer of `len` floats from this thread's pool; its contents are unspecified.
pub(super) fn take(len: usize) -> Buf {
    let pooled = POOL.with(|p| {
        let mut p = p.borrow_mut();
        // Best fit: the smallest pooled buffer that holds `len`.
        let best = p
            .iter()
            .enumerate()
            .filter(|(_, v)| v.len() >= len)
            .min_by_key(|(_, v)| v.len())
            .map(|(i, _)| i);
        best.map(|i| p.swap_remove(i))
    });
    Buf {
        v: pooled.unwrap_or_else(|| vec![0.0; len]),
        len,
    }
}

/// Returns a buffer to this thread's pool (a pool with its most buffers drops its smallest;
/// one at its most floats drops the returned buffer).
pub(super) fn give(b: Buf) {
    let v = b.v;
    if v.is_empty() || v.len() > POOL_MAX_FLOATS {
        return;
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.iter().map(Vec::len).sum::<usize>() + v.len() > POOL_MAX_TOTAL {
            return;
        }
        if p.len() >= POOL_MAX_BUFFERS {
            let smallest = (0..p.len()).min_by_key(|&i| p[i].len());
            match smallest {
                Some(i) if p[i].len() < v.len() => {
                    p.swap_remove(i);
                }
                _ => return,
            }
        }
        p.push(v);
    });
}

// ---------------------------------------------------------------------------------------------
// Area resampling (preprocess::area_resize_chw_rows, bit-identical)

/// Input cells `[start, end)` averaged into each output cell (PyTorch's adaptive pooling).
fn area_bounds(n_in: usize, n_out: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n_out).map(move |i| (i * n_in / n_out, ((i + 1) * n_in).div_ceil(n_out)))
}

/// The RGB means of a row's cells from its prefix sums: cell `j` is
/// `(prow[hi[j] + c] - prow[lo[j] + c]) / div[j]` for channel `c`, written to `out[j * 3 + c]`
/// (exact sums: they stay below 2^24, `EXACT_CELL`).
///
/// # Safety
/// `lo[j] <= hi[j]` and `hi[j] + 4 <= prow.len()` for every cell `j < out.len() / 3`; `lo`,
/// `hi` and `div` hold `out.len() / 3` values.
#[inline(always)]
unsafe fn cell_means(prow: &[u32], lo: &[u32], hi: &[u32], div: &[f32], out: &mut [f32]) {
    let cells = out.len() / 3;
    debug_assert!(lo.len() >= cells && hi.len() >= cells && div.len() >= cells);
    #[allow(unused_mut)]
    let mut j = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // 4 lanes per cell (the 4th is the next prefix entry, its result overwritten by the
        // next cell's store); the last cell goes below, so no store passes the row's end.
        let (p, o) = (prow.as_ptr(), out.as_mut_ptr());
        while j + 1 < cells {
            let a = _mm_loadu_si128(p.add(*lo.get_unchecked(j) as usize) as *const __m128i);
            let b = _mm_loadu_si128(p.add(*hi.get_unchecked(j) as usize) as *const __m128i);
            let sum = _mm_cvtepi32_ps(_mm_sub_epi32(b, a));
            let mean = _mm_div_ps(sum, _mm_set1_ps(*div.get_unchecked(j)));
            _mm_storeu_ps(o.add(j * 3), mean);
            j += 1;
        }
    }
    for j in j..cells {
        let (a, b, n) = (lo[j] as usize, hi[j] as usize, div[j]);
        for c in 0..3 {
            let (pa, pb) = (*prow.get_unchecked(a + c), *prow.get_unchecked(b + c));
            out[j * 3 + c] = (pb - pa) as i32 as f32 / n;
        }
    }
}

/// Photos up to this many pixels get a prefix-sum table (12 bytes per pixel).
const PREFIX_MAX_PIXELS: usize = 2_200_000;
/// Widest averaging cell for which integer sums equal the f32 running sums of the reference
/// (`255 * cell < 2^24`: every partial sum is an exactly representable integer).
const EXACT_CELL: usize = 65_000;

/// The photo MTCNN samples its pyramid levels and crops from, with per-row running sums of
/// each channel when the photo is small enough: any horizontal run of pixels then sums in
/// O(1), so the nine pyramid levels and the ~100 crops of a photo do not re-read its pixels.
pub(super) struct Source<'a> {
    img: &'a RgbImage,
    /// `prefix[(y * (w + 1) + x) * 3 + c]`: sum of channel `c` over row `y`, columns `0..x`.
    prefix: Option<Vec<u32>>,
}

impl<'a> Source<'a> {
    /// Wraps `img`, with the prefix table if `prefix` and the photo is small enough for it.
    pub(super) fn new(img: &'a RgbImage, prefix: bool) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let prefix = (prefix && w * h <= PREFIX_MAX_PIXELS).then(|| {
            // One padding entry at the end, for `cell_means`' 4-lane reads.
            let mut p = vec![0u32; h * (w + 1) * 3 + 1];
            for (row, out) in img
                .as_raw()
                .chunks_exact(w * 3)
                .zip(p.chunks_exact_mut((w + 1) * 3))
            {
                let mut acc = [0u32; 3];
                for (px, o) in row.chunks_exact(3).zip(out[3..].chunks_exact_mut(3)) {
                    acc[0] += px[0] as u32;
                    acc[1] += px[1] as u32;
                    acc[2] += px[2] as u32;
                    o.copy_from_slice(&acc);
                }
            }
            p
        });
        Source { img, prefix }
    }

    /// The photo.
    pub(super) fn image(&self) -> &RgbImage {
        self.img
    }

    /// Area-resizes `region` to `out_w x out_h` and writes output rows `out_rows` as planar
    /// R, G, B (planes `plane_stride` floats apart, rows `out_w` apart) into `dst`, each value
    /// mapped through `norm`: bit-identical to `preprocess::area_resize_chw_rows`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn area_resize(
        &self,
        region: Region,
        out_w: usize,
        out_h: usize,
        out_rows: Range<usize>,
        norm: impl Fn(f32) -> f32,
        dst: &mut [f32],
        plane_stride: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        if has_avx512() {
            // SAFETY: the CPU has AVX-512F and AVX2.
            return unsafe {
                self.area_resize_avx512(region, out_w, out_h, out_rows, norm, dst, plane_stride)
            };
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe {
                self.area_resize_avx2(region, out_w, out_h, out_rows, norm, dst, plane_stride)
            };
        }
        self.area_resize_body(region, out_w, out_h, out_rows, norm, dst, plane_stride)
    }

    /// [`Source::area_resize`] compiled for AVX-512 (the same operations per value, 16 lanes
    /// at a time: every step is element-wise, so the lane count changes no result).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn area_resize_avx512(
        &self,
        region: Region,
        out_w: usize,
        out_h: usize,
        out_rows: Range<usize>,
        norm: impl Fn(f32) -> f32,
        dst: &mut [f32],
        plane_stride: usize,
    ) {
        self.area_resize_body(region, out_w, out_h, out_rows, norm, dst, plane_stride)
    }

    /// [`Source::area_resize`] compiled for AVX2 (the same operations per value, 8 lanes at a
    /// time).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn area_resize_avx2(
        &self,
        region: Region,
        out_w: usize,
        out_h: usize,
        out_rows: Range<usize>,
        norm: impl Fn(f32) -> f32,
        dst: &mut [f32],
        plane_stride: usize,
    ) {
        self.area_resize_body(region, out_w, out_h, out_rows, norm, dst, plane_stride)
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn area_resize_body(
        &self,
        region: Region,
        out_w: usize,
        out_h: usize,
        out_rows: Range<usize>,
        norm: impl Fn(f32) -> f32,
        dst: &mut [f32],
        plane_stride: usize,
    ) {
        assert!(region.width() > 0 && region.height() > 0, "empty region");
        assert!(region.x1 <= self.img.width() as usize && region.y1 <= self.img.height() as usize);
        assert!(out_rows.start < out_rows.end && out_rows.end <= out_h);
        let cols: Vec<(usize, usize)> = area_bounds(region.width(), out_w).collect();
        let rows: Vec<(usize, usize)> = area_bounds(region.height(), out_h)
            .skip(out_rows.start)
            .take(out_rows.len())
            .collect();
        let src0 = rows[0].0;
        let src1 = rows.iter().map(|r| r.1).max().unwrap_or(src0);
        let widest = cols.iter().map(|&(a, b)| b - a).max().unwrap_or(0);
        let w = self.img.width() as usize;
        let row_len = out_w * 3;

        // Horizontal pass: column means of every needed region row (interleaved RGB). The
        // reference sums u8 values in f32, which is exact (integers below 2^24), so integer
        // sums divided the same way give the same floats.
        let mut tmp = take((src1 - src0) * row_len);
        match &self.prefix {
            Some(p) if widest <= EXACT_CELL => {
                // Per output value: the prefix entries that bound its cell, and its width.
                let mut lo = Vec::with_capacity(out_w);
                let mut hi = Vec::with_capacity(out_w);
                let mut div = Vec::with_capacity(out_w);
                for &(c0, c1) in &cols {
                    lo.push(((region.x0 + c0) * 3) as u32);
                    hi.push(((region.x0 + c1) * 3) as u32);
                    div.push((c1 - c0) as f32);
                }
                // Every cell's 4 reads are inside a prefix row and the padding float after the
                // table: hi + 3 <= x1 * 3 + 3 <= (w + 1) * 3 (and far below 2^32).
                let top = hi.iter().copied().max().unwrap_or(0) as usize;
                assert!(top <= w * 3 && lo.iter().zip(&hi).all(|(a, b)| a <= b));
                for (r, tmp_row) in tmp.chunks_exact_mut(row_len).enumerate() {
                    let y = region.y0 + src0 + r;
                    let prow = &p[y * (w + 1) * 3..(y + 1) * (w + 1) * 3 + 1];
                    // SAFETY: every cell reads at most prow[top + 3], top + 4 <= prow.len().
                    unsafe { cell_means(prow, &lo, &hi, &div, tmp_row) };
                }
            }
            _ => {
                let raw = self.img.as_raw();
                for (r, tmp_row) in tmp.chunks_exact_mut(row_len).enumerate() {
                    let y = region.y0 + src0 + r;
                    let row = &raw[y * w * 3..][region.x0 * 3..region.x1 * 3];
                    for (&(c0, c1), out) in cols.iter().zip(tmp_row.chunks_exact_mut(3)) {
                        let mut acc = [0f32; 3];
                        for px in row[c0 * 3..c1 * 3].chunks_exact(3) {
                            acc[0] += px[0] as f32;
                            acc[1] += px[1] as f32;
                            acc[2] += px[2] as f32;
                        }
                        let n = (c1 - c0) as f32;
                        out.copy_from_slice(&[acc[0] / n, acc[1] / n, acc[2] / n]);
                    }
                }
            }
        }

        // Vertical pass, as the reference: running f32 sums of the row means, in row order.
        let mut acc = take(row_len);
        for (i, &(r0, r1)) in rows.iter().enumerate() {
            let (r0, r1) = (r0 - src0, r1 - src0);
            acc.iter_mut().for_each(|a| *a = 0.0);
            for tmp_row in tmp[r0 * row_len..r1 * row_len].chunks_exact(row_len) {
                acc.iter_mut().zip(tmp_row).for_each(|(a, v)| *a += v);
            }
            let n = (r1 - r0) as f32;
            acc.iter_mut().for_each(|a| *a /= n);
            for c in 0..3 {
                let out = &mut dst[c * plane_stride + i * out_w..][..out_w];
                for (o, &a) in out.iter_mut().zip(acc[c..].iter().step_by(3)) {
                    *o = norm(a);
                }
            }
        }
        give(acc);
        give(tmp);
    }
}

// ---------------------------------------------------------------------------------------------
// Layers

/// Patch-matrix size (floats) above which `nn::Conv2d` convolves one image in row blocks (its
/// `TILE_FLOATS`); the same split keeps the same products.
const TILE_FLOATS: usize = 64 * 1024;

/// A tensor's values as f32, row-major.
fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()
}

/// PReLU exactly as `nn`: `max(x, 0) + a * min(x, 0)`.
#[inline(always)]
fn prelu_slice(v: &mut [f32], a: f32) {
    v.iter_mut().for_each(|x| *x = x.max(0.0) + a * x.min(0.0));
}

/// PReLU on `[c, ...]` planes, channel `c` with `slopes[c]`.
fn prelu_planes(v: &mut [f32], slopes: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { prelu_planes_avx2(v, slopes) };
    }
    prelu_planes_body(v, slopes)
}

/// [`prelu_planes`] compiled for AVX2 (the same expression, 8 lanes at a time).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn prelu_planes_avx2(v: &mut [f32], slopes: &[f32]) {
    prelu_planes_body(v, slopes)
}

#[inline(always)]
fn prelu_planes_body(v: &mut [f32], slopes: &[f32]) {
    let per = v.len() / slopes.len();
    for (plane, &a) in v.chunks_exact_mut(per).zip(slopes) {
        prelu_slice(plane, a);
    }
}

/// `dst[m, n] += lhs[m, k] @ rhs[k, n]`, all row-major, `dst` rows `dst_stride` apart: the
/// call `nn::Conv2d` makes.
///
/// # Safety
/// `dst` must be valid for writes of `m` rows of `n` values, `dst_stride` apart, that nothing
/// else touches during the call; `lhs` holds `m * k` values and `rhs` `k * n`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_acc(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_stride: usize,
    lhs: &[f32],
    rhs: &[f32],
    parallel: bool,
) {
    debug_assert!(lhs.len() >= m * k && rhs.len() >= k * n);
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_stride as isize,
        true,
        lhs.as_ptr(),
        1,
        k as isize,
        rhs.as_ptr(),
        1,
        n as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}

/// Activations of `b` images as `[channels, b, h, w]`.
pub(super) struct Planes {
    /// The values.
    pub data: Buf,
    /// Channels.
    pub c: usize,
    /// Images.
    pub b: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl Planes {
    /// Returns the buffer to the pool.
    pub(super) fn recycle(self) {
        give(self.data);
    }
}

/// A stride-1 unpadded convolution with bias and optional PReLU (`nn::Conv2d` + `Act`).
pub(super) struct Conv {
    weight: Vec<f32>,
    /// The weights regrouped for [`direct`] (`direct::group`).
    grouped: Vec<f32>,
    bias: Vec<f32>,
    slopes: Option<Vec<f32>>,
    c_in: usize,
    c_out: usize,
    k: usize,
}

impl Conv {
    /// Loads `name.weight`, `name.bias` and, if given, `prelu.weight` from `vb`.
    fn load(
        vb: &VarBuilder,
        name: &str,
        prelu: Option<&str>,
        c_in: usize,
        c_out: usize,
        k: usize,
    ) -> Result<Self> {
        let vc = vb.pp(name);
        let weight = values(&vc.get((c_out, c_in, k, k), "weight")?)?;
        let kk = c_in * k * k;
        let grouped = direct::group(&weight, c_out, kk);
        Ok(Conv {
            weight,
            grouped,
            bias: values(&vc.get(c_out, "bias")?)?,
            slopes: match prelu {
                Some(p) => Some(values(&vb.pp(p).get(c_out, "weight")?)?),
                None => None,
            },
            c_in,
            c_out,
            k,
        })
    }

    /// The output channels of `a` then those of `b` in one convolution (same input and kernel
    /// size, no PReLU): each output's arithmetic is its own layer's on the direct path.
    fn stack(a: &Conv, b: &Conv) -> Conv {
        assert!(a.c_in == b.c_in && a.k == b.k && a.slopes.is_none() && b.slopes.is_none());
        let weight = [&a.weight[..], &b.weight[..]].concat();
        let c_out = a.c_out + b.c_out;
        Conv {
            grouped: direct::group(&weight, c_out, a.c_in * a.k * a.k),
            weight,
            bias: [&a.bias[..], &b.bias[..]].concat(),
            slopes: None,
            c_in: a.c_in,
            c_out,
            k: a.k,
        }
    }

    /// Whether [`Conv::forward`] on `h x w` planes runs the [`direct`] kernel.
    fn is_direct(&self, h: usize, w: usize) -> bool {
        direct::usable(self.c_in * self.k * self.k, h, w, self.k)
    }

    /// The convolution (and PReLU) of `x`; `parallel` as `nn`'s "not serial".
    fn forward(&self, x: &Planes, parallel: bool) -> Planes {
        assert_eq!(x.c, self.c_in, "conv input channels");
        let (b, h, w, k) = (x.b, x.h, x.w, self.k);
        let (oh, ow) = (h + 1 - k, w + 1 - k);
        let n = oh * ow;
        let bn = b * n;
        let kk = self.c_in * k * k;
        let mut dst = take(self.c_out * bn);
        let direct = b == 1 && k == 1;
        let mut act_done = false;
        if self.is_direct(h, w) {
            let slopes = self.slopes.as_deref();
            direct::conv(
                x,
                k,
                self.c_out,
                &self.grouped,
                &self.bias,
                slopes,
                &mut dst,
            );
            act_done = true;
        } else if !direct && kk * n > TILE_FLOATS {
            // nn's tiled path: per image, blocks of output rows, one serial product each.
            fill_bias(&mut dst, &self.bias);
            let rows_per = (TILE_FLOATS / (kk * ow)).max(1);
            let blocks: Vec<(usize, Range<usize>)> = (0..b)
                .flat_map(|img| {
                    (0..oh)
                        .step_by(rows_per)
                        .map(move |r| (img, r..(r + rows_per).min(oh)))
                })
                .collect();
            let out = SyncPtr(dst.as_mut_ptr());
            let job = |(img, rows): &(usize, Range<usize>)| {
                let nb = rows.len() * ow;
                let mut cols = take(kk * nb);
                im2col(x, k, *img..*img + 1, rows.clone(), &mut cols);
                // SAFETY: this block writes columns rows.start*ow .. rows.end*ow of image
                // `img`'s plane in each of the c_out channels (rows b*n apart); blocks are
                // disjoint and `dst` outlives the jobs.
                unsafe {
                    let at = out.get().add(img * n + rows.start * ow);
                    gemm_acc(self.c_out, nb, kk, at, bn, &self.weight, &cols, false);
                }
                give(cols);
            };
            if parallel {
                blocks.par_iter().for_each(job);
            } else {
                blocks.iter().for_each(job);
            }
        } else if direct {
            fill_bias(&mut dst, &self.bias);
            // SAFETY: dst holds c_out rows of bn values.
            unsafe {
                gemm_acc(
                    self.c_out,
                    bn,
                    kk,
                    dst.as_mut_ptr(),
                    bn,
                    &self.weight,
                    &x.data,
                    parallel,
                )
            };
        } else {
            fill_bias(&mut dst, &self.bias);
            let mut cols = take(kk * bn);
            im2col(x, k, 0..b, 0..oh, &mut cols);
            // SAFETY: dst holds c_out rows of bn values.
            unsafe {
                gemm_acc(
                    self.c_out,
                    bn,
                    kk,
                    dst.as_mut_ptr(),
                    bn,
                    &self.weight,
                    &cols,
                    parallel,
                )
            };
            give(cols);
        }
        if let (Some(slopes), false) = (&self.slopes, act_done) {
            prelu_planes(&mut dst, slopes);
        }
        Planes {
            data: dst,
            c: self.c_out,
            b,
            h: oh,
            w: ow,
        }
    }
}

/// Every `[c, ...]` plane of `dst` set to its channel's bias (the products accumulate onto it).
fn fill_bias(dst: &mut [f32], bias: &[f32]) {
    let per = dst.len() / bias.len();
    for (plane, &b) in dst.chunks_exact_mut(per).zip(bias) {
        plane.fill(b);
    }
}

/// A direct convolution that does, for every output value, exactly the arithmetic of `gemm`'s
/// FMA kernels on the patch matrix: one accumulator from zero, one fused multiply-add per tap
/// in patch-row order `(ci, ky, kx)`, then `bias + accumulator`. That equality holds while the
/// whole reduction is one `gemm` depth block (`gemm` splits depths above 512) and `gemm` runs
/// its FMA kernels (AVX2+FMA or AVX-512 CPUs), so [`usable`](direct::usable) checks both.
///
/// Vectorised over output positions: a position `p = oy * w + ox` of the input grid reads tap
/// `(ky, kx)` at `p + ky * w + kx`, so 8 consecutive positions are one unaligned load even
/// across rows; positions with `ox >= ow` are computed and dropped. Each step holds 6 output
/// channels x 16 positions in 12 registers (2 loads and 6 broadcasts per 12 FMAs); a layer's
/// last 2 to 8 channels take narrower blocks. Which channels share a block does not change
/// any output's arithmetic. On AVX-512 CPUs (`conv_avx512`) the same channel blocks hold up to
/// 4 registers of 16 positions each (6 channels x 64 positions in 24 of the 32 registers),
/// with the same operations per output, so both kernels give the same bits.
mod direct {
    use super::Planes;

    /// Output channels per full register block.
    const CO: usize = 6;
    /// Output positions per register block (two vectors: with 6 channels 12 accumulators,
    /// 2 input vectors and a broadcast weight fill 15 of the 16 registers, so nothing spills).
    const POS: usize = 16;

    /// The register blocks of `c_out` channels as `(first channel, channels, width)`: blocks
    /// of [`CO`], and the rest in blocks of 4 (8 left: two, as a block of 2 has too few
    /// accumulators to hide the FMA latency) or one of the last 2 to 5. A width is the channel
    /// count rounded up to even, the extra row zero weights whose outputs are dropped.
    fn blocks(c_out: usize) -> impl Iterator<Item = (usize, usize, usize)> {
        let mut co = 0;
        std::iter::from_fn(move || {
            let rest = c_out - co;
            let n = match rest {
                0 => return None,
                8 => 4,
                r => r.min(CO),
            };
            co += n;
            Some((co - n, n, n.next_multiple_of(2)))
        })
    }

    /// `weight` (`[c_out, kk]`) regrouped for [`conv`]: per block of [`blocks`] (the block of
    /// channel `co` at `co * kk`), `[tap][width]`, zero-padded.
    pub fn group(weight: &[f32], c_out: usize, kk: usize) -> Vec<f32> {
        assert_eq!(weight.len(), c_out * kk, "conv weight size");
        let mut grouped = vec![0f32; c_out.next_multiple_of(2) * kk];
        for (co, n, width) in blocks(c_out) {
            let g = &mut grouped[co * kk..][..kk * width];
            for j in 0..n {
                let filter = &weight[(co + j) * kk..][..kk];
                for (t, &v) in filter.iter().enumerate() {
                    g[t * width + j] = v;
                }
            }
        }
        grouped
    }

    /// Whether the direct kernel reproduces `gemm` for a `k x k` convolution with `kk` taps on
    /// `h x w` planes (and the CPU can run it).
    pub fn usable(kk: usize, h: usize, w: usize, k: usize) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let positions = (h >= k && w >= k).then(|| (h - k) * w + (w + 1 - k));
            kk <= 512
                && positions.is_some_and(|p| p >= POS)
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (kk, h, w, k);
            false
        }
    }

    /// `dst[c_out, b, oh, ow] = bias + conv(x)`, then PReLU with `slopes` if given (`nn`'s
    /// expression on each value); `grouped` from [`group`]. Only call when [`usable`].
    pub fn conv(
        x: &Planes,
        k: usize,
        c_out: usize,
        grouped: &[f32],
        bias: &[f32],
        slopes: Option<&[f32]>,
        dst: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            assert!(usable(x.c * k * k, x.h, x.w, k));
            assert_eq!(dst.len(), c_out * x.b * (x.h + 1 - k) * (x.w + 1 - k));
            assert!(grouped.len() >= c_out.next_multiple_of(2) * x.c * k * k);
            assert!(bias.len() >= c_out && slopes.is_none_or(|s| s.len() >= c_out));
            assert!(x.data.len() >= x.c * x.b * x.h * x.w);
            if super::has_avx512() {
                // SAFETY: the CPU has AVX-512F (and, by usable(), AVX2 and FMA); the sizes are
                // checked above.
                unsafe { conv_avx512(x, k, c_out, grouped, bias, slopes, dst) }
            } else {
                // SAFETY: usable() checked AVX2 and FMA; the sizes are checked above.
                unsafe { conv_avx2(x, k, c_out, grouped, bias, slopes, dst) }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (x, k, c_out, grouped, bias, slopes, dst);
            unreachable!("direct::conv without direct::usable");
        }
    }

    /// Each tap's shift from a position of image 0, in patch-row order (ci, ky, kx).
    fn tap_offsets(x: &Planes, k: usize) -> Vec<usize> {
        let (b, hw) = (x.b, x.h * x.w);
        let mut offsets = Vec::with_capacity(x.c * k * k);
        for ci in 0..x.c {
            for ky in 0..k {
                for kx in 0..k {
                    offsets.push(ci * b * hw + ky * x.w + kx);
                }
            }
        }
        offsets
    }

    /// [`conv`] on AVX-512: the same per-output arithmetic as [`conv_avx2`] (one FMA chain
    /// per output over the taps in patch-row order, then `bias + acc`, then the PReLU as
    /// separate max, min, multiply and add), with 16 positions per register and blocks of up
    /// to 4 registers (64 positions) per channel: 6 channels hold 24 accumulators of the 32
    /// registers. Stores are masked per output row, so no staging buffer.
    ///
    /// # Safety
    /// AVX-512F, AVX2 and FMA; the sizes checked in [`conv`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn conv_avx512(
        x: &Planes,
        k: usize,
        c_out: usize,
        grouped: &[f32],
        bias: &[f32],
        slopes: Option<&[f32]>,
        dst: &mut [f32],
    ) {
        let kk = x.c * k * k;
        let offsets = tap_offsets(x, k);
        let src = x.data.as_ptr();
        let out = dst.as_mut_ptr();
        for (co, n, width) in blocks(c_out) {
            let wb = grouped.as_ptr().add(co * kk);
            let bias = &bias[co..co + n];
            let slopes = slopes.map(|s| &s[co..co + n]);
            let out = out.add(co * x.b * (x.h + 1 - k) * (x.w + 1 - k));
            match width {
                6 => wide::channels::<6>(x, k, &offsets, wb, bias, slopes, src, out),
                4 => wide::channels::<4>(x, k, &offsets, wb, bias, slopes, src, out),
                _ => wide::channels::<2>(x, k, &offsets, wb, bias, slopes, src, out),
            }
        }
    }

    /// The AVX-512 register blocks of [`conv_avx512`].
    #[cfg(target_arch = "x86_64")]
    mod wide {
        use super::super::Planes;
        use std::arch::x86_64::*;

        /// Positions per register.
        const L: usize = 16;
        /// Most registers (of [`L`] positions) per channel in one block.
        const VMAX: usize = 4;

        /// Where a block's outputs go: the input grid's width, the output's width, floats
        /// per output plane of one image and of all images, channels kept.
        struct Geo {
            w: usize,
            ow: usize,
            bn: usize,
            keep: usize,
        }

        /// One block of `R` channels (`bias.len()` of them kept) over every image and position:
        /// per image, blocks of [`VMAX`] registers, the last one narrowed to the registers the
        /// remaining positions need and ending at the last position (recomputing a few: the
        /// same values).
        ///
        /// # Safety
        /// AVX-512F and FMA; `wb` holds `offsets.len() * R` weights; `src` every read
        /// (`x.data`); `out` `bias.len()` planes of `b * oh * ow` floats; at least [`L`]
        /// positions (`direct::usable`).
        #[target_feature(enable = "avx512f,avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn channels<const R: usize>(
            x: &Planes,
            k: usize,
            offsets: &[usize],
            wb: *const f32,
            bias: &[f32],
            slopes: Option<&[f32]>,
            src: *const f32,
            out: *mut f32,
        ) {
            let (b, h, w) = (x.b, x.h, x.w);
            let (oh, ow) = (h + 1 - k, w + 1 - k);
            let (n, hw) = (oh * ow, h * w);
            let positions = (oh - 1) * w + ow;
            debug_assert!(positions >= L);
            let mut bias_v = [_mm512_setzero_ps(); R];
            let mut slope_v = [_mm512_setzero_ps(); R];
            for j in 0..bias.len().min(R) {
                bias_v[j] = _mm512_set1_ps(bias[j]);
                if let Some(s) = slopes {
                    slope_v[j] = _mm512_set1_ps(s[j]);
                }
            }
            let slope_v = slopes.map(|_| slope_v);
            let geo = Geo {
                w,
                ow,
                bn: b * n,
                keep: bias.len(),
            };
            for img in 0..b {
                let base = src.add(img * hw);
                let out = out.add(img * n);
                let mut start = 0;
                while start < positions {
                    let regs = (positions - start).div_ceil(L).min(VMAX).min(positions / L);
                    let s = start.min(positions - regs * L);
                    // Highest read: s + regs * L - 1 + (k - 1) * (w + 1) <= h * w - 1 in the
                    // last channel's plane of this image.
                    let x0 = base.add(s);
                    let (bv, sv) = (&bias_v, slope_v.as_ref());
                    match regs {
                        4 => block::<R, 4>(offsets, wb, x0, s, bv, sv, &geo, out),
                        3 => block::<R, 3>(offsets, wb, x0, s, bv, sv, &geo, out),
                        2 => block::<R, 2>(offsets, wb, x0, s, bv, sv, &geo, out),
                        _ => block::<R, 1>(offsets, wb, x0, s, bv, sv, &geo, out),
                    }
                    start = s + regs * L;
                }
            }
        }

        /// `R` channels x `V` registers of positions from input-grid position `s` (read at
        /// `x0`), finished and stored into the valid output positions (`out`: image 0's
        /// output of the block's first channel, shifted to this image).
        ///
        /// # Safety
        /// As [`channels`].
        #[target_feature(enable = "avx512f,avx2,fma")]
        #[inline]
        #[allow(clippy::too_many_arguments)]
        unsafe fn block<const R: usize, const V: usize>(
            offsets: &[usize],
            wb: *const f32,
            x0: *const f32,
            s: usize,
            bias_v: &[__m512; R],
            slope_v: Option<&[__m512; R]>,
            geo: &Geo,
            out: *mut f32,
        ) {
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            for (t, &off) in offsets.iter().enumerate() {
                let p = x0.add(off);
                let mut v = [_mm512_setzero_ps(); V];
                for (q, vq) in v.iter_mut().enumerate() {
                    *vq = _mm512_loadu_ps(p.add(q * L));
                }
                let wt = wb.add(t * R);
                for (j, row) in acc.iter_mut().enumerate() {
                    let wj = _mm512_set1_ps(*wt.add(j));
                    for (a, &vv) in row.iter_mut().zip(&v) {
                        *a = _mm512_fmadd_ps(vv, wj, *a);
                    }
                }
            }
            let zero = _mm512_setzero_ps();
            let (w, ow) = (geo.w, geo.ow);
            // `q` picks register q of every channel's row of `acc`, and its positions.
            #[allow(clippy::needless_range_loop)]
            for q in 0..V {
                // bias + accumulator, then the PReLU, as the AVX2 kernel's `finish`.
                let mut vals = [zero; R];
                for j in 0..geo.keep.min(R) {
                    let v = _mm512_add_ps(bias_v[j], acc[j][q]);
                    vals[j] = match slope_v {
                        Some(sl) => _mm512_add_ps(
                            _mm512_max_ps(v, zero),
                            _mm512_mul_ps(sl[j], _mm512_min_ps(v, zero)),
                        ),
                        None => v,
                    };
                }
                // Each input-grid row the register spans: its lanes below the output width.
                let p = s + q * L;
                let (mut oy, mut ox) = (p / w, p % w);
                let mut lane = 0;
                while lane < L {
                    let run = (w - ox).min(L - lane);
                    let valid = ow.saturating_sub(ox).min(run);
                    if valid > 0 {
                        let mask = ((((1u32 << valid) - 1) << lane) & 0xffff) as __mmask16;
                        // Lane `lane` lands on output (oy, ox); masked-off lanes touch nothing.
                        let at = oy * ow + ox;
                        for (j, &val) in vals.iter().enumerate().take(geo.keep) {
                            let o = out.wrapping_add(j * geo.bn + at).wrapping_sub(lane);
                            _mm512_mask_storeu_ps(o, mask, val);
                        }
                    }
                    lane += run;
                    ox += run;
                    if ox == w {
                        ox = 0;
                        oy += 1;
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn conv_avx2(
        x: &Planes,
        k: usize,
        c_out: usize,
        grouped: &[f32],
        bias: &[f32],
        slopes: Option<&[f32]>,
        dst: &mut [f32],
    ) {
        let (c_in, b, h, w) = (x.c, x.b, x.h, x.w);
        let kk = c_in * k * k;
        let offsets = tap_offsets(x, k);
        let src = x.data.as_ptr();
        let out = dst.as_mut_ptr();
        for (co, n, width) in blocks(c_out) {
            let wb = grouped.as_ptr().add(co * kk);
            let bias = &bias[co..co + n];
            let slopes = slopes.map(|s| &s[co..co + n]);
            let out = out.add(co * b * (h + 1 - k) * (w + 1 - k));
            match width {
                6 => channels::<6>(x, k, &offsets, wb, bias, slopes, src, out),
                4 => channels::<4>(x, k, &offsets, wb, bias, slopes, src, out),
                _ => channels::<2>(x, k, &offsets, wb, bias, slopes, src, out),
            }
        }
    }

    /// One block of `R` channels (`bias.len()` of them kept) over every image and position.
    ///
    /// PReLU (with `slopes`) is `nn`'s `max(x, 0) + a * min(x, 0)` as separate max, min,
    /// multiply and add (no FMA), so the same values: `_mm256_max_ps(x, 0)` and
    /// `_mm256_min_ps(x, 0)` can differ from `f32::max`/`min` only for a NaN or a -0.0 `x`, and
    /// neither occurs here: inputs are finite, and `bias + acc` is -0.0 only if the bias is
    /// -0.0 and the FMA chain from +0.0 underflows to -0.0 (even then, a zero's sign changes
    /// no later sum).
    ///
    /// # Safety
    /// AVX2 and FMA; `wb` holds `offsets.len() * R` weights; `src` every read (`x.data`);
    /// `out` `bias.len()` planes of `b * oh * ow` floats.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn channels<const R: usize>(
        x: &Planes,
        k: usize,
        offsets: &[usize],
        wb: *const f32,
        bias: &[f32],
        slopes: Option<&[f32]>,
        src: *const f32,
        out: *mut f32,
    ) {
        use std::arch::x86_64::*;
        let (b, h, w) = (x.b, x.h, x.w);
        let (oh, ow) = (h + 1 - k, w + 1 - k);
        let (n, hw) = (oh * ow, h * w);
        let bn = b * n;
        let keep = bias.len();
        let positions = (oh - 1) * w + ow;
        let bias_v: [__m256; R] =
            std::array::from_fn(|j| _mm256_set1_ps(bias.get(j).copied().unwrap_or(0.0)));
        let slope_v: Option<[__m256; R]> = slopes
            .map(|s| std::array::from_fn(|j| _mm256_set1_ps(s.get(j).copied().unwrap_or(0.0))));
        let zero = _mm256_setzero_ps();
        // bias + accumulator (as gemm's update of the bias-filled output), then the PReLU.
        let finish = |j: usize, a: __m256| {
            let v = _mm256_add_ps(bias_v[j], a);
            match &slope_v {
                Some(sl) => _mm256_add_ps(
                    _mm256_max_ps(v, zero),
                    _mm256_mul_ps(sl[j], _mm256_min_ps(v, zero)),
                ),
                None => v,
            }
        };
        let mut lanes = [[0f32; POS]; R];
        for img in 0..b {
            let base = src.add(img * hw);
            let mut start = 0;
            loop {
                // The last block ends at the last position (recomputing a few: same values).
                let s = start.min(positions - POS);
                let mut acc = [[_mm256_setzero_ps(); 2]; R];
                let x0 = base.add(s);
                for (t, &off) in offsets.iter().enumerate() {
                    // Highest read: s + POS - 1 + (k - 1) * (w + 1) <= h * w - 1 in the last
                    // channel's plane of this image.
                    let p = x0.add(off);
                    let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))];
                    let wt = wb.add(t * R);
                    for (j, row) in acc.iter_mut().enumerate() {
                        let wj = _mm256_broadcast_ss(&*wt.add(j));
                        for (a, &vv) in row.iter_mut().zip(&v) {
                            *a = _mm256_fmadd_ps(vv, wj, *a);
                        }
                    }
                }
                let (oy, ox) = (s / w, s % w);
                if ox + POS <= ow {
                    // The whole block lies in one output row: store straight into it.
                    let at = out.add(img * n + oy * ow + ox);
                    for (j, row) in acc.iter().enumerate().take(keep) {
                        let o = at.add(j * bn);
                        _mm256_storeu_ps(o, finish(j, row[0]));
                        _mm256_storeu_ps(o.add(8), finish(j, row[1]));
                    }
                } else {
                    for (j, (lane, row)) in lanes.iter_mut().zip(&acc).enumerate().take(keep) {
                        for (q, &a) in row.iter().enumerate() {
                            _mm256_storeu_ps(lane.as_mut_ptr().add(q * 8), finish(j, a));
                        }
                    }
                    // Copy out the valid part of each input-grid row the block spans.
                    let (mut oy, mut ox) = (oy, ox);
                    let mut q = 0;
                    while q < POS {
                        let run = (w - ox).min(POS - q);
                        let valid = ow.saturating_sub(ox).min(run);
                        if valid > 0 {
                            let at = img * n + oy * ow + ox;
                            for (j, lane) in lanes.iter().enumerate().take(keep) {
                                super::copy_short(
                                    std::slice::from_raw_parts_mut(out.add(j * bn + at), valid),
                                    &lane[q..q + valid],
                                );
                            }
                        }
                        q += run;
                        ox += run;
                        if ox == w {
                            ox = 0;
                            oy += 1;
                        }
                    }
                }
                if s + POS >= positions {
                    break;
                }
                start += POS;
            }
        }
    }
}

/// Whether the CPU runs the AVX-512 kernels (AVX-512F on top of AVX2 and FMA).
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
}

/// A raw output pointer shared by parallel jobs that write disjoint parts of one buffer.
struct SyncPtr(*mut f32);
// SAFETY: every user writes a disjoint region (see the call site).
unsafe impl Sync for SyncPtr {}
unsafe impl Send for SyncPtr {}

impl SyncPtr {
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Patch matrix `[c * k * k, images.len() * rows.len() * ow]` of a stride-1 unpadded `k x k`
/// convolution over images `images` of `x`, output rows `rows`: `nn`'s im2col layout (row
/// `(ci, ky, kx)` holds, image after image, the input under that tap for each output pixel).
fn im2col(x: &Planes, k: usize, images: Range<usize>, rows: Range<usize>, cols: &mut [f32]) {
    let (h, w) = (x.h, x.w);
    let ow = w + 1 - k;
    let hw = h * w;
    let mut dst = cols.chunks_exact_mut(ow);
    for ci in 0..x.c {
        for ky in 0..k {
            for kx in 0..k {
                for img in images.clone() {
                    let plane = &x.data[(ci * x.b + img) * hw..][..hw];
                    for oy in rows.clone() {
                        let src = &plane[(oy + ky) * w + kx..][..ow];
                        if let Some(d) = dst.next() {
                            copy_short(d, src);
                        }
                    }
                }
            }
        }
    }
}

/// `nn::max_pool`'s comparison: `v` replaces the running maximum `m` when `v > m`.
#[inline(always)]
fn keep_max(m: f32, v: f32) -> f32 {
    if v > m {
        v
    } else {
        m
    }
}

/// `dst.copy_from_slice(src)` for the short rows of MTCNN's small planes (3 to 46 floats),
/// with fixed-size moves instead of a `memcpy` call per row.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    assert_eq!(n, src.len());
    if n >= 8 {
        for (d, s) in dst.chunks_exact_mut(8).zip(src.chunks_exact(8)) {
            let s: &[f32; 8] = s.try_into().unwrap_or(&[0.0; 8]);
            d.copy_from_slice(s);
        }
        // The last 8 (overlapping what was copied already).
        let (d, s) = (&mut dst[n - 8..], &src[n - 8..]);
        let s: &[f32; 8] = s.try_into().unwrap_or(&[0.0; 8]);
        d.copy_from_slice(s);
    } else if n >= 4 {
        let (a, b): (&[f32; 4], &[f32; 4]) = (
            src[..4].try_into().unwrap_or(&[0.0; 4]),
            src[n - 4..].try_into().unwrap_or(&[0.0; 4]),
        );
        dst[..4].copy_from_slice(a);
        dst[n - 4..].copy_from_slice(b);
    } else {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s);
    }
}

/// Max-pool with PyTorch's `ceil_mode=True` (no padding) over every plane: `nn::max_pool`'s
/// comparisons in `nn::max_pool`'s order (each window's rows first, from its top row down,
/// then its columns left to right from -inf), so ties and signed zeros resolve the same way.
fn max_pool_ceil(x: Planes, k: usize, s: usize) -> Planes {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has AVX-512F and AVX2.
        return unsafe { max_pool_ceil_avx512(x, k, s) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { max_pool_ceil_avx2(x, k, s) };
    }
    max_pool_ceil_body(x, k, s, PoolRows::Scalar)
}

/// Which kernel pools a row with stride 2 and a window of 2 or 3.
#[derive(Clone, Copy, PartialEq)]
enum PoolRows {
    /// The scalar loop (every other case too).
    Scalar,
    /// [`pool_row_s2_avx2`].
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// [`pool_rows_s2_avx512`] (straight from the plane, no row buffer).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// [`max_pool_ceil`] compiled for AVX2 (the same comparisons, 8 lanes at a time).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_pool_ceil_avx2(x: Planes, k: usize, s: usize) -> Planes {
    max_pool_ceil_body(x, k, s, PoolRows::Avx2)
}

/// [`max_pool_ceil`] compiled for AVX-512 (the same comparisons, 16 lanes at a time).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn max_pool_ceil_avx512(x: Planes, k: usize, s: usize) -> Planes {
    max_pool_ceil_body(x, k, s, PoolRows::Avx512)
}

#[inline(always)]
fn max_pool_ceil_body(x: Planes, k: usize, s: usize, kernel: PoolRows) -> Planes {
    let (h, w) = (x.h, x.w);
    assert!(h >= k && w >= k, "max-pool window larger than the input");
    let (oh, ow) = ((h - k).div_ceil(s) + 1, (w - k).div_ceil(s) + 1);
    let planes = x.c * x.b;
    let mut dst = take(planes * oh * ow);
    // A row's maxima over the window's rows, then -inf padding that the 8-lane kernel reads
    // past the row's end (it leaves every maximum as it is: `keep_max(m, -inf)` is `m`).
    let mut row_buf = take(w + 24);
    row_buf[w..].fill(f32::NEG_INFINITY);
    #[cfg(target_arch = "x86_64")]
    let lanes = s == 2 && (k == 2 || k == 3) && kernel != PoolRows::Scalar;
    // Output columns whose window lies inside the row.
    let full = ((w - k) / s + 1).min(ow);
    for (plane, out) in x
        .data
        .chunks_exact(h * w)
        .zip(dst.chunks_exact_mut(oh * ow))
    {
        for (oy, out_row) in out.chunks_exact_mut(ow).enumerate() {
            let row = &mut row_buf[..w];
            let y0 = oy * s;
            let y1 = (y0 + k).min(h);
            #[cfg(target_arch = "x86_64")]
            if lanes && kernel == PoolRows::Avx512 {
                // SAFETY: the CPU has AVX-512F (the caller chose `PoolRows::Avx512`).
                unsafe { pool_rows_s2_avx512(plane, w, y0..y1, out_row, k == 3) };
                continue;
            }
            let r0 = &plane[y0 * w..(y0 + 1) * w];
            match y1 - y0 {
                2 => {
                    let r1 = &plane[(y0 + 1) * w..(y0 + 2) * w];
                    for ((m, &a), &b) in row.iter_mut().zip(r0).zip(r1) {
                        *m = keep_max(a, b);
                    }
                }
                3 => {
                    let r1 = &plane[(y0 + 1) * w..(y0 + 2) * w];
                    let r2 = &plane[(y0 + 2) * w..(y0 + 3) * w];
                    for (((m, &a), &b), &c) in row.iter_mut().zip(r0).zip(r1).zip(r2) {
                        *m = keep_max(keep_max(a, b), c);
                    }
                }
                _ => {
                    row.copy_from_slice(r0);
                    for src_row in plane[(y0 + 1) * w..y1 * w].chunks_exact(w) {
                        row.iter_mut()
                            .zip(src_row)
                            .for_each(|(m, &v)| *m = keep_max(*m, v));
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            if lanes {
                // SAFETY: the CPU has AVX2 (the caller chose `PoolRows::Avx2`).
                unsafe { pool_row_s2_avx2(&row_buf, out_row, k == 3) };
                continue;
            }
            let row = &row_buf[..w];
            let (inside, edge) = out_row.split_at_mut(full);
            match (k, s) {
                (3, 2) => {
                    for (ox, m) in inside.iter_mut().enumerate() {
                        let win = &row[2 * ox..2 * ox + 3];
                        let a = keep_max(f32::NEG_INFINITY, win[0]);
                        *m = keep_max(keep_max(a, win[1]), win[2]);
                    }
                }
                (2, 2) => {
                    for (m, win) in inside.iter_mut().zip(row.chunks_exact(2)) {
                        *m = keep_max(keep_max(f32::NEG_INFINITY, win[0]), win[1]);
                    }
                }
                _ => {
                    for (ox, m) in inside.iter_mut().enumerate() {
                        *m = row[ox * s..ox * s + k]
                            .iter()
                            .fold(f32::NEG_INFINITY, |a, &v| keep_max(a, v));
                    }
                }
            }
            for (i, m) in edge.iter_mut().enumerate() {
                let x0 = (full + i) * s;
                *m = row[x0..(x0 + k).min(w)]
                    .iter()
                    .fold(f32::NEG_INFINITY, |a, &v| keep_max(a, v));
            }
        }
    }
    give(row_buf);
    let (c, b) = (x.c, x.b);
    x.recycle();
    Planes {
        data: dst,
        c,
        b,
        h: oh,
        w: ow,
    }
}

/// A max-pool row with stride 2 and a window of 2 (or 3 if `three`), 8 outputs at a time:
/// `nn::max_pool`'s comparisons per output (from -inf, window left to right;
/// `_mm256_max_ps(v, m)` is `if v > m { v } else { m }`, as [`keep_max`]). `row` holds the
/// row's maxima then -inf padding: a window cut by the row's end (`ceil_mode`) reads the
/// padding, which changes no maximum.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pool_row_s2_avx2(row: &[f32], out: &mut [f32], three: bool) {
    use std::arch::x86_64::*;
    // Highest read for outputs ox..ox + 8: row[2 * ox + 17].
    assert!(row.len() >= 2 * out.len() + 16, "max-pool row padding");
    // The even and odd elements of row[at..at + 16], in order.
    let split = |at: usize| {
        let a = _mm256_loadu_ps(row.as_ptr().add(at));
        let b = _mm256_loadu_ps(row.as_ptr().add(at + 8));
        let even = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
        let odd = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
        (
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(
                even,
            ))),
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(
                odd,
            ))),
        )
    };
    let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut ox = 0;
    while ox < out.len() {
        let (w0, w1) = split(2 * ox);
        let mut m = _mm256_max_ps(w1, _mm256_max_ps(w0, ninf));
        if three {
            let (w2, _) = split(2 * ox + 2);
            m = _mm256_max_ps(w2, m);
        }
        if ox + 8 <= out.len() {
            _mm256_storeu_ps(out.as_mut_ptr().add(ox), m);
        } else {
            // The first `out.len() - ox` lanes only.
            let rest = _mm256_set1_epi32((out.len() - ox) as i32);
            let mask = _mm256_cmpgt_epi32(rest, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            _mm256_maskstore_ps(out.as_mut_ptr().add(ox), mask, m);
        }
        ox += 8;
    }
}

/// The column maxima of plane rows `rows` (`w` floats each) over columns `c..c + 16`: the
/// rows in order from the top (`keep_max(m, v)` is `_mm512_max_ps(v, m)`), -inf from column
/// `w` on.
///
/// # Safety
/// AVX-512F; `rows` is a non-empty range of rows of `plane`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn column_max_avx512(
    plane: &[f32],
    w: usize,
    rows: &Range<usize>,
    c: usize,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    let valid = w.saturating_sub(c).min(16);
    let mask = ((1u32 << valid) - 1) as __mmask16;
    // Masked-off lanes read nothing (all of them when c >= w).
    let at = |y: usize| plane.as_ptr().wrapping_add(y * w + c);
    let mut m = _mm512_mask_loadu_ps(ninf, mask, at(rows.start));
    for y in rows.start + 1..rows.end {
        m = _mm512_max_ps(_mm512_mask_loadu_ps(ninf, mask, at(y)), m);
    }
    m
}

/// One output row of a max-pool with stride 2 and a window of 2 (or 3 if `three`) over plane
/// rows `rows`, 16 outputs at a time, straight from the plane: `nn::max_pool`'s comparisons
/// per output (the window's rows from the top, then its columns left to right from -inf;
/// `_mm512_max_ps(v, m)` is `if v > m { v } else { m }`, as [`keep_max`]). A window cut by
/// the row's end (`ceil_mode`) sees -inf past it, which changes no maximum.
///
/// # Safety
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pool_rows_s2_avx512(
    plane: &[f32],
    w: usize,
    rows: Range<usize>,
    out: &mut [f32],
    three: bool,
) {
    use std::arch::x86_64::*;
    assert!(
        rows.start < rows.end && rows.end * w <= plane.len(),
        "max-pool rows"
    );
    assert!(2 * out.len() < w + 2, "max-pool row width");
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    // Column maxima of columns 2 * ox + (0..16), carried over from the previous step.
    let mut a = column_max_avx512(plane, w, &rows, 0);
    let mut ox = 0;
    while ox < out.len() {
        let c = 2 * ox;
        let b = column_max_avx512(plane, w, &rows, c + 16);
        let next = column_max_avx512(plane, w, &rows, c + 32);
        // Columns 2 * ox, 2 * ox + 1 (and 2 * ox + 2) of each of the 16 windows.
        let w0 = _mm512_permutex2var_ps(a, even, b);
        let w1 = _mm512_permutex2var_ps(a, odd, b);
        let mut m = _mm512_max_ps(w1, _mm512_max_ps(w0, ninf));
        if three {
            // Columns c + 2 .. c + 34: both halves shifted by two columns.
            let sa = _mm512_castsi512_ps(_mm512_alignr_epi32::<2>(
                _mm512_castps_si512(b),
                _mm512_castps_si512(a),
            ));
            let sb = _mm512_castsi512_ps(_mm512_alignr_epi32::<2>(
                _mm512_castps_si512(next),
                _mm512_castps_si512(b),
            ));
            m = _mm512_max_ps(_mm512_permutex2var_ps(sa, even, sb), m);
        }
        let rest = out.len() - ox;
        if rest >= 16 {
            _mm512_storeu_ps(out.as_mut_ptr().add(ox), m);
        } else {
            // The first `rest` lanes only.
            let mask = ((1u32 << rest) - 1) as __mmask16;
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(ox), mask, m);
        }
        a = next;
        ox += 16;
    }
}

/// `[c, b, h, w]` flattened per image in (W, H, C) order, as facenet-pytorch's
/// `permute(0, 3, 2, 1)`: `[b, w * h * c]`.
fn flatten_whc(x: &Planes) -> Buf {
    let (c, b, h, w) = (x.c, x.b, x.h, x.w);
    let per = c * h * w;
    let mut out = take(b * per);
    for img in 0..b {
        let o = &mut out[img * per..(img + 1) * per];
        for ch in 0..c {
            let plane = &x.data[(ch * b + img) * h * w..][..h * w];
            for y in 0..h {
                for xx in 0..w {
                    o[(xx * h + y) * c + ch] = plane[y * w + xx];
                }
            }
        }
    }
    out
}

/// A fully connected layer `y = x W^T + b` with optional PReLU (candle_nn's `Linear`, then
/// `nn`'s activation).
pub(super) struct Dense {
    weight: Vec<f32>,
    bias: Vec<f32>,
    slopes: Option<Vec<f32>>,
    c_in: usize,
    c_out: usize,
}

impl Dense {
    /// Loads `name.weight` (`[out, in]`), `name.bias` and, if given, `prelu.weight`.
    fn load(
        vb: &VarBuilder,
        name: &str,
        prelu: Option<&str>,
        c_in: usize,
        c_out: usize,
    ) -> Result<Self> {
        let vl = vb.pp(name);
        Ok(Dense {
            weight: values(&vl.get((c_out, c_in), "weight")?)?,
            bias: values(&vl.get(c_out, "bias")?)?,
            slopes: match prelu {
                Some(p) => Some(values(&vb.pp(p).get(c_out, "weight")?)?),
                None => None,
            },
            c_in,
            c_out,
        })
    }

    /// `[b, c_in]` -> `[b, c_out]`: candle's matmul call for `x.matmul(&w.t())` (the weight
    /// read transposed in place, nothing accumulated), then `+ bias`, then PReLU.
    fn forward(&self, x: &[f32], b: usize) -> Buf {
        assert_eq!(x.len(), b * self.c_in, "dense input size");
        let mut y = take(b * self.c_out);
        y.fill(0.0);
        // SAFETY: y holds b rows of c_out values; x holds b * c_in, the weight c_out * c_in.
        unsafe {
            gemm::gemm(
                b,
                self.c_out,
                self.c_in,
                y.as_mut_ptr(),
                1,
                self.c_out as isize,
                false,
                x.as_ptr(),
                1,
                self.c_in as isize,
                self.weight.as_ptr(),
                self.c_in as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for row in y.chunks_exact_mut(self.c_out) {
            row.iter_mut().zip(&self.bias).for_each(|(v, b)| *v += b);
            if let Some(slopes) = &self.slopes {
                row.iter_mut()
                    .zip(slopes)
                    .for_each(|(x, &a)| *x = x.max(0.0) + a * x.min(0.0));
            }
        }
        y
    }
}

/// Face probability of a two-logit softmax, as candle's `softmax` over the two values:
/// `exp(l1 - m) / (exp(l0 - m) + exp(l1 - m))` with `m = max(l0, l1)`.
#[inline]
fn face_prob(l0: f32, l1: f32) -> f32 {
    let m = if l1 > l0 { l1 } else { l0 };
    let (e0, e1) = ((l0 - m).exp(), (l1 - m).exp());
    e1 / (e0 + e1)
}

// ---------------------------------------------------------------------------------------------
// Networks

/// P-Net's weights.
pub(super) struct FastPNet {
    conv1: Conv,
    conv2: Conv,
    conv3: Conv,
    conv4_1: Conv,
    conv4_2: Conv,
    /// `conv4_1`'s 2 channels then `conv4_2`'s 4: one 6-channel block on the direct path.
    conv4: Conv,
}

/// P-Net's output for one input: face probability per cell and the 4 regression maps.
pub(super) struct PNetOut {
    /// Output height (cells).
    pub h: usize,
    /// Output width (cells).
    pub w: usize,
    /// `[h * w]` face probabilities.
    pub prob: Buf,
    /// `[4, h, w]` box regression.
    pub reg: Buf,
}

impl FastPNet {
    fn load(vb: &VarBuilder) -> Result<Self> {
        let conv4_1 = Conv::load(vb, "conv4_1", None, 32, 2, 1)?;
        let conv4_2 = Conv::load(vb, "conv4_2", None, 32, 4, 1)?;
        Ok(FastPNet {
            conv1: Conv::load(vb, "conv1", Some("prelu1"), 3, 10, 3)?,
            conv2: Conv::load(vb, "conv2", Some("prelu2"), 10, 16, 3)?,
            conv3: Conv::load(vb, "conv3", Some("prelu3"), 16, 32, 3)?,
            conv4: Conv::stack(&conv4_1, &conv4_2),
            conv4_1,
            conv4_2,
        })
    }

    /// P-Net on one `[3, h, w]` input.
    pub(super) fn forward(&self, x: Planes, parallel: bool) -> PNetOut {
        let y = self.conv1.forward(&x, parallel);
        x.recycle();
        let y = max_pool_ceil(y, 2, 2);
        let z = self.conv2.forward(&y, parallel);
        y.recycle();
        let y = self.conv3.forward(&z, parallel);
        z.recycle();
        let (h, w) = (y.h, y.w);
        let n = (h + 1 - self.conv4.k) * (w + 1 - self.conv4.k);
        // The heads in one pass where the direct kernel runs (the same values per output as
        // two passes); elsewhere the two products nn makes.
        let (logits, reg) = if self.conv4.is_direct(h, w) {
            let both = self.conv4.forward(&y, parallel);
            let mut reg = take(4 * n);
            reg.copy_from_slice(&both.data[2 * n..6 * n]);
            (both, reg)
        } else {
            let logits = self.conv4_1.forward(&y, parallel);
            (logits, self.conv4_2.forward(&y, parallel).data)
        };
        y.recycle();
        let mut prob = take(n);
        let (l0, l1) = logits.data[..2 * n].split_at(n);
        for ((p, &a), &b) in prob.iter_mut().zip(l0).zip(l1) {
            *p = face_prob(a, b);
        }
        logits.recycle();
        PNetOut { h, w, prob, reg }
    }
}

/// R-Net's weights.
pub(super) struct FastRNet {
    conv1: Conv,
    conv2: Conv,
    conv3: Conv,
    dense4: Dense,
    dense5_1: Dense,
    dense5_2: Dense,
}

impl FastRNet {
    fn load(vb: &VarBuilder) -> Result<Self> {
        Ok(FastRNet {
            conv1: Conv::load(vb, "conv1", Some("prelu1"), 3, 28, 3)?,
            conv2: Conv::load(vb, "conv2", Some("prelu2"), 28, 48, 3)?,
            conv3: Conv::load(vb, "conv3", Some("prelu3"), 48, 64, 2)?,
            dense4: Dense::load(vb, "dense4", Some("prelu4"), 576, 128)?,
            dense5_1: Dense::load(vb, "dense5_1", None, 128, 2)?,
            dense5_2: Dense::load(vb, "dense5_2", None, 128, 4)?,
        })
    }

    /// R-Net on `[3, b, 24, 24]` crops: per crop, (face probability, regression).
    pub(super) fn forward(&self, x: Planes) -> Vec<(f32, [f32; 4])> {
        let b = x.b;
        let y = self.conv1.forward(&x, false);
        x.recycle();
        let y = max_pool_ceil(y, 3, 2);
        let z = self.conv2.forward(&y, false);
        y.recycle();
        let z = max_pool_ceil(z, 3, 2);
        let y = self.conv3.forward(&z, false);
        z.recycle();
        let flat = flatten_whc(&y);
        y.recycle();
        let hidden = self.dense4.forward(&flat, b);
        give(flat);
        let logits = self.dense5_1.forward(&hidden, b);
        let reg = self.dense5_2.forward(&hidden, b);
        give(hidden);
        let out = logits
            .chunks_exact(2)
            .zip(reg.chunks_exact(4))
            .map(|(l, r)| (face_prob(l[0], l[1]), [r[0], r[1], r[2], r[3]]))
            .collect();
        give(logits);
        give(reg);
        out
    }
}

/// O-Net's output for one crop.
pub(super) struct ONetOut {
    /// Face probability.
    pub prob: f32,
    /// Box regression.
    pub reg: [f32; 4],
    /// Landmarks x1..x5, y1..y5 (relative to the crop).
    pub landmarks: [f32; 10],
}

/// O-Net's weights.
pub(super) struct FastONet {
    conv1: Conv,
    conv2: Conv,
    conv3: Conv,
    conv4: Conv,
    dense5: Dense,
    dense6_1: Dense,
    dense6_2: Dense,
    dense6_3: Dense,
}

impl FastONet {
    fn load(vb: &VarBuilder) -> Result<Self> {
        Ok(FastONet {
            conv1: Conv::load(vb, "conv1", Some("prelu1"), 3, 32, 3)?,
            conv2: Conv::load(vb, "conv2", Some("prelu2"), 32, 64, 3)?,
            conv3: Conv::load(vb, "conv3", Some("prelu3"), 64, 64, 3)?,
            conv4: Conv::load(vb, "conv4", Some("prelu4"), 64, 128, 2)?,
            dense5: Dense::load(vb, "dense5", Some("prelu5"), 1152, 256)?,
            dense6_1: Dense::load(vb, "dense6_1", None, 256, 2)?,
            dense6_2: Dense::load(vb, "dense6_2", None, 256, 4)?,
            dense6_3: Dense::load(vb, "dense6_3", None, 256, 10)?,
        })
    }

    /// O-Net on `[3, b, 48, 48]` crops.
    pub(super) fn forward(&self, x: Planes) -> Vec<ONetOut> {
        let b = x.b;
        let y = self.conv1.forward(&x, false);
        x.recycle();
        let y = max_pool_ceil(y, 3, 2);
        let z = self.conv2.forward(&y, false);
        y.recycle();
        let z = max_pool_ceil(z, 3, 2);
        let y = self.conv3.forward(&z, false);
        z.recycle();
        let y = max_pool_ceil(y, 2, 2);
        let z = self.conv4.forward(&y, false);
        y.recycle();
        let flat = flatten_whc(&z);
        z.recycle();
        let hidden = self.dense5.forward(&flat, b);
        give(flat);
        let logits = self.dense6_1.forward(&hidden, b);
        let reg = self.dense6_2.forward(&hidden, b);
        let lms = self.dense6_3.forward(&hidden, b);
        give(hidden);
        let out = logits
            .chunks_exact(2)
            .zip(reg.chunks_exact(4))
            .zip(lms.chunks_exact(10))
            .map(|((l, r), lm)| ONetOut {
                prob: face_prob(l[0], l[1]),
                reg: [r[0], r[1], r[2], r[3]],
                landmarks: std::array::from_fn(|i| lm[i]),
            })
            .collect();
        give(logits);
        give(reg);
        give(lms);
        out
    }
}

/// The three networks' weights for the CPU path.
pub(super) struct FastNets {
    /// P-Net.
    pub pnet: FastPNet,
    /// R-Net.
    pub rnet: FastRNet,
    /// O-Net.
    pub onet: FastONet,
}

impl FastNets {
    /// Reads the weights under `pnet.*`, `rnet.*`, `onet.*` of `vb`.
    pub(super) fn load(vb: &VarBuilder) -> Result<Self> {
        Ok(FastNets {
            pnet: FastPNet::load(&vb.pp("pnet"))?,
            rnet: FastRNet::load(&vb.pp("rnet"))?,
            onet: FastONet::load(&vb.pp("onet"))?,
        })
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) (a 64-bit LCG), rounded to multiples of 1/`q` when `q`
    /// is non-zero (so max-pool windows have ties).
    fn values(n: usize, seed: u64, q: f32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
                if q > 0.0 {
                    (v * q).round() / q
                } else {
                    v
                }
            })
            .collect()
    }

    fn planes(c: usize, b: usize, h: usize, w: usize, seed: u64, q: f32) -> Planes {
        let v = values(c * b * h * w, seed, q);
        let mut data = take(v.len());
        data.copy_from_slice(&v);
        Planes { data, c, b, h, w }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Loud skip on CPUs without AVX-512 (or AVX2 and FMA): returns whether to run.
    fn have_both() -> bool {
        if !has_avx512() {
            eprintln!(
                "SKIPPED: this CPU lacks avx512f (or avx2/fma): the AVX-512 kernels are not \
                 compared with the AVX2 ones here"
            );
            return false;
        }
        true
    }

    /// The AVX-512 direct convolution against the AVX2 one and a scalar FMA chain per output
    /// (taps in patch-row order from 0, then `bias + acc`, then `nn`'s PReLU), bit for bit,
    /// on MTCNN's layer shapes and on odd ones (narrow grids, exactly 16 positions, channel
    /// counts that leave blocks of 4 and 2).
    #[test]
    fn direct_conv_avx512_matches_avx2_bit_for_bit() {
        if !have_both() {
            return;
        }
        let shapes = [
            // (c_in, c_out, k, b, h, w)
            (3, 10, 3, 1, 37, 53),
            (10, 16, 3, 1, 20, 70),
            (16, 32, 3, 1, 9, 40),
            (32, 6, 1, 1, 8, 30),
            (3, 28, 3, 4, 24, 24),
            (28, 48, 3, 5, 11, 11),
            (3, 32, 3, 2, 48, 48),
            (32, 64, 3, 3, 23, 23),
            (5, 8, 2, 3, 5, 5),
            (4, 3, 3, 2, 4, 9),
            (2, 2, 1, 1, 30, 7),
            (7, 13, 2, 2, 6, 17),
        ];
        for (i, &(c_in, c_out, k, b, h, w)) in shapes.iter().enumerate() {
            let kk = c_in * k * k;
            assert!(
                direct::usable(kk, h, w, k),
                "shape {i} not on the direct path"
            );
            let x = planes(c_in, b, h, w, i as u64, 0.0);
            let weight = values(c_out * kk, 100 + i as u64, 0.0);
            let bias = values(c_out, 200 + i as u64, 0.0);
            let slopes = values(c_out, 300 + i as u64, 0.0);
            let slopes = (i % 2 == 0).then_some(&slopes[..]);
            let grouped = direct::group(&weight, c_out, kk);
            let (oh, ow) = (h + 1 - k, w + 1 - k);
            let len = c_out * b * oh * ow;
            let mut reference = vec![0f32; len];
            for co in 0..c_out {
                for img in 0..b {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut acc = 0f32;
                            for ci in 0..c_in {
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let xv =
                                            x.data[((ci * b + img) * h + oy + ky) * w + ox + kx];
                                        let wv = weight[co * kk + (ci * k + ky) * k + kx];
                                        acc = xv.mul_add(wv, acc);
                                    }
                                }
                            }
                            let mut v = bias[co] + acc;
                            if let Some(s) = slopes {
                                v = v.max(0.0) + s[co] * v.min(0.0);
                            }
                            reference[((co * b + img) * oh + oy) * ow + ox] = v;
                        }
                    }
                }
            }
            let mut avx2 = vec![f32::NAN; len];
            let mut avx512 = vec![f32::NAN; len];
            // SAFETY: have_both() checked AVX-512F, AVX2 and FMA; the sizes are direct::conv's.
            unsafe {
                direct::conv_avx2(&x, k, c_out, &grouped, &bias, slopes, &mut avx2);
                direct::conv_avx512(&x, k, c_out, &grouped, &bias, slopes, &mut avx512);
            }
            assert_eq!(bits(&avx2), bits(&reference), "AVX2, shape {i}");
            assert_eq!(bits(&avx512), bits(&avx2), "AVX-512 vs AVX2, shape {i}");
            x.recycle();
        }
    }

    /// The AVX-512 max-pool against the AVX2 and scalar ones, bit for bit (windows 2 and 3,
    /// stride 2, even and odd sizes, windows cut by the edge, ties and signed zeros).
    #[test]
    fn max_pool_avx512_matches_avx2_bit_for_bit() {
        if !have_both() {
            return;
        }
        for (i, &(k, h, w)) in [
            (2, 8, 8),
            (2, 9, 47),
            (3, 22, 22),
            (3, 9, 9),
            (3, 21, 21),
            (3, 46, 46),
            (2, 148, 151),
            (3, 5, 40),
            (3, 3, 3),
            (2, 2, 2),
        ]
        .iter()
        .enumerate()
        {
            let make = || {
                let mut x = planes(3, 2, h, w, 50 + i as u64, 4.0);
                // Signed zeros: -0.0 where the value rounded to zero at odd indices.
                for (j, v) in x.data.iter_mut().enumerate() {
                    if *v == 0.0 && j % 2 == 1 {
                        *v = -0.0;
                    }
                }
                x
            };
            let scalar = max_pool_ceil_body(make(), k, 2, PoolRows::Scalar);
            // SAFETY: have_both() checked AVX-512F and AVX2.
            let (avx2, avx512) = unsafe {
                (
                    max_pool_ceil_avx2(make(), k, 2),
                    max_pool_ceil_avx512(make(), k, 2),
                )
            };
            assert_eq!(bits(&avx2.data), bits(&scalar.data), "AVX2, case {i}");
            assert_eq!(bits(&avx512.data), bits(&avx2.data), "AVX-512, case {i}");
            assert_eq!((avx512.h, avx512.w), (avx2.h, avx2.w));
            for p in [scalar, avx2, avx512] {
                p.recycle();
            }
        }
    }

    /// The AVX-512 area resize against the AVX2 and plain builds, bit for bit (with and without
    /// the prefix table, whole photo and a crop, down- and up-sampling).
    #[test]
    fn area_resize_avx512_matches_avx2_bit_for_bit() {
        if !have_both() {
            return;
        }
        let (w, h) = (157u32, 93u32);
        let raw: Vec<u8> = values((w * h * 3) as usize, 7, 0.0)
            .iter()
            .map(|v| ((v + 1.0) * 127.9) as u8)
            .collect();
        let img = RgbImage::from_raw(w, h, raw).expect("image size");
        let norm = |v: f32| (v - 127.5) * 0.0078125;
        for prefix in [false, true] {
            let src = Source::new(&img, prefix);
            for (region, ow, oh) in [
                (Region::full(&img), 89, 53),
                (Region::full(&img), 12, 12),
                (
                    Region {
                        x0: 10,
                        y0: 5,
                        x1: 60,
                        y1: 70,
                    },
                    48,
                    48,
                ),
                (
                    Region {
                        x0: 100,
                        y0: 40,
                        x1: 115,
                        y1: 52,
                    },
                    24,
                    24,
                ),
            ] {
                let len = 3 * ow * oh;
                let mut out = [vec![0f32; len], vec![0f32; len], vec![0f32; len]];
                src.area_resize_body(region, ow, oh, 0..oh, norm, &mut out[0], ow * oh);
                // SAFETY: have_both() checked AVX-512F and AVX2.
                unsafe {
                    src.area_resize_avx2(region, ow, oh, 0..oh, norm, &mut out[1], ow * oh);
                    src.area_resize_avx512(region, ow, oh, 0..oh, norm, &mut out[2], ow * oh);
                }
                assert_eq!(bits(&out[1]), bits(&out[0]), "AVX2 {ow}x{oh}");
                assert_eq!(bits(&out[2]), bits(&out[1]), "AVX-512 {ow}x{oh}");
            }
        }
    }
}
