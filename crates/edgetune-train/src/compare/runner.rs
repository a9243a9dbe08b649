//! How one method of a comparison is trained: the [`MethodRunner`] contract, and
//! [`ChildProcess`], which runs `edgetune train` in a child process.
//!
//! # Why a child process
//!
//! The comparison reports each method's peak memory, and the kernel keeps one high-water mark
//! per process (`VmHWM`): in one process every method after the hungriest would report the
//! hungriest's peak. A child per method keeps each peak its own, and a method that aborts
//! (out of memory, a signal) costs its own row, not the comparison.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::TrainFlags;
use edgetune_core::{Error, Result};

/// One method's training run, as [`super::run`] prepares it.
#[derive(Clone, Debug)]
pub struct MethodRun {
    /// The method (`edgetune train --method` name).
    pub method: String,
    /// The base model GGUF.
    pub model: PathBuf,
    /// The records to train on.
    pub data: PathBuf,
    /// The run directory (empty; the checkpoints, `metrics.jsonl` and `summary.json` go here).
    pub dir: PathBuf,
    /// The rest of the run as `edgetune train` flags: the common settings, the learning rate,
    /// then the method's `--method-opt`s.
    pub flags: TrainFlags,
}

/// Trains one method of a comparison.
pub trait MethodRunner {
    /// Trains `run` to the end and returns its summary as `edgetune train --json` prints it
    /// (at least `last_checkpoint`, and the measures [`super::MethodResult::fill_from_summary`]
    /// reads). An error fails this method's row only.
    fn train(&mut self, run: &MethodRun) -> Result<Value>;
}

/// Runs `EXE train --model … --data … --out DIR --overwrite --method M FLAGS… --json` with its
/// stderr in `DIR/train.log`; the summary is the JSON the child prints.
#[derive(Clone, Debug)]
pub struct ChildProcess {
    /// The `edgetune` executable (the CLI passes its own).
    pub exe: PathBuf,
}

impl MethodRunner for ChildProcess {
    fn train(&mut self, run: &MethodRun) -> Result<Value> {
        let log_path = run.dir.join("train.log");
        let log = std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
        let out = Command::new(&self.exe)
            .arg("train")
            .arg("--model")
            .arg(&run.model)
            .arg("--data")
            .arg(&run.data)
            .arg("--out")
            .arg(&run.dir)
            // The run directory holds this comparison's train.log: the run writes beside it.
            .arg("--overwrite")
            .args(["--method", &run.method])
            .args(run.flags.to_args())
            .arg("--json")
            .stdin(Stdio::null())
            .stderr(log)
            .output()
            .map_err(|e| Error::io(&self.exe, e))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = log
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("(no output)");
            return Err(Error::Invalid(format!(
                "train exited with {}: {} (log: {})",
                out.status,
                last.trim_start_matches("edgetune: error: "),
                log_path.display()
            )));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| {
            Error::Invalid(format!(
                "train printed no JSON summary ({e}); log: {}",
                log_path.display()
            ))
        })
    }
}
