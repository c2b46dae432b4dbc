"""The lmms-eval task base class of the frankeneval task folders: :class:`FrankenTask`.

Each folder's ``task.py`` subclasses it with that folder's ``build_docs`` (``gsm8k/task.py``: ``Gsm8kTask``,
``math500/task.py``: ``Math500Task``, ``mathvista/task.py``: ``MathVistaTask``, ``probes/task.py``: ``ProbeTask``,
``franken_world/task.py``: ``WorldTask``) and the folder's YAMLs name it (``class: !function task.Gsm8kTask``).

This module and those ``task.py`` files are the only task code that imports lmms-eval (about 10 s on import):
the hooks (each folder's ``utils.py``), :mod:`frankeneval.tasks.common`, the preflight check and the lm-eval tasks
(``lm_eval_tasks/``, which reuse the hooks where lmms-eval may not be installed) never do.
"""

from __future__ import annotations

from frankeneval.tasks.common import LocalDocsTask
from lmms_eval.api.task import ConfigurableTask


class FrankenTask(LocalDocsTask, ConfigurableTask):
    """A ConfigurableTask whose data come from :mod:`frankeneval.evaluation.data` (hub or local), sub-sampled as the
    paper; a folder's subclass sets :meth:`build_docs`, which makes the docs from the YAML's ``dataset_kwargs``."""

    def download(self, dataset_kwargs: dict | None = None) -> None:
        import datasets

        docs = self.load_docs(dataset_kwargs)
        has_pixels = any(d.get("decoded_image") is not None for d in docs)
        if not has_pixels:
            for d in docs:
                d.pop("decoded_image", None)
        split = self.config.test_split
        self.dataset = datasets.DatasetDict({split: datasets.Dataset.from_list(docs)})
        no_media = self.dataset[split].remove_columns(["decoded_image"]) if has_pixels else self.dataset[split]
        self.dataset_no_image = datasets.DatasetDict({split: no_media})

    def process_results(self, doc, results, full_docs=None):  # noqa: D401 - lmms-eval hook
        if results and isinstance(results[0], list):
            results = results[0]
        return self.score(doc, results)
