//! Finite-difference check in f64 of the chunked cross-entropy (output projection + log-softmax
//! loss, mean over non-ignored targets): the loss is rewritten here in plain f64 loops over the
//! dequantized output weight, differentiated by central differences with respect to `h`, and
//! compared with the generic reference at f64 (tight) and with the fast f32 kernel for chunk
//! sizes 1, 3, n and > n. The same for the KL anchor's fused loss (CE + λ·KL to the base
//! model's distribution on anchored tokens).

use crate::backend_grad_fd::{assert_grad, fd_grad, random64, to32, to64};
use edgetune::backend::cpu::cross_entropy::{IGNORE, count_targets, cross_entropy_ref};
use edgetune::backend::{Backend, CpuBackend};
use edgetune::quant::matmul::QuantMatrix;
use edgetune::quant::{self, GgmlType};

/// `Σ_i (lse_i − logit_i[t_i])` over non-ignored tokens, `logits = h·Ŵᵀ`, in f64.
fn loss_f64(h: &[f64], wd: &[f32], vocab: usize, targets: &[i32]) -> f64 {
    let dim = wd.len() / vocab;
    let mut loss = 0.0;
    for (i, &t) in targets.iter().enumerate() {
        if t == IGNORE {
            continue;
        }
        let logits: Vec<f64> = (0..vocab)
            .map(|v| {
                (0..dim)
                    .map(|c| h[i * dim + c] * wd[v * dim + c] as f64)
                    .sum()
            })
            .collect();
        let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = mx + logits.iter().map(|l| (l - mx).exp()).sum::<f64>().ln();
        loss += lse - logits[t as usize];
    }
    loss
}

#[test]
fn gradient_matches_finite_differences_for_every_chunk_size() {
    let (n, vocab) = (7usize, 11usize);
    // Tokens 2 and 3 ignored: with chunk 1 those chunks are entirely ignored (the skip path).
    let targets = [3, 10, IGNORE, IGNORE, 0, 7, 3];
    let count = count_targets(&targets);
    assert_eq!(count, 5);
    let scale = 1.0 / count as f64;
    for (ty, dim) in [(GgmlType::F32, 6), (GgmlType::Q4_0, 32)] {
        let values = to32(&random64(vocab * dim, 0.8, 1));
        let mut bytes = vec![0u8; ty.bytes_for((vocab * dim) as u64).unwrap() as usize];
        quant::quantize(ty, &values, &mut bytes).unwrap();
        let w = QuantMatrix::new(ty, vocab, dim, &bytes).unwrap();
        let mut wd = vec![0.0f32; vocab * dim];
        quant::dequantize(ty, &bytes, &mut wd).unwrap();

        let h = random64(n * dim, 1.0, 2);
        let numeric = fd_grad(&h, |h| scale * loss_f64(h, &wd, vocab, &targets));
        let want_loss = loss_f64(&h, &wd, vocab, &targets);

        let mut dh = vec![0.0f64; n * dim];
        let loss = cross_entropy_ref(&h, &w, &targets, scale, &mut dh).unwrap();
        assert!(
            (loss - want_loss).abs() < 1e-12 * want_loss.abs().max(1.0),
            "{loss} vs {want_loss}"
        );
        assert_grad(
            &dh,
            &numeric,
            1e-6,
            &format!("cross-entropy dh {ty} (f64 ref)"),
        );
        for row in [2, 3] {
            assert!(dh[row * dim..(row + 1) * dim].iter().all(|&v| v == 0.0));
        }

        let h32 = to32(&h);
        for chunk in [1, 3, n, n + 4] {
            let mut scratch = vec![0.0f32; chunk * vocab];
            let mut dh32 = vec![f32::NAN; n * dim];
            let loss32 = CpuBackend
                .cross_entropy(
                    &h32,
                    &w,
                    &targets,
                    scale as f32,
                    chunk,
                    &mut scratch,
                    &mut dh32,
                )
                .unwrap();
            // f32 logits (≤ 32-term sums, |logit| ≲ 5): loss error ≲ 1e-5 over 5 rows.
            assert!(
                (loss32 - want_loss).abs() < 1e-4,
                "{ty} chunk {chunk}: loss {loss32} vs {want_loss}"
            );
            assert_grad(
                &to64(&dh32),
                &numeric,
                2e-5,
                &format!("cross-entropy dh {ty} chunk {chunk} (f32 fast)"),
            );
        }
    }
}

#[test]
fn scratch_is_exactly_chunk_by_vocab() {
    // The scratch holds `chunk` rows of logits, never all n: an n × vocab buffer is refused
    // when chunk < n, and a chunk-row buffer serves any n.
    let (n, vocab, dim) = (6, 5, 4);
    let bytes: Vec<u8> = to32(&random64(vocab * dim, 1.0, 3))
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let w = QuantMatrix::new(GgmlType::F32, vocab, dim, &bytes).unwrap();
    let h = to32(&random64(n * dim, 1.0, 4));
    let targets = [0, 1, 2, 3, 4, 0];
    let mut dh = vec![0.0f32; n * dim];
    let mut whole = vec![0.0f32; n * vocab];
    assert!(
        CpuBackend
            .cross_entropy(&h, &w, &targets, 1.0, 2, &mut whole, &mut dh)
            .is_err()
    );
    let mut two_rows = vec![0.0f32; 2 * vocab];
    assert!(
        CpuBackend
            .cross_entropy(&h, &w, &targets, 1.0, 2, &mut two_rows, &mut dh)
            .is_ok()
    );
}

/// `Σ_i CE_i + w_i·KL(softmax(b_i) ‖ softmax(z_i))` in plain f64 loops, `z = h·Ŵᵀ`,
/// `b = base_h·Ŵᵀ` (the KL anchor's loss, backend/cpu/cross_entropy_kl.rs).
fn anchored_loss_f64(
    h: &[f64],
    base_h: &[f64],
    wd: &[f32],
    vocab: usize,
    targets: &[i32],
    weights: &[f32],
) -> f64 {
    let dim = wd.len() / vocab;
    let logits = |x: &[f64], i: usize| -> Vec<f64> {
        (0..vocab)
            .map(|v| {
                (0..dim)
                    .map(|c| x[i * dim + c] * wd[v * dim + c] as f64)
                    .sum()
            })
            .collect()
    };
    let log_softmax = |l: &[f64]| -> Vec<f64> {
        let mx = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = mx + l.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
        l.iter().map(|v| v - lse).collect()
    };
    let mut loss = 0.0;
    for (i, &t) in targets.iter().enumerate() {
        if t == IGNORE {
            continue;
        }
        let lq = log_softmax(&logits(h, i));
        loss -= lq[t as usize];
        if weights[i] > 0.0 {
            let lp = log_softmax(&logits(base_h, i));
            let kl: f64 = lp.iter().zip(&lq).map(|(p, q)| p.exp() * (p - q)).sum();
            loss += weights[i] as f64 * kl;
        }
    }
    loss
}

#[test]
fn kl_anchor_gradient_matches_finite_differences() {
    use edgetune::backend::cpu::cross_entropy_kl::{cross_entropy_kl, cross_entropy_kl_ref};
    let (n, vocab) = (7usize, 11usize);
    let targets = [3, 10, IGNORE, 5, 0, 7, 3];
    // Anchored tokens (λ = 0.7, 2), a plain one, and an anchored token with no target.
    let weights = [0.7f32, 0.0, 2.0, 2.0, 0.0, 0.7, 0.7];
    let scale = 1.0 / count_targets(&targets) as f64;
    for (ty, dim) in [(GgmlType::F32, 6), (GgmlType::Q4_0, 32)] {
        let values = to32(&random64(vocab * dim, 0.8, 5));
        let mut bytes = vec![0u8; ty.bytes_for((vocab * dim) as u64).unwrap() as usize];
        quant::quantize(ty, &values, &mut bytes).unwrap();
        let w = QuantMatrix::new(ty, vocab, dim, &bytes).unwrap();
        let mut wd = vec![0.0f32; vocab * dim];
        quant::dequantize(ty, &bytes, &mut wd).unwrap();

        let (h, base_h) = (random64(n * dim, 1.0, 6), random64(n * dim, 1.0, 7));
        let f = |h: &[f64]| scale * anchored_loss_f64(h, &base_h, &wd, vocab, &targets, &weights);
        let numeric = fd_grad(&h, f);
        let want = anchored_loss_f64(&h, &base_h, &wd, vocab, &targets, &weights);

        let mut dh = vec![0.0f64; n * dim];
        let r = cross_entropy_kl_ref(&h, &base_h, &w, &targets, &weights, scale, &mut dh).unwrap();
        // The reference reports Σ CE and the unweighted Σ KL: recombine with the weights.
        let kl_only = anchored_loss_f64(&h, &base_h, &wd, vocab, &targets, &[0.0; 7]);
        assert!(
            (r.ce - kl_only).abs() < 1e-12 * kl_only.abs().max(1.0),
            "{r:?} vs {kl_only}"
        );
        let ones: Vec<f32> = weights
            .iter()
            .map(|&x| if x > 0.0 { 1.0 } else { 0.0 })
            .collect();
        let kl_sum = anchored_loss_f64(&h, &base_h, &wd, vocab, &targets, &ones) - kl_only;
        assert!(
            r.kl > 0.0 && (r.kl - kl_sum).abs() < 1e-12,
            "{r:?} vs Σ KL {kl_sum}"
        );
        assert!(
            want > r.ce + 0.7 * r.kl,
            "the weighted loss is above CE + min λ·Σ KL"
        );
        assert_grad(&dh, &numeric, 1e-6, &format!("KL anchor dh {ty} (f64 ref)"));
        assert!(
            dh[2 * dim..3 * dim].iter().all(|&v| v == 0.0),
            "no target, no gradient"
        );

        let (h32, b32) = (to32(&h), to32(&base_h));
        for chunk in [1, 3, n, n + 4] {
            let (mut s1, mut s2) = (vec![0.0f32; chunk * vocab], vec![0.0f32; chunk * vocab]);
            let mut dh32 = vec![f32::NAN; n * dim];
            let got = cross_entropy_kl(
                &h32,
                &b32,
                &w,
                &targets,
                &weights,
                scale as f32,
                chunk,
                &mut s1,
                &mut s2,
                &mut dh32,
            )
            .unwrap();
            assert!(
                (got.ce - r.ce).abs() < 1e-4,
                "{ty} chunk {chunk}: {got:?} vs {r:?}"
            );
            assert!(
                (got.kl - r.kl).abs() < 1e-4,
                "{ty} chunk {chunk}: {got:?} vs {r:?}"
            );
            assert_grad(
                &to64(&dh32),
                &numeric,
                2e-5,
                &format!("KL anchor dh {ty} chunk {chunk} (f32 fast)"),
            );
        }
    }
}
