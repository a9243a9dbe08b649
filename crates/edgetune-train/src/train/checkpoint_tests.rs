//! Unit tests of `checkpoint.rs` on a real (tiny) trainer: a full disk at a save, a prune cut
//! between its rename and its delete, leftovers of a killed save, a corrupt newest checkpoint.

use std::path::Path;

use super::fault;
use super::*;
use crate::train::{TrainConfig, Trainer};
use edgetune_core::gguf::GgufFile;
use edgetune_core::testmodel::{self, TINY, WeightTypes};

/// A tiny model and data in `dir`, and a 6-step run into `dir/run`.
fn fixture(dir: &Path) -> TrainConfig {
    let model = dir.join("tiny.gguf");
    testmodel::write_test_model(&TINY, WeightTypes::parse("q8_0").unwrap(), 3, &model).unwrap();
    let data = dir.join("iot.jsonl");
    let (train, _) = edgetune_core::data::synth::generate(5, 40);
    let text: String = train
        .iter()
        .map(|ex| serde_json::to_string(ex).unwrap() + "\n")
        .collect();
    std::fs::write(&data, text).unwrap();
    let mut cfg = TrainConfig {
        model,
        data,
        out: dir.join("run"),
        steps: Some(6),
        seq_len: 256,
        pack: true,
        batch: 1,
        lr: 1e-3,
        ce_chunk: 16,
        ..TrainConfig::default()
    };
    cfg.lora.rank = 2;
    cfg.lora.alpha = 4.0;
    cfg
}

/// The names in `DIR/checkpoints`, sorted.
fn names(out: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(checkpoints_dir(out))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_full_disk_at_a_save_removes_the_partial_checkpoint_keeps_the_previous_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fixture(dir.path());
    let file = GgufFile::open(&cfg.model).unwrap();
    let mut trainer = Trainer::new(&file, &cfg).unwrap();
    trainer.step().unwrap().unwrap();
    trainer.checkpoint().unwrap();
    trainer.step().unwrap().unwrap();
    for (name, fit) in [("optimizer.bin", 100), ("state.json", 10)] {
        fault::disk_full_at(name, fit);
        let e = trainer.checkpoint().unwrap_err();
        fault::clear();
        let text = e.to_string();
        let want = Path::new(".tmp-step-00000002").join(name);
        assert!(
            matches!(e, Error::Io { .. }) && text.contains(&want.display().to_string()),
            "{text}"
        );
        assert!(text.contains("No space left on device"), "{text}");
        assert!(!text.contains("Os {") && !text.contains('<'), "{text}");
        assert_eq!(names(&cfg.out), ["step-00000001"], "{name}");
        let kept = checkpoints_dir(&cfg.out).join("step-00000001");
        assert_eq!(
            checkpoint_manifest::verify(&kept).unwrap(),
            checkpoint_manifest::Verified::Complete
        );
    }
    // With space again, the save goes through.
    trainer.checkpoint().unwrap();
    assert_eq!(names(&cfg.out), ["step-00000001", "step-00000002"]);
}

#[test]
fn a_prune_cut_after_its_rename_leaves_no_half_checkpoint_and_leftovers_are_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fixture(dir.path());
    let file = GgufFile::open(&cfg.model).unwrap();
    let mut trainer = Trainer::new(&file, &cfg).unwrap();
    for _ in 0..2 {
        trainer.step().unwrap().unwrap();
        trainer.checkpoint().unwrap();
    }
    trainer.step().unwrap().unwrap();
    fault::stop_after_trash_rename(true);
    assert!(trainer.checkpoint().is_err());
    fault::clear();
    // The pruned checkpoint is no `step-*` any more, whole or half.
    assert_eq!(
        names(&cfg.out),
        [".trash-step-00000001", "step-00000002", "step-00000003"]
    );
    let newest = resume_point(&cfg.out, false).unwrap().unwrap();
    assert!(newest.ends_with("step-00000003"), "{}", newest.display());
    // A save cut short leaves a `.tmp-*`; the next save removes both kinds of leftover.
    std::fs::create_dir(checkpoints_dir(&cfg.out).join(".tmp-step-00000009")).unwrap();
    trainer.step().unwrap().unwrap();
    trainer.checkpoint().unwrap();
    assert_eq!(names(&cfg.out), ["step-00000003", "step-00000004"]);
}

#[test]
fn a_corrupt_newest_checkpoint_is_named_and_the_fallback_takes_the_newest_valid_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fixture(dir.path());
    let file = GgufFile::open(&cfg.model).unwrap();
    let mut trainer = Trainer::new(&file, &cfg).unwrap();
    for _ in 0..2 {
        trainer.step().unwrap().unwrap();
        trainer.checkpoint().unwrap();
    }
    drop(trainer);
    let root = checkpoints_dir(&cfg.out);
    let bad = root.join("step-00000002").join("optimizer.bin");
    let mut bytes = std::fs::read(&bad).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&bad, &bytes).unwrap();
    let e = resume_point(&cfg.out, false).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::Corrupt { .. }), "{text}");
    assert!(text.contains(&bad.display().to_string()), "{text}");
    assert!(text.contains("SHA-256"), "{text}");
    assert!(
        text.contains(&root.join("step-00000001").display().to_string())
            && text.contains("--resume-fallback"),
        "{text}"
    );
    // A checkpoint from before manifests still loads.
    std::fs::remove_file(root.join("step-00000001").join("manifest.json")).unwrap();
    let taken = resume_point(&cfg.out, true).unwrap().unwrap();
    assert!(taken.ends_with("step-00000001"), "{}", taken.display());
    assert_eq!(names(&cfg.out), ["corrupt-step-00000002", "step-00000001"]);
    // The trainer resumes from it.
    let resume = TrainConfig {
        resume: true,
        ..cfg.clone()
    };
    let trainer = Trainer::new(&file, &resume).unwrap();
    assert_eq!(trainer.completed(), 1);
}
