//! Grouping face embeddings into people: Chinese Whispers on the graph of pairs closer than a
//! threshold (dlib's method, the default), DBSCAN, and k-means. Every algorithm honours the
//! constraint that two faces from the same photo are never the same person. Neighbour graphs
//! come from the blocked kernels in [`crate::distance`]; no N x N matrix is ever built.

use crate::distance::{self, Metric, Neighbor};
use crate::rng::Rng;
use crate::{Error, Result};

/// Default clustering threshold (Euclidean, dlib embeddings): stricter than verify's 0.60
/// because an album of n faces has about n^2 / 2 pairs of different people. On LFW's pairs it
/// accepts 0.03 % of different-person pairs (verify's 0.60: 0.6 %); it is also the value dlib's
/// own face-clustering example uses. Measured by `examples/eval_cluster.rs` (README).
pub const DEFAULT_THRESHOLD: f32 = 0.5;

/// Default smallest face width (pixels) that is clustered; see [`ClusterConfig::min_face`].
pub const DEFAULT_MIN_FACE: f32 = 70.0;

/// Which clustering algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// Chinese Whispers (Biemann 2006) on the threshold graph, as dlib clusters faces.
    #[default]
    ChineseWhispers,
    /// DBSCAN with eps = threshold and min points = min size.
    Dbscan,
    /// Lloyd's k-means with k-means++ seeding; needs k.
    KMeans,
}

/// Clustering settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Faces closer than this are linked (Chinese Whispers) or neighbours (DBSCAN eps).
    pub threshold: f32,
    /// Clusters smaller than this are "unknown"; DBSCAN's min points.
    pub min_size: usize,
    /// Number of clusters for k-means.
    pub k: Option<usize>,
    /// Distance between embeddings.
    pub metric: Metric,
    /// Faces whose box is narrower than this (pixels) are not clustered (unknown): small, blurry
    /// background faces are where a threshold graph chains different people together.
    pub min_face: f32,
    /// Seed for visiting orders and k-means seeding.
    pub seed: u64,
    /// Iteration cap (Chinese Whispers passes, k-means rounds).
    pub iterations: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            algorithm: Algorithm::ChineseWhispers,
            threshold: DEFAULT_THRESHOLD,
            min_size: 2,
            k: None,
            metric: Metric::Euclidean,
            min_face: DEFAULT_MIN_FACE,
            seed: 0,
            iterations: 100,
        }
    }
}

/// The result: a cluster per face, clusters numbered by size (0 = largest).
#[derive(Debug, Clone, PartialEq)]
pub struct Clustering {
    /// Cluster of each face; `None` for unknown (a cluster under the minimum size, or noise).
    pub labels: Vec<Option<usize>>,
    /// Members of each cluster, largest cluster first (ties: lowest first member).
    pub clusters: Vec<Vec<usize>>,
    /// The member nearest each cluster's mean.
    pub representatives: Vec<usize>,
}

/// Clusters `n = embeddings.len() / dim` faces; `photo[i]` identifies the photo face `i` came
/// from (faces of one photo never share a cluster).
pub fn cluster(
    embeddings: &[f32],
    dim: usize,
    photo: &[u32],
    config: &ClusterConfig,
) -> Result<Clustering> {
    if dim == 0 || !embeddings.len().is_multiple_of(dim) || embeddings.len() / dim != photo.len() {
        return Err(Error::Config(format!(
            "cluster: {} values, dim {dim}, {} photo ids do not match",
            embeddings.len(),
            photo.len()
        )));
    }
    if config.threshold.is_nan() || config.threshold <= 0.0 {
        return Err(Error::Config(
            "cluster: the threshold must be positive".into(),
        ));
    }
    let n = photo.len();
    let raw = match config.algorithm {
        Algorithm::ChineseWhispers => {
            let graph = distance::within(
                embeddings,
                embeddings,
                dim,
                config.threshold,
                config.metric,
                true,
            );
            chinese_whispers(&graph, photo, config.iterations, config.seed)
        }
        Algorithm::Dbscan => {
            let graph = distance::within(
                embeddings,
                embeddings,
                dim,
                config.threshold,
                config.metric,
                true,
            );
            let labels = dbscan(&graph, config.min_size.max(1));
            split_same_photo(embeddings, dim, photo, labels, config.metric)
        }
        Algorithm::KMeans => {
            let k = config
                .k
                .ok_or_else(|| Error::Config("k-means needs the number of clusters k".into()))?;
            if k == 0 {
                return Err(Error::Config("k-means: k must be at least 1".into()));
            }
            kmeans(embeddings, dim, photo, k.min(n.max(1)), config)
        }
    };
    Ok(finish(embeddings, dim, raw, config.min_size, config.metric))
}

/// [`cluster`] on a matrix of embeddings (one face per row).
pub fn cluster_matrix(
    embeddings: ndarray::ArrayView2<f32>,
    photo: &[u32],
    config: &ClusterConfig,
) -> Result<Clustering> {
    let rows: std::borrow::Cow<[f32]> = match embeddings.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(embeddings.iter().copied().collect()),
    };
    cluster(&rows, embeddings.ncols(), photo, config)
}

/// Clusters faces of width `face_width[i]`: faces narrower than `config.min_face` are left out of
/// the graph and come back unknown; the rest go through [`cluster`]. Indices refer to all faces.
pub fn cluster_faces(
    embeddings: &[f32],
    dim: usize,
    photo: &[u32],
    face_width: &[f32],
    config: &ClusterConfig,
) -> Result<Clustering> {
    if face_width.len() != photo.len() {
        return Err(Error::Config("cluster: one width per face".into()));
    }
    let keep: Vec<usize> = (0..photo.len())
        .filter(|&i| face_width[i] >= config.min_face)
        .collect();
    if dim == 0 || embeddings.len() != photo.len() * dim {
        return Err(Error::Config(format!(
            "cluster: {} values, dim {dim}, {} faces do not match",
            embeddings.len(),
            photo.len()
        )));
    }
    let sub_emb: Vec<f32> = keep
        .iter()
        .flat_map(|&i| embeddings[i * dim..(i + 1) * dim].iter().copied())
        .collect();
    let sub_photo: Vec<u32> = keep.iter().map(|&i| photo[i]).collect();
    let sub = cluster(&sub_emb, dim, &sub_photo, config)?;
    let mut labels = vec![None; photo.len()];
    for (j, &i) in keep.iter().enumerate() {
        labels[i] = sub.labels[j];
    }
    Ok(Clustering {
        labels,
        clusters: sub
            .clusters
            .iter()
            .map(|m| m.iter().map(|&j| keep[j]).collect())
            .collect(),
        representatives: sub.representatives.iter().map(|&j| keep[j]).collect(),
    })
}

/// Chinese Whispers: every face starts as its own label; in seeded random order, each face
/// takes the label with the most links among its neighbours (itself included), skipping labels
/// held by a face of the same photo. Stops when a pass changes nothing.
pub fn chinese_whispers(
    graph: &[Vec<Neighbor>],
    photo: &[u32],
    iterations: usize,
    seed: u64,
) -> Vec<Option<usize>> {
    let n = graph.len();
    let mut labels: Vec<usize> = (0..n).collect();
    // Faces sharing each face's photo.
    let mates = photo_mates(photo);
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed);
    let mut votes: Vec<(usize, f32)> = Vec::new();
    for _ in 0..iterations.max(1) {
        rng.shuffle(&mut order);
        let mut changed = 0;
        for &i in &order {
            votes.clear();
            votes.push((labels[i], 1.0));
            votes.extend(graph[i].iter().map(|nb| (labels[nb.index as usize], 1.0)));
            votes.sort_unstable_by_key(|v| v.0);
            // Sum runs of equal labels.
            let mut best: Option<(usize, f32)> = None;
            let mut k = 0;
            while k < votes.len() {
                let label = votes[k].0;
                let mut w = 0.0;
                while k < votes.len() && votes[k].0 == label {
                    w += votes[k].1;
                    k += 1;
                }
                let blocked = mates[i].iter().any(|&m| m != i && labels[m] == label);
                if !blocked && best.is_none_or(|(_, bw)| w > bw) {
                    best = Some((label, w));
                }
            }
            if let Some((label, _)) = best {
                if label != labels[i] {
                    labels[i] = label;
                    changed += 1;
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    labels.into_iter().map(Some).collect()
}

fn photo_mates(photo: &[u32]) -> Vec<Vec<usize>> {
    let mut by_photo: std::collections::HashMap<u32, Vec<usize>> = Default::default();
    for (i, &p) in photo.iter().enumerate() {
        by_photo.entry(p).or_default().push(i);
    }
    photo
        .iter()
        .map(|p| {
            let g = &by_photo[p];
            if g.len() > 1 {
                g.clone()
            } else {
                Vec::new()
            }
        })
        .collect()
}

/// DBSCAN on a radius graph (self excluded): a face with at least `min_points` faces within eps
/// (itself included) is a core point; clusters grow from cores; the rest is noise.
pub fn dbscan(graph: &[Vec<Neighbor>], min_points: usize) -> Vec<Option<usize>> {
    let n = graph.len();
    let core: Vec<bool> = graph.iter().map(|g| g.len() + 1 >= min_points).collect();
    let mut labels: Vec<Option<usize>> = vec![None; n];
    let mut next = 0;
    let mut stack = Vec::new();
    for start in 0..n {
        if labels[start].is_some() || !core[start] {
            continue;
        }
        labels[start] = Some(next);
        stack.push(start);
        while let Some(i) = stack.pop() {
            for nb in &graph[i] {
                let j = nb.index as usize;
                if labels[j].is_none() {
                    labels[j] = Some(next);
                    if core[j] {
                        stack.push(j);
                    }
                }
            }
        }
        next += 1;
    }
    labels
}

/// The vector each metric clusters in: as is for Euclidean, unit length for cosine.
fn space(embeddings: &[f32], dim: usize, metric: Metric) -> Vec<f32> {
    let mut v = embeddings.to_vec();
    if metric == Metric::Cosine {
        for row in v.chunks_mut(dim) {
            let norm = distance::dot(row, row).sqrt();
            if norm > 0.0 {
                row.iter_mut().for_each(|x| *x /= norm);
            }
        }
    }
    v
}

fn means(v: &[f32], dim: usize, labels: &[Option<usize>], k: usize) -> Vec<f32> {
    let mut sums = vec![0f64; k * dim];
    let mut counts = vec![0usize; k];
    for (row, l) in v.chunks(dim).zip(labels) {
        if let Some(c) = *l {
            counts[c] += 1;
            for (s, x) in sums[c * dim..(c + 1) * dim].iter_mut().zip(row) {
                *s += *x as f64;
            }
        }
    }
    sums.chunks(dim)
        .zip(&counts)
        .flat_map(|(s, &c)| s.iter().map(move |x| (*x / c.max(1) as f64) as f32))
        .collect()
}

/// Where two faces of one photo share a cluster, keeps the one nearest the cluster mean and
/// makes the others unknown.
fn split_same_photo(
    embeddings: &[f32],
    dim: usize,
    photo: &[u32],
    mut labels: Vec<Option<usize>>,
    metric: Metric,
) -> Vec<Option<usize>> {
    let k = labels.iter().flatten().max().map_or(0, |m| m + 1);
    let v = space(embeddings, dim, metric);
    let centers = means(&v, dim, &labels, k);
    let mut taken: std::collections::HashMap<(u32, usize), (usize, f32)> = Default::default();
    for i in 0..labels.len() {
        let Some(c) = labels[i] else { continue };
        let d = distance::squared_euclidean(
            &v[i * dim..(i + 1) * dim],
            &centers[c * dim..(c + 1) * dim],
        );
        match taken.get(&(photo[i], c)).copied() {
            None => {
                taken.insert((photo[i], c), (i, d));
            }
            Some((j, dj)) => {
                if d < dj {
                    labels[j] = None;
                    taken.insert((photo[i], c), (i, d));
                } else {
                    labels[i] = None;
                }
            }
        }
    }
    labels
}

/// k-means (k-means++ seeding, Lloyd rounds via the blocked distance kernel). The faces of each
/// photo then take distinct clusters, nearest first.
fn kmeans(
    embeddings: &[f32],
    dim: usize,
    photo: &[u32],
    k: usize,
    config: &ClusterConfig,
) -> Vec<Option<usize>> {
    let v = space(embeddings, dim, config.metric);
    let n = photo.len();
    if n == 0 {
        return Vec::new();
    }
    let mut rng = Rng::new(config.seed);
    // k-means++: each next centre drawn with probability proportional to squared distance.
    let mut centers: Vec<f32> = Vec::with_capacity(k * dim);
    let first = rng.below(n);
    centers.extend_from_slice(&v[first * dim..(first + 1) * dim]);
    let mut d2: Vec<f32> = v
        .chunks(dim)
        .map(|r| distance::squared_euclidean(r, &centers[..dim]))
        .collect();
    while centers.len() < k * dim {
        let total: f64 = d2.iter().map(|&x| x as f64).sum();
        let pick = if total > 0.0 {
            let mut r = rng.f64() * total;
            d2.iter()
                .position(|&x| {
                    r -= x as f64;
                    r < 0.0
                })
                .unwrap_or(n - 1)
        } else {
            rng.below(n)
        };
        let c = v[pick * dim..(pick + 1) * dim].to_vec();
        for (d, row) in d2.iter_mut().zip(v.chunks(dim)) {
            *d = d.min(distance::squared_euclidean(row, &c));
        }
        centers.extend(c);
    }
    let mut assign: Vec<Option<usize>> = vec![None; n];
    let mut dist = vec![0f32; n * k];
    for _ in 0..config.iterations.max(1) {
        distance::pairwise_into(&v, &centers, dim, Metric::Euclidean, &mut dist);
        let next: Vec<Option<usize>> = {
            use rayon::prelude::*;
            dist.par_chunks(k)
                .map(|row| (0..k).min_by(|&a, &b| row[a].total_cmp(&row[b])))
                .collect()
        };
        let changed = next.iter().zip(&assign).filter(|(a, b)| a != b).count();
        assign = next;
        // Converged when at most 0.1 % of the points move (the last rounds move a handful).
        if changed * 1000 <= n {
            break;
        }
        let new_centers = means(&v, dim, &assign, k);
        // An empty cluster keeps its old centre.
        let mut counts = vec![0usize; k];
        assign.iter().flatten().for_each(|&c| counts[c] += 1);
        for c in 0..k {
            if counts[c] > 0 {
                centers[c * dim..(c + 1) * dim]
                    .copy_from_slice(&new_centers[c * dim..(c + 1) * dim]);
            }
        }
    }
    // Same-photo constraint: within each multi-face photo, assign (face, cluster) options
    // nearest first, each cluster and face at most once.
    for (first, group) in photo_mates(photo).iter().enumerate() {
        // Each multi-face photo once, at its first face.
        if group.first() != Some(&first) {
            continue;
        }
        let mut options: Vec<(f32, usize, usize)> = group
            .iter()
            .flat_map(|&i| (0..k).map(move |c| (i, c)))
            .map(|(i, c)| (dist[i * k + c], i, c))
            .collect();
        options.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut face_done = std::collections::HashSet::new();
        let mut cluster_used = std::collections::HashSet::new();
        for &i in group {
            assign[i] = None;
        }
        for (_, i, c) in options {
            if !face_done.contains(&i) && !cluster_used.contains(&c) {
                assign[i] = Some(c);
                face_done.insert(i);
                cluster_used.insert(c);
            }
        }
    }
    assign
}

/// Renumbers clusters by size (largest first), turns clusters under `min_size` into unknown,
/// and picks each cluster's representative.
fn finish(
    embeddings: &[f32],
    dim: usize,
    raw: Vec<Option<usize>>,
    min_size: usize,
    metric: Metric,
) -> Clustering {
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, l) in raw.iter().enumerate() {
        if let Some(l) = l {
            groups.entry(*l).or_default().push(i);
        }
    }
    let mut clusters: Vec<Vec<usize>> = groups
        .into_values()
        .filter(|g| g.len() >= min_size.max(1))
        .collect();
    clusters.sort_by(|a, b| b.len().cmp(&a.len()).then(a[0].cmp(&b[0])));
    let mut labels = vec![None; raw.len()];
    for (c, members) in clusters.iter().enumerate() {
        for &i in members {
            labels[i] = Some(c);
        }
    }
    let v = space(embeddings, dim, metric);
    let centers = means(&v, dim, &labels, clusters.len());
    let representatives = clusters
        .iter()
        .enumerate()
        .map(|(c, members)| {
            let center = &centers[c * dim..(c + 1) * dim];
            members
                .iter()
                .copied()
                .min_by(|&a, &b| {
                    let da = distance::squared_euclidean(&v[a * dim..(a + 1) * dim], center);
                    let db = distance::squared_euclidean(&v[b * dim..(b + 1) * dim], center);
                    da.total_cmp(&db)
                })
                .unwrap_or(members[0])
        })
        .collect();
    Clustering {
        labels,
        clusters,
        representatives,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_matrix_is_cluster_on_the_rows() {
        let mut rng = crate::rng::Rng::new(3);
        // Three tight groups of 6 points in 4-d, one face per photo.
        let centres: Vec<Vec<f32>> = (0..3)
            .map(|_| (0..4).map(|_| 3.0 * rng.normal() as f32).collect())
            .collect();
        let rows: Vec<f32> = (0..18)
            .flat_map(|i| {
                let c = centres[i % 3].clone();
                c.into_iter()
                    .map(|v| v + 0.05 * rng.normal() as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        let photo: Vec<u32> = (0..18).collect();
        let config = ClusterConfig {
            threshold: 1.0,
            ..Default::default()
        };
        let view = ndarray::ArrayView2::from_shape((18, 4), &rows).unwrap();
        let got = cluster_matrix(view, &photo, &config).unwrap();
        assert_eq!(
            got.labels,
            cluster(&rows, 4, &photo, &config).unwrap().labels
        );
        assert_eq!(got.clusters.len(), 3);
    }

    use super::*;

    /// `groups` tight blobs of `per` points in 16-d, far apart, plus `noise` scattered points.
    fn blobs(groups: usize, per: usize, noise: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
        let dim = 16;
        let mut r = Rng::new(seed);
        let mut v = Vec::new();
        let mut truth = Vec::new();
        for g in 0..groups {
            let center: Vec<f32> = (0..dim).map(|_| 3.0 * r.normal() as f32).collect();
            for _ in 0..per {
                v.extend(center.iter().map(|c| c + 0.05 * r.normal() as f32));
                truth.push(g);
            }
        }
        for k in 0..noise {
            v.extend((0..dim).map(|_| 30.0 * r.normal() as f32));
            truth.push(groups + k);
        }
        (v, truth)
    }

    fn same_partition(labels: &[Option<usize>], truth: &[usize], upto: usize) -> bool {
        (0..upto).all(|i| (0..upto).all(|j| (labels[i] == labels[j]) == (truth[i] == truth[j])))
    }

    #[test]
    fn all_algorithms_recover_separated_blobs() {
        let (v, truth) = blobs(5, 12, 4, 1);
        let photo: Vec<u32> = (0..truth.len() as u32).collect();
        for algorithm in [
            Algorithm::ChineseWhispers,
            Algorithm::Dbscan,
            Algorithm::KMeans,
        ] {
            let config = ClusterConfig {
                algorithm,
                threshold: 1.0,
                k: Some(9),
                ..Default::default()
            };
            let c = cluster(&v, 16, &photo, &config).unwrap();
            assert!(same_partition(&c.labels, &truth, 60), "{algorithm:?}");
            assert_eq!(c.clusters.len(), 5, "{algorithm:?}");
            // The noise points are unknown (singletons under min size 2).
            assert!(c.labels[60..].iter().all(|l| l.is_none()), "{algorithm:?}");
            for (k, members) in c.clusters.iter().enumerate() {
                assert!(members.contains(&c.representatives[k]));
            }
        }
    }

    #[test]
    fn faces_of_one_photo_are_never_merged() {
        // Two identical faces in one photo, plus three more copies in other photos.
        let (v, _) = blobs(1, 5, 0, 2);
        let photo = [7, 7, 1, 2, 3];
        for algorithm in [
            Algorithm::ChineseWhispers,
            Algorithm::Dbscan,
            Algorithm::KMeans,
        ] {
            let config = ClusterConfig {
                algorithm,
                threshold: 1.0,
                k: Some(1),
                min_size: 1,
                ..Default::default()
            };
            let c = cluster(&v, 16, &photo, &config).unwrap();
            assert!(
                c.labels[0].is_none() || c.labels[0] != c.labels[1],
                "{algorithm:?}: {:?}",
                c.labels
            );
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(cluster(&[1.0; 10], 3, &[0, 1, 2], &ClusterConfig::default()).is_err());
        let kmeans = ClusterConfig {
            algorithm: Algorithm::KMeans,
            ..Default::default()
        };
        assert!(cluster(&[1.0; 6], 3, &[0, 1], &kmeans).is_err());
        let empty = cluster(&[], 3, &[], &ClusterConfig::default()).unwrap();
        assert!(empty.clusters.is_empty());
    }
}
