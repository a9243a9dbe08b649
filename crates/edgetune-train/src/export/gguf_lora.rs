//! llama.cpp's GGUF LoRA adapter (docs/FORMATS.md#gguf-lora), exactly what `--lora FILE` loads:
//! `general.type = adapter`, `general.architecture = llama`, `adapter.type = lora`,
//! `adapter.lora.alpha` (f32), and per adapted linear `blk.N.<stem>.weight.lora_a` (ne
//! `[in, r]`) and `.lora_b` (ne `[r, out]`) — row-major `A` `[r, in]` and `B` `[out, r]`, the
//! same bytes, no transpose. llama.cpp scales each pair by `alpha / r` with `r` read from
//! `lora_b`'s ne[0], so rank may differ per tensor.
//!
//! One alpha per file: plain LoRA writes the set's alpha; rsLoRA (`s = alpha/√r`) writes
//! `alpha·√r`, so `alpha'/r` is the same scale; a module whose scale the file's rule cannot
//! give (rsLoRA at another rank, a per-module alpha) gets it folded into `B` ([`super::lowrank`]).
//! Types: F32, F16, BF16, and Q8_0 where the row length (ne[0]) is a multiple of 32 — a B of
//! rank < 32 falls back to F16, as llama.cpp's converter does.

use std::path::Path;

use serde::Serialize;

use super::collect::{Collector, Half, ReadTensor, build_set, common_rank, targets_of};
use super::lowrank::{b_for_scale, low_rank_modules};
use super::{codec, native::parse_layer};
use edgetune_core::adapters::AdapterSet;
use edgetune_core::adapters::{LoraConfig, Target};
use edgetune_core::gguf::{GgufFile, GgufWriter, Value};
use edgetune_core::model::LlamaConfig;
use edgetune_core::model::config::ARCH;
use edgetune_core::quant::GgmlType;
use edgetune_core::{Error, Result};

pub const GENERAL_TYPE_KEY: &str = "general.type";
pub const ADAPTER_TYPE_KEY: &str = "adapter.type";
pub const ALPHA_KEY: &str = "adapter.lora.alpha";

/// One tensor written.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExportedTensor {
    pub name: String,
    /// ne order.
    pub dims: Vec<u64>,
    #[serde(rename = "type")]
    pub ty: String,
}

/// What [`export_gguf`] wrote.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GgufExport {
    /// `adapter.lora.alpha`.
    pub alpha: f32,
    pub tensors: Vec<ExportedTensor>,
    /// Modules whose scale was folded into `lora_b`.
    pub folded: Vec<String>,
}

/// The types llama.cpp loads adapters in.
pub const EXPORT_TYPES: [GgmlType; 4] =
    [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0];

/// The file's alpha for `cfg`: `alpha`, or `alpha·√r` under rsLoRA; never 0 (llama.cpp reads
/// 0 as "no scaling", so a zero scale is written as `r` with `B` folded to zero).
pub fn file_alpha(cfg: &LoraConfig) -> f32 {
    let a = if cfg.rslora {
        (cfg.alpha as f64 * (cfg.rank as f64).sqrt()) as f32
    } else {
        cfg.alpha
    };
    if a == 0.0 || !a.is_finite() {
        cfg.rank as f32
    } else {
        a
    }
}

/// The type a tensor of row length `row_len` is written in when `ty` is asked for.
fn type_for(ty: GgmlType, row_len: usize) -> GgmlType {
    if row_len.is_multiple_of(ty.block_elems()) {
        ty
    } else {
        GgmlType::F16
    }
}

/// `blk.{layer}.{stem}.weight.lora_a|lora_b`.
pub fn tensor_name(layer: usize, target: Target, half: Half) -> String {
    let h = match half {
        Half::A => "lora_a",
        Half::B => "lora_b",
    };
    format!("blk.{layer}.{}.weight.{h}", target.gguf_stem())
}

/// Writes `set` (checked against `model`) as a llama.cpp LoRA GGUF at `out`, atomically.
pub fn export_gguf(
    set: &AdapterSet,
    model: &LlamaConfig,
    out: &Path,
    ty: GgmlType,
) -> Result<GgufExport> {
    if !EXPORT_TYPES.contains(&ty) {
        return Err(Error::Invalid(format!(
            "llama.cpp loads LoRA tensors in f32, f16, bf16 or q8_0, not {ty}"
        )));
    }
    set.check_fits(model)?;
    let modules = low_rank_modules(set)?;
    if modules.is_empty() {
        return Err(Error::Invalid(
            "the adapter set is empty: nothing to export".into(),
        ));
    }
    let alpha = file_alpha(set.lora_config());
    let mut w = GgufWriter::new(edgetune_core::gguf::DEFAULT_ALIGNMENT);
    w.add_kv("general.architecture", Value::String(ARCH.into()))?;
    w.add_kv(GENERAL_TYPE_KEY, Value::String("adapter".into()))?;
    w.add_kv(ADAPTER_TYPE_KEY, Value::String("lora".into()))?;
    w.add_kv(ALPHA_KEY, Value::F32(alpha))?;
    let mut report = GgufExport {
        alpha,
        tensors: Vec::new(),
        folded: Vec::new(),
    };
    // (values, type) per tensor, in file order; B is folded where the file's scale differs.
    let mut data = Vec::with_capacity(2 * modules.len());
    for m in &modules {
        // llama.cpp: scale = alpha / rank, in f32.
        let applied = alpha / m.rank as f32;
        let (b, folded) = b_for_scale(m, applied)?;
        if folded {
            report.folded.push(m.label());
        }
        for (half, dims, values) in [
            (
                Half::A,
                [m.in_f as u64, m.rank as u64],
                std::borrow::Cow::Borrowed(&m.a[..]),
            ),
            (Half::B, [m.rank as u64, m.out_f as u64], b),
        ] {
            let name = tensor_name(m.layer, m.target, half);
            let t = type_for(ty, dims[0] as usize);
            if t != ty {
                log::info!("{name}: rows of {} cannot be {ty}; written as {t}", dims[0]);
            }
            w.add_tensor(name.clone(), &dims, t)?;
            report.tensors.push(ExportedTensor {
                name,
                dims: dims.to_vec(),
                ty: t.name().into(),
            });
            data.push((values, t));
        }
    }
    w.write_to_path(out, |i, _info, sink| {
        let (values, t) = &data[i];
        sink.write_all(&codec::encode(*t, values)?)
    })?;
    Ok(report)
}

/// What a tensor name of an adapter GGUF refers to.
enum GgufName {
    Lora(usize, Target, Half),
    /// `*_norm.weight`: llama.cpp ignores these.
    Norm,
}

fn parse_name(name: &str) -> Option<GgufName> {
    if name.ends_with("_norm.weight") {
        return Some(GgufName::Norm);
    }
    let (base, half) = if let Some(b) = name.strip_suffix(".weight.lora_a") {
        (b, Half::A)
    } else {
        (name.strip_suffix(".weight.lora_b")?, Half::B)
    };
    let mut parts = base.split('.');
    let (blk, layer, stem) = (parts.next()?, parts.next()?, parts.next()?);
    if blk != "blk" || parts.next().is_some() {
        return None;
    }
    let target = Target::ALL.into_iter().find(|t| t.gguf_stem() == stem)?;
    Some(GgufName::Lora(parse_layer(layer)?, target, half))
}

/// Loads a llama.cpp LoRA GGUF for `model`. Each module gets `alpha` and its own rank (scale
/// `alpha / r`, as llama.cpp applies it; `alpha` absent or 0 = scale 1).
pub fn load_gguf_adapter(path: &Path, model: &LlamaConfig) -> Result<AdapterSet> {
    let f = GgufFile::open(path)?;
    let meta_err = |key: &str, what: String| Error::Metadata {
        path: path.to_path_buf(),
        key: key.into(),
        what,
    };
    match f.opt_str(GENERAL_TYPE_KEY)? {
        Some("adapter") => {}
        other => {
            return Err(meta_err(
                GENERAL_TYPE_KEY,
                format!("{other:?}: not an adapter (is this a base model? give it as --model)"),
            ));
        }
    }
    let arch = f.str("general.architecture")?;
    if arch != ARCH {
        return Err(meta_err(
            "general.architecture",
            format!("the adapter is for `{arch}` models, the base is `{ARCH}`"),
        ));
    }
    match f.opt_str(ADAPTER_TYPE_KEY)? {
        Some("lora") => {}
        other => {
            return Err(meta_err(
                ADAPTER_TYPE_KEY,
                format!("{other:?}: only \"lora\" adapters are supported"),
            ));
        }
    }
    let alpha = f.opt_f32(ALPHA_KEY)?.unwrap_or(0.0);
    if !alpha.is_finite() {
        return Err(meta_err(ALPHA_KEY, format!("{alpha} is not finite")));
    }
    let mut collector = Collector::new(path);
    for t in f.tensors() {
        let tensor_err = |what: String| Error::Tensor {
            path: path.to_path_buf(),
            name: t.name.clone(),
            what,
        };
        let (layer, target, half) = match parse_name(&t.name) {
            Some(GgufName::Lora(l, tg, h)) => (l, tg, h),
            Some(GgufName::Norm) => {
                log::warn!("{}: {} ignored (as llama.cpp does)", path.display(), t.name);
                continue;
            }
            None => {
                return Err(tensor_err(
                    "unexpected tensor: edgetune loads blk.N.<attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down>.weight.lora_a|lora_b".into(),
                ));
            }
        };
        if t.dims.len() != 2 {
            return Err(tensor_err(format!(
                "{} dims ({}), expected 2",
                t.dims.len(),
                t.shape_string()
            )));
        }
        let (ne0, ne1) = (t.dims[0] as usize, t.dims[1] as usize);
        let values = codec::decode(t.ty, f.tensor_data(t), ne0 * ne1)
            .map_err(|e| tensor_err(e.to_string()))?;
        let read = ReadTensor {
            name: t.name.clone(),
            shape: vec![ne1, ne0],
            values,
        };
        collector.add(layer, target, half, read)?;
    }
    let modules = collector.validate(model)?;
    let rank = common_rank(&modules);
    // alpha 0: llama.cpp applies scale 1 — alpha = r per module gives exactly that.
    let no_scaling = alpha == 0.0;
    let global = LoraConfig {
        rank,
        alpha: if no_scaling { rank as f32 } else { alpha },
        rslora: false,
        dropout: 0.0,
        targets: targets_of(&modules),
        // The slots say which layers are adapted.
        layers: None,
    };
    let g = global.clone();
    build_set(model, global, modules, 0, |m| {
        Ok(LoraConfig {
            rank: m.rank,
            alpha: if no_scaling { m.rank as f32 } else { g.alpha },
            ..g.clone()
        })
    })
}

/// Whether `path` starts with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_like_llama_cpp_pairs_them() {
        assert!(matches!(
            parse_name("blk.3.ffn_up.weight.lora_b"),
            Some(GgufName::Lora(3, Target::FfnUp, Half::B))
        ));
        assert!(matches!(
            parse_name("blk.0.attn_norm.weight"),
            Some(GgufName::Norm)
        ));
        for bad in [
            "blk.0.attn_q.weight",
            "token_embd.weight.lora_a",
            "blk.0.attn_q.lora_a",
            "blk.x.attn_q.weight.lora_a",
        ] {
            assert!(parse_name(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn rslora_alpha_gives_the_same_scale_under_alpha_over_r() {
        let cfg = LoraConfig {
            rank: 16,
            alpha: 8.0,
            rslora: true,
            ..LoraConfig::default()
        };
        // alpha' = 8·4 = 32 exactly; 32 / 16 = 2 = 8 / √16.
        assert_eq!(file_alpha(&cfg), 32.0);
        assert_eq!(file_alpha(&cfg) / 16.0, cfg.scale());
        let zero = LoraConfig { alpha: 0.0, ..cfg };
        assert_eq!(file_alpha(&zero), 16.0);
        assert_eq!(type_for(GgmlType::Q8_0, 8), GgmlType::F16);
        assert_eq!(type_for(GgmlType::Q8_0, 64), GgmlType::Q8_0);
    }
}
