"""Architecture families as data: the Qwen2.5-VL description reproduces the layer map the code used to hard-code,
an unknown family is one line, and a family described only in a JSON file works without code changes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from frankeneval.errors import FrankenevalError
from frankeneval.weights.architecture import (
    ARCHITECTURES_DIR,
    ENV_DIRS,
    ArchitectureDescriptionError,
    UnknownArchitecture,
    architecture_for_config,
    default_architecture,
    get_architecture,
    known_architectures,
    load_architecture,
    parse_architecture,
)
from frankeneval.weights.checkpoint import Checkpoint, compare_architectures
from frankeneval.weights.layermap import LayerMap, UnclassifiedTensor, canonical_name, parse_layers, transformers_name

# ------------------------------------------------------------------------------------------ the old, hard-coded map
# A frozen copy of layermap.py's Qwen2.5-VL classification before the layout became data: the oracle that the
# description must reproduce name for name.
_OLD_PREFIX_TO_HUB = (("model.language_model.", "model."), ("model.visual.", "visual."),
                      ("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."))
_OLD_VISION = re.compile(r"^visual\.blocks\.(\d+)\.(.+)$")
_OLD_LLM = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_OLD_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv", "proj")
_OLD_MLP = ("gate_proj", "up_proj", "down_proj", "fc1", "fc2")
_OLD_NORM = ("norm1", "norm2", "input_layernorm", "post_attention_layernorm", "ln_q", "norm")


def _old_canonical(name):
    for prefix, hub in _OLD_PREFIX_TO_HUB:
        if name.startswith(prefix):
            return hub + name[len(prefix):]
    return name


def _old_transformers(name):
    name = _old_canonical(name)
    if name.startswith("model."):
        return "model.language_model." + name[len("model."):]
    return "model." + name if name.startswith("visual.") else name


def _old_component(path):
    stem = path.split(".")[:-1]
    for part in reversed(stem):
        if part in _OLD_NORM:
            return "norm", part
    for part in reversed(stem):
        if part in _OLD_ATTN:
            return "attention", part
        if part in _OLD_MLP:
            return "mlp", part
    if any(p in ("attn", "self_attn", "attention") for p in stem):
        return "attention", stem[-1] if stem else "attn"
    if "mlp" in stem:
        return "mlp", ".".join(stem[stem.index("mlp"):])
    return "other", ".".join(stem) or path


def _old_role(canon, n_vision):
    """(section, block, unified layer, component, submodule, param, tower) or None."""
    param = canon.rsplit(".", 1)[-1]
    m = _OLD_VISION.match(canon)
    if m:
        return ("vision", int(m.group(1)), int(m.group(1)) - n_vision, *_old_component(m.group(2)), param, "vision")
    m = _OLD_LLM.match(canon)
    if m:
        return ("llm", int(m.group(1)), int(m.group(1)) + 1, *_old_component(m.group(2)), param, "language")
    fixed = (("visual.patch_embed.", "embeddings", "other", "patch_embed", "vision"),
             ("model.embed_tokens.", "embeddings", "other", "embed_tokens", "language"),
             ("model.norm.", "final_norm", "norm", "norm", "language"),
             ("lm_head.", "lm_head", "other", "lm_head", "language"))
    if canon.startswith("visual.merger."):
        return ("projector", None, 0, *_old_component(canon[len("visual.merger."):]), param, "vision")
    for prefix, section, comp, sub, tower in fixed:
        if canon.startswith(prefix):
            return (section, None, None, comp, sub, param, tower)
    return None


def _assert_same_as_before(names, n_vision):
    lmap = LayerMap.from_names(names, n_vision_blocks=n_vision, strict=False)
    for name in names:
        canon = canonical_name(name)
        assert canon == _old_canonical(name), name
        assert transformers_name(name) == _old_transformers(name), name
        old = _old_role(canon, n_vision)
        if old is None:
            assert name in lmap.unclassified, name
            continue
        r = lmap.role(name)
        assert (r.section, r.block, r.layer, r.component, r.submodule, r.param, r.tower) == old, name
    return lmap


def _meta_state_dict_names(config_dir: Path) -> list[str]:
    """The in-memory (transformers) names of a checkpoint's model, from a meta-device model."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    cfg = AutoConfig.from_pretrained(config_dir)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(cfg)
    return list(model.state_dict())


ODD_NAMES = [  # legacy wrappers, stray names inside known groups, names no group has
    "language_model.model.layers.2.self_attn.q_proj.weight", "language_model.lm_head.weight",
    "language_model.model.embed_tokens.weight", "model.visual.merger.ln_q.weight", "visual.blocks.1.attn.rope.inv_freq",
    "visual.blocks.0.mystery.weight", "model.layers.1.self_attn.q_norm.weight", "visual.merger.mlp.0.extra.bias",
    "model.layers.3.mlp.experts.0.w1.weight", "model.mystery.weight", "vision_tower.x.weight", "lm_head.bias",
]


def test_tiny_checkpoint_roles_are_unchanged(tiny_lineage):
    """Every tensor of the tiny checkpoint, in both layouts, lands on the same unified layer (and role) as before."""
    ckpt = Checkpoint.open(tiny_lineage.base)
    assert ckpt.architecture is default_architecture() and ckpt.architecture.family == "qwen2_5_vl"
    n_vision, n_llm = ckpt.architecture.layer_counts(ckpt.config)
    assert (n_vision, n_llm) == (ckpt.layer_map.n_vision_blocks, ckpt.layer_map.n_llm_layers) == (4, 6)
    hub = ckpt.names
    in_memory = _meta_state_dict_names(Path(tiny_lineage.base))
    assert any(n.startswith("model.language_model.layers.") for n in in_memory)
    a = _assert_same_as_before(hub, n_vision)
    b = _assert_same_as_before(in_memory, n_vision)
    assert not a.unclassified and not b.unclassified and set(a.roles) == set(b.roles)
    assert {r.layer for r in a if r.layer is not None} == set(a.axis()) == set(range(-4, 7))
    # the description lists exactly the checkpoint's tensors
    assert sorted(ckpt.architecture.tensor_names(n_vision, n_llm)) == sorted(hub)
    _assert_same_as_before(ODD_NAMES, n_vision)


def test_7b_names_are_unchanged():
    from frankeneval.miniature.lineage import PRESETS, build_processor, hub_config, tensor_shapes

    spec = PRESETS["qwen2.5-vl-7b"]
    cfg = hub_config(spec, build_processor(PRESETS["tiny"]).tokenizer) | {"vocab_size": 152064}
    names = list(tensor_shapes(cfg))
    arch = architecture_for_config(cfg)
    assert arch.family == "qwen2_5_vl" and arch.layer_counts(cfg) == (32, 28)
    _assert_same_as_before(names, 32)
    assert sorted(arch.tensor_names(32, 28)) == sorted(names)
    # transformers 5 writes the depths inside text_config / vision_config only
    t5 = {"model_type": "qwen2_5_vl", "text_config": {"num_hidden_layers": 28}, "vision_config": {"depth": 32}}
    assert architecture_for_config(t5).layer_counts(t5) == (32, 28)
    tied = arch.tensor_names(32, 28, optional=False)
    assert "lm_head.weight" not in tied and len(tied) == len(names) - 1


def test_ablation_targets_and_modules():
    arch = default_architecture()
    assert arch.ablation_targets(11) == (
        "model.layers.11.self_attn.o_proj.weight", "model.layers.11.mlp.down_proj.weight")
    assert arch.ablation_targets(0, layout="transformers") == (
        "model.language_model.layers.0.self_attn.o_proj.weight", "model.language_model.layers.0.mlp.down_proj.weight")
    assert dict(arch.group("llm").modules) == {"attention": ("self_attn",), "mlp": ("mlp",),
                                               "norm": ("input_layernorm", "post_attention_layernorm")}
    # the grammar's extra words come from the description
    assert parse_layers("merger,visual", 6, n_vision_blocks=2, sections=("llm", "vision", "projector")) == [-2, -1, 0]


def test_qwen2_vl_is_a_file_too():
    """Qwen2-VL (fc1/fc2 vision MLP, LayerNorm biases) is described by its own file and matches transformers."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    cfg = Qwen2VLConfig()
    cfg.text_config.num_hidden_layers, cfg.vision_config.depth = 3, 2
    with torch.device("meta"):
        names = list(Qwen2VLForConditionalGeneration(cfg).state_dict())
    config = json.loads(cfg.to_json_string()) | {"architectures": ["Qwen2VLForConditionalGeneration"]}
    arch = architecture_for_config(config)
    assert arch.family == "qwen2_vl" and arch.layer_counts(config) == (2, 3)
    lmap = LayerMap.from_names(names, architecture=arch)
    assert (lmap.n_vision_blocks, lmap.n_llm_layers) == (2, 3)
    assert sorted(arch.tensor_names(2, 3)) == sorted(arch.canonical_name(n) for n in names)
    assert lmap.role("model.visual.blocks.0.mlp.fc2.weight").layer == -2
    assert lmap.role("model.visual.blocks.1.mlp.fc1.bias").component == "mlp"
    assert architecture_for_config({"architectures": ["Qwen2VLForConditionalGeneration"]}) is arch


# ------------------------------------------------------------------------------------------------ unknown families
def test_unknown_model_type_is_one_line(tmp_path, capsys):
    with pytest.raises(UnknownArchitecture) as info:
        architecture_for_config({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    msg = str(info.value)
    assert "\n" not in msg and "'llama'" in msg and "qwen2_5_vl" in msg and "qwen2_vl" in msg
    with pytest.raises(UnknownArchitecture, match="known: qwen2_5_vl"):
        get_architecture("llama")
    # through a checkpoint and the CLI
    save_file({"model.layers.0.mlp.up_proj.weight": torch.zeros(2, 2)}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 1}))
    with pytest.raises(UnknownArchitecture):
        Checkpoint.open(tmp_path).layer_map
    from frankeneval.cli import main

    assert main(["inspect", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no architecture description for model_type 'llama'" in err


def test_config_without_a_family_means_the_default():
    assert architecture_for_config({}) is default_architecture()
    assert architecture_for_config(None) is default_architecture()
    assert architecture_for_config({"num_hidden_layers": 4}).family == "qwen2_5_vl"


# ------------------------------------------------------------------------------------------ a family that is only data
TOY = {
    "family": "toy_vl",
    "display_name": "Toy-VL",
    "model_types": ["toy_vl"],
    "architectures": ["ToyVLForConditionalGeneration"],
    "layer_count_config_keys": {"vision": ["encoder.n_blocks"], "llm": ["decoder.n_layer"]},
    "layouts": {"transformers": [["decoder.", "toy.decoder."], ["encoder.", "toy.encoder."]]},
    "groups": [
        {"section": "vision", "tower": "vision", "prefix": "encoder.block_${layer_index}.",
         "weights": ["encoder.block_${layer_index}.ln.weight", "encoder.block_${layer_index}.attn.wqkv.weight",
                     "encoder.block_${layer_index}.ffn.w_in.weight"]},
        {"section": "llm", "tower": "language", "prefix": "decoder.h.${layer_index}.",
         "weights": ["decoder.h.${layer_index}.ln_1.weight", "decoder.h.${layer_index}.attn.wq.weight",
                     "decoder.h.${layer_index}.attn.wo.weight", "decoder.h.${layer_index}.ffn.w_in.weight",
                     "decoder.h.${layer_index}.ffn.w_out.weight"]},
        {"section": "projector", "tower": "vision", "prefix": "connector.",
         "weights": ["connector.ffn.0.weight"]},
        {"section": "embeddings", "tower": "language", "prefix": "decoder.wte.", "component": "other",
         "submodule": "wte", "weights": ["decoder.wte.weight"]},
        {"section": "final_norm", "tower": "language", "prefix": "decoder.ln_f.", "component": "norm",
         "submodule": "ln_f", "weights": ["decoder.ln_f.weight"]},
        {"section": "lm_head", "tower": "language", "prefix": "head.", "component": "other", "submodule": "head",
         "weights": [{"name": "head.weight", "optional": True, "tied_to": "decoder.wte.weight"}]},
    ],
    "components": {
        "norm": {"modules": ["ln", "ln_1"]},
        "attention": {"modules": ["wq", "wo", "wqkv"], "containers": ["attn"], "container_submodule": "module"},
        "mlp": {"modules": ["w_in", "w_out"], "containers": ["ffn"], "container_submodule": "path"},
    },
    "ablation_targets": ["decoder.h.${layer_index}.attn.wo.weight", "decoder.h.${layer_index}.ffn.w_out.weight"],
    "layer_words": {"projector": ["connector"]},
}


@pytest.fixture()
def toy_dir(tmp_path, monkeypatch):
    folder = tmp_path / "families"
    folder.mkdir()
    (folder / "toy_vl.json").write_text(json.dumps(TOY, indent=2))
    monkeypatch.setenv(ENV_DIRS, str(folder))
    return folder


def _toy_checkpoint(path: Path, n_vision=3, n_llm=4) -> Path:
    arch = get_architecture("toy_vl")
    g = torch.Generator().manual_seed(0)
    tensors = {n: torch.randn(3, 3, generator=g) for n in arch.tensor_names(n_vision, n_llm)}
    # mixed layouts: decoder layer 1 is stored under its in-memory names
    tensors = {arch.layout_name(n, "transformers") if "h.1." in n else n: t for n, t in tensors.items()}
    path.mkdir()
    save_file(tensors, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps({"model_type": "toy_vl", "encoder": {"n_blocks": n_vision},
                                                  "decoder": {"n_layer": n_llm}}))
    return path


def test_a_new_family_is_a_new_file(toy_dir, tmp_path):
    assert set(known_architectures()) == {"qwen2_5_vl", "qwen2_vl", "qwen2_text", "toy_vl"}
    ckpt = Checkpoint.open(_toy_checkpoint(tmp_path / "toy"))
    arch = ckpt.architecture
    assert arch.family == "toy_vl" and arch.source == str((toy_dir / "toy_vl.json").resolve())
    lmap = ckpt.layer_map
    assert (lmap.n_vision_blocks, lmap.n_llm_layers) == (3, 4) and not lmap.unclassified
    assert len(lmap) == len(ckpt.names) == 3 * 3 + 4 * 5 + 4
    assert lmap.axis() == list(range(-3, 5)) == sorted({r.layer for r in lmap if r.layer is not None})
    role = lmap.role("toy.decoder.h.0.attn.wq.weight")  # the other layout of a name stored canonically
    assert (role.canonical, role.section, role.layer, role.component, role.submodule, role.tower) == (
        "decoder.h.0.attn.wq.weight", "llm", 1, "attention", "wq", "language")
    assert lmap.role("decoder.h.1.ffn.w_out.weight").name == "toy.decoder.h.1.ffn.w_out.weight"  # as stored
    assert lmap.role("encoder.block_0.ln.weight").component == "norm"
    assert lmap.role("encoder.block_2.attn.wqkv.weight").layer == -1
    assert (lmap.role("connector.ffn.0.weight").layer, lmap.role("connector.ffn.0.weight").submodule) == (0, "ffn.0")
    assert lmap.role("decoder.wte.weight").section == "embeddings" and lmap.role("head.weight").layer is None
    assert lmap.role("decoder.ln_f.weight").section == "final_norm"
    assert lmap.region(lmap.role("decoder.h.3.ffn.w_in.weight")) == "late"
    assert lmap.parse_layers("connector,late") == [0, 3, 4]
    assert arch.ablation_targets(2) == ("decoder.h.2.attn.wo.weight", "decoder.h.2.ffn.w_out.weight")
    # the checkpoint reads any layout's name, and compares on canonical names
    assert torch.equal(ckpt.read("decoder.h.1.attn.wq.weight"), ckpt.read("toy.decoder.h.1.attn.wq.weight"))
    assert compare_architectures([ckpt, Checkpoint.open(tmp_path / "toy")]).ok
    with pytest.raises(UnclassifiedTensor, match="Toy-VL layer map: decoder.mystery.weight"):
        LayerMap.from_names(["decoder.mystery.weight"], architecture=arch)
    # the Qwen names mean nothing to this family, and the default family is untouched
    assert LayerMap.from_names(["model.layers.0.mlp.up_proj.weight"], architecture=arch, strict=False).unclassified
    qwen = "model.layers.0.mlp.up_proj.weight"
    assert LayerMap.from_names([qwen]).role(qwen).layer == 1


def test_a_family_described_twice_is_an_error(toy_dir):
    (toy_dir / "copy.json").write_text(json.dumps(TOY))
    with pytest.raises(ArchitectureDescriptionError, match="'toy_vl' is described twice"):
        known_architectures()


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"groups": []}, "groups must be a non-empty list"),
        ({"colour": "red"}, "unknown key"),
        ({"family": "a b"}, "family must be a name"),
        ({"layer_count_config_keys": {"text": ["n"]}}, "layer_count_config_keys"),
        ({"layouts": {"hub": []}}, "layouts must map"),
        ({"layouts": {"transformers": [["a."]]}}, "prefix pairs"),
        ({"components": {"attention": {"modules": "wq"}}}, "must be a list of strings"),
        ({"components": {"mlp": {"container_submodule": "all"}}}, "container_submodule"),
        ({"ablation_targets": ["decoder.wte.weight"]}, "not weights of an llm group"),
        ({"layer_words": {"llm": ["decoder"]}}, "layer_words"),
    ],
)
def test_malformed_descriptions_are_one_line(edit, message):
    with pytest.raises(ArchitectureDescriptionError, match=message) as info:
        parse_architecture(TOY | edit, source="toy.json")
    assert "\n" not in str(info.value) and str(info.value).startswith("toy.json: ")


@pytest.mark.parametrize(
    "group_edit, message",
    [
        ({"section": "decoder"}, "section must be one of"),
        ({"tower": "text"}, "tower must be one of"),
        ({"prefix": "decoder.h"}, "ending in '.'"),
        ({"prefix": "decoder.h."}, "must hold \\$\\{layer_index\\} once"),
        ({"component": "ffn"}, "component must be one of"),
        ({"weights": ["decoder.x.weight"]}, "not under the prefix"),
    ],
)
def test_malformed_groups_are_one_line(group_edit, message):
    groups = [TOY["groups"][0] | {"section": "llm", "prefix": "decoder.h.${layer_index}.", "weights": []} | group_edit]
    with pytest.raises(ArchitectureDescriptionError, match=message):
        parse_architecture(TOY | {"groups": groups, "ablation_targets": []}, source="toy.json")


def test_bad_file_is_one_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{")
    with pytest.raises(FrankenevalError, match="broken.json: cannot read the architecture description") as info:
        load_architecture(path)
    assert "\n" not in str(info.value)


def test_descriptions_ship_in_the_wheel(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(repo)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("frankeneval-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("frankeneval/weights/architectures/")}
    assert shipped == {f"frankeneval/weights/architectures/{p.name}" for p in ARCHITECTURES_DIR.glob("*.json")}
