//! Training data: reading datasets (docs/FORMATS.md#datasets), turning examples into token ids with
//! a loss mask, and cutting them into fixed-shape batches; plus a built-in synthetic IoT
//! instruction set ([`synth`]).
//!
//! The path of the data (docs/ARCHITECTURE.md#5-one-training-run-from-gguf-to-adapter): [`load`]
//! reads a file into a [`Dataset`] of [`Example`]s (refusing the whole file, with file and line, if
//! any record is bad); [`tokenize`] turns each example into a [`TokenizedExample`] (ids and
//! labels); a [`Batcher`] packs or truncates those to `seq_len`, shuffles them per epoch and fills
//! preallocated [`Batch`]es of `[batch_size, seq_len]`; a [`MixedBatcher`] mixes a share of replay
//! rows (general conversations the model should keep answering) into them.
//!
//! # Formats ([`Format`])
//! - **Alpaca**: a JSON array, or JSONL, of `{"instruction", "input"?, "output"}`.
//! - **Chat**: JSONL of `{"messages": [{"role", "content"}, …]}`, rendered with the model's chat
//!   template (`tokenizer.chat_template`; without one, the fallback of
//!   [`crate::tokenizer::chat_template::ChatTemplate::fallback`]: Llama 3's or ChatML).
//! - **Text**: JSONL of `{"text": …}`, or a `.txt` file, where each paragraph (lines up to a
//!   blank line) is one example.
//! - **Pre-tokenized**: JSONL of `{"input_ids": [..], "labels"?: [..]}`.
//!
//! A file whose first non-blank character is `[` is a JSON array (one record per element);
//! a `.txt` file is plain text; anything else is JSONL (blank lines skipped). The format is
//! detected from the fields of the first record (`messages` → chat, `input_ids` →
//! pre-tokenized, `instruction`/`output` → Alpaca, `text` → text) unless one is given. Every
//! record may carry `"task": "name"` (kept for multi-task adapters). Unknown fields are ignored.
//!
//! # Label convention (Hugging Face's)
//! `labels` is aligned with `ids`: `labels[i]` is the token the model should produce at
//! position `i` — i.e. predicted from `ids[..i]` — or [`IGNORE`] (-100) for no loss. The loss
//! shifts: logits at position `i - 1` are scored against `labels[i]`. So `labels[0]` is always
//! [`IGNORE`] (nothing precedes it); in packed rows this also keeps an example's first token
//! from being predicted from the previous example.
//!
//! - Alpaca: the classic template; EOS is appended to the output. Loss on the output and its
//!   EOS only (or on everything but the first token with `train_on_prompt`).
//! - Chat: loss on each assistant turn as the template renders it: its content, its end-of-turn
//!   token (`<|eot_id|>`, `<|im_end|>`…) and whatever the template writes after them up to the
//!   next message (no extra EOS). A template that is not prefix-stable is an error.
//! - Text: BOS (when the model adds one), the text, EOS; loss on everything after BOS.
//! - Pre-tokenized: as given; without `labels`, every token after the first is a target.

pub mod batch;
pub mod formats;
pub mod mix;
pub mod synth;
pub mod tasks;
pub mod tokenize;

use std::path::{Path, PathBuf};

pub use batch::{Batch, BatchConfig, Batcher, Cursor};
pub use formats::{Content, load};
pub use mix::MixedBatcher;
pub use tokenize::{TokenizeOptions, TokenizedExample, chat_template_for, tokenize, tokenize_all};

use crate::Error;

/// The label that carries no loss (Hugging Face's `ignore_index`).
pub const IGNORE: i32 = -100;

/// A dataset format (docs/FORMATS.md#datasets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Alpaca,
    Chat,
    Text,
    PreTokenized,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Alpaca => "alpaca",
            Format::Chat => "chat",
            Format::Text => "text",
            Format::PreTokenized => "pretokenized",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = Error;

    /// `alpaca`, `chat`, `text`, `pretokenized` (also `tokens`, `input_ids`), any case.
    fn from_str(s: &str) -> crate::Result<Format> {
        match s.to_ascii_lowercase().as_str() {
            "alpaca" => Ok(Format::Alpaca),
            "chat" | "messages" => Ok(Format::Chat),
            "text" => Ok(Format::Text),
            "pretokenized" | "pre-tokenized" | "tokens" | "input_ids" => Ok(Format::PreTokenized),
            _ => Err(Error::Invalid(format!(
                "unknown dataset format `{s}` (known: alpaca, chat, text, pretokenized)"
            ))),
        }
    }
}

/// One Alpaca record, as read and as written by [`synth`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct AlpacaExample {
    pub instruction: String,
    #[serde(default)]
    pub input: String,
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

/// One record of a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub content: Content,
    /// The record's `task` field (multi-task adapters), if any.
    pub task: Option<String>,
    /// Where the record starts in its file: the 1-based line (for a JSON array, the line of
    /// the element; for a `.txt` file, the paragraph's first line).
    pub line: usize,
}

/// A loaded dataset: its file, its format and its records in file order.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub path: PathBuf,
    pub format: Format,
    pub examples: Vec<Example>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// "file:line" for the record `index`, for messages.
    pub fn locate(&self, index: usize) -> String {
        locate(&self.path, self.examples.get(index).map_or(0, |e| e.line))
    }
}

/// "file:line".
pub(crate) fn locate(path: &Path, line: usize) -> String {
    format!("{}:{line}", path.display())
}
