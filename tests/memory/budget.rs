//! The training budget (`train::budget`): the breakdown of the `tiny` preset computed by hand
//! (tensor bytes from the ggml block sizes, LoRA and AdamW state from the shapes), 8-bit against
//! f32 state, state on disk, SGD; suggestions that fit when applied; the refusal message; the
//! flagship 8B plan against 5.5 GiB and the numbers of docs/ARCHITECTURE.md#10-boards; the 70B
//! against an Orin Nano.

use edgetune::adapters::Target;
use edgetune::gguf::GgufFile;
use edgetune::memory::{Board, parse_bytes};
use edgetune::testmodel::{LLAMA_3_1_8B, LLAMA_3_1_70B, TINY, WeightTypes, write_test_model};
use edgetune::train::budget::{
    BINARY_RESIDENT_BYTES, Breakdown, ModelWeights, THREAD_RESIDENT_BYTES,
    TOKENIZER_BYTES_PER_ENTRY, TOKENIZER_FIXED_BYTES, plan_training, plan_training_for,
};
use edgetune::train::plan_llama::llama_training_buffers;
use edgetune::train::{OptimizerKind, StatePlace, TrainConfig, WeightsMode};

const GIB: u64 = 1 << 30;

fn q4_0() -> WeightTypes {
    WeightTypes::parse("q4_0").unwrap()
}

/// r = 4 on all seven projections, two tokens, three threads.
fn tiny_cfg() -> TrainConfig {
    let mut c = TrainConfig {
        seq_len: 2,
        batch: 1,
        threads: Some(3),
        ..TrainConfig::default()
    };
    c.lora.rank = 4;
    c
}

fn type_bytes(b: &Breakdown, ty: &str) -> (usize, u64, u64) {
    let t = b.weights.by_type.iter().find(|t| t.ty == ty).unwrap();
    (t.tensors, t.file_bytes, t.resident_bytes)
}

/// Every number of the tiny plan, by hand. Tiny: 2 layers, dim 256, 4 heads (64 wide), 2 KV
/// heads (K/V width 128), FFN 512, vocabulary 261.
#[test]
fn tiny_breakdown_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_test_model(&TINY, q4_0(), 1, &path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let cfg = tiny_cfg();
    let planned = plan_training(&file, &cfg).unwrap();
    let b = &planned.breakdown;

    // From the header alone, and from the preset without a file: the same plan.
    let from_preset = ModelWeights::from_preset(&TINY, q4_0()).unwrap();
    assert_eq!(from_preset.header_bytes, file.data_offset());
    let b2 = plan_training_for(&from_preset, &cfg).unwrap().breakdown;
    assert_eq!(b2.total_bytes, b.total_bytes);

    // Q4_0 rows of 256 are 8 blocks × 18 B = 144 B (512: 288 B). Per layer: q 256 rows, k and
    // v 128, o 256, gate and up 512 rows of 144 B, down 256 rows of 288 B.
    let layer = 256 * 144 * 2 + 128 * 144 * 2 + 512 * 144 * 2 + 256 * 288;
    let token_embd = 261 * 144;
    assert_eq!(
        type_bytes(b, "Q4_0"),
        (15, 2 * layer + token_embd, 2 * layer + 2 * 144)
    );
    // llama-quantize puts the output in Q6_K: 261 rows of one 210-byte block.
    assert_eq!(type_bytes(b, "Q6_K"), (1, 261 * 210, 261 * 210));
    // Norms (2 per layer + output_norm) of 256 f32, rope_freqs 32 f32.
    assert_eq!(type_bytes(b, "F32"), (6, 5 * 1024 + 128, 5 * 1024 + 128));
    // token_embd: 2 tokens gather 2 rows by pread: the 144-byte staging copy of each counts.
    let g = b.weights.gathered.as_ref().unwrap();
    assert_eq!(
        (g.rows_per_step, g.n_rows, g.resident_bytes),
        (2, 261, 2 * 144)
    );

    // The arena: the same buffers as the plan's own LoRA constructor (all 7 targets, r = 4,
    // cross-entropy chunk capped at the 2 tokens).
    let arena = llama_training_buffers(&TINY.llama_config(), 2, 1, 4, 7, 2, true)
        .unwrap()
        .pack()
        .unwrap();
    assert_eq!(b.arena.arena_bytes, arena.arena_bytes());
    assert_eq!(b.arena.peak_live_bytes, arena.peak_live_bytes());
    assert_eq!(b.arena.sum_bytes, arena.sum_bytes());
    assert_eq!(planned.plan.arena_bytes(), arena.arena_bytes());

    // LoRA r = 4: per layer 4·(in + out) summed over q (256+256), k (256+128), v (256+128),
    // o (256+256), gate and up (256+512), down (512+256) = 4 · 4096.
    assert_eq!(b.adapters.n_params, 2 * 4 * 4096);
    assert_eq!(b.adapters.master_bytes, 4 * 2 * 4 * 4096);
    assert_eq!(b.adapters.adapted, 14);
    // AdamW f32: m and v, 8 B per parameter (every tensor a multiple of 64 B already).
    assert_eq!(b.optimizer.ram_bytes, 8 * 2 * 4 * 4096);
    assert_eq!(b.optimizer.disk_bytes, 0);

    // Overheads: 3 threads × (per-thread constant + the matmul's 128 × 256 f32 tile, larger
    // than 17 rows of 512); 261 tokens, no merges; 12 B of batch buffers per token.
    let threads = 3 * (THREAD_RESIDENT_BYTES + 4 * 128 * 256);
    let tokenizer = TOKENIZER_FIXED_BYTES + TOKENIZER_BYTES_PER_ENTRY * 261;
    let overheads = BINARY_RESIDENT_BYTES + file.data_offset() + tokenizer + 24 + threads;
    assert_eq!(b.overhead_bytes, overheads);
    let total = (2 * layer + 2 * 144 + 261 * 210 + 5 * 1024 + 128)
        + arena.arena_bytes()
        + 4 * 2 * 4 * 4096
        + 8 * 2 * 4 * 4096
        + overheads;
    assert_eq!(b.total_bytes, total);
    assert!(b.fits && b.budget_bytes.is_none() && b.suggestions.is_none());

    // With --lock-weights the whole map is locked: token_embd counts in full.
    let locked = plan_training(
        &file,
        &TrainConfig {
            lock_weights: true,
            ..cfg
        },
    )
    .unwrap()
    .breakdown;
    assert_eq!(type_bytes(&locked, "Q4_0").2, 2 * layer + token_embd);
    assert!(locked.weights.gathered.is_none());
}

/// 8-bit blockwise state: 2 B per element + 2 f32 absmax per block of 256, rounded to 64 B —
/// for tensors of at least 4096 elements; smaller ones keep 8 B per element.
#[test]
fn eight_bit_state_against_f32_disk_and_sgd() {
    let model = ModelWeights::from_preset(&TINY, q4_0()).unwrap();
    let plan = |f: &dyn Fn(&mut TrainConfig)| {
        let mut c = tiny_cfg();
        c.lora.rank = 16;
        f(&mut c);
        plan_training_for(&model, &c).unwrap().breakdown
    };
    let f32_state = plan(&|_| {});
    assert_eq!(f32_state.optimizer.ram_bytes, 8 * 2 * 16 * 4096);
    let eight = plan(&|c| c.optimizer_state_bits = 8);
    // r = 16, per layer: 4096-element tensors: q A, q B, k A, v A, o A, o B, gate A, up A,
    // down B (9); 8192: gate B, up B, down A (3); 2048 (f32): k B, v B (2).
    let s8 = |n: u64| (2 * n + 8 * n.div_ceil(256)).div_ceil(64) * 64;
    let per_layer = 9 * s8(4096) + 3 * s8(8192) + 2 * 8 * 2048;
    assert_eq!(eight.optimizer.ram_bytes, 2 * per_layer);
    assert_eq!(
        (eight.optimizer.tensors_8bit, eight.optimizer.tensors_f32),
        (24, 4)
    );
    assert!(eight.total_bytes < f32_state.total_bytes);
    assert_eq!(
        f32_state.total_bytes - eight.total_bytes,
        f32_state.optimizer.ram_bytes - eight.optimizer.ram_bytes
    );
    // r = 4: every tensor is under 4096 elements, so "8-bit" keeps f32 state throughout.
    let small = |bits| {
        let mut c = tiny_cfg();
        c.optimizer_state_bits = bits;
        plan_training_for(&model, &c).unwrap().breakdown.optimizer
    };
    assert_eq!(small(8).ram_bytes, small(32).ram_bytes);
    assert_eq!(small(8).tensors_8bit, 0);

    // On disk: the file holds every page, RAM only the largest (a 16 × 512 tensor's f32 page).
    let disk = plan(&|c| c.optimizer_state = StatePlace::Disk);
    assert_eq!(disk.optimizer.disk_bytes, 8 * 2 * 16 * 4096);
    assert_eq!(disk.optimizer.ram_bytes, 8 * 16 * 512);
    // SGD: a 4-byte momentum per parameter, nothing without momentum.
    let sgd = plan(&|c| {
        c.optimizer = OptimizerKind::Sgd;
        c.momentum = 0.9;
    });
    assert_eq!(sgd.optimizer.ram_bytes, 4 * 2 * 16 * 4096);
    assert_eq!(
        plan(&|c| c.optimizer = OptimizerKind::Sgd)
            .optimizer
            .ram_bytes,
        0
    );
}

/// The flagship: Llama 3.1 8B in Q4_0, LoRA r = 16 on all 7 projections, sequence 512,
/// micro-batch 1, fits 5.5 GiB; the shapes give the numbers of docs/ARCHITECTURE.md#10-boards.
#[test]
fn llama_8b_q4_0_fits_5_5_gib() {
    let model = ModelWeights::from_preset(&LLAMA_3_1_8B, q4_0()).unwrap();
    let mut cfg = TrainConfig {
        seq_len: 512,
        batch: 1,
        threads: Some(6),
        budget_bytes: Some(parse_bytes("5.5GiB").unwrap()),
        ..TrainConfig::default()
    };
    cfg.lora.rank = 16;
    assert_eq!(cfg.lora.targets, Target::ALL.to_vec());
    let b = plan_training_for(&model, &cfg).unwrap().breakdown;
    // docs/ARCHITECTURE.md#10-boards: Q4_0 ≈ 4.33 GiB of weights; 41,943,040 LoRA parameters, 168
    // MB of f32 weights and 336 MB of AdamW m + v.
    let file_gib = b.weights.file_bytes as f64 / GIB as f64;
    assert!((4.30..4.36).contains(&file_gib), "{file_gib}");
    assert_eq!(b.adapters.n_params, 41_943_040);
    assert_eq!(b.adapters.master_bytes, 167_772_160);
    assert_eq!(b.optimizer.ram_bytes, 335_544_320);
    // Weights resident: everything but token_embd (128,256 rows of 2304 B), of which only the
    // 512 gathered rows count.
    let token_embd = 128_256 * 2304;
    assert_eq!(
        b.weights.resident_bytes,
        b.weights.file_bytes - token_embd + 512 * 2304
    );
    assert!(b.fits, "{}", b.report());
    assert!(b.total_bytes <= parse_bytes("5.5GiB").unwrap());
    // The arena is packed to its lower bound within 1 %.
    assert!(b.arena.arena_bytes as f64 <= 1.01 * b.arena.peak_live_bytes as f64);
    b.check().unwrap();

    // Q4_K_M fits too (docs/ARCHITECTURE.md#10-boards: ≈ 4.6 GiB of weights).
    let km =
        ModelWeights::from_preset(&LLAMA_3_1_8B, WeightTypes::parse("q4_k_m").unwrap()).unwrap();
    let b = plan_training_for(&km, &cfg).unwrap().breakdown;
    let file_gib = b.weights.file_bytes as f64 / GIB as f64;
    assert!((4.5..4.7).contains(&file_gib), "{file_gib}");
    assert!(b.fits, "{}", b.report());
}

/// Over budget: every suggestion fits when applied (with the total it announced), each is
/// minimal (dropping any one change breaks it), and the refusal names the numbers.
#[test]
fn suggestions_fit_when_applied_and_refusal_names_the_numbers() {
    let model = ModelWeights::from_preset(&LLAMA_3_1_8B, q4_0()).unwrap();
    let budget = parse_bytes("5GiB").unwrap();
    // Mapped weights: under `auto`, a configuration that does not fit mapped may fit streamed,
    // and a suggestion would not be minimal under that rule.
    let cfg = TrainConfig {
        seq_len: 512,
        batch: 4,
        checkpointing: false,
        threads: Some(6),
        budget_bytes: Some(budget),
        weights: WeightsMode::Map,
        ..TrainConfig::default()
    };
    let b = plan_training_for(&model, &cfg).unwrap().breakdown;
    assert!(!b.fits);
    let sg = b.suggestions.as_ref().unwrap();
    assert!(!sg.found.is_empty() && sg.found.len() <= 5);
    let mut last_changes = 0;
    for s in &sg.found {
        let applied = s.apply(&cfg);
        let ab = plan_training_for(&model, &applied).unwrap().breakdown;
        assert!(ab.fits && ab.total_bytes <= budget, "{}", s.flags);
        assert_eq!(ab.total_bytes, s.total_bytes, "{}", s.flags);
        assert!(s.changes.len() >= last_changes, "fewest changes first");
        last_changes = s.changes.len();
        for skip in 0..s.changes.len() {
            let mut c = cfg.clone();
            for (i, ch) in s.changes.iter().enumerate() {
                if i != skip {
                    ch.apply(&mut c);
                }
            }
            let partial = plan_training_for(&model, &c).unwrap().breakdown;
            assert!(
                !partial.fits,
                "{} without change {skip} fits already",
                s.flags
            );
        }
    }
    let e = b.check().unwrap_err().to_string();
    assert!(e.contains(&b.total_bytes.to_string()), "{e}");
    assert!(e.contains(&budget.to_string()), "{e}");
    assert!(
        e.contains("Q4_0") && e.contains("arena") && e.contains("TOTAL"),
        "{e}"
    );
    for s in &sg.found {
        assert!(e.contains(&s.flags), "{e}");
    }
}

/// Llama 3.1 70B with mapped weights cannot fit an Orin Nano: its weights alone exceed the
/// process budget, and the suggestions say nothing fits, with the numbers. Streamed, it fits
/// at a short sequence (`scripts/prove-70b.sh` measures it); at sequence 512 only with the
/// fused per-layer update (`auto` chooses it, with clipping's norm pass) or the head streamed
/// too, and without either, `auto` suggests streamed configurations that do.
#[test]
fn llama_70b_fits_an_orin_nano_only_streamed() {
    let model = ModelWeights::from_preset(&LLAMA_3_1_70B, q4_0()).unwrap();
    let board = Board::builtin("orin-nano-8gb").unwrap();
    let mut cfg = TrainConfig {
        seq_len: 512,
        threads: Some(board.cpu_cores),
        budget_bytes: Some(board.process_budget_bytes),
        ..TrainConfig::default()
    };
    let fused = plan_training_for(&model, &cfg).unwrap().breakdown;
    assert!(fused.fits && fused.weights.streamed.is_some());
    let why = fused.fused_update.as_deref().unwrap_or("");
    assert!(why.contains("2× compute"), "{}", fused.report());
    cfg.fused_update = edgetune::train::FusedUpdate::Off;
    // Unfused, `--stream-head auto` streams the 0.8 GiB head too, and that fits.
    let head = plan_training_for(&model, &cfg).unwrap().breakdown;
    let st = head.weights.streamed.as_ref().unwrap();
    assert!(head.fits && st.head_chunks == 2, "{}", head.report());
    assert!(
        st.head_reason
            .as_deref()
            .unwrap()
            .contains("chosen by the plan")
    );
    // With the head resident it does not; the suggestions are streamed configurations.
    cfg.stream_head = edgetune::train::StreamHead::Off;
    let auto = plan_training_for(&model, &cfg).unwrap().breakdown;
    assert!(
        !auto.fits && auto.weights.streamed.is_some(),
        "{}",
        auto.report()
    );
    let found = &auto.suggestions.as_ref().unwrap().found;
    assert!(!found.is_empty(), "{}", auto.report());
    for s in found {
        let applied = plan_training_for(&model, &s.apply(&cfg)).unwrap().breakdown;
        assert!(
            applied.fits && applied.weights.streamed.is_some(),
            "{}",
            s.flags
        );
    }
    let mut short = cfg.clone();
    short.seq_len = 64;
    let b = plan_training_for(&model, &short).unwrap().breakdown;
    assert!(b.fits && b.weights.streamed.is_some(), "{}", b.report());
    cfg.weights = WeightsMode::Map;
    let b = plan_training_for(&model, &cfg).unwrap().breakdown;
    assert!(!b.fits);
    assert!(
        b.weights.resident_bytes > 35 * GIB,
        "{}",
        b.weights.resident_bytes
    );
    let sg = b.suggestions.as_ref().unwrap();
    assert!(sg.found.is_empty());
    let note = sg.note.as_deref().unwrap();
    assert!(
        note.contains("nothing fits") && note.contains("6.00 GiB"),
        "{note}"
    );
    let e = b.check().unwrap_err().to_string();
    assert!(e.contains("nothing fits"), "{e}");
}

/// A budget that even the tiny model's fixed costs exceed: nothing fits, said with the numbers.
#[test]
fn nothing_fits_when_the_overheads_alone_exceed_the_budget() {
    let model = ModelWeights::from_preset(&TINY, q4_0()).unwrap();
    let cfg = TrainConfig {
        budget_bytes: Some(4 << 20),
        ..tiny_cfg()
    };
    let b = plan_training_for(&model, &cfg).unwrap().breakdown;
    assert!(!b.fits);
    let sg = b.suggestions.unwrap();
    assert!(sg.found.is_empty());
    assert!(sg.note.unwrap().contains("nothing fits"));
}

#[test]
fn bad_settings_are_errors_naming_the_flag() {
    let model = ModelWeights::from_preset(&TINY, q4_0()).unwrap();
    let err = |f: &dyn Fn(&mut TrainConfig)| {
        let mut c = tiny_cfg();
        f(&mut c);
        plan_training_for(&model, &c).unwrap_err().to_string()
    };
    assert!(err(&|c| c.seq_len = 4096).contains("--seq-len 4096 exceeds"));
    assert!(err(&|c| c.lora.targets.clear()).contains("--targets"));
    assert!(err(&|c| c.optimizer_state_bits = 4).contains("--optimizer-state-bits"));
    assert!(err(&|c| c.lora.rank = 0).contains("rank"));
}
