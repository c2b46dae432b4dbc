"""The code a bench measured: one place for every bench script's commit lookup.

On the GPU machine the benches run from a tree exported with ``git archive HEAD`` plus a ``COMMIT`` file (no .git of
its own); ``git rev-parse`` there would find the enclosing checkout's stale .git, so the ``COMMIT`` file wins."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def exported_commit() -> str | None:
    """The ``COMMIT`` file of an exported tree, if this is one."""
    f = REPO / "COMMIT"
    return f.read_text().strip() if f.is_file() else None


def code_commit() -> dict:
    """``{"git_commit": full sha or None, "git_dirty": bool or None}`` for the code this bench runs (an export is
    never dirty: it is exactly its commit)."""
    exported = exported_commit()
    if exported:
        return {"git_commit": exported, "git_dirty": False}
    sha = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if sha else None
    return {"git_commit": sha, "git_dirty": bool(status) if sha else None}
