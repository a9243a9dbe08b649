//! `--mtlora-skip-absent` ("only update the tasks present", docs/METHODS.md#mt-lora against the
//! docs/METHODS.md#zero-gradients-and-adamw default): with one sequence per step exactly one task
//! is present, and the optimizer must leave every absent task's `task<t>_lora_A/B` and their AdamW
//! moments bit for bit as they were, while the present task and the shared LoRA move. The same run
//! without the option (lockstep, same data order) shows that AdamW does move an absent task there,
//! and a run cut by a checkpoint resumes to the uninterrupted run's parameters and optimizer state
//! exactly.

use std::path::Path;

use edgetune::adapters::mtlora::MtLora;
use edgetune::gguf::GgufFile;
use edgetune::train::{Method, TrainConfig, Trainer};

use crate::train_support;

/// `n` records alternating between the tasks `sensor` and `switch`.
fn write_data(path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let (text, task) = if i % 2 == 0 {
                (
                    format!("sensor {} reads {} C. ", i % 7, 20 + i % 5),
                    "sensor",
                )
            } else {
                (format!("turn lamp {} on now. ", i % 3), "switch")
            };
            serde_json::json!({ "text": text.repeat(3), "task": task }).to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

fn config(model: &Path, data: &Path, out: &Path, steps: u64, skip: bool) -> TrainConfig {
    let mut cfg = train_support::config(model, data, out, steps);
    cfg.method = Method::Mtlora;
    cfg.seq_len = 64;
    // One sequence per step: one task present, the other absent.
    cfg.batch = 1;
    cfg.accum = 1;
    cfg.lr = 2e-3;
    cfg.weight_decay = 0.01;
    cfg.method_opts.mtlora_task_rank = 2;
    cfg.method_opts.mtlora_skip_absent = skip;
    cfg
}

/// For every optimizer parameter id: the MT-LoRA task its tensor belongs to (`None`: a shared
/// tensor or another adapter's).
fn task_of_ids(t: &Trainer) -> Vec<Option<usize>> {
    let mut out = Vec::new();
    for (_, _, a) in t.adapters().iter() {
        let is_mt = a.downcast_ref::<MtLora>().is_some();
        let mut p = 0;
        while a.param(p).is_some() {
            out.push((is_mt && p >= 2).then(|| (p - 2) / 2));
            p += 1;
        }
    }
    out
}

fn states(t: &Trainer, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|id| t.optimizer().tensor_state(id).unwrap().to_vec())
        .collect()
}

fn present(t: &Trainer) -> Vec<bool> {
    let losses = t.hooks().tasks().unwrap().last_losses();
    losses.iter().map(|l| l.is_finite()).collect()
}

#[test]
fn absent_tasks_keep_their_tensors_and_moments() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = train_support::write_fixture(dir.path(), "q4_0", 4);
    let data = dir.path().join("tasks.jsonl");
    write_data(&data, 24);
    let file = GgufFile::open(&model).unwrap();
    let pool = train_support::two_threads();
    pool.install(|| {
        let steps = 8;
        let mut skip = Trainer::new(
            &file,
            &config(&model, &data, &dir.path().join("s"), steps, true),
        )
        .unwrap();
        let mut plain = Trainer::new(
            &file,
            &config(&model, &data, &dir.path().join("p"), steps, false),
        )
        .unwrap();
        let tasks = task_of_ids(&skip);
        let n = tasks.len();
        let (mut checked_with_moments, mut plain_moved) = (0, 0);
        let mut seen = [false; 2];
        for step in 1..=steps {
            let (p0, s0) = (train_support::all_params(skip.adapters()), states(&skip, n));
            let (q0, r0) = (
                train_support::all_params(plain.adapters()),
                states(&plain, n),
            );
            skip.step().unwrap().unwrap();
            plain.step().unwrap().unwrap();
            let here = present(&skip);
            assert_eq!(here, present(&plain), "step {step}: same data order");
            assert_eq!(
                here.iter().filter(|&&h| h).count(),
                1,
                "step {step}: {here:?}"
            );
            let (p1, s1) = (train_support::all_params(skip.adapters()), states(&skip, n));
            let (q1, r1) = (
                train_support::all_params(plain.adapters()),
                states(&plain, n),
            );
            let (mut present_moved, mut present_state, mut shared_moved) = (false, false, false);
            for id in 0..n {
                match tasks[id] {
                    Some(t) if !here[t] => {
                        // Skipped: tensor and moments bit for bit.
                        assert!(
                            p0[id] == p1[id],
                            "step {step}: absent task {t} id {id} moved"
                        );
                        assert!(
                            s0[id] == s1[id],
                            "step {step}: absent task {t} id {id} state"
                        );
                        if s0[id].iter().any(|&b| b != 0) {
                            checked_with_moments += 1;
                        }
                        // Without the option AdamW moves it (weight decay, momentum).
                        plain_moved += (q0[id] != q1[id] || r0[id] != r1[id]) as usize;
                    }
                    Some(t) => {
                        seen[t] = true;
                        present_moved |= p0[id] != p1[id];
                        present_state |= s0[id] != s1[id];
                    }
                    None => shared_moved |= p0[id] != p1[id],
                }
            }
            assert!(
                present_moved && present_state,
                "step {step}: the present task stayed"
            );
            assert!(shared_moved, "step {step}: the shared LoRA stayed");
        }
        assert_eq!(seen, [true, true], "both tasks were trained");
        assert!(
            checked_with_moments > 0,
            "no absent task had moments to keep"
        );
        assert!(plain_moved > 0, "without the option absent tasks move");
    });
}

#[test]
fn skip_absent_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = train_support::write_fixture(dir.path(), "q4_0", 4);
    let data = dir.path().join("tasks.jsonl");
    write_data(&data, 24);
    let file = GgufFile::open(&model).unwrap();
    let pool = train_support::two_threads();
    pool.install(|| {
        let cfg = config(&model, &data, &dir.path().join("full"), 5, true);
        let mut full = Trainer::new(&file, &cfg).unwrap();
        while full.step().unwrap().is_some() {}
        let cut = TrainConfig {
            out: dir.path().join("cut"),
            ..cfg.clone()
        };
        let (_, mut second) = train_support::cut_and_resume(&file, &cut);
        while second.step().unwrap().is_some() {}
        assert!(
            train_support::all_params(second.adapters())
                == train_support::all_params(full.adapters()),
            "params differ after resume"
        );
        let n = task_of_ids(&full).len();
        assert!(
            states(&second, n) == states(&full, n),
            "optimizer state differs"
        );
    });
}
