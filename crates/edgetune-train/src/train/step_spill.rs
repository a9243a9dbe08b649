//! Where a training step keeps the layer inputs its backward recomputes from, when not as f32
//! in the arena: packed as bf16 in the arena (`--checkpoint-dtype bf16`), or in a spill file
//! (`--checkpoints-on disk`, f32 or bf16). [`save_layer_input`] runs when layer `k`'s input is
//! complete (after the embedding, or at the end of layer `k − 1`'s forward);
//! [`load_layer_input`] at the first sub-step of layer `k`'s recompute, restoring it into the
//! buffer the recompute and the backward read (`L{k}.xr`, train::plan_llama).
//!
//! The spill file holds one slot per layer (`[T, D]` f32, or `[⌈T·D/2⌉]` slots of bf16 pairs),
//! written with positioned writes and read back with positioned reads: nothing is mapped, so
//! the file's pages sit in the kernel's page cache (reclaimable) and never in the process's
//! resident set. It is created with the step's run and removed when the step is dropped.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::step_ids::StepIds;
use edgetune_core::backend::cpu::bf16_pack::{pack_bf16, unpack_bf16};
use edgetune_core::memory::arena::Arena;
use edgetune_core::{Error, Result};

/// File name of the spill file in the run directory.
pub const SPILL_FILE: &str = "layer-inputs.spill";

/// The layer-input spill file: `n_layer` slots of `slot_bytes`.
#[derive(Debug)]
pub struct CheckpointSpill {
    file: File,
    path: PathBuf,
    slot_bytes: usize,
    n_layer: usize,
}

impl CheckpointSpill {
    /// Creates (or truncates) `dir/layer-inputs.spill` sized for `n_layer` slots.
    pub fn create(dir: &Path, n_layer: usize, slot_bytes: usize) -> Result<CheckpointSpill> {
        let path = dir.join(SPILL_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let len = (n_layer as u64)
            .checked_mul(slot_bytes as u64)
            .ok_or_else(|| Error::Invalid("checkpoint spill: the file size overflows".into()))?;
        file.set_len(len).map_err(|e| Error::io(&path, e))?;
        Ok(CheckpointSpill {
            file,
            path,
            slot_bytes,
            n_layer,
        })
    }

    /// Bytes of one layer's slot.
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// Bytes of the whole file.
    pub fn file_bytes(&self) -> u64 {
        self.n_layer as u64 * self.slot_bytes as u64
    }

    fn offset(&self, layer: usize, len: usize) -> Result<u64> {
        if layer >= self.n_layer || len != self.slot_bytes {
            return Err(Error::Invalid(format!(
                "checkpoint spill {}: slot {layer} of {} with {len} bytes, slots hold {}",
                self.path.display(),
                self.n_layer,
                self.slot_bytes
            )));
        }
        Ok(layer as u64 * self.slot_bytes as u64)
    }

    fn write(&self, layer: usize, bytes: &[u8]) -> Result<()> {
        let at = self.offset(layer, bytes.len())?;
        write_at(&self.file, bytes, at).map_err(|e| Error::io(&self.path, e))
    }

    fn read(&self, layer: usize, bytes: &mut [u8]) -> Result<()> {
        let at = self.offset(layer, bytes.len())?;
        read_at(&self.file, bytes, at).map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for CheckpointSpill {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!("could not remove {}: {e}", self.path.display());
        }
    }
}

#[cfg(unix)]
fn write_at(file: &File, src: &[u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, src, at)
}

#[cfg(unix)]
fn read_at(file: &File, dst: &mut [u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, dst, at)
}

#[cfg(not(unix))]
fn write_at(_file: &File, _src: &[u8], _at: u64) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "checkpoints on disk need positioned writes (unix)",
    ))
}

#[cfg(not(unix))]
fn read_at(_file: &File, _dst: &mut [u8], _at: u64) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "checkpoints on disk need positioned reads (unix)",
    ))
}

/// How the step keeps its layer inputs.
#[derive(Clone, Copy, Debug)]
pub(super) struct InputStore {
    pub bf16: bool,
    pub on_disk: bool,
}

impl InputStore {
    /// Bytes of one layer's spill slot for `tokens × dim` values.
    pub fn slot_bytes(self, tokens: usize, dim: usize) -> usize {
        let n = tokens * dim;
        if self.bf16 { n.div_ceil(2) * 4 } else { n * 4 }
    }
}

fn spill_of(spill: Option<&CheckpointSpill>) -> Result<&CheckpointSpill> {
    spill.ok_or_else(|| {
        Error::Invalid(
            "training step: planned with the layer inputs on disk, but no spill file is \
             attached (TrainStep::set_checkpoint_spill)"
                .into(),
        )
    })
}

/// Layer `k`'s input `L{k}.x` is complete at schedule step `st`: keep it as the store says
/// (bf16 also rounds the f32 copy to the kept values).
pub(super) fn save_layer_input(
    ar: &mut Arena,
    ids: &StepIds,
    store: InputStore,
    spill: Option<&CheckpointSpill>,
    k: usize,
    st: u32,
) -> Result<()> {
    let Some(li) = ids.layers.get(k) else {
        return Ok(());
    };
    match (store.on_disk, store.bf16) {
        (false, false) => Ok(()),
        (false, true) => {
            let [x, packed] = ar.views_mut_at(st, [li.x, li.x_saved])?;
            pack_bf16(x, packed)
        }
        (true, true) => {
            let [x, stage] = ar.views_mut_at(st, [li.x, ids.ckpt_stage])?;
            pack_bf16(x, stage)?;
            spill_of(spill)?.write(k, bytemuck::cast_slice(stage))
        }
        (true, false) => {
            let [x] = ar.views_mut_at(st, [li.x])?;
            spill_of(spill)?.write(k, bytemuck::cast_slice(x))
        }
    }
}

/// Restores layer `k`'s input into `L{k}.xr` at schedule step `st` (the first sub-step of its
/// recompute).
pub(super) fn load_layer_input(
    ar: &mut Arena,
    ids: &StepIds,
    store: InputStore,
    spill: Option<&CheckpointSpill>,
    k: usize,
    st: u32,
) -> Result<()> {
    let Some(li) = ids.layers.get(k) else {
        return Ok(());
    };
    match (store.on_disk, store.bf16) {
        (false, false) => Ok(()),
        (false, true) => {
            let [packed, x] = ar.views_mut_at(st, [li.x_saved, li.x_back])?;
            unpack_bf16(packed, x)
        }
        (true, true) => {
            let [stage, x] = ar.views_mut_at(st, [ids.ckpt_stage, li.x_back])?;
            spill_of(spill)?.read(k, bytemuck::cast_slice_mut(stage))?;
            unpack_bf16(stage, x)
        }
        (true, false) => {
            let [x] = ar.views_mut_at(st, [li.x_back])?;
            spill_of(spill)?.read(k, bytemuck::cast_slice_mut(x))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_and_a_wrong_slot_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let spill = CheckpointSpill::create(dir.path(), 3, 8).unwrap();
        assert_eq!(spill.file_bytes(), 24);
        spill.write(2, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        spill.write(0, &[9; 8]).unwrap();
        let mut back = [0u8; 8];
        spill.read(2, &mut back).unwrap();
        assert_eq!(back, [1, 2, 3, 4, 5, 6, 7, 8]);
        let e = spill.write(3, &[0; 8]).unwrap_err().to_string();
        assert!(e.contains(SPILL_FILE) && e.contains("slot 3 of 3"), "{e}");
        let e = spill.read(1, &mut [0u8; 4]).unwrap_err().to_string();
        assert!(e.contains("4 bytes, slots hold 8"), "{e}");
        let path = dir.path().join(SPILL_FILE);
        assert!(path.exists());
        drop(spill);
        assert!(!path.exists(), "removed with the step");
    }
}
