//! ResLoRA res_is (docs/METHODS.md#reslora): f64 finite differences of the single-layer math
//! with the extra input and its gradient (no dropout and a fixed mask), the f32 adapter against
//! the reference (with `X_{l−1}` and in the layer-0 `2·X` form), a two-layer chain through the
//! pending-gradient protocol the training step uses checked against finite differences of the
//! whole chain, the merge_bw window and export, and a short fit.

use crate::adapters_support;

use crate::adapters_support::{close, no_post, no_pre, run, sgd, xwt};
use crate::backend_grad_fd::{assert_grad, fd_grad, random64, to32, to64};
use edgetune::adapters::base::Dropout;
use edgetune::adapters::lora::BranchDims;
use edgetune::adapters::reslora::{ResLora, backward_ref, forward_ref};
use edgetune::adapters::{Adapter, Export, LoraConfig, Pass, PrevLayerInput};

const DM: BranchDims = adapters_support::FD_DIMS;

/// `L = Σ R ⊙ ΔY`, `ΔY[t,o] = s·Σ_j B[o,j]·Σ_i A[j,i]·(X[t,i] + Xp[t,i])·mask[t,i]`.
fn loss(
    s: f64,
    x: &[f64],
    xp: &[f64],
    a: &[f64],
    b: &[f64],
    mask: Option<&[f64]>,
    rw: &[f64],
) -> f64 {
    let BranchDims { n, in_f, out_f, r } = DM;
    let mut total = 0.0;
    for t in 0..n {
        for o in 0..out_f {
            let mut y = 0.0;
            for j in 0..r {
                let mut h = 0.0;
                for i in 0..in_f {
                    let k = t * in_f + i;
                    h += a[j * in_f + i] * (x[k] + xp[k]) * mask.map_or(1.0, |m| m[k]);
                }
                y += b[o * r + j] * h;
            }
            total += rw[t * out_f + o] * s * y;
        }
    }
    total
}

fn fd_check(mask: Option<&[f64]>) {
    let BranchDims { n, in_f, out_f, r } = DM;
    let s = 1.4;
    let x = random64(n * in_f, 1.0, 1);
    let xp = random64(n * in_f, 1.0, 2);
    let a = random64(r * in_f, 0.5, 3);
    let b = random64(out_f * r, 0.5, 4);
    let rw = random64(n * out_f, 1.0, 5);
    let (y, _) = forward_ref::<f64>(DM, s, &x, &xp, &a, &b, mask);
    let direct: f64 = y.iter().zip(&rw).map(|(p, q)| p * q).sum();
    let l0 = loss(s, &x, &xp, &a, &b, mask, &rw);
    assert!((direct - l0).abs() < 1e-10 * l0.abs().max(1.0));
    let (dx, dxp, da, db) = backward_ref::<f64>(DM, s, &x, &xp, &a, &b, mask, &rw);
    let l = |x: &[f64], xp: &[f64], a: &[f64], b: &[f64]| loss(s, x, xp, a, b, mask, &rw);
    assert_grad(&dx, &fd_grad(&x, |v| l(v, &xp, &a, &b)), 1e-6, "dX_l");
    assert_grad(&dxp, &fd_grad(&xp, |v| l(&x, v, &a, &b)), 1e-6, "dX_{l-1}");
    assert_grad(&da, &fd_grad(&a, |v| l(&x, &xp, v, &b)), 1e-6, "dA");
    assert_grad(&db, &fd_grad(&b, |v| l(&x, &xp, &a, v)), 1e-6, "dB");
}

#[test]
fn gradients_match_finite_differences_f64() {
    fd_check(None);
}

#[test]
fn gradients_with_fixed_dropout_mask_match_finite_differences_f64() {
    let pass = Pass {
        n: DM.n,
        training: true,
        seed: 77,
    };
    let mask = to64(&Dropout::new(0.3, 9).unwrap().mask(pass, DM.in_f).unwrap());
    assert!(mask.contains(&0.0));
    fd_check(Some(&mask));
}

fn cfg(dropout: f32) -> LoraConfig {
    LoraConfig {
        rank: DM.r,
        alpha: 6.0,
        dropout,
        ..LoraConfig::default()
    }
}

fn with_random_b(a: &mut ResLora, seed: u64) {
    let n = a.param(1).unwrap().len();
    a.param_mut(1)
        .unwrap()
        .copy_from_slice(&to32(&random64(n, 0.5, seed)));
}

fn parity(dropout: f32) {
    let BranchDims { n, in_f, out_f, r } = DM;
    let mut res = ResLora::new(in_f, out_f, &cfg(dropout), 100, 9).unwrap();
    with_random_b(&mut res, 3);
    let pass = Pass {
        n,
        training: true,
        seed: 5,
    };
    let x = to32(&random64(n * in_f, 1.0, 6));
    let xp = to32(&random64(n * in_f, 1.0, 7));
    let y0 = to32(&random64(n * out_f, 1.0, 8));
    let g = to32(&random64(n * out_f, 1.0, 9));
    let dx0 = to32(&random64(n * in_f, 1.0, 10));
    let mask = res.dropout_mask(pass).map(|m| to64(&m));
    let (a, b) = (to64(res.param(0).unwrap()), to64(res.param(1).unwrap()));
    let s = res.scale() as f64;

    // With X_{l−1}: dx and the pending dx_prev both get V.
    let mut saved = vec![f32::NAN; res.saved_len(n)];
    let mut scratch = vec![f32::NAN; res.scratch_len(n)];
    let mut y = y0.clone();
    res.forward_res(pass, &x, Some(&xp), &mut y, &mut saved, &mut scratch)
        .unwrap();
    let (mut dx, mut dxp) = (dx0.clone(), vec![0.0f32; n * in_f]);
    let mut grads = vec![f32::NAN; res.n_params()];
    res.backward_res(
        pass,
        &x,
        Some(&xp),
        &g,
        &saved,
        &mut scratch,
        &mut dx,
        Some(&mut dxp),
        &mut grads,
    )
    .unwrap();
    let (x64, xp64, g64) = (to64(&x), to64(&xp), to64(&g));
    let (yr, _) = forward_ref::<f64>(DM, s, &x64, &xp64, &a, &b, mask.as_deref());
    let (dxr, dxpr, dar, dbr) =
        backward_ref::<f64>(DM, s, &x64, &xp64, &a, &b, mask.as_deref(), &g64);
    close(&y, Some(&y0), &yr, 1e-5, "y");
    close(&dx, Some(&dx0), &dxr, 1e-5, "dx");
    close(&dxp, None, &dxpr, 1e-5, "dx_prev");
    close(&grads[..r * in_f], None, &dar, 1e-5, "dA");
    close(&grads[r * in_f..], None, &dbr, 1e-5, "dB");

    // The trait path is layer 0: X_{l−1} = X_l, V added twice.
    let out = run(&res, pass, &x, &y0, &g, &dx0);
    let (yr, _) = forward_ref::<f64>(DM, s, &x64, &x64, &a, &b, mask.as_deref());
    let (dxr, dxpr, dar, dbr) =
        backward_ref::<f64>(DM, s, &x64, &x64, &a, &b, mask.as_deref(), &g64);
    let both: Vec<f64> = dxr.iter().zip(&dxpr).map(|(p, q)| p + q).collect();
    close(&out.y, Some(&y0), &yr, 1e-5, "y (layer 0)");
    close(&out.dx, Some(&dx0), &both, 1e-5, "dx (layer 0)");
    close(&out.grads[..r * in_f], None, &dar, 1e-5, "dA (layer 0)");
    close(&out.grads[r * in_f..], None, &dbr, 1e-5, "dB (layer 0)");
}

#[test]
fn f32_adapter_matches_reference() {
    parity(0.0);
}

#[test]
fn f32_adapter_with_dropout_matches_reference() {
    parity(0.2);
}

/// Two chained modules of one target type (`in = out = D`) with a nonlinearity between them:
/// `Y0 = X0·W0ᵀ + res0(X0, 2·X0)`, `X1 = tanh(Y0)`, `Y1 = X1·W1ᵀ + res1(X1, X0)`, `L = Σ R⊙Y1`.
const D: usize = 8;
const NT: usize = 4;
const R: usize = 3;

#[allow(clippy::too_many_arguments)]
fn chain_loss(
    s: f64,
    x0: &[f64],
    w: [&[f64]; 2],
    a: [&[f64]; 2],
    b: [&[f64]; 2],
    rw: &[f64],
) -> f64 {
    let branch = |x: &[f64], xp: &[f64], a: &[f64], b: &[f64]| -> Vec<f64> {
        let mut y = vec![0.0; NT * D];
        for t in 0..NT {
            for o in 0..D {
                let mut v = 0.0;
                for j in 0..R {
                    let h: f64 = (0..D)
                        .map(|i| a[j * D + i] * (x[t * D + i] + xp[t * D + i]))
                        .sum();
                    v += b[o * R + j] * h;
                }
                y[t * D + o] = s * v;
            }
        }
        y
    };
    let mut y0 = xwt(x0, w[0], NT, D, D);
    branch(x0, x0, a[0], b[0])
        .iter()
        .zip(y0.iter_mut())
        .for_each(|(p, q)| *q += p);
    let x1: Vec<f64> = y0.iter().map(|v| v.tanh()).collect();
    let mut y1 = xwt(&x1, w[1], NT, D, D);
    branch(&x1, x0, a[1], b[1])
        .iter()
        .zip(y1.iter_mut())
        .for_each(|(p, q)| *q += p);
    y1.iter().zip(rw).map(|(p, q)| p * q).sum()
}

#[test]
fn two_layer_chain_with_the_pending_gradient_matches_finite_differences() {
    let c = LoraConfig {
        rank: R,
        alpha: 3.0,
        ..LoraConfig::default()
    };
    let mut res = [
        ResLora::new(D, D, &c, 100, 1).unwrap(),
        ResLora::new(D, D, &c, 100, 2).unwrap(),
    ];
    for (k, m) in res.iter_mut().enumerate() {
        with_random_b(m, 20 + k as u64);
    }
    let s = res[0].scale() as f64;
    let w = [
        to32(&random64(D * D, 0.4, 30)),
        to32(&random64(D * D, 0.4, 31)),
    ];
    let x0 = to32(&random64(NT * D, 1.0, 32));
    let rw = to32(&random64(NT * D, 1.0, 33));
    let pass = Pass {
        n: NT,
        training: true,
        seed: 0,
    };
    let mm = |x: &[f32], w: &[f32]| to32(&xwt(&to64(x), &to64(w), NT, D, D));
    // Forward, as the step runs it: layer 0 without a predecessor, layer 1 with X0.
    let mut saved = [
        vec![0.0; res[0].saved_len(NT)],
        vec![0.0; res[1].saved_len(NT)],
    ];
    let mut scratch = vec![0.0; res[0].scratch_len(NT)];
    let mut y0 = mm(&x0, &w[0]);
    res[0]
        .forward_res(pass, &x0, None, &mut y0, &mut saved[0], &mut scratch)
        .unwrap();
    let x1: Vec<f32> = y0.iter().map(|v| v.tanh()).collect();
    let mut y1 = mm(&x1, &w[1]);
    res[1]
        .forward_res(pass, &x1, Some(&x0), &mut y1, &mut saved[1], &mut scratch)
        .unwrap();
    // Backward from the top: layer 1 fills the pending gradient of X0 ...
    let mut pending = vec![0.0f32; NT * D];
    let dyw = |g: &[f32], w: &[f32]| -> Vec<f32> {
        let mut d = vec![0.0f32; NT * D];
        for t in 0..NT {
            for i in 0..D {
                d[t * D + i] = (0..D).map(|o| g[t * D + o] * w[o * D + i]).sum();
            }
        }
        d
    };
    let mut dx1 = dyw(&rw, &w[1]);
    let mut g1 = vec![0.0; res[1].n_params()];
    res[1]
        .backward_res(
            pass,
            &x1,
            Some(&x0),
            &rw,
            &saved[1],
            &mut scratch,
            &mut dx1,
            Some(&mut pending),
            &mut g1,
        )
        .unwrap();
    let gy0: Vec<f32> = dx1
        .iter()
        .zip(&x1)
        .map(|(d, x)| d * (1.0 - x * x))
        .collect();
    let mut dx0 = dyw(&gy0, &w[0]);
    let mut g0 = vec![0.0; res[0].n_params()];
    res[0]
        .backward_res(
            pass,
            &x0,
            None,
            &gy0,
            &saved[0],
            &mut scratch,
            &mut dx0,
            None,
            &mut g0,
        )
        .unwrap();
    // ... which layer 0's backward adds to its module-input gradient.
    dx0.iter_mut().zip(&pending).for_each(|(d, p)| *d += p);

    let (w64, rw64) = ([to64(&w[0]), to64(&w[1])], to64(&rw));
    let a64 = [
        to64(res[0].param(0).unwrap()),
        to64(res[1].param(0).unwrap()),
    ];
    let b64 = [
        to64(res[0].param(1).unwrap()),
        to64(res[1].param(1).unwrap()),
    ];
    let x064 = to64(&x0);
    let f = |x0: &[f64], a: [&[f64]; 2], b: [&[f64]; 2]| {
        chain_loss(s, x0, [&w64[0], &w64[1]], a, b, &rw64)
    };
    let (a0, a1, b0, b1) = (&a64[0][..], &a64[1][..], &b64[0][..], &b64[1][..]);
    let tol = 2e-4;
    assert_grad(
        &to64(&dx0),
        &fd_grad(&x064, |v| f(v, [a0, a1], [b0, b1])),
        tol,
        "dX0",
    );
    assert_grad(
        &to64(&g0[..R * D]),
        &fd_grad(a0, |v| f(&x064, [v, a1], [b0, b1])),
        tol,
        "dA0",
    );
    assert_grad(
        &to64(&g0[R * D..]),
        &fd_grad(b0, |v| f(&x064, [a0, a1], [v, b1])),
        tol,
        "dB0",
    );
    assert_grad(
        &to64(&g1[..R * D]),
        &fd_grad(a1, |v| f(&x064, [a0, v], [b0, b1])),
        tol,
        "dA1",
    );
    assert_grad(
        &to64(&g1[R * D..]),
        &fd_grad(b1, |v| f(&x064, [a0, a1], [b0, v])),
        tol,
        "dB1",
    );
    // Without the pending term dX0 is wrong: the cross-layer path matters here.
    let without: Vec<f64> = dx0
        .iter()
        .zip(&pending)
        .map(|(d, p)| (d - p) as f64)
        .collect();
    let fd = fd_grad(&x064, |v| f(v, [a0, a1], [b0, b1]));
    let err = without
        .iter()
        .zip(&fd)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f64::max);
    assert!(
        err > 1e-3,
        "the pending gradient made no difference ({err})"
    );
}

#[test]
fn merge_bw_window_alpha_and_export() {
    let (inf, outf, n) = (8, 6, 3);
    let c = LoraConfig {
        rank: 2,
        alpha: 4.0,
        ..LoraConfig::default()
    };
    let mut res = ResLora::new(inf, outf, &c, 3, 4).unwrap();
    with_random_b(&mut res, 5);
    assert_eq!(res.merge_alpha(), 1.0, "empty window");
    let mut saved = vec![0.0; res.saved_len(n)];
    let mut scratch = vec![0.0; res.scratch_len(n)];
    let mut y = vec![0.0; n * outf];
    // X_{l−1} = 2·X_l in every pass: α = 2, whatever the window holds.
    for seed in 0..5u64 {
        let x = to32(&random64(n * inf, 1.0 + seed as f64, seed));
        let xp: Vec<f32> = x.iter().map(|v| 2.0 * v).collect();
        let pass = Pass {
            n,
            training: true,
            seed,
        };
        res.forward_res(pass, &x, Some(&xp), &mut y, &mut saved, &mut scratch)
            .unwrap();
        // A recompute of the same pass is not counted again.
        res.forward_res(pass, &x, Some(&xp), &mut y, &mut saved, &mut scratch)
            .unwrap();
    }
    let w = res.norm_window();
    assert_eq!((w.cur.len(), w.prev.len()), (3, 3), "window of 3");
    assert!(
        (res.merge_alpha() - 2.0).abs() < 1e-6,
        "{}",
        res.merge_alpha()
    );
    // Evaluation passes do not record.
    let x = to32(&random64(n * inf, 1.0, 9));
    let pass = Pass {
        n,
        training: false,
        seed: 99,
    };
    res.forward_res(pass, &x, Some(&x), &mut y, &mut saved, &mut scratch)
        .unwrap();
    assert!((res.merge_alpha() - 2.0).abs() < 1e-6);
    let Export::LowRank { a, b, rank, scale } = res.export() else {
        panic!("low-rank export");
    };
    assert_eq!(rank, 2);
    assert!((scale as f64 - 3.0 * res.scale() as f64).abs() < 1e-5);
    let mut dw = vec![0.0; outf * inf];
    res.delta_weight(&mut dw).unwrap();
    let want: Vec<f64> = adapters_support::matmul(&to64(&b), &to64(&a), outf, 2, inf)
        .iter()
        .map(|v| v * scale as f64)
        .collect();
    close(&dw, None, &want, 1e-5, "merge_bw ΔW");
    // The layer-0 form records α = 1.
    let mut l0 = ResLora::new(inf, outf, &c, 3, 4).unwrap();
    let pass = Pass {
        n,
        training: true,
        seed: 1,
    };
    l0.forward(pass, &x, &mut y, &mut saved, &mut scratch)
        .unwrap();
    assert_eq!(l0.merge_alpha(), 1.0);
    l0.init(3);
    assert!(l0.norm_window().cur.is_empty());
}

#[test]
fn sgd_fits_a_low_rank_change() {
    let (inf, outf, n) = (16, 12, 20);
    let c = LoraConfig {
        rank: 4,
        alpha: 4.0,
        ..LoraConfig::default()
    };
    let mut res = ResLora::new(inf, outf, &c, 100, 7).unwrap();
    let x = to32(&random64(n * inf, 1.0, 1));
    let w = adapters_support::matmul(
        &random64(outf * 2, 0.5, 2),
        &random64(2 * inf, 0.5, 3),
        outf,
        2,
        inf,
    );
    let target = to32(&xwt(&to64(&x), &w, n, inf, outf));
    let base = vec![0.0f32; n * outf];
    let losses = sgd(
        &mut res,
        &x,
        &base,
        &target,
        n,
        200,
        0.05,
        &mut no_pre,
        &mut no_post,
    );
    let (first, last) = (losses[0], *losses.last().unwrap());
    eprintln!("ResLoRA fit: loss {first:.4} → {last:.4}");
    assert!(last < 0.3 * first, "{first} → {last}");
}
