//! One Llama layer of a [`DeviceStep`]: its forward (or its recompute from the saved layer
//! input) and its backward, op by op over ranges of the step's one workspace, with the LoRA
//! branches as dense `gemm`s. `T` tokens; `D` dim, `Q`/`K` the query / key-value widths, `F`
//! the FFN width, `r` an adapter's rank. The dataflow is step_layer.rs's:
//!
//! ```text
//! forward                                  backward (dres = ∂L/∂x_{l+1} → ∂L/∂x_l, in place)
//! xn  = rmsnorm(x)                         dsw  = dres·Wd (+ adapter)
//! q,k,v = xn·W{q,k,v}ᵀ (+ adapters)        dgate, dup = swiglu'(gate, up, dsw)
//! q,k = rope(q,k)   (per segment)          dfn  = dgate·Wg + dup·Wu (+ adapters)
//! att = attention(q,k,v) (per segment)     dres += rmsnorm'(mid, dfn)
//! mid = att·Woᵀ (+ adapter) + x            datt = dres·Wo (+ adapter)
//! fn  = rmsnorm(mid)                       dq,dk,dv = attention'(datt); dq,dk = rope'(dq,dk)
//! gate,up = fn·W{gate,up}ᵀ (+ adapters)    dxn  = dq·Wq + dk·Wk + dv·Wv (+ adapters)
//! sw  = swiglu(gate, up)                   dres += rmsnorm'(x, dxn)
//! x_{l+1} = mid + sw·Wdᵀ (+ adapter)
//! ```
//!
//! The forward builds `mid` and then `x_{l+1}` in place in `x_{l+1}`'s range (no copy op);
//! the recompute builds `mid` in its own range and skips the base `sw·Wdᵀ` (the backward
//! never reads it), running only the ffn_down adapter's `H = sw·Aᵀ`.
//!
//! LoRA on `[T, in] → [T, out]` (derivatives.md §0.3, no dropout), `β` = 0 on a step's first
//! micro-batch and 1 after (accumulation on the device):
//! `H = X·Aᵀ` `[T, r]`, `Y += s·H·Bᵀ`; `dB = s·Gᵀ·H + β·dB`, `dH = s·G·B`,
//! `dA = dHᵀ·X + β·dA`, `dX += dH·A`.

use std::ops::Range;

use super::step_device::DeviceStep;
use crate::Result;
use crate::backend::{AttentionDims, Backend, GemmDims, RopeDims};
use crate::model::BackendModel;

const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;
const O: usize = 3;
const GATE: usize = 4;
const UP: usize = 5;
const DOWN: usize = 6;

/// Disjoint writable views of `ranges` of the workspace.
fn cut<'a, B: Backend, const N: usize>(
    ws: &'a mut B::Buffer,
    ranges: [&Range<usize>; N],
) -> Result<[B::ViewMut<'a>; N]> {
    B::split_mut(B::view_mut(ws), ranges.map(Range::clone))
}

/// Rows `t0..t0 + len` of a `[T, width]` range.
fn rows(r: &Range<usize>, t0: usize, len: usize, width: usize) -> Range<usize> {
    r.start + t0 * width..r.start + (t0 + len) * width
}

fn gd(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> GemmDims {
    GemmDims {
        m,
        n,
        k,
        trans_a,
        trans_b,
    }
}

impl<B: Backend> DeviceStep<B> {
    fn rope_dims(&self, n_head: usize, n_tokens: usize) -> RopeDims {
        RopeDims {
            n_tokens,
            pos0: 0,
            n_head,
            head_dim: self.cfg.head_dim,
            rope_dim: self.cfg.rope_dim,
        }
    }

    fn att_dims(&self, n_tokens: usize) -> AttentionDims {
        AttentionDims {
            n_tokens,
            pos0: 0,
            n_head: self.cfg.n_head,
            n_head_kv: self.cfg.n_head_kv,
            head_dim: self.cfg.head_dim,
        }
    }

    /// Adapter `i` of layer `l` (if any): `H = x·Aᵀ` into its saved range, then `y += s·H·Bᵀ`
    /// when `y` is given.
    fn adapter_forward(
        &mut self,
        be: &B,
        l: usize,
        i: usize,
        x: &Range<usize>,
        y: Option<&Range<usize>>,
    ) -> Result<()> {
        let Some(s) = &self.slots[l * 7 + i] else {
            return Ok(());
        };
        let n = self.tokens();
        let h = self.lay.h[i].start..self.lay.h[i].start + n * s.rank;
        let [xv, a, hv] = cut::<B, 3>(&mut self.ws, [x, &s.a, &h])?;
        let dims = gd(n, s.rank, s.in_f, false, true);
        be.gemm(dims, 1.0, B::freeze(xv), B::freeze(a), 0.0, hv)?;
        if let Some(y) = y {
            let [hv, b, yv] = cut::<B, 3>(&mut self.ws, [&h, &s.b, y])?;
            let dims = gd(n, s.out_f, s.rank, false, true);
            be.gemm(dims, s.scale, B::freeze(hv), B::freeze(b), 1.0, yv)?;
        }
        Ok(())
    }

    /// Adapter `i` of layer `l` (if any), given `g = ∂L/∂y` `[T, out]` and its input `x`
    /// `[T, in]`: writes (`first`) or adds its `dA`, `dB`, and adds its input gradient to `dx`.
    fn adapter_backward(
        &mut self,
        be: &B,
        l: usize,
        i: usize,
        [x, g, dx]: [&Range<usize>; 3],
        first: bool,
    ) -> Result<()> {
        let Some(s) = &self.slots[l * 7 + i] else {
            return Ok(());
        };
        let (n, r, beta) = (self.tokens(), s.rank, if first { 0.0 } else { 1.0 });
        let h = self.lay.h[i].start..self.lay.h[i].start + n * r;
        let dh = self.lay.dh.start..self.lay.dh.start + n * r;
        let ws = &mut self.ws;
        // dB [out, r] = s·Gᵀ·H: [T, out]ᵀ × [T, r].
        let [gv, hv, gb] = cut::<B, 3>(ws, [g, &h, &s.gb])?;
        let dims = gd(s.out_f, r, n, true, false);
        be.gemm(dims, s.scale, B::freeze(gv), B::freeze(hv), beta, gb)?;
        // dH [T, r] = s·G·B: [T, out] × [out, r].
        let [gv, b, dhv] = cut::<B, 3>(ws, [g, &s.b, &dh])?;
        let dims = gd(n, r, s.out_f, false, false);
        be.gemm(dims, s.scale, B::freeze(gv), B::freeze(b), 0.0, dhv)?;
        // dA [r, in] = dHᵀ·X: [T, r]ᵀ × [T, in].
        let [dhv, xv, ga] = cut::<B, 3>(ws, [&dh, x, &s.ga])?;
        let dims = gd(r, s.in_f, n, true, false);
        be.gemm(dims, 1.0, B::freeze(dhv), B::freeze(xv), beta, ga)?;
        // dX [T, in] += dH·A: [T, r] × [r, in].
        let [dhv, a, dxv] = cut::<B, 3>(ws, [&dh, &s.a, dx])?;
        let dims = gd(n, s.in_f, r, false, false);
        be.gemm(dims, 1.0, B::freeze(dhv), B::freeze(a), 1.0, dxv)
    }

    /// The forward of layer `l` from its saved input `x_l`: writes `x_{l+1}`, or with
    /// `recompute` only re-saves the activations the backward reads.
    pub(super) fn layer_forward(
        &mut self,
        m: &BackendModel<'_, B>,
        l: usize,
        recompute: bool,
    ) -> Result<()> {
        let (be, lw) = (&m.backend, &m.layers[l]);
        let n = self.tokens();
        let (eps, qd, kvd, nh) = (
            self.cfg.rms_eps,
            self.cfg.q_dim(),
            self.cfg.kv_dim(),
            self.cfg.n_head,
        );
        let lay = self.lay.clone(); // ranges only: no allocation
        let (x, next) = (&lay.x(l), lay.x(l + 1));
        // `mid` (and, in the forward, `x_{l+1}` built on top of it).
        let mid = if recompute { &lay.mid } else { &next };

        let [xv, xn, rstd] = cut::<B, 3>(&mut self.ws, [x, &lay.xn, &lay.rstd1])?;
        be.rmsnorm(B::freeze(xv), B::view(&lw.attn_norm), eps, xn, Some(rstd))?;
        for (i, out, w) in [
            (Q, &lay.q, &lw.attn_q),
            (K, &lay.k, &lw.attn_k),
            (V, &lay.v, &lw.attn_v),
        ] {
            let [xn, y] = cut::<B, 2>(&mut self.ws, [&lay.xn, out])?;
            be.matmul_xwt(B::freeze(xn), n, w, y)?;
            self.adapter_forward(be, l, i, &lay.xn, Some(out))?;
        }
        let inv = B::view(&m.inv_freq);
        for si in 0..self.segments.len() {
            let (t0, len) = self.segments[si];
            let (qr, kr) = (rows(&lay.q, t0, len, qd), rows(&lay.k, t0, len, kvd));
            let (dq, dk) = (
                self.rope_dims(nh, len),
                self.rope_dims(self.cfg.n_head_kv, len),
            );
            let [qv, kv] = cut::<B, 2>(&mut self.ws, [&qr, &kr])?;
            be.rope(qv, inv, dq)?;
            be.rope(kv, inv, dk)?;
            let vr = rows(&lay.v, t0, len, kvd);
            let (ar, lr) = (rows(&lay.att, t0, len, qd), rows(&lay.lse, t0, len, nh));
            let ad = self.att_dims(len);
            let [qv, kv, vv, att, lse] = cut::<B, 5>(&mut self.ws, [&qr, &kr, &vr, &ar, &lr])?;
            let (qv, kv, vv) = (B::freeze(qv), B::freeze(kv), B::freeze(vv));
            be.attention(qv, kv, vv, att, Some(lse), ad)?;
        }
        // mid = att·Woᵀ (+ adapter) + x.
        let [att, o] = cut::<B, 2>(&mut self.ws, [&lay.att, mid])?;
        be.matmul_xwt(B::freeze(att), n, &lw.attn_output, o)?;
        self.adapter_forward(be, l, O, &lay.att, Some(mid))?;
        let [o, xv] = cut::<B, 2>(&mut self.ws, [mid, x])?;
        be.add_assign(o, B::freeze(xv))?;

        let [midv, fnv, rstd] = cut::<B, 3>(&mut self.ws, [mid, &lay.fn_, &lay.rstd2])?;
        be.rmsnorm(B::freeze(midv), B::view(&lw.ffn_norm), eps, fnv, Some(rstd))?;
        for (i, out, w) in [(GATE, &lay.gate, &lw.ffn_gate), (UP, &lay.up, &lw.ffn_up)] {
            let [fnv, y] = cut::<B, 2>(&mut self.ws, [&lay.fn_, out])?;
            be.matmul_xwt(B::freeze(fnv), n, w, y)?;
            self.adapter_forward(be, l, i, &lay.fn_, Some(out))?;
        }
        let [gate, up, sw] = cut::<B, 3>(&mut self.ws, [&lay.gate, &lay.up, &lay.sw])?;
        be.swiglu(B::freeze(gate), B::freeze(up), sw)?;
        if recompute {
            return self.adapter_forward(be, l, DOWN, &lay.sw, None);
        }
        // x_{l+1} = mid + sw·Wdᵀ (+ adapter).
        let [sw, y] = cut::<B, 2>(&mut self.ws, [&lay.sw, &lay.y])?;
        be.matmul_xwt(B::freeze(sw), n, &lw.ffn_down, y)?;
        self.adapter_forward(be, l, DOWN, &lay.sw, Some(&lay.y))?;
        let [next, y] = cut::<B, 2>(&mut self.ws, [mid, &lay.y])?;
        be.add_assign(next, B::freeze(y))
    }

    /// The backward of layer `l` (after its recompute): `dres` goes from `∂L/∂x_{l+1}` to
    /// `∂L/∂x_l`; the adapters' gradients are written (`first`) or added.
    pub(super) fn layer_backward(
        &mut self,
        m: &BackendModel<'_, B>,
        l: usize,
        first: bool,
    ) -> Result<()> {
        let (be, lw) = (&m.backend, &m.layers[l]);
        let n = self.tokens();
        let (qd, kvd, nh, nkv) = (
            self.cfg.q_dim(),
            self.cfg.kv_dim(),
            self.cfg.n_head,
            self.cfg.n_head_kv,
        );
        let lay = self.lay.clone();
        let dres = &lay.dres;

        let [g, dsw] = cut::<B, 2>(&mut self.ws, [dres, &lay.dsw])?;
        be.matmul_dyw(B::freeze(g), n, &lw.ffn_down, dsw)?;
        self.adapter_backward(be, l, DOWN, [&lay.sw, dres, &lay.dsw], first)?;

        let [gate, up, dsw, dgate, dup] = cut::<B, 5>(
            &mut self.ws,
            [&lay.gate, &lay.up, &lay.dsw, &lay.dgate, &lay.dup],
        )?;
        let (gate, up, dsw) = (B::freeze(gate), B::freeze(up), B::freeze(dsw));
        be.swiglu_backward(gate, up, dsw, dgate, dup)?;

        let [dgate, dfn] = cut::<B, 2>(&mut self.ws, [&lay.dgate, &lay.dfn])?;
        be.matmul_dyw(B::freeze(dgate), n, &lw.ffn_gate, dfn)?;
        self.adapter_backward(be, l, GATE, [&lay.fn_, &lay.dgate, &lay.dfn], first)?;
        let [dup, dtmp] = cut::<B, 2>(&mut self.ws, [&lay.dup, &lay.dtmp])?;
        be.matmul_dyw(B::freeze(dup), n, &lw.ffn_up, dtmp)?;
        self.adapter_backward(be, l, UP, [&lay.fn_, &lay.dup, &lay.dtmp], first)?;
        let [dfn, dtmp] = cut::<B, 2>(&mut self.ws, [&lay.dfn, &lay.dtmp])?;
        be.add_assign(dfn, B::freeze(dtmp))?;

        let [mid, rstd, dfn, dmid] =
            cut::<B, 4>(&mut self.ws, [&lay.mid, &lay.rstd2, &lay.dfn, &lay.dtmp])?;
        let (mid, rstd, dfn) = (B::freeze(mid), B::freeze(rstd), B::freeze(dfn));
        be.rmsnorm_backward(mid, B::view(&lw.ffn_norm), rstd, dfn, dmid)?;
        let [g, dmid] = cut::<B, 2>(&mut self.ws, [dres, &lay.dtmp])?;
        be.add_assign(g, B::freeze(dmid))?;

        let [g, datt] = cut::<B, 2>(&mut self.ws, [dres, &lay.datt])?;
        be.matmul_dyw(B::freeze(g), n, &lw.attn_output, datt)?;
        self.adapter_backward(be, l, O, [&lay.att, dres, &lay.datt], first)?;

        let inv = B::view(&m.inv_freq);
        for si in 0..self.segments.len() {
            let (t0, len) = self.segments[si];
            let (qr, kr) = (rows(&lay.q, t0, len, qd), rows(&lay.k, t0, len, kvd));
            let vr = rows(&lay.v, t0, len, kvd);
            let (ar, lr) = (rows(&lay.att, t0, len, qd), rows(&lay.lse, t0, len, nh));
            let dar = rows(&lay.datt, t0, len, qd);
            let (dqr, dkr) = (rows(&lay.dq, t0, len, qd), rows(&lay.dk, t0, len, kvd));
            let dvr = rows(&lay.dv, t0, len, kvd);
            let ad = self.att_dims(len);
            let [q, k, v, att, lse, datt, dq, dk, dv] = cut::<B, 9>(
                &mut self.ws,
                [&qr, &kr, &vr, &ar, &lr, &dar, &dqr, &dkr, &dvr],
            )?;
            let (q, k, v) = (B::freeze(q), B::freeze(k), B::freeze(v));
            let (att, lse, datt) = (B::freeze(att), B::freeze(lse), B::freeze(datt));
            be.attention_backward(q, k, v, att, lse, datt, dq, dk, dv, ad)?;
            let (rq, rk) = (self.rope_dims(nh, len), self.rope_dims(nkv, len));
            let [dq, dk] = cut::<B, 2>(&mut self.ws, [&dqr, &dkr])?;
            be.rope_backward(dq, inv, rq)?;
            be.rope_backward(dk, inv, rk)?;
        }

        // dxn = dq·Wq + dk·Wk + dv·Wv (+ adapters), the K and V parts through dtmp.
        for (i, g, w, into) in [
            (Q, &lay.dq, &lw.attn_q, &lay.dxn),
            (K, &lay.dk, &lw.attn_k, &lay.dtmp),
            (V, &lay.dv, &lw.attn_v, &lay.dtmp),
        ] {
            let [gv, dx] = cut::<B, 2>(&mut self.ws, [g, into])?;
            be.matmul_dyw(B::freeze(gv), n, w, dx)?;
            self.adapter_backward(be, l, i, [&lay.xn, g, into], first)?;
            if i != Q {
                let [dxn, dtmp] = cut::<B, 2>(&mut self.ws, [&lay.dxn, &lay.dtmp])?;
                be.add_assign(dxn, B::freeze(dtmp))?;
            }
        }

        let [x, rstd, dxn, dx] =
            cut::<B, 4>(&mut self.ws, [&lay.x(l), &lay.rstd1, &lay.dxn, &lay.dtmp])?;
        let (x, rstd, dxn) = (B::freeze(x), B::freeze(rstd), B::freeze(dxn));
        be.rmsnorm_backward(x, B::view(&lw.attn_norm), rstd, dxn, dx)?;
        let [g, dx] = cut::<B, 2>(&mut self.ws, [dres, &lay.dtmp])?;
        be.add_assign(g, B::freeze(dx))
    }
}
