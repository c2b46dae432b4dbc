"""The built-in probe generator and the vision_probes folder format."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from frankeneval.errors import FrankenevalError
from frankeneval.evaluation.probes import PROBE_TASKS, load_probe_pairs, write_probe_pairs
from frankeneval.evaluation.scoring import box_iou


def test_generator_writes_the_shared_format_deterministically(tmp_path):
    a = write_probe_pairs(tmp_path / "a", n=6, seed=3, size=128)
    b = write_probe_pairs(tmp_path / "b", n=6, seed=3, size=128)
    for task in PROBE_TASKS:
        ta, tb = (a[task] / "data.jsonl").read_text(), (b[task] / "data.jsonl").read_text()
        assert ta == tb
        for row in map(json.loads, ta.splitlines()):
            assert set(row) == {"id", "task", "target_image", "source_image", "prompt", "meta"}
            assert (a[task] / row["target_image"]).read_bytes() == (b[task] / row["target_image"]).read_bytes()
    c = write_probe_pairs(tmp_path / "c", tasks=["ocr"], n=6, seed=4, size=128)
    assert (c["ocr"] / "data.jsonl").read_text() != (a["ocr"] / "data.jsonl").read_text()


def test_pairs_have_equal_size_and_distinct_answers(tmp_path):
    write_probe_pairs(tmp_path, n=8, seed=0, size=160)
    for task in PROBE_TASKS:
        pairs = load_probe_pairs(tmp_path, task)
        assert len(pairs) == 8
        for p in pairs:
            with Image.open(p.target_image) as t, Image.open(p.source_image) as s:
                assert t.size == s.size == (160, 160)
                assert t.tobytes() != s.tobytes()
            if task == "grounding":
                assert box_iou(p.answer("target"), p.answer("source")) < 1.0
                assert p.meta["iou_threshold"] == 0.5
            else:
                assert p.answer("target") != p.answer("source")


def test_rendered_pixels_match_meta(tmp_path):
    write_probe_pairs(tmp_path, tasks=["grounding"], n=3, seed=1, size=128)
    for p in load_probe_pairs(tmp_path, "grounding"):
        x1, y1, x2, y2 = p.meta["target_bbox_xyxy"]
        with Image.open(p.target_image) as im:
            im = im.convert("RGB")
            assert im.getpixel(((x1 + x2) // 2, (y1 + y2) // 2)) != (245, 245, 245)  # the shape is inside its box
            assert im.getpixel((0, 0)) == (245, 245, 245)


def test_load_shared_probes(shared_data):
    for task in PROBE_TASKS:
        pairs = load_probe_pairs(shared_data / "vision_probes", task)
        assert len(pairs) == 100 and all(p.task == task for p in pairs)
        assert pairs[0].target_image.is_file() and pairs[0].source_image.is_file()
    counting = load_probe_pairs(shared_data / "vision_probes" / "counting", "counting")[0]
    assert counting.text_prompt == "How many items are there in the image?"
    assert counting.answer("target") == "3" and counting.answer("source") == "10"


def test_bad_folder_and_task(tmp_path):
    with pytest.raises(FrankenevalError, match="make-probes"):
        load_probe_pairs(tmp_path, "ocr")
    with pytest.raises(FrankenevalError, match="unknown probe task"):
        load_probe_pairs(tmp_path, "colour")


def test_make_probes_cli(tmp_path):
    from frankeneval.cli import main

    assert main(["make-probes", str(tmp_path), "--tasks", "counting", "--n", "2", "--size", "96"]) == 0
    assert len(load_probe_pairs(tmp_path, "counting")) == 2
