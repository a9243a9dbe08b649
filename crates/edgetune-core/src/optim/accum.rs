//! Gradient accumulation (`--accum K`): the adapter gradients of the `K` micro-batches of one
//! optimizer step are added into the same buffers, each micro-batch's backward seeded with the
//! loss scale `1 / (loss targets of the whole step)`, so that after the `K`-th the buffers hold
//! the gradient of the mean loss over every target of the step — for equal micro-batches, the
//! gradient of one batch of all their examples. Then clip, then step (`train/trainer.rs`).

/// `acc ← acc + scale·grad` (lengths validated by the caller).
pub fn add_scaled(acc: &mut [f32], grad: &[f32], scale: f32) {
    debug_assert_eq!(acc.len(), grad.len());
    for (a, &g) in acc.iter_mut().zip(grad) {
        *a += scale * g;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Least squares `L = mean_i ½(w·x_i − y_i)²`: K micro-batches of one example, each seeded
    /// with 1/K, accumulate to the gradient of the batch of K, and one AdamW step from either
    /// gives the same parameters.
    #[test]
    fn micro_batches_equal_one_batch_for_least_squares() {
        use crate::optim::{AdamW, AdamWConfig, ParamGroup, ParamSpec, StateBits, StateStorage};
        let xs = [
            [1.0f32, 2.0, -1.0],
            [0.5, -1.5, 2.0],
            [-2.0, 0.25, 1.0],
            [3.0, 1.0, 0.5],
        ];
        let ys = [1.0f32, -2.0, 0.5, 4.0];
        let w = [0.3f32, -0.2, 0.1];
        let k = xs.len();
        // The batch gradient in f64, straight from the formula: (1/K) Σ (w·x − y) x.
        let mut batch = [0.0f64; 3];
        for (x, y) in xs.iter().zip(ys) {
            let r: f64 = x
                .iter()
                .zip(w)
                .map(|(a, b)| *a as f64 * b as f64)
                .sum::<f64>()
                - y as f64;
            for j in 0..3 {
                batch[j] += r * x[j] as f64 / k as f64;
            }
        }
        // K micro-batches of size 1, each seeded with 1/K.
        let mut grad = [0.0f32; 3];
        for (x, y) in xs.iter().zip(ys) {
            let r: f32 = x.iter().zip(w).map(|(a, b)| a * b).sum::<f32>() - y;
            let g_micro = [r * x[0], r * x[1], r * x[2]];
            add_scaled(&mut grad, &g_micro, 1.0 / k as f32);
        }
        for j in 0..3 {
            assert!(
                (grad[j] as f64 - batch[j]).abs() < 1e-6,
                "{j}: {} vs {}",
                grad[j],
                batch[j]
            );
        }
        let specs = [ParamSpec { numel: 3, group: 0 }];
        let groups = [ParamGroup::new(0.01)];
        let new = || {
            AdamW::new(
                AdamWConfig::default(),
                &groups,
                &specs,
                StateBits::F32,
                &StateStorage::Ram,
            )
            .unwrap()
        };
        let (mut w_acc, mut w_batch) = (w, w);
        let batch32 = batch.map(|g| g as f32);
        new().step(&mut [&mut w_acc], &[&grad], 0.1).unwrap();
        new().step(&mut [&mut w_batch], &[&batch32], 0.1).unwrap();
        for j in 0..3 {
            assert!((w_acc[j] - w_batch[j]).abs() < 1e-6);
        }
    }
}
