"""The lmms-eval task class of the ``franken_mathvista*`` YAMLs (``class: !function task.MathVistaTask``, in
``_default_template.yml``); imports lmms-eval, unlike the hooks in ``utils.py``."""

from __future__ import annotations

from frankeneval.tasks.lmms_task import FrankenTask
from frankeneval.tasks.mathvista import utils


class MathVistaTask(FrankenTask):
    """MathVista testmini, one category / split / control per YAML
    (:func:`frankeneval.tasks.mathvista.utils.build_docs`)."""

    build_docs = staticmethod(utils.build_docs)
