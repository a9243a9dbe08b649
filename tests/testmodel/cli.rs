//! `edgetune testmodel` end to end: what it reports, llama-quantize's per-tensor types versus
//! `--pure`, and errors for unknown presets and unreadable tokenizers.

use crate::cli_support::edgetune;
use edgetune::gguf::GgufFile;
use edgetune::quant::GgmlType;
use edgetune::testmodel::TINY;

#[test]
fn writes_tiny_and_reports_size_and_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.gguf");
    let p = path.to_str().unwrap();
    let out = edgetune(&[
        "testmodel",
        "--preset",
        "tiny",
        "--type",
        "q4_0",
        "--out",
        p,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = GgufFile::open(&path).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{} bytes", f.file_size())),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{} parameters", TINY.n_params())),
        "{stderr}"
    );
    // llama-quantize puts the output projection in Q6_K; --pure does not.
    assert_eq!(f.tensor("output.weight").unwrap().ty, GgmlType::Q6_K);
    assert_eq!(
        f.tensor("blk.1.ffn_down.weight").unwrap().ty,
        GgmlType::Q4_0
    );
    drop(f);
    let out = edgetune(&[
        "testmodel",
        "--type",
        "q4_0",
        "--pure",
        "--out",
        p,
        "--seed",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensor("output.weight").unwrap().ty, GgmlType::Q4_0);
}

#[test]
fn unknown_preset_and_unreadable_tokenizer_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("x.gguf");
    let p = out_path.to_str().unwrap();
    let out = edgetune(&["testmodel", "--preset", "llama-9", "--out", p]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("llama-3.1-8b"),
        "lists the known presets: {stderr}"
    );
    let missing = dir.path().join("no-such-tokenizer.json");
    let out = edgetune(&[
        "testmodel",
        "--tokenizer",
        missing.to_str().unwrap(),
        "--out",
        p,
    ]);
    assert!(!out.status.success());
    assert!(!out_path.exists(), "nothing written on error");
}

/// `--layers N` overrides the preset's depth (the other shapes stay); 0 is refused.
#[test]
fn layers_overrides_the_presets_depth() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t3.gguf");
    let p = path.to_str().unwrap();
    let out = edgetune(&[
        "testmodel",
        "--preset",
        "tiny",
        "--layers",
        "3",
        "--type",
        "q8_0",
        "--out",
        p,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = edgetune::model::LlamaConfig::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    assert_eq!(cfg.n_layer, 3);
    assert_eq!(cfg.dim, TINY.dim);
    let zero = dir.path().join("t0.gguf");
    let out = edgetune(&[
        "testmodel",
        "--preset",
        "tiny",
        "--layers",
        "0",
        "--out",
        zero.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--layers"));
}
