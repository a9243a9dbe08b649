//! Tokenizers from hand-made GGUF vocabularies, with ids worked out by hand: a small
//! SentencePiece (`llama`) vocabulary with byte fallback, a tiny byte-level (`gpt2`) one with
//! GPT-2's split regex, and malformed metadata that must be refused with a precise error.

use edgetune::gguf::{Array, GgufFile, GgufWriter, Value};
use edgetune::tokenizer::{ModelKind, Tokenizer};

/// A GGUF holding only `kv`, parsed back.
fn gguf(kv: Vec<(&str, Value)>) -> GgufFile {
    let mut w = GgufWriter::new(32);
    for (k, v) in kv {
        w.add_kv(k, v).unwrap();
    }
    let mut bytes = Vec::new();
    w.write(&mut bytes, |_, _, _| Ok(())).unwrap();
    GgufFile::from_bytes("hand-made.gguf", bytes).unwrap()
}

fn strings(v: &[&str]) -> Value {
    Value::Array(Array::String(v.iter().map(|s| s.to_string()).collect()))
}

/// The SentencePiece vocabulary of the test:
/// 0 `<unk>`, 1 `<s>`, 2 `</s>`, 3..=258 `<0x00>`..`<0xFF>` (3 + byte), then
/// 259 ▁, 260 h, 261 e, 262 l, 263 o, 264 w, 265 r, 266 d (score -100 each), and merged
/// pieces with falling scores: 267 ll (-1), 268 he (-2), 269 ▁he (-3), 270 llo (-4),
/// 271 ▁hello (-5), 272 or (-6), 273 ▁w (-7), 274 ld (-8), 275 ▁wor (-9), 276 ▁world (-10).
fn spm_kv(add_space_prefix: Option<bool>) -> Vec<(&'static str, Value)> {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for c in ["▁", "h", "e", "l", "o", "w", "r", "d"] {
        tokens.push(c.into());
        types.push(1);
        scores.push(-100.0);
    }
    let merged = [
        "ll", "he", "▁he", "llo", "▁hello", "or", "▁w", "ld", "▁wor", "▁world",
    ];
    for (i, m) in merged.iter().enumerate() {
        tokens.push(m.to_string());
        types.push(1);
        scores.push(-1.0 - i as f32);
    }
    assert_eq!(tokens.len(), 277);
    let mut kv = vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", Value::Array(Array::String(tokens))),
        ("tokenizer.ggml.scores", Value::Array(Array::F32(scores))),
        ("tokenizer.ggml.token_type", Value::Array(Array::I32(types))),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
    ];
    if let Some(p) = add_space_prefix {
        kv.push(("tokenizer.ggml.add_space_prefix", Value::Bool(p)));
    }
    kv
}

const BYTE0: u32 = 3;

#[test]
fn sentencepiece_hand_worked_ids() {
    let t = Tokenizer::from_gguf(&gguf(spm_kv(None))).unwrap();
    assert_eq!(t.kind(), ModelKind::Spm);
    assert_eq!((t.bos_id(), t.eos_ids()), (Some(1), &[2u32][..]));
    assert!(t.add_bos_default());
    assert!(t.is_special(1) && t.is_special(2) && !t.is_special(271));

    // "▁hello▁world": ll, he, ▁he, llo, ▁hello, or, ▁w, ld, ▁wor, ▁world (by score).
    assert_eq!(t.encode("hello world", false, false).unwrap(), [271, 276]);
    assert_eq!(t.encode("hello world", true, false).unwrap(), [1, 271, 276]);
    // "▁hold": only l+d merges.
    assert_eq!(
        t.encode("hold", false, false).unwrap(),
        [259, 260, 263, 274]
    );
    // "é" is not a piece: its UTF-8 bytes C3 A9 fall back to <0xC3> <0xA9>.
    assert_eq!(
        t.encode("hé", false, false).unwrap(),
        [259, 260, BYTE0 + 0xC3, BYTE0 + 0xA9]
    );
    // Spaces become ▁ (plus the prefix one): ▁ ▁ ▁he.
    assert_eq!(t.encode("  he", false, false).unwrap(), [259, 259, 269]);
    // parse_special: </s> is one id and the next run of text gets its own ▁ prefix.
    assert_eq!(
        t.encode("he</s>lo", false, true).unwrap(),
        [269, 2, 259, 262, 263]
    );
    // Without parse_special "</s>" is text: '<' '/' 's' '>' are bytes 3C 2F 73 3E.
    assert_eq!(
        t.encode("he</s>lo", false, false).unwrap(),
        [
            269,
            BYTE0 + 0x3C,
            BYTE0 + 0x2F,
            BYTE0 + 0x73,
            BYTE0 + 0x3E,
            262,
            263
        ]
    );

    assert_eq!(t.decode(&[271, 276]).unwrap(), "hello world");
    assert_eq!(t.decode(&[1, 271, 276]).unwrap(), "<s>hello world");
    assert_eq!(t.token_to_piece(BYTE0 + 0x0A), Some(&b"\n"[..]));
    assert_eq!(t.token_to_piece(271), Some(&b" hello"[..]));
    for s in [
        "hello world",
        "hold",
        "hé",
        "  he",
        "he</s>lo",
        "",
        "héllo wörld 👍",
        "\n",
    ] {
        for parse_special in [false, true] {
            let ids = t.encode(s, false, parse_special).unwrap();
            assert_eq!(t.decode(&ids).unwrap(), s, "{s:?} {ids:?}");
            let ids = t.encode(s, true, parse_special).unwrap();
            assert_eq!(t.decode(&ids).unwrap(), format!("<s>{s}"), "{s:?} {ids:?}");
        }
    }
}

#[test]
fn sentencepiece_parts_share_one_space_prefix() {
    let t = Tokenizer::from_gguf(&gguf(spm_kv(None))).unwrap();
    // Two parts of one text: only the first gets "▁"; "▁hello" + "▁world" as when joined.
    let (ids, mask) = t
        .encode_parts([("hello", false), (" world", true)], true, false)
        .unwrap();
    assert_eq!(ids, [1, 271, 276]);
    assert_eq!(mask, [false, false, true]);
}

#[test]
fn sentencepiece_without_space_prefix() {
    let t = Tokenizer::from_gguf(&gguf(spm_kv(Some(false)))).unwrap();
    // "hello": ll, he, llo → he llo.
    assert_eq!(t.encode("hello", false, false).unwrap(), [268, 270]);
    assert_eq!(t.encode(" hello", false, false).unwrap(), [271]);
    for s in ["hello", " hello", "he</s>lo"] {
        let ids = t.encode(s, false, true).unwrap();
        assert_eq!(t.decode(&ids).unwrap(), s);
    }
}

/// Byte-level: h e l o Ġ as single characters, then merges in rank order.
fn gpt2_kv(pre: &str, merges: &[&str]) -> Vec<(&'static str, Value)> {
    let tokens = [
        "h", "e", "l", "o", "Ġ", "he", "ll", "hell", "hello", "Ġhello", "<|end|>",
    ];
    vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String(pre.into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3])),
        ),
        ("tokenizer.ggml.merges", strings(merges)),
        ("tokenizer.ggml.eos_token_id", Value::U32(10)),
    ]
}

const GPT2_MERGES: &[&str] = &["h e", "l l", "he ll", "hell o", "Ġ hello"];

#[test]
fn byte_level_gpt2_regex() {
    let t = Tokenizer::from_gguf(&gguf(gpt2_kv("gpt-2", GPT2_MERGES))).unwrap();
    // GPT-2's regex splits "hello hello" into "hello" and " hello" → "Ġhello".
    assert_eq!(t.encode("hello hello", false, false).unwrap(), [8, 9]);
    assert_eq!(t.encode("hell<|end|>", false, true).unwrap(), [7, 10]);
    assert_eq!(t.decode(&[8, 9, 10]).unwrap(), "hello hello<|end|>");
    // No BOS in the file: none is added by default, and asking for one is an error.
    assert_eq!(t.bos_id(), None);
    assert!(!t.add_bos_default());
    let e = t.encode("hello", true, false).unwrap_err().to_string();
    assert!(e.contains("bos_token_id"), "{e}");
    // <|end|> ends generation by its text, next to the EOS key.
    assert_eq!(t.eos_ids(), [10]);
}

/// Gemma 4's own model name: raw UTF-8 BPE with spaces as "▁", lines merged whole, BOS always.
#[test]
fn gemma4_raw_utf8_bpe() {
    let tokens = [
        "<pad>", "<eos>", "<bos>", "▁", "h", "i", "▁h", "▁hi", "\n", "\n\n", "<0x21>",
    ];
    let kv = vec![
        ("tokenizer.ggml.model", Value::String("gemma4".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(vec![3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 6])),
        ),
        ("tokenizer.ggml.merges", strings(&["▁ h", "▁h i"])),
        ("tokenizer.ggml.bos_token_id", Value::U32(2)),
        ("tokenizer.ggml.eos_token_id", Value::U32(1)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
    ];
    let t = Tokenizer::from_gguf(&gguf(kv)).unwrap();
    let pre = t.pre_tokenizer().unwrap();
    assert_eq!(pre.name(), Some("gemma4"));
    // Gemma 4 adds BOS even though the file says not to.
    assert!(t.add_bos_default());
    // "hi▁hi!": "h" and "i" have no merge, "▁ h" then "▁h i"; "!" is no token, so it stops
    // the merges and becomes its byte token.
    let ids = t.encode("hi hi!", true, false).unwrap();
    assert_eq!(ids, [2, 4, 5, 7, 10]);
    assert_eq!(t.decode(&ids[1..]).unwrap(), "hi hi!");
    // A newline run that is a token is taken whole; one that is not goes piece by piece.
    assert_eq!(t.encode("\n\n", false, false).unwrap(), [9]);
    assert_eq!(t.encode("\n\n\n", false, false).unwrap(), [8, 8, 8]);
    // <eos> ends generation by its text too.
    assert_eq!(t.eog_ids(), [1]);
}

fn err_of(kv: Vec<(&str, Value)>) -> String {
    Tokenizer::from_gguf(&gguf(kv)).unwrap_err().to_string()
}

fn contains_all(e: &str, parts: &[&str]) {
    for p in parts {
        assert!(e.contains(p), "{e:?} lacks {p:?}");
    }
}

#[test]
fn malformed_metadata_is_refused() {
    // token_type shorter than tokens.
    let mut kv = spm_kv(None);
    kv[3].1 = Value::Array(Array::I32(vec![1; 276]));
    contains_all(
        &err_of(kv),
        &["hand-made.gguf", "tokenizer.ggml.token_type", "276", "277"],
    );
    // No token list.
    let kv: Vec<_> = spm_kv(None)
        .into_iter()
        .filter(|(k, _)| *k != "tokenizer.ggml.tokens")
        .collect();
    contains_all(
        &err_of(kv),
        &["hand-made.gguf", "tokenizer.ggml.tokens", "missing"],
    );
    // SentencePiece without scores.
    let kv: Vec<_> = spm_kv(None)
        .into_iter()
        .filter(|(k, _)| *k != "tokenizer.ggml.scores")
        .collect();
    contains_all(&err_of(kv), &["tokenizer.ggml.scores", "missing"]);
    // A BOS id beyond the vocabulary.
    let mut kv = spm_kv(None);
    kv[4].1 = Value::U32(277);
    contains_all(&err_of(kv), &["tokenizer.ggml.bos_token_id", "277"]);
    // A merge naming a token that does not exist, and one whose result does not exist.
    let e = err_of(gpt2_kv("gpt-2", &["h e", "l x"]));
    contains_all(&e, &["tokenizer.ggml.merges", "merge 1", "\"x\""]);
    let e = err_of(gpt2_kv("gpt-2", &["e h"]));
    contains_all(&e, &["tokenizer.ggml.merges", "merge 0", "\"eh\""]);
    // A pre-tokenizer llama.cpp does not know (the error lists the ones it does), and an
    // unsupported model.
    let e = err_of(gpt2_kv("qwen9", GPT2_MERGES));
    contains_all(
        &e,
        &[
            "hand-made.gguf",
            "tokenizer.ggml.pre",
            "qwen9",
            "qwen2",
            "llama-bpe",
        ],
    );
    let mut kv = gpt2_kv("gpt-2", GPT2_MERGES);
    kv[0].1 = Value::String("bert".into());
    contains_all(&err_of(kv), &["tokenizer.ggml.model", "bert"]);
    // An unknown token type value.
    let mut kv = gpt2_kv("gpt-2", GPT2_MERGES);
    kv[3].1 = Value::Array(Array::I32(vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 9]));
    contains_all(&err_of(kv), &["tokenizer.ggml.token_type", "token 10", "9"]);
}
