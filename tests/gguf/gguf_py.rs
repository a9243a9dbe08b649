//! Cross-checks with gguf-py (llama.cpp's own Python package, written by no one here): files it
//! writes are read and dequantized by us bit-exactly, and files we write are read by it with the
//! same metadata, shapes, types and dequantized values. Needs the venv made by
//! `scripts/setup-python.sh` (or `EDGETUNE_PYTHON` pointing at a Python with gguf + numpy).

use crate::common;

use crate::python_support::run_script;
use edgetune::gguf::{Array, GgufFile, GgufWriter, Value};
use edgetune::npy;
use edgetune::quant::{self, GgmlType};
use rand::Rng;

/// What this module needs from the reference Python.
const NEEDS_PY: &str = "gguf-py is";

/// Bitwise equality, where any NaN equals any NaN (payloads differ between numpy and Rust).
fn assert_same_f32(what: &str, ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let same = a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        assert!(
            same,
            "{what}: element {i}: ours {a:e} ({:#010x}), gguf-py {b:e} ({:#010x})",
            a.to_bits(),
            b.to_bits()
        );
    }
}

#[test]
fn files_written_by_gguf_py_read_and_dequantize_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    run_script(NEEDS_PY, "gguf_py_write.py", &[dir.path()]);
    let f = GgufFile::open(dir.path().join("pywritten.gguf")).unwrap();
    assert_eq!(f.str("general.architecture").unwrap(), "llama");
    assert_eq!(f.u32("test.u32").unwrap(), 4_000_000_000);
    assert_eq!(f.i32("test.i32").unwrap(), -2_000_000_000);
    assert_eq!(f.u64("test.u64").unwrap(), (1u64 << 63) + 5);
    assert_eq!(f.f32("test.f32").unwrap(), 0.15625);
    assert!(f.bool("test.bool").unwrap());
    assert_eq!(f.str("test.string").unwrap(), "héllo, 世界 🦙");
    assert_eq!(f.i32_array("test.array.i32").unwrap(), &[1, -2, 3]);
    assert_eq!(f.string_array("test.array.str").unwrap(), &["a", "", "ccc"]);
    assert!(matches!(f.get("test.u8"), Some(Value::U8(200))));
    assert!(matches!(f.get("test.i8"), Some(Value::I8(-100))));
    assert!(matches!(f.get("test.u16"), Some(Value::U16(60000))));
    assert!(matches!(f.get("test.i16"), Some(Value::I16(-30000))));
    assert!(matches!(f.get("test.i64"), Some(Value::I64(v)) if *v == -(1i64 << 62)));
    assert!(matches!(f.get("test.f64"), Some(Value::F64(v)) if *v == 1.0 / 3.0));
    assert!(
        matches!(f.get("test.array.nested"), Some(Value::Array(Array::Array(v))) if v.len() == 2)
    );

    for name in ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"] {
        let ty = GgmlType::from_name(name).unwrap();
        let (info, data) = f.tensor_by_name(&format!("t.{name}")).unwrap();
        assert_eq!(info.ty, ty);
        assert_eq!(info.dims, vec![256, 6], "{name}: shape in ne order");
        let (_, src) = npy::read_f32(dir.path().join(format!("{name}.src.npy"))).unwrap();
        let (_, theirs) = npy::read_f32(dir.path().join(format!("{name}.deq.npy"))).unwrap();
        let mut ours = vec![0.0f32; src.len()];
        (ty.traits().dequantize_ref)(data, &mut ours);
        assert_same_f32(&format!("{name} dequantize_ref"), &ours, &theirs);
        quant::dequantize(ty, data, &mut ours).unwrap();
        assert_same_f32(&format!("{name} dequantize"), &ours, &theirs);
        // Our reference quantizer produces gguf-py's (= llama.cpp's reference) bytes.
        let q_theirs = std::fs::read(dir.path().join(format!("{name}.q.bin"))).unwrap();
        assert_eq!(q_theirs, data, "{name}: tensor bytes in the file");
        let mut q_ours = vec![0u8; data.len()];
        quant::quantize(ty, &src, &mut q_ours).unwrap();
        let first_diff = q_ours.iter().zip(&q_theirs).position(|(a, b)| a != b);
        assert_eq!(
            first_diff, None,
            "{name}: quantize_ref differs from gguf-py at byte {first_diff:?}"
        );
    }
}

/// Metadata of every value type, with the JSON value gguf-py should report.
fn metadata_cases() -> Vec<(&'static str, Value, serde_json::Value, &'static str)> {
    use serde_json::json;
    vec![
        ("t.u8", Value::U8(7), json!(7), "UINT8"),
        ("t.i8", Value::I8(-7), json!(-7), "INT8"),
        ("t.u16", Value::U16(65535), json!(65535), "UINT16"),
        ("t.i16", Value::I16(-32768), json!(-32768), "INT16"),
        ("t.u32", Value::U32(u32::MAX), json!(u32::MAX), "UINT32"),
        ("t.i32", Value::I32(i32::MIN), json!(i32::MIN), "INT32"),
        ("t.f32", Value::F32(-2.5), json!(-2.5), "FLOAT32"),
        ("t.bool", Value::Bool(false), json!(false), "BOOL"),
        (
            "t.str",
            Value::String("Ǵǵ 🦙\n".into()),
            json!("Ǵǵ 🦙\n"),
            "STRING",
        ),
        ("t.empty", Value::String(String::new()), json!(""), "STRING"),
        ("t.u64", Value::U64(u64::MAX), json!(u64::MAX), "UINT64"),
        ("t.i64", Value::I64(i64::MIN), json!(i64::MIN), "INT64"),
        ("t.f64", Value::F64(0.1), json!(0.1), "FLOAT64"),
        (
            "t.strs",
            Value::Array(Array::String(vec!["x".into(), "".into(), "ŷ".into()])),
            json!(["x", "", "ŷ"]),
            "ARRAY",
        ),
        (
            "t.i32s",
            Value::Array(Array::I32(vec![3, -1])),
            json!([3, -1]),
            "ARRAY",
        ),
        (
            "t.f32s",
            Value::Array(Array::F32(vec![0.5, -1.0])),
            json!([0.5, -1.0]),
            "ARRAY",
        ),
    ]
}

#[test]
fn files_written_by_us_are_read_by_gguf_py() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ours.gguf");
    let mut rng = common::rng(99);
    let mut w = GgufWriter::new(64);
    w.add_kv("general.architecture", Value::String("llama".into()))
        .unwrap();
    for (key, value, _, _) in metadata_cases() {
        w.add_kv(key, value).unwrap();
    }
    // Every type twice: valid blocks (quantized by us, or with sane scales) and raw random bits.
    let rows = 3usize;
    let mut payloads = Vec::new();
    for ty in GgmlType::ALL {
        let cols = ty.block_elems().max(32) * 2;
        let valid = common::random_tensor(ty, rows * cols, &mut rng);
        let mut bits = vec![0u8; valid.len()];
        rng.fill(&mut bits[..]);
        for (kind, data) in [("valid", valid), ("bits", bits)] {
            let name = format!("{kind}.{}", ty.name());
            w.add_tensor(name.clone(), &[cols as u64, rows as u64], ty)
                .unwrap();
            payloads.push((name, ty, data));
        }
    }
    w.write_to_path(&path, |i, _, sink| sink.write_all(&payloads[i].2))
        .unwrap();

    run_script(NEEDS_PY, "gguf_py_read.py", &[&path, dir.path()]);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("meta.json")).unwrap()).unwrap();
    for (key, _, want, want_type) in metadata_cases() {
        let field = &meta["fields"][key];
        assert_eq!(field["types"][0], want_type, "{key}: gguf-py sees {field}");
        assert_eq!(field["value"], want, "{key}");
    }
    let tensors = meta["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), payloads.len());
    let ours = GgufFile::open(&path).unwrap();
    let unsupported: Vec<&str> = meta["unsupported"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for (t, (name, ty, data)) in tensors.iter().zip(&payloads) {
        assert_eq!(t["name"], name.as_str());
        assert_eq!(t["type"], ty.name(), "{name}");
        if *ty == GgmlType::Q8_1 {
            // gguf-py 0.19 still sizes Q8_1 blocks at 40 bytes (f32 d and s); ggml's block_q8_1
            // has been 36 (two f16) for years, and llama.cpp reads 36. Ours follows ggml.
            assert_eq!(t["n_bytes"], (data.len() / 36 * 40) as u64, "{name}");
        } else {
            assert_eq!(t["n_bytes"], data.len() as u64, "{name}");
        }
        let info = ours.tensor(name).unwrap();
        let shape: Vec<u64> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(shape, info.dims, "{name}: shape");
        assert_eq!(
            t["data_offset"],
            ours.data_offset() + info.offset,
            "{name}: data offset"
        );
        if unsupported.contains(&name.as_str()) {
            // gguf-py has no dequantizer for these (Q8_1, Q8_K are activation-only types).
            assert!(
                matches!(ty, GgmlType::Q8_1 | GgmlType::Q8_K),
                "gguf-py cannot dequantize {name}"
            );
            continue;
        }
        let (_, theirs) = npy::read_f32(dir.path().join(format!("{name}.npy"))).unwrap();
        let mut mine = vec![0.0f32; theirs.len()];
        (ty.traits().dequantize_ref)(ours.tensor_data(info), &mut mine);
        assert_same_f32(&format!("{name} dequantize_ref"), &mine, &theirs);
        quant::dequantize(*ty, ours.tensor_data(info), &mut mine).unwrap();
        assert_same_f32(&format!("{name} dequantize"), &mine, &theirs);
    }
}
