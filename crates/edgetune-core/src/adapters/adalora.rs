//! AdaLoRA (docs/METHODS.md#adalora): an SVD-shaped branch `ΔW = k·B·diag(e)·A` (`P·Λ·Q`) whose
//! rank components are pruned during training by importance; this file is one layer's branch, its
//! orthogonal regularizer and its importance buffers. The schedule and the global masking across
//! layers are [`super::adalora_alloc::RankAllocator`].
//!
//! Shapes: `X` `[N, in]`, `A` (Q) `[r0, in]`, `e` (Λ, PEFT's `lora_E` `[r0, 1]`) `[r0]`,
//! `B` (P) `[out, r0]`, `k = alpha/(r0 + 1e-5)` (`ranknum` stays `r0`), `X_d = D(X)`.
//!
//! ```text
//! U  = X_d·Aᵀ  [N, r0] (saved),   V = U ⊙ eᵀ,   Y += k·V·Bᵀ
//! dB = k·Gᵀ·V,   dV = k·G·B,   de = colsum(dV ⊙ U),   dU = dV ⊙ eᵀ,
//! dA = dUᵀ·X_d,  dX += D'(dU·A)
//! R  = ‖A·Aᵀ − I‖_F + ‖Bᵀ·B − I‖_F   (Frobenius, not squared)
//! dA += coef·2·(A·Aᵀ − I)·A / ‖A·Aᵀ − I‖_F,   dB += coef·2·B·(Bᵀ·B − I) / ‖Bᵀ·B − I‖_F
//! ```
//!
//! The trainer adds the regularizer with [`AdaLora::orth_regularizer`] (`coef = γ/n_mat`, with
//! `n_mat` = 2 × the number of AdaLoRA layers, docs/METHODS.md#orthogonal-regularizer) after each
//! backward. Importance (sensitivity EMA `Ī` and uncertainty `Ū`, per element of `A`, `B`, `e`) is
//! updated by the allocator after the optimizer step. A masked component has `e_i = 0` (it can
//! regrow: `de_i` is not zero). Export folds `e` into `B` (`B' = B·diag(e)`, zero components
//! dropped).
//!
//! Extra memory: `Ī` and `Ū` (2 × the adapter's size, f32), the `[r0, r0]` Gram transient and
//! the `r0` keep flags.

use rand::{SeedableRng, rngs::StdRng};

use super::base::{Dropout, Transient, dims as d, normal, take};
use super::lora::{self, BranchDims};
use super::pair::{LoraPair, export_delta};
use super::{
    Adapter, Export, Group, ParamBuf, ParamInfo, Pass, RankBudget, StateSource, StateTensor,
    Workspace,
};
use crate::backend::check_len;
use crate::backend::cpu::Real;
use crate::backend::cpu::gemm::{gemm, gemm_ref};
use crate::{Error, Result};

pub use super::adalora_alloc::AdaloraConfig;

/// An AdaLoRA branch on one linear `[out, in]`.
#[derive(Clone, Debug)]
pub struct AdaLora {
    cfg: AdaloraConfig,
    /// `A` `[r0, in]`, `B` `[out, r0]`.
    pair: LoraPair,
    /// `[r0]`.
    e: ParamBuf,
    drop: Dropout,
    /// Sensitivity EMA `Ī`, per element of `[A, B, e]` (params order).
    ipt_avg: Vec<f32>,
    /// Uncertainty EMA `Ū`, same layout.
    unc_avg: Vec<f32>,
    /// The last allocation's keep flags `[r0]`.
    keep: Vec<bool>,
    /// `A·Aᵀ − I` / `Bᵀ·B − I` `[r0, r0]`.
    gram: Transient,
}

impl AdaLora {
    pub fn new(in_f: usize, out_f: usize, cfg: &AdaloraConfig, seed: u64) -> Result<AdaLora> {
        cfg.validate()?;
        let r = cfg.init_r;
        let pair = LoraPair::new("AdaLoRA", in_f, out_f, r)?;
        let np = pair.numel() + r;
        let mut ada = AdaLora {
            cfg: cfg.clone(),
            pair,
            e: ParamBuf::zeros(r),
            drop: Dropout::new(cfg.dropout, seed)?,
            ipt_avg: vec![0.0; np],
            unc_avg: vec![0.0; np],
            keep: vec![true; r],
            gram: Transient::new(r * r),
        };
        ada.init(seed);
        Ok(ada)
    }

    /// `r0` (`init_r`).
    pub fn init_rank(&self) -> usize {
        self.cfg.init_r
    }
    pub fn config(&self) -> &AdaloraConfig {
        &self.cfg
    }
    /// `A` `[r0, in]`.
    pub fn a(&self) -> &[f32] {
        self.pair.a()
    }
    /// `B` `[out, r0]`.
    pub fn b(&self) -> &[f32] {
        self.pair.b()
    }
    /// `e` `[r0]`.
    pub fn e(&self) -> &[f32] {
        &self.e
    }
    pub fn a_mut(&mut self) -> &mut [f32] {
        self.pair.a_mut()
    }
    pub fn b_mut(&mut self) -> &mut [f32] {
        self.pair.b_mut()
    }
    pub fn e_mut(&mut self) -> &mut [f32] {
        &mut self.e
    }
    /// The keep flags of the last allocation (`true` = component kept).
    pub fn keep(&self) -> &[bool] {
        &self.keep
    }
    /// The allocator's state for a checkpoint: `Ī`, `Ū` (params layout) and the keep flags.
    pub fn importance_state(&self) -> (&[f32], &[f32], &[bool]) {
        (&self.ipt_avg, &self.unc_avg, &self.keep)
    }

    /// Restores [`AdaLora::importance_state`] (lengths checked).
    pub fn set_importance_state(&mut self, ipt: &[f32], unc: &[f32], keep: &[bool]) -> Result<()> {
        check_len("adalora state", "ipt", ipt.len(), 1, self.ipt_avg.len())?;
        check_len("adalora state", "unc", unc.len(), 1, self.unc_avg.len())?;
        check_len("adalora state", "keep", keep.len(), 1, self.keep.len())?;
        self.ipt_avg.copy_from_slice(ipt);
        self.unc_avg.copy_from_slice(unc);
        self.keep.copy_from_slice(keep);
        Ok(())
    }

    /// Components with `e_i ≠ 0`.
    pub fn active_rank(&self) -> usize {
        self.e.iter().filter(|&&v| v != 0.0).count()
    }
    /// The dropout multipliers of `pass` (`None` when off), for references and tests.
    pub fn dropout_mask(&self, pass: Pass) -> Option<Vec<f32>> {
        self.drop.mask(pass, self.pair.in_f())
    }

    /// Adds `coef·∇(‖A·Aᵀ − I‖_F + ‖Bᵀ·B − I‖_F)` to `grads` (params layout) and returns
    /// `coef·(‖A·Aᵀ − I‖_F + ‖Bᵀ·B − I‖_F)` (a zero norm contributes no gradient).
    pub fn orth_regularizer(&self, coef: f32, grads: &mut [f32]) -> Result<f64> {
        let (r, inf, outf) = (self.cfg.init_r, self.pair.in_f(), self.pair.out_f());
        check_len(
            "adalora regularizer",
            "grads",
            grads.len(),
            1,
            self.n_params(),
        )?;
        let (ga, gb, _) = self.pair.split_grads(grads);
        let (a, b) = (self.pair.a(), self.pair.b());
        let mut m = self.gram.lock();
        let mut total = 0.0f64;
        // M_A = A·Aᵀ − I; dA += (2·coef/‖M_A‖)·M_A·A.
        self.pair.gram_a(&mut m)?;
        let norm = minus_identity_norm(&mut m, r);
        if norm > 0.0 {
            let k = (2.0 * coef as f64 / norm) as f32;
            gemm(d(r, inf, r, false, false), k, &m, a, 1.0, ga)?;
        }
        total += norm;
        // M_B = Bᵀ·B − I; dB += (2·coef/‖M_B‖)·B·M_B.
        gemm(d(r, r, outf, true, false), 1.0, b, b, 0.0, &mut m)?;
        let norm = minus_identity_norm(&mut m, r);
        if norm > 0.0 {
            let k = (2.0 * coef as f64 / norm) as f32;
            gemm(d(outf, r, r, false, false), k, b, &m, 1.0, gb)?;
        }
        total += norm;
        Ok(coef as f64 * total)
    }

    /// After the optimizer step, with this step's gradient `grads` (params layout, the total
    /// loss's): `I = |θ ⊙ ∇θ|`, `Ī ← β1·Ī + (1−β1)·I`, `Ū ← β2·Ū + (1−β2)·|I − Ī|`.
    pub fn update_importance(&mut self, grads: &[f32]) -> Result<()> {
        check_len(
            "adalora importance",
            "grads",
            grads.len(),
            1,
            self.n_params(),
        )?;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let params = self.pair.a().iter().chain(self.pair.b()).chain(&self.e);
        for (((p, g), ia), ua) in params
            .zip(grads)
            .zip(self.ipt_avg.iter_mut())
            .zip(self.unc_avg.iter_mut())
        {
            let ipt = (p * g).abs();
            *ia = b1 * *ia + (1.0 - b1) * ipt;
            *ua = b2 * *ua + (1.0 - b2) * (ipt - *ia).abs();
        }
        Ok(())
    }

    /// Clears `Ī` and `Ū` (PEFT does so when the final pattern is fixed).
    pub fn reset_importance(&mut self) {
        self.ipt_avg.fill(0.0);
        self.unc_avg.fill(0.0);
    }

    /// The triplet scores `S_i = s(e_i) + mean_j s(A_ij) + mean_o s(B_oi)`, `s = Ī·Ū`, into
    /// `out` `[r0]`.
    pub fn triplet_scores(&self, out: &mut [f32]) -> Result<()> {
        let (r, inf, outf) = (self.cfg.init_r, self.pair.in_f(), self.pair.out_f());
        check_len("adalora scores", "out", out.len(), 1, r)?;
        let score = |k: usize| self.ipt_avg[k] as f64 * self.unc_avg[k] as f64;
        let (b0, e0) = (r * inf, r * inf + outf * r);
        for (i, o) in out.iter_mut().enumerate() {
            let sa: f64 = (0..inf).map(|j| score(i * inf + j)).sum::<f64>() / inf as f64;
            let sb: f64 = (0..outf).map(|q| score(b0 + q * r + i)).sum::<f64>() / outf as f64;
            *o = (score(e0 + i) + sa + sb) as f32;
        }
        Ok(())
    }

    /// Masks every component whose score is `≤ threshold` (`e_i = 0`) and records the keep flags.
    pub fn mask_scores(&mut self, scores: &[f32], threshold: f32) -> Result<()> {
        check_len("adalora mask", "scores", scores.len(), 1, self.cfg.init_r)?;
        for ((e, k), &s) in self.e.iter_mut().zip(self.keep.iter_mut()).zip(scores) {
            *k = s > threshold;
            if !*k {
                *e = 0.0;
            }
        }
        Ok(())
    }

    /// Zeroes `e_i` for every component the last allocation dropped.
    pub fn apply_keep(&mut self) {
        for (e, &k) in self.e.iter_mut().zip(&self.keep) {
            if !k {
                *e = 0.0;
            }
        }
    }

    /// `B·diag(e)` over the nonzero components: `(A', B', rank)`.
    fn folded(&self) -> (Vec<f32>, Vec<f32>, usize) {
        let (r, inf, outf) = (self.cfg.init_r, self.pair.in_f(), self.pair.out_f());
        let (pa, pb) = (self.pair.a(), self.pair.b());
        let live: Vec<usize> = (0..r).filter(|&i| self.e[i] != 0.0).collect();
        if live.is_empty() {
            // ΔW = 0 as a valid rank-1 pair.
            return (pa[..inf].to_vec(), vec![0.0; outf], 1);
        }
        let a: Vec<f32> = live
            .iter()
            .flat_map(|&i| pa[i * inf..(i + 1) * inf].iter().copied())
            .collect();
        let b: Vec<f32> = (0..outf)
            .flat_map(|o| live.iter().map(move |&i| pb[o * r + i] * self.e[i]))
            .collect();
        (a, b, live.len())
    }
}

/// `m −= I` in place; returns `‖m‖_F` (f64 sums).
fn minus_identity_norm(m: &mut [f32], r: usize) -> f64 {
    for i in 0..r {
        m[i * r + i] -= 1.0;
    }
    m.iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        .sqrt()
}

impl Adapter for AdaLora {
    fn method(&self) -> &'static str {
        "adalora"
    }
    fn in_features(&self) -> usize {
        self.pair.in_f()
    }
    fn out_features(&self) -> usize {
        self.pair.out_f()
    }

    /// `lora_A`, `lora_B`, `lora_E` (PEFT's order; `E` is `[r0, 1]`, 2-D, so LoRA+ group A).
    fn params(&self) -> Vec<ParamInfo> {
        let mut params = self.pair.params("lora_A", "lora_B");
        params.push(ParamInfo {
            name: "lora_E",
            shape: vec![self.cfg.init_r, 1],
            group: Group::A,
        });
        params
    }

    /// Without building `params()` (a step calls it: no allocation).
    fn n_params(&self) -> usize {
        self.pair.numel() + self.e.len()
    }

    fn param_buf(&self, i: usize) -> Option<&ParamBuf> {
        self.pair.param_buf(i, [&self.e])
    }

    fn param_buf_mut(&mut self, i: usize) -> Option<&mut ParamBuf> {
        self.pair.param_buf_mut(i, [&mut self.e])
    }

    /// Init (docs/METHODS.md#adalora): `e = 0`, `A`, `B ~ N(0, 0.02²)`; importance cleared, every
    /// component kept.
    fn init(&mut self, seed: u64) {
        self.drop.seed = seed;
        let mut rng = StdRng::seed_from_u64(seed);
        normal(&mut rng, 0.02, self.pair.a_mut());
        normal(&mut rng, 0.02, self.pair.b_mut());
        self.e.fill(0.0);
        self.reset_importance();
        self.keep.fill(true);
    }

    /// `k = alpha/(r0 + 1e-5)` (`r0/(r0 + 1e-5)` when `alpha ≤ 0`).
    fn scale(&self) -> f32 {
        self.cfg.scale()
    }

    /// Saved: `U` (r0). Scratch: `V`/`dV` (r0), plus `X_d` (in) with dropout.
    fn workspace(&self) -> Workspace {
        let drop = self.drop.input_len(self.pair.in_f());
        Workspace {
            saved_per_token: self.cfg.init_r,
            scratch_per_token: self.cfg.init_r + drop,
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
        let (n, r) = (pass.n, self.cfg.init_r);
        self.pair.check_forward("adalora forward", n, x, y)?;
        let mut sv = saved;
        let u = take("adalora forward", "saved", &mut sv, n * r)?;
        let mut sc = scratch;
        let v = take("adalora forward", "scratch", &mut sc, n * r)?;
        let input = self.drop.input(pass, x, "adalora forward", &mut sc)?;
        self.pair.mul_at(input.xd(), n, 0.0, u)?;
        for (k, (vv, &uv)) in v.iter_mut().zip(u.iter()).enumerate() {
            *vv = uv * self.e[k % r];
        }
        self.pair.mul_bt(v, n, self.scale(), 1.0, y)
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
        let (n, r) = (pass.n, self.cfg.init_r);
        let k = self.scale();
        self.pair.check_backward("adalora backward", n, x, g, dx)?;
        check_len("adalora backward", "grads", grads.len(), 1, self.n_params())?;
        let u = saved.get(..n * r).ok_or_else(|| {
            Error::Invalid(format!(
                "adalora backward: saved has {} values, needs {}",
                saved.len(),
                n * r
            ))
        })?;
        let (da, db, de) = self.pair.split_grads(grads);
        let mut sc = scratch;
        let v = take("adalora backward", "scratch", &mut sc, n * r)?;
        let input = self.drop.input(pass, x, "adalora backward", &mut sc)?;
        // dB = k·Gᵀ·V with V = U ⊙ e; then the buffer becomes dV = k·G·B.
        for (j, (vv, &uv)) in v.iter_mut().zip(u).enumerate() {
            *vv = uv * self.e[j % r];
        }
        self.pair.grad_b(g, v, n, k, 0.0, db)?;
        self.pair.mul_b(g, n, k, 0.0, v)?;
        // de = colsum(dV ⊙ U); dU = dV ⊙ e (in place).
        for (i, dv) in de.iter_mut().enumerate() {
            *dv = (0..n)
                .map(|t| v[t * r + i] as f64 * u[t * r + i] as f64)
                .sum::<f64>() as f32;
        }
        for (j, vv) in v.iter_mut().enumerate() {
            *vv *= self.e[j % r];
        }
        // dA = dUᵀ·X_d, dX += D'(dU·A).
        self.pair.grad_a_and_x(v, n, input, da, dx)
    }

    /// `ΔW = k·B·diag(e)·A` `[out, in]` (docs/METHODS.md#adalora).
    fn delta_weight(&self, dw: &mut [f32]) -> Result<()> {
        export_delta(&self.export(), self.pair.out_f(), self.pair.in_f(), dw)
    }

    /// The plain LoRA `B' = B·diag(e)`, `A' = A` over the nonzero components, scale `k`.
    fn export(&self) -> Export<'_> {
        let (a, b, rank) = self.folded();
        Export::LowRank {
            a: a.into(),
            b: b.into(),
            rank,
            scale: self.scale(),
        }
    }

    /// `Ī`, `Ū`, the Gram transient and the keep flags.
    fn extra_bytes(&self) -> usize {
        4 * (self.ipt_avg.len() + self.unc_avg.len()) + self.gram.bytes() + self.keep.len()
    }

    fn rank_budget(&self) -> Option<&dyn RankBudget> {
        Some(self)
    }

    fn rank_budget_mut(&mut self) -> Option<&mut dyn RankBudget> {
        Some(self)
    }

    fn extra_state(&self) -> Vec<StateTensor<'_>> {
        self.importance_tensors()
    }

    fn load_extra_state(&mut self, src: &dyn StateSource) -> Result<()> {
        self.load_importance_tensors(src)
    }
}

/// Scalar specification of the forward (docs/METHODS.md#adalora): `ΔY = k·(X_d·Aᵀ ⊙ eᵀ)·Bᵀ` `[n,
/// out]`.
#[allow(clippy::too_many_arguments)]
pub fn forward_ref<R: Real>(
    dm: BranchDims,
    k: f64,
    x: &[R],
    a: &[R],
    b: &[R],
    e: &[R],
    mask: Option<&[R]>,
) -> Vec<R> {
    let (be, _) = fold_ref(dm, b, e);
    lora::forward_ref(dm, k, x, a, &be, mask).0
}

/// Scalar specification of the backward (docs/METHODS.md#adalora): `(dX_branch, dA, dB, de)`.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn backward_ref<R: Real>(
    dm: BranchDims,
    k: f64,
    x: &[R],
    a: &[R],
    b: &[R],
    e: &[R],
    mask: Option<&[R]>,
    g: &[R],
) -> (Vec<R>, Vec<R>, Vec<R>, Vec<R>) {
    let BranchDims { n, out_f, r, .. } = dm;
    // With B_e = B·diag(e) it is LoRA: dA and dX follow; dB = dB_e·diag(e) is wrong where e = 0,
    // so dB and de come from U = X_d·Aᵀ directly.
    let (be, _) = fold_ref(dm, b, e);
    let (dx, da, _) = lora::backward_ref(dm, k, x, a, &be, mask, g);
    let (_, u) = lora::forward_ref(dm, 1.0, x, a, &be, mask);
    let zero = R::from_f64(0.0);
    let v: Vec<R> = (0..n * r)
        .map(|t| R::from_f64(u[t].to_f64() * e[t % r].to_f64()))
        .collect();
    let mut db = vec![zero; out_f * r];
    gemm_ref(d(out_f, r, n, true, false), k, g, &v, 0.0, &mut db);
    let mut dv = vec![zero; n * r];
    gemm_ref(d(n, r, out_f, false, false), k, g, b, 0.0, &mut dv);
    let de: Vec<R> = (0..r)
        .map(|i| {
            R::from_f64(
                (0..n)
                    .map(|t| dv[t * r + i].to_f64() * u[t * r + i].to_f64())
                    .sum(),
            )
        })
        .collect();
    (dx, da, db, de)
}

/// `B·diag(e)` and `e` as f64.
fn fold_ref<R: Real>(dm: BranchDims, b: &[R], e: &[R]) -> (Vec<R>, Vec<f64>) {
    let e64: Vec<f64> = e.iter().map(|v| v.to_f64()).collect();
    let be = (0..dm.out_f * dm.r)
        .map(|k| R::from_f64(b[k].to_f64() * e64[k % dm.r]))
        .collect();
    (be, e64)
}

/// Scalar specification of the orthogonal regularizer (docs/METHODS.md#orthogonal-regularizer):
/// `(coef·R, dA, dB)`.
pub fn orth_regularizer_ref<R: Real>(
    dm: BranchDims,
    coef: f64,
    a: &[R],
    b: &[R],
) -> (f64, Vec<R>, Vec<R>) {
    let BranchDims { in_f, out_f, r, .. } = dm;
    let zero = R::from_f64(0.0);
    let mut ma = vec![zero; r * r];
    gemm_ref(d(r, r, in_f, false, true), 1.0, a, a, 0.0, &mut ma);
    let mut mb = vec![zero; r * r];
    gemm_ref(d(r, r, out_f, true, false), 1.0, b, b, 0.0, &mut mb);
    let norm = |m: &mut [R]| -> f64 {
        for i in 0..r {
            m[i * r + i] = R::from_f64(m[i * r + i].to_f64() - 1.0);
        }
        m.iter().map(|v| v.to_f64().powi(2)).sum::<f64>().sqrt()
    };
    let (na, nb) = (norm(&mut ma), norm(&mut mb));
    let mut da = vec![zero; r * in_f];
    if na > 0.0 {
        gemm_ref(
            d(r, in_f, r, false, false),
            2.0 * coef / na,
            &ma,
            a,
            0.0,
            &mut da,
        );
    }
    let mut db = vec![zero; out_f * r];
    if nb > 0.0 {
        gemm_ref(
            d(out_f, r, r, false, false),
            2.0 * coef / nb,
            b,
            &mb,
            0.0,
            &mut db,
        );
    }
    (coef * (na + nb), da, db)
}
