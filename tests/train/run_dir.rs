//! The run directory through `edgetune train`: a second run on a directory in use is refused
//! (the lock), a fresh run into a previous run's directory is refused unless `--resume` or
//! `--overwrite`, `--resume` compares canonical paths and the model's fingerprint, and a
//! corrupt newest checkpoint is named (`--resume-fallback` takes the newest valid one).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::train_support;

fn args(model: &Path, data: &Path, steps: u64) -> Vec<String> {
    [
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--steps",
        &steps.to_string(),
        "--seq-len",
        "256",
        "--batch",
        "1",
        "--rank",
        "2",
        "--alpha",
        "4",
        "--save-every",
        "1",
        "--threads",
        "1",
        "--pack",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn edgetune(args: &[String], extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgetune"))
        .args(args)
        .args(extra)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The `step` of every line of `DIR/metrics.jsonl`.
fn steps(dir: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn checkpoints(out: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_second_run_on_a_directory_in_use_is_refused_naming_it_and_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q8_0", 200);
    let out = dir.path().join("run");
    const STEPS: u64 = 40;
    let a = args(&model, &data, STEPS);
    let mut first = Command::new(env!("CARGO_BIN_EXE_edgetune"))
        .args(&a)
        .args(["--out", s(&out)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while steps(&out).len() < 2 {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended early"
        );
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Whatever the second run asks for, it is refused while the first one holds the directory.
    for extra in [vec![], vec!["--overwrite"]] {
        let mut flags = vec!["--out", s(&out)];
        flags.extend(extra);
        let o = edgetune(&a, &flags);
        assert!(!o.status.success());
        let err = stderr(&o);
        assert!(
            err.contains(&out.display().to_string())
                && err.contains(&format!("in use by process {}", first.id())),
            "{err}"
        );
    }
    let o = edgetune(&a, &["--resume", s(&out)]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("in use by process"), "{}", stderr(&o));
    // The first run went on untouched: every step once, in order, and its summary.
    assert!(first.wait().unwrap().success());
    assert_eq!(steps(&out), (1..=STEPS).collect::<Vec<_>>());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"].as_u64(), Some(STEPS));
    // Its lock file stays behind and does not block the next run.
    assert!(out.join(".lock").is_file());
    let o = edgetune(&args(&model, &data, STEPS + 1), &["--resume", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_fresh_run_into_a_previous_run_is_refused_unless_resume_or_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q8_0", 100);
    let out = dir.path().join("run");
    let o = edgetune(&args(&model, &data, 3), &["--out", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(checkpoints(&out), ["step-00000002", "step-00000003"]);

    // Before: the metrics were truncated and the old step-3 was kept for --resume to pick.
    let o = edgetune(&args(&model, &data, 2), &["--out", s(&out)]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&out.display().to_string())
            && err.contains("previous run")
            && err.contains("--resume")
            && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(steps(&out), [1, 2, 3], "the previous run is untouched");

    // --overwrite starts over: no checkpoint or metrics line of the old run stays.
    let o = edgetune(&args(&model, &data, 2), &["--out", s(&out), "--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(checkpoints(&out), ["step-00000001", "step-00000002"]);
    assert_eq!(steps(&out), [1, 2]);
    let o = edgetune(&args(&model, &data, 4), &["--resume", s(&out), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["resumed_from_step"].as_u64(), Some(2));
    assert_eq!(steps(&out), [1, 2, 3, 4]);

    // An unrelated non-empty directory is refused by name, not written into.
    let other = dir.path().join("photos");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("cat.jpg"), b"meow").unwrap();
    let o = edgetune(&args(&model, &data, 1), &["--out", s(&other)]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cat.jpg"), "{}", stderr(&o));
    assert!(!other.join("metrics.jsonl").exists());

    // The replay cache a run keeps between runs is no previous run.
    let cached = dir.path().join("cached");
    std::fs::create_dir_all(cached.join("replay")).unwrap();
    std::fs::write(cached.join("replay").join("self-0.jsonl"), b"").unwrap();
    let o = edgetune(&args(&model, &data, 1), &["--out", s(&cached)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(cached.join("replay").join("self-0.jsonl").is_file());
}

#[test]
fn resume_compares_canonical_paths_and_refuses_another_model_file_at_the_same_path() {
    let dir = tempfile::tempdir().unwrap();
    train_support::write_fixture(dir.path(), "q8_0", 100);
    let run = |model: &str, data: &str, steps: u64, flags: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_edgetune"))
            .current_dir(dir.path())
            .args(args(Path::new(model), Path::new(data), steps))
            .args(flags)
            .output()
            .unwrap()
    };
    let o = run("tiny.gguf", "./iot.jsonl", 2, &["--out", "run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Another spelling of the same files.
    let o = run("./tiny.gguf", "iot.jsonl", 3, &["--resume", "run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Another model file at the same path (same shapes, other weights).
    let model = dir.path().join("tiny.gguf");
    edgetune::testmodel::write_test_model(
        &edgetune::testmodel::TINY,
        edgetune::testmodel::WeightTypes::parse("q8_0").unwrap(),
        4,
        &model,
    )
    .unwrap();
    let o = run("tiny.gguf", "iot.jsonl", 4, &["--resume", "run"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("another model file") && err.contains("fingerprint"),
        "{err}"
    );
    assert_eq!(steps(&dir.path().join("run")), [1, 2, 3]);
}

#[test]
fn a_corrupt_newest_checkpoint_is_named_and_resume_fallback_continues_from_the_older() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q8_0", 100);
    let out = dir.path().join("run");
    let o = edgetune(&args(&model, &data, 4), &["--out", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bad = out
        .join("checkpoints")
        .join("step-00000004")
        .join("adapter.safetensors");
    let mut bytes = std::fs::read(&bad).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x10;
    std::fs::write(&bad, &bytes).unwrap();

    let o = edgetune(&args(&model, &data, 6), &["--resume", s(&out)]);
    assert!(!o.status.success());
    let err = stderr(&o);
    let older = out.join("checkpoints").join("step-00000003");
    assert!(
        err.contains(&bad.display().to_string())
            && err.contains(&older.display().to_string())
            && err.contains("--resume-fallback"),
        "{err}"
    );
    let o = edgetune(
        &args(&model, &data, 6),
        &["--resume", s(&out), "--resume-fallback", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["resumed_from_step"].as_u64(), Some(3));
    assert_eq!(steps(&out), [1, 2, 3, 4, 5, 6]);
    assert!(
        out.join("checkpoints")
            .join("corrupt-step-00000004")
            .is_dir()
    );
}
