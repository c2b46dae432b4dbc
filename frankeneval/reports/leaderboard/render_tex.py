"""The report as LaTeX (booktabs): a table per split, the transitions, a table per metric."""

from __future__ import annotations

from frankeneval.reports.leaderboard.model import METRIC_LABELS, Leaderboard
from frankeneval.reports.leaderboard.text import (
    TRANSITION_HEADS,
    legend,
    n_of,
    origin_legend,
    origin_note_lines,
    pair_label,
    paper_n,
    paper_parts,
    part_label,
    pct,
    report_notes,
    split_title,
    title,
    transition_rows,
    transitions_legend,
)


def paper_latex(board: Leaderboard) -> list[str]:
    out: list[str] = []
    for split in board.splits():
        parts = [p for p in board.parts if p.split == split]
        out += [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{ll" + "rr" * len(parts) + "}",
                r"\toprule", "Model & Prompt & " + " & ".join(
                    f"{_tex(part_label(board, p))} & $\\Delta$IN" for p in parts) + r" \\",
                " & & " + " & ".join(f"{_tex(paper_n(board, p) or 'N varies')} & " for p in parts) + r" \\",
                r"\midrule"]
        for row in board.rows:
            cells = []
            for p in parts:
                pp = paper_parts(board, row, p)
                cells += [_tex(pp[0]) + _marks(board, row, p.a, p.b), _tex(pp[1])] if pp else ["--", "--"]
            out.append(f"{_tex(board.row_label(row))} & {_tex(board.prompt(row))} & " + " & ".join(cells) + r" \\")
        caption = (f"{_tex(split_title(split))}: M\\_vis = $n_{{TF}}/N$ (perception), M\\_v2r = $n_{{TT}}/N$ "
                   "(alignment, vision+reasoning), M\\_rea = accuracy (reasoning), in \\% with 95\\% bootstrap "
                   "intervals over items; $\\Delta$IN: difference to IN in points with a paired bootstrap interval; "
                   f"per-item correctness: {_tex(board.paper_metric)}.")
        caption += _notes_caption(board)
        out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", rf"\label{{tab:paper-{split}}}",
                r"\end{table}", ""]
    trans = transition_rows(board)
    if trans:
        out += [r"\begin{table}[t]", r"\centering", r"\scriptsize",
                r"\begin{tabular}{llll" + "r" * len(TRANSITION_HEADS) + "}", r"\toprule",
                "Model & Prompt & Split & Part & "
                + " & ".join(_tex(h).replace("Δ", "$\\Delta$") for h in TRANSITION_HEADS) + r" \\", r"\midrule"]
        for row, part, vals in trans:
            out.append(" & ".join([*(_tex(x) for x in (board.row_label(row), board.prompt(row), part.split)),
                                   _tex(f"{part.dimension} ({pair_label(part)})") + _marks(board, row, part.a, part.b),
                                   *(_tex(x) for x in vals)]) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}",
                rf"\caption{{{_tex(transitions_legend())}{_notes_caption(board)}}}",
                r"\label{tab:transitions}", r"\end{table}", ""]
    return out


_TEX_SYMBOLS = {"†": r"\dag{}", "‡": r"\ddag{}"}


def _tex_mark(mark: str) -> str:
    return "".join(_TEX_SYMBOLS.get(ch, ch) for ch in mark)


def _marks(board: Leaderboard, row: str, *tasks: str | None) -> str:
    """The reused / regraded marks of a cell as a superscript ("" when it was run here)."""
    marks = board.origin_marks(row, *tasks)
    return rf"\textsuperscript{{{','.join(_tex_mark(m) for m in marks)}}}" if marks else ""


def _notes_caption(board: Leaderboard) -> str:
    """The footnotes of the marked cells, for a caption ("" when none)."""
    if not board.origin_notes:
        return ""
    return " " + " ".join(f"{_tex_mark(m)}\\,{_tex(t)}." for m, t in board.origin_notes.items())


def _tex(text: str) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(repl.get(ch, ch) for ch in text)


def to_latex(board: Leaderboard) -> str:
    out = [f"% {title(board)}", "% " + legend(), "% needs \\usepackage{booktabs}"]
    out += ["% " + note for note in report_notes(board)]
    out += ["% " + note for note in ([origin_legend(board)] + origin_note_lines(board) if origin_legend(board) else [])]
    out += paper_latex(board)
    for metric in board.metrics:
        cols = board.columns
        out += [r"\begin{table}[t]", r"\centering", r"\small",
                r"\begin{tabular}{l" + "r" * len(cols) + "}", r"\toprule",
                "Model & " + " & ".join(_tex(c.label) for c in cols) + r" \\",
                " & " + " & ".join(_tex(n_of(board, c, metric)) for c in cols) + r" \\", r"\midrule"]
        for i, row in enumerate(board.rows):
            if i == sum(r in ("base", "in", "rl") for r in board.rows) and 0 < i < len(board.rows):
                out.append(r"\midrule")
            cells = []
            for c in cols:
                e = board.get(row, c.key, metric)
                if e is None or e.value is None:
                    cells.append("--")
                    continue
                v = pct(e.value)
                v = rf"\textbf{{{v}}}" if e.best else v
                ci = rf"{{\scriptsize[{pct(e.ci[0])}, {pct(e.ci[1])}]}}" if e.ci else ""
                d = []
                if row != "in" and e.delta_in is not None:
                    d.append(rf"{pct(e.delta_in, True)}")
                if row != "rl" and e.delta_rl is not None:
                    d.append(rf"{pct(e.delta_rl, True)}")
                dd = rf" {{\scriptsize({'/'.join(d)})}}" if d else ""
                cells.append(f"{v}{_marks(board, row, c.key)}\\,{ci}{dd}")
            out.append(_tex(board.row_label(row)) + " & " + " & ".join(cells) + r" \\")
        caption = (f"{METRIC_LABELS.get(metric, metric)} accuracy (\\%) with 95\\% bootstrap intervals; "
                   "in brackets the difference to IN / RL in points; best per column in bold."
                   + _notes_caption(board))
        out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}",
                rf"\label{{tab:transfer-{metric.replace('_', '-')}}}", r"\end{table}", ""]
    return "\n".join(out)
