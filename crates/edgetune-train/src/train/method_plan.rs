//! What each method's adapter on one linear costs, computed from the shapes alone (no adapter
//! is built, no base weight read), for the memory plan (train/budget/mod.rs): its workspace and
//! parameter tensors (the [`AdapterShape`] the step plan takes, and the optimizer's tensors) and
//! the bytes it holds besides them ([`edgetune_core::adapters::Adapter::extra_bytes`]). The formulas
//! are each method's [`super::methods::MethodImpl::cost`] (the table is in
//! `crates/edgetune-train/src/train/methods/mod.rs`); tests/train/methods.rs checks them against built adapters for
//! every method.

use super::adapter_set::method_lora_config;
use super::method::{Method, MethodOptions};
use super::methods::SlotShape;
use crate::train::plan_llama::AdapterShape;
use edgetune_core::adapters::LoraConfig;

/// One adapted linear's cost under a method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterCost {
    pub shape: AdapterShape,
    /// Element counts of the trainable tensors, in `params()` order.
    pub tensors: Vec<u64>,
    /// [`edgetune_core::adapters::Adapter::extra_bytes`].
    pub extra_bytes: u64,
}

/// The cost of `method`'s adapter on a linear `[fan_out, fan_in]` whose GGUF tensor has
/// `base_bytes` bytes (read only by the methods that copy the base).
pub fn adapter_cost(
    method: Method,
    lora: &LoraConfig,
    opts: &MethodOptions,
    fan_in: usize,
    fan_out: usize,
    base_bytes: u64,
) -> AdapterCost {
    let lora = method_lora_config(method, lora);
    let cost = method.spec().imp.cost(&SlotShape {
        lora: &lora,
        opts,
        fan_in,
        fan_out,
        base_bytes,
    });
    let n_params: u64 = cost.tensors.iter().sum();
    AdapterCost {
        shape: AdapterShape {
            saved_per_token: cost.saved_per_token,
            scratch_per_token: cost.scratch_per_token,
            n_params: n_params as usize,
            largest_param: cost.tensors.iter().copied().max().unwrap_or(0) as usize,
        },
        tensors: cost.tensors,
        extra_bytes: cost.extra_bytes,
    }
}

/// Bytes of the method's buffers over the whole model (its hooks' state: the layer-importance
/// weights, AdaLoRA's score and selection arrays, MT-LoRA's per-task state), for `n_layer`
/// layers with `adapted` adapted linears.
pub fn method_wide_bytes(
    method: Method,
    lora: &LoraConfig,
    opts: &MethodOptions,
    n_layer: usize,
    adapted: usize,
) -> u64 {
    method
        .spec()
        .imp
        .method_wide_bytes(lora, opts, n_layer, adapted)
}

/// MT-LoRA's per-task state in the hooks (train/method_tasks.rs).
pub use super::methods::scheduled::MT_BYTES_PER_TASK;

/// ResLoRA's cross-layer store held by the training step (`train::step_reslora::store_bytes`):
/// for each adapted target of input width `in`, every layer's module input `[n_layer, T, in]`
/// plus one pending input gradient `[T, in]`, f32, for the whole step.
pub fn reslora_store_bytes(fan_ins: &[usize], n_layer: usize, tokens: usize) -> u64 {
    fan_ins
        .iter()
        .map(|&fan_in| 4 * (tokens * (n_layer + 1) * fan_in) as u64)
        .sum()
}
