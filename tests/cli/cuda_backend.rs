//! `--backend cpu|cuda|auto` through the CLI on this machine, with or without the `cuda` feature
//! and with or without a driver: `cuda` either runs on a device or fails with a clear message
//! (exit status 1, no panic), `auto` always produces the CPU's answer when it falls back, and
//! `train --backend cuda` runs the device training step where there is a device and otherwise
//! fails with the same clear message.
//!
//! `scripts/test.sh` also runs this file with `--features cuda`, so the driverless path of the
//! cuda-featured binary is exercised (libcuda absent → the NO_DRIVER message, not a panic).

use std::process::Output;

use crate::cli_support::edgetune;
use crate::tiny;

/// Whether this binary can use a CUDA device: `--backend cuda` succeeds exactly then.
fn cuda_usable(model: &str) -> bool {
    edgetune(&[
        "perplexity",
        "--model",
        model,
        "--tokens",
        "1,2",
        "--backend",
        "cuda",
    ])
    .status
    .success()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cuda_without_a_device_fails_cleanly_and_auto_falls_back_to_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), "q8_0", &["--seed", "5"]);
    let ppl = |backend: &str| {
        edgetune(&[
            "perplexity",
            "--model",
            &model,
            "--tokens",
            "1,5,9,13,2,7",
            "--json",
            "--backend",
            backend,
        ])
    };
    let cpu = ppl("cpu");
    assert!(cpu.status.success(), "{}", stderr(&cpu));
    let cpu_json: serde_json::Value = serde_json::from_slice(&cpu.stdout).unwrap();
    let cuda = ppl("cuda");
    if cuda.status.success() {
        // A device: it computes the CPU's perplexity (to the kernels' f32 tolerance), and
        // `auto` picks it, with no fallback notice.
        let cuda_json: serde_json::Value = serde_json::from_slice(&cuda.stdout).unwrap();
        let (c, g) = (
            cpu_json["perplexity"].as_f64().unwrap(),
            cuda_json["perplexity"].as_f64().unwrap(),
        );
        assert!((c - g).abs() <= 1e-3 * c, "perplexity: cpu {c}, cuda {g}");
        let auto = ppl("auto");
        assert!(auto.status.success(), "{}", stderr(&auto));
        assert!(
            !stderr(&auto).contains("using the CPU"),
            "{}",
            stderr(&auto)
        );
        let auto_json: serde_json::Value = serde_json::from_slice(&auto.stdout).unwrap();
        assert_eq!(auto_json, cuda_json);
        return;
    }
    // A clear one-line error, exit status 1, never a panic (101).
    let err = stderr(&cuda);
    assert_eq!(cuda.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("edgetune: error:"), "{err}");
    assert!(
        err.contains("--backend cpu")
            && (err.contains("no CUDA driver found")
                || err.contains("without the `cuda` feature")
                || err.contains("cuda:")),
        "{err}"
    );
    #[cfg(feature = "cuda")]
    if !edgetune::backend::cuda::driver_present() {
        // The CLI was built with the feature too: without libcuda the message is the driver one.
        assert!(err.contains(edgetune::backend::cuda::NO_DRIVER), "{err}");
    }
    #[cfg(not(feature = "cuda"))]
    assert!(err.contains("without the `cuda` feature"), "{err}");
    // auto: the CPU, with a notice, and the same numbers as --backend cpu.
    let auto = ppl("auto");
    assert!(auto.status.success(), "{}", stderr(&auto));
    assert!(
        stderr(&auto).contains("notice: --backend auto: using the CPU"),
        "{}",
        stderr(&auto)
    );
    let auto_json: serde_json::Value = serde_json::from_slice(&auto.stdout).unwrap();
    assert_eq!(auto_json, cpu_json);
}

#[test]
fn generate_honours_the_backend_flag() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), "q8_0", &["--seed", "5"]);
    let gen_ = |backend: &str| {
        edgetune(&[
            "generate",
            "--model",
            &model,
            "--prompt",
            "Sensor 3 reads",
            "--max-tokens",
            "6",
            "--backend",
            backend,
            "--weights",
            "upload",
        ])
    };
    let cpu = gen_("cpu");
    assert!(cpu.status.success(), "{}", stderr(&cpu));
    let cuda = gen_("cuda");
    if cuda_usable(&model) {
        // A device: `cuda` generates, and `auto` runs on the device too (the same text).
        assert!(cuda.status.success(), "{}", stderr(&cuda));
        assert!(!cuda.stdout.is_empty());
        let auto = gen_("auto");
        assert!(auto.status.success(), "{}", stderr(&auto));
        assert_eq!(auto.stdout, cuda.stdout);
        return;
    }
    assert_eq!(cuda.status.code(), Some(1), "{}", stderr(&cuda));
    assert!(!stderr(&cuda).contains("panicked"));
    let auto = gen_("auto");
    assert!(auto.status.success(), "{}", stderr(&auto));
    // Greedy decoding: the CPU fallback writes the CPU's text.
    assert_eq!(auto.stdout, cpu.stdout);
}

#[test]
fn training_on_cuda_runs_on_a_device_or_fails_cleanly_and_auto_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), "q8_0", &["--seed", "5"]);
    let usable = cuda_usable(&model);
    let bench = |backend: &str| {
        edgetune(&[
            "bench",
            "train",
            "--model",
            &model,
            "--seq-len",
            "8",
            "--rank",
            "2",
            "--steps",
            "1",
            "--json",
            "--backend",
            backend,
        ])
    };
    let cuda = bench("cuda");
    let auto = bench("auto");
    assert!(auto.status.success(), "{}", stderr(&auto));
    let j: serde_json::Value = serde_json::from_slice(&auto.stdout).unwrap();
    assert_eq!(j["steps"], 1);
    if usable {
        assert!(cuda.status.success(), "{}", stderr(&cuda));
        let j: serde_json::Value = serde_json::from_slice(&cuda.stdout).unwrap();
        assert_eq!(
            (j["steps"].as_u64(), j["backend"].as_str()),
            (Some(1), Some("cuda"))
        );
        return;
    }
    // No device: `cuda` says why (no driver, or a binary built without the feature).
    assert_eq!(cuda.status.code(), Some(1), "{}", stderr(&cuda));
    let why = stderr(&cuda);
    // (no driver: NO_DRIVER; no feature: NOT_BUILT; a driver without a device: its error).
    assert!(why.contains("CUDA") || why.contains("cuda"), "{why}");
    assert!(stderr(&auto).contains("notice:"), "{}", stderr(&auto));
    assert_eq!(j["backend"], "cpu");
    // `train` fails before reading anything (the data path does not even exist).
    let train = edgetune(&[
        "train",
        "--model",
        &model,
        "--data",
        "/nonexistent.jsonl",
        "--out",
        dir.path().join("run").to_str().unwrap(),
        "--backend",
        "cuda",
    ]);
    assert_eq!(train.status.code(), Some(1), "{}", stderr(&train));
    assert!(
        !stderr(&train).contains("nonexistent"),
        "{}",
        stderr(&train)
    );
    assert_eq!(
        stderr(&train).contains("no CUDA driver found"),
        why.contains("no CUDA driver found")
    );
}

#[test]
fn unknown_backend_names_are_rejected_by_the_parser() {
    let out = edgetune(&[
        "perplexity",
        "--model",
        "x.gguf",
        "--tokens",
        "1,2",
        "--backend",
        "gpu",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("gpu"), "{}", stderr(&out));
}
