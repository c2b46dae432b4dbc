"""Issue 28: real data is checked before any model work. Every selected image is decoded and every selected row
parsed first; a broken one is named in one line and the run stops before it starts, unless ``--skip-broken``: then
it is left out (after selection, never replaced) and recorded in the outputs and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from frankeneval.evaluation.inputs_check import BrokenInput

RELEASED_BROKEN = "recognition_000058_t.jpg"  # truncated at 262,144 bytes in the released probe data


def _truncate_to_jpeg(png: Path) -> Path:
    """``png`` rewritten as a JPEG cut in half (a truncated file PIL opens lazily without complaint)."""
    from PIL import Image

    jpg = png.with_suffix(".jpg")
    with Image.open(png) as im:
        im.convert("RGB").save(jpg, quality=95)
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])
    with Image.open(jpg) as im:  # the header still reads: only decoding every pixel finds it
        assert im.size
    return jpg


@pytest.fixture()
def broken_probes(tmp_path):
    """A counting probe folder of 3 pairs whose second pair's target image is a truncated JPEG."""
    from frankeneval.miniature.world import write_vision_probes

    tdir = write_vision_probes(tmp_path / "probes", tasks=("counting",), n_per_task=3, seed=0) / "counting"
    rows = [json.loads(line) for line in (tdir / "data.jsonl").read_text().splitlines()]
    jpg = _truncate_to_jpeg(tdir / rows[1]["target_image"])
    rows[1]["target_image"] = str(jpg.relative_to(tdir))
    (tdir / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "probes", rows[1]["id"], jpg


def _no_model(monkeypatch):
    from frankeneval.engine.generation import Generator

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(Generator, "load", refuse)


# --------------------------------------------------------------------------- the vision probes
def test_localize_vision_stops_before_any_model_naming_the_truncated_image(broken_probes, tmp_path, monkeypatch,
                                                                            capsys):
    from frankeneval.cli import main

    root, _, jpg = broken_probes
    _no_model(monkeypatch)
    rc = main(["localize-vision", "--model", "m", "--data", str(root), "--tasks", "counting", "--out",
               str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(jpg) in err and "truncated" in err and "1 of 3" in err and "--skip-broken" in err
    assert not (tmp_path / "out" / "units.jsonl").exists()


def test_skip_broken_leaves_the_pair_out_and_records_it(broken_probes, tiny_lineage, tmp_path, capsys):
    from frankeneval.cli import main

    root, bad_id, jpg = broken_probes
    out = tmp_path / "out"
    rc = main(["localize-vision", "--model", str(tiny_lineage.rl), "--data", str(root), "--tasks", "counting",
               "--layers", "2", "--max-new-tokens", "2", "--dtype", "float32", "--device", "cpu", "--no-progress",
               "--skip-broken", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    res = json.loads((out / "vision_localization.json").read_text())
    assert res["skipped"] == [{"id": f"counting/{bad_id}", "path": str(jpg), "reason": res["skipped"][0]["reason"]}]
    assert "truncated" in res["skipped"][0]["reason"]
    assert res["tasks"]["counting"]["n_pairs"] == 2 and bad_id not in {p["id"] for p in res["pairs"]}
    units = (out / "units.jsonl").read_text()
    assert f"/{bad_id}/" not in units and str(jpg) not in units  # absent from the units, not a failed unit
    assert "skipped 1 broken input" in printed and str(jpg) in printed


def test_seed_compatible_selection_is_kept_when_skipping(broken_probes):
    from frankeneval.evaluation.probes import load_probe_pairs
    from frankeneval.localization.vision import select_pairs, select_probe_sets

    root, bad_id, _ = broken_probes
    for kw in ({"seed_compatible": True, "samples": 2}, {"samples": 2, "seed": 1}, {}):
        chosen = [p.id for p in select_pairs(load_probe_pairs(root, "counting"), kw.get("samples"), kw.get("seed", 123),
                                             seed_compatible=kw.get("seed_compatible", False))]
        pairs, skipped = select_probe_sets(("counting",), data=root, skip_broken=True, progress=False, **kw)
        assert [p.id for p in pairs["counting"]] == [i for i in chosen if i != bad_id]  # no replacement
        assert [s["id"] for s in skipped] == ([f"counting/{bad_id}"] if bad_id in chosen else [])


def test_released_truncated_probe_image_is_named(shared_data, monkeypatch):
    from PIL import ImageFile

    from frankeneval.localization.vision import select_probe_sets

    probes = shared_data / "vision_probes"
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as lmms-eval sets it on import
    with pytest.raises(BrokenInput) as e:
        select_probe_sets(("recognition",), data=probes, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and RELEASED_BROKEN in msg and "1 of 100 selected" in msg
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the check did not change the global setting
    pairs, skipped = select_probe_sets(("recognition",), data=probes, skip_broken=True, progress=False)
    assert len(pairs["recognition"]) == 99
    assert [Path(s["path"]).name for s in skipped] == [RELEASED_BROKEN]
    first50, none = select_probe_sets(("recognition",), data=probes, seed_compatible=True, progress=False)
    assert len(first50["recognition"]) == 50 and none == []  # the reference's first 50 never meet it


def test_malformed_probe_row_is_named_with_file_and_line(tmp_path):
    from frankeneval.localization.vision import select_probe_sets
    from frankeneval.miniature.world import write_vision_probes

    tdir = write_vision_probes(tmp_path, tasks=("ocr",), n_per_task=3, seed=0) / "ocr"
    lines = (tdir / "data.jsonl").read_text().splitlines()
    lines[1] = lines[1][:40]
    (tdir / "data.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(BrokenInput, match=r"data\.jsonl:2: bad probe row"):
        select_probe_sets(("ocr",), data=tmp_path, progress=False)
    pairs, skipped = select_probe_sets(("ocr",), data=tmp_path, skip_broken=True, progress=False)
    assert [p.id for p in pairs["ocr"]] == ["ocr_000000", "ocr_000002"]
    assert skipped[0]["path"] == f"{tdir / 'data.jsonl'}:2"


# --------------------------------------------------------------------------- benchmark rows
def _gsm8k_file(tmp_path) -> Path:
    path = tmp_path / "gsm8k" / "test.jsonl"
    path.parent.mkdir()
    rows = ['{"question": "1 + 1?", "answer": "2 #### 2"}', '{"question": "2 + 2?", "answer": ',
            '{"question": "3 + 3?"}', "", '{"question": "4 + 4?", "answer": "#### 8"}']
    path.write_text("\n".join(rows) + "\n")
    return path


def test_malformed_rows_are_named_with_file_and_line(tmp_path):
    from frankeneval.localization.reasoning import load_questions, select_questions

    path = _gsm8k_file(tmp_path)
    with pytest.raises(BrokenInput) as e:
        load_questions("gsm8k", data=path, samples=0)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}:2: not valid JSON") and "2 of 4 selected" in msg
    questions, skipped = select_questions("gsm8k", data=path, samples=0, skip_broken=True)
    assert [(q.index, q.target) for q in questions] == [(0, "2"), (3, "8")]  # bad rows keep their place
    assert [(s["id"], s["path"]) for s in skipped] == [("gsm8k/1", f"{path}:2"), ("gsm8k/2", f"{path}:3")]
    assert "missing field 'answer'" in skipped[1]["reason"]


def test_localize_reasoning_stops_before_any_model_on_a_row_missing_a_field(tmp_path, monkeypatch, capsys):
    from frankeneval.cli import main

    path = tmp_path / "test.jsonl"
    path.write_text('{"question": "1 + 1?", "answer": "#### 2"}\n{"problem": "3 + 3?", "answer": "#### 6"}\n')
    _no_model(monkeypatch)
    rc = main(["localize-reasoning", "--model", "m", "--dataset", "gsm8k", "--data", str(path), "--samples", "0",
               "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{path}:2: bad row (missing field 'question')" in err


def test_reasoning_table_shows_skipped_rows():
    from frankeneval.localization.reasoning import format_reasoning_table

    res = {"dataset": "gsm8k", "n_questions": 1, "unablated_accuracy": 1.0, "layers": [],
           "skipped": [{"id": "gsm8k/1", "path": "/d/test.jsonl:2", "reason": "not valid JSON (Expecting value)"}]}
    assert "skipped 1 broken input" in format_reasoning_table(res) and "/d/test.jsonl:2" in format_reasoning_table(res)


# --------------------------------------------------------------------------- MathVista through transfer
def _mathvista_folder(root: Path) -> Path:
    """3 general-vqa MathVista-shaped rows with images; the second image truncated."""
    from PIL import Image

    (root / "mathvista" / "images").mkdir(parents=True)
    rows = []
    for pid in ("1", "2", "3"):
        Image.effect_noise((256, 192), 40 * int(pid)).convert("RGB").save(root / "mathvista" / "images" / f"{pid}.png")
        rows.append({"pid": pid, "question": f"Question {pid}?", "image": f"images/{pid}.png", "choices": None,
                     "unit": None, "precision": None, "answer": pid, "question_type": "free_form",
                     "answer_type": "integer", "metadata": {"category": "general-vqa", "img_width": 256,
                                                            "img_height": 192}})
    rows[1]["image"] = str(_truncate_to_jpeg(root / "mathvista" / "images" / "2.png").relative_to(root / "mathvista"))
    (root / "mathvista" / "testmini.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "mathvista" / rows[1]["image"]


def test_transfer_checks_mathvista_images_before_any_cell(tmp_path, monkeypatch):
    from frankeneval.reports.leaderboard.build import build_leaderboard
    from frankeneval.reports.leaderboard.report import render
    from frankeneval.transferability import cells, manifest, transfer

    jpg = _mathvista_folder(tmp_path / "data")
    calls = []

    def fake_cell(job):
        calls.append(job.cell.key)
        out = job.output_dir / "model"
        out.mkdir(parents=True, exist_ok=True)
        task = job.cell.task
        assert job.env["FRANKENEVAL_SKIP_BROKEN"] == "1"
        (out / f"20260101_000000_samples_{task}.jsonl").write_text(
            "".join(json.dumps({"doc_id": i, "rule_acc": {"id": pid, "score": 1}}) + "\n"
                    for i, pid in enumerate("13")))
        (out / "20260101_000000_results.json").write_text(json.dumps({"results": {task: {"rule_acc,none": 1.0}}}))

    monkeypatch.setattr(cells, "lmms_eval_runner", fake_cell)  # the default runner: inputs are checked
    models = {"in": {"path": "/models/in", "kind": "in", "description": "in"}}
    kw = {"data_dir": tmp_path / "data", "sample_size": 0, "progress": lambda s: None}
    with pytest.raises(BrokenInput, match="2.jpg"):
        transfer.run_cells(tmp_path / "run", models, ["franken_perception"], **kw)
    assert calls == []  # stopped before the first cell
    result = transfer.run_cells(tmp_path / "run", models, ["franken_mathvista_perception"], skip_broken=True, **kw)
    assert calls and not result.failed
    data = manifest.read_manifest(tmp_path / "run")
    assert [(s["task"], s["id"], s["path"]) for s in data["skipped_inputs"]] == [
        ("franken_mathvista_perception", "2", str(jpg))]
    text = render(build_leaderboard(tmp_path / "run"), "md")
    assert "Skipped broken inputs (1" in text and str(jpg) in text


def test_transfer_names_a_crashed_input_check(tmp_path, monkeypatch):
    """The tasks' check runs as a child process (transfer never imports the tasks' code); one that crashes stops the
    run in one line naming it."""
    from frankeneval.errors import FrankenevalError
    from frankeneval.transferability import cells, transfer

    calls = []
    monkeypatch.setattr(cells, "lmms_eval_runner", lambda job: calls.append(job))
    monkeypatch.setattr(cells, "PREFLIGHT_MODULE", "frankeneval.tasks.no_such_check")
    models = {"in": {"path": "/models/in", "kind": "in", "description": "in"}}
    with pytest.raises(FrankenevalError, match="no_such_check exited with 1") as exc:
        transfer.run_cells(tmp_path / "run", models, ["franken_gsm8k"], progress=lambda s: None)
    assert "\n" not in str(exc.value) and calls == []


def test_harness_task_drops_and_names_broken_docs(tmp_path, capsys):
    from frankeneval.tasks.common import TaskSettings, check_docs, checked_docs
    from frankeneval.tasks.mathvista.utils import build_docs

    jpg = _mathvista_folder(tmp_path / "data")
    spec = {"benchmark": "mathvista", "category": "general-vqa"}
    strict = TaskSettings(data_path=str(tmp_path / "data"), sample_size=0)
    with pytest.raises(BrokenInput, match="2.jpg"):
        check_docs("franken_mathvista_perception", build_docs(spec, strict), strict)
    lenient = TaskSettings.resolve({"data_path": str(tmp_path / "data"), "sample_size": 0, "skip_broken": "1"})
    docs = checked_docs("franken_mathvista_perception", build_docs(spec, lenient), lenient)
    assert [d["id"] for d in docs] == ["1", "3"] and str(jpg) in capsys.readouterr().err
    black = build_docs({**spec, "control": "black"}, strict)  # the black control shows no image: nothing to skip
    assert [d["id"] for d in check_docs("x", black, strict)[0]] == ["1", "2", "3"]
