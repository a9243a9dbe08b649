//! `edgetune::compare::run` as a library, with no CLI: a runner that trains in this process
//! (what a binding would write) on a generated tiny model. The progress events arrive in order,
//! every run directory is emptied and given its flags, the rows are measured from the runs'
//! checkpoints, a method whose run fails keeps its error while the others are scored, and a
//! comparison where every method fails is an error that still leaves compare.json.

use std::path::{Path, PathBuf};

use edgetune::compare::{self, Comparison, Heldout, MethodRun, MethodRunner, Progress};
use edgetune::tokenizer::prompt_spec::PromptSpec;
use edgetune::train::{self, Method};
use edgetune::{Error, Result};

use crate::train_support;

/// Trains in this process from the flags the comparison prepared; `fail` names methods whose
/// run returns an error instead.
struct InProcess {
    fail: Vec<&'static str>,
    seen: Vec<MethodRun>,
}

impl MethodRunner for InProcess {
    fn train(&mut self, run: &MethodRun) -> Result<serde_json::Value> {
        self.seen.push(run.clone());
        assert!(
            std::fs::read_dir(&run.dir).unwrap().next().is_none(),
            "{} is not empty",
            run.dir.display()
        );
        if self.fail.contains(&run.method.as_str()) {
            return Err(Error::Invalid(format!(
                "{} refused by the test",
                run.method
            )));
        }
        let flag = |name: &str| run.flags.get(name).unwrap().to_string();
        let mut cfg = train_support::config(&run.model, &run.data, &run.dir, 0);
        cfg.steps = Some(flag("steps").parse().unwrap());
        cfg.seq_len = flag("seq-len").parse().unwrap();
        cfg.batch = flag("batch").parse().unwrap();
        cfg.lora.rank = flag("rank").parse().unwrap();
        cfg.lr = flag("lr").parse().unwrap();
        cfg.seed = flag("seed").parse().unwrap();
        cfg.method = run.method.parse::<Method>()?;
        let summary = train::run(&cfg, &mut |_| true)?;
        Ok(serde_json::to_value(&summary).unwrap())
    }
}

fn comparison(model: &Path, data: &Path, out: PathBuf, methods: &str) -> Comparison {
    Comparison {
        model: model.to_path_buf(),
        data: data.to_path_buf(),
        methods: compare::parse_methods(methods).unwrap(),
        steps: 2,
        seq_len: 256,
        batch: 1,
        rank: 4,
        lr: None,
        method_opts: vec!["rslora:lr=0.002".parse().unwrap()],
        seed: 3,
        budget: None,
        threads: None,
        suite: None,
        retention: None,
        max_tokens: 4,
        prompt: PromptSpec::default(),
        heldout: Heldout::Fraction(0.1),
        out,
    }
}

#[test]
fn compare_runs_in_process_through_a_runner() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q4_0", 30);
    let out = dir.path().join("cmp");
    // A stale file from an earlier comparison: the method's directory is emptied first.
    std::fs::create_dir_all(out.join("lora")).unwrap();
    std::fs::write(out.join("lora").join("stale.txt"), "old").unwrap();
    let cfg = comparison(&model, &data, out.clone(), "lora,rslora,dora");
    let mut runner = InProcess {
        fail: vec!["dora"],
        seen: Vec::new(),
    };
    let mut events = Vec::new();
    let outcome = compare::run(&cfg, &mut runner, &mut |p| {
        events.push(match p {
            Progress::Plan { methods, split } => {
                format!(
                    "plan {methods} {} {}",
                    split.train_records,
                    split.heldout.len()
                )
            }
            Progress::MeasuringBase => "base".to_string(),
            Progress::Training { method } => format!("train {method}"),
            Progress::Row { row } => format!("row {} {}", row.method, row.error.is_some()),
            Progress::Table { table } => format!("table {}", table.lines().count()),
        })
    })
    .unwrap();
    // 30 records: the last 3 held out.
    assert_eq!(
        events,
        [
            "plan 3 27 3",
            "base",
            "row base false",
            "train lora",
            "row lora false",
            "train rslora",
            "row rslora false",
            "train dora",
            "row dora true",
            // Header, rule, the four rows, a blank line and the failed method's error.
            "table 8",
        ]
    );

    // Each run got its method's learning rate (the default, or its --method-opt) and the
    // common settings.
    let lrs: Vec<(&str, &str)> = runner
        .seen
        .iter()
        .map(|r| (r.method.as_str(), r.flags.get("lr").unwrap()))
        .collect();
    let lora_lr = compare::opts::default_lr("lora").unwrap().to_string();
    let dora_lr = compare::opts::default_lr("dora").unwrap().to_string();
    assert_eq!(
        lrs,
        [
            ("lora", lora_lr.as_str()),
            ("rslora", "0.002"),
            ("dora", dora_lr.as_str())
        ]
    );
    assert!(
        runner
            .seen
            .iter()
            .all(|r| r.flags.get("steps") == Some("2"))
    );
    assert_eq!(runner.seen[0].dir, out.join("lora"));
    assert_eq!(runner.seen[0].data, out.join("train.jsonl"));

    let rows = &outcome.results;
    assert_eq!(
        rows.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(),
        ["base", "lora", "rslora", "dora"]
    );
    let lora = &rows[1];
    assert_eq!(lora.score, Some(1.0), "{lora:?}");
    assert!(lora.heldout_loss.is_some_and(f64::is_finite), "{lora:?}");
    assert!(lora.adapter_bytes.is_some_and(|b| b > 0), "{lora:?}");
    assert_eq!(rows[2].lr, Some(0.002));
    assert_eq!(rows[2].method_opts, ["--lr=0.002"]);
    assert!(rows[2].score.is_some_and(f64::is_finite), "{:?}", rows[2]);
    let dora = &rows[3];
    assert!(
        dora.error
            .as_deref()
            .unwrap()
            .contains("refused by the test"),
        "{dora:?}"
    );
    assert_eq!(dora.score, None);

    // The file is the rows as JSON (compared as text: serde_json's float parsing may miss the
    // last bit of a value it wrote).
    let written = std::fs::read_to_string(out.join("compare.json")).unwrap();
    assert_eq!(written, serde_json::to_string_pretty(rows).unwrap());
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains(outcome.table.trim()), "{md}");
    let svg = std::fs::read_to_string(out.join("compare.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
}

#[test]
fn compare_where_every_method_fails_is_an_error_with_its_rows_written() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q4_0", 20);
    let out = dir.path().join("cmp");
    let cfg = comparison(&model, &data, out.clone(), "lora");
    let mut runner = InProcess {
        fail: vec!["lora"],
        seen: Vec::new(),
    };
    let mut table = String::new();
    let err = compare::run(&cfg, &mut runner, &mut |p| {
        if let Progress::Table { table: t } = p {
            table = t.to_string();
        }
    })
    .unwrap_err();
    // The table still reaches the front end (the CLI prints it before the error).
    assert!(table.contains("| lora (failed) |"), "{table}");
    assert!(err.to_string().contains("every method failed"), "{err}");
    let written: Vec<compare::MethodResult> =
        serde_json::from_slice(&std::fs::read(out.join("compare.json")).unwrap()).unwrap();
    assert_eq!(written.len(), 2);
    assert!(written[0].is_base() && written[0].error.is_none());
    assert!(written[1].error.is_some());

    // No method at all is refused before anything is written.
    let empty = Comparison {
        methods: Vec::new(),
        out: dir.path().join("none"),
        ..cfg
    };
    assert!(compare::run(&empty, &mut runner, &mut |_| {}).is_err());
    assert!(!dir.path().join("none").exists());
}
