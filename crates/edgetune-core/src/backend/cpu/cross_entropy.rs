//! Next-token cross-entropy over the output projection, forward and backward fused, in chunks of
//! tokens so that the `[tokens, vocab]` logits never exist whole
//! (docs/ARCHITECTURE.md#memory-levers).
//!
//! Inputs: `h` `[n, dim]` (final hidden states, after the final RMSNorm), the output weight `W`
//! `[vocab, dim]` (quantized, frozen), `targets` `[n]` (token `i`'s logits predict `targets[i]`:
//! the caller has already shifted them; [`IGNORE`] = no loss for that token, the HF convention).
//! Per chunk of `chunk` tokens, in a caller-owned scratch of `chunk × vocab` f32:
//!
//! 1. `logits = h_chunk · Wᵀ` (quantized matmul);
//! 2. per row: `lse = log Σ_v e^(logit_v)`, `loss_i = lse − logit[target]`, then in place
//!    `dlogits = (softmax − onehot(target)) · scale` (zeros for an ignored row);
//! 3. `dh_chunk = dlogits · W` (the quantized input-gradient product).
//!
//! The function returns `Σ_i loss_i` over the non-ignored tokens (f64) and writes `dh`, the
//! gradient of `scale · Σ_i loss_i`. `scale` is `1 / (number of non-ignored targets)` for a mean
//! over targets; it is passed in (see [`count_targets`]) so that gradient accumulation over
//! micro-batches can use the global count. Row losses of a chunk are summed in a fixed order so
//! the result does not depend on thread scheduling (checkpoints resume bit for bit).

use rayon::prelude::*;

use super::Real;
use crate::backend::check_len;
use crate::quant::matmul::{self as qmm, QuantMatrix};
use crate::{Error, Result};

/// Target value meaning "no loss for this token" (PyTorch / HF `ignore_index`).
pub const IGNORE: i32 = -100;

/// Rows whose losses are collected (on the stack) before being summed in order.
const ROW_GROUP: usize = 64;

/// Number of targets that count towards the loss (not [`IGNORE`]).
pub fn count_targets(targets: &[i32]) -> usize {
    targets.iter().filter(|&&t| t != IGNORE).count()
}

/// Lengths and target ids; returns `n`.
fn check<T>(h: &[T], w: &QuantMatrix, targets: &[i32], dh: &[T]) -> Result<usize> {
    let n = targets.len();
    check_len("cross_entropy", "h", h.len(), n, w.cols)?;
    check_len("cross_entropy", "dh", dh.len(), n, w.cols)?;
    if let Some((i, &t)) = targets
        .iter()
        .enumerate()
        .find(|&(_, &t)| t != IGNORE && (t < 0 || t as usize >= w.rows))
    {
        return Err(Error::Invalid(format!(
            "cross_entropy: target {t} of token {i} is outside the vocabulary of {} (or {IGNORE})",
            w.rows
        )));
    }
    Ok(n)
}

/// Fast version. `logits` is the `[chunk, vocab]` scratch (exactly `chunk × vocab` values,
/// `chunk ≥ 1`); `dh` is overwritten. Returns the summed (unscaled) loss.
pub fn cross_entropy(
    h: &[f32],
    w: &QuantMatrix,
    targets: &[i32],
    scale: f32,
    chunk: usize,
    logits: &mut [f32],
    dh: &mut [f32],
) -> Result<f64> {
    let n = check(h, w, targets, dh)?;
    let (vocab, dim) = (w.rows, w.cols);
    if chunk == 0 || vocab == 0 {
        return Err(Error::Invalid(format!(
            "cross_entropy: chunk {chunk} and vocabulary {vocab} must be ≥ 1"
        )));
    }
    check_len(
        "cross_entropy",
        "logits scratch",
        logits.len(),
        chunk,
        vocab,
    )?;
    if !scale.is_finite() {
        return Err(Error::Invalid(format!(
            "cross_entropy: scale {scale} is not finite"
        )));
    }
    let mut loss = 0.0f64;
    let mut i0 = 0;
    while i0 < n {
        let c = chunk.min(n - i0);
        let (h_c, dh_c) = (
            &h[i0 * dim..(i0 + c) * dim],
            &mut dh[i0 * dim..(i0 + c) * dim],
        );
        let t_c = &targets[i0..i0 + c];
        if t_c.iter().all(|&t| t == IGNORE) {
            // No loss and no gradient: skip both products.
            dh_c.fill(0.0);
            i0 += c;
            continue;
        }
        let lg = &mut logits[..c * vocab];
        qmm::matmul_xwt(h_c, c, w, lg)?;
        for (rows, ts) in lg.chunks_mut(ROW_GROUP * vocab).zip(t_c.chunks(ROW_GROUP)) {
            let mut row_loss = [0.0f64; ROW_GROUP];
            row_loss[..ts.len()]
                .par_iter_mut()
                .zip(rows.par_chunks_mut(vocab))
                .zip(ts.par_iter())
                .for_each(|((l, row), &t)| *l = softmax_grad_row(row, t, scale));
            loss += row_loss[..ts.len()].iter().sum::<f64>();
        }
        qmm::matmul_dyw(lg, c, w, dh_c)?;
        i0 += c;
    }
    Ok(loss)
}

/// One row: logits in, `(softmax − onehot)·scale` out (in place); returns `lse − logit[t]`
/// (0 and a zero row for an ignored target).
pub(super) fn softmax_grad_row(row: &mut [f32], t: i32, scale: f32) -> f64 {
    if t == IGNORE {
        row.fill(0.0);
        return 0.0;
    }
    let t = t as usize;
    let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let target_logit = row[t];
    // e^(logit − max) in place, summed in 4 f64 lanes (vocab 128k: f32 sums would lose ~1e-4).
    let mut acc = [0.0f64; 4];
    for c in row.chunks_mut(4) {
        for (a, v) in acc.iter_mut().zip(c.iter_mut()) {
            *v = (*v - mx).exp();
            *a += *v as f64;
        }
    }
    let sum = acc.iter().sum::<f64>();
    let k = (scale as f64 / sum) as f32;
    row.iter_mut().for_each(|v| *v *= k);
    row[t] -= scale;
    sum.ln() + (mx - target_logit) as f64
}

/// `Ŵ` `[rows, cols]` whole, by the reference dequantizer (for the `_ref` specifications).
pub(super) fn dequantize_whole_ref(w: &QuantMatrix) -> Vec<f32> {
    let (rows, cols) = (w.rows, w.cols);
    let dequantize_ref = w.ty.traits().dequantize_ref;
    let mut wd = vec![0.0f32; rows * cols];
    for r in 0..rows {
        dequantize_ref(w.row(r), &mut wd[r * cols..(r + 1) * cols]);
    }
    wd
}

/// Scalar specification, generic over the element type: `Ŵ` from the reference dequantizer,
/// every row's logits, log-sum-exp and gradient in f64 (whole rows; no chunking). Returns the
/// summed loss and overwrites `dh` with the gradient of `scale · loss`.
pub fn cross_entropy_ref<T: Real>(
    h: &[T],
    w: &QuantMatrix,
    targets: &[i32],
    scale: f64,
    dh: &mut [T],
) -> Result<f64> {
    let n = check(h, w, targets, dh)?;
    let (vocab, dim) = (w.rows, w.cols);
    let wd = dequantize_whole_ref(w);
    let mut loss = 0.0f64;
    let mut logit = vec![0.0f64; vocab];
    for i in 0..n {
        let hr = &h[i * dim..(i + 1) * dim];
        if targets[i] == IGNORE {
            dh[i * dim..(i + 1) * dim].fill(T::from_f64(0.0));
            continue;
        }
        let t = targets[i] as usize;
        for (v, l) in logit.iter_mut().enumerate() {
            *l = (0..dim)
                .map(|c| hr[c].to_f64() * wd[v * dim + c] as f64)
                .sum();
        }
        let mx = logit.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = logit.iter().map(|l| (l - mx).exp()).sum();
        loss += mx + sum.ln() - logit[t];
        for c in 0..dim {
            let g: f64 = (0..vocab)
                .map(|v| {
                    let p = (logit[v] - mx).exp() / sum - if v == t { 1.0 } else { 0.0 };
                    p * scale * wd[v * dim + c] as f64
                })
                .sum();
            dh[i * dim + c] = T::from_f64(g);
        }
    }
    Ok(loss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::test_util::{assert_close, quantized, random};
    use crate::quant::GgmlType;

    #[test]
    fn matches_ref_for_any_chunk() {
        let (vocab, dim, n) = (300, 64, 11);
        for ty in [GgmlType::F32, GgmlType::Q4_0] {
            let bytes = quantized(ty, vocab, dim, 1);
            let w = QuantMatrix::new(ty, vocab, dim, &bytes).unwrap();
            let h = random(n * dim, 1.0, 2);
            let targets: Vec<i32> = (0..n as i32)
                .map(|i| if i % 4 == 1 { IGNORE } else { i * 37 % 300 })
                .collect();
            let scale = 1.0 / count_targets(&targets) as f32;
            let mut want = vec![0.0f32; n * dim];
            let loss_ref = cross_entropy_ref(&h, &w, &targets, scale as f64, &mut want).unwrap();
            for chunk in [1, 3, 4, n, n + 5] {
                let mut scratch = vec![0.0f32; chunk * vocab];
                let mut dh = vec![7.0f32; n * dim];
                let loss =
                    cross_entropy(&h, &w, &targets, scale, chunk, &mut scratch, &mut dh).unwrap();
                // Logits are 64-term f32 dots (abs error ≲ 1e-5 on |logit| ≲ 5); the loss sums
                // 8 rows of such errors: 1e-4 absolute. dh entries are O(0.1), 300-term f32
                // sums of scaled probabilities: 2e-5 relative to max(1, |dh|).
                assert!(
                    (loss - loss_ref).abs() < 1e-4,
                    "{ty} chunk {chunk}: {loss} vs {loss_ref}"
                );
                assert_close(
                    &dh,
                    &want,
                    2e-5,
                    &format!("cross_entropy dh {ty} chunk {chunk}"),
                );
            }
        }
    }

    #[test]
    fn ignored_rows_and_errors() {
        let (vocab, dim, n) = (16, 8, 5);
        let bytes = quantized(GgmlType::F32, vocab, dim, 3);
        let w = QuantMatrix::new(GgmlType::F32, vocab, dim, &bytes).unwrap();
        let h = random(n * dim, 1.0, 4);
        let mut scratch = vec![0.0f32; 2 * vocab];
        let mut dh = vec![1.0f32; n * dim];
        let all_ignored = [IGNORE; 5];
        let loss = cross_entropy(&h, &w, &all_ignored, 1.0, 2, &mut scratch, &mut dh).unwrap();
        assert_eq!(loss, 0.0);
        assert!(dh.iter().all(|&v| v == 0.0));
        assert_eq!(count_targets(&[IGNORE, 3, IGNORE, 0]), 2);
        for bad in [[0, 1, 2, 3, 16], [0, 1, -1, 3, 4]] {
            assert!(cross_entropy(&h, &w, &bad, 1.0, 2, &mut scratch, &mut dh).is_err());
        }
        let ok = [0, 1, 2, 3, 15];
        assert!(cross_entropy(&h, &w, &ok, 1.0, 3, &mut scratch, &mut dh).is_err());
        assert!(cross_entropy(&h, &w, &ok, 1.0, 0, &mut scratch[..0], &mut dh).is_err());
        assert!(cross_entropy(&h, &w, &ok, f32::NAN, 2, &mut scratch, &mut dh).is_err());
        assert!(cross_entropy(&h, &w, &ok[..4], 1.0, 2, &mut scratch, &mut dh).is_err());
    }
}
