"""edgetune: fine-tune quantized Llama GGUF models with LoRA-family adapters, on the device.

    import edgetune
    m = edgetune.Model("model.gguf")
    print(m.generate("What is the management port of the KX-40?", max_tokens=32))
    t = edgetune.Trainer({"model": "model.gguf", "data": "train.jsonl", "out": "run",
                          "steps": 64, "seq-len": 256, "rank": 16, "lr": 1e-3})
    losses = t.step(8)                       # eight optimizer steps, their losses
    arrays = t.get_adapter()                 # {PEFT tensor name: float32 array}
    t.set_adapter(arrays)                    # e.g. a federated average
    t.export("peft", "adapter/")             # or "gguf" (llama.cpp --lora), "native"

The configuration is `edgetune train`'s settings by their flag names (dashes or underscores:
``seq-len`` / ``seq_len``), or `TrainConfig`'s own field names; ``data_records`` gives the
training data as a list of records in memory instead of ``data`` (a path). Errors are
`EdgetuneError` with the library's message; the cases a caller acts on are its subclasses
`OverBudget`, `BadInput` (a malformed dataset line), `Unsupported` and `NonFinite`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from . import _edgetune
from ._edgetune import BadInput, Cancelled, EdgetuneError, NonFinite, OverBudget, Unsupported

__all__ = [
    "BadInput",
    "Cancelled",
    "EdgetuneError",
    "NonFinite",
    "OverBudget",
    "Unsupported",
    "Model",
    "Trainer",
    "export_adapter",
    "init_adapter",
    "plan",
    "resolve_config",
    "synth_assistant",
    "testmodel",
    "__version__",
]

__version__: str = _edgetune.__version__

ProgressFn = Callable[[dict[str, Any]], "bool | None"]


def _jsonable(v: Any) -> Any:
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return v.item()
    return v


def _records_jsonl(records: Iterable[Mapping[str, Any]]) -> str:
    lines = [json.dumps(_jsonable(r), ensure_ascii=False) for r in records]
    if not lines:
        raise EdgetuneError("data_records: no records")
    return "\n".join(lines) + "\n"


def _config_json(config: Mapping[str, Any], drop: tuple[str, ...] = ()) -> str:
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict, not {type(config).__name__}")
    out = {k: _jsonable(v) for k, v in config.items() if k.replace("-", "_") not in drop}
    return json.dumps(out)


def resolve_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The full training configuration (every default filled in, `TrainConfig`'s field names)
    that `config` (CLI flag names) maps to."""
    return json.loads(_edgetune.resolve_config(_config_json(config, drop=("data_records",))))


def plan(config: Mapping[str, Any], model: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The memory plan of a training run, as `edgetune plan --json` reports it: ``total_bytes``
    (what the budget is checked against), ``weight_bytes``, ``arena_bytes``, ``adapter_bytes``,
    ``optimizer_state_bytes``, … and, when ``budget``/``board`` is given, ``fits`` and
    ``headroom_bytes``. Only the model's header is read."""
    path = None if model is None else os.fspath(model)
    return json.loads(_edgetune.plan_json(_config_json(config, drop=("data_records",)), path))


def _f32_arrays(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {str(k): np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}


def init_adapter(config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The fresh adapter of `config` (``model``, ``rank``, ``alpha``, ``targets``, ``layers``,
    ``method``, ``seed``): float32 arrays by PEFT tensor name, exactly those a new
    ``Trainer(config)`` starts from. The plain LoRA family only (lora, rslora, loraplus,
    qlora)."""
    return _edgetune.init_adapter(_config_json(config, drop=("data_records",)))


def export_adapter(
    config: Mapping[str, Any],
    arrays: Mapping[str, Any],
    format: str,
    path: str | os.PathLike[str],
) -> None:
    """Writes adapter arrays (by PEFT tensor name, the shapes of `config`'s adapter) as
    ``"peft"`` (a Hugging Face PEFT directory), ``"gguf"`` (a llama.cpp LoRA file) or
    ``"native"`` (an edgetune adapter directory), with the library's exporters."""
    _edgetune.export_adapter(
        _config_json(config, drop=("data_records",)), _f32_arrays(arrays), format, os.fspath(path)
    )


def testmodel(
    path: str | os.PathLike[str], preset: str = "tiny", type: str = "q4_0", seed: int = 0
) -> None:
    """Writes a seeded random-weights test model, as ``edgetune testmodel --preset PRESET
    --type TYPE --out PATH`` does: ``tiny`` (tests: 1.3M parameters, byte vocabulary),
    ``small``, ``llama-3.2-1b``, ``llama-3.1-8b``, … Its answers are not answers; its loss
    falls as it learns a data set's format."""
    _edgetune.testmodel(os.fspath(path), preset, type, seed)


def synth_assistant(seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """The synthetic IoT assistant set (``edgetune data synth --set assistant``): ``train``,
    chat records (``{"messages": [...], "task": ...}``) about fictional devices (Kestrel
    KX-40, Marlin M7, Heron H9, Tern T3), and ``heldout``, its eval cases."""
    return json.loads(_edgetune.assistant_set_json(seed))


class Model:
    """An open GGUF model: memory-mapped weights, its tokenizer and chat template.

    ``Model(path)``; thread-safe (calls on one model are serialised inside)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._m = _edgetune.Model(os.fspath(path))

    @property
    def path(self) -> str:
        return self._m.path

    @property
    def info(self) -> dict[str, int]:
        """Shapes: ``n_layer``, ``dim``, ``n_head``, ``n_head_kv``, ``head_dim``, ``ffn``,
        ``n_vocab``, ``context_length``."""
        return self._m.info

    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        """Token ids of `text`; BOS first when `add_bos` (default: as the model asks).
        With `special`, control-token text (``<|eot_id|>``) becomes the control token."""
        return self._m.tokenize(text, add_bos, special)

    def detokenize(self, ids: Iterable[int]) -> str:
        """The text of token ids."""
        return self._m.detokenize(list(ids))

    def generate(
        self,
        prompt: str,
        max_tokens: int = 128,
        template: str = "auto",
        system: str | None = None,
        temperature: float = 0.0,
        top_k: int = 40,
        top_p: float = 0.95,
        seed: int = 0,
    ) -> str:
        """Generates an answer to `prompt`. `template`: ``auto`` (the prompt as one user message
        in the model's chat template, after `system` if given), ``alpaca``, ``llama3-chat``,
        ``none``. Temperature 0 is greedy."""
        return self._m.generate(prompt, max_tokens, template, system, temperature, top_k, top_p, seed)

    def perplexity(self, tokens: Iterable[int] | str) -> dict[str, float]:
        """Mean negative log-likelihood and perplexity of `tokens` (a text is tokenized with
        BOS as the model asks): ``{"tokens", "predicted", "mean_nll", "perplexity"}``."""
        ids = self.tokenize(tokens) if isinstance(tokens, str) else [int(t) for t in tokens]
        return self._m.perplexity(ids)

    def set_adapter(self, path: str | os.PathLike[str] | None) -> None:
        """Generates through the adapter at `path` (PEFT directory, GGUF LoRA, native
        directory or checkpoint) from now on; ``None`` removes it."""
        self._m.set_adapter(None if path is None else os.fspath(path))

    def stream_weights(self, stream_head: bool = False) -> None:
        """Reads the layers (and with `stream_head` the output head, in chunks of rows) from the
        file as they run instead of keeping the mapped weights resident, for a model larger than
        the memory at hand; generation and perplexity give the same results."""
        self._m.stream_weights(stream_head)

    @property
    def stream_stats(self) -> dict[str, int] | None:
        """The weight stream's reads so far (``layer_reads``, ``head_chunk_reads``,
        ``bytes_read``); ``None`` while the weights are mapped."""
        return self._m.stream_stats()


class Trainer:
    """A training run driven step by step.

    ``Trainer(config, progress=None)``: `config` holds `edgetune train`'s settings by flag
    name — ``model``, ``data`` (a dataset file) or ``data_records`` (a list of records: Alpaca
    ``{"instruction", "input", "output"}``, chat ``{"messages": [...]}``, ``{"text"}`` or
    ``{"input_ids", "labels"}``), ``out`` (the run directory: metrics.jsonl, checkpoints),
    ``steps``, ``seq-len``, ``batch``, ``accum``, ``rank``, ``alpha``, ``targets``, ``lr``,
    ``method``, ``overwrite``, ``resume``, ``budget``, … `progress(dict)` is called after every
    step with ``step``, ``total_steps``, ``loss``, ``lr``, ``grad_norm``, ``tok_per_s``,
    ``targets``, ``elapsed_s``; returning ``False`` stops `step` early (``cancelled`` is then
    True).

    Records in memory are written to a temporary JSONL file that the library reads and
    tokenizes while the trainer is built; the file is deleted right after.

    The run directory is locked while the trainer lives: `close()` (or ``with``) releases it.
    """

    def __init__(self, config: Mapping[str, Any], progress: ProgressFn | None = None) -> None:
        cfg = {k.replace("-", "_"): v for k, v in config.items()}
        records = cfg.pop("data_records", None)
        self._progress = progress
        self.cancelled = False
        if records is None:
            self._t = _edgetune.Trainer(_config_json(cfg))
            return
        if cfg.get("data"):
            raise EdgetuneError("give data (a path) or data_records, not both")
        fd, tmp = tempfile.mkstemp(prefix="edgetune-records-", suffix=".jsonl")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(_records_jsonl(records))
            cfg["data"] = tmp
            self._t = _edgetune.Trainer(_config_json(cfg))
        finally:
            os.unlink(tmp)

    def step(self, n: int = 1, progress: ProgressFn | None = None) -> list[float]:
        """Runs up to `n` optimizer steps and returns their losses (the mean over each step's
        target tokens). Fewer when the configured steps or the data are used up, or when the
        progress callback returned ``False`` (``cancelled`` is then True). The GIL is released
        while a step runs; Ctrl-C stops between steps (KeyboardInterrupt)."""
        if n < 0:
            raise ValueError("n must be >= 0")
        losses, cancelled = self._t.step(n, progress or self._progress)
        self.cancelled = cancelled
        return losses

    def checkpoint(self) -> str:
        """Writes a checkpoint (adapter, optimizer state, data cursor) into
        ``out/checkpoints/step-NNNNNNNN`` and returns that directory (``resume`` continues
        from the newest)."""
        return self._t.checkpoint()

    def export(self, format: str, path: str | os.PathLike[str]) -> None:
        """Writes the adapter as ``"peft"`` (a Hugging Face PEFT directory), ``"gguf"`` (a
        llama.cpp LoRA file for ``--lora``) or ``"native"`` (an edgetune adapter directory)."""
        self._t.export(format, os.fspath(path))

    def get_adapter(self) -> dict[str, np.ndarray]:
        """The adapter as float32 arrays by PEFT tensor name
        (``base_model.model.model.layers.{L}.self_attn.q_proj.lora_A.weight``; ``lora_A``
        ``[r, in]``, ``lora_B`` ``[out, r]``, in PEFT's layout: the tensors the ``"peft"``
        export writes). A snapshot: the arrays do not change with later steps."""
        return self._t.get_adapter()

    def set_adapter(self, arrays: Mapping[str, Any]) -> None:
        """Replaces the adapter's parameters with `arrays` (every tensor `get_adapter` returns,
        same names and shapes; converted to float32). The next step trains from them. The
        optimizer state (AdamW moments, step count and so the learning-rate schedule) is kept;
        to start a round with fresh moments, build a new Trainer and `set_adapter` on it.
        Nothing is written unless every array is valid (names, shapes, finite values)."""
        self._t.set_adapter(_f32_arrays(arrays))

    def evaluate(
        self,
        data: str | os.PathLike[str] | None = None,
        data_records: Iterable[Mapping[str, Any]] | None = None,
        format: str | None = None,
    ) -> float:
        """Mean loss over the response tokens of held-out data (a dataset file, or records in
        memory) under the current adapter — the loss a training step computes, without
        dropout or gradients; the adapter and the optimizer are untouched."""
        if (data is None) == (data_records is None):
            raise EdgetuneError("evaluate: give data (a path) or data_records")
        if data is not None:
            loss, _ = self._t.evaluate(os.fspath(data), None, format)
        else:
            loss, _ = self._t.evaluate(None, _records_jsonl(data_records), format)
        return loss

    @property
    def completed(self) -> int:
        """Optimizer steps completed (a resumed run counts the earlier ones)."""
        return self._t.completed

    @property
    def total_steps(self) -> int:
        """The run's length in optimizer steps."""
        return self._t.total_steps

    @property
    def planned_bytes(self) -> int:
        """The planned peak memory in bytes (the budget's total)."""
        return self._t.planned_bytes

    @property
    def config(self) -> dict[str, Any]:
        """The run's full configuration (`TrainConfig`'s fields)."""
        return json.loads(self._t.config_json)

    def close(self) -> None:
        """Frees the model mapping and the step's memory and unlocks the run directory."""
        self._t.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
