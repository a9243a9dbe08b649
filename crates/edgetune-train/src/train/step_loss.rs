//! A training step's loss: the final norm, the chunked cross-entropy over the output head
//! (resident: `backend/cpu/cross_entropy.rs`, with the KL anchor's term or per-task weights; or
//! streamed), and the final norm's backward into `dres`.
//!
//! With a streamed head (`--stream-head`, model/stream.rs) the head arrives in chunks of
//! vocabulary rows through the layers' staging buffers, and the cross-entropy runs in two
//! passes over them (backend/cpu/cross_entropy_vocab.rs): the first folds every token's
//! log-sum-exp and target logit, the second writes `dh` chunk by chunk.
//!
//! ```text
//! forward   … → L−1 → head chunk 0           (the last layer prefetches the head)
//! pass 1    chunk 0 → 1 → … → H−1 → chunk 0   (stats: RowLse per token, [T])
//! pass 2    chunk 0 → … → H−1 → L−1          (dh [T, D] += dz·W_c, via ce.dh_part [chunk, D])
//! backward  L−1 → …
//! ```
//!
//! The statistics `[T]` are allocated with the stream ([`TrainStep::set_weight_stream`]); the
//! per-chunk `dh` scratch is the arena's `ce.dh_part`. The multi-task loss weighs each token
//! by its row's task as the resident path does; the KL anchor is refused
//! (`config_kinds::stream_head_support`).

use super::step::TrainStep;
use super::step_weights::StepWeights;
use crate::train::plan_llama::Loss;
use edgetune_core::backend::cpu::cross_entropy_vocab::{
    RowLse, ce_vocab_grad, ce_vocab_loss, ce_vocab_stats,
};
use edgetune_core::backend::{Backend, CpuBackend};
use edgetune_core::data::IGNORE;
use edgetune_core::model::stream::{HEAD, LayerSource};
use edgetune_core::{Error, Result};

impl TrainStep {
    /// Final norm, chunked cross-entropy (gradient scaled by `scale`; with the KL anchor's
    /// term on replay rows when `anchored`) and the final norm's backward into `dres`.
    /// Returns `Σ loss` (the cross-entropy only: the KL sum is in [`TrainStep::last_kl`]).
    /// `head_next`: with a streamed head, the layer asked for after it.
    pub(super) fn loss(
        &mut self,
        w: &mut StepWeights<'_, '_>,
        scale: f32,
        anchored: bool,
        head_next: Option<usize>,
    ) -> Result<f64> {
        let m = w.model;
        let (ids, s) = (&self.ids, &self.sched);
        let eps = self.cfg.rms_eps;
        let be = CpuBackend;
        let [x, norm, rstd] = self.arena.views_mut_at(
            s.loss(Loss::FinalNorm),
            [ids.final_x, ids.final_norm, ids.final_rstd],
        )?;
        be.rmsnorm(x, &m.output_norm, eps, norm, Some(rstd))?;
        let loss = if w.head_streamed() {
            if anchored {
                return Err(Error::Invalid(
                    "training step: the KL anchor needs a resident head (--stream-head off)".into(),
                ));
            }
            self.streamed_head_loss(w, scale, head_next)?
        } else {
            self.resident_head_loss(w, scale, anchored)?
        };
        let (ids, s) = (&self.ids, &self.sched);
        let [x, rstd, dh, dres] = self.arena.views_mut_at(
            s.loss(Loss::FinalNormBackward),
            [ids.final_x, ids.final_rstd, ids.ce_dh, ids.dres],
        )?;
        be.rmsnorm_backward(x, &m.output_norm, rstd, dh, dres)?;
        Ok(loss)
    }

    /// The chunked cross-entropy over the resident (mapped, or read once) head.
    fn resident_head_loss(
        &mut self,
        w: &StepWeights<'_, '_>,
        scale: f32,
        anchored: bool,
    ) -> Result<f64> {
        let output = w.output()?;
        let (ids, s) = (&self.ids, &self.sched);
        let be = CpuBackend;
        let [norm, logits, dh] = self.arena.views_mut_at(
            s.loss(Loss::CrossEntropy),
            [ids.final_norm, ids.ce_logits, ids.ce_dh],
        )?;
        let chunk = self.shape.ce_chunk;
        let loss = if anchored {
            if !self.task_weights.is_empty() {
                return Err(Error::Invalid(
                    "training step: the KL anchor and the multi-task loss do not go together"
                        .into(),
                ));
            }
            Self::anchored_loss(
                &mut self.kl,
                &output,
                &self.targets,
                norm,
                scale,
                chunk,
                logits,
                dh,
            )?
        } else if self.task_weights.is_empty() {
            be.cross_entropy(norm, &output, &self.targets, scale, chunk, logits, dh)?
        } else {
            // Multi-task loss: one cross-entropy per row, scaled by its task's weight.
            let (l, d) = (self.shape.seq_len, self.cfg.dim);
            self.task_losses.fill((0.0, 0));
            let mut total = 0.0;
            for (r, &t) in self.row_tasks.iter().enumerate() {
                let (t0, t1) = (r * l, (r + 1) * l);
                let w = scale * self.task_weights[t as usize];
                let tg = &self.targets[t0..t1];
                let lr = be.cross_entropy(
                    &norm[t0 * d..t1 * d],
                    &output,
                    tg,
                    w,
                    chunk,
                    &mut *logits,
                    &mut dh[t0 * d..t1 * d],
                )?;
                let e = &mut self.task_losses[t as usize];
                e.0 += lr;
                e.1 += tg.iter().filter(|&&x| x != IGNORE).count();
                total += lr;
            }
            total
        };
        Ok(loss)
    }

    /// The chunked cross-entropy over the streamed head: `Σ loss` of the micro-batch, `dh` (the
    /// arena's `ce.dh`) the gradient of `scale · Σ loss` (per-task weights applied). `next`:
    /// the layer asked for after the head (the backward's first).
    pub(super) fn streamed_head_loss(
        &mut self,
        w: &mut StepWeights<'_, '_>,
        scale: f32,
        next: Option<usize>,
    ) -> Result<f64> {
        let stream = w.stream.as_deref_mut().ok_or_else(|| {
            Error::Invalid("training step: a streamed head needs the weight stream".into())
        })?;
        let (vocab, chunk, seq) = (self.cfg.n_vocab, self.shape.ce_chunk, self.shape.seq_len);
        let (ids, s) = (&self.ids, &self.sched);
        let [norm, logits, dh, dh_part] = self.arena.views_mut_at(
            s.loss(Loss::CrossEntropy),
            [ids.final_norm, ids.ce_logits, ids.ce_dh, ids.ce_dh_part],
        )?;
        let targets = &self.targets;
        let stats = &mut self.head_lse;
        if stats.len() != targets.len() {
            return Err(Error::Invalid(format!(
                "training step: {} head statistics for {} tokens",
                stats.len(),
                targets.len()
            )));
        }
        stats.fill(RowLse::EMPTY);
        // Pass 1; after its last chunk, pass 2's first.
        stream.with_head(Some(HEAD), &mut |hr| {
            ce_vocab_stats(norm, &hr.rows, hr.v0, vocab, targets, chunk, logits, stats)
        })?;
        let (row_tasks, task_weights) = (&self.row_tasks, &self.task_weights);
        let loss = if task_weights.is_empty() {
            ce_vocab_loss(stats, targets, chunk)?
        } else {
            // Per row (one task each): its unweighted loss and target count.
            self.task_losses.fill((0.0, 0));
            let mut total = 0.0;
            for (r, &t) in row_tasks.iter().enumerate() {
                let rows = r * seq..(r + 1) * seq;
                let lr = ce_vocab_loss(&stats[rows.clone()], &targets[rows.clone()], chunk)?;
                let e = self.task_losses.get_mut(t as usize).ok_or_else(|| {
                    Error::Invalid(format!("training step: row {r} has an unknown task {t}"))
                })?;
                e.0 += lr;
                e.1 += targets[rows].iter().filter(|&&x| x != IGNORE).count();
                total += lr;
            }
            total
        };
        let scale_of = |i: usize| -> f32 {
            match row_tasks.get(i / seq.max(1)) {
                Some(&t) if !task_weights.is_empty() => {
                    scale * task_weights.get(t as usize).copied().unwrap_or(f32::NAN)
                }
                _ => scale,
            }
        };
        let stats = &*stats;
        let mut first = true;
        stream.with_head(next, &mut |hr| {
            ce_vocab_grad(
                norm, &hr.rows, hr.v0, vocab, targets, &scale_of, chunk, stats, first, logits,
                dh_part, dh,
            )?;
            first = false;
            Ok(())
        })?;
        Ok(loss)
    }
}
