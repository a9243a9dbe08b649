//! The export integration tests in one binary (one module per former test file: fewer
//! binaries to link). Run one with `cargo test --test export MODULE::`.

#[path = "../cli_support/mod.rs"]
mod cli_support;
#[path = "../export_support/mod.rs"]
mod export_support;
#[path = "../model_support/mod.rs"]
mod model_support;
#[path = "../python_support/mod.rs"]
mod python_support;

mod cli;
mod gguf;
mod merge;
mod native;
mod peft;
mod python;
