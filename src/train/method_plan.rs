//! What each method's adapter on one linear costs, computed from the shapes alone (no adapter
//! is built, no base weight read), for the memory plan (memory/budget.rs): its workspace and
//! parameter tensors (the [`AdapterShape`] the step plan takes, and the optimizer's tensors) and
//! the bytes it holds besides them ([`crate::adapters::Adapter::extra_bytes`]). Each formula
//! restates the adapter's own `workspace()` / `params()` / `extra_bytes()`;
//! tests/train/methods.rs checks them against built adapters for every wired method.
//!
//! Per linear `[out, in]`, rank `r` (`r0` for AdaLoRA), `drop` = dropout on:
//!
//! | method | saved / token | scratch / token | tensors | extra bytes |
//! |---|---|---|---|---|
//! | LoRA family, DyLoRA (`r_max`) | `r` | `r + drop·in` | `r·in`, `out·r` | 0 |
//! | OLoRA, PiSSA | `r` | `r + drop·in` | `r·in`, `out·r` | `4·(r·in + out·r)` (`A0`, `B0`) |
//! | DoRA | `r + out` | `out + r + in + drop·in` | `r·in`, `out·r`, `out` | base copy + `8·out` + `4·(r·out + r² + 2·out)` |
//! | HiRA | 0 | `min(64, out) + drop·2·in` | `r·in`, `out·r` | base copy + `4·3·min(64, out)·in` |
//! | AdaLoRA | `r0` | `r0 + drop·in` | `r0·in`, `out·r0`, `r0` | `8·r0·(in + out + 1)` + `4·r0²` + `r0` |
//! | MT-LoRA (`T` tasks, `r_t`) | `r + r_t` | `r + r_t + drop·in` | `r·in`, `out·r`, then `r_t·in`, `out·r_t` per task | 0 |
//!
//! The base copy is the tensor's quantized bytes (`BaseCopy::Quant`) or `4·out·in`
//! (`BaseCopy::Dense`). Method-wide buffers (AdaLoRA's score arrays, the layer-importance
//! weights, MT-LoRA's per-task weights and loss sums) are [`method_wide_bytes`]. MT-LoRA's task
//! count `T` is `opts.mtlora_tasks` (filled from the data by the trainer; 1 when empty).

use super::adapter_set::{adalora_config, method_lora_config};
use super::method::{BaseCopy, Method, MethodOptions};
use crate::adapters::LoraConfig;
use crate::adapters::hira::TILE;
use crate::adapters::reslora::DEFAULT_WINDOW as RESLORA_NORM_WINDOW;
use crate::memory::plan::AdapterShape;

/// One adapted linear's cost under a method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterCost {
    pub shape: AdapterShape,
    /// Element counts of the trainable tensors, in `params()` order.
    pub tensors: Vec<u64>,
    /// [`crate::adapters::Adapter::extra_bytes`].
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
    let r = lora.rank;
    let (inf, outf) = (fan_in, fan_out);
    let drop = lora.dropout > 0.0;
    let base_copy = match opts.base_copy {
        BaseCopy::Quant => base_bytes,
        BaseCopy::Dense => 4 * (inf * outf) as u64,
    };
    let lora_tensors = vec![(r * inf) as u64, (outf * r) as u64];
    let (saved, scratch, tensors, extra) = match method {
        Method::Dora => (
            r + outf,
            outf + r + inf + if drop { inf } else { 0 },
            vec![(r * inf) as u64, (outf * r) as u64, outf as u64],
            base_copy + 8 * outf as u64 + 4 * (r * outf + r * r + 2 * outf) as u64,
        ),
        Method::Hira => {
            let tile = TILE.min(outf);
            (
                0,
                tile + if drop { 2 * inf } else { 0 },
                lora_tensors,
                base_copy + 4 * (3 * tile * inf) as u64,
            )
        }
        Method::Adalora => {
            let r0 = adalora_config(&lora, opts, 1).init_r;
            (
                r0,
                r0 + if drop { inf } else { 0 },
                vec![(r0 * inf) as u64, (outf * r0) as u64, r0 as u64],
                8 * (r0 * (inf + outf + 1)) as u64 + 4 * (r0 * r0) as u64 + r0 as u64,
            )
        }
        Method::Olora | Method::Pissa => (
            r,
            r + if drop { inf } else { 0 },
            lora_tensors,
            4 * (r * inf + outf * r) as u64,
        ),
        // IEC: A, B and the two scalar gates β_A, β_B; scratch for the group sums.
        Method::Irqlora => (
            r,
            3 * r + if drop { inf } else { 0 },
            vec![(r * inf) as u64, (outf * r) as u64, 1, 1],
            0,
        ),
        Method::Mtlora => {
            let t = opts.mtlora_tasks.len().max(1);
            let rt = opts.mtlora_task_rank;
            let mut tensors = lora_tensors;
            for _ in 0..t {
                tensors.extend([(rt * inf) as u64, (outf * rt) as u64]);
            }
            (r + rt, r + rt + if drop { inf } else { 0 }, tensors, 0)
        }
        // ResLoRA: the shortcut sum `X_l + X_{l−1}` in scratch; the merge_bw norm window. Its
        // cross-layer input store is per step, not per adapter: `reslora_store_bytes`.
        Method::Reslora => (r, inf + r, lora_tensors, 16 * RESLORA_NORM_WINDOW as u64),
        _ => (r, r + if drop { inf } else { 0 }, lora_tensors, 0),
    };
    let n_params: u64 = tensors.iter().sum();
    AdapterCost {
        shape: AdapterShape {
            saved_per_token: saved,
            scratch_per_token: scratch,
            n_params: n_params as usize,
            largest_param: tensors.iter().copied().max().unwrap_or(0) as usize,
        },
        tensors,
        extra_bytes: extra,
    }
}

/// Bytes of the method's buffers over the whole model (train/method_hooks.rs): the
/// layer-importance weights (`4` per slot of `n_layer × 7`, layerimp only), AdaLoRA's score and
/// selection arrays (`8·r0` per adapted linear), MT-LoRA's per-task state
/// ([`MT_BYTES_PER_TASK`] per task, train/method_tasks.rs).
pub fn method_wide_bytes(
    method: Method,
    lora: &LoraConfig,
    opts: &MethodOptions,
    n_layer: usize,
    adapted: usize,
) -> u64 {
    match method {
        Method::Adalora => {
            let r0 = adalora_config(lora, opts, 1).init_r;
            8 * (adapted * r0) as u64
        }
        Method::Layerimp => 4 * 7 * n_layer as u64,
        Method::Mtlora => MT_BYTES_PER_TASK * opts.mtlora_tasks.len().max(1) as u64,
        _ => 0,
    }
}

/// MT-LoRA's per-task state in the hooks: `γ_t` and the step weight (f32), the step's and the
/// window's target counts (u64) and loss sums (f64), the last step's mean loss (f64).
pub const MT_BYTES_PER_TASK: u64 = 4 + 4 + 8 + 8 + 8 + 8 + 8;

/// ResLoRA's cross-layer store held by the training step (`train::step_reslora::store_bytes`):
/// for each adapted target of input width `in`, every layer's module input `[n_layer, T, in]`
/// plus one pending input gradient `[T, in]`, f32, for the whole step.
pub fn reslora_store_bytes(fan_ins: &[usize], n_layer: usize, tokens: usize) -> u64 {
    fan_ins
        .iter()
        .map(|&fan_in| 4 * (tokens * (n_layer + 1) * fan_in) as u64)
        .sum()
}
