//! The testmodel integration tests in one binary (one module per former test file: fewer
//! binaries to link). Run one with `cargo test --test testmodel MODULE::`.

#[path = "../cli_support/mod.rs"]
mod cli_support;
#[path = "../reference/mod.rs"]
mod reference;

mod against_reference;
mod cli;
mod presets;
