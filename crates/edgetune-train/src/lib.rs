//! edgetune-train: the layer above [`edgetune_core`]. `export` reads and writes adapters
//! (edgetune's own directory, Hugging Face PEFT, llama.cpp's LoRA GGUF), merges them into a
//! base and requantizes GGUF files; `train` is the trainer, its CPU and device steps, the
//! memory budget of a run, checkpoints, replay and evaluation during training; `compare`
//! trains every method on the same data and measures them side by side. Nothing in
//! `edgetune-core` can use this crate (Cargo enforces it); inside it, `export` < `train` <
//! `compare`; `src/module_graph.rs` checks the order of the modules in both crates.

pub mod compare;
pub mod export;
#[cfg(test)]
mod module_graph;
pub mod train;

pub use edgetune_core::{Error, Result};
