//! AdamW as PyTorch's `torch.optim.AdamW` (single-tensor CPU path), with its state in pages of
//! f32 or 8-bit blockwise moments, in RAM or on disk (paged.rs, state8bit.rs).
//!
//! For step `t` (1-based), learning rate `lr` (already times the group's `lr_scale`), decay `wd`:
//!
//! ```text
//! p ← p · (1 − lr·wd)                       decoupled weight decay, before the Adam update
//! m ← m + (1 − β1)·(g − m)                  torch's `lerp_` (= β1·m + (1 − β1)·g)
//! v ← β2·v + (1 − β2)·g·g
//! p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
//! ```
//!
//! which is `m̂ = m/(1−β1^t)`, `v̂ = v/(1−β2^t)`, `p ← p − lr·m̂/(√v̂ + ε)` (PyTorch docs,
//! `torch.optim.AdamW`; the code is `torch/optim/adam.py::_single_tensor_adam` with
//! `decoupled_weight_decay=True`). The scalars `1 − lr·wd`, `lr/(1−β1^t)` and `√(1−β2^t)` are
//! computed in f64 (as Python does) and rounded to f32; the per-element arithmetic is f32 in
//! PyTorch's operation order (`addcmul`: `v + ((1−β2)·g)·g`, `addcdiv`: `p + ((−step)·m)/denom`).
//! Bit-identity with torch is not claimed (its vectorised CPU loops may contract to FMA).
//! Defaults: β = (0.9, 0.999), ε = 1e-8, weight decay 0.01 (set per [`super::ParamGroup`]).
//!
//! Non-finite gradients are not skipped (PyTorch does not skip them either); the trainer checks
//! the gradient norm before stepping.

use std::io::{Read, Write};

use super::paged::{Page, PageKind, StateStorage, StateStore, layout};
use super::state8bit::{self, DynamicMaps, MIN_8BIT_NUMEL};
use super::{ParamGroup, ParamId, ParamSpec, StateBits, check_list, check_tensor, validate_specs};
use crate::{Error, Result};

/// AdamW hyperparameters shared by all groups (Python floats in PyTorch, so f64 here).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// The f32 scalars of one tensor's update at step `t` (what a backend kernel needs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// `1 − lr·wd`.
    pub decay: f32,
    /// `1 − β1` (the `lerp` weight).
    pub one_minus_beta1: f32,
    pub beta2: f32,
    /// `1 − β2`.
    pub one_minus_beta2: f32,
    /// `lr / (1 − β1^t)`.
    pub step_size: f32,
    /// `√(1 − β2^t)`.
    pub bc2_sqrt: f32,
    pub eps: f32,
}

impl AdamWStep {
    /// Scalars for step `t ≥ 1` at learning rate `lr` and decoupled weight decay `weight_decay`.
    pub fn new(cfg: &AdamWConfig, lr: f64, weight_decay: f64, t: u64) -> Self {
        // Python's `beta ** step` is C `pow` (glibc: correctly rounded), not repeated products.
        let t = t as f64;
        let bias_correction1 = 1.0 - cfg.beta1.powf(t);
        let bias_correction2 = 1.0 - cfg.beta2.powf(t);
        Self {
            decay: (1.0 - lr * weight_decay) as f32,
            one_minus_beta1: (1.0 - cfg.beta1) as f32,
            beta2: cfg.beta2 as f32,
            one_minus_beta2: (1.0 - cfg.beta2) as f32,
            step_size: (lr / bias_correction1) as f32,
            bc2_sqrt: bias_correction2.sqrt() as f32,
            eps: cfg.eps as f32,
        }
    }
}

/// One element of the update (shared by the f32 and the 8-bit state).
#[inline(always)]
pub(crate) fn adamw_element(p: &mut f32, g: f32, m: &mut f32, v: &mut f32, k: &AdamWStep) {
    *p *= k.decay;
    *m += k.one_minus_beta1 * (g - *m);
    *v = *v * k.beta2 + k.one_minus_beta2 * g * g;
    let denom = v.sqrt() / k.bc2_sqrt + k.eps;
    *p += -k.step_size * *m / denom;
}

/// The f32-state update of one tensor (scalar reference; lengths validated by the caller).
pub fn adamw_update_f32(
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    k: &AdamWStep,
) {
    debug_assert!(grad.len() == param.len() && m.len() == param.len() && v.len() == param.len());
    for (((p, &g), m), v) in param
        .iter_mut()
        .zip(grad)
        .zip(m.iter_mut())
        .zip(v.iter_mut())
    {
        adamw_element(p, g, m, v, k);
    }
}

/// AdamW over a fixed list of tensors, its state preallocated at construction.
pub struct AdamW {
    cfg: AdamWConfig,
    groups: Vec<ParamGroup>,
    specs: Vec<ParamSpec>,
    pages: Vec<Page>,
    store: StateStore,
    maps: Box<DynamicMaps>,
    bits: StateBits,
    t: u64,
}

/// Checkpoint header: magic, then format version.
const MAGIC: &[u8; 8] = b"ETADAMW\0";
const VERSION: u32 = 1;

impl AdamW {
    /// Builds the optimizer and zeroes its state. With [`StateBits::Eight`], tensors of at least
    /// [`MIN_8BIT_NUMEL`] elements get 8-bit blockwise state, smaller ones f32.
    pub fn new(
        cfg: AdamWConfig,
        groups: &[ParamGroup],
        specs: &[ParamSpec],
        bits: StateBits,
        storage: &StateStorage,
    ) -> Result<Self> {
        validate_specs(groups, specs)?;
        if !(0.0..1.0).contains(&cfg.beta1) || !(0.0..1.0).contains(&cfg.beta2) || cfg.eps < 0.0 {
            return Err(Error::Invalid(format!(
                "AdamW: betas must lie in [0, 1) and eps be >= 0, got β1 = {}, β2 = {}, ε = {}",
                cfg.beta1, cfg.beta2, cfg.eps
            )));
        }
        let kind = |n: usize| match bits {
            StateBits::Eight if n >= MIN_8BIT_NUMEL => PageKind::Eight,
            _ => PageKind::F32,
        };
        let (pages, len) = layout(specs.iter().map(|s| (s.numel, kind(s.numel))))?;
        let store = StateStore::new(storage, len)?;
        let mut opt = Self {
            cfg,
            groups: groups.to_vec(),
            specs: specs.to_vec(),
            pages,
            store,
            maps: Box::new(DynamicMaps::new()),
            bits,
            t: 0,
        };
        for id in 0..opt.pages.len() {
            opt.reset_tensor(id)?;
        }
        Ok(opt)
    }

    /// Sets tensor `id`'s moments to zero (a zero-filled page is zero f32 state; 8-bit codes
    /// need the code of level 0).
    fn reset_tensor(&mut self, id: ParamId) -> Result<()> {
        let page = self.pages[id];
        if page.kind == PageKind::Eight {
            let bytes = self.store.page_mut(page.offset, page.state_bytes());
            let (absmax, q_m, q_v) = split_8bit(bytes, page.numel);
            state8bit::reset_8bit(&self.maps, absmax, q_m, q_v);
            self.store.release(page.offset, page.state_bytes())?;
        }
        Ok(())
    }

    /// Completed steps.
    pub fn step_count(&self) -> u64 {
        self.t
    }

    /// The width the state was asked for.
    pub fn bits(&self) -> StateBits {
        self.bits
    }

    /// Starts the next step; returns its 1-based number `t`. Then call [`Self::update`] once for
    /// every tensor.
    pub fn begin_step(&mut self) -> u64 {
        self.t += 1;
        self.t
    }

    /// Updates tensor `id` in place at the current step, touching only its page of state.
    pub fn update(&mut self, id: ParamId, param: &mut [f32], grad: &[f32], lr: f32) -> Result<()> {
        let spec = check_tensor(&self.specs, id, param.len(), grad.len())?;
        if self.t == 0 {
            return Err(Error::Invalid(
                "AdamW: update called before begin_step".into(),
            ));
        }
        let group = self.groups[spec.group];
        let k = AdamWStep::new(
            &self.cfg,
            lr as f64 * group.lr_scale as f64,
            group.weight_decay as f64,
            self.t,
        );
        let page = self.pages[id];
        let bytes = self.store.page_mut(page.offset, page.state_bytes());
        match page.kind {
            PageKind::F32 => {
                let (m, v) = split_f32(bytes, page.numel);
                adamw_update_f32(param, grad, m, v, &k);
            }
            PageKind::Eight => {
                let (absmax, q_m, q_v) = split_8bit(bytes, page.numel);
                state8bit::adamw_update_8bit(param, grad, absmax, q_m, q_v, &k, &self.maps);
            }
        }
        // On disk, the page goes back to the file before the next tensor's comes in.
        self.store.release(page.offset, page.state_bytes())
    }

    /// Tensor `id`'s state bytes (f32 `m` then `v`, or the 8-bit codes and scales).
    pub fn tensor_state(&self, id: ParamId) -> Option<&[u8]> {
        let page = self.pages.get(id)?;
        self.store
            .bytes()
            .get(page.offset..page.offset + page.state_bytes())
    }

    /// One full step: `begin_step` and `update` of every tensor, `params[id]` with `grads[id]`.
    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], lr: f32) -> Result<()> {
        check_list(self.specs.len(), params.len(), grads.len())?;
        for (id, (p, g)) in params.iter().zip(grads).enumerate() {
            check_tensor(&self.specs, id, p.len(), g.len())?;
        }
        self.begin_step();
        for (id, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            self.update(id, p, g, lr)?;
        }
        Ok(())
    }

    /// Bytes of moment state (f32: 8 per element; 8-bit: 2 per element + 8 per 256).
    pub fn state_bytes(&self) -> usize {
        self.pages.iter().map(Page::state_bytes).sum()
    }

    /// Bytes the backing store holds (state plus page alignment).
    pub fn store_bytes(&self) -> usize {
        self.store.len()
    }

    /// The disk map's address and length (residency tests); `None` in RAM.
    #[cfg(test)]
    pub(crate) fn store_map(&self) -> Option<(usize, usize)> {
        self.store.disk_map()
    }

    /// Whether tensor `id` keeps 8-bit state.
    pub fn is_8bit(&self, id: ParamId) -> bool {
        self.pages
            .get(id)
            .is_some_and(|p| p.kind == PageKind::Eight)
    }

    /// Copies tensor `id`'s moments out as f32 (dequantized for 8-bit state).
    pub fn moments(&self, id: ParamId, m: &mut [f32], v: &mut [f32]) -> Result<()> {
        let page = *self.pages.get(id).ok_or_else(|| {
            Error::Invalid(format!(
                "AdamW: tensor id {id} out of range ({} tensors)",
                self.pages.len()
            ))
        })?;
        if m.len() != page.numel || v.len() != page.numel {
            return Err(Error::Invalid(format!(
                "AdamW: tensor {id} has {} elements, moment buffers {} and {}",
                page.numel,
                m.len(),
                v.len()
            )));
        }
        let bytes = &self.store.bytes()[page.offset..page.offset + page.state_bytes()];
        let n = page.numel;
        match page.kind {
            PageKind::F32 => {
                let all: &[f32] = bytemuck::cast_slice(bytes);
                m.copy_from_slice(&all[..n]);
                v.copy_from_slice(&all[n..]);
            }
            PageKind::Eight => {
                let nb = state8bit::n_blocks(n);
                let (absmax, codes) = bytes.split_at(8 * nb);
                let absmax: &[f32] = bytemuck::cast_slice(absmax);
                let (q_m, q_v) = codes.split_at(n);
                state8bit::dequantize_ref(&self.maps.signed, q_m, &absmax[..nb], m);
                state8bit::dequantize_ref(&self.maps.unsigned, q_v, &absmax[nb..], v);
            }
        }
        self.store.release(page.offset, page.state_bytes())
    }

    /// Writes the step count and all state (for a checkpoint). Hyperparameters and groups are
    /// not written: they come from the run's configuration.
    ///
    /// Format (little-endian): `"ETADAMW\0"`, u32 version, u32 state bits (32 | 8), u64 step,
    /// u64 tensor count, per tensor u64 element count and u64 page kind (0 f32, 1 8-bit), u64
    /// store length, then the store's bytes.
    pub fn save(&self, w: &mut impl Write) -> Result<()> {
        let io = |e| Error::io("<AdamW state>", e);
        w.write_all(&self.header()).map_err(io)?;
        for window in self.windows() {
            w.write_all(&self.store.bytes()[window.clone()])
                .map_err(io)?;
            self.store.release(window.start, window.len())?;
        }
        Ok(())
    }

    /// The store in windows of the largest page's size: checkpoints read and write the state
    /// one window at a time, so on disk no more of it is resident than during a step.
    fn windows(&self) -> impl Iterator<Item = std::ops::Range<usize>> + use<> {
        let len = self.store.len();
        let window = self
            .pages
            .iter()
            .map(|p| super::paged::page_round(p.state_bytes()))
            .max()
            .unwrap_or(0)
            .max(super::paged::PAGE_ALIGN);
        (0..len)
            .step_by(window)
            .map(move |start| start..(start + window).min(len))
    }

    /// Reads what [`Self::save`] wrote into this optimizer, which must have been built with the
    /// same tensor list and state bits (storage may differ: RAM and disk pages are the same).
    /// A header mismatch changes nothing; a read error part-way leaves the state unspecified
    /// (load again or rebuild).
    pub fn load(&mut self, r: &mut impl Read) -> Result<()> {
        let io = |e| Error::io("<AdamW state>", e);
        let expected = self.header();
        let mut header = vec![0u8; expected.len()];
        r.read_exact(&mut header).map_err(io)?;
        // The step count (bytes 16..24) is the one field allowed to differ.
        let mut masked = header.clone();
        masked[16..24].copy_from_slice(&expected[16..24]);
        if masked != expected {
            return Err(Error::Invalid(
                "AdamW checkpoint: header does not match this optimizer (different tensors, state bits or format)".into(),
            ));
        }
        let t = u64::from_le_bytes(header[16..24].try_into().unwrap_or_default());
        for window in self.windows() {
            r.read_exact(&mut self.store.bytes_mut()[window.clone()])
                .map_err(io)?;
            self.store.release(window.start, window.len())?;
        }
        self.t = t;
        Ok(())
    }

    fn header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(40 + 16 * self.pages.len());
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        let bits: u32 = match self.bits {
            StateBits::F32 => 32,
            StateBits::Eight => 8,
        };
        h.extend_from_slice(&bits.to_le_bytes());
        h.extend_from_slice(&self.t.to_le_bytes());
        h.extend_from_slice(&(self.pages.len() as u64).to_le_bytes());
        for p in &self.pages {
            h.extend_from_slice(&(p.numel as u64).to_le_bytes());
            let kind: u64 = match p.kind {
                PageKind::F32 => 0,
                PageKind::Eight => 1,
            };
            h.extend_from_slice(&kind.to_le_bytes());
        }
        h.extend_from_slice(&(self.store.len() as u64).to_le_bytes());
        h
    }
}

/// An f32 page as `(m, v)`, `n` elements each.
fn split_f32(bytes: &mut [u8], n: usize) -> (&mut [f32], &mut [f32]) {
    let all: &mut [f32] = bytemuck::cast_slice_mut(bytes);
    all.split_at_mut(n)
}

/// An 8-bit page as `(absmax [2·nb], q_m [n], q_v [n])`.
fn split_8bit(bytes: &mut [u8], n: usize) -> (&mut [f32], &mut [u8], &mut [u8]) {
    let nb = state8bit::n_blocks(n);
    let (absmax, codes) = bytes.split_at_mut(8 * nb);
    let (q_m, q_v) = codes.split_at_mut(n);
    (bytemuck::cast_slice_mut(absmax), q_m, q_v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch's AdamW on one scalar, in f64 from the documented algorithm (not our code).
    fn torch_adamw_f64(p0: f64, grads: &[f64], lr: f64, wd: f64) -> Vec<f64> {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
        let mut out = Vec::new();
        for (i, &g) in grads.iter().enumerate() {
            let t = (i + 1) as i32;
            p -= lr * wd * p;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let m_hat = m / (1.0 - b1.powi(t));
            let v_hat = v / (1.0 - b2.powi(t));
            p -= lr * m_hat / (v_hat.sqrt() + eps);
            out.push(p);
        }
        out
    }

    #[test]
    fn scalar_steps_match_the_published_rule() {
        let grads = [0.5, -0.3, 0.2, 1e-3, 0.0, -2.0];
        for (lr, wd) in [(0.1, 0.01), (1e-3, 0.0), (0.05, 0.1)] {
            let expected = torch_adamw_f64(1.5, &grads, lr, wd);
            let groups = [ParamGroup {
                lr_scale: 1.0,
                weight_decay: wd as f32,
            }];
            let specs = [ParamSpec { numel: 1, group: 0 }];
            let mut opt = AdamW::new(
                AdamWConfig::default(),
                &groups,
                &specs,
                StateBits::F32,
                &StateStorage::Ram,
            )
            .unwrap();
            let mut p = [1.5f32];
            for (g, e) in grads.iter().zip(&expected) {
                opt.step(&mut [&mut p], &[&[*g as f32]], lr as f32).unwrap();
                assert!(
                    ((p[0] as f64) - e).abs() <= 1e-6 * e.abs().max(1.0),
                    "{} vs {e}",
                    p[0]
                );
            }
            assert_eq!(opt.step_count(), grads.len() as u64);
        }
    }

    #[test]
    fn first_step_moves_by_lr_times_sign() {
        // Known AdamW property: at t = 1, m̂ = g and √v̂ = |g|, so p moves by lr·g/(|g| + ε).
        let specs = [ParamSpec { numel: 3, group: 0 }];
        let groups = [ParamGroup::new(0.0)];
        let mut opt = AdamW::new(
            AdamWConfig::default(),
            &groups,
            &specs,
            StateBits::F32,
            &StateStorage::Ram,
        )
        .unwrap();
        let mut p = [0.0f32; 3];
        opt.step(&mut [&mut p], &[&[3.0, -0.01, 0.0]], 0.01)
            .unwrap();
        assert!((p[0] + 0.01).abs() < 1e-7 && (p[1] - 0.01).abs() < 1e-7 && p[2] == 0.0);
    }

    #[test]
    fn group_scale_multiplies_lr() {
        // LoRA+: B at λ·lr moves exactly like a plain tensor stepped at λ·lr.
        let groups = super::super::lora_plus_groups(16.0, 0.0);
        let specs = [
            ParamSpec { numel: 2, group: 0 },
            ParamSpec { numel: 2, group: 1 },
        ];
        let mut opt = AdamW::new(
            AdamWConfig::default(),
            &groups,
            &specs,
            StateBits::F32,
            &StateStorage::Ram,
        )
        .unwrap();
        let mut a = [1.0f32, 2.0];
        let mut b = [1.0f32, 2.0];
        let g = [0.3f32, -0.7];
        let mut single = AdamW::new(
            AdamWConfig::default(),
            &[ParamGroup::new(0.0)],
            &specs[..1],
            StateBits::F32,
            &StateStorage::Ram,
        )
        .unwrap();
        let mut b_ref = [1.0f32, 2.0];
        for _ in 0..3 {
            opt.step(&mut [&mut a, &mut b], &[&g, &g], 1e-3).unwrap();
            single.step(&mut [&mut b_ref], &[&g], 16e-3).unwrap();
        }
        assert_eq!(b, b_ref);
        assert!((1.0 - a[0]).abs() * 10.0 < (1.0 - b[0]).abs());
    }

    #[test]
    fn bad_lengths_are_errors() {
        let specs = [ParamSpec { numel: 2, group: 0 }];
        let groups = [ParamGroup::new(0.0)];
        let mut opt = AdamW::new(
            AdamWConfig::default(),
            &groups,
            &specs,
            StateBits::F32,
            &StateStorage::Ram,
        )
        .unwrap();
        let mut p = [0.0f32; 3];
        assert!(opt.step(&mut [&mut p], &[&[0.0; 3]], 0.1).is_err());
        assert!(
            opt.update(0, &mut p[..2], &[0.0; 2], 0.1).is_err(),
            "update before begin_step"
        );
        assert!(
            AdamW::new(
                AdamWConfig::default(),
                &groups,
                &[ParamSpec { numel: 1, group: 1 }],
                StateBits::F32,
                &StateStorage::Ram
            )
            .is_err()
        );
    }
}
