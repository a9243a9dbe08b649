//! Shared helpers of the model tests: generate the seeded tiny model and rewrite a GGUF with
//! edits (drop/reshape/retype/replace tensors, drop/set metadata) to make broken or variant files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use edgetune::gguf::{GgufFile, GgufWriter, Value};
use edgetune::quant::GgmlType;
use edgetune::testmodel::{self, WeightTypes};

/// Writes the tiny preset with `types` and `seed` into `dir/name`.
pub fn tiny(dir: &Path, name: &str, types: WeightTypes, seed: u64) -> PathBuf {
    let path = dir.join(name);
    testmodel::write_test_model(&testmodel::TINY, types, seed, &path).expect("write test model");
    path
}

/// Changes applied by [`rewrite`].
#[derive(Default)]
pub struct Edit {
    pub drop_tensors: Vec<&'static str>,
    pub drop_keys: Vec<&'static str>,
    pub set_keys: Vec<(&'static str, Value)>,
    /// New shape and type for a tensor; its data become zeros.
    pub reshape: Vec<(&'static str, Vec<u64>, GgmlType)>,
    /// `(name, from)`: tensor `name` gets the shape, type and bytes of tensor `from`.
    pub copy_from: Vec<(&'static str, &'static str)>,
    /// New F32 values (same length) for a 1-D F32 tensor.
    pub set_f32: Vec<(&'static str, Vec<f32>)>,
}

/// Writes `src` with `edit` applied to `dst`.
pub fn rewrite(src: &Path, dst: &Path, edit: &Edit) {
    let f = GgufFile::open(src).expect("open source");
    let mut w = GgufWriter::new(f.alignment());
    for (k, v) in f.metadata().iter() {
        if edit.drop_keys.contains(&k) || k == "general.alignment" {
            continue;
        }
        let v = edit
            .set_keys
            .iter()
            .find(|(key, _)| *key == k)
            .map_or_else(|| v.clone(), |(_, v)| v.clone());
        w.add_kv(k, v).unwrap();
    }
    for (k, v) in &edit.set_keys {
        if f.get(k).is_none() {
            w.add_kv(*k, v.clone()).unwrap();
        }
    }
    // (name, source tensor of the bytes, or None for zeros)
    let mut plan: Vec<(String, Option<String>)> = Vec::new();
    for t in f.tensors() {
        let name = t.name.as_str();
        if edit.drop_tensors.contains(&name) {
            continue;
        }
        if let Some((_, dims, ty)) = edit.reshape.iter().find(|(n, _, _)| *n == name) {
            w.add_tensor(name, dims, *ty).unwrap();
            plan.push((name.into(), None));
        } else if let Some((_, from)) = edit.copy_from.iter().find(|(n, _)| *n == name) {
            let s = f.tensor(from).expect("copy source");
            w.add_tensor(name, &s.dims, s.ty).unwrap();
            plan.push((name.into(), Some(from.to_string())));
        } else {
            w.add_tensor(name, &t.dims, t.ty).unwrap();
            plan.push((name.into(), Some(name.into())));
        }
    }
    w.write_to_path(dst, |i, info, sink| {
        let (name, from) = &plan[i];
        if let Some((_, vals)) = edit.set_f32.iter().find(|(n, _)| n == name) {
            let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
            return sink.write_all(&bytes);
        }
        match from {
            Some(src) => sink.write_all(f.tensor_by_name(src)?.1),
            None => sink.write_zeros(info.n_bytes),
        }
    })
    .expect("rewrite");
}

/// Max |a − b| / max(1, |b|).
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f32::max)
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_rms(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// A fixed token sequence inside the tiny vocabulary (261 tokens).
pub fn tokens(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + 11) % 261).collect()
}

/// Relative RMS difference of all 2-D weights of `q` (dequantized) against those of `f`.
pub fn weight_rel_rms(q: &Path, f: &Path) -> f64 {
    let (q, f) = (GgufFile::open(q).unwrap(), GgufFile::open(f).unwrap());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for t in q.tensors().iter().filter(|t| t.dims.len() == 2) {
        let n = t.n_elements as usize;
        let (mut a, mut b) = (vec![0.0f32; n], vec![0.0f32; n]);
        edgetune::quant::dequantize(t.ty, q.tensor_data(t), &mut a).unwrap();
        let (ft, fb) = f.tensor_by_name(&t.name).unwrap();
        edgetune::quant::dequantize(ft.ty, fb, &mut b).unwrap();
        num += a
            .iter()
            .zip(&b)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum::<f64>();
        den += b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>();
    }
    (num / den).sqrt()
}
