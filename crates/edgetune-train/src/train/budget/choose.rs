//! The plan's choices between equivalent ways to run (train/budget/mod.rs evaluates each):
//! `--weights auto` (mapped unless only streamed layers fit), `--fused-update auto` (each layer
//! updated after its backward when streamed, with clipping only when the unfused step does not
//! fit) and `--stream-head auto` (the head streamed too when only that fits). Each choice keeps
//! the cheaper configuration unless the budget needs the other, and says why in the breakdown.
//! Each returns the plan with the configuration it was made for (`auto` resolved): the
//! suggestions of a plan that does not fit are searched once, at the end, from that
//! configuration ([`super::plan_training_for`]), not for every trial.

use super::report::size;
use super::{ModelWeights, TrainingPlan, evaluate};
use crate::train::{
    FusedUpdate, StreamHead, TrainConfig, WeightsMode, fused_update_support, stream_head_support,
};
use edgetune_core::Result;

/// `--stream-head auto`: when the plan does not fit, the layers may be streamed (not `map`,
/// not locked) and the run allows it ([`stream_head_support`]), the plan with the head streamed
/// too (and the fused update as `--fused-update` decides on it), taken if it fits.
pub(super) fn choose_stream_head(
    model: &ModelWeights,
    cfg: &TrainConfig,
    (planned, chosen): (TrainingPlan, TrainConfig),
) -> Result<(TrainingPlan, TrainConfig)> {
    if cfg.stream_head != StreamHead::Auto
        || planned.breakdown.fits
        || stream_head_support(cfg).is_err()
    {
        return Ok((planned, chosen));
    }
    let mut head_cfg = cfg.clone();
    head_cfg.weights = WeightsMode::Stream;
    head_cfg.stream_head = StreamHead::On;
    let trial = plan_weights(model, &head_cfg)?;
    let (mut streamed, streamed_cfg) = choose_fused_update(model, &head_cfg, trial)?;
    if !streamed.breakdown.fits {
        return Ok((planned, chosen));
    }
    if let Some(s) = &mut streamed.breakdown.weights.streamed {
        s.head_reason = Some(format!(
            "chosen by the plan: with the head resident the run needs {}, over the budget",
            size(planned.breakdown.total_bytes)
        ));
        if cfg.weights == WeightsMode::Auto {
            s.reason = "chosen by the plan: only streamed layers and head fit the budget".into();
        }
    }
    Ok((streamed, streamed_cfg))
}

/// `--fused-update auto` on the plan `--weights` chose: fused when the layers are streamed and
/// the run allows it ([`fused_update_support`]); with clipping (a second forward and backward
/// a step) only when the unfused step does not fit and the fused one does.
pub(super) fn choose_fused_update(
    model: &ModelWeights,
    cfg: &TrainConfig,
    (planned, chosen): (TrainingPlan, TrainConfig),
) -> Result<(TrainingPlan, TrainConfig)> {
    let streamed = planned.breakdown.weights.streamed.is_some();
    if cfg.fused_update != FusedUpdate::Auto || !streamed || fused_update_support(cfg).is_err() {
        return Ok((planned, chosen));
    }
    let clipping = cfg.max_grad_norm > 0.0;
    if clipping && planned.breakdown.fits {
        return Ok((planned, chosen));
    }
    let mut fused_cfg = cfg.clone();
    fused_cfg.weights = WeightsMode::Stream;
    fused_cfg.fused_update = FusedUpdate::On;
    let (mut fused, fused_cfg) = plan_weights(model, &fused_cfg)?;
    if clipping && !fused.breakdown.fits {
        return Ok((planned, chosen));
    }
    let reason = if clipping {
        format!(
            "chosen by the plan: the unfused step needs {}, over the budget; clipping needs the \
             global norm first, so a norm-only forward and backward runs before each step's \
             (2× compute)",
            size(planned.breakdown.total_bytes)
        )
    } else {
        "chosen by the plan: the layers are streamed and nothing needs the whole gradient \
         (no clipping, no accumulation)"
            .into()
    };
    fused.breakdown.fused_update = Some(reason);
    if let (Some(s), Some(p)) = (
        &mut fused.breakdown.weights.streamed,
        &planned.breakdown.weights.streamed,
    ) {
        s.reason.clone_from(&p.reason);
    }
    Ok((fused, fused_cfg))
}

/// The plan with `--weights` resolved (`auto`: mapped unless only streaming fits), and the
/// configuration it is for. When neither fits and the mapped weights alone exceed the budget,
/// no mapped configuration can fit: the streamed one is returned (its suggestions are the
/// useful ones).
pub(super) fn plan_weights(
    model: &ModelWeights,
    cfg: &TrainConfig,
) -> Result<(TrainingPlan, TrainConfig)> {
    let planned = evaluate(model, cfg)?;
    // `--weights auto`: stream when mapping does not fit and streaming does.
    if cfg.weights == WeightsMode::Auto && !cfg.lock_weights && !planned.breakdown.fits {
        let mut streamed_cfg = cfg.clone();
        streamed_cfg.weights = WeightsMode::Stream;
        let mut streamed = evaluate(model, &streamed_cfg)?;
        let budget = cfg.budget_bytes.unwrap_or(0);
        if streamed.breakdown.fits {
            if let Some(s) = &mut streamed.breakdown.weights.streamed {
                s.reason = format!(
                    "chosen by the plan: mapped weights need {} in total, over the {} budget",
                    size(planned.breakdown.total_bytes),
                    size(budget)
                );
            }
            return Ok((streamed, streamed_cfg));
        }
        if planned.breakdown.weights.resident_bytes >= budget {
            return Ok((streamed, streamed_cfg));
        }
    }
    Ok((planned, cfg.clone()))
}
