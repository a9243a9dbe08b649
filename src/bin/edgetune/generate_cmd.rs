//! `edgetune generate --model M --prompt TEXT [--template auto|alpaca|llama3-chat|none]
//! [--template-file FILE.jinja] [--max-tokens N] [--temperature T] [--top-k K] [--top-p P]
//! [--seed S] [--compute int8|f32] [--backend cpu|cuda|auto] [--weights auto|map|upload|stream]
//! [--budget SIZE | --board NAME] [--guard POLICY.toml] [--json]`: streams text to stdout (with `--guard`, the answer is printed once the policy has
//! checked it). By default the prompt is one user message in the model's chat template.

use std::io::Write;
use std::path::PathBuf;

use edgetune::eval::{Policy, REFUSAL};
use edgetune::gguf::GgufFile;
use edgetune::infer::{CausalLm, GenerateOptions, SamplingParams, generate};
use edgetune::model::Llama;
use edgetune::tokenizer::Tokenizer;
use edgetune::{Error, Result};

use crate::backend_args::{BackendArgs, Chosen};
use crate::compute_args::ComputeArgsF32;
use crate::infer_budget_args::InferBudgetArgs;
use crate::template_args::TemplateArgs;
use edgetune::model::DEFAULT_MAX_BATCH;
use edgetune::train::budget::infer::InferenceShape;

#[derive(clap::Args)]
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
    /// The prompt text (the user message with a chat template; the instruction with alpaca).
    #[arg(long)]
    prompt: String,
    #[command(flatten)]
    template: TemplateArgs,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample among the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// After the text, print a JSON summary (tokens, stop reason, speeds) on stderr.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    budget: InferBudgetArgs,
    #[command(flatten)]
    compute: ComputeArgsF32,
    /// A guard policy (TOML, see policies/default.toml): a prompt it matches is not answered,
    /// an output it matches is replaced; both print "Sorry, I can't help you with that. Do
    /// you need anything else?". The output is then printed whole, not streamed.
    #[arg(long, value_name = "POLICY.toml")]
    guard: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let policy = args.guard.as_deref().map(Policy::load).transpose()?;
    if let Some(hit) = policy.as_ref().and_then(|p| p.check_prompt(&args.prompt)) {
        println!("{REFUSAL}");
        if args.json {
            eprintln!("{}", serde_json::json!({ "tokens": [], "blocked": hit }));
        }
        return Ok(());
    }
    let file = GgufFile::open(&args.model)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let prompt = args
        .template
        .format(&file, &tokenizer)?
        .encode(&tokenizer, &args.prompt)?;
    match args.backend.resolve()? {
        Chosen::Cpu => {
            // Planned before anything is loaded: the cache holds the prompt and the answer.
            let context = edgetune::model::LlamaConfig::from_gguf(&file)?.context_length;
            let shape = InferenceShape {
                kv_positions: (prompt.len() + args.max_tokens).min(context),
                chunk_tokens: prompt.len().clamp(1, DEFAULT_MAX_BATCH),
                logit_rows: 1,
                threads: None,
            };
            let stream = args.budget.streams(&file, args.backend.weights, shape)?;
            let mut llama = Llama::load(&file)?;
            llama.set_compute(args.compute.get())?;
            if let Some(options) = stream {
                llama.stream_weights_with(&file, options)?;
            }
            if let Some(path) = &args.adapter {
                let set = edgetune::export::load_scaled(path, llama.config(), args.adapter_scale)?;
                llama.set_adapters(Some(std::sync::Arc::new(set)))?;
            }
            run_on(&args, &tokenizer, &prompt, &llama, policy.as_ref())
        }
        #[cfg(feature = "cuda")]
        Chosen::Cuda(backend) => {
            args.budget.cpu_only()?;
            if args.adapter.is_some() {
                return Err(Error::Invalid(
                    "--adapter runs on the CPU backend only in this version; use --backend cpu"
                        .into(),
                ));
            }
            let llama = edgetune::infer::cuda_llama::CudaLlama::load(&file, backend)?;
            run_on(&args, &tokenizer, &prompt, &llama, policy.as_ref())
        }
    }
}

/// Generates from `prompt` on `llama` and prints.
fn run_on(
    args: &Args,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    llama: &impl CausalLm,
    policy: Option<&Policy>,
) -> Result<()> {
    let opts = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        stop_at_eos: true,
    };
    let mut stdout = std::io::stdout().lock();
    if let Some(policy) = policy {
        let out = generate(llama, tokenizer, prompt, &opts, |_| true)?;
        let hit = policy.check_output(&out.text);
        let text = if hit.is_some() {
            REFUSAL
        } else {
            out.text.as_str()
        };
        writeln!(stdout, "{text}").map_err(|e| Error::io("<stdout>", e))?;
        if args.json {
            let summary = serde_json::json!({
                "prompt_tokens": out.prompt_tokens,
                "tokens": out.tokens,
                "stop": out.stop,
                "blocked": hit,
            });
            eprintln!("{summary}");
        }
        return Ok(());
    }
    let mut write_failed = None;
    let out = generate(llama, tokenizer, prompt, &opts, |piece| {
        match stdout
            .write_all(piece.as_bytes())
            .and_then(|_| stdout.flush())
        {
            Ok(()) => true,
            Err(e) => {
                write_failed = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = write_failed {
        return Err(Error::io("<stdout>", e));
    }
    let _ = writeln!(stdout);
    if args.json {
        let summary = serde_json::json!({
            "prompt_tokens": out.prompt_tokens,
            "tokens": out.tokens,
            "stop": out.stop,
            "prompt_tok_per_s": out.prompt_tok_per_s,
            "gen_tok_per_s": out.gen_tok_per_s,
        });
        eprintln!("{summary}");
    } else {
        eprintln!(
            "[{} prompt tokens at {:.1} tok/s; {} generated at {:.1} tok/s; stop: {:?}]",
            out.prompt_tokens,
            out.prompt_tok_per_s,
            out.tokens.len(),
            out.gen_tok_per_s,
            out.stop
        );
    }
    Ok(())
}
