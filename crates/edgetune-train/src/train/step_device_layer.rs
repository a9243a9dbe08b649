//! One Llama layer of a [`DeviceStep`]: its forward, and its backward (the attention half
//! recomputed from the saved layer input, then the FFN recomputed and differentiated in row
//! chunks, then the attention half's backward), op by op over ranges of the step's one
//! workspace, with the LoRA branches as dense `gemm`s. `T` tokens, `Tc` an FFN row chunk; `D`
//! dim, `Q`/`K` the query / key-value widths, `F` the FFN width, `r` an adapter's rank. The
//! dataflow is step_layer.rs's; the buffers and their lifetimes are step_device_plan.rs's
//! (steps 1–8 forward, 12–28 backward):
//!
//! ```text
//! forward                                  backward (dres = ∂L/∂x_{l+1} → ∂L/∂x_l, in place)
//! xn  = rmsnorm(x)                         (attention half recomputed: q, k, v, att, mid)
//! q,k,v = xn·W{q,k,v}ᵀ (+ adapters)        per chunk of Tc rows:
//! q,k = rope(q,k)   (per segment)            fn, gate, up, sw recomputed for the rows
//! att = attention(q,k,v) (per segment)       dsw  = dres·Wd (+ adapter)
//! mid = att·Woᵀ (+ adapter) + x              dgate, dup = swiglu'(gate, up, dsw)
//! per chunk of Tc rows:                      dfn  = dgate·Wg + dup·Wu (+ adapters)
//!   fn  = rmsnorm(mid)                       dres += rmsnorm'(mid, dfn)
//!   gate,up = fn·W{gate,up}ᵀ (+ adapters)  datt = dres·Wo (+ adapter)
//!   sw  = swiglu(gate, up)                 dq,dk,dv = attention'(datt); dq,dk = rope'(dq,dk)
//!   x_{l+1} = mid + sw·Wdᵀ (+ adapter)     xn recomputed; dxn = Σ d{q,k,v}·W (+ adapters)
//!                                          dres += rmsnorm'(x, dxn)
//! ```
//!
//! Every FFN op is per row, so the chunks compute exactly the full-width values; the adapters'
//! weight gradients sum over the chunks (`β = 1` after the first). The forward builds `mid`
//! and then `x_{l+1}` in place in `x_{l+1}`'s range (no copy op); the recompute builds `mid`
//! in its own range and skips the base `sw·Wdᵀ` (the backward never reads it), running only
//! the ffn_down adapter's `H = sw·Aᵀ`.
//!
//! LoRA on `[n, in] → [n, out]` (docs/METHODS.md#the-lora-branch, no dropout), `β` = 0 on a step's
//! first micro-batch (and first chunk) and 1 after (accumulation on the device): `H = X·Aᵀ` `[n,
//! r]`, `Y += s·H·Bᵀ`; `dB = s·Gᵀ·H + β·dB`, `dH = s·G·B`, `dA = dHᵀ·X + β·dA`, `dX += dH·A`.

use std::ops::Range;

use super::step_device::DeviceStep;
use super::step_device_layout::{AttnRanges, FfnRanges};
use edgetune_core::Result;
use edgetune_core::backend::{AttentionDims, Backend, GemmDims, RopeDims};
use edgetune_core::model::BackendModel;

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

    /// Adapter `i` of layer `l` (if any) on rows `t0..t0 + n`: `H = x·Aᵀ` into those rows of
    /// its saved range, then `y += s·H·Bᵀ` when `y` is given (`x` `[n, in]`, `y` `[n, out]`).
    fn adapter_forward(
        &mut self,
        be: &B,
        l: usize,
        i: usize,
        (t0, n): (usize, usize),
        x: &Range<usize>,
        y: Option<&Range<usize>>,
    ) -> Result<()> {
        let Some(s) = &self.slots[l * 7 + i] else {
            return Ok(());
        };
        let h = rows(&self.lay.h[i], t0, n, s.rank);
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

    /// Adapter `i` of layer `l` (if any) on rows `t0..t0 + n`, given `g = ∂L/∂y` `[n, out]` and
    /// its input `x` `[n, in]`: writes (`first`) or adds its `dA`, `dB`, and adds its input
    /// gradient to `dx` `[n, in]`.
    fn adapter_backward(
        &mut self,
        be: &B,
        l: usize,
        i: usize,
        (t0, n): (usize, usize),
        [x, g, dx]: [&Range<usize>; 3],
        first: bool,
    ) -> Result<()> {
        let Some(s) = &self.slots[l * 7 + i] else {
            return Ok(());
        };
        let (r, beta) = (s.rank, if first { 0.0 } else { 1.0 });
        let h = rows(&self.lay.h[i], t0, n, r);
        let dh = self.lay.dh.start..self.lay.dh.start + n * r;
        let ws = &mut self.ws;
        // dB [out, r] = s·Gᵀ·H: [n, out]ᵀ × [n, r].
        let [gv, hv, gb] = cut::<B, 3>(ws, [g, &h, &s.gb])?;
        let dims = gd(s.out_f, r, n, true, false);
        be.gemm(dims, s.scale, B::freeze(gv), B::freeze(hv), beta, gb)?;
        // dH [n, r] = s·G·B: [n, out] × [out, r].
        let [gv, b, dhv] = cut::<B, 3>(ws, [g, &s.b, &dh])?;
        let dims = gd(n, r, s.out_f, false, false);
        be.gemm(dims, s.scale, B::freeze(gv), B::freeze(b), 0.0, dhv)?;
        // dA [r, in] = dHᵀ·X: [n, r]ᵀ × [n, in].
        let [dhv, xv, ga] = cut::<B, 3>(ws, [&dh, x, &s.ga])?;
        let dims = gd(r, s.in_f, n, true, false);
        be.gemm(dims, 1.0, B::freeze(dhv), B::freeze(xv), beta, ga)?;
        // dX [n, in] += dH·A: [n, r] × [r, in].
        let [dhv, a, dxv] = cut::<B, 3>(ws, [&dh, &s.a, dx])?;
        let dims = gd(n, s.in_f, r, false, false);
        be.gemm(dims, 1.0, B::freeze(dhv), B::freeze(a), 1.0, dxv)
    }

    /// The attention half of layer `l` from `x_l` into `a`'s buffers (steps 1–4 / 12–15 of the
    /// plan): `out = x_l + att·Woᵀ (+ adapter)`, `out` being `x_{l+1}` in the forward and
    /// `mid` in the recompute.
    fn attention_half(
        &mut self,
        m: &BackendModel<'_, B>,
        l: usize,
        a: &AttnRanges,
        out: &Range<usize>,
    ) -> Result<()> {
        let (be, lw) = (&m.backend, &m.layers[l]);
        let n = self.tokens();
        let (eps, qd, kvd, nh) = (
            self.cfg.rms_eps,
            self.cfg.q_dim(),
            self.cfg.kv_dim(),
            self.cfg.n_head,
        );
        let x = &self.lay.x(l);
        let [xv, xn, rstd] = cut::<B, 3>(&mut self.ws, [x, &a.xn, &a.rstd])?;
        be.rmsnorm(B::freeze(xv), B::view(&lw.attn_norm), eps, xn, Some(rstd))?;
        for (i, y, w) in [
            (Q, &a.q, &lw.attn_q),
            (K, &a.k, &lw.attn_k),
            (V, &a.v, &lw.attn_v),
        ] {
            let [xn, yv] = cut::<B, 2>(&mut self.ws, [&a.xn, y])?;
            be.matmul_xwt(B::freeze(xn), n, w, yv)?;
            self.adapter_forward(be, l, i, (0, n), &a.xn, Some(y))?;
        }
        let inv = B::view(&m.inv_freq);
        for si in 0..self.segments.len() {
            let (t0, len) = self.segments[si];
            let (qr, kr) = (rows(&a.q, t0, len, qd), rows(&a.k, t0, len, kvd));
            let (dq, dk) = (
                self.rope_dims(nh, len),
                self.rope_dims(self.cfg.n_head_kv, len),
            );
            let [qv, kv] = cut::<B, 2>(&mut self.ws, [&qr, &kr])?;
            be.rope(qv, inv, dq)?;
            be.rope(kv, inv, dk)?;
            let vr = rows(&a.v, t0, len, kvd);
            let (ar, lr) = (rows(&a.att, t0, len, qd), rows(&a.lse, t0, len, nh));
            let ad = self.att_dims(len);
            let [qv, kv, vv, att, lse] = cut::<B, 5>(&mut self.ws, [&qr, &kr, &vr, &ar, &lr])?;
            let (qv, kv, vv) = (B::freeze(qv), B::freeze(kv), B::freeze(vv));
            be.attention(qv, kv, vv, att, Some(lse), ad)?;
        }
        let [att, o] = cut::<B, 2>(&mut self.ws, [&a.att, out])?;
        be.matmul_xwt(B::freeze(att), n, &lw.attn_output, o)?;
        self.adapter_forward(be, l, O, (0, n), &a.att, Some(out))?;
        let [o, xv] = cut::<B, 2>(&mut self.ws, [out, x])?;
        be.add_assign(o, B::freeze(xv))
    }

    /// Rows `t0..t0 + n` of layer `l`'s FFN from the residual `resid` `[T, D]` (`x_{l+1}`
    /// holding `mid` in the forward, `mid` in the recompute) into `f`'s chunk buffers (steps
    /// 5–8 / 16–18): norm, gate and up, SwiGLU; then in the forward `resid[rows] += sw·Wdᵀ
    /// (+ adapter)`, in the recompute only the ffn_down adapter's `H = sw·Aᵀ` (the backward
    /// never reads the base `sw·Wdᵀ`).
    fn ffn_rows(
        &mut self,
        m: &BackendModel<'_, B>,
        l: usize,
        (t0, n): (usize, usize),
        f: &FfnRanges,
        resid: &Range<usize>,
        recompute: bool,
    ) -> Result<()> {
        let (be, lw) = (&m.backend, &m.layers[l]);
        let (d, ff) = (self.cfg.dim, self.cfg.ffn);
        let (fnr, rstd) = (rows(&f.fn_, 0, n, d), rows(&f.rstd, 0, n, 1));
        let (gate, up, sw) = (
            rows(&f.gate, 0, n, ff),
            rows(&f.up, 0, n, ff),
            rows(&f.sw, 0, n, ff),
        );
        let mid = rows(resid, t0, n, d);
        let eps = self.cfg.rms_eps;
        let [midv, fnv, rv] = cut::<B, 3>(&mut self.ws, [&mid, &fnr, &rstd])?;
        be.rmsnorm(B::freeze(midv), B::view(&lw.ffn_norm), eps, fnv, Some(rv))?;
        for (i, y, w) in [(GATE, &gate, &lw.ffn_gate), (UP, &up, &lw.ffn_up)] {
            let [fnv, yv] = cut::<B, 2>(&mut self.ws, [&fnr, y])?;
            be.matmul_xwt(B::freeze(fnv), n, w, yv)?;
            self.adapter_forward(be, l, i, (t0, n), &fnr, Some(y))?;
        }
        let [gv, uv, sv] = cut::<B, 3>(&mut self.ws, [&gate, &up, &sw])?;
        be.swiglu(B::freeze(gv), B::freeze(uv), sv)?;
        if recompute {
            return self.adapter_forward(be, l, DOWN, (t0, n), &sw, None);
        }
        let y = rows(&f.y, 0, n, d);
        let [sv, yv] = cut::<B, 2>(&mut self.ws, [&sw, &y])?;
        be.matmul_xwt(B::freeze(sv), n, &lw.ffn_down, yv)?;
        self.adapter_forward(be, l, DOWN, (t0, n), &sw, Some(&y))?;
        let [next, yv] = cut::<B, 2>(&mut self.ws, [&mid, &y])?;
        be.add_assign(next, B::freeze(yv))
    }

    /// The forward of layer `l` from its saved input `x_l` into `x_{l+1}` (the FFN in row
    /// chunks of `Tc`).
    pub(super) fn layer_forward(&mut self, m: &BackendModel<'_, B>, l: usize) -> Result<()> {
        let lay = self.lay.clone(); // ranges only: no allocation
        let next = lay.x(l + 1);
        self.attention_half(m, l, &lay.fwd, &next)?;
        let (n, tc) = (self.tokens(), self.ffn_chunk);
        let mut t0 = 0;
        while t0 < n {
            let c = tc.min(n - t0);
            self.ffn_rows(m, l, (t0, c), &lay.ffn, &next, false)?;
            t0 += c;
        }
        Ok(())
    }

    /// The backward of layer `l`: recomputes its attention half from `x_l`, then per FFN row
    /// chunk recomputes and differentiates the FFN, then the attention half's backward;
    /// `dres` goes from `∂L/∂x_{l+1}` to `∂L/∂x_l`, the adapters' gradients are written
    /// (`first`: on the first chunk) or added.
    pub(super) fn layer_backward(
        &mut self,
        m: &BackendModel<'_, B>,
        l: usize,
        first: bool,
    ) -> Result<()> {
        let lay = self.lay.clone();
        let mid = &lay.datt.mid;
        self.attention_half(m, l, &lay.rc, mid)?;
        let (n, tc) = (self.tokens(), self.ffn_chunk);
        let mut t0 = 0;
        while t0 < n {
            let c = tc.min(n - t0);
            self.ffn_rows(m, l, (t0, c), &lay.rc_ffn, mid, true)?;
            self.ffn_rows_backward(m, l, (t0, c), first && t0 == 0)?;
            t0 += c;
        }
        self.attention_backward(m, l, first)
    }

    /// The FFN backward of rows `t0..t0 + n` after their recompute (steps 19–23): `dres[rows]`
    /// goes from `∂L/∂x_{l+1}` to `∂L/∂mid`.
    fn ffn_rows_backward(
        &mut self,
        m: &BackendModel<'_, B>,
        l: usize,
        (t0, n): (usize, usize),
        first: bool,
    ) -> Result<()> {
        let (be, lw) = (&m.backend, &m.layers[l]);
        let (d, ff) = (self.cfg.dim, self.cfg.ffn);
        let (f, g) = (&self.lay.rc_ffn, &self.lay.dffn);
        let (fnr, rstd) = (rows(&f.fn_, 0, n, d), rows(&f.rstd, 0, n, 1));
        let (gate, up, sw) = (
            rows(&f.gate, 0, n, ff),
            rows(&f.up, 0, n, ff),
            rows(&f.sw, 0, n, ff),
        );
        let (dsw, dgate, dup) = (
            rows(&g.dsw, 0, n, ff),
            rows(&g.dgate, 0, n, ff),
            rows(&g.dup, 0, n, ff),
        );
        let (dfn, dtmp, dmid) = (
            rows(&g.dfn, 0, n, d),
            rows(&g.dtmp, 0, n, d),
            rows(&g.dmid, 0, n, d),
        );
        let (dres, mid) = (
            rows(&self.lay.dres, t0, n, d),
            rows(&self.lay.datt.mid, t0, n, d),
        );

        let [gv, dswv] = cut::<B, 2>(&mut self.ws, [&dres, &dsw])?;
        be.matmul_dyw(B::freeze(gv), n, &lw.ffn_down, dswv)?;
        self.adapter_backward(be, l, DOWN, (t0, n), [&sw, &dres, &dsw], first)?;

        let [gv, uv, dswv, dgv, duv] = cut::<B, 5>(&mut self.ws, [&gate, &up, &dsw, &dgate, &dup])?;
        let (gv, uv, dswv) = (B::freeze(gv), B::freeze(uv), B::freeze(dswv));
        be.swiglu_backward(gv, uv, dswv, dgv, duv)?;

        let [dgv, dfnv] = cut::<B, 2>(&mut self.ws, [&dgate, &dfn])?;
        be.matmul_dyw(B::freeze(dgv), n, &lw.ffn_gate, dfnv)?;
        self.adapter_backward(be, l, GATE, (t0, n), [&fnr, &dgate, &dfn], first)?;
        let [duv, dtv] = cut::<B, 2>(&mut self.ws, [&dup, &dtmp])?;
        be.matmul_dyw(B::freeze(duv), n, &lw.ffn_up, dtv)?;
        self.adapter_backward(be, l, UP, (t0, n), [&fnr, &dup, &dtmp], first)?;
        let [dfnv, dtv] = cut::<B, 2>(&mut self.ws, [&dfn, &dtmp])?;
        be.add_assign(dfnv, B::freeze(dtv))?;

        let [midv, rv, dfnv, dmv] = cut::<B, 4>(&mut self.ws, [&mid, &rstd, &dfn, &dmid])?;
        let (midv, rv, dfnv) = (B::freeze(midv), B::freeze(rv), B::freeze(dfnv));
        be.rmsnorm_backward(midv, B::view(&lw.ffn_norm), rv, dfnv, dmv)?;
        let [gv, dmv] = cut::<B, 2>(&mut self.ws, [&dres, &dmid])?;
        be.add_assign(gv, B::freeze(dmv))
    }

    /// The attention half's backward of layer `l` after the FFN's (steps 24–28): `dres` goes
    /// from `∂L/∂mid` to `∂L/∂x_l`.
    fn attention_backward(&mut self, m: &BackendModel<'_, B>, l: usize, first: bool) -> Result<()> {
        let (be, lw) = (&m.backend, &m.layers[l]);
        let n = self.tokens();
        let (qd, kvd, nh, nkv) = (
            self.cfg.q_dim(),
            self.cfg.kv_dim(),
            self.cfg.n_head,
            self.cfg.n_head_kv,
        );
        let lay = self.lay.clone();
        let (a, g, dres) = (&lay.rc, &lay.datt, &lay.dres);
        let all = (0, n);

        let [gv, datt] = cut::<B, 2>(&mut self.ws, [dres, &g.datt])?;
        be.matmul_dyw(B::freeze(gv), n, &lw.attn_output, datt)?;
        self.adapter_backward(be, l, O, all, [&a.att, dres, &g.datt], first)?;

        let inv = B::view(&m.inv_freq);
        for si in 0..self.segments.len() {
            let (t0, len) = self.segments[si];
            let (qr, kr) = (rows(&a.q, t0, len, qd), rows(&a.k, t0, len, kvd));
            let vr = rows(&a.v, t0, len, kvd);
            let (ar, lr) = (rows(&a.att, t0, len, qd), rows(&a.lse, t0, len, nh));
            let dar = rows(&g.datt, t0, len, qd);
            let (dqr, dkr) = (rows(&g.dq, t0, len, qd), rows(&g.dk, t0, len, kvd));
            let dvr = rows(&g.dv, t0, len, kvd);
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

        // xn again (rather than kept through the FFN and the attention backward): the same
        // rmsnorm of the same x_l, the same values.
        let x = lay.x(l);
        let [xv, xn, rstd] = cut::<B, 3>(&mut self.ws, [&x, &g.xn, &a.rstd])?;
        let eps = self.cfg.rms_eps;
        be.rmsnorm(B::freeze(xv), B::view(&lw.attn_norm), eps, xn, Some(rstd))?;

        // dxn = dq·Wq + dk·Wk + dv·Wv (+ adapters), the K and V parts through dtmp.
        for (i, gr, w, into) in [
            (Q, &g.dq, &lw.attn_q, &g.dxn),
            (K, &g.dk, &lw.attn_k, &g.dtmp),
            (V, &g.dv, &lw.attn_v, &g.dtmp),
        ] {
            let [gv, dx] = cut::<B, 2>(&mut self.ws, [gr, into])?;
            be.matmul_dyw(B::freeze(gv), n, w, dx)?;
            self.adapter_backward(be, l, i, all, [&g.xn, gr, into], first)?;
            if i != Q {
                let [dxn, dtmp] = cut::<B, 2>(&mut self.ws, [&g.dxn, &g.dtmp])?;
                be.add_assign(dxn, B::freeze(dtmp))?;
            }
        }

        let [xv, rstd, dxn, dx] = cut::<B, 4>(&mut self.ws, [&x, &a.rstd, &g.dxn, &g.dx])?;
        let (xv, rstd, dxn) = (B::freeze(xv), B::freeze(rstd), B::freeze(dxn));
        be.rmsnorm_backward(xv, B::view(&lw.attn_norm), rstd, dxn, dx)?;
        let [gv, dx] = cut::<B, 2>(&mut self.ws, [dres, &g.dx])?;
        be.add_assign(gv, B::freeze(dx))
    }
}
