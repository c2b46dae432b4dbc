"""The lmms-eval task class of the ``franken_probe_*`` YAMLs (``class: !function task.ProbeTask``, in
``_default_template.yml``); imports lmms-eval, unlike the hooks in ``utils.py``."""

from __future__ import annotations

from frankeneval.tasks.lmms_task import FrankenTask
from frankeneval.tasks.probes import utils


class ProbeTask(FrankenTask):
    """One vision probe task, target images only (:func:`frankeneval.tasks.probes.utils.build_docs`)."""

    build_docs = staticmethod(utils.build_docs)
