//! GPU kernel benchmarks (`cargo bench --features cuda --bench cuda`): per kernel, criterion's
//! throughput in bytes/s (memory-bound kernels: the bytes each call must move) or in
//! "elements"/s where an element is one FLOP (compute-bound products: 2·n·out·in), so the
//! report reads as GB/s or GFLOP/s to set against the chip's peaks (Orin AGX: 204.8 GB/s;
//! H200: 4.8 TB/s, ~990 dense bf16 TFLOP/s). Each iteration queues the kernel and waits for it.
//!
//! Without a usable device it prints `skipped: no CUDA device (<reason>)` and exits 0.
//!
//! `cuda_train_step`: one whole training micro-batch (`DeviceStep`: forward, checkpointed
//! recompute, chunked loss, backward into rank-16 LoRA on all seven projections) in tokens/s,
//! on the `small` test model and on llama-3.1-8b shapes cut to 2 layers (Q4_0, generated
//! with `testmodel` into a temporary directory).

use criterion::{BenchmarkId, Criterion, Throughput};
use edgetune::adapters::LoraConfig;
use edgetune::backend::cuda::{CudaBackend, WeightsMode};
use edgetune::backend::{AttentionDims, Backend};
use edgetune::data::Batch;
use edgetune::gguf::GgufFile;
use edgetune::model::{BackendModel, Llama};
use edgetune::optim::adamw::{AdamWConfig, AdamWStep};
use edgetune::quant::matmul::QuantMatrix;
use edgetune::quant::{self, GgmlType};
use edgetune::testmodel::{self, Preset, WeightTypes};
use edgetune::train::{AdapterSet, DeviceStep};

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16777216.0)
                - 0.5
        })
        .collect()
}

fn bench_matmul(c: &mut Criterion, be: &CudaBackend) {
    let (rows, cols) = (4096, 4096);
    let src = values(rows * cols, 1);
    let mut g = c.benchmark_group("cuda_matmul");
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::Q8_0,
    ] {
        let mut bytes = vec![0u8; ty.bytes_for((rows * cols) as u64).unwrap() as usize];
        quant::quantize(ty, &src, &mut bytes).unwrap();
        let w = be
            .weight(QuantMatrix::new(ty, rows, cols, &bytes).unwrap())
            .unwrap();
        for n in [1usize, 512] {
            let x = be.buffer_from(&values(n * cols, 2)).unwrap();
            let mut y = be.alloc(n * rows).unwrap();
            let mut dx = be.alloc(n * cols).unwrap();
            if n == 1 {
                // Generation: bandwidth-bound, the weight bytes dominate.
                g.throughput(Throughput::Bytes(bytes.len() as u64));
            } else {
                g.throughput(Throughput::Elements(2 * (n * rows * cols) as u64));
            }
            g.bench_function(BenchmarkId::new(format!("xwt_{ty}"), n), |b| {
                b.iter(|| {
                    be.matmul_xwt(x.view(), n, &w, y.view_mut()).unwrap();
                    be.synchronize().unwrap();
                })
            });
            let dy = be.buffer_from(&values(n * rows, 3)).unwrap();
            g.bench_function(BenchmarkId::new(format!("dyw_{ty}"), n), |b| {
                b.iter(|| {
                    be.matmul_dyw(dy.view(), n, &w, dx.view_mut()).unwrap();
                    be.synchronize().unwrap();
                })
            });
        }
    }
    g.finish();
}

fn bench_elementwise(c: &mut Criterion, be: &CudaBackend) {
    let (n, dim) = (512, 4096);
    let x = be.buffer_from(&values(n * dim, 4)).unwrap();
    let w = be.buffer_from(&values(dim, 5)).unwrap();
    let mut y = be.alloc(n * dim).unwrap();
    let mut rstd = be.alloc(n).unwrap();
    let mut g = c.benchmark_group("cuda_rowwise");
    g.throughput(Throughput::Bytes((2 * n * dim * 4) as u64));
    g.bench_function("rmsnorm_512x4096", |b| {
        b.iter(|| {
            be.rmsnorm(
                x.view(),
                w.view(),
                1e-5,
                y.view_mut(),
                Some(rstd.view_mut()),
            )
            .unwrap();
            be.synchronize().unwrap();
        })
    });
    let ffn = 14336;
    let gate = be.buffer_from(&values(n * ffn, 6)).unwrap();
    let up = be.buffer_from(&values(n * ffn, 7)).unwrap();
    let mut h = be.alloc(n * ffn).unwrap();
    g.throughput(Throughput::Bytes((3 * n * ffn * 4) as u64));
    g.bench_function("swiglu_512x14336", |b| {
        b.iter(|| {
            be.swiglu(gate.view(), up.view(), h.view_mut()).unwrap();
            be.synchronize().unwrap();
        })
    });
    // AdamW over 16 M parameters: reads p, g, m, v and writes p, m, v.
    let np = 1 << 24;
    let mut p = be.buffer_from(&values(np, 8)).unwrap();
    let grad = be.buffer_from(&values(np, 9)).unwrap();
    let mut m = be.alloc(np).unwrap();
    let mut v = be.alloc(np).unwrap();
    let k = AdamWStep::new(&AdamWConfig::default(), 1e-4, 0.0, 1);
    g.throughput(Throughput::Bytes((7 * np * 4) as u64));
    g.bench_function("adamw_f32_16M", |b| {
        b.iter(|| {
            be.adamw_f32(p.view_mut(), grad.view(), m.view_mut(), v.view_mut(), &k)
                .unwrap();
            be.synchronize().unwrap();
        })
    });
    g.throughput(Throughput::Bytes((np * 4) as u64));
    g.bench_function("global_norm_16M", |b| {
        b.iter(|| be.global_norm(&[grad.view()]).unwrap())
    });
    g.finish();
}

fn bench_attention(c: &mut Criterion, be: &CudaBackend) {
    let d = AttentionDims {
        n_tokens: 512,
        pos0: 0,
        n_head: 32,
        n_head_kv: 8,
        head_dim: 128,
    };
    let (qw, kw) = (d.n_head * d.head_dim, d.n_head_kv * d.head_dim);
    let q = be.buffer_from(&values(d.n_tokens * qw, 10)).unwrap();
    let k = be.buffer_from(&values(d.n_tokens * kw, 11)).unwrap();
    let v = be.buffer_from(&values(d.n_tokens * kw, 12)).unwrap();
    let mut out = be.alloc(d.n_tokens * qw).unwrap();
    let mut lse = be.alloc(d.n_tokens * d.n_head).unwrap();
    // Causal: half of the n² score matrix, two products of head_dim each (QKᵀ and PV).
    let flops = 2 * 2 * d.n_head * d.head_dim * d.n_tokens * (d.n_tokens + 1) / 2;
    let mut g = c.benchmark_group("cuda_attention");
    g.throughput(Throughput::Elements(flops as u64));
    g.bench_function("fwd_512_llama8b_heads", |b| {
        b.iter(|| {
            be.attention(
                q.view(),
                k.view(),
                v.view(),
                out.view_mut(),
                Some(lse.view_mut()),
                d,
            )
            .unwrap();
            be.synchronize().unwrap();
        })
    });
    let dout = be.buffer_from(&values(d.n_tokens * qw, 13)).unwrap();
    let mut dq = be.alloc(d.n_tokens * qw).unwrap();
    let mut dk = be.alloc(d.n_tokens * kw).unwrap();
    let mut dv = be.alloc(d.n_tokens * kw).unwrap();
    g.throughput(Throughput::Elements(2 * flops as u64));
    g.bench_function("bwd_512_llama8b_heads", |b| {
        b.iter(|| {
            be.attention_backward(
                q.view(),
                k.view(),
                v.view(),
                out.view(),
                lse.view(),
                dout.view(),
                dq.view_mut(),
                dk.view_mut(),
                dv.view_mut(),
                d,
            )
            .unwrap();
            be.synchronize().unwrap();
        })
    });
    g.finish();
}

/// Tokens/s of `DeviceStep::micro_batch` on preset `p` (`rows × seq` tokens).
fn bench_train_step(c: &mut Criterion, be: &CudaBackend, p: &Preset, rows: usize, seq: usize) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join(format!("{}.gguf", p.name));
    let types = WeightTypes::Uniform(GgmlType::Q4_0);
    testmodel::write_test_model(p, types, 7, &path).expect("test model");
    let file = GgufFile::open(&path).expect("open the test model");
    let llama = Llama::load(&file).expect("load");
    let cfg = llama.config().clone();
    let lora = LoraConfig {
        rank: 16,
        alpha: 32.0,
        ..LoraConfig::default()
    };
    let set = AdapterSet::new_lora(&cfg, &lora, 1).expect("adapters");
    let _attached = be.attach_weights(file.as_bytes()).expect("attach");
    let model = BackendModel::new(be.clone(), &cfg, llama.weights()).expect("model");
    let mut step = DeviceStep::new(&model, &set, rows, seq, 256, false).expect("step");
    let mut batch = Batch::new(rows, seq);
    for (i, id) in batch.ids.iter_mut().enumerate() {
        *id = (i as u32).wrapping_mul(2654435761) % cfg.n_vocab as u32;
    }
    for r in 0..rows {
        for i in 0..seq {
            batch.positions[r * seq + i] = i as u32;
            batch.labels[r * seq + i] = batch.ids[r * seq + i] as i32;
        }
    }
    let scale = 1.0 / (rows * (seq - 1)) as f32;
    let mut g = c.benchmark_group("cuda_train_step");
    g.throughput(Throughput::Elements((rows * seq) as u64));
    let id = format!("{}_{}L_{rows}x{seq}", p.name, cfg.n_layer);
    g.bench_function(id, |b| {
        b.iter(|| {
            step.micro_batch(&model, &batch, scale, true).unwrap();
            be.synchronize().unwrap();
        })
    });
    g.finish();
    eprintln!(
        "cuda_train_step {}: workspace {:.1} MiB",
        p.name,
        step.workspace_bytes() as f64 / 1048576.0
    );
}

fn main() {
    let be = match CudaBackend::with_weights(0, WeightsMode::Upload) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            return;
        }
    };
    eprintln!(
        "cuda bench on {} ({:?} kernels)",
        be.info().summary(),
        be.target()
    );
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1))
        .configure_from_args();
    bench_matmul(&mut c, &be);
    bench_elementwise(&mut c, &be);
    bench_attention(&mut c, &be);
    bench_train_step(&mut c, &be, &testmodel::SMALL, 1, 512);
    let llama8b_2l = Preset {
        n_layer: 2,
        ..testmodel::LLAMA_3_1_8B
    };
    bench_train_step(&mut c, &be, &llama8b_2l, 1, 1024);
    c.final_summary();
}
