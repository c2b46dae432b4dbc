"""MATH-500 hooks (``!function utils.X`` in ``franken_math500.yaml``; the lm-eval task ``franken_math500`` reuses them).

Data: hub ``HuggingFaceH4/MATH-500`` or ``$FRANKENEVAL_DATA/math500/test.jsonl``. Scored by rules (``\\boxed{}``,
symbolic equality; no last-number fallback) and, when on, the judge.
"""

from __future__ import annotations

from frankeneval.tasks import common
from frankeneval.tasks.common import INSTRUCTION, TaskSettings, count, judge_accuracy, mean_score  # noqa: F401 - YAML hooks

from frankeneval.evaluation.data import load_benchmark_rows, row_where, subsample_indices


def _rows_list(rows) -> list[dict]:
    return rows if isinstance(rows, list) else [dict(r) for r in rows]


def _level(row: dict) -> int | None:
    """The row's difficulty level as an int (``4``, ``"4"`` or ``"Level 4"``), None if it has none."""
    text = str(row.get("level", "")).strip().lower().removeprefix("level").strip()
    return int(text) if text.isdigit() else None


def build_docs(spec: dict, settings: TaskSettings) -> list[dict]:
    """The (sub-sampled) MATH-500 docs: ``id`` (the data's ``unique_id``), ``problem``, ``target``, ``subject``,
    ``level``.

    ``spec`` (the YAML's ``dataset_kwargs``): ``min_level`` keeps the rows of level >= it (v2 reasoning: 4)."""
    rows = load_benchmark_rows("math500", settings.data_path)
    min_level = spec.get("min_level")
    if min_level is not None:  # v2 reasoning: level >= 4; filter first (dataset order), then sub-sample
        rows = [r for r in _rows_list(rows) if _level(r) is not None and _level(r) >= int(min_level)]
    idx = subsample_indices(len(rows), settings.sample_size, settings.sample_seed)
    return [common.row_doc(rows[i], row_where(rows[i], "math500", i), f"math500_{i}",
                           lambda r, i=i: {"id": str(r.get("unique_id", f"math500_{i}")), "problem": r["problem"],
                                           "target": str(r["answer"]), "subject": str(r.get("subject", "")),
                                           "level": str(r.get("level", ""))}) for i in idx]


def math500_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return f"{INSTRUCTION}\n\n{doc['problem']}"


def math500_process_results(doc: dict, results: list[str], settings: TaskSettings | None = None) -> dict:
    return common.math_results(doc, results, settings, doc["problem"], gsm8k=False)
