"""The demo pipeline: every stage runs on the tiny lineage, the report embeds the characterization plots, a
rerun redoes nothing. (The real lmms-eval path is covered by tests/test_transfer.py; CI runs `frankeneval demo`.)"""

from __future__ import annotations

from test_transfer import CountingRunner


def test_demo_runs_all_stages_and_resumes(tmp_path):
    from frankeneval.demo import run_demo

    out = tmp_path / "demo"
    first = CountingRunner()
    res = run_demo(out, lineage="random", fast=True, data=tmp_path, runner=first, localization=False,
                   progress=lambda s: None)
    assert not res.failed_stages, res.failed_stages
    assert len(first.calls) == 8  # IN, RL and the six variants, one cell each
    html = res.report["html"].read_text()
    assert html.count("data:image/png;base64,") >= 2  # leaderboard chart + characterization plots
    assert "in_early+rl_middle_late" in res.markdown and "| IN |" in res.markdown
    assert (out / "characterize" / "summary.json").is_file()

    again = CountingRunner()
    res2 = run_demo(out, lineage="random", fast=True, data=tmp_path, runner=again, localization=False,
                    progress=lambda s: None)
    assert again.calls == [] and res2.markdown == res.markdown
