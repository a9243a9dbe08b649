//! Each method's behaviour behind one trait, [`MethodImpl`]: building its adapter on one
//! linear ([`MethodImpl::build`]), what that adapter costs, from the shapes alone
//! ([`MethodImpl::cost`], [`MethodImpl::method_wide_bytes`]), and what it does around the
//! training step ([`MethodImpl::hooks`]: a [`StepHooks`] object, [`hooks`] for AdaLoRA and
//! layer importance). The registry entry of a method
//! ([`super::method_registry::MethodSpec::imp`]) points at its implementation, so
//! `build_adapters`, the memory planner and `MethodHooks` never match on the method.
//!
//! The implementations live here rather than beside the adapters in `crates/edgetune-core/src/adapters/` because
//! they read the run's settings ([`MethodOptions`], the run length, the mapped base weights),
//! which the adapters layer below does not know. This file holds the trait and the methods
//! whose adapter is a LoRA pair with nothing else to set up (the LoRA family, layer
//! importance, IR-QLoRA's IEC, ResLoRA); [`base_readers`] the ones that read `Ŵ` (DoRA, HiRA,
//! OLoRA / PiSSA); [`scheduled`] the ones with a schedule or routing across steps (AdaLoRA,
//! DyLoRA, MT-LoRA).
//!
//! Costs per linear `[out, in]`, rank `r` (`r0` for AdaLoRA), `drop` = dropout on:
//!
//! | method | saved / token | scratch / token | tensors | extra bytes |
//! |---|---|---|---|---|
//! | LoRA family, DyLoRA (`r_max`) | `r` | `r + drop·in` | `r·in`, `out·r` | 0 |
//! | IEC (IR-QLoRA) | `r` | `3r + drop·in` | `r·in`, `out·r`, 1, 1 | 0 |
//! | ResLoRA | `r` | `in + r` | `r·in`, `out·r` | `16·window` |
//! | OLoRA, PiSSA | `r` | `r + drop·in` | `r·in`, `out·r` | `4·(r·in + out·r)` (`A0`, `B0`) |
//! | DoRA | `r + out` | `out + r + in + drop·in` | `r·in`, `out·r`, `out` | base copy + `8·out` + `4·(r·out + r² + 2·out)` |
//! | HiRA | 0 | `min(64, out) + drop·2·in` | `r·in`, `out·r` | base copy + `4·3·min(64, out)·in` |
//! | AdaLoRA | `r0` | `r0 + drop·in` | `r0·in`, `out·r0`, `r0` | `8·r0·(in + out + 1)` + `4·r0²` + `r0` |
//! | MT-LoRA (`T` tasks, `r_t`) | `r + r_t` | `r + r_t + drop·in` | `r·in`, `out·r`, then `r_t·in`, `out·r_t` per task | 0 |
//!
//! The base copy is the tensor's quantized bytes (`BaseCopy::Quant`) or `4·out·in`
//! (`BaseCopy::Dense`). Each formula restates the adapter's own `workspace()` / `params()` /
//! `extra_bytes()`; tests/train/methods.rs checks them against built adapters for every method.

pub mod base_readers;
pub mod hooks;
pub mod scheduled;

use super::adapter_set::AdapterSet;
use super::method::MethodOptions;
use super::method_hooks::StepHooks;
use edgetune_core::adapters::iec::Iec;
use edgetune_core::adapters::reslora::{DEFAULT_WINDOW as RESLORA_NORM_WINDOW, ResLora};
use edgetune_core::adapters::{Adapter, Lora, LoraConfig};
use edgetune_core::quant::matmul::QuantMatrix;
use edgetune_core::{Error, Result};

/// One adapted linear `[fan_out, fan_in]` as a method sees it when building its adapter.
pub struct Slot<'a> {
    /// The LoRA settings the method trains with (rsLoRA's scale already set).
    pub lora: &'a LoraConfig,
    pub opts: &'a MethodOptions,
    pub fan_in: usize,
    pub fan_out: usize,
    /// This slot's init seed.
    pub seed: u64,
    /// The run's seed (DyLoRA's rank draws).
    pub run_seed: u64,
    /// The run's optimizer steps (AdaLoRA's budget schedule).
    pub total_steps: u64,
    /// The frozen base matrix of this linear, for the methods that read it.
    pub base: Option<&'a QuantMatrix<'a>>,
}

/// One adapted linear `[fan_out, fan_in]` as the planner sees it (no adapter built).
pub struct SlotShape<'a> {
    pub lora: &'a LoraConfig,
    pub opts: &'a MethodOptions,
    pub fan_in: usize,
    pub fan_out: usize,
    /// Bytes of the linear's tensor in the GGUF (read only by the methods that copy it).
    pub base_bytes: u64,
}

/// One adapted linear's cost: what its forward saves and its passes use per token, its
/// trainable tensors' element counts (in `params()` order), and the bytes it holds besides
/// them ([`Adapter::extra_bytes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotCost {
    pub saved_per_token: usize,
    pub scratch_per_token: usize,
    pub tensors: Vec<u64>,
    pub extra_bytes: u64,
}

impl SlotCost {
    /// A plain rank-`r` pair: `r` saved and `r` (+ the masked input under dropout) scratch
    /// values per token, `A` and `B`, and `extra_bytes` besides.
    pub fn pair(s: &SlotShape<'_>, r: usize, extra_bytes: u64) -> SlotCost {
        SlotCost {
            saved_per_token: r,
            scratch_per_token: r + dropout_scratch(s.lora, s.fan_in),
            tensors: pair_tensors(r, s.fan_in, s.fan_out),
            extra_bytes,
        }
    }
}

/// A method's behaviour (one implementation per method or family; the registry holds a
/// reference to it).
pub trait MethodImpl: Sync {
    /// The adapter of this method on one linear, initialised.
    fn build(&self, slot: &Slot<'_>) -> Result<Box<dyn Adapter>>;

    /// What that adapter costs, from the shapes alone; must agree with the built adapter.
    fn cost(&self, shape: &SlotShape<'_>) -> SlotCost;

    /// Bytes of the method's buffers over the whole model (hooks' state), for `n_layer` layers
    /// with `adapted` adapted linears; [`StepHooks::bytes`] of [`MethodImpl::hooks`] on a set
    /// of that shape.
    fn method_wide_bytes(
        &self,
        _lora: &LoraConfig,
        _opts: &MethodOptions,
        _n_layer: usize,
        _adapted: usize,
    ) -> u64 {
        0
    }

    /// What the method does around the training step for `set` (built by
    /// [`MethodImpl::build`]), with its own state: `None` (the default) when it does nothing
    /// there.
    fn hooks(
        &self,
        _set: &AdapterSet,
        _opts: &MethodOptions,
    ) -> Result<Option<Box<dyn StepHooks>>> {
        Ok(None)
    }
}

/// `A [r, in]`, `B [out, r]`: a LoRA pair's element counts.
pub(crate) fn pair_tensors(r: usize, fan_in: usize, fan_out: usize) -> Vec<u64> {
    vec![(r * fan_in) as u64, (fan_out * r) as u64]
}

/// `in` more scratch values per token when dropout keeps a masked copy of the input.
pub(crate) fn dropout_scratch(lora: &LoraConfig, fan_in: usize) -> usize {
    if lora.dropout > 0.0 { fan_in } else { 0 }
}

/// The base matrix a method that reads `Ŵ` was given, or an error naming what is missing.
pub(crate) fn base_of<'a>(slot: &Slot<'a>) -> Result<&'a QuantMatrix<'a>> {
    slot.base
        .ok_or_else(|| Error::Invalid("the base weights are missing".into()))
}

/// Plain LoRA pairs: `lora`, `rslora`, `loraplus`, `qlora` (their differences are the scale,
/// the optimizer groups and the preset, all outside the adapter).
pub struct LoraFamily;

impl MethodImpl for LoraFamily {
    fn build(&self, slot: &Slot<'_>) -> Result<Box<dyn Adapter>> {
        Ok(Box::new(Lora::new(
            slot.fan_in,
            slot.fan_out,
            slot.lora,
            slot.seed,
        )?))
    }

    fn cost(&self, s: &SlotShape<'_>) -> SlotCost {
        SlotCost::pair(s, s.lora.rank, 0)
    }
}

/// Layer importance: LoRA pairs, plus one EMA gradient weight per slot of `n_layer × 7` (f32)
/// in the hooks.
pub struct LayerImportance;

impl MethodImpl for LayerImportance {
    fn build(&self, slot: &Slot<'_>) -> Result<Box<dyn Adapter>> {
        LoraFamily.build(slot)
    }

    fn cost(&self, s: &SlotShape<'_>) -> SlotCost {
        LoraFamily.cost(s)
    }

    fn method_wide_bytes(
        &self,
        _: &LoraConfig,
        _: &MethodOptions,
        n_layer: usize,
        _: usize,
    ) -> u64 {
        4 * 7 * n_layer as u64
    }

    fn hooks(&self, set: &AdapterSet, opts: &MethodOptions) -> Result<Option<Box<dyn StepHooks>>> {
        Ok(Some(Box::new(hooks::LayerWeights::new(
            set,
            opts.layerimp_tau,
        ))))
    }
}

/// IR-QLoRA's adapter half, IEC: a LoRA pair and two scalar gates `β_A`, `β_B`; scratch for
/// the group sums. Its ICQ half is the base file (`edgetune quantize --icq`).
pub struct IrQlora;

impl MethodImpl for IrQlora {
    fn build(&self, slot: &Slot<'_>) -> Result<Box<dyn Adapter>> {
        Ok(Box::new(Iec::new(
            slot.fan_in,
            slot.fan_out,
            slot.lora,
            slot.seed,
        )?))
    }

    fn cost(&self, s: &SlotShape<'_>) -> SlotCost {
        let r = s.lora.rank;
        let mut tensors = pair_tensors(r, s.fan_in, s.fan_out);
        tensors.extend([1, 1]);
        SlotCost {
            saved_per_token: r,
            scratch_per_token: 3 * r + dropout_scratch(s.lora, s.fan_in),
            tensors,
            extra_bytes: 0,
        }
    }
}

/// ResLoRA: a LoRA pair whose input also takes the previous layer's (the shortcut sum
/// `X_l + X_{l−1}` is in scratch) and a norm window for merging. Its cross-layer input store
/// is per step, not per adapter (`method_plan::reslora_store_bytes`).
pub struct ResLoraImpl;

impl MethodImpl for ResLoraImpl {
    fn build(&self, slot: &Slot<'_>) -> Result<Box<dyn Adapter>> {
        Ok(Box::new(ResLora::new(
            slot.fan_in,
            slot.fan_out,
            slot.lora,
            RESLORA_NORM_WINDOW,
            slot.seed,
        )?))
    }

    fn cost(&self, s: &SlotShape<'_>) -> SlotCost {
        let r = s.lora.rank;
        SlotCost {
            saved_per_token: r,
            scratch_per_token: s.fan_in + r,
            tensors: pair_tensors(r, s.fan_in, s.fan_out),
            extra_bytes: 16 * RESLORA_NORM_WINDOW as u64,
        }
    }
}
