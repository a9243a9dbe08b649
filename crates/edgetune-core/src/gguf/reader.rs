//! The GGUF parser: header, metadata, tensor infos and the data-section checks.
//!
//! The input is hostile. Every read is bounds-checked (`cursor::Cursor`); every count is capped by the
//! bytes left in the file divided by the smallest encoding of one item, so no count can make the
//! parser allocate more than a small multiple of the file size; all size arithmetic is checked.
//! Layout (v2 and v3 are identical for little-endian files; v1 had u32 counts and is refused):
//!
//! ```text
//! "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count × (key: string, type u32, value)            string = u64 len + UTF-8 bytes
//! tensor_count × (name: string, n_dims u32, ne u64 × n_dims, ggml type u32, offset u64)
//! padding to `general.alignment` (default 32) | tensor data (offsets relative to here)
//! ```

use std::collections::HashMap;
use std::path::Path;

use super::cursor::Cursor;
use super::ggml_type::{GgmlType, type_name_of_id};
use super::metadata::Metadata;
use super::tensor::{MAX_DIMS, TensorInfo, geometry};
use super::value::{Array, Value, ValueType};
use crate::Error;

/// The file magic, `GGUF`.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and tensor offsets when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that sets the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Most metadata entries accepted (also bounded by bytes left / 13, the smallest entry).
pub const MAX_KV_COUNT: usize = 1 << 20;
/// Most tensors accepted (also bounded by bytes left / 32, the smallest tensor info).
/// Llama 3 8B has 292 tensors, 70B 724; large MoE files a few thousand.
pub const MAX_TENSOR_COUNT: usize = 1 << 20;
/// Longest metadata key or tensor name, in bytes (llama.cpp itself refuses names ≥ 64 bytes).
pub const MAX_NAME_LEN: usize = 1 << 16;
/// Longest string value (chat templates are a few KB to a few MB); also bounded by bytes left.
pub const MAX_STRING_LEN: usize = 1 << 30;
/// Most elements in one array; also bounded by bytes left / the element's smallest encoding.
pub const MAX_ARRAY_LEN: usize = u32::MAX as usize;
/// Deepest array nesting (1 = array of scalars). llama.cpp refuses any nesting; gguf-py allows it.
pub const MAX_ARRAY_DEPTH: usize = 8;

const HEADER_LEN: usize = 24;
const MIN_KV_LEN: usize = 8 + 4 + 1;
const MIN_TENSOR_INFO_LEN: usize = 8 + 4 + 8 + 4 + 8;

/// What parsing yields; the caller keeps the bytes.
pub(crate) struct Parsed {
    pub version: u32,
    pub alignment: u64,
    pub data_offset: u64,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub tensor_index: HashMap<String, usize>,
}

/// Parses and validates a whole GGUF file held in `bytes`.
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> crate::Result<Parsed> {
    let mut c = Cursor::new(path, bytes);
    let version = read_header(&mut c)?;
    let tensor_count = c.count(
        "tensor count",
        MAX_TENSOR_COUNT.min(c.remaining().saturating_sub(16) / MIN_TENSOR_INFO_LEN),
        || "capped by the file size and the reader's maximum".into(),
    )?;
    let kv_count = c.count(
        "metadata entry count",
        MAX_KV_COUNT.min(c.remaining().saturating_sub(8) / MIN_KV_LEN),
        || "capped by the file size and the reader's maximum".into(),
    )?;

    let mut metadata = Metadata::new();
    let mut alignment = DEFAULT_ALIGNMENT;
    for _ in 0..kv_count {
        let key_at = c.pos;
        let key = c.str("metadata key", MAX_NAME_LEN)?.to_string();
        let value_at = c.pos;
        let value = read_value(&mut c, 1).map_err(|e| in_context(e, &format!("key `{key}`: ")))?;
        if key == ALIGNMENT_KEY {
            // Report at the payload, after the u32 type.
            alignment = check_alignment(&c, value_at + 4, &value)?;
        }
        if let Err(first) = metadata.insert(key, value) {
            let key = metadata.iter().nth(first).map(|(k, _)| k).unwrap_or("");
            return Err(c.err_at(
                key_at,
                format!("duplicate metadata key `{key}` (first seen as entry {first})"),
            ));
        }
    }

    let mut tensors = Vec::with_capacity(tensor_count.min(4096));
    let mut tensor_index = HashMap::with_capacity(tensor_count.min(4096));
    let mut info_at = Vec::with_capacity(tensor_count.min(4096));
    for i in 0..tensor_count {
        let at = c.pos;
        let t = read_tensor_info(&mut c, alignment)?;
        if let Some(&first) = tensor_index.get(&t.name) {
            return Err(c.err_at(
                at,
                format!(
                    "duplicate tensor name `{}` (tensors {first} and {i})",
                    t.name
                ),
            ));
        }
        tensor_index.insert(t.name.clone(), i);
        tensors.push(t);
        info_at.push(at);
    }

    let data_offset = align_up(c.pos as u64, alignment).ok_or_else(|| {
        c.err_at(
            c.pos,
            format!("data offset overflows aligning {} to {alignment}", c.pos),
        )
    })?;
    check_data(&c, data_offset, &tensors, &info_at)?;
    Ok(Parsed {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
        tensor_index,
    })
}

fn read_header(c: &mut Cursor) -> crate::Result<u32> {
    if c.file_size() < HEADER_LEN {
        let magic_ok = c.bytes.len() >= 4 && c.bytes[..4] == MAGIC;
        return Err(c.err_at(
            0,
            format!(
                "file truncated: {} bytes, shorter than the {HEADER_LEN}-byte GGUF header{}",
                c.file_size(),
                if magic_ok { "" } else { " (and no GGUF magic)" }
            ),
        ));
    }
    let magic = c.take(4, "magic")?;
    if magic != MAGIC {
        return Err(c.err_at(
            0,
            format!(
                "bad magic {magic:02x?} ({:?}): not a GGUF file",
                String::from_utf8_lossy(magic)
            ),
        ));
    }
    let version = c.u32("version")?;
    match version {
        2 | 3 => Ok(version),
        1 => Err(c.err_at(
            4,
            "GGUF version 1 (32-bit counts) is not supported; convert the file with a current llama.cpp",
        )),
        v => {
            let hint = if (1..=3).contains(&v.swap_bytes()) { " (a big-endian file?)" } else { "" };
            Err(c.err_at(4, format!("unsupported GGUF version {v}{hint}; this reader reads 2 and 3")))
        }
    }
}

/// Prefixes the `what` of a `Gguf` error (used to name the key an error happened under).
fn in_context(e: Error, prefix: &str) -> Error {
    match e {
        Error::Gguf { path, offset, what } => Error::Gguf {
            path,
            offset,
            what: format!("{prefix}{what}"),
        },
        other => other,
    }
}

fn read_type(c: &mut Cursor, what: &str) -> crate::Result<ValueType> {
    let at = c.pos;
    let id = c.u32(what)?;
    ValueType::from_id(id)
        .ok_or_else(|| c.err_at(at, format!("unknown {what} {id} (known: 0 to 12)")))
}

/// One value: its `u32` type, then its payload. `depth` is the array nesting it would have.
fn read_value(c: &mut Cursor, depth: usize) -> crate::Result<Value> {
    let ty = read_type(c, "value type")?;
    read_payload(c, ty, depth)
}

fn read_payload(c: &mut Cursor, ty: ValueType, depth: usize) -> crate::Result<Value> {
    Ok(match ty {
        ValueType::U8 => Value::U8(c.u8("u8 value")?),
        ValueType::I8 => Value::I8(c.u8("i8 value")? as i8),
        ValueType::U16 => Value::U16(c.u16("u16 value")?),
        ValueType::I16 => Value::I16(c.u16("i16 value")? as i16),
        ValueType::U32 => Value::U32(c.u32("u32 value")?),
        ValueType::I32 => Value::I32(c.u32("i32 value")? as i32),
        ValueType::F32 => Value::F32(f32::from_bits(c.u32("f32 value")?)),
        ValueType::U64 => Value::U64(c.u64("u64 value")?),
        ValueType::I64 => Value::I64(c.u64("i64 value")? as i64),
        ValueType::F64 => Value::F64(f64::from_bits(c.u64("f64 value")?)),
        ValueType::Bool => Value::Bool(read_bool(c)?),
        ValueType::String => Value::String(c.str("string value", MAX_STRING_LEN)?.to_string()),
        ValueType::Array => Value::Array(read_array(c, depth)?),
    })
}

fn read_bool(c: &mut Cursor) -> crate::Result<bool> {
    let at = c.pos;
    match c.u8("bool value")? {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(c.err_at(at, format!("bool value is {b}, expected 0 or 1"))),
    }
}

/// An array: element type `u32`, count `u64`, elements. Numeric arrays are copied in one go.
fn read_array(c: &mut Cursor, depth: usize) -> crate::Result<Array> {
    let at = c.pos;
    if depth > MAX_ARRAY_DEPTH {
        return Err(c.err_at(
            at,
            format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels"),
        ));
    }
    let elem = read_type(c, "array element type")?;
    let min = elem.min_encoded_len();
    let max = MAX_ARRAY_LEN.min(c.remaining().saturating_sub(8) / min);
    let left = c.remaining().saturating_sub(8);
    let n = c.count("array length", max, || {
        format!(
            "{left} bytes left hold at most that many {} elements",
            elem.name()
        )
    })?;
    Ok(match elem {
        ValueType::U8 => Array::U8(c.take(n, "u8 array")?.to_vec()),
        ValueType::I8 => Array::I8(pod_vec(c, n, "i8 array")?),
        ValueType::U16 => Array::U16(pod_vec(c, n, "u16 array")?),
        ValueType::I16 => Array::I16(pod_vec(c, n, "i16 array")?),
        ValueType::U32 => Array::U32(pod_vec(c, n, "u32 array")?),
        ValueType::I32 => Array::I32(pod_vec(c, n, "i32 array")?),
        ValueType::F32 => Array::F32(pod_vec(c, n, "f32 array")?),
        ValueType::U64 => Array::U64(pod_vec(c, n, "u64 array")?),
        ValueType::I64 => Array::I64(pod_vec(c, n, "i64 array")?),
        ValueType::F64 => Array::F64(pod_vec(c, n, "f64 array")?),
        ValueType::Bool => Array::Bool((0..n).map(|_| read_bool(c)).collect::<crate::Result<_>>()?),
        ValueType::String => Array::String(
            (0..n)
                .map(|_| c.str("string element", MAX_STRING_LEN).map(str::to_string))
                .collect::<crate::Result<_>>()?,
        ),
        ValueType::Array => Array::Array(
            (0..n)
                .map(|_| read_array(c, depth + 1))
                .collect::<crate::Result<_>>()?,
        ),
    })
}

/// `n` little-endian values of a plain numeric type, copied from the file in one `memcpy`
/// (the crate only builds for little-endian targets). `n` is already capped by the bytes left.
fn pod_vec<T: bytemuck::Pod>(c: &mut Cursor, n: usize, what: &str) -> crate::Result<Vec<T>> {
    let len = n
        .checked_mul(size_of::<T>())
        .ok_or_else(|| c.err_at(c.pos, format!("{what} size overflows")))?;
    let raw = c.take(len, what)?;
    let mut out = vec![T::zeroed(); n];
    bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(raw);
    Ok(out)
}

/// `general.alignment`: any integer type, a power of two ≥ 1 that fits in u32 (as llama.cpp).
fn check_alignment(c: &Cursor, at: usize, value: &Value) -> crate::Result<u64> {
    let Some(a) = value.as_i128() else {
        return Err(c.err_at(
            at,
            format!("`{ALIGNMENT_KEY}` is a {}, expected u32", value.type_name()),
        ));
    };
    if a <= 0 || a > u32::MAX as i128 || (a as u64).count_ones() != 1 {
        return Err(c.err_at(
            at,
            format!("`{ALIGNMENT_KEY}` is {a}, expected a power of two between 1 and 2^31"),
        ));
    }
    Ok(a as u64)
}

fn read_tensor_info(c: &mut Cursor, alignment: u64) -> crate::Result<TensorInfo> {
    let name = c.str("tensor name", MAX_NAME_LEN)?.to_string();
    let dims_at = c.pos;
    let n_dims = c.u32("tensor n_dims")?;
    if n_dims == 0 || n_dims as usize > MAX_DIMS {
        return Err(c.err_at(
            dims_at,
            format!("tensor `{name}` has {n_dims} dims, expected 1 to {MAX_DIMS}"),
        ));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(c.u64("tensor dim")?);
    }
    let type_at = c.pos;
    let type_id = c.u32("tensor type")?;
    let ty = GgmlType::from_id(type_id).ok_or_else(|| {
        c.err_at(
            type_at,
            format!(
                "tensor `{name}` has ggml type {type_id} ({}), which edgetune does not support",
                type_name_of_id(type_id)
            ),
        )
    })?;
    let (n_elements, n_bytes) = geometry(&dims, ty)
        .map_err(|what| c.err_at(dims_at, format!("tensor `{name}` ({ty}): {what}")))?;
    let offset_at = c.pos;
    let offset = c.u64("tensor offset")?;
    if offset % alignment != 0 {
        return Err(c.err_at(
            offset_at,
            format!(
                "tensor `{name}` data offset {offset} is not a multiple of the alignment {alignment}"
            ),
        ));
    }
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        n_elements,
        n_bytes,
    })
}

pub(crate) fn align_up(x: u64, alignment: u64) -> Option<u64> {
    let rem = x % alignment;
    if rem == 0 {
        Some(x)
    } else {
        x.checked_add(alignment - rem)
    }
}

fn describe(t: &TensorInfo) -> String {
    format!(
        "tensor `{}` ({}, {}, {} bytes at data offset {})",
        t.name,
        t.ty,
        t.shape_string(),
        t.n_bytes,
        t.offset
    )
}

/// Every tensor lies inside the file, and no two tensors' bytes overlap.
/// (llama.cpp additionally requires tensors packed in file order; we accept any order.)
fn check_data(
    c: &Cursor,
    data_offset: u64,
    tensors: &[TensorInfo],
    info_at: &[usize],
) -> crate::Result<()> {
    let file_size = c.file_size() as u64;
    // The offset field sits 12 bytes before the end of the info: report errors there.
    let offset_field =
        |i: usize| info_at[i] + 8 + tensors[i].name.len() + 4 + 8 * tensors[i].dims.len() + 4;
    for (i, t) in tensors.iter().enumerate() {
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.n_bytes));
        match end {
            Some(end) if end <= file_size => {}
            Some(end) => {
                return Err(c.err_at(
                    offset_field(i),
                    format!(
                        "{} ends at byte {end}, past the end of the file ({file_size} bytes; data section starts at {data_offset})",
                        describe(t)
                    ),
                ));
            }
            None => {
                return Err(c.err_at(
                    offset_field(i),
                    format!("{}: end offset overflows", describe(t)),
                ));
            }
        }
    }
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| (tensors[i].offset, i));
    // Sorted by start: a tensor overlaps an earlier one iff it starts before the furthest end.
    let mut furthest: Option<usize> = None;
    for &i in &order {
        if let Some(f) = furthest {
            let prev = &tensors[f];
            if tensors[i].offset < prev.offset + prev.n_bytes {
                return Err(c.err_at(
                    offset_field(i),
                    format!(
                        "{} overlaps {} (which ends at data offset {})",
                        describe(&tensors[i]),
                        describe(prev),
                        prev.offset + prev.n_bytes
                    ),
                ));
            }
        }
        let end = tensors[i].offset + tensors[i].n_bytes;
        if furthest.is_none_or(|f| end > tensors[f].offset + tensors[f].n_bytes) {
            furthest = Some(i);
        }
    }
    Ok(())
}
