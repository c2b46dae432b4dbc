"""Materializing Frankenstein checkpoints on the tiny lineage: exactness, loading, atomicity, caching, checking."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from frankeneval.cli import main
from frankeneval.errors import ArchitectureMismatch, FrankenevalError
from frankeneval.transferability import splice
from frankeneval.transferability.mergespec import MergeSpec
from frankeneval.transferability.recipes import tiny_recipe
from frankeneval.transferability.splice import PROVENANCE, materialize, materialize_cached, verify
from frankeneval.weights.layermap import LayerMap

SHARD = 300_000  # small shards so the tiny model is written as several files


def all_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a hub-layout checkpoint, read independently of frankeneval (index + safetensors)."""
    index = json.loads((path / "model.safetensors.index.json").read_text())
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(load_file(path / shard))
    assert set(out) == set(index["weight_map"])
    return out


def sources(lineage) -> dict[str, str]:
    return {"in": str(lineage.in_), "rl": str(lineage.rl)}


def test_all_rl_variant_is_bit_identical_to_rl(tiny_lineage, tmp_path):
    spec = MergeSpec.parse("RL all layers", 6, sources(tiny_lineage))
    out = materialize(spec, tmp_path / "all_rl", shard_bytes=SHARD, progress=False)
    got, want = all_tensors(out), all_tensors(tiny_lineage.rl)
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), name
    assert len(set(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"].values())) > 1
    for meta in ("config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (out / meta).read_bytes() == (tiny_lineage.rl / meta).read_bytes()
    assert not (out / "frankeneval_lineage.json").exists()
    # file-level loading: transformers sees the same model
    from transformers import Qwen2_5_VLForConditionalGeneration

    a = Qwen2_5_VLForConditionalGeneration.from_pretrained(out).state_dict()
    b = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_lineage.rl).state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in b)


def test_every_tensor_of_a_mixed_variant_equals_its_declared_source(tiny_lineage, tmp_path):
    spec = tiny_recipe(tiny_lineage).variant("rl_early+in_middle+rl_late")  # RL 0-1 | IN 2-3 | RL 4-5, host RL
    out = materialize(spec, tmp_path / "mixed", shard_bytes=SHARD, progress=False)
    got = all_tensors(out)
    members = {"in": all_tensors(tiny_lineage.in_), "rl": all_tensors(tiny_lineage.rl)}
    lmap = LayerMap.from_names(got)
    declared = json.loads((out / PROVENANCE).read_text())["tensors"]
    n_from = {"in": 0, "rl": 0}
    for name, t in got.items():
        role = lmap.role(name)
        want = ("in" if role.block in (2, 3) else "rl") if role.section == "llm" else "rl"  # written independently
        assert declared[name] == want, name
        assert torch.equal(t, members[want][name]) and t.dtype == members[want][name].dtype, name
        n_from[want] += 1
    assert n_from["in"] > 0 and n_from["rl"] > 0
    # the test has teeth: IN and RL differ in the spliced layers
    assert not torch.equal(members["in"]["model.layers.2.mlp.up_proj.weight"],
                           members["rl"]["model.layers.2.mlp.up_proj.weight"])
    assert verify(out).ok


def test_per_component_and_parts(tiny_lineage, tmp_path):
    text = f"""
sources: {{in: {tiny_lineage.in_}, rl: {tiny_lineage.rl}}}
host: in
blocks:
  - {{layers: "1-6", source: in}}
  - {{layers: "3-4", source: rl, components: [attention]}}
parts: {{vision: rl}}
"""
    spec = MergeSpec.from_yaml(text)  # depth read from the host's config.json
    out = materialize(spec, tmp_path / "attn", shard_bytes=SHARD, progress=False)
    got = all_tensors(out)
    ins, rls = all_tensors(tiny_lineage.in_), all_tensors(tiny_lineage.rl)
    lmap = LayerMap.from_names(got)
    for name, t in got.items():
        r = lmap.role(name)
        # unified LLM layers or r.tower == "vision" and r.section != "projector"
        from_rl = (r.section == "llm" and r.layer in (3, 4) and r.component == "attention")
        assert torch.equal(t, (rls if from_rl else ins)[name]), name
    assert torch.equal(got["visual.patch_embed.proj.weight"], rls["visual.patch_embed.proj.weight"])


def test_output_loads_and_generates(tiny_lineage, tmp_path):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    spec = tiny_recipe(tiny_lineage).variant("in_early+rl_middle_late")
    out = materialize(spec, tmp_path / "gen", shard_bytes=SHARD, progress=False)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    messages = [{"role": "user", "content": [{"type": "text", "text": "How many red circles are there?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert ids.shape[1] > inputs["input_ids"].shape[1]
    sd = model.state_dict()
    rl = all_tensors(tiny_lineage.rl)
    assert torch.equal(sd["model.language_model.layers.4.self_attn.q_proj.weight"],
                       rl["model.layers.4.self_attn.q_proj.weight"])


def test_interrupted_write_leaves_no_directory(tiny_lineage, tmp_path, monkeypatch):
    spec = tiny_recipe(tiny_lineage).variant("in_early+rl_middle_late")
    real, calls = splice._copy_range, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 40:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args)

    monkeypatch.setattr(splice, "_copy_range", failing)
    out = tmp_path / "parent" / "variant"
    with pytest.raises(KeyboardInterrupt):
        materialize(spec, out, shard_bytes=SHARD, progress=False)
    assert len(calls) == 40
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no temp dir left behind either
    # an interrupted rewrite keeps the previous complete splice
    monkeypatch.setattr(splice, "_copy_range", real)
    materialize(spec, out, shard_bytes=SHARD, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls.clear()
    monkeypatch.setattr(splice, "_copy_range", failing)
    with pytest.raises(KeyboardInterrupt):
        materialize(spec, out, force=True, shard_bytes=SHARD, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["variant"]


def _copy_with_reshaped_tensor(src: Path, dst: Path, name: str) -> None:
    shutil.copytree(src, dst)
    shard = json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"][name]
    tensors = load_file(dst / shard)
    tensors[name] = tensors[name][:-1].clone()
    save_file(tensors, dst / shard, metadata={"format": "pt"})


def test_mismatched_sources_fail_naming_the_first_mismatch(tiny_lineage, tmp_path):
    bad = tmp_path / "rl_bad"
    _copy_with_reshaped_tensor(tiny_lineage.rl, bad, "model.layers.3.mlp.up_proj.weight")
    spec = MergeSpec.parse("IN early 1/3 layers + RL late 2/3 layers", 6, {"in": str(tiny_lineage.in_), "rl": str(bad)})
    with pytest.raises(ArchitectureMismatch, match=r"model\.layers\.3\.mlp\.up_proj\.weight"):
        materialize(spec, tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()
    deep = MergeSpec.parse("IN early 1/3 layers + RL late 2/3 layers", 28, sources(tiny_lineage))
    with pytest.raises(ArchitectureMismatch, match="28 LLM layers"):
        materialize(deep, tmp_path / "never", progress=False)


def test_cached_rerun_skips_and_force_rewrites(tiny_lineage, tmp_path, monkeypatch):
    spec = tiny_recipe(tiny_lineage).variant("in_early_middle+rl_late")
    out = materialize(spec, tmp_path / "v", shard_bytes=SHARD, progress=False)
    stamp = (out / PROVENANCE).stat().st_mtime_ns

    def no_write(*a, **k):
        raise AssertionError("should have skipped")

    monkeypatch.setattr(splice, "_write_shard", no_write)
    assert materialize(spec, out, shard_bytes=SHARD, progress=False) == out
    assert (out / PROVENANCE).stat().st_mtime_ns == stamp
    with pytest.raises(AssertionError, match="should have skipped"):
        materialize(spec, out, force=True, progress=False)
    other = tiny_recipe(tiny_lineage).variant("rl_early_middle+in_late")
    with pytest.raises(AssertionError, match="should have skipped"):  # a different spec is rewritten
        materialize(other, out, progress=False)
    monkeypatch.undo()
    # the cache keyed by spec hash + source fingerprints
    a = materialize_cached(spec, tmp_path / "cache", progress=False)
    monkeypatch.setattr(splice, "_write_shard", no_write)
    assert materialize_cached(spec, tmp_path / "cache", progress=False) == a
    assert a.parent == tmp_path / "cache" and json.loads((a / PROVENANCE).read_text())["spec_hash"] == spec.spec_hash()


def test_refuses_to_replace_a_foreign_directory(tiny_lineage, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    spec = tiny_recipe(tiny_lineage).variant("in_early_middle+rl_late")
    with pytest.raises(FrankenevalError, match="not a frankeneval splice"):
        materialize(spec, out, progress=False)
    assert (out / "notes.txt").read_text() == "keep me"


def _tamper(out: Path, name: str) -> None:
    shard = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"][name]
    path = out / shard
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        begin = json.loads(f.read(n))[name]["data_offsets"][0]
    with open(path, "r+b") as f:
        f.seek(8 + n + begin + 4)
        b = f.read(1)
        f.seek(8 + n + begin + 4)
        f.write(bytes([b[0] ^ 0x01]))  # flip one bit


def test_check_detects_a_tampered_tensor(tiny_lineage, tmp_path, capsys):
    spec = tiny_recipe(tiny_lineage).variant("in_early+rl_middle_late")
    out = materialize(spec, tmp_path / "t", shard_bytes=SHARD, progress=False)
    report = verify(out)
    assert report.ok and report.n_checked == report.n_tensors == len(all_tensors(tiny_lineage.in_))
    _tamper(out, "model.layers.4.mlp.down_proj.weight")
    report = verify(out)
    assert not report.ok
    assert [m.split(":")[0] for m in report.mismatches] == ["model.layers.4.mlp.down_proj.weight"]
    assert main(["splice", "--check", str(out), "-q"]) == 1
    assert "model.layers.4.mlp.down_proj.weight" in capsys.readouterr().out
    # the skip check hashes headers, not bytes, so repairing a tampered splice needs --force
    materialize(spec, out, force=True, shard_bytes=SHARD, progress=False)
    assert verify(out).ok


def test_cli_spec_forms(tiny_lineage, tmp_path, capsys):
    common = ["--in", str(tiny_lineage.in_), "--rl", str(tiny_lineage.rl), "-q"]
    assert main(["splice", "tiny:rl_early+in_middle_late", "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["splice", "RL early 1/3 layers + SFT late 2/3 layers", "--out", str(tmp_path / "b"), *common]) == 0
    assert main(["splice", "--recipe", "tiny", "--variant", "rl_early+in_middle_late", "--out", str(tmp_path / "c"),
                 *common]) == 0
    hashes = {json.loads((tmp_path / d / PROVENANCE).read_text())["build_hash"] for d in "abc"}
    assert len(hashes) == 1
    assert main(["splice", "--check", str(tmp_path / "a"), "-q"]) == 0
    assert main(["splice", "--list"]) == 0
    assert "openmmreasoner:in_early+rl_middle_late" in capsys.readouterr().out
    assert main(["splice", "IN early 2/3 layers + RL late 2/3 layers", "--out", str(tmp_path / "d"), *common]) == 1
    assert "overlaps" in capsys.readouterr().err


def test_written_shards_are_valid_safetensors(tiny_lineage, tmp_path):
    spec = tiny_recipe(tiny_lineage).variant("in_early+rl_middle+in_late")
    out = materialize(spec, tmp_path / "s", shard_bytes=SHARD, progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    total = 0
    for shard in set(index["weight_map"].values()):
        with safe_open(out / shard, framework="pt") as f:
            for k in f.keys():  # noqa: SIM118 - safe_open is not a dict
                t = f.get_tensor(k)
                total += t.numel() * t.element_size()
    assert index["metadata"]["total_size"] == total
