//! `edgetune compare` end to end on a generated tiny model: one LoRA run (a few steps) measured
//! and written as compare.json / compare.md; the measures checked against the run's own files
//! and against `edgetune eval`; a failing method recorded, not fatal to the comparison.
//!
//! The child runs are `edgetune train --method NAME`: these tests need the `--method` flag of
//! the methods branch (wt-method) and pass once both are merged.

mod train_support;

use std::path::Path;
use std::process::{Command, Output};

fn edgetune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgetune"))
        .args(args)
        .output()
        .expect("run edgetune")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn compare_lora_writes_consistent_measures() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q4_0", 40);
    let suite = dir.path().join("suite.jsonl");
    std::fs::write(
        &suite,
        "{\"id\": \"fib\", \"input\": \"1, 1, 2, 3, 5, 8, 13,\", \"checks\": [{\"contains\": \"21\"}]}\n\
         {\"id\": \"any\", \"input\": \"Sensor\", \"checks\": [{\"regex\": \"(?s)^.*$\"}]}\n",
    )
    .unwrap();
    let out = dir.path().join("cmp");
    let o = edgetune(&[
        "compare",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--methods",
        "lora",
        "--steps",
        "2",
        "--seq-len",
        "512",
        "--rank",
        "4",
        "--lr",
        "1e-3",
        "--suite",
        s(&suite),
        "--max-tokens",
        "4",
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed = String::from_utf8(o.stdout).unwrap();
    assert!(printed.contains("| lora |"), "{printed}");
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(
        md.contains(printed.trim()),
        "compare.md holds the printed table"
    );

    // 40 records: the last 4 held out, 36 trained on.
    let train_lines = std::fs::read_to_string(out.join("train.jsonl")).unwrap();
    assert_eq!(train_lines.lines().count(), 36);

    let results = json(&out.join("compare.json"));
    let list = results.as_array().unwrap();
    assert_eq!(list.len(), 1);
    let r = &list[0];
    assert_eq!(r["method"], "lora");
    assert!(r["error"].is_null(), "{r}");
    assert_eq!(r["score"], 1.0, "LoRA is the baseline");
    // The training measures are the run's own summary.json.
    let summary = json(&out.join("lora").join("summary.json"));
    for (ours, theirs) in [
        ("trainable_params", "trainable_params"),
        ("planned_bytes", "planned_bytes"),
        ("peak_bytes", "peak_bytes"),
        ("tok_per_s", "tok_per_s"),
        ("loss_first", "first_loss"),
        ("loss_final", "final_loss"),
    ] {
        assert_eq!(r[ours], summary[theirs], "{ours}");
    }
    assert_eq!(summary["steps"], 2);
    // The adapter on disk: adapter.json + adapter.safetensors of the last checkpoint.
    let ckpt = Path::new(summary["last_checkpoint"].as_str().unwrap());
    let on_disk: u64 = ["adapter.json", "adapter.safetensors"]
        .iter()
        .map(|f| std::fs::metadata(ckpt.join(f)).unwrap().len())
        .sum();
    assert_eq!(r["adapter_bytes"].as_u64().unwrap(), on_disk);
    // Held-out loss: a mean cross-entropy, finite and positive.
    let heldout = r["heldout_loss"].as_f64().unwrap();
    assert!(heldout.is_finite() && heldout > 0.0, "{heldout}");
    // The pass rate is what `edgetune eval` gives with the same adapter and suite.
    let e = edgetune(&[
        "eval",
        "--model",
        s(&model),
        "--adapter",
        s(ckpt),
        "--suite",
        s(&suite),
        "--max-tokens",
        "4",
        "--json",
    ]);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let report: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
    assert_eq!(r["eval_pass_rate"], report["pass_rate"]);
    assert!(
        report["passed"].as_u64().unwrap() >= 1,
        "the `any` case always passes"
    );
}

#[test]
fn a_failing_method_is_recorded_and_unknown_methods_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q4_0", 20);
    let out = dir.path().join("cmp");
    // A budget nothing fits: the run fails, compare.json says why, the exit status is failure
    // (every method failed).
    let o = edgetune(&[
        "compare",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--methods",
        "lora",
        "--steps",
        "1",
        "--seq-len",
        "64",
        "--rank",
        "4",
        "--budget",
        "1MiB",
        "--out",
        s(&out),
    ]);
    assert!(!o.status.success());
    let results = json(&out.join("compare.json"));
    let r = &results[0];
    assert_eq!(r["method"], "lora");
    let e = r["error"].as_str().unwrap();
    assert!(e.contains("train.log"), "{e}");
    assert!(r["score"].is_null());
    assert!(
        std::fs::read_to_string(out.join("compare.md"))
            .unwrap()
            .contains("lora (failed)")
    );

    let o = edgetune(&[
        "compare",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--methods",
        "lora,qqlora",
        "--steps",
        "1",
        "--out",
        s(&out),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("qqlora"));
}

/// MT-LoRA in a comparison: trained on the synthetic data's tasks (its records carry `task`),
/// measured with every held-out record routed to its task, and the suite run with every
/// task's adapter: each task's pass rate is what `edgetune eval` gives on that task's export,
/// and `eval_pass_rate` is their mean.
#[test]
fn compare_runs_mtlora_on_the_data_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q4_0", 30);
    let suite = dir.path().join("suite.jsonl");
    std::fs::write(
        &suite,
        "{\"id\": \"any\", \"input\": \"Sensor\", \"checks\": [{\"regex\": \"(?s)^.*$\"}]}\n\
         {\"id\": \"e\", \"input\": \"Switch\", \"checks\": [{\"contains\": \"e\"}]}\n\
         {\"id\": \"o\", \"input\": \"Lamp\", \"checks\": [{\"contains\": \"o\"}]}\n",
    )
    .unwrap();
    let out = dir.path().join("cmp");
    let o = edgetune(&[
        "compare",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--methods",
        "lora,mtlora",
        "--steps",
        "2",
        "--seq-len",
        "256",
        "--rank",
        "4",
        "--suite",
        s(&suite),
        "--max-tokens",
        "2",
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let results = json(&out.join("compare.json"));
    let r = &results.as_array().unwrap()[1];
    assert_eq!(r["method"], "mtlora");
    assert!(r["error"].is_null(), "{r}");
    let h = r["heldout_loss"].as_f64().unwrap();
    assert!(h.is_finite() && h > 0.0, "{h}");
    // The run's tasks are the synthetic generator's categories.
    let summary = json(&out.join("mtlora").join("summary.json"));
    let tasks = summary["config"]["method_opts"]["mtlora_tasks"]
        .as_array()
        .unwrap();
    assert!(tasks.len() >= 2, "{tasks:?}");
    // Every metrics line names the step's tasks.
    let metrics = std::fs::read_to_string(out.join("mtlora").join("metrics.jsonl")).unwrap();
    for line in metrics.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(!v["task_losses"].as_object().unwrap().is_empty(), "{line}");
        assert_eq!(v["task_weights"].as_object().unwrap().len(), tasks.len());
    }
    // The suite ran once per task; each rate is `edgetune eval` on that task's export.
    assert!(
        results[0]["eval_pass_rate_by_task"].is_null(),
        "lora has no tasks"
    );
    let by_task = r["eval_pass_rate_by_task"].as_object().unwrap();
    let mut names: Vec<&str> = tasks.iter().map(|t| t.as_str().unwrap()).collect();
    names.sort();
    assert_eq!(
        by_task.keys().map(String::as_str).collect::<Vec<_>>(),
        names
    );
    let ckpt = summary["last_checkpoint"].as_str().unwrap();
    let mut sum = 0.0;
    for name in &names {
        let export = dir.path().join(format!("task-{name}"));
        let x = edgetune(&[
            "export",
            "--model",
            s(&model),
            "--adapter",
            ckpt,
            "--format",
            "native",
            "--task",
            name,
            "--out",
            s(&export),
        ]);
        assert!(x.status.success(), "{}", String::from_utf8_lossy(&x.stderr));
        let e = edgetune(&[
            "eval",
            "--model",
            s(&model),
            "--adapter",
            s(&export),
            "--suite",
            s(&suite),
            "--max-tokens",
            "2",
            "--json",
        ]);
        assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
        let report: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
        assert_eq!(by_task[*name], report["pass_rate"], "task {name}");
        sum += report["pass_rate"].as_f64().unwrap();
    }
    let mean = r["eval_pass_rate"].as_f64().unwrap();
    assert!((mean - sum / names.len() as f64).abs() < 1e-12, "{mean}");
}
