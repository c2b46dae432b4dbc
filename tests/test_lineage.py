"""The built-in tiny lineage: hub layout, loadable, generates from an image, planted updates."""

from __future__ import annotations

import json

import torch

from frankeneval.miniature.lineage import planted_rl_layers, write_lineage
from frankeneval.weights.checkpoint import Checkpoint


def test_hub_layout(tiny_lineage):
    for member in ("base", "in", "rl"):
        d = tiny_lineage.paths[member]
        for f in ("config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
                  "tokenizer_config.json", "preprocessor_config.json", "chat_template.jinja"):
            assert (d / f).is_file(), f"{member} lacks {f}"
        index = json.loads((d / "model.safetensors.index.json").read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
        assert all(not n.startswith("model.language_model") for n in index["weight_map"])  # hub names
        assert "lm_head.weight" in index["weight_map"] and "visual.merger.mlp.0.weight" in index["weight_map"]


def test_loads_and_generates_from_an_image(tiny_lineage):
    from PIL import Image
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_lineage.rl)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_lineage.rl)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many red circles?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text and text.endswith("<|im_start|>assistant\n")
    inputs = processor(text=[text], images=[Image.new("RGB", (84, 56), (200, 30, 30))], return_tensors="pt")
    n_visual = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_visual == 6  # 84x56 px -> 6x4 patches of 14 px -> 2x2 merge -> 6 tokens
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5


def test_planted_updates(tiny_lineage):
    base, in_, rl = (Checkpoint.open(p) for p in (tiny_lineage.base, tiny_lineage.in_, tiny_lineage.rl))
    late = set(planted_rl_layers(tiny_lineage.spec))
    assert late == {4, 5}
    for j in range(tiny_lineage.spec.num_hidden_layers):
        name = f"model.layers.{j}.mlp.down_proj.weight"
        d_rl = rl.read(name) - in_.read(name)
        rank = int(torch.linalg.matrix_rank(d_rl, rtol=1e-4))
        assert rank == (4 if j in late else min(d_rl.shape)), (j, rank)
    d_in = in_.read("visual.blocks.0.attn.qkv.weight") - base.read("visual.blocks.0.attn.qkv.weight")
    assert int(torch.linalg.matrix_rank(d_in)) == min(d_in.shape)
    assert torch.equal(rl.read("visual.blocks.0.attn.qkv.weight"), in_.read("visual.blocks.0.attn.qkv.weight"))


def test_deterministic_and_cached(tiny_lineage, tmp_path):
    again = write_lineage(tmp_path / "again", preset="tiny", seed=0, members=("rl",), progress=False)
    a, b = Checkpoint.open(tiny_lineage.rl), Checkpoint.open(again.rl)
    for name in a.names:
        assert torch.equal(a.read(name), b.read(name)), name
    mtime = (again.rl / "config.json").stat().st_mtime_ns
    write_lineage(tmp_path / "again", preset="tiny", seed=0, members=("rl",), progress=False)  # cached: no rewrite
    assert (again.rl / "config.json").stat().st_mtime_ns == mtime
    other = write_lineage(tmp_path / "seed1", preset="tiny", seed=1, members=("rl",), progress=False)
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(Checkpoint.open(other.rl).read(name), a.read(name))


def test_cli_inspect(tiny_lineage, capsys):
    from frankeneval.cli import main

    assert main(["inspect", str(tiny_lineage.base), str(tiny_lineage.in_), str(tiny_lineage.rl)]) == 0
    out = capsys.readouterr().out
    assert "4 vision blocks, 6 LLM layers" in out and "compatible: 3 checkpoints" in out
    assert "    -4  vision" in out and "     0  projector" in out and "     6  llm" in out
