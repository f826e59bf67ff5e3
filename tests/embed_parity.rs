//! dlib ResNet parity: facekit's embedding of dlib's own aligned chips equals the descriptor dlib
//! computes on them (L2 < 0.01). Committed chips always; all 79 golden chips with ../shared.

mod common;

use common::{fixture, read_json, shared};
use facekit::embed::{DlibEmbedder, Embedder};
use facekit::models::ModelSource;

fn l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

/// Embeds each chip and returns the largest distance to dlib's descriptor.
fn check(chips: &[(std::path::PathBuf, Vec<f32>)]) -> f32 {
    let embedder = DlibEmbedder::new(&ModelSource::Embedded).expect("embedded dlib ResNet");
    let images: Vec<_> = chips
        .iter()
        .map(|(p, _)| {
            image::open(p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .to_rgb8()
        })
        .collect();
    let got = embedder.embed(&images).unwrap();
    let mut worst = 0f32;
    for ((path, want), emb) in chips.iter().zip(&got) {
        assert_eq!(emb.len(), 128);
        let d = l2(emb, want);
        assert!(d < 0.01, "{}: L2 {d} to dlib's descriptor", path.display());
        worst = worst.max(d);
    }
    worst
}

fn golden_chips(
    json: &serde_json::Value,
    dir: &std::path::Path,
) -> Vec<(std::path::PathBuf, Vec<f32>)> {
    json["chips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let path = dir.join(c["chip"].as_str().unwrap());
            let d = c["descriptor_of_chip"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            (path, d)
        })
        .collect()
}

#[test]
fn resnet_matches_dlib_on_committed_chips() {
    let json = read_json(&fixture("dlib_chips_subset.json"));
    let chips = golden_chips(&json, &fixture(""));
    assert_eq!(chips.len(), 4);
    let worst = check(&chips);
    eprintln!(
        "largest L2 to dlib over {} committed chips: {worst:.5}",
        chips.len()
    );
}

#[test]
fn resnet_matches_dlib_on_all_golden_chips() {
    let Some(shared) = shared("resnet_matches_dlib_on_all_golden_chips") else {
        return;
    };
    let json = read_json(&shared.join("golden/dlib_chips.json"));
    let chips = golden_chips(&json, &shared.join("golden"));
    assert_eq!(chips.len(), 79);
    let worst = check(&chips);
    eprintln!("largest L2 to dlib over 79 golden chips: {worst:.5}");
}
