"""Full-scale acceptance run (issue 28): every analysis whole, start to finish, on a 7B-shaped lineage and the full
released data, through the user's commands; resumable across calls and across machines.

    python bench/acceptance.py stage-data --data ../shared/data --to .devdata      # once, on the CPU machine
    bash bench/full_size_device.sh --acceptance --work /tmp/accept --data .devdata --resume-from .accept
                                   # GPU machine: install the carried wheels, then `start` (detached) below
    python bench/acceptance.py start  --work W --data DATA [--resume-from DIR]   # `run` in the background (setsid)
    python bench/acceptance.py status --work W [--wait 540]                     # poll (returns when done or
                                                                                # after 540 s)
    python bench/acceptance.py pack   --work W --out "$OUT" [--stop] [--lean]   # small outputs -> DIR (<= 8 files)
    python bench/acceptance.py unpack --work W DIR... [--results]               # what --resume-from does (+ the bulk)
    python bench/acceptance.py table  --work W                                  # the markdown table (BENCHMARKS.md)
    python bench/acceptance.py run    --work W --data DATA --small              # CPU plumbing check (tiny lineage)
    python bench/acceptance.py run    --work W --stages report --device cpu     # the report where all samples are

Stages, in order, each the command a user types (run in a subprocess, timed, peak GPU memory over all GPUs and peak
host RSS of its process tree sampled every 0.2 s by full_size.Sampler):

lineage      frankeneval demo-lineage --preset qwen2.5-vl-7b (random bf16 Base / IN / RL, 16.6 GB each; seeded per
             tensor, rebuilt on every fresh machine and checked against the SHA-256 of the first build)
data         the data copied into WORK/data (real files: unit keys hold resolved image paths) + synthetic MathVista
             images (full_size.synthetic_mathvista: the hub is unreachable), every probe image decoded
characterize frankeneval characterize (energy + spectra of every matrix)
vision       frankeneval localize-vision: all 4 x 100 probe pairs x every LLM layer (--skip-broken when the command
             has it: the released recognition_000058_t.jpg is truncated)
attention    frankeneval attention-shift: Base, IN, RL on all 400 pairs' target images
gsm8k        frankeneval localize-reasoning --dataset gsm8k --samples 0 (1,319) x (every layer + unablated), 256 new
             tokens, --ignore-eos
math500      the same on MATH-500 (500 questions)
transfer     frankeneval transfer --recipe openmmreasoner --splits both (Base, IN, RL + 6 variants x v1 + v2 = 54
             cells), the paper's 100 items a task (seed 123), --max-new-tokens 512, --evict-variants
report       frankeneval report, then the rendered leaderboard checked cell by cell

Each stage is checked against its data: the expected units are counted from the data with frankeneval's own key
functions and compared with the output's finished units; a stage is complete only when every unit is there.
A rerun skips complete stages and resumes the others through the commands' own resume. Across machines: `pack`
writes the small outputs (never weights) as state.tar.xz.NN parts (carry them: `--resume-from DIR` unpacks them on
a fresh machine, which then rebuilds the identical lineage and resumes) and the bulky outputs of stages finished
since the last pack as results-sNN.tar.xz.NN (keep them; they are not needed to resume). A stage runs only with what
it reads (NEEDS): lineage and data are set up only for pending stages that read them, and the carried data folder
needs only their items (`stage-data --items`). A transfer too big to carry whole: `pack --lean` keeps the finished
cells' samples in the results archives (resume needs only their results files; their counts stay in the state),
and the report is then built where every archive is unpacked (`unpack --results`, `run --stages report`). Writes
WORK/acceptance.json (per stage: status, attempts with wall time and peaks, expected vs present units; the machine
of every session) and WORK/acceptance.md (the table). The weights are random: every number is about time, memory,
plumbing and completeness, never accuracy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_size import Sampler, auto_batch_sizes, synthetic_mathvista, variants
from provenance import code_commit

REPO = Path(__file__).resolve().parent.parent
STAGES = ("lineage", "data", "characterize", "vision", "attention", "gsm8k", "math500", "transfer", "report")
SETUP = ("lineage", "data")  # run in every session (a fresh machine has neither)
OUT_DIRS = {"characterize": "characterize", "vision": "vision", "attention": "attention", "gsm8k": "gsm8k",
            "math500": "math500", "transfer": "transfer"}
DEPENDENTS = {"transfer": ("report",)}  # the report reads every transfer sample: keep them carried until it is done
BULK_BYTES = 1 << 20  # files of a settled stage bigger than this go to the results archive, not the carried state
DATA_ITEMS = {"gsm8k": "gsm8k/test.jsonl", "math500": "math500/test.jsonl", "mathvista": "mathvista/testmini.jsonl",
              "vision_probes": "vision_probes"}
# what each stage reads: a later machine needs (and the carried data folder holds) only what its pending stages read
NEEDS = {"characterize": ("lineage",), "vision": ("lineage", "vision_probes"),
         "attention": ("lineage", "vision_probes"), "gsm8k": ("lineage", "gsm8k"), "math500": ("lineage", "math500"),
         "transfer": ("lineage", "mathvista", "math500"), "report": ()}
STATE = "acceptance.json"
HEARTBEAT_S = 15
SMALL = {"preset": "tiny", "pairs": 2, "questions": 2, "sample_size": 2, "vision_tokens": 8, "attention_tokens": 8,
         "reasoning_tokens": 8, "transfer_tokens": 8}
WHOLE = {"preset": "qwen2.5-vl-7b", "pairs": None, "questions": 0, "sample_size": 100, "vision_tokens": None,
         "attention_tokens": None, "reasoning_tokens": 256, "transfer_tokens": 512}


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_state(work: Path) -> dict:
    path = work / STATE
    return json.loads(path.read_text()) if path.is_file() else {}


def save_state(work: Path, state: dict) -> None:
    state["updated"] = now()
    tmp = work / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1, default=str))
    os.replace(tmp, work / STATE)
    (work / "acceptance.md").write_text(table(state) + "\n")


# -- the machine and the runner -------------------------------------------------------------------------------------
def machine_info(work: Path) -> dict:
    from importlib import metadata

    import torch

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    total_mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"date": now(), "gpus": [torch.cuda.get_device_name(i) for i in range(n)],
            "gpu_memory_gib": [round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1) for i in range(n)],
            "cpus": os.cpu_count(), "host_memory_gib": round(total_mem / 2**30), "torch": torch.__version__,
            "transformers": version("transformers"), "lmms_eval": version("lmms_eval") or version("lmms-eval"),
            "frankeneval": version("frankeneval"), "python": sys.version.split()[0],
            **code_commit(),
            "disk_free_gb": round(shutil.disk_usage(work).free / 1e9, 1)}


def runner_alive(work: Path) -> int | None:
    """The pid of a live `run` of this work folder, or None."""
    try:
        pid = int(json.loads((work / "runner.json").read_text())["pid"])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError, KeyError):
        return None
    return pid if "acceptance.py" in cmdline and pid != os.getpid() else None


def close_open_attempts(state: dict, why: str) -> None:
    """Attempts left 'running' by a runner that is gone: interrupted (wall time = the last heartbeat's)."""
    for s in state.get("stages", {}).values():
        for a in s.get("attempts", []):
            if a.get("end") == "running":
                a["end"] = why
        if s.get("status") == "running":
            s["status"] = "incomplete"


# -- one attempt of one stage ---------------------------------------------------------------------------------------
class Interrupted(Exception):
    pass


def _on_term(signum, frame):  # pack --stop: the attempt is recorded as interrupted, then the runner exits
    raise Interrupted(signal.Signals(signum).name)


def attempt(work: Path, state: dict, name: str, cmd: list[str], env: dict) -> dict:
    """Run ``cmd`` as one attempt of stage ``name``: its log, wall time, rc and peaks, saved every HEARTBEAT_S s."""
    stage = state["stages"][name]
    n = len(stage.setdefault("attempts", [])) + 1
    log = work / "logs" / f"{name}.{n:02d}.log"
    rec = {"n": n, "session": state["session"], "started": now(), "end": "running", "wall_s": 0.0, "rc": None,
           "peak_gpu_mib": 0, "peak_host_gb": 0.0, "log": str(log.relative_to(work)), "command": " ".join(cmd),
           "present_before": stage.get("present")}
    stage["attempts"].append(rec)
    stage["status"] = "running"
    save_state(work, state)
    print(f"[acceptance] {name} attempt {n}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **env})
        sampler = Sampler(proc.pid)

        def beat() -> None:
            rec.update(wall_s=round(time.perf_counter() - t0, 1), peak_gpu_mib=round(sampler.gpu_peak_mib),
                       peak_host_gb=round(sampler.host_peak_gb, 2))

        try:
            while True:
                try:
                    rec["rc"] = proc.wait(timeout=HEARTBEAT_S)
                    break
                except subprocess.TimeoutExpired:
                    beat()
                    save_state(work, state)
            rec["end"] = "finished" if rec["rc"] == 0 else "failed"
        except (Interrupted, KeyboardInterrupt) as exc:
            rec["end"] = f"interrupted ({exc or 'SIGINT'})"
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        finally:
            sampler.stop()
            beat()
            save_state(work, state)
    print(f"[acceptance] {name} attempt {n}: rc={rec['rc']} {rec['wall_s']} s, GPU {rec['peak_gpu_mib']} MiB, "
          f"host {rec['peak_host_gb']} GB", flush=True)
    if rec["rc"]:
        print(log.read_text(errors="replace")[-3000:], flush=True)
    return rec


# -- the checks: expected units from the data, present units from the outputs -------------------------------------
def n_llm_layers(rl: Path) -> int:
    cfg = json.loads((rl / "config.json").read_text())
    return int(cfg.get("num_hidden_layers") or cfg["text_config"]["num_hidden_layers"])


def count_lines(path: Path) -> int:
    """Non-empty lines of a file (0 when there is none)."""
    if not path.is_file():
        return 0
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def finished_keys(path: Path, required: tuple[str, ...]) -> set[str]:
    from frankeneval.core.runstore import read_records

    return set(read_records(path, required)[1]) if path.is_file() else set()


def image_broken(path: Path) -> str | None:
    """Why an image cannot be decoded (every pixel; truncation refused), or None."""
    from PIL import Image, ImageFile

    old, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with Image.open(path) as im:
            im.load()
        return None
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a broken file
        return f"{type(exc).__name__}: {exc}"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def probe_selection(probes: Path, samples: int | None, broken: dict) -> tuple[dict, list[str]]:
    """(the pairs each probe command runs, per task, the selected ids left out as broken): the command's selection
    (select_pairs, then selected pairs with a broken image left out, not replaced)."""
    from frankeneval.evaluation.probes import PROBE_TASKS, load_probe_pairs
    from frankeneval.localization.vision import select_pairs

    good, left_out = {}, []
    for task in PROBE_TASKS:
        chosen = select_pairs(load_probe_pairs(probes, task, check_images=False), samples)
        bad = {p.id for p in chosen if str(p.target_image) in broken or str(p.source_image) in broken}
        good[task] = [p for p in chosen if p.id not in bad]
        left_out += [f"{task}/{i}" for i in bad]
    return good, sorted(left_out)


def skipped_ids(results: dict) -> list[str]:
    return sorted(str(s.get("id")) for s in results.get("skipped") or [])


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def check_stage(name: str, ctx: dict) -> dict:
    """{"expected", "present", "complete", "what", ...} of stage ``name`` from its outputs."""
    work, cfg = ctx["work"], ctx["cfg"]
    out = work / OUT_DIRS.get(name, name)
    broken = ctx["state"]["stages"].get("data", {}).get("broken", {})
    if name == "characterize":
        summary = read_json(out / "summary.json")
        lines = count_lines(out / "matrices.jsonl")
        planned = summary.get("n_planned")
        return {"expected": planned, "present": summary.get("n_matrices", lines),
                "complete": bool(summary) and summary.get("n_matrices") == planned and lines >= (planned or 1),
                "what": f"energy + spectra of ΔIN and ΔRL, {planned or '?'} matrices"}
    if name in ("vision", "attention"):
        pairs, left_out = probe_selection(work / "data" / "vision_probes", cfg["pairs"], broken)
        n_pairs = sum(len(p) for p in pairs.values())
        if name == "vision":
            from frankeneval.localization.vision import vision_units

            layers = list(range(1, ctx["layers"] + 1))
            expected = {u.key for u in vision_units(pairs, layers, None)[0]}
            present = finished_keys(out / "units.jsonl", ("response",))
            results = read_json(out / "vision_localization.json")
            in_json = sum(t.get("n_pairs", 0) for t in (results.get("tasks") or {}).values())
            what = (f"{n_pairs + len(left_out)} probe pairs (4 tasks) x {ctx['layers']} layers + plain = "
                    f"{len(expected):,} units, {results.get('max_new_tokens', cfg['vision_tokens'])} new tokens")
        else:
            from frankeneval.localization.attention import (
                _member_units,
                attention_prompts,
            )

            prompts = attention_prompts(pairs)
            expected = {u.key for m in ("base", "in", "rl") for u in _member_units(m, prompts, None)}
            records = {}
            if (out / "units.jsonl").is_file():
                from frankeneval.core.runstore import read_records

                records = read_records(out / "units.jsonl", ("mass", "response"))[1]
            present = set(records)
            results = read_json(out / "attention_shift.json")
            in_json = results.get("n_prompts")
            gen = [r.get("n_generated") or 0 for r in records.values()]
            budget = results.get("max_new_tokens", cfg["attention_tokens"])
            what = (f"Base, IN, RL x {len(prompts)} prompts (the pairs' target images) = {len(expected):,} units, "
                    f"{budget} new tokens")
            if gen:
                what += f" (mean {sum(gen) / len(gen):.0f} generated: EOS not ignorable here)"
            n_pairs = len(prompts)  # the JSON counts prompts
        skipped = skipped_ids(results)
        if left_out or skipped:
            what += f"; skipped {len(skipped)} (output's 'skipped': {', '.join(skipped) or 'none'}; broken by this " \
                    f"script's own decode: {', '.join(left_out) or 'none'})"
        return {"expected": len(expected), "present": len(expected & present), "extra": len(present - expected),
                "complete": expected <= present and bool(results) and in_json == n_pairs and skipped == left_out,
                "skipped": skipped, "broken_selected": left_out, "what": what}
    if name in ("gsm8k", "math500"):
        from frankeneval.localization.reasoning import load_questions, unit_key

        questions = load_questions(name, data=str(work / "data"), samples=cfg["questions"])
        layers = [None, *range(1, ctx["layers"] + 1)]
        expected = {unit_key(name, q, L) for q in questions for L in layers}
        present = finished_keys(out / "units.jsonl", ("response", "answer"))
        results = read_json(out / "reasoning_localization.json")
        eos = "EOS ignored" if results.get("ignore_eos") or ctx.get("ignore_eos") else "EOS not ignored (no flag)"
        return {"expected": len(expected), "present": len(expected & present), "extra": len(present - expected),
                "complete": expected <= present and results.get("n_questions") == len(questions),
                "what": f"{len(questions):,} questions x ({ctx['layers']} ablated layers + unablated) = "
                        f"{len(expected):,} units, {cfg['reasoning_tokens']} new tokens, {eos}"}
    if name == "transfer":
        return check_transfer(out, ctx)
    if name == "report":
        return check_report(work / "transfer", ctx)
    raise ValueError(name)


def transfer_plan(ctx: dict) -> tuple[list[str], list[str]]:
    from frankeneval.transferability.manifest import split_tasks

    return ["base", "in", "rl", *variants(ctx["cfg"]["recipe"])], split_tasks("both")


def check_transfer(run: Path, ctx: dict) -> dict:
    from frankeneval.core.runstore import read_records
    from frankeneval.transferability.manifest import CELL_FIELDS

    models, groups = transfer_plan(ctx)
    expected = {f"{m}::{g}" for m in models for g in groups}
    records = read_records(run / "cells.jsonl", CELL_FIELDS)[1] if (run / "cells.jsonl").is_file() else {}
    done = {k: r for k, r in records.items() if (run / str(r["results"])).is_file()}
    items = items_expected = hit = leaf = 0
    short = []
    counted = ctx["state"]["stages"]["transfer"].setdefault("counted", {})  # samples packed --lean stay counted
    for key, rec in done.items():
        res = read_json(run / str(rec["results"]))
        counts = res.get("n-samples") or {}  # leaf task -> {"original", "effective"}, as lmms-eval wrote them
        samples = rec.get("samples") or {}
        for task in sorted(set(counts) | set(samples)):
            leaf += 1
            rel = run / str(samples.get(task, "-"))
            n = count_lines(rel) if rel.is_file() else counted.get(f"{key}/{task}", 0)
            counted[f"{key}/{task}"] = n
            want = (counts.get(task) or {}).get("effective")
            items, items_expected = items + n, items_expected + (want or 0)
            if not n or n != want:
                short.append(f"{key}/{task}: {n}/{want}")
            hit += int((res.get("results") or {}).get(task, {}).get("hit_limit,none") or 0)
    tokens = ctx["cfg"]["transfer_tokens"]
    return {"expected": len(expected), "present": len(expected & set(done)), "items": items,
            "items_expected": items_expected, "hit_limit": hit, "short_cells": short[:20], "leaf_tasks": leaf,
            "auto_batch_sizes": auto_batch_sizes(run) if run.is_dir() else [],
            "complete": expected <= set(done) and not short,
            "what": f"{len(models)} models x {len(groups)} groups (v1 + v2) = {len(expected)} cells, "
                    f"{ctx['cfg']['sample_size']} items a task (seed 123): {items:,} answers of {items_expected:,}; "
                    f"budget {tokens} new tokens, {hit:,} answers reached it"}


def check_report(run: Path, ctx: dict) -> dict:
    """Every planned cell in the leaderboard and every cell of the rendered rule_acc table filled."""
    from frankeneval.reports.leaderboard.build import build_leaderboard
    from frankeneval.reports.leaderboard.text import missing_note, samples_note

    md = run / "report.md"
    if not md.is_file():
        return {"expected": None, "present": 0, "complete": False, "what": "frankeneval report: no report.md"}
    board = build_leaderboard(run)
    note = "; ".join(n for n in (missing_note(board), samples_note(board)) if n) or None  # samples: the paper table
    rows, empty, in_table = 0, 0, False
    for line in md.read_text().splitlines():
        if line.startswith("#"):
            in_table = line.startswith("### ") and "(rule_acc)" in line
        elif in_table and line.startswith("| ") and not line.startswith("| model") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")][3:]
            rows += 1
            empty += sum(c in ("–", "") for c in cells)
            ncols = len(cells)
    models, _ = transfer_plan(ctx)
    filled = rows * ncols - empty if rows else 0
    planned = [(m, part.key) for m in board.rows for part in board.parts]  # every model on every split part
    paper_empty = [f"{m} {k}" for m, k in planned if (c := board.paper.get((m, k))) is None or c.metric.n == 0]
    paper = (f"; the paper table: {len(planned) - len(paper_empty)} of {len(planned)} model x part cells with items"
             + (f" (none in: {', '.join(paper_empty[:6])}{' ...' if len(paper_empty) > 6 else ''})"
                if paper_empty else ""))
    return {"expected": len(models) * ncols if rows else None, "present": filled, "missing_note": note,
            "complete": note is None and rows == len(models) and empty == 0 and bool(planned) and not paper_empty,
            "what": f"frankeneval report: {rows} rows x {ncols if rows else 0} columns of rule_acc rendered{paper}"
                    + (f"; {note}" if note else "")}


# -- the stages -----------------------------------------------------------------------------------------------------
def has_flag(fe: list[str], command: str, flag: str, env: dict) -> bool:
    r = subprocess.run([*fe, command, "--help"], capture_output=True, text=True, env={**os.environ, **env}, check=False)
    return flag in r.stdout


def stage_commands(ctx: dict) -> dict[str, list[str]]:
    work, cfg, fe, dev, env = ctx["work"], ctx["cfg"], ctx["fe"], ctx["device"], ctx["env"]
    lin = work / "lineage"
    base, in_, rl = (str(lin / m) for m in ("base", "in", "rl"))
    probes = str(work / "data" / "vision_probes")
    quiet = ["--device", dev, "--no-progress"]
    def tok(k):
        return ["--max-new-tokens", str(cfg[k])] if cfg[k] else []
    pairs = ["--samples", str(cfg["pairs"])] if cfg["pairs"] else []
    def skip(c):
        return ["--skip-broken"] if has_flag(fe, c, "--skip-broken", env) else []
    ctx["ignore_eos"] = has_flag(fe, "localize-reasoning", "--ignore-eos", env)
    def reasoning(d):
        return [*fe, "localize-reasoning", "--model", rl, "--dataset", d, "--data", str(work / "data"),
                               "--samples", str(cfg["questions"]), *tok("reasoning_tokens"),
                               *(["--ignore-eos"] if ctx["ignore_eos"] else []), "--out", str(work / d), *quiet]
    gpus = ctx["gpus"]
    return {
        "lineage": [*fe, "demo-lineage", str(lin), "--preset", cfg["preset"], "--seed", str(cfg["seed"]),
                    "--no-progress"],
        "characterize": [*fe, "characterize", "--base", base, "--in", in_, "--rl", rl, "--out",
                         str(work / "characterize"), *quiet],
        "vision": [*fe, "localize-vision", "--model", rl, "--data", probes, *pairs, *skip("localize-vision"),
                   *tok("vision_tokens"), "--out", str(work / "vision"), *quiet],
        "attention": [*fe, "attention-shift", "--base", base, "--in", in_, "--rl", rl, "--data", probes, *pairs,
                      *skip("attention-shift"), *tok("attention_tokens"),
                      *(["--batch-size", str(cfg["attention_batch"])] if cfg["attention_batch"] else []),
                      "--out", str(work / "attention"), *quiet],
        "gsm8k": reasoning("gsm8k"),
        "math500": reasoning("math500"),
        "transfer": [*fe, "transfer", "--recipe", cfg["recipe"], "--base", base, "--in", in_, "--rl", rl,
                     "--splits", "both", "--sample-size", str(cfg["sample_size"]), "--sample-seed", "123",
                     "--max-new-tokens", str(cfg["transfer_tokens"]), "--batch-size", "auto",
                     "--data", str(work / "data"), "--splice-cache", str(ctx["splices"]), "--evict-variants",
                     "--gpus", str(gpus), *(["--model-args", "device=cpu"] if dev == "cpu" else []),
                     "--out", str(work / "transfer")],
        "report": [*fe, "report", str(work / "transfer")],
    }


def lineage_digest(lineage: Path) -> dict:
    from frankeneval.weights.fingerprint import file_digests

    files = sorted(lineage.glob("*/*.safetensors"))
    digests = file_digests(files)
    total = hashlib.sha256("".join(f"{f.relative_to(lineage)}:{d}\n" for f, d in zip(files, digests)).encode())
    return {"sha256": total.hexdigest(), "files": len(files),
            "gb": round(sum(f.stat().st_size for f in files) / 1e9, 1)}


def files_of(path: Path) -> list[Path]:
    """The file ``path``, or every file under the folder ``path``, sorted."""
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def prepare_data(src: Path | None, work: Path, needed: set[str], st: dict, max_side: int | None) -> str | None:
    """WORK/data: real copies of the data items (resolved image paths are part of unit keys, so they must not point
    into the repo copy, whose path may differ between machines), synthetic MathVista images, every probe image
    decoded; each item's digest recorded in ``st`` and checked against the first session's. None, or what is wrong."""
    dst = work / "data"
    digests, wrote = st.setdefault("sha256", {}), 0
    for key, item in DATA_ITEMS.items():
        s, d = (src / item if src else None), dst / item
        if not d.exists() and (s is None or not s.exists()):
            if key in needed:
                return f"{s or item} is missing: --data must hold {item} (a pending stage reads it)"
            continue
        if not d.exists():
            d.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if s.is_dir() else shutil.copy2)(s, d)
        digest = hashlib.sha256()
        for f in files_of(d):
            digest.update(str(f.relative_to(dst)).encode() + hashlib.sha256(f.read_bytes()).digest())
        if digests.setdefault(key, digest.hexdigest()) != digest.hexdigest():
            return f"{item} differs from the first session's copy (sha256): use the same data"
        if key == "vision_probes":
            images = sorted(d.rglob("images/*"))
            st.update(probe_images=len(images),
                      broken={str(p.resolve()): why for p in images if (why := image_broken(p))})
    if src and (src / DATA_ITEMS["mathvista"]).is_file():  # after the copies (it links what is not in WORK/data)
        wrote = synthetic_mathvista(src, dst, max_side=max_side)["images_written"]  # the missing ones, seeded
    st.update(mathvista_images_written=wrote or st.get("mathvista_images_written"), expected=len(DATA_ITEMS),
              present=len(digests),
              what=f"{', '.join(DATA_ITEMS.values())} copied; {st.get('probe_images', '?')} probe "
              f"images decoded, {len(st.get('broken', {}))} broken: "
              f"{', '.join(Path(b).name for b in st.get('broken', {})) or 'none'}; MathVista images synthetic "
              "(random pixels at each row's recorded size)")
    return None


def disk_needed(ctx: dict) -> tuple[float, float]:
    """(GB free where the splice cache goes, GB the transfer stage needs: max(1, gpus) variants of one member's
    size, + 5 GB)."""
    member = sum(f.stat().st_size for f in (ctx["work"] / "lineage" / "rl").glob("*.safetensors")) / 1e9
    folder = ctx["splices"]
    while not folder.exists():  # the splice cache is made by the transfer: measure the filesystem it will be on
        folder = folder.parent
    return shutil.disk_usage(folder).free / 1e9, max(1, ctx["gpus"]) * member + 5


def run(args: argparse.Namespace) -> int:
    import torch

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if runner_alive(work):
        print(f"acceptance: a run of {work} is already going (pid {runner_alive(work)}); poll it with `status`",
              file=sys.stderr)
        return 2
    # at once, before any unpacking: `start` then `status --wait` must see this runner (a 43 MB state takes a
    # while to unpack, and a status that found no runner.json returned at once, ending the call mid-unpack)
    (work / "runner.json").write_text(json.dumps({"pid": os.getpid(), "pgid": os.getpgid(0), "started": now()}))
    carried = [p for src in args.resume_from or [] for p in ([src] if src.is_file() else src.glob("state.tar.xz.*"))]
    if args.resume_from and not carried:
        print(f"[acceptance] WARNING: no state.tar.xz.NN parts in {', '.join(map(str, args.resume_from))}: nothing "
              "carried, so this starts from the beginning (right only for the first machine)", flush=True)
    elif carried and not (work / STATE).is_file():
        unpack_into(work, args.resume_from)
    elif carried:
        print(f"[acceptance] {work} holds a run: its own state is kept (--resume-from ignored)")
    if args.small or args.device == "cpu":
        dev, n_gpus = "cpu", 0
    elif not torch.cuda.is_available():
        print("acceptance: no GPU visible; this run is for a GPU machine (use --small for the CPU plumbing check)",
              file=sys.stderr)
        return 2
    else:
        dev, n_gpus = "cuda", torch.cuda.device_count()
    cfg = {**(SMALL if args.small else WHOLE), "recipe": args.recipe or ("tiny" if args.small else "openmmreasoner"),
           "seed": args.seed, "attention_batch": args.attention_batch_size, "work": str(work)}
    for k in ("pairs", "questions", "sample_size"):  # 0 = all
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k) or (None if k == "pairs" else 0)
    state = load_state(work)
    if state and state.get("settings") != cfg:
        diff = sorted(k for k in set(cfg) | set(state["settings"]) if cfg.get(k) != state["settings"].get(k))
        print(f"acceptance: {work} holds a run with other settings (differs in: {', '.join(diff)}); use another --work",
              file=sys.stderr)
        return 2
    state.setdefault("schema", "frankeneval.bench.acceptance/1")
    state["settings"] = cfg
    state["session"] = state.get("session", 0) + 1
    close_open_attempts(state, "interrupted (machine or runner gone)")
    state.setdefault("sessions", []).append(machine_info(work) | {"session": state["session"], "device": dev})
    stages = state.setdefault("stages", {})
    for s in STAGES:
        stages.setdefault(s, {"status": "pending", "attempts": []})
    (work / "logs").mkdir(exist_ok=True)
    (work / "runner.json").write_text(json.dumps({"pid": os.getpid(), "pgid": os.getpgid(0), "started": now()}))
    signal.signal(signal.SIGTERM, _on_term)
    fe = [sys.executable, "-m", "frankeneval"]
    env = {"FRANKENEVAL_DATA": str(work / "data"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    ctx = {"work": work, "cfg": cfg, "fe": fe, "device": dev, "env": env, "state": state,
           "gpus": args.gpus if args.gpus is not None else n_gpus,
           "splices": (args.splice_cache or work / "splices").resolve()}
    cmds = stage_commands(ctx)
    wanted = [s for s in STAGES if s in (args.stages or STAGES)]
    todo = [s for s in wanted if s not in SETUP and stages[s]["status"] != "complete"]
    if not todo:
        print("[acceptance] every requested stage is complete")
    needed = {n for s in todo for n in NEEDS[s]}
    setup = [s for s in SETUP if (s == "lineage" and "lineage" in needed) or (s == "data" and needed - {"lineage"})]
    name = None
    try:
        for name in [*setup, *todo]:
            st = stages[name]
            if name == "lineage":
                rec = attempt(work, state, name, cmds[name], env)
                if rec["rc"] != 0:
                    st.update(status="failed", error=f"demo-lineage exited with {rec['rc']} (see {rec['log']})")
                    save_state(work, state)
                    return 1
                fp = lineage_digest(work / "lineage")
                first = st.get("sha256")
                st.update(fp and {"sha256": first or fp["sha256"], "files": fp["files"], "gb": fp["gb"]})
                rec["sha256"] = fp.get("sha256")
                same = bool(fp) and fp["sha256"] == st.get("sha256")
                st.update(status="complete" if same else "failed", expected=3, present=3 if fp else 0,
                          what=f"demo-lineage {cfg['preset']} seed {cfg['seed']}: Base, IN, RL "
                               f"({fp.get('gb', '?')} GB, {fp.get('files', '?')} shards), "
                               f"sha256 {str(st.get('sha256'))[:12]}")
                if not same:
                    st["error"] = (f"rebuilt lineage sha256 {fp.get('sha256')} != {first} of the first build: the "
                                   "carried units were computed on other weights (another GPU model or torch?); "
                                   "run on the first session's GPU model or start over with a new --work")
                    print(f"acceptance: {st['error']}", file=sys.stderr)
                    return 1
                st.pop("error", None)  # an earlier attempt's error is history (its attempt keeps its rc and log)
                ctx["layers"] = n_llm_layers(work / "lineage" / "rl")
            elif name == "data":
                t = time.perf_counter()
                problem = prepare_data(args.data.resolve() if args.data else None, work, needed, st,
                                       112 if dev == "cpu" else None)
                if problem:
                    print(f"acceptance: {problem}", file=sys.stderr)
                    return 1
                st.setdefault("attempts", []).append({"n": len(st["attempts"]) + 1, "session": state["session"],
                                                      "started": now(), "end": "finished", "rc": 0,
                                                      "wall_s": round(time.perf_counter() - t, 1)})
                st["status"] = "complete"
            else:
                if name == "transfer" and dev == "cuda":
                    free, need = disk_needed(ctx)
                    pending = st.get("present") != st.get("expected") or st.get("expected") is None
                    if pending and free < need:
                        st.update(status="blocked", error=f"{free:.0f} GB free in {ctx['splices']}, the variants "
                                  f"need {need:.0f} GB: give `--splice-cache` a folder with room (a RAM disk such "
                                  "as /dev/shm when the host memory allows it) or run `--stages transfer report` on "
                                  "a machine with more disk (nvidia-h100-x2: 128 GiB)")
                        print(f"acceptance: transfer {st['error']}", file=sys.stderr)
                        save_state(work, state)
                        continue
                if name == "report" and stages["transfer"]["status"] != "complete":
                    st["status"] = "pending"
                    continue
                rec = attempt(work, state, name, cmds[name], env)
                check = check_stage(name, ctx)
                rec["present_after"] = check.get("present")
                st.update(check, status="complete" if check["complete"] else ("failed" if rec["rc"] else "incomplete"))
                st.pop("error", None)
            save_state(work, state)
    except (Interrupted, KeyboardInterrupt):
        close_open_attempts(state, "interrupted")
        # how far it got, for the carried state and the table
        if name and name not in SETUP and ("layers" in ctx or "lineage" not in NEEDS[name]):
            check = check_stage(name, ctx)
            stages[name].update(check, status="incomplete")
            stages[name]["attempts"][-1]["present_after"] = check.get("present")
        save_state(work, state)
        print("[acceptance] interrupted: rerun (or pack, then --resume-from on the next machine) to go on", flush=True)
        return 143
    save_state(work, state)
    print(table(state), flush=True)
    return 0 if all(stages[s]["status"] == "complete" for s in wanted) else 1


# -- pack / unpack ---------------------------------------------------------------------------------------------------
def settled(state: dict, name: str) -> bool:
    stages = state.get("stages", {})
    return all(stages.get(s, {}).get("status") == "complete" for s in (name, *DEPENDENTS.get(name, ())))


def split_write(src: Path, out: Path, stem: str, part_bytes: int) -> list[Path]:
    parts = []
    with open(src, "rb") as fh:
        while chunk := fh.read(part_bytes):
            parts.append(out / f"{stem}.{len(parts):02d}")
            parts[-1].write_bytes(chunk)
    return parts


def pack(args: argparse.Namespace) -> int:
    work = args.work.resolve()
    pid = runner_alive(work)
    if pid and args.stop:
        pgid = json.loads((work / "runner.json").read_text()).get("pgid")
        # `start` made the runner a session leader: its group is its own (its stage command goes with it); a runner
        # started in a terminal (`run`) shares the terminal's group, so only the runner itself is signalled
        kill = (lambda sig: os.killpg(pid, sig)) if pgid == pid else (lambda sig: os.kill(pid, sig))
        kill(signal.SIGTERM)
        for _ in range(120):
            if not runner_alive(work):
                break
            time.sleep(0.5)
        else:
            kill(signal.SIGKILL)
            time.sleep(2)
    elif pid:
        print(f"[pack] the runner (pid {pid}) is still going: this is a snapshot (pack --stop stops it first)")
    state = load_state(work)
    if not state:
        print(f"acceptance: no {STATE} in {work}", file=sys.stderr)
        return 2
    if not runner_alive(work):
        close_open_attempts(state, "interrupted (stopped for pack)")
    state_files, results_files = [], []
    bulky = []  # settled stages whose bulk has not been packed yet
    for name, sub in OUT_DIRS.items():
        root = work / sub
        if not root.is_dir():
            continue
        files = [p for p in root.rglob("*") if p.is_file()  # unfinished transfer cells restart from scratch anyway
                 and not any(x.endswith(".partial") or x == "__pycache__" for x in p.relative_to(root).parts)]
        if not settled(state, name):
            lean = args.lean and name == "transfer"  # finished cells' samples and logs: kept, not carried
            heavy = [p for p in files if lean and ("_samples_" in p.name or p.suffix == ".log")]
            state_files += [p for p in files if p not in heavy]
            results_files += heavy
            state["stages"][name]["lean"] = state["stages"][name].get("lean") or bool(heavy)
            continue
        small = [p for p in files if p.stat().st_size <= BULK_BYTES]
        state_files += small
        if args.all_results or not state["stages"][name].get("bulk_packed"):
            results_files += [p for p in files if p not in small]
            bulky.append(name)
    for name in bulky:
        state["stages"][name]["bulk_packed"] = state.get("session")
    save_state(work, state)
    state_files += [work / STATE, work / "acceptance.md", *(work / "logs").glob("*"),
                    *[p for p in (work / "acceptance.out",) if p.is_file()]]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    outbox = work / "outbox"  # every part is written here first; what does not fit into OUT waits for the next call
    shutil.rmtree(outbox, ignore_errors=True)
    outbox.mkdir()
    parts = []
    for stem, files in (("state.tar.xz", state_files),
                        (f"results-s{state.get('session', 0):02d}.tar.xz", results_files)):
        if not files:
            continue
        archive = outbox / stem
        with tarfile.open(archive, "w:xz", preset=args.preset) as tar:
            for f in sorted(set(files)):
                tar.add(f, arcname=str(f.relative_to(work)), recursive=False)
        parts += split_write(archive, outbox, stem, int(args.part_mib * 2**20))
        archive.unlink()
    for old in [*out.glob("state.tar.xz.*"), *out.glob("results-s*.tar.xz.*")]:  # only parts pack writes
        old.unlink()
    written = [Path(shutil.copy2(work / f, out / f)) for f in (STATE, "acceptance.md")]
    for p in parts[: max(0, args.max_files - len(written))]:
        written.append(Path(shutil.move(p, out / p.name)))
    for p in written:
        print(f"[pack] {p.name}: {p.stat().st_size / 2**20:.2f} MiB")
    left = sorted(outbox.iterdir())
    if any(p.name.startswith("state.") for p in left):
        print(f"acceptance: the carried state needs {len([p for p in parts if p.name.startswith('state.')])} parts, "
              f"more than {args.max_files - 2} files: raise --part-mib or pack --lean", file=sys.stderr)
        return 1
    if left:
        print(f"[pack] {len(left)} results parts did not fit into {args.max_files} files; bring them back in the "
              f"next call:  mkdir -p $OUT && mv {' '.join(str(p) for p in left)} $OUT/")
    print(f"[pack] carry state.tar.xz.* (--resume-from); keep results-*.tar.xz.* and {STATE}")
    return 0


def unpack_into(work: Path, sources: list[Path], results: bool = False) -> None:
    """Extract the state.tar.xz.NN parts in ``sources`` (folders or files) into ``work``; with ``results`` also every
    results-sNN.tar.xz.NN archive (the bulk, e.g. to build the report where all of it is)."""
    found = sorted({p for s in sources for p in ([s] if s.is_file() else s.glob("*.tar.xz.*"))})
    archives: dict[str, list[Path]] = {}
    for p in found:
        if p.name.startswith("state.") or (results and p.name.startswith("results-")):
            archives.setdefault(p.name.rsplit(".", 1)[0], []).append(p)
    if "state.tar.xz" not in archives:
        raise SystemExit(f"acceptance: no state.tar.xz.NN parts in {', '.join(map(str, sources))}")
    for stem, parts in sorted(archives.items(), key=lambda kv: kv[0] != "state.tar.xz"):  # the state first
        whole = work / f"unpack-{stem}"
        with open(whole, "wb") as fh:
            fh.writelines(p.read_bytes() for p in parts)
        with tarfile.open(whole, "r:xz") as tar:
            names = tar.getnames()
            if any(n.startswith(("/", "..")) or "/../" in n for n in names):
                raise SystemExit("acceptance: refusing an archive with paths outside the work folder")
            if stem == "state.tar.xz":
                state = json.loads(tar.extractfile(STATE).read())
                if state.get("settings", {}).get("work") != str(work):
                    raise SystemExit(f"acceptance: the archive is of --work {state['settings'].get('work')}; unit "
                                     f"keys hold its paths: use that --work, not {work}")
            log = work / "acceptance.out"  # this machine's log so far (the `start` line) goes after the carried one
            ours = log.read_bytes() if stem == "state.tar.xz" and log.is_file() else b""
            tar.extractall(work, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            if ours:
                with open(log, "ab") as fh:
                    fh.write(ours)
        whole.unlink()
        print(f"[acceptance] unpacked {stem}: {len(names)} files from {len(parts)} parts into {work}")


def unpack(args: argparse.Namespace) -> int:
    work = args.work.resolve()
    if (work / STATE).is_file() and not args.force:
        print(f"acceptance: {work} already holds a run (its state is at least as new); --force to replace",
              file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    unpack_into(work, args.sources, results=args.results)
    return 0


# -- start / status / table / stage-data ----------------------------------------------------------------------------
def start(args: argparse.Namespace, rest: list[str]) -> int:
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if runner_alive(work):
        print(f"acceptance: already running (pid {runner_alive(work)})")
        return 0
    cmd = [sys.executable, str(Path(__file__).resolve()), "run", "--work", str(work), *rest]
    with open(work / "acceptance.out", "a") as fh:
        fh.write(f"\n=== start {now()}: {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=REPO)
    time.sleep(5)
    print(f"started pid {proc.pid} (rc so far: {proc.poll()}); log {work / 'acceptance.out'}")
    print("".join((work / "acceptance.out").read_text(errors="replace").splitlines(True)[-10:]))
    return 0


def status(args: argparse.Namespace) -> int:
    work = args.work.resolve()
    t_end = time.time() + (args.wait or 0)
    while args.wait and runner_alive(work) and time.time() < t_end:
        time.sleep(5)
    state = load_state(work)
    alive = runner_alive(work)
    print(f"runner: {'running, pid ' + str(alive) if alive else 'not running'}; session {state.get('session')}; "
          f"updated {state.get('updated')}; disk free {shutil.disk_usage(work).free / 1e9:.0f} GB")
    for name, s in state.get("stages", {}).items():
        att = s.get("attempts", [])
        live = ""
        if s.get("status") == "running" and name in OUT_DIRS:
            units = work / OUT_DIRS[name] / ("cells.jsonl" if name == "transfer" else "units.jsonl")
            live = f", {max(0, count_lines(units) - 1):,} lines in {units.name}" if units.is_file() else ""
        print(f"  {name:<12} {s.get('status'):<10} attempts {len(att)}, "
              f"wall {sum(a.get('wall_s') or 0 for a in att):.0f} s, "
              f"units {s.get('present')}/{s.get('expected')}{live}"
              + (f"  ERROR {s['error']}" if s.get("error") else ""))
    out = work / "acceptance.out"
    if out.is_file():
        print("".join(out.read_text(errors="replace").splitlines(True)[-args.tail:]), end="")
    return 0


def table(state: dict) -> str:
    def gib(mib) -> str:
        return f"{mib / 1024:.1f} GiB" if mib else "–"

    sessions = state.get("sessions", [])

    def seen(key: str, width: int = 12, mark=lambda m: "") -> str:
        """The values a machine field took over the sessions; sessions that did not record it are counted."""
        values = sorted({str(m[key])[:width] + mark(m) for m in sessions if m.get(key) is not None})
        missing = sum(m.get(key) is None for m in sessions)
        return ", ".join(values + ([f"not recorded in {missing} of {len(sessions)} sessions"] if missing else []))

    gpus = sorted({g for m in sessions for g in m.get("gpus", [])}) or ["CPU"]
    commits = seen("git_commit", 7, lambda m: "+dirty" if m.get("git_dirty") else "")
    head = (f"Sessions: {len(sessions)} ({', '.join(gpus)}); commit {commits}; torch {seen('torch')}, "
            f"transformers {seen('transformers')}, lmms-eval {seen('lmms_eval')}")
    lines = [head,
             "", "| stage | what, whole size | wall | peak GPU | peak host | complete | resumed? |",
             "|---|---|---|---|---|---|---|"]
    for name, s in state.get("stages", {}).items():
        att = s.get("attempts", [])
        wall = sum(a.get("wall_s") or 0 for a in att)
        sessions = sorted({a.get("session") for a in att})
        if name in SETUP:
            resumed = f"rebuilt in {len(sessions)} sessions" if len(sessions) > 1 else "–"
            if name == "lineage" and att:
                wall = att[0].get("wall_s") or 0  # the first build; later sessions rebuild the same lineage
        elif len(att) > 1:
            resumed = f"yes: {len(att)} attempts in {len(sessions)} sessions (" + ", ".join(
                f"{a.get('wall_s', 0):.0f} s {a.get('end', '').split(' ')[0]}" for a in att) + ")"
        else:
            resumed = "no" if att else "–"
        done = s.get("status")
        if s.get("expected") is not None:
            done += f" ({s.get('present') or 0:,} / {s['expected']:,})"
        if s.get("reset"):
            resumed += "; then reset, to restart whole (acceptance.json: reset)"
        lines.append(f"| {name} | {s.get('what', '')} | {wall:,.0f} s | "
                     f"{gib(max((a.get('peak_gpu_mib') or 0 for a in att), default=0))} | "
                     f"{max((a.get('peak_host_gb') or 0 for a in att), default=0):.1f} GB | {done} | {resumed} |")
    return "\n".join(lines)


def show_table(args: argparse.Namespace) -> int:
    state = load_state(args.work.resolve())
    print(table(state))
    return 0 if state else 2


def stage_data(args: argparse.Namespace) -> int:
    """Copy what the run reads into DEST (an ignored folder that travels with `carry`) and say its size."""
    total = 0
    for item in (DATA_ITEMS[k] for k in args.items):
        s, d = args.data / item, args.to / item
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir():
            shutil.copytree(s, d, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(s, d)
        size = sum(f.stat().st_size for f in files_of(d))
        total += size
        print(f"{d}: {size / 2**20:.1f} MiB")
    print(f"total {total / 2**20:.1f} MiB in {args.to}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "start"):
        p = sub.add_parser(name, help="run the stages (start: detached, in its own session)")
        p.add_argument("--work", type=Path, required=True, help="work folder (same path on every machine)")
        if name == "start":
            continue
        p.add_argument("--data", type=Path, default=None,
                       help="data folder with " + ", ".join(DATA_ITEMS.values()) + " (those the pending stages read)")
        p.add_argument("--stages", nargs="+", choices=STAGES, default=None, help="only these (default: all)")
        p.add_argument("--resume-from", type=Path, nargs="+", default=None,
                       help="folder(s) or files of state.tar.xz.NN parts from `pack`, unpacked when WORK has no run")
        p.add_argument("--gpus", type=int, default=None, help="GPUs for the transfer cells (default: all visible)")
        p.add_argument("--splice-cache", type=Path, default=None,
                       help="where the transfer materializes its variants, one at a time (default WORK/splices); "
                       "e.g. a RAM disk when the work disk holds the lineage but not a variant too")
        p.add_argument("--recipe", default=None, help="default openmmreasoner (--small: tiny, its 6-layer twin)")
        p.add_argument("--seed", type=int, default=0, help="lineage seed (default 0)")
        p.add_argument("--attention-batch-size", type=int, default=None,
                       help="attention-shift --batch-size (default: the command's)")
        p.add_argument("--small", action="store_true",
                       help="CPU plumbing check: tiny lineage, 2 pairs a task, 2 questions, 2 items a task, 8 tokens")
        p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="cpu: on purpose, never a measurement")
        p.add_argument("--pairs", type=int, default=None, help="probe pairs a task (default: all; 0 = all)")
        p.add_argument("--questions", type=int, default=None, help="questions per reasoning set (default 0 = all)")
        p.add_argument("--sample-size", type=int, default=None, help="transfer items a task (default 100, the paper's)")
    p = sub.add_parser("status", help="progress of the run (for polling)")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--wait", type=float, default=0, help="first wait up to this many seconds for the runner to end")
    p.add_argument("--tail", type=int, default=8, help="lines of acceptance.out shown")
    p = sub.add_parser("pack", help="the run's small outputs into OUT (state to carry, results to keep)")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="folder, e.g. $OUT")
    p.add_argument("--stop", action="store_true", help="stop the runner first (the machine is about to go)")
    p.add_argument("--part-mib", type=float, default=15.0, help="archive part size (default 15 MiB)")
    p.add_argument("--max-files", type=int, default=8)
    p.add_argument("--preset", type=int, default=1,
                   help="xz preset (default 1: an unfinished GSM8K sweep's units.jsonl of random-weight answers, "
                        "220 MB, packs to 39 MB in 10 s on one core; preset 6 overran a call's last 110 s)")
    p.add_argument("--all-results", action="store_true", help="every settled stage's bulk, not only the new ones")
    p.add_argument("--lean", action="store_true",
                   help="an unfinished transfer's samples and logs go to the results archive, not the carried state "
                        "(resume needs only its results files; the report then needs every results archive unpacked)")
    p = sub.add_parser("unpack", help="unpack state parts into WORK (what run --resume-from does)")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("sources", type=Path, nargs="+")
    p.add_argument("--force", action="store_true")
    p.add_argument("--results", action="store_true", help="also the results-sNN archives (all the outputs)")
    p = sub.add_parser("table", help="print the markdown table of WORK/acceptance.json")
    p.add_argument("--work", type=Path, required=True)
    p = sub.add_parser("stage-data", help="copy the data the run reads into an ignored repo folder")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--to", type=Path, default=REPO / ".devdata")
    p.add_argument("--items", nargs="+", choices=list(DATA_ITEMS), default=list(DATA_ITEMS),
                   help="what to copy (default all; a later machine needs only what its pending stages read)")
    args, rest = ap.parse_known_args(argv)
    if args.cmd == "start":
        return start(args, rest)
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    return {"run": run, "status": status, "pack": pack, "unpack": unpack, "table": show_table,
            "stage-data": stage_data}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
