"""Swap rows prefilled from their prompt's shared prefix (engine/branch.py) give the tokens of a full prefill."""

from __future__ import annotations

import pytest
from test_generation import noise_image
from test_static_decode import assert_same

from frankeneval.engine import generation
from frankeneval.engine.generation import Generator, GenRequest
from frankeneval.engine.interventions import Ablate, SwapVisualKV


@pytest.fixture(scope="module")
def gen(tiny_lineage) -> Generator:
    return Generator.load(str(tiny_lineage.rl), device="cpu", dtype="float32")


@pytest.fixture
def branched(monkeypatch):
    """The batch rows each generate call prefilled by branching."""
    seen = []
    real = generation.branch_prefill

    def spy(model, plan, **kw):
        if plan.rows:
            seen.append(sorted(plan.rows))
        yield from real(model, plan, **kw)

    monkeypatch.setattr(generation, "branch_prefill", spy)
    return seen


def mixed_batch():
    """Two probe-like pairs (different image sizes and question lengths), their plain rows, an ablation row, a
    text-only row, and a two-image row (never branched)."""
    t1, s1 = noise_image(11, (112, 112)), noise_image(12, (112, 112))
    t2, s2 = noise_image(13, (140, 84)), noise_image(14, (140, 84))
    q1, q2 = "How many objects are there?", "Read the text in the image, then answer in one word, please."
    reqs, rows = [], []
    for L in (1, 2, 3, 5, 7, 9):
        reqs.append(GenRequest(q1, [t1]))
        rows.append([SwapVisualKV(s1, L)])
    reqs += [GenRequest(q1, [t1]), GenRequest(q2, [t2]), GenRequest("Just text, no image.", []),
             GenRequest(q2, [t2], system="Answer briefly.")]
    rows += [[], [], [], [Ablate((2,))]]
    for L in (4, 1, 6):
        reqs.append(GenRequest(q2, [t2]))
        rows.append([SwapVisualKV(s2, L)])
    reqs.append(GenRequest(q2, [t2], system="Answer briefly."))  # another system prompt: its own prefix
    rows.append([SwapVisualKV(s2, 3)])
    reqs.append(GenRequest("Compare.", [t1, t2]))
    rows.append([])
    return reqs, rows


def test_branched_swap_rows_equal_a_full_prefill_and_generate(gen, branched):
    reqs, rows = mixed_batch()
    kw = dict(max_new_tokens=24, interventions=rows, batch_size=len(reqs))
    gen.branch_swaps = False
    try:
        full = gen.generate(reqs, **kw)
        gen.decode = "hf"
        hf = gen.generate(reqs, **kw)
    finally:
        gen.branch_swaps, gen.decode = True, "auto"
    assert branched == []
    ours = gen.generate(reqs, **kw)
    swap_rows = {i for i, r in enumerate(rows) if r and isinstance(r[0], SwapVisualKV)}
    # generate's batch order
    order = gen.request_order(reqs)
    assert len(branched) == 1 and {order[b] for b in branched[0]} == swap_rows
    assert_same(full, ours)
    assert_same(hf, ours)


def test_branched_swap_from_layer_1_is_the_source_image_and_past_the_last_layer_is_plain(gen, branched):
    target, source = noise_image(21, (112, 112)), noise_image(22, (112, 112))
    q = "What is shown?"
    n = gen.n_llm_layers
    swapped = gen.generate([GenRequest(q, [target])] * 2, max_new_tokens=20,
                           interventions=[[SwapVisualKV(source, 1)], [SwapVisualKV(source, n + 1)]])
    assert branched
    plain_source, plain_target = gen.generate([GenRequest(q, [source]), GenRequest(q, [target])], max_new_tokens=20)
    assert swapped[0].token_ids == plain_source.token_ids
    assert swapped[1].token_ids == plain_target.token_ids
