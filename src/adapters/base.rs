//! What the LoRA-derivative adapters share: an owned copy of the frozen base weight
//! ([`BaseWeight`], for DoRA's norms and HiRA's Hadamard product), the input-dropout stream
//! ([`Dropout`], the same masks as LoRA's), PEFT's init draws, and a fixed transient buffer.
//!
//! # Why an owned base copy
//!
//! The [`super::Adapter`] trait never sees `Ŵ` (the trainer applies the base), and a boxed
//! adapter cannot borrow the memory-mapped file. Methods whose maths reads `Ŵ` therefore get it
//! at construction, in one of two forms; [`BaseWeight::bytes`] is what the plan must count:
//! - [`BaseWeight::Dense`]: the dequantized `Ŵ` `[out, in]` in f32, 4 bytes per weight (simple,
//!   exact; fine for small models, 0.9 GB for one 14336×4096 Llama-8B FFN matrix);
//! - [`BaseWeight::Quant`]: a copy of the quantized blocks (the file's 4.5 bits per weight for
//!   Q4_0), read with the crate's quantized kernels (`matmul_xwt`, `matmul_dyw`).

use std::sync::{Mutex, MutexGuard};

use rand::{Rng, rngs::StdRng};

use super::lora::{dropout_factor, mix};
use super::{Group, ParamBuf, ParamInfo, Pass};
use crate::backend::cpu::gemm::{GemmDims, gemm};
use crate::quant::matmul::{QuantMatrix, matmul_dyw, matmul_xwt};
use crate::quant::{self, GgmlType};
use crate::{Error, Result};

/// An owned copy of a frozen base weight `Ŵ` `[rows = out, cols = in]`.
#[derive(Clone, Debug)]
pub enum BaseWeight {
    /// Dequantized, row-major f32.
    Dense {
        rows: usize,
        cols: usize,
        w: Vec<f32>,
    },
    /// The quantized blocks of the GGUF tensor, `rows` rows of `cols` elements of `ty`.
    Quant {
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    },
}

impl BaseWeight {
    /// A dense base `[rows, cols]`; `w` must hold `rows·cols` finite values.
    pub fn dense(rows: usize, cols: usize, w: Vec<f32>) -> Result<BaseWeight> {
        if Some(w.len()) != rows.checked_mul(cols) {
            return Err(Error::Invalid(format!(
                "base weight [{rows}, {cols}] needs {} values, got {}",
                rows.saturating_mul(cols),
                w.len()
            )));
        }
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "base weight [{rows}, {cols}]: element {i} (row {}, column {}) is {}",
                i / cols.max(1),
                i % cols.max(1),
                w[i]
            )));
        }
        Ok(BaseWeight::Dense { rows, cols, w })
    }

    /// A copy of a quantized matrix's blocks (re-validated with [`QuantMatrix::new`]).
    pub fn quant(m: &QuantMatrix) -> Result<BaseWeight> {
        let m = QuantMatrix::new(m.ty, m.rows, m.cols, m.data)?;
        Ok(BaseWeight::Quant {
            ty: m.ty,
            rows: m.rows,
            cols: m.cols,
            data: m.data.to_vec(),
        })
    }

    /// Output features (`out`).
    pub fn rows(&self) -> usize {
        match self {
            BaseWeight::Dense { rows, .. } | BaseWeight::Quant { rows, .. } => *rows,
        }
    }

    /// Input features (`in`).
    pub fn cols(&self) -> usize {
        match self {
            BaseWeight::Dense { cols, .. } | BaseWeight::Quant { cols, .. } => *cols,
        }
    }

    /// Bytes held (the plan's extra memory for this copy).
    pub fn bytes(&self) -> usize {
        match self {
            BaseWeight::Dense { w, .. } => 4 * w.len(),
            BaseWeight::Quant { data, .. } => data.len(),
        }
    }

    /// `y[n, out] = x[n, in] · Ŵᵀ` (overwrites `y`).
    pub fn xwt(&self, x: &[f32], n: usize, y: &mut [f32]) -> Result<()> {
        match self {
            BaseWeight::Dense { rows, cols, w } => {
                gemm(dims(n, *rows, *cols, false, true), 1.0, x, w, 0.0, y)
            }
            BaseWeight::Quant {
                ty,
                rows,
                cols,
                data,
            } => matmul_xwt(x, n, &qm(*ty, *rows, *cols, data), y),
        }
    }

    /// `dx[n, in] = dy[n, out] · Ŵ` (overwrites `dx`).
    pub fn dyw(&self, dy: &[f32], n: usize, dx: &mut [f32]) -> Result<()> {
        match self {
            BaseWeight::Dense { rows, cols, w } => {
                gemm(dims(n, *cols, *rows, false, false), 1.0, dy, w, 0.0, dx)
            }
            BaseWeight::Quant {
                ty,
                rows,
                cols,
                data,
            } => matmul_dyw(dy, n, &qm(*ty, *rows, *cols, data), dx),
        }
    }

    /// Rows `r0..r0 + k` of `Ŵ` as f32 `[k, in]`: borrowed from a dense base, dequantized into
    /// `buf` (at least `k·in` values) from a quantized one.
    pub fn rows_f32<'a>(&'a self, r0: usize, k: usize, buf: &'a mut [f32]) -> Result<&'a [f32]> {
        let (rows, cols) = (self.rows(), self.cols());
        if r0.checked_add(k).is_none_or(|e| e > rows) {
            return Err(Error::Invalid(format!(
                "base weight rows {r0}..{} outside [0, {rows})",
                r0.saturating_add(k)
            )));
        }
        match self {
            BaseWeight::Dense { w, .. } => Ok(&w[r0 * cols..(r0 + k) * cols]),
            BaseWeight::Quant { ty, data, .. } => {
                let rb = data.len() / rows.max(1);
                let have = buf.len();
                let dst = buf.get_mut(..k * cols).ok_or_else(|| {
                    Error::Invalid(format!(
                        "base weight: row buffer of {have} values, need {}",
                        k * cols
                    ))
                })?;
                quant::dequantize(*ty, &data[r0 * rb..(r0 + k) * rb], dst)?;
                Ok(dst)
            }
        }
    }

    /// The whole `Ŵ` `[out, in]` in f32 (allocates; merges and tests).
    pub fn to_dense(&self) -> Result<Vec<f32>> {
        let mut buf = vec![0.0; self.rows() * self.cols()];
        let w = self.rows_f32(0, self.rows(), &mut buf)?.to_vec();
        Ok(w)
    }

    /// `‖Ŵ_{o,:}‖²` for every row, f64 sums (`[out]`).
    pub fn row_norms_sq(&self) -> Result<Vec<f64>> {
        let mut buf = vec![0.0; self.cols()];
        (0..self.rows())
            .map(|o| {
                let row = self.rows_f32(o, 1, &mut buf)?;
                Ok(row.iter().map(|&v| (v as f64) * (v as f64)).sum())
            })
            .collect()
    }
}

/// A view of validated owned blocks.
fn qm(ty: GgmlType, rows: usize, cols: usize, data: &[u8]) -> QuantMatrix<'_> {
    QuantMatrix {
        ty,
        rows,
        cols,
        data,
        compute: Default::default(),
    }
}

/// Input dropout `D(X) = X ⊙ M/(1−p)`, with LoRA's counter-hash masks: element `i` of the pass's
/// `[n, in]` input gets the same multiplier in the forward, the backward and any recompute.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub p: f32,
    /// The adapter's own seed (mixed with the pass seed, so layers get different masks).
    pub seed: u64,
}

impl Dropout {
    /// Rejects `p` outside `[0, 1)`.
    pub fn new(p: f32, seed: u64) -> Result<Dropout> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::Invalid(format!("dropout {p} is outside [0, 1)")));
        }
        Ok(Dropout { p, seed })
    }

    /// Whether any pass can drop (decides the workspace).
    pub fn enabled(&self) -> bool {
        self.p > 0.0
    }

    /// The mask stream of `pass`, `None` when dropout is off or `pass` is not training.
    pub fn stream(&self, pass: Pass) -> Option<u64> {
        (pass.training && self.p > 0.0).then(|| mix(self.seed ^ mix(pass.seed)))
    }

    /// `xd = D(x)` for the stream.
    pub fn apply(&self, stream: u64, x: &[f32], xd: &mut [f32]) {
        for (i, (d, &v)) in xd.iter_mut().zip(x).enumerate() {
            *d = v * dropout_factor(stream, i, self.p);
        }
    }

    /// `dx += D'(v)` for the stream.
    pub fn add_masked(&self, stream: u64, v: &[f32], dx: &mut [f32]) {
        for (i, (d, &g)) in dx.iter_mut().zip(v).enumerate() {
            *d += g * dropout_factor(stream, i, self.p);
        }
    }

    /// The multipliers `M/(1−p)` `[n, in]` of `pass` (`None` when off): for references and
    /// tests (allocates).
    pub fn mask(&self, pass: Pass, in_f: usize) -> Option<Vec<f32>> {
        let stream = self.stream(pass)?;
        Some(
            (0..pass.n * in_f)
                .map(|i| dropout_factor(stream, i, self.p))
                .collect(),
        )
    }
}

/// PEFT's kaiming-uniform(a=√5) for a `[rows, fan_in]` tensor: i.i.d. `U(−1/√fan_in, 1/√fan_in)`
/// (docs/METHODS.md#initialisation).
pub fn kaiming_uniform(rng: &mut StdRng, fan_in: usize, out: &mut [f32]) {
    let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
    for v in out {
        *v = rng.random_range(-bound..bound);
    }
}

/// i.i.d. `N(0, std²)` by Box–Muller (rand 0.9 without `rand_distr`).
pub fn normal(rng: &mut StdRng, std: f64, out: &mut [f32]) {
    let mut spare: Option<f64> = None;
    for v in out {
        let z = match spare.take() {
            Some(z) => z,
            None => {
                // u1 in (0, 1] so ln(u1) is finite.
                let u1: f64 = 1.0 - rng.random::<f64>();
                let u2: f64 = rng.random::<f64>();
                let rad = (-2.0 * u1.ln()).sqrt();
                let th = std::f64::consts::TAU * u2;
                spare = Some(rad * th.sin());
                rad * th.cos()
            }
        };
        *v = (std * z) as f32;
    }
}

/// A fixed-size f32 buffer owned by an adapter for transients that are not per token (a tile of
/// `Ŵ`, `Ŵ·Aᵀ`): allocated at construction, so a step never allocates. The mutex makes the
/// `&self` forward/backward usable from any thread; layers run one at a time, so it is
/// uncontended.
#[derive(Debug, Default)]
pub struct Transient(Mutex<Vec<f32>>);

impl Transient {
    pub fn new(len: usize) -> Transient {
        Transient(Mutex::new(vec![0.0; len]))
    }

    /// The buffer (a poisoned lock only means an earlier call panicked mid-way: the contents
    /// are scratch, so it is reused).
    pub fn lock(&self) -> MutexGuard<'_, Vec<f32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * self.lock().len()
    }
}

impl Clone for Transient {
    fn clone(&self) -> Self {
        Transient::new(self.lock().len())
    }
}

/// Takes `len` values off the front of `buf`, or names the short workspace.
pub(crate) fn take<'a>(
    method: &str,
    what: &str,
    buf: &mut &'a mut [f32],
    len: usize,
) -> Result<&'a mut [f32]> {
    if buf.len() < len {
        return Err(Error::Invalid(format!(
            "{method}: {what} workspace has {} values, needs at least {len} more",
            buf.len()
        )));
    }
    let (head, tail) = std::mem::take(buf).split_at_mut(len);
    *buf = tail;
    Ok(head)
}

/// [`GemmDims`] in one line.
pub(crate) fn dims(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> GemmDims {
    GemmDims {
        m,
        n,
        k,
        trans_a,
        trans_b,
    }
}

/// The `ParamInfo` pair of a LoRA-shaped adapter: `A [rank, in]` (group A) and `B [out, rank]`
/// (group B) named `a_name` / `b_name` (PEFT's `lora_A` / `lora_B` unless the method has its
/// own names). Methods with more tensors append theirs.
pub(crate) fn lora_pair_params(
    a_name: &'static str,
    b_name: &'static str,
    rank: usize,
    in_f: usize,
    out_f: usize,
) -> Vec<ParamInfo> {
    vec![
        ParamInfo {
            name: a_name,
            shape: vec![rank, in_f],
            group: Group::A,
        },
        ParamInfo {
            name: b_name,
            shape: vec![out_f, rank],
            group: Group::B,
        },
    ]
}

/// Parameter `i` of an adapter whose parameters are `tensors` in [`Adapter::params`] order.
///
/// [`Adapter::params`]: super::Adapter::params
pub(crate) fn nth_param<const N: usize>(tensors: [&ParamBuf; N], i: usize) -> Option<&ParamBuf> {
    tensors.get(i).copied()
}

/// [`nth_param`], writable.
pub(crate) fn nth_param_mut<const N: usize>(
    tensors: [&mut ParamBuf; N],
    i: usize,
) -> Option<&mut ParamBuf> {
    tensors.into_iter().nth(i)
}
