"""Lazy checkpoint access, hub-id resolution errors, and the compatibility check."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from frankeneval.errors import ArchitectureMismatch, CheckpointNotFound, MissingShard, UnsafeWeights
from frankeneval.weights.checkpoint import Checkpoint, check_compatible, compare_architectures


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_tensor(ckpt_dir: Path, name: str, new: torch.Tensor | None) -> None:
    """Rewrite the shard holding ``name`` with that tensor replaced (or removed when ``new`` is None)."""
    index_path = ckpt_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = index["weight_map"][name]
    tensors = load_file(ckpt_dir / shard)
    if new is None:
        del tensors[name]
        del index["weight_map"][name]
        index_path.write_text(json.dumps(index))
    else:
        tensors[name] = new
    save_file(tensors, ckpt_dir / shard)


def test_lists_and_reads_lazily(tiny_lineage):
    ckpt = Checkpoint.open(tiny_lineage.rl)
    infos = ckpt.tensor_infos()
    assert len(infos) == len(ckpt.names) == len(ckpt.layer_map)
    assert len(ckpt.shards) > 1  # the tiny lineage is sharded like a hub checkpoint
    name = "model.layers.5.mlp.down_proj.weight"
    t = ckpt.read(name)
    assert tuple(t.shape) == infos[name].shape and t.dtype == torch.float32
    # either naming scheme reads the same tensor
    assert torch.equal(ckpt.read("model.language_model.layers.5.mlp.down_proj.weight"), t)
    assert torch.equal(load_file(tiny_lineage.rl / ckpt.shard_of(name))[name], t)


def test_listing_does_not_load_tensor_data(tmp_path):
    """Peak memory while listing a ~400 MB checkpoint stays far below its size (measured in a fresh process)."""
    big = tmp_path / "big"
    big.mkdir()
    weight_map = {}
    for i in range(4):
        shard = f"model-{i + 1:05d}-of-00004.safetensors"
        name = f"model.layers.{i}.mlp.down_proj.weight"
        save_file({name: torch.ones(10_000, 2_500)}, big / shard)  # 100 MB each
        weight_map[name] = shard
    (big / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    script = textwrap.dedent(
        f"""
        import resource, sys
        from frankeneval.weights.checkpoint import Checkpoint
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ckpt = Checkpoint.open({str(big)!r})
        infos = ckpt.tensor_infos()
        fp = ckpt.fingerprint()
        assert len(infos) == 4 and infos["model.layers.0.mlp.down_proj.weight"].shape == (10000, 2500)
        after_list = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = ckpt.read("model.layers.1.mlp.down_proj.weight").sum()
        after_read = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after_list - before) * 1024, (after_read - before) * 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    listing_growth, read_growth = int(out[0]), int(out[1])
    assert listing_growth < 20e6, f"listing grew peak RSS by {listing_growth / 1e6:.0f} MB"
    assert read_growth < 150e6, f"reading one 100 MB tensor grew peak RSS by {read_growth / 1e6:.0f} MB"


def test_compatibility_catches_shape_mismatch_and_missing_tensor(tiny_lineage, tmp_path):
    base, rl = Checkpoint.open(tiny_lineage.base), Checkpoint.open(tiny_lineage.rl)
    report = check_compatible([base, rl], ["base", "rl"])
    assert report.ok and not report.dtype_differences

    reshaped = _copy(tiny_lineage.rl, tmp_path / "reshaped")
    _edit_tensor(reshaped, "model.layers.2.self_attn.q_proj.weight", torch.zeros(64, 32))
    with pytest.raises(ArchitectureMismatch,
                       match=r"model\.layers\.2\.self_attn\.q_proj\.weight: base \[64, 64\] vs rl \[64, 32\]"):
        check_compatible([base, Checkpoint.open(reshaped)], ["base", "rl"])

    missing = _copy(tiny_lineage.rl, tmp_path / "missing")
    _edit_tensor(missing, "model.layers.4.mlp.up_proj.weight", None)
    with pytest.raises(ArchitectureMismatch,
                       match=r"rl lacks model\.layers\.4\.mlp\.up_proj\.weight \(present in base\)"):
        check_compatible([base, Checkpoint.open(missing)], ["base", "rl"])

    half = _copy(tiny_lineage.rl, tmp_path / "half")
    _edit_tensor(half, "model.norm.weight", torch.ones(64, dtype=torch.bfloat16))
    report = compare_architectures([base, Checkpoint.open(half)], ["base", "rl"])
    assert report.ok and report.dtype_differences == ["model.norm.weight: base F32 vs rl BF16"]


def test_missing_shard_is_a_clear_error(tiny_lineage, tmp_path):
    broken = _copy(tiny_lineage.in_, tmp_path / "broken")
    shard = sorted(broken.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(MissingShard, match=shard.name):
        Checkpoint.open(broken)


def test_pickle_weights_refused_unless_allowed(tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    torch.save({"model.layers.0.mlp.up_proj.weight": torch.ones(2, 2)}, d / "pytorch_model.bin")
    with pytest.raises(UnsafeWeights, match="allow-pickle"):
        Checkpoint.open(d)
    ckpt = Checkpoint.open(d, allow_pickle=True)
    assert torch.equal(ckpt.read("model.layers.0.mlp.up_proj.weight"), torch.ones(2, 2))
    assert ckpt.tensor_infos()["model.layers.0.mlp.up_proj.weight"].shape == (2, 2)


def test_hub_id_offline_names_the_id_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(CheckpointNotFound) as err:
        Checkpoint.open("OpenMMReasoner/OpenMMReasoner-RL")
    msg = str(err.value)
    assert "OpenMMReasoner/OpenMMReasoner-RL" in msg and "local directory" in msg and "HF_HUB_OFFLINE" in msg


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointNotFound, match="no such local checkpoint directory"):
        Checkpoint.open(tmp_path / "nope" / "deeper")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFound, match="no weights found"):
        Checkpoint.open(tmp_path / "empty")
