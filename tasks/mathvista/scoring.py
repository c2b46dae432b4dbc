"""MathVista's answer rules, prompts and official protocol (the rules run before any LLM judge).

* The rules (``mathvista_correct``, ``mathvista_rule_verdict``): only what the response *states* as its final answer
  counts (a tag, a box, "the answer is ...", "Answer: ...", or a one-line response that is itself an answer); no
  fallback to the last line or the last number, and a response that hit the token limit is credited only from a tag
  or box. A choice is selected by its letter or its whole text as the answer, never by its text inside another word.
  Free-form answers respect ``answer_type`` (integer / float rounded to ``precision`` / list / text) and strip the
  ``unit``.
* MathVista's own protocol (``extraction: mathvista``): the zero-shot query (``mathvista_query``), the quick rules and
  the few-shot LLM extraction prompt (``mathvista_quick_extract``, ``mathvista_extraction_prompt``; the prompt is sent
  by the judge client, :meth:`frankeneval.evaluation.grading.Judge.extract_mathvista`, from :mod:`.utils`), then
  ``mathvista_normalize`` / ``mathvista_official_correct``, MathVista's own normalization and comparison.

The generic pieces (tag / box extraction, number parsing, normalized match) are :mod:`frankeneval.evaluation.scoring`'s.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from frankeneval.evaluation.scoring import NUMBER_RE, extract_final_answer, normalize_text, parse_number

__all__ = [
    "MATHVISTA_EXTRACTION_EXAMPLES",
    "levenshtein",
    "mathvista_correct",
    "mathvista_extract",
    "mathvista_extraction_prompt",
    "mathvista_final_answer",
    "mathvista_normalize",
    "mathvista_official_correct",
    "mathvista_query",
    "mathvista_quick_extract",
    "mathvista_rule_verdict",
]


# --------------------------------------------------------------------------- MathVista
# An option counts as chosen only when the final answer *states* it: its letter ("B", "(B)", "B.", "B) text",
# "answer is B", \boxed{B}) or its whole text as the whole final answer (a clause of it at most) -- never a word,
# or part of a word, inside a sentence ("does not provide" never selects "No").

_MARKERS = [
    # "the (final/correct) answer/option/choice is ..."
    re.compile(r"\b(?:final\s+|correct\s+|right\s+|best\s+)?(?:answer|option|choice)\s+"
               r"(?:to\s+(?:the|this)\s+question\s+)?(?:is|would\s+be|should\s+be|will\s+be)\s*[:：]?\s*",
               re.IGNORECASE),
    # "Answer: ...", "Final answer: ...", "**Answer:** ..."
    re.compile(r"\b(?:final\s+)?answer\s*[:：]\s*", re.IGNORECASE),
]
_CLAUSE_END = re.compile(r"[;,，。]\s|\.(?:\s|$)|\s+(?:because|since|as|which|so|and\s+the)\b|\n", re.IGNORECASE)
_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree")


def _clean_answer(s: str) -> str:
    """A final answer without markup: ``$``, ``**``, quotes, ``\\text{}``/``\\mathrm{}`` wrappers, trailing dots."""
    s = re.sub(r"\\(?:text|mathrm|textbf|mathbf)\s*\{([^{}]*)\}", r"\1", s or "")
    s = _DEGREE.sub("°", s)
    s = s.replace("**", "").replace("$", "").replace("\\(", "").replace("\\)", "")
    s = s.strip().rstrip(".。").strip()
    return s.strip("\"'`“”‘’").strip().rstrip(".。").strip()


def _option_key(s: Any) -> str:
    return normalize_text(_clean_answer(str(s))).rstrip(".")


def _number_of_option(s: str) -> float | None:
    """The number of an option that is a number with at most a unit (``145°``, ``6cm``, ``2.5 m``), else None."""
    m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(?:°|%|[A-Za-z]{1,5}\^?\d?)?\s*", _clean_answer(s))
    return float(m.group(1)) if m else None


def _stated_choice(answer: str | None, choices: Sequence[str]) -> str | None:
    """The option a final answer states, or None: its whole text, its letter (``B``, ``(B)``, ``B.``, ``B) 13``,
    ``D (tokyo)``), or -- for options that are numbers with a unit -- its number; tried on the whole answer, then
    on its first clause. Never an option whose text merely occurs inside the answer."""
    if answer is None or not choices:
        return None
    letters = [chr(ord("A") + i) for i in range(len(choices))]
    whole = _clean_answer(answer)
    m = _CLAUSE_END.search(whole)
    candidates = [whole] + ([_clean_answer(whole[: m.start()])] if m else [])
    for s in candidates:
        if not s:
            continue
        key = normalize_text(s).rstrip(".")
        exact = [c for c in choices if _option_key(c) == key]
        if exact:
            return exact[0]
        lm = re.fullmatch(r"(?:option|choice)?\s*\(?([A-Z])\)?[.:)]?", s, flags=re.IGNORECASE)
        if lm and (lm.group(1) in letters or (s[:1] in "oOcC" and lm.group(1).upper() in letters)):
            return choices[letters.index(lm.group(1).upper())]
        lm = re.match(r"\(([A-Z])\)|([A-Z])[.:)](?=\s|$)|([A-Z])(?=\s*\()", s)
        if lm:
            letter = next(g for g in lm.groups() if g)
            if letter in letters:
                return choices[letters.index(letter)]
        v = _number_of_option(s)
        if v is not None:
            numeric = [c for c in choices if (n := _number_of_option(c)) is not None and abs(n - v) <= 1e-9]
            if len(numeric) == 1:
                return numeric[0]
    return None


def _marker_answer(response: str) -> str | None:
    """The text after the last final-answer phrase ("the answer is ...", "Answer: ..."), to the end of its line."""
    text = (response or "").replace("**", "")
    best: tuple[int, str] | None = None
    for pat in _MARKERS:
        for m in pat.finditer(text):
            rest = text[m.end():].split("\n", 1)[0].strip()
            if rest and (best is None or m.start() >= best[0]):
                best = (m.start(), rest)
    return best[1] if best else None


def mathvista_final_answer(response: str, doc: dict, *, truncated: bool = False) -> tuple[str | None, str]:
    """The final answer a MathVista response states and how it was found: ``answer_tag`` / ``boxed`` (as
    :func:`extract_final_answer`), ``marker`` (the rest of the line after the last "the answer is" / "Answer:"),
    ``whole`` (a one-line response that is itself an answer: an option's letter or text, or for free-form a
    number); ``none`` otherwise. There is no fallback (no last line, no last number): a response without a
    final-answer marker is not credited by rules. ``truncated`` (the response hit the token limit): only a tag or
    a box counts."""
    answer, method = extract_final_answer(response)
    if method in ("answer_tag", "boxed"):
        return answer, method
    if truncated:
        return None, "none"
    marked = _marker_answer(response)
    if marked is not None:
        return marked, "marker"
    text = (response or "").strip()
    if text and "\n" not in text and len(text) <= 80:
        if doc.get("question_type") == "multi_choice":
            if _stated_choice(text, list(doc.get("choices") or [])) is not None:
                return text, "whole"
        elif doc.get("answer_type") in ("integer", "float"):
            if parse_number(_strip_unit(_clean_answer(text), doc.get("unit"))) is not None:
                return text, "whole"
        elif doc.get("answer_type") == "list":
            if re.fullmatch(r"\[[^\[\]]*\]", _clean_answer(text)):
                return text, "whole"
        elif len(text.split()) <= 5:
            return text, "whole"
    return None, "none"


def mathvista_extract(response: str, doc: dict, *, truncated: bool = False) -> str | None:
    """The stated final answer of a MathVista response (see :func:`mathvista_final_answer`), or None."""
    return mathvista_final_answer(response, doc, truncated=truncated)[0]


def _strip_unit(s: str, unit: str | None) -> str:
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s).strip()
    if unit:
        s = re.sub(re.escape(unit.strip()) + r"\s*$", "", s).strip()
    return s


def _first_clause(s: str) -> str:
    m = _CLAUSE_END.search(s)
    return s[: m.start()] if m else s


def mathvista_correct(response: str, doc: dict, *, extraction: str | None = None,
                      truncated: bool = False) -> tuple[bool, str | None]:
    """Rule correctness of a response to a MathVista row; returns ``(correct, normalized_prediction)``.

    The final answer is what the response states (:func:`mathvista_final_answer`; or ``extraction`` when given).
    Multiple choice: the option it states (:func:`_stated_choice`: letter or whole option text, never text
    inside another word), compared with the answer. Free form: ``integer`` -> ``int(x)``; ``float`` -> rounded
    to ``precision`` digits; ``list`` -> element-wise numbers; ``text`` -> whitespace-free lower-case match; the
    ``unit`` is stripped and the number read from the answer's first clause.
    """
    ext = mathvista_extract(response, doc, truncated=truncated) if extraction is None else extraction
    if ext is None:
        return False, None
    gold = str(doc.get("answer", "")).strip()
    choices = list(doc.get("choices") or [])
    if doc.get("question_type") == "multi_choice" and choices:
        pred = _stated_choice(ext, choices)
        return (pred is not None and _option_key(pred) == _option_key(gold)), pred
    ext = _strip_unit(_clean_answer(ext), doc.get("unit"))
    atype = doc.get("answer_type")
    if atype in ("integer", "float"):
        v = parse_number(ext)
        if v is None:
            nums = NUMBER_RE.findall(_first_clause(ext))
            v = parse_number(nums[-1]) if nums else None
        if v is None or not math.isfinite(v):
            return False, None
        if atype == "integer":
            if v != int(v):  # a stated 1.5 is not the integer 1: no truncation (the official verdict agrees)
                return False, format(v, "g")
            pred = str(int(v))
            return pred == str(int(float(gold))), pred
        precision = int(doc.get("precision") or 0)
        pred = str(round(v, precision))
        return abs(round(v, precision) - round(float(gold), precision)) < 1e-9, pred
    if atype == "list":
        p = [parse_number(x) for x in NUMBER_RE.findall(ext)]
        g = [parse_number(x) for x in NUMBER_RE.findall(gold)]
        return (len(p) == len(g) and all(abs(a - b) <= 1e-6 for a, b in zip(p, g))), str(p)
    return normalize_text(ext).rstrip(".") == normalize_text(gold), ext



# --------------------------------------------------------------------------- MathVista: the rules' verdict
# The rules' verdict on one response (:func:`mathvista_rule_verdict`). The stated forms of
# :func:`mathvista_final_answer` first; when it finds none, the few further forms that
# recorded MathVista responses use to state an answer (bench/mathvista_agreement.py measured them against the
# official verdicts, BENCHMARKS.md). None of them reads an option's text inside a sentence, and none applies to a
# response that hit the token limit (there only a tag or a box counts).

_REFUSAL = re.compile(r"\b(?:cannot|can't|can ?not|unable|not possible|impossible|sorry|unclear|not sure|"
                      r"no way to|not enough|insufficient|don't know|do not know)\b", re.IGNORECASE)
# "the answer to the blank is 2", "the answer to this riddle is 12"
_ANSWER_TO = re.compile(r"\banswer\s+to\s+(?:the|this)\s+\w+(?:\s+\w+)?\s+(?:is|would\s+be)\s*[:：]?\s*",
                        re.IGNORECASE)
# the final sentence names a letter as what something "is": "... is (D) 54°.", "... would be (B) 45°.",
# "... which is option (E)." -- never "is not (B)"
_IS_LETTER = re.compile(r"\b(?:is|are|be|was)\s+(?:option\s+|choice\s+)?(\([A-Z]\)[^\n]*)$")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=\S)")
_YES_NO_LEAD = re.compile(r"^\W{0,3}(yes|no)\b\**\s*[,.!;:]", re.IGNORECASE)
_NUMBER_WORDS = {w: i for i, w in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                                              "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen",
                                              "sixteen", "seventeen", "eighteen", "nineteen", "twenty"])}
_NUM_TOKEN = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?![\w.]*\d)")


def _last_sentence(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").strip().split("\n") if ln.strip()]
    if not lines:
        return ""
    parts = _SENTENCE_SPLIT.split(lines[-1])
    return parts[-1].strip() if parts else ""


def _numbers_in(sentence: str, question: str) -> list[str]:
    """The numbers a sentence adds to the question: its digit numbers not in the question, else (no digits) its
    number words zero .. twenty not in the question ("these two people" names no answer)."""
    s = _clean_answer(sentence)
    in_question = {abs(float(x)) for x in re.findall(r"\d+(?:\.\d+)?", question)}
    digits = [m.group(0).replace(",", "") for m in _NUM_TOKEN.finditer(s)]
    if digits:
        return [d for d in digits if abs(float(d)) not in in_question]
    q_words = {w.lower() for w in re.findall(r"[A-Za-z]+", question)}
    return [str(_NUMBER_WORDS[w.lower()]) for w in re.findall(r"[A-Za-z]+", s)
            if w.lower() in _NUMBER_WORDS and w.lower() not in q_words]


def _short_statement_number(response: str, doc: dict) -> str | None:
    """Free form: a short complete response (one paragraph, at most 3 sentences, 300 characters, ending with a
    full stop) whose last sentence states exactly one number not already in the question ("The perimeter of the
    rectangle is 18 inches.", "There are two sequences with negative Influence Scores."): that number."""
    text = (response or "").strip()
    if not text or "\n" in text or len(text) > 300 or not re.search(r"[.!]\**$", text):
        return None
    sentences = _SENTENCE_SPLIT.split(text)
    if len(sentences) > 3 or _REFUSAL.search(text):
        return None
    nums = _numbers_in(sentences[-1], str(doc.get("question", "")))
    return nums[0] if len(nums) == 1 else None


def _yes_no_lead(response: str, choices: list[str]) -> str | None:
    """Yes/no options: a response that opens with "Yes," / "No." (not a refusal): that word."""
    if sorted(c.strip().lower() for c in choices) != ["no", "yes"]:
        return None
    text = (response or "").strip()
    m = _YES_NO_LEAD.match(text)
    if not m or _REFUSAL.search(_SENTENCE_SPLIT.split(text)[0]):
        return None
    return m.group(1)


def _further_stated_answer(response: str, doc: dict) -> tuple[str | None, str]:
    """The further stated forms (see above), tried only where the core rules find no final answer."""
    text = (response or "").replace("**", "")
    hits = list(_ANSWER_TO.finditer(text))
    if hits:
        rest = text[hits[-1].end():].split("\n", 1)[0].strip()
        if rest:
            return rest, "answer_to"
    choices = list(doc.get("choices") or [])
    if doc.get("question_type") == "multi_choice" and choices:
        m = _IS_LETTER.search(_last_sentence(text))
        if m:
            return m.group(1), "final_is_letter"
        yn = _yes_no_lead(text, choices)
        if yn is not None:
            return yn, "yes_no_lead"
    elif doc.get("answer_type") in ("integer", "float"):
        n = _short_statement_number(text, doc)
        if n is not None:
            return n, "short_statement"
    return None, "none"


def _letter_conflict(extracted: str, choices: list[str]) -> bool:
    """True when the answer states a letter and, next to it, a different option's text or a number that is not
    that option's ("(D) 140°" where D is 20°, "(B) 50°" where B is 35°): the statement contradicts itself."""
    s = _clean_answer(extracted)
    m = _CLAUSE_END.search(s)
    s = _clean_answer(s[: m.start()]) if m else s
    lm = re.match(r"(?:option|choice)?\s*\(?([A-Z])\)?[.:)]?\s+(\S.*)$", s, flags=re.IGNORECASE)
    letters = [chr(ord("A") + i) for i in range(len(choices))]
    if not lm or lm.group(1).upper() not in letters or (not s.startswith("(") and lm.group(1).islower()):
        return False
    chosen = choices[letters.index(lm.group(1).upper())]
    rest = _clean_answer(lm.group(2)).lstrip(":").strip()
    key = _option_key(rest)
    if key == _option_key(chosen):
        return False
    if any(key == _option_key(c) for c in choices):
        return True
    v = _number_of_option(rest)
    if v is None:
        return False
    w = _number_of_option(chosen)
    return w is None or abs(v - w) > 1e-9


def mathvista_rule_verdict(response: str, doc: dict, *, truncated: bool = False) -> dict:
    """The rules' verdict on one MathVista response: ``verdict`` ``credit`` (the stated answer is right), ``wrong``
    (a stated answer, and it is wrong) or ``undecided`` (no stated answer the rules can read, or one that
    contradicts itself: the judge decides); with ``correct`` (credit), ``prediction`` (the option / normalized
    value read), ``extracted`` (the stated answer) and ``method`` (how it was found)."""
    extracted, method = mathvista_final_answer(response, doc, truncated=truncated)
    if extracted is None and not truncated:
        extracted, method = _further_stated_answer(str(response or ""), doc)
    out = {"verdict": "undecided", "correct": False, "prediction": None, "extracted": extracted, "method": method}
    if extracted is None:
        return out
    if method in ("whole", "yes_no_lead") and _REFUSAL.search(str(response or "")):
        out["method"] = f"{method}+refusal"  # "No, I cannot tell from this image." states no answer
        return out
    choices = list(doc.get("choices") or [])
    if doc.get("question_type") == "multi_choice" and choices and _letter_conflict(extracted, choices):
        out["method"] = f"{method}+letter_conflict"
        return out
    ok, pred = mathvista_correct(str(response or ""), doc, extraction=extracted)
    if pred is None:
        return out
    out.update(verdict="credit" if ok else "wrong", correct=bool(ok), prediction=pred)
    return out



# --------------------------------------------------------------------------- MathVista's own protocol
# ``extraction: mathvista``: MathVista's evaluation, so numbers compare with its leaderboard -- quick rules, else an
# LLM extracts the answer with few-shot examples (:func:`mathvista_extraction_prompt`, sent by the judge client),
# then the official normalization (:func:`mathvista_normalize`) and an exact string comparison.


def mathvista_query(doc: dict) -> str:
    """The question as MathVista's zero-shot query shows it: the hint for the answer type, ``Question:`` (with the
    unit), and ``Choices:`` with ``(A) ...`` lines."""
    qtype, atype = doc.get("question_type"), doc.get("answer_type")
    if qtype == "multi_choice":
        hint = "Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end."
    elif atype == "integer":
        hint = ("Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, "
                "at the end.")
    elif atype == "float" and int(doc.get("precision") or 0) == 1:
        hint = ("Please answer the question requiring a floating-point number with one decimal place and provide "
                "the final value, e.g., 1.2, 1.3, 1.4, at the end.")
    elif atype == "float":
        hint = ("Please answer the question requiring a floating-point number with two decimal places and provide "
                "the final value, e.g., 1.23, 1.34, 1.45, at the end.")
    elif atype == "list":
        hint = ("Please answer the question requiring a Python list as an answer and provide the final list, "
                "e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.")
    else:
        hint = "Please answer the question and provide the final answer at the end."
    question = str(doc.get("question", ""))
    if doc.get("unit"):
        question += f" (Unit: {doc['unit']})"
    lines = [f"Hint: {hint}", f"Question: {question}"]
    if qtype == "multi_choice" and doc.get("choices"):
        lines += ["Choices:"] + [f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(doc["choices"])]
    return "\n".join(lines)


MATHVISTA_EXTRACTION_EXAMPLES = """\
Please read the following examples. Then extract the answer from the model response and type it at the end of the \
prompt.

Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.
Question: How many birds are sitting on the fence?

Model response: Counting from left to right, there are seven birds on the fence.

Extracted answer: 7

Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final \
value, e.g., 1.2, 1.3, 1.4, at the end.
Question: What is the ratio of the red bar to the blue bar?

Model response: The red bar reaches 3 and the blue bar reaches 2, so the ratio is 1.5.

Extracted answer: 1.5

Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final \
value, e.g., 1.23, 1.34, 1.45, at the end.
Question: How much does a notebook and a pen cost together? (Unit: $)

Model response: The notebook costs $2.15 and the pen $0.90, which together make $3.05.

Extracted answer: 3.05

Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], \
[1.2, 1.3, 1.4], at the end.
Question: In which two months is the temperature the same?

Model response: The curve has the same value in month 4 and month 9.

Extracted answer: [4, 9]

Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.
Question: Which shape has the largest area?
Choices:
(A) circle
(B) square
(C) triangle

Model response: Comparing the three shapes, the square covers the most space.

Extracted answer: B
"""


def mathvista_extraction_prompt(doc: dict, response: str) -> str:
    """The extraction request of MathVista's protocol: the few-shot examples, the query and the response, then
    ``Extracted answer: ``."""
    return (f"{MATHVISTA_EXTRACTION_EXAMPLES.strip()}\n\n{mathvista_query(doc)}\n\n{response}\n\n"
            "Extracted answer: ")


def mathvista_quick_extract(response: str, doc: dict) -> str | None:
    """MathVista's rule extraction, tried before the LLM: an empty response -> ``""``; a response that is an option
    -> it; an integer / float response -> it; ``The answer is "text".`` -> ``text``; None when the LLM is needed."""
    if response == "":
        return ""
    if doc.get("question_type") == "multi_choice" and response in list(doc.get("choices") or []):
        return response
    if doc.get("answer_type") == "integer":
        try:
            return str(int(response))
        except ValueError:
            pass
    if doc.get("answer_type") == "float":
        try:
            return str(float(response))
        except ValueError:
            pass
    m = re.search(r'The answer is "(.*)"\.', response)
    return m.group(1) if m else None


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def mathvista_normalize(extraction: Any, doc: dict) -> str | None:
    """MathVista's normalization of an extracted answer. Multiple choice: the first ``(x)`` letter, if any, becomes
    the extraction (upper case); a letter of an option selects it, anything else selects the option nearest in edit
    distance (the first of equals). ``integer`` -> ``str(int(float(x)))``, ``float`` -> ``str(round(float(x),
    precision))``, ``list`` -> ``str(x)`` (None when they fail); ``text`` unchanged."""
    choices = list(doc.get("choices") or [])
    if doc.get("question_type") == "multi_choice":
        extraction = extraction.strip() if isinstance(extraction, str) else str(extraction)
        letter = re.findall(r"\(([a-zA-Z])\)", extraction)
        if letter:
            extraction = letter[0].upper()
        options = [chr(ord("A") + i) for i in range(len(choices))]
        if extraction in options:
            return choices[options.index(extraction)]
        distances = [levenshtein(extraction, c) for c in choices]
        return choices[distances.index(min(distances))] if choices else None
    atype = doc.get("answer_type")
    try:
        if atype == "integer":
            return str(int(float(extraction)))
        if atype == "float":
            return str(round(float(extraction), int(doc.get("precision") or 0)))
        if atype == "list":
            return str(extraction)
    except (TypeError, ValueError, OverflowError):
        return None
    return extraction


def mathvista_official_correct(extraction: Any, doc: dict) -> tuple[bool, str | None]:
    """MathVista's verdict on an extracted answer: the normalized prediction equals the answer string."""
    prediction = mathvista_normalize(extraction, doc)
    return prediction == str(doc.get("answer")), prediction
