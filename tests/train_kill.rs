//! kill -9 at random points: an `edgetune train` child checkpointing after every step (so most
//! kills land in a checkpoint write, a rename or a prune) is SIGKILLed after a random delay,
//! again and again into one run directory (each trial resumes the last). Every other trial is
//! killed at a random time, the others 0–20 ms after a save's `.tmp-step-*` appears (inside
//! the save, its rename or the prune). After every kill the newest checkpoint must verify
//! against its manifest and load into a resumed trainer, and no `step-*` directory may be
//! corrupt or half deleted. Bounded: 32 trials of at most ~1 s each. Its own test binary: the
//! random delays are timed against the child's progress (start-up, steps, saves), so no other
//! test may slow the child down by taking the cores.

mod train_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgetune::gguf::GgufFile;
use edgetune::train::checkpoint::{self, checkpoints_dir};
use edgetune::train::checkpoint_manifest;
use edgetune::train::{TrainConfig, Trainer};

const TRIALS: usize = 32;

fn args(model: &Path, data: &Path) -> Vec<String> {
    [
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--steps",
        "100000",
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
        "2",
        "--pack",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Names in `DIR/checkpoints` (empty when it does not exist).
fn entries(out: &Path) -> Vec<String> {
    std::fs::read_dir(checkpoints_dir(out))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn kill_9_at_random_points_always_leaves_a_loadable_newest_checkpoint() {
    let bin = env!("CARGO_BIN_EXE_edgetune");
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q8_0", 60);
    let out = dir.path().join("run");
    let file = GgufFile::open(&model).unwrap();
    let t0 = Instant::now();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let (mut loaded, mut leftovers, mut newest) = (0, 0, 0u64);
    for trial in 0..TRIALS {
        let mut cmd = Command::new(bin);
        cmd.args(args(&model, &data));
        match checkpoint::latest(&out).unwrap() {
            Some(_) => cmd.args(["--resume", out.to_str().unwrap()]),
            // Killed before its first checkpoint: start over.
            None => cmd.args(["--out", out.to_str().unwrap(), "--overwrite"]),
        };
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = if trial % 2 == 0 {
            // Anywhere: start-up, a step, a save.
            let delay = 30 + rng % 870;
            std::thread::sleep(Duration::from_millis(delay));
            delay
        } else {
            // Inside a save: once its `.tmp-step-*` appears, 0–20 ms on (the files, their
            // fsyncs, the rename, the prune).
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5)
                && !entries(&out).iter().any(|n| n.starts_with(".tmp-"))
            {
                std::thread::sleep(Duration::from_micros(200));
            }
            std::thread::sleep(Duration::from_micros(rng % 20_000));
            t.elapsed().as_millis() as u64
        };
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        let names = entries(&out);
        if names
            .iter()
            .any(|n| n.starts_with(".tmp-") || n.starts_with(".trash-"))
        {
            leftovers += 1;
        }
        // Every checkpoint there is whole: none half written, none half deleted.
        for n in names.iter().filter(|n| n.starts_with("step-")) {
            let d = checkpoints_dir(&out).join(n);
            if let Err(e) = checkpoint_manifest::verify(&d) {
                panic!("trial {trial} (killed after {delay} ms, {status}): {e}; {names:?}");
            }
        }
        let Some(ckpt) = checkpoint::resume_point(&out, false)
            .unwrap_or_else(|e| panic!("trial {trial} (killed after {delay} ms): {e}"))
        else {
            continue;
        };
        // The newest checkpoint loads: a trainer resumes from it (the kill released the lock).
        let state = checkpoint::read_state(&ckpt).unwrap();
        assert!(
            state.step >= newest,
            "trial {trial}: went back to {}",
            state.step
        );
        newest = state.step;
        let cfg = TrainConfig {
            resume: true,
            ..state.config.clone()
        };
        let trainer = Trainer::new(&file, &cfg)
            .unwrap_or_else(|e| panic!("trial {trial} (killed after {delay} ms): {e}"));
        assert_eq!(trainer.completed(), state.step, "trial {trial}");
        loaded += 1;
    }
    let took = t0.elapsed();
    eprintln!(
        "{TRIALS} kills in {took:.1?}: {loaded} left a checkpoint that loaded (newest step \
         {newest}), {leftovers} left a cut save or prune behind"
    );
    assert!(
        loaded >= TRIALS / 2,
        "only {loaded} of {TRIALS} trials had a checkpoint"
    );
    // The time is printed, not asserted (timings are measured, never tested); the trials are
    // bounded by their step counts and kill delays.
    assert!(newest > 3, "the runs made no progress across kills");
}
