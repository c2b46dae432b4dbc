"""The whole analysis on a built-in lineage, with no downloads: the README's first command.

Stages (each resumable; a rerun skips finished work):

1. lineage -- the trained miniature lineage (``frankeneval.miniature.training``; built once, cached), or with
   ``lineage="random"`` the random tiny lineage with planted updates (``frankeneval.miniature.lineage.write_lineage``);
2. characterize -- ΔIN / ΔRL energy and rank per layer, plus its plots;
3. splice + evaluate -- the six Frankenstein variants materialized, then Base, IN, RL and the variants evaluated
   through lmms-eval (:mod:`frankeneval.transferability.transfer`) on local tasks: for the trained lineage the
   world's three axes and the paper's paired controls on the same items (perception with a black image: M_vis;
   alignment with a black image, and with a black image + the world's own description of the scene: M_v2r;
   reasoning: M_rea), 100 items per task; else GSM8K and the black-image MathVista controls from a local data folder
   when present, else the built-in rendered probes; small sample sizes;
4. localization -- a layer-ablation sweep (reasoning) and a visual-token swap sweep (vision) on the RL model;
   with ``necessity=True`` (``demo --necessity``, trained lineage only) also the necessity experiment
   (:func:`frankeneval.miniature.necessity.run_necessity`: the lineage's RL stage re-run from IN with LLM blocks
   frozen, cached) into ``necessity/``;
5. report -- the leaderboard (markdown printed; HTML, CSV, LaTeX written), with the necessity table and plot when
   that stage ran.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frankeneval.core.runstore import RunStore
from frankeneval.errors import FrankenevalError

__all__ = ["DemoResult", "choose_tasks", "run_demo", "shared_data_dir"]


@dataclass
class DemoResult:
    out: Path
    lineage: str
    tasks: list[str]
    report: dict[str, Path] = field(default_factory=dict)
    markdown: str = ""
    failed_stages: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def shared_data_dir() -> Path | None:
    """A local data folder (``$FRANKENEVAL_DATA`` or ``../shared/data`` next to the package) holding GSM8K."""
    cands = [os.environ.get("FRANKENEVAL_DATA"), os.environ.get("FRANKENEVAL_SHARED_DATA"),
             str(Path(__file__).resolve().parents[3] / "shared" / "data")]
    for c in cands:
        if c and (Path(c) / "gsm8k" / "test.jsonl").is_file():
            return Path(c)
    return None


def choose_tasks(lineage_kind: str, data: Path | None) -> list[str]:
    """One lmms-eval invocation per model (a comma list is one cell): world tasks, local data, or probes.
    The ``franken_world`` group holds the three axes and their controls (``franken_world_perception_black``,
    ``franken_world_alignment_black``, ``franken_world_alignment_blackdesc``)."""
    if lineage_kind == "trained":
        return ["franken_world"]
    if data is not None:
        return ["franken_gsm8k,franken_mathvista_perception_black,franken_mathvista_alignment_black"]
    return ["franken_probes"]


# the miniature lineages (random and trained) were never trained with a system prompt: the demo evaluates them
# without one (explicitly, recorded as "fixed: none"), as before the resolver existed -- not by the name rule, which
# gives the member dirs base / in / rl (and their splices) the reasoner prompt
DEMO_SYSTEM_PROMPT = "none"


def _lineage(out: Path, kind: str, log: Callable[[str], None]):
    if kind == "trained":
        from frankeneval.miniature.training import build_trained_lineage, trained_lineage_dir

        log("[demo 1/5] lineage: the trained miniature lineage (built once, cached)")
        return build_trained_lineage(trained_lineage_dir(0), seed=0, progress=True)
    from frankeneval.miniature.lineage import write_lineage

    log("[demo 1/5] lineage: the random tiny lineage with planted updates (RL update in the late third)")
    return write_lineage(out / "lineage", preset="tiny", seed=0, progress=False)


def _sweep_commands(kind: str, model: Path, out: Path, *, sample_size: int, max_new: int, fast: bool,
                    data_dir: Path | None) -> dict[str, list[str]]:
    """The ``frankeneval`` argv of each localization sweep on ``model`` (the RL member).

    Trained lineage: the world's own held-out reasoning items (GSM8K format) and probe pairs. Both lineages run
    with ``--system-prompt none`` (:data:`DEMO_SYSTEM_PROMPT`): the name rule would pick the reasoner prompt for the
    member dirs ``base`` / ``in`` / ``rl``, which the tiny models never saw.
    Random lineage: GSM8K from a local data folder when there is one, and the built-in rendered probes.
    """
    reasoning = ["localize-reasoning", "--model", str(model), "--dataset", "gsm8k", "--samples", str(sample_size),
                 "--max-new-tokens", str(max_new), "--system-prompt", DEMO_SYSTEM_PROMPT,
                 "--out", str(out / "localize" / "reasoning")]
    vision_out = ["--out", str(out / "localize" / "vision")]
    if kind == "trained":
        from frankeneval.miniature import world

        n_pairs = 4 if fast else 40
        items = world.write_reasoning_gsm8k(out / "world_reasoning.jsonl", n=max(sample_size, 40))
        probes = world.write_vision_probes(out / "probes", n_per_task=n_pairs)
        return {"reasoning": reasoning[:5] + ["--data", str(items)] + reasoning[5:],
                "vision": ["localize-vision", "--model", str(model), "--data", str(probes), "--samples", str(n_pairs),
                           "--max-new-tokens", "24", *vision_out]}  # box answers are longer than a word
    sweeps = {"vision": ["localize-vision", "--model", str(model), "--rendered", str(out / "probes"),
                         "--samples", "2" if fast else "4", "--max-new-tokens", "8", *vision_out]}
    if data_dir is not None:
        sweeps = {"reasoning": reasoning[:5] + ["--data", str(data_dir / "gsm8k" / "test.jsonl")] + reasoning[5:],
                  **sweeps}
    return sweeps


def run_demo(
    out: str | os.PathLike = "frankeneval-demo",
    *,
    lineage: str = "trained",
    fast: bool = False,
    data: str | os.PathLike | None = None,
    progress: Callable[[str], None] = print,
    runner: Any = None,
    localization: bool = True,
    necessity: bool = False,
) -> DemoResult:
    """Run every stage into ``out`` (see the module docstring); returns where the report is."""
    from frankeneval.reports.leaderboard.build import build_leaderboard
    from frankeneval.reports.leaderboard.report import render, write_report
    from frankeneval.transferability.recipes import tiny_recipe
    from frankeneval.transferability.transfer import run_transfer

    out = Path(out).expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)
    if lineage not in ("trained", "random"):
        raise FrankenevalError(f"--lineage {lineage!r}: choose trained or random")
    kind = lineage
    data_dir = Path(data) if data else (shared_data_dir() if kind == "random" else None)
    tasks = choose_tasks(kind, data_dir)
    # the trained lineage has real accuracies: enough items for the table to mean something (fast: CI smoke sizes)
    sample_size, max_new = ((3, 12) if fast else (8, 24)) if kind == "random" else ((8, 40) if fast else (100, 40))
    stages = RunStore(out / "demo.jsonl", header={"lineage": kind, "fast": fast, "tasks": tasks})
    result = DemoResult(out=out, lineage=kind, tasks=tasks)

    t0 = time.perf_counter()
    lin = _lineage(out, kind, progress)
    result.seconds["lineage"] = time.perf_counter() - t0

    # 2. characterize
    t0 = time.perf_counter()
    if stages.done("characterize"):
        progress("[demo 2/5] characterize: done earlier")
    else:
        progress("[demo 2/5] characterize: ΔIN and ΔRL of every weight matrix")
        try:
            from frankeneval.characterization.characterize import characterize
            from frankeneval.reports.characterization_plots import plot_run

            characterize(lin.base, lin.in_, lin.rl, out / "characterize", device="cpu", progress=False)
            plots = plot_run(out / "characterize")
            stages.append("characterize", {"plots": [str(p) for p in plots]})
        except Exception as exc:  # keep going: the leaderboard does not need this stage
            result.failed_stages["characterize"] = f"{type(exc).__name__}: {exc}"
            progress(f"[demo] characterize FAILED: {exc}")
    result.seconds["characterize"] = time.perf_counter() - t0

    # 3. splice + evaluate
    t0 = time.perf_counter()
    progress(f"[demo 3/5] splice the six variants and evaluate Base, IN, RL and the variants on {', '.join(tasks)} "
             f"({sample_size} items per task, {max_new} new tokens)")
    run_transfer(out / "transfer", tiny_recipe(lin), tasks=tasks, splice_cache=out / "splices", sample_size=sample_size,
                 sample_seed=123, data_dir=data_dir, offline=True, max_new_tokens=max_new,
                 batch_size=8 if kind == "random" else 32,
                 system_prompt=DEMO_SYSTEM_PROMPT, runner=runner, progress=progress)
    result.seconds["transfer"] = time.perf_counter() - t0

    # 4. localization sweeps (through their commands, so the demo runs exactly what a user would)
    t0 = time.perf_counter()
    if localization:
        from frankeneval.cli import main as cli

        sweeps = _sweep_commands(kind, lin.rl, out, sample_size=sample_size, max_new=max_new, fast=fast,
                                 data_dir=data_dir)
        for i, (name, argv) in enumerate(sweeps.items()):
            if stages.done(f"localize_{name}"):
                progress(f"[demo 4/5] localization ({name}): done earlier")
                continue
            progress(f"[demo 4/5] localization ({name}): frankeneval {' '.join(argv)}")
            try:
                rc = cli(argv + ["--no-progress"]) if "--no-progress" not in argv else cli(argv)
            except SystemExit as exc:  # argparse errors
                rc = exc.code if isinstance(exc.code, int) else 2
            except Exception as exc:
                rc, msg = 1, f"{type(exc).__name__}: {exc}"
                result.failed_stages[f"localize_{name}"] = msg
            if rc == 0:
                stages.append(f"localize_{name}", {"out": argv[-1]})
            else:
                result.failed_stages.setdefault(f"localize_{name}", f"exit code {rc}")
                progress(f"[demo] localization ({name}) FAILED: {result.failed_stages[f'localize_{name}']}")
    result.seconds["localize"] = time.perf_counter() - t0

    # 4b. necessity (optional: five RL runs of the lineage's recipe, ~20 min on 2 cores, cached)
    sections: list[tuple[str, str]] = []
    if necessity:
        t0 = time.perf_counter()
        data = _necessity_stage(out, kind, lin, fast=fast, log=progress, failed=result.failed_stages)
        if data is not None:
            from frankeneval.miniature.necessity import format_html, format_markdown

            sections.append((format_markdown(data), format_html(data)))
        result.seconds["necessity"] = time.perf_counter() - t0

    # 5. report
    progress("[demo 5/5] report")
    plot_dirs = [d for d in (out / "characterize", out / "localize", out / "necessity") if d.exists()]
    result.report = write_report(out / "transfer", plot_dirs=plot_dirs, sections=sections)
    result.markdown = render(build_leaderboard(out / "transfer"), "md")
    if sections:
        result.markdown = result.markdown.rstrip("\n") + "\n\n" + sections[0][0]
    return result


NECESSITY_FAST_ITEMS = 24  # held-out items per eval set in ``demo --fast --necessity`` (else the lineage's sizes)


def _necessity_stage(out: Path, kind: str, lin, *, fast: bool, log: Callable[[str], None],
                     failed: dict[str, str]) -> dict[str, Any] | None:
    """Run (or reuse: every run is cached by content) the necessity experiment on the trained lineage into
    ``out/necessity``; returns its data, or None (recorded in ``failed``) when it cannot run."""
    if kind != "trained":
        failed["necessity"] = "needs the trained lineage (the random lineage has no RL recipe to re-run)"
        log(f"[demo] necessity skipped: {failed['necessity']}")
        return None
    from frankeneval.miniature.necessity import run_necessity

    log("[demo 4/5] necessity: the lineage's RL re-run from IN with LLM blocks frozen (none, early, middle, late, "
        "middle+late; cached)")
    sizes = ({k: NECESSITY_FAST_ITEMS for k in ("perception", "alignment", "reasoning", "alignment_blackdesc")}
             if fast else None)
    try:
        return run_necessity(lin, eval_sizes=sizes, out=out / "necessity", log=log, progress=not fast).data
    except FrankenevalError as exc:
        failed["necessity"] = str(exc)
        log(f"[demo] necessity FAILED: {exc}")
        return None
