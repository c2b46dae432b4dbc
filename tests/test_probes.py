"""The vision_probes folder format, and the one built-in probe renderer (the miniature world's) writing it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from frankeneval.errors import FrankenevalError
from frankeneval.evaluation import probes
from frankeneval.evaluation.probes import GENERATOR_STAMP, PROBE_TASKS, load_probe_pairs
from frankeneval.evaluation.scoring import box_iou
from frankeneval.miniature import world
from frankeneval.miniature.world import write_vision_probes


def test_generator_writes_the_shared_format_deterministically(tmp_path):
    a = write_vision_probes(tmp_path / "a", n_per_task=6, seed=3)
    b = write_vision_probes(tmp_path / "b", n_per_task=6, seed=3)
    for task in PROBE_TASKS:
        ta, tb = (a / task / "data.jsonl").read_text(), (b / task / "data.jsonl").read_text()
        assert ta == tb
        for row in map(json.loads, ta.splitlines()):
            assert set(row) == {"id", "task", "target_image", "source_image", "prompt", "meta"}
            assert (a / task / row["target_image"]).read_bytes() == (b / task / row["target_image"]).read_bytes()
        stamp = json.loads((a / task / GENERATOR_STAMP).read_text())
        assert stamp == {"task": task, "renderer": "miniature.world", "world_version": world.WORLD_VERSION, "n": 6,
                         "seed": 3}
    c = write_vision_probes(tmp_path / "c", tasks=["ocr"], n_per_task=6, seed=4)
    assert (c / "ocr" / "data.jsonl").read_text() != (a / "ocr" / "data.jsonl").read_text()


def test_pairs_have_equal_size_and_distinct_answers(tmp_path):
    write_vision_probes(tmp_path, n_per_task=8, seed=0)
    for task in PROBE_TASKS:
        pairs = load_probe_pairs(tmp_path, task)
        assert len(pairs) == 8
        for p in pairs:
            with Image.open(p.target_image) as t, Image.open(p.source_image) as s:
                assert t.size == s.size == (world.CANVAS, world.CANVAS)  # same visual-token count
                assert t.tobytes() != s.tobytes()
            assert p.meta["canvas_size"] == [world.CANVAS, world.CANVAS]
            if task == "grounding":
                assert box_iou(p.answer("target"), p.answer("source")) < 1.0
                assert p.meta["iou_threshold"] == 0.5
            else:
                assert p.answer("target") != p.answer("source")


def test_rendered_pixels_match_meta(tmp_path):
    write_vision_probes(tmp_path, tasks=["grounding"], n_per_task=3, seed=1)
    for p in load_probe_pairs(tmp_path, "grounding"):
        colour = p.meta["object_name"].split()[0]
        for which, image in (("target", p.target_image), ("source", p.source_image)):
            x1, y1, x2, y2 = p.meta[f"{which}_bbox_xyxy"]
            with Image.open(image) as im:
                assert im.convert("RGB").getpixel(((x1 + x2) // 2, (y1 + y2) // 2)) == world.COLOURS[colour]


def test_one_renderer_the_format_module_draws_nothing():
    """The format module reads, checks and writes probe folders; the drawing is the miniature world's alone."""
    source = Path(probes.__file__).read_text()
    assert "ImageDraw" not in source and "ImageFont" not in source
    for gone in ("render_pair", "write_probe_pairs", "_draw_shape", "_place_boxes", "_canvas", "_font"):
        assert not hasattr(probes, gone), gone


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

    assert main(["make-probes", str(tmp_path), "--tasks", "counting", "--n", "2"]) == 0
    pairs = load_probe_pairs(tmp_path, "counting")
    assert len(pairs) == 2
    # the world's render, pair for pair
    direct = write_vision_probes(tmp_path / "direct", n_per_task=2, tasks=["counting"])
    assert (direct / "counting" / "data.jsonl").read_text() == (tmp_path / "counting" / "data.jsonl").read_text()
    kept = (tmp_path / "counting" / "data.jsonl").stat().st_mtime_ns
    assert main(["make-probes", str(tmp_path), "--tasks", "counting", "--n", "2"]) == 0  # same stamp: kept
    assert (tmp_path / "counting" / "data.jsonl").stat().st_mtime_ns == kept
    with pytest.raises(SystemExit):
        main(["make-probes", str(tmp_path), "--size", "16"])  # below one 28 px merged patch


def test_make_probes_size_scales_the_same_scenes_by_nearest_neighbour(tmp_path):
    from PIL import Image

    from frankeneval.cli import main

    assert main(["make-probes", str(tmp_path / "big"), "--tasks", "grounding", "--n", "2", "--size", "336"]) == 0
    native = write_vision_probes(tmp_path / "native", n_per_task=2, tasks=["grounding"])
    for big, small in zip(load_probe_pairs(tmp_path / "big", "grounding"), load_probe_pairs(native, "grounding"),
                          strict=True):
        assert big.meta["target_scene"] == small.meta["target_scene"] and big.prompt == small.prompt
        assert big.meta["canvas_size"] == [336, 336]
        assert big.meta["source_bbox_xyxy"] == [4 * v for v in small.meta["source_bbox_xyxy"]]
        for a, b in ((big.target_image, small.target_image), (big.source_image, small.source_image)):
            a, b = Image.open(a), Image.open(b)
            assert a.size == (336, 336)
            assert a.resize(b.size, Image.Resampling.NEAREST).tobytes() == b.convert(a.mode).tobytes()
