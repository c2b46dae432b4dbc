"""Rule scoring on hand-written cases: extraction, math equivalence, MathVista, probes."""

from __future__ import annotations

import pytest
from frankeneval.tasks.mathvista import scoring as MV

from frankeneval.evaluation import scoring as S


@pytest.mark.parametrize(
    "text, expected, method",
    [
        ("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}", "boxed"),
        ("first \\boxed{1} then \\boxed{\\frac{a}{b^{2}}}", "\\frac{a}{b^{2}}", "boxed"),
        ("<think>x \\boxed{3}</think><answer>\\boxed{\\sqrt{2}}</answer>", "\\sqrt{2}", "answer_tag"),
        ("<answer> 42 </answer> and later \\boxed{7}", "42", "answer_tag"),
        ("reasoning...\n#### 1,234", "1,234", "hashes"),
        ("the total is 12 apples, then 15", None, "none"),  # no stated answer: no last-number credit (issue 30)
        ("so 3 + 4 = 7, and then 7 * 2 = 1", None, "none"),  # cut off at the token limit mid-calculation
        (" 42. ", "42", "whole"),  # the response is the number itself: a stated answer
        ("no answer here", None, "none"),
    ],
)
def test_extract_final_answer(text, expected, method):
    assert S.extract_final_answer(text, allow_hashes=True) == (expected, method)


def test_last_boxed_nested_and_unbalanced():
    assert S.last_boxed("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}") == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert S.last_boxed("\\boxed{1} \\boxed{2") == "1"  # the unbalanced last one is skipped
    assert S.last_boxed("\\boxed 5$") == "5"
    assert S.last_boxed("nothing") is None


def test_gsm8k_target():
    assert S.extract_gsm8k_target("Janet sells 9 eggs.\n#### 1,234") == "1234"


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("\\frac{1}{2}", "0.5"),
        ("0.5", "\\frac{1}{2}"),
        ("1,234", "1234"),
        ("\\$18", "18"),
        ("x + 1", "1+X"),  # whitespace-free lower-case string match
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("2.0000000001", "2"),
        ("\\dfrac{3}{4}", "0.75"),
    ],
)
def test_math_equal_true(pred, gold):
    assert S.math_equal(pred, gold)


@pytest.mark.parametrize("pred, gold", [("0.51", "0.5"), ("3", "4"), (None, "1"), ("", "1"), ("\\frac{1}{3}", "0.5")])
def test_math_equal_false(pred, gold):
    assert not S.math_equal(pred, gold)


def test_seed_compatible_relative_tolerance():
    assert not S.math_equal("100.5", "100")
    assert S.math_equal("100.5", "100", rel_tol=0.01)
    assert not S.math_equal("102", "100", rel_tol=0.01)


MC = {"question_type": "multi_choice", "answer_type": "text", "choices": ["135°", "140°", "145°", "150°"],
      "answer": "145°", "unit": "", "precision": 0}


@pytest.mark.parametrize(
    "response, ok",
    [
        ("\\boxed{C}", True),
        ("<answer>(C)</answer>", True),
        ("The answer is C", True),
        ("\\boxed{145°}", True),
        ("so the answer is 145°.", True),
        ("so the angle is 145°.", False),  # no final-answer statement: not credited by rules
        ("\\boxed{B}", False),
        ("\\boxed{140°}", False),
        ("\\boxed{E}", False),
    ],
)
def test_mathvista_multiple_choice(response, ok):
    assert MV.mathvista_correct(response, MC)[0] is ok


def test_mathvista_multiple_choice_whole_option_text_only():
    doc = dict(MC, choices=["40°", "140°"], answer="140°")
    assert MV.mathvista_correct("The answer is 140°", doc)[0]
    assert not MV.mathvista_correct("The answer is 40°", doc)[0]
    assert not MV.mathvista_correct("it is 140°", doc)[0]  # option text inside a sentence selects nothing


def test_mathvista_free_form_precision_unit_and_types():
    flt = {"question_type": "free_form", "answer_type": "float", "precision": 1.0, "answer": "1.2", "unit": None}
    assert MV.mathvista_correct("\\boxed{1.23}", flt) == (True, "1.2")
    assert not MV.mathvista_correct("\\boxed{1.26}", flt)[0]
    integer = {"question_type": "free_form", "answer_type": "integer", "precision": None, "answer": "11",
               "unit": "years"}
    assert MV.mathvista_correct("\\boxed{11 years}", integer)[0]
    assert MV.mathvista_correct("The answer is 11 years.", integer)[0]
    assert not MV.mathvista_correct("He is 11 years old", integer)[0]  # free form needs a stated final answer
    assert not MV.mathvista_correct("\\boxed{12}", integer)[0]
    two = {"question_type": "free_form", "answer_type": "float", "precision": 2, "answer": "0.57", "unit": ""}
    assert MV.mathvista_correct("\\boxed{0.5714}", two)[0]
    lst = {"question_type": "free_form", "answer_type": "list", "precision": None, "answer": "[2014, 2016]"}
    assert MV.mathvista_correct("\\boxed{[2014, 2016]}", lst)[0]
    assert not MV.mathvista_correct("\\boxed{[2014]}", lst)[0]


def test_box_iou_and_grounding():
    assert S.box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == pytest.approx(1.0)
    assert S.box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert S.box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    target = [100, 100, 200, 200]
    assert S.grounding_correct("(100, 100), (200, 190)", target)  # IoU 0.9
    assert S.grounding_correct("[200, 200, 110, 110]", target)  # corners reordered, IoU 0.81
    assert not S.grounding_correct("150,150,250,250", target)  # IoU 1/7
    assert not S.grounding_correct("no box", target)


def test_yes_no_count_ocr_probe_dispatch():
    assert S.yes_no_correct("Yes, there is.", "Yes")
    assert not S.yes_no_correct("No.", "Yes")
    assert S.counting_correct("There are 7 items.", "7")
    assert S.counting_correct("three", "3")
    assert not S.counting_correct("8", "7")
    assert S.ocr_correct('"Backpropagation".', "backpropagation")
    assert not S.ocr_correct("backprop", "backpropagation")
    meta = {"target_bbox_xyxy": [0, 0, 10, 10], "source_bbox_xyxy": [20, 20, 30, 30], "iou_threshold": 0.5}
    assert S.probe_correct("grounding", "20,20,30,30", meta, "source")
    assert not S.probe_correct("grounding", "20,20,30,30", meta, "target")
