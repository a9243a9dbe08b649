//! Quantized matrix product `y[n, out] = x[n, in] · Wᵀ` for the backend: the projections
//! (q, k, v, o, gate, up, down) and the output head.
//!
//! The kernels live in [`crate::quant::matmul`] (dequantize-on-the-fly over mapped blocks,
//! rayon over W's rows); this file is the backend's entry point and its reference.

use crate::Result;
use crate::quant::matmul::{self as qmm, QuantMatrix};

/// Fast version (see [`qmm::matmul_xwt`] for the strategy).
pub fn matmul_xwt(x: &[f32], n: usize, w: &QuantMatrix, y: &mut [f32]) -> Result<()> {
    qmm::matmul_xwt(x, n, w, y)
}

/// Scalar specification: one reference dot (f64 sums) per output.
pub fn matmul_xwt_ref(x: &[f32], n: usize, w: &QuantMatrix, y: &mut [f32]) -> Result<()> {
    qmm::matmul_xwt_ref(x, n, w, y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::test_util::{assert_close, random};
    use crate::quant::{self, GgmlType};

    #[test]
    fn matches_ref_for_the_model_shapes() {
        // n = 1 and 3 take the per-row dot path, 4 and 13 the dequantized-panel path.
        let (rows, cols) = (67, 512);
        let values = random(rows * cols, 0.1, 21);
        for ty in [
            GgmlType::F32,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
        ] {
            let mut bytes = vec![0u8; ty.bytes_for((rows * cols) as u64).unwrap() as usize];
            quant::quantize(ty, &values, &mut bytes).unwrap();
            let w = QuantMatrix::new(ty, rows, cols, &bytes).unwrap();
            for n in [1, 3, 4, 13] {
                let x = random(n * cols, 1.0, n as u64);
                let (mut a, mut b) = (vec![0.0; n * rows], vec![0.0; n * rows]);
                matmul_xwt(&x, n, &w, &mut a).unwrap();
                matmul_xwt_ref(&x, n, &w, &mut b).unwrap();
                // Sums of 512 f32 products of size ~0.1: accumulated rounding ≲ 512 · 2^-24 ·
                // Σ|x·w| ≈ 1e-4 absolute at worst; outputs are O(1).
                assert_close(&a, &b, 1e-4, &format!("matmul {ty} n={n}"));
            }
            assert!(matmul_xwt(&[0.0; 5], 1, &w, &mut [0.0; 67]).is_err());
        }
    }
}
