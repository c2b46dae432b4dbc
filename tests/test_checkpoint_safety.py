"""Issue 17, checkpoint side: fingerprints from content (cached per file), every checkpoint validated (index shard
names, symlinks that leave the folder, hub snapshots allowed), one pickle opt-in everywhere, and a missing local
source named as such."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from frankeneval.characterization.characterize import characterize
from frankeneval.characterization.measure import CharacterizeSettings
from frankeneval.cli import main
from frankeneval.errors import (
    CheckpointNotFound,
    CorruptCheckpoint,
    SpecError,
    UnsafeWeights,
)
from frankeneval.transferability import splice
from frankeneval.transferability.recipes import tiny_recipe
from frankeneval.transferability.splice import materialize
from frankeneval.weights.checkpoint import Checkpoint

NAME = "model.layers.5.mlp.down_proj.weight"  # in the late third: comes from RL in the tiny recipe's splices


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """A private frankeneval cache dir per test (the fingerprint cache lives there)."""
    monkeypatch.setenv("FRANKENEVAL_CACHE", str(tmp_path / "fe-cache"))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=shutil.copy2)  # keeps mtimes
    return dst


def _shard_of(ckpt_dir: Path, name: str) -> Path:
    index = json.loads((ckpt_dir / "model.safetensors.index.json").read_text())
    return ckpt_dir / index["weight_map"][name]


def _flip_in_place(ckpt_dir: Path, name: str) -> None:
    """Change one byte of tensor ``name`` in place: same size, same header, same mtime (restored to the ns)."""
    path = _shard_of(ckpt_dir, name)
    st = path.stat()
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        begin = json.loads(f.read(n))[name]["data_offsets"][0]
        f.seek(8 + n + begin + 1)
        b = f.read(1)
        f.seek(8 + n + begin + 1)
        f.write(bytes([b[0] ^ 0x40]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


# -- 1. fingerprints from content ------------------------------------------------------------------------
def test_fingerprint_changes_with_tensor_bytes_at_same_size_and_mtime(tiny_lineage, tmp_path):
    d = _copy(tiny_lineage.rl, tmp_path / "rl")
    before = Checkpoint.open(d).fingerprint()["weights_sha256"]
    _flip_in_place(d, NAME)
    after = Checkpoint.open(d).fingerprint()["weights_sha256"]
    assert before != after


def test_same_architecture_same_names_sizes_mtimes_differ(tiny_lineage, tmp_path):
    """Two checkpoints that share shard names, sizes, whole-second mtimes and headers have different fingerprints."""
    a = _copy(tiny_lineage.rl, tmp_path / "a")
    b = _copy(tiny_lineage.rl, tmp_path / "b")
    _flip_in_place(b, NAME)
    for shard in a.glob("*.safetensors"):
        st = shard.stat()
        os.utime(b / shard.name, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert Checkpoint.open(a).fingerprint()["weights_sha256"] != Checkpoint.open(b).fingerprint()["weights_sha256"]


def test_fingerprint_is_cached_per_file_and_rehashed_when_the_file_changes(tiny_lineage, tmp_path, monkeypatch):
    from frankeneval.weights import fingerprint as fpmod

    d = _copy(tiny_lineage.rl, tmp_path / "rl")
    first = Checkpoint.open(d).fingerprint()
    cache = fpmod.fingerprint_cache_dir()
    assert (cache.is_relative_to(tmp_path / "fe-cache")
            and len(list(cache.glob("*.json"))) == len(list(d.glob("*.safetensors"))))
    hashed: list[str] = []
    real = fpmod._hash_file
    monkeypatch.setattr(fpmod, "_hash_file", lambda p: hashed.append(Path(p).name) or real(p))
    assert Checkpoint.open(d).fingerprint() == first  # warm: no file is read
    assert hashed == []
    _flip_in_place(d, NAME)  # same size and mtime, but ctime moves: only that shard is hashed again
    assert Checkpoint.open(d).fingerprint() != first
    assert hashed == [_shard_of(d, NAME).name]


def test_splice_rewrites_after_a_source_changed_in_place(tiny_lineage, tmp_path):
    rl = _copy(tiny_lineage.rl, tmp_path / "rl")
    recipe = tiny_recipe(tiny_lineage)
    spec = recipe.variant("in_early_middle+rl_late")
    spec.sources["rl"] = str(rl)
    out = materialize(spec, tmp_path / "splice", progress=False)
    _flip_in_place(rl, NAME)
    materialize(spec, out, progress=False)  # must not say "already holds this splice"
    new = load_file(_shard_of(rl, NAME))[NAME]
    got = load_file(_shard_of(out, NAME))[NAME]
    assert torch.equal(got, new)
    assert splice.verify(out).ok and not splice.verify(out).source_changes


def test_characterize_does_not_resume_another_lineages_run(tiny_lineage, tmp_path):
    rl2 = _copy(tiny_lineage.rl, tmp_path / "rl2")
    _flip_in_place(rl2, NAME)
    for shard in tiny_lineage.rl.glob("*.safetensors"):  # same names, sizes, mtimes and headers as rl
        st = shard.stat()
        os.utime(rl2 / shard.name, ns=(st.st_atime_ns, st.st_mtime_ns))
    settings = CharacterizeSettings(spectra=False, sections=("llm",))
    out = tmp_path / "run"
    characterize(tiny_lineage.base, tiny_lineage.in_, tiny_lineage.rl, out, settings=settings, device="cpu",
                 progress=False)
    with pytest.raises(SpecError, match="different settings or weights"):
        characterize(tiny_lineage.base, tiny_lineage.in_, rl2, out, settings=settings, device="cpu", progress=False)


# -- 2. validate every checkpoint ------------------------------------------------------------------------
def _single(dir_: Path, name: str = "model.safetensors") -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    save_file({"model.layers.0.mlp.up_proj.weight": torch.ones(2, 2)}, dir_ / name)
    return dir_


@pytest.mark.parametrize("shard", ["../outside/model.safetensors", "ABS", "sub/model.safetensors", ".."])
def test_index_shard_names_are_plain_file_names(tmp_path, shard, capsys):
    _single(tmp_path / "outside")
    ckpt = tmp_path / "ckpt"
    _single(ckpt / "sub")
    if shard == "ABS":
        shard = str(tmp_path / "outside" / "model.safetensors")
    index = {"weight_map": {"model.layers.0.mlp.up_proj.weight": shard}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CorruptCheckpoint, match="plain file name") as info:
        Checkpoint(ckpt)
    assert "\n" not in str(info.value)
    assert main(["inspect", str(ckpt)]) == 1
    err = capsys.readouterr().err.strip()
    assert "plain file name" in err and "Traceback" not in err and err.count("\n") == 0


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_a_shard_symlinked_outside_the_checkpoint_is_refused(tmp_path, layout, capsys):
    outside = _single(tmp_path / "elsewhere")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    if layout == "single":
        (ckpt / "model.safetensors").symlink_to(outside / "model.safetensors")
    else:
        (ckpt / "model-00001-of-00001.safetensors").symlink_to(outside / "model.safetensors")
        index = {"weight_map": {"model.layers.0.mlp.up_proj.weight": "model-00001-of-00001.safetensors"}}
        (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CorruptCheckpoint, match="symlink") as info:
        Checkpoint(ckpt)
    assert "\n" not in str(info.value)
    assert main(["inspect", str(ckpt)]) == 1
    assert "Traceback" not in capsys.readouterr().err


def _fake_hub_repo(hub: Path, repo: str, src: Path) -> Path:
    """A huggingface_hub cache entry for ``repo``: files in blobs/, the snapshot's files relative symlinks to them."""
    root = hub / f"models--{repo.replace('/', '--')}"
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = root / "snapshots" / rev
    (root / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(rev)
    for i, f in enumerate(sorted(src.iterdir())):
        blob = root / "blobs" / f"blob{i:04d}"
        shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(Path("../../blobs") / blob.name)
    return snap


def test_hub_snapshot_symlinks_into_its_blobs_are_accepted(tiny_lineage, tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    snap = _fake_hub_repo(hub, "org/tiny-rl", tiny_lineage.rl)
    ckpt = Checkpoint(snap)
    assert torch.equal(ckpt.read(NAME), Checkpoint.open(tiny_lineage.rl).read(NAME))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))  # read at import time
    assert Checkpoint.open("org/tiny-rl").path == snap.resolve()
    # a snapshot whose shard points into another repo's blobs leaves its checkpoint
    other = _fake_hub_repo(hub, "org/other", tiny_lineage.in_)
    shard = _shard_of(snap, NAME)
    target = (other.parent.parent / "blobs" / os.readlink(_shard_of(other, NAME)).split("/")[-1])
    shard.unlink()
    shard.symlink_to(Path("../../../models--org--other/blobs") / target.name)
    with pytest.raises(CorruptCheckpoint, match="symlink"):
        Checkpoint(snap)


# -- 3. one pickle opt-in ----------------------------------------------------------------------------------
def _pickled(src: Path, dst: Path) -> Path:
    """``src`` (a safetensors checkpoint) with its weights as one pytorch_model.bin."""
    dst.mkdir()
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(shard))
    torch.save(tensors, dst / "pytorch_model.bin")
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.name != "model.safetensors.index.json" and f.is_file():
            shutil.copyfile(f, dst / f.name)
    return dst


def test_splice_takes_allow_pickle(tiny_lineage, tmp_path, capsys):
    rl = _pickled(tiny_lineage.rl, tmp_path / "rl-pickle")
    args = ["splice", "RL late 1/3 layers", "--in", str(tiny_lineage.in_), "--rl", str(rl),
            "--out", str(tmp_path / "s"), "-q"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "--allow-pickle" in err and "Traceback" not in err and err.count("\n") == 0
    assert main([*args, "--allow-pickle"]) == 0
    assert torch.equal(Checkpoint.open(tmp_path / "s").read(NAME), Checkpoint.open(tiny_lineage.rl).read(NAME))
    assert main(["splice", "--check", str(tmp_path / "s"), "--allow-pickle", "-q"]) == 0


def test_characterize_and_freeze_spec_take_allow_pickle(tiny_lineage, tmp_path, capsys):
    rl = _pickled(tiny_lineage.rl, tmp_path / "rl-pickle")
    args = ["characterize", "--base", str(tiny_lineage.base), "--in", str(tiny_lineage.in_), "--rl", str(rl),
            "--out", str(tmp_path / "c"), "--energy-only", "--sections", "projector", "--device", "cpu",
            "--no-progress"]
    assert main(args) == 1
    assert "--allow-pickle" in capsys.readouterr().err
    assert main([*args, "--allow-pickle"]) == 0
    assert main(["freeze-spec", "--layers", "late", "--model", str(rl)]) == 1
    assert "--allow-pickle" in capsys.readouterr().err
    assert main(["freeze-spec", "--layers", "late", "--model", str(rl), "--allow-pickle"]) == 0


def test_generator_refuses_pickle_only_weights_without_the_opt_in(tiny_lineage, tmp_path, monkeypatch):
    from frankeneval.model_wrappers import model_args

    from frankeneval.engine.generation import Generator

    rl = _pickled(tiny_lineage.rl, tmp_path / "rl-pickle")
    with pytest.raises(UnsafeWeights, match="allow_pickle") as info:
        Generator.load(str(rl), device="cpu")
    assert "\n" not in str(info.value)
    gen = Generator.load(str(rl), device="cpu", allow_pickle=True)
    assert gen.n_llm_layers == 6
    seen = {}
    monkeypatch.setattr(Generator, "load", classmethod(lambda cls, p, **kw: seen.update(kw) or "gen"))
    model_args.build_generator({"pretrained": str(rl), "allow_pickle": "true"}, "cpu")
    assert seen["allow_pickle"] is True
    model_args.build_generator({"pretrained": str(rl)}, "cpu")
    assert seen["allow_pickle"] is False


# -- 4. a missing local source ------------------------------------------------------------------------------
@pytest.mark.parametrize("ref", ["./nope", "/no/such/dir", "runs/nope", "runs/a/b", "~/no-such-frankeneval-dir"])
def test_a_missing_local_source_is_named_as_such(tmp_path, monkeypatch, ref):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "runs").mkdir()  # "runs/nope" is a path: its first component is a local folder
    with pytest.raises(CheckpointNotFound, match="no such local checkpoint directory") as info:
        Checkpoint.open(ref)
    assert "\n" not in str(info.value) and str(Path(ref).expanduser()) in str(info.value)
    if ref != "runs/nope":  # "org/name"-shaped: tried as a hub id first (offline here), and says so
        assert "hub id" not in str(info.value)


def test_splice_with_a_missing_source_says_so(tiny_lineage, tmp_path, capsys):
    args = ["splice", "RL late 1/3 layers", "--in", str(tiny_lineage.in_), "--rl", str(tmp_path / "gone"),
            "--out", str(tmp_path / "s"), "-q"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert f"no such local checkpoint directory: {tmp_path / 'gone'}" in err and err.count("\n") == 0
