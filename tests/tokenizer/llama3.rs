//! The real Llama 3.1 tokenizer: `tokenizer.json` → GGUF keys (`hf_json::gguf_metadata`) → a
//! GGUF file → our `Tokenizer::from_gguf`, compared id for id with Hugging Face `tokenizers`
//! loading the same `tokenizer.json` directly, on generated strings of many kinds.
//!
//! Needs `target/llama3_1-tokenizer.json` (or `$EDGETUNE_LLAMA3_TOKENIZER`): run
//! `scripts/fetch-llama3-tokenizer.sh` first (CI does).

use std::path::PathBuf;
use std::sync::OnceLock;

use edgetune::gguf::{GgufFile, GgufWriter, Value};
use edgetune::tokenizer::template::{Message, alpaca, llama3_chat};
use edgetune::tokenizer::{TokenType, Tokenizer};

const BOS: u32 = 128000;
const END_OF_TEXT: u32 = 128001;
const EOT: u32 = 128009;
/// Llama 3's first added (control) token id: no plain-text encoding may reach it.
const FIRST_CONTROL: u32 = 128000;

struct Setup {
    ours: Tokenizer,
    /// HF, as `tokenizer.json` says: added special tokens recognised in text.
    hf: tokenizers::Tokenizer,
    /// HF with `encode_special_tokens`: special tokens' text tokenized as plain text.
    hf_plain: tokenizers::Tokenizer,
    /// The GGUF we built, kept so its temporary directory outlives the tests.
    _dir: tempfile::TempDir,
}

fn tokenizer_json_path() -> PathBuf {
    std::env::var_os("EDGETUNE_LLAMA3_TOKENIZER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/llama3_1-tokenizer.json")
        })
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let path = tokenizer_json_path();
        let json = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}\nThe Llama 3.1 tokenizer is not here: run scripts/fetch-llama3-tokenizer.sh \
                 (or set EDGETUNE_LLAMA3_TOKENIZER to a tokenizer.json)",
                path.display()
            )
        });
        let kv = edgetune::tokenizer::hf_json::gguf_metadata(&json).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let gguf_path = dir.path().join("llama3-tokenizer.gguf");
        let mut w = GgufWriter::new(32);
        w.add_kv("general.architecture", Value::String("llama".into()))
            .unwrap();
        for (k, v) in kv {
            w.add_kv(k, v).unwrap();
        }
        w.write_to_path(&gguf_path, |_, _, _| Ok(())).unwrap();
        let f = GgufFile::open(&gguf_path).unwrap();
        let ours = Tokenizer::from_gguf(&f).unwrap();
        let hf = tokenizers::Tokenizer::from_file(&path).unwrap();
        let mut hf_plain = tokenizers::Tokenizer::from_file(&path).unwrap();
        hf_plain.set_encode_special_tokens(true);
        Setup {
            ours,
            hf,
            hf_plain,
            _dir: dir,
        }
    })
}

fn hf_ids(t: &tokenizers::Tokenizer, s: &str, add_special: bool) -> Vec<u32> {
    t.encode(s, add_special).unwrap().get_ids().to_vec()
}

/// A deterministic generator for numbers (no `rand` dependency in what we compare).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Texts without special-token text: English, Indonesian, code, numbers, emoji, CJK,
/// whitespace runs, and variants of each.
fn plain_corpus() -> Vec<String> {
    let base: &[&str] = &[
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
        "I'm sure they'll say it's fine, but we've seen what you'd do.",
        "DON'T SHOUT. It'S rude, isn'T it?",
        "Fine-tuning a quantized Llama model on a Raspberry Pi takes patience.",
        "Mr. O'Neil paid $1,234.56 for 3 items (incl. tax) on 2024-07-23.",
        "e-mail: someone@example.com, url: https://example.org/a/b?c=d&e=f#g",
        "Saya sedang belajar bahasa Indonesia di Jakarta.",
        "Apa kabar? Semoga harimu menyenangkan!",
        "Pemerintah mengumumkan kebijakan baru tentang pendidikan dan kesehatan masyarakat.",
        "Terima kasih banyak atas bantuannya, Pak Budi.",
        "Mereka makan nasi goreng, sate ayam, dan es teh manis.",
        "fn main() {\n    println!(\"Hello, {}!\", name);\n}\n",
        "def f(x):\n\treturn x ** 2 + 3 * x - 1\n",
        "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
        "<div class=\"box\">&nbsp;<b>bold</b></div>",
        "x = [1, 2, 3]; y = {'a': 1, \"b\": [True, None]}",
        "#!/bin/bash\nset -euo pipefail\necho \"$HOME\" | tr a-z A-Z\n",
        "let v: Vec<u32> = (0..10).map(|i| i * i).collect::<Vec<_>>();",
        "9.11 vs 9.9",
        "Which is larger, 9.11 or 9.9?",
        "3.14159",
        "2.718281828459045",
        "1234567890",
        "12345678901234567890",
        "1,000,000 and 1.000.000 and 1 000 000",
        "-0.0001 and +42 and 1e-10 and 6.022e23",
        "0x1F 0b1010 0o777",
        "Version 1.2.3-beta.4+build.5",
        "emoji: 😀😃😄 👍🏽 ❤️",
        "family: 👨‍👩‍👧‍👦 and flag: 🇮🇩 and 🏳️‍🌈",
        "🤖🦙🔥",
        "日本語のテキストです。",
        "中文分词测试：今天天气很好。",
        "한국어 문장도 있습니다.",
        "Привет, как дела?",
        // Words that are whole tokens but that BPE merging alone would not reach: these need
        // Llama 3's `ignore_merges` (found by comparing HF with it on and off).
        "Tôi đang làm việc ở Việt Nam, nhiều điều hợp lý.",
        "Bu kitaplardan öğrenilmektedir; geliştirilmektedir.",
        "سفر به ایران و jeho přítel",
        "Ελληνικά και العربية و עברית",
        "naïve café résumé — “quotes” ‘single’ … €100",
        "tab\tseparated\tvalues\t",
        "line one\nline two\r\nline three\rline four",
        "   leading spaces",
        "trailing spaces   ",
        "\n\nleading newlines",
        "trailing newlines\n\n\n",
        " ",
        "  ",
        "\t",
        "\n",
        "a  b   c    d     e",
        "a\t\tb\t\t\tc",
        "a\n\n\nb\n \n c",
        "   \t\n  mixed   \n\t  whitespace \t \n",
        "",
        "a",
        "Z",
        "!!!???...",
        "'s 't 're 've 'm 'll 'd",
        "It'S THE 'LL CASE",
        "\u{200B}zero\u{200B}width\u{FEFF}",
        "combining: e\u{301} a\u{308} n\u{303}",
        "<|eot", // partial special-token text
        "|> <| eot_id",
        "<|not_a_special_token|>",
    ];
    let mut out: Vec<String> = Vec::new();
    for s in base {
        out.push(s.to_string());
        out.push(format!(" {s}"));
        out.push(format!("{s}\n"));
    }
    // Whitespace runs between and around words.
    let ws = [
        " ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", " \n", "\n ", "\r\n", " \t \n ",
    ];
    for w in ws {
        out.push(format!("word{w}word"));
        out.push(format!("{w}edge{w}"));
        out.push(w.repeat(5));
    }
    // Numbers of many lengths (the Llama 3 regex splits digits in groups of three).
    let mut rng = Lcg(0x5eed);
    for len in 1..=24 {
        let digits: String = (0..len)
            .map(|_| char::from(b'0' + (rng.next() % 10) as u8))
            .collect();
        out.push(digits.clone());
        out.push(format!("{}.{}", rng.next() % 1000, digits));
    }
    out
}

/// Texts that contain special-token text.
fn special_corpus() -> Vec<String> {
    let mut out: Vec<String> = [
        "<|begin_of_text|>Hello",
        "a<|eot_id|>b",
        "<|eot_id|>",
        "<|eot_id|><|eot_id|>",
        " <|eot_id|> ",
        "x<|end_of_text|>",
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>",
        "<|reserved_special_token_5|>text<|reserved_special_token_250|>",
        "<|eom_id|>\n<|python_tag|>print(1)<|eom_id|>",
        "<|eot_id|", // incomplete: plain text in both modes
        "<<|eot_id|>>",
        "<|eot_id|>9.11 vs 9.9<|eot_id|>",
        "🙂<|eot_id|>🙂",
        "\n\n<|eot_id|>\n\n",
        "The user typed <|eot_id|> in the middle of a sentence.",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let chats = [
        vec![Message::new("user", "What is 9.11 vs 9.9?")],
        vec![
            Message::new("system", "You are a helpful assistant."),
            Message::new("user", "Halo, apa kabar?"),
            Message::new("assistant", "Baik, terima kasih! 😊"),
            Message::new("user", "Write fn main() {}"),
        ],
    ];
    for c in &chats {
        out.push(llama3_chat(c, true).text);
        out.push(llama3_chat(c, false).text);
    }
    out
}

#[test]
fn metadata_and_special_ids() {
    let t = &setup().ours;
    assert_eq!(t.vocab_size(), 128256);
    assert_eq!(t.bos_id(), Some(BOS));
    assert!(t.add_bos_default());
    assert_eq!(t.eos_ids()[0], END_OF_TEXT);
    // The ends: <|end_of_text|>, <|eot_id|>, and <|eom_id|> where the file names it (this
    // package's tokenizer.json keeps Llama 3.0's names: 128008 is a reserved token there).
    for id in FIRST_CONTROL..t.vocab_size() as u32 {
        let text = t.token_text(id).unwrap();
        let ends = matches!(text, "<|end_of_text|>" | "<|eot_id|>" | "<|eom_id|>");
        assert_eq!(t.is_eos(id), ends, "{id} {text}");
    }
    assert!(t.is_eos(END_OF_TEXT) && t.is_eos(EOT) && !t.is_eos(BOS));
    assert!(t.is_special(EOT) && t.is_special(128255) && !t.is_special(9906));
    assert_eq!(t.token_type(EOT), Some(TokenType::Control));
    assert_eq!(t.token_text(EOT), Some("<|eot_id|>"));
    assert_eq!(t.token_id("<|eot_id|>"), Some(EOT));
    assert_eq!(t.token_to_piece(EOT), Some(&b"<|eot_id|>"[..]));
    assert_eq!(t.token_to_piece(128256), None);
    assert!(t.decode(&[128256]).is_err());
}

#[test]
fn plain_text_ids_match_hf() {
    let s = setup();
    let corpus = plain_corpus();
    let mut compared = 0;
    for text in &corpus {
        let ours = s.ours.encode(text, false, false).unwrap();
        assert_eq!(ours, hf_ids(&s.hf, text, false), "{text:?}");
        // No special-token text inside: parse_special changes nothing.
        assert_eq!(s.ours.encode(text, false, true).unwrap(), ours, "{text:?}");
        // HF's post-processor adds <|begin_of_text|>.
        let with_bos = s.ours.encode(text, true, false).unwrap();
        assert_eq!(with_bos, hf_ids(&s.hf, text, true), "{text:?}");
        assert!(
            ours.iter().all(|&id| id < FIRST_CONTROL),
            "{text:?}: {ours:?}"
        );

        assert_eq!(s.ours.decode(&ours).unwrap(), *text);
        assert_eq!(
            s.ours.decode(&ours).unwrap(),
            s.hf.decode(&ours, false).unwrap()
        );
        assert_eq!(
            s.ours.decode(&with_bos).unwrap(),
            format!("<|begin_of_text|>{text}")
        );
        compared += 1;
    }
    eprintln!("plain text: {compared} strings identical to HF");
    assert!(compared >= 200, "only {compared} plain strings");
}

#[test]
fn special_tokens_parsed_match_hf() {
    let s = setup();
    for text in special_corpus() {
        let ours = s.ours.encode(&text, false, true).unwrap();
        assert_eq!(ours, hf_ids(&s.hf, &text, false), "{text:?}");
        // Each special-token text became one id.
        let eot_texts = text.matches("<|eot_id|>").count();
        assert_eq!(
            ours.iter().filter(|&&id| id == EOT).count(),
            eot_texts,
            "{text:?}"
        );
        assert_eq!(s.ours.decode(&ours).unwrap(), text);
        assert_eq!(
            s.ours.decode(&ours).unwrap(),
            s.hf.decode(&ours, false).unwrap()
        );
    }
}

#[test]
fn special_tokens_unparsed_are_plain_text() {
    let s = setup();
    for text in special_corpus() {
        let ours = s.ours.encode(&text, false, false).unwrap();
        // Oracle: HF's own switch for tokenizing special tokens as text.
        assert_eq!(ours, hf_ids(&s.hf_plain, &text, false), "{text:?}");
        assert!(
            ours.iter().all(|&id| id < FIRST_CONTROL),
            "{text:?}: a control id in {ours:?}"
        );
        assert_eq!(s.ours.decode(&ours).unwrap(), text);
    }
    // The user typing "<|eot_id|>" gets its pieces, not the token.
    let typed = s.ours.encode("<|eot_id|>", false, false).unwrap();
    assert!(typed.len() > 1 && !typed.contains(&EOT), "{typed:?}");
}

#[test]
fn streaming_decode_matches_decode() {
    let s = setup();
    for text in plain_corpus().iter().chain(special_corpus().iter()) {
        let ids = s.ours.encode(text, false, true).unwrap();
        let mut d = s.ours.stream_decoder(true);
        let mut streamed = String::new();
        for &id in &ids {
            let piece = s.ours.decode_next(&mut d, id).unwrap();
            // Never half a character: every emitted chunk is whole UTF-8 (a `String`), and
            // nothing that decodes to U+FFFD appears for valid input.
            assert!(!piece.contains('\u{FFFD}'), "{text:?}");
            streamed += &piece;
        }
        streamed += &d.finish();
        assert_eq!(streamed, *text);
    }
}

#[test]
fn template_parts_mask_the_response() {
    let s = setup();
    let chat = llama3_chat(
        &[
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello! How can I help?"),
        ],
        false,
    );
    let (ids, mask) = s.ours.encode_parts(chat.parts(), false, true).unwrap();
    assert_eq!(ids, hf_ids(&s.hf, &chat.text, false));
    let trained: Vec<u32> = ids
        .iter()
        .zip(&mask)
        .filter(|p| *p.1)
        .map(|p| *p.0)
        .collect();
    assert_eq!(
        s.ours.decode(&trained).unwrap(),
        "Hello! How can I help?<|eot_id|>"
    );

    let a = alpaca(
        "Terjemahkan ke bahasa Inggris.",
        Some("Selamat pagi"),
        Some("Good morning"),
    );
    let (ids, mask) = s.ours.encode_parts(a.parts(), true, false).unwrap();
    assert_eq!(ids, hf_ids(&s.hf, &a.text, true));
    let trained: Vec<u32> = ids
        .iter()
        .zip(&mask)
        .filter(|p| *p.1)
        .map(|p| *p.0)
        .collect();
    assert_eq!(s.ours.decode(&trained).unwrap(), "Good morning");
    assert!(!mask[0], "BOS carries no loss");
}
