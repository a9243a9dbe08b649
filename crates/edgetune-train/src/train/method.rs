//! The fine-tuning method of a run (`edgetune train --method NAME`): which
//! adapter plug-in sits on every adapted linear, and each method's own knobs
//! ([`MethodOptions`]). [`TrainConfig::method`](super::TrainConfig) defaults to
//! [`Method::Lora`], so configurations and checkpoints written before methods existed still
//! parse and mean what they meant. The maths of each is in docs/METHODS.md, under the method's
//! name.
//!
//! What each method is and which questions it answers yes to (the device step, merge-only
//! export, reading the base, its comparison learning rate) is its entry in
//! [`super::method_registry::REGISTRY`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::config::{Decay, OptimizerKind, StatePlace, TrainConfig};
use super::method_registry::REGISTRY;
use edgetune_core::{Error, Result};

/// A fine-tuning method (the CLI name is the serde name: lowercase).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    #[default]
    Lora,
    Rslora,
    Loraplus,
    Qlora,
    Dora,
    Adalora,
    Mtlora,
    Irqlora,
    Olora,
    Pissa,
    Reslora,
    Dylora,
    Qdylora,
    Hira,
    Layerimp,
}

impl Method {
    /// Every method, in the registry's order.
    pub const ALL: [Method; REGISTRY.len()] = {
        let mut all = [Method::Lora; REGISTRY.len()];
        let mut i = 0;
        while i < all.len() {
            all[i] = REGISTRY[i].method;
            i += 1;
        }
        all
    };

    /// Every method's name, in [`Method::ALL`]'s order.
    pub const NAMES: [&'static str; Method::ALL.len()] = {
        let mut names = [""; Method::ALL.len()];
        let mut i = 0;
        while i < names.len() {
            names[i] = Method::ALL[i].name();
            i += 1;
        }
        names
    };

    /// The CLI / serde name (`dora`).
    pub const fn name(self) -> &'static str {
        self.spec().name
    }

    /// Whether the adapter cannot be written as a plain `B·A` (GGUF/PEFT export refuses it;
    /// `edgetune merge` folds it into a new base).
    pub const fn merge_only(self) -> bool {
        self.spec().merge_only
    }

    /// Whether building the adapters reads the base weights (the mapped GGUF).
    pub const fn reads_base(self) -> bool {
        self.spec().reads_base
    }

    /// Whether it trains plain LoRA pairs with no step-wide state (`--init-adapter`, the
    /// device step).
    pub const fn plain_lora(self) -> bool {
        self.spec().plain_lora
    }

    /// Whether every row goes to its task's adapter (MT-LoRA; [`Behaviour::task_routed`]).
    ///
    /// [`Behaviour::task_routed`]: super::method_registry::Behaviour::task_routed
    pub const fn task_routed(self) -> bool {
        self.spec().behaviour.task_routed
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = Error;

    fn from_str(s: &str) -> Result<Method> {
        let lower = s.to_ascii_lowercase();
        Method::ALL
            .into_iter()
            .find(|m| m.name() == lower)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown method {s:?} (expected one of {})",
                    Method::ALL.map(Method::name).join("|")
                ))
            })
    }
}

/// Each method's own settings; a method ignores the others'. Defaults follow docs/METHODS.md
/// (PEFT's where it has one). Ranks, alpha, dropout and targets come from `TrainConfig::lora`
/// for every method (AdaLoRA's `init_r` too unless set here).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MethodOptions {
    /// LoRA+ `λ`: group B (`lora_B` and 1-D tensors) trains at `lr·λ` (docs/METHODS.md#lora-plus;
    /// PEFT's docs use 16; `λ ≥ 1`).
    pub loraplus_ratio: f32,
    /// AdaLoRA `r0` per layer (`None`: `lora.rank`).
    pub adalora_init_r: Option<usize>,
    /// AdaLoRA average final rank per layer (`None`: `⌊2·r0/3⌋`, at least 1 — PEFT's 8 of 12).
    pub adalora_target_r: Option<usize>,
    /// Steps before the budget starts shrinking (PEFT `tinit`, 0).
    pub adalora_tinit: u64,
    /// Final steps at the target budget with the pattern frozen (PEFT `tfinal`, 0).
    pub adalora_tfinal: u64,
    /// Mask every ΔT steps while the budget shrinks (PEFT `deltaT`, 1).
    pub adalora_delta_t: u64,
    /// Sensitivity EMA β1 (0.85).
    pub adalora_beta1: f32,
    /// Uncertainty EMA β2 (0.85).
    pub adalora_beta2: f32,
    /// Orthogonal regularizer weight γ (PEFT 0.5; the original 0.1).
    pub adalora_orth_reg_weight: f32,
    /// DyLoRA "frozen" updates (only the newest component trains). `None`: `true` for
    /// `dylora`, `false` for `qdylora` (docs/METHODS.md#dylora-and-qdylora).
    pub dylora_frozen: Option<bool>,
    /// The rank used for evaluation and export (`None`: `r_max` = `lora.rank`).
    pub dylora_eval_rank: Option<usize>,
    /// How DoRA and HiRA keep their copy of `Ŵ`: quantized blocks (the file's bytes) or a
    /// dequantized f32 matrix (4 bytes per weight, faster).
    pub base_copy: BaseCopy,
    /// PiSSA's subspace iterations of the truncated SVD (PEFT `pissa_niter_k`).
    pub pissa_niter: usize,
    /// Layer-importance EMA `τ` (docs/METHODS.md#layer-importance): `w ← τ·w + (1−τ)·s`.
    pub layerimp_tau: f32,
    /// MT-LoRA: rank `r_t` of every task LoRA (the shared LoRA is `lora.rank`, `lora.alpha`).
    pub mtlora_task_rank: usize,
    /// MT-LoRA: alpha of the task LoRAs (`None`: the shared LoRA's scale, i.e.
    /// `alpha·r_t/r_sh`, or `alpha·√(r_t/r_sh)` under rsLoRA).
    pub mtlora_task_alpha: Option<f32>,
    /// MT-LoRA: the task weights `w_t` of the loss `Σ_t w_t·L_t` (docs/METHODS.md#mt-lora,
    /// #task-weights).
    pub task_weights: TaskWeights,
    /// Adaptive task weights: `α` of `γ_t ← γ_t·exp(α·(1 − acc_t))`.
    pub task_weights_alpha: f32,
    /// Adaptive task weights: update every N optimizer steps, from the window's losses.
    pub task_weights_every: u64,
    /// MT-LoRA task names, index = task id. Empty in a fresh configuration: the trainer fills
    /// it from the data's `task` fields (first-seen order; records without one are
    /// `default`), names given here keep their ids first.
    pub mtlora_tasks: Vec<String>,
    /// MT-LoRA: the optimizer leaves the task LoRAs of tasks without targets in the step alone
    /// (tensors and optimizer state), the "only update tasks present" variant of
    /// docs/METHODS.md#mt-lora; off: AdamW moves them through momentum and weight decay
    /// (docs/METHODS.md#zero-gradients-and-adamw).
    pub mtlora_skip_absent: bool,
}

/// How MT-LoRA weighs the per-task losses `L_t` (mean cross-entropy over task `t`'s targets of
/// the step).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskWeights {
    /// `w_t = 1` (docs/METHODS.md#mt-lora).
    #[default]
    Uniform,
    /// `w_t = γ_t`, the accuracy-adaptive weights of docs/METHODS.md#task-weights; the accuracy of
    /// task `t` is `exp(−L̄_t)` over the last `task_weights_every` steps (train/method_tasks.rs).
    Adaptive,
}

/// The form of a method's private copy of the base weight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseCopy {
    #[default]
    Quant,
    Dense,
}

impl Default for MethodOptions {
    fn default() -> Self {
        MethodOptions {
            loraplus_ratio: 16.0,
            adalora_init_r: None,
            adalora_target_r: None,
            adalora_tinit: 0,
            adalora_tfinal: 0,
            adalora_delta_t: 1,
            adalora_beta1: 0.85,
            adalora_beta2: 0.85,
            adalora_orth_reg_weight: 0.5,
            dylora_frozen: None,
            dylora_eval_rank: None,
            base_copy: BaseCopy::Quant,
            pissa_niter: 4,
            layerimp_tau: 0.9,
            mtlora_task_rank: 4,
            mtlora_task_alpha: None,
            task_weights: TaskWeights::Uniform,
            task_weights_alpha: 1.0,
            task_weights_every: 10,
            mtlora_tasks: Vec::new(),
            mtlora_skip_absent: false,
        }
    }
}

impl MethodOptions {
    /// Checks the settings `method` uses, naming the bad one.
    pub fn validate(&self, method: Method, rank: usize) -> Result<()> {
        let bad = |what: String| Err(Error::Invalid(format!("method {method}: {what}")));
        match method {
            Method::Loraplus if !(self.loraplus_ratio.is_finite() && self.loraplus_ratio > 0.0) => {
                bad(format!(
                    "--loraplus-ratio must be finite and > 0, got {}",
                    self.loraplus_ratio
                ))
            }
            Method::Layerimp if !(0.0..1.0).contains(&self.layerimp_tau) => bad(format!(
                "--layerimp-tau must be in [0, 1), got {}",
                self.layerimp_tau
            )),
            Method::Dylora | Method::Qdylora => match self.dylora_eval_rank {
                Some(b) if b == 0 || b > rank => bad(format!(
                    "--dylora-eval-rank must be in 1..={rank} (the rank), got {b}"
                )),
                _ => Ok(()),
            },
            Method::Pissa if self.pissa_niter == 0 => {
                bad("--pissa-niter must be at least 1".into())
            }
            Method::Mtlora => self.validate_mtlora(),
            _ => Ok(()),
        }
    }
}

impl MethodOptions {
    fn validate_mtlora(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Invalid(format!("method mtlora: {what}")));
        if self.mtlora_task_rank == 0 {
            return bad("--mtlora-task-rank must be at least 1".into());
        }
        if let Some(a) = self.mtlora_task_alpha
            && !a.is_finite()
        {
            return bad(format!("--mtlora-task-alpha must be finite, got {a}"));
        }
        if !(self.task_weights_alpha.is_finite() && self.task_weights_alpha >= 0.0) {
            return bad(format!(
                "--task-weights-alpha must be finite and >= 0, got {}",
                self.task_weights_alpha
            ));
        }
        if self.task_weights_every == 0 {
            return bad("--task-weights-every must be at least 1".into());
        }
        let max = edgetune_core::adapters::mtlora::MAX_TASKS;
        if self.mtlora_tasks.len() > max {
            return bad(format!(
                "{} tasks, at most {max} are supported",
                self.mtlora_tasks.len()
            ));
        }
        Ok(())
    }
}

/// QLoRA's reference hyper-parameters (Guanaco 7B, docs/METHODS.md#qlora-preset), as a preset over
/// a [`TrainConfig`]: `r = 64`, `alpha = 16` (`s = 0.25`), dropout 0.1, lr 2e-4 constant, warmup 3
/// % of the steps, `max_grad_norm = 0.3`, weight decay 0, AdamW with `β2 = 0.999` (ours).
///
/// Not reproduced, and why: the NF4 + double-quantization base (our base is the GGUF's own
/// 4-bit type; IQ4_NL is GGUF's NF4-like one) and the paged optimizer (paging is a CUDA
/// unified-memory feature; bitsandbytes disables it on CPU — `--optimizer-state disk` is our
/// nearest equivalent and stays the user's choice). The moments stay 32-bit
/// (`paged_adamw_32bit`).
///
/// `explicit` names the settings the user gave (TrainConfig field names or `lora.rank`,
/// `lora.alpha`, `lora.dropout`); those are kept. The trainer does not call this: the CLI
/// does for `--method qlora`, and so should any other front end that wants the preset.
pub fn apply_preset(cfg: &mut TrainConfig, explicit: &[&str]) {
    if cfg.method != Method::Qlora {
        return;
    }
    let keep = |k: &str| explicit.contains(&k);
    if !keep("lora.rank") {
        cfg.lora.rank = 64;
    }
    if !keep("lora.alpha") {
        cfg.lora.alpha = 16.0;
    }
    if !keep("lora.dropout") {
        cfg.lora.dropout = 0.1;
    }
    if !keep("lr") {
        cfg.lr = 2e-4;
    }
    if !keep("decay") {
        cfg.decay = Decay::Constant;
    }
    if !keep("warmup_steps") {
        cfg.warmup_steps = cfg.steps.map_or(0, |s| (s as f64 * 0.03).ceil() as u64);
    }
    if !keep("max_grad_norm") {
        cfg.max_grad_norm = 0.3;
    }
    if !keep("weight_decay") {
        cfg.weight_decay = 0.0;
    }
    if !keep("optimizer") {
        cfg.optimizer = OptimizerKind::AdamW;
    }
    if !keep("optimizer_state") {
        cfg.optimizer_state = StatePlace::Ram;
    }
    if !keep("optimizer_state_bits") {
        cfg.optimizer_state_bits = 32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_fromstr_display_and_serde() {
        for m in Method::ALL {
            assert_eq!(m.to_string().parse::<Method>().unwrap(), m);
            let j = serde_json::to_string(&m).unwrap();
            assert_eq!(j, format!("\"{}\"", m.name()));
            assert_eq!(serde_json::from_str::<Method>(&j).unwrap(), m);
        }
        assert_eq!("DoRA".parse::<Method>().unwrap(), Method::Dora);
        let e = "lorax".parse::<Method>().unwrap_err().to_string();
        assert!(e.contains("lorax") && e.contains("dylora"), "{e}");
    }

    #[test]
    fn qlora_preset_keeps_what_the_user_set() {
        let mut cfg = TrainConfig {
            method: Method::Qlora,
            steps: Some(100),
            lr: 1e-3,
            ..TrainConfig::default()
        };
        apply_preset(&mut cfg, &["lr"]);
        assert_eq!(
            (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout),
            (64, 16.0, 0.1)
        );
        assert_eq!(cfg.lr, 1e-3);
        assert_eq!(cfg.warmup_steps, 3);
        assert_eq!(cfg.max_grad_norm, 0.3);
        // Other methods are left alone.
        let mut plain = TrainConfig::default();
        apply_preset(&mut plain, &[]);
        assert_eq!(plain, TrainConfig::default());
    }

    #[test]
    fn options_validate_names_the_flag() {
        let o = MethodOptions {
            loraplus_ratio: 0.0,
            ..MethodOptions::default()
        };
        let e = o.validate(Method::Loraplus, 8).unwrap_err().to_string();
        assert!(e.contains("--loraplus-ratio"), "{e}");
        o.validate(Method::Lora, 8).unwrap();
        let o = MethodOptions {
            dylora_eval_rank: Some(9),
            ..MethodOptions::default()
        };
        let e = o.validate(Method::Dylora, 8).unwrap_err().to_string();
        assert!(e.contains("--dylora-eval-rank"), "{e}");
        for (o, flag) in [
            (
                MethodOptions {
                    mtlora_task_rank: 0,
                    ..MethodOptions::default()
                },
                "--mtlora-task-rank",
            ),
            (
                MethodOptions {
                    task_weights_every: 0,
                    ..MethodOptions::default()
                },
                "--task-weights-every",
            ),
            (
                MethodOptions {
                    task_weights_alpha: f32::NAN,
                    ..MethodOptions::default()
                },
                "--task-weights-alpha",
            ),
        ] {
            let e = o.validate(Method::Mtlora, 8).unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
            o.validate(Method::Lora, 8).unwrap();
        }
    }
}
