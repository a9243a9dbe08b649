//! Replay data for `train --replay`: general conversations mixed into the training rows
//! (`data::mix`) so that fine-tuning on narrow data does not wear the model's general
//! behaviour away.
//!
//! `--replay self` ([`Replay::Own`]): before the first step the base model answers the first
//! `prompts` of the built-in general requests ([`edgetune_core::data::synth::REPLAY_PROMPTS`], English
//! and Indonesian) greedily with its own chat template (and the run's `--system` message), at
//! most `max_tokens` each; training on
//! its own answers (self-distillation) keeps what it would have said. An answer cut off by the
//! token limit is trimmed back to its last full sentence (training on a cut answer followed by
//! the end-of-turn token would teach the model to stop mid-sentence); one without a full
//! sentence, a refusal, or a degenerate one ([`is_degenerate`]: the prompt echoed, a sentence
//! said twice) is left out. The answers are cached as chat JSONL in
//! `OUT/replay/self-<fingerprint>.jsonl`, the fingerprint covering the model file
//! (`fingerprint.rs`: its size, first and last MiB), the chat template, the prompts and the token limit, so a resume or a
//! second run into the same directory reads them instead of generating them again; a small
//! `.json` beside it records how long the generation took.
//!
//! `--replay FILE` ([`Replay::File`]): the user's own general data, in any dataset format.

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::config::{Replay, TrainConfig};
use edgetune_core::data::batch::{BatchConfig, Batcher};
use edgetune_core::data::mix::MixedBatcher;
use edgetune_core::data::synth::assistant::is_refusal;
use edgetune_core::data::synth::{ChatPair, Lang, REPLAY_PROMPTS};
use edgetune_core::data::tokenize::{
    TokenizeOptions, TokenizedExample, chat_template_for, pretokenized_all, tokenize_all,
};
use edgetune_core::data::{Format, formats};
use edgetune_core::gguf::GgufFile;
use edgetune_core::infer::{
    DEFAULT_GENERATE_BATCH, GenerateOptions, SamplingParams, StopReason, batch_for_cache_bytes,
    generate_batch,
};
use edgetune_core::model::Llama;
use edgetune_core::tokenizer::Tokenizer;
use edgetune_core::tokenizer::chat_template::{ChatTemplate, PromptFormat};
use edgetune_core::{Error, Result};

/// Bumped when the way answers are generated or trimmed changes (old caches then miss).
const CACHE_VERSION: u64 = 2;

/// What the run's replay data is (`summary.json`'s `replay`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// The conversations file the replay rows come from (the cache for `--replay self`).
    pub path: PathBuf,
    /// Conversations in it.
    pub conversations: usize,
    /// `--replay self`: prompts asked, and the seconds the base model took to answer them
    /// (when the cache was written, perhaps by an earlier run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompts: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generate_s: Option<f64>,
    /// Whether this call generated the answers (false: read from the cache or a file). Not in
    /// `summary.json`: the CLI generates before the trainer starts, which then reads the cache.
    #[serde(skip)]
    pub generated: bool,
    /// The share of training rows that are replay rows.
    pub ratio: f32,
}

/// The cache's side file: what was asked and how long the answers took.
#[derive(Serialize, Deserialize)]
struct CacheMeta {
    prompts: usize,
    kept: usize,
    max_tokens: usize,
    generate_s: f64,
}

/// The base model's greedy answers to `prompts` in `style`, at most `max_tokens` tokens each,
/// as replay conversations (see the module doc for what is trimmed or left out), `batch`
/// prompts generated together ([`generate_batch`]); `on_prompt(done, total)` after each batch.
pub fn answers(
    llama: &Llama,
    tok: &Tokenizer,
    prompts: &[&str],
    style: &PromptFormat,
    max_tokens: usize,
    batch: usize,
    mut on_prompt: impl FnMut(usize, usize),
) -> Result<Vec<ChatPair>> {
    let gen_opts = GenerateOptions {
        max_tokens,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        stop_at_eos: true,
    };
    let mut pairs = Vec::with_capacity(prompts.len());
    let mut done = 0;
    for chunk in prompts.chunks(batch.max(1)) {
        let ids = chunk
            .iter()
            .map(|p| style.encode(tok, p))
            .collect::<Result<Vec<_>>>()?;
        let outs = generate_batch(llama, tok, &ids, &gen_opts)?;
        done += chunk.len();
        on_prompt(done, prompts.len());
        for (prompt, out) in chunk.iter().zip(outs) {
            let out = out?;
            let text = out.text.trim();
            let answer = match out.stop {
                StopReason::EndOfText => text,
                _ => match text.rfind(['.', '!', '?']) {
                    Some(i) => &text[..=i],
                    None => continue,
                },
            };
            if answer.is_empty() || is_refusal(answer) || is_degenerate(prompt, answer) {
                continue;
            }
            pairs.push(ChatPair {
                user: prompt.to_string(),
                assistant: answer.to_string(),
                task: "replay",
                lang: Lang::En,
            });
        }
    }
    Ok(pairs)
}

/// Prompts `--replay self` generates together: [`DEFAULT_GENERATE_BATCH`], fewer when their KV
/// caches (`REPLAY_PROMPT_TOKENS + max_tokens` positions each) would pass 64 MiB, which the
/// generation, done before the training arena exists, may take on top of the mapped model.
pub fn self_batch(llama: &Llama, max_tokens: usize) -> usize {
    batch_for_cache_bytes(
        llama.config(),
        REPLAY_PROMPT_TOKENS + max_tokens,
        64 << 20,
        DEFAULT_GENERATE_BATCH,
    )
}

/// A generous bound on a built-in replay prompt's tokens in a chat template (with a system
/// message): only sizes the generation batch.
const REPLAY_PROMPT_TOKENS: usize = 128;

/// How prompts are written for the base model (`--replay self`) and the evaluations of a run:
/// the model's chat template, with `cfg.system` as the system message when given.
pub fn prompt_format(file: &GgufFile, tok: &Tokenizer, cfg: &TrainConfig) -> Result<PromptFormat> {
    let template = Arc::new(ChatTemplate::for_model(file, tok)?);
    Ok(match &cfg.system {
        Some(system) => PromptFormat::ChatWithSystem(template, system.clone()),
        None => PromptFormat::Chat(template),
    })
}

/// Whether `answer` is one a model should not be taught: it repeats the prompt, or says the
/// same sentence or line twice. A small model asked in a language it barely knows answers that
/// way (SmolLM2-135M echoes most Indonesian prompts); training on it would teach the echo.
pub fn is_degenerate(prompt: &str, answer: &str) -> bool {
    let fold = |s: &str| s.trim().to_lowercase();
    let prompt = fold(prompt);
    if prompt.chars().count() >= 8 && fold(answer).contains(&prompt) {
        return true;
    }
    let mut seen = std::collections::HashSet::new();
    answer
        .split(['\n', '.', '!', '?'])
        .map(fold)
        .filter(|s| s.chars().count() >= 12)
        .any(|s| !seen.insert(s))
}

/// The cache file `--replay self` uses for this model and these settings.
pub fn self_cache_path(
    cfg: &TrainConfig,
    file: &GgufFile,
    tok: &Tokenizer,
    prompts: usize,
    max_tokens: usize,
) -> Result<PathBuf> {
    let template = ChatTemplate::for_model(file, tok)?;
    let mut h = fnv::FnvHasher::default();
    h.write(&CACHE_VERSION.to_le_bytes());
    h.write(&super::fingerprint::model_fingerprint(&cfg.model)?.to_le_bytes());
    h.write(template.source().as_bytes());
    h.write(&(max_tokens as u64).to_le_bytes());
    if let Some(system) = &cfg.system {
        h.write(b"system\0");
        h.write(system.as_bytes());
    }
    for p in &REPLAY_PROMPTS[..prompts.min(REPLAY_PROMPTS.len())] {
        h.write(p.as_bytes());
        h.write(&[0]);
    }
    Ok(cfg
        .out
        .join("replay")
        .join(format!("self-{:016x}.jsonl", h.finish())))
}

/// Makes sure the replay conversations of `cfg` exist and reports them: for `--replay self`
/// generates and caches the base model's answers unless the cache has them
/// (`on_prompt(done, total)` while generating); for a file, only counts. `None` without replay.
pub fn prepare(
    cfg: &TrainConfig,
    file: &GgufFile,
    llama: &Llama,
    on_prompt: impl FnMut(usize, usize),
) -> Result<Option<ReplayReport>> {
    let ratio = cfg.replay_ratio;
    match &cfg.replay {
        None => Ok(None),
        Some(Replay::File(path)) => {
            let data = formats::load(path, None)?;
            Ok(Some(ReplayReport {
                path: path.clone(),
                conversations: data.examples.len(),
                prompts: None,
                generate_s: None,
                generated: false,
                ratio,
            }))
        }
        Some(Replay::Own {
            prompts,
            max_tokens,
        }) => {
            let tok = Tokenizer::from_gguf(file)?;
            let n = (*prompts).min(REPLAY_PROMPTS.len());
            let path = self_cache_path(cfg, file, &tok, n, *max_tokens)?;
            let meta_path = path.with_extension("json");
            if path.exists() && meta_path.exists() {
                let meta: CacheMeta = read_json(&meta_path)?;
                log::info!("replay: {} answers from {}", meta.kept, path.display());
                return Ok(Some(ReplayReport {
                    path,
                    conversations: meta.kept,
                    prompts: Some(meta.prompts),
                    generate_s: Some(meta.generate_s),
                    generated: false,
                    ratio,
                }));
            }
            let style = prompt_format(file, &tok, cfg)?;
            let t = Instant::now();
            let pairs = answers(
                llama,
                &tok,
                &REPLAY_PROMPTS[..n],
                &style,
                *max_tokens,
                self_batch(llama, *max_tokens),
                on_prompt,
            )?;
            if pairs.is_empty() {
                return Err(Error::Invalid(format!(
                    "--replay self: the base model {} answered none of {n} general prompts with a \
                     full sentence within {max_tokens} tokens (give --replay FILE instead)",
                    cfg.model.display()
                )));
            }
            let generate_s = t.elapsed().as_secs_f64();
            // The conversation as it was generated: the run's system message, or none (the
            // template then writes its own default, as it did when generating).
            let mut text = String::new();
            for p in &pairs {
                let mut messages = Vec::with_capacity(3);
                if let Some(system) = &cfg.system {
                    messages.push(serde_json::json!({"role": "system", "content": system}));
                }
                messages.push(serde_json::json!({"role": "user", "content": p.user}));
                messages.push(serde_json::json!({"role": "assistant", "content": p.assistant}));
                let line = serde_json::json!({"messages": messages, "task": "replay"});
                text.push_str(&line.to_string());
                text.push('\n');
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            edgetune_core::atomic_file::write_bytes(&path, text.as_bytes())?;
            let meta = CacheMeta {
                prompts: n,
                kept: pairs.len(),
                max_tokens: *max_tokens,
                generate_s,
            };
            let meta_text = serde_json::to_vec_pretty(&meta)
                .map_err(|e| Error::Invalid(format!("{}: {e}", meta_path.display())))?;
            edgetune_core::atomic_file::write_bytes(&meta_path, &meta_text)?;
            Ok(Some(ReplayReport {
                path,
                conversations: pairs.len(),
                prompts: Some(n),
                generate_s: Some(generate_s),
                generated: true,
                ratio,
            }))
        }
    }
}

/// The replay conversations of `report` tokenized for training (the model's chat template for
/// chat data, as for the training data).
pub fn tokenize(
    file: &GgufFile,
    report: &ReplayReport,
    vocab: usize,
) -> Result<Vec<TokenizedExample>> {
    let format = report.prompts.map(|_| Format::Chat);
    let data = formats::load(&report.path, format)?;
    if let Some(examples) = pretokenized_all(&data, vocab) {
        return examples;
    }
    let tok = Tokenizer::from_gguf(file)?;
    let chat = chat_template_for(file, &tok, &data)?;
    let opts = TokenizeOptions {
        chat_template: chat.as_ref(),
        ..TokenizeOptions::default()
    };
    tokenize_all(&tok, &data, &opts)
}

/// The run's batches: `main` alone, or with `cfg.replay`'s rows mixed in at
/// `cfg.replay_ratio` ([`prepare`] first: generating with `llama` if need be). The replay rows
/// are cut like the training rows, in their own seeded order.
pub fn mix(
    file: &GgufFile,
    llama: &Llama,
    cfg: &TrainConfig,
    main: Batcher,
) -> Result<(MixedBatcher, Option<ReplayReport>)> {
    let Some(report) = prepare(cfg, file, llama, |_, _| {})? else {
        return Ok((MixedBatcher::plain(main), None));
    };
    let examples = tokenize(file, &report, llama.config().n_vocab)?;
    let replay_cfg = BatchConfig {
        // Its own order, unrelated to the training data's.
        seed: cfg.seed ^ 0x7265_706c_6179,
        epochs: None,
        max_steps: None,
        ..main.config().clone()
    };
    let replay = Batcher::new(&examples, replay_cfg)
        .map_err(|e| Error::Invalid(format!("{}: {e}", report.path.display())))?;
    log::info!(
        "replay: {} conversations from {} in {} rows, {:.0} % of the training rows",
        report.conversations,
        report.path.display(),
        replay.n_rows(),
        100.0 * report.ratio
    );
    Ok((
        MixedBatcher::with_replay(main, replay, cfg.replay_ratio)?,
        Some(report),
    ))
}

/// Bytes the replay data adds to the plan (parsed, tokenized and batched), estimated before it
/// exists: the file's size, or for `--replay self` the prompts with answers of `max_tokens`
/// tokens at about 4 bytes each.
pub fn planned_file_bytes(cfg: &TrainConfig) -> Result<u64> {
    Ok(match &cfg.replay {
        None => 0,
        Some(Replay::File(p)) => std::fs::metadata(p).map_err(|e| Error::io(p, e))?.len(),
        Some(Replay::Own {
            prompts,
            max_tokens,
        }) => {
            let n = (*prompts).min(REPLAY_PROMPTS.len());
            let asked: usize = REPLAY_PROMPTS[..n].iter().map(|p| p.len()).sum();
            (asked + n * (4 * max_tokens + 96)) as u64
        }
    })
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::is_degenerate;

    #[test]
    fn echoed_prompts_and_repeated_sentences_are_degenerate() {
        let q = "Bagaimana cara mengirim email dengan lampiran?";
        assert!(is_degenerate(q, &format!("{q}\n\n{q}")));
        assert!(is_degenerate(
            q,
            "bagaimana cara mengirim email dengan lampiran? Ya."
        ));
        assert!(is_degenerate(
            "Apa itu energi terbarukan?",
            "Aku! Aku! Aku! Energi adalah sesuatu.\nEnergi adalah sesuatu."
        ));
        // Ordinary answers, short repeats ("Aku!") and a short prompt inside the answer are fine.
        assert!(!is_degenerate(
            "What is photosynthesis?",
            "Photosynthesis is how plants turn light into chemical energy. It happens in leaves."
        ));
        assert!(!is_degenerate("Hi!", "Hi! How can I help you today?"));
        assert!(!is_degenerate("Say yes.", "Yes! Yes! Happy to help."));
    }
}
