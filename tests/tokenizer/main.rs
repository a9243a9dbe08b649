//! The tokenizer integration tests in one binary (one module per former test file: fewer
//! binaries to link). Run one with `cargo test --test tokenizer MODULE::`.

mod gguf;
mod llama3;
mod pre;
