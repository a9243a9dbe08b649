//! `edgetune export` and `edgetune merge` end to end, and `--adapter` on `perplexity`: an
//! adapter saved by a "trainer" goes out as GGUF, PEFT and our format, comes back in through
//! every path, and a merged F32 model scores like base + adapter.

use std::path::Path;
use std::process::Output;

use crate::cli_support::{assert_ok, edgetune_with, s, stderr};
use crate::export_support::*;
use edgetune::adapters::LoraConfig;
use edgetune::export::{load_any, save_adapter};
use edgetune::npy;
use edgetune::quant::GgmlType;

/// `edgetune CMD --model BASE --adapter ADAPTER --out OUT FLAGS…` (`flags` split at
/// whitespace): `export` and `merge`.
fn run(cmd: &str, base: &Path, adapter: &Path, out: &Path, flags: &str) -> Output {
    let head = [
        cmd,
        "--model",
        s(base),
        "--adapter",
        s(adapter),
        "--out",
        s(out),
    ];
    edgetune_with(&head, flags, &[])
}

/// [`run`] that must succeed: its stdout as JSON (null when it is not JSON).
fn ok(cmd: &str, base: &Path, adapter: &Path, out: &Path, flags: &str) -> serde_json::Value {
    let out = run(cmd, base, adapter, out, flags);
    assert_ok(&out);
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn export_merge_and_adapter_flags_work_end_to_end() {
    let m = tiny_config();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = tiny_model(d, "base.gguf", GgmlType::F32, 4);
    let mut set = random_set(
        &m,
        &LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..LoraConfig::default()
        },
        6,
    );
    randomize(&mut set, 8, 0.2);
    let ck = d.join("ckpt");
    save_adapter(&set, &ck, &serde_json::json!({"metrics": {"loss": 2.0}})).unwrap();

    let g = ok(
        "export",
        &base,
        &ck,
        &d.join("a.gguf"),
        "--format gguf --dtype q8_0 --json",
    );
    assert_eq!(g["alpha"], 8.0);
    assert_eq!(g["adapters"], set.len());
    let p = ok(
        "export",
        &base,
        &ck,
        &d.join("peft"),
        "--format peft --json",
    );
    assert!(p["base_sha256"].as_str().unwrap().len() == 64);
    let readme = std::fs::read_to_string(d.join("peft/README.md")).unwrap();
    assert!(readme.contains("\"loss\": 2.0"), "{readme}");
    ok(
        "export",
        &base,
        &d.join("peft"),
        &d.join("again"),
        "--format native --json",
    );
    assert_same_sets(
        "ckpt → PEFT → native",
        &set,
        &load_any(&d.join("again"), &m).unwrap(),
    );

    // Merge to F32 and compare perplexities with base + adapter through --adapter.
    let merged = d.join("merged.gguf");
    let r = ok("merge", &base, &ck, &merged, "--type f32 --json");
    assert_eq!(r["merged"].as_array().unwrap().len(), 14);
    let toks = "1,17,200,5,99,42,130,7";
    let dump = |model: &Path, extra: &[&str], name: &str| {
        let out = d.join(name);
        let head = [
            "perplexity",
            "--model",
            s(model),
            "--tokens",
            toks,
            "--dump-logits",
            s(&out),
        ];
        assert_ok(&edgetune_with(&head, "--json", extra));
        npy::read_f32(&out).unwrap().1
    };
    let plain = dump(&base, &[], "plain.npy");
    let with = dump(&base, &["--adapter", s(&ck)], "with.npy");
    let half = dump(
        &base,
        &["--adapter", s(&ck), "--adapter-scale", "0.5"],
        "half.npy",
    );
    let via_merge = dump(&merged, &[], "merged.npy");
    assert!(max_abs_diff(&plain, &with) > 1e-2);
    assert!(max_abs_diff(&with, &half) > 1e-3);
    // f32 rounding differs between x·(W + s·B·A) and x·W + s·(x·Aᵀ)·Bᵀ: 1e-5 relative to the
    // largest logit.
    let peak = with.iter().fold(1.0f32, |a, v| a.max(v.abs()));
    let diff = max_abs_diff(&with, &via_merge);
    eprintln!("merged vs --adapter: {diff:e} (max |logit| {peak})");
    assert!(
        diff <= 1e-5 * peak,
        "merged vs --adapter: {diff:e} (max |logit| {peak})"
    );

    // Text output names the tensors and the error; failures say why.
    let out = run("merge", &base, &ck, &d.join("m2.gguf"), "");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("blk.1.ffn_down.weight") && text.contains("added rms error"),
        "{text}"
    );
    let out = run(
        "export",
        &base,
        &d.join("nope"),
        &d.join("x.gguf"),
        "--format gguf",
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nope"));
    let out = run("merge", &base, &ck, &d.join("x.gguf"), "--type q3_k");
    assert!(stderr(&out).contains("q4_k"));
}

#[test]
fn export_never_writes_over_its_own_model_or_adapter() {
    let m = tiny_config();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = tiny_model(d, "base.gguf", GgmlType::F32, 4);
    let set = random_set(&m, &LoraConfig::default(), 6);
    let ck = d.join("ckpt");
    save_adapter(&set, &ck, &serde_json::Value::Null).unwrap();
    let before = std::fs::read(&base).unwrap();
    // The model by another spelling of its path, and the adapter directory itself.
    let other_spelling = d.join(".").join("base.gguf");
    for (out, what) in [(&other_spelling, "base model"), (&ck, "adapter")] {
        let o = run("export", &base, &ck, out, "--format gguf");
        assert!(!o.status.success());
        let err = stderr(&o);
        assert!(
            err.contains("this output is the") && err.contains(what),
            "{err}"
        );
    }
    assert_eq!(
        std::fs::read(&base).unwrap(),
        before,
        "the model is untouched"
    );
}
