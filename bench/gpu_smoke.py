"""GPU check of the paths CI (no GPU) never runs: the streaming reader's CUDA path and the interventions on CUDA.

1. ``characterize`` on CUDA (pinned, chunked reads, deliberately small chunks) equals ``characterize`` on the CPU,
   matrix for matrix (the worst relative difference per metric is reported), on the tiny lineage and, with
   ``--preset``, a larger one (energy only there: CPU spectra of 3B matrices take too long).
2. On CUDA (float32, eager attention), ``Ablate(L)`` for L = 1 and L = n equals the unablated model whose layer L
   has its o_proj and down_proj zeroed, token for token; one batch mixing rows ablated at different layers equals
   the rows run one at a time.

    python bench/gpu_smoke.py --workdir /tmp/smoke [--preset qwen2.5-vl-3b] --json-out smoke.json
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch

PROMPTS = ["Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
           "How many clips did Natalia sell altogether?", "What is 17 times 3?"]


def flatten(rec: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in rec.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seconds":
            out[prefix + k] = float(v)
    return out


def compare_characterize(lineage, work: Path, chunk_bytes: int, device: str = "cuda", spectra: bool = True) -> dict:
    from frankeneval.characterization.characterize import characterize
    from frankeneval.characterization.measure import CharacterizeSettings
    from frankeneval.core.results import read_jsonl

    runs = {}
    for dev in ("cpu", device):
        out = work / f"char-{dev}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        characterize(lineage.base, lineage.in_, lineage.rl, out, device=dev, progress=False, chunk_bytes=chunk_bytes,
                     settings=CharacterizeSettings(spectra=spectra))
        runs[dev] = ({r["name"]: flatten(r) for r in read_jsonl(out / "matrices.jsonl")}, time.perf_counter() - t0)
    cpu, gpu = runs["cpu"][0], runs[device][0]
    worst: dict[str, list] = {}  # metric -> [worst relative difference, where]
    for name, a in cpu.items():
        b = gpu[name]
        for k, x in a.items():
            y = b.get(k)
            if y is None or not (math.isfinite(x) and math.isfinite(y)):
                continue
            metric = k.split(".sigma_top")[0] if ".sigma_top" in k else k
            metric = metric.replace("delta_in.", "delta.").replace("delta_rl.", "delta.")
            rel = abs(x - y) / max(abs(x), 1e-6)
            if rel > worst.get(metric, [0.0])[0]:
                worst[metric] = [rel, name]
    return {"matrices": len(cpu), "same_names": set(cpu) == set(gpu),
            "worst_rel_diff_by_metric": {k: v for k, v in sorted(worst.items(), key=lambda kv: -kv[1][0])},
            "seconds_cpu": runs["cpu"][1], f"seconds_{device}": runs[device][1], "chunk_bytes": chunk_bytes,
            "spectra": spectra}


def zeroed(src: Path, dst: Path, decoder_layer: int) -> Path:
    from safetensors.torch import load_file, save_file

    from frankeneval.weights.layermap import canonical_name

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    targets = {f"model.layers.{decoder_layer}.self_attn.o_proj.weight",
               f"model.layers.{decoder_layer}.mlp.down_proj.weight"}
    for f in sorted(dst.glob("*.safetensors")):
        tensors = load_file(f)
        for name in list(tensors):
            if canonical_name(name) in targets:
                tensors[name] = torch.zeros_like(tensors[name])
        save_file(tensors, f, metadata={"format": "pt"})
    return dst


def texts(gen, interventions_per_row, max_new: int) -> list[str]:
    from frankeneval.engine.generation import GenRequest
    from frankeneval.localization.reasoning import question_prompt

    reqs = [GenRequest(question_prompt(p), [], None) for p in PROMPTS for _ in interventions_per_row]
    rows = [iv for _ in PROMPTS for iv in interventions_per_row]
    return [r.text for r in gen.generate(reqs, max_new_tokens=max_new, interventions=rows, batch_size=len(reqs))]


def check_ablation(lineage, work: Path, max_new: int, device: str = "cuda") -> dict:
    from frankeneval.engine.generation import Generator
    from frankeneval.engine.interventions import Ablate

    kw = {"dtype": "float32", "device": device, "attn_implementation": "eager"}
    gen = Generator.load(str(lineage.rl), **kw)
    n = gen.n_llm_layers
    out: dict = {"n_llm_layers": n, "layers": {}}
    mixed = texts(gen, [[Ablate(1)], [Ablate(n)], []], max_new)  # one batch, three rows per prompt
    for i, layer in enumerate((1, n)):
        ablated = texts(gen, [[Ablate(layer)]], max_new)
        ref = Generator.load(str(zeroed(lineage.rl, work / f"zeroed-{layer}", layer - 1)), **kw)
        plain = texts(ref, [[]], max_new)
        out["layers"][layer] = {"ablate_equals_zeroed": ablated == plain,
                                "mixed_batch_equals_alone": mixed[i::3] == ablated}
        del ref
    out["unablated_differs"] = texts(gen, [[]], max_new) != texts(gen, [[Ablate(1)]], max_new)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/gpu_smoke")
    ap.add_argument("--preset", default=None, help="also characterize this larger preset (e.g. qwen2.5-vl-3b)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only to try the script itself")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_smoke: no CUDA GPU visible")
    from frankeneval.miniature.lineage import write_lineage

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tiny = write_lineage(work / "tiny", preset="tiny", progress=False)
    result = {"gpu": torch.cuda.get_device_name() if args.device == "cuda" else None, "torch": torch.__version__,
              "characterize_tiny": compare_characterize(tiny, work, 4096, args.device),
              "ablation_tiny": check_ablation(tiny, work, args.max_new_tokens, args.device)}
    if args.preset:
        big = write_lineage(work / args.preset, preset=args.preset, device="cuda", progress=False)
        result[f"characterize_{args.preset}"] = compare_characterize(big, work, 64 << 20, args.device, spectra=False)
    print(json.dumps(result, indent=1))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
