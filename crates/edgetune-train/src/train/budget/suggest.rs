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
//! minimal). It stops after the level that brought [`MAX_SUGGESTIONS`]. When no suggestion
//! keeps the run exact (checkpointing, state, checkpoints or adapter weights on disk, the
//! streamed head), the fewest exact levers that fit together are offered too, however many
//! (a 70B model on a 4 GB board needs more than three). Configurations whose
//! lower bound (everything but the arena, plus the arena's peak-live bound) exceeds the budget
//! are not packed, and arenas are memoised by step shape, so a search takes a fraction of a
//! second even for the 8B.

use std::collections::HashMap;

use serde::Serialize;

use super::report::size;
pub use super::suggest_levers::{Change, config_flags};
use super::suggest_levers::{is_exact, levers};
use super::{ArenaBreakdown, Breakdown, CategoryBytes, ModelWeights, assemble, train_shape};
use crate::train::TrainConfig;
use crate::train::plan_llama::llama_training_plan;
use edgetune_core::{Error, Result};

/// Most suggestions listed.
pub const MAX_SUGGESTIONS: usize = 5;

/// Most levers changed together.
const MAX_CHANGES: usize = 3;

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

/// Totals of candidate configurations, with the arenas memoised by step shape.
struct Evaluator<'a> {
    model: &'a ModelWeights,
    arenas: HashMap<String, ArenaBreakdown>,
    evaluated: usize,
}

impl Evaluator<'_> {
    /// `cfg` with `changes` made, as a suggestion if it fits.
    fn suggestion(
        &mut self,
        cfg: &TrainConfig,
        changes: Vec<Change>,
    ) -> Result<Option<Suggestion>> {
        let mut c = cfg.clone();
        changes.iter().for_each(|ch| ch.apply(&mut c));
        Ok(self.fits(&c)?.map(|b| Suggestion {
            flags: changes
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            changes,
            total_bytes: b.total_bytes,
        }))
    }

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
                if let Some(s) = ev.suggestion(cfg, changes)? {
                    out.found.push(s);
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
    if let Some(exact) = exact_suggestion(cfg, &levers, &out.found, &mut ev)? {
        if out.found.len() >= MAX_SUGGESTIONS {
            out.found.pop();
        }
        let at = out
            .found
            .iter()
            .position(|s| s.changes.len() > exact.changes.len())
            .unwrap_or(out.found.len());
        out.found.insert(at, exact);
    }
    if out.found.is_empty() {
        out.note = Some(format!(
            "nothing fits with up to {MAX_CHANGES} changes (every lever together does: {})",
            config_flags(&strongest)
        ));
    }
    out.evaluated = ev.evaluated;
    Ok(out)
}

/// When no suggestion keeps the run exact, the fewest exact levers that fit together, if any:
/// a big model on a small board often needs four or five of them (Llama 3.1 70B on the Orin
/// Nano 4 GB profile), more than the search combines, and then would only be offered a lower
/// rank, fewer targets or a shorter sequence. Subsets are tried by size, so the result is
/// minimal (no change can be dropped).
fn exact_suggestion(
    cfg: &TrainConfig,
    levers: &[Vec<Change>],
    found: &[Suggestion],
    ev: &mut Evaluator<'_>,
) -> Result<Option<Suggestion>> {
    if found.iter().any(|s| s.changes.iter().all(is_exact)) {
        return Ok(None);
    }
    // Each exact lever has one value.
    let exact: Vec<&Change> = levers
        .iter()
        .filter_map(|l| l.first())
        .filter(|c| is_exact(c))
        .collect();
    for size in 1..=exact.len() {
        for set in combinations(exact.len(), size) {
            let changes: Vec<Change> = set.iter().map(|&i| exact[i].clone()).collect();
            if let Some(s) = ev.suggestion(cfg, changes)? {
                return Ok(Some(s));
            }
        }
    }
    Ok(None)
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
    use crate::train::OptimizerKind;
    use edgetune_core::adapters::Target;

    /// Llama 3.1 70B streamed and fused on the Orin Nano 4 GB profile at sequence 512: the
    /// exact levers that fit together are found, minimal (by the same evaluation the search
    /// uses), and only when no suggestion is exact already.
    #[test]
    fn the_fewest_exact_levers_that_fit_together() {
        let model = ModelWeights::from_preset(
            &edgetune_core::testmodel::LLAMA_3_1_70B,
            edgetune_core::testmodel::WeightTypes::parse("q4_0").unwrap(),
        )
        .unwrap();
        let board = edgetune_core::memory::Board::builtin("orin-nano-4gb").unwrap();
        let cfg = TrainConfig {
            seq_len: 512,
            threads: Some(board.cpu_cores),
            budget_bytes: Some(board.process_budget_bytes),
            weights: crate::train::WeightsMode::Stream,
            fused_update: crate::train::FusedUpdate::On,
            max_grad_norm: 0.0,
            stream_head: crate::train::StreamHead::Off,
            ..TrainConfig::default()
        };
        let mut ev = Evaluator {
            model: &model,
            arenas: HashMap::new(),
            evaluated: 0,
        };
        assert!(ev.fits(&cfg).unwrap().is_none(), "over the budget as asked");
        let levers = levers(&model.config, &cfg);
        let lossy = Suggestion {
            changes: vec![Change::SeqLen { seq_len: 64 }],
            flags: "--seq-len 64".into(),
            total_bytes: 0,
        };
        let s = exact_suggestion(&cfg, &levers, &[lossy], &mut ev)
            .unwrap()
            .expect("the exact levers fit together");
        assert!(s.changes.iter().all(is_exact), "{}", s.flags);
        assert_eq!(
            s.flags,
            "--optimizer-state disk --checkpoints-on disk --adapter-weights disk"
        );
        let apply = |changes: &[Change]| {
            let mut c = cfg.clone();
            changes.iter().for_each(|ch| ch.apply(&mut c));
            c
        };
        let b = ev.fits(&apply(&s.changes)).unwrap().expect("it fits");
        assert_eq!(b.total_bytes, s.total_bytes);
        for skip in 0..s.changes.len() {
            let mut fewer = s.changes.clone();
            fewer.remove(skip);
            assert!(
                ev.fits(&apply(&fewer)).unwrap().is_none(),
                "{} fits without change {skip}",
                s.flags
            );
        }
        // Not offered twice: an exact suggestion found by the search is enough.
        assert!(
            exact_suggestion(&cfg, &levers, &[s], &mut ev)
                .unwrap()
                .is_none()
        );
    }

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
        let model = edgetune_core::testmodel::TINY.llama_config();
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
