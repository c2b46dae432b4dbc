"""The rendered world: a deterministic visual-math world for the trained miniature lineage.

Every image is an 84 x 84 canvas cut into a 3 x 3 grid of 28 x 28 cells -- exactly one Qwen2.5-VL visual token
per cell (14-pixel patches merged 2 x 2). A cell is empty, holds one coloured shape (red / green / blue / yellow
circle / square / triangle, filling the cell but a 3-pixel margin) or one written digit (black). Items come in
the paper's three capability axes:

* **perception** (the general-VQA analog): ``count`` ("How many red shapes are there?"), ``ocr`` ("What number
  is written in the image?"), ``colour`` ("What colour is the circle?"), ``yesno`` ("Is there a blue square in
  the image? Answer Yes or No only."), ``position`` ("Where is the green triangle?" -> ``top left`` ...) and
  ``box`` (the same object's bounding box ``x1,y1,x2,y2``);
* **alignment** (the math-targeted-VQA analog): questions that need the image *and* arithmetic -- ``multiply``
  ("Multiply the number of red shapes by the number written.") and ``add`` ("Add the number written to the
  number of circles.");
* **reasoning** (the MATH-500 analog): text-only arithmetic word problems (``word``).

Training-only kinds (Base's pre-training): ``caption`` ("Describe the image.") and ``arithmetic`` ("What is 3 * 7?"
-> ``21``).

Views (:data:`VIEWS`): an item with a scene is shown as its image (``"image"``, the default), or -- for training only,
as a pretrained LLM has read scenes described in words -- as the black + description control shows it
(``"blackdesc"``: an all-black image of the same size and :func:`blackdesc_prompt` with :func:`describe_scene`,
exactly the ``franken_world_*_blackdesc`` layout) or as the description alone (``"text"``: no image). A view is
asked for as ``"task:view"`` (``"multiply:blackdesc"``); it leaves the item's content, hence its split, unchanged.

Alignment and reasoning questions are asked with the method's step-by-step / ``\\boxed{}`` instruction
(:data:`MATH_PROMPT`); perception questions are asked plainly and answered with a word, a number or a box.
Answers are right by construction: the scene is drawn from the same description the answer is computed from.

Controls (the paper's transfer settings): the same held-out items with an all-black image of the same size, or with
the black image and the world's own exact text description of the scene (:func:`describe_scene`,
:func:`blackdesc_prompt`): the ``franken_world_*_black`` / ``*_blackdesc`` tasks, computed from the written rows'
scenes, so the held-out split and its files are unchanged.

Splits: an item belongs to the held-out ``test`` split when a hash of its content (question, scene) falls in one
fifth of the hash space, otherwise to ``train`` -- so no test question (with its image) is ever trained on.
Item ``i`` of a split is a pure function of ``(seed, split, axis, i)``.

:func:`write_world` writes the held-out split to disk (JSONL + PNG) for the ``franken_world_*`` lmms-eval tasks,
and :func:`write_vision_probes` writes target/source probe pairs in the ``vision_probes`` folder format.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from frankeneval.core.paths import default_cache_dir
from frankeneval.core.results import atomic_write_text, write_json_atomic
from frankeneval.evaluation.probes import PROBE_TASKS, write_probe_folders

CANVAS = 84
CELL = 28
GRID = 3
MARGIN = 3
BACKGROUND = (128, 128, 128)  # ~ the processor's mean colour: empty patches normalise to ~0
INK = (0, 0, 0)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 190, 20),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
DIGITS = tuple(range(2, 10))
ALIGNMENT_DIGITS = tuple(range(2, 6))  # alignment: 1-3 shapes and a written 2-5
ALIGNMENT_COUNTS = (1, 3)  # inclusive range of the shape count in alignment questions
MATH_PROMPT = 'Please solve the problem step by step and put your answer in one "\\boxed{}".'
AXES = ("perception", "alignment", "reasoning")
AXIS_TASKS: dict[str, tuple[str, ...]] = {
    "perception": ("count", "ocr", "colour", "yesno", "position", "box"),
    "alignment": ("multiply", "add"),
    "reasoning": ("word",),
    "pretrain": ("caption", "arithmetic"),
}
TEST_FRACTION = 5  # one item in five (by content hash) is held out
VIEWS = ("image", "blackdesc", "text")  # how an item's scene is shown (module docstring)
WORLD_VERSION = 1  # bump when the generator's output changes


# -- scenes and rendering ------------------------------------------------------------------------
@dataclass(frozen=True)
class Obj:
    """One cell's content: a coloured shape, or a written digit (``shape == "digit"``, ``colour is None``)."""

    cell: int
    shape: str
    colour: str | None = None
    value: int | None = None

    @property
    def name(self) -> str:
        return f"number {self.value}" if self.shape == "digit" else f"{self.colour} {self.shape}"


def cell_box(cell: int) -> tuple[int, int, int, int]:
    """The ``(x1, y1, x2, y2)`` box (x2, y2 exclusive) a shape in ``cell`` fills."""
    r, c = divmod(cell, GRID)
    return (c * CELL + MARGIN, r * CELL + MARGIN, (c + 1) * CELL - MARGIN, (r + 1) * CELL - MARGIN)


@lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=22)


def render(scene: Sequence[Obj]) -> Image.Image:
    """Draw a scene on a white 84 x 84 RGB canvas (no anti-aliasing on shapes)."""
    img = Image.new("RGB", (CANVAS, CANVAS), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for obj in scene:
        x1, y1, x2, y2 = cell_box(obj.cell)
        if obj.shape == "digit":
            r, c = divmod(obj.cell, GRID)
            draw.text((c * CELL + CELL / 2, r * CELL + CELL / 2), str(obj.value), fill=INK, font=_font(), anchor="mm")
            continue
        fill = COLOURS[obj.colour]  # type: ignore[index]
        if obj.shape == "circle":
            draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)
        else:
            draw.polygon([(x1, y2 - 1), (x2 - 1, y2 - 1), ((x1 + x2 - 1) / 2, y1)], fill=fill)
    return img


def describe_scene(scene: Sequence[Obj]) -> str:
    """The world's own exact text description of a scene (the black + description control's ``Image Description``).

    Deterministic, and complete for every question of the world: each object with its position (cell order), then
    the shape count of every colour and of every kind -- in the words the questions use ("red shapes", "circles") --
    and the number written. E.g. ``"Objects: red circle at top left, number 4 at center. Red shapes: 1. Green
    shapes: 0. Blue shapes: 0. Yellow shapes: 0. Circles: 1. Squares: 0. Triangles: 0. Number written: 4."``
    """
    objs = sorted(scene, key=lambda o: o.cell)
    shapes = [o for o in objs if o.shape != "digit"]
    parts = [f"Objects: {', '.join(f'{o.name} at {POSITIONS[o.cell]}' for o in objs) or 'none'}."]
    parts += [f"{c.capitalize()} shapes: {sum(o.colour == c for o in shapes)}." for c in COLOURS]
    parts += [f"{_plural(k).capitalize()}: {sum(o.shape == k for o in shapes)}." for k in SHAPES]
    digit = _digit_of(objs)
    parts.append(f"Number written: {'none' if digit is None else digit}.")
    return " ".join(parts)


def blackdesc_prompt(description: str, question: str, *, boxed: bool) -> str:
    """The black + description prompt of a world question, laid out as MathVista's (docs/method.md): for a boxed
    (alignment) question the step-by-step prefix and a blank line first, then ``Image Description:``, newline, the
    description, blank line, ``Question:``, newline, the question."""
    body = f"Image Description:\n{description}\n\nQuestion:\n{question}"
    return f"{MATH_PROMPT}\n\n{body}" if boxed else body


def scene_to_json(scene: Sequence[Obj]) -> list[dict[str, Any]]:
    return [{k: v for k, v in asdict(o).items() if v is not None} for o in scene]


def scene_from_json(rows: Sequence[dict[str, Any]]) -> list[Obj]:
    return [Obj(**row) for row in rows]


# -- items -------------------------------------------------------------------------------------
@dataclass
class WorldItem:
    """One question of the world, with its answer and a short worked solution."""

    id: str
    axis: str
    task: str
    question: str
    answer: str
    solution: str = ""  # worked steps before the boxed answer (alignment / reasoning)
    scene: list[Obj] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    view: str = "image"  # one of VIEWS: the image, or the scene described in words (with a black image, or alone)

    @property
    def has_image(self) -> bool:
        return self.scene is not None and self.view != "text"

    @property
    def described(self) -> bool:
        """The scene is given as :func:`describe_scene` text, in the black + description layout."""
        return self.scene is not None and self.view != "image"

    @property
    def boxed(self) -> bool:
        """Asked with the step-by-step / ``\\boxed{}`` instruction (alignment, reasoning)."""
        return self.axis in ("alignment", "reasoning")

    @property
    def prompt(self) -> str:
        """The user text shown after the image (for a described view: :func:`blackdesc_prompt`)."""
        if self.described:
            return blackdesc_prompt(describe_scene(self.scene or []), self.question, boxed=self.boxed)
        return f"{MATH_PROMPT}\n\n{self.question}" if self.boxed else self.question

    def image(self) -> Image.Image | None:
        """The rendered scene; for the ``blackdesc`` view an all-black image of the same size (as the control's)."""
        if not self.has_image:
            return None
        return Image.new("RGB", (CANVAS, CANVAS), (0, 0, 0)) if self.view == "blackdesc" else render(self.scene or [])

    def target(self, worked: bool = True) -> str:
        """The assistant's reply to train on: the answer, or the worked solution then ``\\boxed{answer}``."""
        if not self.boxed:
            return self.answer
        steps = f"{self.solution} " if worked and self.solution else ""
        return f"{steps}\\boxed{{{self.answer}}}"

    def blind_target(self) -> str:
        """The reply of a text-only teacher that reads the question but cannot see the image.

        It answers without working, guessing the image's quantities (a count of 1-3, a written 2-5: a fixed draw
        per item) and applying the question's operation correctly -- so it is right only when its guess is.
        Items that need no image, and items whose scene is described in words (the teacher reads it), are answered
        as :meth:`target` does.
        """
        if self.axis != "alignment" or self.described:
            return self.target(worked=False)
        rng = random.Random(f"blind:{self.key()}")
        n, digit = rng.randint(*ALIGNMENT_COUNTS), rng.choice(ALIGNMENT_DIGITS)
        guess = n * digit if self.task == "multiply" else n + digit
        return f"\\boxed{{{guess}}}"

    def messages(self) -> list[dict[str, Any]]:
        """The user turn in chat format (image first, then the prompt), as a Qwen2.5-VL chat template takes it."""
        content: list[dict[str, Any]] = [{"type": "image"}] if self.has_image else []
        content.append({"type": "text", "text": self.prompt})
        return [{"role": "user", "content": content}]

    def key(self) -> str:
        """The content that decides the split (question + scene; not the view: a described item is in its image
        item's split)."""
        return json.dumps([self.task, self.question, scene_to_json(self.scene or [])], sort_keys=True)


def _plural(shape: str) -> str:
    return f"{shape}s"


def _random_scene(rng: random.Random, fixed: list[Obj], n_extra: int, avoid: set[tuple[str | None, str]] | None = None,
                  digit: bool = False) -> list[Obj]:
    """``fixed`` objects plus ``n_extra`` random shapes (none of the ``(colour, shape)`` kinds in ``avoid``) in free
    cells."""
    used = {o.cell for o in fixed}
    free = [c for c in range(GRID * GRID) if c not in used]
    rng.shuffle(free)
    scene = list(fixed)
    if digit:
        scene.append(Obj(free.pop(), "digit", value=rng.choice(DIGITS)))
    for _ in range(n_extra):
        while True:
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            if not avoid or not any((a_c in (None, colour)) and a_s in (None, shape) for a_c, a_s in avoid):
                break
        scene.append(Obj(free.pop(), shape, colour))
    return sorted(scene, key=lambda o: o.cell)


def _place(rng: random.Random, kinds: list[tuple[str, str]], digit: int | None = None) -> list[Obj]:
    cells = rng.sample(range(GRID * GRID), len(kinds) + (digit is not None))
    objs = [Obj(cell, shape, colour) for cell, (colour, shape) in zip(cells, kinds)]
    if digit is not None:
        objs.append(Obj(cells[-1], "digit", value=digit))
    return objs


def _digit_of(scene: Sequence[Obj]) -> int | None:
    return next((o.value for o in scene if o.shape == "digit"), None)


def make_item(task: str, rng: random.Random) -> WorldItem:
    """One item of ``task`` drawn with ``rng`` (id and split are set by :func:`world_items`)."""
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    if task in ("count", "multiply", "add"):
        by_colour = task in ("count", "multiply") and (task == "multiply" or rng.random() < 0.5)
        n = rng.randint(0, 4) if task == "count" else rng.randint(*ALIGNMENT_COUNTS)
        kinds = [(colour, rng.choice(SHAPES)) if by_colour else (rng.choice(list(COLOURS)), shape) for _ in range(n)]
        digit = rng.choice(ALIGNMENT_DIGITS) if task != "count" else None
        fixed = _place(rng, kinds, digit)
        avoid = {(colour, None)} if by_colour else {(None, shape)}
        scene = _random_scene(rng, fixed, rng.randint(0, min(3, 8 - len(fixed))), avoid,
                              digit=task == "count" and rng.random() < 0.5)
        what = f"{colour} shapes" if by_colour else _plural(shape)
        if task == "count":
            return WorldItem("", "perception", task, f"How many {what} are there?", str(n), scene=scene)
        if task == "multiply":
            q = f"Multiply the number of {what} by the number written."
            sol = f"{n} * {digit} = {n * digit}."
            return WorldItem("", "alignment", task, q, str(n * digit), sol, scene=scene)
        q = f"Add the number written to the number of {what}."
        sol = f"{digit} + {n} = {digit + n}."
        return WorldItem("", "alignment", task, q, str(digit + n), sol, scene=scene)
    if task == "ocr":
        scene = _random_scene(rng, [], rng.randint(0, 4), digit=True)
        return WorldItem("", "perception", task, "What number is written in the image?", str(_digit_of(scene)),
                         scene=scene)
    if task in ("colour", "position", "box"):
        # exactly one object of the asked kind: its shape for "colour", its (colour, shape) for position / box
        target = Obj(rng.randrange(GRID * GRID), shape, colour)
        avoid = {(None, shape)} if task == "colour" else {(colour, shape)}
        scene = _random_scene(rng, [target], rng.randint(0, 4), avoid, digit=rng.random() < 0.3)
        if task == "colour":
            return WorldItem("", "perception", task, f"What colour is the {shape}?", colour, scene=scene)
        if task == "position":
            return WorldItem("", "perception", task, f"Where is the {colour} {shape}?", POSITIONS[target.cell],
                             scene=scene)
        box = cell_box(target.cell)
        q = f"Locate the object: {colour} {shape}. Return bounding box as x1,y1,x2,y2."
        return WorldItem("", "perception", task, q, ",".join(map(str, box)), scene=scene, meta={"bbox_xyxy": list(box)})
    if task == "yesno":
        present = rng.random() < 0.5
        fixed = [Obj(rng.randrange(GRID * GRID), shape, colour)] if present else []
        scene = _random_scene(rng, fixed, rng.randint(1 - present, 4), {(colour, shape)}, digit=rng.random() < 0.3)
        q = f"Is there a {colour} {shape} in the image? Answer Yes or No only."
        return WorldItem("", "perception", task, q, "Yes" if present else "No", scene=scene)
    if task == "caption":
        scene = _random_scene(rng, [], rng.randint(1, 5), digit=rng.random() < 0.5)
        return WorldItem("", "pretrain", task, "Describe the image.", ", ".join(o.name for o in scene) + ".",
                         scene=scene)
    if task == "arithmetic":
        op = rng.choice("*+-")
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        if op == "-":
            a, b = max(a, b), min(a, b)
        return WorldItem("", "pretrain", task, f"What is {a} {op} {b}?", str(_apply(a, op, b)))
    if task == "word":
        return _word_problem(rng)
    raise ValueError(f"unknown world task {task!r}")


_NAMES = ("Ann", "Tom", "Mia", "Sam", "Lea", "Ben")
_THINGS = ("apples", "pens", "cards", "coins", "books", "eggs")


def _apply(a: int, op: str, b: int) -> int:
    return a * b if op == "*" else a + b if op == "+" else a - b


def _word_problem(rng: random.Random) -> WorldItem:
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    kind = rng.randrange(3)
    if kind == 0:
        q = f"{name} has {a} bags with {b} {thing} in each bag. How many {thing} does {name} have?"
        op = "*"
    elif kind == 1:
        q = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?"
        op = "+"
    else:
        a, b = max(a, b) + 1, min(a, b)
        q = f"{name} has {a} {thing} and gives away {b}. How many {thing} are left?"
        op = "-"
    r = _apply(a, op, b)
    return WorldItem("", "reasoning", "word", q, str(r), f"{a} {op} {b} = {r}.")


def split_of(item: WorldItem) -> str:
    """``"test"`` for the held-out fifth of the content-hash space, else ``"train"``."""
    return "test" if zlib.crc32(item.key().encode()) % TEST_FRACTION == 0 else "train"


def task_view(task: str) -> tuple[str, str]:
    """``"multiply:blackdesc"`` -> ``("multiply", "blackdesc")``; a bare task name is the ``"image"`` view."""
    name, _, view = task.partition(":")
    view = view or "image"
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r} in world task {task!r}; expected one of {VIEWS}")
    return name, view


def with_view(item: WorldItem, view: str) -> WorldItem:
    """``item`` shown in ``view`` (same content, so the same split); only an item with a scene can be described."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    if view != "image" and item.scene is None:
        raise ValueError(f"a {item.task} item has no scene to describe")
    return replace(item, view=view)


def world_item(seed: int, split: str, task: str, index: int) -> WorldItem:
    """Item ``index`` of ``task`` (``"name"`` or ``"name:view"``) in ``split``: a pure function of its arguments.

    The split is decided by the item's content alone (:func:`split_of`), whatever its view.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    name, view = task_view(task)
    for attempt in range(1000):
        rng = random.Random(f"frankeneval-world:{seed}:{split}:{task}:{index}:{attempt}")
        item = make_item(name, rng)
        if split_of(item) == split:
            item = with_view(item, view) if view != "image" else item
            item.id = f"{split}-{name}-{index:06d}" if view == "image" else f"{split}-{name}-{view}-{index:06d}"
            return item
    raise RuntimeError(f"could not draw a {split} item of {task}")  # pragma: no cover


def world_items(split: str, tasks: Sequence[str] | str, n: int, seed: int = 0) -> list[WorldItem]:
    """``n`` items cycling over ``tasks`` (an axis name or task names), deterministic in ``(seed, split)``."""
    names = AXIS_TASKS[tasks] if isinstance(tasks, str) else tuple(tasks)
    return [world_item(seed, split, names[i % len(names)], i // len(names)) for i in range(n)]


def corpus(seed: int = 0, n: int = 600) -> list[str]:
    """Texts of every kind of item (prompts and worked answers): the tokenizer's training corpus."""
    tasks = [t for ts in AXIS_TASKS.values() for t in ts]
    texts = []
    for it in world_items("train", tasks, n, seed):
        texts.append(f"{it.prompt}\n{it.target(worked=True)}")
        if it.scene is not None:  # the scene in words, as the described views show it
            texts.append(f"{with_view(it, 'blackdesc').prompt}\n{it.target(worked=True)}")
    texts.append(f"{MATH_PROMPT} Yes No " + " ".join(POSITIONS) + " " + " ".join(COLOURS) + " " + " ".join(SHAPES))
    texts += ["system\nYou are a helpful assistant.\nuser\nassistant\n"] * 50  # the chat template's own words
    return texts


# -- answer checks -------------------------------------------------------------------------------
def is_correct(task: str, answer: str, response: str) -> bool:
    """Whether ``response`` answers a world question of ``task`` whose right answer is ``answer``.

    The shared rules of :mod:`frankeneval.evaluation.scoring`: boxes by IoU >= 0.5, counts and digits by the first
    integer, yes/no by the first yes/no word, colour and position words by whitespace-free lower-case equality
    of the short answer; alignment and reasoning by the stated final answer (``<answer>`` tag, else the last
    ``\\boxed{}``; no last-number fallback) and :func:`frankeneval.evaluation.scoring.math_equal` (math-verify only when
    the answer is not a number, since every world answer is an integer).
    """
    from frankeneval.evaluation import scoring

    if task == "box":
        return scoring.grounding_correct(response, scoring.parse_box(answer))  # type: ignore[arg-type]
    if task in ("count", "ocr"):
        return scoring.counting_correct(response, answer)
    if task == "yesno":
        return scoring.yes_no_correct(response, answer)
    if task in ("colour", "position"):
        return scoring.normalize_text(scoring.short_answer(response).rstrip(".")) == scoring.normalize_text(answer)
    got, _ = scoring.extract_final_answer(response)
    return scoring.math_equal(got, answer, use_math_verify=scoring.parse_number(got) is None)


# -- writing to disk -----------------------------------------------------------------------------
def default_world_dir(seed: int = 0) -> Path:
    """Where the held-out split is written by default (``$FRANKENEVAL_WORLD`` overrides)."""
    env = os.environ.get("FRANKENEVAL_WORLD")
    return Path(env) if env else default_cache_dir() / "world" / f"seed{seed}-v{WORLD_VERSION}"


DEFAULT_TEST_SIZES = {"perception": 300, "alignment": 300, "reasoning": 300}


def write_world(out_dir: str | os.PathLike | None = None, *, seed: int = 0,
                sizes: dict[str, int] | None = None) -> Path:
    """Write the held-out split: ``<axis>/test.jsonl`` (+ ``images/*.png``) per axis; cheap to repeat.

    Rows: ``id``, ``axis``, ``task``, ``question``, ``prompt`` (the full user text), ``answer``, ``image``
    (path relative to ``out_dir``, or null), ``meta``.
    """
    root = Path(out_dir) if out_dir is not None else default_world_dir(seed)
    sizes = {**DEFAULT_TEST_SIZES, **(sizes or {})}
    stamp = {"seed": seed, "version": WORLD_VERSION, "sizes": sizes}
    stamp_file = root / "world.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return root
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".world.tmp-", dir=root))
    try:
        (tmp / "images").mkdir()
        for axis in AXES:
            (tmp / axis).mkdir()
            with open(tmp / axis / "test.jsonl", "w") as f:
                for it in world_items("test", axis, sizes[axis], seed):
                    image = None
                    if it.has_image:
                        image = f"images/{it.id}.png"
                        it.image().save(tmp / image)  # type: ignore[union-attr]
                    row = {"id": it.id, "axis": it.axis, "task": it.task, "question": it.question,
                           "prompt": it.prompt, "answer": it.answer, "image": image,
                           "meta": {**it.meta, "scene": scene_to_json(it.scene or [])}}
                    f.write(json.dumps(row) + "\n")
        for name in ("images", *AXES):
            if (root / name).exists():
                shutil.rmtree(root / name)
            os.replace(tmp / name, root / name)
        write_json_atomic(stamp_file, stamp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def read_world(root: str | os.PathLike, axis: str) -> list[dict[str, Any]]:
    """Rows of ``<root>/<axis>/test.jsonl``."""
    path = Path(root) / axis / "test.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


# -- vision probes -------------------------------------------------------------------------------
def probe_pair(task: str, rng: random.Random) -> tuple[list[Obj], list[Obj], str, dict[str, Any]]:
    """A (target scene, source scene, prompt, meta) pair with different answers and the same image size."""
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    if task == "counting":
        n_t, n_s = rng.sample(range(0, 5), 2)
        scenes = [_random_scene(rng, _place(rng, [(colour, rng.choice(SHAPES)) for _ in range(n)]),
                                rng.randint(0, 3), {(colour, None)}) for n in (n_t, n_s)]
        meta = {"target_answer": str(n_t), "source_answer": str(n_s)}
        return scenes[0], scenes[1], f"How many {colour} shapes are there?", meta
    if task == "ocr":
        d_t, d_s = rng.sample(DIGITS, 2)
        scenes = [sorted(_place(rng, [], d), key=lambda o: o.cell) for d in (d_t, d_s)]
        scenes = [_random_scene(rng, s, rng.randint(0, 3)) for s in scenes]
        return scenes[0], scenes[1], "What number is written in the image?", {
            "target_text": str(d_t), "source_text": str(d_s), "canvas_size": [CANVAS, CANVAS]}
    if task == "grounding":
        c_t, c_s = rng.sample(range(GRID * GRID), 2)
        scenes = [_random_scene(rng, [Obj(c, shape, colour)], rng.randint(0, 3), {(colour, shape)}) for c in (c_t, c_s)]
        prompt = f"Locate the object: {colour} {shape}. Return bounding box as x1,y1,x2,y2."
        return scenes[0], scenes[1], prompt, {
            "object_name": f"{colour} {shape}", "target_bbox_xyxy": list(cell_box(c_t)),
            "source_bbox_xyxy": list(cell_box(c_s)), "canvas_size": [CANVAS, CANVAS], "iou_threshold": 0.5}
    if task == "recognition":
        with_obj = _random_scene(rng, [Obj(rng.randrange(GRID * GRID), shape, colour)], rng.randint(0, 3),
                                 {(colour, shape)})
        without = _random_scene(rng, [], rng.randint(1, 4), {(colour, shape)})
        flip = rng.random() < 0.5
        t, s = (without, with_obj) if flip else (with_obj, without)
        ans = ("No", "Yes") if flip else ("Yes", "No")
        prompt = f"Is there a {colour} {shape} in the image? Answer Yes or No only."
        return t, s, prompt, {"object_name": f"{colour} {shape}", "target_answer": ans[0], "source_answer": ans[1],
                              "canvas_size": [CANVAS, CANVAS]}
    raise ValueError(f"unknown probe task {task!r}; expected one of {PROBE_TASKS}")


def write_vision_probes(out_dir: str | os.PathLike, *, n_per_task: int = 50, seed: int = 0,
                        tasks: Sequence[str] = PROBE_TASKS, command: str = "make-probes",
                        size: int | None = None) -> Path:
    """frankeneval's one probe renderer: ``n_per_task`` pairs of world scenes per task into ``<out_dir>/<task>/``
    (``data.jsonl``, ``images/``, ``generator.json``: the ``vision_probes`` folder format); returns ``out_dir``.
    Used by ``frankeneval make-probes``, ``--rendered`` (the commands render before the analysis reads), the
    harness tasks' built-in probes and the demo.

    Deterministic: pair ``i`` of a task is a pure function of ``(seed, task, i)``, so the same ``(tasks, n_per_task,
    seed)`` gives the same files. Written through the format's writer
    (:func:`frankeneval.evaluation.probes.write_probe_folders`): ``out_dir`` is a guarded output folder (``command``
    is recorded in its marker), a task folder already holding this very render (same stamp) is kept, and one is
    replaced -- as a whole -- only when it holds exactly a frankeneval probe render; a probe dataset frankeneval did
    not render is refused in one line.

    ``size``: each image scaled to ``size`` x ``size`` pixels by nearest neighbour (the scene unchanged, for models
    that expect larger images than the world's {canvas} px); None keeps the world's size, which the miniature lineage
    was trained on.""".replace("{canvas}", str(CANVAS))
    stamp = {"renderer": "miniature.world", "world_version": WORLD_VERSION, "n": n_per_task, "seed": seed,
             **({"size": size} if size else {})}

    def pairs(task: str):
        for i in range(n_per_task):
            target, source, prompt, meta = _rendered_probe_pair(task, seed, i)
            if size and size != CANVAS:
                target, source = (im.resize((size, size), Image.Resampling.NEAREST) for im in (target, source))
                meta = _scaled_meta(meta, size / CANVAS)
            yield target, source, prompt, meta

    write_probe_folders(out_dir, tasks, pairs, stamp, command=command)
    return Path(out_dir)


def _scaled_meta(meta: dict[str, Any], factor: float) -> dict[str, Any]:
    """A probe's ``meta`` for its images scaled by ``factor``: the canvas and the boxes in the new pixels."""
    def scale(values):
        return [round(v * factor, 2) if factor != int(factor) else int(v * factor) for v in values]

    out = {**meta, "canvas_size": scale(meta.get("canvas_size") or [CANVAS, CANVAS])}
    for key in ("target_bbox_xyxy", "source_bbox_xyxy"):
        if key in meta:
            out[key] = scale(meta[key])
    return out


def _rendered_probe_pair(task: str, seed: int, index: int) -> tuple[Image.Image, Image.Image, str, dict[str, Any]]:
    """Pair ``index`` of ``task``: ``(target image, source image, prompt, meta)``, the scenes kept in ``meta``."""
    target, source, prompt, meta = probe_pair(task, random.Random(f"frankeneval-probe:{seed}:{task}:{index}"))
    meta = {**meta, "canvas_size": [CANVAS, CANVAS], "target_scene": scene_to_json(target),
            "source_scene": scene_to_json(source)}
    return render(target), render(source), prompt, meta


def write_reasoning_gsm8k(path: str | os.PathLike, *, n: int = 100, seed: int = 0) -> Path:
    """The first ``n`` held-out reasoning items as a GSM8K-format JSONL (``question``, ``answer`` "... #### N"),
    so ``frankeneval localize-reasoning --dataset gsm8k --data PATH`` ablates layers on the world's reasoning axis."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"question": it.question, "answer": f"{it.target(True)}\n#### {it.answer}", "id": it.id}
            for it in world_items("test", "reasoning", n, seed)]
    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def iter_tasks() -> Iterator[tuple[str, str]]:
    """``(axis, task)`` for every evaluated task."""
    for axis in AXES:
        for task in AXIS_TASKS[axis]:
            yield axis, task
