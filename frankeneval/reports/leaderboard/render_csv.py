"""The report as one tidy CSV: paper, transitions and leaderboard rows."""

from __future__ import annotations

import csv
import io
from typing import Any

from frankeneval.reports.leaderboard.model import Leaderboard
from frankeneval.reports.leaderboard.tasks import task_split

CSV_FIELDS = ["table", "model", "kind", "prompt", "prompt_reason", "description", "split", "dimension", "column",
              "task", "control_task", "condition", "correctness", "metric", "value", "ci_low", "ci_high", "n",
              "excluded", "excluded_unscored", "excluded_unpaired", "delta_in", "delta_in_ci_low", "delta_in_ci_high",
              "delta_in_n", "delta_rl", "best", "judge_errors", "hit_limit", "timed_out", "acc_a", "acc_b", "delta",
              "n_tt", "n_tf", "n_ft", "n_ff", "net_gain", "side_effect_rate", "lift_rate", "m_vis", "m_v2r",
              "origin", "origin_note"]


def paper_csv_rows(board: Leaderboard) -> list[dict[str, Any]]:
    """Tidy rows of the paper table (``table=paper``) and the transitions (``table=transitions``)."""
    out: list[dict[str, Any]] = []
    for part in board.parts:
        for row in board.rows:
            cell = board.paper.get((row, part.key))
            if cell is None:
                continue
            ind, d = cell.metric, cell.diff_ref
            base = {"model": board.row_label(row), "kind": board.kinds.get(row, ""), "prompt": board.prompt(row),
                    "prompt_reason": board.prompt_reasons.get(row, ""), "split": part.split,
                    "dimension": part.dimension, "task": part.a, "control_task": part.b or "",
                    "correctness": board.paper_metric}
            base.update(_origin(board, row, part.a, part.b))
            out.append({"table": "paper", **base, "metric": part.metric, "value": _num(ind.value),
                        "ci_low": _num(ind.ci[0] if ind.ci else None), "ci_high": _num(ind.ci[1] if ind.ci else None),
                        "n": ind.n, "excluded": ind.excluded,
                        "delta_in": _num(d.value if d else None),
                        "delta_in_ci_low": _num(d.ci[0] if d and d.ci else None),
                        "delta_in_ci_high": _num(d.ci[1] if d and d.ci else None), "delta_in_n": d.n if d else ""})
            t = cell.transitions
            if t is not None:
                out.append({"table": "transitions", **base, "n": t.n, "excluded": t.excluded,
                            "excluded_unscored": t.excluded_unscored, "excluded_unpaired": t.excluded_unpaired,
                            "acc_a": _num(t.acc_a), "acc_b": _num(t.acc_b), "delta": _num(t.delta),
                            "n_tt": t.n_tt, "n_tf": t.n_tf, "n_ft": t.n_ft, "n_ff": t.n_ff, "net_gain": t.net_gain,
                            "side_effect_rate": _num(t.side_effect_rate), "lift_rate": _num(t.lift_rate),
                            "m_vis": _num(t.m_vis), "m_v2r": _num(t.m_v2r)})
    return out


def to_csv(board: Leaderboard) -> str:
    """One tidy CSV, ``table`` first: ``paper`` rows (model x split part: metric, interval, N, excluded, ΔIN and its
    paired interval), ``transitions`` rows (n_TT ... lift), then ``leaderboard`` rows (model x column x metric)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n", restval="")
    w.writeheader()
    for r in paper_csv_rows(board):
        w.writerow(r)
    for row in board.rows:
        for c in board.columns:
            for metric in board.metrics:
                e = board.get(row, c.key, metric)
                if e is None:
                    continue
                w.writerow({"table": "leaderboard", "model": board.row_label(row), "kind": board.kinds.get(row, ""),
                            "prompt": board.prompt(row), "prompt_reason": board.prompt_reasons.get(row, ""),
                            "description": board.descriptions.get(row, ""), "column": c.label, "task": c.key,
                            "split": task_split(c.key), "dimension": c.dimension, "condition": c.condition,
                            "metric": metric, "value": _num(e.value), "ci_low": _num(e.ci[0] if e.ci else None),
                            "ci_high": _num(e.ci[1] if e.ci else None), "n": e.n, "delta_in": _num(e.delta_in),
                            "delta_rl": _num(e.delta_rl), "best": int(e.best),
                            "judge_errors": "" if e.errors is None else e.errors,
                            "hit_limit": "" if e.hit_limit is None else e.hit_limit,
                            "timed_out": "" if e.timed_out is None else e.timed_out,
                            **_origin(board, row, c.key)})
    return buf.getvalue()


def _origin(board: Leaderboard, row: str, *tasks: str | None) -> dict[str, str]:
    """``origin`` (the marks: ``†`` reused by --reuse-from, ``‡`` regraded by --regrade; "" run here) and
    ``origin_note`` (their footnotes) of the cells behind a row."""
    marks = board.origin_marks(row, *tasks)
    return {"origin": " ".join(marks), "origin_note": " | ".join(f"{m} {board.origin_notes[m]}" for m in marks)}


def _num(x: float | None) -> str:
    return "" if x is None else repr(float(x))
