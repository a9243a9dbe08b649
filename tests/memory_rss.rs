//! `memory::rss` against the live process: anonymous RSS grows when a fresh allocation is
//! touched, file-backed RSS when a mapped model's data is read, and `GgufFile::lock` shows up
//! as locked bytes. Its own test binary, so other tests' allocations do not disturb the numbers.

#![cfg(target_os = "linux")]

use edgetune::gguf::{GgufFile, GgufWriter};
use edgetune::memory::rss::memory_usage;
use edgetune::quant::GgmlType;

const MIB: u64 = 1 << 20;

/// Serialises the tests of this binary (they measure the whole process).
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn write_model(path: &std::path::Path, mib: u64) {
    let mut w = GgufWriter::new(32);
    for i in 0..mib / 4 {
        w.add_tensor(
            format!("blk.{i}.ffn_up.weight"),
            &[1024, 1024],
            GgmlType::F32,
        )
        .unwrap();
    }
    w.write_to_path(path, |_, t, sink| {
        sink.write_all(&vec![1u8; t.n_bytes as usize])
    })
    .unwrap();
}

#[test]
fn anonymous_rss_grows_when_a_fresh_allocation_is_touched() {
    let _g = LOCK.lock().unwrap();
    const N: usize = 64 << 20;
    let before = memory_usage().unwrap().unwrap();
    let mut v: Vec<u8> = Vec::with_capacity(N);
    let reserved = memory_usage().unwrap().unwrap();
    // Writing every page makes the reservation resident.
    v.resize(N, 1);
    std::hint::black_box(&mut v);
    let after = memory_usage().unwrap().unwrap();
    assert!(
        reserved.rss_anon < before.rss_anon + 4 * MIB,
        "untouched capacity is not resident"
    );
    let grown = after.rss_anon - before.rss_anon;
    assert!(
        (N as u64 - MIB..N as u64 + 8 * MIB).contains(&grown),
        "anon grew {grown}"
    );
    assert!(after.rss_file < before.rss_file + 4 * MIB);
    assert!(after.peak_rss >= after.rss && after.rss >= after.rss_anon + after.rss_file);
}

#[test]
fn reading_mapped_weights_grows_file_backed_rss_and_lock_counts_them() {
    let _g = LOCK.lock().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    write_model(&path, 32);
    let f = GgufFile::open(&path).unwrap();
    let before = memory_usage().unwrap().unwrap();
    let mut sum = 0u64;
    for t in f.tensors() {
        sum += f
            .tensor_data(t)
            .iter()
            .step_by(4096)
            .map(|&b| b as u64)
            .sum::<u64>();
    }
    std::hint::black_box(sum);
    let after = memory_usage().unwrap().unwrap();
    let file_grown = after.rss_file - before.rss_file;
    assert!(file_grown >= 31 * MIB, "file-backed RSS grew {file_grown}");
    assert!(after.rss_anon < before.rss_anon + 4 * MIB);

    // A small map locks under the default 8 MiB RLIMIT_MEMLOCK (or with CAP_IPC_LOCK); the
    // error path's message is unit-tested in memory::rss.
    let small = dir.path().join("s.gguf");
    write_model(&small, 4);
    let s = GgufFile::open(&small).unwrap();
    let size = s.file_size();
    match s.lock() {
        Ok(()) => {
            let locked = memory_usage().unwrap().unwrap().locked;
            assert!(locked >= size, "locked {locked} < file {size}");
        }
        Err(e) => assert!(e.to_string().contains("RLIMIT_MEMLOCK"), "{e}"),
    }
    let owned = GgufFile::from_bytes("x.gguf", std::fs::read(&small).unwrap()).unwrap();
    assert!(owned.lock().unwrap_err().to_string().contains("not mapped"));
}

/// The arena is allocated zeroed by the system (calloc), not written: none of it is resident
/// until a step writes it, so a trainer whose micro-batches move to a device engine frees its
/// CPU arena without ever holding it beside the device workspace.
#[test]
fn an_arena_is_resident_only_once_written() {
    use edgetune::memory::Arena;
    use edgetune::memory::plan::{Category, PlanBuilder};
    let _g = LOCK.lock().unwrap();
    let mut p = PlanBuilder::new();
    p.add_buffer("a", Category::Temporary, 64 * MIB, 0, 0);
    let plan = p.pack().unwrap();
    let before = memory_usage().unwrap().unwrap();
    let mut arena = Arena::new(&plan).unwrap();
    let allocated = memory_usage().unwrap().unwrap();
    assert!(
        allocated.rss_anon < before.rss_anon + 4 * MIB,
        "a new 64 MiB arena made {} bytes resident",
        allocated.rss_anon - before.rss_anon
    );
    assert!(arena.as_mut_slice().iter().all(|&x| x == 0.0));
    arena.as_mut_slice().fill(1.0);
    std::hint::black_box(arena.as_mut_slice());
    let written = memory_usage().unwrap().unwrap();
    let grown = written.rss_anon - before.rss_anon;
    assert!(
        grown >= 63 * MIB,
        "writing the arena grew anon RSS by {grown}"
    );
}
