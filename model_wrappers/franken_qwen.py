"""``franken_qwen``: the lmms-eval model for Qwen2.5-VL lineages, spliced checkpoints and interventions.

    lmms_eval --model franken_qwen \\
        --model_args pretrained=Qwen/Qwen2.5-VL-7B-Instruct,batch_size=auto,intervention=ablate:12 \\
        --tasks mathvista_testmini --include_path $(frankeneval tasks-path)

Model args: ``pretrained`` (dir or hub id) or ``splice`` (a merge spec file or built-in ``recipe:variant``,
materialized once into a cache dir by ``frankeneval.splice.materialize_cached``), ``dtype`` (auto), ``device``,
``device_map``, ``attn_implementation``, ``batch_size`` (int or ``auto``; model_args win over ``--batch_size``),
``max_batch_size``, ``max_pixels``, ``min_pixels``, ``max_new_tokens`` (default when the task sets none),
``intervention`` (``frankeneval.interventions.parse_intervention_spec``: ``ablate:12``, ``ablate:3-5``,
``swapkv:<L>:<image>``; 0-based decoder layers), ``backend`` (``hf`` or ``vllm``, the latter without
interventions), ``system_prompt`` (text or a file; default: the chat template's), ``keep_blank_line_stop``
(False: like lmms-eval's own Qwen2.5-VL model, a ``"\\n\\n"`` stop sequence is ignored).

Data parallel: ``accelerate launch -m lmms_eval ...`` -- each process takes GPU ``local_process_index`` and
lmms-eval shards the requests by rank.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from frankeneval.errors import FrankenevalError

MODEL_ARGS = (
    "pretrained", "splice", "dtype", "device", "device_map", "attn_implementation", "batch_size", "max_batch_size",
    "max_pixels", "min_pixels", "max_new_tokens", "intervention", "backend", "system_prompt", "keep_blank_line_stop",
)


def resolve_pretrained(pretrained: str | None, splice: str | None) -> str:
    """The checkpoint to load: ``pretrained``, or the cached materialization of the ``splice`` spec."""
    if splice and pretrained:
        raise FrankenevalError("give either pretrained= or splice=, not both")
    if splice:
        from frankeneval.recipes import load_spec
        from frankeneval.splice import materialize_cached

        return str(materialize_cached(load_spec(splice)))
    if not pretrained:
        raise FrankenevalError("franken_qwen needs pretrained=<dir or hub id> or splice=<spec or recipe:variant>")
    return str(pretrained)


def _int_or_none(value) -> int | None:
    return None if value in (None, "", "None") else int(value)


def parse_batch_size(value) -> int | str:
    if value is None or value == "":
        return 1
    text = str(value)
    if text.startswith("auto"):
        return "auto"
    try:
        return max(1, int(text))
    except ValueError as exc:
        raise FrankenevalError(f"batch_size must be an integer or auto, got {value!r}") from exc


def data_parallel():
    """(accelerator, rank, world_size, device) following lmms-eval's protocol."""
    from accelerate import Accelerator

    accelerator = Accelerator()
    if accelerator.num_processes > 1:
        return accelerator, accelerator.local_process_index, accelerator.num_processes, f"cuda:{accelerator.local_process_index}"
    return accelerator, 0, 1, None


def merge_cli_defaults(model_args: dict[str, Any], cli_config: dict | None) -> dict[str, Any]:
    """``--model_args`` win over the harness CLI's ``--batch_size`` / ``--device`` defaults."""
    extra = {k: v for k, v in (cli_config or {}).items() if v is not None and k in ("batch_size", "max_batch_size", "device")}
    return {**extra, **model_args}


def build_generator(args: dict[str, Any], device: str | None):
    import torch

    from frankeneval.generation import Generator

    if device and str(device).startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).warning("device %s requested but CUDA is not available: using cpu", device)
        device = "cpu"
    return Generator.load(
        args["pretrained"],
        dtype=args.get("dtype") or "auto",
        device=device,
        device_map=args.get("device_map") or None,
        attn_implementation=args.get("attn_implementation") or None,
        max_pixels=_int_or_none(args.get("max_pixels")),
        min_pixels=_int_or_none(args.get("min_pixels")),
        max_batch_size=_int_or_none(args.get("max_batch_size")) or 64,
    )


def read_system_prompt(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    value = str(value)
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read().strip()
    return value.replace("\\n", "\n")


class FrankenQwen(lmms):
    """lmms-eval model: a Qwen2.5-VL checkpoint (or splice) behind ``frankeneval.generation.Generator``."""

    is_simple = True

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
        max_pixels: int | None = None,
        min_pixels: int | None = None,
        max_new_tokens: int = 1024,
        intervention: str | None = None,
        backend: str = "hf",
        system_prompt: str | None = None,
        keep_blank_line_stop: bool = False,
        **kwargs,
    ) -> None:
        super().__init__()
        if kwargs:
            raise FrankenevalError(f"franken_qwen: unknown model args {sorted(kwargs)}; known: {', '.join(MODEL_ARGS)}")
        from frankeneval.interventions import parse_intervention_spec

        self.pretrained = resolve_pretrained(pretrained, splice)
        self.interventions = parse_intervention_spec(intervention)
        self.batch_size_arg = parse_batch_size(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.system_prompt = read_system_prompt(system_prompt)
        self.keep_blank_line_stop = bool(keep_blank_line_stop)
        self.backend = str(backend).lower()
        self.accelerator, self._rank, self._world_size, dp_device = data_parallel()
        device = dp_device or device
        args = dict(
            pretrained=self.pretrained, dtype=dtype, device_map=device_map, attn_implementation=attn_implementation,
            max_pixels=max_pixels, min_pixels=min_pixels, max_batch_size=max_batch_size,
        )
        if self.backend == "hf":
            self.generator = build_generator(args, device)
            self._device = self.generator.device
        elif self.backend == "vllm":
            if self.interventions:
                raise FrankenevalError("backend=vllm runs without interventions; use backend=hf with intervention=")
            self.generator = None
            self._vllm = _VLLMBackend(self.pretrained, max_pixels=_int_or_none(max_pixels), min_pixels=_int_or_none(min_pixels))
            self._device = device or "cuda"
        else:
            raise FrankenevalError(f"backend must be hf or vllm, got {backend!r}")

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """As lmms-eval's, but ``--model_args`` override the CLI's ``--batch_size`` / ``--device`` defaults
        (instead of a duplicate-keyword error); ``--batch_size auto`` works too."""
        from lmms_eval.utils import simple_parse_args_string

        return cls(**merge_cli_defaults(simple_parse_args_string(arg_string), additional_config))

    # -------------------------------------------------------------------------------------------- properties
    @property
    def batch_size(self):
        return self.batch_size_arg

    @property
    def device(self):
        return self._device

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world_size

    # -------------------------------------------------------------------------------------------- requests
    def _visuals(self, doc_to_visual, doc_id, task, split) -> list:
        from PIL import Image

        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        images = []
        for v in visuals:
            if isinstance(v, Image.Image):
                images.append(v.convert("RGB"))
            elif isinstance(v, str) and os.path.isfile(v) and not v.lower().endswith((".mp4", ".avi", ".mov", ".mkv", ".webm")):
                images.append(Image.open(v).convert("RGB"))
            else:
                raise FrankenevalError(f"franken_qwen handles images only, got {type(v).__name__} in task {task}")
        return images

    def _gen_settings(self, gen_kwargs: dict) -> tuple[dict, list[str]]:
        gk = dict(gen_kwargs or {})
        until = gk.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        if not self.keep_blank_line_stop:
            until = [u for u in until if u != "\n\n"]
        temperature = float(gk.get("temperature") or 0.0)
        do_sample = bool(gk.get("do_sample", False)) or temperature > 0
        settings = dict(
            max_new_tokens=int(gk.get("max_new_tokens") or self.max_new_tokens),
            do_sample=do_sample,
            temperature=temperature if do_sample and temperature > 0 else None,
            top_p=(float(gk["top_p"]) if gk.get("top_p") is not None else None) if do_sample else None,
        )
        return settings, until

    def generate_until(self, requests: list[Instance]) -> list[str]:
        from tqdm.auto import tqdm

        from frankeneval.generation import GenRequest

        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        parsed = []
        for i, req in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            settings, until = self._gen_settings(gen_kwargs)
            parsed.append((context, gen_kwargs, settings, until, doc_to_visual, doc_id, task, split))
            groups.setdefault(json.dumps(settings, sort_keys=True), []).append(i)
        pbar = tqdm(total=len(requests), disable=self.rank != 0, desc="franken_qwen")
        for idx in groups.values():
            settings = parsed[idx[0]][2]
            gen_requests, stops = [], []
            for i in idx:
                context, _, _, until, doc_to_visual, doc_id, task, split = parsed[i]
                images = self._visuals(doc_to_visual, doc_id, task, split)
                gen_requests.append(GenRequest(context.replace("<image>", "").strip(), images, self.system_prompt))
                stops.append(until)
            if self.backend == "vllm":
                texts = self._vllm.generate(gen_requests, stops, **settings)
            else:
                outs = self.generator.generate(
                    gen_requests, stop=stops, batch_size=self.batch_size_arg,
                    interventions=[self.interventions] * len(gen_requests) if self.interventions else None, **settings,
                )
                texts = [o.text for o in outs]
            for i, text in zip(idx, texts):
                results[i] = text
                self.cache_hook.add_partial("generate_until", (parsed[i][0], parsed[i][1]), text)
            pbar.update(len(idx))
        pbar.close()
        return results  # type: ignore[return-value]

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        if self.generator is None:
            raise FrankenevalError("loglikelihood needs backend=hf")
        out = []
        for req in requests:
            args = req.args
            context, continuation = args[0], args[1]
            images: list = []
            if len(args) >= 6:
                doc_to_visual, doc_id, task, split = args[2:6]
                if callable(continuation):
                    continuation = continuation(self.task_dict[task][split][doc_id])
                images = self._visuals(doc_to_visual, doc_id, task, split)
            ll = self.generator.loglikelihood(
                context.replace("<image>", "").strip(), str(continuation), images,
                system=self.system_prompt, interventions=self.interventions or None,
            )
            out.append(ll)
            self.cache_hook.add_partial("loglikelihood", (context, continuation), ll)
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(
            "franken_qwen does not implement generate_until_multi_round (multi-round tasks are outside frankeneval); "
            "use lmms-eval's qwen2_5_vl model for them"
        )


class _VLLMBackend:
    """Generation through vLLM (no interventions): the checkpoint dir is served as is."""

    def __init__(self, pretrained: str, *, max_pixels: int | None, min_pixels: int | None):
        try:
            from vllm import LLM  # noqa: F401
        except ImportError as exc:
            raise FrankenevalError("backend=vllm needs vLLM: pip install 'frankeneval[vllm]'") from exc
        from transformers import AutoProcessor
        from vllm import LLM

        mm = {k: v for k, v in (("max_pixels", max_pixels), ("min_pixels", min_pixels)) if v is not None}
        self.processor = AutoProcessor.from_pretrained(pretrained, **mm)
        self.llm = LLM(model=pretrained, mm_processor_kwargs=mm or None, limit_mm_per_prompt={"image": 8})

    def generate(self, requests, stops, *, max_new_tokens, do_sample, temperature, top_p) -> list[str]:
        from vllm import SamplingParams

        from frankeneval.generation import Generator

        chat = Generator.chat_text.__get__(self)  # same chat template as the HF path
        prompts = []
        for r in requests:
            item: dict[str, Any] = {"prompt": chat(r)}
            if r.images:
                item["multi_modal_data"] = {"image": r.images if len(r.images) > 1 else r.images[0]}
            prompts.append(item)
        params = [
            SamplingParams(max_tokens=max_new_tokens, temperature=(temperature or 1.0) if do_sample else 0.0,
                           top_p=top_p or 1.0, stop=s or None)
            for s in stops
        ]
        outs = self.llm.generate(prompts, params)
        return [o.outputs[0].text for o in outs]
