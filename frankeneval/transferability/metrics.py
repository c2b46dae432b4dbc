"""The paper's transfer metrics from per-item correctness (pure functions; no files, no models).

A *per-item table* maps a doc id to its correctness: ``True`` / ``False`` (or 1 / 0), or ``None`` when the item was
not scored (a judge error, no score). A setting A (the image) and its control B (a black image, or a black image +
description) are paired **by doc id**: ``N`` = the items scored (not ``None``) on both sides; every other item seen
on either side is *excluded* and counted (``excluded_unscored``: present on both sides but unscored on at least one;
``excluded_unpaired``: present on one side only).

Over the N paired items (``docs/method.md``, "Transferability"):

- ``n_TT``, ``n_TF`` (A right, B wrong), ``n_FT``, ``n_FF``; ``acc_A``, ``acc_B``, ``delta = acc_A - acc_B``;
- ``net_gain = n_FT - n_TF``; ``side_effect_rate = n_TF / (n_TT + n_TF)``; ``lift_rate = n_FT / (n_FF + n_FT)``;
- **M_vis = n_TF / N** on perception (image vs black image), **M_v2r = n_TT / N** on alignment and v2
  vision+reasoning (image vs black image + description), **M_rea = accuracy** on reasoning (text only).

A rate whose denominator is 0 (e.g. N = 0) is ``None``, never 0.

Intervals: every M is the mean of a per-item 0/1 indicator (M_vis: A and not B; M_v2r: A and B; M_rea: A), so its
95 % interval is a **percentile bootstrap over items** (2000 resamples, ``numpy.random.default_rng(seed)``, seed 0 by
default; the same procedure as :func:`bootstrap_mean_ci` here, which the leaderboard uses). A difference to IN
(``RL - IN``, ``variant - IN``) is **paired**: the items both models scored (the intersection of their paired ids), the
mean of the per-item indicator differences, and a percentile bootstrap that resamples those items (both models
together).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "BOOTSTRAP_SAMPLES",
    "DIMENSION_METRIC",
    "Indicator",
    "PairedDiff",
    "PaperCell",
    "SplitPart",
    "Transitions",
    "bootstrap_mean_ci",
    "indicator",
    "m_rea",
    "m_v2r",
    "m_vis",
    "paired_bootstrap_diff",
    "paired_diff",
    "paper_cells",
    "transitions",
]

BOOTSTRAP_SAMPLES = 2000
LEVEL = 0.95

# which paper metric a dimension (split part) reports
DIMENSION_METRIC: dict[str, str] = {
    "perception": "M_vis",
    "alignment": "M_v2r",
    "vision+reasoning": "M_v2r",
    "reasoning": "M_rea",
}

Table = Mapping[Any, Any]  # doc id -> True / False / 1 / 0 / None


def _correct(value: Any) -> bool | None:
    """``True`` / ``False`` of one table value; ``None`` for unscored (None, NaN, anything not 0/1-like)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        if math.isnan(value):
            return None
        return bool(value >= 0.5)
    return None


def _div(a: float, b: float) -> float | None:
    return None if b == 0 else a / b


# -- bootstrap --------------------------------------------------------------------------------------
def bootstrap_mean_ci(values: Sequence[float], *, seed: int = 0, n_boot: int = BOOTSTRAP_SAMPLES,
                      level: float = LEVEL) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (resampling items); ``None`` for no items."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def paired_bootstrap_diff(x: Sequence[float], y: Sequence[float], *, seed: int = 0, n_boot: int = BOOTSTRAP_SAMPLES,
                          level: float = LEVEL) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``mean(x - y)`` for paired per-item values (items resampled together)."""
    x = np.asarray(list(x), dtype=np.float64)
    y = np.asarray(list(y), dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired values of different lengths ({x.size} vs {y.size})")
    return bootstrap_mean_ci(x - y, seed=seed, n_boot=n_boot, level=level)


# -- transitions ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Transitions:
    """A setting A against its control B on the same items (see the module docstring)."""

    n: int
    n_tt: int
    n_tf: int
    n_ft: int
    n_ff: int
    excluded_unscored: int  # on both sides, unscored (judge error) on at least one
    excluded_unpaired: int  # on one side only
    ids: tuple = ()  # the N paired ids, in order
    a: tuple = ()  # correctness under A of those ids (bools)
    b: tuple = ()  # correctness under B

    @property
    def excluded(self) -> int:
        return self.excluded_unscored + self.excluded_unpaired

    @property
    def acc_a(self) -> float | None:
        return _div(self.n_tt + self.n_tf, self.n)

    @property
    def acc_b(self) -> float | None:
        return _div(self.n_tt + self.n_ft, self.n)

    @property
    def delta(self) -> float | None:
        return None if self.n == 0 else self.acc_a - self.acc_b  # type: ignore[operator]

    @property
    def net_gain(self) -> int:
        return self.n_ft - self.n_tf

    @property
    def side_effect_rate(self) -> float | None:
        return _div(self.n_tf, self.n_tt + self.n_tf)

    @property
    def lift_rate(self) -> float | None:
        return _div(self.n_ft, self.n_ff + self.n_ft)

    @property
    def m_vis(self) -> float | None:
        return _div(self.n_tf, self.n)

    @property
    def m_v2r(self) -> float | None:
        return _div(self.n_tt, self.n)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("ids", "a", "b")}
        for k in ("excluded", "acc_a", "acc_b", "delta", "net_gain", "side_effect_rate", "lift_rate", "m_vis", "m_v2r"):
            d[k] = getattr(self, k)
        return d


def transitions(a: Table, b: Table) -> Transitions:
    """Pair A and B by doc id and count the four transitions (ids in A's order, then B's)."""
    ids = list(a) + [k for k in b if k not in a]
    paired, ca, cb = [], [], []
    unscored = unpaired = 0
    for k in ids:
        if k not in a or k not in b:
            unpaired += 1
            continue
        x, y = _correct(a[k]), _correct(b[k])
        if x is None or y is None:
            unscored += 1
            continue
        paired.append(k)
        ca.append(x)
        cb.append(y)
    tt = sum(x and y for x, y in zip(ca, cb))
    tf = sum(x and not y for x, y in zip(ca, cb))
    ft = sum((not x) and y for x, y in zip(ca, cb))
    ff = len(paired) - tt - tf - ft
    return Transitions(n=len(paired), n_tt=tt, n_tf=tf, n_ft=ft, n_ff=ff, excluded_unscored=unscored,
                       excluded_unpaired=unpaired, ids=tuple(paired), a=tuple(ca), b=tuple(cb))


# -- the paper's metrics as per-item indicators ------------------------------------------------------
@dataclass(frozen=True)
class Indicator:
    """One paper metric as the mean of a per-item 0/1 indicator over its N items, with its interval."""

    metric: str  # M_vis, M_v2r or M_rea
    values: dict  # doc id -> 0/1 (the items in N)
    excluded: int  # items seen but not in N (unscored on either side, or on one side only)
    ci: tuple[float, float] | None = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def value(self) -> float | None:
        return _div(sum(self.values.values()), self.n)


def indicator(metric: str, a: Table, b: Table | None = None, *, seed: int = 0,
              n_boot: int = BOOTSTRAP_SAMPLES) -> Indicator:
    """``M_vis`` (A right, B wrong), ``M_v2r`` (A right and B right) or ``M_rea`` (A right; ``b`` unused) per item."""
    if metric == "M_rea":
        vals = {k: int(c) for k, v in a.items() if (c := _correct(v)) is not None}
        excluded = len(a) - len(vals)
    elif metric in ("M_vis", "M_v2r"):
        if b is None:
            raise ValueError(f"{metric} needs the control's per-item table")
        t = transitions(a, b)
        pick = (lambda x, y: x and not y) if metric == "M_vis" else (lambda x, y: x and y)
        vals = {k: int(pick(x, y)) for k, x, y in zip(t.ids, t.a, t.b)}
        excluded = t.excluded
    else:
        raise ValueError(f"unknown metric {metric!r}; choose M_vis, M_v2r or M_rea")
    return Indicator(metric, vals, excluded, bootstrap_mean_ci(list(vals.values()), seed=seed, n_boot=n_boot))


def m_vis(a: Table, b: Table) -> float | None:
    """M_vis = n_TF / N (perception: right with the image, wrong with a black image)."""
    return transitions(a, b).m_vis


def m_v2r(a: Table, b: Table) -> float | None:
    """M_v2r = n_TT / N (alignment: right with the image and right from the black image + description)."""
    return transitions(a, b).m_v2r


def m_rea(a: Table) -> float | None:
    """M_rea = accuracy over the scored items (reasoning, text only)."""
    return indicator("M_rea", a, n_boot=1).value


@dataclass(frozen=True)
class PairedDiff:
    """``model - reference`` of one metric over the items both scored, with a paired bootstrap interval."""

    value: float | None
    ci: tuple[float, float] | None
    n: int


def paired_diff(model: Indicator, reference: Indicator, *, seed: int = 0,
                n_boot: int = BOOTSTRAP_SAMPLES) -> PairedDiff:
    """``model - reference`` on the ids in both indicators' N (ids in the model's order), paired bootstrap."""
    ids = [k for k in model.values if k in reference.values]
    x = [model.values[k] for k in ids]
    y = [reference.values[k] for k in ids]
    if not ids:
        return PairedDiff(None, None, 0)
    return PairedDiff(float(np.mean(x) - np.mean(y)), paired_bootstrap_diff(x, y, seed=seed, n_boot=n_boot), len(ids))


# -- one run's paper table from per-item tables -------------------------------------------------------
@dataclass(frozen=True)
class SplitPart:
    """One part of a split: ``dimension`` measured on leaf task ``a`` against its control ``b`` (None: reasoning)."""

    split: str  # v1, v2, world, ...
    dimension: str  # perception, alignment, vision+reasoning, reasoning
    a: str  # the leaf task of setting A (the image / text only)
    b: str | None = None  # the leaf task of control B (black image; black image + description)

    @property
    def metric(self) -> str:
        return DIMENSION_METRIC[self.dimension]

    @property
    def key(self) -> str:
        return f"{self.split}:{self.dimension}:{self.a}"


@dataclass(frozen=True)
class PaperCell:
    """One model on one split part: the paper metric, the transitions (paired parts) and the difference to IN."""

    model: str
    part: SplitPart
    metric: Indicator
    transitions: Transitions | None  # None for reasoning (no control)
    diff_ref: PairedDiff | None  # model - reference (None for the reference itself or without it)


def paper_cells(items: Mapping[str, Mapping[str, Table]], parts: Sequence[SplitPart], *, reference: str = "in",
                seed: int = 0, n_boot: int = BOOTSTRAP_SAMPLES) -> dict[tuple[str, str], PaperCell]:
    """``{(model, part.key): PaperCell}`` from ``items`` = ``{model: {leaf task: {doc id: correct}}}``.

    A model lacking a part's task(s) has no cell there. Differences are to ``reference`` (IN), paired per item."""
    out: dict[tuple[str, str], PaperCell] = {}
    for part in parts:
        inds: dict[str, tuple[Indicator, Transitions | None]] = {}
        for model, tables in items.items():
            a = tables.get(part.a)
            b = tables.get(part.b) if part.b else None
            if a is None or (part.b and b is None):
                continue
            ind = indicator(part.metric, a, b, seed=seed, n_boot=n_boot)
            inds[model] = (ind, transitions(a, b) if b is not None else None)
        ref = inds.get(reference)
        for model, (ind, trans) in inds.items():
            diff = None if ref is None or model == reference else paired_diff(ind, ref[0], seed=seed, n_boot=n_boot)
            out[(model, part.key)] = PaperCell(model, part, ind, trans, diff)
    return out
