//! The suite parser: good lines, and each kind of bad line reported with its file and line.

use std::path::Path;

use edgetune::eval::parse_suite;

fn err(text: &str) -> String {
    parse_suite(Path::new("my-suite.jsonl"), text)
        .unwrap_err()
        .to_string()
}

const GOOD: &str = r#"{"id": "ok", "input": "x", "checks": [{"contains": "y"}]}"#;

#[test]
fn good_suite_parses_with_lines() {
    let text = format!(
        "\n{GOOD}\n\n{}\n",
        r#"{"id": "t", "template": "Q: {input} A:", "input": "2+2", "checks": [{"equals": "4"}, {"regex": "^4$"}], "lang": "id"}"#
    );
    let s = parse_suite(Path::new("s.jsonl"), &text).unwrap();
    assert_eq!(s.cases.len(), 2);
    assert_eq!((s.cases[0].line, s.cases[1].line), (2, 4));
    assert_eq!(s.cases[1].templated().as_deref(), Some("Q: 2+2 A:"));
    assert_eq!(s.cases[1].lang.as_deref(), Some("id"));
}

#[test]
fn each_bad_line_is_named_with_file_line_and_problem() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"id": "a", "input": "x", "checks": [{"contains": "y"}"#,
            "not valid JSON",
        ),
        (
            r#"{"id": "a", "checks": [{"contains": "y"}]}"#,
            "missing `input`",
        ),
        (
            r#"{"input": "x", "checks": [{"contains": "y"}]}"#,
            "missing `id`",
        ),
        (r#"{"id": "a", "input": "x"}"#, "missing `checks`"),
        (
            r#"{"id": "a", "input": "x", "checks": []}"#,
            "`checks` is empty",
        ),
        (
            r#"{"id": "a", "input": "x", "checks": [{"startswith": "y"}]}"#,
            "startswith",
        ),
        (
            r#"{"id": "a", "input": "x", "checks": [{"regex": "(oops"}]}"#,
            "(oops",
        ),
        (
            r#"{"id": "a", "input": "x", "checks": [{"contains": 3}]}"#,
            "needs a string",
        ),
        (
            r#"{"id": "a", "input": "x", "checks": [{"contains": "y", "equals": "z"}]}"#,
            "exactly one key",
        ),
        (
            r#"{"id": "a", "template": "no slot", "input": "x", "checks": [{"contains": "y"}]}"#,
            "{input}",
        ),
        (
            r#"{"id": "a", "input": "x", "checks": [{"contains": "y"}], "expected": "y"}"#,
            "unknown field `expected`",
        ),
        (r#"["not", "an", "object"]"#, "JSON object"),
    ];
    for (line, want) in cases {
        let e = err(&format!("{GOOD}\n{line}\n"));
        assert!(e.contains("my-suite.jsonl:2:"), "{line}: {e}");
        assert!(e.contains(want), "{line}: expected {want:?} in {e}");
    }
}

#[test]
fn all_bad_lines_are_listed_and_ids_must_be_unique() {
    let text = format!("{GOOD}\nnope\n{GOOD}\n{{}}\n");
    let e = err(&text);
    assert!(e.contains("my-suite.jsonl:2:"), "{e}");
    assert!(
        e.contains("my-suite.jsonl:3: id \"ok\" repeats the case on line 1"),
        "{e}"
    );
    assert!(e.contains("my-suite.jsonl:4:"), "{e}");
    let e = err("\n\n");
    assert!(e.contains("no case"), "{e}");
}
