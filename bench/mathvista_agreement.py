"""Agreement of frankeneval's MathVista rules with MathVista's official verdicts on recorded responses.

Input: a folder of ``<model>.jsonl`` (or ``.json``) files, one item per line: ``pid``, ``response`` and the official
``true_false`` (``extraction`` optional), e.g. taken from the MathVista repository's ``results/*/output_*.json``.
Questions, choices and answers come from the testmini rows (``--data``, default ``$FRANKENEVAL_DATA/mathvista/
testmini.jsonl``). Keep such downloads outside the repository.

Per model it prints the items, the agreement of the rules alone (no judge) with the official verdict, and the
disagreements by class:

* ``rules_credit_official_wrong``  -- a false credit by the rules (the issue's bug class; must be 0);
* ``official_credit_nearest_option`` -- the official normalization picked the option nearest in edit distance to a
  non-option answer ("N/A", "92.5") and that happened to be right: the rules never guess;
* ``no_stated_answer`` -- official credit from an LLM-extracted answer the response never states as final (a
  sentence, "there are 2 items ..."): with the judge on, the judge decides these;
* ``other``.

With ``extraction`` recorded it also checks that :func:`mathvista_official_correct` (MathVista's normalization as
implemented here) reproduces every official verdict from the official extraction.

    python bench/mathvista_agreement.py /tmp/mathvista_recorded --data /work/shared/data/mathvista/testmini.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

from frankeneval.core import scoring


def load_rows(path: Path) -> dict[str, dict]:
    rows = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows[str(r["pid"])] = r
    return rows


def load_items(path: Path) -> list[dict]:
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return list(data.values()) if isinstance(data, dict) else list(data)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def doc_of(row: dict) -> dict:
    return {"question": row["question"], "choices": list(row.get("choices") or []), "unit": row.get("unit") or "",
            "precision": row.get("precision"), "answer": str(row["answer"]), "question_type": row["question_type"],
            "answer_type": row["answer_type"]}


def classify(doc: dict, item: dict, ours: bool, extracted: str | None) -> str:
    official = bool(item["true_false"])
    if ours and not official:
        return "rules_credit_official_wrong"
    ext = item.get("extraction")
    if doc["question_type"] == "multi_choice" and ext is not None:
        letters = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
        e = str(ext).strip()
        stated = e in letters or e in doc["choices"] or any(f"({x})" in e for x in letters)
        if not stated:
            return "official_credit_nearest_option"
    if extracted is None:
        return "no_stated_answer"
    return "other"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--data", default=os.path.join(os.environ.get("FRANKENEVAL_DATA", ""), "mathvista", "testmini.jsonl"))
    ap.add_argument("--show", type=int, default=3, help="disagreements shown per model")
    args = ap.parse_args(argv)
    rows = load_rows(Path(args.data))
    files = sorted(p for p in Path(args.folder).iterdir() if p.suffix in (".json", ".jsonl"))
    if not files:
        print(f"no .json/.jsonl files in {args.folder}", file=sys.stderr)
        return 1
    print(f"{'model':36s} {'items':>5s} {'agree':>7s} {'official':>8s} {'rules':>6s} {'norm ok':>8s}  disagreements")
    for path in files:
        items = [it for it in load_items(path) if str(it.get("pid")) in rows and "true_false" in it]
        agree, classes, shown, norm_ok, norm_n = 0, Counter(), [], 0, 0
        n_official = n_rules = 0
        for it in items:
            doc = doc_of(rows[str(it["pid"])])
            response = str(it.get("response") or "")
            extracted, _method = scoring.mathvista_final_answer(response, doc)
            ours = scoring.mathvista_correct(response, doc, extraction=extracted)[0] if extracted is not None else False
            official = bool(it["true_false"])
            n_official += official
            n_rules += ours
            if it.get("extraction") is not None:
                norm_n += 1
                norm_ok += scoring.mathvista_official_correct(it["extraction"], doc)[0] == official
            if ours == official:
                agree += 1
                continue
            cls = classify(doc, it, ours, extracted)
            classes[cls] += 1
            if len(shown) < args.show:
                shown.append(f"    pid {it['pid']}: {cls}; official={official} ours={ours} extracted={extracted!r} "
                             f"official_extraction={it.get('extraction')!r}")
        n = len(items)
        pct = 100.0 * agree / n if n else float("nan")
        norm = f"{norm_ok}/{norm_n}" if norm_n else "-"
        print(f"{path.stem:36s} {n:5d} {pct:6.1f}% {n_official:8d} {n_rules:6d} {norm:>8s}  {dict(classes)}")
        for line in shown:
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
