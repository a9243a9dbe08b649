//! Quantizing a full-precision GGUF (F32 / F16 / BF16 weights) into a new GGUF: every 2-D
//! tensor whose rows are whole blocks is quantized — with ggml's plain rule, or for Q4_1 with
//! ICQ ([`edgetune_core::quant::icq`], docs/METHODS.md#ir-qlora-icq) — and every other tensor and all metadata are
//! copied unchanged, so the result is a standard GGUF (our writer; llama.cpp and gguf-py read
//! it). This is the offline tool (docs/METHODS.md#read-only-base) behind `edgetune quantize`.
//!
//! Streaming: tensors are written one at a time through [`GgufWriter`], each quantized in
//! blocks of rows (≈ 8 MiB of f32), so memory stays at a few tens of MB plus the mapped input.
//! For each quantized tensor the report gives the quantization error `deq(quant(W)) − W` (RMS
//! and max |·|, next to the RMS of `W`) and, for Q4_1, the mean code entropy of its blocks and
//! how many blocks ICQ moved off the plain grid.

use std::path::Path;

use serde::Serialize;

use edgetune_core::gguf::{ALIGNMENT_KEY, GgufFile, GgufWriter, TensorInfo, TensorSink, Value};
use edgetune_core::quant::GgmlType;
use edgetune_core::quant::icq::{self, IcqParams};
use edgetune_core::{Error, Result};

/// Values per row block (8 MiB of f32).
const BLOCK_VALUES: usize = 1 << 21;

/// llama.cpp's `general.file_type` key (an `llama_ftype`).
pub const FILE_TYPE_KEY: &str = "general.file_type";
/// Set (true) in files whose Q4_1 blocks were chosen by ICQ.
pub const ICQ_KEY: &str = "edgetune.quantize.icq";

/// How to quantize.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantizeOptions {
    /// The type of the quantized tensors.
    pub ty: GgmlType,
    /// ICQ search parameters (Q4_1 only); `None`: ggml's plain rule.
    pub icq: Option<IcqParams>,
}

/// One quantized tensor, as reported.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QuantizedTensor {
    pub name: String,
    pub from: String,
    pub to: String,
    /// `[rows, cols]` (ne order reversed: `cols` is the row length).
    pub rows: usize,
    pub cols: usize,
    /// RMS of the weights.
    pub rms_weight: f64,
    /// RMS and max |·| of `deq(quant(W)) − W`.
    pub rms_error: f64,
    pub max_abs_error: f64,
    /// Q4_1: mean code entropy of the blocks, bits (at most 4).
    pub mean_entropy: Option<f64>,
    /// ICQ: blocks whose grid differs from the plain min/max one.
    pub icq_moved_blocks: Option<usize>,
    pub blocks: usize,
}

/// What [`quantize_gguf`] wrote.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QuantizeReport {
    pub icq: bool,
    pub quantized: Vec<QuantizedTensor>,
    /// Tensors copied byte for byte (1-D, already quantized, or rows not whole blocks).
    pub copied: usize,
    /// RMS of the error over all quantized weights.
    pub rms_error: f64,
}

/// `llama_ftype` of a file whose weights are mostly `ty` (for `general.file_type`).
fn ftype(ty: GgmlType) -> Option<u32> {
    match ty {
        GgmlType::F32 => Some(0),
        GgmlType::F16 => Some(1),
        GgmlType::Q4_0 => Some(2),
        GgmlType::Q4_1 => Some(3),
        GgmlType::Q8_0 => Some(7),
        _ => None,
    }
}

/// Whether tensor `t` is quantized: 2-D, full precision, rows of whole `ty` blocks.
fn is_quantized(t: &TensorInfo, ty: GgmlType) -> bool {
    t.dims.len() == 2
        && matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
        && (t.row_len() as usize).is_multiple_of(ty.block_elems())
}

/// Refuses a file whose `general.architecture` is not the one edgetune runs (`llama`): its
/// tensors would be quantized by rules made for Llama's, into a file edgetune cannot load.
fn check_architecture(input: &GgufFile) -> Result<()> {
    let arch = input.opt_str("general.architecture")?;
    if arch == Some(edgetune_core::model::config::ARCH) {
        return Ok(());
    }
    Err(Error::Metadata {
        path: input.path().to_path_buf(),
        key: "general.architecture".into(),
        what: match arch {
            Some(a) => format!(
                "architecture `{a}` is not supported: edgetune quantizes `{}` models (the \
                 ones it trains and runs)",
                edgetune_core::model::config::ARCH
            ),
            None => format!(
                "missing: edgetune quantizes `{}` models only",
                edgetune_core::model::config::ARCH
            ),
        },
    })
}

/// Quantizes `input` into `out` (module doc). `on_tensor` sees each quantized tensor's report
/// as soon as it is written.
pub fn quantize_gguf(
    input: &GgufFile,
    out: &Path,
    opts: QuantizeOptions,
    on_tensor: &mut dyn FnMut(&QuantizedTensor),
) -> Result<QuantizeReport> {
    let ty = opts.ty;
    check_architecture(input)?;
    if ty.traits().quantize_ref.is_none() {
        return Err(Error::Invalid(format!(
            "edgetune cannot quantize to {ty} (use q4_1, q4_0, q8_0, q4_k, …)"
        )));
    }
    if opts.icq.is_some() && ty != GgmlType::Q4_1 {
        return Err(Error::Invalid(format!(
            "ICQ chooses Q4_1's per-block scale and offset; --type {} has no offset (use q4_1)",
            ty.name().to_lowercase()
        )));
    }
    if let Some(p) = opts.icq
        && (!p.lambda.is_finite() || p.lambda < 0.0)
    {
        return Err(Error::Invalid(format!(
            "ICQ lambda {} must be finite and >= 0",
            p.lambda
        )));
    }
    if let (Ok(a), Ok(b)) = (out.canonicalize(), input.path().canonicalize())
        && a == b
    {
        return Err(Error::Invalid(format!(
            "{}: the output cannot overwrite its input",
            out.display()
        )));
    }
    let mut w = GgufWriter::new(input.alignment());
    for (k, v) in input.metadata().iter() {
        if k != ALIGNMENT_KEY && k != FILE_TYPE_KEY && k != ICQ_KEY {
            w.add_kv(k, v.clone())?;
        }
    }
    if let Some(ft) = ftype(ty) {
        w.add_kv(FILE_TYPE_KEY, Value::U32(ft))?;
    } else if let Some(v) = input.metadata().get(FILE_TYPE_KEY) {
        w.add_kv(FILE_TYPE_KEY, v.clone())?;
    }
    w.add_kv(ICQ_KEY, Value::Bool(opts.icq.is_some()))?;
    let mut quantize = Vec::with_capacity(input.tensors().len());
    for t in input.tensors() {
        let q = is_quantized(t, ty);
        if !q
            && t.dims.len() == 2
            && !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
        {
            log::warn!(
                "{}: {} is already {}; copied unchanged (ICQ and a clean quantization need \
                 full-precision weights)",
                input.path().display(),
                t.name,
                t.ty
            );
        }
        w.add_tensor(t.name.clone(), &t.dims, if q { ty } else { t.ty })?;
        quantize.push(q);
    }
    let mut report = QuantizeReport {
        icq: opts.icq.is_some(),
        quantized: Vec::new(),
        copied: 0,
        rms_error: 0.0,
    };
    let (mut sum_e2, mut count) = (0.0f64, 0usize);
    w.write_to_path(out, |i, _info, sink| {
        let t = &input.tensors()[i];
        let data = input.tensor_data(t);
        if !quantize[i] {
            report.copied += 1;
            return sink.write_all(data);
        }
        let r = quantize_tensor(input.path(), t, data, opts, sink)?;
        sum_e2 += r.rms_error.powi(2) * (r.rows * r.cols) as f64;
        count += r.rows * r.cols;
        on_tensor(&r);
        report.quantized.push(r);
        Ok(())
    })?;
    report.rms_error = (sum_e2 / count.max(1) as f64).sqrt();
    Ok(report)
}

/// Quantizes one tensor through `sink`, row block by row block.
fn quantize_tensor(
    path: &Path,
    t: &TensorInfo,
    data: &[u8],
    opts: QuantizeOptions,
    sink: &mut TensorSink<'_>,
) -> Result<QuantizedTensor> {
    let (cols, rows) = (t.row_len() as usize, t.n_rows() as usize);
    let ty = opts.ty;
    let src_row_bytes = t.row_bytes() as usize;
    let dst_row_bytes = cols / ty.block_elems() * ty.block_bytes();
    let block_rows = (BLOCK_VALUES / cols).clamp(1, rows);
    let mut w = vec![0.0f32; block_rows * cols];
    let mut back = vec![0.0f32; block_rows * cols];
    let mut q = vec![0u8; block_rows * dst_row_bytes];
    let (mut sum_w2, mut sum_e2, mut max_e) = (0.0f64, 0.0f64, 0.0f64);
    let (mut entropy_sum, mut moved) = (0.0f64, 0usize);
    for r0 in (0..rows).step_by(block_rows) {
        let n = block_rows.min(rows - r0);
        let (w, back, q) = (
            &mut w[..n * cols],
            &mut back[..n * cols],
            &mut q[..n * dst_row_bytes],
        );
        edgetune_core::quant::dequantize(
            t.ty,
            &data[r0 * src_row_bytes..(r0 + n) * src_row_bytes],
            w,
        )?;
        if let Some(k) = w.iter().position(|v| !v.is_finite()) {
            return Err(Error::Tensor {
                path: path.to_path_buf(),
                name: t.name.clone(),
                what: format!(
                    "element {} (row {}, column {}) is {}; cannot quantize",
                    r0 * cols + k,
                    r0 + k / cols,
                    k % cols,
                    w[k]
                ),
            });
        }
        match opts.icq {
            Some(p) => {
                let choices = icq::quantize(w, q, &p);
                moved += choices.iter().filter(|c| c.offset.is_some()).count();
                entropy_sum += choices.iter().map(|c| c.entropy).sum::<f64>();
            }
            None => {
                edgetune_core::quant::quantize(ty, w, q)?;
                if ty == GgmlType::Q4_1 {
                    entropy_sum += icq::mean_code_entropy(q) * (q.len() / 20) as f64;
                }
            }
        }
        edgetune_core::quant::dequantize(ty, q, back)?;
        for (&a, &b) in w.iter().zip(back.iter()) {
            let e = (b as f64 - a as f64).abs();
            sum_w2 += (a as f64).powi(2);
            sum_e2 += e * e;
            max_e = max_e.max(e);
        }
        sink.write_all(q)?;
    }
    let (nv, blocks) = ((rows * cols) as f64, rows * cols / ty.block_elems());
    Ok(QuantizedTensor {
        name: t.name.clone(),
        from: t.ty.name().to_string(),
        to: ty.name().to_string(),
        rows,
        cols,
        rms_weight: (sum_w2 / nv).sqrt(),
        rms_error: (sum_e2 / nv).sqrt(),
        max_abs_error: max_e,
        mean_entropy: (ty == GgmlType::Q4_1).then(|| entropy_sum / blocks.max(1) as f64),
        icq_moved_blocks: opts.icq.map(|_| moved),
        blocks,
    })
}
