//! Many photos through one pipeline: photos are read, decoded, detected and aligned in parallel,
//! one per worker, and their chips are embedded in batches that mix photos
//! ([`Library::faces_of_files`]), so the embedder sees [`EMBED_BATCH`] faces per call however few
//! each photo has. Every photo keeps its own fault boundary: a photo that cannot be read or
//! decoded fails alone, and a batch whose embedding fails is embedded again photo by photo, so
//! only the photo at fault fails.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use image::RgbImage;
use rayon::prelude::*;

use super::{Analysis, ImageFaces, Library, Prepared, Unembedded};
use crate::io::LoadOptions;
use crate::pipeline::Pipeline;
use crate::{Error, Result};

/// Faces embedded together in one call of the embedder: with flip averaging 16 chips, one
/// forward pass of dlib's ResNet (which runs 16 chips at a time), where Winograd's transformed
/// weights (`--precision fast`) pay; few enough that the faces waiting for a batch hold little
/// memory (a 150 x 150 chip is 66 kB).
pub const EMBED_BATCH: usize = 8;

/// What [`Library::faces_of_files`] gives for one photo: its faces, and whether the library
/// already had them.
pub type FileFaces = Result<(Arc<ImageFaces>, bool)>;

/// A chip waiting for its batch: (photo index, chip index, chip).
type Queued = (usize, usize, RgbImage);

/// A photo whose chips are being embedded.
struct Waiting {
    analysis: Analysis,
    /// One per chip, filled as the batches holding them are embedded.
    embeddings: Vec<Option<Vec<f32>>>,
}

/// The state shared by the workers of one [`Library::faces_of_files`] run.
struct Batcher<'a, P, D> {
    library: &'a Library,
    pipeline: &'a Pipeline,
    paths: &'a [P],
    done: &'a D,
    queue: Mutex<Vec<Queued>>,
    waiting: Mutex<HashMap<usize, Waiting>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Library {
    /// The faces of every file in `paths`, as [`Library::faces_of_file`] gives them one by one,
    /// on the current rayon pool with the chips of several photos embedded together (see the
    /// module documentation). `done(i, result)` is called once per path, from any worker and
    /// in no particular order, as each photo is finished; the call returns when all are. The
    /// faces, embeddings and library records are the same as one photo at a time would give
    /// (bit for bit on the exact path, whatever the thread count).
    pub fn faces_of_files<P, D>(
        &self,
        pipeline: &Pipeline,
        paths: &[P],
        opts: &LoadOptions,
        central: bool,
        done: &D,
    ) where
        P: AsRef<Path> + Sync,
        D: Fn(usize, FileFaces) + Sync,
    {
        let batcher = Batcher {
            library: self,
            pipeline,
            paths,
            done,
            queue: Mutex::new(Vec::new()),
            waiting: Mutex::new(HashMap::new()),
        };
        // par_bridge hands photos out roughly in input order, so results stream in order.
        (0..paths.len()).par_bridge().for_each(|i| {
            let path = paths[i].as_ref();
            let prepared = crate::io::guard(path, || {
                crate::nn::serial(|| self.prepare(pipeline, path, opts, central))
            });
            match prepared {
                Err(e) => done(i, Err(e)),
                Ok(Prepared::Known(faces)) => done(i, Ok((faces, true))),
                Ok(Prepared::Chips(photo)) => batcher.add(i, photo),
            }
        });
        // The last, partial batch: split between the workers.
        let rest = std::mem::take(&mut *lock(&batcher.queue));
        if !rest.is_empty() {
            let per = rest.len().div_ceil(rayon::current_num_threads()).max(1);
            let mut parts = Vec::new();
            let mut rest = rest.into_iter().peekable();
            while rest.peek().is_some() {
                parts.push(rest.by_ref().take(per).collect::<Vec<_>>());
            }
            parts.into_par_iter().for_each(|part| batcher.embed(part));
        }
    }

    /// [`Library::faces_of_files`] collected in input order; `step` is called as each photo is
    /// finished.
    pub fn faces_of_files_in_order<P>(
        &self,
        pipeline: &Pipeline,
        paths: &[P],
        opts: &LoadOptions,
        central: bool,
        step: &(dyn Fn() + Sync),
    ) -> Vec<FileFaces>
    where
        P: AsRef<Path> + Sync,
    {
        let slots: Vec<Mutex<Option<FileFaces>>> = paths.iter().map(|_| Mutex::new(None)).collect();
        self.faces_of_files(pipeline, paths, opts, central, &|i, r| {
            *lock(&slots[i]) = Some(r);
            step();
        });
        slots
            .into_iter()
            .zip(paths)
            .map(|(slot, path)| {
                slot.into_inner()
                    .unwrap_or_else(|p| p.into_inner())
                    .unwrap_or_else(|| {
                        Err(Error::image(path.as_ref(), "internal error: no result"))
                    })
            })
            .collect()
    }
}

impl<P, D> Batcher<'_, P, D>
where
    P: AsRef<Path> + Sync,
    D: Fn(usize, FileFaces) + Sync,
{
    fn path(&self, i: usize) -> &Path {
        self.paths[i].as_ref()
    }

    /// Queues photo `i`'s chips and embeds full batches (on this worker).
    fn add(&self, i: usize, photo: Unembedded) {
        let Unembedded { analysis, chips } = photo;
        if chips.is_empty() {
            self.finish(i, analysis, Vec::new());
            return;
        }
        lock(&self.waiting).insert(
            i,
            Waiting {
                analysis,
                embeddings: vec![None; chips.len()],
            },
        );
        lock(&self.queue).extend(chips.into_iter().enumerate().map(|(k, c)| (i, k, c)));
        loop {
            let batch: Vec<Queued> = {
                let mut q = lock(&self.queue);
                if q.len() < EMBED_BATCH {
                    break;
                }
                q.drain(..EMBED_BATCH).collect()
            };
            self.embed(batch);
        }
    }

    /// Embeds one batch and hands the embeddings to their photos. When the batch fails, each
    /// photo's chips are embedded on their own, and a photo that still fails fails alone.
    fn embed(&self, batch: Vec<Queued>) {
        let (slots, chips): (Vec<(usize, usize)>, Vec<RgbImage>) =
            batch.into_iter().map(|(i, k, c)| ((i, k), c)).unzip();
        if let Ok(embs) = self.embed_chips(&chips) {
            for ((i, k), e) in slots.into_iter().zip(embs) {
                self.deliver(i, k, e);
            }
            return;
        }
        let mut photos: Vec<usize> = slots.iter().map(|s| s.0).collect();
        photos.sort_unstable();
        photos.dedup();
        for i in photos {
            let mine: Vec<usize> = (0..slots.len()).filter(|&j| slots[j].0 == i).collect();
            let own: Vec<RgbImage> = mine.iter().map(|&j| chips[j].clone()).collect();
            match self.embed_chips(&own) {
                Ok(embs) => {
                    for (j, e) in mine.into_iter().zip(embs) {
                        self.deliver(i, slots[j].1, e);
                    }
                }
                Err(reason) => self.fail(i, reason),
            }
        }
    }

    /// The pipeline's embeddings of `chips` on this worker, a panic turned into an error.
    fn embed_chips(&self, chips: &[RgbImage]) -> std::result::Result<Vec<Vec<f32>>, String> {
        let run = || crate::nn::serial(|| self.pipeline.embed_chips(chips));
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            Ok(Ok(embs)) if embs.len() == chips.len() => Ok(embs),
            Ok(Ok(embs)) => Err(format!(
                "internal error: {} embeddings for {} chips",
                embs.len(),
                chips.len()
            )),
            Ok(Err(e)) => Err(e.to_string()),
            Err(payload) => Err(format!(
                "internal error while embedding its faces: {}",
                crate::io::panic_message(&*payload)
            )),
        }
    }

    /// Chip `k` of photo `i` has its embedding; the photo's last one finishes it.
    fn deliver(&self, i: usize, k: usize, embedding: Vec<f32>) {
        let complete = {
            let mut waiting = lock(&self.waiting);
            // A photo that failed is no longer waiting.
            let Some(w) = waiting.get_mut(&i) else {
                return;
            };
            w.embeddings[k] = Some(embedding);
            if w.embeddings.iter().any(Option::is_none) {
                return;
            }
            waiting.remove(&i)
        };
        if let Some(w) = complete {
            let embeddings = w.embeddings.into_iter().flatten().collect();
            self.finish(i, w.analysis, embeddings);
        }
    }

    /// Photo `i` fails: its embedding failed.
    fn fail(&self, i: usize, reason: String) {
        if lock(&self.waiting).remove(&i).is_some() {
            (self.done)(i, Err(Error::image(self.path(i), reason)));
        }
    }

    /// Records photo `i` with its embeddings and reports it.
    fn finish(&self, i: usize, analysis: Analysis, embeddings: Vec<Vec<f32>>) {
        let path = self.path(i);
        let r = crate::io::guard(path, || self.library.complete(analysis, embeddings, path));
        (self.done)(i, r.map(|faces| (faces, false)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::Embedder;
    use crate::models::ModelSource;
    use std::path::PathBuf;

    /// A small real embedder, the mean colour of the chip, that fails (with an error, or a
    /// panic) on a batch holding a chip of the given mean colour.
    struct MeanColour {
        poison: Option<([u32; 3], bool)>,
    }

    fn mean(c: &RgbImage) -> [u32; 3] {
        let n = c.width() * c.height();
        std::array::from_fn(|k| c.pixels().map(|p| p.0[k] as u32).sum::<u32>() / n)
    }

    impl Embedder for MeanColour {
        fn model_id(&self) -> &str {
            "mean-colour"
        }
        fn dim(&self) -> usize {
            3
        }
        fn chip_size(&self) -> usize {
            32
        }
        fn embed(&self, chips: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
            if let Some((bad, panics)) = self.poison {
                if chips.iter().any(|c| mean(c) == bad) {
                    assert!(!panics, "poisoned chip");
                    return Err(Error::Config("poisoned chip".into()));
                }
            }
            Ok(chips
                .iter()
                .map(|c| mean(c).iter().map(|&v| v as f32).collect())
                .collect())
        }
    }

    fn fixtures() -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut lfw: Vec<PathBuf> = std::fs::read_dir(dir.join("lfw"))
            .expect("tests/fixtures/lfw")
            .map(|e| e.expect("fixture entry").path())
            .collect();
        lfw.sort();
        let mut files = vec![dir.join("2008_001322.jpg")];
        files.extend(lfw);
        files.push(dir.join("Tom_Cruise_avp_2014_4.jpg"));
        files
    }

    fn pipeline(poison: Option<([u32; 3], bool)>) -> Pipeline {
        Pipeline::builder()
            .models(&ModelSource::Embedded)
            .embedder(MeanColour { poison })
            .build()
            .expect("pipeline")
    }

    fn run(pipeline: &Pipeline, files: &[PathBuf], threads: usize) -> Vec<FileFaces> {
        let lib = Library::in_memory().expect("library");
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
            .install(|| {
                lib.faces_of_files_in_order(pipeline, files, &LoadOptions::default(), false, &|| {})
            })
    }

    #[test]
    fn a_photo_whose_faces_cannot_be_embedded_fails_alone() {
        // Twice over, the copies with a byte after the JPEG's end (other content, the same
        // pixels): enough faces to analyse that batches mix photos.
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut files = fixtures();
        for f in fixtures() {
            let copy = tmp.path().join(format!(
                "copy-{}",
                f.file_name().expect("name").to_string_lossy()
            ));
            let mut bytes = std::fs::read(&f).expect("fixture");
            bytes.push(0);
            std::fs::write(&copy, bytes).expect("copy");
            files.push(copy);
        }
        let good = run(&pipeline(None), &files, 1);
        let faces: Vec<&Arc<ImageFaces>> = good
            .iter()
            .map(|r| &r.as_ref().expect("every fixture is analysed").0)
            .collect();
        let total: usize = faces.iter().map(|f| f.faces.len()).sum();
        assert!(total >= 2 * EMBED_BATCH, "{total} faces");
        // Poison the chip of the last face of the first photo (3 faces, batched with others).
        let victim = |i: usize| files[i].to_string_lossy().ends_with("2008_001322.jpg");
        let last = faces[0].faces.last().expect("a face").embedding.clone();
        let bad = [last[0] as u32, last[1] as u32, last[2] as u32];
        let others = |i: usize| !victim(i) && faces[i].faces.iter().any(|f| f.embedding == last);
        assert!(
            !(0..files.len()).any(others),
            "the poisoned colour is the victim's alone"
        );
        for panics in [false, true] {
            for threads in [1, 2] {
                let got = run(&pipeline(Some((bad, panics))), &files, threads);
                for (i, (r, want)) in got.iter().zip(&faces).enumerate() {
                    if victim(i) {
                        let e = r.as_ref().expect_err("the poisoned photo fails");
                        assert!(e.to_string().contains("2008_001322.jpg"), "{e}");
                        let why = if panics {
                            "internal error"
                        } else {
                            "poisoned chip"
                        };
                        assert!(e.to_string().contains(why), "{e}");
                    } else {
                        let (f, _) = r.as_ref().expect("the other photos succeed");
                        assert_eq!(&f.faces, &want.faces, "photo {i}");
                    }
                }
            }
        }
    }
}
