//! Streamed weights (`--weights stream`, model/stream.rs) against mapped ones: the same steps
//! on the same bytes, so every loss and every adapter parameter must be bit-identical, over
//! the configurations whose schedules differ (gradient accumulation, the KL anchor's base
//! pass, a backward that stops above layer 0, DoRA's re-read of the base output, a tied head);
//! the read counts the plan predicts; the plan choosing streaming under a small budget; and a
//! process whose measured peak stays under a budget that mapping would exceed; the output head
//! streamed in chunks (`--stream-head`): one chunk bit-identical to the resident head, several
//! within the rounding of a chunked sum, read as often as the plan says, chosen by `auto` only
//! when a resident head does not fit.

use std::path::{Path, PathBuf};

use edgetune::adapters::LayerRange;
use edgetune::gguf::GgufFile;
use edgetune::model::stream::StreamStats;
use edgetune::testmodel::{Preset, SMALL, TINY, WeightTypes, write_test_model};
use edgetune::train::budget::plan_training;
use edgetune::train::{
    Method, OptimizerKind, Replay, StreamHead, TrainConfig, Trainer, WeightsMode,
};

use crate::train_support;

const STEPS: u64 = 2;

/// A 4-layer tiny model (so a backward can stop above layer 0 with layers on both sides).
fn write_model(dir: &Path, tied: bool) -> PathBuf {
    let p = Preset {
        n_layer: 4,
        tied_output: tied,
        ..TINY
    };
    let path = dir.join(if tied { "tied.gguf" } else { "untied.gguf" });
    write_test_model(&p, WeightTypes::parse("q4_k_m").unwrap(), 11, &path).unwrap();
    path
}

/// `(losses, parameters, the stream's reads)` of a run (`None`: mapped weights).
fn run(cfg: &TrainConfig) -> (Vec<f64>, Vec<Vec<f32>>, Option<StreamStats>) {
    let file = GgufFile::open(&cfg.model).unwrap();
    let mut t = Trainer::new(&file, cfg).unwrap();
    let mut losses = Vec::new();
    while let Some(p) = t.step().unwrap() {
        losses.push(p.loss);
    }
    let stats = t.train_step().stream_stats();
    (losses, train_support::all_params(t.adapters()), stats)
}

fn stream_cfg(cfg: &TrainConfig) -> TrainConfig {
    TrainConfig {
        weights: WeightsMode::Stream,
        out: cfg.out.with_extension("stream"),
        ..cfg.clone()
    }
}

#[test]
fn streamed_steps_equal_mapped_steps_bit_for_bit_and_read_what_the_plan_says() {
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = train_support::write_fixture(dir.path(), "q4_0", 60);
    let untied = write_model(dir.path(), false);
    let tied = write_model(dir.path(), true);
    let base = {
        let mut c = train_support::config(&untied, &data, &dir.path().join("run"), STEPS);
        c.weights = WeightsMode::Map;
        c
    };
    let mut accum = base.clone();
    accum.accum = 2;
    accum.out = dir.path().join("accum");
    let mut kl = base.clone();
    kl.replay = Some(Replay::File(data.clone()));
    kl.replay_ratio = 0.5;
    kl.kl_anchor = 0.5;
    kl.out = dir.path().join("kl");
    let mut upper = base.clone();
    upper.lora.layers = Some(LayerRange { first: 2, last: 3 });
    upper.out = dir.path().join("upper");
    let mut dora = base.clone();
    dora.method = Method::Dora;
    dora.out = dir.path().join("dora");
    let mut tied_cfg = base.clone();
    tied_cfg.model = tied.clone();
    tied_cfg.out = dir.path().join("tied");
    for cfg in [base, accum, kl, upper, dora, tied_cfg] {
        let name = cfg.out.file_name().unwrap().to_string_lossy().to_string();
        let (loss_map, params_map, stats_map) = run(&cfg);
        let s = stream_cfg(&cfg);
        let (loss_stream, params_stream, stats) = run(&s);
        assert_eq!(stats_map, None, "{name}");
        assert_eq!(loss_map.len() as u64, STEPS, "{name}");
        assert_eq!(loss_map, loss_stream, "{name}: losses");
        assert_eq!(params_map, params_stream, "{name}: parameters");
        // The plan's reads per step: forward 4, backward down to the lowest adapted layer
        // (its top layer staged), the KL base pass 4 more; at most that many (the anchor's
        // base pass runs only on micro-batches holding replay rows, and layer 0 is reused).
        let file = GgufFile::open(&s.model).unwrap();
        let plan = plan_training(&file, &s).unwrap();
        let st = plan.breakdown.weights.streamed.expect("streamed plan");
        let reads = stats.expect("stream stats").layer_reads;
        assert!(
            reads > 0 && reads <= STEPS * st.reads_per_step,
            "{name}: {reads} reads, plan {}",
            st.reads_per_step
        );
        if cfg.kl_anchor == 0.0 {
            // Layer 0 stays staged from one backward to the next forward when the backward
            // reaches it: every step after the first reads one layer less.
            let lowest = cfg.lora.layers.map_or(0, |r| r.first) as u64;
            let per_step = st.reads_per_step - if lowest == 0 { cfg.accum as u64 } else { 0 };
            let expect = STEPS * per_step + u64::from(lowest == 0);
            assert_eq!(reads, expect, "{name}: reads");
        }
    }
}

#[test]
fn auto_streams_only_when_mapping_does_not_fit_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = train_support::write_fixture(dir.path(), "q4_0", 10);
    let model = write_model(dir.path(), false);
    let file = GgufFile::open(&model).unwrap();
    let mut cfg = train_support::config(&model, &data, &dir.path().join("run"), 1);
    cfg.seq_len = 64;
    let mapped = plan_training(&file, &cfg).unwrap().breakdown;
    assert!(mapped.weights.streamed.is_none());
    let streamed = plan_training(&file, &stream_cfg(&cfg)).unwrap().breakdown;
    let st = streamed.weights.streamed.as_ref().unwrap();
    // The layers' matrices leave the resident set; two staging buffers come in.
    let layer_bytes: u64 = file
        .tensors()
        .iter()
        .filter(|t| t.name.starts_with("blk.") && !t.name.contains("norm"))
        .map(|t| t.n_bytes)
        .sum();
    assert_eq!(st.layer_file_bytes, layer_bytes);
    assert_eq!(
        streamed.weights.resident_bytes,
        mapped.weights.resident_bytes - layer_bytes + st.staging_bytes
    );
    assert!(st.staging_bytes < layer_bytes, "{st:?}");
    // A budget between the two totals: auto streams, and says why; map is refused.
    cfg.budget_bytes = Some((mapped.total_bytes + streamed.total_bytes) / 2);
    let auto = plan_training(&file, &cfg).unwrap().breakdown;
    assert!(auto.fits);
    let why = &auto.weights.streamed.as_ref().expect("auto streams").reason;
    assert!(why.contains("chosen by the plan"), "{why}");
    let report = auto.report();
    assert!(report.contains("layer staging"), "{report}");
    cfg.weights = WeightsMode::Map;
    let map = plan_training(&file, &cfg).unwrap().breakdown;
    assert!(!map.fits && map.weights.streamed.is_none());
    // Enough budget: auto maps.
    cfg.weights = WeightsMode::Auto;
    cfg.budget_bytes = Some(mapped.total_bytes);
    assert!(
        plan_training(&file, &cfg)
            .unwrap()
            .breakdown
            .weights
            .streamed
            .is_none()
    );
    // The I/O estimate: the reads at the storage speed.
    let mut s = stream_cfg(&cfg);
    s.storage_read_bytes_per_s = Some(1e9);
    let st = plan_training(&file, &s)
        .unwrap()
        .breakdown
        .weights
        .streamed
        .unwrap();
    assert_eq!(st.io_s_per_step, Some(st.read_bytes_per_step as f64 / 1e9));
    // Locked and streamed do not go together.
    let mut both = stream_cfg(&cfg);
    both.lock_weights = true;
    let e = Trainer::new(&file, &both)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("--lock-weights") && e.contains("--weights stream"),
        "{e}"
    );
}

/// `edgetune train` under a budget between the streamed and the mapped plans: the plan
/// streams, the process's measured peak (VmHWM, file-backed pages included) stays under the
/// budget and near the plan, and the losses equal a mapped run's.
#[cfg(target_os = "linux")]
#[test]
fn a_streamed_run_stays_under_a_budget_that_mapping_exceeds() {
    let bin = env!("CARGO_BIN_EXE_edgetune");
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = train_support::write_fixture(dir.path(), "q4_0", 40);
    // `small`'s shapes, 6 layers deep: 23 MiB of layer weights, more than the plan's margin.
    let model = dir.path().join("small6.gguf");
    let p = Preset {
        n_layer: 6,
        ..SMALL
    };
    write_test_model(&p, WeightTypes::parse("q8_0").unwrap(), 5, &model).unwrap();
    let file = GgufFile::open(&model).unwrap();
    let mut cfg = train_support::config(&model, &data, &dir.path().join("plan"), 2);
    cfg.batch = 1;
    let mapped = plan_training(&file, &cfg).unwrap().breakdown;
    let streamed = plan_training(&file, &stream_cfg(&cfg)).unwrap().breakdown;
    let saved = mapped.total_bytes - streamed.total_bytes;
    assert!(saved > 20 << 20, "streaming saves {saved} bytes");
    let budget = streamed.total_bytes + saved / 4;
    let run = |out: &Path, extra: &[&str]| -> serde_json::Value {
        let ok = std::process::Command::new(bin)
            .args(["train", "--model", model.to_str().unwrap()])
            .args([
                "--data",
                data.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .args(["--steps", "2", "--seq-len", "256", "--batch", "1"])
            .args([
                "--rank",
                "4",
                "--alpha",
                "8",
                "--lr",
                "1e-3",
                "--ce-chunk",
                "16",
            ])
            .args(["--threads", "2"])
            .args(extra)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "{extra:?}");
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap()
    };
    let b = budget.to_string();
    let s = run(&dir.path().join("stream"), &["--budget", &b]);
    let m = run(&dir.path().join("map"), &["--weights", "map"]);
    assert!(s["streamed"]["layer_reads"].as_u64().unwrap() > 0, "{s}");
    assert!(m.get("streamed").is_none());
    assert_eq!(s["final_loss"], m["final_loss"]);
    let peak = s["peak_bytes"].as_u64().unwrap();
    let planned = s["planned_bytes"].as_u64().unwrap();
    assert!(peak <= budget, "peak {peak} > budget {budget}");
    // The plan is an upper bound here, and not a loose one.
    assert!(
        peak as f64 >= 0.7 * planned as f64,
        "peak {peak}, plan {planned}"
    );
    let map_peak = m["peak_bytes"].as_u64().unwrap();
    assert!(
        map_peak > peak + saved / 2,
        "mapped peak {map_peak}, streamed {peak}"
    );
}

/// `(losses, parameters, layer reads, head chunk reads)` of a streamed run.
fn run_head(cfg: &TrainConfig) -> (Vec<f64>, Vec<Vec<f32>>, u64, u64) {
    let (losses, params, stats) = run(cfg);
    let st = stats.expect("streamed");
    (losses, params, st.layer_reads, st.head_chunk_reads)
}

#[test]
fn a_streamed_head_gives_the_resident_heads_steps() {
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = train_support::write_fixture(dir.path(), "q4_0", 60);
    let untied = write_model(dir.path(), false);
    let tied = write_model(dir.path(), true);
    let mut upper = train_support::config(&untied, &data, &dir.path().join("upper"), STEPS);
    upper.lora.layers = Some(LayerRange { first: 2, last: 3 });
    // MT-LoRA on the synthetic data's tasks: per-row task weights and per-task losses.
    let mut mtlora = train_support::config(&untied, &data, &dir.path().join("mtlora"), STEPS);
    mtlora.method = Method::Mtlora;
    mtlora.method_opts.task_weights = edgetune::train::TaskWeights::Adaptive;
    mtlora.method_opts.task_weights_every = 1;
    let cases = [
        train_support::config(&untied, &data, &dir.path().join("untied"), STEPS),
        train_support::config(&tied, &data, &dir.path().join("tied"), STEPS),
        upper,
        mtlora,
    ];
    for base in cases {
        let name = base.out.file_name().unwrap().to_string_lossy().to_string();
        let resident = TrainConfig {
            weights: WeightsMode::Stream,
            stream_head: StreamHead::Off,
            ..base.clone()
        };
        let (loss_r, params_r, reads_r, head_r) = run_head(&resident);
        assert_eq!(head_r, 0, "{name}: a resident head is read once at open");
        // One chunk (the whole head): the plain kernel's arithmetic, bit for bit.
        let one = TrainConfig {
            stream_head: StreamHead::On,
            out: base.out.with_extension("one"),
            ..resident.clone()
        };
        let (loss_1, params_1, _, head_1) = run_head(&one);
        assert_eq!(loss_1, loss_r, "{name}: one chunk, losses");
        assert_eq!(params_1, params_r, "{name}: one chunk, parameters");
        assert_eq!(
            head_1, STEPS,
            "{name}: one chunk stays staged for the second pass"
        );
        // Three chunks of ≤ 100 rows of the 261-token vocabulary: the sum rescaled per chunk
        // and dh accumulated over chunks round differently in the last bits.
        let three = TrainConfig {
            head_chunk_rows: Some(100),
            out: base.out.with_extension("three"),
            ..one.clone()
        };
        let (loss_3, _, reads_3, head_3) = run_head(&three);
        for (a, b) in loss_3.iter().zip(&loss_r) {
            assert!((a - b).abs() <= 1e-5 * b.abs(), "{name}: loss {a} vs {b}");
        }
        // Parameters, with SGD on both sides: its update is lr·g, so the gradients' last-bit
        // differences stay last-bit differences (AdamW's g/√v magnifies them wherever a
        // gradient is near 0, as MT-LoRA's rarely routed task adapters' are).
        let sgd = |c: &TrainConfig, ext: &str| TrainConfig {
            optimizer: OptimizerKind::Sgd,
            out: base.out.with_extension(ext),
            ..c.clone()
        };
        let (_, params_rs, _, _) = run_head(&sgd(&resident, "resident-sgd"));
        let (_, params_3s, _, _) = run_head(&sgd(&three, "three-sgd"));
        let worst = params_3s
            .iter()
            .flatten()
            .zip(params_rs.iter().flatten())
            .map(|(a, b)| (a - b).abs() / (1e-3 + b.abs()))
            .fold(0.0f32, f32::max);
        assert!(
            worst <= 1e-5,
            "{name}: parameters differ by {worst} (relative)"
        );
        assert_ne!(params_rs, params_r, "{name}: SGD and AdamW differ");
        // Reads: what the plan says a step costs (the backward re-reads its top layer, the head
        // is read twice a micro-batch); layer 0 stays staged from a backward that reaches it.
        let file = GgufFile::open(&three.model).unwrap();
        let st = plan_training(&file, &three)
            .unwrap()
            .breakdown
            .weights
            .streamed
            .unwrap();
        assert_eq!((st.head_chunks, st.head_reads_per_step), (3, 6), "{name}");
        assert_eq!(head_3, STEPS * 6, "{name}: head chunk reads");
        let lowest = base.lora.layers.map_or(0, |r| r.first) as u64;
        let per_step = st.reads_per_step - u64::from(lowest == 0);
        assert_eq!(reads_3, STEPS * per_step + u64::from(lowest == 0), "{name}");
        assert_eq!(
            reads_3,
            reads_r + STEPS,
            "{name}: one more layer read a step"
        );
    }
}

#[test]
fn auto_streams_the_head_only_when_a_resident_head_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = train_support::write_fixture(dir.path(), "q4_0", 10);
    // A real vocabulary (128,256 rows) so the head is worth streaming.
    let model = dir.path().join("wide.gguf");
    let p = Preset {
        n_layer: 2,
        n_vocab: 128_256,
        ..TINY
    };
    write_test_model(&p, WeightTypes::parse("q4_0").unwrap(), 3, &model).unwrap();
    let file = GgufFile::open(&model).unwrap();
    let mut cfg = train_support::config(&model, &data, &dir.path().join("run"), 1);
    cfg.seq_len = 32;
    cfg.batch = 1;
    let layers = plan_training(&file, &stream_cfg(&cfg)).unwrap().breakdown;
    let mut on = stream_cfg(&cfg);
    on.stream_head = StreamHead::On;
    let head = plan_training(&file, &on).unwrap().breakdown;
    let st = head.weights.streamed.as_ref().unwrap();
    let head_bytes = st.head_bytes;
    assert!(head_bytes > 0 && st.head_chunks >= 1);
    // The head leaves the resident set (its loss statistics are an overhead).
    assert!(
        head.weights.resident_bytes + head_bytes / 2 < layers.weights.resident_bytes,
        "{} vs {}",
        head.weights.resident_bytes,
        layers.weights.resident_bytes
    );
    assert!(head.report().contains("head streamed"), "{}", head.report());
    // Between the two: auto streams the head and says why; a resident-head plan over the budget
    // offers --stream-head on among its suggestions.
    cfg.budget_bytes = Some((layers.total_bytes + head.total_bytes) / 2);
    let auto = plan_training(&file, &cfg).unwrap().breakdown;
    assert!(auto.fits, "{}", auto.report());
    let why = auto.weights.streamed.as_ref().unwrap().head_reason.clone();
    assert!(why.unwrap().contains("chosen by the plan"));
    let mut off = stream_cfg(&cfg);
    off.stream_head = StreamHead::Off;
    let refused = plan_training(&file, &off).unwrap().breakdown;
    assert!(!refused.fits);
    let flags: Vec<String> = refused
        .suggestions
        .unwrap()
        .found
        .iter()
        .map(|s| s.flags.clone())
        .collect();
    assert!(flags.iter().any(|f| f == "--stream-head on"), "{flags:?}");
    // Roomy: the head stays resident.
    cfg.budget_bytes = Some(layers.total_bytes);
    let roomy = plan_training(&file, &stream_cfg(&cfg)).unwrap().breakdown;
    assert_eq!(roomy.weights.streamed.unwrap().head_chunks, 0);
    // The KL anchor needs the resident head: `on` is refused by name, `auto` keeps it resident.
    let mut kl = on.clone();
    kl.replay = Some(Replay::File(data.clone()));
    kl.kl_anchor = 0.5;
    let e = Trainer::new(&file, &kl).err().expect("refused").to_string();
    assert!(
        e.contains("--stream-head on") && e.contains("--kl-anchor"),
        "{e}"
    );
    let mut on_map = on.clone();
    on_map.weights = WeightsMode::Map;
    assert!(Trainer::new(&file, &on_map).is_err());
}
