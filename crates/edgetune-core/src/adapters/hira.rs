//! HiRA, Hadamard high-rank adaptation (docs/METHODS.md#hira): `ΔW = Ŵ ⊙ (B·A)`, whose rank can
//! reach `rank(Ŵ)·r`; no scaling factor (PEFT's `hira` has no alpha).
//!
//! Shapes: `X` `[N, in]`, `Ŵ` `[out, in]` (frozen base), `A` `[r, in]`, `B` `[out, r]`,
//! `X_d = D(X)`, `G = ∂L/∂Y` `[N, out]`.
//!
//! ```text
//! M  = Ŵ ⊙ (B·A)                 [out, in]
//! Y  = X·Ŵᵀ + X_d·Mᵀ
//! Γ  = Gᵀ·X_d                    [out, in]
//! dB = (Γ ⊙ Ŵ)·Aᵀ,   dA = Bᵀ·(Γ ⊙ Ŵ),   dX += D'(G·M)
//! ```
//!
//! # Strategy: dense, in row tiles
//!
//! The dense form (docs/METHODS.md#hira) costs ~3 base-sized GEMMs plus `O(out·in·r)`; the factored
//! form costs `r` base GEMMs per pass. Dense needs `[out, in]` transients, so they are formed one
//! tile of [`TILE`] output rows at a time: `Ŵ_t` (borrowed from a dense base or dequantized from a
//! quantized one), `M_t = Ŵ_t ⊙ (B_t·A)`, then `Y[:, t] += X_d·M_tᵀ`; the backward rebuilds `M_t`
//! and forms `Γ_t = G_tᵀ·X_d`. The three `[TILE, in]` buffers belong to the adapter
//! ([`Adapter::extra_bytes`]), so the per-token workspace stays linear in `N` and a step never
//! allocates. Nothing is saved between forward and backward. Export is merge-only: `Ŵ' = Ŵ ⊙ (1 +
//! B·A)` is no plain `B'·A'`.

use super::base::{BaseWeight, Dropout, Transient, dims as d, take};
use super::lora::{BranchDims, masked};
use super::pair::LoraPair;
use super::{Adapter, Export, LoraConfig, ParamBuf, ParamInfo, Pass, Workspace};
use crate::Result;
use crate::backend::check_len;
use crate::backend::cpu::Real;
use crate::backend::cpu::gemm::{gemm, gemm_ref};

/// Output rows per tile of the `[out, in]` transients.
pub const TILE: usize = 64;

/// A HiRA branch on one linear `Ŵ` `[out, in]`. Uses `rank` and `dropout` of its
/// [`LoraConfig`]; `alpha`/`rslora` do not apply (the scale is 1).
#[derive(Clone, Debug)]
pub struct Hira {
    cfg: LoraConfig,
    pair: LoraPair,
    base: BaseWeight,
    drop: Dropout,
    /// `Ŵ_t`, `M_t`, `Γ_t`: three `[tile, in]` buffers.
    tiles: Transient,
}

impl Hira {
    /// HiRA on `base` (a copy of `Ŵ`), PEFT init from `seed`.
    pub fn new(cfg: &LoraConfig, base: BaseWeight, seed: u64) -> Result<Hira> {
        cfg.validate()?;
        let (out_f, in_f) = (base.rows(), base.cols());
        let mut hira = Hira {
            cfg: cfg.clone(),
            pair: LoraPair::new("HiRA", in_f, out_f, cfg.rank)?,
            tiles: Transient::new(3 * TILE.min(out_f) * in_f),
            base,
            drop: Dropout::new(cfg.dropout, seed)?,
        };
        hira.init(seed);
        Ok(hira)
    }

    pub fn rank(&self) -> usize {
        self.cfg.rank
    }
    /// `A` `[r, in]`.
    pub fn a(&self) -> &[f32] {
        self.pair.a()
    }
    /// `B` `[out, r]`.
    pub fn b(&self) -> &[f32] {
        self.pair.b()
    }
    pub fn a_mut(&mut self) -> &mut [f32] {
        self.pair.a_mut()
    }
    pub fn b_mut(&mut self) -> &mut [f32] {
        self.pair.b_mut()
    }
    pub fn base(&self) -> &BaseWeight {
        &self.base
    }
    /// The dropout multipliers of `pass` (`None` when off), for references and tests.
    pub fn dropout_mask(&self, pass: Pass) -> Option<Vec<f32>> {
        self.drop.mask(pass, self.pair.in_f())
    }

    /// `M_t = Ŵ_t ⊙ (B_t·A)` for output rows `o0..o0+t` into `m`; returns `Ŵ_t`.
    fn m_tile<'a>(
        &'a self,
        o0: usize,
        t: usize,
        wbuf: &'a mut [f32],
        m: &mut [f32],
    ) -> Result<&'a [f32]> {
        let wt = self.base.rows_f32(o0, t, wbuf)?;
        self.pair.ba_rows(o0..o0 + t, 1.0, 0.0, m)?;
        for (mv, &wv) in m.iter_mut().zip(wt) {
            *mv *= wv;
        }
        Ok(wt)
    }
}

impl Adapter for Hira {
    fn method(&self) -> &'static str {
        "hira"
    }
    fn in_features(&self) -> usize {
        self.pair.in_f()
    }
    fn out_features(&self) -> usize {
        self.pair.out_f()
    }

    fn params(&self) -> Vec<ParamInfo> {
        self.pair.params("hira_A", "hira_B")
    }

    fn param_buf(&self, i: usize) -> Option<&ParamBuf> {
        self.pair.param_buf(i, [])
    }

    fn param_buf_mut(&mut self, i: usize) -> Option<&mut ParamBuf> {
        self.pair.param_buf_mut(i, [])
    }

    /// Init (docs/METHODS.md#hira): `A` kaiming-uniform, `B = 0` (a no-op at init).
    fn init(&mut self, seed: u64) {
        self.drop.seed = seed;
        self.pair.init(seed);
    }

    /// No scaling factor.
    fn scale(&self) -> f32 {
        1.0
    }

    /// Nothing saved. Scratch: one `[N, tile]` block of `Y`/`G`, plus `X_d` and `D'`'s input
    /// (in each) with dropout.
    fn workspace(&self) -> Workspace {
        let drop = 2 * self.drop.input_len(self.pair.in_f());
        Workspace {
            saved_per_token: 0,
            scratch_per_token: TILE.min(self.pair.out_f()) + drop,
        }
    }

    fn forward(
        &self,
        pass: Pass,
        x: &[f32],
        y: &mut [f32],
        _saved: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<()> {
        let (n, inf, outf) = (pass.n, self.pair.in_f(), self.pair.out_f());
        self.pair.check_forward("hira forward", n, x, y)?;
        let tile = TILE.min(outf);
        let mut sc = scratch;
        let yt = take("hira forward", "scratch", &mut sc, n * tile)?;
        let input = self.drop.input(pass, x, "hira forward", &mut sc)?;
        let xd = input.xd();
        let mut bufs = self.tiles.lock();
        let (wbuf, rest) = bufs.split_at_mut(tile * inf);
        let mbuf = &mut rest[..tile * inf];
        for o0 in (0..outf).step_by(tile) {
            let t = tile.min(outf - o0);
            let m = &mut mbuf[..t * inf];
            self.m_tile(o0, t, wbuf, m)?;
            let yt = &mut yt[..n * t];
            gemm(d(n, t, inf, false, true), 1.0, xd, m, 0.0, yt)?;
            for tok in 0..n {
                let dst = &mut y[tok * outf + o0..tok * outf + o0 + t];
                for (yv, &v) in dst.iter_mut().zip(&yt[tok * t..(tok + 1) * t]) {
                    *yv += v;
                }
            }
        }
        Ok(())
    }

    fn backward(
        &self,
        pass: Pass,
        x: &[f32],
        g: &[f32],
        _saved: &[f32],
        scratch: &mut [f32],
        dx: &mut [f32],
        grads: &mut [f32],
    ) -> Result<()> {
        let (n, r, inf, outf) = (pass.n, self.cfg.rank, self.pair.in_f(), self.pair.out_f());
        self.pair.check_backward("hira backward", n, x, g, dx)?;
        check_len("hira backward", "grads", grads.len(), 1, self.pair.numel())?;
        let (da, db, _) = self.pair.split_grads(grads);
        let tile = TILE.min(outf);
        let mut sc = scratch;
        let gt = take("hira backward", "scratch", &mut sc, n * tile)?;
        let stream = self.drop.stream(pass);
        let input = self.drop.input(pass, x, "hira backward", &mut sc)?;
        let xd = input.xd();
        // D'-input `[n, in]`, accumulated over the tiles (with dropout; else straight into dx).
        let mut dxd = match stream {
            Some(_) => {
                let dxd = take("hira backward", "scratch", &mut sc, n * inf)?;
                dxd.fill(0.0);
                Some(dxd)
            }
            None => None,
        };
        let mut bufs = self.tiles.lock();
        let (wbuf, rest) = bufs.split_at_mut(tile * inf);
        let (mbuf, gbuf) = rest.split_at_mut(tile * inf);
        for o0 in (0..outf).step_by(tile) {
            let t = tile.min(outf - o0);
            let m = &mut mbuf[..t * inf];
            let wt = self.m_tile(o0, t, wbuf, m)?;
            let gt = &mut gt[..n * t];
            for tok in 0..n {
                gt[tok * t..(tok + 1) * t]
                    .copy_from_slice(&g[tok * outf + o0..tok * outf + o0 + t]);
            }
            // D'-input += G_t·M_t.
            let acc: &mut [f32] = match dxd.as_deref_mut() {
                Some(v) => v,
                None => &mut *dx,
            };
            gemm(d(n, inf, t, false, false), 1.0, gt, m, 1.0, acc)?;
            // Γ_t ⊙ Ŵ_t = (G_tᵀ·X_d) ⊙ Ŵ_t; dB_t = (Γ_t⊙Ŵ_t)·Aᵀ; dA += B_tᵀ·(Γ_t⊙Ŵ_t).
            let gam = &mut gbuf[..t * inf];
            gemm(d(t, inf, n, true, false), 1.0, gt, xd, 0.0, gam)?;
            for (gv, &wv) in gam.iter_mut().zip(wt) {
                *gv *= wv;
            }
            let dbt = &mut db[o0 * r..(o0 + t) * r];
            self.pair.mul_at(gam, t, 0.0, dbt)?;
            let beta = if o0 == 0 { 0.0 } else { 1.0 };
            let bt = &self.pair.b()[o0 * r..(o0 + t) * r];
            gemm(d(r, inf, t, true, false), 1.0, bt, gam, beta, da)?;
        }
        if let (Some(st), Some(dxd)) = (stream, dxd) {
            self.drop.add_masked(st, dxd, dx);
        }
        Ok(())
    }

    /// `ΔW = Ŵ ⊙ (B·A)` `[out, in]`.
    fn delta_weight(&self, dw: &mut [f32]) -> Result<()> {
        let (inf, outf) = (self.pair.in_f(), self.pair.out_f());
        self.pair.ba(1.0, 0.0, dw)?;
        let mut row = vec![0.0f32; inf];
        for o in 0..outf {
            let w = self.base.rows_f32(o, 1, &mut row)?;
            for (dv, &wv) in dw[o * inf..(o + 1) * inf].iter_mut().zip(w) {
                *dv *= wv;
            }
        }
        Ok(())
    }

    /// Merge-only.
    fn export(&self) -> Export<'_> {
        Export::MergeOnly
    }

    /// The base copy plus the three `[tile, in]` f32 tile buffers.
    fn extra_bytes(&self) -> usize {
        self.base.bytes() + self.tiles.bytes()
    }
}

/// `M = Ŵ ⊙ (B·A)` formed densely.
fn dense_m<R: Real>(dm: BranchDims, w: &[R], a: &[R], b: &[R]) -> Vec<R> {
    let mut m = vec![R::from_f64(0.0); dm.out_f * dm.in_f];
    gemm_ref(
        d(dm.out_f, dm.in_f, dm.r, false, false),
        1.0,
        b,
        a,
        0.0,
        &mut m,
    );
    for (mv, wv) in m.iter_mut().zip(w) {
        *mv = R::from_f64(mv.to_f64() * wv.to_f64());
    }
    m
}

/// Scalar specification of the forward (docs/METHODS.md#hira, dense): `ΔY = X_d·(Ŵ ⊙ B·A)ᵀ` `[n,
/// out]`.
pub fn forward_ref<R: Real>(
    dm: BranchDims,
    x: &[R],
    w: &[R],
    a: &[R],
    b: &[R],
    mask: Option<&[R]>,
) -> Vec<R> {
    let m = dense_m(dm, w, a, b);
    let mut y = vec![R::from_f64(0.0); dm.n * dm.out_f];
    let xd = masked(x, mask);
    gemm_ref(
        d(dm.n, dm.out_f, dm.in_f, false, true),
        1.0,
        &xd,
        &m,
        0.0,
        &mut y,
    );
    y
}

/// Scalar specification of the backward (docs/METHODS.md#hira, dense): `(dX_branch, dA, dB)`.
pub fn backward_ref<R: Real>(
    dm: BranchDims,
    x: &[R],
    w: &[R],
    a: &[R],
    b: &[R],
    mask: Option<&[R]>,
    g: &[R],
) -> (Vec<R>, Vec<R>, Vec<R>) {
    let BranchDims { n, in_f, out_f, r } = dm;
    let zero = R::from_f64(0.0);
    let xd = masked(x, mask);
    let m = dense_m(dm, w, a, b);
    let mut gam = vec![zero; out_f * in_f];
    gemm_ref(d(out_f, in_f, n, true, false), 1.0, g, &xd, 0.0, &mut gam);
    for (gv, wv) in gam.iter_mut().zip(w) {
        *gv = R::from_f64(gv.to_f64() * wv.to_f64());
    }
    let mut db = vec![zero; out_f * r];
    gemm_ref(d(out_f, r, in_f, false, true), 1.0, &gam, a, 0.0, &mut db);
    let mut da = vec![zero; r * in_f];
    gemm_ref(d(r, in_f, out_f, true, false), 1.0, b, &gam, 0.0, &mut da);
    let mut dxd = vec![zero; n * in_f];
    gemm_ref(d(n, in_f, out_f, false, false), 1.0, g, &m, 0.0, &mut dxd);
    (masked(&dxd, mask), da, db)
}
