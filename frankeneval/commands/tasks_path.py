"""Print the folder of frankeneval's lmms-eval tasks, for `--include_path`.

    python -m lmms_eval --model franken_qwen --model_args pretrained=DIR \
        --tasks franken_paper --include_path "$(frankeneval tasks-path)"

(Setting LMMS_EVAL_PLUGINS=frankeneval does the same.) Tasks: franken_gsm8k, franken_math500,
franken_mathvista[_perception|_alignment][_black|_blackdesc], franken_probe_{counting,ocr,grounding,recognition};
groups franken_perception, franken_alignment, franken_reasoning, franken_paper, franken_probes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from frankeneval.core.paths import harness_tasks_dir

COMMAND = "tasks-path"
HELP = "print the lmms-eval task folder to pass to --include_path"


def tasks_path() -> Path:
    """The installed folder holding the frankeneval task YAMLs (the repo's tasks/):
    :func:`frankeneval.core.paths.harness_tasks_dir`."""
    return harness_tasks_dir()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true", help="also list the task and group names")


def run(args: argparse.Namespace) -> int:
    path = tasks_path()
    print(path)
    if args.list:
        import yaml

        for f in sorted(path.rglob("*.yaml")):
            text = f.read_text(encoding="utf-8")
            cfg = yaml.safe_load("\n".join(line for line in text.splitlines() if "!function" not in line)) or {}
            name = cfg.get("group") or cfg.get("task")
            if name:
                print(f"{'group' if 'group' in cfg else 'task '}  {name}")
    return 0
