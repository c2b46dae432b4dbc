"""Issue 29, "Data loss": every command writes only into an output folder frankeneval owns (docs/safety.md).

One test per example of the issue (each fails on the code before the guard), then the guard itself
(:mod:`frankeneval.core.outdir`): a new, empty or marked folder is fine, an older unmarked result is adopted only
when its contents prove it, foreign files need --allow-foreign-files and are never overwritten even then.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from frankeneval.cli import main
from frankeneval.errors import FrankenevalError

FAST = ["--sections", "llm", "--energy-only", "--device", "cpu", "--no-progress"]


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder``: file bytes, and link targets (so a replaced link shows)."""
    out: dict[str, bytes | str] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_bytes()
        else:
            out[rel] = "dir"
    return out


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"frankeneval {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture()
def own_lineage(tiny_lineage, tmp_path) -> Path:
    """A private copy of the tiny lineage (these tests try to make frankeneval write into it)."""
    root = tmp_path / "lineage"
    for m in ("base", "in", "rl"):
        shutil.copytree(tiny_lineage.paths[m], root / m)
    return root


def lineage_args(root: Path) -> list[str]:
    return ["--base", str(root / "base"), "--in", str(root / "in"), "--rl", str(root / "rl")]


@pytest.fixture()
def probe_dataset(tmp_path) -> Path:
    """A user's own probe dataset: counting/data.jsonl and images named like frankeneval's rendered ones."""
    root = tmp_path / "my_probes"
    images = root / "counting" / "images"
    images.mkdir(parents=True)
    rows = [{"id": f"counting_{i:06d}", "task": "counting", "target_image": f"images/counting_{i:06d}_t.png",
             "source_image": f"images/counting_{i:06d}_s.png", "prompt": "How many cats?",
             "meta": {"target_answer": "3", "source_answer": "5"}} for i in range(2)]
    (root / "counting" / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for i in range(2):
        for side in "ts":
            (images / f"counting_{i:06d}_{side}.png").write_bytes(b"my own photo " + f"{i}{side}".encode())
    return root


@pytest.fixture()
def gsm8k_file(tmp_path) -> Path:
    path = tmp_path / "gsm8k.jsonl"
    rows = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- the examples -----------------------------------------------------------------------------------
def test_make_probes_never_overwrites_a_probe_dataset(probe_dataset, capsys):
    before = snapshot(probe_dataset)
    rc = main(["make-probes", str(probe_dataset), "--tasks", "counting", "--n", "2"])
    assert rc == 1
    assert snapshot(probe_dataset) == before  # was: data.jsonl and the images replaced
    assert str(probe_dataset) in one_line_error(capsys, "make-probes")


def test_localize_vision_rendered_never_overwrites_a_probe_dataset(probe_dataset, tmp_path, capsys):
    before = snapshot(probe_dataset)
    rc = main(["localize-vision", "--model", "m", "--rendered", str(probe_dataset), "--tasks", "counting",
               "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 1
    assert snapshot(probe_dataset) == before  # was: data.jsonl and the images replaced
    assert str(probe_dataset) in one_line_error(capsys, "localize-vision")


@pytest.mark.parametrize("command", ["characterize", "localize-vision", "localize-reasoning", "attention-shift"])
def test_no_command_writes_into_a_checkpoint_folder(own_lineage, gsm8k_file, command, capsys):
    rl = own_lineage / "rl"
    before = snapshot(rl)
    argv = {
        "characterize": ["characterize", *lineage_args(own_lineage), *FAST],
        "localize-vision": ["localize-vision", "--model", "m", "--rendered", "--tasks", "counting", "--no-progress"],
        "localize-reasoning": ["localize-reasoning", "--model", "m", "--dataset", "gsm8k", "--data", str(gsm8k_file),
                               "--no-progress"],
        "attention-shift": ["attention-shift", "--base", "b", "--in", "i", "--rl", "r", "--rendered", "--tasks",
                            "counting", "--no-progress"],
    }[command]
    assert main([*argv, "--out", str(rl)]) == 1
    assert snapshot(rl) == before  # was: results (or rendered probes) written into the checkpoint
    line = one_line_error(capsys, command)
    assert "checkpoint" in line or "input" in line, line  # refused before any model is loaded
    # nor inside one
    assert main([*argv, "--out", str(rl / "analysis")]) == 1
    assert snapshot(rl) == before
    line = one_line_error(capsys, command)
    assert "checkpoint" in line or "input" in line, line


def test_characterize_never_overwrites_a_users_summary_json(own_lineage, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "summary.json").write_text('{"my": "summary"}')
    before = snapshot(out)
    assert main(["characterize", *lineage_args(own_lineage), *FAST, "--out", str(out)]) == 1  # was: 0, replaced
    assert snapshot(out) == before
    assert str(out) in one_line_error(capsys, "characterize")


def test_localize_never_appends_to_a_users_units_jsonl(tiny_lineage, gsm8k_file, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "units.jsonl").write_text("my own notes\nnot frankeneval's\n")
    before = snapshot(out)
    rc = main(["localize-reasoning", "--model", str(tiny_lineage.rl), "--dataset", "gsm8k", "--data", str(gsm8k_file),
               "--samples", "0", "--layers", "1", "--reasoning-prompt", "off", "--max-new-tokens", "2",
               "--batch-size", "1", "--device", "cpu", "--no-progress", "--out", str(out)])
    assert rc == 1  # was: 0, with a header and the units appended to the user's file
    assert snapshot(out) == before
    assert str(out) in one_line_error(capsys, "localize-reasoning")


def test_run_store_never_appends_to_a_file_without_its_header(tmp_path):
    from frankeneval.core.runstore import RunStore

    path = tmp_path / "units.jsonl"
    for text in ("my own notes\nnot frankeneval's\n", '{"key": "a", "record": {"x": 1}}\n', "half a line of mine"):
        path.write_text(text)
        with pytest.raises(FrankenevalError, match="not written by frankeneval"):
            RunStore(path, header={"analysis": "x"})
        assert path.read_text() == text  # nothing appended, nothing cut off


def test_characterize_with_a_users_non_json_run_json(own_lineage, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "run.json").write_text("my notes, not JSON")
    before = snapshot(out)
    assert main(["characterize", *lineage_args(own_lineage), *FAST, "--out", str(out)]) == 1  # was: a traceback
    assert "run.json" in one_line_error(capsys, "characterize")
    assert main(["characterize", *lineage_args(own_lineage), *FAST, "--out", str(out), "--overwrite"]) == 1
    assert "run.json" in one_line_error(capsys, "characterize")
    assert snapshot(out) == before  # was: replaced with --overwrite


def test_characterize_never_appends_through_a_symlinked_matrices_jsonl(own_lineage, tmp_path, capsys):
    out, user = tmp_path / "run", tmp_path / "user.txt"
    user.write_text("my file\n")
    assert main(["characterize", *lineage_args(own_lineage), *FAST, "--out", str(out)]) == 0
    capsys.readouterr()
    (out / "matrices.jsonl").unlink()
    (out / "matrices.jsonl").symlink_to(user)
    assert main(["characterize", *lineage_args(own_lineage), *FAST, "--out", str(out)]) == 1
    assert "symbolic link" in one_line_error(capsys, "characterize")
    assert user.read_text() == "my file\n"
    # the same link in a folder that was never frankeneval's
    other = tmp_path / "other"
    other.mkdir()
    (other / "matrices.jsonl").symlink_to(user)
    assert main(["characterize", *lineage_args(own_lineage), *FAST, "--out", str(other)]) == 1
    one_line_error(capsys, "characterize")
    assert user.read_text() == "my file\n"


def test_jsonl_log_never_follows_a_symlink(tmp_path):
    from frankeneval.core.results import JsonlLog

    user = tmp_path / "user.txt"
    user.write_text('{"mine": 1}\n')
    link = tmp_path / "log.jsonl"
    link.symlink_to(user)
    with pytest.raises(FrankenevalError, match="symbolic link"):
        JsonlLog(link).append({"x": 1})
    assert user.read_text() == '{"mine": 1}\n'


def test_lock_path_that_links_to_a_user_file_is_refused_and_left_alone(tmp_path):
    from frankeneval.core.locks import lock_path_of, output_lock

    target, user = tmp_path / "out", tmp_path / "precious.txt"
    user.write_text("my data\n")
    lock_path_of(target).symlink_to(user)
    with pytest.raises(FrankenevalError, match="symbolic link"):
        with output_lock(target):
            pass
    assert user.read_text() == "my data\n"  # was: the holder's pid
    assert lock_path_of(target).is_symlink() and os.readlink(lock_path_of(target)) == str(user)


def test_users_own_file_at_the_lock_path_is_neither_changed_nor_deleted(tmp_path):
    from frankeneval.core.locks import lock_path_of, output_lock

    target = tmp_path / "out"
    lock_path_of(target).write_text("my data\n")
    with pytest.raises(FrankenevalError, match="did not write"):
        with output_lock(target):
            pass
    assert lock_path_of(target).read_text() == "my data\n"  # was: deleted on release


def test_demo_lineage_force_replaces_only_members_it_wrote(tiny_lineage, tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from frankeneval.miniature import training as tl

    cache = tmp_path / "cache"
    for m in ("base", "in", "rl"):
        shutil.copytree(tiny_lineage.paths[m], cache / m)
    built = SimpleNamespace(paths={m: cache / m for m in ("base", "in", "rl")}, timings={}, accuracy=None)
    monkeypatch.setattr(tl, "trained_lineage_dir", lambda seed: cache)
    monkeypatch.setattr(tl, "build_trained_lineage", lambda *a, **k: built)

    mine = tmp_path / "mine"
    (mine / "base").mkdir(parents=True)
    (mine / "base" / "notes.txt").write_text("my own base model notes")
    before = snapshot(mine)
    assert main(["demo-lineage", str(mine), "--trained", "--force", "--no-progress"]) == 1
    assert "base" in one_line_error(capsys, "demo-lineage")
    assert snapshot(mine) == before  # was: rmtree'd
    # --allow-foreign-files lets the folder hold other files, never replaces a member frankeneval did not write
    assert main(["demo-lineage", str(mine), "--trained", "--force", "--no-progress", "--allow-foreign-files"]) == 1
    one_line_error(capsys, "demo-lineage")
    assert snapshot(mine) == before

    ours = tmp_path / "ours"  # what it placed itself it replaces with --force
    assert main(["demo-lineage", str(ours), "--trained", "--no-progress"]) == 0
    assert main(["demo-lineage", str(ours), "--trained", "--force", "--no-progress"]) == 0
    assert all((ours / m / "frankeneval_lineage.json").is_file() for m in ("base", "in", "rl"))


# -- the guard itself ------------------------------------------------------------------------------------------
def test_new_and_empty_folders_are_claimed_and_marked(tmp_path):
    from frankeneval.core.outdir import MARKER, claim_for

    (tmp_path / "empty").mkdir()
    for name in ("new", "empty"):
        folder = claim_for("characterize", tmp_path / name)
        marker = json.loads((tmp_path / name / MARKER).read_text())
        assert marker["commands"] == ["characterize"] and "matrices.jsonl" in marker["entries"]
        assert Path(folder) == (tmp_path / name).absolute()
        assert claim_for("characterize", tmp_path / name).path == folder.path  # a rerun: ours


def test_allow_foreign_files_writes_beside_them_but_never_over_them(own_lineage, tmp_path, capsys):
    out = tmp_path / "shared"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["characterize", *lineage_args(own_lineage), *FAST, "--out", str(out)]) == 1
    assert "--allow-foreign-files" in one_line_error(capsys, "characterize")
    assert main(["characterize", *lineage_args(own_lineage), *FAST, "--out", str(out), "--allow-foreign-files"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "summary.json").is_file()
    (tmp_path / "shared2").mkdir()
    (tmp_path / "shared2" / "summary.json").write_text("my summary")
    assert main(["characterize", *lineage_args(own_lineage), *FAST, "--out", str(tmp_path / "shared2"),
                 "--allow-foreign-files"]) == 1
    assert "summary.json" in one_line_error(capsys, "characterize")
    assert (tmp_path / "shared2" / "summary.json").read_text() == "my summary"


def test_an_older_unmarked_result_is_adopted_only_when_its_contents_prove_it(tmp_path):
    from frankeneval.core.outdir import MARKER, claim_for
    from frankeneval.errors import OutputRefused

    old = tmp_path / "old"
    old.mkdir()
    (old / "run.json").write_text(json.dumps({"schema": "frankeneval.characterize/1"}))
    (old / "matrices.jsonl").write_text("")
    claim_for("characterize", old)
    assert (old / MARKER).is_file()
    store = tmp_path / "sweep"
    store.mkdir()
    (store / "units.jsonl").write_text(json.dumps({"_header": {"analysis": "vision_localization"}}) + "\n")
    claim_for("localize-vision", store)
    other = tmp_path / "sweep3"
    other.mkdir()
    (other / "units.jsonl").write_text(json.dumps({"_header": {"analysis": "attention_shift"}}) + "\n")
    with pytest.raises(OutputRefused, match="units.jsonl"):  # another analysis' store is not this command's result
        claim_for("localize-reasoning", other)
    assert not (other / MARKER).exists()


def test_output_folder_is_never_an_input_nor_a_link(tmp_path):
    from frankeneval.core.outdir import claim_for
    from frankeneval.errors import OutputRefused

    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.jsonl").write_text("{}\n")
    for out in (data, data / "sub", tmp_path):
        with pytest.raises(OutputRefused, match="input"):
            claim_for("localize-reasoning", out, inputs=[("data", data)])
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(OutputRefused, match="symbolic link"):
        claim_for("characterize", tmp_path / "link")
    assert list(real.iterdir()) == [] and list(data.iterdir()) == [data / "rows.jsonl"]


def test_a_marked_subfolder_counts_as_ours(tmp_path):
    from frankeneval.core.outdir import claim_for

    run = tmp_path / "run"
    claim_for("plot", run / "plots")  # plot's folder inside a run folder that has no marker yet
    claim_for("characterize", run)


def test_frankeneval_locks_are_created_exclusively_and_reused_when_stale(tmp_path):
    from frankeneval.core.locks import lock_path_of, output_lock

    target = tmp_path / "out"
    lock = lock_path_of(target)
    with output_lock(target):
        assert lock.read_text().startswith("frankeneval lock pid ")
    assert not lock.exists()
    for stale in ("frankeneval lock pid 999999999\n", "12345\n"):  # a killed holder's lock (this / an older version)
        lock.write_text(stale)
        with output_lock(target):
            assert str(os.getpid()) in lock.read_text()
        assert not lock.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_make_probes_rerun_keeps_and_rewrites_only_its_own_folders(tmp_path):
    from frankeneval.miniature.world import write_vision_probes

    out = tmp_path / "probes"
    first = write_vision_probes(out, tasks=("counting",), n_per_task=2, seed=0) / "counting"
    data = (first / "data.jsonl").read_bytes()
    write_vision_probes(out, tasks=("counting",), n_per_task=3, seed=0)  # ours: replaced as a whole
    assert (first / "data.jsonl").read_bytes() != data and len((first / "data.jsonl").read_text().splitlines()) == 3
    (first / "images" / "mine.jpg").write_bytes(b"mine")
    with pytest.raises(FrankenevalError, match="mine.jpg"):
        write_vision_probes(out, tasks=("counting",), n_per_task=4, seed=0)
    assert (first / "images" / "mine.jpg").read_bytes() == b"mine"


def test_demo_never_writes_into_a_folder_holding_a_users_files(tmp_path, capsys):
    """`frankeneval demo --out DIR` claims DIR like every other command: a user's file there stops it in one line
    before any stage runs, and nothing in DIR changes."""
    from frankeneval.cli import main

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    before = snapshot(out)
    assert main(["demo", "--out", str(out), "--lineage", "random", "--fast"]) == 1
    assert "notes.txt" in one_line_error(capsys, "demo")
    assert snapshot(out) == before
