//! What the LoRA-derivative adapters share besides their `A`/`B` pair (`pair::LoraPair`): an owned
//! copy of the frozen base weight ([`BaseWeight`], for DoRA's norms and HiRA's Hadamard product),
//! the input dropout ([`Dropout`], one mask hash for every method), PEFT's init draws, and a
//! fixed transient buffer.
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

use super::Pass;
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

/// SplitMix64 finaliser: a well-mixed 64-bit hash of `z`.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Dropout multiplier of element `idx` of `X` `[N, in]`: `0` with probability `p`, else
/// `1/(1−p)` (`D(X) = X ⊙ M / (1−p)`).
#[inline]
pub(crate) fn dropout_factor(stream: u64, idx: usize, p: f32) -> f32 {
    let u = (mix(stream ^ mix(idx as u64)) >> 40) as f32 / (1u64 << 24) as f32;
    if u < p { 0.0 } else { 1.0 / (1.0 - p) }
}

/// Input dropout `D(X) = X ⊙ M/(1−p)` with counter-hash masks: the multiplier of element `i` of
/// the pass's `[n, in]` input is a hash of (adapter seed, pass seed, `i`), so the backward (and
/// a recomputed forward) regenerates the forward's mask without storing it.
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

    /// Scratch values per token that the dropped input `X_d` takes: `in_f` when any pass can
    /// drop, else none.
    pub fn input_len(&self, in_f: usize) -> usize {
        if self.enabled() { in_f } else { 0 }
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

    /// `v = D(v)` in place for the stream.
    pub fn apply_in_place(&self, stream: u64, v: &mut [f32]) {
        for (i, d) in v.iter_mut().enumerate() {
            *d *= dropout_factor(stream, i, self.p);
        }
    }

    /// `X_d` of `pass` for `x` `[n, in]`: `x` itself when nothing is dropped, else `D(x)` in
    /// `buf` (at least `x.len()` values; may be empty when `stream` is `None`).
    pub(crate) fn input_in<'a>(
        &self,
        stream: Option<u64>,
        x: &'a [f32],
        buf: &'a mut [f32],
    ) -> DroppedInput<'a> {
        match stream {
            Some(stream) => {
                let xd = &mut buf[..x.len()];
                self.apply(stream, x, xd);
                DroppedInput::Dropped {
                    drop: *self,
                    stream,
                    xd,
                }
            }
            None => DroppedInput::Clean(x),
        }
    }

    /// [`Dropout::input_in`] with the buffer taken off the front of `scratch` (named `method`
    /// in the error when it is short).
    pub(crate) fn input<'a>(
        &self,
        pass: Pass,
        x: &'a [f32],
        method: &str,
        scratch: &mut &'a mut [f32],
    ) -> Result<DroppedInput<'a>> {
        let stream = self.stream(pass);
        let buf = match stream {
            Some(_) => take(method, "scratch", scratch, x.len())?,
            None => &mut [],
        };
        Ok(self.input_in(stream, x, buf))
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

/// A pass's dropped input `X_d` `[n, in]` ([`Dropout::input`]).
pub(crate) enum DroppedInput<'a> {
    /// Nothing dropped this pass: `X_d = X`.
    Clean(&'a [f32]),
    /// `X_d = D(X)` in a scratch buffer, with the pass's mask stream.
    Dropped {
        drop: Dropout,
        stream: u64,
        xd: &'a mut [f32],
    },
}

impl DroppedInput<'_> {
    /// `X_d`.
    pub fn xd(&self) -> &[f32] {
        match self {
            DroppedInput::Clean(x) => x,
            DroppedInput::Dropped { xd, .. } => xd,
        }
    }

    /// `dX += D'(V)` where `write(out, β)` forms `out = V + β·out` `[n, in]`: with dropout `V`
    /// goes into the `X_d` buffer (`β = 0`; `X_d` is dead by then) and through the mask, without
    /// it straight into `dx` (`β = 1`).
    pub fn add_grad(
        self,
        dx: &mut [f32],
        write: impl FnOnce(&mut [f32], f32) -> Result<()>,
    ) -> Result<()> {
        match self {
            DroppedInput::Dropped { drop, stream, xd } => {
                write(xd, 0.0)?;
                drop.add_masked(stream, xd, dx);
                Ok(())
            }
            DroppedInput::Clean(_) => write(dx, 1.0),
        }
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
