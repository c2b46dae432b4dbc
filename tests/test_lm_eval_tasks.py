"""``franken_gsm8k`` / ``franken_math500`` through the real lm-eval command line (``frankeneval-lm-eval``) on the tiny
lineage, from the local data, with no network: the same docs, prompts and scoring as the lmms-eval tasks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}


def frankeneval_lm_eval() -> list[str]:
    exe = shutil.which("frankeneval-lm-eval") or str(Path(sys.executable).parent / "frankeneval-lm-eval")
    return [exe] if Path(exe).is_file() else [sys.executable, "-m", "frankeneval.model_wrappers.franken_qwen_lm_eval"]


def test_franken_text_tasks_run_through_the_lm_eval_cli(tiny_lineage, shared_data, tmp_path):
    """The command of the issue (``device=cpu`` in model args; lm-eval's default ``--device`` is cuda:0), no
    ``--include_path``: the entry point finds the tasks; two scored samples per task."""
    out = tmp_path / "out"
    env = {**os.environ, **OFFLINE, "FRANKENEVAL_DATA": str(shared_data), "FRANKENEVAL_JUDGE": "0"}
    for k in ("FRANKENEVAL_SAMPLE_SIZE", "FRANKENEVAL_SAMPLE_SEED"):
        env.pop(k, None)
    cmd = [*frankeneval_lm_eval(), "--model", "franken_qwen",
           "--model_args", f"pretrained={tiny_lineage.rl},device=cpu,dtype=float32",
           "--tasks", "franken_gsm8k,franken_math500", "--limit", "2", "--gen_kwargs", "max_gen_toks=8",
           "--output_path", str(out), "--log_samples"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (results_file,) = out.rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]

    from frankeneval.tasks.common import TaskSettings
    from frankeneval.tasks.gsm8k import utils as gsm8k
    from frankeneval.tasks.math500 import utils as math500

    settings = TaskSettings(data_path=str(shared_data))  # the paper sub-sample: 100 @ seed 123
    for task, hooks, to_text, score in (
        ("franken_gsm8k", gsm8k, gsm8k.gsm8k_doc_to_text, gsm8k.gsm8k_process_results),
        ("franken_math500", math500, math500.math500_doc_to_text, math500.math500_process_results),
    ):
        assert 0.0 <= results[task]["rule_acc,none"] <= 1.0
        assert "judge_acc,none" not in results[task]  # no judge configured
        (samples_file,) = out.rglob(f"samples_{task}_*.jsonl")
        samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
        docs = hooks.build_docs({}, settings)[:2]
        assert [s["doc"]["id"] for s in samples] == [d["id"] for d in docs]
        for s, doc in zip(samples, docs):
            assert s["arguments"]["gen_args_0"]["arg_0"] == to_text(doc)  # the lmms-eval task's prompt
            assert s["rule_acc"]["score"] in (0, 1) and s["rule_acc"]["target"] == doc["target"]
            # scored by the lmms-eval task's hook
            assert s["rule_acc"] == score(doc, [s["filtered_resps"][0].strip()], settings)["rule_acc"]


def test_lm_eval_tasks_are_package_data(tmp_path):
    """The lm-eval YAMLs ship in the wheel, apart from the lmms-eval ones (each harness indexes its whole folder)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO_ROOT)], check=True, capture_output=True)
    (whl,) = tmp_path.glob("frankeneval-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    shipped = sorted(n for n in names if n.startswith("frankeneval/lm_eval_tasks/"))
    assert shipped == sorted(f"frankeneval/lm_eval_tasks/{p.name}" for p in (REPO_ROOT / "lm_eval_tasks").iterdir()
                             if p.suffix in (".yaml", ".py"))
    assert "frankeneval/model_wrappers/model_args.py" in names
    assert not any(n.startswith("frankeneval/tasks/") and "lm_eval_tasks" in n for n in names)


@pytest.mark.parametrize("name", ["franken_gsm8k", "franken_math500"])
def test_lmms_eval_index_does_not_see_the_lm_eval_yamls(name):
    """``frankeneval tasks-path`` (lmms-eval's include path) holds exactly one YAML per task name."""
    hits = [p for p in (REPO_ROOT / "tasks").rglob("*.yaml") if f"task: {name}\n" in p.read_text()]
    assert len(hits) == 1, hits
