"""``grading: seed`` (issue 30 items 6-8): the reference's judge texts byte for byte, its extraction as the judge's
input for every task, its reading of the verdict, and its rule check with the judge off. Hand-computed cases."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from frankeneval.evaluation.grading import Judge, JudgeConfig
from frankeneval.evaluation.scoring import reference_final_answer, reference_mcq_letter, reference_rule_correct

# --------------------------------------------------------------------------- the judge's texts, byte for byte

EXPECTED_SYSTEM = (
    "You are a strict but fair math grader. Compare the model's answer to the ground truth.\n"
    "\n"
    "Consider correct if:\n"
    "- Numerically equivalent (e.g., 0.5 = 1/2 = 50%)\n"
    "- Same meaning with different formatting (e.g., \"2x+3\" vs \"3+2x\")\n"
    "- For multiple choice: letter matches or full option text matches\n"
    "- Minor differences in units or notation that don't change the answer\n"
    "\n"
    "Consider incorrect if:\n"
    "- Different numerical values\n"
    "- Wrong multiple choice option\n"
    "- Missing or extra significant information"
)


def _expected_user(question: str, choices: str, ground_truth: str, model_answer: str) -> str:
    return ("Question: " + question + "\n\nChoices: " + choices + "\n\nGround Truth Answer: " + ground_truth
            + "\n\nModel's Answer: " + model_answer + "\n\nIs the model's answer correct? Respond with JSON:\n"
            + '{"is_correct": true/false, "extracted_answer": "...", "reason": "brief explanation"}')


class FakeClient:
    """An OpenAI client stand-in: records each ``chat.completions.create`` body, answers with ``replies``."""

    def __init__(self, *replies):
        self.replies, self.bodies = list(replies), []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    def create(self, **body):
        self.bodies.append(body)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=reply))])


def _judge(tmp_path, client) -> Judge:
    return Judge(JudgeConfig(model="gpt-4o-mini", cache_dir=tmp_path, max_retries=0), client=client)


def test_seed_request_is_the_references_texts_byte_for_byte(tmp_path):
    client = FakeClient('{"is_correct": true, "extracted_answer": "B", "reason": "ok"}',
                        '{"is_correct": false, "extracted_answer": "5", "reason": "no"}')
    judge = _judge(tmp_path, client)
    question = "Is it?\n\nChoices:\nA. Yes\nB. No"
    assert judge.judge_seed(question, ["Yes", "No"], "No", "B").is_correct is True
    assert client.bodies[0] == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": EXPECTED_SYSTEM},
                     {"role": "user", "content": _expected_user(question, '["Yes", "No"]', "No", "B")}],
        "max_completion_tokens": 1000,
    }  # no temperature, no max_tokens
    # free form: Choices is "N/A (free-form)"; a "{choices}" inside the question is left as it is
    assert judge.judge_seed("What is {choices}?", None, "3", "5").is_correct is False
    assert client.bodies[1]["messages"][1]["content"] == _expected_user("What is {choices}?", "N/A (free-form)",
                                                                        "3", "5")
    # a cached verdict: no second request
    assert judge.judge_seed(question, ["Yes", "No"], "No", "B").cached and len(client.bodies) == 2


@pytest.mark.parametrize("reply, verdict", [
    ('```json\n{"is_correct": false, "extracted_answer": "4", "reason": "x"}\n```', False),  # fence unwrapped
    ('```\n{"is_correct": true}\n```', True),
    ('{"is_correct": "false", "reason": "a string"}', True),  # bool("false") is True, as the reference reads it
    ('{"is_correct": null}', False),
    ('{"reason": "no verdict"}', False),
    ("The model's answer is TRUE: it matches.", True),  # unparsable: "true" in the first 100 characters
    ("x" * 97 + "true", False),  # "true" starts at character 98, ends past 100
    ("x" * 96 + "true", True),
    ("It is false.", False),
])
def test_seed_verdict_reading(tmp_path, reply, verdict):
    j = _judge(tmp_path, FakeClient(reply)).judge_seed("q", None, "1", "1")
    assert j.is_correct is verdict and not j.judge_error


def test_failed_call_is_wrong_in_seed_grading_and_an_error_by_default(tmp_path):
    seed = _judge(tmp_path, FakeClient(ValueError("refused"))).judge_seed("q", None, "1", "1")
    assert seed.is_correct is False and seed.judge_error
    paper = _judge(tmp_path, FakeClient(ValueError("refused"))).judge("q", None, "1", "1")
    assert paper.is_correct is None and paper.judge_error


# --------------------------------------------------------------------------- the reference's extraction


@pytest.mark.parametrize("response, choices, expected", [
    ("<answer>3.5</answer>", None, "5"),  # the quirk: "3" "." then group 2
    ("<answer>b</answer>", None, "B"),  # a lone letter, upper-cased
    ("<answer>B) cat</answer>", ["cat", "dog"], "cat"),
    ("<answer> 12 </answer> then <answer>13</answer>", None, "12"),  # the first closed tag
    ("<answer>7 \\boxed{8}", None, "8"),  # an unclosed tag is no tag: the last box
    ("I pick (C), so \\boxed{3}", ["a", "b", "c"], "C"),  # multiple choice: the MCQ letter before the box
    ("I pick (C), so \\boxed{3}", None, "3"),  # free form: no MCQ step
    ("\\boxed{1} and \\boxed{\\frac{1}{2}}", None, "\\frac{1}{2}"),  # the last box, nested braces
    ("The answer is 4.5 meters.", None, "4"),  # the pattern stops at the first "."
    ("Therefore, x = 7", None, "x = 7"),
    ("we get 3 and then 10.25 km", None, "10.25"),  # the last number
    ("abc " * 20, None, ("abc " * 20).strip()[-50:]),  # the last 50 characters
])
def test_reference_extraction_order(response, choices, expected):
    assert reference_final_answer(response, choices) == expected


def test_mcq_letter():
    assert reference_mcq_letter("(b)") == "B" and reference_mcq_letter("C.") == "C"
    assert reference_mcq_letter("The answer is B") == "B" and reference_mcq_letter("first (A), then (D)") == "D"
    assert reference_mcq_letter("the answer is a triangle") is None and reference_mcq_letter("A cat") is None


class _SeedJudge:
    def __init__(self):
        self.asked = []

    def judge_seed(self, question, choices, target, answer):
        from frankeneval.evaluation.grading import Judgment

        self.asked.append((question, choices, target, answer))
        return Judgment(True, answer)


@pytest.mark.parametrize("task", ["gsm8k", "math500"])
def test_seed_judge_sees_the_reference_extraction_for_math(monkeypatch, task):
    from frankeneval.tasks import common
    from frankeneval.tasks.common import TaskSettings, math_results

    fake = _SeedJudge()
    monkeypatch.setattr(common, "get_judge", lambda settings: fake)
    out = math_results({"id": "1", "target": "5"}, ["<answer>3.5</answer>"], TaskSettings(judge=True, grading="seed"),
                       "Q?", gsm8k=task == "gsm8k")
    assert fake.asked == [("Q?", None, "5", "5")]
    assert out["judge_acc"]["score"] == 1 and out["judge_acc"]["judge_input"] == "5"


def test_seed_judge_sees_the_reference_extraction_and_question_for_mathvista(monkeypatch):
    from frankeneval.tasks import common
    from frankeneval.tasks.common import TaskSettings
    from frankeneval.tasks.mathvista.utils import mathvista_process_results

    fake = _SeedJudge()
    monkeypatch.setattr(common, "get_judge", lambda settings: fake)
    doc = {"id": "7", "question": "Is it?", "choices": ["Yes", "No"], "target": "No", "answer": "No",
           "question_type": "multi_choice", "answer_type": "text", "unit": "", "precision": 0}
    mathvista_process_results(doc, ["Looking closely, the answer is B. \\boxed{No}"],
                              TaskSettings(judge=True, grading="seed"))
    assert fake.asked == [("Is it?\n\nChoices:\nA. Yes\nB. No", ["Yes", "No"], "No", "B")]


# --------------------------------------------------------------------------- the reference's rule check


@pytest.mark.parametrize("extracted, gold, choices, response, ok", [
    ("x", "B", None, "The answer is (B)", True),  # one-letter gold: the letter of the full response
    ("C", "B", None, "The answer is (B)", False),  # ... the extraction's letter first
    ("B", "No", ["Yes", "No"], "", True),  # a letter maps to its choice text
    ("A", "No", ["Yes", "No"], "", False),
    ("Hello World", "helloworld", None, "", True),  # whitespace-free lower-case equality
    ("helloworl", "helloworld", None, "", True),  # containment, 9 >= 0.9 * 10
    ("hello", "helloworld", None, "", False),  # containment, 5 < 9
    ("100.5", "100", None, "", True),  # 1 % relative
    ("102", "100", None, "", False),
    ("1,000", "1000", None, "", True),
    ("50%", "50", None, "", True),
    ("\\frac{1}{2}", "0.5", None, "", True),  # math-verify
    ("", "3", None, "", False),
])
def test_reference_rule_check(extracted, gold, choices, response, ok):
    assert reference_rule_correct(extracted, gold, choices=choices, response=response) is ok


def test_seed_rules_with_the_judge_off():
    from frankeneval.tasks.common import TaskSettings, math_results
    from frankeneval.tasks.mathvista.utils import mathvista_process_results

    seed, paper = TaskSettings(grading="seed"), TaskSettings()
    doc = {"id": "q", "target": "18"}
    response = ["we get 18.1 in the end"]  # the last number, within 1 %
    assert math_results(doc, response, seed, "Q", gsm8k=True)["rule_acc"]["score"] == 1
    assert math_results(doc, response, paper, "Q", gsm8k=True)["rule_acc"]["score"] == 0  # no stated answer
    mv = {"id": "7", "question": "Is it?", "choices": ["Yes", "No"], "target": "No", "answer": "No",
          "question_type": "multi_choice", "answer_type": "text", "unit": "", "precision": 0}
    out = mathvista_process_results(mv, ["<answer>B</answer>"], seed)
    assert out["rule_acc"]["score"] == 1 and out["rule_acc"]["extracted"] == "B" and "judge_acc" not in out


# --------------------------------------------------------------------------- descriptions (issue 30 item 2)

EXPECTED_DESCRIBE_SYSTEM = (
    "You are a precise visual analyzer for mathematical and scientific images.\n"
    "Your task is to describe EXACTLY what you see - do NOT solve any problems or make inferences.\n"
    "\n"
    "Focus on:\n"
    "1. All text, numbers, labels, and symbols visible in the image\n"
    "2. Geometric shapes, graphs, diagrams, or charts with their properties\n"
    "3. Spatial relationships between elements\n"
    "4. Colors and visual distinctions that may be meaningful\n"
    "5. Any tables, axes labels, or data points\n"
    "\n"
    "Be thorough but factual. Include ALL numbers and text you can read."
)
EXPECTED_DESCRIBE_USER = (
    "Describe this image in detail for someone who cannot see it.\n"
    "Output a structured description covering:\n"
    "- Overview: What type of image is this (graph, diagram, geometry problem, etc.)\n"
    "- Text Content: All readable text, numbers, labels, equations\n"
    "- Visual Elements: Shapes, lines, colors, symbols\n"
    "- Spatial Layout: How elements are arranged\n"
    "- Key Details: Any numbers, measurements, or specific values shown\n"
    "\n"
    "Be precise and complete. Do not solve or interpret - just describe what you see."
)


def test_description_request_is_the_references_byte_for_byte(tmp_path):
    from PIL import Image

    from frankeneval.evaluation.grading import _image_data_url

    client = FakeClient("  A bar chart with three bars.  ")
    judge = _judge(tmp_path, client)
    img = Image.new("RGB", (16, 8), (0, 128, 0))
    assert judge.describe_image(img) == "A bar chart with three bars."
    assert client.bodies == [{
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": EXPECTED_DESCRIBE_SYSTEM},
                     {"role": "user", "content": [{"type": "image_url", "image_url": {"url": _image_data_url(img)}},
                                                  {"type": "text", "text": EXPECTED_DESCRIBE_USER}]}],
        "max_completion_tokens": 2000,
    }]  # the image first, then the text; no temperature
    assert judge.describe_image(img) == "A bar chart with three bars." and len(client.bodies) == 1  # cached


def _rows(n: int) -> list[dict]:
    from PIL import Image

    return [{"pid": str(i), "question": f"Q{i}?", "choices": None, "unit": "", "precision": None, "answer": str(i),
             "question_type": "free_form", "answer_type": "integer",
             "metadata": {"category": "math-targeted-vqa", "img_width": 10, "img_height": 10},
             "decoded_image": Image.new("RGB", (10, 10), (i * 40, 0, 0)), "caption_bard": f"caption {i}" if i else "",
             "image_path": ""} for i in range(n)]


class _Describer:
    """A fake judge: describes every image but the one whose red value is ``fail_red``."""

    def __init__(self, fail_red):
        self.fail_red, self.calls = fail_red, 0

    def describe_image(self, image):
        from frankeneval.evaluation.grading import JudgeUnavailable

        self.calls += 1
        if image.getpixel((0, 0))[0] == self.fail_red:
            raise JudgeUnavailable("HTTP 500")
        return f"a square of red {image.getpixel((0, 0))[0]}"


def _blackdesc_docs(monkeypatch, settings, judge=None):
    from frankeneval.tasks import common
    from frankeneval.tasks.mathvista import utils

    monkeypatch.setattr(utils, "load_benchmark_rows", lambda name, path: _rows(3))
    if judge is not None:
        monkeypatch.setattr(common, "get_judge", lambda s: judge)
    docs = utils.build_docs({"benchmark": "mathvista", "control": "blackdesc"}, settings)
    return common.check_docs("franken_alignment_blackdesc", docs, settings)


def test_judge_descriptions_never_fall_back_to_the_caption(monkeypatch):
    from frankeneval.tasks.common import TaskSettings

    judge = _Describer(fail_red=40)  # item 1 (which has a Bard caption) fails
    good, skipped = _blackdesc_docs(monkeypatch, TaskSettings(sample_size=0, description_source="judge"), judge)
    assert [(d["id"], d["description_source"], d["description"]) for d in good] == [
        ("0", "judge", "a square of red 0"), ("2", "judge", "a square of red 80")]
    assert [(s["task"], s["id"], s["path"]) for s in skipped] == [("franken_alignment_blackdesc", "1", "description")]
    assert "the judge failed" in skipped[0]["reason"] and "caption" not in good[0]["description"]


def test_caption_bard_is_a_named_source_and_an_item_without_one_is_left_out(monkeypatch):
    from frankeneval.tasks.common import TaskSettings
    from frankeneval.tasks.mathvista.utils import mathvista_process_results

    settings = TaskSettings(sample_size=0, description_source="caption_bard")
    good, skipped = _blackdesc_docs(monkeypatch, settings, _Describer(fail_red=-1))
    assert [(d["id"], d["description_source"], d["description"]) for d in good] == [
        ("1", "caption_bard", "caption 1"), ("2", "caption_bard", "caption 2")]
    assert [(s["id"], s["path"]) for s in skipped] == [("0", "description")]
    # the source is recorded per item in the samples
    out = mathvista_process_results(good[0], ["\\boxed{1}"], settings)
    assert out["rule_acc"]["description_source"] == "caption_bard"


def test_report_counts_the_items_left_out_for_want_of_a_description():
    from types import SimpleNamespace as NS

    from frankeneval.reports.leaderboard.text import description_note, skipped_note

    board = NS(skipped=[{"task": "t", "id": "1", "path": "description", "reason": "no description: x"},
                        {"task": "t", "id": "2", "path": "a.jpg", "reason": "truncated"}])
    assert description_note(board).startswith("Left out of black + description, no description (1;")
    note = skipped_note(board)
    assert "Skipped broken inputs (1;" in note and "no description (1;" in note


def test_transfer_flags_reach_every_cell_and_the_manifest(tmp_path, tiny_lineage):
    import argparse

    from test_transfer import write_fake_lmms_output

    from frankeneval.commands import transfer as command
    from frankeneval.transferability.manifest import read_manifest
    from frankeneval.transferability.transfer import run_cells

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--recipe", "tiny", "--out", "o", "--judge", "--description-source", "caption_bard"])
    assert args.judge is True and args.description_source == "caption_bard"
    assert parser.parse_args(["--recipe", "tiny", "--out", "o"]).judge is None
    assert parser.parse_args(["--recipe", "tiny", "--out", "o", "--no-judge"]).judge is False
    seen = []

    def runner(job):
        seen.append((job.env.get("FRANKENEVAL_JUDGE"), job.env.get("FRANKENEVAL_DESCRIPTION_SOURCE")))
        write_fake_lmms_output(job)

    models = {"in": {"path": str(tiny_lineage.in_), "kind": "in"}}
    run_cells(tmp_path / "r", models, tasks=["franken_math500"], sample_size=6, data_dir=tmp_path,
              progress=lambda s: None, runner=runner, judge=False, description_source="caption_bard")
    assert seen == [("0", "caption_bard")]
    settings = read_manifest(tmp_path / "r")["settings"]
    assert settings["judge"] is False and settings["description_source"] == "caption_bard"


def test_preflight_lists_the_items_left_out_for_want_of_a_description(monkeypatch, tmp_path):
    from frankeneval.tasks.common import check_task_inputs
    from frankeneval.tasks.mathvista import utils

    monkeypatch.setattr(utils, "load_benchmark_rows", lambda name, path: _rows(3))
    environ = {"FRANKENEVAL_DATA": str(tmp_path), "FRANKENEVAL_SAMPLE_SIZE": "0",
               "FRANKENEVAL_DESCRIPTION_SOURCE": "caption_bard"}
    skipped = check_task_inputs(["franken_mathvista_alignment_blackdesc"], environ)
    assert [(s["task"], s["id"], s["path"]) for s in skipped] == [
        ("franken_mathvista_alignment_blackdesc", "0", "description")]
