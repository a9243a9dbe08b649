//! Every wired `--method` trains on the tiny model (the loss falls), checkpoints, and reloads:
//! a resumed trainer holds bit-identical parameters; low-rank methods reload through
//! `load_any` as the same `ΔW`, merge-only ones point at `edgetune merge` and rebuild on the
//! base. DoRA, AdaLoRA, layerimp and ResLoRA (with its norm window) resume exactly (2 + 2
//! steps against 4). The memory plan's adapter
//! numbers equal the built adapters' for every method.

use std::path::Path;

use edgetune::adapters::Target;
use edgetune::adapters::adalora::AdaLora;
use edgetune::adapters::reslora::ResLora;
use edgetune::gguf::GgufFile;
use edgetune::model::{LlamaConfig, LlamaWeights};
use edgetune::train::budget;
use edgetune::train::method_hooks::MethodHooks;
use edgetune::train::method_plan::{adapter_cost, method_wide_bytes};
use edgetune::train::{Method, TrainConfig, Trainer, method_io, target_shape};

use crate::cli_support::edgetune;
use crate::train_support;

/// Steps per method run; the loss compares the mean of the first and of the last three.
const STEPS: u64 = 8;

/// The tiny model and a short `{"text"}` dataset (64-byte sequences keep every method's run
/// to about a second).
fn fixture(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (model, _) = train_support::write_fixture(dir, "q4_0", 4);
    let data = dir.join("short.jsonl");
    let lines: Vec<String> = (0..40)
        .map(|i| {
            let text = format!("sensor {} reads {} C; status ok. ", i % 7, 20 + i % 5);
            serde_json::json!({ "text": text.repeat(2) }).to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    (model, data)
}

fn config(model: &Path, data: &Path, out: &Path, method: Method) -> TrainConfig {
    let mut cfg = train_support::config(model, data, out, STEPS);
    cfg.method = method;
    cfg.seq_len = 64;
    cfg.batch = 2;
    cfg.lr = 2e-3;
    // AdaLoRA: prune from 4 to 2 components per linear over the run.
    cfg.method_opts.adalora_target_r = Some(2);
    cfg.method_opts.adalora_tinit = 2;
    cfg.method_opts.adalora_tfinal = 3;
    cfg
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * scale,
            "{what}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}

#[test]
fn every_wired_method_trains_checkpoints_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture(dir.path());
    let file = GgufFile::open(&model).unwrap();
    let model_cfg = LlamaConfig::from_gguf(&file).unwrap();
    let pool = train_support::two_threads();
    pool.install(|| {
        for method in Method::ALL {
            let out = dir.path().join(method.name());
            let cfg = config(&model, &data, &out, method);
            let t0 = std::time::Instant::now();
            let mut t = Trainer::new(&file, &cfg).unwrap();
            assert!(
                t.adapters().iter().count() > 0,
                "{method}: no adapters built"
            );
            let mut losses = Vec::new();
            while let Some(p) = t.step().unwrap() {
                assert!(p.loss.is_finite(), "{method}: loss {}", p.loss);
                losses.push(p.loss);
            }
            assert_eq!(losses.len() as u64, STEPS, "{method}");
            let first = losses[..3].iter().sum::<f64>() / 3.0;
            let last = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
            assert!(last < first, "{method}: the loss did not fall: {losses:?}");
            if method == Method::Adalora {
                // The budget pruned components: at most target_r·L live at the end.
                let live: usize = t
                    .adapters()
                    .iter()
                    .map(|(_, _, a)| a.downcast_ref::<AdaLora>().unwrap().active_rank())
                    .sum();
                assert!(
                    live <= 2 * t.adapters().len(),
                    "adalora: {live} live components"
                );
            }
            eprintln!("{method}: {STEPS} steps in {:.2?}", t0.elapsed());
            if matches!(method, Method::Dylora | Method::Qdylora) {
                // Every rank evaluated; the export rank is the lowest-loss one.
                let (b, losses) = t.choose_dylora_rank().unwrap().unwrap();
                assert_eq!(losses.len(), cfg.lora.rank, "{method}");
                let min = losses.iter().cloned().fold(f64::INFINITY, f64::min);
                assert_eq!(losses[b - 1], min, "{method}: {losses:?}");
                let dy = t.adapters().iter().next().unwrap().2;
                let dy = dy
                    .downcast_ref::<edgetune::adapters::dylora::Dylora>()
                    .unwrap();
                assert_eq!(dy.eval_rank(), b, "{method}");
            }
            let ckpt = t.checkpoint().unwrap();
            let trained = train_support::all_params(t.adapters());

            // Export form: a plain LoRA with the same ΔW, or merge-only.
            if method.merge_only() {
                let e = edgetune::export::load_any(&ckpt, &model_cfg)
                    .unwrap_err()
                    .to_string();
                assert!(e.contains("edgetune merge"), "{method}: {e}");
                let set = method_io::load_set(&ckpt, &file).unwrap();
                for ((_, _, a), (_, _, b)) in set.iter().zip(t.adapters().iter()) {
                    assert_eq!(
                        train_support::delta_weight(a),
                        train_support::delta_weight(b),
                        "{method}"
                    );
                }
            } else {
                let set = edgetune::export::load_any(&ckpt, &model_cfg).unwrap();
                assert_eq!(set.len(), t.adapters().len(), "{method}");
                for ((l, tg, a), (_, _, b)) in set.iter().zip(t.adapters().iter()) {
                    assert_close(
                        &train_support::delta_weight(a),
                        &train_support::delta_weight(b),
                        &format!("{method} blk.{l}.{}", tg.gguf_stem()),
                    );
                }
            }
            // The run directory is the trainer's until it is dropped (run_dir.rs's lock).
            drop(t);
            // A resumed trainer restores every parameter bit for bit.
            let resumed = Trainer::new(&file, &train_support::resuming(&cfg)).unwrap();
            assert_eq!(resumed.completed(), STEPS, "{method}");
            assert!(
                train_support::all_params(resumed.adapters()) == trained,
                "{method}: resumed params differ"
            );
        }
    });
}

/// 2 steps, checkpoint, resume, 2 steps = 4 steps, bit for bit (per-step losses and params).
#[test]
fn dora_and_adalora_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture(dir.path());
    let file = GgufFile::open(&model).unwrap();
    let pool = train_support::two_threads();
    pool.install(|| {
        for method in [
            Method::Dora,
            Method::Adalora,
            Method::Layerimp,
            Method::Reslora,
        ] {
            let mut cfg = config(&model, &data, &dir.path().join("full"), method);
            cfg.steps = Some(4);
            cfg.method_opts.adalora_tinit = 0;
            cfg.method_opts.adalora_tfinal = 1;
            let mut full = Trainer::new(&file, &cfg).unwrap();
            let want = train_support::loss_bits(&mut full);
            let cut = TrainConfig {
                out: dir.path().join(format!("cut-{method}")),
                ..cfg.clone()
            };
            let (mut got, mut second) = train_support::cut_and_resume(&file, &cut);
            got.extend(train_support::loss_bits(&mut second));
            assert_eq!(got, want, "{method}: per-step losses differ after resume");
            assert!(
                train_support::all_params(second.adapters())
                    == train_support::all_params(full.adapters()),
                "{method}: final params differ after resume"
            );
            // ResLoRA: merge_bw's norm window is restored too (its export α).
            for ((_, _, a), (_, _, b)) in second.adapters().iter().zip(full.adapters().iter()) {
                if let (Some(x), Some(y)) =
                    (a.downcast_ref::<ResLora>(), b.downcast_ref::<ResLora>())
                {
                    assert_eq!(x.norm_window(), y.norm_window(), "{method}: norm window");
                    assert_eq!(
                        y.norm_window().cur.len(),
                        4,
                        "{method}: one record per pass"
                    );
                }
            }
        }
    });
}

/// The plan's per-method numbers (train/method_plan.rs) equal the built adapters'.
#[test]
fn plan_adapter_bytes_match_the_built_adapters() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture(dir.path());
    let file = GgufFile::open(&model).unwrap();
    let mc = LlamaConfig::from_gguf(&file).unwrap();
    let weights = LlamaWeights::from_gguf(&file, &mc).unwrap();
    for method in Method::ALL {
        let mut cfg = config(&model, &data, &dir.path().join("p"), method);
        cfg.lora.dropout = if method == Method::Hira { 0.1 } else { 0.0 };
        let set =
            edgetune::train::build_adapters(method, &mc, &cfg, STEPS, 1, Some(&weights)).unwrap();
        let mut extra = 0u64;
        let mut n_params = 0u64;
        for (l, t, a) in set.iter() {
            let (fi, fo) = target_shape(&mc, t);
            let name = format!("blk.{l}.{}.weight", t.gguf_stem());
            let base = file.tensor(&name).unwrap().n_bytes;
            let c = adapter_cost(method, &cfg.lora, &cfg.method_opts, fi, fo, base);
            let w = a.workspace();
            let what = format!("{method} blk.{l}.{}", t.gguf_stem());
            assert_eq!(c.shape.saved_per_token, w.saved_per_token, "{what} saved");
            assert_eq!(
                c.shape.scratch_per_token, w.scratch_per_token,
                "{what} scratch"
            );
            let numels: Vec<u64> = a.params().iter().map(|p| p.numel() as u64).collect();
            assert_eq!(c.tensors, numels, "{what} tensors");
            assert_eq!(c.extra_bytes, a.extra_bytes() as u64, "{what} extra");
            extra += c.extra_bytes;
            n_params += a.n_params() as u64;
        }
        let hooks = MethodHooks::new(method, &set, cfg.method_opts.layerimp_tau).unwrap();
        let wide = method_wide_bytes(method, &cfg.lora, &cfg.method_opts, mc.n_layer, set.len());
        assert_eq!(wide, hooks.bytes() as u64, "{method} method-wide bytes");
        // ResLoRA's cross-layer store, as the step allocates it.
        let store =
            edgetune::train::step_reslora::store_bytes(&set, mc.n_layer, cfg.batch * cfg.seq_len)
                as u64;
        assert_eq!(store > 0, method == Method::Reslora, "{method} store");
        let plan = budget::plan_training(&file, &cfg).unwrap();
        assert_eq!(plan.breakdown.adapters.n_params, n_params, "{method}");
        assert_eq!(
            plan.breakdown.adapters.extra_bytes,
            extra + wide + store,
            "{method}"
        );
        assert_eq!(set.len(), Target::ALL.len() * mc.n_layer, "{method}");
    }
}

/// `edgetune plan --method`: the method's extras enter the plan (none for LoRA).
#[test]
fn cli_plan_and_train_take_the_method() {
    let plan = |method: &str| -> serde_json::Value {
        let out = edgetune(&[
            "plan", "--preset", "tiny", "--method", method, "--rank", "4", "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let extra = |v: &serde_json::Value| v["breakdown"]["adapters"]["extra_bytes"].as_u64().unwrap();
    let (lora, dora, adalora) = (plan("lora"), plan("dora"), plan("adalora"));
    assert_eq!(extra(&lora), 0);
    assert!(extra(&dora) > 0 && extra(&adalora) > 0);
    assert!(dora["total_bytes"].as_u64() > lora["total_bytes"].as_u64());
    // AdaLoRA's e vectors: r0 more parameters per adapted linear (2 layers × 7).
    let params = |v: &serde_json::Value| v["breakdown"]["adapters"]["n_params"].as_u64().unwrap();
    assert_eq!(params(&adalora), params(&lora) + 4 * 14);

    let help = String::from_utf8_lossy(&edgetune(&["train", "--help"]).stdout).to_string();
    for flag in [
        "--method",
        "--loraplus-ratio",
        "--adalora-target-r",
        "--dylora-eval-rank",
        "--layerimp-tau",
        "--mtlora-task-rank",
        "--mtlora-task-alpha",
        "--task-weights",
        "--task-weights-alpha",
        "--task-weights-every",
    ] {
        assert!(help.contains(flag), "train --help lacks {flag}");
    }

    // qlora: the preset fills what was left at its default, an explicit --rank wins.
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture(dir.path());
    let out = dir.path().join("q");
    let run = edgetune(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--method",
        "qlora",
        "--rank",
        "8",
        "--steps",
        "2",
        "--seq-len",
        "64",
        "--threads",
        "2",
        "--json",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let c = &summary["config"];
    assert_eq!(c["method"], "qlora");
    assert_eq!(c["lora"]["rank"], 8);
    assert_eq!(c["lora"]["alpha"].as_f64(), Some(16.0));
    assert_eq!(c["max_grad_norm"].as_f64().map(|v| v as f32), Some(0.3));

    let bad = edgetune(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--method",
        "mtlora",
        "--task-weights",
        "greedy",
        "--steps",
        "2",
    ]);
    assert!(!bad.status.success());
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(e.contains("--task-weights greedy"), "{e}");
}

/// A DoRA checkpoint: `export --format gguf|peft` refuses, pointing at `merge`; `merge` folds
/// it into a new base.
#[test]
fn cli_merge_only_checkpoint_exports_by_merging() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture(dir.path());
    let file = GgufFile::open(&model).unwrap();
    let mut cfg = config(&model, &data, &dir.path().join("d"), Method::Dora);
    cfg.steps = Some(1);
    let mut t = Trainer::new(&file, &cfg).unwrap();
    t.step().unwrap().unwrap();
    let ckpt = t.checkpoint().unwrap();
    let (m, c) = (model.to_str().unwrap(), ckpt.to_str().unwrap());
    for format in ["gguf", "peft"] {
        let o = dir.path().join(format!("out-{format}"));
        let r = edgetune(&[
            "export",
            "--model",
            m,
            "--adapter",
            c,
            "--format",
            format,
            "--out",
            o.to_str().unwrap(),
        ]);
        assert!(!r.status.success(), "{format}");
        let e = String::from_utf8_lossy(&r.stderr);
        assert!(
            e.contains("edgetune merge") && e.contains("dora"),
            "{format}: {e}"
        );
    }
    let merged = dir.path().join("merged.gguf");
    let r = edgetune(&[
        "merge",
        "--model",
        m,
        "--adapter",
        c,
        "--out",
        merged.to_str().unwrap(),
        "--type",
        "f32",
        "--json",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(GgufFile::open(&merged).is_ok());
}
