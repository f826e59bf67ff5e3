//! Distances between embeddings: SIMD pair kernels, blocked GEMM pairwise matrices, top-k and radius neighbours.
//!
//! Embedding sets are flat row-major `f32` slices of `rows x dim` values. Single pairs go through
//! SIMD kernels (AVX2+FMA when the CPU has them, detected once at run time, otherwise a scalar
//! loop in 8 independent accumulators that LLVM vectorises for the baseline instruction set).
//!
//! Many-to-many distances use the GEMM identity `|a - b|^2 = |a|^2 + |b|^2 - 2 a.b` (cosine:
//! `1 - â.b̂` on normalised rows), computed tile by tile with single-threaded `gemm` calls spread
//! over rayon, so each tile's epilogue (norms, clamp, sqrt) runs while the tile is still in
//! cache. The identity loses accuracy for near-identical rows, so:
//! - [`pairwise`] recomputes exactly (with the pair kernel) every entry whose squared distance
//!   is below `1/256` of `|a|^2 + |b|^2` (cosine: whose distance is below `1/256`); the other
//!   entries keep the GEMM value (measured error ~2e-7 for embeddings of norm <= 1 at dim 128;
//!   worst-case bound ~2e-4);
//! - [`top_k`] and [`within`] use the GEMM values only to choose candidates, keeping every row
//!   that could be in the answer given a rigorous bound on the rounding error, and recompute the
//!   distances of the candidates exactly, so their answers equal those of the pair kernels.
//!
//! [`top_k`] and [`within`] never hold the `n x m` matrix: each task takes a block of queries,
//! walks the base in blocks and keeps a small candidate list per query, so memory is
//! `O(threads x block^2 + n x k)`.

use rayon::prelude::*;
use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering as AtomicOrdering};

/// Which distance compares embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Metric {
    /// Euclidean distance `|a - b|`.
    #[default]
    Euclidean,
    /// Cosine distance `1 - cos(a, b)` (1 when either vector is zero).
    Cosine,
}

impl Metric {
    /// The distance between `a` and `b` under this metric.
    ///
    /// # Panics
    /// If `a` and `b` differ in length.
    pub fn distance(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::Euclidean => euclidean(a, b),
            Metric::Cosine => cosine(a, b),
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Metric::Euclidean => "euclidean",
            Metric::Cosine => "cosine",
        })
    }
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "euclidean" => Ok(Metric::Euclidean),
            "cosine" => Ok(Metric::Cosine),
            _ => Err(format!("unknown metric {s:?} (euclidean, cosine)")),
        }
    }
}

/// One neighbour of a query row: the base row's index and its distance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbor {
    /// Row index in the base set.
    pub index: u32,
    /// Distance from the query row.
    pub distance: f32,
}

// ---------------------------------------------------------------------------------------------
// Pair kernels
// ---------------------------------------------------------------------------------------------

/// Dot product `a.b`.
///
/// # Panics
/// If `a` and `b` differ in length.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    same_len(a, b);
    Isa::current().dot(a, b)
}

/// Squared Euclidean distance `|a - b|^2`.
///
/// # Panics
/// If `a` and `b` differ in length.
pub fn squared_euclidean(a: &[f32], b: &[f32]) -> f32 {
    same_len(a, b);
    Isa::current().squared_euclidean(a, b)
}

/// Euclidean distance `|a - b|`.
///
/// # Panics
/// If `a` and `b` differ in length.
pub fn euclidean(a: &[f32], b: &[f32]) -> f32 {
    squared_euclidean(a, b).sqrt()
}

/// Cosine distance `1 - cos(a, b)`, clamped to `[0, 2]` (1 when either vector is zero).
///
/// Near-parallel pairs (distance below 1/16) are recomputed as `|â - b̂|^2 / 2`, which keeps
/// the relative error small where `1 - cos` would cancel; identical vectors give exactly 0.
///
/// # Panics
/// If `a` and `b` differ in length.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    same_len(a, b);
    Isa::current().cosine(a, b)
}

fn same_len(a: &[f32], b: &[f32]) {
    assert_eq!(
        a.len(),
        b.len(),
        "distance: vectors differ in length ({} vs {})",
        a.len(),
        b.len()
    );
}

/// Cosine distances below this are recomputed from the normalised difference.
const COS_NEAR: f64 = 1.0 / 16.0;

/// `x` clamped to at most 2 (NaN stays NaN).
#[inline(always)]
fn at_most_2(x: f32) -> f32 {
    if x > 2.0 {
        2.0
    } else {
        x
    }
}

// ---------------------------------------------------------------------------------------------
// Instruction-set dispatch
// ---------------------------------------------------------------------------------------------

/// The instruction set the kernels run on, chosen once at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

/// 0: not probed yet, 1: scalar, 2: AVX2 + FMA.
static DETECTED: AtomicU8 = AtomicU8::new(0);

#[cfg(test)]
thread_local! {
    static FORCE_SCALAR: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the scalar kernels forced on this thread (and in the parallel work that the
/// calls made by `f` start, which takes the instruction set from the calling thread).
#[cfg(test)]
fn with_scalar<R>(f: impl FnOnce() -> R) -> R {
    FORCE_SCALAR.with(|c| c.set(true));
    let r = f();
    FORCE_SCALAR.with(|c| c.set(false));
    r
}

impl Isa {
    fn current() -> Isa {
        #[cfg(test)]
        if FORCE_SCALAR.with(|c| c.get()) {
            return Isa::Scalar;
        }
        match DETECTED.load(AtomicOrdering::Relaxed) {
            1 => Isa::Scalar,
            #[cfg(target_arch = "x86_64")]
            2 => Isa::Avx2Fma,
            _ => {
                let isa = Isa::probe();
                let code = if isa == Isa::Scalar { 1 } else { 2 };
                DETECTED.store(code, AtomicOrdering::Relaxed);
                isa
            }
        }
    }

    fn probe() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx2Fma;
        }
        Isa::Scalar
    }

    #[inline]
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Isa::Scalar => scalar::dot(a, b),
            // SAFETY: `Avx2Fma` is only chosen after detecting AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { avx2::dot(a, b) },
        }
    }

    #[inline]
    fn squared_euclidean(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Isa::Scalar => scalar::squared_euclidean(a, b),
            // SAFETY: `Avx2Fma` is only chosen after detecting AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { avx2::squared_euclidean(a, b) },
        }
    }

    #[inline]
    fn cosine_parts(self, a: &[f32], b: &[f32]) -> (f32, f32, f32) {
        match self {
            Isa::Scalar => scalar::cosine_parts(a, b),
            // SAFETY: `Avx2Fma` is only chosen after detecting AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { avx2::cosine_parts(a, b) },
        }
    }

    /// The exact (pair-kernel) distance between two rows.
    #[inline]
    fn distance(self, metric: Metric, a: &[f32], b: &[f32]) -> f32 {
        match metric {
            Metric::Euclidean => self.squared_euclidean(a, b).sqrt(),
            Metric::Cosine => self.cosine(a, b),
        }
    }

    /// Cosine distance: `1 - a.b / (|a| |b|)` (finished in f64), or `|â - b̂|^2 / 2` when
    /// that is below [`COS_NEAR`]. Clamped to `[0, 2]`; 1 when either vector is zero.
    #[inline]
    fn cosine(self, a: &[f32], b: &[f32]) -> f32 {
        let (d, na, nb) = self.cosine_parts(a, b);
        if na == 0.0 || nb == 0.0 {
            return 1.0;
        }
        let (na, nb) = (f64::from(na), f64::from(nb));
        let dist = 1.0 - f64::from(d) / (na * nb).sqrt();
        if dist >= COS_NEAR {
            return at_most_2(dist as f32);
        }
        // Near-parallel: 1 - cos = |â - b̂|^2 / 2 has no cancellation. For a == b the scales
        // are equal and the result is exactly 0.
        let (sa, sb) = ((1.0 / na.sqrt()) as f32, (1.0 / nb.sqrt()) as f32);
        at_most_2(0.5 * self.scaled_sq_diff(a, sa, b, sb))
    }

    #[inline]
    fn scaled_sq_diff(self, a: &[f32], sa: f32, b: &[f32], sb: f32) -> f32 {
        match self {
            Isa::Scalar => scalar::scaled_sq_diff(a, sa, b, sb),
            // SAFETY: `Avx2Fma` is only chosen after detecting AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { avx2::scaled_sq_diff(a, sa, b, sb) },
        }
    }

    /// Euclidean tile epilogue for one row: `out[j] = sqrt(max(0, na + nb[j] + g[j]))` where
    /// `g = -2 a.b`, except entries below [`RECHECK`] of `na + nb[j]`, which take `exact(j)`.
    /// `stream` asks for non-temporal stores (then call `store_fence` before publishing).
    #[inline]
    fn euclid_row(
        self,
        g: &[f32],
        na: f32,
        nb: &[f32],
        out: &mut [f32],
        stream: bool,
        exact: impl FnMut(usize) -> f32,
    ) {
        let _ = stream; // only the AVX2 path has non-temporal stores
        match self {
            Isa::Scalar => scalar::euclid_row(g, na, nb, out, exact),
            // SAFETY: `Avx2Fma` is only chosen after detecting AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { avx2::euclid_row(g, na, nb, out, stream, exact) },
        }
    }

    /// Cosine tile epilogue for one row: `out[j] = min(1 + g[j], 2)` where `g = -â.b̂`,
    /// except entries below [`RECHECK`], which take `exact(j)`.
    #[inline]
    fn cosine_row(self, g: &[f32], out: &mut [f32], stream: bool, exact: impl FnMut(usize) -> f32) {
        let _ = stream; // only the AVX2 path has non-temporal stores
        match self {
            Isa::Scalar => scalar::cosine_row(g, out, exact),
            // SAFETY: `Avx2Fma` is only chosen after detecting AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { avx2::cosine_row(g, out, stream, exact) },
        }
    }

    /// Makes this thread's non-temporal stores (`stream` epilogues) globally ordered.
    #[inline]
    fn store_fence(self) {
        match self {
            Isa::Scalar => {}
            // SAFETY: `Avx2Fma` is only chosen after detecting AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { avx2::store_fence() },
        }
    }

    /// Calls `hit(j, v)` for every `v = g[j] + c[j] <= threshold`, in order of `j`; `hit`
    /// returns the threshold for the rest of the row.
    #[inline]
    fn scan_row(self, g: &[f32], c: &[f32], threshold: f32, hit: impl FnMut(usize, f32) -> f32) {
        match self {
            Isa::Scalar => scalar::scan_row(g, c, threshold, hit),
            // SAFETY: `Avx2Fma` is only chosen after detecting AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { avx2::scan_row(g, c, threshold, hit) },
        }
    }
}

/// Pairwise entries whose GEMM squared distance is below this fraction of `|a|^2 + |b|^2`
/// (cosine: whose distance is below it) are recomputed with the pair kernel (there the
/// identity's cancellation error would show).
const RECHECK: f32 = 1.0 / 256.0;

#[inline(always)]
fn clamp0(v: f32) -> f32 {
    // NaN stays NaN.
    if v < 0.0 {
        0.0
    } else {
        v
    }
}

mod scalar {
    //! Portable kernels: 8 independent accumulators, which LLVM turns into vector code.

    use super::{at_most_2, clamp0, RECHECK};

    const L: usize = 8;

    #[inline(always)]
    fn fold(acc: [f32; L]) -> f32 {
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
    }

    pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
        let (ca, ta) = a.as_chunks::<L>();
        let (cb, tb) = b.as_chunks::<L>();
        let mut acc = [0f32; L];
        for (x, y) in ca.iter().zip(cb) {
            for ((s, &p), &q) in acc.iter_mut().zip(x).zip(y) {
                *s += p * q;
            }
        }
        let tail: f32 = ta.iter().zip(tb).map(|(p, q)| p * q).sum();
        fold(acc) + tail
    }

    pub(super) fn squared_euclidean(a: &[f32], b: &[f32]) -> f32 {
        let (ca, ta) = a.as_chunks::<L>();
        let (cb, tb) = b.as_chunks::<L>();
        let mut acc = [0f32; L];
        for (x, y) in ca.iter().zip(cb) {
            for ((s, &p), &q) in acc.iter_mut().zip(x).zip(y) {
                let d = p - q;
                *s += d * d;
            }
        }
        let tail: f32 = ta.iter().zip(tb).map(|(p, q)| (p - q) * (p - q)).sum();
        fold(acc) + tail
    }

    pub(super) fn cosine_parts(a: &[f32], b: &[f32]) -> (f32, f32, f32) {
        let (ca, ta) = a.as_chunks::<L>();
        let (cb, tb) = b.as_chunks::<L>();
        let (mut d, mut na, mut nb) = ([0f32; L], [0f32; L], [0f32; L]);
        for (x, y) in ca.iter().zip(cb) {
            for (((s, sa), sb), (&p, &q)) in
                d.iter_mut().zip(&mut na).zip(&mut nb).zip(x.iter().zip(y))
            {
                *s += p * q;
                *sa += p * p;
                *sb += q * q;
            }
        }
        let (mut td, mut ta2, mut tb2) = (0f32, 0f32, 0f32);
        for (&p, &q) in ta.iter().zip(tb) {
            td += p * q;
            ta2 += p * p;
            tb2 += q * q;
        }
        (fold(d) + td, fold(na) + ta2, fold(nb) + tb2)
    }

    pub(super) fn euclid_row(
        g: &[f32],
        na: f32,
        nb: &[f32],
        out: &mut [f32],
        mut exact: impl FnMut(usize) -> f32,
    ) {
        for (j, ((o, &gv), &bv)) in out.iter_mut().zip(g).zip(nb).enumerate() {
            let s = na + bv;
            let v = s + gv;
            *o = if v < s * RECHECK {
                exact(j)
            } else {
                clamp0(v).sqrt()
            };
        }
    }

    pub(super) fn cosine_row(g: &[f32], out: &mut [f32], mut exact: impl FnMut(usize) -> f32) {
        for (j, (o, &gv)) in out.iter_mut().zip(g).enumerate() {
            let v = 1.0 + gv;
            *o = if v < RECHECK { exact(j) } else { at_most_2(v) };
        }
    }

    /// `|sa a - sb b|^2`.
    pub(super) fn scaled_sq_diff(a: &[f32], sa: f32, b: &[f32], sb: f32) -> f32 {
        let (ca, ta) = a.as_chunks::<L>();
        let (cb, tb) = b.as_chunks::<L>();
        let mut acc = [0f32; L];
        for (x, y) in ca.iter().zip(cb) {
            for ((s, &p), &q) in acc.iter_mut().zip(x).zip(y) {
                let d = sa * p - sb * q;
                *s += d * d;
            }
        }
        let tail: f32 = ta
            .iter()
            .zip(tb)
            .map(|(&p, &q)| (sa * p - sb * q) * (sa * p - sb * q))
            .sum();
        fold(acc) + tail
    }

    pub(super) fn scan_row(
        g: &[f32],
        c: &[f32],
        threshold: f32,
        mut hit: impl FnMut(usize, f32) -> f32,
    ) {
        let mut t = threshold;
        for (j, (&gv, &cv)) in g.iter().zip(c).enumerate() {
            let v = gv + cv;
            if v <= t {
                t = hit(j, v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2 + FMA kernels. Every function requires a CPU with both (checked by the caller).

    use super::{scalar, RECHECK};
    use std::arch::x86_64::*;

    static TAIL_MASK: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

    /// A load mask with lanes `0..rem` set, `rem <= 8`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tail_mask(rem: usize) -> __m256i {
        _mm256_loadu_si256(TAIL_MASK.as_ptr().add(8 - rem).cast())
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let z = _mm256_setzero_ps();
        let (mut s0, mut s1, mut s2, mut s3) = (z, z, z, z);
        let mut i = 0;
        while i + 32 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            s1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                s1,
            );
            s2 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 16)),
                _mm256_loadu_ps(pb.add(i + 16)),
                s2,
            );
            s3 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 24)),
                _mm256_loadu_ps(pb.add(i + 24)),
                s3,
            );
            i += 32;
        }
        while i + 8 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            i += 8;
        }
        if i < n {
            let m = tail_mask(n - i);
            s1 = _mm256_fmadd_ps(
                _mm256_maskload_ps(pa.add(i), m),
                _mm256_maskload_ps(pb.add(i), m),
                s1,
            );
        }
        hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn squared_euclidean(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let z = _mm256_setzero_ps();
        let (mut s0, mut s1, mut s2, mut s3) = (z, z, z, z);
        let mut i = 0;
        while i + 32 <= n {
            let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
            let d1 = _mm256_sub_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
            );
            let d2 = _mm256_sub_ps(
                _mm256_loadu_ps(pa.add(i + 16)),
                _mm256_loadu_ps(pb.add(i + 16)),
            );
            let d3 = _mm256_sub_ps(
                _mm256_loadu_ps(pa.add(i + 24)),
                _mm256_loadu_ps(pb.add(i + 24)),
            );
            s0 = _mm256_fmadd_ps(d0, d0, s0);
            s1 = _mm256_fmadd_ps(d1, d1, s1);
            s2 = _mm256_fmadd_ps(d2, d2, s2);
            s3 = _mm256_fmadd_ps(d3, d3, s3);
            i += 32;
        }
        while i + 8 <= n {
            let d = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
            s0 = _mm256_fmadd_ps(d, d, s0);
            i += 8;
        }
        if i < n {
            let m = tail_mask(n - i);
            let d = _mm256_sub_ps(
                _mm256_maskload_ps(pa.add(i), m),
                _mm256_maskload_ps(pb.add(i), m),
            );
            s1 = _mm256_fmadd_ps(d, d, s1);
        }
        hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)))
    }

    /// `|sa a - sb b|^2`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scaled_sq_diff(a: &[f32], sa: f32, b: &[f32], sb: f32) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (va, vb) = (_mm256_set1_ps(sa), _mm256_set1_ps(sb));
        let z = _mm256_setzero_ps();
        let (mut s0, mut s1) = (z, z);
        // Both products rounded (no FMA), so a == b with sa == sb gives exactly 0.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        fn diff(va: __m256, x: __m256, vb: __m256, y: __m256) -> __m256 {
            _mm256_sub_ps(_mm256_mul_ps(va, x), _mm256_mul_ps(vb, y))
        }
        let mut i = 0;
        while i + 16 <= n {
            let d0 = diff(
                va,
                _mm256_loadu_ps(pa.add(i)),
                vb,
                _mm256_loadu_ps(pb.add(i)),
            );
            let d1 = diff(
                va,
                _mm256_loadu_ps(pa.add(i + 8)),
                vb,
                _mm256_loadu_ps(pb.add(i + 8)),
            );
            s0 = _mm256_fmadd_ps(d0, d0, s0);
            s1 = _mm256_fmadd_ps(d1, d1, s1);
            i += 16;
        }
        if i + 8 <= n {
            let d = diff(
                va,
                _mm256_loadu_ps(pa.add(i)),
                vb,
                _mm256_loadu_ps(pb.add(i)),
            );
            s0 = _mm256_fmadd_ps(d, d, s0);
            i += 8;
        }
        if i < n {
            let m = tail_mask(n - i);
            let d = diff(
                va,
                _mm256_maskload_ps(pa.add(i), m),
                vb,
                _mm256_maskload_ps(pb.add(i), m),
            );
            s1 = _mm256_fmadd_ps(d, d, s1);
        }
        hsum(_mm256_add_ps(s0, s1))
    }

    /// `(a.b, |a|^2, |b|^2)`, all three summed in the same order (so they are bitwise equal
    /// when `a == b`).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn cosine_parts(a: &[f32], b: &[f32]) -> (f32, f32, f32) {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let z = _mm256_setzero_ps();
        let (mut d0, mut d1, mut a0, mut a1, mut b0, mut b1) = (z, z, z, z, z, z);
        let mut i = 0;
        while i + 16 <= n {
            let (x0, y0) = (_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
            let (x1, y1) = (
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
            );
            d0 = _mm256_fmadd_ps(x0, y0, d0);
            a0 = _mm256_fmadd_ps(x0, x0, a0);
            b0 = _mm256_fmadd_ps(y0, y0, b0);
            d1 = _mm256_fmadd_ps(x1, y1, d1);
            a1 = _mm256_fmadd_ps(x1, x1, a1);
            b1 = _mm256_fmadd_ps(y1, y1, b1);
            i += 16;
        }
        if i + 8 <= n {
            let (x0, y0) = (_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
            d0 = _mm256_fmadd_ps(x0, y0, d0);
            a0 = _mm256_fmadd_ps(x0, x0, a0);
            b0 = _mm256_fmadd_ps(y0, y0, b0);
            i += 8;
        }
        if i < n {
            let m = tail_mask(n - i);
            let (x1, y1) = (
                _mm256_maskload_ps(pa.add(i), m),
                _mm256_maskload_ps(pb.add(i), m),
            );
            d1 = _mm256_fmadd_ps(x1, y1, d1);
            a1 = _mm256_fmadd_ps(x1, x1, a1);
            b1 = _mm256_fmadd_ps(y1, y1, b1);
        }
        (
            hsum(_mm256_add_ps(d0, d1)),
            hsum(_mm256_add_ps(a0, a1)),
            hsum(_mm256_add_ps(b0, b1)),
        )
    }

    /// Elements before `p` reaches a 32-byte boundary, at most `n`.
    #[inline]
    fn head_len(p: *const f32, n: usize) -> usize {
        (((32 - (p as usize % 32)) % 32) / 4).min(n)
    }

    /// See `Isa::euclid_row`; same arithmetic as the scalar version. With `stream`, the
    /// output goes out with non-temporal stores (the caller issues `sfence` afterwards).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn euclid_row(
        g: &[f32],
        na: f32,
        nb: &[f32],
        out: &mut [f32],
        stream: bool,
        mut exact: impl FnMut(usize) -> f32,
    ) {
        let n = out.len().min(g.len()).min(nb.len());
        let (pg, pb, po) = (g.as_ptr(), nb.as_ptr(), out.as_mut_ptr());
        let head = if stream { head_len(po, n) } else { 0 };
        scalar::euclid_row(&g[..head], na, &nb[..head], &mut out[..head], &mut exact);
        let (vna, tau, zero) = (
            _mm256_set1_ps(na),
            _mm256_set1_ps(RECHECK),
            _mm256_setzero_ps(),
        );
        let mut j = head;
        while j + 8 <= n {
            let s = _mm256_add_ps(vna, _mm256_loadu_ps(pb.add(j)));
            let v = _mm256_add_ps(s, _mm256_loadu_ps(pg.add(j)));
            let small = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(v, _mm256_mul_ps(s, tau)));
            // max(0, v) keeps a NaN `v`.
            let mut d = _mm256_sqrt_ps(_mm256_max_ps(zero, v));
            if small != 0 {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), d);
                let mut bits = small as u32;
                while bits != 0 {
                    let l = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    lanes[l] = exact(j + l);
                }
                d = _mm256_loadu_ps(lanes.as_ptr());
            }
            if stream {
                _mm256_stream_ps(po.add(j), d);
            } else {
                _mm256_storeu_ps(po.add(j), d);
            }
            j += 8;
        }
        scalar::euclid_row(&g[j..n], na, &nb[j..n], &mut out[j..n], |jl| exact(j + jl));
    }

    /// See `Isa::cosine_row`; `stream` as in `euclid_row`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn cosine_row(
        g: &[f32],
        out: &mut [f32],
        stream: bool,
        mut exact: impl FnMut(usize) -> f32,
    ) {
        let n = out.len().min(g.len());
        let (pg, po) = (g.as_ptr(), out.as_mut_ptr());
        let head = if stream { head_len(po, n) } else { 0 };
        scalar::cosine_row(&g[..head], &mut out[..head], &mut exact);
        let (one, two, tau) = (
            _mm256_set1_ps(1.0),
            _mm256_set1_ps(2.0),
            _mm256_set1_ps(RECHECK),
        );
        let mut j = head;
        while j + 8 <= n {
            let v = _mm256_add_ps(one, _mm256_loadu_ps(pg.add(j)));
            let small = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(v, tau));
            // min returns its second operand for NaN, so a NaN `v` survives.
            let mut d = _mm256_min_ps(two, v);
            if small != 0 {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), d);
                let mut bits = small as u32;
                while bits != 0 {
                    let l = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    lanes[l] = exact(j + l);
                }
                d = _mm256_loadu_ps(lanes.as_ptr());
            }
            if stream {
                _mm256_stream_ps(po.add(j), d);
            } else {
                _mm256_storeu_ps(po.add(j), d);
            }
            j += 8;
        }
        scalar::cosine_row(&g[j..n], &mut out[j..n], |jl| exact(j + jl));
    }

    /// Orders earlier non-temporal stores before later stores.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn store_fence() {
        _mm_sfence();
    }

    /// See `Isa::scan_row`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scan_row(
        g: &[f32],
        c: &[f32],
        threshold: f32,
        mut hit: impl FnMut(usize, f32) -> f32,
    ) {
        let n = g.len().min(c.len());
        let (pg, pc) = (g.as_ptr(), c.as_ptr());
        let mut t = threshold;
        let mut vt = _mm256_set1_ps(t);
        let mut j = 0;
        while j + 8 <= n {
            let v = _mm256_add_ps(_mm256_loadu_ps(pg.add(j)), _mm256_loadu_ps(pc.add(j)));
            let mask = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(v, vt));
            if mask != 0 {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), v);
                let mut bits = mask as u32;
                while bits != 0 {
                    let l = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if lanes[l] <= t {
                        t = hit(j + l, lanes[l]);
                    }
                }
                vt = _mm256_set1_ps(t);
            }
            j += 8;
        }
        while j < n {
            let v = *pg.add(j) + *pc.add(j);
            if v <= t {
                t = hit(j, v);
            }
            j += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared plumbing for the GEMM paths
// ---------------------------------------------------------------------------------------------

// Block sizes (tests use small ones so that every edge and split path runs on small data).
// A 512 x 512 tile is 1 MiB: the gemm output is consumed by the epilogue or scan straight
// after, mostly from L2/L3; 256..1024 measured within a few % of each other at dim 128.
/// Rows of a pairwise tile (rows of `a`).
const PW_ROWS: usize = if cfg!(test) { 48 } else { 512 };
/// Columns of a pairwise tile (rows of `b`).
const PW_COLS: usize = if cfg!(test) { 80 } else { 512 };
/// Pairwise outputs of at least this many values (16 MiB) are written with non-temporal
/// stores (no read-for-ownership traffic, tiles stay cached).
const STREAM_MIN: usize = if cfg!(test) { 2000 } else { 1 << 22 };
/// Queries per top-k / radius block.
const NB_QUERIES: usize = if cfg!(test) { 40 } else { 512 };
/// Base rows per top-k / radius block.
const NB_BASE: usize = if cfg!(test) { 72 } else { 512 };

/// The number of rows in a flat `len`-value matrix of `dim` columns.
fn row_count(len: usize, dim: usize, what: &str) -> usize {
    assert!(dim > 0, "distance: dim must be at least 1");
    assert!(
        len.is_multiple_of(dim),
        "distance: {what} holds {len} values, not a multiple of dim {dim}"
    );
    len / dim
}

/// One side of a many-to-many computation: its rows as the GEMM sees them (normalised for
/// cosine) and the squared norms of the original rows.
struct Side<'a> {
    rows: Cow<'a, [f32]>,
    sq_norms: Cow<'a, [f32]>,
}

impl<'a> Side<'a> {
    fn new(x: &'a [f32], dim: usize, metric: Metric, isa: Isa) -> Side<'a> {
        let sq_norms: Vec<f32> = x.par_chunks(dim).map(|r| isa.dot(r, r)).collect();
        let rows = match metric {
            Metric::Euclidean => Cow::Borrowed(x),
            Metric::Cosine => {
                let mut rows = x.to_vec();
                rows.par_chunks_mut(dim)
                    .zip(&sq_norms)
                    .for_each(|(r, &n2)| {
                        let inv = if n2 > 0.0 {
                            (1.0 / f64::from(n2).sqrt()) as f32
                        } else {
                            0.0
                        };
                        r.iter_mut().for_each(|v| *v *= inv);
                    });
                Cow::Owned(rows)
            }
        };
        Side {
            rows,
            sq_norms: Cow::Owned(sq_norms),
        }
    }
}

/// `dst[r * dst_rs + c] = beta * lhs_r . rhs_c` for the rows of `lhs` and `rhs` (single-threaded).
fn gemm_nt(lhs: &[f32], rhs: &[f32], dim: usize, beta: f32, dst: &mut [f32], dst_rs: usize) {
    let (r, c) = (lhs.len() / dim, rhs.len() / dim);
    if r == 0 || c == 0 {
        return;
    }
    assert!(c <= dst_rs && dst.len() >= (r - 1) * dst_rs + c);
    // SAFETY: lhs is r x dim row-major, rhs^T is dim x c (element (k, j) at j * dim + k), and
    // dst holds r rows of c values dst_rs apart, checked above; nothing else aliases dst.
    unsafe {
        gemm::gemm(
            r,
            c,
            dim,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            false,
            lhs.as_ptr(),
            1,
            dim as isize,
            rhs.as_ptr(),
            dim as isize,
            1,
            0.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

thread_local! {
    /// Per-thread tile buffer, reused across tiles and calls.
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's tile buffer of at least `len` floats (contents unspecified).
fn with_tile<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    TILE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// A raw pointer to the output matrix that tile tasks write disjoint blocks of.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a disjoint block of the output; see `pairwise_into`.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}
impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

// ---------------------------------------------------------------------------------------------
// Pairwise matrices
// ---------------------------------------------------------------------------------------------

/// Row-major n x m matrix of distances between the rows of `a` (n x dim) and `b` (m x dim).
///
/// # Panics
/// If `dim` is 0 or `a` or `b` does not hold a whole number of rows.
pub fn pairwise(a: &[f32], b: &[f32], dim: usize, metric: Metric) -> Vec<f32> {
    let n = row_count(a.len(), dim, "a");
    let m = row_count(b.len(), dim, "b");
    let len = n
        .checked_mul(m)
        .unwrap_or_else(|| panic!("distance: a {n} x {m} matrix does not fit in memory"));
    let mut out = vec![0.0; len];
    pairwise_into(a, b, dim, metric, &mut out);
    out
}

/// [`pairwise`] into a caller-provided row-major n x m buffer.
///
/// # Panics
/// If `dim` is 0, `a` or `b` does not hold a whole number of rows, or `out.len() != n * m`.
pub fn pairwise_into(a: &[f32], b: &[f32], dim: usize, metric: Metric, out: &mut [f32]) {
    let n = row_count(a.len(), dim, "a");
    let m = row_count(b.len(), dim, "b");
    assert!(
        n.checked_mul(m) == Some(out.len()),
        "distance: output holds {} values, expected {n} x {m}",
        out.len()
    );
    if n == 0 || m == 0 {
        return;
    }
    let isa = Isa::current();
    let sa = Side::new(a, dim, metric, isa);
    let sb_own;
    let sb = if std::ptr::eq(a, b) {
        &sa
    } else {
        sb_own = Side::new(b, dim, metric, isa);
        &sb_own
    };
    let beta = match metric {
        Metric::Euclidean => -2.0,
        Metric::Cosine => -1.0,
    };
    let (row_tiles, col_tiles) = (n.div_ceil(PW_ROWS), m.div_ceil(PW_COLS));
    let stream = out.len() >= STREAM_MIN;
    let out_ptr = OutPtr(out.as_mut_ptr());
    (0..row_tiles * col_tiles).into_par_iter().for_each(|t| {
        let (i0, j0) = ((t / col_tiles) * PW_ROWS, (t % col_tiles) * PW_COLS);
        let (i1, j1) = ((i0 + PW_ROWS).min(n), (j0 + PW_COLS).min(m));
        let w = j1 - j0;
        with_tile((i1 - i0) * w, |tile| {
            gemm_nt(
                &sa.rows[i0 * dim..i1 * dim],
                &sb.rows[j0 * dim..j1 * dim],
                dim,
                beta,
                tile,
                w,
            );
            for (i, g) in (i0..i1).zip(tile.chunks_exact(w)) {
                // SAFETY: out has n * m values (asserted above) and this task alone writes the
                // block rows i0..i1, columns j0..j1; rayon joins all tasks before `out` is
                // usable again.
                let row =
                    unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(i * m + j0), w) };
                match metric {
                    Metric::Euclidean => {
                        let ar = &a[i * dim..(i + 1) * dim];
                        let nb = &sb.sq_norms[j0..j1];
                        isa.euclid_row(g, sa.sq_norms[i], nb, row, stream, |jl| {
                            let j = j0 + jl;
                            isa.squared_euclidean(ar, &b[j * dim..(j + 1) * dim]).sqrt()
                        });
                    }
                    Metric::Cosine => isa.cosine_row(g, row, stream, |jl| {
                        let j = j0 + jl;
                        isa.cosine(&a[i * dim..(i + 1) * dim], &b[j * dim..(j + 1) * dim])
                    }),
                }
            }
            if stream {
                isa.store_fence();
            }
        });
    });
}

// ---------------------------------------------------------------------------------------------
// Neighbours
// ---------------------------------------------------------------------------------------------

/// The k nearest rows of `base` for every row of `queries`, nearest first (ties by index). With `skip_self` (queries == base), row i is not its own neighbour.
///
/// Each list holds `min(k, m)` neighbours (one fewer with `skip_self`); distances are exact
/// pair-kernel values ([`Metric::distance`]). `skip_self` excludes base row `i` from query row
/// `i`'s list whatever the data, so it is meant for `queries` and `base` being the same set.
///
/// # Panics
/// If `dim` is 0, `queries` or `base` does not hold a whole number of rows, or `base` has
/// more than `u32::MAX` rows.
pub fn top_k(
    queries: &[f32],
    base: &[f32],
    dim: usize,
    k: usize,
    metric: Metric,
    skip_self: bool,
) -> Vec<Vec<Neighbor>> {
    neighbours(queries, base, None, dim, metric, skip_self, Select::TopK(k))
}

/// Squared norms `|row|^2` of the rows of `x` (`dim` values each), for [`top_k_with_norms`].
///
/// # Panics
/// If `dim` is 0 or `x` does not hold a whole number of rows.
pub fn squared_norms(x: &[f32], dim: usize) -> Vec<f32> {
    row_count(x.len(), dim, "x");
    let isa = Isa::current();
    x.par_chunks(dim).map(|r| isa.dot(r, r)).collect()
}

/// [`top_k`] with [`Metric::Euclidean`] against a base whose squared row norms are known
/// (`base_sq_norms` = [`squared_norms`] of this `base`): skips the pass over the base that
/// computes them, which for a few queries against a large base is half the time. Same answer
/// as [`top_k`] (norms that are not the base's give wrong neighbours).
///
/// # Panics
/// As [`top_k`], and if `base_sq_norms` does not hold one value per base row.
pub fn top_k_with_norms(
    queries: &[f32],
    base: &[f32],
    base_sq_norms: &[f32],
    dim: usize,
    k: usize,
) -> Vec<Vec<Neighbor>> {
    let m = row_count(base.len(), dim, "base");
    assert!(
        base_sq_norms.len() == m,
        "distance: {} base norms for {m} rows",
        base_sq_norms.len()
    );
    neighbours(
        queries,
        base,
        Some(base_sq_norms),
        dim,
        Metric::Euclidean,
        false,
        Select::TopK(k),
    )
}

/// Every row of `base` within `radius` (distance <= radius) of each query row, nearest first.
///
/// Ties are ordered by index; distances are exact pair-kernel values ([`Metric::distance`]).
/// With `skip_self`, base row `i` is left out of query row `i`'s list (for `queries == base`).
///
/// # Panics
/// If `dim` is 0, `queries` or `base` does not hold a whole number of rows, or `base` has
/// more than `u32::MAX` rows.
pub fn within(
    queries: &[f32],
    base: &[f32],
    dim: usize,
    radius: f32,
    metric: Metric,
    skip_self: bool,
) -> Vec<Vec<Neighbor>> {
    neighbours(
        queries,
        base,
        None,
        dim,
        metric,
        skip_self,
        Select::Radius(radius),
    )
}

#[derive(Clone, Copy)]
enum Select {
    TopK(usize),
    Radius(f32),
}

/// A query's candidates, as `(approximate value, base index)`; the approximate value is
/// `|b|^2 - 2 a.b` (Euclidean) or `1 - â.b̂` (cosine).
struct Cands {
    items: Vec<(f32, u32)>,
    /// Values above this cannot be in the answer.
    threshold: f32,
    /// Bound on twice the error of approximate plus exact values (see `neighbours`).
    margin: f32,
    /// Prune when this many are held (top-k only).
    cap: usize,
}

impl Cands {
    #[inline]
    fn push(&mut self, v: f32, j: u32, k: usize) {
        self.items.push((v, j));
        if self.items.len() >= self.cap {
            self.prune(k);
        }
    }

    /// Keeps the `k` smallest values and every value within `margin` of the k-th (those may
    /// still win after exact recomputation), and lowers the threshold to match.
    fn prune(&mut self, k: usize) {
        if k > 0 && self.items.len() > k {
            self.items
                .select_nth_unstable_by(k - 1, |x, y| x.0.total_cmp(&y.0));
            let t = self.items[k - 1].0 + self.margin;
            if t < self.threshold {
                self.threshold = t;
            }
            let t = self.threshold;
            self.items.retain(|c| c.0 <= t);
        }
        self.cap = self.cap.max(self.items.len().saturating_mul(2));
    }
}

/// `base_norms`: the base's squared norms when known (Euclidean only).
fn neighbours(
    queries: &[f32],
    base: &[f32],
    base_norms: Option<&[f32]>,
    dim: usize,
    metric: Metric,
    skip_self: bool,
    select: Select,
) -> Vec<Vec<Neighbor>> {
    let n = row_count(queries.len(), dim, "queries");
    let m = row_count(base.len(), dim, "base");
    assert!(
        u32::try_from(m).is_ok(),
        "distance: base has {m} rows, more than u32::MAX"
    );
    let empty = match select {
        Select::TopK(k) => k == 0,
        Select::Radius(r) => r.is_nan() || r < 0.0,
    };
    if n == 0 || m == 0 || empty {
        return vec![Vec::new(); n];
    }
    let isa = Isa::current();
    let q = Side::new(queries, dim, metric, isa);
    let b_own;
    let b = match base_norms {
        Some(norms) if metric == Metric::Euclidean => {
            b_own = Side {
                rows: Cow::Borrowed(base),
                sq_norms: Cow::Borrowed(norms),
            };
            &b_own
        }
        _ if std::ptr::eq(queries, base) => &q,
        _ => {
            b_own = Side::new(base, dim, metric, isa);
            &b_own
        }
    };

    // Rounding. A dim-term f32 dot product errs by at most about dim * 2^-24 * sum |a_k b_k|
    // <= dim * 2^-24 |a| |b|; `gamma` below is twice that (plus slack for the final additions
    // and the normalisation). So the approximate Euclidean value |b|^2 - 2 a.b and the exact f32
    // squared distance each err by less than gamma/2 (|a| + |b|)^2, and a row pruned because k
    // others have approximate values below its own minus `margin` = 4 gamma (|a| + B)^2 (B the
    // largest base norm) is strictly farther than those k in exact f32 values too (by more
    // than an ulp, so also after the sqrt): candidates are never lost, ties included. Cosine
    // (normalised rows, then 1 - dot; the exact value is no worse) errs by a few gamma/2 per
    // side and gets `margin` = 16 gamma.
    let gamma = (dim as f32 + 8.0) * f32::EPSILON;
    let (beta, c): (f32, Cow<'_, [f32]>) = match metric {
        Metric::Euclidean => (-2.0, Cow::Borrowed(&b.sq_norms[..])),
        Metric::Cosine => (-1.0, Cow::Owned(vec![1.0; m])),
    };
    let b_max = b.sq_norms.iter().fold(0f32, |acc, &x| acc.max(x)).sqrt();
    let margin = |i: usize| match metric {
        Metric::Euclidean => {
            let s = q.sq_norms[i].sqrt() + b_max;
            4.0 * gamma * s * s
        }
        Metric::Cosine => 16.0 * gamma,
    };
    // A cosine top-k query of norm 0 is at distance 1 from every row: answered directly.
    let trivial = |i: usize| {
        metric == Metric::Cosine && matches!(select, Select::TopK(_)) && q.sq_norms[i] == 0.0
    };
    let new_cands = |i: usize| {
        let margin = margin(i);
        let (threshold, cap) = match select {
            _ if trivial(i) => (f32::NEG_INFINITY, usize::MAX),
            Select::TopK(k) => (f32::INFINITY, k.saturating_mul(2).max(k.saturating_add(32))),
            Select::Radius(r) => {
                let t = match metric {
                    Metric::Euclidean => r * r - q.sq_norms[i] + margin,
                    Metric::Cosine => r + margin,
                };
                (t, usize::MAX)
            }
        };
        Cands {
            items: Vec::new(),
            threshold,
            margin,
            cap,
        }
    };
    let k_prune = match select {
        Select::TopK(k) => k,
        Select::Radius(_) => usize::MAX,
    };

    // Tasks: query blocks, each over the whole base, or over a share of it when there are too
    // few query blocks to keep every thread busy.
    let q_blocks = n.div_ceil(NB_QUERIES);
    let b_blocks = m.div_ceil(NB_BASE);
    let want = 2 * rayon::current_num_threads();
    let per_split = if q_blocks >= want {
        b_blocks
    } else {
        b_blocks.div_ceil(want.div_ceil(q_blocks).min(b_blocks))
    };
    let splits = b_blocks.div_ceil(per_split);

    let parts: Vec<Vec<Cands>> = (0..q_blocks * splits)
        .into_par_iter()
        .map(|t| {
            let (qb, s) = (t / splits, t % splits);
            let (i0, i1) = (qb * NB_QUERIES, ((qb + 1) * NB_QUERIES).min(n));
            let mut cands: Vec<Cands> = (i0..i1).map(&new_cands).collect();
            let blocks = s * per_split..((s + 1) * per_split).min(b_blocks);
            with_tile((i1 - i0) * NB_BASE, |tile| {
                for blk in blocks {
                    let (j0, j1) = (blk * NB_BASE, ((blk + 1) * NB_BASE).min(m));
                    let w = j1 - j0;
                    gemm_nt(
                        &q.rows[i0 * dim..i1 * dim],
                        &b.rows[j0 * dim..j1 * dim],
                        dim,
                        beta,
                        tile,
                        w,
                    );
                    for ((i, g), cand) in (i0..i1).zip(tile.chunks_exact(w)).zip(&mut cands) {
                        if cand.threshold == f32::NEG_INFINITY {
                            continue;
                        }
                        let own = if skip_self { i } else { usize::MAX };
                        isa.scan_row(g, &c[j0..j1], cand.threshold, |jl, v| {
                            let j = j0 + jl;
                            if j != own {
                                // j < m <= u32::MAX + 1, asserted above.
                                cand.push(v, j as u32, k_prune);
                            }
                            cand.threshold
                        });
                    }
                }
            });
            cands
        })
        .collect();

    // Group the parts by query block, then finish every query: merge, prune, recompute
    // exactly, sort.
    let mut groups: Vec<Vec<Vec<Cands>>> = (0..q_blocks).map(|_| Vec::new()).collect();
    for (t, part) in parts.into_iter().enumerate() {
        groups[t / splits].push(part);
    }
    groups
        .into_par_iter()
        .enumerate()
        .flat_map_iter(|(qb, group)| {
            let mut parts = group.into_iter();
            let mut merged = parts.next().unwrap_or_default();
            for part in parts {
                for (acc, p) in merged.iter_mut().zip(part) {
                    acc.items.extend_from_slice(&p.items);
                }
            }
            let trivial = &trivial;
            merged.into_iter().enumerate().map(move |(r, mut cands)| {
                let i = qb * NB_QUERIES + r;
                cands.prune(k_prune);
                finish(
                    i,
                    cands.items,
                    queries,
                    base,
                    dim,
                    metric,
                    isa,
                    select,
                    skip_self,
                    trivial(i),
                )
            })
        })
        .collect()
}

/// One query's answer from its candidates: exact distances, filtered, sorted, truncated.
#[allow(clippy::too_many_arguments)]
fn finish(
    i: usize,
    items: Vec<(f32, u32)>,
    queries: &[f32],
    base: &[f32],
    dim: usize,
    metric: Metric,
    isa: Isa,
    select: Select,
    skip_self: bool,
    trivial: bool,
) -> Vec<Neighbor> {
    let m = base.len() / dim;
    if trivial {
        // Cosine from a zero vector: 1 to every row, so the lowest indices win.
        let k = match select {
            Select::TopK(k) => k,
            Select::Radius(_) => 0,
        };
        return (0..m)
            .filter(|&j| !(skip_self && j == i))
            .take(k)
            .map(|j| Neighbor {
                index: j as u32,
                distance: 1.0,
            })
            .collect();
    }
    let a = &queries[i * dim..(i + 1) * dim];
    let mut out: Vec<Neighbor> = items
        .into_iter()
        .map(|(_, j)| {
            let ju = j as usize;
            Neighbor {
                index: j,
                distance: isa.distance(metric, a, &base[ju * dim..(ju + 1) * dim]),
            }
        })
        .collect();
    if let Select::Radius(r) = select {
        out.retain(|nb| nb.distance <= r);
    }
    out.sort_unstable_by(|x, y| {
        x.distance
            .total_cmp(&y.distance)
            .then(x.index.cmp(&y.index))
    });
    if let Select::TopK(k) = select {
        out.truncate(k);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// ndarray views: the same kernels for callers holding matrices
// ---------------------------------------------------------------------------------------------

/// A matrix's rows as one contiguous row-major slice (borrowed when already laid out so).
fn rows_of<'a>(m: &'a ndarray::ArrayView2<'a, f32>) -> Cow<'a, [f32]> {
    match m.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(m.iter().copied().collect()),
    }
}

/// [`pairwise`] on matrices: the n x m distances between the rows of `a` (n x d) and `b`
/// (m x d). Errors when the widths differ or are 0.
pub fn pairwise_matrix(
    a: ndarray::ArrayView2<f32>,
    b: ndarray::ArrayView2<f32>,
    metric: Metric,
) -> crate::Result<ndarray::Array2<f32>> {
    let dim = same_width(&a, &b)?;
    let out = pairwise(&rows_of(&a), &rows_of(&b), dim, metric);
    ndarray::Array2::from_shape_vec((a.nrows(), b.nrows()), out)
        .map_err(|e| crate::Error::Config(format!("distance: {e}")))
}

/// [`top_k`] on matrices: for each row of `queries`, its `k` nearest rows of `base`.
pub fn top_k_matrix(
    queries: ndarray::ArrayView2<f32>,
    base: ndarray::ArrayView2<f32>,
    k: usize,
    metric: Metric,
    skip_self: bool,
) -> crate::Result<Vec<Vec<Neighbor>>> {
    let dim = same_width(&queries, &base)?;
    Ok(top_k(
        &rows_of(&queries),
        &rows_of(&base),
        dim,
        k,
        metric,
        skip_self,
    ))
}

fn same_width(a: &ndarray::ArrayView2<f32>, b: &ndarray::ArrayView2<f32>) -> crate::Result<usize> {
    if a.ncols() != b.ncols() || a.ncols() == 0 {
        return Err(crate::Error::Config(format!(
            "distance: rows of width {} and {} (need one non-zero width)",
            a.ncols(),
            b.ncols()
        )));
    }
    Ok(a.ncols())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_views_give_the_slice_results() {
        let mut rng = Rng::new(7);
        let (n, m, d) = (9, 13, 5);
        let a: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
        let b: Vec<f32> = (0..m * d).map(|_| rng.normal() as f32).collect();
        let av = ndarray::ArrayView2::from_shape((n, d), &a).unwrap();
        let bv = ndarray::ArrayView2::from_shape((m, d), &b).unwrap();
        for metric in [Metric::Euclidean, Metric::Cosine] {
            let got = pairwise_matrix(av, bv, metric).unwrap();
            assert_eq!(got.dim(), (n, m));
            assert_eq!(got.as_slice().unwrap(), &pairwise(&a, &b, d, metric)[..]);
            assert_eq!(
                top_k_matrix(av, bv, 3, metric, false).unwrap(),
                top_k(&a, &b, d, 3, metric, false)
            );
        }
        // A transposed (column-major) view is read by rows all the same.
        let bt = ndarray::Array2::from_shape_vec((d, m), b.clone()).unwrap();
        let t = pairwise_matrix(av, bt.t(), Metric::Euclidean).unwrap();
        let want = pairwise(
            &a,
            &bt.t().iter().copied().collect::<Vec<_>>(),
            d,
            Metric::Euclidean,
        );
        assert_eq!(t.as_slice().unwrap(), &want[..]);
        assert!(pairwise_matrix(av, av.slice(ndarray::s![.., ..2]), Metric::Euclidean).is_err());
    }

    use crate::rng::Rng;

    /// Uniform in [-1, 1).
    fn signed(rng: &mut Rng) -> f32 {
        (2.0 * rng.f64() - 1.0) as f32
    }

    /// `n` rows of `dim` values with norms uniform in [0.4, 1.0], like face embeddings.
    fn embeddings(rng: &mut Rng, n: usize, dim: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let row: Vec<f32> = (0..dim).map(|_| signed(rng)).collect();
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            let target = 0.4 + 0.6 * rng.f64() as f32;
            out.extend(row.iter().map(|x| x / norm * target));
        }
        out
    }

    /// Copies `count` random rows of `src` over random rows of `dst`.
    fn plant_duplicates(rng: &mut Rng, src: &[f32], dst: &mut [f32], dim: usize, count: usize) {
        let (ns, nd) = (src.len() / dim, dst.len() / dim);
        for _ in 0..count {
            let (s, d) = (rng.below(ns), rng.below(nd));
            dst[d * dim..(d + 1) * dim].copy_from_slice(&src[s * dim..(s + 1) * dim]);
        }
    }

    fn ref_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| f64::from(x) * f64::from(y))
            .sum()
    }

    fn ref_abs_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| (f64::from(x) * f64::from(y)).abs())
            .sum()
    }

    fn ref_sq(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
            .sum()
    }

    fn ref_distance(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
        match metric {
            Metric::Euclidean => ref_sq(a, b).sqrt(),
            Metric::Cosine => {
                let (na, nb) = (ref_dot(a, a), ref_dot(b, b));
                if na == 0.0 || nb == 0.0 {
                    1.0
                } else {
                    1.0 - ref_dot(a, b) / (na * nb).sqrt()
                }
            }
        }
    }

    /// Every query's distances to all base rows, nearest first, ties by index.
    fn ref_sorted(metric: Metric, q: &[f32], b: &[f32], dim: usize) -> Vec<Vec<(f64, u32)>> {
        q.chunks_exact(dim)
            .map(|a| {
                let mut all: Vec<(f64, u32)> = b
                    .chunks_exact(dim)
                    .enumerate()
                    .map(|(j, r)| (ref_distance(metric, a, r), j as u32))
                    .collect();
                all.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
                all
            })
            .collect()
    }

    /// The reference answer: rows passing `keep(distance)`, self skipped, at most `k`.
    fn ref_select(
        sorted: &[Vec<(f64, u32)>],
        skip_self: bool,
        k: usize,
        keep: impl Fn(f64) -> bool,
    ) -> Vec<Vec<(f64, u32)>> {
        sorted
            .iter()
            .enumerate()
            .map(|(i, all)| {
                all.iter()
                    .filter(|&&(d, j)| keep(d) && !(skip_self && j as usize == i))
                    .take(k)
                    .copied()
                    .collect()
            })
            .collect()
    }

    /// Same index sets, distances within 1e-5 of the reference, sorted nearest first with ties
    /// by index.
    fn check_lists(got: &[Vec<Neighbor>], want: &[Vec<(f64, u32)>], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: number of lists");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let mut gs = g.clone();
            let mut ws = w.clone();
            gs.sort_by_key(|x| x.index);
            ws.sort_by_key(|x| x.1);
            let gi: Vec<u32> = gs.iter().map(|x| x.index).collect();
            let wi: Vec<u32> = ws.iter().map(|x| x.1).collect();
            assert_eq!(gi, wi, "{what}: query {i}: index sets differ");
            for (nb, r) in gs.iter().zip(&ws) {
                assert!(
                    (f64::from(nb.distance) - r.0).abs() <= 1e-5,
                    "{what}: query {i} row {}: {} vs {}",
                    nb.index,
                    nb.distance,
                    r.0
                );
            }
            for pair in g.windows(2) {
                let ordered = pair[0].distance < pair[1].distance
                    || (pair[0].distance == pair[1].distance && pair[0].index < pair[1].index);
                assert!(ordered, "{what}: query {i}: not sorted: {pair:?}");
            }
        }
    }

    fn both_paths(f: impl Fn(&str)) {
        f("detected");
        with_scalar(|| {
            assert_eq!(Isa::current(), Isa::Scalar);
            f("scalar")
        });
    }

    #[test]
    fn metric_parse_display_default() {
        assert_eq!("euclidean".parse::<Metric>(), Ok(Metric::Euclidean));
        assert_eq!("cosine".parse::<Metric>(), Ok(Metric::Cosine));
        let err = "manhattan".parse::<Metric>().unwrap_err();
        assert!(err.contains("euclidean") && err.contains("cosine"), "{err}");
        assert_eq!(Metric::default(), Metric::Euclidean);
        for m in [Metric::Euclidean, Metric::Cosine] {
            assert_eq!(m.to_string().parse::<Metric>(), Ok(m));
        }
        assert_eq!(Metric::Euclidean.distance(&[0.0, 3.0], &[4.0, 0.0]), 5.0);
        assert!((Metric::Cosine.distance(&[1.0, 0.0], &[0.0, 2.0]) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[1.0, 1.0], &[2.0, 2.0]), 0.0);
    }

    #[test]
    fn pair_kernels_match_f64_reference() {
        both_paths(|path| {
            let mut rng = Rng::new(7);
            for dim in [1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 127, 128, 129, 513] {
                for _ in 0..20 {
                    let a: Vec<f32> = (0..dim).map(|_| signed(&mut rng)).collect();
                    let b: Vec<f32> = (0..dim).map(|_| signed(&mut rng)).collect();
                    let rel = |got: f32, want: f64, scale: f64| {
                        (f64::from(got) - want).abs() <= 1e-5 * scale + 1e-30
                    };
                    let d = dot(&a, &b);
                    assert!(
                        rel(d, ref_dot(&a, &b), ref_abs_dot(&a, &b)),
                        "{path} dot dim {dim}: {d} vs {}",
                        ref_dot(&a, &b)
                    );
                    let sq = ref_sq(&a, &b);
                    assert!(
                        rel(squared_euclidean(&a, &b), sq, sq),
                        "{path} sq dim {dim}"
                    );
                    assert!(
                        rel(euclidean(&a, &b), sq.sqrt(), sq.sqrt()),
                        "{path} l2 dim {dim}"
                    );
                    let cr = ref_distance(Metric::Cosine, &a, &b);
                    let cg = cosine(&a, &b);
                    assert!(
                        (f64::from(cg) - cr).abs() <= 1e-5 * cr + 1e-6,
                        "{path} cosine dim {dim}: {cg} vs {cr}"
                    );
                    assert_eq!(euclidean(&a, &a), 0.0, "{path} dim {dim}");
                    assert_eq!(cosine(&a, &a), 0.0, "{path} dim {dim}");
                }
            }
        });
    }

    #[test]
    fn cosine_keeps_relative_accuracy_for_near_parallel_vectors() {
        both_paths(|path| {
            let mut rng = Rng::new(17);
            for dim in [2, 7, 16, 33, 128, 513] {
                for eps in [1e-2f32, 1e-3, 1e-4] {
                    let a: Vec<f32> = (0..dim).map(|_| signed(&mut rng)).collect();
                    // A scaled, slightly rotated copy.
                    let b: Vec<f32> = a
                        .iter()
                        .map(|&x| 3.0 * (x + eps * signed(&mut rng)))
                        .collect();
                    let (got, want) = (cosine(&a, &b), ref_distance(Metric::Cosine, &a, &b));
                    assert!(
                        (f64::from(got) - want).abs() <= 1e-3 * want,
                        "{path} dim {dim} eps {eps}: {got} vs {want}"
                    );
                }
            }
        });
    }

    #[test]
    fn zero_vectors() {
        both_paths(|path| {
            let z = [0.0f32; 19];
            let v: Vec<f32> = (0..19).map(|i| i as f32 * 0.1 - 0.5).collect();
            assert_eq!(cosine(&z, &v), 1.0, "{path}");
            assert_eq!(cosine(&v, &z), 1.0, "{path}");
            assert_eq!(cosine(&z, &z), 1.0, "{path}");
            assert_eq!(euclidean(&z, &z), 0.0, "{path}");
            assert!((f64::from(euclidean(&z, &v)) - ref_dot(&v, &v).sqrt()).abs() < 1e-6);
            // Pairwise with zero rows on either side.
            let a: Vec<f32> = z.iter().chain(&v).copied().collect();
            let cos = pairwise(&a, &a, 19, Metric::Cosine);
            assert_eq!(cos.len(), 4);
            assert_eq!(&cos[..3], &[1.0, 1.0, 1.0], "{path}");
            assert!(cos[3].abs() < 1e-6, "{path}");
            let l2 = pairwise(&a, &a, 19, Metric::Euclidean);
            assert_eq!([l2[0], l2[3]], [0.0, 0.0], "{path}");
            // A zero query under cosine: every row at 1, so the lowest indices.
            let base: Vec<f32> = v.iter().chain(&z).chain(&v).copied().collect();
            let top = top_k(&z, &base, 19, 2, Metric::Cosine, false);
            let idx: Vec<u32> = top[0].iter().map(|x| x.index).collect();
            assert_eq!(idx, vec![0, 1], "{path}");
            assert!(top[0].iter().all(|x| x.distance == 1.0));
            let top = top_k(&a, &a, 19, 5, Metric::Cosine, true);
            assert_eq!(
                top[0],
                vec![Neighbor {
                    index: 1,
                    distance: 1.0
                }],
                "{path}"
            );
            assert_eq!(
                top[1],
                vec![Neighbor {
                    index: 0,
                    distance: 1.0
                }],
                "{path}"
            );
            let near = within(&z, &base, 19, 1.0, Metric::Cosine, false);
            assert_eq!(near[0].len(), 3, "{path}");
            assert!(within(&z, &base, 19, 0.5, Metric::Cosine, false)[0].is_empty());
        });
    }

    fn check_pairwise(rng: &mut Rng, n: usize, m: usize, dim: usize, path: &str) {
        let a = embeddings(rng, n, dim);
        let mut b = embeddings(rng, m, dim);
        if n > 0 && m > 0 {
            plant_duplicates(rng, &a, &mut b, dim, m.div_ceil(10));
        }
        for metric in [Metric::Euclidean, Metric::Cosine] {
            let got = pairwise(&a, &b, dim, metric);
            assert_eq!(got.len(), n * m);
            let mut into = vec![f32::NAN; n * m];
            pairwise_into(&a, &b, dim, metric, &mut into);
            assert_eq!(
                got, into,
                "{path} {metric} {n}x{m}x{dim}: pairwise_into differs"
            );
            let mut worst = 0f64;
            for i in 0..n {
                for j in 0..m {
                    let (ar, br) = (&a[i * dim..(i + 1) * dim], &b[j * dim..(j + 1) * dim]);
                    let r = ref_distance(metric, ar, br);
                    let g = got[i * m + j];
                    worst = worst.max((f64::from(g) - r).abs());
                    if ar == br {
                        assert!(
                            g < 1e-3,
                            "{path} {metric}: duplicate at ({i}, {j}) gives {g}"
                        );
                    }
                }
            }
            // 1e-3 is the requirement; ~2e-7 is what it measures.
            assert!(
                worst <= 2e-5,
                "{path} {metric} {n}x{m}x{dim}: error {worst}"
            );
        }
    }

    #[test]
    fn pairwise_matches_f64_reference() {
        both_paths(|path| {
            let mut rng = Rng::new(11);
            for (n, m, dim) in [
                (0, 5, 4),
                (5, 0, 4),
                (0, 0, 3),
                (1, 1, 1),
                (1, 1, 128),
                (37, 53, 7),
                (37, 53, 128),
                (3, 700, 33),
            ] {
                check_pairwise(&mut rng, n, m, dim, path);
            }
        });
        // The big one once per path (debug builds are slow).
        let mut rng = Rng::new(12);
        check_pairwise(&mut rng, 300, 1000, 128, "detected");
        with_scalar(|| check_pairwise(&mut rng, 300, 1000, 128, "scalar"));
    }

    #[test]
    fn pairwise_same_slice_and_errors_small() {
        // a == b (shared preparation); duplicates give exactly 0 through the recheck.
        let mut rng = Rng::new(3);
        let a = embeddings(&mut rng, 600, 128);
        let d = pairwise(&a, &a, 128, Metric::Euclidean);
        for i in 0..600 {
            assert_eq!(d[i * 600 + i], 0.0);
        }
        let mut worst = 0f64;
        for i in (0..600).step_by(7) {
            for j in 0..600 {
                let r = ref_distance(
                    Metric::Euclidean,
                    &a[i * 128..(i + 1) * 128],
                    &a[j * 128..(j + 1) * 128],
                );
                worst = worst.max((f64::from(d[i * 600 + j]) - r).abs());
            }
        }
        assert!(worst < 2e-4, "worst {worst}");
    }

    #[test]
    #[should_panic(expected = "not a multiple of dim")]
    fn ragged_input_panics() {
        pairwise(&[1.0; 10], &[1.0; 8], 4, Metric::Euclidean);
    }

    #[test]
    #[should_panic(expected = "output holds")]
    fn wrong_output_panics() {
        pairwise_into(&[1.0; 8], &[1.0; 8], 4, Metric::Euclidean, &mut [0.0; 3]);
    }

    #[test]
    #[should_panic(expected = "differ in length")]
    fn pair_length_mismatch_panics() {
        euclidean(&[1.0; 3], &[1.0; 4]);
    }

    fn check_neighbours(rng: &mut Rng, n: usize, m: usize, dim: usize, same: bool, path: &str) {
        let mut b = embeddings(rng, m, dim);
        // Duplicated rows make exact ties, which must be ordered by index.
        let src = b.clone();
        plant_duplicates(rng, &src, &mut b, dim, m / 8);
        let own;
        let q = if same {
            &b[..]
        } else {
            let mut q = embeddings(rng, n, dim);
            plant_duplicates(rng, &b, &mut q, dim, n / 4);
            own = q;
            &own[..]
        };
        for metric in [Metric::Euclidean, Metric::Cosine] {
            let sorted = ref_sorted(metric, q, &b, dim);
            for skip in [false, true] {
                if skip && !same {
                    continue;
                }
                for k in [0, 1, 10, m + 5] {
                    let got = top_k(q, &b, dim, k, metric, skip);
                    let want = ref_select(&sorted, skip, k, |_| true);
                    let what = format!("{path} top_k {metric} k={k} skip={skip} {n}x{m}x{dim}");
                    check_lists(&got, &want, &what);
                    if metric == Metric::Euclidean && !skip {
                        let norms = squared_norms(&b, dim);
                        assert_eq!(top_k_with_norms(q, &b, &norms, dim, k), got, "{what}");
                    }
                    for (i, list) in got.iter().enumerate() {
                        let expect = k.min(m - usize::from(skip));
                        assert_eq!(list.len(), expect, "{what}: query {i}");
                    }
                }
                // Radii: 0 (duplicates only), around the 2nd percentile, and beyond all. The
                // percentile one sits halfway across a gap wide enough that f32 and f64
                // rounding cannot disagree about which side a row is on.
                let mut sample: Vec<f64> = sorted.iter().flatten().map(|x| x.0).collect();
                sample.sort_by(f64::total_cmp);
                let mut at = sample.len() / 50;
                while at + 2 < sample.len() && sample[at + 1] - sample[at] < 1e-5 {
                    at += 1;
                }
                let p2 = 0.5 * (sample[at] + sample[at + 1]);
                for radius in [0.0, p2 as f32, 3.0] {
                    let got = within(q, &b, dim, radius, metric, skip);
                    let r = f64::from(radius);
                    let want = ref_select(&sorted, skip, usize::MAX, |d| d <= r);
                    let what = format!("{path} within {metric} r={radius} skip={skip}");
                    check_lists(&got, &want, &what);
                }
                let got = within(q, &b, dim, -1.0, metric, skip);
                assert!(got.iter().all(Vec::is_empty));
            }
        }
    }

    #[test]
    fn neighbours_match_brute_force() {
        both_paths(|path| {
            let mut rng = Rng::new(5);
            // One query (base split across tasks), multiple query and base blocks, same set.
            check_neighbours(&mut rng, 1, 1100, 128, false, path);
            check_neighbours(&mut rng, 300, 1100, 128, false, path);
            check_neighbours(&mut rng, 600, 600, 128, true, path);
            check_neighbours(&mut rng, 40, 70, 5, false, path);
            check_neighbours(&mut rng, 9, 9, 2, true, path);
        });
    }

    #[test]
    fn neighbours_edge_shapes() {
        let b = [0.5f32, 0.5, 1.0, 1.0];
        assert!(top_k(&[], &b, 2, 3, Metric::Euclidean, false).is_empty());
        assert_eq!(
            top_k(&b, &[], 2, 3, Metric::Euclidean, false),
            vec![vec![]; 2]
        );
        assert_eq!(top_k(&b, &b, 2, 0, Metric::Cosine, false), vec![vec![]; 2]);
        assert_eq!(
            within(&b, &[], 2, 1.0, Metric::Euclidean, false),
            vec![vec![]; 2]
        );
        // One row, skip_self: nothing left.
        assert_eq!(
            top_k(&b[..2], &b[..2], 2, 3, Metric::Euclidean, true),
            vec![vec![]]
        );
        // Ties by index among exact duplicates, self skipped.
        let rows: Vec<f32> = [0.1f32, 0.2, 0.1, 0.2, 0.9, 0.9, 0.1, 0.2].to_vec();
        let top = top_k(&rows, &rows, 2, 2, Metric::Euclidean, true);
        let idx: Vec<Vec<u32>> = top
            .iter()
            .map(|l| l.iter().map(|x| x.index).collect())
            .collect();
        assert_eq!(idx, vec![vec![1, 3], vec![0, 3], vec![0, 1], vec![0, 1]]);
        assert_eq!(top[0][0].distance, 0.0);
        let near = within(&rows, &rows, 2, 0.0, Metric::Euclidean, false);
        let idx: Vec<Vec<u32>> = near
            .iter()
            .map(|l| l.iter().map(|x| x.index).collect())
            .collect();
        assert_eq!(
            idx,
            vec![vec![0, 1, 3], vec![0, 1, 3], vec![2], vec![0, 1, 3]]
        );
    }

    #[test]
    fn near_duplicate_clusters_rank_exactly() {
        // Clusters of rows 1e-3 apart: far below what the GEMM identity resolves in f32, so
        // the ranking inside a cluster comes from the exact recomputation alone.
        both_paths(|path| {
            let mut rng = Rng::new(21);
            let dim = 128;
            let centres = embeddings(&mut rng, 30, dim);
            let jitter = |rng: &mut Rng, count: usize| -> Vec<f32> {
                let mut out = Vec::with_capacity(count * dim);
                for _ in 0..count {
                    let c = rng.below(30);
                    out.extend(
                        centres[c * dim..(c + 1) * dim]
                            .iter()
                            .map(|&x| x + 2e-4 * signed(rng)),
                    );
                }
                out
            };
            let b = jitter(&mut rng, 600);
            let q = jitter(&mut rng, 50);
            for metric in [Metric::Euclidean, Metric::Cosine] {
                let sorted = ref_sorted(metric, &q, &b, dim);
                let got = top_k(&q, &b, dim, 5, metric, false);
                let want = ref_select(&sorted, false, 5, |_| true);
                check_lists(&got, &want, &format!("{path} clusters top_k {metric}"));
                // Exact order too (distances here are well separated relative to f32).
                for (g, w) in got.iter().zip(&want) {
                    let gi: Vec<u32> = g.iter().map(|x| x.index).collect();
                    let wi: Vec<u32> = w.iter().map(|x| x.1).collect();
                    assert_eq!(gi, wi, "{path} clusters top_k {metric}: order");
                }
                let r = match metric {
                    Metric::Euclidean => 2.3e-3f32,
                    Metric::Cosine => 4e-6,
                };
                let got = within(&q, &b, dim, r, metric, false);
                let want = ref_select(&sorted, false, usize::MAX, |d| d <= f64::from(r));
                check_lists(&got, &want, &format!("{path} clusters within {metric}"));
            }
        });
    }

    #[test]
    fn many_duplicates_keep_index_order() {
        // 40 copies of one row among 1000: every query equal to it must get the lowest indices.
        let mut rng = Rng::new(9);
        let dim = 128;
        let mut b = embeddings(&mut rng, 1000, dim);
        let row = b[..dim].to_vec();
        let mut copies = vec![0usize];
        for _ in 0..39 {
            let j = 1 + rng.below(999);
            b[j * dim..(j + 1) * dim].copy_from_slice(&row);
            copies.push(j);
        }
        copies.sort_unstable();
        copies.dedup();
        for metric in [Metric::Euclidean, Metric::Cosine] {
            let top = top_k(&row, &b, dim, 5, metric, false);
            let idx: Vec<usize> = top[0].iter().map(|x| x.index as usize).collect();
            assert_eq!(idx, copies[..5].to_vec(), "{metric}");
            assert!(top[0].iter().all(|x| x.distance == 0.0), "{metric}");
        }
    }
}
