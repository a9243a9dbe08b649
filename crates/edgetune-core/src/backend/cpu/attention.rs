//! Causal multi-head attention with grouped KV heads (GQA), tiled with an online softmax.
//!
//! Layouts (row-major, see [`AttentionDims`]): `q`, `out` `[n, n_head · hd]`; `k`, `v`
//! `[pos0 + n, n_head_kv · hd]` (one layer of the KV cache, the new tokens included); `lse`
//! `[n, n_head]`. Query `i` sits at position `pos0 + i` and attends to keys `0..=pos0 + i`;
//! query head `h` reads KV head `h / g`, `g = n_head / n_head_kv`; scores are scaled by
//! `1 / sqrt(hd)`.
//!
//! Tiling (flash-attention style): one task per (query token, KV head) handles that KV head's
//! `g` query heads together — their output rows are contiguous in `out`, so tasks write disjoint
//! chunks — in groups of at most [`MAX_GROUP`] heads. Keys are visited in tiles of [`KEY_TILE`]:
//! scores for the tile go to a fixed stack array, then each head keeps a running maximum `m` and
//! sum `l`; when `m` grows the partial output (accumulated in place in `out`) and `l` are
//! rescaled by `e^(m_old − m_new)`. No `[seq, seq]` (or `[seq]`) buffer exists and nothing is
//! allocated: scratch per task is `MAX_GROUP × KEY_TILE` scores on the stack (2 KiB). Each key
//! tile is read once for all `g` heads of the group.
//!
//! Backward (flash-attention-2 style, from the saved `lse`): per (query `i`, head `h`) and
//! visible key `t`, `s = q_i·k_t / sqrt(hd)`, `P = e^(s − lse_i)`, `dP = dout_i·v_t`,
//! `D_i = dout_i·out_i`, `dS = P·(dP − D_i)`; then `dq_i += dS·k_t / sqrt(hd)`,
//! `dk_t += dS·q_i / sqrt(hd)`, `dv_t += P·dout_i`, with `dk`/`dv` of a KV head summing over its
//! `g` query heads. Two passes, each race-free without locks: dk/dv with one task per block of
//! [`BWD_KEY_BLOCK`] keys (it owns those rows of dk and dv, all KV heads, and visits every query
//! that sees them), then dq with one task per (query token, KV head) as in the forward. Scores
//! are recomputed in both passes; nothing of size `[seq, seq]` exists and nothing is allocated.
//! Any `pos0` works: cache keys get gradients too.

use rayon::prelude::*;

use super::{Real, dot_f32};
use crate::backend::{AttentionDims, check_len};
use crate::{Error, Result};

/// Keys per tile.
pub const KEY_TILE: usize = 64;
/// Query heads of one KV group processed together (larger groups run in several passes).
pub const MAX_GROUP: usize = 8;
/// Keys per dk/dv task of the backward: their k, v, dk, dv rows stay in L1 (4 × 16 × hd f32).
pub const BWD_KEY_BLOCK: usize = 16;

fn check<T>(
    q: &[T],
    k: &[T],
    v: &[T],
    out: &[T],
    lse: Option<&[T]>,
    d: AttentionDims,
) -> Result<()> {
    if d.n_head_kv == 0 || !d.n_head.is_multiple_of(d.n_head_kv) || d.head_dim == 0 {
        return Err(Error::Invalid(format!(
            "attention: {} query heads cannot share {} KV heads of dim {}",
            d.n_head, d.n_head_kv, d.head_dim
        )));
    }
    let kv_len = d.pos0.saturating_add(d.n_tokens);
    let (qw, kvw) = (d.n_head * d.head_dim, d.n_head_kv * d.head_dim);
    check_len("attention", "q", q.len(), d.n_tokens, qw)?;
    check_len("attention", "out", out.len(), d.n_tokens, qw)?;
    check_len("attention", "k", k.len(), kv_len, kvw)?;
    check_len("attention", "v", v.len(), kv_len, kvw)?;
    if let Some(l) = lse {
        check_len("attention", "lse", l.len(), d.n_tokens, d.n_head)?;
    }
    Ok(())
}

/// Fast version (see the module docs).
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    lse: Option<&mut [f32]>,
    d: AttentionDims,
) -> Result<()> {
    check(q, k, v, out, lse.as_deref(), d)?;
    if d.n_tokens == 0 || d.n_head == 0 {
        return Ok(());
    }
    let g = d.n_head / d.n_head_kv;
    let hd = d.head_dim;
    // Task t = i · n_head_kv + kvh owns out[i, kvh·g·hd .. (kvh+1)·g·hd] and lse[i, kvh·g ..].
    let run = |t: usize, o: &mut [f32], l: Option<&mut [f32]>| {
        let (i, kvh) = (t / d.n_head_kv, t % d.n_head_kv);
        let q_rows = &q[i * d.n_head * hd + kvh * g * hd..][..g * hd];
        group_task(q_rows, k, v, o, l, d, d.pos0 + i + 1, kvh);
    };
    match lse {
        Some(lse) => out
            .par_chunks_mut(g * hd)
            .zip(lse.par_chunks_mut(g))
            .enumerate()
            .for_each(|(t, (o, l))| run(t, o, Some(l))),
        None => out
            .par_chunks_mut(g * hd)
            .enumerate()
            .for_each(|(t, o)| run(t, o, None)),
    }
    Ok(())
}

/// One query token's `g` heads sharing KV head `kvh`, over keys `0..n_keys`.
/// `q_rows`/`out` are `[g, hd]`, `lse` `[g]`.
#[allow(clippy::too_many_arguments)]
fn group_task(
    q_rows: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    mut lse: Option<&mut [f32]>,
    d: AttentionDims,
    n_keys: usize,
    kvh: usize,
) {
    let hd = d.head_dim;
    let kv_stride = d.n_head_kv * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let g = q_rows.len() / hd;
    let mut h0 = 0;
    while h0 < g {
        let gh = MAX_GROUP.min(g - h0);
        let q_g = &q_rows[h0 * hd..(h0 + gh) * hd];
        let o_g = &mut out[h0 * hd..(h0 + gh) * hd];
        o_g.fill(0.0);
        let mut m = [f32::NEG_INFINITY; MAX_GROUP];
        let mut l = [0.0f32; MAX_GROUP];
        let mut s = [[0.0f32; KEY_TILE]; MAX_GROUP];
        let mut t0 = 0;
        while t0 < n_keys {
            let tile = KEY_TILE.min(n_keys - t0);
            // Scores of the tile, all heads of the group (each key row read once).
            for t in 0..tile {
                let k_row = &k[(t0 + t) * kv_stride + kvh * hd..][..hd];
                for h in 0..gh {
                    s[h][t] = dot_f32(&q_g[h * hd..(h + 1) * hd], k_row) * scale;
                }
            }
            for h in 0..gh {
                let tile_max = s[h][..tile]
                    .iter()
                    .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let m_new = m[h].max(tile_max);
                // First tile: m = −inf, correction e^(−inf) = 0 on a zero accumulator.
                let corr = (m[h] - m_new).exp();
                m[h] = m_new;
                l[h] *= corr;
                let o_h = &mut o_g[h * hd..(h + 1) * hd];
                if corr != 1.0 {
                    o_h.iter_mut().for_each(|o| *o *= corr);
                }
                for e in s[h][..tile].iter_mut() {
                    *e = (*e - m_new).exp();
                    l[h] += *e;
                }
            }
            // out_h += Σ_t p[h][t] · v[t]: each value row read once for the group.
            for t in 0..tile {
                let v_row = &v[(t0 + t) * kv_stride + kvh * hd..][..hd];
                for h in 0..gh {
                    let p = s[h][t];
                    for (o, &x) in o_g[h * hd..(h + 1) * hd].iter_mut().zip(v_row) {
                        *o += p * x;
                    }
                }
            }
            t0 += tile;
        }
        for h in 0..gh {
            let inv = 1.0 / l[h];
            o_g[h * hd..(h + 1) * hd].iter_mut().for_each(|o| *o *= inv);
            if let Some(lse) = lse.as_deref_mut() {
                lse[h0 + h] = m[h] + l[h].ln();
            }
        }
        h0 += gh;
    }
}

/// Lengths of a backward call (any element type).
#[allow(clippy::too_many_arguments)]
fn check_backward<T>(
    q: &[T],
    k: &[T],
    v: &[T],
    out: &[T],
    lse: &[T],
    dout: &[T],
    dq: &[T],
    dk: &[T],
    dv: &[T],
    d: AttentionDims,
) -> Result<()> {
    check(q, k, v, out, Some(lse), d)?;
    check_len("attention_backward", "dout", dout.len(), 1, q.len())?;
    check_len("attention_backward", "dq", dq.len(), 1, q.len())?;
    check_len("attention_backward", "dk", dk.len(), 1, k.len())?;
    check_len("attention_backward", "dv", dv.len(), 1, v.len())
}

/// Gradients of [`attention`] (overwrite `dq`, `dk`, `dv`); see the module docs for the passes.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    d: AttentionDims,
) -> Result<()> {
    check_backward(q, k, v, out, lse, dout, dq, dk, dv, d)?;
    dk.fill(0.0);
    dv.fill(0.0);
    dq.fill(0.0);
    if d.n_tokens == 0 || d.n_head == 0 {
        return Ok(());
    }
    let (hd, g) = (d.head_dim, d.n_head / d.n_head_kv);
    let (qw, kvw) = (d.n_head * hd, d.n_head_kv * hd);
    let scale = 1.0 / (hd as f32).sqrt();
    // Pass 1: dk, dv. Task b owns key rows b·KB .. b·KB + nb.
    dk.par_chunks_mut(BWD_KEY_BLOCK * kvw)
        .zip(dv.par_chunks_mut(BWD_KEY_BLOCK * kvw))
        .enumerate()
        .for_each(|(b, (dk_b, dv_b))| {
            let t0 = b * BWD_KEY_BLOCK;
            let nb = dk_b.len() / kvw;
            // Query i sees keys 0..=pos0 + i: the first one to see key t0 is t0 − pos0.
            for i in t0.saturating_sub(d.pos0)..d.n_tokens {
                let n_vis = (d.pos0 + i + 1 - t0).min(nb);
                for h in 0..d.n_head {
                    let kvh = h / g;
                    let at = i * qw + h * hd;
                    let (q_h, do_h) = (&q[at..at + hd], &dout[at..at + hd]);
                    let big_d = dot_f32(do_h, &out[at..at + hd]);
                    let l = lse[i * d.n_head + h];
                    for t in 0..n_vis {
                        let kv_at = (t0 + t) * kvw + kvh * hd;
                        let p = (dot_f32(q_h, &k[kv_at..kv_at + hd]) * scale - l).exp();
                        let ds = p * (dot_f32(do_h, &v[kv_at..kv_at + hd]) - big_d) * scale;
                        let row = t * kvw + kvh * hd;
                        for ((a, b), (&x, &y)) in dv_b[row..row + hd]
                            .iter_mut()
                            .zip(&mut dk_b[row..row + hd])
                            .zip(do_h.iter().zip(q_h))
                        {
                            *a += p * x;
                            *b += ds * y;
                        }
                    }
                }
            }
        });
    // Pass 2: dq. Task (i, kvh) owns dq[i, kvh·g·hd .. (kvh+1)·g·hd] (its g heads).
    dq.par_chunks_mut(g * hd)
        .enumerate()
        .for_each(|(task, dq_g)| {
            let (i, kvh) = (task / d.n_head_kv, task % d.n_head_kv);
            let mut big_d = [0.0f32; MAX_GROUP];
            let mut h0 = 0;
            while h0 < g {
                let gh = MAX_GROUP.min(g - h0);
                let at = |hh: usize| i * qw + (kvh * g + h0 + hh) * hd;
                for (hh, dd) in big_d[..gh].iter_mut().enumerate() {
                    *dd = dot_f32(&dout[at(hh)..at(hh) + hd], &out[at(hh)..at(hh) + hd]);
                }
                // Each key and value row is read once for the gh heads.
                for t in 0..d.pos0 + i + 1 {
                    let kv_at = t * kvw + kvh * hd;
                    let (k_t, v_t) = (&k[kv_at..kv_at + hd], &v[kv_at..kv_at + hd]);
                    for hh in 0..gh {
                        let a = at(hh);
                        let l = lse[i * d.n_head + kvh * g + h0 + hh];
                        let p = (dot_f32(&q[a..a + hd], k_t) * scale - l).exp();
                        let ds = p * (dot_f32(&dout[a..a + hd], v_t) - big_d[hh]) * scale;
                        let dq_h = &mut dq_g[(h0 + hh) * hd..(h0 + hh + 1) * hd];
                        for (o, &x) in dq_h.iter_mut().zip(k_t) {
                            *o += ds * x;
                        }
                    }
                }
                h0 += gh;
            }
        });
    Ok(())
}

/// Scalar specification of [`attention_backward`], generic over the element type (f64 inside):
/// the formulas of the module docs, one (token, head) at a time, from the given `out` and `lse`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_ref<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    out: &[T],
    lse: &[T],
    dout: &[T],
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    d: AttentionDims,
) -> Result<()> {
    check_backward(q, k, v, out, lse, dout, dq, dk, dv, d)?;
    let (hd, g) = (d.head_dim, d.n_head / d.n_head_kv);
    let (qw, kvw) = (d.n_head * hd, d.n_head_kv * hd);
    let scale = 1.0 / (hd as f64).sqrt();
    let f =
        |x: &[T], at: usize| -> Vec<f64> { x[at..at + hd].iter().map(|v| v.to_f64()).collect() };
    let dot = |a: &[f64], b: &[f64]| -> f64 { a.iter().zip(b).map(|(x, y)| x * y).sum() };
    let mut dk_acc = vec![0.0f64; dk.len()];
    let mut dv_acc = vec![0.0f64; dv.len()];
    for i in 0..d.n_tokens {
        for h in 0..d.n_head {
            let at = i * qw + h * hd;
            let (q_h, do_h) = (f(q, at), f(dout, at));
            let big_d = dot(&do_h, &f(out, at));
            let l = lse[i * d.n_head + h].to_f64();
            let mut dq_h = vec![0.0f64; hd];
            for t in 0..d.pos0 + i + 1 {
                let kv_at = t * kvw + (h / g) * hd;
                let (k_t, v_t) = (f(k, kv_at), f(v, kv_at));
                let p = (dot(&q_h, &k_t) * scale - l).exp();
                let ds = p * (dot(&do_h, &v_t) - big_d);
                for c in 0..hd {
                    dq_h[c] += ds * scale * k_t[c];
                    dk_acc[kv_at + c] += ds * scale * q_h[c];
                    dv_acc[kv_at + c] += p * do_h[c];
                }
            }
            for c in 0..hd {
                dq[at + c] = T::from_f64(dq_h[c]);
            }
        }
    }
    for (o, a) in dk.iter_mut().zip(dk_acc) {
        *o = T::from_f64(a);
    }
    for (o, a) in dv.iter_mut().zip(dv_acc) {
        *o = T::from_f64(a);
    }
    Ok(())
}

/// Scalar specification: full score row per (token, head), softmax and weighted sum in f64.
pub fn attention_ref(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    mut lse: Option<&mut [f32]>,
    d: AttentionDims,
) -> Result<()> {
    check(q, k, v, out, lse.as_deref(), d)?;
    let hd = d.head_dim;
    let g = d.n_head / d.n_head_kv;
    let kvw = d.n_head_kv * hd;
    let scale = 1.0 / (hd as f64).sqrt();
    for i in 0..d.n_tokens {
        let n_keys = d.pos0 + i + 1;
        for h in 0..d.n_head {
            let kvh = h / g;
            let qh = &q[i * d.n_head * hd + h * hd..][..hd];
            let scores: Vec<f64> = (0..n_keys)
                .map(|t| {
                    let kr = &k[t * kvw + kvh * hd..][..hd];
                    qh.iter()
                        .zip(kr)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = scores.iter().map(|s| (s - mx).exp()).sum();
            for c in 0..hd {
                let acc: f64 = (0..n_keys)
                    .map(|t| (scores[t] - mx).exp() * v[t * kvw + kvh * hd + c] as f64)
                    .sum();
                out[i * d.n_head * hd + h * hd + c] = (acc / sum) as f32;
            }
            if let Some(l) = lse.as_deref_mut() {
                l[i * d.n_head + h] = (mx + sum.ln()) as f32;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::test_util::{assert_close, random};

    fn case(n: usize, pos0: usize, n_head: usize, n_head_kv: usize, hd: usize, seed: u64) {
        let d = AttentionDims {
            n_tokens: n,
            pos0,
            n_head,
            n_head_kv,
            head_dim: hd,
        };
        let kv_len = pos0 + n;
        // q, k in ±2: scores up to ~hd·4/3/sqrt(hd) spread, softmax neither flat nor one-hot.
        let q = random(n * n_head * hd, 2.0, seed);
        let k = random(kv_len * n_head_kv * hd, 2.0, seed + 1);
        let v = random(kv_len * n_head_kv * hd, 1.0, seed + 2);
        let (mut a, mut b) = (vec![0.0; n * n_head * hd], vec![0.0; n * n_head * hd]);
        let (mut la, mut lb) = (vec![0.0; n * n_head], vec![0.0; n * n_head]);
        attention(&q, &k, &v, &mut a, Some(&mut la), d).unwrap();
        attention_ref(&q, &k, &v, &mut b, Some(&mut lb), d).unwrap();
        // f32 scores (hd-term dots, |score| ≲ 10: abs error ~1e-6) feed exp, so the weights carry
        // ~1e-6 relative error; outputs are convex combinations of values in ±1. 2e-5 leaves
        // margin for the rescaling chain over many tiles.
        let what = format!("attention n={n} pos0={pos0} heads={n_head}/{n_head_kv} hd={hd}");
        assert_close(&a, &b, 2e-5, &what);
        assert_close(&la, &lb, 2e-5, &format!("{what} lse"));
        let mut c = vec![0.0; a.len()];
        attention(&q, &k, &v, &mut c, None, d).unwrap();
        assert_eq!(a, c, "lse output does not change out");
    }

    #[test]
    fn matches_ref_gqa_ratios_and_tile_boundaries() {
        let mut seed = 100;
        for (n_head, n_head_kv) in [(3, 3), (4, 2), (8, 2), (16, 1)] {
            for (n, pos0) in [
                (1, 0),
                (7, 0),
                (63, 0),
                (64, 1),
                (65, 0),
                (3, 127),
                (2, 200),
            ] {
                for hd in [8, 36] {
                    seed += 3;
                    case(n, pos0, n_head, n_head_kv, hd, seed);
                }
            }
        }
        // A long sequence: queries cross several key tiles in one call.
        case(150, 0, 4, 1, 16, 7);
    }

    fn backward_case(n: usize, pos0: usize, n_head: usize, n_head_kv: usize, hd: usize, seed: u64) {
        let d = AttentionDims {
            n_tokens: n,
            pos0,
            n_head,
            n_head_kv,
            head_dim: hd,
        };
        let (qn, kvn) = (n * n_head * hd, (pos0 + n) * n_head_kv * hd);
        let q = random(qn, 2.0, seed);
        let k = random(kvn, 2.0, seed + 1);
        let v = random(kvn, 1.0, seed + 2);
        let dout = random(qn, 1.0, seed + 3);
        let (mut out, mut lse) = (vec![0.0; qn], vec![0.0; n * n_head]);
        attention(&q, &k, &v, &mut out, Some(&mut lse), d).unwrap();
        let (mut dqa, mut dka, mut dva) = (vec![9.0; qn], vec![9.0; kvn], vec![9.0; kvn]);
        let (mut dqb, mut dkb, mut dvb) = (vec![0.0; qn], vec![0.0; kvn], vec![0.0; kvn]);
        attention_backward(
            &q, &k, &v, &out, &lse, &dout, &mut dqa, &mut dka, &mut dva, d,
        )
        .unwrap();
        attention_backward_ref(
            &q, &k, &v, &out, &lse, &dout, &mut dqb, &mut dkb, &mut dvb, d,
        )
        .unwrap();
        // Same inputs (f32 out, lse); the fast version's f32 scores (abs error ~1e-6 on |s| ≲ 10)
        // give P ~1e-6 relative; gradients sum ≤ (pos0 + n)·g terms of O(1): 1e-4 relative to
        // max(1, |x|) leaves margin for the longest case (200 keys × 16 heads).
        let what =
            format!("attention backward n={n} pos0={pos0} heads={n_head}/{n_head_kv} hd={hd}");
        assert_close(&dqa, &dqb, 1e-4, &format!("{what} dq"));
        assert_close(&dka, &dkb, 1e-4, &format!("{what} dk"));
        assert_close(&dva, &dvb, 1e-4, &format!("{what} dv"));
    }

    #[test]
    fn backward_matches_ref() {
        let mut seed = 500;
        for (n_head, n_head_kv) in [(3, 3), (4, 2), (16, 1)] {
            for (n, pos0) in [(1, 0), (7, 0), (17, 0), (33, 0), (3, 20), (5, 16)] {
                seed += 4;
                backward_case(n, pos0, n_head, n_head_kv, 8, seed);
            }
        }
        backward_case(70, 0, 4, 2, 36, 9);
        let d = AttentionDims {
            n_tokens: 2,
            pos0: 0,
            n_head: 1,
            n_head_kv: 1,
            head_dim: 1,
        };
        let x = [0.5f32; 2];
        let (mut a, mut b, mut c) = ([0.0f32; 2], [0.0f32; 2], [0.0f32; 2]);
        assert!(
            attention_backward(&x, &x, &x, &x, &x, &x, &mut a, &mut b, &mut c[..1], d).is_err()
        );
        assert!(
            attention_backward(&x, &x, &x, &x, &x[..1], &x, &mut a, &mut b, &mut c, d).is_err()
        );
    }

    #[test]
    fn two_chunks_equal_one() {
        // Queries 0..n in one call == 0..n1 then n1..n with the keys so far: the cache path.
        let (n, n1, nh, nkv, hd) = (70, 29, 4, 2, 16);
        let q = random(n * nh * hd, 2.0, 1);
        let k = random(n * nkv * hd, 2.0, 2);
        let v = random(n * nkv * hd, 1.0, 3);
        let d = AttentionDims {
            n_tokens: n,
            pos0: 0,
            n_head: nh,
            n_head_kv: nkv,
            head_dim: hd,
        };
        let mut whole = vec![0.0; n * nh * hd];
        attention(&q, &k, &v, &mut whole, None, d).unwrap();
        let w = nh * hd;
        let kvw = nkv * hd;
        let mut first = vec![0.0; n1 * w];
        let d1 = AttentionDims { n_tokens: n1, ..d };
        attention(
            &q[..n1 * w],
            &k[..n1 * kvw],
            &v[..n1 * kvw],
            &mut first,
            None,
            d1,
        )
        .unwrap();
        let mut second = vec![0.0; (n - n1) * w];
        let d2 = AttentionDims {
            n_tokens: n - n1,
            pos0: n1,
            ..d
        };
        attention(&q[n1 * w..], &k, &v, &mut second, None, d2).unwrap();
        // Same tiles over the same keys for every query: bit-identical.
        assert_eq!(whole[..n1 * w], first[..]);
        assert_eq!(whole[n1 * w..], second[..]);
    }

    #[test]
    fn hand_computed_and_errors() {
        // One head, hd 1, two positions; query 1 sees keys [0, ln 3 · sqrt(1)] → weights 1/4, 3/4.
        let q = [1.0f32, 1.0];
        let k = [0.0f32, 3f32.ln()];
        let v = [4.0f32, 8.0];
        let d = AttentionDims {
            n_tokens: 2,
            pos0: 0,
            n_head: 1,
            n_head_kv: 1,
            head_dim: 1,
        };
        let mut o = [0.0f32; 2];
        attention(&q, &k, &v, &mut o, None, d).unwrap();
        assert_eq!(o[0], 4.0); // the first query sees only key 0
        assert!((o[1] - 7.0).abs() < 1e-6, "{o:?}");
        let bad = AttentionDims {
            n_head: 3,
            n_head_kv: 2,
            ..d
        };
        assert!(attention(&q, &k, &v, &mut o, None, bad).is_err());
        assert!(attention(&q, &k[..1], &v, &mut o, None, d).is_err());
    }
}
