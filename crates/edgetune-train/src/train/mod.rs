//! Training: the configuration, the model's adapter set, the training step (forward with
//! gradient checkpointing, chunked loss, backward) over one planned arena, checkpoints, and the
//! trainer loop behind `edgetune train`.

pub mod adapter_set;
pub mod budget;
pub mod checkpoint;
pub mod checkpoint_manifest;
pub mod config;
mod config_kinds;
pub mod embed_rows;
pub mod engine;
pub mod evaluate;
pub mod fingerprint;
pub mod method;
pub mod method_hooks;
pub mod method_io;
pub mod method_plan;
pub mod method_registry;
pub mod method_tasks;
pub mod methods;
pub mod metrics;
pub mod optimizer;
pub mod plan_llama;
pub mod replay;
mod run;
pub mod run_dir;
pub mod step;
pub mod step_device;
mod step_device_layer;
mod step_device_layout;
pub mod step_device_plan;
mod step_ids;
pub mod step_kl;
mod step_layer;
mod step_loss;
pub mod step_reslora;
mod step_spill;
mod step_weights;
pub mod trainer;

pub use adapter_set::{AdapterSet, build_adapters, target_shape, tensor_name};
pub use config::{
    CheckpointDtype, Decay, FusedUpdate, KL_ANCHOR_WITH_REPLAY, OptimizerKind, REPLAY_SELF_DEFAULT,
    Replay, StatePlace, StreamHead, TrainConfig, WeightsMode, fused_update_support,
    stream_head_support,
};
pub use method::{BaseCopy, Method, MethodOptions, TaskWeights};
pub use run::{run, run_on};
pub use step::TrainStep;
pub use step_device::DeviceStep;
pub use step_device_plan::{
    DevicePlan, DeviceShape, SlotShape, plan_device_step, plan_device_step_within,
};
pub use step_spill::{CheckpointSpill, SPILL_FILE};
pub use trainer::{Progress, Summary, Trainer};
