"""Benchmark the update characterization against the time to read the lineage's files once.

    python bench/bench_characterize.py --preset qwen2.5-vl-7b --workdir /data/bench     # on the GPU machine
    python bench/bench_characterize.py --preset tiny --workdir /tmp/bench --device cpu   # smoke test

Phases (default: all, in this order; results accumulate in WORKDIR/bench_characterize-PRESET.json, so
phases may be run in separate calls):

* ``write``  -- write the random Base/IN/RL lineage (frankeneval.miniature.lineage.write_lineage; bf16 for the
  full-size presets; generated on the GPU when there is one);
* ``read``   -- ``cat`` every weight file of the three members to /dev/null;
* ``energy`` -- ``characterize`` with spectra off (Frobenius norms, cosines) in a child process;
* ``full``   -- ``characterize`` with every spectrum (singular values, ranks, top-r subspace overlap);
* ``micro``  -- seconds per singular-value method (Gram+eigvalsh, + top-8 subspaces by iteration,
  Gram+full eigh, svdvals) for the model's
  matrix shapes on the device, to check the method choice.

Before read / energy / full the page cache is dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``) when
permitted (root); otherwise that is recorded and every phase reads from whatever is cached. Peak host
memory is the child's ``ru_maxrss``. Targets on the GPU: energy <= 1.2x read, energy+spectra <= 2x
read, peak host memory < 4 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("write", "read", "energy", "full", "micro")


def drop_caches() -> bool:
    """Drop the page cache; False when not permitted."""
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def weight_files(workdir: Path) -> list[Path]:
    return sorted(p for m in ("base", "in", "rl") for p in (workdir / m).glob("*.safetensors"))


def phase_write(args, lineage_dir: Path) -> dict:
    from frankeneval.miniature.lineage import write_lineage

    t = time.perf_counter()
    write_lineage(lineage_dir, preset=args.preset, seed=0, progress=not args.no_progress)
    files = weight_files(lineage_dir)
    return {"seconds": time.perf_counter() - t, "bytes": sum(p.stat().st_size for p in files), "files": len(files)}


def phase_read(args, lineage_dir: Path) -> dict:
    files = weight_files(lineage_dir)
    dropped = drop_caches()
    t = time.perf_counter()
    subprocess.run("cat " + " ".join(f"'{p}'" for p in files) + " > /dev/null", shell=True, check=True)
    sec = time.perf_counter() - t
    nbytes = sum(p.stat().st_size for p in files)
    return {"seconds": sec, "bytes": nbytes, "gb_per_s": nbytes / sec / 1e9, "cache_dropped": dropped}


def phase_characterize(args, lineage_dir: Path, spectra: bool) -> dict:
    dropped = drop_caches()
    out = Path(tempfile.mkdtemp(prefix="char-", dir=args.workdir))
    cmd = [sys.executable, __file__, "--_child", str(lineage_dir), str(out), "--device", args.device,
           "--rank-r", str(args.rank_r), *([] if spectra else ["--energy-only"]),
           *(["--no-progress"] if args.no_progress else [])]
    proc = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["cache_dropped"] = dropped
    result["out_dir"] = str(out)
    return result


def child(args) -> None:
    """Runs in a fresh process so that ru_maxrss is this measurement's alone."""
    import torch

    from frankeneval.characterization.characterize import characterize
    from frankeneval.characterization.measure import CharacterizeSettings

    lineage_dir, out = Path(args._child[0]), Path(args._child[1])
    settings = CharacterizeSettings(spectra=not args.energy_only, rank_r=args.rank_r)
    t = time.perf_counter()
    summary = characterize(lineage_dir / "base", lineage_dir / "in", lineage_dir / "rl", out, settings=settings,
                           device=args.device, overwrite=True, progress=not args.no_progress)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    sec = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    gpu_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() and args.device != "cpu" else None
    print(json.dumps({"seconds": sec, "peak_rss_bytes": rss, "peak_gpu_bytes": gpu_peak,
                      "matrices": summary["n_matrices"],
                      "device": summary["run"]["device"], "gpu": summary["run"].get("gpu")}))


def phase_micro(args, lineage_dir: Path) -> dict:
    import torch

    from frankeneval.characterization.plan import plan_matrices
    from frankeneval.characterization.rundir import resolve_device
    from frankeneval.characterization.spectra import as_matrix, gram, singular_values, top_singular_subspaces
    from frankeneval.weights.checkpoint import Checkpoint

    dev = resolve_device(args.device)
    shapes = sorted({tuple(as_matrix(torch.empty(p.shape, device="meta")).shape)
                     for p in plan_matrices(Checkpoint.open(lineage_dir / "base"))},
                    key=lambda s: -s[0] * s[1])
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rows = []
    for shape in shapes[: args.micro_shapes]:
        m = torch.randn(shape, device=dev)
        row = {"shape": list(shape)}
        for name, fn in (("gram_eigvalsh", lambda m=m: singular_values(m, method="gram")),
                         ("gram_iter_r8", lambda m=m: top_singular_subspaces(m, 8, method="gram")),
                         ("gram_eigh_full", lambda m=m: torch.linalg.eigh(gram(m))),
                         ("svdvals_f64", lambda m=m: singular_values(m, method="svd"))):
            if name == "svdvals_f64" and shape[0] * shape[1] > args.max_svd_elems:
                row[name] = None
                continue
            fn()
            sync()
            t = time.perf_counter()
            fn()
            sync()
            row[name] = time.perf_counter() - t
        rows.append(row)
    return {"device": str(dev), "rows": rows}


def report(results: dict) -> str:
    lines = [f"preset {results.get('preset')}  device {results.get('gpu') or results.get('device')}"]
    read = results.get("read")
    if "write" in results:
        w = results["write"]
        lines.append(f"  lineage: {w['bytes'] / 1e9:.2f} GB in {w['files']} files (written in {w['seconds']:.1f} s)")
    lines.append(f"  {'phase':<18} {'seconds':>9} {'x read':>8} {'peak RSS GB':>12} {'peak GPU GB':>12}  cache dropped")
    if read:
        lines.append(f"  {'read (cat)':<18} {read['seconds']:>9.2f} {1.0:>8.2f} {'-':>12} {'-':>12}  "
                     f"{read['cache_dropped']}  ({read['gb_per_s']:.2f} GB/s)")
    for key, label, target in (("energy", "energy only", 1.2), ("full", "energy + spectra", 2.0)):
        r = results.get(key)
        if not r:
            continue
        ratio = r["seconds"] / read["seconds"] if read else float("nan")
        gpu = f"{r['peak_gpu_bytes'] / 1e9:.2f}" if r.get("peak_gpu_bytes") else "-"
        ok = "ok" if ratio <= target and r["peak_rss_bytes"] < 4e9 else "MISSED"
        lines.append(f"  {label:<18} {r['seconds']:>9.2f} {ratio:>8.2f} {r['peak_rss_bytes'] / 1e9:>12.2f} {gpu:>12}  "
                     f"{r['cache_dropped']}  "
                     f"(target <= {target}x, < 4 GB: {ok})")
    if results.get("micro"):
        lines.append(f"  singular values, seconds per matrix on {results['micro']['device']}:")
        lines.append(f"    {'shape':<16} {'gram+eigvalsh':>14} {'+top-8 iter':>12} {'gram+eigh':>10} "
                     f"{'svdvals f64':>12}")
        for row in results["micro"]["rows"]:
            f = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
            lines.append(f"    {str(tuple(row['shape'])):<16} {f(row['gram_eigvalsh']):>14} "
                         f"{f(row['gram_iter_r8']):>12} {f(row['gram_eigh_full']):>10} {f(row['svdvals_f64']):>12}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="tiny | qwen2.5-vl-3b | qwen2.5-vl-7b")
    ap.add_argument("--workdir", default=None, help="where the lineage and results go")
    ap.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rank-r", type=int, default=8)
    ap.add_argument("--micro-shapes", type=int, default=6, help="how many of the largest distinct shapes to time")
    ap.add_argument("--max-svd-elems", type=int, default=100_000_000, help="skip svdvals above this many elements")
    ap.add_argument("--json-out", help="also copy the results JSON here")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--energy-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        child(args)
        return
    if not args.workdir:
        ap.error("--workdir is required")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    args.workdir = str(workdir)
    lineage_dir = workdir / f"lineage-{args.preset}"
    results_path = workdir / f"bench_characterize-{args.preset}.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results["preset"] = args.preset
    for phase in args.phases:
        if phase != "write" and not (lineage_dir / "rl").is_dir():
            results["write"] = phase_write(args, lineage_dir)
        if phase == "write":
            results["write"] = phase_write(args, lineage_dir)
        elif phase == "read":
            results["read"] = phase_read(args, lineage_dir)
        elif phase in ("energy", "full"):
            results[phase] = phase_characterize(args, lineage_dir, spectra=phase == "full")
            results["device"], results["gpu"] = results[phase]["device"], results[phase].get("gpu")
        elif phase == "micro":
            results["micro"] = phase_micro(args, lineage_dir)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"[{phase}] done", file=sys.stderr, flush=True)
    print(report(results))
    print(f"results: {results_path}")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
