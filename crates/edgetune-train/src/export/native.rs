//! Our adapter format (a directory), used for checkpoints and as the import/export hub:
//!
//! - `adapter.safetensors`: every trainable tensor in f32, named
//!   [`edgetune_core::adapters::set::tensor_name`] (`blk.3.attn_q.lora_A`), row-major with the
//!   shapes of [`edgetune_core::adapters::Adapter::params`] (`lora_A` `[r, in]`, `lora_B` `[out, r]`);
//!   safetensors metadata `format = edgetune-adapter`.
//! - `adapter.json`: `{"format": "edgetune-adapter", "version": 1, "method": "lora",
//!   "lora": <LoraConfig>, "n_layer": N, "rank_pattern": {"blk.3.attn_q": 4}, …extra}`.
//!   `rank_pattern` lists the modules whose rank is not `lora.rank` (absent when none); the
//!   caller's extra keys (training config, step, metrics, `seed`) sit beside ours. An integer
//!   `seed` there is used to derive each adapter's dropout seed on load, as
//!   [`AdapterSet::new_lora`] does, so resumed training sees the same dropout masks.
//!
//! Each file is written atomically (temporary file, fsync, rename), tensors first. Save then
//! load is bit-exact: the f32 values are stored as they are.

use std::borrow::Cow;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView, View};
use serde_json::{Map, Value as Json};

use super::collect::{Collector, Half, ReadTensor, build_set, with_rank};
use super::lowrank::{b_for_scale, low_rank_modules};
use edgetune_core::adapters::AdapterSet;
use edgetune_core::adapters::set::tensor_name;
use edgetune_core::adapters::{LoraConfig, Target};
use edgetune_core::atomic_file as atomic;
use edgetune_core::model::LlamaConfig;
use edgetune_core::{Error, Result};

/// `format` of `adapter.json` and of the safetensors metadata.
pub const FORMAT: &str = "edgetune-adapter";
/// The version this build writes and reads.
pub const VERSION: u64 = 1;
/// File names inside the directory.
pub const ADAPTER_JSON: &str = "adapter.json";
pub const ADAPTER_TENSORS: &str = "adapter.safetensors";
/// A checkpoint's full method state beside the plain-LoRA files (written and read by the
/// trainer's `method_io`; named here because a directory holding only these is what
/// [`super::detect_format`] reports as a merge-only checkpoint).
pub const METHOD_JSON: &str = "method.json";
pub const METHOD_TENSORS: &str = "method.safetensors";

/// Keys of `adapter.json` that `extra_meta` may not set.
const RESERVED: [&str; 6] = [
    "format",
    "version",
    "method",
    "lora",
    "n_layer",
    "rank_pattern",
];

/// One tensor handed to safetensors. With `owner` (a paged adapter), its bytes are copied out
/// and the adapter released right away: safetensors asks each tensor for its data once, as it
/// writes it, so the save brings in one adapter's pages at a time.
struct TensorOut<'a> {
    view: TensorView<'a>,
    owner: Option<&'a dyn edgetune_core::adapters::Adapter>,
}

impl View for TensorOut<'_> {
    fn dtype(&self) -> Dtype {
        self.view.dtype()
    }
    fn shape(&self) -> &[usize] {
        self.view.shape()
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let Some(a) = self.owner else {
            return Cow::Borrowed(self.view.data());
        };
        let bytes = self.view.data().to_vec();
        if let Err(e) = a.release_params() {
            // The values are written; the pages only stay resident (and the caller's
            // `release_all` after the save reports a lasting failure).
            log::warn!("adapter save: releasing paged weights: {e}");
        }
        Cow::Owned(bytes)
    }
    fn data_len(&self) -> usize {
        self.view.data_len()
    }
}

/// Writes `set` into `dir` (created if needed): `adapter.safetensors`, then `adapter.json` with
/// the keys of `extra_meta` (an object, or null) added.
pub fn save_adapter(set: &AdapterSet, dir: &Path, extra_meta: &Json) -> Result<()> {
    let extra = match extra_meta {
        Json::Null => Map::new(),
        Json::Object(m) => m.clone(),
        other => {
            return Err(Error::Invalid(format!(
                "adapter metadata must be a JSON object, got {other}"
            )));
        }
    };
    if let Some(k) = RESERVED.iter().find(|k| extra.contains_key(**k)) {
        return Err(Error::Invalid(format!(
            "adapter metadata key `{k}` is reserved for the format"
        )));
    }
    // Any method whose adapters export as plain low-rank pairs (LoRA, AdaLoRA's folded
    // `B·diag(e)`, OLoRA/PiSSA's rank-2r pair, DyLoRA at its evaluation rank) is written in
    // its exported form; merge-only ones (DoRA, HiRA) are refused by `low_rank_modules`.
    let global = set.lora_config();
    global.validate()?;
    let modules = low_rank_modules(set)?;
    let mut rank_pattern = Map::new();
    // Paged adapter weights (`--adapter-weights disk`): each adapter is released as soon as its
    // tensors are written, so a save holds one adapter's pages, not all of them.
    let paged = set.params_paged();
    // (name, shape, f32 values, the adapter to release after) in slot order; B is borrowed
    // unless a scale had to be folded.
    let mut tensors = Vec::with_capacity(2 * modules.len());
    for m in &modules {
        let own_rule = with_rank(global, m.rank).scale();
        let (b, _) = b_for_scale(m, own_rule)?;
        if m.rank != global.rank {
            rank_pattern.insert(m.label(), Json::from(m.rank));
        }
        let owner = set.get(m.layer, m.target).filter(|_| paged);
        tensors.push((
            tensor_name(m.layer, m.target, "lora_A"),
            vec![m.rank, m.in_f],
            std::borrow::Cow::Borrowed(&m.a[..]),
            owner,
        ));
        tensors.push((
            tensor_name(m.layer, m.target, "lora_B"),
            vec![m.out_f, m.rank],
            b,
            owner,
        ));
    }
    let views = tensors
        .iter()
        .map(|(name, shape, v, owner)| {
            TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(v))
                .map(|view| {
                    let owner = *owner;
                    (name.as_str(), TensorOut { view, owner })
                })
                .map_err(|e| {
                    Error::Invalid(format!(
                        "tensor {name}: {}",
                        super::codec::safetensors_what(e)
                    ))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let st_meta = Some([("format".to_string(), FORMAT.to_string())].into());
    // Streamed tensor by tensor into a temporary file (no whole-file buffer: an 8B adapter is
    // 160 MiB, which the memory plan does not hold), then fsynced and renamed.
    atomic::ensure_dir(dir)?;
    let st_path = dir.join(ADAPTER_TENSORS);
    let tmp = atomic::temp_path(&st_path);
    let written = safetensors::serialize_to_file(views, &st_meta, &tmp)
        .map_err(|e| super::codec::safetensors_error(&st_path, e))
        .and_then(|()| {
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &st_path))
                .map_err(|e| Error::io(&st_path, e))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;

    let mut meta = Map::new();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("version".into(), VERSION.into());
    meta.insert("method".into(), "lora".into());
    meta.insert("lora".into(), to_json(global)?);
    meta.insert("n_layer".into(), set.n_layer().into());
    if !rank_pattern.is_empty() {
        meta.insert("rank_pattern".into(), Json::Object(rank_pattern));
    }
    meta.extend(extra);
    let mut text = serde_json::to_string_pretty(&Json::Object(meta))
        .map_err(|e| Error::Invalid(format!("serialising {ADAPTER_JSON}: {e}")))?;
    text.push('\n');

    atomic::write_bytes(&dir.join(ADAPTER_JSON), text.as_bytes())
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Json> {
    serde_json::to_value(v).map_err(|e| Error::Invalid(format!("serialising to JSON: {e}")))
}

/// `dir/adapter.json`, parsed and checked for our format and version (not yet against a model).
pub fn read_adapter_json(dir: &Path) -> Result<Map<String, Json>> {
    let path = dir.join(ADAPTER_JSON);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let meta_err = |key: &str, what: String| Error::Metadata {
        path: path.clone(),
        key: key.into(),
        what,
    };
    let Json::Object(meta) = serde_json::from_str::<Json>(&text)
        .map_err(|e| meta_err("(file)", format!("not valid JSON: {e}")))?
    else {
        return Err(meta_err("(file)", "not a JSON object".into()));
    };
    match meta.get("format").and_then(Json::as_str) {
        Some(FORMAT) => {}
        other => {
            return Err(meta_err(
                "format",
                format!("{other:?}: not an edgetune adapter (expected \"{FORMAT}\")"),
            ));
        }
    }
    match meta.get("version").and_then(Json::as_u64) {
        Some(VERSION) => {}
        Some(v) => {
            return Err(meta_err(
                "version",
                format!("version {v}; this edgetune reads version {VERSION}"),
            ));
        }
        None => return Err(meta_err("version", "missing or not an integer".into())),
    }
    match meta.get("method").and_then(Json::as_str) {
        Some("lora") => {}
        other => {
            return Err(meta_err(
                "method",
                format!("{other:?}: only \"lora\" adapters can be loaded"),
            ));
        }
    }
    Ok(meta)
}

/// The caller's keys of `dir/adapter.json` (everything but the format's own).
pub fn extra_meta(dir: &Path) -> Result<Map<String, Json>> {
    let mut meta = read_adapter_json(dir)?;
    meta.retain(|k, _| !RESERVED.contains(&k.as_str()));
    Ok(meta)
}

/// Loads `dir` for `model`, validating names, shapes and ranks (errors name the file, the
/// tensor and the numbers).
pub fn load_adapter(dir: &Path, model: &LlamaConfig) -> Result<AdapterSet> {
    let meta = read_adapter_json(dir)?;
    let json_path = dir.join(ADAPTER_JSON);
    let meta_err = |key: &str, what: String| Error::Metadata {
        path: json_path.clone(),
        key: key.into(),
        what,
    };
    let global: LoraConfig = serde_json::from_value(meta.get("lora").cloned().unwrap_or_default())
        .map_err(|e| meta_err("lora", format!("not a LoRA config: {e}")))?;
    global
        .validate()
        .map_err(|e| meta_err("lora", e.to_string()))?;
    let n_layer = meta
        .get("n_layer")
        .and_then(Json::as_u64)
        .ok_or_else(|| meta_err("n_layer", "missing or not an integer".into()))?;
    if n_layer != model.n_layer as u64 {
        return Err(meta_err(
            "n_layer",
            format!(
                "the adapter is for a {n_layer}-layer model, the base has {} layers",
                model.n_layer
            ),
        ));
    }
    let rank_pattern = match meta.get("rank_pattern") {
        None => Map::new(),
        Some(Json::Object(m)) => m.clone(),
        Some(other) => {
            return Err(meta_err("rank_pattern", format!("{other}: not an object")));
        }
    };
    let seed = match meta.get("seed") {
        None => 0,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| meta_err("seed", format!("{v}: not a non-negative integer")))?,
    };

    let st_path = dir.join(ADAPTER_TENSORS);
    let bytes = super::codec::map_file(&st_path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::Gguf {
        path: st_path.clone(),
        offset: 0,
        what: format!(
            "not a valid safetensors file: {}",
            super::codec::safetensors_what(e)
        ),
    })?;
    let tensor_err = |name: &str, what: String| Error::Tensor {
        path: st_path.clone(),
        name: name.into(),
        what,
    };
    let mut collector = Collector::new(&st_path);
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    for name in names {
        let view = st
            .tensor(&name)
            .map_err(|e| tensor_err(&name, e.to_string()))?;
        let (layer, target, half) = parse_name(&name).ok_or_else(|| {
            tensor_err(
                &name,
                "unexpected tensor (expected blk.N.<attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down>.lora_A|lora_B)".into(),
            )
        })?;
        if view.dtype() != Dtype::F32 {
            return Err(tensor_err(
                &name,
                format!("dtype {:?}, expected F32", view.dtype()),
            ));
        }
        let shape = view.shape().to_vec();
        let n: usize = shape.iter().product();
        let values =
            super::codec::decode_safetensors(Dtype::F32, view.data(), n).ok_or_else(|| {
                tensor_err(
                    &name,
                    format!("{} bytes for shape {shape:?}", view.data().len()),
                )
            })?;
        collector.add(
            layer,
            target,
            half,
            ReadTensor {
                name,
                shape,
                values,
            },
        )?;
    }
    let modules = collector.validate(model)?;
    for m in &modules {
        let label = format!("blk.{}.{}", m.layer, m.target.gguf_stem());
        let want = match rank_pattern.get(&label) {
            None => global.rank as u64,
            Some(v) => v.as_u64().ok_or_else(|| {
                meta_err("rank_pattern", format!("{label}: {v} is not an integer"))
            })?,
        };
        if m.rank as u64 != want {
            return Err(tensor_err(
                &m.a_name,
                format!(
                    "rank {}, but {ADAPTER_JSON} says {want} (lora.rank {}, rank_pattern)",
                    m.rank, global.rank
                ),
            ));
        }
    }
    let g = global.clone();
    build_set(model, global, modules, seed, |m| Ok(with_rank(&g, m.rank)))
}

/// `blk.{layer}.{gguf stem}.lora_A|lora_B` (canonical layer numbers only).
fn parse_name(name: &str) -> Option<(usize, Target, Half)> {
    let mut parts = name.split('.');
    let (blk, layer, stem, param) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if blk != "blk" || parts.next().is_some() {
        return None;
    }
    let layer = parse_layer(layer)?;
    let target = Target::ALL.into_iter().find(|t| t.gguf_stem() == stem)?;
    let half = match param {
        "lora_A" => Half::A,
        "lora_B" => Half::B,
        _ => return None,
    };
    Some((layer, target, half))
}

/// A layer number written canonically (`0`, `12`; not `01`, `+1`).
pub fn parse_layer(s: &str) -> Option<usize> {
    let n: usize = s.parse().ok()?;
    (n.to_string() == s).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_strictly() {
        assert_eq!(
            parse_name("blk.12.ffn_down.lora_B"),
            Some((12, Target::FfnDown, Half::B))
        );
        for bad in [
            "blk.01.attn_q.lora_A",
            "blk.1.q_proj.lora_A",
            "blk.1.attn_q.lora_a",
            "blk.1.attn_q.lora_A.x",
            "layers.1.attn_q.lora_A",
            "blk.+1.attn_q.lora_A",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }
}
