//! `edgetune compare --model M --data D --methods all|LIST --steps N --seq-len L [--budget X]
//! [--suite FILE] --out DIR`: trains each method on the same data, seed, steps and budget,
//! measures it, scores it against plain LoRA, and writes `DIR/compare.json` and
//! `DIR/compare.md` (the table is printed too).
//!
//! Each method trains in a child process of this same binary (`edgetune train --method NAME
//! … --json`, into `DIR/<method>/`, its log in `DIR/<method>/train.log`) because the peak RSS
//! is per process: one process per method keeps each peak its own. The held-out loss and the
//! suite run here afterwards, with each method's checkpointed adapter on the base (its method
//! state when it has one, else the plain-LoRA files). A method that fails gets its `error` and
//! the others go on. MT-LoRA's held-out loss routes every held-out record to its task's
//! adapter (the record's `task`; a task the run did not see uses the first). Suite cases have
//! no task, so for MT-LoRA the whole suite runs once with each task's adapter:
//! `eval_pass_rate_by_task` holds each task's pass rate and `eval_pass_rate` their mean (what
//! serving a task picked uniformly at random passes; every task counts, not only the first).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use edgetune::data::tasks::DEFAULT_TASK;
use edgetune::data::{IGNORE, TokenizeOptions, TokenizedExample, chat_template_for, tokenize_all};
use edgetune::eval::compare::{self, MethodResult, Split};
use edgetune::eval::{EvalOptions, PromptFormat, Suite, heldout_loss, load_suite, run_suite};
use edgetune::gguf::GgufFile;
use edgetune::model::Llama;
use edgetune::tokenizer::Tokenizer;
use edgetune::train::{Method, method_io, method_tasks};
use edgetune::{Error, Result};

/// The suite used without `--suite` (relative to the working directory).
const DEFAULT_SUITE: &str = "suites/basic.jsonl";

#[derive(clap::Args)]
#[command(
    after_help = "Score (LoRA = 1.0): the geometric mean of four ratios against the LoRA \
run, each higher-is-better: memory = peak_lora / peak (planned bytes when no peak was \
measured), disk = adapter_bytes_lora / adapter_bytes, time = tok_per_s / tok_per_s_lora, \
quality = exp(heldout_loss_lora - heldout_loss) (the held-out perplexity ratio). A missing \
measure is left out of the mean; failed methods have no score. The eval pass rate is shown but \
not scored; for mtlora the suite runs with each task's adapter and the pass rate is the mean \
over the tasks (each task's in compare.json, eval_pass_rate_by_task). lora is always run \
(added first when missing from --methods)."
)]
pub struct Args {
    /// The base model GGUF.
    #[arg(long)]
    model: PathBuf,
    /// The dataset; its last --heldout fraction of records is held out (not trained on).
    #[arg(long)]
    data: PathBuf,
    /// `all`, or a comma-separated list (lora, rslora, loraplus, qlora, dora, adalora, mtlora,
    /// irqlora, olora, pissa, reslora, dylora, qdylora, hira, layerimp).
    #[arg(long, default_value = "all")]
    methods: String,
    /// Optimizer steps per method.
    #[arg(long)]
    steps: u64,
    /// Tokens per sequence (training and held-out loss).
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Adapter rank (every method).
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// Peak learning rate (every method; a method's preset may override it).
    #[arg(long, default_value_t = 2e-4)]
    lr: f32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The memory budget every method must fit (5.5GiB, 512MiB, …).
    #[arg(long, value_name = "SIZE")]
    budget: Option<String>,
    /// Worker threads per training run.
    #[arg(long)]
    threads: Option<usize>,
    /// The eval suite (JSONL) [default: suites/basic.jsonl, when that file is there].
    #[arg(long)]
    suite: Option<PathBuf>,
    /// Tokens generated per suite case.
    #[arg(long, default_value_t = 24)]
    max_tokens: usize,
    /// Fraction of the records held out, taken from the end of the file.
    #[arg(long, default_value_t = 0.1)]
    heldout: f64,
    /// The output directory (DIR/<method>/ is replaced for every method run).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let methods = compare::parse_methods(&args.methods)?;
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    let suite = match &args.suite {
        Some(path) => Some(load_suite(path)?),
        None if Path::new(DEFAULT_SUITE).is_file() => Some(load_suite(Path::new(DEFAULT_SUITE))?),
        None => {
            eprintln!(
                "compare: no {DEFAULT_SUITE} here and no --suite: eval_pass_rate stays empty"
            );
            None
        }
    };
    let split = compare::split_data(&args.data, &args.out, args.heldout)?;
    eprintln!(
        "compare: {} methods; {} records to train on ({}), {} held out",
        methods.len(),
        split.train_records,
        split.train_path.display(),
        split.heldout.len()
    );
    let file = GgufFile::open(&args.model)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let chat = chat_template_for(&file, &tokenizer, &split.heldout)?;
    let opts = TokenizeOptions {
        chat_template: chat.as_ref(),
        ..TokenizeOptions::default()
    };
    let heldout = tokenize_all(&tokenizer, &split.heldout, &opts)?;
    let style = PromptFormat::of_model(&file, &tokenizer)?;

    let mut results: Vec<MethodResult> = Vec::with_capacity(methods.len());
    for method in &methods {
        eprintln!("compare: training {method} …");
        let mut r = MethodResult::new(method);
        match train_child(&args, &split, method) {
            Ok(summary) => {
                r.fill_from_summary(&summary);
                let ckpt = summary
                    .get("last_checkpoint")
                    .and_then(|v| v.as_str())
                    .map(PathBuf::from);
                match ckpt {
                    Some(dir) => measure(
                        &mut r,
                        &args,
                        &file,
                        &tokenizer,
                        &dir,
                        &heldout,
                        suite.as_ref(),
                        &style,
                    ),
                    None => r.add_error("the run wrote no checkpoint"),
                }
            }
            Err(e) => r.add_error(e.to_string()),
        }
        if let Some(e) = &r.error {
            eprintln!("compare: {method} failed: {e}");
        }
        results.push(r);
        // Partial results survive an interrupted comparison.
        write_json(&args.out, &results)?;
    }
    compare::score(&mut results);
    write_json(&args.out, &results)?;
    let table = compare::markdown_table(&results);
    let md = format!(
        "# edgetune compare\n\nmodel `{}`, data `{}` ({} records trained on, {} held out), {} steps, \
         seq-len {}, batch {}, rank {}, lr {}, seed {}, budget {}\n\n{table}\n\
         score = (memory · disk · time · quality)^(1/4) against lora: memory = peak_lora / peak, \
         disk = adapter_lora / adapter, time = tok/s ÷ tok/s_lora, quality = \
         exp(heldout_lora − heldout).\n",
        args.model.display(),
        args.data.display(),
        split.train_records,
        split.heldout.len(),
        args.steps,
        args.seq_len,
        args.batch,
        args.rank,
        args.lr,
        args.seed,
        args.budget.as_deref().unwrap_or("none"),
    );
    let md_path = args.out.join("compare.md");
    std::fs::write(&md_path, md).map_err(|e| Error::io(&md_path, e))?;
    print!("{table}");
    if results.iter().all(|r| r.error.is_some()) {
        return Err(Error::Invalid(format!(
            "compare: every method failed (see {})",
            args.out.join("compare.json").display()
        )));
    }
    Ok(())
}

/// Trains `method` in a child `edgetune train … --json`; returns its summary.
fn train_child(args: &Args, split: &Split, method: &str) -> Result<serde_json::Value> {
    let dir = args.out.join(method);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let exe = std::env::current_exe().map_err(|e| Error::io("<current exe>", e))?;
    let log_path = dir.join("train.log");
    let log = std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
    let mut cmd = Command::new(exe);
    cmd.arg("train")
        .arg("--model")
        .arg(&args.model)
        .arg("--data")
        .arg(&split.train_path)
        .arg("--out")
        .arg(&dir)
        .args(["--method", method])
        .args(["--steps", &args.steps.to_string()])
        .args(["--seq-len", &args.seq_len.to_string()])
        .args(["--batch", &args.batch.to_string()])
        .args(["--rank", &args.rank.to_string()])
        .args(["--lr", &args.lr.to_string()])
        .args(["--seed", &args.seed.to_string()])
        .arg("--json")
        .stdin(Stdio::null())
        .stderr(log);
    if let Some(b) = &args.budget {
        cmd.args(["--budget", b]);
    }
    if let Some(t) = args.threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    let out = cmd.output().map_err(|e| Error::io("edgetune train", e))?;
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

/// Adapter size, held-out loss and suite pass rate of the adapter in `checkpoint`; each
/// failure is recorded in `r.error` and the other measures still run.
#[allow(clippy::too_many_arguments)]
fn measure(
    r: &mut MethodResult,
    args: &Args,
    file: &GgufFile,
    tokenizer: &Tokenizer,
    checkpoint: &Path,
    heldout: &[TokenizedExample],
    suite: Option<&Suite>,
    style: &PromptFormat,
) {
    match compare::adapter_bytes(checkpoint) {
        Ok(b) => r.adapter_bytes = Some(b),
        Err(e) => r.add_error(format!("adapter size: {e}")),
    }
    // The method state when there is one (exact for every method; DoRA and HiRA have no
    // other form), else the plain-LoRA adapter.
    let llama = Llama::load(file).and_then(|mut llama| {
        let set = if method_io::has_method_state(checkpoint) {
            method_io::load_set(checkpoint, file)?
        } else {
            edgetune::export::load_any(checkpoint, llama.config())?
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
        Some(tasks) => mtlora_heldout(&mut llama, file, checkpoint, tasks, heldout, args.seq_len),
        None => heldout_loss(&llama, heldout, args.seq_len).map(|h| h.mean_nll),
    };
    match loss {
        Ok(h) => r.heldout_loss = Some(h),
        Err(e) => r.add_error(format!("held-out loss: {e}")),
    }
    if let Some(suite) = suite {
        let opts = EvalOptions {
            max_tokens: args.max_tokens,
            style: style.clone(),
        };
        let run = |llama: &Llama| run_suite(llama, tokenizer, suite, None, &opts, |_, _| {});
        match &tasks {
            Some(tasks) => {
                let mut by_task = BTreeMap::new();
                let rates = tasks.iter().map(|task| {
                    use_task(&mut llama, file, checkpoint, task)?;
                    let rate = run(&llama)?.pass_rate;
                    by_task.insert(task.clone(), rate);
                    Ok(rate)
                });
                match rates.collect::<Result<Vec<f64>>>() {
                    Ok(rates) => {
                        r.eval_pass_rate = Some(rates.iter().sum::<f64>() / rates.len() as f64);
                        r.eval_pass_rate_by_task = Some(by_task);
                    }
                    Err(e) => r.add_error(format!("eval: {e}")),
                }
            }
            None => match run(&llama) {
                Ok(rep) => r.eval_pass_rate = Some(rep.pass_rate),
                Err(e) => r.add_error(format!("eval: {e}")),
            },
        }
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
    (meta.method == Method::Mtlora).then(|| {
        let t = meta.method_opts.mtlora_tasks;
        if t.is_empty() {
            vec![DEFAULT_TASK.to_string()]
        } else {
            t
        }
    })
}

/// The held-out loss of an MT-LoRA checkpoint: each record scored with its task's adapter
/// (unknown tasks: the first), the targets-weighted mean over the tasks. Leaves `llama` with
/// the first task's adapters.
fn mtlora_heldout(
    llama: &mut Llama,
    file: &GgufFile,
    checkpoint: &Path,
    tasks: &[String],
    heldout: &[TokenizedExample],
    seq_len: usize,
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
    let max_len = seq_len.min(llama.config().context_length).max(2);
    let scored = |ex: &TokenizedExample| {
        let n = ex.ids.len().min(ex.labels.len()).min(max_len);
        ex.labels[..n].iter().skip(1).any(|&l| l != IGNORE)
    };
    let (mut nll, mut targets) = (0.0f64, 0usize);
    for task in tasks {
        let subset: Vec<TokenizedExample> = heldout
            .iter()
            .filter(|ex| task_of(ex) == *task && scored(ex))
            .cloned()
            .collect();
        if subset.is_empty() {
            continue;
        }
        use_task(llama, file, checkpoint, task)?;
        let h = heldout_loss(llama, &subset, seq_len)?;
        nll += h.mean_nll * h.targets as f64;
        targets += h.targets;
    }
    use_task(llama, file, checkpoint, &tasks[0])?;
    if targets == 0 {
        return Err(Error::Invalid("no held-out record has a target".into()));
    }
    Ok(nll / targets as f64)
}

fn write_json(dir: &Path, results: &[MethodResult]) -> Result<()> {
    let path = dir.join("compare.json");
    let text = serde_json::to_string_pretty(results)
        .map_err(|e| Error::Invalid(format!("compare.json: {e}")))?;
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
}
