"""RL with LLM blocks frozen: TRL's GRPOTrainer on an IN checkpoint, from a config written by ``frankeneval necessity``.

    python trl_grpo.py trl_grpo_late.json                    # one GPU
    accelerate launch trl_grpo.py trl_grpo_late.json         # several (TRL's usual launch)

Standalone: it imports TRL, transformers, datasets and PIL, never frankeneval, so it runs wherever TRL does
(``frankeneval necessity --write-configs DIR`` copies it next to its configs; ``--launch`` runs this same code).

The config (JSON) holds ``model`` (the IN checkpoint), ``dataset`` (a JSONL file), ``output_dir``, ``dtype``,
``freeze_parameter_regex`` (a Python regex for ``re.fullmatch`` over ``model.named_parameters()`` names, from
``frankeneval freeze-spec``'s mask), ``expected_frozen`` (how many parameters the mask freezes, counted by
frankeneval's layer map on the checkpoint: a regex that matches another number stops the run before training),
``verify_frozen`` (hash every frozen tensor before and after training and stop with an error if one changed) and
``grpo`` (keyword arguments of ``GRPOConfig``, passed as they are: edit them freely).

Dataset rows: ``{"prompt": "..." or chat messages, "answer": "42", "images": ["a.png", ...]}`` (or one ``"image"``;
paths relative to the JSONL file; no image: a text-only prompt; TRL needs each batch all-image or all-text). The
reward is 1.0 when the completion's final answer (the ``<answer>`` tag, else the last ``\\boxed{}``) equals
``answer`` (as numbers when both are numbers, else as whitespace-free lower-case text), else 0.0; replace
:func:`correctness_reward` for other tasks.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

CONFIG_FORMAT = 1
RECORD = "necessity_launch.json"  # written into output_dir after training


# -- data and reward ---------------------------------------------------------------------------
def _final_answer(text: str) -> str | None:
    tag = re.findall(r"<answer>(.*?)</answer>", text, flags=re.S)
    if tag:
        return tag[-1].strip()
    i = text.rfind("\\boxed{")
    if i < 0:
        return None
    depth, j = 1, i + len("\\boxed{")
    for k in range(j, len(text)):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            return text[j:k].strip()
    return None


def _number(text: str) -> float | None:
    try:
        value = float(text.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def answers_match(got: str | None, answer: str) -> bool:
    if got is None:
        return False
    a, b = _number(got), _number(str(answer))
    if a is not None and b is not None:
        return abs(a - b) <= 1e-6 * max(1.0, abs(b))
    return re.sub(r"\s+", "", got).lower() == re.sub(r"\s+", "", str(answer)).lower()


def correctness_reward(completions: list, answer: list, **_: Any) -> list[float]:
    """1.0 when the completion's final answer equals the row's ``answer``, else 0.0."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(answers_match(_final_answer(str(t)), a)) for t, a in zip(texts, answer)]


def load_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSONL rows as TRL's GRPOTrainer reads them (conversational prompts, an ``images`` column)."""
    from PIL import Image

    path = Path(path)
    rows = []
    # JSONL lines end at "\n" only: str.splitlines would also cut at U+2028, U+0085 ... inside a JSON string
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{n}: not a JSON line ({exc})") from None
        if "prompt" not in row or "answer" not in row:
            raise ValueError(f"{path}:{n}: a row needs 'prompt' and 'answer'")
        prompt = row["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        files = row.get("images") or ([row["image"]] if row.get("image") else [])
        images = [Image.open(path.parent / f).convert("RGB") for f in files]
        rows.append({"prompt": prompt, "images": images, "answer": str(row["answer"])})
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


# -- the freeze --------------------------------------------------------------------------------
def freeze(model, regex: str) -> list[str]:
    """``requires_grad_(False)`` on the parameters whose name fullmatches ``regex``; returns their names."""
    pattern = re.compile(regex)
    frozen = []
    for name, param in model.named_parameters():
        if pattern.fullmatch(name):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def digests(model, names: list[str]) -> dict[str, str]:
    """SHA-256 of each named parameter's bytes (one tensor at a time on the CPU)."""
    import torch

    params = dict(model.named_parameters())
    out = {}
    for name in names:
        t = params[name].detach().to("cpu").contiguous().view(-1)
        out[name] = hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest()
    return out


def load_model(path: str, dtype: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

    torch_dtype = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16,
                   "float32": torch.float32}[dtype]
    cfg = AutoConfig.from_pretrained(path)
    vision = getattr(cfg, "vision_config", None) is not None
    cls = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    model = cls.from_pretrained(path, dtype=torch_dtype)
    return model, AutoProcessor.from_pretrained(path)


# -- the run -----------------------------------------------------------------------------------
def main(config: str | os.PathLike | dict) -> dict[str, Any]:
    """Train as ``config`` says; returns (and writes into ``output_dir``) the run's record."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    if not isinstance(config, dict):
        config = json.loads(Path(config).read_text())
    if config.get("format") != CONFIG_FORMAT:
        raise ValueError(f"not a necessity launch config of format {CONFIG_FORMAT}")
    out = Path(config["output_dir"])
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # a finished run or someone's files: never over
        raise SystemExit(f"output_dir {out} exists and is not empty: not training into it (choose a new one)")
    model, processor = load_model(config["model"], config.get("dtype", "auto"))
    frozen = freeze(model, config["freeze_parameter_regex"])
    expected = config.get("expected_frozen")
    if expected is not None and len(frozen) != expected:
        raise SystemExit(f"the freeze regex matched {len(frozen)} parameters, the mask freezes {expected}: "
                         "not training (a transformers version that names parameters differently?)")
    before = digests(model, frozen) if config.get("verify_frozen", True) else {}
    print(f"[trl_grpo] {config.get('setting', '?')}: {len(frozen)} parameters frozen "
          f"({config.get('describe', config['freeze_parameter_regex'])})", file=sys.stderr)
    if getattr(processor, "tokenizer", None) is not None:
        processor.tokenizer.padding_side = "left"  # TRL left-pads prompts; the processor must pad alike
    args = GRPOConfig(output_dir=str(out), **config["grpo"])
    trainer = GRPOTrainer(model=model, reward_funcs=[correctness_reward], args=args,
                          train_dataset=Dataset.from_list(load_rows(config["dataset"])), processing_class=processor)
    t0 = time.perf_counter()
    trainer.train()
    seconds = round(time.perf_counter() - t0, 1)
    after = digests(model, frozen) if before else {}
    moved = sorted(n for n in before if before[n] != after[n])
    if moved:
        raise SystemExit(f"{len(moved)} frozen parameters changed in training (e.g. {moved[0]}); nothing saved")
    trainer.save_model(str(out))
    record = {"format": CONFIG_FORMAT, "setting": config.get("setting"), "model": config["model"],
              "dataset": config["dataset"], "frozen": frozen, "frozen_verified": bool(before),
              "train_s": seconds, "global_step": trainer.state.global_step, "log_history": trainer.state.log_history}
    tmp = out / f".{RECORD}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, out / RECORD)
    return record


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
