"""The rendered world: determinism, held-out split, answers checked against the pixels, files on disk."""

from __future__ import annotations

import json
import re
from collections import deque

import numpy as np
import pytest
from PIL import Image, ImageDraw

from frankeneval.evaluation import scoring
from frankeneval.miniature import world

N_SAMPLE = 40  # items per task checked against the pixels


# -- an independent reading of the pixels ----------------------------------------------------------
def components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as arrays of (y, x) pixels (plain BFS)."""
    seen = np.zeros_like(mask, dtype=bool)
    comps = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pix = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pix.append((y, x))
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                v, u = y + dy, x + dx
                if 0 <= v < mask.shape[0] and 0 <= u < mask.shape[1] and mask[v, u] and not seen[v, u]:
                    seen[v, u] = True
                    queue.append((v, u))
        comps.append(np.array(pix))
    return comps


def read_shapes(img: Image.Image) -> list[dict]:
    """Every coloured blob: colour (exact RGB match), shape (fill ratio of its box), box, 3x3 cell of its centre."""
    a = np.asarray(img)
    found = []
    for name, rgb in world.COLOURS.items():
        for comp in components(np.all(a == rgb, axis=-1)):
            ys, xs = comp[:, 0], comp[:, 1]
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            fill = len(comp) / ((box[2] - box[0]) * (box[3] - box[1]))
            shape = "square" if fill > 0.95 else "circle" if fill > 0.65 else "triangle"
            cell = int(ys.mean() // 28) * 3 + int(xs.mean() // 28)
            found.append({"colour": name, "shape": shape, "box": box, "cell": cell, "area": len(comp)})
    return found


def read_digit(img: Image.Image) -> int | None:
    """The written digit: dark pixels matched against each digit drawn alone in the same cell."""
    a = np.asarray(img)
    dark = np.all(a < 100, axis=-1)
    if not dark.any():
        return None
    ys, xs = np.nonzero(dark)
    r, c = int(ys.mean() // 28), int(xs.mean() // 28)
    best, best_score = None, -1.0
    for d in range(10):
        ref = Image.new("L", img.size, 255)
        ImageDraw.Draw(ref).text((c * 28 + 14, r * 28 + 14), str(d), fill=0, font=world._font(), anchor="mm")
        ref_dark = np.asarray(ref) < 100
        score = (ref_dark & dark).sum() / (ref_dark | dark).sum()
        if score > best_score:
            best, best_score = d, score
    return best


def _count_asked(question: str, shapes: list[dict]) -> int:
    m = re.search(r"(red|green|blue|yellow) shapes", question)
    if m:
        return sum(s["colour"] == m.group(1) for s in shapes)
    m = re.search(r"(circle|square|triangle)s\b", question)
    assert m, question
    return sum(s["shape"] == m.group(1) for s in shapes)


def independent_answer(item: world.WorldItem) -> str:
    """The answer of a rendered item computed from its pixels and its question text only."""
    img = item.image()
    assert img is not None and img.size == (world.CANVAS, world.CANVAS)
    shapes, q = read_shapes(img), item.question
    if item.task == "count":
        return str(_count_asked(q, shapes))
    if item.task == "ocr":
        return str(read_digit(img))
    if item.task == "multiply":
        return str(_count_asked(q, shapes) * read_digit(img))
    if item.task == "add":
        return str(_count_asked(q, shapes) + read_digit(img))
    m = re.search(r"(red|green|blue|yellow) (circle|square|triangle)", q)
    if item.task == "colour":
        shape = re.search(r"colour is the (\w+)\?", q).group(1)
        (hit,) = [s for s in shapes if s["shape"] == shape]
        return hit["colour"]
    if item.task == "yesno":
        return "Yes" if any((s["colour"], s["shape"]) == m.groups() for s in shapes) else "No"
    (hit,) = [s for s in shapes if (s["colour"], s["shape"]) == m.groups()]
    if item.task == "position":
        return world.POSITIONS[hit["cell"]]
    if item.task == "box":
        return ",".join(map(str, hit["box"]))
    raise AssertionError(item.task)


def word_problem_answer(question: str) -> str:
    a, b = map(int, re.findall(r"\d+", question))
    if "in each" in question:
        return str(a * b)
    if "more" in question:
        return str(a + b)
    assert "gives away" in question
    return str(a - b)


# -- tests -----------------------------------------------------------------------------------------
def test_generator_is_deterministic():
    for axis in (*world.AXES, "pretrain"):
        a = world.world_items("train", axis, 12, seed=3)
        b = world.world_items("train", axis, 12, seed=3)
        assert [(i.id, i.question, i.answer, i.scene) for i in a] == [(i.id, i.question, i.answer, i.scene) for i in b]
        for x, y in zip(a, b):
            if x.has_image:
                assert x.image().tobytes() == y.image().tobytes()
    other = world.world_items("train", "alignment", 12, seed=4)
    assert [i.key() for i in other] != [i.key() for i in world.world_items("train", "alignment", 12, seed=3)]


def test_item_is_pure_function_of_its_index():
    """Item i does not depend on how many items are drawn (streams can be resumed and extended)."""
    long = world.world_items("test", "perception", 30, seed=0)
    short = world.world_items("test", "perception", 12, seed=0)
    assert [i.key() for i in long[:12]] == [i.key() for i in short]


def test_held_out_split_is_disjoint_from_train():
    for axis in world.AXES:
        train = {i.key() for i in world.world_items("train", axis, 600, seed=0)}
        test = world.world_items("test", axis, 150, seed=0)
        assert all(world.split_of(i) == "test" for i in test)
        assert not train & {i.key() for i in test}


@pytest.mark.parametrize("task", [t for axis in ("perception", "alignment") for t in world.AXIS_TASKS[axis]])
def test_rendered_answers_match_the_pixels(task):
    items = [world.world_item(0, split, task, i) for split in ("train", "test") for i in range(N_SAMPLE // 2)]
    answers = {it.answer for it in items}
    assert len(answers) > 1, f"{task}: degenerate answers {answers}"
    for it in items:
        assert independent_answer(it) == it.answer, (it.id, it.question, it.scene)


def test_shapes_are_separate_and_fill_their_cells():
    for it in world.world_items("train", "perception", 60, seed=1):
        shapes = read_shapes(it.image())
        n_shapes = sum(o.shape != "digit" for o in it.scene)
        assert len(shapes) == n_shapes  # one blob per drawn shape: no overlaps, no anti-aliasing
        for s in shapes:
            x1, y1, x2, y2 = world.cell_box(s["cell"])
            assert s["box"][0] >= x1 and s["box"][1] >= y1 and s["box"][2] <= x2 and s["box"][3] <= y2
            assert scoring.box_iou(s["box"], (x1, y1, x2, y2)) >= 0.9


def test_word_problems_and_worked_solutions():
    for it in world.world_items("train", ("word", "arithmetic"), 80, seed=0):
        if it.task == "word":
            assert word_problem_answer(it.question) == it.answer
            assert it.prompt.startswith(world.MATH_PROMPT) and it.target().endswith(f"\\boxed{{{it.answer}}}")
        else:
            a, op, b = re.match(r"What is (\d) ([*+-]) (\d)\?", it.question).groups()
            assert str(eval(f"{a}{op}{b}")) == it.answer  # noqa: S307 - digits and one operator
            assert it.target() == it.answer
    for it in world.world_items("train", "alignment", 20, seed=0):
        assert it.target().endswith(f"\\boxed{{{it.answer}}}") and it.target(worked=False) == f"\\boxed{{{it.answer}}}"
        # the worked solution's last equation computes the answer
        lhs, rhs = re.search(r"(\d+ [*+] \d+) = (\d+)\.$", it.solution).groups()
        assert str(eval(lhs)) == rhs == it.answer  # noqa: S307


def test_answer_checks_use_the_shared_rules():
    assert world.is_correct("multiply", "12", "2 red shapes, number 6. 2 * 6 = 12. \\boxed{12}")
    assert not world.is_correct("multiply", "12", "2 * 6 = 12. \\boxed{13}")
    assert world.is_correct("word", "7", "7")
    assert world.is_correct("position", "top left", "Top left.")
    assert not world.is_correct("position", "top left", "top")
    assert world.is_correct("yesno", "Yes", "yes")
    assert world.is_correct("box", "3,3,25,25", "3,3,25,25")
    assert not world.is_correct("box", "3,3,25,25", "31,3,53,25")
    assert world.is_correct("count", "0", "0") and not world.is_correct("count", "0", "1")


def test_write_world_roundtrip(tmp_path):
    sizes = {"perception": 12, "alignment": 6, "reasoning": 5}
    root = world.write_world(tmp_path / "w", seed=0, sizes=sizes)
    for axis, n in sizes.items():
        rows = world.read_world(root, axis)
        assert len(rows) == n
        items = world.world_items("test", axis, n, seed=0)
        for row, it in zip(rows, items):
            assert (row["id"], row["answer"], row["prompt"]) == (it.id, it.answer, it.prompt)
            if axis == "reasoning":
                assert row["image"] is None
            else:
                with Image.open(root / row["image"]) as im:
                    assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(it.image()))
    stamp = (root / "world.json").stat().st_mtime_ns
    world.write_world(root, seed=0, sizes=sizes)  # same seed and sizes: nothing rewritten
    assert (root / "world.json").stat().st_mtime_ns == stamp


def test_vision_probes_format_and_answers(tmp_path):
    root = world.write_vision_probes(tmp_path / "probes", n_per_task=8, seed=0)
    for task in world.PROBE_TASKS:
        rows = [json.loads(line) for line in (root / task / "data.jsonl").read_text().splitlines()]
        assert len(rows) == 8
        for row in rows:
            assert set(row) == {"id", "task", "target_image", "source_image", "prompt", "meta"} and row["task"] == task
            t, s = Image.open(root / task / row["target_image"]), Image.open(root / task / row["source_image"])
            assert t.size == s.size == (world.CANVAS, world.CANVAS)  # same visual-token count
            meta, prompt = row["meta"], row["prompt"]
            if task == "counting":
                got = [str(_count_asked(prompt, read_shapes(im.convert("RGB")))) for im in (t, s)]
                assert got == [meta["target_answer"], meta["source_answer"]] and got[0] != got[1]
            elif task == "ocr":
                got = [str(read_digit(im.convert("RGB"))) for im in (t, s)]
                assert got == [meta["target_text"], meta["source_text"]] and got[0] != got[1]
            elif task == "grounding":
                colour, shape = meta["object_name"].split()
                boxes = [[list(x["box"]) for x in read_shapes(im.convert("RGB"))
                          if (x["colour"], x["shape"]) == (colour, shape)]
                         for im in (t, s)]
                assert boxes == [[meta["target_bbox_xyxy"]], [meta["source_bbox_xyxy"]]]
            else:
                colour, shape = meta["object_name"].split()
                got = ["Yes" if any((x["colour"], x["shape"]) == (colour, shape)
                                    for x in read_shapes(im.convert("RGB")))
                       else "No" for im in (t, s)]
                assert got == [meta["target_answer"], meta["source_answer"]] and got[0] != got[1]


def test_probe_folder_reads_with_the_shared_probe_loader(tmp_path):
    probes = pytest.importorskip("frankeneval.evaluation.probes")
    if not hasattr(probes, "load_probe_pairs"):
        pytest.skip("frankeneval.evaluation.probes.load_probe_pairs not available")
    root = world.write_vision_probes(tmp_path / "probes", n_per_task=3, seed=0)
    for task in world.PROBE_TASKS:
        pairs = probes.load_probe_pairs(root, task)
        assert len(pairs) == 3


def test_lmms_eval_tasks_read_the_written_world(tmp_path, monkeypatch):
    """The franken_world tasks load the held-out split through lmms-eval's task index and score with the world."""
    from pathlib import Path

    from lmms_eval.tasks import TaskManager, get_task_dict

    root = world.write_world(tmp_path / "w", seed=0, sizes={"perception": 12, "alignment": 6, "reasoning": 5})
    monkeypatch.setenv("FRANKENEVAL_WORLD", str(root))
    monkeypatch.setenv("FRANKENEVAL_SAMPLE_SIZE", "0")
    tm = TaskManager("ERROR", include_path=str(Path(__file__).resolve().parents[1] / "tasks"))
    names = ["franken_world_perception", "franken_world_alignment", "franken_world_reasoning"]
    assert set(names) | {"franken_world"} <= set(tm.all_tasks)
    tasks = get_task_dict(names, tm)
    for name, n in zip(names, (12, 6, 5)):
        task = tasks[name]
        docs = task.test_docs()
        assert len(docs) == n
        rows = world.read_world(root, name.split("_")[-1])
        for doc, row in zip(docs, rows):
            assert task.doc_to_text(doc) == row["prompt"] and str(task.doc_to_target(doc)) == row["answer"]
            visual = task.doc_to_visual(doc)
            assert len(visual) == (0 if row["image"] is None else 1)
            good = row["answer"] if row["task"] in ("count", "ocr", "colour", "yesno", "position", "box") \
                else f"\\boxed{{{row['answer']}}}"
            assert task.process_results(doc, [good])["rule_acc"]["score"] == 1
            assert task.process_results(doc, ["zzz"])["rule_acc"]["score"] == 0


def test_reasoning_items_in_gsm8k_format_feed_the_ablation_sweep(tmp_path):
    from frankeneval.localization.reasoning import load_questions, question_prompt

    path = world.write_reasoning_gsm8k(tmp_path / "r.jsonl", n=6, seed=0)
    questions = load_questions("gsm8k", data=path, samples=0)
    items = world.world_items("test", "reasoning", 6, seed=0)
    assert [q.target for q in questions] == [it.answer for it in items]
    # the sweep asks exactly what the world's reasoning task asks
    assert [question_prompt(q.problem) for q in questions] == [it.prompt for it in items]


def test_described_views_show_the_scene_in_words_and_keep_the_split():
    """``task:blackdesc`` / ``task:text`` items: the same content (hence split) as the image item, the scene given as
    describe_scene text in the black + description layout, with an all-black image of the same size or none."""
    for task in ("multiply", "add", "count", "position"):
        for split in ("train", "test"):
            for i in range(10):
                image_item = world.world_item(0, split, task, i)
                for view in ("blackdesc", "text"):
                    it = world.with_view(image_item, view)
                    assert it.key() == image_item.key() and world.split_of(it) == split
                    assert it.described and it.answer == image_item.answer
                    desc = world.describe_scene(it.scene)
                    assert it.prompt == world.blackdesc_prompt(desc, it.question, boxed=it.axis == "alignment")
                    assert it.blind_target() == it.target(worked=False)  # the teacher reads the description
                    if view == "text":
                        assert not it.has_image and it.image() is None and it.messages()[0]["content"] == [
                            {"type": "text", "text": it.prompt}]
                    else:
                        assert it.image().size == (world.CANVAS, world.CANVAS)
                        assert it.image().getextrema() == ((0, 0), (0, 0), (0, 0))
                drawn = world.world_item(0, split, f"{task}:blackdesc", i)
                assert drawn.view == "blackdesc" and world.split_of(drawn) == split
                assert drawn.id == f"{split}-{task}-blackdesc-{i:06d}"
    with pytest.raises(ValueError):
        world.world_item(0, "train", "word:blackdesc", 0)  # no scene to describe
    with pytest.raises(ValueError):
        world.task_view("multiply:sideways")


def test_described_training_items_are_never_held_out():
    """Training streams draw described items from the train split only: no held-out (question, scene) is ever shown
    in words either."""
    test_keys = {it.key() for it in world.world_items("test", ("multiply", "add", "count", "ocr"), 2000, seed=0)}
    train = world.world_items("train", ("multiply:blackdesc", "add:blackdesc", "count:blackdesc", "ocr:text"), 800,
                              seed=0)
    assert all(world.split_of(it) == "train" for it in train) and not test_keys & {it.key() for it in train}


def test_blackdesc_view_is_the_transfer_controls_layout(tmp_path, monkeypatch):
    """A held-out alignment item in the blackdesc view is exactly what franken_world_alignment_blackdesc shows:
    the same prompt and an all-black image of the same size."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tasks" / "franken_world" / "utils.py"
    spec = importlib.util.spec_from_file_location("franken_world_utils", path)
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    root = world.write_world(tmp_path / "w", seed=0, sizes={"perception": 2, "alignment": 8, "reasoning": 2})
    monkeypatch.setenv("FRANKENEVAL_SAMPLE_SIZE", "0")
    docs = utils.world_docs("alignment", {"world_dir": str(root)}, control="blackdesc")
    items = [world.with_view(it, "blackdesc") for it in world.world_items("test", "alignment", 8, seed=0)]
    assert [d["id"] for d in docs] == [it.id for it in items]
    for doc, it in zip(docs, items):
        assert utils.world_doc_to_text(doc) == it.prompt
        (black,) = utils.world_doc_to_visual(doc)
        assert np.array_equal(np.asarray(black), np.asarray(it.image()))


def test_corpus_holds_the_described_layout():
    texts = "\n".join(world.corpus(0, n=40))
    assert "Image Description:\nObjects: " in texts and "\n\nQuestion:\n" in texts
