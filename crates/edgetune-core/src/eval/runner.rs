//! Running a suite: each case's prompt rendered (its own template, else a [`PromptFormat`]: by
//! default the model's chat template, see [`PromptFormat::of_model`]), greedy generation
//! (optionally under a guard policy), the checks, and a report with the pass rate,
//! per-language counts and every failure.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::checks::first_failure;
use super::guard::{Guarded, Hit, Policy, guard_generation, guard_output, guard_prompt};
use super::suite::{Case, Suite};
use crate::infer::{GenerateOptions, SamplingParams, generate, generate_batch};
use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use crate::tokenizer::chat_template::PromptFormat;
use crate::{Error, Result};

/// Settings of a suite run.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Tokens generated per case at most.
    pub max_tokens: usize,
    /// For cases without a template: usually [`PromptFormat::of_model`].
    pub style: PromptFormat,
    /// Cases generated together ([`generate_batch`]): 1 answers them one by one. Each case of a
    /// batch holds its own KV cache (`prompt + max_tokens` positions).
    pub batch: usize,
}

/// Pass counts of one language (or of cases without `lang`, under `"-"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub passed: usize,
    pub total: usize,
}

/// A case that failed.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Failure {
    pub id: String,
    pub line: usize,
    pub lang: Option<String>,
    /// The first check that failed (`kind "value"`), or `error: …` when generation failed.
    pub check: String,
    pub output: String,
    /// The guard rule that replaced the answer, if one did.
    pub blocked: Option<Hit>,
}

/// The result of [`run_suite`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EvalReport {
    pub suite: PathBuf,
    /// `passed / total` (0 for an empty run).
    pub pass_rate: f64,
    pub passed: usize,
    pub total: usize,
    /// Cases whose prompt or output the guard replaced.
    pub blocked: usize,
    pub by_lang: BTreeMap<String, Counts>,
    pub failures: Vec<Failure>,
}

/// The prompt text the guard sees for `case` (before any chat template): its template with
/// the input, or the input.
pub fn case_text(case: &Case) -> String {
    case.templated().unwrap_or_else(|| case.input.clone())
}

/// The token ids of `case`'s prompt: its own template as plain text, else `style`.
pub fn encode_case(tokenizer: &Tokenizer, case: &Case, style: &PromptFormat) -> Result<Vec<u32>> {
    if let Some(text) = case.templated() {
        return tokenizer.encode(&text, tokenizer.add_bos_default(), false);
    }
    style.encode(tokenizer, &case.input)
}

/// Greedy answer to `case` under `policy`.
pub fn answer_case(
    llama: &Llama,
    tokenizer: &Tokenizer,
    case: &Case,
    policy: Option<&Policy>,
    opts: &EvalOptions,
) -> Result<Guarded> {
    guard_generation(policy, &case_text(case), || {
        let ids = encode_case(tokenizer, case, &opts.style)?;
        Ok(generate(llama, tokenizer, &ids, &greedy(opts), |_| true)?.text)
    })
}

/// Greedy answers to `cases` under `policy`, generated together (one entry per case, in order;
/// a case whose prompt cannot be encoded or generated carries its error).
pub fn answer_cases(
    llama: &Llama,
    tokenizer: &Tokenizer,
    cases: &[Case],
    policy: Option<&Policy>,
    opts: &EvalOptions,
) -> Result<Vec<Result<Guarded>>> {
    let mut out: Vec<Option<Result<Guarded>>> = Vec::with_capacity(cases.len());
    let mut prompts = Vec::with_capacity(cases.len());
    let mut slots = Vec::with_capacity(cases.len());
    for case in cases {
        if let Some(refusal) = guard_prompt(policy, &case_text(case)) {
            out.push(Some(Ok(refusal)));
            continue;
        }
        match encode_case(tokenizer, case, &opts.style) {
            Ok(ids) => {
                slots.push(out.len());
                prompts.push(ids);
                out.push(None);
            }
            Err(e) => out.push(Some(Err(e))),
        }
    }
    let generated = generate_batch(llama, tokenizer, &prompts, &greedy(opts))?;
    for (slot, g) in slots.into_iter().zip(generated) {
        out[slot] = Some(g.map(|g| guard_output(policy, g.text)));
    }
    Ok(out
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::Invalid("eval: a case was not answered".into()))))
        .collect())
}

fn greedy(opts: &EvalOptions) -> GenerateOptions {
    GenerateOptions {
        max_tokens: opts.max_tokens,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        stop_at_eos: true,
    }
}

/// Before any case: the logits of the first case's prompt must be finite. A case whose
/// generation fails counts as a failure, but a model that computes NaN (broken weights or
/// adapter) would fail every case for that one reason: that stops the run with the error.
fn preflight(
    llama: &Llama,
    tokenizer: &Tokenizer,
    suite: &Suite,
    opts: &EvalOptions,
) -> Result<()> {
    let Some(case) = suite.cases.first() else {
        return Ok(());
    };
    let Ok(ids) = encode_case(tokenizer, case, &opts.style) else {
        return Ok(());
    };
    let n = ids.len().min(llama.config().context_length);
    if n == 0 {
        return Ok(());
    }
    let mut cache = llama.new_cache(n)?;
    let mut logits = vec![0.0f32; llama.config().n_vocab];
    llama.forward_last(&mut cache, &ids[..n], &mut logits)?;
    crate::infer::check_logits(&logits, || {
        format!(
            "eval {}: case {} (line {})",
            suite.path.display(),
            case.id,
            case.line
        )
    })
}

/// Runs every case of `suite`; `on_case(index, passed)` is called after each (for progress).
/// A case whose generation fails (e.g. a prompt longer than the context) counts as a failure
/// carrying the error; only a model whose logits are not finite on the first case's prompt
/// stops the run (an error).
pub fn run_suite(
    llama: &Llama,
    tokenizer: &Tokenizer,
    suite: &Suite,
    policy: Option<&Policy>,
    opts: &EvalOptions,
    on_case: impl FnMut(usize, bool),
) -> Result<EvalReport> {
    run_suite_answers(llama, tokenizer, suite, policy, opts, on_case).map(|(report, _)| report)
}

/// [`run_suite`], also returning every case's answer in suite order (the report keeps only the
/// failures'; an answer whose generation failed is empty).
pub fn run_suite_answers(
    llama: &Llama,
    tokenizer: &Tokenizer,
    suite: &Suite,
    policy: Option<&Policy>,
    opts: &EvalOptions,
    mut on_case: impl FnMut(usize, bool),
) -> Result<(EvalReport, Vec<String>)> {
    if opts.max_tokens == 0 {
        return Err(Error::Invalid(
            "eval: --max-tokens must be at least 1".into(),
        ));
    }
    let mut report = EvalReport {
        suite: suite.path.clone(),
        pass_rate: 0.0,
        passed: 0,
        total: suite.cases.len(),
        blocked: 0,
        by_lang: BTreeMap::new(),
        failures: Vec::new(),
    };
    preflight(llama, tokenizer, suite, opts)?;
    let mut answers = Vec::with_capacity(suite.cases.len());
    let batch = opts.batch.max(1);
    for (b, chunk) in suite.cases.chunks(batch).enumerate() {
        let results = if batch == 1 {
            chunk
                .iter()
                .map(|c| answer_case(llama, tokenizer, c, policy, opts))
                .collect()
        } else {
            answer_cases(llama, tokenizer, chunk, policy, opts)?
        };
        for (i, (case, result)) in chunk.iter().zip(results).enumerate() {
            let passed = record(&mut report, case, result, &mut answers);
            on_case(b * batch + i, passed);
        }
    }
    report.pass_rate = report.passed as f64 / report.total.max(1) as f64;
    Ok((report, answers))
}

/// Adds one case's outcome to `report` and its answer to `answers`; whether it passed.
fn record(
    report: &mut EvalReport,
    case: &Case,
    result: Result<Guarded>,
    answers: &mut Vec<String>,
) -> bool {
    let (output, failed, blocked) = match result {
        Ok(g) => {
            let failed = first_failure(&case.checks, &g.text).map(|c| c.describe());
            (g.text, failed, g.blocked)
        }
        Err(e) => (String::new(), Some(format!("error: {e}")), None),
    };
    report.blocked += blocked.is_some() as usize;
    let lang = case.lang.clone().unwrap_or_else(|| "-".into());
    let counts = report.by_lang.entry(lang).or_default();
    counts.total += 1;
    let passed = failed.is_none();
    match failed {
        None => {
            counts.passed += 1;
            report.passed += 1;
        }
        Some(check) => report.failures.push(Failure {
            id: case.id.clone(),
            line: case.line,
            lang: case.lang.clone(),
            check,
            output: output.clone(),
            blocked,
        }),
    }
    answers.push(output);
    passed
}
