//! One Llama layer of a training step: its forward (or, under gradient checkpointing, its
//! recompute from the saved layer input) and its backward, op by op over arena views.
//! `T` tokens; `D` dim, `Q`/`K` the query / key-value widths, `F` the FFN width.
//!
//! ```text
//! forward                                  backward (dres = ∂L/∂x_{l+1} → ∂L/∂x_l, in place)
//! xn  = rmsnorm(x)                         dsw  = dres·Wd (+ adapter)
//! q,k,v = xn·W{q,k,v}ᵀ (+ adapters)        dgate, dup = swiglu'(gate, up, dsw)
//! q,k = rope(q,k)   (per segment)          dfn  = dgate·Wg + dup·Wu (+ adapters)
//! att = attention(q,k,v) (per segment)     dres += rmsnorm'(mid, dfn)
//! o   = att·Woᵀ (+ adapter)                datt = dres·Wo (+ adapter)
//! mid = x + o   (x_{l+1} in the forward)   dq,dk,dv = attention'(datt); dq,dk = rope'(dq,dk)
//! fn  = rmsnorm(mid)                       dxn  = dq·Wq + dk·Wk + dv·Wv (+ adapters)
//! gate,up = fn·W{gate,up}ᵀ (+ adapters)    dres += rmsnorm'(x, dxn)
//! sw  = swiglu(gate, up)
//! y   = sw·Wdᵀ (+ adapter);  x_{l+1} = mid + y
//! ```
//!
//! The recompute skips the base `sw·Wdᵀ` (the backward never reads `y`) unless the ffn_down
//! adapter reads the base output ([`Adapter::reads_base_output`], DoRA); it runs the adapter to
//! re-save its activations.

use super::step::{Phase, TrainStep, adapter_at};
use super::step_reslora::{self, ResStore};
use crate::train::AdapterSet;
use crate::train::plan_llama::{Bwd, Fwd};
use edgetune_core::Result;
use edgetune_core::adapters::{Adapter, Pass};
use edgetune_core::backend::{AttentionDims, Backend, CpuBackend, RopeDims};
use edgetune_core::memory::arena::Arena;
use edgetune_core::memory::plan::BufferId;
use edgetune_core::model::forward::BackendLayer;
use edgetune_core::model::{BackendModel, LlamaConfig};

const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;
const O: usize = 3;
const GATE: usize = 4;
const UP: usize = 5;
const DOWN: usize = 6;

/// `y += branch(x)` for one adapter, saving into `h`.
#[allow(clippy::too_many_arguments)]
fn adapter_forward(
    arena: &mut Arena,
    step: u32,
    a: Option<&dyn Adapter>,
    pass: Pass,
    x: BufferId,
    y: BufferId,
    h: BufferId,
    scratch: BufferId,
) -> Result<()> {
    let Some(a) = a else { return Ok(()) };
    let [x, y, h, s] = arena.views_mut_at(step, [x, y, h, scratch])?;
    let (hl, sl) = (a.saved_len(pass.n), a.scratch_len(pass.n));
    if hl > h.len() || sl > s.len() {
        return Err(edgetune_core::Error::Invalid(format!(
            "training step: adapter workspace ({hl} saved, {sl} scratch) exceeds the plan's \
             ({}, {})",
            h.len(),
            s.len()
        )));
    }
    a.forward(pass, x, y, &mut h[..hl], &mut s[..sl])
}

/// Everything one adapter backward needs.
struct AdapterGrad {
    x: BufferId,
    g: BufferId,
    h: BufferId,
    dx: BufferId,
    grad: BufferId,
    n_params: usize,
}

/// `dx += ∂branch/∂x ᵀ g`; the parameter gradients go into `grad` (`first`) or are added to it
/// through `tmp`.
#[allow(clippy::too_many_arguments)]
fn adapter_backward(
    arena: &mut Arena,
    step: u32,
    a: Option<&dyn Adapter>,
    pass: Pass,
    io: AdapterGrad,
    scratch: BufferId,
    tmp: BufferId,
    first: bool,
) -> Result<()> {
    let Some(a) = a else { return Ok(()) };
    let (hl, sl, np) = (a.saved_len(pass.n), a.scratch_len(pass.n), io.n_params);
    let [x, g, h, s, dx, grad, tmp] =
        arena.views_mut_at(step, [io.x, io.g, io.h, scratch, io.dx, io.grad, tmp])?;
    let short = hl > h.len() || sl > s.len() || np > grad.len() || (!first && np > tmp.len());
    if short {
        return Err(edgetune_core::Error::Invalid(format!(
            "training step: adapter backward needs {hl} saved, {sl} scratch, {np} gradient \
             values; the plan has {}, {}, {}",
            h.len(),
            s.len(),
            grad.len()
        )));
    }
    let (h, s) = (&h[..hl], &mut s[..sl]);
    if first {
        a.backward(pass, x, g, h, s, dx, &mut grad[..np])
    } else {
        a.backward(pass, x, g, h, s, dx, &mut tmp[..np])?;
        edgetune_core::optim::accum::add_scaled(&mut grad[..np], &tmp[..np], 1.0);
        Ok(())
    }
}

// ResLoRA plumbing (docs/METHODS.md#reslora): these two wrap the plain adapter calls so that
// targets carrying ResLoRA read / feed the previous layer's module input; see step_reslora.rs.

/// [`adapter_forward`], or ResLoRA's cross-layer forward; stores module inputs it needs.
/// `ids` = `[x, y, h, scratch]`.
fn any_forward(
    ar: &mut Arena,
    res: Option<&mut ResStore>,
    step: u32,
    a: Option<&dyn Adapter>,
    pass: Pass,
    ids: [BufferId; 4],
    at: (usize, usize, Phase),
) -> Result<()> {
    if step_reslora::forward(res, ar, step, a, pass, ids, at)? {
        return Ok(());
    }
    let [x, y, h, scratch] = ids;
    adapter_forward(ar, step, a, pass, x, y, h, scratch)
}

/// [`adapter_backward`] after adding ResLoRA's pending gradient for this module input, or
/// ResLoRA's cross-layer backward. `bufs` = `[scratch, tmp]`.
#[allow(clippy::too_many_arguments)]
fn any_backward(
    ar: &mut Arena,
    mut res: Option<&mut ResStore>,
    step: u32,
    a: Option<&dyn Adapter>,
    pass: Pass,
    io: AdapterGrad,
    [scratch, tmp]: [BufferId; 2],
    (l, i, first): (usize, usize, bool),
) -> Result<()> {
    step_reslora::take_pending(res.as_deref_mut(), ar, step, io.dx, i)?;
    let ids = [io.x, io.g, io.h, scratch, io.dx, io.grad, tmp];
    if step_reslora::backward(res, ar, step, a, pass, ids, io.n_params, (l, i, first))? {
        return Ok(());
    }
    adapter_backward(ar, step, a, pass, io, scratch, tmp, first)
}

fn rope_dims(cfg: &LlamaConfig, n_head: usize, n_tokens: usize) -> RopeDims {
    RopeDims {
        n_tokens,
        pos0: 0,
        n_head,
        head_dim: cfg.head_dim,
        rope_dim: cfg.rope_dim,
    }
}

fn att_dims(cfg: &LlamaConfig, n_tokens: usize) -> AttentionDims {
    AttentionDims {
        n_tokens,
        pos0: 0,
        n_head: cfg.n_head,
        n_head_kv: cfg.n_head_kv,
        head_dim: cfg.head_dim,
    }
}

impl TrainStep {
    /// The forward of layer `l` (weights `lw`, from the map or a stream) from its saved input: in [`Phase::Forward`] into the forward
    /// buffers, writing `x_{l+1}`; in [`Phase::Recompute`] into the saved-for-backward buffers.
    pub(super) fn layer_forward(
        &mut self,
        m: &BackendModel<'_, CpuBackend>,
        lw: &BackendLayer<'_, CpuBackend>,
        phase: Phase,
        l: usize,
        set: &AdapterSet,
        pass: Pass,
    ) -> Result<()> {
        let be = CpuBackend;
        let li = self.ids.layers[l];
        let (a, next) = match phase {
            Phase::Forward => (li.fwd, Some(self.ids.next_x(l))),
            Phase::Recompute => (li.saved, None),
        };
        let s = self.sched;
        let at = |sub: Fwd| match phase {
            Phase::Forward => s.fwd(l, sub),
            Phase::Recompute => s.recompute(l, sub),
        };
        let (n, eps, scr) = (pass.n, self.cfg.rms_eps, self.ids.adapter_scratch);
        let (qd, kvd) = (self.cfg.q_dim(), self.cfg.kv_dim());
        let store = self.input_store();
        // The KL anchor's base pass (step_kl.rs) runs the layer with every adapter off.
        let off = self.adapters_off;
        let ad = |i: usize| if off { None } else { adapter_at(set, l, i) };
        let (cfg, ar) = (&self.cfg, &mut self.arena);
        let mut no_res = None;
        // ResLoRA's cross-layer store (step_reslora.rs); none for the base pass.
        let res = if off { &mut no_res } else { &mut self.res };

        // The recompute reads the input as the backward will (bf16 checkpoints: unpacked).
        let x_in = match phase {
            Phase::Forward => li.x,
            Phase::Recompute => li.x_back,
        };
        let st = at(Fwd::AttnNorm);
        if phase == Phase::Recompute {
            let spill = self.spill.as_ref();
            super::step_spill::load_layer_input(ar, &self.ids, store, spill, l, st)?;
        }
        let [x, xn, rstd] = ar.views_mut_at(st, [x_in, a.xn, a.rstd_attn])?;
        be.rmsnorm(
            x,
            &lw.attn_norm,
            eps,
            xn,
            (!rstd.is_empty()).then_some(rstd),
        )?;

        let st = at(Fwd::Qkv);
        for (i, out, w) in [
            (Q, a.q, &lw.attn_q),
            (K, a.k, &lw.attn_k),
            (V, a.v, &lw.attn_v),
        ] {
            let [xn, y] = ar.views_mut_at(st, [a.xn, out])?;
            be.matmul_xwt(xn, n, w, y)?;
            any_forward(
                ar,
                res.as_mut(),
                st,
                ad(i),
                pass,
                [a.xn, out, a.h[i], scr],
                (l, i, phase),
            )?;
        }
        let [q, k] = ar.views_mut_at(st, [a.q, a.k])?;
        for &(t0, len) in &self.segments {
            let qs = &mut q[t0 * qd..(t0 + len) * qd];
            be.rope(qs, &m.inv_freq, rope_dims(cfg, cfg.n_head, len))?;
            let ks = &mut k[t0 * kvd..(t0 + len) * kvd];
            be.rope(ks, &m.inv_freq, rope_dims(cfg, cfg.n_head_kv, len))?;
        }

        let st = at(Fwd::Attention);
        let [q, k, v, att, lse] = ar.views_mut_at(st, [a.q, a.k, a.v, a.att, a.lse])?;
        let nh = cfg.n_head;
        for &(t0, len) in &self.segments {
            let lse_seg = if lse.is_empty() {
                None
            } else {
                Some(&mut lse[t0 * nh..(t0 + len) * nh])
            };
            be.attention(
                &q[t0 * qd..(t0 + len) * qd],
                &k[t0 * kvd..(t0 + len) * kvd],
                &v[t0 * kvd..(t0 + len) * kvd],
                &mut att[t0 * qd..(t0 + len) * qd],
                lse_seg,
                att_dims(cfg, len),
            )?;
        }

        let st = at(Fwd::OutProj);
        let [att, o] = ar.views_mut_at(st, [a.att, a.o])?;
        be.matmul_xwt(att, n, &lw.attn_output, o)?;
        any_forward(
            ar,
            res.as_mut(),
            st,
            ad(O),
            pass,
            [a.att, a.o, a.h[O], scr],
            (l, O, phase),
        )?;
        if let Some(next) = next {
            let [x, o, xn1] = ar.views_mut_at(st, [x_in, a.o, next])?;
            xn1.copy_from_slice(x);
            be.add_assign(xn1, o)?;
        }
        let mid_id = if a.mid != self.ids.empty {
            let [x, o, mid] = ar.views_mut_at(st, [x_in, a.o, a.mid])?;
            mid.copy_from_slice(x);
            be.add_assign(mid, o)?;
            a.mid
        } else {
            next.unwrap_or(a.mid)
        };

        let st = at(Fwd::FfnNorm);
        let [mid, fnv, rstd] = ar.views_mut_at(st, [mid_id, a.fn_, a.rstd_ffn])?;
        be.rmsnorm(
            mid,
            &lw.ffn_norm,
            eps,
            fnv,
            (!rstd.is_empty()).then_some(rstd),
        )?;

        let st = at(Fwd::GateUp);
        for (i, out, w) in [(GATE, a.gate, &lw.ffn_gate), (UP, a.up, &lw.ffn_up)] {
            let [fnv, y] = ar.views_mut_at(st, [a.fn_, out])?;
            be.matmul_xwt(fnv, n, w, y)?;
            any_forward(
                ar,
                res.as_mut(),
                st,
                ad(i),
                pass,
                [a.fn_, out, a.h[i], scr],
                (l, i, phase),
            )?;
        }

        let st = at(Fwd::Swiglu);
        let [gate, up, sw] = ar.views_mut_at(st, [a.gate, a.up, a.sw])?;
        be.swiglu(gate, up, sw)?;

        let st = at(Fwd::Down);
        if let Some(next) = next {
            let [sw, y] = ar.views_mut_at(st, [a.sw, a.y])?;
            be.matmul_xwt(sw, n, &lw.ffn_down, y)?;
            any_forward(
                ar,
                res.as_mut(),
                st,
                ad(DOWN),
                pass,
                [a.sw, a.y, a.h[DOWN], scr],
                (l, DOWN, phase),
            )?;
            let [y, xn1] = ar.views_mut_at(st, [a.y, next])?;
            be.add_assign(xn1, y)?;
            // The next layer's input is complete: keep it for its recompute (bf16 rounds the
            // f32 copy the same way, so the forward and the recompute read equal inputs).
            let spill = self.spill.as_ref();
            super::step_spill::save_layer_input(ar, &self.ids, store, spill, l + 1, st)?;
        } else if let Some(down) = ad(DOWN) {
            if down.reads_base_output() {
                let [sw, y] = ar.views_mut_at(st, [a.sw, a.y])?;
                be.matmul_xwt(sw, n, &lw.ffn_down, y)?;
            }
            any_forward(
                ar,
                res.as_mut(),
                st,
                Some(down),
                pass,
                [a.sw, a.y, a.h[DOWN], scr],
                (l, DOWN, phase),
            )?;
        }
        Ok(())
    }

    /// The backward of layer `l`: `dres` goes from `∂L/∂x_{l+1}` to `∂L/∂x_l`; the adapters'
    /// gradients are written (`first`) or added.
    pub(super) fn layer_backward(
        &mut self,
        m: &BackendModel<'_, CpuBackend>,
        lw: &BackendLayer<'_, CpuBackend>,
        l: usize,
        set: &AdapterSet,
        pass: Pass,
        first: bool,
    ) -> Result<()> {
        let be = CpuBackend;
        let li = self.ids.layers[l];
        let a = li.saved;
        let s = self.sched;
        let (n, dres) = (pass.n, self.ids.dres);
        let (scr, tmp) = (self.ids.adapter_scratch, self.ids.grad_tmp);
        let (qd, kvd, nh) = (self.cfg.q_dim(), self.cfg.kv_dim(), self.cfg.n_head);
        let slot = l * 7;
        let np = |i: usize| self.n_params[slot + i];
        let ad = |i: usize| adapter_at(set, l, i);
        let io = |i: usize, x, g, dx| AdapterGrad {
            x,
            g,
            h: a.h[i],
            dx,
            grad: li.grad[i],
            n_params: np(i),
        };
        let (cfg, ar) = (&self.cfg, &mut self.arena);
        let res = &mut self.res; // ResLoRA's cross-layer store (step_reslora.rs)

        let st = s.bwd(l, Bwd::Down);
        let [g, dsw] = ar.views_mut_at(st, [dres, li.dsw])?;
        be.matmul_dyw(g, n, &lw.ffn_down, dsw)?;
        let grad_io = io(DOWN, a.sw, dres, li.dsw);
        any_backward(
            ar,
            res.as_mut(),
            st,
            ad(DOWN),
            pass,
            grad_io,
            [scr, tmp],
            (l, DOWN, first),
        )?;

        let st = s.bwd(l, Bwd::Swiglu);
        let [gate, up, dsw, dgate, dup] =
            ar.views_mut_at(st, [a.gate, a.up, li.dsw, li.dgate, li.dup])?;
        be.swiglu_backward(gate, up, dsw, dgate, dup)?;

        let st = s.bwd(l, Bwd::GateUp);
        let [dgate, dfn] = ar.views_mut_at(st, [li.dgate, li.dfn])?;
        be.matmul_dyw(dgate, n, &lw.ffn_gate, dfn)?;
        let grad_io = io(GATE, a.fn_, li.dgate, li.dfn);
        any_backward(
            ar,
            res.as_mut(),
            st,
            ad(GATE),
            pass,
            grad_io,
            [scr, tmp],
            (l, GATE, first),
        )?;
        let [dup, dfn_tmp] = ar.views_mut_at(st, [li.dup, li.dfn_tmp])?;
        be.matmul_dyw(dup, n, &lw.ffn_up, dfn_tmp)?;
        let grad_io = io(UP, a.fn_, li.dup, li.dfn_tmp);
        any_backward(
            ar,
            res.as_mut(),
            st,
            ad(UP),
            pass,
            grad_io,
            [scr, tmp],
            (l, UP, first),
        )?;
        let [dfn, dfn_tmp] = ar.views_mut_at(st, [li.dfn, li.dfn_tmp])?;
        be.add_assign(dfn, dfn_tmp)?;

        let st = s.bwd(l, Bwd::FfnNorm);
        let [mid, rstd, dfn, dmid] = ar.views_mut_at(st, [a.mid, a.rstd_ffn, li.dfn, li.dmid])?;
        be.rmsnorm_backward(mid, &lw.ffn_norm, rstd, dfn, dmid)?;
        let [g, dmid] = ar.views_mut_at(st, [dres, li.dmid])?;
        be.add_assign(g, dmid)?;

        let st = s.bwd(l, Bwd::OutProj);
        let [g, datt] = ar.views_mut_at(st, [dres, li.datt])?;
        be.matmul_dyw(g, n, &lw.attn_output, datt)?;
        let grad_io = io(O, a.att, dres, li.datt);
        any_backward(
            ar,
            res.as_mut(),
            st,
            ad(O),
            pass,
            grad_io,
            [scr, tmp],
            (l, O, first),
        )?;

        let st = s.bwd(l, Bwd::Attention);
        let [q, k, v, att, lse, datt, dq, dk, dv] = ar.views_mut_at(
            st,
            [a.q, a.k, a.v, a.att, a.lse, li.datt, li.dq, li.dk, li.dv],
        )?;
        for &(t0, len) in &self.segments {
            let (qr, kr) = (t0 * qd..(t0 + len) * qd, t0 * kvd..(t0 + len) * kvd);
            be.attention_backward(
                &q[qr.clone()],
                &k[kr.clone()],
                &v[kr.clone()],
                &att[qr.clone()],
                &lse[t0 * nh..(t0 + len) * nh],
                &datt[qr.clone()],
                &mut dq[qr],
                &mut dk[kr.clone()],
                &mut dv[kr],
                att_dims(cfg, len),
            )?;
        }

        let st = s.bwd(l, Bwd::Qkv);
        let [dq, dk] = ar.views_mut_at(st, [li.dq, li.dk])?;
        for &(t0, len) in &self.segments {
            let dqs = &mut dq[t0 * qd..(t0 + len) * qd];
            be.rope_backward(dqs, &m.inv_freq, rope_dims(cfg, nh, len))?;
            let dks = &mut dk[t0 * kvd..(t0 + len) * kvd];
            be.rope_backward(dks, &m.inv_freq, rope_dims(cfg, cfg.n_head_kv, len))?;
        }
        let parts = [
            (Q, li.dq, &lw.attn_q, li.dxn),
            (K, li.dk, &lw.attn_k, li.dxn_tmp),
            (V, li.dv, &lw.attn_v, li.dxn_tmp),
        ];
        for (i, g, w, into) in parts {
            let [g_v, dx] = ar.views_mut_at(st, [g, into])?;
            be.matmul_dyw(g_v, n, w, dx)?;
            any_backward(
                ar,
                res.as_mut(),
                st,
                ad(i),
                pass,
                io(i, a.xn, g, into),
                [scr, tmp],
                (l, i, first),
            )?;
            if i != Q {
                let [dxn, dxn_tmp] = ar.views_mut_at(st, [li.dxn, li.dxn_tmp])?;
                be.add_assign(dxn, dxn_tmp)?;
            }
        }

        let st = s.bwd(l, Bwd::AttnNorm);
        let [x, rstd, dxn, dx] = ar.views_mut_at(st, [li.x_back, a.rstd_attn, li.dxn, li.dx])?;
        be.rmsnorm_backward(x, &lw.attn_norm, rstd, dxn, dx)?;
        let [g, dx] = ar.views_mut_at(st, [dres, li.dx])?;
        be.add_assign(g, dx)?;
        Ok(())
    }
}
