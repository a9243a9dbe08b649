//! `edgetune template --model M --messages FILE.json [--no-generation-prompt]
//! [--template-file F]`: prints the model's chat template (or F) rendered for the messages,
//! exactly: nothing else on stdout, no newline added.

use std::io::Write;
use std::path::{Path, PathBuf};

use edgetune::gguf::GgufFile;
use edgetune::tokenizer::Tokenizer;
use edgetune::tokenizer::chat_template::{ChatTemplate, SpecialTexts};
use edgetune::tokenizer::template::Message;
use edgetune::{Error, Result};

#[derive(clap::Args)]
#[command(after_help = "FILE.json: a JSON list of messages, \
[{\"role\": \"user\", \"content\": \"Hi\"}, …]. A model without a chat template gets the \
Llama 3 template when its vocabulary has Llama 3's header tokens, else ChatML (as llama.cpp).")]
pub struct Args {
    /// The model GGUF whose chat template (and BOS/EOS texts) to use.
    #[arg(long)]
    model: PathBuf,
    /// The conversation: a JSON list of {"role", "content"}.
    #[arg(long, value_name = "FILE.json")]
    messages: PathBuf,
    /// Leave out the assistant header that invites the model's answer.
    #[arg(long)]
    no_generation_prompt: bool,
    /// A Jinja chat template to render instead of the model's.
    #[arg(long, value_name = "FILE.jinja")]
    template_file: Option<PathBuf>,
}

/// The messages in `path`; a syntax or shape error names the file, line and column.
fn read_messages(path: &Path) -> Result<Vec<Message>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        // serde_json's message ends with its own " at line L column C": said once, in front.
        let msg = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let msg = msg.strip_suffix(&suffix).unwrap_or(&msg);
        Error::Invalid(format!(
            "{}:{}:{}: not a JSON list of {{\"role\", \"content\"}} messages: {msg}",
            path.display(),
            e.line(),
            e.column()
        ))
    })
}

pub fn run(args: Args) -> Result<()> {
    let messages = read_messages(&args.messages)?;
    let file = GgufFile::open(&args.model)?;
    let template = match &args.template_file {
        Some(path) => ChatTemplate::from_file(path, SpecialTexts::of_gguf(&file)?)?,
        // The tokenizer is built only for the fallback, which looks at the vocabulary.
        None => match ChatTemplate::from_gguf(&file)? {
            Some(t) => t,
            None => ChatTemplate::for_model(&file, &Tokenizer::from_gguf(&file)?)?,
        },
    };
    let text = template.render(&messages, !args.no_generation_prompt)?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::io("<stdout>", e))
}
