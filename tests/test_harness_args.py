"""The two ``franken_qwen`` wrappers take the same model args the same way, through every construction path of the
installed lm-eval and lmms-eval, and the lm-eval side imports without lmms-eval.

Rule (frankeneval.model_wrappers.model_args): a value in model args wins over the harness's ``--device`` /
``--batch_size`` / ``--max_batch_size`` (typed or defaulted: the harness passes both alike); a harness flag fills in
what model args leave unset; ``dtype`` comes from model args only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

# what the harnesses pass as ``additional_config`` when no flag is typed: lm-eval 0.4.x's CLI config
# (device cuda:0, batch_size 1) and lmms-eval 0.7.x's argparse defaults (batch_size 1, device None)
LM_EVAL_DEFAULTS = {"batch_size": 1, "max_batch_size": None, "device": "cuda:0"}
LMMS_EVAL_DEFAULTS = {"batch_size": 1, "max_batch_size": None, "device": None}


def _lm_eval_cls():
    import frankeneval.model_wrappers.franken_qwen_lm_eval  # noqa: F401 - registers franken_qwen
    from lm_eval.api.registry import get_model

    return get_model("franken_qwen")


def _lmms_eval_cls():
    from lmms_eval.models import get_model

    return get_model("franken_qwen")


def _check(model, *, device: str, dtype: torch.dtype, batch_size):
    assert str(model.device) == device
    assert next(model.generator.model.parameters()).dtype == dtype
    assert model.batch_size_arg == batch_size


HARNESSES = {"lm_eval": (_lm_eval_cls, LM_EVAL_DEFAULTS), "lmms_eval": (_lmms_eval_cls, LMMS_EVAL_DEFAULTS)}


@pytest.mark.parametrize("harness", list(HARNESSES))
@pytest.mark.parametrize("path", ["create_from_arg_string", "create_from_arg_obj"])
def test_model_args_win_over_harness_defaults(tiny_lineage, harness, path):
    """``device``/``dtype``/``batch_size`` in model args with the harness's defaults alongside: no duplicate-keyword
    crash (lm-eval 0.4.x's CLI takes ``create_from_arg_obj`` with ``device=cuda:0``), and the model args are used."""
    get_cls, defaults = HARNESSES[harness]
    cls = get_cls()
    if harness == "lmms_eval" and path == "create_from_arg_obj" and not hasattr(cls, path):
        pytest.skip("lmms-eval has no create_from_arg_obj")
    args = {"pretrained": str(tiny_lineage.rl), "device": "cpu", "dtype": "float32", "batch_size": 2}
    given = ",".join(f"{k}={v}" for k, v in args.items()) if path == "create_from_arg_string" else args
    model = getattr(cls, path)(given, dict(defaults))
    _check(model, device="cpu", dtype=torch.float32, batch_size=2)


@pytest.mark.parametrize("harness", list(HARNESSES))
@pytest.mark.parametrize("path", ["create_from_arg_string", "create_from_arg_obj"])
def test_harness_flags_fill_what_model_args_leave_unset(tiny_lineage, harness, path):
    """``--device cpu --batch_size 3`` (as the harness passes them: strings) with only ``pretrained``/``dtype`` in
    model args; an explicit harness flag that model args also set loses to the model arg."""
    get_cls, defaults = HARNESSES[harness]
    cls = get_cls()
    if harness == "lmms_eval" and path == "create_from_arg_obj" and not hasattr(cls, path):
        pytest.skip("lmms-eval has no create_from_arg_obj")
    flags = {**defaults, "device": "cpu", "batch_size": "3"}
    args = {"pretrained": str(tiny_lineage.rl), "dtype": "bfloat16"}
    given = ",".join(f"{k}={v}" for k, v in args.items()) if path == "create_from_arg_string" else args
    model = getattr(cls, path)(given, flags)
    _check(model, device="cpu", dtype=torch.bfloat16, batch_size=3)
    args = {**args, "batch_size": "auto"}
    given = ",".join(f"{k}={v}" for k, v in args.items()) if path == "create_from_arg_string" else args
    model = getattr(cls, path)(given, flags)  # --batch_size 3 typed, model args say auto: model args win
    _check(model, device="cpu", dtype=torch.bfloat16, batch_size="auto")


def test_merge_rule_unit():
    from frankeneval.model_wrappers.model_args import merge_harness_flags

    assert merge_harness_flags({"device": "cpu"}, {"device": "cuda:0", "batch_size": 1, "max_batch_size": None}) == {
        "device": "cpu", "batch_size": 1}
    assert merge_harness_flags({}, {"device": "cpu", "batch_size": "4", "other": 1}) == {
        "device": "cpu", "batch_size": "4"}
    assert merge_harness_flags({"batch_size": "auto"}, None) == {"batch_size": "auto"}


BLOCK_LMMS = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoLmmsEval(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "lmms_eval" or name.startswith("lmms_eval."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, NoLmmsEval())
    try:
        import lmms_eval  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("the blocker does not work")
    """
)


def test_lm_eval_side_imports_without_lmms_eval(tmp_path):
    """The lm-eval wrapper, its task hooks and the task index load with lmms-eval unimportable."""
    code = BLOCK_LMMS + textwrap.dedent(
        """
        from lm_eval.api.registry import get_model
        from frankeneval.model_wrappers.franken_qwen_lm_eval import FrankenQwenLM, lm_eval_tasks_path
        assert get_model("franken_qwen") is FrankenQwenLM
        import frankeneval.lm_eval_tasks.utils as hooks
        from lm_eval.tasks import TaskManager
        tm = TaskManager(include_path=str(lm_eval_tasks_path()), include_defaults=False)
        assert {"franken_gsm8k", "franken_math500"} <= set(tm.all_tasks), tm.all_tasks
        assert not [m for m in sys.modules if m.startswith("lmms_eval")]
        print("OK")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout[-2000:] + proc.stderr[-3000:]


def test_lm_eval_hooks_do_not_load_lmms_eval(tmp_path):
    """With lmms-eval installed, the lm-eval side, every folder's hooks and the preflight check still do not import
    it (only the folders' ``task.py`` do), while each folder's ``task.py`` hands lmms-eval a plain class statement
    over its ``build_docs``; no task module has a module ``__getattr__``."""
    code = textwrap.dedent(
        """
        import importlib, sys
        import frankeneval.model_wrappers.franken_qwen_lm_eval, frankeneval.lm_eval_tasks.utils
        import frankeneval.tasks.preflight
        folders = {"gsm8k": "Gsm8kTask", "math500": "Math500Task", "mathvista": "MathVistaTask",
                   "probes": "ProbeTask", "franken_world": "WorldTask"}
        hooks = {f: importlib.import_module(f"frankeneval.tasks.{f}.utils") for f in folders}
        assert not [m for m in sys.modules if m.startswith("lmms_eval")]
        from frankeneval.tasks import common
        assert not hasattr(common, "__getattr__") and not any(hasattr(u, "__getattr__") for u in hooks.values())
        from lmms_eval.api.task import ConfigurableTask
        from frankeneval.tasks.lmms_task import FrankenTask
        for folder, name in folders.items():
            cls = getattr(importlib.import_module(f"frankeneval.tasks.{folder}.task"), name)
            assert issubclass(cls, FrankenTask) and issubclass(cls, ConfigurableTask), folder
            assert cls.__name__ == name and cls.__module__ == f"frankeneval.tasks.{folder}.task"
            if folder != "franken_world":  # the world task builds its docs in its own download
                assert cls.build_docs is hooks[folder].build_docs, folder
        print("OK")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout[-2000:] + proc.stderr[-3000:]
