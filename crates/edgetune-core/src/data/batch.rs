//! Tokenized examples → fixed-shape batches `[batch_size, seq_len]`: truncation or packing,
//! seeded shuffling per epoch, a stop after some epochs or steps, and a serialisable
//! [`Cursor`] from which a resumed run gets exactly the batches it would have had.
//!
//! Rows. Without packing each example is one row, cut to `seq_len` and padded. With packing,
//! whole examples are laid one after the other into a row while they fit (next-fit, in an
//! order shuffled once with the seed), so an example is never split across rows and every
//! target keeps its whole prompt; an example longer than `seq_len` is cut and gets a row of
//! its own. Each example's first token has label [`IGNORE`], so no token is predicted from
//! the example before it (Hugging Face's simple packing does predict across; we do not).
//! Attention may still see the previous examples of a row unless the trainer masks it:
//! [`Batch::positions`] restarts at 0 with every example (a token at `i` belongs to the
//! example starting at `i - positions[i]`) for RoPE positions and block-diagonal masks.
//!
//! Examples with no target left after truncation are dropped; truncated and dropped
//! examples are counted ([`BatchStats`]) and logged as warnings.
//!
//! Order. The rows are shuffled at the start of every epoch with an RNG seeded from
//! `(seed, epoch)`, so the order of any epoch follows from the cursor alone (no RNG state to
//! save). A batch never spans two epochs: an epoch's last batch may hold fewer rows
//! ([`Batch::rows`]), the rest being padding with no loss. A step is one batch.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::{IGNORE, TokenizedExample};
use crate::Error;

/// How to cut and order the data.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchConfig {
    /// Tokens per row (L).
    pub seq_len: usize,
    /// Rows per batch (B).
    pub batch_size: usize,
    /// Pack several examples into a row (otherwise one example per row).
    pub pack: bool,
    /// Seeds the packing order and every epoch's shuffle.
    pub seed: u64,
    /// Stop after this many passes over the data (`None`: no limit from epochs).
    pub epochs: Option<u64>,
    /// Stop after this many batches (`None`: no limit from steps).
    pub max_steps: Option<u64>,
    /// The id written into padding (its label is always [`IGNORE`]).
    pub pad_id: u32,
}

/// One batch, row-major `[batch_size, seq_len]`; allocate once with [`Batch::new`] and refill.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub batch_size: usize,
    pub seq_len: usize,
    pub ids: Vec<u32>,
    /// Target of each position (Hugging Face convention: aligned with `ids`, the loss shifts),
    /// or [`IGNORE`].
    pub labels: Vec<i32>,
    /// Position of each token within its example (0 at every example's start and in padding).
    pub positions: Vec<u32>,
    /// Rows holding data; rows `rows..batch_size` are padding.
    pub rows: usize,
    /// Positions with a label other than [`IGNORE`].
    pub n_targets: usize,
    /// Task id of each row (`[batch_size]`, 0 in padding rows and single-task data): the
    /// index into [`Batcher::task_names`] (MT-LoRA routes rows by it, docs/METHODS.md#mt-lora).
    pub tasks: Vec<u32>,
    /// Which rows hold replay data (`[batch_size]`, `train --replay`; `data::mix`): the KL
    /// anchor (`--kl-anchor`) applies to their answer tokens only.
    pub replay_rows: Vec<bool>,
}

impl Batch {
    pub fn new(batch_size: usize, seq_len: usize) -> Batch {
        let n = batch_size * seq_len;
        Batch {
            batch_size,
            seq_len,
            ids: vec![0; n],
            labels: vec![IGNORE; n],
            positions: vec![0; n],
            rows: 0,
            n_targets: 0,
            tasks: vec![0; batch_size],
            replay_rows: vec![false; batch_size],
        }
    }

    /// Checks that this batch is `rows × seq_len` tokens with as many labels and positions as
    /// ids (the fields are public, so a hand-made batch may not be); `who` names the caller.
    pub fn check_shape(&self, rows: usize, seq_len: usize, who: &str) -> crate::Result<()> {
        let n = self.ids.len();
        if self.labels.len() != n || self.positions.len() != n {
            return Err(Error::Invalid(format!(
                "{who}: batch has {n} ids, {} labels and {} positions",
                self.labels.len(),
                self.positions.len()
            )));
        }
        if self.batch_size != rows || self.seq_len != seq_len || n != rows * seq_len {
            return Err(Error::Invalid(format!(
                "{who}: batch of {} × {} tokens, the step is for {rows} × {seq_len}",
                self.batch_size, self.seq_len
            )));
        }
        Ok(())
    }

    /// What a training step reads off a checked batch ([`Batch::check_shape`]):
    /// `targets[i]` = the label of token `i + 1` of the same row ([`IGNORE`] for a row's last
    /// token: Hugging Face's shift), and the causal `segments` as `(first token, tokens)`.
    /// An example starts where the position is 0 and the next is 1; padding (all zeros) stays
    /// with the segment before it (it has no loss and nothing attends to it). `targets` holds
    /// `ids.len()` values; `segments` is cleared first (reserve its capacity to stay
    /// allocation-free).
    pub fn shifted_targets_and_segments(
        &self,
        targets: &mut [i32],
        segments: &mut Vec<(usize, usize)>,
    ) {
        let l = self.seq_len;
        segments.clear();
        for r in 0..self.batch_size {
            let (_, labels, pos) = self.row(r);
            for i in 0..l {
                targets[r * l + i] = if i + 1 < l { labels[i + 1] } else { IGNORE };
                let starts = i == 0 || (pos[i] == 0 && i + 1 < l && pos[i + 1] == 1);
                if starts {
                    segments.push((r * l + i, 0));
                }
                if let Some(last) = segments.last_mut() {
                    last.1 += 1;
                }
            }
        }
    }

    /// Row `r`'s ids, labels and positions.
    pub fn row(&self, r: usize) -> (&[u32], &[i32], &[u32]) {
        let s = r * self.seq_len..(r + 1) * self.seq_len;
        (
            &self.ids[s.clone()],
            &self.labels[s.clone()],
            &self.positions[s],
        )
    }
}

/// Where a run is in the data; serialise it into checkpoints and hand it to
/// [`Batcher::restore`] to continue with the same batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    pub seed: u64,
    /// The epoch the next batch comes from (0-based).
    pub epoch: u64,
    /// Index, in that epoch's shuffled order, of the next row.
    pub next_row: u64,
    /// Batches handed out so far.
    pub steps: u64,
    /// A hash of the rows and the cut settings: a cursor only fits the data it came from.
    pub fingerprint: u64,
}

/// What batching did to the examples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub examples: usize,
    /// Examples longer than `seq_len`, cut.
    pub truncated: usize,
    /// Examples without a target after the cut, left out.
    pub dropped: usize,
    pub rows: usize,
    /// Data tokens in all rows (no padding).
    pub tokens: usize,
    pub targets: usize,
}

/// Hands out the batches of a tokenized dataset (see the module doc).
#[derive(Clone, Debug)]
pub struct Batcher {
    cfg: BatchConfig,
    /// Kept examples (already cut to `seq_len`), concatenated; example `e` is
    /// `tokens[spans[e].0..][..spans[e].1]`.
    tokens: Vec<u32>,
    labels: Vec<i32>,
    spans: Vec<(usize, usize)>,
    /// Task id of each kept example (rows never mix tasks).
    span_tasks: Vec<u32>,
    /// Task names, index = id (see [`Batcher::with_tasks`]).
    task_names: Vec<String>,
    /// Row `r` holds the examples `row_items[rows[r].0..rows[r].1]`.
    rows: Vec<(usize, usize)>,
    row_items: Vec<u32>,
    /// The current epoch's row order.
    order: Vec<u32>,
    cursor: Cursor,
    stats: BatchStats,
}

impl Batcher {
    pub fn new(examples: &[TokenizedExample], cfg: BatchConfig) -> crate::Result<Batcher> {
        Batcher::with_tasks(examples, cfg, &[])
    }

    /// [`Batcher::new`] with task ids fixed for the names in `known` (a checkpoint's or a
    /// config's list, so a resumed run and an export see the same ids): `known[i]` is id `i`;
    /// other names of the data get the next ids in first-seen (file) order. A record without
    /// `task` belongs to [`super::tasks::DEFAULT_TASK`]. With packing, a row only holds
    /// examples of one task.
    pub fn with_tasks(
        examples: &[TokenizedExample],
        cfg: BatchConfig,
        known: &[String],
    ) -> crate::Result<Batcher> {
        let (task_names, example_tasks) = super::tasks::assign(examples, known);
        if cfg.seq_len < 2 || cfg.batch_size == 0 {
            return Err(Error::Invalid(format!(
                "batching needs seq_len >= 2 and batch_size >= 1 (got seq_len {}, batch_size {})",
                cfg.seq_len, cfg.batch_size
            )));
        }
        if cfg.epochs == Some(0) || cfg.max_steps == Some(0) {
            return Err(Error::Invalid(
                "epochs and max_steps must be at least 1 when given".into(),
            ));
        }
        let l = cfg.seq_len;
        let mut stats = BatchStats {
            examples: examples.len(),
            ..BatchStats::default()
        };
        let mut tokens = Vec::new();
        let mut labels = Vec::new();
        let mut spans = Vec::new();
        let mut span_tasks = Vec::new();
        for (ex, &task) in examples.iter().zip(&example_tasks) {
            debug_assert_eq!(ex.ids.len(), ex.labels.len());
            let len = ex.ids.len().min(ex.labels.len()).min(l);
            if ex.ids.len() > l {
                stats.truncated += 1;
            }
            // The first token is never a target (module doc), whatever the labels say.
            let targets = ex.labels[..len]
                .iter()
                .skip(1)
                .filter(|&&x| x != IGNORE)
                .count();
            if targets == 0 {
                stats.dropped += 1;
                continue;
            }
            spans.push((tokens.len(), len));
            span_tasks.push(task);
            tokens.extend_from_slice(&ex.ids[..len]);
            labels.push(IGNORE);
            labels.extend_from_slice(&ex.labels[1..len]);
            stats.targets += targets;
            stats.tokens += len;
        }
        if stats.truncated > 0 {
            log::warn!(
                "{} of {} examples are longer than {l} tokens and were cut",
                stats.truncated,
                stats.examples
            );
        }
        if stats.dropped > 0 {
            log::warn!(
                "{} of {} examples have no target within {l} tokens and were left out",
                stats.dropped,
                stats.examples
            );
        }
        if spans.is_empty() {
            return Err(Error::Invalid(format!(
                "no example of {} has a target within the first {l} tokens",
                stats.examples
            )));
        }

        let mut rows = Vec::new();
        let mut row_items = Vec::with_capacity(spans.len());
        if cfg.pack {
            let mut pack_order: Vec<u32> = (0..spans.len() as u32).collect();
            pack_order.shuffle(&mut StdRng::seed_from_u64(mix(cfg.seed, u64::MAX)));
            // One task per row: group the shuffled order by task (stable, so single-task
            // data packs exactly as before).
            pack_order.sort_by_key(|&e| span_tasks[e as usize]);
            let (mut start, mut used) = (0usize, 0usize);
            for e in pack_order {
                let len = spans[e as usize].1;
                let other_task = row_items
                    .get(start)
                    .is_some_and(|&f: &u32| span_tasks[f as usize] != span_tasks[e as usize]);
                if (used + len > l || other_task) && used > 0 {
                    rows.push((start, row_items.len()));
                    start = row_items.len();
                    used = 0;
                }
                row_items.push(e);
                used += len;
            }
            rows.push((start, row_items.len()));
        } else {
            for e in 0..spans.len() {
                rows.push((e, e + 1));
                row_items.push(e as u32);
            }
        }
        stats.rows = rows.len();

        let mut fingerprint = fingerprint(&cfg, &tokens, &labels, &spans, &rows, &row_items);
        if task_names.len() > 1 {
            // Multi-task data: the ids are part of the data (single-task keeps old cursors).
            fingerprint = mix(fingerprint, super::tasks::hash(&task_names, &span_tasks));
        }
        let mut b = Batcher {
            order: Vec::with_capacity(rows.len()),
            cursor: Cursor {
                seed: cfg.seed,
                epoch: 0,
                next_row: 0,
                steps: 0,
                fingerprint,
            },
            cfg,
            tokens,
            labels,
            spans,
            span_tasks,
            task_names,
            rows,
            row_items,
            stats,
        };
        b.shuffle_epoch();
        Ok(b)
    }

    pub fn config(&self) -> &BatchConfig {
        &self.cfg
    }

    pub fn stats(&self) -> BatchStats {
        self.stats
    }

    /// Task names, index = task id ([`Batch::tasks`]); `["default"]` for data without tasks.
    pub fn task_names(&self) -> &[String] {
        &self.task_names
    }

    pub fn n_rows(&self) -> usize {
        self.rows.len()
    }

    /// Batches in one epoch (the last may be partial).
    pub fn steps_per_epoch(&self) -> u64 {
        self.rows.len().div_ceil(self.cfg.batch_size) as u64
    }

    /// Batches the whole run hands out, or `None` when neither epochs nor steps limit it.
    pub fn total_steps(&self) -> Option<u64> {
        let by_epochs = self.cfg.epochs.map(|e| e * self.steps_per_epoch());
        match (by_epochs, self.cfg.max_steps) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Continues from `c` (taken from a batcher over the same data and settings).
    pub fn restore(&mut self, c: &Cursor) -> crate::Result<()> {
        if c.fingerprint != self.cursor.fingerprint || c.seed != self.cfg.seed {
            return Err(Error::Invalid(format!(
                "the data cursor does not fit this dataset: fingerprint {:#018x} seed {} vs \
                 {:#018x} seed {} (other data, seq_len, packing or seed)",
                c.fingerprint, c.seed, self.cursor.fingerprint, self.cfg.seed
            )));
        }
        if c.next_row >= self.rows.len() as u64 {
            return Err(Error::Invalid(format!(
                "the data cursor points at row {} of an epoch of {} rows",
                c.next_row,
                self.rows.len()
            )));
        }
        self.cursor = *c;
        self.shuffle_epoch();
        Ok(())
    }

    /// Whether the run's epochs or steps are used up.
    pub fn finished(&self) -> bool {
        self.cfg.epochs.is_some_and(|e| self.cursor.epoch >= e)
            || self.cfg.max_steps.is_some_and(|m| self.cursor.steps >= m)
    }

    /// Fills `out` with the next batch; false (and `out` untouched) when the run is over.
    /// Allocates only if `out` does not have the configured shape.
    pub fn next_batch(&mut self, out: &mut Batch) -> bool {
        if self.finished() {
            return false;
        }
        let (b, l) = (self.cfg.batch_size, self.cfg.seq_len);
        if out.batch_size != b || out.seq_len != l || out.ids.len() != b * l {
            *out = Batch::new(b, l);
        }
        out.rows = 0;
        out.n_targets = 0;
        out.tasks.resize(b, 0);
        out.tasks.fill(0);
        out.replay_rows.resize(b, false);
        out.replay_rows.fill(false);
        for r in 0..b {
            if (self.cursor.next_row as usize) < self.rows.len() {
                let src = self.order[self.cursor.next_row as usize] as usize;
                self.cursor.next_row += 1;
                self.fill_row(src, out, r);
            } else {
                Self::pad_row(out, r, 0, self.cfg.pad_id);
            }
        }
        out.n_targets = out.labels.iter().filter(|&&x| x != IGNORE).count();
        self.cursor.steps += 1;
        if self.cursor.next_row as usize >= self.rows.len() {
            self.next_epoch();
        }
        true
    }

    /// Fills row `r` of `out` (already shaped `[batch_size, seq_len]`) with the stream's next
    /// row, going on into the next epoch without a partial batch: the mixed stream of
    /// [`super::mix::MixedBatcher`] takes rows one by one. Counts neither steps nor targets.
    pub(crate) fn next_row_into(&mut self, out: &mut Batch, r: usize) {
        let src = self.order[self.cursor.next_row as usize] as usize;
        self.cursor.next_row += 1;
        self.fill_row(src, out, r);
        if self.cursor.next_row as usize >= self.rows.len() {
            self.next_epoch();
        }
    }

    /// Marks `n` more batches handed out (the mixed stream counts its own batches here).
    pub(crate) fn count_steps(&mut self, n: u64) {
        self.cursor.steps += n;
    }

    /// Writes row `src` into row `r` of `out`, padding after its examples; `out.rows` +1.
    fn fill_row(&self, src: usize, out: &mut Batch, r: usize) {
        let l = self.cfg.seq_len;
        let mut at = r * l;
        out.rows += 1;
        let (i0, i1) = self.rows[src];
        out.tasks[r] = self.row_items[i0..i1]
            .first()
            .map_or(0, |&e| self.span_tasks[e as usize]);
        for &e in &self.row_items[i0..i1] {
            let (s, n) = self.spans[e as usize];
            out.ids[at..at + n].copy_from_slice(&self.tokens[s..s + n]);
            out.labels[at..at + n].copy_from_slice(&self.labels[s..s + n]);
            for (k, p) in out.positions[at..at + n].iter_mut().enumerate() {
                *p = k as u32;
            }
            at += n;
        }
        Self::pad_row(out, r, at - r * l, self.cfg.pad_id);
    }

    /// Pads row `r` of `out` from token `from` of the row to its end (no loss, position 0).
    pub(crate) fn pad_row(out: &mut Batch, r: usize, from: usize, pad_id: u32) {
        let l = out.seq_len;
        let (at, end) = (r * l + from, (r + 1) * l);
        out.ids[at..end].fill(pad_id);
        out.labels[at..end].fill(IGNORE);
        out.positions[at..end].fill(0);
    }

    /// Starts the next epoch: its first row, its own order.
    fn next_epoch(&mut self) {
        self.cursor.epoch += 1;
        self.cursor.next_row = 0;
        self.shuffle_epoch();
    }

    /// The current epoch's row order, from `(seed, epoch)` alone.
    fn shuffle_epoch(&mut self) {
        self.order.clear();
        self.order.extend(0..self.rows.len() as u32);
        let mut rng = StdRng::seed_from_u64(mix(self.cfg.seed, self.cursor.epoch));
        self.order.shuffle(&mut rng);
    }
}

/// A seed for stream `k` of `seed` (splitmix64 of both), so nearby seeds and epochs give
/// unrelated orders.
fn mix(seed: u64, k: u64) -> u64 {
    let mut z = seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a over the settings that shape the rows and the rows' contents.
fn fingerprint(
    cfg: &BatchConfig,
    tokens: &[u32],
    labels: &[i32],
    spans: &[(usize, usize)],
    rows: &[(usize, usize)],
    row_items: &[u32],
) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    let mut eat = |x: u64| h.write(&x.to_le_bytes());
    eat(cfg.seq_len as u64);
    eat(cfg.pack as u64);
    eat(tokens.len() as u64);
    tokens.iter().for_each(|&t| eat(t as u64));
    labels.iter().for_each(|&t| eat(t as u32 as u64));
    spans
        .iter()
        .for_each(|&(s, n)| eat((s as u64) << 32 | n as u64));
    rows.iter()
        .for_each(|&(a, b)| eat((a as u64) << 32 | b as u64));
    row_items.iter().for_each(|&e| eat(e as u64));
    h.finish()
}

#[cfg(test)]
mod shape_tests {
    use super::*;

    #[test]
    fn targets_shift_within_rows_and_segments_follow_positions() {
        // Two rows of 5: row 0 packs two examples (3 + 2 tokens), row 1 one example of 3 and
        // 2 padding tokens (positions 0, labels ignored).
        let mut b = Batch::new(2, 5);
        b.labels = vec![10, 11, 12, 20, 21, 30, 31, 32, IGNORE, IGNORE];
        b.positions = vec![0, 1, 2, 0, 1, 0, 1, 2, 0, 0];
        b.check_shape(2, 5, "test").unwrap();
        let mut targets = vec![0; 10];
        let mut segments = Vec::with_capacity(10);
        b.shifted_targets_and_segments(&mut targets, &mut segments);
        assert_eq!(
            targets,
            [11, 12, 20, 21, IGNORE, 31, 32, IGNORE, IGNORE, IGNORE]
        );
        assert_eq!(segments, [(0, 3), (3, 2), (5, 5)]);
        // A mismatched batch is an error naming the numbers.
        let e = b.check_shape(1, 5, "test").unwrap_err().to_string();
        assert!(e.contains("2 × 5") && e.contains("1 × 5"), "{e}");
        b.positions.pop();
        let e = b.check_shape(2, 5, "test").unwrap_err().to_string();
        assert!(e.contains("9 positions"), "{e}");
    }
}
