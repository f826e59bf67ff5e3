//! Putting photos into per-person folders without ever losing or overwriting one: copy (the
//! default), link (hard link on the same filesystem, else symlink) or move, where every move is
//! recorded in a manifest *before* it happens so `undo` can put each photo back.
//!
//! A move is a hard link at the destination followed by removing the source (a copy, sync and
//! remove across filesystems), so a process killed at any instant leaves the photo in its
//! original place, in both places, or at a destination already written in the manifest. Every
//! folder and file a move run creates is named in the manifest before it appears, except its
//! temporary files (`.fk-<pid>-<n>.tmp`), which `undo` removes.
//!
//! A photo that is a symlink moves as a symlink to the same file (an absolute target) and the
//! manifest keeps the original link text, so `undo` recreates the link exactly. Paths are stored
//! losslessly: a JSON string when the path is UTF-8, else `{"bytes": "<base64>"}` (ripgrep's
//! convention). Names never exceed [`NAME_MAX`] bytes: collision suffixes shorten the stem.
//! A run and an `undo` hold an exclusive lock on the output folder (the file [`LOCK`] in it).

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::io::content_hash;
use crate::{Error, Result};

/// The manifest of moves, inside the output folder.
pub const MANIFEST: &str = "facekit-moves.jsonl";

/// The lock file inside the output folder (kept after a run: removing it would race the next).
pub const LOCK: &str = ".facekit.lock";

/// The longest file name created, in bytes (the limit of common filesystems).
pub const NAME_MAX: usize = 255;

/// How photos get into the output folders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Copy each photo (the album is untouched).
    Copy,
    /// Hard links when on the same filesystem, else symlinks (the album is untouched).
    Link,
    /// Move each photo into its first folder (copies into the others), recorded for `undo`.
    Move,
}

/// An exclusive lock on an output folder, released when dropped.
#[derive(Debug)]
pub struct OutLock {
    _file: File,
}

/// Locks the output folder `out` (created if missing) for this process, or fails at once with
/// "OUT is being written by another facekit run" when another run or undo holds it.
pub fn lock_out(out: &Path) -> Result<OutLock> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let path = out.join(LOCK);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(OutLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::io(
            out,
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "OUT is being written by another facekit run (wait for it to end, or choose \
                 another folder)",
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

/// A path as the manifest stores it: a JSON string when it is UTF-8, else
/// `{"bytes": "<base64 of the raw bytes>"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredPath(PathBuf);

impl Serialize for StoredPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self.0.to_str() {
            Some(text) => s.serialize_str(text),
            None => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("bytes", &crate::io::base64(os_bytes(self.0.as_os_str())))?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for StoredPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Bytes { bytes: String },
        }
        match Repr::deserialize(d)? {
            Repr::Text(text) => Ok(StoredPath(PathBuf::from(text))),
            Repr::Bytes { bytes } => crate::io::base64_decode(&bytes)
                .and_then(os_from_bytes)
                .map(|s| StoredPath(PathBuf::from(s)))
                .ok_or_else(|| D::Error::custom("a path's bytes are not valid base64 here")),
        }
    }
}

impl From<&Path> for StoredPath {
    fn from(p: &Path) -> Self {
        StoredPath(p.to_path_buf())
    }
}

#[cfg(unix)]
fn os_bytes(s: &OsStr) -> &[u8] {
    std::os::unix::ffi::OsStrExt::as_bytes(s)
}

#[cfg(not(unix))]
fn os_bytes(s: &OsStr) -> &[u8] {
    s.as_encoded_bytes()
}

#[cfg(unix)]
fn os_from_bytes(bytes: Vec<u8>) -> Option<OsString> {
    Some(std::os::unix::ffi::OsStringExt::from_vec(bytes))
}

#[cfg(not(unix))]
fn os_from_bytes(bytes: Vec<u8>) -> Option<OsString> {
    String::from_utf8(bytes).ok().map(OsString::from)
}

/// One manifest line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Record {
    /// `from` is about to be moved to `to`; `link` is `from`'s text when it is a symlink (then
    /// `to` is a symlink to the same file).
    Move {
        from: StoredPath,
        to: StoredPath,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        link: Option<StoredPath>,
    },
    /// facekit is about to create `to`, a copy with this content hash.
    Copy { to: StoredPath, sha256: String },
    /// facekit is about to create the folder `dir`.
    Mkdir { dir: StoredPath },
}

/// The manifest file (move mode only).
struct Manifest {
    path: PathBuf,
    file: Option<File>,
}

impl Manifest {
    fn record(&mut self, r: &Record) -> Result<()> {
        let Some(m) = self.file.as_mut() else {
            return Ok(());
        };
        let mut line = serde_json::to_string(r)
            .map_err(|e| Error::io(&self.path, std::io::Error::other(e)))?;
        line.push('\n');
        // Durable before the step it announces.
        m.write_all(line.as_bytes())
            .and_then(|_| m.sync_data())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Places photos into folders under `out`.
pub struct Organizer {
    out: PathBuf,
    mode: Mode,
    manifest: Manifest,
}

fn split_name(path: &Path) -> (OsString, OsString) {
    let stem = path
        .file_stem()
        .map(OsStr::to_os_string)
        .unwrap_or_else(|| "photo".into());
    let mut suffix = OsString::new();
    if let Some(e) = path.extension() {
        suffix.push(".");
        suffix.push(e);
    }
    (stem, suffix)
}

/// `s` cut to at most `max` bytes: at a char boundary when it is UTF-8, else at a byte.
fn truncate(s: &OsStr, max: usize) -> OsString {
    if os_bytes(s).len() <= max {
        return s.to_os_string();
    }
    if let Some(t) = s.to_str() {
        let mut end = max;
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        return t[..end].into();
    }
    os_from_bytes(os_bytes(s)[..max].to_vec()).unwrap_or_else(|| {
        let lossy = s.to_string_lossy();
        let mut end = max.min(lossy.len());
        while !lossy.is_char_boundary(end) {
            end -= 1;
        }
        lossy[..end].into()
    })
}

/// `<stem><suffix>` for `k == 0`, else `<stem>-<k><suffix>`, with the stem shortened so the
/// name fits in [`NAME_MAX`] bytes.
fn candidate(stem: &OsStr, suffix: &OsStr, k: usize) -> OsString {
    let tag = if k == 0 {
        String::new()
    } else {
        format!("-{k}")
    };
    let (mut stem, mut suffix) = (stem.to_os_string(), suffix.to_os_string());
    if os_bytes(&suffix).len() + tag.len() >= NAME_MAX {
        // A suffix that leaves no room for the stem: shorten the whole name instead.
        stem.push(&suffix);
        suffix = OsString::new();
    }
    let room = NAME_MAX - os_bytes(&suffix).len() - tag.len();
    let mut name = truncate(&stem, room);
    name.push(tag);
    name.push(suffix);
    name
}

/// True when something (even a dangling symlink) is at `path`.
fn lexists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Creates `dir/<name>` under the first free candidate name: `announce` is called with the name
/// first (to record it), then `place` creates it and must fail with `AlreadyExists` rather than
/// replace anything (a hard link, a symlink). Returns the path created.
fn place_new(
    dir: &Path,
    stem: &OsStr,
    suffix: &OsStr,
    mut announce: impl FnMut(&Path) -> Result<()>,
    mut place: impl FnMut(&Path) -> std::io::Result<()>,
) -> Result<PathBuf> {
    for k in 0..100_000 {
        let target = dir.join(candidate(stem, suffix, k));
        match std::fs::symlink_metadata(&target) {
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&target, e)),
        }
        announce(&target)?;
        match place(&target) {
            Ok(()) => return Ok(target),
            // Taken since the check (by someone else): the next name.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&target, e)),
        }
    }
    Err(Error::io(
        dir,
        std::io::Error::other("no free file name left"),
    ))
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A short temporary name (`.fk-<pid>-<n>.tmp`), whatever the length of the photo's name.
fn tmp_name() -> String {
    format!(
        ".fk-{}-{}.tmp",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// True for the names [`tmp_name`] makes.
fn is_tmp_name(name: &OsStr) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    name.to_str()
        .and_then(|n| n.strip_prefix(".fk-")?.strip_suffix(".tmp"))
        .and_then(|mid| mid.split_once('-'))
        .is_some_and(|(pid, n)| digits(pid) && digits(n))
}

/// Copies `src` (following symlinks) to a new temporary file in `dir` and syncs it; on failure
/// nothing is left behind.
fn copy_to_tmp(src: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    let tmp = dir.join(tmp_name());
    let copy = || -> std::io::Result<()> {
        std::fs::copy(src, &tmp)?;
        File::open(&tmp)?.sync_all()
    };
    match copy() {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn is_cross_device(e: &std::io::Error) -> bool {
    // EXDEV (18 on Linux and macOS); std has `ErrorKind::CrossesDevices`.
    e.kind() == std::io::ErrorKind::CrossesDevices || e.raw_os_error() == Some(18)
}

/// A hard link is impossible here (another filesystem, or one without hard links).
fn cannot_hard_link(e: &std::io::Error) -> bool {
    is_cross_device(e)
        || matches!(
            e.kind(),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::Unsupported
        )
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io(path, e))
}

/// Where the symlink `link` with text `text` points, as an absolute path (a relative text is
/// resolved from the link's folder, as the system does).
fn link_target(link: &Path, text: &Path) -> PathBuf {
    match link.parent() {
        Some(dir) if text.is_relative() => dir.join(text),
        _ => text.to_path_buf(),
    }
}

impl Organizer {
    /// Prepares `out` (created if missing). In move mode the manifest is opened for appending.
    pub fn new(out: &Path, mode: Mode) -> Result<Self> {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let out = absolute(out)?;
        let path = out.join(MANIFEST);
        let file = match mode {
            Mode::Move => {
                let open = || -> std::io::Result<File> {
                    let mut f = OpenOptions::new()
                        .read(true)
                        .append(true)
                        .create(true)
                        .open(&path)?;
                    // A line cut short (power loss) must not swallow the next record.
                    if f.metadata()?.len() > 0 {
                        let mut last = [0u8];
                        f.seek(SeekFrom::End(-1))?;
                        f.read_exact(&mut last)?;
                        if last[0] != b'\n' {
                            f.write_all(b"\n")?;
                            f.sync_data()?;
                        }
                    }
                    Ok(f)
                };
                Some(open().map_err(|e| Error::io(&path, e))?)
            }
            _ => None,
        };
        Ok(Organizer {
            out,
            mode,
            manifest: Manifest { path, file },
        })
    }

    /// The output folder (absolute).
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Puts `src` into each of `folders` (names under the output folder), never replacing a
    /// file (name collisions get `-1`, `-2`, ...). Returns the paths created, in folder order.
    pub fn place(&mut self, src: &Path, folders: &[String]) -> Result<Vec<PathBuf>> {
        let src = absolute(src)?;
        let (stem, suffix) = split_name(&src);
        let mut created = Vec::with_capacity(folders.len());
        for (k, folder) in folders.iter().enumerate() {
            let dir = self.out.join(folder);
            self.make_dir(&dir)?;
            let path = match self.mode {
                Mode::Copy => self.copy_into(&src, &dir, &stem, &suffix)?,
                Mode::Link => link_into(&src, &dir, &stem, &suffix)?,
                // Move: copies into every folder but the last, then the move itself, so the
                // original stays in place until its last placement.
                Mode::Move if k + 1 < folders.len() => {
                    self.copy_into(&src, &dir, &stem, &suffix)?
                }
                Mode::Move => self.move_into(&src, &dir, &stem, &suffix)?,
            };
            created.push(path);
        }
        Ok(created)
    }

    /// Writes a file of facekit's own (`clusters.json`, the contact sheet) into the output folder
    /// under a free name, never replacing one; in move mode it is recorded like a copy, so undo
    /// removes it too when it is unchanged.
    pub fn write_report(&mut self, stem: &str, suffix: &str, bytes: &[u8]) -> Result<PathBuf> {
        let src = self.out.join(tmp_name());
        std::fs::write(&src, bytes).map_err(|e| Error::io(&src, e))?;
        let out = self.out.clone();
        let result = self.copy_into(&src, &out, OsStr::new(stem), OsStr::new(suffix));
        let _ = std::fs::remove_file(&src);
        result
    }

    /// Creates the folder `dir` when missing (recorded first).
    fn make_dir(&mut self, dir: &Path) -> Result<()> {
        if std::fs::metadata(dir).is_ok_and(|m| m.is_dir()) {
            return Ok(());
        }
        self.manifest.record(&Record::Mkdir { dir: dir.into() })?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
    }

    /// Copies `src` into `dir` under a free name (a synced temporary file linked into place);
    /// in move mode the copy is recorded with its hash before it appears.
    fn copy_into(
        &mut self,
        src: &Path,
        dir: &Path,
        stem: &OsStr,
        suffix: &OsStr,
    ) -> Result<PathBuf> {
        let tmp = copy_to_tmp(src, &self.out).map_err(|e| Error::io(src, e))?;
        let manifest = &mut self.manifest;
        let result = (|| {
            let sha256 = match manifest.file {
                Some(_) => content_hash(&std::fs::read(&tmp).map_err(|e| Error::io(&tmp, e))?),
                None => String::new(),
            };
            place_new(
                dir,
                stem,
                suffix,
                |to| {
                    manifest.record(&Record::Copy {
                        to: to.into(),
                        sha256: sha256.clone(),
                    })
                },
                |to| std::fs::hard_link(&tmp, to),
            )
        })();
        let _ = std::fs::remove_file(&tmp);
        result
    }

    /// Moves `src` into `dir` under a free name, recording the move first.
    fn move_into(
        &mut self,
        src: &Path,
        dir: &Path,
        stem: &OsStr,
        suffix: &OsStr,
    ) -> Result<PathBuf> {
        let from = StoredPath::from(src);
        let manifest = &mut self.manifest;
        if is_symlink(src) {
            // A symlink's text may be relative to its folder: the moved link points at the
            // same file by an absolute path, and undo recreates the original text.
            let text = std::fs::read_link(src).map_err(|e| Error::io(src, e))?;
            let target = link_target(src, &text);
            let to = place_new(
                dir,
                stem,
                suffix,
                |to| {
                    manifest.record(&Record::Move {
                        from: from.clone(),
                        to: to.into(),
                        link: Some(StoredPath(text.clone())),
                    })
                },
                |to| symlink(&target, to),
            )?;
            std::fs::remove_file(src).map_err(|e| Error::io(src, e))?;
            return Ok(to);
        }
        let out = &self.out;
        let mut tmp: Option<PathBuf> = None;
        let result = place_new(
            dir,
            stem,
            suffix,
            |to| {
                manifest.record(&Record::Move {
                    from: from.clone(),
                    to: to.into(),
                    link: None,
                })
            },
            |to| {
                if let Some(t) = &tmp {
                    return std::fs::hard_link(t, to);
                }
                match std::fs::hard_link(src, to) {
                    Err(e) if cannot_hard_link(&e) => {
                        // Another filesystem: a synced copy, linked into place.
                        let t = copy_to_tmp(src, out)?;
                        let linked = std::fs::hard_link(&t, to);
                        tmp = Some(t);
                        linked
                    }
                    other => other,
                }
            },
        );
        if let Some(t) = tmp {
            let _ = std::fs::remove_file(t);
        }
        let to = result?;
        std::fs::remove_file(src).map_err(|e| Error::io(src, e))?;
        Ok(to)
    }
}

/// Links `src` into `dir` under a free name: a hard link to the real file (a symlinked photo is
/// resolved first), else a symlink to it.
fn link_into(src: &Path, dir: &Path, stem: &OsStr, suffix: &OsStr) -> Result<PathBuf> {
    let real = if is_symlink(src) {
        std::fs::canonicalize(src).map_err(|e| Error::io(src, e))?
    } else {
        src.to_path_buf()
    };
    place_new(
        dir,
        stem,
        suffix,
        |_| Ok(()),
        |t| match std::fs::hard_link(&real, t) {
            Err(e) if cannot_hard_link(&e) => symlink(&real, t),
            other => other,
        },
    )
}

#[cfg(unix)]
fn symlink(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(src, dst)
}

#[cfg(not(unix))]
fn symlink(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::copy(src, dst).map(|_| ())
}

/// What `undo` did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct UndoReport {
    /// Photos moved back to where they were.
    pub restored: usize,
    /// Moves the run never made (the photo was still in place).
    pub already_in_place: usize,
    /// Copies facekit had made, removed.
    pub copies_removed: usize,
    /// Temporary files of an interrupted run, removed.
    pub temporaries_removed: usize,
    /// No move was ever recorded in the folder (no manifest, or an empty one).
    pub nothing_to_undo: bool,
    /// Problems left for the user (each names the files): nothing was overwritten or deleted.
    pub problems: Vec<String>,
}

fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::symlink_metadata(a), std::fs::symlink_metadata(b)) {
            if x.dev() == y.dev() && x.ino() == y.ino() {
                return true;
            }
        }
    }
    matches!((std::fs::read(a), std::fs::read(b)), (Ok(x), Ok(y)) if x == y)
}

fn remove(path: &Path) -> Result<()> {
    std::fs::remove_file(path).map_err(|e| Error::io(path, e))
}

/// Puts the regular file moved from `from` to `to` back.
fn undo_move(from: &Path, to: &Path, report: &mut UndoReport) -> Result<()> {
    match (lexists(from), lexists(to)) {
        (true, true) if same_file(from, to) => {
            // Killed between link and unlink: the original is in place.
            remove(to)?;
            report.already_in_place += 1;
        }
        (true, true) => {
            // An empty placeholder (manifests of older versions), or a conflict.
            if std::fs::symlink_metadata(to).is_ok_and(|m| m.is_file() && m.len() == 0) {
                remove(to)?;
                report.already_in_place += 1;
            } else {
                report.problems.push(format!(
                    "{}: a different file now exists where {} was; both kept",
                    from.display(),
                    to.display()
                ));
            }
        }
        (true, false) => report.already_in_place += 1,
        (false, true) => {
            let dir = from.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            match std::fs::hard_link(to, from) {
                Ok(()) => {}
                Err(e) if cannot_hard_link(&e) => {
                    let tmp = copy_to_tmp(to, dir).map_err(|e| Error::io(to, e))?;
                    let linked = std::fs::hard_link(&tmp, from);
                    let _ = std::fs::remove_file(&tmp);
                    linked.map_err(|e| Error::io(from, e))?;
                }
                Err(e) => return Err(Error::io(from, e)),
            }
            remove(to)?;
            report.restored += 1;
        }
        (false, false) => report.problems.push(format!(
            "{}: neither it nor its moved copy {} exists (removed by someone else?)",
            from.display(),
            to.display()
        )),
    }
    Ok(())
}

/// Puts the symlink moved from `from` (text `text`) to `to` back, with its original text.
fn undo_link(from: &Path, to: &Path, text: &Path, report: &mut UndoReport) -> Result<()> {
    let target = link_target(from, text);
    let ours = std::fs::read_link(to).is_ok_and(|t| t == target);
    let original = std::fs::read_link(from).is_ok_and(|t| t == text);
    match (lexists(from), lexists(to)) {
        (true, true) if original && ours => {
            remove(to)?;
            report.already_in_place += 1;
        }
        (true, true) => report.problems.push(format!(
            "{}: a different file now exists where {} was; both kept",
            from.display(),
            to.display()
        )),
        (true, false) => report.already_in_place += 1,
        (false, true) if ours => {
            let dir = from.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            symlink(text, from).map_err(|e| Error::io(from, e))?;
            remove(to)?;
            report.restored += 1;
        }
        (false, true) => report.problems.push(format!(
            "{}: {} is no longer the link facekit moved there; kept",
            from.display(),
            to.display()
        )),
        (false, false) => report.problems.push(format!(
            "{}: neither it nor its moved link {} exists (removed by someone else?)",
            from.display(),
            to.display()
        )),
    }
    Ok(())
}

/// Removes the temporary files an interrupted run left in `dir`; returns how many.
fn remove_temporaries(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| is_tmp_name(&e.file_name()) && e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Undoes the moves recorded in `out`'s manifest, newest first: every moved photo goes back to
/// its original path (never replacing a file there; a symlink gets its original text back),
/// copies facekit made are removed when unchanged, and so are an interrupted run's temporary
/// files. Emptied folders are removed; the manifest is kept (a second undo does nothing).
/// Holds the folder's lock; with no manifest, reports `nothing_to_undo`.
pub fn undo(out: &Path) -> Result<UndoReport> {
    let meta = std::fs::metadata(out).map_err(|e| Error::io(out, e))?;
    if !meta.is_dir() {
        return Err(Error::io(out, std::io::Error::other("not a folder")));
    }
    let path = out.join(MANIFEST);
    let nothing = UndoReport {
        nothing_to_undo: true,
        ..Default::default()
    };
    if !lexists(&path) && !lexists(&out.join(LOCK)) {
        // Nothing to lock for: no run ever wrote here.
        return Ok(nothing);
    }
    let _lock = lock_out(out)?;
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(nothing),
        Err(e) => return Err(Error::io(&path, e)),
    };
    // A killed run may leave a partial last line: the step it announced never started.
    let records: Vec<Record> = bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect();
    let mut report = UndoReport::default();
    let mut dirs = Vec::new();
    for r in records.iter().rev() {
        match r {
            Record::Move { from, to, link } => {
                dirs.extend(to.0.parent().map(Path::to_path_buf));
                match link {
                    Some(text) => undo_link(&from.0, &to.0, &text.0, &mut report)?,
                    None => undo_move(&from.0, &to.0, &mut report)?,
                }
            }
            Record::Copy { to, sha256 } => {
                let to = &to.0;
                dirs.extend(to.parent().map(Path::to_path_buf));
                match std::fs::read(to) {
                    Ok(bytes) if content_hash(&bytes) == *sha256 => {
                        remove(to)?;
                        report.copies_removed += 1;
                    }
                    Ok(_) => report.problems.push(format!(
                        "{}: changed since facekit copied it; kept",
                        to.display()
                    )),
                    // Recorded, never made (killed in between), or removed since.
                    Err(_) => {}
                }
            }
            Record::Mkdir { dir } => dirs.push(dir.0.clone()),
        }
    }
    // Temporary files live in OUT (older versions: in the person folders).
    report.temporaries_removed += remove_temporaries(out);
    if let Ok(entries) = std::fs::read_dir(out) {
        for e in entries.filter_map(|e| e.ok()) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                report.temporaries_removed += remove_temporaries(&e.path());
            }
        }
    }
    // Deepest first; only empty folders go (anything the user put there stays).
    dirs.sort_by(|a, b| {
        b.components()
            .count()
            .cmp(&a.components().count())
            .then(a.cmp(b))
    });
    dirs.dedup();
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
    report.nothing_to_undo = records.is_empty() && report.temporaries_removed == 0;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn album(dir: &Path) -> Vec<PathBuf> {
        let a = dir.join("album");
        std::fs::create_dir_all(a.join("sub")).unwrap();
        let files = vec![a.join("x.jpg"), a.join("sub/x.jpg"), a.join("y")];
        for (i, f) in files.iter().enumerate() {
            std::fs::write(f, format!("photo {i}")).unwrap();
        }
        files
    }

    #[test]
    fn copy_link_move_and_undo() {
        let tmp = tempfile::tempdir().unwrap();
        let files = album(tmp.path());
        for mode in [Mode::Copy, Mode::Link] {
            let out = tmp.path().join(format!("{mode:?}"));
            let mut org = Organizer::new(&out, mode).unwrap();
            let a = org.place(&files[0], &["p1".into()]).unwrap();
            // Same name from another folder: suffixed, never replaced.
            let b = org.place(&files[1], &["p1".into(), "p2".into()]).unwrap();
            assert_eq!(a[0].file_name().unwrap(), "x.jpg");
            assert_eq!(b[0].file_name().unwrap(), "x-1.jpg");
            assert_eq!(std::fs::read(&b[1]).unwrap(), b"photo 1");
            assert!(files.iter().all(|f| f.exists()));
        }
        let out = tmp.path().join("moved");
        let mut org = Organizer::new(&out, Mode::Move).unwrap();
        let placed = org.place(&files[0], &["p1".into(), "p2".into()]).unwrap();
        org.place(&files[1], &["p1".into()]).unwrap();
        org.place(&files[2], &["unknown".into()]).unwrap();
        assert!(files.iter().all(|f| !f.exists()));
        assert_eq!(std::fs::read(&placed[1]).unwrap(), b"photo 0");
        let report = undo(&out).unwrap();
        assert_eq!(report.restored, 3);
        assert_eq!(report.copies_removed, 1);
        assert!(report.problems.is_empty());
        for (i, f) in files.iter().enumerate() {
            assert_eq!(std::fs::read(f).unwrap(), format!("photo {i}").as_bytes());
        }
        // Emptied folders went; the manifest stays; a second undo changes nothing.
        assert!(!out.join("p1").exists());
        assert_eq!(undo(&out).unwrap().restored, 0);
    }

    #[test]
    fn base64_round_trips() {
        assert_eq!(crate::io::base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(crate::io::base64(b"fo"), "Zm8=");
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(97) ^ 0xA5).collect();
            assert_eq!(
                crate::io::base64_decode(&crate::io::base64(&bytes)).unwrap(),
                bytes
            );
        }
        assert_eq!(crate::io::base64_decode("Zm8"), None);
        assert_eq!(crate::io::base64_decode("Z=8="), None);
        assert_eq!(crate::io::base64_decode("Zm*="), None);
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_move_as_links_to_the_same_file_and_undo_restores_their_text() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let lib = tmp.path().join("lib");
        let a = tmp.path().join("album");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::create_dir_all(a.join("sub")).unwrap();
        std::fs::write(lib.join("a.jpg"), "photo a").unwrap();
        std::fs::write(lib.join("b.jpg"), "photo b").unwrap();
        let links = [
            (a.join("rel.jpg"), PathBuf::from("../lib/a.jpg")),
            (a.join("sub/rel.jpg"), PathBuf::from("../../lib/b.jpg")),
            (a.join("abs.jpg"), lib.join("a.jpg")),
        ];
        for (link, text) in &links {
            symlink(text, link).unwrap();
        }
        // Link mode links the real file; copy mode copies its content.
        let mut org = Organizer::new(&tmp.path().join("linked"), Mode::Link).unwrap();
        let l = org.place(&links[0].0, &["p".into()]).unwrap();
        assert!(!is_symlink(&l[0]) || std::fs::read_link(&l[0]).unwrap().is_absolute());
        assert_eq!(std::fs::read(&l[0]).unwrap(), b"photo a");
        let mut org = Organizer::new(&tmp.path().join("copied"), Mode::Copy).unwrap();
        let c = org.place(&links[1].0, &["p".into()]).unwrap();
        assert!(!is_symlink(&c[0]));
        assert_eq!(std::fs::read(&c[0]).unwrap(), b"photo b");

        let out = tmp.path().join("out");
        let mut org = Organizer::new(&out, Mode::Move).unwrap();
        let moved: Vec<PathBuf> = links
            .iter()
            .map(|(link, _)| org.place(link, &["p1".into(), "p2".into()]).unwrap()[1].clone())
            .collect();
        for ((link, _), to) in links.iter().zip(&moved) {
            assert!(!lexists(link));
            assert!(is_symlink(to), "{} is a link", to.display());
        }
        // The moved links still reach their photos.
        assert_eq!(std::fs::read(&moved[0]).unwrap(), b"photo a");
        assert_eq!(std::fs::read(&moved[1]).unwrap(), b"photo b");
        assert_eq!(std::fs::read(&moved[2]).unwrap(), b"photo a");
        let report = undo(&out).unwrap();
        assert_eq!((report.restored, report.copies_removed), (3, 3));
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        for (link, text) in &links {
            assert_eq!(&std::fs::read_link(link).unwrap(), text);
        }
        assert_eq!(names(&out), [LOCK, MANIFEST]);
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// No file of size 0 anywhere under `dir` (placeholders).
    fn assert_no_empty_files(dir: &Path) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                assert_no_empty_files(&e.path());
            } else {
                assert!(m.len() > 0 || e.file_name() == LOCK, "{:?}", e.path());
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_names_move_and_undo_losslessly() {
        use std::os::unix::ffi::OsStrExt;
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("album");
        std::fs::create_dir_all(&a).unwrap();
        let odd = a.join(OsStr::from_bytes(b"caf\xe9 \xff\xfe.jpg"));
        std::fs::write(&odd, "photo").unwrap();
        let out = tmp.path().join("out");
        let mut org = Organizer::new(&out, Mode::Move).unwrap();
        let placed = org.place(&odd, &["p1".into(), "p2".into()]).unwrap();
        assert_eq!(
            placed[1].file_name().unwrap().as_bytes(),
            b"caf\xe9 \xff\xfe.jpg"
        );
        assert!(!odd.exists());
        let manifest = std::fs::read_to_string(out.join(MANIFEST)).unwrap();
        assert!(manifest.contains(r#""from":{"bytes":""#), "{manifest}");
        assert_no_empty_files(&out);
        let report = undo(&out).unwrap();
        assert_eq!((report.restored, report.copies_removed), (1, 1));
        assert_eq!(std::fs::read(&odd).unwrap(), b"photo");
    }

    #[test]
    fn names_never_exceed_the_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("album");
        std::fs::create_dir_all(a.join("x")).unwrap();
        std::fs::create_dir_all(a.join("y")).unwrap();
        // 251 bytes (the old temporary name did not fit), 255 bytes, and 254 bytes of
        // two-byte chars: each twice (two folders) into one person, so the second collides.
        let long = [
            format!("{}.jpg", "a".repeat(247)),
            format!("{}.jpg", "b".repeat(251)),
            format!("{}.jpg", "é".repeat(125)),
        ];
        let mut files = Vec::new();
        for name in &long {
            for d in ["x", "y"] {
                let f = a.join(d).join(name);
                std::fs::write(&f, format!("{d}/{name}")).unwrap();
                files.push(f);
            }
        }
        for mode in [Mode::Copy, Mode::Move] {
            let out = tmp.path().join(format!("{mode:?}"));
            let mut org = Organizer::new(&out, mode).unwrap();
            for (i, f) in files.iter().enumerate() {
                let content = std::fs::read(f).unwrap();
                let placed = org.place(f, &["p1".into(), "p2".into()]).unwrap();
                for p in &placed {
                    let name = p.file_name().unwrap().to_str().unwrap();
                    assert!(name.len() <= NAME_MAX, "{} bytes", name.len());
                    assert!(name.ends_with(if i % 2 == 0 { ".jpg" } else { "-1.jpg" }));
                    assert_eq!(std::fs::read(p).unwrap(), content);
                }
            }
            assert_eq!(names(&out.join("p2")).len(), 6);
            if mode == Mode::Move {
                assert!(files.iter().all(|f| !f.exists()));
                assert_eq!(undo(&out).unwrap().restored, 6);
                for f in &files {
                    let rel = f.strip_prefix(&a).unwrap().to_string_lossy().into_owned();
                    assert_eq!(std::fs::read_to_string(f).unwrap(), rel);
                }
            }
        }
        assert!(tmp_name().len() < 40);
    }

    #[cfg(unix)]
    #[test]
    fn candidates_cut_bytes_when_not_utf8() {
        use std::os::unix::ffi::OsStrExt;
        let stem = OsStr::from_bytes(&[0xff; 255]);
        let name = candidate(stem, OsStr::new(".jpg"), 12);
        assert_eq!(name.as_bytes().len(), 255);
        assert!(name.as_bytes().ends_with(b"\xff-12.jpg"));
        // A suffix with no room for the stem: the whole name is shortened.
        let name = candidate(
            OsStr::new("a"),
            OsStr::new(&format!(".{}", "x".repeat(253))),
            1,
        );
        assert_eq!(name.len(), 255);
        assert!(name.to_str().unwrap().ends_with("x-1"));
    }

    #[test]
    fn old_manifests_with_plain_strings_still_undo() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir_all(out.join("p1")).unwrap();
        let from = tmp.path().join("x.jpg");
        let to = out.join("p1/x.jpg");
        std::fs::write(&to, "photo").unwrap();
        let line = serde_json::json!({"op": "move", "from": from, "to": to}).to_string();
        // A cut last line is ignored.
        std::fs::write(out.join(MANIFEST), format!("{line}\n{{\"op\":\"mo")).unwrap();
        let report = undo(&out).unwrap();
        assert_eq!(report.restored, 1);
        assert_eq!(std::fs::read(&from).unwrap(), b"photo");
        assert!(!out.join("p1").exists());
        // The next run starts on a new line.
        drop(Organizer::new(&out, Mode::Move).unwrap());
        assert!(std::fs::read(out.join(MANIFEST)).unwrap().ends_with(b"\n"));
    }

    #[test]
    fn the_lock_is_exclusive_and_undo_without_moves_has_nothing_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let lock = lock_out(&out).unwrap();
        let e = lock_out(&out).unwrap_err().to_string();
        assert!(
            e.contains("OUT is being written by another facekit run"),
            "{e}"
        );
        assert!(undo(&out).is_err(), "undo waits for no one: it refuses");
        drop(lock);
        let report = undo(&out).unwrap();
        assert!(report.nothing_to_undo);
        // An empty folder gets no lock file; a missing one is an error naming it.
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(undo(&empty).unwrap().nothing_to_undo);
        assert!(names(&empty).is_empty());
        let e = undo(&tmp.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn undo_removes_temporaries_and_folders_it_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let files = album(tmp.path());
        let out = tmp.path().join("out");
        let mut org = Organizer::new(&out, Mode::Move).unwrap();
        org.place(&files[0], &["p1".into()]).unwrap();
        drop(org);
        // As a killed run leaves them: a temporary file, a recorded folder never filled.
        std::fs::write(out.join(".fk-123-4.tmp"), "partial").unwrap();
        std::fs::write(out.join(".fk-note.tmp"), "the user's").unwrap();
        let line = serde_json::to_string(&Record::Mkdir {
            dir: out.join("p9").as_path().into(),
        })
        .unwrap();
        let mut m = OpenOptions::new()
            .append(true)
            .open(out.join(MANIFEST))
            .unwrap();
        writeln!(m, "{line}").unwrap();
        std::fs::create_dir(out.join("p9")).unwrap();
        let report = undo(&out).unwrap();
        assert_eq!((report.restored, report.temporaries_removed), (1, 1));
        assert_eq!(names(&out), [".facekit.lock", ".fk-note.tmp", MANIFEST]);
    }
}
