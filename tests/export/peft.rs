//! Hugging Face PEFT export and import: names, shapes and config as PEFT writes them; q_proj and
//! k_proj `B` rows in HF order (checked element by element against the converter's rule);
//! export → import identical tensors and logits; import → export identical files; per-module
//! `rank_pattern` / `alpha_pattern`; bad directories refused with names and numbers.

use crate::export_support::*;
use edgetune::adapters::{LoraConfig, Target};
use edgetune::export::peft::{README_FILE, TENSORS_FILE};
use edgetune::export::peft_config::CONFIG_FILE;
use edgetune::export::{PeftOptions, export_peft, load_any, load_peft, sha256};
use edgetune::quant::GgmlType;
use safetensors::SafeTensors;
use serde_json::json;

fn cfg(rank: usize) -> LoraConfig {
    LoraConfig {
        rank,
        alpha: 16.0,
        rslora: false,
        dropout: 0.05,
        targets: Target::ALL.to_vec(),
        layers: None,
    }
}

fn read_json(p: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn names_shapes_config_and_hf_row_order() {
    let m = tiny_config();
    let set = random_set(&m, &cfg(4), 1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("peft");
    let base = tiny_model(dir.path(), "base.gguf", GgmlType::F32, 2);
    let opts = PeftOptions {
        base_file: Some(base.clone()),
        notes: json!({"train": {"lr": 2e-4}, "metrics": {"eval_loss": 1.25}}),
        ..PeftOptions::default()
    };
    let r = export_peft(&set, &m, &out, &opts).unwrap();
    assert!(r.folded.is_empty());

    let c = read_json(&out.join(CONFIG_FILE));
    assert_eq!(c["peft_type"], "LORA");
    assert_eq!(c["task_type"], "CAUSAL_LM");
    assert_eq!(c["r"], 4);
    assert_eq!(c["lora_alpha"], 16);
    assert_eq!(c["use_rslora"], false);
    assert_eq!(c["use_dora"], false);
    assert_eq!(c["bias"], "none");
    assert_eq!(c["fan_in_fan_out"], false);
    assert_eq!(c["rank_pattern"], json!({}));
    assert_eq!(
        c["target_modules"],
        json!([
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj"
        ])
    );

    let bytes = std::fs::read(out.join(TENSORS_FILE)).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), 2 * 7 * m.n_layer);
    let get = |n: &str| {
        let v = st.tensor(n).unwrap();
        let vals: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (v.shape().to_vec(), vals)
    };
    let (sa, a) = get("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight");
    assert_eq!(sa, vec![4, m.ffn]);
    assert_eq!(a, set.get(1, Target::FfnDown).unwrap().param(0).unwrap());
    let (sv, v) = get("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight");
    assert_eq!(sv, vec![m.kv_dim(), 4]);
    assert_eq!(
        v,
        set.get(0, Target::AttnV).unwrap().param(1).unwrap(),
        "v_proj is not permuted"
    );

    // q_proj / k_proj B: HF row h·d + s·d/2 + i holds GGUF row h·d + 2i + s.
    let d = m.head_dim;
    for (target, proj, heads) in [
        (Target::AttnQ, "q_proj", m.n_head),
        (Target::AttnK, "k_proj", m.n_head_kv),
    ] {
        let (shape, hf) = get(&format!(
            "base_model.model.model.layers.1.self_attn.{proj}.lora_B.weight"
        ));
        assert_eq!(shape, vec![heads * d, 4]);
        let gguf = set.get(1, target).unwrap().param(1).unwrap();
        for h in 0..heads {
            for i in 0..d / 2 {
                for s in 0..2 {
                    let (hr, gr) = (h * d + s * d / 2 + i, h * d + 2 * i + s);
                    assert_eq!(
                        hf[hr * 4..hr * 4 + 4],
                        gguf[gr * 4..gr * 4 + 4],
                        "{proj} head {h} pair {i}.{s}"
                    );
                }
            }
        }
        assert_ne!(hf, gguf, "{proj} rows moved");
    }

    let readme = std::fs::read_to_string(out.join(README_FILE)).unwrap();
    let sha = sha256::file_sha256(&base).unwrap();
    assert_eq!(r.base_sha256.as_deref(), Some(sha.as_str()));
    for part in [
        "base.gguf",
        sha.as_str(),
        "eval_loss",
        "1.25",
        "Hugging Face row order",
        "rank 4",
    ] {
        assert!(readme.contains(part), "README lacks {part:?}:\n{readme}");
    }
}

#[test]
fn round_trips_are_exact_and_logits_identical() {
    let m = tiny_config();
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), "base.gguf", GgmlType::Q4_0, 3);
    let mut set = random_set(&m, &cfg(8), 2);
    randomize(&mut set, 5, 0.2);
    put_rank(&mut set, &m, 1, Target::AttnQ, 4);
    let out = dir.path().join("p1");
    export_peft(&set, &m, &out, &PeftOptions::default()).unwrap();
    assert_eq!(
        read_json(&out.join(CONFIG_FILE))["rank_pattern"],
        json!({"model.layers.1.self_attn.q_proj": 4})
    );
    let back = load_peft(&out, &m).unwrap();
    assert_same_sets("peft round trip", &set, &back);
    assert_eq!(back.lora_config(), set.lora_config());

    let out2 = dir.path().join("p2");
    export_peft(&back, &m, &out2, &PeftOptions::default()).unwrap();
    for f in [TENSORS_FILE, CONFIG_FILE, README_FILE] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(out2.join(f)).unwrap(),
            "{f}"
        );
    }
    let via_any = load_any(&out.join(CONFIG_FILE), &m).unwrap();
    assert_eq!(logits(&model, Some(set)), logits(&model, Some(via_any)));

    // bf16: the values bf16 holds.
    let out3 = dir.path().join("p3");
    let opts = PeftOptions {
        dtype: GgmlType::BF16,
        ..PeftOptions::default()
    };
    export_peft(&back, &m, &out3, &opts).unwrap();
    let b16 = load_peft(&out3, &m).unwrap();
    for (l, t, a) in back.iter() {
        for i in 0..2 {
            let want: Vec<f32> = a
                .param(i)
                .unwrap()
                .iter()
                .map(|v| half::bf16::from_f32(*v).to_f32())
                .collect();
            assert_eq!(
                b16.get(l, t).unwrap().param(i).unwrap(),
                want,
                "blk.{l}.{t:?} param {i}"
            );
        }
    }
}

/// A PEFT directory with `config` and f32 tensors (name suffix after `model.layers.`, shape).
fn handmade(dir: &std::path::Path, config: serde_json::Value, tensors: &[(&str, Vec<usize>)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(CONFIG_FILE), config.to_string()).unwrap();
    let full: Vec<(String, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s)| {
            let k: usize = s.iter().product();
            (
                format!("base_model.model.model.layers.{n}"),
                s.clone(),
                (0..k).map(|i| (i % 7) as f32 * 0.01).collect(),
            )
        })
        .collect();
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = full
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    write_safetensors(&dir.join(TENSORS_FILE), &refs, &[("format", "pt")]);
}

fn base_config() -> serde_json::Value {
    json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["v_proj", "down_proj"],
           "bias": "none", "use_rslora": false, "use_dora": false, "task_type": "CAUSAL_LM"})
}

#[test]
fn rank_and_alpha_patterns_set_each_modules_scale() {
    let m = tiny_config();
    let dir = tempfile::tempdir().unwrap();
    let mut c = base_config();
    c["rank_pattern"] = json!({"model.layers.0.self_attn.v_proj": 2});
    c["alpha_pattern"] = json!({"down_proj": 32});
    handmade(
        dir.path(),
        c,
        &[
            ("0.self_attn.v_proj.lora_A.weight", vec![2, 256]),
            ("0.self_attn.v_proj.lora_B.weight", vec![128, 2]),
            ("1.self_attn.v_proj.lora_A.weight", vec![4, 256]),
            ("1.self_attn.v_proj.lora_B.weight", vec![128, 4]),
            ("1.mlp.down_proj.lora_A.weight", vec![4, 512]),
            ("1.mlp.down_proj.lora_B.weight", vec![256, 4]),
        ],
    );
    let set = load_peft(dir.path(), &m).unwrap();
    assert_eq!(set.len(), 3);
    assert_eq!(set.get(0, Target::AttnV).unwrap().scale(), 4.0); // 8 / 2
    assert_eq!(set.get(1, Target::AttnV).unwrap().scale(), 2.0); // 8 / 4
    assert_eq!(set.get(1, Target::FfnDown).unwrap().scale(), 8.0); // 32 / 4
    assert_eq!(
        set.lora_config().targets,
        vec![Target::AttnV, Target::FfnDown]
    );

    // Exporting folds the per-module alpha into B (PEFT's alpha_pattern is not written back):
    // ΔW is the same.
    let out = dir.path().join("again");
    let r = export_peft(&set, &m, &out, &PeftOptions::default()).unwrap();
    assert_eq!(r.folded, vec!["blk.1.ffn_down".to_string()]);
    let back = load_peft(&out, &m).unwrap();
    let (x, y) = (
        delta(set.get(1, Target::FfnDown).unwrap()),
        delta(back.get(1, Target::FfnDown).unwrap()),
    );
    assert!(max_abs_diff(&x, &y) <= 1e-6 * x.iter().fold(0.0f32, |a, v| a.max(v.abs())));
}

fn assert_has(e: &str, parts: &[&str]) {
    for p in parts {
        assert!(e.contains(p), "error {e:?} lacks {p:?}");
    }
}

#[test]
fn bad_directories_are_refused_with_names_and_numbers() {
    let m = tiny_config();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let err = || load_peft(p, &m).unwrap_err().to_string();

    handmade(
        p,
        base_config(),
        &[
            ("0.self_attn.v_proj.lora_A.weight", vec![4, 256]),
            ("0.self_attn.v_proj.lora_B.weight", vec![128, 2]),
        ],
    );
    assert_has(
        &err(),
        &["v_proj.lora_B.weight", "rank mismatch", "rank 4", "rank 2"],
    );

    handmade(
        p,
        base_config(),
        &[
            ("0.self_attn.v_proj.lora_A.weight", vec![2, 256]),
            ("0.self_attn.v_proj.lora_B.weight", vec![128, 2]),
        ],
    );
    assert_has(&err(), &["v_proj.lora_A.weight", "rank 2", "rank 4"]);

    handmade(
        p,
        base_config(),
        &[
            ("0.self_attn.v_proj.lora_A.weight", vec![4, 256]),
            ("0.self_attn.v_proj.lora_B.weight", vec![256, 4]),
        ],
    );
    assert_has(
        &err(),
        &[
            "v_proj.lora_B.weight",
            "256 outputs",
            "256 → 128",
            "another model",
        ],
    );

    handmade(
        p,
        base_config(),
        &[("0.self_attn.v_proj.lora_magnitude_vector", vec![128])],
    );
    assert_has(&err(), &["lora_magnitude_vector", "DoRA"]);

    handmade(
        p,
        base_config(),
        &[
            ("9.mlp.up_proj.lora_A.weight", vec![4, 256]),
            ("9.mlp.up_proj.lora_B.weight", vec![512, 4]),
        ],
    );
    assert_has(&err(), &["layers.9", "layer 9", "2 layers"]);

    let mut c = base_config();
    c["use_dora"] = json!(true);
    handmade(p, c, &[]);
    assert_has(&err(), &[CONFIG_FILE, "use_dora", "DoRA"]);

    std::fs::remove_file(p.join(TENSORS_FILE)).unwrap();
    std::fs::write(p.join(CONFIG_FILE), base_config().to_string()).unwrap();
    std::fs::write(p.join("adapter_model.bin"), b"pickle").unwrap();
    assert_has(&err(), &["adapter_model.bin", "safetensors"]);

    // An empty directory is no adapter.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = load_any(&empty, &m).unwrap_err().to_string();
    assert_has(&e, &["adapter.json", "adapter_config.json"]);
}
