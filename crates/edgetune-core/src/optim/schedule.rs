//! Learning-rate schedules, as Hugging Face transformers' `optimization.py` defines them.
//!
//! HF computes a multiplier `λ(s)` of the base lr, where `s` is the scheduler's count of
//! *completed* optimizer steps (`LambdaLR.last_epoch`: 0 when the first update runs, because the
//! Trainer calls `optimizer.step()` before `lr_scheduler.step()`). With `w` warmup steps and `T`
//! training steps (transformers `src/transformers/optimization.py`,
//! `_get_linear_schedule_with_warmup_lr_lambda`, `_get_cosine_schedule_with_warmup_lr_lambda`
//! with `num_cycles = 0.5`, and the `min_lr_rate` variant behind
//! `get_cosine_with_min_lr_schedule_with_warmup`):
//!
//! ```text
//! s < w:   λ = s / max(1, w)                                             (both)
//! linear:  λ = max(0, (T − s) / max(1, T − w))
//! cosine:  q = (s − w) / max(1, T − w);  c = ½·(1 + cos(π·q))            (q may pass 1)
//!          λ = max(0, c·(1 − r) + r)       r = min_lr_ratio (0 = HF's plain cosine)
//! ```
//!
//! [`Schedule::lr_at`] takes the 1-based number `t` of the update about to run (what
//! `AdamW::begin_step` returns) and evaluates `λ(t − 1)`, so the sequence of learning rates is
//! the HF Trainer's: with warmup, the first update runs at lr 0, and the last (`t = T`) at
//! `λ(T − 1)`.

/// A learning-rate schedule (all in optimizer steps).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Schedule {
    /// `λ = 1`.
    #[default]
    Constant,
    /// Linear warmup over `warmup` steps, then linear decay to 0 at `total`.
    WarmupLinear { warmup: u64, total: u64 },
    /// Linear warmup, then half a cosine from 1 down to `min_lr_ratio` at `total`.
    WarmupCosine {
        warmup: u64,
        total: u64,
        min_lr_ratio: f64,
    },
}

impl Schedule {
    /// HF's multiplier `λ(s)` after `completed` optimizer steps (formulas in the module docs).
    pub fn multiplier(&self, completed: u64) -> f64 {
        let s = completed as f64;
        let warmup_part = |w: u64| s / (w.max(1) as f64);
        match *self {
            Schedule::Constant => 1.0,
            Schedule::WarmupLinear { warmup, total } => {
                if completed < warmup {
                    return warmup_part(warmup);
                }
                let span = total.saturating_sub(warmup).max(1) as f64;
                ((total as f64 - s) / span).max(0.0)
            }
            Schedule::WarmupCosine {
                warmup,
                total,
                min_lr_ratio,
            } => {
                if completed < warmup {
                    return warmup_part(warmup);
                }
                let span = total.saturating_sub(warmup).max(1) as f64;
                let progress = (s - warmup as f64) / span;
                let c = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                (c * (1.0 - min_lr_ratio) + min_lr_ratio).max(0.0)
            }
        }
    }

    /// Learning rate of the `step`-th update (1-based): `base_lr · λ(step − 1)`.
    pub fn lr_at(&self, base_lr: f32, step: u64) -> f32 {
        (base_lr as f64 * self.multiplier(step.saturating_sub(1))) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_warmup_then_decay_by_hand() {
        // w = 4, T = 10: λ(s) = s/4 for s < 4, then (10 − s)/6.
        let s = Schedule::WarmupLinear {
            warmup: 4,
            total: 10,
        };
        let expected = [
            0.0,
            0.25,
            0.5,
            0.75,
            1.0,
            5.0 / 6.0,
            4.0 / 6.0,
            0.5,
            2.0 / 6.0,
            1.0 / 6.0,
            0.0,
            0.0,
        ];
        for (t, e) in expected.iter().enumerate() {
            assert!((s.multiplier(t as u64) - e).abs() < 1e-12, "s = {t}");
            // lr_at is 1-based.
            assert!((s.lr_at(2.0, t as u64 + 1) as f64 - 2.0 * e).abs() < 1e-6);
        }
        // No warmup: the first update runs at the full lr.
        assert_eq!(
            Schedule::WarmupLinear {
                warmup: 0,
                total: 5
            }
            .lr_at(1.0, 1),
            1.0
        );
    }

    #[test]
    fn cosine_by_hand() {
        // w = 2, T = 6: after warmup q = (s − 2)/4; λ = ½(1 + cos πq).
        let s = Schedule::WarmupCosine {
            warmup: 2,
            total: 6,
            min_lr_ratio: 0.0,
        };
        let half_sqrt2 = std::f64::consts::FRAC_1_SQRT_2 / 2.0;
        let expected = [0.0, 0.5, 1.0, 0.5 + half_sqrt2, 0.5, 0.5 - half_sqrt2, 0.0];
        for (t, e) in expected.iter().enumerate() {
            assert!((s.multiplier(t as u64) - e).abs() < 1e-12, "s = {t}");
        }
        // Past T the half cosine turns back up (HF does the same: progress is not clamped).
        assert!((s.multiplier(8) - 0.5).abs() < 1e-12);
        // min ratio r: λ = c(1 − r) + r, so the end is r.
        let m = Schedule::WarmupCosine {
            warmup: 2,
            total: 6,
            min_lr_ratio: 0.1,
        };
        assert!((m.multiplier(6) - 0.1).abs() < 1e-12);
        assert!((m.multiplier(4) - (0.5 * 0.9 + 0.1)).abs() < 1e-12);
        assert!(
            (m.multiplier(1) - 0.5).abs() < 1e-12,
            "warmup unaffected by the floor"
        );
    }

    #[test]
    fn constant_is_one() {
        assert_eq!(Schedule::Constant.lr_at(3e-4, 1), 3e-4);
        assert_eq!(Schedule::Constant.lr_at(3e-4, 1_000_000), 3e-4);
    }
}
