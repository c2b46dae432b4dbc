"""bench/acceptance.py's resume across machines: the detached runner is visible before it unpacks the carried
state, and unpacking keeps the machine's own log lines."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import acceptance  # noqa: E402


def _state_parts(folder: Path, work: Path, log: bytes = b"carried log\n") -> None:
    """One state.tar.xz.00 part as `pack` writes it (the state and the carried log)."""
    folder.mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in ((acceptance.STATE, json.dumps({"settings": {"work": str(work)}}).encode()),
                           ("acceptance.out", log)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (folder / "state.tar.xz.00").write_bytes(buf.getvalue())


def test_unpacking_keeps_this_machines_log(tmp_path):
    work, parts = tmp_path / "work", tmp_path / "parts"
    work.mkdir()
    _state_parts(parts, work)
    (work / "acceptance.out").write_text("=== start (this machine)\n")
    acceptance.unpack_into(work, [parts])
    assert (work / "acceptance.out").read_text() == "carried log\n=== start (this machine)\n"


class _Unpacking(Exception):
    pass


def test_runner_is_visible_before_it_unpacks(tmp_path, monkeypatch):
    """`start` then `status --wait` at once: status must find the runner while it still unpacks a large state
    (it found none, returned, and the device call ended)."""
    work, parts = tmp_path / "work", tmp_path / "parts"
    _state_parts(parts, work)
    seen = {}

    def unpack(w, sources):
        seen["runner"] = acceptance.runner_alive(w)
        raise _Unpacking

    monkeypatch.setattr(acceptance, "unpack_into", unpack)
    monkeypatch.setattr(acceptance, "runner_alive", lambda w: _alive(w))
    with pytest.raises(_Unpacking):
        acceptance.main(["run", "--work", str(work), "--resume-from", str(parts), "--small", "--device", "cpu"])
    assert seen["runner"] == os.getpid()


def _alive(work: Path) -> int | None:
    """runner_alive without its rule that a process never sees itself as the runner (here the test is the runner)."""
    try:
        return int(json.loads((work / "runner.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def test_an_exported_trees_commit_wins_over_an_enclosing_checkout(tmp_path):
    """On the device the benches run from `git archive HEAD` + COMMIT inside a stale checkout: its .git is not
    the code measured (bench_speed recorded b2fe4bf for 0c42a82 on 2026-12-07)."""
    import shutil
    import subprocess

    outer = tmp_path / "outer"
    (outer / "export" / "bench").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(outer)], check=True)
    subprocess.run(["git", "-C", str(outer), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "stale"], check=True)
    shutil.copy(Path(acceptance.__file__).with_name("provenance.py"), outer / "export" / "bench")
    sys.path.insert(0, str(outer / "export" / "bench"))
    try:
        import importlib

        sys.modules.pop("provenance", None)
        exported = importlib.import_module("provenance")
        stale = exported.code_commit()["git_commit"]
        assert stale and len(stale) == 40  # without COMMIT: the enclosing checkout's HEAD
        (outer / "export" / "COMMIT").write_text("0c42a823393ef2562ff3e11f7260e47b0c1aac90\n")
        assert exported.code_commit() == {"git_commit": "0c42a823393ef2562ff3e11f7260e47b0c1aac90", "git_dirty": False}
    finally:
        sys.path.remove(str(outer / "export" / "bench"))
        sys.modules.pop("provenance", None)


def test_every_listed_archive_comes_back_from_history_with_its_sha256(tmp_path):
    """bench/runs/issue28/ARCHIVES.tsv names the commit and SHA-256 of each bulk archive that left the tree; each must
    come back byte-identical (skipped in a clone without that history)."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    rows = [line.split("\t") for line in (repo / "bench/runs/issue28/ARCHIVES.tsv").read_text().splitlines()
            if line and not line.startswith("#")]
    assert rows and all(len(r) == 4 and len(r[2]) == 64 for r in rows)
    for name, commit, _, _ in rows:
        if subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{commit}:bench/runs/issue28/{name}"],
                          capture_output=True).returncode != 0:
            pytest.skip(f"{name}: commit {commit} is not in this clone's history")
    out = tmp_path / "arch"
    subprocess.run(["bash", str(repo / "bench/runs/issue28/restore_archives.sh"), str(out)], check=True, cwd=repo,
                   capture_output=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(r[0] for r in rows)
    (out / rows[0][0]).write_bytes(b"a user's file")  # never overwritten
    again = subprocess.run(["bash", str(repo / "bench/runs/issue28/restore_archives.sh"), str(out)], cwd=repo,
                           capture_output=True, text=True)
    assert again.returncode != 0 and "not overwritten" in again.stderr
    assert (out / rows[0][0]).read_bytes() == b"a user's file"


def test_the_tables_head_counts_sessions_that_did_not_record_a_field():
    """A session whose machine lacked lmms-eval (or whose commit was unknown) is counted, never printed as 'None'."""
    sessions = [{"gpus": ["H100"], "git_commit": "0c42a823393e", "torch": "2.11", "transformers": "5.25.0",
                 "lmms_eval": "0.7.3"},
                {"gpus": ["H100"], "git_commit": None, "torch": "2.11", "transformers": "5.25.0", "lmms_eval": None},
                {"gpus": ["H100"], "git_commit": "9f8abf41939f", "git_dirty": True, "torch": "2.11",
                 "transformers": "5.25.0", "lmms_eval": None}]
    head = acceptance.table({"sessions": sessions, "stages": {}}).splitlines()[0]
    assert "None" not in head
    assert "commit 0c42a82, 9f8abf4+dirty, not recorded in 1 of 3 sessions;" in head
    assert "lmms-eval 0.7.3, not recorded in 2 of 3 sessions" in head
