//! Tensor infos: name, shape in ne order, ggml type, data offset and the derived sizes.
//!
//! The shape rules are shared by the reader and the writer so that every file we write is one
//! we accept: 1..=4 dims, each ≥ 1 and ≤ i64::MAX (ggml stores ne as int64), the element count
//! ≤ i64::MAX, and `ne[0]` (the contiguous dimension) a multiple of the type's block size.
//! Zero-length dims are rejected (llama.cpp accepts them; no model file has one, and every
//! consumer can then rely on `row_len() ≥ 1` and `n_rows() ≥ 1`).

use super::ggml_type::GgmlType;

/// Most dims a ggml tensor has (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// One tensor of a GGUF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ne order: `dims[0]` is the contiguous dimension (the row length); 1..=4 dims, each ≥ 1.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Byte offset relative to the start of the data section; a multiple of the alignment.
    pub offset: u64,
    /// Product of `dims`.
    pub n_elements: u64,
    /// Bytes of data: `n_elements / block_elems × block_bytes`.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Product of `dims[1..]` (1 for a vector).
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }

    /// `dims[0]`, the contiguous dimension.
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Bytes of one row (`row_len` elements, whole blocks).
    pub fn row_bytes(&self) -> u64 {
        self.row_len() / self.ty.block_elems() as u64 * self.ty.block_bytes() as u64
    }

    /// `4096×4096` for messages.
    pub fn shape_string(&self) -> String {
        shape_string(&self.dims)
    }
}

pub(crate) fn shape_string(dims: &[u64]) -> String {
    let parts: Vec<String> = dims.iter().map(u64::to_string).collect();
    if parts.is_empty() {
        "[]".into()
    } else {
        parts.join("×")
    }
}

/// Checks a shape against the rules above and returns `(n_elements, n_bytes)`; the error text
/// names the numbers (the caller adds the file, offset and tensor name).
pub(crate) fn geometry(dims: &[u64], ty: GgmlType) -> Result<(u64, u64), String> {
    if dims.is_empty() || dims.len() > MAX_DIMS {
        return Err(format!("{} dims, expected 1 to {MAX_DIMS}", dims.len()));
    }
    let mut n: u64 = 1;
    for (i, &d) in dims.iter().enumerate() {
        if d == 0 {
            return Err(format!("dim {i} is 0 (shape {})", shape_string(dims)));
        }
        if d > i64::MAX as u64 {
            return Err(format!(
                "dim {i} is {d}, more than ggml's limit {}",
                i64::MAX
            ));
        }
        n = match n.checked_mul(d) {
            Some(n) if n <= i64::MAX as u64 => n,
            _ => {
                return Err(format!(
                    "element count of shape {} overflows ggml's limit {}",
                    shape_string(dims),
                    i64::MAX
                ));
            }
        };
    }
    let block = ty.block_elems() as u64;
    if !dims[0].is_multiple_of(block) {
        return Err(format!(
            "row length ne[0] = {} is not a multiple of the {ty} block size {block} (shape {})",
            dims[0],
            shape_string(dims)
        ));
    }
    let bytes = ty.bytes_for(n).ok_or_else(|| {
        format!(
            "byte size of {n} {ty} elements overflows (shape {})",
            shape_string(dims)
        )
    })?;
    Ok((n, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_of_hand_computed_shapes() {
        // 4096×4096 Q4_K: 16 blocks of 256 per row, 144 bytes each → 4096 × 16 × 144.
        assert_eq!(
            geometry(&[4096, 4096], GgmlType::Q4_K),
            Ok((16_777_216, 9_437_184))
        );
        assert_eq!(geometry(&[32, 2, 3], GgmlType::Q8_0), Ok((192, 6 * 34)));
        assert_eq!(geometry(&[3], GgmlType::F16), Ok((3, 6)));
        assert!(geometry(&[], GgmlType::F32).is_err());
        assert!(geometry(&[1, 1, 1, 1, 1], GgmlType::F32).is_err());
        assert!(geometry(&[0, 4], GgmlType::F32).is_err());
        assert!(
            geometry(&[100, 4], GgmlType::Q4_K)
                .unwrap_err()
                .contains("not a multiple")
        );
        assert!(geometry(&[1 << 32, 1 << 32], GgmlType::F32).is_err());
        assert!(geometry(&[u64::MAX], GgmlType::F32).is_err());
        // 2^62 F32 elements fit in i64 but not their byte count (2^64).
        assert!(
            geometry(&[1 << 62], GgmlType::F32)
                .unwrap_err()
                .contains("overflows")
        );
    }

    #[test]
    fn rows() {
        let t = TensorInfo {
            name: "w".into(),
            dims: vec![256, 3, 2],
            ty: GgmlType::Q6_K,
            offset: 0,
            n_elements: 1536,
            n_bytes: 6 * 210,
        };
        assert_eq!((t.row_len(), t.n_rows(), t.row_bytes()), (256, 6, 210));
        assert_eq!(t.shape_string(), "256×3×2");
    }
}
