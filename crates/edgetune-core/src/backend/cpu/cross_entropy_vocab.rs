//! Next-token cross-entropy with the output head in chunks of vocabulary rows: the training
//! loss when the head is streamed (model/stream.rs, `--stream-head`), so that only one chunk of
//! `W` `[vocab, dim]` is in memory at a time.
//!
//! The plain kernel (`cross_entropy.rs`) needs every logit of a token at once for its
//! log-sum-exp. Here the head arrives as chunks `W_c` = rows `v0..v0 + vc`, in two passes:
//!
//! ```text
//! pass 1, per chunk: z = h·W_cᵀ                    [tokens, vc], `chunk` tokens at a time
//!                    per token: m' = max(m, max z);  s = s·e^(m − m') + Σ_v e^(z_v − m')
//!                    z[t] kept when the target t is in the chunk           ([`RowLse`])
//! loss_i = ln s + m − z[t]                           ([`ce_vocab_loss`])
//! pass 2, per chunk: z again; dz = e^(z − m)·(scale_i / s) − scale_i·onehot(t)
//!                    dh += dz·W_c                    (the first chunk writes, the rest add)
//! ```
//!
//! so the head is read twice per micro-batch. `scale_i` may differ per token (the multi-task
//! loss weighs rows by task). Ignored targets (`IGNORE`) get no loss and a zero gradient row.
//! With one chunk (the whole head) the result is bit-identical to the plain kernel: the same
//! maximum, the same 4-lane f64 sum, the same probabilities and one `dz·W` product. With more,
//! the sum is rescaled per chunk and `dh` is accumulated over chunks, so the last bits differ.
//! The specification is the plain kernel's `cross_entropy_ref` (whole rows in f64); the tests
//! hold this kernel to it for every chunking.

use rayon::prelude::*;

use super::cross_entropy::IGNORE;
use crate::backend::check_len;
use crate::quant::matmul::{self as qmm, QuantMatrix};
use crate::{Error, Result};

/// Rows whose losses are collected before being summed in order (as the plain kernel).
const ROW_GROUP: usize = 64;

/// One token's online log-sum-exp over the chunks seen so far, and its target's logit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowLse {
    /// Largest logit so far (−∞ before the first chunk).
    pub max: f32,
    /// `Σ e^(z − max)` so far.
    pub sum: f64,
    /// The target's logit (NaN until its chunk is seen).
    pub target: f32,
}

impl RowLse {
    /// Before any chunk.
    pub const EMPTY: RowLse = RowLse {
        max: f32::NEG_INFINITY,
        sum: 0.0,
        target: f32::NAN,
    };

    /// `lse − z[t]` once every chunk was seen (the plain kernel's formula).
    pub fn loss(&self) -> f64 {
        self.sum.ln() + (self.max - self.target) as f64
    }
}

/// Checks the shapes shared by both passes; returns `(n, dim, vc)`.
fn check(
    who: &str,
    h: &[f32],
    w_c: &QuantMatrix,
    v0: usize,
    vocab: usize,
    targets: &[i32],
    stats: &[RowLse],
) -> Result<(usize, usize, usize)> {
    let (n, dim, vc) = (targets.len(), w_c.cols, w_c.rows);
    check_len(who, "h", h.len(), n, dim)?;
    check_len(who, "stats", stats.len(), n, 1)?;
    if vc == 0 || v0 + vc > vocab {
        return Err(Error::Invalid(format!(
            "{who}: head rows {v0}..{} are empty or outside the vocabulary of {vocab}",
            v0 + vc
        )));
    }
    if let Some((i, &t)) = targets
        .iter()
        .enumerate()
        .find(|&(_, &t)| t != IGNORE && (t < 0 || t as usize >= vocab))
    {
        return Err(Error::Invalid(format!(
            "{who}: target {t} of token {i} is outside the vocabulary of {vocab} (or {IGNORE})"
        )));
    }
    Ok((n, dim, vc))
}

/// The `[c, vc]` logits scratch of a token chunk (`logits` holds at least `chunk · vc`).
fn scratch<'l>(who: &str, logits: &'l mut [f32], c: usize, vc: usize) -> Result<&'l mut [f32]> {
    let len = logits.len();
    logits.get_mut(..c * vc).ok_or_else(|| {
        Error::Invalid(format!(
            "{who}: logits scratch of {len} values, {c} tokens × {vc} head rows need {}",
            c * vc
        ))
    })
}

/// Pass 1 over one chunk `w_c` (rows `v0..v0 + w_c.rows` of a `[vocab, dim]` head): updates
/// every non-ignored token's [`RowLse`]. `h` `[n, dim]`, `targets` `[n]`, `stats` `[n]` (start
/// from [`RowLse::EMPTY`]); `logits` is a scratch of at least `chunk × w_c.rows` values.
#[allow(clippy::too_many_arguments)]
pub fn ce_vocab_stats(
    h: &[f32],
    w_c: &QuantMatrix,
    v0: usize,
    vocab: usize,
    targets: &[i32],
    chunk: usize,
    logits: &mut [f32],
    stats: &mut [RowLse],
) -> Result<()> {
    let who = "cross_entropy (streamed head)";
    let (n, dim, vc) = check(who, h, w_c, v0, vocab, targets, stats)?;
    if chunk == 0 {
        return Err(Error::Invalid(format!("{who}: chunk must be ≥ 1")));
    }
    let mut i0 = 0;
    while i0 < n {
        let c = chunk.min(n - i0);
        let t_c = &targets[i0..i0 + c];
        if t_c.iter().all(|&t| t == IGNORE) {
            i0 += c;
            continue;
        }
        let lg = scratch(who, logits, c, vc)?;
        qmm::matmul_xwt(&h[i0 * dim..(i0 + c) * dim], c, w_c, lg)?;
        lg.par_chunks(vc)
            .zip(stats[i0..i0 + c].par_iter_mut())
            .zip(t_c.par_iter())
            .for_each(|((row, st), &t)| {
                if t != IGNORE {
                    fold_chunk(row, st, t as usize, v0);
                }
            });
        i0 += c;
    }
    Ok(())
}

/// Folds one token's logits of a chunk into its running statistics.
fn fold_chunk(row: &[f32], st: &mut RowLse, t: usize, v0: usize) {
    let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if mx > st.max {
        // Earlier terms were relative to the old maximum (none yet: the sum is 0).
        if st.sum != 0.0 {
            st.sum *= ((st.max - mx) as f64).exp();
        }
        st.max = mx;
    }
    let m = st.max;
    let mut acc = [0.0f64; 4];
    for c in row.chunks(4) {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += (v - m).exp() as f64;
        }
    }
    st.sum += acc.iter().sum::<f64>();
    if (v0..v0 + row.len()).contains(&t) {
        st.target = row[t - v0];
    }
}

/// `Σ loss_i` over the non-ignored tokens after pass 1, summed in the plain kernel's order
/// (chunks of `chunk` tokens, groups of 64 rows). An error when a target's logit was never seen
/// (a head chunk was skipped).
pub fn ce_vocab_loss(stats: &[RowLse], targets: &[i32], chunk: usize) -> Result<f64> {
    if stats.len() != targets.len() || chunk == 0 {
        return Err(Error::Invalid(format!(
            "cross_entropy (streamed head): {} statistics for {} targets, chunk {chunk}",
            stats.len(),
            targets.len()
        )));
    }
    let mut loss = 0.0f64;
    for (s_c, t_c) in stats.chunks(chunk).zip(targets.chunks(chunk)) {
        for (s_g, t_g) in s_c.chunks(ROW_GROUP).zip(t_c.chunks(ROW_GROUP)) {
            let mut group = 0.0f64;
            for (i, (s, &t)) in s_g.iter().zip(t_g).enumerate() {
                if t == IGNORE {
                    continue;
                }
                if s.target.is_nan() {
                    return Err(Error::Invalid(format!(
                        "cross_entropy (streamed head): target {t} of a token (row {i} of its \
                         group) was in no head chunk"
                    )));
                }
                group += s.loss();
            }
            loss += group;
        }
    }
    Ok(loss)
}

/// Pass 2 over one chunk: `dh += (softmax − onehot)·scale_of(i) · W_c` for every token (the
/// first chunk, `first`, overwrites `dh` instead). `stats` are pass 1's final statistics;
/// `logits` as in pass 1; `dh_part` a `[chunk, dim]` scratch for the chunks after the first.
#[allow(clippy::too_many_arguments)]
pub fn ce_vocab_grad(
    h: &[f32],
    w_c: &QuantMatrix,
    v0: usize,
    vocab: usize,
    targets: &[i32],
    scale_of: &(dyn Fn(usize) -> f32 + Sync),
    chunk: usize,
    stats: &[RowLse],
    first: bool,
    logits: &mut [f32],
    dh_part: &mut [f32],
    dh: &mut [f32],
) -> Result<()> {
    let who = "cross_entropy gradient (streamed head)";
    let (n, dim, vc) = check(who, h, w_c, v0, vocab, targets, stats)?;
    check_len(who, "dh", dh.len(), n, dim)?;
    if chunk == 0 || dh_part.len() < chunk.min(n) * dim {
        return Err(Error::Invalid(format!(
            "{who}: chunk {chunk} and a dh scratch of {} values for dim {dim}",
            dh_part.len()
        )));
    }
    let mut i0 = 0;
    while i0 < n {
        let c = chunk.min(n - i0);
        let t_c = &targets[i0..i0 + c];
        let dh_c = &mut dh[i0 * dim..(i0 + c) * dim];
        if t_c.iter().all(|&t| t == IGNORE) {
            if first {
                dh_c.fill(0.0);
            }
            i0 += c;
            continue;
        }
        let lg = scratch(who, logits, c, vc)?;
        qmm::matmul_xwt(&h[i0 * dim..(i0 + c) * dim], c, w_c, lg)?;
        let mut bad = None;
        for (j, &t) in t_c.iter().enumerate() {
            let scale = scale_of(i0 + j);
            if t != IGNORE && !scale.is_finite() {
                bad = Some((i0 + j, scale));
            }
        }
        if let Some((i, s)) = bad {
            return Err(Error::Invalid(format!(
                "{who}: the scale of token {i} is {s}, not finite"
            )));
        }
        lg.par_chunks_mut(vc)
            .zip(stats[i0..i0 + c].par_iter())
            .zip(t_c.par_iter())
            .enumerate()
            .for_each(|(j, ((row, st), &t))| {
                if t == IGNORE {
                    row.fill(0.0);
                    return;
                }
                let scale = scale_of(i0 + j);
                // The plain kernel's probabilities: e^(z − max) · (scale / sum).
                let k = (scale as f64 / st.sum) as f32;
                row.iter_mut().for_each(|v| *v = (*v - st.max).exp() * k);
                let t = t as usize;
                if (v0..v0 + vc).contains(&t) {
                    row[t - v0] -= scale;
                }
            });
        if first {
            qmm::matmul_dyw(lg, c, w_c, dh_c)?;
        } else {
            let part = &mut dh_part[..c * dim];
            qmm::matmul_dyw(lg, c, w_c, part)?;
            dh_c.iter_mut().zip(part.iter()).for_each(|(d, p)| *d += p);
        }
        i0 += c;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::cross_entropy::{count_targets, cross_entropy, cross_entropy_ref};
    use crate::backend::cpu::test_util::{assert_close, quantized, random};
    use crate::quant::GgmlType;

    /// Both passes over `w` cut into chunks of `rows` rows.
    fn chunked(
        h: &[f32],
        w: &QuantMatrix,
        targets: &[i32],
        scale_of: &(dyn Fn(usize) -> f32 + Sync),
        rows: usize,
        chunk: usize,
    ) -> (f64, Vec<f32>) {
        let (vocab, dim, n) = (w.rows, w.cols, targets.len());
        let row_bytes = w.data.len() / vocab;
        let part = |v0: usize| {
            let vc = rows.min(vocab - v0);
            let data = &w.data[v0 * row_bytes..(v0 + vc) * row_bytes];
            QuantMatrix::new(w.ty, vc, dim, data).unwrap()
        };
        let mut stats = vec![RowLse::EMPTY; n];
        let mut logits = vec![0.0f32; chunk * rows];
        for v0 in (0..vocab).step_by(rows) {
            ce_vocab_stats(
                h,
                &part(v0),
                v0,
                vocab,
                targets,
                chunk,
                &mut logits,
                &mut stats,
            )
            .unwrap();
        }
        let loss = ce_vocab_loss(&stats, targets, chunk).unwrap();
        let mut dh = vec![7.0f32; n * dim];
        let mut dh_part = vec![0.0f32; chunk * dim];
        for v0 in (0..vocab).step_by(rows) {
            ce_vocab_grad(
                h,
                &part(v0),
                v0,
                vocab,
                targets,
                scale_of,
                chunk,
                &stats,
                v0 == 0,
                &mut logits,
                &mut dh_part,
                &mut dh,
            )
            .unwrap();
        }
        (loss, dh)
    }

    #[test]
    fn matches_ref_for_any_vocabulary_chunking() {
        let (vocab, dim, n) = (300, 64, 11);
        for ty in [GgmlType::F32, GgmlType::Q4_0, GgmlType::Q6_K] {
            let dim = if ty == GgmlType::Q6_K { 256 } else { dim };
            let bytes = quantized(ty, vocab, dim, 1);
            let w = QuantMatrix::new(ty, vocab, dim, &bytes).unwrap();
            let h = random(n * dim, 1.0, 2);
            let targets: Vec<i32> = (0..n as i32)
                .map(|i| if i % 4 == 1 { IGNORE } else { i * 37 % 300 })
                .collect();
            let scale = 1.0 / count_targets(&targets) as f32;
            let mut want = vec![0.0f32; n * dim];
            let loss_ref = cross_entropy_ref(&h, &w, &targets, scale as f64, &mut want).unwrap();
            for (rows, chunk) in [(300, 4), (100, 3), (7, 11), (1, 5), (299, 1)] {
                let (loss, dh) = chunked(&h, &w, &targets, &|_| scale, rows, chunk);
                // The plain kernel's tolerances (cross_entropy.rs): the chunking adds only the
                // per-chunk rescaling of the sum and the f32 accumulation of dh.
                assert!(
                    (loss - loss_ref).abs() < 1e-4,
                    "{ty} rows {rows} chunk {chunk}: {loss} vs {loss_ref}"
                );
                assert_close(&dh, &want, 2e-5, &format!("{ty} rows {rows} chunk {chunk}"));
            }
        }
    }

    #[test]
    fn one_chunk_is_the_plain_kernel_bit_for_bit() {
        let (vocab, dim, n) = (300, 64, 9);
        let bytes = quantized(GgmlType::Q4_0, vocab, dim, 5);
        let w = QuantMatrix::new(GgmlType::Q4_0, vocab, dim, &bytes).unwrap();
        let h = random(n * dim, 1.0, 6);
        let targets: Vec<i32> = (0..n as i32)
            .map(|i| if i == 3 { IGNORE } else { i * 31 % 300 })
            .collect();
        for chunk in [1, 4, n] {
            let mut scratch = vec![0.0f32; chunk * vocab];
            let mut want = vec![0.0f32; n * dim];
            let loss_want =
                cross_entropy(&h, &w, &targets, 0.125, chunk, &mut scratch, &mut want).unwrap();
            let (loss, dh) = chunked(&h, &w, &targets, &|_| 0.125, vocab, chunk);
            assert_eq!(loss.to_bits(), loss_want.to_bits(), "chunk {chunk}");
            assert!(
                dh.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            );
        }
    }

    #[test]
    fn per_token_scales_weigh_each_row() {
        // Two rows of 5 tokens, the second weighted 3×: dh of each row is the plain kernel's
        // run on that row alone with its own scale.
        let (vocab, dim, n) = (120, 32, 10);
        let bytes = quantized(GgmlType::Q8_0, vocab, dim, 7);
        let w = QuantMatrix::new(GgmlType::Q8_0, vocab, dim, &bytes).unwrap();
        let h = random(n * dim, 1.0, 8);
        let targets: Vec<i32> = (0..n as i32).map(|i| i * 13 % 120).collect();
        let scale_of = |i: usize| if i < 5 { 0.1 } else { 0.3 };
        let (_, dh) = chunked(&h, &w, &targets, &scale_of, 50, 4);
        for (r, s) in [(0usize, 0.1f64), (1, 0.3)] {
            let mut want = vec![0.0f32; 5 * dim];
            let rows = r * 5..(r + 1) * 5;
            cross_entropy_ref(
                &h[rows.start * dim..rows.end * dim],
                &w,
                &targets[rows.clone()],
                s,
                &mut want,
            )
            .unwrap();
            assert_close(&dh[rows.start * dim..rows.end * dim], &want, 2e-5, "row");
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let (vocab, dim, n) = (16, 32, 3);
        let bytes = quantized(GgmlType::F32, vocab, dim, 9);
        let w = QuantMatrix::new(GgmlType::F32, vocab, dim, &bytes).unwrap();
        let h = random(n * dim, 1.0, 10);
        let mut stats = vec![RowLse::EMPTY; n];
        let mut logits = vec![0.0f32; 2 * vocab];
        let ok = [0, 5, 15];
        // Rows past the vocabulary, a target outside it, a chunk of 0, a short scratch.
        assert!(ce_vocab_stats(&h, &w, 8, vocab, &ok, 2, &mut logits, &mut stats).is_err());
        assert!(ce_vocab_stats(&h, &w, 0, vocab, &[0, 16, 1], 2, &mut logits, &mut stats).is_err());
        assert!(ce_vocab_stats(&h, &w, 0, vocab, &ok, 0, &mut logits, &mut stats).is_err());
        assert!(ce_vocab_stats(&h, &w, 0, vocab, &ok, 3, &mut logits, &mut stats).is_err());
        // A target whose chunk was never folded in.
        let half = QuantMatrix::new(GgmlType::F32, 8, dim, &bytes[..8 * dim * 4]).unwrap();
        ce_vocab_stats(&h, &half, 0, vocab, &ok, 2, &mut logits, &mut stats).unwrap();
        assert!(ce_vocab_loss(&stats, &ok, 2).is_err());
        // A non-finite scale.
        let (mut dh, mut part) = (vec![0.0f32; n * dim], vec![0.0f32; 2 * dim]);
        let e = ce_vocab_grad(
            &h,
            &half,
            0,
            vocab,
            &ok,
            &|_| f32::NAN,
            2,
            &stats,
            true,
            &mut logits,
            &mut part,
            &mut dh,
        );
        assert!(e.is_err());
    }
}
