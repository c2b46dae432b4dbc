"""One layer map shared by every analysis.

Every tensor name of a Qwen2.5-VL checkpoint is classified into

* ``section``: ``vision`` (vision encoder blocks), ``projector`` (the patch merger), ``llm`` (decoder
  layers), ``embeddings`` (token embeddings and the vision patch embedding), ``final_norm`` or ``lm_head``;
* ``layer``: the **unified layer index** -- vision block ``i`` -> ``i - n_vision_blocks`` (negative),
  projector -> ``0``, LLM layer ``j`` -> ``j + 1``; ``None`` for tensors off the axis;
* ``component``: ``attention``, ``mlp``, ``norm`` or ``other``;
* ``submodule``: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``qkv``, ``proj``, ``gate_proj``, ...

Two naming schemes are accepted and map to the same roles: the hub checkpoints' names
(``model.layers.N...``, ``visual.blocks.N...``, ``visual.merger...``, ``lm_head.weight``) and the names that
current transformers uses in memory (``model.language_model.layers.N...``, ``model.visual.blocks.N...``).
:func:`canonical_name` converts either to the hub scheme; every comparison between checkpoints is done
on canonical names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from frankeneval.errors import FrankenevalError

Section = Literal["vision", "projector", "llm", "embeddings", "final_norm", "lm_head"]
Component = Literal["attention", "mlp", "norm", "other"]
Region = Literal["early", "middle", "late"]

SECTIONS: tuple[str, ...] = ("vision", "projector", "llm", "embeddings", "final_norm", "lm_head")

# transformers-in-memory prefix -> hub prefix (order matters: longest first)
_PREFIX_TO_HUB: tuple[tuple[str, str], ...] = (
    ("model.language_model.", "model."),
    ("model.visual.", "visual."),
    ("language_model.model.", "model."),  # older VLM wrappers
    ("language_model.lm_head.", "lm_head."),
)

_VISION_BLOCK = re.compile(r"^visual\.blocks\.(\d+)\.(.+)$")
_LLM_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

_ATTN_SUBMODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv", "proj")
_MLP_SUBMODULES = ("gate_proj", "up_proj", "down_proj", "fc1", "fc2")
_NORM_SUBMODULES = ("norm1", "norm2", "input_layernorm", "post_attention_layernorm", "ln_q", "norm")


class UnclassifiedTensor(FrankenevalError):
    """A tensor name that the Qwen2.5-VL layer map does not recognise."""


def canonical_name(name: str) -> str:
    """Return ``name`` in the hub checkpoint naming scheme (idempotent)."""
    for prefix, hub in _PREFIX_TO_HUB:
        if name.startswith(prefix):
            return hub + name[len(prefix) :]
    return name


def transformers_name(name: str) -> str:
    """Return ``name`` in the scheme current transformers uses for module paths / ``state_dict``."""
    name = canonical_name(name)
    if name.startswith("model."):
        return "model.language_model." + name[len("model.") :]
    if name.startswith("visual."):
        return "model." + name
    return name


@dataclass(frozen=True)
class TensorRole:
    """What one tensor is, in the paper's terms."""

    name: str
    canonical: str
    section: Section
    block: int | None  # native index within its stack: vision block i or LLM layer j
    layer: int | None  # unified index (vision < 0, projector 0, LLM > 0), None when off the axis
    component: Component
    submodule: str
    param: str  # "weight", "bias", ...
    tower: Literal["vision", "language"]

    @property
    def llm_layer(self) -> int | None:
        """The 0-based decoder layer, for LLM tensors."""
        return self.block if self.section == "llm" else None

    def is_analysed_matrix(self, shape: Sequence[int]) -> bool:
        """True for the tensors the update characterization measures.

        Weights with >= 2 dimensions that are not norms (no biases, no norm weights); conv weights are
        flattened to (out, rest) by the metrics.
        """
        return self.param == "weight" and len(shape) >= 2 and self.component != "norm"


def _component_of(path: str) -> tuple[Component, str]:
    """Component and sub-module of a within-block path such as ``self_attn.q_proj.weight``."""
    parts = path.split(".")
    stem = parts[:-1]  # drop weight/bias
    for part in reversed(stem):
        if part in _NORM_SUBMODULES:
            return "norm", part
    for part in reversed(stem):
        if part in _ATTN_SUBMODULES:
            return "attention", part
        if part in _MLP_SUBMODULES:
            return "mlp", part
    if any(p in ("attn", "self_attn", "attention") for p in stem):
        return "attention", stem[-1] if stem else "attn"
    if "mlp" in stem:
        return "mlp", ".".join(stem[stem.index("mlp") :])
    return "other", ".".join(stem) or path


def _classify(canonical: str) -> tuple[Section, int | None, Component, str, str, str] | None:
    """(section, native block, component, submodule, param, tower) or None when unknown."""
    param = canonical.rsplit(".", 1)[-1]
    m = _VISION_BLOCK.match(canonical)
    if m:
        comp, sub = _component_of(m.group(2))
        return "vision", int(m.group(1)), comp, sub, param, "vision"
    m = _LLM_LAYER.match(canonical)
    if m:
        comp, sub = _component_of(m.group(2))
        return "llm", int(m.group(1)), comp, sub, param, "language"
    if canonical.startswith("visual.merger."):
        comp, sub = _component_of(canonical[len("visual.merger.") :])
        return "projector", None, comp, sub, param, "vision"
    if canonical.startswith("visual.patch_embed."):
        return "embeddings", None, "other", "patch_embed", param, "vision"
    if canonical.startswith("model.embed_tokens."):
        return "embeddings", None, "other", "embed_tokens", param, "language"
    if canonical.startswith("model.norm."):
        return "final_norm", None, "norm", "norm", param, "language"
    if canonical.startswith("lm_head."):
        return "lm_head", None, "other", "lm_head", param, "language"
    return None


def llm_region(llm_layer: int, n_llm_layers: int) -> Region:
    """Characterization thirds: with t = n // 3, early j < t, middle t <= j < 2t, late j >= 2t."""
    t = n_llm_layers // 3
    if llm_layer < t:
        return "early"
    if llm_layer < 2 * t:
        return "middle"
    return "late"


def default_block_cuts(n_llm_layers: int) -> tuple[int, int]:
    """Block-splicing cuts: n // 3 and 2n // 3 (0-8 | 9-17 | 18-27 for 28 layers)."""
    return n_llm_layers // 3, (2 * n_llm_layers) // 3


@dataclass
class LayerMap:
    """Roles of every tensor of one checkpoint, with the sizes of its stacks."""

    n_vision_blocks: int
    n_llm_layers: int
    roles: dict[str, TensorRole] = field(default_factory=dict)  # keyed by canonical name
    unclassified: list[str] = field(default_factory=list)

    @classmethod
    def from_names(
        cls,
        names: Iterable[str],
        *,
        n_vision_blocks: int | None = None,
        n_llm_layers: int | None = None,
        strict: bool = True,
    ) -> LayerMap:
        """Classify ``names`` (either naming scheme).

        The stack sizes are counted from the names unless given (pass the config's values when
        classifying a subset of a checkpoint). With ``strict`` an unrecognised name raises
        :class:`UnclassifiedTensor`, so no tensor is ever silently dropped; otherwise it is listed in
        :attr:`unclassified`.
        """
        names = list(names)
        parsed: dict[str, tuple[str, tuple]] = {}
        unknown: list[str] = []
        vision_max, llm_max = -1, -1
        for name in names:
            canon = canonical_name(name)
            info = _classify(canon)
            if info is None:
                unknown.append(name)
                continue
            if canon in parsed:
                raise UnclassifiedTensor(f"tensor {canon!r} appears twice (as {parsed[canon][0]!r} and {name!r})")
            parsed[canon] = (name, info)
            section, block = info[0], info[1]
            if section == "vision":
                vision_max = max(vision_max, block)
            elif section == "llm":
                llm_max = max(llm_max, block)
        if unknown and strict:
            shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
            raise UnclassifiedTensor(
                f"{len(unknown)} tensor name(s) are not part of the Qwen2.5-VL layer map: {shown}"
            )
        nv = n_vision_blocks if n_vision_blocks is not None else vision_max + 1
        nl = n_llm_layers if n_llm_layers is not None else llm_max + 1
        lmap = cls(n_vision_blocks=nv, n_llm_layers=nl, unclassified=unknown)
        for canon, (name, (section, block, comp, sub, param, tower)) in parsed.items():
            lmap.roles[canon] = TensorRole(
                name=name,
                canonical=canon,
                section=section,  # type: ignore[arg-type]
                block=block,
                layer=lmap.unified_index(section, block),
                component=comp,  # type: ignore[arg-type]
                submodule=sub,
                param=param,
                tower=tower,  # type: ignore[arg-type]
            )
        return lmap

    # -- the unified axis -------------------------------------------------------------------
    def unified_index(self, section: str, block: int | None = None) -> int | None:
        """Vision block i -> i - n_vision_blocks; projector -> 0; LLM layer j -> j + 1; else None."""
        if section == "vision":
            return int(block) - self.n_vision_blocks  # type: ignore[arg-type]
        if section == "projector":
            return 0
        if section == "llm":
            return int(block) + 1  # type: ignore[arg-type]
        return None

    def axis(self) -> list[int]:
        """Every index of the unified axis, in order: -n_vision .. -1, 0, 1 .. n_llm."""
        return list(range(-self.n_vision_blocks, self.n_llm_layers + 1))

    def axis_section(self, layer: int) -> Section:
        """Section of a unified index."""
        return "vision" if layer < 0 else "projector" if layer == 0 else "llm"

    def region(self, role: TensorRole) -> Region | None:
        """early / middle / late third for LLM tensors (characterization thirds), else None."""
        if role.section != "llm" or role.block is None:
            return None
        return llm_region(role.block, self.n_llm_layers)

    # -- lookups ----------------------------------------------------------------------------
    def role(self, name: str) -> TensorRole:
        """Role of ``name`` (either naming scheme)."""
        canon = canonical_name(name)
        try:
            return self.roles[canon]
        except KeyError:
            raise UnclassifiedTensor(f"{name!r} is not a tensor of this checkpoint's layer map") from None

    def __contains__(self, name: str) -> bool:
        return canonical_name(name) in self.roles

    def __len__(self) -> int:
        return len(self.roles)

    def __iter__(self):
        return iter(self.roles.values())

    def select(
        self,
        *,
        section: str | Iterable[str] | None = None,
        layers: Iterable[int] | None = None,
        component: str | Iterable[str] | None = None,
    ) -> list[TensorRole]:
        """Roles matching every given filter (``layers`` are unified indices)."""

        def as_set(x):
            return None if x is None else ({x} if isinstance(x, str) else set(x))

        sections, comps = as_set(section), as_set(component)
        layer_set = None if layers is None else set(layers)
        return [
            r
            for r in self.roles.values()
            if (sections is None or r.section in sections)
            and (comps is None or r.component in comps)
            and (layer_set is None or r.layer in layer_set)
        ]

    def summary(self) -> dict[str, dict[str, int]]:
        """Tensor counts per section and component."""
        out: dict[str, dict[str, int]] = {}
        for r in self.roles.values():
            out.setdefault(r.section, {}).setdefault(r.component, 0)
            out[r.section][r.component] += 1
        return out
