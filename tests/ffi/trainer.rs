//! The step-by-step trainer of the C ABI (`et_trainer_*`) called the way C calls it: steps in
//! several calls against one call and against `et_train`'s metrics, resuming from its
//! checkpoint, cancellation, exports read back and used for generation, NULLs and bad or
//! mismatched configurations.
#![cfg(feature = "ffi")]

use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};
use std::sync::Arc;

use edgetune::adapters::LoraConfig;
use edgetune::export::{AdapterFormat, detect_format, load_any, save_adapter};
use edgetune::ffi::EtStatus;
use edgetune::ffi::adapter::et_model_set_adapter;
use edgetune::ffi::model::{
    EtModel, et_generate, et_generate_default_options, et_model_free, et_model_open,
};
use edgetune::ffi::progress::EtProgress;
use edgetune::ffi::train::{et_train, et_train_latest_checkpoint};
use edgetune::ffi::trainer::{
    EtTrainer, et_trainer_checkpoint, et_trainer_completed, et_trainer_export, et_trainer_free,
    et_trainer_new, et_trainer_step, et_trainer_total_steps,
};
use edgetune::gguf::GgufFile;
use edgetune::infer::{GenerateOptions, SamplingParams, generate};
use edgetune::model::{Llama, LlamaConfig};
use edgetune::testmodel::{TINY, WeightTypes, write_test_model};
use edgetune::tokenizer::Tokenizer;
use edgetune::tokenizer::chat_template::PromptFormat;
use edgetune::train::AdapterSet;

use crate::{c, last_error};

/// A tiny model and a small JSONL dataset in `dir`.
fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let model = dir.join("tiny.gguf");
    write_test_model(&TINY, WeightTypes::parse("q8_0").unwrap(), 5, &model).unwrap();
    let data = dir.join("d.jsonl");
    let lines: Vec<String> = (0..24)
        .map(|i| format!("{{\"text\": \"sensor {i} reads {} degrees, ok\"}}", 20 + i))
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    (model, data)
}

/// The JSON configuration of a short run (`model` left out when `model` is None).
fn config(model: Option<&Path>, data: &Path, out: &Path, steps: u64, extra: &str) -> String {
    let model = model.map_or(String::new(), |m| {
        format!("\"model\": {:?}, ", m.to_str().unwrap())
    });
    format!(
        "{{{model}\"data\": {:?}, \"out\": {:?}, \"steps\": {steps}, \"seq_len\": 32, \
         \"lr\": 0.01, \"lora\": {{\"rank\": 2, \"alpha\": 4}}{extra}}}",
        data.to_str().unwrap(),
        out.to_str().unwrap()
    )
}

/// `et_trainer_new`, asserting success.
fn new_trainer(model: *const EtModel, cfg: &str) -> *mut EtTrainer {
    let mut t = null_mut();
    let st = unsafe { et_trainer_new(model, c(cfg).as_ptr(), &mut t) };
    assert_eq!(st, EtStatus::Ok, "{}", last_error());
    assert!(!t.is_null());
    t
}

/// What the progress callback saw; it asks to stop once `stop_after` reports arrived.
#[derive(Default)]
struct Seen {
    reports: Vec<EtProgress>,
    stop_after: Option<usize>,
}

unsafe extern "C" fn record(p: *const EtProgress, user: *mut c_void) -> c_int {
    // SAFETY: the tests pass a `Seen`; `p` is valid during the call.
    let seen = unsafe { &mut *(user as *mut Seen) };
    seen.reports.push(unsafe { *p });
    seen.stop_after.is_some_and(|n| seen.reports.len() >= n) as c_int
}

/// `et_trainer_step(t, n)` recording into `seen`: (status, steps done).
fn step(t: *mut EtTrainer, n: u64, seen: &mut Seen) -> (EtStatus, u64) {
    let mut done = u64::MAX;
    let user = seen as *mut Seen as *mut c_void;
    let st = unsafe { et_trainer_step(t, n, Some(record), user, &mut done) };
    (st, done)
}

fn counts(t: *mut EtTrainer) -> (u64, u64) {
    let (mut done, mut total) = (u64::MAX, u64::MAX);
    assert_eq!(unsafe { et_trainer_completed(t, &mut done) }, EtStatus::Ok);
    assert_eq!(
        unsafe { et_trainer_total_steps(t, &mut total) },
        EtStatus::Ok
    );
    (done, total)
}

fn losses(seen: &Seen) -> Vec<f32> {
    seen.reports.iter().map(|p| p.loss).collect()
}

/// `(step, loss)` of each line of `out/metrics.jsonl`.
fn metrics_lines(out: &Path) -> Vec<(u64, f32)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v = serde_json::from_str::<serde_json::Value>(l).unwrap();
            (
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

#[test]
fn steps_in_two_calls_equal_one_call_and_et_train() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture(dir.path());

    let one = new_trainer(
        null(),
        &config(Some(&model), &data, &dir.path().join("one"), 4, ""),
    );
    assert_eq!(counts(one), (0, 4));
    let mut all = Seen::default();
    assert_eq!(
        step(one, 4, &mut all),
        (EtStatus::Ok, 4),
        "{}",
        last_error()
    );
    assert_eq!(counts(one), (4, 4));
    let steps: Vec<u64> = all.reports.iter().map(|p| p.step).collect();
    assert_eq!(steps, [1, 2, 3, 4]);
    assert!(
        all.reports
            .iter()
            .all(|p| p.total_steps == 4 && p.loss.is_finite())
    );
    // The run is over: more steps make none, and that is not an error.
    assert_eq!(step(one, 3, &mut all), (EtStatus::Ok, 0));
    assert_eq!(all.reports.len(), 4);

    // The same run from a model handle (no "model" in the JSON), in two calls.
    let m = open(&model);
    let two = new_trainer(m, &config(None, &data, &dir.path().join("two"), 4, ""));
    unsafe { et_model_free(m) }; // the trainer maps the file itself
    let mut split = Seen::default();
    assert_eq!(step(two, 1, &mut split), (EtStatus::Ok, 1));
    assert_eq!(step(two, 3, &mut split), (EtStatus::Ok, 3));
    assert_eq!(losses(&split), losses(&all));
    // The handle writes metrics.jsonl as `edgetune train` does, one line per step.
    let want: Vec<(u64, f32)> = (1..=4).zip(losses(&all)).collect();
    assert_eq!(metrics_lines(&dir.path().join("two")), want);
    // A zero-step call is a no-op.
    assert_eq!(step(two, 0, &mut split), (EtStatus::Ok, 0));
    unsafe {
        et_trainer_free(one);
        et_trainer_free(two);
        et_trainer_free(null_mut());
    }

    // et_train (the whole run in one call) writes the same losses to metrics.jsonl.
    let out = dir.path().join("whole");
    let st = unsafe {
        et_train(
            c(&config(Some(&model), &data, &out, 4, "")).as_ptr(),
            None,
            null_mut(),
        )
    };
    assert_eq!(st, EtStatus::Ok, "{}", last_error());
    let want: Vec<f32> = metrics_lines(&out).into_iter().map(|(_, l)| l).collect();
    assert_eq!(losses(&all), want);
}

#[test]
fn a_checkpoint_resumes_where_the_trainer_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture(dir.path());
    let reference = new_trainer(
        null(),
        &config(Some(&model), &data, &dir.path().join("ref"), 4, ""),
    );
    let mut want = Seen::default();
    assert_eq!(step(reference, 4, &mut want).0, EtStatus::Ok);
    unsafe { et_trainer_free(reference) };

    let out = dir.path().join("run");
    let first = new_trainer(null(), &config(Some(&model), &data, &out, 4, ""));
    let mut seen = Seen::default();
    assert_eq!(step(first, 2, &mut seen), (EtStatus::Ok, 2));
    let mut buf = [0 as c_char; 1024];
    let mut len = 0usize;
    let st = unsafe { et_trainer_checkpoint(first, buf.as_mut_ptr(), buf.len(), &mut len) };
    assert_eq!(st, EtStatus::Ok, "{}", last_error());
    let ckpt = unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        Path::new(&ckpt),
        out.join("checkpoints").join("step-00000002")
    );
    assert_eq!(len, ckpt.len());
    // et_train_latest_checkpoint finds the same directory.
    let mut latest = [0 as c_char; 1024];
    let o = c(out.to_str().unwrap());
    let st =
        unsafe { et_train_latest_checkpoint(o.as_ptr(), latest.as_mut_ptr(), 1024, null_mut()) };
    assert_eq!(st, EtStatus::Ok, "{}", last_error());
    assert_eq!(
        unsafe { CStr::from_ptr(latest.as_ptr()) }.to_str().unwrap(),
        ckpt
    );
    unsafe { et_trainer_free(first) };

    let resumed = new_trainer(
        null(),
        &config(Some(&model), &data, &out, 4, ", \"resume\": true"),
    );
    assert_eq!(counts(resumed), (2, 4));
    assert_eq!(step(resumed, 10, &mut seen), (EtStatus::Ok, 2));
    assert_eq!(losses(&seen), losses(&want));
    let steps: Vec<u64> = seen.reports.iter().map(|p| p.step).collect();
    assert_eq!(steps, [1, 2, 3, 4]);
    // Resuming kept metrics.jsonl's first two lines and appended the last two.
    let want_lines: Vec<(u64, f32)> = (1..=4).zip(losses(&want)).collect();
    assert_eq!(metrics_lines(&out), want_lines);

    // Checkpointing without a buffer: written, only the length comes back.
    let mut len = 0usize;
    let st = unsafe { et_trainer_checkpoint(resumed, null_mut(), 0, &mut len) };
    assert_eq!(st, EtStatus::Ok, "{}", last_error());
    let step4 = out.join("checkpoints").join("step-00000004");
    assert!(step4.is_dir());
    assert_eq!(len, step4.to_str().unwrap().len());
    // Too small a buffer: still written, the length comes back.
    let mut tiny = [0 as c_char; 4];
    let st = unsafe { et_trainer_checkpoint(resumed, tiny.as_mut_ptr(), 4, &mut len) };
    assert_eq!(st, EtStatus::BufferTooSmall);
    assert_eq!(len, step4.to_str().unwrap().len());
    assert_eq!(tiny[0], 0);
    // The run directory is the trainer's until it is freed (run_dir.rs's lock).
    unsafe { et_trainer_free(resumed) };

    // Resuming with other settings is refused, naming them.
    let mut t = null_mut();
    let cfg = config(
        Some(&model),
        &data,
        &out,
        4,
        ", \"resume\": true, \"lr\": 0.5",
    );
    let cfg = cfg.replace("\"lr\": 0.01, ", "");
    let st = unsafe { et_trainer_new(null(), c(&cfg).as_ptr(), &mut t) };
    assert_eq!(st, EtStatus::InvalidArgument);
    assert!(last_error().contains("lr"), "{}", last_error());
    assert!(t.is_null());
}

#[test]
fn the_callback_stops_a_call_and_save_every_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture(dir.path());
    let out = dir.path().join("run");
    let t = new_trainer(
        null(),
        &config(Some(&model), &data, &out, 5, ", \"save_every\": 2"),
    );
    let mut seen = Seen {
        stop_after: Some(3),
        ..Seen::default()
    };
    assert_eq!(step(t, 5, &mut seen), (EtStatus::Cancelled, 3));
    assert!(last_error().contains("after step 3"), "{}", last_error());
    assert_eq!(counts(t), (3, 5));
    let names: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["step-00000002"]);
    // The trainer goes on after a cancelled call; NULL progress is allowed.
    let mut done = 0;
    let st = unsafe { et_trainer_step(t, 5, None, null_mut(), &mut done) };
    assert_eq!((st, done), (EtStatus::Ok, 2), "{}", last_error());
    assert!(out.join("checkpoints").join("step-00000004").is_dir());
    unsafe { et_trainer_free(t) };
}

fn open(path: &Path) -> *mut EtModel {
    let mut m = null_mut();
    let st = unsafe { et_model_open(c(path.to_str().unwrap()).as_ptr(), &mut m) };
    assert_eq!(st, EtStatus::Ok, "{}", last_error());
    m
}

/// Every adapter's dense ΔW (invariant to how an export folds the scale into B).
fn deltas(set: &AdapterSet) -> Vec<Vec<f32>> {
    set.iter()
        .map(|(_, _, a)| {
            let mut dw = vec![0f32; a.in_features() * a.out_features()];
            a.delta_weight(&mut dw).unwrap();
            dw
        })
        .collect()
}

fn assert_close(want: &[Vec<f32>], got: &[Vec<f32>]) {
    assert_eq!(want.len(), got.len());
    for (w, g) in want.iter().zip(got) {
        for (x, y) in w.iter().zip(g) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "{x} vs {y}");
        }
    }
}

#[test]
fn exports_read_back_equal_and_generate_like_the_rust_api() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture(dir.path());
    let cfg = LlamaConfig::from_gguf(&GgufFile::open(&model).unwrap()).unwrap();
    let out = dir.path().join("run");
    let t = new_trainer(null(), &config(Some(&model), &data, &out, 3, ""));
    assert_eq!(step(t, 3, &mut Seen::default()).0, EtStatus::Ok);
    let mut buf = [0 as c_char; 1024];
    assert_eq!(
        unsafe { et_trainer_checkpoint(t, buf.as_mut_ptr(), 1024, null_mut()) },
        EtStatus::Ok
    );
    let ckpt = PathBuf::from(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap());
    let reference = load_any(&ckpt, &cfg).unwrap();
    let want = deltas(&reference);
    // Trained: B is no longer zero, so equal deltas below are not zero against zero.
    assert!(want.iter().flatten().any(|v| v.abs() > 1e-6));

    let export = |format: &str, path: &Path| unsafe {
        et_trainer_export(t, c(format).as_ptr(), c(path.to_str().unwrap()).as_ptr())
    };
    for (format, path, kind) in [
        ("native", dir.path().join("native"), AdapterFormat::Native),
        ("gguf", dir.path().join("lora.gguf"), AdapterFormat::Gguf),
        ("peft", dir.path().join("peft"), AdapterFormat::Peft),
    ] {
        assert_eq!(
            export(format, &path),
            EtStatus::Ok,
            "{format}: {}",
            last_error()
        );
        assert_eq!(detect_format(&path).unwrap().0, kind);
        assert_close(&want, &deltas(&load_any(&path, &cfg).unwrap()));
    }
    assert_eq!(
        export("onnx", &dir.path().join("x")),
        EtStatus::InvalidArgument
    );
    assert!(last_error().contains("onnx"), "{}", last_error());
    assert!(!dir.path().join("x").exists());
    unsafe { et_trainer_free(t) };

    // The exported adapter on a model handle generates what the Rust API does with it.
    let m = open(&model);
    let native = c(dir.path().join("native").to_str().unwrap());
    assert_eq!(
        unsafe { et_model_set_adapter(m, native.as_ptr()) },
        EtStatus::Ok,
        "{}",
        last_error()
    );
    let mut opts = et_generate_default_options();
    opts.max_tokens = 10;
    let mut text = vec![0 as c_char; 4096];
    let prompt = c("sensor 3 reads");
    let st = unsafe {
        et_generate(
            m,
            prompt.as_ptr(),
            &opts,
            text.as_mut_ptr(),
            4096,
            null_mut(),
        )
    };
    assert_eq!(st, EtStatus::Ok, "{}", last_error());
    let got = unsafe { CStr::from_ptr(text.as_ptr()) }
        .to_str()
        .unwrap()
        .to_owned();
    unsafe { et_model_free(m) };

    let file = GgufFile::open(&model).unwrap();
    let mut llama = Llama::load(&file).unwrap();
    llama.set_adapters(Some(Arc::new(reference))).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    // et_generate's default format: the model's chat template.
    let ids = PromptFormat::of_model(&file, &tok)
        .unwrap()
        .encode(&tok, "sensor 3 reads")
        .unwrap();
    let gen_opts = GenerateOptions {
        max_tokens: 10,
        sampling: SamplingParams {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            seed: 0,
        },
        stop_at_eos: true,
    };
    assert_eq!(
        got,
        generate(&llama, &tok, &ids, &gen_opts, |_| true)
            .unwrap()
            .text
    );
}

/// `et_trainer_new` expecting failure: (status, message); the out pointer stays NULL.
fn new_fails(model: *const EtModel, cfg: Option<&str>) -> (EtStatus, String) {
    let mut t = std::ptr::dangling_mut::<EtTrainer>(); // not NULL: the call must reset it
    let cfg = cfg.map(c);
    let st = unsafe { et_trainer_new(model, cfg.as_ref().map_or(null(), |s| s.as_ptr()), &mut t) };
    assert_ne!(st, EtStatus::Ok);
    assert!(t.is_null());
    (st, last_error())
}

#[test]
fn bad_nulls_json_and_mismatched_configurations_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = fixture(dir.path());
    let out = dir.path().join("run");
    let good = config(Some(&model), &data, &out, 2, "");

    let (st, msg) = new_fails(null(), None);
    assert_eq!(st, EtStatus::NullPointer);
    assert!(msg.contains("`config_json`"), "{msg}");
    let st = unsafe { et_trainer_new(null(), c(&good).as_ptr(), null_mut()) };
    assert_eq!(st, EtStatus::NullPointer);
    assert!(last_error().contains("`out_trainer`"), "{}", last_error());

    let (st, msg) = new_fails(null(), Some("{\"steps\": 2,"));
    assert_eq!(st, EtStatus::InvalidArgument);
    assert!(msg.contains("JSON"), "{msg}");
    let (st, msg) = new_fails(null(), Some(&good.replace("\"steps\"", "\"stepz\"")));
    assert_eq!(st, EtStatus::InvalidArgument);
    assert!(msg.contains("stepz"), "{msg}");
    let (st, msg) = new_fails(
        null(),
        Some(&good.replace("\"seq_len\": 32", "\"seq_len\": 1")),
    );
    assert_eq!(st, EtStatus::InvalidArgument);
    assert!(msg.contains("seq-len"), "{msg}");
    let (st, msg) = new_fails(null(), Some(&config(None, &data, &out, 2, "")));
    assert_eq!(st, EtStatus::InvalidArgument);
    assert!(msg.contains("no model"), "{msg}");
    let (st, msg) = new_fails(
        null(),
        Some(&config(
            Some(&model),
            &dir.path().join("none.jsonl"),
            &out,
            2,
            "",
        )),
    );
    assert_eq!(st, EtStatus::Io);
    assert!(msg.contains("none.jsonl"), "{msg}");
    // Over budget: refused before anything is allocated.
    let (st, msg) = new_fails(
        null(),
        Some(&config(
            Some(&model),
            &data,
            &out,
            2,
            ", \"budget_bytes\": 1000",
        )),
    );
    assert_eq!(st, EtStatus::OverBudget, "{msg}");
    assert!(msg.contains("over budget"), "{msg}");
    // A dataset with a malformed line: its own status, and the message names file and line.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"text\": 3}\n").unwrap();
    let (st, msg) = new_fails(null(), Some(&config(Some(&model), &bad, &out, 2, "")));
    assert_eq!(st, EtStatus::BadInput, "{msg}");
    assert!(msg.contains("bad.jsonl:2"), "{msg}");
    // A configuration naming another model than the handle's.
    let other = dir.path().join("other.gguf");
    write_test_model(&TINY, WeightTypes::parse("q8_0").unwrap(), 6, &other).unwrap();
    let m = open(&model);
    let (st, msg) = new_fails(m, Some(&config(Some(&other), &data, &out, 2, "")));
    assert_eq!(st, EtStatus::InvalidArgument);
    assert!(
        msg.contains("other.gguf") && msg.contains("tiny.gguf"),
        "{msg}"
    );
    // The same file under another spelling is accepted.
    let same = dir.path().join(".").join("tiny.gguf");
    let t = new_trainer(m, &config(Some(&same), &data, &out, 2, ""));
    unsafe { et_model_free(m) };
    // An initial adapter made for another model (twice the feed-forward width).
    let cfg = LlamaConfig::from_gguf(&GgufFile::open(&model).unwrap()).unwrap();
    let mut wide = cfg.clone();
    wide.ffn *= 2;
    let lora = LoraConfig {
        rank: 2,
        alpha: 4.0,
        ..LoraConfig::default()
    };
    let wrong = dir.path().join("wide-adapter");
    save_adapter(
        &AdapterSet::new_lora(&wide, &lora, 1).unwrap(),
        &wrong,
        &serde_json::Value::Null,
    )
    .unwrap();
    let init = format!(", \"init_adapter\": {:?}", wrong.to_str().unwrap());
    // (Into another directory: `t` holds `out`.)
    let wide_out = dir.path().join("run-wide");
    let (st, msg) = new_fails(
        null(),
        Some(&config(Some(&model), &data, &wide_out, 2, &init)),
    );
    assert!(
        matches!(st, EtStatus::InvalidArgument | EtStatus::Format),
        "{st:?}: {msg}"
    );
    assert!(msg.contains(&wide.ffn.to_string()), "{msg}");

    // NULL handles and outputs on every call.
    let mut n = 0u64;
    assert_eq!(
        unsafe { et_trainer_step(null_mut(), 1, None, null_mut(), &mut n) },
        EtStatus::NullPointer
    );
    assert!(last_error().contains("`trainer`"), "{}", last_error());
    assert_eq!(
        unsafe { et_trainer_completed(null_mut(), &mut n) },
        EtStatus::NullPointer
    );
    assert_eq!(
        unsafe { et_trainer_total_steps(t, null_mut()) },
        EtStatus::NullPointer
    );
    assert!(last_error().contains("`out_steps`"), "{}", last_error());
    assert_eq!(
        unsafe { et_trainer_checkpoint(null_mut(), null_mut(), 0, null_mut()) },
        EtStatus::NullPointer
    );
    let st = unsafe { et_trainer_checkpoint(t, null_mut(), 8, null_mut()) };
    assert_eq!(st, EtStatus::NullPointer);
    assert!(last_error().contains("`out_buf`"), "{}", last_error());
    let p = c(dir.path().join("e").to_str().unwrap());
    assert_eq!(
        unsafe { et_trainer_export(null_mut(), c("gguf").as_ptr(), p.as_ptr()) },
        EtStatus::NullPointer
    );
    assert_eq!(
        unsafe { et_trainer_export(t, null(), p.as_ptr()) },
        EtStatus::NullPointer
    );
    assert!(last_error().contains("`format`"), "{}", last_error());
    assert_eq!(
        unsafe { et_trainer_export(t, c("gguf").as_ptr(), null()) },
        EtStatus::NullPointer
    );
    assert!(last_error().contains("`out_path`"), "{}", last_error());
    // NULL out_steps_done is allowed.
    assert_eq!(
        unsafe { et_trainer_step(t, 1, None, null_mut(), null_mut()) },
        EtStatus::Ok,
        "{}",
        last_error()
    );
    assert_eq!(counts(t), (1, 2));
    unsafe { et_trainer_free(t) };
}
