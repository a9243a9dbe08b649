//! Which engine runs the trainer's micro-batches: the CPU [`TrainStep`] (the default, every
//! method) or, with the `cuda` feature, a [`DeviceStep`] on a CUDA device for the plain-LoRA
//! family. The host [`AdapterSet`] and the host optimizer stay the same on both:
//! the device engine hands the optimizer its gradients one slot at a time through [`GradSlots`] and
//! mirrors the updated parameters back ([`DeviceStep::sync_params`]) after every update.
//!
//! Kept out of trainer.rs so that the trainer only swaps two calls (`micro_batch`, `update`)
//! for this module's.

use super::DeviceStep;
use super::adapter_set::AdapterSet;
use super::optimizer::{Optimizer, UpdateStats};
use super::step::TrainStep;
use super::step_device_plan::DeviceShape;
#[cfg(feature = "cuda")]
use edgetune_core::backend::cuda::CudaBackend;
use edgetune_core::data::Batch;
use edgetune_core::model::{BackendModel, Llama};
use edgetune_core::{Error, Result};

/// Where the gradients of a micro-batch step are read (and clipped) by the optimizer and the
/// method hooks: per slot `layer · 7 + target`, in the adapter's parameter order; empty for
/// an unadapted slot.
pub trait GradSlots {
    fn grads_mut(&mut self, layer: usize, target_index: usize) -> Result<&mut [f32]>;

    /// The same gradients for reading only (the optimizer's norm pass): a device engine need
    /// not send them back.
    fn grads(&mut self, layer: usize, target_index: usize) -> Result<&[f32]> {
        self.grads_mut(layer, target_index).map(|g| &*g)
    }
}

impl GradSlots for TrainStep {
    fn grads_mut(&mut self, layer: usize, target_index: usize) -> Result<&mut [f32]> {
        TrainStep::grads_mut(self, layer, target_index)
    }
}

/// A [`DeviceStep`]'s gradients as the optimizer sees them: one slot at a time, staged on the
/// host ([`DeviceStep::grads_mut`]).
pub struct DeviceGrads<'s, B: edgetune_core::backend::Backend> {
    pub step: &'s mut DeviceStep<B>,
    pub backend: &'s B,
}

impl<B: edgetune_core::backend::Backend> GradSlots for DeviceGrads<'_, B> {
    fn grads_mut(&mut self, layer: usize, target_index: usize) -> Result<&mut [f32]> {
        self.step.grads_mut(self.backend, layer, target_index)
    }

    fn grads(&mut self, layer: usize, target_index: usize) -> Result<&[f32]> {
        self.step.grads(self.backend, layer, target_index)
    }
}

/// The device a run trains on (`train::run_on`).
pub enum Device {
    /// The CPU [`TrainStep`] (every method).
    Cpu,
    /// The device engine's code on the CPU backend: `DeviceStep<CpuBackend>` (the plain-LoRA
    /// family), so the trainer path of the device engine is tested without a device.
    CpuDeviceStep,
    /// A CUDA device ([`DeviceStep`]; the plain-LoRA family only).
    #[cfg(feature = "cuda")]
    Cuda(CudaBackend),
}

impl Device {
    /// Whether a device step's workspace on this device lives in host DRAM: the CPU backend,
    /// or an integrated GPU (Jetson) whose memory is the host's — then it counts against the
    /// host budget (as [`Engine::workspace_in_host_memory`], known before the engine exists).
    pub fn workspace_in_host_memory(&self) -> bool {
        match self {
            Device::Cpu | Device::CpuDeviceStep => true,
            #[cfg(feature = "cuda")]
            Device::Cuda(be) => be.info().integrated,
        }
    }
}

/// The model, the weights' device residency and the step of the CUDA engine. Field order is
/// drop order: the model's weights go before the attachment they point into.
#[cfg(feature = "cuda")]
pub struct CudaEngine<'f> {
    model: BackendModel<'f, CudaBackend>,
    step: DeviceStep<CudaBackend>,
    _attached: edgetune_core::backend::cuda::AttachedWeights<'f>,
}

/// The trainer's engine.
#[derive(Default)]
pub enum Engine<'f> {
    #[default]
    Cpu,
    /// [`Device::CpuDeviceStep`].
    CpuDevice(Box<DeviceStep<edgetune_core::backend::CpuBackend>>),
    #[cfg(feature = "cuda")]
    Cuda(Box<CudaEngine<'f>>),
    #[doc(hidden)]
    _Unused(std::marker::PhantomData<&'f ()>),
}

impl<'f> Engine<'f> {
    /// The engine for `device`: the CPU needs nothing more; CUDA attaches the file's weights,
    /// prepares the model and builds a [`DeviceStep`] of `shape` (the trainer's, as planned)
    /// for `set` (an error naming the method for anything but the plain-LoRA family without
    /// dropout).
    #[allow(unused_variables)]
    pub fn new(
        device: Device,
        file: &'f edgetune_core::gguf::GgufFile,
        llama: &Llama<'f>,
        set: &AdapterSet,
        cfg: &super::TrainConfig,
        shape: &DeviceShape,
    ) -> Result<Engine<'f>> {
        Self::check_method(&device, cfg)?;
        match device {
            Device::Cpu => Ok(Engine::Cpu),
            Device::CpuDeviceStep => {
                let step = DeviceStep::with_shape(llama.backend_model(), set, shape)?;
                Ok(Engine::CpuDevice(Box::new(step)))
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(be) => {
                let attached = be.attach_weights(file.as_bytes())?;
                let model = BackendModel::new(be, llama.config(), llama.weights())?;
                let step = DeviceStep::with_shape(&model, set, shape)?;
                log::info!(
                    "cuda training step: one workspace of {} bytes",
                    step.workspace_bytes()
                );
                Ok(Engine::Cuda(Box::new(CudaEngine {
                    model,
                    step,
                    _attached: attached,
                })))
            }
        }
    }

    /// The engine for `device`, planned before it is built, with the run's new planned total:
    /// `None` for [`Device::Cpu`] (the CPU step stays). The device step's plan, from shapes
    /// alone ([`super::plan_device_step_within`]), replaces the CPU step's `arena` in the
    /// trainer's `cpu_total` with its host bytes, and with its workspace too where that lives
    /// in host DRAM (the CPU backend, a Jetson); over `cfg.budget_bytes` it is refused before
    /// anything is allocated or attached. The FFN runs in the largest row chunks that fit the
    /// budget (fewer passes over its weights); without a budget, over the whole micro-batch
    /// (the fastest). Built, the step must hold exactly the planned bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn planned(
        device: Device,
        file: &'f edgetune_core::gguf::GgufFile,
        llama: &Llama<'f>,
        set: &AdapterSet,
        cfg: &super::TrainConfig,
        ce_chunk: usize,
        cpu_total: u64,
        arena: u64,
    ) -> Result<Option<(Engine<'f>, u64)>> {
        if matches!(device, Device::Cpu) {
            return Ok(None);
        }
        Engine::check_method(&device, cfg)?;
        let (rows, seq, accumulate) = (cfg.batch, cfg.seq_len, cfg.accum > 1);
        let mut shape = DeviceShape::for_set(set, rows, seq, ce_chunk, accumulate)?;
        let in_host = device.workspace_in_host_memory();
        let budget = cfg.budget_bytes;
        let fits = |p: &super::DevicePlan| {
            budget.is_none_or(|b| p.total_in_place_of(cpu_total, arena, in_host) <= b)
        };
        let plan = super::plan_device_step_within(llama.config(), &shape, fits)?;
        shape.ffn_chunk = Some(plan.ffn_chunk());
        let (workspace, staging) = (plan.workspace_bytes() as u64, plan.host_bytes() as u64);
        let total = plan.total_in_place_of(cpu_total, arena, in_host);
        if let Some(budget) = budget
            && total > budget
        {
            return Err(Error::Invalid(format!(
                "device training step: needs {total} bytes with its workspace of {workspace} \
                 bytes{} and {staging} bytes of host staging in place of the CPU arena's \
                 {arena}, over the budget of {budget} bytes by {}; lower --seq-len, --batch \
                 or --rank, or use --backend cpu",
                if in_host {
                    " (in host DRAM)"
                } else {
                    " (device memory)"
                },
                total - budget
            )));
        }
        let engine = Engine::new(device, file, llama, set, cfg, &shape)?;
        if (engine.device_bytes() as u64, engine.host_bytes() as u64) != (workspace, staging) {
            return Err(Error::Invalid(format!(
                "device training step: allocated {} + {} bytes, planned {workspace} + {staging}",
                engine.device_bytes(),
                engine.host_bytes()
            )));
        }
        log::info!(
            "device training step: plan {total} bytes (workspace {workspace}, staging \
             {staging}, replacing the CPU arena of {arena}; FFN in chunks of {} tokens)",
            plan.ffn_chunk()
        );
        Ok(Some((engine, total)))
    }

    /// Refuses a device engine for methods other than the plain-LoRA family (by name).
    pub fn check_method(device: &Device, cfg: &super::TrainConfig) -> Result<()> {
        use super::Method;
        if !matches!(device, Device::Cpu) && !cfg.method.plain_lora() {
            // Other methods' hooks read and scale the CPU step's gradients (layerimp uses
            // plain LoRA adapters, so the adapter check in DeviceStep::new alone would pass it).
            let on_device: Vec<&str> = Method::ALL
                .iter()
                .filter(|m| m.plain_lora())
                .map(|m| m.name())
                .collect();
            return Err(Error::Unsupported(format!(
                "device training step: method {} is not supported; only {} run on the device \
                 (use --backend cpu)",
                cfg.method,
                on_device.join(", ")
            )));
        }
        if !matches!(device, Device::Cpu) && cfg.kl_anchor > 0.0 {
            // The base pass and the fused KL loss exist in the CPU step only (step_kl.rs).
            return Err(Error::Unsupported(
                "device training step: --kl-anchor runs on the CPU step only (use --backend \
                 cpu, or train without the anchor)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Bytes of the device step's workspace (0 for the CPU `TrainStep`, whose arena the
    /// trainer reports).
    pub fn device_bytes(&self) -> usize {
        match self {
            Engine::CpuDevice(s) => s.workspace_bytes(),
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => e.step.workspace_bytes(),
            _ => 0,
        }
    }

    /// Host bytes of the device step's staging (0 for the CPU `TrainStep`).
    pub fn host_bytes(&self) -> usize {
        match self {
            Engine::CpuDevice(s) => s.host_bytes(),
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => e.step.host_bytes(),
            _ => 0,
        }
    }

    /// Whether the device workspace lives in host DRAM: the CPU backend, or an integrated GPU
    /// (Jetson) whose memory is the host's — then it counts against the host budget.
    pub fn workspace_in_host_memory(&self) -> bool {
        match self {
            Engine::CpuDevice(_) => true,
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => e.model.backend.info().integrated,
            _ => false,
        }
    }

    /// Copies the host adapters' parameters to the device engine after they were replaced from
    /// outside the optimizer ([`super::Trainer::replace_params`]); the CPU step reads the host
    /// set directly and needs nothing.
    pub fn sync_params(&mut self, set: &AdapterSet) -> Result<()> {
        match self {
            Engine::CpuDevice(step) => step.sync_params(&edgetune_core::backend::CpuBackend, set),
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => {
                let CudaEngine { model, step, .. } = &mut **e;
                step.sync_params(&model.backend, set)
            }
            _ => Ok(()),
        }
    }

    /// Whether the micro-batches run on the CPU [`TrainStep`] (its arena is allocated).
    pub fn is_cpu(&self) -> bool {
        matches!(self, Engine::Cpu)
    }

    /// One micro-batch on this engine (see [`TrainStep::micro_batch`]; the device engine has
    /// no dropout, so `seed` is unused there).
    #[allow(clippy::too_many_arguments)]
    pub fn micro_batch(
        &mut self,
        cpu: &mut TrainStep,
        model: &BackendModel<'_, edgetune_core::backend::CpuBackend>,
        set: &AdapterSet,
        batch: &Batch,
        loss_scale: f32,
        first: bool,
        seed: u64,
    ) -> Result<f64> {
        match self {
            Engine::CpuDevice(s) => s.micro_batch(model, batch, loss_scale, first),
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => e.step.micro_batch(&e.model, batch, loss_scale, first),
            _ => cpu.micro_batch(model, set, batch, loss_scale, first, seed),
        }
    }

    /// Clipping and the optimizer update from this engine's gradients; the device engine then
    /// mirrors the updated parameters.
    pub fn update(
        &mut self,
        opt: &mut Optimizer,
        cpu: &mut TrainStep,
        set: &mut AdapterSet,
    ) -> Result<UpdateStats> {
        match self {
            Engine::CpuDevice(step) => {
                let be = edgetune_core::backend::CpuBackend;
                let mut grads = DeviceGrads {
                    step: &mut **step,
                    backend: &be,
                };
                let stats = opt.update(&mut grads, set)?;
                step.sync_params(&be, set)?;
                Ok(stats)
            }
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => {
                let CudaEngine { model, step, .. } = &mut **e;
                let mut grads = DeviceGrads {
                    step,
                    backend: &model.backend,
                };
                let stats = opt.update(&mut grads, set)?;
                step.sync_params(&model.backend, set)?;
                Ok(stats)
            }
            _ => opt.update(cpu, set),
        }
    }
}
