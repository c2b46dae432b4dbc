"""The tasks' own check before a harness run, in that run's environment:

    python -m frankeneval.tasks.preflight TASK [TASK ...]

``transfer`` runs it once, as a child process with the cells' environment, before its first lmms-eval cell (it
reaches the tasks only across a process boundary, as it does for the cells): every frankeneval task among the
names (groups expanded) that reads local rows or shows an image has its docs built and checked
(:func:`frankeneval.tasks.common.check_task_inputs`), then the judge is asked once when the environment turns it on
(:func:`frankeneval.tasks.common.probe_judge`).

Prints one JSON line: ``{"skipped": [...] | null, "error": {"type", "message"} | null}``. ``skipped``: the items
``FRANKENEVAL_SKIP_BROKEN=1`` left out (``{"task", "id", "path", "reason"}``; null when the check itself stopped);
``error``: the one-line failure (``BrokenInput``, ``JudgeNotAnswering`` or another ``FrankenevalError``). Exit
status 0 whenever it answered; anything else is a crash (traceback on stderr).
"""

from __future__ import annotations

import json
import os
import sys

from frankeneval.tasks.common import check_task_inputs, probe_judge

from frankeneval.errors import FrankenevalError


def preflight(names: list[str], environ) -> dict:
    """The answer :func:`main` prints (see the module docstring)."""
    skipped = None
    try:
        skipped = check_task_inputs(names, environ)
        probe_judge(environ)
    except FrankenevalError as exc:
        return {"skipped": skipped, "error": {"type": type(exc).__name__, "message": str(exc)}}
    return {"skipped": skipped, "error": None}


def main(argv: list[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv)
    print(json.dumps(preflight(names, os.environ)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
