//! ResLoRA res_is plumbing of the training step (docs/METHODS.md#reslora): layer `l`'s branch on
//! target `i` reads the same target's module input of layer `l − 1`, and its input gradient
//! goes to that module input too. Under gradient checkpointing layer `l − 1`'s activations are
//! gone when layer `l` is recomputed, so the step keeps, for every target that carries a
//! ResLoRA adapter in some layer (any adapter whose [`Adapter::prev_layer_input`] is `Some`;
//! the step calls its [`PrevLayerInput`](edgetune_core::adapters::PrevLayerInput) passes):
//! - `inputs[i]`: the module input `[T, in_i]` of EVERY layer for the whole step
//!   (`[n_layer, T, in_i]`, written by the forward, read by the recompute and the backward);
//! - `pending[i]`: `[T, in_i]`, the gradient layer `l`'s backward leaves for layer `l − 1`'s
//!   module input, added to it when the backward reaches layer `l − 1`.
//!
//! Extra memory (host, allocated once in `TrainStep::new`, outside the arena plan):
//! `4·T·(n_layer + 1)·Σ in_i` bytes over the targets with ResLoRA ([`store_bytes`]); for
//! Llama-8B (32 layers, all 7 targets, Σ in = 6·4096 + 14336) at T = 512 that is 2.6 GB, for
//! q/v only 0.55 GB. Module inputs: `xn` (q, k, v), `att` (o), `fn` (gate, up), `sw` (down).

use super::adapter_set::AdapterSet;
use super::step::Phase;
use edgetune_core::adapters::{Adapter, Pass};
use edgetune_core::memory::arena::Arena;
use edgetune_core::memory::plan::BufferId;
use edgetune_core::{Error, Result};

/// The per-step stores of the targets with ResLoRA (module doc).
#[derive(Debug)]
pub struct ResStore {
    tokens: usize,
    /// `in_i` of each target with ResLoRA in some layer, 0 otherwise.
    width: [usize; 7],
    inputs: [Vec<f32>; 7],
    pending: [Vec<f32>; 7],
}

/// Bytes [`ResStore::new`] allocates for `set` at `tokens` per micro-batch.
pub fn store_bytes(set: &AdapterSet, n_layer: usize, tokens: usize) -> usize {
    widths(set)
        .iter()
        .map(|&w| 4 * tokens * (n_layer + 1) * w)
        .sum()
}

fn widths(set: &AdapterSet) -> [usize; 7] {
    let mut w = [0; 7];
    for (_, target, a) in set.iter() {
        if a.prev_layer_input().is_some() {
            w[super::adapter_set::target_index(target)] = a.in_features();
        }
    }
    w
}

impl ResStore {
    /// `None` when `set` has no ResLoRA adapter.
    pub fn new(set: &AdapterSet, n_layer: usize, tokens: usize) -> Option<ResStore> {
        let width = widths(set);
        if width.iter().all(|&w| w == 0) {
            return None;
        }
        Some(ResStore {
            tokens,
            width,
            inputs: width.map(|w| vec![0.0; n_layer * tokens * w]),
            pending: width.map(|w| vec![0.0; tokens * w]),
        })
    }

    /// Zeroes the pending gradients (before a micro-batch's backward).
    pub fn clear_pending(&mut self) {
        self.pending.iter_mut().for_each(|p| p.fill(0.0));
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * self
            .inputs
            .iter()
            .chain(&self.pending)
            .map(Vec::len)
            .sum::<usize>()
    }

    fn layer(&self, i: usize, l: usize) -> &[f32] {
        let n = self.tokens * self.width[i];
        &self.inputs[i][l * n..(l + 1) * n]
    }
}

/// The forward of target `i`'s adapter in layer `l`: stores the module input `x` (forward
/// phase) and runs a ResLoRA adapter with the previous layer's input; any other adapter (or
/// none) goes to `plain`. Returns `true` when it handled the adapter.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    store: Option<&mut ResStore>,
    arena: &mut Arena,
    step: u32,
    a: Option<&dyn Adapter>,
    pass: Pass,
    ids: [BufferId; 4],
    (l, i, phase): (usize, usize, Phase),
) -> Result<bool> {
    let Some(store) = store else { return Ok(false) };
    let w = store.width[i];
    if w == 0 {
        return Ok(false);
    }
    let n = store.tokens * w;
    if pass.n != store.tokens {
        return Err(Error::Invalid(format!(
            "ResLoRA store planned for {} tokens, pass of {}",
            store.tokens, pass.n
        )));
    }
    let [x, y, h, s] = arena.views_mut_at(step, ids)?;
    if x.len() < n {
        return Err(Error::Invalid(format!(
            "ResLoRA: module input of {} values, expected {n}",
            x.len()
        )));
    }
    if phase == Phase::Forward {
        store.inputs[i][l * n..(l + 1) * n].copy_from_slice(&x[..n]);
    }
    let Some((a, r)) = a.and_then(|a| Some((a, a.prev_layer_input()?))) else {
        return Ok(false);
    };
    let (hl, sl) = (a.saved_len(pass.n), a.scratch_len(pass.n));
    if hl > h.len() || sl > s.len() {
        return Err(Error::Invalid(format!(
            "training step: ResLoRA workspace ({hl} saved, {sl} scratch) exceeds the plan's ({}, {})",
            h.len(),
            s.len()
        )));
    }
    let x_prev = (l > 0).then(|| store.layer(i, l - 1));
    r.forward_res(pass, &x[..n], x_prev, y, &mut h[..hl], &mut s[..sl])?;
    Ok(true)
}

/// Before target `i`'s adapter backward in layer `l`: adds the gradient layer `l + 1` left for
/// this module input into `dx` and clears it. A no-op for targets without ResLoRA.
pub(super) fn take_pending(
    store: Option<&mut ResStore>,
    arena: &mut Arena,
    step: u32,
    dx: BufferId,
    i: usize,
) -> Result<()> {
    let Some(store) = store else { return Ok(()) };
    if store.width[i] == 0 {
        return Ok(());
    }
    let [dx] = arena.views_mut_at(step, [dx])?;
    let p = &mut store.pending[i];
    dx.iter_mut().zip(p.iter()).for_each(|(d, &v)| *d += v);
    p.fill(0.0);
    Ok(())
}

/// The backward of a ResLoRA adapter on target `i` of layer `l`: `dx += V` and the pending
/// gradient of layer `l − 1` gets `V` (layer 0: `dx += 2V`); the parameter gradients go into
/// `grad` (`first`) or are added through `tmp`. `ids` = `[x, g, h, scratch, dx, grad, tmp]`.
/// Returns `false` (nothing done) when the adapter is not ResLoRA.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    store: Option<&mut ResStore>,
    arena: &mut Arena,
    step: u32,
    a: Option<&dyn Adapter>,
    pass: Pass,
    ids: [BufferId; 7],
    n_params: usize,
    (l, i, first): (usize, usize, bool),
) -> Result<bool> {
    let (Some(store), Some((a, r))) = (store, a.and_then(|a| Some((a, a.prev_layer_input()?))))
    else {
        return Ok(false);
    };
    let n = store.tokens * store.width[i];
    let [x, g, h, s, dx, grad, tmp] = arena.views_mut_at(step, ids)?;
    let (hl, sl, np) = (a.saved_len(pass.n), a.scratch_len(pass.n), n_params);
    if hl > h.len() || sl > s.len() || np > grad.len() || (!first && np > tmp.len()) || n == 0 {
        return Err(Error::Invalid(format!(
            "training step: ResLoRA backward needs {hl} saved, {sl} scratch, {np} gradient \
             values; the plan has {}, {}, {}",
            h.len(),
            s.len(),
            grad.len()
        )));
    }
    let ResStore {
        inputs,
        pending,
        width,
        tokens,
    } = store;
    let prev = (l > 0).then(|| &inputs[i][(l - 1) * n..l * n]);
    let dst = if first {
        &mut grad[..np]
    } else {
        &mut tmp[..np]
    };
    let pend = prev.map(|_| &mut pending[i][..]);
    debug_assert_eq!(*tokens * width[i], n);
    r.backward_res(
        pass,
        &x[..n],
        prev,
        g,
        &h[..hl],
        &mut s[..sl],
        &mut dx[..n],
        pend,
        dst,
    )?;
    if !first {
        edgetune_core::optim::accum::add_scaled(&mut grad[..np], &tmp[..np], 1.0);
    }
    Ok(true)
}
