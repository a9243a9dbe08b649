//! Generation for many prompts at once: each prompt is prefilled into its own KV cache, then
//! every unfinished sequence advances by one token per [`CausalLm::decode_batch`] call, so the
//! weights are read once per step for all of them. Each sequence stops on its own (EOS, its
//! token limit, a full cache) and gives exactly what [`generate`](super::generate) gives it
//! alone, up to the kernels' rounding for several rows at once.
//!
//! Memory: one KV cache per prompt of the batch (`prompt + max_tokens` positions each) and one
//! `[batch, vocab]` logits buffer; callers bound the batch (see [`batch_for_cache_bytes`]).

use std::time::Instant;

use super::CausalLm;
use super::generate::{GenerateOptions, Generation, StopReason, check_prompt};
use super::sampling::Sampler;
use crate::model::KvCacheOf;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::{Error, Result};

/// Prompts generated together by default (`eval --batch`, the demo, `--replay self`): beyond
/// about 8 the step is no longer dominated by reading the weights on a CPU.
pub const DEFAULT_GENERATE_BATCH: usize = 8;

/// The largest batch up to `max_batch` whose KV caches (`positions` each, f32 K and V of every
/// layer) fit in `cache_bytes`; at least 1.
pub fn batch_for_cache_bytes(
    cfg: &crate::model::LlamaConfig,
    positions: usize,
    cache_bytes: u64,
    max_batch: usize,
) -> usize {
    let per = (positions * cfg.kv_dim() * cfg.n_layer * 2 * 4).max(1) as u64;
    ((cache_bytes / per) as usize).clamp(1, max_batch.max(1))
}

/// One sequence in flight.
struct Sequence<B: crate::backend::Backend> {
    cache: KvCacheOf<B>,
    sampler: Sampler,
    decoder: StreamDecoder,
    logits: Vec<f32>,
    out: Generation,
    /// The token to feed next step (None: finished).
    pending: Option<u32>,
}

/// Generates from every prompt of `prompts` (token ids, BOS included if wanted) with the same
/// options, running up to `prompts.len()` sequences together. The result holds one entry per
/// prompt, in order: its [`Generation`], or the error that stopped it (an empty prompt, one
/// longer than the context, non-finite logits). An error of the batch as a whole (allocation,
/// a failing backend) is the outer error. `gen_tok_per_s` is each sequence's tokens over the
/// batch's decoding time until it stopped.
pub fn generate_batch<M: CausalLm>(
    llama: &M,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> Result<Vec<Result<Generation>>> {
    let cfg = llama.config();
    let vocab = cfg.n_vocab;
    let mut results: Vec<Option<Result<Generation>>> = (0..prompts.len()).map(|_| None).collect();
    let mut seqs: Vec<(usize, Sequence<M::Backend>)> = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        let context = match check_prompt(prompt, cfg.context_length) {
            Ok(context) => context,
            Err(e) => {
                results[i] = Some(Err(e));
                continue;
            }
        };
        let mut cache = llama.new_cache((prompt.len() + opts.max_tokens).min(context))?;
        let mut logits = vec![0.0f32; vocab];
        let t0 = Instant::now();
        llama.forward_last(&mut cache, prompt, &mut logits)?;
        let prompt_secs = t0.elapsed().as_secs_f64();
        if let Err(e) = super::check_logits(&logits, || {
            format!("generate: after the {}-token prompt", prompt.len())
        }) {
            results[i] = Some(Err(e));
            continue;
        }
        seqs.push((
            i,
            Sequence {
                cache,
                sampler: Sampler::new(opts.sampling.clone())?,
                decoder: tokenizer.stream_decoder(false),
                logits,
                out: Generation::started(prompt.len(), prompt_secs, opts.max_tokens),
                pending: None,
            },
        ));
    }

    let t1 = Instant::now();
    let mut batch_logits = vec![0.0f32; seqs.len() * vocab];
    let mut tokens = Vec::with_capacity(seqs.len());
    loop {
        // Sample every live sequence's next token; those that stop leave the batch.
        for (i, s) in seqs.iter_mut() {
            if results[*i].is_some() {
                continue;
            }
            s.pending = None;
            match next_token(s, tokenizer, opts) {
                Ok(Some(t)) => s.pending = Some(t),
                Ok(None) => {
                    let rest = s.decoder.finish();
                    s.out.text.push_str(&rest);
                    s.out.gen_tok_per_s =
                        s.out.tokens.len() as f64 / t1.elapsed().as_secs_f64().max(1e-9);
                    let empty = Generation::started(0, 0.0, 0);
                    results[*i] = Some(Ok(std::mem::replace(&mut s.out, empty)));
                }
                Err(e) => results[*i] = Some(Err(e)),
            }
        }
        tokens.clear();
        let mut caches: Vec<&mut KvCacheOf<M::Backend>> = Vec::with_capacity(seqs.len());
        for (_, s) in seqs.iter_mut() {
            if let Some(t) = s.pending {
                tokens.push(t);
                caches.push(&mut s.cache);
            }
        }
        if tokens.is_empty() {
            break;
        }
        let n = tokens.len();
        llama.decode_batch(&mut caches, &tokens, &mut batch_logits[..n * vocab])?;
        drop(caches);
        let live = seqs.iter_mut().filter(|(_, s)| s.pending.is_some());
        for ((i, s), row) in live.zip(batch_logits.chunks(vocab)) {
            s.logits.copy_from_slice(row);
            if let Err(e) = super::check_logits(&s.logits, || {
                format!("generate: after generated token {}", s.out.tokens.len())
            }) {
                s.pending = None;
                results[*i] = Some(Err(e));
            }
        }
    }
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.ok_or_else(|| {
                Error::Invalid(format!(
                    "generate_batch: sequence {i} ended without a result"
                ))
            })
        })
        .collect()
}

/// Samples `s`'s next token from its logits and records it: `Some(token)` when the sequence
/// goes on (the token is to be fed), `None` when it stopped (`s.out.stop` says why).
fn next_token<B: crate::backend::Backend>(
    s: &mut Sequence<B>,
    tokenizer: &Tokenizer,
    opts: &GenerateOptions,
) -> Result<Option<u32>> {
    if s.out.tokens.len() >= opts.max_tokens {
        s.out.stop = StopReason::MaxTokens;
        return Ok(None);
    }
    let next = s.sampler.sample(&s.logits)?;
    if opts.stop_at_eos && tokenizer.is_eos(next) {
        s.out.stop = StopReason::EndOfText;
        return Ok(None);
    }
    s.out.tokens.push(next);
    let piece = tokenizer.decode_next(&mut s.decoder, next)?;
    s.out.text.push_str(&piece);
    if s.out.tokens.len() == opts.max_tokens {
        s.out.stop = StopReason::MaxTokens;
        return Ok(None);
    }
    if s.cache.len() >= s.cache.capacity() {
        s.out.stop = StopReason::ContextFull;
        return Ok(None);
    }
    Ok(Some(next))
}
