//! `--method mtlora` end to end on data with two tasks (docs/METHODS.md#mt-lora, #task-weights):
//! the loss falls, both tasks are routed and reported (metrics.jsonl), the plan's adapter numbers
//! equal the built adapters', a resumed run (adaptive task weights, window across the cut) repeats
//! the uninterrupted losses bit for bit, resuming on data with other tasks is an error, and
//! `edgetune export --task` writes each task as a plain LoRA of rank `r_sh + r_t` that loads back
//! with that task's `ΔW` (the two tasks differ), and `--all-tasks` writes every task's files byte
//! for byte as `--task` does.

use std::path::{Path, PathBuf};

use edgetune::adapters::Adapter;
use edgetune::adapters::mtlora::MtLora;
use edgetune::gguf::GgufFile;
use edgetune::model::LlamaConfig;
use edgetune::train::budget;
use edgetune::train::{Method, TaskWeights, TrainConfig, Trainer, method_io, method_tasks};

use crate::cli_support::edgetune;
use crate::train_support;

/// `n` records alternating between the tasks `sensor` and `switch` (distinct texts).
fn write_data(path: &Path, n: usize, tasks: [&str; 2]) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let (text, task) = if i % 2 == 0 {
                (
                    format!("sensor {} reads {} C; status ok. ", i % 7, 20 + i % 5),
                    tasks[0],
                )
            } else {
                (
                    format!(
                        "turn {} lamp {} now; done. ",
                        ["on", "off"][i % 4 / 2],
                        i % 3
                    ),
                    tasks[1],
                )
            };
            serde_json::json!({ "text": text.repeat(2), "task": task }).to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let (model, _) = train_support::write_fixture(dir, "q4_0", 4);
    let data = dir.join("two_tasks.jsonl");
    write_data(&data, 40, ["sensor", "switch"]);
    (model, data)
}

fn config(model: &Path, data: &Path, out: &Path, steps: u64) -> TrainConfig {
    let mut cfg = train_support::config(model, data, out, steps);
    cfg.method = Method::Mtlora;
    cfg.seq_len = 64;
    cfg.batch = 2;
    cfg.lr = 2e-3;
    cfg.method_opts.mtlora_task_rank = 2;
    cfg
}

#[test]
fn mtlora_trains_two_tasks_reports_them_and_plans_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture(dir.path());
    let file = GgufFile::open(&model).unwrap();
    let cfg = config(&model, &data, &dir.path().join("run"), 8);
    let pool = train_support::two_threads();
    pool.install(|| {
        let mut t = Trainer::new(&file, &cfg).unwrap();
        assert_eq!(t.config().method_opts.mtlora_tasks, ["sensor", "switch"]);
        for (_, _, a) in t.adapters().iter() {
            let m = a.downcast_ref::<MtLora>().expect("an MT-LoRA adapter");
            assert_eq!(m.n_tasks(), 2);
        }
        // The plan (from the configuration with the data's tasks) counts what was built.
        let plan = budget::plan_training(&file, t.config()).unwrap();
        let n_params: usize = t.adapters().n_params();
        assert_eq!(plan.breakdown.adapters.n_params, n_params as u64);
        let adapter_extra: usize = t.adapters().iter().map(|(_, _, a)| a.extra_bytes()).sum();
        assert_eq!(
            plan.breakdown.adapters.extra_bytes,
            (adapter_extra + t.hooks().bytes()) as u64
        );

        let (mut losses, mut seen) = (Vec::new(), [false; 2]);
        while let Some(p) = t.step().unwrap() {
            losses.push(p.loss);
            let (tl, tw) = t.task_metrics().unwrap();
            assert_eq!(tw["sensor"].as_f64(), Some(1.0), "uniform weights");
            assert_eq!(tw["switch"].as_f64(), Some(1.0), "uniform weights");
            // The targets-weighted mean of the per-task means is the step's loss.
            let mt = t.hooks().tasks().unwrap();
            for (i, name) in ["sensor", "switch"].iter().enumerate() {
                if let Some(l) = tl.get(*name) {
                    seen[i] = true;
                    assert_eq!(l.as_f64(), Some(mt.last_losses()[i]));
                    assert!(mt.last_losses()[i].is_finite());
                }
            }
        }
        assert_eq!(seen, [true, true], "both tasks were trained");
        let first = losses[..3].iter().sum::<f64>() / 3.0;
        let last = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
        assert!(last < first, "the loss did not fall: {losses:?}");
        // Each task's LoRA was trained (B leaves zero only through its own rows).
        let m = t.adapters().iter().next().unwrap().2;
        let m = m.downcast_ref::<MtLora>().unwrap();
        for p in [3, 5] {
            assert!(m.param(p).unwrap().iter().any(|&v| v != 0.0), "task B {p}");
        }
    });
}

#[test]
fn mtlora_resumes_exactly_and_refuses_other_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture(dir.path());
    let file = GgufFile::open(&model).unwrap();
    let pool = train_support::two_threads();
    pool.install(|| {
        let mut cfg = config(&model, &data, &dir.path().join("full"), 4);
        cfg.method_opts.task_weights = TaskWeights::Adaptive;
        cfg.method_opts.task_weights_every = 3;
        cfg.method_opts.task_weights_alpha = 2.0;
        let mut full = Trainer::new(&file, &cfg).unwrap();
        let want = train_support::loss_bits(&mut full);
        // The adaptive weights moved (after step 3) and still sum to the task count.
        let w = full.hooks().tasks().unwrap().weights().to_vec();
        assert!(w[0] != w[1], "{w:?}");
        assert!((w.iter().sum::<f32>() - 2.0).abs() < 1e-5, "{w:?}");

        let cut = TrainConfig {
            out: dir.path().join("cut"),
            ..cfg.clone()
        };
        let (mut got, mut second) = train_support::cut_and_resume(&file, &cut);
        got.extend(train_support::loss_bits(&mut second));
        assert_eq!(got, want, "per-step losses differ after resume");
        assert!(
            train_support::all_params(second.adapters())
                == train_support::all_params(full.adapters()),
            "params differ after resume"
        );
        assert_eq!(second.hooks().tasks().unwrap().weights(), &w[..]);
        // The run directory is the trainer's until it is dropped (run_dir.rs's lock).
        drop(second);

        // Data with another task set: a clear error naming both lists.
        let other = dir.path().join("other.jsonl");
        write_data(&other, 40, ["sensor", "weather"]);
        let e = Trainer::new(
            &file,
            &TrainConfig {
                data: other,
                ..train_support::resuming(&cut)
            },
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("[sensor, switch]") && e.contains("[sensor, weather]"),
            "{e}"
        );
    });
}

#[test]
fn export_task_writes_each_task_as_a_plain_lora() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture(dir.path());
    let file = GgufFile::open(&model).unwrap();
    let mc = LlamaConfig::from_gguf(&file).unwrap();
    let cfg = config(&model, &data, &dir.path().join("run"), 3);
    let ckpt = {
        let mut t = Trainer::new(&file, &cfg).unwrap();
        while t.step().unwrap().is_some() {}
        t.checkpoint().unwrap()
    };
    let (m, c) = (model.to_str().unwrap(), ckpt.to_str().unwrap());
    let mut deltas = Vec::new();
    for (task, format) in [("sensor", "peft"), ("switch", "gguf"), ("switch", "peft")] {
        let out = dir.path().join(format!("{task}-{format}"));
        let out = if format == "gguf" {
            out.with_extension("gguf")
        } else {
            out
        };
        let r = edgetune(&[
            "export",
            "--model",
            m,
            "--adapter",
            c,
            "--format",
            format,
            "--task",
            task,
            "--out",
            out.to_str().unwrap(),
            "--json",
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let loaded = edgetune::export::load_any(&out, &mc).unwrap();
        // The reference: the trained adapters with this task selected.
        let mut want = method_io::load_set(&ckpt, &file).unwrap();
        method_tasks::select_task(&mut want, task).unwrap();
        let mut d = Vec::new();
        for ((_, _, a), (_, _, b)) in loaded.iter().zip(want.iter()) {
            let edgetune::adapters::Export::LowRank { rank, .. } = a.export() else {
                panic!("{task} {format}: not low-rank");
            };
            assert_eq!(rank, cfg.lora.rank + 2, "{task} {format}: rank r_sh + r_t");
            let (x, y) = (
                train_support::delta_weight(a),
                train_support::delta_weight(b),
            );
            let scale = y.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            for (g, w) in x.iter().zip(&y) {
                assert!((g - w).abs() <= 1e-4 * scale, "{task} {format}: {g} vs {w}");
            }
            d.extend(x);
        }
        deltas.push(d);
    }
    assert!(deltas[0] != deltas[2], "the two tasks export the same ΔW");

    let bad = edgetune(&[
        "export",
        "--model",
        m,
        "--adapter",
        c,
        "--format",
        "peft",
        "--task",
        "nope",
        "--out",
        dir.path().join("nope").to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(e.contains("nope") && e.contains("sensor, switch"), "{e}");
}

/// The files of `path` (a file, or a directory's files by name) and their bytes.
fn files_of(path: &Path) -> Vec<(String, Vec<u8>)> {
    if path.is_file() {
        return vec![(String::new(), std::fs::read(path).unwrap())];
    }
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn export_all_tasks_writes_what_each_task_export_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture(dir.path());
    let file = GgufFile::open(&model).unwrap();
    let cfg = config(&model, &data, &dir.path().join("run"), 2);
    let ckpt = {
        let mut t = Trainer::new(&file, &cfg).unwrap();
        while t.step().unwrap().is_some() {}
        t.checkpoint().unwrap()
    };
    let (m, c) = (model.to_str().unwrap(), ckpt.to_str().unwrap());
    let export = |format: &str, out: &Path, extra: &[&str]| {
        let mut args = vec![
            "export",
            "--model",
            m,
            "--adapter",
            c,
            "--format",
            format,
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        edgetune(&args)
    };
    let all = dir.path().join("all");
    for (format, out, want) in [
        (
            "gguf",
            all.join("lamp.gguf"),
            ["lamp.sensor.gguf", "lamp.switch.gguf"].map(|f| all.join(f)),
        ),
        (
            "peft",
            all.join("peft"),
            ["sensor", "switch"].map(|t| all.join("peft").join(t)),
        ),
        (
            "native",
            all.join("native"),
            ["sensor", "switch"].map(|t| all.join("native").join(t)),
        ),
    ] {
        std::fs::create_dir_all(&all).unwrap();
        let r = export(format, &out, &["--all-tasks", "--json"]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        let listed: Vec<&str> = j["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        let want_str: Vec<&str> = want.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(listed, want_str, "{format}");
        assert_eq!(j["tasks"][1]["task"], "switch", "{format}");
        // Each task's files are byte for byte what `--task NAME` writes.
        for (task, path) in ["sensor", "switch"].iter().zip(&want) {
            let single = dir.path().join(format!("single-{task}-{format}"));
            let r = export(format, &single, &["--task", task]);
            assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
            let (got, expect) = (files_of(path), files_of(&single));
            assert!(!expect.is_empty() && !expect[0].1.is_empty());
            assert_eq!(
                got.iter().map(|f| &f.0).collect::<Vec<_>>(),
                expect.iter().map(|f| &f.0).collect::<Vec<_>>(),
                "{format} {task}"
            );
            for (g, e) in got.iter().zip(&expect) {
                assert!(g.1 == e.1, "{format} {task}: {} differs", g.0);
            }
        }
        let (a, b) = (files_of(&want[0]), files_of(&want[1]));
        assert!(a != b, "{format}: the two tasks wrote the same files");
    }

    // Without --task: the first task (the checkpoint's plain-LoRA files), and a note on the
    // others.
    let plain = dir.path().join("plain.gguf");
    let r = export("gguf", &plain, &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(
        text.contains("`sensor`") && text.contains("--all-tasks"),
        "{text}"
    );
    // --all-tasks on an adapter without tasks, and with --task, is refused.
    let r = edgetune(&[
        "export",
        "--model",
        m,
        "--adapter",
        all.join("peft").join("sensor").to_str().unwrap(),
        "--format",
        "gguf",
        "--all-tasks",
        "--out",
        dir.path().join("x.gguf").to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(
        e.contains("--all-tasks") && e.contains("not an edgetune method"),
        "{e}"
    );
    let r = export(
        "gguf",
        &dir.path().join("y.gguf"),
        &["--all-tasks", "--task", "sensor"],
    );
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("cannot be used with"));
}
