//! The KL anchor fused into the chunked cross-entropy (`train --kl-anchor λ`): on anchored
//! tokens (the answer tokens of replay rows) the loss gains `λ·KL(p_base ‖ p)`, where `p` is
//! the trained model's next-token distribution and `p_base` the base model's (the same forward
//! with the adapters switched off), so the adapter is pulled back towards what the base model
//! would have said, not just towards the replayed text.
//!
//! Inputs as [`super::cross_entropy::cross_entropy`] (`h` `[n, dim]` after the final norm, `W`
//! `[vocab, dim]`, shifted `targets` `[n]`), plus `base_h` `[n, dim]` (the base model's final
//! normed hidden states) and `weights` `[n]` (`λ` on anchored tokens, 0 elsewhere). Per chunk of
//! `c` tokens, in two caller-owned `[chunk, vocab]` scratches (the `[n, vocab]` logits never
//! exist whole):
//!
//! ```text
//! z = h_c·Wᵀ, b = base_h_c·Wᵀ                      (only when the chunk has an anchored token)
//! q = softmax(z), p = softmax(b)
//! loss_i = lse(z) − z[t]  +  w_i·KL_i,   KL_i = Σ_v p_v (log p_v − log q_v)
//!        = Σ_v p_v (b_v − z_v) + lse(z) − lse(b)   (no log per entry)
//! ∂loss_i/∂z = q − onehot(t) + w_i·(q − p) = (1 + w_i)·q − onehot(t) − w_i·p
//! dh_c = (scale · ∂loss/∂z)·W
//! ```
//!
//! `p_base` is a constant: no gradient flows into `base_h`. Tokens with an ignored target carry
//! neither loss (the anchor is on answer tokens only). Returns `Σ CE` and `Σ KL` (unweighted,
//! over anchored tokens) separately; `dh` is the gradient of `scale · Σ_i (CE_i + w_i·KL_i)`.
//! Row results are summed in a fixed order (bit-identical resumes, as the plain kernel).

use rayon::prelude::*;

use super::Real;
use super::cross_entropy::{IGNORE, dequantize_whole_ref, softmax_grad_row};
use crate::backend::check_len;
use crate::quant::matmul::{self as qmm, QuantMatrix};
use crate::{Error, Result};

/// Rows whose losses are collected (on the stack) before being summed in order.
const ROW_GROUP: usize = 64;

/// `Σ` cross-entropy and `Σ` KL of a call (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AnchoredLoss {
    /// Σ over non-ignored targets of `lse(z) − z[t]`.
    pub ce: f64,
    /// Σ over anchored tokens (weight > 0, target not ignored) of `KL(p_base ‖ p)`.
    pub kl: f64,
}

/// Lengths, target ids and weights; returns `n`.
fn check<T>(
    h: &[T],
    base_h: &[T],
    w: &QuantMatrix,
    targets: &[i32],
    weights: &[f32],
    dh: &[T],
) -> Result<usize> {
    let n = targets.len();
    let who = "cross_entropy_kl";
    check_len(who, "h", h.len(), n, w.cols)?;
    check_len(who, "base_h", base_h.len(), n, w.cols)?;
    check_len(who, "dh", dh.len(), n, w.cols)?;
    check_len(who, "weights", weights.len(), n, 1)?;
    if let Some((i, &t)) = targets
        .iter()
        .enumerate()
        .find(|&(_, &t)| t != IGNORE && (t < 0 || t as usize >= w.rows))
    {
        return Err(Error::Invalid(format!(
            "{who}: target {t} of token {i} is outside the vocabulary of {} (or {IGNORE})",
            w.rows
        )));
    }
    if let Some((i, x)) = weights
        .iter()
        .enumerate()
        .find(|(_, x)| !(x.is_finite() && **x >= 0.0))
    {
        return Err(Error::Invalid(format!(
            "{who}: anchor weight {x} of token {i} must be finite and ≥ 0"
        )));
    }
    Ok(n)
}

/// Fast version. `logits` and `base_logits` are `[chunk, vocab]` scratches (exactly
/// `chunk × vocab` values, `chunk ≥ 1`); `dh` is overwritten.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_kl(
    h: &[f32],
    base_h: &[f32],
    w: &QuantMatrix,
    targets: &[i32],
    weights: &[f32],
    scale: f32,
    chunk: usize,
    logits: &mut [f32],
    base_logits: &mut [f32],
    dh: &mut [f32],
) -> Result<AnchoredLoss> {
    let n = check(h, base_h, w, targets, weights, dh)?;
    let (vocab, dim) = (w.rows, w.cols);
    if chunk == 0 || vocab == 0 {
        return Err(Error::Invalid(format!(
            "cross_entropy_kl: chunk {chunk} and vocabulary {vocab} must be ≥ 1"
        )));
    }
    let who = "cross_entropy_kl";
    check_len(who, "logits scratch", logits.len(), chunk, vocab)?;
    check_len(who, "base logits scratch", base_logits.len(), chunk, vocab)?;
    if !scale.is_finite() {
        return Err(Error::Invalid(format!(
            "{who}: scale {scale} is not finite"
        )));
    }
    let mut out = AnchoredLoss::default();
    let mut i0 = 0;
    while i0 < n {
        let c = chunk.min(n - i0);
        let (h_c, hb_c) = (
            &h[i0 * dim..(i0 + c) * dim],
            &base_h[i0 * dim..(i0 + c) * dim],
        );
        let dh_c = &mut dh[i0 * dim..(i0 + c) * dim];
        let (t_c, w_c) = (&targets[i0..i0 + c], &weights[i0..i0 + c]);
        if t_c.iter().all(|&t| t == IGNORE) {
            dh_c.fill(0.0);
            i0 += c;
            continue;
        }
        let lg = &mut logits[..c * vocab];
        let blg = &mut base_logits[..c * vocab];
        qmm::matmul_xwt(h_c, c, w, lg)?;
        let anchored = t_c.iter().zip(w_c).any(|(&t, &x)| t != IGNORE && x > 0.0);
        if anchored {
            qmm::matmul_xwt(hb_c, c, w, blg)?;
        }
        let groups = lg
            .chunks_mut(ROW_GROUP * vocab)
            .zip(blg.chunks_mut(ROW_GROUP * vocab))
            .zip(t_c.chunks(ROW_GROUP).zip(w_c.chunks(ROW_GROUP)));
        for ((rows, brows), (ts, ws)) in groups {
            let mut row_loss = [(0.0f64, 0.0f64); ROW_GROUP];
            row_loss[..ts.len()]
                .par_iter_mut()
                .zip(rows.par_chunks_mut(vocab).zip(brows.par_chunks_mut(vocab)))
                .zip(ts.par_iter().zip(ws.par_iter()))
                .for_each(|((l, (row, brow)), (&t, &x))| {
                    *l = if x > 0.0 && t != IGNORE {
                        anchored_grad_row(row, brow, t as usize, x, scale)
                    } else {
                        (softmax_grad_row(row, t, scale), 0.0)
                    };
                });
            // Summed per group first, as the plain kernel does (same result without weights).
            out.ce += row_loss[..ts.len()].iter().map(|r| r.0).sum::<f64>();
            out.kl += row_loss[..ts.len()].iter().map(|r| r.1).sum::<f64>();
        }
        qmm::matmul_dyw(lg, c, w, dh_c)?;
        i0 += c;
    }
    Ok(out)
}

/// One anchored row: logits `row` and base logits `base` in; `row` becomes
/// `scale·((1 + x)·q − onehot(t) − x·p)` (`base` is clobbered). Returns `(CE, KL)`.
fn anchored_grad_row(
    row: &mut [f32],
    base: &mut [f32],
    t: usize,
    x: f32,
    scale: f32,
) -> (f64, f64) {
    let mz = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mb = base.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let target_logit = row[t];
    // e^(z − mz), e^(b − mb) in place; Σ e_z, Σ e_b and Σ e_b·(b − z) in 4 f64 lanes each.
    let (mut sz, mut sb, mut pd) = ([0.0f64; 4], [0.0f64; 4], [0.0f64; 4]);
    for (zc, bc) in row.chunks_mut(4).zip(base.chunks_mut(4)) {
        for (k, (z, b)) in zc.iter_mut().zip(bc.iter_mut()).enumerate() {
            let eb = (*b - mb).exp();
            pd[k] += eb as f64 * (*b as f64 - *z as f64);
            sb[k] += eb as f64;
            *b = eb;
            *z = (*z - mz).exp();
            sz[k] += *z as f64;
        }
    }
    let (sz, sb, pd) = (
        sz.iter().sum::<f64>(),
        sb.iter().sum::<f64>(),
        pd.iter().sum::<f64>(),
    );
    let (lse_z, lse_b) = (mz as f64 + sz.ln(), mb as f64 + sb.ln());
    let ce = lse_z - target_logit as f64;
    // Rounding can leave a tiny negative value where the two distributions agree.
    let kl = (pd / sb + lse_z - lse_b).max(0.0);
    let kq = ((1.0 + x as f64) * scale as f64 / sz) as f32;
    let kp = (x as f64 * scale as f64 / sb) as f32;
    for (z, b) in row.iter_mut().zip(base.iter()) {
        *z = *z * kq - *b * kp;
    }
    row[t] -= scale;
    (ce, kl)
}

/// Scalar specification, generic over the element type: `Ŵ` from the reference dequantizer,
/// whole rows in f64. Returns `(Σ CE, Σ KL)` and overwrites `dh` with the gradient of
/// `scale · Σ_i (CE_i + w_i·KL_i)`.
pub fn cross_entropy_kl_ref<T: Real>(
    h: &[T],
    base_h: &[T],
    w: &QuantMatrix,
    targets: &[i32],
    weights: &[f32],
    scale: f64,
    dh: &mut [T],
) -> Result<AnchoredLoss> {
    let n = check(h, base_h, w, targets, weights, dh)?;
    let (vocab, dim) = (w.rows, w.cols);
    let wd = dequantize_whole_ref(w);
    let logits_of = |x: &[T], i: usize| -> Vec<f64> {
        (0..vocab)
            .map(|v| {
                (0..dim)
                    .map(|c| x[i * dim + c].to_f64() * wd[v * dim + c] as f64)
                    .sum()
            })
            .collect()
    };
    let softmax = |l: &[f64]| -> (Vec<f64>, f64) {
        let mx = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = l.iter().map(|v| (v - mx).exp()).sum();
        (
            l.iter().map(|v| (v - mx).exp() / sum).collect(),
            mx + sum.ln(),
        )
    };
    let mut out = AnchoredLoss::default();
    for i in 0..n {
        if targets[i] == IGNORE {
            dh[i * dim..(i + 1) * dim].fill(T::from_f64(0.0));
            continue;
        }
        let t = targets[i] as usize;
        let z = logits_of(h, i);
        let (q, lse_z) = softmax(&z);
        out.ce += lse_z - z[t];
        let x = weights[i] as f64;
        let mut g: Vec<f64> = q.clone();
        g[t] -= 1.0;
        if x > 0.0 {
            let (p, _) = softmax(&logits_of(base_h, i));
            out.kl += p
                .iter()
                .zip(&q)
                .filter(|(pv, _)| **pv > 0.0)
                .map(|(pv, qv)| pv * (pv.ln() - qv.ln()))
                .sum::<f64>();
            for v in 0..vocab {
                g[v] += x * (q[v] - p[v]);
            }
        }
        for c in 0..dim {
            let s: f64 = (0..vocab)
                .map(|v| g[v] * scale * wd[v * dim + c] as f64)
                .sum();
            dh[i * dim + c] = T::from_f64(s);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::cross_entropy::{count_targets, cross_entropy};
    use crate::backend::cpu::test_util::{assert_close, quantized, random};
    use crate::quant::GgmlType;

    #[test]
    fn matches_ref_for_any_chunk() {
        let (vocab, dim, n) = (300, 64, 11);
        for ty in [GgmlType::F32, GgmlType::Q4_0] {
            let bytes = quantized(ty, vocab, dim, 1);
            let w = QuantMatrix::new(ty, vocab, dim, &bytes).unwrap();
            let h = random(n * dim, 1.0, 2);
            let base_h = random(n * dim, 1.0, 3);
            let targets: Vec<i32> = (0..n as i32)
                .map(|i| if i % 4 == 1 { IGNORE } else { i * 37 % 300 })
                .collect();
            // Anchored, plain, and an anchored token with an ignored target (no loss).
            let weights: Vec<f32> = (0..n).map(|i| [0.5, 0.0, 2.0][i % 3]).collect();
            let scale = 1.0 / count_targets(&targets) as f32;
            let mut want = vec![0.0f32; n * dim];
            let r =
                cross_entropy_kl_ref(&h, &base_h, &w, &targets, &weights, scale as f64, &mut want)
                    .unwrap();
            assert!(r.kl > 0.0);
            for chunk in [1, 3, 4, n, n + 5] {
                let mut scratch = vec![0.0f32; chunk * vocab];
                let mut base_scratch = vec![0.0f32; chunk * vocab];
                let mut dh = vec![7.0f32; n * dim];
                let got = cross_entropy_kl(
                    &h,
                    &base_h,
                    &w,
                    &targets,
                    &weights,
                    scale,
                    chunk,
                    &mut scratch,
                    &mut base_scratch,
                    &mut dh,
                )
                .unwrap();
                // As the plain kernel's test: 64-term f32 logits, sums of ≤ 8 rows.
                assert!(
                    (got.ce - r.ce).abs() < 1e-4,
                    "{ty} chunk {chunk}: {got:?} vs {r:?}"
                );
                assert!(
                    (got.kl - r.kl).abs() < 1e-4,
                    "{ty} chunk {chunk}: {got:?} vs {r:?}"
                );
                assert_close(
                    &dh,
                    &want,
                    2e-5,
                    &format!("cross_entropy_kl dh {ty} chunk {chunk}"),
                );
            }
        }
    }

    #[test]
    fn no_weight_is_the_plain_cross_entropy_bit_for_bit_and_same_model_has_no_kl() {
        let (vocab, dim, n) = (200, 32, 9);
        let bytes = quantized(GgmlType::Q8_0, vocab, dim, 4);
        let w = QuantMatrix::new(GgmlType::Q8_0, vocab, dim, &bytes).unwrap();
        let h = random(n * dim, 1.0, 5);
        let targets: Vec<i32> = (0..n as i32).map(|i| i * 13 % 200).collect();
        let mut s1 = vec![0.0f32; 4 * vocab];
        let mut s2 = vec![0.0f32; 4 * vocab];
        let mut plain = vec![0.0f32; n * dim];
        let ce = cross_entropy(&h, &w, &targets, 0.1, 4, &mut s1, &mut plain).unwrap();
        let mut dh = vec![0.0f32; n * dim];
        let zero = vec![0.0f32; n];
        let other = random(n * dim, 1.0, 6);
        let got = cross_entropy_kl(
            &h, &other, &w, &targets, &zero, 0.1, 4, &mut s1, &mut s2, &mut dh,
        )
        .unwrap();
        assert_eq!((got.ce, got.kl), (ce, 0.0));
        assert_eq!(dh, plain);
        // The base model's own hidden states: KL = 0 and ∂/∂z = q − onehot as without it.
        let ones = vec![1.0f32; n];
        let got = cross_entropy_kl(
            &h, &h, &w, &targets, &ones, 0.1, 4, &mut s1, &mut s2, &mut dh,
        )
        .unwrap();
        assert!(got.kl.abs() < 1e-6, "{got:?}");
        // The anchored row forms lse − z[t] in f64, the plain one partly in f32.
        assert!((got.ce - ce).abs() < 1e-5, "{} vs {ce}", got.ce);
        assert_close(&dh, &plain, 1e-5, "anchored at the base itself");
    }

    #[test]
    fn bad_weights_and_shapes_are_errors() {
        let (vocab, dim, n) = (16, 8, 3);
        let bytes = quantized(GgmlType::F32, vocab, dim, 7);
        let w = QuantMatrix::new(GgmlType::F32, vocab, dim, &bytes).unwrap();
        let h = random(n * dim, 1.0, 8);
        let (mut s1, mut s2, mut dh) = (vec![0.0; vocab], vec![0.0; vocab], vec![0.0; n * dim]);
        let t = [1, 2, 3];
        for bad in [[0.0, f32::NAN, 0.0], [0.0, -1.0, 0.0]] {
            let e = cross_entropy_kl(&h, &h, &w, &t, &bad, 1.0, 1, &mut s1, &mut s2, &mut dh)
                .unwrap_err()
                .to_string();
            assert!(e.contains("anchor weight") && e.contains("token 1"), "{e}");
        }
        let ok = [0.0f32; 3];
        assert!(
            cross_entropy_kl(&h, &h[..8], &w, &t, &ok, 1.0, 1, &mut s1, &mut s2, &mut dh).is_err()
        );
        assert!(
            cross_entropy_kl(&h, &h, &w, &t, &ok[..2], 1.0, 1, &mut s1, &mut s2, &mut dh).is_err()
        );
        assert!(
            cross_entropy_kl(&h, &h, &w, &t, &ok, 1.0, 1, &mut s1, &mut s2[..1], &mut dh).is_err()
        );
    }
}
