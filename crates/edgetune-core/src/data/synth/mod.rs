//! The built-in synthetic IoT data, seeded and deterministic, in English and Indonesian:
//! - the assistant set ([`assistant`], over the fictional devices of [`catalog`]): chat
//!   conversations a real pretrained model learns in the demo, with a held-out split, harmful
//!   prompts, a retention suite and the seed cases to measure it;
//! - the generated task set (below, Alpaca records): computed answers about readings, units,
//!   commands and decimals, which the random-weights test models learn the format of.
//!
//! The generated task set:
//! Categories (each example's `task` field names it): `threshold` (a sensor reading against
//! its alarm threshold: temperature, humidity, pressure, CO₂, vibration), `convert` (°C↔°F,
//! kPa↔psi, m/s↔km/h), `command` (an operator's request → a JSON command), `anomaly` (a
//! short series with one spike or dip → an explanation), `compare` (decimal comparisons such
//! as "Which is larger, 9.11 or 9.9?", with tricky digit counts) and `fibonacci` (the next
//! three terms).
//!
//! Answers are computed, not templated guesses: readings, thresholds and decimals are held as
//! integers of their last decimal place, so differences and comparisons are exact;
//! conversions are rounded to the number of decimals they print. Indonesian text writes
//! decimals with a comma (22,5 °C) and lists readings with semicolons, as Indonesian does;
//! JSON commands are language-neutral (decimal point, English keys).
//!
//! Prompts (instruction + input) are unique across the train and held-out splits together.

pub mod assistant;
pub mod catalog;
mod prompts;
mod replay_prompts;
mod tasks;

pub use assistant::{
    AssistantSet, AssistantSizes, ChatPair, HeldoutCase, REFUSAL, SYSTEM_PROMPT, assistant_set,
};
pub use prompts::retention;
pub use replay_prompts::{REPLAY_INDONESIAN_FROM, REPLAY_PROMPTS};

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::AlpacaExample;

/// The languages of the set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    En,
    Id,
}

/// The categories, in the order `generate` draws from.
pub const TASKS: [&str; 6] = [
    "threshold",
    "convert",
    "command",
    "anomaly",
    "compare",
    "fibonacci",
];

/// `n` training examples and a held-out split of `n / 10` (at least 1 when `n > 0`), from
/// `seed`; see [`generate_split`].
pub fn generate(seed: u64, n: usize) -> (Vec<AlpacaExample>, Vec<AlpacaExample>) {
    let heldout = if n == 0 { 0 } else { (n / 10).max(1) };
    generate_split(seed, n, heldout)
}

/// `n_train` and `n_heldout` examples with pairwise distinct prompts; the same seed gives the
/// same examples. Categories are drawn uniformly and the language is English or Indonesian
/// with equal odds; every 11th unique example goes to the held-out split until it is full.
/// The prompt space holds millions of examples; should it ever run dry, the splits come back
/// shorter (with a warning) rather than looping forever.
pub fn generate_split(
    seed: u64,
    n_train: usize,
    n_heldout: usize,
) -> (Vec<AlpacaExample>, Vec<AlpacaExample>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen: HashSet<(String, String)> = HashSet::with_capacity(n_train + n_heldout);
    let mut train = Vec::with_capacity(n_train);
    let mut heldout = Vec::with_capacity(n_heldout);
    let max_attempts = 50 * (n_train + n_heldout) + 1000;
    let mut unique = 0usize;
    for _ in 0..max_attempts {
        if train.len() == n_train && heldout.len() == n_heldout {
            break;
        }
        let lang = if rng.random_bool(0.5) {
            Lang::En
        } else {
            Lang::Id
        };
        let task = TASKS[rng.random_range(0..TASKS.len())];
        let ex = one(&mut rng, task, lang);
        if !seen.insert((ex.instruction.clone(), ex.input.clone())) {
            continue;
        }
        let to_heldout = heldout.len() < n_heldout && (unique % 11 == 10 || train.len() == n_train);
        unique += 1;
        if to_heldout {
            heldout.push(ex);
        } else if train.len() < n_train {
            train.push(ex);
        }
    }
    if train.len() < n_train || heldout.len() < n_heldout {
        log::warn!(
            "synthetic set: only {} + {} distinct examples of {} + {} asked",
            train.len(),
            heldout.len(),
            n_train,
            n_heldout
        );
    }
    (train, heldout)
}

/// One example of category `task` (one of [`TASKS`]) in `lang`.
pub fn one(rng: &mut StdRng, task: &str, lang: Lang) -> AlpacaExample {
    let (instruction, input, output) = match task {
        "threshold" => tasks::threshold(rng, lang),
        "convert" => tasks::convert(rng, lang),
        "command" => tasks::command(rng, lang),
        "anomaly" => tasks::anomaly(rng, lang),
        "compare" => tasks::compare(rng, lang),
        _ => tasks::fibonacci(rng, lang),
    };
    AlpacaExample {
        instruction,
        input,
        output,
        task: Some(task.to_string()),
    }
}

/// `ticks` units of the `decimals`-th decimal place as text (exact): `fixed(-305, 1)` is
/// "-30.5" in English and "-30,5" in Indonesian.
pub fn fixed(ticks: i64, decimals: u32, lang: Lang) -> String {
    let scale = 10i64.pow(decimals);
    let sign = if ticks < 0 { "-" } else { "" };
    let (int, frac) = (
        ticks.unsigned_abs() / scale as u64,
        ticks.unsigned_abs() % scale as u64,
    );
    if decimals == 0 {
        return format!("{sign}{int}");
    }
    let sep = match lang {
        Lang::En => '.',
        Lang::Id => ',',
    };
    format!("{sign}{int}{sep}{frac:0width$}", width = decimals as usize)
}

/// `x` rounded to `decimals` places as text (no "-0.0").
pub fn rounded(x: f64, decimals: u32, lang: Lang) -> String {
    let scale = 10f64.powi(decimals as i32);
    let ticks = (x * scale).round() as i64;
    fixed(ticks, decimals, lang)
}

/// A random pick from a non-empty slice.
fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_text() {
        assert_eq!(fixed(-305, 1, Lang::En), "-30.5");
        assert_eq!(fixed(-5, 1, Lang::Id), "-0,5");
        assert_eq!(fixed(911, 2, Lang::En), "9.11");
        assert_eq!(fixed(7, 3, Lang::En), "0.007");
        assert_eq!(fixed(1200, 0, Lang::Id), "1200");
        assert_eq!(rounded(-0.04, 1, Lang::En), "0.0");
        assert_eq!(rounded(14.6959, 2, Lang::Id), "14,70");
    }
}
