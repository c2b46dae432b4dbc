"""The layer map: both naming schemes, every tensor classified, the unified axis."""

from __future__ import annotations

import pytest

from frankeneval.errors import SpecError
from frankeneval.miniature.lineage import (
    PRESETS,
    build_processor,
    hub_config,
    tensor_shapes,
)
from frankeneval.weights.layermap import (
    LayerMap,
    LayerSpecError,
    UnclassifiedTensor,
    canonical_name,
    decoder_index,
    default_block_cuts,
    format_layers,
    llm_region,
    parse_layers,
    select_layers,
    transformers_name,
    unified_llm_layer,
)


@pytest.fixture(scope="module")
def qwen7b_names() -> dict[str, tuple[int, ...]]:
    """Hub tensor names + shapes of Qwen2.5-VL-7B, from a meta-device model (no memory, no download)."""
    spec = PRESETS["qwen2.5-vl-7b"]
    return tensor_shapes(hub_config(spec, build_processor(PRESETS["tiny"]).tokenizer) | {"vocab_size": 152064})


def test_7b_axis_and_counts(qwen7b_names):
    lmap = LayerMap.from_names(qwen7b_names)
    assert (lmap.n_vision_blocks, lmap.n_llm_layers) == (32, 28)
    assert len(lmap) == len(qwen7b_names)  # none dropped
    assert lmap.role("visual.blocks.0.attn.qkv.weight").layer == -32
    assert lmap.role("visual.blocks.31.mlp.down_proj.weight").layer == -1
    assert lmap.role("visual.merger.mlp.0.weight").layer == 0
    assert lmap.role("model.layers.0.self_attn.q_proj.weight").layer == 1
    assert lmap.role("model.layers.27.mlp.down_proj.weight").layer == 28
    for off_axis in ("model.embed_tokens.weight", "visual.patch_embed.proj.weight", "model.norm.weight",
                     "lm_head.weight"):
        assert lmap.role(off_axis).layer is None
    assert sorted({r.layer for r in lmap if r.layer is not None}) == lmap.axis() == list(range(-32, 29))
    # every LLM layer has the same 12 tensors: q/k/v (+bias), o, gate/up/down, 2 norms
    per_layer = {j: len(lmap.select(section="llm", layers=[j + 1])) for j in range(28)}
    assert set(per_layer.values()) == {12}


def test_both_naming_schemes_give_the_same_roles(tiny_lineage):
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_lineage.base)
    in_memory = list(model.state_dict())
    assert any(n.startswith("model.language_model.layers.") for n in in_memory)  # the new scheme
    from frankeneval.weights.checkpoint import Checkpoint

    hub = Checkpoint.open(tiny_lineage.base).names
    assert any(n.startswith("model.layers.") for n in hub)  # the hub scheme
    a, b = LayerMap.from_names(hub), LayerMap.from_names(in_memory)
    assert set(a.roles) == set(b.roles)
    for canon, ra in a.roles.items():
        rb = b.roles[canon]
        assert (ra.section, ra.layer, ra.block, ra.component, ra.submodule, ra.param) == (
            rb.section, rb.layer, rb.block, rb.component, rb.submodule, rb.param
        ), canon


def test_name_conversions_round_trip():
    for hub in ("model.layers.3.mlp.up_proj.weight", "visual.blocks.2.attn.qkv.bias", "visual.merger.ln_q.weight",
                "lm_head.weight", "model.embed_tokens.weight"):
        assert canonical_name(transformers_name(hub)) == hub
        assert canonical_name(hub) == hub
    assert transformers_name("model.layers.3.mlp.up_proj.weight") == "model.language_model.layers.3.mlp.up_proj.weight"
    assert transformers_name("visual.blocks.0.norm1.weight") == "model.visual.blocks.0.norm1.weight"


@pytest.mark.parametrize(
    "name, section, component, submodule",
    [
        ("model.layers.0.self_attn.k_proj.bias", "llm", "attention", "k_proj"),
        ("model.layers.0.self_attn.o_proj.weight", "llm", "attention", "o_proj"),
        ("model.layers.0.mlp.gate_proj.weight", "llm", "mlp", "gate_proj"),
        ("model.layers.0.input_layernorm.weight", "llm", "norm", "input_layernorm"),
        ("visual.blocks.1.attn.proj.weight", "vision", "attention", "proj"),
        ("visual.blocks.1.norm2.weight", "vision", "norm", "norm2"),
        ("visual.merger.mlp.2.weight", "projector", "mlp", "mlp.2"),
        ("visual.merger.ln_q.weight", "projector", "norm", "ln_q"),
        ("model.norm.weight", "final_norm", "norm", "norm"),
    ],
)
def test_components(name, section, component, submodule):
    role = LayerMap.from_names([name, "visual.blocks.1.norm1.weight", "model.layers.0.mlp.up_proj.weight"]).role(name)
    assert (role.section, role.component, role.submodule) == (section, component, submodule)


def test_analysed_matrices():
    lmap = LayerMap.from_names(["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias",
                                "model.layers.0.input_layernorm.weight", "visual.patch_embed.proj.weight"])
    assert lmap.role("model.layers.0.self_attn.q_proj.weight").is_analysed_matrix((8, 8))
    assert not lmap.role("model.layers.0.self_attn.q_proj.bias").is_analysed_matrix((8,))
    assert not lmap.role("model.layers.0.input_layernorm.weight").is_analysed_matrix((8,))
    assert lmap.role("visual.patch_embed.proj.weight").is_analysed_matrix((32, 3, 2, 14, 14))


def test_unknown_names_are_never_dropped_silently():
    names = ["model.layers.0.mlp.up_proj.weight", "model.mystery.weight"]
    with pytest.raises(UnclassifiedTensor, match="model.mystery.weight"):
        LayerMap.from_names(names)
    lax = LayerMap.from_names(names, strict=False)
    assert lax.unclassified == ["model.mystery.weight"]


def test_duplicate_across_schemes_is_an_error():
    with pytest.raises(UnclassifiedTensor, match="twice"):
        LayerMap.from_names(["model.layers.0.mlp.up_proj.weight", "model.language_model.layers.0.mlp.up_proj.weight"])


def test_regions_and_cuts():
    assert [llm_region(j, 28) for j in (0, 8, 9, 17, 18, 27)] == ["early", "early", "middle", "middle", "late", "late"]
    assert default_block_cuts(28) == (9, 18)
    assert default_block_cuts(6) == (2, 4)
    assert [llm_region(j, 6) for j in range(6)] == ["early", "early", "middle", "middle", "late", "late"]


# ------------------------------------------------------------------------------------------------ the layer grammar
WHOLE = ("llm", "vision", "projector")


def test_unified_decoder_conversion():
    assert [decoder_index(L, 28) for L in (1, 12, 28)] == [0, 11, 27]
    assert [unified_llm_layer(j) for j in (0, 11, 27)] == [1, 12, 28]
    with pytest.raises(LayerSpecError, match="layer 0 is the projector"):
        decoder_index(0, 28)
    with pytest.raises(LayerSpecError, match="1-28"):
        decoder_index(29, 28)


def test_grammar_singles_ranges_lists_and_words():
    assert parse_layers("12", 28) == [12]
    assert parse_layers("9-17", 28) == list(range(9, 18))
    assert parse_layers("3,7 9-10+1", 28) == [1, 3, 7, 9, 10]
    assert parse_layers(["1-3", "6", 2], 6) == [1, 2, 3, 6]
    assert parse_layers("all", 28) == parse_layers(None, 28) == list(range(1, 29))
    # block thirds at the cuts n//3, 2n//3: the same decoder layers as before (0-8 | 9-17 | 18-27)
    assert parse_layers("early", 28) == list(range(1, 10))
    assert parse_layers("middle", 28) == list(range(10, 19))
    assert parse_layers("late", 28) == list(range(19, 29))
    assert parse_layers("early 1/3", 28) == parse_layers("early", 28)
    assert parse_layers("early 2/3", 28) == list(range(1, 19)) == parse_layers("early2/3", 28)
    assert parse_layers("late 2/3", 28) == list(range(10, 29))
    assert parse_layers("late", 28, cuts=(8, 20)) == list(range(21, 29))
    assert parse_layers("early,late", 6) == [1, 2, 5, 6]


def test_grammar_whole_axis():
    assert parse_layers("vision", 6, n_vision_blocks=4, sections=WHOLE) == [-4, -3, -2, -1]
    assert parse_layers("projector", 6, n_vision_blocks=4, sections=WHOLE) == [0]
    assert parse_layers("-4..-3,0,6", 6, n_vision_blocks=4, sections=WHOLE) == [-4, -3, 0, 6]
    assert parse_layers("-2--1", 6, n_vision_blocks=4, sections=WHOLE) == [-2, -1]
    assert parse_layers("-1..2", 6, n_vision_blocks=4, sections=WHOLE) == [-1, 0, 1, 2]
    lmap = LayerMap(n_vision_blocks=4, n_llm_layers=6)
    assert lmap.parse_layers("vision,late") == [-4, -3, -2, -1, 5, 6]
    assert format_layers([-4, -3, -2, -1, 0, 1, 2, 3, 7]) == "-4..-1,0,1-3,7"
    assert parse_layers(format_layers([-4, -3, 0, 1, 2, 5]), 6, n_vision_blocks=4,
                        sections=WHOLE) == [-4, -3, 0, 1, 2, 5]
    sel = select_layers("vision,projector,2", 6, sections=WHOLE)  # vision depth unknown: the word is a flag
    assert sel.whole_vision and sel.projector and sel.llm == (2,) and sel.decoder_layers() == [1]


@pytest.mark.parametrize(
    "spec,kwargs,message",
    [
        ("29", {}, "out of range: LLM layers are 1-28$"),
        ("20-30", {}, "LLM layers are 1-28"),
        ("5-3", {}, "start after end"),
        ("bogus", {}, "Layer grammar"),
        ("", {"default_all": False}, "no layers given"),
        ("vision", {}, "only LLM layers"),
        ("-3", {}, "vision block"),
        ("-5", {"n_vision_blocks": 4, "sections": WHOLE}, "vision blocks -4..-1"),
        ("middle 2/3", {}, "one third"),
        # forms that used to mean decoder layers counted from 0
        ("0", {}, "layer 0 is the projector; LLM layers are 1-28 \\(decoder layer j is j\\+1\\): write 1$"),
        ("0-8", {}, "write 1-9$"),
        ("0-27", {}, "write 1-28$"),
        ("0-8", {"n_vision_blocks": 32, "sections": WHOLE},
         "write 1-9 \\(or 0,1-8: the projector and LLM layers 1-8\\)"),
        ("0", {"sections": WHOLE}, "write 1 \\(the projector: write projector\\)"),
        ("30", {"sections": WHOLE}, "LLM layers are 1-28 \\(also: vision, projector\\)$"),
    ],
)
def test_grammar_errors_are_one_line(spec, kwargs, message):
    with pytest.raises(SpecError, match=message) as info:
        parse_layers(spec, 28, **kwargs)
    assert "\n" not in str(info.value)
