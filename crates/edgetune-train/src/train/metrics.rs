//! `DIR/metrics.jsonl`: one JSON line per optimizer step (a [`Progress`], with an `eval`
//! object on the steps evaluated by `--eval-every`), shared by
//! `edgetune train` ([`super::run`]) and the C trainer handle (`et_trainer_step`). Opening it
//! for a run that resumes at step `s` first cuts the lines after `s` (steps the checkpoint
//! does not hold, and a line cut by a kill), so a resumed run's file reads like an
//! uninterrupted one. Beside it, what a finished run reports ([`Summary`], `DIR/summary.json`).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::config::TrainConfig;
use super::evaluate::{BestPoint, EvalPoint};
use super::replay::ReplayReport;
use edgetune_core::memory::rss::MemoryUsage;
use edgetune_core::{Error, Result};

/// One optimizer step, as reported to the callback and written to `metrics.jsonl`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Progress {
    /// 1-based.
    pub step: u64,
    pub total_steps: u64,
    /// Mean loss over the step's target tokens.
    pub loss: f64,
    pub lr: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens (`batch × seq_len × micro-batches`) per second of this step.
    pub tok_per_s: f64,
    /// Target tokens of this step.
    pub targets: u64,
    /// Training seconds so far (this step included).
    pub elapsed_s: f64,
    /// The evaluation after this step (`--eval-every`), if it was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalPoint>,
    /// Mean `KL(p_base ‖ p)` over the step's anchored tokens (`--kl-anchor`; `None` when the
    /// anchor is off or the step had no replay row).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
}

/// What a finished run reports (`DIR/summary.json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub config: TrainConfig,
    /// Optimizer steps completed (a resumed run counts the earlier ones too).
    pub steps: u64,
    pub resumed_from_step: Option<u64>,
    pub first_loss: Option<f64>,
    pub final_loss: Option<f64>,
    pub elapsed_s: f64,
    pub tokens: u64,
    pub tok_per_s: f64,
    pub trainable_params: usize,
    /// The arena of the step plan.
    pub arena_bytes: u64,
    /// The plan's total (weights, arena, adapters, optimizer state, overheads).
    pub planned_bytes: u64,
    /// The process's measured high-water mark (VmHWM, weights included); `None` off Linux.
    pub peak_bytes: Option<u64>,
    /// The resident set at the end, split into file-backed (the mapped weights) and
    /// anonymous (everything else); `None` off Linux.
    pub memory: Option<MemoryUsage>,
    pub last_checkpoint: Option<PathBuf>,
    /// DyLoRA / QDyLoRA: the rank chosen for export ([`super::Trainer::choose_dylora_rank`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dylora_rank: Option<usize>,
    /// Whether the caller stopped the run before its last step (`progress` returned false:
    /// `edgetune train` on SIGINT/SIGTERM); the last checkpoint is where `--resume` goes on.
    pub interrupted: bool,
    /// The replay data mixed in (`--replay`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayReport>,
    /// `--eval-every`: the base model's pass rates, this process's evaluations, and the
    /// adapter `--keep-best` kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_base: Option<EvalPoint>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub evals: Vec<EvalPoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best: Option<BestPoint>,
    /// Streamed weights: this process's layer reads, bytes, and the seconds the reader read and
    /// the compute waited for it (the rest of `elapsed_s` is compute).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streamed: Option<edgetune_core::model::stream::StreamStats>,
    /// Each layer's adapters were updated right after its backward (`--fused-update`).
    pub fused_update: bool,
}

/// The open `metrics.jsonl` of a run, appended to after every step.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
    /// The first step's loss when the kept lines include step 1 (a resumed run's first loss).
    first_loss: Option<f64>,
}

impl MetricsLog {
    /// Opens `dir/metrics.jsonl` for a run that has completed `completed` steps: lines of
    /// later steps are dropped (atomically), then the file is opened for appending.
    pub fn open(dir: &Path, completed: u64) -> Result<MetricsLog> {
        let path = dir.join("metrics.jsonl");
        let first_loss = keep_through(&path, completed)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(MetricsLog {
            path,
            file,
            first_loss,
        })
    }

    /// The loss of step 1 as kept in the file (`None` for a fresh run).
    pub fn first_loss(&self) -> Option<f64> {
        self.first_loss
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one step's line and flushes it (a kill loses at most the line being written).
    /// `tasks`: MT-LoRA's per-task `(task_losses, task_weights)` objects
    /// ([`super::Trainer::task_metrics`]), added to the line.
    pub fn append(&mut self, p: &Progress, tasks: Option<(Value, Value)>) -> Result<()> {
        let mut value =
            serde_json::to_value(p).map_err(|e| Error::Invalid(format!("metrics: {e}")))?;
        if let Some((losses, weights)) = tasks {
            value["task_losses"] = losses;
            value["task_weights"] = weights;
        }

        let mut line = value.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Cuts the file at `path` to the steps `≤ step` (what a resumed run already did) and returns
/// the first step's loss, if it is there. A missing file is an empty one.
fn keep_through(path: &Path, step: u64) -> Result<Option<f64>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut kept = String::new();
    let mut first = None;
    for line in BufReader::new(f).lines() {
        let line = line.map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => continue, // a line cut by a kill
        };
        let s = v.get("step").and_then(|s| s.as_u64()).unwrap_or(u64::MAX);
        if s <= step {
            if s == 1 {
                first = v.get("loss").and_then(|l| l.as_f64());
            }
            kept.push_str(&line);
            kept.push('\n');
        }
    }
    edgetune_core::atomic_file::write_bytes(path, kept.as_bytes())?;
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(step: u64, loss: f64) -> String {
        format!("{{\"step\":{step},\"loss\":{loss}}}\n")
    }

    #[test]
    fn resuming_cuts_later_steps_and_broken_lines_and_keeps_the_first_loss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let text = [line(1, 5.5), line(2, 5.0), line(3, 4.5)].concat() + "{\"step\":4,\"lo";
        std::fs::write(&path, text).unwrap();
        let log = MetricsLog::open(dir.path(), 2).unwrap();
        assert_eq!(log.first_loss(), Some(5.5));
        drop(log);
        let kept = std::fs::read_to_string(&path).unwrap();
        assert_eq!(kept, [line(1, 5.5), line(2, 5.0)].concat());
        // A fresh run in an empty directory: no file yet, no first loss; the file appears.
        let empty = tempfile::tempdir().unwrap();
        let log = MetricsLog::open(empty.path(), 0).unwrap();
        assert_eq!(log.first_loss(), None);
        assert!(empty.path().join("metrics.jsonl").exists());
    }
}
