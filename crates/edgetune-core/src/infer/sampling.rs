//! Choosing the next token from logits: greedy, temperature, top-k, top-p (nucleus), seeded.

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{Error, Result};

/// How to pick tokens. `temperature == 0` is greedy (top-k and top-p are then irrelevant).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            seed: 0,
        }
    }
}

/// A seeded sampler; its candidate buffer is allocated once and reused for every token.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    candidates: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Sampler> {
        let p = &params;
        if !(p.temperature >= 0.0 && p.temperature.is_finite()) {
            return Err(Error::Invalid(format!(
                "temperature must be ≥ 0, got {}",
                p.temperature
            )));
        }
        if !(p.top_p > 0.0 && p.top_p <= 1.0) {
            return Err(Error::Invalid(format!(
                "top-p must be in (0, 1], got {}",
                p.top_p
            )));
        }
        Ok(Sampler {
            rng: StdRng::seed_from_u64(params.seed),
            params,
            candidates: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token id. NaN logits count as impossible; all-NaN logits are an error.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        let best = argmax(logits).ok_or_else(|| {
            Error::Invalid(format!(
                "no finite logit among {} to sample from",
                logits.len()
            ))
        })?;
        if self.params.temperature == 0.0 {
            return Ok(best);
        }
        let inv_t = 1.0 / self.params.temperature;
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (l * inv_t, i as u32)),
        );
        let by_logit_desc =
            |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let k = self.params.top_k;
        if k > 0 && k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit_desc);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(by_logit_desc);
        // Softmax over the survivors, stable against large logits.
        let max = self.candidates[0].0;
        let mut total = 0.0f64;
        for c in self.candidates.iter_mut() {
            c.0 = (c.0 - max).exp();
            total += c.0 as f64;
        }
        let mut keep = self.candidates.len();
        if self.params.top_p < 1.0 {
            let mut cum = 0.0f64;
            for (i, c) in self.candidates.iter().enumerate() {
                cum += c.0 as f64 / total;
                if cum >= self.params.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            total = self.candidates[..keep].iter().map(|c| c.0 as f64).sum();
        }
        let mut r = self.rng.random::<f64>() * total;
        for c in &self.candidates[..keep] {
            r -= c.0 as f64;
            if r < 0.0 {
                return Ok(c.1);
            }
        }
        Ok(self.candidates[keep - 1].1)
    }
}

/// Index of the largest non-NaN value (the lowest index among equals).
pub fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.map(|(i, _)| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed: 5,
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum_and_skips_nan() {
        let mut s = Sampler::new(params(0.0, 0, 1.0)).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, f32::NAN]).unwrap(), 1);
        assert_eq!(s.sample(&[f32::NAN, -1.0]).unwrap(), 1);
        assert!(s.sample(&[f32::NAN]).is_err());
        assert!(s.sample(&[]).is_err());
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = [0.5, 2.0, 1.9, -3.0];
        let mut k1 = Sampler::new(params(1.0, 1, 1.0)).unwrap();
        let mut p0 = Sampler::new(params(1.0, 0, 1e-6)).unwrap();
        for _ in 0..50 {
            assert_eq!(k1.sample(&logits).unwrap(), 1);
            assert_eq!(p0.sample(&logits).unwrap(), 1);
        }
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        // Two tokens with logits ln 3 and 0: probabilities 3/4 and 1/4.
        let logits = [3.0f32.ln(), 0.0, f32::NEG_INFINITY];
        let mut s = Sampler::new(params(1.0, 0, 1.0)).unwrap();
        let n = 20_000;
        let ones = (0..n).filter(|_| s.sample(&logits).unwrap() == 0).count();
        let f = ones as f64 / n as f64;
        // 4.4 standard deviations of a binomial(20000, 0.75): fails by chance < 1e-5.
        assert!(
            (f - 0.75).abs() < 4.4 * (0.75 * 0.25 / n as f64).sqrt(),
            "{f}"
        );
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // Probabilities ∝ 8, 4, 2, 1, 1: top_p 0.7 keeps the first two (8/16 + 4/16 = 0.75).
        let logits: Vec<f32> = [8.0f32, 4.0, 2.0, 1.0, 1.0]
            .iter()
            .map(|v| v.ln())
            .collect();
        let mut s = Sampler::new(params(1.0, 0, 0.7)).unwrap();
        for _ in 0..2000 {
            assert!(s.sample(&logits).unwrap() < 2);
        }
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let mut a = Sampler::new(params(0.8, 20, 0.9)).unwrap();
        let mut b = Sampler::new(params(0.8, 20, 0.9)).unwrap();
        let sa: Vec<u32> = (0..50).map(|_| a.sample(&logits).unwrap()).collect();
        let sb: Vec<u32> = (0..50).map(|_| b.sample(&logits).unwrap()).collect();
        assert_eq!(sa, sb);
        assert!(
            sa.iter().any(|&t| t != sa[0]),
            "temperature 0.8 should vary"
        );
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(Sampler::new(params(-1.0, 0, 1.0)).is_err());
        assert!(Sampler::new(params(1.0, 0, 0.0)).is_err());
        assert!(Sampler::new(params(1.0, 0, 1.5)).is_err());
    }
}
