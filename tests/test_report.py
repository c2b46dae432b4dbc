"""The leaderboard: numbers equal lmms-eval's files, intervals, deltas, best marks, every format, Chromium."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from frankeneval.reports.leaderboard.build import build_leaderboard
from frankeneval.reports.leaderboard.report import render, write_report
from frankeneval.reports.leaderboard.tasks import task_column
from frankeneval.transferability.cells import CellJob
from frankeneval.transferability.metrics import bootstrap_mean_ci
from frankeneval.transferability.transfer import run_cells

TASKS = ["franken_mathvista_perception", "franken_mathvista_alignment", "franken_math500",
         "franken_mathvista_perception_black"]
MODELS = ["in", "rl", "v_a", "v_b"]


def _fake_runner(job: CellJob) -> None:
    """lmms-eval-shaped output with deterministic scores and a judge metric that sometimes errs (no score)."""
    rng = np.random.default_rng(abs(hash(job.cell.key)) % 2**32)
    out = job.output_dir / "tiny__model"
    out.mkdir(parents=True)
    n = 8
    rule = rng.integers(0, 2, n)
    judge = np.maximum(rule, rng.integers(0, 2, n))
    judge_missing = {3}
    task = job.cell.task
    with open(out / f"20260101_000000_samples_{task}.jsonl", "w") as f:
        for i in range(n):
            jd = {"id": str(i)} if i in judge_missing else {"id": str(i), "score": int(judge[i])}
            f.write(json.dumps({"doc_id": i, "rule_acc": {"id": str(i), "score": int(rule[i])}, "judge_acc": jd})
                    + "\n")
    judge_vals = [judge[i] for i in range(n) if i not in judge_missing]
    res = {"alias": task, "rule_acc,none": float(rule.mean()), "rule_acc_stderr,none": "N/A",
           "judge_acc,none": float(np.mean(judge_vals)), "judge_error,none": 1,
           "hit_limit,none": 2 if job.cell.model == "v_b" else 0}
    (out / "20260101_000000_results.json").write_text(json.dumps({"results": {task: res}}))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report") / "run"
    models = {m: {"path": f"/models/{m}", "kind": m if m in ("in", "rl") else "variant",
                  "description": f"phrase of {m}"} for m in MODELS}
    run_cells(run, models, TASKS, runner=_fake_runner, recipe="fake", sample_size=8, sample_seed=123,
              progress=lambda s: None)
    return run


def _results(run: Path, model: str, task: str) -> dict:
    res = next((run / "cells" / model / task).rglob("*_results.json"))
    return json.loads(res.read_text())["results"][task]


def _samples(run: Path, model: str, task: str, metric: str) -> list[float]:
    path = next((run / "cells" / model / task).rglob(f"*_samples_{task}.jsonl"))
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [float(r[metric]["score"]) for r in rows if "score" in r[metric]]


def test_task_columns():
    assert task_column("franken_mathvista_perception") == ("perception", "image")
    assert task_column("franken_mathvista_alignment_blackdesc") == ("alignment", "black+desc")
    assert task_column("franken_mathvista_perception_black") == ("perception", "black")
    assert task_column("franken_math500") == ("reasoning", "text")
    assert task_column("franken_gsm8k") == ("reasoning", "text")
    assert task_column("franken_world_perception") == ("perception", "image")


def test_bootstrap_ci_is_seeded_and_matches_numpy():
    x = [1, 0, 1, 1, 0, 1, 0, 1]
    lo, hi = bootstrap_mean_ci(x, seed=7, n_boot=500)
    rng = np.random.default_rng(7)
    means = np.asarray(x, float)[rng.integers(0, 8, size=(500, 8))].mean(1)
    assert (lo, hi) == tuple(np.quantile(means, [0.025, 0.975]))
    assert bootstrap_mean_ci(x, seed=7, n_boot=500) == (lo, hi)
    assert lo <= np.mean(x) <= hi
    assert bootstrap_mean_ci([], seed=0) is None
    assert bootstrap_mean_ci([1, 1, 1]) == (1.0, 1.0)


def test_numbers_equal_lmms_eval_files(run_dir):
    board = build_leaderboard(run_dir, seed=0)
    assert board.rows == MODELS
    assert [c.key for c in board.columns] == [
        "franken_mathvista_perception", "franken_mathvista_alignment", "franken_math500",
        "franken_mathvista_perception_black"]
    assert board.metrics == ["rule_acc", "judge_acc"]  # judge_error is a count, not a score column
    for m in MODELS:
        for t in TASKS:
            res = _results(run_dir, m, t)
            for metric in ("rule_acc", "judge_acc"):
                e = board.get(m, t, metric)
                assert e.value == res[f"{metric},none"]
                scores = _samples(run_dir, m, t, metric)
                assert e.n == len(scores) == (8 if metric == "rule_acc" else 7)
                assert e.ci == bootstrap_mean_ci(scores, seed=0)
                assert e.delta_in == pytest.approx(e.value - _results(run_dir, "in", t)[f"{metric},none"])
                assert e.delta_rl == pytest.approx(e.value - _results(run_dir, "rl", t)[f"{metric},none"])
            best = max(_results(run_dir, x, t)["rule_acc,none"] for x in MODELS)
            assert board.get(m, t, "rule_acc").best == (_results(run_dir, m, t)["rule_acc,none"] == best)


def test_csv_round_trips_the_numbers(run_dir):
    board = build_leaderboard(run_dir)
    rows = [r for r in csv.DictReader(io.StringIO(render(board, "csv"))) if r["table"] == "leaderboard"]
    assert len(rows) == len(MODELS) * len(TASKS) * 2
    for r in rows:
        model = {"IN": "in", "RL": "rl"}.get(r["model"], r["model"])
        assert float(r["value"]) == _results(run_dir, model, r["task"])[f"{r['metric']},none"]
        assert int(r["n"]) == len(_samples(run_dir, model, r["task"], r["metric"]))


def test_answers_that_hit_the_token_limit_are_counted_beside_the_score(run_dir):
    board = build_leaderboard(run_dir)
    md = render(board, "md")
    v_b_rows = [line for line in md.splitlines() if line.startswith("| v_b | phrase of v_b |")]
    assert v_b_rows and all("2 hit the token limit" in line for line in v_b_rows)
    assert not any("hit the token limit" in line for line in md.splitlines() if line.startswith("| IN |"))
    rows = [r for r in csv.DictReader(io.StringIO(render(board, "csv"))) if r["table"] == "leaderboard"]
    assert {r["hit_limit"] for r in rows if r["model"] == "v_b"} == {"2"}
    assert {r["hit_limit"] for r in rows if r["model"] == "IN"} == {"0"}


def test_markdown_and_latex(run_dir):
    board = build_leaderboard(run_dir)
    md = render(board, "md")
    assert "| IN |" in md and "| v_b | phrase of v_b |" in md and "perception (black)" in md
    assert md.count("**") >= 2 * len(TASKS)  # a best mark per column and metric
    v = _results(run_dir, "v_a", "franken_math500")["rule_acc,none"]
    assert f"{100 * v:.1f}" in md
    tex = render(board, "latex")
    # the paper's table (v1), the transitions, then a leaderboard table per metric
    assert tex.count(r"\begin{tabular}") == 4 and r"\textbf{" in tex and "v\\_a" in tex
    assert tex.index("tab:paper-v1") < tex.index("tab:transitions") < tex.index("tab:transfer-rule-acc")


def _items(run: Path, model: str, task: str) -> dict[str, float | None]:
    path = next((run / "cells" / model / task).rglob(f"*_samples_{task}.jsonl"))
    return {str(r["judge_acc"]["id"]): r["judge_acc"].get("score")
            for r in map(json.loads, path.read_text().splitlines())}


def test_paper_table_leads_and_equals_hand_counts(run_dir):
    board = build_leaderboard(run_dir, seed=0)
    assert board.paper_metric == "judge_acc"  # the judge ran: its verdict is the primary score
    assert [(p.split, p.dimension, p.a, p.b) for p in board.parts] == [
        ("v1", "perception", "franken_mathvista_perception", "franken_mathvista_perception_black"),
        ("v1", "reasoning", "franken_math500", None)]  # alignment has no blackdesc control in this run
    vis, rea = board.parts
    for m in MODELS:
        a, b = _items(run_dir, m, vis.a), _items(run_dir, m, vis.b)
        both = [k for k in a if a[k] is not None and b.get(k) is not None]
        tf = sum(a[k] == 1 and b[k] == 0 for k in both)
        tt = sum(a[k] == 1 and b[k] == 1 for k in both)
        cell = board.paper[(m, vis.key)]
        assert cell.metric.n == len(both) == 7 and cell.metric.excluded == 1  # item 3: a judge error
        assert cell.metric.value == pytest.approx(tf / 7)
        assert (cell.transitions.n_tt, cell.transitions.n_tf) == (tt, tf)
        r = _items(run_dir, m, rea.a)
        scored = [v for v in r.values() if v is not None]
        assert board.paper[(m, rea.key)].metric.value == pytest.approx(sum(scored) / len(scored))
        if m != "in":  # paired difference to IN on the same items
            ind, ref = board.paper[(m, vis.key)].metric, board.paper[("in", vis.key)].metric
            d = board.paper[(m, vis.key)].diff_ref
            assert d.value == pytest.approx(ind.value - ref.value) and d.ci[0] <= d.value <= d.ci[1]
    md = render(board, "md")
    assert md.index("The paper's table") < md.index("Transitions") < md.index("## Leaderboard")
    v = board.paper[("rl", vis.key)].metric.value
    assert f"| RL | {board.prompt('rl')} | {100 * v:.1f} [" in md
    rows = list(csv.DictReader(io.StringIO(render(board, "csv"))))
    assert [r["table"] for r in rows[: 2 * len(MODELS)]].count("paper") == len(MODELS)
    paper = {(r["model"], r["metric"]): r for r in rows if r["table"] == "paper"}
    assert float(paper[("RL", "M_vis")]["value"]) == pytest.approx(v) and paper[("IN", "M_vis")]["delta_in"] == ""
    trans = [r for r in rows if r["table"] == "transitions"]
    assert len(trans) == len(MODELS) and all(int(r["n"]) == 7 for r in trans)
    page = render(board, "html", chart=False)
    assert page.index('id="paper-v1"') < page.index('id="transitions"') < page.index('id="table-rule_acc"')


def test_prompt_column_shows_the_recorded_prompt_or_a_dash(tmp_path):
    from frankeneval.reports.leaderboard.build import prompt_label

    assert prompt_label({"name": "reasoner", "setting": "auto", "reason": "name rule", "text": "You are"}) == (
        "reasoner", "name rule")
    assert prompt_label(None) == ("", "")
    run = tmp_path / "run"
    models = {"in": {"path": "/models/in", "kind": "in"}}
    run_cells(run, models, ["franken_math500"], runner=_fake_runner, progress=lambda s: None)
    store = run / "cells.jsonl"
    lines = [json.loads(x) for x in store.read_text().splitlines()]
    for rec in lines:  # a run whose cells recorded no prompt (as before prompts were recorded)
        (rec.get("record") or {}).pop("system_prompt", None)
    store.write_text("".join(json.dumps(x) + "\n" for x in lines))
    manifest = json.loads((run / "transfer.json").read_text())
    for info in manifest["models"].values():
        info.pop("system_prompt", None)
    (run / "transfer.json").write_text(json.dumps(manifest))
    board = build_leaderboard(run)
    assert board.prompt("in") == "—" and "| IN | — |" in render(board, "md")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if path:
            return path
    return None


def test_html_is_self_contained_and_renders_in_chromium(run_dir, tmp_path):
    plots = tmp_path / "characterize"
    plots.mkdir()
    from frankeneval.reports.leaderboard_plots import save_leaderboard_chart

    save_leaderboard_chart(build_leaderboard(run_dir), plots / "energy_per_layer.png")
    written = write_report(run_dir, ["html", "md"], out_dir=tmp_path / "out", plot_dirs=[plots])
    page = written["html"].read_text()
    assert 'id="table-rule_acc"' in page and page.count("data:image/png;base64,") == 2  # chart + the layer plot
    assert "src=\"http" not in page and "<link" not in page and "<script" not in page  # nothing to fetch

    chromium = _chromium()
    if chromium is None:
        pytest.skip("headless Chromium not installed (apt-get install -y chromium) -- HTML rendering not checked")
    shot = tmp_path / "shot.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chrome'}", f"--screenshot={shot}", "--window-size=1200,900",
           written["html"].as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert img.shape == (900, 1200)
    # the table is drawn at the top left: dark text and cell borders on white, so that region is not blank
    top = img[:400, :800]
    assert top.std() > 20 and (top < 100).mean() > 0.005
    # the header row's tinted background (#eef1f6 -> grey ~240) is present: the table, not only text
    assert ((top > 232) & (top < 245)).mean() > 0.01


def test_a_missing_samples_file_is_named_never_a_silent_empty_pair(tmp_path):
    """A finished cell whose samples file is gone (a copy of the run without them, as a lean acceptance pack
    leaves it): its score still shows from the results file, and the report names the file in its notes (md, html,
    tex and the command's stderr) instead of a bare N=0 in the paper table."""
    from frankeneval.reports.leaderboard.text import report_notes, samples_note

    run = tmp_path / "run"
    models = {m: {"path": f"/models/{m}", "kind": m} for m in ("in", "rl")}
    run_cells(run, models, ["franken_mathvista_perception", "franken_mathvista_perception_black"],
              runner=_fake_runner, progress=lambda s: None)
    assert samples_note(build_leaderboard(run)) is None
    gone = next((run / "cells" / "rl" / "franken_mathvista_perception").rglob("*_samples_*.jsonl"))
    gone.unlink()
    board = build_leaderboard(run)
    assert board.samples_missing == {"rl::franken_mathvista_perception": str(gone)}
    note = samples_note(board)
    assert note is not None and str(gone) in note and note in report_notes(board)
    assert board.get("rl", "franken_mathvista_perception", "rule_acc").value == _results(
        run, "rl", "franken_mathvista_perception")["rule_acc,none"]  # the results file's score still shows
    assert board.get("rl", "franken_mathvista_perception", "rule_acc").n == 0
    assert all(str(gone) in render(board, fmt) for fmt in ("md", "html", "latex"))
    part = next(p for p in board.parts if p.dimension == "perception")
    assert board.paper.get(("rl", part.key)) is None or board.paper[("rl", part.key)].metric.n == 0
    assert board.paper[("in", part.key)].metric.n > 0
