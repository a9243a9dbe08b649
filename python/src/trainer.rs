//! `edgetune.Trainer`: a training run driven step by step from Python — the mapped model and
//! the [`Trainer`] borrowing it (one self-referential cell, as the C ABI's trainer handle),
//! the run's own thread pool, `metrics.jsonl`. Steps run with the GIL released; the progress
//! callback runs between steps with it held, and returning `False` stops the loop.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use edgetune::data::Format;
use edgetune::gguf::GgufFile;
use edgetune::model::LlamaConfig;
use edgetune::train::metrics::MetricsLog;
use edgetune::train::{Progress, TrainConfig, Trainer as Inner};
use edgetune::{Error, Result};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use self_cell::self_cell;

use crate::data::{self, Source};
use crate::{adapter, err, invalid};

self_cell!(
    /// The mapped model file and the trainer whose model borrows it, owned together.
    struct MappedTrainer {
        owner: GgufFile,
        #[not_covariant]
        dependent: Inner,
    }
);

/// Everything a live run holds.
struct Run {
    trainer: MappedTrainer,
    model: LlamaConfig,
    pool: rayon::ThreadPool,
    metrics: MetricsLog,
    cfg: TrainConfig,
}

impl Run {
    fn new(cfg: TrainConfig) -> Result<Run> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads.unwrap_or(0))
            .build()
            .map_err(|e| Error::Invalid(format!("trainer: cannot start worker threads: {e}")))?;
        let file = GgufFile::open(&cfg.model)?;
        let model = LlamaConfig::from_gguf(&file)?;
        let trainer = MappedTrainer::try_new(file, |f| pool.install(|| Inner::new(f, &cfg)))?;
        let completed = trainer.with_dependent(|_, t| t.completed());
        let metrics = MetricsLog::open(&cfg.out, completed)?;
        // The trainer's own configuration (MT-LoRA fills in the data's tasks).
        let cfg = trainer.with_dependent(|_, t| t.config().clone());
        Ok(Run {
            trainer,
            model,
            pool,
            metrics,
            cfg,
        })
    }

    fn step(&mut self) -> Result<Option<Progress>> {
        let pool = &self.pool;
        let p = self
            .trainer
            .with_dependent_mut(|_, t| pool.install(|| t.step()))?;
        if let Some(p) = &p {
            let tasks = self.trainer.with_dependent(|_, t| t.task_metrics());
            self.metrics.append(p, tasks)?;
            if self.cfg.save_every > 0 && p.step % self.cfg.save_every == 0 {
                self.checkpoint()?;
            }
        }
        Ok(p)
    }

    fn checkpoint(&self) -> Result<PathBuf> {
        self.trainer.with_dependent(|_, t| t.checkpoint())
    }

    fn completed(&self) -> u64 {
        self.trainer.with_dependent(|_, t| t.completed())
    }

    /// Mean loss over the targets of `source` under the current adapters.
    fn evaluate(&mut self, source: &Source, format: Option<Format>) -> Result<(f64, usize)> {
        let set = data::dataset(source, format)?;
        let (cfg, pool) = (&self.cfg, &self.pool);
        self.trainer.with_dependent_mut(|file, t| {
            pool.install(|| {
                let batches = data::batches(file, cfg, &set)?;
                let (mut sum, mut n) = (0.0, 0usize);
                for b in &batches {
                    let (l, c) = t.eval_loss(b)?;
                    sum += l;
                    n += c;
                }
                if n == 0 {
                    return Err(Error::Invalid(
                        "evaluate: the examples hold no loss targets (responses)".into(),
                    ));
                }
                Ok((sum / n as f64, n))
            })
        })
    }
}

/// A training run driven step by step (see `edgetune.Trainer` in `__init__.py` for the
/// Python-facing documentation).
#[pyclass(module = "edgetune._edgetune")]
pub struct Trainer {
    /// `None` after `close()`. A mutex so that the class is `Sync`; calls are serialised.
    run: Mutex<Option<Run>>,
}

impl Trainer {
    fn with_run<R>(&self, f: impl FnOnce(&mut Run) -> PyResult<R>) -> PyResult<R> {
        let mut guard = self.run.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_mut() {
            Some(run) => f(run),
            None => Err(invalid("the trainer is closed")),
        }
    }
}

/// A step's progress as a dict.
fn progress_dict<'py>(py: Python<'py>, p: &Progress) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("step", p.step)?;
    d.set_item("total_steps", p.total_steps)?;
    d.set_item("loss", p.loss)?;
    d.set_item("lr", p.lr)?;
    d.set_item("grad_norm", p.grad_norm)?;
    d.set_item("tok_per_s", p.tok_per_s)?;
    d.set_item("targets", p.targets)?;
    d.set_item("elapsed_s", p.elapsed_s)?;
    Ok(d)
}

#[pymethods]
impl Trainer {
    /// Builds the run from `config_json` (see `config.rs`): maps the model, loads and
    /// tokenizes the data, plans and allocates the step (or resumes from the run directory).
    #[new]
    fn new(py: Python<'_>, config_json: &str) -> PyResult<Trainer> {
        let cfg = crate::config::from_json(config_json)?;
        if cfg.model.as_os_str().is_empty() {
            return Err(invalid("config: no \"model\""));
        }
        let run = py.detach(|| Run::new(cfg)).map_err(err)?;
        Ok(Trainer {
            run: Mutex::new(Some(run)),
        })
    }

    /// Runs up to `n` optimizer steps; returns their losses. Fewer when the steps or the data
    /// are used up, or when `progress(dict)` returned `False` (then `cancelled` is set).
    #[pyo3(signature = (n=1, progress=None))]
    fn step(
        &self,
        py: Python<'_>,
        n: u64,
        progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<(Vec<f64>, bool)> {
        self.with_run(|run| {
            let mut losses = Vec::new();
            for _ in 0..n {
                let p = py.detach(|| run.step()).map_err(err)?;
                let Some(p) = p else { break };
                losses.push(p.loss);
                if let Some(cb) = &progress {
                    let r = cb.call1((progress_dict(py, &p)?,))?;
                    if !r.is_none() && !r.is_truthy()? {
                        return Ok((losses, true));
                    }
                }
                py.check_signals()?;
            }
            Ok((losses, false))
        })
    }

    /// Writes a checkpoint; returns its directory.
    fn checkpoint(&self, py: Python<'_>) -> PyResult<String> {
        self.with_run(|run| {
            let dir = py.detach(|| run.checkpoint()).map_err(err)?;
            Ok(dir.display().to_string())
        })
    }

    /// Writes the adapter as `format` (`"peft"`, `"gguf"` or `"native"`) at `path`.
    fn export(&self, py: Python<'_>, format: &str, path: &str) -> PyResult<()> {
        self.with_run(|run| {
            let meta = serde_json::json!({ "step": run.completed(), "seed": run.cfg.seed });
            let (model, cfg) = (&run.model, &run.cfg);
            py.detach(|| {
                run.trainer.with_dependent(|_, t| {
                    adapter::export_set(
                        t.adapters(),
                        model,
                        &cfg.model,
                        format,
                        std::path::Path::new(path),
                        meta,
                    )
                })
            })
            .map_err(err)
        })
    }

    /// The adapter as a dict of float32 arrays by PEFT tensor name (a snapshot).
    fn get_adapter<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.with_run(|run| {
            let model = &run.model;
            run.trainer
                .with_dependent(|_, t| adapter::to_dict(py, t.adapters(), model))
        })
    }

    /// Replaces the adapter's parameters with `arrays` (every tensor by PEFT name, float32,
    /// C-contiguous); the optimizer state is kept. Nothing is written unless all are valid.
    fn set_adapter(&self, arrays: &Bound<'_, PyDict>) -> PyResult<()> {
        self.with_run(|run| {
            let model = &run.model;
            run.trainer.with_dependent_mut(|_, t| {
                let mut py_err = None;
                let r = t.replace_params(|set| {
                    adapter::write_dict(set, model, arrays).map_err(|e| {
                        py_err = Some(e);
                        Error::Invalid("set_adapter".into())
                    })
                });
                match (r, py_err) {
                    (_, Some(e)) => Err(e),
                    (Err(e), None) => Err(err(e)),
                    (Ok(()), None) => Ok(()),
                }
            })
        })
    }

    /// Mean loss over the response tokens of held-out data (a file, or JSONL text of records)
    /// under the current adapter; returns `(loss, targets)`.
    #[pyo3(signature = (data=None, records_jsonl=None, format=None))]
    fn evaluate(
        &self,
        py: Python<'_>,
        data: Option<String>,
        records_jsonl: Option<String>,
        format: Option<&str>,
    ) -> PyResult<(f64, usize)> {
        let source = match (data, records_jsonl) {
            (Some(p), None) => Source::File(PathBuf::from(p)),
            (None, Some(t)) => Source::Records(t),
            _ => return Err(invalid("evaluate: give data (a path) or data_records")),
        };
        let format = format.map(parse_format).transpose()?;
        self.with_run(|run| py.detach(|| run.evaluate(&source, format)).map_err(err))
    }

    /// Optimizer steps completed (a resumed run counts the earlier ones).
    #[getter]
    fn completed(&self) -> PyResult<u64> {
        self.with_run(|run| Ok(run.completed()))
    }

    #[getter]
    fn total_steps(&self) -> PyResult<u64> {
        self.with_run(|run| Ok(run.trainer.with_dependent(|_, t| t.total_steps())))
    }

    /// The planned peak in bytes (the memory budget's total).
    #[getter]
    fn planned_bytes(&self) -> PyResult<u64> {
        self.with_run(|run| Ok(run.trainer.with_dependent(|_, t| t.planned_bytes())))
    }

    /// The full configuration of the run as JSON.
    #[getter]
    fn config_json(&self) -> PyResult<String> {
        self.with_run(|run| {
            serde_json::to_string(&run.cfg).map_err(|e| invalid(format!("config: {e}")))
        })
    }

    /// Releases the model, the step's memory and the run directory's lock.
    fn close(&self, py: Python<'_>) {
        let run = self
            .run
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        py.detach(move || drop(run));
    }
}

/// `alpaca|chat|text|pretokenized`.
fn parse_format(s: &str) -> PyResult<Format> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
        invalid(format!(
            "format {s:?}: expected alpaca, chat, text or pretokenized"
        ))
    })
}
