//! The tokenizer integration tests in one binary, chat templates included (one module per
//! former test file: fewer binaries to link). Run one with `cargo test --test tokenizer
//! MODULE::`.

#[path = "../cli_support/mod.rs"]
mod cli_support;
#[path = "../python_support/mod.rs"]
mod python_support;

mod chat_template_jinja2;
mod chat_template_use;
mod gguf;
mod llama3;
mod pre;

use std::path::{Path, PathBuf};

/// A chat template from `tests/fixtures/templates/`.
fn template_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/templates")
        .join(name)
}
