//! The weights' share of a training budget: what the planner needs from a model
//! ([`ModelWeights`], from a GGUF header or a test-model preset) and which weight bytes stay
//! resident during a step, by type ([`weights_breakdown`]): everything a step reads, but only a
//! micro-batch's gathered rows of an untied embedding table, and only the two staging buffers
//! of streamed layers.

use std::collections::BTreeMap;

use serde::Serialize;

use super::stream::{StreamedLayers, is_layer_matrix, streamed_layers};
use crate::train::{StreamHead, TrainConfig, WeightsMode};
use edgetune_core::Result;
use edgetune_core::gguf::{GgufFile, Metadata, TensorInfo};
use edgetune_core::model::LlamaConfig;
use edgetune_core::testmodel::{Preset, Vocabulary, WeightTypes, plan_test_model};

/// What the budget needs from a model: its shapes, its tensors (name, type, size), the size of
/// the header (read at open) and the tokenizer's size.
#[derive(Clone, Debug)]
pub struct ModelWeights {
    /// For messages (the file name, or a preset name).
    pub name: String,
    pub config: LlamaConfig,
    pub tensors: Vec<TensorInfo>,
    /// Bytes before the data section: header, metadata and tensor infos.
    pub header_bytes: u64,
    /// Tokens + merge rules of the tokenizer ([`tokenizer_entries`]).
    pub tokenizer_entries: u64,
}

impl ModelWeights {
    /// From an open file's header (no tensor data is read).
    pub fn from_gguf(file: &GgufFile) -> Result<ModelWeights> {
        Ok(ModelWeights {
            name: file.path().display().to_string(),
            config: LlamaConfig::from_gguf(file)?,
            tensors: file.tensors().to_vec(),
            header_bytes: file.data_offset(),
            tokenizer_entries: tokenizer_entries(file.metadata()),
        })
    }
}

impl ModelWeights {
    /// The model `edgetune testmodel --preset p --type types` would write (its tensor infos and
    /// header, with the synthetic vocabulary), without writing it. The synthetic Llama 3
    /// vocabulary has 127,744 merges where the real one has 280,147, so its tokenizer counts
    /// 37 MiB less than a real Llama 3 file's.
    pub fn from_preset(p: &Preset, types: WeightTypes) -> Result<ModelWeights> {
        let w = plan_test_model(p, types, &Vocabulary::Synthetic)?;
        let data_end = w
            .tensors()
            .iter()
            .map(|t| t.offset + t.n_bytes)
            .max()
            .unwrap_or(0);
        let data = data_end.div_ceil(32) * 32;
        Ok(ModelWeights {
            name: format!("preset {} ({})", p.name, types_label(types)),
            config: p.llama_config(),
            tensors: w.tensors().to_vec(),
            header_bytes: w.file_size()?.saturating_sub(data),
            tokenizer_entries: tokenizer_entries(w.metadata()),
        })
    }
}

/// `q4_0`, `q4_0 pure`, `q4_k_m`.
fn types_label(types: WeightTypes) -> String {
    match types {
        WeightTypes::Uniform(t) => format!("{} pure", t.name().to_ascii_lowercase()),
        WeightTypes::LlamaCpp(t) => t.name().to_ascii_lowercase(),
        WeightTypes::Q4KM => "q4_k_m".into(),
    }
}

/// `tokenizer.ggml.tokens` + `tokenizer.ggml.merges` entries (0 for absent keys).
pub fn tokenizer_entries(metadata: &Metadata) -> u64 {
    ["tokenizer.ggml.tokens", "tokenizer.ggml.merges"]
        .iter()
        .filter_map(|k| match metadata.get(k) {
            Some(edgetune_core::gguf::Value::Array(a)) => Some(a.len() as u64),
            _ => None,
        })
        .sum()
}

/// Weight bytes of one ggml type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TypeBytes {
    pub ty: String,
    pub tensors: usize,
    /// Bytes in the file.
    pub file_bytes: u64,
    /// Bytes that must stay resident during a step.
    pub resident_bytes: u64,
}

/// A tensor whose rows are only gathered (the untied `token_embd`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GatheredRows {
    pub tensor: String,
    pub rows_per_step: u64,
    pub n_rows: u64,
    pub row_bytes: u64,
    pub file_bytes: u64,
    pub resident_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WeightsBreakdown {
    pub by_type: Vec<TypeBytes>,
    pub file_bytes: u64,
    pub resident_bytes: u64,
    /// `Some` when `token_embd` counts only its gathered rows.
    pub gathered: Option<GatheredRows>,
    /// `--lock-weights`: the whole map counts.
    pub locked: bool,
    /// `Some` when the layers are streamed (`--weights stream`, or chosen by the plan).
    pub streamed: Option<StreamedLayers>,
}

/// Resident weight bytes by type; the untied `token_embd` counts only the staging copy of the
/// rows one micro-batch of `tokens` gathers (unless locked); streamed, the layers' matrices
/// count as their two staging buffers.
pub(crate) fn weights_breakdown(
    model: &ModelWeights,
    tokens: u64,
    cfg: &TrainConfig,
) -> Result<WeightsBreakdown> {
    let locked = cfg.lock_weights;
    let streaming = cfg.weights == WeightsMode::Stream;
    let tied = !model.tensors.iter().any(|t| t.name == "output.weight");
    // A streamed head (model/stream.rs) holds none of itself; a tied one's embedding rows are
    // then gathered by reads like an untied table's.
    let head_streamed = streaming && cfg.stream_head == StreamHead::On;
    let head_name = if tied {
        "token_embd.weight"
    } else {
        "output.weight"
    };
    let mut by_type: BTreeMap<&str, TypeBytes> = BTreeMap::new();
    let mut gathered = None;
    for t in &model.tensors {
        let resident = if streaming && is_layer_matrix(&t.name) {
            0
        } else if t.name == "token_embd.weight" && (!tied || head_streamed) && !locked {
            // The step reads its rows with `pread` into a staging buffer of one micro-batch
            // (`train::embed_rows`: mapped, the kernel's folios and fault-around made 512 rows
            // of the 8B table cost 92 MiB); the table itself is never mapped in.
            let rows = tokens;
            let bytes = rows.saturating_mul(t.row_bytes());
            gathered = Some(GatheredRows {
                tensor: t.name.clone(),
                rows_per_step: rows,
                n_rows: t.n_rows(),
                row_bytes: t.row_bytes(),
                file_bytes: t.n_bytes,
                resident_bytes: bytes,
            });
            bytes
        } else if head_streamed && t.name == head_name {
            0
        } else {
            t.n_bytes
        };
        let e = by_type.entry(t.ty.name()).or_insert_with(|| TypeBytes {
            ty: t.ty.name().to_string(),
            tensors: 0,
            file_bytes: 0,
            resident_bytes: 0,
        });
        e.tensors += 1;
        e.file_bytes += t.n_bytes;
        e.resident_bytes += resident;
    }
    let by_type: Vec<TypeBytes> = by_type.into_values().collect();
    let streamed = if streaming {
        Some(streamed_layers(model, cfg)?)
    } else {
        None
    };
    let resident = by_type.iter().map(|t| t.resident_bytes).sum::<u64>()
        + streamed.as_ref().map_or(0, |s| s.staging_bytes);
    Ok(WeightsBreakdown {
        file_bytes: by_type.iter().map(|t| t.file_bytes).sum(),
        resident_bytes: resident,
        by_type,
        gathered,
        locked,
        streamed,
    })
}
