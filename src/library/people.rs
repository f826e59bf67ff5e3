//! People in the library: named or numbered persons and which faces belong to them (enrolled
//! from a reference photo, confirmed by the user, or put there by clustering).

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{extend_f32, now, FaceId, Library, PipelineId};
use crate::io::LoadOptions;
use crate::pipeline::Pipeline;
use crate::{Error, Result};

/// How a face came to belong to a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// From a reference photo (`people add`, `people import`).
    Enrolled,
    /// Set by the user on a face (`people assign`).
    Confirmed,
    /// Put there by `cluster`; `--recluster` may change it.
    Clustered,
}

impl Source {
    /// The name stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Enrolled => "enrolled",
            Source::Confirmed => "confirmed",
            Source::Clustered => "clustered",
        }
    }

    fn parse(s: &str) -> Source {
        match s {
            "enrolled" => Source::Enrolled,
            "confirmed" => Source::Confirmed,
            _ => Source::Clustered,
        }
    }
}

/// A person and how many faces belong to them (over every pipeline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Person {
    /// Stable id (never reused).
    pub id: i64,
    /// The name, once given.
    pub name: Option<String>,
    /// Faces enrolled from reference photos.
    pub enrolled: u64,
    /// Faces confirmed by the user.
    pub confirmed: u64,
    /// Faces put there by clustering.
    pub clustered: u64,
    /// Distinct photos with one of their faces.
    pub photos: u64,
}

impl Person {
    /// The name, or `person_0007` for a person without one.
    pub fn label(&self) -> String {
        label(self.id, self.name.as_deref())
    }

    /// Every face of this person.
    pub fn faces(&self) -> u64 {
        self.enrolled + self.confirmed + self.clustered
    }
}

/// The label of a person: the name, or `person_` and the zero-padded id.
pub fn label(id: i64, name: Option<&str>) -> String {
    match name {
        Some(n) => n.to_string(),
        None => format!("person_{id:04}"),
    }
}

/// A folder name for a person's label: path separators, control characters and a leading dot
/// become `_`, spaces too (`Ada Lovelace` -> `Ada_Lovelace`); at most 200 bytes.
pub fn folder_name(label: &str) -> String {
    let mut s: String = label
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if s.starts_with('.') {
        s.replace_range(0..1, "_");
    }
    while s.len() > 200 {
        s.pop();
    }
    if s.is_empty() {
        s.push('_');
    }
    s
}

/// Checks a name a user gives a person.
fn check_name(name: &str) -> Result<&str> {
    let n = name.trim();
    if n.is_empty() {
        return Err(Error::Config("a person's name cannot be empty".into()));
    }
    if n.chars().any(char::is_control) {
        return Err(Error::Config(format!(
            "{name:?}: a person's name cannot hold control characters"
        )));
    }
    if parse_numbered(n).is_some() || n == "unknown" || n == "no_faces" {
        return Err(Error::Config(format!(
            "{n:?} is reserved (it names unnamed people and cluster folders)"
        )));
    }
    if n.len() > 200 {
        return Err(Error::Config("a person's name is at most 200 bytes".into()));
    }
    Ok(n)
}

/// `person_0007` or `#7` -> 7.
fn parse_numbered(s: &str) -> Option<i64> {
    let digits = s.strip_prefix("person_").or_else(|| s.strip_prefix('#'))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The faces of a pipeline that belong to people, as one matrix.
#[derive(Debug, Clone, Default)]
pub struct Assigned {
    /// Vector length.
    pub dim: usize,
    /// Row-major vectors, `faces.len()` x `dim`.
    pub vectors: Vec<f32>,
    /// Face id per row.
    pub faces: Vec<FaceId>,
    /// Person id per row.
    pub person: Vec<i64>,
    /// How each row's face came to that person.
    pub source: Vec<Source>,
    /// Photo id per row.
    pub photo: Vec<i64>,
}

/// The outcome of enrolling one photo.
#[derive(Debug, Clone, PartialEq)]
pub struct Enrolled {
    /// The person.
    pub person: i64,
    /// The face enrolled (the largest of the photo).
    pub face: FaceId,
    /// Its index among the photo's faces.
    pub index: usize,
    /// Faces the photo has.
    pub faces_in_photo: usize,
}

/// Makes face ?1 person ?2's with source ?3 at time ?4, replacing any earlier assignment.
const UPSERT_ASSIGNMENT: &str = "INSERT INTO assignments(face_id, person_id, source, assigned_at) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT(face_id) DO UPDATE SET \
     person_id = excluded.person_id, source = excluded.source, assigned_at = excluded.assigned_at";

const PERSON_SELECT: &str = "SELECT p.id, p.name,
      (SELECT count(*) FROM assignments a WHERE a.person_id = p.id AND a.source = 'enrolled'),
      (SELECT count(*) FROM assignments a WHERE a.person_id = p.id AND a.source = 'confirmed'),
      (SELECT count(*) FROM assignments a WHERE a.person_id = p.id AND a.source = 'clustered'),
      (SELECT count(DISTINCT f.photo_id) FROM assignments a JOIN faces f ON f.id = a.face_id
        WHERE a.person_id = p.id)
    FROM people p";

fn person_row(r: &rusqlite::Row) -> rusqlite::Result<Person> {
    Ok(Person {
        id: r.get(0)?,
        name: r.get(1)?,
        enrolled: r.get::<_, i64>(2)? as u64,
        confirmed: r.get::<_, i64>(3)? as u64,
        clustered: r.get::<_, i64>(4)? as u64,
        photos: r.get::<_, i64>(5)? as u64,
    })
}

impl Library {
    /// Every person, named first (by name), then by id.
    pub fn people(&self) -> Result<Vec<Person>> {
        self.flush()?;
        let conn = self.conn()?;
        let mut st = conn
            .prepare(&format!(
                "{PERSON_SELECT} ORDER BY p.name IS NULL, p.name, p.id"
            ))
            .map_err(|e| self.err(e))?;
        let people = st
            .query_map([], person_row)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        Ok(people)
    }

    /// The person a user means: an exact name, else `person_0007` / `#7` for an id.
    pub fn person(&self, who: &str) -> Result<Person> {
        self.flush()?;
        let conn = self.conn()?;
        let by_name = conn
            .query_row(
                &format!("{PERSON_SELECT} WHERE p.name = ?1"),
                params![who.trim()],
                person_row,
            )
            .optional()
            .map_err(|e| self.err(e))?;
        if let Some(p) = by_name {
            return Ok(p);
        }
        if let Some(id) = parse_numbered(who.trim()) {
            if let Some(p) = conn
                .query_row(
                    &format!("{PERSON_SELECT} WHERE p.id = ?1"),
                    params![id],
                    person_row,
                )
                .optional()
                .map_err(|e| self.err(e))?
            {
                return Ok(p);
            }
        }
        Err(Error::NotFound(format!(
            "no person {who:?} in the library (see `facekit people list`)"
        )))
    }

    /// The id of the person named `name`, created when there is none (the bool says so). Safe
    /// against other threads and processes creating the same name at the same time.
    pub fn person_named(&self, name: &str) -> Result<(i64, bool)> {
        let name = check_name(name)?;
        self.flush()?;
        let conn = self.conn()?;
        let created = conn
            .execute(
                "INSERT INTO people(name, created_at) VALUES (?1, ?2) \
                 ON CONFLICT(name) DO NOTHING",
                params![name, now()],
            )
            .map_err(|e| self.err(e))?
            > 0;
        let id = conn
            .query_row(
                "SELECT id FROM people WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        Ok((id, created))
    }

    /// Gives person `who` the name `new` (an existing name is refused: merge instead).
    pub fn rename_person(&self, who: &str, new: &str) -> Result<Person> {
        let person = self.person(who)?;
        let new = check_name(new)?;
        if let Ok(other) = self.person(new) {
            if other.id != person.id {
                return Err(Error::Config(format!(
                    "{new:?} is already a person; to make them one, run \
                     `facekit people merge {new:?} {:?}`",
                    person.label()
                )));
            }
        }
        self.conn()?
            .execute(
                "UPDATE people SET name = ?2 WHERE id = ?1",
                params![person.id, new],
            )
            .map_err(|e| self.err(e))?;
        self.person(new)
    }

    /// Moves every face of the people `from` to `into` and removes them; returns `into`.
    pub fn merge_people(&self, into: &str, from: &[&str]) -> Result<Person> {
        let target = self.person(into)?;
        let sources = from
            .iter()
            .map(|w| self.person(w))
            .collect::<Result<Vec<_>>>()?;
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        for s in sources.iter().filter(|s| s.id != target.id) {
            tx.execute(
                "UPDATE assignments SET person_id = ?1 WHERE person_id = ?2",
                params![target.id, s.id],
            )
            .and_then(|_| tx.execute("DELETE FROM people WHERE id = ?1", params![s.id]))
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        drop(conn);
        self.person(&format!("#{}", target.id))
    }

    /// Removes person `who` (their faces stay in the library, unassigned).
    pub fn remove_person(&self, who: &str) -> Result<Person> {
        let person = self.person(who)?;
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute(
            "DELETE FROM assignments WHERE person_id = ?1",
            params![person.id],
        )
        .and_then(|_| tx.execute("DELETE FROM people WHERE id = ?1", params![person.id]))
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(person)
    }

    /// Makes face `face` person `person`'s (replacing any earlier assignment of that face).
    pub fn assign(&self, face: FaceId, person: i64, source: Source) -> Result<()> {
        self.flush()?;
        self.conn()?
            .execute(
                UPSERT_ASSIGNMENT,
                params![face, person, source.as_str(), now()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Removes face `face` from whoever it belonged to (true when it belonged to someone).
    pub fn unassign(&self, face: FaceId) -> Result<bool> {
        self.flush()?;
        let n = self
            .conn()?
            .execute("DELETE FROM assignments WHERE face_id = ?1", params![face])
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// Records a clustering in one transaction: each `(face, person)` join, and each group of
    /// faces as a new unnamed person (whose ids are returned, in group order).
    pub fn record_clustering(
        &self,
        joins: &[(FaceId, i64)],
        groups: &[Vec<FaceId>],
    ) -> Result<Vec<i64>> {
        self.flush()?;
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let t = now();
        let mut ids = Vec::with_capacity(groups.len());
        {
            let mut assign = tx
                .prepare_cached(UPSERT_ASSIGNMENT)
                .map_err(|e| self.err(e))?;
            let clustered = Source::Clustered.as_str();
            for &(face, person) in joins {
                assign
                    .execute(params![face, person, clustered, t])
                    .map_err(|e| self.err(e))?;
            }
            for g in groups {
                tx.execute(
                    "INSERT INTO people(name, created_at) VALUES (NULL, ?1)",
                    params![t],
                )
                .map_err(|e| self.err(e))?;
                let person = tx.last_insert_rowid();
                for &face in g {
                    assign
                        .execute(params![face, person, clustered, t])
                        .map_err(|e| self.err(e))?;
                }
                ids.push(person);
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(ids)
    }

    /// Records faces computed elsewhere as enrolled faces, in one transaction: each item is a
    /// photo's faces (as [`Library::faces_of_file`] gives them) and the person its first face
    /// belongs to (bulk imports, benchmarks).
    pub fn enroll_computed(
        &self,
        pipeline: PipelineId,
        items: &[(super::ImageFaces, i64)],
    ) -> Result<()> {
        self.flush()?;
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let t = now();
        for (faces, person) in items {
            if faces.faces.is_empty() {
                continue;
            }
            let photo =
                super::write_analysis(&tx, pipeline, faces, None).map_err(|e| self.err(e))?;
            let face: i64 = tx
                .prepare_cached(
                    "SELECT id FROM faces WHERE photo_id = ?1 AND pipeline_id = ?2 AND idx = 0",
                )
                .and_then(|mut st| st.query_row(params![photo, pipeline], |r| r.get(0)))
                .map_err(|e| self.err(e))?;
            tx.prepare_cached(UPSERT_ASSIGNMENT)
                .and_then(|mut st| st.execute(params![face, person, Source::Enrolled.as_str(), t]))
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// The names of these people (`None` for unnamed ones; unknown ids are left out).
    pub fn names(&self, ids: &[i64]) -> Result<HashMap<i64, Option<String>>> {
        let conn = self.conn()?;
        let mut st = conn
            .prepare_cached("SELECT name FROM people WHERE id = ?1")
            .map_err(|e| self.err(e))?;
        let mut out = HashMap::new();
        for &id in ids {
            if let Some(name) = st
                .query_row(params![id], |r| r.get::<_, Option<String>>(0))
                .optional()
                .map_err(|e| self.err(e))?
            {
                out.insert(id, name);
            }
        }
        Ok(out)
    }

    /// Removes unnamed people left without faces (after a recluster); returns how many.
    pub fn prune_people(&self) -> Result<usize> {
        self.conn()?
            .execute(
                "DELETE FROM people WHERE name IS NULL AND NOT EXISTS \
                 (SELECT 1 FROM assignments a WHERE a.person_id = people.id)",
                [],
            )
            .map_err(|e| self.err(e))
    }

    /// Deletes the `clustered` assignments of these faces (what `--recluster` starts from).
    pub fn clear_clustered(&self, faces: &[FaceId]) -> Result<usize> {
        self.flush()?;
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let mut n = 0;
        {
            let mut st = tx
                .prepare_cached(
                    "DELETE FROM assignments WHERE face_id = ?1 AND source = 'clustered'",
                )
                .map_err(|e| self.err(e))?;
            for &f in faces {
                n += st.execute(params![f]).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(n)
    }

    /// Enrolls the largest face of the photo at `path` as person `name` (created if new),
    /// detecting and embedding it with `pipeline` unless the library has it.
    pub fn enroll(
        &self,
        pipeline: &Pipeline,
        name: &str,
        path: &Path,
        opts: &LoadOptions,
    ) -> Result<Enrolled> {
        let (faces, _) = self.faces_of_file(pipeline, path, opts, false)?;
        let boxes = faces.faces.iter().map(|f| &f.bbox);
        let Some(index) = crate::pipeline::select_face(
            boxes,
            crate::FacePolicy::Largest,
            faces.width,
            faces.height,
        ) else {
            return Err(Error::image(path, "no face found to enroll"));
        };
        let pid = self.pipeline_id(pipeline)?;
        let ids = self.face_ids(pid, &faces.sha256)?;
        let face = *ids
            .get(index)
            .ok_or_else(|| Error::image(path, "face missing from the library"))?;
        let (person, _) = self.person_named(name)?;
        self.assign(face, person, Source::Enrolled)?;
        Ok(Enrolled {
            person,
            face,
            index,
            faces_in_photo: faces.faces.len(),
        })
    }

    /// The assignment of each of `faces` (person id and source), `None` for unassigned ones.
    pub fn assignments_of(&self, faces: &[FaceId]) -> Result<Vec<Option<(i64, Source)>>> {
        self.flush()?;
        let conn = self.conn()?;
        let mut st = conn
            .prepare_cached("SELECT person_id, source FROM assignments WHERE face_id = ?1")
            .map_err(|e| self.err(e))?;
        faces
            .iter()
            .map(|&f| {
                st.query_row(params![f], |r| {
                    Ok((r.get::<_, i64>(0)?, Source::parse(&r.get::<_, String>(1)?)))
                })
                .optional()
                .map_err(|e| self.err(e))
            })
            .collect()
    }

    /// Every face of `pipeline` that belongs to a person, vectors in one matrix, read in one
    /// query (the gallery `identify` searches and `cluster` grows).
    pub fn assigned(&self, pipeline: PipelineId) -> Result<Assigned> {
        self.flush()?;
        let conn = self.conn()?;
        let mut st = conn
            .prepare(
                "SELECT a.face_id, a.person_id, a.source, f.photo_id, e.vector \
                 FROM assignments a JOIN faces f ON f.id = a.face_id \
                 JOIN embeddings e ON e.face_id = a.face_id \
                 WHERE f.pipeline_id = ?1 ORDER BY a.face_id",
            )
            .map_err(|e| self.err(e))?;
        let mut out = Assigned::default();
        let mut rows = st.query(params![pipeline]).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let blob = r.get_ref(4).map_err(|e| self.err(e))?;
            let blob = blob.as_blob().map_err(|e| self.err(e.into()))?;
            let dim = blob.len() / 4;
            if out.faces.is_empty() {
                out.dim = dim;
            } else if dim != out.dim {
                return Err(Error::Library {
                    path: self.path.clone(),
                    reason: format!("embeddings of {} and {dim} values in one pipeline", out.dim),
                });
            }
            extend_f32(&mut out.vectors, blob);
            out.faces.push(r.get(0).map_err(|e| self.err(e))?);
            out.person.push(r.get(1).map_err(|e| self.err(e))?);
            let s: String = r.get(2).map_err(|e| self.err(e))?;
            out.source.push(Source::parse(&s));
            out.photo.push(r.get(3).map_err(|e| self.err(e))?);
        }
        Ok(out)
    }

    /// The face with index `index` of the photo at `path` as `pipeline` sees it (analysing the
    /// photo if needed), with how many faces it has.
    pub fn face_of_file(
        &self,
        pipeline: &Pipeline,
        path: &Path,
        index: Option<usize>,
        opts: &LoadOptions,
    ) -> Result<(FaceId, usize, usize)> {
        let (faces, _) = self.faces_of_file(pipeline, path, opts, false)?;
        let n = faces.faces.len();
        let index = match index {
            Some(i) if i < n => i,
            Some(i) => {
                return Err(Error::image(
                    path,
                    format!("has {n} face(s); there is no face {i} (faces count from 0)"),
                ))
            }
            None if n == 1 => 0,
            None if n == 0 => return Err(Error::image(path, "no face found")),
            None => {
                return Err(Error::image(
                    path,
                    format!("has {n} faces; say which one (0 to {})", n - 1),
                ))
            }
        };
        let pid = self.pipeline_id(pipeline)?;
        let ids = self.face_ids(pid, &faces.sha256)?;
        let face = *ids
            .get(index)
            .ok_or_else(|| Error::image(path, "face missing from the library"))?;
        Ok((face, index, n))
    }
}

/// A photo of a "known people" folder and whose it is (or why it cannot be used).
pub type KnownPhoto = (String, std::result::Result<std::path::PathBuf, Error>);

/// The photos of a known-people folder, as face_recognition's: each subfolder is a person named
/// by the folder (its photos walked recursively), and each image directly inside is a person
/// named by its file stem. In name order; entries that cannot be used carry their error.
pub fn known_folder(dir: &Path) -> Result<Vec<KnownPhoto>> {
    let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let mut out = Vec::new();
    for path in entries {
        let name_of = |s: Option<&std::ffi::OsStr>| s.map(|s| s.to_string_lossy().into_owned());
        if path.is_dir() {
            let Some(name) = name_of(path.file_name()) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            for item in crate::io::collect_inputs(std::slice::from_ref(&path)) {
                out.push((name.clone(), item));
            }
        } else if crate::io::has_image_extension(&path) {
            if let Some(name) = name_of(path.file_stem()) {
                out.push((name, Ok(path)));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_folders() {
        assert_eq!(parse_numbered("person_0007"), Some(7));
        assert_eq!(parse_numbered("#12"), Some(12));
        assert_eq!(parse_numbered("person_x"), None);
        assert!(check_name("person_0003").is_err());
        assert!(check_name("  ").is_err());
        assert!(check_name("a\nb").is_err());
        assert_eq!(check_name(" Ada Lovelace ").unwrap(), "Ada Lovelace");
        assert_eq!(folder_name("Ada Lovelace"), "Ada_Lovelace");
        assert_eq!(folder_name("../x/y"), "_._x_y");
        assert_eq!(label(7, None), "person_0007");
    }

    #[test]
    fn people_are_created_renamed_merged_and_removed() {
        let lib = Library::in_memory().unwrap();
        let (ada, created) = lib.person_named("Ada").unwrap();
        assert!(created);
        assert_eq!(lib.person_named("Ada").unwrap(), (ada, false));
        let anon = lib.record_clustering(&[], &[Vec::new()]).unwrap()[0];
        assert_eq!(lib.person(&format!("person_{anon:04}")).unwrap().id, anon);
        assert!(lib.rename_person(&format!("#{anon}"), "Ada").is_err());
        let grace = lib.rename_person(&format!("#{anon}"), "Grace").unwrap();
        assert_eq!(grace.name.as_deref(), Some("Grace"));
        let merged = lib.merge_people("Ada", &["Grace"]).unwrap();
        assert_eq!(merged.id, ada);
        assert!(lib.person("Grace").is_err());
        lib.remove_person("Ada").unwrap();
        assert!(lib.people().unwrap().is_empty());
    }
}
