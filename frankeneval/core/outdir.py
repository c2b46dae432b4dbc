"""One guarded output folder for every command: frankeneval writes only into a folder it owns.

:func:`claim_output_dir` is called by every command (and the library function behind it) before anything is
written; it returns an :class:`OutputFolder` (a path-like object: ``Path(folder) / name`` works as before). A
folder may be written into only when

* it is **no input**: it is not, holds no, and lies inside no input (models, data folders, checkpoints, earlier
  runs read; :func:`frankeneval.core.results.refuse_inputs`, real paths), and it is **no model checkpoint** nor
  inside one (a folder with ``config.json`` or weight files such as ``*.safetensors``), even when the user allows
  foreign files;
* it is **owned by frankeneval**: new, empty, or marked by the marker file ``.frankeneval-output`` (the commands
  that wrote it, and the top-level names they wrote). A folder that an older frankeneval wrote without the marker
  is adopted only when its contents prove it (``adopt``, e.g. a characterize ``run.json`` of ours and nothing
  else); a subfolder with a marker of its own (``plots/``, ``probes/``) counts as ours;
* it **holds no foreign files** -- anything else is refused in one line unless the user passes
  ``--allow-foreign-files``; even then a file the command writes that exists and is not ours is refused, so a
  user's file is never overwritten, appended to or deleted;
* it is **never reached through a symbolic link**: the folder itself, the marker, and every file the command
  declares (``files``) must not be links (a ``matrices.jsonl`` that links elsewhere is refused).

Writes are atomic (:mod:`frankeneval.core.results`: temp file + ``os.replace``, ``O_NOFOLLOW`` appends), and the
marker is updated under the folder's lock (:func:`frankeneval.core.locks.output_lock`, created exclusively).
Refusals are :class:`~frankeneval.errors.OutputRefused`: one line, nothing written.

Splice and transfer guard their outputs with the same pieces: splice's ``staged_directory(owned=...)`` and
``refuse_inputs`` (a splice is itself a checkpoint, so it has its own ownership proof, its provenance file);
transfer's run folder goes through :func:`claim_output_dir` with ``whole=True`` (its layout is dynamic: once the
folder is ours, every entry is).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frankeneval import __version__
from frankeneval.core.locks import output_lock
from frankeneval.core.results import open_nofollow, refuse_inputs, write_json_atomic
from frankeneval.errors import OutputRefused

__all__ = [
    "ALLOW_FOREIGN_HELP",
    "MARKER",
    "Adopt",
    "OutputFolder",
    "OutputRequest",
    "LAYOUTS",
    "Layout",
    "anchored",
    "claim_for",
    "claim_output_dir",
    "local_inputs",
    "is_marked",
    "json_with",
    "model_files",
    "run_store_of",
]

MARKER = ".frankeneval-output"
ALLOW_FOREIGN_HELP = ("write into an output folder that holds files frankeneval did not write (they are never "
                      "overwritten, appended to or deleted; a model checkpoint or an input is refused all the same)")

Adopt = Callable[[Path, "set[str]"], "str | None"]
"""``adopt(folder, names)``: None when an unmarked folder holding ``names`` is a result an older frankeneval wrote
(its names are then ours), else why not (shown in the refusal)."""

# names frankeneval itself leaves next to what it writes: locks (and their creation temp names), temp files and
# staged folders of interrupted writers; never user files (hidden names of these exact shapes only)
_INTERNAL = re.compile(r"\..+\.(?:lock(?:\.new-\d+-[0-9a-f]{8})?|(?:tmp|old)-\S+)")
_MODEL_PATTERNS = ("config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
                   "pytorch_model.bin.index.json", "*.gguf")
_WEIGHT_PATTERNS = _MODEL_PATTERNS[1:]


def _shown(names: Iterable[str]) -> str:
    names = sorted(names)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _internal(name: str) -> bool:
    return name == MARKER or _INTERNAL.fullmatch(name) is not None


def model_files(names: Iterable[str]) -> list[str]:
    """The names among ``names`` that a model checkpoint holds (``config.json``, weights, weight indexes)."""
    return sorted(n for n in names if any(fnmatch.fnmatch(n, pat) for pat in _MODEL_PATTERNS))


def _is_checkpoint(folder: Path) -> bool:
    """``folder`` holds a config.json and weights (cheap: only a folder with a config.json is listed)."""
    try:
        if not (folder / "config.json").is_file():
            return False
        return any(any(fnmatch.fnmatch(e.name, pat) for pat in _WEIGHT_PATTERNS) for e in os.scandir(folder))
    except OSError:
        return False


def _read_marker(folder: Path) -> dict[str, Any] | None:
    path = folder / MARKER
    if not os.path.lexists(path):
        return None
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except OutputRefused:
        raise OutputRefused(f"{path} is not frankeneval's marker (a link or not a file); nothing was written: "
                            "move it away or choose another output folder") from None
    try:
        data = json.loads(os.read(fd, 1 << 20))
    except ValueError:
        data = None
    finally:
        os.close(fd)
    if not isinstance(data, dict) or data.get("frankeneval_output") != 1 or not isinstance(data.get("entries"), list):
        raise OutputRefused(f"{path} is not frankeneval's marker (not the JSON frankeneval writes); nothing was "
                            "written: move it away or choose another output folder")
    return data


def is_marked(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` (not a link) carries a readable frankeneval marker."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:
        return _read_marker(folder) is not None
    except OutputRefused:
        return False


# -- adoption of folders older versions wrote without a marker ----------------------------------------------
def _read_json(path: Path) -> tuple[Any, str | None]:
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except (OutputRefused, OSError):
        return None, f"its {path.name} is a link or not a readable file"
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    try:
        return json.loads(b"".join(chunks)), None
    except ValueError:
        return None, f"its {path.name} is not the JSON frankeneval writes"


def json_with(**expected: Any) -> Callable[[Path], str | None]:
    """A check of an anchor file: a JSON object holding ``expected`` (key: value; value None = any value)."""

    def check(path: Path) -> str | None:
        data, problem = _read_json(path)
        if problem:
            return problem
        if not isinstance(data, dict) or any(k not in data or (v is not None and data[k] != v)
                                             for k, v in expected.items()):
            return f"its {path.name} was not written by frankeneval"
        return None

    return check


def run_store_of(*analyses: str) -> Callable[[Path], str | None]:
    """A check of an anchor run store: its first line is a run-store header (of one of ``analyses`` when given)."""

    def check(path: Path) -> str | None:
        try:
            fd = open_nofollow(path, os.O_RDONLY)
        except (OutputRefused, OSError):
            return f"its {path.name} is a link or not a readable file"
        try:
            first = os.read(fd, 1 << 20).split(b"\n", 1)[0]
        finally:
            os.close(fd)
        try:
            header = json.loads(first).get("_header")
        except (ValueError, AttributeError):
            header = None
        if not isinstance(header, dict) or (analyses and header.get("analysis") not in analyses):
            return f"its {path.name} was not written by frankeneval (no run-store header)"
        return None

    return check


def anchored(anchor: str, check: Callable[[Path], str | None], names: Iterable[str] = (), *,
             whole: bool = False) -> Adopt:
    """Adopt an unmarked folder whose ``anchor`` file passes ``check`` and that holds nothing but ``names`` (and
    the anchor); ``whole``: whatever else it holds (a command that owns the folder's whole layout)."""
    own = {anchor, *names}

    def adopt(folder: Path, present: set[str]) -> str | None:
        if anchor not in present:
            return f"it holds {_shown(present)} but no {MARKER} marker nor a {anchor} of a frankeneval run"
        why = check(folder / anchor)
        if why:
            return why
        extra = set() if whole else present - own
        return f"it holds files frankeneval did not write ({_shown(extra)})" if extra else None

    return adopt


# -- the folder ---------------------------------------------------------------------------------------------
class OutputRequest(os.PathLike):
    """An output folder named by the user and not claimed yet, with their choice about foreign files
    (``--allow-foreign-files``): the library function that knows the run's inputs claims it."""

    def __init__(self, path: str | os.PathLike, *, allow_foreign: bool = False) -> None:
        self.path = path
        self.allow_foreign = allow_foreign

    def __fspath__(self) -> str:
        return os.fspath(Path(self.path).expanduser())

    def __str__(self) -> str:
        return os.fspath(self)

    def __truediv__(self, name: str) -> Path:
        return Path(self) / name


class OutputFolder(os.PathLike):
    """A claimed output folder (path-like). ``claim`` declares more names the command writes (checked the same
    way); ``file(name)`` is ``claim([name])`` and the path."""

    def __init__(self, path: Path, command: str, *, allow_foreign: bool, ours: set[str], inputs: list) -> None:
        self.path = path
        self.command = command
        self.allow_foreign = allow_foreign
        self.ours = ours
        self.inputs = inputs

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"OutputFolder({str(self.path)!r}, command={self.command!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def claim(self, files: Iterable[str] = (), *, inputs: Iterable[tuple[str, str | os.PathLike]] = (),
              command: str | None = None) -> OutputFolder:
        inputs = list(inputs)
        if inputs:
            refuse_inputs(self.path, inputs, "output folder")
            self.inputs += inputs
        files = [f for f in files if f not in self.ours]
        if files:
            with output_lock(self.path):
                marker = _read_marker(self.path) or {"frankeneval_output": 1, "entries": [], "commands": []}
                _check_files(self.path, files, self.ours | set(marker["entries"]))
                self.ours |= set(files)
                _write_marker(self.path, marker, command or self.command, self.ours,
                              bool(marker.get("whole")))
        return self

    def file(self, name: str) -> Path:
        self.claim([name])
        return self.path / name


def _check_files(folder: Path, files: Iterable[str], ours: set[str], links: Iterable[str] = ()) -> None:
    links = set(links)
    for name in files:
        path = folder / name
        if os.path.islink(path) and name not in links:
            raise OutputRefused(f"{path} is a symbolic link; frankeneval never writes through a link (nothing was "
                                "written): remove the link or choose another output folder")
        if os.path.lexists(path) and name not in ours:
            raise OutputRefused(f"{path} exists and was not written by frankeneval; nothing was written or "
                                "overwritten: move it away or choose another output folder")


def _write_marker(folder: Path, marker: dict[str, Any], command: str, ours: set[str], whole: bool) -> None:
    commands = list(marker.get("commands") or [])
    if command not in commands:
        commands.append(command)
    new = {"frankeneval_output": 1, "commands": commands, "entries": sorted(ours), "whole": whole,
           "created": marker.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"), "frankeneval": __version__}
    if new != marker:
        write_json_atomic(folder / MARKER, new, indent=1)


def _refuse_model_folder(path: Path, present: Iterable[str], ours: set[str]) -> None:
    found = [n for n in model_files(present) if n not in ours]
    if found:
        raise OutputRefused(f"{path} looks like a model checkpoint ({_shown(found)}); frankeneval never writes into "
                            "a model or data folder (nothing was written): choose another output folder")
    for parent in path.parents:
        if _is_checkpoint(parent):
            raise OutputRefused(f"{path} lies inside the model checkpoint {parent}; frankeneval never writes into a "
                                "model folder (nothing was written): choose another output folder")


def claim_output_dir(
    path: str | os.PathLike | OutputFolder | OutputRequest,
    *,
    command: str,
    files: Iterable[str] = (),
    inputs: Iterable[tuple[str, str | os.PathLike]] = (),
    allow_foreign: bool = False,
    adopt: Adopt | None = None,
    whole: bool = False,
    links: Iterable[str] = (),
) -> OutputFolder:
    """Claim ``path`` as ``command``'s output folder (see the module docstring); returns the :class:`OutputFolder`.

    ``files``: the top-level names the command writes (files or subfolders); each must be absent, or ours and not a
    symbolic link. ``inputs``: (label, path) pairs the folder must not be, hold or lie inside. ``allow_foreign``:
    the user's explicit ``--allow-foreign-files``. ``adopt``: how an older, unmarked result of this command is
    recognized. ``whole``: the command owns the folder's whole layout (transfer's run folder): once the folder is
    ours, every entry in it is. ``links``: names among ``files`` that may be symbolic links frankeneval made (the
    command checks their targets: demo-lineage's members linked to the cache). An :class:`OutputFolder` passed as
    ``path`` is claimed further (``files``, ``inputs``); an :class:`OutputRequest` carries the user's
    ``allow_foreign``. Creates the folder and writes the marker; raises :class:`~frankeneval.errors.OutputRefused`.
    """
    if isinstance(path, OutputFolder):
        return path.claim(files, inputs=inputs, command=command)
    if isinstance(path, OutputRequest):
        path, allow_foreign = path.path, allow_foreign or path.allow_foreign
    folder = Path(path).expanduser().absolute()
    inputs = list(inputs)
    files = list(files)
    if os.path.islink(folder):
        raise OutputRefused(f"{folder} is a symbolic link; frankeneval never writes through a link (nothing was "
                            "written): give the real folder or choose another output folder")
    if os.path.lexists(folder) and not folder.is_dir():
        raise OutputRefused(f"{folder} exists and is not a folder; nothing was written: choose another output folder")
    refuse_inputs(folder, inputs, "output folder")
    present = _entries(folder)
    marker = _read_marker(folder) if present is not None else None
    _refuse_model_folder(folder, present or (), set(marker["entries"]) if marker else set())
    folder.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(folder):
        folder.mkdir(exist_ok=True)
        present = _entries(folder) or set()
        marker = _read_marker(folder)
        ours = _ours(folder, present, marker, command, files, allow_foreign, adopt, whole)
        _check_files(folder, files, ours, links)
        whole = whole or bool(marker and marker.get("whole"))
        ours |= set(files)
        _write_marker(folder, marker or {}, command, ours, whole)
    return OutputFolder(folder, command, allow_foreign=allow_foreign, ours=ours, inputs=inputs)


def _entries(folder: Path) -> set[str] | None:
    """The names in ``folder`` that are not frankeneval's own bookkeeping; None when there is no folder."""
    try:
        return {e.name for e in os.scandir(folder) if not _internal(e.name)}
    except FileNotFoundError:
        return None


def _ours(folder: Path, present: set[str], marker: dict[str, Any] | None, command: str, files: list[str],
          allow_foreign: bool, adopt: Adopt | None, whole: bool) -> set[str]:
    """The names in ``folder`` frankeneval wrote; refuses a folder with foreign entries (unless allowed)."""
    if marker is not None:
        if whole or marker.get("whole"):
            return set(present) | set(marker["entries"])
        ours = set(marker["entries"]) | {n for n in present if is_marked(folder / n)}
        why = None
    elif not present:
        return set()
    else:
        why = adopt(folder, present) if adopt is not None else "no adoption"
        if why is None:
            return set(present)
        why = None if adopt is None else why
        ours = {n for n in present if is_marked(folder / n)}
        if not present - ours:
            return ours
    foreign = present - ours
    if foreign and not allow_foreign:
        reason = why or f"it holds files frankeneval did not write ({_shown(foreign)})"
        raise OutputRefused(f"{folder} is not an output folder of frankeneval {command}: {reason}. Nothing was "
                            "written: choose a new or empty folder, or pass --allow-foreign-files to write beside "
                            "files you own (they are never overwritten)")
    return ours


# -- what each command writes -------------------------------------------------------------------------------
def _png_files(folder: Path, present: set[str]) -> str | None:
    """Adopt a folder of PNGs named like ``plot``'s (each a real PNG file)."""
    extra = present - set(LAYOUTS["plot"].files)
    if extra:
        return f"it holds files frankeneval did not write ({_shown(extra)})"
    for name in present:
        try:
            fd = open_nofollow(folder / name, os.O_RDONLY)
        except (OutputRefused, OSError):
            return f"its {name} is a link or not a readable file"
        try:
            if os.read(fd, 8) != b"\x89PNG\r\n\x1a\n":
                return f"its {name} is not a PNG frankeneval drew"
        finally:
            os.close(fd)
    return None


def _transfer_folder(folder: Path, present: set[str]) -> str | None:
    """Adopt a transfer run folder (its manifest or run store is there: transfer's rule before the marker)."""
    for anchor in ("transfer.json", "cells.jsonl"):
        if anchor in present and (folder / anchor).is_file() and not (folder / anchor).is_symlink():
            return None
    return "it is not a frankeneval transfer run folder (no transfer.json or cells.jsonl) and is not empty"


_CHARACTERIZE = ("run.json", "matrices.jsonl", "summary.json")
_COMPARE = ("compare_run.json", "compare.jsonl", "compare_summary.json")


@dataclass(frozen=True)
class Layout:
    """What a command writes at the top of its output folder, and how its older unmarked folders are recognized."""

    files: tuple[str, ...]
    adopt: Adopt | None = None
    whole: bool = False


# what `frankeneval demo` writes at the top of its folder (each stage's own folder is claimed by its command)
_DEMO = ("demo.jsonl", "lineage", "world_reasoning.jsonl", "probes", "characterize", "localize", "transfer",
         "splices")

LAYOUTS: dict[str, Layout] = {
    "characterize": Layout(_CHARACTERIZE, anchored("run.json", json_with(schema="frankeneval.characterize/1"),
                                                   (*_CHARACTERIZE, *_COMPARE, "plots"))),
    "characterize --compare": Layout(_COMPARE, anchored("compare_run.json",
                                                        json_with(schema="frankeneval.characterize.compare/1"),
                                                        (*_CHARACTERIZE, *_COMPARE, "plots"))),
    "localize-vision": Layout(("units.jsonl", "vision_localization.json", "vision_localization.png"),
                              anchored("units.jsonl", run_store_of("vision_localization"),
                                       ("vision_localization.json", "vision_localization.png", "probes"))),
    "localize-reasoning": Layout(("units.jsonl", "reasoning_localization.json", "reasoning_localization.png"),
                                 anchored("units.jsonl", run_store_of("reasoning_localization"),
                                          ("reasoning_localization.json", "reasoning_localization.png"))),
    "attention-shift": Layout(("units.jsonl", "attention_shift.json", "attention_shift.png"),
                              anchored("units.jsonl", run_store_of("attention_shift"),
                                       ("attention_shift.json", "attention_shift.png", "probes"))),
    "plot": Layout(("energy_per_layer.png", "rank_per_layer.png", "spectra.png", "diversity_per_layer.png",
                    "region_spectra.png", "compare_cosine.png", "compare_overlap_left.png",
                    "compare_overlap_right.png"), _png_files),
    "report": Layout(("report.md", "report.csv", "report.html", "report.tex"), _transfer_folder),
    "transfer": Layout(("transfer.json", "cells.jsonl"), _transfer_folder, whole=True),
    "demo": Layout(_DEMO, anchored("demo.jsonl", run_store_of(), _DEMO)),
}


def local_inputs(*pairs: tuple[str, str | os.PathLike | None]) -> list[tuple[str, str | os.PathLike]]:
    """The (label, path) pairs whose path exists on disk (hub ids and unset options are no local input)."""
    return [(label, path) for label, path in pairs if path and os.path.lexists(Path(path).expanduser())]


def claim_for(layout: str, path: str | os.PathLike | OutputFolder | OutputRequest, *,
              inputs: Iterable[tuple[str, str | os.PathLike]] = (), allow_foreign: bool = False,
              extra: Iterable[str] = ()) -> OutputFolder:
    """:func:`claim_output_dir` with a command's :data:`LAYOUTS` entry (``extra``: more names this run writes)."""
    spec = LAYOUTS[layout]
    return claim_output_dir(path, command=layout.split()[0], files=(*spec.files, *extra), inputs=inputs,
                            allow_foreign=allow_foreign, adopt=spec.adopt, whole=spec.whole)
