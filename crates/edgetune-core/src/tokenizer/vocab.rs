//! The tokenizer part of a GGUF file's metadata, read and validated: tokens, token types, scores,
//! merges and the special token ids (docs/FORMATS.md#llama-metadata-and-tensors, llama.cpp's
//! `tokenizer.ggml.*` keys).

use crate::Error;
use crate::gguf::{Array, GgufFile};

pub const KEY_MODEL: &str = "tokenizer.ggml.model";
pub const KEY_PRE: &str = "tokenizer.ggml.pre";
pub const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
pub const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
pub const KEY_SCORES: &str = "tokenizer.ggml.scores";
pub const KEY_MERGES: &str = "tokenizer.ggml.merges";
pub const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
pub const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
pub const KEY_EOT: &str = "tokenizer.ggml.eot_token_id";
pub const KEY_EOM: &str = "tokenizer.ggml.eom_token_id";
pub const KEY_UNK: &str = "tokenizer.ggml.unknown_token_id";
pub const KEY_PAD: &str = "tokenizer.ggml.padding_token_id";
pub const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
pub const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
pub const KEY_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";

/// llama.cpp's token types (`gguf.TokenType`), as stored in `tokenizer.ggml.token_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TokenType {
    /// Ordinary vocabulary entry (also used for type 0, "undefined").
    Normal = 1,
    /// The `<unk>` token.
    Unknown = 2,
    /// BOS, EOS, `<|eot_id|>`…: recognised in text only when asked (`parse_special`).
    Control = 3,
    /// Added tokens that are always recognised in text, even without `parse_special`.
    UserDefined = 4,
    /// Padding holes (`[PAD{id}]`) and reserved entries.
    Unused = 5,
    /// SentencePiece byte-fallback tokens `<0xNN>`.
    Byte = 6,
}

impl TokenType {
    /// The type for a stored value; `None` for values llama.cpp does not define.
    pub fn from_i64(v: i64) -> Option<TokenType> {
        Some(match v {
            0 | 1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }
}

/// The tokenizer model family named by `tokenizer.ggml.model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// `gpt2`: byte-level BPE (Llama 3).
    Gpt2,
    /// `llama`: SentencePiece BPE with byte fallback (Llama 2, TinyLlama).
    Spm,
}

/// The validated tokenizer metadata of one file.
pub struct GgufVocab {
    pub kind: ModelKind,
    /// `tokenizer.ggml.pre`, if present.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub types: Vec<TokenType>,
    /// SentencePiece scores (one per token); `None` for gpt2 files without them.
    pub scores: Option<Vec<f32>>,
    /// gpt2 merges as (left, right) pairs, in rank order; empty for SentencePiece.
    pub merges: Vec<(String, String)>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    /// The fill-in-the-middle ids that end generation, in [`super::eog::fim_keys`]'s order
    /// (pad, repo, file separator); out-of-range values are ignored with a warning, as in
    /// llama.cpp.
    pub fim: [Option<u32>; 3],
    pub add_bos: Option<bool>,
    pub add_space_prefix: bool,
}

fn meta_err(f: &GgufFile, key: &str, what: String) -> Error {
    Error::Metadata {
        path: f.path().to_path_buf(),
        key: key.to_string(),
        what,
    }
}

/// Any integer array as i64 values (files store token types as i32, some as u32 or u8).
fn int_array(f: &GgufFile, key: &str, a: &Array) -> crate::Result<Vec<i64>> {
    let v: Vec<i64> = match a {
        Array::U8(v) => v.iter().map(|&x| x as i64).collect(),
        Array::I8(v) => v.iter().map(|&x| x as i64).collect(),
        Array::U16(v) => v.iter().map(|&x| x as i64).collect(),
        Array::I16(v) => v.iter().map(|&x| x as i64).collect(),
        Array::U32(v) => v.iter().map(|&x| x as i64).collect(),
        Array::I32(v) => v.iter().map(|&x| x as i64).collect(),
        Array::I64(v) => v.clone(),
        Array::U64(v) => v.iter().map(|&x| x.min(i64::MAX as u64) as i64).collect(),
        other => {
            return Err(meta_err(
                f,
                key,
                format!("expected an integer array, found {}", other.type_name()),
            ));
        }
    };
    Ok(v)
}

/// An optional token id key, checked against the vocabulary size.
fn opt_id(f: &GgufFile, key: &str, n_vocab: usize) -> crate::Result<Option<u32>> {
    match f.opt_u32(key)? {
        Some(id) if id as usize >= n_vocab => Err(meta_err(
            f,
            key,
            format!("token id {id} is out of range for a vocabulary of {n_vocab} tokens"),
        )),
        other => Ok(other),
    }
}

/// The keys of [`super::eog::fim_keys`]; an id beyond the vocabulary is dropped with a warning.
fn fim_ids(f: &GgufFile, n_vocab: usize) -> crate::Result<[Option<u32>; 3]> {
    let mut ids = [None; 3];
    for (slot, key) in ids.iter_mut().zip(super::eog::fim_keys()) {
        *slot = match f.opt_u32(key)? {
            Some(id) if id as usize >= n_vocab => {
                log::warn!(
                    "{}: {key} = {id} is beyond the {n_vocab} tokens; ignored",
                    f.path().display()
                );
                None
            }
            other => other,
        };
    }
    Ok(ids)
}

impl GgufVocab {
    /// Reads and checks every tokenizer key of `f`.
    pub fn read(f: &GgufFile) -> crate::Result<GgufVocab> {
        let file_pre = f.opt_str(KEY_PRE)?.map(str::to_string);
        let (kind, pre) = match f.str(KEY_MODEL)? {
            "gpt2" => (ModelKind::Gpt2, file_pre),
            // Gemma 4 files name their own model: byte-level BPE's merges with the `gemma4`
            // pre-tokenizer, whatever `tokenizer.ggml.pre` says (llama.cpp reads them so).
            "gemma4" => (ModelKind::Gpt2, Some("gemma4".to_string())),
            "llama" => (ModelKind::Spm, file_pre),
            other => {
                return Err(meta_err(
                    f,
                    KEY_MODEL,
                    format!(
                        "tokenizer model `{other}` is not supported (only `gpt2`, `gemma4` and \
                         `llama`)"
                    ),
                ));
            }
        };
        let tokens = f.string_array(KEY_TOKENS)?.to_vec();
        let n = tokens.len();
        if n == 0 {
            return Err(meta_err(f, KEY_TOKENS, "the token list is empty".into()));
        }
        if n > u32::MAX as usize {
            return Err(meta_err(
                f,
                KEY_TOKENS,
                format!("{n} tokens do not fit u32 ids"),
            ));
        }

        let types = match f.opt_array(KEY_TOKEN_TYPE)? {
            None => vec![TokenType::Normal; n],
            Some(a) => {
                let raw = int_array(f, KEY_TOKEN_TYPE, a)?;
                if raw.len() != n {
                    return Err(meta_err(
                        f,
                        KEY_TOKEN_TYPE,
                        format!("{} token types for {n} tokens in `{KEY_TOKENS}`", raw.len()),
                    ));
                }
                let mut types = Vec::with_capacity(n);
                for (i, &t) in raw.iter().enumerate() {
                    types.push(TokenType::from_i64(t).ok_or_else(|| {
                        meta_err(
                            f,
                            KEY_TOKEN_TYPE,
                            format!("token {i} ({:?}) has unknown type {t}", tokens[i]),
                        )
                    })?);
                }
                types
            }
        };

        let scores = match f.opt_f32_array(KEY_SCORES)? {
            None if kind == ModelKind::Spm => {
                return Err(meta_err(
                    f,
                    KEY_SCORES,
                    "missing (a `llama` tokenizer derives its merges from the scores)".into(),
                ));
            }
            None => None,
            Some(s) if s.len() != n => {
                return Err(meta_err(
                    f,
                    KEY_SCORES,
                    format!("{} scores for {n} tokens in `{KEY_TOKENS}`", s.len()),
                ));
            }
            Some(s) => Some(s.to_vec()),
        };

        let merges = match kind {
            ModelKind::Spm => Vec::new(),
            ModelKind::Gpt2 => Self::read_merges(f, &tokens)?,
        };

        let mut v = GgufVocab {
            kind,
            pre,
            bos: opt_id(f, KEY_BOS, n)?,
            eos: opt_id(f, KEY_EOS, n)?,
            eot: opt_id(f, KEY_EOT, n)?,
            eom: opt_id(f, KEY_EOM, n)?,
            unk: opt_id(f, KEY_UNK, n)?,
            fim: fim_ids(f, n)?,
            add_bos: f.opt_bool(KEY_ADD_BOS)?,
            add_space_prefix: f.opt_bool(KEY_ADD_SPACE_PREFIX)?.unwrap_or(true),
            tokens,
            types,
            scores,
            merges,
        };
        opt_id(f, KEY_PAD, n)?;
        if kind == ModelKind::Spm {
            // llama.cpp's defaults for SentencePiece files without the keys.
            v.bos = v.bos.or(Some(1).filter(|_| n > 1));
            v.eos = v.eos.or(Some(2).filter(|_| n > 2));
            v.unk = v.unk.or_else(|| {
                v.types
                    .iter()
                    .position(|&t| t == TokenType::Unknown)
                    .map(|i| i as u32)
            });
        }
        // Without a type list, the tokens the keys name are still control tokens.
        if f.opt_array(KEY_TOKEN_TYPE)?.is_none() {
            for id in [v.bos, v.eos, v.eot, v.eom].into_iter().flatten() {
                v.types[id as usize] = TokenType::Control;
            }
        }
        Ok(v)
    }

    /// `tokenizer.ggml.merges` ("left right" strings) as pairs, every part and every merged
    /// token checked against the vocabulary.
    fn read_merges(f: &GgufFile, tokens: &[String]) -> crate::Result<Vec<(String, String)>> {
        let raw = f.string_array(KEY_MERGES)?;
        let known: std::collections::HashSet<&str> = tokens.iter().map(String::as_str).collect();
        let mut merges = Vec::with_capacity(raw.len());
        for (i, m) in raw.iter().enumerate() {
            // Split at the first space after the first character, as llama.cpp does, so a
            // left part that starts with a space still works.
            let first_len = m.chars().next().map_or(0, char::len_utf8);
            let pos = m[first_len..].find(' ').map(|p| p + first_len);
            let (a, b) = match pos {
                Some(p) => (&m[..p], &m[p + 1..]),
                None => {
                    return Err(meta_err(
                        f,
                        KEY_MERGES,
                        format!("merge {i} ({m:?}) is not two tokens separated by a space"),
                    ));
                }
            };
            for part in [a, b] {
                if !known.contains(part) {
                    return Err(meta_err(
                        f,
                        KEY_MERGES,
                        format!("merge {i} ({m:?}) refers to {part:?}, which is not a token"),
                    ));
                }
            }
            let merged = format!("{a}{b}");
            if !known.contains(merged.as_str()) {
                return Err(meta_err(
                    f,
                    KEY_MERGES,
                    format!("merge {i} ({m:?}) makes {merged:?}, which is not a token"),
                ));
            }
            merges.push((a.to_string(), b.to_string()));
        }
        Ok(merges)
    }
}
