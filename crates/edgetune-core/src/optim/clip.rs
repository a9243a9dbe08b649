//! Gradient clipping by global norm (`--max-grad-norm`, 0 = off), as
//! `torch.nn.utils.clip_grad_norm_` with the 2-norm:
//!
//! ```text
//! norm  = sqrt(Σ_tensors Σ_i g_i²)
//! scale = min(1, max_norm / (norm + 1e-6));   g ← g·scale when scale < 1
//! ```
//!
//! The sum of squares is accumulated in f64 (each f32 square is exact in f64, and 2^29 terms of
//! rounding error stay far below f32 resolution), so the norm does not depend on the tensor
//! order or size the way an f32 running sum does. PyTorch computes per-tensor f32 norms and then
//! the norm of those; the two agree to f32 rounding.

/// `Σ g_i²` of one tensor, in f64 (a backend can compute this per tensor and add them up).
pub fn sum_squares(grad: &[f32]) -> f64 {
    // Four partial sums: independent chains for the CPU, still exact-enough in f64.
    let mut acc = [0.0f64; 4];
    let mut chunks = grad.chunks_exact(4);
    for c in &mut chunks {
        for k in 0..4 {
            acc[k] += c[k] as f64 * c[k] as f64;
        }
    }
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&x| x as f64 * x as f64)
        .sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// The global 2-norm over all tensors' gradients.
pub fn global_norm(grads: &[&[f32]]) -> f64 {
    grads.iter().map(|g| sum_squares(g)).sum::<f64>().sqrt()
}

/// The factor `clip_grad_norm_` multiplies by: `min(1, max_norm / (norm + 1e-6))`; 1 when
/// `max_norm == 0` (clipping off) or the norm is not finite (the caller skips such a step).
pub fn clip_scale(norm: f64, max_norm: f64) -> f32 {
    if max_norm <= 0.0 || !norm.is_finite() {
        return 1.0;
    }
    (max_norm / (norm + 1e-6)).min(1.0) as f32
}

/// Scales all gradients so their global norm is at most `max_norm` (0 = off). Returns the norm
/// before clipping and the scale applied (1 when nothing changed).
pub fn clip_by_global_norm(grads: &mut [&mut [f32]], max_norm: f64) -> (f64, f32) {
    let norm = grads.iter().map(|g| sum_squares(g)).sum::<f64>().sqrt();
    let scale = clip_scale(norm, max_norm);
    if scale < 1.0 {
        for g in grads.iter_mut() {
            for x in g.iter_mut() {
                *x *= scale;
            }
        }
    }
    (norm, scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_and_clip_by_hand() {
        // 3-4-12 triangle chain: sqrt(9 + 16 + 144) = 13.
        let mut a = [3.0f32, 4.0];
        let mut b = [12.0f32];
        assert_eq!(global_norm(&[&a, &b]), 13.0);
        let (norm, scale) = clip_by_global_norm(&mut [&mut a, &mut b], 6.5);
        assert_eq!(norm, 13.0);
        let expected = 6.5 / (13.0 + 1e-6);
        assert!((scale as f64 - expected).abs() < 1e-7);
        assert!((global_norm(&[&a, &b]) - 6.5).abs() < 1e-5);
        assert!((a[0] as f64 - 3.0 * expected).abs() < 1e-6);
    }

    #[test]
    fn below_threshold_or_off_is_untouched() {
        let mut a = [3.0f32, 4.0];
        assert_eq!(clip_by_global_norm(&mut [&mut a], 10.0), (5.0, 1.0));
        assert_eq!(clip_by_global_norm(&mut [&mut a], 0.0), (5.0, 1.0));
        assert_eq!(a, [3.0, 4.0]);
        let mut n = [f32::NAN];
        let (norm, scale) = clip_by_global_norm(&mut [&mut n], 1.0);
        assert!(norm.is_nan() && scale == 1.0);
    }

    #[test]
    fn sum_squares_matches_a_plain_f64_sum() {
        let g: Vec<f32> = (0..1027)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let plain: f64 = g.iter().map(|&x| (x as f64) * (x as f64)).sum();
        assert!((sum_squares(&g) - plain).abs() <= 1e-12 * plain);
    }
}
