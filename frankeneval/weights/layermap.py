"""One layer map shared by every analysis.

Every tensor name of a checkpoint is classified, by its family's architecture description
(:mod:`frankeneval.weights.architecture`: ``frankeneval/weights/architectures/<family>.json``; Qwen2.5-VL by
default), into

* ``section``: ``vision`` (vision encoder blocks), ``projector`` (the patch merger), ``llm`` (decoder
  layers), ``embeddings`` (token embeddings and the vision patch embedding), ``final_norm`` or ``lm_head``;
* ``layer``: the **unified layer index** -- vision block ``i`` -> ``i - n_vision_blocks`` (negative),
  projector -> ``0``, LLM layer ``j`` -> ``j + 1``; ``None`` for tensors off the axis;
* ``component``: ``attention``, ``mlp``, ``norm`` or ``other``;
* ``submodule``: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``qkv``, ``proj``, ``gate_proj``, ...

The names, sections and components come from the description, never from this module. Each description gives
the canonical name layout (the hub checkpoints' names; for Qwen2.5-VL ``model.layers.N...``, ``visual.blocks.N...``,
``visual.merger...``, ``lm_head.weight``) and the other layouts it accepts (the names current transformers uses
in memory: ``model.language_model.layers.N...``, ``model.visual.blocks.N...``); both map to the same roles.
:func:`canonical_name` converts either to the canonical scheme; every comparison between checkpoints is done
on canonical names.

Layer grammar: every way of naming layers (``--layers`` flags, the wrapper's ``intervention=``, freeze and merge
specs, plots) is parsed here, by :func:`select_layers` / :func:`parse_layers` (:data:`LAYER_GRAMMAR`), and the one
conversion unified LLM layer ``L`` <-> decoder module ``L - 1`` is :func:`decoder_index` / :func:`unified_llm_layer`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from frankeneval.errors import FrankenevalError, SpecError
from frankeneval.weights.architecture import SECTIONS as SECTIONS  # re-exported: the sections of every family
from frankeneval.weights.architecture import Architecture, default_architecture

Section = Literal["vision", "projector", "llm", "embeddings", "final_norm", "lm_head"]
Component = Literal["attention", "mlp", "norm", "other"]
Region = Literal["early", "middle", "late"]


class UnclassifiedTensor(FrankenevalError):
    """A tensor name that the family's layer map does not recognise."""


def canonical_name(name: str, architecture: Architecture | None = None) -> str:
    """Return ``name`` in the canonical (hub checkpoint) naming scheme of its family (idempotent)."""
    return (architecture or default_architecture()).canonical_name(name)


def transformers_name(name: str, architecture: Architecture | None = None) -> str:
    """Return ``name`` in the scheme current transformers uses for module paths / ``state_dict``."""
    return (architecture or default_architecture()).layout_name(name, "transformers")


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
        """The decoder-layer module index ``j`` (0-based; unified layer ``j + 1``), for LLM tensors."""
        return self.block if self.section == "llm" else None

    def is_analysed_matrix(self, shape: Sequence[int]) -> bool:
        """True for the tensors the update characterization measures.

        Weights with >= 2 dimensions that are not norms (no biases, no norm weights); conv weights are
        flattened to (out, rest) by the metrics.
        """
        return self.param == "weight" and len(shape) >= 2 and self.component != "norm"


def llm_region(decoder_layer: int, n_llm_layers: int) -> Region:
    """Characterization thirds of decoder layer j (unified j + 1): with t = n // 3, early j < t, middle
    t <= j < 2t, late j >= 2t (for 28 layers: unified 1-9 | 10-18 | 19-28)."""
    t = n_llm_layers // 3
    if decoder_layer < t:
        return "early"
    if decoder_layer < 2 * t:
        return "middle"
    return "late"


def default_block_cuts(n_llm_layers: int) -> tuple[int, int]:
    """Block-splicing cuts c1 = n // 3 and c2 = 2n // 3: the last unified layers of the early and middle blocks
    (early 1-c1 | middle c1+1-c2 | late c2+1-n: 1-9 | 10-18 | 19-28 for 28 layers)."""
    return n_llm_layers // 3, (2 * n_llm_layers) // 3


# -- the layer grammar ----------------------------------------------------------------------------
LAYER_GRAMMAR = """\
Layers are unified indices: vision blocks -k ... -1, projector 0, LLM layers 1 ... n (decoder layer j is
layer j + 1). A layer spec is a list separated by commas, spaces or '+' of: single layers (12, -3); inclusive
ranges (9-17; vision ranges -32..-1, also -32--1); early, middle, late (the block thirds at the cuts
c1 = n // 3, c2 = 2n // 3: 1-c1 | c1+1-c2 | c2+1-n) and 'early 2/3' (1-c2), 'late 2/3' (c1+1-n) ('early 1/3'
= early, 'late 1/3' = late); all (LLM layers 1-n); vision (every vision block); projector (0)."""

GRAMMAR_HINT = ("layers on the unified axis (LLM 1-n, vision <0, projector 0), e.g. 9-17, late, 3+7: "
                "see README 'Layer grammar'")

_RANGE = re.compile(r"^(-?\d+)(?:(?:\.\.|-)(-?\d+))?$")
_REGION_TOKEN = re.compile(r"^(early|mid|middle|late|all)(?:[-_:]?([123])/3)?$")
_FRACTION = re.compile(r"^([123])/3$")


def _section_words(architecture: Architecture | None) -> dict[str, str]:
    """Grammar word -> section: ``vision``, ``projector`` and the family's ``layer_words`` for them."""
    extra = (architecture or default_architecture()).layer_words
    return {w: sec for sec in ("vision", "projector") for w in (sec, *extra.get(sec, ()))}


def unified_llm_layer(decoder_layer: int) -> int:
    """Decoder layer ``j`` (the module index, 0-based) -> unified LLM layer ``j + 1``."""
    return int(decoder_layer) + 1


REFERENCE_VISION_BLOCKS = 32  # the reference code labels vision block i as -32 + i whatever the tower's depth


def reference_vision_label(block: int) -> int:
    """The reference code's axis label of vision block ``block`` (equal to the unified index for 32 blocks)."""
    return int(block) - REFERENCE_VISION_BLOCKS


def decoder_index(layer: int, n_llm_layers: int | None = None) -> int:
    """Unified LLM layer ``L`` (1 ... n) -> decoder-layer module index ``L - 1``: the one place that converts.

    Raises :class:`LayerSpecError` unless ``L >= 1`` (and ``L <= n_llm_layers`` when given).
    """
    layer = int(layer)
    if layer < 1 or (n_llm_layers is not None and layer > n_llm_layers):
        if layer == 0:
            raise LayerSpecError(_zero_message("0", "1", n_llm_layers))
        upper = "n" if n_llm_layers is None else str(n_llm_layers)
        raise LayerSpecError(f"layer {layer} is not an LLM layer: LLM layers are 1-{upper} on the unified axis")
    return layer - 1


class LayerSpecError(SpecError):
    """A layer spec that does not parse or names layers outside the model."""


def _zero_message(piece: str, fix: str, n: int | None) -> str:
    upper = "n" if n is None else str(n)
    return (f"layer {piece!r}: layer 0 is the projector; LLM layers are 1-{upper} (decoder layer j is j+1): "
            f"write {fix}")


@dataclass(frozen=True)
class LayerSelection:
    """What a layer spec selects: unified LLM layers, unified vision blocks, the projector, the whole encoder."""

    llm: tuple[int, ...] = ()
    vision: tuple[int, ...] = ()
    projector: bool = False
    whole_vision: bool = False  # the word ``vision`` was used

    def unified(self) -> list[int]:
        """Every selected index of the unified axis, ascending."""
        return [*self.vision, *([0] if self.projector else []), *self.llm]

    def decoder_layers(self) -> list[int]:
        """The selected LLM layers as decoder-layer module indices (unified L -> L - 1)."""
        return [decoder_index(L) for L in self.llm]


def _tokens(spec: str | int | Iterable[str | int] | None) -> list[str]:
    items = [spec] if isinstance(spec, (str, int)) else list(spec or [])
    out: list[str] = []
    for item in items:
        out.extend(t for t in re.split(r"[,+\s]+", str(item).strip().lower()) if t)
    return out


def _region(word: str, frac: int | None, n: int, cuts: tuple[int, int], piece: str) -> list[int]:
    """Unified LLM layers of a block region (``frac``: the 1/3, 2/3 forms of the merge specs)."""
    c1, c2 = cuts
    if word == "all":
        if frac not in (None, 3):
            raise LayerSpecError(f"{piece!r}: 'all' takes no fraction")
        return list(range(1, n + 1))
    if word in ("mid", "middle"):
        if frac not in (None, 1):
            raise LayerSpecError(f"{piece!r}: the middle block is one third (use early 2/3 or late 2/3)")
        return list(range(c1 + 1, c2 + 1))
    last = {1: c1, 2: c2, 3: n}[frac or 1]
    first = {1: c2, 2: c1, 3: 0}[frac or 1]
    return list(range(1, last + 1)) if word == "early" else list(range(first + 1, n + 1))


def check_cuts(cuts: Sequence[int] | None, n_llm_layers: int) -> tuple[int, int]:
    """The block cuts ``(c1, c2)`` (default :func:`default_block_cuts`), checked: ``0 < c1 < c2 < n``."""
    if cuts is None:
        return default_block_cuts(n_llm_layers)
    try:
        c1, c2 = (int(c) for c in cuts)
    except (TypeError, ValueError):
        raise LayerSpecError(f"cuts must be two layer indices such as [8, 20], got {cuts!r}") from None
    if not 0 < c1 < c2 < n_llm_layers:
        raise LayerSpecError(f"cuts {[c1, c2]} must satisfy 0 < c1 < c2 < {n_llm_layers} (the number of LLM layers)")
    return c1, c2


def select_layers(
    spec: str | int | Iterable[str | int] | None,
    n_llm_layers: int,
    *,
    n_vision_blocks: int | None = None,
    cuts: Sequence[int] | None = None,
    sections: Iterable[str] = ("llm",),
    default_all: bool = False,
    architecture: Architecture | None = None,
) -> LayerSelection:
    """Parse a layer spec (:data:`LAYER_GRAMMAR`) into a :class:`LayerSelection` on the unified axis.

    ``sections``: what the context may select (``llm``, ``vision``, ``projector``); numeric vision blocks need
    ``n_vision_blocks``; a numeric ``0`` (the projector) is accepted only where the whole axis is meant
    (``projector`` allowed and ``n_vision_blocks`` given), since it used to mean decoder layer 0. Every error is
    one line naming the valid range. An empty spec (or ``None``) selects all LLM layers when ``default_all``.
    ``architecture``: the family whose ``layer_words`` are accepted too (default: the default family).
    """
    n = int(n_llm_layers)
    if n < 1:
        raise LayerSpecError(f"the number of LLM layers must be positive, got {n}")
    allowed = set(sections)
    c = check_cuts(cuts, n)
    toks = _tokens(spec)
    if not toks:
        if default_all:
            return LayerSelection(llm=tuple(range(1, n + 1)))
        raise LayerSpecError(f"no layers given: {GRAMMAR_HINT}")
    whole_axis = n_vision_blocks is not None and "projector" in allowed
    llm: set[int] = set()
    vision: set[int] = set()
    projector = whole_vision = False
    section_words = _section_words(architecture)
    valid = f"LLM layers are 1-{n}"
    if "vision" in allowed and n_vision_blocks:
        valid += f", vision blocks {-n_vision_blocks}..-1"
    if whole_axis:
        valid += ", projector 0"
    words = [w for w, sec in (("vision", "vision"), ("projector", "projector")) if sec in allowed]
    if words and not whole_axis:
        valid += " (also: " + ", ".join(words) + ")"
    i = 0
    while i < len(toks):
        tok = toks[i]
        m = _REGION_TOKEN.match(tok)
        if m:
            frac = int(m.group(2)) if m.group(2) else None
            if frac is None and i + 1 < len(toks) and _FRACTION.match(toks[i + 1]):
                frac = int(toks[i + 1][0])
                tok = f"{tok} {toks[i + 1]}"
                i += 1
            llm.update(_region(m.group(1), frac, n, c, tok))
        elif tok in section_words:
            sec = section_words[tok]
            if sec not in allowed:
                raise LayerSpecError(f"{tok!r}: only LLM layers can be chosen here ({valid})")
            if sec == "vision":
                whole_vision = True
                vision.update(range(-(n_vision_blocks or 0), 0))
            else:
                projector = True
        elif _RANGE.match(tok):
            m = _RANGE.match(tok)
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if lo > hi:
                raise LayerSpecError(f"layer range {tok!r}: start after end")
            if lo == 0 and (hi > 0 or not whole_axis):
                fix = "1" if hi == 0 else f"1-{min(hi + 1, n)}"
                if whole_axis and hi > 0:  # here 0 is the projector: the range may have meant it
                    fix += f" (or 0,1-{hi}: the projector and LLM layers 1-{hi})"
                elif "projector" in allowed and hi == 0:
                    fix += " (the projector: write projector)"
                raise LayerSpecError(_zero_message(tok, fix, n))
            if hi > n:
                raise LayerSpecError(f"layer {tok!r} out of range: {valid}")
            if lo < 0:
                if "vision" not in allowed:
                    raise LayerSpecError(f"layer {tok!r} is a vision block: only LLM layers can be chosen here "
                                         f"({valid})")
                if n_vision_blocks is None:
                    raise LayerSpecError(f"layer {tok!r}: single vision blocks cannot be chosen here, write vision")
                if lo < -n_vision_blocks:
                    raise LayerSpecError(f"layer {tok!r} out of range: {valid}")
            for L in range(lo, hi + 1):
                if L < 0:
                    vision.add(L)
                elif L == 0:
                    projector = True
                else:
                    llm.add(L)
        else:
            raise LayerSpecError(f"cannot read layer {tok!r}: {GRAMMAR_HINT}")
        i += 1
    return LayerSelection(llm=tuple(sorted(llm)), vision=tuple(sorted(vision)), projector=projector,
                          whole_vision=whole_vision)


def parse_layers(
    spec: str | int | Iterable[str | int] | None,
    n_llm_layers: int,
    *,
    n_vision_blocks: int | None = None,
    cuts: Sequence[int] | None = None,
    sections: Iterable[str] = ("llm",),
    default_all: bool = True,
    architecture: Architecture | None = None,
) -> list[int]:
    """Unified indices (ascending) selected by a layer spec; by default LLM layers only, ``None`` = all of them.

    ``parse_layers("9-17", 28) == [9, ..., 17]``; ``parse_layers("late", 28) == [19, ..., 28]``;
    ``parse_layers("vision,0,1-2", 2, n_vision_blocks=4, sections=("llm", "vision", "projector"))
    == [-4, -3, -2, -1, 0, 1, 2]``. See :func:`select_layers` and :data:`LAYER_GRAMMAR`.
    """
    sel = select_layers(spec, n_llm_layers, n_vision_blocks=n_vision_blocks, cuts=cuts, sections=sections,
                        default_all=default_all, architecture=architecture)
    if sel.whole_vision and n_vision_blocks is None:
        raise LayerSpecError("'vision' needs the model's vision depth here; name the blocks (-k..-1)")
    return sel.unified()


def format_layers(layers: Iterable[int]) -> str:
    """Unified indices as the grammar writes them: ``[1, 2, 3, 7]`` -> ``"1-3,7"``, ``[-4..-1]`` -> ``"-4..-1"``."""
    xs = sorted({int(x) for x in layers})
    out: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1 and xs[j + 1] != 0 and xs[j] != 0:
            j += 1  # runs break around the projector (0), which the grammar writes alone
        a, b = xs[i], xs[j]
        out.append(str(a) if a == b else f"{a}..{b}" if a < 0 else f"{a}-{b}")
        i = j + 1
    return ",".join(out)


@dataclass
class LayerMap:
    """Roles of every tensor of one checkpoint, with the sizes of its stacks, under its family's description."""

    n_vision_blocks: int
    n_llm_layers: int
    roles: dict[str, TensorRole] = field(default_factory=dict)  # keyed by canonical name
    unclassified: list[str] = field(default_factory=list)
    architecture: Architecture = field(default_factory=default_architecture, repr=False)

    @classmethod
    def from_names(
        cls,
        names: Iterable[str],
        *,
        n_vision_blocks: int | None = None,
        n_llm_layers: int | None = None,
        strict: bool = True,
        architecture: Architecture | None = None,
    ) -> LayerMap:
        """Classify ``names`` (any naming scheme of the family) by ``architecture`` (default: the default family).

        The stack sizes are counted from the names unless given (pass the config's values when
        classifying a subset of a checkpoint). With ``strict`` an unrecognised name raises
        :class:`UnclassifiedTensor`, so no tensor is ever silently dropped; otherwise it is listed in
        :attr:`unclassified`.
        """
        arch = architecture or default_architecture()
        names = list(names)
        parsed: dict[str, tuple[str, tuple]] = {}
        unknown: list[str] = []
        vision_max, llm_max = -1, -1
        for name in names:
            canon = arch.canonical_name(name)
            c = arch.classify(canon)
            if c is None:
                unknown.append(name)
                continue
            if canon in parsed:
                raise UnclassifiedTensor(f"tensor {canon!r} appears twice (as {parsed[canon][0]!r} and {name!r})")
            info = (c.section, c.block, c.component, c.submodule, c.param, c.tower)
            parsed[canon] = (name, info)
            section, block = c.section, c.block
            if section == "vision":
                vision_max = max(vision_max, block)
            elif section == "llm":
                llm_max = max(llm_max, block)
        if unknown and strict:
            shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
            raise UnclassifiedTensor(
                f"{len(unknown)} tensor name(s) are not part of the {arch.display_name} layer map: {shown}"
            )
        nv = n_vision_blocks if n_vision_blocks is not None else vision_max + 1
        nl = n_llm_layers if n_llm_layers is not None else llm_max + 1
        lmap = cls(n_vision_blocks=nv, n_llm_layers=nl, unclassified=unknown, architecture=arch)
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
            return unified_llm_layer(block)  # type: ignore[arg-type]
        return None

    def axis(self) -> list[int]:
        """Every index of the unified axis, in order: -n_vision .. -1, 0, 1 .. n_llm."""
        return list(range(-self.n_vision_blocks, self.n_llm_layers + 1))

    def axis_section(self, layer: int) -> Section:
        """Section of a unified index."""
        return "vision" if layer < 0 else "projector" if layer == 0 else "llm"

    def parse_layers(self, spec, *, cuts: Sequence[int] | None = None,
                     sections: Iterable[str] = ("llm", "vision", "projector")) -> list[int]:
        """Unified indices of a layer spec on this checkpoint's axis (:func:`parse_layers`)."""
        return parse_layers(spec, self.n_llm_layers, n_vision_blocks=self.n_vision_blocks, cuts=cuts,
                            sections=sections, architecture=self.architecture)

    def region(self, role: TensorRole) -> Region | None:
        """early / middle / late third for LLM tensors (characterization thirds), else None."""
        if role.section != "llm" or role.block is None:
            return None
        return llm_region(role.block, self.n_llm_layers)

    # -- lookups ----------------------------------------------------------------------------
    def role(self, name: str) -> TensorRole:
        """Role of ``name`` (any naming scheme of the family)."""
        canon = self.architecture.canonical_name(name)
        try:
            return self.roles[canon]
        except KeyError:
            raise UnclassifiedTensor(f"{name!r} is not a tensor of this checkpoint's layer map") from None

    def __contains__(self, name: str) -> bool:
        return self.architecture.canonical_name(name) in self.roles

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
