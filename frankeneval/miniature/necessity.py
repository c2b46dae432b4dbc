"""Necessity as an experiment: re-run the miniature RL stage from IN with LLM blocks frozen, and compare the gain.

The paper's fourth component asks whether RL needs to update the mid-to-late layers. On the trained miniature lineage
(:mod:`frankeneval.miniature.training`) this module runs the lineage's own RL stage -- TRL's ``GRPOTrainer`` with the
RL recipe recorded in the lineage's RL member stamp, the same seed, from the written IN member -- once per freeze
setting (default :data:`SETTINGS`: none, early, middle, late, middle+late). A setting freezes the parameters of
its LLM layers (unified axis 1 ... n, the lineage's depth; block cuts ``n // 3``, ``2n // 3`` or ``cuts``) with
``requires_grad_(False)``, chosen by :func:`frankeneval.necessity.freeze.frozen_parameters` (the layer map) and
checked against the freeze regex trainers get (:func:`frankeneval.necessity.freeze.check_against`). Transformers'
``Trainer`` builds its optimizer from parameters that require a gradient only, so a frozen tensor is never stepped;
every run checks that its frozen tensors are bit-identical to IN after training (a run where one moved is an error,
never a result), and records how many trainable tensors moved.

Each run is cached like the lineage's members: a hub-layout member folder written through
:func:`frankeneval.core.results.staged_directory` (:func:`frankeneval.miniature.training.save_member`) whose stamp
holds what determines it -- IN's content (weights SHA-256 and metadata digest), the RL recipe, the setting's mask,
the seed and the versions. A setting whose stamp matches is reused; otherwise it is trained again in place. The
held-out evaluations (:func:`frankeneval.miniature.training.evaluate`, greedy, the lineage evaluation's sets:
perception, alignment, reasoning, alignment from the black image + description, and M_v2r) are cached per model by
its weights' SHA-256 and the items.

The result (:func:`run_necessity`) reports per setting the held-out accuracy, the RL gain over IN per axis with its
paired 95 % bootstrap interval, and the paired bootstrap difference against the unfrozen run, and keeps the per-item
correctness so every number can be recomputed. :func:`write_outputs` writes ``necessity.json``, ``necessity.md``
and ``necessity.png`` into a guarded output folder.

The unfrozen setting ("none") is trained like the others -- not taken from the lineage's RL member -- and compared
with that member tensor for tensor (``none_vs_lineage_rl`` in the result). GRPO samples with the generation defaults
of the model's config, as the lineage's RL stage does on the IN model it has just trained in the same process; then
the run reproduces the lineage's RL member bit for bit (tested on the smoke recipe; measured on the default build).
The stamps do not record whether a lineage's RL stage followed IN in one process, nor its thread count, so the
member is never reused in place of the run (docs/necessity.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from frankeneval import __version__
from frankeneval.core.paths import default_cache_dir
from frankeneval.core.results import atomic_write_text, write_json_atomic
from frankeneval.errors import FrankenevalError
from frankeneval.necessity.settings import SETTINGS, UNFROZEN, Setting, apply_freeze, parse_settings

__all__ = [
    "AXES",
    "NECESSITY_VERSION",
    "OUTPUT_FILES",
    "format_markdown",
    "necessity_cache_dir",
    "RECIPES",
    "lineage_dir_for",
    "lineage_for_recipe",
    "rl_stage_of",
    "run_necessity",
    "write_outputs",
]

SCHEMA = "frankeneval.necessity/1"
NECESSITY_VERSION = 1  # bump when what a cached run or evaluation holds changes
OUTPUT_FILES: tuple[str, ...] = ("necessity.json", "necessity.md", "necessity.png")
AXIS_LABELS = {"perception": "perception", "alignment": "alignment", "reasoning": "reasoning",
               "alignment_blackdesc": "black+desc", "v2r": "M_v2r"}
AXES: tuple[str, ...] = tuple(AXIS_LABELS)
N_BOOT = 2000
RUN_RECORD = "frankeneval_training.json"  # per run folder (the lineage's TRAIN_RECORD): setting, frozen names, times,
# checks, logs


# -- the lineage's RL stage and IN's identity --------------------------------------------------
def rl_stage_from_json(data: dict[str, Any]):
    """An :class:`~frankeneval.miniature.training.RLStage` from its JSON form (a stamp's ``recipe.rl``)."""
    from frankeneval.miniature.training import RLStage

    data = dict(data)
    data["mix"] = tuple((str(t), float(w)) for t, w in data["mix"])
    return RLStage(**data)


def _stamp_of(member: Path) -> dict[str, Any]:
    path = member / "frankeneval_lineage.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FrankenevalError(f"{member} is not a trained miniature lineage member ({path.name}: {exc})") from None


def rl_stage_of(lineage_root: Path):
    """``(RL stage, seed)`` of a trained lineage: the recipe and seed its RL member was built with."""
    stamp = _stamp_of(Path(lineage_root) / "rl")
    try:
        return rl_stage_from_json(stamp["recipe"]["rl"]), int(stamp["seed"])
    except (KeyError, TypeError, ValueError) as exc:
        raise FrankenevalError(f"{lineage_root}/rl: its stamp names no RL recipe ({exc})") from None


def _metadata_files(member: Path) -> list[Path]:
    from frankeneval.miniature.training import TRAIN_RECORD

    skip = {TRAIN_RECORD, "model.safetensors.index.json"}
    return sorted(p for p in member.iterdir()
                  if p.is_file() and p.name not in skip and p.suffix in (".json", ".jinja", ".txt"))


def member_identity(member: Path) -> dict[str, Any]:
    """What a member's content is: the SHA-256 of its weights (every byte, cached per file), and of its config,
    tokenizer, processor and stamp files (its training record -- times, logs -- is not content)."""
    from frankeneval.weights.fingerprint import data_fingerprint, model_fingerprint

    weights = model_fingerprint(member, allow_pickle=False)
    if weights is None:
        raise FrankenevalError(f"{member} is not a readable checkpoint")
    files = _metadata_files(member)
    return {"weights_sha256": weights, "metadata_sha256": data_fingerprint([f.name for f in files], files)}


def setting_stamp(setting: Setting, *, in_identity: dict[str, Any], stage, seed: int) -> dict[str, Any]:
    """What determines a setting's run: IN's content, the RL stage, the mask, the seed and the versions."""
    from frankeneval.miniature import world
    from frankeneval.miniature.training import TRAINED_VERSION

    mask = setting.mask
    return json.loads(json.dumps({
        "experiment": "necessity", "necessity_version": NECESSITY_VERSION, "frankeneval": __version__,
        "trained_version": TRAINED_VERSION, "world_version": world.WORLD_VERSION, "seed": seed,
        "in": in_identity, "rl": asdict(stage),
        "freeze": {"n_layers": mask.n_layers, "layers": list(mask.layers), "components": list(mask.components),
                   "vision": mask.vision, "projector": mask.projector},
    }))


def _run_is_current(path: Path, stamp: dict[str, Any]) -> bool:
    try:
        return json.loads((path / "frankeneval_lineage.json").read_text()) == stamp and (path / RUN_RECORD).is_file()
    except (OSError, ValueError):
        return False


def necessity_cache_dir(lineage_root: Path) -> Path:
    """Where the runs from a lineage are cached: ``<frankeneval cache>/necessity/<lineage folder name>``."""
    return default_cache_dir() / "necessity" / Path(lineage_root).resolve().name


# -- one run -----------------------------------------------------------------------------------
def _param_changes(model, before: dict[str, Any], frozen: Sequence[str]) -> dict[str, Any]:
    import torch

    frozen_set = set(frozen)
    moved_frozen, moved, max_frozen, max_trainable = [], 0, 0.0, 0.0
    for name, param in model.named_parameters():
        old = before[name]
        same = torch.equal(param.detach(), old)
        delta = 0.0 if same else float((param.detach() - old).abs().max())
        if name in frozen_set:
            max_frozen = max(max_frozen, delta)
            if not same:
                moved_frozen.append(name)
        else:
            max_trainable = max(max_trainable, delta)
            moved += not same
    return {"frozen_unchanged": not moved_frozen, "frozen_moved": moved_frozen, "frozen_max_abs_change": max_frozen,
            "trainable_tensors": len(before) - len(frozen_set), "trainable_tensors_moved": moved,
            "trainable_max_abs_change": max_trainable}


def train_setting(setting: Setting, *, in_path: Path, stage, seed: int, path: Path, stamp: dict[str, Any],
                  progress: bool = True) -> dict[str, Any]:
    """Run the RL stage from ``in_path`` with ``setting`` frozen and write the result at ``path`` (staged, with its
    stamp and :data:`RUN_RECORD`); returns the record."""
    import torch

    from frankeneval.miniature import training as tl

    model, processor = tl.load_member(in_path, for_training=True)  # the lineage's RL stage's start, bit for bit
    config = json.loads((in_path / "config.json").read_text())
    frozen = apply_freeze(model, setting.mask)
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    numel = {n: p.numel() for n, p in params.items()}
    t0, c0 = time.perf_counter(), time.process_time()
    model.train()
    with tempfile.TemporaryDirectory(prefix="frankeneval-necessity-") as work:
        logs = tl.train_grpo(model, processor, stage, seed=seed, workdir=Path(work), reference=in_path,
                             progress=progress)
    times = {"train_s": round(time.perf_counter() - t0, 1), "train_cpu_s": round(time.process_time() - c0, 1),
             "threads": torch.get_num_threads()}
    check = _param_changes(model, before, frozen)
    if not check["frozen_unchanged"]:
        raise FrankenevalError(f"setting {setting.name}: {len(check['frozen_moved'])} frozen tensors moved in "
                               f"training (e.g. {check['frozen_moved'][0]}); the result is not kept")
    record = {"setting": setting.to_json(frozen), "times": times, "check": check, "logs": logs,
              "frozen_numel": sum(numel[n] for n in frozen), "total_numel": sum(numel.values()),
              "in": str(in_path)}
    tl.save_member(model, processor, config, path, spec=tl.TRAINED_SPEC, stamp=stamp, record=record)
    return record


# -- evaluation (cached by weights) ------------------------------------------------------------
def _items_signature(items: dict[str, list]) -> dict[str, Any]:
    return {axis: {"n": len(its), "sha256": hashlib.sha256("\n".join(f"{it.view}:{it.key()}" for it in its)
                                                          .encode()).hexdigest()}
            for axis, its in items.items()}


def _evaluate_cached(member: Path, items: dict[str, list], signature: dict[str, Any], cache: Path, *,
                     progress: bool) -> tuple[dict[str, list[int]], dict[str, Any]]:
    """Per-item correctness (0/1) of ``member`` on ``items`` per eval set plus M_v2r, from ``cache`` when the
    weights and items match."""
    from frankeneval.miniature import training as tl

    key = {"necessity_version": NECESSITY_VERSION, "frankeneval": __version__, "items": signature,
           **member_identity(member)}
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == json.loads(json.dumps(key)):
            return cached["correct"], {"eval_s": cached.get("eval_s"), "reused": True}
    except (OSError, ValueError, AttributeError):
        pass
    t0 = time.perf_counter()
    model, processor = tl.load_member(member)
    res = tl.evaluate(model, processor, items, progress=progress)
    correct = {axis: [int(c) for c in r.correct] for axis, r in res.items()}
    correct[tl.V2R] = [int(a and d) for a, d in zip(correct["alignment"], correct["alignment_blackdesc"])]
    seconds = round(time.perf_counter() - t0, 1)
    write_json_atomic(cache, {"key": key, "correct": correct, "eval_s": seconds, "member": str(member)})
    return correct, {"eval_s": seconds, "reused": False}


# -- statistics --------------------------------------------------------------------------------
def _acc(values: Sequence[int], seed: int) -> dict[str, float]:
    from frankeneval.miniature.training import bootstrap_ci

    lo, hi = bootstrap_ci(values, seed=seed, n_boot=N_BOOT)
    return {"acc": float(np.mean(values)) if len(values) else float("nan"), "lo": lo, "hi": hi, "n": len(values)}


def _diff(a: Sequence[int], b: Sequence[int], seed: int) -> dict[str, float]:
    from frankeneval.miniature.training import paired_bootstrap_diff

    d, lo, hi = paired_bootstrap_diff(a, b, seed=seed, n_boot=N_BOOT)
    return {"diff": d, "lo": lo, "hi": hi}


def summarize(correct: dict[str, dict[str, list[int]]], in_correct: dict[str, list[int]], *,
              seed: int) -> dict[str, dict[str, Any]]:
    """Per setting and axis: accuracy, gain over IN and (settings other than none) the difference against the
    unfrozen run, each with its (paired) 95 % bootstrap interval."""
    out: dict[str, dict[str, Any]] = {}
    for name, by_axis in correct.items():
        row: dict[str, Any] = {"accuracy": {}, "gain_over_in": {}}
        for axis in AXES:
            row["accuracy"][axis] = _acc(by_axis[axis], seed)
            row["gain_over_in"][axis] = _diff(by_axis[axis], in_correct[axis], seed)
        if name != UNFROZEN and UNFROZEN in correct:
            row["vs_unfrozen"] = {axis: _diff(by_axis[axis], correct[UNFROZEN][axis], seed) for axis in AXES}
        out[name] = row
    return out


def _compare_members(a: Path, b: Path) -> dict[str, Any]:
    """Tensor-for-tensor comparison of two checkpoints with the same names."""
    import torch

    from frankeneval.weights.checkpoint import Checkpoint

    ca, cb = Checkpoint.open(a), Checkpoint.open(b)
    if sorted(ca.names) != sorted(cb.names):
        return {"identical": False, "reason": "different tensor names"}
    differing, max_abs = 0, 0.0
    for name in ca.names:
        x, y = ca.read(name), cb.read(name)
        if not torch.equal(x, y):
            differing += 1
            max_abs = max(max_abs, float((x.float() - y.float()).abs().max()))
    return {"identical": differing == 0, "tensors_differing": differing, "tensors": len(ca.names),
            "max_abs_diff": max_abs}


# -- the whole experiment ----------------------------------------------------------------------
@dataclass
class NecessityResult:
    data: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def markdown(self) -> str:
        return format_markdown(self.data)


def _lineage_root(lineage: Any) -> Path:
    root = Path(lineage if isinstance(lineage, (str, os.PathLike)) else lineage.root)
    for member in ("in", "rl"):
        if not (root / member / "config.json").is_file():
            raise FrankenevalError(f"{root} holds no trained lineage member {member}/ (build it with "
                                   "`frankeneval demo-lineage DIR --trained`)")
    return root


def run_necessity(
    lineage: Any,
    settings: Sequence[str] = SETTINGS,
    *,
    eval_sizes: dict[str, int] | None = None,
    cuts: Sequence[int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    out: Any = None,
    recipe_name: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> NecessityResult:
    """Run the lineage's RL stage from its IN member once per freeze setting (cached), evaluate each on the
    held-out items, and (``out``) write :data:`OUTPUT_FILES` there. ``lineage``: a trained lineage or its root."""
    from frankeneval.miniature import training as tl
    from frankeneval.miniature import world

    t_start = time.perf_counter()
    root = _lineage_root(lineage)
    in_path, rl_path = root / "in", root / "rl"
    stage, seed = rl_stage_of(root)
    n_layers = int(json.loads((in_path / "config.json").read_text())["num_hidden_layers"])
    chosen = parse_settings(list(settings), n_layers=n_layers, cuts=cuts)
    if out is not None:  # claim the output folder before hours of training (a user's file there stops it now)
        out = claim_outputs(out, inputs=[("lineage", root)])
    cache = Path(cache_dir) if cache_dir is not None else necessity_cache_dir(root)
    tl._set_threads()
    in_id = member_identity(in_path)
    runs: dict[str, dict[str, Any]] = {}
    for i, setting in enumerate(chosen, 1):
        path = cache / "runs" / setting.slug
        stamp = setting_stamp(setting, in_identity=in_id, stage=stage, seed=seed)
        head = f"[necessity {i}/{len(chosen)}] {setting.name} ({setting.mask.describe()} frozen)"
        if not force and _run_is_current(path, stamp):
            record = json.loads((path / RUN_RECORD).read_text())
            log(f"{head}: reusing {path} (trained in {record['times']['train_s']:.0f} s)")
            reused = True
        else:
            log(f"{head}: RL from IN, {stage.steps} GRPO steps x {stage.prompts_per_step} prompts x "
                f"{stage.num_generations} samples -> {path}")
            record = train_setting(setting, in_path=in_path, stage=stage, seed=seed, path=path, stamp=stamp,
                                   progress=progress)
            log(f"{head}: trained in {record['times']['train_s']:.0f} s; {record['check']['trainable_tensors_moved']}"
                f" of {record['check']['trainable_tensors']} trainable tensors moved, the "
                f"{len(record['setting']['frozen_parameters'])} frozen ones are bit-identical to IN")
            reused = False
        runs[setting.name] = {"path": path, "record": record, "reused": reused, "stamp": stamp}

    # evaluation on the lineage evaluation's held-out sets
    items = tl.heldout_items(seed, eval_sizes)
    signature = _items_signature(items)
    log(f"[necessity] evaluating IN and {len(chosen)} runs on "
        + ", ".join(f"{len(v)} {AXIS_LABELS.get(k, k)}" for k, v in items.items()) + " held-out items")
    in_correct, in_eval = _evaluate_cached(in_path, items, signature, cache / "evals" / "in.json", progress=progress)
    correct: dict[str, dict[str, list[int]]] = {}
    for setting in chosen:
        run = runs[setting.name]
        correct[setting.name], run["eval"] = _evaluate_cached(run["path"], items, signature,
                                                             cache / "evals" / f"{setting.slug}.json",
                                                             progress=progress)
    stats = summarize(correct, in_correct, seed=seed)
    none_vs_rl = None
    if UNFROZEN in runs and _stamp_of(rl_path).get("recipe", {}).get("rl") == asdict_json(stage):
        none_vs_rl = _compare_members(runs[UNFROZEN]["path"], rl_path)

    rows = []
    for setting in chosen:
        run = runs[setting.name]
        rec = run["record"]
        rows.append({
            "name": setting.name, "mask": rec["setting"], "cache": str(run["path"]), "reused": run["reused"],
            "stamp": run["stamp"], "frozen_numel": rec["frozen_numel"], "total_numel": rec["total_numel"],
            "times": {**rec["times"], "eval_s": run["eval"]["eval_s"], "eval_reused": run["eval"]["reused"]},
            "check": rec["check"], "logs": rec["logs"], **stats[setting.name], "correct": correct[setting.name],
        })
    data = {
        "schema": SCHEMA, "frankeneval": __version__, "necessity_version": NECESSITY_VERSION,
        "trained_version": tl.TRAINED_VERSION, "world_version": world.WORLD_VERSION,
        "seed": seed, "recipe_name": recipe_name, "recipe": {"rl": asdict(stage)},
        "lineage": {"root": str(root), "in": str(in_path), "rl": str(rl_path), "in_identity": in_id},
        "n_layers": n_layers, "cuts": list(cuts) if cuts else [n_layers // 3, 2 * n_layers // 3],
        "axes": list(AXES), "axis_labels": AXIS_LABELS,
        "eval": {"sizes": {k: len(v) for k, v in items.items()}, "items": signature,
                 "recreate": "frankeneval.miniature.training.heldout_items(seed, sizes)"},
        "bootstrap": {"n_boot": N_BOOT, "level": 0.95, "seed": seed, "paired": True},
        "in": {"accuracy": {a: _acc(in_correct[a], seed) for a in AXES}, "correct": in_correct,
               "eval_s": in_eval["eval_s"]},
        "settings": rows,
        "none_vs_lineage_rl": none_vs_rl,
        "times": {"total_s": round(time.perf_counter() - t_start, 1),
                  "train_s": round(sum(r["times"]["train_s"] for r in rows if not r["reused"]), 1),
                  "train_s_all_runs": round(sum(r["times"]["train_s"] for r in rows), 1)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    result = NecessityResult(data)
    if out is not None:
        result.paths = write_outputs(data, out)
    return result


def asdict_json(stage) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(stage)))


# -- outputs -----------------------------------------------------------------------------------
def claim_outputs(out: Any, *, inputs: Sequence[tuple[str, Any]] = ()):
    """The guarded output folder (``out``: a path, an :class:`~frankeneval.core.outdir.OutputRequest` or a claimed
    folder) for :data:`OUTPUT_FILES`."""
    from frankeneval.core.outdir import claim_output_dir

    return claim_output_dir(out, command="necessity", files=OUTPUT_FILES, inputs=list(inputs))


def _ci(d: dict[str, float], fmt: str = "+.3f") -> str:
    return f"{d['diff']:{fmt}} [{d['lo']:{fmt}}, {d['hi']:{fmt}}]"


def _frozen_cell(row: dict[str, Any]) -> str:
    from frankeneval.weights.layermap import format_layers

    layers = row["mask"]["layers"]
    return format_layers(layers) if layers else "–"


def markdown_tables(data: dict[str, Any]) -> list[str]:
    """The three tables (accuracy, gain over IN, difference to unfrozen RL) as markdown lines."""
    axes = data["axes"]
    heads = " | ".join(AXIS_LABELS.get(a, a) for a in axes)
    sep = "---:|" * len(axes)
    lines = ["Held-out accuracy [95 % bootstrap interval]:", "",
             f"| model | frozen LLM layers (1-{data['n_layers']}) | frozen params | RL time (s) | {heads} |",
             f"|---|---|---:|---:|{sep}",
             "| IN (start) | – | – | – | " + " | ".join(
                 f"{data['in']['accuracy'][a]['acc']:.3f} [{data['in']['accuracy'][a]['lo']:.3f}, "
                 f"{data['in']['accuracy'][a]['hi']:.3f}]" for a in axes) + " |"]
    for row in data["settings"]:
        share = row["frozen_numel"] / row["total_numel"] if row["total_numel"] else 0.0
        lines.append(f"| RL, frozen: {row['name']} | {_frozen_cell(row)} | {100 * share:.0f} % | "
                     f"{row['times']['train_s']:.0f} | " + " | ".join(
                         f"{row['accuracy'][a]['acc']:.3f} [{row['accuracy'][a]['lo']:.3f}, "
                         f"{row['accuracy'][a]['hi']:.3f}]" for a in axes) + " |")
    lines += ["", "RL gain over IN (setting − IN, paired 95 % bootstrap interval):", "",
              f"| frozen | {heads} |", f"|---|{sep}"]
    for row in data["settings"]:
        lines.append(f"| {row['name']} | " + " | ".join(_ci(row["gain_over_in"][a]) for a in axes) + " |")
    if any("vs_unfrozen" in r for r in data["settings"]):
        lines += ["", "Against unfrozen RL (setting − none, paired 95 % bootstrap interval):", "",
                  f"| frozen | {heads} |", f"|---|{sep}"]
        for row in data["settings"]:
            if "vs_unfrozen" in row:
                lines.append(f"| {row['name']} | " + " | ".join(_ci(row["vs_unfrozen"][a]) for a in axes) + " |")
    return lines


def describe_run(data: dict[str, Any]) -> str:
    rl = data["recipe"]["rl"]
    n = {k: v for k, v in data["eval"]["sizes"].items()}
    return (f"RL from the miniature lineage's IN member with its own recipe (TRL GRPO, {rl['steps']} steps x "
            f"{rl['prompts_per_step']} prompts x {rl['num_generations']} samples, lr {rl['learning_rate']:g}, "
            f"beta {rl['beta']:g}; seed {data['seed']}), once per freeze setting; frozen LLM layers on the unified "
            f"axis 1-{data['n_layers']} (cuts {data['cuts'][0]}, {data['cuts'][1]}), requires_grad off, checked "
            f"bit-identical after training. Held-out items: "
            + ", ".join(f"{v} {AXIS_LABELS.get(k, k)}" for k, v in n.items()) + ".")


def format_markdown(data: dict[str, Any], *, heading: str = "## Necessity: RL with frozen LLM blocks") -> str:
    lines = [heading, "", describe_run(data), ""] + markdown_tables(data)
    cmp = data.get("none_vs_lineage_rl")
    if cmp is not None:
        if cmp.get("identical"):
            note = "The unfrozen run reproduces the lineage's RL member bit for bit."
        else:
            note = (f"The unfrozen run differs from the lineage's RL member in {cmp.get('tensors_differing')} of "
                    f"{cmp.get('tensors')} tensors (max |Δ| {cmp.get('max_abs_diff', 0):.2g}): that member was "
                    "trained with another thread count or machine (float summation order), or from a reloaded IN "
                    "(docs/necessity.md).")
        lines += ["", note]
    return "\n".join(lines) + "\n"


def format_html(data: dict[str, Any]) -> str:
    """The tables as HTML (for the demo's report)."""
    import html

    esc = html.escape
    parts = ['<h2 id="necessity">Necessity: RL with frozen LLM blocks</h2>', f"<p>{esc(describe_run(data))}</p>"]
    table: list[str] = []
    for line in markdown_tables(data) + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= set("-:") for c in cells):
                continue
            tag = "th" if not table else "td"
            table.append("<tr>" + "".join(f"<{tag}>{esc(c)}</{tag}>" for c in cells) + "</tr>")
        else:
            if table:
                parts.append('<table class="leaderboard">' + "".join(table) + "</table>")
                table = []
            if line:
                parts.append(f"<p>{esc(line)}</p>")
    return "\n".join(parts)


def write_outputs(data: dict[str, Any], out: Any) -> dict[str, Path]:
    """``necessity.json``, ``necessity.md`` and ``necessity.png`` into the guarded folder ``out``."""
    from frankeneval.reports.necessity_plots import plot_necessity

    folder = Path(claim_outputs(out))
    paths = {"json": folder / "necessity.json", "md": folder / "necessity.md", "png": folder / "necessity.png"}
    write_json_atomic(paths["json"], data, indent=1)
    atomic_write_text(paths["md"], format_markdown(data))
    plot_necessity(data, paths["png"])
    return paths


# -- the lineage per recipe ----------------------------------------------------------------------
RECIPES = ("default", "smoke")


def lineage_dir_for(recipe: str, seed: int = 0) -> Path:
    """The lineage's cache folder: the default recipe's is the demo's (``trained_lineage_dir``); any other recipe
    gets its own, so building it never replaces the default build."""
    from frankeneval.miniature.training import trained_lineage_dir

    if recipe == "default":
        return trained_lineage_dir(seed)
    return default_cache_dir() / "lineages" / f"trained-{recipe}-seed{seed}-v{__version__}"


def lineage_for_recipe(recipe: str, *, seed: int = 0, progress: bool = True):
    """The trained lineage of ``recipe`` (built once and cached; the default recipe's is evaluated as the demo's)."""
    from frankeneval.miniature import training as tl

    recipes = {"default": tl.DEFAULT_RECIPE, "smoke": tl.SMOKE_RECIPE}
    if recipe not in recipes:
        raise FrankenevalError(f"--recipe {recipe!r}: choose {', '.join(RECIPES)}")
    return tl.build_trained_lineage(lineage_dir_for(recipe, seed), seed=seed, recipe=recipes[recipe],
                                    evaluate_members=recipe == "default", progress=progress)
