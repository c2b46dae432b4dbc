"""Agreement of frankeneval's MathVista rules with MathVista's official verdicts on recorded responses.

Usage::

    python bench/mathvista_agreement.py FOLDER [FOLDER ...] [--data testmini.jsonl] [--show N] [--baseline]

``FOLDER`` holds ``<model>.jsonl`` (or ``.json``) files, one recorded item per line: ``pid``, ``response`` and the
official ``true_false`` (``extraction`` -- the official GPT extraction -- optional), e.g. taken from the MathVista
repository's ``results/*/output_*.json``. Questions, choices and answers come from the testmini rows (``--data``,
default ``$FRANKENEVAL_DATA/mathvista/testmini.jsonl``). Keep such downloads outside the repository.
``--baseline`` scores with the core rules alone (``frankeneval.tasks.mathvista.scoring.mathvista_final_answer`` /
``mathvista_correct``) instead of the task's :func:`mathvista_rule_verdict`, to compare before / after.

Per item the rules give a verdict -- ``credit`` (a stated answer, right), ``wrong`` (a stated answer, wrong) or
``undecided`` (no stated answer the rules can read: with the judge on, the judge decides) -- and the official
verdict is MathVista's: a GPT extraction, normalized (``normalize_extracted_answer``: ``(x)`` letter, letter, else
the option nearest in edit distance; numbers rounded to the precision) and compared exactly (``safe_equal``).
``grading: paper`` sends every item the rules do not credit to the judge, so rules-then-judge can disagree with
the official verdict only where the rules credit and the official verdict is wrong (or where the judge errs).

Per model the table shows::

    N            items with an official verdict
    agree        rules alone (credit = right, wrong / undecided = not right) vs the official verdict
    false cr.    rules credit, official wrong -- must be 0; each one is listed
      (misread)  ... of which the official extraction names another option / value than the answer the response
                 states (a GPT extraction error, e.g. "The correct answer is (C) 60°." extracted as "B")
    missed       rules read a stated answer as wrong, official right (nearest-option luck on a non-option answer,
                 an official misread, or a rules error: listed)
    undecided    no stated answer the rules can read (judge needed): official right / official wrong
    ceiling      agreement of rules-then-judge with a judge that agrees with the official verdict on every item
                 it sees: 1 - false credits / N (what the rules alone can cost)
    norm ok      frankeneval's copy of the official normalization reproduces the official verdict from the
                 official extraction (a check of ``mathvista_official_correct``)

``--show N`` lists up to N disagreements per class and model (all false credits are always listed).
Run (figures in BENCHMARKS.md)::

    python bench/mathvista_agreement.py /tmp/mathvista_recorded --data /work/shared/data/mathvista/testmini.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

from frankeneval.tasks.mathvista import scoring
from frankeneval.tasks.mathvista.scoring import mathvista_rule_verdict


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
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def doc_of(row: dict) -> dict:
    return {"question": row["question"], "choices": list(row.get("choices") or []), "unit": row.get("unit") or "",
            "precision": row.get("precision"), "answer": str(row["answer"]), "question_type": row["question_type"],
            "answer_type": row["answer_type"]}


def baseline_verdict(response: str, doc: dict) -> dict:
    """The core rules alone (before the task's further stated forms and the letter-conflict check)."""
    extracted, method = scoring.mathvista_final_answer(response, doc)
    ok, pred = (scoring.mathvista_correct(response, doc, extraction=extracted) if extracted is not None
                else (False, None))
    verdict = "credit" if ok else ("wrong" if pred is not None else "undecided")
    return {"verdict": verdict, "correct": bool(ok), "prediction": pred, "extracted": extracted, "method": method}


def official_names_other(doc: dict, item: dict, ours: dict) -> bool:
    """The official extraction, normalized, names another option / value than the one the rules read."""
    ext = item.get("extraction")
    if ext is None or ours["prediction"] is None:
        return False
    official_pred = scoring.mathvista_normalize(ext, doc)
    if doc["question_type"] == "multi_choice":
        return (official_pred is not None
                and scoring._option_key(official_pred) != scoring._option_key(ours["prediction"]))
    return official_pred is None or str(official_pred) != str(ours["prediction"])


def official_nearest_option(doc: dict, item: dict) -> bool:
    """Multiple choice: the official extraction is no letter and no option (MathVista then takes the option nearest
    in edit distance, "92.5" -> "97", "N/A" -> some option)."""
    ext = item.get("extraction")
    if doc["question_type"] != "multi_choice" or ext is None:
        return False
    letters = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
    e = str(ext).strip()
    return not (e in letters or e in doc["choices"]
                or any(f"({x})" in e for x in letters + [x.lower() for x in letters]))


def classify(doc: dict, item: dict, ours: dict) -> str:
    official = bool(item["true_false"])
    if ours["verdict"] == "credit":
        if official:
            return "agree"
        return "false_credit_official_misread" if official_names_other(doc, item, ours) else "false_credit"
    if ours["verdict"] == "undecided":
        return "undecided_official_right" if official else "undecided_official_wrong"
    if not official:
        return "agree"
    if official_nearest_option(doc, item):
        return "missed_official_nearest_option"
    if official_names_other(doc, item, ours):
        return "missed_official_misread"
    return "missed"


def _pct(k: int, n: int) -> float:
    return 100.0 * k / n if n else float("nan")


def short(s, n=160) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 3] + "..."


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--data",
                    default=os.path.join(os.environ.get("FRANKENEVAL_DATA", ""), "mathvista", "testmini.jsonl"))
    ap.add_argument("--show", type=int, default=3, help="disagreements listed per class and model (false credits: all)")
    ap.add_argument("--baseline", action="store_true", help="the core rules alone (scoring.mathvista_correct)")
    args = ap.parse_args(argv)
    rows = load_rows(Path(args.data))
    files = sorted(p for folder in args.folders for p in Path(folder).iterdir() if p.suffix in (".json", ".jsonl"))
    if not files:
        print(f"no .json/.jsonl files in {args.folders}", file=sys.stderr)
        return 1
    verdict_of = (lambda r, d: baseline_verdict(r, d)) if args.baseline else (lambda r, d: mathvista_rule_verdict(r, d))
    head = (f"{'model':46s} {'N':>4s} {'agree':>7s} {'false cr.':>9s} {'(misread)':>9s} {'missed':>6s} "
            f"{'undecided R/W':>13s} {'ceiling':>8s} {'norm ok':>8s}")
    print(("core rules only (--baseline)\n" if args.baseline else "") + head)
    print("-" * len(head))
    listing = []
    total = Counter()
    for path in files:
        items = [it for it in load_items(path) if str(it.get("pid")) in rows and "true_false" in it]
        classes, shown, norm_ok, norm_n = Counter(), defaultdict(list), 0, 0
        for it in items:
            doc = doc_of(rows[str(it["pid"])])
            ours = verdict_of(str(it.get("response") or ""), doc)
            if it.get("extraction") is not None:
                norm_n += 1
                norm_ok += scoring.mathvista_official_correct(it["extraction"], doc)[0] == bool(it["true_false"])
            cls = classify(doc, it, ours)
            classes[cls] += 1
            if cls not in ("agree", "undecided_official_wrong") and (cls.startswith("false_credit")
                                                                     or len(shown[cls]) < args.show):
                shown[cls].append(f"    pid {it['pid']:>4s} {cls}: official={bool(it['true_false'])} "
                                  f"official_extraction={it.get('extraction')!r} rules={ours['verdict']} "
                                  f"read={ours['extracted']!r} via {ours['method']} -> {ours['prediction']!r} "
                                  f"(answer {doc['answer']!r})\n        response: {short(it.get('response'))}")
        n = len(items)
        false_credit = classes["false_credit"] + classes["false_credit_official_misread"]
        missed = sum(v for k, v in classes.items() if k.startswith("missed"))
        und_r, und_w = classes["undecided_official_right"], classes["undecided_official_wrong"]
        agree = classes["agree"] + und_w
        norm = f"{norm_ok}/{norm_n}" if norm_n else "-"
        print(f"{path.parent.name + '/' + path.stem:46s} {n:4d} {_pct(agree, n):6.1f}% {false_credit:9d} "
              f"{classes['false_credit_official_misread']:9d} {missed:6d} {f'{und_r}/{und_w}':>13s} "
              f"{_pct(n - false_credit, n):7.1f}% {norm:>8s}")
        total.update(classes)
        total["n"] += n
        if shown:
            listing.append(f"{path.parent.name}/{path.stem}:")
            for cls in sorted(shown):
                listing.extend(shown[cls])
    n = total["n"]
    fc = total["false_credit"] + total["false_credit_official_misread"]
    print("-" * len(head))
    print(f"{'all':46s} {n:4d} {100.0 * (total['agree'] + total['undecided_official_wrong']) / n:6.1f}% {fc:9d} "
          f"{total['false_credit_official_misread']:9d} "
          f"{sum(v for k, v in total.items() if k.startswith('missed')):6d} "
          f"{str(total['undecided_official_right']) + '/' + str(total['undecided_official_wrong']):>13s} "
          f"{100.0 * (n - fc) / n:7.1f}%")
    by_class = {k: v for k, v in sorted(total.items()) if k not in ("n", "agree")}
    print(f"disagreement classes: {by_class}")
    if listing:
        print("\n" + "\n".join(listing))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
