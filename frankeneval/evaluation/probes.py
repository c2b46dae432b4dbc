"""Vision probes: paired (target, source) images for visual-token swapping -- the folder format.

A probe folder holds ``<task>/data.jsonl`` (rows: ``id``, ``task``, ``target_image``, ``source_image`` relative to the
task folder, ``prompt``, ``meta``) and the images. Vision localization gives ``prompt`` verbatim after the image (a
literal ``<image>`` in it stays text); ``text_prompt`` drops it (the harness tasks' form). ``meta`` carries the
answers for both images: counting / recognition ``target_answer`` / ``source_answer``; OCR ``target_text`` /
``source_text``; grounding ``target_bbox_xyxy`` / ``source_bbox_xyxy``, ``object_name``, ``iou_threshold``. The two
images of a pair always have the same size, so they give the same number of visual tokens.

This module is the format only -- reading, checking and writing such folders -- and draws nothing. The one
renderer is the miniature world's (:func:`frankeneval.miniature.world.write_vision_probes`: its scenes on the 3 x 3
grid the demo lineage is trained on), used by ``frankeneval make-probes``, ``--rendered`` and the harness tasks'
built-in probes. It writes through :func:`write_probe_folders` (the guarded output folder, a ``generator.json`` stamp
per task folder) and :func:`write_probe_task` (one task folder from rendered pairs).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frankeneval.core.results import atomic_output, atomic_write_text, staged_directory, write_json_atomic
from frankeneval.errors import FrankenevalError
from frankeneval.evaluation.inputs_check import Broken, BrokenRow, image_problem

__all__ = ["GENERATOR_STAMP", "PROBE_TASKS", "ProbePair", "check_pair", "load_probe_pairs", "owned_probe_folder",
           "probe_task_dir", "write_probe_folders", "write_probe_task"]

PROBE_TASKS = ("counting", "ocr", "grounding", "recognition")


@dataclass(frozen=True)
class ProbePair:
    """One probe pair; image paths are absolute."""

    id: str
    task: str
    target_image: Path
    source_image: Path
    prompt: str
    meta: dict

    @property
    def text_prompt(self) -> str:
        """The prompt without the literal ``<image>`` some rows carry (the harness tasks' form). Vision localization
        gives ``prompt`` verbatim instead (docs/method.md: the ``<image>`` stays text)."""
        return self.prompt.replace("<image>", "").strip()

    def answer(self, which: str = "target"):
        """The expected answer for the ``target`` or ``source`` image (str, or an xyxy box for grounding)."""
        m = self.meta
        if self.task == "ocr":
            return m[f"{which}_text"]
        if self.task == "grounding":
            return list(m[f"{which}_bbox_xyxy"])
        return str(m[f"{which}_answer"])


def probe_task_dir(folder: str | os.PathLike, task: str) -> Path:
    """``folder`` if it is a task folder, else ``folder/<task>`` (or ``folder/vision_probes/<task>``)."""
    p = Path(folder).expanduser()
    for c in (p, p / task, p / "vision_probes" / task):
        if (c / "data.jsonl").is_file() and (c.name == task or c == p):
            return c
    raise FrankenevalError(
        f"no probe data for task {task!r} under {p} (expected {p / task / 'data.jsonl'}); "
        "point FRANKENEVAL_DATA / data_path at a folder in the vision_probes format, or generate one with "
        "`frankeneval make-probes OUT`."
    )


def load_probe_pairs(folder: str | os.PathLike, task: str, *, check_images: bool = True,
                     keep_broken: bool = False) -> list[ProbePair]:
    """The pairs of one probe task from a vision_probes-format folder (root or task folder).

    A malformed row raises a FrankenevalError naming ``file:line``; ``keep_broken``: it becomes a
    :class:`~frankeneval.evaluation.inputs_check.BrokenRow` in its place instead (file order kept, for selection;
    :func:`check_pair` reports it). ``check_images``: every row's image files must exist."""
    if task not in PROBE_TASKS:
        raise FrankenevalError(f"unknown probe task {task!r}; known: {', '.join(PROBE_TASKS)}")
    tdir = probe_task_dir(folder, task)
    pairs: list = []
    with open(tdir / "data.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pair = ProbePair(str(row["id"]), row.get("task", task), (tdir / row["target_image"]).resolve(),
                                 (tdir / row["source_image"]).resolve(), row["prompt"], dict(row.get("meta") or {}))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                reason = f"bad probe row ({exc})"
                if not keep_broken:
                    raise FrankenevalError(f"{tdir / 'data.jsonl'}:{i}: {reason}") from None
                pairs.append(BrokenRow(f"{tdir / 'data.jsonl'}:{i}", reason))
                continue
            if pair.task != task:
                continue
            if check_images:
                for img in (pair.target_image, pair.source_image):
                    if not img.is_file():
                        raise FrankenevalError(f"{tdir / 'data.jsonl'}:{i}: image not found: {img}")
            pairs.append(pair)
    return pairs


def check_pair(pair: ProbePair | BrokenRow) -> ProbePair:
    """The pair, once both its images decode; else :class:`~frankeneval.evaluation.inputs_check.Broken` naming the
    file."""
    if isinstance(pair, BrokenRow):
        raise Broken(pair.where, pair.reason)
    for img in (pair.target_image, pair.source_image):
        problem = image_problem(img)
        if problem:
            raise Broken(img, problem)
    return pair


# --------------------------------------------------------------------------- writing


def write_probe_task(folder: str | os.PathLike, task: str, pairs: Iterable[tuple[Any, Any, str, dict]]) -> Path:
    """Write one task folder of the vision_probes format from rendered pairs ``(target image, source image, prompt,
    meta)``, in order: ``images/<task>_NNNNNN_t.png`` / ``_s.png`` and ``data.jsonl`` (one row per pair: ``id``,
    ``task``, ``target_image``, ``source_image``, ``prompt``, ``meta``). Every file is written atomically."""
    tdir = Path(folder)
    (tdir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (target, source, prompt, meta) in enumerate(pairs):
        pid = f"{task}_{i:06d}"
        t_rel, s_rel = f"images/{pid}_t.png", f"images/{pid}_s.png"
        for image, rel in ((target, t_rel), (source, s_rel)):
            with atomic_output(tdir / rel) as tmp:
                image.save(tmp)
        rows.append({"id": pid, "task": task, "target_image": t_rel, "source_image": s_rel, "prompt": prompt,
                     "meta": meta})
    atomic_write_text(tdir / "data.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return tdir


GENERATOR_STAMP = "generator.json"  # what a task folder was rendered from (write_probe_folders' stamp)


def owned_probe_folder(task: str, *, stamp: str | None = None) -> Callable[[Path], str | None]:
    """For :func:`~frankeneval.core.results.staged_directory`: a probe task folder may be replaced only when it holds
    exactly what frankeneval's probe writers write -- ``data.jsonl`` and ``images/<task>_NNNNNN_[ts].png`` (and the
    ``stamp`` file, which must then be there: a folder without it is someone's own dataset)."""
    pattern = re.compile(rf"{re.escape(task)}_\d{{6}}_[ts]\.png")
    own = {"data.jsonl", *([stamp] if stamp else [])}

    def owned(folder: Path) -> str | None:
        if stamp and not ((folder / stamp).is_file() and not (folder / stamp).is_symlink()):
            return (f"it is a probe dataset frankeneval did not render (no {stamp}); move it away or choose another "
                    "folder")
        extra = [e.name for e in os.scandir(folder)
                 if not (e.name in own and e.is_file(follow_symlinks=False))
                 and not (e.name == "images" and e.is_dir(follow_symlinks=False))]
        images = folder / "images"
        if images.is_dir() and not images.is_symlink():
            extra += [f"images/{e.name}" for e in os.scandir(images)
                      if not (e.is_file(follow_symlinks=False) and pattern.fullmatch(e.name))]
        if not extra:
            return None
        return (f"it holds files frankeneval did not write ({', '.join(sorted(extra)[:5])}); move them away or choose "
                "another output")

    return owned


def _rendered_root(folder: Path, present: set[str]) -> str | None:
    """Adopt a probe folder an older frankeneval rendered without the output marker: nothing but task folders
    :func:`write_probe_folders` wrote (each with its generator stamp)."""
    for name in sorted(present):
        path = folder / name
        if name not in PROBE_TASKS or path.is_symlink() or not path.is_dir():
            return f"it holds files frankeneval did not write ({name})"
        why = owned_probe_folder(name, stamp=GENERATOR_STAMP)(path)
        if why:
            return f"its {name}/ {why.split(';')[0].removeprefix('it ')}"
    return None


def _read_stamp(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() and not path.is_symlink() else None
    except (OSError, ValueError):
        return None


def write_probe_folders(out_dir: str | os.PathLike, tasks: Iterable[str],
                        render: Callable[[str], Iterable[tuple[Any, Any, str, dict]]], stamp: Mapping[str, Any], *,
                        command: str = "make-probes") -> dict[str, Path]:
    """Write ``out_dir/<task>/`` (data.jsonl + images/ + ``generator.json``) for each task from ``render(task)`` (the
    rendered pairs, :func:`write_probe_task`); returns the task folders. ``stamp`` says what the renderer's output
    depends on (renderer, n, seed, ...): a task folder that already holds a complete render with the same stamp
    (and the task) is kept as it is.

    Never overwrites a probe dataset frankeneval did not render: ``out_dir`` is claimed as an output folder
    (:func:`frankeneval.core.outdir.claim_output_dir`; pass an already claimed one to allow foreign files beside),
    and a task folder is replaced -- atomically, as a whole -- only when it holds exactly what a frankeneval probe
    writer wrote (its ``generator.json`` stamp, ``data.jsonl`` and the rendered images); anything else is refused in
    one line.
    """
    from frankeneval.core.outdir import claim_output_dir

    tasks = list(tasks)
    for task in tasks:
        if task not in PROBE_TASKS:
            raise FrankenevalError(f"unknown probe task {task!r}; known: {', '.join(PROBE_TASKS)}")
    out = Path(claim_output_dir(out_dir, command=command, files=tasks, adopt=_rendered_root))
    written = {}
    for task in tasks:
        tdir = out / task
        task_stamp = {"task": task, **stamp}
        owned = owned_probe_folder(task, stamp=GENERATOR_STAMP)
        if tdir.is_dir() and not tdir.is_symlink() and owned(tdir) is None and (tdir / "data.jsonl").is_file() \
                and _read_stamp(tdir / GENERATOR_STAMP) == task_stamp:
            written[task] = tdir
            continue
        with staged_directory(tdir, owned=owned) as tmp:
            write_probe_task(tmp, task, render(task))
            write_json_atomic(tmp / GENERATOR_STAMP, task_stamp, newline=False)
        written[task] = tdir
    return written
