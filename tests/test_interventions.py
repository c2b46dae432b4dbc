"""Exact invariants of the interventions on the tiny lineage (CPU, float32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from frankeneval.engine.generation import Generator, GenRequest
from frankeneval.engine.interventions import (
    Ablate,
    CaptureAttention,
    Intervention,
    RowPlan,
    SwapVisualKV,
    apply_interventions,
    decoder_layers,
    parse_intervention_spec,
)
from frankeneval.errors import InterventionError, SpecError

PROMPT = "What is shown in the picture?"
ATOL = 1e-5


def noise_image(seed: int, size=(112, 112)) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def gen(tiny_lineage) -> Generator:
    return Generator.load(str(tiny_lineage.rl), device="cpu")


@pytest.fixture(scope="module")
def gen_eager(tiny_lineage) -> Generator:
    return Generator.load(str(tiny_lineage.rl), device="cpu", attn_implementation="eager")


def prefill_logits(g: Generator, requests, rows=None) -> tuple[torch.Tensor, dict]:
    inputs = g.encode(requests)
    with torch.inference_mode(), apply_interventions(
        g.model, rows, input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
    ):
        logits = g.model(**inputs).logits.float()
    return logits, inputs


def after_visual(inputs, row: int = 0) -> slice:
    pos = (inputs["input_ids"][row] == 566).nonzero().squeeze(-1)  # tiny lineage image_token_id
    return slice(int(pos.max()) + 1, None)


# ------------------------------------------------------------------------------------------------ swap
def test_swap_from_layer1_equals_running_on_source(gen):
    target, source = noise_image(1), noise_image(2)
    kv = gen.visual_kv(source, prompt=PROMPT)
    swapped, inputs = prefill_logits(gen, [GenRequest(PROMPT, [target])], [[SwapVisualKV(kv, 1)]])
    on_source, _ = prefill_logits(gen, [GenRequest(PROMPT, [source])])
    on_target, _ = prefill_logits(gen, [GenRequest(PROMPT, [target])])
    s = after_visual(inputs)
    assert not torch.allclose(on_target[:, s], on_source[:, s], atol=1e-3)  # the images do matter
    torch.testing.assert_close(swapped[:, s], on_source[:, s], atol=ATOL, rtol=0)
    # greedy generation (decode steps read the edited cache), with a PIL source encoded by the Generator
    out = gen.generate([GenRequest(PROMPT, [target])], max_new_tokens=12, interventions=[SwapVisualKV(source, 1)])
    ref = gen.generate([GenRequest(PROMPT, [source])], max_new_tokens=12)
    assert out[0].token_ids == ref[0].token_ids


def test_swap_past_last_layer_is_unmodified(gen):
    target, source = noise_image(3), noise_image(4)
    n = len(decoder_layers(gen.model))
    kv = gen.visual_kv(source, prompt=PROMPT)
    swapped, _ = prefill_logits(gen, [GenRequest(PROMPT, [target])], [[SwapVisualKV(kv, n + 1)]])
    plain, _ = prefill_logits(gen, [GenRequest(PROMPT, [target])])
    torch.testing.assert_close(swapped, plain, atol=0, rtol=0)
    mid, inputs = prefill_logits(gen, [GenRequest(PROMPT, [target])], [[SwapVisualKV(kv, n // 2 + 1)]])
    s = after_visual(inputs)
    assert not torch.allclose(mid[:, s], plain[:, s], atol=1e-4)  # a real swap changes the text logits
    out = gen.generate([GenRequest(PROMPT, [target])], max_new_tokens=8, interventions=[SwapVisualKV(source, n + 1)])
    assert out[0].token_ids == gen.generate([GenRequest(PROMPT, [target])], max_new_tokens=8)[0].token_ids


def test_swap_needs_equal_visual_token_count(gen):
    with pytest.raises(InterventionError, match="same number of visual tokens"):
        gen.generate([GenRequest(PROMPT, [noise_image(5)])], max_new_tokens=2,
                     interventions=[SwapVisualKV(noise_image(6, size=(56, 56)), 1)])


# ------------------------------------------------------------------------------------------------ ablate
def test_ablate_equals_zeroed_o_proj_and_down_proj(gen, tiny_lineage):
    reqs = [GenRequest(PROMPT, [noise_image(7)])]
    zeroed = Generator.load(str(tiny_lineage.rl), device="cpu")
    layers = decoder_layers(zeroed.model)
    for i in (0, 4):  # decoder module i is unified LLM layer i + 1
        ablated, _ = prefill_logits(gen, reqs, [[Ablate([i + 1])]])
        with torch.no_grad():
            saved = layers[i].self_attn.o_proj.weight.clone(), layers[i].mlp.down_proj.weight.clone()
            layers[i].self_attn.o_proj.weight.zero_()
            layers[i].mlp.down_proj.weight.zero_()
        reference, _ = prefill_logits(zeroed, reqs)
        with torch.no_grad():
            layers[i].self_attn.o_proj.weight.copy_(saved[0])
            layers[i].mlp.down_proj.weight.copy_(saved[1])
        plain, _ = prefill_logits(gen, reqs)
        assert not torch.allclose(ablated, plain, atol=1e-3)
        torch.testing.assert_close(ablated, reference, atol=ATOL, rtol=0)


def test_batched_rows_with_different_ablations_equal_single_calls(gen):
    images = [noise_image(10), None, noise_image(11), noise_image(12)]
    prompts = [PROMPT, "Tell me a long story about a cat", "Describe", PROMPT]
    reqs = [GenRequest(p, [im] if im is not None else []) for p, im in zip(prompts, images)]
    rows = [[Ablate([1])], [Ablate([3, 4])], [], [Ablate([6])]]
    batched, inputs = prefill_logits(gen, reqs, rows)
    for r, (req, row) in enumerate(zip(reqs, rows)):
        single, sin = prefill_logits(gen, [req], [row])
        n = int(sin["attention_mask"].sum())
        torch.testing.assert_close(batched[r, -n:], single[0, -n:], atol=ATOL, rtol=0)
    out = gen.generate(reqs, max_new_tokens=10, interventions=rows, batch_size=4)
    for r, (req, row) in enumerate(zip(reqs, rows)):
        one = gen.generate([req], max_new_tokens=10, interventions=[row], batch_size=1)[0]
        assert out[r].token_ids == one.token_ids and out[r].text == one.text


class _AblateOddLayers(Intervention):
    """A new intervention defined outside the engine: only its own plan(), nothing else touched."""

    def plan(self, plan: RowPlan, row: int, n_layers: int, n_visual: int) -> None:
        plan.ablate.update(j for j in range(n_layers) if j % 2 == 0)  # decoder 0, 2, ... = LLM layers 1, 3, ...


def test_a_new_intervention_is_one_class_with_its_plan(gen):
    """Every path (hooked prefill, static decode) reads the plan a subclass fills: the same tokens as Ablate."""
    n = len(decoder_layers(gen.model))
    reqs = [GenRequest(PROMPT, [noise_image(20)]), GenRequest("Count to ten", [])]
    odd = [L for L in range(1, n + 1) if L % 2 == 1]
    mine = gen.generate(reqs, max_new_tokens=8, interventions=_AblateOddLayers(), batch_size=2)
    builtin = gen.generate(reqs, max_new_tokens=8, interventions=Ablate(odd), batch_size=2)
    plain = gen.generate(reqs, max_new_tokens=8, batch_size=2)
    assert [r.token_ids for r in mine] == [r.token_ids for r in builtin]
    assert [r.token_ids for r in mine] != [r.token_ids for r in plain]


def test_ablate_layer_out_of_range(gen):
    with pytest.raises(InterventionError, match="out of range: LLM layers are 1-6"):
        gen.generate([GenRequest(PROMPT, [])], max_new_tokens=1, interventions=[Ablate([99])])
    with pytest.raises(InterventionError, match="out of range"):
        gen.generate([GenRequest(PROMPT, [])], max_new_tokens=1, interventions=[Ablate([7])])  # n + 1
    for make in (lambda: Ablate([0]), lambda: SwapVisualKV(None, 0), lambda: CaptureAttention(layers=[0, 2])):
        with pytest.raises(SpecError, match="layer 0 is the projector"):  # the old 0-based decoder index
            make()


def test_hooks_removed_after_block(gen):
    reqs = [GenRequest(PROMPT, [noise_image(13)])]
    before, _ = prefill_logits(gen, reqs)
    impl = gen.model.config.text_config._attn_implementation
    with pytest.raises(RuntimeError):
        with apply_interventions(
            gen.model, [[Ablate([1]), CaptureAttention()]], input_ids=gen.encode(reqs)["input_ids"]
        ):
            raise RuntimeError("boom")
    after, _ = prefill_logits(gen, reqs)
    assert gen.model.config.text_config._attn_implementation == impl
    torch.testing.assert_close(before, after, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------ capture
def eager_generated_mass(g: Generator, req: GenRequest, max_new_tokens: int) -> tuple[torch.Tensor, list[int]]:
    """(layers, heads, generated tokens) visual mass from eager attention with output_attentions=True."""
    from transformers import GenerationConfig

    inputs = g.encode([req])
    visual = inputs["input_ids"][0] == 566
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=g._pad_id())
    with torch.inference_mode():
        out = g.model.generate(**inputs, generation_config=cfg, output_attentions=True, return_dict_in_generate=True)
    steps = []
    for step, per_layer in enumerate(out.attentions):
        q = -1 if step == 0 else 0
        steps.append(torch.stack([a[0, :, q, : visual.shape[0]][:, visual].sum(-1) for a in per_layer]))
    return torch.stack(steps, dim=-1).float(), out.sequences[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("which", ["sdpa", "eager"])
def test_captured_mass_equals_eager_output_attentions(gen, gen_eager, which):
    g = gen if which == "sdpa" else gen_eager
    req = GenRequest(PROMPT, [noise_image(20)])
    reference, tokens = eager_generated_mass(gen_eager, req, 6)
    out = g.generate([req], max_new_tokens=6, ignore_eos=True, interventions=[CaptureAttention()])[0]
    assert out.token_ids == tokens
    cap = out.captures[0]
    assert cap.layers == tuple(range(1, 7)) and cap.mass.shape == reference.shape == (6, 4, 6)
    torch.testing.assert_close(cap.mass, reference, atol=ATOL, rtol=0)


def test_capture_prompt_and_layer_subset_in_a_padded_batch(gen, gen_eager):
    reqs = [GenRequest("short", [noise_image(21)]), GenRequest(PROMPT + " and some more words here", [noise_image(22)])]
    rows = [[CaptureAttention(layers=[2, 4], query="prompt")], [CaptureAttention(query="last")]]
    inputs = gen.encode(reqs)
    with torch.inference_mode(), apply_interventions(
        gen.model, rows, input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
    ) as session:
        gen.model(**inputs)
    for r in range(2):
        single = gen_eager.encode([reqs[r]])
        visual = single["input_ids"][0] == 566
        with torch.inference_mode():
            att = gen_eager.model(**single, output_attentions=True).attentions
        ref = torch.stack([a[0][:, :, visual].sum(-1) for a in att]).float()  # (layers, heads, queries)
        cap = session.captures(r)[0]
        if r == 0:
            assert cap.layers == (2, 4)  # unified LLM layers = decoder modules 1 and 3
            torch.testing.assert_close(cap.mass, ref[[1, 3]], atol=ATOL, rtol=0)
        else:
            torch.testing.assert_close(cap.mass, ref[:, :, -1:], atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------------------ spec strings
def test_parse_intervention_spec(tmp_path):
    assert parse_intervention_spec("ablate:12") == [Ablate((12,))]
    assert parse_intervention_spec("ablate:3-5") == [Ablate((3, 4, 5))]
    assert parse_intervention_spec("ablate:7+3; ablate:1") == [Ablate((3, 7)), Ablate((1,))]
    assert parse_intervention_spec("none") == [] and parse_intervention_spec(None) == []
    path = tmp_path / "src.png"
    noise_image(0).save(path)
    (swap,) = parse_intervention_spec(f"swapkv:4:{path}")
    assert isinstance(swap, SwapVisualKV) and swap.from_layer == 4 and swap.source.size == (112, 112)
    for bad in ("ablate:x", "ablate:5-3", "drop:1", "swapkv:a:b", f"swapkv:1:{tmp_path / 'missing.png'}"):
        with pytest.raises(SpecError):
            parse_intervention_spec(bad)
    # the layer grammar, unified: words need the depth, ranges are checked against it
    assert parse_intervention_spec("ablate:late", n_layers=6) == [Ablate((5, 6))]
    assert parse_intervention_spec("ablate:1+6", n_layers=6) == [Ablate((1, 6))]
    with pytest.raises(SpecError, match="depth"):
        parse_intervention_spec("ablate:late")
    with pytest.raises(SpecError, match="LLM layers are 1-6"):
        parse_intervention_spec("ablate:7", n_layers=6)
    # old 0-based forms fail with the unified spelling
    with pytest.raises(SpecError, match="write 1$"):
        parse_intervention_spec("ablate:0")
    with pytest.raises(SpecError, match="write 1-3"):
        parse_intervention_spec("ablate:0-2", n_layers=6)
    with pytest.raises(SpecError, match="layer 0 is the projector"):
        parse_intervention_spec(f"swapkv:0:{path}")


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_visual_mass_few_queries_equals_the_attention_call(mask_kind):
    """The decode-step path (explicit softmax over grouped heads) equals the one-attention-call path."""
    from frankeneval.engine import interventions as iv

    g = torch.Generator().manual_seed(0)
    b, kv, n_rep, q_len, k_len, d = 3, 2, 4, 2, 37, 16
    query = torch.randn(b, kv * n_rep, q_len, d, generator=g, dtype=torch.bfloat16)
    key = torch.randn(b, kv, k_len, d, generator=g, dtype=torch.bfloat16)
    visual = torch.rand(b, k_len, generator=g) < 0.4
    mask = None
    if mask_kind != "none":
        allowed = torch.rand(b, 1, q_len, k_len, generator=g) < 0.8
        allowed[..., 0] = True
        mask = allowed if mask_kind == "bool" else torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    few = iv._visual_mass_few(query, key, visual, mask, 0.25, n_rep)
    q = query.float()
    k = key.float().repeat_interleave(n_rep, dim=1)
    ind = visual.float()[:, None, :, None].expand(-1, q.shape[1], -1, 1)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, ind, attn_mask=mask, scale=0.25)[..., 0]
    torch.testing.assert_close(few, want, atol=1e-5, rtol=1e-5)


def test_seed_compatible_swap_interpolates_unequal_visual_token_counts():
    """The reference interpolates the source's visual K/V linearly over token positions (align_corners=False) when
    the counts differ; the default swap refuses. Hand-computed: [0, 2] -> 4 tokens = [0, 0.5, 1.5, 2]."""
    from frankeneval.engine.interventions import VisualKV, plan_rows

    kv = VisualKV(keys=torch.tensor([0.0, 2.0]).reshape(1, 1, 2, 1),
                  values=torch.tensor([4.0, 0.0]).reshape(1, 1, 2, 1))
    visual = torch.tensor([[False, True, True, True, True]])  # the target row has 4 visual tokens
    (plan,) = plan_rows([[SwapVisualKV(kv, from_layer=1, seed_compatible=True)]], 1, visual)
    assert plan.swap.source.keys.flatten().tolist() == [0.0, 0.5, 1.5, 2.0]
    assert plan.swap.source.values.flatten().tolist() == [4.0, 3.0, 1.0, 0.0]
    with pytest.raises(InterventionError, match="same number of visual tokens"):
        plan_rows([[SwapVisualKV(kv, from_layer=1)]], 1, visual)
