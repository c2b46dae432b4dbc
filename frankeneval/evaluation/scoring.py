"""Rule-based answer extraction and equivalence (the paper's grading rules, before any LLM judge), shared by the
tasks (GSM8K, MATH-500, the probes, MathVista) and the analyses.

* Final answer of a free-text response: the ``<answer>…</answer>`` tag's content, else the last
  ``\\boxed{…}`` (nested braces handled), else (GSM8K) the text after ``####`` (``extract_final_answer``). Only a
  stated answer gets rule credit: there is no fallback to the last number (a response cut off at the token limit
  would get credit for a number it was still working on); such items go to the judge, or are not credited.
* Math equivalence (``math_equal``): whitespace-free lower-case strings match, or math-verify says the two are
  equivalent, or both parse as numbers within 1e-6. ``rel_tol=0.01`` adds the reference's 1 % relative error
  (seed-compatible option only).
* Vision probes: numbers (counting), words (OCR), boxes by IoU ≥ 0.5 (grounding), yes/no (recognition).

MathVista's rules, prompts and official protocol live with the benchmark: :mod:`frankeneval.tasks.mathvista.scoring`.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any, Sequence

__all__ = [
    "extract_answer_tag",
    "last_boxed",
    "extract_gsm8k_target",
    "extract_final_answer",
    "NUMBER_RE",
    "normalize_text",
    "parse_number",
    "math_equal",
    "reference_final_answer",
    "reference_math_correct",
    "reference_mcq_letter",
    "reference_rule_correct",
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
# a number in text: thousands commas, decimals, an exponent
NUMBER_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
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

    Returns ``(answer, method)`` with method one of ``answer_tag``, ``boxed``, ``hashes`` (``allow_hashes``: GSM8K's
    ``#### N``), ``whole`` (the response is one number and nothing else), ``none``. A ``\\boxed{}`` inside the
    ``<answer>`` tag is unwrapped. No last-number fallback: a response that states no answer has none.
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
    whole = (text or "").strip().rstrip(".").strip()
    if whole and NUMBER_RE.fullmatch(whole):  # the response is nothing but a number: that is its stated answer
        return whole, "whole"
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


# --------------------------------------------------------------------------- the reference's rules (seed-compatible)
# The reference's extraction and checks (``--seed-compatible`` / ``grading: seed`` only), one extraction for
# reasoning localization and for transfer's judge input and rules (MathVista, MATH-500, GSM8K): the *first* closed
# ``<answer>`` tag (with its "3.5" -> "5" quirk), for multiple choice the MCQ letter, else the last ``\\boxed{}``, else
# an "answer is" / "therefore" pattern (a match under 100 characters), else the last number, else the response's
# last 50 characters (:func:`reference_final_answer`); correct by whitespace-free lower-case match, math-verify on
# the raw strings, or numbers (``,`` and ``%`` removed) within 1e-6 or a 1 % relative error
# (:func:`reference_math_correct`), with the MCQ letter, letter-to-choice and 90 % containment rules in front for
# transfer (:func:`reference_rule_correct`).

_REF_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_REF_PATTERNS = (
    re.compile(r"(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*[:\s]*(.+?)(?:\.|$)", re.IGNORECASE),
    re.compile(r"(?:therefore|thus|hence|so)[,\s]+(?:the\s+)?(?:answer\s+is\s+)?(.+?)(?:\.|$)", re.IGNORECASE),
)
_REF_NUMBER = re.compile(r"(-?\d+\.?\d*)")


def _reference_boxed(text: str) -> str | None:
    """The reference's ``\\boxed{`` reader: the last one, balanced braces, None when unclosed."""
    found = list(re.finditer(r"\\boxed\s*\{", text))
    if not found:
        return None
    start = i = found[-1].end()
    depth = 1
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[start:i - 1].strip() if depth == 0 else None


_REF_TAG_ITEM = re.compile(r"^\s*([A-Ha-h0-9])\s*[.):\-]\s*(.+?)\s*$")
_REF_LONE_LETTER = re.compile(r"[A-Ha-h]")
_REF_MCQ_PATTERNS = (
    re.compile(r"(?:answer|option|choice)\s*(?:is\s*)?[:\s]\s*\(?((?-i:[A-H]))\)?(?![A-Za-z0-9])", re.IGNORECASE),
    re.compile(r"\(([A-H])\)"),
)


def reference_mcq_letter(text: str) -> str | None:
    """The multiple-choice letter (A-H, upper-cased) a response states, or None: the whole (stripped) text is one
    letter (``B``, ``(B)``, ``B.``), else the last "answer / option / choice (is) B", else the last ``(B)``.
    METHOD.md names the reference's MCQ parser without its rule; this is frankeneval's reading of it."""
    t = (text or "").strip()
    lone = re.fullmatch(r"\(?([A-Ha-h])\)?[.:]?", t)
    if lone:
        return lone.group(1).upper()
    for pattern in _REF_MCQ_PATTERNS:
        found = pattern.findall(t)
        if found:
            return found[-1].upper()
    return None


def reference_final_answer(text: str, choices: Sequence[str] | None = None) -> str:
    r"""The reference's answer extraction (seed-compatible; the judge's input in ``grading: seed`` for every task,
    and reasoning localization's answer), in METHOD.md's order:

    1. the first closed ``<answer>`` tag's content: when it matches ``^\s*([A-Ha-h0-9])\s*[.):\-]\s*(.+?)\s*$``
       its group 2 (the reference's quirk: "3.5" becomes "5"), else a lone letter A-H upper-cased, else the
       stripped content;
    2. multiple choice (``choices`` given): the letter :func:`reference_mcq_letter` finds in the response;
    3. the last ``\boxed{}``;
    4. "answer is ..." then "therefore / thus / hence / so ..." (first match, kept when under 100 characters);
    5. the last number ``-?\d+\.?\d*``;
    6. the last 50 characters.
    """
    if not text:
        return ""
    tag = _REF_TAG.search(text)
    if tag and tag.group(1).strip():
        content = tag.group(1).strip()
        item = _REF_TAG_ITEM.match(content)
        if item:
            return item.group(2)
        return content.upper() if _REF_LONE_LETTER.fullmatch(content) else content
    if choices:
        letter = reference_mcq_letter(text)
        if letter is not None:
            return letter
    boxed = _reference_boxed(text)
    if boxed:
        return boxed
    for pattern in _REF_PATTERNS:
        m = pattern.search(text)
        if m and m.group(1).strip() and len(m.group(1).strip()) < 100:
            return m.group(1).strip()
    numbers = _REF_NUMBER.findall(text)
    if numbers:
        return numbers[-1]
    return text.strip()[-50:]


def reference_math_correct(pred: Any, gold: Any) -> bool:
    """The reference script's check (seed-compatible): exact, math-verify, numbers within 1e-6 or 1 %."""
    pred, gold = str(pred or "").strip(), str(gold or "").strip()
    if not pred or not gold:
        return False
    p, g = pred.lower().replace(" ", ""), gold.lower().replace(" ", "")
    if p == g:
        return True
    try:
        from math_verify import parse, verify

        if verify(parse(pred), parse(gold)):
            return True
    except Exception:  # noqa: BLE001, S110 - the reference ignores every math-verify failure
        pass
    try:
        a, b = float(p.replace(",", "").replace("%", "")), float(g.replace(",", "").replace("%", ""))
    except ValueError:
        return False
    return abs(a - b) < 1e-6 or (b != 0 and abs(a - b) / abs(b) < 0.01)


def reference_rule_correct(extracted: Any, gold: Any, *, choices: Sequence[str] | None = None,
                           response: str = "") -> bool:
    """The reference's rule check with the judge off (``grading: seed``): a one-letter gold answer compares MCQ
    letters (:func:`reference_mcq_letter` of ``extracted``, then of the full ``response``); otherwise a letter
    ``extracted`` maps to its choice text, then whitespace-free lower-case equality, containment either way when the
    shorter is at least 90 % of the longer, math-verify, numbers within 1e-6 or 1 % (:func:`reference_math_correct`)."""
    pred = str(extracted if extracted is not None else "").strip()
    gold_s = str(gold if gold is not None else "").strip()
    if not pred or not gold_s:
        return False
    if re.fullmatch(r"[A-Ha-h]", gold_s):
        letter = reference_mcq_letter(pred) or reference_mcq_letter(response)
        return letter is not None and letter == gold_s.upper()
    if choices and re.fullmatch(r"[A-Ha-h]", pred):
        index = ord(pred.upper()) - ord("A")
        if index < len(choices):
            pred = str(choices[index]).strip()
    p, g = normalize_text(pred), normalize_text(gold_s)
    if p == g:
        return True
    short, long_ = sorted((p, g), key=len)
    if short and short in long_ and len(short) >= 0.9 * len(long_):
        return True
    return reference_math_correct(pred, gold_s)


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
