//! The adapters of a whole model: one optional [`Adapter`] per (layer, [`Target`]), the unit the
//! trainer trains, checkpoints save, and generation applies.
//!
//! Slots are indexed `layer · 7 + target` in [`Target::ALL`] order. Every tensor has a stable
//! name, `blk.{layer}.{gguf stem}.{param}` (e.g. `blk.3.attn_q.lora_A`), used by our checkpoint
//! file and by the optimizer's parameter order (slot order, then [`Adapter::params`] order).
//!
//! The set knows a model only through [`LinearShapes`] (its layer count and each projection's
//! features), so it sits below the model that applies it; building the adapters of a training
//! method (`build_adapters`) is training's part and lives in `edgetune-train`'s `train::adapter_set`.

use std::path::Path;

use super::param_buf::ParamPager;
use super::{Adapter, Lora, LoraConfig, ParamInfo, Target};
use crate::{Error, Result};

/// What the set needs of a model: how many blocks it has and the `(in, out)` features of each
/// adapted projection (the same in every block).
pub trait LinearShapes {
    fn n_layer(&self) -> usize;
    fn linear_shape(&self, target: Target) -> (usize, usize);
}

/// Position of `target` in [`Target::ALL`].
pub fn target_index(target: Target) -> usize {
    Target::ALL.iter().position(|&t| t == target).unwrap_or(0)
}

/// The adapters of every adapted linear of a model.
pub struct AdapterSet {
    lora: LoraConfig,
    n_layer: usize,
    /// `n_layer × 7`, `None` where the linear is not adapted.
    slots: Vec<Option<Box<dyn Adapter>>>,
    /// Where the trainable tensors go when they live in a file ([`AdapterSet::page_params`]);
    /// adapters inserted later are paged as they come.
    pager: Option<ParamPager>,
}

impl std::fmt::Debug for AdapterSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterSet")
            .field("lora", &self.lora)
            .field("n_layer", &self.n_layer)
            .field("n_adapters", &self.len())
            .finish()
    }
}

impl AdapterSet {
    /// Fresh LoRA adapters (PEFT init) on `cfg.targets` of every layer. Each adapter's init seed
    /// is derived from `seed`, its layer and its target, so every slot differs and a run is
    /// reproducible from `seed` alone.
    pub fn new_lora<M: LinearShapes + ?Sized>(
        model: &M,
        cfg: &LoraConfig,
        seed: u64,
    ) -> Result<AdapterSet> {
        cfg.validate()?;
        if let Some(r) = cfg.layers {
            r.check(model.n_layer())?;
        }
        let mut set = AdapterSet::empty(model.n_layer(), cfg.clone());
        for layer in (0..model.n_layer()).filter(|&l| cfg.adapts(l)) {
            for &target in &cfg.targets {
                let (fan_in, fan_out) = model.linear_shape(target);
                let s = slot_seed(seed, layer, target);
                set.insert(layer, target, Box::new(Lora::new(fan_in, fan_out, cfg, s)?))?;
            }
        }
        Ok(set)
    }

    /// A set with no adapters yet, for `n_layer` layers; fill it with [`AdapterSet::insert`].
    pub fn empty(n_layer: usize, lora: LoraConfig) -> AdapterSet {
        AdapterSet {
            lora,
            n_layer,
            slots: (0..n_layer * Target::ALL.len()).map(|_| None).collect(),
            pager: None,
        }
    }

    /// Puts `adapter` on `target` of `layer` (replacing what was there).
    pub fn insert(
        &mut self,
        layer: usize,
        target: Target,
        adapter: Box<dyn Adapter>,
    ) -> Result<()> {
        if layer >= self.n_layer {
            return Err(Error::Invalid(format!(
                "adapter for layer {layer}, the model has {} layers",
                self.n_layer
            )));
        }
        let mut adapter = adapter;
        if let Some(pager) = &mut self.pager {
            page_adapter(pager, adapter.as_mut())?;
        }
        self.slots[layer * Target::ALL.len() + target_index(target)] = Some(adapter);
        Ok(())
    }

    /// The LoRA hyper-parameters the set was made with.
    pub fn lora_config(&self) -> &LoraConfig {
        &self.lora
    }

    pub fn n_layer(&self) -> usize {
        self.n_layer
    }

    /// The lowest layer with an adapter (`None` for an empty set): the backward of a step stops
    /// there, since nothing below it is trained.
    pub fn first_adapted_layer(&self) -> Option<usize> {
        self.slots
            .iter()
            .position(Option::is_some)
            .map(|i| i / Target::ALL.len())
    }

    /// Number of adapted linears.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, layer: usize, target: Target) -> Option<&dyn Adapter> {
        self.slots
            .get(layer * Target::ALL.len() + target_index(target))?
            .as_deref()
    }

    pub fn get_mut(
        &mut self,
        layer: usize,
        target: Target,
    ) -> Option<&mut (dyn Adapter + 'static)> {
        self.slots
            .get_mut(layer * Target::ALL.len() + target_index(target))?
            .as_deref_mut()
    }

    /// The adapted linears in slot order (layer, then [`Target::ALL`] order).
    pub fn iter(&self) -> impl Iterator<Item = (usize, Target, &dyn Adapter)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let t = Target::ALL[i % Target::ALL.len()];
            s.as_deref().map(|a| (i / Target::ALL.len(), t, a))
        })
    }

    /// Same as [`AdapterSet::iter`], writable.
    pub fn iter_mut(
        &mut self,
    ) -> impl Iterator<Item = (usize, Target, &mut (dyn Adapter + 'static))> {
        self.slots.iter_mut().enumerate().filter_map(|(i, s)| {
            let t = Target::ALL[i % Target::ALL.len()];
            s.as_deref_mut().map(|a| (i / Target::ALL.len(), t, a))
        })
    }

    /// Σ trainable values over all adapters.
    pub fn n_params(&self) -> usize {
        self.iter().map(|(_, _, a)| a.n_params()).sum()
    }

    /// Every trainable tensor, in optimizer order: (name, info).
    pub fn param_infos(&self) -> Vec<(String, ParamInfo)> {
        let mut out = Vec::new();
        for (layer, target, a) in self.iter() {
            for p in a.params() {
                out.push((tensor_name(layer, target, p.name), p));
            }
        }
        out
    }

    /// Moves every trainable tensor into one file created in `dir` (`train --adapter-weights
    /// disk`, adapters/param_buf.rs), and every adapter inserted later too: from here on a
    /// tensor is resident only between its first touch and the next
    /// [`AdapterSet::release_layer`] / [`AdapterSet::release_all`]. Call it on an empty set to
    /// page adapters as they are built (never all in RAM at once). Returns the file's size so
    /// far in bytes (the file is unlinked on Unix: it goes with the process).
    pub fn page_params(&mut self, dir: &Path) -> Result<u64> {
        let mut pager = match self.pager.take() {
            Some(p) => p,
            None => ParamPager::create(dir)?,
        };
        for (_, _, a) in self.iter_mut() {
            page_adapter(&mut pager, a)?;
        }
        let len = pager.len();
        self.pager = Some(pager);
        Ok(len)
    }

    /// Whether the trainable tensors live in a file ([`AdapterSet::page_params`]).
    pub fn params_paged(&self) -> bool {
        self.pager.is_some()
    }

    /// Done with `layer`'s adapters for now: paged tensors are written back and dropped from
    /// memory. Nothing happens in RAM; allocates nothing (called per layer in a step).
    pub fn release_layer(&self, layer: usize) -> Result<()> {
        if self.pager.is_none() {
            return Ok(());
        }
        for target in Target::ALL {
            if let Some(a) = self.get(layer, target) {
                a.release_params()?;
            }
        }
        Ok(())
    }

    /// [`AdapterSet::release_layer`] for every layer (after a checkpoint save or an
    /// evaluation, which read them all).
    pub fn release_all(&self) -> Result<()> {
        (0..self.n_layer).try_for_each(|l| self.release_layer(l))
    }

    /// Checks that every adapter fits the linear it sits on in `model` (layer count, in and out
    /// features), naming the first that does not.
    pub fn check_fits<M: LinearShapes + ?Sized>(&self, model: &M) -> Result<()> {
        if self.n_layer != model.n_layer() {
            return Err(Error::Invalid(format!(
                "adapter is for {} layers, the model has {}",
                self.n_layer,
                model.n_layer()
            )));
        }
        for (layer, target, a) in self.iter() {
            let (fan_in, fan_out) = model.linear_shape(target);
            if (a.in_features(), a.out_features()) != (fan_in, fan_out) {
                return Err(Error::Invalid(format!(
                    "adapter blk.{layer}.{}: [{} → {}] does not fit the model's [{fan_in} → {fan_out}]",
                    target.gguf_stem(),
                    a.in_features(),
                    a.out_features()
                )));
            }
        }
        Ok(())
    }
}

/// The name of tensor `param` of the adapter on `target` of `layer`: `blk.3.attn_q.lora_A`.
pub fn tensor_name(layer: usize, target: Target, param: &str) -> String {
    format!("blk.{layer}.{}.{param}", target.gguf_stem())
}

/// The init seed of one slot: SplitMix-style mixing of (seed, layer, target).
pub fn slot_seed(seed: u64, layer: usize, target: Target) -> u64 {
    let mut z = seed
        ^ (layer as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ ((target_index(target) as u64 + 1) << 56);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Moves every tensor of `a` into `pager`'s file (already paged ones stay where they are).
fn page_adapter(pager: &mut ParamPager, a: &mut dyn Adapter) -> Result<()> {
    let mut i = 0;
    while let Some(b) = a.param_buf_mut(i) {
        pager.page(b)?;
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LlamaConfig;

    fn cfg() -> LlamaConfig {
        crate::testmodel::TINY.llama_config()
    }

    #[test]
    fn new_lora_covers_the_targets_with_the_right_shapes() {
        let m = cfg();
        let lc = LoraConfig {
            rank: 2,
            targets: vec![Target::AttnQ, Target::FfnDown],
            ..LoraConfig::default()
        };
        let set = AdapterSet::new_lora(&m, &lc, 7).unwrap();
        assert_eq!(set.len(), 2 * m.n_layer);
        set.check_fits(&m).unwrap();
        let names: Vec<String> = set.param_infos().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names[0], "blk.0.attn_q.lora_A");
        assert_eq!(names[3], "blk.0.ffn_down.lora_B");
        let expect: usize = 2 * (m.dim + m.q_dim()) + 2 * (m.ffn + m.dim);
        assert_eq!(set.n_params(), expect * m.n_layer);
        // Different slots get different A.
        let a0 = set.get(0, Target::AttnQ).unwrap().param(0).unwrap();
        let a1 = set.get(1, Target::AttnQ).unwrap().param(0).unwrap();
        assert_ne!(a0, a1);
        assert!(set.get(0, Target::AttnK).is_none());
    }

    #[test]
    fn check_fits_names_the_mismatch() {
        let m = cfg();
        let set = AdapterSet::new_lora(&m, &LoraConfig::default(), 1).unwrap();
        let mut other = m.clone();
        other.ffn += 1;
        let e = set.check_fits(&other).unwrap_err().to_string();
        assert!(
            e.contains("ffn_gate") && e.contains(&format!("{}", other.ffn)),
            "{e}"
        );
    }
}
