//! Adapters out and in (docs/FORMATS.md#adapter-files): our own format ([`native`], for
//! checkpoints), llama.cpp's GGUF LoRA ([`gguf_lora`]), Hugging Face PEFT ([`peft`]), and merging
//! an adapter into a new base GGUF ([`merge`]). Also the other model file this crate writes:
//! a full-precision GGUF quantized into a new one ([`requantize`], `edgetune quantize`).
//!
//! All three formats import into an [`AdapterSet`] validated against the base model's
//! [`LlamaConfig`] ([`collect`]) and export from one ([`lowrank`]); [`load_any`] tells them
//! apart by what is on disk.

/// The atomic file writes every writer in the crate uses (kept here under its old path).
pub use edgetune_core::atomic_file as atomic;
pub mod codec;
pub mod collect;
pub mod gguf_lora;
pub mod lowrank;
pub mod merge;
pub mod native;
pub mod peft;
pub mod peft_config;
pub mod qk_permute;
pub mod readme;
pub mod requantize;
pub mod sha256;

use std::path::{Path, PathBuf};

use edgetune_core::adapters::AdapterSet;
use edgetune_core::model::LlamaConfig;
use edgetune_core::{Error, Result};

pub use gguf_lora::{export_gguf, load_gguf_adapter};
pub use merge::{MergeType, merge_adapter};
pub use native::{load_adapter, save_adapter};
pub use peft::{PeftOptions, export_peft, load_peft};

/// The adapter formats edgetune reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterFormat {
    /// Our directory (`adapter.json` + `adapter.safetensors`).
    Native,
    /// A Hugging Face PEFT directory (`adapter_config.json` + `adapter_model.safetensors`).
    Peft,
    /// A llama.cpp LoRA GGUF file.
    Gguf,
}

/// What `path` holds, and the path to load it from (a file inside an adapter directory names
/// the directory).
pub fn detect_format(path: &Path) -> Result<(AdapterFormat, PathBuf)> {
    if path.is_dir() {
        if path.join(native::ADAPTER_JSON).is_file() {
            return Ok((AdapterFormat::Native, path.to_path_buf()));
        }
        if path.join(peft_config::CONFIG_FILE).is_file() {
            return Ok((AdapterFormat::Peft, path.to_path_buf()));
        }
        if let Some(method) = method_state_name(path) {
            return Err(Error::Invalid(format!(
                "{}: a {method} checkpoint: {method} is merge-only (not a plain B·A), so it \
                 cannot be loaded as a LoRA or exported as GGUF/PEFT; fold it into a new base \
                 with `edgetune merge --model BASE.gguf --adapter {} --out MERGED.gguf`",
                path.display(),
                path.display()
            )));
        }
        return Err(Error::Invalid(format!(
            "{}: an adapter directory holds {} (edgetune) or {} (PEFT); neither is there",
            path.display(),
            native::ADAPTER_JSON,
            peft_config::CONFIG_FILE
        )));
    }
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "adapter not found (give a checkpoint directory, a PEFT directory or a GGUF \
                 LoRA)",
            ),
        ));
    }
    if gguf_lora::is_gguf(path) {
        return Ok((AdapterFormat::Gguf, path.to_path_buf()));
    }
    let parent = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    match path.file_name().and_then(|n| n.to_str()) {
        Some(native::ADAPTER_JSON | native::ADAPTER_TENSORS) => Ok((AdapterFormat::Native, parent)),
        Some(peft_config::CONFIG_FILE | peft::TENSORS_FILE) => Ok((AdapterFormat::Peft, parent)),
        _ => Err(Error::Invalid(format!(
            "{}: not a GGUF adapter and not an adapter directory (edgetune or PEFT)",
            path.display()
        ))),
    }
}

/// The method named by `dir/method.json` when the directory holds a method-state checkpoint
/// (`"merge-only"` when the file is there but unreadable), read as plain JSON so that export
/// needs nothing of the trainer's types.
fn method_state_name(dir: &Path) -> Option<String> {
    let path = dir.join(native::METHOD_JSON);
    if !path.is_file() {
        return None;
    }
    let name = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|meta| meta.get("method")?.as_str().map(str::to_string));
    Some(name.unwrap_or_else(|| "merge-only".to_string()))
}

/// Loads an adapter in any of the three formats for `model` (see [`detect_format`]).
pub fn load_any(path: &Path, model: &LlamaConfig) -> Result<AdapterSet> {
    let (format, path) = detect_format(path)?;
    log::debug!("{}: loading a {format:?} adapter", path.display());
    match format {
        AdapterFormat::Native => native::load_adapter(&path, model),
        AdapterFormat::Peft => peft::load_peft(&path, model),
        AdapterFormat::Gguf => gguf_lora::load_gguf_adapter(&path, model),
    }
}

/// [`load_any`], with every adapter's output multiplied by `scale` (llama.cpp's
/// `--lora-scaled`; 1 leaves the tensors untouched).
pub fn load_scaled(path: &Path, model: &LlamaConfig, scale: f32) -> Result<AdapterSet> {
    let mut set = load_any(path, model)?;
    if scale != 1.0 {
        lowrank::scale_outputs(&mut set, scale)?;
    }
    Ok(set)
}
