//! `DIR/metrics.jsonl`: one JSON line per optimizer step (a [`Progress`], with an `eval`
//! object on the steps evaluated by `--eval-every`), shared by
//! `edgetune train` ([`super::run`]) and the C trainer handle (`et_trainer_step`). Opening it
//! for a run that resumes at step `s` first cuts the lines after `s` (steps the checkpoint
//! does not hold, and a line cut by a kill), so a resumed run's file reads like an
//! uninterrupted one.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::trainer::Progress;
use crate::{Error, Result};

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
    crate::atomic_file::write_bytes(path, kept.as_bytes())?;
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
