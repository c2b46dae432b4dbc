"""Window attention of the Qwen2.5-VL vision tower in a few batched calls instead of one call per window.

transformers' vision attention (``sdpa`` / ``eager``) splits the patches into their attention windows (64 patches
each) at ``cu_seqlens`` and calls the attention function once per window: 32 layers x ~9 windows per 336 px image,
i.e. ~18,000 small calls for 64 images, which made the vision tower the slowest part of encoding a batch.

:func:`batched_windows` switches the vision tower, for a block, to :func:`window_attention`, registered through
transformers' attention interface (the documented way to add an implementation) under :data:`NAME`. A forward
pre-hook on each vision attention module keeps the real window boundaries on the module and hands transformers one
window spanning all patches, so transformers makes one call per layer; :func:`window_attention` then groups the
windows by length and runs one ``scaled_dot_product_attention`` per length (all windows of equal-size images have one
or two lengths): the same maths as the per-window calls, equal in float32 (tests). Only the default ``sdpa`` is
replaced; a model loaded with another vision attention (eager, flash-attention) keeps it.

The name holds no word a library interprets: transformers (5.25) reads any implementation whose name contains
"flash" as a request for a flash-attention kernel and fails to load one (issue 28). Nothing here depends on the name
beyond its being registered.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from itertools import pairwise

import torch
import torch.nn.functional as F

NAME = "frankeneval_vision_windows"
_BOUNDS = "_frankeneval_window_bounds"  # attribute of a vision attention module: its forward's real window boundaries


def window_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """Attention within each window of the boundaries the pre-hook left on ``module``, for ``(1, heads, patches,
    head_dim)`` inputs, returning ``((1, patches, heads, head_dim), None)`` as transformers' attention functions do."""
    bounds = getattr(module, _BOUNDS, None)
    if bounds is None:  # not inside batched_windows' hook: plain attention over the chunk it was given
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling)
        return out.transpose(1, 2).contiguous(), None
    heads, n, dim = query.shape[1:]
    q, k, v = query[0], key[0], value[0]
    out = query.new_empty(n, heads, dim)
    for length, m, idx in _windows(bounds):
        qs, ks, vs = (t.index_select(1, idx).view(heads, m, length, dim).transpose(0, 1) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, scale=scaling)  # (windows, heads, length, dim)
        out.index_copy_(0, idx, o.permute(0, 2, 1, 3).reshape(m * length, heads, dim))
    return out[None], None


_WINDOWS: dict | None = None  # inside batched_windows: window groups per boundary tensor (one forward's two kinds)


def _windows(cu_seq_lens: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
    """``(length, windows, patch index)`` per window length: the patches of all windows of that length, window by
    window. Read once per boundary tensor in a forward (not once per layer: each read waits for the GPU)."""
    key = (cu_seq_lens.data_ptr(), cu_seq_lens.numel(), str(cu_seq_lens.device))
    if _WINDOWS is not None and key in _WINDOWS:
        return _WINDOWS[key][1]
    bounds = cu_seq_lens.tolist()
    starts_by_length: dict[int, list[int]] = defaultdict(list)
    for lo, hi in pairwise(bounds):
        if hi > lo:
            starts_by_length[hi - lo].append(lo)
    groups = [(length, len(starts),
               (torch.tensor(starts)[:, None] + torch.arange(length)).reshape(-1).to(cu_seq_lens.device))
              for length, starts in starts_by_length.items()]
    if _WINDOWS is not None:  # the tensor stays referenced while cached: its address cannot be reused meanwhile
        _WINDOWS[key] = (cu_seq_lens, groups)
    return groups


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if NAME not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(NAME, window_attention)


def _vision_attention_modules(model) -> list:
    """The attention module of every vision block (the modules whose ``cu_seqlens`` the pre-hook rewrites)."""
    visual = getattr(getattr(model, "model", model), "visual", None) or getattr(model, "visual", None)
    return [blk.attn for blk in getattr(visual, "blocks", [])]


def _keep_bounds(module, args, kwargs):
    """Forward pre-hook: keep the real window boundaries on the module; transformers sees one window of all patches."""
    cu_seqlens = kwargs.get("cu_seqlens")
    if cu_seqlens is None:  # a transformers that passes it otherwise: its per-window calls, no stale boundaries
        module.__dict__.pop(_BOUNDS, None)
        return None
    setattr(module, _BOUNDS, cu_seqlens)
    n = int(args[0].shape[0]) if args else int(kwargs["hidden_states"].shape[0])
    return args, {**kwargs, "cu_seqlens": torch.tensor([0, n], dtype=cu_seqlens.dtype)}  # on the CPU: no GPU read


@contextmanager
def batched_windows(model):
    """Run the block with the vision tower's window attention batched (only when it uses ``sdpa``)."""
    vision = getattr(model.config, "vision_config", None)
    if vision is None or getattr(vision, "_attn_implementation", None) != "sdpa":
        yield
        return
    modules = _vision_attention_modules(model)
    if not modules:
        yield
        return
    global _WINDOWS
    _register()
    model.set_attn_implementation({"vision_config": NAME})
    hooks = [m.register_forward_pre_hook(_keep_bounds, with_kwargs=True) for m in modules]
    _WINDOWS = {}
    try:
        yield
    finally:
        _WINDOWS = None
        for h in hooks:
            h.remove()
        for m in modules:
            if hasattr(m, _BOUNDS):
                delattr(m, _BOUNDS)
        model.set_attn_implementation({"vision_config": "sdpa"})
