//! `edgetune compare` end to end on a generated tiny model: one LoRA run (a few steps) measured
//! and written as compare.json / compare.md / compare.svg; the measures checked against the
//! run's own files and against `edgetune eval` (the base row's without an adapter, the
//! retention suite's too); per-method learning rates and `--method-opt` reaching the runs; a
//! separate held-out file; a failing method recorded, not fatal to the comparison.

use std::path::Path;
use std::process::Output;

use edgetune::compare::chart::method_color;
use edgetune::compare::opts::default_lr;
use edgetune::eval::plot::{BASE_COLOR, svg_hex};

use crate::cli_support::{assert_ok, edgetune_with, read_json as json, s, stderr, stdout_json};
use crate::train_support;

/// `edgetune compare --model MODEL --data DATA FLAGS… TAIL…` (`flags` split at whitespace).
fn compare(model: &Path, data: &Path, flags: &str, tail: &[&str]) -> Output {
    edgetune_with(
        &["compare", "--model", s(model), "--data", s(data)],
        flags,
        tail,
    )
}

/// `edgetune eval --json` of `suite` with `adapter` (or none), answers of `max_tokens`.
fn eval(model: &Path, adapter: Option<&Path>, suite: &Path, max_tokens: &str) -> serde_json::Value {
    let mut args = vec!["eval", "--model", s(model), "--suite", s(suite)];
    if let Some(a) = adapter {
        args.extend(["--adapter", s(a)]);
    }
    let e = edgetune_with(&args, "--max-tokens", &[max_tokens, "--json"]);
    assert_ok(&e);
    stdout_json(&e)
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
    let retention = dir.path().join("retention.jsonl");
    std::fs::write(
        &retention,
        "{\"id\": \"any\", \"input\": \"Lamp\", \"checks\": [{\"regex\": \"(?s)^.*$\"}]}\n\
         {\"id\": \"never\", \"input\": \"Switch\", \"checks\": [{\"contains\": \"zzzzzz\"}]}\n\
         {\"id\": \"e\", \"input\": \"Door\", \"checks\": [{\"contains\": \"e\"}]}\n",
    )
    .unwrap();
    let out = dir.path().join("cmp");
    let o = compare(
        &model,
        &data,
        "--methods lora --steps 2 --seq-len 512 --rank 4 --lr 1e-3 --max-tokens 4",
        &[
            "--suite",
            s(&suite),
            "--retention",
            s(&retention),
            "--out",
            s(&out),
        ],
    );
    assert_ok(&o);
    let printed = String::from_utf8(o.stdout).unwrap();
    assert!(printed.contains("| lora |"), "{printed}");
    assert!(printed.contains("| base (no adapter) |"), "{printed}");
    assert!(
        printed.contains("| held-out pass | retention | score |"),
        "{printed}"
    );
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
    assert_eq!(list.len(), 2, "the base row, then lora");
    let base = &list[0];
    assert_eq!(base["method"], "base");
    assert!(base["error"].is_null(), "{base}");
    assert!(base["score"].is_null() && base["trainable_params"].is_null());
    let r = &list[1];
    assert_eq!(r["method"], "lora");
    assert!(r["error"].is_null(), "{r}");
    assert_eq!(r["score"], 1.0, "LoRA is the baseline");
    assert_eq!(r["lr"], 1e-3, "--lr overrides the default");
    assert!(r["train_seconds"].as_f64().unwrap() > 0.0);
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
    // Held-out loss: a mean cross-entropy, finite and positive, the base model's too (and the
    // adapter changed it: two steps at 1e-3 move a random model).
    let heldout = r["heldout_loss"].as_f64().unwrap();
    assert!(heldout.is_finite() && heldout > 0.0, "{heldout}");
    let base_heldout = base["heldout_loss"].as_f64().unwrap();
    assert!(
        base_heldout.is_finite() && base_heldout != heldout,
        "{base_heldout}"
    );
    // Both pass rates are what `edgetune eval` gives with the same adapter (or none) and suite.
    let eval = |adapter: Option<&Path>, suite: &Path| eval(&model, adapter, suite, "4");
    let report = eval(Some(ckpt), &suite);
    assert_eq!(r["eval_pass_rate"], report["pass_rate"]);
    assert!(
        report["passed"].as_u64().unwrap() >= 1,
        "the `any` case always passes"
    );
    let kept = eval(Some(ckpt), &retention);
    assert_eq!(r["retention_pass_rate"], kept["pass_rate"]);
    assert_eq!(kept["total"], 3);
    assert_eq!(base["eval_pass_rate"], eval(None, &suite)["pass_rate"]);
    assert_eq!(
        base["retention_pass_rate"],
        eval(None, &retention)["pass_rate"]
    );

    // compare.svg: the lora loss curve (one point per step) and lora's four bars, the base
    // model's pass-rate bar.
    let svg = std::fs::read_to_string(out.join("compare.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    let lora = svg_hex(method_color("lora"));
    let bars = |hex: &str| {
        doc.descendants()
            .filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some(hex))
            .count()
    };
    assert_eq!(bars(&lora), 4);
    assert_eq!(bars(&svg_hex(BASE_COLOR)), 1);
    let curve = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke") == Some(lora.as_str()))
        .map(|n| n.attribute("points").unwrap().split_whitespace().count())
        .max();
    assert_eq!(curve, Some(2), "one point per step");
}

#[test]
fn a_failing_method_is_recorded_and_unknown_methods_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q4_0", 20);
    let out = dir.path().join("cmp");
    // A budget nothing fits: the run fails, compare.json says why, the exit status is failure
    // (every method failed).
    let flags = "--methods lora --steps 1 --seq-len 64 --rank 4 --budget 1MiB";
    let o = compare(&model, &data, flags, &["--out", s(&out)]);
    assert!(!o.status.success());
    let results = json(&out.join("compare.json"));
    assert_eq!(results[0]["method"], "base");
    assert!(results[0]["score"].is_null());
    let r = &results[1];
    assert_eq!(r["method"], "lora");
    let e = r["error"].as_str().unwrap();
    assert!(e.contains("train.log"), "{e}");
    assert!(r["score"].is_null());
    assert!(
        std::fs::read_to_string(out.join("compare.md"))
            .unwrap()
            .contains("lora (failed)")
    );

    let o = compare(
        &model,
        &data,
        "--methods lora,qqlora --steps 1",
        &["--out", s(&out)],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("qqlora"));
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
    let o = compare(
        &model,
        &data,
        "--methods lora,mtlora --steps 2 --seq-len 256 --rank 4 --max-tokens 2",
        &["--suite", s(&suite), "--out", s(&out)],
    );
    assert_ok(&o);
    let results = json(&out.join("compare.json"));
    let r = &results.as_array().unwrap()[2];
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
        results[1]["eval_pass_rate_by_task"].is_null(),
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
        let x = edgetune_with(
            &["export", "--model", s(&model), "--adapter", ckpt],
            "--format native --task",
            &[name, "--out", s(&export)],
        );
        assert_ok(&x);
        let report = eval(&model, Some(&export), &suite, "2");
        assert_eq!(by_task[*name], report["pass_rate"], "task {name}");
        sum += report["pass_rate"].as_f64().unwrap();
    }
    let mean = r["eval_pass_rate"].as_f64().unwrap();
    assert!((mean - sum / names.len() as f64).abs() < 1e-12, "{mean}");
}

/// Without --lr each method trains at its own default; `--method-opt` sets one method's flag
/// (here lora's learning rate and AdaLoRA's target rank) or every method's (`all:`) and is
/// recorded; `--heldout-data` holds out a separate file and trains on all of --data.
#[test]
fn per_method_learning_rates_and_options_reach_the_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q4_0", 12);
    let held = dir.path().join("held.jsonl");
    let (extra, _) = edgetune::data::synth::generate(9, 3);
    let lines: String = extra
        .iter()
        .map(|ex| serde_json::to_string(ex).unwrap() + "\n")
        .collect();
    std::fs::write(&held, lines).unwrap();
    let out = dir.path().join("cmp");
    // The same run with a given suite and extra flags.
    let compare = |suite: &Path, extra: &[&str]| {
        let mut tail = vec![
            "--heldout-data",
            s(&held),
            "--suite",
            s(suite),
            "--out",
            s(&out),
        ];
        tail.extend_from_slice(extra);
        let flags = "--methods adalora --steps 1 --seq-len 512 --rank 4 \
                     --method-opt lora:lr=0.003 --method-opt adalora:--adalora-target-r=2";
        compare(&model, &data, flags, &tail)
    };
    let o = compare(&dir.path().join("none.jsonl"), &[]);
    // A missing --suite file is an error before anything trains.
    assert!(!o.status.success());
    assert!(stderr(&o).contains("none.jsonl"));
    assert!(!out.join("lora").exists());

    let suite = dir.path().join("suite.jsonl");
    std::fs::write(
        &suite,
        "{\"id\": \"any\", \"input\": \"Sensor\", \"checks\": [{\"regex\": \"(?s)^.*$\"}]}\n",
    )
    .unwrap();
    let o = compare(
        &suite,
        &["--max-tokens", "1", "--method-opt", "all:warmup-steps=1"],
    );
    assert_ok(&o);
    // All 12 records trained on: no split file, the held-out file named in compare.md.
    assert!(!out.join("train.jsonl").exists());
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(
        md.contains("12 records trained on, 3 held out from"),
        "{md}"
    );
    assert!(
        md.contains("- adalora: lr 2e-3, --warmup-steps=1 --adalora-target-r=2"),
        "{md}"
    );
    let results = json(&out.join("compare.json"));
    let names: Vec<&str> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["method"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base", "lora", "adalora"]);
    let config = |m: &str| json(&out.join(m).join("summary.json"))["config"].clone();
    // lora: its --method-opt; adalora: the table's rate and its own option.
    let lora = config("lora");
    assert_eq!(lora["lr"].as_f64().unwrap() as f32, 0.003);
    assert_eq!(lora["data"], s(&data), "trained on the whole --data");
    assert_eq!(results[1]["lr"], 0.003);
    assert_eq!(results[1]["method_opts"][1], "--lr=0.003");
    // `all:` reached both runs.
    assert_eq!(lora["warmup_steps"], 1);
    assert_eq!(config("adalora")["warmup_steps"], 1);
    let ada = config("adalora");
    assert_eq!(
        ada["lr"].as_f64().unwrap() as f32,
        default_lr("adalora").unwrap()
    );
    assert_ne!(default_lr("adalora").unwrap(), default_lr("lora").unwrap());
    assert_eq!(ada["method_opts"]["adalora_target_r"], 2);
    assert_eq!(results[2]["method_opts"][1], "--adalora-target-r=2");
    for r in results.as_array().unwrap() {
        assert!(r["error"].is_null(), "{r}");
        assert!(r["heldout_loss"].as_f64().unwrap() > 0.0, "{r}");
    }
}

/// Bad `--method-opt`s and conflicting held-out flags fail before anything trains.
#[test]
fn bad_method_opts_are_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q4_0", 6);
    let out = dir.path().join("cmp");
    let run = |extra: &[&str]| {
        let mut tail = vec!["--out", s(&out)];
        tail.extend_from_slice(extra);
        let o = compare(&model, &data, "--methods lora --steps 1", &tail);
        assert!(!o.status.success(), "{extra:?} should fail");
        assert!(!out.join("lora").exists(), "{extra:?}: nothing trained");
        stderr(&o)
    };
    let e = run(&["--method-opt", "qqlora:lr=1e-3"]);
    assert!(e.contains("unknown method `qqlora`"), "{e}");
    let e = run(&["--method-opt", "lora:no-such-flag=1"]);
    assert!(e.contains("has no --no-such-flag"), "{e}");
    let e = run(&["--method-opt", "lora:rank"]);
    assert!(e.contains("--rank takes a value"), "{e}");
    let e = run(&["--method-opt", "lora:pack=yes"]);
    assert!(e.contains("--pack is a switch"), "{e}");
    let e = run(&["--method-opt", "lora:out=elsewhere"]);
    assert!(e.contains("set by compare"), "{e}");
    let e = run(&["--heldout", "0.2", "--heldout-data", s(&data)]);
    assert!(
        e.contains("--heldout-data") && e.contains("--heldout"),
        "{e}"
    );
}
