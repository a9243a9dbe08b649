//! Task ids of multi-task data (MT-LoRA, docs/METHODS.md#mt-lora): records may carry
//! `"task": "name"`; names map to ids `0, 1, …` in first-seen order after the names already
//! known (a checkpoint's list), so ids are stable across a resume and an export.

use super::TokenizedExample;

/// The task of a record without a `task` field.
pub const DEFAULT_TASK: &str = "default";

/// `(names, id of each example)`: `known[i]` keeps id `i`; new names (and [`DEFAULT_TASK`] for
/// records without a task) follow in the order they first appear in `examples`.
pub fn assign(examples: &[TokenizedExample], known: &[String]) -> (Vec<String>, Vec<u32>) {
    let mut names: Vec<String> = known.to_vec();
    let ids = examples
        .iter()
        .map(|ex| {
            let name = ex.task.as_deref().unwrap_or(DEFAULT_TASK);
            match names.iter().position(|n| n == name) {
                Some(i) => i as u32,
                None => {
                    names.push(name.to_string());
                    (names.len() - 1) as u32
                }
            }
        })
        .collect();
    if names.is_empty() {
        names.push(DEFAULT_TASK.to_string());
    }
    (names, ids)
}

/// FNV-1a of the names and ids (for the batcher's fingerprint).
pub fn hash(names: &[String], ids: &[u32]) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    for n in names {
        h.write(n.as_bytes());
        h.write_u8(0);
    }
    for id in ids {
        h.write(&id.to_le_bytes());
    }
    h.finish()
}
