"""The Generator: batched Qwen2.5-VL generation with per-row interventions, shared by the lmms-eval / lm-eval
wrapper and the analyses (localization sweeps, transfer).

    gen = Generator.load("path/or/hub-id", dtype="auto", device="cuda")
    out = gen.generate([GenRequest("Describe the image.", images=[img])], max_new_tokens=64)
    out[0].text, out[0].token_ids, out[0].finish_reason      # "stop" (EOS / stop string) or "length"

* Prompts go through the processor's chat template (system message, then the user turn: images first,
  then the text), are padded on the left and generated in batches; greedy unless ``do_sample=True``. Only the
  arguments given here steer decoding: the checkpoint's ``generation_config`` sampling defaults (a hub
  Qwen2.5-VL ships ``repetition_penalty`` 1.05) are not applied (docs/method.md: greedy, temperature 0), unless
  asked: ``repetition_penalty="checkpoint"`` takes the checkpoint's, as the reference code does (seed-compatible).
* ``stop``: one list of stop strings for all rows, or one list per row; the text is cut at the first stop
  string and a row stops generating once it has one (the batch stops when every row is done).
* ``batch_size="auto"``: start at ``max_batch_size`` (or the last size that fitted) and halve on
  ``torch.cuda.OutOfMemoryError``; the size that worked is remembered for the next call. ``max_batch_size=None``
  (the default): 64 rows, or on a GPU with the static decoder as many rows as a quarter of the free memory holds
  (K/V cache of a 2048-token prompt plus the new tokens, at most 1024 rows).
* Decoding: ``decode="auto"`` prefills with the model's own forward and decodes greedy rows with
  :class:`frankeneval.engine.decode.StaticDecoder` (preallocated cache, CUDA graph on GPU); each distinct prompt and
  image is encoded once (:class:`frankeneval.engine.encoding.PromptEncoder`), ``prefill_tokens`` prompt tokens per
  prefill forward; sampling, repetition penalty, attention capture and the seed-compatible swap use
  ``model.generate``, as does ``decode="hf"`` for everything. Both give the same tokens (tests, float32).
  ``decode="compiled"``: the static path with its decode step ``torch.compile``-d (fused elementwise work inside
  the CUDA graph; the first call compiles; float32 tokens equal ``auto``'s, bfloat16 may differ at near-ties).
  ``profile=True``: the static path's encode (of it: processor, vision tower) / prefill / decode seconds add up in
  ``timings``.
* ``interventions``: one entry per request (see ``frankeneval.engine.interventions``); ``CaptureAttention`` results
  come back in ``GenResult.captures``. ``SwapVisualKV`` with a PIL image source is encoded once with the
  row's own prompt/system (cached), or pass a ``VisualKV`` from ``Generator.visual_kv``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from frankeneval.engine.branch import BranchPlan, branch_prefill, plan_branches
from frankeneval.engine.continuous import ContinuousDecoder
from frankeneval.engine.decode import StaticDecoder, returned_cache, supports_static_decode
from frankeneval.engine.encoding import PromptEncoder, image_key, to_rgb, visual_token_count
from frankeneval.engine.interventions import (
    Ablate,
    AttentionCapture,
    CaptureAttention,
    RecordVisualKV,
    SwapVisualKV,
    VisualKV,
    apply_interventions,
    build_captures,
    needs_hooked_decode,
    normalize_rows,
)
from frankeneval.errors import FrankenevalError, InterventionError, NoTokenizer, UnsafeWeights
from frankeneval.weights.checkpoint import TOKENIZER_FILES, check_metadata_json

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 64  # rows per call when the memory does not say more (CPU, or model.generate)
MAX_AUTO_ROWS = 1024  # the most rows batch_size="auto" starts at on a GPU
DEFAULT_PREFILL_TOKENS = 32768  # prompt tokens per prefill forward of the static decoder (rows = this // prompt length)
DECODE_MODES = ("auto", "compiled", "hf")


@dataclass
class GenRequest:
    """One prompt: user text, images shown before it, optional system message (None: the template's default)."""

    prompt: str
    images: list = field(default_factory=list)
    system: str | None = None


@dataclass
class GenResult:
    """Generated text (cut at the first stop string), generated token ids (no trailing EOS), why it ended."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length" | "timeout" (generate's time_limit)
    captures: list[AttentionCapture] = field(default_factory=list)


class _FinishScan:
    """Where each row finished, from its generated tokens fed in order (:meth:`extend`).

    The first EOS (finished there, reason ``eos``), else the first step whose decoded tail holds one of the row's stop
    strings (finished after it, reason ``stop``). Shared by both decode paths: :class:`_StopOnStrings` feeds it
    ``model.generate``'s tokens step by step, the static decoder its tokens every few steps.
    """

    def __init__(self, tokenizer, stops: list[list[str]], eos_ids: set[int]):
        self.tokenizer = tokenizer
        self.stops = stops
        self.eos_ids = eos_ids
        self.window = [max((len(s) for s in row), default=0) + 4 for row in stops]
        self.finished_at: list[int | None] = [None] * len(stops)
        self.reason: list[str] = ["length"] * len(stops)
        self.tokens: list[list[int]] = [[] for _ in stops]

    @property
    def n_seen(self) -> int:
        """Tokens per row fed so far."""
        return len(self.tokens[0]) if self.tokens else 0

    def extend(self, new: list[list[int]]) -> bool:
        """Feed each row's next tokens; returns whether every row has finished."""
        for r, toks in enumerate(new):
            row = self.tokens[r]
            for t in toks:
                row.append(t)
                if self.finished_at[r] is not None:
                    continue
                if t in self.eos_ids:
                    self.finished_at[r], self.reason[r] = len(row) - 1, "eos"
                elif self.stops[r]:
                    tail = self.tokenizer.decode(row[-self.window[r] :], skip_special_tokens=True)
                    if any(s in tail for s in self.stops[r]):
                        self.finished_at[r], self.reason[r] = len(row), "stop"
        return all(f is not None for f in self.finished_at)


@dataclass
class _Group:
    """A group of requests encoded for the static decoder: ids, image features, prefill positions, padding mask,
    the shared-prefix swap plan, the rows prefilled whole, and the prompt slots the group needs."""

    ids: torch.Tensor
    features: list
    positions: torch.Tensor
    mask: torch.Tensor
    plan: BranchPlan
    full: list[int]
    slots: int


def _budgets(max_new_tokens: int | Sequence[int], n: int) -> list[int]:
    """One new-token budget per request (each >= 1)."""
    if isinstance(max_new_tokens, int):
        budgets = [max_new_tokens] * n
    else:
        budgets = [int(b) for b in max_new_tokens]
        if len(budgets) != n:
            raise FrankenevalError(f"max_new_tokens: one budget or one per request ({n}), got {len(budgets)}")
    if min(budgets) < 1:
        raise FrankenevalError(f"max_new_tokens must be >= 1, got {min(budgets)}")
    return budgets


def _within(res: GenResult, budget: int, tokenizer, stops: list[str]) -> GenResult:
    """``res`` as it ends with its own ``budget``: a longer answer cut there (``length``), its text and captures
    with it; a stop string inside the cut part would have ended it earlier, so it never applies."""
    if len(res.token_ids) < budget:
        return res
    if len(res.token_ids) == budget:  # an EOS right after the budget's last token: alone it never comes
        whole = tokenizer.decode(res.token_ids, skip_special_tokens=True)
        eos_after = res.finish_reason == "stop" and res.text == whole
        return replace(res, finish_reason="length") if eos_after else res
    toks = res.token_ids[:budget]
    captures = [replace(c, mass=c.mass[..., :budget]) if c.query == "generated" and c.mass.numel() else c
                for c in res.captures]
    return GenResult(text=tokenizer.decode(toks, skip_special_tokens=True), token_ids=toks, finish_reason="length",
                     captures=captures)


class _StaticCaptures:
    """``captures(row, n_generated)`` of a static-path batch: the prefill's capture (the hooked forward's, the
    first generated token's query) followed by the static decoder's steps."""

    def __init__(self, prefilled: dict, decoder: StaticDecoder, n_layers: int):
        self.prefilled, self.decoder, self.n_layers = prefilled, decoder, n_layers

    def captures(self, row: int, n_generated: int | None = None):
        if row not in self.prefilled:
            return []
        plan, per_layer, padding = self.prefilled[row]
        if plan.capture.query == "generated" and row in self.decoder.capture_rows:
            n = n_generated if n_generated is not None else self.decoder.out.shape[1]
            per_layer = {j: [*chunks, self.decoder.generated_mass(row, j, n)] for j, chunks in per_layer.items()}
        return build_captures(plan, per_layer, self.n_layers, padding, n_generated)


class _Deadline:
    """A batch's time limit (``generate(time_limit=)``): the rows still generating when it has passed are cut there
    with the finish reason ``timeout``. Checked between decode chunks (the static decoder's ``done`` callback, every
    16 steps; ``model.generate``'s stopping criterion, every step)."""

    def __init__(self, seconds: float, max_new_tokens: int):
        self.at = time.monotonic() + float(seconds)
        self.max_new_tokens = max_new_tokens
        self.hit = False

    def passed(self) -> bool:
        self.hit = self.hit or time.monotonic() >= self.at
        return self.hit


class _StopOnStrings:
    """``model.generate`` stopping criterion: feeds each step's new token to a :class:`_FinishScan`; every row stops
    once the batch's :class:`_Deadline` (when one is set) has passed."""

    def __init__(self, scan: _FinishScan, deadline: _Deadline | None = None):
        self.scan = scan
        self.deadline = deadline

    def __call__(self, input_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        self.scan.extend([[t] for t in input_ids[:, -1].tolist()])
        if self.deadline is not None and self.deadline.passed():
            return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return torch.tensor([f is not None for f in self.scan.finished_at], device=input_ids.device)


def refuse_pickle_only(pretrained: str) -> None:
    """Raise :class:`UnsafeWeights` when the local checkpoint ``pretrained`` holds pickle weights and no safetensors."""
    path = Path(str(pretrained)).expanduser()
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return
    if any(path.glob("pytorch_model*.bin")) or any(path.glob("*.bin")):
        raise UnsafeWeights(
            f"{pretrained} holds only pickle weights (*.bin), which can run arbitrary code when loaded. Convert it "
            "to safetensors, or pass --allow-pickle (the franken_qwen wrapper: model arg allow_pickle=true) if you "
            "trust its source."
        )


def check_tokenizer(processor, pretrained: str) -> None:
    """Raise :class:`NoTokenizer` (one line) when the processor's tokenizer has no vocabulary: transformers makes an
    empty tokenizer for a checkpoint without tokenizer files, which turns every prompt into zero tokens."""
    tokenizer = getattr(processor, "tokenizer", processor)
    try:
        ids = tokenizer("Hello world 1 2 3", add_special_tokens=False)["input_ids"]
        size = len(tokenizer)
    except Exception:  # noqa: BLE001 - a tokenizer we cannot probe is left to its first real use
        return
    if not ids or size < 2:
        found = ", ".join(TOKENIZER_FILES)
        raise NoTokenizer(f"{pretrained} has no tokenizer (none of {found}; transformers made an empty one, so "
                          "every prompt would be zero tokens): copy the tokenizer files of the model it came from "
                          "into it")


def _check_prompt_tokens(prompt_len: int) -> None:
    if prompt_len < 1:
        raise NoTokenizer("the prompts encoded to zero tokens: the model's tokenizer has no vocabulary (copy the "
                          "tokenizer files of the model it came from into its folder)")


def usable_gpu_memory(device) -> int:
    """Bytes this process can still allocate on ``device``: the device's free memory plus what PyTorch's caching
    allocator holds without using (``mem_get_info`` counts that as taken, so after a large call it would look full)."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "out of memory" in str(exc).lower()


class Generator:
    """Batched generation / scoring over one loaded Qwen2.5-VL model and its processor."""

    def __init__(self, model, processor, *, max_batch_size: int | None = None, decode: str = "auto",
                 prefill_tokens: int = DEFAULT_PREFILL_TOKENS):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.max_batch_size = max_batch_size
        self.decode = decode
        self.prefill_tokens = int(prefill_tokens)
        self._encoder: PromptEncoder | None = None
        self._static_layout: bool | None = None  # whether the static decoder knows this model (decided once)
        self.branch_swaps = True  # swap rows prefill only their text suffix over their prompt's shared prefix
        self.continuous = True  # more requests than rows: refill finished rows (engine/continuous.py)
        self.profile = False  # True: the static path's encode / prefill / decode seconds add up in self.timings
        self.timings: dict[str, float] = {}
        self._auto_batch_size: int | None = None
        self._kv_cache: OrderedDict[tuple, VisualKV] = OrderedDict()
        self.kv_cache_size = 64
        self._visual_token_cache: dict[tuple[int, int], int] = {}  # image size -> visual tokens (request order)
        self._text_tokens: dict[str, int] = {}  # chat text -> its tokens (request order)

    # ------------------------------------------------------------------------------------------------ load
    @classmethod
    def load(
        cls,
        pretrained: str,
        *,
        dtype: str | torch.dtype = "auto",
        device: str | None = None,
        device_map: str | dict | None = None,
        attn_implementation: str | None = None,
        max_pixels: int | None = None,
        min_pixels: int | None = None,
        max_batch_size: int | None = None,
        allow_pickle: bool = False,
        decode: str = "auto",
    ) -> Generator:
        """Load model + processor from a local dir or hub id (``device`` or ``device_map``, not both).

        Only safetensors weights unless ``allow_pickle`` (``--allow-pickle``; the wrapper's ``allow_pickle=true``):
        a pickle-only checkpoint (``pytorch_model*.bin``) is refused with :class:`UnsafeWeights` before loading.
        """
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not allow_pickle:
            refuse_pickle_only(pretrained)
        check_metadata_json(pretrained)  # a config.json (or tokenizer / processor JSON) that is not JSON: one line

        if isinstance(dtype, str) and dtype != "auto":
            if not hasattr(torch, dtype):
                raise FrankenevalError(f"unknown dtype {dtype!r} (use auto, bfloat16, float16 or float32)")
            dtype = getattr(torch, dtype)
        proc_kwargs = {k: v for k, v in (("max_pixels", max_pixels), ("min_pixels", min_pixels)) if v is not None}
        try:
            processor = AutoProcessor.from_pretrained(pretrained, **proc_kwargs)
            check_tokenizer(processor, pretrained)
            model_kwargs: dict[str, Any] = {"dtype": dtype}
            if not allow_pickle:
                model_kwargs["use_safetensors"] = True  # hub ids too: never fall back to a pickle file
            if device_map is not None:
                model_kwargs["device_map"] = device_map
            if attn_implementation is not None:
                model_kwargs["attn_implementation"] = attn_implementation
            model = AutoModelForImageTextToText.from_pretrained(pretrained, **model_kwargs)
        except OSError as exc:
            raise FrankenevalError(f"cannot load model {pretrained!r}: {' '.join(str(exc).split())}") from exc
        if device_map is None:
            model = model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return cls(model, processor, max_batch_size=max_batch_size, decode=decode)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def decode(self) -> str:
        """``auto``: the static decoder for greedy rows (module docstring); ``compiled``: the same with its step
        ``torch.compile``-d (:class:`StaticDecoder`'s ``compile_step``); ``hf``: ``model.generate`` for all."""
        return self._decode

    @decode.setter
    def decode(self, value: str) -> None:
        value = str(value).lower()
        if value not in DECODE_MODES:
            raise FrankenevalError(f"decode must be one of {', '.join(DECODE_MODES)}, got {value!r}")
        self._decode = value

    @property
    def _static_path(self) -> bool:
        """``decode="auto"`` (or ``"compiled"``) and a model the static decoder knows, on one device (the static path's
        own condition)."""
        if self._decode not in ("auto", "compiled"):
            return False
        if self._static_layout is None:  # the model does not change: decided once
            one_device = len({str(d) for d in getattr(self.model, "hf_device_map", {}).values()}) <= 1
            self._static_layout = one_device and supports_static_decode(self.model)
        return self._static_layout

    def checkpoint_repetition_penalty(self) -> float | None:
        """The checkpoint's ``generation_config.repetition_penalty`` (a hub Qwen2.5-VL ships 1.05), None when it has
        none: what ``generate`` applies when the caller passes no penalty, as the reference code does
        (``repetition_penalty="checkpoint"`` in :meth:`generate`; the seed-compatible paths)."""
        value = getattr(self.model.generation_config, "repetition_penalty", None)
        return None if value in (None, 1.0) else float(value)

    def _static_ok(self, rows: list[list], do_sample: bool, repetition_penalty) -> bool:
        """Whether these rows decode with the static decoder (greedy, no capture / record / seed-compatible swap)."""
        if not self._static_path or do_sample or repetition_penalty not in (None, 1.0):
            return False
        return not needs_hooked_decode(rows)

    def _start_batch_size(self, max_new_tokens: int, static: bool) -> int:
        """Rows per call ``batch_size="auto"`` starts at (before any out-of-memory back-off)."""
        if self.max_batch_size is not None:
            return int(self.max_batch_size)
        if not (static and self.device.type == "cuda"):
            return DEFAULT_MAX_BATCH_SIZE
        per_row = StaticDecoder.cache_bytes(self.model, 1, 2048 + max_new_tokens)
        return int(
            max(DEFAULT_MAX_BATCH_SIZE, min(MAX_AUTO_ROWS, usable_gpu_memory(self.device) // 4 // max(per_row, 1)))
        )

    @property
    def encoder(self) -> PromptEncoder:
        """The static decoder's prompt encoder (processor once per distinct prompt, vision tower once per image)."""
        if self._encoder is None:
            self._encoder = PromptEncoder(self.model, self.processor, pad_id=self._pad_id(), phase=self._phase)
        return self._encoder

    def rows_per_call(self, max_new_tokens: int) -> int:
        """Rows one greedy call takes when nothing else is said (``batch_size="auto"``'s starting point)."""
        return self._start_batch_size(max_new_tokens, self._static_path)

    @property
    def auto_batch_size(self) -> int | None:
        """The rows per call ``batch_size="auto"`` settled on (None before its first batch)."""
        return self._auto_batch_size

    @property
    def n_llm_layers(self) -> int:
        """The number of LLM decoder layers (unified LLM layers are 1 ... this)."""
        return int(self.model.config.get_text_config().num_hidden_layers)

    # ------------------------------------------------------------------------------------------------ inputs
    def chat_text(self, request: GenRequest) -> str:
        """The chat-templated prompt text of one request, ending with the assistant turn opener."""
        content = [{"type": "image"} for _ in request.images] + [{"type": "text", "text": request.prompt}]
        messages = []
        if request.system is not None:
            messages.append({"role": "system", "content": [{"type": "text", "text": request.system}]})
        messages.append({"role": "user", "content": content})
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _chat_texts(self, requests: Sequence[GenRequest]) -> list[str]:
        """:meth:`chat_text` of each request, rendered once per distinct (prompt, system, image count)."""
        seen: dict[tuple, str] = {}
        out = []
        for r in requests:
            key = (r.prompt, r.system, len(r.images))
            if key not in seen:
                seen[key] = self.chat_text(r)
            out.append(seen[key])
        return out

    def encode(self, requests: Sequence[GenRequest]):
        """Processor outputs for a batch (left padding), on the model's device."""
        texts = [self.chat_text(r) for r in requests]
        images = [to_rgb(im) for r in requests for im in r.images]
        inputs = self.processor(
            text=texts, images=images or None, padding=True, padding_side="left", return_tensors="pt"
        )
        return inputs.to(self.device)

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        return {int(i) for i in ids if i is not None}

    def _never_generated_id(self) -> int:
        """A token id outside the output vocabulary (``lm_head`` rows), so never generated."""
        return int(self.model.get_output_embeddings().weight.shape[0])

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.model.generation_config.pad_token_id
        if pad is None:
            pad = min(self._eos_ids())
        return int(pad)

    # ------------------------------------------------------------------------------------------------ visual KV
    def visual_kv(self, image, *, prompt: str = "", system: str | None = None) -> VisualKV:
        """Post-RoPE K/V of ``image``'s visual tokens at every LLM layer, with this prompt/system (cached).

        The visual tokens come before the prompt text, so only the system message and the image matter.
        """
        return self._visual_kvs([GenRequest(prompt, [image], system)])[0]

    def visual_kvs(self, images: Sequence, *, prompts: Sequence[str], system: str | None = None) -> list[VisualKV]:
        """:meth:`visual_kv` of several images (one prompt each): their images go through the vision tower together."""
        return self._visual_kvs([GenRequest(p, [im], system) for im, p in zip(images, prompts, strict=True)])

    def _visual_kvs(self, requests: list[GenRequest]) -> list[VisualKV]:
        """Visual K/V per request: the call's answers are kept for the call itself, so the bounded cache (least
        recently used first out, ``kv_cache_size`` entries) may evict any of them meanwhile."""
        keys = [(tuple(image_key(im) for im in r.images), r.system, r.prompt) for r in requests]
        found: dict[tuple, VisualKV] = {}
        for k in keys:
            if k in self._kv_cache:
                self._kv_cache.move_to_end(k)  # a hit is recent use
                found[k] = self._kv_cache[k]
        todo = [i for i, k in enumerate(keys) if k not in found]
        if len(todo) > 1 and self._static_path:  # every new image in one vision-tower pass (the encoder caches them)
            with self._phase("encode"):
                self.encoder.encode(self._chat_texts([requests[i] for i in todo]), [requests[i].images for i in todo])
        for i in todo:  # one prefill per unique source (usually few)
            if keys[i] in found:
                continue
            req = requests[i]
            if self._static_path:  # the encoder's caches: an LLM prefill
                inputs, features, positions, mask, _ = self._encode_static([req])
                forward = dict(
                    inputs_embeds=self.encoder.embeds(inputs["input_ids"], features, self.model.get_input_embeddings()),
                    attention_mask=mask,
                    position_ids=positions,
                )
            else:
                inputs = self.encode([req])
                forward = dict(inputs)
            with torch.inference_mode(), apply_interventions(
                self.model,
                [[RecordVisualKV()]],
                input_ids=inputs["input_ids"],
                attention_mask=inputs.get("attention_mask"),
            ) as session:
                self.model(**forward, use_cache=False)
            grid = tuple(tuple(int(x) for x in g) for g in inputs.get("image_grid_thw", torch.zeros(0, 3)).tolist())
            found[keys[i]] = self._kv_cache[keys[i]] = session.visual_kv(0, grid)
            while len(self._kv_cache) > self.kv_cache_size:
                self._kv_cache.popitem(last=False)
        return [found[k] for k in keys]

    def _resolve_sources(self, requests: list[GenRequest], rows: list[list]) -> list[list]:
        out = []
        for req, row in zip(requests, rows):
            new_row = []
            for it in row:
                if isinstance(it, SwapVisualKV) and not isinstance(it.source, VisualKV):
                    if not hasattr(it.source, "tobytes"):
                        raise InterventionError("SwapVisualKV.source must be a PIL image or a VisualKV")
                    n_images = len(req.images)
                    if n_images != 1:
                        raise InterventionError(
                            f"SwapVisualKV with an image source needs one target image per row, got {n_images}"
                        )
                    kv = self._visual_kvs([GenRequest(req.prompt, [it.source], req.system)])[0]
                    it = replace(it, source=kv)
                new_row.append(it)
            out.append(new_row)
        return out

    # ------------------------------------------------------------------------------------------------ generate
    def generate(
        self,
        requests: Sequence[GenRequest],
        *,
        max_new_tokens: int | Sequence[int] = 256,
        do_sample: bool = False,
        temperature: float | None = None,
        top_p: float | None = None,
        repetition_penalty: float | str | None = None,
        stop: Sequence[str] | Sequence[Sequence[str]] | None = None,
        ignore_eos: bool = False,
        interventions: Any = None,
        batch_size: int | str = "auto",
        seed: int | None = None,
        progress: bool = False,
        time_limit: float | None = None,
    ) -> list[GenResult]:
        """Generate for every request (results in request order). See the module docstring.

        ``max_new_tokens``: one budget for all, or one per request (each answer then ends as it would alone with
        its own budget; a static batch still runs to its largest, a continuous run frees the row at its own).

        ``time_limit``: seconds an answer may take; the rows still generating then are cut there with the finish
        reason ``timeout``. A static batch's rows are timed from the batch's start (with ``batch_size=1`` exactly
        the item's time); with continuous refilling each request from its own prefill, checked at each harvest."""
        requests = list(requests)
        n = len(requests)
        if n == 0:
            return []
        budgets = _budgets(max_new_tokens, n)
        max_new_tokens = max(budgets)
        rows = normalize_rows(interventions, n)
        stops = self._normalize_stops(stop, n)
        if repetition_penalty == "checkpoint":
            repetition_penalty = self.checkpoint_repetition_penalty()
        if seed is not None:
            torch.manual_seed(seed)
        order = self.request_order(requests)
        kwargs = dict(
            max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p,
            repetition_penalty=repetition_penalty, ignore_eos=ignore_eos,
        )
        results: list[GenResult | None] = [None] * n
        auto = isinstance(batch_size, str)
        if auto and batch_size != "auto" and not batch_size.startswith("auto"):
            raise FrankenevalError(f"batch_size must be an int or 'auto', got {batch_size!r}")
        static = self._static_ok(rows, do_sample, repetition_penalty)
        bs = (self._auto_batch_size or self._start_batch_size(max_new_tokens, static)) if auto else int(batch_size)
        bs = max(1, min(bs, n))
        pbar = None
        if progress:
            from tqdm.auto import tqdm

            pbar = tqdm(total=n, desc="generate")
        # more requests than rows on the static path: one continuous run refills finished rows from the queue
        continuous = (static and self.continuous and n > bs
                      and not any(isinstance(it, CaptureAttention) for row in rows for it in row))
        i = 0
        while i < n:
            idx = order[i:] if continuous else order[i : i + bs]
            # a continuous run times each request itself; a static batch has one deadline
            self._deadline = _Deadline(time_limit, max_new_tokens) if time_limit and not continuous else None
            try:
                batch = self._generate_batch(
                    [requests[j] for j in idx], [rows[j] for j in idx], [stops[j] for j in idx], **kwargs,
                    slots=bs if continuous else None, budgets=[budgets[j] for j in idx],
                    time_limit=time_limit if continuous else None,
                )
            except Exception as exc:
                self._deadline = None
                if not (auto and _is_oom(exc)) or bs == 1:
                    raise
                bs = max(1, bs // 2)
                log.warning("out of memory: retrying with batch size %d", bs)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            if auto and self._auto_batch_size != bs:
                self._auto_batch_size = bs
                log.info("batch_size auto: %d rows per call", bs)
            for j, res in zip(idx, batch):
                results[j] = res
            i += len(idx)
            if pbar is not None:
                pbar.update(len(idx))
        self._deadline = None
        if pbar is not None:
            pbar.close()
        return results  # type: ignore[return-value]

    def request_order(self, requests: Sequence[GenRequest]) -> list[int]:
        """The order a call runs its requests in: longest prompt first, by :meth:`prompt_slots` (ties keep the call's
        order). A batch or a refill wave then holds prompts of about one length (little padding in the prefill), an
        out-of-memory shows up on the first batch, and a continuous run's cache window shrinks as the waves get
        shorter (:mod:`frankeneval.engine.continuous`). Ordering by the images' visual tokens alone (6891b04) or by
        text length alone (before it) padded the transfer's 1,364 requests to about 2.4 M prefill tokens for 1.0 M
        real ones, at 115 rows; by slots, 1.3 M (bench/bench_window.py records it)."""
        slots = self.prompt_slots(requests)
        return sorted(range(len(requests)), key=lambda i: -slots[i])

    def prompt_slots(self, requests: Sequence[GenRequest]) -> list[int]:
        """Each request's prompt length in cache slots, without running the processor: its chat text's tokens, with
        each image's one placeholder token counted as the image's visual tokens (from its size)."""
        texts = self._chat_texts(requests)
        new = list(dict.fromkeys(t for t in texts if t not in self._text_tokens))
        if new:
            if len(self._text_tokens) + len(new) > 65536:
                self._text_tokens.clear()
            ids = self.tokenizer(new, add_special_tokens=False)["input_ids"]
            self._text_tokens.update(zip(new, map(len, ids)))
        return [self._text_tokens[t] - len(r.images) + self._visual_tokens(r) for t, r in zip(texts, requests)]

    def _visual_tokens(self, request: GenRequest) -> int:
        """The visual tokens of a request's images, from their sizes (no processing); 0 for an image without one."""
        sizes = [getattr(im, "size", None) for im in request.images]
        return sum(self._visual_tokens_of(tuple(sz)) for sz in sizes if sz is not None)

    def _visual_tokens_of(self, size: tuple[int, int]) -> int:
        if size not in self._visual_token_cache:
            self._visual_token_cache[size] = visual_token_count(self.processor, size)
        return self._visual_token_cache[size]

    @staticmethod
    def _normalize_stops(stop, n: int) -> list[list[str]]:
        if stop is None:
            return [[] for _ in range(n)]
        stop = list(stop)
        if all(isinstance(s, str) for s in stop):
            return [[s for s in stop if s] for _ in range(n)]
        if len(stop) != n:
            raise FrankenevalError(f"stop must be one list of strings or one list per request ({n}), got {len(stop)}")
        return [[s for s in ([row] if isinstance(row, str) else (row or [])) if s] for row in stop]

    def _generate_batch(
        self, requests, rows, stops, *, max_new_tokens, do_sample, temperature, top_p, repetition_penalty, ignore_eos,
        slots: int | None = None, budgets: list[int] | None = None, time_limit: float | None = None,
    ):
        budgets = budgets or [max_new_tokens] * len(requests)
        if slots is not None and slots < len(requests):  # swap sources are resolved per refill group there
            return self._generate_continuous(requests, rows, stops, budgets=budgets, ignore_eos=ignore_eos,
                                             slots=slots, time_limit=time_limit)
        return [_within(res, b, self.tokenizer, stop) for res, b, stop in zip(
            self._generate_fixed(requests, rows, stops, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                 temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty,
                                 ignore_eos=ignore_eos), budgets, stops, strict=True)]

    def _generate_fixed(
        self, requests, rows, stops, *, max_new_tokens, do_sample, temperature, top_p, repetition_penalty, ignore_eos
    ):
        """One batch decoded to one budget: the static decoder, else ``model.generate``."""
        rows = self._resolve_sources(requests, rows)
        if self._static_ok(rows, do_sample, repetition_penalty):
            return self._generate_static(requests, rows, stops, max_new_tokens=max_new_tokens, ignore_eos=ignore_eos)
        return self._generate_hf(requests, rows, stops, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                 temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty,
                                 ignore_eos=ignore_eos)

    def _generate_hf(
        self, requests, rows, stops, *, max_new_tokens, do_sample, temperature, top_p, repetition_penalty, ignore_eos
    ):
        """One batch through ``model.generate`` (sampling, capture, the seed-compatible swap, ``decode="hf"``)."""
        from transformers import GenerationConfig, StoppingCriteriaList

        inputs = self.encode(requests)
        prompt_len = inputs["input_ids"].shape[1]
        _check_prompt_tokens(prompt_len)
        eos_ids = set() if ignore_eos else self._eos_ids()
        pad_id = self._pad_id()
        # every knob explicit: transformers fills a None from the checkpoint's generation_config (a hub Qwen2.5-VL
        # ships repetition_penalty 1.05, top_k 1, top_p 0.001), which would change what "greedy" means, and an
        # eos_token_id of None would bring the checkpoint's EOS back under ignore_eos (the vocabulary size is an id
        # the model never generates)
        gen_cfg = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=(temperature if temperature is not None else 1.0) if do_sample else None,
            top_p=(top_p if top_p is not None else 1.0) if do_sample else None,
            top_k=0,
            repetition_penalty=repetition_penalty if repetition_penalty is not None else 1.0,
            pad_token_id=pad_id,
            eos_token_id=[self._never_generated_id()] if ignore_eos else sorted(eos_ids),
            bos_token_id=self.model.generation_config.bos_token_id,
        )
        scan = _FinishScan(self.tokenizer, stops, eos_ids)
        with torch.inference_mode(), apply_interventions(
            self.model, rows, input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")
        ) as session:
            out = self.model.generate(
                **inputs, generation_config=gen_cfg,
                stopping_criteria=StoppingCriteriaList([_StopOnStrings(scan, getattr(self, "_deadline", None))]),
            )
        new = out[:, prompt_len:].tolist()
        return self._results(new, scan.finished_at, scan.reason, stops, session)

    def _generate_static(self, requests, rows, stops, *, max_new_tokens, ignore_eos):
        """One batch: prefill with the model's forward (``prefill_tokens`` prompt tokens at a time, interventions
        applied; prompts and images encoded through :class:`PromptEncoder`'s caches; visual-KV swap rows from their
        prompt's shared prefix, :mod:`frankeneval.engine.branch`), then greedy decode with :class:`StaticDecoder`."""
        group = self._encode_group(requests, rows)
        embed = self.model.get_input_embeddings()
        decoder = StaticDecoder(self.model, rows=len(requests), prompt_len=group.slots, max_new_tokens=max_new_tokens,
                                device=embed.weight.device, dtype=embed.weight.dtype,
                                compile_step=self._decode == "compiled")
        prefilled = self._prefill_group(decoder, group, rows, dest=list(range(len(requests))))
        with torch.inference_mode(), self._phase("decode"):
            eos_ids = set() if ignore_eos else self._eos_ids()
            decoder.set_eos(eos_ids)
            scan = _FinishScan(self.tokenizer, stops, eos_ids)
            tokens = decoder.run(done=self._decode_check(scan, stops))
            new = tokens.tolist()
        scan.extend([row[scan.n_seen :] for row in new])
        return self._results(new, scan.finished_at, scan.reason, stops,
                             _StaticCaptures(prefilled, decoder, self.n_llm_layers) if prefilled else None)

    def _encode_group(self, requests, rows) -> _Group:
        """Encode a group of requests for the static decoder and plan its shared-prefix swap rows."""
        inputs, features, positions, mask, keys = self._encode_static(requests)
        ids = inputs["input_ids"]
        prompt_len = ids.shape[1]
        _check_prompt_tokens(prompt_len)
        capturing = any(isinstance(it, CaptureAttention) for row in rows for it in row)
        plan = (plan_branches(rows, ids, mask, getattr(self.model.config, "image_token_id", None), keys)
                if self.branch_swaps and not capturing else BranchPlan.empty())
        full = [r for r in range(len(requests)) if r not in set(plan.rows)]
        return _Group(ids, features, positions, mask, plan, full, max(prompt_len if full else 0, plan.length))

    def _prefill_group(self, decoder: StaticDecoder, group: _Group, rows, *, dest: list[int],
                       end: int | None = None) -> dict[int, tuple[Any, dict, torch.Tensor]]:
        """Prefill ``group`` (its rows' interventions ``rows``) into the decoder's rows ``dest`` (group row ``i`` ->
        ``dest[i]``), the prompts ending at slot ``end``; returns the capturing rows' prefill captures (by group
        row)."""
        ids, mask, positions = group.ids, group.mask, group.positions
        embed = self.model.get_input_embeddings()

        def embeds(batch_rows: list[int]) -> torch.Tensor:
            return self.encoder.embeds(ids[batch_rows], [group.features[r] for r in batch_rows], embed)

        chunk = max(1, self.prefill_tokens // ids.shape[1])
        prefilled: dict[int, tuple[Any, dict, torch.Tensor]] = {}  # capturing row -> (plan, prefill mass, padding)
        with torch.inference_mode(), self._phase("prefill"):
            for lo in range(0, len(group.full), chunk):
                part = group.full[lo : lo + chunk]
                with apply_interventions(self.model, [rows[r] for r in part], input_ids=ids[part],
                                         attention_mask=mask[part]) as session:
                    out = self.model(inputs_embeds=embeds(part), attention_mask=mask[part],
                                     position_ids=positions[:, part], use_cache=True, logits_to_keep=1)
                cache = returned_cache(out)
                decoder.write_prompt([dest[r] for r in part], cache, mask[part], positions[1:, part, -1],
                                     out.logits[:, -1].argmax(-1), session.plans, visual=session.visual, end=end)
                for i, r in enumerate(part):
                    if session.plans[i].capture is not None:
                        prefilled[r] = (session.plans[i], session.captured.get(i, {}), mask[part][i].bool())
                del out, cache
            for part, cache, part_mask, last, first in branch_prefill(
                self.model, group.plan, input_ids=ids, embeds=embeds, positions=positions, mask=mask, rows=rows,
                chunk_tokens=self.prefill_tokens,
            ):
                decoder.write_prompt([dest[r] for r in part], cache, part_mask, last, first, end=end)
                del cache
        return prefilled

    def _generate_continuous(self, requests, rows, stops, *, budgets: list[int], ignore_eos, slots: int,
                             time_limit: float | None = None):
        """Greedy decode of more requests than rows: :class:`ContinuousDecoder` keeps ``slots`` rows busy; a row
        whose request finished (EOS, a stop string, ``max_new_tokens`` or, with ``time_limit``, its own time from
        its prefill on) is harvested every ``check_every`` steps and refilled with the next requests' prefill (their
        interventions applied) while the others decode on."""
        n = len(requests)
        eos_ids = set() if ignore_eos else self._eos_ids()
        embed = self.model.get_input_embeddings()
        results: list[GenResult | None] = [None] * n
        rows = list(rows)
        queue = list(range(n))
        first = queue[:slots]
        del queue[:slots]
        began = dict.fromkeys(first, time.monotonic())  # request -> when its prefill started (time_limit)
        self._resolve_into(requests, rows, first)
        group = self._encode_group([requests[i] for i in first], [rows[i] for i in first])
        decoder = ContinuousDecoder(self.model, rows=len(first), prompt_len=group.slots, max_new_tokens=max(budgets),
                                    device=embed.weight.device, dtype=embed.weight.dtype,
                                    compile_step=self._decode == "compiled")
        decoder.set_eos(eos_ids)
        decoder.ablating = any(isinstance(it, Ablate) for row in rows for it in row)  # before a graph is captured
        self._prefill_group(decoder, group, [rows[i] for i in first], dest=list(range(len(first))))
        owner = dict(enumerate(first))  # decoder row -> request
        decoder.started(list(owner), group.slots)
        scans = {i: _FinishScan(self.tokenizer, [stops[i]], eos_ids) for i in first}
        with torch.inference_mode():
            while owner:
                with self._phase("decode"):
                    decoder.steps(decoder.check_every)
                late = ({i for i in owner.values() if time.monotonic() - began[i] >= time_limit}
                        if time_limit else set())
                free = self._harvest(decoder, owner, scans, stops, results, budgets, late)
                take = queue[: len(free)]
                del queue[: len(take)]
                for row in free[len(take):]:
                    decoder.retire(row)
                if take:
                    dest = free[: len(take)]
                    began.update(dict.fromkeys(take, time.monotonic()))
                    self._resolve_into(requests, rows, take)
                    group = self._encode_group([requests[i] for i in take], [rows[i] for i in take])
                    end = decoder.room_for_prompt(group.slots)
                    self._prefill_group(decoder, group, [rows[i] for i in take], dest=dest, end=end)
                    decoder.started(dest, group.slots)
                    owner.update(zip(dest, take))
                    scans.update({i: _FinishScan(self.tokenizer, [stops[i]], eos_ids) for i in take})
        return results

    def _resolve_into(self, requests, rows: list, which: list[int]) -> None:
        """Resolve the swap sources of requests ``which`` in place (``rows[i]``), a refill group at a time."""
        resolved = self._resolve_sources([requests[i] for i in which], [rows[i] for i in which])
        for i, row in zip(which, resolved):
            rows[i] = row

    def _harvest(self, decoder: ContinuousDecoder, owner: dict[int, int], scans: dict, stops, results,
                 budgets: list[int], late: set[int] = frozenset()) -> list[int]:
        """Move the finished rows' results into ``results``; returns the freed decoder rows. ``late``: requests out
        of time, cut where they are (finish reason ``timeout``) unless they finished otherwise."""
        n_out = decoder.n_out.tolist()
        finished = decoder.finished.tolist()
        look = [r for r, i in owner.items() if stops[i] or finished[r] or n_out[r] >= budgets[i] or i in late]
        if not look:
            return []
        lo = min(scans[owner[r]].n_seen for r in look)
        hi = max(min(n_out[r], budgets[owner[r]]) for r in look)
        window = decoder.out[look, lo:hi].tolist()
        free = []
        for row, toks in zip(look, window):
            i = owner[row]
            scan = scans[i]
            budget = budgets[i]
            scan.extend([toks[scan.n_seen - lo : min(n_out[row], budget) - lo]])
            timed_out = scan.finished_at[0] is None and n_out[row] < budget
            if timed_out and i not in late:
                continue
            res = self._results([scan.tokens[0][:budget]], scan.finished_at, scan.reason, [stops[i]], None)[0]
            results[i] = replace(res, finish_reason="timeout") if timed_out else res
            del owner[row], scans[i]
            free.append(row)
        return free

    @contextmanager
    def _phase(self, name: str):
        """Time a phase of the static path into ``self.timings`` (seconds, synchronized) when ``self.profile``."""
        if not self.profile:
            yield
            return
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            sync()
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def _encode_static(self, requests):
        """``(inputs, features, positions, mask, keys)`` of a static-path prefill: the prompt encoder's batch, image
        features and prompt keys, ``generate``'s prefill positions and the padding mask."""
        with self._phase("encode"):
            inputs, features, keys = self.encoder.encode(self._chat_texts(requests), [r.images for r in requests])
        mask = inputs.get("attention_mask")
        mask = mask if mask is not None else torch.ones_like(inputs["input_ids"])
        return inputs, features, self._prefill_positions(inputs), mask, keys

    def _prefill_positions(self, inputs) -> torch.Tensor:
        """The ``(4, rows, prompt)`` positions ``generate`` gives the prefill (text positions, then the 3-D rope)."""
        kwargs = {k: v for k, v in inputs.items() if k not in ("pixel_values", "pixel_values_videos")}
        pos = self.model._prepare_position_ids_for_generation(inputs["input_ids"], kwargs)
        if pos.dim() == 2:  # text-only model: one position per token
            pos = pos[None].expand(4, -1, -1)
        return pos

    def _decode_check(self, scan: _FinishScan, stops):
        """The static decoder's ``done`` callback: the stop strings' scan, and the batch's deadline when set."""
        deadline = getattr(self, "_deadline", None)
        if deadline is None:
            return (lambda toks, _n: scan.extend(toks[:, scan.n_seen :].tolist())) if any(stops) else None

        def check(toks, _n) -> bool:
            finished = scan.extend(toks[:, scan.n_seen :].tolist()) if any(stops) else False
            return finished or deadline.passed()

        return check

    def _results(self, new: list[list[int]], finished_at, reasons, stops, session) -> list[GenResult]:
        """Generated token lists (one per row, cut at ``finished_at``) -> results, texts cut at the first stop
        string; a row cut by the batch's deadline before ``max_new_tokens`` ends with ``timeout``."""
        deadline = getattr(self, "_deadline", None)
        results = []
        for r, toks in enumerate(new):
            end = finished_at[r]
            reason = reasons[r]
            if end is None:  # ran to max_new_tokens, or out of time
                timed_out = deadline is not None and deadline.hit and len(toks) < deadline.max_new_tokens
                end, reason = len(toks), "timeout" if timed_out else "length"
            n_gen = end + 1 if reason == "eos" else end  # queries that produced a token (EOS included)
            reason = "stop" if reason == "eos" else reason
            toks = toks[:end]
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            cut = [text.find(s) for s in stops[r] if s in text]
            if cut:
                text, reason = text[: min(cut)], "stop"
            captures = session.captures(r, n_gen) if session is not None else []
            results.append(GenResult(text=text, token_ids=toks, finish_reason=reason, captures=captures))
        return results

    # ------------------------------------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def loglikelihood(
        self,
        context: str,
        continuation: str,
        images: Sequence = (),
        *,
        system: str | None = None,
        chat: bool = True,
        interventions: Sequence | None = None,
    ) -> tuple[float, bool]:
        """log p(continuation | context) and whether greedy decoding would produce it.

        ``chat=True``: the context is the user turn (images first) of the chat template and the continuation
        starts the assistant's reply. ``chat=False`` (lm-eval text tasks): raw text, split the way lm-eval's
        HF model does (``tok(context + continuation)`` cut at ``len(tok(context))``).
        """
        if chat:
            inputs = self.encode([GenRequest(context, list(images), system)])
            ctx_ids = inputs["input_ids"]
            cont_ids = torch.tensor(
                [self.tokenizer(continuation, add_special_tokens=False)["input_ids"]], device=self.device
            )
            ids = torch.cat([ctx_ids, cont_ids], dim=1)
            extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
            if "mm_token_type_ids" in inputs:
                extra["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(cont_ids)], dim=1)
            n_ctx = ctx_ids.shape[1]
        else:
            if images:
                raise FrankenevalError("chat=False scoring is text-only")
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces:
                continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
            whole = self.tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
            ctx = self.tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
            cont = whole[len(ctx) :]
            if not ctx:
                ctx = [self._prefix_token_id()]
            ids = torch.tensor([ctx + cont], device=self.device)
            extra = {}
            n_ctx = len(ctx)
        return self._score(ids, n_ctx, extra, interventions)

    def _prefix_token_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        return int(eos if eos is not None else self._pad_id())

    def token_logprobs(self, token_ids: Sequence[int], *, interventions: Sequence | None = None) -> torch.Tensor:
        """Log-probabilities of ``token_ids[1:]`` given their prefixes (text only), shape ``(len - 1,)``."""
        ids = torch.tensor([list(token_ids)], device=self.device)
        with torch.inference_mode(), apply_interventions(self.model, [interventions or []], input_ids=ids):
            logits = (
                self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[0, :-1].float()
            )
        return torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0].cpu()

    @torch.inference_mode()
    def _score(self, ids: torch.Tensor, n_ctx: int, extra: dict, interventions) -> tuple[float, bool]:
        if ids.shape[1] <= n_ctx:
            return 0.0, True
        with apply_interventions(self.model, [interventions or []], input_ids=ids):
            logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, **extra).logits
        logits = logits[0, n_ctx - 1 : -1].float()
        target = ids[0, n_ctx:]
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, target[:, None])[:, 0]
        greedy = bool((logits.argmax(-1) == target).all())
        return float(logprobs.sum()), greedy
