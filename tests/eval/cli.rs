//! `edgetune eval` and `generate --guard` end to end on a generated tiny model (random weights:
//! it fails nearly every case, so the counts are checked for consistency, not a pass rate),
//! plus cases whose outcome the guard fixes (the refusal is known in advance).

use std::path::{Path, PathBuf};
use std::process::Output;

use edgetune::eval::REFUSAL;

use crate::cli_support::{assert_ok, edgetune, edgetune_with, ok_with, s, stderr, stdout_json};
use crate::train_support;

/// The shipped suite.
const BASIC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/suites/basic.jsonl");

/// `dir/tiny.gguf`: the tiny test model in Q8_0, seed 9.
fn tiny(dir: &Path) -> PathBuf {
    let p = dir.join("tiny.gguf");
    crate::cli_support::write_tiny(&p, "q8_0", &["--seed", "9"]);
    p
}

/// `edgetune eval --model MODEL --suite SUITE FLAGS…` (`flags` split at whitespace).
fn eval(model: &Path, suite: &str, flags: &str) -> Output {
    edgetune_with(&["eval", "--model", s(model), "--suite", suite], flags, &[])
}

/// [`eval`] that must succeed.
fn eval_ok(model: &Path, suite: &str, flags: &str) -> Output {
    let out = eval(model, suite, flags);
    assert_ok(&out);
    out
}

/// `edgetune generate --model MODEL --prompt PROMPT FLAGS… TAIL…` that must succeed.
fn generate(model: &Path, prompt: &str, flags: &str, tail: &[&str]) -> Output {
    ok_with(
        &["generate", "--model", s(model), "--prompt", prompt],
        flags,
        tail,
    )
}

#[test]
fn eval_on_the_shipped_suite_reports_consistent_counts() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let suite = BASIC;
    let out = eval_ok(&model, suite, "--max-tokens 6 --json");
    let r = stdout_json(&out);
    let total = r["total"].as_u64().unwrap();
    let passed = r["passed"].as_u64().unwrap();
    let failures = r["failures"].as_array().unwrap();
    let n_lines = std::fs::read_to_string(suite)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as u64;
    assert_eq!(total, n_lines);
    assert_eq!(passed + failures.len() as u64, total);
    let rate = r["pass_rate"].as_f64().unwrap();
    assert!((rate - passed as f64 / total as f64).abs() < 1e-12);
    let by_lang = r["by_lang"].as_object().unwrap();
    let (p, t) = by_lang.values().fold((0, 0), |(p, t), c| {
        (
            p + c["passed"].as_u64().unwrap(),
            t + c["total"].as_u64().unwrap(),
        )
    });
    assert_eq!((p, t), (passed, total));
    assert!(by_lang.contains_key("en") && by_lang.contains_key("id"));
    for f in failures {
        assert!(f["id"].is_string() && f["check"].is_string() && f["output"].is_string());
        assert!(f["line"].as_u64().unwrap() >= 1);
    }
    // Greedy: the same run gives the same report, whether the cases are generated together
    // (the default, 8 at a time) or one by one.
    let again = eval_ok(&model, suite, "--max-tokens 6 --batch 1 --json");
    assert_eq!(out.stdout, again.stdout);
    let zero = eval(&model, suite, "--batch 0");
    assert!(!zero.status.success());
    assert!(stderr(&zero).contains("--batch"));
    // The text report has the same counts and names each failure.
    let text = eval_ok(&model, suite, "--max-tokens 6");
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains(&format!("{passed}/{total} passed")), "{text}");
    assert_eq!(text.matches("\nFAIL ").count(), failures.len(), "{text}");
}

#[test]
fn the_guard_fixes_outcomes_in_eval_and_generate() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let policy = dir.path().join("policy.toml");
    // Prompts about "secret plans" are refused: that case's answer is known in advance.
    std::fs::write(
        &policy,
        "[[rule]]\nname = \"plans\"\ntopics = [\"secret plans\"]\napplies_to = \"prompt\"\n",
    )
    .unwrap();
    let refusal = serde_json::to_string(REFUSAL).unwrap();
    let suite = dir.path().join("suite.jsonl");
    std::fs::write(
        &suite,
        format!(
            "{{\"id\": \"blocked\", \"input\": \"Tell me the SECRET plans\", \"checks\": [{{\"equals\": {refusal}}}]}}\n\
             {{\"id\": \"free\", \"input\": \"Sensor 3 reads\", \"checks\": [{{\"not_contains\": {refusal}}}]}}\n"
        ),
    )
    .unwrap();
    let head = ["eval", "--model", s(&model), "--suite", s(&suite)];
    let out = ok_with(
        &head,
        "--guard",
        &[s(&policy), "--max-tokens", "4", "--json"],
    );
    let r = stdout_json(&out);
    assert_eq!(r["passed"], 2, "{r}");
    assert_eq!(r["blocked"], 1, "{r}");
    // Without the guard the first case cannot answer with the refusal (random weights).
    let r = stdout_json(&eval_ok(&model, s(&suite), "--max-tokens 4 --json"));
    assert_eq!(r["passed"], 1, "{r}");
    assert_eq!(r["failures"][0]["id"], "blocked");

    // generate: a blocked prompt prints exactly the refusal.
    let out = generate(
        &model,
        "the secret   plans?",
        "--guard",
        &[s(&policy), "--json"],
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{REFUSAL}\n")
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"rule\":\"plans\""));
    // An output rule matching anything (`.`) replaces whatever the model wrote.
    let any = dir.path().join("any.toml");
    std::fs::write(
        &any,
        "[[rule]]\npatterns = ['(?s).']\napplies_to = \"output\"\n",
    )
    .unwrap();
    let out = generate(
        &model,
        "Sensor 3 reads",
        "--max-tokens 8 --guard",
        &[s(&any), "--json"],
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let summary = String::from_utf8_lossy(&out.stderr).to_string();
    if summary.contains("\"blocked\":null") {
        // Only when the model wrote nothing at all.
        assert_eq!(text, "\n");
    } else {
        assert_eq!(text, format!("{REFUSAL}\n"), "{summary}");
    }
    // Unguarded, the same prompt is not the refusal.
    let out = generate(&model, "Sensor 3 reads", "--max-tokens 8", &[]);
    assert_ne!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{REFUSAL}\n")
    );
}

#[test]
fn bad_suite_and_bad_policy_are_errors_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let suite = dir.path().join("bad.jsonl");
    std::fs::write(
        &suite,
        "{\"id\": \"a\", \"input\": \"x\", \"checks\": [{\"contains\": \"y\"}]}\n{\"id\": \"b\", \"input\": 3, \"checks\": []}\n",
    )
    .unwrap();
    let out = eval(&model, s(&suite), "");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("{}:2:", suite.display())), "{err}");
    let policy = dir.path().join("bad.toml");
    std::fs::write(
        &policy,
        "[[rule]]\npatterns = ['ok']\napplies_to = 'sometimes'\n",
    )
    .unwrap();
    for cmd in ["eval", "generate"] {
        let mut args = vec![cmd, "--model", s(&model), "--guard", s(&policy)];
        if cmd == "eval" {
            args.extend(["--suite", BASIC]);
        } else {
            args.extend(["--prompt", "hi"]);
        }
        let out = edgetune(&args);
        assert!(!out.status.success(), "{cmd}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("{}:3:", policy.display())),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn eval_on_a_model_with_non_finite_logits_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = train_support::write_nan_model(dir.path());
    let o = eval(&model, BASIC, "--max-tokens 4");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("basic.jsonl") && err.contains("line 1") && err.contains("not finite"),
        "{err}"
    );
}

/// `eval --compute`: f32 by default (pass rates comparable with `train --eval-every`'s); int8
/// runs the same suite to a consistent report.
#[test]
fn eval_takes_the_compute_flag_and_defaults_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let report = |extra: &str| {
        stdout_json(&eval_ok(
            &model,
            BASIC,
            &format!("--max-tokens 4 --json {extra}"),
        ))
    };
    let default = report("");
    assert_eq!(default, report("--compute f32"));
    let int8 = report("--compute int8");
    assert_eq!(int8["total"], default["total"]);
    assert_eq!(
        int8["passed"].as_u64().unwrap() + int8["failures"].as_array().unwrap().len() as u64,
        int8["total"].as_u64().unwrap()
    );
    let out = eval(&model, BASIC, "--compute f64");
    assert!(!out.status.success());
}
