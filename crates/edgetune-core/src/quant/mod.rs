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
pub(crate) mod simd;

pub use int8::Compute;

pub use crate::gguf::ggml_type::{GgmlType, type_name_of_id};

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
    ($ty:ident, $m:path, quantize, rows) => {
        traits!(@make $ty, $m, Some({ use $m as m; m::quantize_ref }),
            Some({ use $m as m; m::dot_rows }))
    };
    ($ty:ident, $m:path, quantize) => {
        traits!(@make $ty, $m, Some({ use $m as m; m::quantize_ref }), None)
    };
    ($ty:ident, $m:path) => {
        traits!(@make $ty, $m, None, None)
    };
    (@make $ty:ident, $m:path, $q:expr, $rows:expr) => {{
        use $m as m;
        TypeTraits {
            ty: GgmlType::$ty,
            name: GgmlType::$ty.name(),
            block_elems: GgmlType::$ty.block_elems(),
            block_bytes: GgmlType::$ty.block_bytes(),
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
    traits!(F32, float::fp32, quantize),
    traits!(F16, float::fp16, quantize),
    traits!(Q4_0, q4_0, quantize, rows),
    traits!(Q4_1, q4_1, quantize),
    traits!(Q5_0, q5::q5_0, quantize),
    traits!(Q5_1, q5::q5_1, quantize),
    traits!(Q8_0, q8::q8_0, quantize),
    traits!(Q8_1, q8::q8_1),
    traits!(Q2_K, k_quants::q2_k),
    traits!(Q3_K, k_quants::q3_k),
    traits!(Q4_K, k_quants::q4_k, quantize, rows),
    traits!(Q5_K, k_quants::q5_k, quantize),
    traits!(Q6_K, k_quants::q6_k, quantize),
    traits!(Q8_K, k_quants::q8_k),
    traits!(IQ4_NL, iq4_nl, quantize),
    traits!(BF16, float::bf16, quantize),
];

/// The kernels of a type: its entry in the table.
pub fn traits_of(ty: GgmlType) -> &'static TypeTraits {
    let entry = &TABLE[ty.index()];
    debug_assert_eq!(entry.ty, ty);
    entry
}

impl GgmlType {
    /// The kernel table's entry of this type.
    pub fn traits(self) -> &'static TypeTraits {
        traits_of(self)
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
            assert_eq!(TABLE[i].name, t.name());
        }
    }
}
