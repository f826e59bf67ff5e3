//! The face library: one SQLite file that every workflow shares. It holds photos (by content
//! SHA-256, with the paths they were last seen at), the faces each pipeline found in them (box,
//! score, landmarks), one embedding per face, people and which face belongs to whom.
//!
//! It replaces the JSON Lines embedding cache of earlier versions: a photo seen before is never
//! detected or embedded again by the same pipeline, whatever its name or folder. An old cache
//! file for the same pipeline is imported once, the first time that pipeline is used.
//!
//! Writes are batched: analyses are kept in memory and written in one transaction per
//! [`BATCH`] photos (and at [`Library::flush`] / drop). The database runs in WAL mode, so readers
//! are never blocked by a writer and a killed run leaves the last committed batch.
//!
//! ```no_run
//! use facekit::library::Library;
//! let pipeline = facekit::Pipeline::new()?;
//! let library = Library::open(&Library::default_path().expect("a home directory"))?;
//! let (faces, _cached) =
//!     library.faces_of_file(&pipeline, "photo.jpg".as_ref(), &Default::default(), false)?;
//! println!("{} face(s)", faces.faces.len());
//! library.flush()?;
//! # Ok::<(), facekit::Error>(())
//! ```

mod batch;
mod index;
pub mod known;
mod legacy;
pub mod people;
mod schema;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};

use crate::detect::{BBox, Point};
use crate::io::{content_hash, decode_photo, LoadOptions};
use crate::pipeline::{Face, Pipeline};
use crate::{Error, Result};

pub use known::{Candidate, Identity, Known, IDENTIFY_THRESHOLD};
pub use people::{Assigned, Enrolled, Person, Source};

/// Photos analysed before their results are written in one transaction.
pub const BATCH: usize = 32;

/// The file name of the library inside its directory.
pub const FILE_NAME: &str = "library.db";

/// The faces of one image as a pipeline saw them.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFaces {
    /// SHA-256 of the file's bytes (lowercase hex): the photo's identity in the library.
    pub sha256: String,
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

/// A photo on its way through [`Library::faces_of_file`] or [`Library::faces_of_files`].
enum Prepared {
    /// The library knew it.
    Known(Arc<ImageFaces>),
    /// Decoded and detected; its chips are still to embed.
    Chips(Unembedded),
}

/// A photo's analysis with the chips it still needs embedded.
struct Unembedded {
    analysis: Analysis,
    /// One chip per detection, in order, then the central crop's when asked for.
    chips: Vec<image::RgbImage>,
}

/// What is known of a photo before its chips are embedded.
struct Analysis {
    pid: PipelineId,
    /// The photo's record (no faces yet, or the library's record lacking its central crop).
    faces: ImageFaces,
    /// The detections, whose embeddings are the first chips'.
    dets: Vec<crate::detect::Detection>,
    /// Whether the last chip is the central crop's.
    central: bool,
}

/// A face's row id in the library.
pub type FaceId = i64;

/// A pipeline's row id in the library (its faces and embeddings belong to it).
pub type PipelineId = i64;

/// Where an analysed photo was read from, recorded with it.
#[derive(Debug, Clone)]
struct Seen {
    path: PathBuf,
    size: u64,
    mtime_ns: Option<i64>,
}

/// A write not yet committed.
enum Pending {
    /// A new analysis (or a central embedding added to an existing one).
    Analysis {
        pipeline: PipelineId,
        faces: Arc<ImageFaces>,
        seen: Option<Seen>,
    },
    /// A known photo seen again at a path.
    Seen { sha256: String, seen: Seen },
}

#[derive(Default)]
struct Queue {
    items: Vec<Pending>,
    /// Analyses in `items`, by (pipeline, sha256): lookups see them before they are written.
    analyses: HashMap<(PipelineId, String), Arc<ImageFaces>>,
}

/// The face library (see the module documentation). Safe to share between threads.
pub struct Library {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// Where an old JSON Lines cache may be imported from (`None`: no import).
    legacy_dir: Option<PathBuf>,
    pipelines: Mutex<HashMap<String, PipelineId>>,
    queue: Mutex<Queue>,
    /// Photos analysed (detected and embedded) by this process, for reports.
    analysed: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library").field("path", &self.path).finish()
    }
}

fn env_path(key: &str) -> Option<PathBuf> {
    std::env::var_os(key)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Little-endian f32 bytes of `v` (how vectors and landmarks are stored).
pub(crate) fn f32_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The f32 values of a BLOB written by [`f32_blob`], appended to `out`.
pub(crate) fn extend_f32(out: &mut Vec<f32>, blob: &[u8]) {
    out.extend(
        blob.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
}

/// The bytes of a path, as stored.
pub(crate) fn path_blob(p: &Path) -> Vec<u8> {
    crate::io::path_bytes(p)
}

impl Library {
    /// Where the library lives unless told otherwise: `$FACEKIT_LIBRARY`, else
    /// `$XDG_DATA_HOME/facekit/library.db`, else `~/.local/share/facekit/library.db`.
    pub fn default_path() -> Option<PathBuf> {
        env_path("FACEKIT_LIBRARY")
            .or_else(|| env_path("XDG_DATA_HOME").map(|d| d.join("facekit").join(FILE_NAME)))
            .or_else(|| env_path("HOME").map(|d| d.join(".local/share/facekit").join(FILE_NAME)))
    }

    /// Where embedding caches of earlier versions were written (`$FACEKIT_CACHE`, else
    /// `$XDG_CACHE_HOME/facekit`, else `~/.cache/facekit`): imported once per pipeline.
    pub fn legacy_cache_dir() -> Option<PathBuf> {
        env_path("FACEKIT_CACHE")
            .or_else(|| env_path("XDG_CACHE_HOME").map(|d| d.join("facekit")))
            .or_else(|| env_path("HOME").map(|d| d.join(".cache/facekit")))
    }

    /// Opens (creating it and its folder if needed, migrating an older schema) the library at
    /// `path`, importing old embedding caches from [`Library::legacy_cache_dir`].
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, Self::legacy_cache_dir())
    }

    /// [`Library::open`] with the folder old JSON Lines caches are imported from (`None`: none).
    pub fn open_with(path: &Path, legacy_dir: Option<PathBuf>) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let conn = Connection::open(path).map_err(|e| db_error(path, e))?;
        Self::init(conn, path.to_path_buf(), legacy_dir)
    }

    /// A library in memory only, gone when dropped (`--no-cache`).
    pub fn in_memory() -> Result<Self> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|e| db_error(&path, e))?;
        Self::init(conn, path, None)
    }

    fn init(mut conn: Connection, path: PathBuf, legacy_dir: Option<PathBuf>) -> Result<Self> {
        schema::prepare(&mut conn).map_err(|e| match e {
            schema::SchemaError::Sql(e) => db_error(&path, e),
            schema::SchemaError::Newer(v) => Error::Library {
                path: path.clone(),
                reason: format!(
                    "schema version {v} was written by a newer facekit (this one knows up to {})",
                    schema::VERSION
                ),
            },
        })?;
        Ok(Library {
            conn: Mutex::new(conn),
            path,
            legacy_dir,
            pipelines: Mutex::new(HashMap::new()),
            queue: Mutex::new(Queue::default()),
            analysed: Default::default(),
        })
    }

    /// The database file (`:memory:` for [`Library::in_memory`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database file, `None` for a library in memory.
    pub fn file(&self) -> Option<&Path> {
        (self.path.as_os_str() != ":memory:").then_some(self.path.as_path())
    }

    /// Photos detected and embedded by this process (not answered by the library).
    pub fn analysed_count(&self) -> usize {
        self.analysed.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn err(&self, e: rusqlite::Error) -> Error {
        db_error(&self.path, e)
    }

    pub(crate) fn conn(&self) -> Result<MutexGuard<'_, Connection>> {
        self.conn.lock().map_err(|_| Error::Library {
            path: self.path.clone(),
            reason: "connection poisoned by an earlier panic".into(),
        })
    }

    fn queue(&self) -> Result<MutexGuard<'_, Queue>> {
        self.queue.lock().map_err(|_| Error::Library {
            path: self.path.clone(),
            reason: "write queue poisoned by an earlier panic".into(),
        })
    }

    /// The id of `pipeline` in the library (registered on first use, when an old embedding
    /// cache of the same pipeline is imported).
    pub fn pipeline_id(&self, pipeline: &Pipeline) -> Result<PipelineId> {
        let key = pipeline.cache_key()?;
        let mut known = self.pipelines.lock().map_err(|_| Error::Library {
            path: self.path.clone(),
            reason: "pipeline table poisoned".into(),
        })?;
        if let Some(&id) = known.get(&key) {
            return Ok(id);
        }
        let mut conn = self.conn()?;
        let found: Option<i64> = conn
            .query_row(
                "SELECT id FROM pipelines WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let id = match found {
            Some(id) => id,
            None => {
                let tx = conn.transaction().map_err(|e| self.err(e))?;
                tx.execute(
                    "INSERT INTO pipelines(key, model, detector, dim, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        key,
                        pipeline.model_id(),
                        pipeline.detector().id(),
                        pipeline.dim() as i64,
                        now()
                    ],
                )
                .map_err(|e| self.err(e))?;
                let id = tx.last_insert_rowid();
                if let Some(dir) = &self.legacy_dir {
                    legacy::import(&tx, dir, &key, id).map_err(|e| self.err(e))?;
                }
                tx.commit().map_err(|e| self.err(e))?;
                id
            }
        };
        known.insert(key, id);
        Ok(id)
    }

    /// The faces `pipeline` found in the photo with this content hash, if it analysed it.
    pub fn get(&self, pipeline: PipelineId, sha256: &str) -> Result<Option<Arc<ImageFaces>>> {
        if let Some(f) = self.queue()?.analyses.get(&(pipeline, sha256.to_string())) {
            return Ok(Some(f.clone()));
        }
        let conn = self.conn()?;
        load_analysis(&conn, pipeline, sha256)
            .map(|o| o.map(Arc::new))
            .map_err(|e| self.err(e))
    }

    /// Records the faces `pipeline` found in a photo (written with the next batch).
    pub fn insert(
        &self,
        pipeline: PipelineId,
        faces: ImageFaces,
        path: Option<&Path>,
    ) -> Result<Arc<ImageFaces>> {
        let seen = path.map(seen_now);
        let faces = Arc::new(faces);
        let full = {
            let mut q = self.queue()?;
            q.analyses
                .insert((pipeline, faces.sha256.clone()), faces.clone());
            q.items.push(Pending::Analysis {
                pipeline,
                faces: faces.clone(),
                seen,
            });
            q.items.len() >= BATCH
        };
        if full {
            self.flush()?;
        }
        Ok(faces)
    }

    /// The faces of the image file at `path`: from the library when `pipeline` analysed the
    /// same content before, else detected and embedded now (and recorded). With `central`, an
    /// image without faces also gets the central-crop embedding. The second value says whether
    /// the library answered. Runs inside the per-file fault boundary ([`crate::io::guard`]).
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
        match self.prepare(pipeline, path, opts, central)? {
            Prepared::Known(faces) => Ok((faces, true)),
            Prepared::Chips(photo) => {
                let embeddings = pipeline.embed_chips(&photo.chips)?;
                Ok((self.complete(photo.analysis, embeddings, path)?, false))
            }
        }
    }

    /// The first half of [`Library::faces_of_file`]: the library's answer when it has one,
    /// else the photo decoded and detected, with the chips still to embed.
    fn prepare(
        &self,
        pipeline: &Pipeline,
        path: &Path,
        opts: &LoadOptions,
        central: bool,
    ) -> Result<Prepared> {
        let pid = self.pipeline_id(pipeline)?;
        let bytes = crate::io::read_image_bytes(path, opts)?;
        let sha = content_hash(&bytes);
        let cached = self.get(pid, &sha)?;
        if let Some(c) = &cached {
            if !central || !c.faces.is_empty() || c.central.is_some() {
                self.seen(&sha, path)?;
                return Ok(Prepared::Known(c.clone()));
            }
        }
        let photo = decode_photo(bytes, opts, |w, h| pipeline.detector().working_scale(w, h))
            .map_err(|reason| Error::image(path, reason))?;
        let (faces, dets, mut chips) = match cached {
            Some(c) => ((*c).clone(), Vec::new(), Vec::new()),
            None => {
                self.analysed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (width, height) = photo.dimensions();
                let (dets, chips) = pipeline.chips_of_photo(&photo, path)?;
                let faces = ImageFaces {
                    sha256: sha,
                    width,
                    height,
                    faces: Vec::new(),
                    central: None,
                };
                (faces, dets, chips)
            }
        };
        let central = central && dets.is_empty() && faces.faces.is_empty();
        if central {
            let full = photo.full().map_err(|reason| Error::image(path, reason))?;
            let det = pipeline.central_detection(full.width(), full.height());
            chips.push(pipeline.chip(&full, &det));
        }
        Ok(Prepared::Chips(Unembedded {
            analysis: Analysis {
                pid,
                faces,
                dets,
                central,
            },
            chips,
        }))
    }

    /// The second half of [`Library::faces_of_file`]: the analysis with the embeddings of its
    /// chips (in chip order), recorded.
    fn complete(
        &self,
        analysis: Analysis,
        mut embeddings: Vec<Vec<f32>>,
        path: &Path,
    ) -> Result<Arc<ImageFaces>> {
        let Analysis {
            pid,
            mut faces,
            dets,
            central,
        } = analysis;
        if central {
            faces.central = embeddings.pop();
        }
        if !dets.is_empty() {
            faces.faces = Pipeline::zip_faces(dets, embeddings);
        }
        self.insert(pid, faces, Some(path))
    }

    /// Records that the photo with this content was seen at `path` (with the next batch).
    fn seen(&self, sha256: &str, path: &Path) -> Result<()> {
        let full = {
            let mut q = self.queue()?;
            q.items.push(Pending::Seen {
                sha256: sha256.to_string(),
                seen: seen_now(path),
            });
            q.items.len() >= BATCH
        };
        if full {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes every pending analysis in one transaction.
    pub fn flush(&self) -> Result<()> {
        let mut conn = self.conn()?;
        let mut q = self.queue()?;
        if q.items.is_empty() {
            return Ok(());
        }
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        for item in &q.items {
            write_pending(&tx, item).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        q.items.clear();
        q.analyses.clear();
        Ok(())
    }

    /// The ids of the faces `pipeline` found in the photo with this content, in face order
    /// (flushes pending writes first). Empty when it was not analysed.
    pub fn face_ids(&self, pipeline: PipelineId, sha256: &str) -> Result<Vec<FaceId>> {
        self.flush()?;
        let conn = self.conn()?;
        let mut st = conn
            .prepare_cached(
                "SELECT f.id FROM faces f JOIN photos p ON p.id = f.photo_id \
                 WHERE p.sha256 = ?1 AND f.pipeline_id = ?2 ORDER BY f.idx",
            )
            .map_err(|e| self.err(e))?;
        let ids = st
            .query_map(params![sha256, pipeline], |r| r.get(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<i64>>>())
            .map_err(|e| self.err(e))?;
        Ok(ids)
    }

    /// Counts for `facekit people list` and reports: photos, faces, embeddings, people.
    pub fn stats(&self) -> Result<Stats> {
        self.flush()?;
        let conn = self.conn()?;
        let count = |sql: &str| -> Result<u64> {
            conn.query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(|e| self.err(e))
        };
        Ok(Stats {
            photos: count("SELECT count(*) FROM photos")?,
            faces: count("SELECT count(*) FROM faces")?,
            people: count("SELECT count(*) FROM people")?,
            pipelines: count("SELECT count(*) FROM pipelines")?,
        })
    }

    /// Runs SQLite's `PRAGMA integrity_check`: `Ok(())` when it says "ok", else its findings.
    pub fn integrity_check(&self) -> Result<()> {
        let conn = self.conn()?;
        let rows: Vec<String> = conn
            .prepare("PRAGMA integrity_check")
            .and_then(|mut st| {
                st.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .map_err(|e| self.err(e))?;
        if rows.len() == 1 && rows[0] == "ok" {
            Ok(())
        } else {
            Err(Error::Library {
                path: self.path.clone(),
                reason: format!("integrity check failed: {}", rows.join("; ")),
            })
        }
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // Best effort: workflows call `flush` and report its errors; this only saves the last
        // batch of a caller that did not.
        let _ = self.flush();
    }
}

/// Sizes of a library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Distinct photos (by content).
    pub photos: u64,
    /// Faces, over every pipeline.
    pub faces: u64,
    /// People.
    pub people: u64,
    /// Pipelines (model + detector settings) that analysed photos.
    pub pipelines: u64,
}

fn db_error(path: &Path, e: rusqlite::Error) -> Error {
    let reason = match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DatabaseBusy => {
            format!("{e} (another facekit run is writing it; try again when it has finished)")
        }
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
            "not a facekit library (not an SQLite database)".to_string()
        }
        _ => e.to_string(),
    };
    Error::Library {
        path: path.to_path_buf(),
        reason,
    }
}

fn seen_now(path: &Path) -> Seen {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let meta = std::fs::metadata(path).ok();
    let mtime_ns = meta
        .as_ref()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64);
    Seen {
        path: abs,
        size: meta.map_or(0, |m| m.len()),
        mtime_ns,
    }
}

/// Detects and embeds every face of `img`.
fn upsert_photo(
    tx: &rusqlite::Transaction,
    sha256: &str,
    dims: Option<(u32, u32)>,
    size: Option<u64>,
) -> rusqlite::Result<i64> {
    let t = now();
    tx.prepare_cached(
        "INSERT INTO photos(sha256, width, height, size, first_seen, last_seen) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?5) \
         ON CONFLICT(sha256) DO UPDATE SET last_seen = excluded.last_seen, \
           width = coalesce(excluded.width, width), height = coalesce(excluded.height, height), \
           size = coalesce(excluded.size, size) \
         RETURNING id",
    )?
    .query_row(
        params![
            sha256,
            dims.map(|d| d.0),
            dims.map(|d| d.1),
            size.map(|s| s as i64),
            t
        ],
        |r| r.get(0),
    )
}

fn record_path(tx: &rusqlite::Transaction, photo: i64, seen: &Seen) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO paths(path, photo_id, size, mtime_ns, seen_at) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT(path) DO UPDATE SET photo_id = excluded.photo_id, size = excluded.size, \
           mtime_ns = excluded.mtime_ns, seen_at = excluded.seen_at",
    )?
    .execute(params![
        path_blob(&seen.path),
        photo,
        seen.size as i64,
        seen.mtime_ns,
        now()
    ])?;
    Ok(())
}

/// Writes one analysis: photo, its faces with embeddings (once per pipeline), its path.
pub(crate) fn write_analysis(
    tx: &rusqlite::Transaction,
    pipeline: PipelineId,
    faces: &ImageFaces,
    size: Option<u64>,
) -> rusqlite::Result<i64> {
    let photo = upsert_photo(tx, &faces.sha256, Some((faces.width, faces.height)), size)?;
    let exists: Option<i64> = tx
        .prepare_cached("SELECT faces FROM analyses WHERE photo_id = ?1 AND pipeline_id = ?2")?
        .query_row(params![photo, pipeline], |r| r.get(0))
        .optional()?;
    let central = faces.central.as_deref().map(f32_blob);
    if exists.is_some() {
        // Analysed before (a central embedding asked for later): faces are already there.
        tx.prepare_cached(
            "UPDATE analyses SET central = coalesce(?3, central) \
             WHERE photo_id = ?1 AND pipeline_id = ?2",
        )?
        .execute(params![photo, pipeline, central])?;
        return Ok(photo);
    }
    tx.prepare_cached(
        "INSERT INTO analyses(photo_id, pipeline_id, faces, central, analyzed_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        photo,
        pipeline,
        faces.faces.len() as i64,
        central,
        now()
    ])?;
    for (idx, f) in faces.faces.iter().enumerate() {
        let b = f.bbox;
        let lm: Vec<f32> = f.landmarks.iter().flat_map(|p| [p.x, p.y]).collect();
        tx.prepare_cached(
            "INSERT INTO faces(photo_id, pipeline_id, idx, x1, y1, x2, y2, score, landmarks) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            photo,
            pipeline,
            idx as i64,
            b.x1,
            b.y1,
            b.x2,
            b.y2,
            f.score,
            f32_blob(&lm)
        ])?;
        let face = tx.last_insert_rowid();
        tx.prepare_cached("INSERT INTO embeddings(face_id, vector) VALUES (?1, ?2)")?
            .execute(params![face, f32_blob(&f.embedding)])?;
    }
    Ok(photo)
}

fn write_pending(tx: &rusqlite::Transaction, item: &Pending) -> rusqlite::Result<()> {
    match item {
        Pending::Analysis {
            pipeline,
            faces,
            seen,
        } => {
            let photo = write_analysis(tx, *pipeline, faces, seen.as_ref().map(|s| s.size))?;
            if let Some(seen) = seen {
                record_path(tx, photo, seen)?;
            }
        }
        Pending::Seen { sha256, seen } => {
            let photo = upsert_photo(tx, sha256, None, Some(seen.size))?;
            record_path(tx, photo, seen)?;
        }
    }
    Ok(())
}

fn load_analysis(
    conn: &Connection,
    pipeline: PipelineId,
    sha256: &str,
) -> rusqlite::Result<Option<ImageFaces>> {
    let head: Option<(i64, u32, u32, Option<Vec<u8>>)> = conn
        .prepare_cached(
            "SELECT p.id, p.width, p.height, a.central FROM analyses a \
             JOIN photos p ON p.id = a.photo_id WHERE p.sha256 = ?1 AND a.pipeline_id = ?2",
        )?
        .query_row(params![sha256, pipeline], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((photo, width, height, central)) = head else {
        return Ok(None);
    };
    let mut st = conn.prepare_cached(
        "SELECT f.x1, f.y1, f.x2, f.y2, f.score, f.landmarks, e.vector FROM faces f \
         JOIN embeddings e ON e.face_id = f.id \
         WHERE f.photo_id = ?1 AND f.pipeline_id = ?2 ORDER BY f.idx",
    )?;
    let faces = st
        .query_map(params![photo, pipeline], |r| {
            let mut lm = Vec::with_capacity(10);
            extend_f32(&mut lm, &r.get::<_, Vec<u8>>(5)?);
            let mut embedding = Vec::new();
            extend_f32(&mut embedding, &r.get::<_, Vec<u8>>(6)?);
            let point = |i: usize| Point {
                x: lm.get(2 * i).copied().unwrap_or(0.0),
                y: lm.get(2 * i + 1).copied().unwrap_or(0.0),
            };
            Ok(Face {
                bbox: BBox {
                    x1: r.get(0)?,
                    y1: r.get(1)?,
                    x2: r.get(2)?,
                    y2: r.get(3)?,
                },
                score: r.get(4)?,
                landmarks: [point(0), point(1), point(2), point(3), point(4)],
                embedding,
            })
        })?
        .collect::<rusqlite::Result<Vec<Face>>>()?;
    Ok(Some(ImageFaces {
        sha256: sha256.to_string(),
        width,
        height,
        faces,
        central: central.map(|b| {
            let mut v = Vec::new();
            extend_f32(&mut v, &b);
            v
        }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sha: &str) -> ImageFaces {
        ImageFaces {
            sha256: sha.into(),
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
    fn analyses_round_trip_exactly_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lib.db");
        let lib = Library::open_with(&path, None).unwrap();
        let conn = lib.conn().unwrap();
        conn.execute(
            "INSERT INTO pipelines(key, model, detector, dim, created_at) VALUES ('k','m','d',3,0)",
            [],
        )
        .unwrap();
        let pid = conn.last_insert_rowid();
        drop(conn);
        assert_eq!(lib.get(pid, "abc").unwrap(), None);
        lib.insert(pid, sample("abc"), None).unwrap();
        // Visible before the batch is written.
        assert_eq!(*lib.get(pid, "abc").unwrap().unwrap(), sample("abc"));
        let mut later = sample("def");
        later.faces.clear();
        later.central = Some(vec![1.0, 2.0, 3.0]);
        lib.insert(pid, later.clone(), None).unwrap();
        drop(lib);
        let lib = Library::open_with(&path, None).unwrap();
        assert_eq!(*lib.get(pid, "abc").unwrap().unwrap(), sample("abc"));
        assert_eq!(*lib.get(pid, "def").unwrap().unwrap(), later);
        assert_eq!(lib.face_ids(pid, "abc").unwrap().len(), 1);
        assert_eq!(lib.get(pid + 1, "abc").unwrap(), None);
        lib.integrity_check().unwrap();
        let s = lib.stats().unwrap();
        assert_eq!((s.photos, s.faces), (2, 1));
    }

    #[test]
    fn refuses_a_file_that_is_not_a_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lib.db");
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        let e = Library::open_with(&path, None).unwrap_err().to_string();
        assert!(e.contains("not a facekit library"), "{e}");
    }
}
