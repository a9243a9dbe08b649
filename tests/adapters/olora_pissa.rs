//! OLoRA and PiSSA (docs/METHODS.md#olora-and-pissa) with the frozen correction term: f64 finite
//! differences (inputs, `A`, `B`), the f32 adapter against the reference, inits against the QR /
//! SVD definitions, exactness at init, the rank-2r export, and a short fit.

use crate::adapters_support;
use crate::adapters_support::{
    close, gram_schmidt, matmul, no_post, no_pre, run, sgd, with_spectrum, xwt,
};
use crate::backend_grad_fd::{assert_grad, fd_grad, random64, to32, to64};
use edgetune::adapters::lora::BranchDims;
use edgetune::adapters::olora_pissa::{ResidualInit, ResidualLora, backward_ref, forward_ref};
use edgetune::adapters::{Adapter, Export, LoraConfig, Pass};

const DM: BranchDims = adapters_support::FD_DIMS;

/// `L = Σ R ⊙ ΔY`, `ΔY[t,o] = s·Σ_j B[o,j]·Σ_i A[j,i]·Xd[t,i] − s·Σ_j B0[o,j]·Σ_i A0[j,i]·X[t,i]`.
#[allow(clippy::too_many_arguments)]
fn loss(
    s: f64,
    x: &[f64],
    a: &[f64],
    b: &[f64],
    a0: &[f64],
    b0: &[f64],
    mask: Option<&[f64]>,
    rw: &[f64],
) -> f64 {
    let BranchDims { n, in_f, out_f, r } = DM;
    let mut total = 0.0;
    for t in 0..n {
        for o in 0..out_f {
            let mut y = 0.0;
            for j in 0..r {
                let (mut h, mut h0) = (0.0, 0.0);
                for i in 0..in_f {
                    let m = mask.map_or(1.0, |m| m[t * in_f + i]);
                    h += a[j * in_f + i] * x[t * in_f + i] * m;
                    h0 += a0[j * in_f + i] * x[t * in_f + i];
                }
                y += b[o * r + j] * h - b0[o * r + j] * h0;
            }
            total += rw[t * out_f + o] * s * y;
        }
    }
    total
}

fn fd_check(mask: Option<&[f64]>) {
    let BranchDims { n, in_f, out_f, r } = DM;
    let s = 1.3;
    let x = random64(n * in_f, 1.0, 1);
    let a = random64(r * in_f, 0.5, 2);
    let b = random64(out_f * r, 0.5, 3);
    let a0 = random64(r * in_f, 0.5, 4);
    let b0 = random64(out_f * r, 0.5, 5);
    let rw = random64(n * out_f, 1.0, 6);
    let y = forward_ref::<f64>(DM, s, &x, &a, &b, &a0, &b0, mask);
    let direct: f64 = y.iter().zip(&rw).map(|(p, q)| p * q).sum();
    let l0 = loss(s, &x, &a, &b, &a0, &b0, mask, &rw);
    assert!((direct - l0).abs() < 1e-10 * l0.abs().max(1.0));
    let (dx, da, db) = backward_ref::<f64>(DM, s, &x, &a, &b, &a0, &b0, mask, &rw);
    let fx = fd_grad(&x, |v| loss(s, v, &a, &b, &a0, &b0, mask, &rw));
    assert_grad(&dx, &fx, 1e-6, "dX");
    let fa = fd_grad(&a, |v| loss(s, &x, v, &b, &a0, &b0, mask, &rw));
    assert_grad(&da, &fa, 1e-6, "dA");
    let fb = fd_grad(&b, |v| loss(s, &x, &a, v, &a0, &b0, mask, &rw));
    assert_grad(&db, &fb, 1e-6, "dB");
}

#[test]
fn gradients_match_finite_differences_f64() {
    fd_check(None);
}

#[test]
fn gradients_with_fixed_dropout_mask_match_finite_differences_f64() {
    let cfg = LoraConfig {
        rank: DM.r,
        dropout: 0.3,
        ..LoraConfig::default()
    };
    let w = to32(&random64(DM.out_f * DM.in_f, 1.0, 7));
    let ad = ResidualLora::new(ResidualInit::Olora, &cfg, &w, DM.out_f, DM.in_f, 8).unwrap();
    let pass = Pass {
        n: DM.n,
        training: true,
        seed: 4,
    };
    let mask = to64(&ad.lora().dropout_mask(pass).unwrap());
    assert!(mask.contains(&0.0) && mask.iter().any(|&v| v != 0.0));
    fd_check(Some(&mask));
}

fn parity(kind: ResidualInit, dropout: f32) {
    let dm = adapters_support::PARITY_DIMS;
    let cfg = LoraConfig {
        rank: dm.r,
        alpha: 12.0,
        dropout,
        ..LoraConfig::default()
    };
    let w = to32(&random64(dm.out_f * dm.in_f, 0.3, 20));
    let mut ad = ResidualLora::new(kind, &cfg, &w, dm.out_f, dm.in_f, 21).unwrap();
    // Move away from the init so the branch and the correction differ.
    for (v, d) in ad
        .lora_mut()
        .b_mut()
        .iter_mut()
        .zip(random64(dm.out_f * dm.r, 0.2, 22))
    {
        *v += d as f32;
    }
    let pass = Pass {
        n: dm.n,
        training: true,
        seed: 3,
    };
    let x = to32(&random64(dm.n * dm.in_f, 1.0, 23));
    let y0 = to32(&random64(dm.n * dm.out_f, 1.0, 24));
    let g = to32(&random64(dm.n * dm.out_f, 1.0, 25));
    let dx0 = to32(&random64(dm.n * dm.in_f, 1.0, 26));
    let out = run(&ad, pass, &x, &y0, &g, &dx0);
    let mask = ad.lora().dropout_mask(pass).map(|m| to64(&m));
    let (s, xs, gs) = (ad.scale() as f64, to64(&x), to64(&g));
    let (a, b, a0, b0) = (
        to64(ad.lora().a()),
        to64(ad.lora().b()),
        to64(ad.a0()),
        to64(ad.b0()),
    );
    let dy = forward_ref::<f64>(dm, s, &xs, &a, &b, &a0, &b0, mask.as_deref());
    let (dxr, dar, dbr) = backward_ref::<f64>(dm, s, &xs, &a, &b, &a0, &b0, mask.as_deref(), &gs);
    close(&out.y, Some(&y0), &dy, 2e-4, "dy");
    close(&out.dx, Some(&dx0), &dxr, 2e-4, "dx");
    let (ga, gb) = out.grads.split_at(dm.r * dm.in_f);
    close(ga, None, &dar, 2e-4, "dA");
    close(gb, None, &dbr, 2e-4, "dB");
}

#[test]
fn f32_adapter_matches_reference() {
    parity(ResidualInit::Olora, 0.0);
    parity(ResidualInit::Olora, 0.25);
    parity(ResidualInit::Pissa { niter: 4 }, 0.0);
}

/// At init (no dropout) the branch and the correction cancel: `Y` stays the base output.
fn starts_as_the_base(ad: &ResidualLora, seed: u64) {
    let (n, in_f, out_f) = (6, ad.in_features(), ad.out_features());
    let x = to32(&random64(n * in_f, 1.0, seed));
    let y0 = to32(&random64(n * out_f, 1.0, seed + 1));
    let pass = Pass {
        n,
        training: false,
        seed: 0,
    };
    let out = run(
        ad,
        pass,
        &x,
        &y0,
        &vec![0.0; n * out_f],
        &vec![0.0; n * in_f],
    );
    // (y0 + u) − u: exact up to one rounding of y0 + u.
    close(&out.y, None, &to64(&y0), 1e-6, "branch at init");
}

#[test]
fn olora_init_is_the_thin_qr_of_the_base() {
    for (out_f, in_f, r) in [(20, 12, 5), (9, 30, 4)] {
        let cfg = LoraConfig {
            rank: r,
            alpha: 16.0,
            ..LoraConfig::default()
        };
        let w = to32(&random64(out_f * in_f, 1.0, 30));
        let w64 = to64(&w);
        let ad = ResidualLora::new(ResidualInit::Olora, &cfg, &w, out_f, in_f, 31).unwrap();
        assert_eq!(ad.method(), "olora");
        let (a, b) = (to64(ad.lora().a()), to64(ad.lora().b()));
        assert_eq!(ad.lora().a(), ad.a0());
        assert_eq!(ad.lora().b(), ad.b0());
        // B = Q[:, :r]: Gram–Schmidt of W's first r columns, up to column signs; A = R[:r, :]
        // = ±Qᵀ·W (not divided by the scale).
        let first: Vec<f64> = (0..out_f * r)
            .map(|k| w64[(k / r) * in_f + k % r])
            .collect();
        let q = gram_schmidt(&first, out_f, r);
        for j in 0..r {
            let sign = (0..out_f)
                .map(|o| b[o * r + j] * q[o * r + j])
                .sum::<f64>()
                .signum();
            for o in 0..out_f {
                assert!(
                    (b[o * r + j] - sign * q[o * r + j]).abs() < 1e-5,
                    "B[{o},{j}]"
                );
            }
            for i in 0..in_f {
                let qtw: f64 = (0..out_f).map(|o| q[o * r + j] * w64[o * in_f + i]).sum();
                assert!((a[j * in_f + i] - sign * qtw).abs() < 1e-4, "A[{j},{i}]");
            }
            // R[:r, :r] is upper triangular.
            for i in 0..j {
                assert!(
                    a[j * in_f + i].abs() < 1e-5,
                    "R[{j},{i}] = {}",
                    a[j * in_f + i]
                );
            }
        }
        starts_as_the_base(&ad, 32);
    }
}

#[test]
fn pissa_init_is_the_top_r_svd_split_by_the_scale() {
    let (out_f, in_f, r) = (36, 24, 3);
    let sigma: Vec<f64> = (0..12).map(|i| 8.0 * 0.7f64.powi(i)).collect();
    let (w64, u, v) = with_spectrum(out_f, in_f, &sigma, 40);
    let w = to32(&w64);
    let cfg = LoraConfig {
        rank: r,
        alpha: 6.0,
        ..LoraConfig::default()
    };
    let s = cfg.scale() as f64;
    let ad =
        ResidualLora::new(ResidualInit::Pissa { niter: 6 }, &cfg, &w, out_f, in_f, 41).unwrap();
    assert_eq!(ad.method(), "pissa");
    let (a, b) = (to64(ad.lora().a()), to64(ad.lora().b()));
    let k = sigma.len();
    for j in 0..r {
        let root = (sigma[j] / s).sqrt();
        let sign = (0..in_f)
            .map(|i| a[j * in_f + i] * v[i * k + j])
            .sum::<f64>()
            .signum();
        for i in 0..in_f {
            assert!(
                (a[j * in_f + i] - sign * root * v[i * k + j]).abs() < 1e-4,
                "A[{j},{i}]"
            );
        }
        for o in 0..out_f {
            assert!(
                (b[o * r + j] - sign * root * u[o * k + j]).abs() < 1e-4,
                "B[{o},{j}]"
            );
        }
    }
    // s·B·A is the rank-r truncation of W.
    let ba = matmul(&b, &a, out_f, r, in_f);
    for o in 0..out_f {
        for i in 0..in_f {
            let want: f64 = (0..r).map(|j| u[o * k + j] * sigma[j] * v[i * k + j]).sum();
            assert!((s * ba[o * in_f + i] - want).abs() < 1e-4, "({o},{i})");
        }
    }
    starts_as_the_base(&ad, 42);
}

#[test]
fn export_is_the_rank_2r_lora_of_the_change() {
    let (out_f, in_f, r) = (10, 14, 3);
    let cfg = LoraConfig {
        rank: r,
        alpha: 7.0,
        ..LoraConfig::default()
    };
    let w = to32(&random64(out_f * in_f, 1.0, 50));
    let mut ad = ResidualLora::new(ResidualInit::Olora, &cfg, &w, out_f, in_f, 51).unwrap();
    for (v, d) in ad
        .lora_mut()
        .a_mut()
        .iter_mut()
        .zip(random64(r * in_f, 0.3, 52))
    {
        *v += d as f32;
    }
    let mut dw = vec![0.0f32; out_f * in_f];
    ad.delta_weight(&mut dw).unwrap();
    let s = ad.scale() as f64;
    let trained = matmul(&to64(ad.lora().b()), &to64(ad.lora().a()), out_f, r, in_f);
    let init = matmul(&to64(ad.b0()), &to64(ad.a0()), out_f, r, in_f);
    let want: Vec<f64> = trained
        .iter()
        .zip(&init)
        .map(|(p, q)| s * (p - q))
        .collect();
    close(&dw, None, &want, 1e-5, "delta_weight");
    match ad.export() {
        Export::LowRank { a, b, rank, scale } => {
            assert_eq!((rank, scale), (2 * r, ad.scale()));
            let ba = matmul(&to64(&b), &to64(&a), out_f, 2 * r, in_f);
            let got: Vec<f32> = ba.iter().map(|v| (v * scale as f64) as f32).collect();
            close(&got, None, &want, 1e-5, "exported B·A");
        }
        Export::MergeOnly => panic!("OLoRA exports as LoRA"),
    }
    assert_eq!(ad.extra_bytes(), 4 * r * (in_f + out_f));
}

#[test]
fn sgd_fits_a_change_of_the_principal_factors_from_both_inits() {
    let (n, in_f, out_f, r) = (64, 24, 16, 4);
    let w = to32(&random64(out_f * in_f, 0.3, 60));
    let w64 = to64(&w);
    let x64 = random64(n * in_f, 1.0, 63);
    let base = to32(&xwt(&x64, &w64, n, in_f, out_f));
    let cfg = LoraConfig {
        rank: r,
        alpha: r as f32,
        ..LoraConfig::default()
    };
    for kind in [ResidualInit::Olora, ResidualInit::Pissa { niter: 4 }] {
        let mut ad = ResidualLora::new(kind, &cfg, &w, out_f, in_f, 64).unwrap();
        // Target W + s·(B*·A* − B0·A0) with B* = B0 + δB, A* = A0 + δA: reachable at rank r.
        let s = ad.scale() as f64;
        let bs: Vec<f64> = to64(ad.b0())
            .iter()
            .zip(random64(out_f * r, 0.2, 61))
            .map(|(p, q)| p + q)
            .collect();
        let as_: Vec<f64> = to64(ad.a0())
            .iter()
            .zip(random64(r * in_f, 0.2, 62))
            .map(|(p, q)| p + q)
            .collect();
        let star = matmul(&bs, &as_, out_f, r, in_f);
        let init = matmul(&to64(ad.b0()), &to64(ad.a0()), out_f, r, in_f);
        let wt: Vec<f64> = (0..out_f * in_f)
            .map(|k| w64[k] + s * (star[k] - init[k]))
            .collect();
        let target = to32(&xwt(&x64, &wt, n, in_f, out_f));
        let losses = sgd(
            &mut ad,
            &to32(&x64),
            &base,
            &target,
            n,
            60,
            0.2,
            &mut no_pre,
            &mut no_post,
        );
        let (first, last) = (losses[0], *losses.last().unwrap());
        eprintln!("{kind:?}: loss {first} -> {last}");
        assert!(last * 5.0 < first, "{kind:?}: loss {first} -> {last}");
    }
}

#[test]
fn bad_shapes_are_errors() {
    let cfg = LoraConfig {
        rank: 5,
        ..LoraConfig::default()
    };
    let w = vec![0.5f32; 4 * 8];
    assert!(ResidualLora::new(ResidualInit::Olora, &cfg, &w, 4, 8, 0).is_err());
    assert!(ResidualLora::new(ResidualInit::Olora, &cfg, &w[..31], 4, 8, 0).is_err());
    let mut bad = vec![0.5f32; 8 * 8];
    bad[3] = f32::NAN;
    assert!(ResidualLora::new(ResidualInit::Pissa { niter: 2 }, &cfg, &bad, 8, 8, 0).is_err());
}
