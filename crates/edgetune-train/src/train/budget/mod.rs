//! The memory budget of a training run (docs/ARCHITECTURE.md#one-static-arena): what one process
//! holds in total — the weight pages a step reads, the arena, the adapters' f32 master weights, the
//! optimizer state kept in RAM, and measured runtime overheads — computed from the GGUF header and
//! the [`TrainConfig`] alone, before anything is allocated. [`Breakdown::check`] refuses a plan
//! over budget with the table and the nearest configurations that fit (suggest.rs).
//!
//! # What counts, and why
//!
//! - **Weights**: every tensor a step reads stays resident (file-backed pages of the map), in
//!   full — except `token_embd.weight` when the output projection is a separate
//!   `output.weight`: a step only *gathers* its rows (one per token), and reads them with
//!   `pread` into a staging buffer of one micro-batch (`train::embed_rows`), never through the
//!   map: what counts is that copy, `tokens × row_bytes`. (Through the map, the kernel's
//!   page-cache folios and fault-around made 512 random rows of the 8B table cost 92 MiB of RSS,
//!   more with every step: no plan could bound that.) With a
//!   tied output (Llama 3.2 1B) the whole matrix is read every step and counts in full; with
//!   `--lock-weights` the whole map is locked and everything counts.
//! - **Arena**: [`llama_training_plan`] packed ([`Plan::arena_bytes`]); the adapter gradients
//!   live there.
//! - **Adapters**: the f32 `A`/`B` master weights (`rank · (in + out)` per adapted linear).
//! - **Optimizer**: AdamW `m`/`v` pages (f32, or 8-bit blockwise for tensors of at least
//!   [`MIN_8BIT_NUMEL`] elements), each rounded to [`page_round`], counted in RAM unless the
//!   state is on disk — then only the largest tensor's page (the one being updated) is counted,
//!   the file's size is reported as `disk_bytes`. SGD: one f32 momentum buffer per tensor, or
//!   nothing without momentum.
//! - **Overheads**: the measured constants of overheads.rs (binary, GGUF header, tokenizer,
//!   dataset, threads; no KV cache in training).

mod choose;
pub mod infer;
pub mod limits;
pub mod overheads;
mod report;
mod stream;
mod suggest;
mod suggest_levers;
mod weights;

use serde::Serialize;

use crate::train::method_plan::{adapter_cost, method_wide_bytes, reslora_store_bytes};
use crate::train::plan_llama::AdapterShape;
use crate::train::plan_llama::{TrainShape, llama_training_plan};
use crate::train::{
    CheckpointDtype, FusedUpdate, OptimizerKind, StatePlace, StreamHead, TrainConfig, target_shape,
};
use choose::{choose_fused_update, choose_stream_head, plan_weights};
use edgetune_core::adapters::Target;
use edgetune_core::adapters::param_buf::paged_bytes;
use edgetune_core::gguf::GgufFile;
use edgetune_core::memory::plan::Plan;
use edgetune_core::model::LlamaConfig;
use edgetune_core::optim::paged::page_round;
use edgetune_core::optim::state8bit::{MIN_8BIT_NUMEL, state_bytes_8bit};
use edgetune_core::{Error, Result};
pub use stream::StreamedLayers;

pub use overheads::{
    BINARY_RESIDENT_BYTES, DATASET_BYTES_PER_FILE_BYTE, Overhead, THREAD_RESIDENT_BYTES,
    TOKENIZER_BYTES_PER_ENTRY, TOKENIZER_FIXED_BYTES,
};
pub use suggest::{Change, Suggestion, Suggestions};
pub(crate) use weights::weights_breakdown;
pub use weights::{GatheredRows, ModelWeights, TypeBytes, WeightsBreakdown, tokenizer_entries};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CategoryBytes {
    pub category: String,
    pub buffers: usize,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArenaBreakdown {
    /// The one allocation.
    pub arena_bytes: u64,
    /// Σ buffer sizes (no reuse).
    pub sum_bytes: u64,
    /// Max of simultaneously live bytes: a lower bound for any packing.
    pub peak_live_bytes: u64,
    pub buffers: usize,
    pub categories: Vec<CategoryBytes>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AdapterBreakdown {
    /// Adapted linears (layers × targets).
    pub adapted: usize,
    pub n_params: u64,
    /// f32 master weights resident (gradients are in the arena): all of them in RAM; paged
    /// from a file (`--adapter-weights disk`), the largest layer's.
    pub master_bytes: u64,
    /// `ram` or `disk`.
    pub place: String,
    /// Size of the paged weights' file (0 in RAM).
    pub disk_bytes: u64,
    /// What the method's adapters hold besides their weights (base copies, frozen factors,
    /// importance buffers, fixed transients) plus its model-wide buffers; 0 for LoRA.
    pub extra_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OptimizerBreakdown {
    /// `adamw` or `sgd`.
    pub kind: String,
    /// 32 or 8 (AdamW).
    pub state_bits: u32,
    /// `ram` or `disk`.
    pub place: String,
    /// Tensors whose AdamW state is 8-bit (the others keep f32).
    pub tensors_8bit: usize,
    pub tensors_f32: usize,
    /// Held in RAM: all state pages, or with the state on disk the largest page (the one being
    /// updated).
    pub ram_bytes: u64,
    /// Size of the state file on disk.
    pub disk_bytes: u64,
}

/// Everything one training process holds, and whether it fits the budget.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Breakdown {
    pub model: String,
    /// The training settings, in CLI flags.
    pub config: String,
    pub weights: WeightsBreakdown,
    pub arena: ArenaBreakdown,
    pub adapters: AdapterBreakdown,
    pub optimizer: OptimizerBreakdown,
    pub overheads: Vec<Overhead>,
    pub overhead_bytes: u64,
    /// weights resident + arena + adapters + optimizer RAM + overheads.
    pub total_bytes: u64,
    pub budget_bytes: Option<u64>,
    /// `total_bytes ≤ budget_bytes` (true without a budget).
    pub fits: bool,
    /// The nearest configurations that fit (only when it does not).
    pub suggestions: Option<Suggestions>,
    /// Why each layer's adapters are updated right after its backward (`--fused-update`);
    /// `None`: one update after the whole backward.
    pub fused_update: Option<String>,
    /// Bytes of the layer-input spill file (`--checkpoints-on disk`), written and read once a
    /// micro-batch; `None` when the inputs stay in the arena.
    pub checkpoint_spill_bytes: Option<u64>,
}

impl Breakdown {
    /// `Ok` when the plan fits; otherwise an error holding the whole table (with the numbers:
    /// total, budget, excess) and the suggestions.
    pub fn check(&self) -> Result<()> {
        match self.budget_bytes {
            Some(budget) if !self.fits => Err(Error::OverBudget {
                needed: self.total_bytes,
                budget,
                report: format!(
                    "memory plan over budget: needs {} bytes ({}) but the budget is {} bytes \
                     ({}), {} over; refusing before allocating anything\n\n{}",
                    self.total_bytes,
                    report::size(self.total_bytes),
                    budget,
                    report::size(budget),
                    report::size(self.total_bytes.saturating_sub(budget)),
                    self.report()
                ),
            }),
            _ => Ok(()),
        }
    }

    /// The breakdown as a text table (report.rs).
    pub fn report(&self) -> String {
        report::report(self)
    }
}

/// A planned training step: its shape, the packed arena and the budget breakdown.
#[derive(Clone, Debug)]
pub struct TrainingPlan {
    pub shape: TrainShape,
    pub plan: Plan,
    pub breakdown: Breakdown,
}

/// Plans a training run of `file` (header only) with `cfg`; `cfg.budget_bytes` is the budget.
/// When it does not fit, the breakdown carries suggestions; call [`Breakdown::check`] to refuse.
pub fn plan_training(file: &GgufFile, cfg: &TrainConfig) -> Result<TrainingPlan> {
    plan_training_for(&ModelWeights::from_gguf(file)?, cfg)
}

/// [`plan_training`] for a model given by its shapes and tensor list (no file needed).
pub fn plan_training_for(model: &ModelWeights, cfg: &TrainConfig) -> Result<TrainingPlan> {
    let planned = plan_weights(model, cfg)?;
    let planned = choose_fused_update(model, cfg, planned)?;
    let (mut planned, chosen) = choose_stream_head(model, cfg, planned)?;
    // Over budget: the nearest configurations that fit, from the one chosen.
    if !planned.breakdown.fits {
        planned.breakdown.suggestions = Some(suggest::search(model, &chosen, &planned.breakdown)?);
    }
    Ok(planned)
}

/// The step shape of `cfg` on `model`: LoRA on exactly `cfg.lora.targets` (in [`Target::ALL`]
/// order), gradients accumulated when `accum > 1`, no optimizer staging (the CPU updates state
/// pages in place), and the cross-entropy chunk capped at the step's tokens.
pub fn train_shape(model: &LlamaConfig, cfg: &TrainConfig) -> Result<TrainShape> {
    limits::validate(model, cfg)?;
    let tokens = cfg.seq_len.checked_mul(cfg.batch).ok_or_else(|| {
        Error::Invalid(format!(
            "plan: {} × {} tokens overflow",
            cfg.seq_len, cfg.batch
        ))
    })?;
    let mut adapters: [Option<AdapterShape>; 7] = [None; 7];
    for (slot, target) in adapters.iter_mut().zip(Target::ALL) {
        if cfg.lora.targets.contains(&target) {
            let (fan_in, fan_out) = target_shape(model, target);
            // The method's workspace and tensors (LoRA's for the LoRA family).
            let cost = adapter_cost(cfg.method, &cfg.lora, &cfg.method_opts, fan_in, fan_out, 0);
            *slot = Some(cost.shape);
        }
    }
    Ok(TrainShape {
        seq_len: cfg.seq_len,
        micro_batch: cfg.batch,
        ce_chunk: cfg.ce_chunk.min(tokens),
        checkpointing: cfg.checkpointing,
        accumulate: cfg.accum > 1,
        optimizer_staging: false,
        fused_update: cfg.fused_update == FusedUpdate::On,
        checkpoint_bf16: cfg.checkpoint_dtype == CheckpointDtype::Bf16,
        checkpoints_on_disk: cfg.checkpoints_on == StatePlace::Disk,
        stream_head: cfg.stream_head == StreamHead::On,
        adapters,
    })
}

/// The plan and its breakdown without suggestions.
pub(crate) fn evaluate(model: &ModelWeights, cfg: &TrainConfig) -> Result<TrainingPlan> {
    let shape = train_shape(&model.config, cfg)?;
    let plan = llama_training_plan(&model.config, &shape)?.pack()?;
    let arena = ArenaBreakdown {
        arena_bytes: plan.arena_bytes(),
        sum_bytes: plan.sum_bytes(),
        peak_live_bytes: plan.peak_live_bytes(),
        buffers: plan.buffers().len(),
        categories: plan
            .category_totals()
            .into_iter()
            .map(|(c, buffers, bytes)| CategoryBytes {
                category: format!("{c:?}"),
                buffers,
                bytes,
            })
            .collect(),
    };
    let breakdown = assemble(model, cfg, arena)?;
    Ok(TrainingPlan {
        shape,
        plan,
        breakdown,
    })
}

/// Everything but the arena (which the caller computed), summed and compared to the budget.
pub(crate) fn assemble(
    model: &ModelWeights,
    cfg: &TrainConfig,
    arena: ArenaBreakdown,
) -> Result<Breakdown> {
    let tokens = (cfg.seq_len as u64).saturating_mul(cfg.batch as u64);
    let weights = weights_breakdown(model, tokens, cfg)?;
    let (adapters, tensor_numels) = adapter_breakdown(model, cfg);
    let optimizer = optimizer_breakdown(cfg, &tensor_numels);
    let overheads = overheads::overheads(model, cfg, tokens)?;
    let overhead_bytes = overheads.iter().map(|o| o.bytes).sum::<u64>();
    let total_bytes = [
        weights.resident_bytes,
        arena.arena_bytes,
        adapters.master_bytes,
        adapters.extra_bytes,
        optimizer.ram_bytes,
        overhead_bytes,
    ]
    .iter()
    .try_fold(0u64, |acc, &b| acc.checked_add(b))
    .ok_or_else(|| Error::Invalid("plan: the total overflows u64".into()))?;
    Ok(Breakdown {
        model: model.name.clone(),
        config: suggest::config_flags(cfg),
        weights,
        arena,
        adapters,
        optimizer,
        overheads,
        overhead_bytes,
        total_bytes,
        budget_bytes: cfg.budget_bytes,
        fits: cfg.budget_bytes.is_none_or(|b| total_bytes <= b),
        suggestions: None,
        checkpoint_spill_bytes: (cfg.checkpoints_on == StatePlace::Disk).then(|| {
            let per_value = if cfg.checkpoint_dtype == CheckpointDtype::Bf16 {
                2
            } else {
                4
            };
            model.config.n_layer as u64 * tokens * model.config.dim as u64 * per_value
        }),
        fused_update: (cfg.fused_update == FusedUpdate::On).then(|| {
            let clip = if cfg.max_grad_norm > 0.0 {
                "; clipping needs the global norm first: a norm-only forward and backward runs \
                 before each step's (2× compute; --max-grad-norm 0 avoids it)"
            } else {
                ""
            };
            format!("--fused-update on{clip}")
        }),
    })
}

/// The adapters' parameter count, master and extra bytes (train/method_plan.rs), and the
/// element count of every trainable tensor in optimizer order (per layer, per target, the
/// method's `params()` order: LoRA's `A [r, in]`, then `B [out, r]`).
fn adapter_breakdown(model: &ModelWeights, cfg: &TrainConfig) -> (AdapterBreakdown, Vec<u64>) {
    let mc = &model.config;
    let mut numels = Vec::new();
    let (mut adapted, mut extra) = (0usize, 0u64);
    // Paged weights: each tensor's page-rounded range of the file, summed per layer.
    let (mut paged_file, mut paged_layer_max) = (0u64, 0u64);
    for layer in (0..mc.n_layer).filter(|&l| cfg.lora.adapts(l)) {
        let first = numels.len();
        for &t in Target::ALL.iter().filter(|t| cfg.lora.targets.contains(t)) {
            let (fan_in, fan_out) = target_shape(mc, t);
            let name = format!("blk.{layer}.{}.weight", t.gguf_stem());
            let base_bytes = model
                .tensors
                .iter()
                .find(|x| x.name == name)
                .map_or(0, |x| x.n_bytes);
            let cost = adapter_cost(
                cfg.method,
                &cfg.lora,
                &cfg.method_opts,
                fan_in,
                fan_out,
                base_bytes,
            );
            numels.extend_from_slice(&cost.tensors);
            extra += cost.extra_bytes;
            adapted += 1;
        }
        let layer_paged: u64 = numels[first..]
            .iter()
            .map(|&n| paged_bytes(n as usize))
            .sum();
        paged_file += layer_paged;
        paged_layer_max = paged_layer_max.max(layer_paged);
    }
    extra += method_wide_bytes(cfg.method, &cfg.lora, &cfg.method_opts, mc.n_layer, adapted);
    if cfg.method.spec().behaviour.layer_shortcuts {
        let fan_ins: Vec<usize> = Target::ALL
            .iter()
            .filter(|t| cfg.lora.targets.contains(t))
            .map(|&t| target_shape(mc, t).0)
            .collect();
        let tokens = cfg.batch.saturating_mul(cfg.seq_len);
        extra += reslora_store_bytes(&fan_ins, mc.n_layer, tokens);
    }
    let n_params: u64 = numels.iter().sum();
    let on_disk = cfg.adapter_weights == StatePlace::Disk;
    let adapters = AdapterBreakdown {
        adapted,
        n_params,
        master_bytes: if on_disk {
            paged_layer_max
        } else {
            4 * n_params
        },
        place: if on_disk { "disk" } else { "ram" }.into(),
        disk_bytes: if on_disk { paged_file } else { 0 },
        extra_bytes: extra,
    };
    (adapters, numels)
}

/// Optimizer state bytes for the trainable tensors `numels`.
fn optimizer_breakdown(cfg: &TrainConfig, numels: &[u64]) -> OptimizerBreakdown {
    match cfg.optimizer {
        OptimizerKind::Sgd => {
            // One f32 momentum buffer per tensor (a plain Vec, in RAM), none without momentum.
            let ram = if cfg.momentum != 0.0 {
                4 * numels.iter().sum::<u64>()
            } else {
                0
            };
            OptimizerBreakdown {
                kind: "sgd".into(),
                state_bits: 32,
                place: "ram".into(),
                tensors_8bit: 0,
                tensors_f32: if ram > 0 { numels.len() } else { 0 },
                ram_bytes: ram,
                disk_bytes: 0,
            }
        }
        OptimizerKind::AdamW => {
            let eight = cfg.optimizer_state_bits == 8;
            let page = |n: u64| -> (bool, u64) {
                let is8 = eight && n >= MIN_8BIT_NUMEL as u64;
                let bytes = if is8 {
                    state_bytes_8bit(n as usize) as u64
                } else {
                    8 * n
                };
                (is8, page_round(bytes as usize) as u64)
            };
            let pages: Vec<(bool, u64)> = numels.iter().map(|&n| page(n)).collect();
            let all: u64 = pages.iter().map(|p| p.1).sum();
            let largest = pages.iter().map(|p| p.1).max().unwrap_or(0);
            let tensors_8bit = pages.iter().filter(|p| p.0).count();
            let on_disk = cfg.optimizer_state == StatePlace::Disk;
            OptimizerBreakdown {
                kind: "adamw".into(),
                state_bits: cfg.optimizer_state_bits,
                place: if on_disk { "disk" } else { "ram" }.into(),
                tensors_8bit,
                tensors_f32: pages.len() - tensors_8bit,
                ram_bytes: if on_disk { largest } else { all },
                disk_bytes: if on_disk { all } else { 0 },
            }
        }
    }
}
