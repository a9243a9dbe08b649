//! A hand-written GGUF encoder for tests, independent of `edgetune::gguf::GgufWriter`.
//!
//! Every field is spelled out byte by byte from docs/FORMATS.md#gguf so that tests can build valid
//! files (v2 or v3) and corrupt any field, and know where each field sits in the file.
#![allow(dead_code)]

/// Bytes per block and elements per block for the ggml ids the tests use
/// (docs/FORMATS.md#quant-blocks).
pub fn block_of(type_id: u32) -> Option<(u64, u64)> {
    Some(match type_id {
        0 => (1, 4),
        1 | 30 => (1, 2),
        2 | 20 => (32, 18),
        3 => (32, 20),
        6 => (32, 22),
        7 => (32, 24),
        8 => (32, 34),
        9 => (32, 36),
        10 => (256, 84),
        11 => (256, 110),
        12 => (256, 144),
        13 => (256, 176),
        14 => (256, 210),
        15 => (256, 292),
        _ => return None,
    })
}

pub fn le32(x: u32) -> Vec<u8> {
    x.to_le_bytes().to_vec()
}

pub fn le64(x: u64) -> Vec<u8> {
    x.to_le_bytes().to_vec()
}

/// A GGUF string: u64 length + bytes.
pub fn gstr(s: &[u8]) -> Vec<u8> {
    let mut v = le64(s.len() as u64);
    v.extend_from_slice(s);
    v
}

/// One metadata entry: key bytes, value type id, payload bytes (already encoded).
#[derive(Clone)]
pub struct Kv {
    pub key: Vec<u8>,
    pub ty: u32,
    pub payload: Vec<u8>,
}

impl Kv {
    pub fn new(key: &str, ty: u32, payload: Vec<u8>) -> Kv {
        Kv {
            key: key.as_bytes().to_vec(),
            ty,
            payload,
        }
    }
    pub fn u32(key: &str, x: u32) -> Kv {
        Kv::new(key, 4, le32(x))
    }
    pub fn string(key: &str, s: &str) -> Kv {
        Kv::new(key, 8, gstr(s.as_bytes()))
    }
    /// An array of strings.
    pub fn strings(key: &str, items: &[&str]) -> Kv {
        let mut p = le32(8);
        p.extend(le64(items.len() as u64));
        for s in items {
            p.extend(gstr(s.as_bytes()));
        }
        Kv::new(key, 9, p)
    }
    pub fn f32s(key: &str, items: &[f32]) -> Kv {
        let mut p = le32(6);
        p.extend(le64(items.len() as u64));
        for x in items {
            p.extend(x.to_le_bytes());
        }
        Kv::new(key, 9, p)
    }
}

/// One tensor info; `n_dims` overrides the dim count written (for corrupt files).
#[derive(Clone)]
pub struct Ti {
    pub name: Vec<u8>,
    pub n_dims: Option<u32>,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub offset: u64,
}

impl Ti {
    pub fn new(name: &str, dims: &[u64], ty: u32, offset: u64) -> Ti {
        Ti {
            name: name.as_bytes().to_vec(),
            n_dims: None,
            dims: dims.to_vec(),
            ty,
            offset,
        }
    }

    /// Data bytes, computed from the block table (None for unknown ids or odd shapes).
    pub fn n_bytes(&self) -> Option<u64> {
        let (be, bb) = block_of(self.ty)?;
        let n: u64 = self.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
        if self.dims.first()? % be != 0 {
            return None;
        }
        (n / be).checked_mul(bb)
    }
}

/// A whole file. `tensor_count` / `kv_count` override the counts written.
#[derive(Clone)]
pub struct Spec {
    pub magic: [u8; 4],
    pub version: u32,
    pub tensor_count: Option<u64>,
    pub kv_count: Option<u64>,
    pub kvs: Vec<Kv>,
    pub tis: Vec<Ti>,
    /// Padding alignment used to place the data section.
    pub alignment: u64,
    /// Total data-section length; default: end of the furthest tensor (no tail padding).
    pub data_len: Option<u64>,
}

/// Where the fields of a built file sit.
#[derive(Debug, Default)]
pub struct Layout {
    pub kv_start: Vec<usize>,
    pub kv_value: Vec<usize>,
    pub ti_start: Vec<usize>,
    pub ti_dims: Vec<usize>,
    pub ti_type: Vec<usize>,
    pub ti_offset: Vec<usize>,
    pub data_offset: usize,
}

impl Spec {
    /// A small valid v3 file: a few kvs, three tensors of different types, alignment 32.
    pub fn small() -> Spec {
        Spec {
            magic: *b"GGUF",
            version: 3,
            tensor_count: None,
            kv_count: None,
            kvs: vec![
                Kv::string("general.architecture", "llama"),
                Kv::u32("llama.context_length", 4096),
                Kv::strings("tokenizer.ggml.tokens", &["<s>", "a", "é"]),
                Kv::f32s("tokenizer.ggml.scores", &[0.0, -1.0, 2.5]),
            ],
            tis: vec![
                Ti::new("a.weight", &[8, 2], 0, 0),   // F32: 64 bytes at 0
                Ti::new("b.weight", &[32, 3], 8, 64), // Q8_0: 3 × 34 = 102 bytes at 64
                Ti::new("c.weight", &[256], 12, 192), // Q4_K: 144 bytes at 192
            ],
            alignment: 32,
            data_len: None,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        self.build_with_layout().0
    }

    pub fn build_with_layout(&self) -> (Vec<u8>, Layout) {
        let mut b = Vec::new();
        let mut l = Layout::default();
        b.extend_from_slice(&self.magic);
        b.extend(le32(self.version));
        b.extend(le64(self.tensor_count.unwrap_or(self.tis.len() as u64)));
        b.extend(le64(self.kv_count.unwrap_or(self.kvs.len() as u64)));
        for kv in &self.kvs {
            l.kv_start.push(b.len());
            b.extend(gstr(&kv.key));
            l.kv_value.push(b.len());
            b.extend(le32(kv.ty));
            b.extend_from_slice(&kv.payload);
        }
        for t in &self.tis {
            l.ti_start.push(b.len());
            b.extend(gstr(&t.name));
            l.ti_dims.push(b.len());
            b.extend(le32(t.n_dims.unwrap_or(t.dims.len() as u32)));
            for &d in &t.dims {
                b.extend(le64(d));
            }
            l.ti_type.push(b.len());
            b.extend(le32(t.ty));
            l.ti_offset.push(b.len());
            b.extend(le64(t.offset));
        }
        while !(b.len() as u64).is_multiple_of(self.alignment) {
            b.push(0);
        }
        l.data_offset = b.len();
        let data_len = self.data_len.unwrap_or_else(|| {
            self.tis
                .iter()
                .filter_map(|t| t.n_bytes().map(|n| t.offset.saturating_add(n)))
                .max()
                .unwrap_or(0)
        });
        // A recognisable pattern: byte i of the data section is (i * 7 + 3) mod 251.
        b.extend((0..data_len).map(|i| ((i * 7 + 3) % 251) as u8));
        (b, l)
    }
}
