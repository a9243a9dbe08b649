//! The model handle of the C ABI: `et_model_open` / `et_model_free`, `et_model_info`,
//! `et_model_stream_weights` (inference with the layers, and optionally the head, read from the
//! file as they run), and `et_generate` (prompt text in, generated UTF-8 text out into the
//! caller's buffer).

use std::ffi::c_char;
use std::path::PathBuf;
use std::sync::{PoisonError, RwLock};

use self_cell::self_cell;

use super::{EtStatus, FfiError, FfiResult, guard, str_arg, write_text};
use crate::gguf::GgufFile;
use crate::infer::{GenerateOptions, SamplingParams, generate};
use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use crate::tokenizer::chat_template::PromptFormat;

/// The model behind a lock: generation takes it shared (the model's own workspace mutex
/// serialises the forward passes), `et_model_set_adapter` takes it exclusively because
/// [`Llama::set_adapters`] needs `&mut`.
type LockedLlama<'a> = RwLock<Llama<'a>>;

self_cell!(
    /// The mapped file and the model whose weights are views of it, owned together. `Llama` is
    /// invariant in its lifetime (its workspace mutex), so it is reached through `with_dependent`.
    struct MappedLlama {
        owner: GgufFile,
        #[not_covariant]
        dependent: LockedLlama,
    }
);

/// An open model: the memory-mapped GGUF, its validated weights, its tokenizer and its chat
/// template. Opaque to C; create with `et_model_open`, release with `et_model_free`.
pub struct EtModel {
    llama: MappedLlama,
    tokenizer: Tokenizer,
    /// The model's chat template (or the fallback, see [`PromptFormat::of_model`]), compiled
    /// once; a template that does not compile only fails the calls that ask for it
    /// (`ET_TEMPLATE_AUTO`).
    chat: Result<PromptFormat, String>,
}

// The handle is shared across threads by C callers: it must stay Send + Sync.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<EtModel>()
};

impl EtModel {
    /// Maps `path`, validates the model and builds its tokenizer and chat template.
    pub fn open(path: impl Into<PathBuf>) -> crate::Result<EtModel> {
        let file = GgufFile::open(path.into())?;
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let chat = PromptFormat::of_model(&file, &tokenizer).map_err(|e| {
            log::warn!("{e}");
            e.to_string()
        });
        let llama = MappedLlama::try_new(file, |f| Llama::load(f).map(RwLock::new))?;
        Ok(EtModel {
            llama,
            tokenizer,
            chat,
        })
    }

    /// Runs `f` on the model (its lifetime is tied to the handle's file).
    pub fn with_llama<R>(&self, f: impl for<'a> FnOnce(&Llama<'a>) -> R) -> R {
        // A poisoned lock is taken anyway: the only writer (`with_llama_mut`) swaps the
        // adapter `Arc` in one assignment, so a panic there cannot leave a half-updated model.
        self.llama
            .with_dependent(|_, llama| f(&llama.read().unwrap_or_else(PoisonError::into_inner)))
    }

    /// Runs `f` on the model with exclusive access (waits for running generations).
    pub fn with_llama_mut<R>(&self, f: impl for<'a> FnOnce(&mut Llama<'a>) -> R) -> R {
        self.llama.with_dependent(|_, llama| {
            f(&mut llama.write().unwrap_or_else(PoisonError::into_inner))
        })
    }

    /// Streams the weights from the file from now on ([`Llama::stream_weights_with`]; waits
    /// for running generations).
    pub fn stream_weights(&self, stream_head: bool) -> crate::Result<()> {
        let options = crate::model::stream::StreamOptions {
            stream_head,
            head_chunk_rows: None,
        };
        self.llama.with_dependent(|file, llama| {
            llama
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .stream_weights_with(file, options)
        })
    }

    /// The weight stream's reads so far (`None`: mapped weights).
    pub fn stream_stats(&self) -> Option<crate::model::stream::StreamStats> {
        self.with_llama(|l| l.stream_stats())
    }

    pub fn file(&self) -> &GgufFile {
        self.llama.borrow_owner()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

/// Shapes of an open model (from its GGUF metadata).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EtModelInfo {
    /// Transformer blocks.
    pub n_layer: u32,
    /// Model width (`embedding_length`).
    pub dim: u32,
    /// Query heads.
    pub n_head: u32,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_head_kv: u32,
    /// Width of one head.
    pub head_dim: u32,
    /// Feed-forward width.
    pub ffn: u32,
    /// Vocabulary size.
    pub n_vocab: u32,
    /// Trained context length in tokens.
    pub context_length: u32,
    /// Bytes of all tensor data in the file (the mapped weights).
    pub weight_bytes: u64,
}

/// Prompt formats `EtGenerateOptions::prompt_template` accepts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtTemplate {
    /// The prompt as given (BOS added when the tokenizer asks for it).
    None = 0,
    /// The Alpaca instruction template around the prompt.
    Alpaca = 1,
    /// One Llama 3 chat user turn, then the assistant header.
    Llama3Chat = 2,
    /// The model's chat template (`tokenizer.chat_template`): the prompt as one user message,
    /// then the generation prompt. A model without one gets the Llama 3 template when its
    /// vocabulary has Llama 3's header tokens, else ChatML.
    Auto = 3,
}

/// How to generate. Start from `et_generate_default_options` and change what you need.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EtGenerateOptions {
    /// Most tokens to generate (generation also stops at end-of-text or a full context).
    pub max_tokens: u32,
    /// 0 is greedy; otherwise ≥ 0 and finite.
    pub temperature: f32,
    /// Sample among the `top_k` most likely tokens (0 = all).
    pub top_k: u32,
    /// Nucleus sampling: in (0, 1], 1 = off.
    pub top_p: f32,
    /// Seed of the sampler: the same seed and options give the same text.
    pub seed: u64,
    /// An `EtTemplate` value (`ET_TEMPLATE_NONE`, ...).
    pub prompt_template: u32,
}

/// The defaults: 128 tokens, greedy, top-k 40, top-p 0.95, seed 0, the model's chat template
/// (`ET_TEMPLATE_AUTO`).
#[unsafe(no_mangle)]
pub extern "C" fn et_generate_default_options() -> EtGenerateOptions {
    EtGenerateOptions {
        max_tokens: 128,
        temperature: 0.0,
        top_k: 40,
        top_p: 0.95,
        seed: 0,
        prompt_template: EtTemplate::Auto as u32,
    }
}

/// Opens the GGUF model at `path` (memory-mapped; the weights are not copied) and stores a new
/// handle in `*out_model`, or NULL on failure (`ET_STATUS_IO` for a missing file,
/// `ET_STATUS_FORMAT` for a file that is not a usable Llama GGUF).
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out_model` is NULL or valid for one pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn et_model_open(
    path: *const c_char,
    out_model: *mut *mut EtModel,
) -> EtStatus {
    guard(|| {
        if out_model.is_null() {
            return Err(FfiError::null("out_model"));
        }
        // SAFETY: checked non-NULL; the caller promises it is valid for a pointer write.
        unsafe { out_model.write(std::ptr::null_mut()) };
        // SAFETY: the caller promises a NUL-terminated string valid for this call.
        let path = unsafe { str_arg(path, "path") }?;
        let model = EtModel::open(path)?;
        // SAFETY: as above; ownership of the box passes to the caller until et_model_free.
        unsafe { out_model.write(Box::into_raw(Box::new(model))) };
        Ok(())
    })
}

/// Releases a model from `et_model_open` (NULL is ignored). The handle must not be in use on
/// another thread, and must not be used afterwards.
///
/// # Safety
/// `model` is NULL or a handle from `et_model_open` not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn et_model_free(model: *mut EtModel) {
    if model.is_null() {
        return;
    }
    // Dropping unmaps the file; a panic there is reported through et_last_error.
    guard(|| {
        // SAFETY: the pointer came from Box::into_raw in et_model_open and is freed once.
        drop(unsafe { Box::from_raw(model) });
        Ok(())
    });
}

/// Reads the model's layers from its file as they run, through two staging buffers, instead of
/// keeping the mapped weights resident (what `edgetune generate --weights stream` does): for
/// inference in a memory budget below the model's size. `stream_head` non-zero streams the
/// output head in chunks of rows too (else it is read once into memory). The mapped pages read
/// so far leave the process; generated text is the same as with mapped weights. Waits for
/// generations running on other threads; calling it again reopens the stream. Only on a
/// platform with positioned reads (`ET_STATUS_INVALID_ARGUMENT` otherwise).
///
/// # Safety
/// `model` is NULL or a live handle from `et_model_open`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn et_model_stream_weights(
    model: *const EtModel,
    stream_head: u32,
) -> EtStatus {
    guard(|| {
        // SAFETY: forwarded caller contract.
        let model = unsafe { model_arg(model) }?;
        model.stream_weights(stream_head != 0)?;
        Ok(())
    })
}

/// Borrows a model handle for the call.
///
/// # Safety
/// `model` is NULL or a live handle from `et_model_open`.
unsafe fn model_arg<'a>(model: *const EtModel) -> FfiResult<&'a EtModel> {
    // SAFETY: the caller promises NULL or a live handle; as_ref maps NULL to None.
    unsafe { model.as_ref() }.ok_or_else(|| FfiError::null("model"))
}

/// Writes the model's shapes into `*out_info`.
///
/// # Safety
/// `model` is NULL or a live handle; `out_info` is NULL or valid for one `EtModelInfo` write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn et_model_info(
    model: *const EtModel,
    out_info: *mut EtModelInfo,
) -> EtStatus {
    guard(|| {
        // SAFETY: forwarded caller contract.
        let model = unsafe { model_arg(model) }?;
        if out_info.is_null() {
            return Err(FfiError::null("out_info"));
        }
        let c = model.with_llama(|l| l.config().clone());
        let u32_of = |what: &str, v: usize| {
            u32::try_from(v)
                .map_err(|_| FfiError::invalid(format!("model {what} {v} does not fit in 32 bits")))
        };
        let info = EtModelInfo {
            n_layer: u32_of("n_layer", c.n_layer)?,
            dim: u32_of("dim", c.dim)?,
            n_head: u32_of("n_head", c.n_head)?,
            n_head_kv: u32_of("n_head_kv", c.n_head_kv)?,
            head_dim: u32_of("head_dim", c.head_dim)?,
            ffn: u32_of("ffn", c.ffn)?,
            n_vocab: u32_of("n_vocab", c.n_vocab)?,
            context_length: u32_of("context_length", c.context_length)?,
            weight_bytes: model.file().tensors().iter().map(|t| t.n_bytes).sum(),
        };
        // SAFETY: checked non-NULL; the caller promises it is valid for the write.
        unsafe { out_info.write(info) };
        Ok(())
    })
}

/// Tokenizes `prompt` with `template` the way `edgetune generate --template` does.
fn encode_prompt(model: &EtModel, prompt: &str, template: u32) -> FfiResult<Vec<u32>> {
    let tok = model.tokenizer();
    let format = match template {
        t if t == EtTemplate::None as u32 => &PromptFormat::Plain,
        t if t == EtTemplate::Alpaca as u32 => &PromptFormat::Alpaca,
        t if t == EtTemplate::Llama3Chat as u32 => &PromptFormat::Llama3Chat,
        t if t == EtTemplate::Auto as u32 => match &model.chat {
            Ok(f) => f,
            // The model's template does not compile: the file is not usable this way.
            Err(e) => return Err(FfiError::new(EtStatus::Format, e.clone())),
        },
        other => {
            return Err(FfiError::invalid(format!(
                "template {other} is not an EtTemplate (0 none, 1 alpaca, 2 llama3-chat, 3 auto)"
            )));
        }
    };
    Ok(format.encode(tok, prompt)?)
}

/// Generates text after `prompt` and copies it, NUL-terminated, into `out_buf` (`out_cap`
/// bytes). `*out_len` (if not NULL) receives the text's length in bytes without the NUL, also
/// on `ET_STATUS_BUFFER_TOO_SMALL`, when the buffer needs `*out_len + 1` bytes (generation is
/// deterministic for a given seed, so the call can be repeated with a larger buffer; pass
/// `out_buf = NULL, out_cap = 0` to ask only for the length). `options` NULL means
/// `et_generate_default_options`.
///
/// # Safety
/// `model` is NULL or a live handle; `prompt` is NULL or a NUL-terminated string; `options` is
/// NULL or points to an `EtGenerateOptions`; `out_buf` is NULL or valid for `out_cap` bytes;
/// `out_len` is NULL or valid for one `size_t` write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn et_generate(
    model: *const EtModel,
    prompt: *const c_char,
    options: *const EtGenerateOptions,
    out_buf: *mut c_char,
    out_cap: usize,
    out_len: *mut usize,
) -> EtStatus {
    guard(|| {
        // SAFETY (all three): forwarded caller contract; `as_ref` maps NULL to None.
        let model = unsafe { model_arg(model) }?;
        let prompt = unsafe { str_arg(prompt, "prompt") }?;
        let opts = unsafe { options.as_ref() }
            .copied()
            .unwrap_or_else(|| et_generate_default_options());
        if out_buf.is_null() && out_cap > 0 {
            return Err(FfiError::null("out_buf"));
        }
        let ids = encode_prompt(model, prompt, opts.prompt_template)?;
        let gen_opts = GenerateOptions {
            max_tokens: opts.max_tokens as usize,
            sampling: SamplingParams {
                temperature: opts.temperature,
                top_k: opts.top_k as usize,
                top_p: opts.top_p,
                seed: opts.seed,
            },
            stop_at_eos: true,
        };
        let out =
            model.with_llama(|l| generate(l, model.tokenizer(), &ids, &gen_opts, |_| true))?;
        // SAFETY: forwarded caller contract for out_buf / out_cap / out_len.
        unsafe { write_text(&out.text, out_buf, out_cap, out_len) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_template_is_invalid_not_ub() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let p = crate::testmodel::preset("tiny").unwrap();
        crate::testmodel::write_test_model(
            &p,
            crate::testmodel::WeightTypes::parse("q8_0").unwrap(),
            1,
            &path,
        )
        .unwrap();
        let m = EtModel::open(&path).unwrap();
        let e = encode_prompt(&m, "hi", 9).unwrap_err();
        assert_eq!(e.status, EtStatus::InvalidArgument);
        assert!(e.message.contains("template 9"), "{}", e.message);
        for t in [0, 1, 2, 3] {
            assert_eq!(
                guard(|| encode_prompt(&m, "hi", t).map(|_| ())),
                EtStatus::Ok
            );
        }
        // Auto on a model without a template: the Llama 3 fallback (its vocabulary has the
        // header tokens), the same ids as the built-in Llama 3 format.
        assert_eq!(
            encode_prompt(&m, "hi", EtTemplate::Auto as u32).unwrap(),
            encode_prompt(&m, "hi", EtTemplate::Llama3Chat as u32).unwrap()
        );
    }
}
