//! Identification: which known people are nearest to a query embedding.
//!
//! A [`Gallery`] holds the embeddings of known people as one contiguous row-major matrix with
//! the person of each row (a person may own any number of rows). [`Gallery::search`] gives,
//! per query, the `k` nearest distinct people, each at its nearest row (Euclidean), and
//! [`decide`] turns that list into "known as X" or "unknown" at a threshold, with the distance
//! to the next person as a measure of how sure the answer is.
//!
//! The search runs on the GEMM top-k kernel of [`crate::distance`] (with the rows' squared
//! norms computed once, so a search reads the matrix once): it asks for enough nearest
//! rows to see `k` distinct people and asks again for more rows (only for the queries that
//! need it) when one person owns all of them. Rows are ranked by their exact pair-kernel
//! distance, ties by row index, and a person ranks by its first row in that order, so the
//! answer is exactly that of a brute-force scan (see the tests). Pure computation: no I/O.

use std::collections::HashSet;

use crate::distance;
use crate::{Error, Result};

/// Known people's embeddings: an `n x dim` row-major matrix and the person of each row.
#[derive(Debug, Clone)]
pub struct Gallery {
    dim: usize,
    vectors: Vec<f32>,
    /// `|row|^2` of every row, computed once (a search then reads the matrix once).
    sq_norms: Vec<f32>,
    person_of_row: Vec<u32>,
    people: usize,
}

/// One person found for a query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PersonMatch {
    /// The person (as given in `person_of_row`).
    pub person: u32,
    /// Euclidean distance from the query to this person's nearest row.
    pub distance: f32,
    /// The gallery row at that distance (the lowest such row on ties).
    pub row: u32,
}

/// What one query is: a known person or unknown, and how sure.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Decision {
    /// The nearest person, when its distance is within the threshold.
    pub known: Option<u32>,
    /// Distance to the nearest person (known or not); `None` for an empty gallery.
    pub distance: Option<f32>,
    /// Distance to the second-nearest person; `None` when fewer than two were searched.
    pub next_distance: Option<f32>,
}

/// Rows asked for in the first top-k pass: this many per wanted person, at least `MIN_ROWS`.
const ROWS_PER_PERSON: usize = 4;
const MIN_ROWS: usize = 64;
/// Growth of the row count between passes for queries that saw too few distinct people.
const GROWTH: usize = 16;

impl Gallery {
    /// A gallery of `person_of_row.len()` rows of `dim` values each.
    ///
    /// Fails when `dim` is 0, `vectors.len() != dim * person_of_row.len()`, a value is not
    /// finite, or there are more than `u32::MAX` rows.
    pub fn new(dim: usize, vectors: Vec<f32>, person_of_row: Vec<u32>) -> Result<Self> {
        if dim == 0 {
            return Err(Error::Config("gallery: dim must be at least 1".into()));
        }
        let rows = person_of_row.len();
        if dim.checked_mul(rows) != Some(vectors.len()) {
            return Err(Error::Config(format!(
                "gallery: {} values for {rows} rows of dim {dim}",
                vectors.len()
            )));
        }
        if u32::try_from(rows).is_err() {
            return Err(Error::Config(format!(
                "gallery: {rows} rows, more than u32::MAX"
            )));
        }
        if let Some(i) = vectors.iter().position(|v| !v.is_finite()) {
            return Err(Error::Config(format!(
                "gallery: row {} holds a non-finite value",
                i / dim
            )));
        }
        let people = person_of_row.iter().collect::<HashSet<_>>().len();
        let sq_norms = distance::squared_norms(&vectors, dim);
        Ok(Gallery {
            dim,
            vectors,
            sq_norms,
            person_of_row,
            people,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.person_of_row.len()
    }

    /// True when the gallery has no rows.
    pub fn is_empty(&self) -> bool {
        self.person_of_row.is_empty()
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of distinct people.
    pub fn people(&self) -> usize {
        self.people
    }

    /// The person of each row.
    pub fn person_of_row(&self) -> &[u32] {
        &self.person_of_row
    }

    /// The row-major `len() x dim()` matrix.
    pub fn vectors(&self) -> &[f32] {
        &self.vectors
    }

    /// For each query row (`queries` is row-major, `dim()` values per row): the `k` nearest
    /// distinct people, nearest first, each with its distance = min over that person's rows
    /// (Euclidean) and the row that gave it. Lists are shorter when the gallery has fewer
    /// than `k` people; ties rank by row index.
    ///
    /// Fails when `queries` does not hold a whole number of rows or holds a non-finite value.
    pub fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<PersonMatch>>> {
        if !queries.len().is_multiple_of(self.dim) {
            return Err(Error::Config(format!(
                "identify: {} query values are not whole rows of dim {}",
                queries.len(),
                self.dim
            )));
        }
        if queries.iter().any(|v| !v.is_finite()) {
            return Err(Error::Config(
                "identify: a query holds a non-finite value".into(),
            ));
        }
        let n = queries.len() / self.dim;
        let want = k.min(self.people);
        let mut out = vec![Vec::new(); n];
        if want == 0 {
            return Ok(out);
        }
        let m = self.len();
        let mut rows = if self.people == m {
            // One row per person: the nearest `want` rows are the answer.
            want
        } else {
            want.saturating_mul(ROWS_PER_PERSON).max(MIN_ROWS).min(m)
        };
        let mut pending: Vec<usize> = (0..n).collect();
        let mut batch = Vec::new();
        while !pending.is_empty() {
            batch.clear();
            for &q in &pending {
                batch.extend_from_slice(&queries[q * self.dim..(q + 1) * self.dim]);
            }
            let found =
                distance::top_k_with_norms(&batch, &self.vectors, &self.sq_norms, self.dim, rows);
            let complete = rows >= m;
            let mut still = Vec::new();
            for (&q, neighbours) in pending.iter().zip(&found) {
                let people = self.distinct_people(neighbours, want);
                // Rows come in the global (distance, row) order, so the people seen in a prefix
                // are the nearest people: enough of them, or every row seen, is the answer.
                if people.len() == want || complete {
                    out[q] = people;
                } else {
                    still.push(q);
                }
            }
            pending = still;
            rows = rows.saturating_mul(GROWTH).min(m);
        }
        Ok(out)
    }

    /// The first `want` distinct people of a neighbour list in (distance, row) order.
    fn distinct_people(&self, neighbours: &[distance::Neighbor], want: usize) -> Vec<PersonMatch> {
        let mut seen = HashSet::with_capacity(want);
        let mut people = Vec::with_capacity(want);
        for nb in neighbours {
            let person = self.person_of_row[nb.index as usize];
            if seen.insert(person) {
                people.push(PersonMatch {
                    person,
                    distance: nb.distance,
                    row: nb.index,
                });
                if people.len() == want {
                    break;
                }
            }
        }
        people
    }
}

/// Decision for one query from its [`Gallery::search`] list: the best person if its distance
/// is `<= threshold`, with the distances to the best and the next person.
pub fn decide(matches: &[PersonMatch], threshold: f32) -> Decision {
    let best = matches.first();
    Decision {
        known: best.filter(|b| b.distance <= threshold).map(|b| b.person),
        distance: best.map(|b| b.distance),
        next_distance: matches.get(1).map(|m| m.distance),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Rows clustered around `people` centres (several rows per person, uneven counts), as
    /// face embeddings are.
    fn clustered(rows: usize, people: u32, dim: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
        let mut rng = Rng::new(seed);
        let centres: Vec<f32> = (0..people as usize * dim)
            .map(|_| rng.normal() as f32 * 0.3)
            .collect();
        let mut vectors = Vec::with_capacity(rows * dim);
        let mut owner = Vec::with_capacity(rows);
        for _ in 0..rows {
            // Skewed: low person indices own many more rows.
            let p = (rng.f64() * rng.f64() * f64::from(people)) as usize;
            owner.push(p as u32);
            vectors.extend((0..dim).map(|d| centres[p * dim + d] + rng.normal() as f32 * 0.1));
        }
        (vectors, owner)
    }

    /// Brute force: every row's exact distance, min per person, sorted by (distance, row).
    fn reference(g: &Gallery, query: &[f32], k: usize) -> Vec<PersonMatch> {
        let mut best: std::collections::HashMap<u32, PersonMatch> = Default::default();
        for (r, row) in g.vectors.chunks(g.dim).enumerate() {
            let d = distance::euclidean(query, row);
            let p = g.person_of_row[r];
            let m = PersonMatch {
                person: p,
                distance: d,
                row: r as u32,
            };
            best.entry(p)
                .and_modify(|b| {
                    if (d, r as u32) < (b.distance, b.row) {
                        *b = m;
                    }
                })
                .or_insert(m);
        }
        let mut all: Vec<PersonMatch> = best.into_values().collect();
        all.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.row.cmp(&b.row)));
        all.truncate(k);
        all
    }

    #[test]
    fn matches_brute_force_on_random_data() {
        let dim = 16;
        let (vectors, owner) = clustered(3000, 40, dim, 1);
        let g = Gallery::new(dim, vectors, owner).unwrap();
        assert_eq!(g.len(), 3000);
        assert_eq!(g.people(), 40);
        // Queries near the gallery (many rows of one person nearest) and far from it.
        let (mut queries, _) = clustered(60, 40, dim, 2);
        let mut rng = Rng::new(3);
        queries.extend((0..10 * dim).map(|_| rng.normal() as f32));
        for k in [1, 2, 5, 39, 40, 41, 100] {
            let got = g.search(&queries, k).unwrap();
            assert_eq!(got.len(), 70);
            for (q, list) in queries.chunks(dim).zip(&got) {
                assert_eq!(list, &reference(&g, q, k), "k {k}");
                assert_eq!(list.len(), k.min(40));
            }
        }
    }

    #[test]
    fn one_person_owning_the_nearest_rows_needs_more_passes() {
        // Person 0 owns 5000 rows right around the query; person 1 has one row farther away.
        let dim = 4;
        let mut rng = Rng::new(9);
        let mut vectors: Vec<f32> = (0..5000 * dim)
            .map(|_| rng.normal() as f32 * 0.01)
            .collect();
        vectors.extend([1.0, 0.0, 0.0, 0.0]);
        let mut owner = vec![0u32; 5000];
        owner.push(1);
        let g = Gallery::new(dim, vectors, owner).unwrap();
        let query = [0.0f32; 4];
        let got = g.search(&query, 2).unwrap();
        assert_eq!(got[0], reference(&g, &query, 2));
        assert_eq!(got[0][1].person, 1);
        assert_eq!(got[0][1].row, 5000);
        assert!((got[0][1].distance - 1.0).abs() < 1e-6);
    }

    #[test]
    fn one_row_per_person_matches_brute_force() {
        let dim = 8;
        let mut rng = Rng::new(5);
        let vectors: Vec<f32> = (0..500 * dim).map(|_| rng.normal() as f32).collect();
        let g = Gallery::new(dim, vectors, (0..500).rev().collect()).unwrap();
        let queries: Vec<f32> = (0..20 * dim).map(|_| rng.normal() as f32).collect();
        for k in [1, 3, 600] {
            for (q, list) in queries.chunks(dim).zip(g.search(&queries, k).unwrap()) {
                assert_eq!(list, reference(&g, q, k));
            }
        }
    }

    #[test]
    fn ties_rank_by_row() {
        // Rows 0..4 all at distance 1 from the origin; persons 7, 3, 7, 5.
        let vectors = vec![1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, -1.0];
        let g = Gallery::new(2, vectors, vec![7, 3, 7, 5]).unwrap();
        let got = g.search(&[0.0, 0.0], 10).unwrap();
        let order: Vec<(u32, u32)> = got[0].iter().map(|m| (m.person, m.row)).collect();
        assert_eq!(order, [(7, 0), (3, 1), (5, 3)]);
        assert!(got[0].iter().all(|m| m.distance == 1.0));
    }

    #[test]
    fn empty_gallery_zero_k_and_bad_input() {
        let g = Gallery::new(3, Vec::new(), Vec::new()).unwrap();
        assert!(g.is_empty());
        assert_eq!(g.people(), 0);
        let got = g.search(&[0.0; 6], 5).unwrap();
        assert_eq!(got, vec![Vec::new(), Vec::new()]);
        assert_eq!(decide(&got[0], 1.0), Decision::default());

        let g = Gallery::new(2, vec![0.0, 1.0], vec![4]).unwrap();
        assert_eq!(g.search(&[0.0, 0.0], 0).unwrap(), vec![Vec::new()]);
        assert!(g.search(&[0.0; 3], 1).is_err());
        assert!(g.search(&[0.0, f32::NAN], 1).is_err());
        assert!(g.search(&[], 1).unwrap().is_empty());

        assert!(Gallery::new(0, vec![], vec![]).is_err());
        assert!(Gallery::new(2, vec![0.0; 3], vec![0, 1]).is_err());
        assert!(Gallery::new(2, vec![0.0, f32::INFINITY], vec![0]).is_err());
    }

    #[test]
    fn decide_applies_the_threshold_and_reports_the_margin() {
        let m = |person, distance| PersonMatch {
            person,
            distance,
            row: 0,
        };
        let two = [m(4, 0.45), m(9, 0.7)];
        assert_eq!(
            decide(&two, 0.5),
            Decision {
                known: Some(4),
                distance: Some(0.45),
                next_distance: Some(0.7)
            }
        );
        // At the threshold counts as known; above it is unknown but still reports distances.
        assert_eq!(decide(&two, 0.45).known, Some(4));
        let d = decide(&two, 0.4);
        assert_eq!(d.known, None);
        assert_eq!(d.distance, Some(0.45));
        let one = decide(&two[..1], 0.5);
        assert_eq!((one.known, one.next_distance), (Some(4), None));
    }
}
