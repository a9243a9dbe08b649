//! MT-LoRA's configuration, its per-task parameter names and the accuracy-adaptive task
//! weights (docs/METHODS.md#mt-lora, #task-weights); the adapter itself is in [`super::mtlora`].

use super::LoraConfig;
use crate::{Error, Result};

/// Most tasks an MT-LoRA adapter carries (parameter names are static: `task<i>_lora_A/B`).
pub const MAX_TASKS: usize = 32;

/// Parameter names of task `i`'s factors (unique per adapter, for checkpoints and exports).
pub(super) const TASK_A: [&str; MAX_TASKS] = [
    "task0_lora_A",
    "task1_lora_A",
    "task2_lora_A",
    "task3_lora_A",
    "task4_lora_A",
    "task5_lora_A",
    "task6_lora_A",
    "task7_lora_A",
    "task8_lora_A",
    "task9_lora_A",
    "task10_lora_A",
    "task11_lora_A",
    "task12_lora_A",
    "task13_lora_A",
    "task14_lora_A",
    "task15_lora_A",
    "task16_lora_A",
    "task17_lora_A",
    "task18_lora_A",
    "task19_lora_A",
    "task20_lora_A",
    "task21_lora_A",
    "task22_lora_A",
    "task23_lora_A",
    "task24_lora_A",
    "task25_lora_A",
    "task26_lora_A",
    "task27_lora_A",
    "task28_lora_A",
    "task29_lora_A",
    "task30_lora_A",
    "task31_lora_A",
];
pub(super) const TASK_B: [&str; MAX_TASKS] = [
    "task0_lora_B",
    "task1_lora_B",
    "task2_lora_B",
    "task3_lora_B",
    "task4_lora_B",
    "task5_lora_B",
    "task6_lora_B",
    "task7_lora_B",
    "task8_lora_B",
    "task9_lora_B",
    "task10_lora_B",
    "task11_lora_B",
    "task12_lora_B",
    "task13_lora_B",
    "task14_lora_B",
    "task15_lora_B",
    "task16_lora_B",
    "task17_lora_B",
    "task18_lora_B",
    "task19_lora_B",
    "task20_lora_B",
    "task21_lora_B",
    "task22_lora_B",
    "task23_lora_B",
    "task24_lora_B",
    "task25_lora_B",
    "task26_lora_B",
    "task27_lora_B",
    "task28_lora_B",
    "task29_lora_B",
    "task30_lora_B",
    "task31_lora_B",
];

/// MT-LoRA hyper-parameters: the shared LoRA is `shared` (rank, alpha, rsLoRA, dropout,
/// targets); every task LoRA has `task_rank` and `task_alpha` (same rsLoRA rule).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MtLoraConfig {
    pub shared: LoraConfig,
    pub task_rank: usize,
    pub task_alpha: f32,
    /// Task names, index = task id (from the data's first-seen order, then kept in the
    /// checkpoint so ids stay stable).
    pub tasks: Vec<String>,
}

impl Default for MtLoraConfig {
    /// MTLoRA's provided config: `r_sh = 16`, `r_t = 4`, multipliers 4.0 (alpha = 4·r).
    fn default() -> Self {
        MtLoraConfig {
            shared: LoraConfig {
                rank: 16,
                alpha: 64.0,
                dropout: 0.05,
                ..LoraConfig::default()
            },
            task_rank: 4,
            task_alpha: 16.0,
            tasks: vec!["default".into()],
        }
    }
}

impl MtLoraConfig {
    pub fn validate(&self) -> Result<()> {
        self.shared.validate()?;
        if self.task_rank == 0 || !self.task_alpha.is_finite() {
            return Err(Error::Invalid(format!(
                "MT-LoRA task rank {} must be >= 1 and task alpha {} finite",
                self.task_rank, self.task_alpha
            )));
        }
        if self.tasks.is_empty() || self.tasks.len() > MAX_TASKS {
            return Err(Error::Invalid(format!(
                "MT-LoRA needs 1 to {MAX_TASKS} tasks, got {}",
                self.tasks.len()
            )));
        }
        Ok(())
    }

    /// `s_t`: `task_alpha / task_rank` (or `/ √task_rank` under rsLoRA).
    pub fn task_scale(&self) -> f32 {
        let r = self.task_rank as f64;
        let d = if self.shared.rslora { r.sqrt() } else { r };
        (self.task_alpha as f64 / d) as f32
    }
}

/// Accuracy-adaptive task weights (docs/METHODS.md#task-weights, the study's multi-task loop):
/// every task starts at `γ_i = 1`; after an evaluation of task `i` with accuracy `acc_i ∈ [0, 1]`,
/// `γ_i ← γ_i·exp(α·(1 − acc_i))`, then all `γ` are rescaled to sum to the task count (so the
/// learning rate keeps its meaning). Hand [`AdaptiveTaskWeights::weights`] to
/// `TrainStep::set_task_weights`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdaptiveTaskWeights {
    pub alpha: f32,
    pub gamma: Vec<f32>,
}

impl AdaptiveTaskWeights {
    pub fn new(n_tasks: usize, alpha: f32) -> Result<AdaptiveTaskWeights> {
        if n_tasks == 0 || !alpha.is_finite() {
            return Err(Error::Invalid(format!(
                "adaptive task weights: {n_tasks} tasks, alpha {alpha} (need >= 1 task, finite alpha)"
            )));
        }
        Ok(AdaptiveTaskWeights {
            alpha,
            gamma: vec![1.0; n_tasks],
        })
    }

    /// Applies task `task`'s evaluation accuracy.
    pub fn update(&mut self, task: usize, accuracy: f64) -> Result<()> {
        if task >= self.gamma.len() || !(0.0..=1.0).contains(&accuracy) {
            return Err(Error::Invalid(format!(
                "adaptive task weights: task {task} of {}, accuracy {accuracy} (in [0, 1])",
                self.gamma.len()
            )));
        }
        let g = self.gamma[task] as f64 * (self.alpha as f64 * (1.0 - accuracy)).exp();
        self.gamma[task] = g as f32;
        let sum: f64 = self.gamma.iter().map(|&v| v as f64).sum();
        let k = self.gamma.len() as f64 / sum;
        self.gamma
            .iter_mut()
            .for_each(|v| *v = (*v as f64 * k) as f32);
        Ok(())
    }

    /// The current `γ`, index = task id.
    pub fn weights(&self) -> &[f32] {
        &self.gamma
    }
}
