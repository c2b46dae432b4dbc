"""Issue 17, "Data loss" and "Races and leftovers": frankeneval never deletes or overwrites what it did not write,
names from specs and recipes stay inside their folder, one writer per output, temp folders of killed runs are
removed, and a killed ``transfer`` takes its lmms-eval child with it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from frankeneval.errors import FrankenevalError
from frankeneval.transferability import splice
from frankeneval.transferability.mergespec import MergeSpec
from frankeneval.transferability.splice import PROVENANCE, materialize

SHARD = 300_000
REPO = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def own_lineage(tiny_lineage, tmp_path):
    """A private copy of the tiny lineage's IN and RL (these tests try to make frankeneval delete them)."""
    root = tmp_path / "models"
    for m in ("in", "rl"):
        shutil.copytree(tiny_lineage.paths[m], root / m)
    return root


def spec_for(root: Path, phrase: str = "IN early 1/3 layers + RL late 2/3 layers", **src) -> MergeSpec:
    sources = {"in": str(root / "in"), "rl": str(root / "rl"), **src}
    return MergeSpec.parse(phrase, 6, sources)


# -- data loss -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["in", "."])
def test_splice_out_equal_to_or_holding_an_input_is_refused_even_with_force(own_lineage, target):
    before = snapshot(own_lineage)
    out = own_lineage / target
    with pytest.raises(FrankenevalError, match="input"):
        materialize(spec_for(own_lineage), out, force=True, shard_bytes=SHARD, progress=False)
    assert snapshot(own_lineage) == before


def test_splice_input_that_is_itself_a_splice_is_never_replaced(own_lineage):
    first = materialize(spec_for(own_lineage), own_lineage / "s1", shard_bytes=SHARD, progress=False)
    before = snapshot(first)
    spec = spec_for(own_lineage, "RL early 1/3 layers + IN late 2/3 layers", **{"in": str(first)})
    for force in (False, True):
        with pytest.raises(FrankenevalError, match="input"):
            materialize(spec, first, force=force, shard_bytes=SHARD, progress=False)
    assert snapshot(first) == before


def test_splice_folder_with_user_files_is_not_replaced(own_lineage):
    out = materialize(spec_for(own_lineage), own_lineage.parent / "v", shard_bytes=SHARD, progress=False)
    (out / "my_notes.txt").write_text("keep me")
    other = spec_for(own_lineage, "RL early 1/3 layers + IN late 2/3 layers")
    for force in (False, True):
        with pytest.raises(FrankenevalError, match="my_notes.txt"):
            materialize(other, out, force=force, shard_bytes=SHARD, progress=False)
    assert (out / "my_notes.txt").read_text() == "keep me"
    # without the stray file the splice is frankeneval's own again, and is rewritten
    (out / "my_notes.txt").unlink()
    materialize(other, out, shard_bytes=SHARD, progress=False)
    assert json.loads((out / PROVENANCE).read_text())["spec_hash"] == other.spec_hash()


def test_staged_directory_never_replaces_a_foreign_folder(tmp_path):
    from frankeneval.core.results import staged_directory

    final = tmp_path / "member"
    final.mkdir()
    (final / "thesis.tex").write_text("years of work")
    with pytest.raises(FrankenevalError, match="thesis.tex"), staged_directory(final) as tmp:
        (tmp / "config.json").write_text("{}")
    assert (final / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["member"]


def test_names_from_recipes_and_specs_are_single_path_components(tiny_lineage, tmp_path):
    from frankeneval.errors import SpecError
    from frankeneval.transferability.recipes import Recipe
    from frankeneval.transferability.transfer import run_cells

    data = {"name": "evil", "models": {"in": str(tiny_lineage.in_), "rl": str(tiny_lineage.rl)},
            "num_hidden_layers": 6, "variants": {"../../../X": "IN early 1/3 layers + RL late 2/3 layers"}}
    with pytest.raises(SpecError, match=r"\.\./\.\./\.\./X"):
        Recipe.from_dict(data)
    victim = tmp_path / "X"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")

    def runner(job):
        raise AssertionError("must not run")

    run = tmp_path / "a" / "b" / "run"
    for label, task in (("../../../X", "t1"), ("in", "../../../../X"), ("in", "/abs")):
        models = {label: {"path": str(tiny_lineage.in_), "kind": "variant"}}
        with pytest.raises(FrankenevalError, match="single"):
            run_cells(run, models, [task], runner=runner, progress=lambda s: None)
    assert (victim / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]


def test_transfer_refuses_a_run_folder_it_did_not_write(tiny_lineage, tmp_path):
    from frankeneval.transferability.transfer import run_cells

    run = tmp_path / "home"
    (run / "cells" / "in" / "t1").mkdir(parents=True)
    (run / "cells" / "in" / "t1" / "data.csv").write_text("precious")
    models = {"in": {"path": str(tiny_lineage.in_), "kind": "in"}}
    with pytest.raises(FrankenevalError, match="not a frankeneval transfer run"):
        run_cells(run, models, ["t1"], runner=lambda job: None, progress=lambda s: None)
    assert (run / "cells" / "in" / "t1" / "data.csv").read_text() == "precious"


# -- races -----------------------------------------------------------------------------------------------
def test_two_splices_into_one_out_take_turns(own_lineage, monkeypatch):
    """The second writer waits for the first, then finds the splice done; their writes never overlap."""
    out = own_lineage.parent / "shared_out"
    spec = spec_for(own_lineage)
    real = splice._write_shard
    active, overlaps, writes = [0], [], []
    guard = threading.Lock()

    def slow(*a, **k):
        with guard:
            active[0] += 1
            overlaps.append(active[0])
            writes.append(1)
        time.sleep(0.05)
        try:
            return real(*a, **k)
        finally:
            with guard:
                active[0] -= 1

    monkeypatch.setattr(splice, "_write_shard", slow)
    plan = splice.plan_splice(spec)
    results, errors = [], []

    def go():
        try:
            results.append(materialize(spec, out, shard_bytes=SHARD, progress=False, plan=plan))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2
    assert max(overlaps) == 1  # never two writers at once
    n_shards = len(json.loads((out / PROVENANCE).read_text())["shards"])
    assert len(writes) == n_shards  # the second found the first's splice and skipped
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []


def test_two_transfers_into_one_run_folder_fail_clearly(tiny_lineage, tmp_path):
    from test_transfer import write_fake_lmms_output

    from frankeneval.transferability.transfer import run_cells

    models = {"in": {"path": str(tiny_lineage.in_), "kind": "in"}}
    run = tmp_path / "run"
    started, release = threading.Event(), threading.Event()
    second: list = []

    def blocking(job):
        started.set()
        assert release.wait(30)
        write_fake_lmms_output(job)

    def first():
        run_cells(run, models, ["t1"], runner=blocking, progress=lambda s: None)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert started.wait(30)
        try:
            run_cells(run, models, ["t1"], runner=write_fake_lmms_output, progress=lambda s: None)
            second.append("ran")
        except FrankenevalError as exc:
            second.append(str(exc))
    finally:
        release.set()
        t.join()
    assert second and second[0] != "ran" and "in use by another frankeneval" in second[0]


# -- leftovers -------------------------------------------------------------------------------------------
KILLED_SPLICE = """
import os, sys, time
from frankeneval.transferability import splice
from frankeneval.transferability.mergespec import MergeSpec
root = sys.argv[1]
spec = MergeSpec.parse("IN early 1/3 layers + RL late 2/3 layers", 6, {"in": root + "/in", "rl": root + "/rl"})
real = splice._copy_range
def stall(*a):
    real(*a)
    print("writing", flush=True)
    time.sleep(600)
splice._copy_range = stall
splice.materialize(spec, sys.argv[2], shard_bytes=300000, progress=False)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_kill_9_leftover_temp_folder_is_removed_by_the_next_run(own_lineage):
    out = own_lineage.parent / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SPLICE, str(own_lineage), str(out)],
                            stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.kill()
        proc.wait()
    hidden = [p.name for p in out.parent.iterdir() if p.name.startswith(".killed")]
    assert hidden  # the killed writer's temp folder
    materialize(spec_for(own_lineage), out, shard_bytes=SHARD, progress=False)
    assert sorted(p.name for p in out.parent.iterdir()) == ["killed", "models"]


def test_stale_temp_file_of_a_dead_writer_is_removed(tmp_path):
    from frankeneval.core.results import write_json_atomic

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".result.tmp-{dead.pid}-0badc0de.json"
    stale.write_text("{half")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    live = tmp_path / f".result.tmp-{os.getpid()}-0badc0de.json"  # a live writer's (ours): kept
    live.write_text("{in progress")
    write_json_atomic(tmp_path / "result.json", {"ok": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "result.json"]


KILLED_TRANSFER = """
import sys
from pathlib import Path
from frankeneval.transferability import cells, transfer
flag = sys.argv[2]
child = ("import os, sys, time, pathlib; pathlib.Path(sys.argv[1]).write_text(str(os.getpid())); "
         "time.sleep(60); pathlib.Path(sys.argv[1] + '.late').write_text('still writing')")
cells.lmms_eval_command = lambda job: [sys.executable, "-c", child, flag]
models = {"in": {"path": sys.argv[3], "kind": "in"}}
transfer.run_cells(sys.argv[1], models, ["t1"], runner=cells.lmms_eval_runner, progress=lambda s: None)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_killed_transfer_takes_its_lmms_eval_child_with_it(tiny_lineage, tmp_path):
    flag = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", KILLED_TRANSFER, str(tmp_path / "run"), str(flag),
                               str(tiny_lineage.in_)], env=_env())
    child = None
    try:
        for _ in range(600):
            if flag.is_file() and flag.read_text():
                break
            time.sleep(0.1)
        child = int(flag.read_text())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        for _ in range(50):
            if not _alive(child):
                break
            time.sleep(0.1)
        assert not _alive(child), "the lmms-eval child outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)
