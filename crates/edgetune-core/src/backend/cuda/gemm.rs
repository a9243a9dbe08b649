//! Dense f32 GEMM through cuBLAS (`cublasSgemm`): `C = α·op(A)·op(B) + β·C`, row-major, the
//! adapters' products (layouts in [`GemmDims`]).
//!
//! cuBLAS is column-major. A row-major `[r, c]` matrix is the column-major `[c, r]` matrix with
//! leading dimension `c`, so the row-major product `C = op(A)·op(B)` is computed as the
//! column-major `Cᵀ = op(B)ᵀ · op(A)ᵀ`: swap the operands, keep each one's transpose flag
//! (a stored-transposed operand is already the transposed column-major matrix), and use each
//! stored matrix's row length as its leading dimension. [`sgemm_args`] is that mapping; a unit
//! test runs it through a column-major reference against the CPU backend's GEMM.

use cudarc::cublas::result as blas;
use cudarc::cublas::sys::cublasOperation_t as Op;

use super::launch::int;
use super::{CudaBackend, CudaView, CudaViewMut};
use crate::backend::{GemmDims, check_len};
use crate::{Error, Result};

/// Arguments of the column-major `sgemm(transa, transb, m, n, k, ·, A, lda, B, ldb, ·, C, ldc)`
/// computing row-major `C[m, n] = op(A)·op(B)`: the first operand is our `B`, the second our `A`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgemmArgs {
    /// Transpose the first operand (our `B`).
    pub trans_first: bool,
    /// Transpose the second operand (our `A`).
    pub trans_second: bool,
    /// Column-major rows of the result (= our `n`), columns (= our `m`), depth `k`.
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Leading dimensions of the first operand (our `B`), the second (our `A`), the result.
    pub ld_first: usize,
    pub ld_second: usize,
    pub ld_c: usize,
}

/// See the module docs.
pub fn sgemm_args(d: GemmDims) -> SgemmArgs {
    SgemmArgs {
        trans_first: d.trans_b,
        trans_second: d.trans_a,
        m: d.n,
        n: d.m,
        k: d.k,
        // Stored B is [n, k] when transposed, else [k, n]: its row length.
        ld_first: if d.trans_b { d.k } else { d.n }.max(1),
        ld_second: if d.trans_a { d.m } else { d.k }.max(1),
        ld_c: d.n.max(1),
    }
}

pub fn gemm(
    be: &CudaBackend,
    d: GemmDims,
    alpha: f32,
    a: CudaView<'_>,
    b: CudaView<'_>,
    beta: f32,
    c: CudaViewMut<'_>,
) -> Result<()> {
    check_len("gemm", "A", a.len(), d.m, d.k)?;
    check_len("gemm", "B", b.len(), d.k, d.n)?;
    check_len("gemm", "C", c.len(), d.m, d.n)?;
    if d.m == 0 || d.n == 0 {
        return Ok(());
    }
    let blas_handle = *be.blas()?.handle();
    be.bind()?;
    let s = sgemm_args(d);
    let op = |t: bool| if t { Op::CUBLAS_OP_T } else { Op::CUBLAS_OP_N };
    let i = |what: &str, v: usize| int("gemm", what, v);
    // SAFETY: lengths checked above cover every element cuBLAS reads (m·k, k·n) and writes
    // (m·n); the handle is bound to the compute stream, so the product is ordered with our
    // kernels; alpha/beta are host scalars (the default pointer mode).
    unsafe {
        blas::sgemm(
            blas_handle,
            op(s.trans_first),
            op(s.trans_second),
            i("n", s.m)?,
            i("m", s.n)?,
            i("k", s.k)?,
            &alpha,
            b.ptr() as *const f32,
            i("ldb", s.ld_first)?,
            a.ptr() as *const f32,
            i("lda", s.ld_second)?,
            &beta,
            c.ptr() as *mut f32,
            i("ldc", s.ld_c)?,
        )
    }
    .map_err(|e| Error::Invalid(format!("cuda: cublasSgemm {d:?}: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::gemm::gemm as cpu_gemm;

    /// Column-major `C = α·op(X)·op(Y) + β·C` as the BLAS reference defines it.
    #[allow(clippy::too_many_arguments)]
    fn sgemm_colmajor(s: SgemmArgs, alpha: f32, x: &[f32], y: &[f32], beta: f32, c: &mut [f32]) {
        let xe = |i: usize, p: usize| {
            if s.trans_first {
                x[p + i * s.ld_first]
            } else {
                x[i + p * s.ld_first]
            }
        };
        let ye = |p: usize, j: usize| {
            if s.trans_second {
                y[j + p * s.ld_second]
            } else {
                y[p + j * s.ld_second]
            }
        };
        for j in 0..s.n {
            for i in 0..s.m {
                let acc: f64 = (0..s.k).map(|p| xe(i, p) as f64 * ye(p, j) as f64).sum();
                let old = c[i + j * s.ld_c];
                c[i + j * s.ld_c] = alpha * acc as f32 + if beta == 0.0 { 0.0 } else { beta * old };
            }
        }
    }

    #[test]
    fn column_major_mapping_reproduces_the_row_major_gemm() {
        let (m, n, k) = (5, 3, 4);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.71).cos()).collect();
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
            let d = GemmDims {
                m,
                n,
                k,
                trans_a,
                trans_b,
            };
            let c0: Vec<f32> = (0..m * n).map(|i| i as f32 * 0.1).collect();
            let (mut want, mut got) = (c0.clone(), c0.clone());
            cpu_gemm(d, 0.5, &a, &b, 2.0, &mut want).unwrap();
            sgemm_colmajor(sgemm_args(d), 0.5, &b, &a, 2.0, &mut got);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "{d:?}: {got:?} vs {want:?}");
            }
        }
    }
}
