//! The methods whose adapters read the frozen base `Ŵ` when they are built: DoRA and HiRA keep a
//! copy of it (quantized or dense, `MethodOptions::base_copy`), OLoRA and PiSSA decompose it
//! (QR / truncated SVD) into their initial factors and a frozen correction.

use super::{MethodImpl, Slot, SlotCost, SlotShape, base_of, dropout_scratch, pair_tensors};
use crate::train::method::BaseCopy;
use edgetune_core::Result;
use edgetune_core::adapters::Adapter;
use edgetune_core::adapters::base::BaseWeight;
use edgetune_core::adapters::dora::Dora;
use edgetune_core::adapters::hira::{Hira, TILE};
use edgetune_core::adapters::olora_pissa::{ResidualInit, ResidualLora};
use edgetune_core::quant::matmul::QuantMatrix;

/// The dequantized `Ŵ` `[out, in]` of `w` (f32, row-major).
fn dequantized(w: &QuantMatrix<'_>) -> Result<Vec<f32>> {
    let mut out = vec![0.0f32; w.rows * w.cols];
    edgetune_core::quant::dequantize(w.ty, w.data, &mut out)?;
    Ok(out)
}

/// A method's private copy of `Ŵ` in the configured form.
fn base_copy(w: &QuantMatrix<'_>, form: BaseCopy) -> Result<BaseWeight> {
    match form {
        BaseCopy::Quant => BaseWeight::quant(w),
        BaseCopy::Dense => BaseWeight::dense(w.rows, w.cols, dequantized(w)?),
    }
}

/// Bytes of the base copy: the tensor's own bytes quantized, 4 per weight dense.
fn base_copy_bytes(s: &SlotShape<'_>) -> u64 {
    match s.opts.base_copy {
        BaseCopy::Quant => s.base_bytes,
        BaseCopy::Dense => 4 * (s.fan_in * s.fan_out) as u64,
    }
}

/// DoRA: a LoRA direction and a trained magnitude `m [out]`, with a detached column norm.
pub struct DoraImpl;

impl MethodImpl for DoraImpl {
    fn build(&self, slot: &Slot<'_>) -> Result<Box<dyn Adapter>> {
        let base = base_copy(base_of(slot)?, slot.opts.base_copy)?;
        Ok(Box::new(Dora::new(slot.lora, base, slot.seed)?))
    }

    fn cost(&self, s: &SlotShape<'_>) -> SlotCost {
        let (r, inf, outf) = (s.lora.rank, s.fan_in, s.fan_out);
        SlotCost {
            saved_per_token: r + outf,
            scratch_per_token: outf + r + inf + dropout_scratch(s.lora, inf),
            tensors: vec![(r * inf) as u64, (outf * r) as u64, outf as u64],
            extra_bytes: base_copy_bytes(s)
                + 8 * outf as u64
                + 4 * (r * outf + r * r + 2 * outf) as u64,
        }
    }
}

/// HiRA: `ΔW = Ŵ ⊙ (B·A)`, computed a tile of `TILE` output rows at a time.
pub struct HiraImpl;

impl MethodImpl for HiraImpl {
    fn build(&self, slot: &Slot<'_>) -> Result<Box<dyn Adapter>> {
        let base = base_copy(base_of(slot)?, slot.opts.base_copy)?;
        Ok(Box::new(Hira::new(slot.lora, base, slot.seed)?))
    }

    fn cost(&self, s: &SlotShape<'_>) -> SlotCost {
        let (r, inf, outf) = (s.lora.rank, s.fan_in, s.fan_out);
        let tile = TILE.min(outf);
        SlotCost {
            saved_per_token: 0,
            scratch_per_token: tile + 2 * dropout_scratch(s.lora, inf),
            tensors: pair_tensors(r, inf, outf),
            extra_bytes: base_copy_bytes(s) + 4 * (3 * tile * inf) as u64,
        }
    }
}

/// OLoRA (QR of `Ŵ`) and PiSSA (its principal singular components): non-zero initial factors
/// `A0`, `B0` and a frozen correction, so the model starts where it was.
pub struct Residual {
    /// PiSSA when true, OLoRA otherwise.
    pub pissa: bool,
}

impl MethodImpl for Residual {
    fn build(&self, slot: &Slot<'_>) -> Result<Box<dyn Adapter>> {
        let kind = if self.pissa {
            ResidualInit::Pissa {
                niter: slot.opts.pissa_niter,
            }
        } else {
            ResidualInit::Olora
        };
        let dense = dequantized(base_of(slot)?)?;
        Ok(Box::new(ResidualLora::new(
            kind,
            slot.lora,
            &dense,
            slot.fan_out,
            slot.fan_in,
            slot.seed,
        )?))
    }

    fn cost(&self, s: &SlotShape<'_>) -> SlotCost {
        // The frozen initial factors A0, B0 in f32.
        let r = s.lora.rank;
        SlotCost::pair(s, r, 4 * (r * s.fan_in + s.fan_out * r) as u64)
    }
}
