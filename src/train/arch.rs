//! FaceNet-style embedding networks trainable from scratch (`facekit train --arch NAME`): a
//! small ResNet-18-style backbone (BasicBlocks in four stages, global average pooling, a linear
//! layer to a 128-d embedding that is L2-normalised by the caller), seeded He initialisation,
//! the saved model file (`facekit-net-v1`), and the same forward pass for training and for
//! inference ([`crate::embed::arch::NetEmbedder`] runs [`Net::evaluate`]).
//!
//! Normalisation: none in the residual branches; each BasicBlock's branch is scaled by a
//! learnable scalar gain (as in SkipInit, De & Smith 2020) that starts at [`GAIN0`] = 0.5, so
//! the activations' variance grows by about `1 + 0.5^2` per block (x6 over eight blocks, and
//! the embedding is L2-normalised) instead of doubling. Not at zero, as SkipInit starts: then
//! every block is the identity or its 1x1 projection, the untrained network sees a few pixels
//! around each point before global pooling, and on LFW five short epochs did not move its
//! validation accuracy off the random network's 55.6 %. BatchNorm would need batch statistics in training and running statistics
//! at inference (two numerical paths, and state that is not a trained variable to checkpoint for
//! exact resume); with the gains the network computes the same function in training and
//! inference, whatever the batch, with one bias per convolution in place of BatchNorm's shift.
//!
//! Every convolution goes through [`conv`] (one place to swap in a faster kernel).

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor, Var};

use super::Trainable;
use crate::rng::Rng;
use crate::{Error, Result};

/// The starting value of every residual branch's gain.
pub const GAIN0: f64 = 0.5;

/// The model file format tag in the metadata.
pub const FORMAT: &str = "facekit-net-v1";

/// A network shape: four stages of BasicBlocks on a centre crop of the aligned chip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    /// The name `--arch` takes and the model file records.
    pub name: &'static str,
    /// Channels of the stem and the four stages.
    pub widths: [usize; 4],
    /// BasicBlocks per stage.
    pub blocks: [usize; 4],
    /// Side of the centre crop of the input chip the network sees.
    pub crop: usize,
    /// Embedding size.
    pub dim: usize,
}

/// The architectures `--arch` knows.
pub const ARCHS: [Arch; 2] = [
    // ResNet-18's layout ([2, 2, 2, 2] BasicBlocks) at a quarter of its widths, on the centre
    // 128 x 128 of the 150 x 150 chip: ~150 M multiply-adds per chip, 2.8 M weights.
    Arch {
        name: "resnet18-small",
        widths: [32, 64, 128, 256],
        blocks: [2, 2, 2, 2],
        crop: 128,
        dim: 128,
    },
    // The same at half those widths: ~40 M multiply-adds per chip, 0.7 M weights.
    Arch {
        name: "resnet18-tiny",
        widths: [16, 32, 64, 128],
        blocks: [2, 2, 2, 2],
        crop: 128,
        dim: 128,
    },
];

impl Arch {
    /// The architecture called `name` (one of [`ARCHS`]).
    pub fn by_name(name: &str) -> Option<Arch> {
        ARCHS.iter().copied().find(|a| a.name == name)
    }

    /// Every tensor of the network with its shape, in a fixed order (the variables' order in
    /// checkpoints).
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let w = self.widths;
        let mut out = vec![
            ("stem.conv.weight".to_string(), vec![w[0], 3, 3, 3]),
            ("stem.conv.bias".to_string(), vec![w[0]]),
        ];
        let mut c_in = w[0];
        for (s, (&c, &n)) in w.iter().zip(&self.blocks).enumerate() {
            for b in 0..n {
                let pre = format!("layer{}.{b}", s + 1);
                let cin = if b == 0 { c_in } else { c };
                out.push((format!("{pre}.conv1.weight"), vec![c, cin, 3, 3]));
                out.push((format!("{pre}.conv1.bias"), vec![c]));
                out.push((format!("{pre}.conv2.weight"), vec![c, c, 3, 3]));
                out.push((format!("{pre}.conv2.bias"), vec![c]));
                out.push((format!("{pre}.gain"), vec![1]));
                if b == 0 && s > 0 {
                    out.push((format!("{pre}.downsample.weight"), vec![c, cin, 1, 1]));
                    out.push((format!("{pre}.downsample.bias"), vec![c]));
                }
            }
            c_in = c;
        }
        out.push(("fc.weight".into(), vec![self.dim, w[3]]));
        out.push(("fc.bias".into(), vec![self.dim]));
        out
    }
}

/// The one convolution of every layer (no dilation, no groups): `x [B, Cin, H, W]` with
/// `w [Cout, Cin, k, k]`, stride and zero padding on every side; [`super::conv::conv2d`]
/// (im2col + gemm on the CPU in both directions, candle's own elsewhere).
pub fn conv(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> candle_core::Result<Tensor> {
    super::conv::conv2d(x, w, stride, pad)
}

/// The network, every tensor a variable.
pub struct Net {
    arch: Arch,
    names: Vec<String>,
    vars: Vec<Var>,
    index: HashMap<String, usize>,
}

impl Net {
    /// A network of shape `arch` with seeded random weights of type `dtype`: He (Kaiming)
    /// normal convolutions (`std = sqrt(2 / fan_in)`), a LeCun normal fc layer
    /// (`std = sqrt(1 / fan_in)`), zero biases and branch gains of [`GAIN0`].
    pub fn init(arch: Arch, seed: u64, dtype: DType) -> Result<Self> {
        let mut rng = Rng::new(seed ^ 0xA7C4_0000_0000_0001);
        let mut tensors = HashMap::new();
        for (name, shape) in arch.tensors() {
            let n: usize = shape.iter().product();
            let fan_in: usize = shape[1..].iter().product();
            let std = if name.ends_with("bias") {
                0.0
            } else if name == "fc.weight" {
                (1.0 / fan_in as f64).sqrt()
            } else {
                (2.0 / fan_in as f64).sqrt()
            };
            let values: Vec<f64> = if name.ends_with("gain") {
                vec![GAIN0; n]
            } else {
                (0..n).map(|_| rng.normal() * std).collect()
            };
            tensors.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
        }
        Self::from_tensors(arch, &tensors, dtype, "the new network")
    }

    /// The network from named tensors (as [`Arch::tensors`] names them), as `dtype`; `file`
    /// names the source in errors. Every tensor must be there with its shape, and no other.
    pub fn from_tensors(
        arch: Arch,
        tensors: &HashMap<String, Tensor>,
        dtype: DType,
        file: &str,
    ) -> Result<Self> {
        let bad = |reason: String| Error::Model {
            name: file.to_string(),
            reason,
        };
        let plan = arch.tensors();
        if tensors.len() != plan.len() {
            return Err(bad(format!(
                "{} tensors, a {} network has {}",
                tensors.len(),
                arch.name,
                plan.len()
            )));
        }
        let mut names = Vec::with_capacity(plan.len());
        let mut vars = Vec::with_capacity(plan.len());
        for (name, shape) in plan {
            let t = tensors
                .get(&name)
                .ok_or_else(|| bad(format!("no tensor `{name}` (a {} network)", arch.name)))?;
            if t.dims() != shape.as_slice() {
                return Err(bad(format!(
                    "`{name}` has shape {:?}, a {} network needs {shape:?}",
                    t.dims(),
                    arch.name
                )));
            }
            vars.push(Var::from_tensor(&t.to_dtype(dtype)?)?);
            names.push(name);
        }
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        Ok(Net {
            arch,
            names,
            vars,
            index,
        })
    }

    /// The network with its variables on `device` (unchanged when they are there already).
    pub fn to_device(self, device: &Device) -> Result<Self> {
        Ok(Net {
            vars: super::vars_to_device(self.vars, device)?,
            ..self
        })
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// A variable's value; `detached` cuts it from the graph (evaluation keeps no activations).
    fn get(&self, name: &str, detached: bool) -> candle_core::Result<Tensor> {
        let i = *self
            .index
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("the network has no {name}")))?;
        let t = self.vars[i].as_tensor();
        Ok(if detached { t.detach() } else { t.clone() })
    }

    /// Convolution `name` (`name.weight`, `name.bias`) of `x`.
    fn conv_bias(
        &self,
        x: &Tensor,
        name: &str,
        stride: usize,
        pad: usize,
        detached: bool,
    ) -> candle_core::Result<Tensor> {
        let w = self.get(&format!("{name}.weight"), detached)?;
        let b = self.get(&format!("{name}.bias"), detached)?;
        let c = b.dim(0)?;
        conv(x, &w, stride, pad)?.broadcast_add(&b.reshape((1, c, 1, 1))?)
    }

    /// BasicBlock `pre`: `relu(shortcut(x) + gain * conv2(relu(conv1(x))))`, the shortcut a
    /// strided 1x1 projection when the block changes size.
    fn block(
        &self,
        x: &Tensor,
        pre: &str,
        stride: usize,
        project: bool,
        detached: bool,
    ) -> candle_core::Result<Tensor> {
        let y = self
            .conv_bias(x, &format!("{pre}.conv1"), stride, 1, detached)?
            .relu()?;
        let y = self.conv_bias(&y, &format!("{pre}.conv2"), 1, 1, detached)?;
        let y = y.broadcast_mul(&self.get(&format!("{pre}.gain"), detached)?)?;
        let skip = if project {
            self.conv_bias(x, &format!("{pre}.downsample"), stride, 0, detached)?
        } else {
            x.clone()
        };
        (skip + y)?.relu()
    }

    /// Pooled features `[N, widths[3]]` of normalised chips `[N, 3, H, W]` (centre-cropped
    /// to the architecture's crop).
    pub fn pooled(&self, x: &Tensor, detached: bool) -> candle_core::Result<Tensor> {
        let (h, w) = (x.dim(2)?, x.dim(3)?);
        let crop = self.arch.crop;
        if h < crop || w < crop {
            return Err(candle_core::Error::Msg(format!(
                "{} takes chips of at least {crop}x{crop}, got {w}x{h}",
                self.arch.name
            )));
        }
        let x = x
            .narrow(2, (h - crop) / 2, crop)?
            .narrow(3, (w - crop) / 2, crop)?
            .contiguous()?;
        let x = self.conv_bias(&x, "stem.conv", 2, 1, detached)?.relu()?;
        let mut x = super::maxpool::max_pool(&x, 3, 2)?;
        for (s, &n) in self.arch.blocks.iter().enumerate() {
            for b in 0..n {
                let down = b == 0 && s > 0;
                let stride = if down { 2 } else { 1 };
                x = self.block(&x, &format!("layer{}.{b}", s + 1), stride, down, detached)?;
            }
        }
        x.mean((2, 3))
    }

    /// Embeddings `[B, dim]` (before L2 normalisation) of `[B, V, 3, H, W]` normalised chips
    /// ([`crate::embed::dlib_resnet::normalise_chip`]): the `V` views of each face (the chip,
    /// or the chip and its mirror image) are averaged (the linear layer commutes with the mean).
    pub fn run(&self, x: &Tensor, detached: bool) -> candle_core::Result<Tensor> {
        let (b, views, c, h, w) = x.dims5()?;
        let chips = x.reshape((b * views, c, h, w))?;
        let mut pooled = self.pooled(&chips, detached)?;
        if views > 1 {
            pooled = pooled.reshape((b, views, self.arch.widths[3]))?.mean(1)?;
        }
        let fc = self.get("fc.weight", detached)?;
        let bias = self.get("fc.bias", detached)?;
        pooled.matmul(&fc.t()?)?.broadcast_add(&bias.unsqueeze(0)?)
    }

    /// Data-dependent start of the output layer: shifts `fc.bias` so that the embeddings of
    /// `x` (an evaluation batch `[B, V, 3, H, W]` of training faces) average to zero. An
    /// untrained network's pooled features are ReLU averages, all positive, so every face's
    /// embedding shares one large direction; L2-normalised, all faces then lie within ~0.01 of
    /// each other and the loss's gradients on what tells them apart are ~100 times too small
    /// (measured: ArcFace from the plain random start did not move validation accuracy in 3
    /// epochs). Centred, the start keeps only what differs between faces.
    pub fn center_output(&self, x: &Tensor) -> Result<()> {
        let mean = self.run(x, true)?.mean(0)?;
        let i = self.index["fc.bias"];
        let bias = (self.vars[i].as_tensor() - mean.to_dtype(self.vars[i].dtype())?)?;
        self.vars[i].set(&bias)?;
        Ok(())
    }

    /// Every tensor as f32 values, named as [`Arch::tensors`] names them.
    pub fn named_tensors(&self) -> Result<Vec<crate::embed::head::NamedTensor>> {
        self.names
            .iter()
            .zip(&self.vars)
            .map(|(n, v)| {
                let t = v.as_tensor();
                Ok((
                    n.clone(),
                    t.dims().to_vec(),
                    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                ))
            })
            .collect()
    }

    /// The model file: every tensor (f32) and `metadata` with the format, architecture,
    /// embedding size, normalisation and threshold.
    pub fn to_bytes(
        &self,
        metadata: &BTreeMap<String, String>,
        normalize: bool,
        threshold: Option<f32>,
    ) -> Result<Vec<u8>> {
        let mut meta = metadata.clone();
        meta.insert("format".into(), FORMAT.into());
        meta.insert("architecture".into(), self.arch.name.into());
        meta.insert("out_dim".into(), self.arch.dim.to_string());
        meta.insert("normalize".into(), normalize.to_string());
        if let Some(t) = threshold {
            meta.insert("threshold".into(), t.to_string());
        }
        let tensors = self.named_tensors()?;
        let views: Vec<(&str, Vec<usize>, &[f32])> = tensors
            .iter()
            .map(|(n, s, v)| (n.as_str(), s.clone(), v.as_slice()))
            .collect();
        Ok(crate::models::safetensors_f32(&views, &meta))
    }
}

impl Trainable for Net {
    fn vars(&self) -> Vec<Var> {
        self.vars.clone()
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.run(x, false)
    }

    fn evaluate(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.run(x, true)
    }
}

/// A model file written by [`Net::to_bytes`].
pub struct NetFile {
    /// The network (f32).
    pub net: Net,
    /// Whether embeddings are L2-normalised.
    pub normalize: bool,
    /// The calibrated "same person" threshold.
    pub threshold: Option<f32>,
    /// Everything else in the metadata (training settings, validation figures).
    pub metadata: BTreeMap<String, String>,
}

impl NetFile {
    /// Reads a model file; `name` names it in errors.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Self> {
        let bad = |reason: String| Error::Model {
            name: name.to_string(),
            reason,
        };
        let meta = crate::models::safetensors_metadata(bytes).map_err(bad)?;
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!(
                "not a facekit network (no `format: {FORMAT}` in its metadata)"
            )));
        }
        let arch_name = meta
            .get("architecture")
            .ok_or_else(|| bad("metadata has no `architecture`".into()))?;
        let arch = Arch::by_name(arch_name).ok_or_else(|| {
            bad(format!(
                "unknown architecture {arch_name:?} (this facekit knows {})",
                ARCHS.map(|a| a.name).join(", ")
            ))
        })?;
        if meta.get("out_dim").map(String::as_str) != Some(&arch.dim.to_string()) {
            return Err(bad(format!(
                "metadata `out_dim` is not {} (the {} embedding size)",
                arch.dim, arch.name
            )));
        }
        let normalize = match meta.get("normalize").map(String::as_str) {
            Some("true") => true,
            Some("false") => false,
            _ => return Err(bad("metadata `normalize` is not true or false".into())),
        };
        let threshold = match meta.get("threshold") {
            None => None,
            Some(t) => Some(
                t.parse::<f32>()
                    .map_err(|_| bad(format!("metadata `threshold` {t:?} is not a number")))?,
            ),
        };
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let mut tensors = HashMap::new();
        for (tname, view) in st.tensors() {
            if view.dtype() != safetensors::tensor::Dtype::F32 {
                return Err(bad(format!("`{tname}` is not F32")));
            }
            let values = crate::models::f32_from_le(view.data());
            if values.iter().any(|v| !v.is_finite()) {
                return Err(bad(format!("`{tname}` has non-finite values")));
            }
            let shape = view.shape().to_vec();
            tensors.insert(tname, Tensor::from_vec(values, shape, &Device::Cpu)?);
        }
        let net = Net::from_tensors(arch, &tensors, DType::F32, name)?;
        let reserved = [
            "format",
            "architecture",
            "out_dim",
            "normalize",
            "threshold",
        ];
        Ok(NetFile {
            net,
            normalize,
            threshold,
            metadata: meta
                .into_iter()
                .filter(|(k, _)| !reserved.contains(&k.as_str()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A network small enough for finite differences.
    const TEST: Arch = Arch {
        name: "test",
        widths: [3, 4, 4, 5],
        blocks: [1, 2, 1, 1],
        crop: 24,
        dim: 6,
    };

    /// `sum(c * normalise(net(x)))` for fixed random `c`: a scalar through the whole network
    /// and the L2 normalisation.
    fn objective(net: &Net, x: &Tensor, c: &Tensor) -> Tensor {
        let y = super::super::loss::l2_normalize(&net.forward(x).unwrap()).unwrap();
        (y * c).unwrap().sum_all().unwrap()
    }

    /// The backward pass of the whole network (every tensor, branch gains made non-zero) on a
    /// small f64 input equals central finite differences.
    #[test]
    fn gradients_match_finite_differences() {
        let net = Net::init(TEST, 1, DType::F64).unwrap();
        let mut r = Rng::new(2);
        // Non-zero gains and biases, so every branch and bias is exercised.
        for (name, var) in net.names.iter().zip(&net.vars) {
            if name.ends_with("gain") || name.ends_with("bias") {
                let n = var.as_tensor().elem_count();
                let v: Vec<f64> = (0..n).map(|_| 0.3 + 0.2 * r.normal()).collect();
                var.set(&Tensor::from_vec(v, var.as_tensor().shape(), &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
        let (b, views) = (2, 2);
        let xs: Vec<f64> = (0..b * views * 3 * 28 * 28)
            .map(|_| r.normal() * 0.3)
            .collect();
        let x = Tensor::from_vec(xs, (b, views, 3, 28, 28), &Device::Cpu).unwrap();
        let cs: Vec<f64> = (0..b * TEST.dim).map(|_| r.normal()).collect();
        let c = Tensor::from_vec(cs, (b, TEST.dim), &Device::Cpu).unwrap();
        let grads = objective(&net, &x, &c).backward().unwrap();
        let eps = 1e-6;
        let mut worst = 0f64;
        let mut checked = 0;
        for (name, var) in net.names.iter().zip(&net.vars) {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"))
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let base = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            // A few elements of every tensor.
            for k in 0..base.len().min(3) {
                let i = (k * 7919) % base.len();
                let at = |delta: f64| {
                    let mut v = base.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, var.as_tensor().shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    let f = objective(&net, &x, &c).to_scalar::<f64>().unwrap();
                    var.set(
                        &Tensor::from_vec(base.clone(), var.as_tensor().shape(), &Device::Cpu)
                            .unwrap(),
                    )
                    .unwrap();
                    f
                };
                let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
                let rel = (g[i] - numeric).abs() / (g[i].abs() + numeric.abs()).max(1e-6);
                assert!(
                    rel < 1e-4,
                    "{name}[{i}]: backward {} numeric {numeric}",
                    g[i]
                );
                worst = worst.max(rel);
                checked += 1;
            }
        }
        eprintln!("gradient check: {checked} weights, largest relative error {worst:.2e}");
        assert!(checked > 40);
    }

    /// Same seed, same weights; the file round-trips; at initialisation the network outputs
    /// distinct, finite embeddings; a wrong file is refused naming it.
    #[test]
    fn initialises_saves_and_loads() {
        let arch = Arch::by_name("resnet18-tiny").unwrap();
        let a = Net::init(arch, 3, DType::F32).unwrap();
        let b = Net::init(arch, 3, DType::F32).unwrap();
        assert_eq!(a.named_tensors().unwrap(), b.named_tensors().unwrap());
        let c = Net::init(arch, 4, DType::F32).unwrap();
        assert_ne!(a.named_tensors().unwrap(), c.named_tensors().unwrap());
        let bytes = a.to_bytes(&BTreeMap::new(), true, Some(0.9)).unwrap();
        let back = NetFile::from_bytes(&bytes, "m.safetensors").unwrap();
        assert_eq!(back.threshold, Some(0.9));
        assert!(back.normalize);
        assert_eq!(
            back.net.named_tensors().unwrap(),
            a.named_tensors().unwrap()
        );
        let mut r = Rng::new(5);
        let xs: Vec<f32> = (0..2 * 3 * 150 * 150)
            .map(|_| r.normal() as f32 * 0.25)
            .collect();
        let x = Tensor::from_vec(xs, (2, 1, 3, 150, 150), &Device::Cpu).unwrap();
        let y = back.net.evaluate(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y.len(), 2);
        assert_eq!(y[0].len(), 128);
        assert!(y.iter().flatten().all(|v| v.is_finite()));
        assert_ne!(y[0], y[1]);
        let head = crate::embed::head::Head::new(
            vec![0.0; 128 * 4],
            128,
            4,
            crate::embed::head::HeadInput::Embedding,
            true,
        )
        .to_bytes()
        .unwrap();
        let err = NetFile::from_bytes(&head, "h.safetensors")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("h.safetensors") && err.contains("not a facekit network"),
            "{err}"
        );
    }
}
