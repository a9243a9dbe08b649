//! The pre-tokenizer of a byte-level BPE (`gpt2`) vocabulary: `tokenizer.ggml.pre` looked up in
//! [`pre_table`], its split steps compiled, and text turned into the words BPE merges — exactly
//! the words llama.cpp's BPE tokenizer hands to its merge loop.
//!
//! Shapes: text → code points → pieces (lengths in code points, refined by each step) → words
//! (the pieces' UTF-8, byte-encoded to GPT-2's printable characters where the type says so).

use super::pre_custom;
use super::pre_regex::{Haystack, SplitRegex};
use super::pre_table::{self, PreName, PreType, Step};
use super::spm::SPACE_MARK;

/// One compiled split step.
#[derive(Debug)]
enum Compiled {
    Regex(SplitRegex),
    Custom(fn(&[char], &[usize], &mut Vec<usize>)),
}

/// A `tokenizer.ggml.pre` value, resolved and compiled.
#[derive(Debug)]
pub struct PreTokenizer {
    /// The file's name for it (`None`: the key is missing).
    name: Option<String>,
    row: &'static PreName,
    steps: Vec<Compiled>,
    byte_chars: [char; 256],
}

impl PreTokenizer {
    /// The pre-tokenizer `tokenizer.ggml.pre = pre` selects. A missing key gives llama.cpp's
    /// `default` (with a warning: such files predate the key and tokenize worse); an unknown
    /// name is an error naming every supported one.
    pub fn new(pre: Option<&str>) -> Result<PreTokenizer, String> {
        let row = match pre {
            None => {
                log::warn!(
                    "tokenizer.ggml.pre is missing: using llama.cpp's `default` pre-tokenizer \
                     (the file predates the key; re-converting it gives better tokens)"
                );
                &pre_table::MISSING
            }
            Some(name) => pre_table::lookup(name).ok_or_else(|| {
                let known: Vec<&str> = pre_table::names().collect();
                format!(
                    "pre-tokenizer `{name}` is not one llama.cpp knows; supported: {}",
                    known.join(", ")
                )
            })?,
        };
        let steps = row
            .ty
            .steps
            .iter()
            .map(|step| match *step {
                Step::Regex(r) => SplitRegex::new(r).map(Compiled::Regex),
                Step::KimiK2 => Ok(Compiled::Custom(pre_custom::kimi_k2)),
                Step::DigitGroups => Ok(Compiled::Custom(pre_custom::digit_groups)),
                Step::Newlines => Ok(Compiled::Custom(pre_custom::newlines)),
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| format!("pre-tokenizer `{}`: {e}", row.ty.name))?;
        Ok(PreTokenizer {
            name: pre.map(str::to_string),
            row,
            steps,
            byte_chars: super::bpe::byte_to_char_table(),
        })
    }

    /// The table row: flags such as `ignore_merges` and `add_bos`.
    pub fn row(&self) -> &'static PreName {
        self.row
    }

    pub fn pre_type(&self) -> &'static PreType {
        self.row.ty
    }

    /// The `tokenizer.ggml.pre` value, `None` when the file has none.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The pieces of `text` after every split step, as slices of `text`; empty pieces (which
    /// llama.cpp keeps but which give no tokens) are left out.
    pub fn split<'t>(&self, text: &'t str) -> Result<Vec<&'t str>, String> {
        let cps: Vec<char> = text.chars().collect();
        let mut pieces = vec![cps.len()];
        // The two texts regexes run over, built when the first step needs one.
        let (mut collapsed, mut plain) = (None, None);
        for step in &self.steps {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            match step {
                Compiled::Regex(re) => {
                    let slot = if re.collapsed {
                        &mut collapsed
                    } else {
                        &mut plain
                    };
                    let hay = slot.get_or_insert_with(|| Haystack::new(&cps, re.collapsed));
                    re.split(hay, &pieces, &mut next)?;
                }
                Compiled::Custom(f) => f(&cps, &pieces, &mut next),
            }
            pieces = next;
        }
        let mut starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        starts.push(text.len());
        let mut out = Vec::with_capacity(pieces.len());
        let mut cp = 0;
        for len in pieces {
            if len > 0 {
                out.push(&text[starts[cp]..starts[cp + len]]);
            }
            cp += len;
        }
        Ok(out)
    }

    /// The words of `text` (a run without special tokens) as BPE receives them: spaces escaped
    /// as "▁" where the name says so, split, byte-encoded where the type says so, and for
    /// mmBERT cut into Metaspace words.
    pub fn words(&self, text: &str) -> Result<Vec<String>, String> {
        let escaped;
        let text = if self.row.escape_whitespaces {
            escaped = text.replace(' ', SPACE_MARK);
            &escaped
        } else {
            text
        };
        let pieces = self.split(text)?;
        let ty = self.row.ty;
        let mut words = Vec::with_capacity(pieces.len());
        for piece in pieces {
            if ty.byte_encode {
                words.push(piece.bytes().map(|b| self.byte_chars[b as usize]).collect());
            } else if ty.metaspace {
                metaspace_words(piece, &mut words);
            } else {
                words.push(piece.to_string());
            }
        }
        Ok(words)
    }
}

/// mmBERT's Metaspace: a run of newlines stays one word; any other piece gets a leading "▁" if
/// it has none and is cut before every further "▁" (`a▁b` → `▁a`, `▁b`).
fn metaspace_words(piece: &str, out: &mut Vec<String>) {
    if piece.bytes().all(|b| b == b'\n') {
        out.push(piece.to_string());
        return;
    }
    let word = if piece.starts_with(SPACE_MARK) {
        piece.to_string()
    } else {
        format!("{SPACE_MARK}{piece}")
    };
    let mut start = 0;
    while start < word.len() {
        let from = start + SPACE_MARK.len();
        let end = word[from..]
            .find(SPACE_MARK)
            .map_or(word.len(), |i| from + i);
        out.push(word[start..end].to_string());
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pre: &str, text: &str) -> Vec<String> {
        let p = PreTokenizer::new(Some(pre)).unwrap();
        p.split(text)
            .unwrap()
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_type_compiles() {
        for name in pre_table::names() {
            PreTokenizer::new(Some(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        PreTokenizer::new(None).unwrap();
    }

    #[test]
    fn unknown_name_lists_the_supported_ones() {
        let e = PreTokenizer::new(Some("no-such-pre")).unwrap_err();
        for part in ["no-such-pre", "llama-bpe", "smollm", "qwen2", "kimi-k2"] {
            assert!(e.contains(part), "{e}");
        }
    }

    #[test]
    fn sample_splits() {
        assert_eq!(
            split("smollm", "I'm 2024 ok"),
            ["I", "'m", " ", "2", "0", "2", "4", " ok"]
        );
        assert_eq!(
            split("llama-bpe", "I'M 12345  x\n\n"),
            ["I", "'M", " ", "123", "45", " ", " x", "\n\n"]
        );
        assert_eq!(split("superbpe", "x 1234567"), ["x ", "1", "234", "567"]);
        assert_eq!(
            split("default", "a+b 1234"),
            ["a", "+", "b", " ", "123", "4"]
        );
    }

    #[test]
    fn words_escape_encode_and_metaspace() {
        let p = PreTokenizer::new(Some("gpt-2")).unwrap();
        assert_eq!(p.words("a é").unwrap(), ["a", "ĠÃ©"]);
        let g = PreTokenizer::new(Some("gemma4")).unwrap();
        assert_eq!(g.words("a b\n\nc").unwrap(), ["a▁b", "\n\n", "c"]);
        let m = PreTokenizer::new(Some("mmbert")).unwrap();
        assert_eq!(m.words("a b\n▁c").unwrap(), ["▁a", "▁b", "\n", "▁c"]);
    }
}
