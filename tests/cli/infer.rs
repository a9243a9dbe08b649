//! End to end through the CLI: `tokenize`, `generate` and `perplexity` on generated models, one of
//! them carrying the real Llama 3.1 tokenizer (`testmodel --tokenizer`).

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::cli_support::{edgetune_with, ok, ok_with, s, stderr, write_tiny};
use crate::tiny;
use crate::train_support;

fn summary(out: &Output) -> serde_json::Value {
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("JSON summary on stderr");
    serde_json::from_str(line).unwrap()
}

#[test]
fn generate_is_deterministic_and_respects_the_token_limit() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), "q8_0", &["--seed", "9"]);
    let run = |extra: &[&str]| {
        let head = ["generate", "--model", &model, "--prompt", "Sensor 3 reads"];
        ok_with(&head, "--max-tokens 12 --json", extra)
    };
    let greedy = run(&[]);
    let s = summary(&greedy);
    let tokens = s["tokens"].as_array().unwrap();
    assert!(tokens.len() <= 12);
    if tokens.len() < 12 {
        assert_eq!(s["stop"], "end_of_text");
    }
    assert_eq!(
        summary(&run(&[]))["tokens"],
        s["tokens"],
        "greedy is deterministic"
    );
    let sample = [
        "--temperature",
        "1.5",
        "--seed",
        "4",
        "--top-k",
        "0",
        "--top-p",
        "1",
    ];
    let a = summary(&run(&sample));
    let b = summary(&run(&sample));
    assert_eq!(a["tokens"], b["tokens"], "same seed, same sample");
    for template in ["alpaca", "llama3-chat", "none"] {
        run(&["--template", template]);
    }
}

#[test]
fn perplexity_matches_the_dumped_logits() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), "q8_0", &["--seed", "9"]);
    let npy = dir.path().join("logits.npy");
    let tokens = [256u32, 72, 101, 108, 108, 111, 32, 57, 46, 57];
    let list: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
    let out = ok(&[
        "perplexity",
        "--model",
        &model,
        "--tokens",
        &list.join(","),
        "--dump-logits",
        npy.to_str().unwrap(),
        "--json",
    ]);
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (shape, logits) = edgetune::npy::read_f32(&npy).unwrap();
    assert_eq!(shape, vec![tokens.len(), 261]);
    // Mean NLL recomputed from the dump, independently of the library's helper.
    let mut nll = 0.0f64;
    for (pos, row) in logits.chunks_exact(261).enumerate().take(tokens.len() - 1) {
        let max = row
            .iter()
            .cloned()
            .fold(f64::NEG_INFINITY, |m, v| m.max(v as f64));
        let lse = max
            + row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        nll += lse - row[tokens[pos + 1] as usize] as f64;
    }
    let mean = nll / (tokens.len() - 1) as f64;
    assert!(
        (result["mean_nll"].as_f64().unwrap() - mean).abs() < 1e-9,
        "{result} vs {mean}"
    );
    assert!((result["perplexity"].as_f64().unwrap() - mean.exp()).abs() < 1e-6 * mean.exp());
    assert_eq!(result["predicted"], tokens.len() - 1);
}

/// `--compute`: perplexity stays f32 unless asked (its dumps are compared with exact
/// references); int8 logits are close to f32's; generate's default is f32 too.
#[test]
fn compute_flag_selects_the_arithmetic_of_perplexity_and_generate() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), "q8_0", &["--seed", "9"]);
    let tokens = "256,72,101,108,108,111,32,57,46,57,32,100,101,103";
    let dump = |name: &str, extra: &[&str]| {
        let npy = dir.path().join(name);
        let mut tail = vec!["--dump-logits", s(&npy)];
        tail.extend_from_slice(extra);
        let out = ok_with(
            &["perplexity", "--model", &model, "--tokens", tokens],
            "--json",
            &tail,
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (r, edgetune::npy::read_f32(&npy).unwrap().1)
    };
    let (default, l_default) = dump("default.npy", &[]);
    let (f32_, l_f32) = dump("f32.npy", &["--compute", "f32"]);
    let (int8, l_int8) = dump("int8.npy", &["--compute", "int8"]);
    assert_eq!(l_default, l_f32, "perplexity defaults to f32");
    assert_eq!(default, f32_);
    let max = l_f32.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = l_f32
        .iter()
        .zip(&l_int8)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= 0.1 * max,
        "int8 logits {diff} from f32's (max {max})"
    );
    let (a, b) = (
        f32_["mean_nll"].as_f64().unwrap(),
        int8["mean_nll"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 0.05 * a.abs().max(1.0), "{a} vs {b}");

    let generate = |extra: &[&str]| {
        let head = ["generate", "--model", &model, "--prompt", "Sensor 3 reads"];
        summary(&ok_with(&head, "--max-tokens 8 --json", extra))["tokens"].clone()
    };
    assert_eq!(
        generate(&[]),
        generate(&["--compute", "f32"]),
        "generate defaults to f32"
    );
    assert!(generate(&["--compute", "int8"]).is_array());
    let bad = edgetune_with(
        &["generate", "--model", &model],
        "--prompt x --compute f16",
        &[],
    );
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("int8"));
}

fn llama3_tokenizer() -> PathBuf {
    let p = std::env::var_os("EDGETUNE_LLAMA3_TOKENIZER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/llama3_1-tokenizer.json")
        });
    assert!(
        p.exists(),
        "run scripts/fetch-llama3-tokenizer.sh first (needs {})",
        p.display()
    );
    p
}

#[test]
fn a_test_model_with_the_real_tokenizer_tokenizes_like_hf() {
    let dir = tempfile::tempdir().unwrap();
    let json = llama3_tokenizer();
    let model = dir.path().join("tok.gguf");
    write_tiny(&model, "q8_0", &["--tokenizer", s(&json)]);
    let hf = tokenizers::Tokenizer::from_file(&json).unwrap();
    let tokenize = |text: &str, flags: &str| -> Vec<u32> {
        let out = ok_with(
            &["tokenize", "--model", s(&model), "--text", text],
            flags,
            &[],
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    for text in [
        "Which is larger, 9.11 or 9.9?",
        "Suhu di zona B 31,5 °C 🌡️",
        "  fn main() {\n\tprintln!(\"hi\");\n}",
    ] {
        let ours = tokenize(text, "--json");
        let theirs = hf.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(ours, theirs, "{text:?}");
    }
    // Special-token text: plain text by default, one id with --special.
    let plain = tokenize("<|eot_id|>", "--json --no-bos");
    let special = tokenize("<|eot_id|>", "--json --no-bos --special");
    assert_eq!(special, vec![128009]);
    assert!(plain.len() > 1 && !plain.contains(&128009), "{plain:?}");
    // The model generates with it (random weights: only the mechanics are checked).
    ok_with(
        &["generate", "--model", s(&model)],
        "--prompt Hi --template llama3-chat --max-tokens 4",
        &[],
    );
}

#[test]
fn perplexity_on_non_finite_logits_and_a_missing_adapter_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let nan = train_support::write_nan_model(dir.path());
    let perplexity = |model: &str, flags: &str, tail: &[&str]| {
        edgetune_with(&["perplexity", "--model", model], flags, tail)
    };
    // It used to exit 0 printing a NaN perplexity.
    let o = perplexity(s(&nan), "--tokens 1,2,3,4 --json", &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    let err = stderr(&o);
    assert!(
        err.contains("perplexity: position 0") && err.contains("not finite"),
        "{err}"
    );
    // A missing adapter says "not found" with the path (it used to say "entity not found").
    let model = tiny(dir.path(), "q8_0", &["--seed", "9"]);
    let missing = dir.path().join("no-such-adapter");
    let o = perplexity(&model, "--tokens 1,2,3", &["--adapter", s(&missing)]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}: adapter not found", missing.display())),
        "{err}"
    );
}
