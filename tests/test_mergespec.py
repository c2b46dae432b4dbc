"""Merge specs: the paper's phrasing, YAML, per-component choices, recipes."""

from __future__ import annotations

import pytest

from frankeneval.errors import SpecError
from frankeneval.transferability.mergespec import COMPONENTS, PARTS, MergeSpec
from frankeneval.transferability.recipes import (
    PAPER_VARIANTS,
    get_recipe,
    list_recipes,
    load_spec,
    tiny_recipe,
)

SOURCES = {"in": "/models/in", "rl": "/models/rl"}


def sources_by_layer(spec: MergeSpec) -> list[str]:
    """One source per layer; fails if a layer mixes sources across components."""
    out = []
    for choice in spec.layers:
        assert len(set(choice.values())) == 1, choice
        out.append(choice["attention"])
    return out


def expected(n: int, early: str, middle: str, late: str, cuts: tuple[int, int] | None = None) -> list[str]:
    c1, c2 = cuts or (n // 3, 2 * n // 3)
    return [early] * c1 + [middle] * (c2 - c1) + [late] * (n - c2)


# The six phrases exactly as the reference scripts write them, with the blocks they must give.
PAPER_CASES = [
    ("ColdStart early 1/3 layers + RL late 2/3 layers", ("in", "rl", "rl")),
    ("RL early 1/3 layers + ColdStart late 2/3 layers", ("rl", "in", "in")),
    ("ColdStart early 2/3 layers + RL late 1/3 layers", ("in", "in", "rl")),
    ("RL early 2/3 layers + ColdStart late 1/3 layers", ("rl", "rl", "in")),
    ("SFT early 1/3 + RL middle 1/3 + SFT late 1/3 layers", ("in", "rl", "in")),
    ("RL early 1/3 + SFT middle 1/3 + RL late 1/3 layers", ("rl", "in", "rl")),
]


@pytest.mark.parametrize("phrase,blocks", PAPER_CASES)
@pytest.mark.parametrize("n", [28, 6])
def test_paper_phrases_give_the_right_ranges(phrase, blocks, n):
    spec = MergeSpec.parse(phrase, n, SOURCES)
    assert sources_by_layer(spec) == expected(n, *blocks)
    assert spec.host == blocks[0]  # the early block's model is the host, as in the reference
    assert set(spec.parts.values()) == {blocks[0]}


def test_thirds_for_28_and_6_layers_explicitly():
    spec = MergeSpec.parse("IN early 1/3 + RL middle 1/3 + IN late 1/3 layers", 28, SOURCES)
    assert [j for j, s in enumerate(sources_by_layer(spec)) if s == "rl"] == list(range(9, 18))
    spec = MergeSpec.parse("IN early 2/3 layers + RL late 1/3 layers", 6, SOURCES)
    assert sources_by_layer(spec) == ["in"] * 4 + ["rl"] * 2


def test_explicit_cuts():
    spec = MergeSpec.parse("IN early 1/3 + RL middle 1/3 + IN late 1/3 layers", 28, SOURCES, cuts=[8, 20])
    assert sources_by_layer(spec) == expected(28, "in", "rl", "in", (8, 20))
    spec = MergeSpec.parse("IN early 2/3 layers + RL late 1/3 layers", 28, SOURCES, cuts=[8, 20])
    assert sources_by_layer(spec) == ["in"] * 20 + ["rl"] * 8
    with pytest.raises(SpecError, match="cuts"):
        MergeSpec.parse("IN early 1/3 layers + RL late 2/3 layers", 6, SOURCES, cuts=[4, 2])


@pytest.mark.parametrize("alias", ["IN", "in", "SFT", "ColdStart", "coldstart", "cold-start", "Cold_Start"])
def test_in_aliases(alias):
    spec = MergeSpec.parse(f"{alias} early 1/3 layers + final late 2/3 layers", 6, SOURCES)
    assert sources_by_layer(spec) == ["in"] * 2 + ["rl"] * 4


def test_arbitrary_ranges_and_components():
    spec = MergeSpec.parse("IN all layers + RL layers 10-18 attention only + RL layers 21,23-24 mlp-only", 28, SOURCES)
    for j, choice in enumerate(spec.layers):  # spec.layers[j] is decoder layer j = unified layer j + 1
        assert choice["attention"] == ("rl" if 10 <= j + 1 <= 18 else "in")
        assert choice["mlp"] == ("rl" if j + 1 in (21, 23, 24) else "in")
        assert choice["norm"] == "in" and choice["other"] == "in"
    assert spec.host == "in"


def test_unassigned_layers_come_from_the_host():
    spec = MergeSpec.parse("RL late 1/3 layers", 6, SOURCES, host="in")
    assert sources_by_layer(spec) == ["in"] * 4 + ["rl"] * 2
    spec = MergeSpec.parse("RL layers 3-4 norm", 6, SOURCES, host="in")
    assert [ch["norm"] for ch in spec.layers] == ["in", "in", "rl", "rl", "in", "in"]
    assert all(ch["attention"] == "in" for ch in spec.layers)


@pytest.mark.parametrize(
    "phrase,message",
    [
        ("IN early 2/3 layers + RL late 2/3 layers", "overlaps"),
        ("XX early 1/3 + RL late 2/3", "unknown source 'XX'"),
        ("IN early 1/3 layers + RL late 2/3 bananas", "bananas"),
        ("IN early 1/3 + RL layers 4-9", "out of range: LLM layers are 1-6"),
        ("IN layers 0-1 + RL late 2/3", "layer 0 is the projector.*write 1-2"),  # the old 0-based form
        ("IN middle 2/3 + RL late 1/3", "middle"),
        ("base early 1/3 + RL late 2/3", "base"),
        ("IN + RL late 2/3", "names no layers"),
    ],
)
def test_bad_phrases_fail_clearly(phrase, message):
    with pytest.raises(SpecError, match=message):
        MergeSpec.parse(phrase, 6, SOURCES)


def test_yaml_blocks_parts_and_round_trip(tmp_path):
    text = """
name: demo
sources: {in: /models/in, rl: /models/rl}
num_hidden_layers: 6
cuts: [1, 3]
blocks:
  - {region: early, source: in}
  - {layers: "2-6", source: rl}
  - {layers: [3, "5-6"], source: in, components: [mlp, norms]}
parts: {vision: rl, lm_head: rl}
"""
    path = tmp_path / "demo.yaml"
    path.write_text(text)
    spec = MergeSpec.from_yaml(path)
    assert spec == MergeSpec.from_yaml(text)
    assert spec.host == "in"
    assert [ch["attention"] for ch in spec.layers] == ["in"] + ["rl"] * 5
    assert [ch["mlp"] for ch in spec.layers] == ["in", "rl", "in", "rl", "in", "in"]
    assert [ch["norm"] for ch in spec.layers] == ["in", "rl", "in", "rl", "in", "in"]
    assert spec.parts == {"vision": "rl", "projector": "in", "embeddings": "in", "final_norm": "in", "lm_head": "rl"}
    again = MergeSpec.from_yaml(spec.to_yaml())
    assert again == spec and again.spec_hash() == spec.spec_hash()


def test_blocks_and_description_speak_unified_layers():
    spec = MergeSpec.parse("IN early 1/3 layers + RL late 2/3 layers", 28, SOURCES)
    assert spec.describe() == "in: layers 1-9 | rl: layers 10-28 | host in"
    assert spec.to_dict()["blocks"] == [{"layers": "1-9", "source": "in"}, {"layers": "10-28", "source": "rl"}]
    # the default block cuts keep the same decoder layers: thirds 0-8 | 9-17 | 18-27 = unified 1-9 | 10-18 | 19-28
    assert sources_by_layer(spec) == ["in"] * 9 + ["rl"] * 19
    same = MergeSpec.parse("IN layers 1-9 + RL layers 10-28", 28, SOURCES)
    assert same.layers == spec.layers and same.spec_hash() == spec.spec_hash()


def test_blocks_mapping_form_equals_phrase():
    a = MergeSpec.from_yaml("sources: {in: /a, rl: /b}\nnum_hidden_layers: 6\n"
                            "blocks: {early: rl, middle: in, late: rl}\n")
    b = MergeSpec.parse("RL early 1/3 + IN middle 1/3 + RL late 1/3 layers", 6, {"in": "/a", "rl": "/b"})
    assert a == b and a.spec_hash() == b.spec_hash()


def test_spec_hash_ignores_names_but_not_content():
    a = MergeSpec.parse("IN early 1/3 layers + RL late 2/3 layers", 28, SOURCES, name="x")
    b = MergeSpec.parse("SFT early 1/3 + RL middle 1/3 + RL late 1/3 layers", 28, SOURCES, name="y")
    c = MergeSpec.parse("IN early 2/3 layers + RL late 1/3 layers", 28, SOURCES)
    d = a.with_sources({"rl": "/elsewhere/rl"})
    assert a.spec_hash() == b.spec_hash()
    assert len({a.spec_hash(), c.spec_hash(), d.spec_hash()}) == 3


def test_yaml_errors():
    with pytest.raises(SpecError, match="unknown merge spec key"):
        MergeSpec.from_yaml("sources: {in: /a}\nnum_hidden_layers: 6\nphrase: IN all layers\nlayerz: 3\n")
    with pytest.raises(SpecError, match="phrase' or 'blocks"):
        MergeSpec.from_yaml("sources: {in: /a}\nnum_hidden_layers: 6\n")
    with pytest.raises(SpecError, match="unknown part"):
        MergeSpec.from_yaml("sources: {in: /a}\nnum_hidden_layers: 6\nphrase: IN all layers\nparts: {decoder: in}\n")
    with pytest.raises(SpecError, match="no model reference"):
        MergeSpec.parse("IN early 1/3 layers + RL late 2/3 layers", 6, {"in": "/a"})


def test_source_of_both_naming_schemes_and_parts():
    spec = MergeSpec.parse("IN all layers + RL layers 4-5 attention", 6, SOURCES, host="in")  # decoder 3-4
    spec = MergeSpec(spec.sources, spec.host, spec.n_layers, spec.layers, parts={"vision": "rl"})
    assert spec.source_of("model.layers.3.self_attn.q_proj.weight") == "rl"
    assert spec.source_of("model.language_model.layers.3.self_attn.q_proj.bias") == "rl"
    assert spec.source_of("model.layers.3.mlp.down_proj.weight") == "in"
    assert spec.source_of("model.layers.5.self_attn.o_proj.weight") == "in"
    assert spec.source_of("visual.patch_embed.proj.weight") == "rl"  # the patch embedding is part of the encoder
    assert spec.source_of("model.visual.blocks.0.attn.qkv.weight") == "rl"
    assert spec.source_of("visual.merger.mlp.0.weight") == "in"
    assert spec.source_of("model.embed_tokens.weight") == "in"
    assert spec.source_of("lm_head.weight") == "in"
    assert set(spec.parts) == set(PARTS) and all(set(ch) == set(COMPONENTS) for ch in spec.layers)


# -- recipes ----------------------------------------------------------------------------------------
HUB_IDS = {
    "openmmreasoner": ("OpenMMReasoner/OpenMMReasoner-ColdStart", "OpenMMReasoner/OpenMMReasoner-RL"),
    "revisual_r1": ("csfufu/Revisual-R1-Coldstart", "csfufu/Revisual-R1-final"),
    "mmr1": ("MMR1/MMR1-7B-SFT", "MMR1/MMR1-7B-RL"),
}


def test_builtin_recipes_and_their_six_variants():
    assert set(list_recipes()) >= {"openmmreasoner", "revisual_r1", "mmr1", "tiny"}
    for name, (in_id, rl_id) in HUB_IDS.items():
        r = get_recipe(name)
        assert r.models == {"base": "Qwen/Qwen2.5-VL-7B-Instruct", "in": in_id, "rl": rl_id}
        assert list(r.variants) == list(PAPER_VARIANTS)
        for v, phrase in PAPER_VARIANTS.items():
            want = MergeSpec.parse(phrase, 28, {"in": in_id, "rl": rl_id})
            assert r.variants[v].spec_hash() == want.spec_hash() and r.variants[v].layers == want.layers
            assert r.variants[v].name == f"{name}:{v}"
            assert r.variants[v].sources == {"in": in_id, "rl": rl_id}  # base unused, not required
    tiny = get_recipe("tiny")
    assert tiny.n_layers == 6 and sources_by_layer(tiny.variants["in_early_middle+rl_late"]) == ["in"] * 4 + ["rl"] * 2


def test_recipe_repointing_and_load_spec(tiny_lineage, tmp_path):
    r = get_recipe("mmr1", models={"in": "/local/sft"})
    assert r.variants["in_early+rl_middle_late"].sources == {"in": "/local/sft", "rl": "MMR1/MMR1-7B-RL"}
    r2 = r.with_models(in_="/x/in", rl="/x/rl")
    assert r2.variants["rl_early+in_middle+rl_late"].sources == {"in": "/x/in", "rl": "/x/rl"}
    t = tiny_recipe(tiny_lineage)
    assert t.variants["in_early+rl_middle_late"].sources == {"in": str(tiny_lineage.in_), "rl": str(tiny_lineage.rl)}
    # the three SPEC forms of the CLI
    a = load_spec("tiny:in_early+rl_middle_late", models={"in": tiny_lineage.in_, "rl": tiny_lineage.rl})
    b = load_spec("IN early 1/3 layers + RL late 2/3 layers", models={"in": tiny_lineage.in_, "rl": tiny_lineage.rl})
    path = tmp_path / "s.yaml"
    path.write_text(a.to_yaml())
    c = load_spec(str(path))
    # b read its depth (6) from the host's config.json
    assert a.spec_hash() == b.spec_hash() == c.spec_hash() and a.layers == b.layers == c.layers
    assert load_spec("mmr1:in_early+rl_middle_late", cuts=[8, 20]).layers[8]["mlp"] == "rl"
    with pytest.raises(SpecError, match="no variant"):
        load_spec("mmr1:nope")
    with pytest.raises(SpecError, match="needs its models"):
        load_spec("IN early 1/3 layers + RL late 2/3 layers")


def test_lineage_refs_resolve_through_registered_lineages(monkeypatch, tmp_path):
    """``lineage:<preset>/<member>`` refs resolve through the lineages registered with the merge spec (the transfer
    analysis never imports the miniature world); the command line registers the built-in tiny lineage."""
    from frankeneval.cli import main
    from frankeneval.miniature.refs import tiny_members
    from frankeneval.transferability import mergespec

    monkeypatch.setattr(mergespec, "_LINEAGES", {})
    with pytest.raises(SpecError, match="register_builtin_lineages"):
        mergespec.resolve_ref("lineage:tiny/in")
    written = []
    mergespec.register_lineage("tiny", lambda: written.append(1) or {"in": tmp_path / "in", "rl": tmp_path / "rl"})
    assert mergespec.resolve_ref("lineage:tiny/rl") == str(tmp_path / "rl") and written == [1]
    assert mergespec.resolve_ref("/some/dir") == "/some/dir"
    with pytest.raises(SpecError, match="only the tiny built-in lineage"):
        mergespec.resolve_ref("lineage:qwen2.5-vl-7b/in")
    assert main(["splice", "--list"]) == 0
    assert mergespec._LINEAGES["tiny"] is tiny_members
