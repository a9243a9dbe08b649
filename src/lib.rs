//! edgetune: fine-tune quantized Llama 3.x GGUF models with LoRA-family adapters on edge devices.
//!
//! This crate is the library as its users see it, the C ABI (`ffi`, with the `ffi` feature)
//! and the `edgetune` CLI. The code lives in two crates of the workspace, one layer each:
//! `edgetune-core` (`crates/edgetune-core/`: `gguf`, `quant`, `tokenizer`, `data`, `optim`,
//! `backend`, `adapters`, `model`, `infer`, `eval`, `memory`, `testmodel`, `inspect`) and, above
//! it, `edgetune-train` (`crates/edgetune-train/`: `export`, `train`, `compare`). Both are
//! re-exported here under their module names (`edgetune::gguf`, `edgetune::train`, …).
//! `docs/ARCHITECTURE.md` maps every file and the order of the layers.

pub use edgetune_core::*;
pub use edgetune_train::{compare, export, train};

#[cfg(feature = "ffi")]
pub mod ffi;
