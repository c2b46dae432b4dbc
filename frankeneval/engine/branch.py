"""Shared-prefix prefill of visual-KV swap rows: the target prompt's prefix once, then only each row's text suffix.

A row swapping the visual tokens' K/V from layer ``L`` on differs from the plain run of its prompt only where the
swapped keys and values are read. A prompt is ``[system, <|vision_start|>] [visual tokens] [<|vision_end|>, question,
assistant header]`` and attention is causal, so:

* the tokens before the image never see it: their K/V are the plain run's at every layer;
* the visual tokens' K/V are the plain run's below ``L`` and the source's from ``L`` on (what the swap writes; their
  hidden states above ``L`` are never read, since their K/V are replaced there);
* only the text after the image (the *suffix*, ~20-60 tokens of a 200-450 token prompt) must be computed per row.

So :func:`branch_prefill` runs one plain prefill per distinct prompt of a batch (the 28 swap rows of a probe pair
share one), builds each row's past K/V from it (the swap written from the rows' plans by
:class:`frankeneval.engine.interventions.SwapWriter`, the same code as in a full prefill), and prefills the rows'
suffixes with the model's own forward over that past.
The tokens equal the full prefill's in float32 (tests); it applies to rows whose only intervention is one
non-seed-compatible :class:`SwapVisualKV` and whose visual tokens are one run (one image).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from frankeneval.engine.interventions import SwapVisualKV, SwapWriter, plan_rows

__all__ = ["BranchPlan", "branch_prefill", "plan_branches"]


@dataclass
class BranchPlan:
    """Which rows of a batch branch from a shared prefix, and the layout of their prefill.

    ``rows``: batch rows; ``group``: per branch row, the index of its prompt in ``representatives`` (one batch row per
    distinct prompt); ``prefix`` / ``suffix``: per branch row, tokens up to the last visual token and after it;
    ``length = max(prefix) + max(suffix)``: the branch rows' prompt length in the decoder's cache.
    """

    rows: list[int]
    group: list[int]
    representatives: list[int]
    prefix: list[int]
    suffix: list[int]

    @classmethod
    def empty(cls) -> BranchPlan:
        return cls([], [], [], [], [])

    @property
    def length(self) -> int:
        return max(self.prefix) + max(self.suffix) if self.rows else 0


def plan_branches(rows: list[list], input_ids: torch.Tensor, mask: torch.Tensor, image_token_id: int | None,
                  prompt_keys: list) -> BranchPlan:
    """The rows of a batch that :func:`branch_prefill` takes (see the module docstring); ``prompt_keys[r]``: what
    makes row ``r``'s prompt (chat text and image contents), equal for rows that share a prefix."""
    plan = BranchPlan.empty()
    if image_token_id is None:
        return plan
    ids, valid = input_ids.cpu(), mask.cpu().bool()
    first_of: dict = {}
    for r, items in enumerate(rows):
        if len(items) != 1 or not isinstance(items[0], SwapVisualKV) or items[0].seed_compatible:
            continue
        visual = ((ids[r] == image_token_id) & valid[r]).nonzero().squeeze(-1)
        if visual.numel() == 0 or int(visual[-1] - visual[0]) + 1 != visual.numel():
            continue  # no image, or several images (text between them would see the first one's swap)
        start = int(valid[r].long().argmax())  # left padding ends here
        end = int(visual[-1]) + 1
        if prompt_keys[r] not in first_of:
            first_of[prompt_keys[r]] = len(plan.representatives)
            plan.representatives.append(r)
        plan.rows.append(r)
        plan.group.append(first_of[prompt_keys[r]])
        plan.prefix.append(end - start)
        plan.suffix.append(ids.shape[1] - end)
    return plan


def branch_prefill(model, plan: BranchPlan, *, input_ids: torch.Tensor, embeds: Callable[[list[int]], torch.Tensor],
                   positions: torch.Tensor, mask: torch.Tensor, rows: list[list], chunk_tokens: int
                   ) -> Iterator[tuple[list[int], object, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Prefill ``plan``'s rows; yields ``(batch rows, cache, attention mask, last rope positions (3, rows),
    first generated tokens)`` per chunk of rows, the cache ``prefix + suffix`` long (right-aligned, padding masked).

    ``embeds(batch_rows)``: the rows' ``inputs_embeds`` (image features in place), ``positions``: the batch's
    ``(4, rows, prompt)`` prefill positions, ``chunk_tokens``: cache slots per suffix forward (rows x length).
    """
    from transformers import DynamicCache

    from frankeneval.engine.decode import cache_tensors, returned_cache

    if not plan.rows:
        return
    device = input_ids.device
    n_prompt = input_ids.shape[1]
    # one plain prefill per distinct prompt: the K/V of its prefix at every layer
    reps = plan.representatives
    out = model(inputs_embeds=embeds(reps), attention_mask=mask[reps], position_ids=positions[:, reps],
                use_cache=True, logits_to_keep=1)
    cache = returned_cache(out)
    base = cache_tensors(cache)  # per layer (representatives, kv heads, prompt, head dim)
    del out
    p_max, s_max = max(plan.prefix), max(plan.suffix)
    length = p_max + s_max
    step = max(1, chunk_tokens // length)
    ids_cpu = input_ids.cpu()
    image_token = getattr(model.config, "image_token_id", None)
    for lo in range(0, len(plan.rows), step):
        part = range(lo, min(len(plan.rows), lo + step))
        batch_rows = [plan.rows[i] for i in part]
        n = len(batch_rows)
        # past layout: each row's prefix right-aligned in p_max slots (taken from its representative's plain run)
        src_time = torch.zeros(n, p_max, dtype=torch.long)
        past_valid = torch.zeros(n, p_max, dtype=torch.bool)
        suffix_ids = torch.zeros(n, s_max, dtype=ids_cpu.dtype)
        suffix_valid = torch.zeros(n, s_max, dtype=torch.bool)
        suffix_time = torch.zeros(n, s_max, dtype=torch.long)
        for k, i in enumerate(part):
            p, s = plan.prefix[i], plan.suffix[i]
            end = n_prompt - s  # the prompt's suffix starts here (in the batch's left-padded layout)
            src_time[k, p_max - p :] = torch.arange(end - p, end)
            past_valid[k, p_max - p :] = True
            suffix_time[k, s_max - s :] = torch.arange(end, n_prompt)
            suffix_ids[k, s_max - s :] = ids_cpu[plan.rows[i], end:]
            suffix_valid[k, s_max - s :] = True
        rep_of = torch.tensor([plan.group[i] for i in part], device=device)
        gather = src_time.to(device)[:, None, :, None]
        past_ids = torch.gather(ids_cpu[[plan.representatives[plan.group[i]] for i in part]], 1, src_time)
        visual = (past_ids == image_token) & past_valid
        swap = SwapWriter(plan_rows([rows[r] for r in batch_rows], len(base), visual), visual)
        past = DynamicCache()
        for j, (k_all, v_all) in enumerate(base):
            idx = gather.expand(n, k_all.shape[1], p_max, k_all.shape[3])
            k = torch.gather(k_all.index_select(0, rep_of), 2, idx)
            v = torch.gather(v_all.index_select(0, rep_of), 2, idx)
            swap.write(j, k, v)  # the sources' visual K/V from each row's swap layer on
            past.update(k, v, j)
        batch_idx = torch.tensor(batch_rows, device=device)
        row_pos = positions.index_select(1, batch_idx)
        pos = torch.gather(row_pos, 2, suffix_time.to(device)[None].expand(row_pos.shape[0], n, s_max))
        attn = torch.cat([past_valid, suffix_valid], dim=1).to(device, mask.dtype)
        suffix_embeds = model.get_input_embeddings()(suffix_ids.to(device))  # text only: no image token
        out = model(inputs_embeds=suffix_embeds, attention_mask=attn, position_ids=pos, use_cache=True,
                    logits_to_keep=1, **{_cache_argument(model): past})
        cache = returned_cache(out)
        yield batch_rows, cache, attn, positions[1:, batch_idx, -1], out.logits[:, -1].argmax(-1)
        del out, cache, past


def _cache_argument(model) -> str:
    """The forward's name for a past cache: ``cache`` (transformers >= 5.24) or ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
