//! Integer inference kernels: activations quantized per block to 8 bits and multiplied with the
//! quantized weights by integer dot products, as llama.cpp's CPU backend computes x·Wᵀ.
//!
//! Every supported weight type is written, per sub-block `j` of `sub` (16 or 32) elements, as
//! `w_i = a_j·(u_i − Z) + m_j`: `u_i` an unsigned level (0..=255), `Z` the type's zero level, `a_j`
//! and `m_j` f32 (`m_j = 0` for the types without mins). Activations are `x̂_i = d·q_i` with
//! `q_i ∈ [−127, 127]` ([`act`]). Then, per sub-block,
//!
//! ```text
//! Σ_i w_i·x̂_i = a_j·d·Σ_i (u_i − Z)·q_i + m_j·(d·Σ_i q_i)
//! ```
//!
//! where the first sum is exact in i32 and computed with `vpdpbusd` (AVX-512 VNNI, AVX-VNNI),
//! `vpmaddubsw` (AVX2) or `sdot` (Armv8.2 dot product); the second uses the activation sums the
//! quantizer keeps. Two paths share that arithmetic:
//!
//! - matrix-vector (generation, a few tokens): one kernel per type reads the weight blocks as
//!   they are mapped (the `gemv` function of each type module);
//! - matrix-matrix (prompts): 16 weight rows at a time are unpacked into a [`panel`] of levels
//!   and scales, and one register-tile kernel, the same for every type, runs over all tokens.
//!
//! Each type module has the scalar `unpack` its panel is built from (the specification of the
//! levels and scales), and the reference of every kernel is [`dot_ref`]: the f64 dot of the
//! reference-dequantized weights with the dequantized activations.

/// Selects a level's kernel among the entry points a type module generated (`x86_entry`,
/// `neon_entry`); every type module of this folder invokes it. Defined before the modules so
/// that it is in their scope.
macro_rules! gemv_select {
    () => {
        pub(crate) fn gemv(level: super::super::Level) -> Option<super::super::GemvFn> {
            #[cfg(target_arch = "x86_64")]
            if let Some(f) = x86_entry::gemv_x86(level) {
                return Some(f);
            }
            #[cfg(target_arch = "aarch64")]
            if let Some(f) = neon_entry::gemv_neon(level) {
                return Some(f);
            }
            let _ = level;
            None
        }
    };
}

pub mod act;
mod k4;
mod k6;
mod k_low;
pub mod matmul;
mod neon;
pub mod panel;
mod panel_neon;
mod panel_x86;
mod q4_q8;
mod q5;
mod x86;

use crate::quant::GgmlType;
pub use act::{ActRow, ActType, QuantActs};

/// Arithmetic of the products with quantized weights.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Compute {
    /// Weights converted to f32, activations kept in f32 (what training's gradients need).
    #[default]
    F32,
    /// Activations quantized per block to 8 bits and integer dot products, where the CPU has
    /// the instructions (AVX2, AVX-512 VNNI / AVX-VNNI, Armv8.2 dot product) and the weight
    /// type has kernels; f32 otherwise.
    Int8,
}

impl Compute {
    pub fn name(self) -> &'static str {
        match self {
            Compute::F32 => "f32",
            Compute::Int8 => "int8",
        }
    }

    /// `f32` or `int8` (case-insensitive).
    pub fn from_name(s: &str) -> Option<Compute> {
        [Compute::F32, Compute::Int8]
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s))
    }
}

/// The instruction set a kernel is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// No integer SIMD kernels (the products fall back to f32).
    Scalar,
    /// x86-64 AVX2 + FMA + F16C: `vpmaddubsw`.
    Avx2,
    /// AVX2 plus AVX-VNNI: 256-bit `vpdpbusd` (VEX).
    AvxVnni,
    /// AVX2 plus AVX-512 F/BW/VL/VNNI: `vpdpbusd` on 256 and 512 bits.
    Avx512Vnni,
    /// aarch64 with the dot-product extension: `sdot`.
    NeonDot,
}

#[cfg(target_arch = "x86_64")]
fn has(level: Level) -> bool {
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    match level {
        Level::Scalar => true,
        Level::Avx2 => avx2,
        Level::AvxVnni => avx2 && is_x86_feature_detected!("avxvnni"),
        Level::Avx512Vnni => {
            avx2 && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
        }
        Level::NeonDot => false,
    }
}

#[cfg(target_arch = "aarch64")]
fn has(level: Level) -> bool {
    match level {
        Level::Scalar => true,
        Level::NeonDot => std::arch::is_aarch64_feature_detected!("dotprod"),
        _ => false,
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn has(level: Level) -> bool {
    level == Level::Scalar
}

impl Level {
    const ALL: [Level; 5] = [
        Level::Scalar,
        Level::Avx2,
        Level::AvxVnni,
        Level::Avx512Vnni,
        Level::NeonDot,
    ];

    /// The best level of this CPU (detected once).
    pub fn detect() -> Level {
        use std::sync::OnceLock;
        static BEST: OnceLock<Level> = OnceLock::new();
        *BEST.get_or_init(|| {
            [
                Level::Avx512Vnni,
                Level::AvxVnni,
                Level::Avx2,
                Level::NeonDot,
            ]
            .into_iter()
            .find(|l| has(*l))
            .unwrap_or(Level::Scalar)
        })
    }

    /// Every level this CPU can run (for tests and benchmarks of each kernel).
    pub fn available() -> Vec<Level> {
        Level::ALL.into_iter().filter(|l| has(*l)).collect()
    }

    /// Whether this CPU can run kernels of this level.
    pub fn supported(self) -> bool {
        has(self)
    }

    /// An x86 level (all include AVX2, FMA and F16C).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn has_avx2(self) -> bool {
        matches!(self, Level::Avx2 | Level::AvxVnni | Level::Avx512Vnni)
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::AvxVnni => "avx-vnni",
            Level::Avx512Vnni => "avx512-vnni",
            Level::NeonDot => "neon-dotprod",
        }
    }
}

/// Matrix-vector kernel: `y[r] = Σ w·x̂` over weight row `r` (whole blocks; rows `row_bytes`
/// apart in `rows`) and one quantized activation row of the same length, for `r < y.len()`.
pub type GemvFn = fn(rows: &[u8], row_bytes: usize, act: &ActRow<'_>, y: &mut [f32]);

/// Scalar unpacking of a row of whole blocks: levels `u` (one per element) and per sub-block
/// the scale `a` and offset `m` of `w = a·(u − Z) + m`.
pub type UnpackFn = fn(row: &[u8], u: &mut [u8], a: &mut [f32], m: &mut [f32]);

/// What the integer path knows about one weight type.
pub struct IntType {
    pub ty: GgmlType,
    /// Elements per sub-block (one `a`, one `m`).
    pub sub: usize,
    /// Zero level `Z`.
    pub zero: u8,
    /// Activation type llama.cpp pairs with this weight type.
    pub act: ActType,
    /// Whether `m` can be non-zero.
    pub has_min: bool,
    pub unpack: UnpackFn,
    /// The matrix-vector kernel for a level (`None`: none for that level).
    pub gemv: fn(Level) -> Option<GemvFn>,
}

/// The integer description of `ty`, or `None` for the float types.
pub fn int_type(ty: GgmlType) -> Option<&'static IntType> {
    Some(match ty {
        GgmlType::Q4_0 => &q4_q8::Q4_0,
        GgmlType::Q4_1 => &q4_q8::Q4_1,
        GgmlType::Q5_0 => &q5::Q5_0,
        GgmlType::Q5_1 => &q5::Q5_1,
        GgmlType::Q8_0 => &q4_q8::Q8_0,
        GgmlType::IQ4_NL => &q4_q8::IQ4_NL,
        GgmlType::Q4_K => &k4::Q4_K,
        GgmlType::Q5_K => &k4::Q5_K,
        GgmlType::Q6_K => &k6::Q6_K,
        GgmlType::Q2_K => &k_low::Q2_K,
        GgmlType::Q3_K => &k_low::Q3_K,
        _ => return None,
    })
}

/// Specification of every kernel: Σ dequantize_ref(row)[i] · d·q[i] in f64, rounded once.
pub fn dot_ref(ty: GgmlType, row: &[u8], act: &ActRow<'_>, sub: usize) -> f32 {
    let n = row.len() / ty.block_bytes() * ty.block_elems();
    let mut w = vec![0.0f32; n];
    (ty.traits().dequantize_ref)(row, &mut w);
    w.iter()
        .zip(act.qs)
        .enumerate()
        .map(|(i, (&w, &q))| w as f64 * (act.d[i / sub] as f64 * q as f64))
        .sum::<f64>() as f32
}

/// Σ |w_i·x̂_i| (the magnitude kernel errors are measured against).
#[cfg(test)]
pub(crate) fn dot_mag(ty: GgmlType, row: &[u8], act: &ActRow<'_>, sub: usize) -> f64 {
    let n = row.len() / ty.block_bytes() * ty.block_elems();
    let mut w = vec![0.0f32; n];
    (ty.traits().dequantize_ref)(row, &mut w);
    w.iter()
        .zip(act.qs)
        .enumerate()
        .map(|(i, (&w, &q))| (w as f64 * act.d[i / sub] as f64 * q as f64).abs())
        .sum()
}

/// Generates, from a `#[inline(always)]` scalar body, the reference unpacker `unpack_ref` and
/// `unpack`, the same body compiled with AVX2 where the CPU has it (its fixed-size loops
/// vectorise).
macro_rules! unpackers {
    ($body:ident) => {
        /// The specification of the levels and scales (see the module docs).
        #[cfg_attr(not(test), allow(dead_code))]
        pub(crate) fn unpack_ref(row: &[u8], u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
            $body(row, u, a, m)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        fn unpack_avx2(row: &[u8], u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
            $body(row, u, a, m)
        }

        /// [`unpack_ref`] compiled for the CPU (same results).
        pub(crate) fn unpack(row: &[u8], u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                return unsafe { unpack_avx2(row, u, a, m) };
            }
            $body(row, u, a, m)
        }
    };
}
pub(crate) use unpackers;

#[cfg(test)]
pub(crate) mod test_util;
