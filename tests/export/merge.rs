//! Merging an adapter into a new GGUF: an F32 merge gives the base + adapter logits within
//! 1e-5; a quantized merge stays within the noise of one quantization; untouched tensors and
//! metadata are copied exactly; the reported re-quantization error is the measured one; types
//! edgetune cannot write are refused with a suggestion.

use crate::model_support;

use crate::export_support::*;
use edgetune::adapters::{LoraConfig, Target};
use edgetune::export::{MergeType, merge_adapter};
use edgetune::gguf::GgufFile;
use edgetune::quant::{self, GgmlType};
use edgetune::train::AdapterSet;

fn set(seed: u64) -> AdapterSet {
    let m = tiny_config();
    let cfg = LoraConfig {
        rank: 8,
        alpha: 16.0,
        ..LoraConfig::default()
    };
    let mut s = random_set(&m, &cfg, seed);
    randomize(&mut s, seed + 1, 0.1);
    s
}

fn deq(f: &GgufFile, name: &str) -> Vec<f32> {
    let (t, data) = f.tensor_by_name(name).unwrap();
    let mut out = vec![0.0; t.n_elements as usize];
    quant::dequantize(t.ty, data, &mut out).unwrap();
    out
}

fn merge(
    base: &std::path::Path,
    set: &AdapterSet,
    out: &std::path::Path,
    ty: MergeType,
) -> edgetune::export::merge::MergeReport {
    let f = GgufFile::open(base).unwrap();
    let mut seen = 0;
    let r = merge_adapter(&f, set, out, ty, &mut |_| seen += 1).unwrap();
    assert_eq!(seen, r.merged.len());
    r
}

/// Asserts every tensor of `out` not in `merged` has `base`'s bytes, and the metadata match.
fn assert_rest_identical(base: &GgufFile, out: &GgufFile, merged: &[String]) {
    assert_eq!(base.metadata(), out.metadata());
    assert_eq!(base.tensors().len(), out.tensors().len());
    for (a, b) in base.tensors().iter().zip(out.tensors()) {
        assert_eq!((&a.name, &a.dims), (&b.name, &b.dims));
        if !merged.contains(&a.name) {
            assert_eq!(a.ty, b.ty, "{}", a.name);
            assert_eq!(base.tensor_data(a), out.tensor_data(b), "{} copied", a.name);
        }
    }
}

#[test]
fn f32_merge_matches_base_plus_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_model(dir.path(), "base.gguf", GgmlType::F32, 7);
    let s = set(1);
    let out = dir.path().join("merged.gguf");
    let r = merge(&base, &s, &out, MergeType::Same);
    assert_eq!(r.merged.len(), 7 * 2);
    let (bf, of) = (
        GgufFile::open(&base).unwrap(),
        GgufFile::open(&out).unwrap(),
    );
    assert_eq!(r.copied, bf.tensors().len() - 14);
    let names: Vec<String> = r.merged.iter().map(|m| m.name.clone()).collect();
    assert_rest_identical(&bf, &of, &names);
    for m in &r.merged {
        assert_eq!((m.from.as_str(), m.to.as_str()), ("F32", "F32"));
        assert_eq!(m.rms_quant_error, 0.0);
        assert!(m.rms_delta > 0.0);
    }
    // W' = W + s·B·A, element by element.
    let ad = s.get(1, Target::FfnUp).unwrap();
    let (w, w2, d) = (
        deq(&bf, "blk.1.ffn_up.weight"),
        deq(&of, "blk.1.ffn_up.weight"),
        delta(ad),
    );
    let want: Vec<f32> = w.iter().zip(&d).map(|(a, b)| a + b).collect();
    assert!(
        max_abs_diff(&w2, &want) <= 1e-6,
        "{}",
        max_abs_diff(&w2, &want)
    );

    let with_adapter = logits(&base, Some(s));
    let merged = logits(&out, None);
    let plain = logits(&base, None);
    let diff = max_abs_diff(&merged, &with_adapter);
    eprintln!("F32 merge: max |Δlogit| {diff:e}");
    assert!(
        max_abs_diff(&plain, &with_adapter) > 0.05,
        "the adapter matters"
    );
    assert!(
        diff <= 1e-5,
        "merged F32 vs base + adapter: max |Δ| {diff:e}"
    );
}

#[test]
fn quantized_merge_stays_within_the_requantization_noise() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_model(dir.path(), "base-q8.gguf", GgmlType::Q8_0, 7);
    let base_f32 = tiny_model(dir.path(), "base-f32.gguf", GgmlType::F32, 7);
    let s = set(2);
    let out = dir.path().join("merged-q8.gguf");
    let r = merge(&base, &s, &out, MergeType::Same);
    let (bf, of) = (
        GgufFile::open(&base).unwrap(),
        GgufFile::open(&out).unwrap(),
    );
    let names: Vec<String> = r.merged.iter().map(|m| m.name.clone()).collect();
    assert_rest_identical(&bf, &of, &names);
    // The reported error is deq(out) − (deq(base) + ΔW), measured independently here.
    for m in &r.merged {
        assert_eq!((m.from.as_str(), m.to.as_str()), ("Q8_0", "Q8_0"));
        assert_eq!(of.tensor(&m.name).unwrap().ty, GgmlType::Q8_0);
        let (l, stem) = m
            .name
            .strip_prefix("blk.")
            .unwrap()
            .strip_suffix(".weight")
            .unwrap()
            .split_once('.')
            .unwrap();
        let t: Target = stem.parse().unwrap();
        let d = delta(s.get(l.parse().unwrap(), t).unwrap());
        let exact: Vec<f32> = deq(&bf, &m.name)
            .iter()
            .zip(&d)
            .map(|(a, b)| a + b)
            .collect();
        let got = deq(&of, &m.name);
        let rms = (got
            .iter()
            .zip(&exact)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / got.len() as f64)
            .sqrt();
        assert!(
            (rms - m.rms_quant_error).abs() <= 0.01 * m.rms_quant_error + 1e-9,
            "{}: {rms} vs {}",
            m.name,
            m.rms_quant_error
        );
        assert!(m.rms_quant_error > 0.0 && m.max_abs_quant_error >= m.rms_quant_error);
    }
    // Logits: the merged Q8_0 model differs from Q8_0 base + adapter by re-quantization noise,
    // which is no larger than what quantizing the F32 model to Q8_0 once does.
    let with_adapter = logits(&base, Some(s));
    let merged = logits(&out, None);
    let quant_noise = max_abs_diff(&logits(&base, None), &logits(&base_f32, None));
    let diff = max_abs_diff(&merged, &with_adapter);
    eprintln!("Q8_0 merge: max |Δlogit| {diff:e}, one Q8_0 quantization {quant_noise:e}");
    assert!(
        diff > 0.0 && diff <= 2.0 * quant_noise,
        "merged Q8_0: {diff:e}, one Q8_0 quantization: {quant_noise:e}"
    );
}

#[test]
fn a_chosen_type_applies_to_merged_tensors_only() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_model(dir.path(), "base-q4k.gguf", GgmlType::Q4_K, 8);
    let s = set(3);
    let out = dir.path().join("merged-f32.gguf");
    let r = merge(&base, &s, &out, MergeType::To(GgmlType::F32));
    let (bf, of) = (
        GgufFile::open(&base).unwrap(),
        GgufFile::open(&out).unwrap(),
    );
    let names: Vec<String> = r.merged.iter().map(|m| m.name.clone()).collect();
    assert_rest_identical(&bf, &of, &names);
    assert!(r.merged.iter().all(|m| m.from == "Q4_K" && m.to == "F32"));
    let diff = max_abs_diff(&logits(&out, None), &logits(&base, Some(s)));
    eprintln!("Q4_K base merged to F32: max |Δlogit| {diff:e}");
    assert!(
        diff <= 1e-5,
        "Q4_K base merged to F32 vs base + adapter: {diff:e}"
    );
}

#[test]
fn unwritable_types_and_bad_targets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_model(dir.path(), "base.gguf", GgmlType::F32, 9);
    let f = GgufFile::open(&base).unwrap();
    let s = set(4);
    let out = dir.path().join("m.gguf");

    let e = merge_adapter(&f, &s, &base, MergeType::Same, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("this output is the base model"), "{e}");

    // A Q3_K tensor kept as "same": refused before writing, with a writable suggestion.
    let q3 = dir.path().join("q3.gguf");
    model_support::rewrite(
        &base,
        &q3,
        &model_support::Edit {
            reshape: vec![("blk.0.attn_q.weight", vec![256, 256], GgmlType::Q3_K)],
            ..Default::default()
        },
    );
    let fq = GgufFile::open(&q3).unwrap();
    let e = merge_adapter(&fq, &s, &out, MergeType::Same, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("Q3_K") && e.contains("--type q4_k"),
        "{e}"
    );
    assert!(!out.exists(), "nothing written");
    // With a writable type it works.
    merge_adapter(&fq, &s, &out, MergeType::To(GgmlType::Q4_K), &mut |_| {}).unwrap();

    // An adapter set for another model.
    let mut other = tiny_config();
    other.n_layer = 3;
    let s3 = AdapterSet::new_lora(&other, &LoraConfig::default(), 1).unwrap();
    let e = merge_adapter(&f, &s3, &out, MergeType::Same, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 layers") && e.contains("2"), "{e}");
}
