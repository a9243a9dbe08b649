//! DoRA adapter (docs/METHODS.md#dora): f64 finite differences of the detached backward (inputs,
//! `A`, `B`, `m`), the f32 adapter against the generic reference (dense and quantized base),
//! the norm identity of docs/METHODS.md#dora, PEFT init, the merged change, and a short fit.

use crate::adapters_support;
use crate::adapters_support::{close, matmul, no_post, no_pre, run, sgd, xwt};
use crate::backend_grad_fd::{assert_grad, fd_grad, random64, to32, to64};
use edgetune::adapters::base::BaseWeight;
use edgetune::adapters::dora::{Dora, backward_ref, forward_ref};
use edgetune::adapters::lora::BranchDims;
use edgetune::adapters::{Adapter, Export, Group, LoraConfig, Pass};
use edgetune::quant::matmul::QuantMatrix;
use edgetune::quant::{self, GgmlType};

const DM: BranchDims = adapters_support::FD_DIMS;

/// `L = Σ R ⊙ ΔY` written as loops, with the norms `n` given (detached):
/// `ΔY[t,o] = (c_o − 1)·Z0[t,o] + c_o·s·Σ_j B[o,j]·Σ_i A[j,i]·Xd[t,i]`, `c = m/n`,
/// `Z0[t,o] = Σ_i W[o,i]·Xd[t,i]`, `Xd = X ⊙ mask`.
#[allow(clippy::too_many_arguments)]
fn loss(
    s: f64,
    x: &[f64],
    w: &[f64],
    a: &[f64],
    b: &[f64],
    m: &[f64],
    nrm: &[f64],
    mask: Option<&[f64]>,
    rw: &[f64],
) -> f64 {
    let BranchDims { n, in_f, out_f, r } = DM;
    let mut total = 0.0;
    for t in 0..n {
        let xd: Vec<f64> = (0..in_f)
            .map(|i| x[t * in_f + i] * mask.map_or(1.0, |m| m[t * in_f + i]))
            .collect();
        for o in 0..out_f {
            let c = m[o] / nrm[o];
            let z0: f64 = (0..in_f).map(|i| w[o * in_f + i] * xd[i]).sum();
            let mut lo = 0.0;
            for j in 0..r {
                let h: f64 = (0..in_f).map(|i| a[j * in_f + i] * xd[i]).sum();
                lo += b[o * r + j] * h;
            }
            total += rw[t * out_f + o] * ((c - 1.0) * z0 + c * s * lo);
        }
    }
    total
}

/// `‖W + s·B·A‖` per row, as loops.
fn norms(s: f64, w: &[f64], a: &[f64], b: &[f64]) -> Vec<f64> {
    let BranchDims { in_f, out_f, r, .. } = DM;
    let ba = matmul(b, a, out_f, r, in_f);
    (0..out_f)
        .map(|o| {
            (0..in_f)
                .map(|i| (w[o * in_f + i] + s * ba[o * in_f + i]).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .collect()
}

fn fd_check(mask: Option<&[f64]>) {
    let BranchDims { n, in_f, out_f, r } = DM;
    let s = 1.7;
    let x = random64(n * in_f, 1.0, 1);
    let w = random64(out_f * in_f, 0.5, 2);
    let a = random64(r * in_f, 0.5, 3);
    let b = random64(out_f * r, 0.5, 4);
    let m: Vec<f64> = random64(out_f, 0.5, 5).iter().map(|v| 1.0 + v).collect();
    let rw = random64(n * out_f, 1.0, 6);
    let nrm = norms(s, &w, &a, &b);
    let (dx, da, db, dm) = backward_ref::<f64>(DM, s, &x, &w, &a, &b, &m, mask, &rw);
    // The reference's forward is the same function as the loop loss.
    let y = forward_ref::<f64>(DM, s, &x, &w, &a, &b, &m, mask);
    let direct: f64 = y.iter().zip(&rw).map(|(p, q)| p * q).sum();
    let l0 = loss(s, &x, &w, &a, &b, &m, &nrm, mask, &rw);
    assert!(
        (direct - l0).abs() < 1e-10 * l0.abs().max(1.0),
        "{direct} vs {l0}"
    );
    let tol = 1e-6;
    let fx = fd_grad(&x, |v| loss(s, v, &w, &a, &b, &m, &nrm, mask, &rw));
    assert_grad(&dx, &fx, tol, "dX");
    let fa = fd_grad(&a, |v| loss(s, &x, &w, v, &b, &m, &nrm, mask, &rw));
    assert_grad(&da, &fa, tol, "dA (detached norm)");
    let fb = fd_grad(&b, |v| loss(s, &x, &w, &a, v, &m, &nrm, mask, &rw));
    assert_grad(&db, &fb, tol, "dB (detached norm)");
    let fm = fd_grad(&m, |v| loss(s, &x, &w, &a, &b, v, &nrm, mask, &rw));
    assert_grad(&dm, &fm, tol, "dm");
}

#[test]
fn detached_gradients_match_finite_differences_f64() {
    fd_check(None);
}

#[test]
fn detached_gradients_with_fixed_dropout_mask_match_finite_differences_f64() {
    let cfg = LoraConfig {
        rank: DM.r,
        dropout: 0.3,
        ..LoraConfig::default()
    };
    let w = BaseWeight::dense(
        DM.out_f,
        DM.in_f,
        to32(&random64(DM.out_f * DM.in_f, 1.0, 7)),
    )
    .unwrap();
    let dora = Dora::new(&cfg, w, 9).unwrap();
    let pass = Pass {
        n: DM.n,
        training: true,
        seed: 77,
    };
    let mask = to64(&dora.dropout_mask(pass).unwrap());
    let zeros = mask.iter().filter(|&&v| v == 0.0).count();
    assert!(zeros > 0 && zeros < mask.len());
    fd_check(Some(&mask));
}

/// A DoRA with random `B`, `m` on `w`; returns it and its base as f64.
fn trained(w: BaseWeight, cfg: &LoraConfig, seed: u64) -> Dora {
    let (out_f, r) = (w.rows(), cfg.rank);
    let mut dora = Dora::new(cfg, w, seed).unwrap();
    dora.b_mut()
        .copy_from_slice(&to32(&random64(out_f * r, 0.5, seed + 1)));
    let m: Vec<f32> = dora
        .magnitude()
        .iter()
        .zip(random64(out_f, 0.3, seed + 2))
        .map(|(&v, d)| v * (1.0 + d as f32))
        .collect();
    dora.magnitude_mut().copy_from_slice(&m);
    dora
}

fn parity(dropout: f32, rslora: bool) {
    let dm = adapters_support::PARITY_DIMS;
    let cfg = LoraConfig {
        rank: dm.r,
        alpha: 12.0,
        rslora,
        dropout,
        ..LoraConfig::default()
    };
    let w64 = random64(dm.out_f * dm.in_f, 0.3, 20);
    let dora = trained(
        BaseWeight::dense(dm.out_f, dm.in_f, to32(&w64)).unwrap(),
        &cfg,
        21,
    );
    let pass = Pass {
        n: dm.n,
        training: true,
        seed: 3,
    };
    let x = to32(&random64(dm.n * dm.in_f, 1.0, 22));
    let w = to64(&to32(&w64));
    // y on entry is the base output X·Ŵᵀ (the trait's contract).
    let y0 = to32(&xwt(&to64(&x), &w, dm.n, dm.in_f, dm.out_f));
    let g = to32(&random64(dm.n * dm.out_f, 1.0, 23));
    let dx0 = to32(&random64(dm.n * dm.in_f, 1.0, 24));
    let out = run(&dora, pass, &x, &y0, &g, &dx0);
    let mask = dora.dropout_mask(pass).map(|m| to64(&m));
    let (s, xs, a, b, m, gs) = (
        dora.scale() as f64,
        to64(&x),
        to64(dora.a()),
        to64(dora.b()),
        to64(dora.magnitude()),
        to64(&g),
    );
    let dy = forward_ref::<f64>(dm, s, &xs, &w, &a, &b, &m, mask.as_deref());
    let (dxr, dar, dbr, dmr) =
        backward_ref::<f64>(dm, s, &xs, &w, &a, &b, &m, mask.as_deref(), &gs);
    // f32 sums of ≤ 70 O(1) terms: 2e-4 relative is far above rounding, far below a real error.
    close(&out.y, Some(&y0), &dy, 2e-4, "dy");
    close(&out.dx, Some(&dx0), &dxr, 2e-4, "dx");
    let (ga, rest) = out.grads.split_at(dm.r * dm.in_f);
    let (gb, gm) = rest.split_at(dm.out_f * dm.r);
    close(ga, None, &dar, 2e-4, "dA");
    close(gb, None, &dbr, 2e-4, "dB");
    close(gm, None, &dmr, 2e-4, "dm");
}

#[test]
fn f32_adapter_matches_reference() {
    parity(0.0, false);
    parity(0.0, true);
    parity(0.25, false);
}

#[test]
fn norms_without_materialising_match_dense_norms() {
    let cfg = LoraConfig {
        rank: DM.r,
        alpha: 3.0,
        ..LoraConfig::default()
    };
    let w64 = random64(DM.out_f * DM.in_f, 1.0, 30);
    let dora = trained(
        BaseWeight::dense(DM.out_f, DM.in_f, to32(&w64)).unwrap(),
        &cfg,
        31,
    );
    let want = norms(
        dora.scale() as f64,
        &to64(&to32(&w64)),
        &to64(dora.a()),
        &to64(dora.b()),
    );
    let got = dora.weight_norms().unwrap();
    for (o, (&g, &w)) in got.iter().zip(&want).enumerate() {
        assert!((g as f64 - w).abs() <= 1e-5 * w, "row {o}: {g} vs {w}");
    }
}

#[test]
fn init_is_peft_and_the_layer_starts_as_the_base() {
    let (n, in_f, out_f, r) = (6, 40, 24, 8);
    let cfg = LoraConfig {
        rank: r,
        ..LoraConfig::default()
    };
    let w64 = random64(out_f * in_f, 1.0, 40);
    let dora = Dora::new(
        &cfg,
        BaseWeight::dense(out_f, in_f, to32(&w64)).unwrap(),
        41,
    )
    .unwrap();
    let w = to64(&to32(&w64));
    for o in 0..out_f {
        let want: f64 = (0..in_f)
            .map(|i| w[o * in_f + i].powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            (dora.magnitude()[o] as f64 - want).abs() < 1e-6 * want,
            "m[{o}]"
        );
    }
    let bound = 1.0 / (in_f as f32).sqrt();
    assert!(dora.a().iter().all(|&v| v.abs() <= bound));
    assert!(dora.a().iter().any(|&v| v != 0.0));
    assert!(dora.b().iter().all(|&v| v == 0.0));
    // c = 1 at init: the branch adds nothing.
    let x = to32(&random64(n * in_f, 1.0, 42));
    let y0 = to32(&xwt(&to64(&x), &w, n, in_f, out_f));
    let pass = Pass {
        n,
        training: true,
        seed: 1,
    };
    let out = run(
        &dora,
        pass,
        &x,
        &y0,
        &vec![0.0; n * out_f],
        &vec![0.0; n * in_f],
    );
    close(
        &out.y,
        Some(&y0),
        &vec![0.0; n * out_f],
        1e-5,
        "init branch",
    );
    let p = dora.params();
    assert_eq!(
        p.iter().map(|p| (p.name, p.group)).collect::<Vec<_>>(),
        [
            ("lora_A", Group::A),
            ("lora_B", Group::B),
            ("lora_magnitude_vector", Group::B)
        ]
    );
    assert_eq!(dora.n_params(), r * in_f + out_f * r + out_f);
    assert_eq!(dora.export(), Export::MergeOnly);
    assert_eq!(
        dora.extra_bytes(),
        4 * out_f * in_f + 8 * out_f + 4 * (r * out_f + r * r + 2 * out_f)
    );
}

#[test]
fn quantized_base_matches_its_dequantized_copy() {
    let (n, in_f, out_f, r) = (7, 64, 20, 4);
    let cfg = LoraConfig {
        rank: r,
        alpha: 8.0,
        dropout: 0.2,
        ..LoraConfig::default()
    };
    let w = to32(&random64(out_f * in_f, 1.0, 50));
    let ty = GgmlType::Q8_0;
    let mut bytes = vec![0u8; ty.bytes_for((out_f * in_f) as u64).unwrap() as usize];
    quant::quantize(ty, &w, &mut bytes).unwrap();
    let qm = QuantMatrix::new(ty, out_f, in_f, &bytes).unwrap();
    let quant_base = BaseWeight::quant(&qm).unwrap();
    assert_eq!(quant_base.bytes(), bytes.len());
    let dense_base = BaseWeight::dense(out_f, in_f, quant_base.to_dense().unwrap()).unwrap();
    let dq = trained(quant_base, &cfg, 51);
    let dd = trained(dense_base, &cfg, 51);
    let x = to32(&random64(n * in_f, 1.0, 52));
    let y0 = to32(&xwt(
        &to64(&x),
        &to64(&dd.base().to_dense().unwrap()),
        n,
        in_f,
        out_f,
    ));
    let g = to32(&random64(n * out_f, 1.0, 53));
    let dx0 = vec![0.0; n * in_f];
    for training in [true, false] {
        let pass = Pass {
            n,
            training,
            seed: 5,
        };
        let a = run(&dq, pass, &x, &y0, &g, &dx0);
        let b = run(&dd, pass, &x, &y0, &g, &dx0);
        // ≥ 4 rows (tokens, and the r rows of A for the norms): the quantized kernel
        // dequantizes panels of Ŵ and runs f32 tiles, so only the summation order differs.
        close(&a.y, None, &to64(&b.y), 1e-4, "y");
        close(&a.dx, None, &to64(&b.dx), 1e-4, "dx");
        close(&a.grads, None, &to64(&b.grads), 1e-4, "grads");
    }
}

#[test]
fn delta_weight_is_the_merged_change() {
    let (n, in_f, out_f, r) = (4, 16, 10, 3);
    let cfg = LoraConfig {
        rank: r,
        alpha: 5.0,
        ..LoraConfig::default()
    };
    let w64 = to64(&to32(&random64(out_f * in_f, 1.0, 60)));
    let dora = trained(
        BaseWeight::dense(out_f, in_f, to32(&w64)).unwrap(),
        &cfg,
        61,
    );
    let mut dw = vec![0.0f32; out_f * in_f];
    dora.delta_weight(&mut dw).unwrap();
    // W_merged = diag(m/n)·(W + s·B·A), formed independently.
    let s = dora.scale() as f64;
    let ba = matmul(&to64(dora.b()), &to64(dora.a()), out_f, r, in_f);
    for o in 0..out_f {
        let row: Vec<f64> = (0..in_f)
            .map(|i| w64[o * in_f + i] + s * ba[o * in_f + i])
            .collect();
        let nrm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        let c = dora.magnitude()[o] as f64 / nrm;
        for i in 0..in_f {
            let want = c * row[i] - w64[o * in_f + i];
            assert!((dw[o * in_f + i] as f64 - want).abs() < 1e-5, "({o},{i})");
        }
    }
    // And the forward equals x·(W + ΔW)ᵀ.
    let x = to32(&random64(n * in_f, 1.0, 62));
    let y0 = to32(&xwt(&to64(&x), &w64, n, in_f, out_f));
    let pass = Pass {
        n,
        training: false,
        seed: 0,
    };
    let out = run(
        &dora,
        pass,
        &x,
        &y0,
        &vec![0.0; n * out_f],
        &vec![0.0; n * in_f],
    );
    let merged: Vec<f64> = w64.iter().zip(&dw).map(|(a, &b)| a + b as f64).collect();
    close(
        &out.y,
        None,
        &xwt(&to64(&x), &merged, n, in_f, out_f),
        1e-4,
        "merged forward",
    );
}

#[test]
fn sgd_on_dora_fits_a_rescaled_low_rank_change() {
    let (n, in_f, out_f, r) = (64, 24, 16, 4);
    let cfg = LoraConfig {
        rank: r,
        alpha: r as f32,
        ..LoraConfig::default()
    };
    let w64 = to64(&to32(&random64(out_f * in_f, 0.3, 70)));
    let mut dora = Dora::new(
        &cfg,
        BaseWeight::dense(out_f, in_f, to32(&w64)).unwrap(),
        71,
    )
    .unwrap();
    // Target: diag(1 + δ)·(W + B*·A*).
    let ba = matmul(
        &random64(out_f * r, 0.3, 72),
        &random64(r * in_f, 0.3, 73),
        out_f,
        r,
        in_f,
    );
    let scale = random64(out_f, 0.3, 74);
    let wt: Vec<f64> = (0..out_f * in_f)
        .map(|k| (1.0 + scale[k / in_f]) * (w64[k] + ba[k]))
        .collect();
    let x64 = random64(n * in_f, 1.0, 75);
    let base = to32(&xwt(&x64, &w64, n, in_f, out_f));
    let target = to32(&xwt(&x64, &wt, n, in_f, out_f));
    let losses = sgd(
        &mut dora,
        &to32(&x64),
        &base,
        &target,
        n,
        60,
        0.5,
        &mut no_pre,
        &mut no_post,
    );
    let (first, last) = (losses[0], *losses.last().unwrap());
    eprintln!("loss {first} -> {last}");
    assert!(last * 5.0 < first, "loss {first} -> {last}");
}
