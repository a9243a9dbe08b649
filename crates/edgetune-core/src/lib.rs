//! edgetune-core: everything below training. `gguf` reads and writes the file format over a
//! memory map, `quant` holds the ggml block formats and the quantized products, `tokenizer`
//! builds the model's tokenizer from GGUF metadata, `data` loads datasets and holds the replay
//! mix and the synthetic IoT set, `optim` the optimizers, `backend` the ops (CPU, and CUDA with
//! the `cuda` feature), `adapters` the LoRA family and the set of a model's adapters, `model`
//! the Llama forward pass, `infer` generation and perplexity, `eval` suites, `memory` the arena,
//! plan packing, board profiles and RSS, `testmodel` seeded test models, `inspect` a GGUF's
//! tensors and statistics. The order of these layers is checked by `edgetune-train`'s
//! `src/module_graph.rs`; `docs/ARCHITECTURE.md` at the repository root maps every file.

pub mod adapters;
pub mod atomic_file;
pub mod backend;
pub mod data;
pub mod error;
pub mod eval;
pub mod gguf;
pub mod infer;
pub mod inspect;
pub mod memory;
pub mod model;
pub mod npy;
pub mod optim;
pub mod quant;
pub mod testmodel;
pub mod tokenizer;

pub use error::{Error, Result};

// The quant blocks and the GGUF reader decode little-endian data in place.
#[cfg(not(target_endian = "little"))]
compile_error!("edgetune supports little-endian targets only (GGUF is little-endian)");
