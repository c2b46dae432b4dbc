"""lm-eval hooks of ``franken_gsm8k`` and ``franken_math500``: the lmms-eval task folders' own data, prompt and
scoring functions (``frankeneval.tasks.gsm8k.utils``, ``frankeneval.tasks.math500.utils``) behind an lm-eval task
class, so the two harnesses score the same docs with the same prompts the same way.

Settings as the lmms-eval tasks (:class:`frankeneval.tasks.common.TaskSettings`): the task ``metadata`` (lm-eval's
``--metadata``), then ``$FRANKENEVAL_DATA``, ``$FRANKENEVAL_SAMPLE_SIZE`` (100; 0 = all), ``$FRANKENEVAL_JUDGE``...
"""

from __future__ import annotations

from frankeneval.tasks.common import LocalDocsTask, count, judge_accuracy, mean_score  # noqa: F401 - YAML hooks
from frankeneval.tasks.gsm8k import utils as gsm8k
from frankeneval.tasks.math500 import utils as math500
from lm_eval.api.task import ConfigurableTask

gsm8k_doc_to_text = gsm8k.gsm8k_doc_to_text
gsm8k_process_results = gsm8k.gsm8k_process_results
math500_doc_to_text = math500.math500_doc_to_text
math500_process_results = math500.math500_process_results


class FrankenLMTask(LocalDocsTask, ConfigurableTask):
    """An lm-eval ConfigurableTask whose docs come from a task folder's ``build_docs`` (local data or the hub)."""

    def download(self, dataset_kwargs: dict | None = None, **kwargs) -> None:
        import datasets

        docs = self.load_docs(dataset_kwargs)
        self.dataset = datasets.DatasetDict({self.config.test_split: datasets.Dataset.from_list(docs)})

    def process_results(self, doc, results):
        return self.score(doc, results)


class FrankenGsm8k(FrankenLMTask):
    build_docs = staticmethod(gsm8k.build_docs)


class FrankenMath500(FrankenLMTask):
    build_docs = staticmethod(math500.build_docs)
