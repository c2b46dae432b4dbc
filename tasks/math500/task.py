"""The lmms-eval task class of ``franken_math500*.yaml`` (``class: !function task.Math500Task``); imports lmms-eval,
unlike the hooks in ``utils.py`` (which the lm-eval task reuses)."""

from __future__ import annotations

from frankeneval.tasks.lmms_task import FrankenTask
from frankeneval.tasks.math500 import utils


class Math500Task(FrankenTask):
    """MATH-500, optionally filtered by level, sub-sampled as the paper
    (:func:`frankeneval.tasks.math500.utils.build_docs`)."""

    build_docs = staticmethod(utils.build_docs)
