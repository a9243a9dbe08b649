//! `edgetune compare --model M --data D --methods all|LIST --steps N --seq-len L [--budget X]
//! [--suite FILE] [--retention FILE] [--heldout-data FILE] [--lr X] [--method-opt M:FLAG=V]…
//! --out DIR`: trains each method on the same data, seed, steps and budget (each at its own
//! default learning rate unless overridden), measures it, scores it against plain LoRA, and
//! writes `DIR/compare.json`, `DIR/compare.md` (the table is printed too) and `DIR/compare.svg`.
//!
//! The comparison itself is the library's (`edgetune::compare::run`); this front end turns the
//! flags into a `Comparison`, checks every `--method-opt` against `train`'s flags, trains each
//! method in a child process of this same binary (`ChildProcess`: `edgetune train --method
//! NAME … --json` into `DIR/<method>/`, its log in `DIR/<method>/train.log`; the peak RSS is
//! per process) and prints the progress and the table.

use std::path::{Path, PathBuf};

use edgetune::compare::opts::{self as compare_opts, MethodOpt};
use edgetune::compare::{self, ChildProcess, Comparison, Heldout, Progress};
use edgetune::eval::{Suite, load_suite};
use edgetune::{Error, Result};

use crate::template_args::TemplateArgs;

/// The suite used without `--suite` (relative to the working directory).
const DEFAULT_SUITE: &str = "suites/basic.jsonl";

/// `--help`'s closing text: the score, and the learning-rate table as the library has it.
fn after_help() -> String {
    let lrs: Vec<String> = edgetune::train::Method::ALL
        .iter()
        .map(|m| format!("{} {:e}", m.name(), m.spec().compare_lr))
        .collect();
    format!(
        "Learning rates: each method trains at its own default unless --lr sets one for all \
(a --method-opt METHOD:lr=X sets one method's): {}. AdaLoRA (E starts at 0), HiRA (its update \
is scaled by the base weights) and frozen DyLoRA (one component trains per step) move slowly \
at LoRA's rate, LoRA+ trains B 16x faster; the reasons for each are in the README (compare) \
and edgetune::train::method_registry.\n\n\
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
    let method_opts = parse_method_opts(&args.method_opt, &methods)?;
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
    let cfg = Comparison {
        model: args.model,
        data: args.data,
        methods,
        steps: args.steps,
        seq_len: args.seq_len,
        batch: args.batch,
        rank: args.rank,
        lr: args.lr,
        method_opts,
        seed: args.seed,
        budget: args.budget,
        threads: args.threads,
        suite,
        retention,
        max_tokens: args.max_tokens,
        prompt: args.template.spec(),
        heldout: match args.heldout_data {
            Some(file) => Heldout::File(file),
            None => Heldout::Fraction(args.heldout),
        },
        out: args.out,
    };
    // Each method trains in a child process of this binary (per-process peak RSS).
    let exe = std::env::current_exe().map_err(|e| Error::io("<current exe>", e))?;
    let mut runner = ChildProcess { exe };
    // The table is printed when it is written, so a comparison in which every method failed
    // still shows it before its error.
    compare::run(&cfg, &mut runner, &mut |p| match p {
        Progress::Plan { methods, split } => eprintln!(
            "compare: {methods} methods; {} records to train on ({}), {} held out",
            split.train_records,
            split.train_path.display(),
            split.heldout.len()
        ),
        Progress::MeasuringBase => eprintln!("compare: measuring the base model (no adapter) …"),
        Progress::Training { method } => eprintln!("compare: training {method} …"),
        Progress::Row { row } => {
            if let Some(e) = &row.error {
                eprintln!("compare: {} failed: {e}", row.method);
            }
        }
        Progress::Table { table } => print!("{table}"),
    })?;
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
