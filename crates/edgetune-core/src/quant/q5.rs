//! Q5_0 and Q5_1: 32 weights per block, 5-bit quants split into a nibble and a fifth bit.
//!
//! Q5_0 (`block_q5_0`, 22 bytes): f16 `d`, u32 `qh` (LE; bit j = fifth bit of element j),
//! 16 bytes of nibbles (element j low, j + 16 high); value = d·(q − 16).
//! Q5_1 (`block_q5_1`, 24 bytes): f16 `d`, f16 `m`, `qh`, nibbles; value = d·q + m.
//!
//! The dot products decode each block with the exact scalar decoder and multiply the 32 values
//! with SIMD (`simd::dot_decoded`); these types are rare in the models edgetune targets.

use super::simd::QK;

/// The 32 five-bit quants of a block from its packed nibbles and fifth-bit word.
#[inline(always)]
fn unpack5(qs: &[u8; 16], qh: u32) -> [u8; QK] {
    let mut q = [0u8; QK];
    for j in 0..16 {
        q[j] = (qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        q[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    q
}

/// Splits 32 five-bit quants into (nibbles, fifth-bit word) as ggml stores them.
#[inline(always)]
fn pack5(q: &[u8; QK]) -> ([u8; 16], [u8; 4]) {
    let mut qs = [0u8; 16];
    let mut qh = 0u32;
    for j in 0..16 {
        qs[j] = (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4);
        qh |= (((q[j] & 0x10) >> 4) as u32) << j;
        qh |= (((q[j + 16] & 0x10) >> 4) as u32) << (j + 16);
    }
    (qs, qh.to_le_bytes())
}

pub mod q5_0 {
    //! Q5_0: value = d·(q − 16).
    use super::super::simd::{self, QK, as_blocks, as_blocks_mut, f16_bytes, f16_le};
    use bytemuck::{Pod, Zeroable};

    /// One Q5_0 block (22 bytes, align 1).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Pod, Zeroable)]
    pub struct BlockQ5_0 {
        /// Scale, IEEE half, little-endian.
        pub d: [u8; 2],
        /// Fifth bits, u32 little-endian: bit j belongs to element j.
        pub qh: [u8; 4],
        /// Packed low nibbles: element j low, element j + 16 high.
        pub qs: [u8; 16],
    }

    const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
    const _: () = assert!(std::mem::align_of::<BlockQ5_0>() == 1);

    /// ggml's decoding: `(q − 16) as f32 · d`.
    #[inline(always)]
    fn decode_block(b: &BlockQ5_0, out: &mut [f32]) {
        let d = f16_le(b.d);
        let q = super::unpack5(&b.qs, u32::from_le_bytes(b.qh));
        for (o, &qj) in out.iter_mut().zip(&q) {
            *o = (qj as i32 - 16) as f32 * d;
        }
    }

    /// Scalar specification of the decoder (bit-exact with ggml and gguf-py).
    pub fn dequantize_ref(src: &[u8], dst: &mut [f32]) {
        debug_assert_eq!(src.len() / 22 * QK, dst.len());
        for (b, out) in as_blocks::<BlockQ5_0>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK))
        {
            decode_block(b, out);
        }
    }

    /// Decoder used by the fast paths: the reference.
    pub fn dequantize(src: &[u8], dst: &mut [f32]) {
        dequantize_ref(src, dst)
    }

    /// llama.cpp's `quantize_row_q5_0_ref`: d = (value of largest magnitude)/−16,
    /// q = min(31, trunc(x/d + 16.5)).
    pub fn quantize_ref(src: &[f32], dst: &mut [u8]) {
        debug_assert_eq!(src.len() / QK * 22, dst.len());
        for (xb, b) in src.chunks_exact(QK).zip(as_blocks_mut::<BlockQ5_0>(dst)) {
            let mut amax = 0.0f32;
            let mut max = 0.0f32;
            for &v in xb {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            let d = max / -16.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut q = [0u8; QK];
            for (qj, &v) in q.iter_mut().zip(xb) {
                // x·id + 16.5 ∈ [0.5, 32.5] up to rounding: `as i8` truncates like (int8_t).
                *qj = ((v * id + 16.5) as i8).min(31) as u8;
            }
            b.d = f16_bytes(d);
            (b.qs, b.qh) = super::pack5(&q);
        }
    }

    /// Σ dequantize_ref(row)[i]·x[i] in f64, rounded once: the specification of [`dot`].
    pub fn dot_ref(row: &[u8], x: &[f32]) -> f32 {
        let mut w = vec![0.0f32; row.len() / 22 * QK];
        dequantize_ref(row, &mut w);
        simd::dot_f64(&w, x)
    }

    /// Σ w[i]·x[i]: exact scalar decode per block, SIMD multiply-add.
    pub fn dot(row: &[u8], x: &[f32]) -> f32 {
        debug_assert_eq!(row.len() / 22 * QK, x.len());
        simd::dot_decoded(row, x, decode_block)
    }
}

pub mod q5_1 {
    //! Q5_1: value = d·q + m.
    use super::super::simd::{self, QK, as_blocks, as_blocks_mut, f16_bytes, f16_le};
    use bytemuck::{Pod, Zeroable};

    /// One Q5_1 block (24 bytes, align 1).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Pod, Zeroable)]
    pub struct BlockQ5_1 {
        /// Scale, IEEE half, little-endian.
        pub d: [u8; 2],
        /// Offset (the block minimum), IEEE half, little-endian.
        pub m: [u8; 2],
        /// Fifth bits, u32 little-endian: bit j belongs to element j.
        pub qh: [u8; 4],
        /// Packed low nibbles: element j low, element j + 16 high.
        pub qs: [u8; 16],
    }

    const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);
    const _: () = assert!(std::mem::align_of::<BlockQ5_1>() == 1);

    /// ggml's decoding: `q as f32 · d`, then `+ m` (two f32 roundings).
    #[inline(always)]
    fn decode_block(b: &BlockQ5_1, out: &mut [f32]) {
        let (d, m) = (f16_le(b.d), f16_le(b.m));
        let q = super::unpack5(&b.qs, u32::from_le_bytes(b.qh));
        for (o, &qj) in out.iter_mut().zip(&q) {
            *o = qj as f32 * d + m;
        }
    }

    /// Scalar specification of the decoder (bit-exact with ggml and gguf-py).
    pub fn dequantize_ref(src: &[u8], dst: &mut [f32]) {
        debug_assert_eq!(src.len() / 24 * QK, dst.len());
        for (b, out) in as_blocks::<BlockQ5_1>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK))
        {
            decode_block(b, out);
        }
    }

    /// Decoder used by the fast paths: the reference.
    pub fn dequantize(src: &[u8], dst: &mut [f32]) {
        dequantize_ref(src, dst)
    }

    /// llama.cpp's `quantize_row_q5_1_ref`: d = (max − min)/31, m = min,
    /// q = trunc((x − min)/d + 0.5) (≤ 31 for finite input; clamped like gguf-py).
    pub fn quantize_ref(src: &[f32], dst: &mut [u8]) {
        debug_assert_eq!(src.len() / QK * 24, dst.len());
        for (xb, b) in src.chunks_exact(QK).zip(as_blocks_mut::<BlockQ5_1>(dst)) {
            let mut min = f32::MAX;
            let mut max = -f32::MAX;
            for &v in xb {
                if v < min {
                    min = v;
                }
                if v > max {
                    max = v;
                }
            }
            let d = (max - min) / 31.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut q = [0u8; QK];
            for (qj, &v) in q.iter_mut().zip(xb) {
                *qj = (((v - min) * id + 0.5) as u8).min(31);
            }
            b.d = f16_bytes(d);
            b.m = f16_bytes(min);
            (b.qs, b.qh) = super::pack5(&q);
        }
    }

    /// Σ dequantize_ref(row)[i]·x[i] in f64, rounded once: the specification of [`dot`].
    pub fn dot_ref(row: &[u8], x: &[f32]) -> f32 {
        let mut w = vec![0.0f32; row.len() / 24 * QK];
        dequantize_ref(row, &mut w);
        simd::dot_f64(&w, x)
    }

    /// Σ w[i]·x[i]: exact scalar decode per block, SIMD multiply-add.
    pub fn dot(row: &[u8], x: &[f32]) -> f32 {
        debug_assert_eq!(row.len() / 24 * QK, x.len());
        simd::dot_decoded(row, x, decode_block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::simd::f16_le;
    use crate::quant::simd::test_util::*;

    const K0: Kernels = Kernels {
        block_bytes: 22,
        scale_offsets: &[0],
        dequantize_ref: q5_0::dequantize_ref,
        dequantize: q5_0::dequantize,
        dot_ref: q5_0::dot_ref,
        dot: q5_0::dot,
        magnitude: None,
    };
    // The Q5_1 kernel multiplies decoded weights (d·q + m already rounded), so Σ|w·x| is the
    // right magnitude here.
    const K1: Kernels = Kernels {
        block_bytes: 24,
        scale_offsets: &[0, 2],
        dequantize_ref: q5_1::dequantize_ref,
        dequantize: q5_1::dequantize,
        dot_ref: q5_1::dot_ref,
        dot: q5_1::dot,
        magnitude: None,
    };

    /// A hand-made block: nibble of element j = j mod 16, fifth bit set for odd j.
    fn hand_quants() -> ([u8; 16], [u8; 4], [u8; 32]) {
        let mut q = [0u8; 32];
        for (j, qj) in q.iter_mut().enumerate() {
            *qj = (j % 16) as u8 | if j % 2 == 1 { 16 } else { 0 };
        }
        let qs: [u8; 16] = std::array::from_fn(|j| (j as u8) | ((j as u8) << 4));
        (qs, 0xAAAA_AAAAu32.to_le_bytes(), q)
    }

    #[test]
    fn hand_built_blocks_decode_to_known_values() {
        let (qs, qh, q) = hand_quants();
        assert_eq!(pack5(&q), (qs, qh));
        // Q5_0 with d = 0.5: value = 0.5·(q − 16).
        let mut b0 = vec![0x00, 0x38];
        b0.extend(qh);
        b0.extend(qs);
        let mut out = [0.0f32; 32];
        q5_0::dequantize_ref(&b0, &mut out);
        for j in 0..32 {
            assert_eq!(out[j], 0.5 * (q[j] as f32 - 16.0), "q5_0 element {j}");
        }
        // Q5_1 with d = 0.5, m = −3: value = 0.5·q − 3.
        let mut b1 = vec![0x00, 0x38, 0x00, 0xC2];
        b1.extend(qh);
        b1.extend(qs);
        q5_1::dequantize_ref(&b1, &mut out);
        for j in 0..32 {
            assert_eq!(out[j], 0.5 * q[j] as f32 - 3.0, "q5_1 element {j}");
        }
        let x = [2.0f32; 32];
        let want: f32 = q.iter().map(|&v| (0.5 * v as f32 - 3.0) * 2.0).sum();
        assert_eq!(q5_1::dot(&b1, &x), want);
        assert_eq!(q5_1::dot_ref(&b1, &x), want);
    }

    #[test]
    fn dot_matches_ref_on_random_rows() {
        check_random_rows(&K0, 60, 0.1);
        check_random_rows(&K1, 61, 0.1);
    }

    #[test]
    fn dot_matches_ref_on_edge_blocks() {
        check_edge_rows(&K0, 62);
        check_edge_rows(&K1, 63);
    }

    #[test]
    fn quantize_error_is_within_half_a_step() {
        // Q5_0: round-to-nearest of x/d + 16 with the clamp at 31 biting for x/d ≥ 15.5 (error
        // ≤ |d|); Q5_1: (x − min)/d ∈ [0, 31], no clamp, error ≤ d/2. Both plus the f16
        // rounding of the scales (times |q| ≤ 16 or 31) and a few f32 roundings.
        let mut r = rng(64);
        let src = values(&mut r, 64 * QK, 2.0);
        let mut q0 = vec![0u8; 64 * 22];
        let mut q1 = vec![0u8; 64 * 24];
        q5_0::quantize_ref(&src, &mut q0);
        q5_1::quantize_ref(&src, &mut q1);
        let (mut b0, mut b1) = (vec![0.0; src.len()], vec![0.0; src.len()]);
        q5_0::dequantize_ref(&q0, &mut b0);
        q5_1::dequantize_ref(&q1, &mut b1);
        for (bi, xb) in src.chunks_exact(QK).enumerate() {
            let max = xb
                .iter()
                .copied()
                .fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
            let d = max / -16.0;
            let d16 = f16_le([q0[bi * 22], q0[bi * 22 + 1]]);
            let min = xb.iter().copied().fold(f32::MAX, f32::min);
            let hi = xb.iter().copied().fold(-f32::MAX, f32::max);
            let d1 = (hi - min) / 31.0;
            let d116 = f16_le([q1[bi * 24], q1[bi * 24 + 1]]);
            let m16 = f16_le([q1[bi * 24 + 2], q1[bi * 24 + 3]]);
            let eps = 4.0 * f32::EPSILON * max.abs();
            for (j, &v) in xb.iter().enumerate() {
                let e0 = (v - b0[bi * QK + j]).abs();
                let bound0 = if v / d >= 15.49 {
                    d.abs()
                } else {
                    d.abs() / 2.0
                } + 16.0 * (d - d16).abs()
                    + eps;
                assert!(
                    e0 <= bound0,
                    "q5_0 block {bi} elem {j}: {v} err {e0} > {bound0}"
                );
                let e1 = (v - b1[bi * QK + j]).abs();
                let bound1 = d1 / 2.0 + 31.0 * (d1 - d116).abs() + (min - m16).abs() + eps;
                assert!(
                    e1 <= bound1,
                    "q5_1 block {bi} elem {j}: {v} err {e1} > {bound1}"
                );
            }
        }
    }

    #[test]
    fn quantize_known_blocks() {
        // Q5_0: max = −16 → d = 1, id = 1: x = k − 16 (k = 0..31) maps to q = k.
        let src: Vec<f32> = (0..32).map(|k| k as f32 - 16.0).collect();
        let mut b = [0u8; 22];
        q5_0::quantize_ref(&src, &mut b);
        assert_eq!(&b[..2], &[0x00, 0x3C]);
        let want: [u8; 32] = std::array::from_fn(|k| k as u8);
        let (qs, qh) = pack5(&want);
        assert_eq!(&b[2..6], &qh);
        assert_eq!(&b[6..], &qs);
        // Q5_1: min = −16, max = 15 → d = 1, m = −16, q = k.
        let mut b1 = [0u8; 24];
        q5_1::quantize_ref(&src, &mut b1);
        assert_eq!(&b1[..4], &[0x00, 0x3C, 0x00, 0xCC]);
        assert_eq!(&b1[4..8], &qh);
        assert_eq!(&b1[8..], &qs);
    }
}
