"""``franken_qwen`` for lm-eval (text-only tasks), registered with ``lm_eval.api.registry.register_model``.

lm-eval 0.4.13 discovers models only by import (no entry-point group), so run it through this module,
which registers the model and then hands over to lm-eval's own CLI (same flags):

    frankeneval-lm-eval --model franken_qwen --model_args pretrained=DIR --tasks gsm8k
    python -m frankeneval.model_wrappers.franken_qwen_lm_eval --model franken_qwen ...   # same thing

Model args: as the lmms-eval model (``pretrained``/``splice``, ``dtype``, ``device``, ``device_map``,
``attn_implementation``, ``batch_size``, ``max_batch_size``, ``max_new_tokens``, ``intervention``,
``system_prompt``) plus ``chat`` (default True: the context is the user turn of the chat template and the
continuation / generation is the assistant's reply; False: raw text, as lm-eval's ``hf`` model).
"""

from __future__ import annotations

from typing import Any

from frankeneval.model_wrappers.franken_qwen import (
    _int_or_none,
    build_generator,
    data_parallel,
    merge_cli_defaults,
    parse_batch_size,
    read_system_prompt,
    resolve_pretrained,
)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from frankeneval.errors import FrankenevalError

LM_EVAL_ARGS = (
    "pretrained", "splice", "dtype", "device", "device_map", "attn_implementation", "batch_size", "max_batch_size",
    "max_new_tokens", "intervention", "system_prompt", "chat", "max_length",
)


@register_model("franken_qwen")
class FrankenQwenLM(LM):
    """lm-eval model over ``frankeneval.generation.Generator`` (text only)."""

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
        system_prompt: str | None = None,
        chat: bool = True,
        max_length: int = 4096,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            raise FrankenevalError(f"franken_qwen: unknown model args {sorted(kwargs)}; known: {', '.join(LM_EVAL_ARGS)}")
        from frankeneval.interventions import parse_intervention_spec

        self.interventions = parse_intervention_spec(intervention)
        self.batch_size_arg = parse_batch_size(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.system_prompt = read_system_prompt(system_prompt)
        self.chat = str(chat).lower() not in ("false", "0", "no")
        self.max_length = int(max_length)
        self.accelerator, self._rank, self._world_size, dp_device = data_parallel()
        args = dict(
            pretrained=resolve_pretrained(pretrained, splice), dtype=dtype, device_map=device_map,
            attn_implementation=attn_implementation, max_batch_size=_int_or_none(max_batch_size),
        )
        self.generator = build_generator(args, dp_device or device)
        self._device = self.generator.device

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """``--model_args`` override the CLI's ``--batch_size`` / ``--device`` defaults."""
        from lm_eval.utils import simple_parse_args_string

        return cls(**merge_cli_defaults(simple_parse_args_string(arg_string), additional_config))

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world_size

    @property
    def device(self):
        return self._device

    def _rows(self, n: int):
        return [self.interventions] * n if self.interventions else None

    def generate_until(self, requests) -> list[str]:
        from frankeneval.generation import GenRequest

        results: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        stops: list[list[str]] = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            gk = dict(gen_kwargs or {})
            until = gk.pop("until", None)
            stops.append([until] if isinstance(until, str) else list(until or []))
            temperature = float(gk.get("temperature") or 0.0)
            do_sample = bool(gk.get("do_sample", False)) or temperature > 0
            key = (
                int(gk.get("max_gen_toks") or gk.get("max_new_tokens") or self.max_new_tokens),
                do_sample, temperature if do_sample else None, gk.get("top_p") if do_sample else None,
            )
            groups.setdefault(key, []).append(i)
        for (max_new, do_sample, temperature, top_p), idx in groups.items():
            if self.chat:
                reqs = [GenRequest(requests[i].args[0], [], self.system_prompt) for i in idx]
                outs = self.generator.generate(
                    reqs, max_new_tokens=max_new, do_sample=do_sample, temperature=temperature, top_p=top_p,
                    stop=[stops[i] for i in idx], batch_size=self.batch_size_arg, interventions=self._rows(len(idx)),
                )
                texts = [o.text for o in outs]
            else:
                raise FrankenevalError("generate_until with chat=False is not supported; use chat=True")
            for i, text in zip(idx, texts):
                results[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return results  # type: ignore[return-value]

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        out = []
        for req in requests:
            context, continuation = req.args
            ll = self.generator.loglikelihood(
                context, continuation, system=self.system_prompt, chat=self.chat, interventions=self.interventions or None
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
                logprobs = self.generator.token_logprobs(list(ctx) + list(pred), interventions=self.interventions or None)
                total += float(logprobs[-len(pred):].sum())
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return out


def main() -> None:
    """lm-eval's CLI with ``franken_qwen`` registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
