"""The one door to disk: malformed safetensors files and weight indexes fail with one clear line, the
streaming reader returns exactly the bytes safetensors reads, and results are written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from frankeneval.cli import main
from frankeneval.errors import FrankenevalError
from frankeneval.weights.checkpoint import Checkpoint


def _write_safetensors(path: Path, header: dict | bytes, data: bytes, *, length: int | None = None) -> Path:
    """A safetensors file with a hand-made header (``length``: a lying 8-byte header length)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((len(raw) if length is None else length).to_bytes(8, "little") + raw + data)
    return path


def _one_line_error(ckpt_dir: Path, *needles: str, capsys) -> None:
    """Opening ``ckpt_dir`` and listing where its tensors are fails with one line naming ``needles``;
    ``frankeneval inspect`` prints that one line and exits 1 (no traceback)."""
    with pytest.raises(FrankenevalError) as info:
        Checkpoint(ckpt_dir).locations()
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg
    assert main(["inspect", str(ckpt_dir)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and needles[0] in err


def _entry(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_overlapping_tensors(tmp_path, capsys):
    header = {"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 4, 12)}
    _write_safetensors(tmp_path / "model.safetensors", header, bytes(12))
    _one_line_error(tmp_path, "model.safetensors", "overlap", "'a'", "'b'", capsys=capsys)


def test_tensor_past_the_end_of_the_file(tmp_path, capsys):
    header = {"a": _entry("F32", [4], 0, 16)}
    _write_safetensors(tmp_path / "model.safetensors", header, bytes(8))
    _one_line_error(tmp_path, "model.safetensors", "'a'", "past the end", capsys=capsys)


def test_length_differs_from_dtype_times_shape(tmp_path, capsys):
    header = {"a": _entry("F32", [3], 0, 8)}
    _write_safetensors(tmp_path / "model.safetensors", header, bytes(8))
    _one_line_error(tmp_path, "model.safetensors", "'a'", "needs 12", capsys=capsys)


def test_header_length_larger_than_the_file(tmp_path, capsys):
    header = {"a": _entry("F32", [2], 0, 8)}
    _write_safetensors(tmp_path / "model.safetensors", header, bytes(8), length=2**63)
    _one_line_error(tmp_path, "model.safetensors", str(2**63), "does not fit", capsys=capsys)


def test_header_that_is_not_json(tmp_path, capsys):
    _write_safetensors(tmp_path / "model.safetensors", b'{"a": {"dtype": "F32", ', bytes(8))
    _one_line_error(tmp_path, "model.safetensors", "not valid JSON", capsys=capsys)


def test_errors_in_a_sharded_checkpoint_name_the_shard(tmp_path, capsys):
    a, b = "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight"
    header = {a: _entry("F32", [2], 0, 8), b: _entry("F32", [2], 4, 12)}
    _write_safetensors(tmp_path / "model-00001-of-00001.safetensors", header, bytes(12))
    index = {"weight_map": {a: "model-00001-of-00001.safetensors", b: "model-00001-of-00001.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    _one_line_error(tmp_path, "model-00001-of-00001.safetensors", "overlap", capsys=capsys)


@pytest.mark.parametrize("text", ['{"weight_map": {"a": ', '{"metadata": {}}', '["weight_map"]',
                                  '{"weight_map": {"a": 3}}'])
def test_bad_weight_index(tmp_path, capsys, text):
    _write_safetensors(tmp_path / "model-00001-of-00001.safetensors", {"a": _entry("F32", [2], 0, 8)}, bytes(8))
    (tmp_path / "model.safetensors.index.json").write_text(text)
    _one_line_error(tmp_path, "model.safetensors.index.json", capsys=capsys)


def test_reader_returns_exactly_the_bytes_safetensors_reads(tmp_path):
    from frankeneval.weights.tensor_stream import read_tensor, stream_tensors

    g = torch.Generator().manual_seed(0)
    tensors = {
        "model.layers.0.mlp.up_proj.weight": torch.randn(5, 3, generator=g).to(torch.bfloat16),
        "model.layers.0.mlp.down_proj.weight": torch.randn(3, 5, generator=g),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(4, 4, generator=g).to(torch.float16),
        "model.layers.0.self_attn.q_proj.bias": torch.randn(4, generator=g).double(),
        "model.embed_tokens.weight": torch.randint(-2**40, 2**40, (6, 2), generator=g),
        "model.norm.weight": torch.randint(0, 255, (7,), generator=g).to(torch.uint8),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }
    save_file(tensors, tmp_path / "model.safetensors")
    ckpt = Checkpoint(tmp_path)
    names = sorted(tensors)
    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        expected = {n: f.get_tensor(n) for n in names}

    def raw(t: torch.Tensor) -> bytes:
        return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        return (a.dtype, a.shape) == (b.dtype, b.shape) and raw(a) == raw(b)

    for n in names:
        assert same(read_tensor(ckpt.location(n)), expected[n]), n
        assert same(ckpt.read(n), expected[n]), n
        assert bytes(ckpt.read_bytes(n)) == raw(expected[n]), n
    with stream_tensors([ckpt, ckpt], names, torch.device("cpu"), queue_depth=1) as (items, bytes_read):
        for name, (t1, t2) in items:
            assert same(t1, expected[name]) and same(t2, expected[name]), name
        assert bytes_read() == 2 * sum(t.numel() * t.element_size() for t in expected.values())


def test_locations_point_at_the_bytes(tmp_path):
    t = torch.arange(12, dtype=torch.int32).reshape(3, 4)
    save_file({"x": t, "y": t + 100}, tmp_path / "model.safetensors")
    loc = Checkpoint(tmp_path).location("y")
    raw = (tmp_path / "model.safetensors").read_bytes()
    assert (loc.dtype, loc.shape, loc.nbytes) == ("I32", (3, 4), 48)
    assert raw[loc.offset : loc.offset + loc.nbytes] == (t + 100).numpy().tobytes()


# -- results on disk -------------------------------------------------------------------------------------
def test_jsonl_log_heals_a_torn_last_line_and_skips_a_corrupt_one(tmp_path, capsys):
    from frankeneval.core.results import JsonlLog, read_jsonl

    path = tmp_path / "log.jsonl"
    log = JsonlLog(path)
    log.append({"a": 1})
    log.append({"a": 2})
    with open(path, "a") as f:
        f.write('{"a": 3, "b"')  # killed mid-append
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    log = JsonlLog(path)
    assert log.records == [{"a": 1}, {"a": 2}]
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
    log.append({"a": 4})
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 4}]
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    assert JsonlLog(path).records == [{"a": 1}, {"a": 2}]  # named, skipped, recomputed by its run
    assert "log.jsonl:2: corrupt line" in capsys.readouterr().err


def test_atomic_writes_leave_the_old_file_on_failure(tmp_path):
    from frankeneval.core.results import atomic_output, write_json_atomic

    path = tmp_path / "sub" / "r.json"
    write_json_atomic(path, {"x": [1, 2]}, indent=2)
    assert path.read_text() == '{\n  "x": [\n    1,\n    2\n  ]\n}\n'
    with pytest.raises(ValueError):
        write_json_atomic(path, {"x": float("nan")}, allow_nan=False)
    with pytest.raises(RuntimeError), atomic_output(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert json.loads(path.read_text()) == {"x": [1, 2]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]
