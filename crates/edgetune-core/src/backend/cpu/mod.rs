//! The CPU backend: buffers are `Vec<f32>`, views are slices, weights are [`QuantMatrix`] views
//! of the mapped file; ops are rayon-parallel with autovectorisable inner loops.
//!
//! Each op family lives in its own file with its fast version, a plain scalar `*_ref` (the
//! specification, f64 accumulation where it matters) and tests comparing the two.

pub mod attention;
pub mod bf16_pack;
pub mod cross_entropy;
pub mod cross_entropy_kl;
pub mod cross_entropy_vocab;
pub mod elementwise;
pub mod embedding;
pub mod gemm;
pub mod matmul;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;

use std::ops::Range;

use super::{AttentionDims, Backend, RopeDims};
use crate::quant::matmul::QuantMatrix;
use crate::{Error, Result};
use gemm::GemmDims;

/// The CPU backend (stateless; rayon's global pool does the threading).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

fn range_err(range: &Range<usize>, len: usize) -> Error {
    Error::Invalid(format!(
        "view range {}..{} is outside a view of {len} values",
        range.start, range.end
    ))
}

/// The element type of the generic scalar references of the backward ops (`f32` for parity with
/// the fast kernels, `f64` for the finite-difference checks). The references compute in f64 and
/// round only on input and output, so their two instantiations differ by those roundings alone.
pub trait Real: Copy + Send + Sync + 'static {
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

impl Real for f32 {
    #[inline]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline]
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
}

impl Real for f64 {
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline]
    fn from_f64(v: f64) -> f64 {
        v
    }
}

/// `Σ a[i]·b[i]` in f32 with 8 independent accumulators, so the loop vectorises (a single
/// accumulator would force a sequential order of additions).
#[inline]
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 8];
    let (ac, ar) = (a.chunks_exact(8), a.chunks_exact(8).remainder());
    let br = b.chunks_exact(8).remainder();
    for (x, y) in ac.zip(b.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

impl Backend for CpuBackend {
    type Buffer = Vec<f32>;
    type View<'a> = &'a [f32];
    type ViewMut<'a> = &'a mut [f32];
    type Weight<'w> = QuantMatrix<'w>;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        let mut v = Vec::new();
        v.try_reserve_exact(len).map_err(|_| {
            Error::Invalid(format!(
                "cannot allocate a buffer of {len} f32 ({} bytes)",
                len as u128 * 4
            ))
        })?;
        v.resize(len, 0.0);
        Ok(v)
    }

    fn buffer_from(&self, src: &[f32]) -> Result<Vec<f32>> {
        Ok(src.to_vec())
    }

    fn buffer_len(buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn view(buf: &Vec<f32>) -> &[f32] {
        buf
    }

    fn view_mut(buf: &mut Vec<f32>) -> &mut [f32] {
        buf
    }

    fn slice<'a>(v: Self::View<'a>, range: Range<usize>) -> Result<Self::View<'a>> {
        let len = v.len();
        v.get(range.clone()).ok_or_else(|| range_err(&range, len))
    }

    fn slice_mut<'a>(v: Self::ViewMut<'a>, range: Range<usize>) -> Result<Self::ViewMut<'a>> {
        let len = v.len();
        v.get_mut(range.clone())
            .ok_or_else(|| range_err(&range, len))
    }

    fn split_mut<'a, const N: usize>(
        v: Self::ViewMut<'a>,
        ranges: [Range<usize>; N],
    ) -> Result<[Self::ViewMut<'a>; N]> {
        let order = super::disjoint_order(&ranges, v.len())?;
        let mut out: [&'a mut [f32]; N] = std::array::from_fn(|_| Default::default());
        let (mut rest, mut base) = (v, 0);
        for i in order {
            let r = &ranges[i];
            if r.start == r.end {
                continue; // empty: stays the default empty slice
            }
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(r.start - base);
            let (mid, tail) = tail.split_at_mut(r.end - r.start);
            out[i] = mid;
            (rest, base) = (tail, r.end);
        }
        Ok(out)
    }

    fn freeze<'a>(v: Self::ViewMut<'a>) -> Self::View<'a> {
        v
    }

    fn upload(&self, src: &[f32], dst: &mut [f32]) -> Result<()> {
        super::check_len("upload", "destination", dst.len(), 1, src.len())?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn copy(&self, src: &[f32], dst: &mut [f32], len: usize) -> Result<()> {
        super::check_len("copy", "source", src.len(), 1, len)?;
        super::check_len("copy", "destination", dst.len(), 1, len)?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn download(&self, src: &[f32], dst: &mut [f32]) -> Result<()> {
        super::check_len("download", "destination", dst.len(), 1, src.len())?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn weight<'w>(&self, m: QuantMatrix<'w>) -> Result<QuantMatrix<'w>> {
        Ok(m)
    }

    fn embedding(&self, table: &QuantMatrix<'_>, tokens: &[u32], out: &mut [f32]) -> Result<()> {
        embedding::embedding(table, tokens, out)
    }

    fn rmsnorm(
        &self,
        x: &[f32],
        w: &[f32],
        eps: f32,
        y: &mut [f32],
        rstd: Option<&mut [f32]>,
    ) -> Result<()> {
        rmsnorm::rmsnorm(x, w, eps, y, rstd)
    }

    fn matmul_xwt(&self, x: &[f32], n: usize, w: &QuantMatrix<'_>, y: &mut [f32]) -> Result<()> {
        matmul::matmul_xwt(x, n, w, y)
    }

    fn rope(&self, x: &mut [f32], inv_freq: &[f32], dims: RopeDims) -> Result<()> {
        rope::rope(x, inv_freq, dims)
    }

    fn attention(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
        lse: Option<&mut [f32]>,
        dims: AttentionDims,
    ) -> Result<()> {
        attention::attention(q, k, v, out, lse, dims)
    }

    fn swiglu(&self, gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<()> {
        swiglu::swiglu(gate, up, out)
    }

    fn add_assign(&self, x: &mut [f32], y: &[f32]) -> Result<()> {
        elementwise::add_assign(x, y)
    }

    fn gemm(
        &self,
        dims: GemmDims,
        alpha: f32,
        a: &[f32],
        b: &[f32],
        beta: f32,
        c: &mut [f32],
    ) -> Result<()> {
        gemm::gemm(dims, alpha, a, b, beta, c)
    }

    fn matmul_dyw(&self, dy: &[f32], n: usize, w: &QuantMatrix<'_>, dx: &mut [f32]) -> Result<()> {
        matmul::matmul_dyw(dy, n, w, dx)
    }

    fn rmsnorm_backward(
        &self,
        x: &[f32],
        w: &[f32],
        rstd: &[f32],
        dy: &[f32],
        dx: &mut [f32],
    ) -> Result<()> {
        rmsnorm::rmsnorm_backward(x, w, rstd, dy, dx)
    }

    fn rope_backward(&self, dy: &mut [f32], inv_freq: &[f32], dims: RopeDims) -> Result<()> {
        rope::rope_backward(dy, inv_freq, dims)
    }

    fn swiglu_backward(
        &self,
        gate: &[f32],
        up: &[f32],
        dh: &[f32],
        dgate: &mut [f32],
        dup: &mut [f32],
    ) -> Result<()> {
        swiglu::swiglu_backward(gate, up, dh, dgate, dup)
    }

    fn attention_backward(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &[f32],
        lse: &[f32],
        dout: &[f32],
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
        dims: AttentionDims,
    ) -> Result<()> {
        attention::attention_backward(q, k, v, out, lse, dout, dq, dk, dv, dims)
    }

    fn cross_entropy(
        &self,
        h: &[f32],
        w: &QuantMatrix<'_>,
        targets: &[i32],
        scale: f32,
        chunk: usize,
        logits: &mut [f32],
        dh: &mut [f32],
    ) -> Result<f64> {
        cross_entropy::cross_entropy(h, w, targets, scale, chunk, logits, dh)
    }
}

/// Test helpers shared by the op files: seeded random data and a closeness check.
#[cfg(test)]
pub(crate) mod test_util {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    pub fn random(n: usize, scale: f32, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-scale..scale)).collect()
    }

    /// The blocks of a seeded random `[rows, cols]` matrix (values in ±0.5) quantized to `ty`.
    pub fn quantized(ty: crate::quant::GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let values = random(rows * cols, 0.5, seed);
        let mut bytes = vec![0u8; ty.bytes_for((rows * cols) as u64).unwrap() as usize];
        crate::quant::quantize(ty, &values, &mut bytes).unwrap();
        bytes
    }

    /// Asserts `|a − b| ≤ tol · max(1, |b|)` element-wise, reporting the worst index.
    pub fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let mut worst = (0usize, 0.0f32);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let err = (x - y).abs() / y.abs().max(1.0);
            assert!(err.is_finite(), "{what}: non-finite at {i}: {x} vs {y}");
            if err > worst.1 {
                worst = (i, err);
            }
        }
        assert!(
            worst.1 <= tol,
            "{what}: worst relative error {} at {} ({} vs {}), tolerance {tol}",
            worst.1,
            worst.0,
            a[worst.0],
            b[worst.0]
        );
    }
}
