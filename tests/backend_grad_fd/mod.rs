//! Finite-difference helpers shared by the `backend_grad_*` tests
//! (docs/ARCHITECTURE.md#no-allocation-during-a-step, the pattern of
//! docs/METHODS.md#gradient-checks): central differences in f64 of a scalar function, random data,
//! and a relative-error check that reports the worst element.
#![allow(dead_code)]

use rand::{Rng, SeedableRng, rngs::StdRng};

/// Uniform values in `±scale`, seeded.
pub fn random64(n: usize, scale: f64, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

pub fn to32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

pub fn to64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// `Σ r·y`: the random linear functional whose gradient with respect to `y` is `r`.
pub fn functional(r: &[f64], y: &[f64]) -> f64 {
    assert_eq!(r.len(), y.len());
    r.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Central differences of `f` at `x`: element `j` moves by `±h_j`, `h_j = 1e-6·max(1, |x_j|)`.
pub fn fd_grad(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|j| {
            let h = 1e-6 * x[j].abs().max(1.0);
            xp[j] = x[j] + h;
            let up = f(&xp);
            xp[j] = x[j] - h;
            let down = f(&xp);
            xp[j] = x[j];
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// Worst `|a − n| / max(|n|, 1e-2 · max|n|)` (relative, except that entries far below the
/// gradient's scale are compared against 1% of that scale); asserts it is ≤ `tol` and returns it.
pub fn assert_grad(analytic: &[f64], numeric: &[f64], tol: f64, what: &str) -> f64 {
    assert_eq!(analytic.len(), numeric.len(), "{what}: lengths");
    let scale = numeric.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{what}: the numeric gradient is all zero");
    let floor = 1e-2 * scale;
    let mut worst = (0usize, 0.0f64);
    for (j, (a, n)) in analytic.iter().zip(numeric).enumerate() {
        let e = (a - n).abs() / n.abs().max(floor);
        assert!(e.is_finite(), "{what}: non-finite at {j}: {a} vs {n}");
        if e > worst.1 {
            worst = (j, e);
        }
    }
    println!("{what}: max relative error {:.2e}", worst.1);
    assert!(
        worst.1 <= tol,
        "{what}: relative error {:.3e} at {} (analytic {}, numeric {}), tolerance {tol:e}",
        worst.1,
        worst.0,
        analytic[worst.0],
        numeric[worst.0]
    );
    worst.1
}
