//! `facekit train` on a handful of real photos: the loss drops, the model file records what it
//! is, loads with `--model` in verify / embed / threshold-sweep / cluster, and `--resume` goes on
//! (for the head, the last stage and the whole network).

mod common;

use std::path::Path;

use common::{facekit, fixture, json_lines};
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The safetensors header's `__metadata__`.
fn metadata(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"].clone()
}

#[test]
fn trains_a_head_that_every_command_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("mine.safetensors");
    let data = fixture("lfw"); // 2 people x 2 photos, labeled by file name
    let cache = tmp.path().join("cache");
    let train = |extra: &[&str]| {
        let out = facekit(
            &[
                &[
                    "train",
                    s(&data),
                    "--out",
                    s(&model),
                    "--head",
                    "new",
                    "--dim",
                    "16",
                    "--loss",
                    "contrastive",
                    "--val-split",
                    "0",
                    "--identities",
                    "2",
                    "--per-identity",
                    "2",
                    "--lr",
                    "0.01",
                    "--json",
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
    let v = train(&["--epochs", "30"]);
    assert_eq!(v["faces"], 4);
    assert_eq!(v["identities"], 2);
    let epochs = v["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 30);
    let first = epochs[0]["loss"].as_f64().unwrap();
    let last = epochs[29]["loss"].as_f64().unwrap();
    assert!(last < 0.5 * first, "loss {first} -> {last}");

    // The file says what it is.
    let meta = metadata(&model);
    assert_eq!(meta["format"], "facekit-head-v1");
    assert_eq!(meta["architecture"], "linear");
    assert_eq!(meta["base_model"], "dlib_resnet_v1");
    assert_eq!(meta["out_dim"], "16");
    assert_eq!(meta["head"], "new-projection-16");
    assert!(meta["loss"].as_str().unwrap().contains("Contrastive"));
    assert_eq!(meta["epochs"], "30");
    assert!(meta["threshold"].as_str().unwrap().parse::<f32>().is_ok());

    // verify uses the head and its own threshold.
    let a = fixture("lfw/Akhmed_Zakayev_0001.jpg");
    let b = fixture("lfw/Akhmed_Zakayev_0003.jpg");
    let c = fixture("lfw/Abel_Pacheco_0001.jpg");
    let same = facekit(&["verify", "--model", s(&model), "--json", s(&a), s(&b)]);
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&same.stderr)
    );
    let same: Value = serde_json::from_slice(&same.stdout).unwrap();
    assert!(same["model"].as_str().unwrap().contains("+head:"));
    assert_eq!(
        same["threshold"].as_f64().unwrap() as f32,
        meta["threshold"].as_str().unwrap().parse::<f32>().unwrap()
    );
    let diff = facekit(&["verify", "--model", s(&model), s(&a), s(&c)]);
    assert_eq!(diff.status.code(), Some(1));
    // embed: 16 values per face, unit length.
    let emb = facekit(&["embed", "--model", s(&model), s(&a)]);
    let rows = json_lines(&emb.stdout);
    let e: Vec<f64> = rows[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(e.len(), 16);
    assert!((e.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-4);
    // threshold-sweep and cluster accept it too.
    let sweep = facekit(&[
        "threshold-sweep",
        s(&data),
        "--model",
        s(&model),
        "--no-cache",
        "--json",
    ]);
    assert!(sweep.status.success());
    let sweep: Value = serde_json::from_slice(&sweep.stdout).unwrap();
    assert_eq!(sweep["roc_auc"], 1.0);
    let out = tmp.path().join("people");
    let cl = facekit(&[
        "cluster",
        s(&data),
        "--out",
        s(&out),
        "--model",
        s(&model),
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
    assert_eq!(cl["people"], 2);

    // Resume from the checkpoint: epochs 31..35, same settings.
    let ckpt = tmp.path().join("mine.ckpt.safetensors");
    assert!(ckpt.exists());
    let v = train(&["--epochs", "35", "--resume", s(&ckpt), "--force"]);
    let epochs = v["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 5);
    assert_eq!(epochs[0]["epoch"], 31);

    // Same seed, same result.
    let again = tmp.path().join("again.safetensors");
    let run = |out: &Path| {
        facekit(&[
            "train",
            s(&data),
            "--out",
            s(out),
            "--head",
            "new",
            "--dim",
            "8",
            "--val-split",
            "0",
            "--identities",
            "2",
            "--per-identity",
            "2",
            "--epochs",
            "5",
            "--cache-dir",
            s(&cache),
            "--force",
        ])
    };
    assert!(run(&model).status.success());
    assert!(run(&again).status.success());
    let (x, y) = (
        std::fs::read(&model).unwrap(),
        std::fs::read(&again).unwrap(),
    );
    assert!(x == y, "two runs with the same seed wrote different files");
}

#[test]
fn bad_models_and_settings_are_refused_clearly() {
    let a = fixture("lfw/Akhmed_Zakayev_0001.jpg");
    let out = facekit(&["verify", "--model", s(&a), s(&a), s(&a)]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Akhmed_Zakayev_0001.jpg") && err.contains("safetensors"),
        "{err}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m.safetensors");
    // One identity only: nothing to learn from.
    let one = tmp.path().join("one");
    std::fs::create_dir_all(one.join("Akhmed")).unwrap();
    for f in ["Akhmed_Zakayev_0001.jpg", "Akhmed_Zakayev_0003.jpg"] {
        std::fs::copy(fixture("lfw").join(f), one.join("Akhmed").join(f)).unwrap();
    }
    let out = facekit(&[
        "train",
        s(&one),
        "--out",
        s(&model),
        "--no-cache",
        "--val-split",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 2 identities"));
    assert!(!model.exists());
}

/// `--train-layers last-stage`: the 256-channel blocks and the final layer train on real chips
/// (loss falls), and the model (with its replaced backbone tensors) loads in verify.
#[test]
fn last_stage_trains_and_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("stage.safetensors");
    let out = facekit(&[
        "train",
        s(&fixture("lfw")),
        "--out",
        s(&model),
        "--train-layers",
        "last-stage",
        "--loss",
        "contrastive",
        "--val-split",
        "0",
        "--identities",
        "2",
        "--per-identity",
        "2",
        "--epochs",
        "3",
        "--json",
        "--cache-dir",
        s(&tmp.path().join("cache")),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let epochs = v["epochs"].as_array().unwrap();
    let first = epochs[0]["loss"].as_f64().unwrap();
    let last = epochs[2]["loss"].as_f64().unwrap();
    assert!(first > 0.0 && last < first, "loss {first} -> {last}");
    let meta = metadata(&model);
    assert_eq!(meta["train_layers"], "last-stage");
    assert_eq!(meta["input"], "pooled");
    let a = fixture("lfw/Akhmed_Zakayev_0001.jpg");
    let b = fixture("lfw/Akhmed_Zakayev_0003.jpg");
    let c = fixture("lfw/Abel_Pacheco_0001.jpg");
    let same = facekit(&["verify", "--model", s(&model), s(&a), s(&b)]);
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&same.stderr)
    );
    let diff = facekit(&["verify", "--model", s(&model), s(&a), s(&c)]);
    assert_eq!(diff.status.code(), Some(1));
    // The whole network trains dlib's own final layer: a new head is refused with the reason.
    let out = facekit(&[
        "train",
        s(&fixture("lfw")),
        "--out",
        s(&model),
        "--train-layers",
        "all",
        "--head",
        "new",
        "--force",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--head pretrained"));
}

/// `--train-layers all` with ArcFace and augmented chips: the loss falls, the model (every
/// backbone tensor replaced) loads in verify / embed / threshold-sweep / cluster, a run resumed
/// from its checkpoint (class weights and AdamW moments included) writes the same bytes as an
/// uninterrupted one, and the same seed writes the same bytes.
#[test]
fn all_layers_train_resume_exactly_and_load_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture("lfw");
    let cache = tmp.path().join("cache");
    let train = |out: &Path, epochs: &str, extra: &[&str]| {
        let out = facekit(
            &[
                &[
                    "train",
                    s(&data),
                    "--out",
                    s(out),
                    "--train-layers",
                    "all",
                    "--loss",
                    "arcface",
                    "--val-split",
                    "0",
                    "--identities",
                    "2",
                    "--per-identity",
                    "2",
                    "--seed",
                    "3",
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
    let v = train(&full, "3", &[]);
    let epochs = v["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 3);
    let first = epochs[0]["loss"].as_f64().unwrap();
    let last = epochs[2]["loss"].as_f64().unwrap();
    assert!(first > 0.0 && last < first, "loss {first} -> {last}");
    let meta = metadata(&full);
    assert_eq!(meta["train_layers"], "all");
    assert_eq!(meta["augment"], "mirror+jitter+color");
    assert!(meta["loss"].as_str().unwrap().contains("ArcFace"));
    // Every tensor of dlib's ResNet but the fc layer (the head) is in the file.
    let bytes = std::fs::read(&full).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let backbone = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("backbone."))
        .count();
    assert_eq!(backbone, 4 + 14 * 8);
    assert!(header.get("backbone.conv1.weight").is_some());

    // 2 epochs, then 1 more from the checkpoint: the same model and checkpoint, byte for byte.
    let part = tmp.path().join("part.safetensors");
    train(&part, "2", &[]);
    let ckpt = tmp.path().join("part.ckpt.safetensors");
    let v = train(&part, "3", &["--resume", s(&ckpt)]);
    assert_eq!(v["epochs"][0]["epoch"], 3);
    let read = |p: &Path| std::fs::read(p).unwrap();
    assert!(read(&part) == read(&full), "resumed model differs");
    assert!(
        read(&ckpt) == read(&tmp.path().join("full.ckpt.safetensors")),
        "resumed checkpoint differs"
    );
    // Same seed, same bytes.
    let again = tmp.path().join("again.safetensors");
    train(&again, "3", &[]);
    assert!(read(&again) == read(&full), "same seed, different model");

    // It loads everywhere --model goes.
    let a = fixture("lfw/Akhmed_Zakayev_0001.jpg");
    let b = fixture("lfw/Akhmed_Zakayev_0003.jpg");
    let c = fixture("lfw/Abel_Pacheco_0001.jpg");
    let same = facekit(&["verify", "--model", s(&full), s(&a), s(&b)]);
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&same.stderr)
    );
    let diff = facekit(&["verify", "--model", s(&full), s(&a), s(&c)]);
    assert_eq!(diff.status.code(), Some(1));
    let emb = facekit(&["embed", "--model", s(&full), s(&a)]);
    let rows = json_lines(&emb.stdout);
    let e: Vec<f64> = rows[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(e.len(), 128);
    assert!((e.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-4);
    let sweep = facekit(&[
        "threshold-sweep",
        s(&data),
        "--model",
        s(&full),
        "--no-cache",
        "--json",
    ]);
    assert!(sweep.status.success());
    let sweep: Value = serde_json::from_slice(&sweep.stdout).unwrap();
    assert_eq!(sweep["roc_auc"], 1.0);
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
    assert_eq!(cl["people"], 2);

    // A checkpoint of another loss (no class weights) does not resume an ArcFace run.
    let trip = tmp.path().join("trip.safetensors");
    let out = facekit(&[
        "train",
        s(&data),
        "--out",
        s(&trip),
        "--train-layers",
        "all",
        "--loss",
        "triplet",
        "--val-split",
        "0",
        "--identities",
        "2",
        "--per-identity",
        "2",
        "--epochs",
        "1",
        "--cache-dir",
        s(&cache),
    ]);
    assert!(out.status.success());
    let out = facekit(&[
        "train",
        s(&data),
        "--out",
        s(&part),
        "--train-layers",
        "all",
        "--loss",
        "arcface",
        "--val-split",
        "0",
        "--epochs",
        "2",
        "--force",
        "--resume",
        s(&tmp.path().join("trip.ckpt.safetensors")),
        "--cache-dir",
        s(&cache),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("weights"));
}

/// A threshold calibrated on a handful of identities is flagged on stderr, and the text
/// summary, `--json` and the model's metadata say what it rests on.
#[test]
fn a_threshold_on_few_identities_says_what_it_rests_on() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("few.safetensors");
    let cache = tmp.path().join("cache");
    let data = fixture("lfw");
    let train = |json: bool| {
        let mut args = vec![
            "train",
            s(&data),
            "--out",
            s(&model),
            "--head",
            "new",
            "--dim",
            "8",
            "--val-split",
            "0",
            "--identities",
            "2",
            "--per-identity",
            "2",
            "--epochs",
            "2",
            "--force",
            "--cache-dir",
            s(&cache),
        ];
        if json {
            args.push("--json");
        }
        let out = facekit(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    // --json: the basis in the summary, the warning on stderr.
    let out = train(true);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["val_identities"], 0);
    assert_eq!(v["threshold_from"], "training");
    assert_eq!(v["threshold_identities"], 2);
    // 2 people x 2 photos: every pair of the 4 faces.
    assert_eq!(v["threshold_pairs"], 6);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning")
            && err.contains("rests on 2 training identities / 6 pairs")
            && err.contains("unreliable"),
        "{err}"
    );
    // The model records it.
    let meta = metadata(&model);
    assert_eq!(meta["threshold_from"], "training");
    assert_eq!(meta["threshold_identities"], "2");
    assert_eq!(meta["threshold_pairs"], "6");
    let threshold: f32 = meta["threshold"].as_str().unwrap().parse().unwrap();
    assert_eq!(v["threshold"].as_f64().unwrap() as f32, threshold);
    // The text summary says it too, and the warning is there without --json.
    let out = train(false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "threshold {threshold:.4} calibrated on 2 training identities (6 pairs)"
        )),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("rests on 2 training identities"));
}

/// `--device`: training runs on the device chosen (`-v` says which); CUDA in a build without it
/// is an error that says so, exit 2, and nothing is written (never a silent CPU fallback).
#[test]
fn train_runs_on_the_chosen_device_or_refuses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("dev.safetensors");
    let data = fixture("lfw");
    let args = |device: &str| -> Vec<String> {
        [
            "train",
            "-v",
            "--device",
            device,
            s(&data),
            "--out",
            s(&model),
            "--val-split",
            "0",
            "--identities",
            "2",
            "--per-identity",
            "2",
            "--epochs",
            "1",
            "--no-cache",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let run = |device: &str| {
        let a = args(device);
        facekit(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = run("cpu");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("training on cpu (chosen)"), "{err}");
    assert!(model.exists());
    if cfg!(feature = "cuda") {
        return; // a CUDA build on a machine with a GPU would train there
    }
    std::fs::remove_file(&model).unwrap();
    for device in ["cuda", "cuda:1"] {
        let out = run(device);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("without CUDA support"), "{err}");
        assert!(!model.exists());
    }
}
