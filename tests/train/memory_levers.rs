//! The memory levers of a streamed run beyond streaming itself. The fused per-layer update
//! (`--fused-update on`): each layer's adapters are updated right after that layer's backward
//! and its gradients dropped; checked against the unfused update bit for bit (losses, gradient
//! norms, every parameter) over the methods it allows, with and without clipping (the
//! norm-only pass), mapped and streamed; the plan's smaller gradient memory and its automatic
//! choice; and the refusals, each naming the setting. bf16 layer checkpoints
//! (`--checkpoint-dtype bf16`): half the checkpoint bytes in the plan, a loss curve beside the
//! f32 one, and bit-identical again when streamed and fused on top (their gradients against
//! f64 are in tests/train/grad.rs). Layer checkpoints on disk (`--checkpoints-on disk`):
//! bit-identical to the same checkpoints in memory, f32 or bf16, with none left in the arena.

use std::path::{Path, PathBuf};

use edgetune::adapters::LayerRange;
use edgetune::gguf::GgufFile;
use edgetune::testmodel::{Preset, TINY, WeightTypes, write_test_model};
use edgetune::train::budget::{Breakdown, plan_training};
use edgetune::train::{
    CheckpointDtype, FusedUpdate, Method, Replay, SPILL_FILE, StatePlace, TrainConfig, Trainer,
    WeightsMode,
};

use crate::train_support;

const STEPS: u64 = 2;

/// A 4-layer tiny model (so a backward can stop above layer 0).
fn write_model(dir: &Path) -> PathBuf {
    let p = Preset { n_layer: 4, ..TINY };
    let path = dir.join("tiny4.gguf");
    write_test_model(&p, WeightTypes::parse("q4_k_m").unwrap(), 13, &path).unwrap();
    path
}

/// A directory with `examples` training examples and the 4-layer model: `(dir, data, model)`.
fn fixture(examples: usize) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = train_support::write_fixture(dir.path(), "q4_0", examples);
    let model = write_model(dir.path());
    (dir, data, model)
}

/// `(losses, gradient norms, learning rates, parameters, fused)` of a run.
type Run = (Vec<f64>, Vec<f64>, Vec<f32>, Vec<Vec<f32>>, bool);

fn run(cfg: &TrainConfig) -> Run {
    let file = GgufFile::open(&cfg.model).unwrap();
    let mut t = Trainer::new(&file, cfg).unwrap();
    let (mut losses, mut norms, mut lrs) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(p) = t.step().unwrap() {
        losses.push(p.loss);
        norms.push(p.grad_norm);
        lrs.push(p.lr);
    }
    let fused = t.train_step().shape().fused_update;
    (
        losses,
        norms,
        lrs,
        train_support::all_params(t.adapters()),
        fused,
    )
}

/// The plan's bytes of arena category `name`.
fn category(b: &Breakdown, name: &str) -> u64 {
    b.arena
        .categories
        .iter()
        .find(|c| c.category == name)
        .map(|c| c.bytes)
        .unwrap_or_else(|| panic!("no category {name}"))
}

fn with(cfg: &TrainConfig, name: &str, fused: FusedUpdate) -> TrainConfig {
    TrainConfig {
        fused_update: fused,
        out: cfg.out.with_file_name(format!("{name}-{fused}")),
        ..cfg.clone()
    }
}

#[test]
fn the_fused_update_equals_the_unfused_one_bit_for_bit() {
    let (dir, data, model) = fixture(60);
    let mut base = train_support::config(&model, &data, &dir.path().join("run"), STEPS);
    base.weights = WeightsMode::Map;
    base.max_grad_norm = 0.0;
    base.lora.dropout = 0.1;
    base.warmup_steps = 2;
    base.batch = 1;
    let mut cases: Vec<(String, TrainConfig)> = Vec::new();
    cases.push(("lora".into(), base.clone()));
    // Clipping: the norm-only pass first; a small bound so that it does clip.
    let mut clipped = base.clone();
    clipped.max_grad_norm = 1e-3;
    cases.push(("clipped".into(), clipped.clone()));
    let mut streamed = clipped.clone();
    streamed.weights = WeightsMode::Stream;
    cases.push(("streamed".into(), streamed));
    let mut upper = base.clone();
    upper.lora.layers = Some(LayerRange { first: 2, last: 3 });
    cases.push(("upper".into(), upper));
    let mut kl = base.clone();
    kl.replay = Some(Replay::File(data.clone()));
    kl.replay_ratio = 0.5;
    kl.kl_anchor = 0.5;
    cases.push(("kl".into(), kl));
    let mut sgd = base.clone();
    sgd.optimizer = edgetune::train::OptimizerKind::Sgd;
    sgd.momentum = 0.9;
    cases.push(("sgd".into(), sgd));
    for m in [
        Method::Rslora,
        Method::Loraplus,
        Method::Qlora,
        Method::Dora,
        Method::Olora,
        Method::Pissa,
        Method::Irqlora,
        Method::Hira,
    ] {
        let mut c = base.clone();
        c.method = m;
        cases.push((m.name().into(), c));
    }
    for (name, cfg) in cases {
        let (l0, n0, r0, p0, f0) = run(&with(&cfg, &name, FusedUpdate::Off));
        let (l1, n1, r1, p1, f1) = run(&with(&cfg, &name, FusedUpdate::On));
        assert!(!f0 && f1, "{name}");
        assert_eq!(l0.len() as u64, STEPS, "{name}");
        assert_eq!(l0, l1, "{name}: losses");
        assert_eq!(n0, n1, "{name}: gradient norms");
        assert_eq!(r0, r1, "{name}: learning rates");
        assert_eq!(p0, p1, "{name}: parameters");
        if cfg.max_grad_norm > 0.0 {
            assert!(
                n0.iter().all(|&n| n > cfg.max_grad_norm as f64),
                "{name}: the bound must clip: {n0:?}"
            );
        }
    }
}

#[test]
fn the_plan_holds_one_layers_gradients_and_chooses_the_fused_update_when_streaming() {
    let (dir, data, model) = fixture(10);
    let file = GgufFile::open(&model).unwrap();
    let mut cfg = train_support::config(&model, &data, &dir.path().join("run"), 1);
    cfg.max_grad_norm = 0.0;
    // The arena's bytes, and the bytes of all layers' gradients.
    let grads = |c: &TrainConfig| {
        let b = plan_training(&file, c).unwrap().breakdown;
        (b.arena.arena_bytes, category(&b, "AdapterGrad"), b)
    };
    cfg.weights = WeightsMode::Map;
    let (unfused, all_grads, plain) = grads(&cfg);
    assert!(plain.fused_update.is_none());
    // Mapped, auto stays unfused; on: one layer's gradients live at a time (4 equal layers:
    // three quarters of them leave the arena's peak).
    cfg.fused_update = FusedUpdate::On;
    let (fused, _, b) = grads(&cfg);
    assert!(
        unfused - fused >= all_grads / 2,
        "arena fused {fused}, unfused {unfused}, gradients {all_grads}"
    );
    assert_eq!(
        plain.arena.peak_live_bytes - b.arena.peak_live_bytes,
        all_grads * 3 / 4
    );
    assert!(b.total_bytes < plain.total_bytes);
    assert!(
        b.report().contains("one layer's at a time"),
        "{}",
        b.report()
    );
    assert!(b.config.contains("--fused-update on"), "{}", b.config);
    // Streamed without clipping, auto fuses: it costs nothing.
    cfg.fused_update = FusedUpdate::Auto;
    cfg.weights = WeightsMode::Stream;
    let (g, _, b) = grads(&cfg);
    assert_eq!(g, fused);
    let why = b.fused_update.expect("auto fuses when streaming");
    assert!(why.contains("chosen by the plan"), "{why}");
    // With clipping it costs a second pass: auto fuses only when the unfused step does not
    // fit, and the plan's reads double.
    cfg.max_grad_norm = 1.0;
    let (g, _, unfused_streamed) = grads(&cfg);
    assert_eq!(g, unfused, "no budget: unfused");
    let mut on = cfg.clone();
    on.fused_update = FusedUpdate::On;
    let (_, _, fused_streamed) = grads(&on);
    let reads = |b: &Breakdown| b.weights.streamed.as_ref().unwrap().reads_per_step;
    assert_eq!(reads(&fused_streamed), 2 * reads(&unfused_streamed));
    cfg.budget_bytes = Some((fused_streamed.total_bytes + unfused_streamed.total_bytes) / 2);
    let (g, _, b) = grads(&cfg);
    assert!(b.fits);
    assert_eq!(g, fused);
    let why = b.fused_update.expect("fused to fit");
    assert!(why.contains("2× compute"), "{why}");
    // Accumulation rules it out: auto stays unfused (and over budget).
    cfg.accum = 2;
    let (g, _, b) = grads(&cfg);
    assert!(g > fused && b.fused_update.is_none());
}

#[test]
fn what_the_fused_update_cannot_run_is_refused_naming_the_setting() {
    let (dir, data, model) = fixture(10);
    let file = GgufFile::open(&model).unwrap();
    let mut cfg = train_support::config(&model, &data, &dir.path().join("run"), 1);
    cfg.fused_update = FusedUpdate::On;
    let refuse = |c: &TrainConfig| Trainer::new(&file, c).err().expect("refused").to_string();
    let mut accum = cfg.clone();
    accum.accum = 2;
    let e = refuse(&accum);
    assert!(
        e.contains("--fused-update on") && e.contains("--accum 2"),
        "{e}"
    );
    for m in [
        Method::Adalora,
        Method::Mtlora,
        Method::Reslora,
        Method::Dylora,
        Method::Layerimp,
    ] {
        let mut c = cfg.clone();
        c.method = m;
        c.out = dir.path().join(m.name());
        let e = refuse(&c);
        assert!(
            e.contains("--fused-update on") && e.contains(&format!("--method {}", m.name())),
            "{m:?}: {e}"
        );
    }
}

/// `edgetune plan` and `train` take `--fused-update`, and the summary says it ran fused.
#[test]
fn the_cli_runs_the_fused_update() {
    let bin = env!("CARGO_BIN_EXE_edgetune");
    let (dir, data, model) = fixture(10);
    let m = model.to_str().unwrap();
    let out = std::process::Command::new(bin)
        .args([
            "plan",
            "--model",
            m,
            "--fused-update",
            "on",
            "--seq-len",
            "64",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("one layer's at a time"), "{text}");
    let run = dir.path().join("run");
    let ok = std::process::Command::new(bin)
        .args(["train", "--model", m, "--data", data.to_str().unwrap()])
        .args([
            "--out",
            run.to_str().unwrap(),
            "--steps",
            "2",
            "--rank",
            "4",
        ])
        .args([
            "--fused-update",
            "on",
            "--weights",
            "stream",
            "--threads",
            "2",
        ])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["fused_update"], true, "{s}");
    assert!(s["streamed"]["layer_reads"].as_u64().unwrap() > 0, "{s}");
    let bad = std::process::Command::new(bin)
        .args(["plan", "--model", m, "--fused-update", "sometimes"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("auto, on or off"));
}

#[test]
fn bf16_checkpoints_halve_their_bytes_and_train_beside_f32() {
    let (dir, data, model) = fixture(30);
    let file = GgufFile::open(&model).unwrap();
    let mut f32_cfg = train_support::config(&model, &data, &dir.path().join("f32"), 3);
    f32_cfg.weights = WeightsMode::Map;
    f32_cfg.batch = 1;
    let bf16_cfg = TrainConfig {
        checkpoint_dtype: CheckpointDtype::Bf16,
        out: dir.path().join("bf16"),
        ..f32_cfg.clone()
    };
    let checkpoint_bytes = |c: &TrainConfig| {
        let b = plan_training(&file, c).unwrap().breakdown;
        (category(&b, "Checkpoint"), b)
    };
    let (k32, b32) = checkpoint_bytes(&f32_cfg);
    let (k16, b16) = checkpoint_bytes(&bf16_cfg);
    // 4 layer inputs of 256 tokens × dim 256 at 4 bytes or 2 (the top layer's f32 output,
    // which the loss reads, is in the category too).
    assert_eq!(k32 - k16, 4 * 256 * 256 * 2, "{k32} {k16}");
    assert!(b16.arena.arena_bytes < b32.arena.arena_bytes);
    assert!(
        b16.config.contains("--checkpoint-dtype bf16"),
        "{}",
        b16.config
    );
    // Trained: the curve stays beside the f32 one (the residual stream rounded to bf16 where
    // each layer begins), and differs from it.
    let (l32, _, _, p32, _) = run(&f32_cfg);
    let (l16, _, _, p16, _) = run(&bf16_cfg);
    for (a, b) in l32.iter().zip(&l16) {
        assert!((a - b).abs() <= 1e-2 * a.abs(), "f32 {l32:?}, bf16 {l16:?}");
    }
    assert_ne!(p32, p16);
    // Streamed and fused on top of bf16 checkpoints: bit-identical to mapped and unfused.
    let mut all = bf16_cfg.clone();
    all.weights = WeightsMode::Stream;
    all.fused_update = FusedUpdate::On;
    all.out = dir.path().join("all");
    let (la, _, _, pa, fused) = run(&all);
    assert!(fused);
    assert_eq!((la, pa), (l16, p16));
    // Without checkpointing there is nothing to store in bf16.
    let mut none = bf16_cfg.clone();
    none.checkpointing = false;
    let e = Trainer::new(&file, &none)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("--checkpoint-dtype bf16") && e.contains("--no-checkpointing"),
        "{e}"
    );
}

#[test]
fn checkpoints_on_disk_equal_checkpoints_in_memory_and_leave_the_arena() {
    let (dir, data, model) = fixture(30);
    let file = GgufFile::open(&model).unwrap();
    let mut ram = train_support::config(&model, &data, &dir.path().join("ram"), 2);
    ram.weights = WeightsMode::Map;
    ram.batch = 1;
    for dtype in [CheckpointDtype::F32, CheckpointDtype::Bf16] {
        ram.checkpoint_dtype = dtype;
        ram.out = dir.path().join(format!("ram-{dtype}"));
        let disk = TrainConfig {
            checkpoints_on: StatePlace::Disk,
            out: dir.path().join(format!("disk-{dtype}")),
            ..ram.clone()
        };
        let plan = |c: &TrainConfig| plan_training(&file, c).unwrap().breakdown;
        let (in_ram, on_disk) = (plan(&ram), plan(&disk));
        // Only the top layer's f32 output (read by the loss) stays in the category.
        assert_eq!(category(&on_disk, "Checkpoint"), 256 * 256 * 4, "{dtype}");
        let per_value = if dtype == CheckpointDtype::Bf16 { 2 } else { 4 };
        assert_eq!(
            on_disk.checkpoint_spill_bytes,
            Some(4 * 256 * 256 * per_value)
        );
        assert!(
            on_disk.arena.arena_bytes < in_ram.arena.arena_bytes,
            "{dtype}"
        );
        assert!(on_disk.report().contains("layer inputs in a file"));
        assert!(on_disk.config.contains("--checkpoints-on disk"));
        let (l0, _, _, p0, _) = run(&ram);
        let (l1, _, _, p1, _) = run(&disk);
        assert_eq!((l0, p0), (l1, p1), "{dtype}");
        assert!(
            !disk.out.join(SPILL_FILE).exists(),
            "the spill file goes with the run"
        );
    }
    let mut none = ram.clone();
    none.checkpoints_on = StatePlace::Disk;
    none.checkpoint_dtype = CheckpointDtype::F32;
    none.checkpointing = false;
    let e = Trainer::new(&file, &none)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("--checkpoints-on disk") && e.contains("--no-checkpointing"),
        "{e}"
    );
}
