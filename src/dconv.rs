//! Direct convolution on the CPU: the exact path of the ResNet's convolutions on large maps,
//! without a patch matrix.
//!
//! im2col + gemm writes every input pixel `k * k` times into a patch matrix that, for a 35x35x32
//! map, is larger than a core's L2 cache, and gemm then packs it once more. Here each image is
//! copied once into a zero-padded buffer and every output is computed straight from it:
//!
//! - **Flat positions.** With stride 1 the padded image is `hp x wp`; output `(y, x)` and tap
//!   `(ci, ky, kx)` read `padded[ci][y + ky][x + kx]`, which is the flat element
//!   `y * wp + x` shifted by a constant `ci * hp * wp + ky * wp + kx`. So the outputs of an image
//!   are computed at the flat positions `0 .. oh * wp` (the `wp - ow` positions past each row's
//!   end are computed and dropped), and for every tap eight consecutive outputs read eight
//!   consecutive inputs: one unaligned vector load.
//! - **Stride s.** The padded image is split into `s * s` phase planes (rows `py + s * qy`,
//!   columns `px + s * qx`), each `hq x wq`; tap `(ci, ky, kx)` then reads phase
//!   `(ky % s, kx % s)` at the constant shift `(ky / s) * wq + kx / s`, and the same flat scheme
//!   applies with rows `wq` long.
//! - **Kernel.** With AVX2, 6 output channels x 16 positions in 12 registers, started from the
//!   bias (a last group of 2 or 4 channels takes fewer); per tap 2 loads, 6 broadcasts of the
//!   weights (read in place, `[c_out, c_in * k * k]`) and 12 FMAs. (4 x 24 needed 17 registers
//!   and spilled one.) With AVX-512 ([`wide`]), 8 channels x 48 positions in 24 of the 32
//!   registers (3 loads, 8 broadcasts, 24 FMAs per tap); a map of at most 80 computed positions
//!   takes one call for all of them (the 8x8 maps: 4 channels x 80 positions, 5 loads, 4
//!   broadcasts, 20 FMAs per tap; [`wide_rows`]). Every output sums its taps in the weight
//!   order with one FMA each, so the result does not depend on the batch, the thread count,
//!   which positions share a block, or whether the AVX2 or the AVX-512 block computed it: the
//!   same bits either way.
//!
//! - **bf16.** On CPUs with AVX512_BF16 ([`bf16_usable`]) a convolution can instead run in bf16
//!   ([`DirectConv::bf16`], the ResNet's `--precision fast`): input channels are taken in pairs,
//!   each padded position holding channels `2c` and `2c + 1` rounded to bf16 in one word, and
//!   the weights likewise, so that one `vdpbf16ps` adds two channels' products for 16 positions
//!   to 16 f32 sums ([`avx512bf16`], the same call shapes as the AVX-512 f32 block). Each sum still runs over its tap
//!   pairs in one fixed order: the same bits for any batch and thread count.
//!
//! Only x86-64 with AVX2 and FMA runs it ([`usable`]); elsewhere callers keep im2col + gemm.

use rayon::prelude::*;

use crate::nn::{apply_act, for_each_chunk, is_serial, with_scratch, Act, SyncPtr};

/// Floats per AVX register.
const L: usize = 8;
/// Registers of output positions per kernel call.
const V: usize = 2;
/// Output positions per kernel call.
const POS: usize = V * L;
/// Output channels per kernel call (the last call of a convolution may take 2 or 4).
const CO: usize = 6;
/// Floats per AVX-512 register.
const L16: usize = 16;
/// Maps with more than this many computed positions take AVX-512 calls of 3 registers (48
/// positions, 8 channels); smaller ones take one call of just enough registers for the whole
/// map (1 to 5: the 8x8 maps' 80 positions are 5), so that rounding up wastes little.
const WIDE_ONE_CALL_UP_TO: usize = 5 * L16;

/// Output channels per AVX-512 kernel call of `v` registers of positions (the last call of a
/// convolution may take fewer, in steps of 2): at most 24 accumulators, and as many as the
/// registers allow, since each tap's weight broadcasts are shared by all `v` registers.
fn wide_rows(v: usize) -> usize {
    match v {
        5 => 4,
        4 => 6,
        _ => 8,
    }
}

/// Whether the direct kernels (and Winograd's AVX2 transforms and products, which share
/// [`simd::rows_kernel`]) can run on this CPU: x86-64 with AVX2 and FMA.
pub(crate) fn usable() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX-512 register blocks ([`simd::rows_kernel`] on 16 lanes) can run: [`usable`] and
/// AVX-512F. They give the same bits as the AVX2 ones, faster.
pub(crate) fn wide() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        usable() && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the bf16 blocks ([`avx512bf16`]) can run: [`wide`] and AVX512_BF16 (`vdpbf16ps`).
pub(crate) fn bf16_usable() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        wide() && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x` rounded to the nearest bf16 (ties to even), as the high 16 bits of an f32.
pub(crate) fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    (b.wrapping_add(0x7fff + ((b >> 16) & 1))) >> 16
}

/// Two values rounded to bf16 in one word, `lo` in the low half: one pair of a `vdpbf16ps`
/// operand.
fn bf16_pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) | (bf16_bits(hi) << 16)
}

/// The geometry of one convolution over one input size.
struct Plan {
    c_in: usize,
    s: usize,
    pad: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    /// Phase plane size: `hq x wq`.
    hq: usize,
    wq: usize,
    /// Positions per kernel call: 16 with AVX2; 16 to 80 with AVX-512.
    pos: usize,
    /// Computed positions per output channel (`oh * wq` rounded up to whole kernel calls).
    npos: usize,
    /// Floats of the prepared (padded, phase-split) input of one image, reads included.
    prepared: usize,
    /// Flat shift of every tap, in weight order `(ci, ky, kx)`.
    offsets: Vec<usize>,
}

impl Plan {
    fn new(c_in: usize, k: usize, s: usize, pad: usize, h: usize, w: usize, wide: bool) -> Plan {
        let (hp, wp) = (h + 2 * pad, w + 2 * pad);
        let (oh, ow) = ((hp - k) / s + 1, (wp - k) / s + 1);
        let (hq, wq) = (hp.div_ceil(s), wp.div_ceil(s));
        let plane = hq * wq;
        let mut offsets = Vec::with_capacity(c_in * k * k);
        for ci in 0..c_in {
            for ky in 0..k {
                for kx in 0..k {
                    let phase = (ci * s + ky % s) * s + kx % s;
                    offsets.push(phase * plane + (ky / s) * wq + kx / s);
                }
            }
        }
        let pos = match wide {
            true if oh * wq > WIDE_ONE_CALL_UP_TO => 3 * L16,
            true => (oh * wq).div_ceil(L16).max(1) * L16,
            false => POS,
        };
        let npos = (oh * wq).div_ceil(pos) * pos;
        let last_read = offsets.iter().max().copied().unwrap_or(0) + npos;
        Plan {
            c_in,
            s,
            pad,
            h,
            w,
            oh,
            ow,
            hq,
            wq,
            pos,
            npos,
            prepared: last_read.max(c_in * s * s * plane),
            offsets,
        }
    }

    /// Fills `dst` with the zero-padded phase planes of one image: `put(ci, iy, first, row)`
    /// writes input row `iy` of plane `ci` at columns `first, first + s, ..` into `row`.
    fn fill<T: Copy>(
        &self,
        dst: &mut [T],
        zero: T,
        mut put: impl FnMut(usize, usize, usize, &mut [T]),
    ) {
        let (s, pad, h, w, wq) = (self.s, self.pad, self.h, self.w, self.wq);
        let planes = self.c_in * s * s * self.hq * wq;
        // Past the planes: only read by the dropped positions of the last rows.
        dst[planes..].fill(zero);
        let mut rows = dst[..planes].chunks_exact_mut(wq);
        for ci in 0..self.c_in {
            for py in 0..s {
                for px in 0..s {
                    // Phase columns qx in lo..hi hold input columns qx * s + px - pad.
                    let lo = pad.saturating_sub(px).div_ceil(s).min(wq);
                    let hi = (w + pad).saturating_sub(px).div_ceil(s).clamp(lo, wq);
                    for qy in 0..self.hq {
                        let Some(row) = rows.next() else { return };
                        let iy = (qy * s + py).wrapping_sub(pad);
                        if iy >= h {
                            row.fill(zero);
                            continue;
                        }
                        row[..lo].fill(zero);
                        row[hi..].fill(zero);
                        if hi > lo {
                            put(ci, iy, lo * s + px - pad, &mut row[lo..hi]);
                        }
                    }
                }
            }
        }
    }

    /// Copies one image `c_in x h x w` into `dst` as zero-padded phase planes.
    fn prepare(&self, src: &[f32], dst: &mut [f32]) {
        let (s, h, w) = (self.s, self.h, self.w);
        self.fill(dst, 0.0, |ci, iy, first, row| {
            let line = &src[(ci * h + iy) * w..(ci * h + iy + 1) * w];
            if s == 1 {
                row.copy_from_slice(&line[first..first + row.len()]);
            } else {
                for (d, &v) in row.iter_mut().zip(line[first..].iter().step_by(s)) {
                    *d = v;
                }
            }
        });
    }

    /// One image of `channels` planes `h x w` into `dst` as the zero-padded phase planes of
    /// `self.c_in` channel pairs: channels `2c` and `2c + 1` (zero past `channels`) rounded to
    /// bf16 in one word ([`bf16_pair`]).
    fn prepare_pairs(&self, src: &[f32], channels: usize, dst: &mut [u32]) {
        let (s, h, w) = (self.s, self.h, self.w);
        let line = |c: usize, iy: usize| {
            (c < channels).then(|| &src[(c * h + iy) * w..(c * h + iy + 1) * w])
        };
        self.fill(dst, 0, |cp, iy, first, row| {
            let (a, b) = (line(2 * cp, iy), line(2 * cp + 1, iy));
            let Some(a) = a else {
                row.fill(0);
                return;
            };
            for (j, d) in row.iter_mut().enumerate() {
                let x = first + j * s;
                *d = bf16_pair(a[x], b.map_or(0.0, |b| b[x]));
            }
        });
    }
}

/// A convolution run by the direct kernels; the weights stay with the caller.
pub(crate) struct DirectConv {
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    /// AVX-512 blocks ([`wide`]) rather than AVX2 ones; the same results.
    wide: bool,
    /// bf16 weights `[c_out, pairs * k * k]` ([`bf16_pair`] of channels `2c`, `2c + 1`) when
    /// this convolution runs the bf16 blocks ([`Self::bf16`]); then the caller's f32 weights
    /// are not read.
    bf16: Option<Vec<u32>>,
}

impl DirectConv {
    /// A `k x k` convolution `c_in -> c_out` with `stride` and `pad`; `None` when the kernels
    /// cannot run here or `c_out` is odd (groups of 6 channels, the last one of 2 or 4).
    pub(crate) fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Option<Self> {
        (usable() && c_out.is_multiple_of(2) && stride > 0).then_some(DirectConv {
            c_in,
            c_out,
            k,
            stride,
            pad,
            wide: wide(),
            bf16: None,
        })
    }

    /// The same convolution with `wt` (`[c_out, c_in * k * k]`) rounded to bf16 and run by the
    /// `vdpbf16ps` blocks, which also round the input to bf16 and sum in f32; `None` without
    /// AVX512_BF16 ([`bf16_usable`]).
    pub(crate) fn bf16(self, wt: &[f32]) -> Option<Self> {
        if !bf16_usable() {
            return None;
        }
        let (kk, pairs) = (self.k * self.k, self.c_in.div_ceil(2));
        let taps = self.c_in * kk;
        let mut packed = Vec::with_capacity(self.c_out * pairs * kk);
        for row in wt.chunks_exact(taps).take(self.c_out) {
            for cp in 0..pairs {
                for t in 0..kk {
                    let hi = match 2 * cp + 1 < self.c_in {
                        true => row[(2 * cp + 1) * kk + t],
                        false => 0.0,
                    };
                    packed.push(bf16_pair(row[2 * cp * kk + t], hi));
                }
            }
        }
        (packed.len() == self.c_out * pairs * kk).then_some(DirectConv {
            bf16: Some(packed),
            wide: true,
            ..self
        })
    }

    /// Whether this convolution runs the bf16 blocks.
    pub(crate) fn is_bf16(&self) -> bool {
        self.bf16.is_some()
    }

    /// `b` images `c_in x h x w` -> `b x c_out x oh x ow`, plus `bias` and `act`; `wt` is
    /// `[c_out, c_in * k * k]`. Images are spread over the pool; a single image spreads its
    /// output positions ([`crate::nn::serial`] honoured).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        wt: &[f32],
        bias: &[f32],
        src: &[f32],
        b: usize,
        h: usize,
        w: usize,
        act: Act,
    ) -> Vec<f32> {
        let planes = match self.bf16 {
            Some(_) => self.c_in.div_ceil(2),
            None => self.c_in,
        };
        let p = Plan::new(planes, self.k, self.stride, self.pad, h, w, self.wide);
        debug_assert!(
            (self.bf16.is_some() || wt.len() == self.c_out * p.offsets.len())
                && bias.len() == self.c_out
        );
        let in_size = self.c_in * h * w;
        let out_size = self.c_out * p.oh * p.ow;
        let mut out = vec![0f32; b * out_size];
        let one_image = |img: usize, o: &mut [f32]| {
            with_scratch(p.prepared + self.c_out * p.npos, |buf| {
                let (prep, flat) = buf.split_at_mut(p.prepared);
                let image = &src[img * in_size..(img + 1) * in_size];
                match self.bf16 {
                    // SAFETY: u32 and f32 have the same size and alignment, and every bit
                    // pattern is a valid value of either.
                    Some(_) => p.prepare_pairs(image, self.c_in, unsafe {
                        std::slice::from_raw_parts_mut(prep.as_mut_ptr().cast::<u32>(), prep.len())
                    }),
                    None => p.prepare(image, prep),
                }
                let parallel = b == 1 && !is_serial();
                self.channels(&p, wt, bias, prep, flat, parallel);
                compact(&p, flat, o, act);
            });
        };
        if b == 1 {
            one_image(0, &mut out);
        } else {
            for_each_chunk(&mut out, out_size, |img, o| {
                crate::nn::serial(|| one_image(img, o))
            });
        }
        out
    }

    /// All output channels of one prepared image into `flat` (`[c_out, npos]`).
    fn channels(
        &self,
        p: &Plan,
        wt: &[f32],
        bias: &[f32],
        prep: &[f32],
        flat: &mut [f32],
        parallel: bool,
    ) {
        let taps = p.offsets.len();
        // One job, or (a single image over the pool) a few per thread. Blocking the positions
        // for the cache measured no faster: the kernel, not the loads, sets the pace.
        let jobs = if parallel {
            4 * rayon::current_num_threads()
        } else {
            1
        };
        let chunk = (p.npos / p.pos).div_ceil(jobs);
        let chunks: Vec<usize> = (0..p.npos).step_by(chunk * p.pos).collect();
        let dst = SyncPtr(flat.as_mut_ptr());
        let group = if self.wide {
            wide_rows(p.pos / L16)
        } else {
            CO
        };
        let run = |&start: &usize| {
            let end = (start + chunk * p.pos).min(p.npos);
            for co in (0..self.c_out).step_by(group) {
                let rows = group.min(self.c_out - co);
                let w = wt.get(co * taps..).unwrap_or_default().as_ptr();
                let (bias, out) = (&bias[co..co + rows], dst.get().wrapping_add(co * p.npos));
                // SAFETY: usable() (and wide() for `self.wide`, bf16_usable() for `self.bf16`)
                // held when this DirectConv was made; `prep` holds every read
                // (`Plan::prepared`), `wt` (or, for bf16, `w16`) holds rows co..co+rows of
                // `taps` weights (words), and this job alone writes positions
                // start..end of rows co..co+rows of `flat` (`npos` apart).
                unsafe {
                    if let Some(w16) = &self.bf16 {
                        avx512bf16::block(
                            rows,
                            &p.offsets,
                            w16[co * taps..].as_ptr(),
                            taps,
                            bias,
                            prep.as_ptr().cast::<u32>(),
                            start..end,
                            p.pos,
                            out,
                            p.npos,
                        )
                    } else if self.wide {
                        avx512::block(
                            rows,
                            &p.offsets,
                            w,
                            taps,
                            bias,
                            prep.as_ptr(),
                            start..end,
                            p.pos,
                            out,
                            p.npos,
                        )
                    } else {
                        avx::block(
                            rows,
                            &p.offsets,
                            w,
                            taps,
                            bias,
                            prep.as_ptr(),
                            start..end,
                            out,
                            p.npos,
                        )
                    }
                }
            }
        };
        if parallel {
            chunks.par_iter().for_each(run);
        } else {
            chunks.iter().for_each(run);
        }
    }
}

/// `flat` `[c_out, npos]` (rows `wq` long) -> `out` `[c_out, oh, ow]`, with `act`.
fn compact(p: &Plan, flat: &[f32], out: &mut [f32], act: Act) {
    for (co, (plane, src)) in out
        .chunks_exact_mut(p.oh * p.ow)
        .zip(flat.chunks_exact(p.npos))
        .enumerate()
    {
        for (row, line) in plane.chunks_exact_mut(p.ow).zip(src.chunks(p.wq)) {
            row.copy_from_slice(&line[..p.ow]);
        }
        apply_act(plane, 1, plane.len(), act.for_channel(co));
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx {
    use std::arch::x86_64::__m256;

    use super::simd::taps_kernel;
    use super::{POS, V};

    /// Output channels `co .. co + rows` (`rows` 2, 4 or 6) at `positions` (rows of `out`
    /// are `npos` apart).
    ///
    /// # Safety
    /// AVX2 and FMA must be present; `w` must hold `rows` rows of `taps` weights; `x` must be
    /// valid for reads at every `offsets[t] + position`; `out` for writes at `positions` of
    /// `rows` rows `npos` apart.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(
        rows: usize,
        offsets: &[usize],
        w: *const f32,
        taps: usize,
        bias: &[f32],
        x: *const f32,
        positions: std::ops::Range<usize>,
        out: *mut f32,
        npos: usize,
    ) {
        debug_assert!(bias.len() >= rows && positions.len().is_multiple_of(POS));
        for pos in positions.step_by(POS) {
            let (x, o) = (x.add(pos), out.add(pos));
            match rows {
                6 => taps_kernel::<__m256, 6, V>(offsets, w, taps, bias, x, o, npos),
                4 => taps_kernel::<__m256, 4, V>(offsets, w, taps, bias, x, o, npos),
                _ => taps_kernel::<__m256, 2, V>(offsets, w, taps, bias, x, o, npos),
            }
        }
    }
}

/// The register block both the direct convolutions and Winograd's products use, written once
/// for 8-lane (AVX2) and 16-lane (AVX-512) registers.
#[cfg(target_arch = "x86_64")]
pub(crate) mod simd {
    use std::arch::x86_64::*;

    /// A register of f32 lanes. The methods are the intrinsics; callers inline them into
    /// functions compiled with the register's features.
    pub(crate) trait F32x: Copy {
        /// Lanes per register.
        const LANES: usize;
        /// Every lane `v`.
        unsafe fn splat(v: f32) -> Self;
        /// `LANES` floats from `p` (unaligned).
        unsafe fn load(p: *const f32) -> Self;
        /// `a * b + c`, one rounding.
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
        /// `LANES` floats to `p` (unaligned).
        unsafe fn store(self, p: *mut f32);
    }

    impl F32x for __m256 {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            _mm256_set1_ps(v)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self)
        }
    }

    impl F32x for __m512 {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            _mm512_set1_ps(v)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm512_storeu_ps(p, self)
        }
    }

    /// The direct convolution's call: `R` channels x `LANES * V` positions, started from
    /// `bias`, then every tap (`offsets`, weights `taps` apart) in order.
    ///
    /// # Safety
    /// As for [`rows_kernel`], with `row(t) = offsets[t]` and `n = taps = offsets.len()`.
    #[inline(always)]
    pub(crate) unsafe fn taps_kernel<S: F32x, const R: usize, const V: usize>(
        offsets: &[usize],
        w: *const f32,
        taps: usize,
        bias: &[f32],
        x: *const f32,
        out: *mut f32,
        stride: usize,
    ) {
        let init: [f32; R] = std::array::from_fn(|r| bias[r]);
        // SAFETY (of the index): `t < taps == offsets.len()`.
        let row = |t: usize| *offsets.get_unchecked(t);
        rows_kernel::<S, R, V>(taps, row, w, taps, init, x, out, stride);
    }

    /// `R x (LANES * V)` outputs
    /// `out[r * out_rs + p] = init[r] + sum over i < n of w[r * w_rs + i] * x[row(i) + p]`,
    /// each sum in `R * V` registers, one FMA per term, `i` in order: the same bits for any
    /// register width.
    ///
    /// # Safety
    /// `S`'s features must be present (callers are functions compiled with them, which this
    /// inlines into); `w` must hold `R` rows of `n` values `w_rs` apart, `x` `LANES * V`
    /// values at every `row(i)`, `out` `R` rows of `LANES * V` values `out_rs` apart.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn rows_kernel<S: F32x, const R: usize, const V: usize>(
        n: usize,
        row: impl Fn(usize) -> usize,
        w: *const f32,
        w_rs: usize,
        init: [f32; R],
        x: *const f32,
        out: *mut f32,
        out_rs: usize,
    ) {
        let mut acc: [[S; V]; R] = std::array::from_fn(|r| [S::splat(init[r]); V]);
        for i in 0..n {
            let p = x.add(row(i));
            let v: [S; V] = std::array::from_fn(|j| S::load(p.add(j * S::LANES)));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let a = S::splat(*w.add(r * w_rs + i));
                for (s, &vj) in acc_r.iter_mut().zip(&v) {
                    *s = S::fmadd(a, vj, *s);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (j, &s) in acc_r.iter().enumerate() {
                s.store(out.add(r * out_rs + j * S::LANES));
            }
        }
    }
}

/// Runs `$call` with the consts `$R` (output channels: 2 to [`wide_rows`]`($V)`, even) and `$V`
/// (registers of positions: 1 to 5) set to `$rows` and `$v`: the AVX-512 blocks' dispatch.
#[cfg(target_arch = "x86_64")]
macro_rules! by_block {
    ($rows:expr, $v:expr, |$R:ident, $V:ident| $call:expr) => {
        by_block!(@arms ($rows, $v), $R, $V, $call,
            (8, 3), (6, 3), (4, 3), (2, 3), (8, 1), (6, 1), (4, 1), (2, 1),
            (8, 2), (6, 2), (4, 2), (2, 2), (6, 4), (4, 4), (2, 4), (4, 5), (2, 5))
    };
    (@arms $on:expr, $R:ident, $V:ident, $call:expr, $(($r:literal, $vv:literal)),*) => {
        match $on {
            $(($r, $vv) => {
                const $R: usize = $r;
                const $V: usize = $vv;
                $call
            })*
            (rows, v) => unreachable!("no AVX-512 block of {rows} channels x {v} registers"),
        }
    };
}

/// The AVX-512 blocks: the same sums as [`avx`], 16 lanes per register.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::__m512;

    use super::simd::taps_kernel;
    use super::L16;

    /// Output channels `co .. co + rows` (`rows` even, at most [`super::wide_rows`] of
    /// `pos / 16`) at `positions`, `pos` (16, 32, 48, 64 or 80)
    /// per call (rows of `out` are `npos` apart).
    ///
    /// # Safety
    /// AVX-512F, AVX2 and FMA must be present; `w` must hold `rows` rows of `taps` weights; `x`
    /// must be valid for reads at every `offsets[t] + position`; `out` for writes at
    /// `positions` of `rows` rows `npos` apart.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(
        rows: usize,
        offsets: &[usize],
        w: *const f32,
        taps: usize,
        bias: &[f32],
        x: *const f32,
        positions: std::ops::Range<usize>,
        pos: usize,
        out: *mut f32,
        npos: usize,
    ) {
        debug_assert!(bias.len() >= rows && positions.len().is_multiple_of(pos));
        for start in positions.step_by(pos) {
            let (x, o) = (x.add(start), out.add(start));
            by_block!(rows, pos / L16, |R, V| taps_kernel::<__m512, R, V>(
                offsets, w, taps, bias, x, o, npos
            ))
        }
    }
}

/// The bf16 blocks: the call shapes of the AVX-512 f32 block (8 output channels x 48 positions
/// in 24 registers; small maps in one call, [`wide_rows`]), but each `vdpbf16ps` adds the
/// products of two input channels of one tap (a word of [`bf16_pair`]s in the prepared input
/// and in the weights) to 16 f32 sums: per tap pair of the 8 x 48 call 3 loads, 8 broadcasts
/// and 24 dot products, twice the multiply-adds of an FMA.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512bf16 {
    use std::arch::x86_64::*;

    use super::L16;

    /// Output channels `co .. co + rows` (`rows` even, at most [`super::wide_rows`] of
    /// `pos / 16`) at `positions`, `pos` (16, 32, 48, 64 or 80)
    /// per call (rows of `out` are `npos` apart); `offsets`, `w` and `x` count pair words.
    ///
    /// # Safety
    /// AVX-512F and AVX512_BF16 must be present; `w` must hold `rows` rows of `taps` words; `x`
    /// must be valid for reads at every `offsets[t] + position`; `out` for writes at
    /// `positions` of `rows` rows `npos` apart.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(
        rows: usize,
        offsets: &[usize],
        w: *const u32,
        taps: usize,
        bias: &[f32],
        x: *const u32,
        positions: std::ops::Range<usize>,
        pos: usize,
        out: *mut f32,
        npos: usize,
    ) {
        debug_assert!(bias.len() >= rows && positions.len().is_multiple_of(pos));
        for start in positions.step_by(pos) {
            let (x, o) = (x.add(start), out.add(start));
            by_block!(rows, pos / L16, |R, V| kernel::<R, V>(
                offsets, w, taps, bias, x, o, npos
            ))
        }
    }

    /// `R` channels x `16 * V` positions, started from `bias`, then every tap pair in order.
    ///
    /// # Safety
    /// As for [`block`], for one call's positions.
    #[inline(always)]
    unsafe fn kernel<const R: usize, const V: usize>(
        offsets: &[usize],
        w: *const u32,
        taps: usize,
        bias: &[f32],
        x: *const u32,
        out: *mut f32,
        stride: usize,
    ) {
        let mut acc: [[__m512; V]; R] = std::array::from_fn(|r| [_mm512_set1_ps(bias[r]); V]);
        for (i, &off) in offsets.iter().enumerate() {
            let p = x.add(off);
            let v: [__m512bh; V] = std::array::from_fn(|j| {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.add(16 * j).cast()))
            });
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let a = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                    *w.add(r * taps + i) as i32,
                ));
                for (s, &vj) in acc_r.iter_mut().zip(&v) {
                    *s = _mm512_dpbf16_ps(*s, a, vj);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (j, &s) in acc_r.iter().enumerate() {
                _mm512_storeu_ps(out.add(r * stride + j * 16), s);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx {
    /// Never called: [`super::usable`] is false off x86-64.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(
        _: usize,
        _: &[usize],
        _: *const f32,
        _: usize,
        _: &[f32],
        _: *const f32,
        _: std::ops::Range<usize>,
        _: *mut f32,
        _: usize,
    ) {
        unreachable!("direct convolution kernels need x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{serial, Conv2d};
    use candle_core::{Device, Tensor};

    /// Deterministic pseudo-random values in [-1, 1).
    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|_| rng.f64() as f32 * 2.0 - 1.0).collect()
    }

    /// `(c_in, c_out, k, stride, pad, h, w)`: the ResNet's stem and stage convolutions, and
    /// odd ones (channel tails of 2 and 4, stride 3, padding 2, non-square maps, and small maps
    /// taking one AVX-512 call of 1, 2, 4 and 5 registers, with channel tails).
    const SHAPES: [(usize, usize, usize, usize, usize, usize, usize); 14] = [
        (3, 32, 7, 2, 0, 150, 150),
        (32, 32, 3, 1, 1, 35, 35),
        (32, 64, 3, 2, 0, 35, 35),
        (64, 64, 3, 1, 1, 17, 17),
        (64, 128, 3, 2, 0, 17, 17),
        (128, 128, 3, 1, 1, 8, 8),
        (5, 10, 3, 1, 1, 13, 9),
        (7, 4, 5, 3, 2, 20, 31),
        (2, 2, 1, 1, 0, 6, 7),
        (6, 8, 4, 2, 1, 11, 12),
        (4, 6, 3, 1, 1, 3, 3),
        (6, 12, 3, 1, 1, 4, 5),
        (8, 10, 3, 1, 1, 6, 8),
        (3, 6, 3, 1, 1, 7, 9),
    ];

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn matches_im2col_and_gemm() {
        if !usable() {
            eprintln!("SKIPPED: no AVX2/FMA on this CPU");
            return;
        }
        for (i, &(c_in, c_out, k, s, pad, h, w)) in SHAPES.iter().enumerate() {
            let seed = i as u64 * 10;
            let weight = Tensor::from_vec(
                random(c_out * c_in * k * k, seed),
                (c_out, c_in, k, k),
                &Device::Cpu,
            )
            .unwrap();
            let bias = Tensor::from_vec(random(c_out, seed + 1), c_out, &Device::Cpu).unwrap();
            let gemm = Conv2d::new(weight.clone(), Some(bias.clone()), s, pad).unwrap();
            let direct = Conv2d::new(weight, Some(bias), s, pad).unwrap().direct();
            assert!(direct.is_direct());
            for b in [1, 3] {
                let x = Tensor::from_vec(
                    random(b * c_in * h * w, seed + 2),
                    (b, c_in, h, w),
                    &Device::Cpu,
                )
                .unwrap();
                let want = values(&gemm.forward_act(&x, Act::Relu).unwrap());
                let got = direct.forward_act(&x, Act::Relu).unwrap();
                assert_eq!(
                    got.dims4().unwrap(),
                    (b, c_out, gemm.out_size(h, w).0, gemm.out_size(h, w).1)
                );
                let got = values(&got);
                let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                let err = got
                    .iter()
                    .zip(&want)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    err <= 2e-6 * scale * (c_in * k * k) as f32,
                    "shape {:?} batch {b}: max error {err} (scale {scale})",
                    SHAPES[i]
                );
                assert!(want.iter().any(|&v| v > 0.0) && want.contains(&0.0));
            }
        }
    }

    #[test]
    fn small_maps_take_one_avx512_call() {
        // (c_in, k, s, pad, h, w) -> positions per AVX-512 call.
        for ((c_in, k, s, pad, h, w), pos) in [
            ((4, 3, 1, 1, 3, 3), 16),
            ((6, 3, 1, 1, 4, 5), 32),
            ((8, 3, 1, 1, 6, 8), 64),
            ((128, 3, 1, 1, 8, 8), 80),
            ((64, 3, 2, 0, 17, 17), 80),
            ((64, 3, 1, 1, 17, 17), 48),
            ((32, 3, 1, 1, 35, 35), 48),
        ] {
            let p = Plan::new(c_in, k, s, pad, h, w, true);
            assert_eq!(p.pos, pos, "{h}x{w}");
            assert!(p.npos >= p.oh * p.wq && p.npos.is_multiple_of(p.pos));
            assert_eq!(Plan::new(c_in, k, s, pad, h, w, false).pos, POS);
        }
        assert_eq!((1..=5).map(wide_rows).collect::<Vec<_>>(), [8, 8, 8, 6, 4]);
    }

    #[test]
    fn avx512_blocks_give_the_avx2_bits() {
        if !wide() {
            eprintln!("SKIPPED: no AVX-512F on this CPU");
            return;
        }
        for (i, &(c_in, c_out, k, s, pad, h, w)) in SHAPES.iter().enumerate() {
            let wt = random(c_out * c_in * k * k, 20 + i as u64);
            let bias = random(c_out, 40 + i as u64);
            let wide = DirectConv::new(c_in, c_out, k, s, pad).unwrap();
            assert!(wide.wide);
            let narrow = DirectConv {
                wide: false,
                ..DirectConv::new(c_in, c_out, k, s, pad).unwrap()
            };
            for b in [1, 2] {
                let src = random(b * c_in * h * w, 60 + i as u64);
                let got = wide.forward(&wt, &bias, &src, b, h, w, Act::Relu);
                let want = narrow.forward(&wt, &bias, &src, b, h, w, Act::Relu);
                assert_eq!(got.len(), want.len());
                let differ = got
                    .iter()
                    .zip(&want)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(differ, 0, "shape {:?} batch {b}", SHAPES[i]);
                assert!(want.iter().any(|&v| v > 0.0));
            }
        }
    }

    /// bf16 value of `bf16_bits`, as f64.
    fn from_bf16(bits: u32) -> f64 {
        f32::from_bits(bits << 16) as f64
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        assert_eq!(bf16_bits(-2.5), 0xc020);
        // 1 + 2^-8 lies half-way between 1 and 1 + 2^-7: ties go to the even 1.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0 + 1e-6), 0x3f81);
        for x in random(1000, 3) {
            let r = from_bf16(bf16_bits(x));
            assert!((r - x as f64).abs() <= x.abs() as f64 / 256.0, "{x} -> {r}");
        }
    }

    /// The bf16 blocks compute the sums of the bf16-rounded weights times the bf16-rounded
    /// inputs (checked against a plain f64 loop over the rounded values, to f32 summation
    /// error), on the network's and odd shapes, including odd channel counts.
    #[test]
    fn bf16_blocks_sum_the_rounded_products() {
        if !bf16_usable() {
            eprintln!("SKIPPED: no AVX512_BF16 on this CPU");
            return;
        }
        for (i, &(c_in, c_out, k, s, pad, h, w)) in SHAPES.iter().enumerate() {
            let wt = random(c_out * c_in * k * k, 70 + i as u64);
            let bias = random(c_out, 80 + i as u64);
            let conv = DirectConv::new(c_in, c_out, k, s, pad)
                .unwrap()
                .bf16(&wt)
                .unwrap();
            assert!(conv.is_bf16());
            let b = 2;
            let src = random(b * c_in * h * w, 90 + i as u64);
            let got = conv.forward(&[], &bias, &src, b, h, w, Act::Identity);
            let (oh, ow) = ((h + 2 * pad - k) / s + 1, (w + 2 * pad - k) / s + 1);
            assert_eq!(got.len(), b * c_out * oh * ow);
            let round = |v: f32| from_bf16(bf16_bits(v));
            let mut worst = 0f64;
            let mut inexact = 0;
            for img in 0..b {
                for co in 0..c_out {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let (mut sum, mut abs, mut plain) = (bias[co] as f64, 0f64, 0f64);
                            for ci in 0..c_in {
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let (iy, ix) = (oy * s + ky, ox * s + kx);
                                        if iy < pad || ix < pad || iy >= h + pad || ix >= w + pad {
                                            continue;
                                        }
                                        let x =
                                            src[((img * c_in + ci) * h + iy - pad) * w + ix - pad];
                                        let wv = wt[((co * c_in + ci) * k + ky) * k + kx];
                                        sum += round(wv) * round(x);
                                        abs += (wv as f64 * x as f64).abs();
                                        plain += wv as f64 * x as f64;
                                    }
                                }
                            }
                            let g = got[((img * c_out + co) * oh + oy) * ow + ox] as f64;
                            let scale = abs + bias[co].abs() as f64;
                            worst = worst.max((g - sum).abs() / scale);
                            inexact += usize::from((g - plain - bias[co] as f64).abs() > 1e-6);
                        }
                    }
                }
            }
            assert!(
                worst < 1e-5,
                "shape {:?}: relative error {worst}",
                SHAPES[i]
            );
            // bf16 really ran: most sums differ from the f32 ones.
            assert!(inexact > got.len() / 2, "shape {:?}", SHAPES[i]);
        }
    }

    #[test]
    fn bf16_same_bits_for_any_batch_and_threads() {
        if !bf16_usable() {
            eprintln!("SKIPPED: no AVX512_BF16 on this CPU");
            return;
        }
        for &(c_in, c_out, k, s, pad, h, w) in &SHAPES[..6] {
            let wt = random(c_out * c_in * k * k, 17);
            let bias = random(c_out, 18);
            let conv = DirectConv::new(c_in, c_out, k, s, pad)
                .unwrap()
                .bf16(&wt)
                .unwrap();
            let b = 3;
            let src = random(b * c_in * h * w, 19);
            let all = conv.forward(&[], &bias, &src, b, h, w, Act::Identity);
            let per = all.len() / b;
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            for img in 0..b {
                let one = &src[img * c_in * h * w..(img + 1) * c_in * h * w];
                let want = &all[img * per..(img + 1) * per];
                for got in [
                    pool.install(|| conv.forward(&[], &bias, one, 1, h, w, Act::Identity)),
                    serial(|| conv.forward(&[], &bias, one, 1, h, w, Act::Identity)),
                ] {
                    assert!(got
                        .iter()
                        .zip(want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()));
                }
            }
        }
    }

    #[test]
    fn same_bits_for_any_batch_and_threads() {
        if !usable() {
            eprintln!("SKIPPED: no AVX2/FMA on this CPU");
            return;
        }
        for &(c_in, c_out, k, s, pad, h, w) in &SHAPES[..4] {
            let wt = random(c_out * c_in * k * k, 7);
            let bias = random(c_out, 8);
            let conv = DirectConv::new(c_in, c_out, k, s, pad).unwrap();
            let b = 3;
            let src = random(b * c_in * h * w, 9);
            let all = conv.forward(&wt, &bias, &src, b, h, w, Act::Identity);
            let per = all.len() / b;
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            for img in 0..b {
                let one = &src[img * c_in * h * w..(img + 1) * c_in * h * w];
                let parallel =
                    pool.install(|| conv.forward(&wt, &bias, one, 1, h, w, Act::Identity));
                let single = serial(|| conv.forward(&wt, &bias, one, 1, h, w, Act::Identity));
                let want = &all[img * per..(img + 1) * per];
                assert!(parallel
                    .iter()
                    .zip(want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()));
                assert!(single
                    .iter()
                    .zip(want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    }
}
