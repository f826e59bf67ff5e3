//! Progress of the long workflows ([`crate::album::run`], [`crate::train::run`]) reported to
//! whoever runs them: the library never prints and draws no bars; the CLI implements
//! [`Progress`] with progress bars, an example or a test passes `&()` to hear nothing.

use crate::Error;

/// What a long workflow reports as it goes. Every method does nothing by default; `()` is the
/// silent observer. Methods may be called from worker threads.
pub trait Progress: Sync {
    /// A phase of `len` steps starts; `what` names the steps ("photos", "faces").
    fn start(&self, _what: &str, _len: usize) {}
    /// One step of the current phase is done.
    fn step(&self) {}
    /// The current phase is over.
    fn finish(&self) {}
    /// One input could not be used (the run goes on without it); reported in input order.
    fn failed(&self, _error: &Error) {}
}

impl Progress for () {}
