//! Convert dlib's face-recognition ResNet and 5-point shape predictor into safetensors.
//!
//! Reads `dlib_face_recognition_resnet_model_v1.dat` and `shape_predictor_5_face_landmarks.dat`
//! (PyPI `face-recognition-models==0.3.0`, CC0) with a from-scratch parser of dlib's
//! serialization (see `dlib-format.md` in the shared docs), checks every hyper-parameter the
//! network depends on, requires each parse to end exactly on the last byte of its file, and writes
//! `dlib_resnet.safetensors` and `shape_predictor_5.safetensors` by hand: sorted keys, fixed JSON,
//! contiguous offsets, so the output is byte-for-byte reproducible. Each written file is read back
//! through candle's safetensors loader and compared with what was meant to be written.
//!
//! Normally run by `scripts/convert_dlib.sh`, which downloads and checks the inputs:
//!
//! ```text
//! cargo run --release --example convert_dlib -- \
//!     --resnet dlib_face_recognition_resnet_model_v1.dat --resnet-sha256 HEX \
//!     --shape-predictor shape_predictor_5_face_landmarks.dat --shape-predictor-sha256 HEX \
//!     --out-dir models
//! ```
//!
//! The sha256 values are only recorded in the outputs' metadata; the script computes and checks
//! them (this program does no hashing).

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use std::path::{Path, PathBuf};

/// The registry package both inputs come from.
const SOURCE_PACKAGE: &str = "PyPI face-recognition-models==0.3.0";
/// Path of the ResNet inside the package.
const RESNET_MEMBER: &str =
    "face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat";
/// Path of the shape predictor inside the package.
const SP_MEMBER: &str = "face_recognition_models/models/shape_predictor_5_face_landmarks.dat";
/// Licence of both inputs (and so of the outputs).
const LICENCE: &str = "CC0-1.0";

/// Per-channel input means (R, G, B) stored in the ResNet's input layer.
const EXPECTED_MEANS: [f32; 3] = [122.782, 117.001, 104.298];
/// Input chip size (rows = cols) of the ResNet.
const EXPECTED_INPUT_SIZE: u64 = 150;
/// `loss_metric_2` margin.
const EXPECTED_MARGIN: f32 = 0.04;
/// `loss_metric_2` distance threshold (same person below it).
const EXPECTED_DIST_THRESH: f32 = 0.6;
/// Total number of learned floats in the ResNet.
const EXPECTED_RESNET_PARAMS: usize = 5_614_592;
/// Residual blocks in forward order: (filters, is a down-sampling block).
const BLOCKS: [(usize, bool); 14] = [
    (32, false),
    (32, false),
    (32, false),
    (64, true),
    (64, false),
    (64, false),
    (64, false),
    (128, true),
    (128, false),
    (128, false),
    (256, true),
    (256, false),
    (256, false),
    (256, true),
];
/// Descriptor length (fc outputs).
const EMBEDDING_DIM: usize = 128;

/// Cascades in the shape predictor.
const SP_CASCADES: usize = 15;
/// Regression trees per cascade.
const SP_TREES: usize = 500;
/// Split nodes per tree (depth 4).
const SP_SPLITS: usize = 15;
/// Leaves per tree.
const SP_LEAVES: usize = 16;
/// Landmarks.
const SP_PARTS: usize = 5;
/// Feature pixels per cascade.
const SP_PIXELS: usize = 800;

/// Command line.
#[derive(Parser, Debug)]
#[command(about = "Convert dlib's face ResNet and 5-point shape predictor (.dat) to safetensors")]
struct Args {
    /// `dlib_face_recognition_resnet_model_v1.dat`
    #[arg(long)]
    resnet: PathBuf,
    /// sha256 of the ResNet file, recorded in the output metadata
    #[arg(long)]
    resnet_sha256: String,
    /// `shape_predictor_5_face_landmarks.dat`
    #[arg(long)]
    shape_predictor: PathBuf,
    /// sha256 of the shape predictor file, recorded in the output metadata
    #[arg(long)]
    shape_predictor_sha256: String,
    /// Directory that receives `dlib_resnet.safetensors` and `shape_predictor_5.safetensors`
    #[arg(long)]
    out_dir: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// dlib primitive decoding
// ---------------------------------------------------------------------------------------------

/// A cursor over a dlib-serialized byte stream; every error names the byte offset.
struct Reader<'a> {
    /// The whole file.
    buf: &'a [u8],
    /// Offset of the next unread byte.
    pos: usize,
}

/// A dlib `tensor`: shape (num_samples, k, nr, nc) and NCHW float data.
struct DTensor {
    /// (num_samples, k, nr, nc)
    shape: [usize; 4],
    /// Row-major (NCHW) values.
    data: Vec<f32>,
}

impl<'a> Reader<'a> {
    /// Starts reading at byte 0.
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Takes the next `n` raw bytes.
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            bail!(
                "unexpected end of file: need {n} bytes at offset {} of {}",
                self.pos,
                self.buf.len()
            );
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Takes one raw byte.
    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    /// Reads a control byte and its magnitude bytes; returns (negative, magnitude).
    fn int_parts(&mut self, max_bytes: usize, signed: bool) -> Result<(bool, u64)> {
        let at = self.pos;
        let ctrl = self.byte()?;
        let negative = ctrl & 0x80 != 0;
        ensure!(
            signed || !negative,
            "byte {at}: negative control byte {ctrl:#04x} for an unsigned integer"
        );
        ensure!(
            ctrl & 0x70 == 0,
            "byte {at}: bad integer control byte {ctrl:#04x}"
        );
        let n = (ctrl & 0x0f) as usize;
        ensure!(
            (1..=max_bytes).contains(&n),
            "byte {at}: integer of {n} bytes, at most {max_bytes} allowed"
        );
        let mag = self
            .take(n)?
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | b as u64);
        Ok((negative, mag))
    }

    /// Reads a signed integer of at most `max_bytes` bytes (sign-magnitude encoding).
    fn signed(&mut self, max_bytes: usize) -> Result<i64> {
        let at = self.pos;
        let (negative, mag) = self.int_parts(max_bytes, true)?;
        ensure!(
            mag <= i64::MAX as u64,
            "byte {at}: signed integer magnitude {mag} overflows"
        );
        Ok(if negative { -(mag as i64) } else { mag as i64 })
    }

    /// Reads a C++ `int` (4 bytes at most).
    fn int(&mut self) -> Result<i64> {
        self.signed(4)
    }

    /// Reads a C++ `long` / `long long` (8 bytes at most).
    fn long(&mut self) -> Result<i64> {
        self.signed(8)
    }

    /// Reads an `unsigned long` / `size_t`.
    fn ulong(&mut self) -> Result<u64> {
        Ok(self.int_parts(8, false)?.1)
    }

    /// Reads an unsigned count or index as `usize`.
    fn usize(&mut self) -> Result<usize> {
        let at = self.pos;
        let v = self.ulong()?;
        usize::try_from(v).with_context(|| format!("byte {at}: {v} does not fit usize"))
    }

    /// Reads a `bool` ('1' or '0').
    fn bool(&mut self) -> Result<bool> {
        let at = self.pos;
        match self.byte()? {
            b'1' => Ok(true),
            b'0' => Ok(false),
            b => bail!("byte {at}: bool must be '0' or '1', found {b:#04x}"),
        }
    }

    /// Reads a `float` stored as `float_details` (int64 mantissa, int16 exponent).
    fn float(&mut self) -> Result<f32> {
        let at = self.pos;
        let first = *self
            .buf
            .get(self.pos)
            .with_context(|| format!("unexpected end of file reading a float at offset {at}"))?;
        ensure!(
            first & 0x70 == 0,
            "byte {at}: legacy text-format float is not supported"
        );
        let m = self.long()?;
        let e = self.signed(2)?;
        match e {
            32000 => return Ok(f32::INFINITY),
            32001 => return Ok(f32::NEG_INFINITY),
            32002 => return Ok(f32::NAN),
            _ => {}
        }
        // A float's mantissa has at most 24 significant bits, so m·2^e is exact before the
        // single rounding to f32 (ldexp semantics).
        ensure!(
            m.unsigned_abs() < 1 << 24,
            "byte {at}: float mantissa {m} wider than 24 bits"
        );
        Ok(ldexp(m as f64, e as i32) as f32)
    }

    /// Reads a `std::string`.
    fn string(&mut self) -> Result<String> {
        let at = self.pos;
        let n = self.usize()?;
        ensure!(n <= 256, "byte {at}: implausible string length {n}");
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).with_context(|| format!("byte {at}: string is not UTF-8"))
    }

    /// Reads a version tag and checks it is one of `allowed`.
    fn tag(&mut self, allowed: &[&str]) -> Result<String> {
        let at = self.pos;
        let s = self.string()?;
        ensure!(
            allowed.contains(&s.as_str()),
            "byte {at}: found tag {s:?}, expected one of {allowed:?}"
        );
        Ok(s)
    }

    /// Reads four signed dimensions and checks they are non-negative.
    fn dims4(&mut self) -> Result<[usize; 4]> {
        let at = self.pos;
        let mut d = [0usize; 4];
        for x in &mut d {
            let v = self.long()?;
            ensure!(v >= 0, "byte {at}: negative tensor dimension {v}");
            *x = v as usize;
        }
        Ok(d)
    }

    /// Reads a `resizable_tensor` (version 2, shape, raw little-endian f32 data).
    fn tensor(&mut self) -> Result<DTensor> {
        let at = self.pos;
        let version = self.int()?;
        ensure!(
            version == 2,
            "byte {at}: tensor version {version}, expected 2"
        );
        let shape = self.dims4()?;
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .with_context(|| format!("byte {at}: tensor size overflows"))?;
        let raw = self.take(n.checked_mul(4).context("tensor size overflows")?)?;
        let data = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(DTensor { shape, data })
    }

    /// Reads a tensor that must be empty (training state such as `x_grad`).
    fn empty_tensor(&mut self, what: &str) -> Result<()> {
        let at = self.pos;
        let t = self.tensor()?;
        ensure!(
            t.data.is_empty(),
            "byte {at}: {what} holds {:?}, expected an empty tensor",
            t.shape
        );
        Ok(())
    }

    /// Reads an `alias_tensor` (version 1, then a shape).
    fn alias(&mut self) -> Result<[usize; 4]> {
        let at = self.pos;
        let version = self.int()?;
        ensure!(
            version == 1,
            "byte {at}: alias_tensor version {version}, expected 1"
        );
        self.dims4()
    }

    /// Reads a column vector `matrix<float,0,1>`.
    fn float_column(&mut self) -> Result<Vec<f32>> {
        let at = self.pos;
        let nr = self.long()?.unsigned_abs() as usize;
        let nc = self.long()?.unsigned_abs() as usize;
        ensure!(nc == 1, "byte {at}: column vector with {nc} columns");
        (0..nr).map(|_| self.float()).collect()
    }

    /// Fails unless every byte has been consumed.
    fn finish(&self, what: &str) -> Result<()> {
        ensure!(
            self.pos == self.buf.len(),
            "{what}: parse ended at byte {} but the file has {} bytes",
            self.pos,
            self.buf.len()
        );
        Ok(())
    }
}

/// Exact `m · 2^e` (as C's `ldexp`) for normal results.
fn ldexp(m: f64, mut e: i32) -> f64 {
    /// 2^k for k in -1022..=1023, built from its bit pattern.
    fn pow2(k: i32) -> f64 {
        f64::from_bits(((k + 1023) as u64) << 52)
    }
    let mut x = m;
    while e > 1000 {
        x *= pow2(1000);
        e -= 1000;
    }
    while e < -1000 {
        x *= pow2(-1000);
        e += 1000;
    }
    x * pow2(e)
}

// ---------------------------------------------------------------------------------------------
// The face ResNet
// ---------------------------------------------------------------------------------------------

/// One wrapper of dlib's nested network type, listed from the top (loss) down.
#[derive(Clone, Copy, Debug)]
enum Node {
    /// `add_loss_layer<loss_metric_, ...>`
    Loss,
    /// `add_layer<LAYER, ...>` with the layer's expected hyper-parameters.
    Layer(Layer),
    /// `add_tag_layer<N, ...>`
    Tag,
    /// `add_skip_layer<TAG, ...>`
    Skip,
}

/// A computational layer and what its record must contain.
#[derive(Clone, Copy, Debug)]
enum Layer {
    /// `con_`: filters, kernel size, stride, padding.
    Con {
        filters: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
    },
    /// `affine_` in CONV_MODE.
    Affine,
    /// `relu_`
    Relu,
    /// `add_prev_`
    AddPrev,
    /// `max_pool_` / `avg_pool_`: window (0 = whole image), stride, padding.
    Pool {
        max: bool,
        window: usize,
        stride: usize,
        pad: usize,
    },
    /// `fc_` without bias.
    Fc { outputs: usize },
}

/// The network's wrappers from the top (loss) down to the add_layer that holds the input.
fn resnet_topology() -> Vec<Node> {
    use Layer::*;
    use Node::Layer as L;
    let conv3 = |filters, stride: usize| {
        L(Con {
            filters,
            kernel: 3,
            stride,
            pad: usize::from(stride == 1),
        })
    };
    let mut v = vec![
        Node::Loss,
        L(Fc {
            outputs: EMBEDDING_DIM,
        }),
        L(Pool {
            max: false,
            window: 0,
            stride: 1,
            pad: 0,
        }),
    ];
    for &(n, down) in BLOCKS.iter().rev() {
        // block = affine<con<N,3,3,1,1, relu<affine<con<N,3,3,s,s, tag1<SUB>>>>>>
        let block = [
            L(Affine),
            conv3(n, 1),
            L(Relu),
            L(Affine),
            conv3(n, if down { 2 } else { 1 }),
            Node::Tag,
        ];
        if down {
            // relu<add_prev2<avg_pool<2,2,2,2, skip1<tag2<block>>>>>
            v.extend([
                L(Relu),
                L(AddPrev),
                L(Pool {
                    max: false,
                    window: 2,
                    stride: 2,
                    pad: 0,
                }),
                Node::Skip,
                Node::Tag,
            ]);
        } else {
            // relu<add_prev1<block>>
            v.extend([L(Relu), L(AddPrev)]);
        }
        v.extend(block);
    }
    v.extend([
        L(Pool {
            max: true,
            window: 3,
            stride: 2,
            pad: 0,
        }),
        L(Relu),
        L(Affine),
        L(Con {
            filters: 32,
            kernel: 7,
            stride: 2,
            pad: 0,
        }),
    ]);
    v
}

/// A parsed convolution: OIHW weights and biases.
struct Conv {
    /// [out, in, kh, kw]
    shape: [usize; 4],
    /// OIHW weights.
    weight: Vec<f32>,
    /// One bias per output channel.
    bias: Vec<f32>,
}

/// A parsed per-channel affine (folded batch norm): y = gamma·x + beta.
struct Affine {
    /// Per-channel scale.
    gamma: Vec<f32>,
    /// Per-channel shift.
    beta: Vec<f32>,
}

/// Everything the ResNet file holds that inference needs.
struct Resnet {
    /// Convolutions in forward order (input conv first).
    convs: Vec<Conv>,
    /// Affines in forward order, one after each convolution.
    affines: Vec<Affine>,
    /// fc weights as stored by dlib: (in, out) row-major, y = x·W.
    fc_in_out: Vec<f32>,
    /// fc input width.
    fc_inputs: usize,
    /// Input means (R, G, B).
    means: [f32; 3],
    /// Loss margin.
    margin: f32,
    /// Same-person distance threshold.
    dist_thresh: f32,
    /// Wrapper records parsed (input, add_layers, tags, skips, loss).
    records: usize,
}

/// Reads a `con_` record and checks it against the expected hyper-parameters.
fn read_con(
    r: &mut Reader,
    filters: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    inputs: usize,
) -> Result<Conv> {
    let tag = r.tag(&["con_4", "con_5", "con_6"])?;
    let params = r.tensor()?;
    let at = r.pos;
    let mut hp = [0i64; 7];
    for x in &mut hp {
        *x = r.long()?;
    }
    let want = [filters, kernel, kernel, stride, stride, pad, pad].map(|x| x as i64);
    ensure!(
        hp == want,
        "byte {at}: {tag} (num_filters, nr, nc, stride_y, stride_x, padding_y, padding_x) = {hp:?}, expected {want:?}"
    );
    let fshape = r.alias()?;
    let bshape = r.alias()?;
    ensure!(
        fshape == [filters, inputs, kernel, kernel],
        "{tag} filters alias {fshape:?}, expected {:?}",
        [filters, inputs, kernel, kernel]
    );
    ensure!(
        bshape == [1, filters, 1, 1],
        "{tag} biases alias {bshape:?}"
    );
    for _ in 0..4 {
        r.float()?; // lr_mult, wd_mult, bias_lr_mult, bias_wd_mult
    }
    if tag != "con_4" {
        ensure!(r.bool()?, "{tag} without bias is not supported");
    }
    if tag == "con_6" {
        ensure!(!r.bool()?, "{tag} with a fused relu is not supported");
    }
    let nw = filters * inputs * kernel * kernel;
    ensure!(
        params.data.len() == nw + filters,
        "{tag} params hold {} floats, expected {}",
        params.data.len(),
        nw + filters
    );
    let mut weight = params.data;
    let bias = weight.split_off(nw);
    Ok(Conv {
        shape: fshape,
        weight,
        bias,
    })
}

/// Reads an `affine_` record for `channels` channels.
fn read_affine(r: &mut Reader, channels: usize) -> Result<Affine> {
    let at = r.pos;
    let tag = r.string()?;
    ensure!(
        !tag.starts_with("bn_"),
        "byte {at}: unfolded batch norm {tag:?} is not supported"
    );
    ensure!(
        tag == "affine_" || tag == "affine_2",
        "byte {at}: found tag {tag:?}, expected affine_"
    );
    let params = r.tensor()?;
    let g = r.alias()?;
    let b = r.alias()?;
    ensure!(
        g == [1, channels, 1, 1] && b == g,
        "{tag} gamma/beta aliases {g:?}/{b:?}, expected [1,{channels},1,1]"
    );
    let mode = r.long()?;
    ensure!(mode == 0, "{tag} mode {mode}, expected 0 (CONV_MODE)");
    if tag == "affine_2" {
        ensure!(!r.bool()?, "disabled {tag} is not supported");
    }
    ensure!(
        params.data.len() == 2 * channels,
        "{tag} params hold {} floats, expected {}",
        params.data.len(),
        2 * channels
    );
    let mut gamma = params.data;
    let beta = gamma.split_off(channels);
    Ok(Affine { gamma, beta })
}

/// Parses the whole ResNet file, checking the structure, and stops exactly at its last byte.
fn parse_resnet(buf: &[u8]) -> Result<Resnet> {
    let topo = resnet_topology();
    let mut r = Reader::new(buf);
    let bottom = topo.len() - 1;

    // 1. Version integers, top down (the loss also writes its details here).
    let (mut margin, mut dist_thresh) = (f32::NAN, f32::NAN);
    let mut versions = Vec::with_capacity(topo.len());
    for (i, node) in topo.iter().enumerate() {
        let at = r.pos;
        let v = r.int()?;
        versions.push(v);
        let ok = match node {
            Node::Loss => v == 1,
            Node::Tag | Node::Skip => v == 1,
            Node::Layer(_) if i == bottom => v == 3 || v == 2,
            Node::Layer(_) => v == 2 || v == 1,
        };
        ensure!(ok, "byte {at}: wrapper #{i} ({node:?}) has version {v}");
        if let Node::Loss = node {
            let tag = r.tag(&["loss_metric_", "loss_metric_2"])?;
            (margin, dist_thresh) = if tag == "loss_metric_2" {
                (r.float()?, r.float()?)
            } else {
                (0.1, 0.75)
            };
        }
    }
    ensure!(
        margin == EXPECTED_MARGIN,
        "loss margin {margin}, expected {EXPECTED_MARGIN}"
    );
    ensure!(
        dist_thresh == EXPECTED_DIST_THRESH,
        "dist_thresh {dist_thresh}, expected {EXPECTED_DIST_THRESH}"
    );

    // 2. The input layer.
    r.tag(&["input_rgb_image_sized"])?;
    let means = [r.float()?, r.float()?, r.float()?];
    ensure!(
        means == EXPECTED_MEANS,
        "input means {means:?}, expected {EXPECTED_MEANS:?}"
    );
    let (nr, nc) = (r.ulong()?, r.ulong()?);
    ensure!(
        nr == EXPECTED_INPUT_SIZE && nc == EXPECTED_INPUT_SIZE,
        "input size {nr}x{nc}, expected 150x150"
    );

    // 3. Layer records, bottom up.
    let mut convs = Vec::new();
    let mut affines = Vec::new();
    let mut fc = None;
    let mut channels = 3usize; // channels flowing into the next conv
    let mut records = 1usize; // the input layer
    for (i, node) in topo.iter().enumerate().rev() {
        records += 1;
        let Node::Layer(layer) = node else { continue };
        let at = r.pos;
        match *layer {
            Layer::Con {
                filters,
                kernel,
                stride,
                pad,
            } => {
                let conv = read_con(&mut r, filters, kernel, stride, pad, channels)
                    .with_context(|| format!("convolution #{} at byte {at}", convs.len()))?;
                channels = filters;
                convs.push(conv);
            }
            Layer::Affine => {
                let a = read_affine(&mut r, channels)
                    .with_context(|| format!("affine #{} at byte {at}", affines.len()))?;
                affines.push(a);
            }
            Layer::Relu => {
                let tag = r.tag(&["relu_", "relu_2"])?;
                if tag == "relu_2" {
                    ensure!(!r.bool()?, "byte {at}: disabled relu is not supported");
                }
            }
            Layer::AddPrev => {
                r.tag(&["add_prev_"])?;
            }
            Layer::Pool {
                max,
                window,
                stride,
                pad,
            } => {
                let tag = r.tag(&[if max { "max_pool_2" } else { "avg_pool_2" }])?;
                let mut hp = [0i64; 6];
                for x in &mut hp {
                    *x = r.long()?;
                }
                let want = [window, window, stride, stride, pad, pad].map(|x| x as i64);
                ensure!(hp == want, "byte {at}: {tag} (nr, nc, stride_y, stride_x, pad_y, pad_x) = {hp:?}, expected {want:?}");
            }
            Layer::Fc { outputs } => {
                let tag = r.tag(&["fc_2", "fc_3"])?;
                let (no, ni) = (r.usize()?, r.usize()?);
                ensure!(
                    no == outputs && ni == channels,
                    "{tag}: {ni} -> {no}, expected {channels} -> {outputs}"
                );
                let params = r.tensor()?;
                let w = r.alias()?;
                ensure!(
                    w[0] == ni && w[1] == no && w[2] * w[3] == 1,
                    "{tag} weights alias {w:?}, expected ({ni},{no},1,1)"
                );
                r.alias()?; // biases (unused with NO_BIAS)
                let bias_mode = r.long()?;
                ensure!(
                    bias_mode == 1,
                    "{tag} bias_mode {bias_mode}, expected 1 (NO_BIAS)"
                );
                for _ in 0..4 {
                    r.float()?; // lr, wd, bias_lr, bias_wd multipliers
                }
                if tag == "fc_3" {
                    ensure!(
                        !r.bool()?,
                        "{tag} with use_bias is inconsistent with NO_BIAS"
                    );
                }
                ensure!(
                    params.data.len() == ni * no,
                    "{tag} params hold {} floats, expected {}",
                    params.data.len(),
                    ni * no
                );
                fc = Some(params.data);
            }
        }
        // Training state of the add_layer wrapper (all empty in a released model).
        r.bool()?;
        r.bool()?;
        r.bool()?;
        r.empty_tensor("x_grad")?;
        r.empty_tensor("cached_output")?;
        if i == bottom {
            r.empty_tensor("grad_final")?;
            if versions[i] == 3 {
                r.ulong()?; // _sample_expansion_factor
            }
        } else if versions[i] == 2 {
            r.empty_tensor("params_grad")?;
        }
    }
    r.finish("ResNet")?;

    ensure!(
        convs.len() == 1 + 2 * BLOCKS.len(),
        "{} convolutions",
        convs.len()
    );
    ensure!(
        affines.len() == convs.len(),
        "{} affines for {} convolutions",
        affines.len(),
        convs.len()
    );
    let fc_in_out = fc.context("no fc layer")?;
    Ok(Resnet {
        convs,
        affines,
        fc_in_out,
        fc_inputs: channels,
        means,
        margin,
        dist_thresh,
        records,
    })
}

// ---------------------------------------------------------------------------------------------
// The shape predictor
// ---------------------------------------------------------------------------------------------

/// A parsed `shape_predictor`, flattened into fixed-size arrays.
struct ShapePredictor {
    /// (x0, y0, x1, y1, ...) in box-normalised coordinates.
    initial_shape: Vec<f32>,
    /// [cascade, tree, node, (idx1, idx2)]
    split_idx: Vec<u32>,
    /// [cascade, tree, node]
    split_thresh: Vec<f32>,
    /// [cascade, tree, leaf, 2·parts]
    leaf_values: Vec<f32>,
    /// [cascade, pixel]
    anchor_idx: Vec<u32>,
    /// [cascade, pixel, (dx, dy)]
    deltas: Vec<f32>,
}

/// Reads an unsigned count and checks it equals `want`.
fn expect_count(r: &mut Reader, want: usize, what: impl Fn() -> String) -> Result<()> {
    let at = r.pos;
    let n = r.usize()?;
    ensure!(
        n == want,
        "byte {at}: {} has {n} entries, expected {want}",
        what()
    );
    Ok(())
}

/// Reads an unsigned index below `limit` as u32.
fn index_below(r: &mut Reader, limit: usize, what: &str) -> Result<u32> {
    let at = r.pos;
    let v = r.usize()?;
    ensure!(v < limit, "byte {at}: {what} {v} out of range 0..{limit}");
    Ok(v as u32)
}

/// Parses the whole shape predictor file and stops exactly at its last byte.
fn parse_shape_predictor(buf: &[u8]) -> Result<ShapePredictor> {
    let mut r = Reader::new(buf);
    let version = r.int()?;
    ensure!(
        version == 1,
        "shape_predictor version {version}, expected 1"
    );
    let initial_shape = r.float_column()?;
    ensure!(
        initial_shape.len() == 2 * SP_PARTS,
        "initial_shape has {} values, expected {}",
        initial_shape.len(),
        2 * SP_PARTS
    );

    let mut split_idx = Vec::with_capacity(SP_CASCADES * SP_TREES * SP_SPLITS * 2);
    let mut split_thresh = Vec::with_capacity(SP_CASCADES * SP_TREES * SP_SPLITS);
    let mut leaf_values = Vec::with_capacity(SP_CASCADES * SP_TREES * SP_LEAVES * 2 * SP_PARTS);
    expect_count(&mut r, SP_CASCADES, || "forests".into())?;
    for c in 0..SP_CASCADES {
        expect_count(&mut r, SP_TREES, || format!("cascade {c}"))?;
        for t in 0..SP_TREES {
            expect_count(&mut r, SP_SPLITS, || {
                format!("splits of cascade {c} tree {t}")
            })?;
            for _ in 0..SP_SPLITS {
                split_idx.push(index_below(&mut r, SP_PIXELS, "split feature index")?);
                split_idx.push(index_below(&mut r, SP_PIXELS, "split feature index")?);
                split_thresh.push(r.float()?);
            }
            expect_count(&mut r, SP_LEAVES, || {
                format!("leaves of cascade {c} tree {t}")
            })?;
            for l in 0..SP_LEAVES {
                let leaf = r.float_column()?;
                ensure!(
                    leaf.len() == 2 * SP_PARTS,
                    "cascade {c} tree {t} leaf {l} has {} values",
                    leaf.len()
                );
                leaf_values.extend(leaf);
            }
        }
    }
    let mut anchor_idx = Vec::with_capacity(SP_CASCADES * SP_PIXELS);
    expect_count(&mut r, SP_CASCADES, || "anchor_idx".into())?;
    for c in 0..SP_CASCADES {
        expect_count(&mut r, SP_PIXELS, || format!("anchor_idx of cascade {c}"))?;
        for _ in 0..SP_PIXELS {
            anchor_idx.push(index_below(&mut r, SP_PARTS, "anchor index")?);
        }
    }
    let mut deltas = Vec::with_capacity(SP_CASCADES * SP_PIXELS * 2);
    expect_count(&mut r, SP_CASCADES, || "deltas".into())?;
    for c in 0..SP_CASCADES {
        expect_count(&mut r, SP_PIXELS, || format!("deltas of cascade {c}"))?;
        for _ in 0..SP_PIXELS {
            deltas.push(r.float()?);
            deltas.push(r.float()?);
        }
    }
    r.finish("shape predictor")?;
    Ok(ShapePredictor {
        initial_shape,
        split_idx,
        split_thresh,
        leaf_values,
        anchor_idx,
        deltas,
    })
}

// ---------------------------------------------------------------------------------------------
// safetensors, written by hand for a byte-for-byte reproducible layout
// ---------------------------------------------------------------------------------------------

/// Tensor contents with their safetensors dtype.
enum Data {
    /// `F32`
    F32(Vec<f32>),
    /// `U32`
    U32(Vec<u32>),
}

/// One named tensor to write.
struct Entry {
    /// Tensor name.
    name: String,
    /// Row-major shape.
    shape: Vec<usize>,
    /// Values.
    data: Data,
}

impl Entry {
    /// An F32 tensor; panics if `data` does not fill `shape` (a bug in this program).
    fn f32(name: impl Into<String>, shape: &[usize], data: Vec<f32>) -> Entry {
        let e = Entry {
            name: name.into(),
            shape: shape.to_vec(),
            data: Data::F32(data),
        };
        e.check();
        e
    }

    /// A U32 tensor; panics if `data` does not fill `shape`.
    fn u32(name: impl Into<String>, shape: &[usize], data: Vec<u32>) -> Entry {
        let e = Entry {
            name: name.into(),
            shape: shape.to_vec(),
            data: Data::U32(data),
        };
        e.check();
        e
    }

    /// Number of elements.
    fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::U32(v) => v.len(),
        }
    }

    /// Asserts the element count matches the shape.
    fn check(&self) {
        assert_eq!(
            self.len(),
            self.shape.iter().product::<usize>(),
            "tensor {} does not match its shape",
            self.name
        );
    }

    /// safetensors dtype string.
    fn dtype(&self) -> &'static str {
        match self.data {
            Data::F32(_) => "F32",
            Data::U32(_) => "U32",
        }
    }

    /// Little-endian bytes.
    fn bytes(&self) -> Vec<u8> {
        match &self.data {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// Serialises `entries` as safetensors: keys sorted, `__metadata__` (sorted) first, compact
/// JSON padded with spaces to a multiple of 8, data in header order with contiguous offsets.
fn safetensors_bytes(entries: &mut [Entry], metadata: &[(&str, String)]) -> Result<Vec<u8>> {
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for w in entries.windows(2) {
        ensure!(
            w[0].name != w[1].name,
            "duplicate tensor name {}",
            w[0].name
        );
    }
    let mut meta: Vec<_> = metadata.to_vec();
    meta.sort_by(|a, b| a.0.cmp(b.0));
    let q = |s: &str| serde_json::to_string(s).expect("string serialisation cannot fail");

    let mut header = String::from("{");
    header.push_str(&q("__metadata__"));
    header.push_str(":{");
    let fields: Vec<String> = meta
        .iter()
        .map(|(k, v)| format!("{}:{}", q(k), q(v)))
        .collect();
    header.push_str(&fields.join(","));
    header.push('}');
    let mut blobs = Vec::with_capacity(entries.len());
    let mut offset = 0usize;
    for e in entries.iter() {
        let blob = e.bytes();
        let shape: Vec<String> = e.shape.iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            ",{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            q(&e.name),
            e.dtype(),
            shape.join(","),
            offset,
            offset + blob.len()
        ));
        offset += blob.len();
        blobs.push(blob);
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for b in blobs {
        out.extend_from_slice(&b);
    }
    Ok(out)
}

/// Writes `bytes` to `path` atomically (temporary file, then rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Reads `path` back through candle and checks every tensor equals what was written.
fn verify_with_candle(path: &Path, entries: &[Entry]) -> Result<()> {
    use candle_core::DType;
    let loaded = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .with_context(|| format!("candle cannot load {}", path.display()))?;
    ensure!(
        loaded.len() == entries.len(),
        "{}: candle sees {} tensors, wrote {}",
        path.display(),
        loaded.len(),
        entries.len()
    );
    for e in entries {
        let t = loaded
            .get(&e.name)
            .with_context(|| format!("{}: candle lacks {}", path.display(), e.name))?;
        ensure!(
            t.dims() == e.shape.as_slice(),
            "{}: shape {:?} != {:?}",
            e.name,
            t.dims(),
            e.shape
        );
        let same = match &e.data {
            Data::F32(v) => {
                t.dtype() == DType::F32
                    && t.flatten_all()?
                        .to_vec1::<f32>()?
                        .iter()
                        .zip(v)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
            }
            Data::U32(v) => t.dtype() == DType::U32 && &t.flatten_all()?.to_vec1::<u32>()? == v,
        };
        ensure!(
            same,
            "{}: candle reads different values for {}",
            path.display(),
            e.name
        );
    }
    Ok(())
}

/// Converts the ResNet into safetensors entries (forward-order names).
fn resnet_entries(net: Resnet) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut convs = net.convs.into_iter();
    let mut affines = net.affines.into_iter();
    // Names: the input stage is `conv1`/`affine1`; block i has `layers.i.conv{1,2}`/`affine{1,2}`.
    let mut add = |name: String, conv: Conv, aff: Affine, idx: &str| {
        let k = conv.shape[0];
        entries.push(Entry::f32(
            format!("{name}conv{idx}.weight"),
            &conv.shape,
            conv.weight,
        ));
        entries.push(Entry::f32(format!("{name}conv{idx}.bias"), &[k], conv.bias));
        entries.push(Entry::f32(
            format!("{name}affine{idx}.weight"),
            &[k],
            aff.gamma,
        ));
        entries.push(Entry::f32(
            format!("{name}affine{idx}.bias"),
            &[k],
            aff.beta,
        ));
    };
    let mut next = || -> Result<(Conv, Affine)> {
        Ok((
            convs.next().context("missing conv")?,
            affines.next().context("missing affine")?,
        ))
    };
    let (c, a) = next()?;
    add(String::new(), c, a, "1");
    for i in 0..BLOCKS.len() {
        for idx in ["1", "2"] {
            let (c, a) = next()?;
            add(format!("layers.{i}."), c, a, idx);
        }
    }
    // dlib: (in, out) row-major, y = x·W. torch Linear: weight [out, in], y = x·Wᵀ.
    let (ni, no) = (net.fc_inputs, EMBEDDING_DIM);
    let mut fc = vec![0f32; ni * no];
    for i in 0..ni {
        for o in 0..no {
            fc[o * ni + i] = net.fc_in_out[i * no + o];
        }
    }
    entries.push(Entry::f32("fc.weight", &[no, ni], fc));
    Ok(entries)
}

/// Converts the shape predictor into safetensors entries.
fn shape_predictor_entries(sp: ShapePredictor) -> Vec<Entry> {
    vec![
        Entry::f32("initial_shape", &[2 * SP_PARTS], sp.initial_shape),
        Entry::u32(
            "split_idx",
            &[SP_CASCADES, SP_TREES, SP_SPLITS, 2],
            sp.split_idx,
        ),
        Entry::f32(
            "split_thresh",
            &[SP_CASCADES, SP_TREES, SP_SPLITS],
            sp.split_thresh,
        ),
        Entry::f32(
            "leaf_values",
            &[SP_CASCADES, SP_TREES, SP_LEAVES, 2 * SP_PARTS],
            sp.leaf_values,
        ),
        Entry::u32("anchor_idx", &[SP_CASCADES, SP_PIXELS], sp.anchor_idx),
        Entry::f32("deltas", &[SP_CASCADES, SP_PIXELS, 2], sp.deltas),
    ]
}

/// Writes one output file, reads it back with candle and prints a summary line.
fn emit(path: &Path, mut entries: Vec<Entry>, metadata: &[(&str, String)]) -> Result<()> {
    let values: usize = entries.iter().map(Entry::len).sum();
    let bytes = safetensors_bytes(&mut entries, metadata)?;
    write_atomic(path, &bytes)?;
    verify_with_candle(path, &entries)?;
    println!(
        "wrote {}: {} tensors, {values} values, {} bytes (read back by candle: identical)",
        path.display(),
        entries.len(),
        bytes.len()
    );
    Ok(())
}

/// Checks a hex sha256 argument.
fn check_sha(s: &str) -> Result<String> {
    ensure!(
        s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "not a lowercase hex sha256: {s}"
    );
    Ok(s.to_string())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let resnet_sha = check_sha(&args.resnet_sha256)?;
    let sp_sha = check_sha(&args.shape_predictor_sha256)?;

    // ResNet.
    let t0 = std::time::Instant::now();
    let buf = std::fs::read(&args.resnet)
        .with_context(|| format!("reading {}", args.resnet.display()))?;
    let net = parse_resnet(&buf).with_context(|| format!("parsing {}", args.resnet.display()))?;
    let params: usize = net
        .convs
        .iter()
        .map(|c| c.weight.len() + c.bias.len())
        .sum::<usize>()
        + net
            .affines
            .iter()
            .map(|a| a.gamma.len() + a.beta.len())
            .sum::<usize>()
        + net.fc_in_out.len();
    ensure!(
        params == EXPECTED_RESNET_PARAMS,
        "ResNet has {params} parameters, expected {EXPECTED_RESNET_PARAMS}"
    );
    println!(
        "parsed {} ({} bytes, {} records, {} convs, {} affines, fc {}x{}, {params} parameters) in {:.2?}",
        args.resnet.display(),
        buf.len(),
        net.records,
        net.convs.len(),
        net.affines.len(),
        net.fc_inputs,
        EMBEDDING_DIM,
        t0.elapsed()
    );
    let m = net.means;
    let meta = [
        ("source", SOURCE_PACKAGE.to_string()),
        ("source_file", RESNET_MEMBER.to_string()),
        ("source_sha256", resnet_sha),
        ("licence", LICENCE.to_string()),
        ("input_means_rgb", format!("{},{},{}", m[0], m[1], m[2])),
        ("input_size", EXPECTED_INPUT_SIZE.to_string()),
        ("input_scale", "1/256".to_string()),
        ("dist_thresh", net.dist_thresh.to_string()),
        ("margin", net.margin.to_string()),
        ("parameters", params.to_string()),
        (
            "layout",
            "conv*.weight [out,in,kh,kw] cross-correlation; 7x7/2 and strided 3x3/2 convs pad 0, 3x3/1 pad 1; \
             affine*: y = weight*x + bias per channel (folded batch norm); fc.weight [out,in], y = x W^T, no bias"
                .to_string(),
        ),
        ("converter", "examples/convert_dlib.rs".to_string()),
    ];
    let resnet_meta = meta;
    let resnet = resnet_entries(net)?;

    // Shape predictor (parsed before anything is written, so a bad input leaves no output).
    let t0 = std::time::Instant::now();
    let buf = std::fs::read(&args.shape_predictor)
        .with_context(|| format!("reading {}", args.shape_predictor.display()))?;
    let sp = parse_shape_predictor(&buf)
        .with_context(|| format!("parsing {}", args.shape_predictor.display()))?;
    println!(
        "parsed {} ({} bytes: {SP_CASCADES} cascades x {SP_TREES} trees, {SP_SPLITS} splits, {SP_LEAVES} leaves of {} values, {SP_PIXELS} pixels) in {:.2?}",
        args.shape_predictor.display(),
        buf.len(),
        2 * SP_PARTS,
        t0.elapsed()
    );
    let meta = [
        ("source", SOURCE_PACKAGE.to_string()),
        ("source_file", SP_MEMBER.to_string()),
        ("source_sha256", sp_sha),
        ("licence", LICENCE.to_string()),
        ("parts", SP_PARTS.to_string()),
        (
            "layout",
            "initial_shape (x0,y0,...) box-normalised; split_idx [cascade,tree,node,(idx1,idx2)], \
             go to 2i+1 if feat[idx1]-feat[idx2] > split_thresh else 2i+2, leaf = i-15; \
             leaf_values [cascade,tree,leaf,(x0,y0,...)] added to the shape; \
             anchor_idx [cascade,pixel]; deltas [cascade,pixel,(dx,dy)] in normalised shape space"
                .to_string(),
        ),
        ("converter", "examples/convert_dlib.rs".to_string()),
    ];
    let sp_meta = meta;

    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;

    emit(
        &args.out_dir.join("dlib_resnet.safetensors"),
        resnet,
        &resnet_meta,
    )?;
    emit(
        &args.out_dir.join("shape_predictor_5.safetensors"),
        shape_predictor_entries(sp),
        &sp_meta,
    )?;
    Ok(())
}
