//! A differentiable max-pool for any kernel and stride (candle 0.11 only back-propagates
//! max-pools whose kernel equals their stride; dlib's ResNet opens with a 3x3 / 2 one).
//!
//! [`max_pool`] is a candle [`CustomOp1`]: the forward pass takes the maximum of each full
//! `k x k` window (stride `s`, no padding, as [`crate::nn::max_pool`] without `ceil`), and the
//! backward pass routes each output's gradient to the arg-max of its window, the first maximum
//! in row-major order on ties (the cell the forward pass keeps). Overlapping windows add up.
//!
//! The op runs on the CPU only. For tensors on any other device (a GPU), [`max_pool`] computes
//! the same thing with [`max_pool_generic`]: plain candle ops (narrow, reshape, comparisons,
//! `where_cond`) that candle's autograd differentiates on every device, with the same routing
//! of each window's gradient to its first maximum. The CPU keeps the op (it is faster, and its
//! bits are what "same seed, same bytes" was measured on).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use crate::nn::for_each_chunk;

/// The op: window side `k`, stride `s`.
struct MaxPool {
    k: usize,
    s: usize,
}

/// Geometry of one pooling: input `[b, c, h, w]`, output `oh x ow`.
struct Geometry {
    planes: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
}

impl MaxPool {
    fn geometry(&self, shape: &Shape) -> Result<Geometry> {
        let (b, c, h, w) = shape.dims4()?;
        if h < self.k || w < self.k || self.k == 0 || self.s == 0 {
            candle_core::bail!(
                "max-pool {}x{} / {} does not fit a {h}x{w} input",
                self.k,
                self.k,
                self.s
            );
        }
        Ok(Geometry {
            planes: b * c,
            h,
            w,
            oh: (h - self.k) / self.s + 1,
            ow: (w - self.k) / self.s + 1,
        })
    }

    /// Calls `f(output index, input index of the window's first maximum, maximum)` for every
    /// output of one plane `src` (contiguous `h x w`; indices within the plane).
    fn for_each_argmax<T: Copy + PartialOrd>(
        &self,
        src: &[T],
        g: &Geometry,
        mut f: impl FnMut(usize, usize, T),
    ) {
        let (k, s) = (self.k, self.s);
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let mut best = oy * s * g.w + ox * s;
                let mut max = src[best];
                for dy in 0..k {
                    let row = (oy * s + dy) * g.w + ox * s;
                    for (dx, &v) in src[row..row + k].iter().enumerate() {
                        // Strictly greater: the first maximum wins (NaN never does).
                        if v > max {
                            max = v;
                            best = row + dx;
                        }
                    }
                }
                f(oy * g.ow + ox, best, max);
            }
        }
    }

    /// The pooled planes of `src` (contiguous `[planes, h, w]`), in parallel over planes.
    fn forward<T: Copy + PartialOrd + Default + Send + Sync>(
        &self,
        src: &[T],
        g: &Geometry,
    ) -> Vec<T> {
        let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
        let mut dst = vec![T::default(); g.planes * ohw];
        for_each_chunk(&mut dst, ohw, |p, out| {
            self.for_each_argmax(&src[p * hw..][..hw], g, |o, _, max| out[o] = max)
        });
        dst
    }

    /// The input gradient: each output's gradient `grad` added to its window's first maximum
    /// in `src`, in output order, in parallel over planes (the same bits for any thread count).
    fn backward<T>(&self, src: &[T], grad: &[T], g: &Geometry) -> Vec<T>
    where
        T: Copy + PartialOrd + Default + Send + Sync + std::ops::AddAssign,
    {
        let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
        let mut dst = vec![T::default(); g.planes * hw];
        for_each_chunk(&mut dst, hw, |p, plane| {
            let grad = &grad[p * ohw..][..ohw];
            self.for_each_argmax(&src[p * hw..][..hw], g, |o, i, _| plane[i] += grad[o])
        });
        dst
    }
}

/// The values of a contiguous layout.
fn contiguous<'a, T>(v: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => candle_core::bail!("max-pool: the input must be contiguous"),
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "facekit-max-pool"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(layout.shape())?;
        let dst = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(self.forward(contiguous(v, layout)?, &g)),
            CpuStorage::F64(v) => CpuStorage::F64(self.forward(contiguous(v, layout)?, &g)),
            _ => candle_core::bail!("max-pool: only f32 and f64 tensors are supported"),
        };
        let (b, c, _, _) = layout.shape().dims4()?;
        Ok((dst, Shape::from((b, c, g.oh, g.ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = self.geometry(arg.shape())?;
        let (shape, device) = (arg.shape().clone(), arg.device().clone());
        let arg = arg.detach().flatten_all()?;
        let grad = grad_res.detach().flatten_all()?.to_dtype(arg.dtype())?;
        // The arg-max on the forward pass's own values and type.
        let out = match arg.dtype() {
            DType::F64 => Tensor::from_vec(
                self.backward(&arg.to_vec1::<f64>()?, &grad.to_vec1::<f64>()?, &g),
                shape,
                &device,
            )?,
            DType::F32 => Tensor::from_vec(
                self.backward(&arg.to_vec1::<f32>()?, &grad.to_vec1::<f32>()?, &g),
                shape,
                &device,
            )?,
            other => candle_core::bail!("max-pool: no backward pass for {other:?}"),
        };
        Ok(Some(out))
    }
}

/// Max-pool `[b, c, h, w]` with `k x k` windows and stride `s` (full windows only, no padding),
/// differentiable (see the module docs): the CPU op for CPU f32 and f64 tensors, else (other
/// devices or types, or inside [`super::with_generic_ops`]) [`max_pool_generic`].
pub fn max_pool(x: &Tensor, k: usize, s: usize) -> Result<Tensor> {
    let cpu_op = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && !super::generic_ops_forced();
    if cpu_op {
        x.contiguous()?.apply_op1(MaxPool { k, s })
    } else {
        max_pool_generic(x, k, s)
    }
}

/// `x` with `n` zeros appended along `dim`.
fn pad_end(x: &Tensor, dim: usize, n: usize) -> Result<Tensor> {
    if n == 0 {
        Ok(x.clone())
    } else {
        x.pad_with_zeros(dim, 0, n)
    }
}

/// [`max_pool`] from candle ops that candle's autograd differentiates on every device: the same
/// values, and each output's gradient goes to its window's first maximum in row-major order, as
/// the CPU op sends it (so ties, such as a window of ReLU zeros, route alike too). Inputs must be
/// finite (a NaN in a window gives that output 0 here; the CPU op skips it).
///
/// Each of the `k * k` window offsets `(dy, dx)` is a strided view of the input (rows `dy`,
/// `dy + s`, ..., taken as a narrow of `oh * s` rows reshaped to `[oh, s]`, first column; the
/// input is zero-padded at the end so that every narrow fits, and padded cells are never
/// taken). The maximum of the views is found on detached values; a mask then keeps, for each
/// output, only the first view that reaches it, and the output is the sum of the views under
/// their masks (`where_cond`: one term per output, the others exact zeros), so autograd
/// routes the gradient through that view alone.
pub fn max_pool_generic(x: &Tensor, k: usize, s: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if h < k || w < k || k == 0 || s == 0 {
        candle_core::bail!("max-pool {k}x{k} / {s} does not fit a {h}x{w} input");
    }
    let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
    let x = pad_end(x, 2, (k - 1 + oh * s).saturating_sub(h))?;
    let x = pad_end(&x, 3, (k - 1 + ow * s).saturating_sub(w))?;
    let view = |dy: usize, dx: usize| -> Result<Tensor> {
        x.narrow(2, dy, oh * s)?
            .narrow(3, dx, ow * s)?
            .reshape((b, c, oh, s, ow, s))?
            .narrow(5, 0, 1)?
            .narrow(3, 0, 1)?
            .reshape((b, c, oh, ow))
    };
    let views = (0..k * k)
        .map(|j| view(j / k, j % k))
        .collect::<Result<Vec<_>>>()?;
    let mut max = views[0].detach();
    for v in &views[1..] {
        max = max.maximum(&v.detach())?;
    }
    let zeros = max.zeros_like()?;
    // 1 where no earlier view reached the maximum yet.
    let mut open = Tensor::ones(max.shape(), DType::U8, max.device())?;
    let mut out: Option<Tensor> = None;
    for v in &views {
        let first = v.detach().eq(&max)?.mul(&open)?;
        open = (&open - &first)?;
        let term = first.where_cond(v, &zeros)?;
        out = Some(match out {
            None => term,
            Some(o) => (o + term)?,
        });
    }
    out.ok_or_else(|| candle_core::Error::Msg("max-pool: empty window".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    /// The forward pass equals the inference network's max-pool, and the backward pass equals
    /// central finite differences of a weighted sum of the outputs (f64 accumulation).
    #[test]
    fn max_pool_matches_inference_and_finite_differences() {
        let mut r = Rng::new(3);
        let (b, c, h, w) = (2, 3, 9, 8);
        let values: Vec<f32> = (0..b * c * h * w).map(|_| r.normal() as f32).collect();
        let x = Var::from_vec(values.clone(), (b, c, h, w), &Device::Cpu).unwrap();
        let y = max_pool(x.as_tensor(), 3, 2).unwrap();
        let want = crate::nn::max_pool(x.as_tensor(), 3, 2, false).unwrap();
        assert_eq!(y.dims(), want.dims());
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        // loss = sum(weights * y): the gradient of each input is the sum of the weights of the
        // windows whose maximum it is.
        let n_out = y.elem_count();
        let weights: Vec<f32> = (0..n_out).map(|_| r.normal() as f32).collect();
        let wt = Tensor::from_vec(weights.clone(), y.shape(), &Device::Cpu).unwrap();
        let loss = (y * &wt).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let got = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let f = |v: &[f32]| -> f64 {
            let t = Tensor::from_slice(v, (b, c, h, w), &Device::Cpu).unwrap();
            let y = max_pool(&t, 3, 2).unwrap();
            y.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .zip(&weights)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum()
        };
        let eps = 1e-3f32;
        let (mut num, mut den) = (0f64, 0f64);
        for i in 0..values.len() {
            let mut plus = values.clone();
            plus[i] += eps;
            let mut minus = values.clone();
            minus[i] -= eps;
            let fd = (f(&plus) - f(&minus)) / (2.0 * eps as f64);
            num += (fd - got[i] as f64).powi(2);
            den += fd.powi(2);
        }
        let rel = (num / den).sqrt();
        eprintln!("max-pool 3x3/2 backward vs finite differences: relative error {rel:.3e}");
        assert!(rel < 1e-3, "relative error {rel}");
        // Ties: a constant plane sends each window's gradient to its first cell.
        let x = Var::from_vec(vec![1f32; 25], (1, 1, 5, 5), &Device::Cpu).unwrap();
        let g = max_pool(x.as_tensor(), 3, 2)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut want = vec![0f32; 25];
        for i in [0, 2, 10, 12] {
            want[i] = 1.0;
        }
        assert_eq!(g, want);
    }

    /// `(forward, gradient of sum(weights * forward))` of `pool` on `values` shaped `dims`.
    fn pool_and_grad(
        pool: impl Fn(&Tensor) -> Result<Tensor>,
        values: &[f32],
        dims: (usize, usize, usize, usize),
        weights: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let x = Var::from_vec(values.to_vec(), dims, &Device::Cpu).unwrap();
        let y = pool(x.as_tensor()).unwrap();
        let wt = Tensor::from_slice(&weights[..y.elem_count()], y.shape(), &Device::Cpu).unwrap();
        let grads = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (flat(&y), flat(grads.get(x.as_tensor()).unwrap()))
    }

    /// The device-generic max-pool equals the CPU op, forward bit for bit and backward to
    /// rounding (overlapping windows add in another order), on the networks' shapes (dlib's
    /// 32 x 72 x 72 and the `--arch` stems' 16 / 32 x 64 x 64 before their 3x3 / 2 pools), odd
    /// sizes and other kernels and strides; on untied values, and on ReLU outputs full of tied
    /// zeros, where both send each window's gradient to its first maximum.
    #[test]
    fn generic_max_pool_matches_the_cpu_op() {
        let mut r = Rng::new(11);
        let cases = [
            ((2, 32, 72, 72), 3, 2),
            ((2, 16, 64, 64), 3, 2),
            ((1, 32, 64, 64), 3, 2),
            ((2, 3, 9, 8), 3, 2),
            ((1, 2, 7, 11), 3, 2),
            ((1, 2, 3, 3), 3, 2),
            ((2, 3, 10, 9), 2, 2),
            ((1, 2, 9, 7), 3, 1),
            ((1, 2, 11, 13), 3, 3),
            ((1, 1, 12, 12), 4, 3),
        ];
        for relu in [false, true] {
            for (dims, k, s) in cases {
                let n = dims.0 * dims.1 * dims.2 * dims.3;
                let values: Vec<f32> = (0..n)
                    .map(|_| {
                        let v = r.normal() as f32;
                        if relu {
                            v.max(0.0)
                        } else {
                            v
                        }
                    })
                    .collect();
                let weights: Vec<f32> = (0..n).map(|_| r.normal() as f32).collect();
                let (y0, g0) = pool_and_grad(|x| max_pool(x, k, s), &values, dims, &weights);
                let (y1, g1) =
                    pool_and_grad(|x| max_pool_generic(x, k, s), &values, dims, &weights);
                let (y2, g2) = super::super::with_generic_ops(|| {
                    pool_and_grad(|x| max_pool(x, k, s), &values, dims, &weights)
                });
                let case = format!("{dims:?} {k}x{k}/{s} relu {relu}");
                assert_eq!(y0, y1, "{case}: forward");
                assert_eq!((&y1, &g1), (&y2, &g2), "{case}: with_generic_ops");
                let worst = g0
                    .iter()
                    .zip(&g1)
                    .map(|(a, b)| (a - b).abs() / a.abs().max(1.0))
                    .fold(0f32, f32::max);
                assert!(worst <= 1e-6, "{case}: backward differs by {worst}");
                // Each window's gradient went to one cell: the totals agree.
                let sum = |g: &[f32]| g.iter().map(|&v| v as f64).sum::<f64>();
                assert!((sum(&g0) - sum(&g1)).abs() < 1e-3, "{case}");
            }
        }
        // f64: the same values.
        let values: Vec<f64> = (0..2 * 3 * 9 * 9).map(|_| r.normal()).collect();
        let x = Tensor::from_vec(values, (2, 3, 9, 9), &Device::Cpu).unwrap();
        let a = max_pool(&x, 3, 2).unwrap().flatten_all().unwrap();
        let b = max_pool_generic(&x, 3, 2).unwrap().flatten_all().unwrap();
        assert_eq!(a.to_vec1::<f64>().unwrap(), b.to_vec1::<f64>().unwrap());
        // A window larger than the input is refused by both.
        let small = Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(max_pool(&small, 3, 2).is_err());
        assert!(max_pool_generic(&small, 3, 2).is_err());
    }
}
