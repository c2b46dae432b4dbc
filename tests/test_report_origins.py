"""The report marks the cells a transfer run did not run itself (issue 33): cells taken by ``--reuse-from RUN`` (†)
and cells re-scored by ``--regrade`` (‡), each with a footnote naming the source run (and the grading), read from
what the run recorded; every other cell is unmarked."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from frankeneval.reports.leaderboard.build import _origin_marks, build_leaderboard
from frankeneval.reports.leaderboard.report import render
from frankeneval.transferability.cells import CELL_STAMP
from frankeneval.transferability.transfer import run_cells

TASKS = ["franken_mathvista_perception", "franken_mathvista_perception_black", "franken_math500"]
KW = dict(sample_size=6, sample_seed=123, judge=False, progress=lambda s: None)


def _changed_copy(src: Path, dest: Path) -> Path:
    from test_transfer_runs import _changed_copy as copy

    return copy(src, dest)


@pytest.fixture()
def runs(tmp_path, tiny_lineage):
    """``first``: IN and RL run here; ``second``: IN reused from ``first``, RL (other weights) run here."""
    from test_regrade_api_rows import Runner

    models = {"in": {"path": str(tiny_lineage.in_), "kind": "in"}, "rl": {"path": str(tiny_lineage.rl), "kind": "rl"}}
    first, second = tmp_path / "first", tmp_path / "second"
    assert not run_cells(first, models, TASKS, runner=Runner(), **KW).failed
    changed = dict(models, rl={"path": str(_changed_copy(Path(tiny_lineage.rl), tmp_path / "rl2")), "kind": "rl"})
    result = run_cells(second, changed, TASKS, runner=Runner(), reuse_from=first, **KW)
    assert sorted(c.key for c in result.reused) == sorted(f"in::{t}" for t in TASKS)
    return first, second


def _md_rows(text: str, section: str) -> dict[str, str]:
    """{model: its table line} of the first table under the heading ``section``."""
    body = text.split(section, 1)[1]
    rows = {}
    for line in body.splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("| ") and not line.startswith("| model"):
            rows.setdefault(line.split("|")[1].strip(), line)
    return rows


def test_reused_cells_are_marked_and_only_they(runs):
    first, second = runs
    board = build_leaderboard(second)
    assert set(board.origins) == {("in", t) for t in TASKS}  # exactly the reused cells
    assert set(board.origins.values()) == {"†"}
    (note,) = board.origin_notes.values()
    assert f"taken from the run {first.absolute()} by --reuse-from" in note
    assert board.origin_mark("rl", *TASKS) == "" and board.origin_mark("in", TASKS[0]) == "†"
    # the run that did run every cell itself: nothing marked
    assert build_leaderboard(first).origins == {} and build_leaderboard(first).origin_notes == {}

    md = render(board, "md")
    assert f"- † {note}" in md
    rows = _md_rows(md, "### rule (rule_acc)")
    assert rows["IN"].count("†") == len(TASKS) and "†" not in rows["RL"] and "‡" not in md
    paper = _md_rows(md, "### Splits v1")
    assert "†" in paper["IN"] and "†" not in paper["RL"]

    rows = [r for r in csv.DictReader(io.StringIO(render(board, "csv"))) if r["table"] in ("leaderboard", "paper")]
    assert {r["origin"] for r in rows if r["model"] == "IN"} == {"†"}
    assert {r["origin"] for r in rows if r["model"] == "RL"} == {""}
    assert all(r["origin_note"] == f"† {note}" for r in rows if r["model"] == "IN")

    html = render(board, "html", chart=False)
    assert len(re.findall(r"<sup class='origin'[^>]*>†</sup>", html)) == len(TASKS) * len(board.metrics) + len(
        board.parts) + sum(p.b is not None for p in board.parts)  # leaderboard cells, paper cells, transitions
    tex = render(board, "latex")
    assert r"\textsuperscript{\dag{}}" in tex and "taken from the run" in tex


def test_a_reused_cell_adopted_after_a_crash_keeps_its_mark(runs, tiny_lineage):
    """The origin goes with the cell folder (its stamp): a reused cell renamed into place but not recorded (a crash
    between the two) is adopted by the next run with its origin, and the report still marks it."""
    first, second = runs
    store = second / "cells.jsonl"
    lines = store.read_text().splitlines()
    key = f"in::{TASKS[2]}"
    store.write_text("\n".join(x for x in lines if json.loads(x).get("key") != key) + "\n")
    assert json.loads((second / "cells" / "in" / TASKS[2] / CELL_STAMP).read_text())["origin"]["reused_from"]
    assert build_leaderboard(second).origin_mark("in", TASKS[2]) == "†"  # the report reads the stamp
    from test_regrade_api_rows import Runner

    models = {"in": {"path": str(tiny_lineage.in_), "kind": "in"}}
    runner = Runner()
    run_cells(second, models, TASKS, runner=runner, **KW)  # a plain rerun: adopts it
    assert runner.jobs == []
    record = {json.loads(x)["key"]: json.loads(x)["record"] for x in store.read_text().splitlines()
              if '"key"' in x}[key]
    assert record["reused_from"]["run"] == str(first.absolute())
    assert build_leaderboard(second).origin_mark("in", TASKS[2]) == "†"


def test_regraded_cells_are_marked_with_the_grading_and_the_source_run(runs, tmp_path):
    from test_regrade_api_rows import Runner

    from frankeneval.transferability.reuse import regrade_run

    first, second = runs
    new = tmp_path / "regraded"
    regrade_run(second, new, "seed", judge=False, runner=Runner(), progress=lambda s: None)
    board = build_leaderboard(new)
    assert set(board.origins) == {(m, t) for m in ("in", "rl") for t in TASKS}  # every cell of a regrade
    # IN's responses were generated by `first` (second had taken them from it): its own footnote
    assert {board.origins[("in", t)] for t in TASKS} == {"‡1"} and {board.origins[("rl", t)] for t in TASKS} == {"‡2"}
    in_note, rl_note = board.origin_notes["‡1"], board.origin_notes["‡2"]
    for note in (in_note, rl_note):
        assert note.startswith(f"re-scored by --regrade seed (the reference's rules, no judge) from the responses "
                               f"stored in the run {second.absolute()}")
        assert "graded there with rules only, no judge" in note and note.endswith("nothing generated")
    assert f"generated by the run {first.absolute()}" in in_note and "generated by" not in rl_note
    md = render(board, "md")
    rows = _md_rows(md, "### rule (rule_acc)")
    assert rows["IN"].count("‡1") == len(TASKS) and rows["RL"].count("‡2") == len(TASKS) and "†" not in md
    assert f"- ‡1 {in_note}" in md and f"- ‡2 {rl_note}" in md


def test_a_regrade_recorded_before_cells_named_their_grading_reads_the_manifest(runs, tmp_path):
    """A regraded cell whose record says only the run and the --regrade name: the grading comes from the regraded
    run's manifest (what it recorded), never guessed."""
    from test_regrade_api_rows import Runner

    from frankeneval.transferability.reuse import regrade_run

    _, second = runs
    new = tmp_path / "regraded"
    regrade_run(second, new, "rules", runner=Runner(), progress=lambda s: None)
    old = tmp_path / "old"
    shutil.copytree(new, old)
    for stamp in old.rglob(CELL_STAMP):  # as an older frankeneval wrote them: no origin in the stamp or the record
        data = json.loads(stamp.read_text())
        data.pop("origin")
        stamp.write_text(json.dumps(data))
    lines = []
    for line in (old / "cells.jsonl").read_text().splitlines():
        x = json.loads(line)
        if "record" in x:
            x["record"]["regraded_from"] = {k: x["record"]["regraded_from"][k] for k in ("run", "grading", "cell")}
        lines.append(json.dumps(x))
    (old / "cells.jsonl").write_text("\n".join(lines) + "\n")
    board = build_leaderboard(old)
    assert len(board.origins) == 2 * len(TASKS)
    assert all("re-scored by --regrade rules (rules only, no judge)" in n for n in board.origin_notes.values())


def test_marks_are_numbered_per_source_only_when_a_kind_has_several():
    reused_a, reused_b, regraded = ("reused", "from A"), ("reused", "from B"), ("regraded", "from C")
    marks, notes = _origin_marks({("in", "t1"): reused_a, ("rl", "t1"): reused_b, ("in", "t2"): reused_a,
                                  ("v", "t1"): regraded}, ["in", "rl", "v"])
    assert marks == {("in", "t1"): "†1", ("rl", "t1"): "†2", ("in", "t2"): "†1", ("v", "t1"): "‡"}
    assert notes == {"†1": "from A", "†2": "from B", "‡": "from C"}
