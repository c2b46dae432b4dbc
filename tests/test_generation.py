"""The Generator on the tiny lineage: batching, stop sequences, OOM back-off, scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from frankeneval.engine.generation import Generator, GenRequest
from frankeneval.errors import FrankenevalError


def noise_image(seed: int, size=(112, 112)) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def gen(tiny_lineage) -> Generator:
    return Generator.load(str(tiny_lineage.rl), device="cpu")


def requests() -> list[GenRequest]:
    return [
        GenRequest("What is in the image?", [noise_image(1)]),
        GenRequest("Write a poem about the sea and the wind.", []),
        GenRequest("Two pictures: compare.", [noise_image(2), noise_image(3, size=(84, 84))], system="Be brief."),
        GenRequest("hi", [noise_image(4, size=(56, 84))]),
    ]


def test_batched_equals_unbatched_greedy(gen):
    reqs = requests()
    batched = gen.generate(reqs, max_new_tokens=12, batch_size=4)
    for req, res in zip(reqs, batched):
        single = gen.generate([req], max_new_tokens=12, batch_size=1)[0]
        assert res.token_ids == single.token_ids and res.text == single.text
        assert res.finish_reason in ("stop", "length")


def test_ignore_eos_generates_exactly_max_new_tokens(gen):
    out = gen.generate(requests(), max_new_tokens=9, ignore_eos=True)
    assert all(len(r.token_ids) == 9 and r.finish_reason == "length" for r in out)


def test_per_row_stop_strings_truncate_and_stop_early(gen):
    reqs = requests()[:2]
    free = gen.generate(reqs, max_new_tokens=16, ignore_eos=True)
    stops = []
    for r in free:  # a stop string that first occurs mid-output
        assert len(r.text) > 8
        stops.append([r.text[4:7]])
    out = gen.generate(reqs, max_new_tokens=16, ignore_eos=True, stop=stops)
    for r, f, s in zip(out, free, stops):
        cut = f.text.find(s[0])
        assert r.text == f.text[:cut]
        assert r.finish_reason == "stop"
        assert len(r.token_ids) < 16  # generation stopped once the stop string appeared
        assert r.token_ids == f.token_ids[: len(r.token_ids)]
    # the same stop list for every row; a stop string that never occurs leaves the text alone
    same = gen.generate(reqs, max_new_tokens=16, ignore_eos=True, stop=["\u2603never"])
    assert [r.text for r in same] == [r.text for r in free]


def test_auto_batch_size_backs_off_on_out_of_memory(gen):
    reqs = requests()
    reference = gen.generate(reqs, max_new_tokens=6, batch_size=1)
    calls = []

    def fake_oom(module, args, kwargs):
        ids = kwargs.get("input_ids")
        rows = (ids if ids is not None else kwargs["inputs_embeds"]).shape[0]  # the static decoder passes embeddings
        calls.append(rows)
        if rows > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    handle = gen.model.register_forward_pre_hook(fake_oom, with_kwargs=True)
    gen._auto_batch_size = None
    try:
        out = gen.generate(reqs, max_new_tokens=6, batch_size="auto")
    finally:
        handle.remove()
    assert calls[0] == 4 and max(c for c in calls[1:]) <= 2
    assert gen._auto_batch_size == 2
    assert [r.token_ids for r in out] == [r.token_ids for r in reference]


def test_fixed_batch_size_does_not_hide_out_of_memory(gen):
    def fake_oom(module, args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    handle = gen.model.register_forward_pre_hook(fake_oom)
    try:
        with pytest.raises(torch.cuda.OutOfMemoryError):
            gen.generate(requests()[:2], max_new_tokens=2, batch_size=2)
    finally:
        handle.remove()


def forced_logprob(gen: Generator, req: GenRequest, cont_ids: list[int]) -> tuple[float, bool]:
    """Independent path: incremental decoding (KV cache) forced through ``cont_ids``, raw logits scored."""
    from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

    class Force(LogitsProcessor):
        def __call__(self, input_ids, scores):
            step = input_ids.shape[1] - prompt_len
            forced = torch.full_like(scores, float("-inf"))
            forced[:, cont_ids[step]] = 0.0
            return forced

    inputs = gen.encode([req])
    prompt_len = inputs["input_ids"].shape[1]
    cfg = GenerationConfig(max_new_tokens=len(cont_ids), do_sample=False, eos_token_id=None, pad_token_id=gen._pad_id())
    with torch.inference_mode():
        res = gen.model.generate(**inputs, generation_config=cfg, logits_processor=LogitsProcessorList([Force()]),
                                 output_logits=True, return_dict_in_generate=True)
    assert res.sequences[0, prompt_len:].tolist() == cont_ids
    ll = sum(float(torch.log_softmax(lg[0].float(), -1)[t]) for lg, t in zip(res.logits, cont_ids))
    greedy = all(int(lg[0].argmax()) == t for lg, t in zip(res.logits, cont_ids))
    return ll, greedy


def test_loglikelihood_matches_incremental_decoding(gen):
    req = GenRequest("What is in the image?", [noise_image(1)])
    for cont in (" a red square", "hello world"):
        ids = gen.tokenizer(cont, add_special_tokens=False)["input_ids"]
        ll, greedy = gen.loglikelihood(req.prompt, cont, req.images)
        ref_ll, ref_greedy = forced_logprob(gen, req, ids)
        assert ll == pytest.approx(ref_ll, abs=1e-4) and greedy == ref_greedy
    # the independent path agrees that the greedy tokens are greedy
    out = gen.generate([req], max_new_tokens=4, ignore_eos=True)[0]
    ref_ll, ref_greedy = forced_logprob(gen, req, out.token_ids)
    assert ref_greedy


def test_bad_arguments(gen):
    with pytest.raises(FrankenevalError):
        gen.generate(requests()[:2], stop=[["a"], ["b"], ["c"]])
    with pytest.raises(FrankenevalError):
        gen.generate(requests()[:1], batch_size="big")
    assert gen.generate([], max_new_tokens=2) == []
