//! `edgetune perplexity --model M (--text FILE | --tokens 1,2,3) [--dump-logits OUT.npy]
//! [--compute f32|int8] [--backend cpu|cuda|auto] [--weights auto|map|upload|stream]
//! [--budget SIZE | --board NAME] [--json]`.

use std::path::PathBuf;

use edgetune::gguf::GgufFile;
use edgetune::infer::{CausalLm, perplexity};
use edgetune::model::Llama;
use edgetune::npy::NpyWriter;
use edgetune::tokenizer::Tokenizer;
use edgetune::{Error, Result};

use crate::backend_args::{BackendArgs, Chosen};
use crate::compute_args::ComputeArgsF32;
use crate::infer_budget_args::InferBudgetArgs;
use edgetune::infer::PERPLEXITY_CHUNK;
use edgetune::train::budget::infer::InferenceShape;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["text", "tokens"])))]
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
    /// A text file, tokenized with the model's tokenizer (BOS added when the model asks for it).
    #[arg(long)]
    text: Option<PathBuf>,
    /// Token ids, used exactly as given (no BOS added).
    #[arg(long, value_delimiter = ',')]
    tokens: Option<Vec<u32>>,
    /// Write every position's logits as f32 [n_tokens, vocab].
    #[arg(long, value_name = "OUT.npy")]
    dump_logits: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    budget: InferBudgetArgs,
    // f32 by default: the logits dumps are compared with exact references.
    #[command(flatten)]
    compute: ComputeArgsF32,
}

pub fn run(args: Args) -> Result<()> {
    let file = GgufFile::open(&args.model)?;
    let tokens = input_tokens(&args, &file)?;
    match args.backend.resolve()? {
        Chosen::Cpu => {
            // Planned before anything is loaded: the cache holds the whole text, the logits
            // one chunk (infer/perplexity.rs).
            let shape = InferenceShape {
                kv_positions: tokens.len(),
                chunk_tokens: tokens.len().clamp(1, PERPLEXITY_CHUNK),
                logit_rows: tokens.len().clamp(1, PERPLEXITY_CHUNK),
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
            run_on(&args, &tokens, &llama)
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
            run_on(&args, &tokens, &llama)
        }
    }
}

/// The token ids to score: `--tokens` as given, or `--text` tokenized.
fn input_tokens(args: &Args, file: &GgufFile) -> Result<Vec<u32>> {
    match (&args.tokens, &args.text) {
        (Some(t), _) => Ok(t.clone()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let tokenizer = Tokenizer::from_gguf(file)?;
            tokenizer.encode(&text, tokenizer.add_bos_default(), false)
        }
        (None, None) => Err(Error::Invalid("give --text or --tokens".into())),
    }
}

/// Scores `tokens` on `llama` and prints.
fn run_on(args: &Args, tokens: &[u32], llama: &impl CausalLm) -> Result<()> {
    let vocab = llama.config().n_vocab;
    let mut dump = match &args.dump_logits {
        Some(path) => Some(NpyWriter::create(path, &[tokens.len(), vocab])?),
        None => None,
    };
    let result = perplexity(llama, tokens, |_, row| match dump.as_mut() {
        Some(w) => w.write(row),
        None => Ok(()),
    })?;
    if let Some(w) = dump {
        w.finish()?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).map_err(|e| Error::Invalid(e.to_string()))?
        );
    } else {
        println!(
            "{} tokens, {} predicted: mean NLL {:.6}, perplexity {:.4}",
            result.tokens, result.predicted, result.mean_nll, result.perplexity
        );
    }
    Ok(())
}
