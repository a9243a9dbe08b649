//! The chunked cross-entropy never holds `[n, vocab]` logits: a counting global allocator records
//! every byte allocated (on any thread) during a warm call, which must stay far below the
//! `n × vocab` f32 a whole-logits implementation would need. One test per binary, so no other
//! test's allocations are counted.

mod alloc_support;

use edgetune::backend::{Backend, CpuBackend};
use edgetune::quant::matmul::QuantMatrix;

fn main() {
    alloc_support::run_alone(
        "a_warm_call_allocates_far_less_than_the_whole_logits",
        a_warm_call_allocates_far_less_than_the_whole_logits,
    );
}

fn a_warm_call_allocates_far_less_than_the_whole_logits() {
    alloc_support::assert_counting_works();
    let (n, vocab, dim, chunk) = (64usize, 4096usize, 32usize, 4usize);
    let bytes: Vec<u8> = (0..vocab * dim)
        .flat_map(|i| (((i * 7919) % 1000) as f32 / 1000.0 - 0.5).to_le_bytes())
        .collect();
    let w = QuantMatrix::new(edgetune::quant::GgmlType::F32, vocab, dim, &bytes).unwrap();
    let h: Vec<f32> = (0..n * dim)
        .map(|i| ((i * 31) % 17) as f32 / 17.0 - 0.5)
        .collect();
    let targets: Vec<i32> = (0..n as i32).map(|i| i * 61 % vocab as i32).collect();
    let mut scratch = vec![0.0f32; chunk * vocab];
    let mut dh = vec![0.0f32; n * dim];
    let be = CpuBackend;
    // First call: rayon's pool and the matmul's per-thread panels are set up once.
    let first = be
        .cross_entropy(
            &h,
            &w,
            &targets,
            1.0 / n as f32,
            chunk,
            &mut scratch,
            &mut dh,
        )
        .unwrap();
    let (second, counted) = alloc_support::counted(|| {
        be.cross_entropy(
            &h,
            &w,
            &targets,
            1.0 / n as f32,
            chunk,
            &mut scratch,
            &mut dh,
        )
        .unwrap()
    });
    assert_eq!(first, second);
    assert!(first.is_finite() && first > 0.0);
    let (total, largest) = (counted.bytes as usize, counted.largest as usize);
    println!("warm call: {total} bytes allocated, largest {largest}");
    let whole_logits = n * vocab * 4;
    assert!(
        total < whole_logits / 16,
        "{total} bytes allocated (largest {largest}) vs {whole_logits} for the whole logits"
    );
}
