//! `--template auto|alpaca|llama3-chat|none` and `--template-file FILE.jinja`, shared by
//! `generate` and `eval`: how one prompt becomes token ids.

use std::path::PathBuf;
use std::sync::Arc;

use clap::ValueEnum;
use edgetune::Result;
use edgetune::gguf::GgufFile;
use edgetune::tokenizer::Tokenizer;
use edgetune::tokenizer::chat_template::{ChatTemplate, PromptFormat, SpecialTexts};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Template {
    /// The model's chat template (`tokenizer.chat_template`): the prompt as one user message,
    /// then the generation prompt. A model without one gets the Llama 3 template when its
    /// vocabulary has Llama 3's header tokens, else ChatML.
    Auto,
    /// The Alpaca instruction template (no input section).
    Alpaca,
    /// The Llama 3 chat format: one user turn, then the assistant header.
    Llama3Chat,
    /// The prompt as given.
    None,
}

#[derive(clap::Args)]
pub struct TemplateArgs {
    /// How the prompt is formatted.
    #[arg(long, value_enum, default_value = "auto")]
    template: Template,
    /// A Jinja chat template to use instead of the model's (rendered as --template auto
    /// renders the model's).
    #[arg(long, value_name = "FILE.jinja", conflicts_with = "template")]
    template_file: Option<PathBuf>,
}

impl TemplateArgs {
    /// The chosen format for the model in `file`; a chat template is compiled once here.
    pub fn format(&self, file: &GgufFile, tok: &Tokenizer) -> Result<PromptFormat> {
        if let Some(path) = &self.template_file {
            let t = ChatTemplate::from_file(path, SpecialTexts::of_gguf(file)?)?;
            return Ok(PromptFormat::Chat(Arc::new(t)));
        }
        Ok(match self.template {
            Template::Auto => PromptFormat::of_model(file, tok)?,
            Template::Alpaca => PromptFormat::Alpaca,
            Template::Llama3Chat => PromptFormat::Llama3Chat,
            Template::None => PromptFormat::Plain,
        })
    }
}
