"""The trained miniature lineage: a tiny Qwen2.5-VL taken through Base -> IN -> RL on the rendered world.

Three stages, with the field's libraries:

* **Base** -- from random init, supervised (transformers ``Trainer``) on perception questions, short captions and
  bare text arithmetic (``Compute 3 * 7.`` -> ``\\boxed{21}``), and -- as a pretrained LLM has read scenes described
  in words -- some perception questions whose scene is given as :func:`frankeneval.miniature.world.describe_scene`
  text with a black image, in the black + description control's layout (``"count:blackdesc"``). Base never sees
  an alignment question.
* **IN** -- Base after supervised fine-tuning (``Trainer``) on alignment questions, a few word problems, and a
  replay of Base's data. The cold-start replies come from two teachers: half of the alignment targets are short
  worked solutions that read the image (``2 * 7 = 14. \\boxed{14}``), half are answer-only replies of a text-only
  teacher that guesses the image's quantities (:meth:`frankeneval.miniature.world.WorldItem.blind_target`). IN imitates
  both, so under greedy decoding it often answers without looking -- the policy-level deficit RL can correct. Some
  alignment questions come with the scene described in words (black image + description), worked from the
  description: so the paper's black + description control (M_v2r) measures what it measures on an LLM.
* **RL** -- IN after GRPO (TRL's ``GRPOTrainer``) with a 0/1 correctness reward on alignment (image) and reasoning
  prompts.

A described-scene item keeps its image item's content, hence its split: no held-out question is trained on in any
view. Described items come in batches of their own (``SFTStage.view_batches``), so image batches are not padded to
a description's length.

Each member is written in the hub layout (flat ``config.json``, sharded safetensors with hub tensor names,
tokenizer, processor, chat template, generation config), like :func:`frankeneval.miniature.lineage.write_lineage`, so
every analysis reads a trained lineage exactly as it reads a downloaded one. :func:`evaluate` scores a model on
the world's held-out split by greedy generation with the world's answer checks; :func:`bootstrap_ci` and
:func:`paired_bootstrap_diff` give the 95% intervals.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from frankeneval import __version__
from frankeneval.core.paths import default_cache_dir
from frankeneval.core.results import staged_directory, write_json_atomic
from frankeneval.miniature import world
from frankeneval.miniature.lineage import (
    MEMBERS,
    PRESETS,
    Lineage,
    LineageSpec,
    _plan_shards,
    _write_generation_config,
    build_processor,
    hub_config,
)
from frankeneval.weights.layermap import canonical_name


def _train_on_cpu() -> bool:
    """Training runs on the CPU (the documented, reproducible path) unless ``FRANKENEVAL_TRAIN_DEVICE=cuda``."""
    return os.environ.get("FRANKENEVAL_TRAIN_DEVICE", "cpu") == "cpu"


TRAINED_VERSION = 4  # bump when the recipe or the world changes what is built (v4: described scenes)

# The measured architecture: 5 LLM layers, hidden 96, vision depth 4; 84 x 84 images -> 9 visual tokens.
TRAINED_SPEC: LineageSpec = replace(
    PRESETS["tiny"],
    name="tiny-trained",
    hidden_size=96,
    intermediate_size=256,
    num_hidden_layers=5,
    num_attention_heads=4,
    num_key_value_heads=2,
    vision_depth=4,
    vision_hidden_size=64,
    vision_intermediate_size=128,
    vision_num_heads=2,
    fullatt_block_indexes=(1, 3),
    window_size=112,
    min_pixels=world.CANVAS * world.CANVAS,
    max_pixels=world.CANVAS * world.CANVAS,
    mrope_section=(4, 4, 4),
    shard_bytes=1_500_000,
    max_position_embeddings=1024,
)


# -- recipe ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SFTStage:
    """A supervised stage: ``steps`` optimizer steps of ``batch_size`` items drawn from ``mix`` (task -> weight)."""

    steps: int
    batch_size: int
    learning_rate: float
    mix: tuple[tuple[str, float], ...]
    warmup_steps: int = 20
    weight_decay: float = 0.0
    worked: float = 1.0  # fraction of boxed targets that show the worked solution (the rest: the bare \boxed{})
    blind: float = 0.0  # fraction of alignment targets from a text-only teacher (WorldItem.blind_target)
    # each batch holds only described-scene items ("task:blackdesc") or none (drawn per batch, in proportion to the
    # mix; batches in order): no image batch is padded to a description's length (~2x the step time)
    view_batches: bool = False


@dataclass(frozen=True)
class RLStage:
    """GRPO: ``steps`` updates, each on ``prompts_per_step`` prompts x ``num_generations`` sampled completions."""

    steps: int
    prompts_per_step: int
    num_generations: int
    learning_rate: float
    mix: tuple[tuple[str, float], ...]
    beta: float = 0.0  # KL weight to the IN model
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k truncation of the sampler
    max_completion_length: int = 32
    warmup_steps: int = 0  # linear warm-up, then constant
    loss_type: str = "dapo"  # TRL's token-level aggregation (see GRPOConfig.loss_type)
    scale_rewards: str = "group"  # "group" (GRPO), "batch" or "none" (Dr. GRPO)
    num_iterations: int = 1  # policy updates per generated batch
    top_entropy_quantile: float = 1.0  # < 1: only the highest-entropy ("forking") tokens carry the policy loss
    optimizer: str = "adamw_torch"  # any transformers ``optim`` name, e.g. "sgd"


@dataclass(frozen=True)
class Recipe:
    base: SFTStage
    in_: SFTStage
    rl: RLStage

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


PERCEPTION_MIX = (("count", 3.0), ("ocr", 2.0), ("colour", 1.0), ("yesno", 1.0), ("position", 1.0), ("box", 0.5))
# the scene given in words, in the black + description layout (world.VIEWS): as a pretrained LLM has read described
# scenes, Base reads them for perception questions and IN for alignment ones (worked from the description)
DESCRIBED_PERCEPTION_MIX = (("count:blackdesc", 0.5), ("ocr:blackdesc", 0.3), ("colour:blackdesc", 0.2),
                            ("yesno:blackdesc", 0.2), ("position:blackdesc", 0.2))
DEFAULT_RECIPE = Recipe(
    base=SFTStage(steps=1000, batch_size=32, learning_rate=1e-3, warmup_steps=30, view_batches=True,
                  mix=(*PERCEPTION_MIX, ("caption", 0.5), ("arithmetic", 2.0), *DESCRIBED_PERCEPTION_MIX)),
    in_=SFTStage(steps=1000, batch_size=32, learning_rate=5e-4, warmup_steps=10, blind=0.5, view_batches=True,
                 mix=(("multiply", 2.0), ("add", 2.0), ("word", 1.75), *((t, 0.25 * w) for t, w in PERCEPTION_MIX),
                      ("arithmetic", 0.75), ("multiply:blackdesc", 0.6), ("add:blackdesc", 0.6))),
    rl=RLStage(steps=120, prompts_per_step=16, num_generations=8, learning_rate=3e-5, beta=0.02, temperature=1.0,
               mix=(("multiply", 2.0), ("add", 2.0), ("word", 1.0))),
)
SMOKE_RECIPE = Recipe(
    base=replace(DEFAULT_RECIPE.base, steps=3, batch_size=8, warmup_steps=1),
    in_=replace(DEFAULT_RECIPE.in_, steps=2, batch_size=8, warmup_steps=1),
    rl=replace(DEFAULT_RECIPE.rl, steps=2, prompts_per_step=2, num_generations=4, max_completion_length=8),
)
TRAIN_RECORD = "frankeneval_training.json"  # per member: its stage's wall/CPU time and the trainer's log history
STAGE_OFFSETS = {"base": 0, "in": 10_000_000, "rl": 20_000_000}  # disjoint item indices per stage


# -- data --------------------------------------------------------------------------------------
def _pick(mix: Sequence[tuple[str, float]], rng: random.Random) -> str:
    tasks, weights = zip(*mix)
    return rng.choices(tasks, weights=weights)[0]


class WorldStream(torch.utils.data.Dataset):
    """``length`` train-split items of the mix; item ``i`` is a pure function of ``(seed, stage, i)``.

    ``block``: consecutive runs of ``block`` items share one task (GRPO batches must be all-image or all-text).
    ``view_group``: consecutive runs of ``view_group`` items are all of the mix's described-scene tasks
    (``"task:view"``, :func:`frankeneval.miniature.world.task_view`) or all of its other tasks, the run's kind drawn
    with the described tasks' share of the mix's weight and each item's task then drawn within that kind.
    """

    def __init__(self, mix: Sequence[tuple[str, float]], length: int, *, seed: int, stage: str, block: int = 1,
                 view_group: int = 0):
        self.mix, self.length, self.seed, self.offset = tuple(mix), length, seed, STAGE_OFFSETS[stage]
        self.block, self.view_group = block, view_group
        described = tuple((t, w) for t, w in self.mix if world.task_view(t)[1] != "image")
        self.kinds = (described, tuple(m for m in self.mix if m not in described))
        total = sum(w for _, w in self.mix)
        self.described_share = sum(w for _, w in described) / total if total else 0.0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> world.WorldItem:
        idx = self.offset + i
        key = idx if self.block == 1 else f"block{self.block}:{idx // self.block}"
        mix = self.mix
        if self.view_group > 0 and all(self.kinds):
            run = random.Random(f"views:{self.seed}:{self.offset}:{self.view_group}:{i // self.view_group}")
            mix = self.kinds[0] if run.random() < self.described_share else self.kinds[1]
        task = _pick(mix, random.Random(f"mix:{self.seed}:{key}"))
        return world.world_item(self.seed, "train", task, idx)


def _item_draw(tag: str, item: world.WorldItem, fraction: float) -> bool:
    """A fixed per-item Bernoulli(``fraction``) draw from the item's content hash (independent across tags)."""
    if fraction >= 1.0 or fraction <= 0.0:
        return fraction >= 1.0
    return zlib.crc32(f"{tag}:{item.key()}".encode()) % 10_000 < fraction * 10_000


def shows_work(item: world.WorldItem, fraction: float) -> bool:
    """Whether ``item``'s training target shows its worked solution."""
    return _item_draw("worked", item, fraction)


def from_blind_teacher(item: world.WorldItem, fraction: float) -> bool:
    """Whether ``item``'s training target is the text-only teacher's (alignment items shown as their image only:
    given the scene in words, the teacher reads it and works the answer out)."""
    return item.axis == "alignment" and not item.described and _item_draw("blind", item, fraction)


def training_target(item: world.WorldItem, *, worked: float = 1.0, blind: float = 0.0) -> str:
    """The assistant reply an SFT stage trains on for ``item``."""
    if from_blind_teacher(item, blind):
        return item.blind_target()
    return item.target(shows_work(item, worked))


class ChatCollator:
    """Tokenizes world items as one user turn (image + prompt) and the assistant's target; loss on the target only."""

    def __init__(self, processor, *, worked: float = 1.0, blind: float = 0.0):
        self.processor, self.worked, self.blind = processor, float(worked), float(blind)
        tok = processor.tokenizer
        self.pad_id, self.end = tok.pad_token_id, "<|im_end|>"

    def __call__(self, items: Sequence[world.WorldItem]) -> dict[str, torch.Tensor]:
        proc, tok = self.processor, self.processor.tokenizer
        prompts = [proc.apply_chat_template(it.messages(), add_generation_prompt=True, tokenize=False) for it in items]
        images = [it.image() for it in items if it.has_image]
        enc = proc(text=prompts, images=images or None, padding=False)
        replies = [training_target(it, worked=self.worked, blind=self.blind) + self.end for it in items]
        targets = tok(replies, add_special_tokens=False)["input_ids"]
        rows = [list(p) + list(t) for p, t in zip(enc["input_ids"], targets)]
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        mm_types = torch.zeros((len(rows), width), dtype=torch.long)  # 1 at image tokens: needed for 3D RoPE
        for r, (p, t) in enumerate(zip(enc["input_ids"], targets)):
            n = len(p) + len(t)
            input_ids[r, :n] = torch.tensor(list(p) + list(t))
            labels[r, len(p):n] = torch.tensor(t)
            attention[r, :n] = 1
            if "mm_token_type_ids" in enc:
                mm_types[r, :len(p)] = torch.tensor(enc["mm_token_type_ids"][r])
        batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "mm_token_type_ids": mm_types}
        if images:
            batch["pixel_values"] = torch.as_tensor(np.asarray(enc["pixel_values"]))
            batch["image_grid_thw"] = torch.as_tensor(np.asarray(enc["image_grid_thw"]))
        return batch


# -- model -------------------------------------------------------------------------------------
def _config_object(config: dict[str, Any]):
    from transformers import AutoConfig

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "config.json").write_text(json.dumps(config))
        return AutoConfig.from_pretrained(tmp)


def init_model(config: dict[str, Any], seed: int):
    """A randomly initialised Qwen2.5-VL (float32, seeded) for the hub-style ``config``."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(_config_object(config))
    return model.float()


def save_member(model, processor, config: dict[str, Any], path: Path, *, spec: LineageSpec, stamp: dict[str, Any],
                record: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a hub-layout member at ``path`` (temp dir, then rename); ``record``: its training log."""
    state = {canonical_name(k): v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    plan = _plan_shards(shapes, 4, spec.shard_bytes)
    from frankeneval.miniature.lineage import owned_member

    with staged_directory(path, owned=owned_member) as tmp:
        weight_map, total = {}, 0
        for i, names in enumerate(plan):
            fname = f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors"
            save_file({n: state[n].clone() for n in names}, str(tmp / fname), metadata={"format": "pt"})
            for n in names:
                weight_map[n] = fname
                total += state[n].numel() * 4
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        write_json_atomic(tmp / "model.safetensors.index.json", index, indent=2)
        write_json_atomic(tmp / "config.json", config, indent=2)
        processor.save_pretrained(tmp)
        processor.image_processor.save_pretrained(tmp)
        _write_generation_config(tmp, config)
        write_json_atomic(tmp / "frankeneval_lineage.json", stamp)
        if record is not None:
            write_json_atomic(tmp / TRAIN_RECORD, record)
    return path


def load_member(path: str | os.PathLike, *, for_training: bool = False):
    """``(model, processor)`` of a written member, float32, eval mode.

    ``for_training``: a later stage starts from it, with the generation defaults of the model's config (stop at EOS
    only), which a member trained earlier in the same process has. The written ``generation_config.json`` (EOS and
    pad stop greedy evaluation) would end GRPO's sampled completions at the pad token too: another computation, so
    an RL stage resumed from a cached IN would not be the one a whole build runs."""
    from transformers import AutoProcessor, GenerationConfig, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    if for_training:
        model.generation_config = GenerationConfig.from_model_config(model.config)
    return model.eval(), AutoProcessor.from_pretrained(path)


# -- stages ------------------------------------------------------------------------------------
def _training_args(out: Path, stage: SFTStage, seed: int, progress: bool):
    from transformers import TrainingArguments

    # view_batches: the stream's runs of one kind are its batches, so they are read in order (every item is an
    # independent draw: the order is as random as a shuffle)
    order = {"train_sampling_strategy": "sequential"} if stage.view_batches else {}
    return TrainingArguments(
        output_dir=str(out), max_steps=stage.steps, per_device_train_batch_size=stage.batch_size,
        learning_rate=stage.learning_rate, warmup_steps=stage.warmup_steps, lr_scheduler_type="cosine",
        weight_decay=stage.weight_decay, max_grad_norm=1.0, seed=seed, data_seed=seed, use_cpu=_train_on_cpu(),
        report_to="none", save_strategy="no", logging_steps=max(1, stage.steps // 10), disable_tqdm=not progress,
        remove_unused_columns=False, dataloader_num_workers=0, log_level="warning", **order,
    )


def train_sft(model, processor, stage: SFTStage, *, name: str, seed: int, workdir: Path, progress: bool = True):
    """One supervised stage with transformers' ``Trainer`` (loss on the assistant's reply only)."""
    from transformers import Trainer

    data = WorldStream(stage.mix, stage.steps * stage.batch_size, seed=seed, stage=name,
                       view_group=stage.batch_size if stage.view_batches else 0)
    trainer = Trainer(model=model, args=_training_args(workdir / name, stage, seed, progress), train_dataset=data,
                      data_collator=ChatCollator(processor, worked=stage.worked, blind=stage.blind))
    trainer.train()
    model.eval()
    return trainer.state.log_history


def correctness_reward(completions: list, answer: list[str], task: list[str], **_: Any) -> list[float]:
    """1.0 when the completion's final answer is right (the world's answer check), else 0.0."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(world.is_correct(t, a, x)) for x, a, t in zip(texts, answer, task)]


def rl_dataset(stage: RLStage, *, seed: int):
    """GRPO prompts (conversational, with an ``images`` column) drawn from the train split."""
    from datasets import Dataset

    n = stage.steps * stage.prompts_per_step
    # one task per step's prompts: TRL's GRPOTrainer cannot mix image and text-only prompts in one batch
    stream = WorldStream(stage.mix, n, seed=seed, stage="rl", block=stage.prompts_per_step)
    rows = []
    for i in range(n):
        it = stream[i]
        # "images" ([] for text-only prompts) rather than "image" (None): TRL drops an all-empty image list
        rows.append({"prompt": it.messages(), "images": [it.image()] if it.has_image else [], "answer": it.answer,
                     "task": it.task})
    return Dataset.from_list(rows)


def train_grpo(model, processor, stage: RLStage, *, seed: int, workdir: Path, reference: Path | None = None,
               progress: bool = True):
    """RL with TRL's ``GRPOTrainer``: group-normalised advantages of a 0/1 correctness reward.

    ``reference``: the written IN member, the KL reference TRL loads when ``stage.beta > 0``.
    """
    from trl import GRPOConfig, GRPOTrainer

    if stage.beta > 0:
        if reference is None:
            raise ValueError("GRPO with beta > 0 needs the reference (IN) checkpoint path")
        model.config._name_or_path = str(reference)  # TRL builds the reference model from this path
    # TRL left-pads prompt ids and re-runs the processor for the image fields: the two must pad alike, or the
    # image-token types (hence Qwen2.5-VL's 3D RoPE positions) of the loss forward are shifted
    processor.tokenizer.padding_side = "left"

    args = GRPOConfig(
        output_dir=str(workdir / "rl"), max_steps=stage.steps, learning_rate=stage.learning_rate,
        per_device_train_batch_size=stage.prompts_per_step * stage.num_generations,
        num_generations=stage.num_generations, max_completion_length=stage.max_completion_length,
        temperature=stage.temperature, top_k=stage.top_k, beta=stage.beta, seed=seed, data_seed=seed,
        use_cpu=_train_on_cpu(), bf16=False, report_to="none", save_strategy="no",
        logging_steps=max(1, stage.steps // 10), disable_tqdm=not progress,
        lr_scheduler_type="constant_with_warmup", warmup_steps=stage.warmup_steps, log_level="warning",
        shuffle_dataset=False,
        loss_type=stage.loss_type, scale_rewards=stage.scale_rewards, num_iterations=stage.num_iterations,
        top_entropy_quantile=stage.top_entropy_quantile, optim=stage.optimizer,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[correctness_reward], args=args,
                          train_dataset=rl_dataset(stage, seed=seed), processing_class=processor)
    trainer.train()
    model.eval()
    return trainer.state.log_history


# -- evaluation --------------------------------------------------------------------------------
@dataclass
class AxisResult:
    axis: str
    correct: list[bool]
    responses: list[str]

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct)) if self.correct else float("nan")


@torch.no_grad()
def generate(model, processor, items: Sequence[world.WorldItem], *, batch_size: int = 64,
             max_new_tokens: int | None = None, progress: bool = False) -> list[str]:
    """Greedy replies to world items (batched, left-padded)."""
    out: list[str] = []
    for s in tqdm(range(0, len(items), batch_size), desc="generate", disable=not progress, leave=False):
        chunk = items[s:s + batch_size]
        texts = [processor.apply_chat_template(it.messages(), add_generation_prompt=True, tokenize=False)
                 for it in chunk]
        images = [it.image() for it in chunk if it.has_image]
        enc = processor(text=texts, images=images or None, padding=True, padding_side="left", return_tensors="pt")
        enc = enc.to(model.device)
        limit = max_new_tokens or (40 if any(it.boxed for it in chunk) else 16)
        gen = model.generate(**enc, max_new_tokens=limit, do_sample=False)
        out += processor.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def evaluate(model, processor, items_by_axis: dict[str, Sequence[world.WorldItem]], *, batch_size: int = 64,
             progress: bool = False) -> dict[str, AxisResult]:
    """Greedy accuracy per axis with the world's answer checks."""
    results = {}
    for axis, items in items_by_axis.items():
        responses = generate(model, processor, items, batch_size=batch_size, progress=progress)
        correct = [world.is_correct(it.task, it.answer, r) for it, r in zip(items, responses)]
        results[axis] = AxisResult(axis, correct, responses)
    return results


# held-out items per axis for the lineage's own accuracy table: alignment (where RL - IN is measured) is the largest,
# so its paired 95% interval is about +-0.03; "alignment_blackdesc": the first alignment items again, shown as the
# black + description control shows them (the paper's M_v2r pairs the two)
LINEAGE_EVAL_SIZES = {"perception": 600, "alignment": 1500, "reasoning": 600, "alignment_blackdesc": 600}
EVAL_SETS = (*world.AXES, "alignment_blackdesc")
V2R = "v2r"  # per item: right with the image and right from the black image + description (M_v2r = n_TT / N)


def heldout_items(seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, list[world.WorldItem]]:
    """The first held-out (test-split) items of each of :data:`EVAL_SETS`; ``sizes`` overrides
    :data:`LINEAGE_EVAL_SIZES`."""
    sizes = {**LINEAGE_EVAL_SIZES, **(sizes or {})}
    items = {axis: world.world_items("test", axis, sizes[axis], seed) for axis in world.AXES}
    # paired with the first alignment items, so never more of them
    described = world.world_items("test", "alignment", min(sizes["alignment_blackdesc"], sizes["alignment"]), seed)
    items["alignment_blackdesc"] = [world.with_view(it, "blackdesc") for it in described]
    return items


def bootstrap_ci(values: Sequence[float], *, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean."""
    v = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(v), size=(n_boot, len(v)))
    means = v[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_bootstrap_diff(a: Sequence[float], b: Sequence[float], **kw: Any) -> tuple[float, float, float]:
    """``(mean(a) - mean(b), lo, hi)``: the difference of two models on the same items, with its bootstrap interval."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    lo, hi = bootstrap_ci(d, **kw)
    return float(d.mean()), lo, hi


# -- the whole build ---------------------------------------------------------------------------
@dataclass
class TrainedLineage(Lineage):
    timings: dict[str, float] = field(default_factory=dict)
    accuracy: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # member -> axis -> acc/lo/hi


def trained_lineage_dir(seed: int = 0) -> Path:
    """The cache location of the trained lineage of ``seed``."""
    return default_cache_dir() / "lineages" / f"trained-seed{seed}-v{__version__}"


_RECIPE_FIELD = dict(zip(MEMBERS, ("base", "in_", "rl")))  # member -> its Recipe field, in training order


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so stamps compare with what is on disk."""
    return json.loads(json.dumps(value))


def _stamp(seed: int, recipe: Recipe, member: str) -> dict[str, Any]:
    """What determines a member: the seed, the versions and the recipe of its stage and the stages before it."""
    upto = MEMBERS.index(member) + 1
    stages = {k: v for k, v in recipe.to_json().items() if k in {_RECIPE_FIELD[m] for m in MEMBERS[:upto]}}
    return {"preset": TRAINED_SPEC.name, "seed": seed, "frankeneval": __version__, "trained_version": TRAINED_VERSION,
            "world_version": world.WORLD_VERSION, "recipe": stages, "member": member}


def _member_is_current(path: Path, seed: int, recipe: Recipe, member: str) -> bool:
    stamp = path / "frankeneval_lineage.json"
    return stamp.is_file() and json.loads(stamp.read_text()) == _as_json(_stamp(seed, recipe, member))


def _complete(root: Path, seed: int, recipe: Recipe) -> bool:
    summary = root / "lineage.json"
    if not summary.is_file() or json.loads(summary.read_text()).get("recipe") != _as_json(recipe.to_json()):
        return False
    return all(_member_is_current(root / m, seed, recipe, m) for m in MEMBERS)


def _load_summary(root: Path, seed: int) -> TrainedLineage:
    data = json.loads((root / "lineage.json").read_text())
    return TrainedLineage(root=root, spec=TRAINED_SPEC, seed=seed, paths={m: root / m for m in MEMBERS},
                          timings=data.get("timings", {}), accuracy=data.get("accuracy", {}))


def _set_threads() -> None:
    n = int(os.environ.get("FRANKENEVAL_THREADS", "0")) or min(torch.get_num_threads(), os.cpu_count() or 1)
    torch.set_num_threads(max(1, n))


def build_trained_lineage(
    out_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    recipe: Recipe = DEFAULT_RECIPE,
    eval_sizes: dict[str, int] | None = None,
    evaluate_members: bool = True,
    force: bool = False,
    progress: bool = True,
) -> TrainedLineage:
    """Train Base -> IN -> RL on the world and write them under ``out_dir`` (cached: a complete build is reused).

    ``lineage.json`` records the recipe, the time of each stage and (``evaluate_members``) each member's held-out
    accuracy per axis with its 95% bootstrap interval.
    """
    root = Path(out_dir) if out_dir is not None else trained_lineage_dir(seed)
    if not force and _complete(root, seed, recipe):
        return _load_summary(root, seed)
    root.mkdir(parents=True, exist_ok=True)
    _set_threads()
    spec = TRAINED_SPEC
    processor = build_processor(spec, corpus=world.corpus(seed))
    config = hub_config(spec, processor.tokenizer)
    config["frankeneval"]["trained"] = {"seed": seed, "version": TRAINED_VERSION}
    timings: dict[str, float] = {}
    logs: dict[str, list] = {}
    lineage = TrainedLineage(root=root, spec=spec, seed=seed)
    with tempfile.TemporaryDirectory(prefix="frankeneval-train-") as work:
        workdir = Path(work)
        model = None
        stages: dict[str, Callable[[Any], Any]] = {
            "base": lambda m: train_sft(m, processor, recipe.base, name="base", seed=seed, workdir=workdir,
                                        progress=progress),
            "in": lambda m: train_sft(m, processor, recipe.in_, name="in", seed=seed, workdir=workdir,
                                      progress=progress),
            "rl": lambda m: train_grpo(m, processor, recipe.rl, seed=seed, workdir=workdir, reference=root / "in",
                                       progress=progress),
        }
        retrain = force
        for member, run_stage in stages.items():
            path = root / member
            lineage.paths[member] = path
            if not retrain and _member_is_current(path, seed, recipe, member):
                # the same seed and recipe prefix already built this member: reuse it (a later stage starts from it)
                record = json.loads((path / TRAIN_RECORD).read_text()) if (path / TRAIN_RECORD).is_file() else {}
                timings.update(record.get("timings", {}))
                logs[member] = record.get("logs", [])
                model = None
                if progress:
                    print(f"[frankeneval] {member}: reusing {path}")
                continue
            retrain = True  # every later stage starts from this new member
            if model is None:
                model = (init_model(config, seed) if member == "base"
                         else load_member(root / MEMBERS[MEMBERS.index(member) - 1], for_training=True)[0])
            t0, c0 = time.perf_counter(), time.process_time()
            model.train()
            logs[member] = run_stage(model)
            stage_times = {member: round(time.perf_counter() - t0, 1),
                           f"{member}_cpu": round(time.process_time() - c0, 1)}
            timings.update(stage_times)
            save_member(model, processor, config, path, spec=spec, stamp=_stamp(seed, recipe, member),
                        record={"timings": stage_times, "logs": logs[member]})
            if progress:
                print(f"[frankeneval] {member}: trained in {stage_times[member]:.0f} s -> {path}")
    accuracy: dict[str, dict[str, dict[str, float]]] = {}
    if evaluate_members:
        t0 = time.perf_counter()
        accuracy = evaluate_lineage(lineage, seed=seed, sizes=eval_sizes, progress=progress)["accuracy"]
        timings["eval"] = round(time.perf_counter() - t0, 1)
    lineage.timings, lineage.accuracy = timings, accuracy
    summary = {"seed": seed, "spec": TRAINED_SPEC.name, "recipe": recipe.to_json(), "timings": timings,
               "accuracy": accuracy, "logs": logs}
    write_json_atomic(root / "lineage.json", summary, indent=2)
    return lineage


def evaluate_lineage(lineage: Lineage, *, seed: int = 0, sizes: dict[str, int] | None = None,
                     progress: bool = False) -> dict[str, Any]:
    """Held-out accuracy of each member per axis (with 95% intervals) and the paired IN-Base / RL-IN differences.

    Besides the three axes: ``alignment_blackdesc`` (the first alignment items from the black image + description)
    and ``v2r`` (per item, right with the image and from the description: the paper's M_v2r = n_TT / N).
    """
    items = heldout_items(seed, sizes)
    correct: dict[str, dict[str, list[bool]]] = {}
    accuracy: dict[str, dict[str, dict[str, float]]] = {}
    for member in MEMBERS:
        model, processor = load_member(lineage.paths[member])
        res = evaluate(model, processor, items, progress=progress)
        correct[member] = {a: r.correct for a, r in res.items()}
        desc = correct[member]["alignment_blackdesc"]
        correct[member][V2R] = [a and d for a, d in zip(correct[member]["alignment"], desc)]
        accuracy[member] = {}
        for axis, values in correct[member].items():
            lo, hi = bootstrap_ci(values, seed=seed)
            acc = float(np.mean(values)) if values else float("nan")
            accuracy[member][axis] = {"acc": acc, "lo": lo, "hi": hi, "n": len(values)}
        del model
    diffs = {}
    for a, b in (("in", "base"), ("rl", "in")):
        for axis in (*EVAL_SETS, V2R):
            d, lo, hi = paired_bootstrap_diff(correct[a][axis], correct[b][axis], seed=seed)
            diffs[f"{a}-{b}/{axis}"] = {"diff": d, "lo": lo, "hi": hi}
    return {"accuracy": {**accuracy, "diffs": diffs}, "correct": correct}


def format_accuracy(accuracy: dict[str, Any]) -> str:
    """A small markdown table of held-out accuracy per member and axis (black+desc: alignment from the black image
    + description; M_v2r: right with the image and from the description)."""
    cols = [c for c in (*EVAL_SETS, V2R) if any(c in accuracy.get(m, {}) for m in MEMBERS)]
    names = {"alignment_blackdesc": "black+desc", V2R: "M_v2r"}
    lines = ["| member | " + " | ".join(names.get(c, c) for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for m in MEMBERS:
        if m in accuracy:
            cells = [f"{accuracy[m][a]['acc']:.3f} [{accuracy[m][a]['lo']:.3f}, {accuracy[m][a]['hi']:.3f}]"
                     if a in accuracy[m] else "" for a in cols]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
