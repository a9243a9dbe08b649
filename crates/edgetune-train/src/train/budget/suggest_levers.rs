//! The levers of the plan's suggestions ([`super::suggest`]): each [`Change`] to the training
//! settings, the CLI flags it stands for, which levers apply to a configuration and with which
//! values (gentlest first, each lever's values mildest first), and which keep the run exact.

use std::fmt;

use serde::Serialize;

use crate::train::{CheckpointDtype, OptimizerKind, StatePlace, TrainConfig};
use edgetune_core::adapters::Target;
use edgetune_core::model::LlamaConfig;

/// One change to the training settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// Turn gradient checkpointing on.
    Checkpointing,
    /// AdamW state in a file-backed map (`--optimizer-state disk`).
    StateOnDisk,
    /// Layer checkpoints in a file (`--checkpoints-on disk`).
    CheckpointsOnDisk,
    /// Adapter weights paged from a file (`--adapter-weights disk`).
    AdapterWeightsOnDisk,
    /// The output head streamed in chunks (`--stream-head on`, with streamed layers).
    StreamHead,
    /// 8-bit blockwise AdamW state.
    State8Bit,
    /// Layer checkpoints in bf16 (`--checkpoint-dtype bf16`).
    CheckpointBf16,
    /// Micro-batch `batch` with `accum` micro-batches per update.
    MicroBatch {
        batch: usize,
        accum: u32,
    },
    /// LoRA rank (with `alpha` keeping the scale).
    Rank {
        rank: usize,
        alpha: f32,
    },
    Targets {
        targets: Vec<Target>,
    },
    SeqLen {
        seq_len: usize,
    },
}

impl Change {
    pub fn apply(&self, cfg: &mut TrainConfig) {
        match self {
            Change::Checkpointing => cfg.checkpointing = true,
            Change::StateOnDisk => cfg.optimizer_state = StatePlace::Disk,
            Change::CheckpointsOnDisk => cfg.checkpoints_on = StatePlace::Disk,
            Change::AdapterWeightsOnDisk => cfg.adapter_weights = StatePlace::Disk,
            Change::StreamHead => cfg.stream_head = crate::train::StreamHead::On,
            Change::State8Bit => cfg.optimizer_state_bits = 8,
            Change::CheckpointBf16 => cfg.checkpoint_dtype = CheckpointDtype::Bf16,
            Change::MicroBatch { batch, accum } => (cfg.batch, cfg.accum) = (*batch, *accum),
            Change::Rank { rank, alpha } => (cfg.lora.rank, cfg.lora.alpha) = (*rank, *alpha),
            Change::Targets { targets } => cfg.lora.targets = targets.clone(),
            Change::SeqLen { seq_len } => cfg.seq_len = *seq_len,
        }
    }
}

impl fmt::Display for Change {
    /// The CLI flags that make the change.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Checkpointing => f.write_str("drop --no-checkpointing"),
            Change::StateOnDisk => f.write_str("--optimizer-state disk"),
            Change::CheckpointsOnDisk => f.write_str("--checkpoints-on disk"),
            Change::AdapterWeightsOnDisk => f.write_str("--adapter-weights disk"),
            Change::StreamHead => f.write_str("--stream-head on"),
            Change::State8Bit => f.write_str("--optimizer-state-bits 8"),
            Change::CheckpointBf16 => f.write_str("--checkpoint-dtype bf16"),
            Change::MicroBatch { batch, accum } => write!(f, "--batch {batch} --accum {accum}"),
            Change::Rank { rank, alpha } => write!(f, "--rank {rank} --alpha {alpha}"),
            Change::Targets { targets } => write!(f, "--targets {}", target_list(targets)),
            Change::SeqLen { seq_len } => write!(f, "--seq-len {seq_len}"),
        }
    }
}

fn target_list(targets: &[Target]) -> String {
    targets
        .iter()
        .map(|t| t.gguf_stem())
        .collect::<Vec<_>>()
        .join(",")
}

/// `cfg`'s shape-relevant settings as CLI flags.
pub fn config_flags(cfg: &TrainConfig) -> String {
    let mut s = format!(
        "--seq-len {} --batch {} --accum {} --rank {} --alpha {} --targets {} --ce-chunk {}",
        cfg.seq_len,
        cfg.batch,
        cfg.accum,
        cfg.lora.rank,
        cfg.lora.alpha,
        target_list(&cfg.lora.targets),
        cfg.ce_chunk
    );
    if cfg.lora.dropout > 0.0 {
        s += &format!(" --dropout {}", cfg.lora.dropout);
    }
    if let Some(r) = cfg.lora.layers {
        s += &format!(" --layers {r}");
    }
    if !cfg.checkpointing {
        s += " --no-checkpointing";
    }
    if cfg.checkpoint_dtype == CheckpointDtype::Bf16 {
        s += " --checkpoint-dtype bf16";
    }
    if cfg.checkpoints_on == StatePlace::Disk {
        s += " --checkpoints-on disk";
    }
    if cfg.adapter_weights == StatePlace::Disk {
        s += " --adapter-weights disk";
    }
    match cfg.optimizer {
        OptimizerKind::Sgd => s += " --optimizer sgd",
        OptimizerKind::AdamW => {
            let place = match cfg.optimizer_state {
                StatePlace::Ram => "ram",
                StatePlace::Disk => "disk",
            };
            s += &format!(
                " --optimizer adamw --optimizer-state {place} --optimizer-state-bits {}",
                cfg.optimizer_state_bits
            );
        }
    }
    if cfg.lock_weights {
        s += " --lock-weights";
    }
    if cfg.weights == crate::train::WeightsMode::Stream {
        s += " --weights stream";
    }
    match cfg.fused_update {
        crate::train::FusedUpdate::On => s += " --fused-update on",
        crate::train::FusedUpdate::Off => s += " --fused-update off",
        crate::train::FusedUpdate::Auto => {}
    }
    match cfg.stream_head {
        crate::train::StreamHead::On => s += " --stream-head on",
        crate::train::StreamHead::Off => s += " --stream-head off",
        crate::train::StreamHead::Auto => {}
    }
    s
}

/// The levers that change `cfg`, gentlest first; each holds its values mildest first. A rank
/// is offered only within the limit of every adapted projection of `model` (limits.rs).
pub(super) fn levers(model: &LlamaConfig, cfg: &TrainConfig) -> Vec<Vec<Change>> {
    let rank_limit = super::limits::max_rank(model, &cfg.lora.targets);
    let mut out = Vec::new();
    if !cfg.checkpointing {
        out.push(vec![Change::Checkpointing]);
    }
    if cfg.optimizer == OptimizerKind::AdamW && cfg.optimizer_state == StatePlace::Ram {
        out.push(vec![Change::StateOnDisk]);
    }
    // Only where checkpointing is on already (without it there are no checkpoints to move).
    if cfg.checkpointing && cfg.checkpoints_on == StatePlace::Ram {
        out.push(vec![Change::CheckpointsOnDisk]);
    }
    if cfg.adapter_weights == StatePlace::Ram {
        out.push(vec![Change::AdapterWeightsOnDisk]);
    }
    if cfg.weights == crate::train::WeightsMode::Stream
        && cfg.stream_head != crate::train::StreamHead::On
        && crate::train::stream_head_support(cfg).is_ok()
    {
        out.push(vec![Change::StreamHead]);
    }
    if cfg.optimizer == OptimizerKind::AdamW && cfg.optimizer_state_bits != 8 {
        out.push(vec![Change::State8Bit]);
    }
    // Only where checkpointing is on already (bf16 without it is refused).
    if cfg.checkpointing && cfg.checkpoint_dtype == CheckpointDtype::F32 {
        out.push(vec![Change::CheckpointBf16]);
    }
    // Not with the fused update on: it refuses accumulation.
    if cfg.batch > 1 && cfg.fused_update != crate::train::FusedUpdate::On {
        let accum = cfg
            .accum
            .saturating_mul(u32::try_from(cfg.batch).unwrap_or(u32::MAX));
        out.push(vec![Change::MicroBatch { batch: 1, accum }]);
    }
    let ranks: Vec<Change> = (1..=4)
        .map(|k| cfg.lora.rank >> k)
        .filter(|&r| r >= 1 && r <= rank_limit)
        .map(|rank| {
            let ratio = rank as f64 / cfg.lora.rank as f64;
            let keep = if cfg.lora.rslora { ratio.sqrt() } else { ratio };
            Change::Rank {
                rank,
                alpha: (cfg.lora.alpha as f64 * keep) as f32,
            }
        })
        .collect();
    if !ranks.is_empty() {
        out.push(ranks);
    }
    let mut target_sets: Vec<Change> = Vec::new();
    let mut smallest = cfg.lora.targets.len();
    let attention = [
        Target::AttnQ,
        Target::AttnK,
        Target::AttnV,
        Target::AttnOutput,
    ];
    for keep in [&attention[..], &[Target::AttnQ, Target::AttnV][..]] {
        let t: Vec<Target> = Target::ALL
            .into_iter()
            .filter(|t| keep.contains(t) && cfg.lora.targets.contains(t))
            .collect();
        if !t.is_empty() && t.len() < smallest {
            smallest = t.len();
            target_sets.push(Change::Targets { targets: t });
        }
    }
    if !target_sets.is_empty() {
        out.push(target_sets);
    }
    let seqs: Vec<Change> = (1..=3)
        .map(|k| cfg.seq_len >> k)
        .filter(|&s| s >= 16)
        .map(|seq_len| Change::SeqLen { seq_len })
        .collect();
    if !seqs.is_empty() {
        out.push(seqs);
    }
    out
}

/// Whether `change` leaves what the run computes as it was: the same values in another place,
/// or recomputed (the streamed head differs only in the last bits of a chunked sum).
pub(super) fn is_exact(change: &Change) -> bool {
    matches!(
        change,
        Change::Checkpointing
            | Change::StateOnDisk
            | Change::CheckpointsOnDisk
            | Change::AdapterWeightsOnDisk
            | Change::StreamHead
    )
}
