//! The gallery index: the faces of a pipeline that belong to people, kept beside the database
//! as one file (`<library>.gallery-<pipeline>`) that loads with a few reads, and searched
//! exactly in a quarter of the memory traffic of the float vectors.
//!
//! Each vector is stored twice: as 8-bit codes with a per-row scale (what the scan reads) and
//! as the original f32 values (read back only for the few rows the scan cannot rule out). The
//! scan computes, for every row, the distance `a` from the query to the dequantised row; the
//! true distance `d` lies within `a ± e`, where `e` is that row's quantisation error (triangle
//! inequality), so every row whose lower bound `a - e` exceeds the R-th smallest upper bound is
//! provably outside the R nearest rows. The survivors are re-ranked with their exact f32
//! distances: the answer is the same as a brute-force scan's ([`crate::identify::Gallery`]).
//!
//! The file records the library's generation (a counter SQLite triggers raise on every change
//! of assignments); a stale or damaged file is rebuilt from the database and replaced
//! atomically.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::identify::PersonMatch;
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"FKGALL01";
const HEADER: usize = 8 + 6 * 8;
/// Rows per parallel scan block (128 KB of codes at dim 128: stays in L2 for every query).
const BLOCK: usize = 1024;
/// Histogram bins for the candidate bound.
const BINS: usize = 4096;
/// Relative slack on the squared approximate distances for float rounding in the scan.
const SLACK: f32 = 1e-5;

/// A loaded gallery index.
#[derive(Debug)]
pub struct Index {
    pub(crate) generation: i64,
    dim: usize,
    rows: usize,
    /// Dense person index per row.
    person_of_row: Vec<u32>,
    /// Library face id per row.
    pub(crate) faces: Vec<i64>,
    /// Library person id per dense person index.
    pub(crate) people: Vec<i64>,
    /// Dequantisation scale per row.
    scale: Vec<f32>,
    /// Squared norm of the dequantised row.
    norm2: Vec<f32>,
    /// Quantisation error (L2) per row.
    err: Vec<f32>,
    /// The largest of `norm2`.
    max_norm2: f32,
    /// The largest of `err`.
    max_err: f32,
    codes: Vec<i8>,
    file: File,
    vectors_at: u64,
    path: PathBuf,
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::io(path, e)
}

fn damaged(path: &Path, what: &str) -> Error {
    Error::Library {
        path: path.to_path_buf(),
        reason: format!("gallery index damaged: {what}"),
    }
}

/// Writes the index of `rows` vectors (row-major, `dim` each) atomically at `path`.
pub(crate) fn write(
    path: &Path,
    generation: i64,
    dim: usize,
    vectors: &[f32],
    person_of_row: &[u32],
    faces: &[i64],
    people: &[i64],
) -> Result<()> {
    let rows = person_of_row.len();
    let mut codes = vec![0i8; rows * dim];
    let mut scale = vec![0f32; rows];
    let mut norm2 = vec![0f32; rows];
    let mut err = vec![0f32; rows];
    codes
        .par_chunks_mut(dim.max(1))
        .zip(vectors.par_chunks(dim.max(1)))
        .zip(
            scale
                .par_iter_mut()
                .zip(norm2.par_iter_mut().zip(err.par_iter_mut())),
        )
        .for_each(|((c, x), (s, (n2, e)))| {
            let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            *s = if max > 0.0 { max / 127.0 } else { 1.0 };
            let (mut nn, mut ee) = (0f64, 0f64);
            for (ci, &xi) in c.iter_mut().zip(x) {
                *ci = (xi / *s).round().clamp(-127.0, 127.0) as i8;
                let deq = f64::from(*ci) * f64::from(*s);
                nn += deq * deq;
                ee += (f64::from(xi) - deq).powi(2);
            }
            *n2 = nn as f32;
            *e = ee.sqrt() as f32;
        });
    // Written through a buffer (never the whole file in memory), then renamed into place.
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        f.write_all(MAGIC)?;
        for v in [
            generation as u64,
            dim as u64,
            rows as u64,
            people.len() as u64,
            0,
            0,
        ] {
            f.write_all(&v.to_le_bytes())?;
        }
        for &p in person_of_row {
            f.write_all(&p.to_le_bytes())?;
        }
        for &x in faces.iter().chain(people) {
            f.write_all(&x.to_le_bytes())?;
        }
        for v in [&scale, &norm2, &err] {
            for x in v.iter() {
                f.write_all(&x.to_le_bytes())?;
            }
        }
        let bytes: Vec<u8> = codes.iter().map(|&c| c as u8).collect();
        f.write_all(&bytes)?;
        drop(bytes);
        for x in vectors {
            f.write_all(&x.to_le_bytes())?;
        }
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(path, e)
    })
}

impl Index {
    /// Loads the index at `path` (everything but the f32 vectors, which stay on disk).
    pub(crate) fn load(path: &Path) -> Result<Index> {
        let mut file = File::open(path).map_err(|e| io_err(path, e))?;
        let len = file.metadata().map_err(|e| io_err(path, e))?.len();
        let mut head = [0u8; HEADER];
        file.read_exact(&mut head).map_err(|e| io_err(path, e))?;
        if &head[..8] != MAGIC {
            return Err(damaged(path, "not a gallery index"));
        }
        let generation = le_u64(&head, 8) as i64;
        let dim = le_u64(&head, 16) as usize;
        let rows = le_u64(&head, 24) as usize;
        let npeople = le_u64(&head, 32) as usize;
        let meta = rows
            .checked_mul(4 + 8 + 12 + dim)
            .and_then(|m| m.checked_add(npeople.checked_mul(8)?))
            .ok_or_else(|| damaged(path, "sizes overflow"))?;
        let vectors = rows
            .checked_mul(dim * 4)
            .ok_or_else(|| damaged(path, "sizes overflow"))?;
        if dim == 0 || (HEADER + meta + vectors) as u64 != len {
            return Err(damaged(path, "wrong length"));
        }
        let mut buf = vec![0u8; meta];
        file.read_exact(&mut buf).map_err(|e| io_err(path, e))?;
        let mut at = 0;
        let mut take = |n: usize| {
            let s = &buf[at..at + n];
            at += n;
            s
        };
        let u32s = |b: &[u8]| -> Vec<u32> {
            b.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let i64s = |b: &[u8]| -> Vec<i64> {
            b.chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect()
        };
        let f32s = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let person_of_row = u32s(take(rows * 4));
        let faces = i64s(take(rows * 8));
        let people = i64s(take(npeople * 8));
        let scale = f32s(take(rows * 4));
        let norm2 = f32s(take(rows * 4));
        let err = f32s(take(rows * 4));
        let codes: Vec<i8> = take(rows * dim).iter().map(|&b| b as i8).collect();
        if person_of_row.iter().any(|&p| p as usize >= npeople) {
            return Err(damaged(path, "person out of range"));
        }
        let max_norm2 = norm2.iter().fold(0f32, |m, &v| m.max(v));
        let max_err = err.iter().fold(0f32, |m, &v| m.max(v));
        if !max_norm2.is_finite() || !max_err.is_finite() {
            return Err(damaged(path, "non-finite values"));
        }
        Ok(Index {
            max_norm2,
            max_err,
            generation,
            dim,
            rows,
            person_of_row,
            faces,
            people,
            scale,
            norm2,
            err,
            codes,
            file,
            vectors_at: (HEADER + meta) as u64,
            path: path.to_path_buf(),
        })
    }

    /// Vector length.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The exact f32 vector of `row`, read from the file.
    fn vector(&self, row: usize, out: &mut [f32]) -> Result<()> {
        let mut b = vec![0u8; self.dim * 4];
        self.file
            .read_exact_at(&mut b, self.vectors_at + (row * self.dim * 4) as u64)
            .map_err(|e| io_err(&self.path, e))?;
        for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        Ok(())
    }

    /// The `k` nearest distinct people of each query (row-major, `dim` each), nearest first,
    /// each at its nearest row: exactly [`crate::identify::Gallery::search`]'s answer.
    pub fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<PersonMatch>>> {
        let dim = self.dim;
        if !queries.len().is_multiple_of(dim) || queries.iter().any(|v| !v.is_finite()) {
            return Err(Error::Config(format!(
                "identify: queries must be whole rows of {dim} finite values"
            )));
        }
        let nq = queries.len() / dim;
        let want = k.min(self.people.len());
        let mut out = vec![Vec::new(); nq];
        if want == 0 || nq == 0 {
            return Ok(out);
        }
        let mut r = want.saturating_mul(4).max(64).min(self.rows);
        let mut pending: Vec<usize> = (0..nq).collect();
        let mut exact = vec![0f32; dim];
        while !pending.is_empty() {
            let batch: Vec<f32> = pending
                .iter()
                .flat_map(|&q| queries[q * dim..(q + 1) * dim].iter().copied())
                .collect();
            let cands = self.candidates(&batch, pending.len(), r);
            let mut still = Vec::new();
            for (j, &q) in pending.iter().enumerate() {
                let query = &queries[q * dim..(q + 1) * dim];
                let mut ranked: Vec<(f32, u32)> = Vec::with_capacity(cands[j].len());
                for &i in &cands[j] {
                    self.vector(i as usize, &mut exact)?;
                    ranked.push((crate::distance::euclidean(query, &exact), i));
                }
                ranked.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
                ranked.truncate(r);
                let mut seen = std::collections::HashSet::new();
                let people: Vec<PersonMatch> = ranked
                    .iter()
                    .filter(|&&(_, i)| seen.insert(self.person_of_row[i as usize]))
                    .take(want)
                    .map(|&(d, i)| PersonMatch {
                        person: self.person_of_row[i as usize],
                        distance: d,
                        row: i,
                    })
                    .collect();
                // The exact R nearest rows are known: enough people among them, or every row.
                if people.len() == want || r == self.rows {
                    out[q] = people;
                } else {
                    still.push(q);
                }
            }
            pending = still;
            r = r.saturating_mul(16).min(self.rows);
        }
        Ok(out)
    }

    /// For each of `nq` queries, every row that may be among its `r` nearest: rows whose
    /// lower bound on the true distance is at most the r-th smallest upper bound.
    fn candidates(&self, queries: &[f32], nq: usize, r: usize) -> Vec<Vec<u32>> {
        let dim = self.dim;
        let qn2: Vec<f32> = queries
            .chunks_exact(dim)
            .map(|q| q.iter().map(|v| v * v).sum())
            .collect();
        // Queries as 16-bit codes: q = sq * q16 + d with |d_j| <= sq / 2, so the scan's dot
        // products are off by at most sq / 2 * sqrt(dim) * |x^| (added to the slack below).
        let q16: Vec<(Vec<i16>, f32)> = queries
            .chunks_exact(dim)
            .map(|q| {
                let max = q.iter().fold(0f32, |m, v| m.max(v.abs()));
                let sq = if max > 0.0 { max / 32767.0 } else { 1.0 };
                (q.iter().map(|v| (v / sq).round() as i16).collect(), sq)
            })
            .collect();
        let qslack: Vec<f32> = q16
            .iter()
            .map(|(_, sq)| sq * (dim as f32).sqrt() * self.max_norm2.sqrt() * 1.01)
            .collect();
        let nblocks = self.rows.div_ceil(BLOCK);
        // Pass 1: squared approximate distances, block by block.
        let pass1: Vec<Vec<f32>> = (0..nblocks)
            .into_par_iter()
            .map(|b| {
                let lo = b * BLOCK;
                let hi = (lo + BLOCK).min(self.rows);
                let mut a2 = vec![0f32; nq * (hi - lo)];
                self.block_distances(&q16, &qn2, lo, hi, &mut a2);
                a2
            })
            .collect();
        // A bound on each query's r-th smallest true distance from a histogram of the squared
        // approximate ones: at least r rows lie in the bins up to the one holding the r-th,
        // and each of them is within sqrt(edge + slack) + the largest error.
        let tops: Vec<f32> = qn2
            .iter()
            .map(|&q| 2.0 * (q + self.max_norm2) + 1.0)
            .collect();
        let hist = pass1
            .par_iter()
            .fold(
                || vec![0u32; nq * BINS],
                |mut h, a2| {
                    let n = a2.len() / nq;
                    for q in 0..nq {
                        let per_bin = BINS as f32 / tops[q];
                        let hq = &mut h[q * BINS..(q + 1) * BINS];
                        for &v in &a2[q * n..(q + 1) * n] {
                            hq[((v.max(0.0) * per_bin) as usize).min(BINS - 1)] += 1;
                        }
                    }
                    h
                },
            )
            .reduce(
                || vec![0u32; nq * BINS],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        let bounds: Vec<f32> = (0..nq)
            .map(|q| {
                let per_bin = BINS as f32 / tops[q];
                let mut seen = 0usize;
                let mut edge = tops[q];
                for (b, &c) in hist[q * BINS..(q + 1) * BINS].iter().enumerate() {
                    seen += c as usize;
                    if seen >= r {
                        edge = (b + 1) as f32 / per_bin;
                        break;
                    }
                }
                let slack = SLACK * (qn2[q] + self.max_norm2 + 1.0) + qslack[q];
                (edge + slack).sqrt() + self.max_err
            })
            .collect();
        // Pass 2: rows whose lower bound is within the bound (compared squared: no roots).
        let found: Vec<Vec<Vec<u32>>> = pass1
            .par_iter()
            .enumerate()
            .map(|(b, a2)| {
                let lo = b * BLOCK;
                let n = a2.len() / nq;
                (0..nq)
                    .map(|q| {
                        // A looser test with constants first (one compare per row).
                        let reach = bounds[q] + self.max_err;
                        let loose =
                            reach * reach + SLACK * (qn2[q] + self.max_norm2 + 1.0) + qslack[q];
                        let mut c = Vec::new();
                        for j in 0..n {
                            if a2[q * n + j] > loose {
                                continue;
                            }
                            let i = lo + j;
                            let s = SLACK * (qn2[q] + self.norm2[i] + 1.0) + qslack[q];
                            let reach = bounds[q] + self.err[i];
                            if (a2[q * n + j] - s).max(0.0) <= reach * reach {
                                c.push(i as u32);
                            }
                        }
                        c
                    })
                    .collect()
            })
            .collect();
        let mut out = vec![Vec::new(); nq];
        for block in found {
            for (q, c) in block.into_iter().enumerate() {
                out[q].extend(c);
            }
        }
        out
    }

    /// Squared distances (expanded form) from each 16-bit-coded query to the dequantised rows
    /// `lo..hi`, query-major into `out`.
    fn block_distances(
        &self,
        queries: &[(Vec<i16>, f32)],
        qn2: &[f32],
        lo: usize,
        hi: usize,
        out: &mut [f32],
    ) {
        let dim = self.dim;
        let n = hi - lo;
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::is_x86_feature_detected!("avx2");
        for i in lo..hi {
            let c = &self.codes[i * dim..(i + 1) * dim];
            for (q, (query, sq)) in queries.iter().enumerate() {
                #[cfg(target_arch = "x86_64")]
                let dot = if avx2 {
                    // SAFETY: the CPU has AVX2 (checked above).
                    unsafe { dot_i16_i8_avx2(query, c) }
                } else {
                    dot_i16_i8(query, c)
                };
                #[cfg(not(target_arch = "x86_64"))]
                let dot = dot_i16_i8(query, c);
                out[q * n + (i - lo)] =
                    qn2[q] - 2.0 * self.scale[i] * sq * dot as f32 + self.norm2[i];
            }
        }
    }
}

/// `q . c` of 16-bit and 8-bit codes (exact in i32 for dim < 4096).
fn dot_i16_i8(q: &[i16], c: &[i8]) -> i32 {
    q.iter()
        .zip(c)
        .map(|(&a, &b)| i32::from(a) * i32::from(b))
        .sum()
}

/// [`dot_i16_i8`] with AVX2: 16 codes widened to i16 and multiplied-and-added in pairs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i16_i8_avx2(q: &[i16], c: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let n = q.len().min(c.len()) / 16 * 16;
    let mut acc = _mm256_setzero_si256();
    let mut j = 0;
    while j < n {
        // SAFETY: j + 16 <= n <= both lengths; unaligned loads.
        let cv = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(c.as_ptr().add(j).cast()) });
        let qv = unsafe { _mm256_loadu_si256(q.as_ptr().add(j).cast()) };
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(qv, cv));
        j += 16;
    }
    let s = _mm_add_epi32(
        _mm256_castsi256_si128(acc),
        _mm256_extracti128_si256::<1>(acc),
    );
    let s = _mm_hadd_epi32(s, s);
    let s = _mm_hadd_epi32(s, s);
    _mm_cvtsi128_si32(s) + dot_i16_i8(&q[n..], &c[n..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identify::Gallery;
    use crate::rng::Rng;

    #[test]
    fn quantised_search_is_exactly_the_brute_force_answer() {
        let mut rng = Rng::new(7);
        let (dim, people, rows) = (128, 300, 5000);
        let centres: Vec<f32> = (0..people * dim)
            .map(|_| rng.normal() as f32 * 0.08)
            .collect();
        let mut vectors = Vec::new();
        let mut owner = Vec::new();
        for _ in 0..rows {
            let p = rng.below(people);
            owner.push(p as u32);
            vectors.extend((0..dim).map(|d| centres[p * dim + d] + rng.normal() as f32 * 0.02));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g");
        let faces: Vec<i64> = (0..rows as i64).collect();
        let ids: Vec<i64> = (0..people as i64).collect();
        write(&path, 3, dim, &vectors, &owner, &faces, &ids).unwrap();
        let index = Index::load(&path).unwrap();
        assert_eq!(index.generation, 3);
        let gallery = Gallery::new(dim, vectors.clone(), owner).unwrap();
        // Queries: near a row (known), between people, and far from everyone.
        let mut queries = Vec::new();
        for i in 0..20 {
            let row = rng.below(rows);
            queries.extend(vectors[row * dim..(row + 1) * dim].iter().map(|v| {
                v + if i % 2 == 0 {
                    0.0
                } else {
                    rng.normal() as f32 * 0.01
                }
            }));
        }
        queries.extend((0..10 * dim).map(|_| rng.normal() as f32 * 0.08));
        for k in [1, 2, 5] {
            assert_eq!(
                index.search(&queries, k).unwrap(),
                gallery.search(&queries, k).unwrap(),
                "k = {k}"
            );
        }
        // A damaged file is refused, not misread.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&path, bytes).unwrap();
        assert!(Index::load(&path).is_err());
    }
}
