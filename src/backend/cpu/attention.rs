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

use rayon::prelude::*;

use super::dot_f32;
use crate::backend::{AttentionDims, check_len};
use crate::{Error, Result};

/// Keys per tile.
pub const KEY_TILE: usize = 64;
/// Query heads of one KV group processed together (larger groups run in several passes).
pub const MAX_GROUP: usize = 8;

fn check(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: Option<&[f32]>,
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
