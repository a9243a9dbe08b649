//! llama.cpp GGUF LoRA export and import: metadata, names and ne-order shapes as llama.cpp
//! loads them; export → import identical tensors and logits; import → export identical bytes;
//! rsLoRA and per-module rank; bad files give errors naming the tensor and numbers.

use crate::export_support::*;
use edgetune::adapters::{LoraConfig, Target};
use edgetune::export::{export_gguf, load_any, load_gguf_adapter};
use edgetune::gguf::{GgufFile, GgufWriter, Value};
use edgetune::quant::{self, GgmlType};

fn cfg(rank: usize, rslora: bool) -> LoraConfig {
    LoraConfig {
        rank,
        alpha: 16.0,
        rslora,
        dropout: 0.0,
        targets: Target::ALL.to_vec(),
        layers: None,
    }
}

/// `v` through `ty`'s encoder and decoder (our reference quantizers).
fn through(ty: GgmlType, v: &[f32]) -> Vec<f32> {
    let mut q = vec![0u8; ty.bytes_for(v.len() as u64).unwrap() as usize];
    quant::quantize(ty, v, &mut q).unwrap();
    let mut out = vec![0.0; v.len()];
    quant::dequantize(ty, &q, &mut out).unwrap();
    out
}

#[test]
fn metadata_names_and_shapes_are_what_llama_cpp_loads() {
    let m = tiny_config();
    let set = random_set(&m, &cfg(4, false), 1);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.gguf");
    let r = export_gguf(&set, &m, &p, GgmlType::F32).unwrap();
    assert_eq!(r.alpha, 16.0);
    assert!(r.folded.is_empty());
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(f.str("general.type").unwrap(), "adapter");
    assert_eq!(f.str("general.architecture").unwrap(), "llama");
    assert_eq!(f.str("adapter.type").unwrap(), "lora");
    assert!(matches!(f.get("adapter.lora.alpha"), Some(Value::F32(a)) if *a == 16.0));
    assert_eq!(f.tensors().len(), 2 * 7 * m.n_layer);
    let (qa, _) = f.tensor_by_name("blk.1.attn_k.weight.lora_a").unwrap();
    assert_eq!(qa.dims, vec![m.dim as u64, 4]);
    let (qb, data) = f.tensor_by_name("blk.1.attn_k.weight.lora_b").unwrap();
    assert_eq!(qb.dims, vec![4, m.kv_dim() as u64]);
    assert_eq!(qb.ty, GgmlType::F32);
    // lora_b holds B [out, r] row-major as is (no transpose).
    let b = set.get(1, Target::AttnK).unwrap().param(1).unwrap();
    let vals: Vec<f32> = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(vals, b);
    let (fd, _) = f.tensor_by_name("blk.0.ffn_down.weight.lora_a").unwrap();
    assert_eq!(fd.dims, vec![m.ffn as u64, 4]);
}

#[test]
fn export_import_is_exact_per_dtype_and_import_export_gives_the_same_bytes() {
    let m = tiny_config();
    let set = random_set(&m, &cfg(4, false), 2);
    let dir = tempfile::tempdir().unwrap();
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0] {
        let p = dir.path().join(format!("a-{ty}.gguf"));
        let r = export_gguf(&set, &m, &p, ty).unwrap();
        let back = load_gguf_adapter(&p, &m).unwrap();
        for (l, t, a) in set.iter() {
            let b = back.get(l, t).unwrap();
            assert_eq!(a.scale().to_bits(), b.scale().to_bits());
            // A rows (256) fit Q8_0; B rows (rank 4) do not and fall back to F16.
            let ta = if ty == GgmlType::Q8_0 {
                GgmlType::Q8_0
            } else {
                ty
            };
            let tb = if ty == GgmlType::Q8_0 {
                GgmlType::F16
            } else {
                ty
            };
            assert_eq!(
                b.param(0).unwrap(),
                through(ta, a.param(0).unwrap()),
                "{ty} blk.{l}.{t:?} A"
            );
            assert_eq!(
                b.param(1).unwrap(),
                through(tb, a.param(1).unwrap()),
                "{ty} blk.{l}.{t:?} B"
            );
        }
        let names: Vec<_> = r
            .tensors
            .iter()
            .filter(|t| t.name.ends_with("lora_b"))
            .map(|t| t.ty.clone())
            .collect();
        assert!(names.iter().all(|t| *t
            == if ty == GgmlType::Q8_0 {
                "F16"
            } else {
                ty.name()
            }));
        // Import → export reproduces the file byte for byte.
        let p2 = dir.path().join(format!("b-{ty}.gguf"));
        export_gguf(&back, &m, &p2, ty).unwrap();
        assert_eq!(
            std::fs::read(&p).unwrap(),
            std::fs::read(&p2).unwrap(),
            "{ty}"
        );
        // load_any recognises the file.
        assert_eq!(load_any(&p, &m).unwrap().len(), set.len());
    }
}

#[test]
fn rslora_is_written_as_alpha_sqrt_r_and_per_module_rank_keeps_delta_w() {
    let m = tiny_config();
    let mut set = random_set(&m, &cfg(4, true), 3);
    put_rank(&mut set, &m, 1, Target::AttnV, 2);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("rs.gguf");
    let r = export_gguf(&set, &m, &p, GgmlType::F32).unwrap();
    // alpha' = 16·√4 = 32, so llama.cpp's alpha'/r = 8 = 16/√4.
    assert_eq!(r.alpha, 32.0);
    // The rank-2 module has s = 16/√2 but the file gives 32/2 = 16: folded into B.
    assert_eq!(r.folded, vec!["blk.1.attn_v".to_string()]);
    let back = load_gguf_adapter(&p, &m).unwrap();
    let (x, y) = (
        set.get(1, Target::AttnV).unwrap(),
        back.get(1, Target::AttnV).unwrap(),
    );
    assert_eq!(y.scale(), 16.0);
    assert_eq!(y.params()[0].shape, vec![2, m.dim]);
    let (dx, dy) = (delta(x), delta(y));
    let scale = dx.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    assert!(
        max_abs_diff(&dx, &dy) <= 1e-6 * scale,
        "{}",
        max_abs_diff(&dx, &dy)
    );
    // Unfolded modules are exact.
    let (x, y) = (
        set.get(0, Target::AttnQ).unwrap(),
        back.get(0, Target::AttnQ).unwrap(),
    );
    assert_eq!(x.scale(), y.scale());
    assert_eq!(x.param(1).unwrap(), y.param(1).unwrap());
}

#[test]
fn export_import_gives_identical_logits() {
    let m = tiny_config();
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), "base.gguf", GgmlType::Q8_0, 5);
    let mut set = random_set(&m, &cfg(8, false), 4);
    randomize(&mut set, 11, 0.2);
    let p = dir.path().join("a.gguf");
    export_gguf(&set, &m, &p, GgmlType::F32).unwrap();
    let back = load_gguf_adapter(&p, &m).unwrap();
    let base = logits(&model, None);
    let ours = logits(&model, Some(set));
    let again = logits(&model, Some(back));
    assert!(
        max_abs_diff(&base, &ours) > 1e-2,
        "the adapter changes the logits"
    );
    assert_eq!(ours, again);
}

fn assert_has(e: &str, parts: &[&str]) {
    for p in parts {
        assert!(e.contains(p), "error {e:?} lacks {p:?}");
    }
}

/// An adapter GGUF with the given metadata and F32 tensors (name, ne dims).
fn handmade(path: &std::path::Path, kv: &[(&str, Value)], tensors: &[(&str, Vec<u64>)]) {
    let mut w = GgufWriter::new(32);
    for (k, v) in kv {
        w.add_kv(*k, v.clone()).unwrap();
    }
    for (n, d) in tensors {
        w.add_tensor(*n, d, GgmlType::F32).unwrap();
    }
    w.write_to_path(path, |_, info, sink| sink.write_zeros(info.n_bytes))
        .unwrap();
}

fn adapter_kv() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.type", Value::String("adapter".into())),
        ("adapter.type", Value::String("lora".into())),
        ("adapter.lora.alpha", Value::F32(8.0)),
    ]
}

#[test]
fn bad_adapters_are_refused_with_names_and_numbers() {
    let m = tiny_config();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.gguf");
    let err = |p: &std::path::Path| load_gguf_adapter(p, &m).unwrap_err().to_string();

    // A base model given as the adapter.
    let model = tiny_model(dir.path(), "base.gguf", GgmlType::F32, 1);
    assert_has(
        &err(&model),
        &["general.type", "not an adapter", "base model"],
    );

    handmade(
        &p,
        &adapter_kv(),
        &[
            ("blk.0.attn_q.weight.lora_a", vec![256, 4]),
            ("blk.0.attn_q.weight.lora_b", vec![3, 256]),
        ],
    );
    assert_has(
        &err(&p),
        &[
            "blk.0.attn_q.weight.lora_b",
            "rank mismatch",
            "rank 4",
            "rank 3",
        ],
    );

    handmade(
        &p,
        &adapter_kv(),
        &[("blk.0.attn_q.weight.lora_a", vec![256, 4])],
    );
    assert_has(&err(&p), &["blk.0.attn_q.weight.lora_a", "has no lora_B"]);

    handmade(
        &p,
        &adapter_kv(),
        &[
            ("blk.0.attn_q.weight.lora_a", vec![512, 4]),
            ("blk.0.attn_q.weight.lora_b", vec![4, 256]),
        ],
    );
    assert_has(
        &err(&p),
        &[
            "blk.0.attn_q.weight.lora_a",
            "512 inputs",
            "256 → 256",
            "another model",
        ],
    );

    handmade(
        &p,
        &adapter_kv(),
        &[("blk.0.attn_q.weight.lora_c", vec![256, 4])],
    );
    assert_has(
        &err(&p),
        &["blk.0.attn_q.weight.lora_c", "unexpected tensor"],
    );

    let mut kv = adapter_kv();
    kv[0].1 = Value::String("qwen2".into());
    handmade(&p, &kv, &[("blk.0.attn_q.weight.lora_a", vec![256, 4])]);
    assert_has(&err(&p), &["general.architecture", "qwen2"]);

    // The same adapter exported for the tiny model, loaded for a wider one.
    let set = random_set(&m, &cfg(4, false), 9);
    export_gguf(&set, &m, &p, GgmlType::F16).unwrap();
    let mut other = m.clone();
    other.dim = 512;
    let e = load_gguf_adapter(&p, &other).unwrap_err().to_string();
    assert_has(&e, &["lora_a", "256 inputs", "another model"]);

    // Types llama.cpp cannot load are refused on export.
    let e = export_gguf(&set, &m, &p, GgmlType::Q4_0)
        .unwrap_err()
        .to_string();
    assert_has(&e, &["Q4_0", "f32, f16, bf16 or q8_0"]);
}

#[test]
fn alpha_zero_means_no_scaling_as_in_llama_cpp() {
    let m = tiny_config();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("z.gguf");
    let mut kv = adapter_kv();
    kv.pop(); // no alpha key
    handmade(
        &p,
        &kv,
        &[
            ("blk.0.attn_q.weight.lora_a", vec![256, 4]),
            ("blk.0.attn_q.weight.lora_b", vec![4, 256]),
            ("blk.0.attn_norm.weight", vec![256]),
        ],
    );
    let set = load_gguf_adapter(&p, &m).unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(set.get(0, Target::AttnQ).unwrap().scale(), 1.0);
}
