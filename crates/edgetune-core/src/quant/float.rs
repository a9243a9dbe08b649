//! The float "quant" types: F32, F16 (IEEE half) and BF16 (bfloat16), one element per "block".
//!
//! F16 decodes exactly (every half is an f32) and encodes with round-to-nearest-even; BF16 is
//! the top 16 bits of an f32, encoded as ggml's `ggml_compute_fp32_to_bf16` (NaN forced quiet,
//! otherwise round-to-nearest-even on the dropped 16 bits).

use super::simd;

pub mod fp32 {
    //! F32: 4 little-endian bytes per value.
    use super::simd;

    /// Copies little-endian f32 bytes into `dst`.
    pub fn dequantize_ref(src: &[u8], dst: &mut [f32]) {
        debug_assert_eq!(src.len() / 4, dst.len());
        for (o, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }

    /// Same as [`dequantize_ref`] (a byte copy on little-endian targets).
    pub fn dequantize(src: &[u8], dst: &mut [f32]) {
        let n = dst.len().min(src.len() / 4);
        bytemuck::cast_slice_mut::<f32, u8>(&mut dst[..n]).copy_from_slice(&src[..4 * n]);
    }

    /// Writes `src` as little-endian f32 bytes.
    pub fn quantize_ref(src: &[f32], dst: &mut [u8]) {
        debug_assert_eq!(src.len() * 4, dst.len());
        for (c, v) in dst.chunks_exact_mut(4).zip(src) {
            c.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Σ w[i]·x[i] in f64, rounded once.
    pub fn dot_ref(row: &[u8], x: &[f32]) -> f32 {
        let mut w = vec![0.0f32; row.len() / 4];
        dequantize_ref(row, &mut w);
        simd::dot_f64(&w, x)
    }

    /// Σ w[i]·x[i], SIMD chosen at run time.
    pub fn dot(row: &[u8], x: &[f32]) -> f32 {
        debug_assert_eq!(row.len() / 4, x.len());
        // The row is mapped file bytes (any alignment): view it as f32 when it is aligned,
        // otherwise decode it in chunks on the stack.
        if let Ok(w) = bytemuck::try_cast_slice::<u8, f32>(&row[..row.len() / 4 * 4]) {
            return simd::dot_f32(w, x);
        }
        let mut buf = [0.0f32; 256];
        let mut sum = 0.0f32;
        for (rc, xc) in row.chunks(4 * 256).zip(x.chunks(256)) {
            let n = rc.len() / 4;
            dequantize_ref(rc, &mut buf[..n]);
            sum += simd::dot_f32(&buf[..n], xc);
        }
        sum
    }
}

pub mod fp16 {
    //! F16: IEEE half, 2 little-endian bytes per value.
    use super::simd;

    /// Exact half → f32 conversion.
    pub fn dequantize_ref(src: &[u8], dst: &mut [f32]) {
        debug_assert_eq!(src.len() / 2, dst.len());
        for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
            *o = simd::f16_le([c[0], c[1]]);
        }
    }

    /// Fastest conversion (F16C on x86-64); bitwise equal to [`dequantize_ref`].
    pub fn dequantize(src: &[u8], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if simd::x86::has_avx2_fma_f16c() {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
            return unsafe { dequantize_f16c(src, dst) };
        }
        dequantize_ref(src, dst)
    }

    /// f32 → half, round to nearest, ties to even (overflow → ±inf, NaN stays NaN).
    pub fn quantize_ref(src: &[f32], dst: &mut [u8]) {
        debug_assert_eq!(src.len() * 2, dst.len());
        for (c, &v) in dst.chunks_exact_mut(2).zip(src) {
            c.copy_from_slice(&simd::f16_bytes(v));
        }
    }

    /// Σ w[i]·x[i] in f64, rounded once.
    pub fn dot_ref(row: &[u8], x: &[f32]) -> f32 {
        let mut w = vec![0.0f32; row.len() / 2];
        dequantize_ref(row, &mut w);
        simd::dot_f64(&w, x)
    }

    /// Σ w[i]·x[i], SIMD chosen at run time.
    pub fn dot(row: &[u8], x: &[f32]) -> f32 {
        debug_assert_eq!(row.len() / 2, x.len());
        #[cfg(target_arch = "x86_64")]
        if simd::x86::has_avx2_fma_f16c() {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
            return unsafe { dot_f16c(row, x) };
        }
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is part of the aarch64 baseline.
        return unsafe { dot_neon(row, x) };
        #[allow(unreachable_code)]
        super::dot_chunked(row, 2, x, dequantize_ref)
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dequantize_f16c(src: &[u8], dst: &mut [f32]) {
        use std::arch::x86_64::*;
        let n = dst.len().min(src.len() / 2);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: reads src[2i..2i+16] and writes dst[i..i+8], both in bounds (i + 8 ≤ n).
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(2 * i).cast());
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
            i += 8;
        }
        dequantize_ref(&src[2 * i..2 * n], &mut dst[i..n]);
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_f16c(row: &[u8], x: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let n = x.len().min(row.len() / 2);
        let (r, p) = (row.as_ptr(), x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: i + 8k + 8 ≤ n: 16 bytes of row and 8 f32 of x in bounds.
                let (w, v) = unsafe {
                    (
                        _mm256_cvtph_ps(_mm_loadu_si128(r.add(2 * (i + 8 * k)).cast())),
                        _mm256_loadu_ps(p.add(i + 8 * k)),
                    )
                };
                *a = _mm256_fmadd_ps(w, v, *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            // SAFETY: i + 8 ≤ n.
            let (w, v) = unsafe {
                (
                    _mm256_cvtph_ps(_mm_loadu_si128(r.add(2 * i).cast())),
                    _mm256_loadu_ps(p.add(i)),
                )
            };
            acc[0] = _mm256_fmadd_ps(w, v, acc[0]);
            i += 8;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut sum = simd::x86::hsum(v);
        for j in i..n {
            sum = simd::f16_le([row[2 * j], row[2 * j + 1]]).mul_add(x[j], sum);
        }
        sum
    }

    /// NEON: halves widened to f32 by bit manipulation (exact for every half, including
    /// subnormals, infinities and NaN), since the f16 NEON types are not stable in Rust.
    #[cfg(target_arch = "aarch64")]
    #[target_feature(enable = "neon")]
    fn dot_neon(row: &[u8], x: &[f32]) -> f32 {
        use std::arch::aarch64::*;
        let n = x.len().min(row.len() / 2);
        // |h| << 13 read as f32 is |value|·2^-112 for normal and subnormal halves (exact); a
        // multiply by 2^112 restores it. Exponent 31 (inf/NaN) gets the f32 exponent forced to
        // 255. The sign goes to bit 31.
        let widen = |h: uint16x4_t| -> float32x4_t {
            let h = vmovl_u16(h);
            let abs = vshlq_n_u32::<13>(vandq_u32(h, vdupq_n_u32(0x7FFF)));
            let mag = vmulq_n_f32(vreinterpretq_f32_u32(abs), f32::from_bits(0x7780_0000));
            let is_special = vcgeq_u32(vandq_u32(h, vdupq_n_u32(0x7C00)), vdupq_n_u32(0x7C00));
            let mag = vorrq_u32(
                vreinterpretq_u32_f32(mag),
                vandq_u32(is_special, vdupq_n_u32(0x7F80_0000)),
            );
            let sign = vshlq_n_u32::<16>(vandq_u32(h, vdupq_n_u32(0x8000)));
            vreinterpretq_f32_u32(vorrq_u32(mag, sign))
        };
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 16 <= n {
            for k in 0..2 {
                // SAFETY: i + 8k + 8 ≤ n: 16 bytes of row and 8 f32 of x in bounds.
                let (h, v0, v1) = unsafe {
                    (
                        vld1q_u16(row.as_ptr().add(2 * (i + 8 * k)).cast()),
                        vld1q_f32(x.as_ptr().add(i + 8 * k)),
                        vld1q_f32(x.as_ptr().add(i + 8 * k + 4)),
                    )
                };
                acc[2 * k] = vfmaq_f32(acc[2 * k], widen(vget_low_u16(h)), v0);
                acc[2 * k + 1] = vfmaq_f32(acc[2 * k + 1], widen(vget_high_u16(h)), v1);
            }
            i += 16;
        }
        let mut sum = vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ));
        for j in i..n {
            sum = simd::f16_le([row[2 * j], row[2 * j + 1]]).mul_add(x[j], sum);
        }
        sum
    }
}

pub mod bf16 {
    //! BF16: the top half of an f32, 2 little-endian bytes per value.
    use super::simd;

    /// bf16 → f32: the bits shifted into the top half (exact).
    pub fn dequantize_ref(src: &[u8], dst: &mut [f32]) {
        debug_assert_eq!(src.len() / 2, dst.len());
        for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
            *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
        }
    }

    /// Fastest conversion; bitwise equal to [`dequantize_ref`].
    pub fn dequantize(src: &[u8], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if simd::x86::has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { dequantize_avx2(src, dst) };
        }
        dequantize_ref(src, dst)
    }

    /// ggml's `ggml_compute_fp32_to_bf16`: a NaN keeps its top bits with the quiet bit forced
    /// on; anything else rounds to nearest even on the low 16 bits (overflow → ±inf).
    pub fn from_f32(v: f32) -> u16 {
        let u = v.to_bits();
        if u & 0x7FFF_FFFF > 0x7F80_0000 {
            return ((u >> 16) | 64) as u16;
        }
        // Cannot overflow u32: the largest non-NaN pattern is 0xFF80_0000.
        ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) as u16
    }

    /// Writes `src` as little-endian bf16 (see [`from_f32`]).
    pub fn quantize_ref(src: &[f32], dst: &mut [u8]) {
        debug_assert_eq!(src.len() * 2, dst.len());
        for (c, &v) in dst.chunks_exact_mut(2).zip(src) {
            c.copy_from_slice(&from_f32(v).to_le_bytes());
        }
    }

    /// Σ w[i]·x[i] in f64, rounded once.
    pub fn dot_ref(row: &[u8], x: &[f32]) -> f32 {
        let mut w = vec![0.0f32; row.len() / 2];
        dequantize_ref(row, &mut w);
        simd::dot_f64(&w, x)
    }

    /// Σ w[i]·x[i], SIMD chosen at run time.
    pub fn dot(row: &[u8], x: &[f32]) -> f32 {
        debug_assert_eq!(row.len() / 2, x.len());
        #[cfg(target_arch = "x86_64")]
        if simd::x86::has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { dot_avx2(row, x) };
        }
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is part of the aarch64 baseline.
        return unsafe { dot_neon(row, x) };
        #[allow(unreachable_code)]
        super::dot_chunked(row, 2, x, dequantize_ref)
    }

    /// 8 bf16 at `p` widened to f32 lanes.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load8(p: *const u8) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees 16 readable bytes at p.
        let h = unsafe { _mm_loadu_si128(p.cast()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dequantize_avx2(src: &[u8], dst: &mut [f32]) {
        use std::arch::x86_64::*;
        let n = dst.len().min(src.len() / 2);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: reads src[2i..2i+16], writes dst[i..i+8]; i + 8 ≤ n.
            unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(i), load8(src.as_ptr().add(2 * i))) };
            i += 8;
        }
        dequantize_ref(&src[2 * i..2 * n], &mut dst[i..n]);
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_avx2(row: &[u8], x: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let n = x.len().min(row.len() / 2);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: i + 8k + 8 ≤ n: 16 bytes of row and 8 f32 of x in bounds.
                let (w, v) = unsafe {
                    (
                        load8(row.as_ptr().add(2 * (i + 8 * k))),
                        _mm256_loadu_ps(x.as_ptr().add(i + 8 * k)),
                    )
                };
                *a = _mm256_fmadd_ps(w, v, *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            // SAFETY: i + 8 ≤ n.
            let (w, v) = unsafe {
                (
                    load8(row.as_ptr().add(2 * i)),
                    _mm256_loadu_ps(x.as_ptr().add(i)),
                )
            };
            acc[0] = _mm256_fmadd_ps(w, v, acc[0]);
            i += 8;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut sum = simd::x86::hsum(v);
        for j in i..n {
            let w = f32::from_bits((u16::from_le_bytes([row[2 * j], row[2 * j + 1]]) as u32) << 16);
            sum = w.mul_add(x[j], sum);
        }
        sum
    }

    #[cfg(target_arch = "aarch64")]
    #[target_feature(enable = "neon")]
    fn dot_neon(row: &[u8], x: &[f32]) -> f32 {
        use std::arch::aarch64::*;
        let n = x.len().min(row.len() / 2);
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 16 <= n {
            for k in 0..2 {
                // SAFETY: i + 8k + 8 ≤ n: 16 bytes of row and 8 f32 of x in bounds.
                let (h, v0, v1) = unsafe {
                    (
                        vld1q_u16(row.as_ptr().add(2 * (i + 8 * k)).cast()),
                        vld1q_f32(x.as_ptr().add(i + 8 * k)),
                        vld1q_f32(x.as_ptr().add(i + 8 * k + 4)),
                    )
                };
                let w0 = vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h)));
                let w1 = vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_high_u16(h)));
                acc[2 * k] = vfmaq_f32(acc[2 * k], w0, v0);
                acc[2 * k + 1] = vfmaq_f32(acc[2 * k + 1], w1, v1);
            }
            i += 16;
        }
        let mut sum = vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ));
        for j in i..n {
            let w = f32::from_bits((u16::from_le_bytes([row[2 * j], row[2 * j + 1]]) as u32) << 16);
            sum = w.mul_add(x[j], sum);
        }
        sum
    }
}

/// Portable dot for the 2-byte float types: decode 256 values at a time on the stack and
/// multiply them with the f32 kernel.
fn dot_chunked(row: &[u8], elem_bytes: usize, x: &[f32], decode: fn(&[u8], &mut [f32])) -> f32 {
    let mut buf = [0.0f32; 256];
    let mut sum = 0.0f32;
    for (rc, xc) in row.chunks(256 * elem_bytes).zip(x.chunks(256)) {
        let n = (rc.len() / elem_bytes).min(xc.len());
        decode(&rc[..n * elem_bytes], &mut buf[..n]);
        sum += simd::dot_f32_scalar(&buf[..n], &xc[..n]);
    }
    sum
}

#[cfg(test)]
#[path = "float_tests.rs"]
mod tests;
