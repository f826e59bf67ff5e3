//! Trained embedding heads (`facekit train`): a linear layer on the backbone's pooled features
//! (replacing dlib's final fc layer) or on its embedding (a projection to a new size), stored as
//! safetensors with the architecture, base model and training settings in the metadata.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::Dtype;

use crate::io::content_hash;
use crate::{Error, Result};

/// The file format tag in the metadata.
pub const FORMAT: &str = "facekit-head-v1";
/// The backbone every head so far sits on.
pub const BASE_MODEL: &str = "dlib_resnet_v1";

/// A named f32 tensor: (name, shape, row-major values).
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// What a head takes from the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadInput {
    /// The pooled 256-d features (the head replaces dlib's fc layer).
    Pooled,
    /// The 128-d dlib embedding (the head is a projection on top of it).
    Embedding,
}

impl HeadInput {
    fn as_str(self) -> &'static str {
        match self {
            HeadInput::Pooled => "pooled",
            HeadInput::Embedding => "embedding",
        }
    }
}

/// A linear head `y = W x` (optionally L2-normalised), `W` is `out_dim x in_dim`.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// Row-major `out_dim x in_dim` weights.
    pub weight: Vec<f32>,
    /// Input size.
    pub in_dim: usize,
    /// Output (embedding) size.
    pub out_dim: usize,
    /// What the head takes from the backbone.
    pub input: HeadInput,
    /// L2-normalise the output (heads trained with triplet or contrastive loss).
    pub normalize: bool,
    /// The "same person" distance threshold calibrated when the head was trained.
    pub threshold: Option<f32>,
    /// Everything else recorded with the head (training settings, validation figures).
    pub metadata: BTreeMap<String, String>,
    /// Backbone tensors that replace dlib's (`--train-layers last-stage`), named as in
    /// `dlib_resnet.safetensors`: (name, shape, values).
    pub backbone: Vec<NamedTensor>,
}

fn bad(name: &str, reason: impl std::fmt::Display) -> Error {
    Error::Model {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

impl Head {
    /// A head with these weights and no recorded settings.
    pub fn new(
        weight: Vec<f32>,
        in_dim: usize,
        out_dim: usize,
        input: HeadInput,
        normalize: bool,
    ) -> Self {
        Head {
            weight,
            in_dim,
            out_dim,
            input,
            normalize,
            threshold: None,
            metadata: BTreeMap::new(),
            backbone: Vec::new(),
        }
    }

    /// Short identifier of the weights and settings (part of cache keys and model ids).
    pub fn id(&self) -> String {
        let mut bytes: Vec<u8> = self.weight.iter().flat_map(|w| w.to_le_bytes()).collect();
        for (name, _, values) in &self.backbone {
            bytes.extend(name.bytes());
            bytes.extend(values.iter().flat_map(|w| w.to_le_bytes()));
        }
        bytes.extend(format!("{}|{}|{}", self.input.as_str(), self.normalize, self.in_dim).bytes());
        content_hash(&bytes)[..12].to_string()
    }

    /// Applies the head to one input vector.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut y: Vec<f32> = self
            .weight
            .chunks(self.in_dim)
            .map(|row| crate::distance::dot(row, x))
            .collect();
        if self.normalize {
            let n = crate::distance::dot(&y, &y).sqrt();
            if n > 0.0 {
                y.iter_mut().for_each(|v| *v /= n);
            }
        }
        y
    }

    /// The safetensors bytes: tensor `head.weight` `[out_dim, in_dim]` (f32) and the metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut meta = self.metadata.clone();
        meta.insert("format".into(), FORMAT.into());
        meta.insert("architecture".into(), "linear".into());
        meta.insert("base_model".into(), BASE_MODEL.into());
        meta.insert("input".into(), self.input.as_str().into());
        meta.insert("in_dim".into(), self.in_dim.to_string());
        meta.insert("out_dim".into(), self.out_dim.to_string());
        meta.insert("normalize".into(), self.normalize.to_string());
        if let Some(t) = self.threshold {
            meta.insert("threshold".into(), t.to_string());
        }
        if self.weight.len() != self.out_dim * self.in_dim {
            return Err(bad("head", "weights do not match the head's shape"));
        }
        let names: Vec<String> = self
            .backbone
            .iter()
            .map(|(n, _, _)| format!("backbone.{n}"))
            .collect();
        let mut tensors: Vec<(&str, Vec<usize>, &[f32])> =
            vec![("head.weight", vec![self.out_dim, self.in_dim], &self.weight)];
        for ((_, shape, values), name) in self.backbone.iter().zip(&names) {
            if shape.iter().product::<usize>() != values.len() {
                return Err(bad(
                    "head",
                    format!("{name}: values do not match its shape"),
                ));
            }
            tensors.push((name, shape.clone(), values));
        }
        Ok(crate::models::safetensors_f32(&tensors, &meta))
    }

    /// Reads a head written by [`Head::to_bytes`]; `name` is used in errors.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Self> {
        let meta = crate::models::safetensors_metadata(bytes).map_err(|e| bad(name, e))?;
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(
                name,
                "not a facekit head (no `format: facekit-head-v1` in its metadata; make one with `facekit train`)",
            ));
        }
        let get = |k: &str| -> Result<&String> {
            meta.get(k)
                .ok_or_else(|| bad(name, format!("metadata has no `{k}`")))
        };
        let num = |k: &str| -> Result<usize> {
            get(k)?
                .parse()
                .map_err(|_| bad(name, format!("metadata `{k}` is not a number")))
        };
        let (in_dim, out_dim) = (num("in_dim")?, num("out_dim")?);
        let input = match get("input")?.as_str() {
            "pooled" => HeadInput::Pooled,
            "embedding" => HeadInput::Embedding,
            other => return Err(bad(name, format!("unknown head input {other:?}"))),
        };
        let expected_in = match input {
            HeadInput::Pooled => crate::embed::dlib_resnet::FEATURES,
            HeadInput::Embedding => crate::embed::dlib_resnet::DIM,
        };
        if in_dim != expected_in || out_dim == 0 {
            return Err(bad(
                name,
                format!(
                    "a {} head must take {expected_in} values, not {in_dim} -> {out_dim}",
                    input.as_str()
                ),
            ));
        }
        let normalize = get("normalize")? == "true";
        let threshold = meta.get("threshold").and_then(|t| t.parse().ok());
        let tensors = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| bad(name, format!("not a safetensors file: {e}")))?;
        let w = tensors
            .tensor("head.weight")
            .map_err(|_| bad(name, "no tensor `head.weight`"))?;
        if w.dtype() != Dtype::F32 || w.shape() != [out_dim, in_dim] {
            return Err(bad(
                name,
                format!(
                    "head.weight is {:?} {:?}, expected F32 [{out_dim}, {in_dim}]",
                    w.dtype(),
                    w.shape()
                ),
            ));
        }
        let weight = crate::models::f32_from_le(w.data());
        if weight.iter().any(|v| !v.is_finite()) {
            return Err(bad(name, "head.weight has non-finite values"));
        }
        let mut backbone = Vec::new();
        for (tname, view) in tensors.tensors() {
            if let Some(n) = tname.strip_prefix("backbone.") {
                if view.dtype() != Dtype::F32 {
                    return Err(bad(name, format!("{tname} is not F32")));
                }
                backbone.push((
                    n.to_string(),
                    view.shape().to_vec(),
                    crate::models::f32_from_le(view.data()),
                ));
            }
        }
        backbone.sort_by(|a, b| a.0.cmp(&b.0));
        if !backbone.is_empty() && input != HeadInput::Pooled {
            return Err(bad(
                name,
                "backbone tensors need a head on the pooled features",
            ));
        }
        let reserved = [
            "format",
            "architecture",
            "base_model",
            "input",
            "in_dim",
            "out_dim",
            "normalize",
            "threshold",
        ];
        Ok(Head {
            weight,
            in_dim,
            out_dim,
            input,
            normalize,
            threshold,
            backbone,
            metadata: meta
                .into_iter()
                .filter(|(k, _)| !reserved.contains(&k.as_str()))
                .collect(),
        })
    }

    /// Loads a head file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_files() {
        let mut head = Head::new(
            (0..128 * 4).map(|i| i as f32 * 0.01).collect(),
            128,
            4,
            HeadInput::Embedding,
            true,
        );
        head.threshold = Some(0.8);
        head.metadata.insert("loss".into(), "triplet".into());
        let bytes = head.to_bytes().unwrap();
        let back = Head::from_bytes(&bytes, "x").unwrap();
        assert_eq!(back, head);
        assert_eq!(back.id(), head.id());
        let y = head.apply(&[1.0; 128]);
        assert_eq!(y.len(), 4);
        assert!((crate::distance::dot(&y, &y) - 1.0).abs() < 1e-5);
        // The MTCNN weights are safetensors but not a head.
        let mtcnn = crate::models::ModelSource::Embedded
            .read(crate::models::MTCNN)
            .unwrap();
        let err = Head::from_bytes(&mtcnn, "mtcnn.safetensors")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a facekit head"), "{err}");
        assert!(Head::from_bytes(b"junk", "j").is_err());
    }
}
