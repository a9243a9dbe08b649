//! Hugging Face PEFT LoRA directories (docs/FORMATS.md#peft-directory): `adapter_config.json`,
//! `adapter_model.safetensors` (metadata `format = pt`) and a `README.md`.
//!
//! Tensors are named `base_model.model.model.layers.{L}.{self_attn|mlp}.{q_proj…}.lora_{A|B}.weight`,
//! `A` `[r, in]`, `B` `[out, r]`, exactly our row-major layout — except that the rows of
//! `q_proj`'s and `k_proj`'s `B` are in HF order: un-permuted on export and permuted on import
//! ([`super::qk_permute`]), since we train against the GGUF's row order.
//!
//! Scales: PEFT applies `lora_alpha / r` (`/ √r` with `use_rslora`), per module with
//! `rank_pattern` / `alpha_pattern`. Export writes the set's alpha and rank, a `rank_pattern`
//! entry per module of another rank, and folds any other scale into `B`. Import gives each
//! module its pattern's rank (checked against the tensors) and alpha.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use safetensors::tensor::{SafeTensors, TensorView};
use serde::Serialize;
use serde_json::{Map, Value as Json};

use super::collect::{Collector, Half, ReadTensor, build_set, targets_of};
use super::lowrank::{b_for_scale, low_rank_modules};
use super::native::parse_layer;
use super::peft_config::{CONFIG_FILE, PeftConfig, lookup, module_key, parent_module};
use super::qk_permute::{gguf_to_hf_rows, hf_to_gguf_rows};
use super::{codec, readme, sha256};
use edgetune_core::adapters::AdapterSet;
use edgetune_core::adapters::{LoraConfig, Target};
use edgetune_core::atomic_file as atomic;
use edgetune_core::model::LlamaConfig;
use edgetune_core::quant::GgmlType;
use edgetune_core::{Error, Result};

pub const TENSORS_FILE: &str = "adapter_model.safetensors";
pub const README_FILE: &str = "README.md";

/// `base_model.model.model.layers.{layer}.{parent}.{proj}.lora_{A|B}.weight`.
pub fn tensor_name(layer: usize, target: Target, half: Half) -> String {
    format!(
        "base_model.model.{}.lora_{half:?}.weight",
        module_key(layer, target)
    )
}

/// Options of [`export_peft`].
#[derive(Clone, Debug)]
pub struct PeftOptions {
    /// F32, F16 or BF16.
    pub dtype: GgmlType,
    /// `base_model_name_or_path` (a Hugging Face id), if known.
    pub base_model_name_or_path: Option<String>,
    /// The base GGUF the adapter was trained on: its name and SHA-256 go into the README.
    pub base_file: Option<PathBuf>,
    /// Training configuration, metrics, … (a JSON object) for the README.
    pub notes: Json,
}

impl Default for PeftOptions {
    fn default() -> Self {
        PeftOptions {
            dtype: GgmlType::F32,
            base_model_name_or_path: None,
            base_file: None,
            notes: Json::Null,
        }
    }
}

/// What [`export_peft`] wrote.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeftExport {
    pub tensors: Vec<(String, Vec<usize>)>,
    pub dtype: String,
    /// Modules whose scale was folded into `lora_B`.
    pub folded: Vec<String>,
    pub base_sha256: Option<String>,
}

/// The number of heads whose rows `target`'s outputs are permuted by, if any.
fn permuted_heads(model: &LlamaConfig, target: Target) -> Option<usize> {
    match target {
        Target::AttnQ => Some(model.n_head),
        Target::AttnK => Some(model.n_head_kv),
        _ => None,
    }
}

/// Writes `set` (checked against `model`) as a PEFT directory `dir` (created if needed).
pub fn export_peft(
    set: &AdapterSet,
    model: &LlamaConfig,
    dir: &Path,
    opts: &PeftOptions,
) -> Result<PeftExport> {
    let st_dtype = match opts.dtype {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => codec::safetensors_dtype(opts.dtype),
        _ => None,
    }
    .ok_or_else(|| {
        Error::Invalid(format!(
            "PEFT tensors are f32, f16 or bf16, not {}",
            opts.dtype
        ))
    })?;
    set.check_fits(model)?;
    let modules = low_rank_modules(set)?;
    if modules.is_empty() {
        return Err(Error::Invalid(
            "the adapter set is empty: nothing to export".into(),
        ));
    }
    let g = set.lora_config();
    let mut rank_pattern = Map::new();
    let mut folded = Vec::new();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(2 * modules.len());
    for m in &modules {
        let applied = LoraConfig {
            rank: m.rank,
            ..g.clone()
        }
        .scale();
        let (b, was_folded) = b_for_scale(m, applied)?;
        if was_folded {
            folded.push(m.label());
        }
        if m.rank != g.rank {
            rank_pattern.insert(module_key(m.layer, m.target), m.rank.into());
        }
        let b = match permuted_heads(model, m.target) {
            Some(heads) => Cow::Owned(gguf_to_hf_rows(&b, heads, m.rank)?),
            None => b,
        };
        tensors.push((
            tensor_name(m.layer, m.target, Half::A),
            vec![m.rank, m.in_f],
            codec::encode(opts.dtype, &m.a)?,
        ));
        tensors.push((
            tensor_name(m.layer, m.target, Half::B),
            vec![m.out_f, m.rank],
            codec::encode(opts.dtype, &b)?,
        ));
    }
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(st_dtype, shape.clone(), bytes)
                .map(|v| (name.as_str(), v))
                .map_err(|e| {
                    Error::Invalid(format!(
                        "tensor {name}: {}",
                        super::codec::safetensors_what(e)
                    ))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let st_meta = Some([("format".to_string(), "pt".to_string())].into());
    let bytes = safetensors::serialize(views, &st_meta).map_err(|e| {
        Error::Invalid(format!(
            "serialising {TENSORS_FILE}: {}",
            super::codec::safetensors_what(e)
        ))
    })?;

    let cfg = PeftConfig {
        r: g.rank,
        lora_alpha: g.alpha as f64,
        lora_dropout: g.dropout as f64,
        use_rslora: g.rslora,
        rank_pattern,
        alpha_pattern: Map::new(),
        target_modules: targets_of_modules(&modules),
        layers_to_transform: {
            let mut layers: Vec<usize> = modules.iter().map(|m| m.layer).collect();
            layers.sort_unstable();
            layers.dedup();
            (layers.len() < model.n_layer).then_some(layers)
        },
        base_model_name_or_path: opts.base_model_name_or_path.clone(),
    };
    let base_sha256 = match &opts.base_file {
        Some(p) => Some(sha256::file_sha256(p)?),
        None => None,
    };
    let readme = readme::peft_readme(&readme::ReadmeInfo {
        config: &cfg,
        model,
        n_modules: modules.len(),
        base_file: opts.base_file.as_deref(),
        base_sha256: base_sha256.as_deref(),
        folded: &folded,
        notes: &opts.notes,
    });
    let mut config_text = serde_json::to_string_pretty(&cfg.to_json())
        .map_err(|e| Error::Invalid(format!("serialising {CONFIG_FILE}: {e}")))?;
    config_text.push('\n');

    atomic::ensure_dir(dir)?;
    atomic::write_bytes(&dir.join(TENSORS_FILE), &bytes)?;
    atomic::write_bytes(&dir.join(CONFIG_FILE), config_text.as_bytes())?;
    atomic::write_bytes(&dir.join(README_FILE), readme.as_bytes())?;
    Ok(PeftExport {
        tensors: tensors.into_iter().map(|(n, s, _)| (n, s)).collect(),
        dtype: opts.dtype.name().into(),
        folded,
        base_sha256,
    })
}

/// PEFT names of the targets present, in block order.
fn targets_of_modules(modules: &[super::lowrank::LowRank<'_>]) -> Vec<String> {
    Target::ALL
        .into_iter()
        .filter(|t| modules.iter().any(|m| m.target == *t))
        .map(|t| t.peft_name().to_string())
        .collect()
}

/// What a PEFT tensor name refers to (`None`: not a LoRA tensor we know).
fn parse_name(name: &str) -> std::result::Result<(usize, Target, Half), &'static str> {
    const UNKNOWN: &str = "unexpected tensor (expected base_model.model.model.layers.N.<self_attn|mlp>.<q|k|v|o|gate|up|down>_proj.lora_<A|B>.weight)";
    if name.contains("lora_magnitude_vector") {
        return Err("a DoRA magnitude vector: DoRA adapters are not supported yet");
    }
    if name.contains("lora_embedding") || name.contains("embed_tokens") || name.contains("lm_head")
    {
        return Err("an embedding or output adapter: edgetune adapts the block projections only");
    }
    let rest = name.strip_prefix("base_model.model.").unwrap_or(name);
    let (base, half) = if let Some(b) = rest.strip_suffix(".lora_A.weight") {
        (b, Half::A)
    } else if let Some(b) = rest.strip_suffix(".lora_B.weight") {
        (b, Half::B)
    } else {
        return Err(UNKNOWN);
    };
    let parts: Vec<&str> = base.split('.').collect();
    let [model, layers, layer, parent, proj] = parts[..] else {
        return Err(UNKNOWN);
    };
    if model != "model" || layers != "layers" {
        return Err(UNKNOWN);
    }
    let layer = parse_layer(layer).ok_or(UNKNOWN)?;
    let target = Target::ALL
        .into_iter()
        .find(|t| t.peft_name() == proj)
        .ok_or(UNKNOWN)?;
    if parent_module(target) != parent {
        return Err(
            "the projection sits under the wrong parent (q/k/v/o_proj under self_attn, gate/up/down_proj under mlp)",
        );
    }
    Ok((layer, target, half))
}

/// Loads a PEFT LoRA directory for `model`.
pub fn load_peft(dir: &Path, model: &LlamaConfig) -> Result<AdapterSet> {
    let cfg = PeftConfig::read(dir)?;
    let st_path = dir.join(TENSORS_FILE);
    if !st_path.exists() && dir.join("adapter_model.bin").exists() {
        return Err(Error::Invalid(format!(
            "{}: only adapter_model.bin (a PyTorch pickle); edgetune reads {TENSORS_FILE} — re-save with safe_serialization=True",
            dir.display()
        )));
    }
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
        let (layer, target, half) =
            parse_name(&name).map_err(|what| tensor_err(&name, what.into()))?;
        let view = st
            .tensor(&name)
            .map_err(|e| tensor_err(&name, e.to_string()))?;
        let shape = view.shape().to_vec();
        let n: usize = shape.iter().product();
        let values = codec::decode_safetensors(view.dtype(), view.data(), n).ok_or_else(|| {
            tensor_err(
                &name,
                format!("dtype {:?}: expected F32, F16, BF16 or F64", view.dtype()),
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
    let mut modules = collector.validate(model)?;
    let cfg_path = dir.join(CONFIG_FILE);
    let meta_err = |key: &str, what: String| Error::Metadata {
        path: cfg_path.clone(),
        key: key.into(),
        what,
    };
    let mut module_cfgs = Vec::with_capacity(modules.len());
    for m in &mut modules {
        // Shapes are validated, so the rows of B are whole heads.
        if let Some(heads) = permuted_heads(model, m.target) {
            m.b = hf_to_gguf_rows(&m.b, heads, m.rank)?;
        }
        let key = module_key(m.layer, m.target);
        let rank = match lookup(&cfg.rank_pattern, &key) {
            None => cfg.r,
            Some((k, v)) => v
                .as_u64()
                .ok_or_else(|| meta_err("rank_pattern", format!("{k}: {v} is not an integer")))?
                as usize,
        };
        if rank != m.rank {
            return Err(tensor_err(
                &m.a_name,
                format!(
                    "rank {}, but {CONFIG_FILE} gives {key} rank {rank} (r / rank_pattern)",
                    m.rank
                ),
            ));
        }
        let alpha = match lookup(&cfg.alpha_pattern, &key) {
            None => cfg.lora_alpha,
            Some((k, v)) => v
                .as_f64()
                .ok_or_else(|| meta_err("alpha_pattern", format!("{k}: {v} is not a number")))?,
        };
        module_cfgs.push(alpha as f32);
    }
    let global = LoraConfig {
        rank: cfg.r,
        alpha: cfg.lora_alpha as f32,
        rslora: cfg.use_rslora,
        dropout: cfg.lora_dropout as f32,
        targets: targets_of(&modules),
        // The slots say which layers are adapted.
        layers: None,
    };
    global
        .validate()
        .map_err(|e| meta_err("lora_alpha / lora_dropout", e.to_string()))?;
    let g = global.clone();
    let mut alphas = module_cfgs.into_iter();
    build_set(model, global, modules, 0, |m| {
        Ok(LoraConfig {
            rank: m.rank,
            alpha: alphas.next().unwrap_or(g.alpha),
            ..g.clone()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_refuse_with_reasons() {
        assert_eq!(
            parse_name("base_model.model.model.layers.7.mlp.down_proj.lora_B.weight"),
            Ok((7, Target::FfnDown, Half::B))
        );
        assert_eq!(
            tensor_name(7, Target::AttnK, Half::A),
            "base_model.model.model.layers.7.self_attn.k_proj.lora_A.weight"
        );
        assert!(
            parse_name("base_model.model.model.layers.0.mlp.q_proj.lora_A.weight")
                .unwrap_err()
                .contains("wrong parent")
        );
        assert!(
            parse_name("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector")
                .unwrap_err()
                .contains("DoRA")
        );
        assert!(
            parse_name("base_model.model.lm_head.lora_A.weight")
                .unwrap_err()
                .contains("block projections")
        );
        assert!(parse_name("base_model.model.model.layers.0.self_attn.q_proj.weight").is_err());
    }
}
