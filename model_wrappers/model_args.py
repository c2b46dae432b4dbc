"""What the two ``franken_qwen`` wrappers share: model-arg handling and driving the Generator.

Imports neither harness (the lmms-eval wrapper :mod:`frankeneval.model_wrappers.franken_qwen` and the lm-eval
wrapper :mod:`frankeneval.model_wrappers.franken_qwen_lm_eval` both build on it; each imports only its own harness).

Harness flags and model args (the rule both wrappers follow)
-------------------------------------------------------------
Both harnesses build the model with ``create_from_arg_string`` (lm-eval also with ``create_from_arg_obj``, which its
0.4.x CLI uses), passing their own ``--batch_size``, ``--max_batch_size`` and ``--device`` flags as
``additional_config`` -- always, default or not (lm-eval: ``batch_size=1``, ``device=cuda:0`` from the CLI config;
lmms-eval: ``batch_size=1``). The wrapper cannot tell a default from a flag the user typed, so:

* a value given in ``--model_args`` wins over the harness flag, whether the flag was typed or defaulted
  (``model_args=device=cpu`` with lm-eval's default ``cuda:0`` loads on CPU; no duplicate-keyword error);
* a harness flag fills in what ``--model_args`` leaves unset (``--device cpu --batch_size 4`` work alone);
* when both are given and differ, the model arg is used and the harness value is logged as ignored (a
  warning unless it is that harness's known default).

``dtype`` and the other model args have no harness flag: they come from ``--model_args`` only.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from frankeneval.errors import FrankenevalError

log = logging.getLogger(__name__)

HARNESS_FLAGS = ("batch_size", "max_batch_size", "device")
# values the harnesses pass when the user typed no flag (lm-eval 0.4.x: batch_size 1, device cuda:0 or None;
# lmms-eval 0.7.x: batch_size 1, device None): overriding them is not worth a warning
_HARNESS_DEFAULTS = {"batch_size": ("1", "None"), "max_batch_size": ("None",), "device": ("None", "cuda", "cuda:0")}


def merge_harness_flags(model_args: dict[str, Any], harness_config: dict | None) -> dict[str, Any]:
    """The constructor kwargs: ``model_args`` plus the harness flags they leave unset (see the module docstring)."""
    merged = dict(model_args)
    for key, value in (harness_config or {}).items():
        if key not in HARNESS_FLAGS or value is None:
            continue  # lm-eval/lmms-eval drop None too; anything else in additional_config is not a flag we take
        if key not in merged:
            merged[key] = value
        elif str(merged[key]) != str(value):
            level = logging.DEBUG if str(value) in _HARNESS_DEFAULTS[key] else logging.WARNING
            log.log(level, "franken_qwen: model arg %s=%s wins over the harness's --%s %s", key, merged[key], key,
                    value)
    return merged


def model_kwargs(args: str | dict | None, harness_config: dict | None, parse: Callable[[str], dict]) -> dict[str, Any]:
    """``--model_args`` (a string, parsed by the harness's own ``parse``, or a dict) merged with the harness flags."""
    if args is None:
        parsed: dict[str, Any] = {}
    elif isinstance(args, dict):
        parsed = dict(args)
    else:
        parsed = parse(args)
    return merge_harness_flags(parsed, harness_config)


# --------------------------------------------------------------------------- single args


_SPLICE_LEASES: list = []  # this process's leases on the cached splices it loads (frankeneval...splice.lease_splice)


def resolve_pretrained(pretrained: str | None, splice: str | None, *, allow_pickle: bool = False) -> str:
    """The checkpoint to load: ``pretrained``, or the cached materialization of the ``splice`` spec
    (pickle sources only with ``allow_pickle``)."""
    if splice and pretrained:
        raise FrankenevalError("give either pretrained= or splice=, not both")
    if splice:
        from frankeneval.miniature.refs import register_builtin_lineages
        from frankeneval.transferability.recipes import load_spec
        from frankeneval.transferability.splice import materialize_cached

        register_builtin_lineages()  # splice=tiny:<variant>: the built-in tiny lineage, written on first use
        # leased for this process's life (a dead process's lease is ignored): no --evict-variants run deletes it
        return str(materialize_cached(load_spec(splice), allow_pickle=allow_pickle, leases=_SPLICE_LEASES))
    if not pretrained:
        raise FrankenevalError("franken_qwen needs pretrained=<dir or hub id> or splice=<spec or recipe:variant>")
    return str(pretrained)


def int_or_none(value) -> int | None:
    return None if value in (None, "", "None") else int(value)


def parse_batch_size(value) -> int | str:
    """An int >= 1 or ``"auto"`` (``auto:N`` is taken as ``auto``)."""
    if value is None or value == "":
        return 1
    text = str(value)
    if text.startswith("auto"):
        return "auto"
    try:
        return max(1, int(text))
    except ValueError as exc:
        raise FrankenevalError(f"batch_size must be an integer or auto, got {value!r}") from exc


def parse_bool(value) -> bool:
    return str(value).strip().lower() not in ("false", "0", "no", "off", "")


def seed_compatible_arg(value) -> bool:
    """The ``seed_compatible`` model arg; unset (None): ``$FRANKENEVAL_SEED_COMPATIBLE``, which ``frankeneval transfer
    --seed-compatible`` sets for every cell (the tasks' scoring reads the same variable)."""
    import os

    return parse_bool(value if value is not None else os.environ.get("FRANKENEVAL_SEED_COMPATIBLE", "0"))


def system_prompt_arg(pretrained: str, value: str | None):
    """``system_prompt`` (default ``auto``): the :class:`frankeneval.evaluation.prompts.SystemPrompt` for ``pretrained``
    (``auto`` = docs/method.md's name rule, or a splice's sources; ``reasoner`` / ``revisual`` / ``none``; ``@FILE``
    or a file path; or the text itself, ``\\n`` escapes allowed). Logged, so the harness's log says which and
    why."""
    from frankeneval.evaluation.prompts import resolve_system_prompt

    prompt = resolve_system_prompt(pretrained, value)
    log.info("franken_qwen: system prompt %s", prompt)
    return prompt


def data_parallel():
    """(accelerator, rank, world_size, device) following the harnesses' protocol (``accelerate launch``)."""
    from accelerate import Accelerator

    accelerator = Accelerator()
    if accelerator.num_processes > 1:
        return (accelerator, accelerator.local_process_index, accelerator.num_processes,
                f"cuda:{accelerator.local_process_index}")
    return accelerator, 0, 1, None


def free_unreferenced_models() -> None:
    """Collect what nothing references any more (a model of an earlier evaluation in this process, which reference
    cycles keep alive until the next collection) and hand its cached GPU memory back, before the next model loads:
    lmms-eval's ``--config`` list runs several models one after another in one process, and the batch size a
    model settles on must not depend on whether the previous one was still resident."""
    import gc

    gc.collect()
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def build_generator(args: dict[str, Any], device: str | None):
    """The :class:`frankeneval.engine.generation.Generator` of the model args (``cuda`` falls back to CPU with a
    warning)."""
    import torch

    from frankeneval.engine.generation import Generator

    if device and str(device).startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %s requested but CUDA is not available: using cpu", device)
        device = "cpu"
    return Generator.load(
        args["pretrained"],
        dtype=args.get("dtype") or "auto",
        device=device,
        device_map=args.get("device_map") or None,
        attn_implementation=args.get("attn_implementation") or None,
        max_pixels=int_or_none(args.get("max_pixels")),
        min_pixels=int_or_none(args.get("min_pixels")),
        max_batch_size=int_or_none(args.get("max_batch_size")),
        allow_pickle=parse_bool(args.get("allow_pickle", False)),
        decode=args.get("decode") or "auto",
    )


# --------------------------------------------------------------------------- generation


def gen_settings(gen_kwargs: dict | None, default_max_new_tokens: int, *,
                 max_keys: tuple[str, ...] = ("max_new_tokens",),
                 drop_blank_line_stop: bool = False, seed_compatible: bool = False) -> tuple[dict, list[str]]:
    """(settings for ``Generator.generate``, stop strings) of one request's generation kwargs.

    ``max_keys``: the kwargs naming the token budget, first set wins (lm-eval: ``max_gen_toks``, then
    ``max_new_tokens``); ``drop_blank_line_stop``: ignore a ``"\\n\\n"`` stop (as lmms-eval's own Qwen2.5-VL model);
    ``seed_compatible``: the checkpoint's ``generation_config`` repetition penalty applies unless the task sets one,
    as in the reference code (which passes none to ``generate``)."""
    gk = dict(gen_kwargs or {})
    until = gk.pop("until", None)
    until = [until] if isinstance(until, str) else list(until or [])
    if drop_blank_line_stop:
        until = [u for u in until if u != "\n\n"]
    temperature = float(gk.get("temperature") or 0.0)
    do_sample = bool(gk.get("do_sample", False)) or temperature > 0
    max_new = next((gk[k] for k in max_keys if gk.get(k)), None) or default_max_new_tokens
    settings = dict(
        max_new_tokens=int(max_new),
        do_sample=do_sample,
        temperature=temperature if do_sample and temperature > 0 else None,
        top_p=(float(gk["top_p"]) if gk.get("top_p") is not None else None) if do_sample else None,
    )
    if seed_compatible:
        penalty = gk.get("repetition_penalty")
        settings["repetition_penalty"] = float(penalty) if penalty is not None else "checkpoint"
    return settings, until


class GeneratedText(str):
    """A generated answer that carries why its generation ended: ``finish_reason`` ``"length"`` (it ran to
    ``max_new_tokens``: the answer is cut off), ``"stop"`` / ``"eos"``, or None when the backend does not say.

    What both wrappers return per request: to the harness, its samples file and its cache it is the plain string
    (``json.dumps`` and ``repr`` write the text alone; it pickles with its reason), and the task reads the reason off
    the harness's instances (:meth:`frankeneval.tasks.common.LocalDocsTask.apply_filters`), so it travels with this
    one response and nothing is kept anywhere else."""

    finish_reason: str | None

    def __new__(cls, text: str, finish_reason: str | None = None):  # noqa: PYI034 - a str subclass
        obj = super().__new__(cls, text)
        obj.finish_reason = finish_reason
        return obj


def generate_grouped(generator, build_request: Callable[[int], Any], settings: list[dict], stops: list[list[str]], *,
                     batch_size, interventions: list | None,
                     on_group: Callable[[list[int], list[str]], None] | None = None) -> list[GeneratedText]:
    """Generate request ``i`` (``build_request(i)``, a ``GenRequest``, built when its group runs) for every ``i`` of
    ``settings``: one ``generator.generate`` call per distinct generation setting, so a batch shares its settings;
    ``on_group(indices, texts)`` (plain strings, e.g. for the harness's cache) after each call. Returns the answers
    in request order, each a :class:`GeneratedText` carrying its finish reason."""
    import json

    groups: dict[str, list[int]] = {}
    for i, s in enumerate(settings):
        groups.setdefault(json.dumps(s, sort_keys=True), []).append(i)
    texts: list[GeneratedText | None] = [None] * len(settings)
    for idx in groups.values():
        outs = generator.generate(
            [build_request(i) for i in idx], stop=[stops[i] for i in idx], batch_size=batch_size,
            interventions=[interventions] * len(idx) if interventions else None, **settings[idx[0]],
        )
        group_texts = [o.text for o in outs]
        for i, text, o in zip(idx, group_texts, outs):
            texts[i] = GeneratedText(text, getattr(o, "finish_reason", None))
        if on_group is not None:
            on_group(idx, group_texts)
    return texts  # type: ignore[return-value]
