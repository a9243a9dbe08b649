//! DyLoRA / QDyLoRA (docs/METHODS.md#dylora-and-qdylora): f64 finite differences of the truncated
//! branch (inputs, `A`, `B`; frozen and unfrozen), the f32 adapter against the reference, the
//! per-step rank draw, evaluation rank and export, and short fits.

use crate::adapters_support;
use crate::adapters_support::{close, matmul, no_post, no_pre, run, sgd, xwt};
use crate::backend_grad_fd::{assert_grad, fd_grad, random64, to32, to64};
use edgetune::adapters::dylora::{Dylora, DyloraConfig, backward_ref, forward_ref};
use edgetune::adapters::lora::BranchDims;
use edgetune::adapters::{Adapter, Export, LoraConfig, Pass};

const DM: BranchDims = adapters_support::FD_DIMS;
const ALPHA: f64 = 6.0;

/// `L = Σ R ⊙ ΔY`, `ΔY[t,o] = (alpha/b)·Σ_{j<b} B[o,j]·Σ_i A[j,i]·Xd[t,i]`.
fn loss(b: usize, x: &[f64], a: &[f64], bm: &[f64], mask: Option<&[f64]>, rw: &[f64]) -> f64 {
    let BranchDims { n, in_f, out_f, r } = DM;
    let mut total = 0.0;
    for t in 0..n {
        for o in 0..out_f {
            let mut y = 0.0;
            for j in 0..b {
                let h: f64 = (0..in_f)
                    .map(|i| {
                        a[j * in_f + i] * x[t * in_f + i] * mask.map_or(1.0, |m| m[t * in_f + i])
                    })
                    .sum();
                y += bm[o * r + j] * h;
            }
            total += rw[t * out_f + o] * ALPHA / b as f64 * y;
        }
    }
    total
}

fn fd_check(b: usize, mask: Option<&[f64]>) {
    let BranchDims { n, in_f, out_f, r } = DM;
    let x = random64(n * in_f, 1.0, 1);
    let a = random64(r * in_f, 0.5, 2);
    let bm = random64(out_f * r, 0.5, 3);
    let rw = random64(n * out_f, 1.0, 4);
    let s_b = ALPHA / b as f64;
    let y = forward_ref::<f64>(DM, s_b, b, &x, &a, &bm, mask);
    let direct: f64 = y.iter().zip(&rw).map(|(p, q)| p * q).sum();
    assert!((direct - loss(b, &x, &a, &bm, mask, &rw)).abs() < 1e-10 * direct.abs().max(1.0));
    let (dx, da, db) = backward_ref::<f64>(DM, s_b, b, false, &x, &a, &bm, mask, &rw);
    let fx = fd_grad(&x, |v| loss(b, v, &a, &bm, mask, &rw));
    let fa = fd_grad(&a, |v| loss(b, &x, v, &bm, mask, &rw));
    let fb = fd_grad(&bm, |v| loss(b, &x, &a, v, mask, &rw));
    assert_grad(&dx, &fx, 1e-6, "dX");
    assert_grad(&da, &fa, 1e-6, "dA");
    assert_grad(&db, &fb, 1e-6, "dB");
    // Frozen: the same dX; only component b−1 keeps its (true) gradient, the rest is 0.
    let (fdx, fda, fdb) = backward_ref::<f64>(DM, s_b, b, true, &x, &a, &bm, mask, &rw);
    assert_eq!(fdx, dx);
    for j in 0..r {
        for i in 0..in_f {
            let want = if j == b - 1 { fa[j * in_f + i] } else { 0.0 };
            assert!(
                (fda[j * in_f + i] - want).abs() < 1e-6 * want.abs().max(1.0),
                "frozen dA[{j},{i}]"
            );
        }
        for o in 0..out_f {
            let want = if j == b - 1 { fb[o * r + j] } else { 0.0 };
            assert!(
                (fdb[o * r + j] - want).abs() < 1e-6 * want.abs().max(1.0),
                "frozen dB[{o},{j}]"
            );
        }
    }
}

#[test]
fn truncated_gradients_match_finite_differences_f64() {
    for b in [1, 3, 4] {
        fd_check(b, None);
    }
}

#[test]
fn truncated_gradients_with_fixed_dropout_mask_match_finite_differences_f64() {
    let cfg = DyloraConfig::dylora(LoraConfig {
        rank: DM.r,
        dropout: 0.3,
        ..LoraConfig::default()
    });
    let dy = Dylora::new(DM.in_f, DM.out_f, &cfg, 5).unwrap();
    let pass = Pass {
        n: DM.n,
        training: true,
        seed: 11,
    };
    let mask = to64(&dy.dropout_mask(pass).unwrap());
    assert!(mask.contains(&0.0) && mask.iter().any(|&v| v != 0.0));
    fd_check(2, Some(&mask));
}

fn parity(frozen: bool, dropout: f32, training: bool) {
    let dm = BranchDims {
        n: 37,
        in_f: 50,
        out_f: 70,
        r: 8,
    };
    let lora = LoraConfig {
        rank: dm.r,
        alpha: 16.0,
        dropout,
        ..LoraConfig::default()
    };
    let cfg = if frozen {
        DyloraConfig::dylora(lora)
    } else {
        DyloraConfig::qdylora(lora)
    };
    let mut dy = Dylora::new(dm.in_f, dm.out_f, &cfg, 20).unwrap();
    dy.b_mut()
        .copy_from_slice(&to32(&random64(dm.out_f * dm.r, 0.5, 21)));
    dy.set_active_rank(5).unwrap();
    dy.set_eval_rank(3).unwrap();
    let pass = Pass {
        n: dm.n,
        training,
        seed: 3,
    };
    let b = if training { 5 } else { 3 };
    assert_eq!(dy.rank_of(pass), b);
    let x = to32(&random64(dm.n * dm.in_f, 1.0, 22));
    let y0 = to32(&random64(dm.n * dm.out_f, 1.0, 23));
    let g = to32(&random64(dm.n * dm.out_f, 1.0, 24));
    let dx0 = to32(&random64(dm.n * dm.in_f, 1.0, 25));
    let out = run(&dy, pass, &x, &y0, &g, &dx0);
    let mask = dy.dropout_mask(pass).map(|m| to64(&m));
    let s_b = 16.0 / b as f64;
    let (xs, gs, a, bm) = (to64(&x), to64(&g), to64(dy.a()), to64(dy.b()));
    let dyr = forward_ref::<f64>(dm, s_b, b, &xs, &a, &bm, mask.as_deref());
    let frozen_now = frozen && training;
    let (dxr, dar, dbr) =
        backward_ref::<f64>(dm, s_b, b, frozen_now, &xs, &a, &bm, mask.as_deref(), &gs);
    close(&out.y, Some(&y0), &dyr, 2e-4, "dy");
    close(&out.dx, Some(&dx0), &dxr, 2e-4, "dx");
    let (ga, gb) = out.grads.split_at(dm.r * dm.in_f);
    close(ga, None, &dar, 2e-4, "dA");
    close(gb, None, &dbr, 2e-4, "dB");
}

#[test]
fn f32_adapter_matches_reference() {
    for frozen in [true, false] {
        parity(frozen, 0.0, true);
        parity(frozen, 0.25, true);
    }
    parity(true, 0.25, false);
}

#[test]
fn rank_draw_is_uniform_shared_and_seeded() {
    let cfg = DyloraConfig::dylora(LoraConfig {
        rank: 8,
        ..LoraConfig::default()
    });
    let mut counts = [0usize; 8];
    for t in 0..16_000u64 {
        let b = cfg.rank_for_step(t);
        assert!((1..=8).contains(&b));
        counts[b - 1] += 1;
    }
    // Expected 2000 each, sd ≈ 42: ±10% is about 5 sd.
    assert!(counts.iter().all(|&c| c.abs_diff(2000) < 200), "{counts:?}");
    // Every layer draws the same rank at a step, whatever its own seed.
    let mut l1 = Dylora::new(16, 8, &cfg, 1).unwrap();
    let mut l2 = Dylora::new(32, 4, &cfg, 2).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for t in 0..50 {
        l1.on_step(t);
        l2.on_step(t);
        assert_eq!(l1.active_rank(), l2.active_rank());
        assert_eq!(l1.active_rank(), cfg.rank_for_step(t));
        seen.insert(l1.active_rank());
    }
    assert!(seen.len() > 4, "{seen:?}");
    let other = DyloraConfig {
        rank_seed: 99,
        ..cfg.clone()
    };
    assert!((0..50).any(|t| other.rank_for_step(t) != cfg.rank_for_step(t)));
    assert!(l1.set_eval_rank(0).is_err() && l1.set_eval_rank(9).is_err());
    assert_eq!((l1.method(), l1.eval_rank()), ("dylora", 8));
    assert_eq!(
        Dylora::new(4, 4, &DyloraConfig::qdylora(LoraConfig::default()), 0)
            .unwrap()
            .method(),
        "qdylora"
    );
}

#[test]
fn export_and_merge_at_the_evaluation_rank() {
    let (n, in_f, out_f, r) = (4, 12, 9, 6);
    let cfg = DyloraConfig::dylora(LoraConfig {
        rank: r,
        alpha: 12.0,
        ..LoraConfig::default()
    });
    let mut dy = Dylora::new(in_f, out_f, &cfg, 30).unwrap();
    dy.b_mut()
        .copy_from_slice(&to32(&random64(out_f * r, 0.5, 31)));
    let bstar = 4;
    dy.set_eval_rank(bstar).unwrap();
    assert_eq!(dy.scale(), 3.0);
    let (a, bm) = (to64(dy.a()), to64(dy.b()));
    let bt: Vec<f64> = (0..out_f * bstar)
        .map(|k| bm[(k / bstar) * r + k % bstar])
        .collect();
    let want: Vec<f64> = matmul(&bt, &a[..bstar * in_f], out_f, bstar, in_f)
        .iter()
        .map(|v| 3.0 * v)
        .collect();
    let mut dw = vec![0.0f32; out_f * in_f];
    dy.delta_weight(&mut dw).unwrap();
    close(&dw, None, &want, 1e-5, "delta_weight");
    match dy.export() {
        Export::LowRank { a, b, rank, scale } => {
            assert_eq!(
                (rank, scale, a.len(), b.len()),
                (bstar, 3.0, bstar * in_f, out_f * bstar)
            );
            assert_eq!(to64(&b), bt);
        }
        Export::MergeOnly => panic!("DyLoRA exports as LoRA"),
    }
    // An inference pass is the merged layer.
    let x = to32(&random64(n * in_f, 1.0, 32));
    let pass = Pass {
        n,
        training: false,
        seed: 0,
    };
    let out = run(
        &dy,
        pass,
        &x,
        &vec![0.0; n * out_f],
        &vec![0.0; n * out_f],
        &vec![0.0; n * in_f],
    );
    close(
        &out.y,
        None,
        &xwt(&to64(&x), &want, n, in_f, out_f),
        1e-4,
        "eval forward",
    );
}

/// Full-rank evaluation loss `½/N·Σ(Y − T)²` of `dy`.
fn eval_loss(dy: &Dylora, x: &[f32], base: &[f32], target: &[f32], n: usize) -> f64 {
    let pass = Pass {
        n,
        training: false,
        seed: 0,
    };
    let out = run(
        dy,
        pass,
        x,
        base,
        &vec![0.0; base.len()],
        &vec![0.0; x.len()],
    );
    out.y
        .iter()
        .zip(target)
        .map(|(y, t)| 0.5 * ((y - t) as f64).powi(2) / n as f64)
        .sum()
}

#[test]
fn sgd_with_sampled_ranks_fits_a_low_rank_change() {
    let (n, in_f, out_f, r) = (64, 24, 16, 4);
    let w64 = random64(out_f * in_f, 0.3, 40);
    let ba = matmul(
        &random64(out_f * r, 0.5, 41),
        &random64(r * in_f, 0.5, 42),
        out_f,
        r,
        in_f,
    );
    let wt: Vec<f64> = w64.iter().zip(&ba).map(|(p, q)| p + q).collect();
    let x64 = random64(n * in_f, 1.0, 43);
    let (x, base, target) = (
        to32(&x64),
        to32(&xwt(&x64, &w64, n, in_f, out_f)),
        to32(&xwt(&x64, &wt, n, in_f, out_f)),
    );
    // The full-rank loss does not go to 0: component j enters rank b with the scale alpha/b, so
    // the truncations pull the shared components to different sizes (DyLoRA's compromise).
    for (frozen, steps) in [(false, 120), (true, 300)] {
        let lora = LoraConfig {
            rank: r,
            alpha: r as f32,
            ..LoraConfig::default()
        };
        let cfg = if frozen {
            DyloraConfig::dylora(lora)
        } else {
            DyloraConfig::qdylora(lora)
        };
        let mut dy = Dylora::new(in_f, out_f, &cfg, 44).unwrap();
        let before = eval_loss(&dy, &x, &base, &target, n);
        sgd(
            &mut dy,
            &x,
            &base,
            &target,
            n,
            steps,
            0.3,
            &mut no_pre,
            &mut no_post,
        );
        let after = eval_loss(&dy, &x, &base, &target, n);
        eprintln!("frozen {frozen}: full-rank loss {before} -> {after}");
        assert!(after * 3.0 < before, "frozen {frozen}: {before} -> {after}");
    }
}
