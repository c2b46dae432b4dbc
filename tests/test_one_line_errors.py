"""One line where a traceback was (issue 29): NaN / Inf weights in characterize, a member's config.json that is not
JSON, a member without a tokenizer, a run-store record with a field of the wrong type (resume and ``plot``), a
read-only / full / forbidden output disk, and bad values rejected at the argument parser with their valid range.
CPU only, on the tiny lineage."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model")


def _cli(capsys, *argv: str) -> tuple[int, str]:
    """``frankeneval ARGV`` in this process: (exit status, stderr)."""
    from frankeneval.cli import main

    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _error_line(err: str, command: str) -> str:
    """The one ``frankeneval COMMAND: error: ...`` line of ``err`` (and no traceback)."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"frankeneval {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _copy(member: Path, dst: Path, *, drop: tuple[str, ...] = (), values: dict[str, float] | None = None) -> Path:
    """A copy of a lineage member without the files ``drop`` and with element [0, 0] of each tensor in ``values``
    set to its value (NaN, Inf)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    shutil.copytree(member, dst)
    for name in drop:
        (dst / name).unlink(missing_ok=True)
    weight_map = json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"]
    for name, value in (values or {}).items():
        shard = dst / weight_map[name]
        with safe_open(shard, "pt") as f:
            meta = f.metadata()
        tensors = load_file(shard)
        t = tensors[name].clone()
        t[0, 0] = value
        tensors[name] = t
        save_file(tensors, shard, metadata=meta)
    return dst


# -- non-finite weights -------------------------------------------------------------------------------------------
NAN_MATRIX = "model.layers.1.mlp.down_proj.weight"
INF_MATRIX = "model.layers.4.self_attn.q_proj.weight"


def test_non_finite_weights_are_named_not_a_traceback(tiny_lineage, tmp_path, capsys):
    """NaN / Inf in RL weights: characterize (and --compare) measures every finite matrix, then stops in one line
    naming the non-finite matrices and what they hold; no NaN / Inf reaches the JSON, no summary is written."""
    bad_rl = _copy(tiny_lineage.rl, tmp_path / "rl_bad", values={NAN_MATRIX: float("nan"), INF_MATRIX: float("inf")})
    out = tmp_path / "char"
    rc, err = _cli(capsys, "characterize", "--base", tiny_lineage.base, "--in", tiny_lineage.in_, "--rl", bad_rl,
                   "--out", out, "--no-progress")
    line = _error_line(err, "characterize")
    assert rc == 1
    assert f"{NAN_MATRIX} (rl: 1 NaN)" in line and f"{INF_MATRIX} (rl: 1 Inf)" in line and "2 of " in line
    text = (out / "matrices.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text and NAN_MATRIX not in text
    assert len(text.splitlines()) > 10 and not (out / "summary.json").exists()

    rc, err = _cli(capsys, "characterize", "--compare", f"A={tiny_lineage.base},{tiny_lineage.in_},{tiny_lineage.rl}",
                   f"B={tiny_lineage.base},{tiny_lineage.in_},{bad_rl}", "--out", tmp_path / "cmp", "--no-progress")
    line = _error_line(err, "characterize")
    assert rc == 1 and f"{NAN_MATRIX} (B rl: 1 NaN)" in line and f"{INF_MATRIX} (B rl: 1 Inf)" in line


# -- a config.json that is not JSON ---------------------------------------------------------------------------------
def test_a_config_json_that_is_not_json_is_one_line(tiny_lineage, tmp_path, capsys):
    """inspect, splice (the member as a source and as --host) and the localize commands name the file."""
    bad = _copy(tiny_lineage.rl, tmp_path / "rl_badcfg")
    (bad / "config.json").write_text('{"model_type": "qwen2_5_vl", ')
    want = f"{bad / 'config.json'} is not valid JSON"

    rc, err = _cli(capsys, "inspect", bad)
    assert rc == 1 and want in _error_line(err, "inspect")
    for host in ("rl", "in"):
        rc, err = _cli(capsys, "splice", "tiny:in_early+rl_middle_late", "--in", tiny_lineage.in_, "--rl", bad,
                       "--host", host, "--out", tmp_path / f"splice_{host}", "-q")
        assert rc == 1 and want in _error_line(err, "splice")
    rc, err = _cli(capsys, "localize-vision", "--model", bad, "--out", tmp_path / "lv", "--rendered", "--tasks",
                   "counting", "--samples", "1", "--layers", "1", "--max-new-tokens", "2", "--no-progress")
    assert rc == 1 and "config.json is not valid JSON" in _error_line(err, "localize-vision")
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i} + 1?", "answer": f"#### {i + 1}"}) + "\n" for i in range(3)))
    rc, err = _cli(capsys, "localize-reasoning", "--model", bad, "--dataset", "gsm8k", "--data", data, "--samples", "2",
                   "--out", tmp_path / "lr", "--layers", "1", "--max-new-tokens", "2", "--no-progress")
    assert rc == 1 and "config.json is not valid JSON" in _error_line(err, "localize-reasoning")


# -- a member without a tokenizer -----------------------------------------------------------------------------------
def test_a_member_without_tokenizer(tiny_lineage, tmp_path, capsys):
    """Generating with it stops in one line (no ZeroDivisionError in the Generator); splicing from it as the host
    says in one line that the splice has no tokenizer."""
    from frankeneval.engine.generation import Generator
    from frankeneval.errors import FrankenevalError

    bare = _copy(tiny_lineage.in_, tmp_path / "in_bare", drop=TOKENIZER_FILES)
    with pytest.raises(FrankenevalError, match="has no tokenizer"):
        Generator.load(str(bare), device="cpu")
    rc, err = _cli(capsys, "localize-vision", "--model", bare, "--out", tmp_path / "lv", "--rendered", "--tasks",
                   "counting", "--samples", "1", "--layers", "1", "--max-new-tokens", "2", "--no-progress")
    assert rc == 1 and "has no tokenizer" in _error_line(err, "localize-vision")

    out = tmp_path / "splice"  # this variant's host is IN: its config, tokenizer and processor files are copied
    rc, err = _cli(capsys, "splice", "tiny:in_early+rl_middle_late", "--in", bare, "--rl", tiny_lineage.rl,
                   "--out", out, "-q")
    assert rc == 0 and (out / "model.safetensors.index.json").is_file()
    warnings = [ln for ln in err.splitlines() if "has no tokenizer" in ln]
    assert len(warnings) == 1 and str(out) in warnings[0] and "Traceback" not in err


# -- a run-store record with a field of the wrong type ----------------------------------------------------------------
def test_run_store_records_of_the_wrong_type_are_not_finished(tmp_path, capsys):
    """A record whose required field has another type is named on stderr, skipped and so recomputed on resume (the
    localize sweeps' units.jsonl, transfer's cells.jsonl and the readers)."""
    from frankeneval.core import runstore
    from frankeneval.core.runstore import RunStore, read_records
    from frankeneval.transferability.manifest import CELL_FIELDS

    path = tmp_path / "units.jsonl"
    numbers = getattr(runstore, "list_of_numbers", list)  # (a plain list before the typed check existed)
    types = {"response": str, "answer": (str, type(None)), "mass": (numbers, type(None))}
    lines = [{"_header": {"analysis": "x"}},
             {"key": "good", "record": {"response": "a", "answer": None, "mass": [[0.5, 1]]}},
             {"key": "int", "record": {"response": 5, "answer": "1", "mass": None}},
             {"key": "bool", "record": {"response": "a", "answer": True, "mass": None}},
             {"key": "mass", "record": {"response": "a", "answer": "1", "mass": [["x"]]}}]
    path.write_text("".join(json.dumps(obj) + "\n" for obj in lines))
    store = RunStore(path, header={"analysis": "x"}, required=types)
    assert store.done("good") and store.missing(["good", "int", "bool", "mass"]) == ["int", "bool", "mass"]
    err = capsys.readouterr().err
    assert "field 'response' is an integer, not text" in err and "Traceback" not in err
    store.append("int", {"response": "b", "answer": "2", "mass": None})  # the resume recomputes it
    assert read_records(path, types)[1]["int"]["response"] == "b"

    cells = tmp_path / "cells.jsonl"
    cells.write_text(json.dumps({"_header": {}}) + "\n"
                     + json.dumps({"key": "rl::t", "record": {"model": "rl", "task": "t", "results": 3}}) + "\n")
    assert read_records(cells, CELL_FIELDS)[1] == {}


@pytest.fixture(scope="module")
def char_run(tiny_lineage, tmp_path_factory):
    from frankeneval.characterization.characterize import characterize

    out = tmp_path_factory.mktemp("char") / "run"
    characterize(tiny_lineage.base, tiny_lineage.in_, tiny_lineage.rl, out, progress=False)
    return out


def test_characterize_resume_and_plot_with_a_record_of_the_wrong_type(tiny_lineage, char_run, tmp_path, capsys):
    """matrices.jsonl with a record whose ``layer`` is text: ``plot`` warns and draws the rest; a characterize resume
    measures that matrix again; a summary.json that is malformed or not JSON is one line in ``plot``."""
    run = tmp_path / "run"
    shutil.copytree(char_run, run)
    lines = (run / "matrices.jsonl").read_text().splitlines()
    bad = json.loads(lines[3])
    bad["layer"] = "x"
    lines[3] = json.dumps(bad)
    (run / "matrices.jsonl").write_text("\n".join(lines) + "\n")

    rc, err = _cli(capsys, "plot", run)
    assert rc == 0 and "field 'layer' is text" in err and "Traceback" not in err
    rc, err = _cli(capsys, "characterize", "--base", tiny_lineage.base, "--in", tiny_lineage.in_, "--rl",
                   tiny_lineage.rl, "--out", run, "--no-progress")
    assert rc == 0, err
    records = [json.loads(ln) for ln in (run / "matrices.jsonl").read_text().splitlines()]
    assert isinstance([r for r in records if r["name"] == bad["name"]][-1]["layer"], int)

    summary = json.loads((run / "summary.json").read_text())
    summary["aggregates"]["by_layer"]["x"] = summary["aggregates"]["by_layer"]["1"]
    (run / "summary.json").write_text(json.dumps(summary))
    rc, err = _cli(capsys, "plot", run, "--out", tmp_path / "plots2")
    assert rc == 1 and f"{run / 'summary.json'} is malformed" in _error_line(err, "plot")
    (run / "summary.json").write_text("{not json")
    rc, err = _cli(capsys, "plot", run, "--out", tmp_path / "plots3")
    assert rc == 1 and "summary.json is not valid JSON" in _error_line(err, "plot")


# -- a read-only, full or forbidden output disk ------------------------------------------------------------------------
@pytest.fixture()
def broken_disk(tmp_path, monkeypatch):
    """``tmp_path/disk``: a folder where making a directory fails as on a read-only, full or forbidden disk
    (``broken_disk(errno)`` sets which)."""
    root = tmp_path / "disk"
    real_mkdir = os.mkdir
    state = {"errno": errno.EROFS}

    def mkdir(path, *args, **kwargs):
        if str(os.path.abspath(os.fspath(path))).startswith(str(root)):
            raise OSError(state["errno"], os.strerror(state["errno"]), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)

    def set_errno(code: int) -> Path:
        state["errno"] = code
        return root

    return set_errno


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EACCES])
def test_an_unwritable_output_disk_is_one_line_naming_the_path(tiny_lineage, tmp_path, capsys, broken_disk, code):
    """splice, characterize, the localize commands and transfer: one line naming the output path and what
    happened, not a traceback."""
    disk = broken_disk(code)
    name = errno.errorcode[code]
    runs = {
        "splice": ["tiny:in_early+rl_middle_late", "--in", tiny_lineage.in_, "--rl", tiny_lineage.rl, "-q",
                   "--out", disk / "splice"],
        "characterize": ["--base", tiny_lineage.base, "--in", tiny_lineage.in_, "--rl", tiny_lineage.rl,
                         "--no-progress", "--energy-only", "--out", disk / "char"],
        "localize-vision": ["--model", tiny_lineage.rl, "--rendered", "--tasks", "counting", "--samples", "1",
                            "--layers", "1", "--max-new-tokens", "2", "--no-progress", "--out", disk / "lv"],
        "transfer": ["--recipe", "tiny", "--base", tiny_lineage.base, "--in", tiny_lineage.in_, "--rl",
                     tiny_lineage.rl, "--tasks", "franken_gsm8k", "--no-reference", "--variants",
                     "in_early+rl_middle_late", "--splice-cache", tmp_path / "cache", "--out", disk / "run"],
    }
    for command, argv in runs.items():
        rc, err = _cli(capsys, command, *argv)
        line = _error_line(err, command)
        assert rc == 1 and str(disk) in line and f"({name})" in line, line


def test_a_disk_error_without_a_file_names_the_output(tiny_lineage, tmp_path, capsys, monkeypatch):
    """ENOSPC from a write to an open descriptor names no file: the line names the command's --out."""
    import frankeneval.transferability.splice as splice

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(splice, "materialize", full)
    rc, err = _cli(capsys, "splice", "tiny:in_early+rl_middle_late", "--in", tiny_lineage.in_, "--rl",
                   tiny_lineage.rl, "--out", tmp_path / "out")
    line = _error_line(err, "splice")
    assert rc == 1 and f"cannot write {tmp_path / 'out'}: no space left" in line and "(ENOSPC)" in line


# -- bad values at the argument parser --------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,want", [
    (["localize-vision", "--max-new-tokens", "0"], "argument --max-new-tokens: must be an integer >= 1, got '0'"),
    (["localize-reasoning", "--max-new-tokens", "-5"], "argument --max-new-tokens: must be an integer >= 1"),
    (["attention-shift", "--max-new-tokens", "0"], "argument --max-new-tokens: must be an integer >= 1"),
    (["transfer", "--max-new-tokens", "0"], "argument --max-new-tokens: must be an integer >= 1"),
    (["localize-vision", "--samples", "-3"], "argument --samples: must be an integer >= 1, got '-3'"),
    (["localize-reasoning", "--samples", "-3"], "argument --samples: must be an integer >= 0 (0 = all)"),
    (["localize-vision", "--batch-size", "0"], "argument --batch-size: must be a positive integer or auto"),
    (["attention-shift", "--batch-size", "-1"], "argument --batch-size: must be an integer >= 1"),
    (["localize-vision", "--seed", "-1"], "argument --seed: must be an integer from 0 to 4294967295"),
    (["characterize", "--top-k", "0"], "argument --top-k: must be an integer >= 1"),
    (["characterize", "--rank-r", "-1"], "argument --rank-r: must be an integer >= 0 (0 = skip)"),
    (["transfer", "--sample-size", "-1"], "argument --sample-size: must be an integer >= 0 (0 = all)"),
    (["transfer", "--gpus", "-2"], "argument --gpus: must be an integer >= 0"),
    (["transfer", "--batch-size", "0"], "argument --batch-size: must be a positive integer or auto"),
    (["make-probes", "out", "--seed", "-1"], "argument --seed: must be an integer from 0 to 4294967295"),
    (["make-probes", "out", "--n", "0"], "argument --n: must be an integer >= 1"),
    (["freeze-spec", "--n-layers", "0"], "argument --n-layers: must be an integer >= 1"),
    (["splice", "--cuts", "0", "3"], "argument --cuts: must be an integer >= 1"),
    (["splice", "--shard-size", "0"], "argument --shard-size: must be a size of at least 1 byte"),
    (["report", "run", "--seed", "-1"], "argument --seed: must be an integer from 0 to"),
])
def test_bad_values_are_rejected_at_the_parser_with_the_range(argv, want, capsys):
    from frankeneval.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and want in err and "Traceback" not in err, err


def test_more_samples_than_the_data_has_says_it_uses_all(tmp_path, capsys):
    """--samples larger than a dataset: the run uses every item and says so in one line (as --help says)."""
    from frankeneval.cli import build_parser
    from frankeneval.localization.reasoning import select_questions
    from frankeneval.localization.vision import select_probe_sets
    from frankeneval.miniature.world import write_vision_probes

    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i} + 1?", "answer": f"#### {i + 1}"}) + "\n" for i in range(5)))
    questions, _ = select_questions("gsm8k", data=data, samples=99999, progress=False)
    assert len(questions) == 5
    assert "--samples 99999 is more than the 5 gsm8k questions; using all 5" in capsys.readouterr().err
    probes = write_vision_probes(tmp_path / "probes", n_per_task=3, tasks=["counting"])
    pairs, _ = select_probe_sets(["counting"], data=probes, samples=99999, progress=False)
    assert len(pairs["counting"]) == 3
    assert "--samples 99999 is more than the 3 counting pairs" in capsys.readouterr().err
    sub = build_parser()._subparsers._group_actions[0].choices["localize-vision"]
    assert "More than a task has: all" in " ".join(sub.format_help().split())
