"""MathVista testmini hooks (``!function utils.X`` in ``franken_mathvista*.yaml``).

Data: hub ``AI4Math/MathVista`` (split ``testmini``) or ``$FRANKENEVAL_DATA/mathvista/testmini.jsonl`` with
``images/<pid>.jpg`` next to it. ``dataset_kwargs``: ``category`` (``general-vqa`` = perception,
``math-targeted-vqa`` = alignment, absent = all), ``any_of`` (v2 splits: metadata field -> values, see
:func:`metadata_selector`) and ``control`` (absent = the image; ``black``: an all-black image
of the size the image is shown at (the reference's pixel cap of 921,600 = 1280 x 720: :func:`paper_image_size`);
``blackdesc``: the black image plus a text description of the real one, written by the judge or taken from the data's
``caption_bard``, see ``description_source``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from frankeneval.tasks import common
from frankeneval.tasks.common import INSTRUCTION, TaskSettings, count, judge_accuracy, mean_score  # noqa: F401 - YAML hooks
from frankeneval.tasks.mathvista import scoring
from frankeneval.tasks.mathvista.scoring import mathvista_rule_verdict

from frankeneval.errors import FrankenevalError
from frankeneval.evaluation.data import DataNotFound, load_benchmark_rows, row_where, subsample_indices

# --------------------------------------------------------------------------- docs


def _choices_block(choices) -> str:
    if not choices:
        return ""
    return "\n\nChoices:\n" + "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices))


def _mathvista_doc(row: dict, control: str | None) -> dict:
    md = row.get("metadata") or {}
    image = row.get("decoded_image")
    return {
        "id": str(row["pid"]),
        "pid": str(row["pid"]),
        "question": row["question"],
        "choices": list(row.get("choices") or []),
        "unit": row.get("unit") or "",
        "precision": float(row["precision"]) if row.get("precision") is not None else 0.0,
        "answer": str(row["answer"]),
        "target": str(row["answer"]),
        "question_type": row["question_type"],
        "answer_type": row["answer_type"],
        "category": md.get("category", ""),
        "img_width": int(md.get("img_width") or 0),
        "img_height": int(md.get("img_height") or 0),
        "image_path": row.get("image_path") or "",
        "decoded_image": image,
        "caption_bard": row.get("caption_bard") or "",
        "control": control or "image",
        "description": "",
        "description_source": "",
    }


def _rows_list(rows) -> list[dict]:
    return rows if isinstance(rows, list) else [dict(r) for r in rows]


def metadata_selector(spec: dict):
    """The row filter of a task's ``dataset_kwargs`` over MathVista's ``metadata``, or None (all rows).

    ``category``: ``metadata.category`` equals it (v1: ``general-vqa`` perception, ``math-targeted-vqa`` alignment).
    ``any_of``: a mapping metadata field -> allowed values; a row is kept when **any** field's value is among its
    allowed values (v2 perception: ``context`` in natural image, bar chart, ...; v2 vision+reasoning: ``context``
    geometry diagram or ``task`` geometry problem solving). Both given: both must hold.
    """
    category = spec.get("category") or None
    any_of = spec.get("any_of") or None
    if any_of is not None:
        if not isinstance(any_of, dict) or not any_of:
            raise FrankenevalError(f"MathVista dataset_kwargs any_of must be a mapping field -> values, not {any_of!r}")
        any_of = {str(k): {str(x) for x in ([v] if isinstance(v, str) else list(v))} for k, v in any_of.items()}
    if category is None and any_of is None:
        return None

    def keep(md: dict) -> bool:
        md = md or {}
        if category is not None and md.get("category") != category:
            return False
        return any_of is None or any(str(md.get(k)) in allowed for k, allowed in any_of.items())

    return keep


def build_docs(spec: dict, settings: TaskSettings) -> list[dict]:
    """The (sub-sampled) docs of one MathVista task (``spec``: the YAML's ``dataset_kwargs``)."""
    control = spec.get("control") or None
    keep = metadata_selector(spec)
    rows = load_benchmark_rows("mathvista", settings.data_path)
    if keep is not None:  # filter first (ids stay in dataset order), then sub-sample the split
        if isinstance(rows, list):
            rows = [r for r in rows if keep(r.get("metadata") or {})]
        else:
            rows = rows.filter(keep, input_columns="metadata")
    idx = subsample_indices(len(rows), settings.sample_size, settings.sample_seed)
    selected = [rows[i] for i in idx] if isinstance(rows, list) else _rows_list(rows.select(idx))
    docs = [common.row_doc(r, row_where(r, "mathvista", i), r.get("pid", f"row {i}"),
                           lambda r: _mathvista_doc(r, control))
            for i, r in zip(idx, selected)]  # a row lacking a field: a placeholder that common.check_docs names
    good = [d for d in docs if "broken" not in d]
    if control is None or control == "blackdesc":
        needs_pixels = control is None or description_source(settings) == "judge"
        missing = [d for d in good if d["decoded_image"] is None and not Path(d["image_path"]).is_file()]
        # no image at all (only the JSONL): say where they go; some missing: common.check_docs names them
        if needs_pixels and missing and (control == "blackdesc" or len(missing) == len(good)):
            raise DataNotFound(
                f"MathVista images not found: {len(missing)} of {len(docs)} selected rows lack their image "
                f"(e.g. {missing[0]['image_path']}). Put the images at images/<pid>.jpg next to testmini.jsonl "
                "(the hub dataset's layout), or unset FRANKENEVAL_DATA to read AI4Math/MathVista from the hub. "
                "The black-image controls need no images."
            )
    if control == "blackdesc":
        if add_descriptions(good, settings):  # an item without a description is left out of the setting, counted
            docs = [d if d.get("description_source") != "missing" else
                    {"id": d["id"], "left_out": {"path": "description", "reason": d["description_error"]}}
                    for d in docs]
            good = [d for d in good if d.get("description_source") != "missing"]
    for d in good:
        if control is not None:
            d["decoded_image"] = None  # the controls never show the image
    return docs


def description_source(settings: TaskSettings) -> str:
    """Who writes the ``blackdesc`` descriptions: ``judge`` or ``caption_bard`` (``auto``: judge if on)."""
    if settings.description_source == "auto":
        return "judge" if settings.judge else "caption_bard"
    return settings.description_source


def add_descriptions(docs: list[dict], settings: TaskSettings) -> int:
    """Fill ``description`` / ``description_source`` from the named source only: ``judge`` (written by the judge
    model with the reference's texts, cached per item: :meth:`frankeneval.evaluation.grading.Judge.describe_image`) or
    ``caption_bard`` (the data's released captions). Never another kind of description: an item whose description
    cannot be had gets ``description_source: missing`` and ``description_error`` (the caller leaves it out of the
    setting and counts it). Returns the number of such items."""
    source = description_source(settings)
    judge = common.get_judge(settings) if source == "judge" else None
    for d in docs:
        d["description_error"] = ""
        if judge is not None:
            from frankeneval.evaluation.grading import JudgeUnavailable

            try:
                d["description"], d["description_source"] = judge.describe_image(common.open_image(d)), "judge"
            except JudgeUnavailable as exc:
                d["description"], d["description_source"] = "", "missing"
                d["description_error"] = f"no description: the judge failed ({str(exc)[:200]})"
        elif d["caption_bard"]:
            d["description"], d["description_source"] = d["caption_bard"], "caption_bard"
        else:
            d["description"], d["description_source"] = "", "missing"
            d["description_error"] = "no description: the item has no caption_bard"
    n_missing = sum(d["description_source"] == "missing" for d in docs)
    if n_missing:
        print(f"frankeneval: black-image + description ({source}): {n_missing} of {len(docs)} items have no "
              "description; they are left out of this setting (listed in transfer.json's skipped_inputs)",
              file=sys.stderr)
    return n_missing


# --------------------------------------------------------------------------- prompt hooks


def mathvista_question(doc: dict) -> str:
    """The question and, for multiple choice, a blank line, ``Choices:`` and ``A. …`` lines."""
    return doc["question"] + _choices_block(doc.get("choices"))


def blackdesc_text(description: str, question: str) -> str:
    """The black + description prompt (docs/method.md): the step-by-step prefix, a blank line, ``Image Description:``,
    newline, the description, blank line, ``Question:``, newline, the question (with its choices)."""
    return f"{INSTRUCTION}\n\nImage Description:\n{description}\n\nQuestion:\n{question}"


def mathvista_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    if doc.get("control") == "blackdesc":
        return blackdesc_text(doc.get("description") or "", mathvista_question(doc))
    return f"{INSTRUCTION}\n\n{mathvista_question(doc)}"


MAX_PIXELS = 1280 * 720  # 921,600: the reference's cap on an image's pixel count (not a 1280 x 720 box)
MIN_IMAGE_SIDE = 28  # Qwen2.5-VL's smallest side (one 2 x 2 patch merge of 14-pixel patches)


def resize_steps(width: int, height: int) -> list[tuple[int, int]]:
    """The sizes an image of ``width`` x ``height`` is resized through before it is shown, as the reference does:

    1. a side below 28 px: both sides scale by ``max(28 / w, 28 / h)``, each truncated with ``int()``;
    2. then, if ``w * h > 921,600``: both sides scale by ``sqrt(921600 / (w * h))``, each truncated with ``int()``.

    Each step is one LANCZOS resize (:func:`fit_image`); an image that needs neither keeps its size (``[]``).
    E.g. 1000 x 1000 -> 960 x 960, 500 x 2000 -> 480 x 1920, 20 x 500 -> 28 x 700, 1280 x 720 and 640 x 480 kept.
    """
    w, h = int(width), int(height)
    if w <= 0 or h <= 0:
        raise FrankenevalError(f"image size must be positive, got {width}x{height}")
    steps = []
    if w < MIN_IMAGE_SIDE or h < MIN_IMAGE_SIDE:
        factor = max(MIN_IMAGE_SIDE / w, MIN_IMAGE_SIDE / h)
        w, h = max(1, int(w * factor)), max(1, int(h * factor))
        steps.append((w, h))
    if w * h > MAX_PIXELS:
        factor = math.sqrt(MAX_PIXELS / (w * h))
        w, h = max(1, int(w * factor)), max(1, int(h * factor))
        steps.append((w, h))
    return steps


def paper_image_size(width: int, height: int) -> tuple[int, int]:
    """The size an image of ``width`` x ``height`` is shown at (the last of :func:`resize_steps`, else its own)."""
    steps = resize_steps(width, height)
    return steps[-1] if steps else (int(width), int(height))


def fit_image(image):
    """``image`` resized as the reference does (:func:`resize_steps`, LANCZOS each step; the same object when no
    step applies)."""
    from PIL import Image

    for size in resize_steps(*image.size):
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def black_image(width: int, height: int):
    """An all-black RGB image of the given size."""
    from PIL import Image

    if width <= 0 or height <= 0:
        raise FrankenevalError(f"black-image control needs the image size, got {width}x{height}")
    return Image.new("RGB", (int(width), int(height)), (0, 0, 0))


def mathvista_doc_to_visual(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list:
    """The image resized as the paper (:func:`paper_image_size`); for the controls, a black image of that size."""
    if doc.get("control") in ("black", "blackdesc"):
        w, h = int(doc.get("img_width") or 0), int(doc.get("img_height") or 0)
        if w <= 0 or h <= 0:
            raise FrankenevalError(f"black-image control needs the image size (metadata img_width / img_height), "
                                   f"got {w}x{h} for pid {doc.get('pid')}")
        return [black_image(*paper_image_size(w, h))]
    return [fit_image(common.open_image(doc))]


# --------------------------------------------------------------------------- scoring hooks


def mathvista_process_results(doc: dict, results: list[str], settings: TaskSettings | None = None) -> dict:
    """``rule_acc`` (the rules: only a stated final answer counts, see
    :func:`frankeneval.tasks.mathvista.scoring.mathvista_rule_verdict`; an answer
    that hit ``max_new_tokens`` is credited only from a tag or box), ``judge_acc`` / ``judge_error`` with the
    judge on (``grading: paper`` rules first, or ``seed``: then ``rule_acc`` is the reference's rule check and the
    judge sees the reference's extraction, :func:`common.judge_fields`), and ``mathvista_acc`` with
    ``extraction: mathvista``
    (MathVista's own extraction then normalization, :func:`mathvista_protocol`)."""
    settings = settings or TaskSettings.resolve()
    response = results[0] if results else ""
    truncated = bool(getattr(response, "hit_limit", None))
    choices = list(doc.get("choices") or [])
    v = mathvista_rule_verdict(response, doc, truncated=truncated)
    ok, pred, extracted, method = v["correct"], v["prediction"], v["extracted"], v["method"]
    out: dict[str, Any] = {"rule_acc": {"id": doc["id"], "score": int(ok), "prediction": pred, "target": doc["target"],
                                        "extracted": extracted, "method": method, "verdict": v["verdict"],
                                        "truncated": truncated, "category": doc.get("category", ""),
                                        "control": doc.get("control", "image")}}
    if doc.get("control") == "blackdesc":
        out["rule_acc"]["description_source"] = doc.get("description_source", "")
    if settings.grading == "seed":  # the reference's extraction and rule check
        out["rule_acc"] = {**common.seed_rule_acc(doc["id"], str(response), doc["target"], choices),
                           "truncated": truncated, "category": doc.get("category", ""),
                           "control": doc.get("control", "image"),
                           **({"description_source": doc.get("description_source", "")}
                              if doc.get("control") == "blackdesc" else {})}
        ok = bool(out["rule_acc"]["score"])
    if settings.judge:
        out.update(common.judge_fields(settings, doc["id"], ok, doc["question"], choices, doc["target"], response,
                                       full_question=mathvista_question(doc)))
    if settings.extraction == "mathvista":
        out["mathvista_acc"] = mathvista_protocol(doc, str(response), settings)
    return out


def mathvista_protocol(doc: dict, response: str, settings: TaskSettings) -> dict:
    """One item scored by MathVista's own protocol: its quick rules, else the LLM extraction (few-shot prompt, sent
    by the judge client), then its normalization and exact comparison. An extraction call that fails is a
    ``judge_error`` (no ``score``: not counted wrong)."""
    extraction = scoring.mathvista_quick_extract(response, doc)
    how = "quick"
    if extraction is None:
        from frankeneval.evaluation.grading import JudgeUnavailable

        try:
            extraction = common.get_judge(settings).extract_mathvista(
                scoring.mathvista_extraction_prompt(doc, response))
            how = "llm"
        except JudgeUnavailable as exc:
            return {"id": doc["id"], "judge_error": True, "reason": str(exc)[:240]}
    ok, prediction = scoring.mathvista_official_correct(extraction, doc)
    return {"id": doc["id"], "score": int(ok), "extraction": extraction, "prediction": prediction, "extracted_by": how}
