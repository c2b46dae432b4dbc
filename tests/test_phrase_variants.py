"""The reference's variant phrases (transferability_test.py: noise ablation, layer-range interpolation with a donor, a
third interpolated with or replaced by a donor) as phrases and merge specs, materialized like every splice.

Every test compares the materialized checkpoint with a reference built here by hand from the tiny lineage's files
(names matched by regex, the reference's formulas written out), tensor for tensor; the donor of the segment forms is
a text-only Qwen2ForCausalLM checkpoint written by a fixture.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from frankeneval.cli import main
from frankeneval.errors import FrankenevalError, SpecError
from frankeneval.transferability.mergespec import MergeSpec
from frankeneval.transferability.recipes import Recipe, load_spec
from frankeneval.transferability.splice import PROVENANCE, materialize, verify
from frankeneval.weights.checkpoint import Checkpoint

N = 6  # LLM layers of the tiny lineage (cuts 2, 4: unified 1-2 | 3-4 | 5-6)
SHARD = 300_000
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def all_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, read independently of frankeneval (index + safetensors)."""
    index_file = path / "model.safetensors.index.json"
    if not index_file.is_file():
        return load_file(path / "model.safetensors")
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(json.loads(index_file.read_text())["weight_map"].values())):
        out.update(load_file(path / shard))
    return out


def layer_of(name: str) -> tuple[int, str] | tuple[None, None]:
    """(0-based decoder layer, path in the layer) of an LLM layer tensor, else (None, None)."""
    m = _LAYER.match(name)
    return (int(m.group(1)), m.group(2)) if m else (None, None)


def hand_seed(seed: int, name: str) -> int:
    """The documented per-tensor seed: SHA-256("<seed>:<name>"), first 8 bytes little-endian, top bit cleared."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)


def hand_noise(w: torch.Tensor, ratio: float, seed: int, name: str) -> torch.Tensor:
    """The reference's noise ablation: std = weight.std().item() (whole tensor, unbiased), random = eps * std,
    (1 - r) * weight + r * random; eps ~ N(0, 1) drawn in float32 from the tensor's seeded generator."""
    g = torch.Generator().manual_seed(hand_seed(seed, name))
    eps = torch.randn(w.shape, generator=g, dtype=torch.float32).to(w.dtype)
    std = w.std(correction=1).item()
    return (1 - ratio) * w + ratio * (eps * std)


def in_component(path: str, component: str) -> bool:
    """The reference's component filter on a layer's state-dict key."""
    return {"all": True, "mlp": path.startswith("mlp."), "attn": path.startswith("self_attn.")}[component]


def write_text_llm(src: Path, dst: Path, *, n_layers: int = N, drop: tuple[str, ...] = ()) -> Path:
    """A text-only Qwen2ForCausalLM checkpoint made from the language-model tensors of the VLM checkpoint ``src``:
    its hub names ``model.*`` / ``lm_head.*`` are the CausalLM's names (transformers' VLM module paths
    ``model.language_model.*`` map onto the same), the vision tower and projector (``visual.*``) are left out, and
    so are layers from ``n_layers`` on and the names in ``drop``; the values are shifted so that the donor differs
    from every lineage member."""
    g = torch.Generator().manual_seed(123)
    tensors = {}
    for name, t in sorted(all_tensors(src).items()):
        if not name.startswith(("model.", "lm_head.")):
            continue
        j, _ = layer_of(name)
        if (j is not None and j >= n_layers) or name in drop:
            continue
        tensors[name] = (t + 0.05 * torch.randn(t.shape, generator=g)).contiguous()
    dst.mkdir(parents=True)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    vcfg = json.loads((src / "config.json").read_text())
    keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "hidden_act",
            "max_position_embeddings", "rms_norm_eps", "rope_theta", "vocab_size", "tie_word_embeddings",
            "bos_token_id", "eos_token_id")
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "num_hidden_layers": n_layers,
              "torch_dtype": "float32", **{k: vcfg[k] for k in keys}}
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


@pytest.fixture(scope="module")
def text_llm(tiny_lineage, tmp_path_factory) -> Path:
    return write_text_llm(tiny_lineage.rl, tmp_path_factory.mktemp("donor") / "qwen2-text")


def test_the_text_llm_donor_is_a_qwen2_causal_lm(text_llm):
    """The fixture is what transformers writes for Qwen2ForCausalLM, and the layer map reads it as qwen2_text."""
    from transformers import Qwen2ForCausalLM

    model, info = Qwen2ForCausalLM.from_pretrained(text_llm, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert set(model.state_dict()) == set(all_tensors(text_llm))
    ckpt = Checkpoint.open(text_llm)
    assert ckpt.architecture.family == "qwen2_text"
    lmap = ckpt.layer_map
    assert (lmap.n_vision_blocks, lmap.n_llm_layers) == (0, N) and not lmap.unclassified
    assert lmap.role("model.layers.5.mlp.up_proj.weight").layer == 6


def test_noise_phrase_equals_the_hand_built_reference_and_is_seeded(tiny_lineage, tmp_path):
    ins = all_tensors(tiny_lineage.in_)
    spec = load_spec("IN layers 0-1 ablate noise=0.5 seed=7", models={"in": tiny_lineage.in_})
    out = materialize(spec, tmp_path / "noise7", shard_bytes=SHARD, progress=False)
    got = all_tensors(out)
    assert set(got) == set(ins)
    noised = 0
    for name, w in ins.items():
        j, _ = layer_of(name)
        want = hand_noise(w, 0.5, 7, name) if j in (0, 1) else w
        assert got[name].dtype == want.dtype and torch.equal(got[name], want), name
        if j in (0, 1):
            noised += 1
            assert not torch.equal(got[name], w), name
    assert noised == 24  # 2 layers x 12 tensors (attention, mlp and norms: every key of the layer)
    prov = json.loads((out / PROVENANCE).read_text())
    assert prov["spec"]["transforms"] == [{"op": "noise", "layers": "1-2", "ratio": 0.5, "seed": 7}]
    assert len(prov["computed"]) == 24
    for name, (step,) in prov["computed"].items():
        assert (step["seed"], step["tensor_seed"]) == (7, hand_seed(7, name))
        assert step["layer"] == layer_of(name)[0] + 1  # unified
    report = verify(out)
    assert report.ok and report.n_computed == 24, report.summary()
    # the same seed, written as a YAML spec (unified layers), gives the same tensors; another seed other ones
    yaml_spec = MergeSpec.from_yaml(f"""
sources: {{in: {tiny_lineage.in_}}}
blocks: {{all: in}}
transforms: [{{op: noise, layers: "1-2", ratio: 0.5, seed: 7}}]
""")
    assert yaml_spec.spec_hash() == spec.spec_hash()
    again = all_tensors(materialize(yaml_spec, tmp_path / "again", progress=False))
    assert all(torch.equal(again[n], got[n]) for n in got)
    other = all_tensors(materialize(load_spec("IN layers 0-1 ablate noise=0.5 seed=8", models={"in": tiny_lineage.in_}),
                                    tmp_path / "noise8", progress=False))
    assert not torch.equal(other["model.layers.0.mlp.up_proj.weight"], got["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(other["model.layers.2.mlp.up_proj.weight"], got["model.layers.2.mlp.up_proj.weight"])
    # no seed= : seed 0, recorded
    default = load_spec("IN layers 0-1 ablate noise=0.5", models={"in": tiny_lineage.in_})
    assert default.to_dict()["transforms"][0]["seed"] == 0


@pytest.mark.parametrize("component", ["mlp", "attn", "all"])
def test_layer_range_interpolation_equals_the_hand_built_reference(tiny_lineage, tmp_path, component):
    ins, rls = all_tensors(tiny_lineage.in_), all_tensors(tiny_lineage.rl)
    models = {"in": tiny_lineage.in_, "rl": tiny_lineage.rl}
    suffix = "" if component == "all" else f" component={component}"
    spec = load_spec(f"IN layers 2-3 interpolate RL alpha=0.25{suffix}", models=models)
    out = materialize(spec, tmp_path / component, shard_bytes=SHARD, progress=False)
    got = all_tensors(out)
    changed = 0
    for name, w in ins.items():
        j, path = layer_of(name)
        if j in (2, 3) and in_component(path, component):
            want = (1 - 0.25) * w + 0.25 * rls[name]
            changed += 1
        else:
            want = w
        assert torch.equal(got[name], want), name
    assert changed == {"mlp": 6, "attn": 14, "all": 24}[component]
    assert json.loads((out / "config.json").read_text()) == json.loads((tiny_lineage.in_ / "config.json").read_text())
    assert verify(out).ok
    # the merge-spec form: the same spec
    comps = {"mlp": "[mlp]", "attn": "[attention]", "all": "all"}[component]
    yaml_spec = MergeSpec.from_yaml(f"""
sources: {{in: {tiny_lineage.in_}, rl: {tiny_lineage.rl}}}
blocks: [{{region: all, source: in}}]
transforms:
  - {{op: interpolate, donor: rl, layers: "3-4", alpha: 0.25, components: {comps}}}
""")
    assert yaml_spec.spec_hash() == spec.spec_hash()


def test_segments_interpolate_with_and_are_replaced_by_a_text_llm(tiny_lineage, text_llm, tmp_path, capsys):
    ins, donor = all_tensors(tiny_lineage.in_), all_tensors(text_llm)
    # late 1/3 (default cuts 2, 4: decoder 4-5) interpolated with the donor named by its folder
    spec = load_spec(f"IN late 1/3 layers interpolate {text_llm} alpha=0.5", models={"in": tiny_lineage.in_})
    assert spec.donors() == ["donor"] and spec.sources["donor"] == str(text_llm)
    out = materialize(spec, tmp_path / "late", shard_bytes=SHARD, progress=False)
    got = all_tensors(out)
    for name, w in ins.items():
        j, _ = layer_of(name)
        want = (1 - 0.5) * w + 0.5 * donor[name] if j in (4, 5) else w
        assert torch.equal(got[name], want), name
    assert not torch.equal(got["model.layers.5.self_attn.q_proj.weight"], ins["model.layers.5.self_attn.q_proj.weight"])
    prov = json.loads((out / PROVENANCE).read_text())
    assert prov["spec"]["transforms"] == [{"op": "interpolate", "layers": "5-6", "donor": "donor", "alpha": 0.5}]
    assert prov["sources"]["donor"]["weights_sha256"] == Checkpoint.open(text_llm).fingerprint()["weights_sha256"]
    assert verify(out).ok
    # middle 1/3 replaced by the donor, the thirds at --cuts 1 3 (unified 2-3: decoder 1-2), through the command
    rc = main(["splice", "IN middle 1/3 layers replaced by donor", "--in", str(tiny_lineage.in_), "--donor",
               str(text_llm), "--cuts", "1", "3", "--out", str(tmp_path / "middle"), "-q"])
    assert rc == 0, capsys.readouterr().err
    got = all_tensors(tmp_path / "middle")
    for name, w in ins.items():
        j, _ = layer_of(name)
        assert torch.equal(got[name], donor[name] if j in (1, 2) else w), name
    prov = json.loads((tmp_path / "middle" / PROVENANCE).read_text())
    assert prov["spec"]["transforms"] == [{"op": "interpolate", "layers": "2-3", "donor": "donor", "alpha": 1.0}]
    assert prov["phrase"] == "IN middle 1/3 layers replaced by donor" and "0-based" in prov["phrase_layers"]
    assert main(["splice", "--check", str(tmp_path / "middle"), "-q"]) == 0


def test_zero_based_phrase_layers_are_unified_everywhere(tiny_lineage, capsys):
    sources = {"in": str(tiny_lineage.in_), "rl": str(tiny_lineage.rl)}
    spec = MergeSpec.parse("IN layers 0-1 ablate noise=0.5", N, sources)
    assert spec.transforms[0].layers == (0, 1) and spec.transforms[0].unified_layers == [1, 2]
    assert spec.to_dict()["transforms"][0]["layers"] == "1-2" and "noise 0.5 seed 0 on layers 1-2" in spec.describe()
    last = MergeSpec.parse("IN layers 5-5 interpolate RL alpha=0.5 component=attn", N, sources)
    assert last.to_dict()["transforms"] == [{"op": "interpolate", "layers": "6", "components": ["attention"],
                                             "donor": "rl", "alpha": 0.5}]
    # the resolved spec reads back (unified), and a recipe variant may be a variant phrase
    assert MergeSpec.from_dict(last.to_dict()).spec_hash() == last.spec_hash()
    recipe = Recipe.from_dict({"name": "t", "models": sources, "num_hidden_layers": N,
                               "variants": {"noisy": "IN layers 0-1 ablate noise=0.5"}})
    assert recipe.variant("noisy").spec_hash() == spec.spec_hash()
    # 0-based numbers only in the variant phrases: the block grammar keeps refusing layer 0
    with pytest.raises(SpecError, match="write 1-2"):
        MergeSpec.parse("IN layers 0-1", N, sources)
    with pytest.raises(SystemExit):
        main(["splice", "--help"])
    assert "0-based decoder" in " ".join(capsys.readouterr().out.split())


def test_refusals_are_one_line(tiny_lineage, tmp_path, capsys):
    models = {"in": tiny_lineage.in_}
    with pytest.raises(SpecError) as info:
        load_spec("IN layers 4-6 ablate noise=0.5", models=models)
    msg = str(info.value)
    assert "\n" not in msg and "0-based" in msg and "0-5" in msg and "unified 1-6" in msg
    for bad in ("IN layers 0-1 ablate noise", "IN layers 0-1 ablate noise=1.5", "IN layers 0-1 interpolate RL",
                "nosuchmodel layers 0-1 ablate noise=0.5"):
        with pytest.raises(SpecError) as info:
            load_spec(bad, models=models)
        assert "\n" not in str(info.value), bad
    # a donor that lacks tensors: four layers only (the late third needs decoder layers 4-5), or one tensor less
    short = write_text_llm(tiny_lineage.rl, tmp_path / "short", n_layers=4)
    spec = load_spec(f"IN late 1/3 layers replaced by {short}", models=models)
    with pytest.raises(FrankenevalError) as info:
        materialize(spec, tmp_path / "never", progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "lacks 24 of the 24 tensors" in msg and "model.layers.4." in msg
    assert "4 LLM layers" in msg and not (tmp_path / "never").exists()
    holey = write_text_llm(tiny_lineage.rl, tmp_path / "holey", drop=("model.layers.1.mlp.up_proj.weight",))
    spec = load_spec(f"IN layers 0-1 interpolate {holey} alpha=0.5 component=mlp", models=models)
    with pytest.raises(FrankenevalError, match=r"lacks 1 of the 6 tensors it needs, e\.g\. model\.layers\.1\.mlp"):
        materialize(spec, tmp_path / "never", progress=False)
    # through the command: exit 1, one line
    rc = main(["splice", "IN layers 0-6 ablate noise=0.5", "--in", str(tiny_lineage.in_), "--out",
               str(tmp_path / "never"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err and "0-based" in err
    rc = main(["splice", f"IN early 1/3 layers replaced by {short}", "--in", str(tiny_lineage.in_), "--out",
               str(tmp_path / "fine"), "-q"])
    assert rc == 0  # the short donor has the early layers
