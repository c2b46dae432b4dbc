"""The strings every renderer shares: numbers, legends, cell texts, the paper table's cells and notes."""

from __future__ import annotations

from typing import Any

from frankeneval.reports.leaderboard.model import Column, Leaderboard
from frankeneval.transferability.metrics import BOOTSTRAP_SAMPLES


def pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def n_of(board: Leaderboard, col: Column, metric: str) -> str:
    ns = {e.n for r in board.rows if (e := board.get(r, col.key, metric)) is not None}
    return f"n={ns.pop()}" if len(ns) == 1 else "n varies"


def cell_parts(board: Leaderboard, row: str, col: Column, metric: str, show_n: bool) -> tuple[str, str, str] | None:
    """(score, interval, deltas) strings of one entry, or None."""
    e = board.get(row, col.key, metric)
    if e is not None and e.value is None and e.errors:
        return "–", "", f"{e.errors} judge error{'s' if e.errors != 1 else ''}"
    if e is not None and e.value is None and e.timed_out:
        return "–", "", f"{e.timed_out} timed out"
    if e is None or e.value is None:
        return None
    ci = f"[{pct(e.ci[0])}, {pct(e.ci[1])}]" if e.ci else ""
    deltas = []
    if row != "in" and e.delta_in is not None:
        deltas.append(f"ΔIN {pct(e.delta_in, True)}")
    if row != "rl" and e.delta_rl is not None:
        deltas.append(f"ΔRL {pct(e.delta_rl, True)}")
    if show_n:
        deltas.append(f"n={e.n}")
    if e.errors:
        deltas.append(f"{e.errors} judge error{'s' if e.errors != 1 else ''}")
    if e.hit_limit:
        deltas.append(f"{e.hit_limit} hit the token limit")
    if e.timed_out:
        deltas.append(f"{e.timed_out} timed out")
    return pct(e.value), ci, ", ".join(deltas)


def title(board: Leaderboard) -> str:
    s = board.settings
    bits = [f"recipe {board.recipe}" if board.recipe else None,
            f"sample size {s['sample_size']} (seed {s.get('sample_seed')})" if s.get("sample_size") else None]
    return "Transferability report" + (" — " + ", ".join(b for b in bits if b) if any(bits) else "")


def legend() -> str:
    return ("Scores in % (lmms-eval results); [95 % bootstrap interval over samples]; ΔIN / ΔRL: difference to IN / RL "
            "in points; best per column in bold. Judge errors (items the judge could not decide) are left out of the "
            "judge score and counted beside it; answers that hit the token limit are counted beside the score; answers "
            "cut off by the item time limit (timed out) are left out of the score and counted beside it.")


def _short(task: str) -> str:
    return task.removeprefix("franken_")


def split_title(split: str) -> str:
    return {"v1": "Splits v1", "v2": "Splits v2", "world": "The trained world"}.get(split, f"Split {split}")


def part_label(board: Leaderboard, part) -> str:
    """``M_vis (perception)``; the task's name is added when a split has two parts of one dimension."""
    same = [p for p in board.parts if p.split == part.split and p.dimension == part.dimension]
    return f"{part.metric} ({part.dimension}{': ' + _short(part.a) if len(same) > 1 else ''})"


def paper_n(board: Leaderboard, part) -> str | None:
    ns = {c.metric.n for r in board.rows if (c := board.paper.get((r, part.key))) is not None}
    return f"N={ns.pop()}" if len(ns) == 1 else None


def _ci(ci: tuple[float, float] | None, signed: bool = False) -> str:
    return f"[{pct(ci[0], signed)}, {pct(ci[1], signed)}]" if ci else ""


def paper_parts(board: Leaderboard, row: str, part) -> tuple[str, str] | None:
    """(metric text, ΔIN text) of one paper-table cell, or None when the model has no such cell."""
    cell = board.paper.get((row, part.key))
    if cell is None:
        return None
    ind = cell.metric
    bits = [pct(ind.value), _ci(ind.ci)] if ind.value is not None else ["–"]
    extra = []
    if paper_n(board, part) is None or ind.n == 0:
        extra.append(f"N={ind.n}")
    if ind.excluded:
        extra.append(f"{ind.excluded} excluded")
    text = " ".join(b for b in bits if b) + (f" ({', '.join(extra)})" if extra else "")
    if row == "in":
        delta = "ref"
    elif cell.diff_ref is None or cell.diff_ref.value is None:
        delta = "–"
    else:
        delta = f"{pct(cell.diff_ref.value, True)} {_ci(cell.diff_ref.ci, True)}".strip()
    return text, delta


TRANSITION_HEADS = ("N", "excl.", "acc A", "acc B", "Δ", "TT", "TF", "FT", "FF", "net gain", "side-effect", "lift")


def pair_label(part) -> str:
    ctl = "black" if part.b and part.b.endswith("_black") else "black+desc"
    return f"image vs {ctl}"


def transition_rows(board: Leaderboard) -> list[tuple[str, Any, list[str]]]:
    """(row, part, [N, excluded, acc A, acc B, Δ, TT, TF, FT, FF, net gain, side-effect, lift]) of every paired part."""
    out = []
    for part in board.parts:
        if part.b is None:
            continue
        for row in board.rows:
            cell = board.paper.get((row, part.key))
            if cell is None or cell.transitions is None:
                continue
            t = cell.transitions
            out.append((row, part, [str(t.n), str(t.excluded), pct(t.acc_a), pct(t.acc_b), pct(t.delta, True),
                                    str(t.n_tt), str(t.n_tf), str(t.n_ft), str(t.n_ff), f"{t.net_gain:+d}",
                                    pct(t.side_effect_rate), pct(t.lift_rate)]))
    return out


def paper_legend(board: Leaderboard) -> str:
    return (f"Per-item correctness: {board.paper_metric} of lmms-eval's samples files, paired by doc id; N = items "
            "scored under both settings (items unscored on either side, e.g. judge errors, or seen on one side only "
            "are excluded and counted). M_vis = n_TF / N on perception (right with the image, wrong with a black "
            "image); M_v2r = n_TT / N on alignment and vision+reasoning (right with the image and from the black "
            "image + description); M_rea = accuracy on reasoning. In %, [95 % percentile bootstrap over items, "
            f"{BOOTSTRAP_SAMPLES} resamples, seed {board.seed}]; ΔIN = model − IN in points on the items both scored, "
            "[paired bootstrap interval]. Prompt: the system prompt the cells recorded (— : none recorded).")


def transitions_legend() -> str:
    return ("A = the image, B = its control, on the same items. TT / TF (A right, B wrong) / FT / FF: item counts; "
            "acc and Δ = acc A − acc B in %; net gain = n_FT − n_TF; side-effect = n_TF / (n_TT + n_TF); "
            "lift = n_FT / (n_FF + n_FT) (in %; – when the denominator is 0).")


def missing_note(board: Leaderboard) -> str | None:
    """One line naming the planned cells that are not in the tables (and why), or None."""
    if not board.missing:
        return None
    items = []
    for key, why in board.missing.items():
        model, _, task = key.partition("::")
        items.append(f"{board.row_label(model)} × {task} ({why})")
    return f"Missing cells ({len(items)}; rerun `frankeneval transfer` to finish them): " + "; ".join(items)


def samples_note(board: Leaderboard, show: int = 6) -> str | None:
    """One line naming the finished cells' samples files that are not there, or None. Their scores still show (from
    the results files), but nothing per item: n, the intervals and the paper table's pairs."""
    if not board.samples_missing:
        return None
    items = []
    for key, path in list(board.samples_missing.items())[:show]:
        model, _, task = key.partition("::")
        items.append(f"{board.row_label(model)} × {task} ({path})")
    more = f"; ... {len(board.samples_missing) - show} more" if len(board.samples_missing) > show else ""
    return (f"Samples files missing ({len(board.samples_missing)}): n, the intervals and the paper table are not "
            "computed for them; restore the files (or delete the cell's folder and rerun `frankeneval transfer`): "
            + "; ".join(items) + more)


def report_notes(board: Leaderboard) -> list[str]:
    """The report's warnings, in order: missing cells, missing samples files, skipped inputs."""
    return [n for n in (missing_note(board), samples_note(board), skipped_note(board)) if n]


def skipped_note(board: Leaderboard, show: int = 10) -> str | None:
    """One line naming the inputs the cells left out as broken (``transfer --skip-broken``), or None; then, when
    any, the black + description items left out for want of a description (:func:`description_note`)."""
    broken = [x for x in board.skipped if x.get("path") != "description"]
    described = description_note(board, show)
    if not broken:
        return described
    items = [f"{x.get('task')} {x.get('id')}: {x.get('path')} ({x.get('reason')})" for x in broken[:show]]
    more = f"; ... {len(broken) - show} more in transfer.json" if len(broken) > show else ""
    line = (f"Skipped broken inputs ({len(broken)}; left out of their task's cells, --skip-broken): "
            + "; ".join(items) + more)
    return line + (". " + described if described else "")


def description_note(board: Leaderboard, show: int = 10) -> str | None:
    """One line counting the black + description items left out because their description could not be had (the
    judge failed, or the named caption source has none), or None."""
    left = [x for x in board.skipped if x.get("path") == "description"]
    if not left:
        return None
    items = [f"{x.get('task')} {x.get('id')} ({x.get('reason')})" for x in left[:show]]
    more = f"; ... {len(left) - show} more in transfer.json" if len(left) > show else ""
    return (f"Left out of black + description, no description ({len(left)}; not given another kind of "
            "description): " + "; ".join(items) + more)


def origin_note_lines(board: Leaderboard) -> list[str]:
    """The footnotes of the marked cells: ``† taken from the run ... by --reuse-from ...``, ``‡ re-scored by
    --regrade ...``; [] when every cell was run here."""
    return [f"{mark} {text}" for mark, text in board.origin_notes.items()]


def origin_legend(board: Leaderboard) -> str | None:
    """One line introducing the footnotes, or None when no cell is marked."""
    if not board.origin_notes:
        return None
    return ("Cells not run here (marked beside their score; the paper table's cells and the transitions are marked "
            "when the task or its control is):")
