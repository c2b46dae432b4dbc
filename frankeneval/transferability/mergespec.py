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


# -- the spec ---------------------------------------------------------------------------------------
@dataclass
class MergeSpec:
    """A Frankenstein checkpoint, declared: the source of every tensor.

    ``layers[j]`` maps each component (``attention``, ``mlp``, ``norm``, ``other``) of decoder layer ``j``
    (unified LLM layer ``j + 1``; a list, so indexed from 0) to a source name; ``parts`` maps each non-layer part to
    a source name; ``sources`` maps source names to hub ids or local directories.
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
        host = data.get("host")
        host = _source_name(str(host), sources) if host is not None else None
        n_layers = data.get("num_hidden_layers", data.get("n_layers"))
        if n_layers is None:
            n_layers = _infer_n_layers(sources, host, phrase, blocks)
        if not isinstance(n_layers, int) or n_layers < 1:
            raise SpecError(f"num_hidden_layers must be a positive integer, got {n_layers!r}")
        cuts = _check_cuts(data.get("cuts"), n_layers)
        if phrase is not None:
            terms = _phrase_terms(str(phrase), sources, n_layers, cuts)
        else:
            terms = _block_terms(blocks, sources, n_layers, cuts)
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
        )

    # -- queries ------------------------------------------------------------------------------
    def used_sources(self) -> list[str]:
        """Names of the sources that at least one tensor comes from, host first."""
        used = {self.host, *self.parts.values(), *(s for ch in self.layers for s in ch.values())}
        return [self.host] + sorted(used - {self.host})

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
        return " | ".join(parts) + f" | host {self.host}" + (f" ({', '.join(off_host)})" if off_host else "")

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
