//! A differentiable 2-D convolution for training, fast on the CPU.
//!
//! candle 0.11's CPU convolution back-propagates with a naive transposed convolution for the
//! input gradient and a convolution over transposed tensors for the weight gradient: a few
//! GFLOP/s, most of a whole-network training step. [`conv2d`] is a candle [`CustomOp2`] of
//! (input, weight) whose forward pass and both gradients are patch matrices and `gemm`
//! products, as the inference network's kernels ([`crate::nn`]) are:
//!
//! - forward: `y = W cols(x)` ([`crate::nn::Conv2d`]'s im2col + gemm);
//! - weight gradient: `dW = dy cols(x)^T`, summed over the batch inside the product;
//! - input gradient: `dcols = W^T dy`, scattered back onto the input (col2im).
//!
//! Images go through in chunks whose patch matrix stays within a few MB; the chunks follow
//! each other and each product is split over the thread pool by its output blocks only, so the
//! same inputs give the same bits (for a given thread count), as the training's "same seed, same
//! bytes" guarantee needs. CPU f32 only: other devices (a GPU) and dtypes (the f64 gradient
//! checks) use candle's own convolution, as does [`super::with_generic_ops`].

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};

use crate::nn::{self, for_each_chunk, im2col, is_serial, with_cpu_f32, with_scratch, Act};

/// Patch-matrix size (floats) of one chunk of images in the backward pass: 4 MB.
const CHUNK_FLOATS: usize = 1 << 20;

/// `conv2d(x, w)`: `x` `[b, c_in, h, w]`, `w` `[c_out, c_in, k, k]`, square kernel, symmetric
/// zero padding `pad`, stride `stride`, no bias; differentiable in both arguments.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let fast = x.device().is_cpu()
        && w.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32;
    if fast && !candle_forced() {
        x.contiguous()?
            .apply_op2(&w.contiguous()?, Conv { stride, pad })
    } else {
        x.conv2d(w, pad, stride, 1, 1)
    }
}

#[cfg(test)]
thread_local! {
    /// Set by the timing tests to measure candle's own convolution in the same network.
    static FORCE_CANDLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether [`conv2d`] runs candle's convolution on this thread: inside
/// [`super::with_generic_ops`] (the ops of a GPU run, checked on the CPU), or in the timing tests.
fn candle_forced() -> bool {
    #[cfg(test)]
    if FORCE_CANDLE.with(|f| f.get()) {
        return true;
    }
    super::generic_ops_forced()
}

/// The op: stride and padding.
struct Conv {
    stride: usize,
    pad: usize,
}

/// Shapes of one convolution.
#[derive(Clone, Copy)]
struct Geometry {
    b: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: usize,
    oh: usize,
    ow: usize,
}

impl Conv {
    fn geometry(&self, x: &Shape, w: &Shape) -> Result<Geometry> {
        let (b, c_in, h, wd) = x.dims4()?;
        let (c_out, c_w, k, k2) = w.dims4()?;
        if c_w != c_in || k != k2 || k == 0 || self.stride == 0 {
            candle_core::bail!("conv2d: weight {w:?} does not fit input {x:?}");
        }
        if h + 2 * self.pad < k || wd + 2 * self.pad < k {
            candle_core::bail!("conv2d: input {h}x{wd} is smaller than the {k}x{k} kernel");
        }
        let o = |n: usize| (n + 2 * self.pad - k) / self.stride + 1;
        Ok(Geometry {
            b,
            c_in,
            h,
            w: wd,
            c_out,
            k,
            oh: o(h),
            ow: o(wd),
        })
    }

    fn patches(&self, g: &Geometry) -> nn::PatchGeometry {
        nn::PatchGeometry {
            c: g.c_in,
            h: g.h,
            w: g.w,
            k: g.k,
            stride: self.stride,
            pad: self.pad,
            ow: g.ow,
        }
    }

    /// `(dx, dw)` of `x`, `wt` and the output gradient `dy` (all contiguous, row-major).
    /// `dx` is skipped (empty) without `need_dx`: the network's input chips take no gradient.
    fn backward(
        &self,
        g: &Geometry,
        x: &[f32],
        wt: &[f32],
        dy: &[f32],
        need_dx: bool,
    ) -> (Vec<f32>, Vec<f32>) {
        let n = g.oh * g.ow;
        let kk = g.c_in * g.k * g.k;
        let in_size = g.c_in * g.h * g.w;
        let per = (CHUNK_FLOATS / (kk * n)).clamp(1, g.b.max(1));
        let geom = self.patches(g);
        let mut dx = vec![0f32; if need_dx { g.b * in_size } else { 0 }];
        let mut dw = vec![0f32; g.c_out * kk];
        let mut dyc = Vec::new();
        for start in (0..g.b).step_by(per) {
            let imgs = per.min(g.b - start);
            let gn = imgs * n;
            // The chunk's output gradient as [c_out, imgs * n] (images side by side, as the
            // patch matrix lays them out).
            dyc.resize(g.c_out * gn, 0.0);
            for_each_chunk(&mut dyc, gn, |co, row| {
                for (img, dst) in row.chunks_mut(n).enumerate() {
                    dst.copy_from_slice(&dy[((start + img) * g.c_out + co) * n..][..n]);
                }
            });
            with_scratch(kk * gn, |cols| {
                im2col(&x[start * in_size..], imgs, &geom, 0..g.oh, cols);
                // dw[c_out, kk] += dyc[c_out, gn] @ cols^T[gn, kk].
                // SAFETY: the slices hold the stated matrices; dw is only written here.
                unsafe {
                    gemm(
                        (g.c_out, kk, gn),
                        (dw.as_mut_ptr(), kk, 1),
                        true,
                        (dyc.as_ptr(), gn, 1),
                        (cols.as_ptr(), 1, gn),
                    )
                };
                if !need_dx {
                    return;
                }
                // dcols[kk, gn] = wt^T[kk, c_out] @ dyc[c_out, gn], in the patch buffer.
                // SAFETY: as above; cols holds kk * gn values and is no longer read.
                unsafe {
                    gemm(
                        (kk, gn, g.c_out),
                        (cols.as_mut_ptr(), gn, 1),
                        false,
                        (wt.as_ptr(), 1, kk),
                        (dyc.as_ptr(), gn, 1),
                    )
                };
                col2im(
                    cols,
                    imgs,
                    g,
                    self,
                    &mut dx[start * in_size..][..imgs * in_size],
                );
            });
        }
        (dx, dw)
    }
}

/// `dst[m, n] (+)= lhs[m, k] @ rhs[k, n]`; each matrix is `(pointer, row stride, column
/// stride)`. With `accumulate` the product is added to `dst`, else it replaces it.
///
/// # Safety
/// Every matrix must be valid for its shape and strides, and nothing else may touch `dst`.
unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    accumulate: bool,
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
) {
    let parallelism = if is_serial() {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    };
    gemm::gemm(
        m,
        n,
        k,
        dst.0,
        dst.2 as isize,
        dst.1 as isize,
        accumulate,
        lhs.0,
        lhs.2 as isize,
        lhs.1 as isize,
        rhs.0,
        rhs.2 as isize,
        rhs.1 as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}

/// Adds the patch-matrix gradient `dcols` (`[c_in*k*k, imgs*n]`, laid out as
/// [`crate::nn::im2col`] builds it) onto the input gradient `dx` (`[imgs, c_in, h, w]`): each
/// input plane sums its taps in a fixed order, in parallel over planes.
fn col2im(dcols: &[f32], imgs: usize, g: &Geometry, op: &Conv, dx: &mut [f32]) {
    let (k, s, pad) = (g.k, op.stride, op.pad);
    let n = g.oh * g.ow;
    let h = g.h as isize;
    for_each_chunk(dx, g.h * g.w, |p, plane| {
        let (img, ci) = (p / g.c_in, p % g.c_in);
        for ky in 0..k {
            for kx in 0..k {
                let r = (ci * k + ky) * k + kx;
                let src = &dcols[r * imgs * n + img * n..][..n];
                // ox range with ix = ox * s + kx - pad inside [0, w).
                let Some(hi) = (g.w + pad).checked_sub(kx + 1) else {
                    continue;
                };
                let first = pad.saturating_sub(kx).div_ceil(s).min(g.ow);
                let last = (hi / s + 1).min(g.ow).max(first);
                for oy in 0..g.oh {
                    let iy = (oy * s + ky) as isize - pad as isize;
                    if iy < 0 || iy >= h {
                        continue;
                    }
                    let row = &mut plane[iy as usize * g.w..][..g.w];
                    let src = &src[oy * g.ow..][..g.ow];
                    if s == 1 {
                        let at = first + kx - pad;
                        for (d, v) in row[at..at + last - first].iter_mut().zip(&src[first..last]) {
                            *d += v;
                        }
                    } else {
                        for (ox, v) in src.iter().enumerate().take(last).skip(first) {
                            row[ox * s + kx - pad] += v;
                        }
                    }
                }
            }
        }
    });
}

/// The data of a CPU f32 storage in `layout`, which must be contiguous.
fn f32_data<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        (CpuStorage::F32(_), None) => candle_core::bail!("conv2d: the input must be contiguous"),
        _ => candle_core::bail!("conv2d: only f32 tensors take the fast path"),
    }
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "facekit-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(l1.shape(), l2.shape())?;
        let (x, wt) = (f32_data(s1, l1)?, f32_data(s2, l2)?);
        let weight = Tensor::from_slice(wt, l2.shape(), &Device::Cpu)?;
        let conv = nn::Conv2d::new(weight, None, self.stride, self.pad)?;
        let y = conv.cpu_forward(x, wt, g.b, g.h, g.w, Act::Identity);
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.c_out, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = self.geometry(x.shape(), w.shape())?;
        let need_dx = x.track_op();
        let (xd, wd, dy) = (
            x.detach().contiguous()?,
            w.detach().contiguous()?,
            grad.detach().to_dtype(DType::F32)?.contiguous()?,
        );
        let out = with_cpu_f32(&xd, |xs| {
            with_cpu_f32(&wd, |ws| {
                with_cpu_f32(&dy, |dys| self.backward(&g, xs, ws, dys, need_dx))
            })
        })
        .flatten()
        .flatten();
        let Some((dx, dw)) = out else {
            candle_core::bail!("conv2d: the backward pass needs CPU f32 tensors");
        };
        let dx = if need_dx {
            Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?)
        } else {
            None
        };
        Ok((dx, Some(Tensor::from_vec(dw, w.shape(), &Device::Cpu)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::Var;

    fn random(r: &mut Rng, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| r.normal() as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Relative error |got - want| / |want| (f64 sums).
    fn rel(got: &[f32], want: &[f32]) -> f64 {
        assert_eq!(got.len(), want.len());
        let num: f64 = got
            .iter()
            .zip(want)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum();
        let den: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
        (num / den).sqrt()
    }

    /// `(y, dx, dw)` of `loss = sum(conv(x, w) * r)` with `f` as the convolution.
    fn run(
        f: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
        x: &Tensor,
        w: &Tensor,
        r: &Tensor,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
        let y = f(xv.as_tensor(), wv.as_tensor()).unwrap();
        let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
        (
            values(&y),
            values(grads.get(xv.as_tensor()).unwrap()),
            values(grads.get(wv.as_tensor()).unwrap()),
        )
    }

    /// Forward pass, input gradient and weight gradient equal candle's convolution and its
    /// autograd at the ResNet's shapes (and odd ones), to 1e-5 relative; two runs give the same
    /// bits.
    #[test]
    fn conv2d_matches_candle_forward_and_backward() {
        let mut r = Rng::new(11);
        // (b, c_in, side, c_out, k, stride, pad)
        let cases = [
            (2, 3, 150, 32, 7, 2, 0),
            (3, 32, 35, 32, 3, 1, 1),
            (2, 32, 35, 64, 3, 2, 0),
            (4, 64, 17, 64, 3, 1, 1),
            (5, 64, 17, 128, 3, 2, 0),
            (6, 128, 8, 256, 3, 2, 0),
            (40, 256, 3, 256, 3, 1, 1),
            (2, 16, 9, 8, 1, 1, 0),
            (2, 5, 11, 6, 7, 1, 3),
            (2, 4, 10, 6, 3, 2, 1),
            (1, 3, 12, 4, 7, 2, 3),
            (3, 2, 4, 3, 5, 3, 2),
        ];
        for (b, c_in, side, c_out, k, stride, pad) in cases {
            let x = random(&mut r, &[b, c_in, side, side]);
            let w = random(&mut r, &[c_out, c_in, k, k]);
            let o = |n: usize| (n + 2 * pad - k) / stride + 1;
            let g = random(&mut r, &[b, c_out, o(side), o(side)]);
            let want = run(|x, w| x.conv2d(w, pad, stride, 1, 1), &x, &w, &g);
            let got = run(|x, w| conv2d(x, w, stride, pad), &x, &w, &g);
            let errs = [
                rel(&got.0, &want.0),
                rel(&got.1, &want.1),
                rel(&got.2, &want.2),
            ];
            eprintln!(
                "b {b} {c_in}->{c_out} {side}px k {k} s {stride} p {pad}: \
                 y {:.1e} dx {:.1e} dw {:.1e}",
                errs[0], errs[1], errs[2]
            );
            for e in errs {
                assert!(e < 1e-5, "relative error {e}");
            }
            let again = run(|x, w| conv2d(x, w, stride, pad), &x, &w, &g);
            assert!(got == again, "two runs differ");
        }
    }

    /// f64 tensors go through candle's convolution (the gradient checks' path).
    #[test]
    fn f64_falls_back_to_candle() {
        let mut r = Rng::new(5);
        let x = random(&mut r, &[1, 2, 6, 6]).to_dtype(DType::F64).unwrap();
        let w = random(&mut r, &[3, 2, 3, 3]).to_dtype(DType::F64).unwrap();
        let got = conv2d(&x, &w, 1, 1).unwrap();
        let want = x.conv2d(&w, 1, 1, 1, 1).unwrap();
        assert_eq!(got.dtype(), DType::F64);
        let d = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert_eq!(d, 0.0);
    }

    /// Seconds per call of `f` (median of `reps`).
    fn time(reps: usize, mut f: impl FnMut()) -> f64 {
        let mut t: Vec<f64> = (0..reps)
            .map(|_| {
                let c = std::time::Instant::now();
                f();
                c.elapsed().as_secs_f64()
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[reps / 2]
    }

    /// One training step of the whole ResNet on 64 chips (forward, backward, and the AdamW
    /// update `facekit train` runs), timed part by part (`--ignored --nocapture`).
    #[test]
    #[ignore]
    fn timings_of_a_whole_network_step() {
        use crate::train::resnet::ResNet;
        use crate::train::Trainable;
        let net = ResNet::pretrained(&crate::models::ModelSource::Embedded).unwrap();
        let mut r = Rng::new(2);
        let x = random(&mut r, &[64, 1, 3, 150, 150]);
        let weights = random(&mut r, &[64, 128]);
        let vars = net.vars();
        let mut m: Vec<Tensor> = vars.iter().map(|v| v.zeros_like().unwrap()).collect();
        let mut v = m.clone();
        for rep in 0..4 {
            // Steps 0 and 2 with candle's convolution, 1 and 3 with this one.
            let candle = rep % 2 == 0;
            FORCE_CANDLE.with(|f| f.set(candle));
            let c = std::time::Instant::now();
            let emb = net.forward(&x).unwrap();
            let loss = (&emb * &weights).unwrap().sum_all().unwrap();
            let fwd = c.elapsed().as_secs_f64();
            let c = std::time::Instant::now();
            let grads = loss.backward().unwrap();
            let bwd = c.elapsed().as_secs_f64();
            let c = std::time::Instant::now();
            let (b1, b2, eps, lr, t) = (0.9f64, 0.999f64, 1e-8f64, 1e-5f64, rep + 1);
            for (i, var) in vars.iter().enumerate() {
                let g = grads.get(var.as_tensor()).unwrap().detach();
                m[i] = ((&m[i] * b1).unwrap() + (&g * (1.0 - b1)).unwrap())
                    .unwrap()
                    .detach();
                v[i] = ((&v[i] * b2).unwrap() + (g.sqr().unwrap() * (1.0 - b2)).unwrap())
                    .unwrap()
                    .detach();
                let m_hat = (&m[i] / (1.0 - b1.powi(t))).unwrap();
                let v_hat = (&v[i] / (1.0 - b2.powi(t))).unwrap();
                let update = (m_hat / (v_hat.sqrt().unwrap() + eps).unwrap()).unwrap();
                let decayed = (var.as_tensor() * (1.0 - lr * 1e-4)).unwrap();
                var.set(&(decayed - (update * lr).unwrap()).unwrap().detach())
                    .unwrap();
            }
            let opt = c.elapsed().as_secs_f64();
            eprintln!(
                "step {rep} ({}): forward {fwd:.2} s, backward {bwd:.2} s, AdamW {opt:.2} s: \
                 {:.3} s per chip",
                if candle {
                    "candle conv2d"
                } else {
                    "train::conv"
                },
                (fwd + bwd + opt) / 64.0
            );
        }
        FORCE_CANDLE.with(|f| f.set(false));
        // The non-convolution ops' backward at the stem's shapes.
        let y = Var::from_tensor(&random(&mut r, &[64, 32, 72, 72])).unwrap();
        let pooled_grad = random(&mut r, &[64, 32, 35, 35]);
        let t = time(3, || {
            let p = crate::train::maxpool::max_pool(y.as_tensor(), 3, 2).unwrap();
            (&p * &pooled_grad)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
        });
        eprintln!("max-pool 3x3/2 on 64 x 32 x 72 x 72, forward + backward: {t:.3} s");
        let t = time(3, || {
            let a = y.as_tensor().relu().unwrap();
            a.sum_all().unwrap().backward().unwrap();
        });
        eprintln!("relu on 64 x 32 x 72 x 72, forward + backward: {t:.3} s");
        let bias = Var::from_tensor(&random(&mut r, &[1, 32, 1, 1])).unwrap();
        let t = time(3, || {
            let a = y.as_tensor().broadcast_add(bias.as_tensor()).unwrap();
            a.sum_all().unwrap().backward().unwrap();
        });
        eprintln!("bias add on 64 x 32 x 72 x 72, forward + backward: {t:.3} s");
    }

    /// Timings at the ResNet's shapes for a batch of 64 chips: candle's convolution against
    /// this one, forward and backward (`cargo test --release --lib train::conv -- --ignored
    /// --nocapture`).
    #[test]
    #[ignore]
    fn timings_at_resnet_shapes() {
        let mut r = Rng::new(1);
        let b = 64;
        // (c_in, side, c_out, k, stride, pad, convolutions of this shape in the network)
        let shapes = [
            (3, 150, 32, 7, 2, 0, 1),
            (32, 35, 32, 3, 1, 1, 6),
            (32, 35, 64, 3, 2, 0, 1),
            (64, 17, 64, 3, 1, 1, 7),
            (64, 17, 128, 3, 2, 0, 1),
            (128, 8, 128, 3, 1, 1, 5),
            (128, 8, 256, 3, 2, 0, 1),
            (256, 3, 256, 3, 1, 1, 5),
            (256, 3, 256, 3, 2, 0, 1),
        ];
        let (mut total_candle, mut total_ours) = ([0f64; 2], [0f64; 2]);
        for (c_in, side, c_out, k, stride, pad, count) in shapes {
            let x = Var::from_tensor(&random(&mut r, &[b, c_in, side, side])).unwrap();
            let w = Var::from_tensor(&random(&mut r, &[c_out, c_in, k, k])).unwrap();
            let o = (side + 2 * pad - k) / stride + 1;
            let g = random(&mut r, &[b, c_out, o, o]);
            let measure = |f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>| -> [f64; 2] {
                let fwd = time(3, || {
                    f(x.as_tensor(), w.as_tensor()).unwrap();
                });
                let both = time(3, || {
                    let y = f(x.as_tensor(), w.as_tensor()).unwrap();
                    (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                });
                [fwd, both - fwd]
            };
            let candle = measure(&|x, w| x.conv2d(w, pad, stride, 1, 1));
            let ours = measure(&|x, w| conv2d(x, w, stride, pad));
            let gflop = 2.0 * (b * o * o * c_out * c_in * k * k) as f64 / 1e9;
            eprintln!(
                "{c_in:>3}->{c_out:<3} {side:>3}px k{k} s{stride} p{pad} x{count}: candle fwd \
                 {:>7.1} ms bwd {:>7.1} ms | ours fwd {:>6.1} ms bwd {:>6.1} ms \
                 ({:.0} / {:.0} GFLOP/s)",
                candle[0] * 1e3,
                candle[1] * 1e3,
                ours[0] * 1e3,
                ours[1] * 1e3,
                gflop / ours[0],
                2.0 * gflop / ours[1],
            );
            for i in 0..2 {
                total_candle[i] += candle[i] * count as f64;
                total_ours[i] += ours[i] * count as f64;
            }
        }
        eprintln!(
            "all 29 convolutions, batch {b}: candle fwd {:.2} s bwd {:.2} s | ours fwd {:.2} s \
             bwd {:.2} s",
            total_candle[0], total_candle[1], total_ours[0], total_ours[1]
        );
    }
}
