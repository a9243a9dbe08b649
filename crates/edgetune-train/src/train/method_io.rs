//! A method's full training state in a checkpoint directory, beside the plain-LoRA export
//! (`adapter.json` + `adapter.safetensors`, written only when every adapter is a low-rank
//! pair): `method.json` (method, LoRA settings, method options, layer count) and
//! `method.safetensors` holding every trainable tensor, then what each adapter's
//! [`Adapter::extra_state`](edgetune_core::adapters::Adapter::extra_state) and the method hooks'
//! [`StepHooks::checkpoint_state`](super::method_hooks::StepHooks::checkpoint_state) give
//! (this file names no method; loading hands each its tensors back through a
//! [`StateSource`]). In f32 unless said:
//!
//! - every trainable tensor, `blk.{l}.{stem}.{param}` with [`edgetune_core::adapters::Adapter::params`]
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
//! Adapter tensors are named `blk.{l}.{stem}.{name}` here ([`tensor_name`]); the adapters and
//! hooks give and read only `name`. Loading restores these into a set freshly built by
//! [`build_adapters`](super::adapter_set::build_adapters) with the run's configuration (the
//! methods that read `Ŵ` rebuild their base copy from the model file), so a resumed run is
//! bit-exact; DyLoRA's training rank is a function of the step number and needs no state.

use std::borrow::Cow;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use super::adapter_set::{AdapterSet, tensor_name};
use super::method::{Method, MethodOptions};
use super::method_hooks::MethodHooks;
use crate::export::codec::{safetensors_error, safetensors_what};
use edgetune_core::adapters::{LoraConfig, StateSource, StateTensor, StateValues, Target};
use edgetune_core::{Error, Result};

pub use crate::export::native::{METHOD_JSON, METHOD_TENSORS};
const FORMAT: &str = "edgetune-method-state";

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
    // Every tensor under its name in the file: each adapter's parameters and extra state
    // (`blk.{l}.{stem}.{name}`), then the hooks' state (names as they give them).
    let mut tensors: Vec<(String, StateTensor<'_>)> = Vec::new();
    for (layer, target, a) in set.iter() {
        for (i, p) in a.params().into_iter().enumerate() {
            let v = a.param(i).ok_or_else(|| {
                Error::Invalid(format!(
                    "adapter blk.{layer}.{}: no tensor {i}",
                    target.gguf_stem()
                ))
            })?;
            let t = StateTensor::f32(p.name, p.shape, Cow::Borrowed(v));
            tensors.push((tensor_name(layer, target, p.name), t));
        }
        for t in a.extra_state() {
            tensors.push((tensor_name(layer, target, t.name), t));
        }
    }
    for t in hooks.checkpoint_state() {
        tensors.push((t.name.to_string(), t));
    }
    let encoded: Vec<(Dtype, Cow<'_, [u8]>)> =
        tensors.iter().map(|(_, t)| encode(&t.values)).collect();
    let views = tensors
        .iter()
        .zip(&encoded)
        .map(|((name, t), (dtype, bytes))| {
            TensorView::new(*dtype, t.shape.clone(), bytes)
                .map(|view| (name.as_str(), view))
                .map_err(|e| Error::Invalid(format!("tensor {name}: {}", safetensors_what(e))))
        })
        .collect::<Result<Vec<_>>>()?;
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

/// The dtype and little-endian bytes of `values`: f32 borrowed as they are, 64-bit values
/// encoded.
fn encode<'a>(values: &'a StateValues<'_>) -> (Dtype, Cow<'a, [u8]>) {
    match values {
        StateValues::F32(v) => (Dtype::F32, Cow::Borrowed(bytemuck::cast_slice(v))),
        StateValues::F64(v) => (
            Dtype::F64,
            Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ),
        StateValues::U64(v) => (
            Dtype::U64,
            Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ),
    }
}

/// A `method.safetensors` read back, as a [`StateSource`]: the whole file (`slot: None`, the
/// hooks' names) or one adapter's slot (`blk.{l}.{stem}.` before each name).
struct FileSource<'a> {
    st: &'a SafeTensors<'a>,
    path: &'a Path,
    slot: Option<(usize, Target)>,
}

impl FileSource<'_> {
    fn full_name(&self, name: &str) -> String {
        match self.slot {
            Some((layer, target)) => tensor_name(layer, target, name),
            None => name.to_string(),
        }
    }

    /// Tensor `name` as raw bytes, checked: `dtype`, `width`-byte values, `n` of them (any
    /// count when `None`).
    fn bytes(&self, name: &str, dtype: Dtype, width: usize, n: Option<usize>) -> Result<&[u8]> {
        let full = self.full_name(name);
        let v = self
            .st
            .tensor(&full)
            .map_err(|e| self.invalid(name, e.to_string()))?;
        let len = v.data().len();
        if v.dtype() != dtype || len % width != 0 || n.is_some_and(|n| len != width * n) {
            return Err(self.invalid(
                name,
                format!(
                    "{:?} with {len} bytes, expected {dtype:?} with {} values",
                    v.dtype(),
                    n.map_or("some".into(), |n| n.to_string())
                ),
            ));
        }
        Ok(v.data())
    }

    /// Tensor `name` as 64-bit little-endian words.
    fn words(&self, name: &str, dtype: Dtype, n: Option<usize>) -> Result<Vec<[u8; 8]>> {
        Ok(self
            .bytes(name, dtype, 8, n)?
            .chunks_exact(8)
            .map(|c| c.try_into().unwrap_or([0; 8]))
            .collect())
    }
}

impl StateSource for FileSource<'_> {
    fn f32s(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        Ok(self
            .bytes(name, Dtype::F32, 4, Some(n))?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn f64s(&self, name: &str, n: Option<usize>) -> Result<Vec<f64>> {
        let w = self.words(name, Dtype::F64, n)?;
        Ok(w.into_iter().map(f64::from_le_bytes).collect())
    }

    fn u64s(&self, name: &str, n: Option<usize>) -> Result<Vec<u64>> {
        let w = self.words(name, Dtype::U64, n)?;
        Ok(w.into_iter().map(u64::from_le_bytes).collect())
    }

    fn invalid(&self, name: &str, what: String) -> Error {
        Error::Tensor {
            path: self.path.to_path_buf(),
            name: self.full_name(name),
            what,
        }
    }
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
    let slots: Vec<_> = set.iter().map(|(l, t, _)| (l, t)).collect();
    for (layer, target) in slots {
        let src = FileSource {
            st: &st,
            path: &path,
            slot: Some((layer, target)),
        };
        let a = set
            .get_mut(layer, target)
            .ok_or_else(|| Error::Invalid("adapter slot vanished".into()))?;
        for (i, p) in a.params().iter().enumerate() {
            let v = src.f32s(p.name, p.numel())?;
            let dst = a
                .param_mut(i)
                .ok_or_else(|| Error::Invalid("no tensor".into()))?;
            dst.copy_from_slice(&v);
        }
        a.load_extra_state(&src)?;
    }
    hooks.restore_state(&FileSource {
        st: &st,
        path: &path,
        slot: None,
    })
}

/// The adapter set of method checkpoint `dir` on the base model `file` (whose weights the
/// methods that read `Ŵ` copy again): what `edgetune merge` loads for DoRA and HiRA, which
/// have no plain-LoRA form.
pub fn load_set(dir: &Path, file: &edgetune_core::gguf::GgufFile) -> Result<AdapterSet> {
    let meta = read_meta(dir)?;
    let model = edgetune_core::model::LlamaConfig::from_gguf(file)?;
    if meta.n_layer != model.n_layer {
        return Err(Error::Invalid(format!(
            "{}: the adapter is for a {}-layer model, the base has {} layers",
            dir.join(METHOD_JSON).display(),
            meta.n_layer,
            model.n_layer
        )));
    }
    let weights = edgetune_core::model::LlamaWeights::from_gguf(file, &model)?;
    let cfg = super::TrainConfig {
        lora: meta.lora.clone(),
        method: meta.method,
        method_opts: meta.method_opts.clone(),
        ..super::TrainConfig::default()
    };
    // Any schedule length AdaLoRA accepts: the step count only shapes the training budget.
    let steps = meta.method_opts.adalora_tinit + meta.method_opts.adalora_tfinal + 1;
    let mut set =
        super::adapter_set::build_adapters(meta.method, &model, &cfg, steps, 0, Some(&weights))?;
    let mut hooks = MethodHooks::with_options(meta.method, &set, &meta.method_opts)?;
    load_into(dir, &mut set, &mut hooks)?;
    Ok(set)
}
