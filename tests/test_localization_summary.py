"""Localization summaries (issue 33): the vision sweep's peak layer with its bootstrap interval, and
``localize-reasoning --dataset all`` (GSM8K then MATH-500 in one run, one report) equal to the two runs alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from frankeneval.localization.common import peak_rise

# --------------------------------------------------------------------------- peak layer


def nested_flags(changed_from: list[int], layers: list[int]) -> list[list[bool]]:
    """Pair i changes exactly when the swap starts at a layer <= changed_from[i] (0: never)."""
    return [[L <= c for L in layers] for c in changed_from]


# 10 pairs over layers 1-5: rates 1.0, 0.9, 0.3, 0.2, 0.1 -> rises 0.1, 0.6, 0.1, 0.1: the peak is layer 2
CHANGED_FROM = [5, 4, 3, 2, 2, 2, 2, 2, 2, 1]
LAYERS = [1, 2, 3, 4, 5]


def test_peak_rise_known_peak_exact():
    flags = nested_flags(CHANGED_FROM, LAYERS)
    assert [sum(f[j] for f in flags) for j in range(5)] == [10, 9, 3, 2, 1]  # rates 1.0, 0.9, 0.3, 0.2, 0.1
    p = peak_rise(flags, LAYERS)
    assert (p["layer"], p["decoder_layer"], p["next_layer"]) == (2, 1, 3)
    assert p["rise"] == pytest.approx(0.6) and p["rate"] == pytest.approx(0.9) and p["next_rate"] == pytest.approx(0.3)
    assert (p["n"], p["n_resamples"], p["seed"], p["level"]) == (10, 2000, 0, 0.95)
    # the interval contains the point estimate; its bounds are swept layers below the deepest (which has no rise)
    lo, hi = p["layer_ci"]
    assert lo <= 2 <= hi and {lo, hi} <= set(LAYERS[:-1])
    assert p["rise_ci"][0] <= p["rise"] <= p["rise_ci"][1]
    assert 0.5 < p["agreement"] <= 1.0
    # deterministic with the seed; another seed resamples otherwise, the point estimate stays
    assert peak_rise(flags, LAYERS) == p
    other = peak_rise(flags, LAYERS, seed=1)
    assert other["layer"] == 2 and other["rise"] == p["rise"] and other["agreement"] != p["agreement"]
    # the layers' order does not matter (columns follow their layer)
    assert peak_rise([f[::-1] for f in flags], LAYERS[::-1]) == p


def test_peak_rise_bootstrap_by_hand():
    """The interval is the percentile interval of the peak recomputed on resampled pairs."""
    import numpy as np

    flags = nested_flags(CHANGED_FROM, LAYERS)
    p = peak_rise(flags, LAYERS, n_resamples=300, seed=7)
    x = np.asarray(flags, dtype=int)
    idx = np.random.default_rng(7).integers(0, 10, size=(300, 10))
    peaks, rises = [], []
    for row in idx:
        changed = x[row].sum(axis=0)  # pairs changed per layer: integer rises, so ties are exact
        rise = changed[:-1] - changed[1:]
        peaks.append(LAYERS[int(np.argmax(rise))] if rise.max() > 0 else None)  # first maximum: the lowest layer
        rises.append(rise[1] / 10)  # the point peak's span (layer 2 -> 3)
    found = [v for v in peaks if v is not None]
    assert p["layer_ci"] == [int(v) for v in np.quantile(found, [0.025, 0.975], method="inverted_cdf")]
    assert p["rise_ci"] == pytest.approx(list(np.quantile(rises, [0.025, 0.975])))
    assert p["agreement"] == pytest.approx(sum(v == 2 for v in peaks) / 300)


def test_peak_rise_ties_flat_and_degenerate():
    # rates 0.5, 0.25, 0.0 over layers 2, 6, 9: equal rises -> the lowest layer; sparse layers name the span's start
    p = peak_rise(nested_flags([6, 6, 2, 2, 0, 0, 0, 0], [2, 6, 9]), [2, 6, 9], n_resamples=0)
    assert (p["layer"], p["next_layer"], p["rise"]) == (2, 6, 0.25) and p["layer_ci"] is None
    # nothing rises (the rate never falls as the swap starts deeper): no peak
    flat = peak_rise([[True, True, True], [False, False, False]], [1, 2, 3])
    assert flat["layer"] is None and flat["rise"] == 0.0 and flat["layer_ci"] is None
    assert peak_rise([], [1, 2]) is None and peak_rise([[True]], [1]) is None


def _hand_built_vision(tmp_path: Path):
    """Counting pairs: original '3', source '7'; pair i answers '7' (changed) when the swap starts at layer <=
    CHANGED_FROM[i], else '3'. The keys and records are what run_vision_sweep stores."""
    from frankeneval.evaluation.probes import ProbePair

    pairs, keys, records = [], {}, {}
    for i, c in enumerate(CHANGED_FROM):
        pair = ProbePair(f"p{i}", "counting", tmp_path / f"t{i}.png", tmp_path / f"s{i}.png", "How many?",
                         {"target_answer": 3, "source_answer": 7})
        pairs.append(pair)
        k = {"original": f"gen/t{i}", "source_own": f"gen/s{i}", "swapped": {L: f"swap/{i}/L{L}" for L in LAYERS}}
        keys[("counting", pair.id)] = k
        records[k["original"]] = {"response": "3"}
        records[k["source_own"]] = {"response": "7"}
        for L in LAYERS:
            records[k["swapped"][L]] = {"response": "7" if L <= c else "3"}
    return {"counting": pairs}, keys, records


def test_vision_summary_peak_from_unit_records(tmp_path):
    from frankeneval.localization.vision import format_vision_table, summarize_vision
    from frankeneval.reports.localization_plots import plot_vision_localization

    pairs, keys, records = _hand_built_vision(tmp_path)
    res = summarize_vision(records, pairs, keys, LAYERS)
    task = res["tasks"]["counting"]
    assert [r["change_rate"] for r in task["layers"]] == pytest.approx([1.0, 0.9, 0.3, 0.2, 0.1])
    for metric in ("change_rate", "task_change_rate"):  # '3' vs '7': both rules agree here
        assert task["peak"][metric] == peak_rise(nested_flags(CHANGED_FROM, LAYERS), LAYERS)
    assert task["peak"]["change_rate"]["layer"] == 2
    again = summarize_vision(records, pairs, keys, LAYERS)
    assert again["tasks"]["counting"]["peak"] == task["peak"]  # seeded: the same interval every time
    json.dumps(res)  # the summary is JSON as written
    table = format_vision_table({**res, "model": "m"})
    line = next(x for x in table.splitlines() if x.startswith("  counting  method: "))
    lo, hi = task["peak"]["change_rate"]["layer_ci"]
    assert line.startswith(f"  counting  method:     layer 2 (rise +0.60 vs layer 3; 95% CI layer "
                           f"{lo if lo == hi else f'{lo}-{hi}'}, rise ")
    assert "2000 bootstrap resamples of the pairs, seed 0" in table
    assert plot_vision_localization(res, tmp_path / "v.png").is_file()


# --------------------------------------------------------------------------- --dataset all on the tiny lineage

GSM8K_ROWS = [{"question": f"What is {i} + {i + 1}?", "answer": f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}"}
              for i in range(4)]
MATH_ROWS = [{"problem": f"Compute $\\frac{{{2 * i}}}{{2}}$.", "solution": "...", "answer": str(i)} for i in range(4)]


@pytest.fixture
def data_folder(tmp_path):
    root = tmp_path / "data"
    for name, rows in (("gsm8k", GSM8K_ROWS), ("math500", MATH_ROWS)):
        (root / name).mkdir(parents=True)
        (root / name / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _sweep(tiny_lineage, dataset: str, data: Path, out: Path) -> dict:
    from frankeneval.cli import main

    rc = main(["localize-reasoning", "--model", str(tiny_lineage.rl), "--dataset", dataset, "--data", str(data),
               "--samples", "3", "--seed", "5", "--layers", "1", "6", "--max-new-tokens", "3", "--batch-size", "4",
               "--device", "cpu", "--no-progress", "--out", str(out)])
    assert rc == 0
    return json.loads((out / "reasoning_localization.json").read_text())


def _units(out: Path) -> dict[str, dict]:
    lines = [json.loads(line) for line in (out / "units.jsonl").read_text().splitlines()]
    return {obj["key"]: obj["record"] for obj in lines if "key" in obj}


@pytest.fixture
def count_rows(monkeypatch):
    """Counts the rows every Generator.generate call runs."""
    from frankeneval.engine.generation import Generator

    seen = []
    original = Generator.generate

    def generate(self, requests, *a, **k):
        seen.append(len(requests))
        return original(self, requests, *a, **k)

    monkeypatch.setattr(Generator, "generate", generate)
    return seen


def test_dataset_all_equals_separate_runs_and_resumes(tiny_lineage, data_folder, tmp_path, capsys, count_rows):
    both = _sweep(tiny_lineage, "all", data_folder, tmp_path / "all")
    table = capsys.readouterr().out
    alone = {d: _sweep(tiny_lineage, d, data_folder, tmp_path / d) for d in ("gsm8k", "math500")}

    assert both["dataset"] == "all" and both["datasets"] == ["gsm8k", "math500"]
    assert list(both["by_dataset"]) == ["gsm8k", "math500"]
    for d, res in alone.items():
        block = both["by_dataset"][d]
        for field in ("analysis", "dataset", "n_questions", "unablated_accuracy", "layers", "questions", "skipped"):
            assert block[field] == res[field], (d, field)
        assert [r["layer"] for r in block["layers"]] == [1, 6] and block["n_questions"] == 3
    for field in ("system_prompt", "max_new_tokens", "seed_compatible", "samples", "seed"):
        assert both[field] == alone["gsm8k"][field]
    # the same generations, unit for unit: GSM8K's then MATH-500's in one store
    units = _units(tmp_path / "all")
    assert units == {**_units(tmp_path / "gsm8k"), **_units(tmp_path / "math500")}
    assert [k.split("/")[0] for k in units] == ["gsm8k"] * 9 + ["math500"] * 9
    header = json.loads((tmp_path / "all" / "units.jsonl").read_text().splitlines()[0])["_header"]
    assert header["dataset"] == ["gsm8k", "math500"] and {"gsm8k data", "math500 data"} <= set(header["inputs"])
    # one report: one table with both datasets, one plot
    assert "gsm8k: 3 questions" in table and "math500: 3 questions" in table
    assert (tmp_path / "all" / "reasoning_localization.png").is_file()
    assert sorted(p.name for p in (tmp_path / "all").iterdir() if not p.name.startswith(".")) == [
        "reasoning_localization.json", "reasoning_localization.png", "units.jsonl"]

    # resume: a finished run generates nothing; a cut store runs only the units it lost
    count_rows.clear()
    assert _sweep(tiny_lineage, "all", data_folder, tmp_path / "all") == both
    assert count_rows == []
    store = tmp_path / "all" / "units.jsonl"
    lines = store.read_text().splitlines(keepends=True)
    store.write_text("".join(lines[:-5]))  # the last five MATH-500 units lost
    assert _sweep(tiny_lineage, "all", data_folder, tmp_path / "all") == both
    assert sum(count_rows) == 5


def test_dataset_all_refusals(tiny_lineage, data_folder, tmp_path, capsys):
    from frankeneval.cli import main

    args = ["localize-reasoning", "--model", str(tiny_lineage.rl), "--layers", "1", "--max-new-tokens", "2",
            "--samples", "2", "--device", "cpu", "--no-progress"]
    # a single file cannot hold both datasets: refused in one line, before anything is written
    rc = main([*args, "--dataset", "all", "--data", str(data_folder / "gsm8k" / "test.jsonl"),
               "--out", str(tmp_path / "file")])
    assert rc == 1 and "give --data a data folder" in capsys.readouterr().err
    assert not (tmp_path / "file").exists()
    # a one-dataset run's store is never resumed as both
    assert main([*args, "--dataset", "gsm8k", "--data", str(data_folder), "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    assert main([*args, "--dataset", "all", "--data", str(data_folder), "--out", str(tmp_path / "one")]) == 1
    assert "math500 data" in capsys.readouterr().err
