"""Reasoning localization: the layer-ablation sweep (docs/method.md §4.2).

For each question of GSM8K or MATH-500 (the paper's sub-sample: ``--samples`` k with ``--seed`` s), the model
answers once unablated and once with each swept LLM layer ablated (the layer returns its input: attention and
MLP outputs zeroed, residual kept). Greedy, ``max_new_tokens`` new tokens.

* Prompt: user message ``Please solve the problem step by step and put your answer in one "\\boxed{}".``, a
  blank line, the problem. The system prompt: :func:`frankeneval.evaluation.prompts.resolve_system_prompt` of the model
  (``system_prompt="auto"``: docs/method.md's name rule on the hub id / the directory's own name, a splice its sources';
  or ``reasoner`` / ``revisual`` / ``none`` / a text), recorded with the reason it was chosen.
* Answer: the ``<answer>`` tag's content, else the last ``\\boxed{}``
  (:func:`frankeneval.evaluation.scoring.extract_final_answer`); correct by
  :func:`frankeneval.evaluation.scoring.math_equal` (normalized match, math-verify, numbers within 1e-6).
  ``seed_compatible`` scores the same responses as the reference script does
  (:func:`~frankeneval.evaluation.scoring.reference_final_answer`: the first ``<answer>`` tag, "answer is" /
  "therefore" patterns, the last 50 characters;
  :func:`~frankeneval.evaluation.scoring.reference_math_correct`: adds a 1 % relative error). Both modes default
  to the reference's 2048 new tokens.

Speed by design: the (question, layer) units are packed into batched generate calls with a different
``Ablate`` per row, question by question (rows of one batch share a prompt length: no padding waste). Every
finished unit is appended to ``units.jsonl`` (resumable).

Output ``reasoning_localization.json`` schema::

    {
      "analysis": "reasoning_localization",
      "model": str, "dataset": "gsm8k" | "math500", "data": str, "samples": int | null, "seed": int,
      "system_prompt": {"name": "reasoner" | "revisual" | "none" | "text", "setting": str, "reason": str,
                        "text": str | null},
      "max_new_tokens": int, "seed_compatible": bool,
      "n_questions": int,
      "unablated_accuracy": float,
      "layers": [ {"layer": int,                 # unified LLM layer ablated (1 … n)
                   "decoder_layer": int,         # its decoder-module index, layer - 1
                   "accuracy": float, "delta": float,   # accuracy - unablated
                   "n": int}, ... ],
      "questions": [ {"index": int, "target": str, "unablated": {"answer": str|null, "correct": bool},
                      "ablated": {"<unified layer>": {"answer": str|null, "correct": bool}}}, ... ],
      "skipped": [ {"id": "<dataset>/<index>", "path": "file:line", "reason": str}, ... ]  # broken selected rows
    }                                                                                      # left out (--skip-broken)

``--dataset all`` (:func:`run_reasoning_sweeps`): GSM8K then MATH-500 in one run, one ``units.jsonl`` (unit keys
``<dataset>/<index>/<layer>``; its header's ``dataset`` is the list ``["gsm8k", "math500"]`` and its inputs hold
both datasets' content fingerprints) and one ``reasoning_localization.json``::

    {
      "analysis": "reasoning_localization", "dataset": "all", "datasets": ["gsm8k", "math500"],
      "model", "data", "samples", "seed", "system_prompt", "max_new_tokens", "seed_compatible": as above,
      "by_dataset": {"gsm8k": {"analysis", "dataset", "n_questions", "unablated_accuracy", "layers", "questions",
                               "skipped"},     # exactly a one-dataset run's fields (same settings, same data)
                     "math500": {...}},
      "skipped": [...]                         # both datasets' broken rows
    }

``--samples`` and ``--seed`` select each dataset's questions on their own (the same rule as a one-dataset run).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from frankeneval.core.outdir import claim_for, local_inputs
from frankeneval.core.results import write_json_atomic
from frankeneval.core.runstore import RunStore
from frankeneval.errors import FrankenevalError
from frankeneval.evaluation.data import (
    DEFAULT_SAMPLE_SEED,
    load_benchmark_rows,
    note_all_samples,
    row_where,
    subsample_indices,
)
from frankeneval.evaluation.inputs_check import check_inputs, format_skipped, parse_row
from frankeneval.evaluation.prompts import SystemPrompt, resolve_system_prompt
from frankeneval.evaluation.scoring import (
    extract_final_answer,
    extract_gsm8k_target,
    math_equal,
    reference_final_answer,
    reference_math_correct,
)
from frankeneval.localization.common import (
    MATH_INSTRUCTION,
    Unit,
    check_layers,
    model_input,
    rate,
    run_units,
)
from frankeneval.weights.fingerprint import data_fingerprint

__all__ = [
    "REASONING_MAX_NEW_TOKENS",
    "REFERENCE_MAX_NEW_TOKENS",
    "ALL",
    "DATASETS",
    "Question",
    "combine_reasoning",
    "format_reasoning_table",
    "load_questions",
    "question_prompt",
    "reasoning_units",
    "run_reasoning_sweep",
    "run_reasoning_sweeps",
    "select_questions",
    "summarize_reasoning",
]

REFERENCE_MAX_NEW_TOKENS = 2048  # the reference script's default
REASONING_MAX_NEW_TOKENS = REFERENCE_MAX_NEW_TOKENS  # both modes: the reference's budget (a shorter one cuts answers)
RESULTS_FILE = "reasoning_localization.json"
UNITS_FILE = "units.jsonl"
DATASETS = ("gsm8k", "math500")  # --dataset all: these, in this order
ALL = "all"


class Question(tuple):
    """``(index, problem, target)``: the row index in the full benchmark, the problem text, the gold answer."""

    __slots__ = ()

    def __new__(cls, index: int, problem: str, target: str):
        return super().__new__(cls, (index, problem, target))

    index = property(lambda self: self[0])
    problem = property(lambda self: self[1])
    target = property(lambda self: self[2])


def load_questions(dataset: str, *, data: str | os.PathLike | None = None, samples: int | None = 100,
                   seed: int = DEFAULT_SAMPLE_SEED) -> list[Question]:
    """The sub-sampled questions of ``gsm8k`` / ``math500`` (hub by default, or a local JSONL / data folder); a
    selected row that cannot be read raises :class:`~frankeneval.evaluation.inputs_check.BrokenInput` (see
    :func:`select_questions`)."""
    return select_questions(dataset, data=data, samples=samples, seed=seed)[0]


def select_questions(dataset: str, *, data: str | os.PathLike | None = None, samples: int | None = 100,
                     seed: int = DEFAULT_SAMPLE_SEED, skip_broken: bool = False,
                     progress: bool = True) -> tuple[list[Question], list[dict]]:
    """``(questions, skipped)``: the paper's sub-sample of the rows (a malformed line keeps its place), then every
    selected row parsed. A broken row (bad JSON, a missing field) raises one
    :class:`~frankeneval.evaluation.inputs_check.BrokenInput` naming its ``file:line``, or with ``skip_broken`` is left
    out (not replaced) and listed in ``skipped`` (``{"id": "<dataset>/<index>", "path": "file:line", "reason"}``)."""
    if dataset not in DATASETS:
        raise FrankenevalError(f"--dataset must be one of {', '.join(DATASETS)}, not {dataset!r}")
    rows = load_benchmark_rows(dataset, data, keep_broken=True)
    note_all_samples(samples, len(rows), f"{dataset} questions")

    def parse(i: int) -> Question:
        if dataset == "gsm8k":
            return parse_row(rows[i], row_where(rows[i], dataset, i),
                             lambda r: Question(i, _text(r, "question"), extract_gsm8k_target(_text(r, "answer"))))
        return parse_row(rows[i], row_where(rows[i], dataset, i),
                         lambda r: Question(i, _text(r, "problem"), str(r["answer"])))

    questions, skipped = check_inputs(subsample_indices(len(rows), samples, seed), parse,
                                      ident=lambda i: f"{dataset}/{i}", skip=skip_broken, what=f"{dataset} rows",
                                      progress=progress)
    if skipped and not questions:
        raise FrankenevalError(f"every selected {dataset} row is broken ({len(skipped)}); nothing to run")
    return questions, skipped


def _text(row: dict, name: str) -> str:
    value = row[name]
    if not isinstance(value, str):
        raise TypeError(f"field {name!r} is {type(value).__name__}, not text")
    return value


def question_prompt(problem: str) -> str:
    """The method's user message: the step-by-step / boxed instruction, a blank line, the problem."""
    return f"{MATH_INSTRUCTION}\n\n{problem}"


def unit_key(dataset: str, q: Question, layer: int | None) -> str:
    return f"{dataset}/{q.index}/" + ("none" if layer is None else f"L{layer}")


def reasoning_units(
    dataset: str, questions: Sequence[Question], layers: Sequence[int], system: str | None
) -> list[Unit]:
    """Units question by question: unablated first, then each ablated layer (unified index)."""
    from frankeneval.engine.generation import GenRequest
    from frankeneval.engine.interventions import Ablate

    units = []
    for q in questions:
        req = GenRequest(question_prompt(q.problem), [], system)
        for layer in [None, *layers]:
            iv = [] if layer is None else [Ablate((layer,))]  # unified LLM layer
            units.append(Unit(unit_key(dataset, q, layer), req, iv,
                              {"index": q.index, "layer": layer}, group=q.index))
    return units


REFILL_CHUNK = 8  # units per generate call = this x the rows, when answers end at EOS (continuous refilling)


def make_executor(generator, *, max_new_tokens: int, ignore_eos: bool = False, seed_compatible: bool = False,
                  rows: int | None = None):
    """``seed_compatible``: the checkpoint's generation_config repetition penalty applies, as in the reference.
    ``rows``: decode rows per call (default: the whole batch at once); fewer rows than units lets the Generator
    refill a row whose answer ended (:mod:`frankeneval.engine.continuous`), with the same answers."""
    penalty = "checkpoint" if seed_compatible else None

    def execute(batch: list[Unit]) -> list[dict]:
        results = generator.generate([u.request for u in batch], max_new_tokens=max_new_tokens, ignore_eos=ignore_eos,
                                     interventions=[u.interventions for u in batch],
                                     batch_size=min(rows or len(batch), len(batch)), repetition_penalty=penalty)
        out = []
        for r in results:
            answer, method = extract_final_answer(r.text)
            out.append({"response": r.text, "answer": answer, "method": method, "n_tokens": len(r.token_ids),
                        "finish_reason": r.finish_reason})
        return out

    return execute


def run_reasoning_sweep(
    generator,
    dataset: str,
    questions: Sequence[Question],
    layers: Sequence[int],
    out_dir: str | os.PathLike,
    **settings: Any,
) -> dict:
    """Run (or resume) the ablation sweep of one dataset; write ``units.jsonl`` + ``reasoning_localization.json``.

    Keywords: those of :func:`run_reasoning_sweeps` (``model_name`` required).
    """
    return run_reasoning_sweeps(generator, {dataset: questions}, layers, out_dir, **settings)


def run_reasoning_sweeps(
    generator,
    questions_by_dataset: Mapping[str, Sequence[Question]],
    layers: Sequence[int],
    out_dir: str | os.PathLike,
    *,
    model_name: str,
    system_prompt: SystemPrompt | str | None = "auto",
    reasoning_prompt: bool | None = None,
    max_new_tokens: int = REASONING_MAX_NEW_TOKENS,
    batch_size: int = 32,
    seed_compatible: bool = False,
    progress: bool = True,
    meta: dict | None = None,
    ignore_eos: bool = False,
    skipped: Sequence[dict] = (),
) -> dict:
    """Run (or resume) the ablation sweep of one dataset or several in one run (``--dataset all``: GSM8K then
    MATH-500), into one ``units.jsonl`` and one ``reasoning_localization.json``; return the results.

    One dataset: the single-dataset schema (module docstring). Several: the combined schema, whose ``by_dataset``
    blocks are what a run of each dataset alone gives. The datasets' units run in the given order, in one store
    whose header names them all and whose inputs hold each dataset's content fingerprint (``"<dataset> data"``), so a
    resume reuses a unit only with the same model, data and settings; a one-dataset run's store is never mixed in.

    ``ignore_eos`` (benchmarks on random weights only): every answer runs to ``max_new_tokens``; recorded in the store
    header and the results, so such a run is never mixed with a real one.

    ``system_prompt``: a :class:`SystemPrompt`, or a setting resolved for ``model_name`` (``auto``, ``reasoner``,
    ``revisual``, ``none``, ``@FILE``, a text); ``reasoning_prompt`` (old spelling): True = reasoner, False = none.
    ``skipped``: the selected rows left out as broken (:func:`select_questions`; ids ``<dataset>/<index>``),
    recorded in the results (each dataset's block holds its own).
    """
    datasets = list(questions_by_dataset)
    if not datasets or any(d not in DATASETS for d in datasets) or len(set(datasets)) != len(datasets):
        raise FrankenevalError(f"datasets must be distinct ones of {', '.join(DATASETS)}, not {datasets}")
    if reasoning_prompt is not None:
        system_prompt = "reasoner" if reasoning_prompt else "none"
    prompt = (
        system_prompt if isinstance(system_prompt, SystemPrompt) else resolve_system_prompt(model_name, system_prompt)
    )
    out = Path(claim_for("localize-reasoning", out_dir, inputs=local_inputs(("model", model_name))))
    n_layers = generator.model.config.get_text_config().num_hidden_layers
    check_layers(layers, n_layers)
    system = prompt.text
    # seed-compatible decoding takes the checkpoint's repetition penalty: other responses, recorded in the header
    penalty = generator.checkpoint_repetition_penalty() if seed_compatible else None
    # one dataset: the header as it always was (its stores resume); several: the list, in run order
    store = RunStore(out / UNITS_FILE, header={"analysis": "reasoning_localization", "model": model_name,
                                               "dataset": datasets[0] if len(datasets) == 1 else datasets,
                                               "max_new_tokens": max_new_tokens,
                                               "system": system, **({"ignore_eos": True} if ignore_eos else {}),
                                               **({"repetition_penalty": penalty} if penalty else {})},
                     required={"response": str, "answer": (str, type(None))},
                     inputs={"model": model_input(generator, model_name),
                             **{f"{d} data": {"content": data_fingerprint([list(q) for q in questions])}
                                for d, questions in questions_by_dataset.items()}})
    units = [u for d, questions in questions_by_dataset.items()
             for u in reasoning_units(d, questions, layers, system)]
    todo = len(store.missing(u.key for u in units))
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=todo, desc="ablation sweep", unit="gen")
    try:
        # answers of mixed length (EOS on): REFILL_CHUNK x batch_size units a call, batch_size rows decoding, a row
        # refilled as soon as its answer ends; fixed lengths (--ignore-eos) gain nothing from it
        chunk = 1 if ignore_eos else REFILL_CHUNK
        run_units(units, make_executor(generator, max_new_tokens=max_new_tokens, ignore_eos=ignore_eos,
                                       seed_compatible=seed_compatible, rows=batch_size), store,
                  batch_size=batch_size * chunk,
                  progress=bar.update if bar else None)
    finally:
        if bar:
            bar.close()
    records = store.records()
    blocks = {d: {**summarize_reasoning(records, d, questions, layers, seed_compatible=seed_compatible),
                  "skipped": [s for s in skipped if str(s.get("id", "")).startswith(f"{d}/")]}
              for d, questions in questions_by_dataset.items()}
    results = blocks[datasets[0]] if len(datasets) == 1 else combine_reasoning(blocks)
    if ignore_eos:
        results["ignore_eos"] = True
    results.update({"model": model_name, "system_prompt": prompt.record(), "max_new_tokens": max_new_tokens,
                    "seed_compatible": seed_compatible, **(meta or {}), "skipped": list(skipped)})
    write_json_atomic(out / RESULTS_FILE, results, indent=1, ensure_ascii=False, newline=False)
    return results


def combine_reasoning(blocks: Mapping[str, dict]) -> dict:
    """The combined results of several datasets' summaries (:func:`summarize_reasoning`, in run order): the
    ``all`` schema of the module docstring."""
    return {"analysis": "reasoning_localization", "dataset": ALL, "datasets": list(blocks),
            "by_dataset": {d: dict(b) for d, b in blocks.items()}}


def summarize_reasoning(records: dict[str, dict], dataset: str, questions: Sequence[Question],
                        layers: Sequence[int], *, seed_compatible: bool = False) -> dict:
    """Accuracy unablated and per ablated layer from finished unit records (schema in the module docstring)."""
    cache: dict[tuple[Any, str], bool] = {}

    def answer_of(rec: dict):
        # seed-compatible: the reference's extraction from the stored response (same generations either way)
        return reference_final_answer(rec.get("response") or "") if seed_compatible else rec.get("answer")

    def judge(answer, target) -> bool:
        k = (answer, target)
        if k not in cache:
            cache[k] = (reference_math_correct(answer, target) if seed_compatible
                        else math_equal(answer, target))
        return cache[k]

    per_q = []
    base_ok: list[bool] = []
    layer_ok: dict[int, list[bool]] = {L: [] for L in layers}
    for q in questions:
        rec = records[unit_key(dataset, q, None)]
        ok = judge(answer_of(rec), q.target)
        base_ok.append(ok)
        ablated = {}
        for L in layers:
            r = records[unit_key(dataset, q, L)]
            c = judge(answer_of(r), q.target)
            layer_ok[L].append(c)
            ablated[str(L)] = {"answer": answer_of(r), "correct": c}
        per_q.append({"index": q.index, "target": q.target, "unablated": {"answer": answer_of(rec), "correct": ok},
                      "ablated": ablated})
    base = rate(base_ok)
    return {
        "analysis": "reasoning_localization",
        "dataset": dataset,
        "n_questions": len(questions),
        "unablated_accuracy": base,
        "layers": [{"layer": L, "decoder_layer": L - 1, "accuracy": rate(layer_ok[L]),
                    "delta": (rate(layer_ok[L]) - base) if base is not None and layer_ok[L] else None,
                    "n": len(layer_ok[L])} for L in layers],
        "questions": per_q,
    }


def format_reasoning_table(results: dict) -> str:
    """Terminal table: accuracy and change per ablated layer (one dataset), or per layer each dataset's accuracy and
    change side by side (``--dataset all``)."""
    if results.get("by_dataset"):
        return _format_combined(results)
    base = results["unablated_accuracy"]
    acc = "-" if base is None else f"{base:.3f}"
    lines = [f"{results['dataset']}: {results['n_questions']} questions, unablated accuracy {acc}",
             f"{'layer':>5} {'accuracy':>9} {'delta':>8}", "-" * 24]
    for row in results["layers"]:
        acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        d = "-" if row["delta"] is None else f"{row['delta']:+.3f}"
        lines.append(f"{row['layer']:>5} {acc:>9} {d:>8}")
    return "\n".join(lines + format_skipped(results.get("skipped")))


def _format_combined(results: dict) -> str:
    blocks = results["by_dataset"]

    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = ["; ".join(f"{d}: {b['n_questions']} questions, unablated accuracy "
                       f"{num(b['unablated_accuracy'], '.3f')}" for d, b in blocks.items()),
             f"{'layer':>5} | " + " | ".join(f"{d[:18]:^18}" for d in blocks),
             f"{'':>5} | " + " | ".join(f"{'accuracy':>9}{'delta':>9}" for _ in blocks)]
    lines.append("-" * len(lines[-1]))
    rows = {d: {r["layer"]: r for r in b["layers"]} for d, b in blocks.items()}
    layers = list(dict.fromkeys(L for d in blocks for L in rows[d]))
    for L in layers:
        cells = []
        for d in blocks:
            r = rows[d].get(L) or {}
            cells.append(f"{num(r.get('accuracy'), '.3f'):>9}{num(r.get('delta'), '+.3f'):>9}")
        lines.append(f"{L:>5} | " + " | ".join(cells))
    return "\n".join(lines + format_skipped(results.get("skipped")))
