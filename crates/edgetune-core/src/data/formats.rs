//! Reading dataset files: JSON arrays, JSONL and `.txt`; detecting the format from the first
//! record's fields; checking every record, so that a bad one stops the run before training
//! with its file and line.
//!
//! All bad records of a file are collected (not only the first); the error lists the first
//! [`MAX_REPORTED`] of them, one `file:line: what` per line, and the total.

use std::path::Path;

use serde_json::{Map, Value};

use super::{Dataset, Example, Format, locate};
use crate::Error;
use crate::tokenizer::template::Message;

/// How many bad records one error message lists.
pub const MAX_REPORTED: usize = 20;

/// What a record holds, by format.
#[derive(Clone, Debug, PartialEq)]
pub enum Content {
    /// `input` is empty when the record has none.
    Alpaca {
        instruction: String,
        input: String,
        output: String,
    },
    Chat {
        messages: Vec<Message>,
    },
    Text {
        text: String,
    },
    /// `labels`, when given, has the length of `input_ids`; -100 means no loss.
    PreTokenized {
        input_ids: Vec<u32>,
        labels: Option<Vec<i32>>,
    },
}

impl Content {
    pub fn format(&self) -> Format {
        match self {
            Content::Alpaca { .. } => Format::Alpaca,
            Content::Chat { .. } => Format::Chat,
            Content::Text { .. } => Format::Text,
            Content::PreTokenized { .. } => Format::PreTokenized,
        }
    }
}

/// Reads the dataset at `path`; `format` overrides detection. Fails, naming file and line, if
/// the file cannot be read, holds no record, or any record is malformed.
pub fn load(path: impl AsRef<Path>, format: Option<Format>) -> crate::Result<Dataset> {
    let path = path.as_ref();
    let bytes = read_dataset_bytes(path)?;
    let text =
        String::from_utf8(bytes).map_err(|e| not_utf8(path, e.as_bytes(), e.utf8_error()))?;
    parse_str(path, &text, format)
}

/// Reads a dataset file whole. Its size goes into the memory plan before it is read
/// (`train/budget/overheads.rs`), so only a regular file is read, and no more than the size it had
/// then: a directory, a device such as `/dev/zero`, a pipe, or a file that grows while it is read
/// (any of which could fill memory without bound) is an error naming the file.
pub fn read_dataset_bytes(path: &Path) -> crate::Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: is a directory, not a dataset (give a .jsonl, .json or .txt file)",
            path.display()
        )));
    }
    if !meta.is_file() {
        return Err(Error::Invalid(format!(
            "{}: not a regular file (a device, pipe or socket): a dataset's size goes into the \
             memory plan before it is read, so it must be a regular file (copy it into one)",
            path.display()
        )));
    }
    let len = meta.len();
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(usize::try_from(len).unwrap_or(usize::MAX))
        .map_err(|e| {
            Error::Invalid(format!(
                "{}: cannot hold its {len} bytes in memory: {e}",
                path.display()
            ))
        })?;
    file.take(len.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > len {
        return Err(Error::Invalid(format!(
            "{}: grew while it was read (it had {len} bytes when the memory plan counted it); \
             a dataset must not change during a run",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The error for a dataset that is not UTF-8: the line, the column (in bytes) and the bytes
/// that do not decode.
fn not_utf8(path: &Path, bytes: &[u8], e: std::str::Utf8Error) -> Error {
    let at = e.valid_up_to();
    let before = &bytes[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let bad_len = e.error_len().unwrap_or(bytes.len() - at).min(4);
    let bad: Vec<String> = bytes[at..at + bad_len]
        .iter()
        .map(|b| format!("0x{b:02x}"))
        .collect();
    Error::bad_input(
        path,
        Some(line),
        format!(
            "{}: line {line}, byte {} of the line (byte {at} of the file): not valid UTF-8 \
             ({}); datasets are UTF-8 text",
            path.display(),
            at - line_start + 1,
            bad.join(" ")
        ),
    )
}

/// [`load`] on text already in memory; `path` is the name used in messages and decides
/// whether this is a `.txt` file.
pub fn parse_str(path: &Path, text: &str, format: Option<Format>) -> crate::Result<Dataset> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let is_txt = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("txt"));
    if is_txt {
        if format.is_some_and(|f| f != Format::Text) {
            return Err(Error::Invalid(format!(
                "{}: a .txt file is plain text; it cannot be read as {}",
                path.display(),
                format.unwrap_or(Format::Text)
            )));
        }
        return finish(path, Format::Text, paragraphs(text), Vec::new());
    }

    let mut records: Vec<(usize, Result<Value, String>)> = Vec::new();
    if text.trim_start().starts_with('[') {
        let all: Value = serde_json::from_str(text).map_err(|e| {
            let what = format!(
                "{}: invalid JSON: {}",
                locate(path, e.line()),
                json_message(&e)
            );
            Error::bad_input(path, Some(e.line()), what)
        })?;
        let Value::Array(items) = all else {
            let what = format!("{}: expected a JSON array of records", path.display());
            return Err(Error::bad_input(path, None, what));
        };
        let lines = element_lines(text);
        for (i, v) in items.into_iter().enumerate() {
            records.push((lines.get(i).copied().unwrap_or(1), Ok(v)));
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed = serde_json::from_str::<Value>(line).map_err(|e| {
                format!(
                    "invalid JSON at column {}: {}",
                    e.column(),
                    json_message(&e)
                )
            });
            records.push((i + 1, parsed));
        }
    }

    // The format: given, or from the first record that parses as an object.
    let mut detected_at = None;
    let format = match format {
        Some(f) => f,
        None => {
            let first = records.iter().find_map(|(line, r)| match r {
                Ok(Value::Object(o)) => Some((*line, o)),
                _ => None,
            });
            match first {
                Some((line, obj)) => match detect(obj) {
                    Some(f) => {
                        detected_at = Some(line);
                        f
                    }
                    None => {
                        let what = format!(
                            "{}: cannot tell the dataset format from the fields {}: expected \
                             `instruction`+`output` (alpaca), `messages` (chat), `text` or \
                             `input_ids` (pre-tokenized); --format chooses one",
                            locate(path, line),
                            field_list(obj)
                        );
                        return Err(Error::bad_input(path, Some(line), what));
                    }
                },
                // No object at all: report the records' own errors (or "no records").
                None => Format::Alpaca,
            }
        }
    };

    let mut examples = Vec::with_capacity(records.len());
    let mut errors = Vec::new();
    for (line, r) in records {
        let parsed = r.and_then(|v| parse_record(&v, format, detected_at));
        match parsed {
            Ok((content, task)) => examples.push(Example {
                content,
                task,
                line,
            }),
            Err(what) => errors.push((line, what)),
        }
    }
    finish(path, format, examples, errors)
}

/// The dataset, or one error listing the bad records.
fn finish(
    path: &Path,
    format: Format,
    examples: Vec<Example>,
    errors: Vec<(usize, String)>,
) -> crate::Result<Dataset> {
    if !errors.is_empty() {
        let mut msg = if errors.len() == 1 {
            String::new()
        } else {
            format!(
                "{}: {} bad records (listing {}):\n",
                path.display(),
                errors.len(),
                errors.len().min(MAX_REPORTED)
            )
        };
        let shown: Vec<String> = errors
            .iter()
            .take(MAX_REPORTED)
            .map(|(line, what)| format!("{}: {what}", locate(path, *line)))
            .collect();
        msg += &shown.join("\n");
        return Err(Error::bad_input(path, Some(errors[0].0), msg));
    }
    if examples.is_empty() {
        let what = format!("{}: the dataset holds no records", path.display());
        return Err(Error::bad_input(path, None, what));
    }
    Ok(Dataset {
        path: path.to_path_buf(),
        format,
        examples,
    })
}

/// The format a record's fields point to, if any.
pub fn detect(obj: &Map<String, Value>) -> Option<Format> {
    if obj.contains_key("messages") {
        Some(Format::Chat)
    } else if obj.contains_key("input_ids") {
        Some(Format::PreTokenized)
    } else if obj.contains_key("instruction") || obj.contains_key("output") {
        Some(Format::Alpaca)
    } else if obj.contains_key("text") {
        Some(Format::Text)
    } else {
        None
    }
}

/// One record as `format`, or what is wrong with it.
fn parse_record(
    v: &Value,
    format: Format,
    detected_at: Option<usize>,
) -> Result<(Content, Option<String>), String> {
    let Value::Object(obj) = v else {
        return Err(format!("expected a JSON object, found {}", kind(v)));
    };
    let parsed = match format {
        Format::Alpaca => parse_alpaca(obj),
        Format::Chat => parse_chat(obj),
        Format::Text => parse_text(obj),
        Format::PreTokenized => parse_pretokenized(obj),
    };
    let content = parsed.map_err(|what| match detect(obj) {
        // A record of another shape: say so rather than "missing field".
        Some(other) if other != format => {
            let origin = match detected_at {
                Some(line) => format!("detected from line {line}"),
                None => "as given".to_string(),
            };
            format!(
                "a {other} record (fields {}) in a {format} dataset (format {origin})",
                field_list(obj)
            )
        }
        _ => what,
    })?;
    let task = opt_string(obj, "task")?;
    Ok((content, task))
}

fn parse_alpaca(obj: &Map<String, Value>) -> Result<Content, String> {
    let instruction = req_string(obj, "instruction")?;
    let input = opt_string(obj, "input")?.unwrap_or_default();
    let output = req_string(obj, "output")?;
    if instruction.trim().is_empty() {
        return Err("field `instruction` is empty".into());
    }
    if output.trim().is_empty() {
        return Err("field `output` is empty: nothing to train on".into());
    }
    Ok(Content::Alpaca {
        instruction,
        input,
        output,
    })
}

fn parse_chat(obj: &Map<String, Value>) -> Result<Content, String> {
    let list = match obj.get("messages") {
        None | Some(Value::Null) => return Err("missing field `messages`".into()),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(format!(
                "field `messages` must be an array, found {}",
                kind(other)
            ));
        }
    };
    if list.is_empty() {
        return Err("field `messages` is empty".into());
    }
    let mut messages = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(format!(
                "messages[{i}]: expected an object with `role` and `content`, found {}",
                kind(m)
            ));
        };
        let role = req_string(m, "role").map_err(|e| format!("messages[{i}]: {e}"))?;
        let content = req_string(m, "content").map_err(|e| format!("messages[{i}]: {e}"))?;
        if role.trim().is_empty() {
            return Err(format!("messages[{i}]: field `role` is empty"));
        }
        messages.push(Message { role, content });
    }
    if !messages
        .iter()
        .any(|m| m.role == "assistant" && !m.content.trim().is_empty())
    {
        return Err("no non-empty `assistant` message: nothing to train on".into());
    }
    Ok(Content::Chat { messages })
}

fn parse_text(obj: &Map<String, Value>) -> Result<Content, String> {
    let text = req_string(obj, "text")?;
    if text.trim().is_empty() {
        return Err("field `text` is empty".into());
    }
    Ok(Content::Text { text })
}

fn parse_pretokenized(obj: &Map<String, Value>) -> Result<Content, String> {
    let ids = match obj.get("input_ids") {
        None | Some(Value::Null) => return Err("missing field `input_ids`".into()),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(format!(
                "field `input_ids` must be an array of token ids, found {}",
                kind(other)
            ));
        }
    };
    if ids.is_empty() {
        return Err("field `input_ids` is empty".into());
    }
    let mut input_ids = Vec::with_capacity(ids.len());
    for (i, v) in ids.iter().enumerate() {
        match v.as_u64().and_then(|x| u32::try_from(x).ok()) {
            Some(id) => input_ids.push(id),
            None => {
                return Err(format!(
                    "input_ids[{i}]: a token id must be a non-negative integer below 2^32, \
                     found {v}"
                ));
            }
        }
    }
    let labels = match obj.get("labels") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => {
            if a.len() != input_ids.len() {
                return Err(format!(
                    "`labels` has {} entries but `input_ids` has {}",
                    a.len(),
                    input_ids.len()
                ));
            }
            let mut labels = Vec::with_capacity(a.len());
            for (i, v) in a.iter().enumerate() {
                match v
                    .as_i64()
                    .filter(|&x| x == -100 || (0..=i32::MAX as i64).contains(&x))
                {
                    Some(x) => labels.push(x as i32),
                    None => {
                        return Err(format!(
                            "labels[{i}]: a label must be -100 (no loss) or a token id, found {v}"
                        ));
                    }
                }
            }
            Some(labels)
        }
        Some(other) => {
            return Err(format!(
                "field `labels` must be an array, found {}",
                kind(other)
            ));
        }
    };
    Ok(Content::PreTokenized { input_ids, labels })
}

fn req_string(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    opt_string(obj, key)?.ok_or_else(|| format!("missing field `{key}`"))
}

fn opt_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "field `{key}` must be a string, found {}",
            kind(other)
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn field_list(obj: &Map<String, Value>) -> String {
    let names: Vec<String> = obj.keys().map(|k| format!("`{k}`")).collect();
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}

/// serde_json's message without its " at line L column C" suffix (we say where ourselves).
fn json_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The 1-based line on which each element of the (valid) top-level JSON array in `text`
/// starts: a scan that tracks strings and nesting depth.
fn element_lines(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let (mut line, mut depth) = (1usize, 0usize);
    let (mut in_string, mut escaped, mut expecting) = (false, false, true);
    for &c in text.as_bytes() {
        if c == b'\n' {
            line += 1;
        }
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        let starts_element = depth == 1 && expecting;
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            b',' if depth == 1 => {
                expecting = true;
                continue;
            }
            b'"' => in_string = true,
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if starts_element && c != b']' {
            out.push(line);
            expecting = false;
        }
    }
    out
}

/// The paragraphs of a `.txt` file (runs of non-blank lines), each with its first line.
fn paragraphs(text: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut start = 0;
    let mut flush = |current: &mut Vec<&str>, start: usize| {
        if !current.is_empty() {
            out.push(Example {
                content: Content::Text {
                    text: current.join("\n"),
                },
                task: None,
                line: start,
            });
            current.clear();
        }
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            flush(&mut current, start);
        } else {
            if current.is_empty() {
                start = i + 1;
            }
            current.push(line);
        }
    }
    flush(&mut current, start);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_element_lines() {
        let text = "[\n  {\"a\": \"x,]\\\"\"},\n\n  {\"b\": [1,\n 2]}, 3,\n\"s\"\n]";
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 4);
        assert_eq!(element_lines(text), vec![2, 4, 5, 6]);
        assert_eq!(element_lines("[]"), Vec::<usize>::new());
    }

    #[test]
    fn txt_paragraphs() {
        let ex = paragraphs("one\ntwo\n\n  \nthree\r\n\nfour");
        let got: Vec<(String, usize)> = ex
            .into_iter()
            .map(|e| match e.content {
                Content::Text { text } => (text, e.line),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("one\ntwo".to_string(), 1),
                ("three".to_string(), 5),
                ("four".to_string(), 7)
            ]
        );
    }
}
