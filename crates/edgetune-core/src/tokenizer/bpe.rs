//! Byte-level BPE (`tokenizer.ggml.model = gpt2`: Llama 3, Qwen, SmolLM…): the file's tokens
//! and merges as a `tokenizers` BPE model, fed the words of the file's pre-tokenizer
//! ([`PreTokenizer`], llama.cpp's splitting), and the byte ↔ character table used to decode.
//!
//! Byte-level BPE first maps every UTF-8 byte of the text to one printable character (GPT-2's
//! `bytes_to_unicode`: printable Latin-1 bytes map to themselves, the other 68 bytes to
//! U+0100…), so the vocabulary never holds raw spaces or control bytes ("Ġ" is a space). A few
//! pre-tokenizer types (Gemma 4, mmBERT…) skip that mapping and merge raw UTF-8 instead.

use std::collections::HashMap;

use tokenizers::Model;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};

use super::pretokenize::PreTokenizer;
use super::vocab::GgufVocab;
use crate::Error;

/// Llama 3's split regex, exactly as its `tokenizer.json` (pre_tokenizer → Split) stores it;
/// llama.cpp's `llama-bpe` pre-tokenizer means the same expression.
pub const LLAMA3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's split regex as `tokenizer.json` files store it (llama.cpp's `gpt-2`).
pub const GPT2_SPLIT_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

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

/// What encoding a gpt2 vocabulary needs besides its BPE model: the file's pre-tokenizer, and
/// whether words must be cut at characters that are not tokens.
#[derive(Debug)]
pub struct BpeEncoder {
    pub pre: PreTokenizer,
    /// Every character a word can hold is a token (a byte-level vocabulary with all 256 byte
    /// characters), so no word ever needs cutting.
    complete: bool,
}

/// The `tokenizers` BPE model of a gpt2 vocabulary (every token, the file's merges, nothing
/// else: [`encode`] does the rest) inside a pipeline without a pre-tokenizer, and the encoder.
/// Added tokens are registered by the caller.
pub fn build(
    v: &GgufVocab,
    path: &std::path::Path,
) -> crate::Result<(tokenizers::Tokenizer, BpeEncoder)> {
    let err = |key: &str, what: String| Error::Metadata {
        path: path.to_path_buf(),
        key: key.to_string(),
        what,
    };
    let pre =
        PreTokenizer::new(v.pre.as_deref()).map_err(|what| err(super::vocab::KEY_PRE, what))?;
    let byte_encode = pre.pre_type().byte_encode;

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
    let complete = byte_encode
        && byte_to_char_table()
            .iter()
            .all(|c| vocab.contains_key(c.encode_utf8(&mut [0; 4]) as &str));
    let model = BPE::builder()
        .vocab_and_merges(vocab, v.merges.clone())
        .build()
        .map_err(|e| {
            err(
                super::vocab::KEY_MERGES,
                format!("building the BPE model: {e}"),
            )
        })?;

    let mut tok = tokenizers::Tokenizer::new(model);
    if byte_encode {
        tok.with_decoder(Some(ByteLevelDecoder::new(false, true, false)));
    }
    Ok((tok, BpeEncoder { pre, complete }))
}

/// Appends the ids of `text` (a run without added tokens) to `ids`, as llama.cpp's BPE
/// tokenizer finds them: each word of the pre-tokenizer on its own; taken whole where it is a
/// token and the pre-tokenizer skips merges for such words (or, for Gemma 4 and mmBERT, where it
/// is a run of newlines); else merged by rank. A character that is not a token never merges,
/// so the merges run on the stretches between such characters; those characters then become
/// their `<0xXX>` byte tokens in raw-UTF-8 vocabularies (bytes without one are dropped) and are
/// dropped in byte-level ones (`tokenizers` would instead drop them before merging, letting their
/// neighbours merge across them).
pub fn encode(
    inner: &tokenizers::Tokenizer,
    enc: &BpeEncoder,
    text: &str,
    ids: &mut Vec<u32>,
) -> Result<(), String> {
    let model = inner.get_model();
    let (row, ty) = (enc.pre.row(), enc.pre.pre_type());
    let merge = |s: &str, ids: &mut Vec<u32>| -> Result<(), String> {
        let tokens = model.tokenize(s).map_err(|e| e.to_string())?;
        ids.extend(tokens.iter().map(|t| t.id));
        Ok(())
    };
    for word in enc.pre.words(text)? {
        let whole = row.ignore_merges || (ty.newline_words && word.bytes().all(|b| b == b'\n'));
        if whole && let Some(id) = model.token_to_id(&word) {
            ids.push(id);
            continue;
        }
        if enc.complete {
            merge(&word, ids)?;
            continue;
        }
        let mut start = 0;
        for (at, c) in word.char_indices() {
            let mut buf = [0; 4];
            if model.token_to_id(c.encode_utf8(&mut buf)).is_some() {
                continue;
            }
            merge(&word[start..at], ids)?;
            start = at + c.len_utf8();
            if !ty.byte_encode {
                ids.extend(
                    buf[..c.len_utf8()]
                        .iter()
                        .filter_map(|b| model.token_to_id(&format!("<0x{b:02X}>"))),
                );
            }
        }
        merge(&word[start..], ids)?;
    }
    Ok(())
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
}
