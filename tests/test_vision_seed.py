"""Vision localization, paper default vs ``--seed-compatible`` (issue 19): verbatim probe prompts, the reference's
decode-step re-append, first-50 pairs, recorded / keyed mode, and agreement with an independent implementation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_generation import noise_image
from transformers import DynamicCache, GenerationConfig

from frankeneval.core.runstore import RunStoreMismatch
from frankeneval.engine.generation import Generator, GenRequest
from frankeneval.engine.interventions import SwapVisualKV, apply_interventions
from frankeneval.evaluation.probes import load_probe_pairs
from frankeneval.localization.vision import (
    REFERENCE_PAIRS,
    load_probe_sets,
    run_vision_sweep,
    select_pairs,
    vision_units,
)
from frankeneval.miniature.world import write_vision_probes

VERBATIM = "<image>How many items are there in the image?"
PROMPT = "What is shown in the picture?"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gen(tiny_lineage) -> Generator:
    return Generator.load(str(tiny_lineage.rl), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def image_prompt_probes(tmp_path_factory):
    """Rendered counting pairs whose prompt starts with a literal ``<image>`` (as the real counting file)."""
    root = tmp_path_factory.mktemp("probes")
    write_vision_probes(root, tasks=("counting",), n_per_task=3, seed=0)
    path = root / "counting" / "data.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "prompt": VERBATIM}) + "\n" for r in rows))
    return root


class Recorder:
    """Delegates to a Generator, recording every prompt it is given."""

    def __init__(self, gen):
        self.gen, self.model, self.prompts = gen, gen.model, []

    def visual_kvs(self, images, *, prompts, system=None):
        self.prompts.extend(prompts)
        return self.gen.visual_kvs(images, prompts=prompts, system=system)

    def generate(self, requests, **kw):
        self.prompts.extend(r.prompt for r in requests)
        return self.gen.generate(requests, **kw)


# --------------------------------------------------------------------------- 1. verbatim prompt (default fix)
def test_probe_prompt_is_verbatim_after_the_image(gen, image_prompt_probes, tmp_path):
    pairs = load_probe_sets(("counting",), data=image_prompt_probes, samples=2)
    assert all(p.prompt == VERBATIM for p in pairs["counting"])
    units, _ = vision_units(pairs, [1])
    assert {u.request[2] for u in units} == {VERBATIM}
    rec = Recorder(gen)
    run_vision_sweep(rec, pairs, [1, 4], tmp_path, model_name="rl", max_new_tokens=3, progress=False)
    assert rec.prompts and set(rec.prompts) == {VERBATIM}  # what the model was given, not only the unit
    text = gen.chat_text(GenRequest(VERBATIM, [noise_image(0)]))
    assert "<|vision_end|><image>How many items" in text  # image first, then the literal <image> as text


# --------------------------------------------------------------------------- 2. seed-compatible decode re-append
class ReferenceSwapCache(DynamicCache):
    """The reference's swap, literally, in the cache update (run before each attention): at prefill the visual slots
    of the new K/V are replaced by the source's; at each decode step the source's visual K/V are appended after
    the token's own (``seed``), so the cache of a swapped layer grows by 1 + n_visual per token."""

    def __init__(self, source, visual, first_layer, seed, **kw):
        super().__init__(**kw)
        self.source, self.visual, self.first, self.seed = source, visual, first_layer, seed

    def update(self, key, value, layer_idx, *args, **kwargs):
        if layer_idx >= self.first:
            sk, sv = self.source[layer_idx]
            if key.shape[2] > 1:
                key, value = key.clone(), value.clone()
                key[:, :, self.visual], value[:, :, self.visual] = sk, sv
            elif self.seed:
                key, value = torch.cat([key, sk], dim=2), torch.cat([value, sv], dim=2)
        return super().update(key, value, layer_idx, *args, **kwargs)


def _inputs(processor, image, prompt):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return processor(text=[text], images=[image], return_tensors="pt")


def _source_kv(model, processor, image, prompt):
    """Each LLM layer's post-RoPE K/V at the visual positions of a plain source prefill, and those positions."""
    inputs = _inputs(processor, image, prompt)
    with torch.inference_mode():
        out = model(**inputs, use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    visual = (inputs["input_ids"][0] == model.config.image_token_id).nonzero().squeeze(-1)
    return [(layer.keys[:, :, visual], layer.values[:, :, visual]) for layer in cache.layers], visual


def reference_decode(model, processor, target, source, prompt, layer, n_new, *, seed, stop=()):
    """Greedy tokens and per-step logits with the swap from unified ``layer`` on (a manual loop, batch 1)."""
    src, visual = _source_kv(model, processor, source, prompt)
    inputs = _inputs(processor, target, prompt)
    assert torch.equal((inputs["input_ids"][0] == model.config.image_token_id).nonzero().squeeze(-1), visual)
    cache = ReferenceSwapCache(src, visual, layer - 1, seed, config=model.config)
    n = inputs["input_ids"].shape[1]
    pos, delta = model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                            image_grid_thw=inputs["image_grid_thw"])
    kw = {k: v for k, v in inputs.items() if k != "attention_mask"}  # batch 1, no mask: one-query path sees all keys
    tokens, logits = [], []
    with torch.inference_mode():
        out = model(**kw, position_ids=pos, cache=cache, use_cache=True)
        for step in range(n_new):
            logits.append(out.logits[0, -1].float())
            tokens.append(int(out.logits[0, -1].argmax()))
            if tokens[-1] in stop or step == n_new - 1:
                break
            p = (torch.tensor([n + step]) + delta[0]).view(1, 1, 1).expand(3, 1, 1)  # positions: tokens, not cache
            out = model(input_ids=torch.tensor([[tokens[-1]]]), position_ids=p, cache=cache, use_cache=True)
    return tokens, torch.stack(logits), cache, n


def frankeneval_logits(g, target, swap, n_new):
    inputs = g.encode([GenRequest(PROMPT, [target])])
    with torch.inference_mode(), apply_interventions(g.model, [[swap]], input_ids=inputs["input_ids"],
                                                     attention_mask=inputs["attention_mask"]):
        cfg = GenerationConfig(max_new_tokens=n_new, do_sample=False, eos_token_id=None, pad_token_id=g._pad_id())
        out = g.model.generate(**inputs, generation_config=cfg, output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, inputs["input_ids"].shape[1]:].tolist(), torch.stack(out.logits)[:, 0].float()


@pytest.mark.parametrize("layer", [1, 3, 6])
def test_seed_compatible_reappend_equals_literal_reference(gen, layer):
    target, source = noise_image(1), noise_image(2)
    kv = gen.visual_kv(source, prompt=PROMPT)
    n_new = 8
    default_tokens, default_logits = frankeneval_logits(gen, target, SwapVisualKV(kv, layer), n_new)
    seed_tokens, seed_logits = frankeneval_logits(gen, target, SwapVisualKV(kv, layer, seed_compatible=True), n_new)
    ref_tokens, ref_logits, cache, n = reference_decode(gen.model, gen.processor, target, source, PROMPT, layer,
                                                        n_new, seed=True)
    # the literal reference: each swapped layer's cache grew by 1 + n_visual per fed-back token, the others by 1
    n_vis, fed = kv.n_visual, n_new - 1
    assert [lay.keys.shape[2] for lay in cache.layers] == [n + fed * (1 + (n_vis if j >= layer - 1 else 0))
                                                          for j in range(len(cache.layers))]
    assert seed_tokens == ref_tokens
    torch.testing.assert_close(seed_logits, ref_logits, atol=1e-4, rtol=0)
    # prefill is the default swap's: same first token and logits; from step 2 on the copies change the logits
    assert seed_tokens[0] == default_tokens[0]
    torch.testing.assert_close(seed_logits[0], default_logits[0], atol=0, rtol=0)
    assert (seed_logits[1:] - default_logits[1:]).abs().amax() > 1e-3
    _, plain_ref_logits, _, _ = reference_decode(gen.model, gen.processor, target, source, PROMPT, layer, n_new,
                                                 seed=False)
    torch.testing.assert_close(default_logits, plain_ref_logits, atol=1e-4, rtol=0)


def test_seed_compatible_rows_in_a_padded_batch_equal_single_calls(gen, tiny_lineage):
    target, source = noise_image(3), noise_image(4)
    kv = gen.visual_kv(source, prompt=PROMPT)
    kv_long = gen.visual_kv(source, prompt=PROMPT + " Describe every detail of it.")
    reqs = [GenRequest(PROMPT, [target]), GenRequest(PROMPT, [target]), GenRequest(PROMPT, [target]),
            GenRequest(PROMPT + " Describe every detail of it.", [target]), GenRequest("Hello", [])]
    rows = [[], [SwapVisualKV(kv, 3)], [SwapVisualKV(kv, 1, seed_compatible=True)],
            [SwapVisualKV(kv_long, 4, seed_compatible=True)], []]
    out = gen.generate(reqs, max_new_tokens=10, ignore_eos=True, interventions=rows, batch_size=5)
    eager = Generator.load(str(tiny_lineage.rl), dtype="float32", device="cpu", attn_implementation="eager")
    for r, (req, row) in enumerate(zip(reqs, rows)):
        one = gen.generate([req], max_new_tokens=10, ignore_eos=True, interventions=[row], batch_size=1)[0]
        assert out[r].token_ids == one.token_ids
        assert (eager.generate([req], max_new_tokens=10, ignore_eos=True, interventions=[row])[0].token_ids
                == one.token_ids)


# --------------------------------------------------------------------------- 3. pairs: first 50 vs the sub-sample
def test_seed_compatible_pairs_are_the_first_50_in_file_order(shared_data):
    items = list(range(100))
    assert REFERENCE_PAIRS == 50
    assert select_pairs(items, None, 123, seed_compatible=True) == items[:50]
    assert select_pairs(items, 10, 123, seed_compatible=True) == items[:10]
    sampled = select_pairs(items, 50, 123)
    assert sampled == sorted(int(i) for i in np.random.RandomState(123).choice(100, 50, replace=False))
    assert sampled != items[:50] and select_pairs(items, None, 123) == items
    root = shared_data / "vision_probes"
    for task in ("counting", "ocr"):
        in_file = [p.id for p in load_probe_pairs(root, task)]
        ref = load_probe_sets((task,), data=root, seed_compatible=True)[task]
        paper = load_probe_sets((task,), data=root, samples=50, seed=123)[task]
        assert [p.id for p in ref] == in_file[:50]
        assert [p.id for p in paper] != in_file[:50] and len(paper) == 50


# --------------------------------------------------------------------------- recorded and keyed
def test_seed_compatible_recorded_and_never_mixed(gen, image_prompt_probes, tmp_path):
    pairs = load_probe_sets(("counting",), data=image_prompt_probes, samples=2)
    units_paper, _ = vision_units(pairs, [2])
    units_seed, _ = vision_units(pairs, [2], seed_compatible=True)
    def swap_keys(units):
        return {u.key for u in units if u.info["kind"] == "swap"}
    assert swap_keys(units_paper).isdisjoint(swap_keys(units_seed))
    res = run_vision_sweep(gen, pairs, [2], tmp_path, model_name="rl", max_new_tokens=6, seed_compatible=True,
                           progress=False)
    assert res["seed_compatible"] is True
    assert json.loads((tmp_path / "vision_localization.json").read_text())["seed_compatible"] is True
    header = json.loads((tmp_path / "units.jsonl").read_text().splitlines()[0])["_header"]
    assert header["seed_compatible"] is True
    with pytest.raises(RunStoreMismatch, match="seed_compatible"):
        run_vision_sweep(gen, pairs, [2], tmp_path, model_name="rl", max_new_tokens=6, progress=False)
    for p in res["pairs"]:  # the sweep's swaps are the seed-compatible intervention
        pair = next(x for x in pairs["counting"] if x.id == p["id"])
        target, source = (Image.open(x).convert("RGB") for x in (pair.target_image, pair.source_image))
        one = gen.generate([GenRequest(pair.prompt, [target])], max_new_tokens=6,
                           interventions=[SwapVisualKV(source, 2, seed_compatible=True)])[0].text
        assert p["swapped"]["2"] == one


def test_cli_seed_compatible(tiny_lineage, tmp_path):
    from frankeneval.cli import main

    # --seed-compatible never renders probes itself: a probe folder written by make-probes stands in for the data
    assert main(["make-probes", str(tmp_path / "probes"), "--tasks", "counting"]) == 0
    common = ["localize-vision", "--model", str(tiny_lineage.rl), "--data", str(tmp_path / "probes"),
              "--tasks", "counting", "--layers", "2", "--max-new-tokens", "3", "--dtype", "float32",
              "--device", "cpu", "--no-progress"]
    assert main([*common, "--samples", "2", "--seed-compatible", "--out", str(tmp_path / "seed")]) == 0
    assert main([*common, "--samples", "2", "--out", str(tmp_path / "paper")]) == 0
    seed = json.loads((tmp_path / "seed" / "vision_localization.json").read_text())
    paper = json.loads((tmp_path / "paper" / "vision_localization.json").read_text())
    assert seed["seed_compatible"] is True and paper["seed_compatible"] is False
    assert seed["pair_selection"].startswith("first 2 ") and paper["pair_selection"].startswith("RandomState(123)")
    assert [p["id"] for p in seed["pairs"]] == ["counting_000000", "counting_000001"]
    assert [p["id"] for p in paper["pairs"]] != [p["id"] for p in seed["pairs"]]  # 100 rendered: sampled differ


# --------------------------------------------------------------------------- 5. agreement with an independent run
AGREE_LAYERS = [1, 2, 4, 6]
AGREE_PAIRS = 5  # per task (the paper's sub-sample of the real probe files)
AGREE_NEW = 64   # VISION_MAX_NEW_TOKENS


def independent_answer(model, processor, pair, layer, eos) -> str:
    """Greedy answer on the target with the source's visual K/V swapped in from ``layer`` (None: plain target)."""
    target, source = (Image.open(x).convert("RGB") for x in (pair.target_image, pair.source_image))
    if layer is None:
        layer = model.config.text_config.num_hidden_layers + 1  # no layer swaps
    tokens, _, _, _ = reference_decode(model, processor, target, source, pair.prompt, layer, AGREE_NEW, seed=False,
                                       stop=eos)
    if tokens[-1] in eos:
        tokens = tokens[:-1]
    return processor.tokenizer.decode(tokens, skip_special_tokens=True)


def test_default_sweep_agrees_with_independent_prefill_swap(gen, shared_data, tmp_path):
    pairs = load_probe_sets(data=shared_data / "vision_probes", samples=AGREE_PAIRS, seed=123)
    assert pairs["counting"][0].prompt.startswith("<image>")
    eos = set(gen._eos_ids())
    runs = {bs: run_vision_sweep(gen, pairs, AGREE_LAYERS, tmp_path / f"b{bs}", model_name="rl", batch_size=bs,
                                 max_new_tokens=AGREE_NEW, progress=False) for bs in (1, 32)}
    mismatches, compared, moved = {1: [], 32: []}, 0, 0
    for task, plist in pairs.items():
        for pair in plist:
            ind = {"original": independent_answer(gen.model, gen.processor, pair, None, eos)}
            src_pair = type(pair)(pair.id, pair.task, pair.source_image, pair.source_image, pair.prompt, pair.meta)
            ind["source_own"] = independent_answer(gen.model, gen.processor, src_pair, None, eos)
            for L in AGREE_LAYERS:
                ind[str(L)] = independent_answer(gen.model, gen.processor, pair, L, eos)
            assert ind["1"] == ind["source_own"]  # swapping from layer 1 is running on the source image
            moved += sum(ind[str(L)] != ind["original"] for L in AGREE_LAYERS)
            for bs, res in runs.items():
                rec = next(p for p in res["pairs"] if p["task"] == task and p["id"] == pair.id)
                ours = {"original": rec["original"], "source_own": rec["source_own"], **rec["swapped"]}
                mismatches[bs] += [(task, pair.id, k) for k in ind if ours[k] != ind[k]]
            compared += len(ind)
    print(f"\nagreement: {compared} answers per batch size ({moved} swapped answers differ from the original); "
          f"mismatches b1={len(mismatches[1])} b32={len(mismatches[32])}")
    assert compared == sum(len(v) for v in pairs.values()) * (2 + len(AGREE_LAYERS))
    assert moved >= compared // 4  # the swap does change answers: the comparison is not trivially equal
    assert mismatches == {1: [], 32: []}
