"""MathVista scoring that never credits a wrong answer (issue 18, deliverable 5): hand-written responses only.

Every false-credit form the issue found on real responses is here (each passed as correct before the fix), next to
the stated forms that must still be credited; MathVista's own normalization; the judge settings (seed grading,
judge errors beside an accuracy over all items)."""

from __future__ import annotations

import math

import pytest
from frankeneval.tasks.mathvista import scoring as S

YES_NO = {"question_type": "multi_choice", "answer_type": "text", "choices": ["Yes", "No"], "answer": "No",
          "unit": "", "precision": 0}
COLORS = {"question_type": "multi_choice", "answer_type": "text", "choices": ["Yes", "No"], "answer": "No",
          "question": "Is Olive Drab greater than Dark Orchid?"}
ANGLES = {"question_type": "multi_choice", "answer_type": "text", "choices": ["135°", "140°", "145°", "150°"],
          "answer": "145°"}
WORDS = {"question_type": "multi_choice", "answer_type": "text", "choices": ["cat", "dog", "tree"], "answer": "cat"}
INTEGER = {"question_type": "free_form", "answer_type": "integer", "answer": "4", "unit": "", "precision": None}
FLOAT = {"question_type": "free_form", "answer_type": "float", "answer": "1.2", "unit": "", "precision": 1}


@pytest.mark.parametrize(
    "doc, response",
    [
        (YES_NO, "The image does not provide enough information to answer the question."),  # "does **no**t"
        (YES_NO, "I cannot see the image clearly; please let me know more about it."),  # "k**no**w"
        (COLORS, "Olive Drab is clearly greater than olive drab's neighbour."),  # "tha**n o**live"
        (YES_NO, "There are no tiny gray bicycles here, so I cannot tell."),  # "no" in a sentence, no answer stated
        (YES_NO, "Nothing in the figure answers this."),  # option text at the start of another word
        (WORDS, "The category of this concatenated picture is unclear."),  # "cat" inside "category", "concatenated"
        (WORDS, "A dog is next to a cat and a tree."),  # several options named, none stated as the answer
        (ANGLES, "Angle BOC equals 145° minus the other two, which we compute next"),  # no final-answer statement
        (ANGLES, "Step 1: angle A = 110°.\nStep 2: so BOC = 180° - 35°\n145°"),  # truncated: last line is no answer
        (INTEGER, "Let me count: 1, 2, 3, 4"),  # free form: the last number is not an answer
        (FLOAT, "The length is about 1.2 and then we still need to add the"),  # cut off mid-sentence
    ],
)
def test_false_credit_forms_are_not_credited(doc, response):
    assert S.mathvista_correct(response, doc)[0] is False


def test_truncated_response_not_credited_from_an_answer_phrase():
    """A response that hit the token limit counts only from a tag or a box, never from a fallback."""
    r = "Maybe the answer is No, but let me re-check the bars one by one: first"
    assert S.mathvista_correct(r, YES_NO)[0] is True  # a complete response stating it is credited ...
    assert S.mathvista_correct(r, YES_NO, truncated=True)[0] is False  # ... one that ran out of tokens is not
    assert S.mathvista_correct("... so \\boxed{B}", YES_NO, truncated=True)[0] is True


@pytest.mark.parametrize(
    "doc, response",
    [
        (YES_NO, "\\boxed{B}"),
        (YES_NO, "\\boxed{No}"),
        (YES_NO, "<answer>No</answer>"),
        (YES_NO, "<answer>(B)</answer>"),
        (YES_NO, "The correct answer is (B) No. There are no tiny gray bicycles."),
        (YES_NO, "Answer: B"),
        (YES_NO, "**Answer:** No"),
        (YES_NO, "Final answer: B."),
        (YES_NO, "The answer is No, because the bar is shorter."),
        (YES_NO, "No"),
        (YES_NO, "B"),
        (YES_NO, "(B)"),
        (YES_NO, "B. No"),
        (ANGLES, "\\boxed{C}"),
        (ANGLES, "\\boxed{145^\\circ}"),
        (ANGLES, "\\boxed{145}"),
        (ANGLES, "Thus, the answer is C (145°)."),
        (ANGLES, "The answer is option C."),
        (WORDS, "The answer is \"cat\"."),
        (INTEGER, "\\boxed{4}"),
        (INTEGER, "So the answer is 4."),
        (INTEGER, "4"),
        (FLOAT, "The final answer is 1.23"),
    ],
)
def test_stated_answers_are_credited(doc, response):
    assert S.mathvista_correct(response, doc)[0] is True


def test_a_non_integer_is_never_truncated_to_an_integer_answer():
    """Recorded idefics pid 917: "1.5" for the integer answer 1 was credited by truncation; official: wrong."""
    one = {**INTEGER, "answer": "1"}
    assert S.mathvista_correct("1.5", one) == (False, "1.5")
    assert S.mathvista_correct("\\boxed{1.0}", one)[0] is True  # a whole number written as a float still counts


def test_stated_wrong_option_is_wrong():
    assert S.mathvista_correct("\\boxed{A}", YES_NO)[0] is False
    assert S.mathvista_correct("The answer is Yes.", YES_NO)[0] is False
    assert S.mathvista_correct("The answer is (A) 135°", ANGLES) == (False, "135°")


def test_mathvista_official_normalization():
    """MathVista's own normalize-then-compare: (x) letter, letter, nearest option by edit distance; numbers."""
    assert S.mathvista_official_correct("(B) 140°", ANGLES) == (False, "140°")
    assert S.mathvista_official_correct("C", ANGLES) == (True, "145°")
    assert S.mathvista_official_correct("145 degrees", ANGLES)[1] == "145°"  # nearest option
    assert S.mathvista_official_correct("N/A", YES_NO)[1] in ("Yes", "No")  # always some option, as theirs
    assert S.mathvista_official_correct("4.0", INTEGER) == (True, "4")
    assert S.mathvista_official_correct("four", INTEGER) == (False, None)
    assert S.mathvista_official_correct("1.23", FLOAT) == (True, "1.2")
    assert S.levenshtein("kitten", "sitting") == 3
    assert S.mathvista_quick_extract("No", YES_NO) == "No"
    assert S.mathvista_quick_extract('The answer is "cat".', WORDS) == "cat"
    assert S.mathvista_quick_extract("It is a cat.", WORDS) is None  # the LLM step is needed
    prompt = S.mathvista_extraction_prompt(dict(ANGLES, question="Find BOC"), "so C")
    assert prompt.endswith("so C\n\nExtracted answer: ") and "(C) 145°" in prompt


# --------------------------------------------------------------------------- judge settings


def test_judge_accuracy_never_reads_100_when_the_judge_is_down():
    from frankeneval.tasks.common import judge_accuracy

    rule_right = {"id": "a", "score": 1, "judged_by": "rule"}
    errors = [{"id": str(i), "judge_error": True, "reason": "judge unavailable"} for i in range(3)]
    # with a judge error the accuracy is undefined (NaN, "–" beside the error count): not 1.0 over the rule-credited
    # items (the old reading when the judge is down), not 0.25 (errors counted as wrong)
    assert math.isnan(judge_accuracy([rule_right] + errors))
    assert math.isnan(judge_accuracy([rule_right, {"id": "b"}]))
    assert judge_accuracy([rule_right, {"id": "b", "score": 0}]) == 0.5


def test_settings_grading_and_extraction():
    from frankeneval.tasks.common import TaskSettings

    from frankeneval.errors import FrankenevalError

    assert TaskSettings.resolve({}, environ={}).grading == "paper"
    assert TaskSettings.resolve({}, environ={"FRANKENEVAL_GRADING": "seed"}).grading == "seed"
    assert TaskSettings.resolve({"grading": "seed"}, environ={}).grading == "seed"
    assert TaskSettings.resolve({}, environ={"FRANKENEVAL_EXTRACTION": "mathvista"}).extraction == "mathvista"
    with pytest.raises(FrankenevalError):
        TaskSettings.resolve({"grading": "strict"}, environ={})


class _FakeJudge:
    def __init__(self, verdict):
        self.verdict, self.asked = verdict, []

    def judge(self, question, choices, target, answer):
        from frankeneval.evaluation.grading import Judgment

        self.asked.append(answer)
        return Judgment(self.verdict, answer)

    judge_seed = judge


def test_paper_grading_rules_first_seed_grading_judge_decides_everything(monkeypatch):
    from frankeneval.tasks import common
    from frankeneval.tasks.common import TaskSettings
    from frankeneval.tasks.mathvista.utils import mathvista_process_results

    doc = dict(YES_NO, id="1", target="No", question="Is it?")
    fake = _FakeJudge(False)
    monkeypatch.setattr(common, "get_judge", lambda settings: fake)
    paper = mathvista_process_results(doc, ["\\boxed{B}"], TaskSettings(judge=True))
    assert paper["judge_acc"]["score"] == 1 and fake.asked == []  # rules first: no call
    seed = mathvista_process_results(doc, ["blah \\boxed{B}"], TaskSettings(judge=True, grading="seed"))
    assert seed["judge_acc"]["score"] == 0 and fake.asked == ["B"]  # the judge decides, from the extracted answer


def test_seed_rule_on_the_judge_client(monkeypatch, tmp_path):
    """grading seed: an unparsable reply is read by "true" near its start; a failed call is wrong (and counted)."""
    from frankeneval.evaluation.grading import Judge, JudgeConfig, JudgeUnavailable

    judge = Judge(JudgeConfig(model="m", cache_dir=tmp_path, max_retries=0))
    replies = iter(["True, the answer matches.", "It is false.", None])

    def call(request, *, retries):
        r = next(replies)
        if r is None:
            raise JudgeUnavailable("down")
        return r

    monkeypatch.setattr(judge, "_call", call)
    assert judge.judge_seed("q", None, "1", "1").is_correct is True
    assert judge.judge_seed("q", None, "1", "2").is_correct is False
    down = judge.judge_seed("q", None, "1", "3")
    assert down.is_correct is False and down.judge_error


def test_mathvista_protocol_quick_rules_then_llm(monkeypatch):
    from frankeneval.tasks import common
    from frankeneval.tasks.common import TaskSettings
    from frankeneval.tasks.mathvista.utils import mathvista_process_results

    class Extractor:
        def extract_mathvista(self, prompt):
            return "B"

    monkeypatch.setattr(common, "get_judge", lambda settings: Extractor())
    doc = dict(YES_NO, id="1", target="No", question="Is it?")
    s = TaskSettings(extraction="mathvista")
    assert mathvista_process_results(doc, ["No"], s)["mathvista_acc"]["extracted_by"] == "quick"
    out = mathvista_process_results(doc, ["I would say the second one."], s)
    assert out["mathvista_acc"] == {"id": "1", "score": 1, "extraction": "B", "prediction": "No", "extracted_by": "llm"}
    assert out["rule_acc"]["score"] == 0  # the rules never guess


# --------------------------------------------------------------------------- the task's rule verdict
# Forms measured on recorded MathVista responses against the official verdicts (bench/mathvista_agreement.py,
# BENCHMARKS.md); hand-written responses. Each credit below was missed before (or, for the letter conflicts, wrongly
# given), and each false-credit form stays uncredited.

RATIO = dict(INTEGER, question="How many apples are on the table?")


def _rule(response, doc, **kw):
    from frankeneval.tasks.mathvista.scoring import mathvista_rule_verdict

    return mathvista_rule_verdict(response, doc, **kw)


def _rule_acc(response, doc):
    from frankeneval.tasks.common import TaskSettings
    from frankeneval.tasks.mathvista.utils import mathvista_process_results

    doc = dict(doc, id="1", target=doc["answer"], question=doc.get("question", "Q?"))
    return mathvista_process_results(doc, [response], TaskSettings())["rule_acc"]


@pytest.mark.parametrize(
    "doc, response",
    [
        (ANGLES, "Therefore, the correct answer is (C) 150°."),  # letter C, but 150° is D's text: contradicts itself
        (ANGLES, "The answer is (C) 135°."),  # letter C with A's text
        (ANGLES, "So the answer is (C) 160°."),  # letter C with a number that is no option's
        (WORDS, "The correct answer is (A) dog."),  # letter A with B's text
    ],
)
def test_letter_contradicting_its_text_is_not_credited(doc, response):
    """A letter next to another option's text or another number is no stated answer (the judge decides)."""
    out = _rule_acc(response, doc)
    assert out["score"] == 0 and out["verdict"] == "undecided" and "letter_conflict" in out["method"]


def test_letter_with_its_own_text_is_still_credited():
    for r in ("The answer is (C) 145°.", "The correct answer is (C) 145°, since BOC = 90° + 55°.", "(C) 145"):
        assert _rule_acc(r, ANGLES)["score"] == 1, r
    assert _rule_acc("The correct answer is (B) No. There are no such bikes.", YES_NO)["score"] == 1


@pytest.mark.parametrize(
    "doc, response, method",
    [
        (INTEGER, "Dividing 8 dots into 2 groups, so the answer to the blank is **4**.", "answer_to"),
        (ANGLES, "By the bisector theorem, angle BOC is (C) 145°.", "final_is_letter"),
        (ANGLES, "We get 145 degrees for BOC, which is option (C).", "final_is_letter"),
        (YES_NO, "No, the blue bar is shorter than the red one.\n\nThe red bar reaches 40.", "yes_no_lead"),
        (YES_NO, "**No**. The blue bar is shorter.\nIt reaches 20, the red one 40.", "yes_no_lead"),
        (RATIO, "There are 4 apples on the table.", "short_statement"),
        (RATIO, "I count them one by one. There are four apples on the table.", "short_statement"),
        (dict(FLOAT, question="What is the ratio of red to blue?"), "The ratio of red to blue is 1.2.",
         "short_statement"),
    ],
)
def test_further_stated_answers_are_credited(doc, response, method):
    out = _rule_acc(response, doc)
    assert out["score"] == 1 and out["verdict"] == "credit" and out["method"] == method


@pytest.mark.parametrize(
    "doc, response",
    [
        (ANGLES, "By the bisector theorem, angle BOC is not (C) 145°."),  # negated
        (ANGLES, "Option (C) is incorrect because BOC is larger."),  # an option discussed, not stated
        (YES_NO, "No, I cannot tell from this image."),  # a refusal that opens with "No" (one line: was credited)
        (YES_NO, "No, I cannot tell.\nThe image is too dark."),  # ... over two lines
        (YES_NO, "Nobody can tell from this image."),  # "No" inside another word
        (YES_NO, "Not really clear, the bars overlap."),
        (RATIO, "There are 3 red apples and 4 green apples."),  # two numbers: which one is the answer?
        (RATIO, "I cannot tell whether there are 4 apples."),  # a refusal
        (RATIO, "There are 4 apples on the table, and"),  # cut off: no full stop
        (RATIO, "Step 1: count the apples.\nStep 2: there are 4 apples."),  # more than one paragraph
        (dict(RATIO, question="How many of the 4 baskets hold apples?"),
         "All 4 baskets hold apples."),  # the question's number
    ],
)
def test_further_forms_never_credit_unstated_answers(doc, response):
    assert _rule_acc(response, doc)["score"] == 0


@pytest.mark.parametrize(
    "doc, response",
    [
        (YES_NO, "The image does not provide enough information to answer the question."),
        (YES_NO, "I cannot see the image clearly; please let me know more about it."),
        (COLORS, "Olive Drab is clearly greater than olive drab's neighbour."),
        (YES_NO, "There are no tiny gray bicycles here, so I cannot tell."),
        (YES_NO, "Nothing in the figure answers this."),
        (WORDS, "The category of this concatenated picture is unclear."),
        (WORDS, "A dog is next to a cat and a tree."),
        (INTEGER, "Let me count: 1, 2, 3, 4"),
        (FLOAT, "The length is about 1.2 and then we still need to add the"),
    ],
)
def test_task_rules_keep_every_false_credit_form_uncredited(doc, response):
    assert _rule(response, doc)["correct"] is False


def test_further_forms_never_apply_to_a_truncated_response():
    assert _rule("No, the blue bar is shorter.", YES_NO)["correct"] is True
    assert _rule("No, the blue bar is shorter.", YES_NO, truncated=True)["verdict"] == "undecided"
    assert _rule("There are 4 apples on the table.", RATIO, truncated=True)["verdict"] == "undecided"
    assert _rule("So BOC is (C) 145°.", ANGLES, truncated=True)["verdict"] == "undecided"


def test_rule_verdict_classes():
    assert _rule("\\boxed{C}", ANGLES)["verdict"] == "credit"
    assert _rule("\\boxed{A}", ANGLES)["verdict"] == "wrong"  # a stated answer, wrong
    assert _rule("\\boxed{92.5}", ANGLES)["verdict"] == "undecided"  # stated, but no option: the judge decides
    assert _rule("It looks like a cat.", WORDS)["verdict"] == "undecided"  # option text inside a sentence
