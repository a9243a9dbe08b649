//! The export side shared by the formats: each adapter of a set as a plain low-rank pair
//! `ΔW = s·B·A` (`A` `[r, in]`, `B` `[out, r]`), and the folding of a scale the target format
//! cannot state into `B`.
//!
//! A file states one scaling rule (GGUF: `alpha / r` with one alpha per file; PEFT: `alpha / r`
//! or `alpha / √r` with per-module patterns; ours: the set's [`edgetune_core::adapters::LoraConfig`]
//! at each module's rank). Where the rule gives a module a scale `s'` that differs from its own
//! `s` by more than f32 rounding, `B` is written as `B·s/s'`, so `s'·B'·A = s·B·A`.

use std::borrow::Cow;

use edgetune_core::adapters::AdapterSet;
use edgetune_core::adapters::{Export, Target};
use edgetune_core::{Error, Result};

/// One adapted linear, borrowed from the set.
#[derive(Clone, Debug)]
pub struct LowRank<'a> {
    pub layer: usize,
    pub target: Target,
    pub rank: usize,
    pub in_f: usize,
    pub out_f: usize,
    /// `[rank, in]` (borrowed from the adapter, or computed by its export rule).
    pub a: Cow<'a, [f32]>,
    /// `[out, rank]`.
    pub b: Cow<'a, [f32]>,
    /// The adapter's own `s`.
    pub scale: f32,
}

impl LowRank<'_> {
    /// `blk.{layer}.{stem}` for messages.
    pub fn label(&self) -> String {
        format!("blk.{}.{}", self.layer, self.target.gguf_stem())
    }
}

/// Every adapter of `set` in slot order; an adapter that is not a plain low-rank pair (or whose
/// tensors do not have its stated shape) is an error naming it.
pub fn low_rank_modules(set: &AdapterSet) -> Result<Vec<LowRank<'_>>> {
    let mut out = Vec::with_capacity(set.len());
    for (layer, target, ad) in set.iter() {
        let label = format!("blk.{layer}.{}", target.gguf_stem());
        let Export::LowRank { a, b, rank, scale } = ad.export() else {
            return Err(Error::Invalid(format!(
                "adapter {label} ({}) is not a plain low-rank pair: it can only be merged",
                ad.method()
            )));
        };
        let (in_f, out_f) = (ad.in_features(), ad.out_features());
        if rank == 0 || a.len() != rank * in_f || b.len() != out_f * rank {
            return Err(Error::Invalid(format!(
                "adapter {label}: A has {} values and B {}, expected [{rank}, {in_f}] and [{out_f}, {rank}]",
                a.len(),
                b.len()
            )));
        }
        if !scale.is_finite() {
            return Err(Error::Invalid(format!(
                "adapter {label}: scale {scale} is not finite"
            )));
        }
        out.push(LowRank {
            layer,
            target,
            rank,
            in_f,
            out_f,
            a,
            b,
            scale,
        });
    }
    Ok(out)
}

/// Whether a file applying `applied` reproduces `own` up to f32 rounding (a few ulps: e.g.
/// rsLoRA's `alpha/√r` against `(alpha·√r)/r`).
pub fn same_scale(own: f32, applied: f32) -> bool {
    own == applied || ((own as f64 / applied as f64) - 1.0).abs() <= 4.0 * f32::EPSILON as f64
}

/// `B` for a file that applies `applied`: borrowed when it equals the module's own scale
/// (bit-exact export), else `B·s/applied` (and `true`). `applied` must be non-zero.
pub fn b_for_scale<'a>(m: &'a LowRank<'a>, applied: f32) -> Result<(Cow<'a, [f32]>, bool)> {
    if same_scale(m.scale, applied) {
        return Ok((Cow::Borrowed(&m.b[..]), false));
    }
    if applied == 0.0 || !applied.is_finite() {
        return Err(Error::Invalid(format!(
            "adapter {}: the file would apply scale {applied}, which cannot carry scale {}",
            m.label(),
            m.scale
        )));
    }
    let f = m.scale as f64 / applied as f64;
    log::info!(
        "adapter {}: scale {} folded into lora_B (the file applies {applied})",
        m.label(),
        m.scale
    );
    Ok((
        Cow::Owned(m.b.iter().map(|&v| (v as f64 * f) as f32).collect()),
        true,
    ))
}

/// Multiplies every adapter's output by `factor` (its `lora_B` by `factor`, exactly for powers
/// of two): llama.cpp's `--lora-scaled FILE S` on our side.
pub fn scale_outputs(set: &mut AdapterSet, factor: f32) -> Result<()> {
    if !factor.is_finite() {
        return Err(Error::Invalid(format!(
            "adapter scale {factor} is not finite"
        )));
    }
    for (layer, target, ad) in set.iter_mut() {
        let i = ad
            .params()
            .iter()
            .position(|p| p.name == "lora_B")
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "adapter blk.{layer}.{} ({}) has no lora_B to scale",
                    target.gguf_stem(),
                    ad.method()
                ))
            })?;
        for v in ad.param_mut(i).unwrap_or_default() {
            *v *= factor;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_scale_tolerates_rounding_only() {
        let alpha = 16.0f64;
        let r = 12.0f64;
        let own = (alpha / r.sqrt()) as f32;
        let applied = ((alpha * r.sqrt()) as f32) / 12.0;
        assert!(same_scale(own, applied));
        assert!(!same_scale(2.0, 2.001));
        assert!(same_scale(0.0, 0.0));
    }
}
