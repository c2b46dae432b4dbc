"""The frankeneval tasks through lmms-eval: task loading (TaskManager) and the real CLI on the tiny lineage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ALL_TASKS = [
    "franken_gsm8k", "franken_math500", "franken_mathvista",
    "franken_mathvista_perception", "franken_mathvista_perception_black", "franken_mathvista_perception_blackdesc",
    "franken_mathvista_alignment", "franken_mathvista_alignment_black", "franken_mathvista_alignment_blackdesc",
    "franken_probe_counting", "franken_probe_ocr", "franken_probe_grounding", "franken_probe_recognition",
]
GROUPS = ["franken_perception", "franken_alignment", "franken_reasoning", "franken_paper", "franken_probes"]


def _local_data(shared: Path, root: Path, k: int, seed: int = 123) -> Path:
    """A data folder in the shared layout (links to the real files) plus stand-in MathVista images for the
    first ``k``-subsample of every category (the real images exist only on the hub)."""
    from PIL import Image

    from frankeneval.evaluation.data import load_benchmark_rows, subsample_indices

    (root / "mathvista" / "images").mkdir(parents=True, exist_ok=True)
    for name in ("gsm8k", "math500", "vision_probes"):
        (root / name).symlink_to(shared / name)
    (root / "mathvista" / "testmini.jsonl").symlink_to(shared / "mathvista" / "testmini.jsonl")
    rows = load_benchmark_rows("mathvista", root)
    for subset in (rows, *[[r for r in rows if r["metadata"]["category"] == c]
                           for c in ("general-vqa", "math-targeted-vqa")]):
        for i in subsample_indices(len(subset), k, seed):
            r = subset[i]
            md = r["metadata"]
            Image.new("RGB", (md["img_width"], md["img_height"]), (90, 140, 200)).save(r["image_path"])
    return root


@pytest.fixture(scope="module")
def task_manager():
    """lmms-eval's task index with the frankeneval folder (indexing all of lmms-eval takes ~10 s: built once)."""
    from lmms_eval.tasks import TaskManager

    return TaskManager("ERROR", include_path=str(REPO / "tasks"))


@pytest.fixture()
def task_env(monkeypatch, shared_data, tmp_path):
    data = _local_data(shared_data, tmp_path / "data", k=3)
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "FRANKENEVAL_DATA": str(data),
           "FRANKENEVAL_SAMPLE_SIZE": "3", "FRANKENEVAL_SAMPLE_SEED": "123",
           "FRANKENEVAL_PROBE_CACHE": str(tmp_path / "probes"), "FRANKENEVAL_JUDGE": "0"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def test_tasks_path_command(capsys):
    from frankeneval.cli import main

    assert main(["tasks-path", "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert Path(out[0]) == REPO / "tasks"
    names = {line.split()[-1] for line in out[1:]}
    assert set(ALL_TASKS) | set(GROUPS) <= names


def test_every_task_builds_and_scores_through_lmms_eval(task_env, task_manager):
    from lmms_eval.tasks import get_task_dict

    tm = task_manager
    assert set(ALL_TASKS) | set(GROUPS) <= set(tm.all_tasks)
    tasks = get_task_dict(ALL_TASKS, tm)
    assert set(tasks) == set(ALL_TASKS)
    for name, task in tasks.items():
        docs, no_media = task.test_docs(), task.eval_docs_no_media
        assert len(docs) == 3, name
        doc = docs[0]
        text = task.doc_to_text(doc)
        visual = task.doc_to_visual(doc)
        if name.startswith("franken_probe"):
            assert "<image>" not in text and len(visual) == 1
        else:
            assert text.startswith('Please solve the problem step by step and put your answer in one "\\boxed{}".')
        if name in ("franken_gsm8k", "franken_math500"):
            assert not visual
        elif "mathvista" in name:
            (img,) = visual
            from frankeneval.tasks.mathvista.utils import paper_image_size

            assert img.size == paper_image_size(doc["img_width"], doc["img_height"])  # at most 1280 x 720
            black = img.getextrema() == ((0, 0), (0, 0), (0, 0))
            assert black == name.endswith(("_black", "_blackdesc"))
            assert ("Image Description:" in text) == name.endswith("_blackdesc")
        target = str(task.doc_to_target(doc))
        answer = target if not name.startswith("franken_probe_grounding") else ",".join(
            str(v) for v in json.loads(target))
        if "mathvista" in name and no_media[0]["question_type"] == "multi_choice":
            letter = chr(ord("A") + list(no_media[0]["choices"]).index(target))
            answer = letter
        good = task.process_results(no_media[0], [f"<answer>{answer}</answer>"])
        bad = task.process_results(no_media[0], ["<answer>zzz</answer>"])
        assert good["rule_acc"]["score"] == 1, (name, target, good)
        assert bad["rule_acc"]["score"] == 0, (name, bad)
        assert "judge_acc" not in good  # no judge configured -> the metric is absent


def test_sample_size_zero_means_all(task_env, task_manager, monkeypatch):
    from lmms_eval.tasks import get_task_dict

    monkeypatch.setenv("FRANKENEVAL_SAMPLE_SIZE", "0")
    tasks = get_task_dict(["franken_mathvista_alignment_black"], task_manager)
    assert len(tasks["franken_mathvista_alignment_black"].test_docs()) == 540


@pytest.mark.skipif(not (REPO / "frankeneval" / "models.py").is_file(), reason="franken_qwen wrapper not written yet")
def test_lmms_eval_cli_on_tiny_lineage_with_judge(task_env, tiny_lineage, tmp_path):
    """The real CLI: every kind of task on the tiny RL model; judge through a local OpenAI-compatible server."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_grading import FakeServer

    server = FakeServer(default=(200, '{"is_correct": false, "extracted_answer": "x", "reason": "tiny model"}'))
    try:
        env = {**os.environ, **task_env, "FRANKENEVAL_JUDGE": "1", "OPENAI_API_KEY": "dummy",
               "OPENAI_BASE_URL": server.url, "FRANKENEVAL_JUDGE_CACHE": str(tmp_path / "judge")}
        tasks = ["franken_gsm8k", "franken_math500", "franken_mathvista_perception",
                 "franken_mathvista_alignment_black", "franken_mathvista_perception_blackdesc",
                 "franken_probe_counting", "franken_probe_grounding"]
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "lmms_eval", "--model", "franken_qwen", "--model_args",
               f"pretrained={tiny_lineage.rl}", "--tasks", ",".join(tasks), "--include_path", str(REPO / "tasks"),
               "--limit", "2", "--gen_kwargs", "max_new_tokens=8", "--output_path", str(out), "--log_samples",
               "--verbosity", "WARNING"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finally:
        server.close()
    (results_file,) = out.rglob("*_results.json")
    results = json.loads(results_file.read_text())["results"]
    for t in tasks:
        assert 0.0 <= results[t]["rule_acc,none"] <= 1.0
        samples = [json.loads(line) for f in out.rglob(f"*_samples_{t}.jsonl") for line in f.read_text().splitlines()]
        assert len(samples) == 2 and all(s["rule_acc"]["score"] in (0, 1) for s in samples)
        if t.startswith("franken_probe"):
            assert "judge_acc,none" not in results[t]
        else:  # the tiny model is never right: every sample went to the judge, which said "wrong"
            assert results[t]["judge_acc,none"] == 0.0 and results[t]["judge_error,none"] == 0
    assert server.calls >= 2 * 5
