//! Whole-model forward on the seeded tiny model: one call vs token by token through the cache,
//! chunking, forward_last, weight types against each other, tied output, Llama-2-style files
//! (no rope_freqs), and the input errors.

use crate::model_support::{Edit, max_rel_diff, rel_rms, rewrite, tiny, tokens, weight_rel_rms};
use edgetune::gguf::{GgufFile, Value};
use edgetune::model::Llama;
use edgetune::quant::GgmlType;
use edgetune::testmodel::WeightTypes;

const VOCAB: usize = 261;

fn logits_all(m: &Llama, toks: &[u32]) -> Vec<f32> {
    let mut cache = m.new_cache(toks.len()).unwrap();
    let mut out = vec![0.0; toks.len() * VOCAB];
    m.forward(&mut cache, toks, &mut out).unwrap();
    assert_eq!(cache.len(), toks.len());
    out
}

fn logits_one_by_one(m: &Llama, toks: &[u32]) -> Vec<f32> {
    let mut cache = m.new_cache(toks.len() + 3).unwrap();
    let mut out = vec![0.0; toks.len() * VOCAB];
    for (i, t) in toks.iter().enumerate() {
        m.forward_last(&mut cache, &[*t], &mut out[i * VOCAB..(i + 1) * VOCAB])
            .unwrap();
    }
    out
}

#[test]
fn one_call_equals_token_by_token_with_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let toks = tokens(70); // crosses the 64-key attention tile and the 64-token chunk
    for (name, types) in [
        ("f32", WeightTypes::Uniform(GgmlType::F32)),
        ("q4km", WeightTypes::Q4KM),
    ] {
        let p = tiny(dir.path(), &format!("{name}.gguf"), types, 5);
        let f = GgufFile::open(&p).unwrap();
        let m = Llama::load(&f).unwrap();
        let whole = logits_all(&m, &toks);
        let stepped = logits_one_by_one(&m, &toks);
        // The two paths differ only in f32 summation order: the matmul uses a quantized dot per
        // row for 1 token and dequantized rows or panels (+ an FMA tile) for more, attention sees the same
        // keys. Each differs by a few ulp per op (~1e-6 relative) and two layers compound that
        // to ~1e-5 on logits of size ~1; 1e-4 leaves room. A wrong position, a missed cache row
        // or a wrong mask would change whole-model logits at the scale of the rope_freqs test
        // below (> 1e-4) or far more.
        let d = max_rel_diff(&stepped, &whole);
        assert!(d < 1e-4, "{name}: token-by-token vs one call differ by {d}");
        assert!(whole.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn chunking_and_cache_continuation_and_forward_last() {
    let dir = tempfile::tempdir().unwrap();
    let p = tiny(
        dir.path(),
        "m.gguf",
        WeightTypes::Uniform(GgmlType::Q8_0),
        9,
    );
    let f = GgufFile::open(&p).unwrap();
    let mut m = Llama::load(&f).unwrap();
    let toks = tokens(23);
    let whole = logits_all(&m, &toks);

    // Two calls (prefix, then the rest at positions 9..) give the same logits.
    let mut cache = m.new_cache(40).unwrap();
    let mut a = vec![0.0; 9 * VOCAB];
    let mut b = vec![0.0; 14 * VOCAB];
    m.forward(&mut cache, &toks[..9], &mut a).unwrap();
    m.forward(&mut cache, &toks[9..], &mut b).unwrap();
    a.extend_from_slice(&b);
    // Only the grouping of token rows in the matmul tiles differs (summation-order noise, as
    // in the token-by-token test).
    let d = max_rel_diff(&a, &whole);
    assert!(d < 1e-4, "two calls vs one differ by {d}");

    // forward_last == the last row; and rewinding the cache reproduces it.
    let mut last = vec![0.0; VOCAB];
    cache.truncate(20);
    m.forward_last(&mut cache, &toks[20..], &mut last).unwrap();
    assert_eq!(cache.len(), 23);
    let want = &whole[22 * VOCAB..];
    assert!(max_rel_diff(&last, want) < 1e-5);

    // Internal chunks of 5 tokens (positions 0..5, 5..10, …; the last one 3 tokens, which
    // takes the per-row dot path): same logits within summation-order noise (see above).
    m.set_max_batch_tokens(5).unwrap();
    let chunked = logits_all(&m, &toks);
    let d = max_rel_diff(&chunked, &whole);
    assert!(d < 1e-4, "chunked differs by {d}");
    let mut cache = m.new_cache(23).unwrap();
    m.forward_last(&mut cache, &toks, &mut last).unwrap();
    assert!(max_rel_diff(&last, want) < 1e-4);
}

#[test]
fn weight_types_give_close_logits() {
    let dir = tempfile::tempdir().unwrap();
    let toks = tokens(12);
    let run = |name: &str, types| {
        let p = tiny(dir.path(), name, types, 77);
        let f = GgufFile::open(&p).unwrap();
        logits_all(&Llama::load(&f).unwrap(), &toks)
    };
    let f32l = run("f32.gguf", WeightTypes::Uniform(GgmlType::F32));
    let q8 = run("q8.gguf", WeightTypes::Uniform(GgmlType::Q8_0));
    let q4 = run("q4km.gguf", WeightTypes::Q4KM);
    // Same seed → the same underlying values; only the rounding of the weights differs. The
    // weights' own relative RMS rounding error ε_w (measured here from the files, independent
    // of the forward) propagates through the chain of ~15 matmuls (7 per layer × 2 + output):
    // independent errors add in quadrature, ≈ √15 ≈ 3.9 × ε_w on the logits. Bounds: between
    // half and twice that estimate, and the amplification must be the same for both types
    // (within 30 %): a type dequantized wrongly or a mixed-up tensor breaks the proportion.
    let dir_f32 = dir.path().join("f32.gguf");
    let mut ratios: Vec<f64> = Vec::new();
    for (name, logits) in [("q8.gguf", &q8), ("q4km.gguf", &q4)] {
        let ew = weight_rel_rms(&dir.path().join(name), &dir_f32);
        let e = rel_rms(logits, &f32l);
        eprintln!(
            "{name}: weight rounding {ew:.5}, logits {e:.5} ({:.2} ε_w)",
            e / ew
        );
        assert!(
            e > 2.0 * ew && e < 8.0 * ew,
            "{name}: logit error {e}, weight error {ew}"
        );
        ratios.push(e / ew);
    }
    let spread = (ratios[0] - ratios[1]).abs();
    assert!(spread < 0.3 * ratios[1], "amplifications {ratios:?}");
    // And both stay close enough that the top token is mostly unchanged at Q8_0.
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .fold((0, f32::MIN), |a, (i, &x)| if x > a.1 { (i, x) } else { a })
            .0
    };
    let same = (0..toks.len())
        .filter(|&i| {
            argmax(&q8[i * VOCAB..(i + 1) * VOCAB]) == argmax(&f32l[i * VOCAB..(i + 1) * VOCAB])
        })
        .count();
    assert!(
        same * 4 >= toks.len() * 3,
        "Q8_0 keeps the top token for {same}/{}",
        toks.len()
    );
}

#[test]
fn tied_output_uses_token_embd() {
    let dir = tempfile::tempdir().unwrap();
    for types in [WeightTypes::Uniform(GgmlType::F32), WeightTypes::Q4KM] {
        let src = tiny(dir.path(), "src.gguf", types, 13);
        let tied = dir.path().join("tied.gguf");
        rewrite(
            &src,
            &tied,
            &Edit {
                drop_tensors: vec!["output.weight"],
                ..Edit::default()
            },
        );
        let copied = dir.path().join("copied.gguf");
        // The untied twin: output.weight holds token_embd's exact bytes (shape and type).
        let edit = Edit {
            copy_from: vec![("output.weight", "token_embd.weight")],
            ..Edit::default()
        };
        rewrite(&src, &copied, &edit);
        let (ft, fc) = (
            GgufFile::open(&tied).unwrap(),
            GgufFile::open(&copied).unwrap(),
        );
        let (mt, mc) = (Llama::load(&ft).unwrap(), Llama::load(&fc).unwrap());
        assert!(mt.weights().tied_output && !mc.weights().tied_output);
        let toks = tokens(6);
        // Same bytes through the same kernels: bit-identical.
        assert_eq!(logits_all(&mt, &toks), logits_all(&mc, &toks));
    }
}

#[test]
fn llama2_style_file_without_rope_freqs() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny(
        dir.path(),
        "src.gguf",
        WeightTypes::Uniform(GgmlType::Q8_0),
        21,
    );
    // TinyLlama-like: SentencePiece vocab, no vocab_size key, no rope_freqs, base 10000, no
    // GQA.
    let l2 = dir.path().join("llama2.gguf");
    let edit = Edit {
        drop_tensors: vec!["rope_freqs.weight"],
        drop_keys: vec![
            "llama.vocab_size",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.merges",
        ],
        set_keys: vec![
            ("tokenizer.ggml.model", Value::String("llama".into())),
            ("llama.rope.freq_base", Value::F32(10_000.0)),
        ],
        ..Edit::default()
    };
    rewrite(&src, &l2, &edit);
    // The same file with rope_freqs = 1 everywhere must compute exactly the same thing.
    let ones = dir.path().join("ones.gguf");
    let edit_ones = Edit {
        drop_keys: edit.drop_keys.clone(),
        set_keys: edit.set_keys.clone(),
        set_f32: vec![("rope_freqs.weight", vec![1.0; 32])],
        ..Edit::default()
    };
    rewrite(&src, &ones, &edit_ones);
    let (f2, f1) = (GgufFile::open(&l2).unwrap(), GgufFile::open(&ones).unwrap());
    let (m2, m1) = (Llama::load(&f2).unwrap(), Llama::load(&f1).unwrap());
    assert!(m2.weights().rope_freqs.is_none());
    assert_eq!(m2.config().n_vocab, VOCAB);
    assert_eq!(m2.config().rope_base, 10_000.0);
    let toks = tokens(40);
    let a = logits_all(&m2, &toks);
    assert_eq!(a, logits_all(&m1, &toks));
    // And the llama3 divisors do change the result (positions up to 39 rotate the scaled
    // low-frequency pairs by up to 39·(1 − 1/8)·10000^(−30/32) ≈ 6e-3 rad less).
    let scaled = dir.path().join("scaled.gguf");
    let edit_scaled = Edit {
        drop_keys: edit.drop_keys.clone(),
        set_keys: edit.set_keys.clone(),
        ..Edit::default()
    };
    rewrite(&src, &scaled, &edit_scaled);
    let fs = GgufFile::open(&scaled).unwrap();
    let ms = Llama::load(&fs).unwrap();
    let d = max_rel_diff(&logits_all(&ms, &toks), &a);
    assert!(d > 1e-4, "rope_freqs had no effect ({d})");
}

#[test]
fn input_errors_are_values() {
    let dir = tempfile::tempdir().unwrap();
    let p = tiny(dir.path(), "m.gguf", WeightTypes::Uniform(GgmlType::F32), 2);
    let f = GgufFile::open(&p).unwrap();
    let m = Llama::load(&f).unwrap();
    let mut cache = m.new_cache(4).unwrap();
    let mut out = vec![0.0; 3 * VOCAB];
    let e = m
        .forward(&mut cache, &[1, 261, 2], &mut out)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "token id 261 at position 1 is outside the vocabulary (n_vocab = 261)"
    );
    assert_eq!(cache.len(), 0, "nothing ran");
    let e = m
        .forward(&mut cache, &[1, 2], &mut out)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "has {} values, expected 2 tokens × 261",
            3 * VOCAB
        )),
        "{e}"
    );
    m.forward(&mut cache, &[1, 2, 3], &mut out).unwrap();
    let mut last = vec![0.0; VOCAB];
    let e = m
        .forward_last(&mut cache, &[4, 5], &mut last)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "KV cache overflow: 3 positions held + 2 new > capacity 4"
    );
    assert!(m.forward_last(&mut cache, &[], &mut last).is_err());
    assert!(m.forward_last(&mut cache, &[4], &mut last[1..]).is_err());
    m.forward_last(&mut cache, &[4], &mut last).unwrap();
    assert_eq!(cache.len(), 4);
    // A cache of another model shape is refused.
    let other = edgetune::model::KvCache::new(&edgetune::backend::CpuBackend, 3, 128, 4);
    let e = m
        .forward_last(&mut other.unwrap(), &[4], &mut last)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 layers"), "{e}");
}
