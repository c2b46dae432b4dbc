"""GSM8K hooks (``!function utils.X`` in ``franken_gsm8k.yaml``; the lm-eval task ``franken_gsm8k`` reuses them).

Data: hub ``openai/gsm8k`` (config ``main``) or ``$FRANKENEVAL_DATA/gsm8k/test.jsonl``; the target is the number
after ``####``. Scored by rules (``\\boxed{}``, then ``####``; no last-number fallback) and, when on, the judge.
"""

from __future__ import annotations

from frankeneval.tasks import common
from frankeneval.tasks.common import INSTRUCTION, TaskSettings, count, judge_accuracy, mean_score  # noqa: F401 - YAML hooks

from frankeneval.evaluation import scoring
from frankeneval.evaluation.data import load_benchmark_rows, row_where, subsample_indices


def build_docs(spec: dict, settings: TaskSettings) -> list[dict]:
    """The (sub-sampled) GSM8K docs: ``id``, ``question``, ``answer`` (the worked solution) and ``target``."""
    rows = load_benchmark_rows("gsm8k", settings.data_path)
    idx = subsample_indices(len(rows), settings.sample_size, settings.sample_seed)
    return [common.row_doc(rows[i], row_where(rows[i], "gsm8k", i), f"gsm8k_{i}",
                           lambda r, i=i: {"id": f"gsm8k_{i}", "question": r["question"], "answer": r["answer"],
                                           "target": scoring.extract_gsm8k_target(r["answer"])}) for i in idx]


def gsm8k_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return f"{INSTRUCTION}\n\n{doc['question']}"


def gsm8k_process_results(doc: dict, results: list[str], settings: TaskSettings | None = None) -> dict:
    return common.math_results(doc, results, settings, doc["question"], gsm8k=True)
