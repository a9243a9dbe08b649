//! The checks an eval case runs on a generated answer: `contains`, `not_contains`, `equals`
//! and `regex`. A case passes when every one of its checks passes.
//!
//! Matching rules (why: a model's answer usually carries whitespace and a trailing newline that
//! say nothing about its correctness):
//! - `contains` / `not_contains`: a plain substring test on the output as generated (case
//!   sensitive).
//! - `equals`: the output with leading and trailing whitespace removed equals the expected text
//!   (also trimmed).
//! - `regex`: the `regex` crate's syntax, searched anywhere in the output (anchor it with `^…$`
//!   to match the whole); flags such as `(?i)` go inside the pattern.

use regex::Regex;

use crate::{Error, Result};

/// One check of a case.
#[derive(Clone, Debug)]
pub enum Check {
    Contains(String),
    NotContains(String),
    Equals(String),
    /// The source pattern is kept for messages.
    Regex(Regex),
}

impl Check {
    /// Builds the check named `kind` (`contains`, `not_contains`, `equals`, `regex`) with its
    /// value; an unknown kind or a pattern that does not compile is an error naming it.
    pub fn new(kind: &str, value: &str) -> Result<Check> {
        match kind {
            "contains" => Ok(Check::Contains(value.to_owned())),
            "not_contains" => Ok(Check::NotContains(value.to_owned())),
            "equals" => Ok(Check::Equals(value.to_owned())),
            "regex" => Regex::new(value)
                .map(Check::Regex)
                .map_err(|e| Error::Invalid(format!("regex {value:?} does not compile: {e}"))),
            other => Err(Error::Invalid(format!(
                "unknown check `{other}` (known: contains, not_contains, equals, regex)"
            ))),
        }
    }

    /// The check's kind, as written in a suite.
    pub fn kind(&self) -> &'static str {
        match self {
            Check::Contains(_) => "contains",
            Check::NotContains(_) => "not_contains",
            Check::Equals(_) => "equals",
            Check::Regex(_) => "regex",
        }
    }

    /// The check's value (the text, or the regex source).
    pub fn value(&self) -> &str {
        match self {
            Check::Contains(s) | Check::NotContains(s) | Check::Equals(s) => s,
            Check::Regex(r) => r.as_str(),
        }
    }

    /// Whether `output` passes this check.
    pub fn passes(&self, output: &str) -> bool {
        match self {
            Check::Contains(s) => output.contains(s.as_str()),
            Check::NotContains(s) => !output.contains(s.as_str()),
            Check::Equals(s) => output.trim() == s.trim(),
            Check::Regex(r) => r.is_match(output),
        }
    }

    /// `kind "value"`, for reports.
    pub fn describe(&self) -> String {
        format!("{} {:?}", self.kind(), self.value())
    }
}

/// The first check of `checks` that `output` fails, if any.
pub fn first_failure<'c>(checks: &'c [Check], output: &str) -> Option<&'c Check> {
    checks.iter().find(|c| !c.passes(output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_passes_and_fails() {
        let c = Check::new("contains", "21").unwrap();
        assert!(c.passes(" 21, 34"));
        assert!(!c.passes(" 20, 34"));
        let n = Check::new("not_contains", "9.11").unwrap();
        assert!(n.passes("9.9 is larger"));
        assert!(!n.passes("9.11 is larger"));
        let e = Check::new("equals", "9.9").unwrap();
        assert!(e.passes("  9.9\n"));
        assert!(!e.passes("9.9 is larger"));
        let r = Check::new("regex", r"^\s*9\.9\b").unwrap();
        assert!(r.passes(" 9.9 is larger"));
        assert!(!r.passes("9.91"));
        assert_eq!(r.describe(), r#"regex "^\\s*9\\.9\\b""#);
    }

    #[test]
    fn bad_kind_and_bad_regex_are_errors() {
        let e = Check::new("startswith", "x").unwrap_err().to_string();
        assert!(e.contains("startswith"), "{e}");
        let e = Check::new("regex", "(unclosed").unwrap_err().to_string();
        assert!(e.contains("(unclosed"), "{e}");
    }
}
