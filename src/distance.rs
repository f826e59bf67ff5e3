//! Distances between embeddings.

/// Euclidean distance.
pub fn euclidean(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

/// Cosine distance `1 - cos(a, b)` (1 when either vector is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        1.0
    } else {
        1.0 - dot / (na.sqrt() * nb.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_of_known_vectors() {
        assert_eq!(euclidean(&[0.0, 3.0], &[4.0, 0.0]), 5.0);
        assert!((cosine(&[1.0, 0.0], &[0.0, 2.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 1.0], &[2.0, 2.0]).abs() < 1e-6);
    }
}
