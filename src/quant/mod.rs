//! ggml quantization formats: one file per block family, and one table keyed by ggml type id.
//!
//! Every family module exposes the same functions over raw little-endian block bytes
//! (`src.len()` a multiple of the block size; `dst`/`x` holding `blocks × block_elems` values):
//!
//! - `dequantize_ref(src, dst)`: the scalar specification, bit-exact with ggml / gguf-py;
//! - `dequantize(src, dst)`: the fastest available version (may be the reference);
//! - `quantize_ref(src, dst)`: round-to-nearest with llama.cpp's reference scale choices
//!   (only for the types we write);
//! - `dot_ref(row, x)`: Σ dequantized(row)·x, accumulated in f64 — the specification of `dot`;
//! - `dot(row, x)`: the SIMD version chosen at run time (AVX2+FMA on x86-64, NEON on aarch64).
//!
//! Blocks are `#[repr(C)]` structs of byte arrays (alignment 1), so any byte slice of the
//! mapped file can be viewed as blocks without copying and without alignment requirements.

pub mod float;
pub mod icq;
pub mod int8;
pub mod iq4_nl;
pub mod k_quants;
pub mod matmul;
pub mod microkernel;
pub mod q4_0;
pub mod q4_1;
pub mod q5;
pub mod q8;
pub mod requantize;
pub(crate) mod simd;

pub use int8::Compute;

use std::fmt;

/// ggml tensor types (the `type` field of a GGUF tensor info).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ4_NL = 20,
    BF16 = 30,
}

/// Decodes `src` (whole blocks) into `dst` (`blocks × block_elems` values).
pub type DequantizeFn = fn(src: &[u8], dst: &mut [f32]);
/// Encodes `src` (a multiple of `block_elems` values) into `dst` (whole blocks).
pub type QuantizeFn = fn(src: &[f32], dst: &mut [u8]);
/// Σ dequantized(row)[i] · x[i] over a row of whole blocks.
pub type DotFn = fn(row: &[u8], x: &[f32]) -> f32;
/// Matrix-vector kernel: `y[r] = dot(row r, x)` for the `y.len()` rows stored back to back in
/// `rows`, `row_bytes` apart (each `x.len()` elements). Several rows share each load of x.
pub type DotRowsFn = fn(rows: &[u8], row_bytes: usize, x: &[f32], y: &mut [f32]);

/// What edgetune knows about one ggml type: its block geometry and its kernels.
pub struct TypeTraits {
    pub ty: GgmlType,
    /// Name as ggml and gguf-py print it (`Q4_K`, `BF16`, …).
    pub name: &'static str,
    /// Elements per block (1 for the float types).
    pub block_elems: usize,
    /// Bytes per block.
    pub block_bytes: usize,
    pub dequantize_ref: DequantizeFn,
    pub dequantize: DequantizeFn,
    /// `None` for the types we read but never write.
    pub quantize_ref: Option<QuantizeFn>,
    pub dot_ref: DotFn,
    pub dot: DotFn,
    /// A multi-row matrix-vector kernel, equal to `dot` per row within rounding (`None`: the
    /// products call `dot` row by row).
    pub dot_rows: Option<DotRowsFn>,
}

macro_rules! traits {
    ($ty:ident, $name:literal, $elems:expr, $bytes:expr, $m:path, quantize, rows) => {
        traits!(@make $ty, $name, $elems, $bytes, $m, Some({ use $m as m; m::quantize_ref }),
            Some({ use $m as m; m::dot_rows }))
    };
    ($ty:ident, $name:literal, $elems:expr, $bytes:expr, $m:path, quantize) => {
        traits!(@make $ty, $name, $elems, $bytes, $m, Some({ use $m as m; m::quantize_ref }), None)
    };
    ($ty:ident, $name:literal, $elems:expr, $bytes:expr, $m:path) => {
        traits!(@make $ty, $name, $elems, $bytes, $m, None, None)
    };
    (@make $ty:ident, $name:literal, $elems:expr, $bytes:expr, $m:path, $q:expr, $rows:expr) => {{
        use $m as m;
        TypeTraits {
            ty: GgmlType::$ty,
            name: $name,
            block_elems: $elems,
            block_bytes: $bytes,
            dequantize_ref: m::dequantize_ref,
            dequantize: m::dequantize,
            quantize_ref: $q,
            dot_ref: m::dot_ref,
            dot: m::dot,
            dot_rows: $rows,
        }
    }};
}

/// The table, in type-id order.
static TABLE: [TypeTraits; 16] = [
    traits!(F32, "F32", 1, 4, float::fp32, quantize),
    traits!(F16, "F16", 1, 2, float::fp16, quantize),
    traits!(Q4_0, "Q4_0", 32, 18, q4_0, quantize, rows),
    traits!(Q4_1, "Q4_1", 32, 20, q4_1, quantize),
    traits!(Q5_0, "Q5_0", 32, 22, q5::q5_0, quantize),
    traits!(Q5_1, "Q5_1", 32, 24, q5::q5_1, quantize),
    traits!(Q8_0, "Q8_0", 32, 34, q8::q8_0, quantize),
    traits!(Q8_1, "Q8_1", 32, 36, q8::q8_1),
    traits!(Q2_K, "Q2_K", 256, 84, k_quants::q2_k),
    traits!(Q3_K, "Q3_K", 256, 110, k_quants::q3_k),
    traits!(Q4_K, "Q4_K", 256, 144, k_quants::q4_k, quantize, rows),
    traits!(Q5_K, "Q5_K", 256, 176, k_quants::q5_k, quantize),
    traits!(Q6_K, "Q6_K", 256, 210, k_quants::q6_k, quantize),
    traits!(Q8_K, "Q8_K", 256, 292, k_quants::q8_k),
    traits!(IQ4_NL, "IQ4_NL", 32, 18, iq4_nl, quantize),
    traits!(BF16, "BF16", 1, 2, float::bf16, quantize),
];

impl GgmlType {
    /// Every type edgetune knows, in id order.
    pub const ALL: [GgmlType; 16] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ4_NL,
        GgmlType::BF16,
    ];

    /// The type with ggml id `id`, if edgetune knows it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| *t as u32 == id)
    }

    /// The type whose name (as ggml prints it, case-insensitive) is `name`.
    pub fn from_name(name: &str) -> Option<GgmlType> {
        GgmlType::ALL
            .into_iter()
            .find(|t| t.traits().name.eq_ignore_ascii_case(name))
    }

    /// ggml's id of this type.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// The table entry of this type.
    pub fn traits(self) -> &'static TypeTraits {
        let entry = &TABLE[GgmlType::ALL.iter().position(|t| *t == self).unwrap_or(0)];
        debug_assert_eq!(entry.ty, self);
        entry
    }

    pub fn name(self) -> &'static str {
        self.traits().name
    }

    pub fn block_elems(self) -> usize {
        self.traits().block_elems
    }

    pub fn block_bytes(self) -> usize {
        self.traits().block_bytes
    }

    /// Bytes taken by `n` elements, or `None` when `n` is not a whole number of blocks or the
    /// size overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let t = self.traits();
        if !n.is_multiple_of(t.block_elems as u64) {
            return None;
        }
        (n / t.block_elems as u64).checked_mul(t.block_bytes as u64)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Name of a ggml type id for messages, including ids edgetune does not support.
pub fn type_name_of_id(id: u32) -> &'static str {
    if let Some(t) = GgmlType::from_id(id) {
        return t.name();
    }
    match id {
        4 => "Q4_2 (removed)",
        5 => "Q4_3 (removed)",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        31..=33 => "Q4_0_4_4/4_8/8_8 (removed)",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown",
    }
}

/// Dequantizes a whole tensor's bytes (`src`, whole blocks) with the fast kernel.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> crate::Result<()> {
    let t = ty.traits();
    check_lengths(t, src.len(), dst.len())?;
    (t.dequantize)(src, dst);
    Ok(())
}

/// Quantizes `src` into `dst` with the reference quantizer of `ty`.
pub fn quantize(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> crate::Result<()> {
    let t = ty.traits();
    let q = t
        .quantize_ref
        .ok_or_else(|| crate::Error::UnsupportedType {
            id: ty.id(),
            name: t.name,
            what: "edgetune reads this type but does not quantize to it".into(),
        })?;
    check_lengths(t, dst.len(), src.len())?;
    q(src, dst);
    Ok(())
}

fn check_lengths(t: &TypeTraits, bytes: usize, elems: usize) -> crate::Result<()> {
    if !elems.is_multiple_of(t.block_elems)
        || !bytes.is_multiple_of(t.block_bytes)
        || bytes / t.block_bytes != elems / t.block_elems
    {
        return Err(crate::Error::Invalid(format!(
            "{}: {bytes} bytes and {elems} values are not the same whole number of blocks \
             ({} values in {} bytes per block)",
            t.name, t.block_elems, t.block_bytes
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_id_order_and_consistent() {
        for (i, t) in GgmlType::ALL.iter().enumerate() {
            assert_eq!(TABLE[i].ty, *t);
            assert_eq!(GgmlType::from_id(t.id()), Some(*t));
            assert_eq!(GgmlType::from_name(t.name()), Some(*t));
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::Q4_K.bytes_for(4096), Some(16 * 144));
        assert_eq!(GgmlType::Q4_K.bytes_for(100), None);
    }
}
