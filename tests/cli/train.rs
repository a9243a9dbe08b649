//! `edgetune train`, `demo`, `bench train` and `--adapter` end to end through the binary.

use std::path::Path;
use std::process::Output;

use crate::cli_support::{assert_ok, edgetune, edgetune_with, read_json, s, stderr, stdout_json};
use crate::train_support;

/// `edgetune train --model MODEL --data DATA HEAD… FLAGS… TAIL…` (`flags` split at whitespace).
fn train_with(model: &Path, data: &Path, head: &[&str], flags: &str, tail: &[&str]) -> Output {
    let mut args = vec!["train", "--model", s(model), "--data", s(data)];
    args.extend_from_slice(head);
    edgetune_with(&args, flags, tail)
}

/// [`train_with`] into `--out OUT`.
fn train(model: &Path, data: &Path, out: &Path, flags: &str, tail: &[&str]) -> Output {
    train_with(model, data, &["--out", s(out)], flags, tail)
}

/// `train` with the fixture's usual small settings (`--seq-len 256`) and `flags`.
fn train_run(model: &Path, data: &Path, out: &Path, flags: &str) -> Output {
    train(model, data, out, &format!("--seq-len 256 {flags}"), &[])
}

/// The checkpoint a run into `out` wrote after `step`.
fn checkpoint(out: &Path, step: u32) -> std::path::PathBuf {
    out.join("checkpoints").join(format!("step-{step:08}"))
}

#[test]
fn train_writes_metrics_summary_and_a_checkpoint_and_planned_matches_measured() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q4_0", 400);
    let out = dir.path().join("run");
    let settings = "--seq-len 512 --batch 2 --rank 4 --alpha 8";
    let o = train(
        &model,
        &data,
        &out,
        &format!("--steps 4 {settings} --json"),
        &[],
    );
    assert_ok(&o);
    let summary = stdout_json(&o);
    let on_disk = read_json(&out.join("summary.json"));
    assert_eq!(summary, on_disk);
    assert_eq!(summary["steps"], 4);
    // Planned vs measured: the plan counts weights, arena, adapters, optimizer state and the
    // measured overheads (train/budget/overheads.rs); the peak is the process's VmHWM.
    let planned = summary["planned_bytes"].as_f64().unwrap();
    let peak = summary["peak_bytes"].as_f64().unwrap();
    let rel = (peak - planned).abs() / peak;
    assert!(
        rel <= 0.10,
        "planned {planned} vs measured peak {peak} ({:.1} %)",
        rel * 100.0
    );
    assert!(summary["memory"]["rss_file"].as_u64().unwrap() > 0);

    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["step"], i as u64 + 1);
        for key in ["loss", "lr", "grad_norm", "tok_per_s"] {
            assert!(l[key].as_f64().unwrap().is_finite(), "{key} in {l}");
        }
    }
    // The loss round-trips exactly through the JSON text.
    let text = metrics.lines().next().unwrap();
    let loss = lines[0]["loss"].as_f64().unwrap();
    assert!(text.contains(&format!("\"loss\":{loss}")), "{text}");
    let ckpt = checkpoint(&out, 4);
    for f in [
        "adapter.safetensors",
        "adapter.json",
        "optimizer.bin",
        "state.json",
    ] {
        assert!(ckpt.join(f).is_file(), "{f}");
    }

    // The adapter changes what perplexity and generate see.
    let perplexity = |tail: &[&str]| {
        let flags = "--tokens 10,20,30,40,50,60,70,80 --json";
        edgetune_with(&["perplexity", "--model", s(&model)], flags, tail)
    };
    let base = perplexity(&[]);
    let adapted = perplexity(&["--adapter", s(&ckpt)]);
    assert_ok(&adapted);
    let nll = |o: &Output| stdout_json(o)["mean_nll"].as_f64().unwrap();
    assert_ne!(nll(&base), nll(&adapted));
    let g = edgetune_with(
        &["generate", "--model", s(&model)],
        "--prompt Hi --max-tokens 4",
        &["--adapter", s(&ckpt)],
    );
    assert_ok(&g);

    // A second run from this adapter (--init-adapter) starts where the first ended.
    let out2 = dir.path().join("run2");
    let flags = format!("--steps 1 {settings}");
    let o = train(
        &model,
        &data,
        &out2,
        &flags,
        &["--init-adapter", s(&ckpt), "--json"],
    );
    assert_ok(&o);
    let first_fresh = lines[0]["loss"].as_f64().unwrap();
    assert_ne!(stdout_json(&o)["first_loss"].as_f64().unwrap(), first_fresh);
}

#[test]
fn over_budget_is_refused_before_anything_is_written_with_suggestions() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q4_0", 50);
    let out = dir.path().join("run");
    let flags = "--steps 2 --seq-len 512 --batch 4 --budget 40MiB";
    let o = train(&model, &data, &out, flags, &[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("over budget") && err.contains("41943040"),
        "{err}"
    );
    assert!(
        err.contains("--batch 1") || err.contains("seq-len"),
        "{err}"
    );
    assert!(!out.join("checkpoints").exists());
}

#[test]
fn bench_train_reports_throughput_and_peak_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = train_support::write_fixture(dir.path(), "q4_0", 10);
    let o = edgetune_with(
        &["bench", "train", "--model", s(&model)],
        "--seq-len 64 --rank 4 --steps 2 --json",
        &[],
    );
    assert_ok(&o);
    let v = stdout_json(&o);
    assert_eq!(v["steps"], 2);
    assert!(v["tok_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["peak_rss_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn bench_forward_reports_prompt_and_generation_speed_for_both_arithmetics() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = train_support::write_fixture(dir.path(), "q4_0", 10);
    for compute in ["int8", "f32"] {
        let o = edgetune_with(
            &["bench", "forward", "--model", s(&model)],
            "--prompt-tokens 32 --gen-tokens 8 --reps 1 --compute",
            &[compute, "--json"],
        );
        assert_ok(&o);
        let v = stdout_json(&o);
        assert_eq!(v["compute"], compute);
        assert_eq!(v["prompt_tokens"], 32);
        assert_eq!(v["gen_tokens"], 8);
        assert!(v["prefill_tok_per_s"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["decode_tok_per_s"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["peak_rss_bytes"].as_u64().unwrap() > 0, "{v}");
    }
}

#[test]
fn data_synth_creates_the_directories_it_writes_into() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("new").join("data");
    let o = edgetune(&[
        "data",
        "synth",
        "--set",
        "assistant",
        "--out",
        s(&data.join("train.jsonl")),
        "--heldout",
        s(&data.join("heldout.jsonl")),
        "--suites",
        s(&dir.path().join("suites")),
    ]);
    assert_ok(&o);
    for f in [
        data.join("train.jsonl"),
        data.join("heldout.jsonl"),
        dir.path().join("suites").join("harmful.jsonl"),
        dir.path().join("suites").join("retention.jsonl"),
    ] {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.lines().count() > 0, "{} is empty", f.display());
    }
}

#[test]
fn demo_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let o = edgetune_with(
        &["demo", "--synthetic", "--dir", s(dir.path())],
        "--steps 2 --seq-len 512 --batch 1",
        &[],
    );
    assert_ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        "memory plan",
        "TOTAL",
        "loss per step",
        "before",
        "after",
        "random weights",
    ] {
        assert!(out.contains(want), "{want} missing from:\n{out}");
    }
    assert!(dir.path().join("run").join("metrics.jsonl").is_file());
}

/// `--layers 1-1` on the 2-layer tiny model: only layer 1 gets adapters; the backward stops
/// there. At initialisation `B = 0`, so the layer-0 adapters of a full run change nothing in
/// the forward, and without gradient clipping (which would mix in their norm) AdamW moves
/// every layer-1 parameter exactly as the full run does: one step must agree bit for bit.
#[test]
fn layers_adapt_only_the_range_and_train_it_as_a_full_run_does() {
    use edgetune::adapters::Target;
    use edgetune::gguf::GgufFile;
    use edgetune::model::LlamaConfig;
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q4_0", 40);
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let flags = "--steps 1 --seq-len 512 --rank 4 --max-grad-norm 0 --json";
        let o = train(&model, &data, &out, flags, extra);
        assert_ok(&o);
        (checkpoint(&out, 1), stdout_json(&o))
    };
    let (full, full_summary) = run("full", &[]);
    let (top, top_summary) = run("top", &["--layers", "1-1"]);
    assert_eq!(
        top_summary["trainable_params"].as_u64().unwrap() * 2,
        full_summary["trainable_params"].as_u64().unwrap()
    );
    let cfg = LlamaConfig::from_gguf(&GgufFile::open(&model).unwrap()).unwrap();
    let full = edgetune::export::native::load_adapter(&full, &cfg).unwrap();
    let top = edgetune::export::native::load_adapter(&top, &cfg).unwrap();
    assert_eq!(top.first_adapted_layer(), Some(1));
    assert_eq!(top.len(), Target::ALL.len());
    for t in Target::ALL {
        assert!(top.get(0, t).is_none());
        let (a, b) = (top.get(1, t).unwrap(), full.get(1, t).unwrap());
        assert_eq!(a.params(), b.params(), "layer 1 {t:?}");
    }

    // The PEFT export names the adapted layers; a range past the model is refused.
    let peft = dir.path().join("peft");
    let adapter = dir.path().join("top/checkpoints/step-00000001");
    let o = edgetune_with(
        &["export", "--model", s(&model), "--adapter", s(&adapter)],
        "--format peft",
        &["--out", s(&peft)],
    );
    assert_ok(&o);
    let cfg_json = read_json(&peft.join("adapter_config.json"));
    assert_eq!(cfg_json["layers_to_transform"], serde_json::json!([1]));
    let o = edgetune(&["plan", "--model", s(&model), "--layers", "1-5"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("1-5") && err.contains("2 layers"), "{err}");
}

#[test]
fn train_replay_self_plans_generates_caches_and_refuses_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q8_0", 40);
    let out = dir.path().join("run");
    let run = |extra: &str| {
        let flags = format!("--steps 2 --seq-len 256 --batch 2 --rank 2 --json {extra}");
        train(&model, &data, &out, &flags, &[])
    };
    let o = run("--replay self --replay-prompts 12 --replay-tokens 24");
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    // The plan counts the replay data; the run says what it generated and where it is cached.
    assert!(err.contains("replay data"), "{err}");
    assert!(
        err.contains("replay: the base model answered") && err.contains("of 12 general prompts"),
        "{err}"
    );
    let summary = stdout_json(&o);
    assert!(summary["replay"]["generate_s"].as_f64().unwrap() > 0.0);
    assert_eq!(summary["replay"]["ratio"].as_f64(), Some(0.25));
    assert_eq!(summary["config"]["replay"]["self"]["prompts"], 12);
    let cache = summary["replay"]["path"].as_str().unwrap().to_string();
    assert!(Path::new(&cache).is_file());
    // The same run again into the same directory (started over): the answers come from the
    // cache, which --overwrite keeps.
    let o = run("--replay self --replay-prompts 12 --replay-tokens 24 --overwrite");
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("answers of the base model from {cache}")),
        "{err}"
    );
    // Bad settings are refused by name.
    for (extra, want) in [
        ("--replay self --replay-ratio 1", "--replay-ratio"),
        (
            "--replay-prompts 3",
            "--replay-prompts is for --replay self",
        ),
        ("--replay self --replay-tokens 2", "8 answer tokens"),
        (
            "--replay /nonexistent/general.jsonl",
            "/nonexistent/general.jsonl",
        ),
    ] {
        let o = run(extra);
        assert!(!o.status.success(), "{extra:?}");
        let err = stderr(&o);
        assert!(err.contains(want), "{extra:?}: {err}");
    }
}

#[test]
fn train_kl_anchor_plans_its_buffers_and_reports_the_kl_of_replay_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q8_0", 40);
    let run = |out: &Path, extra: &[&str]| {
        let flags = "--steps 3 --seq-len 256 --batch 2 --rank 2 --lr 1e-2 --json";
        train(&model, &data, out, flags, extra)
    };
    let out = dir.path().join("kl");
    // Half the rows are replay rows (the training data again, as "general" data); with
    // --replay the anchor is on at λ = 0.5 unless --kl-anchor says otherwise.
    let o = run(&out, &["--replay", s(&data), "--replay-ratio", "0.5"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("kl anchor") && err.contains("base hidden states"),
        "{err}"
    );
    let summary = stdout_json(&o);
    assert_eq!(summary["config"]["kl_anchor"].as_f64(), Some(0.5));
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let kl: Vec<f64> = lines
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["kl"].as_f64().unwrap_or_else(|| panic!("no kl in {l}"))
        })
        .collect();
    // Step 1 starts at the base model (B = 0): no divergence yet; then the adapter moves it.
    assert_eq!(kl.len(), 3, "{lines}");
    assert!(kl[0].abs() < 1e-6 && kl[2] > 0.0, "{kl:?}");
    // Without the anchor the lines carry no kl; the anchor needs replay rows.
    let plain = [
        "--replay",
        s(&data),
        "--replay-ratio",
        "0.5",
        "--kl-anchor",
        "0",
    ];
    let o = run(&dir.path().join("plain"), &plain);
    assert!(o.status.success());
    let lines = std::fs::read_to_string(dir.path().join("plain/metrics.jsonl")).unwrap();
    assert!(!lines.contains("\"kl\""), "{lines}");
    let o = run(&dir.path().join("bad"), &["--kl-anchor", "0.5"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("--kl-anchor") && err.contains("--replay"),
        "{err}"
    );
}

#[test]
fn train_eval_every_records_pass_rates_and_keep_best_keeps_the_first_best_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q8_0", 40);
    let out = dir.path().join("run");
    // One case every answer passes, one none does: 0.5 at every point.
    let heldout = dir.path().join("heldout.jsonl");
    std::fs::write(
        &heldout,
        concat!(
            r#"{"id": "any", "input": "Say something.", "checks": [{"regex": "^"}]}"#,
            "\n",
            r#"{"id": "never", "input": "Say zq.", "checks": [{"contains": "zq-never-zq"}]}"#,
            "\n",
        ),
    )
    .unwrap();
    let train = |steps: &str, extra: &[&str]| {
        let head = ["--steps", steps, "--heldout", s(&heldout)];
        let flags = "--seq-len 256 --rank 2 --eval-every 2 --eval-max-tokens 4 --keep-best \
                     --save-every 2 --json";
        train_with(&model, &data, &head, flags, extra)
    };
    let o = train("5", &["--out", s(&out)]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("eval after step 2: held-out 50.0 %"), "{err}");
    let summary = stdout_json(&o);
    assert_eq!(summary["eval_base"]["step"], 0);
    assert_eq!(summary["eval_base"]["heldout"].as_f64(), Some(0.5));
    let steps: Vec<u64> = summary["evals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [2, 4, 5], "every 2 steps and the last");
    // Equal scores: the first is kept.
    assert_eq!(summary["best"]["step"], 2);
    let best = out.join("best");
    assert_eq!(summary["best"]["path"].as_str(), best.to_str());
    let kept = read_json(&best.join("best.json"));
    assert_eq!(kept["step"], 2);
    // The kept adapter is an adapter `--adapter` takes.
    let g = edgetune_with(
        &["generate", "--model", s(&model), "--adapter", s(&best)],
        "--prompt hi --max-tokens 2",
        &[],
    );
    assert_ok(&g);
    // The metrics lines of the evaluated steps carry the pass rates.
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let evaluated: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["eval"]["retention"].is_number())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(evaluated, [2, 4, 5]);
    assert!(
        !out.join("eval-adapter").exists(),
        "no stray evaluation adapter"
    );
    // A resume keeps the best from before it; the evaluation settings may change.
    let o = train("7", &["--resume", s(&out), "--retention-tolerance", "0.2"]);
    assert_ok(&o);
    assert_eq!(stdout_json(&o)["best"]["step"], 2);
    // --keep-best without a held-out suite is refused by name.
    let o = self::train(&model, &data, &out, "--steps 1 --keep-best", &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--heldout"));
}

#[test]
fn a_nan_weight_is_named_before_the_first_step() {
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = train_support::write_fixture(dir.path(), "q4_0", 20);
    let model = train_support::write_nan_model(dir.path());
    let out = dir.path().join("run");
    let o = train_run(&model, &data, &out, "--steps 2");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("nan.gguf")
            && err.contains("blk.0.attn_q.weight")
            && err.contains("row 0, column 10 is NaN"),
        "{err}"
    );
    assert!(!err.contains("step 1/"), "{err}");
    assert!(!out.join("checkpoints").exists());
}

#[test]
fn a_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "f32", 40);
    // lr 1e30 makes step 1's update blow the adapter up: step 2's loss is not finite.
    for (clip, advice) in [
        ("0", "clip the gradient with --max-grad-norm 1"),
        ("1", "even with the gradient clipped to --max-grad-norm 1"),
    ] {
        let out = dir.path().join(format!("run-{clip}"));
        let flags = format!("--steps 6 --lr 1e30 --max-grad-norm {clip} --save-every 1");
        let o = train_run(&model, &data, &out, &flags);
        assert_eq!(o.status.code(), Some(1));
        let err = stderr(&o);
        assert!(
            err.contains("training stopped at step 2")
                && err.contains("the loss of micro-batch 1 of 1 is")
                && err.contains("lower --lr (now 1e30)")
                && err.contains(advice),
            "{err}"
        );
        let ckpts: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(ckpts, vec!["step-00000001".to_string()], "{err}");
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        assert_eq!(metrics.lines().count(), 1);
    }
}

#[test]
fn bad_inputs_and_settings_get_messages_that_name_them() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q4_0", 20);
    let out = dir.path().join("run");
    let err_of = |o: Output| {
        assert_eq!(o.status.code(), Some(1));
        stderr(&o)
    };
    // A rank above a projection's width: refused before anything is allocated or written.
    let e = err_of(train_run(&model, &data, &out, "--steps 1 --rank 100000"));
    assert!(
        e.contains("--rank 100000") && e.contains("attn_k") && e.contains("256×128"),
        "{e}"
    );
    assert!(!out.exists());
    // Invalid UTF-8 in the dataset: the line is named.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, b"{\"text\": \"fine\"}\n{\"text\": \"ab\xffcd\"}\n").unwrap();
    let e = err_of(train_run(
        &model,
        &bad,
        &dir.path().join("run2"),
        "--steps 1",
    ));
    assert!(
        e.contains("bad.jsonl: line 2") && e.contains("not valid UTF-8") && e.contains("0xff"),
        "{e}"
    );
    // A directory as the model.
    let e = err_of(train_run(
        dir.path(),
        &data,
        &dir.path().join("run3"),
        "--steps 1",
    ));
    assert!(e.contains("is a directory"), "{e}");
    assert!(!e.contains("No such device"), "{e}");
    // Optimizer flags SGD ignores.
    let flags = "--steps 1 --optimizer sgd --optimizer-state disk --optimizer-state-bits 8";
    let e = err_of(train_run(&model, &data, &out, flags));
    assert!(
        e.contains("--optimizer-state disk and --optimizer-state-bits 8")
            && e.contains("--optimizer sgd"),
        "{e}"
    );
}

/// `train --compute int8`: the forward through the frozen weights in llama.cpp's arithmetic;
/// the first loss is that of the same model and data, a little off f32's (f32 is the default).
#[test]
fn train_compute_int8_runs_and_stays_near_f32() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q4_0", 40);
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let o = train(
            &model,
            &data,
            &out,
            "--steps 2 --seq-len 256 --rank 4 --json",
            extra,
        );
        assert_ok(&o);
        stdout_json(&o)["first_loss"].as_f64().unwrap()
    };
    let default = run("default", &[]);
    let f32_ = run("f32", &["--compute", "f32"]);
    let int8 = run("int8", &["--compute", "int8"]);
    assert_eq!(default, f32_);
    assert!(int8.is_finite());
    assert!(
        (int8 - f32_).abs() < 0.05 * f32_,
        "int8 {int8} vs f32 {f32_}"
    );
    let bad = train(
        &model,
        &data,
        &dir.path().join("bad"),
        "--compute int4",
        &[],
    );
    assert!(!bad.status.success());
}
