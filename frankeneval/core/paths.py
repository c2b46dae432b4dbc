"""Where frankeneval keeps things on disk, for every layer: the cache folder, and the harness task folder.

* :func:`default_cache_dir` -- ``$FRANKENEVAL_CACHE`` or ``~/.cache/frankeneval``: built-in lineages
  (``lineages/``), the rendered world (``world/``), weight-file fingerprints (``fingerprints/``) and cached splices
  (``splices/``) live under it, each with its own environment variable to move it.
* :func:`harness_tasks_dir` -- the folder of frankeneval's lmms-eval tasks (the repo's ``tasks/``, installed as
  ``frankeneval.tasks``), found without importing the tasks' code: what ``--include_path`` takes.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from frankeneval.errors import FrankenevalError

__all__ = ["default_cache_dir", "harness_tasks_dir"]

HARNESS_TASKS_PACKAGE = "frankeneval.tasks"


def default_cache_dir() -> Path:
    """Where built-in lineages and other caches live (``$FRANKENEVAL_CACHE`` or ``~/.cache/frankeneval``)."""
    return Path(os.environ.get("FRANKENEVAL_CACHE", Path.home() / ".cache" / "frankeneval"))


def harness_tasks_dir() -> Path:
    """The installed folder holding the frankeneval lmms-eval task YAMLs (the repo's ``tasks/``).

    Located through the import system (an installed wheel and an editable install map the package to different
    folders) without running the package: only its location is needed, as lmms-eval's ``--include_path``.
    """
    spec = importlib.util.find_spec(HARNESS_TASKS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FrankenevalError(f"the package {HARNESS_TASKS_PACKAGE} is not installed (reinstall frankeneval)")
    return Path(list(spec.submodule_search_locations)[0]).resolve()
