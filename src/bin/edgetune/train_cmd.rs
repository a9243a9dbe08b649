//! `edgetune train --model M --data D --out DIR [--method NAME] [training flags]`: fine-tuning
//! with LoRA or one of its derivatives (method_args.rs), with a progress bar (plain lines when stderr is not a terminal), `DIR/metrics.jsonl`, checkpoints
//! and `DIR/summary.json`.

use std::io::IsTerminal;
use std::path::PathBuf;

use edgetune::data::Format;
use edgetune::gguf::GgufFile;
use edgetune::train::budget;
use edgetune::train::{Decay, Progress, Replay, Summary, TrainConfig};
use edgetune::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::method_args::MethodArgs;
use crate::shape_args::{BudgetArgs, ShapeArgs};

#[derive(clap::Args)]
pub struct Args {
    /// The base model GGUF.
    #[arg(long)]
    model: PathBuf,
    /// The dataset: Alpaca JSON/JSONL, chat JSONL, text, `{"text"}` or `{"input_ids"}` JSONL.
    #[arg(long)]
    data: PathBuf,
    /// Force the dataset format (alpaca, chat, text, pretokenized) instead of detecting it.
    #[arg(long)]
    format: Option<Format>,
    /// The run directory (metrics.jsonl, summary.json, checkpoints/): new or empty, unless
    /// --resume or --overwrite.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in DIR from its newest checkpoint (give the same other arguments).
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// With --resume: when the newest checkpoint is corrupt, continue from the newest valid
    /// older one (the corrupt ones are renamed to corrupt-step-*).
    #[arg(long, requires = "resume")]
    resume_fallback: bool,
    /// Start a new run in --out even though it holds a previous run (its checkpoints, metrics
    /// and summary are deleted first) or other files (kept; the run writes beside them).
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Start from this adapter instead of the fresh init (a checkpoint directory).
    #[arg(long, value_name = "PATH")]
    init_adapter: Option<PathBuf>,
    #[command(flatten)]
    shape: ShapeArgs,
    #[command(flatten)]
    budget: BudgetArgs,
    #[command(flatten)]
    method: MethodArgs,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    lr: f32,
    /// Optimizer steps (with --epochs: whichever ends first).
    #[arg(long)]
    steps: Option<u64>,
    /// Passes over the data.
    #[arg(long)]
    epochs: Option<u64>,
    /// Pack several examples into each sequence.
    #[arg(long)]
    pack: bool,
    /// Decoupled (AdamW) or L2 (SGD) weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.0)]
    momentum: f32,
    /// Linear warmup steps.
    #[arg(long, default_value_t = 0)]
    warmup_steps: u64,
    /// Decay after the warmup: constant, linear, cosine.
    #[arg(long, default_value = "constant")]
    decay: String,
    /// Clip the global gradient norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Checkpoint every N steps (0 = only at the end).
    #[arg(long, default_value_t = 0)]
    save_every: u64,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Mix general conversations into the training rows, so the model keeps its general
    /// behaviour: `self` (the base model's own answers to built-in general prompts, English and
    /// Indonesian, generated before the first step and cached in the run directory) or a
    /// dataset FILE of your own.
    #[arg(long, value_name = "self|FILE")]
    replay: Option<String>,
    /// The share of training rows taken from the replay data.
    #[arg(long, default_value_t = 0.25)]
    replay_ratio: f32,
    /// With --replay: add λ·KL(p_base ‖ p) on the replay rows' answer tokens, pulling the
    /// model's whole next-token distribution there back to the base model's (one extra forward
    /// without adapters for micro-batches holding replay rows; CPU backend). 0: off
    /// [default: 0.5 with --replay, else 0].
    #[arg(long, value_name = "λ")]
    kl_anchor: Option<f32>,
    /// `--replay self`: how many built-in general prompts the base model answers (default: all
    /// 265; the first 160 are English, the rest Indonesian: take 160 for a model that does not
    /// speak Indonesian).
    #[arg(long, value_name = "N")]
    replay_prompts: Option<usize>,
    /// `--replay self`: tokens per answer at most (a longer answer is cut back to its last
    /// full sentence).
    #[arg(long, value_name = "N", default_value_t = 64)]
    replay_tokens: usize,
    /// Evaluate every N steps and at the end (0: never): the retention suite (general
    /// knowledge; built in unless --retention is given) and --heldout, answered greedily; the
    /// base model is measured first. Pass rates go into metrics.jsonl and summary.json.
    #[arg(long, value_name = "N", default_value_t = 0)]
    eval_every: u64,
    /// The held-out eval suite (JSONL cases, as `edgetune eval` takes) for --eval-every.
    #[arg(long, value_name = "FILE")]
    heldout: Option<PathBuf>,
    /// A retention suite of your own instead of the built-in one.
    #[arg(long, value_name = "FILE")]
    retention: Option<PathBuf>,
    /// Tokens generated per evaluated case at most.
    #[arg(long, value_name = "N", default_value_t = 48)]
    eval_max_tokens: usize,
    /// The training forward's products through the frozen weights (CPU step; the backward
    /// stays f32); the evaluations of --eval-every are f32 either way.
    #[command(flatten)]
    compute: crate::compute_args::ComputeArgsF32,
    /// Keep the adapter with the best held-out pass rate whose retention is within
    /// --retention-tolerance of the base model's, in OUT/best (needs --eval-every, --heldout).
    #[arg(long)]
    keep_best: bool,
    /// How far below the base model's retention pass rate a kept adapter may be.
    #[arg(long, value_name = "RATE", default_value_t = 0.1)]
    retention_tolerance: f64,
    /// The system message of the deployed assistant, written by the model's chat template
    /// before the prompts of --eval-every and --replay self (default: the template's own).
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Print the summary as JSON at the end (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    // `cuda`: the device training step (the LoRA family); `auto`: the device when it can run.
    #[command(flatten)]
    backend: crate::backend_args::BackendArgs,
}

impl Args {
    /// The library configuration these flags describe.
    pub fn config(&self) -> Result<TrainConfig> {
        let mut cfg = TrainConfig {
            model: self.model.clone(),
            data: self.data.clone(),
            format: self.format,
            out: self
                .resume
                .clone()
                .or_else(|| self.out.clone())
                .ok_or_else(|| Error::Invalid("give --out DIR".into()))?,
            resume: self.resume.is_some(),
            resume_fallback: self.resume_fallback,
            overwrite: self.overwrite,
            init_adapter: self.init_adapter.clone(),
            lr: self.lr,
            steps: self.steps,
            epochs: self.epochs,
            pack: self.pack,
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            warmup_steps: self.warmup_steps,
            decay: match self.decay.as_str() {
                "constant" => Decay::Constant,
                "linear" => Decay::Linear,
                "cosine" => Decay::Cosine,
                d => {
                    return Err(Error::Invalid(format!(
                        "--decay {d}: expected constant, linear or cosine"
                    )));
                }
            },
            max_grad_norm: self.max_grad_norm,
            seed: self.seed,
            save_every: self.save_every,
            threads: self.threads,
            replay: self.replay.as_deref().map(|r| match r {
                "self" => Replay::Own {
                    prompts: self
                        .replay_prompts
                        .unwrap_or(edgetune::data::synth::REPLAY_PROMPTS.len()),
                    max_tokens: self.replay_tokens,
                },
                file => Replay::File(PathBuf::from(file)),
            }),
            replay_ratio: self.replay_ratio,
            kl_anchor: self.kl_anchor.unwrap_or(if self.replay.is_some() {
                edgetune::train::KL_ANCHOR_WITH_REPLAY
            } else {
                0.0
            }),
            eval_every: self.eval_every,
            heldout: self.heldout.clone(),
            retention: self.retention.clone(),
            eval_max_tokens: self.eval_max_tokens,
            keep_best: self.keep_best,
            retention_tolerance: self.retention_tolerance,
            system: self.system.clone(),
            compute: self.compute.get(),
            ..TrainConfig::default()
        };
        if self.replay_prompts.is_some() && !matches!(cfg.replay, Some(Replay::Own { .. })) {
            return Err(Error::Invalid(
                "--replay-prompts is for --replay self".into(),
            ));
        }
        if let (Some(out), Some(res)) = (&self.out, &self.resume)
            && out != res
        {
            return Err(Error::Invalid(format!(
                "--out {} and --resume {} name different run directories",
                out.display(),
                res.display()
            )));
        }
        self.shape.apply(&mut cfg)?;
        self.budget.apply(&mut cfg)?;
        cfg.weights = self.backend.weights.train_mode();
        self.method.apply(&mut cfg)?;
        cfg.validate()?;
        Ok(cfg)
    }
}

pub fn run_cmd(args: Args) -> Result<()> {
    // `--backend cuda` opens the device first: without one it fails before any reading. A
    // method the device step does not run is then refused by name when the trainer starts.
    use crate::backend_args::BackendArg;
    let cuda = match args.backend.backend {
        BackendArg::Cuda => Some(args.backend.train_device(true)?),
        _ => None,
    };
    let cfg = args.config()?;
    let device = match cuda {
        Some(d) => d,
        None => args.backend.train_device(lora_family(&cfg))?,
    };
    // Refuse before anything is allocated when the plan does not fit the budget.
    let file = GgufFile::open(&cfg.model)?;
    let planned = budget::plan_training(&file, &cfg)?;
    eprintln!("{}", planned.breakdown.report());
    // The trainer checks the budget again (before allocating) and refuses with this table.
    planned.breakdown.check()?;
    // Another run in the directory, or a previous run there without --resume/--overwrite:
    // refused before the replay answers are generated. The trainer takes the lock again.
    let early = edgetune::train::run_dir::prepare(&cfg)?;
    prepare_replay(&cfg, &file)?;
    drop(early);
    drop(file);
    let summary = train_with_progress_on(&cfg, device)?;
    if summary.interrupted {
        eprintln!(
            "interrupted: stopped after step {} with a checkpoint; go on with `edgetune train \
             --resume {} …` and the same other arguments",
            summary.steps,
            cfg.out.display()
        );
    }
    if args.json {
        let text = serde_json::to_string_pretty(&summary)
            .map_err(|e| Error::Invalid(format!("summary: {e}")))?;
        println!("{text}");
    } else {
        print_summary(&summary);
    }
    if summary.interrupted {
        // 128 + SIGINT, as a shell reports a run stopped by Ctrl-C.
        std::process::exit(130);
    }
    Ok(())
}

/// Set by the first SIGINT/SIGTERM: the run stops after its current step, with a checkpoint.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Installs the graceful stop once per process: the first signal asks the run to stop after
/// the current step (checkpoint, summary, exit 130), a second one exits at once.
fn install_stop_handler() {
    use std::sync::Once;
    use std::sync::atomic::Ordering;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let set = ctrlc::set_handler(|| {
            if STOP.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!(
                "\nstopping after this step (a checkpoint is written); signal again to stop now"
            );
        });
        if let Err(e) = set {
            log::warn!("cannot catch SIGINT/SIGTERM ({e}): a signal stops the run at once");
        }
    });
}

/// `--replay`: generates the base model's answers (with a progress bar) or finds them cached,
/// and says which; the trainer then reads them from the cache.
pub fn prepare_replay(cfg: &TrainConfig, file: &GgufFile) -> Result<()> {
    if cfg.replay.is_none() {
        return Ok(());
    }
    let llama = edgetune::model::Llama::load(file)?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} replay prompts  [{elapsed_precise}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    let report = edgetune::train::replay::prepare(cfg, file, &llama, |done, total| match &bar {
        Some(b) => {
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
        // Plain lines when stderr is not a terminal: one every 32 prompts.
        None if done % 32 == 0 || done == total => {
            eprintln!("replay: the base model answered {done} of {total} general prompts")
        }
        None => {}
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(r) = report {
        let share = format!("{:.0} % of the training rows", 100.0 * r.ratio);
        match (r.generated, r.prompts, r.generate_s) {
            (true, Some(n), Some(s)) => eprintln!(
                "replay: the base model answered {} of {n} general prompts in {s:.0} s ({share}; \
                 cached in {})",
                r.conversations,
                r.path.display()
            ),
            (false, Some(_), _) => eprintln!(
                "replay: {} answers of the base model from {} ({share})",
                r.conversations,
                r.path.display()
            ),
            _ => eprintln!(
                "replay: {} conversations from {} ({share})",
                r.conversations,
                r.path.display()
            ),
        }
    }
    Ok(())
}

/// Whether `cfg` trains what the device step runs: the plain-LoRA family without dropout.
pub fn lora_family(cfg: &TrainConfig) -> bool {
    cfg.method.plain_lora() && cfg.lora.dropout == 0.0
}

/// Runs `cfg` with a progress bar on a terminal (plain lines otherwise).
pub fn train_with_progress(cfg: &TrainConfig) -> Result<Summary> {
    train_with_progress_on(cfg, edgetune::train::engine::Device::Cpu)
}

/// [`train_with_progress`] with the micro-batches on `device`.
pub fn train_with_progress_on(
    cfg: &TrainConfig,
    device: edgetune::train::engine::Device,
) -> Result<Summary> {
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let b = ProgressBar::new(cfg.steps.unwrap_or(0));
        b.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    install_stop_handler();
    let mut on_step = |p: &Progress| {
        let msg = format!(
            "loss {:.4}  lr {:.2e}  |g| {:.3}  {:.0} tok/s",
            p.loss, p.lr, p.grad_norm, p.tok_per_s
        );
        if let Some(e) = &p.eval {
            let line = format!("eval after step {}: {}", p.step, eval_text(e));
            match &bar {
                Some(b) => b.println(line),
                None => eprintln!("{line}"),
            }
        }
        match &bar {
            Some(b) => {
                b.set_length(p.total_steps);
                b.set_position(p.step);
                b.set_message(msg);
            }
            None => eprintln!(
                "step {}/{}  {msg}  elapsed {:.1}s",
                p.step, p.total_steps, p.elapsed_s
            ),
        }
        !STOP.load(std::sync::atomic::Ordering::SeqCst)
    };
    let result = edgetune::train::run_on(cfg, device, &mut on_step);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    result
}

fn print_summary(s: &Summary) {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!("steps            {}", s.steps);
    if let (Some(a), Some(b)) = (s.first_loss, s.final_loss) {
        println!("loss             {a:.4} → {b:.4}");
    }
    println!(
        "time             {:.1} s ({:.0} tok/s)",
        s.elapsed_s, s.tok_per_s
    );
    println!("trainable params {}", s.trainable_params);
    println!("planned memory   {:.1} MiB", mib(s.planned_bytes));
    if let Some(m) = &s.memory {
        println!(
            "peak RSS         {:.1} MiB (at the end: {:.1} MiB file-backed, {:.1} MiB anonymous)",
            mib(m.peak_rss),
            mib(m.rss_file),
            mib(m.rss_anon)
        );
    }
    if let Some(c) = &s.last_checkpoint {
        println!("checkpoint       {}", c.display());
    }
    if let Some(b) = &s.eval_base {
        println!("eval, base model {}", eval_text(b));
        for e in &s.evals {
            println!("eval, step {:<5} {}", e.step, eval_text(e));
        }
    }
    if let Some(b) = &s.best {
        println!(
            "best adapter     {} (step {}: {})",
            b.path.display(),
            b.point.step,
            eval_text(&b.point)
        );
    }
}

/// `held-out 46.0 %  retention 90.0 %  (12.3 s)`.
fn eval_text(e: &edgetune::train::evaluate::EvalPoint) -> String {
    let heldout = e
        .heldout
        .map_or(String::new(), |h| format!("held-out {:.1} %  ", 100.0 * h));
    format!(
        "{heldout}retention {:.1} %  ({:.1} s)",
        100.0 * e.retention,
        e.time_s
    )
}
