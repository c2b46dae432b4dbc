"""The plan of a characterization: which weight matrices are analysed, in on-disk order, and the record
fields that describe each one's role on the unified layer axis."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from frankeneval.characterization import reference
from frankeneval.errors import SpecError
from frankeneval.weights.checkpoint import Checkpoint
from frankeneval.weights.layermap import LayerMap, TensorRole


@dataclass(frozen=True)
class PlannedMatrix:
    """One analysed matrix: its role and stored shape."""

    role: TensorRole
    shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.role.canonical


def plan_matrices(
    ckpt: Checkpoint, sections: Iterable[str] | None = None, *, seed_compatible: bool = False
) -> list[PlannedMatrix]:
    """The analysed matrices of ``ckpt`` (optionally only some sections), in on-disk order. ``seed_compatible``: the
    reference scripts' selection -- also the tensors only its energy script counts (``visual.merger.ln_q.weight``),
    and none of the matrices off the unified axis (patch_embed, embed_tokens, lm_head), which it drops."""
    lmap = ckpt.layer_map
    infos = {ckpt.architecture.canonical_name(k): v for k, v in ckpt.tensor_infos().items()}
    wanted = None if sections is None else set(sections)
    if wanted is not None:
        unknown = wanted - {"vision", "projector", "llm", "embeddings", "final_norm", "lm_head"}
        if unknown:
            raise SpecError(
                f"unknown section(s) {sorted(unknown)}; choose from vision, projector, llm, embeddings, lm_head"
            )
    order = {s: i for i, s in enumerate(ckpt.shards)}
    offsets = {ckpt.architecture.canonical_name(n): loc.offset for n, loc in ckpt.locations().items()}
    plan = [
        PlannedMatrix(role, infos[name].shape)
        for name, role in lmap.roles.items()
        if (
            role.is_analysed_matrix(infos[name].shape)
            or (seed_compatible and reference.is_energy_extra(role, infos[name].shape))
        )
        and (wanted is None or role.section in wanted)
        and not (seed_compatible and role.layer is None)
    ]
    plan.sort(key=lambda p: (order.get(infos[p.name].shard, 0), offsets.get(p.name, 0), p.name))
    return plan


def role_fields(p: PlannedMatrix, lmap: LayerMap) -> dict[str, Any]:
    """The fields of a matrices.jsonl record that say what the matrix is (name, shape, section, layer, ...);
    a 1-D weight (seed-compatible energy only) keeps its one dimension as ``matrix_shape``."""
    r = p.role
    rows = p.shape[0]
    rest = math.prod(p.shape[1:])
    return {
        "name": p.name,
        "shape": list(p.shape),
        "matrix_shape": [rows, rest] if len(p.shape) >= 2 else [rows],
        "numel": rows * rest,
        "section": r.section,
        "layer": r.layer,
        "block": r.block,
        "component": r.component,
        "submodule": r.submodule,
        "region": lmap.region(r),
        "over_reference_limit": reference.over_limit(rows * rest),
    }

