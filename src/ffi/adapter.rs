//! Adapters through the C ABI: `et_model_set_adapter` (attach any adapter edgetune reads to an
//! open model, so `et_generate` uses it) and `et_adapter_export` (convert an adapter for
//! llama.cpp or Hugging Face PEFT, like `edgetune export`).

use std::ffi::c_char;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value as Json;

use super::model::EtModel;
use super::{EtStatus, FfiError, guard, str_arg};
use crate::export::{self, AdapterFormat, PeftOptions, native};
use crate::gguf::GgufFile;
use crate::model::LlamaConfig;
use crate::quant::GgmlType;

/// Loads the adapter at `path` (a checkpoint or edgetune adapter directory, a Hugging Face
/// PEFT directory, or a llama.cpp LoRA GGUF) for `model` and attaches it, replacing any
/// adapter attached before; `path` NULL removes the adapter. Later `et_generate` calls on the
/// handle use it. An adapter made for another model (other shapes or layer count) is refused
/// with `ET_STATUS_INVALID_ARGUMENT` or `ET_STATUS_FORMAT` and a message naming the tensor and
/// the shapes; the model keeps its previous adapter then. Waits for generations running on
/// other threads to finish.
///
/// # Safety
/// `model` is NULL or a live handle from `et_model_open`; `path` is NULL or a NUL-terminated
/// string valid for the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn et_model_set_adapter(
    model: *const EtModel,
    path: *const c_char,
) -> EtStatus {
    guard(|| {
        // SAFETY: the caller promises NULL or a live handle; as_ref maps NULL to None.
        let model = unsafe { model.as_ref() }.ok_or_else(|| FfiError::null("model"))?;
        let set = if path.is_null() {
            None
        } else {
            // SAFETY: non-NULL; the caller promises a NUL-terminated string valid for the call.
            let path = unsafe { str_arg(path, "path") }?;
            // Loaded under the shared lock, so generations on other threads go on meanwhile.
            let config = model.with_llama(|l| l.config().clone());
            Some(Arc::new(export::load_any(Path::new(path), &config)?))
        };
        model.with_llama_mut(|l| l.set_adapters(set))?;
        Ok(())
    })
}

/// Converts the adapter at `adapter_path` (any format `et_model_set_adapter` reads) for the
/// base model at `model_path`, as `edgetune export --format FORMAT` with f32 tensors does:
/// `format` `"gguf"` writes a llama.cpp LoRA GGUF file at `out_path` (`llama-cli --lora`),
/// `"peft"` a Hugging Face PEFT directory (`adapter_config.json`, `adapter_model.safetensors`,
/// `README.md` with the base file's SHA-256). The adapter is checked against the model first.
///
/// # Safety
/// Each argument is NULL or a NUL-terminated string valid for the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn et_adapter_export(
    model_path: *const c_char,
    adapter_path: *const c_char,
    format: *const c_char,
    out_path: *const c_char,
) -> EtStatus {
    guard(|| {
        // SAFETY (all four): the caller promises NULL or NUL-terminated strings for the call.
        let model_path = Path::new(unsafe { str_arg(model_path, "model_path") }?);
        let adapter_path = Path::new(unsafe { str_arg(adapter_path, "adapter_path") }?);
        let format = unsafe { str_arg(format, "format") }?;
        let out_path = Path::new(unsafe { str_arg(out_path, "out_path") }?);
        if format != "gguf" && format != "peft" {
            return Err(FfiError::invalid(format!(
                "format `{format}`: expected \"gguf\" or \"peft\""
            )));
        }
        let file = GgufFile::open(model_path)?;
        let config = LlamaConfig::from_gguf(&file)?;
        let (source, source_path) = export::detect_format(adapter_path)?;
        let set = export::load_any(adapter_path, &config)?;
        if format == "gguf" {
            export::export_gguf(&set, &config, out_path, GgmlType::F32)?;
        } else {
            // Our own format carries the training configuration and metrics: they go into the
            // PEFT README, as with the CLI.
            let notes = match source {
                AdapterFormat::Native => Json::Object(native::extra_meta(&source_path)?),
                _ => Json::Null,
            };
            let opts = PeftOptions {
                dtype: GgmlType::F32,
                base_model_name_or_path: None,
                base_file: Some(model_path.to_path_buf()),
                notes,
            };
            export::export_peft(&set, &config, out_path, &opts)?;
        }
        Ok(())
    })
}
