//! Building blocks of facekit's convolutional networks, with fast CPU kernels.
//!
//! candle's stock CPU convolution spends most of its time gathering patches, and its element-wise
//! ops each take a full pass over memory. On the CPU these layers instead build the patch matrix
//! with row copies (im2col), multiply with `gemm` straight into a buffer pre-filled with the bias,
//! and apply the activation in the same buffer. On any other device (CUDA) the same layers run
//! candle's own ops, so the weights and the network code are shared.

use candle_core::{CpuStorage, DType, Device, Layout, Module, Result, Shape, Storage, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::dconv::DirectConv;
use crate::winograd::{Tile, WinogradConv};

thread_local! {
    /// Set while the caller parallelises across independent inputs itself (see [`serial`]).
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this thread's CPU kernels single-threaded. Callers that already spread
/// independent inputs (pyramid levels, crop batches, images) over the thread pool use it:
/// two single-threaded products at once beat one product split over two threads.
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    let previous = SERIAL.with(|s| s.replace(true));
    let result = f();
    SERIAL.with(|s| s.set(previous));
    result
}

/// Whether this thread's kernels run single-threaded (see [`serial`]).
pub(crate) fn is_serial() -> bool {
    SERIAL.with(|s| s.get()) || rayon::current_num_threads() == 1
}

/// Calls `f(index, chunk)` for each `size`-long chunk of `data`, in parallel unless [`serial`].
pub(crate) fn for_each_chunk<T: Send>(
    data: &mut [T],
    size: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    if is_serial() {
        data.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        data.par_chunks_mut(size)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor; `None` for other devices or dtypes.
pub(crate) fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if !t.device().is_cpu() || t.dtype() != DType::F32 {
        return None;
    }
    let t = t.contiguous().ok()?;
    let (storage, layout): (_, &Layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => {
            let n = layout.shape().elem_count();
            Some(f(&v[layout.start_offset()..layout.start_offset() + n]))
        }
        _ => None,
    }
}

/// A tensor's contiguous f32 values copied out (any device).
fn to_f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()
}

/// The activation applied after a layer.
#[derive(Clone, Copy)]
pub enum Act<'a> {
    /// None (identity).
    Identity,
    /// max(x, 0).
    Relu,
    /// Per-channel PReLU with these slopes (one per output channel).
    PRelu(&'a PRelu),
    /// PReLU with one slope (one channel of a PReLU).
    PReluSlope(f32),
}

impl Act<'_> {
    /// The activation restricted to output channel `c`.
    pub(crate) fn for_channel(self, c: usize) -> Self {
        match self {
            Act::PRelu(p) => Act::PReluSlope(p.slopes[c]),
            other => other,
        }
    }
}

/// Per-channel PReLU: `x` if positive, else `slope[c] * x`.
pub struct PRelu {
    weight: Tensor,
    slopes: Vec<f32>,
}

impl PRelu {
    /// The slope of channel `c`.
    pub(crate) fn slope(&self, c: usize) -> f32 {
        self.slopes[c]
    }

    /// Loads `weight` (`[channels]`).
    pub fn load(channels: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get(channels, "weight")?;
        let slopes = to_f32_vec(&weight)?;
        Ok(PRelu { weight, slopes })
    }

    /// Applies PReLU along dim 1 of `x` (rank 2 or 4), with candle ops.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let mut shape = vec![1; x.rank()];
        shape[1] = self.slopes.len();
        let w = self.weight.reshape(shape)?;
        let zeros = x.zeros_like()?;
        x.maximum(&zeros)? + x.minimum(&zeros)?.broadcast_mul(&w)?
    }
}

impl Module for PRelu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c) = (x.dim(0)?, x.dim(1)?);
        let inner = x.elem_count() / (b * c).max(1);
        let out = with_cpu_f32(x, |src| {
            let mut v = src.to_vec();
            apply_act(&mut v, c, inner, Act::PRelu(self));
            v
        });
        match out {
            Some(v) => Tensor::from_vec(v, x.shape(), &Device::Cpu),
            None => self.apply(x),
        }
    }
}

/// Applies `act` in place to `[batch, channels, inner]` data.
pub(crate) fn apply_act(v: &mut [f32], channels: usize, inner: usize, act: Act) {
    match act {
        Act::Identity => {}
        Act::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
        Act::PRelu(p) => {
            for (i, chunk) in v.chunks_mut(inner).enumerate() {
                prelu_slice(chunk, p.slopes[i % channels]);
            }
        }
        Act::PReluSlope(a) => prelu_slice(v, a),
    }
}

/// Branch-free PReLU (vectorises).
fn prelu_slice(v: &mut [f32], a: f32) {
    v.iter_mut().for_each(|x| *x = x.max(0.0) + a * x.min(0.0));
}

/// A 2-D convolution (square kernel, symmetric padding) with optional bias.
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    bias_values: Vec<f32>,
    /// The weights are f32 on the CPU: the fast kernels read them in place, row-major
    /// `[c_out, c_in*k*k]` (no copy: the ResNet's 22 MB would cost a page fault per 4 KiB at
    /// every start).
    cpu_weight: bool,
    /// The Winograd form of a 3x3 stride-1 convolution, when switched on ([`Self::winograd`]).
    winograd: Option<WinogradConv>,
    /// The direct kernels, when switched on ([`Self::direct`]).
    direct: Option<DirectConv>,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// Loads `weight` (`[c_out, c_in, k, k]`) and, if `bias`, `bias` (`[c_out]`).
    pub fn load(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get((c_out, c_in, k, k), "weight")?;
        let bias = if bias {
            Some(vb.get(c_out, "bias")?)
        } else {
            None
        };
        Self::new(weight, bias, stride, padding)
    }

    /// From tensors: `weight` `[c_out, c_in, k, k]`, optional `bias` `[c_out]`.
    pub fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let (c_out, c_in, kh, kw) = weight.dims4()?;
        if kh != kw {
            candle_core::bail!("only square kernels are supported, got {kh}x{kw}");
        }
        let bias_values = match &bias {
            Some(b) => to_f32_vec(b)?,
            None => vec![0.0; c_out],
        };
        let cpu_weight = with_cpu_f32(&weight, |_| ()).is_some();
        Ok(Conv2d {
            weight,
            bias,
            bias_values,
            cpu_weight,
            winograd: None,
            direct: None,
            c_in,
            c_out,
            k: kh,
            stride,
            padding,
        })
    }

    /// Runs this convolution with Winograd's `tile` on the CPU (see [`crate::winograd`]): only
    /// 3x3 kernels with stride 1 and padding 1 whose weights live on the CPU; others are
    /// returned unchanged.
    pub(crate) fn winograd(mut self, tile: Tile) -> Self {
        if self.k == 3 && self.stride == 1 && self.padding == 1 {
            self.winograd = with_cpu_f32(&self.weight, |wt| {
                WinogradConv::new(wt, &self.bias_values, self.c_in, self.c_out, tile)
            });
        }
        self
    }

    /// Runs this convolution with the direct kernels on the CPU (see [`crate::dconv`]) where
    /// Winograd does not apply: only weights that live on the CPU, on CPUs with AVX2 and FMA.
    pub(crate) fn direct(mut self) -> Self {
        if self.cpu_weight {
            self.direct = DirectConv::new(self.c_in, self.c_out, self.k, self.stride, self.padding);
        }
        self
    }

    /// Runs this convolution on the bf16 direct kernels (see [`crate::dconv`]: weights and
    /// inputs rounded to bf16, sums in f32) where the CPU has AVX512_BF16 and the weights live
    /// on the CPU; otherwise returns it unchanged.
    pub(crate) fn bf16(mut self) -> Self {
        if self.cpu_weight {
            let conv = DirectConv::new(self.c_in, self.c_out, self.k, self.stride, self.padding);
            if let Some(bf16) = with_cpu_f32(&self.weight, |wt| conv?.bf16(wt)).flatten() {
                self.direct = Some(bf16);
                self.winograd = None;
            }
        }
        self
    }

    /// Whether this convolution runs on the bf16 kernels ([`Self::bf16`]).
    pub(crate) fn is_bf16(&self) -> bool {
        self.direct.as_ref().is_some_and(DirectConv::is_bf16)
    }

    /// Whether this convolution runs on the direct kernels ([`Self::direct`]).
    pub(crate) fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The weights, `[c_out, c_in, k, k]`.
    #[cfg(test)]
    pub(crate) fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Multiply-adds per image of `h x w` (direct convolution).
    pub fn macs(&self, h: usize, w: usize) -> usize {
        let (oh, ow) = self.out_size(h, w);
        oh * ow * self.c_out * self.c_in * self.k * self.k
    }

    /// Multiply-adds per image of `h x w` in the products this convolution runs: the direct
    /// count, or with Winograd the element-wise products of the transformed tiles.
    pub fn product_macs(&self, h: usize, w: usize) -> usize {
        match &self.winograd {
            Some(wg) => wg.macs(h, w),
            None => self.macs(h, w),
        }
    }

    /// Output spatial size for an input of `h x w`.
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let o = |n: usize| (n + 2 * self.padding - self.k) / self.stride + 1;
        (o(h), o(w))
    }

    /// Convolution followed by `act`.
    pub fn forward_act(&self, x: &Tensor, act: Act) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.c_in {
            candle_core::bail!("conv expects {} input channels, got {c}", self.c_in);
        }
        if h + 2 * self.padding < self.k || w + 2 * self.padding < self.k {
            candle_core::bail!(
                "input {h}x{w} is smaller than the {}x{} kernel",
                self.k,
                self.k
            );
        }
        let fast = if self.cpu_weight {
            with_cpu_f32(&self.weight, |wt| {
                with_cpu_f32(x, |src| self.cpu_forward(src, wt, b, h, w, act))
            })
            .flatten()
        } else {
            None
        };
        if let Some(out) = fast {
            let (oh, ow) = self.out_size(h, w);
            return Tensor::from_vec(out, (b, self.c_out, oh, ow), &Device::Cpu);
        }
        // Generic path (CUDA, or tensors that are not f32).
        let mut y = x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?;
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(&bias.reshape((1, self.c_out, 1, 1))?)?;
        }
        match act {
            Act::Identity => Ok(y),
            Act::Relu => y.relu(),
            Act::PRelu(p) => p.apply(&y),
            Act::PReluSlope(a) => y.maximum(0f32)? + (y.minimum(0f32)? * a as f64)?,
        }
    }

    fn geometry(&self, h: usize, w: usize) -> PatchGeometry {
        PatchGeometry {
            c: self.c_in,
            h,
            w,
            k: self.k,
            stride: self.stride,
            pad: self.padding,
            ow: self.out_size(h, w).1,
        }
    }

    /// `images` outputs `[c_out, per_image]` of bias values (gemm accumulates onto them).
    fn bias_filled(&self, images: usize, per_image: usize) -> Vec<f32> {
        let mut v = Vec::with_capacity(images * self.c_out * per_image);
        for _ in 0..images {
            for &bias in &self.bias_values {
                v.extend(std::iter::repeat_n(bias, per_image));
            }
        }
        v
    }

    /// im2col + one gemm on CPU for a batch of `b` images `c_in x h x w`: the patch matrix of
    /// the whole batch is `[c_in*k*k, b*oh*ow]`, so small crops still make one large product.
    /// Images whose own patch matrix is large go to [`Self::cpu_forward_tiled`].
    pub(crate) fn cpu_forward(
        &self,
        src: &[f32],
        wt: &[f32],
        b: usize,
        h: usize,
        w: usize,
        act: Act,
    ) -> Vec<f32> {
        if let Some(wg) = self.winograd.as_ref().filter(|wg| wg.pays(b, h, w)) {
            return wg.forward(wt, src, b, h, w, act);
        }
        if let Some(direct) = &self.direct {
            return direct.forward(wt, &self.bias_values, src, b, h, w, act);
        }
        let (oh, ow) = self.out_size(h, w);
        let n = oh * ow;
        let kk = self.c_in * self.k * self.k;
        let direct = b == 1 && self.k == 1 && self.stride == 1 && self.padding == 0;
        if !direct && kk * n > TILE_FLOATS {
            return self.cpu_forward_tiled(src, wt, b, h, w, act);
        }
        let bn = b * n;
        // dst[c_out, b*n] = bias + wt[c_out, kk] @ cols[kk, b*n].
        let mut dst = self.bias_filled(1, bn);
        let parallel = !is_serial();
        if direct {
            // SAFETY: dst holds c_out rows of bn values.
            unsafe { gemm_acc(self.c_out, bn, kk, dst.as_mut_ptr(), bn, wt, src, parallel) };
        } else {
            let geom = self.geometry(h, w);
            with_scratch(kk * bn, |cols| {
                im2col(src, b, &geom, 0..oh, cols);
                // SAFETY: dst holds c_out rows of bn values.
                unsafe { gemm_acc(self.c_out, bn, kk, dst.as_mut_ptr(), bn, wt, cols, parallel) };
            });
        }
        if b == 1 {
            apply_act(&mut dst, self.c_out, n, act);
            return dst;
        }
        // [c_out, b, n] -> [b, c_out, n], with the activation fused into the copy.
        let mut out = vec![0f32; b * self.c_out * n];
        for_each_chunk(&mut out, self.c_out * n, |img, o| {
            for (co, plane) in o.chunks_mut(n).enumerate() {
                plane.copy_from_slice(&dst[co * bn + img * n..co * bn + (img + 1) * n]);
                apply_act(plane, 1, n, act.for_channel(co));
            }
        });
        out
    }

    /// Large images: each image's output rows in blocks whose patch matrix stays in cache; each
    /// block is one single-threaded product written straight into `[b, c_out, n]`, and the
    /// blocks (of all images) are spread over the pool.
    fn cpu_forward_tiled(
        &self,
        src: &[f32],
        wt: &[f32],
        b: usize,
        h: usize,
        w: usize,
        act: Act,
    ) -> Vec<f32> {
        let (oh, ow) = self.out_size(h, w);
        let n = oh * ow;
        let kk = self.c_in * self.k * self.k;
        let geom = self.geometry(h, w);
        let mut out = self.bias_filled(b, n);
        let rows_per = (TILE_FLOATS / (kk * ow)).max(1);
        let blocks: Vec<(usize, std::ops::Range<usize>)> = (0..b)
            .flat_map(|img| {
                (0..oh)
                    .step_by(rows_per)
                    .map(move |r| (img, r..(r + rows_per).min(oh)))
            })
            .collect();
        let dst = SyncPtr(out.as_mut_ptr());
        let in_size = self.c_in * h * w;
        let job = |(img, rows): &(usize, std::ops::Range<usize>)| {
            serial(|| {
                let nb = rows.len() * ow;
                let image = &src[img * in_size..(img + 1) * in_size];
                with_scratch(kk * nb, |cols| {
                    im2col(image, 1, &geom, rows.clone(), cols);
                    // SAFETY: this block writes columns rows.start*ow .. rows.end*ow of each of
                    // the c_out rows (stride n) of image `img`'s output; blocks are disjoint.
                    unsafe {
                        let at = dst.get().add(img * self.c_out * n + rows.start * ow);
                        gemm_acc(self.c_out, nb, kk, at, n, wt, cols, false);
                    }
                })
            })
        };
        if is_serial() {
            blocks.iter().for_each(job);
        } else {
            blocks.par_iter().for_each(job);
        }
        apply_act(&mut out, self.c_out, n, act);
        out
    }
}

/// `dst[m, n] += lhs[m, k] @ rhs[k, n]`, all row-major; `dst` rows are `dst_stride` apart.
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

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Act::Identity)
    }
}

thread_local! {
    /// Per-thread patch-matrix buffer, reused across calls (a fresh one per call costs a page
    /// fault per 4 KiB, which on large crops batches rivals the arithmetic).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch slice of `len` floats (contents unspecified).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (a nested pool job): use a private buffer.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// Patch-matrix size (floats) above which a single image is convolved in row blocks: 256 KiB,
/// so a block's patches stay in the core's L2 cache between im2col and gemm.
const TILE_FLOATS: usize = 64 * 1024;

/// A raw output pointer shared by parallel jobs that write disjoint parts of one buffer.
pub(crate) struct SyncPtr(pub(crate) *mut f32);
// SAFETY: every user writes a disjoint region (see the call sites).
unsafe impl Sync for SyncPtr {}
unsafe impl Send for SyncPtr {}

impl SyncPtr {
    /// The pointer.
    pub(crate) fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Shape of a convolution's patch extraction.
pub(crate) struct PatchGeometry {
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) k: usize,
    pub(crate) stride: usize,
    pub(crate) pad: usize,
    pub(crate) ow: usize,
}

/// Patch matrix `[c * k * k, b * rows.len() * ow]` of `b` images `c x h x w` for output rows
/// `rows`, zero outside the image. Row `(ci, ky, kx)` holds, image after image, the input pixel
/// under that kernel tap for every output position; with stride 1 each output row is one copy.
pub(crate) fn im2col(
    imgs: &[f32],
    b: usize,
    g: &PatchGeometry,
    rows: std::ops::Range<usize>,
    cols: &mut [f32],
) {
    let n = rows.len() * g.ow;
    let (k, pad, w, h) = (g.k, g.pad, g.w, g.h);
    for_each_chunk(cols, b * n, |r, row| {
        let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
        for (img, block) in row.chunks_mut(n).enumerate() {
            let plane = &imgs[(img * g.c + ci) * h * w..][..h * w];
            for (oy, dst) in rows.clone().zip(block.chunks_mut(g.ow)) {
                let iy = (oy * g.stride + ky) as isize - pad as isize;
                if iy < 0 || iy >= h as isize {
                    dst.fill(0.0);
                    continue;
                }
                let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                if g.stride == 1 {
                    // ix = ox + kx - pad must lie in [0, w).
                    let lo = pad.saturating_sub(kx).min(g.ow);
                    let hi = (w + pad).saturating_sub(kx).min(g.ow).max(lo);
                    dst[..lo].fill(0.0);
                    dst[lo..hi].copy_from_slice(&src[lo + kx - pad..hi + kx - pad]);
                    dst[hi..].fill(0.0);
                } else {
                    // ix = ox * stride + kx - pad must lie in [0, w): a strided gather between
                    // two zero runs.
                    let s = g.stride;
                    let lo = pad.saturating_sub(kx).div_ceil(s).min(g.ow);
                    let hi = (w + pad).saturating_sub(kx).div_ceil(s).min(g.ow).max(lo);
                    dst[..lo].fill(0.0);
                    if hi > lo {
                        let first = lo * s + kx - pad;
                        let taps = src[first..].iter().step_by(s);
                        for (d, &v) in dst[lo..hi].iter_mut().zip(taps) {
                            *d = v;
                        }
                    }
                    dst[hi..].fill(0.0);
                }
            }
        }
    });
}

/// A fully connected layer `y = x W^T + b` (`W` is `[out, in]`) followed by an activation.
pub struct Linear {
    inner: candle_nn::Linear,
    c_out: usize,
}

impl Linear {
    /// Loads `weight` (`[out, in]`) and `bias` (`[out]`).
    pub fn load(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Linear {
            inner: candle_nn::linear(c_in, c_out, vb)?,
            c_out,
        })
    }

    /// The layer followed by `act`.
    pub fn forward_act(&self, x: &Tensor, act: Act) -> Result<Tensor> {
        let y = self.inner.forward(x)?;
        match act {
            Act::Identity => Ok(y),
            Act::Relu => y.relu(),
            Act::PReluSlope(a) => y.maximum(0f32)? + (y.minimum(0f32)? * a as f64)?,
            Act::PRelu(p) => {
                let b = y.dim(0)?;
                match with_cpu_f32(&y, |src| {
                    let mut v = src.to_vec();
                    apply_act(&mut v, self.c_out, 1, act);
                    v
                }) {
                    Some(v) => Tensor::from_vec(v, (b, self.c_out), &Device::Cpu),
                    None => p.apply(&y),
                }
            }
        }
    }
}

/// Max-pool with PyTorch's `ceil_mode=True` (the last, partial window is kept) and no padding.
pub fn max_pool_ceil(x: &Tensor, k: usize, s: usize) -> Result<Tensor> {
    max_pool(x, k, s, true)
}

/// Max-pool without padding; `ceil` keeps a last, partial window (PyTorch's `ceil_mode`),
/// otherwise only full windows count (dlib's and PyTorch's default).
pub fn max_pool(x: &Tensor, k: usize, s: usize, ceil: bool) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if h < k || w < k {
        candle_core::bail!("max-pool window {k} is larger than the {h}x{w} input");
    }
    let out = |n: usize| {
        if ceil {
            (n - k).div_ceil(s) + 1
        } else {
            (n - k) / s + 1
        }
    };
    let (oh, ow) = (out(h), out(w));
    let fast = with_cpu_f32(x, |src| {
        let mut dst = vec![0f32; b * c * oh * ow];
        for_each_chunk(&mut dst, oh * ow, |i, o| {
            let plane = &src[i * h * w..(i + 1) * h * w];
            // Separable: max over each window's rows, then over its columns.
            let mut rows = vec![0f32; oh * w];
            for (oy, r) in rows.chunks_mut(w).enumerate() {
                let y0 = oy * s;
                r.copy_from_slice(&plane[y0 * w..(y0 + 1) * w]);
                for src_row in plane[(y0 + 1) * w..(y0 + k).min(h) * w].chunks(w) {
                    r.iter_mut()
                        .zip(src_row)
                        .for_each(|(m, &v)| *m = if v > *m { v } else { *m });
                }
            }
            for (r, out_row) in rows.chunks(w).zip(o.chunks_mut(ow)) {
                for (ox, m) in out_row.iter_mut().enumerate() {
                    let x0 = ox * s;
                    *m = r[x0..(x0 + k).min(w)]
                        .iter()
                        .fold(f32::NEG_INFINITY, |a, &v| if v > a { v } else { a });
                }
            }
        });
        dst
    });
    if let Some(v) = fast {
        return Tensor::from_vec(v, Shape::from((b, c, oh, ow)), &Device::Cpu);
    }
    if !ceil {
        return x.max_pool2d_with_stride(k, s);
    }
    // Replicating the last row/column is exact for a max: every partial window already holds it.
    let (pad_h, pad_w) = ((oh - 1) * s + k - h, (ow - 1) * s + k - w);
    let x = if pad_h > 0 {
        x.pad_with_same(2, 0, pad_h)?
    } else {
        x.clone()
    };
    let x = if pad_w > 0 {
        x.pad_with_same(3, 0, pad_w)?
    } else {
        x
    };
    x.max_pool2d_with_stride(k, s)
}

/// Element-wise `relu(a + b)` where the smaller input is zero-padded to the larger one's shape
/// (extra channels at the end, extra rows/columns at the bottom/right): dlib's `add_prev`.
pub fn add_padded_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (n, ca, ha, wa) = a.dims4()?;
    let (nb, cb, hb, wb) = b.dims4()?;
    if n != nb {
        candle_core::bail!("add_prev: batch sizes differ ({n} vs {nb})");
    }
    let (c, h, w) = (ca.max(cb), ha.max(hb), wa.max(wb));
    let pad = |t: &Tensor, tc: usize, th: usize, tw: usize| -> Result<Tensor> {
        let t = if tc < c {
            t.pad_with_zeros(1, 0, c - tc)?
        } else {
            t.clone()
        };
        let t = if th < h {
            t.pad_with_zeros(2, 0, h - th)?
        } else {
            t
        };
        if tw < w {
            t.pad_with_zeros(3, 0, w - tw)
        } else {
            Ok(t)
        }
    };
    let fast = with_cpu_f32(a, |va| {
        with_cpu_f32(b, |vb| {
            let mut out = vec![0f32; n * c * h * w];
            for (dims, v) in [((ca, ha, wa), va), ((cb, hb, wb), vb)] {
                let (tc, th, tw) = dims;
                for img in 0..n {
                    for ch in 0..tc {
                        for y in 0..th {
                            let src = &v[((img * tc + ch) * th + y) * tw..][..tw];
                            let dst = &mut out[((img * c + ch) * h + y) * w..][..tw];
                            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                        }
                    }
                }
            }
            out.iter_mut().for_each(|x| *x = x.max(0.0));
            out
        })
    })
    .flatten();
    match fast {
        Some(v) => Tensor::from_vec(v, (n, c, h, w), &Device::Cpu),
        None => (pad(a, ca, ha, wa)? + pad(b, cb, hb, wb)?)?.relu(),
    }
}

/// 2x2 average pool with stride 2 (full windows only).
pub fn avg_pool2(x: &Tensor) -> Result<Tensor> {
    x.avg_pool2d_with_stride(2, 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(shape: (usize, usize, usize, usize)) -> Tensor {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The fast CPU convolution equals candle's reference conv2d for every stride/padding used.
    #[test]
    fn cpu_conv_matches_candle_conv2d() {
        for &(k, stride, pad) in &[
            (3, 1, 0),
            (3, 1, 1),
            (3, 2, 0),
            (7, 2, 0),
            (7, 2, 3),
            (3, 2, 1),
            (5, 3, 2),
            (2, 1, 0),
            (1, 1, 0),
        ] {
            let x = seq((2, 3, 11, 9));
            let w = seq((4, 3, k, k));
            let bias = Tensor::new(&[0.5f32, -1.0, 0.0, 2.0], &Device::Cpu).unwrap();
            let conv = Conv2d::new(w.clone(), Some(bias.clone()), stride, pad).unwrap();
            let got = conv.forward(&x).unwrap();
            let want = x
                .conv2d(&w, pad, stride, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, 4, 1, 1)).unwrap())
                .unwrap();
            assert_eq!(got.dims(), want.dims(), "k{k} s{stride} p{pad}");
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(
                diff.to_scalar::<f32>().unwrap() < 1e-4,
                "k{k} s{stride} p{pad}"
            );
        }
    }

    #[test]
    fn add_padded_relu_zero_extends_the_smaller_input() {
        let a = Tensor::from_vec(vec![1f32, -2., 3., 4.], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(vec![10f32; 2 * 3 * 3], (1, 2, 3, 3), &Device::Cpu).unwrap();
        let y = add_padded_relu(&a, &b).unwrap();
        assert_eq!(y.dims(), [1, 2, 3, 3]);
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(&v[..9], &[11., 8., 10., 13., 14., 10., 10., 10., 10.]);
        assert!(v[9..].iter().all(|&x| x == 10.0));
    }

    #[test]
    fn max_pool_ceil_keeps_partial_windows() {
        let x = Tensor::from_vec(
            (0..25).map(|v| v as f32).collect::<Vec<_>>(),
            (1, 1, 5, 5),
            &Device::Cpu,
        )
        .unwrap();
        let y = max_pool_ceil(&x, 2, 2).unwrap();
        assert_eq!(y.dims(), [1, 1, 3, 3]);
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![6., 8., 9., 16., 18., 19., 21., 23., 24.]);
    }
}
