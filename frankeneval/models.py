"""Model registration for lmms-eval (kept import-light: lmms-eval loads this at start-up).

* ``LMMS_EVAL_MANIFEST``: the ``lmms_eval.models`` entry point (pyproject) -- after ``pip install``,
  ``lmms_eval --model franken_qwen`` works with no environment variable.
* ``AVAILABLE_MODELS``: the deprecated ``LMMS_EVAL_PLUGINS=frankeneval`` path, which imports
  ``frankeneval.models.<name>``; that module name is aliased to the wrapper module when the variable is set.
  (The variable also adds frankeneval's tasks folder to lmms-eval's task search path.)

lm-eval has no entry-point group for models: use ``frankeneval-lm-eval`` /
``python -m frankeneval.model_wrappers.franken_qwen_lm_eval`` (same flags as ``lm_eval``; it also puts the lm-eval
tasks ``franken_gsm8k`` / ``franken_math500`` on lm-eval's task path, and needs no lmms-eval).
"""

from __future__ import annotations

import os
import sys

WRAPPER_MODULE = "frankeneval.model_wrappers.franken_qwen"
WRAPPER_CLASS = "FrankenQwen"

AVAILABLE_MODELS = {"franken_qwen": WRAPPER_CLASS}


def _manifest():
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="franken_qwen", simple_class_path=f"{WRAPPER_MODULE}.{WRAPPER_CLASS}")


try:
    LMMS_EVAL_MANIFEST = _manifest()
except ImportError:  # lmms-eval absent: the entry point is never loaded then
    LMMS_EVAL_MANIFEST = None


def _alias_for_legacy_plugins() -> None:
    plugins = [p.strip() for p in os.environ.get("LMMS_EVAL_PLUGINS", "").split(",")]
    if "frankeneval" in plugins and f"{__name__}.franken_qwen" not in sys.modules:
        import importlib

        sys.modules[f"{__name__}.franken_qwen"] = importlib.import_module(WRAPPER_MODULE)


_alias_for_legacy_plugins()
