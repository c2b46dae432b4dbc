"""The report as markdown: the paper table, the transitions, then a leaderboard table per metric."""

from __future__ import annotations

from frankeneval.reports.leaderboard.model import METRIC_LABELS, Leaderboard
from frankeneval.reports.leaderboard.text import (
    TRANSITION_HEADS,
    cell_parts,
    legend,
    n_of,
    origin_legend,
    origin_note_lines,
    pair_label,
    paper_legend,
    paper_n,
    paper_parts,
    part_label,
    report_notes,
    split_title,
    title,
    transition_rows,
    transitions_legend,
)


def paper_markdown(board: Leaderboard) -> list[str]:
    if not board.parts:
        return []
    lines = ["## The paper's table: M_vis, M_v2r, M_rea", "", paper_legend(board), ""]
    for split in board.splits():
        parts = [p for p in board.parts if p.split == split]
        heads = []
        for p in parts:
            n = paper_n(board, p)
            heads += [f"{part_label(board, p)}{' ' + n if n else ''}", "ΔIN"]
        lines += [f"### {split_title(split)}", "", "| model | prompt | " + " | ".join(heads) + " |",
                  "|---|---|" + "---:|" * len(heads)]
        for row in board.rows:
            cells = []
            for p in parts:
                pp = paper_parts(board, row, p)
                mark = board.origin_mark(row, p.a, p.b) if pp else ""
                cells += [pp[0] + mark, pp[1]] if pp else ["–", "–"]
            if all(c == "–" for c in cells):
                continue
            lines.append(f"| {board.row_label(row)} | {board.prompt(row)} | " + " | ".join(cells) + " |")
        lines.append("")
    trans = transition_rows(board)
    if trans:
        lines += ["## Transitions: the image vs its control", "", transitions_legend(), "",
                  "| model | prompt | split | part | " + " | ".join(TRANSITION_HEADS) + " |",
                  "|---|---|---|---|" + "---:|" * len(TRANSITION_HEADS)]
        for row, part, vals in trans:
            lines.append(f"| {board.row_label(row)} | {board.prompt(row)} | {part.split} | {part.dimension} "
                         f"({pair_label(part)}){board.origin_mark(row, part.a, part.b)} | " + " | ".join(vals) + " |")
        lines.append("")
    return lines


def to_markdown(board: Leaderboard) -> str:
    lines = [f"# {title(board)}", ""]
    for note in report_notes(board):
        lines += [f"**{note}**", ""]
    if origin_legend(board):
        lines += [f"**{origin_legend(board)}**", ""] + [f"- {n}" for n in origin_note_lines(board)] + [""]
    lines += paper_markdown(board)
    lines += ["## Leaderboard", "", legend(), ""]
    for metric in board.metrics:
        varying = {c.key: n_of(board, c, metric) == "n varies" for c in board.columns}
        heads = [f"{c.label} ({n_of(board, c, metric)})" if not varying[c.key] else c.label for c in board.columns]
        lines.append(f"### {METRIC_LABELS.get(metric, metric)} ({metric})")
        lines.append("")
        lines.append("| model | blocks | prompt | " + " | ".join(heads) + " |")
        lines.append("|---|---|---|" + "---:|" * len(heads))
        for row in board.rows:
            cells = []
            for c in board.columns:
                parts = cell_parts(board, row, c, metric, varying[c.key])
                if parts is None:
                    cells.append("–")
                    continue
                score, ci, deltas = parts
                e = board.get(row, c.key, metric)
                score = f"**{score}**" if e and e.best else score
                score += board.origin_mark(row, c.key)
                cells.append(" ".join(x for x in (score, ci, f"({deltas})" if deltas else "") if x))
            desc = board.descriptions.get(row, "") if board.kinds.get(row) == "variant" else ""
            lines.append(f"| {board.row_label(row)} | {desc.replace('|', '/')} | {board.prompt(row)} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
