//! Config from metadata and weight validation: the tiny model's values, and broken files
//! (missing tensor, wrong shape, wrong type, unsupported architecture, bad or missing keys).

use crate::model_support::{Edit, rewrite, tiny};
use edgetune::gguf::{Array, GgufFile, Value};
use edgetune::model::{Llama, LlamaConfig};
use edgetune::quant::GgmlType;
use edgetune::testmodel::{TINY, WeightTypes};

fn load_err(edit: Edit) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny(
        dir.path(),
        "src.gguf",
        WeightTypes::Uniform(GgmlType::F32),
        1,
    );
    let dst = dir.path().join("broken.gguf");
    rewrite(&src, &dst, &edit);
    let f = GgufFile::open(&dst).unwrap();
    let err = match Llama::load(&f) {
        Ok(_) => panic!("loaded a broken file"),
        Err(e) => e.to_string(),
    };
    (err, dst.display().to_string())
}

#[test]
fn config_of_the_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let p = tiny(dir.path(), "t.gguf", WeightTypes::Q4KM, 3);
    let f = GgufFile::open(&p).unwrap();
    let c = LlamaConfig::from_gguf(&f).unwrap();
    let want = LlamaConfig {
        n_layer: TINY.n_layer,
        dim: TINY.dim,
        n_head: TINY.n_head,
        n_head_kv: TINY.n_head_kv,
        head_dim: TINY.dim / TINY.n_head,
        ffn: TINY.ffn,
        n_vocab: 256 + 5,
        context_length: TINY.context,
        rope_base: TINY.rope_base,
        rms_eps: TINY.rms_eps,
        rope_dim: TINY.dim / TINY.n_head,
    };
    assert_eq!(c, want);
    let m = Llama::load(&f).unwrap();
    assert!(!m.weights().tied_output);
    assert_eq!(m.weights().rope_freqs.as_ref().map(Vec::len), Some(32));
    assert_eq!(m.weights().layers[1].ffn_down.ty, GgmlType::Q6_K); // the Q4_K_M mix per tensor
    assert_eq!(m.weights().layers[0].attn_q.ty, GgmlType::Q4_K);
}

#[test]
fn vocab_size_falls_back_to_the_token_list_then_token_embd() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny(
        dir.path(),
        "src.gguf",
        WeightTypes::Uniform(GgmlType::F32),
        1,
    );
    let no_key = dir.path().join("a.gguf");
    rewrite(
        &src,
        &no_key,
        &Edit {
            drop_keys: vec!["llama.vocab_size"],
            ..Edit::default()
        },
    );
    let f = GgufFile::open(&no_key).unwrap();
    assert_eq!(LlamaConfig::from_gguf(&f).unwrap().n_vocab, 261);
    let no_list = dir.path().join("b.gguf");
    let edit = Edit {
        drop_keys: vec!["llama.vocab_size", "tokenizer.ggml.tokens"],
        ..Edit::default()
    };
    rewrite(&src, &no_list, &edit);
    let f = GgufFile::open(&no_list).unwrap();
    assert_eq!(LlamaConfig::from_gguf(&f).unwrap().n_vocab, 261);
    // A token list of another length wins over token_embd, and then the shapes disagree.
    let short = dir.path().join("c.gguf");
    let edit = Edit {
        drop_keys: vec!["llama.vocab_size"],
        set_keys: vec![(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String((0..200).map(|i| format!("t{i}")).collect())),
        )],
        ..Edit::default()
    };
    rewrite(&src, &short, &edit);
    let f = GgufFile::open(&short).unwrap();
    let e = Llama::load(&f).err().unwrap().to_string();
    assert!(
        e.contains("token_embd.weight") && e.contains("expected [256, 200], found [256, 261]"),
        "{e}"
    );
}

#[test]
fn wrong_shape_names_file_tensor_and_both_shapes() {
    let (e, path) = load_err(Edit {
        reshape: vec![("blk.1.ffn_gate.weight", vec![256, 384], GgmlType::F32)],
        ..Edit::default()
    });
    assert_eq!(
        e,
        format!("{path}: tensor `blk.1.ffn_gate.weight`: expected [256, 512], found [256, 384]")
    );
}

#[test]
fn missing_tensor() {
    let (e, path) = load_err(Edit {
        drop_tensors: vec!["blk.0.attn_k.weight"],
        ..Edit::default()
    });
    assert_eq!(
        e,
        format!("{path}: tensor `blk.0.attn_k.weight`: missing (expected shape [256, 128])")
    );
    let (e, _) = load_err(Edit {
        drop_tensors: vec!["output_norm.weight"],
        ..Edit::default()
    });
    assert!(
        e.contains("output_norm.weight") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn norms_and_rope_freqs_must_be_f32_of_the_right_length() {
    let (e, _) = load_err(Edit {
        reshape: vec![("blk.1.attn_norm.weight", vec![256], GgmlType::F16)],
        ..Edit::default()
    });
    assert!(
        e.contains("blk.1.attn_norm.weight") && e.contains("expected type F32, found F16"),
        "{e}"
    );
    let (e, _) = load_err(Edit {
        reshape: vec![("rope_freqs.weight", vec![64], GgmlType::F32)],
        ..Edit::default()
    });
    assert!(
        e.contains("rope_freqs.weight") && e.contains("expected [32], found [64]"),
        "{e}"
    );
    let (e, _) = load_err(Edit {
        set_f32: vec![("rope_freqs.weight", vec![0.0; 32])],
        ..Edit::default()
    });
    assert!(
        e.contains("rope_freqs.weight") && e.contains("not a positive"),
        "{e}"
    );
}

#[test]
fn unsupported_architecture() {
    let (e, path) = load_err(Edit {
        set_keys: vec![("general.architecture", Value::String("gpt2".into()))],
        ..Edit::default()
    });
    assert_eq!(
        e,
        format!(
            "{path}: metadata key `general.architecture`: architecture `gpt2` is not supported \
             (edgetune runs `llama`)"
        )
    );
}

#[test]
fn bad_or_missing_hyperparameters() {
    let (e, _) = load_err(Edit {
        drop_keys: vec!["llama.block_count"],
        ..Edit::default()
    });
    assert!(
        e.contains("llama.block_count") && e.contains("missing"),
        "{e}"
    );
    let (e, _) = load_err(Edit {
        set_keys: vec![("llama.attention.head_count_kv", Value::U32(3))],
        ..Edit::default()
    });
    assert!(e.contains("3 KV heads do not divide 4 query heads"), "{e}");
    let (e, _) = load_err(Edit {
        set_keys: vec![("llama.attention.layer_norm_rms_epsilon", Value::F32(-1.0))],
        ..Edit::default()
    });
    assert!(
        e.contains("layer_norm_rms_epsilon") && e.contains("not a positive"),
        "{e}"
    );
    // Without head_count_kv the model is multi-head (kv = 4 heads): attn_k's shape then disagrees.
    let (e, _) = load_err(Edit {
        drop_keys: vec!["llama.attention.head_count_kv"],
        ..Edit::default()
    });
    assert!(
        e.contains("`blk.0.attn_k.weight`: expected [256, 256], found [256, 128]"),
        "{e}"
    );
}
