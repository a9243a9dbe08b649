//! The quantized products `x·Wᵀ` and `dy·W` against dequantize + naive f64 matmul, every type.

use edgetune::quant::GgmlType;
use edgetune::quant::matmul::{
    QuantMatrix, matmul_dyw, matmul_dyw_ref, matmul_xwt, matmul_xwt_ref,
};

use crate::common;

/// Naive f64 products over the reference dequantization (independent of `dot_ref`).
fn naive(w: &QuantMatrix, x: &[f32], n: usize, transpose: bool) -> (Vec<f64>, Vec<f64>) {
    let mut wd = vec![0.0f32; w.rows * w.cols];
    (w.ty.traits().dequantize_ref)(w.data, &mut wd);
    let (k_in, k_out) = if transpose {
        (w.rows, w.cols)
    } else {
        (w.cols, w.rows)
    };
    let mut out = vec![0.0f64; n * k_out];
    let mut mag = vec![0.0f64; n * k_out];
    for i in 0..n {
        for o in 0..k_out {
            for p in 0..k_in {
                let wv = if transpose {
                    wd[p * w.cols + o]
                } else {
                    wd[o * w.cols + p]
                } as f64;
                let prod = x[i * k_in + p] as f64 * wv;
                out[i * k_out + o] += prod;
                mag[i * k_out + o] += prod.abs();
            }
        }
    }
    (out, mag)
}

/// f32 results summed over `k` terms in some order: |err| ≤ (k + 2)·ε·Σ|terms| (the classic
/// bound for recursive summation, with slack for the final f64→f32 rounding of the reference).
fn assert_close(what: &str, got: &[f32], want: &[f64], mag: &[f64], k: usize) {
    let eps = f32::EPSILON as f64;
    for (idx, ((g, w), m)) in got.iter().zip(want).zip(mag).enumerate() {
        let bound = (k as f64 + 2.0) * eps * m + 1e-30;
        let d = (*g as f64 - w).abs();
        assert!(
            d <= bound,
            "{what}: element {idx}: got {g}, want {w}, |Δ| {d:e} > {bound:e}"
        );
    }
}

#[test]
fn products_match_naive_f64_for_every_type() {
    let mut rng = common::rng(11);
    for ty in GgmlType::ALL {
        let be = ty.block_elems();
        // Shapes: rows not a multiple of 16, columns spanning several 256-strips plus a remainder.
        let cols = if be == 1 { 300 } else { 512 + be.max(256) };
        let rows = 37;
        let data = common::random_tensor(ty, rows * cols, &mut rng);
        let w = QuantMatrix::new(ty, rows, cols, &data).unwrap();
        for n in [1usize, 3, 4, 7, 13] {
            let x = common::gaussian(&mut rng, n * cols, 1.0);
            let (want, mag) = naive(&w, &x, n, false);
            let mut y = vec![f32::NAN; n * rows];
            matmul_xwt(&x, n, &w, &mut y).unwrap();
            assert_close(&format!("{ty} x·Wᵀ n={n}"), &y, &want, &mag, cols);
            matmul_xwt_ref(&x, n, &w, &mut y).unwrap();
            assert_close(&format!("{ty} x·Wᵀ ref n={n}"), &y, &want, &mag, 1);

            let dy = common::gaussian(&mut rng, n * rows, 1.0);
            let (want, mag) = naive(&w, &dy, n, true);
            let mut dx = vec![f32::NAN; n * cols];
            matmul_dyw(&dy, n, &w, &mut dx).unwrap();
            assert_close(&format!("{ty} dy·W n={n}"), &dx, &want, &mag, rows);
            matmul_dyw_ref(&dy, n, &w, &mut dx).unwrap();
            assert_close(&format!("{ty} dy·W ref n={n}"), &dx, &want, &mag, 1);
        }
    }
}

#[test]
fn shape_mismatches_are_errors_naming_the_numbers() {
    let data = vec![0u8; 2 * 18];
    let err = QuantMatrix::new(GgmlType::Q4_0, 2, 48, &data)
        .unwrap_err()
        .to_string();
    assert!(err.contains("48") && err.contains("32"), "{err}");
    let err = QuantMatrix::new(GgmlType::Q4_0, 3, 32, &data)
        .unwrap_err()
        .to_string();
    assert!(err.contains("54") && err.contains("36"), "{err}");
    let w = QuantMatrix::new(GgmlType::Q4_0, 2, 32, &data).unwrap();
    let mut y = vec![0.0; 3];
    let err = matmul_xwt(&[0.0; 64], 2, &w, &mut y)
        .unwrap_err()
        .to_string();
    assert!(err.contains("y has 3 values"), "{err}");
}
