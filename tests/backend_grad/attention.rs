//! Finite-difference check in f64 of the CPU attention backward (causal, GQA, with and without
//! cached keys before the new tokens): the forward is rewritten here in plain f64 loops, `L = Σ
//! r·out` with random `r` is differentiated by central differences with respect to every element
//! of `q`, `k` and `v`, and compared with the generic reference at f64 (tight: 1e-6) and with the
//! fast f32 kernel fed the f32 forward's `out` and `lse`.

use crate::backend_grad_fd::{assert_grad, fd_grad, functional, random64, to32, to64};
use edgetune::backend::cpu::attention::attention_backward_ref;
use edgetune::backend::{AttentionDims, Backend, CpuBackend};

/// `(out, lse)` of causal GQA attention in f64.
fn attention_f64(q: &[f64], k: &[f64], v: &[f64], d: AttentionDims) -> (Vec<f64>, Vec<f64>) {
    let (hd, g) = (d.head_dim, d.n_head / d.n_head_kv);
    let (qw, kvw) = (d.n_head * hd, d.n_head_kv * hd);
    let mut out = vec![0.0; d.n_tokens * qw];
    let mut lse = vec![0.0; d.n_tokens * d.n_head];
    for i in 0..d.n_tokens {
        for h in 0..d.n_head {
            let qh = &q[i * qw + h * hd..][..hd];
            let kv0 = (h / g) * hd;
            let s: Vec<f64> = (0..=d.pos0 + i)
                .map(|t| {
                    let kt = &k[t * kvw + kv0..][..hd];
                    qh.iter().zip(kt).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
            lse[i * d.n_head + h] = mx + z.ln();
            for (t, st) in s.iter().enumerate() {
                let p = (st - mx).exp() / z;
                for c in 0..hd {
                    out[i * qw + h * hd + c] += p * v[t * kvw + kv0 + c];
                }
            }
        }
    }
    (out, lse)
}

fn check(n: usize, pos0: usize, n_head: usize, n_head_kv: usize, hd: usize, seed: u64) {
    let d = AttentionDims {
        n_tokens: n,
        pos0,
        n_head,
        n_head_kv,
        head_dim: hd,
    };
    let (qn, kvn) = (n * n_head * hd, (pos0 + n) * n_head_kv * hd);
    let q = random64(qn, 1.5, seed);
    let k = random64(kvn, 1.5, seed + 1);
    let v = random64(kvn, 1.0, seed + 2);
    let r = random64(qn, 1.0, seed + 3);
    let num_q = fd_grad(&q, |q| functional(&r, &attention_f64(q, &k, &v, d).0));
    let num_k = fd_grad(&k, |k| functional(&r, &attention_f64(&q, k, &v, d).0));
    let num_v = fd_grad(&v, |v| functional(&r, &attention_f64(&q, &k, v, d).0));
    let what = format!("attention n={n} pos0={pos0} heads={n_head}/{n_head_kv} hd={hd}");

    let (out, lse) = attention_f64(&q, &k, &v, d);
    let (mut dq, mut dk, mut dv) = (vec![0.0; qn], vec![0.0; kvn], vec![0.0; kvn]);
    attention_backward_ref(&q, &k, &v, &out, &lse, &r, &mut dq, &mut dk, &mut dv, d).unwrap();
    assert_grad(&dq, &num_q, 1e-6, &format!("{what} dq (f64 ref)"));
    assert_grad(&dk, &num_k, 1e-6, &format!("{what} dk (f64 ref)"));
    assert_grad(&dv, &num_v, 1e-6, &format!("{what} dv (f64 ref)"));

    // The fast kernel after the fast forward, all in f32: scores, exponentials and ≤ 8-term
    // sums in f32 (~1e-6 relative each); 5e-5 of the gradient's scale covers the chain.
    let (q32, k32, v32) = (to32(&q), to32(&k), to32(&v));
    let (mut out32, mut lse32) = (vec![0.0f32; qn], vec![0.0f32; n * n_head]);
    let be = CpuBackend;
    be.attention(&q32, &k32, &v32, &mut out32, Some(&mut lse32), d)
        .unwrap();
    let (mut dq32, mut dk32, mut dv32) = (vec![0.0f32; qn], vec![0.0f32; kvn], vec![0.0f32; kvn]);
    be.attention_backward(
        &q32,
        &k32,
        &v32,
        &out32,
        &lse32,
        &to32(&r),
        &mut dq32,
        &mut dk32,
        &mut dv32,
        d,
    )
    .unwrap();
    assert_grad(&to64(&dq32), &num_q, 5e-5, &format!("{what} dq (f32 fast)"));
    assert_grad(&to64(&dk32), &num_k, 5e-5, &format!("{what} dk (f32 fast)"));
    assert_grad(&to64(&dv32), &num_v, 5e-5, &format!("{what} dv (f32 fast)"));
}

#[test]
fn mha_matches_finite_differences() {
    check(5, 0, 2, 2, 4, 1);
}

#[test]
fn gqa_matches_finite_differences() {
    check(6, 0, 4, 2, 4, 10);
    check(4, 0, 3, 1, 6, 20);
}

#[test]
fn cached_keys_get_gradients_too() {
    // pos0 > 0: the first pos0 keys are seen by every query; their dk/dv are checked as well.
    check(3, 4, 4, 2, 4, 30);
}

#[test]
fn more_keys_than_one_backward_block() {
    // 19 keys: two dk/dv blocks of the fast kernel (16 keys each).
    check(19, 0, 2, 1, 2, 40);
}
