//! Perplexity of a token sequence: mean negative log-likelihood of each next token.

use crate::{Error, Result};

/// The result of [`perplexity`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Perplexity {
    pub tokens: usize,
    /// Number of predicted tokens (tokens − 1).
    pub predicted: usize,
    pub mean_nll: f64,
    pub perplexity: f64,
}

/// Positions scored per forward chunk (its logits are `[chunk, vocab]`).
pub const PERPLEXITY_CHUNK: usize = 64;

/// Runs the model over `tokens` (exactly as given: no BOS is added) in one pass with a cache of
/// that length, and scores every next-token prediction. `on_logits(position, row)` sees each
/// position's logits (for `--dump-logits`), in order.
pub fn perplexity(
    llama: &impl super::CausalLm,
    tokens: &[u32],
    mut on_logits: impl FnMut(usize, &[f32]) -> Result<()>,
) -> Result<Perplexity> {
    let cfg = llama.config();
    if tokens.len() < 2 {
        return Err(Error::Invalid(format!(
            "perplexity needs at least 2 tokens, got {}",
            tokens.len()
        )));
    }
    if tokens.len() > cfg.context_length {
        return Err(Error::Invalid(format!(
            "{} tokens exceed the model's context of {}",
            tokens.len(),
            cfg.context_length
        )));
    }
    let vocab = cfg.n_vocab;
    let mut cache = llama.new_cache(tokens.len())?;
    // One chunk of positions at a time keeps the logits buffer at chunk × vocab.
    let chunk = PERPLEXITY_CHUNK;
    let mut logits = vec![0.0f32; chunk * vocab];
    let mut nll = 0.0f64;
    for (c, ids) in tokens.chunks(chunk).enumerate() {
        let rows = &mut logits[..ids.len() * vocab];
        llama.forward(&mut cache, ids, rows)?;
        for (i, row) in rows.chunks_exact(vocab).enumerate() {
            let pos = c * chunk + i;
            super::check_logits(row, || format!("perplexity: position {pos}"))?;
            on_logits(pos, row)?;
            if let Some(&target) = tokens.get(pos + 1) {
                nll += -log_softmax_at(row, target as usize);
            }
        }
    }
    let predicted = tokens.len() - 1;
    let mean_nll = nll / predicted as f64;
    Ok(Perplexity {
        tokens: tokens.len(),
        predicted,
        mean_nll,
        perplexity: mean_nll.exp(),
    })
}

/// log softmax(row)[target], in f64 with the max subtracted.
pub fn log_softmax_at(row: &[f32], target: usize) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    row[target] as f64 - max - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_matches_the_definition() {
        let row = [1.0f32, 2.0, 3.0];
        let z: f64 = [1.0f64, 2.0, 3.0].iter().map(|v| v.exp()).sum();
        for t in 0..3 {
            let want = ((t + 1) as f64).exp().ln() - z.ln();
            assert!((log_softmax_at(&row, t) - want).abs() < 1e-12);
        }
        // Large logits do not overflow.
        assert!((log_softmax_at(&[1000.0, 1000.0], 0) - 0.5f64.ln()).abs() < 1e-12);
    }
}
