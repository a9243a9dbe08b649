//! Backward ops of the CPU backend beside their forward ops, measured in the same run, on the
//! shapes of one `small`-preset layer (256 tokens, dim 768, ffn 2048, 12 heads / 4 KV heads of
//! 64): read each `…/bwd` row against the `…/fwd` row above it. Throughput is in tokens (shown
//! as elements/s), so the time ratio bwd/fwd is the inverse of the throughput ratio.
//!
//! Pairs (forward → backward):
//! - `matmul/{Q4_0,Q4_K}/{ffn_up,ffn_down}`: `matmul_xwt` → `matmul_dyw` (`ffn_up` is
//!   W [2048, 768], `ffn_down` W [768, 2048]);
//! - `rmsnorm`, `rope` (the q heads), `swiglu` ([256, 2048]), `attention` (causal, `pos0 = 0`):
//!   the forward as training calls it (saving `rstd` / `lse`) → its backward;
//! - `cross_entropy/{type}/vocab{261,128256}`: the output projection `matmul_xwt` (the logits an
//!   inference forward makes) → the fused chunked loss + `dh` (which does that product, the
//!   softmax and `matmul_dyw`). The Llama-3 vocabulary is measured on one chunk of 64 tokens
//!   (the default `ce_chunk`), so it stays cheap. `…/vocab_chunks4` beside `…/bwd`: the same
//!   loss with the head in 4 chunks of rows (`cross_entropy_vocab.rs`, a streamed head: two
//!   passes, so the logits product runs twice).
//!
//! Weights are random valid blocks (`testmodel::fill_random_blocks`), made in well under a second.
//!
//! `train_step/{train_step,train_step_kl_anchor,device_step,device_step_whole_ffn}`: one whole training micro-batch
//! (256 tokens, rank-16 LoRA on all seven projections, checkpointing) on a 2-layer `small` model
//! written by `testmodel` (Q4_0): the CPU `TrainStep`, the same with the micro-batch a replay row
//! under `--kl-anchor` (what the anchor costs), and `DeviceStep<CpuBackend>` (the same step in
//! `Backend` ops over one workspace, the CUDA engine's code), with its smallest workspace and
//! with the FFN in one chunk of all rows.

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main, measurement::WallTime,
};
use edgetune::backend::cpu::cross_entropy_vocab::{
    RowLse, ce_vocab_grad, ce_vocab_loss, ce_vocab_stats,
};
use edgetune::backend::cpu::rope::inv_freq;
use edgetune::backend::{AttentionDims, Backend, CpuBackend, RopeDims};
use edgetune::quant::GgmlType;
use edgetune::quant::matmul::QuantMatrix;
use edgetune::testmodel::{FastRng, SMALL, fill_random_blocks, llama3_rope_freqs};

/// Tokens per call: one sequence of a typical fine-tuning micro-batch.
const TOKENS: usize = 256;
const HEAD_DIM: usize = 64;
/// Llama 3's vocabulary, for the large cross-entropy case.
const LLAMA3_VOCAB: usize = 128_256;
/// Tokens of the large cross-entropy case: one chunk of the default `ce_chunk`.
const LLAMA3_CE_TOKENS: usize = 64;
const TYPES: [GgmlType; 2] = [GgmlType::Q4_0, GgmlType::Q4_K];

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g
}

/// `n` seeded values uniform in `[-scale, scale)`.
fn random(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = FastRng::new(seed);
    (0..n).map(|_| rng.range(-scale, scale)).collect()
}

/// Random valid `ty` blocks for a `[rows, cols]` matrix, std 0.02 (a trained layer's scale).
fn weight_bytes(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let bytes = ty.bytes_for((rows * cols) as u64).expect("whole blocks") as usize;
    let mut data = vec![0u8; bytes];
    fill_random_blocks(ty, 0.02, &mut FastRng::new(seed), &mut data).expect("random blocks");
    data
}

/// `matmul_xwt` vs `matmul_dyw` on the FFN projections, x / dy of 256 tokens.
fn matmul(c: &mut Criterion) {
    let be = CpuBackend;
    let mut g = group(c, "backward");
    g.throughput(Throughput::Elements(TOKENS as u64));
    let (dim, ffn) = (SMALL.dim, SMALL.ffn);
    for ty in TYPES {
        // (name, out, in) of W [out, in].
        for (name, rows, cols) in [("ffn_up", ffn, dim), ("ffn_down", dim, ffn)] {
            let data = weight_bytes(ty, rows, cols, 1);
            let w = be
                .weight(QuantMatrix::new(ty, rows, cols, &data).expect("matrix"))
                .expect("weight");
            let x = random(TOKENS * cols, 1.0, 2);
            let dy = random(TOKENS * rows, 1.0, 3);
            let mut y = vec![0.0f32; TOKENS * rows];
            let mut dx = vec![0.0f32; TOKENS * cols];
            g.bench_function(format!("matmul/{ty}/{name}/fwd"), |b| {
                b.iter(|| be.matmul_xwt(black_box(&x), TOKENS, &w, &mut y).unwrap())
            });
            g.bench_function(format!("matmul/{ty}/{name}/bwd"), |b| {
                b.iter(|| be.matmul_dyw(black_box(&dy), TOKENS, &w, &mut dx).unwrap())
            });
        }
    }
    g.finish();
}

/// The element-wise and per-row ops: rmsnorm, RoPE, SwiGLU.
fn elementwise(c: &mut Criterion) {
    let be = CpuBackend;
    let mut g = group(c, "backward");
    g.throughput(Throughput::Elements(TOKENS as u64));
    let (dim, ffn) = (SMALL.dim, SMALL.ffn);

    // rmsnorm over [256, 768]; the forward saves rstd as training does.
    let x = random(TOKENS * dim, 1.0, 4);
    let norm_w = random(dim, 1.0, 5);
    let dy = random(TOKENS * dim, 1.0, 6);
    let (mut y, mut dx) = (vec![0.0f32; TOKENS * dim], vec![0.0f32; TOKENS * dim]);
    let mut rstd = vec![0.0f32; TOKENS];
    g.bench_function("rmsnorm/fwd", |b| {
        b.iter(|| {
            be.rmsnorm(
                black_box(&x),
                &norm_w,
                SMALL.rms_eps,
                &mut y,
                Some(&mut rstd),
            )
            .unwrap()
        })
    });
    g.bench_function("rmsnorm/bwd", |b| {
        b.iter(|| {
            be.rmsnorm_backward(black_box(&x), &norm_w, &rstd, &dy, &mut dx)
                .unwrap()
        })
    });

    // RoPE on q [256, 12 · 64], llama3-scaled frequencies. Both rotate in place: repeated calls
    // keep rotating the same (norm-preserving) data, which is all a timing needs.
    let freqs = llama3_rope_freqs(HEAD_DIM, SMALL.rope_base);
    let inv = inv_freq(HEAD_DIM, SMALL.rope_base, Some(&freqs));
    let dims = RopeDims {
        n_tokens: TOKENS,
        pos0: 0,
        n_head: SMALL.n_head,
        head_dim: HEAD_DIM,
        rope_dim: HEAD_DIM,
    };
    let mut q = random(TOKENS * SMALL.n_head * HEAD_DIM, 1.0, 7);
    g.bench_function("rope/fwd", |b| {
        b.iter(|| be.rope(black_box(&mut q), &inv, dims).unwrap())
    });
    g.bench_function("rope/bwd", |b| {
        b.iter(|| be.rope_backward(black_box(&mut q), &inv, dims).unwrap())
    });

    // SwiGLU over [256, 2048].
    let gate = random(TOKENS * ffn, 3.0, 8);
    let up = random(TOKENS * ffn, 1.0, 9);
    let dh = random(TOKENS * ffn, 1.0, 10);
    let mut out = vec![0.0f32; TOKENS * ffn];
    let (mut dgate, mut dup) = (vec![0.0f32; TOKENS * ffn], vec![0.0f32; TOKENS * ffn]);
    g.bench_function("swiglu/fwd", |b| {
        b.iter(|| be.swiglu(black_box(&gate), &up, &mut out).unwrap())
    });
    g.bench_function("swiglu/bwd", |b| {
        b.iter(|| {
            be.swiglu_backward(black_box(&gate), &up, &dh, &mut dgate, &mut dup)
                .unwrap()
        })
    });
    g.finish();
}

/// Causal GQA attention over 256 tokens from position 0, forward saving `lse`, vs its backward
/// (which recomputes the scores from that `lse`).
fn attention(c: &mut Criterion) {
    let be = CpuBackend;
    let mut g = group(c, "backward");
    g.throughput(Throughput::Elements(TOKENS as u64));
    let dims = AttentionDims {
        n_tokens: TOKENS,
        pos0: 0,
        n_head: SMALL.n_head,
        n_head_kv: SMALL.n_head_kv,
        head_dim: HEAD_DIM,
    };
    let (q_width, kv_width) = (SMALL.n_head * HEAD_DIM, SMALL.n_head_kv * HEAD_DIM);
    let q = random(TOKENS * q_width, 1.0, 11);
    let k = random(TOKENS * kv_width, 1.0, 12);
    let v = random(TOKENS * kv_width, 1.0, 13);
    let dout = random(TOKENS * q_width, 1.0, 14);
    let mut out = vec![0.0f32; TOKENS * q_width];
    let mut lse = vec![0.0f32; TOKENS * SMALL.n_head];
    let mut dq = vec![0.0f32; TOKENS * q_width];
    let (mut dk, mut dv) = (
        vec![0.0f32; TOKENS * kv_width],
        vec![0.0f32; TOKENS * kv_width],
    );
    g.bench_function("attention/fwd", |b| {
        b.iter(|| {
            be.attention(black_box(&q), &k, &v, &mut out, Some(&mut lse), dims)
                .unwrap()
        })
    });
    // `out` and `lse` now hold the forward's results for these inputs, as the backward expects.
    g.bench_function("attention/bwd", |b| {
        b.iter(|| {
            be.attention_backward(
                black_box(&q),
                &k,
                &v,
                &out,
                &lse,
                &dout,
                &mut dq,
                &mut dk,
                &mut dv,
                dims,
            )
            .unwrap()
        })
    });
    g.finish();
}

/// The output projection (logits) vs the fused chunked cross-entropy with its `dh`.
fn cross_entropy(c: &mut Criterion) {
    let be = CpuBackend;
    let mut g = group(c, "backward");
    let dim = SMALL.dim;
    let chunk = 64;
    for ty in TYPES {
        for (vocab, tokens) in [(SMALL.n_vocab, TOKENS), (LLAMA3_VOCAB, LLAMA3_CE_TOKENS)] {
            let data = weight_bytes(ty, vocab, dim, 15);
            let w = be
                .weight(QuantMatrix::new(ty, vocab, dim, &data).expect("matrix"))
                .expect("weight");
            let h = random(tokens * dim, 1.0, 16);
            let targets: Vec<i32> = (0..tokens).map(|i| ((i * 7 + 3) % vocab) as i32).collect();
            let scale = 1.0 / tokens as f32;
            let mut logits = vec![0.0f32; tokens * vocab];
            let mut scratch = vec![0.0f32; chunk * vocab];
            let mut dh = vec![0.0f32; tokens * dim];
            g.throughput(Throughput::Elements(tokens as u64));
            g.bench_function(format!("cross_entropy/{ty}/vocab{vocab}/fwd"), |b| {
                b.iter(|| {
                    be.matmul_xwt(black_box(&h), tokens, &w, &mut logits)
                        .unwrap()
                })
            });
            g.bench_function(format!("cross_entropy/{ty}/vocab{vocab}/bwd"), |b| {
                b.iter(|| {
                    be.cross_entropy(
                        black_box(&h),
                        &w,
                        &targets,
                        scale,
                        chunk,
                        &mut scratch,
                        &mut dh,
                    )
                    .unwrap()
                })
            });
            // The streamed head's loss: 4 chunks of rows, two passes over them.
            let rows = vocab.div_ceil(4);
            let row_bytes = data.len() / vocab;
            let parts: Vec<QuantMatrix> = (0..vocab)
                .step_by(rows)
                .map(|v0| {
                    let n = rows.min(vocab - v0);
                    let bytes = &data[v0 * row_bytes..(v0 + n) * row_bytes];
                    QuantMatrix::new(ty, n, dim, bytes).expect("chunk")
                })
                .collect();
            let mut stats = vec![RowLse::EMPTY; tokens];
            let mut part = vec![0.0f32; chunk * dim];
            g.bench_function(
                format!("cross_entropy/{ty}/vocab{vocab}/vocab_chunks4"),
                |b| {
                    b.iter(|| {
                        stats.fill(RowLse::EMPTY);
                        for (i, w_c) in parts.iter().enumerate() {
                            let v0 = i * rows;
                            ce_vocab_stats(
                                &h,
                                w_c,
                                v0,
                                vocab,
                                &targets,
                                chunk,
                                &mut scratch,
                                &mut stats,
                            )
                            .unwrap();
                        }
                        let loss = ce_vocab_loss(&stats, &targets, chunk).unwrap();
                        for (i, w_c) in parts.iter().enumerate() {
                            let v0 = i * rows;
                            ce_vocab_grad(
                                &h,
                                w_c,
                                v0,
                                vocab,
                                &targets,
                                &|_| scale,
                                chunk,
                                &stats,
                                i == 0,
                                &mut scratch,
                                &mut part,
                                &mut dh,
                            )
                            .unwrap();
                        }
                        black_box(loss)
                    })
                },
            );
        }
    }
    g.finish();
}

/// A whole micro-batch: the CPU `TrainStep` beside `DeviceStep<CpuBackend>`.
fn train_step(c: &mut Criterion) {
    use edgetune::adapters::LoraConfig;
    use edgetune::data::Batch;
    use edgetune::testmodel::{Preset, WeightTypes, write_test_model};
    use edgetune::train::plan_llama::TrainShape;
    use edgetune::train::step::adapter_shapes;
    use edgetune::train::{AdapterSet, DeviceStep, TrainStep};
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("small-2l.gguf");
    let p = Preset {
        n_layer: 2,
        ..SMALL
    };
    write_test_model(&p, WeightTypes::Uniform(GgmlType::Q4_0), 3, &path).expect("model");
    let file = edgetune::gguf::GgufFile::open(&path).expect("open");
    let llama = edgetune::model::Llama::load(&file).expect("load");
    let m = llama.backend_model();
    let cfg = llama.config().clone();
    let lora = LoraConfig {
        rank: 16,
        alpha: 32.0,
        ..LoraConfig::default()
    };
    let set = AdapterSet::new_lora(&cfg, &lora, 1).expect("adapters");
    let mut batch = Batch::new(1, TOKENS);
    for i in 0..TOKENS {
        batch.ids[i] = ((i * 37 + 11) % cfg.n_vocab) as u32;
        batch.positions[i] = i as u32;
        batch.labels[i] = batch.ids[i] as i32;
    }
    let scale = 1.0 / (TOKENS - 1) as f32;
    let shape = TrainShape::plain(TOKENS, 1, 64, true, adapter_shapes(&set));
    let mut cpu = TrainStep::new(m, &set, shape.clone()).expect("train step");
    // The same micro-batch as a replay row under the KL anchor: the base pass (a forward with
    // the adapters off) and the fused CE + KL loss on top of the step.
    let mut anchored = TrainStep::new(m, &set, shape).expect("train step");
    anchored.set_kl_anchor(0.5).expect("kl anchor");
    let mut replay_batch = batch.clone();
    replay_batch.replay_rows[0] = true;
    let mut dev = DeviceStep::new(m, &set, 1, TOKENS, 64, false).expect("device step");
    // The same with the FFN in one chunk of all the micro-batch's rows (the CPU step's shape):
    // `new` takes the smallest workspace, whose small FFN row chunks each read the FFN
    // weights again; the trainer takes the largest chunk the budget allows.
    let mut whole_ffn =
        edgetune::train::DeviceShape::for_set(&set, 1, TOKENS, 64, false).expect("device shape");
    whole_ffn.ffn_chunk = Some(TOKENS);
    let mut dev_whole = DeviceStep::with_shape(m, &set, &whole_ffn).expect("device step");
    let mut g = group(c, "train_step");
    g.throughput(Throughput::Elements(TOKENS as u64));
    g.bench_function("train_step", |b| {
        b.iter(|| cpu.micro_batch(m, &set, &batch, scale, true, 0).unwrap())
    });
    g.bench_function("train_step_kl_anchor", |b| {
        b.iter(|| {
            anchored
                .micro_batch(m, &set, &replay_batch, scale, true, 0)
                .unwrap()
        })
    });
    g.bench_function("device_step", |b| {
        b.iter(|| dev.micro_batch(m, &batch, scale, true).unwrap())
    });
    g.bench_function("device_step_whole_ffn", |b| {
        b.iter(|| dev_whole.micro_batch(m, &batch, scale, true).unwrap())
    });
    g.finish();
}

criterion_group!(
    benches,
    matmul,
    elementwise,
    attention,
    cross_entropy,
    train_step
);
criterion_main!(benches);
