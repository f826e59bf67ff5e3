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
    embeddings: Vec<Option<Vec<f32>>>,
    left: usize,
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
                left: chips.len(),
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
            if w.embeddings[k].replace(embedding).is_none() {
                w.left -= 1;
            }
            if w.left > 0 {
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
