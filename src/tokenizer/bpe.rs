//! Byte-level BPE (`tokenizer.ggml.model = gpt2`, Llama 3): the `tokenizers` pipeline built
//! from GGUF tokens and merges, and the byte ↔ character table used to decode pieces.
//!
//! Byte-level BPE first maps every UTF-8 byte of the text to one printable character (GPT-2's
//! `bytes_to_unicode`: printable Latin-1 bytes map to themselves, the other 68 bytes to
//! U+0100…), so the vocabulary never holds raw spaces or control bytes ("Ġ" is a space).

use std::collections::HashMap;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

use super::vocab::GgufVocab;
use crate::Error;

/// Llama 3's split regex, exactly as its `tokenizer.json` (pre_tokenizer → Split) stores it;
/// llama.cpp's `LLAMA_VOCAB_PRE_TYPE_LLAMA3` uses the same expression.
pub const LLAMA3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's split regex (the one `ByteLevel(use_regex = true)` applies; llama.cpp's `gpt-2`).
pub const GPT2_SPLIT_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// The split regex for a `tokenizer.ggml.pre` value, and whether BPE skips the merges when a
/// whole pre-token is already in the vocabulary (Llama 3's `ignore_merges: true`).
pub fn pre_tokenizer_regex(pre: Option<&str>) -> Result<(&'static str, bool), String> {
    match pre {
        Some("llama-bpe" | "llama3" | "llama-v3") => Ok((LLAMA3_SPLIT_REGEX, true)),
        Some("gpt-2" | "gpt2") => Ok((GPT2_SPLIT_REGEX, false)),
        // llama.cpp's "default" adds digit and punctuation splits to GPT-2's regex; GPT-2's
        // own regex is the closest `tokenizers` expression (a file without the key is old).
        None | Some("default") => {
            log::warn!(
                "tokenizer.ggml.pre is {pre:?}: using GPT-2's split regex (llama.cpp's `default` \
                 also splits digits and punctuation)"
            );
            Ok((GPT2_SPLIT_REGEX, false))
        }
        Some(other) => Err(format!(
            "pre-tokenizer `{other}` is not supported (supported: llama-bpe, llama3, llama-v3, \
             gpt-2, default)"
        )),
    }
}

/// GPT-2's `bytes_to_unicode`: the character each byte value is written as.
pub fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_extra = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if printable {
            b as u32
        } else {
            let cp = next_extra;
            next_extra += 1;
            cp
        };
        // All code points here are below 0x200: always valid chars.
        table[b as usize] = char::from_u32(cp).unwrap_or('\u{FFFD}');
    }
    table
}

/// The inverse of [`byte_to_char_table`].
pub fn char_to_byte_map() -> HashMap<char, u8> {
    byte_to_char_table()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

/// The bytes a byte-level vocabulary entry stands for. Characters outside the table (e.g. in
/// `[PAD123]` fillers) are kept as their own UTF-8, as `tokenizers`' ByteLevel decoder does.
pub fn byte_level_decode(token: &str, map: &HashMap<char, u8>, out: &mut Vec<u8>) {
    for c in token.chars() {
        match map.get(&c) {
            Some(&b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

/// The `tokenizers` pipeline for a gpt2 vocabulary: Split(regex, Isolated) → ByteLevel (no
/// prefix space, no regex of its own) → BPE over every token with the file's merges; ByteLevel
/// decoder. Added tokens are registered by the caller.
pub fn build(v: &GgufVocab, path: &std::path::Path) -> crate::Result<tokenizers::Tokenizer> {
    let err = |key: &str, what: String| Error::Metadata {
        path: path.to_path_buf(),
        key: key.to_string(),
        what,
    };
    let (regex, ignore_merges) =
        pre_tokenizer_regex(v.pre.as_deref()).map_err(|what| err(super::vocab::KEY_PRE, what))?;

    let vocab: Vocab = v
        .tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), id as u32))
        .collect();
    if vocab.len() != v.tokens.len() {
        log::warn!(
            "{}: {} duplicate token strings in {}; the last id of each is used",
            path.display(),
            v.tokens.len() - vocab.len(),
            super::vocab::KEY_TOKENS
        );
    }
    let model = BPE::builder()
        .vocab_and_merges(vocab, v.merges.clone())
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| {
            err(
                super::vocab::KEY_MERGES,
                format!("building the BPE model: {e}"),
            )
        })?;

    let split = Split::new(
        SplitPattern::Regex(regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| {
        err(
            super::vocab::KEY_PRE,
            format!("compiling the split regex: {e}"),
        )
    })?;
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
    ]);

    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(pre));
    tok.with_decoder(Some(ByteLevelDecoder::new(false, true, false)));
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let t = byte_to_char_table();
        // Hand-checked values of GPT-2's bytes_to_unicode: space → 'Ġ' (U+0120), '\n' → 'Ċ'
        // (U+010A), 0x00 → U+0100, 0xAD (soft hyphen) → U+0143, printable bytes unchanged.
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], '\u{100}');
        assert_eq!(t[0xAD], '\u{143}');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[0xE9], 'é');
        let map = char_to_byte_map();
        assert_eq!(map.len(), 256);
        let mut out = Vec::new();
        byte_level_decode("ĠhelloĊ[PAD1]", &map, &mut out);
        assert_eq!(out, b" hello\n[PAD1]");
    }

    #[test]
    fn unsupported_pre_is_named() {
        let e = pre_tokenizer_regex(Some("qwen2")).unwrap_err();
        assert!(e.contains("qwen2"), "{e}");
        assert_eq!(
            pre_tokenizer_regex(Some("llama-bpe")).unwrap().0,
            LLAMA3_SPLIT_REGEX
        );
    }
}
