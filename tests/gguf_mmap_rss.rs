//! Opening a large GGUF maps it without reading it: RSS grows by the pages touched, not by the
//! file size. Alone in its own test binary so no other test's allocations disturb the numbers.

use edgetune::gguf::{Array, GgufFile, GgufWriter, Value};
use edgetune::quant::GgmlType;

/// Resident set size of this process in bytes, from /proc/self/status (VmRSS, in kB).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

const MIB: u64 = 1 << 20;

#[test]
fn open_does_not_read_tensor_data() {
    // 8 tensors of 4096×4096 F32 = 8 × 64 MiB = 512 MiB of data, plus a 32k-token vocabulary.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.gguf");
    let mut w = GgufWriter::new(32);
    let tokens: Vec<String> = (0..32_000).map(|i| format!("token{i}")).collect();
    w.add_kv("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)))
        .unwrap();
    for i in 0..8 {
        w.add_tensor(
            format!("blk.{i}.ffn_up.weight"),
            &[4096, 4096],
            GgmlType::F32,
        )
        .unwrap();
    }
    w.write_to_path(&path, |_, t, sink| sink.write_zeros(t.n_bytes))
        .unwrap();
    let file_size = std::fs::metadata(&path).unwrap().len();
    assert!(file_size >= 512 * MIB);

    let before = rss_bytes();
    let f = GgufFile::open(&path).unwrap();
    let mut n_values = 0usize;
    for (_, v) in f.metadata().iter() {
        if let Value::Array(a) = v {
            n_values += a.len();
        }
    }
    let mut n_bytes = 0u64;
    for t in f.tensors() {
        n_bytes += f.tensor_data(t).len() as u64; // a slice of the map: no page is read
    }
    let after_open = rss_bytes();
    assert_eq!(n_values, 32_000);
    assert_eq!(n_bytes, 512 * MIB);
    let growth = after_open.saturating_sub(before);
    assert!(
        growth < 16 * MIB,
        "open grew RSS by {} MiB for a {} MiB file",
        growth / MIB,
        file_size / MIB
    );

    // The measurement can see mapped pages: reading 64 MiB of one tensor makes them resident.
    let data = f.tensor_data(&f.tensors()[3]);
    let sum: u64 = data.iter().step_by(4096).map(|&b| b as u64).sum();
    assert_eq!(sum, 0);
    let after_touch = rss_bytes();
    assert!(
        after_touch.saturating_sub(after_open) > 32 * MIB,
        "touching 64 MiB grew RSS by only {} KiB",
        after_touch.saturating_sub(after_open) / 1024
    );
}
