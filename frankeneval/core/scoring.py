"""Rule-based answer extraction and equivalence (the paper's grading rules, before any LLM judge).

* Final answer of a free-text response: the ``<answer>…</answer>`` tag's content, else the last
  ``\\boxed{…}`` (nested braces handled), else (GSM8K) the text after ``####``, else the documented fallback:
  the last number in the response (``extract_final_answer``).
* Math equivalence (``math_equal``): whitespace-free lower-case strings match, or math-verify says the two are
  equivalent, or both parse as numbers within 1e-6. ``rel_tol=0.01`` adds the reference's 1 % relative error
  (seed-compatible option only).
* MathVista (``mathvista_correct``): multiple choice by letter or by option text; free-form answers respect
  ``answer_type`` (integer / float rounded to ``precision`` / list / text) and strip the ``unit``, as MathVista's
  own scoring does.
* Vision probes: numbers (counting), words (OCR), boxes by IoU ≥ 0.5 (grounding), yes/no (recognition).
"""

from __future__ import annotations

import logging
import math
import re
import threading
from typing import Any, Sequence

__all__ = [
    "extract_answer_tag",
    "last_boxed",
    "extract_gsm8k_target",
    "extract_final_answer",
    "normalize_text",
    "parse_number",
    "math_equal",
    "mathvista_extract",
    "mathvista_correct",
    "parse_box",
    "box_iou",
    "grounding_correct",
    "parse_yes_no",
    "yes_no_correct",
    "parse_count",
    "counting_correct",
    "ocr_correct",
    "probe_correct",
    "short_answer",
]

_ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL | re.IGNORECASE)
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
_WORD_NUMBERS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}


# --------------------------------------------------------------------------- extraction


def extract_answer_tag(text: str) -> str | None:
    """Content of the last ``<answer>…</answer>`` tag (an unclosed final tag runs to the end), or None."""
    found = _ANSWER_TAG.findall(text or "")
    return found[-1].strip() if found else None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` / ``\\fbox{…}`` with nested braces, or ``\\boxed x`` form; None if absent."""
    text = text or ""
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)\s*", text)]
    for m in reversed(starts):
        i = m.end()
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j].strip()
            continue  # unbalanced: try an earlier one
        if m.group(0).endswith(" ") or m.group(0).endswith("\t"):
            rest = re.match(r"([^\s$]+)", text[i:])
            if rest:
                return rest.group(1).strip()
    return None


def extract_gsm8k_target(answer: str) -> str:
    """The number after ``####`` in a GSM8K rationale (thousands separators removed)."""
    if "####" not in (answer or ""):
        return (answer or "").strip()
    return answer.split("####")[-1].strip().replace(",", "")


def extract_final_answer(text: str, *, allow_hashes: bool = False) -> tuple[str | None, str]:
    """The final answer of a response and how it was found.

    Returns ``(answer, method)`` with method one of ``answer_tag``, ``boxed``, ``hashes``, ``last_number``, ``none``.
    A ``\\boxed{}`` inside the ``<answer>`` tag is unwrapped.
    """
    tag = extract_answer_tag(text)
    if tag is not None and tag != "":
        inner = last_boxed(tag)
        return (inner if inner is not None else tag), "answer_tag"
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed, "boxed"
    if allow_hashes and "####" in (text or ""):
        return text.split("####")[-1].strip().split("\n")[0].strip(), "hashes"
    numbers = _NUMBER.findall(text or "")
    if numbers:
        return numbers[-1], "last_number"
    return None, "none"


# --------------------------------------------------------------------------- equivalence


def normalize_text(s: Any) -> str:
    """Whitespace-free lower-case form."""
    return re.sub(r"\s+", "", str(s)).lower()


def _strip_latex_number(s: str) -> str:
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\text\{[^{}]*\}|\\mathrm\{[^{}]*\}", "", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "").replace("\\!", "")
    s = s.replace("{,}", "").replace("\\,", "")
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)
    return s.strip().rstrip(".")


def parse_number(s: Any) -> float | None:
    """A float when the whole string is one number (``$``, ``%``, thousands commas, ``\\text{}`` allowed)."""
    if s is None:
        return None
    t = _strip_latex_number(str(s))
    m = re.fullmatch(r"-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|-?\.\d+", t)
    if not m:
        frac = re.fullmatch(r"(-?)\\d?frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}", t)
        if frac and float(frac.group(3)) != 0:
            v = float(frac.group(2)) / float(frac.group(3))
            return -v if frac.group(1) else v
        return None
    return float(t)


def _math_verify_equal(pred: str, gold: str) -> bool:
    try:
        from math_verify import parse, verify
    except ImportError:  # pragma: no cover - math-verify is a dependency
        return False
    main = threading.current_thread() is threading.main_thread()
    timeout = 5 if main else None  # math-verify's timeouts use SIGALRM, which works only in the main thread
    if not main:  # it warns on every call without a timeout; the expressions here are short answers
        logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:
        g = parse(f"${gold}$", parsing_timeout=timeout)
        p = parse(f"${pred}$", parsing_timeout=timeout)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=timeout))
    except Exception:
        return False


def math_equal(pred: Any, gold: Any, *, rel_tol: float | None = None, use_math_verify: bool = True) -> bool:
    """The paper's equivalence: normalized string match, math-verify, or numbers within 1e-6.

    ``rel_tol=0.01`` additionally accepts a 1 % relative error (the reference's seed-compatible behaviour).
    """
    if pred is None or gold is None:
        return False
    pred, gold = str(pred).strip(), str(gold).strip()
    if not pred:
        return False
    if normalize_text(pred) == normalize_text(gold):
        return True
    a, b = parse_number(pred), parse_number(gold)
    if a is not None and b is not None:
        if abs(a - b) <= 1e-6:
            return True
        if rel_tol is not None and abs(a - b) <= rel_tol * max(abs(b), 1e-12):
            return True
    return use_math_verify and _math_verify_equal(pred, gold)


# --------------------------------------------------------------------------- MathVista

_LETTER_PATTERNS = [
    r"^\(?([A-Z])\)?[.:)]?$",
    r"^\(?([A-Z])\)?[.:)]\s",
    r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-Z])\)?(?![a-z])",
    r"^\(([A-Z])\)",
]


def _choice_from_text(extraction: str, choices: Sequence[str]) -> str | None:
    letters = [chr(ord("A") + i) for i in range(len(choices))]
    e = extraction.strip().strip("$").strip()
    for pat in _LETTER_PATTERNS:
        m = re.search(pat, e, flags=re.IGNORECASE if "answer" in pat else 0)
        if m and m.group(1).upper() in letters:
            return choices[letters.index(m.group(1).upper())]
    ne = normalize_text(e).rstrip(".")
    for c in choices:
        if normalize_text(c) == ne:
            return c
    # "A. 145°" style or an option text inside a sentence: exactly one choice contained
    contained = [c for c in choices if normalize_text(c) and normalize_text(c) in ne]
    if len(contained) == 1:
        return contained[0]
    if len(contained) > 1:  # prefer the longest (e.g. "140°" vs "40°")
        contained.sort(key=lambda c: len(normalize_text(c)), reverse=True)
        if len(normalize_text(contained[0])) > len(normalize_text(contained[1])):
            return contained[0]
    return None


def mathvista_extract(response: str, doc: dict) -> str | None:
    """MathVista answer extraction by rules: tag / boxed, else (free-form) the last number, else the text."""
    answer, method = extract_final_answer(response)
    if method in ("answer_tag", "boxed"):
        return answer
    if doc.get("question_type") == "multi_choice":
        return (response or "").strip().splitlines()[-1].strip() if (response or "").strip() else None
    if doc.get("answer_type") in ("integer", "float"):
        return answer
    return (response or "").strip() or None


def _strip_unit(s: str, unit: str | None) -> str:
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s).strip()
    if unit:
        s = re.sub(re.escape(unit.strip()) + r"\s*$", "", s).strip()
    return s


def mathvista_correct(response: str, doc: dict, *, extraction: str | None = None) -> tuple[bool, str | None]:
    """Rule correctness of a response to a MathVista row; returns ``(correct, normalized_prediction)``.

    Multiple choice: a letter (``B``, ``(B)``, ``Answer: B``) or the option's text selects a choice, compared with
    the answer text. Free form: ``integer`` -> ``int(float(x))``; ``float`` -> rounded to ``precision`` digits;
    ``list`` -> element-wise numbers; ``text`` -> whitespace-free lower-case match. The ``unit`` is stripped.
    """
    ext = mathvista_extract(response, doc) if extraction is None else extraction
    if ext is None:
        return False, None
    gold = str(doc.get("answer", "")).strip()
    choices = list(doc.get("choices") or [])
    if doc.get("question_type") == "multi_choice" and choices:
        pred = _choice_from_text(ext, choices)
        return (pred is not None and normalize_text(pred) == normalize_text(gold)), pred
    ext = _strip_unit(ext, doc.get("unit"))
    atype = doc.get("answer_type")
    if atype == "integer":
        v = parse_number(ext)
        if v is None:
            nums = _NUMBER.findall(ext)
            v = parse_number(nums[-1]) if nums else None
        if v is None or not math.isfinite(v):
            return False, None
        pred = str(int(v))
        return pred == str(int(float(gold))), pred
    if atype == "float":
        v = parse_number(ext)
        if v is None:
            nums = _NUMBER.findall(ext)
            v = parse_number(nums[-1]) if nums else None
        if v is None:
            return False, None
        precision = int(doc.get("precision") or 0)
        pred = str(round(v, precision))
        return abs(round(v, precision) - round(float(gold), precision)) < 1e-9, pred
    if atype == "list":
        p = [parse_number(x) for x in _NUMBER.findall(ext)]
        g = [parse_number(x) for x in _NUMBER.findall(gold)]
        return (len(p) == len(g) and all(abs(a - b) <= 1e-6 for a, b in zip(p, g))), str(p)
    return normalize_text(ext).rstrip(".") == normalize_text(gold), ext


# --------------------------------------------------------------------------- vision probes


def short_answer(response: str) -> str:
    """The part of a probe response to score: ``<answer>`` tag / ``\\boxed{}`` content, else the whole response."""
    answer, method = extract_final_answer(response)
    return answer if method in ("answer_tag", "boxed") else (response or "").strip()


def parse_box(text: Any) -> list[float] | None:
    """The first four numbers of a response as ``[x1, y1, x2, y2]`` (corners ordered), or None."""
    if isinstance(text, (list, tuple)):
        nums = [float(x) for x in text]
    else:
        nums = [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", str(text or ""))]
    if len(nums) < 4:
        return None
    x1, y1, x2, y2 = nums[:4]
    return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``xyxy`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def grounding_correct(response: str, box: Sequence[float], threshold: float = 0.5) -> bool:
    """A predicted box with IoU ≥ ``threshold`` against ``box``."""
    pred = parse_box(short_answer(response))
    return pred is not None and box_iou(pred, box) >= threshold


def parse_yes_no(text: str) -> str | None:
    """``"yes"`` / ``"no"`` from the first yes/no word, or None."""
    m = re.search(r"\b(yes|no)\b", (text or "").lower())
    return m.group(1) if m else None


def yes_no_correct(response: str, answer: str) -> bool:
    return parse_yes_no(short_answer(response)) == str(answer).strip().lower()


def parse_count(text: str) -> int | None:
    """The first integer (digits or an English number word up to twenty) in a response."""
    t = (text or "").lower()
    m = re.search(r"-?\d+(?:\.0+)?\b|\b(" + "|".join(_WORD_NUMBERS) + r")\b", t)
    if not m:
        return None
    return _WORD_NUMBERS[m.group(1)] if m.group(1) else int(float(m.group(0)))


def counting_correct(response: str, answer: Any) -> bool:
    got = parse_count(short_answer(response))
    return got is not None and got == int(float(answer))


def _ocr_normalize(s: str) -> str:
    return re.sub(r"[^\w]", "", str(s).lower())


def ocr_correct(response: str, word: str) -> bool:
    """Word read exactly (case, whitespace, quotes and punctuation ignored)."""
    return _ocr_normalize(short_answer(response)) == _ocr_normalize(word)


def probe_correct(task: str, response: str, meta: dict, which: str = "target") -> bool:
    """Correctness of a probe response against the ``target`` or ``source`` image's answer in ``meta``."""
    if task == "counting":
        return counting_correct(response, meta[f"{which}_answer"])
    if task == "recognition":
        return yes_no_correct(response, meta[f"{which}_answer"])
    if task == "ocr":
        return ocr_correct(response, meta[f"{which}_text"])
    if task == "grounding":
        return grounding_correct(response, meta[f"{which}_bbox_xyxy"], float(meta.get("iou_threshold", 0.5)))
    raise ValueError(f"unknown probe task {task!r}")
