//! The training step's buffer ids: every buffer of the plan (`train::plan_llama`) looked up
//! once by name, so the step addresses the arena by id and never by string.
//!
//! Buffers a configuration does not have (an unadapted projection's `h.*`, `rstd` in a
//! checkpointed forward, …) map to [`StepIds::empty`], a zero-length buffer live for the whole
//! step, so that every sub-step borrows a fixed number of views.

use crate::train::plan_llama::TARGETS;
use edgetune_core::memory::plan::{BufferId, Plan};
use edgetune_core::{Error, Result};

/// Where one forward (or recompute) of a layer writes. `[T, ·]` shapes as in plan_llama.
#[derive(Clone, Copy, Debug)]
pub struct ActIds {
    pub xn: BufferId,
    pub rstd_attn: BufferId,
    pub q: BufferId,
    pub k: BufferId,
    pub v: BufferId,
    pub att: BufferId,
    pub lse: BufferId,
    pub o: BufferId,
    pub mid: BufferId,
    pub fn_: BufferId,
    pub rstd_ffn: BufferId,
    pub gate: BufferId,
    pub up: BufferId,
    pub sw: BufferId,
    pub y: BufferId,
    /// The adapters' saved activations, per projection in [`TARGETS`] order.
    pub h: [BufferId; 7],
}

/// One layer's buffers.
#[derive(Clone, Copy, Debug)]
pub struct LayerIds {
    /// The layer input `x_l` `[T, D]` as the forward reads it.
    pub x: BufferId,
    /// The layer input as the recompute and the backward read it: `x` itself, or with bf16
    /// checkpoints the copy unpacked from `x_saved`.
    pub x_back: BufferId,
    /// The bf16-packed layer input `[T·D/2]` ([`StepIds::empty`] with f32 checkpoints).
    pub x_saved: BufferId,
    /// What the forward writes (with checkpointing: only what the forward itself reads).
    pub fwd: ActIds,
    /// What the recompute writes (checkpointing), else the same as `fwd`.
    pub saved: ActIds,
    /// Adapter gradients per projection (empty where not adapted).
    pub grad: [BufferId; 7],
    pub dsw: BufferId,
    pub dgate: BufferId,
    pub dup: BufferId,
    pub dfn: BufferId,
    pub dfn_tmp: BufferId,
    pub dmid: BufferId,
    pub datt: BufferId,
    pub dq: BufferId,
    pub dk: BufferId,
    pub dv: BufferId,
    pub dxn: BufferId,
    pub dxn_tmp: BufferId,
    pub dx: BufferId,
}

/// All buffer ids of a step.
#[derive(Clone, Debug)]
pub struct StepIds {
    pub empty: BufferId,
    pub layers: Vec<LayerIds>,
    /// The top layer's output `[T, D]`.
    pub final_x: BufferId,
    pub final_norm: BufferId,
    pub final_rstd: BufferId,
    pub ce_logits: BufferId,
    pub ce_dh: BufferId,
    /// A streamed head's per-chunk `dh` `[ce_chunk, D]` (`--stream-head`), or empty.
    pub ce_dh_part: BufferId,
    pub dres: BufferId,
    pub adapter_scratch: BufferId,
    pub grad_tmp: BufferId,
    /// bf16 layer inputs on their way to and from the spill file (`ckpt.stage`), or empty.
    pub ckpt_stage: BufferId,
}

/// Name of the zero-length buffer the step adds to the plan.
pub const EMPTY: &str = "empty";

impl StepIds {
    /// Looks every buffer up in `plan` (which must hold [`EMPTY`]).
    pub fn resolve(plan: &Plan, n_layer: usize, checkpointing: bool) -> Result<StepIds> {
        let need = |name: &str| {
            plan.find(name).ok_or_else(|| {
                Error::Invalid(format!("training step: the plan has no buffer `{name}`"))
            })
        };
        let empty = need(EMPTY)?;
        let opt = |name: &str| plan.find(name).unwrap_or(empty);
        let acts = |prefix: &str, full: bool| -> Result<ActIds> {
            // `full`: the buffers only a backward reads must exist too.
            let must = |n: &str| need(&format!("{prefix}{n}"));
            let may = |n: &str| {
                if full {
                    must(n)
                } else {
                    Ok(opt(&format!("{prefix}{n}")))
                }
            };
            let mut h = [empty; 7];
            for (slot, t) in h.iter_mut().zip(TARGETS) {
                *slot = opt(&format!("{prefix}h.{t}"));
            }
            Ok(ActIds {
                xn: must("xn")?,
                rstd_attn: may("rstd_attn")?,
                q: must("q")?,
                k: must("k")?,
                v: must("v")?,
                att: must("att")?,
                lse: may("lse")?,
                o: must("o")?,
                mid: may("mid")?,
                fn_: must("fn")?,
                rstd_ffn: may("rstd_ffn")?,
                gate: must("gate")?,
                up: must("up")?,
                sw: must("sw")?,
                y: must("y")?,
                h,
            })
        };
        let mut layers = Vec::with_capacity(n_layer);
        for l in 0..n_layer {
            let p = format!("L{l}.");
            let fwd = acts(&p, !checkpointing)?;
            let saved = if checkpointing {
                acts(&format!("L{l}.rc."), true)?
            } else {
                fwd
            };
            let mut grad = [empty; 7];
            for (slot, t) in grad.iter_mut().zip(TARGETS) {
                *slot = opt(&format!("L{l}.grad.{t}"));
            }
            let d = |n: &str| need(&format!("{p}{n}"));
            let x = d("x")?;
            layers.push(LayerIds {
                x,
                x_back: plan.find(&format!("{p}xr")).unwrap_or(x),
                x_saved: opt(&format!("{p}xc")),
                fwd,
                saved,
                grad,
                dsw: d("dsw")?,
                dgate: d("dgate")?,
                dup: d("dup")?,
                dfn: d("dfn")?,
                dfn_tmp: d("dfn_tmp")?,
                dmid: d("dmid")?,
                datt: d("datt")?,
                dq: d("dq")?,
                dk: d("dk")?,
                dv: d("dv")?,
                dxn: d("dxn")?,
                dxn_tmp: d("dxn_tmp")?,
                dx: d("dx")?,
            });
        }
        Ok(StepIds {
            empty,
            layers,
            final_x: need("final.x")?,
            final_norm: need("final.norm")?,
            final_rstd: need("final.rstd")?,
            ce_logits: need("ce.logits")?,
            ce_dh: need("ce.dh")?,
            ce_dh_part: opt("ce.dh_part"),
            dres: need("dres")?,
            adapter_scratch: opt("adapter.scratch"),
            grad_tmp: opt("grad.tmp"),
            ckpt_stage: opt("ckpt.stage"),
        })
    }

    /// The input of layer `l + 1` (the top layer writes `final.x`).
    pub fn next_x(&self, l: usize) -> BufferId {
        self.layers.get(l + 1).map_or(self.final_x, |n| n.x)
    }
}
