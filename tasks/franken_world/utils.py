"""lmms-eval hooks of the rendered world's tasks (data and answers from :mod:`frankeneval.miniature.world`).

``dataset_kwargs``: ``axis`` (perception, alignment, reasoning) and ``control`` (absent = the image; ``black``: an
all-black image of the item image's size; ``blackdesc``: the black image, and the prompt gives the world's own exact
description of the scene, :func:`frankeneval.miniature.world.describe_scene`, before the question). A control task has
the same items, in the same order and with the same ``id`` s, as its image task: the paired settings of docs/method.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from frankeneval.tasks.common import DEFAULT_SAMPLE_SEED, count, mean_score  # noqa: F401 - YAML hooks

from frankeneval.errors import FrankenevalError
from frankeneval.evaluation.data import subsample_indices
from frankeneval.miniature import world


def world_root(metadata: dict | None) -> Path:
    """The folder with ``<axis>/test.jsonl``: metadata ``world_dir``, ``$FRANKENEVAL_WORLD``, else the cache
    (written there on first use; the split is a pure function of ``world_seed``)."""
    md = metadata or {}
    explicit = md.get("world_dir") or os.environ.get("FRANKENEVAL_WORLD")
    if explicit:
        root = Path(explicit).expanduser()
        if not root.is_dir():
            raise FrankenevalError(f"world data folder {root} does not exist "
                                   "(write it with frankeneval.miniature.world.write_world)")
        return root
    return world.write_world(seed=int(md.get("world_seed", 0)))


CONTROLS = ("black", "blackdesc")


def world_docs(axis: str, metadata: dict | None, control: str | None = None) -> list[dict]:
    md = metadata or {}
    if axis not in world.AXES:
        raise FrankenevalError(f"world task axis must be one of {world.AXES}, not {axis!r}")
    control = control or None
    if control is not None and (control not in CONTROLS or axis == "reasoning"):
        raise FrankenevalError(f"world task control must be one of {CONTROLS} on an image axis, not {control!r} "
                               f"on {axis}")
    root = world_root(md)
    if not (root / axis / "test.jsonl").is_file():
        raise FrankenevalError(f"no {root / axis / 'test.jsonl'}; "
                               "write the world with frankeneval.miniature.world.write_world")
    rows = world.read_world(root, axis)
    k = int(md.get("sample_size") or os.environ.get("FRANKENEVAL_SAMPLE_SIZE") or 0)
    seed = int(md.get("sample_seed") or os.environ.get("FRANKENEVAL_SAMPLE_SEED") or DEFAULT_SAMPLE_SEED)
    docs = []
    for i in subsample_indices(len(rows), k, seed):
        r = rows[i]
        doc = {"id": r["id"], "axis": r["axis"], "task": r["task"], "prompt": r["prompt"],
               "target": r["answer"], "image_path": str(root / r["image"]) if r["image"] else "",
               "control": control or "image"}
        if control == "blackdesc":
            scene = world.scene_from_json((r.get("meta") or {}).get("scene") or [])
            doc["description"] = world.describe_scene(scene)
            doc["prompt"] = world.blackdesc_prompt(doc["description"], r["question"], boxed=r["axis"] != "perception")
        docs.append(doc)
    return docs


def world_doc_to_visual(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list:
    from PIL import Image

    if not doc.get("image_path"):
        return []
    with Image.open(doc["image_path"]) as im:
        if doc.get("control") in CONTROLS:  # the same size, every pixel 0
            return [Image.new("RGB", im.size, (0, 0, 0))]
        return [im.convert("RGB")]


def world_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["prompt"]


def world_process_results(doc: dict, results: list[str], settings=None) -> dict:
    response = results[0] if results else ""
    ok = world.is_correct(doc["task"], doc["target"], response)
    return {"rule_acc": {"id": doc["id"], "score": int(ok), "task": doc["task"], "target": doc["target"],
                         "control": doc.get("control", "image"), "response": response[:200]}}
