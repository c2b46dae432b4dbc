"""Generation as the paper's (issue 18, deliverables 4 and 7): image sizes, the black + description prompt, the
token budget and the answers that hit it, and the world's paired controls for the demo's M_vis / M_v2r / M_rea."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from frankeneval.miniature import world

ROOT = Path(__file__).resolve().parents[1]
PREFIX = 'Please solve the problem step by step and put your answer in one "\\boxed{}".'


# --------------------------------------------------------------------------- MathVista images


@pytest.mark.parametrize("size, shown", [
    ((1000, 1000), (960, 960)),    # 1e6 px > 921,600: x sqrt(0.9216) = x 0.96 (a 1280 x 720 box would give 720 x 720)
    ((500, 2000), (480, 1920)),    # x 0.96 again (a box would give 180 x 720)
    ((20, 500), (28, 700)),        # side < 28: x max(28/20, 28/500) = x 1.4; 19,600 px, no second step
    ((1280, 720), (1280, 720)),    # exactly the cap: kept
    ((640, 480), (640, 480)),      # small images are not enlarged
    ((1281, 720), (1280, 719)),    # 922,320 px: x 0.99961 -> 1280.50, 719.72, truncated
    ((2000, 1000), (1357, 678)),   # x sqrt(0.4608) = 0.678823 -> 1357.65, 678.82, truncated
    ((10, 10), (28, 28)),          # Qwen2.5-VL's smallest side
])
def test_images_are_shown_within_the_reference_pixel_cap(size, shown):
    from frankeneval.tasks.mathvista.utils import paper_image_size

    assert paper_image_size(*size) == shown


def test_small_then_large_takes_both_steps():
    from frankeneval.tasks.mathvista.utils import resize_steps

    # 50,000 x 20: up x 1.4 to 70,000 x 28 (1.96 M px), then down x sqrt(921600 / 1.96e6) = 0.685714 -> 48000 x 19
    assert resize_steps(50_000, 20) == [(70_000, 28), (48_000, 19)]


def test_doc_to_visual_resizes_the_image_and_its_black_copy(tmp_path):
    from frankeneval.tasks.mathvista.utils import mathvista_doc_to_visual

    path = tmp_path / "1.jpg"
    Image.new("RGB", (2000, 1000), (200, 10, 10)).save(path)
    doc = {"pid": "1", "image_path": str(path), "decoded_image": None, "img_width": 2000, "img_height": 1000,
           "control": "image"}
    (img,) = mathvista_doc_to_visual(doc)
    assert img.size == (1357, 678)
    small = tmp_path / "2.jpg"
    Image.new("RGB", (300, 200), (200, 10, 10)).save(small)
    (img,) = mathvista_doc_to_visual({**doc, "image_path": str(small), "img_width": 300, "img_height": 200})
    assert img.size == (300, 200)
    for control in ("black", "blackdesc"):
        (black,) = mathvista_doc_to_visual({**doc, "control": control, "img_width": 500, "img_height": 2000})
        assert black.size == (480, 1920) and black.getextrema() == ((0, 0), (0, 0), (0, 0))


# --------------------------------------------------------------------------- MathVista prompts


def _doc(**kw) -> dict:
    return {"question": "Which bar is tallest?", "choices": ["red", "blue"], "control": "image", "description": "",
            **kw}


def test_multiple_choice_layout_is_exact():
    from frankeneval.tasks.mathvista.utils import mathvista_doc_to_text

    assert mathvista_doc_to_text(_doc()) == f"{PREFIX}\n\nWhich bar is tallest?\n\nChoices:\nA. red\nB. blue"
    assert mathvista_doc_to_text(_doc(choices=[])) == f"{PREFIX}\n\nWhich bar is tallest?"


def test_black_description_prompt_is_exact():
    """docs/method.md: the step-by-step prefix, then ``Image Description:``, newline, the description, blank line,
    ``Question:``, newline, the question."""
    from frankeneval.tasks.mathvista.utils import mathvista_doc_to_text

    doc = _doc(control="blackdesc", description="A bar chart with a red and a blue bar.")
    assert mathvista_doc_to_text(doc) == (
        f"{PREFIX}\n\nImage Description:\nA bar chart with a red and a blue bar.\n\n"
        "Question:\nWhich bar is tallest?\n\nChoices:\nA. red\nB. blue")


# --------------------------------------------------------------------------- generation settings


def _yaml(path: Path) -> dict:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")
    return yaml.load(path.read_text(), Loader=Loader)


@pytest.mark.parametrize("path", ["tasks/mathvista/_default_template.yml", "tasks/math500/franken_math500.yaml",
                                  "tasks/gsm8k/franken_gsm8k.yaml"])
def test_real_benchmarks_generate_greedily_up_to_8192_tokens_and_count_hit_limit(path):
    cfg = _yaml(ROOT / path)
    gk = cfg["generation_kwargs"]
    assert gk["max_new_tokens"] == 8192 and gk["temperature"] == 0 and gk["do_sample"] is False
    metric = next(m for m in cfg["metric_list"] if m["metric"] == "hit_limit")
    assert metric["aggregation"] == "!function utils.count"


def test_world_and_probe_tasks_count_hit_limit_too():
    for path in ("tasks/franken_world/_default_template.yml", "tasks/probes/_default_template.yml"):
        assert any(m["metric"] == "hit_limit" for m in _yaml(ROOT / path)["metric_list"]), path


class _Out:
    def __init__(self, text, reason):
        self.text, self.finish_reason = text, reason


class _FakeGenerator:
    def generate(self, requests, *, stop, batch_size, interventions, max_new_tokens, **kw):
        return [_Out(r, "length" if len(r) > max_new_tokens else "stop") for r in requests]


def test_generate_grouped_reports_each_finish_reason():
    from frankeneval.model_wrappers.model_args import generate_grouped

    prompts = ["short", "a much longer answer", "tiny"]
    settings = [{"max_new_tokens": 8}, {"max_new_tokens": 8}, {"max_new_tokens": 2}]
    texts = generate_grouped(_FakeGenerator(), lambda i: prompts[i], settings, [[]] * 3, batch_size=1,
                             interventions=None)
    assert texts == prompts and [t.finish_reason for t in texts] == ["stop", "length", "length"]


def test_scoring_records_hit_limit_per_item():
    """The finish reason each response carries reaches the task's scoring: a per-item ``hit_limit`` (summed by
    ``count``) and a response that knows it was cut off; a response that says nothing -> no ``hit_limit`` (unknown,
    not 0). (tests/test_task_classes.py: the same through lmms-eval's own instances and filters.)"""
    from frankeneval.model_wrappers.model_args import GeneratedText
    from frankeneval.tasks.common import count
    from task_doubles import local_task

    seen = []

    def process_results(doc, results, settings=None):
        seen.append(results[0])
        return {"rule_acc": {"id": doc["id"], "score": 0}}

    task = local_task("fe_hit_limit_test", process_results, ["rule_acc", "hit_limit"],
                      [GeneratedText(" answer ", "length"), GeneratedText(" answer ", "stop"), " answer "])
    out = [task.score({"id": k}, [str(inst.filtered_resps["none"])]) for k, inst in zip("abc", task.instances)]
    assert [o.get("hit_limit") for o in out] == [1, 0, None]
    assert [r.hit_limit for r in seen] == [True, False, None] and seen[0] == "answer"
    assert count([o["hit_limit"] for o in out if "hit_limit" in o]) == 1


def test_lmms_eval_results_count_answers_that_hit_the_limit(tiny_lineage, tmp_path):
    """End to end: franken_qwen on a world task with a 2-token budget; the random tiny model never stops that early,
    so every answer is cut off and the results say so (``hit_limit`` = the number of items)."""
    from test_wrapper_cli import lmms_eval_exe, results_json, run

    root = world.write_world(tmp_path / "w", seed=0, sizes={"perception": 3, "alignment": 3, "reasoning": 3})
    out = tmp_path / "out"
    run([lmms_eval_exe(), "--model", "franken_qwen", "--model_args",
         f"pretrained={tiny_lineage.rl},device=cpu,dtype=float32,system_prompt=none",
         "--tasks", "franken_world_alignment_black", "--include_path", str(ROOT / "tasks"),
         "--gen_kwargs", "max_new_tokens=2", "--output_path", str(out), "--log_samples"],
        cwd=tmp_path, extra_env={"FRANKENEVAL_WORLD": str(root), "FRANKENEVAL_SAMPLE_SIZE": "0"})
    res = results_json(out)["results"]["franken_world_alignment_black"]
    assert res["hit_limit,none"] == 3


# --------------------------------------------------------------------------- the world's controls


def test_world_description_names_everything_a_question_needs():
    scene = [world.Obj(0, "circle", "red"), world.Obj(4, "digit", value=4), world.Obj(5, "square", "red"),
             world.Obj(8, "triangle", "blue")]
    assert world.describe_scene(scene) == (
        "Objects: red circle at top left, number 4 at center, red square at right, blue triangle at bottom right. "
        "Red shapes: 2. Green shapes: 0. Blue shapes: 1. Yellow shapes: 0. Circles: 1. Squares: 1. Triangles: 1. "
        "Number written: 4.")
    assert world.describe_scene([]).endswith("Number written: none.")
    # every held-out alignment item: the description states the digit and the count the question asks about
    for it in world.world_items("test", "alignment", 60):
        desc = world.describe_scene(it.scene)
        digit = next(o.value for o in it.scene if o.shape == "digit")
        assert f"Number written: {digit}." in desc
        what = it.question.split("number of ")[1].split(" by")[0].rstrip(".")  # "red shapes" / "circles"
        n = int(desc.split(f"{what.capitalize()}: ")[1].split(".")[0])
        assert int(it.answer) == (n * digit if it.task == "multiply" else n + digit)


def test_world_control_tasks_pair_with_their_image_tasks(tmp_path, monkeypatch):
    """franken_world_{perception,alignment}_black and franken_world_alignment_blackdesc: the image task's items
    (same doc ids and order), an all-zero image of the same size, and the description prompt laid out as MathVista's."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    root = world.write_world(tmp_path / "w", seed=0, sizes={"perception": 30, "alignment": 30, "reasoning": 3})
    monkeypatch.setenv("FRANKENEVAL_WORLD", str(root))
    monkeypatch.setenv("FRANKENEVAL_SAMPLE_SIZE", "10")
    tm = TaskManager("ERROR", include_path=str(ROOT / "tasks"))
    pairs = {"franken_world_perception_black": "franken_world_perception",
             "franken_world_alignment_black": "franken_world_alignment",
             "franken_world_alignment_blackdesc": "franken_world_alignment"}
    group = _yaml(ROOT / "tasks/franken_world/franken_world.yaml")["task"]
    assert set(pairs) <= set(group) and set(pairs) <= set(tm.all_tasks)
    tasks = get_task_dict([*pairs, *set(pairs.values())], tm)
    rows = {r["id"]: r for axis in ("perception", "alignment") for r in world.read_world(root, axis)}
    for control, image_task in pairs.items():
        c, t = tasks[control], tasks[image_task]
        cdocs, tdocs = c.test_docs(), t.test_docs()
        assert len(cdocs) == 10 and [d["id"] for d in cdocs] == [d["id"] for d in tdocs]
        for cd, td in zip(cdocs, tdocs):
            (black,) = c.doc_to_visual(cd)
            (img,) = t.doc_to_visual(td)
            assert black.size == img.size == (world.CANVAS, world.CANVAS)
            assert black.getextrema() == ((0, 0), (0, 0), (0, 0)) and img.getextrema() != ((0, 0), (0, 0), (0, 0))
            assert c.doc_to_target(cd) == t.doc_to_target(td)
            row = rows[cd["id"]]
            if control.endswith("_blackdesc"):
                desc = world.describe_scene(world.scene_from_json(row["meta"]["scene"]))
                assert c.doc_to_text(cd) == (f"{PREFIX}\n\nImage Description:\n{desc}\n\nQuestion:\n{row['question']}")
            else:
                assert c.doc_to_text(cd) == t.doc_to_text(td) == row["prompt"]
            good = row["answer"] if row["axis"] == "perception" else f"\\boxed{{{row['answer']}}}"
            scored = c.process_results(cd, [good])
            assert scored["rule_acc"]["score"] == 1 and scored["rule_acc"]["id"] == cd["id"]


def test_world_controls_leave_the_written_split_unchanged(tmp_path):
    """The controls are computed from the written rows: the held-out split, its files and the world version (part
    of the trained lineage's cache key) stay as they were."""
    from frankeneval.miniature import training

    assert world.WORLD_VERSION == 1 and training.TRAINED_VERSION == 4
    root = world.write_world(tmp_path / "w", seed=0, sizes={"perception": 4, "alignment": 4, "reasoning": 2})
    row = json.loads((root / "alignment" / "test.jsonl").read_text().splitlines()[0])
    assert set(row) == {"id", "axis", "task", "question", "prompt", "answer", "image", "meta"}
