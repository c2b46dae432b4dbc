"""Freeze settings of the necessity test: a name (``none``, ``late``, ``middle+late``, ``1-2``) and its
:class:`~frankeneval.necessity.freeze.FreezeMask`, parsed from the layer grammar, and applied to a model in memory
(``requires_grad_(False)`` on exactly the masked parameters). Used by the miniature world's experiment
(:mod:`frankeneval.miniature.necessity`) and by the TRL / verl configurations of a real model
(:mod:`frankeneval.necessity.configs`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from frankeneval.errors import FrankenevalError
from frankeneval.necessity.freeze import FreezeMask, check_against, freeze_mask, frozen_parameters, parameter_regex

__all__ = ["SETTINGS", "UNFROZEN", "Setting", "apply_freeze", "parse_settings"]

SETTINGS: tuple[str, ...] = ("none", "early", "middle", "late", "middle+late")
UNFROZEN = "none"


@dataclass(frozen=True)
class Setting:
    """A freeze setting: its name (as given: ``late``, ``middle+late``, ``1-2``) and its mask."""

    name: str
    mask: FreezeMask

    @property
    def slug(self) -> str:
        """A folder name for the setting (``middle+late`` -> ``middle_late``)."""
        return re.sub(r"[^A-Za-z0-9.-]+", "_", self.name).strip("_") or "setting"

    def to_json(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        out = {"name": self.name, "n_layers": self.mask.n_layers, "layers": list(self.mask.layers),
               "components": list(self.mask.components), "vision": self.mask.vision,
               "projector": self.mask.projector, "describe": self.mask.describe(),
               "parameter_regex": parameter_regex(self.mask)}
        if names is not None:
            out["frozen_parameters"] = list(names)
        return out


def parse_settings(specs: Sequence[str], *, n_layers: int, cuts: Sequence[int] | None = None,
                   components: str | None = None) -> list[Setting]:
    """Settings from their names: ``none`` (nothing frozen), or the layer grammar with ``+`` or ``,`` joining
    regions (``early``, ``middle+late``, ``1-2``, ``late,vision``); duplicates are refused."""
    settings: list[Setting] = []
    seen: dict[tuple, str] = {}
    for raw in specs:
        name = raw.strip().lower()
        if not name:
            raise FrankenevalError("an empty freeze setting; use none, early, middle, late, middle+late or layers "
                                   "such as 1-2")
        if name == UNFROZEN:
            mask = FreezeMask(n_layers=n_layers, layers=())
        else:
            mask = freeze_mask(name.replace("+", ","), n_layers=n_layers, cuts=cuts, components=components)
        key = (mask.layers, mask.components, mask.vision, mask.projector)
        if key in seen:
            raise FrankenevalError(f"freeze settings {seen[key]!r} and {name!r} freeze the same parameters")
        seen[key] = name
        settings.append(Setting(name, mask))
    slugs = [s.slug for s in settings]
    if len(set(slugs)) != len(slugs):
        raise FrankenevalError(f"freeze settings {', '.join(s.name for s in settings)} need distinct names")
    return settings


def apply_freeze(model, mask: FreezeMask) -> list[str]:
    """``requires_grad_(False)`` on the parameters of ``model`` that ``mask`` freezes (decided by the layer map and
    checked against the regex trainers get); returns their names. A mask of LLM layers that matches nothing, or a
    regex that disagrees with the layer map, is an error (a freeze that silently freezes nothing)."""
    names = [n for n, _ in model.named_parameters()]
    frozen = frozen_parameters(mask, names)
    bad = check_against(mask, names)
    if bad:
        raise FrankenevalError(f"the freeze regex and the layer map disagree on {len(bad)} parameters, e.g. {bad[0]}")
    if (mask.layers or mask.vision or mask.projector) and not frozen:
        raise FrankenevalError(f"the freeze mask ({mask.describe()}) matches no parameter of the model")
    chosen = set(frozen)
    for name, param in model.named_parameters():
        if name in chosen:
            param.requires_grad_(False)
    return frozen
