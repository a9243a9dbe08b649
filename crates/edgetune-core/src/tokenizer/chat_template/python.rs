//! The parts of Hugging Face's jinja2 environment for chat templates that minijinja lacks or
//! does differently, so a template renders here as `apply_chat_template` renders it:
//!
//! - the syntax: `trim_blocks` and `lstrip_blocks` on, `keep_trailing_newline` off (jinja2's
//!   default), lenient undefined values (jinja2's default `Undefined`);
//! - `raise_exception(msg)` and `strftime_now(fmt)`, the two globals transformers adds;
//! - `tojson`, which transformers replaces by `json.dumps(x, ensure_ascii=False, indent=None,
//!   separators=None, sort_keys=False)`: Python's spacing (`", "`, `": "`), no HTML escaping,
//!   keys in insertion order (minijinja's own escapes `<`, `>`, `&`, `'` and writes compactly);
//! - `trim` and the string methods `strip`, `lstrip`, `rstrip` with Python's whitespace, which
//!   also counts U+001C..U+001F (Rust's `trim` does not); the other Python methods (`split`,
//!   `startswith`, `items`…) come from minijinja-contrib's `pycompat`.

use std::borrow::Cow;
use std::fmt::Write as _;

use minijinja::value::{Kwargs, StringInput, ValueKind, from_args};
use minijinja::{Environment, Error, ErrorKind, State, Value};

/// The error `raise_exception` attaches to the template error: the template's own message.
#[derive(Debug)]
pub(super) struct Raised(pub String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// The template's message when `e` (or an error it wraps) came from `raise_exception`.
pub(super) fn raised_message(e: &Error) -> Option<&str> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Raised>() {
            return Some(&r.0);
        }
        cur = err.source();
    }
    None
}

/// Sets up `env` like transformers' `_compile_jinja_template`.
pub(super) fn configure(env: &mut Environment<'static>) -> Result<(), Error> {
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()?,
    );
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
    env.set_unknown_method_callback(string_methods);
    env.add_filter("tojson", tojson);
    env.add_filter("trim", trim);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    Ok(())
}

fn raise_exception(message: Value) -> Result<Value, Error> {
    let message = message.to_string();
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {message}"),
    )
    .with_source(Raised(message)))
}

/// `datetime.now().strftime(fmt)`: the local time (the system's time zone).
fn strftime_now(format: &str) -> Result<String, Error> {
    let fail = |e: jiff::Error| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now({format:?}): {e}"),
        )
    };
    let now = jiff::ZonedDateTime::try_from(std::time::SystemTime::now()).map_err(fail)?;
    jiff::fmt::strtime::format(format, &now).map_err(fail)
}

/// Python's `str.isspace` for one character.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip` / `lstrip` / `rstrip`: `chars` `None` strips whitespace.
fn py_strip<'a>(s: &'a str, chars: Option<&str>, left: bool, right: bool) -> &'a str {
    let strip = |c: char| chars.map_or_else(|| is_py_space(c), |set| set.contains(c));
    let mut out = s;
    if left {
        out = out.trim_start_matches(strip);
    }
    if right {
        out = out.trim_end_matches(strip);
    }
    out
}

/// jinja2's `trim(value, chars=None)`: `str(value).strip(chars)`.
fn trim(value: StringInput<'_>, chars: Option<Cow<'_, str>>) -> String {
    py_strip(value.as_str(), chars.as_deref(), true, true).to_owned()
}

/// Python's `str.split(None, maxsplit)`: runs of whitespace separate, none at either end.
fn py_split_whitespace(s: &str, maxsplit: Option<i64>) -> Vec<&str> {
    let max = maxsplit.filter(|&m| m >= 0).map(|m| m as usize);
    let mut out = Vec::new();
    let mut rest = s.trim_start_matches(is_py_space);
    while !rest.is_empty() {
        if max == Some(out.len()) {
            out.push(rest);
            break;
        }
        let end = rest.find(is_py_space).unwrap_or(rest.len());
        out.push(&rest[..end]);
        rest = rest[end..].trim_start_matches(is_py_space);
    }
    out
}

/// Python's `strip` family and whitespace `split` on strings; every other method goes to
/// minijinja-contrib.
fn string_methods(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        match method {
            "strip" | "lstrip" | "rstrip" => {
                let (chars,): (Option<Cow<'_, str>>,) = from_args(args)?;
                let (left, right) = (method != "rstrip", method != "lstrip");
                return Ok(Value::from(py_strip(s, chars.as_deref(), left, right)));
            }
            "split" if args.first().is_none_or(|sep| sep.is_none()) => {
                let (_, maxsplit): (Option<Value>, Option<i64>) = from_args(args)?;
                let parts = py_split_whitespace(s, maxsplit);
                return Ok(parts.into_iter().map(Value::from).collect());
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// The widest `indent` accepted.
const MAX_INDENT: i64 = 1024;

/// How deep `tojson` descends, as Python's recursion limit stops `json.dumps` (a template can
/// nest a list in itself in a loop; the stack must not be the limit).
const MAX_JSON_DEPTH: usize = 512;

/// How `json.dumps` lays out its output.
struct JsonStyle {
    item_sep: String,
    key_sep: String,
    indent: Option<String>,
    ensure_ascii: bool,
    sort_keys: bool,
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<String, Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => Some(match (v.as_str(), i64::try_from(v.clone())) {
            (Some(s), _) => s.to_owned(),
            // A template's typo must not allocate gigabytes of spaces.
            (None, Ok(n)) if n <= MAX_INDENT => " ".repeat(n.max(0) as usize),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "tojson: indent must be a string or an integer up to {MAX_INDENT}, not {v}"
                    ),
                ));
            }
        }),
    };
    // Python's defaults: ", " between items, or "," when indenting (the newline follows).
    let (item_sep, key_sep) = match separators.filter(|v| !v.is_none() && !v.is_undefined()) {
        Some(v) => {
            let (item, key): (String, String) =
                from_args(&[v.get_item_by_index(0)?, v.get_item_by_index(1)?])?;
            (item, key)
        }
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let style = JsonStyle {
        item_sep,
        key_sep,
        indent,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(value, &style, 0, &mut out)?;
    Ok(out)
}

fn not_serializable(v: &Value) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "tojson: a value of kind {} is not JSON serializable",
            v.kind()
        ),
    )
}

fn write_json(v: &Value, st: &JsonStyle, depth: usize, out: &mut String) -> Result<(), Error> {
    if depth > MAX_JSON_DEPTH {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: a value nested more than {MAX_JSON_DEPTH} levels deep"),
        ));
    }
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&json_number(v)?),
        ValueKind::String => write_json_str(v.as_str().unwrap_or_default(), st.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_container(out, st, depth, ('[', ']'), &items, |item, out| {
                write_json(item, st, depth + 1, out)
            })?;
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in v.try_iter()? {
                let item = v.get_item(&key)?;
                entries.push((json_key(&key)?, item));
            }
            if st.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, st, depth, ('{', '}'), &entries, |(k, item), out| {
                write_json_str(k, st.ensure_ascii, out);
                out.push_str(&st.key_sep);
                write_json(item, st, depth + 1, out)
            })?;
        }
        _ => return Err(not_serializable(v)),
    }
    Ok(())
}

/// `[a, b]` or, indented, one item a line; an empty container stays `[]` / `{}`.
fn write_container<T>(
    out: &mut String,
    st: &JsonStyle,
    depth: usize,
    (open, close): (char, char),
    items: &[T],
    mut write_item: impl FnMut(&T, &mut String) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(indent) = &st.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&st.item_sep);
        }
        newline(out, depth + 1);
        write_item(item, out)?;
    }
    newline(out, depth);
    out.push(close);
    Ok(())
}

/// A dict key as `json.dumps` writes it: strings as they are, numbers, booleans and None
/// converted to their JSON text.
fn json_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::Number => json_number(key),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.into()),
        ValueKind::None => Ok("null".into()),
        _ => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "tojson: keys must be str, int, float, bool or None, not {}",
                key.kind()
            ),
        )),
    }
}

fn json_number(v: &Value) -> Result<String, Error> {
    if v.is_integer() {
        return i128::try_from(v.clone()).map(|n| n.to_string());
    }
    f64::try_from(v.clone()).map(py_float_repr)
}

/// Python's `repr(float)`: the shortest round-trip digits, in fixed notation when the decimal
/// exponent is in -4..16, else as `1.5e-05` / `1e+16`; a whole number keeps `.0`.
pub(super) fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // `{:e}` gives the shortest round-trip digits: "-1.5e-5", "1e16", "0e0".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::new();
    if x.is_sign_negative() {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                let _ = write!(out, "{digits}{}.0", "0".repeat(int_len - digits.len()));
            } else {
                let _ = write!(out, "{}.{}", &digits[..int_len], &digits[int_len..]);
            }
        } else {
            let _ = write!(out, "0.{}{digits}", "0".repeat((-exp - 1) as usize));
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            let _ = write!(out, ".{}", &digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    out
}

/// A JSON string as Python writes it: `"`, `\` and control characters escaped (`\n`, `\u001f`…),
/// and with `ensure_ascii` every non-ASCII character as `\uXXXX` (UTF-16 units).
fn write_json_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python_repr() {
        for (x, want) in [
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (0.5, "0.5"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123456789.125, "123456789.125"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (9999999999999998.0, "9999999999999998.0"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(py_float_repr(x), want, "{x:e}");
        }
    }

    #[test]
    fn python_whitespace_includes_the_separators() {
        assert_eq!(
            py_strip("\u{1c} a b\u{a0}\u{3000}\n", None, true, true),
            "a b"
        );
        assert_eq!(py_strip("xxaxx", Some("x"), true, false), "axx");
        assert_eq!(py_strip("  a  ", Some(""), true, true), "  a  ");
    }

    #[test]
    fn whitespace_split_follows_python() {
        assert_eq!(py_split_whitespace("  a\u{1c}b  c ", None), ["a", "b", "c"]);
        assert_eq!(py_split_whitespace("a b  c ", Some(1)), ["a", "b  c "]);
        assert!(py_split_whitespace(" \n ", None).is_empty());
    }

    #[test]
    fn json_strings_escape_like_json_dumps() {
        let mut out = String::new();
        write_json_str("a\"\\\n\u{1}é🦙<&>", false, &mut out);
        assert_eq!(out, "\"a\\\"\\\\\\n\\u0001é🦙<&>\"");
        out.clear();
        write_json_str("é🦙", true, &mut out);
        assert_eq!(out, "\"\\u00e9\\ud83e\\udd99\"");
    }
}
