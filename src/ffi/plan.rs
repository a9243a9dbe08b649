//! `et_plan_json`: the memory plan of a LoRA training run as a JSON report — mapped weights,
//! adapter parameters, optimizer state, and the one arena of a training step (from
//! [`crate::memory::plan::llama_training_plan`]) — with the budget verdict when the
//! configuration gives one. Only the model's metadata is read; the weights are not touched.

use std::ffi::c_char;
use std::path::Path;

use serde_json::{Value, json};

use super::{EtStatus, guard, str_arg, write_text};
use crate::gguf::GgufFile;
use crate::memory::plan::{AdapterShape, TrainShape, llama_training_plan};
use crate::model::LlamaConfig;
use crate::optim::state8bit::{MIN_8BIT_NUMEL, state_bytes_8bit};
use crate::train::adapter_set::{target_index, target_shape};
use crate::train::{OptimizerKind, StatePlace, TrainConfig};
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

/// Bytes of optimizer state for one trainable tensor of `n` values.
fn optimizer_state_bytes(cfg: &TrainConfig, n: usize) -> u128 {
    let n128 = n as u128;
    match cfg.optimizer {
        OptimizerKind::AdamW if cfg.optimizer_state_bits == 8 && n >= MIN_8BIT_NUMEL => {
            state_bytes_8bit(n) as u128
        }
        // m and v in f32.
        OptimizerKind::AdamW => 8 * n128,
        OptimizerKind::Sgd if cfg.momentum > 0.0 => 4 * n128,
        OptimizerKind::Sgd => 0,
    }
}

/// `v` as u64, or an error naming `what` (sizes are summed in u128 so nothing wraps).
fn to_u64(what: &str, v: u128) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::Invalid(format!("plan: {what} of {v} bytes overflows u64")))
}

/// The plan report of `cfg` for the model at `model_path` (or `cfg.model` when `None`).
pub fn plan_report(model_path: Option<&Path>, cfg: &TrainConfig) -> Result<Value> {
    cfg.lora.validate()?;
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
    let mc = LlamaConfig::from_gguf(&file)?;
    let weight_bytes: u64 = file.tensors().iter().map(|t| t.n_bytes).sum();
    // The plan lists ~60 buffers per layer and the weights are not loaded here: check the
    // layer count against the file before trusting it (every layer has 9 tensors).
    if file.tensors().len() < mc.n_layer {
        return Err(Error::Metadata {
            path: path.to_path_buf(),
            key: "llama.block_count".into(),
            what: format!(
                "{} layers, but the file holds only {} tensors",
                mc.n_layer,
                file.tensors().len()
            ),
        });
    }

    // One AdapterShape per adapted projection, in TARGETS (= Target::ALL) order.
    let rank = cfg.lora.rank;
    let mut adapters = [None; 7];
    let (mut params_per_layer, mut optim_per_layer) = (0u128, 0u128);
    for &target in &cfg.lora.targets {
        let (fan_in, fan_out) = target_shape(&mc, target);
        // AdapterShape::lora and state_bytes_8bit multiply in usize: refuse ranks whose counts
        // would not fit.
        if fan_in
            .checked_add(fan_out)
            .and_then(|f| f.checked_mul(rank))
            .is_none_or(|n| n > isize::MAX as usize / 8)
        {
            return Err(Error::Invalid(format!(
                "plan: LoRA rank {rank} on a {fan_in}×{fan_out} linear is too large to count"
            )));
        }
        adapters[target_index(target)] = Some(AdapterShape::lora(
            rank,
            fan_in,
            fan_out,
            cfg.lora.dropout > 0.0,
        ));
        // LoRA's two tensors: A [r, in] and B [out, r].
        for n in [rank * fan_in, fan_out * rank] {
            params_per_layer += n as u128;
            optim_per_layer += optimizer_state_bytes(cfg, n);
        }
    }
    let shape = TrainShape {
        seq_len: cfg.seq_len,
        micro_batch: cfg.batch,
        ce_chunk: cfg.ce_chunk,
        checkpointing: cfg.checkpointing,
        accumulate: cfg.accum > 1,
        // The CPU backend updates the optimizer pages in place: no staging window.
        optimizer_staging: false,
        adapters,
    };
    let plan = llama_training_plan(&mc, &shape)?.pack()?;
    let layers = mc.n_layer as u128;
    let adapter_params = to_u64("adapter parameter count", params_per_layer * layers)?;
    let adapter_bytes = to_u64("adapter weights", 4 * params_per_layer * layers)?;
    let optimizer_bytes = to_u64("optimizer state", optim_per_layer * layers)?;
    let optimizer_ram = match cfg.optimizer_state {
        StatePlace::Ram => optimizer_bytes,
        StatePlace::Disk => 0,
    };
    let total = to_u64(
        "the total",
        weight_bytes as u128
            + adapter_bytes as u128
            + optimizer_ram as u128
            + plan.arena_bytes() as u128,
    )?;
    // Budget minus total, clamped to i64 (JSON integers beyond it lose precision).
    let headroom = cfg
        .budget_bytes
        .map(|b| (b as i128 - total as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64);
    let categories: Vec<Value> = plan
        .category_totals()
        .into_iter()
        .map(|(c, n, bytes)| json!({"category": format!("{c:?}"), "buffers": n, "bytes": bytes}))
        .collect();
    let targets: Vec<&str> = cfg.lora.targets.iter().map(|t| t.gguf_stem()).collect();
    Ok(json!({
        "model": path.display().to_string(),
        "llama": {
            "n_layer": mc.n_layer, "dim": mc.dim, "n_head": mc.n_head, "n_head_kv": mc.n_head_kv,
            "head_dim": mc.head_dim, "ffn": mc.ffn, "n_vocab": mc.n_vocab,
            "context_length": mc.context_length,
        },
        "shape": {
            "seq_len": cfg.seq_len, "micro_batch": cfg.batch, "accum": cfg.accum,
            "tokens_per_micro_batch": cfg.tokens_per_micro_batch(), "ce_chunk": cfg.ce_chunk,
            "checkpointing": cfg.checkpointing, "lora_rank": rank, "targets": targets,
        },
        "weight_bytes": weight_bytes,
        "adapter_params": adapter_params,
        "adapter_bytes": adapter_bytes,
        "optimizer_state_bytes": optimizer_bytes,
        "optimizer_state_place": cfg.optimizer_state,
        "arena_bytes": plan.arena_bytes(),
        "arena_peak_live_bytes": plan.peak_live_bytes(),
        "arena_sum_bytes": plan.sum_bytes(),
        "arena_buffers": plan.buffers().len(),
        "arena_categories": categories,
        "total_bytes": total,
        "budget_bytes": cfg.budget_bytes,
        "fits": cfg.budget_bytes.map(|b| total <= b),
        "headroom_bytes": headroom,
    }))
}

/// Writes the memory plan of a LoRA training run as JSON (NUL-terminated) into `out_buf`.
/// `train_config_json` holds the fields of the training configuration (`edgetune train`'s
/// settings: `seq_len`, `batch`, `accum`, `lora` {`rank`, `targets`, ...}, `ce_chunk`,
/// `checkpointing`, `optimizer`, `optimizer_state_bits`, `budget_bytes`, ...; missing fields
/// take the CLI's defaults, unknown fields are an error); NULL means all defaults.
/// `model_path` NULL means the configuration's `model`. The report holds `weight_bytes`,
/// `adapter_bytes`, `optimizer_state_bytes`, `arena_bytes` (and the arena's breakdown),
/// `total_bytes`, and when `budget_bytes` is set, `fits` and `headroom_bytes`.
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
