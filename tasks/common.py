"""Shared hooks of the frankeneval lmms-eval tasks (imported by each task folder's ``utils.py``).

Every task YAML names ``class: !function utils.FrankenTask``; its ``dataset_kwargs`` say *what* to load
(``benchmark``, MathVista ``category`` and ``control``, or ``probe_task``) and its ``metadata`` may carry task
arguments. Settings are read, first match wins, from the task's ``metadata`` (task arguments), the environment,
then the defaults:

=====================  ==============================  ========================================================
metadata key           environment variable            meaning (default)
=====================  ==============================  ========================================================
data_path              FRANKENEVAL_DATA                local data folder/file (unset: the hub dataset)
sample_size            FRANKENEVAL_SAMPLE_SIZE         items per task, 0 = all (100)
sample_seed            FRANKENEVAL_SAMPLE_SEED         sub-sampling seed (123)
judge                  FRANKENEVAL_JUDGE               1 = LLM judge on (off)
judge_model            FRANKENEVAL_JUDGE_MODEL         judge model (gpt-4o-mini)
judge_base_url         OPENAI_BASE_URL                 OpenAI-compatible server (OpenAI)
judge_cache            FRANKENEVAL_JUDGE_CACHE         judge / description cache (~/.cache/frankeneval/judge)
description_source     FRANKENEVAL_DESCRIPTION_SOURCE  auto | judge | caption_bard (auto: judge if on, else caption_bard)
seed_compatible        FRANKENEVAL_SEED_COMPATIBLE     1 = also accept 1 % relative error, as the reference (off)
probe_cache            FRANKENEVAL_PROBE_CACHE         where built-in probes are rendered (~/.cache/frankeneval/probes)
=====================  ==============================  ========================================================

Metrics (fractions in [0, 1]): ``rule_acc`` always; ``judge_acc`` and ``judge_error`` only when the judge is on
(absent otherwise). A sample the rules mark correct is correct for the judge too (rules first; no call); a sample
whose judging failed is left out of ``judge_acc`` and counted in ``judge_error``. Per-sample values are dicts with
``id`` and ``score`` (0/1), kept in lmms-eval's samples file for bootstrapping.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frankeneval import scoring
from frankeneval.data import (
    DEFAULT_SAMPLE_SEED,
    DEFAULT_SAMPLE_SIZE,
    DataNotFound,
    load_benchmark_rows,
    subsample_indices,
)
from frankeneval.errors import FrankenevalError

INSTRUCTION = 'Please solve the problem step by step and put your answer in one "\\boxed{}".'

try:  # lmms-eval is a dependency; keep the scoring hooks importable without it
    from lmms_eval.api.task import ConfigurableTask
except Exception:  # pragma: no cover
    ConfigurableTask = object  # type: ignore[assignment,misc]


# --------------------------------------------------------------------------- settings


def _truthy(v: Any) -> bool:
    return str(v).strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class TaskSettings:
    """Resolved task arguments (see the module docstring)."""

    data_path: str | None = None
    sample_size: int = DEFAULT_SAMPLE_SIZE
    sample_seed: int = DEFAULT_SAMPLE_SEED
    judge: bool = False
    judge_model: str | None = None
    judge_base_url: str | None = None
    judge_cache: str | None = None
    description_source: str = "auto"
    seed_compatible: bool = False
    probe_cache: str | None = None

    @property
    def rel_tol(self) -> float | None:
        return 0.01 if self.seed_compatible else None

    @classmethod
    def resolve(cls, metadata: dict | None = None) -> "TaskSettings":
        md = dict(metadata or {})

        def get(key: str, env: str, default: Any = None) -> Any:
            if md.get(key) is not None:
                return md[key]
            value = os.environ.get(env, "").strip()
            return value if value else default

        source = str(get("description_source", "FRANKENEVAL_DESCRIPTION_SOURCE", "auto")).lower()
        if source not in ("auto", "judge", "caption_bard"):
            raise FrankenevalError(f"description_source must be auto, judge or caption_bard, not {source!r}")
        return cls(
            data_path=get("data_path", "FRANKENEVAL_DATA"),
            sample_size=int(get("sample_size", "FRANKENEVAL_SAMPLE_SIZE", DEFAULT_SAMPLE_SIZE)),
            sample_seed=int(get("sample_seed", "FRANKENEVAL_SAMPLE_SEED", DEFAULT_SAMPLE_SEED)),
            judge=_truthy(get("judge", "FRANKENEVAL_JUDGE", "0")),
            judge_model=get("judge_model", "FRANKENEVAL_JUDGE_MODEL"),
            judge_base_url=get("judge_base_url", "OPENAI_BASE_URL"),
            judge_cache=get("judge_cache", "FRANKENEVAL_JUDGE_CACHE"),
            description_source=source,
            seed_compatible=_truthy(get("seed_compatible", "FRANKENEVAL_SEED_COMPATIBLE", "0")),
            probe_cache=get("probe_cache", "FRANKENEVAL_PROBE_CACHE"),
        )


_JUDGES: dict[tuple, Any] = {}
_JUDGES_LOCK = threading.Lock()


def get_judge(settings: TaskSettings):
    """One :class:`frankeneval.grading.Judge` per (model, server, cache) in this process."""
    from frankeneval.grading import Judge, JudgeConfig

    key = (settings.judge_model, settings.judge_base_url, settings.judge_cache)
    with _JUDGES_LOCK:
        if key not in _JUDGES:
            _JUDGES[key] = Judge(JudgeConfig(model=settings.judge_model, base_url=settings.judge_base_url,
                                             cache_dir=settings.judge_cache))
        return _JUDGES[key]


# --------------------------------------------------------------------------- docs


def _choices_block(choices) -> str:
    if not choices:
        return ""
    return "\n\nChoices:\n" + "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices))


def _mathvista_doc(row: dict, control: str | None) -> dict:
    md = row.get("metadata") or {}
    image = row.get("decoded_image")
    return {
        "id": str(row["pid"]),
        "pid": str(row["pid"]),
        "question": row["question"],
        "choices": list(row.get("choices") or []),
        "unit": row.get("unit") or "",
        "precision": float(row["precision"]) if row.get("precision") is not None else 0.0,
        "answer": str(row["answer"]),
        "target": str(row["answer"]),
        "question_type": row["question_type"],
        "answer_type": row["answer_type"],
        "category": md.get("category", ""),
        "img_width": int(md.get("img_width") or 0),
        "img_height": int(md.get("img_height") or 0),
        "image_path": row.get("image_path") or "",
        "decoded_image": image,
        "caption_bard": row.get("caption_bard") or "",
        "control": control or "image",
        "description": "",
        "description_source": "",
    }


def _rows_list(rows) -> list[dict]:
    return rows if isinstance(rows, list) else [dict(r) for r in rows]


def build_docs(spec: dict, settings: TaskSettings) -> list[dict]:
    """The (sub-sampled) docs of one task: ``spec`` is the YAML's ``dataset_kwargs``."""
    benchmark = spec.get("benchmark")
    k, seed = settings.sample_size, settings.sample_seed
    if benchmark == "gsm8k":
        rows = load_benchmark_rows("gsm8k", settings.data_path)
        idx = subsample_indices(len(rows), k, seed)
        return [{"id": f"gsm8k_{i}", "question": rows[i]["question"], "answer": rows[i]["answer"],
                 "target": scoring.extract_gsm8k_target(rows[i]["answer"])} for i in idx]
    if benchmark == "math500":
        rows = load_benchmark_rows("math500", settings.data_path)
        idx = subsample_indices(len(rows), k, seed)
        return [{"id": str(rows[i].get("unique_id", f"math500_{i}")), "problem": rows[i]["problem"],
                 "target": str(rows[i]["answer"]), "subject": str(rows[i].get("subject", "")),
                 "level": str(rows[i].get("level", ""))} for i in idx]
    if benchmark == "mathvista":
        return _build_mathvista(spec, settings)
    if benchmark == "probes":
        return _build_probes(spec["probe_task"], settings)
    raise FrankenevalError(f"task dataset_kwargs.benchmark must be gsm8k, math500, mathvista or probes, not {benchmark!r}")


def _build_mathvista(spec: dict, settings: TaskSettings) -> list[dict]:
    control = spec.get("control") or None
    category = spec.get("category") or None
    rows = load_benchmark_rows("mathvista", settings.data_path)
    if category:
        if isinstance(rows, list):
            rows = [r for r in rows if (r.get("metadata") or {}).get("category") == category]
        else:
            rows = rows.filter(lambda m: m["category"] == category, input_columns="metadata")
    idx = subsample_indices(len(rows), settings.sample_size, settings.sample_seed)
    selected = [rows[i] for i in idx] if isinstance(rows, list) else _rows_list(rows.select(idx))
    docs = [_mathvista_doc(r, control) for r in selected]
    if control is None or control == "blackdesc":
        needs_pixels = control is None or _description_source(settings) == "judge"
        missing = [d for d in docs if d["decoded_image"] is None and not Path(d["image_path"]).is_file()]
        if needs_pixels and missing:
            raise DataNotFound(
                f"MathVista images not found: {len(missing)} of {len(docs)} selected rows lack their image "
                f"(e.g. {missing[0]['image_path']}). Put the images at images/<pid>.jpg next to testmini.jsonl "
                "(the hub dataset's layout), or unset FRANKENEVAL_DATA to read AI4Math/MathVista from the hub. "
                "The black-image controls need no images."
            )
    if control == "blackdesc":
        _add_descriptions(docs, settings)
    for d in docs:
        if control is not None:
            d["decoded_image"] = None  # the controls never show the image
    return docs


def _description_source(settings: TaskSettings) -> str:
    if settings.description_source == "auto":
        return "judge" if settings.judge else "caption_bard"
    return settings.description_source


def _add_descriptions(docs: list[dict], settings: TaskSettings) -> None:
    """Fill ``description`` / ``description_source`` (judge-written and cached, or the data's ``caption_bard``)."""
    source = _description_source(settings)
    judge = get_judge(settings) if source == "judge" else None
    for d in docs:
        if judge is not None:
            from frankeneval.grading import JudgeUnavailable

            try:
                d["description"], d["description_source"] = judge.describe_image(_open_image(d)), "judge"
                continue
            except JudgeUnavailable:
                pass
        if d["caption_bard"]:
            d["description"], d["description_source"] = d["caption_bard"], "caption_bard"
        else:
            d["description"], d["description_source"] = "", "missing"
    n_missing = sum(d["description_source"] == "missing" for d in docs)
    if n_missing:
        try:
            from loguru import logger

            logger.warning(f"black-image + description: {n_missing} of {len(docs)} items have no description "
                           "(no caption_bard and no judge); they are shown with an empty description.")
        except ImportError:  # pragma: no cover
            pass


def _probe_folder(task: str, settings: TaskSettings) -> Path:
    if settings.data_path:
        root = Path(settings.data_path).expanduser()
        for c in (root / "vision_probes", root):
            if (c / task / "data.jsonl").is_file() or (c / "data.jsonl").is_file():
                return c
        raise DataNotFound(
            f"probe task {task}: no {root / 'vision_probes' / task / 'data.jsonl'}; point FRANKENEVAL_DATA "
            "(or data_path) at a folder in the vision_probes format, or unset it to use the built-in rendered probes."
        )
    from frankeneval.probes import write_probe_pairs

    cache = Path(settings.probe_cache or Path.home() / ".cache" / "frankeneval" / "probes").expanduser()
    write_probe_pairs(cache, tasks=[task], n=100, seed=0)
    return cache


def _build_probes(task: str, settings: TaskSettings) -> list[dict]:
    from frankeneval.probes import load_probe_pairs

    pairs = load_probe_pairs(_probe_folder(task, settings), task)
    idx = subsample_indices(len(pairs), settings.sample_size, settings.sample_seed)
    docs = []
    for i in idx:
        p = pairs[i]
        target = p.answer("target")
        docs.append({"id": p.id, "task": task, "prompt": p.text_prompt, "image_path": str(p.target_image),
                     "target": json.dumps(target) if isinstance(target, list) else str(target),
                     "meta": json.dumps(p.meta)})
    return docs


# --------------------------------------------------------------------------- lmms-eval task class


class FrankenTask(ConfigurableTask):  # type: ignore[misc,valid-type]
    """A ConfigurableTask whose data come from :mod:`frankeneval.data` (hub or local), sub-sampled as the paper."""

    def __init__(self, *args, config: dict | None = None, **kwargs) -> None:
        if config is not None:
            config = dict(config)
            config.pop("class", None)
        super().__init__(*args, config=config, **kwargs)

    def download(self, dataset_kwargs: dict | None = None) -> None:
        import datasets

        self.settings = TaskSettings.resolve(self.config.metadata if isinstance(self.config.metadata, dict) else None)
        docs = build_docs(dict(dataset_kwargs or {}), self.settings)
        if not docs:
            raise FrankenevalError(f"task {self.config.task}: no items selected")
        has_pixels = any(d.get("decoded_image") is not None for d in docs)
        if not has_pixels:
            for d in docs:
                d.pop("decoded_image", None)
        split = self.config.test_split
        self.dataset = datasets.DatasetDict({split: datasets.Dataset.from_list(docs)})
        no_media = self.dataset[split].remove_columns(["decoded_image"]) if has_pixels else self.dataset[split]
        self.dataset_no_image = datasets.DatasetDict({split: no_media})

    def process_results(self, doc, results, full_docs=None):  # noqa: D401 - lmms-eval hook
        if results and isinstance(results[0], list):
            results = results[0]
        results = [r.strip() if r is not None else "" for r in results]
        return self.config.process_results(doc, results, settings=getattr(self, "settings", None))


# --------------------------------------------------------------------------- prompt hooks


def gsm8k_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return f"{INSTRUCTION}\n\n{doc['question']}"


def math500_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return f"{INSTRUCTION}\n\n{doc['problem']}"


def mathvista_question(doc: dict) -> str:
    """The question and, for multiple choice, a blank line, ``Choices:`` and ``A. …`` lines."""
    return doc["question"] + _choices_block(doc.get("choices"))


def mathvista_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    if doc.get("control") == "blackdesc":
        return (f"{INSTRUCTION}\n\nImage Description: {doc.get('description', '')}\n\n"
                f"Question: {mathvista_question(doc)}")
    return f"{INSTRUCTION}\n\n{mathvista_question(doc)}"


def _open_image(doc: dict):
    from PIL import Image

    if doc.get("decoded_image") is not None:
        return doc["decoded_image"].convert("RGB")
    path = doc.get("image_path")
    if not path or not Path(path).is_file():
        raise DataNotFound(f"image not found: {path!r} (MathVista images live at images/<pid>.jpg next to testmini.jsonl)")
    with Image.open(path) as im:
        return im.convert("RGB")


def black_image(width: int, height: int):
    """An all-black RGB image of the given size."""
    from PIL import Image

    if width <= 0 or height <= 0:
        raise FrankenevalError(f"black-image control needs the image size, got {width}x{height}")
    return Image.new("RGB", (int(width), int(height)), (0, 0, 0))


def mathvista_doc_to_visual(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list:
    if doc.get("control") in ("black", "blackdesc"):
        return [black_image(doc["img_width"], doc["img_height"])]
    return [_open_image(doc)]


def probe_doc_to_visual(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list:
    return [_open_image(doc)]


def probe_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["prompt"]


# --------------------------------------------------------------------------- scoring hooks


def _judge_fields(settings: TaskSettings, doc_id: str, rule_ok: bool, question: str, choices, target: str,
                  response: str) -> dict:
    if rule_ok:
        return {"judge_acc": {"id": doc_id, "score": 1, "judged_by": "rule"}, "judge_error": 0}
    j = get_judge(settings).judge(question, choices, target, response)
    if j.judge_error:
        return {"judge_acc": {"id": doc_id, "judge_error": True, "reason": j.reason}, "judge_error": 1}
    return {"judge_acc": {"id": doc_id, "score": int(bool(j.is_correct)), "judged_by": "judge",
                          "extracted": j.extracted_answer, "reason": j.reason}, "judge_error": 0}


def _math_results(doc: dict, results: list[str], settings: TaskSettings | None, question: str, *, gsm8k: bool) -> dict:
    settings = settings or TaskSettings.resolve()
    response = results[0] if results else ""
    extracted, method = scoring.extract_final_answer(response, allow_hashes=gsm8k)
    ok = scoring.math_equal(extracted, doc["target"], rel_tol=settings.rel_tol)
    out: dict[str, Any] = {"rule_acc": {"id": doc["id"], "score": int(ok), "extracted": extracted, "method": method,
                                        "target": doc["target"]}}
    if settings.judge:
        out.update(_judge_fields(settings, doc["id"], ok, question, None, doc["target"], response))
    return out


def gsm8k_process_results(doc: dict, results: list[str], settings: TaskSettings | None = None) -> dict:
    return _math_results(doc, results, settings, doc["question"], gsm8k=True)


def math500_process_results(doc: dict, results: list[str], settings: TaskSettings | None = None) -> dict:
    return _math_results(doc, results, settings, doc["problem"], gsm8k=False)


def mathvista_process_results(doc: dict, results: list[str], settings: TaskSettings | None = None) -> dict:
    settings = settings or TaskSettings.resolve()
    response = results[0] if results else ""
    ok, pred = scoring.mathvista_correct(response, doc)
    out: dict[str, Any] = {"rule_acc": {"id": doc["id"], "score": int(ok), "prediction": pred, "target": doc["target"],
                                        "category": doc.get("category", ""), "control": doc.get("control", "image")}}
    if settings.judge:
        out.update(_judge_fields(settings, doc["id"], ok, doc["question"], list(doc.get("choices") or []),
                                 doc["target"], response))
    return out


def probe_process_results(doc: dict, results: list[str], settings: TaskSettings | None = None) -> dict:
    response = results[0] if results else ""
    ok = scoring.probe_correct(doc["task"], response, json.loads(doc["meta"]), "target")
    return {"rule_acc": {"id": doc["id"], "score": int(ok), "answer": scoring.short_answer(response)[:200],
                         "target": doc["target"]}}


# --------------------------------------------------------------------------- aggregation


def mean_score(items: list) -> float:
    """Mean of the per-sample ``score`` (samples without one, i.e. judge errors, are left out); NaN if none."""
    scores = [float(x["score"]) if isinstance(x, dict) else float(x) for x in items
              if not (isinstance(x, dict) and "score" not in x)]
    return sum(scores) / len(scores) if scores else float("nan")


def count(items: list) -> int:
    """Number of flagged samples (e.g. judge errors)."""
    return int(sum(int(x) for x in items))
