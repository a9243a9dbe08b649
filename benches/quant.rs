//! Quantization kernels against this machine's own limits: dequantize GB/s, dot and matmul
//! GFLOP/s per type (SIMD vs `_ref`), beside a memory-bandwidth probe and an f32 FMA-peak probe
//! measured in the same run, on one core and on all cores.
//!
//! Read the matrix-vector rows (`matvec/…`, throughput in bytes of weights) against
//! `probe/read_sum`, and the matrix-matrix rows (`matmul64/…`, throughput in flops shown as
//! elements/s) against `probe/fma_peak`. `EDGETUNE_BENCH_TYPES=Q4_0,Q4_K,Q8_0` limits the types.

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main, measurement::WallTime,
};
use edgetune::quant::{
    self, GgmlType,
    matmul::{QuantMatrix, matmul_dyw, matmul_xwt, matmul_xwt_ref},
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rayon::prelude::*;

/// Weights for the bandwidth-bound product: far beyond the caches (32 MiB L3 here).
const BIG_WEIGHT_BYTES: usize = 256 << 20;

fn types() -> Vec<GgmlType> {
    match std::env::var("EDGETUNE_BENCH_TYPES") {
        Ok(list) => list.split(',').filter_map(GgmlType::from_name).collect(),
        Err(_) => GgmlType::ALL.to_vec(),
    }
}

fn one_thread() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool")
}

/// Valid blocks for `n` elements: a quantized (or scale-fixed random) seed tile, repeated.
fn weights(ty: GgmlType, n: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(1);
    let seed_elems = 64 * 1024;
    let seed: Vec<f32> = (0..seed_elems)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let mut tile = vec![0u8; ty.bytes_for(seed_elems as u64).unwrap() as usize];
    if quant::quantize(ty, &seed, &mut tile).is_err() {
        // Read-only types: random bytes are valid blocks once their f16/f32 scales are finite.
        rng.fill(&mut tile[..]);
        let bb = ty.block_bytes();
        let scale_at: &[usize] = match ty {
            GgmlType::Q8_1 => &[0, 2],
            GgmlType::Q2_K => &[80, 82],
            GgmlType::Q3_K => &[108],
            _ => &[],
        };
        for b in tile.chunks_exact_mut(bb) {
            for &at in scale_at {
                b[at..at + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
            }
            if ty == GgmlType::Q8_K {
                b[..4].copy_from_slice(&0.01f32.to_le_bytes());
            }
        }
    }
    let total = ty.bytes_for(n as u64).unwrap() as usize;
    tile.iter().copied().cycle().take(total).collect()
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g
}

/// Sums 8 independent u64 lanes: vectorizes to wide loads, so it runs at memory speed.
fn read_sum(buf: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    for chunk in buf.chunks_exact(8) {
        for (a, v) in acc.iter_mut().zip(chunk) {
            *a = a.wrapping_add(*v);
        }
    }
    acc.iter().fold(0, |a, v| a.wrapping_add(*v))
}

/// f32 FMA peak: 12 independent 8-wide accumulators (2 FMA pipes × latency 4–5 cycles).
#[inline(always)]
fn fma_loop_body(iters: usize, seed: f32) -> f32 {
    let mut acc = [[seed; 8]; 12];
    let (m, a) = (0.999_999f32, 1e-7f32);
    for _ in 0..iters {
        for row in acc.iter_mut() {
            for v in row.iter_mut() {
                *v = v.mul_add(m, a);
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(iters: usize, seed: f32) -> f32 {
    fma_loop_body(iters, seed)
}

fn fma_loop(iters: usize, seed: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA are present (checked above).
        return unsafe { fma_loop_avx2(iters, seed) };
    }
    fma_loop_body(iters, seed)
}

fn probes(c: &mut Criterion) {
    let mut g = group(c, "probe");
    let words = BIG_WEIGHT_BYTES / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let mut dst = vec![0u64; words];
    g.throughput(Throughput::Bytes(BIG_WEIGHT_BYTES as u64));
    let pool1 = one_thread();
    g.bench_function("read_sum/1core", |b| {
        b.iter(|| pool1.install(|| read_sum(black_box(&buf))))
    });
    g.bench_function("read_sum/allcores", |b| {
        b.iter(|| {
            buf.par_chunks(1 << 20)
                .map(read_sum)
                .reduce(|| 0, u64::wrapping_add)
        })
    });
    g.throughput(Throughput::Bytes(2 * BIG_WEIGHT_BYTES as u64));
    g.bench_function("memcpy/1core", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&buf)))
    });
    drop((buf, dst));

    let iters = 1 << 20;
    let flops = 2 * 8 * 12 * iters as u64;
    g.throughput(Throughput::Elements(flops));
    g.bench_function("fma_peak/1core", |b| {
        b.iter(|| fma_loop(iters, black_box(1.0)))
    });
    let threads = rayon::current_num_threads() as u64;
    g.throughput(Throughput::Elements(flops * threads));
    g.bench_function("fma_peak/allcores", |b| {
        b.iter(|| {
            (0..threads)
                .into_par_iter()
                .map(|t| fma_loop(iters, t as f32))
                .sum::<f32>()
        })
    });
    g.finish();
}

fn dequantize_and_dot(c: &mut Criterion) {
    let mut g = group(c, "kernel");
    let n = 1 << 20; // 1 Mi elements: in L2/L3, so this measures the kernel, not memory.
    let x: Vec<f32> = (0..n).map(|i| (i % 17) as f32 * 0.1 - 0.8).collect();
    let mut out = vec![0.0f32; n];
    for ty in types() {
        let t = ty.traits();
        let data = weights(ty, n);
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(format!("dequantize/{}/fast", t.name), |b| {
            b.iter(|| (t.dequantize)(black_box(&data), &mut out))
        });
        g.bench_function(format!("dequantize/{}/ref", t.name), |b| {
            b.iter(|| (t.dequantize_ref)(black_box(&data), &mut out))
        });
        // 2 flops per element, shown as elements/s.
        g.throughput(Throughput::Elements(2 * n as u64));
        g.bench_function(format!("dot/{}/simd", t.name), |b| {
            b.iter(|| (t.dot)(black_box(&data), &x))
        });
        g.bench_function(format!("dot/{}/ref", t.name), |b| {
            b.iter(|| (t.dot_ref)(black_box(&data), &x))
        });
    }
    g.finish();
}

fn matvec(c: &mut Criterion) {
    let mut g = group(c, "matvec");
    let pool1 = one_thread();
    let cols = 4096;
    for ty in types() {
        let rows = BIG_WEIGHT_BYTES / ty.bytes_for(cols as u64).unwrap() as usize;
        let data = weights(ty, rows * cols);
        let w = QuantMatrix::new(ty, rows, cols, &data).unwrap();
        let x: Vec<f32> = (0..cols).map(|i| (i % 13) as f32 * 0.1).collect();
        let mut y = vec![0.0f32; rows];
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(format!("{}/1core", ty), |b| {
            b.iter(|| pool1.install(|| matmul_xwt(&x, 1, &w, &mut y).unwrap()))
        });
        g.bench_function(format!("{}/allcores", ty), |b| {
            b.iter(|| matmul_xwt(&x, 1, &w, &mut y).unwrap())
        });
        if ty == GgmlType::Q4_0 {
            let small_bytes = rows / 16 * w.row_bytes();
            let small = QuantMatrix::new(ty, rows / 16, cols, &data[..small_bytes]).unwrap();
            g.throughput(Throughput::Bytes(small.data.len() as u64));
            g.bench_function(format!("{}/1core/ref", ty), |b| {
                b.iter(|| matmul_xwt_ref(&x, 1, &small, &mut y[..rows / 16]).unwrap())
            });
        }
    }
    g.finish();
}

fn matmul64(c: &mut Criterion) {
    let mut g = group(c, "matmul64");
    let pool1 = one_thread();
    let (n, rows, cols) = (64usize, 2048usize, 4096usize);
    let x: Vec<f32> = (0..n * cols)
        .map(|i| (i % 29) as f32 * 0.01 - 0.1)
        .collect();
    let dy: Vec<f32> = (0..n * rows)
        .map(|i| (i % 31) as f32 * 0.01 - 0.1)
        .collect();
    let mut y = vec![0.0f32; n * rows];
    let mut dx = vec![0.0f32; n * cols];
    g.throughput(Throughput::Elements(2 * (n * rows * cols) as u64));
    for ty in types() {
        let data = weights(ty, rows * cols);
        let w = QuantMatrix::new(ty, rows, cols, &data).unwrap();
        g.bench_function(format!("xwt/{}/1core", ty), |b| {
            b.iter(|| pool1.install(|| matmul_xwt(&x, n, &w, &mut y).unwrap()))
        });
        g.bench_function(format!("xwt/{}/allcores", ty), |b| {
            b.iter(|| matmul_xwt(&x, n, &w, &mut y).unwrap())
        });
        g.bench_function(format!("dyw/{}/1core", ty), |b| {
            b.iter(|| pool1.install(|| matmul_dyw(&dy, n, &w, &mut dx).unwrap()))
        });
        g.bench_function(format!("dyw/{}/allcores", ty), |b| {
            b.iter(|| matmul_dyw(&dy, n, &w, &mut dx).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, probes, dequantize_and_dot, matvec, matmul64);
criterion_main!(benches);
