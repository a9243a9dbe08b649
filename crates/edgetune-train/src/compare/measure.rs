//! The comparison's measures after training: the adapter's size, its held-out loss and
//! the pass rates of the eval suite and the retention suite, for each method's checkpoint and
//! once for the base model without an adapter (the table's `base` row).
//!
//! MT-LoRA's held-out loss routes every held-out record to its task's adapter (the record's
//! `task`; a task the run did not see uses the first). Suite cases have no task, so for MT-LoRA
//! each suite runs once with each task's adapter: `*_by_task` holds each task's pass rate and
//! the pass rate is their mean (what serving a task picked uniformly at random passes; every
//! task counts, not only the first).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::result::{self as compare, BASE_ROW, MethodResult};
use crate::train::{method_io, method_tasks};
use edgetune_core::data::tasks::DEFAULT_TASK;
use edgetune_core::data::{IGNORE, TokenizedExample};
use edgetune_core::eval::{EvalOptions, Suite, heldout_loss, run_suite};
use edgetune_core::gguf::GgufFile;
use edgetune_core::model::Llama;
use edgetune_core::tokenizer::Tokenizer;
use edgetune_core::{Error, Result};

/// What every adapter is measured on.
pub struct Bench<'a> {
    pub file: &'a GgufFile,
    pub tokenizer: &'a Tokenizer,
    pub heldout: &'a [TokenizedExample],
    pub seq_len: usize,
    /// The held-out prompts with checks (`--suite`).
    pub suite: Option<&'a Suite>,
    /// What must not be lost (`--retention`).
    pub retention: Option<&'a Suite>,
    pub eval: EvalOptions,
}

impl Bench<'_> {
    /// The base model's row: held-out loss and pass rates without an adapter.
    pub fn base(&self) -> MethodResult {
        let mut r = MethodResult::new(BASE_ROW);
        let mut llama = match Llama::load(self.file) {
            Ok(l) => l,
            Err(e) => {
                r.add_error(format!("loading the model: {e}"));
                return r;
            }
        };
        match heldout_loss(&llama, self.heldout, self.seq_len) {
            Ok(h) => r.heldout_loss = Some(h.mean_nll),
            Err(e) => r.add_error(format!("held-out loss: {e}")),
        }
        self.suites(&mut r, &mut llama, None);
        r
    }

    /// Adapter size, held-out loss and pass rates of the adapter in `checkpoint`; each failure
    /// is recorded in `r.error` and the other measures still run.
    pub fn method(&self, r: &mut MethodResult, checkpoint: &Path) {
        match compare::adapter_bytes(checkpoint) {
            Ok(b) => r.adapter_bytes = Some(b),
            Err(e) => r.add_error(format!("adapter size: {e}")),
        }
        // The method state when there is one (exact for every method; DoRA and HiRA have no
        // other form), else the plain-LoRA adapter.
        let file = self.file;
        let llama = Llama::load(file).and_then(|mut llama| {
            let set = if method_io::has_method_state(checkpoint) {
                method_io::load_set(checkpoint, file)?
            } else {
                crate::export::load_any(checkpoint, llama.config())?
            };
            llama.set_adapters(Some(Arc::new(set)))?;
            Ok(llama)
        });
        let mut llama = match llama {
            Ok(l) => l,
            Err(e) => return r.add_error(format!("loading the adapter: {e}")),
        };
        let tasks = mtlora_tasks(checkpoint);
        let loss = match &tasks {
            Some(tasks) => self.mtlora_heldout(&mut llama, checkpoint, tasks),
            None => heldout_loss(&llama, self.heldout, self.seq_len).map(|h| h.mean_nll),
        };
        match loss {
            Ok(h) => r.heldout_loss = Some(h),
            Err(e) => r.add_error(format!("held-out loss: {e}")),
        }
        let mt = tasks.as_deref().map(|t| (checkpoint, t));
        self.suites(r, &mut llama, mt);
    }

    /// Both suites' pass rates on `llama` (for MT-LoRA `(checkpoint, tasks)`: once per task).
    fn suites(&self, r: &mut MethodResult, llama: &mut Llama, mt: Option<(&Path, &[String])>) {
        if let Some(suite) = self.suite {
            match self.pass_rate(llama, suite, mt) {
                Ok((rate, by_task)) => {
                    r.eval_pass_rate = Some(rate);
                    r.eval_pass_rate_by_task = by_task;
                }
                Err(e) => r.add_error(format!("eval: {e}")),
            }
        }
        if let Some(suite) = self.retention {
            match self.pass_rate(llama, suite, mt) {
                Ok((rate, by_task)) => {
                    r.retention_pass_rate = Some(rate);
                    r.retention_pass_rate_by_task = by_task;
                }
                Err(e) => r.add_error(format!("retention: {e}")),
            }
        }
    }

    /// The pass rate of `suite`, and for MT-LoRA each task's (the rate is their mean).
    fn pass_rate(
        &self,
        llama: &mut Llama,
        suite: &Suite,
        mt: Option<(&Path, &[String])>,
    ) -> Result<(f64, Option<BTreeMap<String, f64>>)> {
        let run = |llama: &Llama| {
            run_suite(llama, self.tokenizer, suite, None, &self.eval, |_, _| {})
                .map(|rep| rep.pass_rate)
        };
        let Some((checkpoint, tasks)) = mt else {
            return Ok((run(llama)?, None));
        };
        let mut by_task = BTreeMap::new();
        for task in tasks {
            use_task(llama, self.file, checkpoint, task)?;
            by_task.insert(task.clone(), run(llama)?);
        }
        let mean = by_task.values().sum::<f64>() / by_task.len().max(1) as f64;
        Ok((mean, Some(by_task)))
    }

    /// The held-out loss of an MT-LoRA checkpoint: each record scored with its task's adapter
    /// (unknown tasks: the first), the targets-weighted mean over the tasks. Leaves `llama`
    /// with the first task's adapters.
    fn mtlora_heldout(
        &self,
        llama: &mut Llama,
        checkpoint: &Path,
        tasks: &[String],
    ) -> Result<f64> {
        let task_of = |ex: &TokenizedExample| {
            let name = ex.task.as_deref().unwrap_or(DEFAULT_TASK);
            if tasks.iter().any(|t| t == name) {
                name.to_string()
            } else {
                tasks[0].clone()
            }
        };
        // Records with a target within the scored length (as `heldout_loss` counts them), so a
        // task with none is skipped rather than an error.
        let max_len = self.seq_len.min(llama.config().context_length).max(2);
        let scored = |ex: &TokenizedExample| {
            let n = ex.ids.len().min(ex.labels.len()).min(max_len);
            ex.labels[..n].iter().skip(1).any(|&l| l != IGNORE)
        };
        let (mut nll, mut targets) = (0.0f64, 0usize);
        for task in tasks {
            let subset: Vec<TokenizedExample> = self
                .heldout
                .iter()
                .filter(|ex| task_of(ex) == *task && scored(ex))
                .cloned()
                .collect();
            if subset.is_empty() {
                continue;
            }
            use_task(llama, self.file, checkpoint, task)?;
            let h = heldout_loss(llama, &subset, self.seq_len)?;
            nll += h.mean_nll * h.targets as f64;
            targets += h.targets;
        }
        use_task(llama, self.file, checkpoint, &tasks[0])?;
        if targets == 0 {
            return Err(Error::Invalid("no held-out record has a target".into()));
        }
        Ok(nll / targets as f64)
    }
}

/// Puts `checkpoint`'s MT-LoRA adapters on `llama` with `task` selected.
fn use_task(llama: &mut Llama, file: &GgufFile, checkpoint: &Path, task: &str) -> Result<()> {
    let mut set = method_io::load_set(checkpoint, file)?;
    method_tasks::select_task(&mut set, task)?;
    llama.set_adapters(Some(Arc::new(set)))
}

/// The task names of an MT-LoRA checkpoint (`None` for other methods).
fn mtlora_tasks(checkpoint: &Path) -> Option<Vec<String>> {
    let meta = method_io::read_meta(checkpoint).ok()?;
    meta.method.task_routed().then(|| {
        let t = meta.method_opts.mtlora_tasks;
        if t.is_empty() {
            vec![DEFAULT_TASK.to_string()]
        } else {
            t
        }
    })
}
