"""The necessity test on a real model: TRL and verl configurations that carry the freeze masks, and the TRL launch.

:func:`write_configs` writes, for an IN checkpoint and each freeze setting (:func:`frankeneval.necessity.settings.
parse_settings`: none, early, middle, late, middle+late or layer ranges on the unified axis, the checkpoint's depth):

* ``trl_grpo.py`` -- the standalone launcher (:mod:`frankeneval.necessity.trl_grpo`, copied byte for byte);
* ``trl_grpo_<setting>.json`` -- its config: the model, the dataset, the output folder, the freeze regex
  (:func:`frankeneval.necessity.freeze.parameter_regex`), the number of parameters it must match (counted by the
  layer map on the checkpoint's names) and ``GRPOConfig``'s keyword arguments;
* ``verl_<setting>.txt`` -- Hydra overrides for verl's ``main_ppo`` with GRPO, the model path and the mask
  (:func:`frankeneval.necessity.freeze.render`, ``verl``: LoRA ``exclude_modules``; verl has no per-layer freeze for
  full fine-tuning, which the file says);
* ``frozen_<setting>.txt`` -- the frozen parameter names themselves (``render(..., "names")``).

:func:`launch` runs :func:`frankeneval.necessity.trl_grpo.main` (TRL's ``GRPOTrainer``) on each config in turn, where
TRL and a CUDA GPU are present; otherwise it refuses in one line unless the caller allows the CPU.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from frankeneval.core.results import atomic_write_text, write_json_atomic
from frankeneval.errors import FrankenevalError
from frankeneval.necessity.freeze import frozen_parameters, parameter_regex, render
from frankeneval.necessity.settings import Setting

__all__ = ["DEFAULT_GRPO", "SCRIPT", "config_files", "launch", "launch_problem", "write_configs"]

SCRIPT = "trl_grpo.py"
# GRPOConfig keyword arguments for a 7B-class VLM on one GPU (edit the written JSON for anything else)
DEFAULT_GRPO: dict[str, Any] = {
    "max_steps": 200, "learning_rate": 1e-6, "per_device_train_batch_size": 8, "num_generations": 8,
    "max_completion_length": 1024, "temperature": 1.0, "beta": 0.0, "loss_type": "dapo",
    "logging_steps": 10, "save_strategy": "no", "report_to": "none", "bf16": True,
}


def config_files(setting: Setting) -> dict[str, str]:
    """The file names written for ``setting``."""
    return {"trl": f"trl_grpo_{setting.slug}.json", "verl": f"verl_{setting.slug}.txt",
            "names": f"frozen_{setting.slug}.txt"}


def _verl_overrides(setting: Setting, model: Path, grpo: dict[str, Any], dataset: Path | None) -> str:
    lines = [
        f"# frankeneval necessity: verl GRPO from {model}, setting {setting.name}",
        "# the lines below that are not comments are arguments, shell-quoted as written:",
        "#   python -m verl.trainer.main_ppo <line> <line> ...",
        "# plus verl's data (parquet: data.train_files=... data.val_files=...) and its reward for your task",
        f"actor_rollout_ref.model.path={model}",
        "algorithm.adv_estimator=grpo",
        f"actor_rollout_ref.rollout.n={grpo.get('num_generations', 8)}",
        f"actor_rollout_ref.actor.optim.lr={grpo.get('learning_rate', 1e-6)}",
        f"actor_rollout_ref.actor.use_kl_loss={'True' if grpo.get('beta', 0) else 'False'}",
        f"actor_rollout_ref.actor.kl_loss_coef={grpo.get('beta', 0.0)}",
        f"data.max_response_length={grpo.get('max_completion_length', 1024)}",
    ]
    if dataset is not None:
        lines.append(f"# the JSONL this run was written for: {dataset} (convert it to verl's parquet layout)")
    return "\n".join(lines + [render(setting.mask, "verl")]) + "\n"


def write_configs(folder, *, model: str | os.PathLike, settings: Sequence[Setting], names: Sequence[str],
                  output_root: str | os.PathLike, dataset: str | os.PathLike | None = None,
                  grpo: dict[str, Any] | None = None, dtype: str = "bfloat16") -> dict[str, dict[str, Path]]:
    """Write the launcher and each setting's TRL config, verl overrides and frozen names into ``folder`` (a
    claimed :class:`~frankeneval.core.outdir.OutputFolder`, or a path claimed here); returns the paths per
    setting."""
    from frankeneval.core.outdir import claim_output_dir

    files = [SCRIPT] + [f for s in settings for f in config_files(s).values()]
    inputs = [("model", model)] + ([("dataset", dataset)] if dataset else [])
    folder = claim_output_dir(folder, command="necessity", files=files, inputs=inputs)
    root = Path(folder)
    model = Path(model).expanduser().absolute()
    data = Path(dataset).expanduser().absolute() if dataset else None
    grpo = {**DEFAULT_GRPO, **(grpo or {})}
    script = Path(__file__).with_name(SCRIPT).read_bytes()
    atomic_write_text(root / SCRIPT, script.decode("utf-8"))
    written: dict[str, dict[str, Path]] = {}
    for setting in settings:
        names_frozen = frozen_parameters(setting.mask, names)
        if (setting.mask.layers or setting.mask.vision or setting.mask.projector) and not names_frozen:
            raise FrankenevalError(f"setting {setting.name}: the mask matches no parameter of {model}")
        fn = config_files(setting)
        cfg = {
            "format": 1, "setting": setting.name, "describe": setting.mask.describe(), "model": str(model),
            "dataset": str(data) if data else None,
            "output_dir": str(Path(output_root).expanduser().absolute() / f"trl-{setting.slug}"),
            "dtype": dtype, "freeze_parameter_regex": parameter_regex(setting.mask),
            "expected_frozen": len(names_frozen), "verify_frozen": True,
            "mask": setting.to_json(), "grpo": grpo,
        }
        write_json_atomic(root / fn["trl"], cfg, indent=1)
        atomic_write_text(root / fn["verl"], _verl_overrides(setting, model, grpo, data))
        atomic_write_text(root / fn["names"], "\n".join(names_frozen) + ("\n" if names_frozen else ""))
        written[setting.name] = {k: root / v for k, v in fn.items()}
    return written


def launch_problem(*, allow_cpu: bool) -> str | None:
    """Why TRL's GRPOTrainer cannot be launched here (None: it can)."""
    missing = [p for p in ("trl", "datasets") if importlib.util.find_spec(p) is None]
    if missing:
        return f"--launch needs TRL ({', '.join(missing)} not installed: pip install trl)"
    import torch

    if not torch.cuda.is_available() and not allow_cpu:
        return ("--launch needs a CUDA GPU and finds none: run the written script on a GPU machine "
                "(python DIR/trl_grpo.py DIR/trl_grpo_<setting>.json), or pass --allow-cpu to train on this CPU "
                "(tiny models only)")
    return None


def launch(configs: Sequence[str | os.PathLike], *, allow_cpu: bool = False) -> list[dict[str, Any]]:
    """Run TRL's ``GRPOTrainer`` on each written config in turn (the launcher's own code); returns the records."""
    problem = launch_problem(allow_cpu=allow_cpu)
    if problem:
        raise FrankenevalError(problem)
    from frankeneval.necessity import trl_grpo

    records = []
    for cfg in configs:
        try:
            records.append(trl_grpo.main(cfg))
        except SystemExit as exc:  # the launcher's own refusals (a regex that matches another number, ...)
            raise FrankenevalError(f"{cfg}: {exc}") from None
    return records
