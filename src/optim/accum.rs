//! Gradient accumulation over `K` micro-batches (`--grad-accum K`).
//!
//! Semantics (those of the HF Trainer): the trainer zeroes the gradient buffers before the first
//! micro-batch of an optimizer step; each micro-batch's backward *adds* its gradient, seeded with
//! `loss_scale() = 1/K` times the gradient of its mean loss; after the `K`-th the buffers hold
//! the gradient of the mean of the `K` micro-batch losses, which for equal-sized micro-batches is
//! the gradient of one batch of all their examples. Then clip, then step.

use crate::{Error, Result};

/// Counts micro-batches towards the next optimizer step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GradAccumulator {
    micro_batches: u32,
    seen: u32,
}

impl GradAccumulator {
    /// Accumulates over `micro_batches ≥ 1` micro-batches per optimizer step.
    pub fn new(micro_batches: u32) -> Result<Self> {
        if micro_batches == 0 {
            return Err(Error::Invalid(
                "gradient accumulation needs at least 1 micro-batch per step".into(),
            ));
        }
        Ok(Self {
            micro_batches,
            seen: 0,
        })
    }

    /// Micro-batches per optimizer step.
    pub fn micro_batches(&self) -> u32 {
        self.micro_batches
    }

    /// Factor for each micro-batch's loss gradient: `1/K`.
    pub fn loss_scale(&self) -> f32 {
        1.0 / self.micro_batches as f32
    }

    /// Whether the next micro-batch is the first of a step (zero the gradients before it).
    pub fn starts_step(&self) -> bool {
        self.seen == 0
    }

    /// Records one finished micro-batch; returns true when it completed the step (run the
    /// optimizer now; the count restarts).
    pub fn record(&mut self) -> bool {
        self.seen += 1;
        if self.seen == self.micro_batches {
            self.seen = 0;
            true
        } else {
            false
        }
    }
}

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

    #[test]
    fn counts_k_micro_batches() {
        let mut acc = GradAccumulator::new(3).unwrap();
        assert!(acc.starts_step());
        assert!(!acc.record());
        assert!(!acc.starts_step());
        assert!(!acc.record());
        assert!(acc.record());
        assert!(acc.starts_step());
        assert!(GradAccumulator::new(0).is_err());
    }

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
        // K micro-batches of size 1.
        let mut acc = GradAccumulator::new(k as u32).unwrap();
        let mut grad = [0.0f32; 3];
        let mut done = false;
        for (x, y) in xs.iter().zip(ys) {
            assert!(!done);
            let r: f32 = x.iter().zip(w).map(|(a, b)| a * b).sum::<f32>() - y;
            let g_micro = [r * x[0], r * x[1], r * x[2]];
            add_scaled(&mut grad, &g_micro, acc.loss_scale());
            done = acc.record();
        }
        assert!(done);
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
