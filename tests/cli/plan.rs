//! `edgetune plan` end to end on a written tiny test model: the text table, `--json` (the same
//! numbers as the library's plan), `--board`, `--budget` over budget (still exit 0, `fits:
//! false`), and a clear error for an unknown board.

use edgetune::gguf::GgufFile;
use edgetune::train::TrainConfig;
use edgetune::train::budget::plan_training;

use crate::cli_support::{edgetune, ok};
use crate::tiny;

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&ok(args).stdout).expect("plan --json prints JSON")
}

#[test]
fn plan_prints_the_table_and_json_matching_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), "q4_0", &[]);
    let text = String::from_utf8(ok(&["plan", "--model", &model]).stdout).unwrap();
    for part in [
        "weights",
        "Q4_0",
        "arena",
        "optimizer state",
        "tokenizer",
        "TOTAL",
    ] {
        assert!(text.contains(part), "missing {part}:\n{text}");
    }
    assert!(text.contains("no budget given"), "{text}");

    let args = [
        "plan",
        "--model",
        &model,
        "--seq-len",
        "64",
        "--rank",
        "4",
        "--threads",
        "2",
        "--json",
    ];
    let j = json(&args);
    assert!(j["budget_bytes"].is_null());
    assert_eq!(j["fits"], true);
    let total = j["total_bytes"].as_u64().unwrap();
    let b = &j["breakdown"];
    let parts = ["weights", "arena", "adapters", "optimizer"].map(|k| {
        let key = match k {
            "weights" => "resident_bytes",
            "arena" => "arena_bytes",
            "adapters" => "master_bytes",
            _ => "ram_bytes",
        };
        b[k][key].as_u64().unwrap()
    });
    assert_eq!(
        total,
        parts.iter().sum::<u64>() + b["overhead_bytes"].as_u64().unwrap()
    );

    // The library, given the same settings, plans the same total.
    let mut cfg = TrainConfig {
        seq_len: 64,
        threads: Some(2),
        ..TrainConfig::default()
    };
    cfg.lora.rank = 4;
    let lib = plan_training(&GgufFile::open(&model).unwrap(), &cfg).unwrap();
    assert_eq!(lib.breakdown.total_bytes, total);
}

#[test]
fn plan_against_a_board_and_an_impossible_budget() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), "q4_0", &[]);
    let j = json(&[
        "plan",
        "--model",
        &model,
        "--board",
        "orin-nano-8gb",
        "--json",
    ]);
    assert_eq!(j["board"], "orin-nano-8gb");
    assert_eq!(j["budget_bytes"].as_u64(), Some(6 << 30));
    assert_eq!(j["fits"], true);

    // Over budget: plan reports (exit 0) with fits = false and the suggestions' verdict.
    let j = json(&["plan", "--model", &model, "--budget", "2MiB", "--json"]);
    assert_eq!(j["fits"], false);
    assert_eq!(j["budget_bytes"].as_u64(), Some(2 << 20));
    let note = j["breakdown"]["suggestions"]["note"].as_str().unwrap();
    assert!(note.contains("nothing fits"), "{note}");
    let text =
        String::from_utf8(ok(&["plan", "--model", &model, "--budget", "2MiB"]).stdout).unwrap();
    assert!(text.contains("does NOT fit"), "{text}");
}

#[test]
fn unknown_board_and_bad_flags_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), "q4_0", &[]);
    let out = edgetune(&["plan", "--model", &model, "--board", "orin-mega"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown board `orin-mega`") && err.contains("orin-nano-8gb"),
        "{err}"
    );
    let out = edgetune(&["plan", "--model", &model, "--targets", "attn_x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("attn_x"));
    let out = edgetune(&["plan", "--model", &model, "--budget", "lots"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--budget"));
    // A rank whose byte counts would overflow is a clear error (it used to overflow a multiply),
    // for every method's cost formula.
    for method in ["lora", "dora", "hira", "adalora"] {
        let out = edgetune(&[
            "plan",
            "--model",
            &model,
            "--method",
            method,
            "--rank",
            "4611686018427387904",
        ]);
        assert_eq!(out.status.code(), Some(1), "{method}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--rank") && err.contains("too large"),
            "{method}: {err}"
        );
    }
}

#[test]
fn a_rank_above_a_projection_width_is_refused_before_any_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), "q4_0", &[]);
    // tiny: attn_k and attn_v are 256×128, so no rank above 128. This used to plan (and
    // suggest `--rank 6250` against a budget); `train` allocated 7.6 GB for it.
    for budget in [None, Some("4MiB")] {
        let mut args = vec!["plan", "--model", &model, "--rank", "100000"];
        args.extend(budget.iter().flat_map(|b| ["--budget", *b]));
        let out = edgetune(&args);
        assert_eq!(out.status.code(), Some(1), "{budget:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--rank 100000")
                && err.contains("attn_k")
                && err.contains("256×128")
                && err.contains("at most 128"),
            "{err}"
        );
        assert!(!err.contains("--rank 6250"), "{err}");
    }
    ok(&["plan", "--model", &model, "--rank", "128"]);
    // MT-LoRA's task rank has the same limit.
    let out = edgetune(&[
        "plan",
        "--model",
        &model,
        "--method",
        "mtlora",
        "--mtlora-task-rank",
        "300",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--mtlora-task-rank 300") && err.contains("at most 128"),
        "{err}"
    );
}

#[test]
fn small_budgets_are_shown_in_units_that_show_them() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), "q4_0", &[]);
    let text =
        String::from_utf8(ok(&["plan", "--model", &model, "--budget", "100KiB"]).stdout).unwrap();
    assert!(!text.contains("0.00 GiB"), "{text}");
    assert!(
        text.contains("of the 100.00 KiB budget") && text.contains("MiB over"),
        "{text}"
    );
}

#[test]
fn optimizer_flags_sgd_ignores_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), "q4_0", &[]);
    let out = edgetune(&[
        "plan",
        "--model",
        &model,
        "--optimizer",
        "sgd",
        "--optimizer-state",
        "disk",
        "--optimizer-state-bits",
        "8",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--optimizer-state disk and --optimizer-state-bits 8")
            && err.contains("--optimizer sgd"),
        "{err}"
    );
    ok(&["plan", "--model", &model, "--optimizer", "sgd"]);
}
