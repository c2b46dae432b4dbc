"""decode="compiled": the static decoder's step through torch.compile gives decode="auto"'s tokens (float32), on
static batches, continuous batching, per-row ablations and swaps; the mode is recorded in the sweeps' inputs."""

from __future__ import annotations

import pytest
import torch
from conftest import requires_gpu
from test_generation import noise_image, requests
from test_static_decode import assert_same
from test_static_decode import both as static_decode_both

import frankeneval.engine.decode as decode_mod
from frankeneval.engine.generation import Generator, GenRequest
from frankeneval.engine.interventions import Ablate, SwapVisualKV
from frankeneval.localization.common import model_input

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gen(tiny_lineage) -> Generator:
    return Generator.load(str(tiny_lineage.rl), device="cpu", dtype="float32")


@pytest.fixture
def compiled_steps(monkeypatch):
    """Records, per StaticDecoder made, whether its step is a torch.compile wrapper (and which rows it has)."""
    made = []
    init = decode_mod.StaticDecoder.__init__

    def spy(self, *a, **k):
        init(self, *a, **k)
        made.append((self.rows, hasattr(self._step, "_torchdynamo_orig_callable")))

    monkeypatch.setattr(decode_mod.StaticDecoder, "__init__", spy)
    return made


def both(gen: Generator, reqs, **kw):
    return static_decode_both(gen, reqs, modes=("auto", "compiled"), **kw)


def test_compiled_step_equals_the_eager_step(gen, compiled_steps):
    reqs = requests()
    rows = [[Ablate((2,))], [], [Ablate((1, 4))], []]
    eager, compiled = both(gen, reqs, max_new_tokens=24, interventions=rows, batch_size=4, ignore_eos=True)
    assert_same(eager, compiled)
    assert compiled_steps == [(4, False), (4, True)]  # the compiled mode really ran a compiled step
    # another prompt length and row count, swaps from several layers: the same compiled step (dynamic shapes)
    target, source = noise_image(7), noise_image(8)
    reqs = [GenRequest("What is it?", [target]) for _ in range(3)]
    rows = [[SwapVisualKV(source, L)] for L in (1, 3, 5)]
    assert_same(*both(gen, reqs, max_new_tokens=12, interventions=rows, batch_size=3, ignore_eos=True))


def test_compiled_continuous_batching_equals_eager(gen, compiled_steps):
    reqs = requests() + [GenRequest("Say more.", [noise_image(5)])]
    budgets = [5, 30, 9, 17, 12]
    eager, compiled = both(gen, reqs, max_new_tokens=budgets, batch_size=2, ignore_eos=True)
    assert_same(eager, compiled)
    assert [len(r.token_ids) for r in compiled] == budgets
    assert any(flag for _, flag in compiled_steps)


def test_the_compiled_mode_is_part_of_a_sweeps_model_input(gen):
    try:
        gen.decode = "auto"
        auto = model_input(gen, "rl")
        gen.decode = "compiled"
        compiled = model_input(gen, "rl")
    finally:
        gen.decode = "auto"
    assert "decode" not in auto  # stores written before the mode existed keep resuming
    assert compiled == {**auto, "decode": "compiled"}


@requires_gpu
def test_compiled_step_in_a_cuda_graph_equals_eager_on_gpu(tiny_lineage, monkeypatch):
    monkeypatch.setattr(decode_mod.StaticDecoder, "GROW_TOKENS", 8)  # captured again at 8 and 16 tokens
    g = Generator.load(str(tiny_lineage.rl), device="cuda", dtype="float32")
    rows = [[Ablate((2,))], [], [Ablate((1, 4))], []]
    assert_same(*both(g, requests(), max_new_tokens=24, interventions=rows, ignore_eos=True))
    assert torch.cuda.is_available()
