"""One transfer cell as an lmms-eval subprocess: its command, environment, model args and result reading.

Each cell runs, with the run directory as working directory (so a source checkout never shadows the installed
package)::

    python -m lmms_eval --model franken_qwen --model_args pretrained=<dir>,batch_size=...
        --tasks <task> --include_path <frankeneval tasks> --output_path <run>/cells/<model>/<task> --log_samples

An API row (``--api-model LABEL=openai:model_version=gpt-4o``, :func:`parse_api_model`) runs lmms-eval's own API
class instead (``--model openai --force_simple --system_instruction <the reference's API prompt>``), on the same
tasks and items; :func:`check_api_access` refuses it in one line where its key or its server is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frankeneval.core.locks import run_child, start_child, stop_child
from frankeneval.errors import FrankenevalError
from frankeneval.evaluation.grading import JudgeNotAnswering
from frankeneval.evaluation.inputs_check import BrokenInput
from frankeneval.transferability.manifest import Cell

__all__ = [
    "CELL_STAMP",
    "PREFLIGHT_MODULE",
    "CellFailed",
    "CellJob",
    "CellRunner",
    "ChunkRunner",
    "API_SYSTEM_PROMPT",
    "api_fingerprint",
    "base_env",
    "check_api_access",
    "cell_origin",
    "cell_record",
    "clear",
    "cut_joint_output",
    "find_results",
    "finished_cell",
    "harness_preflight",
    "headline",
    "lmms_eval_command",
    "lmms_eval_config_command",
    "lmms_eval_config_runner",
    "lmms_eval_runner",
    "parse_api_model",
    "system_prompts",
    "write_cell_stamp",
]


class CellFailed(FrankenevalError):
    """One (model, task) cell's lmms-eval run failed."""


@dataclass
class CellJob:
    """Everything a cell runner needs: write lmms-eval output for ``cell`` under ``output_dir``."""

    cell: Cell
    pretrained: str
    output_dir: Path
    run_dir: Path
    log_path: Path
    model_args: str
    include_path: str
    gen_kwargs: str | None
    env: dict[str, str]
    keep_fds: tuple[int, ...] = ()  # the run folder's lock: the child holds it while it lives
    tasks: str | None = None  # lmms-eval's --tasks when one process runs several cells of the model (joint run)
    lmms_model: str = "franken_qwen"  # lmms-eval's --model: an API row's class (openai, gpt4v, claude)
    system_instruction: str | None = None  # lmms-eval's --system_instruction (API rows: the prompt's text)

    @property
    def task_arg(self) -> str:
        """What ``--tasks`` gets: the cell's task, or the joint run's tasks."""
        return self.tasks or self.cell.task


CellRunner = Callable[[CellJob], None]
ChunkRunner = Callable[[Sequence[CellJob], Path], None]
"""``runner(jobs, log_path)``: run several models' jobs in one process (:func:`lmms_eval_config_runner`); each job's
output under its ``output_dir`` is the proof of success, checked by the caller job by job."""


# -- lmms-eval output -----------------------------------------------------------------------------
def find_results(cell_dir: Path) -> tuple[Path | None, dict[str, Path]]:
    """The newest ``*_results.json`` under ``cell_dir`` and its ``*_samples_<task>.jsonl`` files.

    lmms-eval 0.7.3 writes ``<output_path>/<sanitized model name>/<date_id>_results.json`` and
    ``<date_id>_samples_<task>.jsonl`` (one per evaluated task, the date id shared).
    """
    if not cell_dir.is_dir():
        return None, {}
    results = sorted(cell_dir.rglob("*_results.json"), key=lambda p: p.name)
    if not results:
        return None, {}
    res = results[-1]
    date_id = res.name[: -len("_results.json")]
    prefix = f"{date_id}_samples_"
    samples = {p.name[len(prefix) : -len(".jsonl")]: p for p in res.parent.glob(f"{prefix}*.jsonl")}
    return res, samples


def _task_closure(names: Sequence[str], group_subtasks: Mapping[str, Any]) -> set[str]:
    """``names`` and every subtask under them (lmms-eval's ``group_subtasks``, nested groups followed)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [str(t) for t in (group_subtasks.get(name) or [])]
    return seen


def cut_joint_output(joint_dir: Path, cell: Cell, dest: Path, all_tasks: Sequence[str]) -> None:
    """Write into ``dest`` what lmms-eval would have written for ``cell`` alone, from the output of one lmms-eval
    run of several of the model's cells (``--tasks`` = ``all_tasks``, the cells' task lists joined).

    The samples files of the cell's tasks (its tasks and their subtasks) are linked (copied where links fail)
    unchanged; the results file keeps, of every task-keyed section (``results``, ``configs``, ``versions``,
    ``n-samples`` ...), the cell's tasks only, and says under ``frankeneval_joint_run`` which tasks ran together.
    Raises :class:`CellFailed` when the joint output has no results for one of the cell's tasks."""
    res, samples = find_results(joint_dir)
    if res is None:
        raise CellFailed(f"{cell.key}: the joint lmms-eval run wrote no *_results.json under {joint_dir}")
    data = json.loads(res.read_text(encoding="utf-8"))
    mine = [t for t in cell.task.split(",") if t]
    missing = [t for t in mine if t not in (data.get("results") or {})]
    if missing:
        raise CellFailed(f"{cell.key}: the joint lmms-eval run has no results for {', '.join(missing)}")
    keep = _task_closure(mine, data.get("group_subtasks") or {})
    everyone = _task_closure([t for ts in all_tasks for t in ts.split(",") if t], data.get("group_subtasks") or {})
    everyone |= set(data.get("results") or {}) | set(samples)
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and set(value) <= everyone:
            value = {k: v for k, v in value.items() if k in keep}
        out[key] = value
    out["frankeneval_joint_run"] = {"tasks": list(all_tasks),
                                    "note": "one lmms-eval process ran these cells; this file keeps this cell's tasks"}
    target = dest / res.parent.relative_to(joint_dir)
    target.mkdir(parents=True, exist_ok=True)
    from frankeneval.core.results import write_json_atomic

    write_json_atomic(target / res.name, out, indent=2, ensure_ascii=False)
    for task, path in samples.items():
        if task in keep:
            try:
                os.link(path, target / path.name)
            except OSError:
                shutil.copy2(path, target / path.name)


CELL_STAMP = "frankeneval_cell.json"  # in a finished cell's folder: the content fingerprint of the model it ran


def write_cell_stamp(cell_dir: Path, cell: Cell, models: Mapping[str, Mapping[str, Any]],
                     origin: Mapping[str, Any] | None = None) -> None:
    """Record in ``cell_dir`` which model content the cell ran (its ``fingerprint``: ``{"weights": sha}`` of a
    checkpoint, ``{"splice": build hash}`` of a variant), before the folder is renamed into place; ``origin``: where
    its answers or scores come from when not from a run of its own here (``{"reused_from": ...}`` of ``--reuse-from``,
    ``{"regraded_from": ...}`` of ``--regrade``; None: run here), so the origin moves with the folder."""
    from frankeneval.core.results import write_json_atomic

    origin = {k: v for k, v in dict(origin or {}).items() if k in ORIGIN_KEYS and v}
    write_json_atomic(cell_dir / CELL_STAMP, {"model": cell.model, "task": cell.task,
                                              "pretrained": str(models[cell.model]["path"]),
                                              "fingerprint": models[cell.model].get("fingerprint"),
                                              "origin": origin or None}, indent=1)


ORIGIN_KEYS = ("reused_from", "regraded_from")  # a cell record's (and stamp's) note of where the cell came from


def cell_origin(cell_dir: Path, record: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Where a finished cell came from: ``{"reused_from": {...}}`` (taken from another run, ``--reuse-from``),
    ``{"regraded_from": {...}}`` (another run's stored responses scored again, ``--regrade``) or ``{}`` (run here).
    Read from the cell's stamp, which is renamed into place with the cell; a stamp of a frankeneval that did not
    record it there: from the cell's run-store ``record``."""
    try:
        stamp = json.loads((cell_dir / CELL_STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stamp = None
    source = (stamp.get("origin") or {}) if isinstance(stamp, dict) and "origin" in stamp else (record or {})
    if not isinstance(source, Mapping):
        return {}
    return {k: dict(source[k]) for k in ORIGIN_KEYS if isinstance(source.get(k), Mapping)}


def finished_cell(cell_dir: Path, fingerprint: Mapping[str, Any] | None, *, label: str = "model",
                  check_model: bool = True) -> tuple[Path | None, dict[str, Path], str | None]:
    """``(results file, samples files, None)`` of a finished cell made from the model content ``fingerprint``, else
    ``(None, {}, why not)``: no results file, one that is not a JSON object with ``results``, or (``check_model``)
    no stamp or the stamp of another model (:data:`CELL_STAMP`). ``transfer`` reruns such a cell; ``report`` shows
    it as missing with the same reason."""
    res, samples = find_results(cell_dir)
    if res is None:
        return None, {}, "not finished"
    try:
        data = json.loads(res.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
            raise ValueError("not a JSON object with results")
    except (OSError, ValueError) as exc:
        return None, {}, f"results unreadable: {res} ({getattr(exc, 'strerror', None) or exc})"
    if check_model:
        try:
            stamp = json.loads((cell_dir / CELL_STAMP).read_text(encoding="utf-8"))
            made = stamp.get("fingerprint") if isinstance(stamp, dict) else None
            if not isinstance(stamp, dict) or "fingerprint" not in stamp:
                raise ValueError
        except (OSError, ValueError):
            return None, {}, "no record of the model content it was made from (an older frankeneval)"
        if made != (dict(fingerprint) if fingerprint is not None else None):
            from frankeneval.core.runstore import input_change

            change = (input_change({label: made}, {label: dict(fingerprint)})
                      if isinstance(made, dict) and fingerprint is not None else None)
            return None, {}, f"made with {change or f'another {label} (one of the two of unknown content)'}"
    return res, samples, None


def cell_record(run_dir: Path, cell: Cell, models: Mapping[str, Mapping[str, str]], res: Path,
                samples: Mapping[str, Path], seconds: float | None, prompt: Any = None) -> dict[str, Any]:
    """The run store's line of one finished cell."""
    return {
        "model": cell.model,
        "task": cell.task,
        "pretrained": str(models[cell.model]["path"]),
        "model_fingerprint": models[cell.model].get("fingerprint"),
        "system_prompt": prompt.record() if prompt is not None else None,
        "results": str(res.relative_to(run_dir)),
        "samples": {t: str(p.relative_to(run_dir)) for t, p in sorted(samples.items())},
        "seconds": None if seconds is None else round(seconds, 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def headline(res: Path | None) -> str:
    """``task rule_acc=0.42`` for the leaf tasks of a results file (for progress lines)."""
    if res is None:
        return "no results"
    try:
        data = json.loads(res.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return "unreadable results"
    parts = []
    for task, metrics in (data.get("results") or {}).items():
        for key, value in metrics.items():
            if key.startswith("rule_acc,") and isinstance(value, (int, float)):
                parts.append(f"{task}={value:.3f}")
    return "rule_acc " + ", ".join(parts) if parts else "done"


def clear(path: Path) -> None:
    """Remove ``path`` (a folder or a file) when it exists."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# -- command and environment ----------------------------------------------------------------------
def base_env(data_dir: str | None, sample_size: int | None, sample_seed: int | None, offline: bool,
             extra: Mapping[str, str] | None) -> dict[str, str]:
    """The environment every cell (and the preflight) runs in."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # never let a source folder shadow the installed package
    if offline:
        env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if data_dir:
        env["FRANKENEVAL_DATA"] = str(Path(data_dir).expanduser().resolve())
    if sample_size is not None:
        env["FRANKENEVAL_SAMPLE_SIZE"] = str(sample_size)
    if sample_seed is not None:
        env["FRANKENEVAL_SAMPLE_SEED"] = str(sample_seed)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra or {})
    return env


# -- API models as rows ---------------------------------------------------------------------------
# lmms-eval 0.7.3's API classes an API row may name -> (the class's identity, the key variable it reads)
API_CLASSES: dict[str, tuple[str, str]] = {
    "openai": ("openai", "OPENAI_API_KEY"), "openai_compatible": ("openai", "OPENAI_API_KEY"),
    "openai_compatible_chat": ("openai", "OPENAI_API_KEY"), "gpt4v": ("gpt4v", "OPENAI_API_KEY"),
    "claude": ("claude", "ANTHROPIC_API_KEY"),
}
# the reference's GPTEvaluator / ClaudeEvaluator SYSTEM_PROMPT (scripts/transferability_test.py)
API_SYSTEM_PROMPT = ("You are a helpful assistant that solves math and reasoning problems.\n"
                     "When answering, first think through the problem step by step, then provide your final answer.\n"
                     "Put your final answer in \\boxed{} format.")
_API_SECRET_ARGS = ("api_key", "azure_openai")  # a key never goes into the manifest; Azure reads other variables
API_FAILED_MARK = "[LMMS_EVAL_REQUEST_FAILED"  # lmms-eval's answer text for a request that failed every retry


def parse_api_model(text: str) -> tuple[str, dict[str, Any]]:
    """``(label, model entry)`` of ``--api-model LABEL=LMMS_MODEL:MODEL_ARGS`` (``gpt4o=openai:model_version=gpt-4o``):
    kind ``api``, no checkpoint (``path`` = ``api:<class>``); its fingerprint comes from :func:`api_fingerprint`."""
    label, sep, rest = str(text).partition("=")
    lmms_model, _, margs = rest.partition(":")
    label, lmms_model, margs = label.strip(), lmms_model.strip(), margs.strip()
    if not sep or not label or not lmms_model:
        raise FrankenevalError(f"--api-model {text!r}: expected LABEL=LMMS_MODEL:MODEL_ARGS, "
                               "e.g. gpt4o=openai:model_version=gpt-4o")
    if lmms_model not in API_CLASSES:
        raise FrankenevalError(f"--api-model {label}: {lmms_model!r} is not one of lmms-eval's API classes frankeneval "
                               f"runs ({', '.join(API_CLASSES)})")
    args = {}
    for part in filter(None, (a.strip() for a in margs.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise FrankenevalError(f"--api-model {label}: model arg {part!r} is not KEY=VALUE")
        args[key.strip()] = value.strip()
    if "model" in args and "model_version" not in args:
        args["model_version"] = args.pop("model")
    bad = [k for k in (*_API_SECRET_ARGS, "system_prompt") if k in args]
    if bad:
        raise FrankenevalError(f"--api-model {label}: {bad[0]}= is not taken here (keys come from "
                               f"{API_CLASSES[lmms_model][1]}; the system prompt from --system-prompt)")
    if not args.get("model_version"):
        raise FrankenevalError(f"--api-model {label}: name the API model, e.g. {lmms_model}:model_version=gpt-4o")
    canonical = API_CLASSES[lmms_model][0]
    margs = ",".join(f"{k}={v}" for k, v in args.items())
    return label, {"path": f"api:{canonical}", "kind": "api", "lmms_model": canonical, "model_args": margs,
                   "description": f"API model {args['model_version']} (lmms-eval {canonical})"}


def _api_arg(info: Mapping[str, Any], key: str) -> str | None:
    for part in str(info.get("model_args") or "").split(","):
        k, _, v = part.partition("=")
        if k == key:
            return v
    return None


def _api_url(info: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """The server an API row's class talks to, read as the class reads it (lmms-eval 0.7.3 and its client)."""
    if info.get("lmms_model") == "claude":  # anthropic.Anthropic(): ANTHROPIC_BASE_URL
        return env.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com"
    if info.get("lmms_model") == "openai":  # base_url=, else OPENAI_API_BASE, else the openai client's own
        return _api_arg(info, "base_url") or env.get("OPENAI_API_BASE") or env.get("OPENAI_BASE_URL") or \
            "https://api.openai.com/v1"
    return env.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"  # gpt4v: OpenAI(api_key=...)


def _host_port(url: str) -> tuple[str, int]:
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(unquote(url))
    return parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443)


def api_fingerprint(info: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """An API row's identity for its cells: its class, ``model_version`` and server host (never the key)."""
    host, port = _host_port(_api_url(info, env))
    return {"api_class": str(info.get("lmms_model")), "model_version": str(_api_arg(info, "model_version")),
            "base_url_host": f"{host}:{port}"}


def check_api_access(models: Mapping[str, Mapping[str, Any]], env: Mapping[str, str], timeout: float = 5.0) -> None:
    """Refuse, in one line, an API row whose key variable is unset, whose client package is missing, or whose
    server cannot be reached (a TCP connect); nothing for checkpoint rows."""
    for label, info in models.items():
        if info.get("kind") != "api":
            continue
        cls = str(info.get("lmms_model"))
        var = API_CLASSES.get(cls, (cls, "OPENAI_API_KEY"))[1]
        if not env.get(var):
            raise FrankenevalError(f"API row {label!r} ({cls}): {var} is not set; set it, or drop --api-model {label}")
        package = "anthropic" if cls == "claude" else "openai"
        if importlib.util.find_spec(package) is None:
            raise FrankenevalError(f"API row {label!r} ({cls}): the {package} package is not installed "
                                   f"(pip install {package})")
        host, port = _host_port(_api_url(info, env))
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            raise FrankenevalError(f"API row {label!r} ({cls}): cannot reach {host}:{port} "
                                   f"({exc.strerror or type(exc).__name__}; no network?)") from None


def _api_failures(output_dir: Path) -> int:
    """How many logged answers of a cell are lmms-eval's text for a failed API request."""
    return sum(p.read_text(encoding="utf-8", errors="replace").count(API_FAILED_MARK)
               for p in output_dir.rglob("*_samples_*.jsonl"))


def system_prompts(run_dir: Path, models: Mapping[str, Mapping[str, str]],
                   setting: str | None, *, seed_compatible: bool = False) -> dict[str, tuple[Any, str]]:
    """{label: (SystemPrompt, its ``system_prompt=`` model arg)}; a free text goes to ``run_dir/system_prompt.txt``
    (lmms-eval's ``--model_args`` cannot carry its commas) and is passed as ``@FILE``. ``seed_compatible`` with
    ``auto``: a variant's prompt comes from the rule on its own phrase (its ``description``), as the reference's."""
    from frankeneval.evaluation.prompts import SystemPrompt, resolve_system_prompt, variant_phrase_prompt

    auto = setting is None or str(setting).strip().lower() == "auto"
    out: dict[str, tuple[Any, str]] = {}
    for label, info in models.items():
        if info.get("kind") == "api":  # its text goes to --system_instruction (no model arg, no file)
            prompt = (SystemPrompt("api", API_SYSTEM_PROMPT, "auto: an API model gets the reference's GPT / Claude "
                                   "prompt", "auto") if auto else resolve_system_prompt(str(info["path"]), setting))
            out[label] = (prompt, "")
            continue
        if seed_compatible and auto and info.get("kind") == "variant":
            prompt = variant_phrase_prompt(str(info.get("description") or label))
        else:
            prompt = resolve_system_prompt(str(info["path"]), setting)
        arg = prompt.model_arg
        if arg is None:
            file = run_dir / "system_prompt.txt"
            file.write_text(prompt.text or "", encoding="utf-8")
            arg = f"@{file}"
        out[label] = (prompt, arg)
    return out


def lmms_eval_command(job: CellJob) -> list[str]:
    """The ``python -m lmms_eval`` command line of ``job``."""
    cmd = [
        sys.executable, "-m", "lmms_eval",
        "--model", job.lmms_model,
        "--model_args", job.model_args,
        "--tasks", job.task_arg,
        "--include_path", job.include_path,
        "--output_path", str(job.output_dir),
        "--log_samples",
    ]  # fmt: skip
    if job.gen_kwargs:
        cmd += ["--gen_kwargs", job.gen_kwargs]
    if job.lmms_model != "franken_qwen":  # an API class: its plain-text path, where --system_instruction reaches it
        cmd += ["--force_simple"]
    if job.system_instruction:  # an API row's prompt, in its contexts (also when --regrade replays its responses)
        cmd += ["--system_instruction", job.system_instruction]
    return cmd


def lmms_eval_runner(job: CellJob) -> None:
    """Run one cell as ``python -m lmms_eval`` (cwd = run dir); output to ``job.log_path``."""
    job.log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = lmms_eval_command(job)
    with open(job.log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        # own process group, SIGKILL when we die (Linux), whole group killed on Ctrl-C; it inherits the run
        # folder's lock, so a rerun cannot start while a child of a killed run still writes into its cell
        rc = run_child(cmd, cwd=job.run_dir, env=job.env, stdout=log, stderr=subprocess.STDOUT, pass_fds=job.keep_fds)
    if rc != 0:
        raise CellFailed(f"lmms-eval exited with {rc}; {_log_tail(job.log_path, env=job.env)}")
    # lmms-eval logs evaluation errors and still exits 0: the results file is the proof of success
    if find_results(job.output_dir)[0] is None:
        raise CellFailed(f"lmms-eval wrote no results file; {_log_tail(job.log_path, env=job.env)}")
    failed = _api_failures(job.output_dir) if job.lmms_model != "franken_qwen" else 0
    if failed:  # lmms-eval keeps a failed request as an answer: not scored as wrong, the cell runs again
        raise CellFailed(f"{failed} API request(s) failed every retry; {_log_tail(job.log_path, env=job.env)}")


def lmms_eval_config_command(jobs: Sequence[CellJob], config: Path) -> list[str]:
    """Write ``jobs`` as lmms-eval's ``--config`` file (a list: one evaluation per entry, run one after another in
    one process) and return the ``python -m lmms_eval --config`` command line. Only ``franken_qwen`` jobs (an API
    row's ``--force_simple`` / ``--system_instruction`` stay on :func:`lmms_eval_command`)."""
    from frankeneval.core.results import write_json_atomic

    entries = []
    for job in jobs:
        if job.lmms_model != "franken_qwen" or job.system_instruction:
            raise CellFailed(f"{job.cell.model}: an API row runs in its own lmms-eval process, not in a --config list")
        entry = {"model": job.lmms_model, "model_args": job.model_args, "tasks": job.task_arg,
                 "include_path": job.include_path, "output_path": str(job.output_dir), "log_samples": True}
        if job.gen_kwargs:
            entry["gen_kwargs"] = job.gen_kwargs
        entries.append(entry)
    write_json_atomic(config, entries, indent=1)  # JSON is YAML: lmms-eval reads it with yaml.safe_load
    return [sys.executable, "-m", "lmms_eval", "--config", str(config)]


def lmms_eval_config_runner(jobs: Sequence[CellJob], log_path: Path) -> None:
    """Run several models' jobs (same environment and run folder) as one ``python -m lmms_eval --config FILE``
    process: lmms-eval evaluates the list's entries one after another, so the process start and the lmms-eval
    import are paid once, and each model is freed before the next loads (``franken_qwen`` collects the previous
    one first). lmms-eval logs an entry that failed and goes on: the caller checks each job's results file."""
    if not jobs:
        return
    first = jobs[0]
    if any(j.env != first.env or j.run_dir != first.run_dir for j in jobs):
        raise CellFailed("the jobs of one lmms-eval --config process must share their environment and run folder")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = lmms_eval_config_command(jobs, log_path.with_suffix(".config.yaml"))
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        rc = run_child(cmd, cwd=first.run_dir, env=first.env, stdout=log, stderr=subprocess.STDOUT,
                       pass_fds=first.keep_fds)
    if rc != 0:
        raise CellFailed(f"lmms-eval exited with {rc}; {_log_tail(log_path, env=first.env)}")


def _log_tail(path: Path, n: int = 3, env: Mapping[str, str] | None = None) -> str:
    """The last error lines of a cell's log (else its last lines), credentials redacted (the judge's key and URL
    of the cell's environment ``env``, and anything key-like: :func:`frankeneval.evaluation.grading.redact_secrets`)."""
    from frankeneval.evaluation.grading import redact_secrets, url_secrets

    env = os.environ if env is None else env
    secrets = (env.get("OPENAI_API_KEY"), env.get("ANTHROPIC_API_KEY"), *url_secrets(env.get("OPENAI_BASE_URL")),
               *url_secrets(env.get("OPENAI_API_BASE")))
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").split("\n") if ln.strip()]
    except OSError:
        return f"see {path}"
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    tail = (errors or lines)[-n:]
    return redact_secrets(f"see {path}: " + " | ".join(t.strip()[:300] for t in tail), secrets)


# -- the harness tasks' check of their inputs, before the first cell --------------------------------
PREFLIGHT_MODULE = "frankeneval.tasks.preflight"
_PREFLIGHT_ERRORS: dict[str, type[FrankenevalError]] = {"BrokenInput": BrokenInput,
                                                         "JudgeNotAnswering": JudgeNotAnswering}


def harness_preflight(tasks: Sequence[str],
                      env: Mapping[str, str]) -> tuple[list[dict] | None, FrankenevalError | None]:
    """``(skipped items, error)`` of the tasks' own check before a run (:mod:`frankeneval.tasks.preflight`), run
    as a child process in the cells' environment ``env`` (transfer never imports the tasks' code). ``skipped``:
    the items ``skip_broken`` leaves out (None when the check itself stopped); ``error``: :class:`BrokenInput`,
    :class:`JudgeNotAnswering` or another one-line :class:`FrankenevalError`."""
    proc = start_child([sys.executable, "-m", PREFLIGHT_MODULE, *tasks], env=dict(env), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace")
    try:
        out, err = proc.communicate()
    except BaseException:
        stop_child(proc)
        raise
    answer = _last_json(out)
    if proc.returncode != 0 or not isinstance(answer, dict):
        from frankeneval.evaluation.grading import redact_secrets, url_secrets

        tail = redact_secrets(" | ".join(ln.strip()[:300] for ln in err.strip().splitlines()[-3:]),
                              (env.get("OPENAI_API_KEY"), *url_secrets(env.get("OPENAI_BASE_URL"))))
        raise FrankenevalError(f"checking the tasks' inputs failed ({PREFLIGHT_MODULE} exited with {proc.returncode}): "
                               f"{tail or 'no output'}")
    error = answer.get("error")
    if error:
        error = _PREFLIGHT_ERRORS.get(str(error.get("type")), FrankenevalError)(str(error.get("message")))
    return answer.get("skipped"), error or None


def _last_json(out: str) -> Any:
    """The last line of ``out`` that parses as JSON; None when none does."""
    for line in reversed(out.splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None
