//! The CLI's integration tests in one binary: `edgetune` commands end to end through the binary,
//! one module per former test file (`tests/cli_*.rs`, and `tests/cuda_backend_cli.rs` as
//! `cuda_backend`), so fewer binaries link. Run one with `cargo test --test cli MODULE::`.

#[path = "../cli_support/mod.rs"]
mod cli_support;
#[path = "../train_support/mod.rs"]
mod train_support;

mod compare;
mod cuda_backend;
mod infer;
mod inspect;
mod plan;
mod train;

use std::path::Path;

/// Writes the `tiny` test model with weights of type `ty` (and `extra` flags of `testmodel`,
/// e.g. a seed) to `dir/tiny.gguf`; returns its path.
fn tiny(dir: &Path, ty: &str, extra: &[&str]) -> String {
    let p = dir.join("tiny.gguf");
    cli_support::write_tiny(&p, ty, extra);
    p.to_str().unwrap().to_owned()
}
