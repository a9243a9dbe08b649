//! Synthetic byte-level BPE vocabularies (the `gpt2` tokenizer model of Llama 3) for test models.
//!
//! Two layouts:
//! - the *byte vocabulary* (261 entries): the 256 byte tokens and five Llama 3 specials, no
//!   merges — every text tokenizes, one token per byte;
//! - the *Llama 3 layout* of any larger size (128,256 for the shape-true presets): byte tokens
//!   at 0..256, then synthetic merged tokens (character pairs, then pair + character) each with
//!   its merge rule, then 256 specials at the very end with Llama 3.1's ids and names
//!   (`<|begin_of_text|>` = 128000, `<|eot_id|>` = 128009, reserved tokens in between).

use crate::gguf::{Array, Value};
use crate::tokenizer::bpe::byte_to_char_table;
use crate::{Error, Result};

/// Llama 3's chat special tokens, placed after the byte tokens in the byte vocabulary.
const BYTE_VOCAB_SPECIALS: [&str; 5] = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
];

/// Size of the byte vocabulary.
pub const BYTE_VOCAB: usize = 256 + BYTE_VOCAB_SPECIALS.len();

/// Number of special tokens at the end of a Llama 3 vocabulary (128000..128256).
const LLAMA3_SPECIALS: usize = 256;

/// ggml token types (`tokenizer.ggml.token_type`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;

/// Llama 3.1's special token for offset `i` (id = n_vocab − 256 + i).
fn llama3_special(i: usize) -> String {
    match i {
        0 => "<|begin_of_text|>".into(),
        1 => "<|end_of_text|>".into(),
        4 => "<|finetune_right_pad_id|>".into(),
        6 => "<|start_header_id|>".into(),
        7 => "<|end_header_id|>".into(),
        8 => "<|eom_id|>".into(),
        9 => "<|eot_id|>".into(),
        10 => "<|python_tag|>".into(),
        2 | 3 => format!("<|reserved_special_token_{}|>", i - 2),
        5 => "<|reserved_special_token_2|>".into(),
        _ => format!("<|reserved_special_token_{}|>", i - 8),
    }
}

/// The `tokenizer.*` metadata of a synthetic vocabulary of `n_vocab` entries.
pub fn synthetic_vocab_metadata(n_vocab: usize) -> Result<Vec<(String, Value)>> {
    let map = byte_to_char_table();
    let mut tokens: Vec<String> = map.iter().map(|c| c.to_string()).collect();
    let mut types = vec![NORMAL; 256];
    let mut merges = Vec::new();
    let (bos, eos, pad);
    if n_vocab == BYTE_VOCAB {
        tokens.extend(BYTE_VOCAB_SPECIALS.iter().map(|s| s.to_string()));
        types.extend([CONTROL; BYTE_VOCAB_SPECIALS.len()]);
        (bos, eos, pad) = (256u32, 257u32, None);
    } else {
        let n_merged = n_vocab
            .checked_sub(256 + LLAMA3_SPECIALS)
            .filter(|_| n_vocab <= 256 + 64 * 64 * 65 + LLAMA3_SPECIALS)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "a synthetic vocabulary has {BYTE_VOCAB} entries or between 512 and \
                     {} (the Llama 3 layout), not {n_vocab}",
                    256 + 64 * 64 * 65 + LLAMA3_SPECIALS
                ))
            })?;
        // 64 common characters: space (Ġ), newline (Ċ), letters and digits.
        let common: Vec<String> = std::iter::once(map[b' ' as usize])
            .chain(std::iter::once(map[b'\n' as usize]))
            .chain('a'..='z')
            .chain('A'..='Z')
            .chain('0'..='9')
            .map(String::from)
            .collect();
        debug_assert_eq!(common.len(), 64);
        // Ranked merges: every pair of common characters first, then pair + character. Each
        // merge's parts are tokens listed before it, so the vocabulary is a valid BPE.
        let pairs = common
            .iter()
            .flat_map(|a| common.iter().map(move |b| (a.clone(), b.clone())));
        let triples = common.iter().flat_map(|a| {
            let common = &common;
            common
                .iter()
                .flat_map(move |b| common.iter().map(move |c| (format!("{a}{b}"), c.clone())))
        });
        for (left, right) in pairs.chain(triples).take(n_merged) {
            merges.push(format!("{left} {right}"));
            tokens.push(format!("{left}{right}"));
            types.push(NORMAL);
        }
        tokens.extend((0..LLAMA3_SPECIALS).map(llama3_special));
        types.extend([CONTROL; LLAMA3_SPECIALS]);
        let first_special = (n_vocab - LLAMA3_SPECIALS) as u32;
        (bos, eos, pad) = (first_special, first_special + 9, Some(first_special + 4));
    }
    debug_assert_eq!(tokens.len(), n_vocab);
    let mut kv = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre".into(),
            Value::String("llama-bpe".into()),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(Array::String(tokens)),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(Array::I32(types)),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(Array::String(merges)),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)),
    ];
    if let Some(pad) = pad {
        kv.push(("tokenizer.ggml.padding_token_id".into(), Value::U32(pad)));
    }
    Ok(kv)
}

/// Number of entries of `tokenizer.ggml.tokens` in tokenizer metadata.
pub fn vocab_len(metadata: &[(String, Value)]) -> Result<usize> {
    metadata
        .iter()
        .find_map(|(k, v)| match (k.as_str(), v) {
            ("tokenizer.ggml.tokens", Value::Array(a @ Array::String(_))) => Some(a.len()),
            _ => None,
        })
        .ok_or_else(|| {
            Error::Invalid("tokenizer metadata has no `tokenizer.ggml.tokens` string array".into())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection_onto_printable_chars() {
        let map = byte_to_char_table();
        let set: std::collections::HashSet<char> = map.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(map[b'A' as usize], 'A');
        assert_eq!(map[b' ' as usize], 'Ġ');
        assert_eq!(map[b'\n' as usize], 'Ċ');
    }

    fn strings<'a>(kv: &'a [(String, Value)], key: &str) -> &'a [String] {
        match kv.iter().find(|(k, _)| k == key).map(|(_, v)| v) {
            Some(Value::Array(Array::String(s))) => s,
            other => panic!("{key}: {other:?}"),
        }
    }

    #[test]
    fn llama3_layout_has_the_real_special_ids_and_valid_merges() {
        let kv = synthetic_vocab_metadata(128_256).unwrap();
        let tokens = strings(&kv, "tokenizer.ggml.tokens");
        assert_eq!(tokens.len(), 128_256);
        assert_eq!(vocab_len(&kv).unwrap(), 128_256);
        assert_eq!(tokens[128_000], "<|begin_of_text|>");
        assert_eq!(tokens[128_001], "<|end_of_text|>");
        assert_eq!(tokens[128_004], "<|finetune_right_pad_id|>");
        assert_eq!(tokens[128_006], "<|start_header_id|>");
        assert_eq!(tokens[128_009], "<|eot_id|>");
        assert_eq!(tokens[128_011], "<|reserved_special_token_3|>");
        assert_eq!(tokens[128_255], "<|reserved_special_token_247|>");
        let unique: std::collections::HashSet<&String> = tokens.iter().collect();
        assert_eq!(unique.len(), tokens.len(), "token strings are unique");
        // Every merge joins two tokens that exist earlier into the token it creates.
        let merges = strings(&kv, "tokenizer.ggml.merges");
        assert_eq!(merges.len(), 128_256 - 512);
        let index: std::collections::HashMap<&str, usize> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        for (rank, m) in merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').unwrap();
            let made = index[format!("{a}{b}").as_str()];
            assert_eq!(made, 256 + rank);
            assert!(index[a] < made && index[b] < made, "merge {m}");
        }
    }

    #[test]
    fn byte_vocab_and_bad_sizes() {
        let kv = synthetic_vocab_metadata(BYTE_VOCAB).unwrap();
        assert_eq!(
            strings(&kv, "tokenizer.ggml.tokens")[256],
            "<|begin_of_text|>"
        );
        assert!(synthetic_vocab_metadata(300).is_err());
        assert!(synthetic_vocab_metadata(10_000_000).is_err());
    }
}
