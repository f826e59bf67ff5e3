//! The embedding cache: every face of an image (box, score, landmarks, embedding) keyed by the
//! SHA-256 of the file's bytes, one append-only JSON Lines file per pipeline identity. A second
//! run over the same photos costs reading and hashing them; renamed or copied files still hit.
//!
//! A run killed mid-write leaves at most one partial last line, which the next open skips.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use image::RgbImage;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::detect::{BBox, Point};
use crate::io::{decode_image, LoadOptions};
use crate::pipeline::{Face, Pipeline};
use crate::{Error, Result};

/// Version of the cache line format; bump when it changes.
const FORMAT: u32 = 1;

/// The faces of one image as the pipeline saw them.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFaces {
    /// Image width (upright, after EXIF orientation).
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// Every detected face with its embedding, best score first.
    pub faces: Vec<Face>,
    /// For images without a detected face, once asked for: the embedding of the central crop
    /// ([`Pipeline::central_detection`]).
    pub central: Option<Vec<f32>>,
}

#[derive(Serialize, Deserialize)]
struct FaceLine {
    #[serde(rename = "box")]
    bbox: [f32; 4],
    score: f32,
    landmarks: [[f32; 2]; 5],
    embedding: Vec<f32>,
}

#[derive(Serialize, Deserialize)]
struct Line {
    v: u32,
    sha256: String,
    width: u32,
    height: u32,
    faces: Vec<FaceLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    central: Option<Vec<f32>>,
}

impl Line {
    fn from_faces(sha256: &str, f: &ImageFaces) -> Line {
        Line {
            v: FORMAT,
            sha256: sha256.to_string(),
            width: f.width,
            height: f.height,
            faces: f
                .faces
                .iter()
                .map(|face| FaceLine {
                    bbox: face.bbox.to_array(),
                    score: face.score,
                    landmarks: face.landmarks.map(|p| [p.x, p.y]),
                    embedding: face.embedding.clone(),
                })
                .collect(),
            central: f.central.clone(),
        }
    }

    fn into_faces(self) -> ImageFaces {
        ImageFaces {
            width: self.width,
            height: self.height,
            faces: self
                .faces
                .into_iter()
                .map(|f| Face {
                    bbox: BBox::from_array(f.bbox),
                    score: f.score,
                    landmarks: f.landmarks.map(|[x, y]| Point { x, y }),
                    embedding: f.embedding,
                })
                .collect(),
            central: self.central,
        }
    }
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn content_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Faces and embeddings by content hash, for one pipeline identity; shared by `embed`,
/// `threshold-sweep`, `cluster` and `train`. Safe to use from many threads.
pub struct EmbeddingCache {
    file: Option<PathBuf>,
    entries: RwLock<HashMap<String, Arc<ImageFaces>>>,
    writer: Mutex<Option<File>>,
    skipped: usize,
}

impl EmbeddingCache {
    /// The default cache directory: `$FACEKIT_CACHE`, else `$XDG_CACHE_HOME/facekit`, else
    /// `~/.cache/facekit`.
    pub fn default_dir() -> Option<PathBuf> {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        env("FACEKIT_CACHE")
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("facekit")))
            .or_else(|| env("HOME").map(|d| d.join(".cache/facekit")))
    }

    /// A cache that stores nothing (`--no-cache`).
    pub fn disabled() -> Self {
        EmbeddingCache {
            file: None,
            entries: RwLock::new(HashMap::new()),
            writer: Mutex::new(None),
            skipped: 0,
        }
    }

    /// Opens (creating if needed) the cache for pipeline identity `key` in `dir` and loads it.
    pub fn open(dir: &Path, key: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let name = format!("embeddings-{}.jsonl", &content_hash(key.as_bytes())[..16]);
        let path = dir.join(name);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut text = Vec::new();
        file.read_to_end(&mut text)
            .map_err(|e| Error::io(&path, e))?;
        let mut entries = HashMap::new();
        let mut lines = text.split(|&b| b == b'\n').filter(|l| !l.is_empty());
        let header = serde_json::json!({ "facekit_cache": FORMAT, "key": key }).to_string();
        let mut skipped = 0;
        match lines.next() {
            None => {
                file.write_all(format!("{header}\n").as_bytes())
                    .map_err(|e| Error::io(&path, e))?;
            }
            Some(first) if first == header.as_bytes() => {}
            // Damaged beyond its first line: still usable, the rest is read line by line.
            Some(_) => skipped += 1,
        }
        for line in lines {
            // Lines a killed run left half-written, or damaged bytes: skipped and counted.
            match serde_json::from_slice::<Line>(line) {
                Ok(l) if l.v == FORMAT => {
                    entries.insert(l.sha256.clone(), Arc::new(l.into_faces()));
                }
                _ => skipped += 1,
            }
        }
        if !text.is_empty() && !text.ends_with(b"\n") {
            // Terminate a partial line so the next record starts cleanly.
            file.seek(SeekFrom::End(0))
                .and_then(|_| file.write_all(b"\n"))
                .map_err(|e| Error::io(&path, e))?;
        }
        Ok(EmbeddingCache {
            file: Some(path),
            entries: RwLock::new(entries),
            writer: Mutex::new(Some(file)),
            skipped,
        })
    }

    /// Opens the cache in the default directory, or a disabled one when `enabled` is false.
    pub fn for_pipeline(pipeline: &Pipeline, dir: Option<&Path>, enabled: bool) -> Result<Self> {
        if !enabled {
            return Ok(Self::disabled());
        }
        let dir = dir
            .map(Path::to_path_buf)
            .or_else(Self::default_dir)
            .ok_or_else(|| {
                Error::Config(
                    "no cache directory (set FACEKIT_CACHE or HOME, or use --no-cache)".into(),
                )
            })?;
        Self::open(&dir, &pipeline.cache_key()?)
    }

    /// The cache file, if caching is on.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Lines of the cache file that could not be read when it was opened (damaged or
    /// half-written by a killed run): skipped, never a failure; those images are embedded again.
    pub fn skipped_lines(&self) -> usize {
        self.skipped
    }

    /// Number of images cached.
    pub fn len(&self) -> usize {
        self.entries.read().map(|e| e.len()).unwrap_or(0)
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached faces of the image with this content hash.
    pub fn get(&self, sha256: &str) -> Option<Arc<ImageFaces>> {
        self.entries.read().ok()?.get(sha256).cloned()
    }

    /// Stores the faces of an image (appends one line; a later line wins on reload).
    pub fn insert(&self, sha256: &str, faces: ImageFaces) -> Result<Arc<ImageFaces>> {
        let faces = Arc::new(faces);
        if let Some(path) = &self.file {
            let mut line = serde_json::to_string(&Line::from_faces(sha256, &faces))
                .map_err(|e| Error::Config(format!("cache: {e}")))?;
            line.push('\n');
            let mut writer = self
                .writer
                .lock()
                .map_err(|_| Error::Config("cache writer poisoned".into()))?;
            if let Some(file) = writer.as_mut() {
                // One write per line: appends from concurrent runs do not interleave.
                file.write_all(line.as_bytes())
                    .map_err(|e| Error::io(path, e))?;
            }
            if let Ok(mut entries) = self.entries.write() {
                entries.insert(sha256.to_string(), faces.clone());
            }
        }
        Ok(faces)
    }

    /// The faces of the image file at `path`: from the cache when its content was seen before,
    /// else detected and embedded now (and cached). With `central`, an image without faces also
    /// gets the central-crop embedding. The second value says whether the cache answered.
    pub fn faces_of_file(
        &self,
        pipeline: &Pipeline,
        path: &Path,
        opts: &LoadOptions,
        central: bool,
    ) -> Result<(Arc<ImageFaces>, bool)> {
        crate::io::guard(path, || {
            self.faces_of_file_unguarded(pipeline, path, opts, central)
        })
    }

    fn faces_of_file_unguarded(
        &self,
        pipeline: &Pipeline,
        path: &Path,
        opts: &LoadOptions,
        central: bool,
    ) -> Result<(Arc<ImageFaces>, bool)> {
        let bytes = crate::io::read_image_bytes(path, opts)?;
        let sha = content_hash(&bytes);
        let cached = self.get(&sha);
        if let Some(c) = &cached {
            if !central || !c.faces.is_empty() || c.central.is_some() {
                return Ok((c.clone(), true));
            }
        }
        let img = decode_image(bytes, opts).map_err(|reason| Error::image(path, reason))?;
        let mut faces = match cached {
            Some(c) => (*c).clone(),
            None => analyze(pipeline, &img)?,
        };
        if central && faces.faces.is_empty() {
            let det = pipeline.central_detection(img.width(), img.height());
            faces.central = pipeline.embed_detections(&img, &[det])?.pop();
        }
        Ok((self.insert(&sha, faces)?, false))
    }
}

/// Detects and embeds every face of `img`.
fn analyze(pipeline: &Pipeline, img: &RgbImage) -> Result<ImageFaces> {
    Ok(ImageFaces {
        width: img.width(),
        height: img.height(),
        faces: pipeline.faces(img)?,
        central: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ImageFaces {
        ImageFaces {
            width: 10,
            height: 20,
            faces: vec![Face {
                bbox: BBox {
                    x1: 1.5,
                    y1: 2.25,
                    x2: 8.0,
                    y2: 9.125,
                },
                score: 0.999_123_4,
                landmarks: [Point { x: 0.1, y: 0.2 }; 5],
                embedding: vec![0.123_456_78, -1e-7, 3.0],
            }],
            central: None,
        }
    }

    #[test]
    fn round_trips_exactly_and_survives_a_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EmbeddingCache::open(dir.path(), "model-a").unwrap();
        assert!(cache.is_empty());
        cache.insert("abc", sample()).unwrap();
        let path = cache.path().unwrap().to_path_buf();
        drop(cache);
        // A killed writer's half line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"v\":1,\"sha256\":\"def\",\"wid").unwrap();
        drop(f);
        let cache = EmbeddingCache::open(dir.path(), "model-a").unwrap();
        assert_eq!(cache.len(), 1);
        assert_eq!(*cache.get("abc").unwrap(), sample());
        let mut later = sample();
        later.central = Some(vec![1.0]);
        cache.insert("def", later.clone()).unwrap();
        drop(cache);
        let cache = EmbeddingCache::open(dir.path(), "model-a").unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(*cache.get("def").unwrap(), later);
        // Another pipeline identity has its own file.
        let other = EmbeddingCache::open(dir.path(), "model-b").unwrap();
        assert!(other.is_empty());
        assert_ne!(other.path(), Some(path.as_path()));
    }

    #[test]
    fn hashes_content() {
        assert_eq!(
            content_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
