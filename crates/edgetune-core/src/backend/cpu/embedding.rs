//! Embedding lookup: `out[i, :] = dequantize(token_embd row tokens[i])`.
//!
//! `table` is the quantized `token_embd` as [vocab, dim] (GGUF ne order [dim, vocab]: each token
//! id is one contiguous row of whole blocks), `out` is `[tokens.len(), dim]`. Only the rows
//! needed are dequantized, straight from the mapped blocks.

use rayon::prelude::*;

use crate::backend::check_len;
use crate::quant::matmul::QuantMatrix;
use crate::{Error, Result};

fn check(table: &QuantMatrix, tokens: &[u32], out: &[f32]) -> Result<()> {
    check_len("embedding", "out", out.len(), tokens.len(), table.cols)?;
    if let Some((i, &t)) = tokens
        .iter()
        .enumerate()
        .find(|(_, t)| **t as usize >= table.rows)
    {
        return Err(Error::Invalid(format!(
            "token id {t} (position {i} of {}) is outside the vocabulary of {} tokens",
            tokens.len(),
            table.rows
        )));
    }
    Ok(())
}

/// Fast version: rows in parallel with the type's fast dequantizer.
pub fn embedding(table: &QuantMatrix, tokens: &[u32], out: &mut [f32]) -> Result<()> {
    check(table, tokens, out)?;
    if table.cols == 0 {
        return Ok(());
    }
    let dequantize = table.ty.traits().dequantize;
    out.par_chunks_mut(table.cols)
        .zip(tokens.par_iter())
        .for_each(|(row, &t)| dequantize(table.row(t as usize), row));
    Ok(())
}

/// Scalar specification: the reference dequantizer, one row after another.
pub fn embedding_ref(table: &QuantMatrix, tokens: &[u32], out: &mut [f32]) -> Result<()> {
    check(table, tokens, out)?;
    let dequantize_ref = table.ty.traits().dequantize_ref;
    for (i, &t) in tokens.iter().enumerate() {
        dequantize_ref(
            table.row(t as usize),
            &mut out[i * table.cols..(i + 1) * table.cols],
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::test_util::{assert_close, random};
    use crate::quant::{self, GgmlType};

    #[test]
    fn matches_ref_and_the_source_rows() {
        let (vocab, dim) = (37, 512);
        let values = random(vocab * dim, 1.0, 11);
        let tokens = [0u32, 36, 5, 5, 17, 0, 2];
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
        ] {
            let mut bytes = vec![0u8; ty.bytes_for((vocab * dim) as u64).unwrap() as usize];
            quant::quantize(ty, &values, &mut bytes).unwrap();
            let table = QuantMatrix::new(ty, vocab, dim, &bytes).unwrap();
            let (mut a, mut b) = (vec![0.0; tokens.len() * dim], vec![0.0; tokens.len() * dim]);
            embedding(&table, &tokens, &mut a).unwrap();
            embedding_ref(&table, &tokens, &mut b).unwrap();
            // The fast dequantizers are exact re-orderings of the same per-element formula.
            assert_close(&a, &b, 1e-7, &format!("embedding {ty}"));
            // And each row is the quantized source row (within the type's own rounding; F32 exact).
            let src = &values[36 * dim..37 * dim];
            // Bounds: half a quantization step of each type on values in [-1, 1] (Q4_K: 15
            // levels over a sub-block's range plus 6-bit scale rounding), with margin.
            let tol = match ty {
                GgmlType::F32 => 0.0,
                GgmlType::F16 => 1e-3,
                GgmlType::Q8_0 => 1e-2,
                GgmlType::Q6_K => 4e-2,
                _ => 0.15,
            };
            assert_close(&a[dim..2 * dim], src, tol, "row 36 vs source");
        }
    }

    #[test]
    fn rejects_out_of_vocab_ids_and_bad_sizes() {
        let bytes = vec![0u8; 4 * 8 * 4];
        let table = QuantMatrix::new(GgmlType::F32, 4, 8, &bytes).unwrap();
        let err = embedding(&table, &[1, 4], &mut [0.0; 16])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("token id 4") && err.contains("4 tokens"),
            "{err}"
        );
        assert!(embedding(&table, &[1], &mut [0.0; 9]).is_err());
    }
}
