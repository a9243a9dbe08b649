//! MT-LoRA in the trainer (docs/METHODS.md#mt-lora, #task-weights): the task names from the data,
//! the routing of every micro-batch's rows to their task's LoRA, the multi-task loss `L = Σ_t
//! w_t·L_t` (`L_t` the mean cross-entropy over task `t`'s targets of the optimizer step, `w_t = 1`
//! or the accuracy-adaptive `γ_t`), and the per-task losses for the metrics.
//!
//! The step's loss gradient is `loss_scale · w'_t` per row of task `t`, with the trainer's
//! `loss_scale = 1/N` (`N` targets of the step), so [`MtTasks::weigh`] hands it
//! `w'_t = w_t·N/N_t` (`N_t` the step's targets of task `t`, over all micro-batches): the
//! gradient is that of `Σ_t w_t·L_t`. With `T` tasks present and uniform weights this is `T`
//! times the mean loss's gradient (docs/METHODS.md#mt-lora). The reported step loss stays the
//! plain mean over all targets, comparable with the other methods.
//!
//! Adaptive weights (docs/METHODS.md#task-weights): "accuracy" needs an evaluation the trainer does
//! not have (no validation split, and the step keeps no logits to take an argmax of), so task `t`'s
//! accuracy is `acc_t = exp(−L̄_t)`, the geometric-mean probability the model gives task `t`'s
//! target tokens (1 / perplexity, in `(0, 1]`), with `L̄_t` the mean training loss of task `t` over
//! the last `task_weights_every` steps. Every that many steps each task seen in the window updates
//! `γ_t ← γ_t·exp(α·(1 − acc_t))`, then the `γ` are rescaled to sum to `T`
//! ([`AdaptiveTaskWeights`]).
//!
//! Nothing here allocates after [`MtTasks::new`] (the step's zero-allocation rule).

use super::adapter_set::AdapterSet;
use super::checkpoint;
use super::config::TrainConfig;
use super::method::{MethodOptions, TaskWeights};
use super::method_hooks::StepHooks;
use super::optimizer::Optimizer;
use super::step::TrainStep;
use edgetune_core::adapters::mtlora::AdaptiveTaskWeights;
use edgetune_core::adapters::{StateSource, StateTensor};
use edgetune_core::data::tasks::DEFAULT_TASK;
use edgetune_core::data::{Batch, Dataset, IGNORE, formats};
use edgetune_core::{Error, Result};

/// The task weights `γ` `[T]` (f32) and the adaptive window's loss sums and target counts
/// `[T]` (F64: sums must come back bit for bit) in the method state.
const MT_GAMMA: &str = "mtlora.gamma";
const MT_WIN_LOSS: &str = "mtlora.window_loss";
const MT_WIN_TARGETS: &str = "mtlora.window_targets";

/// The multi-task loss state of a run (`T` tasks; every buffer `[T]`, sized once).
#[derive(Clone, Debug)]
pub struct MtTasks {
    weighting: TaskWeights,
    every: u64,
    gamma: AdaptiveTaskWeights,
    /// `w'_t` of the current step (handed to the step).
    step_w: Vec<f32>,
    /// The current step's targets and loss sum per task.
    step_n: Vec<u64>,
    step_sum: Vec<f64>,
    /// The adaptive window's targets and loss sum per task.
    win_n: Vec<u64>,
    win_sum: Vec<f64>,
    /// The last step's mean loss per task (NaN: absent from the step).
    last: Vec<f64>,
    /// `--mtlora-skip-absent`: per parameter tensor of the set (the optimizer's ids), whether
    /// the current step skips it; empty when the option is off.
    skip: Vec<bool>,
}

impl MtTasks {
    /// The last step's mean loss and the weight of each task, by name (`names[i]` is task
    /// `i`), for `metrics.jsonl`; tasks absent from the step have no loss.
    pub fn metrics(&self, names: &[String]) -> (serde_json::Value, serde_json::Value) {
        let mut losses = serde_json::Map::new();
        let mut weights = serde_json::Map::new();
        for (i, name) in names.iter().enumerate() {
            if let Some(&l) = self.last_losses().get(i).filter(|l| l.is_finite()) {
                losses.insert(name.clone(), l.into());
            }
            if let Some(&w) = self.weights().get(i) {
                weights.insert(name.clone(), (w as f64).into());
            }
        }
        (losses.into(), weights.into())
    }

    pub fn new(n_tasks: usize, opts: &MethodOptions) -> Result<MtTasks> {
        let n = n_tasks.max(1);
        Ok(MtTasks {
            weighting: opts.task_weights,
            every: opts.task_weights_every.max(1),
            gamma: AdaptiveTaskWeights::new(n, opts.task_weights_alpha)?,
            step_w: vec![0.0; n],
            step_n: vec![0; n],
            step_sum: vec![0.0; n],
            win_n: vec![0; n],
            win_sum: vec![0.0; n],
            last: vec![f64::NAN; n],
            skip: Vec::new(),
        })
    }

    /// Turns on "only update the tasks present" (docs/METHODS.md#mt-lora) for a set of
    /// `n_param_tensors` parameter tensors: [`MtTasks::skip_mask`] then marks the task LoRAs of
    /// absent tasks.
    pub fn skip_absent(&mut self, n_param_tensors: usize) {
        self.skip = vec![false; n_param_tensors];
    }

    /// With [`MtTasks::skip_absent`] on: after [`MtTasks::weigh`], the optimizer's skip mask
    /// for `set` (true for `task<t>_lora_A/B` of every MT-LoRA adapter whose task `t` has no
    /// target in the step: its gradient is zero, docs/METHODS.md#zero-gradients-and-adamw). `None`
    /// when off. No allocation.
    pub fn skip_mask(&mut self, set: &AdapterSet) -> Option<&[bool]> {
        if self.skip.is_empty() {
            return None;
        }
        let mut id = 0;
        for (_, _, a) in set.iter() {
            let routed = a.task_routed();
            let mut p = 0;
            while a.param(p).is_some() {
                let task = routed.and_then(|r| r.task_of_param(p));
                let absent = task.is_some_and(|t| self.step_n.get(t).is_none_or(|&n| n == 0));
                if let Some(s) = self.skip.get_mut(id) {
                    *s = absent;
                }
                id += 1;
                p += 1;
            }
        }
        Some(&self.skip)
    }

    pub fn n_tasks(&self) -> usize {
        self.step_w.len()
    }

    /// Bytes of the buffers (`method_plan::MT_BYTES_PER_TASK` per task; the skip mask, one
    /// byte per parameter tensor, is left out as negligible).
    pub fn bytes(&self) -> usize {
        4 * (self.gamma.gamma.len() + self.step_w.len())
            + 8 * (self.step_n.len() + self.step_sum.len())
            + 8 * (self.win_n.len() + self.win_sum.len() + self.last.len())
    }

    /// The task weights `w_t` (`γ_t`; all 1 under uniform weighting).
    pub fn weights(&self) -> &[f32] {
        self.gamma.weights()
    }

    /// The last step's mean loss per task (NaN for a task absent from it).
    pub fn last_losses(&self) -> &[f64] {
        &self.last
    }

    /// Before the micro-batches of a step: counts each task's targets over `batches` and
    /// gives the step the row weights `w_t·N/N_t` (module doc).
    pub fn weigh(&mut self, batches: &[Batch], step: &mut TrainStep) -> Result<()> {
        self.count(batches)?;
        step.set_task_weights(&self.step_w)
    }

    /// [`MtTasks::weigh`] without the step: the step's targets per task and `w'_t`.
    fn count(&mut self, batches: &[Batch]) -> Result<&[f32]> {
        self.step_n.fill(0);
        self.step_sum.fill(0.0);
        let nt = self.n_tasks();
        for b in batches {
            let l = b.seq_len;
            for (r, &t) in b.tasks.iter().enumerate().take(b.batch_size) {
                let Some(n) = self.step_n.get_mut(t as usize) else {
                    return Err(Error::Invalid(format!(
                        "MT-LoRA: row {r} has task id {t}, the run has {nt} tasks"
                    )));
                };
                let row = &b.labels[r * l + 1..(r + 1) * l];
                *n += row.iter().filter(|&&x| x != IGNORE).count() as u64;
            }
        }
        let total: u64 = self.step_n.iter().sum();
        for ((w, &n), &g) in self
            .step_w
            .iter_mut()
            .zip(&self.step_n)
            .zip(&self.gamma.gamma)
        {
            *w = if n == 0 {
                0.0
            } else {
                (g as f64 * total as f64 / n as f64) as f32
            };
        }
        Ok(&self.step_w)
    }

    /// After each micro-batch: adds its per-task `(Σ loss, targets)`.
    pub fn add_micro_batch(&mut self, step: &TrainStep) {
        for (s, &(l, _)) in self.step_sum.iter_mut().zip(step.task_losses()) {
            *s += l;
        }
    }

    /// After the update of 1-based step `step_no`: the step's mean losses, the window, and
    /// (adaptive, every `task_weights_every` steps) the `γ` update.
    pub fn finish_step(&mut self, step_no: u64) -> Result<()> {
        for t in 0..self.n_tasks() {
            let n = self.step_n[t];
            self.last[t] = if n == 0 {
                f64::NAN
            } else {
                self.step_sum[t] / n as f64
            };
            self.win_n[t] += n;
            self.win_sum[t] += self.step_sum[t];
        }
        if !step_no.is_multiple_of(self.every) {
            return Ok(());
        }
        if self.weighting == TaskWeights::Adaptive {
            for t in 0..self.n_tasks() {
                if self.win_n[t] > 0 {
                    let acc = (-self.win_sum[t] / self.win_n[t] as f64).exp();
                    self.gamma.update(t, acc.clamp(0.0, 1.0))?;
                }
            }
        }
        self.win_n.fill(0);
        self.win_sum.fill(0.0);
        Ok(())
    }

    /// `(γ, window loss sums, window target counts)`, for checkpoints.
    pub fn state(&self) -> (&[f32], &[f64], &[u64]) {
        (&self.gamma.gamma, &self.win_sum, &self.win_n)
    }

    /// Restores [`MtTasks::state`].
    pub fn set_state(&mut self, gamma: &[f32], win_sum: &[f64], win_n: &[u64]) -> Result<()> {
        let n = self.n_tasks();
        if gamma.len() != n || win_sum.len() != n || win_n.len() != n {
            return Err(Error::Invalid(format!(
                "MT-LoRA task state: {}/{}/{} values for {n} tasks",
                gamma.len(),
                win_sum.len(),
                win_n.len()
            )));
        }
        self.gamma.gamma.copy_from_slice(gamma);
        self.win_sum.copy_from_slice(win_sum);
        self.win_n.copy_from_slice(win_n);
        Ok(())
    }
}

/// MT-LoRA's part in the step (`method_hooks.rs`): the row weights, the routing, the
/// per-task losses, the skip mask and the adaptive weights, and their checkpoint state.
impl StepHooks for MtTasks {
    fn bytes(&self) -> usize {
        MtTasks::bytes(self)
    }

    fn weigh_tasks(&mut self, batches: &[Batch], step: &mut TrainStep) -> Result<()> {
        self.weigh(batches, step)
    }

    fn route(&mut self, set: &mut AdapterSet, batch: &Batch) -> Result<()> {
        route(set, batch)
    }

    fn after_micro_batch(&mut self, step: &TrainStep) {
        self.add_micro_batch(step);
    }

    fn before_update(&mut self, set: &AdapterSet, opt: &mut Optimizer) -> Result<()> {
        opt.set_skip(self.skip_mask(set))
    }

    fn after_update(&mut self, t: u64, _: &mut TrainStep, _: &mut AdapterSet) -> Result<()> {
        self.finish_step(t + 1)
    }

    fn tasks(&self) -> Option<&MtTasks> {
        Some(self)
    }

    /// `mtlora.gamma`, `mtlora.window_loss`, `mtlora.window_targets` (the task names are
    /// `method_opts.mtlora_tasks` in `method.json`).
    fn checkpoint_state(&self) -> Vec<StateTensor<'_>> {
        let (gamma, win_loss, win_n) = self.state();
        vec![
            StateTensor::f32_vec(MT_GAMMA, gamma.into()),
            StateTensor::f64_vec(MT_WIN_LOSS, win_loss.to_vec()),
            StateTensor::f64_vec(MT_WIN_TARGETS, win_n.iter().map(|&n| n as f64).collect()),
        ]
    }

    fn restore_state(&mut self, src: &dyn StateSource) -> Result<()> {
        let n = self.n_tasks();
        let gamma = src.f32s(MT_GAMMA, n)?;
        let win_loss = src.f64s(MT_WIN_LOSS, Some(n))?;
        let win_n: Vec<u64> = src
            .f64s(MT_WIN_TARGETS, Some(n))?
            .iter()
            .map(|&v| v as u64)
            .collect();
        self.set_state(&gamma, &win_loss, &win_n)
    }
}

/// Routes `batch`'s rows: every task-routed (MT-LoRA) adapter of `set` gets the row tasks
/// (allocates nothing once the adapters have seen a batch of this size).
pub fn route(set: &mut AdapterSet, batch: &Batch) -> Result<()> {
    for (_, _, a) in set.iter_mut() {
        if let Some(m) = a.task_routed_mut() {
            m.set_row_tasks(&batch.tasks, batch.seq_len)?;
        }
    }
    Ok(())
}

/// The task count of `set`'s task-routed (MT-LoRA) adapters (the first one's; 0 without any).
pub fn set_task_count(set: &AdapterSet) -> usize {
    set.iter()
        .find_map(|(_, _, a)| a.task_routed().map(|m| m.task_names().len()))
        .unwrap_or(0)
}

/// For an MT-LoRA run: loads the data and fills `method_opts.mtlora_tasks` (names given there
/// keep their ids; the data's other names follow in first-seen order; records without a
/// `task` are `default`). Resuming, the checkpoint's names keep their ids and the data must
/// have exactly those tasks. Other methods: the configuration as given and no data.
pub fn prepare(cfg: &TrainConfig) -> Result<(TrainConfig, Option<Dataset>)> {
    let mut cfg = cfg.clone();
    if !cfg.method.task_routed() {
        return Ok((cfg, None));
    }
    let data = formats::load(&cfg.data, cfg.format)?;
    let mut in_data: Vec<String> = Vec::new();
    for ex in &data.examples {
        let name = ex.task.as_deref().unwrap_or(DEFAULT_TASK);
        if !in_data.iter().any(|n| n == name) {
            in_data.push(name.to_string());
        }
    }
    let saved = match cfg.resume {
        true => match checkpoint::resume_point(&cfg.out, cfg.resume_fallback)? {
            Some(dir) => {
                let state = checkpoint::read_state(&dir)?;
                Some((dir, state.config.method_opts.mtlora_tasks))
            }
            None => None,
        },
        false => None,
    };
    let mut names = match &saved {
        Some((_, s)) if !s.is_empty() => s.clone(),
        _ => cfg.method_opts.mtlora_tasks.clone(),
    };
    if let Some((dir, s)) = &saved {
        let same = s.len() == in_data.len() && s.iter().all(|n| in_data.contains(n));
        if !s.is_empty() && !same {
            return Err(Error::Invalid(format!(
                "{}: --resume: the checkpoint was trained on the tasks [{}], the data {} has \
                 [{}]; MT-LoRA resumes only on data with the same tasks",
                dir.display(),
                s.join(", "),
                cfg.data.display(),
                in_data.join(", ")
            )));
        }
    }
    for n in in_data {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let max = edgetune_core::adapters::mtlora::MAX_TASKS;
    if names.len() > max {
        return Err(Error::Invalid(format!(
            "{}: {} tasks ({}); MT-LoRA supports at most {max}",
            cfg.data.display(),
            names.len(),
            names.join(", ")
        )));
    }
    cfg.method_opts.mtlora_tasks = names;
    Ok((cfg, Some(data)))
}

/// The task names of `set`'s MT-LoRA adapters, index = task id; `flag` (the option asking,
/// `--task NAME`, `--all-tasks`) names it in the error when `set` is not MT-LoRA.
pub fn task_names(set: &AdapterSet, flag: &str) -> Result<Vec<String>> {
    set.iter()
        .find_map(|(_, _, a)| a.task_routed())
        .map(|m| m.task_names().to_vec())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{flag}: the adapter is not MT-LoRA (only MT-LoRA has tasks)"
            ))
        })
}

/// Makes task `name` the export (and serving) task of every MT-LoRA adapter of `set`;
/// returns its id. An unknown name is an error listing the known ones.
pub fn select_task(set: &mut AdapterSet, name: &str) -> Result<usize> {
    let names = task_names(set, &format!("--task {name}"))?;
    let id = names.iter().position(|n| n == name).ok_or_else(|| {
        Error::Invalid(format!(
            "--task {name}: unknown task; the adapter's tasks are {}",
            names.join(", ")
        ))
    })?;
    for (_, _, a) in set.iter_mut() {
        if let Some(m) = a.task_routed_mut() {
            m.set_export_task(id)?;
        }
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of `tasks.len()` rows of 4 tokens; row `r` has `targets[r]` targets.
    fn batch(tasks: &[u32], targets: &[usize]) -> Batch {
        let mut b = Batch::new(tasks.len(), 4);
        b.tasks.copy_from_slice(tasks);
        for (r, &n) in targets.iter().enumerate() {
            // Position 0 never counts (the shift): targets at 1..=n.
            for i in 1..=n {
                b.labels[r * 4 + i] = 7;
            }
        }
        b
    }

    #[test]
    fn step_weights_make_the_loss_a_sum_of_task_means() {
        let opts = MethodOptions::default();
        let mut mt = MtTasks::new(3, &opts).unwrap();
        // Task 0: 3 + 1 targets, task 1: 2, task 2: absent. N = 6.
        let bs = [batch(&[0, 1], &[3, 2]), batch(&[0, 0], &[1, 0])];
        let w = mt.count(&bs).unwrap().to_vec();
        // w'_t = N/N_t: with the step's 1/N, each row of task t weighs 1/N_t.
        assert_eq!(w, [6.0 / 4.0, 6.0 / 2.0, 0.0]);
        let e = mt.count(&[batch(&[3], &[1])]).unwrap_err().to_string();
        assert!(e.contains("task id 3"), "{e}");
    }

    #[test]
    fn adaptive_weights_update_every_n_steps_from_the_window() {
        let opts = MethodOptions {
            task_weights: TaskWeights::Adaptive,
            task_weights_alpha: 1.0,
            task_weights_every: 2,
            ..MethodOptions::default()
        };
        let mut mt = MtTasks::new(2, &opts).unwrap();
        let bs = [batch(&[0, 1], &[2, 2])];
        // Step 1: task 0 loss sum 2 over 2 targets (mean 1), task 1 sum 0.4 (mean 0.2).
        mt.count(&bs).unwrap();
        mt.step_sum.copy_from_slice(&[2.0, 0.4]);
        mt.finish_step(1).unwrap();
        assert_eq!(mt.last_losses(), [1.0, 0.2]);
        assert_eq!(mt.weights(), [1.0, 1.0], "no update before step 2");
        // Step 2: task 0 sum 12 over 4 targets, task 1 absent. Window: task 0 mean (2+12)/(2+4),
        // task 1 0.4/2.
        mt.count(&[batch(&[0, 0], &[2, 2])]).unwrap();
        mt.step_sum.copy_from_slice(&[12.0, 0.0]);
        mt.finish_step(2).unwrap();
        assert!(mt.last_losses()[1].is_nan());
        // Hand-computed: task by task, γ_t ·= exp(1 − acc_t), acc_t = exp(−window mean), then
        // rescaled to sum to 2.
        let mut g = [1.0f64, 1.0];
        for (t, mean) in [(0, 14.0f64 / 6.0), (1, 0.2)] {
            let acc = (-mean).exp();
            g[t] *= (1.0 - acc).exp();
            let k = 2.0 / (g[0] + g[1]);
            g.iter_mut().for_each(|v| *v *= k);
        }
        for (got, want) in mt.weights().iter().zip(g) {
            assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert!(
            mt.weights()[0] > mt.weights()[1],
            "the harder task weighs more"
        );
        assert_eq!(mt.state().2, [0, 0], "window reset");
    }
}
