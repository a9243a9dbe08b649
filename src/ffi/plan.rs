//! `et_plan_json`: the memory plan of a training run as a JSON report — the budget planner's
//! breakdown ([`crate::train::budget::plan_training_for`], the same numbers as `edgetune plan
//! --json`: resident weights, the step's arena, adapters and the method's extra bytes,
//! optimizer state, overheads) with the budget verdict when the configuration gives one. Only
//! the model's header is read; the weights are not touched.

use std::ffi::c_char;
use std::path::Path;

use serde_json::{Value, json};

use super::{EtStatus, guard, str_arg, write_text};
use crate::gguf::GgufFile;
use crate::train::budget::{ModelWeights, plan_training_for};
use crate::train::{StatePlace, TrainConfig};
use crate::{Error, Result};

/// Parses a `TrainConfig` from JSON (missing fields take the CLI's defaults). Unknown
/// top-level keys are an error naming them, so a misspelt setting is not silently ignored.
pub fn train_config_from_json(text: &str) -> Result<TrainConfig> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Error::Invalid(format!("training configuration JSON: {e}")))?;
    let Value::Object(map) = &value else {
        return Err(Error::Invalid(
            "training configuration JSON: expected an object".into(),
        ));
    };
    let known = serde_json::to_value(TrainConfig::default())
        .map_err(|e| Error::Invalid(format!("training configuration: {e}")))?;
    let unknown: Vec<&str> = map
        .keys()
        .filter(|k| known.get(k.as_str()).is_none())
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(Error::Invalid(format!(
            "training configuration JSON: unknown key(s) {unknown:?}"
        )));
    }
    serde_json::from_value(value)
        .map_err(|e| Error::Invalid(format!("training configuration JSON: {e}")))
}

/// The plan report of `cfg` for the model at `model_path` (or `cfg.model` when `None`): the
/// budget planner's [`crate::train::budget::Breakdown`] (the numbers `edgetune plan --json`
/// prints, every method's extra bytes and the process overheads included) under `breakdown`,
/// with its headline numbers repeated at the top level for C callers.
pub fn plan_report(model_path: Option<&Path>, cfg: &TrainConfig) -> Result<Value> {
    // A plan needs no step count: check the rest of the configuration as if one were given.
    let mut checked = cfg.clone();
    checked.steps.get_or_insert(1);
    checked.validate()?;
    let path = model_path.unwrap_or(&cfg.model);
    if path.as_os_str().is_empty() {
        return Err(Error::Invalid(
            "plan: no model path (give model_path or the configuration's \"model\")".into(),
        ));
    }
    let file = GgufFile::open(path)?;
    let model = ModelWeights::from_gguf(&file)?;
    let mc = &model.config;
    let planned = plan_training_for(&model, cfg)?;
    let b = &planned.breakdown;
    // Budget minus total, clamped to i64 (JSON integers beyond it lose precision).
    let headroom = cfg.budget_bytes.map(|x| {
        (x as i128 - b.total_bytes as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64
    });
    // All of the optimizer state, wherever it lives (with `disk`, RAM holds one page).
    let optimizer_state_bytes = match cfg.optimizer_state {
        StatePlace::Ram => b.optimizer.ram_bytes,
        StatePlace::Disk => b.optimizer.disk_bytes,
    };
    let targets: Vec<&str> = cfg.lora.targets.iter().map(|t| t.gguf_stem()).collect();
    Ok(json!({
        "model": path.display().to_string(),
        "method": cfg.method.name(),
        "llama": {
            "n_layer": mc.n_layer, "dim": mc.dim, "n_head": mc.n_head, "n_head_kv": mc.n_head_kv,
            "head_dim": mc.head_dim, "ffn": mc.ffn, "n_vocab": mc.n_vocab,
            "context_length": mc.context_length,
        },
        "shape": {
            "seq_len": cfg.seq_len, "micro_batch": cfg.batch, "accum": cfg.accum,
            "tokens_per_micro_batch": cfg.tokens_per_micro_batch(),
            "ce_chunk": planned.shape.ce_chunk, "checkpointing": cfg.checkpointing,
            "lora_rank": cfg.lora.rank, "targets": targets,
        },
        "weight_bytes": b.weights.file_bytes,
        "weight_resident_bytes": b.weights.resident_bytes,
        "adapter_params": b.adapters.n_params,
        "adapter_bytes": 4 * b.adapters.n_params,
        "adapter_ram_bytes": b.adapters.master_bytes,
        "adapter_weights_place": cfg.adapter_weights,
        "adapter_extra_bytes": b.adapters.extra_bytes,
        "optimizer_state_bytes": optimizer_state_bytes,
        "optimizer_state_ram_bytes": b.optimizer.ram_bytes,
        "optimizer_state_place": cfg.optimizer_state,
        "arena_bytes": b.arena.arena_bytes,
        "arena_peak_live_bytes": b.arena.peak_live_bytes,
        "arena_sum_bytes": b.arena.sum_bytes,
        "arena_buffers": b.arena.buffers,
        "arena_categories": b.arena.categories,
        "overhead_bytes": b.overhead_bytes,
        "total_bytes": b.total_bytes,
        "budget_bytes": cfg.budget_bytes,
        "fits": cfg.budget_bytes.map(|_| b.fits),
        "headroom_bytes": headroom,
        "breakdown": b,
    }))
}

/// Writes the memory plan of a training run as JSON (NUL-terminated) into `out_buf`.
/// `train_config_json` holds the fields of the training configuration (`edgetune train`'s
/// settings: `method`, `seq_len`, `batch`, `accum`, `lora` {`rank`, `targets`, ...},
/// `ce_chunk`, `checkpointing`, `optimizer`, `optimizer_state_bits`, `budget_bytes`, `weights`
/// (`auto|map|stream`), `fused_update` (`auto|on|off`), `stream_head` (`auto|on|off`), ...;
/// missing fields take the CLI's defaults, unknown fields are an error); NULL means all
/// defaults. `model_path` NULL means the configuration's `model`. The report holds
/// `weight_bytes` (the file's tensors) and `weight_resident_bytes`, `adapter_bytes` (all f32
/// weights; `adapter_ram_bytes` what is resident: one layer's with `adapter_weights` `disk`),
/// `adapter_extra_bytes` (the method's), `optimizer_state_bytes`, `arena_bytes` (and the
/// arena's categories), `overhead_bytes`, `total_bytes` (resident weights + arena + adapters in
/// RAM + extra + optimizer state in RAM + overheads: what `edgetune plan` compares to the budget),
/// the whole `breakdown`, and when `budget_bytes` is set, `fits` and `headroom_bytes`.
/// `out_len` / buffer rules as for `et_generate`.
///
/// # Safety
/// `model_path` and `train_config_json` are NULL or NUL-terminated strings; `out_buf` is NULL
/// or valid for `out_cap` bytes; `out_len` is NULL or valid for one `size_t` write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn et_plan_json(
    model_path: *const c_char,
    train_config_json: *const c_char,
    out_buf: *mut c_char,
    out_cap: usize,
    out_len: *mut usize,
) -> EtStatus {
    guard(|| {
        // SAFETY (both): the caller promises NULL or NUL-terminated strings valid for the call.
        let path = match model_path.is_null() {
            true => None,
            false => Some(Path::new(unsafe { str_arg(model_path, "model_path") }?)),
        };
        let cfg = match train_config_json.is_null() {
            true => TrainConfig::default(),
            false => {
                train_config_from_json(unsafe { str_arg(train_config_json, "train_config_json") }?)?
            }
        };
        let text = plan_report(path, &cfg)?.to_string();
        // SAFETY: forwarded caller contract for out_buf / out_cap / out_len.
        unsafe { write_text(&text, out_buf, out_cap, out_len) }
    })
}
