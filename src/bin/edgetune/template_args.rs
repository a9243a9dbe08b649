//! `--template auto|alpaca|llama3-chat|none`, `--template-file FILE.jinja` and `--system TEXT`,
//! shared by `generate`, `eval` and `compare`: how one prompt becomes token ids.

use std::path::PathBuf;

use clap::ValueEnum;
use edgetune::Result;
use edgetune::gguf::GgufFile;
use edgetune::tokenizer::Tokenizer;
use edgetune::tokenizer::chat_template::PromptFormat;
use edgetune::tokenizer::prompt_spec::{PromptSpec, TemplateName};

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
    /// The library's description of these flags.
    pub fn spec(&self) -> PromptSpec {
        PromptSpec {
            template: match self.template {
                Template::Auto => TemplateName::Auto,
                Template::Alpaca => TemplateName::Alpaca,
                Template::Llama3Chat => TemplateName::Llama3Chat,
                Template::None => TemplateName::None,
            },
            template_file: self.template_file.clone(),
            system: self.system.clone(),
        }
    }

    /// The chosen format for the model in `file`; a chat template is compiled once here.
    pub fn format(&self, file: &GgufFile, tok: &Tokenizer) -> Result<PromptFormat> {
        self.spec().resolve(file, tok)
    }
}
