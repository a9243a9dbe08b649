//! The gguf integration tests in one binary (one module per former test file: fewer
//! binaries to link). Run one with `cargo test --test gguf MODULE::`.

#[path = "../common/mod.rs"]
mod common;
#[path = "../gguf_common/mod.rs"]
mod gguf_common;
#[path = "../python_support/mod.rs"]
mod python_support;

mod gguf_py;
mod hostile;
mod roundtrip;
