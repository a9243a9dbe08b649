//! Cross-checks of the adapter formats with tools no one here wrote: gguf-py reads our adapter
//! GGUF and finds what llama.cpp's loader requires; Python safetensors + numpy read our PEFT
//! directory with PEFT's names and shapes, and llama.cpp's converter permutation takes its
//! q/k lora_B back to our rows; a PEFT directory written by Python imports exactly. Needs the
//! venv of `scripts/setup-python.sh` (gguf, numpy, safetensors) or `EDGETUNE_PYTHON`.

use std::path::{Path, PathBuf};

use crate::export_support::*;
use crate::python_support::run_script;
use edgetune::adapters::{Lora, LoraConfig, Target};
use edgetune::export::{PeftOptions, export_gguf, export_peft, load_peft, sha256};
use edgetune::gguf::GgufFile;
use edgetune::npy;
use edgetune::quant::{self, GgmlType};
use edgetune::train::AdapterSet;
use edgetune::train::adapter_set::target_shape;

/// What this module needs from the reference Python.
const NEEDS_PY: &str = "gguf-py and safetensors are";

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn write_dims(dir: &Path) -> PathBuf {
    let m = tiny_config();
    let p = dir.join("dims.json");
    let j = serde_json::json!({"n_layer": m.n_layer, "dim": m.dim, "n_head": m.n_head,
        "n_head_kv": m.n_head_kv, "head_dim": m.head_dim, "ffn": m.ffn});
    std::fs::write(&p, j.to_string()).unwrap();
    p
}

fn set_with_mixed_ranks() -> AdapterSet {
    let m = tiny_config();
    let cfg = LoraConfig {
        rank: 4,
        alpha: 16.0,
        rslora: true,
        ..LoraConfig::default()
    };
    let mut s = random_set(&m, &cfg, 21);
    put_rank(&mut s, &m, 1, Target::FfnUp, 2);
    s
}

#[test]
fn gguf_py_reads_our_adapter_as_llama_cpp_requires() {
    let m = tiny_config();
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_model(dir.path(), "base.gguf", GgmlType::F32, 1);
    let set = set_with_mixed_ranks();
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0] {
        let out = dir.path().join(ty.name());
        std::fs::create_dir(&out).unwrap();
        let p = out.join("adapter.gguf");
        let r = export_gguf(&set, &m, &p, ty).unwrap();
        run_script(NEEDS_PY, "lora_gguf_check.py", &[&p, &base, &out]);
        let meta = read_json(&out.join("lora_meta.json"));
        assert_eq!(meta["alpha"], r.alpha as f64, "{ty}");
        assert_eq!(meta["pairs"], set.len(), "{ty}");
        let ours = GgufFile::open(&p).unwrap();
        let theirs = meta["tensors"].as_array().unwrap();
        assert_eq!(theirs.len(), ours.tensors().len());
        for (t, o) in theirs.iter().zip(ours.tensors()) {
            assert_eq!(t["name"], o.name.as_str());
            assert_eq!(t["type"], o.ty.name(), "{}", o.name);
            let shape: Vec<u64> = serde_json::from_value(t["shape"].clone()).unwrap();
            assert_eq!(shape, o.dims, "{}: ne order", o.name);
            let (_, deq) = npy::read_f32(out.join(format!("{}.npy", o.name))).unwrap();
            let mut mine = vec![0.0; o.n_elements as usize];
            quant::dequantize(o.ty, ours.tensor_data(o), &mut mine).unwrap();
            let same = mine
                .iter()
                .zip(&deq)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{ty} {}: gguf-py dequantizes other values", o.name);
        }
    }
}

#[test]
fn python_reads_our_peft_dir_and_the_converter_permute_gives_back_our_rows() {
    let m = tiny_config();
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_model(dir.path(), "base.gguf", GgmlType::Q8_0, 2);
    let set = set_with_mixed_ranks();
    let out = dir.path().join("peft");
    let opts = PeftOptions {
        base_file: Some(base.clone()),
        notes: serde_json::json!({"metrics": {"loss": 0.5}}),
        ..PeftOptions::default()
    };
    let r = export_peft(&set, &m, &out, &opts).unwrap();
    let dims = write_dims(dir.path());
    run_script(NEEDS_PY, "peft_check.py", &[&out, &dims, &base, dir.path()]);
    let meta = read_json(&dir.path().join("peft_meta.json"));
    assert_eq!(meta["sha256"], r.base_sha256.clone().unwrap().as_str());
    assert_eq!(meta["sha256"], sha256::file_sha256(&base).unwrap().as_str());
    assert_eq!(meta["tensors"].as_object().unwrap().len(), 2 * set.len());
    assert_eq!(
        meta["config"]["rank_pattern"]["model.layers.1.mlp.up_proj"],
        2
    );
    for l in 0..m.n_layer {
        for (t, proj) in [(Target::AttnQ, "q_proj"), (Target::AttnK, "k_proj")] {
            let name = format!("base_model.model.model.layers.{l}.self_attn.{proj}.lora_B.weight");
            let (shape, g) =
                npy::read_f32(dir.path().join(format!("{name}.gguf_order.npy"))).unwrap();
            assert_eq!(shape, vec![target_shape(&m, t).1, 4]);
            assert_eq!(g, set.get(l, t).unwrap().param(1).unwrap(), "{name}");
        }
    }
}

#[test]
fn a_peft_dir_written_by_python_imports_as_the_equivalent_adapter() {
    let m = tiny_config();
    let dir = tempfile::tempdir().unwrap();
    let (peft, npy_dir) = (dir.path().join("peft"), dir.path().join("npy"));
    std::fs::create_dir(&npy_dir).unwrap();
    let dims = write_dims(dir.path());
    run_script(NEEDS_PY, "peft_write.py", &[&peft, &dims, &npy_dir]);
    let imported = load_peft(&peft, &m).unwrap();

    // The same adapter built directly from the GGUF-order tensors.
    let targets = [Target::AttnQ, Target::AttnK, Target::AttnV, Target::FfnDown];
    let global = LoraConfig {
        rank: 4,
        alpha: 8.0,
        rslora: false,
        dropout: 0.0,
        targets: targets.to_vec(),
        layers: None,
    };
    let mut ours = AdapterSet::empty(m.n_layer, global.clone());
    for l in 0..m.n_layer {
        for t in targets {
            let load = |p: &str| {
                npy::read_f32(npy_dir.join(format!("blk.{l}.{}.{p}.npy", t.gguf_stem()))).unwrap()
            };
            let ((sa, a), (_, b)) = (load("lora_A"), load("lora_B"));
            let cfg = LoraConfig {
                rank: sa[0],
                ..global.clone()
            };
            let (i, o) = target_shape(&m, t);
            let mut lora = Lora::new(i, o, &cfg, 0).unwrap();
            lora.a_mut().copy_from_slice(&a);
            lora.b_mut().copy_from_slice(&b);
            ours.insert(l, t, Box::new(lora)).unwrap();
        }
    }
    assert_same_sets("PEFT written by Python", &ours, &imported);
    assert_eq!(
        imported.get(0, Target::AttnV).unwrap().params()[0].shape[0],
        2
    );
    let base = tiny_model(dir.path(), "base.gguf", GgmlType::Q4_K, 3);
    let (x, y) = (logits(&base, Some(ours)), logits(&base, Some(imported)));
    assert_eq!(x, y, "same logits");
    assert!(
        max_abs_diff(&x, &logits(&base, None)) > 1e-3,
        "the adapter matters"
    );
}
