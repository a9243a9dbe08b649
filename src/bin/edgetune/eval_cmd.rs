//! `edgetune eval --model M [--adapter A] --suite FILE|--retention [--guard POLICY.toml] [--max-tokens N]
//! [--compute int8|f32] [--template auto|alpaca|llama3-chat|none] [--template-file FILE.jinja] [--json]`: greedy
//! answers to a JSONL suite of prompts, each checked (`contains`, `regex`, `equals`,
//! `not_contains`); prints the pass rate and every failure. Failing cases are a
//! result, not an error: the exit status is 0 whenever the suite ran.

use std::path::PathBuf;
use std::sync::Arc;

use edgetune::eval::{EvalOptions, EvalReport, Policy, load_suite, run_suite};
use edgetune::gguf::GgufFile;
use edgetune::model::Llama;
use edgetune::tokenizer::Tokenizer;
use edgetune::{Error, Result};

use crate::compute_args::ComputeArgsF32;
use crate::template_args::TemplateArgs;
use edgetune::train::budget::infer::InferenceShape;

#[derive(clap::Args)]
#[command(
    after_help = "Suite lines: {\"id\": \"fib\", \"input\": \"1, 1, 2, 3, 5, 8, 13,\", \
\"checks\": [{\"contains\": \"21\"}], \"template\": \"…{input}…\" (optional), \"lang\": \"en\" \
(optional)}. A case without a template is formatted by --template: by default the model's chat \
template (the Llama 3 template or ChatML for a model without one). A case passes when all its \
checks pass. Shipped: suites/basic.jsonl."
)]
pub struct Args {
    /// The model GGUF.
    #[arg(long)]
    model: PathBuf,
    /// An adapter applied on top of the model: an edgetune or PEFT directory, or a GGUF adapter.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Multiplies the adapter's output (llama.cpp's `--lora-scaled`).
    #[arg(long, default_value_t = 1.0, requires = "adapter")]
    adapter_scale: f32,
    /// The suite: JSONL, one case per line.
    #[arg(long, required_unless_present = "retention")]
    suite: Option<PathBuf>,
    /// Run the built-in retention suite instead: general knowledge a small pretrained instruct
    /// model answers (what fine-tuning must not take away; `train --eval-every` runs it too).
    #[arg(long, conflicts_with = "suite")]
    retention: bool,
    /// A guard policy (TOML): prompts or outputs it matches are answered with the refusal.
    #[arg(long, value_name = "POLICY.toml")]
    guard: Option<PathBuf>,
    /// Tokens generated per case at most.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Cases generated together (each holds its own KV cache of prompt + max-tokens
    /// positions); 1 answers them one by one. Same answers either way, up to rounding.
    #[arg(long, default_value_t = edgetune::infer::DEFAULT_GENERATE_BATCH,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    batch: usize,
    /// Print the report as JSON (pass_rate, passed, total, by_lang, failures).
    #[arg(long)]
    json: bool,
    /// `stream`: read each layer from the file as it runs (two staging buffers; the head
    /// once) instead of mapping the weights, for a model larger than the memory at hand.
    #[arg(long, value_enum, default_value = "auto")]
    weights: crate::backend_args::WeightsArg,
    #[command(flatten)]
    budget: crate::infer_budget_args::InferBudgetArgs,
    // f32 by default: pass rates comparable across machines and with `train --eval-every`.
    #[command(flatten)]
    compute: ComputeArgsF32,
    /// How cases without their own template are formatted.
    #[command(flatten)]
    template: TemplateArgs,
}

pub fn run(args: Args) -> Result<()> {
    // Read the suite and the policy first: a typo there should not wait for the model.
    let suite = match &args.suite {
        Some(path) => load_suite(path)?,
        None => edgetune::eval::assistant::retention_suite()?,
    };
    let policy = args.guard.as_deref().map(Policy::load).transpose()?;
    let file = GgufFile::open(&args.model)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let style = args.template.format(&file, &tokenizer)?;
    let stream = args.budget.streams(
        &file,
        args.weights,
        eval_shape(&args, &file, &tokenizer, &suite, &style)?,
    )?;
    let mut llama = Llama::load(&file)?;
    llama.set_compute(args.compute.get())?;
    if let Some(options) = stream {
        llama.stream_weights_with(&file, options)?;
    }
    if let Some(path) = &args.adapter {
        let set = edgetune::export::load_scaled(path, llama.config(), args.adapter_scale)?;
        llama.set_adapters(Some(Arc::new(set)))?;
    }
    let opts = EvalOptions {
        max_tokens: args.max_tokens,
        style,
        batch: args.batch,
    };
    let total = suite.cases.len();
    let report = run_suite(
        &llama,
        &tokenizer,
        &suite,
        policy.as_ref(),
        &opts,
        |i, passed| {
            log::info!(
                "case {}/{total}: {}",
                i + 1,
                if passed { "pass" } else { "fail" }
            );
        },
    )?;
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Invalid(format!("eval report: {e}")))?;
        println!("{text}");
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &EvalReport) {
    let langs: Vec<String> = r
        .by_lang
        .iter()
        .map(|(lang, c)| format!("{lang} {}/{}", c.passed, c.total))
        .collect();
    println!(
        "{}: {}/{} passed ({:.1}%)  [{}]",
        r.suite.display(),
        r.passed,
        r.total,
        r.pass_rate * 100.0,
        langs.join(", ")
    );
    if r.blocked > 0 {
        println!("{} answer(s) replaced by the guard", r.blocked);
    }
    for f in &r.failures {
        let guard = f
            .blocked
            .as_ref()
            .map(|h| format!(" [guard: rule {:?} on the {:?}]", h.rule, h.stage))
            .unwrap_or_default();
        println!(
            "FAIL {} (line {}): {}{guard}\n     output: {:?}",
            f.id, f.line, f.check, f.output
        );
    }
}

/// The inference plan's shape of a suite run: the batch of cases whose prompts and answers
/// need the most KV positions together (each sequence its own cache, infer/generate_batch.rs),
/// prompts prefilled one at a time in chunks, one logit row per sequence.
fn eval_shape(
    args: &Args,
    file: &GgufFile,
    tokenizer: &Tokenizer,
    suite: &edgetune::eval::Suite,
    style: &edgetune::tokenizer::chat_template::PromptFormat,
) -> Result<InferenceShape> {
    let context = edgetune::model::LlamaConfig::from_gguf(file)?.context_length;
    let batch = args.batch.max(1);
    let (mut kv, mut longest) = (0, 1);
    for cases in suite.cases.chunks(batch) {
        let mut sum = 0;
        for case in cases {
            let n = edgetune::eval::runner::encode_case(tokenizer, case, style)?.len();
            longest = longest.max(n);
            sum += (n + args.max_tokens).min(context);
        }
        kv = kv.max(sum);
    }
    Ok(InferenceShape {
        kv_positions: kv,
        chunk_tokens: longest.min(edgetune::model::DEFAULT_MAX_BATCH).max(batch),
        logit_rows: batch,
        threads: None,
    })
}
