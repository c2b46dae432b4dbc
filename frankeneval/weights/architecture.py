"""Architecture families as data: one JSON description per family in ``frankeneval/weights/architectures/``.

A description says how a family names its tensors, so the layer map (:mod:`frankeneval.weights.layermap`) holds
no family's names; a new family is a new file. The format (after mergekit's ``_data/architectures``):

* ``family`` (the file's key), ``display_name``; ``model_types`` and ``architectures``: the ``config.json``
  values that select the family (:func:`architecture_for_config`);
* ``layer_count_config_keys``: per stack (``vision``, ``llm``), dotted ``config.json`` paths of its depth, first
  present wins (hub files state ``num_hidden_layers`` at the top, transformers 5 writes ``text_config.``...);
* ``layouts``: name layouts besides the canonical one, each a list of ``[canonical prefix, layout prefix]``; the
  templates are written in the canonical layout (hub checkpoints' names), and every comparison between
  checkpoints is on canonical names. ``legacy_prefixes``: more ``[old prefix, canonical prefix]`` pairs that
  are read but never written. A name is canonicalised by the first matching prefix, layouts first;
* ``groups``: the tensor groups, tried in order. Each has a ``section`` of the unified axis (``vision``,
  ``projector``, ``llm``, ``embeddings``, ``final_norm``, ``lm_head``), a ``tower`` (``vision`` / ``language``), a
  name ``prefix`` (``${layer_index}`` in the prefix of a stack: ``vision`` and ``llm`` groups have one, the others
  not), its ``weights`` (full name templates; an object ``{"name", "optional", "tied_to"}`` for a weight that may
  be absent), and either a fixed ``component`` / ``submodule`` or none (then the path inside the group decides,
  by ``components``). An ``llm`` group may list its decoder layer's ``modules`` per component;
* ``components``: module names per component (``norm``, ``attention``, ``mlp``). A ``norm`` module anywhere in a
  tensor's path makes it a norm; otherwise the innermost listed module decides; otherwise a ``containers`` entry
  (``container_submodule``: ``module`` = the innermost module's name, ``path`` = the path from the container on);
  otherwise ``other``;
* ``ablation_targets``: templates of the weights whose zeroing removes a decoder layer's contribution;
* ``layer_words``: extra words of the layer grammar for a section (``{"projector": ["merger"]}``).

A family may lack sections: ``qwen2_text`` (a text-only ``Qwen2ForCausalLM`` such as Qwen2.5-7B-Instruct) has no
vision tower and no projector, and its decoder layers are named like the language layers of the VL families, so it
can serve as a merge spec's donor (:mod:`frankeneval.transferability.mergespec`, ``transforms``).

Descriptions are read from the package folder and from the folders in ``$FRANKENEVAL_ARCHITECTURES``
(``os.pathsep``-separated); each is checked when read, and a malformed one is a one-line error naming the file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from frankeneval.errors import FrankenevalError

ARCHITECTURES_DIR = Path(__file__).with_name("architectures")
ENV_DIRS = "FRANKENEVAL_ARCHITECTURES"
DEFAULT_FAMILY = "qwen2_5_vl"  # a config.json that states neither model_type nor architectures, and bare name lists
CANONICAL_LAYOUT = "hub"
LAYER_INDEX = "${layer_index}"

SECTIONS: tuple[str, ...] = ("vision", "projector", "llm", "embeddings", "final_norm", "lm_head")
STACKS: tuple[str, ...] = ("vision", "llm")  # the sections whose groups are stacks of numbered blocks
COMPONENTS: tuple[str, ...] = ("attention", "mlp", "norm", "other")
TOWERS: tuple[str, ...] = ("vision", "language")
_CONTAINER_SUBMODULE = ("module", "path")


class UnknownArchitecture(FrankenevalError):
    """A checkpoint of a family that no architecture description covers."""


class ArchitectureDescriptionError(FrankenevalError):
    """An architecture description file that does not follow the format."""


@dataclass(frozen=True)
class WeightTemplate:
    """One tensor name template of a group (``${layer_index}`` in stacks)."""

    name: str
    optional: bool = False
    tied_to: str | None = None

    def expand(self, index: int | None = None) -> str:
        return self.name if index is None else self.name.replace(LAYER_INDEX, str(int(index)))


@dataclass(frozen=True)
class TensorGroup:
    """Tensors sharing a name prefix and a section: a stack of blocks, or a fixed part such as the token embeddings."""

    section: str
    tower: str
    prefix: str  # canonical layout, with ${layer_index} for stacks
    weights: tuple[WeightTemplate, ...] = ()
    component: str | None = None  # fixed component; None: from the path inside the group
    submodule: str | None = None
    modules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # an llm group's decoder-layer modules
    _pattern: re.Pattern | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.stacked:
            head, tail = self.prefix.split(LAYER_INDEX, 1)
            pattern = re.compile("^" + re.escape(head) + r"(\d+)" + re.escape(tail) + "(.+)$")
            object.__setattr__(self, "_pattern", pattern)

    @property
    def stacked(self) -> bool:
        return LAYER_INDEX in self.prefix

    def match(self, canonical: str) -> tuple[int | None, str] | None:
        """(block index or None, path inside the group) when ``canonical`` belongs to this group."""
        if self._pattern is not None:
            m = self._pattern.match(canonical)
            return (int(m.group(1)), m.group(2)) if m else None
        return (None, canonical[len(self.prefix):]) if canonical.startswith(self.prefix) else None

    def expand(self, index: int | None = None) -> str:
        """The group's prefix for block ``index`` (stacks) or as is."""
        return self.prefix if index is None else self.prefix.replace(LAYER_INDEX, str(int(index)))


@dataclass(frozen=True)
class Classified:
    """What the description says of one canonical tensor name."""

    section: str
    block: int | None
    component: str
    submodule: str
    param: str
    tower: str


@dataclass(frozen=True)
class ComponentRule:
    component: str
    modules: tuple[str, ...] = ()
    containers: tuple[str, ...] = ()
    container_submodule: str = "module"


@dataclass(frozen=True)
class Architecture:
    """One family's tensor-name layout, read from its JSON description (:func:`load_architecture`)."""

    family: str
    display_name: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    layer_count_keys: Mapping[str, tuple[str, ...]]
    layouts: Mapping[str, tuple[tuple[str, str], ...]]  # layout -> ((canonical prefix, layout prefix), ...)
    legacy_prefixes: tuple[tuple[str, str], ...]  # (old prefix, canonical prefix)
    groups: tuple[TensorGroup, ...]
    components: tuple[ComponentRule, ...]
    ablation_templates: tuple[str, ...] = ()
    layer_words: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    source: str = ""
    _to_canonical: tuple[tuple[str, str], ...] = field(init=False, default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        aliases = tuple((prefix, canon) for pairs in self.layouts.values() for canon, prefix in pairs)
        object.__setattr__(self, "_to_canonical", aliases + tuple(self.legacy_prefixes))

    # -- names ------------------------------------------------------------------------------------------

    def canonical_name(self, name: str) -> str:
        """``name`` in the canonical layout (idempotent): the first matching layout or legacy prefix is replaced."""
        for prefix, canon in self._to_canonical:
            if name.startswith(prefix):
                return canon + name[len(prefix):]
        return name

    def layout_name(self, name: str, layout: str) -> str:
        """``name`` in ``layout`` (``hub``, the canonical one, or one of :attr:`layouts`)."""
        name = self.canonical_name(name)
        if layout == CANONICAL_LAYOUT:
            return name
        try:
            pairs = self.layouts[layout]
        except KeyError:
            known = ", ".join((CANONICAL_LAYOUT, *self.layouts))
            msg = f"{self.family} has no name layout {layout!r} (known: {known})"
            raise ArchitectureDescriptionError(msg) from None
        for canon, prefix in pairs:
            if name.startswith(canon):
                return prefix + name[len(canon):]
        return name

    # -- classification ---------------------------------------------------------------------------------
    def classify(self, canonical: str) -> Classified | None:
        """Section, block, component, submodule, param and tower of a canonical name; None when no group has it."""
        param = canonical.rsplit(".", 1)[-1]
        for group in self.groups:
            hit = group.match(canonical)
            if hit is None:
                continue
            block, path = hit
            if group.component is not None:
                comp, sub = group.component, group.submodule or group.section
            else:
                comp, sub = self.component_of(path)
            return Classified(group.section, block, comp, sub, param, group.tower)
        return None

    def component_of(self, path: str) -> tuple[str, str]:
        """Component and submodule of a path inside a group, such as ``self_attn.q_proj.weight``."""
        parts = path.split(".")
        stem = parts[:-1]  # drop weight/bias
        norms = [r for r in self.components if r.component == "norm"]
        named = [r for r in self.components if r.component != "norm"]
        for part in reversed(stem):
            if any(part in r.modules for r in norms):
                return "norm", part
        for part in reversed(stem):
            for rule in named:
                if part in rule.modules:
                    return rule.component, part
        for rule in self.components:
            at = next((i for i, p in enumerate(stem) if p in rule.containers), None)
            if at is not None:
                return rule.component, stem[-1] if rule.container_submodule == "module" else ".".join(stem[at:])
        return "other", ".".join(stem) or path

    # -- stacks, configs and templates --------------------------------------------------------------------
    def group(self, section: str) -> TensorGroup:
        """The first group of ``section``."""
        for g in self.groups:
            if g.section == section:
                return g
        raise KeyError(f"{self.family} has no {section} group")

    def layer_counts(self, config: Mapping[str, Any]) -> tuple[int | None, int | None]:
        """(vision blocks, LLM layers) stated by a ``config.json`` (None where it states no depth)."""

        def lookup(key: str):
            obj: Any = config
            for part in key.split("."):
                if not isinstance(obj, Mapping) or part not in obj:
                    return None
                obj = obj[part]
            return obj

        out = []
        for stack in STACKS:
            value = None
            for key in self.layer_count_keys.get(stack, ()):
                value = lookup(key)
                if value is not None:
                    break
            out.append(value)
        return out[0], out[1]

    def tensor_names(self, n_vision_blocks: int, n_llm_layers: int, *, optional: bool = True) -> list[str]:
        """Every tensor name the description expects of a checkpoint with these stacks (canonical layout)."""
        depth = {"vision": n_vision_blocks, "llm": n_llm_layers}
        names: list[str] = []
        for g in self.groups:
            indices: Iterable[int | None] = range(depth[g.section]) if g.stacked else (None,)
            for i in indices:
                names.extend(w.expand(i) for w in g.weights if optional or not w.optional)
        return names

    def ablation_targets(self, decoder_layer: int, *, layout: str = CANONICAL_LAYOUT) -> tuple[str, ...]:
        """Names of the weights whose zeroing removes decoder layer ``decoder_layer`` (0-based module index)."""
        return tuple(self.layout_name(t.replace(LAYER_INDEX, str(int(decoder_layer))), layout)
                     for t in self.ablation_templates)

    def matches(self, config: Mapping[str, Any]) -> bool:
        archs = config.get("architectures") or ()
        return config.get("model_type") in self.model_types or any(a in self.architectures for a in archs)


# ------------------------------------------------------------------------------------------------- reading
_TOP_KEYS = {"family", "display_name", "notes", "model_types", "architectures", "layer_count_config_keys", "layouts",
             "legacy_prefixes", "groups", "components", "ablation_targets", "layer_words"}
_GROUP_KEYS = {"section", "tower", "prefix", "weights", "component", "submodule", "modules", "notes"}
_COMPONENT_KEYS = {"modules", "containers", "container_submodule"}


def _strs(value: Any, what: str, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ArchitectureDescriptionError(f"{where}: {what} must be a list of strings, got {value!r}")
    return tuple(value)


def _pairs(value: Any, what: str, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Sequence) or not all(isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2
                                                  and all(isinstance(s, str) and s for s in p) for p in value):
        raise ArchitectureDescriptionError(f"{where}: {what} must be a list of [from, to] prefix pairs, got {value!r}")
    return tuple((a, b) for a, b in value)


def _unknown_keys(data: Mapping, allowed: set[str], what: str, where: str) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise ArchitectureDescriptionError(f"{where}: unknown key(s) {extra} in {what} (known: {sorted(allowed)})")


def _group(data: Any, i: int, where: str) -> TensorGroup:
    if not isinstance(data, Mapping):
        raise ArchitectureDescriptionError(f"{where}: groups[{i}] must be an object")
    _unknown_keys(data, _GROUP_KEYS, f"groups[{i}]", where)
    section, tower, prefix = data.get("section"), data.get("tower"), data.get("prefix")
    here = f"{where}: groups[{i}] ({section})"
    if section not in SECTIONS:
        raise ArchitectureDescriptionError(f"{here}: section must be one of {', '.join(SECTIONS)}")
    if tower not in TOWERS:
        raise ArchitectureDescriptionError(f"{here}: tower must be one of {', '.join(TOWERS)}")
    if not isinstance(prefix, str) or not prefix.endswith("."):
        raise ArchitectureDescriptionError(f"{here}: prefix must be a name prefix ending in '.', got {prefix!r}")
    stacked = LAYER_INDEX in prefix
    if stacked != (section in STACKS) or prefix.count(LAYER_INDEX) > 1:
        raise ArchitectureDescriptionError(f"{here}: the prefix of a {section} group must hold {LAYER_INDEX} "
                                           f"{'once' if section in STACKS else 'never'} (stacks: {', '.join(STACKS)})")
    component = data.get("component")
    if component is not None and component not in COMPONENTS:
        raise ArchitectureDescriptionError(f"{here}: component must be one of {', '.join(COMPONENTS)}")
    submodule = data.get("submodule")
    if submodule is not None and not isinstance(submodule, str):
        raise ArchitectureDescriptionError(f"{here}: submodule must be a string")
    weights: list[WeightTemplate] = []
    for w in data.get("weights") or ():
        if isinstance(w, str):
            w = {"name": w}
        if not isinstance(w, Mapping) or not isinstance(w.get("name"), str):
            raise ArchitectureDescriptionError(f"{here}: a weight must be a name or an object with a name, got {w!r}")
        _unknown_keys(w, {"name", "optional", "tied_to"}, f"weight {w['name']!r}", here)
        if not w["name"].startswith(prefix) or w["name"] == prefix:
            raise ArchitectureDescriptionError(f"{here}: weight {w['name']!r} is not under the prefix {prefix!r}")
        weights.append(WeightTemplate(w["name"], bool(w.get("optional", False)), w.get("tied_to")))
    modules = data.get("modules") or {}
    if not isinstance(modules, Mapping) or set(modules) - set(COMPONENTS):
        raise ArchitectureDescriptionError(f"{here}: modules must map components ({', '.join(COMPONENTS)}) to names")
    return TensorGroup(section=section, tower=tower, prefix=prefix, weights=tuple(weights), component=component,
                       submodule=submodule,
                       modules={k: _strs(v, f"modules.{k}", here) for k, v in modules.items()})


def parse_architecture(data: Any, source: str = "<description>") -> Architecture:
    """An :class:`Architecture` from a parsed description, checked (one-line errors naming ``source``)."""
    where = source
    if not isinstance(data, Mapping):
        raise ArchitectureDescriptionError(f"{where}: an architecture description is a JSON object")
    _unknown_keys(data, _TOP_KEYS, "the description", where)
    family = data.get("family")
    if not isinstance(family, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", family):
        raise ArchitectureDescriptionError(f"{where}: family must be a name such as qwen2_5_vl, got {family!r}")
    counts = data.get("layer_count_config_keys") or {}
    if not isinstance(counts, Mapping) or set(counts) - set(STACKS):
        raise ArchitectureDescriptionError(
            f"{where}: layer_count_config_keys must map {', '.join(STACKS)} to config keys")
    layouts = data.get("layouts") or {}
    if not isinstance(layouts, Mapping) or CANONICAL_LAYOUT in layouts:
        raise ArchitectureDescriptionError(f"{where}: layouts must map layout names (not {CANONICAL_LAYOUT!r}, the "
                                           f"canonical one) to [canonical prefix, layout prefix] pairs")
    groups_data = data.get("groups")
    if not isinstance(groups_data, Sequence) or not groups_data:
        raise ArchitectureDescriptionError(f"{where}: groups must be a non-empty list")
    groups = tuple(_group(g, i, where) for i, g in enumerate(groups_data))
    rules: list[ComponentRule] = []
    comps = data.get("components") or {}
    if not isinstance(comps, Mapping) or set(comps) - {"attention", "mlp", "norm"}:
        raise ArchitectureDescriptionError(f"{where}: components must map attention, mlp, norm to module names")
    for comp, rule in comps.items():
        if not isinstance(rule, Mapping):
            raise ArchitectureDescriptionError(f"{where}: components.{comp} must be an object")
        _unknown_keys(rule, _COMPONENT_KEYS, f"components.{comp}", where)
        how = rule.get("container_submodule", "module")
        if how not in _CONTAINER_SUBMODULE:
            raise ArchitectureDescriptionError(f"{where}: components.{comp}.container_submodule must be one of "
                                               f"{', '.join(_CONTAINER_SUBMODULE)}")
        if comp == "norm" and rule.get("containers"):
            raise ArchitectureDescriptionError(f"{where}: components.norm takes modules only")
        rules.append(ComponentRule(comp, _strs(rule.get("modules", ()), f"components.{comp}.modules", where),
                                   _strs(rule.get("containers", ()), f"components.{comp}.containers", where), how))
    ablation = _strs(data.get("ablation_targets", ()), "ablation_targets", where)
    llm_weights = {w.name for g in groups if g.section == "llm" for w in g.weights}
    stray = [t for t in ablation if t not in llm_weights]
    if stray:
        raise ArchitectureDescriptionError(f"{where}: ablation_targets {stray} are not weights of an llm group")
    words = data.get("layer_words") or {}
    if not isinstance(words, Mapping) or set(words) - {"vision", "projector"}:
        raise ArchitectureDescriptionError(f"{where}: layer_words must map vision / projector to extra words")
    return Architecture(
        family=family,
        display_name=str(data.get("display_name") or family),
        model_types=_strs(data.get("model_types", ()), "model_types", where),
        architectures=_strs(data.get("architectures", ()), "architectures", where),
        layer_count_keys={k: _strs(v, f"layer_count_config_keys.{k}", where) for k, v in counts.items()},
        layouts={k: _pairs(v, f"layouts.{k}", where) for k, v in layouts.items()},
        legacy_prefixes=_pairs(data.get("legacy_prefixes", ()), "legacy_prefixes", where),
        groups=groups,
        components=tuple(rules),
        ablation_templates=ablation,
        layer_words={k: tuple(w.lower() for w in _strs(v, f"layer_words.{k}", where)) for k, v in words.items()},
        source=source,
    )


@lru_cache(maxsize=None)
def _load(path: str, mtime_ns: int) -> Architecture:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ArchitectureDescriptionError(f"{path}: cannot read the architecture description: {e}") from None
    return parse_architecture(data, source=path)


def load_architecture(path: str | os.PathLike) -> Architecture:
    """Read one description file (cached while the file is unchanged)."""
    p = Path(path).resolve()
    try:
        mtime = p.stat().st_mtime_ns
    except OSError as e:
        raise ArchitectureDescriptionError(f"{p}: cannot read the architecture description: {e}") from None
    return _load(str(p), mtime)


def description_dirs() -> list[Path]:
    """The folders descriptions are read from: the package's, then those in ``$FRANKENEVAL_ARCHITECTURES``."""
    extra = [Path(d) for d in os.environ.get(ENV_DIRS, "").split(os.pathsep) if d.strip()]
    return [ARCHITECTURES_DIR, *extra]


def known_architectures() -> dict[str, Architecture]:
    """Every described family by name (a family described twice is an error)."""
    out: dict[str, Architecture] = {}
    for folder in description_dirs():
        for path in sorted(folder.glob("*.json")):
            arch = load_architecture(path)
            if arch.family in out:
                raise ArchitectureDescriptionError(
                    f"family {arch.family!r} is described twice: {out[arch.family].source} and {arch.source}")
            out[arch.family] = arch
    return out


def _known_list(known: Mapping[str, Architecture]) -> str:
    return ", ".join(f"{a.family} (model_type {'/'.join(a.model_types) or '-'})" for a in known.values())


def get_architecture(family: str) -> Architecture:
    """A described family by name."""
    known = known_architectures()
    try:
        return known[family]
    except KeyError:
        msg = f"no architecture description named {family!r}; known: {_known_list(known)}"
        raise UnknownArchitecture(msg) from None


@lru_cache(maxsize=1)
def default_architecture() -> Architecture:
    """The family assumed where nothing names one: bare tensor-name lists and config.json files without
    ``model_type`` / ``architectures``."""
    return load_architecture(ARCHITECTURES_DIR / f"{DEFAULT_FAMILY}.json")


def architecture_for_config(config: Mapping[str, Any] | None) -> Architecture:
    """The family of a checkpoint's ``config.json``: by ``model_type``, else by ``architectures``; the default
    family when the config names neither. An unknown family is a one-line :class:`UnknownArchitecture`."""
    config = config or {}
    model_type, archs = config.get("model_type"), list(config.get("architectures") or ())
    if not model_type and not archs:
        return default_architecture()
    known = known_architectures()
    for arch in known.values():
        if model_type and model_type in arch.model_types:
            return arch
    for arch in known.values():
        if any(a in arch.architectures for a in archs):
            return arch
    raise UnknownArchitecture(
        f"no architecture description for model_type {model_type!r} (architectures {archs}); known: "
        f"{_known_list(known)}; describe the family in a JSON file under {ARCHITECTURES_DIR} or ${ENV_DIRS}")
