//! What a [`Trainer`] does between optimizer steps: held-out loss, DyLoRA's choice of the
//! export rank, parameters replaced from outside (federated averaging), and checkpoints.

use std::path::PathBuf;

use super::Trainer;
use crate::train::adapter_set::AdapterSet;
use crate::train::checkpoint::{self, RunState};
use edgetune_core::data::Batch;
use edgetune_core::{Error, Result};

impl Trainer<'_> {
    /// Replaces adapter parameters from outside the optimizer (federated averaging, an
    /// adapter received over the network): `f` writes into the set (through
    /// [`edgetune_core::adapters::Adapter::param_mut`]; it must not change shapes), then a device
    /// engine gets the new values. The optimizer state (moments, step count, hence the
    /// learning-rate schedule) is kept: the next step trains from the new values.
    pub fn replace_params<R>(&mut self, f: impl FnOnce(&mut AdapterSet) -> Result<R>) -> Result<R> {
        let r = f(&mut self.set)?;
        self.engine.sync_params(&self.set)?;
        Ok(r)
    }

    /// The loss of `batch` under the current adapters, without dropout or gradients:
    /// `(Σ loss over the batch's targets, targets)` — held-out evaluation between steps. The
    /// CPU step only (after [`Trainer::use_device`] its arena is freed: an error).
    pub fn eval_loss(&mut self, batch: &Batch) -> Result<(f64, usize)> {
        if !self.engine.is_cpu() {
            return Err(Error::Invalid(
                "eval_loss runs on the CPU step; this trainer runs on a device".into(),
            ));
        }
        self.step
            .eval_loss(self.llama.backend_model(), &self.set, batch)
    }

    /// DyLoRA / QDyLoRA without `--dylora-eval-rank` (docs/METHODS.md#dylora-and-qdylora,
    /// "evaluation at every rank"): evaluates every rank `1..=r_max` on the last step's
    /// micro-batches (no dropout; a proxy for a held-out set, which the trainer does not have),
    /// makes the lowest-loss rank (ties: the smaller) every adapter's evaluation and export rank,
    /// and returns it with the mean loss per rank. `None` for other methods (no adapter has
    /// nested ranks), when a rank was given, or before any step.
    pub fn choose_dylora_rank(&mut self) -> Result<Option<(usize, Vec<f64>)>> {
        if !self.set.iter().any(|(_, _, a)| a.nested_ranks().is_some())
            || self.cfg.method_opts.dylora_eval_rank.is_some()
            || self.completed() == 0
        {
            return Ok(None);
        }
        let r_max = self.set.lora_config().rank;
        let model = self.llama.backend_model();
        let mut losses = Vec::with_capacity(r_max);
        for b in 1..=r_max {
            set_dylora_eval_rank(&mut self.set, b)?;
            let (mut sum, mut n) = (0.0, 0usize);
            for batch in &self.batches {
                let (l, c) = self.step.eval_loss(model, &self.set, batch)?;
                sum += l;
                n += c;
            }
            losses.push(sum / n.max(1) as f64);
        }
        let best = losses
            .iter()
            .enumerate()
            .fold(
                (0, f64::INFINITY),
                |(bi, bl), (i, &l)| {
                    if l < bl { (i, l) } else { (bi, bl) }
                },
            )
            .0
            + 1;
        set_dylora_eval_rank(&mut self.set, best)?;
        Ok(Some((best, losses)))
    }

    /// Writes a checkpoint of the current state.
    pub fn checkpoint(&self) -> Result<PathBuf> {
        if self.opt.fused_in_flight() {
            return Err(Error::Invalid(format!(
                "no checkpoint: a fused step stopped part-way (some layers' adapters updated, \
                 others not); resume from the last checkpoint in {}",
                checkpoint::checkpoints_dir(&self.cfg.out).display()
            )));
        }
        let state = RunState {
            replay_cursor: self.batcher.replay_cursor(),
            model_fingerprint: Some(self.model_fingerprint.clone()),
            ..RunState::new(
                self.completed(),
                self.batcher.cursor(),
                self.tokens,
                self.elapsed_s,
                &self.cfg,
            )
        };
        let dir = checkpoint::save_with(
            &self.cfg.out,
            &self.set,
            &self.opt,
            &state,
            Some(&self.hooks),
        )?;
        // The save read every adapter: paged weights go back to the file.
        self.set.release_all()?;
        Ok(dir)
    }
}

/// Sets the evaluation / export rank of every adapter of `set` with nested ranks (DyLoRA).
fn set_dylora_eval_rank(set: &mut AdapterSet, b: usize) -> Result<()> {
    for (_, _, a) in set.iter_mut() {
        if let Some(d) = a.nested_ranks_mut() {
            d.set_eval_rank(b)?;
        }
    }
    Ok(())
}
