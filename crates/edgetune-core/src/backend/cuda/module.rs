//! The embedded PTX (one module per kernel file of `kernels/`, see kernels/README.md for the
//! ABI), the choice between the sm_87 and sm_72 builds by compute capability, and the function
//! handles the op files launch.
//!
//! PTX built for `compute_XY` JIT-compiles on devices of capability ≥ X.Y only, so:
//! - capability ≥ 8.7 (Orin, H100/H200 at 9.0) loads the `sm87` PTX (bf16 tensor-core matmul);
//! - 7.2 ≤ capability < 8.7 (Xavier, and also A100/RTX 30 at 8.0/8.6) loads the `sm72` PTX, whose
//!   matmul has the f32 `_simple` kernels only;
//! - below 7.2 there is no PTX for the device: an error.

use std::ffi::{CString, c_void};
use std::sync::Arc;

use cudarc::driver::CudaContext;
use cudarc::driver::result as cu;
use cudarc::driver::sys::{CUfunction, CUfunction_attribute, CUmodule};

use super::device::driver_err;
use crate::{Error, Result};

/// Which PTX build a device loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtxTarget {
    Sm87,
    Sm72,
}

impl PtxTarget {
    /// The build for a device of compute capability `(major, minor)` (see the module docs).
    pub fn for_capability(cc: (i32, i32)) -> Result<PtxTarget> {
        if cc >= (8, 7) {
            Ok(PtxTarget::Sm87)
        } else if cc >= (7, 2) {
            Ok(PtxTarget::Sm72)
        } else {
            Err(Error::Invalid(format!(
                "cuda: compute capability {}.{} is below 7.2, the oldest target of edgetune's \
                 kernels (Xavier); use --backend cpu",
                cc.0, cc.1
            )))
        }
    }

    /// Whether this build has the bf16 tensor-core (`mma`) matmul kernels.
    pub fn has_mma(self) -> bool {
        self == PtxTarget::Sm87
    }
}

/// `include_str!` of `kernels/ptx/<file>.<target>.ptx` (at the repository root), both targets.
macro_rules! ptx_pair {
    ($file:literal) => {
        (
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../kernels/ptx/",
                $file,
                ".sm87.ptx"
            )),
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../kernels/ptx/",
                $file,
                ".sm72.ptx"
            )),
        )
    };
}

/// Every kernel file: `(name, sm87 PTX, sm72 PTX)`.
pub(crate) const PTX_FILES: [(&str, (&str, &str)); 10] = [
    ("matmul", ptx_pair!("matmul")),
    ("rmsnorm", ptx_pair!("rmsnorm")),
    ("rope", ptx_pair!("rope")),
    ("swiglu", ptx_pair!("swiglu")),
    ("elementwise", ptx_pair!("elementwise")),
    ("embedding", ptx_pair!("embedding")),
    ("attention", ptx_pair!("attention")),
    ("cross_entropy", ptx_pair!("cross_entropy")),
    ("adamw", ptx_pair!("adamw")),
    ("grad_norm", ptx_pair!("grad_norm")),
];

/// The PTX text of kernel file `file` for `target`.
pub(crate) fn ptx_text(file: &str, target: PtxTarget) -> Result<&'static str> {
    PTX_FILES
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, (sm87, sm72))| match target {
            PtxTarget::Sm87 => *sm87,
            PtxTarget::Sm72 => *sm72,
        })
        .ok_or_else(|| Error::Invalid(format!("cuda: no kernel file `{file}`")))
}

/// A loaded module, unloaded on drop.
struct Module {
    raw: CUmodule,
    ctx: Arc<CudaContext>,
}

impl Drop for Module {
    fn drop(&mut self) {
        self.ctx.record_err(self.ctx.bind_to_thread());
        // SAFETY: loaded once by `load`, unloaded once here; functions from it are dropped with
        // the `Kernels` holding both.
        self.ctx.record_err(unsafe { cu::module::unload(self.raw) });
    }
}

/// A kernel handle.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Func(pub(crate) CUfunction);

/// Every kernel of kernels/README.md. `None` = not in this PTX build (`_mma` on sm72).
pub(crate) struct Kernels {
    pub target: PtxTarget,
    pub matmul_xwt_mma: Option<Func>,
    pub matmul_dyw_mma: Option<Func>,
    pub matmul_xwt_simple: Func,
    pub matmul_dyw_simple: Func,
    pub rmsnorm_fwd: Func,
    pub rmsnorm_bwd: Func,
    pub rope: Func,
    pub swiglu_fwd: Func,
    pub swiglu_bwd: Func,
    pub add_assign: Func,
    pub scale: Func,
    pub zero: Func,
    pub copy: Func,
    pub embedding: Func,
    pub attention_fwd: Func,
    pub attention_bwd_dq: Func,
    pub attention_bwd_dkdv: Func,
    pub ce_softmax_grad: Func,
    pub adamw_f32: Func,
    pub adamw_8bit: Func,
    pub sum_squares: Func,
    pub reduce_f64: Func,
    _modules: Vec<Module>,
}

// SAFETY: module and function handles are context-wide driver objects, usable from any thread
// with the context bound; they are never mutated after loading.
unsafe impl Send for Kernels {}
unsafe impl Sync for Kernels {}

fn load(ctx: &Arc<CudaContext>, file: &str, target: PtxTarget) -> Result<Module> {
    let text = ptx_text(file, target)?;
    let c = CString::new(text)
        .map_err(|_| Error::Invalid(format!("cuda: {file} PTX contains a NUL byte")))?;
    // SAFETY: `c` is NUL-terminated PTX text; the JIT copies what it needs.
    let raw = unsafe { cu::module::load_data(c.as_ptr() as *const c_void) }
        .map_err(|e| driver_err(&format!("loading the {file} PTX ({target:?})"), e))?;
    Ok(Module {
        raw,
        ctx: ctx.clone(),
    })
}

fn func(m: &Module, name: &str) -> Result<Func> {
    let c = CString::new(name).map_err(|_| Error::Invalid(format!("bad kernel name {name}")))?;
    // SAFETY: `m` is a loaded module kept alive with the handle (in `Kernels`).
    unsafe { cu::module::get_function(m.raw, c) }
        .map(Func)
        .map_err(|e| driver_err(&format!("kernel `{name}` missing from its PTX"), e))
}

impl Kernels {
    /// Loads every module for `target` into `ctx` (bound to this thread).
    pub fn load(ctx: &Arc<CudaContext>, target: PtxTarget) -> Result<Kernels> {
        ctx.bind_to_thread()
            .map_err(|e| driver_err("binding the context", e))?;
        let m = |file| load(ctx, file, target);
        let (mm, rn, ro, sw, el, em, at, ce, ad, gn) = (
            m("matmul")?,
            m("rmsnorm")?,
            m("rope")?,
            m("swiglu")?,
            m("elementwise")?,
            m("embedding")?,
            m("attention")?,
            m("cross_entropy")?,
            m("adamw")?,
            m("grad_norm")?,
        );
        let mma = |name| {
            if target.has_mma() {
                func(&mm, name).map(Some)
            } else {
                Ok(None)
            }
        };
        let k = Kernels {
            target,
            matmul_xwt_mma: mma("et_matmul_xwt_mma")?,
            matmul_dyw_mma: mma("et_matmul_dyw_mma")?,
            matmul_xwt_simple: func(&mm, "et_matmul_xwt_simple")?,
            matmul_dyw_simple: func(&mm, "et_matmul_dyw_simple")?,
            rmsnorm_fwd: func(&rn, "et_rmsnorm_fwd")?,
            rmsnorm_bwd: func(&rn, "et_rmsnorm_bwd")?,
            rope: func(&ro, "et_rope")?,
            swiglu_fwd: func(&sw, "et_swiglu_fwd")?,
            swiglu_bwd: func(&sw, "et_swiglu_bwd")?,
            add_assign: func(&el, "et_add_assign")?,
            scale: func(&el, "et_scale")?,
            zero: func(&el, "et_zero")?,
            copy: func(&el, "et_copy")?,
            embedding: func(&em, "et_embedding")?,
            attention_fwd: func(&at, "et_attention_fwd")?,
            attention_bwd_dq: func(&at, "et_attention_bwd_dq")?,
            attention_bwd_dkdv: func(&at, "et_attention_bwd_dkdv")?,
            ce_softmax_grad: func(&ce, "et_ce_softmax_grad")?,
            adamw_f32: func(&ad, "et_adamw_f32")?,
            adamw_8bit: func(&ad, "et_adamw_8bit")?,
            sum_squares: func(&gn, "et_sum_squares")?,
            reduce_f64: func(&gn, "et_reduce_f64")?,
            _modules: vec![mm, rn, ro, sw, el, em, at, ce, ad, gn],
        };
        Ok(k)
    }
}

/// Raises `f`'s dynamic shared memory limit to `bytes` (needed above 48 KiB).
pub(crate) fn allow_shared(f: Func, bytes: u32) -> Result<()> {
    // SAFETY: `f` is a live function handle.
    unsafe {
        cu::function::set_function_attribute(
            f.0,
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
    }
    .map_err(|e| driver_err(&format!("raising dynamic shared memory to {bytes} B"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_picks_the_ptx_build() {
        assert_eq!(PtxTarget::for_capability((8, 7)).unwrap(), PtxTarget::Sm87);
        assert_eq!(PtxTarget::for_capability((9, 0)).unwrap(), PtxTarget::Sm87);
        // compute_87 PTX does not JIT on 8.0/8.6: those take the sm72 build.
        assert_eq!(PtxTarget::for_capability((8, 6)).unwrap(), PtxTarget::Sm72);
        assert_eq!(PtxTarget::for_capability((8, 0)).unwrap(), PtxTarget::Sm72);
        assert_eq!(PtxTarget::for_capability((7, 2)).unwrap(), PtxTarget::Sm72);
        let e = PtxTarget::for_capability((7, 0)).unwrap_err().to_string();
        assert!(e.contains("7.0") && e.contains("--backend cpu"), "{e}");
        assert!(PtxTarget::Sm87.has_mma() && !PtxTarget::Sm72.has_mma());
    }

    #[test]
    fn every_embedded_ptx_declares_its_target_and_kernels() {
        // The PTX header says which virtual architecture it was built for; a mix-up of the two
        // files would JIT-fail only on a device, so check it here.
        for (file, (sm87, sm72)) in PTX_FILES {
            assert!(
                sm87.contains(".target sm_87"),
                "{file}.sm87.ptx: no `.target sm_87`"
            );
            assert!(
                sm72.contains(".target sm_72"),
                "{file}.sm72.ptx: no `.target sm_72`"
            );
            assert!(
                sm87.contains(".entry et_"),
                "{file}.sm87.ptx: no et_ kernels"
            );
        }
        let mm72 = ptx_text("matmul", PtxTarget::Sm72).unwrap();
        assert!(mm72.contains("et_matmul_xwt_simple") && !mm72.contains("et_matmul_xwt_mma"));
        let mm87 = ptx_text("matmul", PtxTarget::Sm87).unwrap();
        assert!(mm87.contains("et_matmul_xwt_mma") && mm87.contains("et_matmul_dyw_mma"));
        assert!(ptx_text("nope", PtxTarget::Sm87).is_err());
    }

    #[test]
    fn every_kernel_the_backend_loads_is_an_entry_of_its_ptx() {
        // The names `Kernels::load` asks for, by file (`true` = sm87 only).
        let names: [(&str, &str, bool); 22] = [
            ("matmul", "et_matmul_xwt_mma", true),
            ("matmul", "et_matmul_dyw_mma", true),
            ("matmul", "et_matmul_xwt_simple", false),
            ("matmul", "et_matmul_dyw_simple", false),
            ("rmsnorm", "et_rmsnorm_fwd", false),
            ("rmsnorm", "et_rmsnorm_bwd", false),
            ("rope", "et_rope", false),
            ("swiglu", "et_swiglu_fwd", false),
            ("swiglu", "et_swiglu_bwd", false),
            ("elementwise", "et_add_assign", false),
            ("elementwise", "et_scale", false),
            ("elementwise", "et_zero", false),
            ("elementwise", "et_copy", false),
            ("embedding", "et_embedding", false),
            ("attention", "et_attention_fwd", false),
            ("attention", "et_attention_bwd_dq", false),
            ("attention", "et_attention_bwd_dkdv", false),
            ("cross_entropy", "et_ce_softmax_grad", false),
            ("adamw", "et_adamw_f32", false),
            ("adamw", "et_adamw_8bit", false),
            ("grad_norm", "et_sum_squares", false),
            ("grad_norm", "et_reduce_f64", false),
        ];
        for (file, name, mma_only) in names {
            let entry = format!(".entry {name}(");
            assert!(
                ptx_text(file, PtxTarget::Sm87).unwrap().contains(&entry),
                "{file}.sm87.ptx lacks {name}"
            );
            if !mma_only {
                assert!(
                    ptx_text(file, PtxTarget::Sm72).unwrap().contains(&entry),
                    "{file}.sm72.ptx lacks {name}"
                );
            }
        }
    }
}
