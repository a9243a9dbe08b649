//! SentencePiece BPE (`tokenizer.ggml.model = llama`: Llama 2, TinyLlama) as a `tokenizers`
//! pipeline: spaces become "▁" (the wrapper puts one space before each run of text), BPE merges are
//! derived from the token scores, and characters outside the vocabulary fall back to the
//! `<0xNN>` byte tokens.
//!
//! SentencePiece stores no merge list: it merges the adjacent pair whose concatenation is the
//! highest-scoring token. `tokenizers`' BPE applies explicit merges by rank, so we derive the
//! list the way Hugging Face's SentencePiece converter (`SentencePieceExtractor.extract`) does:
//! a pair (a, b) is a merge when a, b and a+b are all tokens, ranked by the score of a+b
//! (highest first), ties broken by the id of a+b, then by the ids of a and b.

use std::collections::HashMap;

use tokenizers::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::Replace;

use super::vocab::{GgufVocab, KEY_SCORES, KEY_TOKENS, TokenType};
use crate::Error;

/// SentencePiece's word-boundary mark, U+2581 LOWER ONE EIGHTH BLOCK.
pub const SPACE_MARK: &str = "\u{2581}";

/// The byte of a `<0xNN>` byte-fallback token (two upper- or lower-case hex digits).
pub fn parse_byte_token(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Whether token `id` may take part in merges: control, byte and unknown tokens are reached
/// only by added-token matching, byte fallback or the unk rule, never by merging text.
fn mergeable(t: TokenType) -> bool {
    !matches!(t, TokenType::Control | TokenType::Byte | TokenType::Unknown)
}

/// Merges derived from tokens and scores (see the module comment), in rank order.
pub fn derive_merges(
    tokens: &[String],
    types: &[TokenType],
    scores: &[f32],
) -> Vec<(String, String)> {
    let mut ids: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        if mergeable(types[id]) {
            // First id wins for duplicate strings, as SentencePiece's piece lookup.
            ids.entry(t.as_str()).or_insert(id as u32);
        }
    }
    // (score of the merged token, merged id, left id, right id, split byte offset)
    let mut found: Vec<(f32, u32, u32, u32, usize)> = Vec::new();
    for (merged_id, t) in tokens.iter().enumerate() {
        if !mergeable(types[merged_id]) || ids.get(t.as_str()) != Some(&(merged_id as u32)) {
            continue;
        }
        for (split, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(split);
            if let (Some(&ia), Some(&ib)) = (ids.get(a), ids.get(b)) {
                found.push((scores[merged_id], merged_id as u32, ia, ib, split));
            }
        }
    }
    // Highest score first; NaN scores sort last (total order keeps the sort well defined).
    found.sort_by(|x, y| {
        y.0.total_cmp(&x.0)
            .then(x.1.cmp(&y.1))
            .then(x.2.cmp(&y.2))
            .then(x.3.cmp(&y.3))
    });
    found
        .into_iter()
        .map(|(_, merged, _, _, split)| {
            let t = &tokens[merged as usize];
            (t[..split].to_string(), t[split..].to_string())
        })
        .collect()
}

/// The `tokenizers` pipeline for a SentencePiece vocabulary: normalizer Replace(" " → "▁"),
/// no pre-tokenizer (the whole run of text is one word, as in SentencePiece), BPE with byte
/// fallback; decoder [Replace("▁" → " "), ByteFallback, Fuse] (Hugging Face's Llama 2
/// `tokenizer.json` without its Prepend/Strip: [`super::Tokenizer`] adds and removes the
/// prefix space itself, per run of text). Added tokens are registered by the caller.
pub fn build(v: &GgufVocab, path: &std::path::Path) -> crate::Result<tokenizers::Tokenizer> {
    let err = |key: &str, what: String| Error::Metadata {
        path: path.to_path_buf(),
        key: key.to_string(),
        what,
    };
    let scores = v
        .scores
        .as_deref()
        .ok_or_else(|| err(KEY_SCORES, "missing".into()))?;
    let merges = derive_merges(&v.tokens, &v.types, scores);

    // Every token is in the model's vocabulary so that ids of added tokens are the file's ids
    // (`tokenizers` looks an added token up in the model before assigning a new id); merges
    // never lead to control tokens because `derive_merges` skips them.
    let vocab: Vocab = v
        .tokens
        .iter()
        .enumerate()
        .rev() // the first id wins for duplicate strings
        .map(|(id, t)| (t.clone(), id as u32))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = v.unk {
        builder = builder.unk_token(v.tokens[unk as usize].clone());
    }
    let model = builder
        .build()
        .map_err(|e| err(KEY_TOKENS, format!("building the BPE model: {e}")))?;

    let replace = Replace::new(" ", SPACE_MARK)
        .map_err(|e| err(KEY_TOKENS, format!("building the normalizer: {e}")))?;

    let unreplace = Replace::new(SPACE_MARK, " ")
        .map_err(|e| err(KEY_TOKENS, format!("building the decoder: {e}")))?;
    let dec: Vec<DecoderWrapper> = vec![
        unreplace.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];

    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_normalizer(Some(replace))
        .map_err(|e| err(KEY_TOKENS, format!("setting the normalizer: {e}")))?;
    tok.with_decoder(Some(DecoderSequence::new(dec)));
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokens() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0xff>"), Some(255));
        assert_eq!(parse_byte_token("<0x1>"), None);
        assert_eq!(parse_byte_token("<0xGG>"), None);
        assert_eq!(parse_byte_token("0x41"), None);
    }

    #[test]
    fn merges_ranked_by_merged_score() {
        // "ab" (score -2) and "abc" (-1): "abc" = "ab"+"c" ranks first; "bc" is no token, so
        // "a"+"bc" is no merge. The control token "<s>" never becomes a merge target.
        let tokens: Vec<String> = ["a", "b", "c", "ab", "abc", "<", "s>", "<s>"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut types = vec![TokenType::Normal; tokens.len()];
        types[7] = TokenType::Control;
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, 0.0, 0.0, 5.0];
        let m = derive_merges(&tokens, &types, &scores);
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(m, vec![pair("ab", "c"), pair("a", "b")]);
    }
}
