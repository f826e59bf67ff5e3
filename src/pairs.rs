//! Labeled pair protocols: LFW `pairs.txt`, tab-separated pair lists, and pairs drawn from a
//! labeled folder (one subfolder per identity, or flat files labeled by name without digits).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::rng::Rng;
use crate::{Error, Result};

/// Two images and whether they show the same person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// First image.
    pub a: PathBuf,
    /// Second image.
    pub b: PathBuf,
    /// Ground truth.
    pub same: bool,
    /// Fold of a k-fold protocol (pairs.txt's own folds), if the file defines them.
    pub fold: Option<usize>,
}

/// Parsed LFW `pairs.txt`: pairs with their folds, image names resolved under `root`.
#[derive(Debug, Clone)]
pub struct LfwPairs {
    /// The pairs in file order.
    pub pairs: Vec<Pair>,
    /// Number of folds the header declares.
    pub folds: usize,
}

fn config(file: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("{}: {msg}", file.display()))
}

/// Parses LFW's pairs format: a header `FOLDS N` (View 2, e.g. `10 300`) or `N` (View 1), then
/// per fold N same lines `name i j` and N different lines `name1 i name2 j`. Image `i` of `name`
/// is `root/name/name_000i.jpg`. `file` names the source in errors.
pub fn parse_lfw_pairs(text: &str, root: &Path, file: &Path) -> Result<LfwPairs> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines
        .next()
        .ok_or_else(|| config(file, "empty pairs file"))?;
    let header: Vec<usize> = header
        .split_whitespace()
        .map(|x| x.parse())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| config(file, format!("line 1: bad header {header:?}")))?;
    let (folds, per) = match header[..] {
        [folds, n] => (folds, n),
        [n] => (1, n),
        _ => return Err(config(file, "line 1: expected `FOLDS N` or `N`")),
    };
    if per == 0 {
        return Err(config(file, "line 1: zero pairs per fold"));
    }
    let image = |name: &str, index: &str, line: usize| -> Result<PathBuf> {
        let i: u32 = index
            .parse()
            .map_err(|_| config(file, format!("line {line}: bad image number {index:?}")))?;
        Ok(root.join(name).join(format!("{name}_{i:04}.jpg")))
    };
    let mut pairs = Vec::new();
    for (k, (no, line)) in lines.enumerate() {
        let no = no + 1;
        let f: Vec<&str> = line.split_whitespace().collect();
        let (a, b, same) = match f[..] {
            [name, i, j] => (image(name, i, no)?, image(name, j, no)?, true),
            [n1, i, n2, j] => (image(n1, i, no)?, image(n2, j, no)?, false),
            _ => {
                return Err(config(
                    file,
                    format!("line {no}: expected `name i j` or `name1 i name2 j`"),
                ))
            }
        };
        pairs.push(Pair {
            a,
            b,
            same,
            fold: Some(k / (2 * per)),
        });
    }
    if pairs.len() != folds * 2 * per {
        return Err(config(
            file,
            format!(
                "the header announces {folds} folds of {per} + {per} pairs ({}), the file has {}",
                folds * 2 * per,
                pairs.len()
            ),
        ));
    }
    Ok(LfwPairs { pairs, folds })
}

/// Parses a tab-separated pair list: `a<TAB>b<TAB>same|different` per line (also `1`/`0`,
/// `true`/`false`), paths relative to `root`; blank lines and `#` comments are skipped.
pub fn parse_tsv_pairs(text: &str, root: &Path, file: &Path) -> Result<Vec<Pair>> {
    let mut pairs = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let no = no + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let [a, b, label] = f[..] else {
            return Err(config(
                file,
                format!(
                    "line {no}: expected 3 tab-separated fields (a, b, same|different), got {}",
                    f.len()
                ),
            ));
        };
        let same = match label.trim().to_ascii_lowercase().as_str() {
            "same" | "1" | "true" | "match" => true,
            "different" | "0" | "false" | "mismatch" => false,
            other => {
                return Err(config(
                    file,
                    format!("line {no}: label {other:?} is not same/different"),
                ))
            }
        };
        pairs.push(Pair {
            a: root.join(a.trim()),
            b: root.join(b.trim()),
            same,
            fold: None,
        });
    }
    Ok(pairs)
}

/// True when `text` looks like LFW's format (numeric header) rather than a TSV list.
pub fn looks_like_lfw(text: &str) -> bool {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            !f.is_empty() && f.len() <= 2 && f.iter().all(|x| x.parse::<usize>().is_ok())
        })
}

/// Where an image's identity label in a labeled folder came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelSource {
    /// The first folder under the root (`root/alice/x.jpg` -> `alice`).
    Subfolder,
    /// The file stem with digits removed, for files directly in the root.
    FileName,
}

/// The identity label of an image in a labeled folder: the first directory under `root`, or for
/// files directly in `root` the file stem with digits removed (`alice2.jpg` -> `alice`,
/// `Abel_Pacheco_0004.jpg` -> `Abel_Pacheco`).
pub fn label_of(root: &Path, path: &Path) -> String {
    labeled(root, path).0
}

/// [`label_of`] with where the label came from.
pub fn labeled(root: &Path, path: &Path) -> (String, LabelSource) {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let mut comps = rel.components();
    let first = comps.next();
    if comps.next().is_some() {
        if let Some(c) = first {
            return (
                c.as_os_str().to_string_lossy().into_owned(),
                LabelSource::Subfolder,
            );
        }
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stripped: String = stem.chars().filter(|c| !c.is_ascii_digit()).collect();
    let trimmed = stripped.trim_matches(|c: char| c == '_' || c == '-' || c == ' ' || c == '.');
    let label = if trimmed.is_empty() {
        stem
    } else {
        trimmed.to_string()
    };
    (label, LabelSource::FileName)
}

/// Pairs drawn from labeled images.
#[derive(Debug, Clone)]
pub struct LabeledPairs {
    /// (index a, index b, same) into the image list.
    pub pairs: Vec<(usize, usize, bool)>,
    /// Same pairs that exist.
    pub same_total: u64,
    /// Different pairs that exist.
    pub different_total: u64,
    /// True when `pairs` is a sample of them.
    pub sampled: bool,
}

/// All same and different pairs of `labels`, or when there are more than `max_pairs`, a seeded
/// sample of `max_pairs`: as many same pairs as possible up to half, different pairs for the rest.
pub fn labeled_pairs(labels: &[String], max_pairs: usize, seed: u64) -> LabeledPairs {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, l) in labels.iter().enumerate() {
        groups.entry(l).or_default().push(i);
    }
    let n = labels.len() as u64;
    let same_total: u64 = groups
        .values()
        .map(|g| (g.len() as u64) * (g.len() as u64).saturating_sub(1) / 2)
        .sum();
    let all_total = n * n.saturating_sub(1) / 2;
    let different_total = all_total - same_total;
    let mut rng = Rng::new(seed);
    if all_total <= max_pairs as u64 {
        let mut pairs = Vec::with_capacity(all_total as usize);
        for i in 0..labels.len() {
            for j in i + 1..labels.len() {
                pairs.push((i, j, labels[i] == labels[j]));
            }
        }
        return LabeledPairs {
            pairs,
            same_total,
            different_total,
            sampled: false,
        };
    }
    // Same pairs: all when they fit in half the budget, else a uniform sample of them.
    let same_budget = (max_pairs / 2).max(max_pairs.saturating_sub(different_total as usize));
    let mut same: Vec<(usize, usize, bool)> = Vec::new();
    if same_total <= same_budget as u64 {
        for g in groups.values() {
            for (x, &i) in g.iter().enumerate() {
                for &j in &g[x + 1..] {
                    same.push((i, j, true));
                }
            }
        }
    } else {
        // Draw by group weight, pair within group; dedupe.
        let weights: Vec<(u64, &Vec<usize>)> = groups
            .values()
            .filter(|g| g.len() > 1)
            .map(|g| ((g.len() as u64) * (g.len() as u64 - 1) / 2, g))
            .collect();
        let mut seen = HashSet::new();
        while same.len() < same_budget {
            let mut r = (rng.next_u64() % same_total.max(1)) as i64;
            let g = weights
                .iter()
                .find(|(w, _)| {
                    r -= *w as i64;
                    r < 0
                })
                .map_or(weights[0].1, |x| x.1);
            let (x, y) = (rng.below(g.len()), rng.below(g.len()));
            if x == y {
                continue;
            }
            let (i, j) = (g[x].min(g[y]), g[x].max(g[y]));
            if seen.insert((i, j)) {
                same.push((i, j, true));
            }
        }
    }
    let want_diff = (max_pairs - same.len()).min(different_total as usize);
    let mut seen = HashSet::with_capacity(want_diff);
    let mut pairs = same;
    while seen.len() < want_diff {
        let (x, y) = (rng.below(labels.len()), rng.below(labels.len()));
        if labels[x] == labels[y] {
            continue;
        }
        let (i, j) = (x.min(y), x.max(y));
        if seen.insert((i, j)) {
            pairs.push((i, j, false));
        }
    }
    LabeledPairs {
        pairs,
        same_total,
        different_total,
        sampled: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lfw_view2_and_view1() {
        let text = "2 1\nA 1 2\nA 1 B 3\nC 4 5\nB 1 C 2\n";
        let p = parse_lfw_pairs(text, Path::new("/r"), Path::new("pairs.txt")).unwrap();
        assert_eq!(p.folds, 2);
        assert_eq!(p.pairs.len(), 4);
        assert_eq!(p.pairs[0].a, Path::new("/r/A/A_0001.jpg"));
        assert_eq!(p.pairs[1].b, Path::new("/r/B/B_0003.jpg"));
        assert!(p.pairs[0].same && !p.pairs[1].same);
        assert_eq!(p.pairs[2].fold, Some(1));
        let v1 = parse_lfw_pairs("1\nA 1 2\nA 1 B 3\n", Path::new("/r"), Path::new("x")).unwrap();
        assert_eq!(v1.folds, 1);
        let short = parse_lfw_pairs("2 1\nA 1 2\n", Path::new("/r"), Path::new("p.txt"));
        assert!(short.unwrap_err().to_string().contains("p.txt"));
        assert!(parse_lfw_pairs("1 1\nA x 2\nA 1 B 2\n", Path::new("/r"), Path::new("p")).is_err());
        assert!(looks_like_lfw("10 300\nA 1 2"));
        assert!(!looks_like_lfw("a.jpg\tb.jpg\tsame"));
    }

    #[test]
    fn tsv() {
        let text = "# comment\na.jpg\tb.jpg\tsame\r\n\nc.jpg\td.jpg\tDifferent\n";
        let p = parse_tsv_pairs(text, Path::new("/r"), Path::new("l.tsv")).unwrap();
        assert_eq!(p.len(), 2);
        assert!(p[0].same && !p[1].same);
        assert_eq!(p[1].a, Path::new("/r/c.jpg"));
        let err = parse_tsv_pairs("a\tb\tmaybe\n", Path::new("/r"), Path::new("l.tsv"));
        assert!(err.unwrap_err().to_string().contains("line 1"));
    }

    #[test]
    fn labels() {
        let root = Path::new("/album");
        assert_eq!(label_of(root, Path::new("/album/alice2.jpg")), "alice");
        assert_eq!(
            label_of(root, Path::new("/album/Abel_Pacheco_0004.jpg")),
            "Abel_Pacheco"
        );
        assert_eq!(label_of(root, Path::new("/album/Bob/x/1.jpg")), "Bob");
        assert_eq!(label_of(root, Path::new("/album/123.jpg")), "123");
        assert_eq!(
            labeled(root, Path::new("/album/Bob/1.jpg")).1,
            LabelSource::Subfolder
        );
        assert_eq!(
            labeled(root, Path::new("/album/obama_partial_face.jpg")),
            ("obama_partial_face".to_string(), LabelSource::FileName)
        );
    }

    #[test]
    fn all_and_sampled_pairs() {
        let labels: Vec<String> = ["a", "a", "a", "b", "b", "c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let all = labeled_pairs(&labels, 1000, 1);
        assert_eq!(all.pairs.len(), 15);
        assert_eq!((all.same_total, all.different_total), (4, 11));
        assert!(!all.sampled);
        let s = labeled_pairs(&labels, 8, 1);
        assert!(s.sampled);
        assert_eq!(s.pairs.len(), 8);
        assert_eq!(s.pairs.iter().filter(|p| p.2).count(), 4);
        for &(i, j, same) in &s.pairs {
            assert!(i < j);
            assert_eq!(same, labels[i] == labels[j]);
        }
        assert_eq!(labeled_pairs(&labels, 8, 1).pairs, s.pairs);
        // More same pairs than half the budget: sampled among them.
        let many: Vec<String> = (0..40).map(|i| format!("p{}", i % 2)).collect();
        let s = labeled_pairs(&many, 100, 5);
        assert_eq!(s.pairs.len(), 100);
        assert_eq!(s.pairs.iter().filter(|p| p.2).count(), 50);
    }
}
