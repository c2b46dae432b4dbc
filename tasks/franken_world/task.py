"""The lmms-eval task class of the ``franken_world*`` YAMLs (``class: !function task.WorldTask``, in
``_default_template.yml``); imports lmms-eval, unlike the hooks in ``utils.py`` (which the preflight check reads)."""

from __future__ import annotations

from frankeneval.tasks.common import TaskSettings, checked_docs
from frankeneval.tasks.franken_world import utils
from frankeneval.tasks.lmms_task import FrankenTask


class WorldTask(FrankenTask):
    """A ConfigurableTask over the world's held-out split of one axis (``dataset_kwargs.axis``), its docs from
    :func:`frankeneval.tasks.franken_world.utils.world_docs` (settings from the task metadata, else the environment)."""

    def download(self, dataset_kwargs: dict | None = None) -> None:
        import datasets

        md = self.config.metadata if isinstance(self.config.metadata, dict) else {}
        kwargs = dataset_kwargs or {}
        docs = checked_docs(str(self.config.task), utils.world_docs(str(kwargs.get("axis")), md, kwargs.get("control")),
                            TaskSettings.resolve(md))  # every selected image decoded before any item runs
        split = self.config.test_split
        self.settings = None
        self.dataset = datasets.DatasetDict({split: datasets.Dataset.from_list(docs)})
        self.dataset_no_image = self.dataset
