//! ResLoRA, input-shortcut variant res_is (docs/METHODS.md#reslora): layer `l`'s branch sees
//! its own module input plus the same-target module input of layer `l − 1` in the same pass,
//!
//! ```text
//! S_l  = D(X_l + X_{l−1})           [N, in]     (X_{−1} := X_0, i.e. 2·X_0 in layer 0)
//! H_l  = S_l·A_lᵀ                   [N, r]      (saved)
//! ΔY_l = s·H_l·B_lᵀ                 [N, out]
//! ```
//! Backward (docs/METHODS.md#reslora): `dB = s·Gᵀ·H`, `dH = s·G·B`, `dA = dHᵀ·S`, and `V =
//! D'(dH·A)` goes to BOTH inputs: `dX_l += V` and `dX_{l−1} += V` — a cross-layer gradient the
//! training step carries in a per-target "pending" buffer, filled by layer `l`'s backward and added
//! to layer `l−1`'s module-input gradient when the backward reaches it.
//!
//! The [`Adapter`] trait has no second input, so its `forward`/`backward` are the layer-0 rule
//! (`X_{l−1} = X_l`, `V` added twice to `dx`); a step that plumbs the previous layer's input
//! calls [`PrevLayerInput::forward_res`] / [`PrevLayerInput::backward_res`] (reached through
//! [`Adapter::prev_layer_input`]).
//!
//! Export, merge_bw (docs/METHODS.md#reslora): training keeps a sliding window (default 100 passes)
//! of the Frobenius norms `‖X_l‖` and `‖X_{l−1}‖` of the micro-batch inputs; then `α_l =
//! mean‖X_{l−1}‖ / mean‖X_l‖` (1 when empty, or a norm is 0, or in layer 0) and `ΔW_l = (1 +
//! α_l)·s·B_l·A_l`, a plain rank-`r` LoRA.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::base::{Dropout, take};
use super::lora::BranchDims;
use super::pair::LoraPair;
use super::{
    Adapter, Export, LoraConfig, ParamBuf, ParamInfo, Pass, PrevLayerInput, StateSource,
    StateTensor, Workspace,
};
use crate::backend::check_len;
use crate::backend::cpu::Real;
use crate::{Error, Result};

/// ResLoRA's `merge_4_len`: passes in the norm window.
pub const DEFAULT_WINDOW: usize = 100;

/// The norm window's tensors in a checkpoint (per slot).
const NORM_CUR: &str = "reslora_norm_cur";
const NORM_PREV: &str = "reslora_norm_prev";
const LAST_SEED: &str = "reslora_last_seed";

/// The merge_bw statistics: the last `len` passes' `‖X_l‖_F` and `‖X_{l−1}‖_F`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NormWindow {
    pub len: usize,
    pub cur: VecDeque<f64>,
    pub prev: VecDeque<f64>,
    /// The seed of the last recorded pass: a recompute (same seed) is not counted twice.
    pub last_seed: Option<u64>,
}

impl NormWindow {
    fn record(&mut self, seed: u64, cur: f64, prev: f64) {
        if self.last_seed == Some(seed) || self.len == 0 {
            return;
        }
        self.last_seed = Some(seed);
        if self.cur.len() == self.len {
            self.cur.pop_front();
            self.prev.pop_front();
        }
        self.cur.push_back(cur);
        self.prev.push_back(prev);
    }

    /// `α = mean‖X_{l−1}‖ / mean‖X_l‖`, 1 when undefined.
    pub fn alpha(&self) -> f64 {
        let c: f64 = self.cur.iter().sum();
        let p: f64 = self.prev.iter().sum();
        if self.cur.is_empty() || c == 0.0 || p == 0.0 {
            1.0
        } else {
            p / c
        }
    }
}

/// A res_is ResLoRA branch on one linear `[out, in]`.
#[derive(Debug)]
pub struct ResLora {
    cfg: LoraConfig,
    pair: LoraPair,
    drop: Dropout,
    /// Interior mutability: the forward (`&self`) records the norms.
    window: Mutex<NormWindow>,
}

impl Clone for ResLora {
    fn clone(&self) -> Self {
        ResLora {
            cfg: self.cfg.clone(),
            pair: self.pair.clone(),
            drop: self.drop,
            window: Mutex::new(self.norm_window()),
        }
    }
}

impl ResLora {
    /// A res_is branch with LoRA hyper-parameters `cfg` and a norm window of `window` passes.
    pub fn new(
        in_f: usize,
        out_f: usize,
        cfg: &LoraConfig,
        window: usize,
        seed: u64,
    ) -> Result<ResLora> {
        cfg.validate()?;
        let mut r = ResLora {
            cfg: cfg.clone(),
            pair: LoraPair::new("ResLoRA", in_f, out_f, cfg.rank)?,
            drop: Dropout::new(cfg.dropout, seed)?,
            window: Mutex::new(NormWindow {
                len: window,
                ..NormWindow::default()
            }),
        };
        r.init(seed);
        Ok(r)
    }

    pub fn rank(&self) -> usize {
        self.cfg.rank
    }

    /// The dropout multipliers of `pass` (`None` when off), for references and tests.
    pub fn dropout_mask(&self, pass: Pass) -> Option<Vec<f32>> {
        self.drop.mask(pass, self.pair.in_f())
    }

    /// A copy of the norm window (for checkpoints).
    pub fn norm_window(&self) -> NormWindow {
        self.window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Restores a checkpoint's norm window.
    pub fn set_norm_window(&mut self, w: NormWindow) {
        *self.window.get_mut().unwrap_or_else(|e| e.into_inner()) = w;
    }

    /// merge_bw's `α_l` (module doc).
    pub fn merge_alpha(&self) -> f64 {
        self.window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .alpha()
    }

    /// The merged scale `(1 + α_l)·s` of `ΔW = (1 + α_l)·s·B·A`.
    fn merge_scale(&self) -> f32 {
        ((1.0 + self.merge_alpha()) * self.scale() as f64) as f32
    }

    /// `s_buf = D(x + x_prev)` (`x_prev = x` when `None`).
    fn summed(&self, pass: Pass, x: &[f32], x_prev: Option<&[f32]>, s_buf: &mut [f32]) {
        match x_prev {
            Some(p) => s_buf
                .iter_mut()
                .zip(x.iter().zip(p))
                .for_each(|(s, (a, b))| *s = a + b),
            None => s_buf.iter_mut().zip(x).for_each(|(s, a)| *s = 2.0 * a),
        }
        if let Some(stream) = self.drop.stream(pass) {
            self.drop.apply_in_place(stream, s_buf);
        }
    }
}

/// The step's entry to the shortcut (`crates/edgetune-train/src/train/step_reslora.rs` keeps the previous layer's
/// inputs and carries the pending gradient).
impl PrevLayerInput for ResLora {
    /// `y += s·D(x + x_prev)·Aᵀ·Bᵀ`; `x_prev` is layer `l−1`'s same-target module input
    /// (`None` in layer 0: `2·x`). Records the norms in training passes.
    fn forward_res(
        &self,
        pass: Pass,
        x: &[f32],
        x_prev: Option<&[f32]>,
        y: &mut [f32],
        saved: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<()> {
        let (n, r, inf, outf) = (pass.n, self.cfg.rank, self.pair.in_f(), self.pair.out_f());
        check_len("reslora forward", "x", x.len(), n, inf)?;
        if let Some(p) = x_prev {
            check_len("reslora forward", "x_prev", p.len(), n, inf)?;
        }
        check_len("reslora forward", "y", y.len(), n, outf)?;
        let mut saved = saved;
        let h = take("reslora", "saved", &mut saved, n * r)?;
        let mut scratch = scratch;
        let s_buf = take("reslora", "scratch", &mut scratch, n * inf)?;
        self.summed(pass, x, x_prev, s_buf);
        // H = S·Aᵀ [n, r], Y += s·H·Bᵀ [n, out].
        self.pair.mul_at(s_buf, n, 0.0, h)?;
        self.pair.mul_bt(h, n, self.scale(), 1.0, y)?;
        if pass.training {
            let norm = |v: &[f32]| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
            let cur = norm(x);
            let prev = x_prev.map_or(cur, norm);
            self.window
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(pass.seed, cur, prev);
        }
        Ok(())
    }

    /// The backward of [`PrevLayerInput::forward_res`]: `dx += V`, and `dx_prev += V` (the pending
    /// gradient of layer `l−1`'s module input), or `dx += V` once more when `x_prev` is `None`.
    fn backward_res(
        &self,
        pass: Pass,
        x: &[f32],
        x_prev: Option<&[f32]>,
        g: &[f32],
        saved: &[f32],
        scratch: &mut [f32],
        dx: &mut [f32],
        dx_prev: Option<&mut [f32]>,
        grads: &mut [f32],
    ) -> Result<()> {
        let (n, r, inf) = (pass.n, self.cfg.rank, self.pair.in_f());
        let s = self.scale();
        self.pair.check_backward("reslora backward", n, x, g, dx)?;
        let np = self.pair.numel();
        check_len("reslora backward", "grads", grads.len(), 1, np)?;
        if x_prev.is_some() != dx_prev.is_some() {
            return Err(Error::Invalid(
                "reslora backward: x_prev and dx_prev go together".into(),
            ));
        }
        if let Some(p) = x_prev {
            check_len("reslora backward", "x_prev", p.len(), n, inf)?;
        }
        let h = saved.get(..n * r).ok_or_else(|| {
            Error::Invalid(format!("reslora: saved shorter than {} values", n * r))
        })?;
        let (da, db, _) = self.pair.split_grads(grads);
        let mut scratch = scratch;
        let s_buf = take("reslora", "scratch", &mut scratch, n * inf)?;
        let dh = take("reslora", "scratch", &mut scratch, n * r)?;
        self.summed(pass, x, x_prev, s_buf);
        self.pair.grad_b(g, h, n, s, 0.0, db)?;
        self.pair.mul_b(g, n, s, 0.0, dh)?;
        self.pair.grad_a(dh, s_buf, n, 0.0, da)?;
        // V = D'(dH·A), into the S buffer.
        self.pair.mul_a(dh, n, 1.0, 0.0, s_buf)?;
        if let Some(stream) = self.drop.stream(pass) {
            self.drop.apply_in_place(stream, s_buf);
        }
        let twice = dx_prev.is_none();
        for (d, &v) in dx.iter_mut().zip(s_buf.iter()) {
            *d += if twice { 2.0 * v } else { v };
        }
        if let Some(dp) = dx_prev {
            check_len("reslora backward", "dx_prev", dp.len(), n, inf)?;
            dp.iter_mut().zip(s_buf.iter()).for_each(|(d, &v)| *d += v);
        }
        Ok(())
    }
}

impl Adapter for ResLora {
    fn method(&self) -> &'static str {
        "reslora"
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

    /// kaiming(√5) `A`, zero `B` (docs/METHODS.md#reslora); the norm window is emptied.
    fn init(&mut self, seed: u64) {
        self.drop.seed = seed;
        self.pair.init(seed);
        let w = self.window.get_mut().unwrap_or_else(|e| e.into_inner());
        *w = NormWindow {
            len: w.len,
            ..NormWindow::default()
        };
    }

    fn scale(&self) -> f32 {
        self.cfg.scale()
    }

    /// Saved: `H` (r). Scratch: `S` (in) and, in the backward, `dH` (r).
    fn workspace(&self) -> Workspace {
        Workspace {
            saved_per_token: self.cfg.rank,
            scratch_per_token: self.pair.in_f() + self.cfg.rank,
        }
    }

    /// The layer-0 rule (`X_{l−1} = X_l`); see [`PrevLayerInput::forward_res`].
    fn forward(
        &self,
        pass: Pass,
        x: &[f32],
        y: &mut [f32],
        saved: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<()> {
        self.forward_res(pass, x, None, y, saved, scratch)
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
        self.backward_res(pass, x, None, g, saved, scratch, dx, None, grads)
    }

    /// merge_bw: `ΔW = (1 + α)·s·B·A`.
    fn delta_weight(&self, dw: &mut [f32]) -> Result<()> {
        self.pair.ba(self.merge_scale(), 0.0, dw)
    }

    fn export(&self) -> Export<'_> {
        self.pair.export(self.merge_scale())
    }

    /// The norm window (two f64 per pass).
    fn extra_bytes(&self) -> usize {
        16 * self.window.lock().unwrap_or_else(|e| e.into_inner()).len
    }

    fn prev_layer_input(&self) -> Option<&dyn PrevLayerInput> {
        Some(self)
    }

    /// The norm window: `reslora_norm_cur`, `reslora_norm_prev` `[k ≤ window]` (F64) and
    /// `reslora_last_seed` `[0 or 1]` (U64), so merge_bw's `α` after a resume is the
    /// uninterrupted run's.
    fn extra_state(&self) -> Vec<StateTensor<'_>> {
        let w = self.norm_window();
        vec![
            StateTensor::f64_vec(NORM_CUR, w.cur.into()),
            StateTensor::f64_vec(NORM_PREV, w.prev.into()),
            StateTensor::u64_vec(LAST_SEED, w.last_seed.into_iter().collect()),
        ]
    }

    fn load_extra_state(&mut self, src: &dyn StateSource) -> Result<()> {
        let mut w = self.norm_window();
        let cur = src.f64s(NORM_CUR, None)?;
        let prev = src.f64s(NORM_PREV, Some(cur.len()))?;
        let seed = src.u64s(LAST_SEED, None)?;
        if cur.len() > w.len || seed.len() > 1 {
            return Err(src.invalid(
                NORM_CUR,
                format!(
                    "{} norms for a window of {}, {} seeds (at most 1)",
                    cur.len(),
                    w.len,
                    seed.len()
                ),
            ));
        }
        (w.cur, w.prev) = (cur.into(), prev.into());
        w.last_seed = seed.first().copied();
        self.set_norm_window(w);
        Ok(())
    }
}

/// Scalar specification of the res_is forward, generic over f32/f64: `(ΔY [n, out], H [n, r])`
/// for `S = (x + x_prev)⊙mask`.
#[allow(clippy::too_many_arguments)]
pub fn forward_ref<R: Real>(
    dm: BranchDims,
    s: f64,
    x: &[R],
    x_prev: &[R],
    a: &[R],
    b: &[R],
    mask: Option<&[R]>,
) -> (Vec<R>, Vec<R>) {
    let sum: Vec<R> = x
        .iter()
        .zip(x_prev)
        .map(|(p, q)| R::from_f64(p.to_f64() + q.to_f64()))
        .collect();
    super::lora::forward_ref(dm, s, &sum, a, b, mask)
}

/// Scalar specification of the res_is backward (docs/METHODS.md#reslora): `(dX_l, dX_{l−1}, dA,
/// dB)`; the two input gradients are the same `D'(dH·A)`.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn backward_ref<R: Real>(
    dm: BranchDims,
    s: f64,
    x: &[R],
    x_prev: &[R],
    a: &[R],
    b: &[R],
    mask: Option<&[R]>,
    g: &[R],
) -> (Vec<R>, Vec<R>, Vec<R>, Vec<R>) {
    let sum: Vec<R> = x
        .iter()
        .zip(x_prev)
        .map(|(p, q)| R::from_f64(p.to_f64() + q.to_f64()))
        .collect();
    let (dv, da, db) = super::lora::backward_ref(dm, s, &sum, a, b, mask, g);
    (dv.clone(), dv, da, db)
}
