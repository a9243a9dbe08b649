//! Hugging Face `tokenizer.json` (byte-level BPE, as Llama 3's) → GGUF tokenizer keys, the way
//! llama.cpp's `convert_hf_to_gguf.py` (`get_vocab_base`, `_set_vocab_gpt2`) and gguf-py's
//! `SpecialVocab` fill them.
//!
//! Differences from the converter, because we read `tokenizer.json` alone:
//! - The vocabulary size is the largest id + 1 (the converter takes `vocab_size` from
//!   `config.json`); ids without a token become `[PAD{id}]` with type UNUSED (5), as there.
//! - `tokenizer.ggml.pre` is not found by hashing a probe encoding: a Split with Llama 3's
//!   regex gives `llama-bpe`, a bare ByteLevel with its own (GPT-2) regex gives `gpt-2`,
//!   anything else is an error naming the pre-tokenizer.
//! - BOS/EOS: the converter reads `bos_token`/`eos_token` from `tokenizer_config.json`. We
//!   take `<|begin_of_text|>` / `<|end_of_text|>` when present (Llama 3's base-model choice;
//!   Llama 3 *instruct* configs name `<|eot_id|>` as EOS, which our tokenizer stops at anyway,
//!   see `Tokenizer::eos_ids`), else the special token the post-processor puts first (BOS) and
//!   `<|endoftext|>` or `</s>` (EOS); a key is left out when nothing fits.
//! - Non-normalized added tokens are stored as written (the converter round-trips them through
//!   the tokenizer, which changes nothing for Llama 3's `<|…|>` tokens).

use serde_json::Value as Json;

use super::bpe::{GPT2_SPLIT_REGEX, LLAMA3_SPLIT_REGEX};
use super::vocab::{self, TokenType};
use crate::Error;
use crate::gguf::{Array, Value};

fn bad(what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("tokenizer.json: {what}"))
}

/// The converter's "looks special" rule: added tokens some models forget to mark special.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// The pre-tokenizers of `tokenizer.json` (a Sequence is flattened).
fn pre_tokenizers(j: &Json) -> Vec<&Json> {
    match j.get("pre_tokenizer") {
        Some(p) if p.get("type").and_then(Json::as_str) == Some("Sequence") => p
            .get("pretokenizers")
            .and_then(Json::as_array)
            .map(|v| v.iter().collect())
            .unwrap_or_default(),
        Some(Json::Null) | None => Vec::new(),
        Some(p) => vec![p],
    }
}

/// `tokenizer.ggml.pre` for the pre-tokenizer of `j`.
fn detect_pre(j: &Json) -> crate::Result<&'static str> {
    let pres = pre_tokenizers(j);
    let ty = |p: &Json| {
        p.get("type")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string()
    };
    let byte_level = pres.iter().find(|p| ty(p) == "ByteLevel");
    let Some(byte_level) = byte_level else {
        return Err(bad(
            "the pre-tokenizer has no ByteLevel step: only byte-level BPE (Llama 3 style) is \
             supported",
        ));
    };
    let splits: Vec<&str> = pres
        .iter()
        .filter(|p| ty(p) == "Split")
        .map(|p| {
            p.pointer("/pattern/Regex")
                .and_then(Json::as_str)
                .unwrap_or("?")
        })
        .collect();
    let bl_regex = byte_level
        .get("use_regex")
        .and_then(Json::as_bool)
        .unwrap_or(true);
    match (splits.as_slice(), bl_regex) {
        ([r], false) if *r == LLAMA3_SPLIT_REGEX => Ok("llama-bpe"),
        ([r], false) if *r == GPT2_SPLIT_REGEX => Ok("gpt-2"),
        ([], true) => Ok("gpt-2"),
        _ => Err(bad(format!(
            "unsupported pre-tokenizer (split regexes {splits:?}, ByteLevel use_regex = \
             {bl_regex}); supported: Llama 3's split regex, GPT-2's"
        ))),
    }
}

/// Merges as "a b" strings; the ["a", "b"] form (transformers ≥ 4.45) is joined with a space,
/// and spaces inside a part are written as U+0120, as gguf-py does.
fn merges(model: &Json) -> crate::Result<Vec<String>> {
    let list = model
        .get("merges")
        .and_then(Json::as_array)
        .ok_or_else(|| bad("model.merges is missing or not a list"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let s = match m {
            Json::String(s) => s.clone(),
            Json::Array(pair) => match pair.as_slice() {
                [Json::String(a), Json::String(b)] => {
                    let esc = |s: &str| s.replace(' ', "\u{120}");
                    format!("{} {}", esc(a), esc(b))
                }
                _ => return Err(bad(format!("model.merges[{i}] is not a pair of strings"))),
            },
            _ => {
                return Err(bad(format!(
                    "model.merges[{i}] is neither a string nor a pair"
                )));
            }
        };
        out.push(s);
    }
    Ok(out)
}

fn id_of(v: &Json, what: &str) -> crate::Result<u32> {
    v.as_u64()
        .and_then(|x| u32::try_from(x).ok())
        .ok_or_else(|| bad(format!("{what}: id {v} is not a u32")))
}

/// (add_bos, add_eos, first special token) from a TemplateProcessing post-processor.
fn template_processing(j: &Json) -> Option<(bool, bool, Option<String>)> {
    let pp = j.get("post_processor")?;
    let procs: Vec<&Json> = match pp.get("type").and_then(Json::as_str) {
        Some("Sequence") => pp.get("processors")?.as_array()?.iter().collect(),
        _ => vec![pp],
    };
    let tp = procs
        .into_iter()
        .find(|p| p.get("type").and_then(Json::as_str) == Some("TemplateProcessing"))?;
    let single = tp.get("single")?.as_array()?;
    let special = |e: &Json| {
        e.pointer("/SpecialToken/id")
            .and_then(Json::as_str)
            .map(String::from)
    };
    let first = single.first().and_then(special);
    let last = single.last().and_then(special);
    Some((first.is_some(), last.is_some(), first))
}

/// The GGUF tokenizer keys for a byte-level BPE `tokenizer.json`, in the order the converter
/// writes them.
pub fn gguf_metadata(tokenizer_json: &str) -> crate::Result<Vec<(String, Value)>> {
    let j: Json =
        serde_json::from_str(tokenizer_json).map_err(|e| bad(format!("not JSON: {e}")))?;
    let model = j.get("model").ok_or_else(|| bad("no `model`"))?;
    let mtype = model.get("type").and_then(Json::as_str).unwrap_or("BPE");
    if mtype != "BPE" {
        return Err(bad(format!(
            "model type {mtype} is not supported (only BPE)"
        )));
    }
    let pre = detect_pre(&j)?;

    // Vocabulary and added tokens, by id.
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| bad("model.vocab is missing or not an object"))?;
    let mut by_id: Vec<Option<(String, TokenType)>> = Vec::new();
    let mut put = |id: u32, text: &str, ty: TokenType| -> crate::Result<()> {
        let i = id as usize;
        if i >= by_id.len() {
            by_id.resize(i + 1, None);
        }
        match &by_id[i] {
            Some((old, _)) if old != text => {
                Err(bad(format!("id {id} is both {old:?} and {text:?}")))
            }
            _ => {
                by_id[i] = Some((text.to_string(), ty));
                Ok(())
            }
        }
    };
    for (text, id) in vocab {
        put(
            id_of(id, &format!("model.vocab[{text:?}]"))?,
            text,
            TokenType::Normal,
        )?;
    }
    let added = j
        .get("added_tokens")
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, a) in added.iter().enumerate() {
        let text = a
            .get("content")
            .and_then(Json::as_str)
            .ok_or_else(|| bad(format!("added_tokens[{i}] has no content")))?;
        let id = id_of(
            a.get("id").unwrap_or(&Json::Null),
            &format!("added_tokens[{i}]"),
        )?;
        let special = a.get("special").and_then(Json::as_bool).unwrap_or(false);
        let ty = if special || looks_special(text) {
            TokenType::Control
        } else {
            TokenType::UserDefined
        };
        put(id, text, ty)?;
    }
    if by_id.is_empty() {
        return Err(bad("the vocabulary is empty"));
    }

    let mut tokens = Vec::with_capacity(by_id.len());
    let mut types = Vec::with_capacity(by_id.len());
    for (id, e) in by_id.into_iter().enumerate() {
        let (t, ty) = e.unwrap_or_else(|| (format!("[PAD{id}]"), TokenType::Unused));
        tokens.push(t);
        types.push(ty as i32);
    }
    let find = |t: &str| tokens.iter().position(|x| x == t).map(|i| i as u32);

    let tp = template_processing(&j);
    let bos = find("<|begin_of_text|>").or_else(|| {
        tp.as_ref()
            .and_then(|(_, _, first)| first.as_deref())
            .and_then(find)
    });
    let eos = find("<|end_of_text|>")
        .or_else(|| find("<|endoftext|>"))
        .or_else(|| find("</s>"));

    let mut out: Vec<(String, Value)> = vec![
        (vocab::KEY_MODEL.into(), Value::String("gpt2".into())),
        (vocab::KEY_PRE.into(), Value::String(pre.into())),
        (
            vocab::KEY_TOKENS.into(),
            Value::Array(Array::String(tokens)),
        ),
        (
            vocab::KEY_TOKEN_TYPE.into(),
            Value::Array(Array::I32(types)),
        ),
        (
            vocab::KEY_MERGES.into(),
            Value::Array(Array::String(merges(model)?)),
        ),
    ];
    if let Some(b) = bos {
        out.push((vocab::KEY_BOS.into(), Value::U32(b)));
    }
    if let Some(e) = eos {
        out.push((vocab::KEY_EOS.into(), Value::U32(e)));
    }
    if let Some((add_bos, add_eos, _)) = tp {
        out.push((vocab::KEY_ADD_BOS.into(), Value::Bool(add_bos)));
        out.push((vocab::KEY_ADD_EOS.into(), Value::Bool(add_eos)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(kv: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
        kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    #[test]
    fn small_tokenizer_json() {
        // Ids 0–3 in the vocabulary, 5 and 6 added (6 special), 4 a hole; merges in both forms.
        let json = r#"{
          "added_tokens": [
            {"id": 5, "content": "<tool>", "special": false},
            {"id": 6, "content": "<|begin_of_text|>", "special": true}
          ],
          "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
          "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}]},
          "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3},
                    "merges": [["a", "b"], "Ġ a"]}
        }"#;
        let kv = gguf_metadata(json).unwrap();
        let s = |v: &str| Value::String(v.into());
        assert_eq!(get(&kv, vocab::KEY_MODEL), Some(&s("gpt2")));
        assert_eq!(get(&kv, vocab::KEY_PRE), Some(&s("gpt-2")));
        let toks: Vec<String> = ["a", "b", "ab", "Ġ", "[PAD4]", "<tool>", "<|begin_of_text|>"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        assert_eq!(
            get(&kv, vocab::KEY_TOKENS),
            Some(&Value::Array(Array::String(toks)))
        );
        assert_eq!(
            get(&kv, vocab::KEY_TOKEN_TYPE),
            Some(&Value::Array(Array::I32(vec![1, 1, 1, 1, 5, 4, 3])))
        );
        let merges = vec!["a b".to_string(), "Ġ a".to_string()];
        assert_eq!(
            get(&kv, vocab::KEY_MERGES),
            Some(&Value::Array(Array::String(merges)))
        );
        assert_eq!(get(&kv, vocab::KEY_BOS), Some(&Value::U32(6)));
        assert_eq!(get(&kv, vocab::KEY_EOS), None);
        assert_eq!(get(&kv, vocab::KEY_ADD_BOS), Some(&Value::Bool(true)));
        assert_eq!(get(&kv, vocab::KEY_ADD_EOS), Some(&Value::Bool(false)));
    }

    #[test]
    fn rejects_what_it_cannot_convert() {
        let unigram = r#"{"model": {"type": "Unigram", "vocab": []}}"#;
        assert!(
            gguf_metadata(unigram)
                .unwrap_err()
                .to_string()
                .contains("Unigram")
        );
        let metaspace = r#"{"pre_tokenizer": {"type": "Metaspace"},
                            "model": {"type": "BPE", "vocab": {}, "merges": []}}"#;
        assert!(
            gguf_metadata(metaspace)
                .unwrap_err()
                .to_string()
                .contains("ByteLevel")
        );
        let clash = r#"{"pre_tokenizer": {"type": "ByteLevel"},
                        "added_tokens": [{"id": 0, "content": "x", "special": true}],
                        "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}"#;
        assert!(
            gguf_metadata(clash)
                .unwrap_err()
                .to_string()
                .contains("id 0")
        );
    }
}
