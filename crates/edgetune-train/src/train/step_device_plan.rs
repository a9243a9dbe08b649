//! The memory plan of a [`super::DeviceStep`], computed from shapes alone (no backend, no
//! workspace allocation): the one source of its workspace layout — [`super::DeviceStep::new`]
//! lays its buffer out with [`plan_device_step`] — and of the bytes the trainer holds against
//! the budget before it builds the step.
//!
//! `T` tokens of a micro-batch, `D` dim, `Q`/`K` the query / key-value widths, `F` the FFN
//! width, `V` the vocabulary, `H` heads, `C` the cross-entropy chunk, `Tc` the FFN row chunk,
//! `r_i` the largest rank on target `i`. The workspace (f32) is
//!
//! ```text
//! params [Σ r·(in+out)] | grads [Σ r·(in+out)] | xs [L, T, D] | arena (packed by lifetime)
//! ```
//!
//! `params` (every slot's `A` `[r, in]`, `B` `[out, r]`), `grads` (`dA`, `dB`, same order) and
//! the layer inputs `xs` (`x_0..x_{L−1}`, the gradient checkpoints) live for the whole step. The
//! rest is one layer's worth of buffers, named and given a lifetime in the schedule below
//! (one template step per op group; a layer loop or a row-chunk loop runs its template steps
//! again for every layer / chunk), and packed into the arena with [`edgetune_core::memory::plan`]'s
//! best fit: buffers whose lifetimes do not intersect share addresses. A buffer written before
//! a loop and read inside it lives to the loop's last step, and one written inside a loop and
//! read after it lives from the loop's first step, so every iteration sees it intact.
//!
//! ```text
//! step  op (buffers written ← read)                       loop
//!  0    x_0 ← embedding                                   ─
//!  1    f.xn, f.rstd ← rmsnorm(x_l)                      layers, forward
//!  2    f.q, f.k, f.v ← f.xn·W + LoRA (h.q/k/v)           │
//!  3    rope; f.att, f.lse ← attention(f.q, f.k, f.v)     │
//!  4    x_{l+1} ← f.att·Woᵀ + LoRA (h.o) + x_l            │  (x_L: `x_top`)
//!  5    f.fn, f.frstd ← rmsnorm(x_{l+1}[rows])            │  FFN row chunks of Tc
//!  6    f.gate, f.up ← f.fn·W + LoRA (h.gate/up)          │  │
//!  7    f.sw ← swiglu(f.gate, f.up)                       │  │
//!  8    f.y ← f.sw·Wdᵀ + LoRA (h.down); x_{l+1}[rows] += f.y
//!  9    hd.norm, hd.rstd ← rmsnorm(x_top[rows])          head row chunks of C
//! 10    hd.logits, hd.dh ← cross_entropy(hd.norm)         │
//! 11    dres[rows] ← rmsnorm'(x_top, hd.dh)               │
//! 12    b.xn, b.rstd ← rmsnorm(x_l)                      layers L−1..0, backward
//! 13    b.q, b.k, b.v ← b.xn·W + LoRA (h.q/k/v saved)     │
//! 14    rope; b.att, b.lse ← attention                    │
//! 15    b.mid ← b.att·Woᵀ + LoRA (h.o saved) + x_l        │
//! 16    c.fn, c.rstd ← rmsnorm(b.mid[rows])               │  FFN row chunks of Tc
//! 17    c.gate, c.up ← c.fn·W + LoRA (h.gate/up saved)    │  │
//! 18    c.sw ← swiglu; h.down[rows] ← c.sw·Aᵀ              │  │
//! 19    c.dsw ← dres[rows]·Wd + LoRA' (dh)                │  │
//! 20    c.dgate, c.dup ← swiglu'(c.gate, c.up, c.dsw)     │  │
//! 21    c.dfn ← c.dgate·Wg + LoRA'                        │  │
//! 22    c.dtmp ← c.dup·Wu + LoRA'; c.dfn += c.dtmp        │  │
//! 23    c.dmid ← rmsnorm'(b.mid, c.dfn); dres[rows] += c.dmid
//! 24    b.datt ← dres·Wo + LoRA'                          │
//! 25    b.dq, b.dk, b.dv ← attention'; rope'              │
//! 26    b.xn2 ← rmsnorm(x_l) (b.xn again, b.rstd again)   │
//! 27    b.dxn ← Σ b.d{q,k,v}·W + LoRA' (via b.dtmp)       │
//! 28    b.dx ← rmsnorm'(x_l, b.dxn); dres += b.dx         │
//! ```
//!
//! Nothing of one layer but `xs` and `dres` crosses layers, and the FFN never holds more than
//! `Tc` rows of its `[·, F]` activations; `xn` is recomputed before the Q/K/V backward rather
//! than kept through the FFN and the attention backward. The host side holds one slot's
//! gradients (the largest `r·(in + out)`), the shifted targets and the segments.

use std::ops::Range;

use super::adapter_set::target_shape;
use super::step_device_layout::{
    AttnGradRanges, AttnRanges, FfnGradRanges, FfnRanges, HeadRanges, Layout, Slot,
};
pub use super::step_device_layout::{DeviceShape, SlotShape};
use edgetune_core::adapters::Target;
use edgetune_core::memory::plan::{ALIGN, Category, PlanBuilder};
use edgetune_core::model::LlamaConfig;
use edgetune_core::{Error, Result};

/// A device step's plan: its layout and what it holds.
#[derive(Clone, Debug)]
pub struct DevicePlan {
    pub(super) lay: Layout,
    pub(super) slots: Vec<Option<Slot>>,
    pub(super) tokens: usize,
    pub(super) ce_chunk: usize,
    pub(super) ffn_chunk: usize,
    /// f32 of the host gradient staging (the largest slot's `r·(in + out)`).
    pub(super) staging_len: usize,
    n_params: usize,
    arena_bytes: u64,
    peak_live_bytes: u64,
    categories: Vec<(Category, usize, u64)>,
}

/// Schedule steps (see the module docs).
mod at {
    pub const F_NORM: u32 = 1;
    pub const F_QKV: u32 = 2;
    pub const F_ATT: u32 = 3;
    pub const F_OUT: u32 = 4;
    pub const F_FFN_NORM: u32 = 5;
    pub const F_GATE_UP: u32 = 6;
    pub const F_SWIGLU: u32 = 7;
    pub const F_DOWN: u32 = 8;
    pub const H_NORM: u32 = 9;
    pub const H_CE: u32 = 10;
    pub const H_NORM_BWD: u32 = 11;
    pub const R_NORM: u32 = 12;
    pub const R_QKV: u32 = 13;
    pub const R_ATT: u32 = 14;
    pub const R_OUT: u32 = 15;
    pub const C_NORM: u32 = 16;
    pub const C_GATE_UP: u32 = 17;
    pub const C_SWIGLU: u32 = 18;
    pub const C_DOWN_BWD: u32 = 19;
    pub const C_SWIGLU_BWD: u32 = 20;
    pub const C_GATE_BWD: u32 = 21;
    pub const C_UP_BWD: u32 = 22;
    pub const C_NORM_BWD: u32 = 23;
    pub const B_OUT: u32 = 24;
    pub const B_ATT: u32 = 25;
    pub const B_XN: u32 = 26;
    pub const B_QKV: u32 = 27;
    pub const B_NORM: u32 = 28;
}

/// `Π dims` with the shape in the overflow error.
fn size(what: &str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "device step plan: {what} of shape {dims:?} overflows"
            ))
        })
}

/// f32 per [`ALIGN`] bytes.
const ALIGN_F32: usize = ALIGN as usize / 4;

fn align_f32(n: usize) -> Result<usize> {
    n.checked_next_multiple_of(ALIGN_F32)
        .ok_or_else(|| Error::Invalid(format!("device step plan: {n} values overflow")))
}

/// Plans a device step of `shape` on a model `cfg` (see the module docs). Errors: an empty
/// shape, slots that do not match the model's layers or projections, sizes that overflow.
pub fn plan_device_step(cfg: &LlamaConfig, shape: &DeviceShape) -> Result<DevicePlan> {
    let (rows, seq_len, ce_chunk) = (shape.rows, shape.seq_len, shape.ce_chunk);
    if rows == 0 || seq_len == 0 || ce_chunk == 0 || shape.ffn_chunk == Some(0) {
        return Err(Error::Invalid(format!(
            "device training step: empty shape ({rows} rows × {seq_len} tokens, chunk \
             {ce_chunk}, FFN chunk {:?})",
            shape.ffn_chunk
        )));
    }
    if shape.slots.len() != cfg.n_layer * Target::ALL.len() {
        return Err(Error::Invalid(format!(
            "device step plan: {} adapter slots for a model of {} layers × 7",
            shape.slots.len(),
            cfg.n_layer
        )));
    }
    for (i, s) in shape.slots.iter().enumerate() {
        let Some(s) = s else { continue };
        let target = Target::ALL[i % Target::ALL.len()];
        if (s.in_f, s.out_f) != target_shape(cfg, target) || s.rank == 0 {
            return Err(Error::Invalid(format!(
                "device step plan: the adapter of blk.{}.{} is {}×{} of rank {}, the model's \
                 linear is {:?} (in, out)",
                i / Target::ALL.len(),
                target.gguf_stem(),
                s.in_f,
                s.out_f,
                s.rank,
                target_shape(cfg, target)
            )));
        }
    }
    let t = size("tokens", &[rows, seq_len])?;
    match shape.ffn_chunk {
        Some(c) => layout(cfg, shape, t, c.min(t)),
        None => {
            // Smaller FFN chunks only lower the FFN's peak; take the largest chunk that does
            // not raise the workspace above the smallest chunk's (larger GEMMs run faster).
            let candidates = ffn_chunk_candidates(t);
            let smallest = layout(cfg, shape, t, *candidates.last().unwrap_or(&t))?;
            for &c in &candidates {
                let p = layout(cfg, shape, t, c)?;
                if p.lay.len <= smallest.lay.len {
                    return Ok(p);
                }
            }
            Ok(smallest)
        }
    }
}

/// FFN chunk sizes tried, largest first: `T`, then 1024, 512, … 16 below `T`.
fn ffn_chunk_candidates(t: usize) -> Vec<usize> {
    let mut candidates = vec![t];
    let mut c = 1024;
    while c >= 16 {
        if c < t {
            candidates.push(c);
        }
        c /= 2;
    }
    candidates
}

/// [`plan_device_step`] with the largest FFN chunk (of `T`, 1024, 512, … 16) whose plan `fits`
/// (larger chunks run faster: fewer passes over the FFN weights), when `shape.ffn_chunk` is
/// `None`; otherwise, or when none fits, [`plan_device_step`]'s plan.
pub fn plan_device_step_within(
    cfg: &LlamaConfig,
    shape: &DeviceShape,
    fits: impl Fn(&DevicePlan) -> bool,
) -> Result<DevicePlan> {
    let smallest = plan_device_step(cfg, shape)?;
    if shape.ffn_chunk.is_some() {
        return Ok(smallest);
    }
    for c in ffn_chunk_candidates(smallest.tokens) {
        if c <= smallest.ffn_chunk {
            break;
        }
        let p = layout(cfg, shape, smallest.tokens, c)?;
        if fits(&p) {
            return Ok(p);
        }
    }
    Ok(smallest)
}

/// The plan with FFN chunks of `tc` rows.
fn layout(cfg: &LlamaConfig, shape: &DeviceShape, t: usize, tc: usize) -> Result<DevicePlan> {
    use Category::{
        AdapterActivation, Checkpoint, CrossEntropy, Recompute, ResidualGrad, Temporary,
    };
    let ce = shape.ce_chunk.min(t);
    let (d, qd, kvd, f, v, nh) = (
        cfg.dim,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.ffn,
        cfg.n_vocab,
        cfg.n_head,
    );
    let mut max_rank = [0usize; 7];
    let mut slots: Vec<Option<Slot>> = Vec::with_capacity(shape.slots.len());
    let (mut n_params, mut staging_len) = (0usize, 0usize);
    for (i, s) in shape.slots.iter().enumerate() {
        let Some(s) = s else {
            slots.push(None);
            continue;
        };
        let ti = i % Target::ALL.len();
        max_rank[ti] = max_rank[ti].max(s.rank);
        let (na, nb) = (
            size("lora_a", &[s.rank, s.in_f])?,
            size("lora_b", &[s.out_f, s.rank])?,
        );
        staging_len = staging_len.max(na + nb);
        let end = n_params
            .checked_add(na + nb)
            .ok_or_else(|| Error::Invalid("device step plan: adapter sizes overflow".into()))?;
        slots.push(Some(Slot {
            rank: s.rank,
            in_f: s.in_f,
            out_f: s.out_f,
            scale: 0.0,
            a: n_params..n_params + na,
            b: n_params + na..end,
            ga: 0..0,
            gb: 0..0,
        }));
        n_params = end;
    }
    // params | grads | xs | arena.
    let p_len = align_f32(n_params)?;
    let xs_len = align_f32(size("layer inputs", &[cfg.n_layer, t, d])?)?;
    let (p0, g0, xs) = (0, p_len, 2 * p_len);
    let arena0 = xs + xs_len;
    for s in slots.iter_mut().flatten() {
        s.ga = g0 + s.a.start..g0 + s.a.end;
        s.gb = g0 + s.b.start..g0 + s.b.end;
        s.a = p0 + s.a.start..p0 + s.a.end;
        s.b = p0 + s.b.start..p0 + s.b.end;
    }

    use at::*;
    let mut pb = PlanBuilder::new();
    let mut add = |name: &str, cat: Category, dims: &[usize], first: u32, last: u32| {
        let n = size(name, dims)?;
        pb.add_buffer(name, cat, 4 * n as u64, first, last);
        Ok::<_, Error>(())
    };
    let act = Category::Activation;
    // Forward of a layer (steps 1–8; the FFN in chunks of Tc rows, 5–8).
    add("f.xn", act, &[t, d], F_NORM, F_QKV)?;
    add("f.rstd", act, &[t], F_NORM, F_NORM)?;
    add("f.q", act, &[t, qd], F_QKV, F_ATT)?;
    add("f.k", act, &[t, kvd], F_QKV, F_ATT)?;
    add("f.v", act, &[t, kvd], F_QKV, F_ATT)?;
    add("f.att", act, &[t, qd], F_ATT, F_OUT)?;
    add("f.lse", act, &[t, nh], F_ATT, F_ATT)?;
    add("f.fn", act, &[tc, d], F_FFN_NORM, F_GATE_UP)?;
    add("f.frstd", act, &[tc], F_FFN_NORM, F_FFN_NORM)?;
    add("f.gate", act, &[tc, f], F_GATE_UP, F_SWIGLU)?;
    add("f.up", act, &[tc, f], F_GATE_UP, F_SWIGLU)?;
    add("f.sw", act, &[tc, f], F_SWIGLU, F_DOWN)?;
    add("f.y", act, &[tc, d], F_DOWN, F_DOWN)?;
    // x_L: written by the last layer's out-projection, read by the head's loop to its end.
    add("x_top", Checkpoint, &[t, d], F_OUT, H_NORM_BWD)?;
    // The head, in chunks of C rows (9–11); `dres` is written inside that loop.
    add("hd.norm", CrossEntropy, &[ce, d], H_NORM, H_CE)?;
    add("hd.rstd", CrossEntropy, &[ce], H_NORM, H_NORM_BWD)?;
    add("hd.logits", CrossEntropy, &[ce, v], H_CE, H_CE)?;
    add("hd.dh", CrossEntropy, &[ce, d], H_CE, H_NORM_BWD)?;
    add("dres", ResidualGrad, &[t, d], H_NORM, B_NORM)?;
    // Backward of a layer: the attention half recomputed (12–15); q, k, v, att, lse kept
    // through the FFN loop for the attention backward; mid read by every FFN chunk.
    add("b.xn", Recompute, &[t, d], R_NORM, R_QKV)?;
    add("b.rstd", Recompute, &[t], R_NORM, B_NORM)?;
    add("b.q", Recompute, &[t, qd], R_QKV, B_ATT)?;
    add("b.k", Recompute, &[t, kvd], R_QKV, B_ATT)?;
    add("b.v", Recompute, &[t, kvd], R_QKV, B_ATT)?;
    add("b.att", Recompute, &[t, qd], R_ATT, B_ATT)?;
    add("b.lse", Recompute, &[t, nh], R_ATT, B_ATT)?;
    add("b.mid", Recompute, &[t, d], R_OUT, C_NORM_BWD)?;
    // One FFN chunk: recompute (16–18) and backward (19–23).
    add("c.fn", Recompute, &[tc, d], C_NORM, C_UP_BWD)?;
    add("c.rstd", Recompute, &[tc], C_NORM, C_NORM_BWD)?;
    add("c.gate", Recompute, &[tc, f], C_GATE_UP, C_SWIGLU_BWD)?;
    add("c.up", Recompute, &[tc, f], C_GATE_UP, C_SWIGLU_BWD)?;
    add("c.sw", Recompute, &[tc, f], C_SWIGLU, C_DOWN_BWD)?;
    add("c.dsw", Temporary, &[tc, f], C_DOWN_BWD, C_SWIGLU_BWD)?;
    add("c.dgate", Temporary, &[tc, f], C_SWIGLU_BWD, C_GATE_BWD)?;
    add("c.dup", Temporary, &[tc, f], C_SWIGLU_BWD, C_UP_BWD)?;
    add("c.dfn", Temporary, &[tc, d], C_GATE_BWD, C_NORM_BWD)?;
    add("c.dtmp", Temporary, &[tc, d], C_UP_BWD, C_UP_BWD)?;
    add("c.dmid", Temporary, &[tc, d], C_NORM_BWD, C_NORM_BWD)?;
    // The attention half's backward (24–28).
    add("b.datt", Temporary, &[t, qd], B_OUT, B_ATT)?;
    add("b.dq", Temporary, &[t, qd], B_ATT, B_QKV)?;
    add("b.dk", Temporary, &[t, kvd], B_ATT, B_QKV)?;
    add("b.dv", Temporary, &[t, kvd], B_ATT, B_QKV)?;
    add("b.xn2", Recompute, &[t, d], B_XN, B_QKV)?;
    add("b.dxn", Temporary, &[t, d], B_QKV, B_NORM)?;
    add("b.dtmp", Temporary, &[t, d], B_QKV, B_QKV)?;
    add("b.dx", Temporary, &[t, d], B_NORM, B_NORM)?;
    // Adapter activations: H per target (scratch in the forward, saved by the recompute), dH
    // of one adapter backward (FFN chunks, out-projection, Q/K/V).
    for (i, name) in crate::train::plan_llama::TARGETS.iter().enumerate() {
        add(
            &format!("h.{name}"),
            AdapterActivation,
            &[t, max_rank[i]],
            F_QKV,
            B_QKV,
        )?;
    }
    let r_max = max_rank.iter().copied().max().unwrap_or(0);
    add("dh", AdapterActivation, &[t, r_max], C_DOWN_BWD, B_QKV)?;

    let plan = pb.pack()?;
    let arena_len = usize::try_from(plan.arena_bytes() / 4)
        .map_err(|_| Error::Invalid("device step plan: the arena overflows".into()))?;
    let r = |name: &str| -> Result<Range<usize>> {
        let id = plan
            .find(name)
            .ok_or_else(|| Error::Invalid(format!("device step plan: no buffer {name}")))?;
        let r = plan.f32_range(id)?;
        Ok(arena0 + r.start..arena0 + r.end)
    };
    let attn = |p: &str| -> Result<AttnRanges> {
        Ok(AttnRanges {
            xn: r(&format!("{p}.xn"))?,
            rstd: r(&format!("{p}.rstd"))?,
            q: r(&format!("{p}.q"))?,
            k: r(&format!("{p}.k"))?,
            v: r(&format!("{p}.v"))?,
            att: r(&format!("{p}.att"))?,
            lse: r(&format!("{p}.lse"))?,
        })
    };
    let h =
        [0, 1, 2, 3, 4, 5, 6].map(|i| r(&format!("h.{}", crate::train::plan_llama::TARGETS[i])));
    let [h0, h1, h2, h3, h4, h5, h6] = h;
    let lay = Layout {
        xs,
        td: t * d,
        n_layer: cfg.n_layer,
        x_top: r("x_top")?,
        fwd: attn("f")?,
        ffn: FfnRanges {
            fn_: r("f.fn")?,
            rstd: r("f.frstd")?,
            gate: r("f.gate")?,
            up: r("f.up")?,
            sw: r("f.sw")?,
            y: r("f.y")?,
        },
        head: HeadRanges {
            norm: r("hd.norm")?,
            rstd: r("hd.rstd")?,
            logits: r("hd.logits")?,
            dh: r("hd.dh")?,
        },
        rc: attn("b")?,
        rc_ffn: FfnRanges {
            fn_: r("c.fn")?,
            rstd: r("c.rstd")?,
            gate: r("c.gate")?,
            up: r("c.up")?,
            sw: r("c.sw")?,
            y: 0..0,
        },
        dffn: FfnGradRanges {
            dsw: r("c.dsw")?,
            dgate: r("c.dgate")?,
            dup: r("c.dup")?,
            dfn: r("c.dfn")?,
            dtmp: r("c.dtmp")?,
            dmid: r("c.dmid")?,
        },
        datt: AttnGradRanges {
            mid: r("b.mid")?,
            datt: r("b.datt")?,
            dq: r("b.dq")?,
            dk: r("b.dk")?,
            dv: r("b.dv")?,
            xn: r("b.xn2")?,
            dxn: r("b.dxn")?,
            dtmp: r("b.dtmp")?,
            dx: r("b.dx")?,
        },
        h: [h0?, h1?, h2?, h3?, h4?, h5?, h6?],
        dh: r("dh")?,
        dres: r("dres")?,
        params: p0..p0 + n_params,
        grads: g0..g0 + n_params,
        len: arena0
            .checked_add(arena_len)
            .ok_or_else(|| Error::Invalid("device step plan: the workspace overflows".into()))?,
    };
    Ok(DevicePlan {
        lay,
        slots,
        tokens: t,
        ce_chunk: ce,
        ffn_chunk: tc,
        staging_len,
        n_params,
        arena_bytes: plan.arena_bytes(),
        peak_live_bytes: plan.peak_live_bytes(),
        categories: plan.category_totals(),
    })
}

/// Host bytes of a step's own buffers: the gradient staging (f32), the shifted targets (i32)
/// and the segments (`(usize, usize)`), for the given capacities.
pub(super) fn host_bytes_of(staging: usize, targets: usize, segments: usize) -> usize {
    4 * staging + 4 * targets + std::mem::size_of::<(usize, usize)>() * segments
}

impl DevicePlan {
    /// Bytes of the workspace (the step's one backend allocation).
    pub fn workspace_bytes(&self) -> usize {
        4 * self.lay.len
    }

    /// Host bytes the step holds besides: one slot's gradient staging, the targets and the
    /// segments of a micro-batch.
    pub fn host_bytes(&self) -> usize {
        host_bytes_of(self.staging_len, self.tokens, self.tokens)
    }

    /// Tokens per FFN row chunk.
    pub fn ffn_chunk(&self) -> usize {
        self.ffn_chunk
    }

    /// Bytes of the packed part (one layer's activations, the head, `x_L`, `dres`, the
    /// adapters' `H`/`dH`), and the lower bound any packing of it has (its peak live bytes).
    pub fn arena_bytes(&self) -> (u64, u64) {
        (self.arena_bytes, self.peak_live_bytes)
    }

    /// What a device step replacing the CPU step's arena adds up to: `cpu_total` (the CPU
    /// plan) minus its arena, plus the host bytes, plus the workspace where it lives in host
    /// memory (the CPU backend, an integrated GPU).
    pub fn total_in_place_of(&self, cpu_total: u64, cpu_arena: u64, in_host: bool) -> u64 {
        let shared = if in_host {
            self.workspace_bytes() as u64
        } else {
            0
        };
        cpu_total.saturating_sub(cpu_arena) + self.host_bytes() as u64 + shared
    }

    /// A text table of the workspace (MiB): parameters, gradients, layer inputs, the packed
    /// arena by category, and the host bytes.
    pub fn report(&self) -> String {
        use std::fmt::Write as _;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let mut s = String::new();
        let lay = &self.lay;
        let _ = writeln!(
            s,
            "{:<26} {:>10.2}",
            "adapter A, B",
            mib(4 * lay.params.len() as u64)
        );
        let _ = writeln!(
            s,
            "{:<26} {:>10.2}",
            "adapter dA, dB",
            mib(4 * lay.grads.len() as u64)
        );
        let xs = 4 * (lay.n_layer * lay.td) as u64;
        let _ = writeln!(s, "{:<26} {:>10.2}", "layer inputs x_0..x_L-1", mib(xs));
        for (c, n, bytes) in &self.categories {
            let _ = writeln!(
                s,
                "  {:<24} {:>10.2}  ({n} buffers, sum)",
                format!("{c:?}"),
                mib(*bytes)
            );
        }
        let _ = writeln!(
            s,
            "{:<26} {:>10.2}  (peak live {:.2}; FFN chunk {} rows, loss chunk {})",
            "arena (packed)",
            mib(self.arena_bytes),
            mib(self.peak_live_bytes),
            self.ffn_chunk,
            self.ce_chunk
        );
        let _ = writeln!(
            s,
            "{:<26} {:>10.2}",
            "workspace",
            mib(self.workspace_bytes() as u64)
        );
        let _ = writeln!(
            s,
            "{:<26} {:>10.2}  (one slot's gradients of {} values; {} parameters in all)",
            "host",
            mib(self.host_bytes() as u64),
            self.staging_len,
            self.n_params
        );
        s
    }
}
