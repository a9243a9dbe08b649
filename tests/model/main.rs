//! The model integration tests in one binary (one module per former test file: fewer
//! binaries to link). Run one with `cargo test --test model MODULE::`.

#[path = "../model_support/mod.rs"]
mod model_support;

mod config;
mod decode_batch;
mod forward;
mod stream;
