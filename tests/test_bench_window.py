"""bench/bench_window.py replays a transfer's own requests: the prompt lmms-eval built, the image at the paper's
size (black for the controls, none for MATH-500), and runs its ways in alternating order."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_window  # noqa: E402
from frankeneval.tasks.mathvista.utils import paper_image_size  # noqa: E402


def test_a_transfers_samples_become_its_requests(tmp_path):
    testmini = tmp_path / "testmini.jsonl"
    rows = [{"image": f"images/{pid}.jpg", "metadata": {"img_width": w, "img_height": h}}
            for pid, w, h in ((1, 2000, 1000), (2, 300, 200))]
    testmini.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cell = tmp_path / "cells" / "base"
    for task, media in (("franken_mathvista_perception", ["/x/images/1.jpg"]),
                        ("franken_mathvista_perception_black", ["/x/images/1.jpg"]),
                        ("franken_mathvista_alignment_blackdesc", ["/x/images/2.jpg"]),
                        ("franken_math500", [])):
        folder = cell / task.split("_")[1] / "lineage__base"
        folder.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"doc_id": 0, "input": f"prompt of {task}\u2028end", "input_media": media},
                          ensure_ascii=False)
        (folder / f"20261207_000000_samples_{task}.jsonl").write_text(line + "\n", encoding="utf-8")
    reqs = bench_window.samples_requests(cell, testmini, None, 0, "be brief", None)
    by_prompt = {r.prompt.split(" of ")[1].split("\u2028")[0]: r for r in reqs}
    assert len(reqs) == 4 and all(r.system == "be brief" for r in reqs)
    assert by_prompt["franken_math500"].images == []
    shown = by_prompt["franken_mathvista_perception"].images[0]
    assert shown.size == paper_image_size(2000, 1000) and shown.getextrema() != ((0, 0),) * 3
    black = by_prompt["franken_mathvista_perception_black"].images[0]
    assert black.size == paper_image_size(2000, 1000) and black.getextrema() == ((0, 0),) * 3
    assert by_prompt["franken_mathvista_alignment_blackdesc"].images[0].getextrema() == ((0, 0),) * 3
    assert len(bench_window.samples_requests(cell, testmini, 2, 0, None, None)) == 2
    saved = tmp_path / "requests.jsonl"
    assert bench_window.save_requests(cell, saved, "be brief") == 4
    again = bench_window.samples_requests(saved, testmini, None, 0, None, None)
    assert [(r.prompt, r.system, [im.size for im in r.images]) for r in again] == [
        (r.prompt, r.system, [im.size for im in r.images]) for r in reqs]


def test_ways_alternate_so_each_is_as_often_first_as_last():
    assert bench_window.alternating(["new", "old"], 4) == ["new", "old", "old", "new", "new", "old", "old", "new"]
    assert bench_window.alternating(["a", "b", "c"], 2) == ["a", "b", "c", "c", "b", "a"]


def test_it_never_overwrites_a_file_it_did_not_write(tmp_path):
    mine = tmp_path / "notes.jsonl"
    mine.write_text("my own notes\n")
    with pytest.raises(SystemExit, match="is not this bench's output"):
        bench_window.save_requests(tmp_path, mine, None)
    with pytest.raises(SystemExit, match="is not this bench's output"):
        bench_window.main(["--model", "m", "--testmini", str(mine), "--out", str(mine)])
    assert mine.read_text() == "my own notes\n"


def test_a_run_records_the_window_it_attended_over_and_answers_the_same(tiny_lineage, monkeypatch):
    """The record that tells a window policy from an order (issue 32): decode steps, key/value slots attended (rows x
    window, every step) and the least the live rows needed, and the phases' seconds; the hook leaves answers as they
    are (float32)."""
    from test_generation import noise_image

    from frankeneval.engine import continuous as continuous_mod
    from frankeneval.engine.generation import Generator, GenRequest

    cls = continuous_mod.ContinuousDecoder
    for name in ("_resize", "steps", "SHRINK", "_shrink"):
        monkeypatch.setattr(cls, name, getattr(cls, name))  # Windows and the ways patch classes: restored after
    monkeypatch.setattr(Generator, "_prefill_group", Generator._prefill_group)
    gen = Generator.load(str(tiny_lineage.rl), device="cpu")
    reqs = [GenRequest(f"count the shapes {i}", [noise_image(10 + i, size=(28 * (1 + i % 3), 56))]) for i in range(6)]
    want = [r.token_ids for r in gen.generate(reqs, max_new_tokens=6, ignore_eos=True, batch_size=2)]
    windows = bench_window.Windows()
    run, got = bench_window.run_way(gen, "new", reqs, 6, 2, windows)
    assert got == want
    assert run["decode_steps"] > 0 and run["kv_slot_steps"] % 2 == 0
    assert 0 < run["kv_slot_steps_needed"] <= run["kv_slot_steps"]
    assert {"prefill", "decode"} <= set(run["phases_s"])
    assert run["prefill_tokens_real"] <= run["prefill_tokens_padded"] and run["prefill_groups"] >= 3
    for way in ("visual", "old"):
        other, got_other = bench_window.run_way(gen, way, reqs, 6, 2, windows)
        assert got_other == want and other["decode_steps"] == run["decode_steps"]
        assert other["prefill_tokens_real"] == run["prefill_tokens_real"]
