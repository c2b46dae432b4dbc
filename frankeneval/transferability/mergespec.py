"""Merge specs: which source model every tensor of a Frankenstein checkpoint comes from.

A :class:`MergeSpec` names its source models (``in``, ``rl``, optionally ``base``: hub ids or local
directories), a *host* (the model that every tensor not otherwise assigned comes from, and whose config,
tokenizer and processor the result carries), the source of every LLM decoder layer **per component**
(``attention``, ``mlp``, ``norm``, ``other``) and the source of each non-layer part (``vision`` encoder incl.
its patch embedding, ``projector``, token ``embeddings``, ``final_norm``, ``lm_head``; default: the host).

Three ways to write one:

* the paper's phrasing, parsed by :meth:`MergeSpec.parse`::

      "SFT early 1/3 layers + RL late 2/3 layers"
      "RL early 1/3 + SFT middle 1/3 + RL late 1/3 layers"
      "IN all layers + RL layers 10-18 attention only"

  Source aliases: ``IN`` / ``SFT`` / ``ColdStart`` / ``cold-start`` -> ``in``; ``RL`` / ``final`` -> ``rl``;
  ``base``. Layers follow the layer grammar of :mod:`frankeneval.weights.layermap`: unified LLM layers 1 ... n
  (decoder layer j is j + 1). Regions use the block cuts ``c1, c2`` (default ``n // 3`` and ``2n // 3``, or
  e.g. ``[8, 20]``), the last layers of the early and middle blocks: ``early 1/3`` = ``1-c1``,
  ``early 2/3`` = ``1-c2``, ``middle 1/3`` = ``c1+1-c2``, ``late 1/3`` = ``c2+1-n``, ``late 2/3`` =
  ``c1+1-n``, ``all`` (for 28 layers: 1-9 | 10-18 | 19-28); explicit ranges ``layers 10-18`` are inclusive
  unified layers (the old 0-based ``layers 0-8`` is refused with the unified spelling). A trailing
  ``attention`` / ``mlp`` / ``norm`` (``-only``) restricts a term to those components.
  Terms apply in order; an unrestricted term may not overlap an earlier one, a component-restricted term
  overrides earlier assignments. Unassigned layers come from the host; the host defaults to the source of
  layer 1 (as in the reference implementation, where the early block's model receives the other blocks).

* YAML (:meth:`MergeSpec.from_yaml`)::

      name: my-variant
      sources: {in: OpenMMReasoner/OpenMMReasoner-ColdStart, rl: OpenMMReasoner/OpenMMReasoner-RL}
      num_hidden_layers: 28          # optional: read from the host's config.json
      cuts: [8, 20]                  # optional: default n // 3, 2n // 3
      host: in                       # optional: default the source of layer 1
      phrase: "IN early 1/3 layers + RL late 2/3 layers"     # either a phrase ...
      blocks:                                                  # ... or blocks, applied in order
        - {region: early, source: in}                          # early|middle|late|all, "late 2/3", ...
        - {layers: "10-28", source: rl}                        # inclusive unified ranges, ints, or lists
        - {layers: "10-18", source: in, components: [mlp]}
      parts: {vision: rl}            # vision, projector, embeddings, final_norm, lm_head

  ``blocks`` may also be a mapping ``{early: in, middle: rl, late: rl}``.

* Python: ``MergeSpec(sources=..., host=..., n_layers=..., layers=[{component: source}, ...], parts=...)``.

**Transforms** (the reference's noise ablation and interpolation variants, ``scripts/transferability_test.py``
``ModelManager.get_model``): after every tensor's source is chosen, ``transforms`` rewrite the LLM layer tensors
they select, in order, and the splice computes those tensors instead of copying them
(:mod:`frankeneval.transferability.splice`). YAML, on the unified axis::

      transforms:
        - {op: noise, layers: "1-2", ratio: 0.5, seed: 0}                  # W <- (1 - r) W + r eps std(W)
        - {op: interpolate, donor: llm, layers: "19-28", alpha: 0.5, components: [mlp]}  # W <- (1 - a) W + a W_donor
        - {op: replace, donor: llm, region: late}                          # interpolate with alpha = 1

  ``components`` (default all): ``attention`` / ``attn``, ``mlp``, ``norm``, ``other``. A donor is a source (it
  need not be assigned any tensor) and may be a text-only LLM (``Qwen2ForCausalLM``: decoder layer j of the donor
  for decoder layer j of the host); it must hold every selected tensor, with the host's shape.

**Variant phrases** (the reference's own phrases, so its run scripts translate one to one; :func:`variant_phrase`):

      "<model> layers A-B ablate noise=r [seed=N]"
      "<model> layers A-B interpolate <donor> alpha=a [component=mlp|attn|all]"
      "<model> early|middle|late 1/3 layers interpolate <donor> alpha=a [component=...]"
      "<model> early|middle|late 1/3 layers replaced by <donor>"

  ``A-B`` here are the reference's **0-based decoder indices**, inclusive (``layers 0-1`` = unified layers 1-2);
  only these phrases read them, and every output (``to_dict``, ``describe``, the splice's provenance) gives unified
  layers. The thirds follow the cuts (``early 1/3`` = ``1-c1`` ...). ``<model>`` and ``<donor>`` are source names,
  aliases (IN, RL, base, ...), local checkpoint folders or hub ids (added as sources ``model`` / ``donor``). The
  model supplies every tensor and is the host; ``noise`` without ``seed=`` uses seed 0.

:meth:`MergeSpec.to_dict` gives the resolved spec in the YAML form above (``from_dict(to_dict())`` round
trips); :meth:`MergeSpec.spec_hash` hashes it (names and descriptions excluded).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from frankeneval.core.yamlio import load_yaml
from frankeneval.errors import SpecError
from frankeneval.weights.layermap import (
    LayerMap,
    LayerSpecError,
    TensorRole,
    check_cuts,
    decoder_index,
    format_layers,
    select_layers,
    unified_llm_layer,
)

COMPONENTS: tuple[str, ...] = ("attention", "mlp", "norm", "other")
PARTS: tuple[str, ...] = ("vision", "projector", "embeddings", "final_norm", "lm_head")

# Source aliases of the paper / reference scripts (case-insensitive).
SOURCE_ALIASES: dict[str, str] = {
    "in": "in",
    "sft": "in",
    "coldstart": "in",
    "cold-start": "in",
    "cold_start": "in",
    "rl": "rl",
    "final": "rl",
    "base": "base",
}

_COMPONENT_ALIASES: dict[str, str] = {
    "attention": "attention",
    "attn": "attention",
    "self_attn": "attention",
    "mlp": "mlp",
    "mlps": "mlp",
    "ffn": "mlp",
    "norm": "norm",
    "norms": "norm",
    "layernorm": "norm",
    "layernorms": "norm",
    "other": "other",
}
_FILLER_WORDS = {"layer", "layers", "only", "block", "blocks", "of", "the", "and", "&", "/"}
_YAML_KEYS = {
    "name",
    "description",
    "sources",
    "models",
    "revisions",
    "host",
    "num_hidden_layers",
    "n_layers",
    "cuts",
    "phrase",
    "blocks",
    "parts",
    "transforms",
}
_LINEAGE_REF = re.compile(r"^lineage:(?P<preset>[\w.\-]+)/(?P<member>base|in|rl)$")


# -- source references ----------------------------------------------------------------------------
# built-in lineages that ``lineage:<preset>/<member>`` refs may name: preset -> a function that writes the lineage
# (once, cached) and returns member -> folder. Registered by whoever owns them (register_lineage): the miniature
# world's tiny lineage is registered by the ``frankeneval`` command and the model wrappers
# (frankeneval.miniature.refs), so this module never imports the miniature world.
_LINEAGES: dict[str, Callable[[], Mapping[str, str | os.PathLike]]] = {}


def register_lineage(preset: str, members: Callable[[], Mapping[str, str | os.PathLike]]) -> None:
    """Let ``lineage:<preset>/<member>`` refs name the members of a built-in lineage: ``members()`` writes it (once,
    cached) and returns member (``base`` / ``in`` / ``rl``) -> folder."""
    _LINEAGES[str(preset)] = members


def resolve_ref(ref: str | os.PathLike) -> str:
    """A source reference as something :meth:`Checkpoint.open` accepts.

    ``lineage:tiny/in`` (used by the built-in ``tiny`` recipe) names a member of the built-in tiny lineage,
    written once into frankeneval's cache (a registered lineage: :func:`register_lineage`); anything else (hub id or
    local directory) is returned unchanged.
    """
    ref = str(ref)
    m = _LINEAGE_REF.match(ref)
    if not m:
        return ref
    members = _LINEAGES.get(m.group("preset"))
    if members is None:
        if m.group("preset") == "tiny":
            raise SpecError(
                f"{ref!r}: the tiny built-in lineage is not registered in this process; call "
                "frankeneval.miniature.refs.register_builtin_lineages() first (the frankeneval command and the "
                "model wrappers do), or pass the members' paths"
            )
        raise SpecError(
            f"{ref!r}: only the tiny built-in lineage can be written on demand; write a "
            f"{m.group('preset')} lineage with frankeneval.miniature.lineage.write_lineage and pass its paths"
        )
    return str(members()[m.group("member")])


def resolve_relative_refs(refs: Mapping[str, Any], base_dir: str | os.PathLike) -> dict[str, Any]:
    """``refs`` (name -> hub id or local path) with relative local paths made absolute against ``base_dir`` (the
    folder of the spec or recipe file that names them). A ref is a relative path when it exists under
    ``base_dir`` or cannot be a hub id (starts with ``.``, or has no or several ``/``); ``org/name`` hub ids,
    ``lineage:`` refs, absolute and ``~`` paths are kept as they are."""
    out: dict[str, Any] = {}
    for name, ref in refs.items():
        if isinstance(ref, str) and ref and not _LINEAGE_REF.match(ref) and not ref.startswith("~") \
                and not os.path.isabs(ref):
            local = Path(base_dir) / ref
            if local.exists() or ref.startswith(".") or ref.count("/") != 1:
                ref = os.path.normpath(os.path.abspath(local))
        out[name] = ref
    return out


def read_num_hidden_layers(ref: str | os.PathLike) -> int:
    """The LLM depth from a source's ``config.json`` (local dir, hub cache or hub; never the weights)."""
    ref = resolve_ref(ref)
    path = Path(ref).expanduser()
    if path.is_dir():
        cfg_path = path / "config.json"
    else:
        try:
            from huggingface_hub import hf_hub_download

            cfg_path = Path(hf_hub_download(ref, "config.json"))
        except Exception as exc:
            raise SpecError(
                f"cannot read config.json of {ref!r} to learn its number of layers ({type(exc).__name__}: {exc}); "
                "give num_hidden_layers explicitly"
            ) from exc
    if not cfg_path.is_file():
        raise SpecError(f"{ref!r} has no config.json; give num_hidden_layers explicitly")
    from frankeneval.weights.checkpoint import read_config  # one reader of config.json: a broken one is one line

    cfg = read_config(cfg_path)
    n = cfg.get("num_hidden_layers", (cfg.get("text_config") or {}).get("num_hidden_layers"))
    if not isinstance(n, int):
        raise SpecError(f"config.json of {ref!r} does not state num_hidden_layers")
    return n


# -- transforms ---------------------------------------------------------------------------------------
TRANSFORM_OPS: tuple[str, ...] = ("noise", "interpolate")


@dataclass(frozen=True)
class Transform:
    """One rewrite of selected LLM layer tensors, applied after their sources are chosen (see the module docstring).

    ``layers``: decoder-layer indices (0-based, as :attr:`MergeSpec.layers`; unified layer ``j + 1``).
    ``noise``: W <- (1 - ratio) * W + ratio * (eps * std(W)), eps ~ N(0, 1) from ``seed``.
    ``interpolate``: W <- (1 - alpha) * W + alpha * W_donor (``alpha`` 1: replaced by the donor).
    """

    op: str
    layers: tuple[int, ...]
    components: tuple[str, ...] = COMPONENTS
    ratio: float | None = None
    seed: int | None = None
    donor: str | None = None
    alpha: float | None = None

    def __post_init__(self) -> None:
        try:
            layers = tuple(sorted({int(j) for j in self.layers}))
        except (TypeError, ValueError):
            msg = f"transform {self.op!r}: layers must be decoder-layer indices, got {self.layers!r}"
            raise SpecError(msg) from None
        object.__setattr__(self, "layers", layers)
        comps = tuple(self.components or ())
        unknown = sorted(set(comps) - set(COMPONENTS))
        if unknown:
            raise SpecError(f"transform {self.op!r}: unknown component(s) {unknown} (use {', '.join(COMPONENTS)})")
        object.__setattr__(self, "components", tuple(c for c in COMPONENTS if c in comps))
        if self.op == "noise":
            object.__setattr__(self, "ratio", _fraction(self.ratio, "noise ratio"))
            object.__setattr__(self, "seed", _seed(0 if self.seed is None else self.seed))
        elif self.op == "interpolate":
            object.__setattr__(self, "alpha", _fraction(self.alpha, "alpha"))

    def check(self, n_layers: int, sources: Mapping[str, str]) -> None:
        """Refuse (one line) a transform that selects nothing, names layers outside the spec or an unknown donor."""
        if self.op not in TRANSFORM_OPS:
            raise SpecError(f"unknown transform {self.op!r} (use {', '.join(TRANSFORM_OPS)}, or replace)")
        if not self.layers:
            raise SpecError(f"transform {self.op!r} selects no layers")
        bad = [j for j in self.layers if not 0 <= j < n_layers]
        if bad:
            raise SpecError(f"transform {self.op!r}: layer {unified_llm_layer(bad[0])} is outside this spec's layers "
                            f"1-{n_layers}")
        if not self.components:
            raise SpecError(f"transform {self.op!r} selects no components")
        if self.op == "noise":
            if self.donor is not None or self.alpha is not None:
                raise SpecError("a noise transform takes ratio and seed, not donor / alpha")
        else:
            if self.ratio is not None or self.seed is not None:
                raise SpecError("an interpolate transform takes donor and alpha, not ratio / seed")
            if self.donor not in sources:
                raise SpecError(f"transform interpolate: donor {self.donor!r} is not one of the sources "
                                f"{sorted(sources)}")

    @property
    def unified_layers(self) -> list[int]:
        return [unified_llm_layer(j) for j in self.layers]

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (unified layers); ``replace`` is written as ``interpolate`` with ``alpha: 1.0``."""
        d: dict[str, Any] = {"op": self.op, "layers": format_layers(self.unified_layers)}
        if self.components != COMPONENTS:
            d["components"] = list(self.components)
        if self.op == "noise":
            d.update(ratio=self.ratio, seed=self.seed)
        else:
            d.update(donor=self.donor, alpha=self.alpha)
        return d

    def describe(self) -> str:
        comps = "" if self.components == COMPONENTS else f" ({'+'.join(self.components)})"
        where = f"layers {format_layers(self.unified_layers)}"
        if self.op == "noise":
            return f"noise {self.ratio:g} seed {self.seed}{comps} on {where}"
        if self.alpha == 1.0:
            return f"replaced by {self.donor}{comps} on {where}"
        return f"interpolate {self.donor} alpha {self.alpha:g}{comps} on {where}"


def _fraction(value: Any, what: str) -> float:
    """A number in [0, 1] (the noise ratio, alpha)."""
    if isinstance(value, bool):
        raise SpecError(f"{what} must be a number in [0, 1], got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise SpecError(f"{what} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= x <= 1.0:
        raise SpecError(f"{what} must be in [0, 1], got {value!r}")
    return x


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise SpecError(f"seed must be a non-negative integer, got {value!r}")
    return int(value)


# -- the spec ---------------------------------------------------------------------------------------
@dataclass
class MergeSpec:
    """A Frankenstein checkpoint, declared: the source of every tensor.

    ``layers[j]`` maps each component (``attention``, ``mlp``, ``norm``, ``other``) of decoder layer ``j``
    (unified LLM layer ``j + 1``; a list, so indexed from 0) to a source name; ``parts`` maps each non-layer part to
    a source name; ``sources`` maps source names to hub ids or local directories; ``transforms`` rewrite selected
    LLM layer tensors after their sources are chosen (:class:`Transform`; donors are sources too).
    """

    sources: dict[str, str]
    host: str
    n_layers: int
    layers: list[dict[str, str]]
    parts: dict[str, str] = field(default_factory=dict)
    cuts: tuple[int, int] | None = None
    name: str = ""
    description: str = ""
    phrase: str | None = field(default=None, compare=False)
    revisions: dict[str, str] = field(default_factory=dict)
    transforms: tuple[Transform, ...] = ()

    def __post_init__(self) -> None:
        self.sources = {str(k): str(v) for k, v in self.sources.items()}
        self.cuts = _check_cuts(self.cuts, self.n_layers)
        if self.host not in self.sources:
            raise SpecError(f"host {self.host!r} is not one of the sources {sorted(self.sources)}")
        if len(self.layers) != self.n_layers:
            raise SpecError(f"{len(self.layers)} layer choices given for {self.n_layers} LLM layers")
        layers = []
        for j, choice in enumerate(self.layers):
            unknown = set(choice) - set(COMPONENTS)
            if unknown:
                raise SpecError(f"layer {unified_llm_layer(j)}: unknown component(s) {sorted(unknown)} "
                                f"(use {', '.join(COMPONENTS)})")
            layers.append({c: choice.get(c, self.host) for c in COMPONENTS})
        self.layers = layers
        unknown_parts = set(self.parts) - set(PARTS)
        if unknown_parts:
            raise SpecError(f"unknown part(s) {sorted(unknown_parts)} (use {', '.join(PARTS)})")
        self.parts = {p: self.parts.get(p, self.host) for p in PARTS}
        for where, src in [*((f"layer {unified_llm_layer(j)} {c}", s)
                             for j, ch in enumerate(self.layers) for c, s in ch.items()),
                           *((f"part {p}", s) for p, s in self.parts.items())]:
            if src not in self.sources:
                raise SpecError(f"{where} comes from {src!r}, which is not one of the sources {sorted(self.sources)}")
        self.transforms = tuple(self.transforms or ())
        for t in self.transforms:
            if not isinstance(t, Transform):
                raise SpecError(f"transforms must be Transform objects, got {t!r}")
            t.check(self.n_layers, self.sources)

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def parse(
        cls,
        text_or_phrase: str,
        n_layers: int | None = None,
        sources: Mapping[str, str] | None = None,
        *,
        cuts: Sequence[int] | None = None,
        host: str | None = None,
        name: str = "",
    ) -> MergeSpec:
        """A spec from the paper's phrasing (or YAML text).

        ``sources`` maps names (``in``, ``rl``, ``base``) to hub ids / local paths; ``n_layers`` is the LLM depth
        (read from the host's config when omitted).
        """
        text = text_or_phrase.strip()
        if _looks_like_yaml_mapping(text):
            return cls.from_yaml(text, n_layers=n_layers, sources=sources)
        data: dict[str, Any] = {"phrase": text, "sources": dict(sources or {})}
        if n_layers is not None:
            data["num_hidden_layers"] = n_layers
        if cuts is not None:
            data["cuts"] = list(cuts)
        if host is not None:
            data["host"] = host
        if name:
            data["name"] = name
        return cls.from_dict(data)

    @classmethod
    def from_yaml(
        cls,
        path_or_text: str | os.PathLike,
        *,
        n_layers: int | None = None,
        sources: Mapping[str, str] | None = None,
    ) -> MergeSpec:
        """A spec from a YAML file or YAML text; ``sources`` add to / replace the file's sources."""
        text = str(path_or_text)
        p = Path(text).expanduser()
        single_line = "\n" not in text and len(text) < 4096
        spec_dir = None
        if single_line and (p.suffix in (".yaml", ".yml") or p.is_file()):
            if not p.is_file():
                raise SpecError(f"merge spec file {text!r} does not exist")
            text = p.read_text()
            spec_dir = p.absolute().parent
        data = load_yaml(text, p if spec_dir is not None else "merge spec")
        if isinstance(data, str):  # a bare phrase
            data = {"phrase": data}
        if not isinstance(data, dict):
            raise SpecError("a merge spec must be a YAML mapping "
                            "(or a phrase such as 'IN early 1/3 layers + RL late 2/3 layers')")
        if spec_dir is not None:  # the file's own relative paths are relative to the file, not to the current folder
            for k in ("sources", "models"):
                if isinstance(data.get(k), Mapping):
                    data = {**data, k: resolve_relative_refs(data[k], spec_dir)}
        if sources:
            data = {**data, "sources": {**dict(data.get("sources") or data.get("models") or {}), **dict(sources)}}
            data.pop("models", None)
        if n_layers is not None:
            data = {**data, "num_hidden_layers": n_layers}
            data.pop("n_layers", None)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MergeSpec:
        """A spec from its mapping form (see the module docstring)."""
        unknown = set(data) - _YAML_KEYS
        if unknown:
            raise SpecError(f"unknown merge spec key(s) {sorted(unknown)}; allowed: {', '.join(sorted(_YAML_KEYS))}")
        sources = {str(k): str(v) for k, v in dict(data.get("sources") or data.get("models") or {}).items()
                   if v is not None}
        phrase = data.get("phrase")
        blocks = data.get("blocks")
        if phrase is not None and blocks is not None:
            raise SpecError("give either 'phrase' or 'blocks', not both")
        if phrase is None and blocks is None:
            raise SpecError("a merge spec needs 'phrase' or 'blocks' (which LLM layers come from which source)")
        variant = variant_phrase(str(phrase)) if phrase is not None else None
        if variant is not None:
            if data.get("transforms"):
                raise SpecError("give the transform either in the phrase or in 'transforms', not both")
            variant = _resolve_variant(variant, sources)  # may add the phrase's models to sources
        host = data.get("host")
        host = _source_name(str(host), sources) if host is not None else None
        if host is None and variant is not None:
            host = variant["base"]
        n_layers = data.get("num_hidden_layers", data.get("n_layers"))
        if n_layers is None:
            n_layers = _infer_n_layers(sources, host, phrase, blocks)
        if not isinstance(n_layers, int) or n_layers < 1:
            raise SpecError(f"num_hidden_layers must be a positive integer, got {n_layers!r}")
        cuts = _check_cuts(data.get("cuts"), n_layers)
        if variant is not None:
            try:
                terms, transforms = _variant_terms(variant, n_layers, cuts, str(phrase))
            except SpecError as exc:
                raise SpecError(str(exc) if str(exc).startswith(repr(str(phrase))) else f"{phrase!r}: {exc}") from None
        else:
            terms = (_phrase_terms(str(phrase), sources, n_layers, cuts) if phrase is not None
                     else _block_terms(blocks, sources, n_layers, cuts))
            transforms = _transform_terms(data.get("transforms"), sources, n_layers, cuts)
        layers, first = _assign(terms, n_layers)
        host = host or first
        if host is None:
            raise SpecError("cannot tell the host model: assign layer 1 or give 'host'")
        if host not in sources:
            raise SpecError(f"source {host!r} has no model reference; "
                            f"pass it (e.g. --{host} PATH or sources: {{{host}: ...}})")
        parts = {str(k): _source_name(str(v), sources) for k, v in dict(data.get("parts") or {}).items()}
        for p in list(parts):
            if p not in PARTS:
                raise SpecError(f"unknown part {p!r} (use {', '.join(PARTS)})")
        missing = sorted({s for ch in layers for s in ch.values()} - set(sources))
        if missing:
            raise SpecError(
                f"the spec takes layers from {', '.join(missing)} but gives no model reference for "
                f"{'it' if len(missing) == 1 else 'them'} (sources: {sorted(sources) or 'none'})"
            )
        return cls(
            sources=sources,
            host=host,
            n_layers=n_layers,
            layers=[{c: ch.get(c, host) for c in COMPONENTS} for ch in layers],
            parts=parts,
            cuts=cuts,
            name=str(data.get("name") or ""),
            description=str(data.get("description") or ""),
            phrase=str(phrase) if phrase is not None else None,
            revisions={str(k): str(v) for k, v in dict(data.get("revisions") or {}).items() if v},
            transforms=tuple(transforms),
        )

    # -- queries ------------------------------------------------------------------------------
    def used_sources(self) -> list[str]:
        """Names of the sources that at least one tensor comes from (donors of transforms included), host first."""
        used = {*self.assigned_sources(), *self.donors()}
        return [self.host] + sorted(used - {self.host})

    def assigned_sources(self) -> list[str]:
        """Names of the sources whose tensors are copied (host, parts, layers; not donors only), host first."""
        used = {self.host, *self.parts.values(), *(s for ch in self.layers for s in ch.values())}
        return [self.host] + sorted(used - {self.host})

    def donors(self) -> list[str]:
        """Names of the sources the transforms interpolate with."""
        return sorted({t.donor for t in self.transforms if t.donor is not None})

    def part_of(self, role: TensorRole) -> str | None:
        """The non-layer part a tensor belongs to (None for LLM layer tensors).

        The vision patch embedding belongs to ``vision`` (the encoder), token embeddings to ``embeddings``.
        """
        if role.section == "llm":
            return None
        if role.section == "vision" or (role.section == "embeddings" and role.tower == "vision"):
            return "vision"
        return role.section

    def source_of(self, tensor: TensorRole | str) -> str:
        """The source name a tensor (role, or name in either naming scheme) comes from."""
        role = (tensor if isinstance(tensor, TensorRole)
                else LayerMap.from_names([tensor], n_llm_layers=self.n_layers).role(tensor))
        if role.section == "llm":
            j = role.block
            if j is None or not 0 <= j < self.n_layers:
                raise SpecError(f"{role.name}: LLM layer {role.layer} is outside this spec's layers 1-{self.n_layers}")
            return self.layers[j][role.component]
        return self.parts[self.part_of(role)]  # type: ignore[index]

    def blocks(self) -> list[dict[str, Any]]:
        """Runs of consecutive layers with the same choice, as unified layers: ``{"layers": "1-9", "source": "in"}``
        or, for mixed layers, one entry per source with its ``components``."""
        out: list[dict[str, Any]] = []
        j = 0
        while j < self.n_layers:
            k = j
            while k + 1 < self.n_layers and self.layers[k + 1] == self.layers[j]:
                k += 1
            rng = format_layers(range(unified_llm_layer(j), unified_llm_layer(k) + 1))
            choice = self.layers[j]
            by_source: dict[str, list[str]] = {}
            for c in COMPONENTS:
                by_source.setdefault(choice[c], []).append(c)
            if len(by_source) == 1:
                out.append({"layers": rng, "source": choice["attention"]})
            else:
                for src, comps in by_source.items():
                    out.append({"layers": rng, "source": src, "components": comps})
            j = k + 1
        return out

    def describe(self) -> str:
        """One line, unified layers: ``in: layers 1-9 | rl: layers 10-28 | host in``."""
        parts = []
        for b in self.blocks():
            comps = f" ({'+'.join(b['components'])})" if "components" in b else ""
            parts.append(f"{b['source']}: layers {b['layers']}{comps}")
        off_host = [f"{p} from {s}" for p, s in self.parts.items() if s != self.host]
        out = " | ".join(parts) + f" | host {self.host}" + (f" ({', '.join(off_host)})" if off_host else "")
        return out + "".join(f" | then {t.describe()}" for t in self.transforms)

    # -- serialization ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The resolved spec in YAML form (only the sources it uses); ``from_dict`` reads it back."""
        used = self.used_sources()
        d: dict[str, Any] = {}
        if self.name:
            d["name"] = self.name
        if self.description:
            d["description"] = self.description
        d["sources"] = {s: self.sources[s] for s in used}
        revs = {s: self.revisions[s] for s in used if s in self.revisions}
        if revs:
            d["revisions"] = revs
        d["host"] = self.host
        d["num_hidden_layers"] = self.n_layers
        d["cuts"] = list(self.cuts)  # type: ignore[arg-type]
        d["blocks"] = self.blocks()
        d["parts"] = dict(self.parts)
        if self.transforms:
            d["transforms"] = [t.to_dict() for t in self.transforms]
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def spec_hash(self) -> str:
        """SHA-256 of the resolved spec (name, description and phrase excluded): equal hashes, equal recipes.

        The source *contents* are not part of it; :mod:`frankeneval.transferability.splice` combines it with the
        sources' fingerprints.
        """
        d = self.to_dict()
        d.pop("name", None)
        d.pop("description", None)
        d.pop("cuts", None)  # the per-layer choice is what matters, not how it was written
        d["layers"] = self.layers
        d.pop("blocks")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def with_sources(self, sources: Mapping[str, str | os.PathLike],
                     revisions: Mapping[str, str] | None = None) -> MergeSpec:
        """The same spec with some sources re-pointed (e.g. at local copies)."""
        new = {**self.sources, **{k: str(v) for k, v in sources.items() if v is not None}}
        revs = {k: v for k, v in self.revisions.items() if k not in sources}
        revs.update(revisions or {})
        return replace(self, sources=new, revisions=revs)

    def __str__(self) -> str:
        return f"MergeSpec({self.name or self.phrase or 'unnamed'}: {self.describe()})"


# -- parsing helpers ----------------------------------------------------------------------------------
@dataclass
class _Term:
    source: str
    layers: list[int]
    components: tuple[str, ...] | None  # None: every component
    text: str


def _looks_like_yaml_mapping(text: str) -> bool:
    return "\n" in text or text.startswith("{") or bool(re.match(r"^\w+\s*:\s", text))


def _check_cuts(cuts: Sequence[int] | None, n_layers: int) -> tuple[int, int]:
    return check_cuts(cuts, n_layers)


def _source_name(token: str, sources: Mapping[str, str]) -> str:
    """A source name from a token: a declared name, an alias (IN/SFT/ColdStart, RL/final, base) or a ref."""
    t = token.strip()
    low = t.lower()
    for name in sources:
        if name.lower() == low:
            return name
    if low in SOURCE_ALIASES:
        return SOURCE_ALIASES[low]
    for name, ref in sources.items():
        if ref == t:
            return name
    raise SpecError(
        f"unknown source {token!r}: use a declared source ({', '.join(sorted(sources)) or 'none declared'}) "
        f"or an alias ({', '.join(sorted(SOURCE_ALIASES))})"
    )


def _infer_n_layers(sources: Mapping[str, str], host: str | None, phrase: Any, blocks: Any) -> int:
    ref = sources.get(host) if host else None
    ref = ref or next(iter(sources.values()), None)
    if ref is None:
        raise SpecError("num_hidden_layers is not given and there is no source to read it from")
    return read_num_hidden_layers(ref)


_LAYER_WORD = re.compile(r"^(?:early|mid|middle|late|all)(?:[-_:]?[123]/3)?$|^[123]/3$|^[\d,.\-]*\d[\d,.\-]*$")


def _term_from_words(source: str, words: list[str], n: int, cuts: tuple[int, int], text: str) -> _Term:
    """Parse the words after the source: regions with fractions, ``layers A-B`` ranges, components."""
    layer_words: list[str] = []
    comps: list[str] = []
    for w in words:
        if _LAYER_WORD.match(w):
            layer_words.append(w)
        elif w in _COMPONENT_ALIASES:
            comps.append(_COMPONENT_ALIASES[w])
        elif w in _FILLER_WORDS:
            pass
        else:
            raise SpecError(
                f"cannot read {w!r} in {text!r}: expected early/middle/late/all [1/3|2/3], 'layers 10-18', "
                "or a component (attention, mlp, norm)"
            )
    if not layer_words:
        raise SpecError(f"{text!r} names no layers (early/middle/late 1/3, 'all', or 'layers 10-18')")
    try:
        unified = select_layers(" ".join(layer_words), n, cuts=cuts).llm
    except LayerSpecError as exc:
        raise SpecError(f"{text!r}: {exc}") from None
    layers = [decoder_index(L, n) for L in unified]
    return _Term(source, sorted(set(layers)), tuple(dict.fromkeys(comps)) or None, text)


def _phrase_terms(phrase: str, sources: Mapping[str, str], n: int, cuts: tuple[int, int]) -> list[_Term]:
    terms = []
    for raw in phrase.split("+"):
        text = raw.strip()
        if not text:
            raise SpecError(f"empty term in {phrase!r}")
        norm = re.sub(r"[(),;]", " ", text)
        norm = re.sub(r"-only\b", " only", norm, flags=re.IGNORECASE)
        words = norm.split()
        source = _source_name(words[0], sources)
        terms.append(_term_from_words(source, [w.lower() for w in words[1:]], n, cuts, text))
    return terms


def _block_terms(blocks: Any, sources: Mapping[str, str], n: int, cuts: tuple[int, int]) -> list[_Term]:
    if isinstance(blocks, Mapping):  # {early: in, middle: rl, late: rl}
        blocks = [{"region": k, "source": v} for k, v in blocks.items()]
    if not isinstance(blocks, list):
        raise SpecError("'blocks' must be a list of {region|layers, source[, components]} "
                        "or a mapping region -> source")
    terms = []
    for b in blocks:
        if not isinstance(b, Mapping) or "source" not in b:
            raise SpecError(f"block {b!r} needs a 'source'")
        extra = set(b) - {"source", "region", "layers", "components"}
        if extra:
            raise SpecError(f"block {dict(b)!r}: unknown key(s) {sorted(extra)}")
        source = _source_name(str(b["source"]), sources)
        words: list[str] = []
        if "region" in b:
            words += re.sub(r"[+_,]", " ", str(b["region"]).lower()).split()
        if "layers" in b:
            spec = b["layers"]
            items = spec if isinstance(spec, list) else [spec]
            words += [str(x).replace(" ", "") for x in items]
        if "components" in b:
            comps = b["components"]
            for c in comps if isinstance(comps, list) else [comps]:
                c = str(c).lower().replace("-only", "")
                if c not in _COMPONENT_ALIASES:
                    raise SpecError(f"block {dict(b)!r}: unknown component {c!r} (use attention, mlp, norm, other)")
                words.append(c)
        terms.append(_term_from_words(source, words, n, cuts, json.dumps(dict(b), default=str)))
    return terms


# -- variant phrases and transforms ---------------------------------------------------------------------
_NUMBER = r"\d+(?:\.\d*)?|\.\d+"
_WHERE = r"(?:layers?\s+(?P<start>\d+)(?:\s*-\s*(?P<end>\d+))?|(?P<seg>early|middle|mid|late)\s+1/3\s+layers?)"
_COMPONENT_OPT = r"(?:\s+component\s*=\s*(?P<component>mlp|attn|attention|all))?"
# The reference's phrases (transferability_test.py, ModelManager.get_model), each also with the other layer form.
_VARIANT_FORMS: tuple[tuple[str, re.Pattern], ...] = (
    ("noise", re.compile(rf"^(?P<base>.+?)\s+{_WHERE}\s+ablate\s+noise\s*=\s*(?P<ratio>{_NUMBER})"
                         rf"(?:\s+seed\s*=\s*(?P<seed>\d+))?\s*$", re.IGNORECASE)),
    ("interpolate", re.compile(rf"^(?P<base>.+?)\s+{_WHERE}\s+interpolate\s+(?P<donor>.+?)\s+"
                               rf"alpha\s*=\s*(?P<alpha>{_NUMBER}){_COMPONENT_OPT}\s*$", re.IGNORECASE)),
    ("replace", re.compile(rf"^(?P<base>.+?)\s+{_WHERE}\s+replaced\s+by\s+(?P<donor>.+?){_COMPONENT_OPT}\s*$",
                           re.IGNORECASE)),
)
_VARIANT_KEYWORD = re.compile(r"\b(?:ablate|interpolate|replaced\s+by)\b", re.IGNORECASE)
VARIANT_FORMS_HELP = ("'<model> layers A-B ablate noise=r [seed=N]', "
                      "'<model> layers A-B interpolate <donor> alpha=a [component=mlp|attn|all]', "
                      "'<model> early|middle|late 1/3 layers interpolate <donor> alpha=a', "
                      "'<model> early|middle|late 1/3 layers replaced by <donor>' "
                      "(A-B: 0-based decoder indices, as in the reference)")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def variant_phrase(text: str) -> dict[str, Any] | None:
    """The parts of a variant phrase (the reference's ablate / interpolate / replaced-by forms; module docstring),
    or None for a text that is no variant phrase. A text that uses their words but none of their forms is refused
    in one line naming the forms."""
    text = " ".join(str(text).split())
    if not _VARIANT_KEYWORD.search(text):
        return None
    for op, pattern in _VARIANT_FORMS:
        m = pattern.match(text)
        if m:
            return {"op": op, **m.groupdict()}
    raise SpecError(f"cannot read {text!r}: a variant phrase is one of {VARIANT_FORMS_HELP}")


def _phrase_model(token: str, sources: dict[str, str], role: str) -> str:
    """The source name of a phrase's model / donor: a declared name, an alias, or a checkpoint folder or hub id
    (added to ``sources`` as ``role``, ``role2``, ...)."""
    token = token.strip()
    try:
        return _source_name(token, sources)
    except SpecError:
        path = Path(token).expanduser()
        if not (path.is_dir() or _HUB_ID.match(token) or _LINEAGE_REF.match(token)):
            raise SpecError(
                f"unknown model {token!r}: use a declared source ({', '.join(sorted(sources)) or 'none declared'}), "
                f"an alias ({', '.join(sorted(SOURCE_ALIASES))}), a local checkpoint folder or a hub id"
            ) from None
    ref = os.path.abspath(path) if path.is_dir() else token
    for name, known in sources.items():
        if known == ref:
            return name
    name, i = role, 2
    while name in sources:
        name, i = f"{role}{i}", i + 1
    sources[name] = ref
    return name


def _resolve_variant(variant: dict[str, Any], sources: dict[str, str]) -> dict[str, Any]:
    """``variant`` with its model and donor as source names (``sources`` gains the ones given as paths / ids)."""
    out = dict(variant)
    out["base"] = _phrase_model(variant["base"], sources, "model")
    if variant.get("donor") is not None:
        out["donor"] = _phrase_model(variant["donor"], sources, "donor")
    return out


def _variant_terms(variant: Mapping[str, Any], n: int, cuts: tuple[int, int],
                   text: str) -> tuple[list[_Term], list[Transform]]:
    """Every layer from the phrase's model, and its one transform. ``layers A-B`` are 0-based decoder indices."""
    if variant.get("start") is not None:
        a = int(variant["start"])
        b = int(variant["end"]) if variant.get("end") is not None else a
        if a > b:
            raise SpecError(f"{text!r}: layers {a}-{b}: start after end")
        if b > n - 1:
            raise SpecError(f"{text!r}: layers {a}-{b} are out of range: a variant phrase's layers are 0-based decoder "
                            f"indices (as in the reference) and this model has {n} LLM layers, 0-{n - 1} "
                            f"(unified 1-{n})")
        layers = list(range(a, b + 1))
    else:
        unified = select_layers(str(variant["seg"]).lower(), n, cuts=cuts).llm
        layers = [decoder_index(L, n) for L in unified]
    comp = str(variant.get("component") or "all").lower()
    components = COMPONENTS if comp == "all" else (_COMPONENT_ALIASES[comp],)
    op = variant["op"]
    if op == "noise":
        seed = int(variant["seed"]) if variant.get("seed") is not None else 0
        transform = Transform("noise", tuple(layers), COMPONENTS, ratio=float(variant["ratio"]), seed=seed)
    else:
        alpha = 1.0 if op == "replace" else float(variant["alpha"])
        transform = Transform("interpolate", tuple(layers), components, donor=variant["donor"], alpha=alpha)
    return [_Term(variant["base"], list(range(n)), None, text)], [transform]


_TRANSFORM_KEYS = {"op", "layers", "region", "components", "component", "ratio", "seed", "donor", "alpha"}
_OP_KEYS = {"noise": {"ratio", "seed"}, "interpolate": {"donor", "alpha"}, "replace": {"donor"}}


def _transform_terms(items: Any, sources: Mapping[str, str], n: int, cuts: tuple[int, int]) -> list[Transform]:
    """The ``transforms`` of a YAML spec (unified layers, as blocks)."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise SpecError("'transforms' must be a list of {op: noise|interpolate|replace, layers|region, ...}")
    out = []
    for i, t in enumerate(items):
        where = f"transforms[{i}]"
        if not isinstance(t, Mapping) or "op" not in t:
            raise SpecError(f"{where}: {t!r} needs an 'op' (noise, interpolate or replace)")
        op = str(t["op"]).lower()
        if op not in _OP_KEYS:
            raise SpecError(f"{where}: unknown op {t['op']!r} (use noise, interpolate or replace)")
        extra = set(t) - _TRANSFORM_KEYS
        wrong = (set(t) & (_TRANSFORM_KEYS - {"op", "layers", "region", "components", "component"})) - _OP_KEYS[op]
        if extra or wrong:
            raise SpecError(f"{where}: key(s) {sorted(extra | wrong)} do not apply to op {op!r} "
                            f"(it takes layers/region, components, {', '.join(sorted(_OP_KEYS[op]))})")
        missing = sorted(_OP_KEYS[op] - {"seed"} - set(t))
        if missing:
            raise SpecError(f"{where}: op {op!r} needs {', '.join(missing)}")
        words: list[str] = []
        if "region" in t:
            words += re.sub(r"[+_,]", " ", str(t["region"]).lower()).split()
        if "layers" in t:
            spec = t["layers"]
            words += [str(x).replace(" ", "") for x in (spec if isinstance(spec, list) else [spec])]
        text = json.dumps(dict(t), default=str)
        term = _term_from_words("", words, n, cuts, text)
        raw = t.get("components", t.get("component", "all"))
        comps: list[str] = []
        for c in raw if isinstance(raw, list) else [raw]:
            c = str(c).lower().replace("-only", "")
            if c == "all":
                comps += COMPONENTS
            elif c in _COMPONENT_ALIASES:
                comps.append(_COMPONENT_ALIASES[c])
            else:
                raise SpecError(f"{where}: unknown component {c!r} (use attention, mlp, norm, other or all)")
        if op == "noise":
            out.append(Transform("noise", tuple(term.layers), tuple(comps), ratio=t["ratio"], seed=t.get("seed", 0)))
        else:
            alpha = t["alpha"] if op == "interpolate" else 1.0
            out.append(Transform("interpolate", tuple(term.layers), tuple(comps),
                                 donor=_source_name(str(t["donor"]), sources), alpha=alpha))
    return out


def _assign(terms: Iterable[_Term], n: int) -> tuple[list[dict[str, str]], str | None]:
    """Apply terms in order -> per decoder layer {component: source} (partial) and the source of layer 1."""
    layers: list[dict[str, str]] = [{} for _ in range(n)]
    origin: list[dict[str, str]] = [{} for _ in range(n)]
    first_source: str | None = None
    for term in terms:
        comps = term.components or COMPONENTS
        for j in term.layers:
            for c in comps:
                if c in layers[j] and term.components is None:
                    raise SpecError(
                        f"{term.text!r} overlaps {origin[j][c]!r} at layer {unified_llm_layer(j)}; "
                        "blocks must not overlap "
                        "(only a component-restricted term, e.g. '... attention only', may override)"
                    )
                layers[j][c] = term.source
                origin[j][c] = term.text
        if first_source is None:
            first_source = term.source
    host0 = layers[0].get("attention") if n else None
    return layers, host0 or first_source
