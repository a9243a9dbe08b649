//! The trainer loop behind `edgetune train`: loads the model and the data, plans and allocates
//! the step, builds the adapters and the optimizer (or resumes them from the newest
//! checkpoint), then runs optimizer steps — each `accum` micro-batches of forward, loss and
//! backward, one clipped update — writing `metrics.jsonl`, checkpoints and `summary.json`.
//!
//! [`Trainer::step`] is one optimizer step and allocates nothing (tests/train_alloc.rs);
//! `run.rs` drives it.

use std::fs;
use std::time::Instant;

use super::adapter_set::AdapterSet;
use super::checkpoint;
use super::config::TrainConfig;
use super::embed_rows::EmbeddingRows;
use super::method_hooks::MethodHooks;
use super::optimizer::Optimizer;
use super::replay::ReplayReport;
use super::step::{TrainStep, adapter_shapes};
use crate::train::budget;
use crate::train::plan_llama::TrainShape;
use edgetune_core::data::Batch;
use edgetune_core::data::mix::MixedBatcher;
use edgetune_core::gguf::GgufFile;
use edgetune_core::memory::rss::memory_usage;
use edgetune_core::model::Llama;
use edgetune_core::model::finite::ScanReads;
use edgetune_core::tokenizer::vocab::KEY_EOS;
use edgetune_core::{Error, Result};

mod batches;
mod between_steps;

pub use super::metrics::{Progress, Summary};

/// A loaded, planned training run over one mapped model.
pub struct Trainer<'f> {
    pub(super) cfg: TrainConfig,
    llama: Llama<'f>,
    pub(super) set: AdapterSet,
    /// The method's additions to the step (AdaLoRA allocation, layer importance, on_step).
    hooks: MethodHooks,
    pub(super) step: TrainStep,
    /// Where the micro-batches run (engine.rs; the CPU `step` unless a device was chosen).
    engine: super::engine::Engine<'f>,
    opt: Optimizer,
    batcher: MixedBatcher,
    /// The replay data mixed in (`--replay`), for the summary.
    pub(super) replay: Option<ReplayReport>,
    /// One per micro-batch of a step.
    batches: Vec<Batch>,
    total_steps: u64,
    pub(super) tokens: u64,
    pub(super) elapsed_s: f64,
    pub(super) resumed_from: Option<u64>,
    pub(super) planned_bytes: u64,
    /// The model file's fingerprint, recorded in every checkpoint.
    model_fingerprint: String,
    /// The run directory's lock, held as long as the trainer.
    _lock: super::run_dir::RunLock,
}

impl<'f> Trainer<'f> {
    /// Loads the data and the model of `cfg` (from `file`), builds and plans everything, and
    /// resumes from the newest checkpoint in `cfg.out` when `cfg.resume` is set. Locks `cfg.out`
    /// for the trainer's lifetime first (another run there is refused) and refuses a fresh run
    /// into a directory that holds a previous run or other files unless `cfg.overwrite`
    /// (`run_dir.rs`); a resume verifies the checkpoint's manifest and model fingerprint.
    pub fn new(file: &'f GgufFile, cfg: &TrainConfig) -> Result<Trainer<'f>> {
        cfg.validate()?;
        // The run directory is this run's until the trainer is dropped; a fresh run needs it
        // empty (or `overwrite`), a resume needs it there (run_dir.rs).
        let lock = super::run_dir::prepare(cfg)?;
        let model_fingerprint = super::fingerprint::model_fingerprint_hex(&cfg.model)?;
        // MT-LoRA: the task names come from the data (the plan needs their count).
        let (cfg, early_data) = super::method_tasks::prepare(cfg)?;
        let cfg = &cfg;
        // The plan from the header alone: over budget, refuse before allocating anything.
        let planned = budget::plan_training(file, cfg)?;
        planned.breakdown.check()?;
        // Streamed layers (`--weights stream`, or the plan's choice under a small budget).
        let streamed = super::step_weights::plans_streaming(file, &planned)?;
        if cfg.lock_weights {
            file.lock()?;
        }
        log_memory("before loading");
        let mut llama = Llama::load(file)?;
        llama.set_train_compute(cfg.compute)?;
        let model_cfg = llama.config().clone();
        // NaN/Inf in the base weights: named now, not met as a NaN loss at step 1.
        let reads = if streamed {
            ScanReads::All
        } else if EmbeddingRows::applies(file, cfg.lock_weights, planned.shape.stream_head) {
            ScanReads::Embedding
        } else {
            ScanReads::Map
        };
        let scan = edgetune_core::model::finite::check_weights(file, &model_cfg, reads)?;
        log::info!(
            "weights checked finite: {} tensors, {} values in {:.3} s",
            scan.tensors,
            scan.values,
            scan.seconds
        );
        let (mut batcher, replay, total_steps) =
            batches::load(file, &llama, cfg, early_data, model_cfg.n_vocab)?;

        // Adapters: resumed, given, or fresh.
        let resume_dir = if cfg.resume {
            let latest = checkpoint::resume_point(&cfg.out, cfg.resume_fallback)?;
            if latest.is_none() {
                return Err(Error::Invalid(format!(
                    "--resume {}: no checkpoint in {} to continue from (start a new run with \
                     --out, or resume the directory a run checkpointed into)",
                    cfg.out.display(),
                    checkpoint::checkpoints_dir(&cfg.out).display()
                )));
            }
            latest
        } else {
            None
        };
        let mut set = match &cfg.init_adapter {
            Some(path) if resume_dir.is_none() => {
                if !cfg.method.plain_lora() {
                    return Err(Error::Invalid(format!(
                        "--init-adapter starts a plain LoRA; method {} builds its own adapters",
                        cfg.method
                    )));
                }
                let set = crate::export::load_any(path, &model_cfg)?;
                log::info!("starting from adapter {}", path.display());
                set
            }
            _ => super::adapter_set::build_adapters(
                cfg.method,
                &model_cfg,
                cfg,
                total_steps,
                cfg.seed,
                Some(llama.weights()),
            )?,
        };
        let mut hooks = MethodHooks::with_options(cfg.method, &set, &cfg.method_opts)?;
        let shape = TrainShape {
            seq_len: cfg.seq_len,
            micro_batch: cfg.batch,
            ce_chunk: planned.shape.ce_chunk,
            checkpointing: cfg.checkpointing,
            accumulate: cfg.accum > 1,
            optimizer_staging: false,
            // Each layer updated after its backward (`--fused-update`, or the plan's choice).
            fused_update: planned.shape.fused_update,
            checkpoint_bf16: planned.shape.checkpoint_bf16,
            checkpoints_on_disk: planned.shape.checkpoints_on_disk,
            stream_head: planned.shape.stream_head,
            adapters: adapter_shapes(&set),
        };
        fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
        let mut opt = Optimizer::new(cfg, &set, total_steps, &cfg.out)?;
        let mut step = TrainStep::new(llama.backend_model(), &set, shape)?;
        step.set_kl_anchor(cfg.kl_anchor)?;
        // Every worker's quantized-matmul scratch sized for the widest matrix up front.
        edgetune_core::quant::matmul::reserve_scratch(
            model_cfg.dim.max(model_cfg.q_dim()).max(model_cfg.ffn),
        );
        if let Some(rows) = EmbeddingRows::for_file(
            file,
            step.tokens(),
            cfg.lock_weights,
            step.shape().stream_head,
        )? {
            step.set_embedding_rows(rows)?;
        }
        // A spill file left by a killed run holds nothing a resume needs.
        let stale = cfg.out.join(super::SPILL_FILE);
        if !step.shape().checkpoints_on_disk && stale.exists() {
            fs::remove_file(&stale).map_err(|e| Error::io(&stale, e))?;
        }
        if step.shape().checkpoints_on_disk {
            let slot = step.checkpoint_slot_bytes();
            let spill = super::CheckpointSpill::create(&cfg.out, model_cfg.n_layer, slot)?;
            step.set_checkpoint_spill(spill)?;
        }
        if streamed {
            super::step_weights::attach_stream(
                &mut step,
                file,
                &llama,
                cfg.compute,
                cfg.head_chunk_rows,
            )?;
            log_memory("weights streamed, map released");
        }
        if step.plan().arena_bytes() != planned.plan.arena_bytes() {
            log::warn!(
                "the step's arena ({} bytes) differs from the budget plan's ({} bytes)",
                step.plan().arena_bytes(),
                planned.plan.arena_bytes()
            );
        }
        let planned_bytes = planned.breakdown.total_bytes;

        let (mut tokens, mut elapsed_s, mut resumed_from) = (0, 0.0, None);
        if let Some(dir) = resume_dir {
            let state = checkpoint::read_state(&dir)?;
            checkpoint::check_model(&dir, &state, &cfg.model, &model_fingerprint)?;
            let diff = checkpoint::config_differences(&state.config, cfg);
            if !diff.is_empty() {
                return Err(Error::Invalid(format!(
                    "{}: --resume needs the same settings as the checkpointed run; these differ: {}",
                    dir.display(),
                    diff.join("; ")
                )));
            }
            if checkpoint::keeps_method_state(cfg.method) {
                checkpoint::load_method_into(&dir, &mut set, &mut hooks, &mut opt)?;
            } else {
                set = checkpoint::load_into(&dir, &model_cfg, &mut opt)?;
            }
            batcher.restore(&state.cursor, state.replay_cursor.as_ref())?;
            if opt.step_count() != state.step {
                return Err(Error::Invalid(format!(
                    "{}: optimizer state is at step {}, the run state at {}",
                    dir.display(),
                    opt.step_count(),
                    state.step
                )));
            }
            (tokens, elapsed_s, resumed_from) = (state.tokens, state.elapsed_s, Some(state.step));
            log::info!("resuming from {} (step {})", dir.display(), state.step);
        }
        if cfg.adapter_weights == super::config::StatePlace::Disk {
            if !set.params_paged() {
                // A set built in RAM (a checkpoint or `--init-adapter` loaded): page it, and
                // give the heap it leaves back to the kernel.
                let bytes = set.page_params(&cfg.out)?;
                edgetune_core::memory::rss::return_freed_heap();
                log::info!(
                    "adapter weights paged from a {bytes}-byte file in {}",
                    cfg.out.display()
                );
            }
            // A resume may have loaded a method's state into the pages: none stays resident.
            set.release_all()?;
        }
        log_memory("step planned and allocated");
        let batches = (0..cfg.accum)
            .map(|_| Batch::new(cfg.batch, cfg.seq_len))
            .collect();
        Ok(Trainer {
            cfg: cfg.clone(),
            llama,
            set,
            hooks,
            step,
            engine: Default::default(),
            opt,
            batcher,
            replay,
            batches,
            total_steps,
            tokens,
            elapsed_s,
            resumed_from,
            planned_bytes,
            model_fingerprint,
            _lock: lock,
        })
    }

    /// Runs the micro-batches on `device` from now on (engine.rs): `Cpu` keeps the CPU step;
    /// CUDA builds a device step for the plain-LoRA family (other methods are an error). The
    /// plan is redone with the device step's planned bytes ([`super::plan_device_step`], before
    /// anything is allocated) in place of the CPU arena (its workspace counts where it lives in
    /// host DRAM) and checked against the budget again; the step is then built (an error if it
    /// allocated other than planned) and the CPU arena freed.
    /// `file` is the one the trainer was made from.
    pub fn use_device(&mut self, file: &'f GgufFile, device: super::engine::Device) -> Result<()> {
        if self.step.stream_stats().is_some() && !matches!(device, super::engine::Device::Cpu) {
            return Err(Error::Invalid(
                "streamed weights run on the CPU step only; a device step uploads every layer \
                 (use --weights map with --device cuda)"
                    .into(),
            ));
        }
        if self.step.shape.fused_update && !matches!(device, super::engine::Device::Cpu) {
            return Err(Error::Invalid(
                "the fused per-layer update runs on the CPU step only (use --fused-update off \
                 with a device)"
                    .into(),
            ));
        }
        let shape = &self.step.shape;
        if (shape.checkpoint_bf16 || shape.checkpoints_on_disk)
            && !matches!(device, super::engine::Device::Cpu)
        {
            return Err(Error::Invalid(
                "bf16 or on-disk layer checkpoints run on the CPU step only (use \
                 --checkpoint-dtype f32 --checkpoints-on ram with a device)"
                    .into(),
            ));
        }
        let (cpu_total, arena) = (self.planned_bytes, self.step.arena_bytes() as u64);
        let chunk = self.step.shape.ce_chunk;
        let Some((engine, total)) = super::engine::Engine::planned(
            device,
            file,
            &self.llama,
            &self.set,
            &self.cfg,
            chunk,
            cpu_total,
            arena,
        )?
        else {
            self.engine = super::engine::Engine::Cpu;
            return Ok(());
        };
        self.engine = engine;
        self.planned_bytes = total;
        // The CPU step's arena would sit unused beside the device workspace: free it.
        self.step.release_arena();
        Ok(())
    }

    /// Optimizer steps completed.
    pub fn completed(&self) -> u64 {
        self.opt.step_count()
    }

    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }

    pub fn adapters(&self) -> &AdapterSet {
        &self.set
    }

    /// The optimizer (its state, for checks).
    pub fn optimizer(&self) -> &Optimizer {
        &self.opt
    }

    /// The method's hooks (AdaLoRA allocation, layer-importance weights).
    pub fn hooks(&self) -> &MethodHooks {
        &self.hooks
    }

    pub fn train_step(&self) -> &TrainStep {
        &self.step
    }

    /// The run's configuration (MT-LoRA: with the data's task names filled in).
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// MT-LoRA: the last step's mean loss and the weight of each task, by name, for
    /// `metrics.jsonl` (`task_losses` leaves out tasks absent from the step). `None` otherwise.
    pub fn task_metrics(&self) -> Option<(serde_json::Value, serde_json::Value)> {
        Some(
            self.hooks
                .tasks()?
                .metrics(&self.cfg.method_opts.mtlora_tasks),
        )
    }

    /// The run's planned peak in bytes (the budget's total; with a device engine, its
    /// workspace and staging in place of the CPU arena).
    pub fn planned_bytes(&self) -> u64 {
        self.planned_bytes
    }

    /// Bytes of the device engine's one workspace (0 when the micro-batches run on the CPU).
    pub fn device_bytes(&self) -> usize {
        self.engine.device_bytes()
    }

    /// One optimizer step: `accum` micro-batches, clipping, the update. `None` when the steps
    /// or the data are used up. Allocates nothing.
    pub fn step(&mut self) -> Result<Option<Progress>> {
        if self.completed() >= self.total_steps {
            return Ok(None);
        }
        let t0 = Instant::now();
        let mut n = 0;
        for b in self.batches.iter_mut() {
            if !self.batcher.next_batch(b) {
                break;
            }
            n += 1;
        }
        if n == 0 {
            return Ok(None);
        }
        let targets: usize = self.batches[..n].iter().map(TrainStep::count_targets).sum();
        let scale = 1.0 / targets.max(1) as f32;
        let step_no = self.completed() + 1;
        let mut loss = 0.0;
        let mut kl = (0.0, 0);
        self.hooks.before_step(&mut self.set, step_no);
        self.hooks.weigh_tasks(&self.batches[..n], &mut self.step)?;
        let stats = if self.step.shape.fused_update {
            // One micro-batch (accumulation is refused with it); hooks: none of the methods it
            // allows uses them (config_kinds.rs fused_update_support).
            let l = self.fused_micro_batch(step_no, scale)?;
            if !l.is_finite() {
                return Err(self.non_finite_loss(step_no, 0, n, l));
            }
            loss = l;
            if let Some((sum, tokens)) = self.step.last_kl() {
                kl = (sum, tokens);
            }
            self.opt.finish_fused()?
        } else {
            let model = self.llama.backend_model();
            for (i, b) in self.batches[..n].iter().enumerate() {
                let seed = micro_seed(self.cfg.seed, step_no, i);
                self.hooks.route(&mut self.set, b)?;
                let l = self.engine.micro_batch(
                    &mut self.step,
                    model,
                    &self.set,
                    b,
                    scale,
                    i == 0,
                    seed,
                )?;
                if !l.is_finite() {
                    return Err(self.non_finite_loss(step_no, i, n, l));
                }
                loss += l;
                self.hooks.after_micro_batch(&self.step);
                if let Some((sum, tokens)) = self.step.last_kl() {
                    kl = (kl.0 + sum, kl.1 + tokens);
                }
            }
            self.hooks.after_backward(&mut self.step, &self.set)?;
            self.hooks.before_update(&self.set, &mut self.opt)?;
            self.engine
                .update(&mut self.opt, &mut self.step, &mut self.set)?
        };
        self.hooks
            .after_update(step_no - 1, &mut self.step, &mut self.set)?;
        let secs = t0.elapsed().as_secs_f64();
        let tokens = (n * self.cfg.batch * self.cfg.seq_len) as u64;
        self.tokens += tokens;
        self.elapsed_s += secs;
        Ok(Some(Progress {
            step: stats.step,
            total_steps: self.total_steps,
            loss: loss / targets.max(1) as f64,
            lr: stats.lr,
            grad_norm: stats.grad_norm,
            tok_per_s: tokens as f64 / secs.max(1e-9),
            targets: targets as u64,
            elapsed_s: self.elapsed_s,
            eval: None,
            kl: (kl.1 > 0).then(|| kl.0 / kl.1 as f64),
        }))
    }

    /// The step's one micro-batch with each layer updated after its backward. With clipping a
    /// norm-only pass runs first (the same forward and backward, bit for bit: same batch, same
    /// dropout seed), so the update clips by the exact global norm. The optimizer's step begins
    /// at the first layer's update, so a non-finite loss leaves it untouched. Returns `Σ loss`.
    fn fused_micro_batch(&mut self, step_no: u64, scale: f32) -> Result<f64> {
        let seed = micro_seed(self.cfg.seed, step_no, 0);
        let model = self.llama.backend_model();
        let batch = &self.batches[0];
        let clipping = self.cfg.max_grad_norm > 0.0;
        let opt = &mut self.opt;
        if clipping {
            opt.clear_norm();
            let l = self.step.micro_batch_fused(
                model,
                &mut self.set,
                batch,
                scale,
                seed,
                &mut |l, st, set| opt.measure_layer(l, st, set),
            )?;
            if !l.is_finite() {
                return Ok(l);
            }
        }
        let mut begun = false;
        let l = self.step.micro_batch_fused(
            model,
            &mut self.set,
            batch,
            scale,
            seed,
            &mut |l, st, set| {
                if !begun {
                    opt.begin_fused(clipping)?;
                    begun = true;
                }
                opt.update_layer(l, st, set)
            },
        )?;
        if !begun && l.is_finite() {
            // No adapted layer: the step still counts.
            opt.begin_fused(clipping)?;
        }
        Ok(l)
    }

    /// The error for a non-finite loss in micro-batch `micro` (of `n`) of step `step_no`,
    /// with advice that fits: before the first update the learning rate cannot be the cause.
    /// Nothing of the step is applied and no checkpoint is written for it.
    fn non_finite_loss(&self, step_no: u64, micro: usize, n: usize, loss: f64) -> Error {
        let cfg = &self.cfg;
        let advice = if self.completed() == 0 {
            let start = match &cfg.init_adapter {
                Some(p) => format!("the adapter given by --init-adapter {}", p.display()),
                None => "the fresh adapter".into(),
            };
            format!(
                "no update has been made yet, so the learning rate is not the cause: the base \
                 weights were checked finite before the first step, so {start} or the forward \
                 on this data overflows (try a shorter --seq-len, or another --init-adapter)"
            )
        } else if cfg.max_grad_norm > 0.0 {
            format!(
                "the updates so far made the adapter diverge even with the gradient clipped to \
                 --max-grad-norm {}: lower --lr (now {:e}) or add --warmup-steps",
                cfg.max_grad_norm, cfg.lr
            )
        } else {
            format!(
                "the updates so far made the adapter diverge: lower --lr (now {:e}), or clip the \
                 gradient with --max-grad-norm 1",
                cfg.lr
            )
        };
        Error::NonFinite(format!(
            "training stopped at step {step_no}: the loss of micro-batch {} of {n} is {loss}; \
             {advice}. Nothing of this step was applied and no checkpoint was written for it \
             (earlier checkpoints in {} are kept)",
            micro + 1,
            checkpoint::checkpoints_dir(&cfg.out).display()
        ))
    }
}

/// The dropout stream of micro-batch `micro` of step `step`.
fn micro_seed(seed: u64, step: u64, micro: usize) -> u64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((micro as u64) << 48);
    z = (z ^ (z >> 31)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    z ^ (z >> 32)
}

/// Logs the resident set at `stage` (debug level).
fn log_memory(stage: &str) {
    if let Ok(Some(m)) = memory_usage() {
        log::debug!(
            "memory {stage}: rss {} (file {}, anon {}), peak {}",
            m.rss,
            m.rss_file,
            m.rss_anon,
            m.peak_rss
        );
    }
}

/// The EOS id from the file's metadata, without building a tokenizer.
fn eos_id(file: &GgufFile) -> Option<u32> {
    file.opt_u32(KEY_EOS).ok().flatten()
}

#[cfg(test)]
mod sync_tests {
    /// A trainer (which may hold a weight stream) crosses threads in the front ends: the Python
    /// package releases the GIL around its calls, the C ABI hands its handle to any thread.
    #[test]
    fn a_step_and_a_trainer_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<super::super::TrainStep>();
        send_sync::<super::Trainer<'static>>();
    }
}
