//! MT-LoRA for a decoder-only LLM (docs/METHODS.md#mt-lora, the additive "matrixv2" form): a shared
//! LoRA on every token plus one LoRA per task, each sequence (batch row) using its task's.
//!
//! ```text
//! Y_n = X_n·Ŵᵀ + s_sh·D(X_n)·A_shᵀ·B_shᵀ + s_τ·D(X_n)·A_τᵀ·B_τᵀ      τ = task of row n
//! ```
//! `A_sh [r_sh, in]`, `B_sh [out, r_sh]`, `A_t [r_t, in]`, `B_t [out, r_t]`, one dropout mask
//! shared by both terms. The backward is docs/METHODS.md#the-lora-branch for the shared LoRA over
//! all tokens and for task `t`'s over its rows only; tasks absent from the micro-batch get zero
//! gradients (AdamW still moves them, docs/METHODS.md#zero-gradients-and-adamw, unless the
//! trainer's `mtlora_skip_absent` skips them).
//!
//! Routing. [`Adapter::forward`] takes `&self`, so the trainer tells the adapter the row tasks
//! of the next micro-batch with [`MtLora::set_row_tasks`] (the batch's [`crate::data::Batch::tasks`]
//! and its `seq_len`) before running it; with none set every row uses the export task
//! ([`MtLora::set_export_task`], 0 by default: how one task is served). Rows are
//! contiguous `seq_len` tokens, so a run of rows with one task is one GEMM (no gather).
//!
//! Export: one plain LoRA per task, `[s_sh·B_sh | s_t·B_t]·[A_sh; A_t]` of rank `r_sh + r_t`
//! with scale 1 ([`MtLora::export_for_task`]); [`Adapter::export`] gives the task chosen with
//! [`MtLora::set_export_task`] (0 by default), which is how `edgetune export --task NAME`
//! picks: NAME's index in [`MtLoraConfig::tasks`].

use std::borrow::Cow;

use rand::{SeedableRng, rngs::StdRng};

use super::base::{Dropout, take};
use super::mtlora_config::{TASK_A, TASK_B};
use super::pair::{LoraPair, export_delta};
use super::{Adapter, Export, ParamBuf, ParamInfo, Pass, TaskRouted, Workspace};
use crate::backend::check_len;
use crate::{Error, Result};

pub use super::mtlora_config::{AdaptiveTaskWeights, MAX_TASKS, MtLoraConfig};

/// An MT-LoRA branch on one linear `[out, in]`.
#[derive(Clone, Debug)]
pub struct MtLora {
    cfg: MtLoraConfig,
    /// The shared pair, then task 0's, task 1's, …: `[A_sh, B_sh, A_0, B_0, …]` in the order of
    /// [`Adapter::params`].
    pairs: Vec<LoraPair>,
    drop: Dropout,
    /// Task of each row of the next micro-batch (empty: all task 0) and the row length.
    row_tasks: Vec<u32>,
    seq_len: usize,
    export_task: usize,
}

impl MtLora {
    pub fn new(in_f: usize, out_f: usize, cfg: &MtLoraConfig, seed: u64) -> Result<MtLora> {
        cfg.validate()?;
        let mut pairs = vec![LoraPair::new("MT-LoRA", in_f, out_f, cfg.shared.rank)?];
        for _ in &cfg.tasks {
            pairs.push(LoraPair::new("MT-LoRA", in_f, out_f, cfg.task_rank)?);
        }
        let mut m = MtLora {
            cfg: cfg.clone(),
            pairs,
            drop: Dropout::new(cfg.shared.dropout, seed)?,
            row_tasks: Vec::new(),
            seq_len: 0,
            export_task: 0,
        };
        m.init(seed);
        Ok(m)
    }

    pub fn config(&self) -> &MtLoraConfig {
        &self.cfg
    }
    pub fn n_tasks(&self) -> usize {
        self.cfg.tasks.len()
    }

    /// The shared pair (`A_sh` `[r_sh, in]`, `B_sh` `[out, r_sh]`).
    fn shared(&self) -> &LoraPair {
        &self.pairs[0]
    }
    /// Task `t`'s pair (`A_t` `[r_t, in]`, `B_t` `[out, r_t]`).
    fn task(&self, t: usize) -> &LoraPair {
        &self.pairs[1 + t]
    }

    /// The dropout multipliers of `pass` (`None` when off), for references and tests.
    pub fn dropout_mask(&self, pass: Pass) -> Option<Vec<f32>> {
        self.drop.mask(pass, self.in_features())
    }

    /// Routes the next micro-batch: row `i` (tokens `i·seq_len..(i+1)·seq_len`) uses task
    /// `tasks[i]`. Fails on an unknown task id.
    pub fn set_row_tasks(&mut self, tasks: &[u32], seq_len: usize) -> Result<()> {
        if let Some((i, &t)) = tasks
            .iter()
            .enumerate()
            .find(|&(_, &t)| t as usize >= self.n_tasks())
        {
            return Err(Error::Invalid(format!(
                "MT-LoRA: row {i} has task id {t}, the adapter has {} tasks ({:?})",
                self.n_tasks(),
                self.cfg.tasks
            )));
        }
        if seq_len == 0 {
            return Err(Error::Invalid("MT-LoRA: row length 0".into()));
        }
        self.row_tasks.clear();
        self.row_tasks.extend_from_slice(tasks);
        self.seq_len = seq_len;
        Ok(())
    }

    /// The task [`Adapter::export`] and [`Adapter::delta_weight`] use.
    pub fn set_export_task(&mut self, task: usize) -> Result<()> {
        if task >= self.n_tasks() {
            return Err(Error::Invalid(format!(
                "MT-LoRA: task {task} of {} ({:?})",
                self.n_tasks(),
                self.cfg.tasks
            )));
        }
        self.export_task = task;
        Ok(())
    }

    /// Task `t`'s merged adapter as a plain LoRA `[s_sh·B_sh | s_t·B_t]·[A_sh; A_t]` of rank
    /// `r_sh + r_t`, scale 1 (`A` `[r_sh + r_t, in]`, `B` `[out, r_sh + r_t]`).
    pub fn export_for_task(&self, t: usize) -> Result<Export<'static>> {
        if t >= self.n_tasks() {
            return Err(Error::Invalid(format!(
                "MT-LoRA: no task {t} (the adapter has {})",
                self.n_tasks()
            )));
        }
        let (rs, rt, outf) = (
            self.cfg.shared.rank,
            self.cfg.task_rank,
            self.out_features(),
        );
        let rank = rs + rt;
        let (shared, task) = (self.shared(), self.task(t));
        let mut a = shared.a().to_vec();
        a.extend_from_slice(task.a());
        let (ss, st) = (self.cfg.shared.scale(), self.cfg.task_scale());
        let mut b = vec![0.0f32; outf * rank];
        for o in 0..outf {
            for j in 0..rs {
                b[o * rank + j] = ss * shared.b()[o * rs + j];
            }
            for j in 0..rt {
                b[o * rank + rs + j] = st * task.b()[o * rt + j];
            }
        }
        Ok(Export::LowRank {
            a: Cow::Owned(a),
            b: Cow::Owned(b),
            rank,
            scale: 1.0,
        })
    }

    /// `out = β·out + dH_sh·A_sh + dH_τ·A_τ` (per run of rows) `[n, in]`.
    fn dh_a(
        &self,
        dhs: &[f32],
        dht: &[f32],
        runs: Runs<'_>,
        out: &mut [f32],
        beta: f32,
    ) -> Result<()> {
        let (inf, rt) = (self.in_features(), self.cfg.task_rank);
        let n = out.len() / inf;
        self.shared().mul_a(dhs, n, 1.0, beta, out)?;
        for (t0, len, task) in runs {
            let dh = &dht[t0 * rt..(t0 + len) * rt];
            let o = &mut out[t0 * inf..(t0 + len) * inf];
            self.task(task).mul_a(dh, len, 1.0, 1.0, o)?;
        }
        Ok(())
    }

    /// The runs of equal task over the `n` tokens of a pass, as token ranges
    /// `(t0, len, task)` (an iterator over the row tasks: nothing is allocated per pass).
    fn runs(&self, n: usize) -> Result<Runs<'_>> {
        if !self.row_tasks.is_empty() && self.row_tasks.len() * self.seq_len != n {
            return Err(Error::Invalid(format!(
                "MT-LoRA: {} row tasks of {} tokens set, the pass has {n} tokens",
                self.row_tasks.len(),
                self.seq_len
            )));
        }
        Ok(Runs {
            tasks: &self.row_tasks,
            seq_len: self.seq_len,
            row: 0,
            whole: self
                .row_tasks
                .is_empty()
                .then_some((0, n, self.export_task)),
        })
    }
}

/// Runs of rows with one task (see [`MtLora::runs`]); without row tasks, one run of every
/// token with the export task.
#[derive(Clone, Debug)]
struct Runs<'a> {
    tasks: &'a [u32],
    seq_len: usize,
    row: usize,
    whole: Option<(usize, usize, usize)>,
}

impl Iterator for Runs<'_> {
    type Item = (usize, usize, usize);

    fn next(&mut self) -> Option<(usize, usize, usize)> {
        if let Some(w) = self.whole.take() {
            return Some(w);
        }
        let start = self.row;
        let &task = self.tasks.get(start)?;
        while self.tasks.get(self.row) == Some(&task) {
            self.row += 1;
        }
        let l = self.seq_len;
        Some((start * l, (self.row - start) * l, task as usize))
    }
}

impl Adapter for MtLora {
    fn method(&self) -> &'static str {
        "mtlora"
    }
    fn in_features(&self) -> usize {
        self.shared().in_f()
    }
    fn out_features(&self) -> usize {
        self.shared().out_f()
    }

    /// `lora_A`, `lora_B` (shared), then `task<i>_lora_A`, `task<i>_lora_B` per task `i`.
    fn params(&self) -> Vec<ParamInfo> {
        let mut p = self.shared().params("lora_A", "lora_B");
        for i in 0..self.n_tasks() {
            p.extend(self.task(i).params(TASK_A[i], TASK_B[i]));
        }
        p
    }

    /// Σ of the tensors' sizes, without building [`Adapter::params`] (the backward checks it
    /// every pass, which must not allocate).
    fn n_params(&self) -> usize {
        self.pairs.iter().map(LoraPair::numel).sum()
    }

    fn param_buf(&self, i: usize) -> Option<&ParamBuf> {
        self.pairs.get(i / 2)?.param_buf(i % 2, [])
    }

    fn param_buf_mut(&mut self, i: usize) -> Option<&mut ParamBuf> {
        self.pairs.get_mut(i / 2)?.param_buf_mut(i % 2, [])
    }

    /// kaiming(√5) `A`s, zero `B`s (docs/METHODS.md#mt-lora), every `A` from one stream.
    fn init(&mut self, seed: u64) {
        self.drop.seed = seed;
        let mut rng = StdRng::seed_from_u64(seed);
        for pair in &mut self.pairs {
            pair.init_from(&mut rng);
        }
    }

    /// The shared LoRA's `s_sh` (the task terms use [`MtLoraConfig::task_scale`]).
    fn scale(&self) -> f32 {
        self.cfg.shared.scale()
    }

    /// Saved: `H_sh` (r_sh) and the token's task `H_τ` (r_t). Scratch: `dH_sh`, `dH_τ` in the
    /// backward, plus `X_d` / `dX_d` (in) with dropout.
    fn workspace(&self) -> Workspace {
        let r = self.cfg.shared.rank + self.cfg.task_rank;
        let drop = self.drop.input_len(self.in_features());
        Workspace {
            saved_per_token: r,
            scratch_per_token: r + drop,
        }
    }

    fn forward(
        &self,
        pass: Pass,
        x: &[f32],
        y: &mut [f32],
        saved: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<()> {
        let (n, inf, outf) = (pass.n, self.in_features(), self.out_features());
        let (rs, rt) = (self.cfg.shared.rank, self.cfg.task_rank);
        self.shared().check_forward("mtlora forward", n, x, y)?;
        let runs = self.runs(n)?;
        let mut saved = saved;
        let hs = take("mtlora", "saved", &mut saved, n * rs)?;
        let ht = take("mtlora", "saved", &mut saved, n * rt)?;
        let mut scratch = scratch;
        let input = self.drop.input(pass, x, "mtlora", &mut scratch)?;
        let xd = input.xd();
        // Shared: H_sh = X_d·A_shᵀ, Y += s_sh·H_sh·B_shᵀ.
        self.shared().mul_at(xd, n, 0.0, hs)?;
        self.shared().mul_bt(hs, n, self.scale(), 1.0, y)?;
        // Each run of one task's rows: H_τ = X_d·A_τᵀ, Y += s_τ·H_τ·B_τᵀ.
        let st = self.cfg.task_scale();
        for (t0, len, task) in runs {
            let pair = self.task(task);
            let h = &mut ht[t0 * rt..(t0 + len) * rt];
            pair.mul_at(&xd[t0 * inf..(t0 + len) * inf], len, 0.0, h)?;
            let yr = &mut y[t0 * outf..(t0 + len) * outf];
            pair.mul_bt(h, len, st, 1.0, yr)?;
        }
        Ok(())
    }

    fn backward(
        &self,
        pass: Pass,
        x: &[f32],
        g: &[f32],
        saved: &[f32],
        scratch: &mut [f32],
        dx: &mut [f32],
        grads: &mut [f32],
    ) -> Result<()> {
        let (n, inf, outf) = (pass.n, self.in_features(), self.out_features());
        let (rs, rt) = (self.cfg.shared.rank, self.cfg.task_rank);
        let (ss, st) = (self.scale(), self.cfg.task_scale());
        self.shared()
            .check_backward("mtlora backward", n, x, g, dx)?;
        check_len("mtlora backward", "grads", grads.len(), 1, self.n_params())?;
        let runs = self.runs(n)?;
        let (hs, ht) = (
            saved.get(..n * rs).ok_or_else(|| short(n * (rs + rt)))?,
            saved
                .get(n * rs..n * (rs + rt))
                .ok_or_else(|| short(n * (rs + rt)))?,
        );
        // grads = [dA_sh, dB_sh, dA_0, dB_0, …]; absent tasks stay zero. Task `t`'s pair is
        // at `shared + t·per_task` (indexed, so nothing is collected per pass).
        grads.fill(0.0);
        let shared = self.shared();
        let (da_sh, db_sh, task_grads) = shared.split_grads(grads);
        let per_task = rt * inf + outf * rt;
        let mut scratch = scratch;
        let dhs = take("mtlora", "scratch", &mut scratch, n * rs)?;
        let dht = take("mtlora", "scratch", &mut scratch, n * rt)?;
        let input = self.drop.input(pass, x, "mtlora", &mut scratch)?;
        let xd = input.xd();
        // Shared (docs/METHODS.md#the-lora-branch): dB = s·Gᵀ·H, dH = s·G·B, dA = dHᵀ·X_d.
        shared.grad_b(g, hs, n, ss, 0.0, db_sh)?;
        shared.mul_b(g, n, ss, 0.0, dhs)?;
        shared.grad_a(dhs, xd, n, 0.0, da_sh)?;
        // Task runs: the same restricted to the run's rows, accumulated per task.
        for (t0, len, task) in runs.clone() {
            let pair = self.task(task);
            let grads = task_grads
                .get_mut(task * per_task..(task + 1) * per_task)
                .ok_or_else(|| short(per_task))?;
            let (da, db, _) = pair.split_grads(grads);
            let (gr, hr) = (
                &g[t0 * outf..(t0 + len) * outf],
                &ht[t0 * rt..(t0 + len) * rt],
            );
            pair.grad_b(gr, hr, len, st, 1.0, db)?;
            let dh = &mut dht[t0 * rt..(t0 + len) * rt];
            pair.mul_b(gr, len, st, 0.0, dh)?;
            pair.grad_a(dh, &xd[t0 * inf..(t0 + len) * inf], len, 1.0, da)?;
        }
        // dX += D'(dH_sh·A_sh + dH_τ·A_τ).
        input.add_grad(dx, |out, beta| self.dh_a(dhs, dht, runs, out, beta))
    }

    /// `ΔW` of the export task: `s_sh·B_sh·A_sh + s_t·B_t·A_t`.
    fn delta_weight(&self, dw: &mut [f32]) -> Result<()> {
        let export = self.export_for_task(self.export_task)?;
        export_delta(&export, self.out_features(), self.in_features(), dw)
    }

    fn export(&self) -> Export<'_> {
        // export_task is validated by set_export_task, so this cannot fail.
        self.export_for_task(self.export_task)
            .unwrap_or(Export::MergeOnly)
    }

    fn task_routed(&self) -> Option<&dyn TaskRouted> {
        Some(self)
    }

    fn task_routed_mut(&mut self) -> Option<&mut dyn TaskRouted> {
        Some(self)
    }
}

impl TaskRouted for MtLora {
    fn task_names(&self) -> &[String] {
        &self.cfg.tasks
    }

    fn set_row_tasks(&mut self, tasks: &[u32], seq_len: usize) -> Result<()> {
        MtLora::set_row_tasks(self, tasks, seq_len)
    }

    fn set_export_task(&mut self, task: usize) -> Result<()> {
        MtLora::set_export_task(self, task)
    }

    /// Params `[A_sh, B_sh, A_0, B_0, …]`: task `(p − 2)/2` from `p = 2` on.
    fn task_of_param(&self, param: usize) -> Option<usize> {
        (param >= 2).then(|| (param - 2) / 2)
    }
}

fn short(need: usize) -> Error {
    Error::Invalid(format!(
        "mtlora: saved workspace shorter than {need} values"
    ))
}
