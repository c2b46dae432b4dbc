"""Derived numbers of a board: differences to IN / RL, best marks, and the paper table with its transitions."""

from __future__ import annotations

from pathlib import Path

from frankeneval.reports.leaderboard.model import Leaderboard
from frankeneval.reports.leaderboard.samples import read_item_table
from frankeneval.reports.leaderboard.tasks import split_parts


def fill_paper(board: Leaderboard, sample_paths: dict[str, dict[str, Path]], paper_metric: str) -> None:
    """The paper's table and the transitions (:mod:`frankeneval.transferability.metrics`) from the samples files."""
    from frankeneval.transferability.metrics import paper_cells

    if paper_metric == "auto":
        paper_metric = "judge_acc" if "judge_acc" in board.metrics else "rule_acc"
    board.paper_metric = paper_metric
    board.parts = split_parts({t for paths in sample_paths.values() for t in paths})
    needed = {t for p in board.parts for t in (p.a, p.b) if t}
    items = {m: {t: read_item_table(path, paper_metric) for t, path in sample_paths.get(m, {}).items() if t in needed}
             for m in board.rows}
    board.paper = paper_cells(items, board.parts, reference="in", seed=board.seed)


def fill_deltas_and_best(board: Leaderboard) -> None:
    for col in board.columns:
        for metric in board.metrics:
            ref_in = board.get("in", col.key, metric)
            ref_rl = board.get("rl", col.key, metric)
            values = []
            for row in board.rows:
                e = board.get(row, col.key, metric)
                if e is None or e.value is None:
                    continue
                e.delta_in = e.value - ref_in.value if ref_in and ref_in.value is not None else None
                e.delta_rl = e.value - ref_rl.value if ref_rl and ref_rl.value is not None else None
                values.append(e.value)
            if not values:
                continue
            top = max(values)
            for row in board.rows:
                e = board.get(row, col.key, metric)
                if e is not None and e.value is not None and abs(e.value - top) < 1e-12:
                    e.best = True
