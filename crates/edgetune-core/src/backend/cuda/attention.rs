//! Causal GQA attention forward and backward on the device (kernels/attention.cu): f32,
//! flash-style (keys in tiles of 32 in shared memory, online softmax, no `[seq, seq]` buffer),
//! any `pos0`, `head_dim ≤ 256`.
//!
//! Layouts as [`AttentionDims`]: `q`, `out`, `dout`, `dq` `[n_tokens, n_head·hd]`; `k`, `v`,
//! `dk`, `dv` `[pos0 + n_tokens, n_head_kv·hd]`; `lse` `[n_tokens, n_head]`. The backward is two
//! launches (`bwd_dq` over query tiles, `bwd_dkdv` over key tiles summing their query group),
//! which together overwrite `dq`, `dk`, `dv`.

use super::launch::{Grid, cdiv, int, kernel_args};
use super::module::allow_shared;
use super::{CudaBackend, CudaView, CudaViewMut};
use crate::backend::{AttentionDims, check_len};
use crate::{Error, Result};

/// Largest head dimension the kernels support.
pub const MAX_HEAD_DIM: usize = 256;
/// Dynamic shared memory available without raising the function's attribute.
const DEFAULT_SHMEM: usize = 48 * 1024;

/// Dynamic shared memory (bytes) of the forward, the dq and the dk/dv kernels for `hd`
/// (kernels/README.md).
pub fn shmem_bytes(hd: usize) -> (usize, usize, usize) {
    (
        4 * (4 * hd + 64 * (hd + 1)),
        4 * (8 * hd + 64 * (hd + 1)),
        4 * (64 * (hd + 1) + 16 * hd + 512),
    )
}

/// The shape checks shared with the CPU backend (crates/edgetune-core/src/backend/cpu/attention.rs), plus the
/// kernels' head-dim limit.
fn check(
    q: usize,
    k: usize,
    v: usize,
    out: usize,
    lse: Option<usize>,
    d: AttentionDims,
) -> Result<()> {
    if d.n_head_kv == 0 || !d.n_head.is_multiple_of(d.n_head_kv) || d.head_dim == 0 {
        return Err(Error::Invalid(format!(
            "attention: {} query heads cannot share {} KV heads of dim {}",
            d.n_head, d.n_head_kv, d.head_dim
        )));
    }
    if d.head_dim > MAX_HEAD_DIM {
        return Err(Error::Invalid(format!(
            "attention: the CUDA kernels support head_dim ≤ {MAX_HEAD_DIM}, got {}",
            d.head_dim
        )));
    }
    let kv_len = d.pos0.saturating_add(d.n_tokens);
    let (qw, kvw) = (d.n_head * d.head_dim, d.n_head_kv * d.head_dim);
    check_len("attention", "q", q, d.n_tokens, qw)?;
    check_len("attention", "out", out, d.n_tokens, qw)?;
    check_len("attention", "k", k, kv_len, kvw)?;
    check_len("attention", "v", v, kv_len, kvw)?;
    if let Some(l) = lse {
        check_len("attention", "lse", l, d.n_tokens, d.n_head)?;
    }
    Ok(())
}

/// The kernels' int arguments `(n_tokens, pos0, n_head, n_head_kv, head_dim)`.
fn ints(d: AttentionDims) -> Result<(i32, i32, i32, i32, i32)> {
    let op = "attention";
    int(op, "kv_len", d.pos0.saturating_add(d.n_tokens))?;
    Ok((
        int(op, "n_tokens", d.n_tokens)?,
        int(op, "pos0", d.pos0)?,
        int(op, "n_head", d.n_head)?,
        int(op, "n_head_kv", d.n_head_kv)?,
        int(op, "head_dim", d.head_dim)?,
    ))
}

/// Raises the function's shared-memory limit when `bytes` needs it.
fn shared(f: super::module::Func, bytes: usize) -> Result<()> {
    if bytes > DEFAULT_SHMEM {
        allow_shared(f, bytes as u32)?;
    }
    Ok(())
}

pub fn attention(
    be: &CudaBackend,
    q: CudaView<'_>,
    k: CudaView<'_>,
    v: CudaView<'_>,
    out: CudaViewMut<'_>,
    lse: Option<CudaViewMut<'_>>,
    d: AttentionDims,
) -> Result<()> {
    check(
        q.len(),
        k.len(),
        v.len(),
        out.len(),
        lse.as_ref().map(|l| l.len()),
        d,
    )?;
    if d.n_tokens == 0 || d.n_head == 0 {
        return Ok(());
    }
    be.bind()?;
    let (n, pos0, nh, nkv, hd) = ints(d)?;
    let lse_ptr: u64 = lse.map_or(0, |l| l.ptr());
    let (fwd_shmem, _, _) = shmem_bytes(d.head_dim);
    let f = be.kernels().attention_fwd;
    shared(f, fwd_shmem)?;
    let grid = Grid::new("attention", cdiv(d.n_tokens, 4), d.n_head, 128)?.with_shmem(fwd_shmem);
    // SAFETY: parameters as kernels/README.md (attention.cu); lengths checked above.
    unsafe {
        be.launch(
            f,
            grid,
            kernel_args![
                q.ptr(),
                k.ptr(),
                v.ptr(),
                out.ptr(),
                lse_ptr,
                n,
                pos0,
                nh,
                nkv,
                hd
            ],
        )
    }
}

#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    be: &CudaBackend,
    q: CudaView<'_>,
    k: CudaView<'_>,
    v: CudaView<'_>,
    out: CudaView<'_>,
    lse: CudaView<'_>,
    dout: CudaView<'_>,
    dq: CudaViewMut<'_>,
    dk: CudaViewMut<'_>,
    dv: CudaViewMut<'_>,
    d: AttentionDims,
) -> Result<()> {
    check(q.len(), k.len(), v.len(), out.len(), Some(lse.len()), d)?;
    let op = "attention_backward";
    check_len(op, "dout", dout.len(), 1, q.len())?;
    check_len(op, "dq", dq.len(), 1, q.len())?;
    check_len(op, "dk", dk.len(), 1, k.len())?;
    check_len(op, "dv", dv.len(), 1, v.len())?;
    if k.is_empty() {
        return Ok(());
    }
    be.bind()?;
    if d.n_tokens == 0 || d.n_head == 0 {
        // No queries: nothing flows back into the cache keys.
        super::elementwise::zero(be, dk)?;
        return super::elementwise::zero(be, dv);
    }
    let (n, pos0, nh, nkv, hd) = ints(d)?;
    let (_, dq_shmem, dkdv_shmem) = shmem_bytes(d.head_dim);
    let kern = be.kernels();
    shared(kern.attention_bwd_dq, dq_shmem)?;
    shared(kern.attention_bwd_dkdv, dkdv_shmem)?;
    let g_dq = Grid::new(op, cdiv(d.n_tokens, 4), d.n_head, 128)?.with_shmem(dq_shmem);
    let kv_len = d.pos0 + d.n_tokens;
    let g_dkdv = Grid::new(op, cdiv(kv_len, 32), d.n_head_kv, 256)?.with_shmem(dkdv_shmem);
    let (qp, kp, vp, op_, lp, dop) = (q.ptr(), k.ptr(), v.ptr(), out.ptr(), lse.ptr(), dout.ptr());
    // SAFETY: parameters as kernels/README.md (attention.cu); lengths checked above. Both
    // kernels only read the inputs; dq, dk, dv are distinct outputs.
    unsafe {
        be.launch(
            kern.attention_bwd_dq,
            g_dq,
            kernel_args![qp, kp, vp, op_, lp, dop, dq.ptr(), n, pos0, nh, nkv, hd],
        )?;
        be.launch(
            kern.attention_bwd_dkdv,
            g_dkdv,
            kernel_args![
                qp,
                kp,
                vp,
                op_,
                lp,
                dop,
                dk.ptr(),
                dv.ptr(),
                n,
                pos0,
                nh,
                nkv,
                hd
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_matches_the_abi_table() {
        // kernels/README.md: hd = 128 → 35,072 / 37,120 / 43,264 B; hd = 64 → 17,664 /
        // 18,688 / 22,784 B.
        assert_eq!(shmem_bytes(128), (35_072, 37_120, 43_264));
        assert_eq!(shmem_bytes(64), (17_664, 18_688, 22_784));
        assert!(shmem_bytes(256).2 > DEFAULT_SHMEM);
    }

    #[test]
    fn checks_name_the_bad_shape() {
        let d = AttentionDims {
            n_tokens: 2,
            pos0: 1,
            n_head: 4,
            n_head_kv: 2,
            head_dim: 8,
        };
        assert!(check(64, 48, 48, 64, Some(8), d).is_ok());
        assert!(
            check(64, 47, 48, 64, None, d)
                .unwrap_err()
                .to_string()
                .contains("k")
        );
        let big = AttentionDims { head_dim: 320, ..d };
        assert!(
            check(0, 0, 0, 0, None, big)
                .unwrap_err()
                .to_string()
                .contains("256")
        );
        let bad = AttentionDims { n_head_kv: 3, ..d };
        assert!(check(64, 48, 48, 64, None, bad).is_err());
    }
}
