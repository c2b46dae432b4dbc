"""``franken_qwen`` through the real lmms-eval and lm-eval command lines (subprocesses, tiny lineage, CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}


def run(cmd: list[str], cwd: Path, extra_env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE, **(extra_env or {})}
    env.pop("LMMS_EVAL_PLUGINS", None) if not (extra_env and "LMMS_EVAL_PLUGINS" in extra_env) else None
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def lmms_eval_exe() -> str:
    exe = shutil.which("lmms-eval") or str(Path(sys.executable).parent / "lmms-eval")
    return exe


def write_vqa_task(root: Path) -> Path:
    task_dir = root / "tasks"
    task_dir.mkdir()
    rows = []
    for i in range(3):
        path = root / f"img{i}.png"
        Image.fromarray(np.random.RandomState(i).randint(0, 256, (112, 112, 3), dtype=np.uint8)).save(path)
        rows.append({"id": i, "question": "What color is this?", "answer": "red", "image": str(path)})
    (root / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (task_dir / "fe_tiny_utils.py").write_text(
        "from PIL import Image\n\ndef doc_to_visual(doc):\n    return [Image.open(doc['image']).convert('RGB')]\n"
    )
    (task_dir / "fe_tiny_vqa.yaml").write_text(
        f"""task: fe_tiny_vqa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / 'vqa.jsonl'}
test_split: test
output_type: generate_until
doc_to_visual: !function fe_tiny_utils.doc_to_visual
doc_to_text: "<image>{{{{question}}}}"
doc_to_target: "answer"
generation_kwargs:
  max_new_tokens: 6
  until: ["\\n\\n"]
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 0.0
"""
    )
    return task_dir


def write_text_tasks(root: Path) -> Path:
    task_dir = root / "lm_tasks"
    task_dir.mkdir()
    data = root / "text.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i}+{i}?", "answer": str(2 * i)}) + "\n"
                            for i in (1, 2, 3)))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (task_dir / "fe_tiny_text.yaml").write_text(
        "task: fe_tiny_text\n" + common
        + 'output_type: generate_until\ndoc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
        + 'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 6\n'
        + "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
          "metadata:\n  version: 0.0\n"
    )
    (task_dir / "fe_tiny_mc.yaml").write_text(
        "task: fe_tiny_mc\n" + common
        + 'output_type: multiple_choice\ndoc_to_text: "{{question}}"\ndoc_to_choice: ["2", "4", "6"]\n'
        + "doc_to_target: \"{{ ['2', '4', '6'].index(answer) }}\"\nmetric_list:\n  - metric: acc\n"
          "metadata:\n  version: 0.0\n"
    )
    return task_dir


def results_json(out_dir: Path) -> dict:
    files = sorted(out_dir.rglob("*results*.json"))
    assert files, f"no results json under {out_dir}"
    return json.loads(files[-1].read_text())


def test_lmms_eval_cli_runs_franken_qwen(tiny_lineage, tmp_path):
    task_dir = write_vqa_task(tmp_path)
    out = tmp_path / "out"
    run(
        [lmms_eval_exe(), "--model", "franken_qwen",
         "--model_args",
         f"pretrained={tiny_lineage.rl},batch_size=auto,device=cpu,dtype=float32,intervention=ablate:1-2,max_pixels=12544",
         "--batch_size", "2", "--device", "cpu",  # model args win over lmms-eval's own flags, no duplicate keyword
         "--tasks", "fe_tiny_vqa", "--include_path", str(task_dir), "--limit", "2",
         "--output_path", str(out), "--log_samples"],
        cwd=tmp_path,
    )
    res = results_json(out)
    assert "fe_tiny_vqa" in res["results"]
    lines = [json.loads(line) for f in out.rglob("*samples_fe_tiny_vqa*.jsonl") for line in f.read_text().splitlines()]
    samples = [s for s in lines if "doc_id" in s]
    assert sorted(s["doc_id"] for s in samples) == [0, 1]
    assert all(isinstance(s["filtered_resps"], str) and s["filtered_resps"].strip() for s in samples)


def test_lm_eval_cli_runs_franken_qwen(tiny_lineage, tmp_path):
    task_dir = write_text_tasks(tmp_path)
    out = tmp_path / "out"
    run(
        [sys.executable, "-m", "frankeneval.model_wrappers.franken_qwen_lm_eval", "--model", "franken_qwen",
         "--model_args", f"pretrained={tiny_lineage.rl}", "--device", "cpu", "--batch_size", "2",
         "--tasks", "fe_tiny_text,fe_tiny_mc", "--include_path", str(task_dir), "--limit", "2",
         "--output_path", str(out)],
        cwd=tmp_path,
    )
    res = results_json(out)
    assert {"fe_tiny_text", "fe_tiny_mc"} <= set(res["results"])
    assert res["results"]["fe_tiny_mc"]["acc,none"] in (0.0, 0.5, 1.0)


@pytest.mark.parametrize("legacy", [False, True])
def test_lmms_eval_registry_finds_franken_qwen(tmp_path, legacy):
    """Entry point (no variable needed); with the deprecated LMMS_EVAL_PLUGINS=frankeneval the legacy class path
    ``frankeneval.models.franken_qwen.FrankenQwen`` is registered too and importable."""
    code = (
        "import importlib\n"
        "from lmms_eval.models import get_model, MODEL_REGISTRY_V2, AVAILABLE_SIMPLE_MODELS\n"
        "cls = get_model('franken_qwen')\n"
        "legacy = AVAILABLE_SIMPLE_MODELS.get('franken_qwen')\n"
        "ok = legacy is None or getattr(importlib.import_module(legacy.rsplit('.', 1)[0]), 'FrankenQwen') is cls\n"
        "print(cls.__module__, cls.__name__, MODEL_REGISTRY_V2.get_manifest('franken_qwen').simple_class_path, "
        "legacy, ok)\n"
    )
    env = {"LMMS_EVAL_PLUGINS": "frankeneval"} if legacy else None
    proc = run([sys.executable, "-W", "ignore", "-c", code], cwd=tmp_path, extra_env=env)
    module, name, manifest_path, legacy_path, ok = proc.stdout.strip().splitlines()[-1].split()
    assert (module, name) == ("frankeneval.model_wrappers.franken_qwen", "FrankenQwen")
    assert manifest_path == "frankeneval.model_wrappers.franken_qwen.FrankenQwen"
    assert ok == "True"
    assert legacy_path == ("frankeneval.models.franken_qwen.FrankenQwen" if legacy else "None")
