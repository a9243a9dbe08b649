//! Kill and resume: a `edgetune train` child process is killed with SIGKILL mid-run, resumed
//! with `--resume DIR`, and must reproduce the uninterrupted run's per-step losses bit for bit
//! (DESIGN.md §4.8). Also: a resume with different settings is refused, naming them.

mod train_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STEPS: u64 = 16;

fn train_args(model: &Path, data: &Path) -> Vec<String> {
    [
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--steps",
        &STEPS.to_string(),
        "--seq-len",
        "256",
        "--batch",
        "1",
        "--accum",
        "2",
        "--rank",
        "4",
        "--alpha",
        "8",
        "--dropout",
        "0.05",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "4",
        "--decay",
        "cosine",
        "--save-every",
        "5",
        "--threads",
        "2",
        "--pack",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `(step, loss bits)` of every line of `DIR/metrics.jsonl`.
fn losses(dir: &Path) -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap().to_bits(),
            )
        })
        .collect()
}

#[test]
fn sigkill_then_resume_reproduces_the_losses_bit_for_bit() {
    let bin = env!("CARGO_BIN_EXE_edgetune");
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q8_0", 300);
    let (full, killed) = (dir.path().join("full"), dir.path().join("killed"));

    let ok = Command::new(bin)
        .args(train_args(&model, &data))
        .args(["--out", full.to_str().unwrap()])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let want = losses(&full);
    assert_eq!(want.len() as u64, STEPS);

    // Kill once a checkpoint exists and a few more steps ran past it.
    let mut child = Command::new(bin)
        .args(train_args(&model, &data))
        .args(["--out", killed.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        let n = losses(&killed).len();
        if n >= 7 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(t0.elapsed() < Duration::from_secs(300), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished");
    let before = losses(&killed).len() as u64;
    assert!(before < STEPS, "killed after {before} of {STEPS} steps");

    let ok = Command::new(bin)
        .args(train_args(&model, &data))
        .args(["--resume", killed.to_str().unwrap()])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let got = losses(&killed);
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            g,
            w,
            "step {}: {} vs {}",
            w.0,
            f64::from_bits(g.1),
            f64::from_bits(w.1)
        );
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(killed.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"].as_u64(), Some(STEPS));
    assert!(summary["resumed_from_step"].as_u64().unwrap() >= 5);
}

#[test]
fn resume_with_other_settings_is_refused_naming_them() {
    let bin = env!("CARGO_BIN_EXE_edgetune");
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q8_0", 100);
    let out = dir.path().join("run");
    let mut args = train_args(&model, &data);
    args[6] = "3".into(); // --steps 3
    let ok = Command::new(bin)
        .args(&args)
        .args(["--out", out.to_str().unwrap()])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let pos = args.iter().position(|a| a == "--rank").unwrap();
    args[pos + 1] = "8".into();
    let res = Command::new(bin)
        .args(&args)
        .args(["--resume", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("lora") && err.contains("rank"), "{err}");
}
