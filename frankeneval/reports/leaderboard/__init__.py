"""The transferability report: the paper's table, the paired transitions, then the leaderboard.

**The paper's table** (first): per split (v1, v2, ...) model x M_vis (perception: image vs black image, n_TF / N),
M_v2r (alignment and v2 vision+reasoning: image vs black image + description, n_TT / N) and M_rea (reasoning
accuracy), each with a 95 % percentile-bootstrap interval over items, and its difference to IN with a paired
bootstrap interval; then **the transitions** (n_TT / n_TF / n_FT / n_FF, net gain, side-effect and lift rates) per
model x split part. Both come from the per-item correctness in lmms-eval's samples files, paired by doc id
(:mod:`frankeneval.transferability.metrics`): the task's primary score, ``judge_acc`` when the judge ran (rules
first, then the judge), else ``rule_acc``; items unscored on either side (judge errors) are excluded from N and
counted. A split part is found by name: a leaf task and its control ``<task>_black`` (perception) or
``<task>_blackdesc`` (alignment, vision+reasoning); a reasoning task stands alone. Every row shows the system prompt
the cells recorded (``system_prompt`` of the cell records; "—" when none was recorded).

**The leaderboard**: Base, IN, RL and each Frankenstein variant x perception / alignment / reasoning.

Reads every finished cell of a transfer run
(:mod:`frankeneval.transferability.transfer`): lmms-eval's results file gives each
leaf task's score (``rule_acc``, and ``judge_acc`` when the judge ran), its samples file the per-sample
correctness from which the sample count and a seeded 95 % percentile-bootstrap interval are computed.

Columns: a task maps to a dimension from its name (``perception``, ``alignment``, ``reasoning`` for MATH-500 /
GSM8K / reasoning tasks) and a condition (the image; the controls ``black`` and ``black+desc``). Each
entry shows the score, its interval, and its difference to IN and to RL; the best row per column is marked.

Formats: ``md`` (a table per metric), ``csv`` (tidy: one line per model x column x metric), ``html`` (one
self-contained page: tables, a bar chart and the layer plots of characterization / localization runs, all
images embedded as data URIs) and ``latex`` (booktabs).

Modules: ``model`` (columns, entries, the board), ``samples`` (reading samples files), ``tasks`` (classification by
name), ``build`` (reading a run), ``statistics`` (deltas, best marks, the paper table), ``text`` (what the renderers
share), ``render_md`` / ``render_csv`` / ``render_tex`` / ``render_html``, and ``report`` (render and write).
"""
