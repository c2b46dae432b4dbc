"""The one ``--seed-compatible`` switch: reasoning localization and transfer (the reference's rules vs the paper's).

Vision localization and characterization have their own files (test_vision_seed.py, test_characterize_seed.py).
"""

from __future__ import annotations

import argparse

import pytest

from frankeneval.evaluation.scoring import math_equal, reference_final_answer, reference_math_correct
from frankeneval.localization.reasoning import Question, summarize_reasoning, unit_key

# --------------------------------------------------------------------------- the reference's answer rules


@pytest.mark.parametrize("response, paper, reference", [
    # the reference takes the *first* closed <answer> tag; the paper's rule the last
    ("<answer>3</answer> wait, no: <answer>4</answer>", "4", "3"),
    # no tag, no box: the reference reads "the answer is ..."; the paper's rule credits only a stated answer
    ("So the answer is 12. Check: 3 * 4 = 12 and 5 more.", None, "12"),
    # nothing numeric, no pattern: the reference's last 50 characters
    ("x" * 80, None, "x" * 50),
])
def test_reference_extraction_differs_from_the_papers(response, paper, reference):
    from frankeneval.evaluation.scoring import extract_final_answer

    assert extract_final_answer(response)[0] == paper
    assert reference_final_answer(response) == reference


def test_reference_check_accepts_one_percent_and_strips_percent_and_commas():
    assert reference_math_correct("100.5", "100") and not math_equal("100.5", "100")
    assert not reference_math_correct("102", "100")
    assert reference_math_correct("1,000", "1000") and reference_math_correct("50%", "50")
    assert not reference_math_correct("", "3") and not reference_math_correct("3", "")


def _records(dataset, questions, layers, responses):
    recs = {}
    for q in questions:
        for layer in [None, *layers]:
            text = responses[(q.index, layer)]
            from frankeneval.evaluation.scoring import extract_final_answer

            recs[unit_key(dataset, q, layer)] = {"response": text, "answer": extract_final_answer(text)[0]}
    return recs


def test_reasoning_summary_scores_the_same_responses_by_either_rule():
    qs = [Question(0, "p0", "4"), Question(1, "p1", "100")]
    layers = [1, 2]
    responses = {
        (0, None): "<answer>4</answer>", (0, 1): "<answer>3</answer> hmm <answer>4</answer>",
        (0, 2): "<answer>4</answer>",
        (1, None): "\\boxed{100}", (1, 1): "\\boxed{100.5}", (1, 2): "the answer is 100.",
    }
    recs = _records("gsm8k", qs, layers, responses)
    paper = summarize_reasoning(recs, "gsm8k", qs, layers)
    seed = summarize_reasoning(recs, "gsm8k", qs, layers, seed_compatible=True)
    assert paper["unablated_accuracy"] == seed["unablated_accuracy"] == 1.0
    # layer 1: q0 last tag 4 (paper right) vs first tag 3 (reference wrong); q1 100.5: reference's 1 % accepts it;
    # layer 2: q1 states no tag or box: no paper credit, the reference reads "the answer is 100"
    assert [r["accuracy"] for r in paper["layers"]] == [0.5, 0.5]
    assert [r["accuracy"] for r in seed["layers"]] == [0.5, 1.0]
    assert paper["questions"][0]["ablated"]["1"]["correct"] and not seed["questions"][0]["ablated"]["1"]["correct"]
    assert not paper["questions"][1]["ablated"]["1"]["correct"] and seed["questions"][1]["ablated"]["1"]["correct"]


def test_localize_reasoning_default_tokens_follow_the_switch():
    from frankeneval.commands import localize_reasoning

    parser = argparse.ArgumentParser()
    localize_reasoning.add_arguments(parser)
    base = ["--model", "m", "--dataset", "gsm8k", "--out", "o"]
    assert parser.parse_args(base).max_new_tokens is None  # resolved in run(): 2048 either way
    assert parser.parse_args(base + ["--seed-compatible"]).seed_compatible


# --------------------------------------------------------------------------- transfer and the task settings


def test_task_settings_seed_compatible_implies_seed_grading_unless_set():
    from frankeneval.tasks.common import TaskSettings

    assert TaskSettings.resolve({}, environ={}).grading == "paper"
    s = TaskSettings.resolve({"seed_compatible": 1}, environ={})
    assert s.grading == "seed" and s.rel_tol == 0.01
    assert TaskSettings.resolve({"seed_compatible": 1, "grading": "paper"}, environ={}).grading == "paper"
    assert TaskSettings.resolve(None, environ={"FRANKENEVAL_SEED_COMPATIBLE": "1"}).grading == "seed"


def test_transfer_passes_the_switch_to_every_cell_and_records_it(tmp_path, tiny_lineage):
    from test_transfer import write_fake_lmms_output

    from frankeneval.transferability.manifest import read_manifest
    from frankeneval.transferability.transfer import run_cells

    seen = []

    def runner(job):
        seen.append((job.env["FRANKENEVAL_SEED_COMPATIBLE"], job.env["FRANKENEVAL_GRADING"]))
        write_fake_lmms_output(job)

    models = {"in": {"path": str(tiny_lineage.in_), "kind": "in"}}
    kw = dict(tasks=["franken_math500"], sample_size=6, data_dir=tmp_path, progress=lambda s: None)
    run_cells(tmp_path / "seed", models, runner=runner, seed_compatible=True, **kw)
    run_cells(tmp_path / "paper", models, runner=runner, **kw)
    assert seen == [("1", "seed"), ("0", "paper")]
    assert read_manifest(tmp_path / "seed")["settings"]["seed_compatible"] is True
    assert read_manifest(tmp_path / "paper")["settings"]["seed_compatible"] is False
    # a run folder never mixes cells of the two settings
    from frankeneval.core.runstore import RunStoreMismatch

    with pytest.raises(RunStoreMismatch):
        run_cells(tmp_path / "seed", models, runner=runner, **kw)
    # an explicit --grading wins over the switch's default
    run_cells(tmp_path / "both", models, runner=runner, seed_compatible=True, grading="paper", **kw)
    assert seen[-1] == ("1", "paper")


def test_wrapper_seed_compatible_reaches_the_swap(tiny_lineage, tmp_path):
    from frankeneval.model_wrappers.franken_qwen import FrankenQwen
    from PIL import Image

    img = tmp_path / "src.png"
    Image.new("RGB", (56, 56), (200, 10, 10)).save(img)
    args = f"pretrained={tiny_lineage.rl},device=cpu,dtype=float32,intervention=swapkv:2:{img}"
    plain = FrankenQwen.create_from_arg_string(args)
    seed = FrankenQwen.create_from_arg_string(args + ",seed_compatible=true")
    assert [iv.seed_compatible for iv in plain.interventions] == [False]
    assert [iv.seed_compatible for iv in seed.interventions] == [True]
