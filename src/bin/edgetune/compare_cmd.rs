//! `edgetune compare --model M --data D --methods all|LIST --steps N --seq-len L [--budget X]
//! [--suite FILE] [--retention FILE] [--heldout-data FILE] [--lr X] [--method-opt M:FLAG=V]…
//! --out DIR`: trains each method on the same data, seed, steps and budget (each at its own
//! default learning rate unless overridden), measures it, scores it against plain LoRA, and
//! writes `DIR/compare.json`, `DIR/compare.md` (the table is printed too) and `DIR/compare.svg`.
//!
//! Each method trains in a child process of this same binary (`edgetune train --method NAME
//! … --json`, into `DIR/<method>/`, its log in `DIR/<method>/train.log`) because the peak RSS
//! is per process: one process per method keeps each peak its own. The measures run here
//! afterwards (compare_measure.rs), with each method's checkpointed adapter on the base, and
//! once on the base alone before any training (the `base` row). A method that fails gets its
//! `error` and the others go on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use edgetune::data::{TokenizeOptions, chat_template_for, tokenize_all};
use edgetune::eval::compare::{self, MethodResult, Split};
use edgetune::eval::compare_opts::{self, DEFAULT_LRS, MethodOpt, TrainFlags};
use edgetune::eval::plot::{self, LossCurve};
use edgetune::eval::{EvalOptions, Suite, load_suite};
use edgetune::gguf::GgufFile;
use edgetune::tokenizer::Tokenizer;
use edgetune::{Error, Result};

use crate::compare_measure::Bench;
use crate::template_args::TemplateArgs;

/// The suite used without `--suite` (relative to the working directory).
const DEFAULT_SUITE: &str = "suites/basic.jsonl";

/// `--help`'s closing text: the score, and the learning-rate table as the library has it.
fn after_help() -> String {
    let lrs: Vec<String> = DEFAULT_LRS
        .iter()
        .map(|d| format!("{} {:e}", d.method, d.lr))
        .collect();
    format!(
        "Learning rates: each method trains at its own default unless --lr sets one for all \
(a --method-opt METHOD:lr=X sets one method's): {}. AdaLoRA (E starts at 0), HiRA (its update \
is scaled by the base weights) and frozen DyLoRA (one component trains per step) move slowly \
at LoRA's rate, LoRA+ trains B 16x faster; the reasons for each are in the README (compare) \
and edgetune::eval::compare_opts.\n\n\
--method-opt METHOD:FLAG=VALUE (repeatable) passes any `edgetune train` flag to one method's \
run, replacing the common value (METHOD:FLAG for a switch), e.g. `--method-opt \
adalora:adalora-target-r=8 --method-opt hira:base-copy=dense`; METHOD `all` gives it to every \
method (`--method-opt all:pack --method-opt all:warmup-steps=4`), a method's own wins over it. \
Unknown methods or flags are errors; --model, --data, --out, --method, --json, --resume, --format, --init-adapter, --overwrite and --resume-fallback are \
compare's own.\n\n\
Score (LoRA = 1.0): the geometric mean of four ratios against the LoRA run, each \
higher-is-better: memory = peak_lora / peak (planned bytes when no peak was measured), disk = \
adapter_bytes_lora / adapter_bytes, time = tok_per_s / tok_per_s_lora, quality = \
exp(heldout_loss_lora - heldout_loss) (the held-out perplexity ratio). A missing measure is \
left out of the mean; failed methods have no score. The suite's and the retention suite's pass \
rates are shown but not scored; for mtlora each suite runs with each task's adapter and the \
pass rate is the mean over the tasks (each task's in compare.json, *_by_task). The base model \
without an adapter is measured once (the `base` row: held-out loss and pass rates). lora is \
always run (added first when missing from --methods). DIR/compare.svg: every method's training \
loss curve and bar charts of peak memory, adapter size, tok/s and held-out quality.",
        lrs.join(", ")
    )
}

#[derive(clap::Args)]
#[command(after_help = after_help())]
pub struct Args {
    /// The base model GGUF.
    #[arg(long)]
    model: PathBuf,
    /// The dataset; its last --heldout fraction of records is held out (not trained on), unless
    /// --heldout-data gives the held-out records.
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
    /// Peak learning rate for every method [default: each method's own, see below].
    #[arg(long)]
    lr: Option<f32>,
    /// One `edgetune train` flag for one method's run (METHOD `all`: every method's):
    /// METHOD:FLAG=VALUE, or METHOD:FLAG for a switch (repeatable; see below).
    #[arg(long, value_name = "METHOD:FLAG=VALUE")]
    method_opt: Vec<String>,
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
    /// A second eval suite whose pass rate must not drop (general knowledge the base has),
    /// reported as retention_pass_rate.
    #[arg(long, value_name = "FILE")]
    retention: Option<PathBuf>,
    /// Tokens generated per suite case.
    #[arg(long, default_value_t = 24)]
    max_tokens: usize,
    /// How the suites' prompts are formatted (--template, --template-file, --system), as in
    /// `eval`.
    #[command(flatten)]
    template: TemplateArgs,
    /// Fraction of the records held out, taken from the end of the file.
    #[arg(long, default_value_t = 0.1)]
    heldout: f64,
    /// A separate held-out dataset for the held-out loss (then all of --data is trained on).
    #[arg(long, value_name = "FILE", conflicts_with = "heldout")]
    heldout_data: Option<PathBuf>,
    /// The output directory (DIR/<method>/ is replaced for every method run).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let methods = compare::parse_methods(&args.methods)?;
    let opts = parse_method_opts(&args.method_opt, &methods)?;
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
    let retention: Option<Suite> = args.retention.as_deref().map(load_suite).transpose()?;
    let split = match &args.heldout_data {
        Some(h) => compare::split_from_file(&args.data, h)?,
        None => compare::split_data(&args.data, &args.out, args.heldout)?,
    };
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
    let tok_opts = TokenizeOptions {
        chat_template: chat.as_ref(),
        ..TokenizeOptions::default()
    };
    let heldout = tokenize_all(&tokenizer, &split.heldout, &tok_opts)?;
    let bench = Bench {
        file: &file,
        tokenizer: &tokenizer,
        heldout: &heldout,
        seq_len: args.seq_len,
        suite: suite.as_ref(),
        retention: retention.as_ref(),
        eval: EvalOptions {
            max_tokens: args.max_tokens,
            style: args.template.format(&file, &tokenizer)?,
            batch: edgetune::infer::DEFAULT_GENERATE_BATCH,
        },
    };

    eprintln!("compare: measuring the base model (no adapter) …");
    let started = Instant::now();
    let mut base = bench.base();
    base.measure_seconds = Some(started.elapsed().as_secs_f64());
    if let Some(e) = &base.error {
        eprintln!("compare: measuring the base model failed: {e}");
    }
    let mut results: Vec<MethodResult> = vec![base];
    for method in &methods {
        eprintln!("compare: training {method} …");
        let mut r = MethodResult::new(method);
        let flags = train_flags(&args, method, &opts)?;
        r.lr = flags.get("lr").and_then(|v| v.parse().ok());
        r.method_opts = compare_opts::opts_of(method, &opts);
        let started = Instant::now();
        let trained = train_child(&args, &split, method, &flags);
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
        if let Some(e) = &r.error {
            eprintln!("compare: {method} failed: {e}");
        }
        results.push(r);
        // Partial results survive an interrupted comparison.
        write_json(&args.out, &results)?;
    }
    compare::score(&mut results);
    write_json(&args.out, &results)?;
    write_svg(&args.out, &results);
    let table = compare::markdown_table(&results);
    let md = format!(
        "# edgetune compare\n\nmodel `{}`, data `{}` ({} records trained on, {} held out{}), {} \
         steps, seq-len {}, batch {}, rank {}, seed {}, budget {}\n\n{table}\n\
         score = (memory · disk · time · quality)^(1/4) against lora: memory = peak_lora / peak, \
         disk = adapter_lora / adapter, time = tok/s ÷ tok/s_lora, quality = \
         exp(heldout_lora − heldout).\n\nPer method:\n\n{}",
        args.model.display(),
        args.data.display(),
        split.train_records,
        split.heldout.len(),
        args.heldout_data
            .as_ref()
            .map_or(String::new(), |h| format!(" from `{}`", h.display())),
        args.steps,
        args.seq_len,
        args.batch,
        args.rank,
        args.seed,
        args.budget.as_deref().unwrap_or("none"),
        compare::run_settings(&results),
    );
    let md_path = args.out.join("compare.md");
    std::fs::write(&md_path, md).map_err(|e| Error::io(&md_path, e))?;
    print!("{table}");
    if results
        .iter()
        .filter(|r| !r.is_base())
        .all(|r| r.error.is_some())
    {
        return Err(Error::Invalid(format!(
            "compare: every method failed (see {})",
            args.out.join("compare.json").display()
        )));
    }
    Ok(())
}

/// Parses the `--method-opt`s and checks each flag against `edgetune train`'s own (a name it
/// has; a value when it takes one, none for a switch), so a typo fails before any training.
fn parse_method_opts(raw: &[String], methods: &[String]) -> Result<Vec<MethodOpt>> {
    use clap::Args as _;
    let train = crate::train_cmd::Args::augment_args(clap::Command::new("train"));
    let mut opts = Vec::with_capacity(raw.len());
    for s in raw {
        let o: MethodOpt = s.parse()?;
        let arg = train
            .get_arguments()
            .find(|a| a.get_long() == Some(o.flag.as_str()))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "--method-opt {s:?}: `edgetune train` has no --{}",
                    o.flag
                ))
            })?;
        let takes_value = arg.get_action().takes_values();
        if takes_value && o.value.is_none() {
            return Err(Error::Invalid(format!(
                "--method-opt {s:?}: --{} takes a value ({}:{}=VALUE)",
                o.flag, o.method, o.flag
            )));
        }
        if !takes_value && o.value.is_some() {
            return Err(Error::Invalid(format!(
                "--method-opt {s:?}: --{} is a switch ({}:{}, without a value)",
                o.flag, o.method, o.flag
            )));
        }
        if o.method != compare_opts::ALL && !methods.contains(&o.method) {
            eprintln!(
                "compare: --method-opt {s:?}: {} is not among --methods, so it is not used",
                o.method
            );
        }
        opts.push(o);
    }
    Ok(opts)
}

/// The flags of `method`'s run: the common ones, its learning rate (`--lr`, else its default),
/// then its `--method-opt`s.
fn train_flags(args: &Args, method: &str, opts: &[MethodOpt]) -> Result<TrainFlags> {
    let lr = match args.lr {
        Some(lr) => lr,
        None => compare_opts::default_lr(method)?,
    };
    let mut f = TrainFlags::new();
    f.set("steps", Some(args.steps.to_string()));
    f.set("seq-len", Some(args.seq_len.to_string()));
    f.set("batch", Some(args.batch.to_string()));
    f.set("rank", Some(args.rank.to_string()));
    f.set("lr", Some(lr.to_string()));
    f.set("seed", Some(args.seed.to_string()));
    if let Some(b) = &args.budget {
        f.set("budget", Some(b.clone()));
    }
    if let Some(t) = args.threads {
        f.set("threads", Some(t.to_string()));
    }
    f.apply(method, opts);
    Ok(f)
}

/// Trains `method` in a child `edgetune train … --json`; returns its summary.
fn train_child(
    args: &Args,
    split: &Split,
    method: &str,
    flags: &TrainFlags,
) -> Result<serde_json::Value> {
    let dir = args.out.join(method);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let exe = std::env::current_exe().map_err(|e| Error::io("<current exe>", e))?;
    let log_path = dir.join("train.log");
    let log = std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
    let out = Command::new(exe)
        .arg("train")
        .arg("--model")
        .arg(&args.model)
        .arg("--data")
        .arg(&split.train_path)
        .arg("--out")
        .arg(&dir)
        // DIR/<method>/ holds this comparison's train.log: the run writes beside it.
        .arg("--overwrite")
        .args(["--method", method])
        .args(flags.to_args())
        .arg("--json")
        .stdin(Stdio::null())
        .stderr(log)
        .output()
        .map_err(|e| Error::io("edgetune train", e))?;
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

fn write_json(dir: &Path, results: &[MethodResult]) -> Result<()> {
    let path = dir.join("compare.json");
    let text = serde_json::to_string_pretty(results)
        .map_err(|e| Error::Invalid(format!("compare.json: {e}")))?;
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
}

/// `DIR/compare.svg` from the results and each run's `metrics.jsonl`. The chart is an extra:
/// a method without metrics is left out of the curves, and a failure is reported, not fatal.
fn write_svg(dir: &Path, results: &[MethodResult]) {
    let curves: Vec<LossCurve> = results
        .iter()
        .filter(|r| !r.is_base())
        .filter_map(|r| {
            let path = dir.join(&r.method).join("metrics.jsonl");
            LossCurve::from_metrics(&r.method, &path)
                .map_err(|e| eprintln!("compare: no loss curve for {}: {e}", r.method))
                .ok()
        })
        .collect();
    let path = dir.join("compare.svg");
    let written = plot::compare_svg(results, &curves)
        .and_then(|svg| std::fs::write(&path, svg).map_err(|e| Error::io(&path, e)));
    if let Err(e) = written {
        eprintln!("compare: {}: {e}", path.display());
    }
}
