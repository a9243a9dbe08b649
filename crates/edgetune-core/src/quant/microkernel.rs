//! The f32 register-tile kernel under the quantized matrix products: C[MR×16] = A[MR×k] · B[k×16].
//!
//! One plain-Rust body, compiled twice: once with AVX2+FMA enabled (chosen at run time) and once
//! for the baseline target (NEON on aarch64, where `mul_add` is a fused `fmla`). The accumulator
//! is a fixed `[[f32; 16]; MR]` that LLVM keeps in vector registers (12 ymm for MR = 6), so the
//! inner loop is 2 loads of B, MR broadcasts of A and 2·MR FMAs per step of k. A is read in place
//! (rows `a_rs` apart, as activations are laid out); B is a panel whose rows are `b_rs` apart.

/// Columns of the register tile.
pub const NR: usize = 16;
/// Rows of the register tile (tokens).
pub const MR: usize = 6;

/// Portable body: `acc[i][j] = Σ_p a[i·a_rs + p] · b[p·b_rs + j]`.
///
/// `FUSED` selects `mul_add` (one rounding, a single instruction where FMA exists) or a separate
/// multiply and add (for targets without FMA, where `mul_add` would be a slow libm call).
#[inline(always)]
fn body<const M: usize, const FUSED: bool>(
    k: usize,
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_rs: usize,
) -> [[f32; NR]; M] {
    let mut acc = [[0.0f32; NR]; M];
    // Slicing each A row to exactly `k` lets the compiler drop the bounds checks in the loop.
    let a_rows: [&[f32]; M] = std::array::from_fn(|i| &a[i * a_rs..i * a_rs + k]);
    for p in 0..k {
        let b_row: &[f32; NR] = b[p * b_rs..p * b_rs + NR].try_into().expect("NR columns");
        for i in 0..M {
            let av = a_rows[i][p];
            for j in 0..NR {
                acc[i][j] = if FUSED {
                    av.mul_add(b_row[j], acc[i][j])
                } else {
                    acc[i][j] + av * b_row[j]
                };
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn body_avx2<const M: usize>(
    k: usize,
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_rs: usize,
) -> [[f32; NR]; M] {
    body::<M, true>(k, a, a_rs, b, b_rs)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Computes one `M × 16` tile (1 ≤ M ≤ 6). Needs `a.len() ≥ (M−1)·a_rs + k` and
/// `b.len() ≥ (k−1)·b_rs + 16`.
#[inline]
pub fn tile<const M: usize>(
    k: usize,
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_rs: usize,
) -> [[f32; NR]; M] {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above); the body is safe Rust.
        return unsafe { body_avx2::<M>(k, a, a_rs, b, b_rs) };
    }
    if cfg!(target_arch = "aarch64") {
        body::<M, true>(k, a, a_rs, b, b_rs)
    } else {
        body::<M, false>(k, a, a_rs, b, b_rs)
    }
}

/// Scalar specification of [`tile`]: f64 sums of the same products.
pub fn tile_ref(
    m: usize,
    k: usize,
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_rs: usize,
) -> Vec<[f64; NR]> {
    (0..m)
        .map(|i| {
            std::array::from_fn(|j| {
                (0..k)
                    .map(|p| a[i * a_rs + p] as f64 * b[p * b_rs + j] as f64)
                    .sum()
            })
        })
        .collect()
}

/// Calls `f(tile_rows, acc)` for the tile of `m ≤ MR` rows, choosing the const height at run
/// time (the remainder rows of a matrix whose height is not a multiple of `MR`).
#[inline]
pub fn with_tile(
    m: usize,
    k: usize,
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_rs: usize,
    mut f: impl FnMut(&[[f32; NR]]),
) {
    match m {
        6 => f(&tile::<6>(k, a, a_rs, b, b_rs)),
        5 => f(&tile::<5>(k, a, a_rs, b, b_rs)),
        4 => f(&tile::<4>(k, a, a_rs, b, b_rs)),
        3 => f(&tile::<3>(k, a, a_rs, b, b_rs)),
        2 => f(&tile::<2>(k, a, a_rs, b, b_rs)),
        1 => f(&tile::<1>(k, a, a_rs, b, b_rs)),
        _ => debug_assert!(m == 0, "tile height {m} > {MR}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn tile_matches_f64_reference_for_every_height() {
        let mut rng = StdRng::seed_from_u64(7);
        for &k in &[1usize, 2, 7, 64, 333] {
            let (a_rs, b_rs) = (k + 3, NR + 5);
            let a: Vec<f32> = (0..MR * a_rs)
                .map(|_| rng.random_range(-2.0..2.0))
                .collect();
            let b: Vec<f32> = (0..k * b_rs).map(|_| rng.random_range(-2.0..2.0)).collect();
            for m in 1..=MR {
                let want = tile_ref(m, k, &a, a_rs, &b, b_rs);
                let mut rows = 0;
                with_tile(m, k, &a, a_rs, &b, b_rs, |got| {
                    rows = got.len();
                    for i in 0..m {
                        for j in 0..NR {
                            // f32 accumulation over k terms of magnitude ≤ 4: error ≤ k·ε·Σ|ab|.
                            let bound: f64 = (0..k)
                                .map(|p| (a[i * a_rs + p] * b[p * b_rs + j]).abs() as f64)
                                .sum::<f64>()
                                * k as f64
                                * f32::EPSILON as f64;
                            let d = (got[i][j] as f64 - want[i][j]).abs();
                            assert!(d <= bound + 1e-30, "m={m} k={k} ({i},{j}): {d} > {bound}");
                        }
                    }
                });
                assert_eq!(rows, m);
            }
        }
    }
}
