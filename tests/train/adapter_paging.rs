//! Adapter weights paged from a file (`--adapter-weights disk`, adapters/param_buf.rs): the
//! same maths reads the same f32 values, so every loss and every parameter is bit-identical to
//! the weights in RAM — over the methods (each holds its tensors its own way), the unfused
//! update, the fused update on streamed layers with clipping, and a resume that switches
//! place; inside a fused step only the running layer's tensors are resident; after a step and
//! after a checkpoint none is; the plan counts one layer's weights resident and the rest on
//! disk, and suggests the lever when a budget is short.

use std::path::PathBuf;

use edgetune::adapters::{Adapter, LoraConfig};
use edgetune::data::Batch;
use edgetune::gguf::GgufFile;
use edgetune::memory::rss::mapping_resident_bytes;
use edgetune::model::Llama;
use edgetune::testmodel::{Preset, TINY, WeightTypes, write_test_model};
use edgetune::train::budget::plan_training;
use edgetune::train::plan_llama::TrainShape;
use edgetune::train::step::adapter_shapes;
use edgetune::train::{
    AdapterSet, FusedUpdate, Method, StatePlace, TrainConfig, TrainStep, Trainer, WeightsMode,
};

use crate::train_support;

const STEPS: u64 = 2;

/// A 4-layer tiny model and a small dataset: `(dir, data, model)`.
fn fixture() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = train_support::write_fixture(dir.path(), "q4_0", 40);
    let p = Preset { n_layer: 4, ..TINY };
    let model = dir.path().join("tiny4.gguf");
    write_test_model(&p, WeightTypes::parse("q4_k_m").unwrap(), 17, &model).unwrap();
    (dir, data, model)
}

/// Resident bytes of one paged tensor's map.
fn resident(buf: (usize, usize)) -> u64 {
    mapping_resident_bytes(buf.0)
        .unwrap()
        .expect("a paged tensor's map is in /proc/self/smaps")
}

/// Resident bytes of every paged tensor of `a`.
fn adapter_resident(a: &dyn Adapter) -> u64 {
    let mut i = 0;
    let mut sum = 0;
    while let Some(b) = a.param_buf(i) {
        sum += resident(b.paged_range().expect("the tensor is paged"));
        i += 1;
    }
    sum
}

/// `(losses, gradient norms, parameters)` of a run, and the resident bytes of its paged
/// tensors once built, after every step and after the final checkpoint (empty in RAM).
fn run(cfg: &TrainConfig) -> (Vec<f64>, Vec<f64>, Vec<Vec<f32>>, Vec<u64>) {
    let file = GgufFile::open(&cfg.model).unwrap();
    let mut t = Trainer::new(&file, cfg).unwrap();
    let paged = cfg.adapter_weights == StatePlace::Disk;
    assert_eq!(t.adapters().params_paged(), paged);
    let all_resident = |t: &Trainer| -> u64 {
        t.adapters()
            .iter()
            .map(|(_, _, a)| adapter_resident(a))
            .sum()
    };
    let (mut losses, mut norms, mut resident) = (Vec::new(), Vec::new(), Vec::new());
    if paged {
        // Built (or loaded on a resume) and released: nothing resident before the first step.
        resident.push(all_resident(&t));
    }
    while let Some(p) = t.step().unwrap() {
        losses.push(p.loss);
        norms.push(p.grad_norm);
        if paged {
            resident.push(all_resident(&t));
        }
    }
    t.checkpoint().unwrap();
    if paged {
        resident.push(all_resident(&t));
    }
    (
        losses,
        norms,
        train_support::all_params(t.adapters()),
        resident,
    )
}

fn paged(cfg: &TrainConfig) -> TrainConfig {
    TrainConfig {
        adapter_weights: StatePlace::Disk,
        out: cfg.out.with_extension("paged"),
        ..cfg.clone()
    }
}

#[test]
fn paged_adapter_weights_train_bit_for_bit_like_weights_in_ram() {
    let (dir, data, model) = fixture();
    let base = train_support::config(&model, &data, &dir.path().join("lora"), STEPS);
    let mut accum = base.clone();
    accum.accum = 2;
    accum.out = dir.path().join("accum");
    // Streamed layers, each layer's adapters updated after its backward, clipped by the exact
    // norm (a norm-only pass first): the paged tensors are read, written and released per
    // layer in both passes.
    let mut fused = base.clone();
    fused.weights = WeightsMode::Stream;
    fused.fused_update = FusedUpdate::On;
    fused.max_grad_norm = 0.5;
    fused.out = dir.path().join("fused");
    let mut cfgs = vec![base.clone(), accum, fused];
    // Every way a method holds its tensors: LoRA's pair, DoRA's magnitude, AdaLoRA's `E` (its
    // hooks mask it outside the optimizer), IR-QLoRA's IEC scalars, OLoRA's pair beside a
    // frozen one, ResLoRA, DyLoRA's rank sampling, HiRA.
    for method in [
        Method::Dora,
        Method::Adalora,
        Method::Irqlora,
        Method::Olora,
        Method::Reslora,
        Method::Dylora,
        Method::Hira,
    ] {
        let mut c = base.clone();
        c.method = method;
        c.out = dir.path().join(method.to_string());
        cfgs.push(c);
    }
    for cfg in cfgs {
        let name = cfg.out.file_name().unwrap().to_string_lossy().to_string();
        let (loss_ram, norm_ram, params_ram, _) = run(&cfg);
        let (loss_disk, norm_disk, params_disk, resident) = run(&paged(&cfg));
        assert_eq!(loss_ram.len() as u64, STEPS, "{name}");
        assert!(
            loss_ram.iter().all(|l| l.is_finite()),
            "{name}: {loss_ram:?}"
        );
        assert_eq!(loss_ram, loss_disk, "{name}: losses");
        assert_eq!(norm_ram, norm_disk, "{name}: gradient norms");
        assert_eq!(params_ram, params_disk, "{name}: parameters");
        assert_eq!(
            resident,
            vec![0; STEPS as usize + 2],
            "{name}: paged bytes left resident when built, after each step and the checkpoint"
        );
    }
}

#[test]
fn a_resume_may_switch_where_the_adapter_weights_live() {
    let (dir, data, model) = fixture();
    // Per method (LoRA reloads a fresh set, DoRA loads its state into the set it built): two
    // steps in RAM, resumed in RAM for a third, and the same two steps resumed with the weights
    // paged. The resumed steps must agree bit for bit, and a paged resume starts with nothing
    // resident.
    for method in [Method::Lora, Method::Dora] {
        let first = TrainConfig {
            method,
            ..train_support::config(&model, &data, &dir.path().join("ram"), STEPS)
        };
        let mut finals = Vec::new();
        for (out, place) in [("ram", StatePlace::Ram), ("disk", StatePlace::Disk)] {
            let mut c = first.clone();
            c.out = dir.path().join(format!("{method}-{out}"));
            run(&c);
            let resumed = TrainConfig {
                resume: true,
                steps: Some(STEPS + 1),
                adapter_weights: place,
                ..c
            };
            let (losses, _, params, resident) = run(&resumed);
            assert_eq!(losses.len(), 1, "{method} {out}: one more step");
            assert!(
                resident.iter().all(|&r| r == 0),
                "{method} {out}: {resident:?}"
            );
            finals.push((losses, params));
        }
        assert_eq!(finals[0], finals[1], "{method}");
    }
}

/// Residency inside a fused step: when layer `l`'s update runs, only layer `l`'s adapter
/// tensors are resident — the layers above were released after their updates, those below
/// after their forward.
#[test]
fn inside_a_fused_step_only_the_running_layers_weights_are_resident() {
    let dir = tempfile::tempdir().unwrap();
    let p = Preset { n_layer: 4, ..TINY };
    let path = dir.path().join("m.gguf");
    write_test_model(&p, WeightTypes::parse("q4_0").unwrap(), 5, &path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let llama = Llama::load(&file).unwrap();
    let cfg = llama.config().clone();
    let lc = LoraConfig {
        rank: 8,
        alpha: 16.0,
        ..LoraConfig::default()
    };
    let mut set = AdapterSet::new_lora(&cfg, &lc, 3).unwrap();
    let bytes = set.page_params(dir.path()).unwrap();
    assert!(bytes > 0 && set.params_paged());
    let n = 24;
    let mut batch = Batch::new(1, n);
    for i in 0..n {
        batch.ids[i] = (7 * i as u32 + 3) % cfg.n_vocab as u32;
        batch.positions[i] = i as u32;
        batch.labels[i] = if i == 0 { -100 } else { batch.ids[i] as i32 };
    }
    batch.rows = 1;
    let shape = TrainShape {
        fused_update: true,
        adapters: adapter_shapes(&set),
        ..TrainShape::lora(&cfg, n, 1, 8, 7, 8, true).unwrap()
    };
    let mut step = TrainStep::new(llama.backend_model(), &set, shape).unwrap();
    let mut seen = Vec::new();
    let loss = step
        .micro_batch_fused(
            llama.backend_model(),
            &mut set,
            &batch,
            1.0 / n as f32,
            9,
            &mut |l, _, set| {
                let per_layer: Vec<u64> = (0..set.n_layer())
                    .map(|layer| {
                        set.iter()
                            .filter(|(at, _, _)| *at == layer)
                            .map(|(_, _, a)| adapter_resident(a))
                            .sum()
                    })
                    .collect();
                seen.push((l, per_layer));
                Ok(())
            },
        )
        .unwrap();
    assert!(loss.is_finite());
    assert_eq!(seen.len(), cfg.n_layer, "{seen:?}");
    // A save reads every tensor and releases each adapter once written: with all of them
    // brought in first, none is left resident after it, and the file holds their values.
    let values = train_support::all_params(&set);
    let all: u64 = set.iter().map(|(_, _, a)| adapter_resident(a)).sum();
    assert!(all > 0);
    let saved = dir.path().join("saved");
    edgetune::export::native::save_adapter(&set, &saved, &serde_json::Value::Null).unwrap();
    let after: u64 = set.iter().map(|(_, _, a)| adapter_resident(a)).sum();
    assert_eq!(after, 0, "resident after a save");
    let loaded = edgetune::export::native::load_adapter(&saved, &cfg).unwrap();
    assert_eq!(train_support::all_params(&loaded), values);
    for (l, per_layer) in &seen {
        for (layer, &bytes) in per_layer.iter().enumerate() {
            if layer == *l {
                assert!(
                    bytes > 0,
                    "layer {l}'s backward read its adapters: {per_layer:?}"
                );
            } else {
                assert_eq!(
                    bytes, 0,
                    "at layer {l}'s update, layer {layer}: {per_layer:?}"
                );
            }
        }
    }
}

fn plan_adapters(cfg: &TrainConfig) -> edgetune::train::budget::Breakdown {
    let file = GgufFile::open(&cfg.model).unwrap();
    plan_training(&file, cfg).unwrap().breakdown
}

#[test]
fn the_plan_holds_one_layers_weights_and_suggests_paging_them() {
    let (dir, data, model) = fixture();
    // Mapped weights: under a budget `auto` could stream instead, which is not this lever.
    let ram = TrainConfig {
        weights: WeightsMode::Map,
        ..train_support::config(&model, &data, &dir.path().join("p"), STEPS)
    };
    let disk = paged(&ram);
    let (r, d) = (plan_adapters(&ram), plan_adapters(&disk));
    assert_eq!(r.adapters.place, "ram");
    assert_eq!(d.adapters.place, "disk");
    assert_eq!(r.adapters.disk_bytes, 0);
    assert_eq!(r.adapters.master_bytes, 4 * r.adapters.n_params);
    // Four layers alike: the file holds four layers' page-rounded tensors, one is resident.
    let layer = d.adapters.master_bytes;
    assert_eq!(d.adapters.disk_bytes, 4 * layer);
    assert!(layer >= r.adapters.master_bytes / 4, "{layer}");
    assert!(
        d.adapters.disk_bytes >= r.adapters.master_bytes,
        "page rounding only adds"
    );
    assert_eq!(
        r.total_bytes - d.total_bytes,
        r.adapters.master_bytes - layer,
        "only the adapters' line differs"
    );
    assert!(d.config.contains("--adapter-weights disk"), "{}", d.config);
    // A budget that only the paged weights fit is met by suggesting them.
    let short = TrainConfig {
        budget_bytes: Some(d.total_bytes),
        ..ram.clone()
    };
    let file = GgufFile::open(&model).unwrap();
    let planned = plan_training(&file, &short).unwrap();
    assert!(!planned.breakdown.fits);
    let found = &planned
        .breakdown
        .suggestions
        .as_ref()
        .expect("suggestions for a plan over budget")
        .found;
    assert!(
        found.iter().any(|s| s.flags == "--adapter-weights disk"),
        "{found:?}"
    );
}

/// Whatever the paged file name, nothing is left in the run directory (unlinked on Unix).
#[cfg(unix)]
#[test]
fn no_weights_file_is_left_in_the_run_directory() {
    let (dir, data, model) = fixture();
    let cfg = paged(&train_support::config(
        &model,
        &data,
        &dir.path().join("left"),
        1,
    ));
    run(&cfg);
    let left: Vec<_> = std::fs::read_dir(&cfg.out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("edgetune-adapter"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
