//! AdaLoRA (docs/METHODS.md#adalora): f64 finite differences of the SVD-form branch (inputs, `A`,
//! `B`, `e`) and of the orthogonal regularizer, the f32 adapter against the reference, PEFT
//! init, the cubic budget schedule (hand-computed), importance scores, masking with ties and
//! the final pattern, the folded export, and a short fit with the allocator running.

use crate::adapters_support;
use crate::adapters_support::{close, matmul, run, sgd, xwt};
use crate::backend_grad_fd::{assert_grad, fd_grad, random64, to32, to64};
use edgetune::adapters::adalora::{AdaLora, backward_ref, forward_ref, orth_regularizer_ref};
use edgetune::adapters::adalora_alloc::{AdaloraConfig, RankAllocator};
use edgetune::adapters::lora::BranchDims;
use edgetune::adapters::{Adapter, Export, Group, Pass};

const DM: BranchDims = adapters_support::FD_DIMS;

fn cfg(init_r: usize) -> AdaloraConfig {
    AdaloraConfig {
        init_r,
        target_r: init_r.min(2),
        total_step: 100,
        ..AdaloraConfig::default()
    }
}

/// `L = Σ R ⊙ ΔY`, `ΔY[t,o] = k·Σ_j B[o,j]·e_j·Σ_i A[j,i]·Xd[t,i]`.
#[allow(clippy::too_many_arguments)]
fn loss(
    k: f64,
    x: &[f64],
    a: &[f64],
    b: &[f64],
    e: &[f64],
    mask: Option<&[f64]>,
    rw: &[f64],
) -> f64 {
    let BranchDims { n, in_f, out_f, r } = DM;
    let mut total = 0.0;
    for t in 0..n {
        for o in 0..out_f {
            let mut y = 0.0;
            for j in 0..r {
                let u: f64 = (0..in_f)
                    .map(|i| {
                        a[j * in_f + i] * x[t * in_f + i] * mask.map_or(1.0, |m| m[t * in_f + i])
                    })
                    .sum();
                y += b[o * r + j] * e[j] * u;
            }
            total += rw[t * out_f + o] * k * y;
        }
    }
    total
}

fn fd_check(mask: Option<&[f64]>) {
    let BranchDims { n, in_f, out_f, r } = DM;
    let k = 0.9;
    let x = random64(n * in_f, 1.0, 1);
    let a = random64(r * in_f, 0.5, 2);
    let b = random64(out_f * r, 0.5, 3);
    // A masked component (e = 0): its A row and B column get no task gradient, e does.
    let mut e = random64(r, 1.0, 4);
    e[2] = 0.0;
    let rw = random64(n * out_f, 1.0, 5);
    let y = forward_ref::<f64>(DM, k, &x, &a, &b, &e, mask);
    let direct: f64 = y.iter().zip(&rw).map(|(p, q)| p * q).sum();
    assert!((direct - loss(k, &x, &a, &b, &e, mask, &rw)).abs() < 1e-10 * direct.abs().max(1.0));
    let (dx, da, db, de) = backward_ref::<f64>(DM, k, &x, &a, &b, &e, mask, &rw);
    assert_grad(
        &dx,
        &fd_grad(&x, |v| loss(k, v, &a, &b, &e, mask, &rw)),
        1e-6,
        "dX",
    );
    assert_grad(
        &da,
        &fd_grad(&a, |v| loss(k, &x, v, &b, &e, mask, &rw)),
        1e-6,
        "dA",
    );
    assert_grad(
        &db,
        &fd_grad(&b, |v| loss(k, &x, &a, v, &e, mask, &rw)),
        1e-6,
        "dB",
    );
    assert_grad(
        &de,
        &fd_grad(&e, |v| loss(k, &x, &a, &b, v, mask, &rw)),
        1e-6,
        "de",
    );
    assert!(da[2 * in_f..3 * in_f].iter().all(|&v| v == 0.0));
    assert!(de[2] != 0.0, "a masked component must be able to regrow");
}

#[test]
fn gradients_match_finite_differences_f64() {
    fd_check(None);
}

#[test]
fn gradients_with_fixed_dropout_mask_match_finite_differences_f64() {
    let c = AdaloraConfig {
        dropout: 0.3,
        ..cfg(DM.r)
    };
    let ada = AdaLora::new(DM.in_f, DM.out_f, &c, 6).unwrap();
    let pass = Pass {
        n: DM.n,
        training: true,
        seed: 8,
    };
    let mask = to64(&ada.dropout_mask(pass).unwrap());
    assert!(mask.contains(&0.0) && mask.iter().any(|&v| v != 0.0));
    fd_check(Some(&mask));
}

/// `coef·(‖A·Aᵀ − I‖_F + ‖Bᵀ·B − I‖_F)` as loops.
fn orth_loss(coef: f64, a: &[f64], b: &[f64]) -> f64 {
    let BranchDims { in_f, out_f, r, .. } = DM;
    let (mut fa, mut fb) = (0.0, 0.0);
    for p in 0..r {
        for q in 0..r {
            let id = if p == q { 1.0 } else { 0.0 };
            let aa: f64 = (0..in_f).map(|i| a[p * in_f + i] * a[q * in_f + i]).sum();
            let bb: f64 = (0..out_f).map(|o| b[o * r + p] * b[o * r + q]).sum();
            fa += (aa - id).powi(2);
            fb += (bb - id).powi(2);
        }
    }
    coef * (fa.sqrt() + fb.sqrt())
}

#[test]
fn orthogonal_regularizer_gradient_matches_finite_differences() {
    let BranchDims { in_f, out_f, r, .. } = DM;
    let coef = 0.25;
    let a = random64(r * in_f, 0.5, 10);
    let b = random64(out_f * r, 0.5, 11);
    let (val, da, db) = orth_regularizer_ref::<f64>(DM, coef, &a, &b);
    assert!((val - orth_loss(coef, &a, &b)).abs() < 1e-12);
    assert_grad(
        &da,
        &fd_grad(&a, |v| orth_loss(coef, v, &b)),
        1e-6,
        "dA_orth",
    );
    assert_grad(
        &db,
        &fd_grad(&b, |v| orth_loss(coef, &a, v)),
        1e-6,
        "dB_orth",
    );
    // The f32 method adds the same to an existing gradient, in params layout [A, B, e].
    let mut ada = AdaLora::new(in_f, out_f, &cfg(r), 12).unwrap();
    ada.a_mut().copy_from_slice(&to32(&a));
    ada.b_mut().copy_from_slice(&to32(&b));
    let g0 = to32(&random64(ada.n_params(), 1.0, 13));
    let mut g = g0.clone();
    let got = ada.orth_regularizer(coef as f32, &mut g).unwrap();
    assert!((got - val).abs() < 1e-5 * val, "{got} vs {val}");
    let (ga, rest) = g.split_at(r * in_f);
    let (gb, ge) = rest.split_at(out_f * r);
    close(ga, Some(&g0[..r * in_f]), &da, 1e-5, "dA_orth f32");
    close(
        gb,
        Some(&g0[r * in_f..r * (in_f + out_f)]),
        &db,
        1e-5,
        "dB_orth f32",
    );
    assert_eq!(ge, &g0[r * (in_f + out_f)..]);
}

fn parity(dropout: f32) {
    let dm = adapters_support::PARITY_DIMS;
    let c = AdaloraConfig {
        alpha: 16.0,
        dropout,
        ..cfg(dm.r)
    };
    let mut ada = AdaLora::new(dm.in_f, dm.out_f, &c, 20).unwrap();
    let mut e = to32(&random64(dm.r, 1.0, 21));
    e[1] = 0.0;
    ada.e_mut().copy_from_slice(&e);
    ada.a_mut()
        .copy_from_slice(&to32(&random64(dm.r * dm.in_f, 0.5, 22)));
    ada.b_mut()
        .copy_from_slice(&to32(&random64(dm.out_f * dm.r, 0.5, 23)));
    let pass = Pass {
        n: dm.n,
        training: true,
        seed: 3,
    };
    let x = to32(&random64(dm.n * dm.in_f, 1.0, 24));
    let y0 = to32(&random64(dm.n * dm.out_f, 1.0, 25));
    let g = to32(&random64(dm.n * dm.out_f, 1.0, 26));
    let dx0 = to32(&random64(dm.n * dm.in_f, 1.0, 27));
    let out = run(&ada, pass, &x, &y0, &g, &dx0);
    let mask = ada.dropout_mask(pass).map(|m| to64(&m));
    let (k, xs, gs) = (ada.scale() as f64, to64(&x), to64(&g));
    let (a, b, e) = (to64(ada.a()), to64(ada.b()), to64(ada.e()));
    let dy = forward_ref::<f64>(dm, k, &xs, &a, &b, &e, mask.as_deref());
    let (dxr, dar, dbr, der) = backward_ref::<f64>(dm, k, &xs, &a, &b, &e, mask.as_deref(), &gs);
    close(&out.y, Some(&y0), &dy, 2e-4, "dy");
    close(&out.dx, Some(&dx0), &dxr, 2e-4, "dx");
    let (ga, rest) = out.grads.split_at(dm.r * dm.in_f);
    let (gb, ge) = rest.split_at(dm.out_f * dm.r);
    close(ga, None, &dar, 2e-4, "dA");
    close(gb, None, &dbr, 2e-4, "dB");
    close(ge, None, &der, 2e-4, "de");
}

#[test]
fn f32_adapter_matches_reference() {
    parity(0.0);
    parity(0.25);
}

#[test]
fn init_scale_and_params_are_peft() {
    let (in_f, out_f) = (300, 200);
    let ada = AdaLora::new(in_f, out_f, &cfg(12), 30).unwrap();
    assert!(ada.e().iter().all(|&v| v == 0.0));
    for (name, v) in [("A", ada.a()), ("B", ada.b())] {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let sd = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        // N(0, 0.02²) over 2400+ draws: mean within 5 sd of 0, sd within 5%.
        assert!(mean.abs() < 5.0 * 0.02 / n.sqrt(), "{name} mean {mean}");
        assert!((sd / 0.02 - 1.0).abs() < 0.05, "{name} sd {sd}");
    }
    // PEFT defaults: alpha 8, r0 12 → k = 8/(12 + 1e-5).
    assert_eq!(ada.scale(), (8.0f64 / 12.00001) as f32);
    let zero_alpha = AdaloraConfig {
        alpha: 0.0,
        ..cfg(12)
    };
    assert_eq!(zero_alpha.scale(), (12.0f64 / 12.00001) as f32);
    let p = ada.params();
    assert_eq!(
        p.iter()
            .map(|p| (p.name, p.shape.clone(), p.group))
            .collect::<Vec<_>>(),
        [
            ("lora_A", vec![12, in_f], Group::A),
            ("lora_B", vec![out_f, 12], Group::B),
            ("lora_E", vec![12, 1], Group::A),
        ]
    );
    let np = 12 * (in_f + out_f + 1);
    assert_eq!(ada.n_params(), np);
    assert_eq!(ada.extra_bytes(), 8 * np + 4 * 144 + 12);
}

#[test]
fn budget_schedule_is_cubic() {
    let c = AdaloraConfig {
        init_r: 4,
        target_r: 2,
        tinit: 2,
        tfinal: 3,
        total_step: 12,
        delta_t: 2,
        ..AdaloraConfig::default()
    };
    // 3 layers: b_init 12, b_target 6, T − tfinal = 9, span 7;
    // b(t) = floor(6·(1 − (t−2)/7)³ + 6): t=3 → 6·216/343 + 6 = 9.78 → 9; t=4 → 8.19 → 8;
    // t=5 → 7.12 → 7; t=6 → 6.47 → 6; then 6.
    let want = [
        (0, 12, false),
        (2, 12, false),
        (3, 9, false),
        (4, 8, true),
        (5, 7, false),
        (6, 6, true),
        (9, 6, false),
        (10, 6, true),
        (11, 6, true),
    ];
    for (t, b, m) in want {
        assert_eq!(c.budget(t, 3), (b, m), "step {t}");
    }
    assert_eq!(c.orth_coef(3), 0.5 / 6.0);
    for bad in [
        AdaloraConfig {
            total_step: 0,
            ..c.clone()
        },
        AdaloraConfig {
            tinit: 9,
            ..c.clone()
        },
        AdaloraConfig {
            target_r: 5,
            ..c.clone()
        },
        AdaloraConfig {
            delta_t: 0,
            ..c.clone()
        },
        AdaloraConfig {
            beta1: 1.0,
            ..c.clone()
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}

#[test]
fn triplet_scores_follow_the_ema_formulas() {
    let (in_f, out_f, r) = (3, 2, 2);
    let c = AdaloraConfig {
        beta1: 0.5,
        beta2: 0.5,
        ..cfg(r)
    };
    let mut ada = AdaLora::new(in_f, out_f, &c, 40).unwrap();
    let theta = [
        0.5f32, -1.0, 2.0, 1.0, 1.0, -0.5, /* B */ 2.0, 1.0, -1.0, 0.5, /* e */ 3.0, -2.0,
    ];
    let grads = [
        1.0f32, 1.0, 0.5, 2.0, -1.0, 4.0, 0.5, 1.0, 1.0, 2.0, 0.1, 0.5,
    ];
    ada.a_mut().copy_from_slice(&theta[..6]);
    ada.b_mut().copy_from_slice(&theta[6..10]);
    ada.e_mut().copy_from_slice(&theta[10..]);
    ada.update_importance(&grads).unwrap();
    // One update from zero: Ī = I/2, Ū = |I − I/2|/2 = I/4, score = I²/8, I = |θ·g|.
    let sc = |k: usize| ((theta[k] * grads[k]) as f64).powi(2) / 8.0;
    let want: Vec<f64> = (0..r)
        .map(|i| {
            let sa = (0..in_f).map(|j| sc(i * in_f + j)).sum::<f64>() / in_f as f64;
            let sb = (0..out_f).map(|o| sc(6 + o * r + i)).sum::<f64>() / out_f as f64;
            sc(10 + i) + sa + sb
        })
        .collect();
    let mut got = vec![0.0f32; r];
    ada.triplet_scores(&mut got).unwrap();
    close(&got, None, &want, 1e-6, "scores");
}

#[test]
fn allocator_masks_the_least_important_components_and_freezes_the_pattern() {
    let (in_f, out_f, r) = (4, 3, 3);
    let c = AdaloraConfig {
        init_r: r,
        target_r: 1,
        tinit: 0,
        tfinal: 2,
        total_step: 6,
        delta_t: 1,
        beta1: 0.5,
        beta2: 0.5,
        ..AdaloraConfig::default()
    };
    let mut l0 = AdaLora::new(in_f, out_f, &c, 1).unwrap();
    let mut l1 = AdaLora::new(in_f, out_f, &c, 2).unwrap();
    // θ = 1 everywhere, gradient = importance: component i of layer l gets |g| = w[l][i];
    // the two layers' scores interleave, with a tie between l0[1] and l1[0].
    let weights = [[3.0f32, 1.0, 5.0], [1.0, 4.0, 0.5]];
    let grads: Vec<Vec<f32>> = weights
        .iter()
        .map(|w| {
            let mut g = vec![0.0f32; r * (in_f + out_f + 1)];
            for i in 0..r {
                g[i * in_f..(i + 1) * in_f].fill(w[i]);
                for o in 0..out_f {
                    g[r * in_f + o * r + i] = w[i];
                }
                g[r * (in_f + out_f) + i] = w[i];
            }
            g
        })
        .collect();
    for l in [&mut l0, &mut l1] {
        l.a_mut().fill(1.0);
        l.b_mut().fill(1.0);
        l.e_mut().fill(1.0);
    }
    let mut alloc = RankAllocator::new(&c, 2).unwrap();
    // t = 1: b = floor(4·(1 − 1/4)³ + 2) = floor(3.69) = 3 → mask 6 − 3 = 3 components: the
    // smallest scores are l1[2] (0.5) then the tie l0[1] = l1[0] (1.0): all three go.
    let gr: Vec<&[f32]> = grads.iter().map(|g| g.as_slice()).collect();
    let res = alloc
        .update_and_allocate(1, &mut [&mut l0, &mut l1], &gr)
        .unwrap();
    assert_eq!(res.budget, 3);
    assert!(res.updated && res.threshold.is_some());
    assert_eq!(l0.keep(), [true, false, true]);
    assert_eq!(l1.keep(), [false, true, false]);
    assert_eq!(l0.e(), [1.0, 0.0, 1.0]);
    assert_eq!(l1.e(), [0.0, 1.0, 0.0]);
    // t = 4 = T − tfinal: forced mask to b_target = 2 without an importance update; the flags
    // freeze. The scores are still those of t = 1 (no update), so l0[2] (5) and l1[1] (4) stay.
    let res = alloc
        .update_and_allocate(4, &mut [&mut l0, &mut l1], &gr)
        .unwrap();
    assert_eq!((res.budget, res.updated), (2, false));
    assert_eq!(l0.keep(), [false, false, true]);
    assert_eq!(l1.keep(), [false, true, false]);
    // t = 5: masked components that regrew are zeroed again by the frozen pattern.
    l0.e_mut().fill(0.7);
    l1.e_mut().fill(0.7);
    let res = alloc
        .update_and_allocate(5, &mut [&mut l0, &mut l1], &gr)
        .unwrap();
    assert_eq!((res.budget, res.threshold, res.updated), (2, None, false));
    assert_eq!(l0.e(), [0.0, 0.0, 0.7]);
    assert_eq!(l1.e(), [0.0, 0.7, 0.0]);
    assert_eq!((l0.active_rank(), l1.active_rank()), (1, 1));
    assert!(
        alloc
            .update_and_allocate(5, &mut [&mut l0], &gr[..1])
            .is_err()
    );
}

#[test]
fn export_folds_e_into_b_and_drops_masked_components() {
    let (in_f, out_f, r) = (7, 5, 4);
    let mut ada = AdaLora::new(in_f, out_f, &cfg(r), 50).unwrap();
    ada.e_mut().copy_from_slice(&[0.5, 0.0, -2.0, 0.0]);
    let k = ada.scale() as f64;
    let (a, b) = (to64(ada.a()), to64(ada.b()));
    let bd: Vec<f64> = (0..out_f * r)
        .map(|t| b[t] * ada.e()[t % r] as f64)
        .collect();
    let want: Vec<f64> = matmul(&bd, &a, out_f, r, in_f)
        .iter()
        .map(|v| k * v)
        .collect();
    let mut dw = vec![0.0f32; out_f * in_f];
    ada.delta_weight(&mut dw).unwrap();
    close(&dw, None, &want, 1e-6, "delta_weight");
    match ada.export() {
        Export::LowRank { a, b, rank, scale } => {
            assert_eq!((rank, scale), (2, ada.scale()));
            let got: Vec<f32> = matmul(&to64(&b), &to64(&a), out_f, 2, in_f)
                .iter()
                .map(|v| (k * v) as f32)
                .collect();
            close(&got, None, &want, 1e-6, "exported");
            assert_eq!(&a[..in_f], &ada.a()[..in_f]);
            assert_eq!(&a[in_f..], &ada.a()[2 * in_f..3 * in_f]);
        }
        Export::MergeOnly => panic!("AdaLoRA exports as LoRA"),
    }
    ada.e_mut().fill(0.0);
    assert!(matches!(ada.export(), Export::LowRank { rank: 1, .. }));
}

#[test]
fn sgd_with_regularizer_and_allocator_fits_a_low_rank_change() {
    let (n, in_f, out_f, r0) = (64, 24, 16, 6);
    let c = AdaloraConfig {
        init_r: r0,
        target_r: 4,
        alpha: r0 as f32,
        tinit: 20,
        tfinal: 20,
        total_step: 150,
        delta_t: 5,
        orth_reg_weight: 0.1,
        ..AdaloraConfig::default()
    };
    let w64 = random64(out_f * in_f, 0.3, 60);
    let ba = matmul(
        &random64(out_f * 3, 0.5, 61),
        &random64(3 * in_f, 0.5, 62),
        out_f,
        3,
        in_f,
    );
    let wt: Vec<f64> = w64.iter().zip(&ba).map(|(p, q)| p + q).collect();
    let x64 = random64(n * in_f, 1.0, 63);
    let base = to32(&xwt(&x64, &w64, n, in_f, out_f));
    let target = to32(&xwt(&x64, &wt, n, in_f, out_f));
    let mut ada = AdaLora::new(in_f, out_f, &c, 64).unwrap();
    let mut alloc = RankAllocator::new(&c, 1).unwrap();
    let coef = c.orth_coef(1);
    let mut pre = |ad: &mut dyn Adapter, _t: u64, g: &mut [f32]| {
        let ada = ad.downcast_ref::<AdaLora>().unwrap();
        ada.orth_regularizer(coef, g).unwrap();
    };
    let mut post = |ad: &mut dyn Adapter, t: u64, g: &[f32]| {
        let ada = ad.downcast_mut::<AdaLora>().unwrap();
        alloc.update_and_allocate(t, &mut [ada], &[g]).unwrap();
    };
    let losses = sgd(
        &mut ada,
        &to32(&x64),
        &base,
        &target,
        n,
        150,
        0.5,
        &mut pre,
        &mut post,
    );
    let (first, last) = (losses[0], *losses.last().unwrap());
    eprintln!("loss {first} -> {last}, rank {}", ada.active_rank());
    assert!(last * 5.0 < first, "loss {first} -> {last}");
    assert!(ada.active_rank() <= 4, "active rank {}", ada.active_rank());
}
