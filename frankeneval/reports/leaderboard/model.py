"""The leaderboard's data model: columns (one leaf task each), entries (one score) and the board."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS: tuple[str, ...] = ("rule_acc", "judge_acc")
METRIC_LABELS = {"rule_acc": "rule", "judge_acc": "judge"}
DIMENSIONS: tuple[str, ...] = ("perception", "alignment", "vision+reasoning", "reasoning")
CONDITIONS: tuple[str, ...] = ("image", "text", "black", "black+desc")


@dataclass(frozen=True)
class Column:
    """One leaderboard column: a dimension under a condition (one lmms-eval leaf task)."""

    key: str  # the leaf task name
    dimension: str
    condition: str
    label: str

    @property
    def is_control(self) -> bool:
        return self.condition in ("black", "black+desc")


@dataclass
class Entry:
    """One model's score in one column for one metric."""

    value: float | None  # the lmms-eval results file's aggregate
    n: int  # samples that carry a score
    ci: tuple[float, float] | None
    delta_in: float | None = None
    delta_rl: float | None = None
    best: bool = False
    errors: int | None = None  # judge_acc only: items the judge could not decide (judge_error), not in value / n
    hit_limit: int | None = None  # answers that hit max_new_tokens (the task's hit_limit count), when recorded
    timed_out: int | None = None  # answers cut off by the item time limit (timed_out count), not in value / n


@dataclass
class Leaderboard:
    run_dir: Path
    rows: list[str]  # model labels, IN and RL first
    descriptions: dict[str, str]
    kinds: dict[str, str]
    columns: list[Column]
    metrics: list[str]
    entries: dict[tuple[str, str, str], Entry] = field(default_factory=dict)  # (row, column key, metric)
    recipe: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # planned cell key ("model::task") -> why it is not shown
    paper_metric: str = "rule_acc"  # the per-item correctness the paper table and the transitions use
    parts: list = field(default_factory=list)  # metrics.SplitPart of the run, in table order
    paper: dict = field(default_factory=dict)  # (row, part key) -> metrics.PaperCell
    prompts: dict[str, str] = field(default_factory=dict)  # row -> the system prompt its cells recorded ("—": none)
    prompt_reasons: dict[str, str] = field(default_factory=dict)  # row -> why that prompt (when recorded)
    seed: int = 0
    skipped: list[dict] = field(default_factory=list)  # inputs left out as broken (transfer --skip-broken)
    # finished cells' samples files that are not there ("model::leaf task" -> path): their per-item numbers (n, the
    # intervals, the paper table) cannot be computed, and the report says so (samples_note)
    samples_missing: dict[str, str] = field(default_factory=dict)
    # cells not run here, as their runs recorded it: (row, leaf task) -> mark ("†" reused, "‡" regraded, numbered
    # when there are several sources); mark -> its footnote (the source run and, for a regrade, the grading)
    origins: dict[tuple[str, str], str] = field(default_factory=dict)
    origin_notes: dict[str, str] = field(default_factory=dict)

    def get(self, row: str, column: str, metric: str) -> Entry | None:
        return self.entries.get((row, column, metric))

    def row_label(self, row: str) -> str:
        return {"base": "Base", "in": "IN", "rl": "RL"}.get(row, row)

    def prompt(self, row: str) -> str:
        return self.prompts.get(row) or "—"

    def origin_marks(self, row: str, *tasks: str | None) -> list[str]:
        """The marks of the cells behind ``row`` x ``tasks`` (a leaderboard entry: one task; a paper cell: the task
        and its control) that were reused or regraded, in footnote order; [] when every one was run here."""
        marks = {self.origins.get((row, t)) for t in tasks if t}
        return [m for m in self.origin_notes if m in marks]

    def origin_mark(self, row: str, *tasks: str | None) -> str:
        """:meth:`origin_marks` as one text ("" when none)."""
        return "".join(self.origin_marks(row, *tasks))

    def splits(self) -> list[str]:
        return list(dict.fromkeys(p.split for p in self.parts))
