//! Putting photos into per-person folders without ever losing or overwriting one: copy (the
//! default), link (hard link on the same filesystem, else symlink) or move, where every move is
//! recorded in a manifest *before* it happens so `undo` can put each photo back.
//!
//! A move is a hard link at the destination followed by removing the source (a copy, sync and
//! remove across filesystems), so a process killed at any instant leaves the photo in its
//! original place, in both places, or at a destination already written in the manifest.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::content_hash;
use crate::io::place_new;
use crate::{Error, Result};

/// The manifest of moves, inside the output folder.
pub const MANIFEST: &str = "facekit-moves.jsonl";

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

/// One manifest line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Record {
    /// `from` is about to be moved to `to`.
    Move { from: PathBuf, to: PathBuf },
    /// facekit created `to`, a copy with this content hash.
    Copy { to: PathBuf, sha256: String },
}

/// Places photos into folders under `out`.
pub struct Organizer {
    out: PathBuf,
    mode: Mode,
    manifest: Option<File>,
}

fn split_name(path: &Path) -> (String, String) {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "photo".into());
    let suffix = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    (stem, suffix)
}

/// Copies `src` to a new file in `dir` (temporary file, sync, then linked into place under a
/// free name).
fn copy_new(src: &Path, dir: &Path) -> Result<PathBuf> {
    let (stem, suffix) = split_name(src);
    let tmp = dir.join(format!(".{stem}{suffix}.{}.tmp", std::process::id()));
    let copy = || -> std::io::Result<()> {
        std::fs::copy(src, &tmp)?;
        File::open(&tmp)?.sync_all()
    };
    if let Err(e) = copy() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(src, e));
    }
    let result = place_new(dir, &stem, &suffix, |t| std::fs::hard_link(&tmp, t));
    let _ = std::fs::remove_file(&tmp);
    result
}

fn is_cross_device(e: &std::io::Error) -> bool {
    // EXDEV (18 on Linux and macOS); std has `ErrorKind::CrossesDevices`.
    e.kind() == std::io::ErrorKind::CrossesDevices || e.raw_os_error() == Some(18)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io(path, e))
}

impl Organizer {
    /// Prepares `out` (created if missing). In move mode the manifest is opened for appending.
    pub fn new(out: &Path, mode: Mode) -> Result<Self> {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let out = absolute(out)?;
        let manifest = match mode {
            Mode::Move => {
                let path = out.join(MANIFEST);
                Some(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .map_err(|e| Error::io(&path, e))?,
                )
            }
            _ => None,
        };
        Ok(Organizer {
            out,
            mode,
            manifest,
        })
    }

    /// The output folder (absolute).
    pub fn out(&self) -> &Path {
        &self.out
    }

    fn record(&mut self, r: &Record) -> Result<()> {
        let path = self.out.join(MANIFEST);
        if let Some(m) = self.manifest.as_mut() {
            let mut line =
                serde_json::to_string(r).map_err(|e| Error::Config(format!("manifest: {e}")))?;
            line.push('\n');
            // Durable before the move it announces.
            m.write_all(line.as_bytes())
                .and_then(|_| m.sync_data())
                .map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    /// Puts `src` into each of `folders` (names under the output folder), never replacing a
    /// file (name collisions get `-1`, `-2`, ...). Returns the paths created, in folder order.
    pub fn place(&mut self, src: &Path, folders: &[String]) -> Result<Vec<PathBuf>> {
        let src = absolute(src)?;
        let mut created = Vec::with_capacity(folders.len());
        for (k, folder) in folders.iter().enumerate() {
            let dir = self.out.join(folder);
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            let (stem, suffix) = split_name(&src);
            let path = match self.mode {
                Mode::Copy => copy_new(&src, &dir)?,
                Mode::Link => place_new(&dir, &stem, &suffix, |t| {
                    match std::fs::hard_link(&src, t) {
                        Err(e)
                            if is_cross_device(&e)
                                || e.kind() == std::io::ErrorKind::PermissionDenied =>
                        {
                            symlink(&src, t)
                        }
                        other => other,
                    }
                })?,
                // Move: copies into every folder but the last, then the move itself, so the
                // original stays in place until its last placement.
                Mode::Move if k + 1 < folders.len() => {
                    let path = copy_new(&src, &dir)?;
                    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                    self.record(&Record::Copy {
                        to: path.clone(),
                        sha256: content_hash(&bytes),
                    })?;
                    path
                }
                Mode::Move => self.move_into(&src, &dir, &stem, &suffix)?,
            };
            created.push(path);
        }
        Ok(created)
    }

    /// Moves `src` into `dir` under a free name, recording the move first.
    fn move_into(&mut self, src: &Path, dir: &Path, stem: &str, suffix: &str) -> Result<PathBuf> {
        // Choose the name by creating it: an empty placeholder reserves it (create_new fails if
        // taken), the manifest records the move, then the placeholder is replaced.
        let target = place_new(dir, stem, suffix, |t| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(t)
                .map(|_| ())
        })?;
        self.record(&Record::Move {
            from: src.to_path_buf(),
            to: target.clone(),
        })?;
        let linked = std::fs::remove_file(&target).and_then(|_| std::fs::hard_link(src, &target));
        match linked {
            Ok(()) => {}
            Err(e) if is_cross_device(&e) => {
                let tmp = copy_new(src, dir)?;
                std::fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e))?;
            }
            Err(e) => return Err(Error::io(&target, e)),
        }
        std::fs::remove_file(src).map_err(|e| Error::io(src, e))?;
        Ok(target)
    }
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
    /// Problems left for the user (each names the files): nothing was overwritten or deleted.
    pub problems: Vec<String>,
}

fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            if x.dev() == y.dev() && x.ino() == y.ino() {
                return true;
            }
        }
    }
    matches!((std::fs::read(a), std::fs::read(b)), (Ok(x), Ok(y)) if x == y)
}

/// Undoes the moves recorded in `out`'s manifest, newest first: every moved photo goes back to
/// its original path (never replacing a file there), and copies facekit made are removed when
/// unchanged. Emptied folders are removed; the manifest is kept (a second undo does nothing).
pub fn undo(out: &Path) -> Result<UndoReport> {
    let path = out.join(MANIFEST);
    let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mut records = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| Error::io(&path, e))?;
        // A killed run may leave a partial last line: the move it announced never started.
        if let Ok(r) = serde_json::from_str::<Record>(&line) {
            records.push(r);
        }
    }
    let mut report = UndoReport::default();
    let mut dirs = Vec::new();
    for r in records.iter().rev() {
        match r {
            Record::Move { from, to } => {
                dirs.extend(to.parent().map(Path::to_path_buf));
                let (at_from, at_to) = (from.exists(), to.exists());
                match (at_from, at_to) {
                    (true, true) if same_file(from, to) => {
                        // Killed between link and unlink: the original is in place.
                        std::fs::remove_file(to).map_err(|e| Error::io(to, e))?;
                        report.already_in_place += 1;
                    }
                    (true, true) => {
                        // An empty placeholder from a move that never happened, or a conflict.
                        if std::fs::metadata(to).map(|m| m.len() == 0).unwrap_or(false) {
                            std::fs::remove_file(to).map_err(|e| Error::io(to, e))?;
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
                        if let Some(parent) = from.parent() {
                            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
                        }
                        match std::fs::hard_link(to, from) {
                            Ok(()) => {}
                            Err(e) if is_cross_device(&e) => {
                                let dir = from.parent().unwrap_or(Path::new("."));
                                let tmp = copy_new(to, dir)?;
                                std::fs::rename(&tmp, from).map_err(|e| Error::io(from, e))?;
                            }
                            Err(e) => return Err(Error::io(from, e)),
                        }
                        std::fs::remove_file(to).map_err(|e| Error::io(to, e))?;
                        report.restored += 1;
                    }
                    (false, false) => report.problems.push(format!(
                        "{}: neither it nor its moved copy {} exists (removed by someone else?)",
                        from.display(),
                        to.display()
                    )),
                }
            }
            Record::Copy { to, sha256 } => {
                dirs.extend(to.parent().map(Path::to_path_buf));
                match std::fs::read(to) {
                    Ok(bytes) if content_hash(&bytes) == *sha256 => {
                        std::fs::remove_file(to).map_err(|e| Error::io(to, e))?;
                        report.copies_removed += 1;
                    }
                    Ok(_) => report.problems.push(format!(
                        "{}: changed since facekit copied it; kept",
                        to.display()
                    )),
                    Err(_) => {}
                }
            }
        }
    }
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        // Only empty folders go; anything the user put there stays.
        let _ = std::fs::remove_dir(d);
    }
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
}
