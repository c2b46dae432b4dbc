"""MathVista testmini hooks (``!function utils.X`` in ``franken_mathvista*.yaml``).

Data: hub ``AI4Math/MathVista`` (split ``testmini``) or ``$FRANKENEVAL_DATA/mathvista/testmini.jsonl`` with
``images/<pid>.jpg`` next to it. ``dataset_kwargs``: ``category`` (``general-vqa`` = perception,
``math-targeted-vqa`` = alignment, absent = all) and ``control`` (absent = the image; ``black``: an all-black image
of the same size; ``blackdesc``: the black image plus a text description of the real one, written by the judge or
taken from the data's ``caption_bard``, see ``description_source``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from frankeneval.core import scoring
from frankeneval.core.data import DataNotFound, load_benchmark_rows, subsample_indices
from frankeneval.errors import FrankenevalError
from frankeneval.tasks import common
from frankeneval.tasks.common import INSTRUCTION, TaskSettings, count, mean_score  # noqa: F401 - YAML hooks

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


def build_docs(spec: dict, settings: TaskSettings) -> list[dict]:
    """The (sub-sampled) docs of one MathVista task (``spec``: the YAML's ``dataset_kwargs``)."""
    control = spec.get("control") or None
    category = spec.get("category") or None
    rows = load_benchmark_rows("mathvista", settings.data_path)
    if category:
        if isinstance(rows, list):
            rows = [r for r in rows if (r.get("metadata") or {}).get("category") == category]
        else:
            rows = rows.filter(lambda m: m["category"] == category, input_columns="metadata")
    idx = subsample_indices(len(rows), settings.sample_size, settings.sample_seed)
    selected = [rows[i] for i in idx] if isinstance(rows, list) else _rows_list(rows.select(idx))
    docs = [_mathvista_doc(r, control) for r in selected]
    if control is None or control == "blackdesc":
        needs_pixels = control is None or description_source(settings) == "judge"
        missing = [d for d in docs if d["decoded_image"] is None and not Path(d["image_path"]).is_file()]
        if needs_pixels and missing:
            raise DataNotFound(
                f"MathVista images not found: {len(missing)} of {len(docs)} selected rows lack their image "
                f"(e.g. {missing[0]['image_path']}). Put the images at images/<pid>.jpg next to testmini.jsonl "
                "(the hub dataset's layout), or unset FRANKENEVAL_DATA to read AI4Math/MathVista from the hub. "
                "The black-image controls need no images."
            )
    if control == "blackdesc":
        add_descriptions(docs, settings)
    for d in docs:
        if control is not None:
            d["decoded_image"] = None  # the controls never show the image
    return docs


def __getattr__(name: str):
    """``FrankenTask`` (the YAML's ``class:``): the lmms-eval task over :func:`build_docs`, made on first use, so
    the hooks here import without lmms-eval (the lm-eval task reuses them)."""
    if name == "FrankenTask":
        return common.lmms_task(build_docs)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def description_source(settings: TaskSettings) -> str:
    """Who writes the ``blackdesc`` descriptions: ``judge`` or ``caption_bard`` (``auto``: judge if on)."""
    if settings.description_source == "auto":
        return "judge" if settings.judge else "caption_bard"
    return settings.description_source


def add_descriptions(docs: list[dict], settings: TaskSettings) -> None:
    """Fill ``description`` / ``description_source`` (judge-written and cached, or the data's ``caption_bard``)."""
    source = description_source(settings)
    judge = common.get_judge(settings) if source == "judge" else None
    for d in docs:
        if judge is not None:
            from frankeneval.core.grading import JudgeUnavailable

            try:
                d["description"], d["description_source"] = judge.describe_image(common.open_image(d)), "judge"
                continue
            except JudgeUnavailable:
                pass
        if d["caption_bard"]:
            d["description"], d["description_source"] = d["caption_bard"], "caption_bard"
        else:
            d["description"], d["description_source"] = "", "missing"
    n_missing = sum(d["description_source"] == "missing" for d in docs)
    if n_missing:
        try:
            from loguru import logger

            logger.warning(f"black-image + description: {n_missing} of {len(docs)} items have no description "
                           "(no caption_bard and no judge); they are shown with an empty description.")
        except ImportError:  # pragma: no cover
            pass


# --------------------------------------------------------------------------- prompt hooks


def mathvista_question(doc: dict) -> str:
    """The question and, for multiple choice, a blank line, ``Choices:`` and ``A. …`` lines."""
    return doc["question"] + _choices_block(doc.get("choices"))


def mathvista_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    if doc.get("control") == "blackdesc":
        return (f"{INSTRUCTION}\n\nImage Description: {doc.get('description', '')}\n\n"
                f"Question: {mathvista_question(doc)}")
    return f"{INSTRUCTION}\n\n{mathvista_question(doc)}"


def black_image(width: int, height: int):
    """An all-black RGB image of the given size."""
    from PIL import Image

    if width <= 0 or height <= 0:
        raise FrankenevalError(f"black-image control needs the image size, got {width}x{height}")
    return Image.new("RGB", (int(width), int(height)), (0, 0, 0))


def mathvista_doc_to_visual(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list:
    if doc.get("control") in ("black", "blackdesc"):
        return [black_image(doc["img_width"], doc["img_height"])]
    return [common.open_image(doc)]


# --------------------------------------------------------------------------- scoring hooks


def mathvista_process_results(doc: dict, results: list[str], settings: TaskSettings | None = None) -> dict:
    settings = settings or TaskSettings.resolve()
    response = results[0] if results else ""
    ok, pred = scoring.mathvista_correct(response, doc)
    out: dict[str, Any] = {"rule_acc": {"id": doc["id"], "score": int(ok), "prediction": pred, "target": doc["target"],
                                        "category": doc.get("category", ""), "control": doc.get("control", "image")}}
    if settings.judge:
        out.update(common.judge_fields(settings, doc["id"], ok, doc["question"], list(doc.get("choices") or []),
                                       doc["target"], response))
    return out
