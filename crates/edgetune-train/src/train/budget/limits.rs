//! The settings a training plan depends on, checked against the model before anything is
//! counted or allocated: `plan`, `train` and the C ABI all plan through
//! [`super::train_shape`], which calls [`validate`] first, so a setting refused here is
//! refused everywhere, naming the flag and the numbers.
//!
//! Ranks: an adapter `B·A` on a linear `[out, in]` has rank at most `min(in, out)`; a larger
//! rank only adds zero directions (and memory: `--rank 100000` on the `tiny` test model
//! allocated 7.6 GB). Every rank a method trains is checked against every adapted projection:
//! `--rank` (the LoRA family, DoRA, HiRA, OLoRA/PiSSA, DyLoRA's `r_max`, MT-LoRA's shared
//! LoRA), AdaLoRA's `r0` (`--adalora-init-r`, default `--rank`; its target rank must not exceed
//! `r0`) and MT-LoRA's task rank (`--mtlora-task-rank`). DyLoRA's evaluation rank is at most
//! `r_max` (checked with the method's options).

use crate::train::method::Method;
use crate::train::{TrainConfig, target_shape};
use edgetune_core::adapters::Target;
use edgetune_core::model::LlamaConfig;
use edgetune_core::{Error, Result};

/// The methods' byte counts multiply rank by fan-in/out (and by rank): ranks and adapter sizes
/// beyond these are refused before anything multiplies.
const MAX_RANK: usize = 1 << 20;
const MAX_ADAPTER_VALUES: usize = 1 << 40;

/// The ranks `cfg`'s method trains, each with the flag that sets it.
pub fn method_ranks(cfg: &TrainConfig) -> Vec<(&'static str, usize)> {
    let mut ranks = Vec::with_capacity(2);
    match cfg.method {
        Method::Adalora => match cfg.method_opts.adalora_init_r {
            Some(r0) => ranks.push(("--adalora-init-r", r0)),
            None => ranks.push(("--rank", cfg.lora.rank)),
        },
        _ => ranks.push(("--rank", cfg.lora.rank)),
    }
    if cfg.method.task_routed() {
        ranks.push(("--mtlora-task-rank", cfg.method_opts.mtlora_task_rank));
    }
    ranks
}

/// The narrowest of `targets` on `model`: the projection whose `min(in, out)` is smallest, with
/// its `(in, out)` (`None` without targets). No rank may exceed its `min(in, out)`.
pub fn narrowest(model: &LlamaConfig, targets: &[Target]) -> Option<(Target, usize, usize)> {
    Target::ALL
        .into_iter()
        .filter(|t| targets.contains(t))
        .map(|t| {
            let (fan_in, fan_out) = target_shape(model, t);
            (t, fan_in, fan_out)
        })
        .min_by_key(|&(_, fan_in, fan_out)| fan_in.min(fan_out))
}

/// The largest rank every projection of `targets` allows (`usize::MAX` without targets).
pub fn max_rank(model: &LlamaConfig, targets: &[Target]) -> usize {
    narrowest(model, targets).map_or(usize::MAX, |(_, i, o)| i.min(o))
}

/// Checks every rank of `cfg` against every adapted projection of `model`.
fn check_ranks(model: &LlamaConfig, cfg: &TrainConfig) -> Result<()> {
    let ranks = method_ranks(cfg);
    for &(flag, rank) in &ranks {
        if rank == 0 {
            return Err(Error::Invalid(format!(
                "plan: {flag} must be at least 1, got 0"
            )));
        }
        if let Some((target, fan_in, fan_out)) = narrowest(model, &cfg.lora.targets)
            && rank > fan_in.min(fan_out)
        {
            return Err(Error::Invalid(format!(
                "plan: {flag} {rank} is too large for the {stem} projection: it is \
                 {fan_in}×{fan_out} (in×out), so a rank there is at most {max} (give {flag} \
                 {max} or less, or leave {stem} out of --targets)",
                stem = target.gguf_stem(),
                max = fan_in.min(fan_out),
            )));
        }
        for &target in &cfg.lora.targets {
            let (fan_in, fan_out) = target_shape(model, target);
            let values = fan_in
                .checked_add(fan_out)
                .and_then(|f| f.checked_mul(rank));
            if rank > MAX_RANK || values.is_none_or(|n| n > MAX_ADAPTER_VALUES) {
                return Err(Error::Invalid(format!(
                    "plan: {flag} {rank} on the {fan_in}×{fan_out} {} linear is too large to \
                     count (at most {MAX_RANK})",
                    target.gguf_stem()
                )));
            }
        }
    }
    if cfg.method == Method::Adalora {
        let r0 = ranks.first().map_or(cfg.lora.rank, |r| r.1);
        if let Some(target_r) = cfg.method_opts.adalora_target_r
            && target_r > r0
        {
            return Err(Error::Invalid(format!(
                "plan: --adalora-target-r {target_r} exceeds the initial rank r0 = {r0} (the \
                 budget only shrinks)"
            )));
        }
    }
    Ok(())
}

/// Checks the settings the plan depends on, naming the flag and the numbers.
pub(crate) fn validate(model: &LlamaConfig, cfg: &TrainConfig) -> Result<()> {
    cfg.lora.validate()?;
    if let Some(r) = cfg.lora.layers {
        r.check(model.n_layer)?;
    }
    let bad = |flag: &str, v: String| Err(Error::Invalid(format!("plan: {flag} {v}")));
    if cfg.lora.targets.is_empty() {
        return bad(
            "--targets",
            "is empty: adapt at least one projection".into(),
        );
    }
    check_ranks(model, cfg)?;
    if cfg.batch == 0 || cfg.accum == 0 || cfg.ce_chunk == 0 {
        return bad(
            "--batch, --accum and --ce-chunk",
            "must be at least 1".into(),
        );
    }
    if cfg.seq_len < 2 {
        return bad(
            "--seq-len",
            format!("must be at least 2, got {}", cfg.seq_len),
        );
    }
    if cfg.seq_len > model.context_length {
        return bad(
            "--seq-len",
            format!(
                "{} exceeds the model's context of {}",
                cfg.seq_len, model.context_length
            ),
        );
    }
    if cfg.optimizer_state_bits != 32 && cfg.optimizer_state_bits != 8 {
        return bad(
            "--optimizer-state-bits",
            format!("must be 32 or 8, got {}", cfg.optimizer_state_bits),
        );
    }
    cfg.check_optimizer_flags()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgetune_core::testmodel::TINY;

    fn cfg(rank: usize) -> TrainConfig {
        let mut c = TrainConfig {
            seq_len: 64,
            ..TrainConfig::default()
        };
        c.lora.rank = rank;
        c
    }

    #[test]
    fn a_rank_above_the_narrowest_projection_is_refused_naming_it() {
        let model = TINY.llama_config();
        // tiny: dim 256, kv 128, ffn 512: attn_k is 256×128, so ranks up to 128.
        validate(&model, &cfg(128)).unwrap();
        let e = validate(&model, &cfg(129)).unwrap_err().to_string();
        assert!(
            e.contains("--rank 129") && e.contains("attn_k") && e.contains("256×128"),
            "{e}"
        );
        let e = validate(&model, &cfg(100_000)).unwrap_err().to_string();
        assert!(e.contains("at most 128"), "{e}");
        // Without k and v the limit is 256.
        let mut c = cfg(200);
        c.lora.targets = vec![Target::AttnQ, Target::FfnUp];
        validate(&model, &c).unwrap();
        assert_eq!(max_rank(&model, &c.lora.targets), 256);
        let e = validate(&model, &cfg(0)).unwrap_err().to_string();
        assert!(e.contains("rank must be at least 1"), "{e}");
    }

    #[test]
    fn the_other_ranks_of_adalora_and_mtlora_are_checked_too() {
        let model = TINY.llama_config();
        let mut c = cfg(8);
        c.method = Method::Mtlora;
        c.method_opts.mtlora_task_rank = 300;
        let e = validate(&model, &c).unwrap_err().to_string();
        assert!(
            e.contains("--mtlora-task-rank 300") && e.contains("128"),
            "{e}"
        );
        let mut c = cfg(8);
        c.method = Method::Adalora;
        c.method_opts.adalora_init_r = Some(129);
        let e = validate(&model, &c).unwrap_err().to_string();
        assert!(e.contains("--adalora-init-r 129"), "{e}");
        c.method_opts.adalora_init_r = Some(12);
        c.method_opts.adalora_target_r = Some(20);
        let e = validate(&model, &c).unwrap_err().to_string();
        assert!(
            e.contains("--adalora-target-r 20") && e.contains("12"),
            "{e}"
        );
        c.method_opts.adalora_target_r = Some(8);
        validate(&model, &c).unwrap();
    }
}
