"""Local / hub data loading, clear errors, and the paper's sub-sampling."""

from __future__ import annotations

import os

import numpy as np
import pytest

from frankeneval.evaluation.data import (
    DataNotFound,
    load_benchmark_rows,
    resolve_local_file,
    subsample,
    subsample_indices,
)


def test_subsample_is_the_papers_rule():
    idx = subsample_indices(500, 100, 123)
    assert idx == sorted(np.random.RandomState(123).choice(500, 100, replace=False).tolist())
    assert len(set(idx)) == 100 and idx == sorted(idx)
    assert subsample_indices(500, 100, 123) == idx  # stable
    assert subsample_indices(500, 100, 124) != idx
    assert subsample_indices(50, 100, 123) == list(range(50))
    assert subsample_indices(50, 0, 123) == list(range(50))
    assert subsample(list("abcdef"), 3, 1) == [list("abcdef")[i] for i in subsample_indices(6, 3, 1)]


@pytest.mark.parametrize("which", ["root", "folder", "file"])
def test_local_paths_accepted(shared_data, which):
    path = {"root": shared_data, "folder": shared_data / "gsm8k", "file": shared_data / "gsm8k" / "test.jsonl"}[which]
    rows = load_benchmark_rows("gsm8k", path)
    assert len(rows) == 1319 and rows[0]["answer"].endswith("#### 18")


def test_math500_and_mathvista_shapes(shared_data):
    m = load_benchmark_rows("math500", shared_data)
    assert len(m) == 500 and {"problem", "answer", "unique_id"} <= set(m[0])
    mv = load_benchmark_rows("mathvista", shared_data)
    assert len(mv) == 1000
    assert mv[0]["image_path"] == os.path.abspath(shared_data / "mathvista" / "images" / "1.jpg")
    cats = [r["metadata"]["category"] for r in mv]
    assert cats.count("general-vqa") == 460 and cats.count("math-targeted-vqa") == 540


def test_missing_local_data_names_both_options(tmp_path):
    with pytest.raises(DataNotFound) as e:
        resolve_local_file("math500", tmp_path)
    msg = str(e.value)
    assert "FRANKENEVAL_DATA" in msg and "HuggingFaceH4/MATH-500" in msg and "math500/test.jsonl" in msg


def test_hub_unreachable_names_both_options(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"), raising=False)
    with pytest.raises(DataNotFound) as e:
        load_benchmark_rows("gsm8k", None)
    msg = str(e.value)
    assert "openai/gsm8k" in msg and "FRANKENEVAL_DATA" in msg


def test_task_settings_precedence(monkeypatch):
    from frankeneval.tasks.common import TaskSettings

    monkeypatch.setenv("FRANKENEVAL_SAMPLE_SIZE", "7")
    monkeypatch.delenv("FRANKENEVAL_SAMPLE_SEED", raising=False)
    monkeypatch.delenv("FRANKENEVAL_JUDGE", raising=False)
    s = TaskSettings.resolve({})
    assert (s.sample_size, s.sample_seed, s.judge, s.rel_tol) == (7, 123, False, None)
    s = TaskSettings.resolve({"sample_size": 0, "judge": True, "seed_compatible": "1"})
    assert (s.sample_size, s.judge, s.rel_tol) == (0, True, 0.01)


def test_mathvista_docs_filter_subsample_and_controls(shared_data, tmp_path):
    from frankeneval.tasks.common import TaskSettings
    from frankeneval.tasks.mathvista.utils import build_docs, mathvista_doc_to_text, mathvista_doc_to_visual

    settings = TaskSettings(data_path=str(shared_data), sample_size=100, sample_seed=123)
    docs = build_docs({"benchmark": "mathvista", "category": "general-vqa", "control": "black"}, settings)
    rows = [r for r in load_benchmark_rows("mathvista", shared_data) if r["metadata"]["category"] == "general-vqa"]
    assert [d["pid"] for d in docs] == [rows[i]["pid"] for i in subsample_indices(460, 100, 123)]
    d = docs[0]
    (img,) = mathvista_doc_to_visual(d)
    from frankeneval.tasks.mathvista.utils import paper_image_size

    assert img.size == paper_image_size(d["img_width"], d["img_height"])
    assert img.getextrema() == ((0, 0), (0, 0), (0, 0))
    mc = next(x for x in docs if x["choices"])
    text = mathvista_doc_to_text(mc)
    assert text.startswith('Please solve the problem step by step and put your answer in one "\\boxed{}".\n\n')
    assert "\n\nChoices:\nA. " in text
    # the image setting needs the pixels: a clear error when only the JSONL is present
    with pytest.raises(DataNotFound, match="images/<pid>.jpg"):
        build_docs({"benchmark": "mathvista", "category": "general-vqa"}, settings)
    # black + description: the data's caption_bard when no judge is configured
    desc = build_docs({"benchmark": "mathvista", "category": "math-targeted-vqa", "control": "blackdesc"}, settings)
    assert all(x["description_source"] == "caption_bard" for x in desc)
    t = mathvista_doc_to_text(desc[0])
    assert f"\n\nImage Description:\n{desc[0]['caption_bard']}\n\nQuestion:\n{desc[0]['question']}" in t
