//! Held-out loss: the mean cross-entropy of an adapter (or the base) on examples it was not
//! trained on, over the same target positions training scores (labels ≠ IGNORE, the
//! Hugging Face shift: logits at position i−1 against labels[i]). Each example is cut to
//! `seq_len` tokens, as the batcher cuts it in training.

use crate::data::{IGNORE, TokenizedExample};
use crate::infer::perplexity::log_softmax_at;
use crate::model::Llama;
use crate::{Error, Result};

/// Positions per forward chunk: the logits buffer is `[CHUNK, vocab]`.
const CHUNK: usize = 64;

/// The result of [`heldout_loss`].
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct HeldoutLoss {
    /// Mean negative log-likelihood (nats) per target token.
    pub mean_nll: f64,
    /// Target tokens scored.
    pub targets: usize,
    /// Examples that had at least one target within `seq_len`.
    pub examples: usize,
}

/// Scores every target token of `examples` (each cut to `seq_len`, and to the model's
/// context); fails when no example has a target left.
pub fn heldout_loss(
    llama: &Llama,
    examples: &[TokenizedExample],
    seq_len: usize,
) -> Result<HeldoutLoss> {
    let cfg = llama.config();
    let vocab = cfg.n_vocab;
    let max_len = seq_len.min(cfg.context_length).max(2);
    let mut logits = vec![0.0f32; CHUNK * vocab];
    let (mut nll, mut targets, mut used) = (0.0f64, 0usize, 0usize);
    for ex in examples {
        let n = ex.ids.len().min(ex.labels.len()).min(max_len);
        let (ids, labels) = (&ex.ids[..n], &ex.labels[..n]);
        if labels.iter().skip(1).all(|&l| l == IGNORE) {
            continue;
        }
        let mut cache = llama.new_cache(n)?;
        for (c, chunk) in ids.chunks(CHUNK).enumerate() {
            let rows = &mut logits[..chunk.len() * vocab];
            llama.forward(&mut cache, chunk, rows)?;
            for (i, row) in rows.chunks_exact(vocab).enumerate() {
                let pos = c * CHUNK + i;
                // Row `pos` predicts the token at `pos + 1`.
                match labels.get(pos + 1) {
                    Some(&l) if l != IGNORE => {
                        let target =
                            usize::try_from(l)
                                .ok()
                                .filter(|&t| t < vocab)
                                .ok_or_else(|| {
                                    Error::Invalid(format!(
                                        "held-out label {l} is outside the vocabulary of {vocab}"
                                    ))
                                })?;
                        nll -= log_softmax_at(row, target);
                        targets += 1;
                    }
                    _ => {}
                }
            }
        }
        used += 1;
    }
    if targets == 0 {
        return Err(Error::Invalid(format!(
            "held-out loss: none of the {} examples has a target within {max_len} tokens",
            examples.len()
        )));
    }
    Ok(HeldoutLoss {
        mean_nll: nll / targets as f64,
        targets,
        examples: used,
    })
}
