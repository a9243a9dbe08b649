//! `--method NAME` and each method's flags, shared by `edgetune train` and `edgetune plan`
//! (docs/METHODS.md; the library side is `edgetune::train::method`).

use edgetune::Result;
use edgetune::train::TrainConfig;
use edgetune::train::method::{BaseCopy, Method, MethodOptions, TaskWeights, apply_preset};

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Method (docs/METHODS.md)")]
pub struct MethodArgs {
    // The help lists every method with its registry summary.
    #[arg(long, default_value = "lora", value_name = "NAME", help = "The fine-tuning method (--help lists them)", long_help = method_help())]
    pub method: Method,
    /// loraplus: λ, group B (lora_B and 1-D tensors) trains at lr·λ.
    #[arg(long, default_value_t = MethodOptions::default().loraplus_ratio)]
    pub loraplus_ratio: f32,
    /// adalora: components per layer at the start, r0 (default: --rank).
    #[arg(long)]
    pub adalora_init_r: Option<usize>,
    /// adalora: average components per layer at the end (default: ⌊2·r0/3⌋).
    #[arg(long)]
    pub adalora_target_r: Option<usize>,
    /// adalora: steps before the budget starts to shrink.
    #[arg(long, default_value_t = MethodOptions::default().adalora_tinit)]
    pub adalora_tinit: u64,
    /// adalora: final steps at the target budget with the rank pattern frozen.
    #[arg(long, default_value_t = MethodOptions::default().adalora_tfinal)]
    pub adalora_tfinal: u64,
    /// adalora: mask every N steps while the budget shrinks.
    #[arg(long, default_value_t = MethodOptions::default().adalora_delta_t)]
    pub adalora_delta_t: u64,
    /// adalora: sensitivity EMA β1.
    #[arg(long, default_value_t = MethodOptions::default().adalora_beta1)]
    pub adalora_beta1: f32,
    /// adalora: uncertainty EMA β2.
    #[arg(long, default_value_t = MethodOptions::default().adalora_beta2)]
    pub adalora_beta2: f32,
    /// adalora: orthogonal regularizer weight γ (PEFT 0.5, original AdaLoRA 0.1).
    #[arg(long, default_value_t = MethodOptions::default().adalora_orth_reg_weight)]
    pub adalora_orth_reg: f32,
    /// dylora/qdylora: train only the newest component of the drawn rank (true|false;
    /// default true for dylora, false for qdylora).
    #[arg(long, value_name = "BOOL")]
    pub dylora_frozen: Option<bool>,
    /// dylora/qdylora: the rank used for evaluation and export (default: --rank).
    #[arg(long)]
    pub dylora_eval_rank: Option<usize>,
    /// dora/hira: their copy of the base weight: quant (the file's blocks) or dense (f32,
    /// 4 bytes per weight, faster).
    #[arg(long, default_value = "quant", value_name = "FORM")]
    pub base_copy: String,
    /// pissa: subspace iterations of the truncated SVD.
    #[arg(long, default_value_t = MethodOptions::default().pissa_niter)]
    pub pissa_niter: usize,
    /// layerimp: EMA factor τ of the per-layer gradient weights.
    #[arg(long, default_value_t = MethodOptions::default().layerimp_tau)]
    pub layerimp_tau: f32,
    /// mtlora: rank r_t of every task LoRA (the shared LoRA has --rank, --alpha).
    #[arg(long, default_value_t = MethodOptions::default().mtlora_task_rank)]
    pub mtlora_task_rank: usize,
    /// mtlora: alpha of the task LoRAs (default: the shared LoRA's scale, alpha·r_t/rank).
    #[arg(long)]
    pub mtlora_task_alpha: Option<f32>,
    /// mtlora: the weights w_t of the loss Σ_t w_t·L_t (L_t: mean cross-entropy over task t's
    /// targets of the step): uniform (w_t = 1) or adaptive (γ_t ← γ_t·exp(α·(1 − acc_t)),
    /// rescaled to sum to the task count; acc_t = exp(−mean training loss of task t over the
    /// last --task-weights-every steps), i.e. 1/perplexity, as there is no validation split).
    #[arg(long, default_value = "uniform", value_name = "uniform|adaptive")]
    pub task_weights: String,
    /// mtlora --task-weights adaptive: α.
    #[arg(long, default_value_t = MethodOptions::default().task_weights_alpha)]
    pub task_weights_alpha: f32,
    /// mtlora --task-weights adaptive: update the weights every N steps.
    #[arg(long, default_value_t = MethodOptions::default().task_weights_every)]
    pub task_weights_every: u64,
    /// mtlora: the optimizer skips the task LoRAs of tasks with no targets in the step (their
    /// tensors and AdamW moments stay as they are; default: AdamW moves them,
    /// docs/METHODS.md#zero-gradients-and-adamw).
    #[arg(long)]
    pub mtlora_skip_absent: bool,
}

impl MethodArgs {
    /// Sets `cfg.method` and `cfg.method_opts`, then QLoRA's preset (after the other flags:
    /// a setting left at its default value takes the preset's).
    pub fn apply(&self, cfg: &mut TrainConfig) -> Result<()> {
        cfg.method = self.method;
        cfg.method_opts = MethodOptions {
            loraplus_ratio: self.loraplus_ratio,
            adalora_init_r: self.adalora_init_r,
            adalora_target_r: self.adalora_target_r,
            adalora_tinit: self.adalora_tinit,
            adalora_tfinal: self.adalora_tfinal,
            adalora_delta_t: self.adalora_delta_t,
            adalora_beta1: self.adalora_beta1,
            adalora_beta2: self.adalora_beta2,
            adalora_orth_reg_weight: self.adalora_orth_reg,
            dylora_frozen: self.dylora_frozen,
            dylora_eval_rank: self.dylora_eval_rank,
            base_copy: match self.base_copy.as_str() {
                "quant" => BaseCopy::Quant,
                "dense" => BaseCopy::Dense,
                other => {
                    return Err(edgetune::Error::Invalid(format!(
                        "--base-copy {other}: expected quant or dense"
                    )));
                }
            },
            pissa_niter: self.pissa_niter,
            layerimp_tau: self.layerimp_tau,
            mtlora_task_rank: self.mtlora_task_rank,
            mtlora_task_alpha: self.mtlora_task_alpha,
            task_weights: match self.task_weights.as_str() {
                "uniform" => TaskWeights::Uniform,
                "adaptive" => TaskWeights::Adaptive,
                other => {
                    return Err(edgetune::Error::Invalid(format!(
                        "--task-weights {other}: expected uniform or adaptive"
                    )));
                }
            },
            task_weights_alpha: self.task_weights_alpha,
            task_weights_every: self.task_weights_every,
            mtlora_tasks: Vec::new(),
            mtlora_skip_absent: self.mtlora_skip_absent,
        };
        let d = TrainConfig::default();
        let mut explicit = Vec::new();
        let mut note = |changed: bool, key: &'static str| {
            if changed {
                explicit.push(key);
            }
        };
        note(cfg.lora.rank != d.lora.rank, "lora.rank");
        note(cfg.lora.alpha != d.lora.alpha, "lora.alpha");
        note(cfg.lora.dropout != d.lora.dropout, "lora.dropout");
        note(cfg.lr != d.lr, "lr");
        note(cfg.decay != d.decay, "decay");
        note(cfg.warmup_steps != d.warmup_steps, "warmup_steps");
        note(cfg.max_grad_norm != d.max_grad_norm, "max_grad_norm");
        note(cfg.weight_decay != d.weight_decay, "weight_decay");
        note(cfg.optimizer != d.optimizer, "optimizer");
        note(cfg.optimizer_state != d.optimizer_state, "optimizer_state");
        note(
            cfg.optimizer_state_bits != d.optimizer_state_bits,
            "optimizer_state_bits",
        );
        apply_preset(cfg, &explicit);
        Ok(())
    }
}

/// `--method`'s help: every method of the registry with its one-line summary.
fn method_help() -> String {
    let each: Vec<String> = Method::ALL
        .iter()
        .map(|m| format!("{} ({})", m.name(), m.spec().summary))
        .collect();
    format!("The fine-tuning method: {}.", each.join("; "))
}
