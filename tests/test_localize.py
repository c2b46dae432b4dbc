"""Localization sweeps: metric definitions, run store, batched sweeps == per-unit single runs, resumption."""

from __future__ import annotations

import json

import pytest

from frankeneval.core.runstore import RunStore, RunStoreMismatch
from frankeneval.errors import FrankenevalError
from frankeneval.localization.common import (
    answer_changed,
    parse_layers,
    source_follows,
    task_changed,
)

# --------------------------------------------------------------------------- metric definitions


@pytest.mark.parametrize(
    "a,b,changed",
    [
        ("Yes.", "yes", False),  # case + trailing punctuation
        ("  3!?", "3", False),
        ("3 .", "3", True),  # the reference's one rstrip: "3 " differs from "3" (issue 30)
        ("3", "4", True),
        ("cat", "cats", True),  # short answers: exact comparison, no containment
        ("The answer is 3", "The answer is 3.", False),
        # one answer >= 20 chars: unchanged when one contains the other
        ("There are three red cubes", "there are three red cubes in the image", False),
        ("three", "There are three red cubes here", False),
        ("There are three red cubes", "There are four red cubes", True),
    ],
)
def test_answer_changed_method_rule(a, b, changed):
    assert answer_changed(a, b) is changed


def test_answer_changed_20_char_boundary():
    short, longer = "a" * 19, "a" * 19 + "b"  # 19 and 20 characters
    assert answer_changed(short, longer) is False  # one is 20 chars: containment, and it contains the other
    assert answer_changed("b" * 18, "b" * 19) is True  # both < 20: exact comparison
    assert answer_changed(longer + "!", longer) is False  # punctuation stripped before measuring
    assert answer_changed("x" * 25, "y" * 25) is True


def test_task_aware_change_and_follow():
    # counting: digits and number words are the same number
    assert not task_changed("counting", "There are 3 objects.", "three")
    assert task_changed("counting", "3", "4")
    # OCR: case, quotes and punctuation ignored
    assert not task_changed("ocr", '"Tensor".', "tensor")
    assert task_changed("ocr", "tensor", "tensors")
    # grounding: boxes by IoU >= 0.5
    assert not task_changed("grounding", "10,10,50,50", "[12, 10, 52, 50]")  # IoU = 38*40/(2*1600-1520) ~ 0.90
    assert task_changed("grounding", "10,10,50,50", "40,40,90,90")
    assert task_changed("grounding", "10,10,50,50", "I cannot see it")  # one box missing
    # recognition: yes / no
    assert not task_changed("recognition", "Yes, there is.", "<answer>yes</answer>")
    assert task_changed("recognition", "Yes", "No.")
    # neither parses: normalized strings compared
    assert not task_changed("counting", "many.", "Many")
    # source-follow: swapped answer equals the source's own answer (task-aware)
    assert source_follows("counting", "7", "seven items")
    assert not source_follows("counting", "3", "7")
    assert source_follows("grounding", "100,100,200,200", "(105,100,205,200)")


def test_parse_layers_and_prompt_rule():
    assert parse_layers(None, 6) == [1, 2, 3, 4, 5, 6]
    assert parse_layers(["1-3", "6", "2"], 6) == [1, 2, 3, 6]
    assert parse_layers("all", 3) == [1, 2, 3]
    assert parse_layers("late", 6) == [5, 6] and parse_layers("3+1", 6) == [1, 3]
    with pytest.raises(FrankenevalError, match="write 1-4"):
        parse_layers("0-3", 6)  # unified LLM indices start at 1: the old 0-based form says how to write it
    with pytest.raises(FrankenevalError, match="LLM layers are 1-6"):
        parse_layers("7", 6)
    with pytest.raises(FrankenevalError, match="only LLM layers"):
        parse_layers("vision", 6)
    # the system prompt rule itself: tests/test_prompts.py
    from frankeneval.evaluation.prompts import resolve_system_prompt

    assert resolve_system_prompt("lmms-lab/OpenMMReasoner-ColdStart").name == "reasoner"
    assert resolve_system_prompt("/ckpt/my-rl-model/").name == "reasoner"
    assert resolve_system_prompt("Qwen/Qwen2.5-VL-7B-Instruct").name == "none"


# --------------------------------------------------------------------------- run store


def test_run_store_append_resume_and_truncated_line(tmp_path):
    path = tmp_path / "units.jsonl"
    s = RunStore(path, header={"model": "m", "n": 1})
    s.append("a", {"x": 1})
    s.append("b", {"x": 2})
    with open(path, "ab") as f:  # an interrupted append: half a line
        f.write(b'{"key": "c", "rec')
    s2 = RunStore(path, header={"model": "m", "n": 1})
    assert s2.done("a") and s2.done("b") and not s2.done("c")
    assert s2.records() == {"a": {"x": 1}, "b": {"x": 2}}
    s2.append("c", {"x": 3})
    assert RunStore(path).records()["c"] == {"x": 3}
    lines = path.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # the partial line was cut off, not left in the middle
    with pytest.raises(RunStoreMismatch):
        RunStore(path, header={"model": "other", "n": 1})


# --------------------------------------------------------------------------- sweeps on the tiny lineage


@pytest.fixture(scope="module")
def tiny_rl(tiny_lineage):
    from frankeneval.engine.generation import Generator

    return Generator.load(str(tiny_lineage.rl), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def small_probes(tmp_path_factory):
    from frankeneval.localization.vision import load_probe_sets
    from frankeneval.miniature.world import write_vision_probes

    root = tmp_path_factory.mktemp("probes")
    write_vision_probes(root, tasks=("counting", "grounding"), n_per_task=3, seed=0)
    return load_probe_sets(("counting", "grounding"), data=root, samples=2, seed=123)


class CountingGenerator:
    """Delegates to a Generator, counting generate calls and rows; can fail after ``fail_after`` calls."""

    def __init__(self, gen, fail_after: int | None = None):
        self.gen, self.model, self.fail_after = gen, gen.model, fail_after
        self.calls = self.rows = 0
        self.batch_sizes: set = set()

    def visual_kvs(self, *a, **k):
        return self.gen.visual_kvs(*a, **k)

    def generate(self, requests, **kw):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.rows += len(requests)
        self.batch_sizes.add(kw.get("batch_size"))
        return self.gen.generate(requests, **kw)


VISION_LAYERS = [1, 3, 6]
MAX_NEW = 6


def test_vision_sweep_batched_equals_single_runs(tiny_rl, small_probes, tmp_path):
    from PIL import Image

    from frankeneval.engine.generation import GenRequest
    from frankeneval.engine.interventions import SwapVisualKV
    from frankeneval.localization.vision import run_vision_sweep

    counter = CountingGenerator(tiny_rl)
    res = run_vision_sweep(counter, small_probes, VISION_LAYERS, tmp_path, model_name="rl", max_new_tokens=MAX_NEW,
                           batch_size=64, progress=False)
    assert counter.calls == 1  # every (pair, layer) unit and the plain answers in one batched call
    n_pairs = sum(len(v) for v in small_probes.values())
    assert counter.rows <= n_pairs * (2 + len(VISION_LAYERS))  # plain prompts deduplicated
    pairs = {(p["task"], p["id"]): p for p in res["pairs"]}
    for task, plist in small_probes.items():
        for pair in plist:
            rec = pairs[(task, pair.id)]
            target = Image.open(pair.target_image).convert("RGB")
            source = Image.open(pair.source_image).convert("RGB")
            def one(img, iv=None):
                return tiny_rl.generate(
                    [GenRequest(pair.prompt, [img])], max_new_tokens=MAX_NEW, interventions=[iv or []], batch_size=1
                )[0].text
            assert rec["original"] == one(target)
            assert rec["source_own"] == one(source)
            for L in VISION_LAYERS:
                # naive path: the Generator encodes the PIL source itself, per call
                assert rec["swapped"][str(L)] == one(target, [SwapVisualKV(source=source, from_layer=L)])  # unified
            # swapping every layer's visual K/V reproduces the source run exactly
            assert rec["swapped"]["1"] == rec["source_own"]
    for task in small_probes:
        rows = res["tasks"][task]["layers"]
        assert [r["layer"] for r in rows] == VISION_LAYERS
        assert rows[0]["source_follow_rate"] == 1.0


def test_vision_sweep_resumes_without_recomputing(tiny_rl, small_probes, tmp_path):
    from frankeneval.localization.vision import run_vision_sweep, vision_units

    units, _ = vision_units(small_probes, VISION_LAYERS)
    total = len(units)
    broken = CountingGenerator(tiny_rl, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        run_vision_sweep(broken, small_probes, VISION_LAYERS, tmp_path, model_name="rl", max_new_tokens=MAX_NEW,
                         batch_size=3, progress=False)
    done_before = broken.rows
    assert done_before == 6
    again = CountingGenerator(tiny_rl)
    res = run_vision_sweep(again, small_probes, VISION_LAYERS, tmp_path, model_name="rl", max_new_tokens=MAX_NEW,
                           batch_size=3, progress=False)
    assert again.rows == total - done_before  # finished units are not generated again
    third = CountingGenerator(tiny_rl)
    res2 = run_vision_sweep(third, small_probes, VISION_LAYERS, tmp_path, model_name="rl", max_new_tokens=MAX_NEW,
                            batch_size=3, progress=False)
    assert third.calls == 0 and res2["tasks"] == res["tasks"]


REASONING_LAYERS = [1, 4, 6]


@pytest.mark.parametrize("rows,chunk", [(4, 1), (2, 2)])  # (2, 2): 4 units a call on 2 rows, refilled
def test_reasoning_sweep_batched_equals_single_runs_and_resumes(tiny_rl, shared_data, tmp_path, monkeypatch, rows,
                                                                 chunk):
    import frankeneval.localization.reasoning as reasoning_mod
    from frankeneval.engine.generation import GenRequest
    from frankeneval.engine.interventions import Ablate
    from frankeneval.evaluation.prompts import REASONER_SYSTEM_PROMPT
    from frankeneval.localization.reasoning import (
        load_questions,
        question_prompt,
        run_reasoning_sweep,
    )

    monkeypatch.setattr(reasoning_mod, "REFILL_CHUNK", chunk)
    questions = load_questions("gsm8k", data=shared_data / "gsm8k" / "test.jsonl", samples=2, seed=123)
    assert [q.index for q in questions] == sorted(q.index for q in questions)
    broken = CountingGenerator(tiny_rl, fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        run_reasoning_sweep(broken, "gsm8k", questions, REASONING_LAYERS, tmp_path, model_name="rl",
                            reasoning_prompt=True, max_new_tokens=MAX_NEW, batch_size=rows, progress=False)
    again = CountingGenerator(tiny_rl)
    res = run_reasoning_sweep(again, "gsm8k", questions, REASONING_LAYERS, tmp_path, model_name="rl",
                              reasoning_prompt=True, max_new_tokens=MAX_NEW, batch_size=rows, progress=False)
    assert again.batch_sizes == {rows}
    assert again.rows == len(questions) * (1 + len(REASONING_LAYERS)) - 4
    records = [json.loads(line) for line in (tmp_path / "units.jsonl").read_text().splitlines()[1:]]
    responses = {r["key"]: r["record"]["response"] for r in records}
    for q in questions:
        req = GenRequest(question_prompt(q.problem), [], REASONER_SYSTEM_PROMPT)
        for L in [None, *REASONING_LAYERS]:
            iv = [] if L is None else [Ablate((L,))]  # unified LLM layer
            single = tiny_rl.generate([req], max_new_tokens=MAX_NEW, interventions=[iv], batch_size=1)[0].text
            assert responses[f"gsm8k/{q.index}/" + ("none" if L is None else f"L{L}")] == single
    assert [r["layer"] for r in res["layers"]] == REASONING_LAYERS
    assert res["n_questions"] == 2


def test_reasoning_summary_scores_with_math_verify():
    from frankeneval.localization.reasoning import Question, summarize_reasoning

    qs = [Question(0, "p", "0.5"), Question(1, "p", "12")]
    records = {
        "math500/0/none": {"answer": "\\frac{1}{2}"},
        "math500/0/L1": {"answer": "1/3"},
        "math500/1/none": {"answer": "12"},
        "math500/1/L1": {"answer": None},
    }
    res = summarize_reasoning(records, "math500", qs, [1])
    assert res["unablated_accuracy"] == 1.0
    assert res["layers"][0]["accuracy"] == 0.0 and res["layers"][0]["delta"] == -1.0


def test_attention_summary_differences_and_regions():
    from frankeneval.localization.attention import summarize_attention

    prompts = [{"id": "p0"}, {"id": "p1"}]
    # 6 layers x 2 heads; base 0.1 everywhere, in +0.05 late, rl +0.1 middle/late
    def mass(extra):
        return [[0.1 + extra(j)] * 2 for j in range(6)]

    recs = {}
    for p in prompts:
        recs[f"base/{p['id']}"] = {"mass": mass(lambda j: 0.0)}
        recs[f"in/{p['id']}"] = {"mass": mass(lambda j: 0.05 if j >= 4 else 0.0)}
        recs[f"rl/{p['id']}"] = {"mass": mass(lambda j: 0.05 if j >= 4 else 0.0) if p["id"] == "p0"
                                 else mass(lambda j: (0.05 if j >= 4 else 0.0) + (0.2 if j >= 2 else 0.0))}
    res = summarize_attention(recs, ["base", "in", "rl"], prompts)
    assert res["layers"] == [1, 2, 3, 4, 5, 6]
    assert res["in_minus_base"] == pytest.approx([0, 0, 0, 0, 0.05, 0.05])
    assert res["rl_minus_in"] == pytest.approx([0, 0, 0.1, 0.1, 0.1, 0.1])
    assert res["regions"]["early"]["layers"] == [1, 2] and res["regions"]["late"]["layers"] == [5, 6]
    assert res["regions"]["middle"]["rl_minus_in"] == pytest.approx(0.1)
    assert res["mid_late"]["rl_minus_in"] == pytest.approx(0.1)
    assert res["mid_late"]["in_minus_base"] == pytest.approx(0.025)


def test_attention_shift_end_to_end(tiny_lineage, small_probes, tmp_path):
    from frankeneval.engine.generation import Generator
    from frankeneval.localization.attention import attention_prompts, run_attention_shift

    prompts = attention_prompts({"counting": small_probes["counting"][:1]})
    members = {"base": str(tiny_lineage.base), "in": str(tiny_lineage.in_), "rl": str(tiny_lineage.rl)}
    loads = []

    def load(path):
        loads.append(path)
        return Generator.load(path, dtype="float32", device="cpu")

    res = run_attention_shift(members, prompts, tmp_path, load=load, max_new_tokens=3, progress=False)
    assert len(res["visual_share"]["rl"]) == 6 and len(res["visual_share_heads"]["rl"][0]) >= 1
    assert all(0.0 <= v <= 1.0 for m in res["visual_share"].values() for v in m)
    # auto: the member dirs' own names base / in / rl -> reasoner (unknown names and 'rl' alike), recorded with why
    assert ({m: p["name"] for m, p in res["system_prompt"].items()}
            == {"base": "reasoner", "in": "reasoner", "rl": "reasoner"})
    assert res["system_prompt"]["rl"]["reason"] == "auto: name 'rl' contains 'rl'"
    run_attention_shift(members, prompts, tmp_path, load=load, max_new_tokens=3, progress=False)
    assert len(loads) == 3  # rerun: every unit finished, no model loaded
