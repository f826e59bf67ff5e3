//! Identification against the people of the library: "who is this face?". The faces that
//! belong to people (enrolled, confirmed or clustered) under one pipeline form the gallery,
//! loaded as one matrix in one query; each query face gets its nearest people, a decision at
//! the identification threshold, and how far the next person is.

use serde::Serialize;

use std::path::{Path, PathBuf};

use super::index::{self, Index};
use super::people::label;
use super::{FaceId, Library};
use crate::identify::{decide, Gallery};
use crate::pipeline::Pipeline;
use crate::{Error, Result};

/// The distance under which a face is taken for a known person (dlib embeddings, Euclidean):
/// much stricter than verify's 0.60, because a stranger is compared with everyone known at
/// once. It is the distance at 1 % false identifications of strangers (FAR) on the LFW
/// protocol of `examples/eval_identify.rs`, chosen on half of the people (0.4144) and checked
/// on the other half (DIR 56.8 % at FAR 1.7 %); see the README.
pub const IDENTIFY_THRESHOLD: f32 = 0.41;

/// The known people of one pipeline, ready to search.
#[derive(Debug)]
pub struct Known {
    search: Search,
    /// Person id and label per dense person index.
    people: Vec<(i64, String)>,
    /// Library face id per gallery row.
    faces: Vec<FaceId>,
}

#[derive(Debug)]
enum Search {
    /// Nobody is known.
    Empty,
    /// In memory (a library without a file).
    Gallery(Gallery),
    /// The gallery index beside the database.
    Index(Index),
}

/// One candidate person for a face.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    /// The library's person id.
    pub person: i64,
    /// The name, or `person_0007`.
    pub name: String,
    /// Distance to that person's nearest face.
    pub distance: f32,
    /// The library face at that distance.
    pub face: FaceId,
}

/// Who a face is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Identity {
    /// The best candidate when within the threshold, else `None` (unknown).
    pub known: Option<Candidate>,
    /// Distance to the nearest person, known or not (`None`: nobody is known).
    pub distance: Option<f32>,
    /// Distance to the second-nearest person: the larger the gap, the surer the answer.
    pub next_distance: Option<f32>,
    /// The nearest people, nearest first (`top_k` of them).
    pub candidates: Vec<Candidate>,
}

impl Library {
    /// The change counter of who is who (raised by every assignment change).
    pub fn generation(&self) -> Result<i64> {
        self.flush()?;
        self.conn()?
            .query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e))
    }

    /// Every person's label by id.
    fn labels(&self) -> Result<std::collections::HashMap<i64, String>> {
        let conn = self.conn()?;
        let mut st = conn
            .prepare("SELECT id, name FROM people")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                let id: i64 = r.get(0)?;
                let name: Option<String> = r.get(1)?;
                Ok((id, label(id, name.as_deref())))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<_>>())
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// The gallery index file of a pipeline, beside the database.
    fn index_path(&self, file: &Path, pipeline: super::PipelineId) -> PathBuf {
        let mut name = file.as_os_str().to_owned();
        name.push(format!(".gallery-{pipeline}"));
        PathBuf::from(name)
    }

    /// The people known to `pipeline` (every face assigned to someone), ready to search: from
    /// the gallery index beside the database, rebuilt first when the library changed since.
    pub fn known(&self, pipeline: &Pipeline) -> Result<Known> {
        let pid = self.pipeline_id(pipeline)?;
        let generation = self.generation()?;
        let labels = self.labels()?;
        let label_of = |id: i64| labels.get(&id).cloned().unwrap_or_else(|| label(id, None));
        if let Some(file) = self.file().map(Path::to_path_buf) {
            let path = self.index_path(&file, pid);
            let index = match Index::load(&path) {
                Ok(ix) if ix.generation == generation => Some(ix),
                _ => {
                    let a = self.assigned(pid)?;
                    let (rows, people) = dense(&a.person);
                    let written = if a.faces.is_empty() {
                        Err(Error::Config("empty".into()))
                    } else {
                        index::write(
                            &path, generation, a.dim, &a.vectors, &rows, &a.faces, &people,
                        )
                    };
                    match written.and_then(|_| Index::load(&path)) {
                        Ok(ix) => Some(ix),
                        Err(_) if a.faces.is_empty() => None,
                        // A read-only folder: search in memory instead.
                        Err(_) => {
                            return Ok(Known {
                                people: people.iter().map(|&p| (p, label_of(p))).collect(),
                                faces: a.faces,
                                search: Search::Gallery(Gallery::new(a.dim, a.vectors, rows)?),
                            })
                        }
                    }
                }
            };
            return Ok(match index {
                Some(ix) => Known {
                    people: ix.people.iter().map(|&p| (p, label_of(p))).collect(),
                    faces: ix.faces.clone(),
                    search: Search::Index(ix),
                },
                None => Known {
                    people: Vec::new(),
                    faces: Vec::new(),
                    search: Search::Empty,
                },
            });
        }
        let a = self.assigned(pid)?;
        let (rows, people) = dense(&a.person);
        let search = if a.faces.is_empty() {
            Search::Empty
        } else {
            Search::Gallery(Gallery::new(a.dim, a.vectors, rows)?)
        };
        Ok(Known {
            people: people.iter().map(|&p| (p, label_of(p))).collect(),
            faces: a.faces,
            search,
        })
    }

    /// People who have faces, but none under `pipeline` (enrolled with another model or
    /// detector): identify cannot see them.
    pub fn people_missing_from(&self, pipeline: &Pipeline) -> Result<usize> {
        let pid = self.pipeline_id(pipeline)?;
        let conn = self.conn()?;
        conn.query_row(
            "SELECT count(DISTINCT a.person_id) FROM assignments a \
             WHERE NOT EXISTS (SELECT 1 FROM assignments b JOIN faces f ON f.id = b.face_id \
               WHERE b.person_id = a.person_id AND f.pipeline_id = ?1)",
            [pid],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n as usize)
        .map_err(|e| self.err(e))
    }
}

/// Dense person indices per row, and the person id of each index.
fn dense(person: &[i64]) -> (Vec<u32>, Vec<i64>) {
    let mut index: std::collections::HashMap<i64, u32> = Default::default();
    let mut ids = Vec::new();
    let rows = person
        .iter()
        .map(|&p| {
            *index.entry(p).or_insert_with(|| {
                ids.push(p);
                (ids.len() - 1) as u32
            })
        })
        .collect();
    (rows, ids)
}

impl Known {
    /// Number of known people.
    pub fn people(&self) -> usize {
        self.people.len()
    }

    /// Number of faces they have.
    pub fn faces(&self) -> usize {
        self.faces.len()
    }

    /// Who each of `embeddings` is: the `top_k` nearest people and the decision at
    /// `threshold` (everyone is unknown when nobody is known).
    pub fn identify(
        &self,
        embeddings: &[&[f32]],
        top_k: usize,
        threshold: f32,
    ) -> Result<Vec<Identity>> {
        let dim = match &self.search {
            Search::Gallery(g) => g.dim(),
            Search::Index(ix) => ix.dim(),
            Search::Empty => 0,
        };
        if dim == 0 {
            let unknown = Identity {
                known: None,
                distance: None,
                next_distance: None,
                candidates: Vec::new(),
            };
            return Ok(vec![unknown; embeddings.len()]);
        }
        if let Some(e) = embeddings.iter().find(|e| e.len() != dim) {
            return Err(Error::Config(format!(
                "identify: an embedding of {} values, the known faces have {dim}",
                e.len()
            )));
        }
        let flat: Vec<f32> = embeddings.iter().flat_map(|e| e.iter().copied()).collect();
        let lists = match &self.search {
            Search::Gallery(g) => g.search(&flat, top_k.max(2))?,
            Search::Index(ix) => ix.search(&flat, top_k.max(2))?,
            Search::Empty => Vec::new(),
        };
        Ok(lists
            .iter()
            .map(|list| {
                let d = decide(list, threshold);
                let candidates: Vec<Candidate> = list
                    .iter()
                    .map(|m| {
                        let (person, name) = self.people[m.person as usize].clone();
                        Candidate {
                            person,
                            name,
                            distance: m.distance,
                            face: self.faces[m.row as usize],
                        }
                    })
                    .collect();
                Identity {
                    known: d.known.and_then(|_| candidates.first().cloned()),
                    distance: d.distance,
                    next_distance: d.next_distance,
                    candidates: candidates.into_iter().take(top_k.max(1)).collect(),
                }
            })
            .collect())
    }
}
