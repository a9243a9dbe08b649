//! MT-LoRA (docs/METHODS.md#mt-lora): an f64 reference composed of the generic LoRA references
//! (shared on every token, each task's on its rows) checked by finite differences against the
//! loss written out with loops (no dropout and a fixed mask), the f32 adapter against it
//! (absent tasks get zero gradients), routing errors, the per-task export and merge, task ids
//! from the data, and a short fit of two tasks that differ.

use crate::adapters_support;

use crate::adapters_support::{close, no_post, no_pre, run, sgd, xwt};
use crate::backend_grad_fd::{assert_grad, fd_grad, random64, to32, to64};
use edgetune::adapters::lora::{self, BranchDims};
use edgetune::adapters::mtlora::{MtLora, MtLoraConfig};
use edgetune::adapters::{Adapter, Export, LoraConfig, Pass};
use edgetune::data::{Batch, BatchConfig, Batcher, TokenizedExample};

const IN: usize = 8;
const OUT: usize = 12;
const RS: usize = 4;
const RT: usize = 2;
const SEQ: usize = 2;
/// Row tasks of the test micro-batch (task 2 is absent).
const ROWS: [u32; 3] = [1, 0, 1];
const N: usize = SEQ * ROWS.len();

fn cfg(dropout: f32) -> MtLoraConfig {
    MtLoraConfig {
        shared: LoraConfig {
            rank: RS,
            alpha: 6.0,
            dropout,
            ..LoraConfig::default()
        },
        task_rank: RT,
        task_alpha: 5.0,
        tasks: vec!["a".into(), "b".into(), "c".into()],
    }
}

/// Parameters `[A_sh, B_sh, A_0, B_0, A_1, B_1, A_2, B_2]` in f64.
fn random_params(seed: u64) -> Vec<Vec<f64>> {
    let mut p = vec![
        random64(RS * IN, 0.5, seed),
        random64(OUT * RS, 0.5, seed + 1),
    ];
    for t in 0..3 {
        p.push(random64(RT * IN, 0.5, seed + 10 + 2 * t));
        p.push(random64(OUT * RT, 0.5, seed + 11 + 2 * t));
    }
    p
}

/// `L = Σ R ⊙ ΔY` with loops: `ΔY[n] = s_sh·B_sh·A_sh·x_d[n] + s_τ·B_τ·A_τ·x_d[n]`.
fn loss(ss: f64, st: f64, x: &[f64], p: &[Vec<f64>], mask: Option<&[f64]>, rw: &[f64]) -> f64 {
    let mut total = 0.0;
    for t in 0..N {
        let task = ROWS[t / SEQ] as usize;
        let xd: Vec<f64> = (0..IN)
            .map(|i| x[t * IN + i] * mask.map_or(1.0, |m| m[t * IN + i]))
            .collect();
        for o in 0..OUT {
            let mut y = 0.0;
            for (a, b, r, s) in [
                (&p[0], &p[1], RS, ss),
                (&p[2 + 2 * task], &p[3 + 2 * task], RT, st),
            ] {
                for j in 0..r {
                    let h: f64 = (0..IN).map(|i| a[j * IN + i] * xd[i]).sum();
                    y += s * b[o * r + j] * h;
                }
            }
            total += rw[t * OUT + o] * y;
        }
    }
    total
}

/// The reference backward: `(dX, [dA_sh, dB_sh, dA_t, dB_t …])` from `lora::backward_ref`.
fn reference(
    ss: f64,
    st: f64,
    x: &[f64],
    p: &[Vec<f64>],
    mask: Option<&[f64]>,
    g: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<Vec<f64>>) {
    let dm = BranchDims {
        n: N,
        in_f: IN,
        out_f: OUT,
        r: RS,
    };
    let (y_sh, _) = lora::forward_ref::<f64>(dm, ss, x, &p[0], &p[1], mask);
    let (mut dx, da, db) = lora::backward_ref::<f64>(dm, ss, x, &p[0], &p[1], mask, g);
    let mut y = y_sh;
    let mut grads = vec![da, db];
    for task in 0..3 {
        let mut da = vec![0.0; RT * IN];
        let mut db = vec![0.0; OUT * RT];
        for (row, &tr) in ROWS.iter().enumerate() {
            if tr as usize != task {
                continue;
            }
            let (t0, t1) = (row * SEQ, (row + 1) * SEQ);
            let dmr = BranchDims {
                n: SEQ,
                in_f: IN,
                out_f: OUT,
                r: RT,
            };
            let (xr, gr) = (&x[t0 * IN..t1 * IN], &g[t0 * OUT..t1 * OUT]);
            let mr = mask.map(|m| &m[t0 * IN..t1 * IN]);
            let (a, b) = (&p[2 + 2 * task], &p[3 + 2 * task]);
            let (yr, _) = lora::forward_ref::<f64>(dmr, st, xr, a, b, mr);
            let (dxr, dar, dbr) = lora::backward_ref::<f64>(dmr, st, xr, a, b, mr, gr);
            y[t0 * OUT..t1 * OUT]
                .iter_mut()
                .zip(&yr)
                .for_each(|(p, q)| *p += q);
            dx[t0 * IN..t1 * IN]
                .iter_mut()
                .zip(&dxr)
                .for_each(|(p, q)| *p += q);
            da.iter_mut().zip(&dar).for_each(|(p, q)| *p += q);
            db.iter_mut().zip(&dbr).for_each(|(p, q)| *p += q);
        }
        grads.push(da);
        grads.push(db);
    }
    (y, dx, grads)
}

fn fd_check(mask: Option<&[f64]>) {
    let (ss, st) = (1.5, 2.5);
    let x = random64(N * IN, 1.0, 1);
    let p = random_params(2);
    let rw = random64(N * OUT, 1.0, 3);
    let (y, dx, grads) = reference(ss, st, &x, &p, mask, &rw);
    let direct: f64 = y.iter().zip(&rw).map(|(a, b)| a * b).sum();
    let l0 = loss(ss, st, &x, &p, mask, &rw);
    assert!((direct - l0).abs() < 1e-10 * l0.abs().max(1.0));
    assert_grad(
        &dx,
        &fd_grad(&x, |v| loss(ss, st, v, &p, mask, &rw)),
        1e-6,
        "dX",
    );
    for k in 0..6 {
        let fd = fd_grad(&p[k], |v| {
            let mut q = p.clone();
            q[k] = v.to_vec();
            loss(ss, st, &x, &q, mask, &rw)
        });
        assert_grad(&grads[k], &fd, 1e-6, &format!("param {k}"));
    }
    // Task 2 has no rows: its gradients are exactly zero.
    assert!(grads[6].iter().chain(&grads[7]).all(|&v| v == 0.0));
}

#[test]
fn gradients_match_finite_differences_f64() {
    fd_check(None);
}

#[test]
fn gradients_with_fixed_dropout_mask_match_finite_differences_f64() {
    let m = MtLora::new(IN, OUT, &cfg(0.3), 9).unwrap();
    let pass = Pass {
        n: N,
        training: true,
        seed: 77,
    };
    let mask = to64(&m.dropout_mask(pass).unwrap());
    assert!(mask.contains(&0.0));
    fd_check(Some(&mask));
}

fn parity(dropout: f32) {
    let c = cfg(dropout);
    let mut m = MtLora::new(IN, OUT, &c, 9).unwrap();
    let p = random_params(5);
    for (i, t) in p.iter().enumerate() {
        m.param_mut(i).unwrap().copy_from_slice(&to32(t));
    }
    m.set_row_tasks(&ROWS, SEQ).unwrap();
    let pass = Pass {
        n: N,
        training: true,
        seed: 4,
    };
    let x = to32(&random64(N * IN, 1.0, 6));
    let y0 = to32(&random64(N * OUT, 1.0, 7));
    let g = to32(&random64(N * OUT, 1.0, 8));
    let dx0 = to32(&random64(N * IN, 1.0, 9));
    let out = run(&m, pass, &x, &y0, &g, &dx0);
    let mask = m.dropout_mask(pass).map(|v| to64(&v));
    let p32: Vec<Vec<f64>> = (0..8).map(|i| to64(m.param(i).unwrap())).collect();
    let (ss, st) = (c.shared.scale() as f64, c.task_scale() as f64);
    let (y, dx, grads) = reference(ss, st, &to64(&x), &p32, mask.as_deref(), &to64(&g));
    close(&out.y, Some(&y0), &y, 1e-5, "y");
    close(&out.dx, Some(&dx0), &dx, 1e-5, "dx");
    let mut off = 0;
    for (k, want) in grads.iter().enumerate() {
        close(
            &out.grads[off..off + want.len()],
            None,
            want,
            1e-5,
            &format!("grad {k}"),
        );
        off += want.len();
    }
    assert_eq!(off, m.n_params());
}

#[test]
fn f32_adapter_matches_reference() {
    parity(0.0);
}

#[test]
fn f32_adapter_with_dropout_matches_reference() {
    parity(0.25);
}

#[test]
fn routing_errors_export_and_merge() {
    let mut m = MtLora::new(IN, OUT, &cfg(0.0), 3).unwrap();
    let names: Vec<_> = m.params().iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        [
            "lora_A",
            "lora_B",
            "task0_lora_A",
            "task0_lora_B",
            "task1_lora_A",
            "task1_lora_B",
            "task2_lora_A",
            "task2_lora_B"
        ]
    );
    let mut many = cfg(0.0);
    many.tasks = (0..33).map(|i| format!("t{i}")).collect();
    assert!(MtLora::new(IN, OUT, &many, 1).is_err());
    assert!(
        m.set_row_tasks(&[0, 3], SEQ)
            .unwrap_err()
            .to_string()
            .contains("task id 3")
    );
    m.set_row_tasks(&ROWS, SEQ).unwrap();
    let pass = Pass {
        n: N + SEQ,
        training: false,
        seed: 0,
    };
    let mut y = vec![0.0; (N + SEQ) * OUT];
    let mut saved = vec![0.0; m.saved_len(N + SEQ)];
    let mut scratch = vec![0.0; m.scratch_len(N + SEQ)];
    let e = m
        .forward(
            pass,
            &vec![0.0; (N + SEQ) * IN],
            &mut y,
            &mut saved,
            &mut scratch,
        )
        .unwrap_err();
    assert!(e.to_string().contains("row tasks"), "{e}");

    // Export of task t: x·ΔW_tᵀ equals the branch on rows of task t.
    let p = random_params(12);
    for (i, t) in p.iter().enumerate() {
        m.param_mut(i).unwrap().copy_from_slice(&to32(t));
    }
    let pass = Pass {
        n: N,
        training: false,
        seed: 0,
    };
    let x = to32(&random64(N * IN, 1.0, 13));
    let out = run(
        &m,
        pass,
        &x,
        &[0.0; N * OUT],
        &[0.0; N * OUT],
        &[0.0; N * IN],
    );
    for task in 0..3 {
        let Export::LowRank { a, b, rank, scale } = m.export_for_task(task).unwrap() else {
            panic!("low-rank");
        };
        assert_eq!((rank, scale), (RS + RT, 1.0));
        let dw = adapters_support::matmul(&to64(&b), &to64(&a), OUT, rank, IN);
        m.set_export_task(task).unwrap();
        let mut dw32 = vec![0.0f32; OUT * IN];
        m.delta_weight(&mut dw32).unwrap();
        close(&dw32, None, &dw, 1e-5, "delta_weight");
        let y = xwt(&to64(&x), &dw, N, IN, OUT);
        for (row, &t) in ROWS.iter().enumerate() {
            if t as usize == task {
                let r = row * SEQ * OUT..(row + 1) * SEQ * OUT;
                close(&out.y[r.clone()], None, &y[r], 1e-5, "export vs forward");
            }
        }
    }
    assert!(m.set_export_task(3).is_err());
    assert!(m.export_for_task(3).is_err());
}

#[test]
fn task_ids_come_from_the_data_in_first_seen_order_and_rows_do_not_mix() {
    let ex = |n: usize, task: Option<&str>| TokenizedExample {
        ids: vec![1; n],
        labels: std::iter::once(-100)
            .chain(std::iter::repeat_n(1, n - 1))
            .collect(),
        task: task.map(str::to_string),
    };
    let data = vec![
        ex(3, Some("qa")),
        ex(3, None),
        ex(3, Some("sum")),
        ex(3, Some("qa")),
        ex(3, Some("sum")),
        ex(3, None),
    ];
    let c = BatchConfig {
        seq_len: 9,
        batch_size: 2,
        pack: true,
        seed: 1,
        epochs: Some(1),
        max_steps: None,
        pad_id: 0,
    };
    let mut b = Batcher::new(&data, c.clone()).unwrap();
    assert_eq!(b.task_names(), ["qa", "default", "sum"]);
    // Known names keep their ids (a resumed run); new ones follow.
    let b2 = Batcher::with_tasks(&data, c.clone(), &["sum".into()]).unwrap();
    assert_eq!(b2.task_names(), ["sum", "qa", "default"]);
    // Packing keeps one task per row: 3 tasks × 2 examples of 3 tokens = 3 rows.
    assert_eq!(b.n_rows(), 3);
    let mut batch = Batch::new(2, 9);
    let mut seen = Vec::new();
    while b.next_batch(&mut batch) {
        for r in 0..batch.rows {
            seen.push(batch.tasks[r]);
        }
        for r in batch.rows..2 {
            assert_eq!(batch.tasks[r], 0);
        }
    }
    seen.sort();
    assert_eq!(seen, [0, 1, 2]);
    // Single-task data: every row task 0, one name.
    let single: Vec<_> = data
        .iter()
        .map(|e| TokenizedExample {
            task: None,
            ..e.clone()
        })
        .collect();
    let b = Batcher::new(&single, c).unwrap();
    assert_eq!(b.task_names(), ["default"]);
    assert_eq!(b.n_rows(), 2);
}

#[test]
fn sgd_fits_two_tasks_that_need_different_adapters() {
    let c = MtLoraConfig {
        shared: LoraConfig {
            rank: 4,
            alpha: 4.0,
            ..LoraConfig::default()
        },
        task_rank: 2,
        task_alpha: 2.0,
        tasks: vec!["a".into(), "b".into()],
    };
    let (inf, outf, seq, rows) = (16, 8, 4, 6);
    let n = seq * rows;
    let mut m = MtLora::new(inf, outf, &c, 7).unwrap();
    let tasks: Vec<u32> = (0..rows as u32).map(|r| r % 2).collect();
    m.set_row_tasks(&tasks, seq).unwrap();
    let x = to32(&random64(n * inf, 1.0, 1));
    // A rank-2 shared change plus an opposite rank-1 per-task change (within the ranks).
    let mm = adapters_support::matmul;
    let w_sh = mm(
        &random64(outf * 2, 0.5, 2),
        &random64(2 * inf, 0.5, 3),
        outf,
        2,
        inf,
    );
    let w_t = mm(
        &random64(outf, 0.5, 4),
        &random64(inf, 0.5, 5),
        outf,
        1,
        inf,
    );
    let mut target = vec![0.0f32; n * outf];
    for t in 0..n {
        let sign = if tasks[t / seq] == 0 { 1.0 } else { -1.0 };
        let xr = &to64(&x[t * inf..(t + 1) * inf]);
        let ys = xwt(xr, &w_sh, 1, inf, outf);
        let yt = xwt(xr, &w_t, 1, inf, outf);
        for o in 0..outf {
            target[t * outf + o] = (ys[o] + sign * yt[o]) as f32;
        }
    }
    let base = vec![0.0f32; n * outf];
    let losses = sgd(
        &mut m,
        &x,
        &base,
        &target,
        n,
        300,
        0.05,
        &mut no_pre,
        &mut no_post,
    );
    let (first, last) = (losses[0], *losses.last().unwrap());
    eprintln!("MT-LoRA fit: loss {first:.4} → {last:.4}");
    assert!(last < 0.5 * first, "{first} → {last}");
}

#[test]
fn adaptive_task_weights_follow_the_study_rule() {
    use edgetune::adapters::mtlora::AdaptiveTaskWeights;
    let mut w = AdaptiveTaskWeights::new(2, 1.0).unwrap();
    assert_eq!(w.weights(), [1.0, 1.0]);
    // Task 1 at accuracy 0: γ = [1, e], rescaled to sum 2.
    w.update(1, 0.0).unwrap();
    let e = std::f64::consts::E;
    let want = [2.0 / (1.0 + e), 2.0 * e / (1.0 + e)];
    for (g, w) in w.weights().iter().zip(want) {
        assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
    }
    // Perfect accuracy leaves γ as is.
    let before = w.weights().to_vec();
    w.update(0, 1.0).unwrap();
    assert_eq!(w.weights(), &before[..]);
    assert!(w.update(2, 0.5).is_err());
    assert!(w.update(0, 1.5).is_err());
    assert!(AdaptiveTaskWeights::new(0, 1.0).is_err());
}
