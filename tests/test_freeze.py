"""Freeze masks: the printed patterns select exactly the intended parameters of the real tiny model."""

from __future__ import annotations

import re

import pytest

from frankeneval.errors import FrankenevalError
from frankeneval.necessity.freeze import (
    check_against,
    freeze_mask,
    model_parameter_names,
    module_regex,
    parameter_regex,
    render,
)
from frankeneval.weights.layermap import select_layers


@pytest.fixture(scope="module")
def tiny_model(tiny_lineage):
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_lineage.in_)


def _llm(names, layers, subs=("self_attn.", "mlp.", "input_layernorm.", "post_attention_layernorm.")):
    return {n for n in names for i in layers for s in subs if n.startswith(f"model.language_model.layers.{i}.{s}")}


def test_freeze_layers_are_unified_regions_and_ranges():
    # unified LLM layers 1 … n (decoder layer j is j + 1); the block cuts keep decoder thirds 0-8 | 9-17 | 18-27
    assert freeze_mask("early", n_layers=28).layers == tuple(range(1, 10))
    assert freeze_mask("middle", n_layers=28).layers == tuple(range(10, 19))
    assert freeze_mask("late", n_layers=28).layers == tuple(range(19, 29))
    assert freeze_mask("1-9,21", n_layers=28).layers == (*range(1, 10), 21)
    assert freeze_mask("late", n_layers=28, cuts=(8, 20)).layers == tuple(range(21, 29))
    m = freeze_mask("middle,vision", n_layers=6)
    assert (m.layers, m.vision, m.projector) == ((3, 4), True, False)
    assert freeze_mask("1-9", n_layers=28).describe() == "LLM layers 1-9 of 1-28 (unified; all components)"
    sel = select_layers("late,projector", 6, sections=("llm", "vision", "projector"))
    assert (sel.llm, sel.projector, sel.whole_vision) == ((5, 6), True, False)
    for bad in ("bogus", "1-40", "5-2", "", "-3"):
        with pytest.raises(FrankenevalError):
            freeze_mask(bad, n_layers=28)
    # the old 0-based forms say how to write them now
    with pytest.raises(FrankenevalError, match="layer 0 is the projector.*write 1-9"):
        freeze_mask("0-8", n_layers=28)
    with pytest.raises(FrankenevalError, match="write 1"):
        freeze_mask("0", n_layers=28)
    with pytest.raises(FrankenevalError):
        freeze_mask("late", n_layers=6, components="attn,everything")


@pytest.mark.parametrize(
    "layers,components,expected_layers,subs",
    [
        ("late", None, [4, 5], ("self_attn.", "mlp.", "input_layernorm.", "post_attention_layernorm.")),
        ("early,middle", None, [0, 1, 2, 3], ("self_attn.", "mlp.", "input_layernorm.", "post_attention_layernorm.")),
        ("2-3,6", "attention", [1, 2, 5], ("self_attn.",)),  # unified 2-3,6 = decoder modules 1, 2, 5
        ("middle", "mlp,norm", [2, 3], ("mlp.", "input_layernorm.", "post_attention_layernorm.")),
    ],
)
def test_parameter_regex_matches_exactly_the_intended_names(tiny_model, layers, components, expected_layers, subs):
    names = [n for n, _ in tiny_model.named_parameters()]
    mask = freeze_mask(layers, n_layers=6, components=components)
    pat = re.compile(parameter_regex(mask))
    got = {n for n in names if pat.fullmatch(n)}
    assert got == _llm(names, expected_layers, subs)
    assert got  # non-empty
    assert check_against(mask, names) == []
    # wrapper prefixes (PEFT / DDP) still match the same parameters
    assert {n for n in names if pat.fullmatch("base_model.model." + n)} == got
    assert {n for n in names if pat.fullmatch("module." + n)} == got


def test_vision_and_projector(tiny_model):
    names = [n for n, _ in tiny_model.named_parameters()]
    mask = freeze_mask("vision,projector", n_layers=6)
    pat = re.compile(parameter_regex(mask))
    got = {n for n in names if pat.fullmatch(n)}
    assert got == {n for n in names if n.startswith("model.visual.")}
    mask = freeze_mask("vision", n_layers=6)
    got = {n for n in names if re.fullmatch(parameter_regex(mask), n)}
    assert got == {n for n in names if n.startswith("model.visual.") and not n.startswith("model.visual.merger.")}
    # names read from the checkpoint headers are the in-memory names the trainers see
    names_ckpt, n = model_parameter_names(tiny_model.config._name_or_path)
    assert n == 6 and set(names_ckpt) == set(names)


def test_trl_snippet_freezes_exactly_those_parameters(tiny_model):
    mask = freeze_mask("late", n_layers=6, components="attention,mlp")
    snippet = render(mask, "trl")
    code = snippet.split("# LoRA")[0]
    for p in tiny_model.parameters():
        p.requires_grad_(True)
    exec(code, {"model": tiny_model})  # the printed snippet, as a user would paste it
    frozen = {n for n, p in tiny_model.named_parameters() if not p.requires_grad}
    names = [n for n, _ in tiny_model.named_parameters()]
    assert frozen == _llm(names, [4, 5], ("self_attn.", "mlp."))
    for p in tiny_model.parameters():
        p.requires_grad_(True)


def test_module_regex_is_a_valid_peft_exclude_modules(tiny_lineage):
    peft = pytest.importorskip("peft")
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_lineage.in_)
    mask = freeze_mask("late", n_layers=6)
    cfg = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj", "down_proj"], exclude_modules=module_regex(mask))
    wrapped = peft.get_peft_model(model, cfg)
    adapted = {n.split(".lora_A")[0] for n, _ in wrapped.named_parameters() if ".lora_A." in n}
    layers = {int(re.search(r"layers\.(\d+)\.", n).group(1)) for n in adapted if "language_model.layers." in n}
    assert layers == {0, 1, 2, 3}  # no adapters on the frozen late block


def test_render_formats():
    mask = freeze_mask("late", n_layers=28)
    assert render(mask, "regex") == parameter_regex(mask)
    verl = render(mask, "verl")
    assert "actor_rollout_ref.model.exclude_modules=" in verl and module_regex(mask) in verl
    assert "freeze_vision_tower" not in verl
    assert "actor_rollout_ref.actor.freeze_vision_tower=True" in render(freeze_mask("vision", n_layers=28), "verl")
    with pytest.raises(FrankenevalError):
        render(mask, "names")  # needs real names
    with pytest.raises(FrankenevalError):
        render(mask, "yaml")


def test_cli_checks_on_model(tiny_lineage, capsys):
    from frankeneval.cli import main

    assert main(["freeze-spec", "--layers", "late", "--model", str(tiny_lineage.rl), "--format", "names"]) == 0
    out = capsys.readouterr().out.split()
    assert out and all(re.match(r"model\.language_model\.layers\.[45]\.", n) for n in out)
    assert main(["freeze-spec", "--layers", "bogus"]) == 1
