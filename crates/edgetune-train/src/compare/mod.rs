//! The side-by-side comparison of training methods behind `edgetune compare`: every method
//! trained on the same data, seed, steps and budget, each measured the same way afterwards,
//! scored against plain LoRA, written as `DIR/compare.json`, `DIR/compare.md` and
//! `DIR/compare.svg`.
//!
//! The whole comparison is [`run`]; the front end (the CLI, a C or Python binding) gives it a
//! [`Comparison`], a [`MethodRunner`] that trains one method, and a progress callback, and
//! gets the rows back. How one method trains is the runner's: [`ChildProcess`] runs
//! `edgetune train` in a child process (what the CLI does: peak RSS is per process, so each
//! method's peak is its own); a binding that trains in its own process implements
//! [`MethodRunner`] itself.
//!
//! The parts: [`result`] (one row, [`MethodResult`]; the score, the table, the data split),
//! [`opts`] (the methods' default learning rates, the per-method `train` flags), [`measure`]
//! (the measures after training: adapter size, held-out loss, pass rates), [`runner`] (how one
//! method's run is started) and [`chart`] (`compare.svg`).
//!
//! This module sits above `train`, `eval` and `export`, and nothing in the library below it
//! uses it.

pub mod chart;
pub mod measure;
pub mod opts;
pub mod result;
pub mod runner;

pub use measure::Bench;
pub use opts::{MethodOpt, TrainFlags};
pub use result::{
    BASE_ROW, BASELINE, MethodResult, Split, adapter_bytes, markdown_table, parse_methods,
    run_settings, score, score_against, split_data, split_from_file,
};
pub use runner::{ChildProcess, MethodRun, MethodRunner};

use std::path::{Path, PathBuf};
use std::time::Instant;

use edgetune_core::data::{TokenizeOptions, chat_template_for, tokenize_all};
use edgetune_core::eval::plot::LossCurve;
use edgetune_core::eval::{EvalOptions, Suite};
use edgetune_core::gguf::GgufFile;
use edgetune_core::tokenizer::Tokenizer;
use edgetune_core::tokenizer::prompt_spec::PromptSpec;
use edgetune_core::{Error, Result};

/// Where the held-out records come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Heldout {
    /// The last fraction of the dataset's records (never trained on).
    Fraction(f64),
    /// A file of its own; all of the dataset is trained on.
    File(PathBuf),
}

/// What to compare and how (`edgetune compare`'s flags).
#[derive(Clone, Debug)]
pub struct Comparison {
    /// The base model GGUF.
    pub model: PathBuf,
    /// The dataset (JSONL, JSON array or text).
    pub data: PathBuf,
    /// The methods ([`parse_methods`]: `lora` first, no repeats).
    pub methods: Vec<String>,
    pub steps: u64,
    pub seq_len: usize,
    pub batch: usize,
    pub rank: usize,
    /// One learning rate for every method (`None`: each method's default, [`opts::default_lr`]).
    pub lr: Option<f32>,
    /// Per-method `edgetune train` flags ([`MethodOpt`]).
    pub method_opts: Vec<MethodOpt>,
    pub seed: u64,
    /// The memory budget every method must fit, as `train --budget` takes it (`5.5GiB`).
    pub budget: Option<String>,
    /// Worker threads per training run.
    pub threads: Option<usize>,
    /// The eval suite whose pass rate is reported (`None`: none).
    pub suite: Option<Suite>,
    /// General knowledge the base has and must keep (`retention_pass_rate`).
    pub retention: Option<Suite>,
    /// Tokens generated per suite case.
    pub max_tokens: usize,
    /// How the suites' prompts are formatted.
    pub prompt: PromptSpec,
    pub heldout: Heldout,
    /// The output directory; `DIR/<method>/` is replaced for every method run.
    pub out: PathBuf,
}

/// What [`run`] reports as it goes.
#[derive(Debug)]
pub enum Progress<'a> {
    /// The data is split; training starts next.
    Plan { methods: usize, split: &'a Split },
    /// The base model (no adapter) is being measured.
    MeasuringBase,
    /// `method` starts training.
    Training { method: &'a str },
    /// A row is complete (the base row first); `row.error` says what failed, if anything.
    Row { row: &'a MethodResult },
    /// Every row is scored and the three files are written; `table` is the markdown table
    /// (sent before [`run`] returns, also when it returns the every-method-failed error).
    Table { table: &'a str },
}

/// The comparison's rows, and the markdown table `DIR/compare.md` holds.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The base row first, then one row per method, scored.
    pub results: Vec<MethodResult>,
    /// [`markdown_table`] of the results.
    pub table: String,
}

/// Runs the comparison: splits the data, measures the base model, trains and measures every
/// method with `runner` (a method that fails keeps its error and the others go on), scores,
/// and writes `compare.json` (after every method too, so an interrupted comparison keeps what
/// it measured), `compare.md` and `compare.svg` into `cfg.out`. An error when every method
/// failed (the rows are written first).
pub fn run(
    cfg: &Comparison,
    runner: &mut dyn MethodRunner,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Outcome> {
    if cfg.methods.is_empty() {
        return Err(Error::Invalid("compare: no method to compare".into()));
    }
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let split = match &cfg.heldout {
        Heldout::File(h) => split_from_file(&cfg.data, h)?,
        Heldout::Fraction(f) => split_data(&cfg.data, &cfg.out, *f)?,
    };
    progress(Progress::Plan {
        methods: cfg.methods.len(),
        split: &split,
    });
    let file = GgufFile::open(&cfg.model)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let chat = chat_template_for(&file, &tokenizer, &split.heldout)?;
    let tok_opts = TokenizeOptions {
        chat_template: chat.as_ref(),
        ..TokenizeOptions::default()
    };
    let heldout = tokenize_all(&tokenizer, &split.heldout, &tok_opts)?;
    let bench = Bench {
        file: &file,
        tokenizer: &tokenizer,
        heldout: &heldout,
        seq_len: cfg.seq_len,
        suite: cfg.suite.as_ref(),
        retention: cfg.retention.as_ref(),
        eval: EvalOptions {
            max_tokens: cfg.max_tokens,
            style: cfg.prompt.resolve(&file, &tokenizer)?,
            batch: edgetune_core::infer::DEFAULT_GENERATE_BATCH,
        },
    };

    progress(Progress::MeasuringBase);
    let started = Instant::now();
    let mut base = bench.base();
    base.measure_seconds = Some(started.elapsed().as_secs_f64());
    progress(Progress::Row { row: &base });
    let mut results: Vec<MethodResult> = vec![base];
    for method in &cfg.methods {
        progress(Progress::Training { method });
        let row = train_and_measure(cfg, &split, &bench, runner, method);
        progress(Progress::Row { row: &row });
        results.push(row);
        write_json(&cfg.out, &results)?;
    }
    score(&mut results);
    write_json(&cfg.out, &results)?;
    write_svg(&cfg.out, &results);
    let table = markdown_table(&results);
    write_markdown(cfg, &split, &results, &table)?;
    progress(Progress::Table { table: &table });
    if results
        .iter()
        .filter(|r| !r.is_base())
        .all(|r| r.error.is_some())
    {
        return Err(Error::Invalid(format!(
            "compare: every method failed (see {})",
            cfg.out.join("compare.json").display()
        )));
    }
    Ok(Outcome { results, table })
}

/// One method's row: its run (through `runner`), then its measures on the checkpoint.
fn train_and_measure(
    cfg: &Comparison,
    split: &Split,
    bench: &Bench<'_>,
    runner: &mut dyn MethodRunner,
    method: &str,
) -> MethodResult {
    let mut r = MethodResult::new(method);
    let prepared = method_run(cfg, split, method);
    let run = match prepared {
        Ok(run) => run,
        Err(e) => {
            r.add_error(e.to_string());
            return r;
        }
    };
    // The learning rate it trains at: a `--method-opt METHOD:lr=X` wins over the default.
    r.lr = run.flags.get("lr").and_then(|v| v.parse().ok());
    r.method_opts = opts::opts_of(method, &cfg.method_opts);
    let started = Instant::now();
    let trained = runner.train(&run);
    r.train_seconds = Some(started.elapsed().as_secs_f64());
    match trained {
        Ok(summary) => {
            r.fill_from_summary(&summary);
            let ckpt = summary
                .get("last_checkpoint")
                .and_then(|v| v.as_str())
                .map(PathBuf::from);
            let started = Instant::now();
            match ckpt {
                Some(dir) => bench.method(&mut r, &dir),
                None => r.add_error("the run wrote no checkpoint"),
            }
            r.measure_seconds = Some(started.elapsed().as_secs_f64());
        }
        Err(e) => r.add_error(e.to_string()),
    }
    r
}

/// What `method`'s run gets: its directory (emptied) and the flags of `edgetune train` (the
/// common settings, the learning rate, then the method's `--method-opt`s).
fn method_run(cfg: &Comparison, split: &Split, method: &str) -> Result<MethodRun> {
    let lr = match cfg.lr {
        Some(lr) => lr,
        None => opts::default_lr(method)?,
    };
    let mut flags = TrainFlags::new();
    flags.set("steps", Some(cfg.steps.to_string()));
    flags.set("seq-len", Some(cfg.seq_len.to_string()));
    flags.set("batch", Some(cfg.batch.to_string()));
    flags.set("rank", Some(cfg.rank.to_string()));
    flags.set("lr", Some(lr.to_string()));
    flags.set("seed", Some(cfg.seed.to_string()));
    if let Some(b) = &cfg.budget {
        flags.set("budget", Some(b.clone()));
    }
    if let Some(t) = cfg.threads {
        flags.set("threads", Some(t.to_string()));
    }
    flags.apply(method, &cfg.method_opts);
    let dir = cfg.out.join(method);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(MethodRun {
        method: method.to_owned(),
        model: cfg.model.clone(),
        data: split.train_path.clone(),
        dir,
        flags,
    })
}

fn write_json(dir: &Path, results: &[MethodResult]) -> Result<()> {
    let path = dir.join("compare.json");
    let text = serde_json::to_string_pretty(results)
        .map_err(|e| Error::Invalid(format!("compare.json: {e}")))?;
    edgetune_core::atomic_file::write_bytes(&path, text.as_bytes())
}

/// `DIR/compare.md`: the settings, the table, how the score is made, each method's settings.
fn write_markdown(
    cfg: &Comparison,
    split: &Split,
    results: &[MethodResult],
    table: &str,
) -> Result<()> {
    let md = format!(
        "# edgetune compare\n\nmodel `{}`, data `{}` ({} records trained on, {} held out{}), {} \
         steps, seq-len {}, batch {}, rank {}, seed {}, budget {}\n\n{table}\n\
         score = (memory · disk · time · quality)^(1/4) against lora: memory = peak_lora / peak, \
         disk = adapter_lora / adapter, time = tok/s ÷ tok/s_lora, quality = \
         exp(heldout_lora − heldout).\n\nPer method:\n\n{}",
        cfg.model.display(),
        cfg.data.display(),
        split.train_records,
        split.heldout.len(),
        match &cfg.heldout {
            Heldout::File(h) => format!(" from `{}`", h.display()),
            Heldout::Fraction(_) => String::new(),
        },
        cfg.steps,
        cfg.seq_len,
        cfg.batch,
        cfg.rank,
        cfg.seed,
        cfg.budget.as_deref().unwrap_or("none"),
        run_settings(results),
    );
    let path = cfg.out.join("compare.md");
    edgetune_core::atomic_file::write_bytes(&path, md.as_bytes())
}

/// `DIR/compare.svg` from the results and each run's `metrics.jsonl`. The chart is an extra:
/// a method without metrics is left out of the curves, and a failure is logged, not fatal.
fn write_svg(dir: &Path, results: &[MethodResult]) {
    let curves: Vec<LossCurve> = results
        .iter()
        .filter(|r| !r.is_base())
        .filter_map(|r| {
            let path = dir.join(&r.method).join("metrics.jsonl");
            LossCurve::from_metrics(&r.method, &path)
                .map_err(|e| log::warn!("compare: no loss curve for {}: {e}", r.method))
                .ok()
        })
        .collect();
    let path = dir.join("compare.svg");
    let written = chart::compare_svg(results, &curves)
        .and_then(|svg| edgetune_core::atomic_file::write_bytes(&path, svg.as_bytes()));
    if let Err(e) = written {
        log::warn!("compare: {}: {e}", path.display());
    }
}
