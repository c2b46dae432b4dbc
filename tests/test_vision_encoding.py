"""The prompt encoder's vision tower: batched window attention (the same features as transformers' per-window
calls), no autograd, and bounded forwards."""

from __future__ import annotations

import pytest
import torch
from test_generation import noise_image
from test_static_decode import vision_passes

from frankeneval.engine.encoding import PromptEncoder
from frankeneval.engine.generation import Generator, GenRequest
from frankeneval.engine.vision_attention import NAME, _vision_attention_modules, batched_windows


@pytest.fixture(scope="module")
def gen(tiny_lineage) -> Generator:
    return Generator.load(str(tiny_lineage.rl), device="cpu", dtype="float32")


def images():
    # different sizes: windows of several lengths (edge windows are smaller) and different patch counts
    return [noise_image(1, (112, 112)), noise_image(2, (140, 84)), noise_image(3, (196, 252))]


def features(gen, model_images, *, batched: bool):
    pix = gen.processor.image_processor(images=model_images, return_tensors="pt")
    with torch.no_grad():
        if batched:
            with batched_windows(gen.model):
                out = gen.model.get_image_features(pix["pixel_values"], pix["image_grid_thw"])
        else:
            out = gen.model.get_image_features(pix["pixel_values"], pix["image_grid_thw"])
    out = getattr(out, "pooler_output", out)
    return torch.cat(list(out)) if not torch.is_tensor(out) else out


def test_batched_window_attention_gives_transformers_features(gen):
    cfg = gen.model.config.vision_config
    assert cfg._attn_implementation == "sdpa"
    calls = []
    import frankeneval.engine.vision_attention as va

    real = va.window_attention

    def spy(*a, **k):
        calls.append(getattr(a[0], va._BOUNDS, None) is not None)
        return real(*a, **k)

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    va._register()
    saved = ALL_ATTENTION_FUNCTIONS[NAME]
    ALL_ATTENTION_FUNCTIONS._global_mapping[NAME] = spy
    try:
        ours = features(gen, images(), batched=True)
    finally:
        ALL_ATTENTION_FUNCTIONS._global_mapping[NAME] = saved
    ref = features(gen, images(), batched=False)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0)
    assert calls and all(calls)  # one call per layer over every patch (not one per window)
    assert len(calls) == cfg.depth
    assert cfg._attn_implementation == "sdpa"  # restored after the block


def test_other_vision_attention_is_left_alone(gen):
    gen.model.set_attn_implementation({"vision_config": "eager"})
    try:
        with batched_windows(gen.model):
            assert gen.model.config.vision_config._attn_implementation == "eager"
    finally:
        gen.model.set_attn_implementation({"vision_config": "sdpa"})


def test_the_vision_tower_runs_without_autograd_in_bounded_forwards(gen, monkeypatch):
    """A 7B call of 256 images ran out of memory on an H200 (138 GiB held by autograd's saved activations)."""
    grad_enabled, patches = [], []
    visual = gen.model.model.visual if hasattr(gen.model, "model") else gen.model.visual

    def pre(module, args, kwargs):
        grad_enabled.append(torch.is_grad_enabled())
        patches.append(int(args[0].shape[0]))

    handle = visual.register_forward_pre_hook(pre, with_kwargs=True)
    enc = PromptEncoder(gen.model, gen.processor, pad_id=gen._pad_id())
    reqs = [GenRequest("What?", [im]) for im in images()]
    texts = [gen.chat_text(r) for r in reqs]
    try:
        _, whole, _ = enc.encode(texts, [r.images for r in reqs])
        enc.clear()
        monkeypatch.setattr(PromptEncoder, "MAX_PATCHES", 1)  # one image per forward
        _, parts, _ = enc.encode(texts, [r.images for r in reqs])
    finally:
        handle.remove()
    sizes = gen.processor.image_processor(images=images(), return_tensors="pt")["image_grid_thw"].prod(-1).tolist()
    assert grad_enabled == [False] * 4
    assert patches == [sum(sizes), *sizes]
    for a, b in zip(whole, parts, strict=True):
        assert not a.requires_grad and torch.allclose(a, b, atol=1e-6, rtol=0)


def test_visual_kvs_encode_the_sources_together_and_equal_visual_kv(gen, monkeypatch):
    sources = [noise_image(31, (112, 112)), noise_image(32, (140, 84)), noise_image(33, (112, 112))]
    prompts = ["How many?", "Read it.", "How many?"]
    gen.encoder.clear()
    gen._kv_cache.clear()
    passes = vision_passes(gen, monkeypatch)
    together = gen.visual_kvs(sources, prompts=prompts)
    assert passes == [3]
    gen._kv_cache.clear()
    gen.encoder.clear()
    alone = [gen.visual_kv(im, prompt=p) for im, p in zip(sources, prompts)]
    assert passes == [3, 1, 1, 1]
    for a, b in zip(together, alone, strict=True):
        assert (torch.allclose(a.keys, b.keys, atol=1e-5, rtol=0)
                and torch.allclose(a.values, b.values, atol=1e-5, rtol=0))


def test_the_attention_name_is_nothing_a_library_interprets():
    """transformers 5.25 reads any implementation named with "flash" as a flash-attention kernel request (issue 28)."""
    assert "flash" not in NAME.lower() and NAME not in ("sdpa", "eager")


def test_the_hooks_and_boundaries_go_with_the_block(gen):
    modules = _vision_attention_modules(gen.model)
    assert len(modules) == gen.model.config.vision_config.depth
    features(gen, images(), batched=True)
    assert all(not m._forward_pre_hooks for m in modules)
    assert all(not hasattr(m, "_frankeneval_window_bounds") for m in modules)


def test_visual_kvs_return_every_key_when_the_call_outgrows_the_cache(gen):
    """Issue 28: a key already cached, older than the cache holds, and more new keys than the cache holds in one call
    (the full vision sweep died with KeyError at 11,201 of 11,571 units). Each answer equals the image's own K/V."""
    old = noise_image(40, (112, 112))
    new = [noise_image(41 + i, (112, 112)) for i in range(3)]
    gen._kv_cache.clear()
    size = gen.kv_cache_size
    gen.kv_cache_size = 2
    try:
        first = gen.visual_kv(old, prompt="How many?")
        got = gen.visual_kvs([old, *new, old], prompts=["How many?"] * 5)
        assert len(gen._kv_cache) == 2
        again = gen.visual_kv(new[-1], prompt="How many?")  # the most recent is kept
        assert again is got[3]
    finally:
        gen.kv_cache_size = size
    assert got[0] is first and got[4] is first
    gen._kv_cache.clear()
    alone = gen.visual_kv(new[1], prompt="How many?")
    assert torch.equal(got[2].keys, alone.keys) and torch.equal(got[2].values, alone.values)
