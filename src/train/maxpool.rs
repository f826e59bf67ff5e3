//! A differentiable max-pool for any kernel and stride (candle 0.11 only back-propagates
//! max-pools whose kernel equals their stride; dlib's ResNet opens with a 3x3 / 2 one).
//!
//! [`max_pool`] is a candle [`CustomOp1`]: the forward pass takes the maximum of each full
//! `k x k` window (stride `s`, no padding, as [`crate::nn::max_pool`] without `ceil`), and the
//! backward pass routes each output's gradient to the arg-max of its window, the first maximum
//! in row-major order on ties (the cell the forward pass keeps). Overlapping windows add up.

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
/// differentiable (see the module docs). CPU f32 or f64 tensors.
pub fn max_pool(x: &Tensor, k: usize, s: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op1(MaxPool { k, s })
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
}
