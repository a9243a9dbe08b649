//! A method's full training state in a checkpoint directory, beside the plain-LoRA export
//! (`adapter.json` + `adapter.safetensors`, written only when every adapter is a low-rank
//! pair): `method.json` (method, LoRA settings, method options, layer count) and
//! `method.safetensors` holding, in f32,
//!
//! - every trainable tensor, `blk.{l}.{stem}.{param}` with [`crate::adapters::Adapter::params`]
//!   names and shapes (DoRA's `lora_magnitude_vector`, AdaLoRA's `lora_E`, HiRA's `hira_A`, …);
//! - OLoRA/PiSSA's frozen factors `blk.{l}.{stem}.lora_A0` `[r, in]`, `lora_B0` `[out, r]`
//!   (stored, not recomputed: decompositions differ in signs between builds,
//!   docs/METHODS.md#read-only-base);
//! - AdaLoRA's allocator state `blk.{l}.{stem}.adalora_ipt`, `adalora_unc` (params layout) and
//!   `adalora_keep` `[r0]` (1.0 = kept);
//! - the layer-importance weights `layerimp.weights` `[n_layer · 7]`;
//! - MT-LoRA's task weights `mtlora.gamma` `[T]` and its adaptive window `mtlora.window_loss`,
//!   `mtlora.window_targets` `[T]` (F64: sums must come back bit for bit). Its task names are
//!   `method_opts.mtlora_tasks` in `method.json`;
//! - ResLoRA's merge_bw norm window `blk.{l}.{stem}.reslora_norm_cur`, `reslora_norm_prev`
//!   `[k ≤ window]` (F64) and `reslora_last_seed` `[0 or 1]` (U64), so merge_bw's `α` after a
//!   resume is the uninterrupted run's.
//!
//! Loading restores these into a set freshly built by
//! [`AdapterSet::new_for`](super::AdapterSet::new_for) with the run's configuration (the
//! methods that read `Ŵ` rebuild their base copy from the model file), so a resumed run is
//! bit-exact; DyLoRA's training rank is a function of the step number and needs no state.

use std::borrow::Cow;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use super::adapter_set::{AdapterSet, tensor_name};
use super::method::{Method, MethodOptions};
use super::method_hooks::MethodHooks;
use crate::adapters::adalora::AdaLora;
use crate::adapters::olora_pissa::ResidualLora;
use crate::adapters::reslora::ResLora;
use crate::adapters::{Adapter, LoraConfig};
use crate::export::codec::{safetensors_error, safetensors_what};
use crate::{Error, Result};

pub const METHOD_JSON: &str = "method.json";
pub const METHOD_TENSORS: &str = "method.safetensors";
const FORMAT: &str = "edgetune-method-state";
const LAYERIMP: &str = "layerimp.weights";
const MT_GAMMA: &str = "mtlora.gamma";
const MT_WIN_LOSS: &str = "mtlora.window_loss";
const MT_WIN_TARGETS: &str = "mtlora.window_targets";
const RES_CUR: &str = "reslora_norm_cur";
const RES_PREV: &str = "reslora_norm_prev";
const RES_SEED: &str = "reslora_last_seed";

/// `method.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodMeta {
    pub format: String,
    pub version: u64,
    pub method: Method,
    pub lora: LoraConfig,
    pub method_opts: MethodOptions,
    pub n_layer: usize,
}

/// Whether `dir` holds a method state.
pub fn has_method_state(dir: &Path) -> bool {
    dir.join(METHOD_JSON).is_file()
}

/// Reads `dir/method.json`.
pub fn read_meta(dir: &Path) -> Result<MethodMeta> {
    let path = dir.join(METHOD_JSON);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let meta: MethodMeta = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    if meta.format != FORMAT || meta.version != 1 {
        return Err(Error::Invalid(format!(
            "{}: format {:?} version {}, expected {FORMAT:?} version 1",
            path.display(),
            meta.format,
            meta.version
        )));
    }
    Ok(meta)
}

/// Writes `method.json` and `method.safetensors` of `set` (and `hooks`) into `dir`.
pub fn save(
    dir: &Path,
    set: &AdapterSet,
    hooks: &MethodHooks,
    method: Method,
    opts: &MethodOptions,
) -> Result<()> {
    let mut tensors: Vec<(String, Vec<usize>, Cow<'_, [f32]>)> = Vec::new();
    for (layer, target, a) in set.iter() {
        for (i, p) in a.params().iter().enumerate() {
            let v = a.param(i).ok_or_else(|| {
                Error::Invalid(format!(
                    "adapter blk.{layer}.{}: no tensor {i}",
                    target.gguf_stem()
                ))
            })?;
            tensors.push((
                tensor_name(layer, target, p.name),
                p.shape.clone(),
                Cow::Borrowed(v),
            ));
        }
        for (name, shape, v) in extra_state(a) {
            tensors.push((tensor_name(layer, target, name), shape, v));
        }
    }
    if method == Method::Layerimp {
        let w = hooks.layer_weights();
        tensors.push((LAYERIMP.into(), vec![w.len()], Cow::Borrowed(w)));
    }
    // Tensors in other dtypes than f32: (name, dtype, little-endian bytes).
    let mut wide: Vec<(String, Dtype, Vec<u8>)> = Vec::new();
    let f64s = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    if let Some(mt) = hooks.tasks() {
        let (gamma, win_loss, win_n) = mt.state();
        tensors.push((MT_GAMMA.into(), vec![gamma.len()], Cow::Borrowed(gamma)));
        let n: Vec<f64> = win_n.iter().map(|&n| n as f64).collect();
        wide.push((MT_WIN_LOSS.into(), Dtype::F64, f64s(win_loss)));
        wide.push((MT_WIN_TARGETS.into(), Dtype::F64, f64s(&n)));
    }
    for (layer, target, a) in set.iter() {
        if let Some(x) = a.downcast_ref::<ResLora>() {
            let w = x.norm_window();
            let (cur, prev): (Vec<f64>, Vec<f64>) = (w.cur.into(), w.prev.into());
            let name = |p: &str| tensor_name(layer, target, p);
            wide.push((name(RES_CUR), Dtype::F64, f64s(&cur)));
            wide.push((name(RES_PREV), Dtype::F64, f64s(&prev)));
            let seed: Vec<u8> = w.last_seed.iter().flat_map(|s| s.to_le_bytes()).collect();
            wide.push((name(RES_SEED), Dtype::U64, seed));
        }
    }
    let mut views = tensors
        .iter()
        .map(|(name, shape, v)| {
            TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(v))
                .map(|view| (name.as_str(), view))
                .map_err(|e| Error::Invalid(format!("tensor {name}: {}", safetensors_what(e))))
        })
        .collect::<Result<Vec<_>>>()?;
    for (name, dtype, bytes) in &wide {
        let view = TensorView::new(*dtype, vec![bytes.len() / 8], bytes)
            .map_err(|e| Error::Invalid(format!("tensor {name}: {}", safetensors_what(e))))?;
        views.push((name, view));
    }
    let path = dir.join(METHOD_TENSORS);
    safetensors::serialize_to_file(views, &None, &path).map_err(|e| safetensors_error(&path, e))?;
    let meta = MethodMeta {
        format: FORMAT.into(),
        version: 1,
        method,
        lora: set.lora_config().clone(),
        method_opts: opts.clone(),
        n_layer: set.n_layer(),
    };
    let json = serde_json::to_vec_pretty(&meta)
        .map_err(|e| Error::Invalid(format!("{METHOD_JSON}: {e}")))?;
    let jpath = dir.join(METHOD_JSON);
    std::fs::write(&jpath, json).map_err(|e| Error::io(&jpath, e))
}

/// One stored tensor: (name, shape, values).
type StateTensor<'a> = (&'static str, Vec<usize>, Cow<'a, [f32]>);

/// The non-trainable state of an adapter a checkpoint must keep.
fn extra_state(a: &dyn Adapter) -> Vec<StateTensor<'_>> {
    if let Some(x) = a.downcast_ref::<ResidualLora>() {
        let (r, inf, outf) = (x.lora().rank(), a.in_features(), a.out_features());
        return vec![
            ("lora_A0", vec![r, inf], Cow::Borrowed(x.a0())),
            ("lora_B0", vec![outf, r], Cow::Borrowed(x.b0())),
        ];
    }
    if let Some(x) = a.downcast_ref::<AdaLora>() {
        let (ipt, unc, keep) = x.importance_state();
        let keep: Vec<f32> = keep.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
        return vec![
            ("adalora_ipt", vec![ipt.len()], Cow::Borrowed(ipt)),
            ("adalora_unc", vec![unc.len()], Cow::Borrowed(unc)),
            ("adalora_keep", vec![keep.len()], Cow::Owned(keep)),
        ];
    }
    Vec::new()
}

/// Restores `dir/method.safetensors` into `set` (built fresh for the same configuration) and
/// `hooks`; every tensor must be there with its shape. Errors name the file and the tensor.
pub fn load_into(dir: &Path, set: &mut AdapterSet, hooks: &mut MethodHooks) -> Result<()> {
    let path = dir.join(METHOD_TENSORS);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::Invalid(format!(
            "{}: not a safetensors file: {}",
            path.display(),
            safetensors_what(e)
        ))
    })?;
    let get = |name: &str, n: usize| -> Result<Vec<f32>> {
        let terr = |what: String| Error::Tensor {
            path: path.clone(),
            name: name.into(),
            what,
        };
        let v = st.tensor(name).map_err(|e| terr(e.to_string()))?;
        if v.dtype() != Dtype::F32 || v.data().len() != 4 * n {
            return Err(terr(format!(
                "{:?} with {} bytes, expected F32 with {n} values",
                v.dtype(),
                v.data().len()
            )));
        }
        Ok(v.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    // A 64-bit tensor of `dtype` (F64 or U64) as raw little-endian words; `n`: the expected
    // count, or any when `None`.
    let get_words = |name: &str, dtype: Dtype, n: Option<usize>| -> Result<Vec<[u8; 8]>> {
        let terr = |what: String| Error::Tensor {
            path: path.clone(),
            name: name.into(),
            what,
        };
        let v = st.tensor(name).map_err(|e| terr(e.to_string()))?;
        let len = v.data().len();
        if v.dtype() != dtype || len % 8 != 0 || n.is_some_and(|n| len != 8 * n) {
            return Err(terr(format!(
                "{:?} with {len} bytes, expected {dtype:?} with {} values",
                v.dtype(),
                n.map_or("some".into(), |n| n.to_string())
            )));
        }
        Ok(v.data()
            .chunks_exact(8)
            .map(|c| c.try_into().unwrap_or([0; 8]))
            .collect())
    };
    let get64 = |name: &str, n: Option<usize>| -> Result<Vec<f64>> {
        Ok(get_words(name, Dtype::F64, n)?
            .into_iter()
            .map(f64::from_le_bytes)
            .collect())
    };
    let slots: Vec<_> = set.iter().map(|(l, t, _)| (l, t)).collect();
    for (layer, target) in slots {
        let a = set
            .get_mut(layer, target)
            .ok_or_else(|| Error::Invalid("adapter slot vanished".into()))?;
        let infos = a.params();
        for (i, p) in infos.iter().enumerate() {
            let v = get(&tensor_name(layer, target, p.name), p.numel())?;
            let dst = a
                .param_mut(i)
                .ok_or_else(|| Error::Invalid("no tensor".into()))?;
            dst.copy_from_slice(&v);
        }
        if let Some(x) = a.downcast_mut::<AdaLora>() {
            let n = x.n_params();
            let r = x.init_rank();
            let ipt = get(&tensor_name(layer, target, "adalora_ipt"), n)?;
            let unc = get(&tensor_name(layer, target, "adalora_unc"), n)?;
            let keep: Vec<bool> = get(&tensor_name(layer, target, "adalora_keep"), r)?
                .into_iter()
                .map(|k| k != 0.0)
                .collect();
            x.set_importance_state(&ipt, &unc, &keep)?;
        }
        if let Some(x) = a.downcast_mut::<ResLora>() {
            let name = |p: &str| tensor_name(layer, target, p);
            let mut w = x.norm_window();
            let cur = get64(&name(RES_CUR), None)?;
            let prev = get64(&name(RES_PREV), Some(cur.len()))?;
            let seed = get_words(&name(RES_SEED), Dtype::U64, None)?;
            if cur.len() > w.len || seed.len() > 1 {
                return Err(Error::Invalid(format!(
                    "{}: {}: {} norms for a window of {}, {} seeds (at most 1)",
                    path.display(),
                    name(RES_CUR),
                    cur.len(),
                    w.len,
                    seed.len()
                )));
            }
            (w.cur, w.prev) = (cur.into(), prev.into());
            w.last_seed = seed.first().map(|&b| u64::from_le_bytes(b));
            x.set_norm_window(w);
        }
        let rebuilt = if let Some(x) = a.downcast_ref::<ResidualLora>() {
            let (r, inf, outf) = (x.lora().rank(), x.in_features(), x.out_features());
            let a0 = get(&tensor_name(layer, target, "lora_A0"), r * inf)?;
            let b0 = get(&tensor_name(layer, target, "lora_B0"), outf * r)?;
            Some(ResidualLora::from_parts(
                x.kind(),
                x.lora().clone(),
                a0,
                b0,
            )?)
        } else {
            None
        };
        if let Some(x) = rebuilt {
            set.insert(layer, target, Box::new(x))?;
        }
    }
    if hooks.method() == Method::Layerimp {
        let n = hooks.layer_weights().len();
        hooks.set_layer_weights(&get(LAYERIMP, n)?)?;
    }
    if let Some(mt) = hooks.tasks_mut() {
        let n = mt.n_tasks();
        let gamma = get(MT_GAMMA, n)?;
        let win_loss = get64(MT_WIN_LOSS, Some(n))?;
        let win_n: Vec<u64> = get64(MT_WIN_TARGETS, Some(n))?
            .iter()
            .map(|&v| v as u64)
            .collect();
        mt.set_state(&gamma, &win_loss, &win_n)?;
    }
    Ok(())
}

/// The adapter set of method checkpoint `dir` on the base model `file` (whose weights the
/// methods that read `Ŵ` copy again): what `edgetune merge` loads for DoRA and HiRA, which
/// have no plain-LoRA form.
pub fn load_set(dir: &Path, file: &crate::gguf::GgufFile) -> Result<AdapterSet> {
    let meta = read_meta(dir)?;
    let model = crate::model::LlamaConfig::from_gguf(file)?;
    if meta.n_layer != model.n_layer {
        return Err(Error::Invalid(format!(
            "{}: the adapter is for a {}-layer model, the base has {} layers",
            dir.join(METHOD_JSON).display(),
            meta.n_layer,
            model.n_layer
        )));
    }
    let weights = crate::model::LlamaWeights::from_gguf(file, &model)?;
    let cfg = super::TrainConfig {
        lora: meta.lora.clone(),
        method: meta.method,
        method_opts: meta.method_opts.clone(),
        ..super::TrainConfig::default()
    };
    // Any schedule length AdaLoRA accepts: the step count only shapes the training budget.
    let steps = meta.method_opts.adalora_tinit + meta.method_opts.adalora_tfinal + 1;
    let mut set = AdapterSet::new_for(meta.method, &model, &cfg, steps, 0, Some(&weights))?;
    let mut hooks = MethodHooks::with_options(meta.method, &set, &meta.method_opts)?;
    load_into(dir, &mut set, &mut hooks)?;
    Ok(set)
}
