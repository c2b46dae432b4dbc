"""The paper's transfer metrics on hand-made per-item tables, and the v1 / v2 splits on the real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from frankeneval.transferability.metrics import (
    SplitPart,
    bootstrap_mean_ci,
    indicator,
    m_rea,
    m_v2r,
    m_vis,
    paired_bootstrap_diff,
    paired_diff,
    paper_cells,
    transitions,
)

REPO = Path(__file__).resolve().parents[1]

# A (image) and B (control) on items 1..10; item 9 is a judge error under B, item 10 unscored under A, item 11 only
# under A, item 12 only under B. Paired (N = 8): TT = 1,2,3; TF = 4,5; FT = 6; FF = 7,8.
A = {"1": 1, "2": True, "3": 1, "4": 1, "5": 1, "6": 0, "7": False, "8": 0, "9": 1, "10": None, "11": 1}
B = {"1": 1, "2": 1, "3": True, "4": 0, "5": 0, "6": 1, "7": 0, "8": 0, "9": None, "10": 1, "12": 0}


def test_transitions_equal_hand_counts():
    t = transitions(A, B)
    assert (t.n, t.n_tt, t.n_tf, t.n_ft, t.n_ff) == (8, 3, 2, 1, 2)
    assert (t.excluded_unscored, t.excluded_unpaired, t.excluded) == (2, 2, 4)
    assert t.ids == ("1", "2", "3", "4", "5", "6", "7", "8")
    assert t.acc_a == 5 / 8 and t.acc_b == 4 / 8 and t.delta == pytest.approx(1 / 8)
    assert t.net_gain == 1 - 2
    assert t.side_effect_rate == 2 / 5 and t.lift_rate == 1 / 3
    assert m_vis(A, B) == 2 / 8 and m_v2r(A, B) == 3 / 8
    # M_rea: accuracy over the scored items (10 of 11; item 10 unscored)
    assert m_rea(A) == 7 / 10
    d = t.as_dict()
    assert d["m_vis"] == 0.25 and d["net_gain"] == -1 and "ids" not in d


def test_n_zero_and_empty_denominators_are_none_not_zero():
    t = transitions({"1": None, "2": 1}, {"1": 1, "3": 0})
    assert (t.n, t.excluded_unscored, t.excluded_unpaired) == (0, 1, 2)
    assert t.acc_a is t.acc_b is t.delta is t.m_vis is t.m_v2r is t.side_effect_rate is t.lift_rate is None
    assert t.net_gain == 0
    assert transitions({}, {}).n == 0 and m_rea({"1": None}) is None
    ind = indicator("M_vis", {"1": None}, {"1": 1})
    assert ind.n == 0 and ind.value is None and ind.ci is None and ind.excluded == 1
    # all right in both: no side effect possible to measure lift on (no FF/FT) -> lift None, side-effect 0
    t = transitions({"1": 1, "2": 1}, {"1": 1, "2": 1})
    assert t.side_effect_rate == 0 and t.lift_rate is None and t.m_v2r == 1


def test_indicators_and_their_bootstrap_intervals():
    vis = indicator("M_vis", A, B, seed=3, n_boot=500)
    assert vis.values == {"1": 0, "2": 0, "3": 0, "4": 1, "5": 1, "6": 0, "7": 0, "8": 0} and vis.excluded == 4
    assert vis.value == 2 / 8
    # the interval is the percentile bootstrap of the indicator's mean over items, seeded
    x = np.array(list(vis.values.values()), float)
    means = x[np.random.default_rng(3).integers(0, 8, size=(500, 8))].mean(1)
    assert vis.ci == tuple(np.quantile(means, [0.025, 0.975]))
    assert indicator("M_v2r", A, B).value == 3 / 8
    rea = indicator("M_rea", A)
    assert rea.n == 10 and rea.excluded == 1 and rea.value == 0.7
    with pytest.raises(ValueError):
        indicator("M_vis", A)
    with pytest.raises(ValueError):
        indicator("M_other", A, B)
    assert bootstrap_mean_ci([1, 1, 1]) == (1.0, 1.0) and bootstrap_mean_ci([]) is None


def test_paired_difference_to_in_uses_the_items_both_scored():
    ref = indicator("M_rea", {"a": 1, "b": 0, "c": 0, "d": 1, "e": None})
    model = indicator("M_rea", {"a": 1, "b": 1, "c": 1, "d": 0, "e": 1, "f": 1})
    d = paired_diff(model, ref, seed=0, n_boot=400)
    # items a-d are scored by both: model 3/4, IN 2/4 -> +0.25 (e: IN unscored, f: IN never saw it)
    assert d.n == 4 and d.value == pytest.approx(0.25)
    assert d.ci == paired_bootstrap_diff([1, 1, 1, 0], [1, 0, 0, 1], seed=0, n_boot=400)
    assert d.ci[0] <= 0.25 <= d.ci[1]
    assert paired_diff(model, indicator("M_rea", {})).n == 0
    with pytest.raises(ValueError):
        paired_bootstrap_diff([1, 0], [1])


def test_paper_cells_over_models_and_parts():
    parts = [SplitPart("v1", "perception", "p", "p_black"), SplitPart("v1", "alignment", "a", "a_blackdesc"),
             SplitPart("v1", "reasoning", "r")]
    items = {
        "in": {"p": {"1": 1, "2": 1, "3": 0}, "p_black": {"1": 0, "2": 1, "3": 0},
               "a": {"1": 1, "2": 1}, "a_blackdesc": {"1": 1, "2": 0}, "r": {"1": 1, "2": 0}},
        "rl": {"p": {"1": 1, "2": 1, "3": 1}, "p_black": {"1": 0, "2": 0, "3": 0},
               "a": {"1": 1, "2": 1}, "a_blackdesc": {"1": 1, "2": 1}, "r": {"1": 1, "2": 1}},
        "base": {"p": {"1": 0}},  # no control: no perception cell; no other tasks
    }
    cells = paper_cells(items, parts, n_boot=200)
    assert set(cells) == {(m, p.key) for m in ("in", "rl") for p in parts}
    assert cells[("in", parts[0].key)].metric.value == 1 / 3 and cells[("rl", parts[0].key)].metric.value == 1.0
    assert cells[("rl", parts[0].key)].diff_ref.value == pytest.approx(2 / 3)
    assert cells[("in", parts[0].key)].diff_ref is None
    assert cells[("in", parts[1].key)].metric.value == 0.5 and cells[("rl", parts[1].key)].metric.value == 1.0
    assert cells[("rl", parts[2].key)].transitions is None and cells[("rl", parts[2].key)].metric.value == 1.0
    assert [p.metric for p in parts] == ["M_vis", "M_v2r", "M_rea"]


# -- the splits on the real data ---------------------------------------------------------------------------
def _yaml_kwargs(path: Path) -> dict:
    """A task YAML's dataset_kwargs (its ``!function`` tags read as plain strings)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    data = yaml.load(path.read_text(), Loader=Loader)
    return data["dataset_kwargs"]


V2_PERCEPTION = {"natural image": 109, "bar chart": 119, "table": 70, "pie chart": 12, "scatter plot": 36,
                 "line plot": 39}


@pytest.mark.parametrize("task, n_all", [
    ("mathvista/franken_mathvista_perception_black", 460),  # v1: general-vqa
    ("mathvista/franken_mathvista_alignment_blackdesc", 540),  # v1: math-targeted-vqa
    ("mathvista/franken_mathvista_v2_perception_black", sum(V2_PERCEPTION.values())),  # 385
    # geometry diagram (216) or geometry problem solving (208)
    ("mathvista/franken_mathvista_v2_vision_reasoning_black", 216),
    ("math500/franken_math500", 500),
    ("math500/franken_math500_v2", 128 + 134),  # levels 4 and 5
])
def test_split_membership_and_deterministic_samples(shared_data, task, n_all):
    from frankeneval.tasks.common import TaskSettings

    from frankeneval.evaluation.data import load_benchmark_rows, subsample_indices

    path = REPO / "tasks" / f"{task}.yaml"
    if "math500_v2" in task:
        kwargs = {**_yaml_kwargs(REPO / "tasks/math500/franken_math500.yaml"), **_yaml_kwargs(path)}
        from frankeneval.tasks.math500.utils import build_docs
    elif "math500" in task:
        kwargs = _yaml_kwargs(path)
        from frankeneval.tasks.math500.utils import build_docs
    else:
        kwargs = _yaml_kwargs(path)
        from frankeneval.tasks.mathvista.utils import build_docs
    everything = build_docs(kwargs, TaskSettings(data_path=str(shared_data), sample_size=0))
    assert len(everything) == n_all
    sampled = build_docs(kwargs, TaskSettings(data_path=str(shared_data), sample_size=100, sample_seed=123))
    ids = [d["id"] for d in sampled]
    # docs/method.md: the split's ids in dataset order, RandomState(123).choice(n, 100, replace=False), sorted
    assert ids == [everything[i]["id"] for i in subsample_indices(n_all, 100, 123)]
    assert ids == [d["id"] for d in build_docs(kwargs, TaskSettings(data_path=str(shared_data), sample_size=100,
                                                                     sample_seed=123))]
    assert len(ids) == 100 == len(set(ids))
    if "mathvista" in task:  # dataset order: the rows keep the file's order
        rows = {str(r["pid"]): r["metadata"] for r in load_benchmark_rows("mathvista", shared_data)}
        order = [str(r["pid"]) for r in load_benchmark_rows("mathvista", shared_data)]
        assert [d["id"] for d in everything] == [p for p in order if p in {d["id"] for d in everything}]
        for d in everything:
            md = rows[d["id"]]
            if "v2_perception" in task:
                assert md["context"] in V2_PERCEPTION
            elif "v2_vision_reasoning" in task:
                assert md["context"] == "geometry diagram" or md["task"] == "geometry problem solving"
    if task.endswith("math500_v2"):
        assert {d["level"] for d in everything} == {"4", "5"}


def test_v2_perception_contexts_are_those_of_method(shared_data):
    kwargs = _yaml_kwargs(REPO / "tasks/mathvista/franken_mathvista_v2_perception.yaml")
    assert set(kwargs["any_of"]["context"]) == set(V2_PERCEPTION) and "control" not in kwargs
    for ctl in ("black", "blackdesc"):  # the controls select the same items
        other = _yaml_kwargs(REPO / f"tasks/mathvista/franken_mathvista_v2_perception_{ctl}.yaml")
        assert {k: v for k, v in other.items() if k != "control"} == kwargs and other["control"] == ctl
        other = _yaml_kwargs(REPO / f"tasks/mathvista/franken_mathvista_v2_vision_reasoning_{ctl}.yaml")
        assert other["any_of"] == {"context": ["geometry diagram"], "task": ["geometry problem solving"]}


def test_splits_option_chooses_the_task_groups():
    import yaml

    from frankeneval.errors import FrankenevalError
    from frankeneval.transferability.manifest import DEFAULT_TASKS, SPLITS, split_tasks

    assert list(DEFAULT_TASKS) == split_tasks("v1") == ["franken_perception", "franken_alignment", "franken_reasoning"]
    assert split_tasks("v2") == ["franken_v2_perception", "franken_v2_vision_reasoning", "franken_v2_reasoning"]
    assert split_tasks("both") == split_tasks("v1") + split_tasks("v2")
    with pytest.raises(FrankenevalError, match="v1, v2 or both"):
        split_tasks("v3")
    groups = {p.stem: yaml.safe_load(p.read_text()) for p in (REPO / "tasks" / "groups").glob("*.yaml")}
    for names in SPLITS.values():
        for g in names:
            assert groups[g]["group"] == g
    assert groups["franken_v2_perception"]["task"] == [
        "franken_mathvista_v2_perception", "franken_mathvista_v2_perception_black",
        "franken_mathvista_v2_perception_blackdesc"]
    assert groups["franken_v2_reasoning"]["task"] == ["franken_math500_v2"]


def test_report_finds_the_v2_parts_by_name():
    from frankeneval.reports.leaderboard.tasks import split_parts, task_column, task_split

    assert task_column("franken_mathvista_v2_vision_reasoning_blackdesc") == ("vision+reasoning", "black+desc")
    assert task_column("franken_math500_v2") == ("reasoning", "text")
    assert task_split("franken_math500_v2") == "v2" and task_split("franken_math500") == "v1"
    assert task_split("franken_world_perception") == "world"
    leaves = [t for g in ("perception", "vision_reasoning") for t in (
        f"franken_mathvista_v2_{g}", f"franken_mathvista_v2_{g}_black", f"franken_mathvista_v2_{g}_blackdesc")]
    parts = split_parts(leaves + ["franken_math500_v2", "franken_math500", "franken_mathvista_perception",
                                  "franken_mathvista_perception_black", "franken_mathvista"])
    assert [(p.split, p.metric, p.a, p.b) for p in parts] == [
        ("v1", "M_vis", "franken_mathvista_perception", "franken_mathvista_perception_black"),
        ("v1", "M_rea", "franken_math500", None),
        ("v2", "M_vis", "franken_mathvista_v2_perception", "franken_mathvista_v2_perception_black"),
        ("v2", "M_v2r", "franken_mathvista_v2_vision_reasoning", "franken_mathvista_v2_vision_reasoning_blackdesc"),
        ("v2", "M_rea", "franken_math500_v2", None),
    ]


def test_transfer_command_splits_option():
    import argparse

    from frankeneval.commands import transfer as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    args = parser.parse_args(["--recipe", "tiny", "--out", "x"])
    assert args.splits == "v1" and args.tasks is None and args.base_model is None
    assert parser.parse_args(["--recipe", "tiny", "--out", "x", "--splits", "both"]).splits == "both"
    with pytest.raises(SystemExit):
        parser.parse_args(["--recipe", "tiny", "--out", "x", "--splits", "v3"])
