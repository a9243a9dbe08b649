//! What a [`super::DeviceStep`] is planned for ([`DeviceShape`]: tokens, chunks, each adapted
//! linear's rank and features) and the ranges of its workspace, by what they hold (the types of
//! step_device_plan.rs's layout): each adapted linear's parameters and gradients, one layer's
//! attention half and FFN row chunk (forward and recompute), their gradients, the head's
//! chunk, the layer inputs. Shapes in f32: `T` tokens, `Tc` an FFN row chunk, `C` a
//! cross-entropy chunk, `D` dim, `Q`/`K` the query / key-value widths, `F` the FFN width, `H`
//! heads, `V` the vocabulary. Ranges only, so that cloning a layout allocates nothing.

use std::ops::Range;

use super::adapter_set::{AdapterSet, target_index, target_shape};
use super::config::TrainConfig;
use edgetune_core::Result;
use edgetune_core::adapters::Target;
use edgetune_core::model::LlamaConfig;

/// The shape of one adapted linear: LoRA rank and the linear's `in`/`out` features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotShape {
    pub rank: usize,
    pub in_f: usize,
    pub out_f: usize,
}

/// What a device step is planned for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceShape {
    pub rows: usize,
    pub seq_len: usize,
    /// Tokens per cross-entropy chunk (capped at `T`).
    pub ce_chunk: usize,
    /// Later micro-batches of a step add to the gradients.
    pub accumulate: bool,
    /// Tokens per FFN row chunk; `None`: the largest of `T`, 1024, 512, … 16 that does not
    /// make the workspace larger than the smallest of them does.
    pub ffn_chunk: Option<usize>,
    /// Per slot `layer · 7 + target` ([`Target::ALL`] order): its adapter, if any.
    pub slots: Vec<Option<SlotShape>>,
}

impl DeviceShape {
    /// LoRA of `tc.lora.rank` on `tc.lora.targets` of every layer `tc.lora.layers` holds, `tc.batch × tc.seq_len`
    /// tokens, accumulation when `tc.accum > 1`, the loss in chunks of `ce_chunk`.
    pub fn lora(cfg: &LlamaConfig, tc: &TrainConfig, ce_chunk: usize) -> DeviceShape {
        let per_layer: Vec<Option<SlotShape>> = Target::ALL
            .iter()
            .map(|&t| {
                tc.lora.targets.contains(&t).then(|| {
                    let (in_f, out_f) = target_shape(cfg, t);
                    SlotShape {
                        rank: tc.lora.rank,
                        in_f,
                        out_f,
                    }
                })
            })
            .collect();
        DeviceShape {
            rows: tc.batch,
            seq_len: tc.seq_len,
            ce_chunk,
            accumulate: tc.accum > 1,
            ffn_chunk: None,
            slots: (0..cfg.n_layer)
                .flat_map(|l| {
                    let adapted = tc.lora.adapts(l);
                    per_layer.iter().map(move |s| s.filter(|_| adapted))
                })
                .collect(),
        }
    }

    /// The shape of `set`'s adapters (each must be a plain LoRA without dropout: an error
    /// naming the method or the flag otherwise).
    pub fn for_set(
        set: &AdapterSet,
        rows: usize,
        seq_len: usize,
        ce_chunk: usize,
        accumulate: bool,
    ) -> Result<DeviceShape> {
        let mut slots = vec![None; set.n_layer() * Target::ALL.len()];
        for (layer, target, a) in set.iter() {
            let lora = super::step_device::plain_lora(a, layer, target)?;
            slots[layer * Target::ALL.len() + target_index(target)] = Some(SlotShape {
                rank: lora.rank(),
                in_f: a.in_features(),
                out_f: a.out_features(),
            });
        }
        Ok(DeviceShape {
            rows,
            seq_len,
            ce_chunk,
            accumulate,
            ffn_chunk: None,
            slots,
        })
    }
}

/// One adapted linear: where its `A` `[r, in]`, `B` `[out, r]` and their gradients live in the
/// workspace (`ga`, `gb` adjacent: the slot's gradients are `ga.start..gb.end`), and its scale
/// (filled in by the step from its adapter; 0 in a plan).
#[derive(Clone, Debug)]
pub(super) struct Slot {
    pub(super) rank: usize,
    pub(super) in_f: usize,
    pub(super) out_f: usize,
    pub(super) scale: f32,
    pub(super) a: Range<usize>,
    pub(super) b: Range<usize>,
    pub(super) ga: Range<usize>,
    pub(super) gb: Range<usize>,
}

/// The attention half of one layer (forward `f.*` or recompute `b.*`): `xn` `[T, D]`, `rstd`
/// `[T]`, `q` `[T, Q]`, `k`/`v` `[T, K]`, `att` `[T, Q]`, `lse` `[T, H]`.
#[derive(Clone, Debug)]
pub(super) struct AttnRanges {
    pub(super) xn: Range<usize>,
    pub(super) rstd: Range<usize>,
    pub(super) q: Range<usize>,
    pub(super) k: Range<usize>,
    pub(super) v: Range<usize>,
    pub(super) att: Range<usize>,
    pub(super) lse: Range<usize>,
}

/// One FFN row chunk (forward `f.*` or recompute `c.*`): `fn_` `[Tc, D]`, `rstd` `[Tc]`,
/// `gate`/`up`/`sw` `[Tc, F]`, `y` `[Tc, D]` (forward only; empty in the recompute).
#[derive(Clone, Debug)]
pub(super) struct FfnRanges {
    pub(super) fn_: Range<usize>,
    pub(super) rstd: Range<usize>,
    pub(super) gate: Range<usize>,
    pub(super) up: Range<usize>,
    pub(super) sw: Range<usize>,
    pub(super) y: Range<usize>,
}

/// The FFN backward of one row chunk: `dsw`/`dgate`/`dup` `[Tc, F]`, `dfn`/`dtmp`/`dmid`
/// `[Tc, D]`.
#[derive(Clone, Debug)]
pub(super) struct FfnGradRanges {
    pub(super) dsw: Range<usize>,
    pub(super) dgate: Range<usize>,
    pub(super) dup: Range<usize>,
    pub(super) dfn: Range<usize>,
    pub(super) dtmp: Range<usize>,
    pub(super) dmid: Range<usize>,
}

/// The attention half's backward: `mid` `[T, D]` (recomputed residual after attention, the
/// ffn_norm input), `datt`/`dq` `[T, Q]`, `dk`/`dv` `[T, K]`, `xn` (attn_norm output again),
/// `dxn`, `dtmp`, `dx` `[T, D]`.
#[derive(Clone, Debug)]
pub(super) struct AttnGradRanges {
    pub(super) mid: Range<usize>,
    pub(super) datt: Range<usize>,
    pub(super) dq: Range<usize>,
    pub(super) dk: Range<usize>,
    pub(super) dv: Range<usize>,
    pub(super) xn: Range<usize>,
    pub(super) dxn: Range<usize>,
    pub(super) dtmp: Range<usize>,
    pub(super) dx: Range<usize>,
}

/// The head's row chunk: `norm`/`dh` `[C, D]`, `rstd` `[C]`, `logits` `[C, V]`.
#[derive(Clone, Debug)]
pub(super) struct HeadRanges {
    pub(super) norm: Range<usize>,
    pub(super) rstd: Range<usize>,
    pub(super) logits: Range<usize>,
    pub(super) dh: Range<usize>,
}

/// The workspace layout: f32 ranges of the one buffer (see step_device_plan.rs). Ranges only, so
/// that cloning it allocates nothing.
#[derive(Clone, Debug)]
pub(super) struct Layout {
    /// `x_0..x_{L−1}` `[T, D]` each from here ([`Layout::x`]).
    pub(super) xs: usize,
    /// `T · D`.
    pub(super) td: usize,
    pub(super) n_layer: usize,
    /// `x_L` `[T, D]`, the final hidden state.
    pub(super) x_top: Range<usize>,
    pub(super) fwd: AttnRanges,
    pub(super) ffn: FfnRanges,
    pub(super) head: HeadRanges,
    pub(super) rc: AttnRanges,
    pub(super) rc_ffn: FfnRanges,
    pub(super) dffn: FfnGradRanges,
    pub(super) datt: AttnGradRanges,
    /// Per target: the adapters' `H = x·Aᵀ` `[T, r_i]` (saved by the recompute for the
    /// backward; scratch in the forward).
    pub(super) h: [Range<usize>; 7],
    /// `[T, max r]`: `dH` of one adapter backward.
    pub(super) dh: Range<usize>,
    /// `[T, D]` ∂L/∂x_{l+1} → ∂L/∂x_l, from the head down to layer 0.
    pub(super) dres: Range<usize>,
    pub(super) params: Range<usize>,
    pub(super) grads: Range<usize>,
    /// Total f32 of the workspace.
    pub(super) len: usize,
}

impl Layout {
    /// `x_l` `[T, D]`, `l ≤ L` (`x_L` the final hidden state).
    pub(super) fn x(&self, l: usize) -> Range<usize> {
        if l < self.n_layer {
            self.xs + l * self.td..self.xs + (l + 1) * self.td
        } else {
            self.x_top.clone()
        }
    }
}
