//! edgetune: fine-tune quantized Llama 3.x GGUF models with LoRA-family adapters on edge devices.
//!
//! `gguf` reads and writes the file format over a memory map, `quant` holds the ggml block
//! formats and the quantized products, `tokenizer` builds the model's tokenizer from GGUF
//! metadata, `backend` holds the ops (CPU, and CUDA with `--features cuda`), `model` the Llama
//! forward pass, `infer` generation and perplexity, `data` datasets, the replay mix and the
//! synthetic IoT set, `adapters` the LoRA family and the set of a model's adapters, `optim`
//! the optimizers, `memory` the arena, plan packing, board profiles and RSS, `train` the
//! trainer, its steps and the memory budget, `eval` suites, `compare` the method comparison,
//! `export` the adapter formats and the quantizer. `docs/ARCHITECTURE.md` maps every file and
//! the order of the layers (`src/module_graph.rs` checks it).

pub mod adapters;
pub mod atomic_file;
pub mod backend;
pub mod compare;
pub mod data;
pub mod error;
pub mod eval;
pub mod export;
#[cfg(feature = "ffi")]
pub mod ffi;
pub mod gguf;
pub mod infer;
pub mod inspect;
pub mod memory;
pub mod model;
#[cfg(test)]
mod module_graph;
pub mod npy;
pub mod optim;
pub mod quant;
pub mod testmodel;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};

// The quant blocks and the GGUF reader decode little-endian data in place.
#[cfg(not(target_endian = "little"))]
compile_error!("edgetune supports little-endian targets only (GGUF is little-endian)");
