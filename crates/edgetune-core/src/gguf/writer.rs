//! The streaming GGUF v3 writer: metadata and tensor infos first, then tensor data pulled from
//! a callback chunk by chunk, so a multi-GB file never has to be held in memory.
//!
//! Everything the reader checks is checked here too (shapes, block sizes, duplicate keys and
//! names, nesting depth), so every file the writer produces is one the reader accepts.
//! Tensor names are limited to 63 bytes because llama.cpp refuses longer ones (`GGML_MAX_NAME`).

use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::ggml_type::GgmlType;
use super::metadata::Metadata;
use super::reader::{
    ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_DEPTH, MAX_NAME_LEN, align_up,
};
use super::tensor::{TensorInfo, geometry};
use super::value::{Array, Value};
use crate::Error;

/// Longest tensor name llama.cpp loads (`GGML_MAX_NAME` is 64 including the NUL).
pub const MAX_TENSOR_NAME_LEN: usize = 63;

/// Collects metadata and tensor infos, then writes the file in one pass.
#[derive(Debug)]
pub struct GgufWriter {
    version: u32,
    alignment: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    names: HashSet<String>,
    /// Data-section offset where the next tensor would start (before alignment).
    data_end: u64,
}

/// Where a tensor's bytes go: accepts exactly `TensorInfo::n_bytes` bytes, in chunks of any
/// size. Writing more is an error naming the tensor; the writer reports too few afterwards.
pub struct TensorSink<'a> {
    out: &'a mut dyn Write,
    path: &'a Path,
    info: &'a TensorInfo,
    written: u64,
}

impl TensorSink<'_> {
    /// Appends `bytes` to the tensor's data.
    pub fn write_all(&mut self, bytes: &[u8]) -> crate::Result<()> {
        let n = bytes.len() as u64;
        if n > self.remaining() {
            return Err(self.tensor_err(format!(
                "data callback wrote {} bytes, more than the tensor's {} bytes ({}, {})",
                self.written.saturating_add(n),
                self.info.n_bytes,
                self.info.ty,
                self.info.shape_string()
            )));
        }
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io(self.path, e))?;
        self.written += n;
        Ok(())
    }

    /// Appends `n` zero bytes (without allocating `n` bytes).
    pub fn write_zeros(&mut self, n: u64) -> crate::Result<()> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut left = n;
        while left > 0 {
            let chunk = left.min(ZEROS.len() as u64) as usize;
            self.write_all(&ZEROS[..chunk])?;
            left -= chunk as u64;
        }
        Ok(())
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.info.n_bytes - self.written
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn tensor_err(&self, what: String) -> Error {
        Error::Tensor {
            path: self.path.to_path_buf(),
            name: self.info.name.clone(),
            what,
        }
    }
}

/// `std::io::Write` too, for `io::copy` and friends; overflowing is an `InvalidInput` error.
impl Write for TensorSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        TensorSink::write_all(self, buf)
            .map(|()| buf.len())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

fn invalid(what: String) -> Error {
    Error::Invalid(format!("GGUF writer: {what}"))
}

impl GgufWriter {
    /// A v3 writer. `alignment` must be a power of two that fits in u32 (32 is llama.cpp's
    /// default); any other value makes every later call return an error. When it is not 32,
    /// `general.alignment` (u32) is added as the first metadata entry.
    pub fn new(alignment: u64) -> GgufWriter {
        let mut metadata = Metadata::new();
        if alignment != DEFAULT_ALIGNMENT && valid_alignment(alignment) {
            let _ = metadata.insert(ALIGNMENT_KEY.into(), Value::U32(alignment as u32));
        }
        GgufWriter {
            version: 3,
            alignment,
            metadata,
            tensors: Vec::new(),
            names: HashSet::new(),
            data_end: 0,
        }
    }

    /// Writes version 2 instead of 3 (same layout for little-endian files).
    pub fn set_version(&mut self, version: u32) -> crate::Result<()> {
        if !(2..=3).contains(&version) {
            return Err(invalid(format!(
                "cannot write GGUF version {version} (only 2 and 3)"
            )));
        }
        self.version = version;
        Ok(())
    }

    fn check_alignment(&self) -> crate::Result<()> {
        if valid_alignment(self.alignment) {
            Ok(())
        } else {
            Err(invalid(format!(
                "alignment {} is not a power of two between 1 and 2^31",
                self.alignment
            )))
        }
    }

    /// Adds a metadata entry; a duplicate key, an empty or over-long key, or arrays nested
    /// deeper than the reader accepts is an error. `general.alignment` must match the
    /// writer's alignment.
    pub fn add_kv(&mut self, key: impl Into<String>, value: Value) -> crate::Result<()> {
        self.check_alignment()?;
        let key = key.into();
        if key.is_empty() || key.len() > MAX_NAME_LEN {
            return Err(invalid(format!(
                "metadata key of {} bytes (1 to {MAX_NAME_LEN})",
                key.len()
            )));
        }
        if let Value::Array(a) = &value
            && a.depth() > MAX_ARRAY_DEPTH
        {
            return Err(invalid(format!(
                "metadata key `{key}`: arrays nested {} deep, more than {MAX_ARRAY_DEPTH}",
                a.depth()
            )));
        }
        if key == ALIGNMENT_KEY {
            if value.as_i128() != Some(self.alignment as i128) {
                return Err(invalid(format!(
                    "`{ALIGNMENT_KEY}` = {:?} does not match the writer's alignment {}",
                    value, self.alignment
                )));
            }
            // Replaces the entry `new` added, keeping the caller's integer type.
            if self.metadata.contains_key(ALIGNMENT_KEY) && self.alignment != DEFAULT_ALIGNMENT {
                return self.metadata.replace(ALIGNMENT_KEY, value).map_err(invalid);
            }
        }
        if let Some(i) = self.metadata.position(&key) {
            return Err(invalid(format!(
                "duplicate metadata key `{key}` (entry {i})"
            )));
        }
        let _ = self.metadata.insert(key, value);
        Ok(())
    }

    /// Adds a tensor of shape `dims` (ne order, 1..=4 dims, each ≥ 1, `ne[0]` a multiple of the
    /// block size) and type `ty`; its data offset follows the previous tensor, aligned.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
    ) -> crate::Result<()> {
        self.check_alignment()?;
        let name = name.into();
        if name.is_empty() || name.len() > MAX_TENSOR_NAME_LEN {
            return Err(invalid(format!(
                "tensor name `{name}` has {} bytes (1 to {MAX_TENSOR_NAME_LEN}, llama.cpp's limit)",
                name.len()
            )));
        }
        if self.names.contains(&name) {
            return Err(invalid(format!("duplicate tensor name `{name}`")));
        }
        let (n_elements, n_bytes) =
            geometry(dims, ty).map_err(|w| invalid(format!("tensor `{name}` ({ty}): {w}")))?;
        let offset = align_up(self.data_end, self.alignment)
            .ok_or_else(|| invalid(format!("tensor `{name}`: data offset overflows")))?;
        self.data_end = offset
            .checked_add(n_bytes)
            .ok_or_else(|| invalid(format!("tensor `{name}`: data size overflows")))?;
        self.names.insert(name.clone());
        self.tensors.push(TensorInfo {
            name,
            dims: dims.to_vec(),
            ty,
            offset,
            n_elements,
            n_bytes,
        });
        Ok(())
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Tensor infos so far, with their data offsets.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Header, metadata and tensor infos, unpadded.
    fn header(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC);
        put_u32(&mut b, self.version);
        put_u64(&mut b, self.tensors.len() as u64);
        put_u64(&mut b, self.metadata.len() as u64);
        for (k, v) in self.metadata.iter() {
            put_str(&mut b, k);
            put_u32(&mut b, v.value_type().id());
            put_payload(&mut b, v);
        }
        for t in &self.tensors {
            put_str(&mut b, &t.name);
            put_u32(&mut b, t.dims.len() as u32);
            for &d in &t.dims {
                put_u64(&mut b, d);
            }
            put_u32(&mut b, t.ty.id());
            put_u64(&mut b, t.offset);
        }
        b
    }

    /// Size of the file this writer will produce, in bytes.
    pub fn file_size(&self) -> crate::Result<u64> {
        self.check_alignment()?;
        let header = align_up(self.header().len() as u64, self.alignment);
        let data = align_up(self.data_end, self.alignment);
        header
            .zip(data)
            .and_then(|(h, d)| h.checked_add(d))
            .ok_or_else(|| invalid("file size overflows".into()))
    }

    /// Writes the file to `out`. For each tensor in order, `data(index, info, sink)` must write
    /// exactly `info.n_bytes` bytes into `sink` (in chunks of any size). I/O errors name the
    /// output as `<GGUF stream>`; use [`GgufWriter::write_to_path`] for a file.
    pub fn write<W, F>(self, out: W, data: F) -> crate::Result<()>
    where
        W: Write,
        F: FnMut(usize, &TensorInfo, &mut TensorSink<'_>) -> crate::Result<()>,
    {
        let mut out = BufWriter::with_capacity(1 << 20, out);
        self.write_inner(&mut out, Path::new("<GGUF stream>"), data)?;
        out.flush().map_err(|e| Error::io("<GGUF stream>", e))
    }

    /// Writes the file atomically: to a temporary file in the same directory, fsync, rename
    /// over `path`, fsync the directory. On error the temporary file is removed and `path` is
    /// untouched.
    pub fn write_to_path<F>(self, path: &Path, data: F) -> crate::Result<()>
    where
        F: FnMut(usize, &TensorInfo, &mut TensorSink<'_>) -> crate::Result<()>,
    {
        crate::atomic_file::write_with(path, |out| self.write_inner(out, path, data))
    }

    fn write_inner<F>(self, out: &mut dyn Write, path: &Path, mut data: F) -> crate::Result<()>
    where
        F: FnMut(usize, &TensorInfo, &mut TensorSink<'_>) -> crate::Result<()>,
    {
        self.check_alignment()?;
        let io = |e| Error::io(path, e);
        let header = self.header();
        out.write_all(&header).map_err(io)?;
        let data_offset = align_up(header.len() as u64, self.alignment)
            .ok_or_else(|| invalid("data offset overflows".into()))?;
        write_zeros(out, data_offset - header.len() as u64).map_err(io)?;
        let mut pos = 0u64; // relative to the data section
        for (i, t) in self.tensors.iter().enumerate() {
            write_zeros(out, t.offset - pos).map_err(io)?;
            let mut sink = TensorSink {
                out: &mut *out,
                path,
                info: t,
                written: 0,
            };
            data(i, t, &mut sink)?;
            if sink.written != t.n_bytes {
                return Err(sink.tensor_err(format!(
                    "data callback wrote {} bytes, expected {} ({}, {})",
                    sink.written,
                    t.n_bytes,
                    t.ty,
                    t.shape_string()
                )));
            }
            pos = t.offset + t.n_bytes;
        }
        let end =
            align_up(pos, self.alignment).ok_or_else(|| invalid("file size overflows".into()))?;
        write_zeros(out, end - pos).map_err(io)
    }
}

fn valid_alignment(a: u64) -> bool {
    a.is_power_of_two() && a <= 1 << 31
}

fn write_zeros(out: &mut dyn Write, n: u64) -> std::io::Result<()> {
    const ZEROS: [u8; 4096] = [0; 4096];
    let mut left = n;
    while left > 0 {
        let chunk = left.min(ZEROS.len() as u64) as usize;
        out.write_all(&ZEROS[..chunk])?;
        left -= chunk as u64;
    }
    Ok(())
}

fn put_u32(b: &mut Vec<u8>, x: u32) {
    b.extend_from_slice(&x.to_le_bytes());
}

fn put_u64(b: &mut Vec<u8>, x: u64) {
    b.extend_from_slice(&x.to_le_bytes());
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_u64(b, s.len() as u64);
    b.extend_from_slice(s.as_bytes());
}

fn put_payload(b: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => b.push(*x),
        Value::I8(x) => b.push(*x as u8),
        Value::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => put_u32(b, *x),
        Value::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => b.push(*x as u8),
        Value::String(s) => put_str(b, s),
        Value::Array(a) => put_array(b, a),
        Value::U64(x) => put_u64(b, *x),
        Value::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
    }
}

/// Element type, count, elements; numeric vectors are copied as little-endian bytes at once.
fn put_array(b: &mut Vec<u8>, a: &Array) {
    put_u32(b, a.elem_type().id());
    put_u64(b, a.len() as u64);
    match a {
        Array::U8(v) => b.extend_from_slice(v),
        Array::I8(v) => b.extend_from_slice(bytemuck::cast_slice(v)),
        Array::U16(v) => b.extend_from_slice(bytemuck::cast_slice(v)),
        Array::I16(v) => b.extend_from_slice(bytemuck::cast_slice(v)),
        Array::U32(v) => b.extend_from_slice(bytemuck::cast_slice(v)),
        Array::I32(v) => b.extend_from_slice(bytemuck::cast_slice(v)),
        Array::F32(v) => b.extend_from_slice(bytemuck::cast_slice(v)),
        Array::U64(v) => b.extend_from_slice(bytemuck::cast_slice(v)),
        Array::I64(v) => b.extend_from_slice(bytemuck::cast_slice(v)),
        Array::F64(v) => b.extend_from_slice(bytemuck::cast_slice(v)),
        Array::Bool(v) => b.extend(v.iter().map(|&x| x as u8)),
        Array::String(v) => v.iter().for_each(|s| put_str(b, s)),
        Array::Array(v) => v.iter().for_each(|x| put_array(b, x)),
    }
}
