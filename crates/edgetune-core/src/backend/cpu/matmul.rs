//! Quantized matrix product `y[n, out] = x[n, in] · Wᵀ` for the backend: the projections
//! (q, k, v, o, gate, up, down) and the output head.
//!
//! The kernels live in [`crate::quant::matmul`] (dequantize-on-the-fly over mapped blocks,
//! rayon over W's rows); this file is the backend's entry point and its reference.
//!
//! Backward: only the input gradient `dx[n, in] = dy[n, out] · Ŵ` (Ŵ = W dequantized, the linear
//! map the forward applies); the frozen base gets no weight gradient.

use super::Real;
use crate::Result;
use crate::backend::check_len;
use crate::quant::matmul::{self as qmm, QuantMatrix};

/// Fast version (see [`qmm::matmul_xwt`] for the strategy).
pub fn matmul_xwt(x: &[f32], n: usize, w: &QuantMatrix, y: &mut [f32]) -> Result<()> {
    qmm::matmul_xwt(x, n, w, y)
}

/// Scalar specification: one reference dot (f64 sums) per output.
pub fn matmul_xwt_ref(x: &[f32], n: usize, w: &QuantMatrix, y: &mut [f32]) -> Result<()> {
    qmm::matmul_xwt_ref(x, n, w, y)
}

/// Input gradient of [`matmul_xwt`] (overwrites `dx`), see [`qmm::matmul_dyw`].
pub fn matmul_dyw(dy: &[f32], n: usize, w: &QuantMatrix, dx: &mut [f32]) -> Result<()> {
    qmm::matmul_dyw(dy, n, w, dx)
}

/// Scalar specification of [`matmul_dyw`], generic over the element type: `Ŵ` from the reference
/// dequantizer, f64 sums.
pub fn matmul_dyw_ref<T: Real>(dy: &[T], n: usize, w: &QuantMatrix, dx: &mut [T]) -> Result<()> {
    check_len("matmul dy·W", "dy", dy.len(), n, w.rows)?;
    check_len("matmul dy·W", "dx", dx.len(), n, w.cols)?;
    let dequantize_ref = w.ty.traits().dequantize_ref;
    let mut wd = vec![0.0f32; w.rows * w.cols];
    for r in 0..w.rows {
        dequantize_ref(w.row(r), &mut wd[r * w.cols..(r + 1) * w.cols]);
    }
    for i in 0..n {
        for c in 0..w.cols {
            let acc: f64 = (0..w.rows)
                .map(|r| dy[i * w.rows + r].to_f64() * wd[r * w.cols + c] as f64)
                .sum();
            dx[i * w.cols + c] = T::from_f64(acc);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::test_util::{assert_close, random};
    use crate::quant::{self, GgmlType};

    #[test]
    fn matches_ref_for_the_model_shapes() {
        // n = 1 takes the quantized per-row dots, 2..=12 the dequantized-row dots (several
        // sequences decoding together), 13 and more the dequantized-panel tile.
        let (rows, cols) = (67, 512);
        let values = random(rows * cols, 0.1, 21);
        for ty in [
            GgmlType::F32,
            GgmlType::Q8_0,
            GgmlType::Q4_1,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
        ] {
            let mut bytes = vec![0u8; ty.bytes_for((rows * cols) as u64).unwrap() as usize];
            quant::quantize(ty, &values, &mut bytes).unwrap();
            let w = QuantMatrix::new(ty, rows, cols, &bytes).unwrap();
            for n in [1, 2, 3, 4, 12, 13] {
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

    #[test]
    fn dyw_matches_generic_ref() {
        let (rows, cols) = (37, 512);
        let values = random(rows * cols, 0.1, 22);
        for ty in [GgmlType::F32, GgmlType::Q4_0, GgmlType::Q4_K] {
            let mut bytes = vec![0u8; ty.bytes_for((rows * cols) as u64).unwrap() as usize];
            quant::quantize(ty, &values, &mut bytes).unwrap();
            let w = QuantMatrix::new(ty, rows, cols, &bytes).unwrap();
            for n in [1, 7] {
                let dy = random(n * rows, 1.0, 30 + n as u64);
                let (mut a, mut b) = (vec![0.0; n * cols], vec![0.0; n * cols]);
                matmul_dyw(&dy, n, &w, &mut a).unwrap();
                matmul_dyw_ref(&dy, n, &w, &mut b).unwrap();
                // 37-term f32 sums of products ≲ 0.1: absolute error ≲ 37 · 2^-24 · 4 ≈ 1e-5.
                assert_close(&a, &b, 2e-5, &format!("matmul_dyw {ty} n={n}"));
            }
            assert!(matmul_dyw_ref(&[0.0f32; 5], 1, &w, &mut [0.0; 512]).is_err());
        }
    }
}
