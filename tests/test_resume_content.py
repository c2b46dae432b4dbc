"""Issue 29, "Stale or broken results": a resume reuses results only when every input's content is equal, cached
splices and finished cells are checked for completeness before reuse, and --evict-variants never deletes a splice
another live run uses. One test (or a few) per example of the issue; all on the tiny lineage, CPU only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from frankeneval.core.runstore import RunStoreMismatch
from frankeneval.errors import FrankenevalError
from frankeneval.transferability.cells import CellFailed, CellJob
from frankeneval.transferability.transfer import run_cells, run_transfer

TOKENIZER = ("tokenizer.json", "tokenizer_config.json")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """A private frankeneval cache dir per test (fingerprints, splices)."""
    monkeypatch.setenv("FRANKENEVAL_CACHE", str(tmp_path / "fe-cache"))


@pytest.fixture()
def recipe(tiny_lineage):
    from frankeneval.transferability.recipes import tiny_recipe

    return tiny_recipe(tiny_lineage)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=shutil.copy2)
    return dst


def _replace_weights_in_place(ckpt: Path, other: Path) -> None:
    """Overwrite ``ckpt``'s weight files (same names, same inodes) with those of ``other``."""
    for f in [*other.glob("*.safetensors"), other / "model.safetensors.index.json"]:
        with open(f, "rb") as src, open(ckpt / f.name, "r+b") as dst:  # in place: the inode stays
            dst.truncate(0)
            shutil.copyfileobj(src, dst)


def _write_cell(job: CellJob, score: float = 0.5) -> None:
    """What lmms-eval writes for one cell (results + samples)."""
    out = job.output_dir / "model"
    out.mkdir(parents=True, exist_ok=True)
    task = job.cell.task
    (out / f"20260101_000000_samples_{task}.jsonl").write_text(
        json.dumps({"doc_id": 0, "rule_acc": {"id": "0", "score": score}}) + "\n")
    (out / "20260101_000000_results.json").write_text(
        json.dumps({"results": {task: {"alias": task, "rule_acc,none": score}}}))


class Runner:
    """A fake lmms-eval: records the cells it ran and checks that their model can be loaded (config + tokenizer)."""

    def __init__(self):
        self.calls: list[str] = []
        self.pretrained: dict[str, str] = {}

    def __call__(self, job: CellJob) -> None:
        model = Path(job.pretrained)
        if not (model / "config.json").is_file() or not (model / "tokenizer.json").is_file():
            raise CellFailed(f"{model}: cannot load it (no config.json / tokenizer)")
        self.calls.append(job.cell.key)
        self.pretrained[job.cell.key] = job.pretrained
        _write_cell(job)


def _kwargs(tmp_path: Path, **extra) -> dict:
    return dict(tasks=["t1"], splice_cache=tmp_path / "splices", data_dir=tmp_path, progress=lambda s: None, **extra)


# -- 1. transfer reruns into the same --out with a different --in --------------------------------------------------
@pytest.mark.parametrize("evict", [False, True])
def test_transfer_rerun_with_another_in_reruns_the_cells(tmp_path, recipe, tiny_lineage, evict):
    variant = next(iter(recipe.variants))
    run = tmp_path / "run"
    kw = _kwargs(tmp_path, variants=[variant], evict_variants=evict)
    first = Runner()
    run_transfer(run, recipe, runner=first, **kw)
    assert sorted(first.calls) == sorted([f"{m}::t1" for m in ("base", "in", "rl", variant)])

    lines: list[str] = []
    again = Runner()
    result = run_transfer(run, recipe, runner=again, models={"in": str(tiny_lineage.base)},
                          **{**kw, "progress": lines.append})
    # IN and the variant spliced from it are other content now: their cells run again; Base and RL are kept
    assert sorted(again.calls) == sorted(["in::t1", f"{variant}::t1"])
    assert sorted(c.key for c in result.skipped) == ["base::t1", "rl::t1"]
    assert any("in x t1 is not finished: made with a different in model (weights changed" in s for s in lines)
    manifest = json.loads((run / "transfer.json").read_text())
    for label in ("in", variant):
        stamp = json.loads(next((run / "cells" / label / "t1").glob("frankeneval_cell.json")).read_text())
        assert stamp["fingerprint"] == manifest["models"][label]["fingerprint"]
    assert manifest["models"][variant]["fingerprint"]["splice"]  # the splice's build hash (spec + sources)

    third = Runner()
    run_transfer(run, recipe, runner=third, models={"in": str(tiny_lineage.base)}, **kw)
    assert third.calls == []  # now every cell matches what transfer.json names


# -- 2. a localize resume keys on content, not on the model's path or the dataset's name ---------------------------
def _generator(path: Path):
    from frankeneval.engine.generation import Generator

    return Generator.load(str(path), dtype="float32", device="cpu")


def _probes(root: Path):
    from frankeneval.localization.vision import load_probe_sets
    from frankeneval.miniature.world import write_vision_probes

    write_vision_probes(root, tasks=("counting",), n_per_task=2, seed=0)
    return load_probe_sets(("counting",), data=root, samples=1, seed=123)


def test_localize_vision_refuses_weights_replaced_in_place(tiny_lineage, tmp_path):
    from frankeneval.localization.vision import run_vision_sweep

    model = _copy(tiny_lineage.rl, tmp_path / "rl")
    gen = _generator(model)
    pairs = _probes(tmp_path / "probes")
    out = tmp_path / "out"
    run_vision_sweep(gen, pairs, [1], out, model_name=str(model), max_new_tokens=2, progress=False)
    run_vision_sweep(gen, pairs, [1], out, model_name=str(model), max_new_tokens=2, progress=False)  # resumes
    _replace_weights_in_place(model, tiny_lineage.in_)
    with pytest.raises(RunStoreMismatch, match=r"units\.jsonl was made with a different model \(weights changed: "
                                               r"fingerprint [0-9a-f]{12} -> [0-9a-f]{12}\); use another output"):
        run_vision_sweep(gen, pairs, [1], out, model_name=str(model), max_new_tokens=2, progress=False)


def test_localize_vision_refuses_an_image_edited_in_place(tiny_lineage, tmp_path):
    from PIL import Image

    from frankeneval.localization.vision import run_vision_sweep

    gen = _generator(tiny_lineage.rl)
    pairs = _probes(tmp_path / "probes")
    out = tmp_path / "out"
    run_vision_sweep(gen, pairs, [1], out, model_name="rl", max_new_tokens=2, progress=False)
    pair = pairs["counting"][0]
    Image.new("RGB", (112, 112), (255, 0, 0)).save(pair.source_image)  # same name, other picture
    with pytest.raises(RunStoreMismatch, match=r"a different probe data \(content changed"):
        run_vision_sweep(gen, pairs, [1], out, model_name="rl", max_new_tokens=2, progress=False)


def test_localize_reasoning_refuses_a_data_file_edited_in_place(tiny_lineage, tmp_path):
    from frankeneval.localization.reasoning import run_reasoning_sweep, select_questions

    data = tmp_path / "gsm8k.jsonl"
    rows = [{"question": f"What is {i} + 1?", "answer": f"so #### {i + 1}"} for i in range(3)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    gen = _generator(tiny_lineage.rl)
    out = tmp_path / "out"

    def sweep():
        questions, _ = select_questions("gsm8k", data=data, samples=0, progress=False)
        return run_reasoning_sweep(gen, "gsm8k", questions, [1], out, model_name="rl", system_prompt="none",
                                   max_new_tokens=2, progress=False)

    sweep()
    sweep()  # same content: resumes
    rows[1]["question"] = "What is 40 + 2?"  # the same file, edited in place (same dataset name, same path)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RunStoreMismatch, match=r"was made with a different gsm8k data \(content changed"):
        sweep()


def test_attention_shift_refuses_a_member_replaced_in_place(tiny_lineage, tmp_path):
    from frankeneval.engine.generation import Generator
    from frankeneval.localization.attention import attention_prompts, run_attention_shift

    model = _copy(tiny_lineage.rl, tmp_path / "rl")
    prompts = attention_prompts(_probes(tmp_path / "probes"))

    def load(path):
        return Generator.load(path, dtype="float32", device="cpu")

    run_attention_shift({"rl": str(model)}, prompts, tmp_path / "out", load=load, max_new_tokens=2, progress=False)
    _replace_weights_in_place(model, tiny_lineage.in_)
    with pytest.raises(RunStoreMismatch, match=r"a different rl model \(weights changed"):
        run_attention_shift({"rl": str(model)}, prompts, tmp_path / "out", load=load, max_new_tokens=2,
                            progress=False)


def test_characterize_says_which_model_changed(tiny_lineage, tmp_path):
    from frankeneval.characterization.characterize import characterize
    from frankeneval.characterization.measure import CharacterizeSettings
    from frankeneval.errors import SpecError

    rl = _copy(tiny_lineage.rl, tmp_path / "rl")
    settings = CharacterizeSettings(spectra=False, sections=("llm",))
    out = tmp_path / "run"
    characterize(tiny_lineage.base, tiny_lineage.in_, rl, out, settings=settings, device="cpu", progress=False)
    _replace_weights_in_place(rl, tiny_lineage.base)
    with pytest.raises(SpecError, match=r"run\.json was made with a different rl model \(weights changed"):
        characterize(tiny_lineage.base, tiny_lineage.in_, rl, out, settings=settings, device="cpu", progress=False)


# -- 3. a splice without config.json and tokenizer is damaged, not "already holds this splice" ---------------------
def _damage(splice: Path) -> None:
    for name in ("config.json", *TOKENIZER):
        (splice / name).unlink()


def test_splice_without_config_and_tokenizer_is_rebuilt_and_check_reports_it(recipe, tmp_path, capsys):
    from frankeneval.transferability.splice import materialize, verify

    spec = recipe.variant(next(iter(recipe.variants)))
    out = materialize(spec, tmp_path / "splice", progress=False)
    _damage(out)
    report = verify(out)
    assert not report.ok and "config.json is missing" in report.summary() and "no tokenizer" in report.summary()
    capsys.readouterr()
    materialize(spec, out, progress=True)
    assert "already holds this splice" not in capsys.readouterr().err
    assert (out / "config.json").is_file() and all((out / t).is_file() for t in TOKENIZER)
    assert verify(out).ok


def test_splice_with_an_unloadable_shard_header_of_the_right_size_is_rebuilt(recipe, tmp_path):
    from frankeneval.transferability.splice import materialize, splice_damage, verify

    spec = recipe.variant(next(iter(recipe.variants)))
    out = materialize(spec, tmp_path / "splice", progress=False)
    shard = sorted(out.glob("*.safetensors"))[0]
    with open(shard, "r+b") as f:  # same size, but the header length points past the end of the file
        f.write((1 << 40).to_bytes(8, "little"))
    assert any(shard.name in d for d in splice_damage(out)) and not verify(out).ok
    materialize(spec, out, progress=False)
    assert not splice_damage(out) and verify(out).ok


def test_damaged_splice_in_the_cache_is_rebuilt_before_transfer_uses_it(recipe, tmp_path):
    from frankeneval.transferability.splice import materialize_cached

    variant = next(iter(recipe.variants))
    cached = materialize_cached(recipe.variant(variant), tmp_path / "splices", progress=False)
    _damage(cached)
    runner = Runner()
    run_transfer(tmp_path / "run", recipe, runner=runner, variants=[variant], include_reference=False,
                 **_kwargs(tmp_path))
    assert runner.calls == [f"{variant}::t1"] and (cached / "config.json").is_file()


# -- 4. a corrupt *_results.json in a finished cell: not finished, for transfer and report alike -----------------
def test_corrupt_results_file_is_not_a_finished_cell(tmp_path, tiny_lineage):
    from frankeneval.reports.leaderboard.build import build_leaderboard

    models = {"in": {"path": str(tiny_lineage.in_), "kind": "in"}, "rl": {"path": str(tiny_lineage.rl), "kind": "rl"}}
    run = tmp_path / "run"
    run_cells(run, models, ["t1"], runner=Runner(), data_dir=tmp_path, progress=lambda s: None)
    res = next((run / "cells" / "in" / "t1").rglob("*_results.json"))
    res.write_text('{"results": {"t1": ')  # torn
    board = build_leaderboard(run)
    why = board.missing["in::t1"]
    assert why.startswith("results unreadable") and board.get("in", "t1", "rule_acc") is None

    lines: list[str] = []
    again = Runner()
    result = run_cells(run, models, ["t1"], runner=again, data_dir=tmp_path, progress=lines.append)
    assert again.calls == ["in::t1"] and [c.key for c in result.skipped] == ["rl::t1"]
    assert any(f"in x t1 is not finished: {why}" in s for s in lines)  # the same words as the report
    assert not build_leaderboard(run).missing


# -- 5. --evict-variants never deletes a splice another live run uses -------------------------------------------
def test_evict_keeps_a_splice_while_another_lease_is_live(recipe, tmp_path):
    from frankeneval.transferability.splice import evict_splice, lease_splice, live_leases, materialize_owned

    cache = tmp_path / "splices"
    path, stamp = materialize_owned(recipe.variant(next(iter(recipe.variants))), cache)
    assert stamp is not None
    mine, theirs = lease_splice(path), lease_splice(path)  # this run's lease, and another run's
    assert live_leases(path) == [os.getpid()]
    mine.release()
    why = evict_splice(path, stamp, [])
    assert why is not None and "another run is using it" in why and str(os.getpid()) in why and path.is_dir()
    theirs.release()
    assert evict_splice(path, stamp, []) is None and not path.exists()
    assert not list(cache.glob(".*.leases"))


def test_lease_of_a_dead_process_does_not_keep_a_splice(recipe, tmp_path):
    from frankeneval.transferability.splice import evict_splice, lease_splice, live_leases, materialize_owned

    path, stamp = materialize_owned(recipe.variant(next(iter(recipe.variants))), tmp_path / "splices")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lease = lease_splice(path)
    stale = lease.file.with_name(f"{dead.stdout.strip()}-00000000.lease")
    stale.write_text(json.dumps({"pid": int(dead.stdout), "start": None}))
    lease.release()
    assert live_leases(path) == []
    assert evict_splice(path, stamp, []) is None and not path.exists()


def test_evict_variants_keeps_the_splice_another_run_is_using(recipe, tmp_path):
    from frankeneval.transferability.splice import lease_splice

    variant = next(iter(recipe.variants))
    other: list = []

    class Sharing(Runner):
        def __call__(self, job: CellJob) -> None:
            if job.cell.model == variant and not other:  # another run starts using the same cached splice
                other.append(lease_splice(job.pretrained))
            super().__call__(job)

    run = tmp_path / "run"
    kw = _kwargs(tmp_path, variants=[variant], evict_variants=True)
    first = Sharing()
    run_transfer(run, recipe, runner=first, **kw)
    splice = Path(first.pretrained[f"{variant}::t1"])
    assert splice.is_dir()  # not deleted under the other run
    entry = json.loads((run / "transfer.json").read_text())["models"][variant]
    assert entry["evicted"] is False and "another run is using it" in entry["kept"] and entry["splice_owner"]

    other.pop().release()  # the other run is done: this folder's next run deletes it
    run_transfer(run, recipe, runner=Runner(), **kw)
    assert not splice.exists()
    assert json.loads((run / "transfer.json").read_text())["models"][variant]["evicted"] is True


def test_a_transfer_run_holds_a_lease_on_its_splices_while_its_cells_run(recipe, tmp_path):
    from frankeneval.transferability.splice import live_leases

    variant = next(iter(recipe.variants))
    seen: list[list[int]] = []

    class Watching(Runner):
        def __call__(self, job: CellJob) -> None:
            seen.append(live_leases(job.pretrained))
            super().__call__(job)

    runner = Watching()
    run_transfer(tmp_path / "run", recipe, runner=runner, variants=[variant], include_reference=False,
                 **_kwargs(tmp_path))
    assert seen == [[os.getpid()]]
    assert live_leases(runner.pretrained[f"{variant}::t1"]) == []  # released when the run ended


def test_cell_of_a_run_made_before_cells_recorded_their_model_is_rerun(tmp_path, tiny_lineage):
    models = {"in": {"path": str(tiny_lineage.in_), "kind": "in"}}
    run = tmp_path / "run"
    run_cells(run, models, ["t1"], runner=Runner(), data_dir=tmp_path, progress=lambda s: None)
    (run / "cells" / "in" / "t1" / "frankeneval_cell.json").unlink()
    again = Runner()
    run_cells(run, models, ["t1"], runner=again, data_dir=tmp_path, progress=lambda s: None)
    assert again.calls == ["in::t1"]


def test_failed_run_does_not_leave_leases(recipe, tmp_path):
    from frankeneval.transferability.splice import live_leases

    variant = next(iter(recipe.variants))
    paths: list[str] = []

    def failing(job: CellJob) -> None:
        paths.append(job.pretrained)
        raise CellFailed("boom")

    with pytest.raises(FrankenevalError, match="cells failed"):
        run_transfer(tmp_path / "run", recipe, runner=failing, variants=[variant], include_reference=False,
                     **_kwargs(tmp_path))
    assert paths and live_leases(paths[0]) == []


# -- 6. transfer's benchmark data under --data-dir is part of what a resume checks --------------------------------
def test_transfer_refuses_to_resume_on_benchmark_data_edited_in_place(tmp_path, tiny_lineage):
    from frankeneval.core.runstore import RunStoreMismatch

    data = tmp_path / "data"
    (data / "gsm8k").mkdir(parents=True)
    rows = data / "gsm8k" / "test.jsonl"
    rows.write_text(json.dumps({"question": "1 + 1?", "answer": "#### 2"}) + "\n")
    models = {"in": {"path": str(tiny_lineage.in_), "kind": "in"}}
    run = tmp_path / "run"
    run_cells(run, models, ["t1"], runner=Runner(), data_dir=data, progress=lambda s: None)
    same = Runner()
    run_cells(run, models, ["t1"], runner=same, data_dir=data, progress=lambda s: None)
    assert same.calls == []  # unchanged data: the finished cell is reused
    rows.write_text(json.dumps({"question": "1 + 1?", "answer": "#### 3"}) + "\n")  # the same path, edited
    with pytest.raises(RunStoreMismatch) as info:
        run_cells(run, models, ["t1"], runner=Runner(), data_dir=data, progress=lambda s: None)
    assert "gsm8k data" in str(info.value) and "\n" not in str(info.value)
