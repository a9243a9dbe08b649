//! What `edgetune inspect` reports about a GGUF file, as data: architecture, hyper-parameters,
//! tokenizer summary, every tensor, totals by type; and the dequantize-to-`.npy` export.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::gguf::{GgufFile, TensorInfo, Value};
use crate::npy::NpyWriter;
use crate::quant::GgmlType;
use crate::{Error, Result};

/// Arrays longer than this are summarised (length + first entries) in the metadata listing.
const MAX_ARRAY_SHOWN: usize = 8;

/// One tensor's line in the report.
#[derive(Debug, Serialize)]
pub struct TensorRow {
    pub name: String,
    /// GGUF dims, ne order (ne[0] contiguous).
    pub shape: Vec<u64>,
    #[serde(rename = "type")]
    pub ty: String,
    pub elements: u64,
    pub bytes: u64,
    /// Absolute offset of the data in the file.
    pub file_offset: u64,
}

/// Totals per ggml type.
#[derive(Debug, Serialize)]
pub struct TypeTotal {
    #[serde(rename = "type")]
    pub ty: String,
    pub tensors: usize,
    pub elements: u64,
    pub bytes: u64,
    /// Storage cost per weight.
    pub bits_per_weight: f64,
}

/// The tokenizer as the metadata describes it.
#[derive(Debug, Serialize)]
pub struct TokenizerSummary {
    pub model: Option<String>,
    pub pre: Option<String>,
    pub tokens: usize,
    pub merges: usize,
    /// Tokens whose `token_type` is 3 (control) or 4 (user-defined).
    pub special_tokens: usize,
    pub bos_token_id: Option<u64>,
    pub eos_token_id: Option<u64>,
    pub has_chat_template: bool,
}

/// Everything `inspect` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    pub file: String,
    pub file_bytes: u64,
    pub gguf_version: u32,
    pub alignment: u64,
    pub data_offset: u64,
    pub architecture: Option<String>,
    pub name: Option<String>,
    /// `{arch}.*` keys (the hyper-parameters), values as JSON.
    pub hyperparameters: BTreeMap<String, serde_json::Value>,
    pub tokenizer: Option<TokenizerSummary>,
    /// Every other metadata key, large arrays summarised.
    pub metadata: BTreeMap<String, serde_json::Value>,
    pub tensors: Vec<TensorRow>,
    pub totals_by_type: Vec<TypeTotal>,
    pub total_elements: u64,
    pub total_tensor_bytes: u64,
}

fn array_len(v: Option<&Value>) -> usize {
    match v {
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

fn tokenizer_summary(f: &GgufFile) -> Result<Option<TokenizerSummary>> {
    if f.get("tokenizer.ggml.model").is_none() && f.get("tokenizer.ggml.tokens").is_none() {
        return Ok(None);
    }
    let special_tokens = match f.get("tokenizer.ggml.token_type") {
        Some(_) => f
            .i32_array("tokenizer.ggml.token_type")?
            .iter()
            .filter(|t| matches!(t, 3 | 4))
            .count(),
        None => 0,
    };
    Ok(Some(TokenizerSummary {
        model: f.opt_str("tokenizer.ggml.model")?.map(str::to_owned),
        pre: f.opt_str("tokenizer.ggml.pre")?.map(str::to_owned),
        tokens: array_len(f.get("tokenizer.ggml.tokens")),
        merges: array_len(f.get("tokenizer.ggml.merges")),
        special_tokens,
        bos_token_id: f.opt_u64("tokenizer.ggml.bos_token_id")?,
        eos_token_id: f.opt_u64("tokenizer.ggml.eos_token_id")?,
        has_chat_template: f.get("tokenizer.chat_template").is_some(),
    }))
}

/// Builds the report from the header alone (no tensor data is touched).
pub fn report(f: &GgufFile) -> Result<Report> {
    let architecture = f.opt_str("general.architecture")?.map(str::to_owned);
    let prefix = architecture.as_ref().map(|a| format!("{a}."));
    let mut hyperparameters = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (key, value) in f.metadata().iter() {
        let json = value.to_json(MAX_ARRAY_SHOWN);
        match &prefix {
            Some(p) if key.starts_with(p.as_str()) => hyperparameters.insert(key.to_owned(), json),
            _ => metadata.insert(key.to_owned(), json),
        };
    }
    let mut totals: BTreeMap<GgmlType, TypeTotal> = BTreeMap::new();
    let tensors: Vec<TensorRow> = f
        .tensors()
        .iter()
        .map(|t| {
            let total = totals.entry(t.ty).or_insert_with(|| TypeTotal {
                ty: t.ty.name().to_owned(),
                tensors: 0,
                elements: 0,
                bytes: 0,
                bits_per_weight: 0.0,
            });
            total.tensors += 1;
            total.elements += t.n_elements;
            total.bytes += t.n_bytes;
            TensorRow {
                name: t.name.clone(),
                shape: t.dims.clone(),
                ty: t.ty.name().to_owned(),
                elements: t.n_elements,
                bytes: t.n_bytes,
                file_offset: f.data_offset() + t.offset,
            }
        })
        .collect();
    let mut totals_by_type: Vec<TypeTotal> = totals.into_values().collect();
    for t in &mut totals_by_type {
        t.bits_per_weight = if t.elements == 0 {
            0.0
        } else {
            t.bytes as f64 * 8.0 / t.elements as f64
        };
    }
    Ok(Report {
        file: f.path().display().to_string(),
        file_bytes: f.file_size(),
        gguf_version: f.version(),
        alignment: f.alignment(),
        data_offset: f.data_offset(),
        name: f.opt_str("general.name")?.map(str::to_owned),
        architecture,
        hyperparameters,
        tokenizer: tokenizer_summary(f)?,
        metadata,
        total_elements: tensors.iter().map(|t| t.elements).sum(),
        total_tensor_bytes: tensors.iter().map(|t| t.bytes).sum(),
        tensors,
        totals_by_type,
    })
}

/// The `.npy` shape of a tensor: dims reversed into row-major order (`[ne1, ne0]` for a matrix,
/// `[ne0]` for a vector).
pub fn npy_shape(t: &TensorInfo) -> Vec<usize> {
    t.dims.iter().rev().map(|&d| d as usize).collect()
}

/// Writes tensor `name` dequantized to f32 as `.npy`, streaming a few rows at a time.
pub fn dequantize_to_npy(f: &GgufFile, name: &str, out: &Path) -> Result<()> {
    let (info, data) = f.tensor_by_name(name)?;
    let row_len = info.row_len() as usize;
    let row_bytes = info
        .ty
        .bytes_for(info.row_len())
        .ok_or_else(|| Error::Tensor {
            path: f.path().to_path_buf(),
            name: name.to_owned(),
            what: format!(
                "row length {row_len} is not a whole number of {} blocks",
                info.ty
            ),
        })? as usize;
    let mut w = NpyWriter::create(out, &npy_shape(info))?;
    // About 4 MiB of f32 per write; at least one row.
    let rows_per_chunk = (1 << 20) / row_len.max(1) + 1;
    let mut buf = vec![0.0f32; rows_per_chunk * row_len];
    for chunk in data.chunks(rows_per_chunk * row_bytes.max(1)) {
        let n = chunk.len() / row_bytes.max(1) * row_len;
        crate::quant::dequantize(info.ty, chunk, &mut buf[..n])?;
        w.write(&buf[..n])?;
    }
    w.finish()
}
