//! Our forward (`edgetune::model::Llama`) against the independent f64 reference
//! (tests/reference, written from docs/FORMATS.md#llama-metadata-and-tensors) on seeded test
//! models.
//!
//! Criterion: max over all positions and vocabulary entries of |ours − reference|, divided by
//! the largest |reference logit| (logits of these models are O(1), so this is close to an
//! absolute error, without depending on the logit scale).
//!
//! Tolerance: the reference runs on exactly the weights our forward reads (each tensor
//! dequantized with the scalar `dequantize_ref`, bit-exact with ggml, widened to f64), so the
//! only differences are f32 activations and f32 accumulation order. f32 rounding is 6e-8
//! relative per operation; a dot product of length ≤ 512 errs by ≲ √512·6e-8 ≈ 1.4e-6 relative
//! (random signs), and each of the 2 layers adds a few such errors through RMSNorm, softmax and
//! the residual stream (all well-conditioned: no cancellation beyond the residual sums). That
//! is ~1e-5 at most, so 1e-4 leaves a 10× margin for F32. Quantized kernels may also
//! re-associate (factor the block scale out of the block sum: d·Σq·x instead of Σ(d·q)·x),
//! still an f32-rounding-sized change per block, so they get 2e-4. Activations are never
//! quantized (`quant::dot` takes f32 x), otherwise the tolerance would be ~1e-2.

use std::path::Path;

use edgetune::gguf::GgufFile;
use edgetune::model::Llama;
use edgetune::quant::GgmlType;
use edgetune::testmodel::{self, Preset, TINY, WeightTypes};

use crate::reference::{load, max_rel_diff, reference_logits};

const F32_TOLERANCE: f64 = 1e-4;
const QUANT_TOLERANCE: f64 = 2e-4;

/// Our logits for `tokens`, fed in chunks of the given lengths through one cache.
fn our_logits(path: &Path, tokens: &[u32], chunks: &[usize]) -> Vec<Vec<f64>> {
    assert_eq!(chunks.iter().sum::<usize>(), tokens.len());
    let file = GgufFile::open(path).unwrap();
    let llama = Llama::load(&file).unwrap();
    let n_vocab = llama.config().n_vocab;
    let mut cache = llama.new_cache(tokens.len()).unwrap();
    let mut rows = Vec::new();
    let mut start = 0;
    for &len in chunks {
        let chunk = &tokens[start..start + len];
        let mut logits = vec![0f32; len * n_vocab];
        llama.forward(&mut cache, chunk, &mut logits).unwrap();
        rows.extend(
            logits
                .chunks_exact(n_vocab)
                .map(|r| r.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>()),
        );
        start += len;
    }
    rows
}

/// 40 seeded tokens over the whole vocabulary (bytes and specials).
fn tokens(n_vocab: usize) -> Vec<u32> {
    (0..40u64)
        .map(|i| ((i * 7919 + 13) * 2654435761 % n_vocab as u64) as u32)
        .collect()
}

/// Writes `preset` with `types`, runs both forwards on 40 tokens (in `chunks`), and checks the
/// criterion.
fn compare(preset: &Preset, types: WeightTypes, chunks: &[usize], tolerance: f64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    testmodel::write_test_model(preset, types, 11, &path).unwrap();
    let m = load(&path);
    let tokens = tokens(m.n_vocab);
    let want = reference_logits(&m, &tokens);
    let got = our_logits(&path, &tokens, chunks);
    let d = max_rel_diff(&got, &want);
    eprintln!(
        "{} {types:?} chunks {chunks:?}: max |Δ| / max |logit| = {d:.2e}",
        preset.name
    );
    assert!(d <= tolerance, "{types:?}: {d:.3e} > {tolerance:.0e}");
}

#[test]
fn f32_weights_match_the_reference() {
    compare(
        &TINY,
        WeightTypes::Uniform(GgmlType::F32),
        &[40],
        F32_TOLERANCE,
    );
}

#[test]
fn tied_output_matches_the_reference() {
    let tied = Preset {
        tied_output: true,
        ..TINY
    };
    compare(
        &tied,
        WeightTypes::Uniform(GgmlType::F32),
        &[40],
        F32_TOLERANCE,
    );
}

#[test]
fn q8_0_matches_the_reference_on_its_dequantized_weights() {
    compare(
        &TINY,
        WeightTypes::Uniform(GgmlType::Q8_0),
        &[40],
        QUANT_TOLERANCE,
    );
}

#[test]
fn q4_0_matches_the_reference_on_its_dequantized_weights() {
    compare(
        &TINY,
        WeightTypes::Uniform(GgmlType::Q4_0),
        &[40],
        QUANT_TOLERANCE,
    );
}

#[test]
fn q4_k_m_matches_the_reference_on_its_dequantized_weights() {
    // Q4_K projections with Q6_K output and attn_v/ffn_down in some layers: types per tensor.
    compare(&TINY, WeightTypes::Q4KM, &[40], QUANT_TOLERANCE);
}

#[test]
fn q6_k_matches_the_reference_on_its_dequantized_weights() {
    compare(
        &TINY,
        WeightTypes::Uniform(GgmlType::Q6_K),
        &[40],
        QUANT_TOLERANCE,
    );
}

/// Continuation: 17 tokens, then 1 (a decode step), then 22 through the same cache equal the
/// reference on the whole sequence (positions and cached K/V carried over correctly).
#[test]
fn chunked_forward_with_the_cache_matches_the_whole_sequence() {
    compare(
        &TINY,
        WeightTypes::Uniform(GgmlType::F32),
        &[17, 1, 22],
        F32_TOLERANCE,
    );
    compare(&TINY, WeightTypes::Q4KM, &[17, 1, 22], QUANT_TOLERANCE);
}
