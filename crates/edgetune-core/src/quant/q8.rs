//! Q8_0 and Q8_1: 32 signed bytes per block with an f16 scale, value = d·q.
//!
//! Q8_0 (`block_q8_0`, 34 bytes): f16 `d`, 32 × i8. Q8_1 (`block_q8_1`, 36 bytes): f16 `d`,
//! f16 `s` (= d·Σq, a cache for ggml's integer dot products; decoding ignores it), 32 × i8.
//! Both decode the same way, so the kernels below are shared and take the block's scale and
//! quants.

use super::simd::QK;

/// Decodes 32 quants as ggml does: `q as f32 · d`.
#[inline(always)]
fn decode(d: f32, qs: &[i8; QK], out: &mut [f32]) {
    for (o, &q) in out.iter_mut().zip(qs) {
        *o = q as f32 * d;
    }
}

/// ggml's Q8 scale choice: d = amax/127, q = roundf(x/d) (ties away from zero, as `f32::round`).
#[inline(always)]
fn quantize_block(xb: &[f32]) -> (f32, [i8; QK]) {
    let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; QK];
    for (q, &v) in qs.iter_mut().zip(xb) {
        // |v·id| ≤ 127 up to rounding, so the cast does not saturate for finite input.
        *q = (v * id).round() as i8;
    }
    (d, qs)
}

/// AVX2 Σ q·x of one block as eight lane partial sums (quants read straight from memory).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn block_dot_avx2(qs: &[i8; QK], x: &[f32]) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    debug_assert!(x.len() >= QK);
    let (q, p) = (qs.as_ptr(), x.as_ptr());
    // SAFETY: qs is 32 bytes and x at least 32 f32; every load stays inside them and the
    // unaligned load forms are used.
    unsafe {
        let f = |k: usize| {
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(q.add(8 * k).cast())))
        };
        let a = _mm256_mul_ps(f(0), _mm256_loadu_ps(p));
        let b = _mm256_mul_ps(f(1), _mm256_loadu_ps(p.add(8)));
        let a = _mm256_fmadd_ps(f(2), _mm256_loadu_ps(p.add(16)), a);
        let b = _mm256_fmadd_ps(f(3), _mm256_loadu_ps(p.add(24)), b);
        _mm256_add_ps(a, b)
    }
}

/// AVX2 decode of one block; bitwise equal to [`decode`] (one f32 multiply per value).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn decode_avx2(d: f32, qs: &[i8; QK], out: &mut [f32]) {
    use std::arch::x86_64::*;
    debug_assert!(out.len() >= QK);
    let dv = _mm256_set1_ps(d);
    for k in 0..4 {
        // SAFETY: reads bytes 8k..8k+8 of the 32-byte qs, writes out[8k..8k+8] (len ≥ 32).
        unsafe {
            let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                qs.as_ptr().add(8 * k).cast(),
            )));
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * k), _mm256_mul_ps(q, dv));
        }
    }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
#[inline]
fn load_qs_neon(qs: &[i8; QK]) -> (std::arch::aarch64::int8x16_t, std::arch::aarch64::int8x16_t) {
    use std::arch::aarch64::*;
    // SAFETY: qs is exactly 32 bytes.
    unsafe { (vld1q_s8(qs.as_ptr()), vld1q_s8(qs.as_ptr().add(16))) }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
#[inline]
fn decode_neon(d: f32, qs: &[i8; QK], out: &mut [f32]) {
    use std::arch::aarch64::*;
    debug_assert!(out.len() >= QK);
    let (lo, hi) = load_qs_neon(qs);
    for (k, part) in [lo, hi].into_iter().enumerate() {
        let w0 = vmovl_s8(vget_low_s8(part));
        let w1 = vmovl_high_s8(part);
        let f = [
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(w0))),
            vcvtq_f32_s32(vmovl_high_s16(w0)),
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(w1))),
            vcvtq_f32_s32(vmovl_high_s16(w1)),
        ];
        for (m, v) in f.into_iter().enumerate() {
            // SAFETY: out holds at least 32 f32 and 16k + 4m + 4 <= 32.
            unsafe { vst1q_f32(out.as_mut_ptr().add(16 * k + 4 * m), vmulq_n_f32(v, d)) };
        }
    }
}

/// Generates one Q8 family module over a block type with fields `d: [u8; 2]`, `qs: [i8; 32]`.
macro_rules! q8_module {
    ($block:ident, $bytes:literal) => {
        use super::super::simd::{self, QK, as_blocks, f16_le};

        const BYTES: usize = $bytes;

        /// Scalar specification of the decoder (bit-exact with ggml and gguf-py).
        pub fn dequantize_ref(src: &[u8], dst: &mut [f32]) {
            debug_assert_eq!(src.len() / BYTES * QK, dst.len());
            for (b, out) in as_blocks::<$block>(src)
                .iter()
                .zip(dst.chunks_exact_mut(QK))
            {
                super::decode(f16_le(b.d), &b.qs, out);
            }
        }

        /// Fastest decoder; bitwise equal to [`dequantize_ref`].
        pub fn dequantize(src: &[u8], dst: &mut [f32]) {
            #[cfg(target_arch = "x86_64")]
            if simd::x86::has_avx2_fma_f16c() {
                // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
                return unsafe { dequantize_avx2(src, dst) };
            }
            #[cfg(target_arch = "aarch64")]
            for (b, out) in as_blocks::<$block>(src)
                .iter()
                .zip(dst.chunks_exact_mut(QK))
            {
                // SAFETY: NEON is part of the aarch64 baseline.
                unsafe { super::decode_neon(f16_le(b.d), &b.qs, out) };
            }
            #[cfg(target_arch = "aarch64")]
            return;
            #[allow(unreachable_code)]
            dequantize_ref(src, dst)
        }

        /// Σ dequantize_ref(row)[i]·x[i] in f64, rounded once: the specification of [`dot`].
        pub fn dot_ref(row: &[u8], x: &[f32]) -> f32 {
            let mut w = vec![0.0f32; row.len() / BYTES * QK];
            dequantize_ref(row, &mut w);
            simd::dot_f64(&w, x)
        }

        /// Σ w[i]·x[i] over a row, SIMD chosen at run time.
        pub fn dot(row: &[u8], x: &[f32]) -> f32 {
            debug_assert_eq!(row.len() / BYTES * QK, x.len());
            #[cfg(target_arch = "x86_64")]
            if simd::x86::has_avx2_fma_f16c() {
                // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
                return unsafe { dot_avx2(row, x) };
            }
            #[cfg(target_arch = "aarch64")]
            // SAFETY: NEON is part of the aarch64 baseline.
            return unsafe { dot_neon(row, x) };
            #[allow(unreachable_code)]
            simd::dot_decoded_scalar(row, x, |b: &$block, out: &mut [f32]| {
                super::decode(f16_le(b.d), &b.qs, out)
            })
        }

        /// # Safety
        /// The CPU must support AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn dot_avx2(row: &[u8], x: &[f32]) -> f32 {
            use std::arch::x86_64::*;
            simd::x86::sum_blocks(row, x, |b: &$block, xb, acc| {
                let sum = super::block_dot_avx2(&b.qs, xb);
                _mm256_fmadd_ps(_mm256_set1_ps(simd::x86::f16_scale(b.d)), sum, acc)
            })
        }

        /// # Safety
        /// The CPU must support AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn dequantize_avx2(src: &[u8], dst: &mut [f32]) {
            for (b, out) in as_blocks::<$block>(src)
                .iter()
                .zip(dst.chunks_exact_mut(QK))
            {
                super::decode_avx2(simd::x86::f16_scale(b.d), &b.qs, out);
            }
        }

        #[cfg(target_arch = "aarch64")]
        #[target_feature(enable = "neon")]
        fn dot_neon(row: &[u8], x: &[f32]) -> f32 {
            use std::arch::aarch64::*;
            simd::neon::sum_blocks(row, x, |b: &$block, xb, acc| {
                let (lo, hi) = super::load_qs_neon(&b.qs);
                vfmaq_n_f32(acc, simd::neon::block_dot_i8(lo, hi, xb), f16_le(b.d))
            })
        }
    };
}

pub mod q8_0 {
    //! Q8_0: f16 `d`, 32 × i8; value = d·q.
    use bytemuck::{Pod, Zeroable};

    /// One Q8_0 block (34 bytes, align 1).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Pod, Zeroable)]
    pub struct BlockQ8_0 {
        /// Scale, IEEE half, little-endian.
        pub d: [u8; 2],
        /// Quants.
        pub qs: [i8; 32],
    }

    const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
    const _: () = assert!(std::mem::align_of::<BlockQ8_0>() == 1);

    q8_module!(BlockQ8_0, 34);

    /// llama.cpp's `quantize_row_q8_0_ref`: d = amax/127, q = roundf(x/d).
    pub fn quantize_ref(src: &[f32], dst: &mut [u8]) {
        debug_assert_eq!(src.len() / QK * BYTES, dst.len());
        let blocks = simd::as_blocks_mut::<BlockQ8_0>(dst);
        for (xb, b) in src.chunks_exact(QK).zip(blocks) {
            let (d, qs) = super::quantize_block(xb);
            b.d = simd::f16_bytes(d);
            b.qs = qs;
        }
    }
}

pub mod q8_1 {
    //! Q8_1: f16 `d`, f16 `s` = d·Σq, 32 × i8; value = d·q. Read-only in edgetune's table.
    use bytemuck::{Pod, Zeroable};

    /// One Q8_1 block (36 bytes, align 1).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Pod, Zeroable)]
    pub struct BlockQ8_1 {
        /// Scale, IEEE half, little-endian.
        pub d: [u8; 2],
        /// d·Σq, IEEE half, little-endian (not used for decoding).
        pub s: [u8; 2],
        /// Quants.
        pub qs: [i8; 32],
    }

    const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);
    const _: () = assert!(std::mem::align_of::<BlockQ8_1>() == 1);

    q8_module!(BlockQ8_1, 36);

    /// llama.cpp's `quantize_row_q8_1_ref`: as Q8_0, plus s = f16(Σq · d) (the integer sum
    /// converted to f32, times the f32 d).
    pub fn quantize_ref(src: &[f32], dst: &mut [u8]) {
        debug_assert_eq!(src.len() / QK * BYTES, dst.len());
        let blocks = simd::as_blocks_mut::<BlockQ8_1>(dst);
        for (xb, b) in src.chunks_exact(QK).zip(blocks) {
            let (d, qs) = super::quantize_block(xb);
            let sum: i32 = qs.iter().map(|&q| q as i32).sum();
            b.d = simd::f16_bytes(d);
            b.s = simd::f16_bytes(sum as f32 * d);
            b.qs = qs;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::simd::f16_le;
    use crate::quant::simd::test_util::*;

    const K0: Kernels = Kernels {
        block_bytes: 34,
        scale_offsets: &[0],
        dequantize_ref: q8_0::dequantize_ref,
        dequantize: q8_0::dequantize,
        dot_ref: q8_0::dot_ref,
        dot: q8_0::dot,
        magnitude: None,
    };
    const K1: Kernels = Kernels {
        block_bytes: 36,
        scale_offsets: &[0, 2],
        dequantize_ref: q8_1::dequantize_ref,
        dequantize: q8_1::dequantize,
        dot_ref: q8_1::dot_ref,
        dot: q8_1::dot,
        magnitude: None,
    };

    #[test]
    fn hand_built_blocks_decode_to_known_values() {
        // d = 0.25 (0x3400); q_j = j − 16 (−16..15), plus the extremes −128 and 127.
        let mut qs: Vec<u8> = (0..32).map(|j| (j as i8 - 16) as u8).collect();
        qs[0] = 0x80; // −128
        qs[31] = 0x7F; // 127
        let mut b0 = vec![0x00, 0x34];
        b0.extend(&qs);
        let mut b1 = vec![0x00, 0x34, 0x12, 0x34]; // arbitrary s: ignored by the decoder
        b1.extend(&qs);
        let want: Vec<f32> = (0..32)
            .map(|j| match j {
                0 => -32.0,
                31 => 31.75,
                _ => 0.25 * (j as f32 - 16.0),
            })
            .collect();
        let mut out = [0.0f32; 32];
        q8_0::dequantize_ref(&b0, &mut out);
        assert_eq!(out.as_slice(), want.as_slice());
        q8_1::dequantize_ref(&b1, &mut out);
        assert_eq!(out.as_slice(), want.as_slice());
        let x: Vec<f32> = (0..32)
            .map(|j| if j % 2 == 0 { 1.0 } else { -2.0 })
            .collect();
        let dot_want: f32 = want.iter().zip(&x).map(|(a, b)| a * b).sum();
        assert_eq!(q8_0::dot(&b0, &x), dot_want);
        assert_eq!(q8_1::dot(&b1, &x), dot_want);
        assert_eq!(q8_0::dot_ref(&b0, &x), dot_want);
    }

    #[test]
    fn dot_matches_ref_on_random_rows() {
        check_random_rows(&K0, 80, 0.01);
        check_random_rows(&K1, 81, 0.01);
    }

    #[test]
    fn dot_matches_ref_on_edge_blocks() {
        check_edge_rows(&K0, 82);
        check_edge_rows(&K1, 83);
    }

    #[test]
    fn quantize_error_is_at_most_half_a_step() {
        // q = round(x/d) with |x/d| ≤ 127: |x − d·q| ≤ d/2 for the f32 d, plus |q|·|d − d16|
        // ≤ 127|d − d16| for the stored f16 scale, plus f32 roundings of x·id.
        let mut r = rng(84);
        let src = values(&mut r, 64 * QK, 3.0);
        let mut q = vec![0u8; 64 * 34];
        q8_0::quantize_ref(&src, &mut q);
        let mut back = vec![0.0; src.len()];
        q8_0::dequantize_ref(&q, &mut back);
        for (bi, xb) in src.chunks_exact(QK).enumerate() {
            let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let d16 = f16_le([q[bi * 34], q[bi * 34 + 1]]);
            let bound = d / 2.0 + 127.0 * (d - d16).abs() + 4.0 * f32::EPSILON * amax;
            for (j, &v) in xb.iter().enumerate() {
                let err = (v - back[bi * QK + j]).abs();
                assert!(err <= bound, "block {bi} elem {j}: {v} err {err} > {bound}");
            }
        }
    }

    #[test]
    fn quantize_known_blocks() {
        // amax = 127 → d = 1: values round half away from zero (2.5 → 3, −2.5 → −3).
        let mut src = [0.0f32; 32];
        src[0] = 127.0;
        src[1] = 2.5;
        src[2] = -2.5;
        src[3] = -0.4;
        src[4] = 1.49;
        let mut q = [0u8; 34];
        q8_0::quantize_ref(&src, &mut q);
        assert_eq!(&q[..7], &[0x00, 0x3C, 127, 3, (-3i8) as u8, 0, 1]);
        assert!(q[7..].iter().all(|&b| b == 0));
        // Q8_1: same quants, s = f16(Σq·d) = 128.
        let mut q1 = [0u8; 36];
        q8_1::quantize_ref(&src, &mut q1);
        assert_eq!(&q1[..4], &[0x00, 0x3C, 0x00, 0x58]);
        assert_eq!(&q1[4..], &q[2..]);
        // All-zero block: d = 0, q = 0.
        q8_0::quantize_ref(&[0.0; 32], &mut q);
        assert_eq!(q, [0u8; 34]);
    }
}
