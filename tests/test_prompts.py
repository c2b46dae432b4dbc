"""System prompts exactly as METHOD.md "System prompts" (issue 18, deliverable 1): the texts, the name rule on the hub
id or the directory's own name, splices taking their sources' prompt, and the wrapper / localize-reasoning /
attention-shift / transfer using and recording it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from frankeneval.evaluation.prompts import (
    REASONER_SYSTEM_PROMPT,
    REVISUAL_SYSTEM_PROMPT,
    resolve_system_prompt,
)

METHOD = Path(__file__).resolve().parents[2] / "shared" / "METHOD.md"

REASONER = (
    "You are a helpful assistant. When the user asks a question, your response must include two parts: first, the "
    "reasoning process enclosed in <think>...</think> tags, then the final answer enclosed in <answer>...</answer> "
    "tags. Please provide a clear, concise response within <answer> </answer> tags that directly addresses the "
    "question."
)
REVISUAL = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. The "
    "reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put in \\boxed{}."
)


def test_texts_are_method_md_byte_for_byte():
    assert REASONER_SYSTEM_PROMPT == REASONER and REVISUAL_SYSTEM_PROMPT == REVISUAL
    if METHOD.is_file():
        text = METHOD.read_text(encoding="utf-8")
        assert re.search(r"^- reasoner: `([^`]*)`", text, re.MULTILINE).group(1) == REASONER_SYSTEM_PROMPT
        assert (re.search(r"^- revisual \(Revisual-R1 models\): `([^`]*)`", text, re.MULTILINE).group(1)
                == REVISUAL_SYSTEM_PROMPT)


@pytest.mark.parametrize("model, name", [
    ("OpenMMReasoner/OpenMMReasoner-RL", "reasoner"),
    ("OpenMMReasoner/OpenMMReasoner-ColdStart", "reasoner"),
    ("MMR1/MMR1-7B-SFT", "reasoner"),
    ("csfufu/Revisual-R1-final", "revisual"),
    ("Qwen/Qwen2.5-VL-7B-Instruct", "none"),
    ("someone/totally-unknown-model", "reasoner"),  # anything else -> reasoner
    ("Qwen2.5-VL-7B (layers replaced by RL)", "none"),
])
def test_auto_rule_on_hub_ids(model, name):
    p = resolve_system_prompt(model)
    assert p.name == name and p.setting == "auto"
    assert p.text == {"reasoner": REASONER, "revisual": REVISUAL, "none": None}[name]
    assert p.reason.startswith("auto: name ")


def test_reason_names_the_matching_word():
    assert resolve_system_prompt("OpenMMReasoner/OpenMMReasoner-RL").reason == \
        "auto: name 'openmmreasoner/openmmreasoner-rl' contains 'openmmreasoner'"
    assert "anything else" in resolve_system_prompt("x/unknown").reason


def test_rule_reads_the_directory_own_name_never_the_whole_path(tmp_path):
    own = tmp_path / "rl" / "world" / "qwen2.5-vl-7b-instruct"  # 'rl' and 'world' (w-o-r-l-d) in the parents
    assert resolve_system_prompt(str(own)).name == "none"  # not on disk: still its own name
    own.mkdir(parents=True)
    p = resolve_system_prompt(str(own) + "/")
    assert p.name == "none" and "'qwen2.5-vl-7b-instruct'" in p.reason and str(tmp_path) not in p.reason
    assert resolve_system_prompt(tmp_path / "rl").name == "reasoner"  # the own name 'rl' does hit the rule
    # a hub-cache snapshot dir is named by its hub id, not by its commit hash
    snap = tmp_path / "hub" / "models--Qwen--Qwen2.5-VL-7B-Instruct" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    assert resolve_system_prompt(snap).name == "none"


def test_fixed_settings(tmp_path):
    m = "Qwen/Qwen2.5-VL-7B-Instruct"
    assert resolve_system_prompt(m, "reasoner").text == REASONER
    assert resolve_system_prompt("OpenMMReasoner/OpenMMReasoner-RL", "revisual").text == REVISUAL
    p = resolve_system_prompt("OpenMMReasoner/OpenMMReasoner-RL", "none")
    assert p.text is None and p.reason == "fixed: none"
    assert resolve_system_prompt(m, "").text is None
    p = resolve_system_prompt(m, "Be brief,\\nplease.")
    assert (p.name, p.text) == ("text", "Be brief,\nplease.")
    f = tmp_path / "sys.txt"
    f.write_text(REVISUAL + "\n")
    assert resolve_system_prompt(m, f"@{f}").name == "revisual"
    assert resolve_system_prompt(m, str(f)).text == REVISUAL
    with pytest.raises(Exception, match="cannot be read"):
        resolve_system_prompt(m, "@" + str(tmp_path / "missing.txt"))
    rec = resolve_system_prompt(m).record()
    assert set(rec) == {"name", "setting", "reason", "text"}


def _splice(tiny_lineage, out: Path, phrase: str, **sources: Path) -> Path:
    from frankeneval.transferability.mergespec import MergeSpec
    from frankeneval.transferability.splice import materialize

    spec = MergeSpec.parse(phrase, 6, {k: str(v) for k, v in sources.items()})
    return materialize(spec, out, progress=False)


def _named(tmp_path: Path, name: str, target: Path) -> Path:
    link = tmp_path / "named" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)
    return link


def test_splice_takes_the_prompt_of_its_sources(tiny_lineage, tmp_path):
    phrase = "IN early 1/3 layers + RL late 2/3 layers"
    out = _splice(tiny_lineage, tmp_path / "splice-of-plain-names", phrase,
                  **{"in": tiny_lineage.in_, "rl": tiny_lineage.rl})
    p = resolve_system_prompt(out)
    assert p.name == "reasoner" and p.reason.startswith("auto: splice of ")
    assert "in=" in p.reason and "rl=" in p.reason and "contains 'rl'" in p.reason
    # reasoner if any source is: a base model spliced with a reasoning model
    base = _named(tmp_path, "Qwen2.5-VL-7B-Instruct", tiny_lineage.in_)
    omr = _named(tmp_path, "OpenMMReasoner-RL", tiny_lineage.rl)
    mixed = _splice(tiny_lineage, tmp_path / "q", phrase, **{"in": base, "rl": omr})
    assert resolve_system_prompt(mixed).name == "reasoner"
    # no source with a prompt -> none, whatever the splice folder is called
    base2 = _named(tmp_path, "qwen2.5-vl-7b-instruct-copy", tiny_lineage.rl)
    plain = _splice(tiny_lineage, tmp_path / "rl-named-splice", phrase, **{"in": base, "rl": base2})
    assert resolve_system_prompt(plain).name == "none"
    # revisual sources give revisual
    rev = _named(tmp_path, "Revisual-R1-final", tiny_lineage.rl)
    assert resolve_system_prompt(_splice(tiny_lineage, tmp_path / "v", phrase,
                                         **{"in": base, "rl": rev})).name == "revisual"
    # a fixed setting wins over the provenance
    assert resolve_system_prompt(plain, "reasoner").text == REASONER


# --------------------------------------------------------------------------- users of the resolver


def _capture_requests(lm):
    seen = []
    real = lm.generator.generate

    def spy(requests, **kw):
        seen.extend(requests)
        return real(requests, **kw)

    lm.generator.generate = spy
    return seen


def _generate(lm):
    from lmms_eval.api.instance import Instance

    req = Instance(request_type="generate_until", idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1},
                   arguments=("What is 2+2?", {"until": [], "max_new_tokens": 1, "do_sample": False}, None, 0, "t",
                              "test"))
    lm.generate_until([req])


def test_wrapper_default_sends_the_resolved_system_message(tiny_lineage, tmp_path):
    from frankeneval.model_wrappers.franken_qwen import FrankenQwen

    lm = FrankenQwen.create_from_arg_string(f"pretrained={tiny_lineage.rl},device=cpu,dtype=float32")
    assert lm.system_prompt_choice.name == "reasoner" and lm.system_prompt == REASONER
    seen = _capture_requests(lm)
    _generate(lm)
    text = lm.generator.chat_text(seen[0])
    assert f"system\n{REASONER}" in text

    base = _named(tmp_path, "Qwen2.5-VL-7B-Instruct", tiny_lineage.in_)
    lm = FrankenQwen.create_from_arg_string(f"pretrained={base},device=cpu,dtype=float32")
    assert lm.system_prompt_choice.name == "none"
    seen = _capture_requests(lm)
    _generate(lm)
    text = lm.generator.chat_text(seen[0])
    assert seen[0].system is None and REASONER not in text and "<think>" not in text

    lm = FrankenQwen.create_from_arg_string(f"pretrained={base},device=cpu,dtype=float32,system_prompt=revisual")
    assert lm.system_prompt == REVISUAL


def test_localize_reasoning_records_the_prompt(tiny_lineage, tmp_path):
    from frankeneval.cli import main

    data = tmp_path / "gsm8k.jsonl"
    data.write_text(json.dumps({"question": "What is 2+3?", "answer": "#### 5"}) + "\n")
    out = tmp_path / "ablate"
    rc = main(["localize-reasoning", "--model", str(tiny_lineage.rl), "--dataset", "gsm8k", "--data", str(data),
               "--samples", "0", "--layers", "1", "--max-new-tokens", "2", "--batch-size", "2", "--device", "cpu",
               "--no-progress", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "reasoning_localization.json").read_text())
    assert res["system_prompt"]["name"] == "reasoner" and res["system_prompt"]["text"] == REASONER
    assert res["system_prompt"]["reason"] == "auto: name 'rl' contains 'rl'"
    header = json.loads((out / "units.jsonl").read_text().splitlines()[0])
    assert REASONER in json.dumps(header)
    # the old flag keeps its meaning: off = no system message
    out2 = tmp_path / "ablate-off"
    rc = main(["localize-reasoning", "--model", str(tiny_lineage.rl), "--dataset", "gsm8k", "--data", str(data),
               "--samples", "0", "--layers", "1", "--max-new-tokens", "2", "--device", "cpu", "--no-progress",
               "--reasoning-prompt", "off", "--out", str(out2)])
    assert rc == 0
    res = json.loads((out2 / "reasoning_localization.json").read_text())
    assert res["system_prompt"]["name"] == "none" and res["system_prompt"]["reason"] == "fixed: none"


def test_transfer_passes_and_records_each_cells_prompt(tiny_lineage, tmp_path):
    from frankeneval.transferability.manifest import read_manifest
    from frankeneval.transferability.transfer import run_cells

    seen = {}

    def runner(job):
        seen[job.cell.model] = job.model_args
        d = job.output_dir / "m"
        d.mkdir(parents=True)
        (d / "20260101_results.json").write_text(json.dumps({"results": {job.cell.task: {"rule_acc,none": 1.0}}}))

    base = _named(tmp_path, "Qwen2.5-VL-7B-Instruct", tiny_lineage.base)
    models = {"base": {"path": str(base), "kind": "base", "description": "Base"},
              "rl": {"path": str(tiny_lineage.rl), "kind": "rl", "description": "RL"}}
    run_cells(tmp_path / "run", models, ["franken_math500"], runner=runner, progress=lambda *_: None)
    assert "system_prompt=none" in seen["base"] and "system_prompt=reasoner" in seen["rl"]
    recs = [json.loads(line) for line in (tmp_path / "run" / "cells.jsonl").read_text().splitlines()]
    by_model = {r["record"]["model"]: r["record"] for r in recs if isinstance(r, dict) and "record" in r}
    assert by_model["base"]["system_prompt"]["name"] == "none"
    assert by_model["rl"]["system_prompt"]["reason"] == "auto: name 'rl' contains 'rl'"
    manifest = read_manifest(tmp_path / "run")
    assert manifest["models"]["rl"]["system_prompt"] == "reasoner"
    assert manifest["settings"]["system_prompt"] == "auto"
    from frankeneval.reports.leaderboard.build import build_leaderboard

    board = build_leaderboard(tmp_path / "run")  # the report shows each row's prompt
    assert board.prompt("rl") == "reasoner" and board.prompt("base") == "none"
