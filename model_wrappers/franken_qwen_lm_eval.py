"""``franken_qwen`` for lm-eval (text-only tasks), registered with ``lm_eval.api.registry.register_model``.

lm-eval 0.4.13 discovers models only by import (no entry-point group), so run it through this module,
which registers the model, adds frankeneval's lm-eval task folder (``franken_gsm8k``, ``franken_math500``: the
repo's ``lm_eval_tasks/``, installed as ``frankeneval.lm_eval_tasks``) to lm-eval's task search path, and then
hands over to lm-eval's own CLI (same flags; an ``--include_path`` of yours is searched too):

    frankeneval-lm-eval --model franken_qwen --model_args pretrained=DIR,device=cpu --tasks franken_gsm8k
    python -m frankeneval.model_wrappers.franken_qwen_lm_eval --model franken_qwen ...   # same thing

This module needs lm-eval only (not lmms-eval); argument handling and generation are shared with the lmms-eval
wrapper through :mod:`frankeneval.model_wrappers.model_args`.

Model args: as the lmms-eval model (``pretrained``/``splice``, ``dtype``, ``device``, ``device_map``,
``attn_implementation``, ``batch_size``, ``max_batch_size``, ``max_new_tokens``, ``intervention``,
``system_prompt``: default ``auto``, :mod:`frankeneval.evaluation.prompts`) plus ``chat`` (default True: the context
is the user turn of the chat template and the continuation / generation is the assistant's reply; False: raw text, as
lm-eval's ``hf`` model).
``device``, ``batch_size`` and ``max_batch_size`` may also come from lm-eval's ``--device`` / ``--batch_size`` /
``--max_batch_size``; a value in ``--model_args`` wins (lm-eval always passes its defaults, e.g. ``device=cuda:0``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from frankeneval.model_wrappers.model_args import (
    build_generator,
    data_parallel,
    gen_settings,
    generate_grouped,
    int_or_none,
    model_kwargs,
    parse_batch_size,
    parse_bool,
    resolve_pretrained,
    seed_compatible_arg,
    system_prompt_arg,
)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from frankeneval.errors import FrankenevalError

LM_EVAL_ARGS = (
    "pretrained", "splice", "dtype", "device", "device_map", "attn_implementation", "batch_size", "max_batch_size",
    "max_new_tokens", "intervention", "system_prompt", "chat", "max_length", "allow_pickle", "decode",
    "seed_compatible",
)


@register_model("franken_qwen")
class FrankenQwenLM(LM):
    """lm-eval model over ``frankeneval.engine.generation.Generator`` (text only)."""

    def __init__(
        self,
        pretrained: str | None = None,
        splice: str | None = None,
        dtype: str = "auto",
        device: str | None = None,
        device_map: str | None = None,
        attn_implementation: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        max_new_tokens: int = 1024,
        intervention: str | None = None,
        system_prompt: str | None = "auto",
        chat: bool = True,
        max_length: int = 4096,
        allow_pickle: bool | str = False,
        decode: str = "auto",
        seed_compatible: bool | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            raise FrankenevalError(f"franken_qwen: unknown model args {sorted(kwargs)}; "
                                   f"known: {', '.join(LM_EVAL_ARGS)}")
        from frankeneval.engine.interventions import parse_intervention_spec

        self.batch_size_arg = parse_batch_size(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.chat = parse_bool(chat)
        self.seed_compatible = seed_compatible_arg(seed_compatible)  # the checkpoint's repetition penalty applies
        self.max_length = int(max_length)
        self.accelerator, self._rank, self._world_size, dp_device = data_parallel()
        self.pretrained = resolve_pretrained(pretrained, splice, allow_pickle=parse_bool(allow_pickle))
        # docs/method.md §3: auto = the name rule on the hub id / dir's own name, a splice its sources'
        self.system_prompt_choice = system_prompt_arg(self.pretrained, system_prompt)
        self.system_prompt = self.system_prompt_choice.text
        args = dict(
            pretrained=self.pretrained, dtype=dtype,
            device_map=device_map, attn_implementation=attn_implementation, max_batch_size=int_or_none(max_batch_size),
            allow_pickle=parse_bool(allow_pickle), decode=decode,
        )
        self.generator = build_generator(args, dp_device or device)
        self._device = self.generator.device
        # unified LLM layers (ablate:12 = decoder layer 11); parsed with the model's depth for layer words
        self.interventions = parse_intervention_spec(intervention, n_layers=self.generator.n_llm_layers)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """As lm-eval's, but a value in ``--model_args`` wins over lm-eval's ``--batch_size`` / ``--device`` /
        ``--max_batch_size`` (instead of a duplicate-keyword error): see
        :mod:`frankeneval.model_wrappers.model_args`."""
        from lm_eval.utils import simple_parse_args_string

        return cls(**model_kwargs(arg_string, additional_config, simple_parse_args_string))

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """The path lm-eval 0.4.x's CLI takes (model args already a dict); same rule as
        :meth:`create_from_arg_string`."""
        from lm_eval.utils import simple_parse_args_string

        return cls(**model_kwargs(arg_dict, additional_config, simple_parse_args_string))

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world_size

    @property
    def device(self):
        return self._device

    def generate_until(self, requests) -> list[str]:
        """The answers, each a :class:`~frankeneval.model_wrappers.model_args.GeneratedText` (a ``str`` carrying
        its finish reason, which the frankeneval tasks read)."""
        from frankeneval.engine.generation import GenRequest

        if not self.chat:
            raise FrankenevalError("generate_until with chat=False is not supported; use chat=True")
        parsed = [gen_settings(req.args[1], self.max_new_tokens, max_keys=("max_gen_toks", "max_new_tokens"),
                               seed_compatible=self.seed_compatible) for req in requests]

        def done(idx: list[int], texts: list[str]) -> None:
            for i, text in zip(idx, texts):
                self.cache_hook.add_partial("generate_until", requests[i].args, text)

        return generate_grouped(
            self.generator, lambda i: GenRequest(requests[i].args[0], [], self.system_prompt), [p[0] for p in parsed],
            [p[1] for p in parsed], batch_size=self.batch_size_arg, interventions=self.interventions or None,
            on_group=done,
        )

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        out = []
        for req in requests:
            context, continuation = req.args
            ll = self.generator.loglikelihood(
                context, continuation, system=self.system_prompt, chat=self.chat,
                interventions=self.interventions or None
            )
            out.append(ll)
            self.cache_hook.add_partial("loglikelihood", req.args, ll)
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        tok = self.generator.tokenizer
        prefix = self.generator._prefix_token_id()
        out = []
        for req in requests:
            (text,) = req.args
            total = 0.0
            windows = get_rolling_token_windows(
                token_list=tok(text, add_special_tokens=False)["input_ids"], prefix_token=prefix,
                max_seq_len=self.max_length, context_len=1,
            )
            for ctx, pred in map(make_disjoint_window, windows):
                logprobs = self.generator.token_logprobs(list(ctx) + list(pred),
                                                         interventions=self.interventions or None)
                total += float(logprobs[-len(pred):].sum())
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return out


def lm_eval_tasks_path() -> Path:
    """The folder of frankeneval's lm-eval task YAMLs (the repo's ``lm_eval_tasks/``)."""
    import frankeneval.lm_eval_tasks

    return Path(frankeneval.lm_eval_tasks.__file__).resolve().parent


def use_frankeneval_tasks() -> None:
    """Make every lm-eval ``TaskManager`` made from now on in this process also search :func:`lm_eval_tasks_path`
    (first, so a user's ``--include_path`` can override a task of the same name)."""
    import lm_eval.tasks

    base = lm_eval.tasks.TaskManager
    if getattr(base, "_frankeneval", False):
        return
    ours = str(lm_eval_tasks_path())

    class TaskManager(base):  # type: ignore[misc,valid-type]
        _frankeneval = True

        def __init__(self, *args, include_path=None, **kwargs):
            given = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) \
                else [include_path]
            super().__init__(*args, include_path=[ours, *[p for p in given if str(p) != ours]], **kwargs)

    TaskManager.__doc__ = base.__doc__
    lm_eval.tasks.TaskManager = TaskManager
    import lm_eval.evaluator  # simple_evaluate(task_manager=None) makes its own

    lm_eval.evaluator.TaskManager = TaskManager


def main() -> None:
    """lm-eval's CLI with ``franken_qwen`` registered and frankeneval's lm-eval tasks on the search path."""
    from lm_eval.__main__ import cli_evaluate

    use_frankeneval_tasks()
    cli_evaluate()


if __name__ == "__main__":
    main()
