//! LoRA and rsLoRA (docs/METHODS.md#the-lora-branch, #lora-and-rslora): `y += s · D(x)·Aᵀ·Bᵀ` with
//! `A` `[r, in]`, `B` `[out, r]`, f32 master weights, PEFT init, optional input dropout; LoRA+ is
//! only the optimizer groups ([`super::Group`]).
//!
//! Forward / backward (docs/METHODS.md#the-lora-branch), `X_d = D(X)`:
//! `H = X_d·Aᵀ` `[N, r]` (saved), `Y += s·H·Bᵀ`;
//! `dB = s·Gᵀ·H`, `dH = s·G·B`, `dA = dHᵀ·X_d`, `dX += D'(dH·A)`.
//! Dropout masks come from a counter-based hash of (adapter seed, pass seed, element index),
//! so the backward (and a recomputed forward) regenerates the forward's mask without storing it.

use std::str::FromStr;

use super::base::{Dropout, dims as d};
use super::pair::LoraPair;
use super::{Adapter, Export, ParamBuf, ParamInfo, Pass, Workspace};
use crate::backend::check_len;
use crate::backend::cpu::Real;
use crate::backend::cpu::gemm::gemm_ref;
use crate::{Error, Result};

/// A linear layer of a Llama block that can carry an adapter (serialised as its GGUF stem).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    FfnGate,
    FfnUp,
    FfnDown,
}

impl Target {
    /// All seven, in block order (the default target set).
    pub const ALL: [Target; 7] = [
        Target::AttnQ,
        Target::AttnK,
        Target::AttnV,
        Target::AttnOutput,
        Target::FfnGate,
        Target::FfnUp,
        Target::FfnDown,
    ];

    /// The GGUF tensor-name stem (`blk.N.<stem>.weight`).
    pub fn gguf_stem(self) -> &'static str {
        match self {
            Target::AttnQ => "attn_q",
            Target::AttnK => "attn_k",
            Target::AttnV => "attn_v",
            Target::AttnOutput => "attn_output",
            Target::FfnGate => "ffn_gate",
            Target::FfnUp => "ffn_up",
            Target::FfnDown => "ffn_down",
        }
    }

    /// The PEFT / Hugging Face module name.
    pub fn peft_name(self) -> &'static str {
        match self {
            Target::AttnQ => "q_proj",
            Target::AttnK => "k_proj",
            Target::AttnV => "v_proj",
            Target::AttnOutput => "o_proj",
            Target::FfnGate => "gate_proj",
            Target::FfnUp => "up_proj",
            Target::FfnDown => "down_proj",
        }
    }
}

impl FromStr for Target {
    type Err = Error;

    /// Accepts the GGUF stem (`attn_q`) or the PEFT name (`q_proj`).
    fn from_str(s: &str) -> Result<Target> {
        Target::ALL
            .into_iter()
            .find(|t| t.gguf_stem() == s || t.peft_name() == s)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown LoRA target {s:?} (expected attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down or q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
                ))
            })
    }
}

/// LoRA hyperparameters. The defaults are PEFT's (docs/METHODS.md#lora-and-rslora) with all seven
/// linears adapted.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    /// rsLoRA scaling `alpha / √rank` instead of `alpha / rank`.
    pub rslora: bool,
    /// Dropout probability on the adapter input, in `[0, 1)`.
    pub dropout: f32,
    pub targets: Vec<Target>,
    /// Only these layers get adapters (`None`: every layer). Adapting the top layers only lets
    /// the backward stop at the lowest adapted layer: less compute per step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<LayerRange>,
}

/// An inclusive range of layer indices, `first..=last`, written `first-last` (or `n` for one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerRange {
    pub first: usize,
    pub last: usize,
}

impl LayerRange {
    pub fn contains(&self, layer: usize) -> bool {
        (self.first..=self.last).contains(&layer)
    }

    /// `A-B` (inclusive, `A ≤ B`) or `A`.
    pub fn parse(s: &str) -> Result<LayerRange> {
        let bad = |what: &str| {
            Error::Invalid(format!(
                "layer range {s:?}: {what} (expected FIRST-LAST, e.g. 15-29, or one layer)"
            ))
        };
        let num = |t: &str| t.trim().parse::<usize>().map_err(|_| bad("not a number"));
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(s)?, num(s)?),
        };
        if first > last {
            return Err(bad("the first layer is after the last"));
        }
        Ok(LayerRange { first, last })
    }

    /// Refuses a range that reaches past a model of `n_layer` layers.
    pub fn check(&self, n_layer: usize) -> Result<()> {
        if self.last >= n_layer {
            return Err(Error::Invalid(format!(
                "layer range {}-{} reaches past the model's {n_layer} layers (0-{})",
                self.first,
                self.last,
                n_layer.saturating_sub(1)
            )));
        }
        Ok(())
    }
}

impl std::fmt::Display for LayerRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 8.0,
            rslora: false,
            dropout: 0.0,
            targets: Target::ALL.to_vec(),
            layers: None,
        }
    }
}

impl LoraConfig {
    /// Rejects rank 0, a non-finite alpha and a dropout outside `[0, 1)`.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::Invalid("LoRA rank must be at least 1".into()));
        }
        if !self.alpha.is_finite() {
            return Err(Error::Invalid(format!(
                "LoRA alpha {} is not finite",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Invalid(format!(
                "LoRA dropout {} is outside [0, 1)",
                self.dropout
            )));
        }
        Ok(())
    }

    /// Whether layer `layer` gets adapters.
    pub fn adapts(&self, layer: usize) -> bool {
        self.layers.is_none_or(|r| r.contains(layer))
    }

    /// `s = alpha / rank` (LoRA) or `alpha / √rank` (rsLoRA), docs/METHODS.md#lora-and-rslora.
    pub fn scale(&self) -> f32 {
        let r = self.rank as f64;
        let d = if self.rslora { r.sqrt() } else { r };
        (self.alpha as f64 / d) as f32
    }
}

/// A LoRA branch on one linear `[out, in]`.
#[derive(Clone, Debug)]
pub struct Lora {
    cfg: LoraConfig,
    pair: LoraPair,
    drop: Dropout,
}

impl Lora {
    /// A LoRA branch for a linear of `in_f` inputs and `out_f` outputs, initialised from `seed`.
    pub fn new(in_f: usize, out_f: usize, cfg: &LoraConfig, seed: u64) -> Result<Lora> {
        cfg.validate()?;
        let mut lora = Lora {
            cfg: cfg.clone(),
            pair: LoraPair::new("LoRA", in_f, out_f, cfg.rank)?,
            drop: Dropout::new(cfg.dropout, seed)?,
        };
        lora.init(seed);
        Ok(lora)
    }

    pub fn rank(&self) -> usize {
        self.cfg.rank
    }
    /// `A` `[rank, in]`.
    pub fn a(&self) -> &[f32] {
        self.pair.a()
    }
    /// `B` `[out, rank]`.
    pub fn b(&self) -> &[f32] {
        self.pair.b()
    }
    pub fn a_mut(&mut self) -> &mut [f32] {
        self.pair.a_mut()
    }
    pub fn b_mut(&mut self) -> &mut [f32] {
        self.pair.b_mut()
    }

    /// The dropout multipliers `M/(1−p)` `[n, in]` of `pass` (`None` when dropout is off): the
    /// mask the forward and backward use, for references and tests (allocates).
    pub fn dropout_mask(&self, pass: Pass) -> Option<Vec<f32>> {
        self.drop.mask(pass, self.pair.in_f())
    }
}

impl Adapter for Lora {
    fn method(&self) -> &'static str {
        "lora"
    }
    fn in_features(&self) -> usize {
        self.pair.in_f()
    }
    fn out_features(&self) -> usize {
        self.pair.out_f()
    }

    fn params(&self) -> Vec<ParamInfo> {
        self.pair.params("lora_A", "lora_B")
    }

    fn param_buf(&self, i: usize) -> Option<&ParamBuf> {
        self.pair.param_buf(i, [])
    }

    fn param_buf_mut(&mut self, i: usize) -> Option<&mut ParamBuf> {
        self.pair.param_buf_mut(i, [])
    }

    /// PEFT init (docs/METHODS.md#lora-and-rslora): `A ~ U(−1/√in, 1/√in)` (kaiming-uniform a=√5),
    /// `B = 0`.
    fn init(&mut self, seed: u64) {
        self.drop.seed = seed;
        self.pair.init(seed);
    }

    fn scale(&self) -> f32 {
        self.cfg.scale()
    }

    /// Saved: `H` (r per token). Scratch: `dH` (r) in the backward, plus `X_d` / `dH·A` (in)
    /// when dropout is on.
    fn workspace(&self) -> Workspace {
        let drop = self.drop.input_len(self.pair.in_f());
        Workspace {
            saved_per_token: self.cfg.rank,
            scratch_per_token: self.cfg.rank + drop,
        }
    }

    fn forward(
        &self,
        pass: Pass,
        x: &[f32],
        y: &mut [f32],
        saved: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<()> {
        let (n, r, inf) = (pass.n, self.cfg.rank, self.pair.in_f());
        self.pair.check_forward("lora forward", n, x, y)?;
        let h = saved
            .get_mut(..n * r)
            .ok_or_else(|| short("saved", n * r))?;
        let stream = self.drop.stream(pass);
        let need = if stream.is_some() { n * inf } else { 0 };
        let xd = scratch
            .get_mut(..need)
            .ok_or_else(|| short("scratch", need))?;
        let input = self.drop.input_in(stream, x, xd);
        // H = X_d·Aᵀ [n, r], Y += s·H·Bᵀ [n, out].
        self.pair.mul_at(input.xd(), n, 0.0, h)?;
        self.pair.mul_bt(h, n, self.scale(), 1.0, y)
    }

    fn backward(
        &self,
        pass: Pass,
        x: &[f32],
        g: &[f32],
        saved: &[f32],
        scratch: &mut [f32],
        dx: &mut [f32],
        grads: &mut [f32],
    ) -> Result<()> {
        let (n, r, inf) = (pass.n, self.cfg.rank, self.pair.in_f());
        let s = self.scale();
        self.pair.check_backward("lora backward", n, x, g, dx)?;
        check_len("lora backward", "grads", grads.len(), 1, self.pair.numel())?;
        let h = saved.get(..n * r).ok_or_else(|| short("saved", n * r))?;
        let (da, db, _) = self.pair.split_grads(grads);
        let stream = self.drop.stream(pass);
        let need = n * r + if stream.is_some() { n * inf } else { 0 };
        let scratch = scratch
            .get_mut(..need)
            .ok_or_else(|| short("scratch", need))?;
        let (dh, xd) = scratch.split_at_mut(n * r);
        // dB = s·Gᵀ·H [out, r], dH = s·G·B [n, r], dA = dHᵀ·X_d, dX += D'(dH·A).
        self.pair.grad_b(g, h, n, s, 0.0, db)?;
        self.pair.mul_b(g, n, s, 0.0, dh)?;
        let input = self.drop.input_in(stream, x, xd);
        self.pair.grad_a_and_x(dh, n, input, da, dx)
    }

    /// `ΔW = s·B·A` `[out, in]` (docs/METHODS.md#lora-and-rslora).
    fn delta_weight(&self, dw: &mut [f32]) -> Result<()> {
        self.pair.ba(self.scale(), 0.0, dw)
    }

    fn export(&self) -> Export<'_> {
        self.pair.export(self.scale())
    }

    fn as_lora(&self) -> Option<&Lora> {
        Some(self)
    }
}

fn short(what: &str, need: usize) -> Error {
    Error::Invalid(format!("lora: {what} workspace shorter than {need} values"))
}

/// Shapes of the generic references: `n` tokens, `in`, `out`, rank `r`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BranchDims {
    pub n: usize,
    pub in_f: usize,
    pub out_f: usize,
    pub r: usize,
}

/// `X_d = X ⊙ mask` (`mask` holds the multipliers `M/(1−p)`), or `X`.
pub(crate) fn masked<R: Real>(x: &[R], mask: Option<&[R]>) -> Vec<R> {
    match mask {
        Some(m) => x
            .iter()
            .zip(m)
            .map(|(&v, &f)| R::from_f64(v.to_f64() * f.to_f64()))
            .collect(),
        None => x.to_vec(),
    }
}

/// Scalar specification of the branch forward (docs/METHODS.md#the-lora-branch), generic over
/// f32/f64 with f64 sums: returns `(ΔY = s·X_d·Aᵀ·Bᵀ [n, out], H [n, r])`.
pub fn forward_ref<R: Real>(
    dm: BranchDims,
    s: f64,
    x: &[R],
    a: &[R],
    b: &[R],
    mask: Option<&[R]>,
) -> (Vec<R>, Vec<R>) {
    let xd = masked(x, mask);
    let mut h = vec![R::from_f64(0.0); dm.n * dm.r];
    gemm_ref(
        d(dm.n, dm.r, dm.in_f, false, true),
        1.0,
        &xd,
        a,
        0.0,
        &mut h,
    );
    let mut y = vec![R::from_f64(0.0); dm.n * dm.out_f];
    gemm_ref(d(dm.n, dm.out_f, dm.r, false, true), s, &h, b, 0.0, &mut y);
    (y, h)
}

/// Scalar specification of the branch backward (docs/METHODS.md#the-lora-branch): returns
/// `(dX_branch [n, in], dA [r, in], dB [out, r])` for upstream `g` `[n, out]`.
#[allow(clippy::too_many_arguments)]
pub fn backward_ref<R: Real>(
    dm: BranchDims,
    s: f64,
    x: &[R],
    a: &[R],
    b: &[R],
    mask: Option<&[R]>,
    g: &[R],
) -> (Vec<R>, Vec<R>, Vec<R>) {
    let (n, inf, outf, r) = (dm.n, dm.in_f, dm.out_f, dm.r);
    let xd = masked(x, mask);
    let zero = R::from_f64(0.0);
    let mut h = vec![zero; n * r];
    gemm_ref(d(n, r, inf, false, true), 1.0, &xd, a, 0.0, &mut h);
    let mut db = vec![zero; outf * r];
    gemm_ref(d(outf, r, n, true, false), s, g, &h, 0.0, &mut db);
    let mut dh = vec![zero; n * r];
    gemm_ref(d(n, r, outf, false, false), s, g, b, 0.0, &mut dh);
    let mut da = vec![zero; r * inf];
    gemm_ref(d(r, inf, n, true, false), 1.0, &dh, &xd, 0.0, &mut da);
    let mut dxd = vec![zero; n * inf];
    gemm_ref(d(n, inf, r, false, false), 1.0, &dh, a, 0.0, &mut dxd);
    (masked(&dxd, mask), da, db)
}
