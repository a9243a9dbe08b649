//! The body shared by the libFuzzer target and the stable replay binary: parse, then touch all.

use edgetune::gguf::GgufFile;

/// Parses `data` as a GGUF file; on success touches every metadata value and every tensor's
/// bytes, and checks the invariants the reader promises. Panics only on a reader bug.
pub fn check_gguf(data: &[u8]) {
    let Ok(f) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else {
        return;
    };
    for (key, value) in f.metadata().iter() {
        assert!(f.get(key).is_some());
        let _ = value.to_json(8);
        let _ = value.type_name();
    }
    let mut sum = 0u64;
    for t in f.tensors() {
        let bytes = f.tensor_data(t);
        assert_eq!(bytes.len() as u64, t.n_bytes, "tensor `{}`", t.name);
        assert_eq!(t.offset % f.alignment(), 0);
        assert!((1..=4).contains(&t.dims.len()));
        assert_eq!(t.row_len() % t.ty.block_elems() as u64, 0);
        sum = sum.wrapping_add(bytes.iter().map(|&b| b as u64).sum::<u64>());
        assert!(std::ptr::eq(f.tensor(&t.name).unwrap(), t));
    }
    std::hint::black_box(sum);
}
