"""The report as one self-contained HTML page: tables, a bar chart and layer plots as data URIs."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

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


def paper_html(board: Leaderboard) -> list[str]:
    esc = html.escape
    if not board.parts:
        return []
    parts_html = ["<h2>The paper's table: M_vis, M_v2r, M_rea</h2>",
                  f'<p class="legend">{esc(paper_legend(board))}</p>']
    for split in board.splits():
        parts = [p for p in board.parts if p.split == split]
        parts_html.append(f"<h3>{esc(split_title(split))}</h3>")
        parts_html.append(f'<table class="paper" id="paper-{esc(split)}"><thead><tr><th class="model">model</th>'
                          '<th class="model">prompt</th>')
        for p in parts:
            n = paper_n(board, p)
            parts_html.append(f"<th>{esc(part_label(board, p))}<span class='ci'>{esc(n or '')}</span></th><th>ΔIN</th>")
        parts_html.append("</tr></thead><tbody>")
        for row in board.rows:
            cls = ' class="ref"' if row in ("base", "in", "rl") else ""
            reason = board.prompt_reasons.get(row, "")
            parts_html.append(f"<tr{cls}><td class='model'>{esc(board.row_label(row))}</td>"
                              f"<td class='desc' title='{esc(reason)}'>{esc(board.prompt(row))}</td>")
            for p in parts:
                pp = paper_parts(board, row, p)
                mark = _mark(board, row, p.a, p.b) if pp else ""
                parts_html += [f"<td>{esc(x)}{mark if i == 0 else ''}</td>" for i, x in enumerate(pp or ("–", "–"))]
            parts_html.append("</tr>")
        parts_html.append("</tbody></table>")
    trans = transition_rows(board)
    if trans:
        parts_html += ["<h2>Transitions: the image vs its control</h2>",
                       f'<p class="legend">{esc(transitions_legend())}</p>',
                       '<table class="transitions" id="transitions"><thead><tr><th class="model">model</th>'
                       '<th class="model">prompt</th><th class="model">split</th><th class="model">part</th>'
                       + "".join(f"<th>{esc(h)}</th>" for h in TRANSITION_HEADS) + "</tr></thead><tbody>"]
        for row, part, vals in trans:
            parts_html.append(f"<tr><td class='model'>{esc(board.row_label(row))}</td><td class='desc'>"
                              f"{esc(board.prompt(row))}</td><td class='desc'>{esc(part.split)}</td><td class='desc'>"
                              f"{esc(part.dimension)} ({esc(pair_label(part))})"
                              f"{_mark(board, row, part.a, part.b)}</td>"
                              + "".join(f"<td>{esc(v)}</td>" for v in vals) + "</tr>")
        parts_html.append("</tbody></table>")
    return parts_html


def _mark(board: Leaderboard, row: str, *tasks: str | None) -> str:
    """The superscript marks of a reused / regraded cell, each with its footnote as the tooltip."""
    return "".join(f"<sup class='origin' title='{html.escape(board.origin_notes[m])}'>{html.escape(m)}</sup>"
                   for m in board.origin_marks(row, *tasks))


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1b1b1b;background:#fff}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}p.legend{color:#555;font-size:13px}
table{border-collapse:collapse;margin:12px 0;font-size:14px}
th,td{border:1px solid #c9c9c9;padding:6px 10px;text-align:right;vertical-align:top}
th{background:#eef1f6}td.model,th.model{text-align:left;font-weight:600}td.desc{text-align:left;color:#555;font-size:12px}
td.best,tr.ref td.best{background:#e3f4e1;font-weight:700}\
span.ci,span.delta{display:block;font-size:11px;color:#666;font-weight:400}sup.origin{color:#8a4b00;cursor:help}
tr.ref td{background:#fafafa}figure{display:inline-block;margin:8px;vertical-align:top}
figure img{max-width:560px;border:1px solid #ddd}figcaption{font-size:12px;color:#555}
"""


def to_html(board: Leaderboard, plots: Sequence[Path] = (), chart_png: bytes | None = None) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(title(board))}</title><style>{_CSS}</style></head><body>",
             f"<h1>{esc(title(board))}</h1>"]
    parts += [f'<p class="missing">{esc(note)}</p>' for note in report_notes(board)]
    if origin_legend(board):
        parts += [f'<p class="origin">{esc(origin_legend(board))}</p>', '<ul class="origin">']
        parts += [f"<li>{esc(n)}</li>" for n in origin_note_lines(board)] + ["</ul>"]
    parts += paper_html(board)
    if board.metrics:
        parts += ["<h2>Leaderboard</h2>", f'<p class="legend">{esc(legend())}</p>']
    for metric in board.metrics:
        parts.append(f"<h2>{esc(METRIC_LABELS.get(metric, metric))} ({esc(metric)})</h2>")
        parts.append(f'<table class="leaderboard" id="table-{esc(metric)}"><thead><tr><th class="model">model</th>'
                     '<th class="model">blocks</th><th class="model">prompt</th>')
        for c in board.columns:
            parts.append(f"<th>{esc(c.label)}<span class='ci'>{esc(n_of(board, c, metric))}</span></th>")
        parts.append("</tr></thead><tbody>")
        for row in board.rows:
            cls = ' class="ref"' if row in ("base", "in", "rl") else ""
            desc = board.descriptions.get(row, "") if board.kinds.get(row) == "variant" else ""
            parts.append(f"<tr{cls}><td class='model'>{esc(board.row_label(row))}</td><td class='desc'>{esc(desc)}</td>"
                         f"<td class='desc'>{esc(board.prompt(row))}</td>")
            for c in board.columns:
                e = board.get(row, c.key, metric)
                varying = n_of(board, c, metric) == "n varies"
                cp = cell_parts(board, row, c, metric, varying)
                if cp is None or e is None:
                    parts.append("<td>–</td>")
                    continue
                score, ci, deltas = cp
                td = ' class="best"' if e.best else ""
                parts.append(f"<td{td}>{esc(score)}{_mark(board, row, c.key)}"
                             f"<span class='ci'>{esc(ci)}</span>"
                             f"<span class='delta'>{esc(deltas)}</span></td>")
            parts.append("</tr>")
        parts.append("</tbody></table>")
    if chart_png:
        parts.append("<h2>Scores by column</h2>")
        parts.append(f'<figure><img alt="leaderboard chart" src="{_data_uri(chart_png)}"></figure>')
    if plots:
        parts.append("<h2>Layer plots (characterization and localization)</h2>")
        for p in plots:
            try:
                data = p.read_bytes()
            except OSError:
                continue
            parts.append(f'<figure><img alt="{esc(p.stem)}" src="{_data_uri(data)}"><figcaption>'
                         f"{esc(p.parent.name)}/{esc(p.name)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
