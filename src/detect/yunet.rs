//! YuNet face detection, as libfacedetection's `facedetect_cnn` runs it (weights from the
//! BSD-3-Clause `yuface==2023.5.1` wheel, see `models/LICENSE-yunet`).
//!
//! This module owns the network (53 convolutions: a 3x3 stride-2 first layer, then pairs of 1x1
//! point-wise and 3x3 depth-wise convolutions, 2x2 max-pools, a nearest-upsample-and-add neck and
//! heads at strides 8, 16 and 32), the decoding of boxes, scores and 5 landmarks, and the NMS.
//! The arithmetic follows `../shared/docs/yunet.md`: BGR bytes as floats 0..255 zero-padded to a
//! multiple of 32, no resizing; ReLU after the depth-wise half of each backbone/neck pair, none in
//! the heads; anchors at `(col*s, row*s)`; score `sqrt(sigmoid(cls) * sigmoid(obj))`; a stable
//! sort, `top_k` before a greedy NMS at IoU `>` threshold without `+1` in the areas.
//! On the CPU the layers run the HWC kernels of `yunet_kernels.rs` (each pw+dw pair fused over
//! bands of rows; the four heads of a level as one 64 -> 16 pair, every channel computed as by
//! its own head); [`YuNet::forward_candle`] is the same network in candle's generic ops (any
//! device), used to cross-check them. Results are bit-identical for any rayon thread count.

#[path = "yunet_kernels.rs"]
mod kernels;

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use image::RgbImage;

pub use kernels::Map;

use super::{BBox, Detection, Point};
use crate::models::{ModelSource, YUNET};
use crate::{Error, Result};

/// Strides of the three detection levels.
pub const STRIDES: [usize; 3] = [8, 16, 32];

/// Channels of the fused head output per level: cls 1, bbox 4, obj 1, kps 10 (in this order).
pub const HEAD_CHANNELS: usize = 16;

/// Logits are clamped to this before the sigmoid, as the C code does.
const LOGIT_CLAMP: f32 = 88.376_26;

/// YuNet settings; the defaults are libfacedetection's (`facedetect_cnn`).
#[derive(Debug, Clone, PartialEq)]
pub struct YuNetConfig {
    /// Candidates need `score >= score_threshold` (libfacedetection: 0.2).
    pub score_threshold: f32,
    /// A box is dropped when its IoU with a kept, better box is `> nms_threshold` (0.45).
    pub nms_threshold: f32,
    /// Candidates kept (best first) before NMS (1000).
    pub top_k: usize,
    /// Detections kept (best first) after NMS (512).
    pub keep_top_k: usize,
}

impl Default for YuNetConfig {
    fn default() -> Self {
        YuNetConfig {
            score_threshold: 0.2,
            nms_threshold: 0.45,
            top_k: 1000,
            keep_top_k: 512,
        }
    }
}

impl YuNetConfig {
    /// Checks that thresholds are in `[0, 1]`.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.score_threshold) {
            return Err(Error::Config(format!(
                "YuNet score threshold {} is not in [0, 1]",
                self.score_threshold
            )));
        }
        if !(0.0..=1.0).contains(&self.nms_threshold) {
            return Err(Error::Config(format!(
                "YuNet NMS threshold {} is not in [0, 1]",
                self.nms_threshold
            )));
        }
        Ok(())
    }
}

/// A 1x1 convolution: weight `[O, I]`, bias `[O]`.
struct Pointwise {
    weight: Tensor,
    bias: Tensor,
    /// `[I][O]` copy for the CPU kernel (only the first `i_used` input channels).
    wt: Vec<f32>,
    b: Vec<f32>,
}

impl Pointwise {
    fn load(vb: &VarBuilder, name: &str, c_in: usize, c_out: usize) -> candle_core::Result<Self> {
        let weight = vb.get((c_out, c_in), &format!("{name}_weight"))?;
        let bias = vb.get(c_out, &format!("{name}_bias"))?;
        Self::new(weight, bias, c_in)
    }

    /// From tensors; the CPU copy keeps the first `i_used` input channels.
    fn new(weight: Tensor, bias: Tensor, i_used: usize) -> candle_core::Result<Self> {
        let (c_out, c_in) = weight.dims2()?;
        let w: Vec<f32> = weight.flatten_all()?.to_vec1()?;
        let mut wt = vec![0f32; i_used * c_out];
        for o in 0..c_out {
            for i in 0..i_used {
                wt[i * c_out + o] = w[o * c_in + i];
            }
        }
        let b = bias.to_vec1()?;
        Ok(Pointwise {
            weight,
            bias,
            wt,
            b,
        })
    }

    /// Candle ops on NCHW.
    fn forward_candle(&self, x: &Tensor, relu: bool) -> candle_core::Result<Tensor> {
        let (o, i) = self.weight.dims2()?;
        let y = x
            .conv2d(&self.weight.reshape((o, i, 1, 1))?, 0, 1, 1, 1)?
            .broadcast_add(&self.bias.reshape((1, o, 1, 1))?)?;
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }
}

/// A 3x3 depth-wise convolution, pad 1: weight `[9, C]` tap-major, bias `[C]`.
struct Depthwise {
    weight: Tensor,
    bias: Tensor,
    w: Vec<f32>,
    b: Vec<f32>,
}

impl Depthwise {
    fn load(vb: &VarBuilder, name: &str, c: usize) -> candle_core::Result<Self> {
        let weight = vb.get((9, c), &format!("{name}_weight"))?;
        let bias = vb.get(c, &format!("{name}_bias"))?;
        Self::new(weight, bias)
    }

    fn new(weight: Tensor, bias: Tensor) -> candle_core::Result<Self> {
        let w = weight.flatten_all()?.to_vec1()?;
        let b = bias.to_vec1()?;
        Ok(Depthwise { weight, bias, w, b })
    }

    /// Candle's grouped conv on NCHW (weights transposed to `[C, 1, 3, 3]`).
    fn forward_candle(&self, x: &Tensor, relu: bool) -> candle_core::Result<Tensor> {
        let c = self.b.len();
        let w = self.weight.t()?.contiguous()?.reshape((c, 1, 3, 3))?;
        let y = x
            .conv2d(&w, 1, 1, 1, c)?
            .broadcast_add(&self.bias.reshape((1, c, 1, 1))?)?;
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }
}

/// `dp`: a point-wise conv (no ReLU) then a depth-wise conv (ReLU in the backbone and neck, none
/// in the heads).
struct DpPair {
    pw: Pointwise,
    dw: Depthwise,
    relu: bool,
}

impl DpPair {
    fn load(vb: &VarBuilder, name: &str, c_in: usize, c_out: usize) -> candle_core::Result<Self> {
        Ok(DpPair {
            pw: Pointwise::load(vb, &format!("{name}_pw"), c_in, c_out)?,
            dw: Depthwise::load(vb, &format!("{name}_dw"), c_out)?,
            relu: true,
        })
    }

    fn forward(&self, x: &Map) -> Map {
        kernels::pointwise_depthwise(
            x,
            (&self.pw.wt, &self.pw.b),
            (&self.dw.w, &self.dw.b),
            self.relu,
        )
    }

    fn forward_candle(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.dw
            .forward_candle(&self.pw.forward_candle(x, false)?, self.relu)
    }
}

/// `unit`: two `dp` pairs (`<model>_dp1`, `<model>_dp2`).
struct Unit {
    dp1: DpPair,
    dp2: DpPair,
}

impl Unit {
    fn load(vb: &VarBuilder, model: &str, c_in: usize, c_out: usize) -> candle_core::Result<Self> {
        Ok(Unit {
            dp1: DpPair::load(vb, &format!("{model}_dp1"), c_in, c_in)?,
            dp2: DpPair::load(vb, &format!("{model}_dp2"), c_in, c_out)?,
        })
    }

    fn forward(&self, x: &Map) -> Map {
        self.dp2.forward(&self.dp1.forward(x))
    }

    fn forward_candle(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.dp2.forward_candle(&self.dp1.forward_candle(x)?)
    }
}

/// The four heads of one level (cls, bbox, obj, kps), fused into one pair of 64 -> 16 channels;
/// each output channel is computed exactly as by its own head.
fn load_heads(vb: &VarBuilder, level: usize) -> candle_core::Result<DpPair> {
    let mut pw_w = Vec::new();
    let mut pw_b = Vec::new();
    let mut dw_w = Vec::new();
    let mut dw_b = Vec::new();
    for (head, n) in [("cls", 1), ("bbox", 4), ("obj", 1), ("kps", 10)] {
        let name = format!("bbox_head__multi_level_{head}__{level}");
        pw_w.push(vb.get((n, 64), &format!("{name}_pw_weight"))?);
        pw_b.push(vb.get(n, &format!("{name}_pw_bias"))?);
        dw_w.push(vb.get((9, n), &format!("{name}_dw_weight"))?);
        dw_b.push(vb.get(n, &format!("{name}_dw_bias"))?);
    }
    Ok(DpPair {
        pw: Pointwise::new(Tensor::cat(&pw_w, 0)?, Tensor::cat(&pw_b, 0)?, 64)?,
        dw: Depthwise::new(Tensor::cat(&dw_w, 1)?, Tensor::cat(&dw_b, 0)?)?,
        relu: false,
    })
}

/// The YuNet network (libfacedetection's `objectdetect_cnn`), weights named as in the .so.
struct Net {
    /// L0: 3x3 stride-2 conv as space-to-depth (27 of 32 channels) + 1x1, ReLU.
    model0_pw: Pointwise,
    /// L1-2.
    model0_dp: DpPair,
    /// L3-6, L7-10, L11-14 (stride 8), L15-18 (stride 16), L19-22 (stride 32).
    model: [Unit; 5],
    /// L23-28: `neck__lateral_convs__{0,1,2}` at strides 8, 16, 32.
    lateral: [DpPair; 3],
    /// L29-52: per level, cls/bbox/obj/kps fused.
    heads: [DpPair; 3],
}

impl Net {
    fn load(vb: &VarBuilder) -> candle_core::Result<Self> {
        let unit =
            |m: usize, i: usize, o: usize| Unit::load(vb, &format!("backbone__model{m}"), i, o);
        let lateral = |l: usize| DpPair::load(vb, &format!("neck__lateral_convs__{l}"), 64, 64);
        Ok(Net {
            model0_pw: {
                let weight = vb.get((16, 32), "backbone__model0_pw_weight")?;
                let bias = vb.get(16, "backbone__model0_pw_bias")?;
                Pointwise::new(weight, bias, 27)?
            },
            model0_dp: DpPair::load(vb, "backbone__model0_dp", 16, 16)?,
            model: [
                unit(1, 16, 32)?,
                unit(2, 32, 64)?,
                unit(3, 64, 64)?,
                unit(4, 64, 64)?,
                unit(5, 64, 64)?,
            ],
            lateral: [lateral(0)?, lateral(1)?, lateral(2)?],
            heads: [load_heads(vb, 0)?, load_heads(vb, 1)?, load_heads(vb, 2)?],
        })
    }

    /// The forward pass on BGR bytes (`h x w x 3`; RGB when `rgb`, the network still sees BGR),
    /// top-down like the C++; `tap` sees each stage named as in the golden `net_checks`. Returns
    /// the head maps at strides 8, 16, 32.
    fn forward(
        &self,
        img: &[u8],
        rgb: bool,
        h: usize,
        w: usize,
        tap: &mut dyn FnMut(&str, &Map),
    ) -> [Map; 3] {
        let x = kernels::first_layer(img, rgb, h, w, &self.model0_pw.wt, &self.model0_pw.b);
        tap("conv_head_L0", &x);
        let x = self.model0_dp.forward(&x);
        tap("conv0_L1_2", &x);
        let x = kernels::max_pool2(&x);
        tap("pool0", &x);
        let x = self.model[0].forward(&x);
        tap("conv1_L3_6", &x);
        let x = self.model[1].forward(&x);
        tap("conv2_L7_10", &x);
        let fb1 = self.model[2].forward(&kernels::max_pool2(&x));
        tap("fb1_pool3_conv3_L11_14", &fb1);
        let fb2 = self.model[3].forward(&kernels::max_pool2(&fb1));
        tap("fb2_pool4_conv4_L15_18", &fb2);
        let fb3 = self.model[4].forward(&kernels::max_pool2(&fb2));
        tap("fb3_pool5_conv5_L19_22", &fb3);
        let n3 = self.lateral[2].forward(&fb3);
        tap("neck_s32_L27_28", &n3);
        let n2 = self.lateral[1].forward(&kernels::upsample2_add(&n3, &fb2));
        tap("neck_s16_up_add_L25_26", &n2);
        let n1 = self.lateral[0].forward(&kernels::upsample2_add(&n2, &fb1));
        tap("neck_s8_up_add_L23_24", &n1);
        [
            self.heads[0].forward(&n1),
            self.heads[1].forward(&n2),
            self.heads[2].forward(&n3),
        ]
    }

    /// The same network in candle's generic ops on NCHW; returns the head maps as HWC.
    fn forward_candle(
        &self,
        bgr: &[u8],
        h: usize,
        w: usize,
        device: &Device,
    ) -> candle_core::Result<[Map; 3]> {
        let (hp, wp) = (h.div_ceil(32) * 32, w.div_ceil(32) * 32);
        let img = Tensor::from_vec(
            bgr.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            (h, w, 3),
            device,
        )?
        .permute((2, 0, 1))?
        .pad_with_zeros(1, 0, hp - h)?
        .pad_with_zeros(2, 0, wp - w)?
        .unsqueeze(0)?;
        // W[o][ch][ky][kx] = model0_pw_weight[o*32 + (ky*3+kx)*3 + ch].
        let w0 = self
            .model0_pw
            .weight
            .narrow(1, 0, 27)?
            .reshape((16, 3, 3, 3))?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
        let x = img
            .conv2d(&w0, 1, 2, 1, 1)?
            .broadcast_add(&self.model0_pw.bias.reshape((1, 16, 1, 1))?)?
            .relu()?;
        let x = self.model0_dp.forward_candle(&x)?.max_pool2d(2)?;
        let x = self.model[1].forward_candle(&self.model[0].forward_candle(&x)?)?;
        let fb1 = self.model[2].forward_candle(&x.max_pool2d(2)?)?;
        let fb2 = self.model[3].forward_candle(&fb1.max_pool2d(2)?)?;
        let fb3 = self.model[4].forward_candle(&fb2.max_pool2d(2)?)?;
        let n3 = self.lateral[2].forward_candle(&fb3)?;
        let up = |t: &Tensor| {
            let (_, _, th, tw) = t.dims4()?;
            t.upsample_nearest2d(2 * th, 2 * tw)
        };
        let n2 = self.lateral[1].forward_candle(&(up(&n3)? + &fb2)?)?;
        let n1 = self.lateral[0].forward_candle(&(up(&n2)? + &fb1)?)?;
        let to_map = |t: Tensor| -> candle_core::Result<Map> {
            let (_, c, h, w) = t.dims4()?;
            let data = t.squeeze(0)?.permute((1, 2, 0))?.flatten_all()?.to_vec1()?;
            Ok(Map { h, w, c, data })
        };
        Ok([
            to_map(self.heads[0].forward_candle(&n1)?)?,
            to_map(self.heads[1].forward_candle(&n2)?)?,
            to_map(self.heads[2].forward_candle(&n3)?)?,
        ])
    }
}

/// One decoded anchor before NMS.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: f32,
    /// `[x1, y1, x2, y2]`, not clipped.
    bbox: [f32; 4],
    /// `x0, y0, .., x4, y4`.
    landmarks: [f32; 10],
}

/// `1 / (1 + exp(-x))` of the clamped logit, in double, stored as f32 (as the C code does).
fn sigmoid(x: f32) -> f32 {
    let x = x.clamp(-LOGIT_CLAMP, LOGIT_CLAMP) as f64;
    (1.0 / (1.0 + (-x).exp())) as f32
}

/// Decodes every anchor whose score is `>= threshold`, in the C order (stride 8 row-major, then
/// 16, then 32).
fn decode(heads: &[Map; 3], threshold: f32) -> Vec<Candidate> {
    let mut out = Vec::new();
    for (m, &s) in heads.iter().zip(&STRIDES) {
        let sf = s as f32;
        for r in 0..m.h {
            for c in 0..m.w {
                let v = &m.data[(r * m.w + c) * HEAD_CHANNELS..(r * m.w + c + 1) * HEAD_CHANNELS];
                let score = (sigmoid(v[0]) * sigmoid(v[5])).sqrt();
                if score < threshold || score.is_nan() {
                    continue;
                }
                let (ax, ay) = ((c * s) as f32, (r * s) as f32);
                let cx = v[1] * sf + ax;
                let cy = v[2] * sf + ay;
                let bw = v[3].exp() * sf;
                let bh = v[4].exp() * sf;
                let mut landmarks = [0f32; 10];
                for k in 0..5 {
                    landmarks[2 * k] = v[6 + 2 * k] * sf + ax;
                    landmarks[2 * k + 1] = v[7 + 2 * k] * sf + ay;
                }
                out.push(Candidate {
                    score,
                    bbox: [cx - bw / 2.0, cy - bh / 2.0, cx + bw / 2.0, cy + bh / 2.0],
                    landmarks,
                });
            }
        }
    }
    out
}

/// libfacedetection's IoU: f32, no `+1`, zero unless both overlap widths are positive.
fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = a[2].min(b[2]) - a[0].max(b[0]);
    let ih = a[3].min(b[3]) - a[1].max(b[1]);
    if iw > 0.0 && ih > 0.0 {
        let inter = iw * ih;
        inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
    } else {
        0.0
    }
}

/// Stable sort by score (best first), `top_k`, greedy NMS, `keep_top_k`.
fn nms(mut cands: Vec<Candidate>, config: &YuNetConfig) -> Vec<Candidate> {
    cands.sort_by(|a, b| b.score.total_cmp(&a.score));
    cands.truncate(config.top_k);
    let mut kept: Vec<Candidate> = Vec::new();
    for c in cands {
        if kept.len() >= config.keep_top_k {
            break;
        }
        if kept
            .iter()
            .all(|k| iou(&c.bbox, &k.bbox) <= config.nms_threshold)
        {
            kept.push(c);
        }
    }
    kept
}

/// The YuNet face detector (libfacedetection 2023, ~53k parameters, 5 landmarks).
pub struct YuNet {
    net: Net,
    config: YuNetConfig,
}

impl YuNet {
    /// Loads the weights (`yunet.safetensors`) from `source`.
    pub fn new(source: &ModelSource, config: YuNetConfig) -> Result<Self> {
        config.validate()?;
        let vb = source.var_builder(YUNET, &Device::Cpu)?;
        let net = Net::load(&vb).map_err(|e| Error::Model {
            name: YUNET.to_string(),
            reason: e.to_string(),
        })?;
        Ok(YuNet { net, config })
    }

    /// The settings in use.
    pub fn config(&self) -> &YuNetConfig {
        &self.config
    }

    /// Faces in an RGB image, best first, boxes clipped to the image; landmarks are left eye
    /// (image-left), right eye, nose, left and right mouth corners.
    pub fn detect(&self, img: &RgbImage) -> Result<Vec<Detection>> {
        let (w, h) = img.dimensions();
        Ok(self
            .detect_unclipped(img)?
            .into_iter()
            .map(|mut d| {
                d.bbox = d.bbox.clip(w, h);
                d
            })
            .collect())
    }

    /// [`YuNet::detect`] with the boxes as the network decodes them (not clipped; what the C
    /// library reports).
    pub fn detect_unclipped(&self, img: &RgbImage) -> Result<Vec<Detection>> {
        let (w, h) = img.dimensions();
        // The first layer reads the RGB bytes in reverse: the network sees BGR.
        self.detect_bytes(img.as_raw(), true, w as usize, h as usize)
    }

    /// Detection on raw BGR bytes (`height x width x 3`, row-major), boxes not clipped.
    pub fn detect_bgr(&self, bgr: &[u8], width: usize, height: usize) -> Result<Vec<Detection>> {
        self.detect_bytes(bgr, false, width, height)
    }

    fn detect_bytes(
        &self,
        img: &[u8],
        rgb: bool,
        width: usize,
        height: usize,
    ) -> Result<Vec<Detection>> {
        self.check_input(img, width, height)?;
        if width == 0 || height == 0 {
            return Ok(Vec::new());
        }
        let heads = self.net.forward(img, rgb, height, width, &mut |_, _| {});
        Ok(
            nms(decode(&heads, self.config.score_threshold), &self.config)
                .into_iter()
                .map(|c| Detection {
                    bbox: BBox::from_array(c.bbox),
                    score: c.score,
                    // YuNet's order is already facekit's: image-left eye, image-right eye, nose,
                    // image-left mouth corner, image-right mouth corner.
                    landmarks: std::array::from_fn(|k| Point {
                        x: c.landmarks[2 * k],
                        y: c.landmarks[2 * k + 1],
                    }),
                })
                .collect(),
        )
    }

    /// The raw head maps (HWC, [`HEAD_CHANNELS`] channels: cls, dx, dy, log w, log h, obj,
    /// 10 landmark offsets) at strides 8, 16, 32; `None` for an empty image.
    pub fn head_maps(&self, bgr: &[u8], width: usize, height: usize) -> Result<Option<[Map; 3]>> {
        self.check_input(bgr, width, height)?;
        if width == 0 || height == 0 {
            return Ok(None);
        }
        Ok(Some(self.net.forward(
            bgr,
            false,
            height,
            width,
            &mut |_, _| {},
        )))
    }

    /// Every intermediate stage, named as in the golden `net_checks` (`s2d`, `conv_head_L0`, ...,
    /// `neck_s8_up_add_L23_24`), then `heads_s8`, `heads_s16`, `heads_s32`; for checks.
    pub fn stages(&self, bgr: &[u8], width: usize, height: usize) -> Result<Vec<(String, Map)>> {
        self.check_input(bgr, width, height)?;
        let mut out = vec![(
            "s2d".to_string(),
            kernels::space_to_depth(bgr, height, width),
        )];
        let heads = self.net.forward(bgr, false, height, width, &mut |name, m| {
            out.push((name.to_string(), m.clone()))
        });
        for (m, s) in heads.into_iter().zip(STRIDES) {
            out.push((format!("heads_s{s}"), m));
        }
        Ok(out)
    }

    /// The head maps computed with candle's generic ops (convolutions, grouped convolutions,
    /// pools, upsampling) on `device` instead of the CPU kernels; for cross-checks.
    pub fn forward_candle(
        &self,
        bgr: &[u8],
        width: usize,
        height: usize,
        device: &Device,
    ) -> Result<[Map; 3]> {
        self.check_input(bgr, width, height)?;
        Ok(self.net.forward_candle(bgr, height, width, device)?)
    }

    fn check_input(&self, bgr: &[u8], width: usize, height: usize) -> Result<()> {
        if width.checked_mul(height).and_then(|n| n.checked_mul(3)) != Some(bgr.len()) {
            return Err(Error::Config(format!(
                "BGR buffer of {} bytes for a {width}x{height} image",
                bgr.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yunet() -> YuNet {
        YuNet::new(&ModelSource::Embedded, YuNetConfig::default()).expect("embedded YuNet")
    }

    fn fixture(name: &str) -> RgbImage {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let opts = crate::io::LoadOptions {
            apply_exif_orientation: false,
            ..Default::default()
        };
        crate::io::load_image(&path, &opts).expect("fixture loads")
    }

    #[test]
    fn finds_the_three_faces_of_2008_001322() {
        let faces: Vec<_> = yunet()
            .detect(&fixture("2008_001322.jpg"))
            .unwrap()
            .into_iter()
            .filter(|d| d.score >= 0.7)
            .collect();
        assert_eq!(faces.len(), 3, "{faces:?}");
        for f in &faces {
            assert!(
                f.bbox.x1 >= 0.0 && f.bbox.y1 >= 0.0 && f.bbox.x2 <= 500.0 && f.bbox.y2 <= 375.0
            );
            assert!(f.landmarks[0].x < f.landmarks[1].x && f.landmarks[3].x < f.landmarks[4].x);
            assert!(f.landmarks[2].y > f.landmarks[0].y && f.landmarks[3].y > f.landmarks[2].y);
        }
        assert!(faces.windows(2).all(|p| p[0].score >= p[1].score));
    }

    #[test]
    fn tom_cruise_one_face_and_thread_count_independent() {
        let img = fixture("Tom_Cruise_avp_2014_4.jpg");
        let net = yunet();
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let a = one.install(|| net.detect(&img)).unwrap();
        let b = three.install(|| net.detect(&img)).unwrap();
        assert_eq!(a, b);
        let faces: Vec<_> = a.iter().filter(|d| d.score >= 0.7).collect();
        assert_eq!(faces.len(), 1, "{a:?}");
        // The float reference (../shared/golden/yunet.json): score 0.8952458, box
        // [68.x, 204.x, 68.x + 413.x, 204.x + 507.x] (the wheel's row: 89, 68, 204, 413, 507).
        let f = faces[0];
        assert!((f.score - 0.895_245_8).abs() < 1e-3, "{f:?}");
        assert!(
            (f.bbox.x1 - 68.5).abs() < 1.0 && (f.bbox.y1 - 204.5).abs() < 1.0,
            "{f:?}"
        );
        assert!((f.bbox.width() - 413.5).abs() < 1.0 && (f.bbox.height() - 507.5).abs() < 1.0);
    }

    #[test]
    fn kernels_match_candle_generic_ops() {
        let (w, h) = (45usize, 37usize);
        let bgr: Vec<u8> = (0..w * h * 3).map(|i| ((i * 7919) % 256) as u8).collect();
        let net = yunet();
        let fast = net.head_maps(&bgr, w, h).unwrap().unwrap();
        let generic = net.forward_candle(&bgr, w, h, &Device::Cpu).unwrap();
        for (a, b) in fast.iter().zip(&generic) {
            assert_eq!((a.h, a.w, a.c), (b.h, b.w, b.c));
            for (x, y) in a.data.iter().zip(&b.data) {
                assert!((x - y).abs() <= 1e-4 + 1e-5 * y.abs(), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn empty_image_and_bad_buffer() {
        let net = yunet();
        assert!(net.detect(&RgbImage::new(0, 0)).unwrap().is_empty());
        assert!(net.detect_bgr(&[0; 5], 2, 1).is_err());
        assert!(YuNet::new(
            &ModelSource::Embedded,
            YuNetConfig {
                score_threshold: 1.5,
                ..Default::default()
            }
        )
        .is_err());
    }
}
