"""Packaging: tasks/, model_wrappers/ and merges/ install inside the frankeneval namespace, never top level."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
         str(REPO_ROOT)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("frankeneval-*.whl")
    return zipfile.ZipFile(path)


@pytest.fixture(scope="module")
def wheel_names(wheel) -> list[str]:
    return wheel.namelist()


def test_no_top_level_tasks_module(wheel_names):
    top = {n.split("/")[0] for n in wheel_names}
    assert not top & {"tasks", "model_wrappers", "merges", "tests", "bench"}, top
    assert "frankeneval/tasks/__init__.py" in wheel_names
    assert "frankeneval/model_wrappers/__init__.py" in wheel_names
    assert "frankeneval/merges/__init__.py" in wheel_names


def test_every_module_of_the_package_is_shipped(wheel_names):
    """A sub-package missing from pyproject's explicit package list installs from a checkout but not from a wheel."""
    repo = sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "frankeneval").rglob("*.py"))
    missing = [m for m in repo if m not in wheel_names]
    assert not missing, missing


def test_task_yaml_and_merge_recipes_are_shipped(wheel_names):
    repo_yaml = sorted(p.relative_to(REPO_ROOT / "tasks").as_posix() for p in (REPO_ROOT / "tasks").rglob("*.yaml"))
    shipped = sorted(n[len("frankeneval/tasks/"):] for n in wheel_names
                     if n.startswith("frankeneval/tasks/") and n.endswith(".yaml"))
    assert shipped == repo_yaml
    repo_merges = sorted(p.name for p in (REPO_ROOT / "merges").glob("*.yaml"))
    assert sorted(n.rsplit("/", 1)[-1] for n in wheel_names
                  if n.startswith("frankeneval/merges/") and n.endswith(".yaml")) == repo_merges


def test_console_script_and_entry_point(wheel, wheel_names):
    (ep,) = [n for n in wheel_names if n.endswith("entry_points.txt")]
    text = wheel.read(ep).decode()
    assert "frankeneval = frankeneval.cli:main" in text
    assert "[lmms_eval.models]" in text and "franken_qwen = frankeneval.models:" in text


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "frankeneval", "--help"], capture_output=True, text=True, check=True,
                         cwd="/").stdout
    assert "inspect" in out


def test_the_smoke_set_names_existing_tests():
    """A renamed test would drop out of the newest-versions lane's smoke set without a word."""
    from conftest import SMOKE

    for node in SMOKE:
        file, name = node.split("::")
        assert f"def {name}(" in (REPO_ROOT / "tests" / file).read_text(), node


def test_the_lock_pins_every_dependency_at_its_lower_bound():
    """pyproject's lower bounds are the versions CI installs (constraints.txt), so they are tested."""
    import re

    import tomllib

    lock = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line)
        if m:
            lock[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for k, v in project["optional-dependencies"].items() if k != "vllm" for r in v]
    for req in reqs:
        m = re.match(r"^([A-Za-z0-9._-]+)>=([0-9.]+)", req)
        if not m:
            continue
        name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
        assert name in lock, f"{name} is not in constraints.txt"
        locked = tuple(int(x) for x in re.findall(r"\d+", lock[name])[:3])
        bound = tuple(int(x) for x in m.group(2).split("."))
        assert locked[: len(bound)] == bound, f"{name}: lower bound {m.group(2)} but constraints.txt tests {lock[name]}"
