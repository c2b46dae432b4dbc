"""Vision-probe hooks (``!function utils.X`` in ``franken_probe_*.yaml``): the target image of each pair with the
data's prompt, scored by rules against the target answer (no judge).

Data: ``$FRANKENEVAL_DATA/vision_probes/<task>/data.jsonl`` (or ``data_path``), else the built-in rendered probes
(:func:`frankeneval.miniature.world.write_vision_probes`, as ``make-probes`` renders them), written once into
``probe_cache``.
"""

from __future__ import annotations

import json
from pathlib import Path

from frankeneval.tasks import common
from frankeneval.tasks.common import TaskSettings, count, mean_score  # noqa: F401 - YAML hooks

from frankeneval.evaluation import scoring
from frankeneval.evaluation.data import DataNotFound, subsample_indices


def probe_folder(task: str, settings: TaskSettings) -> Path:
    """The folder holding ``<task>/data.jsonl``: under ``data_path``, else the rendered built-in probes."""
    if settings.data_path:
        root = Path(settings.data_path).expanduser()
        for c in (root / "vision_probes", root):
            if (c / task / "data.jsonl").is_file() or (c / "data.jsonl").is_file():
                return c
        raise DataNotFound(
            f"probe task {task}: no {root / 'vision_probes' / task / 'data.jsonl'}; point FRANKENEVAL_DATA "
            "(or data_path) at a folder in the vision_probes format, or unset it to use the built-in rendered probes."
        )
    from frankeneval.miniature.world import write_vision_probes

    cache = Path(settings.probe_cache or Path.home() / ".cache" / "frankeneval" / "probes").expanduser()
    write_vision_probes(cache, tasks=[task], n_per_task=100, seed=0)
    return cache


def build_docs(spec: dict, settings: TaskSettings) -> list[dict]:
    """The (sub-sampled) docs of probe task ``spec["probe_task"]`` (counting, ocr, grounding, recognition)."""
    from frankeneval.evaluation.probes import load_probe_pairs

    task = spec["probe_task"]
    pairs = load_probe_pairs(probe_folder(task, settings), task, check_images=False)  # common.check_docs decodes
    idx = subsample_indices(len(pairs), settings.sample_size, settings.sample_seed)
    docs = []
    for i in idx:
        p = pairs[i]
        target = p.answer("target")
        docs.append({"id": p.id, "task": task, "prompt": p.text_prompt, "image_path": str(p.target_image),
                     "target": json.dumps(target) if isinstance(target, list) else str(target),
                     "meta": json.dumps(p.meta)})
    return docs


def probe_doc_to_visual(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list:
    return [common.open_image(doc)]


def probe_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["prompt"]


def probe_process_results(doc: dict, results: list[str], settings: TaskSettings | None = None) -> dict:
    response = results[0] if results else ""
    ok = scoring.probe_correct(doc["task"], response, json.loads(doc["meta"]), "target")
    return {"rule_acc": {"id": doc["id"], "score": int(ok), "answer": scoring.short_answer(response)[:200],
                         "target": doc["target"]}}
