//! `--template auto|alpaca|llama3-chat|none`, `--template-file FILE.jinja` and `--system TEXT`,
//! shared by `generate`, `eval` and `compare`: how one prompt becomes token ids.

use std::path::PathBuf;
use std::sync::Arc;

use clap::ValueEnum;
use edgetune::gguf::GgufFile;
use edgetune::tokenizer::Tokenizer;
use edgetune::tokenizer::chat_template::{ChatTemplate, PromptFormat, SpecialTexts};
use edgetune::{Error, Result};

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
    /// A system message before the prompt, written by the chat template (a deployed
    /// assistant's instructions: the demo's data trains under "You are the IoT assistant of
    /// this site."). Only with a chat template (`auto` or --template-file).
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
}

impl TemplateArgs {
    /// The chosen format for the model in `file`; a chat template is compiled once here.
    pub fn format(&self, file: &GgufFile, tok: &Tokenizer) -> Result<PromptFormat> {
        let chat = if let Some(path) = &self.template_file {
            ChatTemplate::from_file(path, SpecialTexts::of_gguf(file)?)?
        } else {
            match (self.template, &self.system) {
                (Template::Auto, _) => ChatTemplate::for_model(file, tok)?,
                (other, Some(_)) => {
                    return Err(Error::Invalid(format!(
                        "--system needs a chat template (--template auto or --template-file), \
                         not --template {}",
                        other
                            .to_possible_value()
                            .map_or("?".into(), |v| v.get_name().to_owned())
                    )));
                }
                (Template::Alpaca, None) => return Ok(PromptFormat::Alpaca),
                (Template::Llama3Chat, None) => return Ok(PromptFormat::Llama3Chat),
                (Template::None, None) => return Ok(PromptFormat::Plain),
            }
        };
        Ok(match &self.system {
            Some(text) => PromptFormat::ChatWithSystem(Arc::new(chat), text.clone()),
            None => PromptFormat::Chat(Arc::new(chat)),
        })
    }
}
