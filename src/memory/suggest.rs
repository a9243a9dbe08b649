//! When a plan does not fit: the nearest configurations that do (docs/ARCHITECTURE.md#bad-input).
//!
//! The levers, gentlest first (what they cost the run): gradient checkpointing on (exact, more
//! compute), optimizer state on disk (exact, more I/O), layer checkpoints on disk (exact, more
//! I/O), adapter weights paged from disk (exact, more I/O), the output head streamed with streamed layers (the loss's last bits differ, the head
//! is read twice a micro-batch), 8-bit optimizer state (approximate
//! moments), bf16 layer checkpoints (the residual stream rounded to bf16 where each layer
//! begins), micro-batch 1 with the accumulation multiplied so the effective batch stays (same
//! samples per update, slower), a lower rank (halved, up to 4 times; `alpha` scaled so the LoRA
//! scale stays), fewer targets (attention only: q, k, v, o; then q, v), a shorter sequence
//! (halved, up to 3 times, not below 16). Only levers that change the configuration are tried,
//! and only values the plan accepts: a rank within every adapted projection's `min(in, out)`
//! (limits.rs; a configuration above it is refused before any search).
//!
//! The search tries every set of one, then two, then three levers (sets in lever order); for a
//! set, the value combinations mildest first (by the sum of the halving steps), keeping the
//! first that fits. A set is skipped when a smaller set already fits (so every suggestion is
//! minimal). It stops after the level that brought [`MAX_SUGGESTIONS`]. Configurations whose
//! lower bound (everything but the arena, plus the arena's peak-live bound) exceeds the budget
//! are not packed, and arenas are memoised by step shape, so a search takes a fraction of a
//! second even for the 8B.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use super::budget::{
    ArenaBreakdown, Breakdown, CategoryBytes, ModelWeights, assemble, train_shape,
};
use super::budget_report::size;
use super::plan::llama_training_plan;
use crate::adapters::Target;
use crate::model::LlamaConfig;
use crate::train::{CheckpointDtype, OptimizerKind, StatePlace, TrainConfig};
use crate::{Error, Result};

/// Most suggestions listed.
pub const MAX_SUGGESTIONS: usize = 5;

/// Most levers changed together.
const MAX_CHANGES: usize = 3;

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

/// A configuration that fits: the changes from the asked one, and its total.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Suggestion {
    pub changes: Vec<Change>,
    /// The changes as CLI flags.
    pub flags: String,
    pub total_bytes: u64,
}

impl Suggestion {
    /// `cfg` with the changes made.
    pub fn apply(&self, cfg: &TrainConfig) -> TrainConfig {
        let mut c = cfg.clone();
        for ch in &self.changes {
            ch.apply(&mut c);
        }
        c
    }
}

/// The outcome of the search.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Suggestions {
    /// Fewest changes first, gentlest levers first.
    pub found: Vec<Suggestion>,
    pub budget_bytes: u64,
    /// The resident weights alone.
    pub weights_bytes: u64,
    /// Configurations evaluated.
    pub evaluated: usize,
    /// Why nothing was found (when `found` is empty).
    pub note: Option<String>,
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
fn levers(model: &LlamaConfig, cfg: &TrainConfig) -> Vec<Vec<Change>> {
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

/// Totals of candidate configurations, with the arenas memoised by step shape.
struct Evaluator<'a> {
    model: &'a ModelWeights,
    arenas: HashMap<String, ArenaBreakdown>,
    evaluated: usize,
}

impl Evaluator<'_> {
    /// The candidate's breakdown if it fits, `None` if it does not.
    fn fits(&mut self, cfg: &TrainConfig) -> Result<Option<Breakdown>> {
        self.evaluated += 1;
        let shape = train_shape(&self.model.config, cfg)?;
        let key = format!("{shape:?}");
        if let Some(arena) = self.arenas.get(&key) {
            let b = assemble(self.model, cfg, arena.clone())?;
            return Ok(b.fits.then_some(b));
        }
        let builder = llama_training_plan(&self.model.config, &shape)?;
        let bound = ArenaBreakdown {
            arena_bytes: builder.peak_live_bytes(),
            sum_bytes: 0,
            peak_live_bytes: 0,
            buffers: 0,
            categories: Vec::new(),
        };
        if !assemble(self.model, cfg, bound)?.fits {
            return Ok(None);
        }
        let plan = builder.pack()?;
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
        self.arenas.insert(key, arena.clone());
        let b = assemble(self.model, cfg, arena)?;
        Ok(b.fits.then_some(b))
    }
}

/// The nearest configurations to `cfg` that fit (see the module docs); `base` is `cfg`'s
/// breakdown, over its budget.
pub(crate) fn search(
    model: &ModelWeights,
    cfg: &TrainConfig,
    base: &Breakdown,
) -> Result<Suggestions> {
    let budget = base
        .budget_bytes
        .ok_or_else(|| Error::Invalid("plan: suggestions need a budget".into()))?;
    let mut out = Suggestions {
        found: Vec::new(),
        budget_bytes: budget,
        weights_bytes: base.weights.resident_bytes,
        evaluated: 0,
        note: None,
    };
    if base.weights.resident_bytes >= budget {
        out.note = Some(format!(
            "nothing fits: the weights alone take {} of the {} budget (a smaller or more \
             strongly quantized model is needed)",
            size(base.weights.resident_bytes),
            size(budget)
        ));
        return Ok(out);
    }
    let levers = levers(&model.config, cfg);
    let mut ev = Evaluator {
        model,
        arenas: HashMap::new(),
        evaluated: 0,
    };
    // Every lever at its strongest: if even that does not fit, no subset does.
    let mut strongest = cfg.clone();
    for l in &levers {
        if let Some(last) = l.last() {
            last.apply(&mut strongest);
        }
    }
    if levers.is_empty() || ev.fits(&strongest)?.is_none() {
        let all = assemble(model, &strongest, lower_bound_arena(model, &strongest)?)?;
        out.note = Some(format!(
            "nothing fits: even with every lever ({}) the plan needs at least {} against a {} \
             budget; the weights alone take {}",
            config_flags(&strongest),
            size(all.total_bytes),
            size(budget),
            size(base.weights.resident_bytes)
        ));
        out.evaluated = ev.evaluated;
        return Ok(out);
    }
    let mut found_sets: Vec<Vec<usize>> = Vec::new();
    for size in 1..=MAX_CHANGES.min(levers.len()) {
        for set in combinations(levers.len(), size) {
            if found_sets.iter().any(|f| f.iter().all(|i| set.contains(i))) {
                continue;
            }
            let dims: Vec<usize> = set.iter().map(|&i| levers[i].len()).collect();
            for pick in grid_mildest_first(&dims) {
                let changes: Vec<Change> = set
                    .iter()
                    .zip(&pick)
                    .map(|(&l, &v)| levers[l][v].clone())
                    .collect();
                let mut c = cfg.clone();
                changes.iter().for_each(|ch| ch.apply(&mut c));
                if let Some(b) = ev.fits(&c)? {
                    let flags = changes
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(" ");
                    out.found.push(Suggestion {
                        changes,
                        flags,
                        total_bytes: b.total_bytes,
                    });
                    found_sets.push(set.clone());
                    break;
                }
            }
        }
        if out.found.len() >= MAX_SUGGESTIONS {
            break;
        }
    }
    out.found.truncate(MAX_SUGGESTIONS);
    if out.found.is_empty() {
        out.note = Some(format!(
            "nothing fits with up to {MAX_CHANGES} changes (every lever together does: {})",
            config_flags(&strongest)
        ));
    }
    out.evaluated = ev.evaluated;
    Ok(out)
}

/// The arena's lower bound (peak live) for `cfg`, for messages.
fn lower_bound_arena(model: &ModelWeights, cfg: &TrainConfig) -> Result<ArenaBreakdown> {
    let shape = train_shape(&model.config, cfg)?;
    let peak = llama_training_plan(&model.config, &shape)?.peak_live_bytes();
    Ok(ArenaBreakdown {
        arena_bytes: peak,
        sum_bytes: 0,
        peak_live_bytes: peak,
        buffers: 0,
        categories: Vec::new(),
    })
}

/// The `size`-element subsets of `0..n`, in lexicographic order.
fn combinations(n: usize, size: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut cur = Vec::with_capacity(size);
    fn rec(start: usize, n: usize, size: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if cur.len() == size {
            out.push(cur.clone());
            return;
        }
        for i in start..n {
            cur.push(i);
            rec(i + 1, n, size, cur, out);
            cur.pop();
        }
    }
    rec(0, n, size, &mut cur, &mut out);
    out
}

/// Every index tuple of a grid of `dims`, by increasing sum (ties lexicographic).
fn grid_mildest_first(dims: &[usize]) -> Vec<Vec<usize>> {
    let mut all: Vec<Vec<usize>> = vec![Vec::new()];
    for &d in dims {
        all = all
            .into_iter()
            .flat_map(|p| (0..d).map(move |v| [p.as_slice(), &[v]].concat()))
            .collect();
    }
    all.sort_by_key(|p| (p.iter().sum::<usize>(), p.clone()));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations_and_grid_orders() {
        assert_eq!(combinations(3, 2), vec![vec![0, 1], vec![0, 2], vec![1, 2]]);
        assert_eq!(combinations(2, 3), Vec::<Vec<usize>>::new());
        assert_eq!(
            grid_mildest_first(&[2, 3]),
            vec![
                vec![0, 0],
                vec![0, 1],
                vec![1, 0],
                vec![0, 2],
                vec![1, 1],
                vec![1, 2]
            ]
        );
    }

    #[test]
    fn levers_only_change_what_can_change() {
        let mut cfg = TrainConfig {
            batch: 4,
            accum: 2,
            seq_len: 40,
            ..TrainConfig::default()
        };
        let model = crate::testmodel::TINY.llama_config();
        let l = levers(&model, &cfg);
        // Checkpointing is already on by default.
        assert!(!l.iter().flatten().any(|c| *c == Change::Checkpointing));
        assert!(
            l.iter()
                .flatten()
                .any(|c| *c == Change::MicroBatch { batch: 1, accum: 8 })
        );
        // rank 16 → 8, 4, 2, 1 with alpha 32 → 16, 8, 4, 2 (scale 2 kept).
        let ranks: Vec<_> = l
            .iter()
            .flatten()
            .filter_map(|c| match c {
                Change::Rank { rank, alpha } => Some((*rank, *alpha)),
                _ => None,
            })
            .collect();
        assert_eq!(ranks, vec![(8, 16.0), (4, 8.0), (2, 4.0), (1, 2.0)]);
        // 40 → 20 only (10 is below 16).
        assert!(
            l.iter()
                .flatten()
                .any(|c| *c == Change::SeqLen { seq_len: 20 })
        );
        assert!(
            !l.iter()
                .flatten()
                .any(|c| *c == Change::SeqLen { seq_len: 10 })
        );
        cfg.lora.targets = vec![Target::AttnQ, Target::AttnV];
        cfg.optimizer = OptimizerKind::Sgd;
        let l = levers(&model, &cfg);
        assert!(
            !l.iter()
                .flatten()
                .any(|c| matches!(c, Change::Targets { .. } | Change::State8Bit))
        );
    }
}
