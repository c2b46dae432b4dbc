"""Issue 30 defaults that decide numbers: the reasoning-localization budget is the reference's 2048 new tokens in
both modes."""

from __future__ import annotations

import json

import pytest

from frankeneval.errors import FrankenevalError


@pytest.mark.parametrize("extra", [[], ["--seed-compatible"]])
def test_localize_reasoning_defaults_to_2048_new_tokens(tmp_path, monkeypatch, capsys, extra):
    import frankeneval.commands.localize_reasoning as cmd
    from frankeneval.cli import main

    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) + "\n"
                            for i in range(3)))
    seen = {}

    def stop(args, model):  # the budget is settled before any model is loaded
        seen["max_new_tokens"] = args.max_new_tokens
        raise FrankenevalError("stop here")

    monkeypatch.setattr(cmd, "load_generator", stop)
    rc = main(["localize-reasoning", "--model", "m", "--dataset", "gsm8k", "--data", str(path), "--samples", "0",
               "--out", str(tmp_path / "o"), *extra])
    assert rc == 1 and "stop here" in capsys.readouterr().err
    assert seen["max_new_tokens"] == 2048


def test_seed_compatible_variants_take_the_rule_on_their_own_phrase(tmp_path):
    """The reference applies the name rule to a variant's phrase: Revisual-R1 splices get the reasoner prompt while
    Revisual-R1 IN and RL get the revisual one; the default mode takes the sources' prompt (revisual)."""
    from frankeneval.transferability import cells

    models = {
        "in": {"path": "csfufu/Revisual-R1-Coldstart", "kind": "in", "description": "IN"},
        "rl": {"path": "csfufu/Revisual-R1-final", "kind": "rl", "description": "RL"},
        "v": {"path": "csfufu/Revisual-R1-final", "kind": "variant",
              "description": "Coldstart early 1/3 layers + final late 2/3 layers"},
    }
    seed = cells.system_prompts(tmp_path, models, "auto", seed_compatible=True)
    assert {k: p.name for k, (p, _) in seed.items()} == {"in": "revisual", "rl": "revisual", "v": "reasoner"}
    assert "phrase" in seed["v"][0].reason
    paper = cells.system_prompts(tmp_path, models, "auto")
    assert paper["v"][0].name == "revisual"
    fixed = cells.system_prompts(tmp_path, models, "none", seed_compatible=True)
    assert fixed["v"][0].name == "none"  # a fixed setting is never overridden


@pytest.mark.parametrize("gsm8k", [True, False])
def test_math_rules_credit_only_a_stated_answer(gsm8k):
    """A response whose last number equals the target but states no answer (here: cut off mid-calculation) gets no
    rule credit; the same answer in \\boxed{} does."""
    from frankeneval.tasks.common import TaskSettings, math_results

    settings = TaskSettings.resolve()
    doc = {"id": "q1", "target": "18"}
    cut = math_results(doc, ["She has 16 eggs, eats 3, bakes 4: 16 - 3 - 4 = 9, and 9 * 2 = 18"], settings, "Q",
                       gsm8k=gsm8k)
    assert cut["rule_acc"]["score"] == 0 and cut["rule_acc"]["method"] == "none"
    stated = math_results(doc, ["... so she makes \\boxed{18} dollars"], settings, "Q", gsm8k=gsm8k)
    assert stated["rule_acc"]["score"] == 1 and stated["rule_acc"]["method"] == "boxed"


def test_seed_compatible_decoding_takes_the_checkpoint_repetition_penalty(tiny_lineage, monkeypatch):
    """The reference passes no repetition penalty to generate, so the checkpoint's generation_config applies (a hub
    Qwen2.5-VL ships 1.05); the paper default decodes greedy without one."""
    from frankeneval.model_wrappers.model_args import gen_settings

    from frankeneval.engine.generation import Generator, GenRequest
    from frankeneval.localization import reasoning

    gen = Generator.load(str(tiny_lineage.rl), device="cpu")
    monkeypatch.setattr(gen.model.generation_config, "repetition_penalty", 1.05)
    seen: list[float] = []
    original = gen.model.generate

    def spy(*args, **kwargs):
        seen.append(kwargs["generation_config"].repetition_penalty)
        return original(*args, **kwargs)

    monkeypatch.setattr(gen.model, "generate", spy)
    unit = reasoning.Unit(key="q/plain", request=GenRequest("What is 1 + 1?"), interventions=[])
    reasoning.make_executor(gen, max_new_tokens=2, seed_compatible=True)([unit])
    assert seen == [1.05]
    seen.clear()
    plain = reasoning.make_executor(gen, max_new_tokens=2)([unit])  # the static decoder: no penalty, no generate
    assert seen in ([], [1.0]) and plain
    assert gen_settings({}, 8, seed_compatible=True)[0]["repetition_penalty"] == "checkpoint"
    assert gen_settings({"repetition_penalty": 1.2}, 8, seed_compatible=True)[0]["repetition_penalty"] == 1.2
    assert "repetition_penalty" not in gen_settings({}, 8)[0]


@pytest.mark.parametrize("command", ["localize-vision", "attention-shift"])
def test_probe_commands_default_to_the_released_probes_never_to_rendered_ones(tmp_path, monkeypatch, capsys, command):
    """Without --data or $FRANKENEVAL_DATA/vision_probes: one line saying where to point it (nothing rendered, no
    model loaded); synthetic probes only with --rendered; --seed-compatible never renders."""
    from frankeneval.cli import main

    monkeypatch.delenv("FRANKENEVAL_DATA", raising=False)
    members = ["--model", "m"] if command == "localize-vision" else ["--base", "b", "--in", "i", "--rl", "r"]
    out = tmp_path / "out"
    assert main([command, *members, "--tasks", "counting", "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no probe data" in err[0] and "--rendered" in err[0]
    assert not (out / "probes").exists()
    monkeypatch.setenv("FRANKENEVAL_DATA", str(tmp_path / "nothing here"))
    assert main([command, *members, "--tasks", "counting", "--out", str(out), "--no-progress"]) == 1
    assert "does not exist" in capsys.readouterr().err
    if command == "localize-vision":
        rc = main([command, *members, "--rendered", "--seed-compatible", "--out", str(out), "--no-progress"])
        assert rc == 1 and "never on the rendered ones" in capsys.readouterr().err
