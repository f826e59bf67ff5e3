//! Importing the JSON Lines embedding cache of earlier facekit versions (one file per pipeline,
//! `embeddings-<hash>.jsonl`), once, into the library.

use std::path::Path;

use rusqlite::{params, OptionalExtension, Transaction};
use serde::Deserialize;

use super::{write_analysis, ImageFaces, PipelineId};
use crate::detect::{BBox, Point};
use crate::pipeline::Face;

/// The only line format those caches had.
const FORMAT: u32 = 1;

#[derive(Deserialize)]
struct FaceLine {
    #[serde(rename = "box")]
    bbox: [f32; 4],
    score: f32,
    landmarks: [[f32; 2]; 5],
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct Line {
    v: u32,
    sha256: String,
    width: u32,
    height: u32,
    faces: Vec<FaceLine>,
    #[serde(default)]
    central: Option<Vec<f32>>,
}

/// The old cache file of the pipeline with this key, inside `dir`.
fn file_name(key: &str) -> String {
    format!(
        "embeddings-{}.jsonl",
        &crate::io::content_hash(key.as_bytes())[..16]
    )
}

/// Imports the old cache of pipeline `key` from `dir` into `tx` (nothing when there is none or
/// it was imported before). Damaged lines are skipped; the file itself is left as it is.
pub(super) fn import(
    tx: &Transaction,
    dir: &Path,
    key: &str,
    pipeline: PipelineId,
) -> rusqlite::Result<usize> {
    let name = file_name(key);
    let path = dir.join(&name);
    let done: Option<i64> = tx
        .query_row(
            "SELECT photos FROM imports WHERE file = ?1",
            params![path.to_string_lossy()],
            |r| r.get(0),
        )
        .optional()?;
    if done.is_some() {
        return Ok(0);
    }
    let Ok(text) = std::fs::read(&path) else {
        return Ok(0);
    };
    let header = serde_json::json!({ "facekit_cache": FORMAT, "key": key }).to_string();
    let mut lines = text.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    if lines.next() != Some(header.as_bytes()) {
        // Another pipeline's file under a colliding name, or damaged: not ours to read.
        return Ok(0);
    }
    let mut n = 0;
    for line in lines {
        let Ok(l) = serde_json::from_slice::<Line>(line) else {
            continue;
        };
        if l.v != FORMAT {
            continue;
        }
        let faces = ImageFaces {
            sha256: l.sha256,
            width: l.width,
            height: l.height,
            faces: l
                .faces
                .into_iter()
                .map(|f| Face {
                    bbox: BBox::from_array(f.bbox),
                    score: f.score,
                    landmarks: f.landmarks.map(|[x, y]| Point { x, y }),
                    embedding: f.embedding,
                })
                .collect(),
            central: l.central,
        };
        write_analysis(tx, pipeline, &faces, None)?;
        n += 1;
    }
    tx.execute(
        "INSERT INTO imports(file, pipeline_id, photos, imported_at) VALUES (?1, ?2, ?3, ?4)",
        params![path.to_string_lossy(), pipeline, n as i64, super::now()],
    )?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_an_old_cache_once_and_skips_damaged_lines() {
        let dir = tempfile::tempdir().unwrap();
        let key = "model|detector|weights";
        let header = serde_json::json!({ "facekit_cache": 1, "key": key }).to_string();
        let good = r#"{"v":1,"sha256":"abc","width":4,"height":5,"faces":[{"box":[1,2,3,4],"score":0.9,"landmarks":[[1,1],[2,2],[3,3],[4,4],[5,5]],"embedding":[0.5,0.25]}]}"#;
        std::fs::write(
            dir.path().join(file_name(key)),
            format!("{header}\n{good}\n{{\"v\":1,\"sha2"),
        )
        .unwrap();
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        super::super::schema::prepare(&mut conn)
            .map_err(|_| ())
            .unwrap();
        conn.execute(
            "INSERT INTO pipelines(key, model, detector, dim, created_at) VALUES (?1,'m','d',2,0)",
            params![key],
        )
        .unwrap();
        let tx = conn.transaction().unwrap();
        assert_eq!(import(&tx, dir.path(), key, 1).unwrap(), 1);
        assert_eq!(import(&tx, dir.path(), key, 1).unwrap(), 0);
        tx.commit().unwrap();
        let got = super::super::load_analysis(&conn, 1, "abc")
            .unwrap()
            .unwrap();
        assert_eq!(got.faces[0].embedding, vec![0.5, 0.25]);
        assert_eq!(got.faces[0].landmarks[4], Point { x: 5.0, y: 5.0 });
    }
}
