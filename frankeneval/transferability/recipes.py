"""Built-in recipes: the paper's lineages and their six block-wise Frankenstein variants.

A recipe (``merges/<name>.yaml``) names a lineage's models (``base``, ``in``, ``rl``: hub ids or local
directories) and its variants (paper phrases or merge-spec mappings, see :mod:`frankeneval.transferability.mergespec`).
Built in: ``openmmreasoner``, ``revisual_r1``, ``mmr1`` (Qwen/Qwen2.5-VL-7B-Instruct base) and ``tiny`` (the
built-in tiny lineage). Every recipe has the paper's six variants, named ``<host>_<blocks>+<other>_<blocks>``:

=============================  =========================================================
``in_early+rl_middle_late``    IN early 1/3 layers + RL late 2/3 layers
``rl_early+in_middle_late``    RL early 1/3 layers + IN late 2/3 layers
``in_early_middle+rl_late``    IN early 2/3 layers + RL late 1/3 layers
``rl_early_middle+in_late``    RL early 2/3 layers + IN late 1/3 layers
``in_early+rl_middle+in_late`` IN early 1/3 + RL middle 1/3 + IN late 1/3 layers
``rl_early+in_middle+rl_late`` RL early 1/3 + IN middle 1/3 + RL late 1/3 layers
=============================  =========================================================

The first-named source is the host (non-layer parts, config, tokenizer), as in the reference scripts.

A variant may also be one of the reference's variant phrases (noise ablation, interpolation with a donor, a third
replaced by a donor; :func:`frankeneval.transferability.mergespec.variant_phrase`), e.g.
``in_early_noise: "IN layers 0-1 ablate noise=0.5 seed=0"`` -- whose ``layers A-B`` are 0-based decoder indices, as
in the reference -- or a merge-spec mapping with ``transforms`` (unified layers).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from frankeneval.core.results import safe_name
from frankeneval.core.yamlio import load_yaml
from frankeneval.errors import SpecError
from frankeneval.transferability.mergespec import (
    MergeSpec,
    read_num_hidden_layers,
    resolve_ref,
    resolve_relative_refs,
    variant_phrase,
)

__all__ = [
    "PAPER_VARIANTS",
    "Recipe",
    "get_recipe",
    "list_recipes",
    "load_spec",
    "resolve_ref",
    "tiny_recipe",
]

# The six block-wise variants of the paper: stable name -> phrase (IN / RL aliases).
PAPER_VARIANTS: dict[str, str] = {
    "in_early+rl_middle_late": "IN early 1/3 layers + RL late 2/3 layers",
    "rl_early+in_middle_late": "RL early 1/3 layers + IN late 2/3 layers",
    "in_early_middle+rl_late": "IN early 2/3 layers + RL late 1/3 layers",
    "rl_early_middle+in_late": "RL early 2/3 layers + IN late 1/3 layers",
    "in_early+rl_middle+in_late": "IN early 1/3 + RL middle 1/3 + IN late 1/3 layers",
    "rl_early+in_middle+rl_late": "RL early 1/3 + IN middle 1/3 + RL late 1/3 layers",
}

_RECIPE_KEYS = {"name", "description", "models", "num_hidden_layers", "cuts", "variants"}


@dataclass
class Recipe:
    """A lineage (``models``: base / in / rl -> hub id or path) and its named variants (merge specs)."""

    name: str
    models: dict[str, str]
    variants: dict[str, MergeSpec]
    description: str = ""
    n_layers: int = 28
    cuts: tuple[int, int] | None = None
    definitions: dict[str, Any] = field(default_factory=dict, repr=False)  # variant -> phrase or mapping

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, models: Mapping[str, Any] | None = None,
                  n_layers: int | None = None) -> Recipe:
        unknown = set(data) - _RECIPE_KEYS
        if unknown:
            raise SpecError(f"recipe {data.get('name')!r}: unknown key(s) {sorted(unknown)}")
        name = str(data.get("name") or "")
        merged = {k: str(v) for k, v in dict(data.get("models") or {}).items() if v is not None}
        merged.update({k: str(v) for k, v in dict(models or {}).items() if v is not None})
        n = n_layers or data.get("num_hidden_layers")
        if n is None:
            n = read_num_hidden_layers(merged.get("in") or next(iter(merged.values())))
        cuts = data.get("cuts")
        definitions = dict(data.get("variants") or {})
        for v in definitions:  # variant names become folder names (transfer cells, logs)
            safe_name(v, f"recipe {name!r}: variant name")
        variants = {v: _variant_spec(name, v, d, merged, int(n), cuts) for v, d in definitions.items()}
        return cls(
            name=name,
            models=merged,
            variants=variants,
            description=str(data.get("description") or ""),
            n_layers=int(n),
            cuts=tuple(cuts) if cuts else None,  # type: ignore[arg-type]
            definitions=definitions,
        )

    def with_models(self, models: Mapping[str, str | os.PathLike] | None = None, /,
                    **kwargs: str | os.PathLike) -> Recipe:
        """The same recipe pointed at other copies: ``recipe.with_models(in_=path, rl=path)`` or a mapping.

        ``in_`` is accepted for ``in`` (a Python keyword).
        """
        new = dict(models or {})
        new.update({("in" if k == "in_" else k): v for k, v in kwargs.items()})
        return Recipe.from_dict(self._data(), models={k: str(v) for k, v in new.items()}, n_layers=self.n_layers)

    def variant(self, name: str) -> MergeSpec:
        """One variant's merge spec (clear error naming the choices)."""
        try:
            return self.variants[name]
        except KeyError:
            raise SpecError(f"recipe {self.name!r} has no variant {name!r}; "
                            f"choose from: {', '.join(self.variants)}") from None

    def _data(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "models": dict(self.models),
            "num_hidden_layers": self.n_layers,
            "cuts": list(self.cuts) if self.cuts else None,
            "variants": dict(self.definitions),
        }


def _variant_spec(recipe: str, variant: str, definition: Any, models: Mapping[str, str], n: int,
                  cuts: Any) -> MergeSpec:
    if isinstance(definition, str):
        data: dict[str, Any] = {"phrase": definition}
    elif isinstance(definition, Mapping):
        data = dict(definition)
    else:
        raise SpecError(f"recipe {recipe!r}, variant {variant!r}: give a phrase or a merge-spec mapping")
    data.setdefault("name", f"{recipe}:{variant}" if recipe else variant)
    data.setdefault("num_hidden_layers", n)
    if cuts is not None:
        data.setdefault("cuts", list(cuts))
    data["sources"] = {**dict(models), **dict(data.get("sources") or {})}
    try:
        spec = MergeSpec.from_dict(data)
    except SpecError as exc:
        raise SpecError(f"recipe {recipe!r}, variant {variant!r}: {exc}") from None
    return _prune_sources(spec)  # an unused base need not exist on disk


def _prune_sources(spec: MergeSpec) -> MergeSpec:
    used = spec.used_sources()
    return MergeSpec(
        sources={k: v for k, v in spec.sources.items() if k in used},
        host=spec.host,
        n_layers=spec.n_layers,
        layers=spec.layers,
        parts=spec.parts,
        cuts=spec.cuts,
        name=spec.name,
        description=spec.description,
        phrase=spec.phrase,
        revisions={k: v for k, v in spec.revisions.items() if k in used},
        transforms=spec.transforms,
    )


def _builtin_dir():
    return resources.files("frankeneval.merges")


def list_recipes() -> list[str]:
    """Names of the built-in recipes (``merges/*.yaml``)."""
    return sorted(p.name.rsplit(".", 1)[0] for p in _builtin_dir().iterdir() if p.name.endswith((".yaml", ".yml")))


def get_recipe(name: str, models: Mapping[str, str | os.PathLike] | None = None) -> Recipe:
    """A built-in recipe by name (or a recipe YAML file by path), optionally re-pointed at local copies."""
    path = Path(name).expanduser()
    recipe_dir = None
    if name.endswith((".yaml", ".yml")) and path.is_file():
        text, source = path.read_text(), path
        recipe_dir = path.absolute().parent
    else:
        candidates = [f"{name}.yaml", f"{name}.yml", f"{name.replace('-', '_').lower()}.yaml"]
        entry = next((_builtin_dir() / c for c in candidates if (_builtin_dir() / c).is_file()), None)
        if entry is None:
            raise SpecError(f"no recipe named {name!r}; built-in recipes: {', '.join(list_recipes())}")
        text, source = entry.read_text(), f"built-in recipe {entry.name}"
    data = load_yaml(text, source)
    if not isinstance(data, dict):
        raise SpecError(f"recipe {name!r} is not a YAML mapping")
    if recipe_dir is not None:  # the file's relative model paths are relative to the file, not to the current folder
        data = _relative_to(data, recipe_dir)
    return Recipe.from_dict(data, models={k: str(v) for k, v in (models or {}).items() if v is not None})


def _relative_to(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    data = dict(data)
    if isinstance(data.get("models"), Mapping):
        data["models"] = resolve_relative_refs(data["models"], folder)
    if isinstance(data.get("variants"), Mapping):
        data["variants"] = {
            v: {**d, "sources": resolve_relative_refs(d["sources"], folder)}
            if isinstance(d, Mapping) and isinstance(d.get("sources"), Mapping) else d
            for v, d in data["variants"].items()
        }
    return data


def tiny_recipe(lineage) -> Recipe:
    """The ``tiny`` recipe pointed at a written lineage (:class:`frankeneval.miniature.lineage.Lineage`).

    Works for any preset: the variants are rebuilt for the lineage's depth (e.g. 28 layers for the
    ``qwen2.5-vl-7b`` preset) and the recipe is named after the preset.
    """
    data = load_yaml((_builtin_dir() / "tiny.yaml").read_text(), "built-in recipe tiny.yaml")
    preset = lineage.spec.name
    if preset != "tiny":
        data["name"] = f"lineage-{preset}"
        data["description"] = f"The built-in {preset} random lineage at {lineage.root}."
    models = {k: str(v) for k, v in lineage.paths.items()}
    return Recipe.from_dict(data, models=models, n_layers=lineage.spec.num_hidden_layers)


def load_spec(
    text: str | os.PathLike,
    *,
    models: Mapping[str, str | os.PathLike | None] | None = None,
    cuts: Sequence[int] | None = None,
    host: str | None = None,
    n_layers: int | None = None,
) -> MergeSpec:
    """A merge spec from what a user typed: a YAML file, ``recipe:variant``, a paper phrase, or one of the
    reference's variant phrases (``"IN layers 0-1 ablate noise=0.5"``: 0-based decoder indices, and model / donor
    as source names, checkpoint folders or hub ids).

    ``models`` (``in``/``rl``/``base``/``donor`` -> path or hub id) re-point a recipe or a YAML spec, and are the
    sources of a phrase. Used by ``frankeneval splice`` and by the model wrapper's ``splice=`` argument.
    """
    text = str(text).strip()
    given = {k: str(v) for k, v in dict(models or {}).items() if v is not None}
    if "\n" not in text and Path(text).expanduser().is_file():
        spec = MergeSpec.from_yaml(text, n_layers=n_layers, sources=given or None)
    elif ":" in text and " " not in text and (
        text.split(":", 1)[0] in list_recipes() or Path(text.split(":", 1)[0]).suffix in (".yaml", ".yml")
    ):
        recipe_name, variant = text.split(":", 1)
        spec = get_recipe(recipe_name, models=given).variant(variant)
    else:
        if not given and variant_phrase(text) is None:  # a variant phrase may name its models by path / hub id
            raise SpecError(
                f"{text!r} is not a spec file or recipe:variant; a phrase needs its models (--in PATH --rl PATH). "
                f"Recipes: {', '.join(list_recipes())}"
            )
        spec = MergeSpec.parse(text, n_layers, given, cuts=cuts, host=host)
        return spec
    if cuts is not None or host is not None:
        if not spec.phrase:
            raise SpecError("--cuts / --host apply to phrases and phrase variants, not to block specs; edit the YAML")
        data = {
            "name": spec.name,
            "phrase": spec.phrase,
            "sources": spec.sources,
            "revisions": spec.revisions,
            "num_hidden_layers": spec.n_layers,
            "cuts": list(cuts) if cuts is not None else list(spec.cuts or ()),
        }
        if host is not None:
            data["host"] = host
        if spec.transforms and variant_phrase(spec.phrase) is None:  # transforms written in YAML, beside the phrase
            if cuts is not None:
                raise SpecError("--cuts applies to a phrase's thirds, but this spec's transforms are resolved layers "
                                "written in YAML; edit the YAML")
            data["transforms"] = [t.to_dict() for t in spec.transforms]
        spec = _prune_sources(MergeSpec.from_dict(data))
    return spec
