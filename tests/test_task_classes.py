"""The task classes are plain class statements (issue 31), and an answer's finish reason travels with the answer
itself from the model wrapper to the task's scoring (its ``hit_limit``): no module-global record in between."""

from __future__ import annotations

import ast
import json
import pickle
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from frankeneval.model_wrappers.model_args import GeneratedText
from frankeneval.tasks.common import LocalDocsTask

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"gsm8k": "Gsm8kTask", "math500": "Math500Task", "mathvista": "MathVistaTask", "probes": "ProbeTask",
           "franken_world": "WorldTask"}


# --------------------------------------------------------------------------- explicit classes


def test_every_task_yaml_names_a_class_statement_of_its_folders_task_module():
    named = {}
    for f in sorted((ROOT / "tasks").rglob("*.y*ml")):
        m = re.search(r"^class: !function (\w+)\.(\w+)\s*$", f.read_text(encoding="utf-8"), re.MULTILINE)
        if m:
            named[f.relative_to(ROOT / "tasks").as_posix()] = (f.parent.name, m.group(1), m.group(2))
    assert {folder for folder, _, _ in named.values()} == set(FOLDERS)
    for where, (folder, module, cls) in named.items():
        assert (module, cls) == ("task", FOLDERS[folder]), where
        tree = ast.parse((ROOT / "tasks" / folder / "task.py").read_text(encoding="utf-8"))
        assert cls in {n.name for n in tree.body if isinstance(n, ast.ClassDef)}, where


def test_no_task_module_builds_classes_or_attributes_on_first_use():
    """No module ``__getattr__`` (PEP 562) and no ``type(...)``-made class anywhere in the task code."""
    for f in [*sorted((ROOT / "tasks").rglob("*.py")), ROOT / "lm_eval_tasks" / "utils.py"]:
        tree = ast.parse(f.read_text(encoding="utf-8"))
        top = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        top |= {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "__getattr__" not in top, f
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                 and n.func.id == "type" and len(n.args) == 3]
        assert not calls, f


# --------------------------------------------------------------------------- the finish reason


def test_generated_text_is_the_plain_string_to_the_harness():
    t = GeneratedText("the answer", "length")
    assert t == "the answer" and isinstance(t, str) and t.finish_reason == "length"
    assert json.dumps([t]) == json.dumps(["the answer"]) and repr(t) == repr("the answer")
    assert str(t) == "the answer" and type(str(t)) is str
    back = pickle.loads(pickle.dumps(t))  # lmms-eval gathers samples across ranks by pickling them
    assert back == "the answer" and back.finish_reason == "length"
    assert GeneratedText("x").finish_reason is None


class _Harness:
    """What both harnesses' ConfigurableTask give the mixin: ``instances``, ``eval_docs`` and ``apply_filters``
    (here the default ``take_first``, then the text rebuilt as lmms-eval's reasoning-tag stripping does)."""

    def apply_filters(self):
        for inst in self.instances:
            inst.filtered_resps["none"] = str(inst.resps[0]).strip()


class _Task(LocalDocsTask, _Harness):
    pass


def _task(name: str, answers: dict[str, object]) -> _Task:
    def process_results(doc, results, settings=None):
        return {"rule_acc": {"id": doc["id"], "score": 1}, "seen": (str(results[0]), results[0].hit_limit)}

    task = _Task.__new__(_Task)
    task.config = SimpleNamespace(task=name, process_results=process_results,
                                  metric_list=[{"metric": "rule_acc"}, {"metric": "hit_limit"}])
    task.eval_docs = [{"id": k} for k in answers]
    task.instances = [SimpleNamespace(doc_id=i, resps=[r], filtered_resps={}) for i, r in enumerate(answers.values())]
    return task


def test_each_response_brings_its_own_finish_reason_to_the_task_hook():
    """Two tasks of the same name over the same doc ids, whose answers ended the other way round, scored
    interleaved: each item gets its own response's reason (a module-global record keyed by task and doc would
    mix them up), and nothing is left anywhere but on the task objects."""
    import frankeneval.tasks.common as common

    import frankeneval.engine.generation as generation

    a = _task("franken_same", {"x": GeneratedText("ans x", "length"), "y": GeneratedText("ans y", "stop")})
    b = _task("franken_same", {"x": GeneratedText("ans x", "stop"), "y": GeneratedText("ans y", "length"),
                               "z": "cached answer"})  # a cached / other model's answer: a plain str
    a.apply_filters()
    b.apply_filters()
    scored = [(t, k, t.score({"id": k}, [t.instances[i].filtered_resps["none"]]))
              for i, k in enumerate("xy") for t in (a, b)]
    got = {(("a" if t is a else "b"), k): (out.get("hit_limit"), out["seen"]) for t, k, out in scored}
    assert got == {("a", "x"): (1, ("ans x", True)), ("b", "x"): (0, ("ans x", False)),
                   ("a", "y"): (0, ("ans y", False)), ("b", "y"): (1, ("ans y", True))}
    z = b.score({"id": "z"}, [b.instances[2].filtered_resps["none"]])
    assert "hit_limit" not in z and z["seen"] == ("cached answer", None)  # unknown, not 0
    for name in ("_HIT_LIMIT", "record_hit_limit", "hit_limit_of"):
        assert not hasattr(generation, name)
    assert not [v for v in vars(common).values() if isinstance(v, dict) and any(
        isinstance(key, tuple) and "franken_same" in key for key in v)]


def test_a_response_that_says_nothing_leaves_hit_limit_out():
    t = _task("franken_plain", {"x": "plain"})
    t.apply_filters()
    assert t.finish_reasons == {} and "hit_limit" not in t.score({"id": "x"}, ["plain"])


def test_finish_reason_reaches_process_results_through_lmms_eval(tmp_path, monkeypatch):
    """lmms-eval's own evaluator (its default CLI settings: ``--reasoning_tags`` on, which rebuilds each response
    as a new plain string before ``process_results``): a model returning GeneratedText answers gets a per-item
    ``hit_limit`` from each answer's own reason, and the samples are those of the same answers as plain strings
    but for that ``hit_limit``."""
    pytest.importorskip("lmms_eval")
    import sys

    from lmms_eval import evaluator
    from lmms_eval.__main__ import parse_eval_args
    from lmms_eval.api.model import lmms
    from lmms_eval.tasks import TaskManager, get_task_dict

    from frankeneval.miniature import world

    root = world.write_world(tmp_path / "w", seed=0, sizes={"perception": 4, "alignment": 4, "reasoning": 3})
    monkeypatch.setenv("FRANKENEVAL_WORLD", str(root))
    monkeypatch.setenv("FRANKENEVAL_SAMPLE_SIZE", "0")
    monkeypatch.setattr(sys, "argv", ["lmms_eval"])
    _, cli_args = parse_eval_args()
    assert cli_args.reasoning_tags  # on by default

    class Fake(lmms):
        def __init__(self, carry: bool):
            super().__init__()
            self.carry = carry

        def generate_until(self, requests):
            out = []
            for r in requests:
                doc_id = r.args[3]
                text = f"<think>step {doc_id}</think> answer {doc_id} "
                out.append(GeneratedText(text, "length" if doc_id % 2 else "stop") if self.carry else text)
            return out

        def loglikelihood(self, requests):
            raise NotImplementedError

        def generate_until_multi_round(self, requests):
            raise NotImplementedError

    tm = TaskManager("ERROR", include_path=str(ROOT / "tasks"))
    runs = {}
    for carry in (True, False):
        tasks = get_task_dict(["franken_world_perception", "franken_world_alignment"], tm)
        runs[carry] = evaluator.evaluate(lm=Fake(carry), task_dict=tasks, cli_args=cli_args, log_samples=True,
                                         bootstrap_iters=0)
    for name in ("franken_world_perception", "franken_world_alignment"):
        assert runs[True]["results"][name]["hit_limit,none"] == 2
        assert "hit_limit,none" not in runs[False]["results"][name]
        with_reason = runs[True]["samples"][name]
        assert [s["hit_limit"] for s in with_reason] == [0, 1, 0, 1]
        assert [s["filtered_resps"] for s in with_reason] == [[f"answer {i}"] for i in range(4)]
        dump = json.dumps([{k: v for k, v in s.items() if k != "hit_limit"} for s in with_reason], sort_keys=True,
                          default=str)
        assert dump == json.dumps(runs[False]["samples"][name], sort_keys=True, default=str)
