//! The weight stream's I/O (model/stream.rs): where each unit (a layer's seven matrices, or a
//! chunk of the output head's rows) lies in the file and in a staging buffer, the positioned
//! reads that fill a buffer, the resident head's one read, and the reader thread that fills
//! buffers on request.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::gguf::{GgufFile, TensorInfo};
use crate::quant::GgmlType;
use crate::{Error, Result};

/// Bytes of one staging line: tensors start on 64-byte boundaries (as in the file, which
/// aligns them to 32), whatever the allocator's alignment of a byte vector.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
pub(super) struct Line([u8; 64]);

const _: () = assert!(std::mem::size_of::<Line>() == 64);

/// A staging buffer of whole lines.
pub(super) type Staging = Vec<Line>;

/// Where one matrix is in the file and in a staging buffer.
#[derive(Clone, Copy, Debug)]
pub(super) struct Span {
    pub(super) ty: GgmlType,
    pub(super) rows: usize,
    pub(super) cols: usize,
    /// Absolute offset in the file.
    pub(super) file_offset: u64,
    /// Offset in the staging buffer (a multiple of 64).
    pub(super) at: usize,
    pub(super) bytes: usize,
}

/// The seven matrices of a layer in [`BackendLayer`] field order (q, k, v, o, gate, up, down),
/// by their GGUF stems.
fn matrices() -> impl Iterator<Item = &'static str> {
    crate::adapters::Target::ALL
        .into_iter()
        .map(|t| t.gguf_stem())
}

/// What one staging buffer holds: a layer's seven matrices, or rows `v0..v0 + span.rows` of
/// the output head (`[n_vocab, dim]`, rows are whole quant rows, so a chunk is contiguous).
// A few of each per model, made once: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug)]
pub(super) enum Unit {
    Layer([Span; 7]),
    HeadChunk {
        name: &'static str,
        v0: usize,
        span: Span,
    },
}

impl Unit {
    pub(super) fn bytes(&self) -> u64 {
        match self {
            Unit::Layer(spans) => spans.iter().map(|s| s.bytes as u64).sum(),
            Unit::HeadChunk { span, .. } => span.bytes as u64,
        }
    }
}

/// A request to the reader: read unit `unit` into `buf`.
pub(super) struct Request {
    pub(super) unit: usize,
    pub(super) buf: Staging,
}

/// The reader's answer: `buf` holds `unit` (or the read failed), after `read` seconds.
pub(super) struct Filled {
    pub(super) unit: usize,
    pub(super) buf: Staging,
    pub(super) read: Duration,
    pub(super) result: Result<()>,
}

/// A matrix's shape and type, its bytes elsewhere.
#[derive(Clone, Copy, Debug)]
pub(super) struct QuantMatrixSpec {
    pub(super) ty: GgmlType,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) bytes: usize,
}

pub(super) fn round_up_64(n: usize) -> usize {
    n.div_ceil(64) * 64
}

pub(super) fn lines_for(bytes: usize) -> Staging {
    vec![Line([0; 64]); bytes.div_ceil(64)]
}

pub(super) fn bytes_of(buf: &Staging) -> &[u8] {
    bytemuck::cast_slice(buf.as_slice())
}

pub(super) fn bytes_of_mut(buf: &mut Staging) -> &mut [u8] {
    bytemuck::cast_slice_mut(buf.as_mut_slice())
}

#[cfg(unix)]
pub(super) fn read_at(file: &File, dst: &mut [u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, dst, at)
}

#[cfg(not(unix))]
pub(super) fn read_at(_file: &File, _dst: &mut [u8], _at: u64) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "streamed weights need positioned reads (unix)",
    ))
}

/// Reads unit `index` into `buf`; an error names the file, the tensor and the offset.
pub(super) fn read_unit(
    file: &File,
    path: &Path,
    index: usize,
    unit: &Unit,
    buf: &mut Staging,
) -> Result<()> {
    match unit {
        Unit::Layer(spans) => read_layer(file, path, index, spans, buf),
        Unit::HeadChunk { name, v0, span } => {
            let bytes = bytes_of_mut(buf);
            let len = bytes.len();
            let rows = *v0..*v0 + span.rows;
            let dst = bytes.get_mut(..span.bytes).ok_or_else(|| {
                Error::Invalid(format!(
                    "weight stream: {name} rows {rows:?} ({} B) do not fit the staging buffer ({len} B)",
                    span.bytes
                ))
            })?;
            read_at(file, dst, span.file_offset).map_err(|e| Error::Tensor {
                path: path.to_path_buf(),
                name: (*name).into(),
                what: format!(
                    "reading rows {rows:?}, {} B at byte {}: {e}",
                    span.bytes, span.file_offset
                ),
            })
        }
    }
}

/// Reads `spans` into `buf`; an error names the file, the tensor and the offset.
fn read_layer(
    file: &File,
    path: &Path,
    layer: usize,
    spans: &[Span; 7],
    buf: &mut Staging,
) -> Result<()> {
    let bytes = bytes_of_mut(buf);
    let len = bytes.len();
    for (s, name) in spans.iter().zip(matrices()) {
        let dst = bytes.get_mut(s.at..s.at + s.bytes).ok_or_else(|| {
            Error::Invalid(format!(
                "weight stream: blk.{layer}.{name} ({} B at {}) does not fit the staging buffer ({} B)",
                s.bytes,
                s.at,
                len
            ))
        })?;
        read_at(file, dst, s.file_offset).map_err(|e| Error::Tensor {
            path: path.to_path_buf(),
            name: format!("blk.{layer}.{name}.weight"),
            what: format!("reading {} B at byte {}: {e}", s.bytes, s.file_offset),
        })?;
    }
    Ok(())
}

pub(super) fn tensor<'f>(file: &'f GgufFile, name: &str) -> Result<&'f TensorInfo> {
    file.tensor(name).ok_or_else(|| Error::Tensor {
        path: file.path().to_path_buf(),
        name: name.to_string(),
        what: "missing".into(),
    })
}

/// Opens `path` again and checks it is the file that was parsed (same length).
pub(super) fn reopen(file: &GgufFile) -> Result<File> {
    let path = file.path();
    let handle = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = handle.metadata().map_err(|e| Error::io(path, e))?.len();
    if len != file.file_size() {
        return Err(Error::Invalid(format!(
            "{}: the file is {len} bytes now, {} when it was opened (changed while in use?)",
            path.display(),
            file.file_size()
        )));
    }
    Ok(handle)
}

/// Every layer's spans (file offsets, staging offsets 64-byte aligned) and the bytes one
/// staging buffer needs for the largest layer.
pub(super) fn layer_spans(file: &GgufFile, n_layer: usize) -> Result<(Vec<[Span; 7]>, usize)> {
    let base = file.data_offset();
    let mut spans = Vec::with_capacity(n_layer);
    let mut staging_bytes = 0usize;
    for l in 0..n_layer {
        let mut at = 0usize;
        let mut layer = [Span {
            ty: GgmlType::F32,
            rows: 0,
            cols: 0,
            file_offset: 0,
            at: 0,
            bytes: 0,
        }; 7];
        for (slot, name) in layer.iter_mut().zip(matrices()) {
            let t = tensor(file, &format!("blk.{l}.{name}.weight"))?;
            at = round_up_64(at);
            let (cols, rows) = (t.dims[0] as usize, t.n_rows() as usize);
            *slot = Span {
                ty: t.ty,
                rows,
                cols,
                file_offset: base.saturating_add(t.offset),
                at,
                bytes: t.n_bytes as usize,
            };
            at += t.n_bytes as usize;
        }
        staging_bytes = staging_bytes.max(round_up_64(at));
        spans.push(layer);
    }
    Ok((spans, staging_bytes))
}

/// Reads tensor `head_name` (the output head) whole into an owned buffer.
pub(super) fn read_head(
    file: &GgufFile,
    handle: &File,
    head_name: &str,
) -> Result<(QuantMatrixSpec, Staging)> {
    let path = file.path().to_path_buf();
    let base = file.data_offset();
    let t = tensor(file, head_name)?;
    let spec = QuantMatrixSpec {
        ty: t.ty,
        rows: t.n_rows() as usize,
        cols: t.dims[0] as usize,
        bytes: t.n_bytes as usize,
    };
    let mut head = lines_for(spec.bytes);
    read_at(
        handle,
        &mut bytes_of_mut(&mut head)[..spec.bytes],
        base.saturating_add(t.offset),
    )
    .map_err(|e| Error::Tensor {
        path: path.clone(),
        name: head_name.into(),
        what: format!("reading {} B: {e}", spec.bytes),
    })?;
    Ok((spec, head))
}

/// The output head `head_name` cut into chunks of whole rows, each at most `staging_bytes`
/// (the layers' staging buffer, which the chunks pass through) and at most `max_rows` rows;
/// every chunk holds at least one row.
pub(super) fn head_chunks(
    file: &GgufFile,
    head_name: &'static str,
    staging_bytes: usize,
    max_rows: Option<usize>,
) -> Result<Vec<Unit>> {
    let t = tensor(file, head_name)?;
    let (rows, cols) = (t.n_rows() as usize, t.dims[0] as usize);
    let row_bytes = t.row_bytes() as usize;
    let fit = (staging_bytes / row_bytes.max(1)).max(1);
    let per_chunk = max_rows.map_or(fit, |m| m.clamp(1, fit));
    let base = file.data_offset().saturating_add(t.offset);
    let mut units = Vec::with_capacity(rows.div_ceil(per_chunk));
    let mut v0 = 0;
    while v0 < rows {
        let n = per_chunk.min(rows - v0);
        units.push(Unit::HeadChunk {
            name: head_name,
            v0,
            span: Span {
                ty: t.ty,
                rows: n,
                cols,
                file_offset: base.saturating_add((v0 * row_bytes) as u64),
                at: 0,
                bytes: n * row_bytes,
            },
        });
        v0 += n;
    }
    Ok(units)
}

/// Starts the reader thread: it fills each requested buffer with its unit and sends it back.
#[allow(clippy::type_complexity)]
pub(super) fn spawn_reader(
    file: &GgufFile,
    units: Vec<Unit>,
) -> Result<(SyncSender<Request>, Receiver<Filled>, JoinHandle<()>)> {
    let path = file.path().to_path_buf();
    let (req_tx, req_rx) = sync_channel::<Request>(1);
    let (fill_tx, fill_rx) = sync_channel::<Filled>(1);
    let reader_file = reopen(file)?;
    let reader_units = units;
    let reader_path: PathBuf = path.clone();
    let reader = std::thread::Builder::new()
        .name("edgetune-weight-stream".into())
        .spawn(move || {
            for Request { unit, mut buf } in req_rx {
                let t0 = Instant::now();
                let result = match reader_units.get(unit) {
                    Some(u) => read_unit(&reader_file, &reader_path, unit, u, &mut buf),
                    None => Err(Error::Invalid(format!("weight stream: no unit {unit}"))),
                };
                let filled = Filled {
                    unit,
                    buf,
                    read: t0.elapsed(),
                    result,
                };
                if fill_tx.send(filled).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| Error::io(&path, e))?;
    Ok((req_tx, fill_rx, reader))
}
