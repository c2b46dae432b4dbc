"""Issue 17: run stores heal (a corrupt or partial record is named, skipped and recomputed, never counted as done),
``report`` works from whatever finished, and bad inputs (spec paths, duplicate YAML keys, FRANKENEVAL_DATA for
localize-reasoning) give one clear line."""

from __future__ import annotations

import json

import pytest

from frankeneval.errors import FrankenevalError, SpecError


# -- JSONL logs and run stores ---------------------------------------------------------------------------
def test_jsonl_log_skips_corrupt_lines_names_them_and_keeps_appending(tmp_path, capsys):
    from frankeneval.core.results import JsonlLog, read_jsonl

    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\nnot json\n{"a": 2}\n[1, 2]\n\xff\xfe\n{"a": 3}')
    log = JsonlLog(path)
    assert log.records == [{"a": 1}, {"a": 2}, {"a": 3}]  # the complete last record (no newline) is kept
    err = capsys.readouterr().err
    for line in (2, 4, 5):
        assert f"log.jsonl:{line}:" in err
    assert "Traceback" not in err
    log.append({"a": 4})
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 3}, {"a": 4}]
    # a torn last line is still cut off, and later appends land on a line of their own
    with open(path, "ab") as f:
        f.write(b'{"a": 5, "b"')
    log = JsonlLog(path)
    assert log.records == [{"a": 1}, {"a": 2}, {"a": 3}, {"a": 4}]
    log.append({"a": 6})
    assert read_jsonl(path)[-1] == {"a": 6}
    assert path.read_bytes().endswith(b'{"a": 4}\n{"a": 6}\n')


def test_run_store_partial_records_are_not_done_and_are_recomputed(tmp_path, capsys):
    from frankeneval.core.runstore import RunStore

    path = tmp_path / "units.jsonl"
    lines = [
        {"_header": {"model": "m"}},
        {},                                   # 2: nothing
        {"key": "a"},                         # 3: no record
        {"key": "b", "record": {}},           # 4: empty record
        {"key": "c", "record": "x"},          # 5: record not an object
        [1, 2],                               # 6: not an object
        "monkey",                             # 7: a string (contains "key")
        5,                                    # 8: a number
        {"record": {"x": 1}},                 # 9: no key
        {"key": "d", "record": {"x": 1}},     # 10: complete
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    store = RunStore(path, header={"model": "m"})
    assert store.records() == {"d": {"x": 1}}
    assert store.missing(["a", "b", "c", "d"]) == ["a", "b", "c"]
    err = capsys.readouterr().err
    for line in range(2, 10):
        assert f"units.jsonl:{line}:" in err, (line, err)
    assert "units.jsonl:10:" not in err and "Traceback" not in err
    store.append("a", {"x": 2})
    again = RunStore(path, header={"model": "m"})
    assert again.records() == {"d": {"x": 1}, "a": {"x": 2}}
    with pytest.raises(ValueError):
        again.append("e", {})  # an empty record would read back as unfinished
    # a store that names its required fields (the reasoning sweep: response, answer) does not count a record
    # without them as done -- it would be scored as a wrong answer
    sweep = tmp_path / "sweep.jsonl"
    sweep.write_text('{"key": "q/1/none", "record": {"index": 1}}\n'
                     '{"key": "q/2/none", "record": {"response": "r", "answer": null}}\n')
    assert RunStore(sweep, required=("response", "answer")).missing(["q/1/none", "q/2/none"]) == ["q/1/none"]
    assert "sweep.jsonl:1: incomplete record of unit 'q/1/none' (no response, answer)" in capsys.readouterr().err


def test_characterize_recomputes_a_corrupt_or_partial_matrix_record(tiny_lineage, tmp_path, capsys):
    from frankeneval.characterization.characterize import characterize
    from frankeneval.characterization.measure import CharacterizeSettings
    from frankeneval.characterization.schema import MATRICES_FILE
    from frankeneval.core.results import read_jsonl

    out = tmp_path / "char"
    first = characterize(tiny_lineage.base, tiny_lineage.in_, tiny_lineage.rl, out, device="cpu", progress=False,
                         settings=CharacterizeSettings(spectra=False))
    path = out / MATRICES_FILE
    lines = path.read_text().splitlines()
    partial_name = json.loads(lines[1])["name"]
    corrupt_name = json.loads(lines[2])["name"]
    lines[1] = json.dumps({"name": partial_name})  # a record without its measurements
    lines[2] = lines[2][: len(lines[2]) // 2]  # a corrupt middle line
    path.write_text("\n".join(lines) + "\n")
    summary = characterize(tiny_lineage.base, tiny_lineage.in_, tiny_lineage.rl, out, device="cpu", progress=False,
                           settings=CharacterizeSettings(spectra=False))
    err = capsys.readouterr().err
    assert f"{MATRICES_FILE}:2:" in err and f"{MATRICES_FILE}:3:" in err
    assert summary["complete"] and summary["n_matrices"] == first["n_matrices"]
    recs = {r["name"]: r for r in read_jsonl(path)}
    assert "delta_rl" in recs[partial_name] and "delta_rl" in recs[corrupt_name]
    assert summary["aggregates"]["all"]["n"] == first["aggregates"]["all"]["n"]


# -- transfer and report -----------------------------------------------------------------------------------
def _fake_cell(job) -> None:
    """What lmms-eval writes for one cell: a results file and a samples file."""
    out = job.output_dir / "model"
    out.mkdir(parents=True, exist_ok=True)
    task = job.cell.task
    scores = [1, 0, 1, 1]
    with open(out / f"20260101_000000_samples_{task}.jsonl", "w") as f:
        for i, v in enumerate(scores):
            f.write(json.dumps({"doc_id": i, "rule_acc": {"id": str(i), "score": v}}) + "\n")
    res = {"results": {task: {"alias": task, "rule_acc,none": sum(scores) / len(scores)}}}
    (out / "20260101_000000_results.json").write_text(json.dumps(res))


def _models(names):
    return {m: {"path": f"/models/{m}", "kind": m if m in ("in", "rl") else "variant", "description": m} for m in names}


def test_corrupt_cells_line_blocks_neither_transfer_nor_report(tmp_path, capsys):
    from frankeneval.reports.leaderboard.build import build_leaderboard
    from frankeneval.reports.leaderboard.report import render
    from frankeneval.transferability.manifest import STORE
    from frankeneval.transferability.transfer import run_cells

    run = tmp_path / "run"
    models = _models(["in", "rl"])
    run_cells(run, models, ["t1", "t2"], runner=_fake_cell, progress=lambda s: None)
    store = run / STORE
    lines = store.read_text().splitlines()  # header + 4 cells
    lines[2] = lines[2][:20]  # corrupt a middle line (the cell's results are on disk)
    store.write_text("\n".join(lines) + "\n")
    board = build_leaderboard(run)
    assert board.missing == {}
    assert all(board.get(m, t, "rule_acc") is not None for m in ("in", "rl") for t in ("t1", "t2"))
    assert f"{STORE}:3:" in capsys.readouterr().err
    render(board, "md")

    calls = []
    result = run_cells(run, models, ["t1", "t2"], runner=lambda job: calls.append(job.cell.key) or _fake_cell(job),
                       progress=lambda s: None)
    assert calls == [] and len(result.skipped) == 4  # the finished cell is adopted from disk, not rerun


def test_report_renders_finished_cells_and_names_the_missing_ones(tmp_path):
    from frankeneval.cli import main
    from frankeneval.reports.leaderboard.build import build_leaderboard
    from frankeneval.reports.leaderboard.report import render
    from frankeneval.transferability.cells import CellFailed
    from frankeneval.transferability.transfer import run_cells

    def runner(job):
        if job.cell.key == "rl::t2":
            raise CellFailed("boom")
        _fake_cell(job)

    run = tmp_path / "run"
    run_cells(run, _models(["in", "rl"]), ["t1", "t2"], runner=runner, progress=lambda s: None)
    # a recorded cell whose results vanished is reported missing too, not a traceback
    for res in (run / "cells" / "in" / "t2").rglob("*_results.json"):
        res.unlink()
    board = build_leaderboard(run)
    assert sorted(board.missing) == ["in::t2", "rl::t2"]
    assert board.get("in", "t1", "rule_acc") is not None and board.get("rl", "t1", "rule_acc") is not None
    for fmt in ("md", "csv", "latex", "html"):
        text = render(board, fmt) if fmt != "html" else render(board, fmt, chart=False)
        if fmt != "csv":
            assert "rl::t2" in text or "RL × t2" in text or "RL x t2" in text, fmt
    assert main(["report", str(run), "--no-write"]) == 0


# -- input errors ----------------------------------------------------------------------------------------------
def test_spec_file_sources_resolve_against_the_spec_folder(tmp_path, monkeypatch):
    from frankeneval.transferability.mergespec import MergeSpec
    from frankeneval.transferability.recipes import get_recipe, load_spec

    (tmp_path / "models" / "in").mkdir(parents=True)
    (tmp_path / "models" / "rl").mkdir(parents=True)
    specs = tmp_path / "specs"
    specs.mkdir()
    spec_file = specs / "v.yaml"
    spec_file.write_text("sources: {in: ../models/in, rl: ../models/rl, base: Org/hub-model}\n"
                         "num_hidden_layers: 6\nphrase: IN early 1/3 layers + RL late 2/3 layers\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = MergeSpec.from_yaml(spec_file)
    assert spec.sources["in"] == str((tmp_path / "models" / "in").resolve())
    assert spec.sources["rl"] == str((tmp_path / "models" / "rl").resolve())
    assert load_spec(str(spec_file)).sources["rl"] == str((tmp_path / "models" / "rl").resolve())
    # a path given on the command line stays relative to the current folder
    (elsewhere / "mine").mkdir()
    assert MergeSpec.from_yaml(spec_file, sources={"in": "mine"}).sources["in"] == "mine"

    recipe_file = specs / "r.yaml"
    recipe_file.write_text("name: r\nmodels: {base: Org/hub-model, in: ../models/in, rl: ../models/rl}\n"
                           "num_hidden_layers: 6\nvariants: {v1: IN early 1/3 layers + RL late 2/3 layers}\n")
    recipe = get_recipe(str(recipe_file))
    assert recipe.models["in"] == str((tmp_path / "models" / "in").resolve())
    assert recipe.models["base"] == "Org/hub-model"  # a hub id is left alone
    assert recipe.variant("v1").sources["rl"] == str((tmp_path / "models" / "rl").resolve())


def test_duplicate_yaml_keys_are_refused_in_one_line(tmp_path):
    from frankeneval.transferability.mergespec import MergeSpec
    from frankeneval.transferability.recipes import get_recipe

    spec_file = tmp_path / "dup.yaml"
    spec_file.write_text("sources: {in: a/b, rl: c/d}\nnum_hidden_layers: 6\n"
                         "phrase: IN early 1/3 layers + RL late 2/3 layers\nhost: in\nhost: rl\n")
    with pytest.raises(SpecError) as info:
        MergeSpec.from_yaml(spec_file)
    msg = str(info.value)
    assert "'host'" in msg and "dup.yaml" in msg and "\n" not in msg

    recipe_file = tmp_path / "rdup.yaml"
    recipe_file.write_text("name: r\nmodels: {in: a/b, rl: c/d}\nnum_hidden_layers: 6\nvariants:\n"
                           "  v1: IN early 1/3 layers + RL late 2/3 layers\n"
                           "  v1: RL early 1/3 layers + IN late 2/3 layers\n")
    with pytest.raises(SpecError) as info:
        get_recipe(str(recipe_file))
    msg = str(info.value)
    assert "'v1'" in msg and "rdup.yaml" in msg and "\n" not in msg
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: {in: a/b\nphrase: [\n")
    with pytest.raises(SpecError) as info:
        MergeSpec.from_yaml(bad)
    assert "\n" not in str(info.value) and "bad.yaml" in str(info.value)


def test_localize_reasoning_honours_frankeneval_data(tmp_path, monkeypatch, capsys):
    import frankeneval.commands.localize_reasoning as cmd
    from frankeneval.cli import main

    data = tmp_path / "data"
    (data / "gsm8k").mkdir(parents=True)
    rows = [{"question": f"What is {i} + 1?", "answer": f"... #### {i + 1}"} for i in range(5)]
    (data / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("FRANKENEVAL_DATA", str(data))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seen = {}

    def stop(args, model):  # the questions were loaded: stop before loading a model
        seen["data"] = args.data
        raise FrankenevalError("stop here")

    monkeypatch.setattr(cmd, "load_generator", stop)
    rc = main(["localize-reasoning", "--model", "m", "--dataset", "gsm8k", "--samples", "3",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "stop here" in err, err
