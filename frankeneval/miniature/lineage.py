"""Built-in lineages: write a complete Base -> IN -> RL Qwen2.5-VL lineage in the hub layout, offline.

``write_lineage(out_dir, preset="tiny")`` writes ``base/``, ``in/`` and ``rl/``, each with ``config.json``,
sharded ``model-0000x-of-0000y.safetensors`` + ``model.safetensors.index.json`` (hub tensor names),
``generation_config.json``, tokenizer files, preprocessor config and chat template -- loadable with
``AutoProcessor.from_pretrained`` and ``Qwen2_5_VLForConditionalGeneration.from_pretrained``.

Weights are random (seeded per tensor name, so any tensor can be regenerated on its own) and the three
members differ by *planted, known* updates, so every analysis has something true to find:

* ``ΔIN = IN - Base``: a dense, full-rank Gaussian update of every tensor (SFT touches everything),
  relative Frobenius size ``in_scale`` (vision tower smaller than the LLM).
* ``ΔRL = RL - IN``: in the **late third** of the LLM, each weight matrix gets an exactly rank-``rl_rank``
  update with equal singular values (stable rank == ``rl_rank``), relative size ``rl_scale``; every other
  tensor changes only by a tiny dense perturbation (``rl_noise_scale``), and the vision tower not at all.

Preset ``tiny-vllm`` is ``tiny`` with head size 32 (vLLM's CPU attention needs 32, 64, 80, ...; ``tiny`` has 16)
and a larger init (std 0.1), so that its greedy replies depend on the prompt.
Presets ``qwen2.5-vl-3b`` and ``qwen2.5-vl-7b`` write full-size random lineages (bf16) for GPU benchmarks:
tensors are generated on the GPU when one is present and streamed to disk shard by shard.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from frankeneval import __version__
from frankeneval.core.paths import default_cache_dir
from frankeneval.core.results import staged_directory, write_json_atomic
from frankeneval.errors import OutputRefused
from frankeneval.weights.layermap import LayerMap, canonical_name, llm_region

MEMBERS = ("base", "in", "rl")

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Not special (they are decoded into the text), as in Qwen's tokenizers.
QWEN_EXTRA_TOKENS = ("<tool_call>", "</tool_call>", "<think>", "</think>", "<answer>", "</answer>")

# ChatML with Qwen2-VL's vision placeholders (written for frankeneval; same rendering as Qwen's template).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class LineageSpec:
    """Shapes and planted updates of a built-in lineage."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vision_depth: int
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_num_heads: int
    fullatt_block_indexes: tuple[int, ...]
    window_size: int
    vocab_size: int | None = None  # None: the tokenizer's size
    tie_word_embeddings: bool = False
    dtype: str = "float32"
    tokenizer: str = "trained"  # "trained": small BPE; "synthetic": BPE padded to vocab_size
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 16 * 28 * 28
    shard_bytes: int = 800_000  # target shard size (hub checkpoints use ~4-5 GB)
    init_std: float = 0.02
    in_scale: float = 0.05
    in_vision_scale: float = 0.02
    rl_rank: int = 4
    rl_scale: float = 0.03
    rl_noise_scale: float = 1e-4
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 4096
    mrope_section: tuple[int, ...] = (2, 3, 3)


PRESETS: dict[str, LineageSpec] = {
    "tiny": LineageSpec(
        name="tiny",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        vision_depth=4,
        vision_hidden_size=32,
        vision_intermediate_size=64,
        vision_num_heads=2,
        fullatt_block_indexes=(1, 3),
        window_size=56,
    ),
    "qwen2.5-vl-3b": LineageSpec(
        name="qwen2.5-vl-3b",
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        vision_depth=32,
        vision_hidden_size=1280,
        vision_intermediate_size=3420,
        vision_num_heads=16,
        fullatt_block_indexes=(7, 15, 23, 31),
        window_size=112,
        vocab_size=151936,
        tie_word_embeddings=True,
        dtype="bfloat16",
        tokenizer="synthetic",
        min_pixels=3136,
        max_pixels=12845056,
        shard_bytes=2 * 1024**3,
        rl_rank=16,
        mrope_section=(16, 24, 24),
        max_position_embeddings=128000,
    ),
    "qwen2.5-vl-7b": LineageSpec(
        name="qwen2.5-vl-7b",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vision_depth=32,
        vision_hidden_size=1280,
        vision_intermediate_size=3420,
        vision_num_heads=16,
        fullatt_block_indexes=(7, 15, 23, 31),
        window_size=112,
        vocab_size=152064,
        dtype="bfloat16",
        tokenizer="synthetic",
        min_pixels=3136,
        max_pixels=12845056,
        shard_bytes=4 * 1024**3,
        rl_rank=16,
        mrope_section=(16, 24, 24),
        max_position_embeddings=128000,
    ),
}
# As "tiny" but with head sizes vLLM's CPU attention supports (32, 64, 80, ...; "tiny" has 16): the lane that serves
# lineages and their splices with vLLM (README "Serve a Frankenstein checkpoint with vLLM").
PRESETS["tiny-vllm"] = replace(
    PRESETS["tiny"],
    name="tiny-vllm",
    num_attention_heads=2,  # 64 / 2 = 32
    num_key_value_heads=1,
    vision_hidden_size=64,  # 64 / 2 = 32
    vision_intermediate_size=128,
    mrope_section=(4, 6, 6),  # sums to head_dim / 2
    init_std=0.1,  # answers that depend on the prompt (at 0.02 every prompt gets the same greedy reply)
)


@dataclass
class Lineage:
    """Paths of a written lineage."""

    root: Path
    spec: LineageSpec
    seed: int
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def base(self) -> Path:
        return self.paths["base"]

    @property
    def in_(self) -> Path:
        return self.paths["in"]

    @property
    def rl(self) -> Path:
        return self.paths["rl"]


# -- tokenizer and processor ---------------------------------------------------------------------
_CORPUS = (
    "Please solve the problem step by step and put your answer in one \\boxed{}. "
    "How many red circles are there in the image? What is the number written in the picture? "
    "Is there a blue square? Answer yes or no. Where is the green triangle? Give its bounding box. "
    "What colour is the shape? The answer is 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000. "
    "Question: Choices: A. B. C. D. E. Hint: Image Description: "
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "The sum of the angles of a triangle is 180 degrees. Let x be a real number such that x + 2 = 5. "
    "First, we compute the total. Then we subtract and multiply. Therefore the final answer is "
    "#### The quick brown fox jumps over the lazy dog. yes no left right top bottom center "
)


def _bpe_vocab_and_merges(
    vocab_size: int | None, kind: str, corpus: list[str] | None = None
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary: trained on a small corpus (built-in unless given), or synthetic up to
    ``vocab_size``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if kind == "trained":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        target = (vocab_size or 600) - len(QWEN_SPECIAL_TOKENS) - len(QWEN_EXTRA_TOKENS)
        trainer = trainers.BpeTrainer(vocab_size=target, initial_alphabet=alphabet, show_progress=False)
        tok.train_from_iterator(list(corpus) if corpus is not None else [_CORPUS] * 4, trainer)
        state = json.loads(tok.to_str())["model"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
        return dict(state["vocab"]), merges  # type: ignore[return-value]
    # synthetic: base alphabet, then deterministic merges of existing tokens until the size is reached
    target = vocab_size - len(QWEN_SPECIAL_TOKENS) - len(QWEN_EXTRA_TOKENS)  # type: ignore[operator]
    symbols = sorted(alphabet)
    vocab = {s: i for i, s in enumerate(symbols)}
    merges: list[tuple[str, str]] = []
    tokens = list(symbols)
    i = 0
    while len(vocab) < target:
        a, b = tokens[i % len(symbols)], tokens[(i * 7 + 3) % len(tokens)]
        i += 1
        new = a + b
        if new in vocab or len(new) > 16:
            continue
        vocab[new] = len(vocab)
        merges.append((a, b))
        tokens.append(new)
    return vocab, merges


def build_processor(spec: LineageSpec, corpus: list[str] | None = None):
    """A Qwen2.5-VL processor (tokenizer + image/video processors + chat template), built offline.

    ``corpus``: texts to train the BPE tokenizer on (``tokenizer="trained"`` only); default a small built-in corpus.
    """
    from transformers import Qwen2_5_VLProcessor, Qwen2Tokenizer, Qwen2VLImageProcessor

    vocab, merges = _bpe_vocab_and_merges(spec.vocab_size, spec.tokenizer, corpus)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        errors="replace",
        model_max_length=spec.max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS)})
    tokenizer.add_tokens(list(QWEN_EXTRA_TOKENS))
    tokenizer.padding_side = "left"
    image_processor = Qwen2VLImageProcessor(
        min_pixels=spec.min_pixels,
        max_pixels=spec.max_pixels,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    kwargs: dict[str, Any] = {}
    try:
        from transformers import Qwen2VLVideoProcessor

        kwargs["video_processor"] = Qwen2VLVideoProcessor(min_pixels=spec.min_pixels, max_pixels=spec.max_pixels)
    except Exception:  # pragma: no cover - older transformers without video processors
        pass
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                               **kwargs)


def hub_config(spec: LineageSpec, tokenizer) -> dict[str, Any]:
    """config.json in the hub's (flat) Qwen2.5-VL layout."""
    tid = tokenizer.convert_tokens_to_ids
    vocab = spec.vocab_size or _round_up(len(tokenizer), 64)
    head_dim = spec.hidden_size // spec.num_attention_heads
    mrope = list(spec.mrope_section)
    assert sum(mrope) * 2 == head_dim, f"mrope_section {mrope} must sum to head_dim/2 = {head_dim // 2}"
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0,
        "bos_token_id": tid("<|endoftext|>"),
        "eos_token_id": tid("<|im_end|>"),
        "pad_token_id": tid("<|endoftext|>"),
        "vision_start_token_id": tid("<|vision_start|>"),
        "vision_end_token_id": tid("<|vision_end|>"),
        "vision_token_id": tid("<|vision_pad|>"),
        "image_token_id": tid("<|image_pad|>"),
        "video_token_id": tid("<|video_pad|>"),
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initializer_range": spec.init_std,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "max_window_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_key_value_heads": spec.num_key_value_heads,
        "rms_norm_eps": 1e-6,
        "rope_theta": spec.rope_theta,
        "rope_scaling": {"type": "mrope", "mrope_section": mrope},
        "sliding_window": spec.max_position_embeddings,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "torch_dtype": spec.dtype,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab,
        "vision_config": {
            "depth": spec.vision_depth,
            "hidden_act": "silu",
            "hidden_size": spec.vision_hidden_size,
            "intermediate_size": spec.vision_intermediate_size,
            "num_heads": spec.vision_num_heads,
            "in_chans": 3,
            "out_hidden_size": spec.hidden_size,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "window_size": spec.window_size,
            "fullatt_block_indexes": list(spec.fullatt_block_indexes),
            "tokens_per_second": 2,
            "temporal_patch_size": 2,
        },
        "frankeneval": {"lineage_preset": spec.name, "version": __version__},
    }


def _round_up(n: int, k: int) -> int:
    return ((n + k - 1) // k) * k


def tensor_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Hub tensor names and shapes of a Qwen2.5-VL config (from a meta-device model: no memory used)."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "config.json").write_text(json.dumps(config))
        cfg = AutoConfig.from_pretrained(tmp)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    shapes = {canonical_name(k): tuple(v.shape) for k, v in model.state_dict().items()}
    if config.get("tie_word_embeddings"):
        shapes.pop("lm_head.weight", None)
    return shapes


# -- weights -----------------------------------------------------------------------------------
def _generator(seed: int, name: str, salt: str, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + zlib.crc32(f"{salt}:{name}".encode())) % (2**63))
    return g


def _randn(shape, seed: int, name: str, salt: str, device: torch.device) -> torch.Tensor:
    return torch.randn(shape, generator=_generator(seed, name, salt, device), device=device, dtype=torch.float32)


def member_tensor(name: str, shape: tuple[int, ...], member: str, *, spec: LineageSpec, lmap: LayerMap, seed: int,
                  device: torch.device) -> torch.Tensor:
    """The float32 value of tensor ``name`` in lineage member ``member`` (regenerable on its own)."""
    role = lmap.role(name)
    is_norm = role.component == "norm"
    if is_norm:
        w = 1.0 + 0.1 * _randn(shape, seed, name, "base", device)
    elif role.param == "bias":
        w = 0.02 * _randn(shape, seed, name, "base", device)
    else:
        w = spec.init_std * _randn(shape, seed, name, "base", device)
    if member == "base":
        return w
    w_norm = w.norm()
    in_scale = spec.in_vision_scale if role.tower == "vision" else spec.in_scale
    d_in = _randn(shape, seed, name, "delta_in", device)
    w = w + d_in * (in_scale * w_norm / d_in.norm())
    if member == "in":
        return w
    if role.tower == "vision":
        return w  # RL leaves the vision tower untouched
    late = role.section == "llm" and llm_region(role.block, lmap.n_llm_layers) == "late"  # type: ignore[arg-type]
    if late and role.is_analysed_matrix(shape):
        out_dim, in_dim = shape[0], math.prod(shape[1:])
        r = min(spec.rl_rank, out_dim, in_dim)
        u, _ = torch.linalg.qr(_randn((out_dim, r), seed, name, "rl_u", device))
        v, _ = torch.linalg.qr(_randn((in_dim, r), seed, name, "rl_v", device))
        sigma = spec.rl_scale * w.norm() / math.sqrt(r)  # equal singular values: stable rank == r
        return w + (sigma * u @ v.T).reshape(shape)
    d_rl = _randn(shape, seed, name, "delta_rl", device)
    return w + d_rl * (spec.rl_noise_scale * w.norm() / d_rl.norm())


def _plan_shards(shapes: dict[str, tuple[int, ...]], bytes_per_el: int, shard_bytes: int) -> list[list[str]]:
    from frankeneval.weights.safetensors_file import pack_shards

    return pack_shards(((n, math.prod(s) * bytes_per_el) for n, s in shapes.items()), shard_bytes)


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def write_member(
    out_dir: Path,
    member: str,
    *,
    spec: LineageSpec,
    config: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    seed: int,
    device: torch.device,
    progress: bool = True,
) -> None:
    """Write one lineage member's weights as hub-style sharded safetensors, one shard in memory at a time."""
    dtype = getattr(torch, spec.dtype)
    lmap = LayerMap.from_names(shapes, n_vision_blocks=spec.vision_depth, n_llm_layers=spec.num_hidden_layers)
    plan = _plan_shards(shapes, torch.empty((), dtype=dtype).element_size(), spec.shard_bytes)
    n = len(plan)
    weight_map: dict[str, str] = {}
    total = 0
    bar = tqdm(total=len(shapes), desc=f"{spec.name}/{member}", unit="tensor", disable=not progress, leave=False)
    for i, names in enumerate(plan):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        shard: dict[str, torch.Tensor] = {}
        for name in names:
            t = member_tensor(name, shapes[name], member, spec=spec, lmap=lmap, seed=seed, device=device)
            shard[name] = t.to(dtype).cpu().contiguous()
            weight_map[name] = fname
            total += shard[name].numel() * shard[name].element_size()
            bar.update()
        save_file(shard, str(out_dir / fname), metadata={"format": "pt"})
        del shard
    bar.close()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    write_json_atomic(out_dir / "model.safetensors.index.json", index, indent=2)


def write_lineage(
    out_dir: str | os.PathLike,
    *,
    preset: str | LineageSpec = "tiny",
    seed: int = 0,
    device: str | torch.device | None = None,
    members: tuple[str, ...] = MEMBERS,
    overwrite: bool = False,
    progress: bool = True,
) -> Lineage:
    """Write a built-in lineage (``base/``, ``in/``, ``rl/``) under ``out_dir`` and return its paths.

    Each member is written to a temporary directory and renamed into place, so an interrupted run never
    leaves a half-written member. An existing complete member written with the same preset and seed is
    kept (the call is cheap to repeat) unless ``overwrite``.
    """
    spec = PRESETS[preset] if isinstance(preset, str) else preset
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device) if device is not None else _default_device()
    processor = build_processor(spec)
    config = hub_config(spec, processor.tokenizer)
    stamp = {"preset": spec.name, "seed": seed, "frankeneval": __version__}
    lineage = Lineage(root=root, spec=spec, seed=seed)
    shapes: dict[str, tuple[int, ...]] | None = None
    for member in members:
        final = root / member
        lineage.paths[member] = final
        stamp_file = final / "frankeneval_lineage.json"
        if final.exists() and not overwrite:
            if stamp_file.is_file() and json.loads(stamp_file.read_text()) == {**stamp, "member": member}:
                continue
            raise OutputRefused(f"{final} exists and was not written by this lineage preset/seed; pass overwrite=True "
                                "(--force) to replace a member frankeneval wrote")
        shapes = shapes or tensor_shapes(config)
        with staged_directory(final, owned=owned_member) as tmp:
            write_json_atomic(tmp / "config.json", config, indent=2)
            processor.save_pretrained(tmp)
            processor.image_processor.save_pretrained(tmp)  # preprocessor_config.json, as on the hub
            _write_generation_config(tmp, config)
            write_member(tmp, member, spec=spec, config=config, shapes=shapes, seed=seed, device=dev, progress=progress)
            write_json_atomic(tmp / "frankeneval_lineage.json", {**stamp, "member": member})
    return lineage


def owned_member(path: Path) -> str | None:
    """None when ``path`` holds only what frankeneval writes into a lineage member (its stamp, weights index,
    the shards the index names, config / tokenizer / processor / training-record files); else why not."""
    import fnmatch

    from frankeneval.core.results import foreign_entries
    from frankeneval.weights.checkpoint import METADATA_PATTERNS

    if not (path / "frankeneval_lineage.json").is_file():
        return "it is a non-empty folder that is not a frankeneval lineage member (no frankeneval_lineage.json)"
    try:
        shards = set(json.loads((path / "model.safetensors.index.json").read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        shards = set()
    names = {p.name for p in path.iterdir()}
    expected = {n for n in names if n in shards or any(fnmatch.fnmatch(n, pat) for pat in METADATA_PATTERNS)}
    return foreign_entries(path, expected)


def _write_generation_config(path: Path, config: dict[str, Any]) -> None:
    gen = {
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": [config["eos_token_id"], config["pad_token_id"]],
        "pad_token_id": config["pad_token_id"],
        "do_sample": False,
        "transformers_version": "frankeneval",
    }
    write_json_atomic(path / "generation_config.json", gen, indent=2)


def planted_rl_layers(spec: LineageSpec) -> list[int]:
    """0-based LLM layers where ΔRL is a planted low-rank update (the late third)."""
    return [j for j in range(spec.num_hidden_layers) if llm_region(j, spec.num_hidden_layers) == "late"]


def tiny_lineage(seed: int = 0) -> Lineage:
    """The tiny random lineage, written once into the cache dir and reused."""
    return write_lineage(default_cache_dir() / f"lineages/tiny-seed{seed}-v{__version__}", preset="tiny", seed=seed,
                         progress=False)
