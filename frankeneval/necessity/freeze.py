"""Freeze masks for the necessity test: which parameters to keep fixed while re-running RL.

The necessity test asks whether RL still gains when a block of layers cannot move. A :class:`FreezeMask`
names the frozen LLM layers in the layer grammar of :mod:`frankeneval.weights.layermap` (unified LLM layers 1 ... n,
decoder layer j is j + 1: block regions ``early`` / ``middle`` / ``late`` with the splicing cuts ``n // 3`` and
``2n // 3``, inclusive ranges such as ``1-9``, ``all``), the frozen components of those layers (``attention``,
``mlp``, ``norm``; default all three) and optionally the whole ``vision`` encoder (patch embedding + blocks) and
the ``projector`` (patch merger). The old 0-based forms (``0``, ``0-8``) are refused with the unified spelling.

Trainers see module names, so patterns are written for the names transformers uses in memory
(``model.language_model.layers.N...``, ``model.visual.blocks.N...``; the older ``model.layers.N`` /
``visual.blocks.N`` layout also matches) and tolerate any wrapper prefix (``base_model.model.``,
``module.``). Each pattern is a Python regular expression meant for ``re.fullmatch``:

* :func:`parameter_regex` -- parameter names (``...q_proj.weight``): freeze with ``requires_grad_(False)``;
* :func:`module_regex` -- module names (``...q_proj``): PEFT's ``exclude_modules`` (fullmatch on module
  names), so a LoRA run puts no adapters on the frozen layers.

:func:`render` prints them in the forms TRL (a ``requires_grad_`` snippet and a ``LoraConfig``), verl (Hydra
overrides: LoRA ``exclude_modules``, ``freeze_vision_tower``) and plain regex accept.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from frankeneval.errors import FrankenevalError
from frankeneval.weights.layermap import (
    LayerMap,
    decoder_index,
    format_layers,
    select_layers,
    transformers_name,
)

__all__ = [
    "COMPONENTS",
    "FORMATS",
    "FreezeMask",
    "check_against",
    "freeze_mask",
    "frozen_parameters",
    "model_parameter_names",
    "module_regex",
    "parameter_regex",
    "render",
]

COMPONENTS: tuple[str, ...] = ("attention", "mlp", "norm")
FORMATS: tuple[str, ...] = ("regex", "trl", "verl", "names")

# the LLM decoder layer's sub-modules per component (Qwen2 decoder layer)
_LLM_SUBMODULES = {
    "attention": ("self_attn",),
    "mlp": ("mlp",),
    "norm": ("input_layernorm", "post_attention_layernorm"),
}
_ANY_PREFIX = r"(?:.*\.)?"  # wrappers: base_model.model., module., _orig_mod. ...
_LLM_LAYERS = r"model\.(?:language_model\.)?layers\."
_VISION = r"(?:model\.)?visual\.(?:patch_embed|blocks\.\d+)"
_PROJECTOR = r"(?:model\.)?visual\.merger"


@dataclass(frozen=True)
class FreezeMask:
    """The frozen part of a Qwen2.5-VL model: LLM layers x components, plus optional vision / projector.

    ``layers`` are unified LLM layers (1 ... ``n_layers``); decoder module ``L - 1`` is frozen for layer ``L``.
    """

    n_layers: int
    layers: tuple[int, ...]
    components: tuple[str, ...] = COMPONENTS
    vision: bool = False
    projector: bool = False

    def describe(self) -> str:
        parts = []
        if self.layers:
            comps = "all components" if set(self.components) == set(COMPONENTS) else "+".join(self.components)
            parts.append(f"LLM layers {format_layers(self.layers)} of 1-{self.n_layers} (unified; {comps})")
        if self.vision:
            parts.append("vision encoder")
        if self.projector:
            parts.append("projector")
        return ", ".join(parts) or "nothing"


def freeze_mask(
    layers: str | Iterable[str],
    *,
    n_layers: int,
    components: str | Iterable[str] | None = None,
    cuts: Sequence[int] | None = None,
) -> FreezeMask:
    """Build a :class:`FreezeMask` from a layer spec (the layer grammar, plus ``vision`` / ``projector`` for those
    parts as a whole) and a component list (default all components)."""
    sel = select_layers(layers, n_layers, cuts=cuts, sections=("llm", "vision", "projector"))
    llm, vision, projector = sel.llm, sel.whole_vision, sel.projector
    if components is None or components == "all":
        comps = COMPONENTS
    else:
        items = components.split(",") if isinstance(components, str) else list(components)
        items = [c.strip().lower() for c in items if c.strip()]
        bad = [c for c in items if c not in COMPONENTS]
        if bad or not items:
            raise FrankenevalError(f"unknown component(s) {bad or items}; choose from {', '.join(COMPONENTS)}")
        comps = tuple(c for c in COMPONENTS if c in items)
    return FreezeMask(n_layers=n_layers, layers=tuple(llm), components=comps, vision=vision, projector=projector)


def _alternatives(mask: FreezeMask) -> list[str]:
    """Module-path bodies (without wrapper prefix) of the frozen modules."""
    alts = []
    if mask.layers:
        idx = "|".join(str(decoder_index(L, mask.n_layers)) for L in mask.layers)  # module names count from 0
        subs = "|".join(s for c in mask.components for s in _LLM_SUBMODULES[c])
        alts.append(f"{_LLM_LAYERS}(?:{idx})\\.(?:{subs})")
    if mask.vision:
        alts.append(_VISION)
    if mask.projector:
        alts.append(_PROJECTOR)
    return alts


def module_regex(mask: FreezeMask) -> str:
    """Regex (for ``re.fullmatch``) over module names: the frozen modules and their children."""
    alts = _alternatives(mask)
    if not alts:
        return r"(?!)"
    return f"{_ANY_PREFIX}(?:{'|'.join(alts)})(?:\\..+)?"


def parameter_regex(mask: FreezeMask) -> str:
    """Regex (for ``re.fullmatch``) over parameter names: every parameter of the frozen modules."""
    alts = _alternatives(mask)
    if not alts:
        return r"(?!)"
    return f"{_ANY_PREFIX}(?:{'|'.join(alts)})\\..+"


def frozen_parameters(mask: FreezeMask, names: Iterable[str]) -> list[str]:
    """The names in ``names`` that ``mask`` freezes, decided by the layer map (independently of the regex)."""
    names = list(names)
    lmap = LayerMap.from_names(names)
    out = []
    for name in names:
        role = lmap.role(name)
        if role.section == "llm":
            if role.layer in mask.layers and role.component in mask.components:
                out.append(name)
        elif role.section == "vision" or (role.section == "embeddings" and role.tower == "vision"):
            if mask.vision:
                out.append(name)
        elif role.section == "projector":
            if mask.projector:
                out.append(name)
    return out


def model_parameter_names(model_dir: str | os.PathLike, *, allow_pickle: bool = False) -> tuple[list[str], int]:
    """(parameter names as transformers names them in memory, number of LLM layers) of a checkpoint."""
    from frankeneval.weights.checkpoint import Checkpoint

    ckpt = Checkpoint.open(model_dir, allow_pickle=allow_pickle)
    names = [transformers_name(n) for n in ckpt.names]
    cfg = ckpt.config
    n = cfg.get("num_hidden_layers", (cfg.get("text_config") or {}).get("num_hidden_layers"))
    if not isinstance(n, int):
        n = 1 + max((r.block for r in ckpt.layer_map if r.section == "llm" and r.block is not None), default=-1)
    return names, n


def render(mask: FreezeMask, fmt: str, names: Sequence[str] | None = None) -> str:
    """The mask in a trainer's form: ``regex``, ``trl``, ``verl`` or ``names`` (needs ``names``)."""
    p_re, m_re = parameter_regex(mask), module_regex(mask)
    head = f"# frankeneval freeze mask: {mask.describe()}"
    if fmt == "regex":
        return p_re
    if fmt == "names":
        if names is None:
            raise FrankenevalError("--format names needs --model DIR (the real parameter names)")
        pat = re.compile(p_re)
        return "\n".join(n for n in names if pat.fullmatch(n))
    if fmt == "trl":
        return "\n".join(
            [
                head,
                "# Full fine-tuning (GRPOTrainer / SFTTrainer optimise only parameters with requires_grad=True):",
                "import re",
                f"FROZEN = re.compile(r'{p_re}')",
                "for name, param in model.named_parameters():",
                "    if FROZEN.fullmatch(name):",
                "        param.requires_grad_(False)",
                "# LoRA (peft_config=...): no adapters on the frozen layers",
                "from peft import LoraConfig",
                f"peft_config = LoraConfig(target_modules='all-linear', exclude_modules=r'{m_re}')",
            ]
        )
    if fmt == "verl":
        lines = [
            head,
            "# Hydra overrides for verl (python -m verl.trainer.main_ppo ... <overrides>).",
            "# LoRA runs (actor_rollout_ref.model.lora_rank > 0): no adapters on the frozen modules:",
            f"\"actor_rollout_ref.model.exclude_modules='{m_re}'\"",
        ]
        if mask.vision:
            lines.append("actor_rollout_ref.actor.freeze_vision_tower=True")
        lines += [
            "# Full fine-tuning: verl has no per-layer freeze option; in the FSDP worker, before the optimizer is",
            "# built, call requires_grad_(False) on parameters whose name fullmatches:",
            f"# {p_re}",
        ]
        return "\n".join(lines)
    raise FrankenevalError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def check_against(mask: FreezeMask, names: Sequence[str]) -> list[str]:
    """Names where the regex and the layer map disagree (empty when the regex is exact on ``names``)."""
    pat = re.compile(parameter_regex(mask))
    by_regex = {n for n in names if pat.fullmatch(n)}
    by_map = set(frozen_parameters(mask, names))
    return sorted(by_regex ^ by_map)

