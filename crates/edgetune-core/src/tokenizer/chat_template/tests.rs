//! Unit tests of chat templates: SmolLM2's and Llama 3.1's real templates, the training spans,
//! errors (`raise_exception`, syntax, templates that are not prefix-stable) and the fallbacks.
//! The byte-for-byte comparison with jinja2 is in tests/tokenizer/chat_template_jinja2.rs.

use super::*;
use crate::tokenizer::template::llama3_chat;

const SMOLLM2: &str = include_str!("../../../../../tests/fixtures/templates/smollm2.jinja");
const LLAMA31: &str = include_str!("../../../../../tests/fixtures/templates/llama3_1.jinja");

fn smollm2() -> ChatTemplate {
    let specials = SpecialTexts {
        bos: "<|im_start|>".into(),
        eos: "<|im_end|>".into(),
    };
    ChatTemplate::new("smollm2.jinja", SMOLLM2, specials).unwrap()
}

fn llama3_specials() -> SpecialTexts {
    SpecialTexts {
        bos: "<|begin_of_text|>".into(),
        eos: "<|eot_id|>".into(),
    }
}

fn msgs(list: &[(&str, &str)]) -> Vec<Message> {
    list.iter().map(|(r, c)| Message::new(*r, *c)).collect()
}

const SMOL_SYSTEM: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, \
                           trained by Hugging Face<|im_end|>\n";

#[test]
fn smollm2_renders_chatml_with_its_default_system_prompt() {
    let t = smollm2();
    let m = msgs(&[("user", "Hi there")]);
    assert_eq!(
        t.render(&m, true).unwrap(),
        format!("{SMOL_SYSTEM}<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")
    );
    // A system message replaces the default one; contents are not trimmed.
    let m = msgs(&[("system", "Be brief."), ("user", " x\n")]);
    assert_eq!(
        t.render(&m, false).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n x\n<|im_end|>\n"
    );
    assert_eq!(t.render(&[], false).unwrap(), "");
}

#[test]
fn training_spans_on_smollm2_cover_assistant_turns_only() {
    let t = smollm2();
    let m = msgs(&[
        ("user", "Turn on fan 3."),
        ("assistant", "Done."),
        ("user", "Thanks!"),
        ("assistant", "You're welcome."),
    ]);
    let r = t.render_for_training(&m).unwrap();
    assert_eq!(r.text, t.render(&m, false).unwrap());
    let trained: Vec<&str> = r.parts().filter(|p| p.1).map(|p| p.0).collect();
    assert_eq!(
        trained,
        ["Done.<|im_end|>\n", "You're welcome.<|im_end|>\n"]
    );
    // The spans cover the text in order, without gaps.
    assert_eq!(r.parts().map(|p| p.0).collect::<String>(), r.text);
    assert_eq!(
        r.prompt(),
        format!("{SMOL_SYSTEM}<|im_start|>user\nTurn on fan 3.<|im_end|>\n<|im_start|>assistant\n")
    );
    // No assistant message: nothing is trained.
    let r = t.render_for_training(&m[..1]).unwrap();
    assert!(r.parts().all(|p| !p.1));
}

#[test]
fn the_llama3_fallback_is_llama31s_template_and_matches_llama3_chat() {
    let fixture = LLAMA31.split_once("#}\n").unwrap().1;
    assert_eq!(fixture.strip_suffix('\n').unwrap(), LLAMA3_TEMPLATE);
    let t = ChatTemplate::new("llama3", LLAMA3_TEMPLATE, llama3_specials()).unwrap();
    let conversations = [
        msgs(&[("user", "Hi")]),
        msgs(&[
            ("system", " Be brief.\n"),
            ("user", "  Hi there \n"),
            ("assistant", "Hello!"),
            ("user", "Bye"),
        ]),
        msgs(&[
            ("user", "a"),
            ("assistant", " b "),
            ("user", "c"),
            ("assistant", "d\n"),
        ]),
    ];
    for m in &conversations {
        for add_gen in [false, true] {
            assert_eq!(
                t.render(m, add_gen).unwrap(),
                llama3_chat(m, add_gen).text,
                "{m:?}"
            );
        }
        assert_eq!(
            t.render_for_training(m).unwrap(),
            llama3_chat(m, false),
            "{m:?}"
        );
    }
}

#[test]
fn raise_exception_is_an_error_with_the_templates_message() {
    let src = "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}\
               {{ raise_exception('Only user and assistant roles are supported!') }}\
               {% endif %}{{ m.content }}{% endfor %}";
    let t = ChatTemplate::new("strict.jinja", src, SpecialTexts::default()).unwrap();
    assert_eq!(t.render(&msgs(&[("user", "ok")]), false).unwrap(), "ok");
    let e = t
        .render(&msgs(&[("system", "x")]), false)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("strict.jinja: the template raised an exception")
            && e.ends_with(": Only user and assistant roles are supported!"),
        "{e}"
    );
}

#[test]
fn syntax_and_runtime_errors_name_the_template() {
    let e = ChatTemplate::new(
        "bad.jinja",
        "{% for m in messages %}",
        SpecialTexts::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("bad.jinja: not a usable chat template: "),
        "{e}"
    );
    // Attribute access on an undefined value fails, as in jinja2; printing one gives "".
    let t = ChatTemplate::new("u.jinja", "[{{ nothing }}]", SpecialTexts::default()).unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "[]");
    let t = ChatTemplate::new("u.jinja", "{{ nothing.field }}", SpecialTexts::default()).unwrap();
    let e = t.render(&[], false).unwrap_err().to_string();
    assert!(e.starts_with("u.jinja: ") && e.contains("undefined"), "{e}");
}

#[test]
fn a_template_that_rewrites_earlier_turns_is_refused_for_training() {
    // Prints the number of messages first: every prefix of the conversation renders
    // differently from the start of the whole.
    let src = "{{ messages | length }}:{% for m in messages %}[{{ m.role }}] {{ m.content }}\n\
               {% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}";
    let t = ChatTemplate::new("count.jinja", src, SpecialTexts::default()).unwrap();
    let m = msgs(&[("user", "a"), ("assistant", "b")]);
    assert_eq!(t.render(&m, false).unwrap(), "2:[user] a\n[assistant] b\n");
    let e = t.render_for_training(&m).unwrap_err().to_string();
    assert!(
        e.starts_with("count.jinja: the template is not prefix-stable") && e.contains("message 2"),
        "{e}"
    );
    // Without an assistant message nothing needs locating.
    assert!(t.render_for_training(&m[..1]).is_ok());
}

#[test]
fn loop_controls_tojson_and_python_methods() {
    let src = "{% for m in messages %}{% if m.role == 'skip' %}{% continue %}{% endif %}\
               {% if m.content.startswith('STOP') %}{% break %}{% endif %}\
               {{ m | tojson }};{{ m.content.strip().split() | join('+') }};\
               {{ m.content | trim | length }}\n{% endfor %}{{ strftime_now('%Y') | length }}";
    let t = ChatTemplate::new("f.jinja", src, SpecialTexts::default()).unwrap();
    let m = msgs(&[
        ("user", " a b\u{1c}c "),
        ("skip", "x"),
        ("assistant", "<é>"),
        ("user", "STOP"),
        ("user", "never"),
    ]);
    assert_eq!(
        t.render(&m, false).unwrap(),
        "{\"role\": \"user\", \"content\": \" a b\\u001cc \"};a+b+c;5\n\
         {\"role\": \"assistant\", \"content\": \"<é>\"};<é>;3\n4"
    );
}

#[test]
fn compiled_templates_are_shared_across_threads() {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<ChatTemplate>();
    let t = Arc::new(smollm2());
    let m = msgs(&[("user", "hi")]);
    let want = t.render(&m, true).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (t, m) = (Arc::clone(&t), m.clone());
            std::thread::spawn(move || t.render(&m, true).unwrap())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), want);
    }
}

#[test]
fn hostile_tojson_arguments_are_errors_not_aborts() {
    let render = |src: &str| {
        ChatTemplate::new("t.jinja", src, SpecialTexts::default())
            .unwrap()
            .render(&[], false)
    };
    assert_eq!(
        render("{{ [1, [2]] | tojson(indent=1) }}").unwrap(),
        "[\n 1,\n [\n  2\n ]\n]"
    );
    let e = render("{{ [1] | tojson(indent=1000000000000) }}").unwrap_err();
    assert!(e.to_string().contains("indent"), "{e}");
    let deep = "{% set ns = namespace(x=[]) %}{% for i in range(2000) %}{% set ns.x = [ns.x] %}\
                {% endfor %}{{ ns.x | tojson }}";
    let e = render(deep).unwrap_err();
    assert!(e.to_string().contains("nested more than"), "{e}");
}
