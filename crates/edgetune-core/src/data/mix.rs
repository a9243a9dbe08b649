//! The training data and replay data in one stream of batches (`train --replay`): a fixed share
//! of the rows of every stretch of micro-batches comes from the replay data (general
//! conversations the model should not forget), the rest from the training data.
//!
//! Which rows. Row `k` of the whole run (micro-batch `k / B`, row `k % B`) is a replay row when
//! `⌊(k+1)·ratio⌋ > ⌊k·ratio⌋`: exactly `⌊n·ratio⌋` of the first `n` rows, spread evenly (at
//! ratio 0.25 and B = 2, the second row of every other micro-batch). The rule needs no state,
//! so a resumed run knows which rows are replay rows from the step count alone.
//!
//! Both datasets are batched as [`Batcher`] rows (packed or cut the same way, each shuffled per
//! epoch with its own seed). The training data runs on across epochs without a partial batch;
//! the replay data simply starts over when it is used up. Epochs and `max_steps` count the
//! training data's passes and the mixed batches, as without replay. The checkpoint saves both
//! cursors ([`MixedBatcher::cursor`], [`MixedBatcher::replay_cursor`]).

use super::IGNORE;
use super::batch::{Batch, Batcher, Cursor};
use crate::{Error, Result};

/// The training data's batches, with replay rows mixed in when a replay set is given.
#[derive(Clone, Debug)]
pub struct MixedBatcher {
    main: Batcher,
    /// The replay rows' batcher and their share of all rows, in `(0, 1)`.
    replay: Option<(Batcher, f64)>,
}

/// Whether row `k` of the run is a replay row at `ratio` (module doc).
pub fn is_replay_row(k: u64, ratio: f64) -> bool {
    ((k + 1) as f64 * ratio).floor() > (k as f64 * ratio).floor()
}

impl MixedBatcher {
    /// The training data alone: exactly [`Batcher`]'s batches.
    pub fn plain(main: Batcher) -> MixedBatcher {
        MixedBatcher { main, replay: None }
    }

    /// `main` with a share `ratio` of rows from `replay` (batched with the same row shape; its
    /// own epochs and step limit are not used: it starts over when used up).
    pub fn with_replay(main: Batcher, replay: Batcher, ratio: f32) -> Result<MixedBatcher> {
        if !(ratio > 0.0 && ratio < 1.0) {
            return Err(Error::Invalid(format!(
                "replay: the share of replay rows must be above 0 and below 1, got {ratio}"
            )));
        }
        let (a, b) = (main.config(), replay.config());
        if a.seq_len != b.seq_len || a.batch_size != b.batch_size {
            return Err(Error::Invalid(format!(
                "replay: its rows are {} × {} tokens, the training data's {} × {}",
                b.batch_size, b.seq_len, a.batch_size, a.seq_len
            )));
        }
        Ok(MixedBatcher {
            main,
            replay: Some((replay, ratio as f64)),
        })
    }

    /// The training data's batcher (its stats, tasks and configuration).
    pub fn main(&self) -> &Batcher {
        &self.main
    }

    /// The replay data's batcher, when there is one.
    pub fn replay(&self) -> Option<&Batcher> {
        self.replay.as_ref().map(|(b, _)| b)
    }

    pub fn task_names(&self) -> &[String] {
        self.main.task_names()
    }

    /// Where the training data stands; its `steps` counts the mixed batches.
    pub fn cursor(&self) -> Cursor {
        self.main.cursor()
    }

    /// Where the replay data stands (`None` without replay).
    pub fn replay_cursor(&self) -> Option<Cursor> {
        self.replay.as_ref().map(|(b, _)| b.cursor())
    }

    /// Continues from cursors taken from a stream over the same data and settings; with replay
    /// both must be given, without it none.
    pub fn restore(&mut self, main: &Cursor, replay: Option<&Cursor>) -> Result<()> {
        match (&mut self.replay, replay) {
            (Some((b, _)), Some(c)) => b.restore(c)?,
            (None, None) => {}
            (Some(_), None) => {
                return Err(Error::Invalid(
                    "the checkpoint has no replay cursor, but this run mixes replay data in".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(Error::Invalid(
                    "the checkpoint has a replay cursor, but this run has no replay data".into(),
                ));
            }
        }
        self.main.restore(main)
    }

    /// Whether the run's epochs or steps are used up.
    pub fn finished(&self) -> bool {
        self.main.finished()
    }

    /// Batches the whole run hands out, or `None` when neither epochs nor steps limit it.
    pub fn total_steps(&self) -> Option<u64> {
        let Some((_, ratio)) = &self.replay else {
            return self.main.total_steps();
        };
        let cfg = self.main.config();
        let by_epochs = cfg.epochs.map(|e| {
            // The fewest rows `n` holding `e` passes over the training rows: `n − ⌊n·ratio⌋`
            // of them are training rows.
            let need = e * self.main.n_rows() as u64;
            let mut n = ((need as f64 / (1.0 - ratio)).floor() as u64).saturating_sub(2);
            while n - (n as f64 * ratio).floor() as u64 > need && n > 0 {
                n -= 1;
            }
            while n - ((n as f64 * ratio).floor() as u64) < need {
                n += 1;
            }
            n.div_ceil(cfg.batch_size as u64)
        });
        match (by_epochs, cfg.max_steps) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fills `out` with the next batch; false (and `out` untouched) when the run is over.
    /// Allocates only if `out` does not have the configured shape.
    pub fn next_batch(&mut self, out: &mut Batch) -> bool {
        let Some((replay, ratio)) = &mut self.replay else {
            return self.main.next_batch(out);
        };
        if self.main.finished() {
            return false;
        }
        let cfg = self.main.config();
        let (b, l, pad, epochs) = (cfg.batch_size, cfg.seq_len, cfg.pad_id, cfg.epochs);
        if out.batch_size != b || out.seq_len != l || out.ids.len() != b * l {
            *out = Batch::new(b, l);
        }
        out.rows = 0;
        out.tasks.resize(b, 0);
        out.tasks.fill(0);
        out.replay_rows.resize(b, false);
        out.replay_rows.fill(false);
        let first = self.main.cursor().steps * b as u64;
        for r in 0..b {
            if is_replay_row(first + r as u64, *ratio) {
                replay.next_row_into(out, r);
                out.replay_rows[r] = true;
                // Replay rows carry no task of the training data (MT-LoRA refuses replay).
                out.tasks[r] = 0;
            } else if epochs.is_some_and(|e| self.main.cursor().epoch >= e) {
                // The last epoch ended inside this batch: the rest is padding.
                Batcher::pad_row(out, r, 0, pad);
            } else {
                self.main.next_row_into(out, r);
            }
        }
        out.n_targets = out.labels.iter().filter(|&&x| x != IGNORE).count();
        self.main.count_steps(1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{BatchConfig, TokenizedExample};

    /// `n` examples of 3 tokens, ids `base + i`, every token a target.
    fn examples(base: u32, n: u32) -> Vec<TokenizedExample> {
        (0..n)
            .map(|i| TokenizedExample {
                ids: vec![base + i; 3],
                labels: vec![(base + i) as i32; 3],
                task: None,
            })
            .collect()
    }

    fn batcher(ex: &[TokenizedExample], epochs: Option<u64>, steps: Option<u64>) -> Batcher {
        let cfg = BatchConfig {
            seq_len: 4,
            batch_size: 4,
            pack: false,
            seed: 7,
            epochs,
            max_steps: steps,
            pad_id: 0,
        };
        Batcher::new(ex, cfg).unwrap()
    }

    /// The first id of every data row of `out` (padding rows: none).
    fn row_heads(out: &Batch) -> Vec<u32> {
        (0..out.batch_size)
            .filter(|&r| out.row(r).1.iter().any(|&x| x != IGNORE))
            .map(|r| out.row(r).0[0])
            .collect()
    }

    #[test]
    fn the_share_of_replay_rows_is_exact_and_evenly_spread() {
        let (main, replay) = (examples(100, 10), examples(1000, 3));
        let mut mix = MixedBatcher::with_replay(
            batcher(&main, None, Some(20)),
            batcher(&replay, None, None),
            0.25,
        )
        .unwrap();
        assert_eq!(mix.total_steps(), Some(20));
        let mut out = Batch::new(4, 4);
        let mut replay_rows = 0;
        let mut steps = 0;
        while mix.next_batch(&mut out) {
            let heads = row_heads(&out);
            assert_eq!(heads.len(), 4, "every row holds data");
            // One row in four, and always the last row of the micro-batch at B = 4.
            assert!(
                heads[3] >= 1000 && heads[..3].iter().all(|&h| h < 1000),
                "{heads:?}"
            );
            replay_rows += heads.iter().filter(|&&h| h >= 1000).count();
            // The batch marks its replay rows (the KL anchor reads the marks).
            let marked: Vec<bool> = heads.iter().map(|&h| h >= 1000).collect();
            assert_eq!(out.replay_rows, marked);
            assert_eq!(
                out.n_targets,
                4 * 3 - 4,
                "the first token of an example is no target"
            );
            steps += 1;
        }
        assert_eq!((steps, replay_rows), (20, 20));
        // The schedule: exactly ⌊n·r⌋ of the first n rows, for a ratio that does not divide B.
        for n in [1u64, 7, 10, 33, 1000] {
            let count = (0..n).filter(|&k| is_replay_row(k, 0.3)).count() as u64;
            assert_eq!(count, (n as f64 * 0.3).floor() as u64, "n = {n}");
        }
    }

    #[test]
    fn epochs_count_the_training_data_and_every_row_comes_once() {
        let (main, replay) = (examples(100, 10), examples(1000, 3));
        let mut mix = MixedBatcher::with_replay(
            batcher(&main, Some(2), None),
            batcher(&replay, None, None),
            0.4,
        )
        .unwrap();
        let total = mix.total_steps().unwrap();
        let mut out = Batch::new(4, 4);
        let (mut seen, mut steps) = (Vec::new(), 0);
        while mix.next_batch(&mut out) {
            seen.extend(row_heads(&out).into_iter().filter(|&h| h < 1000));
            steps += 1;
        }
        assert_eq!(steps, total);
        seen.sort_unstable();
        let want: Vec<u32> = (100..110).flat_map(|i| [i, i]).collect();
        assert_eq!(seen, want, "two passes, each training row once per pass");
    }

    #[test]
    fn a_restored_stream_goes_on_with_the_same_batches() {
        let (main, replay) = (examples(100, 9), examples(1000, 5));
        let make = || {
            MixedBatcher::with_replay(
                batcher(&main, None, Some(12)),
                batcher(&replay, None, None),
                0.3,
            )
            .unwrap()
        };
        let mut a = make();
        let mut out = Batch::new(4, 4);
        for _ in 0..5 {
            assert!(a.next_batch(&mut out));
        }
        let (c, rc) = (a.cursor(), a.replay_cursor().unwrap());
        let mut b = make();
        b.restore(&c, Some(&rc)).unwrap();
        let mut out_b = Batch::new(4, 4);
        while a.next_batch(&mut out) {
            assert!(b.next_batch(&mut out_b));
            assert_eq!(out, out_b);
        }
        assert!(!b.next_batch(&mut out_b));
        // Without the replay cursor, or with one from other data: refused.
        let mut c2 = make();
        assert!(c2.restore(&c, None).is_err());
        let other = batcher(&examples(2000, 5), None, None).cursor();
        let e = c2.restore(&c, Some(&other)).unwrap_err().to_string();
        assert!(e.contains("fingerprint"), "{e}");
    }

    #[test]
    fn without_replay_the_batches_are_the_batchers() {
        let main = examples(100, 7);
        let mut plain = batcher(&main, Some(2), None);
        let mut mix = MixedBatcher::plain(batcher(&main, Some(2), None));
        assert_eq!(mix.total_steps(), plain.total_steps());
        let (mut a, mut b) = (Batch::new(4, 4), Batch::new(4, 4));
        while plain.next_batch(&mut a) {
            assert!(mix.next_batch(&mut b));
            assert_eq!(a, b);
        }
        assert!(!mix.next_batch(&mut b));
        assert!(mix.replay_cursor().is_none());
        // A bad ratio or a replay batcher of another shape is an error naming the numbers.
        let replay = batcher(&main, None, None);
        let e = MixedBatcher::with_replay(batcher(&main, None, Some(1)), replay.clone(), 1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("got 1"), "{e}");
    }
}
