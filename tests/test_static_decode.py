"""The static decoder (preallocated cache, CUDA graph on GPU) gives the tokens ``model.generate`` gives (float32)."""

from __future__ import annotations

import pytest
import torch
from conftest import requires_gpu
from test_generation import noise_image, requests

import frankeneval.engine.decode as decode_mod
from frankeneval.engine.generation import Generator, GenRequest
from frankeneval.engine.interventions import Ablate, CaptureAttention, SwapVisualKV
from frankeneval.errors import FrankenevalError


@pytest.fixture(scope="module")
def gen(tiny_lineage) -> Generator:
    return Generator.load(str(tiny_lineage.rl), device="cpu")


@pytest.fixture
def static_runs(monkeypatch):
    """Counts StaticDecoder.run calls (proves which path a generate call took)."""
    calls = []
    run = decode_mod.StaticDecoder.run

    def spy(self, *a, **k):
        calls.append(self.rows)
        return run(self, *a, **k)

    monkeypatch.setattr(decode_mod.StaticDecoder, "run", spy)
    return calls


def both(gen: Generator, reqs, modes=("hf", "auto"), **kw):
    """The same call through two decode modes (default: model.generate, decode="hf", then the static decoder,
    decode="auto")."""
    try:
        out = []
        for mode in modes:
            gen.decode = mode
            out.append(gen.generate(reqs, **kw))
    finally:
        gen.decode = "auto"
    return tuple(out)


def assert_same(hf, static):
    for a, b in zip(hf, static, strict=True):
        assert a.token_ids == b.token_ids
        assert (a.text, a.finish_reason) == (b.text, b.finish_reason)


@pytest.mark.parametrize("max_new_tokens", [1, 2, 17, 40])
def test_static_decoder_equals_generate(gen, static_runs, max_new_tokens):
    hf, static = both(gen, requests(), max_new_tokens=max_new_tokens, batch_size=4)
    assert static_runs == [4]  # one static call for the batch; none for decode="hf"
    assert_same(hf, static)
    assert all(len(r.token_ids) == max_new_tokens for r in static if r.finish_reason == "length")


def test_per_row_ablation_and_swap_equal_generate(gen, static_runs):
    reqs = requests()
    rows = [[Ablate((2,))], [], [Ablate((1, 6))], [Ablate((3,))]]
    assert_same(*both(gen, reqs, max_new_tokens=20, interventions=rows, batch_size=4))
    target, source = noise_image(7), noise_image(8)
    reqs = [GenRequest("What is it?", [target]) for _ in range(5)]
    rows = [[SwapVisualKV(source, L)] for L in (1, 2, 4, 6, 7)]
    hf, static = both(gen, reqs, max_new_tokens=20, interventions=rows, batch_size=5)
    assert_same(hf, static)
    assert static_runs == [4, 5]
    # swapping from layer 1 is running on the source image, through the static decoder too
    on_source = gen.generate([GenRequest("What is it?", [source])], max_new_tokens=20)[0]
    assert static[0].token_ids == on_source.token_ids


def test_eos_and_stop_strings_finish_rows_as_generate_does(gen, static_runs):
    reqs = requests()
    free = gen.generate(reqs, max_new_tokens=16, ignore_eos=True)
    eos = free[1].token_ids[5]  # a token row 1 produces mid-answer becomes EOS: rows stop at different steps
    cfg = gen.model.generation_config
    old = cfg.eos_token_id
    cfg.eos_token_id = [eos]
    try:
        hf, static = both(gen, reqs, max_new_tokens=16)
    finally:
        cfg.eos_token_id = old
    assert_same(hf, static)
    assert any(len(r.token_ids) < 16 and r.finish_reason == "stop" for r in static)
    stops = [[r.text[3:6]] if len(r.text) > 6 else [] for r in free]
    hf, static = both(gen, reqs, max_new_tokens=16, ignore_eos=True, stop=stops)
    assert_same(hf, static)
    assert sum(r.finish_reason == "stop" for r in static) >= 2


def test_the_checkpoints_generation_config_does_not_steer_either_path(gen, static_runs):
    """A checkpoint's generation_config (hub Qwen2.5-VL: repetition_penalty 1.05) must not change greedy decoding,
    and ignore_eos must ignore its EOS; model.generate fills every None from it (this failed on decode="hf")."""
    reqs = requests()[:2]
    free = gen.generate(reqs, max_new_tokens=10, ignore_eos=True)
    cfg = gen.model.generation_config
    old = (cfg.eos_token_id, cfg.repetition_penalty)
    cfg.eos_token_id, cfg.repetition_penalty = [free[0].token_ids[2]], 3.0
    try:
        hf, static = both(gen, reqs, max_new_tokens=10, ignore_eos=True)
    finally:
        cfg.eos_token_id, cfg.repetition_penalty = old
    assert_same(hf, static)
    assert [r.token_ids for r in hf] == [r.token_ids for r in free]
    assert all(len(r.token_ids) == 10 for r in hf)


def test_prefill_in_chunks_equals_one_prefill(gen, static_runs):
    reqs = requests() + [GenRequest("A text-only question?", [])]
    rows = [[Ablate((4,))], [], [], [Ablate((2,))], []]
    whole = gen.generate(reqs, max_new_tokens=10, interventions=rows, batch_size=5)
    old = gen.prefill_tokens
    gen.prefill_tokens = 1  # one row per prefill forward
    try:
        chunked = gen.generate(reqs, max_new_tokens=10, interventions=rows, batch_size=5)
    finally:
        gen.prefill_tokens = old
    assert_same(whole, chunked)
    assert static_runs == [5, 5]


def test_what_the_static_decoder_does_not_take_goes_through_generate(gen, static_runs):
    gen.generate(requests()[:2], max_new_tokens=4, do_sample=True, seed=0)
    gen.generate(requests()[:2], max_new_tokens=4, repetition_penalty=1.3)
    gen.generate([GenRequest("x", [noise_image(7)])], max_new_tokens=4,
                 interventions=[[SwapVisualKV(noise_image(8), 2, seed_compatible=True)]])
    assert static_runs == []
    with pytest.raises(FrankenevalError, match="decode must be one of"):
        gen.decode = "fast"


@requires_gpu
def test_cuda_graph_decoder_equals_generate_on_gpu(tiny_lineage, monkeypatch):
    monkeypatch.setattr(decode_mod.StaticDecoder, "GROW_TOKENS", 8)  # the graph is captured again at 8 and 16 tokens
    g = Generator.load(str(tiny_lineage.rl), device="cuda", dtype="float32")
    reqs = requests()
    rows = [[Ablate((2,))], [], [Ablate((1, 6))], []]
    hf, static = both(g, reqs, max_new_tokens=24, interventions=rows)
    assert_same(hf, static)
    for req, res in zip(reqs, static):  # batched rows equal their single runs
        single = g.generate([req], max_new_tokens=24, interventions=[rows[reqs.index(req)]], batch_size=1)[0]
        assert single.token_ids == res.token_ids
    assert torch.cuda.is_available()


def vision_passes(gen: Generator, monkeypatch) -> list[int]:
    """The number of images of each vision-tower pass from now on (filled as the passes run)."""
    passes: list[int] = []
    real = gen.model.get_image_features

    def spy(pixel_values, image_grid_thw, **kw):
        passes.append(int(image_grid_thw.shape[0]))
        return real(pixel_values, image_grid_thw, **kw)

    monkeypatch.setattr(gen.model, "get_image_features", spy)
    return passes


def test_prompt_encoder_batches_as_the_processor_and_encodes_each_image_once(gen, monkeypatch):
    reqs = requests() + [GenRequest("A text-only question?", [])]
    expected = gen.encode(reqs)
    gen.encoder.clear()
    images_encoded = vision_passes(gen, monkeypatch)
    inputs, features, _ = gen.encoder.encode([gen.chat_text(r) for r in reqs], [r.images for r in reqs])
    for name in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw"):
        if name in expected:
            assert torch.equal(inputs[name].cpu(), expected[name].cpu()), name
    # the embeddings equal what the model's forward builds from pixel_values
    with torch.inference_mode():
        ours = gen.encoder.embeds(inputs["input_ids"], features, gen.model.get_input_embeddings())
        ref = gen.model.model(**expected, use_cache=False, output_hidden_states=True).hidden_states[0]
    assert torch.allclose(ours, ref, atol=1e-6)
    assert images_encoded == [4]  # the 4 images of the batch, in one call
    target = noise_image(1)  # already encoded (row 0): a sweep's repeated target image costs no vision tower
    gen.generate([GenRequest("again?", [target]) for _ in range(6)], max_new_tokens=2)
    assert images_encoded == [4]


def test_auto_batch_size_counts_memory_the_allocator_holds_unused(gen, monkeypatch):
    """On a GPU, batch_size="auto" starts from free memory; PyTorch's cache of freed blocks is free for this process
    (measured on an H200: after a large call mem_get_info alone made auto settle on 66 rows instead of ~264)."""
    import frankeneval.engine.generation as generation

    gib = 1 << 30
    monkeypatch.setattr(Generator, "device", property(lambda self: torch.device("cuda", 0)))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * gib, 140 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 100 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 20 * gib)
    assert generation.usable_gpu_memory(gen.device) == 82 * gib
    per_row = 100 << 20  # a 7B row: K/V of 2048 + 128 tokens is ~120 MiB
    monkeypatch.setattr(decode_mod.StaticDecoder, "cache_bytes", staticmethod(lambda model, rows, length: per_row))
    old = gen.max_batch_size
    gen.max_batch_size = None
    try:
        rows = gen._start_batch_size(128, static=True)
    finally:
        gen.max_batch_size = old
    assert rows == 82 * gib // 4 // per_row == 209  # mem_get_info's 2 GiB alone would give 64


def test_the_cache_grows_when_answers_run_past_its_first_slots(gen, static_runs, monkeypatch):
    monkeypatch.setattr(decode_mod.StaticDecoder, "GROW_TOKENS", 3)  # grows at 3, 6, 12, 24 new tokens
    rows = [[Ablate((2,))], [], [], [Ablate((5,))]]
    hf, static = both(gen, requests(), max_new_tokens=30, interventions=rows, batch_size=4)
    assert_same(hf, static)
    assert static_runs == [4]


def test_profile_adds_up_the_phases_of_the_static_path(gen):
    gen.profile, gen.timings = True, {}
    gen.encoder.clear()  # fresh prompts: the processor and the vision tower run
    try:
        gen.generate(requests(), max_new_tokens=5, batch_size=4)
    finally:
        gen.profile = False
    assert set(gen.timings) == {"encode", "processor", "vision", "prefill", "decode"}
    assert all(t > 0 for t in gen.timings.values())


def _capture_rows():
    return [[CaptureAttention()], [CaptureAttention(layers=[2, 5])], [Ablate([3]), CaptureAttention()],
            [CaptureAttention(query="last")], [], [CaptureAttention(layers=[1, 6], query="prompt")]]


def assert_same_captures(hf, static):
    assert_same(hf, static)
    for a, b in zip(hf, static, strict=True):
        assert len(a.captures) == len(b.captures)
        for ca, cb in zip(a.captures, b.captures, strict=True):
            assert (ca.layers, ca.query, ca.mass.shape) == (cb.layers, cb.query, cb.mass.shape)
            torch.testing.assert_close(cb.mass, ca.mass, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ignore_eos", [True, False])
def test_static_decoder_captures_what_the_hooked_forward_captures(gen, static_runs, monkeypatch, ignore_eos):
    """Per row, layer, head and generated token, in a padded batch of mixed captures, an ablation and a plain row;
    the cache (and the capture buffer) grows twice on the way (8 -> 16 -> 19 new-token slots)."""
    monkeypatch.setattr(decode_mod.StaticDecoder, "GROW_TOKENS", 8)
    reqs = [GenRequest(f"Describe picture {i}" + " in words" * i, [noise_image(30 + i)]) for i in range(6)]
    hf, static = both(gen, reqs, max_new_tokens=20, ignore_eos=ignore_eos, interventions=_capture_rows(),
                      batch_size=6)
    assert static_runs == [6]
    assert_same_captures(hf, static)
    assert static[0].captures[0].mass.shape[-1] == len(static[0].token_ids) + (static[0].finish_reason == "stop")


@requires_gpu
def test_cuda_graph_decoder_captures_what_the_hooked_forward_captures(tiny_lineage, monkeypatch):
    monkeypatch.setattr(decode_mod.StaticDecoder, "GROW_TOKENS", 8)
    g = Generator.load(str(tiny_lineage.rl), device="cuda", dtype="float32")
    reqs = [GenRequest(f"Describe picture {i}" + " in words" * i, [noise_image(30 + i)]) for i in range(6)]
    hf, static = both(g, reqs, max_new_tokens=20, ignore_eos=True, interventions=_capture_rows(), batch_size=6)
    assert_same_captures(hf, static)
