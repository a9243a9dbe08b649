//! Text generation: prefill the prompt into a preallocated KV cache, then sample one token at a
//! time, streaming decoded text through a callback, until EOS / end-of-turn or the token limit.

use std::time::Instant;

use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

use super::sampling::{Sampler, SamplingParams};

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop at the tokenizer's EOS / end-of-turn tokens (they are not printed).
    pub stop_at_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampling: SamplingParams::default(),
            stop_at_eos: true,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An EOS or end-of-turn token was sampled.
    EndOfText,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The model's context (or the cache) is full.
    ContextFull,
    /// The callback asked to stop.
    Cancelled,
}

/// The result of [`generate`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Generation {
    pub prompt_tokens: usize,
    /// Generated token ids (the stop token excluded).
    pub tokens: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
    /// Prompt processing speed.
    pub prompt_tok_per_s: f64,
    /// Generation speed (sampled tokens per second, prefill excluded).
    pub gen_tok_per_s: f64,
}

impl Generation {
    /// A generation whose `prompt_tokens`-token prompt took `prompt_secs`, room for
    /// `max_tokens`, nothing generated yet.
    pub(super) fn started(prompt_tokens: usize, prompt_secs: f64, max_tokens: usize) -> Self {
        Generation {
            prompt_tokens,
            tokens: Vec::with_capacity(max_tokens),
            text: String::new(),
            stop: StopReason::MaxTokens,
            prompt_tok_per_s: prompt_tokens as f64 / prompt_secs.max(1e-9),
            gen_tok_per_s: 0.0,
        }
    }
}

/// Refuses an empty prompt and one longer than the model's `context`; the usable context
/// (at least 1) otherwise.
pub(super) fn check_prompt(prompt: &[u32], context: usize) -> Result<usize> {
    if prompt.is_empty() {
        return Err(Error::Invalid(
            "generation needs at least one prompt token".into(),
        ));
    }
    let context = context.max(1);
    if prompt.len() > context {
        return Err(Error::Invalid(format!(
            "the prompt has {} tokens, more than the model's context of {context}",
            prompt.len()
        )));
    }
    Ok(context)
}

/// Generates from `prompt` (token ids, BOS included if wanted). `on_text` receives each piece of
/// decoded text as soon as it is complete UTF-8; returning `false` stops generation.
pub fn generate(
    llama: &impl super::CausalLm,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Generation> {
    let cfg = llama.config();
    let context = check_prompt(prompt, cfg.context_length)?;
    let capacity = (prompt.len() + opts.max_tokens).min(context);
    let mut cache = llama.new_cache(capacity)?;
    let mut sampler = Sampler::new(opts.sampling.clone())?;
    let mut logits = vec![0.0f32; cfg.n_vocab];

    let t0 = Instant::now();
    llama.forward_last(&mut cache, prompt, &mut logits)?;
    super::check_logits(&logits, || {
        format!("generate: after the {}-token prompt", prompt.len())
    })?;
    let prompt_secs = t0.elapsed().as_secs_f64();

    let mut decoder = tokenizer.stream_decoder(false);
    let mut out = Generation::started(prompt.len(), prompt_secs, opts.max_tokens);
    let t1 = Instant::now();
    while out.tokens.len() < opts.max_tokens {
        let next = sampler.sample(&logits)?;
        if opts.stop_at_eos && tokenizer.is_eos(next) {
            out.stop = StopReason::EndOfText;
            break;
        }
        out.tokens.push(next);
        let piece = tokenizer.decode_next(&mut decoder, next)?;
        if !piece.is_empty() {
            out.text.push_str(&piece);
            if !on_text(&piece) {
                out.stop = StopReason::Cancelled;
                break;
            }
        }
        if out.tokens.len() == opts.max_tokens {
            break;
        }
        if cache.len() >= cache.capacity() {
            out.stop = StopReason::ContextFull;
            break;
        }
        llama.forward_last(&mut cache, &[next], &mut logits)?;
        super::check_logits(&logits, || {
            format!("generate: after generated token {}", out.tokens.len())
        })?;
    }
    let rest = decoder.finish();
    if !rest.is_empty() {
        out.text.push_str(&rest);
        on_text(&rest);
    }
    out.gen_tok_per_s = out.tokens.len() as f64 / t1.elapsed().as_secs_f64().max(1e-9);
    Ok(out)
}
