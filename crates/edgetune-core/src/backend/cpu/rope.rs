//! Rotary position embedding, llama.cpp's "normal" mode: adjacent pairs `(2j, 2j+1)` of each
//! head rotate by `θ_j = pos · inv_freq[j]` (the GGUF stores Q/K rows permuted for this mode).
//!
//! `x` is `[n_tokens, n_head · head_dim]`, rotated in place; `inv_freq` is `[rope_dim / 2]`,
//! `base^(−2j/rope_dim) / rope_freqs[j]`, precomputed by the model (f64, rounded to f32).
//!
//! Precision decision: the angle is `pos as f32 · inv_freq[j]` in f32 and its sin/cos are f32,
//! as in ggml, which also computes angles in f32. No position table is precomputed: a table for
//! the whole context (131072 positions × 64 pairs × cos/sin) would be 64 MiB, too much on an
//! edge board. Instead each token computes its `rope_dim / 2` (cos, sin) pairs once into a stack
//! array and applies them to every head (32 query + 8 KV heads for Llama 3 8B).
//!
//! Backward: the rotation is orthogonal, so its adjoint is the rotation by −θ, applied in place
//! to the gradient (`dx = R(θ)ᵀ·dy`). Any `pos0` works (the same angles as the forward).

use rayon::prelude::*;

use super::Real;
use crate::backend::{RopeDims, check_len};
use crate::{Error, Result};

/// Largest `rope_dim` the stack tables hold (Llama uses 64 or 128).
pub const MAX_ROPE_DIM: usize = 512;

fn check<T>(x: &[T], inv_freq: &[f32], d: RopeDims) -> Result<()> {
    if !d.rope_dim.is_multiple_of(2) || d.rope_dim > d.head_dim || d.rope_dim > MAX_ROPE_DIM {
        return Err(Error::Invalid(format!(
            "rope: rope_dim {} must be even and ≤ head_dim {} (and ≤ {MAX_ROPE_DIM})",
            d.rope_dim, d.head_dim
        )));
    }
    check_len("rope", "inv_freq", inv_freq.len(), d.rope_dim / 2, 1)?;
    let width = d.n_head.saturating_mul(d.head_dim);
    check_len("rope", "x", x.len(), d.n_tokens, width)
}

/// Fast version: tokens in parallel; one (cos, sin) table per token shared by its heads.
pub fn rope(x: &mut [f32], inv_freq: &[f32], d: RopeDims) -> Result<()> {
    check(x, inv_freq, d)?;
    rotate(x, inv_freq, d, 1.0);
    Ok(())
}

/// Input gradient of [`rope`], in place: rotates `dy` (same layout as `x`) by −θ.
pub fn rope_backward(dy: &mut [f32], inv_freq: &[f32], d: RopeDims) -> Result<()> {
    check(dy, inv_freq, d)?;
    rotate(dy, inv_freq, d, -1.0);
    Ok(())
}

/// Rotates every pair by `sign · θ` (sign = ±1: only the sine changes sign, exactly).
fn rotate(x: &mut [f32], inv_freq: &[f32], d: RopeDims, sign: f32) {
    let width = d.n_head * d.head_dim;
    if width == 0 || d.n_tokens == 0 {
        return;
    }
    let half = d.rope_dim / 2;
    x.par_chunks_mut(width).enumerate().for_each(|(i, row)| {
        let pos = (d.pos0 + i) as f32;
        let mut cos = [0.0f32; MAX_ROPE_DIM / 2];
        let mut sin = [0.0f32; MAX_ROPE_DIM / 2];
        for j in 0..half {
            let (s, c) = (pos * inv_freq[j]).sin_cos();
            cos[j] = c;
            sin[j] = sign * s;
        }
        for head in row.chunks_exact_mut(d.head_dim) {
            for (pair, (&c, &s)) in head[..d.rope_dim]
                .chunks_exact_mut(2)
                .zip(cos[..half].iter().zip(&sin[..half]))
            {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * c - b * s;
                pair[1] = a * s + b * c;
            }
        }
    });
}

/// Scalar specification: the same f32 angle, its sin/cos and the rotation in f64.
pub fn rope_ref(x: &mut [f32], inv_freq: &[f32], d: RopeDims) -> Result<()> {
    check(x, inv_freq, d)?;
    for i in 0..d.n_tokens {
        for h in 0..d.n_head {
            let base = i * d.n_head * d.head_dim + h * d.head_dim;
            for j in 0..d.rope_dim / 2 {
                let theta = ((d.pos0 + i) as f32 * inv_freq[j]) as f64;
                let (s, c) = theta.sin_cos();
                let a = x[base + 2 * j] as f64;
                let b = x[base + 2 * j + 1] as f64;
                x[base + 2 * j] = (a * c - b * s) as f32;
                x[base + 2 * j + 1] = (a * s + b * c) as f32;
            }
        }
    }
    Ok(())
}

/// Scalar specification of [`rope_backward`], generic over the element type: the forward's f32
/// angle, its sin/cos in f64, rotation by −θ in f64.
pub fn rope_backward_ref<T: Real>(dy: &mut [T], inv_freq: &[f32], d: RopeDims) -> Result<()> {
    check(dy, inv_freq, d)?;
    for i in 0..d.n_tokens {
        for h in 0..d.n_head {
            let base = i * d.n_head * d.head_dim + h * d.head_dim;
            for j in 0..d.rope_dim / 2 {
                let theta = ((d.pos0 + i) as f32 * inv_freq[j]) as f64;
                let (s, c) = theta.sin_cos();
                let a = dy[base + 2 * j].to_f64();
                let b = dy[base + 2 * j + 1].to_f64();
                dy[base + 2 * j] = T::from_f64(a * c + b * s);
                dy[base + 2 * j + 1] = T::from_f64(-a * s + b * c);
            }
        }
    }
    Ok(())
}

/// `inv_freq[j] = base^(−2j/rope_dim) / rope_freqs[j]` in f64, rounded to f32 (`rope_freqs`
/// absent = all ones, as in Llama 2).
pub fn inv_freq(rope_dim: usize, base: f32, rope_freqs: Option<&[f32]>) -> Vec<f32> {
    (0..rope_dim / 2)
        .map(|j| {
            let f = (base as f64).powf(-2.0 * j as f64 / rope_dim as f64);
            let div = rope_freqs.map_or(1.0, |r| r[j] as f64);
            (f / div) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::test_util::{assert_close, random};

    #[test]
    fn matches_ref() {
        // Same f32 angle in both; f32 sin_cos (≤ 1 ulp-ish of values ≤ 1) and two f32 products:
        // 1e-6 relative to max(1, |x|) covers it.
        let freqs: Vec<f32> = (0..64).map(|j| 1.0 + j as f32 * 0.2).collect();
        for (n, n_head, head_dim, rope_dim, pos0) in [
            (1, 1, 2, 2, 0),
            (5, 3, 64, 64, 7),
            (17, 4, 128, 128, 1000),
            (3, 2, 64, 32, 131_000),
        ] {
            let inv = inv_freq(rope_dim, 500_000.0, Some(&freqs[..rope_dim / 2]));
            let d = RopeDims {
                n_tokens: n,
                pos0,
                n_head,
                head_dim,
                rope_dim,
            };
            let x = random(n * n_head * head_dim, 2.0, n as u64);
            let (mut a, mut b) = (x.clone(), x.clone());
            rope(&mut a, &inv, d).unwrap();
            rope_ref(&mut b, &inv, d).unwrap();
            assert_close(&a, &b, 1e-6, "rope");
            // Dims past rope_dim pass through.
            for h in 0..n * n_head {
                let r = h * head_dim + rope_dim..(h + 1) * head_dim;
                assert_eq!(a[r.clone()], x[r]);
            }
        }
    }

    #[test]
    fn backward_matches_ref_and_inverts_forward() {
        // Same tolerance argument as the forward. Backward after forward is the identity up to
        // f32 rounding of two rotations (≤ 4 ulp of max(1, |x|)).
        let freqs: Vec<f32> = (0..64).map(|j| 1.0 + j as f32 * 0.1).collect();
        for (n, n_head, head_dim, rope_dim, pos0) in
            [(1, 1, 2, 2, 0), (5, 3, 64, 64, 7), (4, 2, 64, 32, 131_000)]
        {
            let inv = inv_freq(rope_dim, 500_000.0, Some(&freqs[..rope_dim / 2]));
            let d = RopeDims {
                n_tokens: n,
                pos0,
                n_head,
                head_dim,
                rope_dim,
            };
            let dy = random(n * n_head * head_dim, 2.0, 40 + n as u64);
            let (mut a, mut b) = (dy.clone(), dy.clone());
            rope_backward(&mut a, &inv, d).unwrap();
            rope_backward_ref(&mut b, &inv, d).unwrap();
            assert_close(&a, &b, 1e-6, "rope backward");
            rope(&mut a, &inv, d).unwrap();
            assert_close(&a, &dy, 1e-6, "rope ∘ rope_backward");
        }
        let d = RopeDims {
            n_tokens: 1,
            pos0: 0,
            n_head: 1,
            head_dim: 4,
            rope_dim: 4,
        };
        assert!(rope_backward(&mut [0.0; 3], &[1.0, 1.0], d).is_err());
    }

    #[test]
    fn hand_computed_rotation_and_norm() {
        // One head of 4 dims at position 2, inv_freq = [π/4, 0]: pair 0 turns by π/2,
        // pair 1 stays.
        let inv = [std::f32::consts::FRAC_PI_4, 0.0];
        let mut x = [1.0f32, 0.0, 3.0, 4.0];
        let d = RopeDims {
            n_tokens: 1,
            pos0: 2,
            n_head: 1,
            head_dim: 4,
            rope_dim: 4,
        };
        rope(&mut x, &inv, d).unwrap();
        assert!(x[0].abs() < 1e-6 && (x[1] - 1.0).abs() < 1e-6, "{x:?}");
        assert_eq!(&x[2..], &[3.0, 4.0]);
        assert!(rope(&mut x, &inv, RopeDims { rope_dim: 3, ..d }).is_err());
        assert!(rope(&mut x, &inv[..1], d).is_err());
    }

    #[test]
    fn inv_freq_divides_by_rope_freqs() {
        let plain = inv_freq(8, 10_000.0, None);
        assert_eq!(plain[0], 1.0);
        assert!((plain[1] - 0.1).abs() < 1e-7); // 10000^(−2/8) = 0.1
        let scaled = inv_freq(8, 10_000.0, Some(&[1.0, 2.0, 4.0, 8.0]));
        assert!((scaled[1] - 0.05).abs() < 1e-7);
        assert!((scaled[3] - 1e-3 / 8.0).abs() < 1e-9);
    }
}
