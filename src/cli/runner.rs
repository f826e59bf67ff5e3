//! Runs a per-file job over many inputs in parallel (rayon) and hands the results back in input
//! order, as they complete, with a progress bar on a terminal. Every job runs inside the
//! library's per-file fault boundary ([`facekit::io::guard`]).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;

use super::output::{verbose, verbosity, Verbosity};

/// One input of a run: a file to process, or the reason a named path cannot be used (kept in
/// its place so records stay in input order).
pub type Input = Result<PathBuf, facekit::Error>;

/// The inputs named by `paths` (directories walked), errors in their places.
pub fn inputs(paths: &[PathBuf]) -> Vec<Input> {
    facekit::io::collect_inputs(paths)
}

/// Exit status for a run over many inputs: 0 when all were processed, 2 when any failed.
pub fn exit_status(failures: usize) -> std::process::ExitCode {
    if failures > 0 {
        std::process::ExitCode::from(super::EXIT_FAILURE)
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// Builds the thread pool the run uses (`None`: one thread per core); `-v` says how many.
pub fn thread_pool(threads: Option<usize>) -> anyhow::Result<rayon::ThreadPool> {
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads {
        builder = builder.num_threads(n);
    }
    let pool = builder.build()?;
    verbose!(
        "threads: {} ({})",
        pool.current_num_threads(),
        if threads.is_some() {
            "--threads"
        } else {
            "one per core"
        }
    );
    Ok(pool)
}

/// A progress bar on stderr when it is a terminal (and not `-q`); hidden otherwise.
pub fn progress(len: usize, what: &str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() && verbosity() > Verbosity::Quiet {
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

/// Runs `job` on every file of `inputs` in `pool`, each inside the per-file fault boundary, and
/// calls `sink` with each result in input order as soon as it and all earlier ones are done;
/// inputs that were errors already reach `sink` as those errors, in their places. The progress
/// bar is suspended while `sink` prints.
pub fn run_ordered<T, J, S>(
    pool: &rayon::ThreadPool,
    inputs: &[Input],
    pb: &ProgressBar,
    job: J,
    sink: S,
) where
    T: Send,
    J: Fn(&Path) -> facekit::Result<T> + Sync,
    S: FnMut(usize, facekit::Result<T>),
{
    run_ordered_with(
        pool,
        inputs,
        pb,
        |files, done| {
            // par_bridge hands out work roughly in input order, so results stream.
            (0..files.len()).par_bridge().for_each(|k| {
                done(k, facekit::io::guard(files[k], || job(files[k])));
            })
        },
        sink,
    )
}

/// [`run_ordered`] for a driver that runs the files itself (such as
/// [`facekit::library::Library::faces_of_files`], which embeds the chips of several photos
/// together): `drive(files, done)` runs in `pool` and calls `done(k, result)` once for each
/// `files[k]`, from any thread, in any order.
pub fn run_ordered_with<T, R, S>(
    pool: &rayon::ThreadPool,
    inputs: &[Input],
    pb: &ProgressBar,
    drive: R,
    mut sink: S,
) where
    T: Send,
    R: FnOnce(&[&Path], &(dyn Fn(usize, facekit::Result<T>) + Sync)) + Send,
    S: FnMut(usize, facekit::Result<T>),
{
    let (tx, rx) = mpsc::channel::<(usize, facekit::Result<T>)>();
    let mut pending = BTreeMap::new();
    let mut next = 0;
    // Errors found while collecting the inputs take their places without running anything.
    let mut files = Vec::with_capacity(inputs.len());
    let mut index = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        match input {
            Ok(p) => {
                files.push(p.as_path());
                index.push(i);
            }
            Err(e) => {
                pending.insert(i, Err(e.clone()));
            }
        }
    }
    std::thread::scope(|scope| {
        let (files, index) = (&files, &index);
        scope.spawn(move || {
            let tx = std::sync::Mutex::new(tx);
            let done = |k: usize, r: facekit::Result<T>| {
                if let Ok(tx) = tx.lock() {
                    let _ = tx.send((index[k], r));
                }
            };
            pool.install(|| drive(files, &done));
        });
        let mut drain = |pending: &mut BTreeMap<usize, facekit::Result<T>>| {
            while let Some(value) = pending.remove(&next) {
                pb.suspend(|| sink(next, value));
                pb.inc(1);
                next += 1;
            }
        };
        drain(&mut pending);
        for (i, value) in rx {
            pending.insert(i, value);
            drain(&mut pending);
        }
    });
    pb.finish_and_clear();
}

/// A library workflow's progress as bars on stderr (see [`progress`]), one per phase; a file
/// that could not be used is printed above the bar as `facekit: <error>`.
#[derive(Default)]
pub struct Bars(std::sync::Mutex<Option<ProgressBar>>);

impl Bars {
    fn with(&self, f: impl FnOnce(&mut Option<ProgressBar>)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl facekit::progress::Progress for Bars {
    fn start(&self, what: &str, len: usize) {
        self.with(|pb| *pb = Some(progress(len, what)));
    }

    fn step(&self) {
        self.with(|pb| pb.iter().for_each(|pb| pb.inc(1)));
    }

    fn finish(&self) {
        self.with(|pb| pb.take().iter().for_each(ProgressBar::finish_and_clear));
    }

    fn failed(&self, error: &facekit::Error) {
        let print = || eprintln!("facekit: {error}");
        self.with(|pb| match pb {
            Some(pb) => pb.suspend(print),
            None => print(),
        });
    }
}
