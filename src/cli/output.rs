//! Output records and writers: the JSON Lines schema and the human-readable table.

use std::path::Path;

use facekit::Detection;
use serde::Serialize;

/// One face as printed: `{"box": [x1,y1,x2,y2], "score": s, "landmarks": [[x,y] x5]}`.
#[derive(Serialize)]
pub struct FaceRecord {
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub score: f32,
    pub landmarks: [[f32; 2]; 5],
}

impl From<&Detection> for FaceRecord {
    fn from(d: &Detection) -> Self {
        FaceRecord {
            bbox: d.bbox.to_array(),
            score: d.score,
            landmarks: d.landmarks.map(|p| [p.x, p.y]),
        }
    }
}

/// One image's detections (`facekit detect --json`).
#[derive(Serialize)]
pub struct ImageRecord<'a> {
    pub path: &'a str,
    pub width: u32,
    pub height: u32,
    pub faces: Vec<FaceRecord>,
}

/// A file that could not be processed.
#[derive(Serialize)]
pub struct ErrorRecord<'a> {
    pub path: &'a str,
    pub error: &'a str,
}

/// Prints one JSON object on its own line.
pub fn json_line<T: Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("facekit: error: cannot serialise output: {e}"),
    }
}

/// A path as printed (lossy UTF-8).
pub fn display_path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The detection table: a header, then one row per face (or one "no faces" row per image).
pub struct DetectTable;

impl DetectTable {
    /// Prints the column header.
    pub fn header() {
        println!(
            "{:>4}  {:>6}  {:>7} {:>7} {:>7} {:>7}  PATH",
            "FACE", "SCORE", "X1", "Y1", "X2", "Y2"
        );
    }

    /// Prints one image's rows.
    pub fn rows(path: &str, faces: &[Detection]) {
        if faces.is_empty() {
            println!("{:>4}  {:>6}  {:<31}  {path}", "-", "-", "(no faces)");
        }
        for (k, f) in faces.iter().enumerate() {
            let b = f.bbox;
            println!(
                "{:>4}  {:>6.4}  {:>7.1} {:>7.1} {:>7.1} {:>7.1}  {path}",
                k + 1,
                f.score,
                b.x1,
                b.y1,
                b.x2,
                b.y2
            );
        }
    }
}
