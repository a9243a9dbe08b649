//! The memory plan of an inference run (`generate`, `perplexity`, `eval` with `--budget` or
//! `--board`): the weights resident mapped or streamed, the KV cache, the forward's workspace,
//! the logits handed out, and the runtime overheads measured for training that inference shares
//! (binary, GGUF header, tokenizer, worker threads). `--weights auto` maps when that fits the
//! budget and streams when only streaming does, like training; `--stream-head auto` streams the
//! output head too when only that fits.

use serde::Serialize;

use super::overheads::{
    BINARY_RESIDENT_BYTES, THREAD_RESIDENT_BYTES, TOKENIZER_BYTES_PER_ENTRY, TOKENIZER_FIXED_BYTES,
    matmul_scratch_bytes,
};
use super::report::size;
use super::{ModelWeights, WeightsBreakdown, weights_breakdown};
use crate::train::{StreamHead, TrainConfig, WeightsMode};
use edgetune_core::model::LOGIT_ROWS;
use edgetune_core::{Error, Result};

/// What sizes an inference run's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct InferenceShape {
    /// KV cache positions, summed over the sequences held at once (a prompt and its new
    /// tokens; a batch of them; a perplexity text).
    pub kv_positions: usize,
    /// Most tokens one forward chunk runs (the workspace's rows).
    pub chunk_tokens: usize,
    /// Logit rows the caller holds at once (1 for sampling; a chunk's for perplexity).
    pub logit_rows: usize,
    /// Worker threads (`None`: one per core of this machine).
    pub threads: Option<usize>,
}

/// An inference run's memory, and whether it fits the budget.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InferencePlan {
    pub model: String,
    pub shape: InferenceShape,
    /// `map` or `stream`: what the run does.
    pub weights_mode: String,
    /// The output head is streamed in chunks too (with `stream`).
    pub head_streamed: bool,
    /// Why (the flag, or the plan's choice).
    pub reason: String,
    pub weights: WeightsBreakdown,
    /// K and V of every layer, f32 `[kv_positions, kv_dim]` each.
    pub kv_cache_bytes: u64,
    /// The forward's activation buffers for one chunk and its logit staging.
    pub workspace_bytes: u64,
    /// The logits the caller holds.
    pub logits_bytes: u64,
    pub overhead_bytes: u64,
    pub total_bytes: u64,
    pub budget_bytes: Option<u64>,
    pub fits: bool,
}

impl InferencePlan {
    /// `Ok` when it fits; otherwise an over-budget error with the plan's numbers.
    pub fn check(&self) -> Result<()> {
        match self.budget_bytes {
            Some(budget) if !self.fits => Err(Error::OverBudget {
                needed: self.total_bytes,
                budget,
                report: format!(
                    "inference plan over budget: needs {} ({}) but the budget is {}; \
                     refusing before loading the weights",
                    size(self.total_bytes),
                    self.summary(),
                    size(budget)
                ),
            }),
            _ => Ok(()),
        }
    }

    /// One line: the total and its parts.
    pub fn summary(&self) -> String {
        format!(
            "weights {} ({}{}: {}), KV cache {}, workspace {}, logits {}, overheads {}, total {}",
            size(self.weights.resident_bytes),
            self.weights_mode,
            if self.head_streamed { " + head" } else { "" },
            self.reason,
            size(self.kv_cache_bytes),
            size(self.workspace_bytes),
            size(self.logits_bytes),
            size(self.overhead_bytes),
            size(self.total_bytes)
        )
    }
}

/// Plans an inference run of `model` with `shape`; `weights` is `--weights` (`auto`: mapped
/// when that fits `budget`, streamed when only that does; without a budget, mapped) and `head`
/// is `--stream-head` (`auto`: the head streamed too when only that fits; `on` needs streamed
/// layers).
pub fn plan_inference(
    model: &ModelWeights,
    shape: InferenceShape,
    weights: WeightsMode,
    head: StreamHead,
    budget: Option<u64>,
) -> Result<InferencePlan> {
    if head == StreamHead::On && weights == WeightsMode::Map {
        return Err(Error::Invalid(
            "--stream-head on streams the head with the layers: not with --weights map".into(),
        ));
    }
    let head_on = head == StreamHead::On;
    if weights == WeightsMode::Map || (weights == WeightsMode::Stream && head != StreamHead::Auto) {
        return evaluate(model, shape, weights, head_on, budget);
    }
    if weights == WeightsMode::Auto && !head_on {
        let mapped = evaluate(model, shape, WeightsMode::Map, false, budget)?;
        if mapped.fits {
            return Ok(InferencePlan {
                reason: "--weights auto: mapped, it fits".into(),
                ..mapped
            });
        }
    }
    let over = |p: &InferencePlan| {
        format!(
            "over the {} budget at {}",
            size(budget.unwrap_or(0)),
            size(p.total_bytes)
        )
    };
    // Streamed layers, the head resident unless `on`.
    let mut streamed = evaluate(model, shape, WeightsMode::Stream, head_on, budget)?;
    if streamed.fits || head != StreamHead::Auto {
        if weights == WeightsMode::Auto && streamed.fits {
            streamed.reason = "chosen by the plan: mapped weights do not fit the budget".into();
        }
        return Ok(streamed);
    }
    // `--stream-head auto`: the head streamed too, whether or not it fits (then it is the
    // smallest to report).
    let mut both = evaluate(model, shape, WeightsMode::Stream, true, budget)?;
    if both.fits {
        both.reason = format!(
            "chosen by the plan: with the head resident the run is {}",
            over(&streamed)
        );
    }
    Ok(both)
}

fn evaluate(
    model: &ModelWeights,
    shape: InferenceShape,
    mode: WeightsMode,
    head_streamed: bool,
    budget: Option<u64>,
) -> Result<InferencePlan> {
    let c = &model.config;
    let overflow = || Error::Invalid("inference plan: the sizes overflow u64".into());
    // The weight breakdown is training's, for one chunk of tokens: mapped layers resident,
    // or two staging buffers and the head when streamed; the untied embedding counts its rows.
    let cfg = TrainConfig {
        weights: mode,
        stream_head: if head_streamed {
            StreamHead::On
        } else {
            StreamHead::Off
        },
        ..TrainConfig::default()
    };
    let weights = weights_breakdown(model, shape.chunk_tokens as u64, &cfg)?;
    let f32s = |n: u64| n.checked_mul(4).ok_or_else(overflow);
    let kv_cache_bytes = f32s(
        (2 * c.n_layer as u64)
            .checked_mul(shape.kv_positions as u64)
            .and_then(|n| n.checked_mul(c.kv_dim() as u64))
            .ok_or_else(overflow)?,
    )?;
    // model/forward.rs `Workspace::new`: x, xn, proj [t, dim]; q, att [t, q_dim]; gate, up,
    // h [t, ffn]; logits [LOGIT_ROWS, vocab].
    let t = shape.chunk_tokens as u64;
    let per_token = 3 * c.dim as u64 + 2 * c.q_dim() as u64 + 3 * c.ffn as u64;
    let workspace_bytes = f32s(
        t.checked_mul(per_token)
            .and_then(|n| n.checked_add(LOGIT_ROWS as u64 * c.n_vocab as u64))
            .ok_or_else(overflow)?,
    )?;
    let logits_bytes = f32s(shape.logit_rows as u64 * c.n_vocab as u64)?;
    let threads = shape
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1) as u64;
    let overhead_bytes = BINARY_RESIDENT_BYTES
        + model.header_bytes
        + TOKENIZER_FIXED_BYTES
        + TOKENIZER_BYTES_PER_ENTRY * model.tokenizer_entries
        + threads * (THREAD_RESIDENT_BYTES + matmul_scratch_bytes(c));
    let total_bytes = [
        weights.resident_bytes,
        kv_cache_bytes,
        workspace_bytes,
        logits_bytes,
        overhead_bytes,
    ]
    .iter()
    .try_fold(0u64, |acc, &b| acc.checked_add(b))
    .ok_or_else(overflow)?;
    let streamed = mode == WeightsMode::Stream;
    Ok(InferencePlan {
        model: model.name.clone(),
        shape,
        weights_mode: if streamed { "stream" } else { "map" }.into(),
        head_streamed: streamed && head_streamed,
        reason: if head_streamed {
            format!("--weights {mode} --stream-head on")
        } else {
            format!("--weights {mode}")
        },
        weights,
        kv_cache_bytes,
        workspace_bytes,
        logits_bytes,
        overhead_bytes,
        total_bytes,
        budget_bytes: budget,
        fits: budget.is_none_or(|b| total_bytes <= b),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgetune_core::backend::CpuBackend;
    use edgetune_core::model::Workspace;
    use edgetune_core::testmodel::{SMALL, WeightTypes};

    fn small() -> ModelWeights {
        ModelWeights::from_preset(&SMALL, WeightTypes::parse("q8_0").unwrap()).unwrap()
    }

    const SHAPE: InferenceShape = InferenceShape {
        kv_positions: 300,
        chunk_tokens: 64,
        logit_rows: 1,
        threads: Some(2),
    };

    #[test]
    fn the_workspace_and_kv_cache_are_what_the_model_allocates() {
        let m = small();
        let p = plan_inference(&m, SHAPE, WeightsMode::Map, StreamHead::Off, None).unwrap();
        let ws = Workspace::new(&CpuBackend, &m.config, SHAPE.chunk_tokens).unwrap();
        assert_eq!(p.workspace_bytes, 4 * ws.n_values() as u64);
        let c = &m.config;
        assert_eq!(
            p.kv_cache_bytes,
            (2 * c.n_layer * 300 * c.kv_dim() * 4) as u64
        );
        assert_eq!(p.logits_bytes, 4 * c.n_vocab as u64);
        assert!(p.fits && p.weights_mode == "map");
        assert_eq!(
            p.total_bytes,
            p.weights.resident_bytes
                + p.kv_cache_bytes
                + p.workspace_bytes
                + p.logits_bytes
                + p.overhead_bytes
        );
    }

    #[test]
    fn auto_streams_only_when_mapping_does_not_fit_and_says_so() {
        let m = small();
        let map = plan_inference(&m, SHAPE, WeightsMode::Map, StreamHead::Off, None).unwrap();
        let stream = plan_inference(&m, SHAPE, WeightsMode::Stream, StreamHead::Off, None).unwrap();
        assert!(stream.total_bytes < map.total_bytes);
        let between = Some((map.total_bytes + stream.total_bytes) / 2);
        let auto = plan_inference(&m, SHAPE, WeightsMode::Auto, StreamHead::Off, between).unwrap();
        assert!(
            auto.fits && auto.weights_mode == "stream",
            "{}",
            auto.summary()
        );
        assert!(
            auto.reason.contains("chosen by the plan"),
            "{}",
            auto.reason
        );
        assert!(auto.weights.streamed.is_some());
        let roomy = plan_inference(
            &m,
            SHAPE,
            WeightsMode::Auto,
            StreamHead::Off,
            Some(map.total_bytes),
        )
        .unwrap();
        assert_eq!(roomy.weights_mode, "map");
        // Too small for either: refused with the numbers.
        let tiny = plan_inference(
            &m,
            SHAPE,
            WeightsMode::Auto,
            StreamHead::Auto,
            Some(1 << 20),
        )
        .unwrap();
        assert!(!tiny.fits);
        let e = tiny.check().unwrap_err().to_string();
        assert!(e.contains("KV cache") && e.contains("1.00 MiB"), "{e}");
        // Mapped by request under a budget it exceeds: refused too.
        let forced = plan_inference(&m, SHAPE, WeightsMode::Map, StreamHead::Off, between).unwrap();
        assert!(forced.check().is_err());
    }

    #[test]
    fn auto_streams_the_head_only_when_a_resident_head_does_not_fit() {
        let m = small();
        let head = plan_inference(&m, SHAPE, WeightsMode::Stream, StreamHead::On, None).unwrap();
        let resident =
            plan_inference(&m, SHAPE, WeightsMode::Stream, StreamHead::Off, None).unwrap();
        assert!(head.head_streamed && !resident.head_streamed);
        assert!(head.total_bytes < resident.total_bytes);
        // Between the two: auto (weights and head) streams both and says why.
        let between = Some((head.total_bytes + resident.total_bytes) / 2);
        let auto = plan_inference(&m, SHAPE, WeightsMode::Auto, StreamHead::Auto, between).unwrap();
        assert!(auto.fits && auto.head_streamed, "{}", auto.summary());
        assert!(auto.reason.contains("head resident"), "{}", auto.reason);
        // Enough for a resident head: it stays resident.
        let roomy = Some(resident.total_bytes);
        let auto = plan_inference(&m, SHAPE, WeightsMode::Stream, StreamHead::Auto, roomy).unwrap();
        assert!(auto.fits && !auto.head_streamed);
        // Mapped layers cannot stream the head.
        assert!(plan_inference(&m, SHAPE, WeightsMode::Map, StreamHead::On, None).is_err());
    }
}
