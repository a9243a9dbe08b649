//! OLoRA and PiSSA (docs/METHODS.md#olora-and-pissa): LoRA whose `A`, `B` start from a
//! decomposition of the base `Ŵ` `[out, in]`, on a read-only base: the frozen correction term
//! (docs/METHODS.md#read-only-base) replaces PEFT's rewrite `W_res = Ŵ − s·B0·A0`, so the mapped
//! file is never written.
//!
//! Shapes: `X` `[N, in]`, `A`, `A0` `[r, in]`, `B`, `B0` `[out, r]`, `s = alpha/r` (or
//! `alpha/√r`), `X_d = D(X)`; `A0 = A_init`, `B0 = B_init` are frozen copies.
//!
//! ```text
//! init  OLoRA: Ŵ = Q·R (thin QR), B = Q[:, :r], A = R[:r, :]            (not divided by s)
//!       PiSSA: Ŵ = U·diag(σ)·Vᵀ, σ' = σ[:r]/s, A = diag(√σ')·Vᵀ[:r], B = U[:, :r]·diag(√σ')
//! fwd   Y = X·Ŵᵀ + s·(X_d·Aᵀ)·Bᵀ − s·(X·A0ᵀ)·B0ᵀ   (the correction sees the clean X: it is
//!       part of the base)                           → Y = X·Ŵᵀ exactly at init
//! bwd   LoRA's (docs/METHODS.md#the-lora-branch) dA, dB, dX, plus dX −= s·(G·B0)·A0
//! export rank-2r LoRA  ΔW = s·[B | −B0]·[A ; A0]   (S3; same scale s, i.e. PEFT's doubled
//!       r and alpha)
//! ```
//!
//! OLoRA's QR only needs the first `r` columns of `Ŵ`: `Q[:, :r]` is the thin QR of
//! `Ŵ[:, :r]` and `R[:r, :] = Q[:, :r]ᵀ·Ŵ` (Householder reflectors `j ≥ r` leave the first `r`
//! columns of `Q` alone). PiSSA's SVD is truncated by subspace iteration
//! ([`super::linalg::svd_top`]); `niter` plays PEFT's `pissa_niter_k` role.
//!
//! Extra memory: `A0`, `B0` (the adapter's size again, f32); the correction's `[N, r]`
//! transient fits in LoRA's scratch.

use std::borrow::Cow;

use super::base::{dims as d, take};
use super::linalg::{qr_thin, svd_top};
use super::lora::{self, BranchDims};
use super::pair::LoraPair;
use super::{
    Adapter, Export, Lora, LoraConfig, ParamBuf, ParamInfo, Pass, StateSource, StateTensor,
    Workspace,
};
use crate::backend::check_len;
use crate::backend::cpu::Real;
use crate::backend::cpu::gemm::gemm_ref;
use crate::{Error, Result};

/// The frozen factors' names in a checkpoint (per slot).
const A0: &str = "lora_A0";
const B0: &str = "lora_B0";

/// Which decomposition initialises the branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResidualInit {
    /// Thin QR (OLoRA, docs/METHODS.md#olora-and-pissa).
    Olora,
    /// Truncated SVD with `niter` subspace iterations (PiSSA, docs/METHODS.md#olora-and-pissa).
    Pissa { niter: usize },
}

/// A LoRA branch initialised from `Ŵ` plus its frozen correction.
#[derive(Clone, Debug)]
pub struct ResidualLora {
    kind: ResidualInit,
    lora: Lora,
    /// The frozen `A0` `[r, in]`, `B0` `[out, r]` of the correction (never a parameter).
    frozen: LoraPair,
}

impl ResidualLora {
    /// OLoRA or PiSSA on the dequantized base `w` `[out, in]` (only read here). `seed` drives
    /// the dropout stream and PiSSA's random start.
    pub fn new(
        kind: ResidualInit,
        cfg: &LoraConfig,
        w: &[f32],
        out_f: usize,
        in_f: usize,
        seed: u64,
    ) -> Result<ResidualLora> {
        let r = cfg.rank;
        if w.len() != out_f * in_f || r > out_f.min(in_f) {
            return Err(Error::Invalid(format!(
                "{kind:?}: base [{out_f}, {in_f}] ({} values given) cannot give rank {r} \
                 (needs r ≤ min(out, in))",
                w.len()
            )));
        }
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "{kind:?}: base element {i} (row {}, column {}) is {}",
                i / in_f,
                i % in_f,
                w[i]
            )));
        }
        let mut lora = Lora::new(in_f, out_f, cfg, seed)?;
        let (a0, b0) = match kind {
            ResidualInit::Olora => olora_init(w, out_f, in_f, r)?,
            ResidualInit::Pissa { niter } => {
                pissa_init(w, out_f, in_f, r, niter, cfg.scale(), seed)?
            }
        };
        lora.a_mut().copy_from_slice(&a0);
        lora.b_mut().copy_from_slice(&b0);
        Self::from_parts(kind, lora, a0, b0)
    }

    /// Rebuilds from stored tensors (an adapter file keeps `A0`, `B0`: decompositions differ
    /// in signs between libraries); `lora` holds the trained `A`, `B`.
    pub fn from_parts(
        kind: ResidualInit,
        lora: Lora,
        a0: Vec<f32>,
        b0: Vec<f32>,
    ) -> Result<ResidualLora> {
        let (r, inf, outf) = (lora.rank(), lora.in_features(), lora.out_features());
        check_len("residual lora", "A0", a0.len(), r, inf)?;
        check_len("residual lora", "B0", b0.len(), outf, r)?;
        let frozen = LoraPair::from_values(inf, outf, r, a0, b0)?;
        Ok(ResidualLora { kind, lora, frozen })
    }

    pub fn kind(&self) -> ResidualInit {
        self.kind
    }
    /// The trainable branch (`A`, `B`, dropout).
    pub fn lora(&self) -> &Lora {
        &self.lora
    }
    pub fn lora_mut(&mut self) -> &mut Lora {
        &mut self.lora
    }
    /// Frozen `A0` `[r, in]`.
    pub fn a0(&self) -> &[f32] {
        self.frozen.a()
    }
    /// Frozen `B0` `[out, r]`.
    pub fn b0(&self) -> &[f32] {
        self.frozen.b()
    }
}

/// OLoRA's `(A, B) = (R[:r, :], Q[:, :r])` of `Ŵ = Q·R`.
pub fn olora_init(w: &[f32], out_f: usize, in_f: usize, r: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let first: Vec<f64> = (0..out_f * r)
        .map(|k| w[(k / r) * in_f + k % r] as f64)
        .collect();
    let (q, _) = qr_thin(&first, out_f, r)?;
    // R[:r, :] = Qᵀ·Ŵ, accumulated in f64 row by row of Ŵ.
    let mut rr = vec![0.0f64; r * in_f];
    for o in 0..out_f {
        let row = &w[o * in_f..(o + 1) * in_f];
        for j in 0..r {
            let f = q[o * r + j];
            for (acc, &wv) in rr[j * in_f..(j + 1) * in_f].iter_mut().zip(row) {
                *acc += f * wv as f64;
            }
        }
    }
    Ok((to_f32(&rr), to_f32(&q)))
}

/// PiSSA's `(A, B) = (diag(√σ')·Vᵀ_r, U_r·diag(√σ'))`, `σ' = σ_r / s`.
pub fn pissa_init(
    w: &[f32],
    out_f: usize,
    in_f: usize,
    r: usize,
    niter: usize,
    s: f32,
    seed: u64,
) -> Result<(Vec<f32>, Vec<f32>)> {
    if s == 0.0 || !s.is_finite() {
        return Err(Error::Invalid(format!(
            "PiSSA needs a nonzero scale, got {s}"
        )));
    }
    let svd = svd_top(w, out_f, in_f, r, niter, seed)?;
    let root: Vec<f64> = svd.s.iter().map(|&v| (v / s as f64).sqrt()).collect();
    let a: Vec<f32> = (0..r * in_f)
        .map(|k| (root[k / in_f] * svd.vt[k]) as f32)
        .collect();
    let b: Vec<f32> = (0..out_f * r)
        .map(|k| (svd.u[k] * root[k % r]) as f32)
        .collect();
    Ok((a, b))
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

impl Adapter for ResidualLora {
    fn method(&self) -> &'static str {
        match self.kind {
            ResidualInit::Olora => "olora",
            ResidualInit::Pissa { .. } => "pissa",
        }
    }
    fn in_features(&self) -> usize {
        self.lora.in_features()
    }
    fn out_features(&self) -> usize {
        self.lora.out_features()
    }
    fn params(&self) -> Vec<ParamInfo> {
        self.lora.params()
    }
    fn param_buf(&self, i: usize) -> Option<&ParamBuf> {
        self.lora.param_buf(i)
    }
    fn param_buf_mut(&mut self, i: usize) -> Option<&mut ParamBuf> {
        self.lora.param_buf_mut(i)
    }

    /// Back to the decomposition (`A = A0`, `B = B0`); `seed` re-seeds the dropout stream.
    fn init(&mut self, seed: u64) {
        self.lora.init(seed);
        self.lora.a_mut().copy_from_slice(self.frozen.a());
        self.lora.b_mut().copy_from_slice(self.frozen.b());
    }

    fn scale(&self) -> f32 {
        self.lora.scale()
    }

    /// LoRA's; the correction's `X·A0ᵀ` / `G·B0` (`r` per token) reuse its scratch.
    fn workspace(&self) -> Workspace {
        let w = self.lora.workspace();
        Workspace {
            saved_per_token: w.saved_per_token,
            scratch_per_token: w.scratch_per_token.max(self.lora.rank()),
        }
    }

    fn forward(
        &self,
        pass: Pass,
        x: &[f32],
        y: &mut [f32],
        saved: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<()> {
        self.lora.forward(pass, x, y, saved, scratch)?;
        let n = pass.n;
        let mut sc = scratch;
        let h0 = take(self.method(), "scratch", &mut sc, n * self.lora.rank())?;
        // Y −= s·(X·A0ᵀ)·B0ᵀ through the `[n, r]` transient.
        self.frozen.mul_at(x, n, 0.0, h0)?;
        self.frozen.mul_bt(h0, n, -self.scale(), 1.0, y)
    }

    fn backward(
        &self,
        pass: Pass,
        x: &[f32],
        g: &[f32],
        saved: &[f32],
        scratch: &mut [f32],
        dx: &mut [f32],
        grads: &mut [f32],
    ) -> Result<()> {
        self.lora.backward(pass, x, g, saved, scratch, dx, grads)?;
        let n = pass.n;
        let mut sc = scratch;
        let t = take(self.method(), "scratch", &mut sc, n * self.lora.rank())?;
        // dX −= s·(G·B0)·A0 through the `[n, r]` transient.
        self.frozen.mul_b(g, n, 1.0, 0.0, t)?;
        self.frozen.mul_a(t, n, -self.scale(), 1.0, dx)
    }

    /// `ΔW = s·(B·A − B0·A0)` `[out, in]`.
    fn delta_weight(&self, dw: &mut [f32]) -> Result<()> {
        self.lora.delta_weight(dw)?;
        self.frozen.ba(-self.scale(), 1.0, dw)
    }

    /// The rank-2r LoRA `[B | −B0]·[A ; A0]` at the same scale (S3).
    fn export(&self) -> Export<'_> {
        let (r, outf) = (self.lora.rank(), self.out_features());
        let mut a = self.lora.a().to_vec();
        a.extend_from_slice(self.frozen.a());
        let mut b = Vec::with_capacity(outf * 2 * r);
        for o in 0..outf {
            b.extend_from_slice(&self.lora.b()[o * r..(o + 1) * r]);
            b.extend(self.frozen.b()[o * r..(o + 1) * r].iter().map(|v| -v));
        }
        Export::LowRank {
            a: a.into(),
            b: b.into(),
            rank: 2 * r,
            scale: self.scale(),
        }
    }

    /// The frozen `A0`, `B0`.
    fn extra_bytes(&self) -> usize {
        4 * self.frozen.numel()
    }

    /// `lora_A0` `[r, in]`, `lora_B0` `[out, r]`: stored, not recomputed, since
    /// decompositions differ in signs between builds (docs/METHODS.md#read-only-base).
    fn extra_state(&self) -> Vec<StateTensor<'_>> {
        let (r, inf, outf) = (self.lora.rank(), self.in_features(), self.out_features());
        vec![
            StateTensor::f32(A0, vec![r, inf], Cow::Borrowed(self.a0())),
            StateTensor::f32(B0, vec![outf, r], Cow::Borrowed(self.b0())),
        ]
    }

    fn load_extra_state(&mut self, src: &dyn StateSource) -> Result<()> {
        let (r, inf, outf) = (self.lora.rank(), self.in_features(), self.out_features());
        let a0 = src.f32s(A0, r * inf)?;
        let b0 = src.f32s(B0, outf * r)?;
        self.frozen = LoraPair::from_values(inf, outf, r, a0, b0)?;
        Ok(())
    }
}

/// Scalar specification of the forward: `ΔY = s·X_d·Aᵀ·Bᵀ − s·X·A0ᵀ·B0ᵀ` `[n, out]`.
#[allow(clippy::too_many_arguments)]
pub fn forward_ref<R: Real>(
    dm: BranchDims,
    s: f64,
    x: &[R],
    a: &[R],
    b: &[R],
    a0: &[R],
    b0: &[R],
    mask: Option<&[R]>,
) -> Vec<R> {
    let (mut y, _) = lora::forward_ref(dm, s, x, a, b, mask);
    let (corr, _) = lora::forward_ref(dm, s, x, a0, b0, None);
    for (v, c) in y.iter_mut().zip(corr) {
        *v = R::from_f64(v.to_f64() - c.to_f64());
    }
    y
}

/// Scalar specification of the backward: `(dX_branch, dA, dB)`, LoRA's plus the correction's
/// `−s·(G·B0)·A0` in `dX`.
#[allow(clippy::too_many_arguments)]
pub fn backward_ref<R: Real>(
    dm: BranchDims,
    s: f64,
    x: &[R],
    a: &[R],
    b: &[R],
    a0: &[R],
    b0: &[R],
    mask: Option<&[R]>,
    g: &[R],
) -> (Vec<R>, Vec<R>, Vec<R>) {
    let (mut dx, da, db) = lora::backward_ref(dm, s, x, a, b, mask, g);
    let mut t = vec![R::from_f64(0.0); dm.n * dm.r];
    gemm_ref(
        d(dm.n, dm.r, dm.out_f, false, false),
        1.0,
        g,
        b0,
        0.0,
        &mut t,
    );
    gemm_ref(
        d(dm.n, dm.in_f, dm.r, false, false),
        -s,
        &t,
        a0,
        1.0,
        &mut dx,
    );
    (dx, da, db)
}
