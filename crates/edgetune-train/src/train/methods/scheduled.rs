//! The methods whose adapters change shape or routing as training goes: AdaLoRA (a rank
//! budget shrunk over the run), DyLoRA / QDyLoRA (a rank drawn per step) and MT-LoRA (a
//! shared LoRA plus one per data task, rows routed by task). Their configurations are built
//! here from the run's LoRA settings and [`MethodOptions`].

use super::hooks::BudgetHooks;
use super::{MethodImpl, Slot, SlotCost, SlotShape, dropout_scratch, pair_tensors};
use crate::train::adapter_set::AdapterSet;
use crate::train::method::MethodOptions;
use crate::train::method_hooks::StepHooks;
use crate::train::method_tasks::{self, MtTasks};
use edgetune_core::Result;
use edgetune_core::adapters::adalora::{AdaLora, AdaloraConfig};
use edgetune_core::adapters::dylora::{Dylora, DyloraConfig};
use edgetune_core::adapters::mtlora::{MtLora, MtLoraConfig};
use edgetune_core::adapters::{Adapter, LoraConfig};

/// AdaLoRA's configuration from the run's LoRA settings and the method options.
pub fn adalora_config(lora: &LoraConfig, opts: &MethodOptions, total_steps: u64) -> AdaloraConfig {
    let init_r = opts.adalora_init_r.unwrap_or(lora.rank);
    AdaloraConfig {
        init_r,
        target_r: opts
            .adalora_target_r
            .unwrap_or((2 * init_r / 3).max(1).min(init_r)),
        alpha: lora.alpha,
        dropout: lora.dropout,
        tinit: opts.adalora_tinit,
        tfinal: opts.adalora_tfinal,
        delta_t: opts.adalora_delta_t,
        total_step: total_steps,
        beta1: opts.adalora_beta1,
        beta2: opts.adalora_beta2,
        orth_reg_weight: opts.adalora_orth_reg_weight,
    }
}

/// DyLoRA's configuration: frozen updates for `dylora`, unfrozen for `qdylora` unless the
/// options say otherwise; the rank draw is seeded by the run's seed.
pub fn dylora_config(
    qdylora: bool,
    lora: &LoraConfig,
    opts: &MethodOptions,
    seed: u64,
) -> DyloraConfig {
    let mut c = if qdylora {
        DyloraConfig::qdylora(lora.clone())
    } else {
        DyloraConfig::dylora(lora.clone())
    };
    if let Some(f) = opts.dylora_frozen {
        c.frozen = f;
    }
    c.rank_seed = seed;
    c
}

/// MT-LoRA's configuration: the shared LoRA is `lora`; the task LoRAs have
/// `opts.mtlora_task_rank` and `opts.mtlora_task_alpha` (default: the shared scale
/// `alpha/r_sh`, so `alpha_t = alpha·r_t/r_sh`, or `alpha·√(r_t/r_sh)` under rsLoRA); the tasks
/// are `opts.mtlora_tasks` (`["default"]` when empty).
pub fn mtlora_config(lora: &LoraConfig, opts: &MethodOptions) -> MtLoraConfig {
    let (rt, rs) = (opts.mtlora_task_rank as f64, lora.rank.max(1) as f64);
    let ratio = if lora.rslora {
        (rt / rs).sqrt()
    } else {
        rt / rs
    };
    MtLoraConfig {
        shared: lora.clone(),
        task_rank: opts.mtlora_task_rank,
        task_alpha: opts
            .mtlora_task_alpha
            .unwrap_or((lora.alpha as f64 * ratio) as f32),
        tasks: if opts.mtlora_tasks.is_empty() {
            vec![edgetune_core::data::tasks::DEFAULT_TASK.to_string()]
        } else {
            opts.mtlora_tasks.clone()
        },
    }
}

/// MT-LoRA's per-task state in the hooks: `γ_t` and the step weight (f32), the step's and the
/// window's target counts (u64) and loss sums (f64), the last step's mean loss (f64).
pub const MT_BYTES_PER_TASK: u64 = 4 + 4 + 8 + 8 + 8 + 8 + 8;

/// AdaLoRA: `P·diag(E)·Q` with `r0` components per linear; the hooks keep each component's
/// sensitivity scores (`8·r0` per adapted linear).
pub struct AdaLoraImpl;

impl MethodImpl for AdaLoraImpl {
    fn build(&self, slot: &Slot<'_>) -> Result<Box<dyn Adapter>> {
        let cfg = adalora_config(slot.lora, slot.opts, slot.total_steps);
        Ok(Box::new(AdaLora::new(
            slot.fan_in,
            slot.fan_out,
            &cfg,
            slot.seed,
        )?))
    }

    fn cost(&self, s: &SlotShape<'_>) -> SlotCost {
        let (inf, outf) = (s.fan_in, s.fan_out);
        let r0 = adalora_config(s.lora, s.opts, 1).init_r;
        SlotCost {
            saved_per_token: r0,
            scratch_per_token: r0 + dropout_scratch(s.lora, inf),
            tensors: vec![(r0 * inf) as u64, (outf * r0) as u64, r0 as u64],
            extra_bytes: 8 * (r0 * (inf + outf + 1)) as u64 + 4 * (r0 * r0) as u64 + r0 as u64,
        }
    }

    fn method_wide_bytes(
        &self,
        lora: &LoraConfig,
        opts: &MethodOptions,
        _n_layer: usize,
        adapted: usize,
    ) -> u64 {
        let r0 = adalora_config(lora, opts, 1).init_r;
        8 * (adapted * r0) as u64
    }

    /// The budget over every adapter of the set (the orthogonal regularizer, importance and
    /// masking, `methods/hooks.rs`); none for an empty set.
    fn hooks(&self, set: &AdapterSet, _: &MethodOptions) -> Result<Option<Box<dyn StepHooks>>> {
        Ok(BudgetHooks::new(set, "adalora")?.map(|h| Box::new(h) as Box<dyn StepHooks>))
    }
}

/// DyLoRA (`qdylora: false`, frozen updates) and QDyLoRA (unfrozen): a LoRA pair of rank
/// `r_max` truncated to a drawn rank each step.
pub struct DyLoraImpl {
    pub qdylora: bool,
}

impl MethodImpl for DyLoraImpl {
    fn build(&self, slot: &Slot<'_>) -> Result<Box<dyn Adapter>> {
        let cfg = dylora_config(self.qdylora, slot.lora, slot.opts, slot.run_seed);
        let mut d = Dylora::new(slot.fan_in, slot.fan_out, &cfg, slot.seed)?;
        if let Some(b) = slot.opts.dylora_eval_rank {
            d.set_eval_rank(b)?;
        }
        Ok(Box::new(d))
    }

    fn cost(&self, s: &SlotShape<'_>) -> SlotCost {
        SlotCost::pair(s, s.lora.rank, 0)
    }
}

/// MT-LoRA: the shared pair, then one pair of rank `r_t` per task.
pub struct MtLoraImpl;

impl MethodImpl for MtLoraImpl {
    fn build(&self, slot: &Slot<'_>) -> Result<Box<dyn Adapter>> {
        let cfg = mtlora_config(slot.lora, slot.opts);
        Ok(Box::new(MtLora::new(
            slot.fan_in,
            slot.fan_out,
            &cfg,
            slot.seed,
        )?))
    }

    fn cost(&self, s: &SlotShape<'_>) -> SlotCost {
        let (r, inf, outf) = (s.lora.rank, s.fan_in, s.fan_out);
        let t = s.opts.mtlora_tasks.len().max(1);
        let rt = s.opts.mtlora_task_rank;
        let mut tensors = pair_tensors(r, inf, outf);
        for _ in 0..t {
            tensors.extend(pair_tensors(rt, inf, outf));
        }
        SlotCost {
            saved_per_token: r + rt,
            scratch_per_token: r + rt + dropout_scratch(s.lora, inf),
            tensors,
            extra_bytes: 0,
        }
    }

    fn method_wide_bytes(
        &self,
        _lora: &LoraConfig,
        opts: &MethodOptions,
        _n_layer: usize,
        _adapted: usize,
    ) -> u64 {
        MT_BYTES_PER_TASK * opts.mtlora_tasks.len().max(1) as u64
    }

    /// The multi-task loss (row routing, task weights, per-task losses, the skip mask of
    /// absent tasks with `mtlora_skip_absent`).
    fn hooks(&self, set: &AdapterSet, opts: &MethodOptions) -> Result<Option<Box<dyn StepHooks>>> {
        let mut mt = MtTasks::new(method_tasks::set_task_count(set), opts)?;
        if opts.mtlora_skip_absent {
            mt.skip_absent(set.param_infos().len());
        }
        Ok(Some(Box::new(mt)))
    }
}
