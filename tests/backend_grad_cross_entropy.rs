//! Finite-difference check in f64 of the chunked cross-entropy (output projection + log-softmax
//! loss, mean over non-ignored targets): the loss is rewritten here in plain f64 loops over the
//! dequantized output weight, differentiated by central differences with respect to `h`, and
//! compared with the generic reference at f64 (tight) and with the fast f32 kernel for chunk
//! sizes 1, 3, n and > n.

mod backend_grad_fd;

use backend_grad_fd::{assert_grad, fd_grad, random64, to32, to64};
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
