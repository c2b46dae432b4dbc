"""A frankeneval task class with the harness's parts stood in: instances, eval docs and filters (for scoring tests
that need no lmms-eval run)."""

from __future__ import annotations

from types import SimpleNamespace


def local_task(name: str, process_results, metrics: list[str], responses: list, settings=None):
    """A ``LocalDocsTask`` named ``name`` over docs ``a``, ``b``, ``c``... with one response each (filters applied):
    what both harnesses' ``ConfigurableTask`` gives it (``instances``, ``eval_docs``, ``apply_filters``)."""
    from frankeneval.tasks.common import LocalDocsTask

    class Harness:
        def apply_filters(self):
            for inst in self.instances:
                inst.filtered_resps["none"] = inst.resps[0]

    class Task(LocalDocsTask, Harness):
        pass

    task = Task.__new__(Task)
    task.config = SimpleNamespace(task=name, process_results=process_results,
                                  metric_list=[{"metric": m} for m in metrics])
    if settings is not None:
        task.settings = settings
    task.eval_docs = [{"id": chr(ord("a") + i)} for i in range(len(responses))]
    task.instances = [SimpleNamespace(doc_id=i, resps=[r], filtered_resps={}) for i, r in enumerate(responses)]
    task.apply_filters()
    return task
