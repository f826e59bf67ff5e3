//! Identification against the people of the library: "who is this face?". The faces that
//! belong to people (enrolled, confirmed or clustered) under one pipeline form the gallery,
//! loaded as one matrix in one query; each query face gets its nearest people, a decision at
//! the identification threshold, and how far the next person is.

use serde::Serialize;

use super::people::label;
use super::{FaceId, Library};
use crate::identify::{decide, Gallery};
use crate::pipeline::Pipeline;
use crate::{Error, Result};

/// The distance under which a face is taken for a known person (dlib embeddings, Euclidean):
/// stricter than verify's 0.60 because a face is compared with every known person at once.
/// Chosen at 1 % false identifications of strangers on one half of LFW's people and checked
/// on the other half (`examples/eval_identify.rs`, README).
pub const IDENTIFY_THRESHOLD: f32 = 0.55;

/// The known people of one pipeline, ready to search.
#[derive(Debug, Clone)]
pub struct Known {
    gallery: Option<Gallery>,
    /// Person id and label per dense person index.
    people: Vec<(i64, String)>,
    /// Library face id per gallery row.
    faces: Vec<FaceId>,
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
    /// The people known to `pipeline` (every face assigned to someone), as one gallery.
    pub fn known(&self, pipeline: &Pipeline) -> Result<Known> {
        let pid = self.pipeline_id(pipeline)?;
        let assigned = self.assigned(pid)?;
        let mut index: std::collections::HashMap<i64, u32> = Default::default();
        let mut people_ids = Vec::new();
        let rows: Vec<u32> = assigned
            .person
            .iter()
            .map(|&p| {
                *index.entry(p).or_insert_with(|| {
                    people_ids.push(p);
                    (people_ids.len() - 1) as u32
                })
            })
            .collect();
        let names = self.names(&people_ids)?;
        let people = people_ids
            .iter()
            .map(|&id| (id, label(id, names.get(&id).cloned().flatten().as_deref())))
            .collect();
        let gallery = if rows.is_empty() {
            None
        } else {
            Some(Gallery::new(assigned.dim, assigned.vectors, rows)?)
        };
        Ok(Known {
            gallery,
            people,
            faces: assigned.faces,
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
        let Some(g) = &self.gallery else {
            let unknown = Identity {
                known: None,
                distance: None,
                next_distance: None,
                candidates: Vec::new(),
            };
            return Ok(vec![unknown; embeddings.len()]);
        };
        if let Some(e) = embeddings.iter().find(|e| e.len() != g.dim()) {
            return Err(Error::Config(format!(
                "identify: an embedding of {} values, the known faces have {}",
                e.len(),
                g.dim()
            )));
        }
        let flat: Vec<f32> = embeddings.iter().flat_map(|e| e.iter().copied()).collect();
        let lists = g.search(&flat, top_k.max(2))?;
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
