//! Helpers of the CUDA parity tests (`tests/cuda_parity*.rs`): the device entry, buffer round
//! trips generic over [`Backend`], and the closeness checks.
//!
//! Every test that needs the GPU is `#[ignore = "needs a CUDA device"]`: a plain `cargo test`
//! lists it as ignored, and `cargo test -- --include-ignored` (scripts/cuda-device-check.sh)
//! runs it where a device is, failing, not passing, where none is.
#![allow(dead_code)]

use edgetune::backend::Backend;
use edgetune::backend::cuda::{CudaBackend, WeightsMode};

/// Device 0 with uploaded weights; a test that asks for it fails when there is none.
pub fn device(test: &str) -> CudaBackend {
    CudaBackend::with_weights(0, WeightsMode::Upload)
        .unwrap_or_else(|e| panic!("{test}: needs a CUDA device: {e}"))
}

pub fn upload<B: Backend>(b: &B, v: &[f32]) -> B::Buffer {
    b.buffer_from(v).unwrap()
}

pub fn download<B: Backend>(b: &B, buf: &B::Buffer) -> Vec<f32> {
    let mut out = vec![0.0; B::buffer_len(buf)];
    b.download(B::view(buf), &mut out).unwrap();
    out
}

/// Asserts `|a − b| ≤ tol · scale_i` element-wise (`scale_i` = `max(1, |b_i|)` by default).
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32, scale: Option<&[f32]>) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = (0, 0.0f32);
    for i in 0..got.len() {
        let s = scale.map_or(want[i].abs().max(1.0), |s| s[i].max(1e-12));
        let e = (got[i] - want[i]).abs() / s;
        assert!(
            e.is_finite(),
            "{what}: non-finite at {i}: {} vs {}",
            got[i],
            want[i]
        );
        if e > worst.1 {
            worst = (i, e);
        }
    }
    assert!(
        worst.1 <= tol,
        "{what}: error {} (scaled) at {} ({} vs {}), tolerance {tol}",
        worst.1,
        worst.0,
        got[worst.0],
        want[worst.0]
    );
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_rms(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}
