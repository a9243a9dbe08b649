//! Tests of the trainer's optimizer (train/optimizer.rs): a non-finite gradient refused with the
//! step, the adapter and advice that fits; the fused per-layer update equal to the unfused one.

use super::*;
use edgetune_core::testmodel::TINY;

/// Gradients held per slot, as an engine would.
struct Grads(Vec<Vec<f32>>);

impl GradSlots for Grads {
    fn grads_mut(&mut self, layer: usize, target_index: usize) -> Result<&mut [f32]> {
        Ok(&mut self.0[layer * 7 + target_index])
    }
}

fn setup(max_grad_norm: f32) -> (AdapterSet, Optimizer, Grads) {
    let model = TINY.llama_config();
    let mut cfg = TrainConfig {
        max_grad_norm,
        lr: 1e-3,
        ..TrainConfig::default()
    };
    cfg.lora.rank = 2;
    let set = AdapterSet::new_lora(&model, &cfg.lora, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opt = Optimizer::new(&cfg, &set, 10, dir.path()).unwrap();
    let mut grads = vec![Vec::new(); model.n_layer * 7];
    for (layer, target, a) in set.iter() {
        let n: usize = (0..).map_while(|i| a.param(i).map(<[f32]>::len)).sum();
        grads[layer * 7 + target_index(target)] = vec![1e-3; n];
    }
    (set, opt, Grads(grads))
}

#[test]
fn a_non_finite_gradient_names_the_step_the_adapter_and_fitting_advice() {
    let (mut set, mut opt, mut g) = setup(1.0);
    opt.update(&mut g, &mut set).unwrap();
    let slot = 7 + target_index(Target::FfnUp);
    g.0[slot][5] = f32::NAN;
    g.0[7 + target_index(Target::FfnDown)][0] = f32::INFINITY;
    let before = set
        .iter()
        .map(|(_, _, a)| a.param(0).unwrap().to_vec())
        .collect::<Vec<_>>();
    let e = opt.update(&mut g, &mut set).unwrap_err().to_string();
    assert!(
        e.contains("step 2")
            && e.contains("blk.1.ffn_up")
            && e.contains("NaN at element 5")
            && e.contains("clipping (--max-grad-norm 1)")
            && e.contains("cannot repair"),
        "{e}"
    );
    assert_eq!(opt.step_count(), 1, "nothing was updated");
    let after = set
        .iter()
        .map(|(_, _, a)| a.param(0).unwrap().to_vec())
        .collect::<Vec<_>>();
    assert_eq!(after, before);
    // Without clipping the advice is to clip; before any update, the lr is not the cause.
    let (mut set, mut opt, mut g) = setup(0.0);
    opt.update(&mut g, &mut set).unwrap();
    g.0[0][0] = f32::NAN;
    let e = opt.update(&mut g, &mut set).unwrap_err().to_string();
    assert!(
        e.contains("blk.0.attn_q") && e.contains("clip the gradient with --max-grad-norm 1"),
        "{e}"
    );
    let (mut set, mut opt, mut g) = setup(1.0);
    g.0[0][0] = f32::NAN;
    let e = opt.update(&mut g, &mut set).unwrap_err().to_string();
    assert!(
        e.contains("step 1") && e.contains("learning rate is not the cause"),
        "{e}"
    );
}

#[test]
fn a_fused_step_equals_the_unfused_one_and_names_a_non_finite_layer() {
    // Fused, layer by layer from the top (as the backward runs), clipped by the measured
    // norm: the same parameters and norm as one update.
    let (mut set_a, mut opt_a, mut ga) = setup(1e-3);
    let (mut set_b, mut opt_b, mut gb) = setup(1e-3);
    let n_layer = set_a.n_layer();
    let a = opt_a.update(&mut ga, &mut set_a).unwrap();
    opt_b.clear_norm();
    for l in (0..n_layer).rev() {
        opt_b.measure_layer(l, &mut gb, &set_b).unwrap();
    }
    opt_b.begin_fused(true).unwrap();
    for l in (0..n_layer).rev() {
        opt_b.update_layer(l, &mut gb, &mut set_b).unwrap();
    }
    assert_eq!(opt_b.finish_fused().unwrap(), a);
    let params = |s: &AdapterSet| {
        s.iter()
            .map(|(_, _, a)| a.param(0).unwrap().to_vec())
            .collect::<Vec<_>>()
    };
    assert_eq!(params(&set_a), params(&set_b));
    // Clipping without the norm pass is refused; a non-finite measured norm updates nothing.
    assert!(opt_b.begin_fused(false).is_err());
    gb.0[7][3] = f32::NAN;
    opt_b.clear_norm();
    for l in (0..n_layer).rev() {
        opt_b.measure_layer(l, &mut gb, &set_b).unwrap();
    }
    let e = opt_b.begin_fused(true).unwrap_err().to_string();
    assert!(e.contains("step 2") && e.contains("blk.1.attn_q"), "{e}");
    assert_eq!(opt_b.step_count(), 1);
    // Without clipping, the layer that holds it is named, and the layers above are said to
    // be updated already.
    let (mut set, mut opt, mut g) = setup(0.0);
    g.0[3][0] = f32::INFINITY;
    opt.begin_fused(false).unwrap();
    for l in (1..n_layer).rev() {
        opt.update_layer(l, &mut g, &mut set).unwrap();
    }
    let e = opt
        .update_layer(0, &mut g, &mut set)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("step 1")
            && e.contains("blk.0.attn_output")
            && e.contains("layers above blk.0 were already updated"),
        "{e}"
    );
    assert!(
        opt.fused_in_flight(),
        "a stopped fused step is not a state to save"
    );
}
