//! Evaluation during training (`train --eval-every N [--heldout F] [--retention F]
//! [--keep-best]`): the held-out suite and the retention suite (general knowledge the base
//! model has; built in unless a file is given) answered greedily by the base model before the
//! first step and by the adapted model every N steps; the pass rates go into that step's
//! `metrics.jsonl` line and into `summary.json`.
//!
//! `--keep-best` keeps the adapter of the evaluation with the best held-out pass rate among
//! those whose retention is at least the base model's minus `retention_tolerance`, in
//! `OUT/best/` (a native adapter directory: `generate`, `eval` and `export` take it as
//! `--adapter`), with `best.json` saying which step it is. The best so far survives a resume.
//!
//! Each evaluation writes the current adapter to `OUT/eval-adapter/` and loads it back onto a
//! second mapping of the model, exactly as `--adapter` would: what is measured is what is
//! exported. The directory becomes `OUT/best` or is removed. The training step's arena is not touched, so the evaluation costs time, not
//! memory beyond the inference workspace.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::adapter_set::AdapterSet;
use super::config::TrainConfig;
use crate::export::native::{load_adapter, save_adapter};
use edgetune_core::eval::assistant::retention_suite;
use edgetune_core::eval::runner::{EvalOptions, run_suite};
use edgetune_core::eval::suite::{Suite, load_suite};
use edgetune_core::gguf::GgufFile;
use edgetune_core::model::Llama;
use edgetune_core::tokenizer::Tokenizer;
use edgetune_core::{Error, Result};

/// One evaluation: pass rates at a step (step 0: the base model).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    pub step: u64,
    /// Pass rate of the held-out suite (`None` without `--heldout`).
    pub heldout: Option<f64>,
    /// Pass rate of the retention suite.
    pub retention: f64,
    /// Seconds the evaluation took.
    pub time_s: f64,
}

/// The adapter kept by `--keep-best` and where it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestPoint {
    #[serde(flatten)]
    pub point: EvalPoint,
    pub path: PathBuf,
}

/// The suites, the tokenizer and the record of a run's evaluations.
pub struct DuringTraining {
    heldout: Option<Suite>,
    retention: Suite,
    tok: Tokenizer,
    opts: EvalOptions,
    every: u64,
    keep_best: bool,
    tolerance: f64,
    out: PathBuf,
    /// The base model's point (step 0).
    pub base: Option<EvalPoint>,
    /// Every evaluation of this process after the base one.
    pub points: Vec<EvalPoint>,
    /// The kept adapter (`--keep-best`), possibly from before a resume.
    pub best: Option<BestPoint>,
}

impl DuringTraining {
    /// The evaluation `cfg` asks for, or `None` when `eval_every` is 0.
    pub fn new(file: &GgufFile, cfg: &TrainConfig) -> Result<Option<DuringTraining>> {
        if cfg.eval_every == 0 {
            return Ok(None);
        }
        let tok = Tokenizer::from_gguf(file)?;
        let heldout = cfg.heldout.as_deref().map(load_suite).transpose()?;
        let retention = match &cfg.retention {
            Some(p) => load_suite(p)?,
            None => retention_suite()?,
        };
        let best_path = cfg.out.join("best");
        let best = match std::fs::read(best_path.join("best.json")) {
            Ok(bytes) if cfg.resume => Some(serde_json::from_slice(&bytes).map_err(|e| {
                Error::Invalid(format!("{}: {e}", best_path.join("best.json").display()))
            })?),
            _ => None,
        };
        Ok(Some(DuringTraining {
            heldout,
            retention,
            opts: EvalOptions {
                max_tokens: cfg.eval_max_tokens,
                style: super::replay::prompt_format(file, &tok, cfg)?,
                // One case at a time: an evaluation inside a run shares the run's memory
                // budget, and a batch would hold one KV cache per case.
                batch: 1,
            },
            tok,
            every: cfg.eval_every,
            keep_best: cfg.keep_best,
            tolerance: cfg.retention_tolerance,
            out: cfg.out.clone(),
            base: None,
            points: Vec::new(),
            best,
        }))
    }

    /// Whether step `step` (1-based) is evaluated: every `every` steps and the last one.
    pub fn due(&self, step: u64, total: u64) -> bool {
        step.is_multiple_of(self.every) || step == total
    }

    /// Measures the base model (no adapter): the reference `--keep-best` holds retention to.
    pub fn measure_base(&mut self, file: &GgufFile) -> Result<&EvalPoint> {
        let point = self.measure(&Llama::load(file)?, 0)?;
        log::info!(
            "eval: base model: held-out {:?}, retention {:.3} ({:.1} s)",
            point.heldout,
            point.retention,
            point.time_s
        );
        Ok(self.base.insert(point))
    }

    /// Measures `set` after step `step`, keeps it in `OUT/best` when it is the best so far
    /// (with `--keep-best`), and returns the point for the metrics line.
    pub fn measure_adapter(
        &mut self,
        file: &GgufFile,
        set: &AdapterSet,
        step: u64,
    ) -> Result<EvalPoint> {
        let dir = self.out.join("eval-adapter");
        save_adapter(set, &dir, &serde_json::Value::Null)?;
        let mut llama = Llama::load(file)?;
        let loaded = load_adapter(&dir, llama.config())?;
        llama.set_adapters(Some(Arc::new(loaded)))?;
        let point = self.measure(&llama, step)?;
        log::info!(
            "eval: step {step}: held-out {:?}, retention {:.3} ({:.1} s)",
            point.heldout,
            point.retention,
            point.time_s
        );
        if self.keep_best && self.is_better(&point) {
            self.keep(&dir, &point)?;
        } else {
            // Not kept: the run directory holds checkpoints and the best, no stray adapter.
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        self.points.push(point);
        Ok(point)
    }

    /// Whether `p` beats the kept adapter: retention within the tolerance of the base model's
    /// and a higher held-out pass rate (the first of equals is kept).
    fn is_better(&self, p: &EvalPoint) -> bool {
        let floor = self.base.as_ref().map_or(0.0, |b| b.retention) - self.tolerance;
        if p.retention + 1e-9 < floor {
            return false;
        }
        let score = |q: &EvalPoint| q.heldout.unwrap_or(q.retention);
        self.best
            .as_ref()
            .is_none_or(|b| score(p) > score(&b.point) + 1e-9)
    }

    /// Moves the evaluated adapter in `dir` to `OUT/best` (the old best goes only once the
    /// new one is in place under another name, so a kill leaves one of them whole).
    fn keep(&mut self, dir: &Path, p: &EvalPoint) -> Result<()> {
        let best = self.out.join("best");
        let incoming = self.out.join("best.incoming");
        let old = self.out.join("best.old");
        for d in [&incoming, &old] {
            if d.exists() {
                std::fs::remove_dir_all(d).map_err(|e| Error::io(d, e))?;
            }
        }
        std::fs::rename(dir, &incoming).map_err(|e| Error::io(dir, e))?;
        let record = BestPoint {
            point: *p,
            path: best.clone(),
        };
        let json = serde_json::to_vec_pretty(&record)
            .map_err(|e| Error::Invalid(format!("best.json: {e}")))?;
        edgetune_core::atomic_file::write_bytes(&incoming.join("best.json"), &json)?;
        if best.exists() {
            std::fs::rename(&best, &old).map_err(|e| Error::io(&best, e))?;
        }
        std::fs::rename(&incoming, &best).map_err(|e| Error::io(&incoming, e))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        log::info!("eval: step {} kept in {}", p.step, best.display());
        self.best = Some(record);
        Ok(())
    }

    fn measure(&self, llama: &Llama, step: u64) -> Result<EvalPoint> {
        let t = Instant::now();
        let rate = |suite: &Suite| {
            run_suite(llama, &self.tok, suite, None, &self.opts, |_, _| {}).map(|r| r.pass_rate)
        };
        let heldout = self.heldout.as_ref().map(rate).transpose()?;
        let retention = rate(&self.retention)?;
        Ok(EvalPoint {
            step,
            heldout,
            retention,
            time_s: t.elapsed().as_secs_f64(),
        })
    }
}
