//! Random data and the tolerance shared by the quant tests.
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub(crate) fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Roughly normal values of scale `s` (sum of uniforms), plus an occasional outlier.
pub(crate) fn values(rng: &mut StdRng, n: usize, s: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u: f32 = (0..4).map(|_| rng.random::<f32>() - 0.5).sum();
            if rng.random::<f32>() < 0.02 {
                u * s * 8.0
            } else {
                u * s
            }
        })
        .collect()
}

/// Random bytes.
pub(crate) fn bytes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.random::<u8>()).collect()
}

/// A random finite f16 scale of magnitude about `s`, as LE bytes.
pub(crate) fn scale(rng: &mut StdRng, s: f32) -> [u8; 2] {
    super::f16_bytes((rng.random::<f32>() * 2.0 - 1.0) * s)
}

/// Checks `got` (a SIMD dot) against `want` (its f64 reference).
///
/// Tolerance: `got` sums the same products in f32; each product w·x passes through at most
/// `steps` roundings (the product, the in-block chain, the block-scale FMA, the accumulator
/// chain across blocks and the final horizontal reduction), and every rounding contributes
/// at most u = EPS/2 of the magnitude it touches, so |got − exact| ≤ steps·u·Σ|w·x|
/// (Higham's γ_steps to first order). `want` itself is the exact value rounded once
/// (≤ u·|exact|). We allow `steps·EPS` (twice the bound) plus a tiny absolute term for
/// subnormal results. `mag` is Σ|terms| as the kernel computes them (for `d·q + m`
/// formats Σ|d·q·x| + Σ|m·x|, since the kernel sums the two parts separately).
pub(crate) fn assert_dot_close(got: f32, want: f32, mag: f64, steps: usize, what: &str) {
    let tol = steps as f64 * f32::EPSILON as f64 * mag + 1e-37;
    assert!(
        (got as f64 - want as f64).abs() <= tol || (got.is_nan() && want.is_nan()),
        "{what}: dot {got:e} vs dot_ref {want:e} (|diff| {:e} > tol {tol:e}, mag {mag:e})",
        (got as f64 - want as f64).abs()
    );
}

/// Steps bound for a row of `blocks` blocks: 32 in-block steps (a generous bound on the
/// 4-long lane chains plus the adds), the scale, one accumulator step per block, and 8 for
/// the final reduction.
pub(crate) fn block_steps(blocks: usize) -> usize {
    32 + 1 + blocks + 8
}

use crate::quant::{DequantizeFn, DotFn};

/// Σ|terms| of a row's dot product, as a kernel sums them.
pub(crate) type MagnitudeFn = fn(&[u8], &[f32]) -> f64;

/// The kernels of one block format, as the type table holds them.
pub(crate) struct Kernels {
    pub block_bytes: usize,
    /// Byte offsets of the block's f16 scale fields (d, and m or s where present).
    pub scale_offsets: &'static [usize],
    pub dequantize_ref: DequantizeFn,
    pub dequantize: DequantizeFn,
    pub dot_ref: DotFn,
    pub dot: DotFn,
    /// Σ|terms| as the SIMD kernel sums them; `None`: Σ|w·x| over the decoded weights.
    pub magnitude: Option<MagnitudeFn>,
}

/// Σ|w·x| over the reference-decoded weights.
pub(crate) fn abs_dot(k: &Kernels, row: &[u8], x: &[f32]) -> f64 {
    let mut w = vec![0.0f32; x.len()];
    (k.dequantize_ref)(row, &mut w);
    w.iter()
        .zip(x)
        .map(|(a, b)| (*a as f64 * *b as f64).abs())
        .sum()
}

/// dot ≈ dot_ref within the tolerance above, and dequantize == dequantize_ref bitwise.
pub(crate) fn check_row(k: &Kernels, row: &[u8], x: &[f32], what: &str) {
    let blocks = row.len() / k.block_bytes;
    let mag = match k.magnitude {
        Some(f) => f(row, x),
        None => abs_dot(k, row, x),
    };
    assert_dot_close(
        (k.dot)(row, x),
        (k.dot_ref)(row, x),
        mag,
        block_steps(blocks),
        what,
    );
    let mut a = vec![0.0; blocks * 32];
    let mut b = vec![0.0; blocks * 32];
    (k.dequantize_ref)(row, &mut a);
    (k.dequantize)(row, &mut b);
    assert_bits_eq(&a, &b, what);
}

/// Random rows of 1..=40 blocks (random quants, random f16 scales of size `s`) against
/// random activations.
pub(crate) fn check_random_rows(k: &Kernels, seed: u64, s: f32) {
    let mut r = rng(seed);
    for blocks in 1..=40 {
        let mut row = bytes(&mut r, blocks * k.block_bytes);
        for b in row.chunks_exact_mut(k.block_bytes) {
            for &o in k.scale_offsets {
                b[o..o + 2].copy_from_slice(&scale(&mut r, s));
            }
        }
        let x = values(&mut r, blocks * 32, 1.0);
        check_row(k, &row, &x, &format!("{blocks} blocks"));
    }
}

/// Edge blocks: every scale field set to zero, −0, subnormal, largest finite, 1; quants
/// all-zero / all-ones / alternating patterns; activations tiny, unit and huge.
pub(crate) fn check_edge_rows(k: &Kernels, seed: u64) {
    let mut r = rng(seed);
    let scales: [[u8; 2]; 7] = [
        [0x00, 0x00], // 0
        [0x00, 0x80], // −0
        [0x01, 0x00], // smallest subnormal 2^-24
        [0xFF, 0x03], // largest subnormal
        [0xFF, 0x7B], // 65504, largest finite
        [0xFF, 0xFB], // −65504
        [0x00, 0x3C], // 1
    ];
    for d in scales {
        for fill in [0x00u8, 0xFF, 0x88, 0x0F, 0xF0, 0x80, 0x7F] {
            let mut row = vec![fill; 3 * k.block_bytes];
            for b in row.chunks_exact_mut(k.block_bytes) {
                for &o in k.scale_offsets {
                    b[o..o + 2].copy_from_slice(&d);
                }
            }
            for xs in [1e-30f32, 1.0, 1e20] {
                let x = values(&mut r, 96, xs);
                check_row(k, &row, &x, &format!("scale {d:?} fill {fill:#x} x {xs:e}"));
            }
        }
    }
}

/// Bitwise equality of two f32 slices (NaNs compared by bits too).
pub(crate) fn assert_bits_eq(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(
            x.to_bits(),
            y.to_bits(),
            "{what}: element {i}: {x:e} vs {y:e}"
        );
    }
}
