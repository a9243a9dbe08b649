//! `Trainer::replace_params` and `Trainer::eval_loss`, the two calls the Python package's
//! `set_adapter` and `evaluate` (federated averaging) stand on: parameters written from
//! outside the optimizer are the ones the next step trains from, and the held-out loss is the
//! loss the step computes, without gradients or a change to the adapters.

use edgetune::data::Batch;
use edgetune::gguf::GgufFile;
use edgetune::train::Trainer;

use crate::train_support;

/// Copies every parameter of `from` into `to` (same method, same shapes).
fn copy_params(from: &[Vec<f32>], to: &mut edgetune::train::AdapterSet) {
    let mut it = from.iter();
    for (_, _, a) in to.iter_mut() {
        let mut i = 0;
        while let Some(p) = a.param_mut(i) {
            p.copy_from_slice(it.next().unwrap());
            i += 1;
        }
    }
}

#[test]
fn replaced_params_are_trained_from_and_eval_loss_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q4_0", 64);
    let file = GgufFile::open(&model).unwrap();
    let cfg = train_support::config(&model, &data, &dir.path().join("a"), 6);

    // Run A: 3 steps, snapshot, 3 more.
    let mut a = Trainer::new(&file, &cfg).unwrap();
    for _ in 0..3 {
        a.step().unwrap().unwrap();
    }
    let mid = train_support::all_params(a.adapters());
    // Held-out loss: the same twice, and the parameters untouched.
    let mut batch = Batch::new(cfg.batch, cfg.seq_len);
    for i in 0..batch.ids.len() {
        batch.ids[i] = (i * 7 % 200) as u32 + 3;
        batch.labels[i] = batch.ids[i] as i32;
        batch.positions[i] = (i % cfg.seq_len) as u32;
    }
    batch.rows = cfg.batch;
    batch.n_targets = batch.ids.len();
    let (l1, n1) = a.eval_loss(&batch).unwrap();
    let (l2, n2) = a.eval_loss(&batch).unwrap();
    assert!(l1.is_finite() && l1 > 0.0 && n1 > 0);
    assert_eq!((l1, n1), (l2, n2));
    assert_eq!(train_support::all_params(a.adapters()), mid);
    // A wrong shape is an error, not a panic.
    assert!(
        a.eval_loss(&Batch::new(cfg.batch, cfg.seq_len + 1))
            .is_err()
    );
    a.step().unwrap().unwrap();

    // Run B: a fresh trainer whose parameters are replaced by A's at step 3 trains, in its
    // first step, to different values than a fresh start, and evaluates as A did.
    let mut cfg_b = cfg.clone();
    cfg_b.out = dir.path().join("b");
    let mut b = Trainer::new(&file, &cfg_b).unwrap();
    let fresh = train_support::all_params(b.adapters());
    assert_ne!(fresh, mid);
    b.replace_params(|set| {
        copy_params(&mid, set);
        Ok(())
    })
    .unwrap();
    assert_eq!(train_support::all_params(b.adapters()), mid);
    let (lb, nb) = b.eval_loss(&batch).unwrap();
    assert_eq!((lb, nb), (l1, n1));
    // An error from the closure comes back as it is.
    let err = b
        .replace_params(|_| -> edgetune::Result<()> { Err(edgetune::Error::Invalid("no".into())) })
        .unwrap_err();
    assert_eq!(err.to_string(), "no");
    b.step().unwrap().unwrap();
    let after = train_support::all_params(b.adapters());
    assert_ne!(after, mid);
}
