//! IEC (IR-QLoRA's information elastic connection, docs/METHODS.md#ir-qlora-iec): f64 finite
//! differences of the scalar reference against a loss written out independently (inputs, `A`, `B`,
//! `β_A`, `β_B`; no dropout and a fixed mask), the f32 adapter against the reference, init, the
//! merge identity and its export, refusal of a rank that does not divide, and a short fit.

use crate::adapters_support;

use crate::adapters_support::{close, no_post, no_pre, run, sgd, xwt};
use crate::backend_grad_fd::{assert_grad, fd_grad, random64, to32, to64};
use edgetune::adapters::iec::{Iec, backward_ref, forward_ref};
use edgetune::adapters::lora::BranchDims;
use edgetune::adapters::{Adapter, Export, LoraConfig, Pass};

const DM: BranchDims = adapters_support::FD_DIMS;

/// `L = Σ R ⊙ ΔY`, written from docs/METHODS.md#ir-qlora-iec with explicit loops: `Z = X_d·Aᵀ +
/// β_A·Pool(X)`, `ΔY = s·(Z·Bᵀ + β_B·Rep(Z))`.
#[allow(clippy::too_many_arguments)]
fn loss(
    s: f64,
    x: &[f64],
    a: &[f64],
    b: &[f64],
    ba: f64,
    bb: f64,
    mask: Option<&[f64]>,
    rw: &[f64],
) -> f64 {
    let BranchDims { n, in_f, out_f, r } = DM;
    let (g_in, g_out) = (in_f / r, out_f / r);
    let mut total = 0.0;
    for t in 0..n {
        let mut z = vec![0.0; r];
        for (j, zj) in z.iter_mut().enumerate() {
            for i in 0..in_f {
                *zj += a[j * in_f + i] * x[t * in_f + i] * mask.map_or(1.0, |m| m[t * in_f + i]);
            }
            let mut pool = 0.0;
            for k in 0..g_in {
                pool += x[t * in_f + j * g_in + k];
            }
            *zj += ba * pool / g_in as f64;
        }
        for o in 0..out_f {
            let mut u = bb * z[o / g_out];
            for j in 0..r {
                u += b[o * r + j] * z[j];
            }
            total += rw[t * out_f + o] * s * u;
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
    let (ba, bb) = (0.7, -0.4);
    let rw = random64(n * out_f, 1.0, 4);
    let (y, _) = forward_ref::<f64>(DM, s, &x, &a, &b, ba, bb, mask);
    let direct: f64 = y.iter().zip(&rw).map(|(p, q)| p * q).sum();
    let l0 = loss(s, &x, &a, &b, ba, bb, mask, &rw);
    assert!(
        (direct - l0).abs() < 1e-10 * l0.abs().max(1.0),
        "{direct} vs {l0}"
    );
    let (dx, da, db, dba, dbb) = backward_ref::<f64>(DM, s, &x, &a, &b, ba, bb, mask, &rw);
    let l = |x: &[f64], a: &[f64], b: &[f64], ba: f64, bb: f64| loss(s, x, a, b, ba, bb, mask, &rw);
    assert_grad(&dx, &fd_grad(&x, |v| l(v, &a, &b, ba, bb)), 1e-6, "dX");
    assert_grad(&da, &fd_grad(&a, |v| l(&x, v, &b, ba, bb)), 1e-6, "dA");
    assert_grad(&db, &fd_grad(&b, |v| l(&x, &a, v, ba, bb)), 1e-6, "dB");
    let fa = fd_grad(&[ba], |v| l(&x, &a, &b, v[0], bb));
    let fb = fd_grad(&[bb], |v| l(&x, &a, &b, ba, v[0]));
    assert_grad(&[dba, dbb], &[fa[0], fb[0]], 1e-6, "dβ");
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
    let iec = Iec::new(DM.in_f, DM.out_f, &cfg, 9).unwrap();
    let pass = Pass {
        n: DM.n,
        training: true,
        seed: 77,
    };
    let mask = to64(&iec.dropout_mask(pass).unwrap());
    let zeros = mask.iter().filter(|&&v| v == 0.0).count();
    assert!(zeros > 0 && zeros < mask.len());
    fd_check(Some(&mask));
}

fn parity(dropout: f32) {
    let dm = BranchDims {
        n: 19,
        in_f: 48,
        out_f: 36,
        r: 6,
    };
    let cfg = LoraConfig {
        rank: dm.r,
        alpha: 12.0,
        dropout,
        ..LoraConfig::default()
    };
    let mut iec = Iec::new(dm.in_f, dm.out_f, &cfg, 5).unwrap();
    iec.param_mut(1)
        .unwrap()
        .copy_from_slice(&to32(&random64(dm.out_f * dm.r, 0.5, 11)));
    iec.set_betas(0.6, -0.3);
    let pass = Pass {
        n: dm.n,
        training: true,
        seed: 3,
    };
    let x = to32(&random64(dm.n * dm.in_f, 1.0, 12));
    let y0 = to32(&random64(dm.n * dm.out_f, 1.0, 13));
    let g = to32(&random64(dm.n * dm.out_f, 1.0, 14));
    let dx0 = to32(&random64(dm.n * dm.in_f, 1.0, 15));
    let out = run(&iec, pass, &x, &y0, &g, &dx0);
    let mask = iec.dropout_mask(pass).map(|m| to64(&m));
    let (a, b) = (to64(iec.param(0).unwrap()), to64(iec.param(1).unwrap()));
    let s = iec.scale() as f64;
    let (ba, bb) = (0.6f32 as f64, -0.3f32 as f64);
    let (x64, g64) = (to64(&x), to64(&g));
    let (y, _) = forward_ref::<f64>(dm, s, &x64, &a, &b, ba, bb, mask.as_deref());
    let (dx, da, db, dba, dbb) =
        backward_ref::<f64>(dm, s, &x64, &a, &b, ba, bb, mask.as_deref(), &g64);
    close(&out.y, Some(&y0), &y, 1e-5, "y");
    close(&out.dx, Some(&dx0), &dx, 1e-5, "dx");
    let na = dm.r * dm.in_f;
    let nb = dm.out_f * dm.r;
    close(&out.grads[..na], None, &da, 1e-5, "dA");
    close(&out.grads[na..na + nb], None, &db, 1e-5, "dB");
    close(&out.grads[na + nb..], None, &[dba, dbb], 1e-4, "dβ");
}

#[test]
fn f32_adapter_matches_reference() {
    parity(0.0);
}

#[test]
fn f32_adapter_with_dropout_matches_reference() {
    parity(0.2);
}

#[test]
fn init_merge_export_and_rank_check() {
    let (inf, outf, r) = (16, 24, 4);
    let cfg = LoraConfig {
        rank: r,
        alpha: 8.0,
        ..LoraConfig::default()
    };
    let mut iec = Iec::new(inf, outf, &cfg, 1).unwrap();
    // Init: ΔY = 0 (B = 0, β = 0), A within the kaiming bound; dβ_B is live at step 0.
    assert_eq!(iec.betas(), (0.0, 0.0));
    assert!(iec.param(1).unwrap().iter().all(|&v| v == 0.0));
    let bound = 1.0 / (inf as f32).sqrt();
    assert!(iec.param(0).unwrap().iter().all(|&v| v.abs() <= bound));
    let names: Vec<_> = iec.params().iter().map(|p| p.name).collect();
    assert_eq!(names, ["lora_A", "lora_B", "lora_A_scale", "lora_B_scale"]);

    // Merge identity: x·ΔWᵀ equals the branch output, for nonzero B and β.
    iec.param_mut(1)
        .unwrap()
        .copy_from_slice(&to32(&random64(outf * r, 0.5, 2)));
    iec.set_betas(0.8, 1.1);
    let n = 3;
    let pass = Pass {
        n,
        training: false,
        seed: 0,
    };
    let x = to32(&random64(n * inf, 1.0, 3));
    let out = run(
        &iec,
        pass,
        &x,
        &vec![0.0; n * outf],
        &vec![0.0; n * outf],
        &vec![0.0; n * inf],
    );
    let mut dw = vec![0.0f32; outf * inf];
    iec.delta_weight(&mut dw).unwrap();
    let merged = xwt(&to64(&x), &to64(&dw), n, inf, outf);
    close(&out.y, None, &merged, 1e-5, "merged");
    let Export::LowRank { a, b, rank, scale } = iec.export() else {
        panic!("IEC exports as a plain LoRA");
    };
    assert_eq!(rank, r);
    let ba = adapters_support::matmul(&to64(&b), &to64(&a), outf, r, inf);
    let want: Vec<f64> = ba.iter().map(|v| v * scale as f64).collect();
    close(&dw, None, &want, 1e-5, "export");

    let e = Iec::new(10, 24, &cfg, 1).unwrap_err();
    assert!(e.to_string().contains("divide"), "{e}");
}

#[test]
fn sgd_fits_a_target_and_the_betas_move() {
    let (inf, outf, r, n) = (32, 16, 4, 24);
    let cfg = LoraConfig {
        rank: r,
        alpha: 4.0,
        ..LoraConfig::default()
    };
    let mut iec = Iec::new(inf, outf, &cfg, 7).unwrap();
    let x = to32(&random64(n * inf, 1.0, 1));
    // The target is a pooled-shortcut change (what β_A, β_B express) plus a low-rank one.
    let w = random64(outf * inf, 0.3, 2);
    let target = to32(&xwt(&to64(&x), &w, n, inf, outf));
    let base = vec![0.0f32; n * outf];
    let losses = sgd(
        &mut iec,
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
    eprintln!(
        "IEC fit: loss {first:.4} → {last:.4}, betas {:?}",
        iec.betas()
    );
    assert!(last < 0.7 * first, "{first} → {last}");
    assert!(iec.betas().1 != 0.0);
}
