"""One layer, one number: ``localize-reasoning --layers L``, the wrapper's ``intervention=ablate:L`` and a freeze
spec naming ``L`` all act on decoder layer ``L - 1`` -- and the ablations equal a checkpoint whose layer ``L`` has
its ``o_proj`` and ``down_proj`` zeroed, run unablated (issue 16, "Done when"). For L = 1 and L = n.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

PROBLEMS = [
    (("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
      "How many clips did Natalia sell altogether in April and May?"), "#### 72"),
    (("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
      "How much did she earn?"), "#### 10"),
]
MAX_NEW = 10


@pytest.fixture(scope="module")
def n_layers(tiny_lineage) -> int:
    return tiny_lineage.spec.num_hidden_layers


@pytest.fixture(scope="module")
def gsm8k_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gsm8k") / "test.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in PROBLEMS))
    return path


def zeroed_checkpoint(src, dst, decoder_layer: int):
    """A copy of ``src`` whose decoder layer ``decoder_layer`` has its o_proj and down_proj weights zeroed."""
    from safetensors.torch import load_file, save_file

    from frankeneval.weights.layermap import canonical_name

    shutil.copytree(src, dst)
    targets = {f"model.layers.{decoder_layer}.self_attn.o_proj.weight",
               f"model.layers.{decoder_layer}.mlp.down_proj.weight"}
    hit = set()
    for f in sorted(dst.glob("*.safetensors")):
        tensors = load_file(f)
        for name in tensors:
            if canonical_name(name) in targets:
                tensors[name] = torch.zeros_like(tensors[name])
                hit.add(canonical_name(name))
        save_file(tensors, f, metadata={"format": "pt"})
    assert hit == targets
    return dst


def prompts():
    from frankeneval.localization.reasoning import question_prompt

    return [question_prompt(q) for q, _ in PROBLEMS]


def generate(gen, interventions=None) -> list[str]:
    from frankeneval.engine.generation import GenRequest

    return [gen.generate([GenRequest(p, [], None)], max_new_tokens=MAX_NEW, interventions=[interventions or []],
                         batch_size=1)[0].text for p in prompts()]


def sweep_answers(tiny_lineage, gsm8k_file, layer: int, out) -> list[str]:
    """``frankeneval localize-reasoning --layers L``: the ablated responses, from its resumable unit log."""
    from frankeneval.cli import main

    rc = main(["localize-reasoning", "--model", str(tiny_lineage.rl), "--dataset", "gsm8k", "--data", str(gsm8k_file),
               "--samples", "0", "--layers", str(layer), "--reasoning-prompt", "off", "--max-new-tokens", str(MAX_NEW),
               "--batch-size", "1", "--device", "cpu", "--no-progress", "--out", str(out)])
    assert rc == 0
    results = json.loads((out / "reasoning_localization.json").read_text())
    assert [r["layer"] for r in results["layers"]] == [layer]
    records = {}
    for line in (out / "units.jsonl").read_text().splitlines():
        obj = json.loads(line)
        if isinstance(obj, dict) and "key" in obj and "record" in obj:
            records[obj["key"]] = obj["record"]
    return [records[f"gsm8k/{i}/L{layer}"]["response"] for i in range(len(PROBLEMS))]


def wrapper_answers(tiny_lineage, layer: int) -> list[str]:
    """The lmms-eval model built from model args, ``intervention=ablate:L``, greedy ``generate_until``."""
    from frankeneval.model_wrappers.franken_qwen import FrankenQwen
    from lmms_eval.api.instance import Instance

    lm = FrankenQwen.create_from_arg_string(f"pretrained={tiny_lineage.rl},device=cpu,batch_size=1,"
                                          f"intervention=ablate:{layer},"
                                          "system_prompt=none")  # as the sweep's --reasoning-prompt off
    reqs = [
        Instance(request_type="generate_until", idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1},
                 arguments=(p, {"until": [], "max_new_tokens": MAX_NEW, "do_sample": False}, None, i, "t", "test"))
        for i, p in enumerate(prompts())
    ]
    return lm.generate_until(reqs)


@pytest.mark.parametrize("which", ["first", "last"])
def test_one_layer_number_means_one_decoder_layer_everywhere(tiny_lineage, gsm8k_file, n_layers, tmp_path, which):
    from frankeneval.engine.generation import Generator
    from frankeneval.engine.interventions import Ablate
    from frankeneval.necessity.freeze import (
        freeze_mask,
        frozen_parameters,
        model_parameter_names,
        parameter_regex,
    )

    L = 1 if which == "first" else n_layers
    j = L - 1  # the decoder layer every path must act on

    # the reference: layer L's o_proj and down_proj zeroed on disk, run without any intervention
    zeroed = Generator.load(str(zeroed_checkpoint(tiny_lineage.rl, tmp_path / "zeroed", j)), device="cpu")
    reference = generate(zeroed)
    plain = Generator.load(str(tiny_lineage.rl), device="cpu")
    assert generate(plain) != reference  # the test has teeth: this layer matters
    if L < n_layers:  # ... and the neighbour (what a 0-based reading of L would ablate) gives other answers
        assert generate(plain, [Ablate((L + 1,))]) != reference

    # 1. frankeneval localize-reasoning --layers L
    assert sweep_answers(tiny_lineage, gsm8k_file, L, tmp_path / "sweep") == reference
    # 2. the wrapper's intervention=ablate:L
    assert wrapper_answers(tiny_lineage, L) == reference
    # 3. a freeze spec naming L freezes exactly decoder layer L - 1 (which holds the zeroed weights)
    names, n = model_parameter_names(tiny_lineage.rl)
    assert n == n_layers
    own = {x for x in names if x.startswith(f"model.language_model.layers.{j}.")}
    assert {f"model.language_model.layers.{j}.self_attn.o_proj.weight",
            f"model.language_model.layers.{j}.mlp.down_proj.weight"} <= own
    mask = freeze_mask(str(L), n_layers=n)
    assert set(frozen_parameters(mask, names)) == own
    assert {x for x in names if re.fullmatch(parameter_regex(mask), x)} == own
    assert f"LLM layers {L} of 1-{n}" in mask.describe()


def test_freeze_spec_cli_names_the_decoder_layer(tiny_lineage, n_layers, capsys):
    from frankeneval.cli import main

    for L in (1, n_layers):
        assert main(["freeze-spec", "--layers", str(L), "--model", str(tiny_lineage.rl), "--format", "names"]) == 0
        out = capsys.readouterr().out.split()
        assert out and all(x.startswith(f"model.language_model.layers.{L - 1}.") for x in out)
    assert main(["freeze-spec", "--layers", "0-2", "--n-layers", str(n_layers)]) == 1
    assert "write 1-3" in capsys.readouterr().err


def test_plot_layers_use_the_grammar_on_the_records_axis():
    from frankeneval.errors import SpecError
    from frankeneval.reports.characterization_plots import resolve_spectrum_layers

    records = [{"layer": L} for L in range(-4, 7)] + [{"layer": None}]  # 4 vision blocks, projector, 6 LLM layers
    assert resolve_spectrum_layers(records, ["-4", "0", "late"]) == [-4, 0, 5, 6]
    assert resolve_spectrum_layers(records, "vision,projector,1") == [-4, -3, -2, -1, 0, 1]
    assert resolve_spectrum_layers(records, [-1, 0, 6]) == [-1, 0, 6]
    with pytest.raises(SpecError, match="LLM layers are 1-6, vision blocks -4..-1, projector 0"):
        resolve_spectrum_layers(records, "7")
