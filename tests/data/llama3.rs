//! Training sequences with the real Llama 3.1 tokenizer: the ids of Alpaca and chat examples
//! equal Hugging Face `tokenizers` encoding the whole rendered text (so cutting the text into
//! prompt and response parts changes no token), and the loss mask decodes to exactly the
//! responses with their end tokens.
//!
//! Needs `target/llama3_1-tokenizer.json` (or `$EDGETUNE_LLAMA3_TOKENIZER`): run
//! `scripts/fetch-llama3-tokenizer.sh` first (CI does).

use std::path::PathBuf;

use edgetune::data::{self, Content, Example, TokenizeOptions};
use edgetune::gguf::{GgufFile, GgufWriter, Value};
use edgetune::tokenizer::Tokenizer;
use edgetune::tokenizer::template::{Message, alpaca, llama3_chat};

fn setup() -> (Tokenizer, tokenizers::Tokenizer) {
    let path = std::env::var_os("EDGETUNE_LLAMA3_TOKENIZER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/llama3_1-tokenizer.json")
        });
    let json = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}\nrun scripts/fetch-llama3-tokenizer.sh first",
            path.display()
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tok.gguf");
    let mut w = GgufWriter::new(32);
    w.add_kv("general.architecture", Value::String("llama".into()))
        .unwrap();
    for (k, v) in edgetune::tokenizer::hf_json::gguf_metadata(&json).unwrap() {
        w.add_kv(k, v).unwrap();
    }
    w.write_to_path(&gguf, |_, _, _| Ok(())).unwrap();
    let ours = Tokenizer::from_gguf(&GgufFile::open(&gguf).unwrap()).unwrap();
    (ours, tokenizers::Tokenizer::from_file(&path).unwrap())
}

fn example(content: Content) -> Example {
    Example {
        content,
        task: None,
        line: 1,
    }
}

#[test]
fn llama3_alpaca_and_chat_sequences() {
    let (tok, hf) = setup();
    let opts = TokenizeOptions::default();
    let eos = tok.eos_ids()[0];
    let eos_text = tok.decode(&[eos]).unwrap();

    let (instruction, input, output) = (
        "Which is larger, 9.11 or 9.9?",
        "",
        "9.9 is larger than 9.11.\nWritten with two decimals: 9.90 > 9.11.",
    );
    let t = data::tokenize(
        &tok,
        &example(Content::Alpaca {
            instruction: instruction.into(),
            input: input.into(),
            output: output.into(),
        }),
        &opts,
    )
    .unwrap();
    let text = alpaca(instruction, Some(input), Some(output)).text;
    let mut want = vec![tok.bos_id().unwrap()];
    want.extend(hf.encode(text.as_str(), false).unwrap().get_ids());
    want.push(eos);
    assert_eq!(t.ids, want);
    assert_eq!(
        tok.decode(&t.target_ids()).unwrap(),
        format!("{output}{eos_text}")
    );

    let messages = vec![
        Message::new("system", "You are a gateway assistant."),
        Message::new("user", "Nyalakan kipas 3 di zona B."),
        Message::new(
            "assistant",
            "{\"device\":\"fan\",\"id\":3,\"zone\":\"B\",\"action\":\"on\"}",
        ),
        Message::new("user", "Thanks!"),
        Message::new("assistant", "You're welcome."),
    ];
    let t = data::tokenize(
        &tok,
        &example(Content::Chat {
            messages: messages.clone(),
        }),
        &opts,
    )
    .unwrap();
    let text = llama3_chat(&messages, false).text;
    let want: Vec<u32> = hf.encode(text.as_str(), false).unwrap().get_ids().to_vec();
    assert_eq!(t.ids, want);
    assert_eq!(t.ids[0], 128000);
    assert_eq!(
        tok.decode(&t.target_ids()).unwrap(),
        "{\"device\":\"fan\",\"id\":3,\"zone\":\"B\",\"action\":\"on\"}<|eot_id|>You're welcome.<|eot_id|>"
    );
}
