//! [`PromptSpec`]: which prompt format a front end asked for (`--template`, `--template-file`,
//! `--system`), turned into a [`PromptFormat`] once the model is open.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Tokenizer;
use super::chat_template::{ChatTemplate, PromptFormat, SpecialTexts};
use crate::gguf::GgufFile;
use crate::{Error, Result};

/// The named prompt formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TemplateName {
    /// The model's chat template (`tokenizer.chat_template`); a model without one gets the
    /// Llama 3 template when its vocabulary has Llama 3's header tokens, else ChatML.
    #[default]
    Auto,
    /// The Alpaca instruction template (no input section).
    Alpaca,
    /// The Llama 3 chat format: one user turn, then the assistant header.
    Llama3Chat,
    /// The prompt as given.
    None,
}

impl TemplateName {
    /// The name as the CLI and JSON spell it (`llama3-chat`).
    pub fn name(self) -> &'static str {
        match self {
            TemplateName::Auto => "auto",
            TemplateName::Alpaca => "alpaca",
            TemplateName::Llama3Chat => "llama3-chat",
            TemplateName::None => "none",
        }
    }
}

/// How prompts are to be formatted: a named template or a Jinja file, and an optional system
/// message (written by a chat template, so only with `auto` or a file).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PromptSpec {
    pub template: TemplateName,
    /// A Jinja chat template used instead of the model's (rendered as `auto` renders the
    /// model's); it takes the place of `template`.
    pub template_file: Option<PathBuf>,
    /// A system message before the prompt.
    pub system: Option<String>,
}

impl PromptSpec {
    /// The format for the model in `file`; a chat template is compiled once here. A system
    /// message without a chat template is an error naming the template.
    pub fn resolve(&self, file: &GgufFile, tok: &Tokenizer) -> Result<PromptFormat> {
        let chat = if let Some(path) = &self.template_file {
            ChatTemplate::from_file(path, SpecialTexts::of_gguf(file)?)?
        } else {
            match (self.template, &self.system) {
                (TemplateName::Auto, _) => ChatTemplate::for_model(file, tok)?,
                (other, Some(_)) => {
                    return Err(Error::Invalid(format!(
                        "--system needs a chat template (--template auto or --template-file), \
                         not --template {}",
                        other.name()
                    )));
                }
                (TemplateName::Alpaca, None) => return Ok(PromptFormat::Alpaca),
                (TemplateName::Llama3Chat, None) => return Ok(PromptFormat::Llama3Chat),
                (TemplateName::None, None) => return Ok(PromptFormat::Plain),
            }
        };
        Ok(match &self.system {
            Some(text) => PromptFormat::ChatWithSystem(Arc::new(chat), text.clone()),
            None => PromptFormat::Chat(Arc::new(chat)),
        })
    }
}
