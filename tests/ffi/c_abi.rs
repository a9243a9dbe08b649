//! The C ABI (feature `ffi`) called the way C calls it: raw pointers, NULLs, status codes,
//! buffers that are too small, the per-thread last error; generation and the plan report
//! checked against the library's own API and hand-computed sizes.
#![cfg(feature = "ffi")]

use std::ffi::{CStr, CString, c_char};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};
use std::sync::Arc;

use edgetune::adapters::LoraConfig;
use edgetune::export::{AdapterFormat, detect_format, load_any, save_adapter};
use edgetune::ffi::adapter::{et_adapter_export, et_model_set_adapter};
use edgetune::ffi::train::et_train_latest_checkpoint;
use edgetune::model::LlamaConfig;
use edgetune::train::AdapterSet;

use edgetune::ffi::model::{
    EtGenerateOptions, EtModel, EtModelInfo, EtTemplate, et_generate, et_generate_default_options,
    et_model_free, et_model_info, et_model_open, et_model_stream_weights,
};
use edgetune::ffi::plan::et_plan_json;
use edgetune::ffi::{EtStatus, et_version};
use edgetune::gguf::GgufFile;
use edgetune::gguf::Value;
use edgetune::infer::{GenerateOptions, SamplingParams, generate};
use edgetune::model::Llama;
use edgetune::testmodel::{
    TINY, Vocabulary, WeightTypes, synthetic_vocab_metadata, write_test_model,
    write_test_model_with,
};
use edgetune::tokenizer::Tokenizer;
use edgetune::tokenizer::chat_template::{ChatTemplate, PromptFormat};
use edgetune::tokenizer::template::Message;
use edgetune::train::plan_llama::{TrainShape, llama_training_plan};

use crate::{c, last_error};

fn tiny_model(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.gguf");
    write_test_model(&TINY, WeightTypes::parse("q8_0").unwrap(), 5, &path).unwrap();
    path
}

/// Opens `path` through the C ABI, asserting success.
fn open(path: &Path) -> *mut EtModel {
    let p = c(path.to_str().unwrap());
    let mut m = null_mut();
    let st = unsafe { et_model_open(p.as_ptr(), &mut m) };
    assert_eq!(st, EtStatus::Ok, "{}", last_error());
    assert!(!m.is_null());
    m
}

/// Runs et_generate into a buffer of `cap` bytes: (status, text before the NUL, out_len).
fn gen_into(
    m: *const EtModel,
    prompt: &CStr,
    opts: Option<&EtGenerateOptions>,
    cap: usize,
) -> (EtStatus, String, usize) {
    // One byte past `cap` stays NUL, so the text can be read back whatever the call wrote.
    let mut buf = vec![b'x' as c_char; cap + 1];
    buf[cap] = 0;
    let mut len = usize::MAX;
    let opts = opts.map_or(null(), |o| o as *const _);
    let st = unsafe { et_generate(m, prompt.as_ptr(), opts, buf.as_mut_ptr(), cap, &mut len) };
    let text = if cap > 0 {
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    } else {
        String::new()
    };
    (st, text, len)
}

/// The same generation through the Rust API.
fn reference_generation(path: &Path, prompt: &str, o: &EtGenerateOptions) -> String {
    let file = GgufFile::open(path).unwrap();
    let llama = Llama::load(&file).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let format = match o.prompt_template {
        t if t == EtTemplate::None as u32 => PromptFormat::Plain,
        t if t == EtTemplate::Alpaca as u32 => PromptFormat::Alpaca,
        t if t == EtTemplate::Llama3Chat as u32 => PromptFormat::Llama3Chat,
        t if t == EtTemplate::Auto as u32 => PromptFormat::of_model(&file, &tok).unwrap(),
        t => panic!("no EtTemplate {t}"),
    };
    let ids = format.encode(&tok, prompt).unwrap();
    let opts = GenerateOptions {
        max_tokens: o.max_tokens as usize,
        sampling: SamplingParams {
            temperature: o.temperature,
            top_k: o.top_k as usize,
            top_p: o.top_p,
            seed: o.seed,
        },
        stop_at_eos: true,
    };
    generate(&llama, &tok, &ids, &opts, |_| true).unwrap().text
}

#[test]
fn version_is_the_crate_version() {
    let v = unsafe { CStr::from_ptr(et_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn null_arguments_are_errors_naming_the_argument() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path());
    let mut m = null_mut();
    assert_eq!(
        unsafe { et_model_open(null(), &mut m) },
        EtStatus::NullPointer
    );
    assert!(last_error().contains("`path`"), "{}", last_error());
    assert!(m.is_null());
    let p = c(path.to_str().unwrap());
    assert_eq!(
        unsafe { et_model_open(p.as_ptr(), null_mut()) },
        EtStatus::NullPointer
    );
    assert!(last_error().contains("`out_model`"), "{}", last_error());

    let mut info = EtModelInfo::default();
    assert_eq!(
        unsafe { et_model_info(null(), &mut info) },
        EtStatus::NullPointer
    );
    assert!(last_error().contains("`model`"), "{}", last_error());

    let m = open(&path);
    assert_eq!(last_error(), "", "a success clears the last error");
    assert_eq!(
        unsafe { et_model_info(m, null_mut()) },
        EtStatus::NullPointer
    );
    assert!(last_error().contains("`out_info`"), "{}", last_error());
    let mut buf = [0 as c_char; 64];
    let mut len = 0usize;
    let st = unsafe { et_generate(m, null(), null(), buf.as_mut_ptr(), 64, &mut len) };
    assert_eq!(st, EtStatus::NullPointer);
    assert!(last_error().contains("`prompt`"), "{}", last_error());
    let prompt = c("Sensor");
    let st = unsafe {
        et_generate(
            null(),
            prompt.as_ptr(),
            null(),
            buf.as_mut_ptr(),
            64,
            &mut len,
        )
    };
    assert_eq!(st, EtStatus::NullPointer);
    let st = unsafe { et_generate(m, prompt.as_ptr(), null(), null_mut(), 64, &mut len) };
    assert_eq!(st, EtStatus::NullPointer);
    assert!(last_error().contains("`out_buf`"), "{}", last_error());
    let st = unsafe { et_plan_json(null(), null(), buf.as_mut_ptr(), 64, &mut len) };
    assert_eq!(st, EtStatus::InvalidArgument, "no model path anywhere");
    assert!(last_error().contains("model"), "{}", last_error());
    unsafe {
        et_model_free(m);
        et_model_free(null_mut());
    }
}

#[test]
fn missing_and_malformed_files_have_their_own_codes() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.gguf");
    let p = c(missing.to_str().unwrap());
    let mut m = null_mut();
    assert_eq!(unsafe { et_model_open(p.as_ptr(), &mut m) }, EtStatus::Io);
    assert!(last_error().contains("nope.gguf"), "{}", last_error());
    assert!(m.is_null());

    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\0\0\0 not really").unwrap();
    let p = c(junk.to_str().unwrap());
    assert_eq!(
        unsafe { et_model_open(p.as_ptr(), &mut m) },
        EtStatus::Format
    );
    assert!(last_error().contains("junk.gguf"), "{}", last_error());
}

#[test]
fn the_last_error_is_per_thread() {
    let mut m = null_mut();
    assert_eq!(
        unsafe { et_model_open(null(), &mut m) },
        EtStatus::NullPointer
    );
    let other = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(other, "");
    assert!(!last_error().is_empty());
}

#[test]
fn info_matches_the_preset() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path());
    let m = open(&path);
    let mut info = EtModelInfo::default();
    assert_eq!(unsafe { et_model_info(m, &mut info) }, EtStatus::Ok);
    let want = TINY.llama_config();
    assert_eq!(info.n_layer as usize, want.n_layer);
    assert_eq!(info.dim as usize, want.dim);
    assert_eq!(info.n_head as usize, want.n_head);
    assert_eq!(info.n_head_kv as usize, want.n_head_kv);
    assert_eq!(info.head_dim as usize, want.head_dim);
    assert_eq!(info.ffn as usize, want.ffn);
    assert_eq!(info.n_vocab as usize, want.n_vocab);
    assert_eq!(info.context_length as usize, want.context_length);
    // The tensor data is the file after the data offset, less at most one alignment of
    // padding per tensor.
    let f = GgufFile::open(&path).unwrap();
    let data = f.file_size() - f.data_offset();
    let slack = f.tensors().len() as u64 * f.alignment();
    assert!(
        info.weight_bytes <= data && info.weight_bytes + slack >= data,
        "{info:?} {data}"
    );
    unsafe { et_model_free(m) };
}

#[test]
fn generate_matches_the_rust_api_and_reports_small_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path());
    let m = open(&path);
    let prompt = c("Sensor 3 reads");
    let mut opts = et_generate_default_options();
    opts.max_tokens = 12;
    let want = reference_generation(&path, "Sensor 3 reads", &opts);
    assert!(!want.is_empty());

    let (st, text, len) = gen_into(m, &prompt, Some(&opts), 4096);
    assert_eq!(st, EtStatus::Ok, "{}", last_error());
    assert_eq!(text, want);
    assert_eq!(len, want.len());

    // Length query, one byte short (no room for the NUL), then exactly enough.
    let (st, _, len) = gen_into(m, &prompt, Some(&opts), 0);
    assert_eq!(st, EtStatus::BufferTooSmall);
    assert_eq!(len, want.len());
    let (st, text, len) = gen_into(m, &prompt, Some(&opts), want.len());
    assert_eq!(st, EtStatus::BufferTooSmall);
    assert_eq!(
        (text.as_str(), len),
        ("", want.len()),
        "a short buffer gets an empty string"
    );
    assert!(
        last_error().contains(&format!("needs {} bytes", want.len() + 1)),
        "{}",
        last_error()
    );
    let (st, text, _) = gen_into(m, &prompt, Some(&opts), want.len() + 1);
    assert_eq!(st, EtStatus::Ok);
    assert_eq!(text, want);

    // NULL options are the defaults (128 tokens).
    let (st, text, _) = gen_into(m, &prompt, None, 1 << 16);
    assert_eq!(st, EtStatus::Ok);
    assert_eq!(
        text,
        reference_generation(&path, "Sensor 3 reads", &et_generate_default_options())
    );

    // Sampling and the Alpaca template go through too.
    opts.temperature = 0.8;
    opts.seed = 11;
    opts.prompt_template = EtTemplate::Alpaca as u32;
    let (st, text, _) = gen_into(m, &prompt, Some(&opts), 4096);
    assert_eq!(st, EtStatus::Ok);
    assert_eq!(text, reference_generation(&path, "Sensor 3 reads", &opts));
    unsafe { et_model_free(m) };
}

/// Streamed weights through the C ABI: the same text as mapped, with the head resident or
/// streamed, and the stream's reads happened.
#[test]
fn stream_weights_generates_the_same_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path());
    let prompt = c("Sensor 3 reads");
    let mut opts = et_generate_default_options();
    opts.max_tokens = 12;
    let want = reference_generation(&path, "Sensor 3 reads", &opts);
    for head in [0u32, 1] {
        let m = open(&path);
        assert_eq!(
            unsafe { et_model_stream_weights(m, head) },
            EtStatus::Ok,
            "{}",
            last_error()
        );
        let (st, text, _) = gen_into(m, &prompt, Some(&opts), 4096);
        assert_eq!(st, EtStatus::Ok, "{}", last_error());
        assert_eq!(text, want, "stream_head {head}");
        let stats = unsafe { &*m }.stream_stats().expect("streamed");
        assert!(stats.layer_reads > 0);
        assert_eq!(stats.head_chunk_reads > 0, head == 1, "{stats:?}");
        unsafe { et_model_free(m) };
    }
    assert_eq!(
        unsafe { et_model_stream_weights(null(), 0) },
        EtStatus::NullPointer
    );
    assert!(last_error().contains("model"), "{}", last_error());
}

#[test]
fn generate_rejects_bad_options_and_text() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(&tiny_model(dir.path()));
    let prompt = c("hello");
    let mut opts = et_generate_default_options();
    opts.temperature = -1.0;
    assert_eq!(
        gen_into(m, &prompt, Some(&opts), 256).0,
        EtStatus::InvalidArgument
    );
    assert!(last_error().contains("temperature"), "{}", last_error());
    let mut opts = et_generate_default_options();
    opts.prompt_template = 7;
    assert_eq!(
        gen_into(m, &prompt, Some(&opts), 256).0,
        EtStatus::InvalidArgument
    );
    assert!(last_error().contains("template 7"), "{}", last_error());
    let bad_utf8 = CString::new(vec![b'a', 0xff, b'b']).unwrap();
    assert_eq!(
        gen_into(m, &bad_utf8, None, 256).0,
        EtStatus::InvalidArgument
    );
    assert!(last_error().contains("UTF-8"), "{}", last_error());
    unsafe { et_model_free(m) };
}

/// The tiny test model with `template` stored as its `tokenizer.chat_template`.
fn tiny_model_with_template(dir: &Path, template: &str) -> PathBuf {
    let path = dir.join("templated.gguf");
    let mut kv = synthetic_vocab_metadata(TINY.n_vocab).unwrap();
    kv.push((
        "tokenizer.chat_template".into(),
        Value::String(template.into()),
    ));
    let types = WeightTypes::parse("q8_0").unwrap();
    write_test_model_with(&TINY, types, 5, &Vocabulary::Metadata(kv), &path).unwrap();
    path
}

#[test]
fn generate_uses_the_models_chat_template_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let smollm2 = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/templates/smollm2.jinja"
    );
    let path = tiny_model_with_template(dir.path(), &std::fs::read_to_string(smollm2).unwrap());
    let m = open(&path);
    let prompt = c("Sensor 3 reads");
    let mut opts = et_generate_default_options();
    assert_eq!(opts.prompt_template, EtTemplate::Auto as u32);
    opts.max_tokens = 10;
    let (st, text, _) = gen_into(m, &prompt, Some(&opts), 4096);
    assert_eq!(st, EtStatus::Ok, "{}", last_error());
    // The reference prompt: SmolLM2's rendering of the one user message, BOS first.
    let file = GgufFile::open(&path).unwrap();
    let llama = Llama::load(&file).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let rendered = ChatTemplate::from_gguf(&file)
        .unwrap()
        .unwrap()
        .render(&[Message::new("user", "Sensor 3 reads")], true)
        .unwrap();
    assert!(rendered.starts_with("<|im_start|>system\n"), "{rendered:?}");
    let ids = tok
        .encode(&format!("<|begin_of_text|>{rendered}"), false, true)
        .unwrap();
    let gen_opts = GenerateOptions {
        max_tokens: 10,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        stop_at_eos: true,
    };
    let want = generate(&llama, &tok, &ids, &gen_opts, |_| true)
        .unwrap()
        .text;
    assert_eq!(text, want);
    unsafe { et_model_free(m) };

    // A template that does not compile fails only the calls that use it.
    let path = tiny_model_with_template(dir.path(), "{% for m in messages %}");
    let m = open(&path);
    assert_eq!(gen_into(m, &prompt, Some(&opts), 4096).0, EtStatus::Format);
    assert!(
        last_error().contains("tokenizer.chat_template"),
        "{}",
        last_error()
    );
    opts.prompt_template = EtTemplate::None as u32;
    assert_eq!(gen_into(m, &prompt, Some(&opts), 4096).0, EtStatus::Ok);
    unsafe { et_model_free(m) };
}

/// et_plan_json into a large buffer, parsed.
fn plan(
    model: Option<&Path>,
    config: Option<&str>,
) -> Result<serde_json::Value, (EtStatus, String)> {
    let model = model.map(|p| c(p.to_str().unwrap()));
    let config = config.map(c);
    let mut buf = vec![0 as c_char; 1 << 16];
    let mut len = 0usize;
    let st = unsafe {
        et_plan_json(
            model.as_ref().map_or(null(), |s| s.as_ptr()),
            config.as_ref().map_or(null(), |s| s.as_ptr()),
            buf.as_mut_ptr(),
            buf.len(),
            &mut len,
        )
    };
    if st != EtStatus::Ok {
        return Err((st, last_error()));
    }
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap();
    assert_eq!(text.len(), len);
    Ok(serde_json::from_str(text).unwrap())
}

#[test]
fn plan_json_matches_the_planner_and_hand_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path());
    let cfg = r#"{"seq_len": 32, "batch": 2, "lora": {"rank": 4}, "ce_chunk": 16}"#;
    let r = plan(Some(&path), Some(cfg)).unwrap();
    let lc = TINY.llama_config();
    let shape = TrainShape::lora(&lc, 32, 2, 4, 7, 16, true).unwrap();
    let arena = llama_training_plan(&lc, &shape)
        .unwrap()
        .pack()
        .unwrap()
        .arena_bytes();
    assert_eq!(r["arena_bytes"], arena);
    // LoRA on all seven linears of a TINY layer (dim 256, 2 KV heads of 64, ffn 512):
    // r · Σ(in + out) = 4 · (512 + 384 + 384 + 512 + 768 + 768 + 768) = 4 · 4096, × 2 layers.
    let params = 4 * 4096 * 2;
    assert_eq!(r["adapter_params"], params);
    assert_eq!(r["adapter_bytes"], 4 * params);
    assert_eq!(r["adapter_ram_bytes"], 4 * params);
    assert_eq!(r["adapter_weights_place"], "ram");
    // Paged adapter weights: all of them still counted, one layer's (of two) resident.
    let paged_cfg = cfg.replacen('{', r#"{"adapter_weights": "disk", "#, 1);
    let paged = plan(Some(&path), Some(&paged_cfg)).unwrap();
    assert_eq!(paged["adapter_weights_place"], "disk");
    assert_eq!(paged["adapter_bytes"], 4 * params);
    let one_layer = paged["adapter_ram_bytes"].as_u64().unwrap();
    assert!(
        one_layer >= 4 * params / 2 && one_layer < 4 * params,
        "{one_layer}"
    );
    assert_eq!(
        r["optimizer_state_bytes"],
        8 * params,
        "AdamW m and v in f32"
    );
    // The total is the budget planner's (the same function `edgetune plan` uses), and it is the
    // sum of its parts: resident weights, arena, adapters, optimizer state, overheads.
    let mut planner_cfg = edgetune::ffi::plan::train_config_from_json(cfg).unwrap();
    planner_cfg.model = path.clone();
    let planner = edgetune::train::budget::plan_training(
        &edgetune::gguf::GgufFile::open(&path).unwrap(),
        &planner_cfg,
    )
    .unwrap();
    assert_eq!(r["total_bytes"], planner.breakdown.total_bytes);
    assert_eq!(r["breakdown"]["total_bytes"], planner.breakdown.total_bytes);
    let field = |k: &str| r[k].as_u64().unwrap();
    let weights = field("weight_resident_bytes");
    assert!(weights <= field("weight_bytes"));
    assert!(field("overhead_bytes") > 0);
    assert_eq!(
        field("total_bytes"),
        weights + 4 * params + 8 * params + arena + field("overhead_bytes"),
        "LoRA has no extra bytes"
    );
    assert_eq!(r["adapter_extra_bytes"], 0);
    assert!(r["fits"].is_null(), "no budget, no verdict");
    assert_eq!(r["shape"]["tokens_per_micro_batch"], 64);

    // The model path may come from the configuration; a budget gives a verdict (mapped: under
    // `auto` a budget a byte short streams the weights instead).
    let total = r["total_bytes"].as_u64().unwrap();
    let with_budget = |b: u64| {
        let cfg = format!(
            r#"{{"model": {:?}, "seq_len": 32, "batch": 2, "lora": {{"rank": 4}}, "ce_chunk": 16, "weights": "map", "budget_bytes": {b}}}"#,
            path.to_str().unwrap()
        );
        plan(None, Some(&cfg)).unwrap()
    };
    let r = with_budget(total);
    assert_eq!(
        (r["fits"].as_bool(), r["headroom_bytes"].as_i64()),
        (Some(true), Some(0))
    );
    let r = with_budget(total - 1);
    assert_eq!(
        (r["fits"].as_bool(), r["headroom_bytes"].as_i64()),
        (Some(false), Some(-1))
    );
    // Streamed layers and the fused per-layer update are configuration fields too.
    let streamed = plan(
        Some(&path),
        Some(
            r#"{"seq_len": 32, "batch": 2, "lora": {"rank": 4}, "ce_chunk": 16, "weights": "stream", "fused_update": "on", "max_grad_norm": 0}"#,
        ),
    )
    .unwrap();
    let b = &streamed["breakdown"];
    assert!(b["weights"]["streamed"]["reads_per_step"].as_u64().unwrap() > 0);
    assert_eq!(b["fused_update"], "--fused-update on");
    assert!(streamed["arena_bytes"].as_u64().unwrap() < arena);

    // Fewer targets and 8-bit state, rank 16: q's A [16, 256], q's B [256, 16] and v's A
    // [16, 256] have 4096 values: 2 bytes each plus two f32 absmax per 256-value block; v's B
    // [128, 16] has 2048, under bitsandbytes' 4096-value minimum, so its state stays f32.
    let r = plan(
        Some(&path),
        Some(
            r#"{"lora": {"rank": 16, "targets": ["attn_q", "attn_v"]}, "optimizer_state_bits": 8}"#,
        ),
    )
    .unwrap();
    assert_eq!(r["adapter_params"], (3 * 4096 + 2048) * 2);
    let eight_bit = 2 * 4096 + 2 * 4 * (4096 / 256);
    assert_eq!(r["optimizer_state_bytes"], (3 * eight_bit + 8 * 2048) * 2);
}

#[test]
fn plan_json_rejects_bad_configurations() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path());
    let (st, msg) = plan(Some(&path), Some(r#"{"seq_len": 32, "rnak": 4}"#)).unwrap_err();
    assert_eq!(st, EtStatus::InvalidArgument);
    assert!(msg.contains("rnak"), "{msg}");
    let (st, msg) = plan(Some(&path), Some("{not json")).unwrap_err();
    assert_eq!(st, EtStatus::InvalidArgument);
    assert!(msg.contains("JSON"), "{msg}");
    let (st, msg) = plan(Some(&path), Some(r#"{"batch": 0}"#)).unwrap_err();
    assert_eq!(st, EtStatus::InvalidArgument);
    assert!(msg.contains("--batch"), "{msg}");
    let huge_rank = format!(r#"{{"lora": {{"rank": {}}}}}"#, usize::MAX / 2);
    let (st, msg) = plan(Some(&path), Some(&huge_rank)).unwrap_err();
    assert_eq!(st, EtStatus::InvalidArgument);
    assert!(msg.contains("rank"), "{msg}");
    // The largest budget fits, and its headroom saturates at i64::MAX instead of wrapping.
    let r = plan(
        Some(&path),
        Some(&format!(r#"{{"budget_bytes": {}}}"#, u64::MAX)),
    )
    .unwrap();
    assert_eq!(r["fits"], true);
    assert_eq!(r["headroom_bytes"], i64::MAX);
    let (st, _) = plan(Some(&dir.path().join("missing.gguf")), None).unwrap_err();
    assert_eq!(st, EtStatus::Io);

    // Too small a buffer: the length comes back.
    let p = c(path.to_str().unwrap());
    let mut len = 0usize;
    let mut one = [0 as c_char; 1];
    let st = unsafe { et_plan_json(p.as_ptr(), null(), one.as_mut_ptr(), 1, &mut len) };
    assert_eq!(st, EtStatus::BufferTooSmall);
    assert!(len > 100, "{len}");
    assert_eq!(plan(Some(&path), None).unwrap().to_string().len(), len);
}

/// Counts the steps it sees; asks to stop after `user_data`'s limit.
unsafe extern "C" fn count_steps(
    p: *const edgetune::ffi::progress::EtProgress,
    user_data: *mut std::ffi::c_void,
) -> std::ffi::c_int {
    // SAFETY: the test passes a pointer to a (u64 seen, u64 limit) pair; `p` is valid here.
    let (seen, limit) = unsafe { &mut *(user_data as *mut (u64, u64)) };
    let p = unsafe { &*p };
    assert!(p.loss.is_finite() && p.step == *seen + 1);
    *seen += 1;
    (*seen >= *limit) as std::ffi::c_int
}

#[test]
fn et_train_runs_reports_progress_and_can_be_cancelled() {
    use edgetune::ffi::train::et_train;
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = dir.path().join("d.jsonl");
    let lines: Vec<String> = (0..20)
        .map(|i| format!("{{\"text\": \"sensor {i} reads {} degrees\"}}", 20 + i))
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let cfg = |out: &Path, steps: u64| {
        c(&format!(
            "{{\"model\": {:?}, \"data\": {:?}, \"out\": {:?}, \"steps\": {steps}, \
             \"seq_len\": 32, \"lora\": {{\"rank\": 2, \"alpha\": 4}}}}",
            model.to_str().unwrap(),
            data.to_str().unwrap(),
            out.to_str().unwrap()
        ))
    };
    let out = dir.path().join("run");
    let mut state = (0u64, u64::MAX);
    let st = unsafe {
        et_train(
            cfg(&out, 3).as_ptr(),
            Some(count_steps),
            &mut state as *mut _ as *mut std::ffi::c_void,
        )
    };
    assert_eq!(st, EtStatus::Ok, "{}", last_error());
    assert_eq!(state.0, 3);
    assert!(out.join("summary.json").is_file());

    let out = dir.path().join("cancelled");
    let mut state = (0u64, 2u64);
    let st = unsafe {
        et_train(
            cfg(&out, 10).as_ptr(),
            Some(count_steps),
            &mut state as *mut _ as *mut std::ffi::c_void,
        )
    };
    assert_eq!(st, EtStatus::Cancelled);
    assert_eq!(state.0, 2);
    assert!(last_error().contains("stopped"));
    assert!(out.join("checkpoints").join("step-00000002").is_dir());

    // The newest checkpoint is an adapter directory the model handle takes.
    let (o, mut buf, mut len) = (c(out.to_str().unwrap()), [0 as c_char; 512], 0usize);
    let st = unsafe { et_train_latest_checkpoint(o.as_ptr(), buf.as_mut_ptr(), 512, &mut len) };
    assert_eq!(st, EtStatus::Ok, "{}", last_error());
    let ckpt = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap();
    assert_eq!(
        Path::new(ckpt),
        out.join("checkpoints").join("step-00000002")
    );
    let m = open(&model);
    let st = unsafe { et_model_set_adapter(m, buf.as_ptr()) };
    assert_eq!(st, EtStatus::Ok, "{}", last_error());
    unsafe { et_model_free(m) };

    let st = unsafe { et_train(c("{\"stepz\": 1}").as_ptr(), None, null_mut()) };
    assert_eq!(st, EtStatus::InvalidArgument);
    assert!(last_error().contains("stepz"), "{}", last_error());
}

/// A LoRA set on every linear of `cfg` with nonzero A and B (fresh PEFT init has B = 0, which
/// would make an attached adapter indistinguishable from none), saved in our format at `dir`.
fn strong_adapter(cfg: &LlamaConfig, dir: &Path, seed: u64) -> AdapterSet {
    use rand::{Rng, SeedableRng};
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..LoraConfig::default()
    };
    let mut set = AdapterSet::new_lora(cfg, &lora, seed).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (_, _, a) in set.iter_mut() {
        for i in 0..a.params().len() {
            for v in a.param_mut(i).unwrap() {
                *v = rng.random_range(-0.5f32..0.5);
            }
        }
    }
    save_adapter(&set, dir, &serde_json::json!({"seed": seed})).unwrap();
    set
}

/// Greedy generation through the Rust API with `set` attached.
fn reference_with_adapter(path: &Path, set: AdapterSet, prompt: &str, max_tokens: u32) -> String {
    let file = GgufFile::open(path).unwrap();
    let mut llama = Llama::load(&file).unwrap();
    llama.set_adapters(Some(Arc::new(set))).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    // et_generate's default format: the model's chat template.
    let ids = PromptFormat::of_model(&file, &tok)
        .unwrap()
        .encode(&tok, prompt)
        .unwrap();
    let opts = GenerateOptions {
        max_tokens: max_tokens as usize,
        sampling: SamplingParams {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            seed: 0,
        },
        stop_at_eos: true,
    };
    generate(&llama, &tok, &ids, &opts, |_| true).unwrap().text
}

/// Every adapter's dense ΔW (invariant to how an export folds the scale into B).
fn deltas(set: &AdapterSet) -> Vec<(usize, String, Vec<f32>)> {
    set.iter()
        .map(|(layer, target, a)| {
            let mut dw = vec![0f32; a.in_features() * a.out_features()];
            a.delta_weight(&mut dw).unwrap();
            (layer, format!("{target:?}"), dw)
        })
        .collect()
}

fn assert_same_deltas(want: &AdapterSet, got: &AdapterSet) {
    let (want, got) = (deltas(want), deltas(got));
    assert_eq!(want.len(), got.len());
    for ((lw, tw, w), (lg, tg, g)) in want.iter().zip(&got) {
        assert_eq!((lw, tw), (lg, tg));
        for (x, y) in w.iter().zip(g) {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
                "{lw} {tw}: {x} vs {y}"
            );
        }
    }
}

#[test]
fn set_adapter_changes_generation_like_the_rust_api_and_can_be_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path());
    let cfg = LlamaConfig::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let adapter_dir = dir.path().join("adapter");
    let set = strong_adapter(&cfg, &adapter_dir, 11);
    let m = open(&path);
    let prompt = c("Sensor 3 reads");
    let mut opts = et_generate_default_options();
    opts.max_tokens = 12;
    let (st, base, _) = gen_into(m, &prompt, Some(&opts), 4096);
    assert_eq!(st, EtStatus::Ok, "{}", last_error());

    let p = c(adapter_dir.to_str().unwrap());
    assert_eq!(
        unsafe { et_model_set_adapter(m, p.as_ptr()) },
        EtStatus::Ok,
        "{}",
        last_error()
    );
    let (st, adapted, _) = gen_into(m, &prompt, Some(&opts), 4096);
    assert_eq!(st, EtStatus::Ok, "{}", last_error());
    let want = reference_with_adapter(&path, set, "Sensor 3 reads", 12);
    assert_eq!(adapted, want);
    // The adapter has weight: the comparison above is not base against base.
    assert_ne!(adapted, base);

    // NULL removes it.
    assert_eq!(
        unsafe { et_model_set_adapter(m, null()) },
        EtStatus::Ok,
        "{}",
        last_error()
    );
    let (_, again, _) = gen_into(m, &prompt, Some(&opts), 4096);
    assert_eq!(again, base);
    unsafe { et_model_free(m) };
}

#[test]
fn set_adapter_refuses_nulls_and_adapters_of_other_models() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path());
    let cfg = LlamaConfig::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let p = c(dir.path().to_str().unwrap());
    assert_eq!(
        unsafe { et_model_set_adapter(null(), p.as_ptr()) },
        EtStatus::NullPointer
    );
    assert!(last_error().contains("`model`"), "{}", last_error());

    let m = open(&path);
    // A good adapter first: a refused one must leave it attached.
    let good = dir.path().join("good");
    let good_set = strong_adapter(&cfg, &good, 2);
    let g = c(good.to_str().unwrap());
    assert_eq!(
        unsafe { et_model_set_adapter(m, g.as_ptr()) },
        EtStatus::Ok,
        "{}",
        last_error()
    );

    // Made for a model with twice the feed-forward width.
    let mut other = cfg.clone();
    other.ffn *= 2;
    let wrong = dir.path().join("wrong");
    strong_adapter(&other, &wrong, 3);
    let w = c(wrong.to_str().unwrap());
    let st = unsafe { et_model_set_adapter(m, w.as_ptr()) };
    assert!(
        matches!(st, EtStatus::InvalidArgument | EtStatus::Format),
        "{st:?}: {}",
        last_error()
    );
    let msg = last_error();
    let (ffn, wide) = (cfg.ffn.to_string(), other.ffn.to_string());
    assert!(msg.contains(&ffn) && msg.contains(&wide), "{msg}");

    // Not an adapter at all, and a missing path.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = c(empty.to_str().unwrap());
    assert_eq!(
        unsafe { et_model_set_adapter(m, e.as_ptr()) },
        EtStatus::InvalidArgument
    );
    assert!(last_error().contains("empty"), "{}", last_error());
    let missing = c(dir.path().join("missing").to_str().unwrap());
    assert_eq!(
        unsafe { et_model_set_adapter(m, missing.as_ptr()) },
        EtStatus::Io
    );
    assert!(last_error().contains("missing"), "{}", last_error());

    // The good adapter is still in use.
    let mut opts = et_generate_default_options();
    opts.max_tokens = 8;
    let (st, text, _) = gen_into(m, &c("hello"), Some(&opts), 4096);
    assert_eq!(st, EtStatus::Ok, "{}", last_error());
    assert_eq!(text, reference_with_adapter(&path, good_set, "hello", 8));
    unsafe { et_model_free(m) };
}

#[test]
fn adapter_export_writes_files_load_any_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path());
    let cfg = LlamaConfig::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let adapter_dir = dir.path().join("adapter");
    let set = strong_adapter(&cfg, &adapter_dir, 5);
    let (mp, ap) = (c(path.to_str().unwrap()), c(adapter_dir.to_str().unwrap()));
    let export = |format: &str, out: &Path| {
        let (f, o) = (c(format), c(out.to_str().unwrap()));
        unsafe { et_adapter_export(mp.as_ptr(), ap.as_ptr(), f.as_ptr(), o.as_ptr()) }
    };

    let gguf = dir.path().join("lora.gguf");
    assert_eq!(export("gguf", &gguf), EtStatus::Ok, "{}", last_error());
    assert_eq!(detect_format(&gguf).unwrap().0, AdapterFormat::Gguf);
    assert_same_deltas(&set, &load_any(&gguf, &cfg).unwrap());

    let peft = dir.path().join("peft");
    assert_eq!(export("peft", &peft), EtStatus::Ok, "{}", last_error());
    assert_eq!(detect_format(&peft).unwrap().0, AdapterFormat::Peft);
    assert_same_deltas(&set, &load_any(&peft, &cfg).unwrap());

    // The GGUF export is itself an adapter the C ABI reads: round trip through it.
    let back = dir.path().join("back.gguf");
    let (g, b, f) = (
        c(gguf.to_str().unwrap()),
        c(back.to_str().unwrap()),
        c("gguf"),
    );
    let st = unsafe { et_adapter_export(mp.as_ptr(), g.as_ptr(), f.as_ptr(), b.as_ptr()) };
    assert_eq!(st, EtStatus::Ok, "{}", last_error());
    assert_same_deltas(&set, &load_any(&back, &cfg).unwrap());

    // Bad arguments.
    assert_eq!(
        export("onnx", &dir.path().join("x")),
        EtStatus::InvalidArgument
    );
    assert!(last_error().contains("onnx"), "{}", last_error());
    assert!(!dir.path().join("x").exists());
    let o = c(dir.path().join("y.gguf").to_str().unwrap());
    let st = unsafe { et_adapter_export(mp.as_ptr(), ap.as_ptr(), null(), o.as_ptr()) };
    assert_eq!(st, EtStatus::NullPointer);
    assert!(last_error().contains("`format`"), "{}", last_error());
    let st = unsafe { et_adapter_export(null(), ap.as_ptr(), f.as_ptr(), o.as_ptr()) };
    assert_eq!(st, EtStatus::NullPointer);
    assert!(last_error().contains("`model_path`"), "{}", last_error());
    let missing = c(dir.path().join("missing.gguf").to_str().unwrap());
    let st = unsafe { et_adapter_export(missing.as_ptr(), ap.as_ptr(), f.as_ptr(), o.as_ptr()) };
    assert_eq!(st, EtStatus::Io);
    // An adapter for another model is refused before anything is written.
    let mut other = cfg.clone();
    other.n_layer += 1;
    let wrong = dir.path().join("wrong");
    strong_adapter(&other, &wrong, 6);
    let w = c(wrong.to_str().unwrap());
    let st = unsafe { et_adapter_export(mp.as_ptr(), w.as_ptr(), f.as_ptr(), o.as_ptr()) };
    assert!(
        matches!(st, EtStatus::InvalidArgument | EtStatus::Format),
        "{st:?}: {}",
        last_error()
    );
    assert!(last_error().contains("layer"), "{}", last_error());
    assert!(!dir.path().join("y.gguf").exists());
}

#[test]
fn latest_checkpoint_finds_the_newest_step_and_reports_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = c(out.to_str().unwrap());
    let latest = |cap: usize| {
        let mut buf = vec![b'x' as c_char; cap + 1];
        buf[cap] = 0;
        let mut len = usize::MAX;
        let st = unsafe { et_train_latest_checkpoint(o.as_ptr(), buf.as_mut_ptr(), cap, &mut len) };
        let text = unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_str()
            .unwrap()
            .to_owned();
        (st, text, len)
    };
    let (st, _, _) = latest(256);
    assert_eq!(st, EtStatus::Io);
    assert!(last_error().contains("no checkpoint"), "{}", last_error());

    // Numeric order, not creation order; other names are not checkpoints.
    for name in [
        "step-00000010",
        "step-00000009",
        "step-00000100",
        "notes",
        "step-x",
    ] {
        std::fs::create_dir_all(out.join("checkpoints").join(name)).unwrap();
    }
    let want = out.join("checkpoints").join("step-00000100");
    let want = want.to_str().unwrap();
    let (st, text, len) = latest(256);
    assert_eq!(st, EtStatus::Ok, "{}", last_error());
    assert_eq!((text.as_str(), len), (want, want.len()));
    // Exactly the length is one byte short (the NUL).
    let (st, text, len) = latest(want.len());
    assert_eq!(
        (st, text.as_str(), len),
        (EtStatus::BufferTooSmall, "", want.len())
    );
    let (st, _, _) = latest(want.len() + 1);
    assert_eq!(st, EtStatus::Ok);

    let mut len = 0usize;
    let st = unsafe { et_train_latest_checkpoint(null(), null_mut(), 0, &mut len) };
    assert_eq!(st, EtStatus::NullPointer);
    assert!(last_error().contains("`out_dir`"), "{}", last_error());
    let st = unsafe { et_train_latest_checkpoint(o.as_ptr(), null_mut(), 8, &mut len) };
    assert_eq!(st, EtStatus::NullPointer);
}
