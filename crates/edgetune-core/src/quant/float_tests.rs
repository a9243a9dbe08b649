//! Tests of the float types (quant/float.rs): F16 and BF16 encoding against their rounding rules
//! and known patterns, dot products and dequantization against their `_ref`s.

use super::*;
use crate::quant::simd::test_util::*;

type Pair = (fn(&[u8], &[f32]) -> f32, fn(&[u8], &[f32]) -> f32);

/// dot vs dot_ref for lengths 0..=300 (all SIMD tails) with random finite values.
fn check_dots(
    elem: usize,
    dots: Pair,
    decode: fn(&[u8], &mut [f32]),
    encode: fn(&[f32], &mut [u8]),
    seed: u64,
) {
    let mut r = rng(seed);
    for n in (0..=70).chain([255, 256, 257, 300, 1000]) {
        let w = values(&mut r, n, 2.0);
        let mut row = vec![0u8; n * elem];
        encode(&w, &mut row);
        for xs in [1e-20f32, 1.0, 1e15] {
            let x = values(&mut r, n, xs);
            let mut wd = vec![0.0; n];
            decode(&row, &mut wd);
            let mag: f64 = wd
                .iter()
                .zip(&x)
                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                .sum();
            // Four-accumulator lanes see about n/32 steps each, plus the tail and reduction.
            let steps = n / 8 + 24;
            assert_dot_close(
                (dots.0)(&row, &x),
                (dots.1)(&row, &x),
                mag,
                steps,
                &format!("n {n}"),
            );
        }
    }
}

fn check_dequantize_bits(
    elem: usize,
    a: fn(&[u8], &mut [f32]),
    b: fn(&[u8], &mut [f32]),
    seed: u64,
) {
    let mut r = rng(seed);
    for n in [0usize, 1, 7, 8, 9, 33, 1000] {
        let row = bytes(&mut r, n * elem);
        let (mut x, mut y) = (vec![0.0; n], vec![0.0; n]);
        a(&row, &mut x);
        b(&row, &mut y);
        assert_bits_eq(&x, &y, &format!("n {n}"));
    }
    // Every 16-bit pattern, including subnormals, infinities and NaN payloads.
    let all: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
    let (mut x, mut y) = (vec![0.0; 65536], vec![0.0; 65536]);
    if elem == 2 {
        a(&all, &mut x);
        b(&all, &mut y);
        assert_bits_eq(&x, &y, "all halves");
    }
}

#[test]
fn f32_round_trips_and_dots() {
    let v = [1.5f32, -0.0, f32::MIN_POSITIVE, f32::INFINITY, 3.25e-42];
    let mut b = [0u8; 20];
    fp32::quantize_ref(&v, &mut b);
    let mut back = [0.0f32; 5];
    fp32::dequantize(&b, &mut back);
    assert_bits_eq(&back, &v, "f32");
    check_dots(
        4,
        (fp32::dot, fp32::dot_ref),
        fp32::dequantize_ref,
        fp32::quantize_ref,
        1,
    );
    // A misaligned row takes the copying path.
    let w = [1.0f32, 2.0, 3.0];
    let mut words = [0u32; 4];
    let buf = &mut bytemuck::bytes_of_mut(&mut words)[1..13]; // 4-aligned + 1: misaligned
    fp32::quantize_ref(&w, buf);
    assert_eq!(fp32::dot(buf, &[1.0, 1.0, 2.0]), 9.0);
}

#[test]
fn f16_dot_and_dequantize_match_refs() {
    check_dots(
        2,
        (fp16::dot, fp16::dot_ref),
        fp16::dequantize_ref,
        fp16::quantize_ref,
        2,
    );
    check_dequantize_bits(2, fp16::dequantize_ref, fp16::dequantize, 3);
}

/// Every 16-bit pattern through the SIMD dot (one pattern in a 16-wide row, the rest
/// zeros, x all ones): exercises the vector widening of subnormals, ±inf and NaN.
#[test]
fn every_pattern_through_simd_dot() {
    let x = [1.0f32; 16];
    for (dot, decode) in [
        (
            fp16::dot as fn(&[u8], &[f32]) -> f32,
            fp16::dequantize_ref as fn(&[u8], &mut [f32]),
        ),
        (bf16::dot, bf16::dequantize_ref),
    ] {
        for h in 0..=u16::MAX {
            let mut row = [0u8; 32];
            row[6..8].copy_from_slice(&h.to_le_bytes());
            let mut w = [0.0f32; 16];
            decode(&row, &mut w);
            let got = dot(&row, &x);
            assert!(
                got.to_bits() == w[3].to_bits() || got == w[3] || (got.is_nan() && w[3].is_nan()),
                "{h:#06x}: {got:e} vs {:e}",
                w[3]
            );
        }
    }
}

#[test]
fn f16_decodes_known_patterns() {
    let cases: [(u16, f32); 7] = [
        (0x3C00, 1.0),
        (0xC000, -2.0),
        (0x7BFF, 65504.0),
        (0x0001, 5.960_464_5e-8), // 2^-24
        (0x0400, 6.103_515_6e-5), // 2^-14
        (0x7C00, f32::INFINITY),
        (0x8000, -0.0),
    ];
    for (h, v) in cases {
        let mut out = [0.0f32];
        fp16::dequantize_ref(&h.to_le_bytes(), &mut out);
        assert_eq!(out[0].to_bits(), v.to_bits(), "{h:#06x}");
    }
    let mut out = [0.0f32];
    fp16::dequantize_ref(&0x7E00u16.to_le_bytes(), &mut out);
    assert!(out[0].is_nan());
}

#[test]
fn f16_encoding_rounds_to_nearest_even() {
    let enc = |v: f32| {
        let mut b = [0u8; 2];
        fp16::quantize_ref(&[v], &mut b);
        u16::from_le_bytes(b)
    };
    let ulp = 2f32.powi(-10); // spacing of halves in [1, 2)
    assert_eq!(enc(1.0 + ulp / 2.0), 0x3C00); // tie → even (down)
    assert_eq!(enc(1.0 + 1.5 * ulp), 0x3C02); // tie → even (up)
    assert_eq!(enc(1.0 + ulp / 2.0 + 1e-7), 0x3C01); // above the tie
    assert_eq!(enc(65504.0), 0x7BFF);
    assert_eq!(enc(65519.0), 0x7BFF); // below the overflow threshold 65520
    assert_eq!(enc(65520.0), 0x7C00); // ties to even: overflows to inf
    assert_eq!(enc(1e10), 0x7C00);
    assert_eq!(enc(-1e10), 0xFC00);
    assert_eq!(enc(f32::INFINITY), 0x7C00);
    assert_eq!(enc(2f32.powi(-25)), 0x0000); // half of the smallest subnormal: tie → 0
    assert_eq!(enc(1.5 * 2f32.powi(-24)), 0x0002); // tie between 1 and 2 subnormal ulps → 2
    assert_eq!(enc(-0.0), 0x8000);
    let nan = enc(f32::NAN);
    assert!(nan & 0x7C00 == 0x7C00 && nan & 0x03FF != 0, "{nan:#06x}");
}

#[test]
fn bf16_dot_and_dequantize_match_refs() {
    check_dots(
        2,
        (bf16::dot, bf16::dot_ref),
        bf16::dequantize_ref,
        bf16::quantize_ref,
        4,
    );
    check_dequantize_bits(2, bf16::dequantize_ref, bf16::dequantize, 5);
}

#[test]
fn bf16_encoding_matches_ggml_rules() {
    assert_eq!(bf16::from_f32(1.0), 0x3F80);
    assert_eq!(bf16::from_f32(-2.0), 0xC000);
    // 1 + 2^-8 is halfway between bf16 1.0 (even) and 1 + 2^-7: ties to even → 1.0.
    assert_eq!(bf16::from_f32(f32::from_bits(0x3F80_8000)), 0x3F80);
    // 1 + 3·2^-8 is halfway between 0x3F81 (odd) and 0x3F82 (even) → 0x3F82.
    assert_eq!(bf16::from_f32(f32::from_bits(0x3F81_8000)), 0x3F82);
    assert_eq!(bf16::from_f32(f32::from_bits(0x3F80_8001)), 0x3F81); // above the tie
    assert_eq!(bf16::from_f32(f32::MAX), 0x7F80); // rounds up to inf
    assert_eq!(bf16::from_f32(f32::INFINITY), 0x7F80);
    assert_eq!(bf16::from_f32(f32::NEG_INFINITY), 0xFF80);
    assert_eq!(bf16::from_f32(-0.0), 0x8000);
    // Signalling NaN with payload only in the low bits: quiet bit forced, stays NaN.
    assert_eq!(bf16::from_f32(f32::from_bits(0x7F80_0001)), 0x7FC0);
    assert_eq!(bf16::from_f32(f32::from_bits(0xFFA0_0000)), 0xFFE0);
    let mut out = [0.0f32; 2];
    bf16::dequantize_ref(&[0x80, 0x3F, 0x01, 0x80], &mut out);
    assert_eq!(out[0], 1.0);
    assert_eq!(out[1].to_bits(), 0x8001_0000);
}
