//! Runs a per-file job over many inputs in parallel (rayon) and hands the results back in input
//! order, as they complete, with a progress bar on a terminal.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::mpsc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;

/// The image files named by `paths` (directories walked). Paths that cannot be read are passed
/// to `on_error` and counted; the run goes on with the rest.
pub fn collect_inputs(
    paths: &[PathBuf],
    mut on_error: impl FnMut(&facekit::Error),
) -> (Vec<PathBuf>, usize) {
    let mut inputs = Vec::new();
    let mut failures = 0;
    for item in facekit::io::collect_inputs(paths) {
        match item {
            Ok(p) => inputs.push(p),
            Err(e) => {
                failures += 1;
                on_error(&e);
            }
        }
    }
    (inputs, failures)
}

/// Exit status for a run over many inputs: 0 when all were processed, 2 when any failed.
pub fn exit_status(failures: usize) -> std::process::ExitCode {
    if failures > 0 {
        std::process::ExitCode::from(super::EXIT_FAILURE)
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// Builds the thread pool the run uses.
pub fn thread_pool(threads: Option<usize>) -> anyhow::Result<rayon::ThreadPool> {
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        builder = builder.num_threads(n);
    }
    Ok(builder.build()?)
}

/// A progress bar on stderr when it is a terminal; hidden otherwise.
pub fn progress(len: usize, what: &str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let pb = ProgressBar::with_draw_target(Some(len as u64), target);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {pos}/{len} {msg} [{elapsed_precise}, eta {eta}] {wide_bar}",
    ) {
        pb.set_style(style);
    }
    pb.set_message(what.to_string());
    pb
}

/// Runs `job` on every path in `pool`, calling `sink` with each result in input order as soon as
/// it and all earlier ones are done. The progress bar is suspended while `sink` prints.
pub fn run_ordered<T, J, S>(
    pool: &rayon::ThreadPool,
    paths: &[PathBuf],
    pb: &ProgressBar,
    job: J,
    mut sink: S,
) where
    T: Send,
    J: Fn(&PathBuf) -> T + Sync,
    S: FnMut(usize, T),
{
    let (tx, rx) = mpsc::channel::<(usize, T)>();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            pool.install(|| {
                // par_bridge hands out work roughly in input order, so results stream.
                paths
                    .iter()
                    .enumerate()
                    .par_bridge()
                    .for_each_with(tx, |tx, (i, p)| {
                        let _ = tx.send((i, job(p)));
                    })
            })
        });
        let mut pending = BTreeMap::new();
        let mut next = 0;
        for (i, value) in rx {
            pending.insert(i, value);
            while let Some(value) = pending.remove(&next) {
                pb.suspend(|| sink(next, value));
                pb.inc(1);
                next += 1;
            }
        }
    });
    pb.finish_and_clear();
}
