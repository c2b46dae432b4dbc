"""The whole analysis at full size on GPUs, through the real CLIs and the real lmms-eval (issue 21).

    python bench/full_size.py --work /tmp/fs --data DATA --gpus 2                  # everything, then the table
    python bench/full_size.py --work /tmp/fs --data DATA --stages transfer report  # some stages (reuses the rest)

DATA is a FRANKENEVAL_DATA folder (gsm8k/, math500/, mathvista/testmini.jsonl, vision_probes/). Stages, in order,
each one the command a user types (run in a subprocess, timed, with peak GPU memory over all GPUs and the peak
host memory of its process tree sampled every 0.2 s):

lineage      frankeneval demo-lineage --preset qwen2.5-vl-7b   (random bf16 Base / IN / RL, hub layout, 16.6 GB each)
images       MathVista testmini images: *synthetic* (random pixels at each row's recorded width x height, written
             into WORK/data/mathvista/images) -- the hub's images cannot be fetched on a machine without internet;
             the resize to <= 1280 x 720, the black and black + description controls then run as with the real ones
accelerate   accelerate launch --num_processes 2 -m lmms_eval --model franken_qwen (RL, v1 perception) against one
             process: per-item answers equal (first: the cheapest end-to-end check of lmms-eval on the GPUs)
characterize frankeneval characterize --device cuda
splice       frankeneval splice openmmreasoner:<first variant>  (one variant, timed, then removed: the transfer
             stage materializes its own)
transfer     frankeneval transfer --recipe openmmreasoner (Base, IN, RL, six variants x the v1 splits) --gpus N
             --evict-variants --batch-size auto: one lmms-eval process per cell, franken_qwen in each
localize     frankeneval localize-vision (4 probe tasks, --pairs pairs, every LLM layer) and localize-reasoning
             (GSM8K, --questions questions, every LLM layer), on RL
report       frankeneval report (the paper's table, transitions, leaderboard)
gpus         the 2-GPU check: the same sub-matrix (Base, IN, RL, one variant x v1 perception and reasoning, 8 cells)
             with --gpus 1 and --gpus 2, each splicing its variant into its own cache, wall time of each and
             per-item equality of every cell's samples

The weights are random: the answers are noise and every number here is about time, memory and plumbing, never
accuracy. With no GPU visible the script stops with one line (it never falls back to the CPU). Writes
WORK/full_size.json and prints a markdown table (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

# cheap end-to-end checks first (accelerate: lmms-eval + franken_qwen on the GPUs), the long transfer matrix later
STAGES = ("lineage", "images", "accelerate", "characterize", "splice", "transfer", "localize", "report", "gpus")


class Sampler:
    """Peak GPU memory (sum over GPUs, MiB, via NVML) and peak host RSS of a process tree (GB), every 0.2 s."""

    def __init__(self, pid: int):
        import psutil

        self.proc = psutil.Process(pid)
        self.gpu_peak_mib = 0.0
        self.host_peak_gb = 0.0
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml
        except Exception:  # noqa: BLE001 - no NVML: GPU memory is not sampled (said in the output)
            self._handles, self._nvml = [], None
        self._base_gpu = self._gpu_used()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _gpu_used(self) -> float:
        return sum(self._nvml.nvmlDeviceGetMemoryInfo(h).used for h in self._handles) / 2**20 if self._handles else 0.0

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            self.gpu_peak_mib = max(self.gpu_peak_mib, self._gpu_used() - self._base_gpu)
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                rss = 0
                for p in procs:
                    try:
                        rss += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.host_peak_gb = max(self.host_peak_gb, rss / 1e9)
            except psutil.Error:
                pass
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_stage(name: str, cmd: list[str], log_dir: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` with its output in LOG_DIR/NAME.log; its wall time, rc and peaks."""
    log = log_dir / f"{name}.log"
    print(f"[full_size] {name}: {' '.join(cmd)}", flush=True)
    t = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        sampler = Sampler(proc.pid)
        rc = proc.wait()
        sampler.stop()
    row = {"stage": name, "rc": rc, "wall_s": round(time.perf_counter() - t, 1),
           "peak_gpu_gib": round(sampler.gpu_peak_mib / 1024, 1), "peak_host_gb": round(sampler.host_peak_gb, 2),
           "command": " ".join(cmd), "log": str(log)}
    print(f"[full_size] {name}: rc={rc} {row['wall_s']} s, GPU {row['peak_gpu_gib']} GiB, "
          f"host {row['peak_host_gb']} GB",
          flush=True)
    if rc != 0:
        print(log.read_text()[-3000:], flush=True)
    return row


def synthetic_mathvista(src_data: Path, dst_data: Path, seed: int = 0, max_side: int | None = None) -> dict:
    """A copy of DATA with MathVista images of each row's recorded size (random pixels; see the docstring);
    ``max_side`` shrinks them (the CPU smoke check only)."""
    import numpy as np
    from PIL import Image

    dst_data.mkdir(parents=True, exist_ok=True)
    for entry in src_data.iterdir():
        target = dst_data / entry.name
        if entry.name != "mathvista" and not target.exists():
            target.symlink_to(entry.resolve())
    mv = dst_data / "mathvista"
    (mv / "images").mkdir(parents=True, exist_ok=True)
    shutil.copy2(src_data / "mathvista" / "testmini.jsonl", mv / "testmini.jsonl")
    rng = np.random.default_rng(seed)
    n = 0
    with open(mv / "testmini.jsonl") as fh:
        for line in fh:
            row = json.loads(line)
            meta = row.get("metadata") or {}
            meta = ast.literal_eval(meta) if isinstance(meta, str) else meta
            w, h = int(meta.get("img_width") or 640), int(meta.get("img_height") or 480)
            if max_side and max(w, h) > max_side:
                w, h = max(28, w * max_side // max(w, h)), max(28, h * max_side // max(w, h))
            path = mv / row["image"]
            if not path.exists():
                small = rng.integers(0, 256, (max(1, h // 16), max(1, w // 16), 3), dtype=np.uint8)
                Image.fromarray(small).resize((w, h), Image.NEAREST).save(path, quality=85)
                n += 1
    return {"images_written": n, "synthetic": True}


def variants(recipe: str) -> list[str]:
    from frankeneval.transferability.recipes import get_recipe

    return list(get_recipe(recipe).variants)


def samples_by_cell(run_dir: Path) -> dict[str, list]:
    """cell key -> sorted (task, doc_id, filtered response) of every sample file under a transfer run."""
    out: dict[str, list] = {}
    for f in sorted(run_dir.rglob("*_samples_*.jsonl")):
        rel = f.relative_to(run_dir).parts
        key = "/".join(rel[:3])  # cells/<model>/<task>
        task = re.sub(r"^.*_samples_", "", f.stem)
        with open(f) as fh:
            for line in fh:
                s = json.loads(line)
                out.setdefault(key, []).append((task, s.get("doc_id"), json.dumps(s.get("filtered_resps"))))
    return {k: sorted(v) for k, v in out.items()}


def lmms_answers(out_dir: Path) -> dict:
    """(task, doc_id) -> filtered response of every samples file under an lmms-eval output folder."""
    ans = {}
    for f in out_dir.rglob("*_samples_*.jsonl"):
        task = re.sub(r"^.*_samples_", "", f.stem)
        for line in open(f):
            s = json.loads(line)
            ans[(task, s["doc_id"])] = json.dumps(s.get("filtered_resps"))
    return ans


def auto_batch_sizes(run_dir: Path) -> list[int]:
    sizes = []
    for log in run_dir.rglob("*.log"):
        sizes += [int(m) for m in re.findall(r"batch_size auto settled on (\d+)", log.read_text(errors="replace"))]
    return sorted(set(sizes))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (lineage, runs, logs)")
    ap.add_argument("--data", type=Path, required=True, help="FRANKENEVAL_DATA folder")
    ap.add_argument("--preset", default="qwen2.5-vl-7b")
    ap.add_argument("--recipe", default="openmmreasoner")
    ap.add_argument("--gpus", type=int, default=2, help="GPUs for the transfer stage (default 2)")
    ap.add_argument("--sample-size", type=int, default=3, help="items per task (default 3)")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="new tokens per answer in transfer (default 16)")
    ap.add_argument("--pairs", type=int, default=2, help="probe pairs per task in localize-vision (default 2)")
    ap.add_argument("--questions", type=int, default=4, help="GSM8K questions in localize-reasoning (default 4)")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run on the CPU on purpose (a plumbing check with --preset tiny; never a measurement)")
    args = ap.parse_args(argv)

    import torch

    if args.cpu_smoke:
        dev, n_gpus = "cpu", 0
    elif not torch.cuda.is_available():
        print("full_size: no GPU visible (torch.cuda.is_available() is False); this benchmark runs on a GPU machine "
              "and never falls back to the CPU", file=sys.stderr)
        return 2
    else:
        dev, n_gpus = "cuda", torch.cuda.device_count()
    work = args.work.resolve()
    if work.is_dir() and any(work.iterdir()) and not (work / "full_size.json").is_file() \
            and not (work / "logs").is_dir():
        print(f"full_size: {work} holds files this benchmark did not write; give an empty or new --work folder "
              "(its stages replace their own sub-folders)", file=sys.stderr)
        return 2
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    lineage = work / "lineage"
    base, in_, rl = (str(lineage / m) for m in ("base", "in", "rl"))
    data = work / "data"
    fe = [sys.executable, "-m", "frankeneval"]
    env = {"FRANKENEVAL_DATA": str(data), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1"}
    models = ["--base", base, "--in", in_, "--rl", rl]
    common = ["--data", str(data), "--sample-size", str(args.sample_size), "--sample-seed", "123",
              "--max-new-tokens", str(args.max_new_tokens), "--batch-size", "auto"]
    result_path = work / "full_size.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    result.update({"machine": {"gpus": [torch.cuda.get_device_name(i) for i in range(n_gpus)], "device": dev,
                               "torch": torch.__version__}, "settings": vars(args) | {"work": str(work),
                                                                                      "data": str(args.data)}})
    stages = result.setdefault("stages", {})

    def save() -> None:
        result_path.write_text(json.dumps(result, indent=1, default=str))

    for stage in [s for s in STAGES if s in args.stages]:
        if stage == "lineage":
            stages[stage] = run_stage(stage, fe + ["demo-lineage", str(lineage), "--preset", args.preset,
                                                   "--no-progress"], logs, env)
        elif stage == "characterize":
            stages[stage] = run_stage(stage, fe + ["characterize", *models, "--out", str(work / "characterize"),
                                                   "--device", dev, "--no-progress"], logs, env)
        elif stage == "splice":
            first = variants(args.recipe)[0]
            out = work / "splice-one"
            stages[stage] = run_stage(stage, fe + ["splice", f"{args.recipe}:{first}", *models, "--out", str(out),
                                                   "--quiet"], logs, env)
            stages[stage]["variant"] = first
            if stages[stage]["rc"] == 0 and out.exists():
                shutil.rmtree(out)  # the splice this stage wrote; the transfer stage materializes its own
        elif stage == "images":
            t = time.perf_counter()
            info = synthetic_mathvista(args.data.resolve(), data, max_side=112 if dev == "cpu" else None)
            stages[stage] = {"stage": stage, "rc": 0, "wall_s": round(time.perf_counter() - t, 1), **info}
        elif stage == "transfer":
            run = work / "transfer"
            stages[stage] = run_stage(stage, fe + ["transfer", "--recipe", args.recipe, *models, *common,
                                                   "--gpus", str(min(args.gpus, n_gpus)), "--evict-variants",
                                                   *(["--model-args", "device=cpu"] if dev == "cpu" else []),
                                                   "--splice-cache", str(work / "splices"), "--out", str(run)],
                                      logs, env)
            stages[stage]["auto_batch_sizes"] = auto_batch_sizes(run)
            stages[stage]["cells"] = (sum(1 for _ in open(run / "cells.jsonl")) - 1
                                      if (run / "cells.jsonl").exists() else 0)
        elif stage == "localize":
            stages["localize_vision"] = run_stage("localize_vision", fe + [
                "localize-vision", "--model", rl, "--data", str(args.data.resolve() / "vision_probes"),
                "--samples", str(args.pairs), "--out", str(work / "loc-vision"), "--device", dev,
                "--no-progress"], logs, env)
            stages["localize_reasoning"] = run_stage("localize_reasoning", fe + [
                "localize-reasoning", "--model", rl, "--dataset", "gsm8k", "--data", str(data),
                "--samples", str(args.questions), "--max-new-tokens", "64", "--out", str(work / "loc-reasoning"),
                "--device", dev, "--no-progress"], logs, env)
        elif stage == "report":
            stages[stage] = run_stage(stage, fe + ["report", str(work / "transfer")], logs, env)
        elif stage == "gpus":
            sub = variants(args.recipe)[:1]
            timing = {}
            for n in (1, 2):
                run, cache = work / f"gpus{n}", work / f"splices-gpus{n}"
                for scratch in (run, cache):  # this stage's own; each run splices its variant itself (same work)
                    if scratch.exists():
                        shutil.rmtree(scratch)
                row = run_stage(f"gpus{n}", fe + ["transfer", "--recipe", args.recipe, *models, *common,
                                                  "--variants", ",".join(sub),
                                                  "--tasks", "franken_perception,franken_reasoning",
                                                  "--gpus", str(n if dev == "cuda" else 0),
                                                  *(["--model-args", "device=cpu"] if dev == "cpu" else []),
                                                  "--splice-cache", str(cache), "--out", str(run)],
                                logs, env)
                timing[n] = row
                shutil.rmtree(cache, ignore_errors=True)
            same = samples_by_cell(work / "gpus1") == samples_by_cell(work / "gpus2")
            ratio = timing[2]["wall_s"] / timing[1]["wall_s"] if timing[1]["wall_s"] else None
            stages[stage] = {"stage": stage, "rc": max(r["rc"] for r in timing.values()), "n1": timing[1],
                             "n2": timing[2], "ratio_n2_over_n1": ratio, "per_item_identical": same,
                             "cells": len(samples_by_cell(work / "gpus1"))}
        elif stage == "accelerate":
            from frankeneval.commands.tasks_path import tasks_path

            lm = ["-m", "lmms_eval", "--model", "franken_qwen", "--model_args",
                  f"pretrained={rl},batch_size=auto,max_new_tokens={args.max_new_tokens}"
                  + (",device=cpu" if dev == "cpu" else ""),
                  "--tasks", "franken_perception", "--include_path", str(tasks_path()), "--log_samples",
                  "--gen_kwargs", f"max_new_tokens={args.max_new_tokens}"]  # the tasks' own budget is 8192
            acc_env = {**env, "FRANKENEVAL_SAMPLE_SIZE": str(max(args.sample_size, 8))}
            one = run_stage("lmms_one", [sys.executable, *lm, "--output_path", str(work / "lmms-one")], logs, acc_env)
            two = run_stage("lmms_accelerate", [sys.executable, "-m", "accelerate.commands.launch", "--num_processes",
                                                str(max(2, min(2, n_gpus))), *(["--cpu"] if dev == "cpu" else []),
                                                *lm, "--output_path", str(work / "lmms-acc")],
                            logs, acc_env)
            a, b = lmms_answers(work / "lmms-one"), lmms_answers(work / "lmms-acc")
            stages[stage] = {"stage": stage, "rc": max(one["rc"], two["rc"]), "one": one, "accelerate": two,
                             "items": len(a), "identical": bool(a) and a == b,
                             "differ": sorted(str(k) for k in set(a) | set(b) if a.get(k) != b.get(k))[:10]}
            if n_gpus > 1:  # the model split over the GPUs by device_map=auto, one process
                dm = [x.replace("batch_size=auto", "batch_size=auto,device_map=auto") for x in lm]
                split = run_stage("lmms_device_map", [sys.executable, *dm, "--output_path", str(work / "lmms-dm")],
                                  logs, acc_env)
                c = lmms_answers(work / "lmms-dm")
                stages[stage].update({"device_map": split, "device_map_identical": bool(c) and a == c,
                                      "rc": max(stages[stage]["rc"], split["rc"])})
        save()
    print(table(result))
    save()
    return 0 if all(s.get("rc", 0) == 0 for s in stages.values()) else 1


def table(result: dict) -> str:
    lines = ["| stage | wall time | peak GPU memory (all GPUs) | peak host RSS | note |", "|---|---|---|---|---|"]
    for name, s in result.get("stages", {}).items():
        if name in ("gpus", "accelerate"):
            continue
        note = ""
        if name == "transfer":
            note = f"{s.get('cells')} cells, batch_size auto settled on {s.get('auto_batch_sizes')}"
        if name == "images":
            note = f"{s.get('images_written')} synthetic images"
        if s.get("rc"):
            note += f" rc={s['rc']}"
        lines.append(f"| {name} | {s.get('wall_s')} s | {s.get('peak_gpu_gib', '–')} GiB | "
                     f"{s.get('peak_host_gb', '–')} GB | {note} |")
    g = result.get("stages", {}).get("gpus")
    if g:
        lines.append(f"\n--gpus 1: {g['n1']['wall_s']} s, --gpus 2: {g['n2']['wall_s']} s "
                     f"(ratio {g['ratio_n2_over_n1']:.2f}); per-item identical: {g['per_item_identical']} "
                     f"({g['cells']} cells)")
    a = result.get("stages", {}).get("accelerate")
    if a:
        lines.append(f"accelerate launch (2 processes) vs one process: {a['items']} items, "
                     f"identical: {a['identical']}; "
                     f"{a['one']['wall_s']} s vs {a['accelerate']['wall_s']} s")
        if "device_map" in a:
            lines.append(f"device_map=auto over the GPUs vs one GPU: identical: {a['device_map_identical']}; "
                         f"{a['device_map']['wall_s']} s, peak GPU {a['device_map']['peak_gpu_gib']} GiB")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
