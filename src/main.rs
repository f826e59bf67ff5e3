//! The `facekit` command line: a thin layer over the library (see `cli`).

mod cli;

#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: cli::alloc::Allocator = cli::alloc::Allocator;

fn main() -> std::process::ExitCode {
    cli::main()
}
