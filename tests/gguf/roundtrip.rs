//! GGUF read/write round trips, hand-encoded v2/v3 files, gguf-py's output, typed getters.

use crate::gguf_common;

use crate::gguf_common::{Kv, Spec, le32, le64};
use edgetune::Error;
use edgetune::gguf::{Array, GgufFile, GgufWriter, TensorInfo, Value, ValueType};
use edgetune::quant::GgmlType;

/// Byte `i` of tensor `k`'s data: a pattern that differs between tensors.
fn pattern(k: usize, i: u64) -> u8 {
    (i.wrapping_mul(31).wrapping_add(k as u64 * 17 + 1) % 256) as u8
}

/// Streams each tensor's pattern in chunks of 1000 bytes (not a multiple of any block).
fn stream_pattern(
    k: usize,
    t: &TensorInfo,
    sink: &mut edgetune::gguf::TensorSink,
) -> edgetune::Result<()> {
    let mut i = 0;
    while i < t.n_bytes {
        let n = (t.n_bytes - i).min(1000);
        let chunk: Vec<u8> = (i..i + n).map(|j| pattern(k, j)).collect();
        sink.write_all(&chunk)?;
        i += n;
    }
    Ok(())
}

fn every_value() -> Vec<(&'static str, Value)> {
    vec![
        ("u8", Value::U8(255)),
        ("i8", Value::I8(-128)),
        ("u16", Value::U16(65535)),
        ("i16", Value::I16(-32768)),
        ("u32", Value::U32(u32::MAX)),
        ("i32", Value::I32(i32::MIN)),
        ("f32", Value::F32(-1.5e-7)),
        ("bool.t", Value::Bool(true)),
        ("bool.f", Value::Bool(false)),
        ("str.empty", Value::String(String::new())),
        ("str.unicode", Value::String("héllo ✓ 日本 🦀\n\0x".into())),
        ("u64", Value::U64(u64::MAX)),
        ("i64", Value::I64(i64::MIN)),
        ("f64", Value::F64(std::f64::consts::PI)),
        ("arr.u8", Value::Array(Array::U8(vec![0, 1, 255]))),
        ("arr.i8", Value::Array(Array::I8(vec![-1, 127]))),
        ("arr.u16", Value::Array(Array::U16(vec![1, 65535]))),
        ("arr.i16", Value::Array(Array::I16(vec![-2, 300]))),
        ("arr.u32", Value::Array(Array::U32(vec![7, u32::MAX]))),
        ("arr.i32", Value::Array(Array::I32(vec![-7, 3, 1]))),
        (
            "arr.f32",
            Value::Array(Array::F32(vec![0.5, -0.0, f32::INFINITY])),
        ),
        (
            "arr.bool",
            Value::Array(Array::Bool(vec![true, false, true])),
        ),
        (
            "arr.str",
            Value::Array(Array::String(vec!["".into(), "Ġthe".into(), "é".into()])),
        ),
        ("arr.u64", Value::Array(Array::U64(vec![u64::MAX, 0]))),
        ("arr.i64", Value::Array(Array::I64(vec![i64::MIN]))),
        ("arr.f64", Value::Array(Array::F64(vec![1e300, -2.5]))),
        ("arr.empty.u32", Value::Array(Array::U32(vec![]))),
        ("arr.empty.str", Value::Array(Array::String(vec![]))),
        (
            "arr.nested",
            Value::Array(Array::Array(vec![
                Array::U32(vec![1, 2]),
                Array::String(vec!["x".into()]),
                Array::Array(vec![Array::F32(vec![1.0]), Array::Array(vec![])]),
                Array::Bool(vec![]),
            ])),
        ),
    ]
}

#[test]
fn every_value_type_round_trips() {
    for version in [2, 3] {
        let mut w = GgufWriter::new(32);
        w.set_version(version).unwrap();
        for (k, v) in every_value() {
            w.add_kv(k, v).unwrap();
        }
        let mut bytes = Vec::new();
        w.write(&mut bytes, |_, _, _| Ok(())).unwrap();
        let f = GgufFile::from_bytes("values.gguf", bytes).unwrap();
        assert_eq!(f.version(), version);
        let got: Vec<(&str, &Value)> = f.metadata().iter().collect();
        let want = every_value();
        assert_eq!(got.len(), want.len());
        for ((gk, gv), (wk, wv)) in got.iter().zip(&want) {
            assert_eq!((*gk, *gv), (*wk, wv));
        }
        assert!(f.tensors().is_empty());
    }
}

#[test]
fn every_ggml_type_and_alignment_round_trips() {
    for alignment in [1u64, 8, 32, 64, 4096] {
        let mut w = GgufWriter::new(alignment);
        w.add_kv("general.name", Value::String("t".into())).unwrap();
        for (k, ty) in GgmlType::ALL.iter().enumerate() {
            let be = ty.block_elems() as u64;
            // ne[0] = 2 blocks, 3 rows, and a third dim for odd k.
            let dims: Vec<u64> = if k % 2 == 0 {
                vec![2 * be, 3]
            } else {
                vec![2 * be, 3, 2]
            };
            w.add_tensor(format!("t{k}.{ty}"), &dims, *ty).unwrap();
        }
        let expected_size = w.file_size().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("types.gguf");
        w.write_to_path(&path, stream_pattern).unwrap();
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.file_size(), expected_size);
        assert_eq!(f.alignment(), alignment);
        assert_eq!(f.data_offset() % alignment, 0);
        assert_eq!(
            f.u64("general.alignment").ok(),
            (alignment != 32).then_some(alignment)
        );
        assert_eq!(f.tensors().len(), GgmlType::ALL.len());
        for (k, ty) in GgmlType::ALL.iter().enumerate() {
            let t = &f.tensors()[k];
            let be = ty.block_elems() as u64;
            let rows = if k % 2 == 0 { 3 } else { 6 };
            assert_eq!((t.ty, t.row_len(), t.n_rows()), (*ty, 2 * be, rows));
            // Independent size: rows × 2 blocks × block bytes from the table in
            // docs/FORMATS.md#quant-blocks.
            let (_, bb) = gguf_common::block_of(ty.id()).unwrap();
            assert_eq!(t.n_bytes, rows * 2 * bb);
            assert_eq!(t.offset % alignment, 0);
            let data = f.tensor_data(t);
            assert_eq!(data.len() as u64, t.n_bytes);
            assert!(
                data.iter()
                    .enumerate()
                    .all(|(i, &b)| b == pattern(k, i as u64)),
                "{ty}"
            );
            // The slice lives in the map at data_offset + offset.
            let base = f.as_bytes().as_ptr() as usize;
            assert_eq!(
                data.as_ptr() as usize - base,
                (f.data_offset() + t.offset) as usize
            );
        }
    }
}

#[test]
fn hand_encoded_v2_and_v3_files_read() {
    for version in [2u32, 3] {
        let mut spec = Spec::small();
        spec.version = version;
        spec.kvs.push(Kv::new("x.bool", 7, vec![1]));
        let (bytes, layout) = spec.build_with_layout();
        let f = GgufFile::from_bytes("hand.gguf", bytes.clone()).unwrap();
        assert_eq!(f.version(), version);
        assert_eq!(f.data_offset(), layout.data_offset as u64);
        assert_eq!(f.str("general.architecture").unwrap(), "llama");
        assert_eq!(f.u32("llama.context_length").unwrap(), 4096);
        assert_eq!(
            f.string_array("tokenizer.ggml.tokens").unwrap(),
            ["<s>", "a", "é"]
        );
        assert_eq!(
            f.f32_array("tokenizer.ggml.scores").unwrap(),
            [0.0, -1.0, 2.5]
        );
        assert!(f.bool("x.bool").unwrap());
        let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a.weight", "b.weight", "c.weight"]);
        let (b, data) = f.tensor_by_name("b.weight").unwrap();
        assert_eq!(
            (b.ty, b.dims.as_slice(), b.n_bytes),
            (GgmlType::Q8_0, &[32u64, 3][..], 102)
        );
        let start = layout.data_offset + 64;
        assert_eq!(data, &bytes[start..start + 102]);
    }
}

#[test]
fn reads_a_file_written_by_gguf_py() {
    // tests/gguf_data/make_gguf_py_fixture.py wrote this with gguf-py 0.19.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/gguf_data/gguf_py_small.gguf"
    );
    let f = GgufFile::open(path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.str("general.architecture").unwrap(), "llama");
    assert_eq!(f.u32("llama.context_length").unwrap(), 131072);
    assert_eq!(f.u64("llama.context_length").unwrap(), 131072);
    assert_eq!(f.u64("test.u64").unwrap(), (1 << 40) + 7);
    assert_eq!(f.i32("test.i32").unwrap(), -5);
    assert_eq!(f.f32("llama.rope.freq_base").unwrap(), 500000.0);
    assert_eq!(f.f32("test.f64").unwrap(), 0.125);
    assert!(f.bool("test.bool").unwrap());
    assert_eq!(f.get("test.u8"), Some(&Value::U8(200)));
    assert_eq!(f.get("test.i8"), Some(&Value::I8(-100)));
    assert_eq!(f.get("test.u16"), Some(&Value::U16(65535)));
    assert_eq!(f.get("test.i16"), Some(&Value::I16(-32768)));
    assert_eq!(f.get("test.i64"), Some(&Value::I64(-(1 << 40))));
    assert_eq!(f.str("tokenizer.chat_template").unwrap(), "{{ héllo }} ✓");
    assert_eq!(
        f.string_array("tokenizer.ggml.tokens").unwrap(),
        ["<s>", "a", "Ġb", "é"]
    );
    assert_eq!(
        f.f32_array("tokenizer.ggml.scores").unwrap(),
        [0.0, -1.5, -2.25, 3.0]
    );
    assert_eq!(
        f.i32_array("tokenizer.ggml.token_type").unwrap(),
        [3, 1, 1, 1]
    );
    assert_eq!(
        f.array("test.nested").unwrap(),
        &Array::Array(vec![Array::I32(vec![1, 2]), Array::I32(vec![3])])
    );
    let f32w = f.tensor("f32.weight").unwrap();
    assert_eq!(
        (f32w.ty, f32w.dims.as_slice()),
        (GgmlType::F32, &[4u64, 3][..])
    );
    let vals: Vec<f32> = f
        .tensor_data(f32w)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(vals, (0..12).map(|i| i as f32).collect::<Vec<_>>());
    let (f16w, d) = f.tensor_by_name("f16.weight").unwrap();
    assert_eq!(
        (f16w.ty, f16w.dims.as_slice(), d.len()),
        (GgmlType::F16, &[8u64][..], 16)
    );
    assert_eq!(half::f16::from_le_bytes([d[14], d[15]]).to_f32(), 7.0);
    let q8 = f.tensor("q8.weight").unwrap();
    assert_eq!(
        (q8.ty, q8.dims.as_slice(), q8.n_bytes),
        (GgmlType::Q8_0, &[64u64, 2][..], 136)
    );
    let (q4k, d) = f.tensor_by_name("q4k.weight").unwrap();
    assert_eq!(
        (q4k.ty, q4k.dims.as_slice()),
        (GgmlType::Q4_K, &[256u64, 1][..])
    );
    assert_eq!(d, (0..144).map(|i| i as u8).collect::<Vec<_>>());
}

#[test]
fn typed_getters_convert_losslessly_and_name_key_and_type() {
    let mut w = GgufWriter::new(32);
    w.add_kv("a.u64", Value::U64(4096)).unwrap();
    w.add_kv("a.big", Value::U64(1 << 40)).unwrap();
    w.add_kv("a.neg", Value::I32(-1)).unwrap();
    w.add_kv("a.str", Value::String("x".into())).unwrap();
    w.add_kv("a.u32s", Value::Array(Array::U32(vec![1])))
        .unwrap();
    let mut bytes = Vec::new();
    w.write(&mut bytes, |_, _, _| Ok(())).unwrap();
    let f = GgufFile::from_bytes("getters.gguf", bytes).unwrap();

    assert_eq!(f.u32("a.u64").unwrap(), 4096);
    assert_eq!(f.i32("a.u64").unwrap(), 4096);
    assert_eq!(f.u64("a.big").unwrap(), 1 << 40);
    assert_eq!(f.opt_u32("missing").unwrap(), None);
    assert_eq!(f.opt_str("a.str").unwrap(), Some("x"));
    assert_eq!(f.i32("a.neg").unwrap(), -1);
    let msg = |e: Error| e.to_string();
    let e = msg(f.u32("a.big").unwrap_err());
    assert!(
        e.contains("getters.gguf") && e.contains("a.big") && e.contains("1099511627776"),
        "{e}"
    );
    let e = msg(f.u64("a.neg").unwrap_err());
    assert!(
        e.contains("a.neg") && e.contains("-1") && e.contains("i32"),
        "{e}"
    );
    let e = msg(f.u32("a.str").unwrap_err());
    assert!(e.contains("expected u32, found string"), "{e}");
    let e = msg(f.opt_f32("a.str").unwrap_err());
    assert!(e.contains("found string"), "{e}");
    let e = msg(f.string_array("a.u32s").unwrap_err());
    assert!(
        e.contains("expected array[string], found array[u32]"),
        "{e}"
    );
    let e = msg(f.str("missing").unwrap_err());
    assert!(e.contains("`missing`") && e.contains("missing"), "{e}");
    let e = msg(f.tensor_by_name("nope").unwrap_err());
    assert!(e.contains("getters.gguf") && e.contains("nope"), "{e}");
    assert_eq!(f.get("a.u32s").unwrap().value_type(), ValueType::Array);
}

#[test]
fn writer_refuses_bad_input_and_wrong_byte_counts() {
    let mut w = GgufWriter::new(32);
    w.add_kv("k", Value::U8(1)).unwrap();
    assert!(
        w.add_kv("k", Value::U8(2))
            .unwrap_err()
            .to_string()
            .contains("duplicate metadata key `k`")
    );
    assert!(w.add_kv("general.alignment", Value::U32(64)).is_err());
    w.add_tensor("t", &[32, 2], GgmlType::Q4_0).unwrap();
    assert!(w.add_tensor("t", &[32], GgmlType::F32).is_err());
    let e = w
        .add_tensor("u", &[100, 2], GgmlType::Q4_K)
        .unwrap_err()
        .to_string();
    assert!(e.contains("100") && e.contains("256"), "{e}");
    assert!(w.add_tensor("v", &[0], GgmlType::F32).is_err());
    assert!(w.add_tensor("w", &[1, 1, 1, 1, 1], GgmlType::F32).is_err());
    assert!(w.add_tensor("x".repeat(64), &[1], GgmlType::F32).is_err());
    let mut deep = Array::U8(vec![]);
    for _ in 0..8 {
        deep = Array::Array(vec![deep]);
    }
    assert!(w.add_kv("deep", Value::Array(deep)).is_err());

    for bad in [0u64, 3, 48, 1 << 32] {
        let mut b = GgufWriter::new(bad);
        assert!(b.add_kv("k", Value::U8(1)).is_err(), "alignment {bad}");
        assert!(
            b.add_tensor("t", &[1], GgmlType::F32).is_err(),
            "alignment {bad}"
        );
    }

    // Too few bytes (Q4_0 [32, 2] is 36 bytes), too many, then the right count.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    let mk = || {
        let mut w = GgufWriter::new(32);
        w.add_tensor("blk.0.t", &[32, 2], GgmlType::Q4_0).unwrap();
        w
    };
    let e = mk()
        .write_to_path(&path, |_, _, s| s.write_all(&[0; 35]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blk.0.t") && e.contains("35") && e.contains("36"),
        "{e}"
    );
    let e = mk()
        .write_to_path(&path, |_, _, s| s.write_all(&[0; 37]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blk.0.t") && e.contains("37") && e.contains("36"),
        "{e}"
    );
    // Failed writes leave neither the target nor a temporary file.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    mk().write_to_path(&path, |_, _, s| {
        s.write_all(&[1; 20])?;
        s.write_zeros(16)
    })
    .unwrap();
    let f = GgufFile::open(&path).unwrap();
    let d = f.tensor_by_name("blk.0.t").unwrap().1;
    assert_eq!(&d[..20], &[1; 20]);
    assert_eq!(&d[20..], &[0; 16]);
}

#[test]
fn large_vocabulary_parses() {
    // Llama 3 scale: 128,256 tokens, 280,147 merges, scores and token types.
    let tokens: Vec<String> = (0..128_256).map(|i| format!("tok{i}Ġ")).collect();
    let merges: Vec<String> = (0..280_147)
        .map(|i| format!("m{} n{}", i % 997, i))
        .collect();
    let mut w = GgufWriter::new(32);
    w.add_kv(
        "tokenizer.ggml.tokens",
        Value::Array(Array::String(tokens.clone())),
    )
    .unwrap();
    w.add_kv(
        "tokenizer.ggml.merges",
        Value::Array(Array::String(merges.clone())),
    )
    .unwrap();
    w.add_kv(
        "tokenizer.ggml.token_type",
        Value::Array(Array::I32(vec![1; 128_256])),
    )
    .unwrap();
    w.add_kv(
        "tokenizer.chat_template",
        Value::String("x".repeat(3 << 20)),
    )
    .unwrap();
    let mut bytes = Vec::new();
    w.write(&mut bytes, |_, _, _| Ok(())).unwrap();
    let f = GgufFile::from_bytes("vocab.gguf", bytes).unwrap();
    assert_eq!(
        f.string_array("tokenizer.ggml.tokens").unwrap(),
        tokens.as_slice()
    );
    assert_eq!(
        f.string_array("tokenizer.ggml.merges").unwrap(),
        merges.as_slice()
    );
    assert_eq!(
        f.i32_array("tokenizer.ggml.token_type").unwrap().len(),
        128_256
    );
    assert_eq!(f.str("tokenizer.chat_template").unwrap().len(), 3 << 20);
}

#[test]
fn json_summary_of_a_read_array() {
    let spec = Spec::small();
    let f = GgufFile::from_bytes("j.gguf", spec.build()).unwrap();
    let v = f.get("tokenizer.ggml.tokens").unwrap();
    assert_eq!(v.type_name(), "array[string]");
    assert_eq!(
        v.to_json(2),
        serde_json::json!({"type": "array[string]", "len": 3, "head": ["<s>", "a"]})
    );
    // A hand-encoded header with 0 tensors and 0 kvs and no padding is valid too.
    let mut empty = b"GGUF".to_vec();
    empty.extend(le32(3));
    empty.extend(le64(0));
    empty.extend(le64(0));
    let f = GgufFile::from_bytes("empty.gguf", empty).unwrap();
    assert!(f.metadata().is_empty() && f.tensors().is_empty());
}
