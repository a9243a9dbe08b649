//! Merging an adapter set into a new base GGUF: for each adapted linear `W` `[out, in]`,
//! `W' = deq(W) + s·B·A`, re-quantized (by default to `W`'s own type); every other tensor and
//! all metadata are copied unchanged (tensor bytes identical).
//!
//! Streaming: the output is written tensor by tensor through [`GgufWriter`], and an adapted
//! tensor is processed in blocks of rows (≈ 8 MiB of f32 each: dequantize the rows, add
//! `s·B[rows]·A`, quantize, write), so an 8B merge holds a few tens of MB besides the adapter
//! and the mapped input. The added error of the re-quantization, `deq(quant(W')) − W'`, is
//! measured per tensor (RMS and max) and reported next to the RMS of `s·B·A` itself.

use std::path::Path;

use serde::Serialize;

use edgetune_core::adapters::AdapterSet;
use edgetune_core::adapters::{Adapter, Export, Target};
use edgetune_core::backend::cpu::gemm::{GemmDims, gemm};
use edgetune_core::gguf::{ALIGNMENT_KEY, GgufFile, GgufWriter, TensorInfo, TensorSink};
use edgetune_core::model::{LlamaConfig, LlamaWeights};
use edgetune_core::quant::{self, GgmlType};
use edgetune_core::{Error, Result};

/// Values per row block of an adapted tensor (8 MiB of f32).
const BLOCK_VALUES: usize = 1 << 21;

/// The type merged tensors are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeType {
    /// Each tensor's original type.
    Same,
    /// One type for every merged tensor.
    To(GgmlType),
}

impl MergeType {
    /// `same`, or the name of a type edgetune can quantize to (`f32`, `q8_0`, `q4_k`, …).
    pub fn parse(s: &str) -> Result<MergeType> {
        if s.eq_ignore_ascii_case("same") {
            return Ok(MergeType::Same);
        }
        match GgmlType::from_name(s) {
            Some(t) if t.traits().quantize_ref.is_some() => Ok(MergeType::To(t)),
            _ => Err(Error::Invalid(format!(
                "unknown or unwritable type `{s}`: use same or one of {}",
                writable_types().join(", ")
            ))),
        }
    }
}

/// Names of the types edgetune quantizes to, lowercase.
pub fn writable_types() -> Vec<String> {
    GgmlType::ALL
        .into_iter()
        .filter(|t| t.traits().quantize_ref.is_some())
        .map(|t| t.name().to_lowercase())
        .collect()
}

/// Bits per weight of `t`.
fn bits(t: GgmlType) -> f64 {
    (t.block_bytes() * 8) as f64 / t.block_elems() as f64
}

/// A type we can write that is at least as precise as `t` (fewest bits, same block size
/// preferred) for rows of `row_len`, to suggest when `t` itself cannot be written.
pub fn suggest_type(t: GgmlType, row_len: usize) -> Option<GgmlType> {
    GgmlType::ALL
        .into_iter()
        .filter(|c| c.traits().quantize_ref.is_some() && row_len.is_multiple_of(c.block_elems()))
        .filter(|c| bits(*c) >= bits(t))
        .min_by(|x, y| {
            bits(*x).total_cmp(&bits(*y)).then(
                (x.block_elems() != t.block_elems()).cmp(&(y.block_elems() != t.block_elems())),
            )
        })
}

/// One merged tensor, as reported.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MergedTensor {
    pub name: String,
    /// Original and written type.
    pub from: String,
    pub to: String,
    /// `[out, in]`.
    pub rows: usize,
    pub cols: usize,
    /// RMS of `s·B·A`.
    pub rms_delta: f64,
    /// RMS and max |·| of `deq(quant(W')) − W'`.
    pub rms_quant_error: f64,
    pub max_abs_quant_error: f64,
}

/// What a merge wrote.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MergeReport {
    pub merged: Vec<MergedTensor>,
    /// Tensors copied byte for byte.
    pub copied: usize,
}

/// An adapted tensor of the base: its adapter and the type it is written in.
struct Plan<'s> {
    adapter: &'s dyn Adapter,
    to: GgmlType,
}

/// Merges `set` into `base`, writing `out` atomically. `on_tensor` sees each merged tensor's
/// report as soon as it is written.
pub fn merge_adapter(
    base: &GgufFile,
    set: &AdapterSet,
    out: &Path,
    ty: MergeType,
    on_tensor: &mut dyn FnMut(&MergedTensor),
) -> Result<MergeReport> {
    let cfg = LlamaConfig::from_gguf(base)?;
    LlamaWeights::from_gguf(base, &cfg)?;
    set.check_fits(&cfg)?;
    edgetune_core::atomic_file::check_not_input(out, base.path(), "base model the merge reads")?;
    let mut w = GgufWriter::new(base.alignment());
    for (k, v) in base.metadata().iter() {
        if k != ALIGNMENT_KEY {
            w.add_kv(k, v.clone())?;
        }
    }
    // Per base tensor: Some(plan) when adapted.
    let mut plans: Vec<Option<Plan<'_>>> = Vec::with_capacity(base.tensors().len());
    for t in base.tensors() {
        let plan = match adapter_of(set, &t.name) {
            Some(adapter) => {
                let to = match ty {
                    MergeType::Same => t.ty,
                    MergeType::To(x) => x,
                };
                check_writable(base, t, to, ty)?;
                Some(Plan { adapter, to })
            }
            None => None,
        };
        w.add_tensor(
            t.name.clone(),
            &t.dims,
            plan.as_ref().map_or(t.ty, |p| p.to),
        )?;
        plans.push(plan);
    }
    let mut report = MergeReport {
        merged: Vec::new(),
        copied: 0,
    };
    w.write_to_path(out, |i, _info, sink| {
        let t = &base.tensors()[i];
        let data = base.tensor_data(t);
        match &plans[i] {
            None => {
                report.copied += 1;
                sink.write_all(data)
            }
            Some(plan) => {
                let m = merge_tensor(t, data, plan, sink)?;
                on_tensor(&m);
                report.merged.push(m);
                Ok(())
            }
        }
    })?;
    Ok(report)
}

/// The adapter on base tensor `name` (`blk.N.<stem>.weight`), if any.
fn adapter_of<'s>(set: &'s AdapterSet, name: &str) -> Option<&'s dyn Adapter> {
    let rest = name.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (layer, stem) = rest.split_once('.')?;
    let target = Target::ALL.into_iter().find(|t| t.gguf_stem() == stem)?;
    set.get(super::native::parse_layer(layer)?, target)
}

/// Refuses, before anything is written, a type we cannot write or whose blocks do not fit.
fn check_writable(base: &GgufFile, t: &TensorInfo, to: GgmlType, ty: MergeType) -> Result<()> {
    let row = t.row_len() as usize;
    let err = |what: String| Error::Tensor {
        path: base.path().to_path_buf(),
        name: t.name.clone(),
        what,
    };
    if to.traits().quantize_ref.is_none() {
        let hint = suggest_type(to, row)
            .map(|s| {
                format!(
                    "; pass --type {} (or another of {})",
                    s.name().to_lowercase(),
                    writable_types().join(", ")
                )
            })
            .unwrap_or_default();
        let why = if ty == MergeType::Same {
            "the tensor is"
        } else {
            "the requested type is"
        };
        return Err(err(format!(
            "{why} {to}, which edgetune cannot quantize to{hint}"
        )));
    }
    if !row.is_multiple_of(to.block_elems()) {
        return Err(err(format!(
            "rows of {row} are not a whole number of {to} blocks ({} values)",
            to.block_elems()
        )));
    }
    Ok(())
}

/// Writes one merged tensor through `sink`, row block by row block.
fn merge_tensor(
    t: &TensorInfo,
    data: &[u8],
    plan: &Plan<'_>,
    sink: &mut TensorSink<'_>,
) -> Result<MergedTensor> {
    let (cols, rows) = (t.row_len() as usize, t.n_rows() as usize);
    let ad = plan.adapter;
    if (ad.in_features(), ad.out_features()) != (cols, rows) {
        return Err(Error::Invalid(format!(
            "{}: [{rows}, {cols}] but its adapter is [{}, {}]",
            t.name,
            ad.out_features(),
            ad.in_features()
        )));
    }
    // A merge-only adapter's dense ΔW is computed once; a low-rank one per row block.
    let source = match ad.export() {
        Export::LowRank { a, b, rank, scale } => Delta::LowRank { a, b, rank, scale },
        Export::MergeOnly => {
            let mut dw = vec![0.0f32; rows * cols];
            ad.delta_weight(&mut dw)?;
            Delta::Dense(dw)
        }
    };
    let (from, to) = (t.ty, plan.to);
    let src_row_bytes = t.row_bytes() as usize;
    let dst_row_bytes = (cols / to.block_elems()) * to.block_bytes();
    let block_rows = (BLOCK_VALUES / cols).clamp(1, rows);
    let mut w = vec![0.0f32; block_rows * cols];
    let mut delta = vec![0.0f32; block_rows * cols];
    let mut back = vec![0.0f32; block_rows * cols];
    let mut q = vec![0u8; block_rows * dst_row_bytes];
    let (mut sum_d2, mut sum_e2, mut max_e) = (0.0f64, 0.0f64, 0.0f64);
    for r0 in (0..rows).step_by(block_rows) {
        let n = block_rows.min(rows - r0);
        let (w, delta, back, q) = (
            &mut w[..n * cols],
            &mut delta[..n * cols],
            &mut back[..n * cols],
            &mut q[..n * dst_row_bytes],
        );
        quant::dequantize(from, &data[r0 * src_row_bytes..(r0 + n) * src_row_bytes], w)?;
        match &source {
            Delta::Dense(dw) => delta.copy_from_slice(&dw[r0 * cols..(r0 + n) * cols]),
            Delta::LowRank { a, b, rank, scale } => {
                // ΔW[rows] = s·B[rows]·A: [n, r] × [r, in].
                let dims = GemmDims {
                    m: n,
                    n: cols,
                    k: *rank,
                    trans_a: false,
                    trans_b: false,
                };
                gemm(dims, *scale, &b[r0 * rank..(r0 + n) * rank], a, 0.0, delta)?;
            }
        }
        for (x, d) in w.iter_mut().zip(delta.iter()) {
            *x += d;
            sum_d2 += (*d as f64) * (*d as f64);
        }
        quant::quantize(to, w, q)?;
        sink.write_all(q)?;
        quant::dequantize(to, q, back)?;
        for (x, y) in back.iter().zip(w.iter()) {
            let e = (*x as f64) - (*y as f64);
            sum_e2 += e * e;
            max_e = max_e.max(e.abs());
        }
    }
    let n = (rows * cols) as f64;
    Ok(MergedTensor {
        name: t.name.clone(),
        from: from.name().into(),
        to: to.name().into(),
        rows,
        cols,
        rms_delta: (sum_d2 / n).sqrt(),
        rms_quant_error: (sum_e2 / n).sqrt(),
        max_abs_quant_error: max_e,
    })
}

/// Where an adapted tensor's `ΔW` comes from.
enum Delta<'a> {
    /// `s·B·A`, `A` `[rank, in]`, `B` `[out, rank]`.
    LowRank {
        a: std::borrow::Cow<'a, [f32]>,
        b: std::borrow::Cow<'a, [f32]>,
        rank: usize,
        scale: f32,
    },
    /// The whole `[out, in]`.
    Dense(Vec<f32>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_and_suggestions_are_at_least_as_precise() {
        assert_eq!(MergeType::parse("same").unwrap(), MergeType::Same);
        assert_eq!(
            MergeType::parse("Q4_K").unwrap(),
            MergeType::To(GgmlType::Q4_K)
        );
        let e = MergeType::parse("q3_k").unwrap_err().to_string();
        assert!(e.contains("q4_k") && e.contains("q8_0"), "{e}");
        assert_eq!(suggest_type(GgmlType::Q3_K, 256), Some(GgmlType::Q4_K));
        assert_eq!(suggest_type(GgmlType::Q2_K, 256), Some(GgmlType::Q4_K));
        assert_eq!(suggest_type(GgmlType::Q3_K, 96), Some(GgmlType::Q4_0));
    }
}
