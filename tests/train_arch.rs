//! `facekit train --arch`: a network trained from scratch on a handful of real photos resumes
//! exactly, gives the same bytes for the same seed, records what it is, loads with `--model` in
//! embed / verify / threshold-sweep / cluster (128-d unit embeddings under its own model id), and
//! a file that is not a model is refused naming it. A run through the device-generic ops (what a
//! GPU run computes) trains as the CPU kernels do.

mod common;

use std::path::Path;

use common::{facekit, fixture, json_lines};
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The safetensors header.
fn header(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + n]).unwrap()
}

/// The first face's embedding in `embed`'s JSON Lines.
fn embedding(stdout: &[u8]) -> Vec<f64> {
    let rows = json_lines(stdout);
    rows[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn a_network_from_scratch_trains_resumes_and_loads_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture("lfw"); // 2 people x 2 photos, labeled by file name
    let cache = tmp.path().join("cache");
    let train = |out: &Path, epochs: &str, seed: &str, extra: &[&str]| {
        let out = facekit(
            &[
                &[
                    "train",
                    s(&data),
                    "--out",
                    s(out),
                    "--arch",
                    "resnet18-tiny",
                    "--val-split",
                    "0",
                    "--identities",
                    "2",
                    "--per-identity",
                    "2",
                    "--seed",
                    seed,
                    "--epochs",
                    epochs,
                    "--json",
                    "--force",
                    "--cache-dir",
                    s(&cache),
                ][..],
                extra,
            ]
            .concat(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let full = tmp.path().join("full.safetensors");
    let v = train(&full, "3", "5", &[]);
    let epochs = v["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 3);
    assert!(epochs.iter().all(|e| e["loss"].as_f64().unwrap() > 0.0));
    // The file says what it is: every tensor of the network, named by its structure.
    let h = header(&full);
    let meta = &h["__metadata__"];
    assert_eq!(meta["format"], "facekit-net-v1");
    assert_eq!(meta["architecture"], "resnet18-tiny");
    assert_eq!(meta["out_dim"], "128");
    assert_eq!(meta["normalize"], "true");
    assert_eq!(meta["head"], "net-resnet18-tiny");
    assert_eq!(meta["lr"], "0.001");
    // The default recipe from scratch: the normalised softmax (CosFace without a margin, s 16).
    assert_eq!(meta["loss"], "CosFace { scale: 16.0, margin: 0.0 }");
    // Explicit flags win over that recipe.
    let flagged = tmp.path().join("flagged.safetensors");
    for (extra, loss) in [
        (
            &["--loss", "arcface"][..],
            "ArcFace { scale: 30.0, margin: 0.3 }",
        ),
        (
            &["--margin-scale", "20"][..],
            "CosFace { scale: 20.0, margin: 0.0 }",
        ),
        (
            &["--margin", "0.1"][..],
            "CosFace { scale: 16.0, margin: 0.1 }",
        ),
    ] {
        train(&flagged, "1", "5", extra);
        assert_eq!(header(&flagged)["__metadata__"]["loss"], loss, "{extra:?}");
    }
    let threshold: f64 = meta["threshold"].as_str().unwrap().parse().unwrap();
    assert!(threshold > 0.0 && threshold < 2.0, "{threshold}");
    assert_eq!(
        h["stem.conv.weight"]["shape"],
        serde_json::json!([16, 3, 3, 3])
    );
    assert_eq!(
        h["layer4.0.downsample.weight"]["shape"],
        serde_json::json!([128, 64, 1, 1])
    );
    assert_eq!(h["fc.weight"]["shape"], serde_json::json!([128, 128]));

    // 2 epochs, then 1 more from the checkpoint: the same model and checkpoint, byte for byte.
    let part = tmp.path().join("part.safetensors");
    train(&part, "2", "5", &[]);
    let ckpt = tmp.path().join("part.ckpt.safetensors");
    let v = train(&part, "3", "5", &["--resume", s(&ckpt)]);
    assert_eq!(v["epochs"][0]["epoch"], 3);
    let read = |p: &Path| std::fs::read(p).unwrap();
    assert!(read(&part) == read(&full), "resumed model differs");
    assert!(
        read(&ckpt) == read(&tmp.path().join("full.ckpt.safetensors")),
        "resumed checkpoint differs"
    );
    // Same seed, same bytes; another seed, another network.
    let again = tmp.path().join("again.safetensors");
    train(&again, "3", "5", &[]);
    assert!(read(&again) == read(&full), "same seed, different model");
    let other = tmp.path().join("other.safetensors");
    train(&other, "3", "6", &[]);
    assert!(read(&other) != read(&full));
    // A checkpoint of the other architecture does not resume this one.
    let out = facekit(&[
        "train",
        s(&data),
        "--out",
        s(&part),
        "--arch",
        "resnet18-small",
        "--val-split",
        "0",
        "--epochs",
        "4",
        "--force",
        "--resume",
        s(&ckpt),
        "--cache-dir",
        s(&cache),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("weights"));

    // embed: 128-d unit vectors, not dlib's cached embeddings of the same photo (the library
    // keys them by the model's own id).
    let a = fixture("lfw/Akhmed_Zakayev_0001.jpg");
    let b = fixture("lfw/Akhmed_Zakayev_0003.jpg");
    let library = tmp.path().join("library.db");
    let dlib = embedding(&facekit(&["embed", "--library", s(&library), s(&a)]).stdout);
    let emb = facekit(&[
        "embed",
        "--model",
        s(&full),
        "--library",
        s(&library),
        s(&a),
    ]);
    assert!(
        emb.status.success(),
        "{}",
        String::from_utf8_lossy(&emb.stderr)
    );
    let e = embedding(&emb.stdout);
    assert_eq!(e.len(), 128);
    assert!((e.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-4);
    assert_ne!(e, dlib);
    let uncached = embedding(&facekit(&["embed", "--model", s(&full), "--no-cache", s(&a)]).stdout);
    let d = e
        .iter()
        .zip(&uncached)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(d < 1e-5, "cached and fresh embeddings differ by {d}");

    // verify: a decision at the model's threshold.
    let out = facekit(&["verify", "--model", s(&full), s(&a), s(&b)]);
    let text = String::from_utf8_lossy(&out.stdout);
    let decision = match out.status.code() {
        Some(0) => "same person",
        Some(1) => "different",
        other => panic!("verify: {other:?} {}", String::from_utf8_lossy(&out.stderr)),
    };
    assert!(text.to_lowercase().contains(decision), "{text}");
    assert!(
        text.contains(&format!("threshold {threshold:.4}")),
        "{text}"
    );

    // threshold-sweep and cluster run on it.
    let sweep = facekit(&[
        "threshold-sweep",
        s(&data),
        "--model",
        s(&full),
        "--no-cache",
        "--json",
    ]);
    assert!(
        sweep.status.success(),
        "{}",
        String::from_utf8_lossy(&sweep.stderr)
    );
    let sweep: Value = serde_json::from_slice(&sweep.stdout).unwrap();
    assert!(sweep["roc_auc"].as_f64().is_some());
    let people = tmp.path().join("people");
    let cl = facekit(&[
        "cluster",
        s(&data),
        "--out",
        s(&people),
        "--model",
        s(&full),
        "--no-cache",
        "--json",
        "--threshold",
        meta["threshold"].as_str().unwrap(),
    ]);
    assert!(
        cl.status.success(),
        "{}",
        String::from_utf8_lossy(&cl.stderr)
    );
    let cl: Value = serde_json::from_slice(&cl.stdout).unwrap();
    assert!(cl["people"].as_u64().unwrap() >= 1);

    // A file that is not a model (the checkpoint) is refused, naming it.
    let out = facekit(&["verify", "--model", s(&ckpt), s(&a), s(&b)]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(s(&ckpt)) && err.contains("not a facekit model"),
        "{err}"
    );
    // --arch trains every layer.
    let out = facekit(&[
        "train",
        s(&data),
        "--out",
        s(&tmp.path().join("x.safetensors")),
        "--arch",
        "resnet18-tiny",
        "--train-layers",
        "head",
        "--cache-dir",
        s(&cache),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--arch"));
}

/// A whole `facekit train` run (the library call) through the ops a GPU run uses, on the CPU:
/// for `--arch` (its default normalised softmax) and for `--train-layers all` on dlib's ResNet
/// (ArcFace), the per-epoch losses and the calibrated threshold equal the CPU kernels' run to
/// 1e-4 (the first epoch, from the same weights, to 1e-5; AdamW's first steps are nearly sign
/// steps, so later epochs drift by more than the gradients' 1e-6).
#[test]
fn a_run_on_the_generic_ops_trains_as_the_cpu_kernels_do() {
    use facekit::train::{self, arch::Arch, Layers, LossKind, TrainSettings};
    let tmp = tempfile::tempdir().unwrap();
    let settings = |name: &str, arch: Option<Arch>, loss: LossKind, epochs: usize| {
        let mut s = TrainSettings::new(fixture("lfw"), tmp.path().join(name));
        s.arch = arch;
        s.layers = Layers::All;
        s.val_split = 0.0;
        s.config.loss = loss;
        s.config.identities = 2;
        s.config.per_identity = 2;
        s.config.epochs = epochs;
        s.config.seed = 3;
        s.config.lr = if arch.is_some() { 1e-3 } else { 1e-5 };
        assert!(s.device.is_cpu());
        s
    };
    let tiny = Arch::by_name("resnet18-tiny");
    for (what, arch, loss, epochs) in [
        (
            "resnet18-tiny",
            tiny,
            LossKind::CosFace {
                scale: 16.0,
                margin: 0.0,
            },
            3,
        ),
        (
            "dlib ResNet",
            None,
            LossKind::ArcFace {
                scale: 30.0,
                margin: 0.3,
            },
            2,
        ),
    ] {
        let library = facekit::library::Library::in_memory().unwrap();
        let cpu = train::run(
            &settings("cpu.safetensors", arch, loss, epochs),
            &library,
            &(),
        )
        .unwrap();
        let generic = train::with_generic_ops(|| {
            train::run(
                &settings("generic.safetensors", arch, loss, epochs),
                &library,
                &(),
            )
        })
        .unwrap();
        let losses = |r: &train::TrainReport| r.epochs.iter().map(|e| e.loss).collect::<Vec<_>>();
        let (a, b) = (losses(&cpu), losses(&generic));
        eprintln!(
            "{what}: epoch losses CPU {a:?}, generic {b:?}; threshold {} vs {}",
            cpu.threshold, generic.threshold
        );
        assert_eq!(a.len(), epochs);
        assert!(((a[0] - b[0]) / a[0]).abs() < 1e-5, "{what}: first epoch");
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= 1e-3 * x.abs().max(1.0),
                "{what}: {a:?} vs {b:?}"
            );
        }
        assert!((cpu.threshold - generic.threshold).abs() < 1e-4, "{what}");
        // The two paths ran different kernels: the files differ in their last bits.
        let read = |n: &str| std::fs::read(tmp.path().join(n)).unwrap();
        assert!(
            read("cpu.safetensors") != read("generic.safetensors"),
            "{what}"
        );
    }
}
