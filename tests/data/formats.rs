//! Dataset reading: every format from small files written here, detection and `--format`,
//! and every kind of bad record reported with its file and line.

use std::path::PathBuf;

use edgetune::data::{self, Content, Format};
use edgetune::tokenizer::template::Message;

/// Writes `text` to `name` in a fresh temporary directory (kept alive by the returned guard).
fn file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// The error message of loading `text` as file `name`.
fn load_err(name: &str, text: &str, format: Option<Format>) -> (String, PathBuf) {
    let (_dir, path) = file(name, text);
    let e = data::load(&path, format).expect_err("should be refused");
    (e.to_string(), path)
}

/// Asserts that the error names `path:line` and contains `what`.
fn assert_err(name: &str, text: &str, line: usize, what: &str) {
    let (msg, path) = load_err(name, text, None);
    let at = format!("{}:{line}: ", path.display());
    assert!(msg.contains(&at), "expected `{at}` in: {msg}");
    assert!(msg.contains(what), "expected `{what}` in: {msg}");
}

#[test]
fn alpaca_jsonl() {
    let text = "{\"instruction\": \"Say hi.\", \"input\": \"\", \"output\": \"Hi!\"}\n\
                \n\
                {\"instruction\": \"Add.\", \"input\": \"2 + 3\", \"output\": \"5\", \"task\": \"math\", \"id\": 7}\n\
                {\"instruction\": \"No input field.\", \"output\": \"ok\", \"input\": null}\n";
    let (_dir, path) = file("a.jsonl", text);
    let ds = data::load(&path, None).unwrap();
    assert_eq!(ds.format, Format::Alpaca);
    assert_eq!(ds.len(), 3);
    assert_eq!(
        ds.examples.iter().map(|e| e.line).collect::<Vec<_>>(),
        vec![1, 3, 4]
    );
    assert_eq!(
        ds.examples[1].content,
        Content::Alpaca {
            instruction: "Add.".into(),
            input: "2 + 3".into(),
            output: "5".into()
        }
    );
    assert_eq!(ds.examples[1].task.as_deref(), Some("math"));
    assert_eq!(ds.examples[0].task, None);
    match &ds.examples[2].content {
        Content::Alpaca { input, .. } => assert_eq!(input, ""),
        other => panic!("{other:?}"),
    }
}

#[test]
fn alpaca_json_array_with_element_lines() {
    let text = "[\n  {\"instruction\": \"one\", \"output\": \"1\"},\n  {\n    \"instruction\": \"two, [with] \\\"brackets\\\"\",\n    \"output\": \"2\"\n  }\n]\n";
    let (_dir, path) = file("a.json", text);
    let ds = data::load(&path, None).unwrap();
    assert_eq!(ds.format, Format::Alpaca);
    assert_eq!(ds.examples.len(), 2);
    assert_eq!(ds.examples[0].line, 2);
    assert_eq!(ds.examples[1].line, 3);
    // A bad element is reported at the line it starts on.
    let bad = "[\n {\"instruction\": \"a\", \"output\": \"b\"},\n\n {\"instruction\": \"c\",\n  \"output\": \"\"}\n]";
    assert_err("b.json", bad, 4, "`output` is empty");
    // Broken JSON in an array file: the line serde_json stopped at.
    assert_err(
        "c.json",
        "[\n{\"instruction\": \"a\", \"output\": \"b\"},\n{\"instruction\": }\n]",
        3,
        "invalid JSON",
    );
}

#[test]
fn chat_jsonl() {
    let text = r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "task": "math"}"#;
    let (_dir, path) = file("c.jsonl", text);
    let ds = data::load(&path, None).unwrap();
    assert_eq!(ds.format, Format::Chat);
    assert_eq!(
        ds.examples[0].content,
        Content::Chat {
            messages: vec![
                Message::new("system", "Be brief."),
                Message::new("user", "Hi"),
                Message::new("assistant", "Hello!")
            ]
        }
    );
    assert_eq!(ds.examples[1].task.as_deref(), Some("math"));
}

#[test]
fn text_jsonl_and_txt() {
    let (_d1, p1) = file(
        "t.jsonl",
        "{\"text\": \"first doc\"}\n{\"text\": \"second\\ndoc\"}\n",
    );
    let ds = data::load(&p1, None).unwrap();
    assert_eq!(ds.format, Format::Text);
    assert_eq!(
        ds.examples[1].content,
        Content::Text {
            text: "second\ndoc".into()
        }
    );

    let (_d2, p2) = file("t.txt", "\nPara one,\nline two.\n\n\nPara two.\n");
    let ds = data::load(&p2, None).unwrap();
    assert_eq!(ds.format, Format::Text);
    let got: Vec<(String, usize)> = ds
        .examples
        .iter()
        .map(|e| match &e.content {
            Content::Text { text } => (text.clone(), e.line),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("Para one,\nline two.".to_string(), 2),
            ("Para two.".to_string(), 6)
        ]
    );
    // A .txt file is text whatever is asked, and an empty one holds nothing.
    let (msg, _) = load_err("t.txt", "hello", Some(Format::Alpaca));
    assert!(msg.contains("plain text"), "{msg}");
    let (msg, _) = load_err("e.txt", "\n\n  \n", None);
    assert!(msg.contains("no records"), "{msg}");
}

#[test]
fn pretokenized_jsonl() {
    let text =
        "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [4, 5, 6], \"labels\": [-100, 5, -100]}\n";
    let (_dir, path) = file("p.jsonl", text);
    let ds = data::load(&path, None).unwrap();
    assert_eq!(ds.format, Format::PreTokenized);
    assert_eq!(
        ds.examples[0].content,
        Content::PreTokenized {
            input_ids: vec![1, 2, 3],
            labels: None
        }
    );
    assert_eq!(
        ds.examples[1].content,
        Content::PreTokenized {
            input_ids: vec![4, 5, 6],
            labels: Some(vec![-100, 5, -100])
        }
    );
}

#[test]
fn detection_and_override() {
    // `messages` wins over other fields; `input_ids` over `text`.
    let (_d, p) = file(
        "m.jsonl",
        "{\"messages\": [{\"role\": \"assistant\", \"content\": \"x\"}], \"text\": \"y\"}\n",
    );
    assert_eq!(data::load(&p, None).unwrap().format, Format::Chat);
    let (_d, p) = file("i.jsonl", "{\"input_ids\": [1, 2], \"text\": \"y\"}\n");
    assert_eq!(data::load(&p, None).unwrap().format, Format::PreTokenized);
    // --format text reads the `text` field of records that also look like something else.
    assert_eq!(
        data::load(&p, Some(Format::Text)).unwrap().examples[0].content,
        Content::Text { text: "y".into() }
    );
    // Asking for Alpaca on a text file names the record's shape.
    let (_d, p) = file("t.jsonl", "{\"text\": \"y\"}\n");
    let msg = data::load(&p, Some(Format::Alpaca))
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&format!("{}:1: ", p.display())), "{msg}");
    assert!(
        msg.contains("a text record") && msg.contains("as given"),
        "{msg}"
    );
    // Nothing to detect from.
    assert_err(
        "u.jsonl",
        "{\"prompt\": \"a\", \"completion\": \"b\"}\n",
        1,
        "cannot tell",
    );
    assert_eq!("Chat".parse::<Format>().unwrap(), Format::Chat);
    assert_eq!(
        "pretokenized".parse::<Format>().unwrap(),
        Format::PreTokenized
    );
    assert!("csv".parse::<Format>().is_err());
}

#[test]
fn every_bad_record_names_file_and_line() {
    let ok = "{\"instruction\": \"a\", \"output\": \"b\"}\n";
    let cases: Vec<(String, usize, &str)> = vec![
        (
            format!("{ok}{ok}{{\"instruction\": \"a\", \"output\": }}\n"),
            3,
            "invalid JSON",
        ),
        (
            format!("{ok}{{\"instruction\": \"a\"}}\n"),
            2,
            "missing field `output`",
        ),
        (
            format!("{ok}\n{{\"instruction\": 5, \"output\": \"b\"}}\n"),
            3,
            "`instruction` must be a string",
        ),
        (
            format!("{ok}{{\"instruction\": \"a\", \"output\": \"  \"}}\n"),
            2,
            "`output` is empty",
        ),
        (
            format!("{ok}{{\"instruction\": \"a\", \"output\": \"b\", \"task\": 3}}\n"),
            2,
            "`task` must be a string",
        ),
        (format!("{ok}[1, 2]\n"), 2, "expected a JSON object"),
        (
            format!("{ok}{{\"messages\": [{{\"role\": \"user\", \"content\": \"x\"}}]}}\n"),
            2,
            "a chat record",
        ),
    ];
    for (text, line, what) in &cases {
        assert_err("bad.jsonl", text, *line, what);
    }

    let chat_ok = "{\"messages\": [{\"role\": \"assistant\", \"content\": \"x\"}]}\n";
    let chat_cases: Vec<(String, usize, &str)> = vec![
        (
            format!("{chat_ok}{{\"messages\": [{{\"role\": \"user\"}}]}}\n"),
            2,
            "messages[0]: missing field `content`",
        ),
        (
            format!("{chat_ok}{{\"messages\": [{{\"role\": \"user\", \"content\": \"x\"}}]}}\n"),
            2,
            "no non-empty `assistant`",
        ),
        (
            format!("{chat_ok}{{\"messages\": \"hi\"}}\n"),
            2,
            "`messages` must be an array",
        ),
        (
            format!("{chat_ok}{{\"messages\": []}}\n"),
            2,
            "`messages` is empty",
        ),
        (
            format!("{chat_ok}{{\"messages\": [\"hi\"]}}\n"),
            2,
            "messages[0]: expected an object",
        ),
    ];
    for (text, line, what) in &chat_cases {
        assert_err("chat.jsonl", text, *line, what);
    }

    let tok_ok = "{\"input_ids\": [1, 2]}\n";
    let tok_cases: Vec<(String, usize, &str)> = vec![
        (
            format!("{tok_ok}{{\"input_ids\": [1, 2], \"labels\": [2]}}\n"),
            2,
            "`labels` has 1 entries but `input_ids` has 2",
        ),
        (
            format!("{tok_ok}{{\"input_ids\": [1, -2]}}\n"),
            2,
            "input_ids[1]",
        ),
        (
            format!("{tok_ok}{{\"input_ids\": [1.5, 2]}}\n"),
            2,
            "non-negative integer",
        ),
        (
            format!("{tok_ok}{{\"input_ids\": [1, 4294967296]}}\n"),
            2,
            "input_ids[1]",
        ),
        (
            format!("{tok_ok}{{\"input_ids\": [1, 2], \"labels\": [-100, -5]}}\n"),
            2,
            "labels[1]",
        ),
        (
            format!("{tok_ok}{{\"input_ids\": []}}\n"),
            2,
            "`input_ids` is empty",
        ),
        (
            format!("{tok_ok}{{\"input_ids\": \"1 2\"}}\n"),
            2,
            "`input_ids` must be an array",
        ),
        (format!("{tok_ok}{{\"text\": \"x\"}}\n"), 2, "a text record"),
    ];
    for (text, line, what) in &tok_cases {
        assert_err("tok.jsonl", text, *line, what);
    }

    assert_err(
        "t.jsonl",
        "{\"text\": \"a\"}\n{\"text\": \"\"}\n",
        2,
        "`text` is empty",
    );
}

#[test]
fn all_bad_records_are_listed() {
    let mut text = String::new();
    for i in 1..=30 {
        if i % 2 == 0 {
            text += "{\"instruction\": \"a\"}\n";
        } else {
            text += "{\"instruction\": \"a\", \"output\": \"b\"}\n";
        }
    }
    let (msg, path) = load_err("many.jsonl", &text, None);
    assert!(msg.contains("15 bad records"), "{msg}");
    for line in (2..=30).step_by(2).take(data::formats::MAX_REPORTED) {
        assert!(
            msg.contains(&format!("{}:{line}: missing field", path.display())),
            "{msg}"
        );
    }
    assert!(!msg.contains(&format!("{}:1:", path.display())), "{msg}");
}

#[test]
fn unreadable_and_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.jsonl");
    let msg = data::load(&missing, None).unwrap_err().to_string();
    assert!(msg.contains("nope.jsonl"), "{msg}");
    let (msg, _) = load_err("empty.jsonl", "\n \n", None);
    assert!(msg.contains("no records"), "{msg}");
    let (msg, _) = load_err("empty.json", "[]", None);
    assert!(msg.contains("no records"), "{msg}");
}

/// A dataset's size is planned before it is read: a directory, a device (`/dev/zero` would be
/// read without end) and a FIFO are refused by name, before any byte is read.
#[test]
fn only_regular_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let msg = data::load(dir.path(), None).unwrap_err().to_string();
    assert!(msg.contains("is a directory"), "{msg}");
    #[cfg(unix)]
    {
        let msg = data::load("/dev/zero", None).unwrap_err().to_string();
        assert!(msg.starts_with("/dev/zero: not a regular file"), "{msg}");
        let fifo = dir.path().join("pipe.jsonl");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // Opening a FIFO for reading would block until a writer comes: the check comes first.
        let msg = data::load(&fifo, None).unwrap_err().to_string();
        assert!(msg.contains("pipe.jsonl: not a regular file"), "{msg}");
    }
}
