//! ggml tensor types as the GGUF format defines them: the `type` id of a tensor info, its name
//! and its block geometry (elements and bytes per block). The kernels for each type live in
//! `crate::quant`, which builds on this table; the file format needs only the geometry, to size
//! and bound every tensor before any byte of it is read.

use std::fmt;

/// ggml tensor types (the `type` field of a GGUF tensor info).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ4_NL = 20,
    BF16 = 30,
}

/// `(name as ggml and gguf-py print it, elements per block, bytes per block)`, in the order of
/// [`GgmlType::ALL`]. The byte counts are the `#[repr(C)]` block structs' sizes in
/// `crate::quant` (each asserted there at compile time).
const GEOMETRY: [(&str, usize, usize); 16] = [
    ("F32", 1, 4),
    ("F16", 1, 2),
    ("Q4_0", 32, 18),
    ("Q4_1", 32, 20),
    ("Q5_0", 32, 22),
    ("Q5_1", 32, 24),
    ("Q8_0", 32, 34),
    ("Q8_1", 32, 36),
    ("Q2_K", 256, 84),
    ("Q3_K", 256, 110),
    ("Q4_K", 256, 144),
    ("Q5_K", 256, 176),
    ("Q6_K", 256, 210),
    ("Q8_K", 256, 292),
    ("IQ4_NL", 32, 18),
    ("BF16", 1, 2),
];

impl GgmlType {
    /// Every type edgetune knows, in id order.
    pub const ALL: [GgmlType; 16] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ4_NL,
        GgmlType::BF16,
    ];

    /// The position of this type in [`GgmlType::ALL`] (and in every table kept in that order).
    pub const fn index(self) -> usize {
        let mut i = 0;
        while i < GgmlType::ALL.len() {
            if GgmlType::ALL[i] as u32 == self as u32 {
                return i;
            }
            i += 1;
        }
        // Unreachable: ALL lists every variant (checked by a test).
        0
    }

    /// The type with ggml id `id`, if edgetune knows it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| *t as u32 == id)
    }

    /// The type whose name (as ggml prints it, case-insensitive) is `name`.
    pub fn from_name(name: &str) -> Option<GgmlType> {
        GgmlType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// ggml's id of this type.
    pub const fn id(self) -> u32 {
        self as u32
    }

    pub const fn name(self) -> &'static str {
        GEOMETRY[self.index()].0
    }

    /// Elements per block (1 for the float types).
    pub const fn block_elems(self) -> usize {
        GEOMETRY[self.index()].1
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        GEOMETRY[self.index()].2
    }

    /// Bytes taken by `n` elements, or `None` when `n` is not a whole number of blocks or the
    /// size overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let elems = self.block_elems() as u64;
        if !n.is_multiple_of(elems) {
            return None;
        }
        (n / elems).checked_mul(self.block_bytes() as u64)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Name of a ggml type id for messages, including ids edgetune does not support.
pub fn type_name_of_id(id: u32) -> &'static str {
    if let Some(t) = GgmlType::from_id(id) {
        return t.name();
    }
    match id {
        4 => "Q4_2 (removed)",
        5 => "Q4_3 (removed)",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        31..=33 => "Q4_0_4_4/4_8/8_8 (removed)",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_names_and_geometry_round_trip() {
        for (i, t) in GgmlType::ALL.iter().enumerate() {
            assert_eq!(t.index(), i);
            assert_eq!(GgmlType::from_id(t.id()), Some(*t));
            assert_eq!(GgmlType::from_name(t.name()), Some(*t));
            assert_eq!(GgmlType::from_name(&t.name().to_lowercase()), Some(*t));
        }
        // Ids in strictly increasing order, so ALL is sorted by id.
        assert!(GgmlType::ALL.windows(2).all(|w| w[0].id() < w[1].id()));
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(type_name_of_id(23), "IQ4_XS");
        assert_eq!(GgmlType::Q4_K.bytes_for(4096), Some(16 * 144));
        assert_eq!(GgmlType::Q4_K.bytes_for(100), None);
        assert_eq!(GgmlType::F32.bytes_for(u64::MAX), None);
    }
}
