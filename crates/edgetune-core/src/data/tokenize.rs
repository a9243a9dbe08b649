//! Examples → token ids and labels (Hugging Face convention, see the [`super`] module doc):
//! Alpaca through `template::alpaca` plus EOS, chat through the model's chat template
//! ([`ChatTemplate::render_for_training`]), text as BOS + text + EOS, pre-tokenized as given.

use rayon::prelude::*;

use super::{Content, Dataset, Example, IGNORE, locate};
use crate::Error;
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
use crate::tokenizer::chat_template::{self, ChatTemplate};
use crate::tokenizer::template;

/// Choices in turning examples into training sequences.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokenizeOptions<'a> {
    /// Alpaca and chat: loss on the prompt too (every token after the first), not only on the
    /// responses.
    pub train_on_prompt: bool,
    /// Chat: the model's template ([`ChatTemplate::for_model`]). `None` uses
    /// [`ChatTemplate::fallback`], the template of a model without one.
    pub chat_template: Option<&'a ChatTemplate>,
}

/// One training sequence: `labels[i]` is the target for position `i` (predicted from
/// `ids[..i]`) or [`IGNORE`]; `labels[0]` is always [`IGNORE`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenizedExample {
    pub ids: Vec<u32>,
    pub labels: Vec<i32>,
    pub task: Option<String>,
}

impl TokenizedExample {
    /// How many positions carry loss.
    pub fn n_targets(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE).count()
    }

    /// The ids of the positions that carry loss, in order.
    pub fn target_ids(&self) -> Vec<u32> {
        self.labels
            .iter()
            .filter(|&&l| l != IGNORE)
            .map(|&l| l as u32)
            .collect()
    }
}

/// The chat template `data` needs: the model's ([`ChatTemplate::for_model`]) when `data` holds
/// chat examples, else `None`, so a template is compiled only when it is used.
pub fn chat_template_for(
    file: &GgufFile,
    tok: &Tokenizer,
    data: &Dataset,
) -> crate::Result<Option<ChatTemplate>> {
    if !has_chat(data) {
        return Ok(None);
    }
    ChatTemplate::for_model(file, tok).map(Some)
}

fn has_chat(data: &Dataset) -> bool {
    data.examples
        .iter()
        .any(|ex| matches!(ex.content, Content::Chat { .. }))
}

/// Tokenizes every example of `data` (in parallel, order kept); an error names the file and
/// line of the example.
pub fn tokenize_all(
    tok: &Tokenizer,
    data: &Dataset,
    opts: &TokenizeOptions<'_>,
) -> crate::Result<Vec<TokenizedExample>> {
    // The fallback template is compiled once here, not once per example.
    let fallback;
    let mut opts = *opts;
    if opts.chat_template.is_none() && has_chat(data) {
        fallback = ChatTemplate::fallback(tok)?;
        opts.chat_template = Some(&fallback);
    }
    // Each example is tokenized in parallel, but the error reported is the one on the first
    // bad line, whatever thread finished first: a user fixes the file from the top, and the
    // same file must give the same message on every run.
    let results: Vec<crate::Result<TokenizedExample>> = data
        .examples
        .par_iter()
        .map(|ex| {
            tokenize(tok, ex, &opts).map_err(|e| {
                let what = match e {
                    Error::Invalid(m) => m,
                    other => other.to_string(),
                };
                let what = format!("{}: {what}", locate(&data.path, ex.line));
                Error::bad_input(&data.path, Some(ex.line), what)
            })
        })
        .collect();
    results.into_iter().collect()
}

/// Tokenizes one example.
pub fn tokenize(
    tok: &Tokenizer,
    ex: &Example,
    opts: &TokenizeOptions<'_>,
) -> crate::Result<TokenizedExample> {
    let (ids, flags) = match &ex.content {
        Content::Alpaca {
            instruction,
            input,
            output,
        } => {
            let eos = *tok.eos_ids().first().ok_or_else(|| {
                Error::Invalid("the tokenizer has no EOS token to end an Alpaca response".into())
            })?;
            let r = template::alpaca(instruction, Some(input), Some(output));
            // User text never turns into control tokens.
            let (mut ids, mut flags) = tok.encode_parts(r.parts(), tok.add_bos_default(), false)?;
            ids.push(eos);
            flags.push(true);
            (ids, flags)
        }
        Content::Chat { messages } => {
            let fallback;
            let template = match opts.chat_template {
                Some(t) => t,
                None => {
                    fallback = ChatTemplate::fallback(tok)?;
                    &fallback
                }
            };
            let r = template.render_for_training(messages)?;
            // The template's control tokens are parsed, in the contents too, as after
            // Hugging Face's apply_chat_template; BOS only when the template did not write it.
            chat_template::encode_rendered_parts(tok, &r)?
        }
        Content::Text { text } => {
            let eos = *tok.eos_ids().first().ok_or_else(|| {
                Error::Invalid("the tokenizer has no EOS token to end a text".into())
            })?;
            let (mut ids, mut flags) =
                tok.encode_parts([(text.as_str(), true)], tok.add_bos_default(), false)?;
            ids.push(eos);
            flags.push(true);
            (ids, flags)
        }
        Content::PreTokenized { input_ids, labels } => {
            return from_ids(
                input_ids,
                labels.as_deref(),
                tok.vocab_size(),
                ex.task.clone(),
            );
        }
    };
    let train_all = opts.train_on_prompt;
    let mut labels: Vec<i32> = ids
        .iter()
        .zip(&flags)
        .map(|(&id, &f)| if f || train_all { id as i32 } else { IGNORE })
        .collect();
    if let Some(first) = labels.first_mut() {
        *first = IGNORE;
    }
    Ok(TokenizedExample {
        ids,
        labels,
        task: ex.task.clone(),
    })
}

/// A pre-tokenized example as a training sequence: `labels` default to the ids; every id and
/// label is checked against the vocabulary of `vocab` tokens. Needs no tokenizer, so a model
/// whose tokenizer cannot be built still trains on pre-tokenized data.
pub fn from_ids(
    input_ids: &[u32],
    labels: Option<&[i32]>,
    vocab: usize,
    task: Option<String>,
) -> crate::Result<TokenizedExample> {
    let bad = |what: &str, i: usize, v: i64| {
        Error::Invalid(format!(
            "{what}[{i}] = {v} is outside the vocabulary of {vocab} tokens"
        ))
    };
    if let Some(i) = input_ids.iter().position(|&id| id as usize >= vocab) {
        return Err(bad("input_ids", i, input_ids[i] as i64));
    }
    let mut labels = match labels {
        Some(l) => {
            if let Some(i) = l.iter().position(|&x| x != IGNORE && x as usize >= vocab) {
                return Err(bad("labels", i, l[i] as i64));
            }
            l.to_vec()
        }
        None => input_ids.iter().map(|&id| id as i32).collect(),
    };
    if let Some(first) = labels.first_mut() {
        *first = IGNORE;
    }
    Ok(TokenizedExample {
        ids: input_ids.to_vec(),
        labels,
        task,
    })
}

/// Every example of `data` through [`from_ids`] when all of them are pre-tokenized; `None` when
/// any one needs a tokenizer.
pub fn pretokenized_all(
    data: &Dataset,
    vocab: usize,
) -> Option<crate::Result<Vec<TokenizedExample>>> {
    let mut out = Vec::with_capacity(data.examples.len());
    for ex in &data.examples {
        let Content::PreTokenized { input_ids, labels } = &ex.content else {
            return None;
        };
        out.push(
            from_ids(input_ids, labels.as_deref(), vocab, ex.task.clone())
                .map_err(|e| Error::Invalid(format!("{}: {e}", locate(&data.path, ex.line)))),
        );
    }
    Some(out.into_iter().collect())
}
