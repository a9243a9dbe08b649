//! Paged AdamW state (docs/METHODS.md#paged-optimizer-state): RAM and file-backed pages give
//! bit-identical updates, and a checkpoint save/load continues a run bit for bit (also across RAM
//! and disk).

use edgetune::optim::{AdamW, AdamWConfig, ParamSpec, StateBits, StateStorage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NUMELS: [usize; 4] = [4096 * 2 + 5, 100, 300, 5000];

fn build(bits: StateBits, storage: &StateStorage) -> AdamW {
    let groups = edgetune::optim::lora_plus_groups(4.0, 0.01);
    let specs: Vec<ParamSpec> = NUMELS
        .iter()
        .enumerate()
        .map(|(i, &numel)| ParamSpec {
            numel,
            group: i % 2,
        })
        .collect();
    AdamW::new(AdamWConfig::default(), &groups, &specs, bits, storage).unwrap()
}

/// Deterministic gradients for step `t`.
fn grads(t: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(1000 + t);
    NUMELS
        .iter()
        .map(|&n| (0..n).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect()
}

fn initial_params() -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(5);
    NUMELS
        .iter()
        .map(|&n| (0..n).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect()
}

/// Runs steps `from..to` of `opt` on `params`.
fn run(opt: &mut AdamW, params: &mut [Vec<f32>], from: u64, to: u64) {
    for t in from..to {
        let g = grads(t);
        let mut p: Vec<&mut [f32]> = params.iter_mut().map(|p| p.as_mut_slice()).collect();
        let g: Vec<&[f32]> = g.iter().map(|g| g.as_slice()).collect();
        opt.step(&mut p, &g, 1e-2).unwrap();
    }
}

fn moments(opt: &AdamW) -> Vec<(Vec<f32>, Vec<f32>)> {
    NUMELS
        .iter()
        .enumerate()
        .map(|(id, &n)| {
            let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
            opt.moments(id, &mut m, &mut v).unwrap();
            (m, v)
        })
        .collect()
}

#[test]
fn ram_and_disk_pages_give_identical_updates() {
    let dir = tempfile::tempdir().unwrap();
    for bits in [StateBits::F32, StateBits::Eight] {
        let mut ram = build(bits, &StateStorage::Ram);
        let mut disk = build(bits, &StateStorage::Disk(dir.path().to_path_buf()));
        let (mut p_ram, mut p_disk) = (initial_params(), initial_params());
        run(&mut ram, &mut p_ram, 1, 8);
        run(&mut disk, &mut p_disk, 1, 8);
        assert_eq!(p_ram, p_disk, "{bits:?}");
        assert_eq!(moments(&ram), moments(&disk), "{bits:?}");
        // The parameters did move.
        assert_ne!(p_ram, initial_params());
    }
    // The state files are unlinked: nothing is left in the directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn save_load_continues_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    for bits in [StateBits::F32, StateBits::Eight] {
        // Uninterrupted: 10 steps.
        let mut whole = build(bits, &StateStorage::Ram);
        let mut p_whole = initial_params();
        run(&mut whole, &mut p_whole, 1, 11);

        // Interrupted after 6 steps, saved, loaded into fresh optimizers (RAM and disk).
        let mut first = build(bits, &StateStorage::Ram);
        let mut p_first = initial_params();
        run(&mut first, &mut p_first, 1, 7);
        let mut ckpt = Vec::new();
        first.save(&mut ckpt).unwrap();
        for storage in [
            StateStorage::Ram,
            StateStorage::Disk(dir.path().to_path_buf()),
        ] {
            let mut resumed = build(bits, &storage);
            resumed.load(&mut ckpt.as_slice()).unwrap();
            assert_eq!(resumed.step_count(), 6);
            let mut p = p_first.clone();
            run(&mut resumed, &mut p, 7, 11);
            assert_eq!(p, p_whole, "{bits:?} {storage:?}");
            assert_eq!(moments(&resumed), moments(&whole), "{bits:?} {storage:?}");
            assert_eq!(resumed.step_count(), 10);
        }
        // A checkpoint of another layout is refused; a truncated one too.
        let other_bits = if bits == StateBits::F32 {
            StateBits::Eight
        } else {
            StateBits::F32
        };
        assert!(
            build(other_bits, &StateStorage::Ram)
                .load(&mut ckpt.as_slice())
                .is_err()
        );
        assert!(
            build(bits, &StateStorage::Ram)
                .load(&mut &ckpt[..ckpt.len() - 1])
                .is_err()
        );
    }
}
