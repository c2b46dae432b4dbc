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
    ckpt: Checkpoint,
    sections: Iterable[str] | None = None,
    *,
    seed_compatible: bool = False,
    weight_filter: str | None = None,
    llm_only: bool = False,
) -> list[PlannedMatrix]:
    """The analysed matrices of ``ckpt`` (optionally only some sections), in on-disk order. ``seed_compatible``: the
    reference scripts' selection -- also the tensors only its energy script counts (``visual.merger.ln_q.weight``),
    and none of the matrices off the unified axis (patch_embed, embed_tokens, lm_head), which it drops.
    ``weight_filter`` (:func:`matches_weight_filter`) and ``llm_only`` (section ``llm``: the decoder layers, unified
    layers > 0) narrow the selection further."""
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
        and not (llm_only and role.section != "llm")
        and (weight_filter is None or matches_weight_filter(role, weight_filter, lmap))
    ]
    plan.sort(key=lambda p: (order.get(infos[p.name].shard, 0), offsets.get(p.name, 0), p.name))
    return plan


def matches_weight_filter(role: TensorRole, weight_filter: str, lmap: LayerMap) -> bool:
    """The reference's ``--weight-filter`` (``characterisation_diversity.py``, ``_should_analyze``:
    ``if self.weight_filter not in name: return False``): a plain, case-sensitive substring test -- no regex, no
    glob. The reference tests the name its loaded model's ``state_dict`` gives, which depends on the transformers
    version (``model.layers.N...`` or ``model.language_model.layers.N...``), so a tensor matches when the substring
    is in any name it goes by: the canonical (hub) name, the name stored in the checkpoint, or the name current
    transformers uses."""
    from frankeneval.weights.layermap import transformers_name

    names = (role.canonical, role.name, transformers_name(role.canonical, lmap.architecture))
    return any(weight_filter in n for n in names)


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

