"""Interventions on the LLM of a Qwen2.5-VL model, applied per batch row.

An intervention is a small frozen dataclass; a batched call takes one list of them per row, so one
``Generator.generate`` call can ablate a different layer in every row (what makes localization sweeps fast).

* ``Ablate(layers)`` -- the layer returns its input (h_{i+1} = h_i): the attention and MLP outputs of the
  chosen decoder layers are zeroed for that row, the residual stream is kept. Same as zeroing the layer's
  ``o_proj`` and ``down_proj`` weights (neither has a bias in Qwen2.5-VL).
* ``SwapVisualKV(source, from_layer)`` -- at every LLM layer ``>= from_layer`` the row's keys/values at the
  visual-token positions are replaced by the source image's post-RoPE keys/values (``VisualKV``), at prefill;
  the edit lands in the KV cache, so decode steps read it. Source and target must have the same number of
  visual tokens (else ``InterventionError``; the seed-compatible swap interpolates the source's K/V linearly over
  token positions instead, as the reference, :meth:`VisualKV.resized`). A ``from_layer`` past the last layer is a
  no-op.
  ``seed_compatible=True`` adds the reference code's decode-step re-append (docs/method.md §4.1):
  see *Seed-compatible swap* below.
* ``CaptureAttention(layers=None, query="generated")`` -- per layer and head, the attention mass
  (softmax probability summed over the visual-token keys) of the chosen query tokens. Computed inside the
  attention function with one extra attention call whose values are the visual-token indicator, so no
  ``(query x key)`` probability matrix is kept. ``query``: ``"generated"`` (the query that produced each
  generated token: the last prompt position, then each fed-back token), ``"last"`` (last prompt position)
  or ``"prompt"`` (every non-padding prompt position).

**Layer indexing**: ``layers`` / ``from_layer`` (and ``AttentionCapture.layers``) are LLM layers on the
unified axis of ``frankeneval.weights.layermap``: 1 ... n, where unified layer ``L`` is the decoder module
``model.model.language_model.layers[L - 1]``. The conversion happens in one place, :func:`plan_rows` (through
``layermap.decoder_index``); ``0`` (the projector on the unified axis, decoder layer 0 in old specs) is refused
with a message saying how to write it now.

**One plan per row**: :func:`plan_rows` checks a batch's interventions against the model and the prompts and resolves
each row's into one :class:`RowPlan` (decoder-layer indices). Every path that applies interventions consumes these
plans and nothing else: the hooked forward (:func:`apply_interventions`), the shared-prefix prefill of swap rows
(``engine.branch``, through :class:`SwapWriter`) and the static decoder (``engine.decode``, through
:func:`keep_mask`). Each intervention class fills the plan itself (:meth:`Intervention.plan`) and says whether it
acts at decode steps (``acts_at_decode``; :func:`needs_hooked_decode`: then decoding runs the model's own forward
with the session active). A new intervention is a subclass here, with a :class:`RowPlan` field for what it does and
the session code that reads that field.

Mechanics (no patched model code): ``Ablate`` uses forward hooks on ``self_attn`` and ``mlp``; swap and
capture use an attention function registered in transformers' ``AttentionInterface`` (plus the matching mask
function in ``AttentionMaskInterface``) that wraps the model's own implementation (``sdpa``, ``eager`` or
flash) and is switched on for the language model only while ``apply_interventions`` is active. The context
manager always removes hooks and restores the attention implementation.

**Seed-compatible swap** (``SwapVisualKV(..., seed_compatible=True)``): the reference's swap also fires at every
decode step. Its attention forward replaces positions ``[start, start + n_visual)`` of the step's new K/V, which at
decode holds one token, so the step's own K/V is kept first and a copy of the source's ``n_visual`` visual K/V is
appended after it, at every swapped layer (the cache grows by ``1 + n_visual`` per generated token). It runs only
under FlashAttention-2, whose one-query path (batch 1, no mask) lets the new query attend to *every* cached key,
all copies included (RoPE is already in the stored keys and the token's own position does not move). Emulated
here with sdpa / eager maths, without growing the cache: at decode step ``s`` (the ``s``-th fed-back token) the
query attends to the cache plus one extra copy of the source visual K/V whose scores get ``+ log(s)``; ``s``
identical copies contribute ``s * exp(score)``, so this is the same softmax (order of keys does not matter on the
unmasked one-query path). Prefill, hence the first generated token, is the default swap's.

Wrapper spec strings (``parse_intervention_spec``), ``;`` between interventions:
``ablate:12`` | ``ablate:3-5`` | ``ablate:3+7+9`` | ``ablate:late`` | ``swapkv:<from_layer>:<image path>`` |
``none``. Layers follow the layer grammar (``layermap.LAYER_GRAMMAR``) with ``+`` as the list separator (the
harnesses split model args on commas): ``ablate:12`` is LLM layer 12 = decoder layer 11.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from frankeneval.errors import InterventionError, SpecError
from frankeneval.weights.layermap import decoder_index, select_layers

PREFIX = "frankeneval_"
QUERY_MODES = ("generated", "last", "prompt")


# ---------------------------------------------------------------------------------------------- dataclasses
class Intervention:
    """Base of every intervention. A subclass is a frozen dataclass that says, in :meth:`plan`, what it does to one
    row: it fills that row's :class:`RowPlan`, which the hooked forward, the shared-prefix prefill and the static
    decoder all read. ``acts_at_decode``: whether it acts inside attention at decode steps (then decoding runs the
    model's own forward with :func:`apply_interventions` active, not the static decoder)."""

    acts_at_decode: ClassVar[bool] = False

    def plan(self, plan: RowPlan, row: int, n_layers: int, n_visual: int) -> None:
        """Add this intervention to ``plan`` (row ``row`` of a batch whose model has ``n_layers`` LLM layers and whose
        prompt has ``n_visual`` visual tokens); raise :class:`InterventionError` for what cannot run."""
        raise NotImplementedError


def _layers_tuple(layers: Any) -> tuple[int, ...]:
    """Unified LLM layers (1 ... n), sorted and unique; 0 and negatives are refused with a one-line fix."""
    if isinstance(layers, int):
        layers = (layers,)
    out = tuple(sorted({int(L) for L in layers}))
    for L in out:
        decoder_index(L)  # raises LayerSpecError (a SpecError) for L < 1
    return out


@dataclass(frozen=True)
class Ablate(Intervention):
    """Zero the attention and MLP outputs of unified LLM layers ``layers`` (1 ... n), keeping the residual."""

    layers: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", _layers_tuple(self.layers))

    def plan(self, plan: RowPlan, row: int, n_layers: int, n_visual: int) -> None:
        plan.ablate.update(_decoder_layers_of(self.layers, n_layers, "Ablate"))


@dataclass(frozen=True, eq=False)
class VisualKV:
    """Post-RoPE keys and values of one input's visual tokens at every decoder layer.

    ``keys`` / ``values``: ``(n_layers, n_kv_heads, n_visual, head_dim)``; ``grid_thw``: the images' grids.
    """

    keys: torch.Tensor
    values: torch.Tensor
    grid_thw: tuple[tuple[int, int, int], ...] = ()

    @property
    def n_visual(self) -> int:
        return int(self.keys.shape[2])

    @property
    def n_layers(self) -> int:
        return int(self.keys.shape[0])

    def resized(self, n_visual: int) -> VisualKV:
        """These K/V linearly interpolated over token positions to ``n_visual`` tokens, as the reference code does for
        a pair of unequal visual-token counts (``F.interpolate(mode="linear", align_corners=False)`` along the token
        axis, in the tensors' own dtype)."""
        def interp(t: torch.Tensor) -> torch.Tensor:
            layers, heads, n, dim = t.shape
            flat = t.permute(0, 1, 3, 2).reshape(layers * heads, dim, n)
            out = F.interpolate(flat, size=n_visual, mode="linear", align_corners=False)
            return out.reshape(layers, heads, dim, n_visual).permute(0, 1, 3, 2).contiguous()

        return VisualKV(keys=interp(self.keys), values=interp(self.values), grid_thw=self.grid_thw)


@dataclass(frozen=True, eq=False)
class SwapVisualKV(Intervention):
    """Replace the row's visual-token K/V by ``source``'s at every LLM layer ``>= from_layer`` (unified, prefill).

    ``from_layer = 1`` swaps at every layer; a ``from_layer`` past the last layer swaps nothing.

    ``source`` is a ``VisualKV`` (from ``Generator.visual_kv``) or a PIL image, which the Generator encodes
    once with the row's own prompt and system message (and caches). ``seed_compatible``: also re-append the
    source's visual K/V at every decode step, as the reference code does (module docstring).
    """

    source: Any
    from_layer: int
    seed_compatible: bool = False

    def __post_init__(self) -> None:
        decoder_index(self.from_layer)  # unified LLM layer >= 1
        object.__setattr__(self, "from_layer", int(self.from_layer))
        object.__setattr__(self, "seed_compatible", bool(self.seed_compatible))

    @property
    def acts_at_decode(self) -> bool:  # the seed-compatible swap re-appends inside attention at every decode step
        return self.seed_compatible

    def plan(self, plan: RowPlan, row: int, n_layers: int, n_visual: int) -> None:
        if plan.swap is not None:
            raise InterventionError("at most one SwapVisualKV per row")
        src = self.source
        if not isinstance(src, VisualKV):
            raise InterventionError("SwapVisualKV.source must be a VisualKV here (Generator encodes images)")
        if src.n_layers != n_layers:
            raise InterventionError(f"VisualKV has {src.n_layers} layers, the model {n_layers}")
        swap = self
        if src.n_visual != n_visual:
            if not self.seed_compatible:
                raise InterventionError(
                    f"SwapVisualKV needs the same number of visual tokens: source has {src.n_visual}, "
                    f"target row {row} has {n_visual} (resize both images to the same size; the seed-compatible "
                    "swap interpolates, as the reference)"
                )
            swap = replace(self, source=src.resized(n_visual))  # the reference: linear over token positions
        plan.swap = swap
        plan.swap_from = decoder_index(self.from_layer)  # past the last layer: no layer swaps
        plan.reappend = self.seed_compatible


@dataclass(frozen=True)
class CaptureAttention(Intervention):
    """Record the attention mass from ``query`` tokens to the visual tokens, per unified LLM layer and head
    (``layers``: unified LLM layers 1 ... n; ``None`` = every layer)."""

    layers: tuple[int, ...] | None = None
    query: str = "generated"

    def __post_init__(self) -> None:
        if self.layers is not None:
            object.__setattr__(self, "layers", _layers_tuple(self.layers))
        if self.query not in QUERY_MODES:
            raise SpecError(f"CaptureAttention.query must be one of {QUERY_MODES}, got {self.query!r}")

    acts_at_decode: ClassVar[bool] = False  # the static decoder captures at its decode steps too (engine/decode.py)

    def plan(self, plan: RowPlan, row: int, n_layers: int, n_visual: int) -> None:
        if plan.capture is not None:
            raise InterventionError("at most one CaptureAttention per row")
        if self.layers is not None:
            plan.capture_layers = _decoder_layers_of(self.layers, n_layers, "CaptureAttention")
        if n_visual == 0:
            raise InterventionError(f"CaptureAttention on row {row}, which has no visual tokens")
        plan.capture = self


@dataclass
class AttentionCapture:
    """Result of a ``CaptureAttention``: ``mass[l, h, q]`` for unified LLM layer ``layers[l]``, head ``h``,
    query token ``q``."""

    layers: tuple[int, ...]
    query: str
    mass: torch.Tensor

    def mean_mass(self) -> torch.Tensor:
        """``(n_layers, n_heads)``: mass averaged over the query tokens."""
        return self.mass.float().mean(dim=-1)


@dataclass(frozen=True, eq=False)
class RecordVisualKV(Intervention):
    """Keep this row's visual-token K/V at every layer, for ``session.visual_kv(row)`` (``Generator.visual_kv``
    builds a :class:`VisualKV` with it)."""

    acts_at_decode: ClassVar[bool] = True

    def plan(self, plan: RowPlan, row: int, n_layers: int, n_visual: int) -> None:
        plan.record = True


def normalize_rows(interventions: Any, n_rows: int) -> list[list[Intervention]]:
    """One list of interventions per row. ``None`` -> nothing; a single intervention -> the same for every row;
    else a sequence with one entry per row, each ``None``, an intervention, or a sequence of interventions."""
    if interventions is None:
        return [[] for _ in range(n_rows)]
    if isinstance(interventions, Intervention):
        return [[interventions] for _ in range(n_rows)]
    rows = list(interventions)
    if len(rows) != n_rows:
        raise SpecError(f"interventions must have one entry per request ({n_rows}), got {len(rows)}")
    out = []
    for row in rows:
        if row is None:
            out.append([])
        elif isinstance(row, Intervention):
            out.append([row])
        else:
            items = list(row)
            bad = [x for x in items if not isinstance(x, Intervention)]
            if bad:
                raise SpecError(f"not an intervention: {bad[0]!r}")
            out.append(items)
    return out


# ---------------------------------------------------------------------------------------------- spec strings
def parse_intervention_spec(spec: str | None, n_layers: int | None = None, *,
                            seed_compatible: bool = False) -> list[Intervention]:
    """Parse the wrapper's ``intervention=`` string into interventions (applied to every row).

    ``ablate:12`` | ``ablate:3-5`` | ``ablate:3+7`` | ``ablate:late`` | ``swapkv:<from_layer>:<image path>`` |
    ``none``; several separated by ``;``. Layers are unified LLM layers 1 ... n in the layer grammar
    (``frankeneval.weights.layermap``), ``+`` between list items: ``ablate:12`` is decoder layer 11. ``n_layers``
    (the model's LLM depth) is needed for the words (``early``, ``late``, ``all`` ...) and range checks; without
    it only numbers are accepted and the range is checked when the interventions run. ``seed_compatible``: swaps
    re-append the source's visual K/V at every decode step (the reference code's behaviour).
    """
    if spec is None or not str(spec).strip() or str(spec).strip().lower() == "none":
        return []
    out: list[Intervention] = []
    for item in str(spec).split(";"):
        item = item.strip()
        if not item:
            continue
        kind, _, rest = item.partition(":")
        kind = kind.strip().lower()
        if kind == "ablate":
            out.append(Ablate(_spec_layers(rest, n_layers, item)))
        elif kind in ("swapkv", "swap_visual_kv"):
            layer, _, path = rest.partition(":")
            if not layer.strip() or not path:
                raise SpecError(f"bad swap spec {item!r}: use swapkv:<from_layer>:<image path> (unified LLM layer 1-n)")
            layers = _spec_layers(layer, n_layers, item)
            if len(layers) != 1:
                raise SpecError(f"bad swap spec {item!r}: swapkv takes one from-layer")
            from PIL import Image

            try:
                image = Image.open(path).convert("RGB")
            except OSError as exc:
                raise SpecError(f"cannot read swap source image {path!r}: {exc}") from exc
            out.append(SwapVisualKV(source=image, from_layer=layers[0], seed_compatible=seed_compatible))
        else:
            raise SpecError(f"unknown intervention {item!r}: expected ablate:<layers> or swapkv:<L>:<image>")
    return out


def _spec_layers(text: str, n_layers: int | None, item: str) -> tuple[int, ...]:
    """Unified LLM layers of one spec item, through the layer map's grammar."""
    if n_layers is not None:
        return tuple(select_layers(text, n_layers).llm)
    # depth unknown (checked when the interventions run): refuse the words that need it, parse numbers
    if any(ch.isalpha() for ch in text):
        raise SpecError(f"{item!r}: layer words (early, late, all ...) need the model's depth; give numbers")
    return tuple(select_layers(text, 1 << 16).llm)


# ---------------------------------------------------------------------------------------------- model access
def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The LLM decoder layers of a Qwen2.5-VL (or plain causal LM) model."""
    for path in ("model.language_model.layers", "language_model.layers", "model.layers"):
        obj: Any = model
        try:
            for attr in path.split("."):
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise InterventionError(f"cannot find the LLM decoder layers of {type(model).__name__}")


def text_config(model: torch.nn.Module):
    cfg = model.config
    return getattr(cfg, "text_config", None) or cfg


# ---------------------------------------------------------------------------------------------- attention fn
_ACTIVE: contextvars.ContextVar[_Session | None] = contextvars.ContextVar("frankeneval_session", default=None)


def _eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Plain eager attention (same maths as transformers' eager path), returning the weights."""
    n_rep = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(n_rep, dim=1)
    value = value.repeat_interleave(n_rep, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def _base_attention(base: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if base == "eager":
        return _eager_attention
    return ALL_ATTENTION_FUNCTIONS[base]


def _make_attention(base: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        session = _ACTIVE.get()
        if session is not None:
            layer = session.layer_of.get(id(module))
            if layer is not None:
                session.before_attention(layer, query, key, value, attention_mask, kwargs.get("scaling"))
                copies = session.decode_copies(layer, query, key)
                if copies is not None:  # seed-compatible swap rows at a decode step
                    return _attend_with_copies(query, key, value, attention_mask, copies, kwargs.get("scaling"))
        return _base_attention(base)(module, query, key, value, attention_mask, **kwargs)

    attention.__name__ = f"{PREFIX}{base}"
    return attention


def ensure_registered(base: str) -> str:
    """Register ``frankeneval_<base>`` (attention + mask function) and return its name."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    if base.startswith(PREFIX):
        return base
    name = f"{PREFIX}{base}"
    if name not in ALL_ATTENTION_FUNCTIONS:
        if base != "eager" and base not in ALL_ATTENTION_FUNCTIONS:
            raise InterventionError(f"attention implementation {base!r} is not registered in transformers")
        AttentionInterface.register(name, _make_attention(base))
        mask_fn = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(base)
        if mask_fn is not None:
            ALL_MASK_ATTENTION_FUNCTIONS.register(name, mask_fn)
    return name


def _visual_mass(query, key, visual, mask, scaling) -> torch.Tensor:
    """Attention mass ``(rows, heads, q)`` from ``query`` to the keys flagged in ``visual`` ``(rows, k)``.

    One attention call with the visual-key indicator as the values: the output is sum_k p_qk [k visual]. A few query
    tokens (decode steps: one) take the explicit softmax over grouped heads instead, which reads the cached keys once
    (no float copy of the whole cache repeated for every query head).
    """
    n_rep = query.shape[1] // key.shape[1]
    if query.shape[2] <= 16:
        return _visual_mass_few(query, key, visual, mask, scaling, n_rep)
    q = query.float()
    k = key.float().repeat_interleave(n_rep, dim=1)
    ind = visual.to(q.dtype)[:, None, :, None].expand(-1, q.shape[1], -1, 1)
    out = F.scaled_dot_product_attention(q, k, ind, attn_mask=mask, scale=scaling)
    return out[..., 0]


def _visual_mass_few(query, key, visual, mask, scaling, n_rep) -> torch.Tensor:
    """:func:`_visual_mass` for few query tokens: scores of each key-value head's ``n_rep`` query heads in one matmul
    against its keys (query head ``i`` reads key-value head ``i // n_rep``, as ``repeat_interleave``), masked softmax,
    mass on the visual keys."""
    b, h, q_len, d = query.shape
    kv = key.shape[1]
    scale = scaling if scaling is not None else 1.0 / math.sqrt(d)
    q = query.float().reshape(b, kv, n_rep * q_len, d)
    scores = torch.matmul(q, key.float().transpose(-1, -2)).mul_(scale).view(b, h, q_len, key.shape[2])
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    probs = torch.softmax(scores, dim=-1)
    return (probs * visual[:, None, None, :].to(probs.dtype)).sum(dim=-1)


def build_captures(plan: RowPlan, per_layer: dict[int, list[torch.Tensor]], n_layers: int,
                   padding: torch.Tensor | None, n_generated: int | None) -> list[AttentionCapture]:
    """A row's :class:`AttentionCapture` list from its recorded mass chunks (decoder layer -> ``(heads, queries)``
    tensors in query order): the hooked forward's and the static decoder's alike. ``padding``: the row's real prompt
    tokens (``prompt`` mode drops the padding's queries); ``n_generated``: the queries that produced a token."""
    if plan.capture is None:
        return []
    capture = plan.capture
    layers = capture.layers if capture.layers is not None else tuple(range(1, n_layers + 1))
    stacks = []
    for j in (decoder_index(L) for L in layers):
        chunks = per_layer.get(j, [])
        mass = torch.cat(chunks, dim=-1).float() if chunks else torch.zeros(0)
        if capture.query == "prompt" and padding is not None and mass.numel():
            mass = mass[:, padding.to(mass.device)]
        if capture.query == "generated" and n_generated is not None:
            mass = mass[:, :n_generated]
        stacks.append(mass)
    if not stacks:
        return [AttentionCapture(layers=tuple(layers), query=capture.query, mass=torch.zeros(0))]
    if len({m.device for m in stacks}) > 1 or any(m.numel() == 0 for m in stacks):
        stacks = [m.cpu() for m in stacks]
    return [AttentionCapture(layers=tuple(layers), query=capture.query, mass=torch.stack(stacks).cpu())]


def _select_mask(mask, rows, q_index, q_len, k_len, device) -> torch.Tensor:
    """The attention mask for ``rows`` and absolute query indices ``q_index`` (within this forward)."""
    if mask is None or mask.dim() != 4:
        offset = k_len - q_len
        allowed = torch.arange(k_len, device=device)[None, :] <= (q_index + offset)[:, None]
        m = allowed[None, None].expand(len(rows), 1, -1, -1)
        if mask is not None and mask.dim() == 2:  # flash-style 2D padding mask
            m = m & mask[rows].bool()[:, None, None, : k_len]
        return m
    m = mask[:, :, :, :k_len]
    m = m.expand(max(m.shape[0], int(rows.max()) + 1), -1, -1, -1)[rows][:, :, q_index]
    return m if m.dtype == torch.bool else m.to(torch.float32)


def _attend_with_copies(query, key, value, mask, copies, scaling):
    """Attention of the cache plus the re-appended visual K/V (``copies = (keys, values, bias)``), in float32.

    ``bias`` ``(rows, m)``: ``log(number of copies)`` on a row's appended slots, ``-inf`` on slots it does not have.
    """
    extra_k, extra_v, bias = copies
    rows, q_len, k_len = query.shape[0], query.shape[2], key.shape[2]
    m = _select_mask(mask, torch.arange(rows, device=query.device), torch.arange(q_len, device=query.device),
                     q_len, k_len, query.device)
    base = torch.zeros(m.shape, dtype=torch.float32, device=query.device).masked_fill(~m, float("-inf")) \
        if m.dtype == torch.bool else m.float()
    full = torch.cat([base.expand(rows, 1, q_len, k_len), bias[:, None, None, :].expand(-1, 1, q_len, -1)], dim=-1)
    n_rep = query.shape[1] // key.shape[1]
    k = torch.cat([key, extra_k.to(key.dtype)], dim=2).float().repeat_interleave(n_rep, dim=1)
    v = torch.cat([value, extra_v.to(value.dtype)], dim=2).float().repeat_interleave(n_rep, dim=1)
    out = F.scaled_dot_product_attention(query.float(), k, v, attn_mask=full, scale=scaling)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


@dataclass
class RowPlan:
    """One row's interventions, checked and resolved to decoder-layer module indices (0-based) by :func:`plan_rows`.

    ``ablate``: decoder layers whose attention and MLP outputs are zeroed; ``swap``: the row's visual-KV swap (its
    source a :class:`VisualKV`), written at every decoder layer ``>= swap_from``; ``reappend``: the seed-compatible
    swap's decode-step re-append; ``capture`` / ``capture_layers`` (None: every layer): the attention capture;
    ``record``: keep the row's visual K/V (:class:`RecordVisualKV`).
    """

    ablate: set[int] = field(default_factory=set)
    swap: SwapVisualKV | None = None
    swap_from: int = 0
    reappend: bool = False  # seed-compatible swap: re-append the source's visual K/V at every decode step
    capture: CaptureAttention | None = None
    capture_layers: set[int] | None = None  # None: every layer
    record: bool = False


def plan_rows(rows: Sequence[Sequence[Intervention]], n_layers: int, visual: torch.Tensor) -> list[RowPlan]:
    """One :class:`RowPlan` per row of a batch (``rows``: one list of interventions per row, see
    :func:`normalize_rows`), for a model of ``n_layers`` LLM layers whose prompts have their visual tokens at
    ``visual`` ``(rows, prompt_len)`` (bool). Raises :class:`InterventionError` for what cannot run: a layer out of
    range, two swaps or captures in a row, a swap source with another number of visual tokens or layers, ..."""
    return [_plan_row(list(items), row, n_layers, int(visual[row].sum())) for row, items in enumerate(rows)]


def keep_mask(plans: Sequence[RowPlan], n_layers: int) -> torch.Tensor:
    """``(n_layers, rows)`` float: 0 where the row ablates the decoder layer (its attention and MLP outputs are
    multiplied by it), else 1 -- what the hooked forward and the static decoder both apply."""
    return torch.tensor([[0.0 if j in p.ablate else 1.0 for p in plans]
                         for j in range(n_layers)]).reshape(n_layers, len(plans))


def needs_hooked_decode(rows: Sequence[Sequence[Intervention]]) -> bool:
    """Whether some intervention acts inside attention at decode steps in a way only the model's own forward with
    :func:`apply_interventions` active can do (:class:`RecordVisualKV`, a seed-compatible :class:`SwapVisualKV`).
    Ablation (a keep mask), the default swap (written into the prefill's KV cache) and :class:`CaptureAttention`
    (the static decoder computes the visual mass at its own steps) need only the prefill's cache and the plans."""
    return any(it.acts_at_decode for row in rows for it in row)


def _decoder_layers_of(layers: tuple[int, ...], n_layers: int, what: str) -> set[int]:
    """Unified LLM layers -> decoder-layer module indices, checked against the model's depth."""
    bad = [L for L in layers if not 1 <= L <= n_layers]
    if bad:
        raise InterventionError(
            f"{what} layer {bad[0]} out of range: LLM layers are 1-{n_layers} on the unified axis"
        )
    return {decoder_index(L, n_layers) for L in layers}


def _plan_row(items: list[Intervention], row: int, n_layers: int, n_vis: int) -> RowPlan:
    plan = RowPlan()
    for it in items:
        it.plan(plan, row, n_layers, n_vis)
    if plan.reappend and plan.capture is not None:
        raise InterventionError(f"row {row}: CaptureAttention cannot be combined with a seed-compatible SwapVisualKV")
    return plan


class SwapWriter:
    """Writes the swap sources' visual K/V over the visual positions of a batch's rows (:meth:`write`, once per layer),
    from the rows' plans: what a full prefill does inside attention and the shared-prefix prefill (``engine.branch``)
    does on the past K/V it builds."""

    def __init__(self, plans: Sequence[RowPlan], visual: torch.Tensor):
        self.plans = list(plans)
        self.visual = visual  # (rows, prompt_len) bool: visual-token positions
        self.rows = [i for i, p in enumerate(self.plans) if p.swap is not None]
        self._index: tuple | None = None  # (rows by first swapped layer, row / position index, prefix counts)

    def write(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Overwrite, in place, ``key`` / ``value`` ``(rows, kv_heads, prompt_len, head_dim)`` at decoder layer
        ``layer`` for every row swapping there: one indexed copy for all rows (rows ordered by their first swapped
        layer, so the rows swapping at a layer are a prefix)."""
        if not self.rows:
            return
        if self._index is None:
            order = sorted(self.rows, key=lambda r: self.plans[r].swap_from)
            visual = self.visual.cpu()
            pos = [visual[r].nonzero().squeeze(-1) for r in order]
            rows_idx = torch.cat([torch.full((len(p),), r, dtype=torch.long) for r, p in zip(order, pos)])
            counts = [0]
            for p in pos:
                counts.append(counts[-1] + len(p))
            self._index = (order, rows_idx.to(key.device), torch.cat(pos).to(key.device), counts)
        order, rows_idx, pos_idx, counts = self._index
        n = sum(1 for r in order if self.plans[r].swap_from <= layer)
        if n == 0:
            return
        m = counts[n]
        sources = [self.plans[r].swap.source for r in order[:n]]
        key[rows_idx[:m], :, pos_idx[:m]] = (torch.cat([s.keys[layer] for s in sources], dim=1)
                                             .transpose(0, 1).to(key.device, key.dtype))
        value[rows_idx[:m], :, pos_idx[:m]] = (torch.cat([s.values[layer] for s in sources], dim=1)
                                               .transpose(0, 1).to(value.device, value.dtype))


class _Session:
    """Per-batch state of one ``apply_interventions`` block: the rows' plans, and what the attention function
    records."""

    def __init__(self, rows: list[list[Intervention]], n_layers: int, visual: torch.Tensor,
                 padding: torch.Tensor | None):
        self.n_layers = n_layers
        self.visual = visual  # (rows, prompt_len) bool: visual-token positions
        self.padding = padding  # (rows, prompt_len) bool: real tokens, or None
        self.layer_of: dict[int, int] = {}
        self.plans = plan_rows(rows, n_layers, visual)
        self.recorded: dict[int, tuple[list, list]] = {}
        self.captured: dict[int, dict[int, list[torch.Tensor]]] = {}
        self.swapper = SwapWriter(self.plans, visual)
        self.swap_rows = self.swapper.rows
        self.capture_rows = [i for i, s in enumerate(self.plans) if s.capture is not None]
        self.record_rows = [i for i, s in enumerate(self.plans) if s.record]
        self.reappend_rows = [i for i in self.swap_rows if self.plans[i].reappend]
        self._copies: dict[int, tuple] = {}  # decoder layer -> (keys, values, valid) of the re-appended copies

    @property
    def needs_attention_fn(self) -> bool:
        return bool(self.swap_rows or self.capture_rows or self.record_rows)

    def before_attention(self, layer: int, query, key, value, mask, scaling) -> None:
        q_len, k_len = query.shape[2], key.shape[2]
        prefill = q_len == k_len
        n_prompt = self.visual.shape[1]
        if prefill and k_len == n_prompt:
            for r in self.record_rows:
                pos = self.visual[r]
                keys, vals = self.recorded.setdefault(r, ([None] * self.n_layers, [None] * self.n_layers))
                keys[layer] = key[r][:, pos].detach().clone()
                vals[layer] = value[r][:, pos].detach().clone()
            if self.swap_rows:
                # in place: these are the tensors the KV cache returned (its storage), so decode reads them
                self.swapper.write(layer, key, value)
        if self.capture_rows:
            self._capture(layer, query, key, mask, scaling, prefill)

    def decode_copies(self, layer: int, query, key):
        """``(keys, values, bias)`` of the seed-compatible re-appended visual K/V at a decode step, or None.

        At decode step ``s`` (cache = prompt + ``s`` tokens) a reappending row has ``s`` copies of its source's visual
        K/V at this layer (one per fed-back token): one copy whose scores get ``+ log(s)``.
        """
        if not self.reappend_rows or query.shape[2] != 1 or key.shape[2] <= self.visual.shape[1]:
            return None
        if layer not in self._copies:
            rows = [r for r in self.reappend_rows if layer >= self.plans[r].swap_from]
            if not rows:
                self._copies[layer] = None
            else:
                n = max(self.plans[r].swap.source.n_visual for r in rows)
                b, h, d = key.shape[0], key.shape[1], key.shape[3]
                ks = key.new_zeros(b, h, n, d)
                vs = key.new_zeros(b, h, n, d)
                valid = torch.zeros(b, n, dtype=torch.bool, device=key.device)
                for r in rows:
                    src = self.plans[r].swap.source
                    ks[r, :, : src.n_visual] = src.keys[layer].to(key.device, key.dtype)
                    vs[r, :, : src.n_visual] = src.values[layer].to(key.device, key.dtype)
                    valid[r, : src.n_visual] = True
                self._copies[layer] = (ks, vs, valid)
        if self._copies[layer] is None:
            return None
        ks, vs, valid = self._copies[layer]
        steps = key.shape[2] - self.visual.shape[1]
        bias = torch.full(valid.shape, float("-inf"), device=key.device).masked_fill(valid, math.log(steps))
        return ks, vs, bias

    def _capture(self, layer, query, key, mask, scaling, prefill) -> None:
        rows = [
            r for r in self.capture_rows
            if self.plans[r].capture_layers is None or layer in self.plans[r].capture_layers
        ]
        if not rows:
            return
        q_len, k_len = query.shape[2], key.shape[2]
        n_prompt = self.visual.shape[1]
        by_mode: dict[tuple[str, ...], list[int]] = {}
        for r in rows:
            mode = self.plans[r].capture.query
            if mode == "generated":
                idx = (q_len - 1,) if prefill else ((0,) if q_len == 1 else ())
            elif mode == "last":
                idx = (q_len - 1,) if prefill else ()
            else:  # prompt
                idx = tuple(range(q_len)) if prefill else ()
            if idx:
                by_mode.setdefault(idx, []).append(r)
        for idx, rs in by_mode.items():
            rows_t = torch.tensor(rs, device=query.device)
            q_index = torch.tensor(idx, device=query.device)
            visual = torch.zeros(len(rs), k_len, dtype=torch.bool, device=query.device)
            visual[:, :n_prompt] = self.visual[rs].to(query.device)
            m = _select_mask(mask, rows_t, q_index, q_len, k_len, query.device)
            mass = _visual_mass(query[rows_t][:, :, q_index], key[rows_t], visual, m, scaling)
            for i, r in enumerate(rs):
                # kept on the device: one copy to the host per row in captures(), not one sync per layer and step
                self.captured.setdefault(r, {}).setdefault(layer, []).append(mass[i].detach())

    def captures(self, row: int, n_generated: int | None = None) -> list[AttentionCapture]:
        padding = self.padding[row] if self.padding is not None else None
        return build_captures(self.plans[row], self.captured.get(row, {}), self.n_layers, padding, n_generated)

    def visual_kv(self, row: int, grid_thw=()) -> VisualKV:
        keys, vals = self.recorded[row]
        if any(k is None for k in keys):
            raise InterventionError("visual K/V were not recorded at every layer (was the prefill run?)")
        return VisualKV(keys=torch.stack(keys), values=torch.stack(vals), grid_thw=tuple(grid_thw))


# ---------------------------------------------------------------------------------------------- hooks
def _zero_rows_hook(keep: torch.Tensor):
    def hook(module, args, output):
        if isinstance(output, tuple):
            out = output[0]
            return (out * keep.to(out.device, out.dtype)[:, None, None],) + tuple(output[1:])
        return output * keep.to(output.device, output.dtype)[:, None, None]

    return hook


@contextmanager
def apply_interventions(
    model: torch.nn.Module,
    interventions: Any,
    *,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    image_token_id: int | None = None,
) -> Iterator[_Session]:
    """Apply one list of interventions per row of ``input_ids`` (the prompt batch) while the block runs.

    Yields the session; after the block, ``session.captures(row)`` and ``session.visual_kv(row)`` give the
    recorded data. Hooks are removed and the attention implementation restored even on error.
    """
    layers = decoder_layers(model)
    rows = normalize_rows(interventions, input_ids.shape[0])
    tok = image_token_id if image_token_id is not None else getattr(model.config, "image_token_id", None)
    visual = (input_ids == tok) if tok is not None else torch.zeros_like(input_ids, dtype=torch.bool)
    video_tok = getattr(model.config, "video_token_id", None)
    if video_tok is not None:
        visual = visual | (input_ids == video_tok)
    padding = attention_mask.bool() if attention_mask is not None else None
    session = _Session(rows, len(layers), visual, padding)
    for j, layer in enumerate(layers):
        session.layer_of[id(layer.self_attn)] = j

    handles = []
    cfg = text_config(model)
    previous_impl = cfg._attn_implementation
    token = None
    try:
        for j, (layer, keep) in enumerate(zip(layers, keep_mask(session.plans, len(layers)))):
            if (keep == 0).any():
                handles.append(layer.self_attn.register_forward_hook(_zero_rows_hook(keep)))
                handles.append(layer.mlp.register_forward_hook(_zero_rows_hook(keep)))
        if session.needs_attention_fn:
            impl = ensure_registered(previous_impl or "eager")
            if impl != previous_impl:
                model.set_attn_implementation({"text_config": impl} if hasattr(model.config, "text_config") else impl)
            token = _ACTIVE.set(session)
        yield session
    finally:
        for h in handles:
            h.remove()
        if token is not None:
            _ACTIVE.reset(token)
        if cfg._attn_implementation != previous_impl:
            model.set_attn_implementation({"text_config": previous_impl} if hasattr(model.config, "text_config")
                                          else previous_impl)
