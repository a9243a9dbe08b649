//! The model's chat template used by default: `generate --template auto` and `eval` format the
//! prompt with it (the test models carry SmolLM2's or Llama 3.1's template through
//! `testmodel --chat-template`), and the chat dataset format renders conversations with it,
//! training on the assistant turns only (SmolLM2's template on a vocabulary with its control
//! tokens: ids and loss mask; `data check` and `train` on a model carrying the template).

use std::path::{Path, PathBuf};
use std::process::Output;

use edgetune::data::{self, IGNORE, TokenizeOptions};
use edgetune::eval::{PromptFormat, runner::encode_case};
use edgetune::gguf::{Array, GgufFile, GgufWriter, Value};
use edgetune::tokenizer::Tokenizer;
use edgetune::tokenizer::chat_template::{self, KEY_CHAT_TEMPLATE};
use edgetune::tokenizer::template::Message;

use crate::cli_support::{edgetune, ok, s, write_tiny};
use crate::template_fixture;

/// The tiny test model (seed 9), with `template` stored as its chat template if given.
fn tiny(dir: &Path, name: &str, template: Option<&str>) -> PathBuf {
    let p = dir.join(name);
    let mut extra = vec!["--seed", "9"];
    let t;
    if let Some(name) = template {
        t = template_fixture(name);
        extra.extend(["--chat-template", s(&t)]);
    }
    write_tiny(&p, "q8_0", &extra);
    p
}

/// The JSON summary `generate --json` prints last on stderr.
fn summary(out: &Output) -> serde_json::Value {
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().rev().find(|l| l.starts_with('{')).unwrap();
    serde_json::from_str(line).unwrap()
}

/// The prompt length and generated ids of a greedy `generate` run (not its timings).
fn generate(model: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "generate",
        "--model",
        s(model),
        "--prompt",
        "Sensor 3 reads",
        "--max-tokens",
        "6",
        "--json",
    ];
    args.extend_from_slice(extra);
    let s = summary(&ok(&args));
    serde_json::json!({ "prompt_tokens": s["prompt_tokens"], "tokens": s["tokens"] })
}

#[test]
fn generate_formats_the_prompt_with_the_models_template_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let plain = tiny(dir.path(), "plain.gguf", None);
    let llama = tiny(dir.path(), "llama.gguf", Some("llama3_1.jinja"));
    let smol = tiny(dir.path(), "smol.gguf", Some("smollm2.jinja"));
    // Llama 3.1's template renders what the built-in llama3-chat format writes.
    let auto = generate(&llama, &[]);
    assert_eq!(auto, generate(&llama, &["--template", "auto"]));
    assert_eq!(auto, generate(&llama, &["--template", "llama3-chat"]));
    // SmolLM2's: the prompt is the rendered conversation, BOS first (the test vocabulary asks
    // for it and the template does not write it); same weights, same template → same output
    // whether the template comes from the model or from --template-file.
    let smol_auto = generate(&smol, &[]);
    let smol_file = template_fixture("smollm2.jinja");
    assert_eq!(
        smol_auto,
        generate(&plain, &["--template-file", s(&smol_file)])
    );
    let messages = dir.path().join("m.json");
    std::fs::write(
        &messages,
        r#"[{"role": "user", "content": "Sensor 3 reads"}]"#,
    )
    .unwrap();
    let rendered = ok(&["template", "--model", s(&smol), "--messages", s(&messages)]).stdout;
    let rendered = String::from_utf8(rendered).unwrap();
    assert!(rendered.starts_with("<|im_start|>system\n") && rendered.ends_with("assistant\n"));
    let count = |text: &str, extra: &[&str]| {
        let mut args = vec!["tokenize", "--model", s(&smol), "--text", text, "--json"];
        args.extend_from_slice(extra);
        let ids: Vec<u32> = serde_json::from_slice(&ok(&args).stdout).unwrap();
        ids.len()
    };
    assert_eq!(
        smol_auto["prompt_tokens"],
        count(&rendered, &["--special"]),
        "{rendered:?}"
    );
    assert_eq!(
        generate(&smol, &["--template", "none"])["prompt_tokens"],
        count("Sensor 3 reads", &[])
    );
    // A model without a template: the Llama 3 fallback (its vocabulary has the header tokens).
    assert_eq!(generate(&plain, &[]), auto);
    // --template-file replaces --template.
    let both = edgetune(&[
        "generate",
        "--model",
        s(&plain),
        "--prompt",
        "x",
        "--template",
        "alpaca",
        "--template-file",
        s(&smol_file),
    ]);
    assert!(!both.status.success());
}

#[test]
fn eval_formats_cases_with_the_models_template() {
    let dir = tempfile::tempdir().unwrap();
    let plain = tiny(dir.path(), "plain.gguf", None);
    let smol = tiny(dir.path(), "smol.gguf", Some("smollm2.jinja"));
    let suite = dir.path().join("suite.jsonl");
    std::fs::write(
        &suite,
        concat!(
            r#"{"id": "a", "input": "Sensor 3 reads", "checks": [{"contains": "x"}]}"#,
            "\n",
            r#"{"id": "b", "input": "2+2", "template": "Q: {input}\nA:", "checks": [{"contains": "4"}]}"#,
            "\n",
        ),
    )
    .unwrap();
    let report = |model: &Path, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--model",
            s(model),
            "--suite",
            s(&suite),
            "--max-tokens",
            "4",
            "--json",
        ];
        args.extend_from_slice(extra);
        serde_json::from_slice::<serde_json::Value>(&ok(&args).stdout).unwrap()
    };
    let smol_file = template_fixture("smollm2.jinja");
    assert_eq!(
        report(&smol, &[]),
        report(&plain, &["--template-file", s(&smol_file)])
    );

    // The prompt ids: the rendered user turn, BOS first; a case with its own template keeps it.
    let file = GgufFile::open(&smol).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let format = PromptFormat::of_model(&file, &tok).unwrap();
    let suite = edgetune::eval::load_suite(&suite).unwrap();
    let ids = encode_case(&tok, &suite.cases[0], &format).unwrap();
    assert_eq!(
        tok.decode(&ids).unwrap(),
        "<|begin_of_text|><|im_start|>system\nYou are a helpful AI assistant named SmolLM, \
         trained by Hugging Face<|im_end|>\n<|im_start|>user\nSensor 3 reads<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    let own = encode_case(&tok, &suite.cases[1], &format).unwrap();
    assert_eq!(tok.decode(&own).unwrap(), "<|begin_of_text|>Q: 2+2\nA:");
}

/// A tokenizer-only GGUF: the byte vocabulary without Llama 3's header and end-of-turn tokens
/// (renamed), plus SmolLM2's control tokens `<|im_start|>` (BOS, 261) and `<|im_end|>` (EOS,
/// 262), no BOS added, and `template` as chat template.
fn smol_vocab(dir: &Path, template: &str) -> PathBuf {
    let mut kv =
        edgetune::testmodel::synthetic_vocab_metadata(edgetune::testmodel::BYTE_VOCAB).unwrap();
    for (k, v) in kv.iter_mut() {
        match (k.as_str(), v) {
            ("tokenizer.ggml.tokens", Value::Array(Array::String(t))) => {
                for (i, token) in t[258..261].iter_mut().enumerate() {
                    *token = format!("<|reserved_{i}|>");
                }
                t.extend(["<|im_start|>".to_owned(), "<|im_end|>".to_owned()])
            }
            ("tokenizer.ggml.token_type", Value::Array(Array::I32(t))) => t.extend([3, 3]),
            ("tokenizer.ggml.bos_token_id", v) => *v = Value::U32(261),
            ("tokenizer.ggml.eos_token_id", v) => *v = Value::U32(262),
            _ => {}
        }
    }
    kv.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)));
    kv.push((KEY_CHAT_TEMPLATE.into(), Value::String(template.into())));
    let path = dir.join("smol-vocab.gguf");
    let mut w = GgufWriter::new(32);
    w.add_kv("general.architecture", Value::String("llama".into()))
        .unwrap();
    for (k, v) in kv {
        w.add_kv(k, v).unwrap();
    }
    w.write_to_path(&path, |_, _, _| Ok(())).unwrap();
    path
}

#[test]
fn chat_data_trains_on_the_assistant_turns_of_smollm2s_template() {
    let dir = tempfile::tempdir().unwrap();
    let source = std::fs::read_to_string(template_fixture("smollm2.jinja")).unwrap();
    let gguf = smol_vocab(dir.path(), &source);
    let file = GgufFile::open(&gguf).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let (im_start, im_end) = (261u32, 262u32);
    let jsonl = dir.path().join("chat.jsonl");
    let messages = vec![
        Message::new("user", "Turn on fan 3 in zone B."),
        Message::new("assistant", "{\"fan\":3,\"zone\":\"B\",\"on\":true}"),
        Message::new("user", "Thanks! <|im_end|>"),
        Message::new("assistant", "You're welcome."),
    ];
    std::fs::write(
        &jsonl,
        format!("{}\n", serde_json::json!({ "messages": messages })),
    )
    .unwrap();
    let ds = data::load(&jsonl, None).unwrap();
    let chat = data::chat_template_for(&file, &tok, &ds).unwrap();
    let opts = TokenizeOptions {
        chat_template: chat.as_ref(),
        ..TokenizeOptions::default()
    };
    let t = &data::tokenize_all(&tok, &ds, &opts).unwrap()[0];

    // The ids are the whole rendering tokenized with control tokens parsed (the user's
    // "<|im_end|>" too, as Hugging Face does), without BOS (add_bos_token is false).
    let text = chat.as_ref().unwrap().render(&messages, false).unwrap();
    assert_eq!(t.ids, tok.encode(&text, false, true).unwrap());
    assert_eq!(t.ids[0], im_start);
    assert_eq!(t.ids.iter().filter(|&&i| i == im_start).count(), 5);
    assert_eq!(t.ids.iter().filter(|&&i| i == im_end).count(), 6);
    // Loss exactly on each assistant content, its <|im_end|> and the template's newline.
    assert_eq!(
        tok.decode(&t.target_ids()).unwrap(),
        "{\"fan\":3,\"zone\":\"B\",\"on\":true}<|im_end|>\nYou're welcome.<|im_end|>\n"
    );
    let trained: Vec<usize> = (0..t.ids.len())
        .filter(|&i| t.labels[i] != IGNORE)
        .collect();
    let turn = |content: &str| {
        let before = text.find(content).unwrap();
        let start = tok.encode(&text[..before], false, true).unwrap().len();
        let end = start + content.len() + 2; // bytes of the content, <|im_end|>, "\n"
        start..end
    };
    let want: Vec<usize> = turn(&messages[1].content)
        .chain(turn(&messages[3].content))
        .collect();
    assert_eq!(trained, want);
    for &i in &trained {
        assert_eq!(t.labels[i], t.ids[i] as i32);
    }

    // Everything after the first token with train_on_prompt.
    let all = data::tokenize(
        &tok,
        &ds.examples[0],
        &TokenizeOptions {
            train_on_prompt: true,
            ..opts
        },
    )
    .unwrap();
    assert_eq!(all.target_ids(), t.ids[1..].to_vec());
    // Without a template (and without Llama 3's tokens) the data still tokenizes, as ChatML.
    let fallback = data::tokenize(&tok, &ds.examples[0], &TokenizeOptions::default()).unwrap();
    let chatml = chat_template::ChatTemplate::fallback(&tok).unwrap();
    assert_eq!(
        fallback.ids,
        tok.encode(&chatml.render(&messages, false).unwrap(), false, true)
            .unwrap()
    );
}

#[test]
fn a_template_that_is_not_prefix_stable_is_an_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    // A marker in front once the conversation is long: fine for short ones only.
    let gguf = smol_vocab(
        dir.path(),
        "{% if messages | length > 3 %}[long]{% endif %}{% for m in messages %}<|im_start|>\
         {{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
    );
    let file = GgufFile::open(&gguf).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let jsonl = dir.path().join("chat.jsonl");
    std::fs::write(
        &jsonl,
        concat!(
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#,
            "\n",
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, "#,
            r#"{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}"#,
            "\n",
        ),
    )
    .unwrap();
    let ds = data::load(&jsonl, None).unwrap();
    let chat = data::chat_template_for(&file, &tok, &ds).unwrap();
    let opts = TokenizeOptions {
        chat_template: chat.as_ref(),
        ..TokenizeOptions::default()
    };
    let e = data::tokenize_all(&tok, &ds, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("{}:2: ", jsonl.display())) && e.contains("not prefix-stable"),
        "{e}"
    );
    // A slow good line, then many bad lines, tokenized in parallel: the first bad line is the
    // one named, every time, not the one some thread happened to reach first.
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let (good, bad) = (text.lines().next().unwrap(), text.lines().nth(1).unwrap());
    let many = dir.path().join("many.jsonl");
    let mut text = good.replace("\"b\"", &format!("\"{}\"", "word ".repeat(50_000)));
    text.push('\n');
    for line in std::iter::repeat_n(bad, 400) {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(&many, text).unwrap();
    let ds = data::load(&many, None).unwrap();
    for _ in 0..3 {
        let e = data::tokenize_all(&tok, &ds, &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("{}:2: ", many.display())), "{e}");
    }
}

#[test]
fn data_check_and_train_use_the_models_template_for_chat_data() {
    let dir = tempfile::tempdir().unwrap();
    let smol = tiny(dir.path(), "smol.gguf", Some("smollm2.jinja"));
    let data = dir.path().join("chat.jsonl");
    let record = serde_json::json!({ "messages": [
        Message::new("user", "Turn on fan 3."),
        Message::new("assistant", "OK."),
    ]});
    std::fs::write(&data, format!("{record}\n{record}\n")).unwrap();
    // Each record: the rendering (one byte token each, BOS first) — its length from the
    // template command.
    let messages = dir.path().join("m.json");
    std::fs::write(&messages, record["messages"].to_string()).unwrap();
    let args = ["template", "--model", s(&smol), "--messages", s(&messages)];
    let rendered = ok(&[&args[..], &["--no-generation-prompt"]].concat()).stdout;
    let check = ok(&["data", "check", s(&data), "--model", s(&smol)]).stdout;
    let check = String::from_utf8(check).unwrap();
    let per_record = 1 + rendered.len();
    assert!(
        check.contains(&format!("tokens: {} in all", 2 * per_record)),
        "{check}"
    );
    let out = dir.path().join("run");
    let train = |model: &Path| {
        edgetune(&[
            "train",
            "--model",
            s(model),
            "--data",
            s(&data),
            "--out",
            s(&out),
            "--steps",
            "1",
            "--seq-len",
            "256",
            "--rank",
            "2",
            "--json",
            // The second run (another model) starts over in the same directory.
            "--overwrite",
        ])
    };
    let o = train(&smol);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A model whose template cannot be split into turns: refused, naming the data line.
    let counting = dir.path().join("counting.jinja");
    std::fs::write(
        &counting,
        "{{ messages | length }}{% for m in messages %}{{ m.content }}{% endfor %}",
    )
    .unwrap();
    let bad = dir.path().join("bad.gguf");
    write_tiny(&bad, "q8_0", &["--chat-template", s(&counting)]);
    let o = train(&bad);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{}:1: ", data.display())) && err.contains("not prefix-stable"),
        "{err}"
    );
}
