//! A comparison's rows, score and table: one [`MethodResult`] per training method,
//! the composite [`score`] against plain LoRA, the markdown table, and the held-out split of
//! the dataset (the last records, never trained on).
//!
//! # The score
//! Each method gets four factors, each a ratio against the LoRA run where higher is better:
//! - memory  = peak_lora / peak_m  (measured peak RSS; the planned bytes when no peak was read)
//! - disk    = adapter_bytes_lora / adapter_bytes_m
//! - time    = tok_per_s_m / tok_per_s_lora
//! - quality = exp(heldout_loss_lora − heldout_loss_m)  (= held-out perplexity_lora / perplexity_m)
//!
//! `score` is their geometric mean, `(memory · disk · time · quality)^(1/4)`: LoRA is exactly
//! 1.0, a method that halves memory and is otherwise equal scores 2^(1/4) ≈ 1.19, and one
//! factor cannot make up for any amount of another on its own scale only. A factor whose
//! measure is missing (for LoRA or for the method) is left out of the mean; a method that
//! failed, or a run without a LoRA result, has no score. The eval pass rate is reported next
//! to the score but not in it (a dozen cases moves in steps too coarse to weigh against
//! continuous measures), and so is the retention suite's.
//!
//! # The base row
//! The base model without an adapter is measured once, as a row named [`BASE_ROW`] first in
//! the list: its held-out loss and pass rates are where every method started. It has no
//! training measures and no score.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::train::Method;
use edgetune_core::data::{Dataset, formats};
use edgetune_core::{Error, Result};

/// The baseline every score is relative to.
pub const BASELINE: &str = "lora";

/// The `method` of the row that measures the base model without an adapter.
pub const BASE_ROW: &str = "base";

/// One method's measures (`DIR/compare.json` holds a list of these). Every measure is
/// optional: a method that failed part-way keeps what it got, and says why in `error`.
/// `adapter_bytes` is [`adapter_bytes`] of the last checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MethodResult {
    pub method: String,
    pub trainable_params: Option<u64>,
    pub planned_bytes: Option<u64>,
    pub peak_bytes: Option<u64>,
    /// Bytes on disk of the deployable adapter ([`adapter_bytes`]).
    pub adapter_bytes: Option<u64>,
    pub tok_per_s: Option<f64>,
    pub loss_first: Option<f64>,
    pub loss_final: Option<f64>,
    pub heldout_loss: Option<f64>,
    pub eval_pass_rate: Option<f64>,
    /// MT-LoRA: the suite's pass rate with each task's adapter, by task name (the suite runs
    /// once per task; `eval_pass_rate` is their mean). Absent for the other methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_pass_rate_by_task: Option<BTreeMap<String, f64>>,
    pub score: Option<f64>,
    pub error: Option<String>,
    /// The retention suite's pass rate (general knowledge the base has and must keep); for
    /// MT-LoRA the mean over its tasks, as `eval_pass_rate`.
    #[serde(default)]
    pub retention_pass_rate: Option<f64>,
    /// MT-LoRA: the retention pass rate with each task's adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_pass_rate_by_task: Option<BTreeMap<String, f64>>,
    /// The peak learning rate the run trained at (the method's default or an override).
    #[serde(default)]
    pub lr: Option<f64>,
    /// The `--method-opt` flags given to this method's run, as `--flag=value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub method_opts: Vec<String>,
    /// Wall-clock seconds of the training run (the child process, start to exit).
    #[serde(default)]
    pub train_seconds: Option<f64>,
    /// Wall-clock seconds of the measures after training (held-out loss and suites).
    #[serde(default)]
    pub measure_seconds: Option<f64>,
}

impl MethodResult {
    /// An empty result for `method`.
    pub fn new(method: &str) -> MethodResult {
        MethodResult {
            method: method.to_owned(),
            ..MethodResult::default()
        }
    }

    /// Fills the training measures from a run's `summary.json` (as `edgetune train --json`
    /// prints it).
    pub fn fill_from_summary(&mut self, summary: &Value) {
        self.trainable_params = summary.get("trainable_params").and_then(Value::as_u64);
        self.planned_bytes = summary.get("planned_bytes").and_then(Value::as_u64);
        self.peak_bytes = summary.get("peak_bytes").and_then(Value::as_u64);
        self.tok_per_s = summary.get("tok_per_s").and_then(Value::as_f64);
        self.loss_first = summary.get("first_loss").and_then(Value::as_f64);
        self.loss_final = summary.get("final_loss").and_then(Value::as_f64);
    }

    /// Appends `what` to `error` (a method can fail in more than one measure).
    pub fn add_error(&mut self, what: impl Into<String>) {
        let what = what.into();
        self.error = Some(match self.error.take() {
            Some(e) => format!("{e}; {what}"),
            None => what,
        });
    }

    /// Whether this is the base model's row ([`BASE_ROW`]), not a method's.
    pub fn is_base(&self) -> bool {
        self.method == BASE_ROW
    }

    /// The memory measure the score uses: the peak, else the plan.
    fn memory(&self) -> Option<f64> {
        self.peak_bytes.or(self.planned_bytes).map(|b| b as f64)
    }
}

/// `methods` as given: `all`, or a comma-separated list of known names, without repeats;
/// `lora` is put first when missing (it is the score's baseline).
pub fn parse_methods(list: &str) -> Result<Vec<String>> {
    let mut picked: Vec<String> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let name = name.to_ascii_lowercase();
        if name == "all" {
            picked.extend(Method::NAMES.iter().map(|s| s.to_string()));
        } else if Method::NAMES.contains(&name.as_str()) {
            picked.push(name);
        } else {
            return Err(Error::Invalid(format!(
                "--methods: unknown method `{name}` (known: all, {})",
                Method::NAMES.join(", ")
            )));
        }
    }
    if picked.is_empty() {
        return Err(Error::Invalid("--methods: no method given".into()));
    }
    let mut unique: Vec<String> = Vec::with_capacity(picked.len() + 1);
    if !picked.iter().any(|m| m == BASELINE) {
        unique.push(BASELINE.to_owned());
    }
    for m in picked {
        if !unique.contains(&m) {
            unique.push(m);
        }
    }
    Ok(unique)
}

/// Sets every result's `score` (see the module doc); `None` for failed methods, for the base
/// row, and when the baseline has no result.
pub fn score(results: &mut [MethodResult]) {
    let base = results
        .iter()
        .find(|r| r.method == BASELINE && r.error.is_none())
        .cloned();
    for r in results.iter_mut() {
        r.score = match (&base, &r.error) {
            (Some(b), None) if !r.is_base() => score_against(r, b),
            _ => None,
        };
    }
}

/// The geometric mean of the available factors of `m` against `base`.
pub fn score_against(m: &MethodResult, base: &MethodResult) -> Option<f64> {
    let ratio = |num: Option<f64>, den: Option<f64>| match (num, den) {
        (Some(n), Some(d)) if n > 0.0 && d > 0.0 && n.is_finite() && d.is_finite() => Some(n / d),
        _ => None,
    };
    let bytes = |b: Option<u64>| b.map(|v| v as f64);
    let quality = match (base.heldout_loss, m.heldout_loss) {
        (Some(b), Some(x)) if b.is_finite() && x.is_finite() => Some((b - x).exp()),
        _ => None,
    };
    let factors: Vec<f64> = [
        ratio(base.memory(), m.memory()),
        ratio(bytes(base.adapter_bytes), bytes(m.adapter_bytes)),
        ratio(m.tok_per_s, base.tok_per_s),
        quality,
    ]
    .into_iter()
    .flatten()
    .collect();
    if factors.is_empty() {
        return None;
    }
    let log_mean = factors.iter().map(|f| f.ln()).sum::<f64>() / factors.len() as f64;
    Some(log_mean.exp())
}

/// The results as a markdown table (one row per method, the base row as `base (no adapter)`;
/// `—` for a missing measure, and the errors after the table).
pub fn markdown_table(results: &[MethodResult]) -> String {
    let mib = |b: Option<u64>| b.map_or("—".into(), |v| format!("{:.1}", v as f64 / 1048576.0));
    let kib = |b: Option<u64>| b.map_or("—".into(), |v| format!("{:.1}", v as f64 / 1024.0));
    let f = |x: Option<f64>, d: usize| x.map_or("—".into(), |v| format!("{v:.d$}"));
    let pct = |x: Option<f64>| x.map_or("—".into(), |v| format!("{:.0}%", v * 100.0));
    let mut out = String::from(
        "| method | trainable params | planned MiB | peak MiB | adapter KiB | tok/s | final loss | held-out loss | held-out pass | retention | score |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let label = if r.is_base() {
            format!("{} (no adapter)", r.method)
        } else {
            r.method.clone()
        };
        out.push_str(&format!(
            "| {label}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            if r.error.is_some() { " (failed)" } else { "" },
            r.trainable_params.map_or("—".into(), |v| v.to_string()),
            mib(r.planned_bytes),
            mib(r.peak_bytes),
            kib(r.adapter_bytes),
            f(r.tok_per_s, 0),
            f(r.loss_final, 4),
            f(r.heldout_loss, 4),
            pct(r.eval_pass_rate),
            pct(r.retention_pass_rate),
            f(r.score, 3),
        ));
    }
    let failed: Vec<&MethodResult> = results.iter().filter(|r| r.error.is_some()).collect();
    if !failed.is_empty() {
        out.push('\n');
        for r in failed {
            let e = r.error.as_deref().unwrap_or_default();
            out.push_str(&format!("- {}: {}\n", r.method, e.replace('\n', " ")));
        }
    }
    out
}

/// What each method's run was given beyond the common flags, one markdown line per method:
/// its learning rate, its `--method-opt`s and its wall time.
pub fn run_settings(results: &[MethodResult]) -> String {
    let mut out = String::new();
    for r in results.iter().filter(|r| !r.is_base()) {
        let mut parts = Vec::new();
        if let Some(lr) = r.lr {
            parts.push(format!("lr {lr:e}"));
        }
        if !r.method_opts.is_empty() {
            parts.push(r.method_opts.join(" "));
        }
        if let Some(t) = r.train_seconds {
            parts.push(format!("trained in {t:.0} s"));
        }
        if let Some(t) = r.measure_seconds {
            parts.push(format!("measured in {t:.0} s"));
        }
        out.push_str(&format!("- {}: {}\n", r.method, parts.join(", ")));
    }
    out
}

/// The deployable adapter's files in a checkpoint directory: the plain low-rank export
/// (`adapter.json` + `adapter.safetensors`) when the method has one, else the method state
/// (`method.json` + `method.safetensors`: DoRA, HiRA, which only merge). The optimizer state,
/// the run state, and a method's training-only state beside a low-rank export are not counted.
pub const ADAPTER_FILES: [&str; 2] = ["adapter.json", "adapter.safetensors"];
pub const METHOD_FILES: [&str; 2] = ["method.json", "method.safetensors"];

/// Bytes on disk of the deployable adapter in `checkpoint` (see [`ADAPTER_FILES`]).
pub fn adapter_bytes(checkpoint: &Path) -> Result<u64> {
    let files = if checkpoint.join(ADAPTER_FILES[1]).is_file() {
        ADAPTER_FILES
    } else {
        METHOD_FILES
    };
    files.iter().try_fold(0u64, |total, name| {
        let path = checkpoint.join(name);
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        Ok(total + meta.len())
    })
}

/// A dataset cut into what is trained on (written to `train_path`) and the held-out records.
#[derive(Clone, Debug)]
pub struct Split {
    pub train_path: PathBuf,
    pub train_records: usize,
    pub heldout: Dataset,
}

/// Cuts the dataset at `data` so the last `⌈fraction · n⌉` records (at least 1, and at least 1
/// left to train on) are held out; the training records are written to `dir` in a file the
/// trainer reads the same way (JSONL records, or a `.txt` file's paragraphs, as they were).
pub fn split_data(data: &Path, dir: &Path, fraction: f64) -> Result<Split> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::Invalid(format!(
            "held-out fraction must be in (0, 1), got {fraction}"
        )));
    }
    let text = std::fs::read_to_string(data).map_err(|e| Error::io(data, e))?;
    let mut dataset = formats::parse_str(data, &text, None)?;
    let n = dataset.len();
    if n < 2 {
        return Err(Error::Invalid(format!(
            "{}: {n} record(s); compare needs at least 2 (one to train on, one held out)",
            data.display()
        )));
    }
    let held = ((n as f64 * fraction).ceil() as usize).clamp(1, n - 1);
    let n_train = n - held;
    let is_txt = data
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("txt"));
    let is_array = text.trim_start().starts_with('[');
    let (name, body) = if is_array && !is_txt {
        // A JSON array: its first records, one per line.
        let all: Vec<Value> = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: {e}", data.display())))?;
        let mut body = String::new();
        for v in all.iter().take(n_train) {
            body.push_str(&v.to_string());
            body.push('\n');
        }
        ("train.jsonl", body)
    } else {
        // JSONL or text: every line before the first held-out record's line.
        let first_held = dataset.examples[n_train].line;
        let body: String = text
            .lines()
            .take(first_held.saturating_sub(1))
            .map(|l| format!("{l}\n"))
            .collect();
        (if is_txt { "train.txt" } else { "train.jsonl" }, body)
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let train_path = dir.join(name);
    std::fs::write(&train_path, body).map_err(|e| Error::io(&train_path, e))?;
    dataset.examples.drain(..n_train);
    Ok(Split {
        train_path,
        train_records: n_train,
        heldout: dataset,
    })
}

/// The held-out set read from its own file (`--heldout-data`): every record of `data` is
/// trained on, every record of `heldout` is held out.
pub fn split_from_file(data: &Path, heldout: &Path) -> Result<Split> {
    let read = |path: &Path| -> Result<Dataset> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        formats::parse_str(path, &text, None)
    };
    let train = read(data)?;
    let held = read(heldout)?;
    if held.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no held-out record",
            heldout.display()
        )));
    }
    Ok(Split {
        train_path: data.to_path_buf(),
        train_records: train.len(),
        heldout: held,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(method: &str, peak: u64, disk: u64, tps: f64, loss: f64) -> MethodResult {
        MethodResult {
            peak_bytes: Some(peak),
            adapter_bytes: Some(disk),
            tok_per_s: Some(tps),
            heldout_loss: Some(loss),
            ..MethodResult::new(method)
        }
    }

    #[test]
    fn score_is_one_for_lora_and_a_geometric_mean_otherwise() {
        let mut rs = vec![
            r("lora", 1000, 100, 50.0, 2.0),
            // Half the memory, same else: 2^(1/4).
            r("dora", 500, 100, 50.0, 2.0),
            // Double disk, half speed, loss lower by ln 4: (0.5 · 0.5 · 4)^(1/4) = 1.
            r("hira", 1000, 200, 25.0, 2.0 - 4f64.ln()),
            MethodResult {
                error: Some("boom".into()),
                ..r("pissa", 1, 1, 1.0, 1.0)
            },
        ];
        score(&mut rs);
        assert_eq!(rs[0].score, Some(1.0));
        assert!((rs[1].score.unwrap() - 2f64.powf(0.25)).abs() < 1e-12);
        assert!((rs[2].score.unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(rs[3].score, None);
        // Without a LoRA result nothing is scored.
        let mut rs = vec![r("dora", 1, 1, 1.0, 1.0)];
        score(&mut rs);
        assert_eq!(rs[0].score, None);
    }

    #[test]
    fn the_base_row_is_never_scored_and_shows_in_the_table() {
        let mut rs = vec![
            MethodResult {
                heldout_loss: Some(3.0),
                eval_pass_rate: Some(0.25),
                retention_pass_rate: Some(0.75),
                ..MethodResult::new(BASE_ROW)
            },
            r("lora", 1000, 100, 50.0, 2.0),
        ];
        rs[1].retention_pass_rate = Some(0.5);
        rs[1].lr = Some(2e-4);
        rs[1].method_opts = vec!["--decay=cosine".into()];
        rs[1].train_seconds = Some(12.4);
        score(&mut rs);
        assert_eq!(rs[0].score, None);
        assert_eq!(rs[1].score, Some(1.0));
        let table = markdown_table(&rs);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].contains("| held-out pass | retention | score |"),
            "{table}"
        );
        assert!(
            lines[2].starts_with("| base (no adapter) | — |")
                && lines[2].contains("| 25% | 75% | — |"),
            "{table}"
        );
        assert!(lines[3].contains("| 50% | 1.000 |"), "{table}");
        let settings = run_settings(&rs);
        assert_eq!(
            settings,
            "- lora: lr 2e-4, --decay=cosine, trained in 12 s\n"
        );
    }

    #[test]
    fn results_written_before_the_new_fields_still_parse() {
        let old = r#"[{"method": "lora", "trainable_params": 10, "planned_bytes": null,
            "peak_bytes": null, "adapter_bytes": null, "tok_per_s": 1.5, "loss_first": null,
            "loss_final": null, "heldout_loss": 2.0, "eval_pass_rate": 0.5, "score": 1.0,
            "error": null}]"#;
        let rs: Vec<MethodResult> = serde_json::from_str(old).unwrap();
        assert_eq!(rs[0].retention_pass_rate, None);
        assert!(rs[0].method_opts.is_empty());
        // And the new fields are written.
        let v = serde_json::to_value(&rs[0]).unwrap();
        for key in [
            "retention_pass_rate",
            "lr",
            "train_seconds",
            "measure_seconds",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn a_separate_heldout_file_keeps_every_training_record() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d.jsonl");
        let held = dir.path().join("h.jsonl");
        let rec = |i: usize| format!("{{\"instruction\": \"q{i}\", \"output\": \"a{i}\"}}\n");
        std::fs::write(&data, (0..5).map(rec).collect::<String>()).unwrap();
        std::fs::write(&held, (5..7).map(rec).collect::<String>()).unwrap();
        let split = split_from_file(&data, &held).unwrap();
        assert_eq!(split.train_path, data);
        assert_eq!(split.train_records, 5);
        assert_eq!(split.heldout.len(), 2);
        let missing = dir.path().join("nope.jsonl");
        let e = split_from_file(&data, &missing).unwrap_err().to_string();
        assert!(e.contains("nope.jsonl"), "{e}");
    }

    #[test]
    fn missing_factors_are_left_out() {
        let base = r("lora", 1000, 100, 50.0, 2.0);
        let m = MethodResult {
            peak_bytes: Some(250),
            ..MethodResult::new("x")
        };
        assert!((score_against(&m, &base).unwrap() - 4.0).abs() < 1e-12);
        assert_eq!(score_against(&MethodResult::new("y"), &base), None);
    }

    #[test]
    fn adapter_bytes_counts_the_deployable_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let put =
            |name: &str, n: usize| std::fs::write(dir.path().join(name), vec![0u8; n]).unwrap();
        put("method.json", 5);
        put("method.safetensors", 700);
        put("optimizer.bin", 9000);
        put("state.json", 40);
        assert_eq!(adapter_bytes(dir.path()).unwrap(), 705);
        put("adapter.json", 30);
        put("adapter.safetensors", 300);
        assert_eq!(adapter_bytes(dir.path()).unwrap(), 330);
        std::fs::remove_file(dir.path().join("adapter.json")).unwrap();
        let e = adapter_bytes(dir.path()).unwrap_err().to_string();
        assert!(e.contains("adapter.json"), "{e}");
    }

    #[test]
    fn methods_list_puts_lora_first_and_rejects_unknown_names() {
        assert_eq!(
            parse_methods("dora, hira,dora").unwrap(),
            ["lora", "dora", "hira"]
        );
        assert_eq!(parse_methods("all").unwrap().len(), Method::NAMES.len());
        assert_eq!(parse_methods("hira,lora").unwrap(), ["hira", "lora"]);
        let e = parse_methods("lora,qqlora").unwrap_err().to_string();
        assert!(e.contains("qqlora"), "{e}");
        assert!(parse_methods(" , ").is_err());
    }
}
