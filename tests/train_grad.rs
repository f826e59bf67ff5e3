//! The trainable whole dlib ResNet (`facekit train --train-layers all`): it computes what the
//! inference network computes (to 1e-4 on dlib's chips: the committed ones always, all 79
//! golden ones with ../shared), and its backward pass, max-pool included, agrees with finite
//! differences (directional derivatives in f64 for every layer group). A training step through
//! the device-generic ops a GPU run uses (candle's convolution, the generic max-pool), run here
//! on the CPU, gives the CPU kernels' loss and gradients to rounding, for dlib's ResNet and for
//! the `--arch` network.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{fixture, read_json, shared};
use facekit::embed::dlib_resnet::{normalise_chip, DlibResNet, CHIP_SIZE};
use facekit::models::{ModelSource, DLIB_RESNET};
use facekit::train::arch::{Arch, Net};
use facekit::train::loss::l2_normalize;
use facekit::train::margin::MarginHead;
use facekit::train::resnet::ResNet;
use facekit::train::{with_generic_ops, LossKind, Trainable};
use facekit::Rng;

fn chips_tensor(paths: &[std::path::PathBuf], dtype: DType) -> Tensor {
    let per = 3 * CHIP_SIZE * CHIP_SIZE;
    let mut data = vec![0f32; paths.len() * per];
    for (p, dst) in paths.iter().zip(data.chunks_mut(per)) {
        let chip = image::open(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .to_rgb8();
        normalise_chip(chip.as_raw(), dst);
    }
    Tensor::from_vec(data, (paths.len(), 3, CHIP_SIZE, CHIP_SIZE), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// The largest L2 distance between the two networks' embeddings of `paths`.
fn worst_distance(paths: &[std::path::PathBuf]) -> f32 {
    let vb = ModelSource::Embedded
        .var_builder(DLIB_RESNET, &Device::Cpu)
        .unwrap();
    let inference = DlibResNet::new(vb).unwrap();
    let trainable = ResNet::pretrained(&ModelSource::Embedded).unwrap();
    let mut worst = 0f32;
    for chunk in paths.chunks(8) {
        let x = chips_tensor(chunk, DType::F32);
        let want = inference.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        let (b, c, h, w) = x.dims4().unwrap();
        let views = x.reshape((b, 1, c, h, w)).unwrap();
        for got in [
            trainable.forward(&views).unwrap(),
            trainable.evaluate(&views).unwrap(),
        ] {
            for (g, w) in got.to_vec2::<f32>().unwrap().iter().zip(&want) {
                let d = g
                    .iter()
                    .zip(w)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f32>()
                    .sqrt();
                worst = worst.max(d);
            }
        }
    }
    worst
}

#[test]
fn trainable_resnet_matches_inference_on_committed_chips() {
    let dir = fixture("dlib_chips");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 4, "{}", dir.display());
    let worst = worst_distance(&paths);
    eprintln!(
        "trainable vs inference ResNet, {} committed chips: largest L2 {worst:.2e}",
        paths.len()
    );
    assert!(worst < 1e-4, "{worst}");
}

#[test]
fn trainable_resnet_matches_inference_on_golden_chips() {
    let Some(shared) = shared("trainable_resnet_matches_inference_on_golden_chips") else {
        return;
    };
    let json = read_json(&shared.join("golden/dlib_chips.json"));
    let paths: Vec<_> = json["chips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| shared.join("golden").join(c["chip"].as_str().unwrap()))
        .collect();
    assert_eq!(paths.len(), 79);
    let worst = worst_distance(&paths);
    eprintln!("trainable vs inference ResNet, 79 golden chips: largest L2 {worst:.2e}");
    assert!(worst < 1e-4, "{worst}");
}

/// Directional derivatives of `sum(R * embedding)` along random directions of each layer
/// group (and of all variables at once), analytic (backward pass) against central finite
/// differences, all in f64 on one chip and its mirror image (flip averaging included).
#[test]
fn whole_network_backward_matches_finite_differences() {
    let net = ResNet::pretrained_as(&ModelSource::Embedded, DType::F64).unwrap();
    let x = chips_tensor(&[fixture("dlib_chips/2008_001322_0.png")], DType::F64);
    let x = Tensor::cat(&[&x, &x.flip(&[3]).unwrap()], 0)
        .unwrap()
        .reshape((1, 2, 3, CHIP_SIZE, CHIP_SIZE))
        .unwrap();
    let mut rng = Rng::new(17);
    let r: Vec<f64> = (0..128).map(|_| rng.normal()).collect();
    let r = Tensor::from_vec(r, (1, 128), &Device::Cpu).unwrap();
    let loss =
        |net: &ResNet| -> Tensor { (net.forward(&x).unwrap() * &r).unwrap().sum_all().unwrap() };
    let grads = loss(&net).backward().unwrap();
    type Member = fn(&str) -> bool;
    let groups: [(&str, Member); 6] = [
        ("stem (conv 7x7, affine)", |n| {
            !n.starts_with("layers.") && n != "fc.weight"
        }),
        ("block 0", |n| n.starts_with("layers.0.")),
        ("block 3 (down)", |n| n.starts_with("layers.3.")),
        ("block 13 (down)", |n| n.starts_with("layers.13.")),
        ("fc", |n| n == "fc.weight"),
        ("all variables", |_| true),
    ];
    let originals: Vec<Tensor> = net
        .named_vars()
        .map(|(_, v)| v.as_tensor().copy().unwrap())
        .collect();
    let mut worst = 0f64;
    for (label, member) in groups {
        // A random direction, each tensor's part scaled to that tensor's RMS value.
        let mut analytic = 0f64;
        let mut dirs = Vec::new();
        for (name, var) in net.named_vars() {
            if !member(name) {
                dirs.push(None);
                continue;
            }
            let t = var.as_tensor();
            let rms = (t
                .sqr()
                .unwrap()
                .mean_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap())
            .sqrt()
            .max(1e-3);
            let d: Vec<f64> = (0..t.elem_count()).map(|_| rng.normal() * rms).collect();
            let d = Tensor::from_vec(d, t.shape(), &Device::Cpu).unwrap();
            let g = grads.get(t).expect("every variable gets a gradient");
            analytic += (g * &d)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            dirs.push(Some(d));
        }
        // The network is piecewise linear (relu, max-pool): steps of 1e-4 to 1e-6 (relative)
        // already cross kinks (errors of 1e-3 measured); 1e-8 stays inside one linear piece
        // while f64 rounding stays near 1e-8.
        let eps = 1e-8;
        let at = |sign: f64| -> f64 {
            for ((_, var), (orig, d)) in net.named_vars().zip(originals.iter().zip(&dirs)) {
                if let Some(d) = d {
                    var.set(&(orig + (d * (sign * eps)).unwrap()).unwrap())
                        .unwrap();
                }
            }
            loss(&net).to_scalar::<f64>().unwrap()
        };
        let numeric = (at(1.0) - at(-1.0)) / (2.0 * eps);
        for ((_, var), orig) in net.named_vars().zip(&originals) {
            var.set(orig).unwrap();
        }
        let rel = (numeric - analytic).abs() / numeric.abs().max(analytic.abs()).max(1e-12);
        eprintln!(
            "whole ResNet backward, {label}: analytic {analytic:.6e}, finite differences \
             {numeric:.6e}, relative error {rel:.2e}"
        );
        worst = worst.max(rel);
    }
    assert!(worst < 1e-5, "relative error {worst}");
}

/// The loss and every variable's gradient of one training step of `model` on `x` (the margin
/// softmax `kind` with `head`, as `facekit train` computes it on L2-normalised embeddings).
fn step(
    model: &dyn Trainable,
    head: &MarginHead,
    x: &Tensor,
    labels: &[u32],
    kind: LossKind,
) -> (f32, Vec<Vec<f32>>) {
    let emb = l2_normalize(&model.forward(x).unwrap()).unwrap();
    let loss = head.loss(&emb, labels, kind).unwrap().loss;
    let grads = loss.backward().unwrap();
    let mut vars = model.vars();
    vars.push(head.var());
    let g = vars
        .iter()
        .map(|v| {
            grads
                .get(v.as_tensor())
                .expect("every variable gets a gradient")
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect();
    (loss.to_scalar::<f32>().unwrap(), g)
}

/// The CPU step and the generic one: the same loss, the same gradients to rounding (relative L2
/// error 1e-5 over all variables, ~1e-4 in each), and not the same bits (the generic ops did
/// run). Returns the largest error in one variable.
fn compare_paths(
    what: &str,
    model: &dyn Trainable,
    head: &MarginHead,
    x: &Tensor,
    labels: &[u32],
    kind: LossKind,
) -> f64 {
    let (cpu_loss, cpu) = step(model, head, x, labels, kind);
    let (gen_loss, generic) = with_generic_ops(|| step(model, head, x, labels, kind));
    let loss_err = ((cpu_loss - gen_loss) / cpu_loss).abs() as f64;
    let (mut worst, mut diffs, mut norms) = (0f64, 0f64, 0f64);
    for (a, b) in cpu.iter().zip(&generic) {
        let diff = a
            .iter()
            .zip(b)
            .map(|(p, q)| ((p - q) as f64).powi(2))
            .sum::<f64>();
        let norm = a.iter().map(|p| (*p as f64).powi(2)).sum::<f64>();
        worst = worst.max((diff / norm.max(1e-30)).sqrt());
        (diffs, norms) = (diffs + diff, norms + norm);
    }
    let overall = (diffs / norms).sqrt();
    eprintln!(
        "{what}: generic vs CPU ops, loss {cpu_loss:.6} vs {gen_loss:.6} (relative {loss_err:.1e}), \
         relative gradient error {overall:.2e} overall, at most {worst:.2e} in one of {} \
         variables",
        cpu.len()
    );
    assert!(loss_err < 1e-5, "{what}: loss {cpu_loss} vs {gen_loss}");
    assert!(overall < 1e-5, "{what}: gradient error {overall}");
    // A scalar branch gain's gradient sums a whole activation map, with cancellation: measured
    // 4.5e-5 for one of resnet18-tiny's.
    assert!(
        worst < 2e-4,
        "{what}: gradient error {worst} in one variable"
    );
    assert!(
        cpu != generic,
        "{what}: the generic path ran the CPU kernels"
    );
    worst
}

/// Four committed chips of two faces, `[4, 1, 3, 150, 150]` f32, labels `[0, 0, 1, 1]`.
fn four_chips() -> (Tensor, Vec<u32>) {
    let paths: Vec<_> = [
        "2008_001322_0.png",
        "2008_001322_1.png",
        "2008_001322_2.png",
        "Tom_Cruise_avp_2014_4_0.png",
    ]
    .iter()
    .map(|f| fixture(&format!("dlib_chips/{f}")))
    .collect();
    let x = chips_tensor(&paths, DType::F32)
        .reshape((4, 1, 3, CHIP_SIZE, CHIP_SIZE))
        .unwrap();
    (x, vec![0, 0, 1, 1])
}

/// Seeded random unit class weights for identities 0 and 1 of size `dim`.
fn two_classes(dim: usize) -> MarginHead {
    let mut rng = Rng::new(23);
    let mut w = Vec::new();
    for _ in 0..2 {
        let v: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        w.extend(v.iter().map(|a| a / n));
    }
    MarginHead::new(w, &[0, 1], dim).unwrap()
}

/// `--train-layers all` (dlib's ResNet, ArcFace, the default there) through the ops a GPU run
/// uses equals the CPU kernels' step.
#[test]
fn generic_ops_train_the_resnet_as_the_cpu_kernels_do() {
    let net = ResNet::pretrained(&ModelSource::Embedded).unwrap();
    let (x, labels) = four_chips();
    let head = two_classes(128);
    let kind = LossKind::ArcFace {
        scale: 30.0,
        margin: 0.3,
    };
    compare_paths("dlib ResNet, ArcFace", &net, &head, &x, &labels, kind);
}

/// `--arch resnet18-tiny` (its default normalised softmax), from its seeded start, through the
/// ops a GPU run uses equals the CPU kernels' step.
#[test]
fn generic_ops_train_the_arch_network_as_the_cpu_kernels_do() {
    let arch = Arch::by_name("resnet18-tiny").unwrap();
    let net = Net::init(arch, 5, DType::F32).unwrap();
    let (x, labels) = four_chips();
    net.center_output(&x).unwrap();
    let head = two_classes(arch.dim);
    let kind = LossKind::CosFace {
        scale: 16.0,
        margin: 0.0,
    };
    compare_paths(
        "resnet18-tiny, CosFace m0 s16",
        &net,
        &head,
        &x,
        &labels,
        kind,
    );
}
