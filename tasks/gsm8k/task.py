"""The lmms-eval task class of ``franken_gsm8k.yaml`` (``class: !function task.Gsm8kTask``); imports lmms-eval,
unlike the hooks in ``utils.py`` (which the lm-eval task reuses)."""

from __future__ import annotations

from frankeneval.tasks.gsm8k import utils
from frankeneval.tasks.lmms_task import FrankenTask


class Gsm8kTask(FrankenTask):
    """GSM8K test, sub-sampled as the paper (:func:`frankeneval.tasks.gsm8k.utils.build_docs`)."""

    build_docs = staticmethod(utils.build_docs)
