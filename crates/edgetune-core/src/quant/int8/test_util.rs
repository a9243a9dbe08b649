//! Shared checks of the integer kernels: random weight rows of a type, activations quantized
//! with the type's activation format, and every kernel against its reference.

use super::act::quantize_row_ref;
use super::{ActRow, IntType, Level, UnpackFn, dot_mag, dot_ref, int_type};
use crate::quant::GgmlType;
use crate::quant::simd::test_util::values;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Byte offsets of the f16 fields of one block of `ty` (random bytes there become sane scales).
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        GgmlType::Q4_1 | GgmlType::Q5_1 => &[0, 2],
        _ => &[0],
    }
}

/// `rows` random rows of `cols` elements of `ty`: quantized random values where edgetune
/// quantizes to `ty`, random bytes with finite f16 scales of a realistic size otherwise. Half
/// the rows are random bytes either way, which reaches every level (e.g. Q8_0's −128).
pub(crate) fn random_rows(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut r = StdRng::seed_from_u64(seed);
    let t = ty.traits();
    let row_bytes = cols / t.block_elems * t.block_bytes;
    let mut out = vec![0u8; rows * row_bytes];
    for (i, row) in out.chunks_exact_mut(row_bytes).enumerate() {
        match t.quantize_ref {
            Some(q) if i % 2 == 0 => q(&values(&mut r, cols, 0.05), row),
            _ => {
                row.iter_mut().for_each(|b| *b = r.random());
                for blk in row.chunks_exact_mut(t.block_bytes) {
                    for &o in f16_fields(ty) {
                        let v = half::f16::from_f32(r.random_range(-0.01f32..0.01));
                        blk[o..o + 2].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
    }
    out
}

/// Owned quantized activations of one row, in `it`'s format.
pub(crate) struct Acts {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub isum: Vec<i32>,
    pub dsum: Vec<f32>,
}

impl Acts {
    pub(crate) fn new(it: &IntType, x: &[f32]) -> Acts {
        let ns = x.len() / it.sub;
        let mut a = Acts {
            qs: vec![0; x.len()],
            d: vec![0.0; ns],
            isum: vec![0; ns],
            dsum: vec![0.0; ns],
        };
        quantize_row_ref(
            x,
            it.act.block(),
            it.sub,
            &mut a.qs,
            &mut a.d,
            &mut a.isum,
            &mut a.dsum,
        );
        a
    }

    pub(crate) fn row(&self) -> ActRow<'_> {
        ActRow {
            qs: &self.qs,
            d: &self.d,
            isum: &self.isum,
            dsum: &self.dsum,
        }
    }
}

/// The tolerance of an f32 kernel against the f64 reference: `steps` roundings of magnitude
/// Σ|w·x̂| each (first-order bound γ_steps), doubled.
pub(crate) fn assert_close(got: f32, want: f32, mag: f64, steps: usize, what: &str) {
    let tol = 2.0 * steps as f64 * f32::EPSILON as f64 * mag + 1e-30;
    let d = (got as f64 - want as f64).abs();
    assert!(
        d <= tol,
        "{what}: {got:e} vs {want:e}: |Δ| {d:e} > {tol:e} (mag {mag:e})"
    );
}

/// Checks `unpack` against the reference decoder and every level's matrix-vector kernel of
/// `ty` against [`dot_ref`], on rows of 1, 2 and 5 blocks-of-256.
pub(crate) fn check_type(ty: GgmlType, unpack_ref: UnpackFn, seed: u64) {
    let it = int_type(ty).expect("an integer type");
    assert_eq!(it.ty, ty);
    for cols in [256, 512, 1280] {
        let rows = 6;
        let data = random_rows(ty, rows, cols, seed);
        let rb = data.len() / rows;
        let mut r = StdRng::seed_from_u64(seed + 100);
        for row in data.chunks_exact(rb) {
            // unpack: a·(u − Z) + m is the reference decoder, bit for bit.
            let ns = cols / it.sub;
            let (mut u, mut a, mut m) = (vec![0u8; cols], vec![0.0f32; ns], vec![0.0f32; ns]);
            unpack_ref(row, &mut u, &mut a, &mut m);
            let (mut u2, mut a2, mut m2) = (vec![0u8; cols], vec![0.0f32; ns], vec![0.0f32; ns]);
            (it.unpack)(row, &mut u2, &mut a2, &mut m2);
            assert_eq!(
                (&u, &a, &m),
                (&u2, &a2, &m2),
                "{ty}: unpack differs from unpack_ref"
            );
            let mut w = vec![0.0f32; cols];
            (ty.traits().dequantize_ref)(row, &mut w);
            for i in 0..cols {
                let j = i / it.sub;
                let v = a[j] * (u[i] as i32 - it.zero as i32) as f32 + m[j];
                assert_eq!(
                    v, w[i],
                    "{ty} element {i}: unpacked {v} vs dequantize_ref {}",
                    w[i]
                );
            }
            if !it.has_min {
                assert!(
                    m.iter().all(|&v| v == 0.0),
                    "{ty}: a min in a type without mins"
                );
            }
            // Every level's kernel against the reference.
            let x = values(&mut r, cols, 1.0);
            let acts = Acts::new(it, &x);
            let act = acts.row();
            let want = dot_ref(ty, row, &act, it.sub);
            let mag = dot_mag(ty, row, &act, it.sub);
            for level in Level::available() {
                if let Some(gemv) = (it.gemv)(level) {
                    let mut got = [0.0f32; 2];
                    // Two copies of the row: the rows loop, and the same value twice.
                    let two = [row, row].concat();
                    gemv(&two, row.len(), &act, &mut got);
                    assert_eq!(got[0].to_bits(), got[1].to_bits());
                    let got = got[0];
                    // Per sub-block: exact integer sum, one conversion, the scale product and
                    // its FMA, the min FMA; then one accumulator step per block and a final
                    // reduction of at most 16 lanes.
                    let steps = 8 + cols / it.sub + 16;
                    assert_close(
                        got,
                        want,
                        mag,
                        steps,
                        &format!("{ty} {} cols {cols}", level.name()),
                    );
                }
            }
        }
    }
    // Where this CPU has integer kernels, the type must have one.
    let best = Level::detect();
    if best != Level::Scalar {
        assert!(
            (it.gemv)(best).is_some(),
            "{ty}: no kernel for {}",
            best.name()
        );
    }
}
