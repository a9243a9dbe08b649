//! Eval suites: JSONL files, one case per line (blank lines and lines starting with `//` are
//! skipped):
//!
//! ```json
//! {"id": "fib-en", "template": "Continue: {input}", "input": "1, 1, 2, 3, 5, 8, 13,",
//!  "checks": [{"contains": "21"}], "lang": "en"}
//! ```
//!
//! - `id`: a string (or a number), unique in the file;
//! - `input`: the text put into the template;
//! - `template` (optional): the prompt, with `{input}` where the input goes; without it the
//!   model's chat template wraps the input if it has one, else the input is the prompt;
//! - `checks`: a non-empty list of one-key objects, see [`super::checks`];
//! - `lang` (optional): a language tag (`en`, `id`, …) reports are grouped by.
//!
//! Every bad line is reported (file:line: what), not only the first.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::checks::Check;
use crate::{Error, Result};

/// How many bad lines one error lists.
const MAX_REPORTED: usize = 20;

/// One case of a suite.
#[derive(Clone, Debug)]
pub struct Case {
    pub id: String,
    /// Contains `{input}` when given.
    pub template: Option<String>,
    pub input: String,
    pub checks: Vec<Check>,
    pub lang: Option<String>,
    /// 1-based line in the suite file.
    pub line: usize,
}

impl Case {
    /// The prompt text: the template with the input put in, or `None` when the case has no
    /// template (the caller then applies the model's chat template, or none).
    pub fn templated(&self) -> Option<String> {
        self.template
            .as_ref()
            .map(|t| t.replace("{input}", &self.input))
    }
}

/// A parsed suite.
#[derive(Clone, Debug)]
pub struct Suite {
    pub path: PathBuf,
    pub cases: Vec<Case>,
}

/// Reads and checks the suite at `path`.
pub fn load_suite(path: &Path) -> Result<Suite> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_suite(path, &text)
}

/// Parses suite text; `path` names the file in messages. Fails listing every bad line
/// (`file:line: what`), or when the file holds no case.
pub fn parse_suite(path: &Path, text: &str) -> Result<Suite> {
    let mut cases: Vec<Case> = Vec::new();
    let mut problems = Vec::new();
    let mut first_bad_line = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with("//") {
            continue;
        }
        match parse_case(trimmed, line) {
            Ok(case) => {
                if let Some(first) = cases.iter().find(|c| c.id == case.id) {
                    first_bad_line.get_or_insert(line);
                    problems.push(format!(
                        "{}:{line}: id {:?} repeats the case on line {}",
                        path.display(),
                        case.id,
                        first.line
                    ));
                } else {
                    cases.push(case);
                }
            }
            Err(what) => {
                first_bad_line.get_or_insert(line);
                problems.push(format!("{}:{line}: {what}", path.display()))
            }
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        let mut msg = problems
            .into_iter()
            .take(MAX_REPORTED)
            .collect::<Vec<_>>()
            .join("\n");
        if n > MAX_REPORTED {
            msg.push_str(&format!("\n… {n} bad lines in all"));
        }
        return Err(Error::bad_input(path, first_bad_line, msg));
    }
    if cases.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: the suite holds no case",
            path.display()
        )));
    }
    Ok(Suite {
        path: path.to_path_buf(),
        cases,
    })
}

/// One line → a case, or what is wrong with it.
fn parse_case(text: &str, line: usize) -> std::result::Result<Case, String> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| format!("not valid JSON (column {}): {e}", e.column()))?;
    let Value::Object(obj) = value else {
        return Err("a case must be a JSON object".into());
    };
    for key in obj.keys() {
        if !["id", "template", "input", "checks", "lang"].contains(&key.as_str()) {
            return Err(format!(
                "unknown field `{key}` (known: id, template, input, checks, lang)"
            ));
        }
    }
    let id = match obj.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err("`id` must be a non-empty string or a number".into()),
        None => return Err("missing `id`".into()),
    };
    let input = string_field(&obj, "input")?.ok_or("missing `input`")?;
    let template = string_field(&obj, "template")?;
    if let Some(t) = &template
        && !t.contains("{input}")
    {
        return Err(format!("`template` {t:?} has no `{{input}}`"));
    }
    let lang = string_field(&obj, "lang")?;
    let checks = match obj.get("checks") {
        Some(Value::Array(list)) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(k, c)| parse_check(c).map_err(|e| format!("checks[{k}]: {e}")))
            .collect::<std::result::Result<Vec<_>, _>>()?,
        Some(Value::Array(_)) => return Err("`checks` is empty".into()),
        Some(_) => return Err("`checks` must be a list".into()),
        None => return Err("missing `checks`".into()),
    };
    Ok(Case {
        id,
        template,
        input,
        checks,
        lang,
        line,
    })
}

fn string_field(
    obj: &Map<String, Value>,
    key: &str,
) -> std::result::Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("`{key}` must be a string, got {other}")),
    }
}

/// `{"contains": "21"}` → a check.
fn parse_check(value: &Value) -> std::result::Result<Check, String> {
    let Value::Object(obj) = value else {
        return Err(format!(
            "a check is an object like {{\"contains\": \"…\"}}, got {value}"
        ));
    };
    if obj.len() != 1 {
        return Err(format!(
            "a check has exactly one key (contains, not_contains, equals, regex), got {}",
            obj.len()
        ));
    }
    let (kind, v) = obj.iter().next().ok_or("empty check")?;
    let Value::String(v) = v else {
        return Err(format!("`{kind}` needs a string, got {v}"));
    };
    Check::new(kind, v).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cases_and_fills_templates() {
        let text = r#"
{"id": "a", "template": "Q: {input}\nA:", "input": "2+2", "checks": [{"contains": "4"}], "lang": "en"}
// a comment
{"id": 7, "input": "x", "checks": [{"regex": "^x"}, {"not_contains": "y"}]}
"#;
        let s = parse_suite(Path::new("s.jsonl"), text).unwrap();
        assert_eq!(s.cases.len(), 2);
        assert_eq!(s.cases[0].templated().unwrap(), "Q: 2+2\nA:");
        assert_eq!(s.cases[0].line, 2);
        assert_eq!(s.cases[1].id, "7");
        assert_eq!(s.cases[1].line, 4);
        assert!(s.cases[1].templated().is_none());
        assert_eq!(s.cases[1].checks.len(), 2);
    }
}
