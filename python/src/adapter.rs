//! The adapter as NumPy arrays keyed by PEFT tensor names
//! (`base_model.model.model.layers.{L}.self_attn.q_proj.lora_A.weight`), in PEFT's layout: `A`
//! `[r, in]`, `B` `[out, r]`, with the rows of `q_proj`'s and `k_proj`'s `B` in Hugging Face
//! order (un-permuted from the GGUF order we train in, as `export --format peft` writes them).
//! So `get_adapter()` holds exactly the tensors of the exported `adapter_model.safetensors`
//! (the plain LoRA family, whose scale PEFT's `lora_alpha / r` already is), and averaging them
//! is averaging the exported adapters.
//!
//! Reading copies each tensor once out of the trainer (a live view would change under the
//! next step); writing reads the caller's float32 C-contiguous arrays in place and copies them
//! straight into the adapter's parameters.

use std::path::Path;

use edgetune::adapters::{Lora, Target};
use edgetune::export::collect::Half;
use edgetune::export::qk_permute::{gguf_to_hf_rows, hf_to_gguf_rows};
use edgetune::export::{self, PeftOptions, peft};
use edgetune::gguf::GgufFile;
use edgetune::model::LlamaConfig;
use edgetune::quant::GgmlType;
use edgetune::train::{AdapterSet, TrainConfig};
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::{err, invalid};

/// One trainable tensor of the set: slot, parameter index, PEFT name, shape, permuted heads.
struct Tensor {
    layer: usize,
    target: Target,
    index: usize,
    name: String,
    shape: Vec<usize>,
    /// `Some(heads)` for `q_proj`/`k_proj`'s `B`: rows permuted between GGUF and HF order.
    heads: Option<usize>,
    rank: usize,
}

/// Every tensor of `set` with its PEFT name; an error for adapters that are not plain LoRA
/// (DoRA's magnitude, AdaLoRA's `E`, … have no plain PEFT LoRA tensor to map to).
fn tensors(set: &AdapterSet, model: &LlamaConfig) -> PyResult<Vec<Tensor>> {
    let mut out = Vec::new();
    for (layer, target, a) in set.iter() {
        let Some(lora) = a.downcast_ref::<Lora>() else {
            return Err(invalid(format!(
                "adapter arrays: blk.{layer}.{} is a {} adapter; get_adapter/set_adapter handle \
                 the plain LoRA family (lora, rslora, loraplus, qlora)",
                target.gguf_stem(),
                a.method()
            )));
        };
        for (index, p) in a.params().into_iter().enumerate() {
            let half = match p.name {
                "lora_A" => Half::A,
                "lora_B" => Half::B,
                other => {
                    return Err(invalid(format!(
                        "adapter arrays: unexpected tensor {other}"
                    )));
                }
            };
            let heads = match (half, target) {
                (Half::B, Target::AttnQ) => Some(model.n_head),
                (Half::B, Target::AttnK) => Some(model.n_head_kv),
                _ => None,
            };
            out.push(Tensor {
                layer,
                target,
                index,
                name: peft::tensor_name(layer, target, half),
                shape: p.shape,
                heads,
                rank: lora.rank(),
            });
        }
    }
    Ok(out)
}

/// The adapter of `set` as a dict of float32 arrays by PEFT name.
pub fn to_dict<'py>(
    py: Python<'py>,
    set: &AdapterSet,
    model: &LlamaConfig,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for t in tensors(set, model)? {
        let values = set
            .get(t.layer, t.target)
            .and_then(|a| a.param(t.index))
            .ok_or_else(|| invalid(format!("{}: no such tensor", t.name)))?;
        let flat = match t.heads {
            Some(h) => PyArray1::from_vec(py, gguf_to_hf_rows(values, h, t.rank).map_err(err)?),
            None => PyArray1::from_slice(py, values),
        };
        dict.set_item(t.name, flat.reshape(t.shape)?)?;
    }
    Ok(dict)
}

/// Writes `arrays` (every tensor of `set` by PEFT name, float32, C-contiguous; nothing else)
/// into `set`. All of them are checked before anything is written: on error `set` is as it was.
pub fn write_dict(
    set: &mut AdapterSet,
    model: &LlamaConfig,
    arrays: &Bound<'_, PyDict>,
) -> PyResult<()> {
    let list = tensors(set, model)?;
    let mut staged: Vec<(usize, PyReadonlyArrayDyn<'_, f32>)> = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let item = arrays.get_item(&t.name)?.ok_or_else(|| {
            invalid(format!(
                "set_adapter: missing tensor {} (shape {:?})",
                t.name, t.shape
            ))
        })?;
        let arr: PyReadonlyArrayDyn<'_, f32> = item.extract().map_err(|_| {
            invalid(format!(
                "set_adapter: {} is not a float32 NumPy array",
                t.name
            ))
        })?;
        if arr.shape() != t.shape.as_slice() {
            return Err(invalid(format!(
                "set_adapter: {} has shape {:?}, the trainer's is {:?}",
                t.name,
                arr.shape(),
                t.shape
            )));
        }
        let values = arr
            .as_slice()
            .map_err(|_| invalid(format!("set_adapter: {} is not C-contiguous", t.name)))?;
        if let Some(j) = values.iter().position(|v| !v.is_finite()) {
            return Err(invalid(format!(
                "set_adapter: {} holds a non-finite value ({}) at flat index {j}",
                t.name, values[j]
            )));
        }
        staged.push((i, arr));
    }
    if arrays.len() != list.len() {
        let known: std::collections::HashSet<&str> = list.iter().map(|t| t.name.as_str()).collect();
        let extra: Vec<String> = arrays
            .keys()
            .iter()
            .map(|k| k.to_string())
            .filter(|k| !known.contains(k.as_str()))
            .take(5)
            .collect();
        return Err(invalid(format!(
            "set_adapter: {} tensor(s) the trainer does not have, e.g. {extra:?}",
            arrays.len() - list.len().min(arrays.len())
        )));
    }
    for (i, arr) in &staged {
        let t = &list[*i];
        let src = arr
            .as_slice()
            .map_err(|_| invalid("set_adapter: not contiguous"))?;
        let permuted;
        let src = match t.heads {
            Some(h) => {
                permuted = hf_to_gguf_rows(src, h, t.rank).map_err(err)?;
                permuted.as_slice()
            }
            None => src,
        };
        let dst = set
            .get_mut(t.layer, t.target)
            .and_then(|a| a.param_mut(t.index))
            .ok_or_else(|| invalid(format!("{}: no such tensor", t.name)))?;
        dst.copy_from_slice(src);
    }
    Ok(())
}

/// A fresh adapter set for `cfg` (the one a new trainer starts from: the same seed gives the
/// same tensors) on the model at `cfg.model`.
pub fn fresh_set(cfg: &TrainConfig) -> edgetune::Result<(AdapterSet, LlamaConfig)> {
    cfg.lora.validate()?;
    let file = GgufFile::open(&cfg.model)?;
    let model = LlamaConfig::from_gguf(&file)?;
    let steps = cfg.steps.unwrap_or(0);
    let set = edgetune::train::build_adapters(cfg.method, &model, cfg, steps, cfg.seed, None)?;
    Ok((set, model))
}

/// Writes `set` as `format`: `"native"` (an edgetune adapter directory), `"gguf"` (a llama.cpp
/// LoRA file, f32) or `"peft"` (a Hugging Face PEFT directory, f32), as the C ABI's
/// `et_trainer_export` does. `base` is the model file (its SHA-256 goes into PEFT's README).
pub fn export_set(
    set: &AdapterSet,
    model: &LlamaConfig,
    base: &Path,
    format: &str,
    out: &Path,
    meta: serde_json::Value,
) -> edgetune::Result<()> {
    match format {
        "native" => export::save_adapter(set, out, &meta),
        "gguf" => export::export_gguf(set, model, out, GgmlType::F32).map(|_| ()),
        "peft" => {
            let opts = PeftOptions {
                dtype: GgmlType::F32,
                base_model_name_or_path: None,
                base_file: Some(base.to_path_buf()),
                notes: meta,
            };
            export::export_peft(set, model, out, &opts).map(|_| ())
        }
        other => Err(edgetune::Error::Invalid(format!(
            "format `{other}`: expected \"native\", \"gguf\" or \"peft\""
        ))),
    }
}

/// `edgetune.init_adapter(config)`: the fresh adapter of a configuration as arrays by PEFT
/// name (a new `Trainer(config)` starts from exactly these).
#[pyfunction]
pub fn init_adapter<'py>(py: Python<'py>, config_json: &str) -> PyResult<Bound<'py, PyDict>> {
    let cfg = crate::config::from_json(config_json)?;
    let (set, model) = py.detach(|| fresh_set(&cfg)).map_err(err)?;
    to_dict(py, &set, &model)
}

/// `edgetune.export_adapter(config, arrays, format, path)`: writes adapter arrays (by PEFT name,
/// the shapes of `config`'s adapter) as a PEFT directory, a GGUF LoRA or a native directory,
/// through the library's exporters — for a server that holds only the arrays.
#[pyfunction]
pub fn export_adapter(
    py: Python<'_>,
    config_json: &str,
    arrays: &Bound<'_, PyDict>,
    format: &str,
    path: &str,
) -> PyResult<()> {
    let cfg = crate::config::from_json(config_json)?;
    let (mut set, model) = py.detach(|| fresh_set(&cfg)).map_err(err)?;
    write_dict(&mut set, &model, arrays)?;
    let meta = serde_json::json!({ "seed": cfg.seed });
    py.detach(|| export_set(&set, &model, &cfg.model, format, Path::new(path), meta))
        .map_err(err)
}
