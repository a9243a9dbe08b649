//! The adapters' init linear algebra (`adapters::linalg`) against its definitions: Householder
//! thin QR, one-sided Jacobi SVD, and the subspace-iteration truncated SVD against matrices
//! built with known singular triplets.

use crate::adapters_support::{gram_schmidt, with_spectrum};
use crate::backend_grad_fd::random64;
use edgetune::adapters::linalg::{qr_thin, svd_jacobi, svd_top};

fn assert_orthonormal_cols(q: &[f64], m: usize, k: usize, tol: f64, what: &str) {
    for p in 0..k {
        for j in 0..k {
            let dot: f64 = (0..m).map(|i| q[i * k + p] * q[i * k + j]).sum();
            let want = if p == j { 1.0 } else { 0.0 };
            assert!((dot - want).abs() < tol, "{what}: column {p}·{j} = {dot}");
        }
    }
}

#[test]
fn qr_thin_is_a_qr_factorisation() {
    for (m, k, seed) in [(9, 4, 1), (6, 6, 2), (30, 7, 3)] {
        let a = random64(m * k, 1.0, seed);
        let (q, r) = qr_thin(&a, m, k).unwrap();
        assert_orthonormal_cols(&q, m, k, 1e-12, "Q");
        for i in 0..k {
            for j in 0..i {
                assert_eq!(r[i * k + j], 0.0, "R[{i},{j}] below the diagonal");
            }
        }
        for i in 0..m {
            for j in 0..k {
                let qr: f64 = (0..k).map(|p| q[i * k + p] * r[p * k + j]).sum();
                assert!((qr - a[i * k + j]).abs() < 1e-12, "QR[{i},{j}]");
            }
        }
        // Unique up to column signs: Gram–Schmidt gives the same columns.
        let gs = gram_schmidt(&a, m, k);
        for j in 0..k {
            let sign = (0..m)
                .map(|i| q[i * k + j] * gs[i * k + j])
                .sum::<f64>()
                .signum();
            for i in 0..m {
                assert!((q[i * k + j] - sign * gs[i * k + j]).abs() < 1e-10);
            }
        }
    }
    assert!(qr_thin(&[1.0; 6], 2, 3).is_err());
}

#[test]
fn qr_of_a_rank_deficient_block_stays_orthonormal() {
    // Column 1 = 2 × column 0, column 2 = 0.
    let m = 5;
    let c = random64(m, 1.0, 4);
    let a: Vec<f64> = (0..m * 3)
        .map(|t| match t % 3 {
            0 => c[t / 3],
            1 => 2.0 * c[t / 3],
            _ => 0.0,
        })
        .collect();
    let (q, r) = qr_thin(&a, m, 3).unwrap();
    assert_orthonormal_cols(&q, m, 3, 1e-12, "Q");
    for i in 0..m {
        for j in 0..3 {
            let qr: f64 = (0..3).map(|p| q[i * 3 + p] * r[p * 3 + j]).sum();
            assert!((qr - a[i * 3 + j]).abs() < 1e-12);
        }
    }
}

#[test]
fn jacobi_svd_reconstructs_with_descending_values() {
    for (m, n, seed) in [(9, 6, 5), (4, 4, 6), (12, 1, 7)] {
        let a = random64(m * n, 1.0, seed);
        let (u, s, v) = svd_jacobi(&a, m, n).unwrap();
        assert_orthonormal_cols(&u, m, n, 1e-12, "U");
        assert_orthonormal_cols(&v, n, n, 1e-12, "V");
        assert!(
            s.windows(2).all(|p| p[0] >= p[1]) && s[n - 1] >= 0.0,
            "{s:?}"
        );
        for i in 0..m {
            for j in 0..n {
                let rec: f64 = (0..n).map(|p| u[i * n + p] * s[p] * v[j * n + p]).sum();
                assert!((rec - a[i * n + j]).abs() < 1e-12, "({i},{j})");
            }
        }
        // Σ σ² = ‖A‖_F².
        let f: f64 = a.iter().map(|x| x * x).sum();
        assert!((s.iter().map(|x| x * x).sum::<f64>() - f).abs() < 1e-10 * f);
    }
}

#[test]
fn truncated_svd_finds_the_leading_triplets() {
    let (m, n) = (40, 28);
    let sigma: Vec<f64> = (0..20).map(|i| 10.0 * 0.75f64.powi(i)).collect();
    let (w, u, v) = with_spectrum(m, n, &sigma, 10);
    let w32: Vec<f32> = w.iter().map(|&x| x as f32).collect();
    let k = 4;
    let top = svd_top(&w32, m, n, k, 8, 11).unwrap();
    for j in 0..k {
        assert!(
            (top.s[j] - sigma[j]).abs() < 1e-5 * sigma[0],
            "σ{j}: {} vs {}",
            top.s[j],
            sigma[j]
        );
        // Same singular pair up to a common sign.
        let sign = (0..m)
            .map(|i| top.u[i * k + j] * u[i * 20 + j])
            .sum::<f64>()
            .signum();
        for i in 0..m {
            assert!(
                (top.u[i * k + j] - sign * u[i * 20 + j]).abs() < 1e-4,
                "u[{i},{j}]"
            );
        }
        for i in 0..n {
            assert!(
                (top.vt[j * n + i] - sign * v[i * 20 + j]).abs() < 1e-4,
                "v[{i},{j}]"
            );
        }
    }
    // Against the full Jacobi SVD of a random matrix when the block covers min(m, n).
    let a = random64(12 * 7, 1.0, 12);
    let a32: Vec<f32> = a.iter().map(|&x| x as f32).collect();
    let a64: Vec<f64> = a32.iter().map(|&x| x as f64).collect();
    let (_, s_full, _) = svd_jacobi(&a64, 12, 7).unwrap();
    let top = svd_top(&a32, 12, 7, 4, 0, 13).unwrap();
    for j in 0..4 {
        assert!((top.s[j] - s_full[j]).abs() < 1e-5 * s_full[0], "σ{j}");
    }
    assert!(svd_top(&a32, 12, 7, 8, 2, 0).is_err());
    assert!(svd_top(&a32, 12, 7, 0, 2, 0).is_err());
}
