"""The system prompt a model is evaluated with: the exact texts, the reference's name rule, and one resolver.

docs/method.md §3: the reasoning-tuned models were trained with a system prompt and are evaluated with it,
IN, RL and every spliced variant alike, in transfer and in every analysis. :func:`resolve_system_prompt` is the one
place that decides; the wrappers (model arg ``system_prompt``, default ``auto``), ``frankeneval transfer``,
``localize-reasoning`` and ``attention-shift`` all call it and record its :meth:`SystemPrompt.record`.

Settings (``--system-prompt`` / ``system_prompt=``):

* ``auto`` (default): the name rule below, on the model's *name*;
* ``reasoner``, ``revisual``: that text; ``none`` (or an empty value): no system message at all (the chat template's
  default applies);
* ``@FILE`` or the path of an existing file: the file's text; anything else: the text itself (``\\n`` escapes allowed).

The rule (the reference's, on the lower-cased name): contains ``revisual-r1`` / ``revisual_r1`` -> revisual; else
contains ``openmmreasoner``, ``coldstart``, ``rl`` or ``mmr1`` -> reasoner, unless it contains ``replaced by`` ->
none; else contains ``qwen2.5-vl-7b-instruct`` or ``qwen/qwen2.5-vl`` -> none; anything else -> reasoner.

The name is the hub id (``OpenMMReasoner/OpenMMReasoner-RL``), or a local directory's **own** name, never a whole
path (``rl`` is in many words: ``/work/runs/qwen2.5-vl-7b-instruct`` is ``qwen2.5-vl-7b-instruct``); a hub-cache
snapshot directory (``.../models--Org--Name/snapshots/<hash>``) is named by its hub id ``Org/Name``. A splice (a
directory with frankeneval's ``frankeneval_provenance.json``) takes the prompt of its sources -- those that
contribute tensors, each named by the reference recorded in the provenance: reasoner if any source is; else revisual if
any source is; else none. Seed-compatible transfer applies the rule to a variant's own phrase instead, as the reference
does (:func:`variant_phrase_prompt`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frankeneval.errors import FrankenevalError

__all__ = [
    "NAMED_PROMPTS",
    "REASONER_SYSTEM_PROMPT",
    "REVISUAL_SYSTEM_PROMPT",
    "SETTING_HELP",
    "SystemPrompt",
    "model_rule_name",
    "name_rule",
    "resolve_system_prompt",
    "variant_phrase_prompt",
]

# docs/method.md §3 (data: keep them byte for byte)
REASONER_SYSTEM_PROMPT = (
    "You are a helpful assistant. When the user asks a question, your response must include two parts: first, the "
    "reasoning process enclosed in <think>...</think> tags, then the final answer enclosed in <answer>...</answer> "
    "tags. Please provide a clear, concise response within <answer> </answer> tags that directly addresses the "
    "question."
)
REVISUAL_SYSTEM_PROMPT = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. The "
    "reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put in \\boxed{}."
)
NAMED_PROMPTS: dict[str, str | None] = {
    "reasoner": REASONER_SYSTEM_PROMPT,
    "revisual": REVISUAL_SYSTEM_PROMPT,
    "none": None,
}

REVISUAL_MARKERS = ("revisual-r1", "revisual_r1")
REASONER_MARKERS = ("openmmreasoner", "coldstart", "rl", "mmr1")
REPLACED_MARKER = "replaced by"
BASE_MARKERS = ("qwen2.5-vl-7b-instruct", "qwen/qwen2.5-vl")
PROVENANCE = "frankeneval_provenance.json"  # = transferability.splice.PROVENANCE (not imported: keep core light)

SETTING_HELP = (
    "system prompt: auto (default) = the reference's rule on the model's hub id or its directory's own name "
    "(revisual-r1 -> revisual; openmmreasoner / coldstart / rl / mmr1 -> reasoner; Qwen2.5-VL-7B-Instruct -> none; "
    "unknown names -> reasoner; a splice -> its sources' prompt); reasoner | revisual = that exact text; none = no "
    "system message (the chat template's default); @FILE = a file's text; anything else = the text itself"
)


@dataclass(frozen=True)
class SystemPrompt:
    """The system prompt chosen for one model: ``name`` (reasoner | revisual | none | text), its ``text`` (None: no
    system message), ``reason`` (why, in words) and the ``setting`` it came from."""

    name: str
    text: str | None
    reason: str
    setting: str = "auto"

    def record(self) -> dict[str, Any]:
        """What every result stores about the prompt it was produced with."""
        return {"name": self.name, "setting": self.setting, "reason": self.reason, "text": self.text}

    @property
    def model_arg(self) -> str | None:
        """The ``system_prompt=`` model arg that reproduces this choice without a comma (None for a free text:
        write it to a file and pass ``@FILE``)."""
        return self.name if self.name in NAMED_PROMPTS else None

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def name_rule(name: str) -> tuple[str, str]:
    """(reasoner | revisual | none, why) of the reference's rule on ``name`` (lower-cased here)."""
    n = str(name).lower()
    for m in REVISUAL_MARKERS:
        if m in n:
            return "revisual", f"name {n!r} contains {m!r}"
    for m in REASONER_MARKERS:
        if m in n:
            if REPLACED_MARKER in n:
                return "none", f"name {n!r} contains {m!r} but also {REPLACED_MARKER!r}"
            return "reasoner", f"name {n!r} contains {m!r}"
    for m in BASE_MARKERS:
        if m in n:
            return "none", f"name {n!r} contains {m!r} (base model)"
    return "reasoner", f"name {n!r} matches none of the rule's names (anything else -> reasoner)"


def _looks_like_hub_id(ref: str) -> bool:
    return not (ref.startswith((".", "/", "~")) or "\\" in ref or ref.count("/") != 1 or os.path.isabs(ref))


def model_rule_name(model: Any) -> str:
    """The name the rule reads: a hub id as it is; a hub-cache snapshot dir's hub id; else the directory's own name."""
    ref = str(model).strip()
    path = Path(ref).expanduser()
    if not path.is_dir() and _looks_like_hub_id(ref):
        return ref
    parts = path.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3][len("models--"):].replace("--", "/")
    if path.name in ("", ".", ".."):
        path = path.resolve()
    return path.name


def _splice_sources(path: Path) -> list[tuple[str, str]] | None:
    """[(source label, recorded reference)] of a frankeneval splice dir (those that contribute tensors), or None."""
    try:
        prov = json.loads((path / PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(prov, dict) or not isinstance(prov.get("sources"), dict):
        return None
    sources: dict[str, Any] = prov["sources"]
    used = [s for s in (prov.get("tensor_counts") or {}) if s in sources] or list(sources)
    out = []
    for label in used:
        fp = sources[label] if isinstance(sources[label], dict) else {"ref": sources[label]}
        ref = fp.get("ref") or fp.get("source") or fp.get("path")
        if ref:
            out.append((str(label), str(ref)))
    return out or None


def _auto(model: Any, depth: int = 0) -> tuple[str, str]:
    path = Path(str(model)).expanduser()
    sources = _splice_sources(path) if depth < 8 and path.is_dir() else None
    if sources is None:
        name = model_rule_name(model)
        kind, why = name_rule(name)
        return kind, why
    parts = [(label, ref, *_auto(ref, depth + 1)) for label, ref in sources]
    kinds = {k for _, _, k, _ in parts}
    kind = "reasoner" if "reasoner" in kinds else "revisual" if "revisual" in kinds else "none"
    detail = "; ".join(f"{label}={ref!r} -> {k} ({why})" for label, ref, k, why in parts)
    rule = {"reasoner": "reasoner as a source is", "revisual": "revisual as a source is (none is reasoner)",
            "none": "no source has a system prompt"}[kind]
    return kind, f"splice of {detail}: {rule}"


def variant_phrase_prompt(phrase: str) -> SystemPrompt:
    """Seed-compatible ``auto`` for a spliced variant: the rule on the variant's own phrase, as the reference applies
    it (``Coldstart early 1/3 layers + final late 2/3 layers`` contains ``coldstart`` -> reasoner, so Revisual-R1
    splices get the reasoner prompt while Revisual-R1 IN and RL get the revisual one)."""
    name, why = name_rule(phrase)
    return SystemPrompt(name, NAMED_PROMPTS[name], f"auto (seed-compatible: the variant's phrase): {why}", "auto")


def resolve_system_prompt(model: Any, setting: str | None = "auto") -> SystemPrompt:
    """The :class:`SystemPrompt` for ``model`` (hub id or local dir) under ``setting`` (see the module docstring)."""
    raw = "auto" if setting is None else str(setting)
    key = raw.strip().lower()
    if key == "auto":
        name, why = _auto(model)
        return SystemPrompt(name, NAMED_PROMPTS[name], f"auto: {why}", "auto")
    if key in NAMED_PROMPTS or key == "":
        name = key or "none"
        return SystemPrompt(name, NAMED_PROMPTS[name], f"fixed: {name}", raw)
    if raw.startswith("@") or os.path.isfile(raw):
        file = Path(raw.removeprefix("@")).expanduser()
        try:
            text = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise FrankenevalError(f"system prompt file {str(file)!r} cannot be read: {exc}") from None
        return SystemPrompt(_named(text), text, f"fixed: text of the file {str(file)!r}", raw)
    text = raw.replace("\\n", "\n")
    return SystemPrompt(_named(text), text, "fixed: the text given", raw)


def _named(text: str) -> str:
    """``reasoner`` / ``revisual`` when ``text`` is exactly that prompt, else ``text``."""
    return next((k for k, v in NAMED_PROMPTS.items() if v is not None and v == text), "text")
