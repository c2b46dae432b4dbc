"""What every frankeneval task shares; each benchmark's own hooks live in its folder's ``utils.py``
(``gsm8k/``, ``math500/``, ``mathvista/``, ``probes/``, ``franken_world/``), as lmms-eval's own tasks are organised.

Shared here: the task settings (:class:`TaskSettings`), judge access (:func:`get_judge`, :func:`judge_fields`), the
instruction of the math benchmarks, image opening, the aggregations (:func:`mean_score`, :func:`count`) and
:class:`LocalDocsTask`, the harness-free part of the task classes: their data come from the folder's
``build_docs(spec, settings)``, and each item's finish reason from its responses. The lmms-eval task class of a folder
is a plain subclass of :class:`frankeneval.tasks.lmms_task.FrankenTask` in its own ``task.py`` (e.g.
``gsm8k/task.py``: ``Gsm8kTask``), the only modules that import lmms-eval (about 10 s): the hooks, the preflight
check (:mod:`frankeneval.tasks.preflight`) and the lm-eval tasks (``lm_eval_tasks/``, which reuse the folders'
data, prompt and scoring functions) import without it.

Every task YAML names its folder's class (``class: !function task.Gsm8kTask``); its ``dataset_kwargs`` say *what* to
load (``benchmark``, MathVista ``category`` and ``control``, or ``probe_task``) and its ``metadata`` may carry task
arguments. Settings are read, first match wins, from the task's ``metadata`` (task arguments), the environment, then
the defaults:

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
judge_timeout          FRANKENEVAL_JUDGE_TIMEOUT       seconds the judge gets per try (60)
judge_retries          FRANKENEVAL_JUDGE_RETRIES       retries after a failed try: 429, 5xx, timeout (3)
judge_probe            FRANKENEVAL_JUDGE_PROBE         1 = ask the judge once before the run, fail fast (on)
description_source     FRANKENEVAL_DESCRIPTION_SOURCE  auto | judge | caption_bard (auto: judge if on, else
                                                       caption_bard)
seed_compatible        FRANKENEVAL_SEED_COMPATIBLE     1 = the reference's rules: a 1 % relative error accepted, and
                                                       grading seed unless grading is set (off)
grading                FRANKENEVAL_GRADING             paper | seed: with the judge on, rules first (paper) or the
                                                       judge decides every item, as the reference (seed) (paper;
                                                       seed with seed_compatible)
extraction             FRANKENEVAL_EXTRACTION          rules | mathvista: MathVista also scored by its own protocol
                                                       (quick rules, LLM extraction, official normalization) (rules)
probe_cache            FRANKENEVAL_PROBE_CACHE         where built-in probes are rendered (~/.cache/frankeneval/probes)
skip_broken            FRANKENEVAL_SKIP_BROKEN         1 = leave out selected items whose row or image cannot be read
                                                       (logged; ``transfer --skip-broken`` records them) instead of
                                                       stopping before the run (off)
=====================  ==============================  ========================================================

Before any item runs, every selected doc's row is parsed and its image (the image setting's) decoded
(:func:`check_docs`): a broken one stops the task in one line naming the file (or ``file:line``).

Metrics: ``rule_acc`` always; ``judge_acc`` and ``judge_error`` only when the judge is on (absent otherwise); ``*_acc``
are fractions in [0, 1], ``judge_error`` a count; ``hit_limit`` (a count: answers that ran to the task's
``max_new_tokens`` and are cut off) whenever the model is ``franken_qwen``, whose answers carry their finish reason
(:meth:`LocalDocsTask.apply_filters`); ``timed_out`` (a count: answers cut off by ``franken_qwen``'s
``item_time_limit``, left out of every accuracy, not counted wrong: :meth:`LocalDocsTask.score`) likewise. A sample the
rules mark correct is correct for the judge too (rules first; no call); a sample whose judging failed -- the judge did
not answer, or its reply had no clear boolean ``is_correct`` -- is not marked wrong (its sample has no ``score``) and is
counted in ``judge_error``; ``judge_acc`` (:func:`judge_accuracy`) is the credited share of all samples and is defined
only when every sample has a verdict: with any judge error it is NaN (shown as "–" beside the error count), never a
number that counts errors as wrong or one over the rule-credited samples alone. ``grading: seed`` lets the judge decide
every item (see :func:`judge_fields`). MathVista with ``extraction: mathvista`` adds ``mathvista_acc`` (MathVista's own
protocol). With the judge on (or ``description_source: judge``), loading a task's docs first asks the judge once
(:meth:`frankeneval.evaluation.grading.Judge.probe`): a judge that does not answer stops the run with one line naming
the server and model. Per-sample values are dicts with ``id`` and ``score`` (0/1), kept in lmms-eval's samples file for
bootstrapping.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from frankeneval.errors import FrankenevalError
from frankeneval.evaluation import scoring
from frankeneval.evaluation.data import DEFAULT_SAMPLE_SEED, DEFAULT_SAMPLE_SIZE, DataNotFound
from frankeneval.evaluation.inputs_check import (
    Broken,
    check_inputs,
    format_skipped,
    image_problem,
    parse_row,
)

INSTRUCTION = 'Please solve the problem step by step and put your answer in one "\\boxed{}".'



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
    judge_timeout: float | None = None  # None: JudgeConfig's default (60 s)
    judge_retries: int | None = None  # None: JudgeConfig's default (3)
    judge_probe: bool = True
    description_source: str = "auto"
    seed_compatible: bool = False
    probe_cache: str | None = None
    grading: str = "paper"  # paper | seed
    extraction: str = "rules"  # rules | mathvista
    skip_broken: bool = False

    @property
    def rel_tol(self) -> float | None:
        return 0.01 if self.seed_compatible else None

    @classmethod
    def resolve(cls, metadata: dict | None = None, environ: Mapping[str, str] | None = None) -> "TaskSettings":
        md = dict(metadata or {})
        environ = os.environ if environ is None else environ

        def get(key: str, env: str, default: Any = None) -> Any:
            if md.get(key) is not None:
                return md[key]
            value = str(environ.get(env, "")).strip()
            return value if value else default

        source = str(get("description_source", "FRANKENEVAL_DESCRIPTION_SOURCE", "auto")).lower()
        if source not in ("auto", "judge", "caption_bard"):
            raise FrankenevalError(f"description_source must be auto, judge or caption_bard, not {source!r}")
        seed_compatible = _truthy(get("seed_compatible", "FRANKENEVAL_SEED_COMPATIBLE", "0"))
        grading = str(get("grading", "FRANKENEVAL_GRADING", "seed" if seed_compatible else "paper")).strip().lower()
        if grading not in ("paper", "seed"):
            raise FrankenevalError(f"grading must be paper or seed, not {grading!r}")
        extraction = str(get("extraction", "FRANKENEVAL_EXTRACTION", "rules")).strip().lower()
        if extraction not in ("rules", "mathvista"):
            raise FrankenevalError(f"extraction must be rules or mathvista, not {extraction!r}")
        from frankeneval.evaluation.grading import judge_number_setting

        timeout = get("judge_timeout", "FRANKENEVAL_JUDGE_TIMEOUT")
        retries = get("judge_retries", "FRANKENEVAL_JUDGE_RETRIES")
        return cls(
            data_path=get("data_path", "FRANKENEVAL_DATA"),
            sample_size=int(get("sample_size", "FRANKENEVAL_SAMPLE_SIZE", DEFAULT_SAMPLE_SIZE)),
            sample_seed=int(get("sample_seed", "FRANKENEVAL_SAMPLE_SEED", DEFAULT_SAMPLE_SEED)),
            judge=_truthy(get("judge", "FRANKENEVAL_JUDGE", "0")),
            judge_model=get("judge_model", "FRANKENEVAL_JUDGE_MODEL"),
            judge_base_url=get("judge_base_url", "OPENAI_BASE_URL"),
            judge_cache=get("judge_cache", "FRANKENEVAL_JUDGE_CACHE"),
            judge_timeout=None if timeout is None else judge_number_setting(
                timeout, integer=False, source="judge_timeout (FRANKENEVAL_JUDGE_TIMEOUT)"),
            judge_retries=None if retries is None else judge_number_setting(
                retries, integer=True, source="judge_retries (FRANKENEVAL_JUDGE_RETRIES)"),
            judge_probe=_truthy(get("judge_probe", "FRANKENEVAL_JUDGE_PROBE", "1")),
            description_source=source,
            seed_compatible=seed_compatible,
            probe_cache=get("probe_cache", "FRANKENEVAL_PROBE_CACHE"),
            grading=grading,
            extraction=extraction,
            skip_broken=_truthy(get("skip_broken", "FRANKENEVAL_SKIP_BROKEN", "0")),
        )


_JUDGES: dict[tuple, Any] = {}
_JUDGES_LOCK = threading.Lock()


def get_judge(settings: TaskSettings):
    """One :class:`frankeneval.evaluation.grading.Judge` per (model, server, cache, timeout, retries) in this
    process."""
    from frankeneval.evaluation.grading import Judge, JudgeConfig

    key = (settings.judge_model, settings.judge_base_url, settings.judge_cache, settings.judge_timeout,
           settings.judge_retries)
    with _JUDGES_LOCK:
        if key not in _JUDGES:
            _JUDGES[key] = Judge(JudgeConfig(model=settings.judge_model, base_url=settings.judge_base_url,
                                             cache_dir=settings.judge_cache, timeout_s=settings.judge_timeout,
                                             max_retries=settings.judge_retries))
        return _JUDGES[key]


def judge_in_use(settings: TaskSettings) -> bool:
    """Whether the task calls the judge: grading on, descriptions written by the judge, or MathVista's extraction."""
    return settings.judge or settings.description_source == "judge" or settings.extraction == "mathvista"


def probe_judge(environ: Mapping[str, str]) -> None:
    """Fail fast before starting harness processes with ``environ``: when it turns the judge on (and
    ``FRANKENEVAL_JUDGE_PROBE`` is not 0), ask the judge once; JudgeNotAnswering (one line) if it does not answer."""
    from frankeneval.evaluation.grading import Judge, JudgeConfig

    settings = TaskSettings.resolve(None, environ=environ)
    if judge_in_use(settings) and settings.judge_probe:
        Judge(JudgeConfig(model=settings.judge_model, base_url=settings.judge_base_url,
                          api_key=environ.get("OPENAI_API_KEY") or None, cache_dir=settings.judge_cache,
                          timeout_s=settings.judge_timeout, max_retries=settings.judge_retries)).probe()


# --------------------------------------------------------------------------- shared hooks


def open_image(doc: dict):
    """The doc's image as RGB: its ``decoded_image``, else the file at ``image_path``."""
    from PIL import Image

    if doc.get("decoded_image") is not None:
        return doc["decoded_image"].convert("RGB")
    path = doc.get("image_path")
    if not path or not Path(path).is_file():
        raise DataNotFound(f"image not found: {path!r} "
                           "(MathVista images live at images/<pid>.jpg next to testmini.jsonl)")
    with Image.open(path) as im:
        return im.convert("RGB")


def row_doc(row: Any, where: str, doc_id: str, make) -> dict:
    """``make(row)``, or for a row lacking a field a placeholder doc naming ``where`` (:func:`check_docs` stops
    on it, or skips it)."""
    try:
        return parse_row(row, where, make)
    except Broken as exc:
        return {"id": str(doc_id), "broken": {"path": exc.where, "reason": exc.reason}}


def _check_doc(doc: dict) -> dict:
    if "broken" in doc:
        raise Broken(doc["broken"]["path"], doc["broken"]["reason"])
    path = doc.get("image_path")
    if path and doc.get("decoded_image") is None and doc.get("control", "image") == "image":
        problem = image_problem(path)
        if problem:
            raise Broken(path, problem)
    return doc


def check_docs(task: str, docs: list[dict], settings: TaskSettings) -> tuple[list[dict], list[dict]]:
    """``(usable docs, skipped)``: every selected doc's row parsed (no placeholder of :func:`row_doc`) and, in the
    image setting, its image file decoded. A broken one raises one
    :class:`~frankeneval.evaluation.inputs_check.BrokenInput`, or with ``skip_broken`` is left out and returned as
    ``{"task", "id", "path", "reason"}``. A doc the task leaves out (``left_out``, e.g. a black + description item
    whose description cannot be had) is always returned among the skipped, never run."""
    left_out = [{"id": str(d.get("id")), **d["left_out"]} for d in docs if "left_out" in d]
    docs = [d for d in docs if "left_out" not in d]  # e.g. no description to be had: out of the setting, counted
    good, skipped = check_inputs(docs, _check_doc, ident=lambda d: str(d.get("id")), skip=settings.skip_broken,
                                 what=f"{task} items", progress=False)
    return good, [{"task": task, **s} for s in skipped + left_out]


def checked_docs(task: str, docs: list[dict], settings: TaskSettings) -> list[dict]:
    """:func:`check_docs`, the skipped ones logged (a harness run's log; ``transfer`` records them in its run)."""
    good, skipped = check_docs(task, docs, settings)
    if skipped:
        print(f"frankeneval task {task}: " + "\n".join(format_skipped(skipped)), file=sys.stderr)
    return good


def _task_configs() -> dict[str, tuple[Path, dict]]:
    """Every frankeneval task and group YAML by name: ``(file, config)``, an ``include``'s keys and metadata merged
    (``!function`` lines are left out: only the data keys are read)."""
    import yaml

    def load(f: Path) -> dict:
        text = f.read_text(encoding="utf-8")
        return yaml.safe_load("\n".join(line for line in text.splitlines() if "!function" not in line)) or {}

    out = {}
    for f in sorted(Path(__file__).resolve().parent.rglob("*.yaml")):
        cfg = load(f)
        name = cfg.get("group") or cfg.get("task")
        if not isinstance(name, str):
            continue
        if cfg.get("include"):
            base = load(f.parent / cfg["include"])
            cfg = {**base, **cfg, "metadata": {**(base.get("metadata") or {}), **(cfg.get("metadata") or {})}}
        out[name] = (f, cfg)
    return out


def check_task_inputs(names: list[str], environ: Mapping[str, str]) -> list[dict]:
    """Before a harness run under ``environ``: every frankeneval task among ``names`` (groups expanded) that shows
    the image or reads local rows has its docs built and checked (:func:`check_docs`) as its run will. Returns the
    skipped items (``skip_broken`` on), or raises :class:`~frankeneval.evaluation.inputs_check.BrokenInput`. The
    controls (same rows as their image task, no image) and hub data are left to the run; other harness tasks are
    not read."""
    import importlib

    configs = _task_configs()
    leaves: dict[str, tuple[Path, dict]] = {}

    def expand(name: str) -> None:
        if name not in configs or name in leaves:
            return
        f, cfg = configs[name]
        if "group" in cfg:
            for member in cfg.get("task") or []:
                expand(member if isinstance(member, str) else str((member or {}).get("task", "")))
        else:
            leaves[name] = (f, cfg)

    for name in names:
        expand(name)
    skipped: list[dict] = []
    probed = False
    for name, (f, cfg) in leaves.items():
        spec, md = dict(cfg.get("dataset_kwargs") or {}), dict(cfg.get("metadata") or {})
        if spec.get("control") and spec.get("control") != "blackdesc":  # blackdesc: its descriptions are read
            continue
        settings = TaskSettings.resolve(md, environ=environ)
        if spec.get("control") == "blackdesc" and settings.data_path and not probed:
            probe_judge(environ)  # the descriptions ask the judge: one line now when it does not answer at all
            probed = True
        utils = importlib.import_module(f"frankeneval.tasks.{f.parent.name}.utils")
        if f.parent.name == "franken_world":  # world_docs reads its settings from the metadata, else os.environ
            for key, env in (("sample_size", "FRANKENEVAL_SAMPLE_SIZE"), ("sample_seed", "FRANKENEVAL_SAMPLE_SEED"),
                             ("world_dir", "FRANKENEVAL_WORLD")):
                md[key] = md.get(key) or environ.get(env) or None
            docs = utils.world_docs(str(spec.get("axis")), md, None)
        elif settings.data_path or f.parent.name == "probes":  # hub rows: the run itself checks them
            docs = utils.build_docs(spec, settings)
        else:
            continue
        skipped += check_docs(name, docs, settings)[1]
    return skipped


def judge_fields(settings: TaskSettings, doc_id: str, rule_ok: bool, question: str, choices, target: str,
                 response: str, *, full_question: str | None = None) -> dict:
    """``judge_acc`` / ``judge_error`` of one sample. ``grading: paper`` (default): rules first -- a rule-correct
    sample costs no judge call; a judge failure is ``judge_error``, not a wrong answer. ``grading: seed`` (the
    reference): the judge decides every sample from the reference's extraction of the response
    (:func:`frankeneval.evaluation.scoring.reference_final_answer`, the same for every task), with the reference's texts
    (``full_question``: the question with its Choices block, else ``question``; choices as a JSON list); its verdict
    is ``bool(is_correct)``, an unparsable reply is true when "true" is in its first 100 characters, and a failed call
    counts as wrong (and in ``judge_error``). What is kept of the judge's reply is its verdict, the extracted answer
    and a short reason, all key-redacted."""
    if settings.grading == "seed":
        answer = scoring.reference_final_answer(response, choices or None)
        j = get_judge(settings).judge_seed(full_question or question, choices or None, target, answer)
        return {"judge_acc": {"id": doc_id, "score": int(bool(j.is_correct)), "judged_by": "judge (seed)",
                              "judge_input": answer, "extracted": j.extracted_answer, "reason": j.reason,
                              **({"judge_error": True} if j.judge_error else {})},
                "judge_error": int(j.judge_error)}
    if rule_ok:
        return {"judge_acc": {"id": doc_id, "score": 1, "judged_by": "rule"}, "judge_error": 0}
    j = get_judge(settings).judge(question, choices, target, response)
    if j.judge_error:
        return {"judge_acc": {"id": doc_id, "judge_error": True, "reason": j.reason}, "judge_error": 1}
    return {"judge_acc": {"id": doc_id, "score": int(bool(j.is_correct)), "judged_by": "judge",
                          "extracted": j.extracted_answer, "reason": j.reason}, "judge_error": 0}


def seed_rule_acc(doc_id: str, response: str, target: Any, choices=None) -> dict:
    """``rule_acc`` of one sample under ``grading: seed``: the reference's extraction
    (:func:`frankeneval.evaluation.scoring.reference_final_answer`) and its rule check
    (:func:`frankeneval.evaluation.scoring.reference_rule_correct`: MCQ letters, letter to choice, 90 % containment,
    math-verify, 1e-6 or 1 %)."""
    extracted = scoring.reference_final_answer(response, choices or None)
    ok = scoring.reference_rule_correct(extracted, target, choices=choices or None, response=response)
    return {"id": doc_id, "score": int(ok), "extracted": extracted, "method": "reference", "target": target}


def math_results(doc: dict, results: list[str], settings: TaskSettings | None, question: str, *, gsm8k: bool) -> dict:
    """``rule_acc`` (and the judge's metrics when on) of a free-form math answer (GSM8K, MATH-500); under
    ``grading: seed`` the rules are the reference's (:func:`seed_rule_acc`)."""
    settings = settings or TaskSettings.resolve()
    response = results[0] if results else ""
    if settings.grading == "seed":
        rule = seed_rule_acc(doc["id"], response, doc["target"])
        ok = bool(rule["score"])
    else:
        extracted, method = scoring.extract_final_answer(response, allow_hashes=gsm8k)
        ok = scoring.math_equal(extracted, doc["target"], rel_tol=settings.rel_tol)
        rule = {"id": doc["id"], "score": int(ok), "extracted": extracted, "method": method, "target": doc["target"]}
    out: dict[str, Any] = {"rule_acc": rule}
    if settings.judge:
        out.update(judge_fields(settings, doc["id"], ok, question, None, doc["target"], response))
    return out


# --------------------------------------------------------------------------- the task classes' shared part
# Harness-free: the lmms-eval base class (:class:`frankeneval.tasks.lmms_task.FrankenTask`, subclassed in each
# folder's ``task.py``) and the lm-eval one (``lm_eval_tasks/utils.py``) mix it into their harness's ConfigurableTask.


class LocalDocsTask:
    """What the lmms-eval and lm-eval task classes share (mixed into each harness's ``ConfigurableTask``): the
    YAML's ``class:`` key is dropped, the docs come from :attr:`build_docs` under the task's settings, each item's
    finish reasons are read off its responses (:meth:`apply_filters`), and the responses are stripped before the
    YAML's ``process_results`` hook scores them with those settings."""

    def __init__(self, *args, config: dict | None = None, **kwargs) -> None:
        if config is not None:
            config = dict(config)
            config.pop("class", None)
        super().__init__(*args, config=config, **kwargs)

    @staticmethod
    def build_docs(spec: dict, settings: TaskSettings) -> list[dict]:
        raise NotImplementedError("a task folder's task class sets build_docs")

    def load_docs(self, dataset_kwargs: dict | None) -> list[dict]:
        """The task's docs (never empty), with ``self.settings`` resolved from the task metadata."""
        self.settings = TaskSettings.resolve(self.config.metadata if isinstance(self.config.metadata, dict) else None)
        if judge_in_use(self.settings) and self.settings.judge_probe:
            get_judge(self.settings).probe()  # fail fast: one line when the judge does not answer at all
        docs = checked_docs(str(self.config.task), self.build_docs(dict(dataset_kwargs or {}), self.settings),
                            self.settings)
        if not docs:
            raise FrankenevalError(f"task {self.config.task}: no items selected")
        return docs

    def apply_filters(self):
        """The harness's filters, then each item's finish reasons, read off its raw responses: a response of
        ``franken_qwen`` is a :class:`~frankeneval.model_wrappers.model_args.GeneratedText`, a ``str`` carrying its
        ``finish_reason``; any other (another model, a cached answer) says nothing. Read here because both harnesses
        call this hook on the task's own instances after generation and before scoring, whereas the text that
        reaches ``process_results`` may be a new plain string (lmms-eval's ``--reasoning_tags`` stripping, on by
        default, rebuilds it). Kept on this task object, by the doc's ``id``: :attr:`finish_reasons`."""
        out = super().apply_filters()
        by_index: dict[int, list[str | None]] = {}
        for inst in getattr(self, "instances", None) or []:
            by_index.setdefault(int(inst.doc_id), []).extend(getattr(r, "finish_reason", None) for r in inst.resps)
        ids = self._doc_ids() if any(r is not None for rs in by_index.values() for r in rs) else None
        self.finish_reasons = {} if ids is None else {
            str(ids[i]): tuple(rs) for i, rs in by_index.items() if 0 <= i < len(ids)}
        return out

    def _doc_ids(self) -> list | None:
        """The ``id`` of each evaluated doc, by the index the harness's instances carry (None: no ``id`` column)."""
        try:
            docs = self.eval_docs
            if isinstance(docs, list):
                return [d.get("id") if isinstance(d, dict) else None for d in docs]
            return list(docs["id"]) if "id" in getattr(docs, "column_names", ()) else None  # no image decoded
        except (AttributeError, KeyError, TypeError, ValueError):
            return None

    def hit_limit_of(self, doc: dict) -> bool | None:
        """Whether the item's answer ran to ``max_new_tokens`` (any of its responses, when several), from the
        finish reasons :meth:`apply_filters` read; None when unknown (no response said why it ended)."""
        key = doc.get("id") if isinstance(doc, dict) else None
        reasons = [r for r in (getattr(self, "finish_reasons", {}).get(str(key), ()) if key is not None else ())
                   if r is not None]
        return any(r == "length" for r in reasons) if reasons else None

    def timed_out_of(self, doc: dict) -> bool | None:
        """Whether the item's generation ran past ``franken_qwen``'s ``item_time_limit`` (finish reason
        ``timeout``, any of its responses); None when unknown (no response said why it ended)."""
        key = doc.get("id") if isinstance(doc, dict) else None
        reasons = [r for r in (getattr(self, "finish_reasons", {}).get(str(key), ()) if key is not None else ())
                   if r is not None]
        return any(r == "timeout" for r in reasons) if reasons else None

    def score(self, doc: dict, results: list) -> dict:
        """The YAML's ``process_results`` on the stripped responses (each a :class:`Response` carrying whether its
        generation hit ``max_new_tokens``), plus the per-item ``hit_limit`` (0/1) when the task lists that metric
        and the responses said why they ended (``franken_qwen``'s do; unknown otherwise, and then left out).

        An item whose generation ran out of time (``franken_qwen``'s ``item_time_limit``: finish reason
        ``timeout``) is counted apart from wrong: its per-sample values keep their fields but no ``score`` (left out
        of every accuracy, as a judge error is), no judge is asked about it, and its ``timed_out`` is 1 (the
        metric is absent from items that finished in time, so ``timed_out`` in the results counts the cut ones and
        is there only when there are any)."""
        hit = self.hit_limit_of(doc)
        timed_out = self.timed_out_of(doc)
        results = [Response(r.strip() if isinstance(r, str) else "", hit_limit=hit) for r in results]
        settings = getattr(self, "settings", None)
        if timed_out and settings is not None and settings.judge:
            import dataclasses

            settings = dataclasses.replace(settings, judge=False)  # an answer cut off by the clock is not judged
        out = self.config.process_results(doc, results, settings=settings)
        names = _metric_names(self.config)
        if hit is not None and "hit_limit" in names:
            out = {**out, "hit_limit": int(hit)}
        if timed_out:
            out = {k: ({**{f: x for f, x in v.items() if f != "score"}, "timed_out": True}
                       if isinstance(v, dict) else v) for k, v in out.items()}
        if timed_out and "timed_out" in names:  # only then: the samples of a run without timeouts are unchanged
            out = {**out, "timed_out": 1}
        return out


class Response(str):
    """A model's (stripped) answer; ``hit_limit``: True when its generation ran to ``max_new_tokens`` (the answer
    is cut off), False when it stopped by itself, None when unknown. Behaves as the plain string otherwise."""

    hit_limit: bool | None

    def __new__(cls, text: str, hit_limit: bool | None = None):  # noqa: PYI034 - a str subclass
        obj = super().__new__(cls, text)
        obj.hit_limit = hit_limit
        return obj


def _metric_names(config) -> set[str]:
    return {m.get("metric") for m in (getattr(config, "metric_list", None) or []) if isinstance(m, dict)}


# --------------------------------------------------------------------------- aggregation


def mean_score(items: list) -> float:
    """Mean of the per-sample ``score`` (samples without one, i.e. judge errors, are left out); NaN if none."""
    scores = [float(x["score"]) if isinstance(x, dict) else float(x) for x in items
              if not (isinstance(x, dict) and "score" not in x)]
    return sum(scores) / len(scores) if scores else float("nan")


def judge_accuracy(items: list) -> float:
    """``judge_acc``: the share of samples credited (by the rules or the judge), defined only when every sample has
    a verdict. A judge error is neither credited nor marked wrong: with any judge error the accuracy is NaN (not a
    number that counts the errors as wrong, nor one over the rule-credited samples only, which reads as 100 % when
    the judge is down); ``judge_error`` counts them and a rerun asks the judge again (failures are not cached)."""
    scores = [x.get("score") if isinstance(x, dict) else x for x in items]
    if not scores or any(v is None for v in scores):
        return float("nan")
    return sum(float(v) for v in scores) / len(scores)


def count(items: list) -> int:
    """Number of flagged samples (e.g. judge errors)."""
    return int(sum(int(x) for x in items))
