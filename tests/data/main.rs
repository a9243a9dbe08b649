//! The dataset integration tests in one binary: reading, tokenizing, batching and the synthetic
//! set, one module per former `tests/data_*.rs` file, so fewer binaries link. Run one with
//! `cargo test --test data MODULE::`.

mod batches;
mod formats;
mod llama3;
mod synth;
