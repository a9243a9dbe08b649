//! Adapters out and in (formats.md §2–4): our own format ([`native`], for checkpoints),
//! llama.cpp's GGUF LoRA, Hugging Face PEFT, and merging an adapter into a new base GGUF.
//!
//! All three formats import into an [`crate::train::AdapterSet`] validated against the base
//! model's [`crate::model::LlamaConfig`] ([`collect`]), and export from one ([`lowrank`]).

pub mod atomic;
pub mod codec;
pub mod collect;
pub mod lowrank;
pub mod native;

pub use native::{load_adapter, save_adapter};
