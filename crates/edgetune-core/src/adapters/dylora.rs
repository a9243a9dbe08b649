//! DyLoRA and QDyLoRA (docs/METHODS.md#dylora-and-qdylora): one LoRA of rank `r_max` trained so
//! that every leading truncation `A[:b]`, `B[:, :b]` works; the rank `b` is drawn once per
//! optimizer step, shared by all layers, and evaluation / export use a chosen rank `b*`.
//!
//! Shapes: `X` `[N, in]`, `A` `[r_max, in]`, `B` `[out, r_max]`, active rank `b ∈ 1..=r_max`,
//! `s_b = alpha/b` (the `√(r_max/b)` rescaling of both factors times `alpha/r_max`;
//! `alpha/√b` under rsLoRA), `X_d = D(X)`.
//!
//! ```text
//! H  = X_d·A[:b]ᵀ            [N, b]   (saved as [N, r_max] with columns ≥ b zeroed, so the
//!                                     GEMMs run over whole A, B with no strided slices)
//! Y += s_b·H·B[:, :b]ᵀ
//! dB[:, :b] = s_b·Gᵀ·H,   dH = s_b·G·B[:, :b],   dA[:b] = dHᵀ·X_d,   dX += D'(dH·A[:b])
//! ```
//!
//! - **Frozen** (DyLoRA's official training, `frozen = true`): only component `b−1` (row `b−1`
//!   of `A`, column `b−1` of `B`) keeps its gradient; components `< b−1` are detached. `dX` is
//!   unaffected.
//! - **Unfrozen** (`frozen = false`, the QDyLoRA reading of docs/METHODS.md#dylora-and-qdylora):
//!   all components `< b` train.
//! - Gradients outside the active components are written as 0 (AdamW still moves them,
//!   docs/METHODS.md#zero-gradients-and-adamw).
//! - **Rank draw:** `b = 1 + hash(rank_seed, step) mod r_max`, uniform on `1..=r_max`. The hash
//!   of the step (not a stateful RNG) gives every layer the same `b` without coordination, and a
//!   resumed run the same sequence. [`Adapter::on_step`] sets it; the passes that follow use it.
//! - **Evaluation:** passes with `training == false` use the evaluation rank
//!   ([`Dylora::set_eval_rank`], default `r_max`); export and `delta_weight` too.

use super::base::{Dropout, mix, take};
use super::lora::{self, BranchDims};
use super::pair::{LoraPair, export_delta};
use super::{Adapter, Export, LoraConfig, NestedRanks, ParamBuf, ParamInfo, Pass, Workspace};
use crate::backend::check_len;
use crate::backend::cpu::Real;
use crate::{Error, Result};

/// DyLoRA hyperparameters: `lora.rank` is `r_max`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DyloraConfig {
    pub lora: LoraConfig,
    /// Only the newest component `b−1` trains each step (DyLoRA); `false`: all `≤ b` (QDyLoRA).
    pub frozen: bool,
    /// Seed of the per-step rank draw, the same for every layer.
    pub rank_seed: u64,
}

impl Default for DyloraConfig {
    fn default() -> Self {
        DyloraConfig::dylora(LoraConfig::default())
    }
}

impl DyloraConfig {
    /// DyLoRA: frozen updates (docs/METHODS.md#dylora-and-qdylora).
    pub fn dylora(lora: LoraConfig) -> DyloraConfig {
        DyloraConfig {
            lora,
            frozen: true,
            rank_seed: 0,
        }
    }

    /// QDyLoRA: unfrozen updates (docs/METHODS.md#dylora-and-qdylora, inferred).
    pub fn qdylora(lora: LoraConfig) -> DyloraConfig {
        DyloraConfig {
            frozen: false,
            ..DyloraConfig::dylora(lora)
        }
    }

    /// The rank drawn for `step`, in `1..=r_max`.
    pub fn rank_for_step(&self, step: u64) -> usize {
        let r = self.lora.rank.max(1) as u64;
        1 + (mix(self.rank_seed ^ mix(step.wrapping_add(0xD1_10AA))) % r) as usize
    }

    /// `s_b = alpha/b` (`alpha/√b` under rsLoRA).
    pub fn scale_at(&self, b: usize) -> f32 {
        // LoraConfig::scale at rank b, without cloning the config (its target list would be
        // an allocation in every pass).
        let r = b as f64;
        let d = if self.lora.rslora { r.sqrt() } else { r };
        (self.lora.alpha as f64 / d) as f32
    }
}

/// A DyLoRA branch on one linear `[out, in]`.
#[derive(Clone, Debug)]
pub struct Dylora {
    cfg: DyloraConfig,
    /// `A` `[r_max, in]`, `B` `[out, r_max]`.
    pair: LoraPair,
    drop: Dropout,
    /// The rank of training passes (drawn by `on_step`).
    active: usize,
    /// The rank of inference passes, export and merge.
    eval_rank: usize,
}

impl Dylora {
    pub fn new(in_f: usize, out_f: usize, cfg: &DyloraConfig, seed: u64) -> Result<Dylora> {
        cfg.lora.validate()?;
        let r = cfg.lora.rank;
        let mut dy = Dylora {
            cfg: cfg.clone(),
            pair: LoraPair::new("DyLoRA", in_f, out_f, r)?,
            drop: Dropout::new(cfg.lora.dropout, seed)?,
            active: cfg.rank_for_step(0),
            eval_rank: r,
        };
        dy.init(seed);
        Ok(dy)
    }

    pub fn r_max(&self) -> usize {
        self.cfg.lora.rank
    }
    /// The rank training passes use now.
    pub fn active_rank(&self) -> usize {
        self.active
    }
    pub fn eval_rank(&self) -> usize {
        self.eval_rank
    }

    /// The rank of inference passes, export and merge (`1..=r_max`).
    pub fn set_eval_rank(&mut self, b: usize) -> Result<()> {
        if b == 0 || b > self.r_max() {
            return Err(Error::Invalid(format!(
                "DyLoRA evaluation rank {b} is outside 1..={}",
                self.r_max()
            )));
        }
        self.eval_rank = b;
        Ok(())
    }

    /// Forces the training rank (tests; the trainer uses `on_step`).
    pub fn set_active_rank(&mut self, b: usize) -> Result<()> {
        if b == 0 || b > self.r_max() {
            return Err(Error::Invalid(format!(
                "DyLoRA rank {b} is outside 1..={}",
                self.r_max()
            )));
        }
        self.active = b;
        Ok(())
    }

    pub fn config(&self) -> &DyloraConfig {
        &self.cfg
    }
    /// `A` `[r_max, in]`.
    pub fn a(&self) -> &[f32] {
        self.pair.a()
    }
    /// `B` `[out, r_max]`.
    pub fn b(&self) -> &[f32] {
        self.pair.b()
    }
    pub fn a_mut(&mut self) -> &mut [f32] {
        self.pair.a_mut()
    }
    pub fn b_mut(&mut self) -> &mut [f32] {
        self.pair.b_mut()
    }
    /// The dropout multipliers of `pass` (`None` when off), for references and tests.
    pub fn dropout_mask(&self, pass: Pass) -> Option<Vec<f32>> {
        self.drop.mask(pass, self.pair.in_f())
    }

    /// The rank a pass uses.
    pub fn rank_of(&self, pass: Pass) -> usize {
        if pass.training {
            self.active
        } else {
            self.eval_rank
        }
    }

    /// `B[:, :b]` `[out, b]` (allocates).
    fn b_cols(&self, b: usize) -> Vec<f32> {
        let (r, pb) = (self.r_max(), self.pair.b());
        (0..self.pair.out_f() * b)
            .map(|k| pb[(k / b) * r + k % b])
            .collect()
    }
}

impl Adapter for Dylora {
    fn method(&self) -> &'static str {
        if self.cfg.frozen { "dylora" } else { "qdylora" }
    }
    fn in_features(&self) -> usize {
        self.pair.in_f()
    }
    fn out_features(&self) -> usize {
        self.pair.out_f()
    }

    fn params(&self) -> Vec<ParamInfo> {
        self.pair.params("lora_A", "lora_B")
    }

    fn param_buf(&self, i: usize) -> Option<&ParamBuf> {
        self.pair.param_buf(i, [])
    }

    fn param_buf_mut(&mut self, i: usize) -> Option<&mut ParamBuf> {
        self.pair.param_buf_mut(i, [])
    }

    /// PEFT LoRA init: `A` kaiming-uniform, `B = 0`.
    fn init(&mut self, seed: u64) {
        self.drop.seed = seed;
        self.pair.init(seed);
    }

    /// The scale at the evaluation rank, `alpha/b*`.
    fn scale(&self) -> f32 {
        self.cfg.scale_at(self.eval_rank)
    }

    /// LoRA's at `r_max`: saved `H`, scratch `dH` (+ `X_d` with dropout).
    fn workspace(&self) -> Workspace {
        let drop = self.drop.input_len(self.pair.in_f());
        Workspace {
            saved_per_token: self.r_max(),
            scratch_per_token: self.r_max() + drop,
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
        let (n, rm) = (pass.n, self.r_max());
        let b = self.rank_of(pass);
        self.pair.check_forward("dylora forward", n, x, y)?;
        let mut sv = saved;
        let h = take("dylora forward", "saved", &mut sv, n * rm)?;
        let mut sc = scratch;
        let input = self.drop.input(pass, x, "dylora forward", &mut sc)?;
        // H = X_d·Aᵀ [n, r_max] with the columns ≥ b zeroed: then full-width GEMMs apply
        // exactly the truncation (B's leading columns are strided, so they are not sliced).
        self.pair.mul_at(input.xd(), n, 0.0, h)?;
        zero_cols(h, rm, b..rm);
        self.pair.mul_bt(h, n, self.cfg.scale_at(b), 1.0, y)
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
        let (n, rm, inf) = (pass.n, self.r_max(), self.pair.in_f());
        let b = self.rank_of(pass);
        let s = self.cfg.scale_at(b);
        self.pair.check_backward("dylora backward", n, x, g, dx)?;
        let np = self.pair.numel();
        check_len("dylora backward", "grads", grads.len(), 1, np)?;
        let h = saved.get(..n * rm).ok_or_else(|| {
            Error::Invalid(format!(
                "dylora backward: saved has {} values, needs {}",
                saved.len(),
                n * rm
            ))
        })?;
        let (da, db, _) = self.pair.split_grads(grads);
        let mut sc = scratch;
        let dh = take("dylora backward", "scratch", &mut sc, n * rm)?;
        let input = self.drop.input(pass, x, "dylora backward", &mut sc)?;
        // dB = s_b·Gᵀ·H (columns ≥ b are 0 since H's are); dH = s_b·G·B, truncated to b.
        self.pair.grad_b(g, h, n, s, 0.0, db)?;
        self.pair.mul_b(g, n, s, 0.0, dh)?;
        zero_cols(dh, rm, b..rm);
        // dA = dHᵀ·X_d (rows ≥ b are 0), then dX += D'(dH·A).
        self.pair.grad_a_and_x(dh, n, input, da, dx)?;
        // Frozen: components < b−1 are detached (row j of dA and column j of dB depend on
        // component j alone); dX keeps them.
        let lo = if self.cfg.frozen && pass.training {
            b - 1
        } else {
            0
        };
        da[..lo * inf].fill(0.0);
        zero_cols(db, rm, 0..lo);
        Ok(())
    }

    /// `ΔW = (alpha/b*)·B[:, :b*]·A[:b*]` at the evaluation rank
    /// (docs/METHODS.md#dylora-and-qdylora).
    fn delta_weight(&self, dw: &mut [f32]) -> Result<()> {
        export_delta(&self.export(), self.pair.out_f(), self.pair.in_f(), dw)
    }

    /// A plain LoRA of rank `b*` at scale `alpha/b*`.
    fn export(&self) -> Export<'_> {
        let b = self.eval_rank;
        Export::LowRank {
            a: (&self.pair.a()[..b * self.pair.in_f()]).into(),
            b: self.b_cols(b).into(),
            rank: b,
            scale: self.scale(),
        }
    }

    /// Draws this step's rank (shared by all layers through `rank_seed`).
    fn on_step(&mut self, step: u64) {
        self.active = self.cfg.rank_for_step(step);
    }

    fn nested_ranks(&self) -> Option<&dyn NestedRanks> {
        Some(self)
    }

    fn nested_ranks_mut(&mut self) -> Option<&mut dyn NestedRanks> {
        Some(self)
    }
}

impl NestedRanks for Dylora {
    fn eval_rank(&self) -> usize {
        Dylora::eval_rank(self)
    }

    fn set_eval_rank(&mut self, rank: usize) -> Result<()> {
        Dylora::set_eval_rank(self, rank)
    }
}

/// Zeroes columns `cols` of a row-major `[rows, width]` matrix.
fn zero_cols(m: &mut [f32], width: usize, cols: std::ops::Range<usize>) {
    if cols.is_empty() {
        return;
    }
    for row in m.chunks_mut(width) {
        row[cols.clone()].fill(0.0);
    }
}

/// `(A[:b], B[:, :b])` of `[r_max, in]`, `[out, r_max]` tensors.
fn truncate<R: Real>(dm: BranchDims, b: usize, a: &[R], bm: &[R]) -> (Vec<R>, Vec<R>) {
    let a_b = a[..b * dm.in_f].to_vec();
    let b_b = (0..dm.out_f * b)
        .map(|k| bm[(k / b) * dm.r + k % b])
        .collect();
    (a_b, b_b)
}

/// Scalar specification of the forward at rank `b` (`dm.r` is `r_max`, `s_b` the scale):
/// `ΔY = s_b·X_d·A[:b]ᵀ·B[:, :b]ᵀ` `[n, out]`.
pub fn forward_ref<R: Real>(
    dm: BranchDims,
    s_b: f64,
    b: usize,
    x: &[R],
    a: &[R],
    bm: &[R],
    mask: Option<&[R]>,
) -> Vec<R> {
    let (a_b, b_b) = truncate(dm, b, a, bm);
    lora::forward_ref(BranchDims { r: b, ..dm }, s_b, x, &a_b, &b_b, mask).0
}

/// Scalar specification of the backward at rank `b`: `(dX_branch, dA [r_max, in],
/// dB [out, r_max])`, zero outside the trained components (`b−1` alone when `frozen`).
#[allow(clippy::too_many_arguments)]
pub fn backward_ref<R: Real>(
    dm: BranchDims,
    s_b: f64,
    b: usize,
    frozen: bool,
    x: &[R],
    a: &[R],
    bm: &[R],
    mask: Option<&[R]>,
    g: &[R],
) -> (Vec<R>, Vec<R>, Vec<R>) {
    let (a_b, b_b) = truncate(dm, b, a, bm);
    let (dx, da_b, db_b) =
        lora::backward_ref(BranchDims { r: b, ..dm }, s_b, x, &a_b, &b_b, mask, g);
    let zero = R::from_f64(0.0);
    let lo = if frozen { b - 1 } else { 0 };
    let mut da = vec![zero; dm.r * dm.in_f];
    da[lo * dm.in_f..b * dm.in_f].copy_from_slice(&da_b[lo * dm.in_f..]);
    let mut db = vec![zero; dm.out_f * dm.r];
    for o in 0..dm.out_f {
        for j in lo..b {
            db[o * dm.r + j] = db_b[o * b + j];
        }
    }
    (dx, da, db)
}
