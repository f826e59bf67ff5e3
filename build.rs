//! Passes the target triple to the code (`facekit --version` and `-v` print it).

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_string());
    println!("cargo:rustc-env=FACEKIT_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
