"""Vision localization, default mode: a pair whose source and target images give different visual-token counts is
refused on its own -- before any model work on it -- recorded per pair, and the sweep goes on (issue 30 item 13);
the seed-compatible swap keeps interpolating such a pair, as the reference."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from test_generation import noise_image

from frankeneval.engine.generation import Generator
from frankeneval.localization.vision import format_vision_table, load_probe_sets, run_vision_sweep

LAYERS = [1, 4]
MAX_NEW = 4
# the tiny processor's max_pixels is 112 x 112 (8 x 8 patches of 14 px, merged 2 x 2: 16 visual tokens); a wider
# image is scaled down first (smart_resize: 84 x 112, 6 x 8 patches -> 12 visual tokens)
ODD_SIZE = (168, 112)
PROMPTS = {"counting": "How many items are there in the image?", "recognition": "Is there a red circle in the image?"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gen(tiny_lineage) -> Generator:
    return Generator.load(str(tiny_lineage.rl), dtype="float32", device="cpu")


def write_probes(root, task: str, n: int, odd: int | None = None) -> None:
    """``n`` pairs of noise images in the probe folder format; pair ``odd``'s source image is ``ODD_SIZE``."""
    (root / task / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        pid = f"{task}_{i:06d}"
        offset = 100 if task == "recognition" else 0
        for side, seed in (("t", 2 * i + offset), ("s", 2 * i + 1 + offset)):
            size = ODD_SIZE if side == "s" and i == odd else (112, 112)
            noise_image(seed, size).save(root / task / f"images/{pid}_{side}.png")
        meta = {"target_answer": 3, "source_answer": 5} if task == "counting" else \
            {"target_answer": "yes", "source_answer": "no"}
        rows.append({"id": pid, "task": task, "target_image": f"images/{pid}_t.png",
                     "source_image": f"images/{pid}_s.png", "prompt": PROMPTS[task], "meta": meta})
    (root / task / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    """Three counting pairs and one recognition pair; the second counting pair's source image is wider."""
    root = tmp_path_factory.mktemp("probes")
    write_probes(root, "counting", 3, odd=1)
    write_probes(root, "recognition", 1)
    return load_probe_sets(("counting", "recognition"), data=root, progress=False), "counting_000001"


class Recorder:
    """Delegates to a Generator (processor included), keeping the size of every image given to the model."""

    def __init__(self, gen):
        self.gen, self.model, self.processor = gen, gen.model, gen.processor
        self.sizes: list[tuple[int, int]] = []
        self.calls = 0

    def visual_kvs(self, images, **kw):
        self.sizes += [im.size for im in images]
        return self.gen.visual_kvs(images, **kw)

    def generate(self, requests, **kw):
        self.calls += 1
        self.sizes += [im.size for r in requests for im in r.images]
        return self.gen.generate(requests, **kw)


def test_visual_token_count_is_the_processors(gen):
    from frankeneval.engine.encoding import visual_token_count

    for size in [(112, 112), ODD_SIZE, (100, 37), (333, 250), (30, 30)]:
        grid = gen.processor.image_processor(images=[Image.new("RGB", size)], return_tensors="pt")["image_grid_thw"]
        assert visual_token_count(gen.processor, size) == int(grid.prod()) // 4  # 2 x 2 patches merged


def test_unequal_pair_is_refused_and_the_sweep_goes_on(gen, probes, tmp_path):
    pairs, odd_id = probes
    rec = Recorder(gen)
    res = run_vision_sweep(rec, pairs, LAYERS, tmp_path / "with", model_name="rl", max_new_tokens=MAX_NEW,
                           batch_size=64, progress=False)
    assert ODD_SIZE not in rec.sizes  # the refused pair's source never reached the model
    [refusal] = res["refused"]
    assert {k: refusal[k] for k in ("task", "id", "target_tokens", "source_tokens")} == {
        "task": "counting", "id": odd_id, "target_tokens": 16, "source_tokens": 12}
    assert "visual-token" in refusal["reason"]
    assert res["n_refused"] == 1
    assert res["tasks"]["counting"]["n_refused"] == 1 and res["tasks"]["recognition"]["n_refused"] == 0
    assert res["tasks"]["counting"]["n_pairs"] == 2  # rates over the pairs that ran
    assert all(row["n"] == 2 for row in res["tasks"]["counting"]["layers"])
    assert odd_id not in {p["id"] for p in res["pairs"] if p["task"] == "counting"}
    saved = json.loads((tmp_path / "with" / "vision_localization.json").read_text())
    assert saved["refused"] == res["refused"]
    table = format_vision_table(res)
    assert "refused 1 pair" in table and f"counting/{odd_id}: target 16, source 12 visual tokens" in table

    # the other pairs: exactly a sweep without the refused pair
    without = {t: [p for p in plist if not (t == "counting" and p.id == odd_id)] for t, plist in pairs.items()}
    ref = run_vision_sweep(Recorder(gen), without, LAYERS, tmp_path / "without", model_name="rl",
                           max_new_tokens=MAX_NEW, batch_size=64, progress=False)
    assert res["pairs"] == ref["pairs"]
    for task in pairs:
        assert {k: v for k, v in res["tasks"][task].items() if k != "n_refused"} == \
            {k: v for k, v in ref["tasks"][task].items() if k != "n_refused"}
    assert ref["refused"] == [] and ref["n_refused"] == 0

    # resume: nothing runs again; the refusal is recorded once in the store and never as a result
    again = Recorder(gen)
    res2 = run_vision_sweep(again, pairs, LAYERS, tmp_path / "with", model_name="rl", max_new_tokens=MAX_NEW,
                            batch_size=64, progress=False)
    assert again.calls == 0 and again.sizes == []
    assert res2["tasks"] == res["tasks"] and res2["refused"] == res["refused"] and res2["pairs"] == res["pairs"]
    lines = [json.loads(line) for line in (tmp_path / "with" / "units.jsonl").read_text().splitlines()[1:]]
    refusals = [r for r in lines if r["record"].get("kind") == "refused"]
    assert len(refusals) == 1 and refusals[0]["record"]["pair"] == odd_id
    assert not any(r["record"].get("kind") == "swap" and r["record"].get("pair") == odd_id for r in lines)


def test_seed_compatible_still_interpolates(gen, probes, tmp_path):
    pairs, odd_id = probes
    only = {"counting": [p for p in pairs["counting"] if p.id == odd_id]}
    res = run_vision_sweep(gen, only, [4], tmp_path, model_name="rl", max_new_tokens=MAX_NEW, batch_size=8,
                           seed_compatible=True, progress=False)
    assert res["refused"] == [] and res["n_refused"] == 0
    assert [p["id"] for p in res["pairs"]] == [odd_id] and isinstance(res["pairs"][0]["swapped"]["4"], str)
