"""Show a checkpoint's layer map: every tensor classified onto the unified layer axis
(vision blocks < 0, projector = 0, LLM layers > 0), read from the file headers only.

With two or three checkpoints, also check that they share an architecture (same tensor
names and shapes; dtype differences are reported), e.g. for a Base / IN / RL lineage:

    frankeneval inspect path/to/base path/to/in path/to/rl
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from frankeneval.weights.checkpoint import Checkpoint, check_compatible

COMMAND = "inspect"
HELP = "show a checkpoint's layer map; with several checkpoints, check they are compatible"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", help="local checkpoint directories or hub ids")
    parser.add_argument("--json", action="store_true", help="print every tensor's role as JSON lines")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow pickle (.bin) weights (runs code from the file!)")


def layer_table(ckpt: Checkpoint) -> list[dict]:
    """One row per unified layer (and per off-axis section): tensors, parameters, components."""
    infos = ckpt.tensor_infos()
    rows: dict[tuple, dict] = {}
    for name, info in infos.items():
        role = ckpt.layer_map.role(name)
        key = (role.layer if role.layer is not None else 10**9, role.section)
        row = rows.setdefault(
            key,
            {"layer": role.layer, "section": role.section, "tensors": 0, "params": 0, "components": defaultdict(int)},
        )
        row["tensors"] += 1
        row["params"] += info.numel
        row["components"][role.component] += 1
    return [dict(r, components=dict(r["components"])) for _, r in sorted(rows.items(), key=lambda kv: kv[0])]


def run(args: argparse.Namespace) -> int:
    ckpts = [Checkpoint.open(c, allow_pickle=args.allow_pickle) for c in args.checkpoints]
    for ckpt in ckpts:
        lmap = ckpt.layer_map
        if args.json:
            infos = ckpt.tensor_infos()
            for name, info in infos.items():
                r = lmap.role(name)
                print(json.dumps({"name": name, "section": r.section, "layer": r.layer, "component": r.component,
                                  "submodule": r.submodule, "shape": list(info.shape), "dtype": info.dtype}))
            continue
        total = sum(i.numel for i in ckpt.tensor_infos().values())
        print(f"{ckpt.source_id}: {len(lmap)} tensors, {total / 1e6:.2f}M parameters, "
              f"{lmap.n_vision_blocks} vision blocks, {lmap.n_llm_layers} LLM layers, {len(ckpt.shards)} shard(s)")
        print(f"  {'layer':>6}  {'section':<11} {'tensors':>7} {'params':>12}  components")
        for row in layer_table(ckpt):
            layer = "-" if row["layer"] is None else str(row["layer"])
            comps = ", ".join(f"{k}:{v}" for k, v in sorted(row["components"].items()))
            print(f"  {layer:>6}  {row['section']:<11} {row['tensors']:>7} {row['params']:>12,}  {comps}")
    if len(ckpts) > 1:
        labels = [c.source_id for c in ckpts]
        report = check_compatible(ckpts, labels)
        print(f"compatible: {len(ckpts)} checkpoints share all {len(ckpts[0].names)} tensor names and shapes")
        for line in report.dtype_differences[:10]:
            print(f"  dtype differs: {line}")
    return 0
