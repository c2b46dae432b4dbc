"""A characterization run's directory and machine: the device, the run metadata, and the resume check that
refuses to mix results of runs with different settings or weights."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from frankeneval.core.results import write_json_atomic
from frankeneval.core.runstore import INPUTS, input_change
from frankeneval.errors import FrankenevalError, SpecError
from frankeneval.weights.checkpoint import Checkpoint


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: the GPU when CUDA is available, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FrankenevalError("--device cuda was asked for but no CUDA GPU is available (use --device auto or cpu)")
    return dev


def device_info(device: torch.device) -> dict[str, Any]:
    """The device, torch version and host a run used (stored in run.json)."""
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "host": platform.node()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def open_checkpoint(ref: str | os.PathLike | Checkpoint, *, allow_pickle: bool = False) -> Checkpoint:
    """``ref`` itself when it is a Checkpoint, else the checkpoint it names (pickle weights only with
    ``allow_pickle``, ``--allow-pickle``)."""
    return ref if isinstance(ref, Checkpoint) else Checkpoint.open(ref, allow_pickle=allow_pickle)


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def prepare_run_dir(out: Path, run_file: str, meta: dict[str, Any], *, overwrite: bool, files: Sequence[str],
                    legacy_settings: dict[str, Any] | None = None) -> None:
    """Create ``out``; refuse to resume a run whose settings or weights differ. ``legacy_settings``: values of
    settings that runs written before the setting existed were measured with (filled into their resume key)."""
    out.mkdir(parents=True, exist_ok=True)
    run_path = out / run_file
    if overwrite:
        for f in (run_file, *files):
            (out / f).unlink(missing_ok=True)
    if run_path.is_file():
        try:
            old = json.loads(run_path.read_text())
        except (ValueError, OSError):
            old = None
        if not isinstance(old, dict):
            raise SpecError(f"{run_path} is not a run record frankeneval can read (damaged); use --overwrite to start "
                            "over or another --out directory")
        old_key = old.get("resume_key")
        if legacy_settings and isinstance(old_key, dict) and isinstance(old_key.get("settings"), dict):
            old_key = {**old_key, "settings": {**legacy_settings, **old_key["settings"]}}
        if old_key != json.loads(json.dumps(meta["resume_key"])):  # compare as stored (tuples -> lists)
            change = input_change(old.get(INPUTS), meta[INPUTS]) if INPUTS in meta else None
            raise SpecError(
                f"{out} holds a run with different settings or weights ("
                + (f"{run_file} was made with {change}" if change else f"{run_file} differs")
                + "); use another --out directory or --overwrite"
            )
        meta["created"] = old.get("created", meta["created"])
    write_json_atomic(run_path, meta, indent=2, allow_nan=False)

