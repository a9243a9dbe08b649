//! The Llama training-step buffer list (`memory::plan::llama_training_buffers`): sizes checked
//! against hand-computed shapes (the LoRA parameter count of docs/ARCHITECTURE.md#10-boards, the
//! cross-entropy chunk), lifetimes against the schedule, and checkpointing against no
//! checkpointing.

use edgetune::memory::plan::{Category, Plan};
use edgetune::model::LlamaConfig;
use edgetune::train::plan_llama::{
    Bwd, Fwd, LlamaSchedule, TARGETS, TrainShape, llama_training_buffers, llama_training_plan,
};

fn config(
    n_layer: usize,
    dim: usize,
    n_head: usize,
    n_head_kv: usize,
    ffn: usize,
    n_vocab: usize,
) -> LlamaConfig {
    LlamaConfig {
        n_layer,
        dim,
        n_head,
        n_head_kv,
        head_dim: dim / n_head,
        ffn,
        n_vocab,
        context_length: 2048,
        rope_base: 500_000.0,
        rms_eps: 1e-5,
        rope_dim: dim / n_head,
    }
}

/// The shape of testmodel's TINY preset (byte vocabulary 256 + specials).
fn tiny() -> LlamaConfig {
    config(2, 256, 4, 2, 512, 259)
}

fn llama_8b() -> LlamaConfig {
    config(32, 4096, 32, 8, 14_336, 128_256)
}

fn plan(cfg: &LlamaConfig, seq: usize, rank: usize, chunk: usize, ckpt: bool) -> Plan {
    llama_training_buffers(cfg, seq, 1, rank, 7, chunk, ckpt)
        .unwrap()
        .pack()
        .unwrap()
}

fn total(plan: &Plan, c: Category) -> u64 {
    plan.buffers()
        .iter()
        .filter(|p| p.request.category == c)
        .map(|p| p.request.bytes)
        .sum()
}

#[test]
fn the_8b_plan_has_the_hand_computed_sizes() {
    let cfg = llama_8b();
    let p = plan(&cfg, 512, 16, 64, true);
    // docs/ARCHITECTURE.md#10-boards: LoRA r=16 on all 7 projections of Llama 3.1 8B = 41,943,040
    // parameters.
    assert_eq!(total(&p, Category::AdapterGrad), 41_943_040 * 4);
    let ce = &p.get(p.find("ce.logits").unwrap()).unwrap().request;
    assert_eq!(ce.bytes, 64 * 128_256 * 4);
    // One [512, 4096] f32 checkpoint per layer, plus the top layer's output.
    assert_eq!(total(&p, Category::Checkpoint), 33 * 512 * 4096 * 4);
    // All checkpoints and the adapter gradients are live together at layer 0's backward,
    // with at least one layer's gate/up/swiglu recompute (3 × [512, 14336]).
    let floor = 32 * 512 * 4096 * 4 + 41_943_040 * 4 + 3 * 512 * 14_336 * 4;
    assert!(
        p.peak_live_bytes() >= floor,
        "{} < {floor}",
        p.peak_live_bytes()
    );
    println!(
        "Llama 3.1 8B, seq 512, batch 1, r 16 × 7, ce chunk 64, checkpointing:\n{}",
        p.report()
    );
    let nc = plan(&cfg, 512, 16, 64, false);
    println!("without checkpointing:\n{}", nc.report());
}

#[test]
fn checkpointing_shrinks_the_arena() {
    for (cfg, factor) in [(tiny(), 1), (llama_8b(), 4)] {
        let with = plan(&cfg, 512, 16, 64, true);
        let without = plan(&cfg, 512, 16, 64, false);
        // Without checkpointing every layer keeps xn, q, k, v, att, mid, fn, gate, up, sw
        // (≥ 4 [T, D] + 3 [T, F]) until its backward.
        let kept = (cfg.n_layer * 512 * (4 * cfg.dim + 3 * cfg.ffn) * 4) as u64;
        assert!(without.peak_live_bytes() >= kept);
        assert!(
            with.arena_bytes() * factor < without.arena_bytes(),
            "{} vs {}",
            with.arena_bytes(),
            without.arena_bytes()
        );
        assert!(with.arena_bytes() < without.arena_bytes());
        assert_eq!(total(&without, Category::Recompute), 0);
        assert_eq!(total(&without, Category::Checkpoint), 0);
    }
}

#[test]
fn the_cross_entropy_chunk_is_chunk_by_vocab() {
    for (cfg, chunk) in [
        (tiny(), 1),
        (tiny(), 37),
        (llama_8b(), 64),
        (llama_8b(), 128),
    ] {
        for ckpt in [false, true] {
            let p = plan(&cfg, 128, 8, chunk, ckpt);
            let ce = &p.get(p.find("ce.logits").unwrap()).unwrap().request;
            assert_eq!(ce.bytes, (chunk * cfg.n_vocab * 4) as u64);
            assert_eq!(ce.category, Category::CrossEntropy);
        }
    }
}

#[test]
fn recomputed_buffers_live_only_within_their_layers_backward() {
    let cfg = tiny();
    let s = LlamaSchedule::new(cfg.n_layer).unwrap();
    let p = plan(&cfg, 64, 4, 16, true);
    for l in 0..cfg.n_layer {
        let (start, end) = (s.recompute(l, Fwd::AttnNorm), s.bwd(l, Bwd::AttnNorm));
        let prefix = format!("L{l}.rc.");
        let rc: Vec<_> = p
            .buffers()
            .iter()
            .filter(|b| b.request.name.starts_with(&prefix))
            .collect();
        // All 15 layer activations (`y` too: the ffn_down adapter adds into it), plus one H
        // per target.
        assert_eq!(rc.len(), 15 + TARGETS.len());
        for b in rc {
            assert!(
                start <= b.request.first_use && b.request.last_use <= end,
                "{:?}",
                b.request
            );
        }
        // The layer input lives from its producer to its own backward.
        let x = &p.get(p.find(&format!("L{l}.x")).unwrap()).unwrap().request;
        assert_eq!(x.last_use, end);
        assert_eq!(x.bytes, (64 * cfg.dim * 4) as u64);
    }
    // H of q is [T, r].
    let h = &p.get(p.find("L1.rc.h.q").unwrap()).unwrap().request;
    assert_eq!(h.bytes, 64 * 4 * 4);
    assert_eq!(h.category, Category::AdapterActivation);
}

#[test]
fn the_schedule_runs_forward_loss_backward_optimizer() {
    let s = LlamaSchedule::new(3).unwrap();
    let mut last = s.embed();
    for l in 0..3 {
        for f in [Fwd::AttnNorm, Fwd::Down] {
            assert!(s.fwd(l, f) > last);
            last = s.fwd(l, f);
        }
    }
    assert!(s.loss(edgetune::train::plan_llama::Loss::FinalNorm) > last);
    last = s.loss(edgetune::train::plan_llama::Loss::FinalNormBackward);
    for l in (0..3).rev() {
        for step in [
            s.recompute(l, Fwd::AttnNorm),
            s.recompute(l, Fwd::Down),
            s.bwd(l, Bwd::Down),
            s.bwd(l, Bwd::AttnNorm),
        ] {
            assert!(step > last);
            last = step;
        }
    }
    assert!(s.optimizer() > last);
    assert_eq!(s.n_steps(), s.optimizer() + 1);
    // 1 embed + 3 × 8 forward + 3 loss + 3 × 16 backward + 1 optimizer.
    assert_eq!(s.n_steps(), 1 + 24 + 3 + 48 + 1);
}

#[test]
fn adapter_grads_follow_the_targets() {
    let cfg = tiny();
    let (d, q, kv, f) = (cfg.dim, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
    let per_target = [d + q, d + kv, d + kv, q + d, d + f, d + f, f + d];
    for n in 0..=7 {
        let p = llama_training_buffers(&cfg, 32, 2, 8, n, 16, true)
            .unwrap()
            .pack()
            .unwrap();
        let expect: usize = per_target[..n].iter().sum::<usize>() * 8 * 4 * cfg.n_layer;
        assert_eq!(total(&p, Category::AdapterGrad), expect as u64);
        // The CPU updates the optimizer pages in place: no staging unless asked for.
        assert_eq!(total(&p, Category::OptimizerStaging), 0);
        let mut shape = TrainShape::lora(&cfg, 32, 2, 8, n, 16, true).unwrap();
        shape.optimizer_staging = true;
        shape.accumulate = true;
        let p = llama_training_plan(&cfg, &shape).unwrap().pack().unwrap();
        assert_eq!(total(&p, Category::OptimizerStaging) > 0, n > 0);
        // With accumulation, `grad.tmp` holds the largest adapter's gradients.
        let largest = per_target[..n].iter().max().map_or(0, |m| m * 8 * 4);
        assert_eq!(total(&p, Category::AdapterGrad), (expect + largest) as u64);
    }
    assert!(llama_training_buffers(&cfg, 32, 1, 8, 8, 16, true).is_err());
    assert!(llama_training_buffers(&cfg, 0, 1, 8, 7, 16, true).is_err());
    assert!(llama_training_buffers(&cfg, 32, 1, 0, 7, 16, true).is_err());
    assert!(llama_training_buffers(&cfg, 32, 1, 8, 7, 0, true).is_err());
}

#[test]
fn micro_batch_multiplies_the_tokens() {
    let cfg = tiny();
    let p = llama_training_buffers(&cfg, 32, 3, 8, 7, 16, true)
        .unwrap()
        .pack()
        .unwrap();
    let x = &p.get(p.find("L0.x").unwrap()).unwrap().request;
    assert_eq!(x.bytes, (96 * cfg.dim * 4) as u64);
}
