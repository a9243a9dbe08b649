//! Test helpers shared by the K-quant test modules: seeded random data, and the parity checks
//! of `dot` against `dot_ref` and of `dequantize` against `dequantize_ref`.

use super::QK_K;
use rand::{Rng as _, SeedableRng};

pub(crate) type Rng = rand::rngs::StdRng;

pub(crate) fn rng(seed: u64) -> Rng {
    Rng::seed_from_u64(seed)
}

pub(crate) fn fill_bytes(rng: &mut Rng, out: &mut [u8]) {
    for b in out {
        *b = rng.random();
    }
}

/// A finite, positive, normal f16 with magnitude 2⁻¹⁴ … 2⁰ (typical of real super-scales) and
/// random mantissa bits.
pub(crate) fn sane_f16(rng: &mut Rng) -> [u8; 2] {
    let exponent: u16 = rng.random_range(1..=15);
    let mantissa: u16 = rng.random_range(0..1024);
    ((exponent << 10) | mantissa).to_le_bytes()
}

/// `n` samples of N(0, sigma²) (Box–Muller; rand 0.9 without rand_distr has no normal law).
pub(crate) fn gaussian(rng: &mut Rng, n: usize, sigma: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32 * sigma
        })
        .collect()
}

/// Asserts |dot − dot_ref| ≤ k·ε·S + tiny for a row of `nb` blocks.
///
/// The kernels compute Σ (a·q − b)·x as Σ a·(Σ q·x) − Σ b·(Σ x) per sub-block, so the magnitude
/// the rounding errors scale with is S = Σ (|a·q| + |b|)·|x| (per element, `offsets` holds b,
/// zero for the symmetric formats), not Σ |y·x|, which can be much smaller when a·q ≈ b.
/// Every partial sum in the kernels is a chain of at most 8 products per sub-block lane, one
/// scaling, at most 8 sub-block (or 16-element group) terms per block per accumulator, and a
/// final reduction of depth ≤ 5, so with nb blocks no value passes through more than
/// 8·(2·nb + 2) + 8 roundings; k = 16·nb + 24 covers that (γ_k ≤ 1.01·k·ε at these sizes).
/// `tiny` absorbs underflow when S is subnormal-sized.
pub(crate) fn check_dot(
    row: &[u8],
    x: &[f32],
    nb: usize,
    dequantize_ref: fn(&[u8], &mut [f32]),
    offsets: &[f32],
    dot: fn(&[u8], &[f32]) -> f32,
    dot_ref: fn(&[u8], &[f32]) -> f32,
) {
    check_dot_value(row, x, nb, dequantize_ref, offsets, dot(row, x), dot_ref);
}

/// [`check_dot`] for a value `got` already computed (by a multi-row kernel).
pub(crate) fn check_dot_value(
    row: &[u8],
    x: &[f32],
    nb: usize,
    dequantize_ref: fn(&[u8], &mut [f32]),
    offsets: &[f32],
    got: f32,
    dot_ref: fn(&[u8], &[f32]) -> f32,
) {
    let mut y = vec![0f32; nb * QK_K];
    dequantize_ref(row, &mut y);
    assert_eq!(offsets.len(), y.len());
    let s: f64 = y
        .iter()
        .zip(offsets)
        .zip(x)
        .map(|((&y, &b), &x)| {
            let (y, b, x) = (f64::from(y), f64::from(b), f64::from(x));
            ((y + b).abs() + b.abs()) * x.abs()
        })
        .sum();
    let k = (16 * nb + 24) as f64;
    let tol = k * f64::from(f32::EPSILON) * s + 1e-30;
    let want = dot_ref(row, x);
    if !(s.is_finite()) {
        // Values near f16::MAX × 63 × 15 times x can overflow f32 in both: then only require
        // the same class of result.
        assert_eq!(
            got.is_finite(),
            want.is_finite(),
            "dot {got} vs dot_ref {want}"
        );
        return;
    }
    assert!(
        (f64::from(got) - f64::from(want)).abs() <= tol,
        "nb={nb}: dot {got} vs dot_ref {want}, tolerance {tol} (S = {s})"
    );
}

/// Asserts the fast dequantizer equals the reference bit for bit on a row of whole blocks.
pub(crate) fn check_dequantize_bitwise(
    row: &[u8],
    block_bytes: usize,
    dequantize: fn(&[u8], &mut [f32]),
    dequantize_ref: fn(&[u8], &mut [f32]),
) {
    let n = row.len() / block_bytes * QK_K;
    let (mut fast, mut reference) = (vec![0f32; n], vec![1f32; n]);
    dequantize(row, &mut fast);
    dequantize_ref(row, &mut reference);
    for (i, (a, b)) in fast.iter().zip(&reference).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "element {i}: {a} vs {b}");
    }
}

/// Relative RMS error ‖dequantize(quantize(x)) − x‖ / ‖x‖ over `nb` blocks of N(0, 1) data.
pub(crate) fn round_trip_rel_rmse(
    rng: &mut Rng,
    nb: usize,
    quantize_ref: fn(&[f32], &mut [u8]),
    dequantize_ref: fn(&[u8], &mut [f32]),
    block_bytes: usize,
) -> f64 {
    let x = gaussian(rng, nb * QK_K, 1.0);
    let mut q = vec![0u8; nb * block_bytes];
    quantize_ref(&x, &mut q);
    let mut y = vec![0f32; x.len()];
    dequantize_ref(&q, &mut y);
    let err: f64 = x
        .iter()
        .zip(&y)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum();
    let norm: f64 = x.iter().map(|a| f64::from(*a).powi(2)).sum();
    (err / norm).sqrt()
}
