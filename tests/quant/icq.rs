//! ICQ for Q4_1 (docs/METHODS.md#ir-qlora-icq) and `edgetune quantize`: the search against an
//! independent brute-force statement of it, the parallel path against the scalar reference,
//! code entropy ≥ ggml's plain rule on a gaussian tensor, dequantization within the Q4_1 error
//! bound, and whole files (a test model and a gaussian tensor) that our reader and gguf-py
//! both read, with the model still loading and metadata copied.

use std::path::Path;
use std::process::Command;

use crate::python_support::run_script;
use edgetune::export::requantize::{FILE_TYPE_KEY, ICQ_KEY, QuantizeOptions, quantize_gguf};
use edgetune::gguf::{GgufFile, GgufWriter, Value};
use edgetune::model::{LlamaConfig, LlamaWeights};
use edgetune::npy;
use edgetune::quant::icq::{self, IcqParams, SIGMA, block_codes, code_entropy};
use edgetune::quant::q4_1::{self, BlockQ4_1};
use edgetune::quant::{self, GgmlType};
use edgetune::testmodel::{self, TINY, WeightTypes};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// What this module needs from the reference Python.
const NEEDS_PY: &str = "gguf-py is";

/// i.i.d. N(0, 1) by Box–Muller.
fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

fn f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// The search written out directly from the spec, in f64 with its own histogram: returns the
/// winning block's entropy and (d, m) as f16-rounded f32.
fn brute_force(w: &[f32], p: &IcqParams) -> (f64, f32, f32) {
    let entropy = |d: f32, m: f32| -> f64 {
        let mut hist = [0u32; 16];
        for &v in w {
            let q = if d == 0.0 {
                0.0
            } else {
                ((v - m) / d + 0.5).floor()
            };
            hist[q.clamp(0.0, 15.0) as usize] += 1;
        }
        hist.iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / 32.0;
                -p * p.log2()
            })
            .sum()
    };
    // Candidate 0: the plain block exactly as ggml's quantizer writes it.
    let mut plain = [0u8; 20];
    q4_1::quantize_ref(w, &mut plain);
    let pb: BlockQ4_1 = bytemuck::cast(plain);
    let plain_h = code_entropy(&block_codes(&pb));
    let d0 = half::f16::from_le_bytes(pb.d).to_f32();
    let m0 = half::f16::from_le_bytes(pb.m).to_f32();
    let mut best = (plain_h, d0, m0);
    let mut s: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    s.sort_by(f64::total_cmp);
    let tau0 = s[15];
    let a = s.iter().map(|v| (v - tau0).abs()).fold(0.0, f64::max);
    for k in 0..=2 * p.n {
        let f = -(p.lambda as f64) * SIGMA + (p.lambda as f64) * SIGMA * k as f64 / p.n as f64;
        let tau = tau0 + f * a;
        let r = s.iter().map(|v| (v - tau).abs()).fold(0.0, f64::max);
        let (d, m) = (f16((2.0 * r / 15.0) as f32), f16((tau - r) as f32));
        let h = entropy(d, m);
        if h > best.0 {
            best = (h, d, m);
        }
    }
    best
}

#[test]
fn search_matches_a_brute_force_statement_of_the_spec() {
    let p = IcqParams { lambda: 0.1, n: 20 };
    let mut moved = 0;
    for seed in 0..64 {
        // Gaussian blocks, some skewed by a squared term so the median and mid-range differ.
        let mut w = gaussian(32, seed);
        if seed % 2 == 1 {
            w.iter_mut().for_each(|v| *v = *v * *v - 0.5);
        }
        let mut b = BlockQ4_1 {
            d: [0; 2],
            m: [0; 2],
            qs: [0; 16],
        };
        let c = icq::quantize_block_ref(&w, &mut b, &p);
        let (h, d, m) = brute_force(&w, &p);
        assert!(
            (c.entropy - h).abs() < 1e-12,
            "block {seed}: {} vs {h}",
            c.entropy
        );
        assert_eq!(half::f16::from_le_bytes(b.d).to_f32(), d, "block {seed}: d");
        assert_eq!(half::f16::from_le_bytes(b.m).to_f32(), m, "block {seed}: m");
        assert!((code_entropy(&block_codes(&b)) - h).abs() < 1e-12);
        moved += c.offset.is_some() as usize;
    }
    eprintln!("ICQ moved {moved} of 64 blocks off the plain grid");
}

#[test]
fn parallel_path_is_bit_identical_to_the_reference() {
    let w = gaussian(32 * 300, 7);
    let p = IcqParams::default();
    let (mut a, mut b) = (vec![0u8; 300 * 20], vec![0u8; 300 * 20]);
    let ca = icq::quantize_ref(&w, &mut a, &p);
    let cb = icq::quantize(&w, &mut b, &p);
    assert_eq!(a, b);
    assert_eq!(ca, cb);
}

/// `|deq − w| ≤ d/2` up to the f16 rounding of `d` and `m` (ICQ's grids cover the block).
fn assert_within_q4_1_error(w: &[f32], q: &[u8]) {
    let mut back = vec![0.0f32; w.len()];
    q4_1::dequantize_ref(q, &mut back);
    for (k, (blk, wb)) in q.chunks_exact(20).zip(w.chunks_exact(32)).enumerate() {
        let b: BlockQ4_1 = bytemuck::cast::<[u8; 20], _>(blk.try_into().unwrap());
        let d = half::f16::from_le_bytes(b.d).to_f32() as f64;
        let m = half::f16::from_le_bytes(b.m).to_f32() as f64;
        let tol = 0.5 * d + (m.abs() + 15.0 * d) * 2f64.powi(-10) + 1e-6;
        for (j, &v) in wb.iter().enumerate() {
            let e = (back[k * 32 + j] as f64 - v as f64).abs();
            assert!(e <= tol, "block {k} element {j}: error {e} > {tol} (d {d})");
        }
    }
}

#[test]
fn icq_entropy_is_at_least_plain_on_a_gaussian_tensor_and_errors_are_bounded() {
    let w = gaussian(32 * 2048, 11);
    let nb = w.len() / 32;
    let (mut plain, mut icq_q) = (vec![0u8; nb * 20], vec![0u8; nb * 20]);
    quant::quantize(GgmlType::Q4_1, &w, &mut plain).unwrap();
    icq::quantize(&w, &mut icq_q, &IcqParams::default());
    for (k, (p, i)) in plain
        .chunks_exact(20)
        .zip(icq_q.chunks_exact(20))
        .enumerate()
    {
        let hp = code_entropy(&block_codes(&bytemuck::cast::<[u8; 20], _>(
            p.try_into().unwrap(),
        )));
        let hi = code_entropy(&block_codes(&bytemuck::cast::<[u8; 20], _>(
            i.try_into().unwrap(),
        )));
        assert!(hi >= hp, "block {k}: ICQ {hi} < plain {hp}");
    }
    let (hp, hi) = (
        icq::mean_code_entropy(&plain),
        icq::mean_code_entropy(&icq_q),
    );
    assert!(hp > 2.0 && hi <= 4.0, "entropies {hp} {hi}");
    assert_within_q4_1_error(&w, &icq_q);
    assert_within_q4_1_error(&w, &plain);
    let rms = |q: &[u8]| {
        let mut back = vec![0.0f32; w.len()];
        q4_1::dequantize_ref(q, &mut back);
        let s: f64 = back
            .iter()
            .zip(&w)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        (s / w.len() as f64).sqrt()
    };
    eprintln!(
        "gaussian: mean code entropy plain {hp:.4} ICQ {hi:.4} bits; rms error plain {:.4e} ICQ {:.4e}",
        rms(&plain),
        rms(&icq_q)
    );
}

/// gguf-py's view of `path`: its meta.json, and each tensor's dequantization under `dir`.
fn gguf_py_read(path: &Path, dir: &Path) -> serde_json::Value {
    run_script(NEEDS_PY, "gguf_py_read.py", &[path, dir]);
    serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap()
}

/// A small GGUF: a gaussian `[64, 256]` F32 matrix, an F16 one, and a 1-D F32 vector.
fn write_gaussian_file(path: &Path) -> Vec<f32> {
    let w = gaussian(64 * 256, 3);
    let w16: Vec<u8> = w
        .iter()
        .flat_map(|&v| half::f16::from_f32(v * 0.02).to_le_bytes())
        .collect();
    let norm = gaussian(256, 4);
    let mut g = GgufWriter::new(32);
    g.add_kv("general.architecture", Value::String("llama".into()))
        .unwrap();
    g.add_kv(FILE_TYPE_KEY, Value::U32(0)).unwrap();
    g.add_tensor("a.weight", &[256, 64], GgmlType::F32).unwrap();
    g.add_tensor("b.weight", &[256, 64], GgmlType::F16).unwrap();
    g.add_tensor("n.weight", &[256], GgmlType::F32).unwrap();
    let bytes = [
        bytemuck::cast_slice::<f32, u8>(&w).to_vec(),
        w16,
        bytemuck::cast_slice::<f32, u8>(&norm).to_vec(),
    ];
    g.write_to_path(path, |i, _, sink| sink.write_all(&bytes[i]))
        .unwrap();
    w
}

#[test]
fn quantized_file_reads_in_ours_and_gguf_py_with_icq_entropy_at_least_plain() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.gguf");
    let w = write_gaussian_file(&src);
    let input = GgufFile::open(&src).unwrap();
    let mut reports = Vec::new();
    for icq_on in [false, true] {
        let out = dir
            .path()
            .join(if icq_on { "icq.gguf" } else { "plain.gguf" });
        let opts = QuantizeOptions {
            ty: GgmlType::Q4_1,
            icq: icq_on.then(IcqParams::default),
        };
        let mut seen = 0;
        let r = quantize_gguf(&input, &out, opts, &mut |_| seen += 1).unwrap();
        assert_eq!((r.quantized.len(), r.copied, seen), (2, 1, 2));
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(f.metadata().get(FILE_TYPE_KEY), Some(&Value::U32(3)));
        assert_eq!(f.metadata().get(ICQ_KEY), Some(&Value::Bool(icq_on)));
        assert_eq!(
            f.metadata().get("general.architecture"),
            Some(&Value::String("llama".into()))
        );
        let (a, adata) = f.tensor_by_name("a.weight").unwrap();
        assert_eq!((a.ty, a.dims.clone()), (GgmlType::Q4_1, vec![256, 64]));
        assert_within_q4_1_error(&w, adata);
        let (n, ndata) = f.tensor_by_name("n.weight").unwrap();
        assert_eq!(n.ty, GgmlType::F32);
        assert_eq!(ndata, input.tensor_by_name("n.weight").unwrap().1);
        // The reported error is the one the file holds.
        let mut back = vec![0.0f32; w.len()];
        quant::dequantize(GgmlType::Q4_1, adata, &mut back).unwrap();
        let rms = (back
            .iter()
            .zip(&w)
            .map(|(p, q)| ((p - q) as f64).powi(2))
            .sum::<f64>()
            / w.len() as f64)
            .sqrt();
        let ra = &r.quantized[0];
        assert_eq!(ra.name, "a.weight");
        assert!(
            (ra.rms_error - rms).abs() <= 1e-9 * rms.max(1e-30),
            "{ra:?} vs {rms}"
        );
        assert!((ra.mean_entropy.unwrap() - icq::mean_code_entropy(adata)).abs() < 1e-9);

        // gguf-py reads the same shapes and types and dequantizes to our values.
        let pydir = dir.path().join(if icq_on { "py_icq" } else { "py_plain" });
        std::fs::create_dir_all(&pydir).unwrap();
        let meta = gguf_py_read(&out, &pydir);
        assert_eq!(meta["fields"][FILE_TYPE_KEY]["value"], 3);
        for t in meta["tensors"].as_array().unwrap() {
            let name = t["name"].as_str().unwrap();
            let info = f.tensor(name).unwrap();
            assert_eq!(t["type"], info.ty.name(), "{name}");
            let (_, theirs) = npy::read_f32(pydir.join(format!("{name}.npy"))).unwrap();
            let mut mine = vec![0.0f32; theirs.len()];
            quant::dequantize(info.ty, f.tensor_data(info), &mut mine).unwrap();
            assert!(
                mine.iter()
                    .zip(&theirs)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}: gguf-py dequantizes differently"
            );
        }
        reports.push(r);
    }
    let (plain, icq_r) = (&reports[0].quantized[0], &reports[1].quantized[0]);
    assert!(icq_r.mean_entropy.unwrap() >= plain.mean_entropy.unwrap());
    eprintln!(
        "a.weight: entropy plain {:.4} ICQ {:.4} (moved {:?}/{} blocks); rms error plain {:.4e} \
         ICQ {:.4e}",
        plain.mean_entropy.unwrap(),
        icq_r.mean_entropy.unwrap(),
        icq_r.icq_moved_blocks,
        icq_r.blocks,
        plain.rms_error,
        icq_r.rms_error
    );
}

#[test]
fn quantized_test_model_still_loads_and_bad_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("f32.gguf");
    testmodel::write_test_model(&TINY, WeightTypes::parse("f32").unwrap(), 5, &src).unwrap();
    let input = GgufFile::open(&src).unwrap();
    let out = dir.path().join("q.gguf");
    let opts = QuantizeOptions {
        ty: GgmlType::Q4_1,
        icq: Some(IcqParams { lambda: 0.1, n: 10 }),
    };
    let r = quantize_gguf(&input, &out, opts, &mut |_| {}).unwrap();
    let n2d = input.tensors().iter().filter(|t| t.dims.len() == 2).count();
    assert_eq!(r.quantized.len(), n2d);
    let f = GgufFile::open(&out).unwrap();
    let cfg = LlamaConfig::from_gguf(&f).unwrap();
    LlamaWeights::from_gguf(&f, &cfg).unwrap();
    assert_eq!(f.tensor("blk.0.attn_q.weight").unwrap().ty, GgmlType::Q4_1);

    // ICQ needs Q4_1's offset; the output cannot overwrite the input.
    let bad = QuantizeOptions {
        ty: GgmlType::Q4_0,
        icq: Some(IcqParams::default()),
    };
    let e = quantize_gguf(&input, &dir.path().join("x.gguf"), bad, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("q4_1"), "{e}");
    let e = quantize_gguf(&input, &src, opts, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("overwrite"), "{e}");
}

#[test]
fn cli_quantize_icq_writes_the_file_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.gguf");
    write_gaussian_file(&src);
    let out = dir.path().join("icq.gguf");
    let run = Command::new(env!("CARGO_BIN_EXE_edgetune"))
        .args(["quantize", "--icq", "--type", "q4_1", "--json", "--in"])
        .arg(&src)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["icq"], true);
    assert_eq!(report["quantized"].as_array().unwrap().len(), 2);
    assert_eq!(report["copied"], 1);
    let f = GgufFile::open(&out).unwrap();
    let (a, data) = f.tensor_by_name("a.weight").unwrap();
    assert_eq!(a.ty, GgmlType::Q4_1);
    let h = report["quantized"][0]["mean_entropy"].as_f64().unwrap();
    assert!((h - icq::mean_code_entropy(data)).abs() < 1e-9);
    // ICQ with a type that has no offset is refused, naming the fix.
    let bad = Command::new(env!("CARGO_BIN_EXE_edgetune"))
        .args(["quantize", "--icq", "--type", "q8_0", "--in"])
        .arg(&src)
        .arg("--out")
        .arg(dir.path().join("bad.gguf"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("q4_1"));
}

#[test]
fn cli_quantize_refuses_an_architecture_edgetune_does_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("qwen.gguf");
    let mut g = GgufWriter::new(32);
    g.add_kv("general.architecture", Value::String("qwen2".into()))
        .unwrap();
    g.add_tensor("a.weight", &[256, 64], GgmlType::F32).unwrap();
    let w = gaussian(64 * 256, 5);
    g.write_to_path(&src, |_, _, sink| {
        sink.write_all(bytemuck::cast_slice::<f32, u8>(&w))
    })
    .unwrap();
    let out = dir.path().join("q.gguf");
    let run = Command::new(env!("CARGO_BIN_EXE_edgetune"))
        .args(["quantize", "--type", "q4_1", "--in"])
        .arg(&src)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("qwen.gguf") && err.contains("`qwen2` is not supported"),
        "{err}"
    );
    assert!(!out.exists());
}
