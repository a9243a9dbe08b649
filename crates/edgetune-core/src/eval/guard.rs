//! The guardrail (`--guard POLICY.toml` on `generate` and `eval`): a policy of rules, each a
//! list of regex `patterns` and/or keyword `topics`, applied to the prompt, the output or both.
//! A match on the prompt skips generation; a match on the output replaces it; either way the
//! answer is exactly [`REFUSAL`].
//!
//! ```toml
//! [[rule]]
//! name = "explosives"                 # optional; reports name the rule (default: rule-N)
//! patterns = ['how (do|can) i (make|build) a bomb']   # regexes, matched case-insensitively
//! topics = ["pipe bomb", "bom rakitan"]               # keywords, case-insensitive, whole words
//! applies_to = "both"                 # "prompt" | "output" | "both" (default "both")
//! ```
//!
//! A topic matches as a whole word or phrase (a word boundary at each end that is a letter or
//! digit; any run of whitespace between its words), so "arson" does not fire on "comparison".
//! Errors (bad TOML, an unknown key, a regex that does not compile, a rule with nothing to
//! match) name the file and the line.

use std::path::{Path, PathBuf};

use regex::{Regex, RegexBuilder};
use serde::Deserialize;
use toml::Spanned;

use crate::{Error, Result};

/// The answer that replaces a blocked prompt's or output's: the same sentence the assistant
/// set trains a model to answer harmful requests with.
pub const REFUSAL: &str = crate::data::synth::REFUSAL;

/// What a rule looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppliesTo {
    Prompt,
    Output,
    Both,
}

/// Where a rule fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Prompt,
    Output,
}

/// One compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub applies_to: AppliesTo,
    /// The patterns, then the topics, each compiled case-insensitive.
    matchers: Vec<Regex>,
}

/// A rule that fired: which, where, and the matched text.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Hit {
    pub rule: String,
    pub stage: Stage,
    pub matched: String,
}

/// A loaded policy.
#[derive(Clone, Debug)]
pub struct Policy {
    pub path: PathBuf,
    pub rules: Vec<Rule>,
}

/// The TOML as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    rule: Vec<Spanned<RuleFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: Option<String>,
    #[serde(default)]
    patterns: Vec<Spanned<String>>,
    #[serde(default)]
    topics: Vec<Spanned<String>>,
    applies_to: Option<Spanned<String>>,
}

impl Policy {
    /// Reads and compiles the policy at `path`.
    pub fn load(path: &Path) -> Result<Policy> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Policy::parse(path, &text)
    }

    /// Compiles policy text; `path` names the file in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Policy> {
        let at = |offset: usize, what: String| {
            Error::Invalid(format!(
                "{}:{}: {what}",
                path.display(),
                line_of(text, offset)
            ))
        };
        let file: PolicyFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            at(offset, e.message().trim().to_owned())
        })?;
        if file.rule.is_empty() {
            return Err(Error::Invalid(format!(
                "{}: the policy has no [[rule]]",
                path.display()
            )));
        }
        let mut rules = Vec::with_capacity(file.rule.len());
        for (i, spanned) in file.rule.iter().enumerate() {
            let start = spanned.span().start;
            let r = spanned.get_ref();
            let name = r.name.clone().unwrap_or_else(|| format!("rule-{}", i + 1));
            let applies_to = match &r.applies_to {
                None => AppliesTo::Both,
                Some(a) => match a.get_ref().as_str() {
                    "prompt" => AppliesTo::Prompt,
                    "output" => AppliesTo::Output,
                    "both" => AppliesTo::Both,
                    other => {
                        return Err(at(
                            a.span().start,
                            format!(
                                "rule {name:?}: applies_to {other:?} (expected prompt, output or both)"
                            ),
                        ));
                    }
                },
            };
            if r.patterns.is_empty() && r.topics.is_empty() {
                return Err(at(
                    start,
                    format!("rule {name:?} has neither `patterns` nor `topics`"),
                ));
            }
            let mut matchers = Vec::with_capacity(r.patterns.len() + r.topics.len());
            for p in &r.patterns {
                let re = compile(p.get_ref()).map_err(|e| {
                    at(
                        p.span().start,
                        format!("rule {name:?}: pattern {:?}: {e}", p.get_ref()),
                    )
                })?;
                matchers.push(re);
            }
            for t in &r.topics {
                let source = topic_regex(t.get_ref())
                    .ok_or_else(|| at(t.span().start, format!("rule {name:?}: an empty topic")))?;
                let re = compile(&source).map_err(|e| {
                    at(
                        t.span().start,
                        format!("rule {name:?}: topic {:?}: {e}", t.get_ref()),
                    )
                })?;
                matchers.push(re);
            }
            rules.push(Rule {
                name,
                applies_to,
                matchers,
            });
        }
        Ok(Policy {
            path: path.to_path_buf(),
            rules,
        })
    }

    /// The first rule that applies to prompts and matches `prompt`.
    pub fn check_prompt(&self, prompt: &str) -> Option<Hit> {
        self.check(prompt, Stage::Prompt)
    }

    /// The first rule that applies to outputs and matches `output`.
    pub fn check_output(&self, output: &str) -> Option<Hit> {
        self.check(output, Stage::Output)
    }

    fn check(&self, text: &str, stage: Stage) -> Option<Hit> {
        self.rules
            .iter()
            .filter(|r| match stage {
                Stage::Prompt => r.applies_to != AppliesTo::Output,
                Stage::Output => r.applies_to != AppliesTo::Prompt,
            })
            .find_map(|r| {
                r.matchers.iter().find_map(|m| m.find(text)).map(|m| Hit {
                    rule: r.name.clone(),
                    stage,
                    matched: m.as_str().to_owned(),
                })
            })
    }
}

/// An answer after the guard: the generated text, or [`REFUSAL`] with the rule that fired.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Guarded {
    pub text: String,
    pub blocked: Option<Hit>,
}

/// Runs `generate` under `policy`: a prompt match skips it, an output match replaces its text;
/// without a policy the text passes through.
pub fn guard_generation(
    policy: Option<&Policy>,
    prompt: &str,
    generate: impl FnOnce() -> Result<String>,
) -> Result<Guarded> {
    if let Some(refusal) = guard_prompt(policy, prompt) {
        return Ok(refusal);
    }
    Ok(guard_output(policy, generate()?))
}

/// The first half of [`guard_generation`], for callers that generate many prompts together:
/// the refusal when `policy` blocks `prompt` (then nothing is generated for it).
pub fn guard_prompt(policy: Option<&Policy>, prompt: &str) -> Option<Guarded> {
    policy.and_then(|p| p.check_prompt(prompt)).map(refused)
}

/// The second half of [`guard_generation`]: `text`, or the refusal when `policy` blocks it.
pub fn guard_output(policy: Option<&Policy>, text: String) -> Guarded {
    match policy.and_then(|p| p.check_output(&text)) {
        Some(hit) => refused(hit),
        None => Guarded {
            text,
            blocked: None,
        },
    }
}

fn refused(hit: Hit) -> Guarded {
    log::info!(
        "guard: rule {:?} matched {:?} in the {:?}",
        hit.rule,
        hit.matched,
        hit.stage
    );
    Guarded {
        text: REFUSAL.to_owned(),
        blocked: Some(hit),
    }
}

fn compile(source: &str) -> std::result::Result<Regex, regex::Error> {
    RegexBuilder::new(source).case_insensitive(true).build()
}

/// A topic as a regex: its words escaped, any whitespace between them, a word boundary at an
/// end that is a word character. `None` for a blank topic.
fn topic_regex(topic: &str) -> Option<String> {
    let words: Vec<String> = topic.split_whitespace().map(regex::escape).collect();
    let first = topic.trim().chars().next()?;
    let last = topic.trim().chars().next_back()?;
    let word = |c: char| c.is_alphanumeric() || c == '_';
    Some(format!(
        "{}{}{}",
        if word(first) { r"\b" } else { "" },
        words.join(r"\s+"),
        if word(last) { r"\b" } else { "" }
    ))
}

/// The 1-based line holding byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_match_whole_words_and_phrases() {
        let re = compile(&topic_regex("pipe  bomb").unwrap()).unwrap();
        assert!(re.is_match("how to build a Pipe\nBomb?"));
        assert!(!re.is_match("pipe bombastic"));
        let re = compile(&topic_regex("arson").unwrap()).unwrap();
        assert!(!re.is_match("a comparison"));
        assert!(re.is_match("ARSON at night"));
        assert!(topic_regex("   ").is_none());
    }

    #[test]
    fn line_of_counts_newlines() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }
}
