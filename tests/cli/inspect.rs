//! End to end: `edgetune testmodel` writes a Q4_K_M-style file (types mixed per tensor) and
//! `edgetune inspect` reports it, as text, as JSON, and as a dequantized `.npy` tensor.

use std::path::Path;
use std::process::Command;

use edgetune::gguf::GgufFile;
use edgetune::npy;

use crate::cli_support::ok;

fn tiny_q4km(dir: &Path) -> String {
    let path = dir.join("tiny.gguf");
    crate::cli_support::write_tiny(&path, "q4_k_m", &["--seed", "3"]);
    path.to_str().unwrap().to_owned()
}

#[test]
fn inspect_reports_a_mixed_type_file_as_json_and_text() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny_q4km(dir.path());
    let json: serde_json::Value =
        serde_json::from_slice(&ok(&["inspect", &file, "--json"]).stdout).unwrap();
    assert_eq!(json["architecture"], "llama");
    assert_eq!(json["hyperparameters"]["llama.block_count"], 2);
    assert_eq!(json["tokenizer"]["model"], "gpt2");
    assert_eq!(json["tokenizer"]["tokens"], 261);
    let tensors = json["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 2 * 9 + 4);
    let type_of = |name: &str| {
        tensors
            .iter()
            .find(|t| t["name"] == name)
            .map(|t| t["type"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(type_of("blk.0.attn_q.weight"), "Q4_K");
    assert_eq!(type_of("blk.1.attn_v.weight"), "Q6_K");
    assert_eq!(type_of("output.weight"), "Q6_K");
    assert_eq!(type_of("output_norm.weight"), "F32");
    let totals: Vec<&str> = json["totals_by_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(totals, ["F32", "Q4_K", "Q6_K"]);
    // Totals add up to the tensors, and Q4_K stores 4.5 bits per weight.
    let sum: u64 = tensors.iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
    assert_eq!(json["total_tensor_bytes"].as_u64(), Some(sum));
    let q4k = &json["totals_by_type"][1];
    assert_eq!(q4k["bits_per_weight"].as_f64(), Some(4.5));

    let text = String::from_utf8(ok(&["inspect", &file]).stdout).unwrap();
    for needle in [
        "architecture  llama",
        "llama.embedding_length",
        "blk.1.ffn_down.weight",
        "Q6_K",
        "totals by type",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
}

#[test]
fn inspect_dequantizes_a_tensor_to_npy() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny_q4km(dir.path());
    let f = GgufFile::open(&file).unwrap();
    for name in [
        "blk.1.ffn_down.weight",
        "token_embd.weight",
        "output_norm.weight",
    ] {
        let out = dir.path().join("t.npy");
        ok(&[
            "inspect",
            &file,
            "--tensor",
            name,
            "--dequantize",
            out.to_str().unwrap(),
        ]);
        let (shape, values) = npy::read_f32(&out).unwrap();
        let (info, data) = f.tensor_by_name(name).unwrap();
        let want_shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        assert_eq!(shape, want_shape, "{name}");
        let mut want = vec![0.0f32; info.n_elements as usize];
        (info.ty.traits().dequantize_ref)(data, &mut want);
        assert_eq!(values, want, "{name}");
    }
}

#[test]
fn inspect_errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edgetune"))
        .args(["inspect", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.gguf") && err.contains("byte"), "{err}");
    let file = tiny_q4km(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_edgetune"))
        .args([
            "inspect",
            &file,
            "--tensor",
            "nope",
            "--dequantize",
            "x.npy",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.gguf");
    let o = Command::new(env!("CARGO_BIN_EXE_edgetune"))
        .args(["testmodel", "--preset", "tiny", "--type", "q8_0", "--out"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(o.status.success());
    // The reader goes away before the command writes: its write hits a closed pipe.
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgetune"))
        .arg("inspect")
        .arg(&model)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {err}",
        out.status
    );
}
