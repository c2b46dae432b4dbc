"""lm-eval hooks of ``franken_gsm8k`` and ``franken_math500``: the lmms-eval task folders' own data, prompt and
scoring functions (``frankeneval.tasks.gsm8k.utils``, ``frankeneval.tasks.math500.utils``) behind an lm-eval task
class, so the two harnesses score the same docs with the same prompts the same way.

Settings as the lmms-eval tasks (:class:`frankeneval.tasks.common.TaskSettings`): the task ``metadata`` (lm-eval's
``--metadata``), then ``$FRANKENEVAL_DATA``, ``$FRANKENEVAL_SAMPLE_SIZE`` (100; 0 = all), ``$FRANKENEVAL_JUDGE``...
"""

from __future__ import annotations

from lm_eval.api.task import ConfigurableTask

from frankeneval.errors import FrankenevalError
from frankeneval.tasks.common import TaskSettings, count, mean_score  # noqa: F401 - YAML hooks
from frankeneval.tasks.gsm8k import utils as gsm8k
from frankeneval.tasks.math500 import utils as math500

gsm8k_doc_to_text = gsm8k.gsm8k_doc_to_text
gsm8k_process_results = gsm8k.gsm8k_process_results
math500_doc_to_text = math500.math500_doc_to_text
math500_process_results = math500.math500_process_results


class FrankenLMTask(ConfigurableTask):
    """An lm-eval ConfigurableTask whose docs come from a task folder's ``build_docs`` (local data or the hub)."""

    def __init__(self, *args, config: dict | None = None, **kwargs) -> None:
        if config is not None:
            config = dict(config)
            config.pop("class", None)
        super().__init__(*args, config=config, **kwargs)

    @staticmethod
    def build_docs(spec: dict, settings: TaskSettings) -> list[dict]:
        raise NotImplementedError

    def download(self, dataset_kwargs: dict | None = None, **kwargs) -> None:
        import datasets

        self.settings = TaskSettings.resolve(self.config.metadata if isinstance(self.config.metadata, dict) else None)
        docs = self.build_docs(dict(dataset_kwargs or {}), self.settings)
        if not docs:
            raise FrankenevalError(f"task {self.config.task}: no items selected")
        self.dataset = datasets.DatasetDict({self.config.test_split: datasets.Dataset.from_list(docs)})

    def process_results(self, doc, results):
        results = [r.strip() if isinstance(r, str) else "" for r in results]
        return self.config.process_results(doc, results, settings=getattr(self, "settings", None))


class FrankenGsm8k(FrankenLMTask):
    build_docs = staticmethod(gsm8k.build_docs)


class FrankenMath500(FrankenLMTask):
    build_docs = staticmethod(math500.build_docs)
