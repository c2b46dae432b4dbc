"""lmms-eval hooks of the rendered world's tasks (data and answers from :mod:`frankeneval.miniature.world`)."""

from __future__ import annotations

import os
from pathlib import Path

from frankeneval.miniature import world
from frankeneval.core.data import subsample_indices
from frankeneval.errors import FrankenevalError
from frankeneval.tasks.common import DEFAULT_SAMPLE_SEED, FrankenTask, mean_score  # noqa: F401


def world_root(metadata: dict | None) -> Path:
    """The folder with ``<axis>/test.jsonl``: metadata ``world_dir``, ``$FRANKENEVAL_WORLD``, else the cache
    (written there on first use; the split is a pure function of ``world_seed``)."""
    md = metadata or {}
    explicit = md.get("world_dir") or os.environ.get("FRANKENEVAL_WORLD")
    if explicit:
        root = Path(explicit).expanduser()
        if not root.is_dir():
            raise FrankenevalError(f"world data folder {root} does not exist (write it with frankeneval.miniature.world.write_world)")
        return root
    return world.write_world(seed=int(md.get("world_seed", 0)))


def world_docs(axis: str, metadata: dict | None) -> list[dict]:
    md = metadata or {}
    if axis not in world.AXES:
        raise FrankenevalError(f"world task axis must be one of {world.AXES}, not {axis!r}")
    root = world_root(md)
    if not (root / axis / "test.jsonl").is_file():
        raise FrankenevalError(f"no {root / axis / 'test.jsonl'}; write the world with frankeneval.miniature.world.write_world")
    rows = world.read_world(root, axis)
    k = int(md.get("sample_size") or os.environ.get("FRANKENEVAL_SAMPLE_SIZE") or 0)
    seed = int(md.get("sample_seed") or os.environ.get("FRANKENEVAL_SAMPLE_SEED") or DEFAULT_SAMPLE_SEED)
    docs = []
    for i in subsample_indices(len(rows), k, seed):
        r = rows[i]
        docs.append({"id": r["id"], "axis": r["axis"], "task": r["task"], "prompt": r["prompt"],
                     "target": r["answer"], "image_path": str(root / r["image"]) if r["image"] else ""})
    return docs


class WorldTask(FrankenTask):
    """A ConfigurableTask over the world's held-out split of one axis (``dataset_kwargs.axis``)."""

    def download(self, dataset_kwargs: dict | None = None) -> None:
        import datasets

        md = self.config.metadata if isinstance(self.config.metadata, dict) else {}
        docs = world_docs(str((dataset_kwargs or {}).get("axis")), md)
        split = self.config.test_split
        self.settings = None
        self.dataset = datasets.DatasetDict({split: datasets.Dataset.from_list(docs)})
        self.dataset_no_image = self.dataset


def world_doc_to_visual(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list:
    from PIL import Image

    if not doc.get("image_path"):
        return []
    with Image.open(doc["image_path"]) as im:
        return [im.convert("RGB")]


def world_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["prompt"]


def world_process_results(doc: dict, results: list[str], settings=None) -> dict:
    response = results[0] if results else ""
    ok = world.is_correct(doc["task"], doc["target"], response)
    return {"rule_acc": {"id": doc["id"], "score": int(ok), "task": doc["task"], "target": doc["target"],
                         "response": response[:200]}}
