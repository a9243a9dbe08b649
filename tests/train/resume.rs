//! Kill and resume: a `edgetune train` child process is killed with SIGKILL mid-run, resumed
//! with `--resume DIR`, and must reproduce the uninterrupted run's per-step losses bit for bit
//! (docs/ARCHITECTURE.md#atomic-checkpoints); the killed and resumed runs stream their weights
//! (`--weights stream`), the uninterrupted one maps them; the killed run keeps its layer inputs on
//! disk (`--checkpoints-on disk`, its spill file left behind by the kill), the resumed one in
//! memory; both stream the output head too (`--stream-head on`: one chunk for this vocabulary,
//! which keeps the resident head's arithmetic). Also: a resume with different settings is
//! refused, naming them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::train_support;

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

/// Waits until the training `child` has logged `n` steps in `dir/metrics.jsonl` (still running).
fn wait_for_steps(child: &mut std::process::Child, dir: &Path, n: usize) {
    let t0 = Instant::now();
    while losses(dir).len() < n {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before step {n}"
        );
        assert!(t0.elapsed() < Duration::from_secs(300), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
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
        .args(["--out", killed.to_str().unwrap(), "--weights", "stream"])
        .args(["--checkpoints-on", "disk", "--stream-head", "on"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_steps(&mut child, &killed, 7);
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished");
    let before = losses(&killed).len() as u64;
    assert!(before < STEPS, "killed after {before} of {STEPS} steps");
    let spill = killed.join(edgetune::train::SPILL_FILE);
    assert!(spill.exists(), "the killed run's spill file is left behind");

    let ok = Command::new(bin)
        .args(train_args(&model, &data))
        .args(["--resume", killed.to_str().unwrap(), "--weights", "stream"])
        .args(["--stream-head", "on"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(!spill.exists(), "the resume removed the stale spill file");
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
    assert!(
        summary["streamed"]["layer_reads"].as_u64().unwrap() > 0
            && summary["streamed"]["head_chunk_reads"].as_u64().unwrap() > 0,
        "{summary}"
    );
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

/// Writes `n` synthetic examples of another seed: general data to replay.
fn write_replay_data(path: &Path, n: usize) {
    use std::io::Write;
    let (examples, _) = edgetune::data::synth::generate(9, n);
    let mut f = std::fs::File::create(path).unwrap();
    for ex in &examples {
        writeln!(f, "{}", serde_json::to_string(ex).unwrap()).unwrap();
    }
}

#[test]
fn replay_rows_are_mixed_in_and_a_resume_reproduces_them_bit_for_bit() {
    use edgetune::train::{Replay, run};
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q8_0", 60);
    let general = dir.path().join("general.jsonl");
    write_replay_data(&general, 20);
    let config = |out: &Path, steps: u64, replay: bool| {
        let mut c = train_support::config(&model, &data, out, steps);
        c.pack = true;
        c.save_every = 3;
        c.threads = Some(2);
        if replay {
            c.replay = Some(Replay::File(general.clone()));
            c.replay_ratio = 0.5;
        }
        c
    };
    let (full, part, plain) = (
        dir.path().join("full"),
        dir.path().join("part"),
        dir.path().join("plain"),
    );
    let summary = run(&config(&full, 8, true), &mut |_| true).unwrap();
    let replay = summary.replay.expect("the summary reports the replay data");
    assert_eq!((replay.conversations, replay.ratio), (20, 0.5));
    assert_eq!(replay.path, general);
    let want = losses(&full);
    assert_eq!(want.len(), 8);
    // The replay rows change what is trained on.
    run(&config(&plain, 8, false), &mut |_| true).unwrap();
    assert_ne!(losses(&plain), want);
    // Stopped after 5 steps (a checkpoint at 3 and one at the end), resumed to 8.
    run(&config(&part, 5, true), &mut |_| true).unwrap();
    let resumed = run(
        &edgetune::train::TrainConfig {
            resume: true,
            ..config(&part, 8, true)
        },
        &mut |_| true,
    )
    .unwrap();
    assert_eq!(resumed.resumed_from_step, Some(5));
    assert_eq!(losses(&part), want, "the resumed run's losses, bit for bit");
    // Resuming without the replay data, or at another ratio, is refused by name.
    let e = run(
        &edgetune::train::TrainConfig {
            resume: true,
            replay_ratio: 0.25,
            ..config(&part, 9, true)
        },
        &mut |_| true,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("replay_ratio"), "{e}");
}

#[test]
fn replay_self_answers_are_generated_once_and_read_from_the_cache_after() {
    use edgetune::train::{Replay, TrainConfig, run};
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q8_0", 40);
    let out = dir.path().join("run");
    let config = |steps: u64, max_tokens: usize| TrainConfig {
        replay: Some(Replay::Own {
            prompts: 12,
            max_tokens,
        }),
        save_every: 1,
        threads: Some(2),
        ..train_support::config(&model, &data, &out, steps)
    };
    let first = run(&config(2, 24), &mut |_| true).unwrap();
    let r = first.replay.unwrap();
    assert!(r.generated, "the first run asks the base model");
    assert_eq!(r.prompts, Some(12));
    assert!(r.generate_s.unwrap() > 0.0);
    assert!(r.conversations > 0 && r.conversations <= 12, "{r:?}");
    assert!(
        r.path.starts_with(out.join("replay")),
        "{}",
        r.path.display()
    );
    let cached = std::fs::read_to_string(&r.path).unwrap();
    assert_eq!(cached.lines().count(), r.conversations);
    for line in cached.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["messages"][0]["role"], "user");
        assert_eq!(v["messages"][1]["role"], "assistant");
        assert_eq!(v["task"], "replay");
    }
    // A resume reads the same answers from the cache.
    let again = run(
        &TrainConfig {
            resume: true,
            ..config(3, 24)
        },
        &mut |_| true,
    )
    .unwrap();
    let r2 = again.replay.unwrap();
    assert!(!r2.generated, "read from the cache");
    assert_eq!(
        (r2.path, r2.conversations),
        (r.path.clone(), r.conversations)
    );
    assert_eq!(
        r2.generate_s, r.generate_s,
        "the generation time is remembered"
    );
    // Other settings miss the cache: another file.
    let model_file = edgetune::gguf::GgufFile::open(&model).unwrap();
    let tok = edgetune::tokenizer::Tokenizer::from_gguf(&model_file).unwrap();
    let other = edgetune::train::replay::self_cache_path(&config(1, 32), &model_file, &tok, 12, 32)
        .unwrap();
    assert_ne!(other, r.path);
}

#[test]
fn sigint_stops_after_a_step_with_a_checkpoint_and_the_resume_reproduces_the_run() {
    let bin = env!("CARGO_BIN_EXE_edgetune");
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q8_0", 300);
    let (full, stopped) = (dir.path().join("full"), dir.path().join("stopped"));
    // No periodic checkpoints: only the stop writes one.
    let mut args = train_args(&model, &data);
    let at = args.iter().position(|a| a == "--save-every").unwrap();
    args[at + 1] = "0".into();
    let ok = Command::new(bin)
        .args(&args)
        .args(["--out", full.to_str().unwrap()])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let want = losses(&full);

    let mut child = Command::new(bin)
        .args(&args)
        .args(["--out", stopped.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_steps(&mut child, &stopped, 3);
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "exit status after SIGINT");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("interrupted: stopped after step"), "{err}");
    let done = losses(&stopped).len() as u64;
    assert!(done < STEPS, "stopped after {done} of {STEPS} steps");
    let ckpt = stopped.join("checkpoints").join(format!("step-{done:08}"));
    assert!(ckpt.join("state.json").is_file(), "{}", ckpt.display());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stopped.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["interrupted"], true);
    assert_eq!(summary["steps"].as_u64(), Some(done));

    let ok = Command::new(bin)
        .args(&args)
        .args(["--resume", stopped.to_str().unwrap()])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    assert_eq!(
        losses(&stopped),
        want,
        "the resumed run's losses, bit for bit"
    );
}

#[test]
fn resume_without_a_checkpoint_is_an_error_not_a_fresh_start() {
    let bin = env!("CARGO_BIN_EXE_edgetune");
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q8_0", 50);
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for run_dir in [empty.clone(), dir.path().join("missing")] {
        let out = Command::new(bin)
            .args(train_args(&model, &data))
            .args(["--resume", run_dir.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no checkpoint in"), "{err}");
        assert!(
            !run_dir.join("metrics.jsonl").exists(),
            "nothing was trained"
        );
    }
}
