"""Continuous batching: a finished row is refilled from the queue, and every request's answer is the one it gets
alone (float32 on the CPU, token for token), with mixed lengths, interventions, stop strings and cache moves."""

from __future__ import annotations

from collections import Counter

import pytest
from test_generation import noise_image

import frankeneval.engine.continuous as continuous_mod
from frankeneval.engine.generation import Generator, GenRequest
from frankeneval.engine.interventions import Ablate, SwapVisualKV


@pytest.fixture(scope="module")
def gen(tiny_lineage) -> Generator:
    return Generator.load(str(tiny_lineage.rl), device="cpu")


def mixed_requests() -> list[GenRequest]:
    words = ["count the shapes", "what is written", "where is the circle", "describe it", "is there a square"]
    reqs = []
    for i in range(11):
        images = [] if i % 4 == 3 else [noise_image(100 + i, size=(56 + 28 * (i % 3), 84))]
        reqs.append(GenRequest(f"{words[i % 5]} " + "and more " * (i % 6), images))
    return reqs


def interventions(reqs) -> list[list]:
    rows = []
    for i, r in enumerate(reqs):
        if i % 5 == 1:
            rows.append([Ablate([2 + i % 3])])
        elif i % 5 == 2 and r.images:
            rows.append([SwapVisualKV(noise_image(200 + i, size=r.images[0].size), 1 + i % 4)])
        else:
            rows.append([])
    return rows


@pytest.fixture
def spy(monkeypatch):
    """Counts continuous runs, cache moves and refills; small windows so that moves and growth happen."""
    seen = Counter()
    seen.moves = []
    cls = continuous_mod.ContinuousDecoder
    real_move = cls._move

    def move(self, new_slot):
        seen.moves.append((self.slot_host, new_slot))
        return real_move(self, new_slot)

    monkeypatch.setattr(cls, "_move", move)
    for name in ("steps", "started", "_resize"):
        real = getattr(cls, name)

        def wrapped(self, *a, _real=real, _name=name, **k):
            seen[_name] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(cls, name, wrapped)
    monkeypatch.setattr(cls, "CHECK_EVERY", 4)
    monkeypatch.setattr(cls, "GROW_TOKENS", 8)
    return seen


def eos_on_a_frequent_token(gen: Generator, reqs, monkeypatch, n: int) -> None:
    """Mixed answer lengths: the third most frequent token of this random model's answers counts as EOS."""
    probe = gen.generate(reqs, max_new_tokens=n, ignore_eos=True, batch_size=len(reqs))
    common = Counter(t for r in probe for t in r.token_ids[1:]).most_common(3)
    monkeypatch.setattr(Generator, "_eos_ids", lambda self: {common[2][0]})


@pytest.fixture
def resizes(monkeypatch) -> list[tuple[int, int]]:
    """The continuous decoder's cache resizes while a test runs: (old length, new length)."""
    seen = []
    resize = continuous_mod.ContinuousDecoder._resize

    def record(self, length):
        seen.append((self.keys[0].shape[2], length))
        return resize(self, length)

    monkeypatch.setattr(continuous_mod.ContinuousDecoder, "_resize", record)
    return seen


def alone(gen: Generator, reqs, rows, **kw):
    return [gen.generate([r], interventions=[row], batch_size=1, **kw)[0] for r, row in zip(reqs, rows)]


def assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        assert (x.token_ids, x.text, x.finish_reason) == (y.token_ids, y.text, y.finish_reason)


def test_continuous_equals_each_request_alone(gen, spy, monkeypatch):
    reqs = mixed_requests()
    rows = interventions(reqs)
    eos_on_a_frequent_token(gen, reqs, monkeypatch, 40)
    want = alone(gen, reqs, rows, max_new_tokens=40)
    lengths = {len(r.token_ids) for r in want}
    assert len(lengths) >= 3, lengths  # the case is mixed-length, not trivially equal
    spy.clear()
    got = gen.generate(reqs, max_new_tokens=40, interventions=rows, batch_size=3)
    assert spy["steps"] > 0 and spy["started"] > 1  # it ran continuously and refilled rows
    assert any(old != new for old, new in spy.moves)  # the live content was moved at least once
    assert_same(got, want)


def test_continuous_with_stop_strings_and_budget(gen, spy):
    reqs = mixed_requests()
    probe = gen.generate(reqs, max_new_tokens=20, ignore_eos=True, batch_size=len(reqs))
    stops = [[r.text[len(r.text) // 2 : len(r.text) // 2 + 2]] if r.text.strip() else [] for r in probe]
    want = [gen.generate([r], max_new_tokens=20, ignore_eos=True, stop=[s], batch_size=1)[0]
            for r, s in zip(reqs, stops, strict=True)]
    spy.clear()
    got = gen.generate(reqs, max_new_tokens=20, ignore_eos=True, stop=stops, batch_size=4)
    assert spy["started"] > 1
    assert {r.finish_reason for r in got} >= {"stop"}
    assert_same(got, want)


def test_continuous_off_runs_static_batches(gen, spy):
    reqs = mixed_requests()[:5]
    gen.continuous = False
    try:
        fixed = gen.generate(reqs, max_new_tokens=8, batch_size=2)
    finally:
        gen.continuous = True
    assert spy["steps"] == 0
    assert_same(gen.generate(reqs, max_new_tokens=8, batch_size=2), fixed)


@pytest.mark.parametrize("continuous", [True, False])
def test_one_budget_per_request_equals_each_alone(gen, monkeypatch, continuous):
    reqs = mixed_requests()
    rows = interventions(reqs)
    eos_on_a_frequent_token(gen, reqs, monkeypatch, 24)
    budgets = [3 + (7 * i) % 20 for i in range(len(reqs))]
    want = [gen.generate([r], max_new_tokens=b, interventions=[row], batch_size=1)[0]
            for r, b, row in zip(reqs, budgets, rows, strict=True)]
    gen.continuous = continuous
    try:
        got = gen.generate(reqs, max_new_tokens=budgets, interventions=rows, batch_size=4)
    finally:
        gen.continuous = True
    assert_same(got, want)
    assert {r.finish_reason for r in got} == {"stop", "length"}


def test_time_limit_times_each_request_from_its_own_prefill(gen, spy, monkeypatch):
    """With a time limit the run stays continuous, and each request's clock starts at its own prefill: on a clock
    that advances one second per decode chunk (CHECK_EVERY = 4 steps), a 2.5 s limit cuts every long request after
    its third chunk (1 + 3 x 4 tokens, a prefix of its free answer) and a short budget still ends as ``length``."""
    import types

    import frankeneval.engine.generation as gen_mod

    clock = [0.0]
    monkeypatch.setattr(gen_mod, "time", types.SimpleNamespace(monotonic=lambda: clock[0],
                                                               perf_counter=gen_mod.time.perf_counter))
    steps = continuous_mod.ContinuousDecoder.steps

    def tick(self, n):
        steps(self, n)
        clock[0] += 1.0

    reqs = mixed_requests()[:7]
    budgets = [40, 40, 6, 40, 40, 9, 40]
    free = gen.generate(reqs, max_new_tokens=budgets, batch_size=3, ignore_eos=True)
    monkeypatch.setattr(continuous_mod.ContinuousDecoder, "steps", tick)
    runs = spy["started"]
    cut = gen.generate(reqs, max_new_tokens=budgets, batch_size=3, ignore_eos=True, time_limit=2.5)
    assert spy["started"] > runs  # a continuous run (refills), not static batches
    for b, f, c in zip(budgets, free, cut, strict=True):
        if b < 13:
            assert (c.finish_reason, c.token_ids) == ("length", f.token_ids)
        else:
            assert c.finish_reason == "timeout"
            assert c.token_ids == f.token_ids[:13]


def test_a_long_prompt_gone_shrinks_the_window_and_answers_stay_the_same(gen, spy, resizes, monkeypatch):
    """Every step attends over the whole cache window: once the long prompts (first: longest first) are answered,
    the window is cut to what the short rows need, and every answer is still the one it gets alone (float32). With
    SHRINK off the window never gets shorter (the case would have stayed at the long prompts' length)."""
    long_text = "describe every shape and colour and more " * 12
    reqs = [GenRequest(long_text + str(i), [noise_image(300 + i, size=(112, 112))]) for i in range(2)]
    reqs += [GenRequest(f"count {i}", [noise_image(400 + i, size=(28, 28))]) for i in range(6)]
    budgets = [3, 3] + [40] * 6
    want = alone(gen, reqs, [[] for _ in reqs], max_new_tokens=budgets[0], ignore_eos=True)[:2]
    want += [gen.generate([r], max_new_tokens=40, ignore_eos=True, batch_size=1)[0] for r in reqs[2:]]
    got = gen.generate(reqs, max_new_tokens=budgets, ignore_eos=True, batch_size=2)
    assert_same(got, want)
    assert any(new < old for old, new in resizes), resizes  # the window was shrunk
    resizes.clear()
    monkeypatch.setattr(continuous_mod.ContinuousDecoder, "SHRINK", False)
    assert_same(gen.generate(reqs, max_new_tokens=budgets, ignore_eos=True, batch_size=2), want)
    assert not any(new < old for old, new in resizes), resizes


def test_a_resize_holds_at_most_one_old_layer_beside_the_new_cache(gen, monkeypatch):
    """Growing or shrinking the cache replaces it layer by layer: the old layer is freed before the next new one is
    made, so the peak is the larger cache plus one layer, not both caches (at 7B with 115 rows a shrink from 2,646
    slots held both: +9.6 GiB)."""
    import weakref

    import torch

    decoder = continuous_mod.ContinuousDecoder(gen.model, rows=3, prompt_len=40, max_new_tokens=600, device="cpu",
                                               dtype=torch.float32, use_graph=False)
    for length in (400, 120):  # grow, then shrink
        old = [weakref.ref(t) for t in (*decoder.keys, *decoder.values)]
        old_bytes = sum(t().nbytes for t in old)
        layer_new = decoder.keys[0][:, :, :1].nbytes * length
        made, peak = [], 0
        real_full = torch.full

        def full(*args, **kwargs):
            nonlocal peak
            out = real_full(*args, **kwargs)
            if out.dim() == 4:  # a layer's keys or values
                made.append(out.nbytes)
                alive = sum(r().nbytes for r in old if r() is not None)
                peak = max(peak, alive + sum(made))
            return out

        monkeypatch.setattr(torch, "full", full)
        decoder._resize(length)
        monkeypatch.setattr(torch, "full", real_full)
        assert decoder.keys[0].shape[2] == length and len(made) == len(old)
        assert all(r() is None for r in old)
        assert peak <= max(old_bytes, sum(made)) + max(layer_new, old_bytes // len(old)), (peak, old_bytes, sum(made))


def test_prompt_slots_are_the_encoded_prompt_lengths_and_the_longest_runs_first(gen):
    """The order is by the prompt's length in cache slots (text tokens + visual tokens), which equals what the
    processor makes of it; a long text beside a small image runs before a short text beside a larger image
    (ordering by visual tokens first put them the other way round, and padded the transfer's prefill)."""
    reqs = [GenRequest("short", [noise_image(1, size=(112, 84))]),
            GenRequest("a long question about the picture " * 8, [noise_image(2, size=(56, 56))]),
            GenRequest("no image but a middling text " * 3),
            GenRequest("two images", [noise_image(3, size=(56, 84)), noise_image(4, size=(84, 56))])]
    encoded = [gen.processor(text=[gen.chat_text(r)], images=r.images or None, return_tensors="pt")["input_ids"]
               .shape[1] for r in reqs]
    assert gen.prompt_slots(reqs) == encoded
    assert gen.request_order(reqs) == sorted(range(len(reqs)), key=lambda i: -encoded[i])
    assert gen.request_order(reqs).index(1) < gen.request_order(reqs).index(0)


def test_the_window_follows_the_waves_down_and_answers_stay_the_same(gen, spy, resizes):
    """Waves of shorter and shorter prompts (longest first): once the window is 1.5 times what the live rows need
    it is cut, so later waves attend over less (the rule of 6891b04 waited for four times, and never cut the
    transfer's window); every answer is the one it gets alone (float32)."""
    reqs = [GenRequest("describe the picture and more " * k + str(i), [noise_image(500 + 10 * k + i, size=(56, 56))])
            for k in (12, 6, 1) for i in range(2)]
    slots = gen.prompt_slots(reqs)
    window = slots[0] + 8  # the first wave's prompt + GROW_TOKENS; 8 new tokens a wave: it never grows
    assert window >= 1.5 * (slots[-1] + 4 + 4 + 8) and window < 4 * (slots[-1] + 4 + 4)  # the two rules differ here
    want = [gen.generate([r], max_new_tokens=8, ignore_eos=True, batch_size=1)[0] for r in reqs]
    got = gen.generate(reqs, max_new_tokens=8, ignore_eos=True, batch_size=2)
    assert_same(got, want)
    assert any(new < old for old, new in resizes), resizes  # cut as the waves got shorter
