//! Hostile GGUF input: a corpus of corrupt files derived from a small valid one. Every case must
//! return `Err` (or `Ok` where a bit flip leaves a valid file), never panic, and the messages
//! must carry the byte offset and the numbers.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::gguf_common::{Kv, Layout, Spec, Ti, gstr, le32, le64};
use edgetune::Error;
use edgetune::gguf::GgufFile;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Parses `bytes`, touching every value and tensor on success; `Err(case)` if it panicked.
fn parse(case: &str, bytes: Vec<u8>) -> Result<edgetune::Result<GgufFile>, String> {
    catch_unwind(AssertUnwindSafe(|| {
        let r = GgufFile::from_bytes(format!("{case}.gguf"), bytes);
        if let Ok(f) = &r {
            for (_, v) in f.metadata().iter() {
                let _ = v.to_json(4);
            }
            for t in f.tensors() {
                assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
            }
        }
        r
    }))
    .map_err(|_| format!("case `{case}` panicked"))
}

/// The case must fail with an `Error::Gguf` at `offset` (when given) whose text contains
/// every string in `needles`.
fn expect_err(case: &str, bytes: Vec<u8>, offset: Option<usize>, needles: &[&str]) {
    let r = parse(case, bytes).unwrap_or_else(|p| panic!("{p}"));
    match r {
        Ok(_) => panic!("case `{case}`: parsed a corrupt file"),
        Err(Error::Gguf {
            path,
            offset: at,
            what,
        }) => {
            assert_eq!(path.to_str(), Some(format!("{case}.gguf").as_str()));
            if let Some(o) = offset {
                assert_eq!(at, o as u64, "case `{case}`: wrong offset in `{what}`");
            }
            for n in needles {
                assert!(what.contains(n), "case `{case}`: `{what}` lacks `{n}`");
            }
        }
        Err(e) => panic!("case `{case}`: not a Gguf error: {e}"),
    }
}

fn small() -> (Vec<u8>, Layout) {
    Spec::small().build_with_layout()
}

fn with(f: impl FnOnce(&mut Spec)) -> (Vec<u8>, Layout) {
    let mut s = Spec::small();
    f(&mut s);
    s.build_with_layout()
}

#[test]
fn base_file_is_valid() {
    let (bytes, l) = small();
    let f = parse("base", bytes).unwrap().unwrap();
    assert_eq!(f.tensors().len(), 3);
    assert_eq!(f.data_offset(), l.data_offset as u64);
}

#[test]
fn every_truncation_fails() {
    let (bytes, _) = small();
    for n in 0..bytes.len() {
        let r = parse(&format!("trunc{n}"), bytes[..n].to_vec()).unwrap_or_else(|p| panic!("{p}"));
        assert!(
            r.is_err(),
            "truncated to {n} of {} bytes parsed",
            bytes.len()
        );
    }
    // The message for a truncation inside the data names the tensor and both sizes.
    let cut = bytes.len() - 1;
    expect_err(
        "trunc-data",
        bytes[..cut].to_vec(),
        None,
        &["c.weight", "past the end", &cut.to_string()],
    );
}

#[test]
fn random_bit_flips_never_panic() {
    let (bytes, _) = small();
    let mut rng = StdRng::seed_from_u64(0x6775_6766);
    let (mut ok, mut err) = (0, 0);
    for i in 0..20_000 {
        let mut b = bytes.clone();
        for _ in 0..rng.random_range(1..=4) {
            let at = rng.random_range(0..b.len());
            b[at] ^= 1 << rng.random_range(0..8);
        }
        match parse(&format!("flip{i}"), b).unwrap_or_else(|p| panic!("{p}")) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    // Flips in tensor data and in most values leave a valid file; flips in structure don't.
    assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
}

#[test]
fn random_byte_overwrites_in_the_header_never_panic() {
    let (bytes, l) = small();
    let mut rng = StdRng::seed_from_u64(7);
    for i in 0..20_000 {
        let mut b = bytes.clone();
        let at = rng.random_range(0..l.data_offset);
        b[at] = match rng.random_range(0..3) {
            0 => 0xff,
            1 => 0,
            _ => rng.random(),
        };
        let _ = parse(&format!("overwrite{i}"), b).unwrap_or_else(|p| panic!("{p}"));
    }
}

#[test]
fn header_magic_and_version() {
    let (mut b, _) = small();
    b[..4].copy_from_slice(b"GGML");
    expect_err("magic", b, Some(0), &["bad magic", "not a GGUF file"]);
    for (v, needle) in [
        (1u32, "version 1"),
        (0, "version 0"),
        (4, "version 4"),
        (3 << 24, "big-endian"),
    ] {
        let (b, _) = with(|s| s.version = v);
        expect_err(&format!("version{v}"), b, Some(4), &[needle]);
    }
    expect_err(
        "tiny",
        b"GGUF\x03\0\0\0".to_vec(),
        Some(0),
        &["8 bytes", "24-byte"],
    );
}

#[test]
fn huge_counts() {
    for n in [u64::MAX, 1 << 40, 1 << 20, 100] {
        let (b, _) = with(|s| s.kv_count = Some(n));
        let r = parse("kvs", b).unwrap_or_else(|p| panic!("{p}"));
        assert!(r.is_err(), "kv count {n}");
        let (b, _) = with(|s| s.tensor_count = Some(n));
        assert!(parse("tensors", b).unwrap().is_err(), "tensor count {n}");
    }
    let (b, _) = with(|s| s.kv_count = Some(u64::MAX));
    expect_err(
        "kv-count",
        b,
        Some(16),
        &[
            "metadata entry count 18446744073709551615",
            "exceeds the limit",
        ],
    );
    let (b, _) = with(|s| s.tensor_count = Some(1 << 40));
    expect_err("tensor-count", b, Some(8), &["tensor count 1099511627776"]);

    // String lengths: a key, a value, an array element, a tensor name.
    let (mut b, l) = small();
    b[l.kv_start[0]..l.kv_start[0] + 8].copy_from_slice(&le64(u64::MAX));
    expect_err(
        "key-len",
        b,
        Some(l.kv_start[0]),
        &["metadata key length 18446744073709551615", "bytes left"],
    );
    let (mut b, l) = small();
    let at = l.kv_value[0] + 4;
    b[at..at + 8].copy_from_slice(&le64(1 << 33));
    expect_err(
        "value-len",
        b,
        Some(at),
        &["key `general.architecture`", "8589934592"],
    );
    let (mut b, l) = small();
    let at = l.kv_value[2] + 4 + 12; // first string element of the token array
    b[at..at + 8].copy_from_slice(&le64(u64::MAX - 3));
    expect_err(
        "elem-len",
        b,
        Some(at),
        &["tokenizer.ggml.tokens", "string element length"],
    );
    let (mut b, l) = small();
    b[l.ti_start[1]..l.ti_start[1] + 8].copy_from_slice(&le64(1 << 50));
    expect_err(
        "name-len",
        b,
        Some(l.ti_start[1]),
        &["tensor name length 1125899906842624"],
    );

    // Array lengths for every element type, including nested arrays.
    for elem in 0..=12u32 {
        let mut p = le32(elem);
        p.extend(le64(u64::MAX / 2));
        let (b, l) = with(|s| s.kvs.insert(0, Kv::new("big.array", 9, p)));
        expect_err(
            &format!("array{elem}"),
            b,
            Some(l.kv_value[0] + 8),
            &["array length 9223372036854775807", "big.array"],
        );
    }
    // An array whose count fits the bytes left but whose elements are not there.
    let mut p = le32(9);
    p.extend(le64(40));
    let (b, _) = with(|s| s.kvs.push(Kv::new("nested.short", 9, p)));
    expect_err("nested-short", b, None, &["nested.short"]);
}

#[test]
fn bad_dims() {
    let cases: Vec<(&str, Vec<u64>, Option<u32>, &str)> = vec![
        ("ndims0", vec![], None, "0 dims"),
        ("ndims5", vec![8, 1, 1, 1, 1], None, "5 dims"),
        ("ndims-max", vec![8, 2], Some(u32::MAX), "4294967295 dims"),
        ("dim0", vec![8, 0], None, "dim 1 is 0"),
        ("dim-huge", vec![8, u64::MAX], None, "18446744073709551615"),
        ("dim-overflow", vec![1 << 32, 1 << 32], None, "overflows"),
        ("bytes-overflow", vec![1 << 31, 1 << 31], None, "overflows"),
    ];
    for (case, dims, n_dims, needle) in cases {
        let (b, l) = with(|s| {
            s.tis[0].dims = dims.clone();
            s.tis[0].n_dims = n_dims;
        });
        expect_err(case, b, Some(l.ti_dims[0]), &["a.weight", needle]);
    }
    // 2^62 F32 elements: a valid count whose bytes overflow u64.
    let (b, l) = with(|s| s.tis[0].dims = vec![1 << 31, 1 << 31]);
    expect_err("f32-bytes", b, Some(l.ti_dims[0]), &["overflows"]);
    // Big but representable: reported as running past the end of the file, with numbers.
    let (b, l) = with(|s| {
        s.tis[2].dims = vec![256, 1 << 20];
        s.data_len = Some(400);
    });
    expect_err(
        "past-end",
        b,
        Some(l.ti_offset[2]),
        &[
            "c.weight",
            "Q4_K",
            "256×1048576",
            "150994944 bytes",
            "past the end of the file",
        ],
    );
}

#[test]
fn tensor_types_and_offsets() {
    for id in [4u32, 16, 39, 1000, u32::MAX] {
        let (b, l) = with(|s| s.tis[1].ty = id);
        expect_err(
            &format!("type{id}"),
            b,
            Some(l.ti_type[1]),
            &["b.weight", &format!("ggml type {id}")],
        );
    }
    let (b, _) = with(|s| s.tis[1].ty = 23);
    expect_err("iq4xs", b, None, &["IQ4_XS"]);
    let (b, _) = with(|s| s.tis[2].dims = vec![100]);
    expect_err("ne0", b, None, &["c.weight", "ne[0] = 100", "256"]);

    let (b, l) = with(|s| s.tis[1].offset = 65);
    expect_err(
        "misaligned",
        b,
        Some(l.ti_offset[1]),
        &["b.weight", "65", "alignment 32"],
    );
    let (b, l) = with(|s| s.tis[1].offset = 0);
    expect_err(
        "overlap-same",
        b,
        Some(l.ti_offset[1]),
        &["overlaps", "a.weight", "b.weight"],
    );
    let (b, _) = with(|s| s.tis[2].offset = 160); // b is [64, 166)
    expect_err(
        "overlap-part",
        b,
        None,
        &[
            "`c.weight`",
            "overlaps",
            "`b.weight`",
            "ends at data offset 166",
        ],
    );
    let (b, _) = with(|s| {
        s.tis[0].offset = u64::MAX - 31;
        s.data_len = Some(400);
    });
    expect_err("offset-overflow", b, None, &["a.weight", "overflows"]);
    let (b, _) = with(|s| {
        s.tis[2].offset = 1 << 20;
        s.data_len = Some(400);
    });
    expect_err(
        "offset-past-end",
        b,
        None,
        &["c.weight", "1048576", "past the end"],
    );
    // Out-of-order but disjoint tensors are fine.
    let (b, _) = with(|s| {
        s.tis[0].offset = 288; // [288, 352)
        s.tis[1].offset = 160; // [160, 262)
        s.tis[2].offset = 0; // [0, 144)
    });
    parse("reordered", b).unwrap().unwrap();
}

#[test]
fn alignment_values() {
    for (case, kv, needle) in [
        ("align0", Kv::u32("general.alignment", 0), "is 0"),
        ("align3", Kv::u32("general.alignment", 3), "is 3"),
        (
            "align-big",
            Kv::new("general.alignment", 10, le64(1 << 40)),
            "1099511627776",
        ),
        (
            "align-neg",
            Kv::new("general.alignment", 5, le32(-32i32 as u32)),
            "-32",
        ),
        ("align-str", Kv::string("general.alignment", "32"), "string"),
    ] {
        let (b, l) = with(|s| s.kvs.insert(0, kv.clone()));
        expect_err(
            case,
            b,
            Some(l.kv_value[0] + 4),
            &["general.alignment", needle],
        );
    }
    // Alignment 64 read from the file: the 32-aligned base layout no longer lines up.
    let (b, _) = with(|s| {
        s.kvs.insert(0, Kv::u32("general.alignment", 64));
        s.tis[1].offset = 96;
    });
    expect_err(
        "align64",
        b,
        None,
        &["b.weight", "96", "not a multiple of the alignment 64"],
    );
    let (b, _) = with(|s| {
        s.kvs.insert(0, Kv::u32("general.alignment", 64));
        s.alignment = 64;
        s.tis[1].offset = 128;
        s.tis[2].offset = 256;
    });
    assert_eq!(parse("align64-ok", b).unwrap().unwrap().alignment(), 64);
}

#[test]
fn invalid_utf8_and_duplicates() {
    let bad = b"ab\xff\xfecd";
    let (b, l) = with(|s| s.kvs[1].key = bad.to_vec());
    expect_err(
        "utf8-key",
        b,
        Some(l.kv_start[1] + 8 + 2),
        &["metadata key is not valid UTF-8"],
    );
    let (b, l) = with(|s| s.kvs[0].payload = gstr(bad));
    expect_err(
        "utf8-value",
        b,
        Some(l.kv_value[0] + 4 + 8 + 2),
        &["general.architecture", "UTF-8"],
    );
    let (b, _) = with(|s| {
        let mut p = le32(8);
        p.extend(le64(2));
        p.extend(gstr(b"ok"));
        p.extend(gstr(b"\xc3"));
        s.kvs[2].payload = p;
    });
    expect_err("utf8-elem", b, None, &["tokenizer.ggml.tokens", "UTF-8"]);
    let (b, l) = with(|s| s.tis[1].name = bad.to_vec());
    expect_err(
        "utf8-name",
        b,
        Some(l.ti_start[1] + 10),
        &["tensor name is not valid UTF-8"],
    );

    let (b, l) = with(|s| s.kvs[3].key = b"llama.context_length".to_vec());
    expect_err(
        "dup-key",
        b,
        Some(l.kv_start[3]),
        &["duplicate metadata key `llama.context_length`"],
    );
    let (b, l) = with(|s| s.tis[2].name = b"a.weight".to_vec());
    expect_err(
        "dup-name",
        b,
        Some(l.ti_start[2]),
        &["duplicate tensor name `a.weight`"],
    );
}

#[test]
fn bad_value_types() {
    for ty in [13u32, 100, u32::MAX] {
        let (b, l) = with(|s| s.kvs[1].ty = ty);
        expect_err(
            &format!("vtype{ty}"),
            b,
            Some(l.kv_value[1]),
            &["llama.context_length", &format!("unknown value type {ty}")],
        );
        let (b, l) = with(|s| s.kvs[2].payload[..4].copy_from_slice(&le32(ty)));
        expect_err(
            &format!("etype{ty}"),
            b,
            Some(l.kv_value[2] + 4),
            &["unknown array element type"],
        );
    }
    let (b, l) = with(|s| s.kvs.push(Kv::new("x.bool", 7, vec![2])));
    expect_err("bool2", b, Some(l.kv_value[4] + 4), &["bool value is 2"]);
    // Nesting: 8 levels are accepted, 9 are not.
    for (depth, ok) in [(8usize, true), (9, false)] {
        let mut p = Vec::new();
        for _ in 0..depth - 1 {
            p.extend(le32(9));
            p.extend(le64(1));
        }
        p.extend(le32(0));
        p.extend(le64(0));
        let (b, _) = with(|s| s.kvs.push(Kv::new("deep", 9, p)));
        let r = parse("deep", b).unwrap();
        assert_eq!(r.is_ok(), ok, "depth {depth}: {:?}", r.err());
    }
    // A bogus tensor entry with a valid layout otherwise.
    let (b, _) = with(|s| s.tis.push(Ti::new("d.weight", &[4], 0, 0)));
    expect_err("overlap-new", b, None, &["overlaps"]);
}
