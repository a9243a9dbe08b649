//! LoRA adapter: f64 finite-difference checks of the branch gradients
//! (docs/METHODS.md#gradient-checks), parity of the f32 adapter with the generic reference, init,
//! scaling, merge and a short training run.

use crate::adapters_support;
use edgetune::adapters::lora::{BranchDims, backward_ref, forward_ref};
use edgetune::adapters::{Adapter, Export, Group, Lora, LoraConfig, Pass, Target};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn rand_f64(n: usize, scale: f64, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

const DM: BranchDims = adapters_support::FD_DIMS;

/// The loss `L = Σ R ⊙ Y` with the branch written out as loops, independently of the crate:
/// `Y[t, o] = s · Σ_j B[o, j] · Σ_i A[j, i] · X[t, i] · mask[t, i]`.
fn loss(s: f64, x: &[f64], a: &[f64], b: &[f64], mask: Option<&[f64]>, rw: &[f64]) -> f64 {
    let BranchDims { n, in_f, out_f, r } = DM;
    let mut total = 0.0;
    for t in 0..n {
        for o in 0..out_f {
            let mut y = 0.0;
            for j in 0..r {
                let mut h = 0.0;
                for i in 0..in_f {
                    let m = mask.map_or(1.0, |m| m[t * in_f + i]);
                    h += a[j * in_f + i] * x[t * in_f + i] * m;
                }
                y += b[o * r + j] * h;
            }
            total += rw[t * out_f + o] * s * y;
        }
    }
    total
}

/// Central differences of `loss` w.r.t. every entry of `which` (0 = X, 1 = A, 2 = B) against
/// the analytic gradient, `|an − fd| ≤ 1e-6 · max(1, |fd|)`. Returns the worst relative error.
fn fd_check(mask: Option<&[f64]>) -> f64 {
    let BranchDims { n, in_f, out_f, r } = DM;
    let s = 1.7;
    let x = rand_f64(n * in_f, 1.0, 1);
    let a = rand_f64(r * in_f, 0.5, 2);
    let b = rand_f64(out_f * r, 0.5, 3); // nonzero B, so dA and dX are not trivially zero
    let rw = rand_f64(n * out_f, 1.0, 4);
    let (dx, da, db) = backward_ref::<f64>(DM, s, &x, &a, &b, mask, &rw);
    let eps = 1e-6;
    let mut worst: f64 = 0.0;
    for (which, an) in [(0, &dx), (1, &da), (2, &db)] {
        let mut vars = [x.clone(), a.clone(), b.clone()];
        for k in 0..an.len() {
            let v0 = vars[which][k];
            vars[which][k] = v0 + eps;
            let lp = loss(s, &vars[0], &vars[1], &vars[2], mask, &rw);
            vars[which][k] = v0 - eps;
            let lm = loss(s, &vars[0], &vars[1], &vars[2], mask, &rw);
            vars[which][k] = v0;
            let fd = (lp - lm) / (2.0 * eps);
            let err = (an[k] - fd).abs() / fd.abs().max(1.0);
            assert!(
                err <= 1e-6,
                "tensor {which} index {k}: {} vs fd {fd}",
                an[k]
            );
            worst = worst.max(err);
        }
    }
    worst
}

#[test]
fn branch_gradients_match_finite_differences_f64() {
    let worst = fd_check(None);
    eprintln!("no dropout: worst relative FD error {worst:e}");
}

#[test]
fn branch_gradients_with_fixed_dropout_mask_match_finite_differences_f64() {
    let cfg = LoraConfig {
        rank: DM.r,
        dropout: 0.3,
        ..LoraConfig::default()
    };
    let lora = Lora::new(DM.in_f, DM.out_f, &cfg, 9).unwrap();
    let pass = Pass {
        n: DM.n,
        training: true,
        seed: 77,
    };
    let mask: Vec<f64> = lora
        .dropout_mask(pass)
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    let zeros = mask.iter().filter(|&&v| v == 0.0).count();
    assert!(zeros > 0 && zeros < mask.len(), "mask {mask:?}");
    let worst = fd_check(Some(&mask));
    eprintln!("dropout 0.3: worst relative FD error {worst:e}");
}

/// The f32 adapter (backend GEMM, hashed dropout mask) against the generic reference in f64.
fn parity(dropout: f32, rslora: bool) {
    let dm = adapters_support::PARITY_DIMS;
    let cfg = LoraConfig {
        rank: dm.r,
        alpha: 12.0,
        rslora,
        dropout,
        ..LoraConfig::default()
    };
    let mut lora = Lora::new(dm.in_f, dm.out_f, &cfg, 5).unwrap();
    let b = to_f32(&rand_f64(dm.out_f * dm.r, 0.5, 11));
    lora.b_mut().copy_from_slice(&b);
    let pass = Pass {
        n: dm.n,
        training: true,
        seed: 3,
    };
    let x = to_f32(&rand_f64(dm.n * dm.in_f, 1.0, 12));
    let y0 = to_f32(&rand_f64(dm.n * dm.out_f, 1.0, 13));
    let g = to_f32(&rand_f64(dm.n * dm.out_f, 1.0, 14));
    let dx0 = to_f32(&rand_f64(dm.n * dm.in_f, 1.0, 15));
    let mut saved = vec![0.0; lora.saved_len(dm.n)];
    let mut scratch = vec![0.0; lora.scratch_len(dm.n)];
    let mut y = y0.clone();
    lora.forward(pass, &x, &mut y, &mut saved, &mut scratch)
        .unwrap();
    let mut dx = dx0.clone();
    let mut grads = vec![f32::NAN; lora.n_params()];
    lora.backward(pass, &x, &g, &saved, &mut scratch, &mut dx, &mut grads)
        .unwrap();

    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let mask = lora.dropout_mask(pass).map(|m| f64s(&m));
    let s = lora.scale() as f64;
    let (a, b, x, g) = (f64s(lora.a()), f64s(&b), f64s(&x), f64s(&g));
    let (dy, _) = forward_ref::<f64>(dm, s, &x, &a, &b, mask.as_deref());
    let (dxr, dar, dbr) = backward_ref::<f64>(dm, s, &x, &a, &b, mask.as_deref(), &g);
    // f32 sums of ≤ 70 terms of magnitude O(1): 1e-4 relative to max(1, |ref|) is ~10× the
    // worst-case accumulation error and far below any real mistake (a wrong term is O(0.1)).
    let close = |got: &[f32], base: Option<&[f32]>, want: &[f64], what: &str| {
        for (i, &w) in want.iter().enumerate() {
            let got = got[i] as f64 - base.map_or(0.0, |b| b[i] as f64);
            assert!(
                (got - w).abs() <= 1e-4 * w.abs().max(1.0),
                "{what}[{i}]: {got} vs {w}"
            );
        }
    };
    close(&y, Some(&y0), &dy, "dy");
    close(&dx, Some(&dx0), &dxr, "dx");
    let (ga, gb) = grads.split_at(dm.r * dm.in_f);
    close(ga, None, &dar, "dA");
    close(gb, None, &dbr, "dB");
}

#[test]
fn f32_adapter_matches_reference() {
    parity(0.0, false);
    parity(0.0, true);
    parity(0.25, false);
}

#[test]
fn inference_pass_has_no_dropout() {
    let cfg = LoraConfig {
        dropout: 0.5,
        ..LoraConfig::default()
    };
    let lora = Lora::new(16, 8, &cfg, 1).unwrap();
    let pass = Pass {
        n: 4,
        training: false,
        seed: 1,
    };
    assert!(lora.dropout_mask(pass).is_none());
    let train = Pass {
        training: true,
        ..pass
    };
    let m = lora.dropout_mask(train).unwrap();
    assert!(m.iter().all(|&v| v == 0.0 || v == 2.0));
    assert_eq!(
        m,
        lora.dropout_mask(train).unwrap(),
        "mask must be reproducible"
    );
    assert_ne!(
        m,
        lora.dropout_mask(Pass { seed: 2, ..train }).unwrap(),
        "another pass seed, another mask"
    );
}

#[test]
fn init_is_peft_kaiming_uniform_and_seeded() {
    let (inf, outf, r) = (300, 40, 16);
    let cfg = LoraConfig {
        rank: r,
        ..LoraConfig::default()
    };
    let l1 = Lora::new(inf, outf, &cfg, 42).unwrap();
    let bound = 1.0 / (inf as f32).sqrt();
    assert!(l1.a().iter().all(|&v| v.abs() <= bound));
    assert!(l1.b().iter().all(|&v| v == 0.0));
    // U(−b, b): mean 0 (sd b/√(3n)), variance b²/3; 4800 draws, loose 5σ-ish bounds.
    let n = l1.a().len() as f64;
    let mean = l1.a().iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = l1.a().iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n;
    let b2 = (bound as f64).powi(2);
    assert!(
        mean.abs() < 5.0 * (bound as f64) / (3.0 * n).sqrt(),
        "mean {mean}"
    );
    assert!(
        (var / (b2 / 3.0) - 1.0).abs() < 0.1,
        "var {var} vs {}",
        b2 / 3.0
    );
    let l2 = Lora::new(inf, outf, &cfg, 42).unwrap();
    assert_eq!(l1.a(), l2.a());
    let l3 = Lora::new(inf, outf, &cfg, 43).unwrap();
    assert_ne!(l1.a(), l3.a());
    let mut l4 = l3.clone();
    l4.init(42);
    assert_eq!(l4.a(), l1.a());
}

#[test]
fn rslora_and_lora_scaling() {
    let mut cfg = LoraConfig {
        rank: 16,
        alpha: 32.0,
        ..LoraConfig::default()
    };
    assert_eq!(cfg.scale(), 2.0);
    cfg.rslora = true;
    assert_eq!(cfg.scale(), 8.0);
    assert_eq!(Lora::new(4, 4, &cfg, 0).unwrap().scale(), 8.0);
    // PEFT defaults: r = 8, alpha = 8 → s = 1; all seven targets.
    let def = LoraConfig::default();
    assert_eq!((def.rank, def.scale(), def.dropout), (8, 1.0, 0.0));
    assert_eq!(def.targets, Target::ALL.to_vec());
}

#[test]
fn config_validation_and_target_names() {
    for bad in [
        LoraConfig {
            rank: 0,
            ..LoraConfig::default()
        },
        LoraConfig {
            dropout: 1.0,
            ..LoraConfig::default()
        },
        LoraConfig {
            alpha: f32::NAN,
            ..LoraConfig::default()
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
        assert!(Lora::new(4, 4, &bad, 0).is_err());
    }
    assert_eq!("attn_q".parse::<Target>().unwrap(), Target::AttnQ);
    assert_eq!("o_proj".parse::<Target>().unwrap(), Target::AttnOutput);
    assert_eq!("ffn_down".parse::<Target>().unwrap(), Target::FfnDown);
    assert_eq!("gate_proj".parse::<Target>().unwrap(), Target::FfnGate);
    assert!("attn_qkv".parse::<Target>().is_err());
    for t in Target::ALL {
        assert_eq!(t.gguf_stem().parse::<Target>().unwrap(), t);
        assert_eq!(t.peft_name().parse::<Target>().unwrap(), t);
    }
}

#[test]
fn params_and_lora_plus_groups() {
    let lora = Lora::new(10, 6, &LoraConfig::default(), 0).unwrap();
    let p = lora.params();
    assert_eq!(
        (p[0].name, p[0].shape.clone(), p[0].group),
        ("lora_A", vec![8, 10], Group::A)
    );
    assert_eq!(
        (p[1].name, p[1].shape.clone(), p[1].group),
        ("lora_B", vec![6, 8], Group::B)
    );
    assert_eq!(p[0].spec().group, edgetune::optim::LORA_PLUS_GROUP_A);
    assert_eq!(p[1].spec().group, edgetune::optim::LORA_PLUS_GROUP_B);
    assert_eq!(lora.n_params(), 8 * 16);
    let ws = lora.workspace();
    assert_eq!(ws.bytes(10), (4 * 10 * 8, 4 * 10 * 8));
}

#[test]
fn delta_weight_merges_exactly() {
    let (n, inf, outf, r) = (7, 20, 9, 3);
    let cfg = LoraConfig {
        rank: r,
        alpha: 5.0,
        ..LoraConfig::default()
    };
    let mut lora = Lora::new(inf, outf, &cfg, 8).unwrap();
    lora.b_mut()
        .copy_from_slice(&to_f32(&rand_f64(outf * r, 1.0, 21)));
    let s = lora.scale() as f64;
    let mut dw = vec![0.0f32; outf * inf];
    lora.delta_weight(&mut dw).unwrap();
    let (a, b) = (lora.a(), lora.b());
    for o in 0..outf {
        for i in 0..inf {
            let want: f64 = s
                * (0..r)
                    .map(|j| b[o * r + j] as f64 * a[j * inf + i] as f64)
                    .sum::<f64>();
            assert!((dw[o * inf + i] as f64 - want).abs() < 1e-5, "({o},{i})");
        }
    }
    assert!(matches!(lora.export(), Export::LowRank { rank: 3, .. }));
    // y_base + branch(x) == x·(W + ΔW)ᵀ.
    let w = rand_f64(outf * inf, 1.0, 22);
    let x = to_f32(&rand_f64(n * inf, 1.0, 23));
    let mut y: Vec<f32> = (0..n * outf)
        .map(|k| {
            let (t, o) = (k / outf, k % outf);
            (0..inf)
                .map(|i| x[t * inf + i] as f64 * w[o * inf + i])
                .sum::<f64>() as f32
        })
        .collect();
    let pass = Pass {
        n,
        training: true,
        seed: 0,
    };
    let mut saved = vec![0.0; lora.saved_len(n)];
    let mut scratch = vec![0.0; lora.scratch_len(n)];
    lora.forward(pass, &x, &mut y, &mut saved, &mut scratch)
        .unwrap();
    for t in 0..n {
        for o in 0..outf {
            let want: f64 = (0..inf)
                .map(|i| x[t * inf + i] as f64 * (w[o * inf + i] + dw[o * inf + i] as f64))
                .sum();
            assert!((y[t * outf + o] as f64 - want).abs() < 1e-4, "({t},{o})");
        }
    }
}

#[test]
fn sgd_on_lora_recovers_a_hidden_low_rank_change() {
    let (n, inf, outf, r) = (64, 32, 24, 4);
    let cfg = LoraConfig {
        rank: r,
        alpha: r as f32,
        ..LoraConfig::default()
    };
    let mut lora = Lora::new(inf, outf, &cfg, 1).unwrap();
    let w = rand_f64(outf * inf, 0.3, 30);
    let (bs, as_) = (rand_f64(outf * r, 0.5, 31), rand_f64(r * inf, 0.5, 32));
    let x = to_f32(&rand_f64(n * inf, 1.0, 33));
    // Targets T = X·(W + B*·A*)ᵀ; base output X·Wᵀ.
    let (mut base, mut target) = (vec![0.0f32; n * outf], vec![0.0f32; n * outf]);
    for t in 0..n {
        for o in 0..outf {
            let mut yb = 0.0;
            let mut yt = 0.0;
            for i in 0..inf {
                let dws: f64 = (0..r).map(|j| bs[o * r + j] * as_[j * inf + i]).sum();
                yb += x[t * inf + i] as f64 * w[o * inf + i];
                yt += x[t * inf + i] as f64 * (w[o * inf + i] + dws);
            }
            base[t * outf + o] = yb as f32;
            target[t * outf + o] = yt as f32;
        }
    }
    let pass = Pass {
        n,
        training: true,
        seed: 0,
    };
    let mut saved = vec![0.0; lora.saved_len(n)];
    let mut scratch = vec![0.0; lora.scratch_len(n)];
    let mut grads = vec![0.0; lora.n_params()];
    let mut dx = vec![0.0; n * inf];
    let mut g = vec![0.0; n * outf];
    let lr = 0.5;
    let mut losses = Vec::new();
    for _ in 0..200 {
        let mut y = base.clone();
        lora.forward(pass, &x, &mut y, &mut saved, &mut scratch)
            .unwrap();
        // L = ½/N Σ (Y − T)², G = (Y − T)/N.
        let mut l = 0.0f64;
        for k in 0..n * outf {
            let e = y[k] - target[k];
            l += 0.5 * (e as f64).powi(2) / n as f64;
            g[k] = e / n as f32;
        }
        losses.push(l);
        lora.backward(pass, &x, &g, &saved, &mut scratch, &mut dx, &mut grads)
            .unwrap();
        let (ga, gb) = grads.split_at(r * inf);
        for (p, gr) in lora.a_mut().iter_mut().zip(ga) {
            *p -= lr * gr;
        }
        for (p, gr) in lora.b_mut().iter_mut().zip(gb) {
            *p -= lr * gr;
        }
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    eprintln!("loss {first} -> {last}");
    assert!(last * 10.0 < first, "loss {first} -> {last}");
}
