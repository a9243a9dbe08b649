//! Chat templates rendered by edgetune against Python jinja2 set up as Hugging Face
//! transformers sets it up (tests/python/render_template.py): SmolLM2's and Llama 3.1's real
//! templates, a template written to exercise more of Jinja (tests/fixtures/templates/), and the
//! two built-in fallbacks, over many conversations with and without the generation prompt,
//! must render byte for byte alike, through the library and through `edgetune template`.
//! Needs the venv made by `scripts/setup-python.sh` (or `EDGETUNE_PYTHON` pointing at a Python
//! with jinja2).

use std::path::Path;

use edgetune::tokenizer::chat_template::{
    CHATML_TEMPLATE, ChatTemplate, LLAMA3_TEMPLATE, SpecialTexts,
};
use edgetune::tokenizer::template::Message;

use crate::cli_support::{edgetune, s, stderr, write_tiny};
use crate::python_support::run_script;
use crate::template_fixture;

/// What this module needs from the reference Python.
const NEEDS_PY: &str = "jinja2 is";

/// One rendering to compare.
struct Job {
    template: String,
    specials: SpecialTexts,
    messages: Vec<Message>,
    add_generation_prompt: bool,
}

/// Python's result per job: `Ok(text)` or `Err(error message)`.
fn render_with_jinja2(jobs: &[Job]) -> Vec<Result<String, String>> {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("jobs.json"), dir.path().join("out.json"));
    // Serialized from structs, so each message's keys keep the order Python dicts have in
    // transformers (role, then content), which `tojson` shows.
    #[derive(serde::Serialize)]
    struct PyJob<'a> {
        template: &'a str,
        bos_token: &'a str,
        eos_token: &'a str,
        messages: &'a [Message],
        add_generation_prompt: bool,
    }
    let list: Vec<PyJob> = jobs
        .iter()
        .map(|j| PyJob {
            template: &j.template,
            bos_token: &j.specials.bos,
            eos_token: &j.specials.eos,
            messages: &j.messages,
            add_generation_prompt: j.add_generation_prompt,
        })
        .collect();
    std::fs::write(&input, serde_json::to_string(&list).unwrap()).unwrap();
    run_script(NEEDS_PY, "render_template.py", &[&input, &output]);
    let results: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();
    assert_eq!(results.len(), jobs.len());
    results
        .into_iter()
        .map(|r| match (r["text"].as_str(), r["error"].as_str()) {
            (Some(t), _) => Ok(t.to_owned()),
            (None, Some(e)) => Err(e.to_owned()),
            _ => panic!("unexpected result {r}"),
        })
        .collect()
}

const CONTENTS: &[&str] = &[
    "Hi",
    "  Hello there, how are you?  ",
    "line one\nline two\n",
    "\n\n  indented\n\tand tabbed\r\nCRLF end\n\n",
    "Unicode: héllo wörld, 世界, 🦙, Suhu di zona B 31,5 °C",
    "",
    "{{ not a template }} {% if %} <|im_end|> <|eot_id|> {# nor a comment #}",
    "quotes ' and \" and a backslash \\n \\ end!",
    "\u{1c}separators\u{1f} nbsp\u{a0}ideographic\u{3000} ",
    "A longer answer that goes on for a while, with punctuation; numbers 1, 2.5, 1e3 — done!",
    "   ",
    "STOP here, the features template stops looping",
];

const SHAPES: &[&[&str]] = &[
    &["user"],
    &["system", "user"],
    &["user", "assistant"],
    &["system", "user", "assistant"],
    &["user", "assistant", "user"],
    &["system", "user", "assistant", "user", "assistant"],
    &[
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
    ],
    &["assistant"],
    &["system"],
    &["user", "tool", "assistant"],
    &["user", "assistant", "other"],
];

/// Conversations of every shape, with the contents rotated through `CONTENTS`, plus the empty
/// one.
fn conversations() -> Vec<Vec<Message>> {
    let mut out = vec![Vec::new()];
    for shape in SHAPES {
        for offset in 0..6 {
            out.push(
                shape
                    .iter()
                    .enumerate()
                    .map(|(i, role)| {
                        let c = CONTENTS[(offset * 5 + i * 7 + shape.len()) % CONTENTS.len()];
                        Message::new(*role, c)
                    })
                    .collect(),
            );
        }
    }
    out
}

fn templates() -> Vec<(String, String, SpecialTexts)> {
    let specials = |bos: &str, eos: &str| SpecialTexts {
        bos: bos.into(),
        eos: eos.into(),
    };
    let read = |name: &str| std::fs::read_to_string(template_fixture(name)).unwrap();
    vec![
        (
            "smollm2.jinja".into(),
            read("smollm2.jinja"),
            specials("<|im_start|>", "<|im_end|>"),
        ),
        (
            "llama3_1.jinja".into(),
            read("llama3_1.jinja"),
            specials("<|begin_of_text|>", "<|eot_id|>"),
        ),
        (
            "features.jinja".into(),
            read("features.jinja"),
            specials("<s>", "</s>"),
        ),
        (
            "LLAMA3_TEMPLATE".into(),
            LLAMA3_TEMPLATE.into(),
            specials("<|begin_of_text|>", "<|end_of_text|>"),
        ),
        (
            "CHATML_TEMPLATE".into(),
            CHATML_TEMPLATE.into(),
            specials("", ""),
        ),
    ]
}

#[test]
fn the_library_renders_like_jinja2() {
    let mut jobs = Vec::new();
    let mut names = Vec::new();
    for (name, source, specials) in templates() {
        for messages in conversations() {
            for add_generation_prompt in [false, true] {
                names.push(name.clone());
                jobs.push(Job {
                    template: source.clone(),
                    specials: specials.clone(),
                    messages: messages.clone(),
                    add_generation_prompt,
                });
            }
        }
    }
    let theirs = render_with_jinja2(&jobs);
    let (mut texts, mut errors) = (0, 0);
    for ((job, name), theirs) in jobs.iter().zip(&names).zip(theirs) {
        let t =
            ChatTemplate::new(name.as_str(), job.template.as_str(), job.specials.clone()).unwrap();
        let ours = t.render(&job.messages, job.add_generation_prompt);
        let what = format!(
            "{name}, add_generation_prompt {}, messages {:?}",
            job.add_generation_prompt, job.messages
        );
        match (ours, theirs) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b, "{what}");
                texts += 1;
            }
            (Err(a), Err(b)) => {
                // The only failure the templates provoke is raise_exception, whose message
                // both must carry.
                let a = a.to_string();
                let msg = b.strip_prefix("TemplateError: ").unwrap_or(&b);
                assert!(a.contains(msg), "{what}: ours {a:?}, jinja2 {b:?}");
                errors += 1;
            }
            (a, b) => panic!("{what}: ours {a:?}, jinja2 {b:?}"),
        }
    }
    eprintln!(
        "{} renderings compared ({} conversations x 2 x {} templates): {texts} texts and {errors} \
         errors alike",
        jobs.len(),
        conversations().len(),
        templates().len()
    );
    assert!(errors > 0 && errors < jobs.len() / 10, "{errors} errors");
}

#[test]
fn the_template_command_prints_exactly_what_jinja2_renders() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    let smol_model = dir.path().join("smol.gguf");
    write_tiny(&model, "q8_0", &[]);
    let smol = template_fixture("smollm2.jinja");
    write_tiny(&smol_model, "q8_0", &["--chat-template", s(&smol)]);
    // The test model's BOS and EOS (the byte vocabulary's Llama 3 specials).
    let specials = SpecialTexts {
        bos: "<|begin_of_text|>".into(),
        eos: "<|end_of_text|>".into(),
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    let llama = template_fixture("llama3_1.jinja");
    // (model, --template-file, the source the output must match)
    let setups: [(&Path, Option<&Path>, String); 4] = [
        (&model, None, LLAMA3_TEMPLATE.to_owned()),
        (&smol_model, None, read(&smol)),
        (&model, Some(&smol), read(&smol)),
        (&smol_model, Some(&llama), read(&llama)),
    ];
    let convs: Vec<Vec<Message>> = conversations().into_iter().step_by(9).collect();
    let mut jobs = Vec::new();
    let mut runs = Vec::new();
    for (i, messages) in convs.iter().enumerate() {
        let file = dir.path().join(format!("messages-{i}.json"));
        std::fs::write(&file, serde_json::to_string(messages).unwrap()).unwrap();
        for (model, template_file, source) in &setups {
            for add_generation_prompt in [false, true] {
                let mut args = vec![
                    "template".to_owned(),
                    "--model".into(),
                    model.to_str().unwrap().into(),
                    "--messages".into(),
                    file.to_str().unwrap().into(),
                ];
                if let Some(t) = template_file {
                    args.extend(["--template-file".into(), t.to_str().unwrap().into()]);
                }
                if !add_generation_prompt {
                    args.push("--no-generation-prompt".into());
                }
                runs.push(args);
                jobs.push(Job {
                    template: source.clone(),
                    specials: specials.clone(),
                    messages: messages.clone(),
                    add_generation_prompt,
                });
            }
        }
    }
    let theirs = render_with_jinja2(&jobs);
    let mut compared = 0;
    for (args, theirs) in runs.iter().zip(theirs) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = edgetune(&args);
        match theirs {
            Ok(text) => {
                assert!(out.status.success(), "{args:?}: {}", stderr(&out));
                assert_eq!(String::from_utf8(out.stdout).unwrap(), text, "{args:?}");
                compared += 1;
            }
            Err(e) => assert!(!out.status.success(), "{args:?}: jinja2 failed with {e}"),
        }
    }
    assert!(compared >= runs.len() / 2, "{compared} of {}", runs.len());
}

#[test]
fn the_template_command_names_the_file_and_position_of_bad_json() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    write_tiny(&model, "q8_0", &[]);
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        "[{\"role\": \"user\", \"content\": \"hi\"},\n {\"role\": 3}]",
    )
    .unwrap();
    let messages =
        |file: &Path| edgetune(&["template", "--model", s(&model), "--messages", s(file)]);
    let out = messages(&bad);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("{}:2:", bad.display())), "{err}");
    assert!(out.stdout.is_empty());
    let missing = dir.path().join("missing.json");
    let out = messages(&missing);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&missing.display().to_string()), "{err}");
}
