//! `edgetune testmodel --preset NAME --type TYPE --out FILE [--layers N] [--seed S] [--tokenizer FILE]
//! [--chat-template FILE.jinja]`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use edgetune::gguf::Value;
use edgetune::testmodel::{self, Vocabulary, WeightTypes};
use edgetune::tokenizer::chat_template::KEY_CHAT_TEMPLATE;
use edgetune::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Model shape: tiny, small (≈100M), llama-3.2-1b, llama-3.1-8b, llama-3.1-70b.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Weight type: q4_k_m (Q4_K + Q6_K mix) or one ggml type (f32, f16, bf16, q8_0, q4_0, q4_1,
    /// q5_0, q5_1, q4_k, q5_k, q6_k, iq4_nl), applied per tensor as llama-quantize does
    /// (output in Q6_K) unless --pure.
    #[arg(long = "type", default_value = "q4_k_m")]
    ty: String,
    /// Every 2-D weight in exactly --type (llama-quantize --pure).
    #[arg(long)]
    pure: bool,
    /// Output GGUF file.
    #[arg(long)]
    out: PathBuf,
    /// Layers, instead of the preset's (the other shapes stay; e.g. a model few enough layers
    /// deep for llama-finetune's graph, `scripts/bench-vs-llama-cpp.sh`).
    #[arg(long)]
    layers: Option<usize>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Embed this Hugging Face tokenizer.json's vocabulary (its size replaces the preset's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Store this Jinja file as the model's chat template (`tokenizer.chat_template`).
    #[arg(long, value_name = "FILE.jinja")]
    chat_template: Option<PathBuf>,
}

/// The GGUF tokenizer keys for a Hugging Face `tokenizer.json`, as llama.cpp's converter writes them.
fn tokenizer_metadata(path: &Path) -> Result<Vec<(String, Value)>> {
    let json = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    edgetune::tokenizer::hf_json::gguf_metadata(&json)
}

pub fn run(args: Args) -> Result<()> {
    let mut preset = testmodel::preset(&args.preset)?;
    if let Some(n) = args.layers {
        if n == 0 {
            return Err(Error::Invalid("--layers must be at least 1".into()));
        }
        preset.n_layer = n;
    }
    let mut types = WeightTypes::parse(&args.ty)?;
    if args.pure {
        types = types.pure();
    }
    let mut vocab = match &args.tokenizer {
        None => Vocabulary::Synthetic,
        Some(path) => {
            let kv = tokenizer_metadata(path)?;
            preset.n_vocab = testmodel::vocab_len(&kv)?;
            Vocabulary::Metadata(kv)
        }
    };
    if let Some(path) = &args.chat_template {
        let source = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut kv = match vocab {
            Vocabulary::Synthetic => testmodel::synthetic_vocab_metadata(preset.n_vocab)?,
            Vocabulary::Metadata(kv) => kv,
        };
        kv.retain(|(k, _)| k != KEY_CHAT_TEMPLATE);
        kv.push((KEY_CHAT_TEMPLATE.into(), Value::String(source)));
        vocab = Vocabulary::Metadata(kv);
    }
    let start = Instant::now();
    let written = testmodel::write_test_model_with(&preset, types, args.seed, &vocab, &args.out)?;
    eprintln!(
        "wrote {}: {} bytes ({:.2} GiB), {} parameters ({:.3}B), preset {}, weights {}{}, \
         vocab {}, seed {}, in {:.1} s",
        args.out.display(),
        written.file_size,
        written.file_size as f64 / (1u64 << 30) as f64,
        written.n_params,
        written.n_params as f64 / 1e9,
        preset.name,
        args.ty,
        if args.pure { " (pure)" } else { "" },
        preset.n_vocab,
        args.seed,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
