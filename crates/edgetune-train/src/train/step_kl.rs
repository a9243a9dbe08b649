//! The KL anchor of a training step (`train --kl-anchor λ`): on the answer tokens of replay
//! rows the loss gains `λ·KL(p_base ‖ p)` (backend/cpu/cross_entropy_kl.rs), `p_base` from the
//! same forward with every adapter switched off.
//!
//! A micro-batch with anchored tokens runs the layers twice: first the *base pass* (adapters
//! off, no dropout, into the same arena buffers at the same schedule steps, so the plan needs
//! nothing new), whose final normed hidden states `[T, D]` are kept in `base_h`; then the usual
//! forward, after which the fused loss computes the base logits chunk by chunk beside the
//! trained ones (`[chunk, vocab]` in `base_logits`). The base pass costs one forward without
//! adapters and one more output-head product, about a third more than a checkpointed step
//! (forward, recompute and the input-gradient products ≈ 3 forwards: the frozen weights get
//! no weight gradient); micro-batches without replay rows skip it.
//!
//! Memory: `base_h` `[T, D]`, `base_logits` `[chunk, vocab]` and the token weights `[T]`, f32,
//! allocated once by [`TrainStep::set_kl_anchor`] beside the arena (like ResLoRA's store) and
//! counted by the plan ([`kl_anchor_bytes`]). Every method's adapter can be switched off (the
//! frozen weights are never rewritten: OLoRA/PiSSA keep their correction inside the adapter),
//! so the anchor works for all of them; the device step does not implement it.

use super::adapter_set::AdapterSet;
use super::step::TrainStep;
use super::step_weights::StepWeights;
use crate::train::plan_llama::Loss;
use edgetune_core::adapters::Pass;
use edgetune_core::backend::cpu::cross_entropy_kl::{AnchoredLoss, cross_entropy_kl};
use edgetune_core::backend::{Backend, CpuBackend};
use edgetune_core::data::{Batch, IGNORE};
use edgetune_core::model::LlamaConfig;
use edgetune_core::quant::matmul::QuantMatrix;
use edgetune_core::{Error, Result};

/// The anchor's weight and buffers (see the module docs).
pub(super) struct KlAnchor {
    /// `λ`.
    weight: f32,
    /// The base pass's final normed hidden states `[T, D]`.
    base_h: Vec<f32>,
    /// One chunk of base logits `[ce_chunk, vocab]`.
    base_logits: Vec<f32>,
    /// `λ` on the tokens of replay rows, 0 elsewhere `[T]`.
    token_weights: Vec<f32>,
    /// `(Σ KL, anchored targets)` of the last micro-batch.
    last: (f64, usize),
}

/// Bytes the anchor holds for `tokens` per micro-batch and `ce_chunk` (0 when `weight` is 0).
pub fn kl_anchor_bytes(cfg: &LlamaConfig, tokens: usize, ce_chunk: usize, weight: f32) -> u64 {
    if weight <= 0.0 {
        return 0;
    }
    4 * (tokens as u64 * cfg.dim as u64 + ce_chunk as u64 * cfg.n_vocab as u64 + tokens as u64)
}

impl TrainStep {
    /// Turns the KL anchor on with weight `weight` (0: off), allocating its buffers now.
    pub fn set_kl_anchor(&mut self, weight: f32) -> Result<()> {
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(Error::Invalid(format!(
                "--kl-anchor must be finite and ≥ 0, got {weight}"
            )));
        }
        if weight == 0.0 {
            self.kl = None;
            return Ok(());
        }
        let t = self.tokens();
        self.kl = Some(KlAnchor {
            weight,
            base_h: vec![0.0; t * self.cfg.dim],
            base_logits: vec![0.0; self.shape.ce_chunk * self.cfg.n_vocab],
            token_weights: vec![0.0; t],
            last: (0.0, 0),
        });
        Ok(())
    }

    /// Bytes of the KL anchor's buffers, held outside the arena (0 when it is off).
    pub fn kl_anchor_bytes(&self) -> usize {
        self.kl.as_ref().map_or(0, |k| {
            4 * (k.base_h.len() + k.base_logits.len() + k.token_weights.len())
        })
    }

    /// `(Σ KL, anchored targets)` of the last micro-batch (`None` when the anchor is off).
    pub fn last_kl(&self) -> Option<(f64, usize)> {
        self.kl.as_ref().map(|k| k.last)
    }

    /// Sets the token weights from `batch`'s replay rows; true when some replay row has a
    /// target (the base pass and the fused loss are needed). Uses the shifted targets.
    pub(super) fn weigh_anchored_tokens(&mut self, batch: &Batch) -> bool {
        let l = self.shape.seq_len;
        let Some(k) = &mut self.kl else { return false };
        k.last = (0.0, 0);
        let mut anchored = 0;
        for (r, tw) in k.token_weights.chunks_mut(l).enumerate() {
            let on = batch.replay_rows.get(r).copied().unwrap_or(false);
            tw.fill(if on { k.weight } else { 0.0 });
            if on {
                anchored += self.targets[r * l..(r + 1) * l]
                    .iter()
                    .filter(|&&t| t != IGNORE)
                    .count();
            }
        }
        k.last.1 = anchored;
        anchored > 0
    }

    /// The base pass: every layer with the adapters off (no dropout), then the final norm into
    /// `base_h`. The usual forward runs after it and overwrites every buffer it wrote.
    pub(super) fn base_pass(
        &mut self,
        w: &mut StepWeights<'_, '_>,
        set: &AdapterSet,
        pass: Pass,
    ) -> Result<()> {
        let pass = Pass {
            training: false,
            ..pass
        };
        let model = w.model;
        self.adapters_off = true;
        // The usual forward follows, from layer 0.
        let run = self.forward_all(w, set, pass, Some(0));
        self.adapters_off = false;
        run?;
        let at = self.sched.loss(Loss::FinalNorm);
        let [x] = self.arena.views_mut_at(at, [self.ids.final_x])?;
        let k = self
            .kl
            .as_mut()
            .ok_or_else(|| Error::Invalid("training step: base pass without a KL anchor".into()))?;
        CpuBackend.rmsnorm(x, &model.output_norm, self.cfg.rms_eps, &mut k.base_h, None)
    }

    /// The fused cross-entropy + KL over `norm` (the trained final hidden states), writing
    /// `dh`; returns `Σ CE` (the KL sum is kept for [`TrainStep::last_kl`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn anchored_loss(
        kl: &mut Option<KlAnchor>,
        output: &QuantMatrix<'_>,
        targets: &[i32],
        norm: &[f32],
        scale: f32,
        chunk: usize,
        logits: &mut [f32],
        dh: &mut [f32],
    ) -> Result<f64> {
        let k = kl.as_mut().ok_or_else(|| {
            Error::Invalid("training step: anchored loss without a KL anchor".into())
        })?;
        let AnchoredLoss { ce, kl } = cross_entropy_kl(
            norm,
            &k.base_h,
            output,
            targets,
            &k.token_weights,
            scale,
            chunk,
            logits,
            &mut k.base_logits,
            dh,
        )?;
        k.last.0 = kl;
        Ok(ce)
    }
}
