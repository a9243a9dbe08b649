//! HiRA (docs/METHODS.md#hira): f64 finite differences (inputs, `A`, `B`), the tiled f32 adapter
//! against the dense reference (several tiles, dense and quantized base), PEFT init, merge and
//! a short fit of a Hadamard change.

use crate::adapters_support;
use crate::adapters_support::{close, matmul, no_post, no_pre, run, sgd, xwt};
use crate::backend_grad_fd::{assert_grad, fd_grad, random64, to32, to64};
use edgetune::adapters::base::BaseWeight;
use edgetune::adapters::hira::{Hira, TILE, backward_ref, forward_ref};
use edgetune::adapters::lora::BranchDims;
use edgetune::adapters::{Adapter, Export, Group, LoraConfig, Pass};
use edgetune::quant::matmul::QuantMatrix;
use edgetune::quant::{self, GgmlType};

const DM: BranchDims = adapters_support::FD_DIMS;

/// `L = Σ R ⊙ ΔY`, `ΔY[t,o] = Σ_i Xd[t,i]·W[o,i]·Σ_j B[o,j]·A[j,i]`.
fn loss(x: &[f64], w: &[f64], a: &[f64], b: &[f64], mask: Option<&[f64]>, rw: &[f64]) -> f64 {
    let BranchDims { n, in_f, out_f, r } = DM;
    let mut total = 0.0;
    for t in 0..n {
        for o in 0..out_f {
            let mut y = 0.0;
            for i in 0..in_f {
                let ba: f64 = (0..r).map(|j| b[o * r + j] * a[j * in_f + i]).sum();
                let xd = x[t * in_f + i] * mask.map_or(1.0, |m| m[t * in_f + i]);
                y += xd * w[o * in_f + i] * ba;
            }
            total += rw[t * out_f + o] * y;
        }
    }
    total
}

fn fd_check(mask: Option<&[f64]>) {
    let BranchDims { n, in_f, out_f, r } = DM;
    let x = random64(n * in_f, 1.0, 1);
    let w = random64(out_f * in_f, 1.0, 2);
    let a = random64(r * in_f, 0.5, 3);
    let b = random64(out_f * r, 0.5, 4);
    let rw = random64(n * out_f, 1.0, 5);
    let y = forward_ref::<f64>(DM, &x, &w, &a, &b, mask);
    let direct: f64 = y.iter().zip(&rw).map(|(p, q)| p * q).sum();
    let l0 = loss(&x, &w, &a, &b, mask, &rw);
    assert!((direct - l0).abs() < 1e-10 * l0.abs().max(1.0));
    let (dx, da, db) = backward_ref::<f64>(DM, &x, &w, &a, &b, mask, &rw);
    assert_grad(
        &dx,
        &fd_grad(&x, |v| loss(v, &w, &a, &b, mask, &rw)),
        1e-6,
        "dX",
    );
    assert_grad(
        &da,
        &fd_grad(&a, |v| loss(&x, &w, v, &b, mask, &rw)),
        1e-6,
        "dA",
    );
    assert_grad(
        &db,
        &fd_grad(&b, |v| loss(&x, &w, &a, v, mask, &rw)),
        1e-6,
        "dB",
    );
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
    let base = BaseWeight::dense(DM.out_f, DM.in_f, vec![1.0; DM.out_f * DM.in_f]).unwrap();
    let h = Hira::new(&cfg, base, 6).unwrap();
    let mask = to64(
        &h.dropout_mask(Pass {
            n: DM.n,
            training: true,
            seed: 9,
        })
        .unwrap(),
    );
    assert!(mask.contains(&0.0) && mask.iter().any(|&v| v != 0.0));
    fd_check(Some(&mask));
}

fn with_random_b(h: &mut Hira, seed: u64) {
    let len = h.b().len();
    h.b_mut().copy_from_slice(&to32(&random64(len, 0.5, seed)));
}

fn parity(base: BaseWeight, dm: BranchDims, dropout: f32) {
    let cfg = LoraConfig {
        rank: dm.r,
        dropout,
        ..LoraConfig::default()
    };
    let w = to64(&base.to_dense().unwrap());
    let mut h = Hira::new(&cfg, base, 21).unwrap();
    with_random_b(&mut h, 22);
    let pass = Pass {
        n: dm.n,
        training: true,
        seed: 3,
    };
    let x = to32(&random64(dm.n * dm.in_f, 1.0, 23));
    let y0 = to32(&random64(dm.n * dm.out_f, 1.0, 24));
    let g = to32(&random64(dm.n * dm.out_f, 1.0, 25));
    let dx0 = to32(&random64(dm.n * dm.in_f, 1.0, 26));
    let out = run(&h, pass, &x, &y0, &g, &dx0);
    let mask = h.dropout_mask(pass).map(|m| to64(&m));
    let (xs, gs, a, b) = (to64(&x), to64(&g), to64(h.a()), to64(h.b()));
    let dy = forward_ref::<f64>(dm, &xs, &w, &a, &b, mask.as_deref());
    let (dxr, dar, dbr) = backward_ref::<f64>(dm, &xs, &w, &a, &b, mask.as_deref(), &gs);
    close(&out.y, Some(&y0), &dy, 2e-4, "dy");
    close(&out.dx, Some(&dx0), &dxr, 2e-4, "dx");
    let (ga, gb) = out.grads.split_at(dm.r * dm.in_f);
    close(ga, None, &dar, 2e-4, "dA");
    close(gb, None, &dbr, 2e-4, "dB");
}

#[test]
fn tiled_f32_adapter_matches_dense_reference() {
    // out = 2·TILE + 7: two whole tiles and a partial one.
    let dm = BranchDims {
        n: 9,
        in_f: 32,
        out_f: 2 * TILE + 7,
        r: 5,
    };
    let w = to32(&random64(dm.out_f * dm.in_f, 0.5, 20));
    for dropout in [0.0, 0.25] {
        parity(
            BaseWeight::dense(dm.out_f, dm.in_f, w.clone()).unwrap(),
            dm,
            dropout,
        );
    }
    let small = BranchDims {
        n: 4,
        in_f: 10,
        out_f: 6,
        r: 2,
    };
    parity(
        BaseWeight::dense(6, 10, to32(&random64(60, 1.0, 27))).unwrap(),
        small,
        0.0,
    );
}

#[test]
fn quantized_base_is_read_tile_by_tile() {
    let dm = BranchDims {
        n: 6,
        in_f: 64,
        out_f: TILE + 3,
        r: 3,
    };
    let w = to32(&random64(dm.out_f * dm.in_f, 1.0, 30));
    let ty = GgmlType::Q4_0;
    let mut bytes = vec![0u8; ty.bytes_for(w.len() as u64).unwrap() as usize];
    quant::quantize(ty, &w, &mut bytes).unwrap();
    let base =
        BaseWeight::quant(&QuantMatrix::new(ty, dm.out_f, dm.in_f, &bytes).unwrap()).unwrap();
    // The reference sees the dequantized Ŵ (to_dense), so this checks the per-tile reads.
    parity(base, dm, 0.1);
}

#[test]
fn init_params_and_merge() {
    let (n, in_f, out_f, r) = (5, 30, 20, 8);
    let cfg = LoraConfig {
        rank: r,
        alpha: 99.0, // ignored: HiRA has no scaling
        ..LoraConfig::default()
    };
    let w64 = to64(&to32(&random64(out_f * in_f, 1.0, 40)));
    let mut h = Hira::new(
        &cfg,
        BaseWeight::dense(out_f, in_f, to32(&w64)).unwrap(),
        41,
    )
    .unwrap();
    let bound = 1.0 / (in_f as f32).sqrt();
    assert!(h.a().iter().all(|&v| v.abs() <= bound) && h.a().iter().any(|&v| v != 0.0));
    assert!(h.b().iter().all(|&v| v == 0.0));
    assert_eq!(h.scale(), 1.0);
    let p = h.params();
    assert_eq!(
        p.iter().map(|p| (p.name, p.group)).collect::<Vec<_>>(),
        [("hira_A", Group::A), ("hira_B", Group::B)]
    );
    assert_eq!(h.export(), Export::MergeOnly);
    assert_eq!(h.extra_bytes(), 4 * out_f * in_f + 4 * 3 * out_f * in_f);
    with_random_b(&mut h, 42);
    let mut dw = vec![0.0f32; out_f * in_f];
    h.delta_weight(&mut dw).unwrap();
    let ba = matmul(&to64(h.b()), &to64(h.a()), out_f, r, in_f);
    let want: Vec<f64> = w64.iter().zip(&ba).map(|(p, q)| p * q).collect();
    close(&dw, None, &want, 1e-5, "W ⊙ BA");
    // The forward is x·(W + ΔW)ᵀ.
    let x = to32(&random64(n * in_f, 1.0, 43));
    let y0 = to32(&xwt(&to64(&x), &w64, n, in_f, out_f));
    let pass = Pass {
        n,
        training: false,
        seed: 0,
    };
    let out = run(
        &h,
        pass,
        &x,
        &y0,
        &vec![0.0; n * out_f],
        &vec![0.0; n * in_f],
    );
    let merged: Vec<f64> = w64.iter().zip(&want).map(|(p, q)| p + q).collect();
    close(
        &out.y,
        None,
        &xwt(&to64(&x), &merged, n, in_f, out_f),
        1e-4,
        "merged",
    );
}

#[test]
fn sgd_fits_a_hadamard_change() {
    let (n, in_f, out_f, r) = (64, 24, 16, 4);
    let cfg = LoraConfig {
        rank: r,
        ..LoraConfig::default()
    };
    let w64 = to64(&to32(&random64(out_f * in_f, 1.0, 50)));
    let mut h = Hira::new(
        &cfg,
        BaseWeight::dense(out_f, in_f, to32(&w64)).unwrap(),
        51,
    )
    .unwrap();
    // Target W ⊙ (1 + B*·A*): a high-rank change HiRA can represent exactly.
    let ba = matmul(
        &random64(out_f * r, 0.4, 52),
        &random64(r * in_f, 0.4, 53),
        out_f,
        r,
        in_f,
    );
    let wt: Vec<f64> = w64.iter().zip(&ba).map(|(p, q)| p * (1.0 + q)).collect();
    let x64 = random64(n * in_f, 1.0, 54);
    let base = to32(&xwt(&x64, &w64, n, in_f, out_f));
    let target = to32(&xwt(&x64, &wt, n, in_f, out_f));
    let losses = sgd(
        &mut h,
        &to32(&x64),
        &base,
        &target,
        n,
        100,
        1.0,
        &mut no_pre,
        &mut no_post,
    );
    let (first, last) = (losses[0], *losses.last().unwrap());
    eprintln!("loss {first} -> {last}");
    assert!(last * 5.0 < first, "loss {first} -> {last}");
}
