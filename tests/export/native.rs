//! Our adapter format: save → load is bit-exact (tensors, scales, per-module ranks, dropout
//! seeds), and bad directories give errors naming the file, the tensor and the numbers.

use crate::export_support::*;
use edgetune::adapters::{Adapter, LoraConfig, Pass, Target};
use edgetune::export::native::{self, ADAPTER_JSON, ADAPTER_TENSORS};
use edgetune::export::{load_adapter, save_adapter};
use serde_json::json;

fn cfg(rank: usize) -> LoraConfig {
    LoraConfig {
        rank,
        alpha: 16.0,
        rslora: true,
        dropout: 0.1,
        targets: vec![Target::AttnQ, Target::AttnV, Target::FfnDown],
        layers: None,
    }
}

#[test]
fn save_then_load_is_bit_exact_and_keeps_the_metadata() {
    let m = tiny_config();
    let set = random_set(&m, &cfg(4), 7);
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ckpt");
    save_adapter(
        &set,
        &ck,
        &json!({"step": 12, "seed": 7, "metrics": {"loss": 1.5}}),
    )
    .unwrap();
    let back = load_adapter(&ck, &m).unwrap();
    assert_same_sets("native round trip", &set, &back);
    assert_eq!(back.lora_config(), set.lora_config());

    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ck.join(ADAPTER_JSON)).unwrap()).unwrap();
    assert_eq!(meta["format"], "edgetune-adapter");
    assert_eq!(meta["version"], 1);
    assert_eq!(meta["method"], "lora");
    assert_eq!(meta["n_layer"], m.n_layer);
    assert_eq!(meta["lora"]["rank"], 4);
    assert_eq!(meta["lora"]["rslora"], true);
    assert_eq!(meta["step"], 12);
    assert!(meta.get("rank_pattern").is_none());
    let extra = native::extra_meta(&ck).unwrap();
    assert_eq!(extra.len(), 3);
    assert_eq!(extra["metrics"]["loss"], 1.5);

    // Saving the loaded set again gives the same bytes.
    let ck2 = dir.path().join("ckpt2");
    save_adapter(
        &back,
        &ck2,
        &json!({"step": 12, "seed": 7, "metrics": {"loss": 1.5}}),
    )
    .unwrap();
    for f in [ADAPTER_TENSORS, ADAPTER_JSON] {
        assert_eq!(
            std::fs::read(ck.join(f)).unwrap(),
            std::fs::read(ck2.join(f)).unwrap(),
            "{f}"
        );
    }
    // No temporary files are left behind.
    assert_eq!(std::fs::read_dir(&ck).unwrap().count(), 2);
}

#[test]
fn the_seed_in_the_metadata_restores_the_dropout_streams() {
    let m = tiny_config();
    let set = random_set(&m, &cfg(4), 31);
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&set, dir.path(), &json!({"seed": 31})).unwrap();
    let back = load_adapter(dir.path(), &m).unwrap();
    let a = set.get(1, Target::AttnV).unwrap();
    let b = back.get(1, Target::AttnV).unwrap();
    let pass = Pass {
        n: 3,
        training: true,
        seed: 5,
    };
    let x: Vec<f32> = (0..3 * a.in_features())
        .map(|i| (i as f32 * 0.37).sin())
        .collect();
    let run = |ad: &dyn Adapter| {
        let mut y = vec![0.0; 3 * ad.out_features()];
        let mut saved = vec![0.0; ad.saved_len(3)];
        let mut scratch = vec![0.0; ad.scratch_len(3)];
        ad.forward(pass, &x, &mut y, &mut saved, &mut scratch)
            .unwrap();
        y
    };
    let (ya, yb) = (run(a), run(b));
    assert!(ya.iter().any(|v| *v != 0.0));
    assert_eq!(ya, yb, "same dropout mask after reload");
}

#[test]
fn per_module_ranks_round_trip() {
    let m = tiny_config();
    let mut set = random_set(&m, &cfg(4), 3);
    put_rank(&mut set, &m, 0, Target::AttnV, 2);
    put_rank(&mut set, &m, 1, Target::FfnGate, 6);
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&set, dir.path(), &serde_json::Value::Null).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(ADAPTER_JSON)).unwrap())
            .unwrap();
    assert_eq!(
        meta["rank_pattern"],
        json!({"blk.0.attn_v": 2, "blk.1.ffn_gate": 6})
    );
    let back = load_adapter(dir.path(), &m).unwrap();
    assert_same_sets("per-module ranks", &set, &back);
    assert_eq!(
        back.get(1, Target::FfnGate).unwrap().params()[0].shape,
        vec![6, m.dim]
    );
}

fn err_of(dir: &std::path::Path) -> String {
    load_adapter(dir, &tiny_config()).unwrap_err().to_string()
}

fn assert_has(e: &str, parts: &[&str]) {
    for p in parts {
        assert!(e.contains(p), "error {e:?} lacks {p:?}");
    }
}

/// A directory with a valid adapter.json (rank 4, on attn_q) and the given tensors.
fn handmade(dir: &std::path::Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let c = LoraConfig {
        rank: 4,
        targets: vec![Target::AttnQ],
        ..LoraConfig::default()
    };
    let meta = json!({"format": "edgetune-adapter", "version": 1, "method": "lora",
                      "lora": c, "n_layer": 2});
    std::fs::write(dir.join(ADAPTER_JSON), meta.to_string()).unwrap();
    write_safetensors(&dir.join(ADAPTER_TENSORS), tensors, &[]);
}

#[test]
fn bad_tensors_are_named_with_their_numbers() {
    let d = 256; // tiny: dim 256, q_dim 256
    let a = |r: usize, i: usize| vec![0.01f32; r * i];
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();

    handmade(
        p,
        &[
            ("blk.0.attn_q.lora_A", vec![4, d], a(4, d)),
            ("blk.0.attn_q.lora_B", vec![d, 3], a(d, 3)),
        ],
    );
    assert_has(
        &err_of(p),
        &[
            "blk.0.attn_q.lora_B",
            "rank mismatch",
            "rank 4",
            "rank 3",
            ADAPTER_TENSORS,
        ],
    );

    handmade(
        p,
        &[
            ("blk.0.attn_q.lora_A", vec![4, 300], a(4, 300)),
            ("blk.0.attn_q.lora_B", vec![d, 4], a(d, 4)),
        ],
    );
    assert_has(
        &err_of(p),
        &[
            "blk.0.attn_q.lora_A",
            "300 inputs",
            "256 → 256",
            "another model",
        ],
    );

    handmade(
        p,
        &[
            ("blk.0.attn_q.lora_A", vec![4, d], a(4, d)),
            ("blk.0.attn_q.lora_B", vec![512, 4], a(512, 4)),
        ],
    );
    assert_has(&err_of(p), &["blk.0.attn_q.lora_B", "512 outputs"]);

    handmade(p, &[("blk.0.attn_q.lora_A", vec![4, d], a(4, d))]);
    assert_has(&err_of(p), &["blk.0.attn_q.lora_A", "has no lora_B"]);

    handmade(
        p,
        &[
            ("blk.5.attn_q.lora_A", vec![4, d], a(4, d)),
            ("blk.5.attn_q.lora_B", vec![d, 4], a(d, 4)),
        ],
    );
    assert_has(&err_of(p), &["blk.5.attn_q.lora_A", "layer 5", "2 layers"]);

    handmade(
        p,
        &[
            ("blk.0.attn_q.lora_A", vec![2, d], a(2, d)),
            ("blk.0.attn_q.lora_B", vec![d, 2], a(d, 2)),
        ],
    );
    assert_has(&err_of(p), &["blk.0.attn_q.lora_A", "rank 2", "says 4"]);

    handmade(p, &[("blk.0.q_proj.lora_A", vec![4, d], a(4, d))]);
    assert_has(&err_of(p), &["blk.0.q_proj.lora_A", "unexpected tensor"]);

    let mut nan = a(4, d);
    nan[17] = f32::NAN;
    handmade(
        p,
        &[
            ("blk.0.attn_q.lora_A", vec![4, d], nan),
            ("blk.0.attn_q.lora_B", vec![d, 4], a(d, 4)),
        ],
    );
    assert_has(
        &err_of(p),
        &["blk.0.attn_q.lora_A", "element 17", "not finite"],
    );
}

#[test]
fn bad_metadata_and_other_models_are_refused() {
    let m = tiny_config();
    let set = random_set(&m, &cfg(4), 1);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    save_adapter(&set, p, &json!({})).unwrap();

    // Another model: a different layer count, then a different width.
    let mut other = m.clone();
    other.n_layer = 3;
    let e = load_adapter(p, &other).unwrap_err().to_string();
    assert_has(&e, &[ADAPTER_JSON, "n_layer", "2-layer", "3 layers"]);
    let mut other = m.clone();
    other.dim = 512;
    let e = load_adapter(p, &other).unwrap_err().to_string();
    assert_has(
        &e,
        &[
            "blk.0.attn_q.lora_A",
            "256 inputs",
            "512 → ",
            "another model",
        ],
    );

    let json_path = p.join(ADAPTER_JSON);
    let good = std::fs::read_to_string(&json_path).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        f(&mut v);
        std::fs::write(&json_path, v.to_string()).unwrap();
        err_of(p)
    };
    assert_has(
        &edit(&|v| v["format"] = json!("peft")),
        &["format", "not an edgetune adapter"],
    );
    assert_has(
        &edit(&|v| v["version"] = json!(2)),
        &["version 2", "reads version 1"],
    );
    assert_has(&edit(&|v| v["method"] = json!("dora")), &["method", "dora"]);
    assert_has(
        &edit(&|v| v["lora"]["rank"] = json!(0)),
        &["lora", "rank must be at least 1"],
    );
    std::fs::write(&json_path, "{not json").unwrap();
    assert_has(&err_of(p), &[ADAPTER_JSON, "not valid JSON"]);

    // Reserved keys in the caller's metadata.
    let e = save_adapter(&set, p, &json!({"lora": 1}))
        .unwrap_err()
        .to_string();
    assert_has(&e, &["`lora`", "reserved"]);
    let e = save_adapter(&set, p, &json!([1])).unwrap_err().to_string();
    assert_has(&e, &["JSON object"]);
}

#[test]
fn a_safetensors_write_error_is_displayed_with_the_path() {
    let m = tiny_config();
    let set = random_set(&m, &cfg(4), 7);
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ckpt");
    // The temporary file's name is taken by a directory: the safetensors write fails.
    let tmp = ck.join(format!(".{ADAPTER_TENSORS}.tmp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let e = save_adapter(&set, &ck, &json!({})).unwrap_err().to_string();
    assert!(
        e.contains(&ck.join(ADAPTER_TENSORS).display().to_string()),
        "{e}"
    );
    assert!(
        !e.contains("IoError") && !e.contains("Os {") && e.contains("os error"),
        "{e}"
    );
}
