"""Fast greedy decoding after a Hugging Face prefill: a preallocated KV cache, the model's own modules, CUDA graphs.

The Generator prefills with the model's own forward (vision tower, multimodal positions, interventions by hooks and
the attention interface), then hands the prompt's KV cache to :class:`StaticDecoder`, which runs the decode steps as
the text model alone (after the prefill no image is involved):

* one preallocated cache per layer, ``(rows, kv_heads, prompt + new tokens, head_dim)``: no ``torch.cat`` per step;
* grouped-query attention as one ``scaled_dot_product_attention`` per layer over the cache, each key/value head's
  query heads as its queries (no ``repeat_kv`` copy of every key and value), padding and not-yet-written slots masked
  (a boolean mask; the fused kernels accumulate in float32). An H200 profile of the first version, two batched
  matmuls (query group x cache), showed cuBLAS picking a legacy kernel for those 7-row products: 40 % of a
  264-row step;
* positions continue from the prefill's last 3-D rope position (``+1`` per step, what ``generate`` does);
* per-row ablation (``Ablate``) as a keep-mask on each layer's attention and MLP outputs, no hooks: the rows' plans
  (:class:`~frankeneval.engine.interventions.RowPlan`) through the same
  :func:`~frankeneval.engine.interventions.keep_mask` the hooked forward applies;
* on CUDA the whole step (embedding, 28 layers, lm_head, argmax, cache write) is captured once in a CUDA graph and
  replayed, so a step costs one launch instead of ~600; on CPU the same code runs eagerly (what the tests compare);
* ``compile_step=True`` (the Generator's ``decode="compiled"``): the step is ``torch.compile``-d first (Inductor fuses
  its elementwise work: the RMSNorms, rope, SiLU x up, residual adds, the masks), then captured in the same CUDA
  graph. One compiled graph serves every decoder (shapes become dynamic after the first recompile); the first call
  pays the compilation. Fused kernels round differently from the eager ones: float32 gives the same tokens (tests),
  bfloat16 may differ at near-ties, so it is a mode of its own, recorded like ``hf``.

Every projection, norm, rotary table and MLP is the model's own module (the weights are never copied), so a
spliced or ablated checkpoint decodes exactly as loaded. Attention capture (``CaptureAttention``): each step's
float32 scores of the captured layers against the cache, masked softmax, mass on the visual slots, per row and head,
kept on the device (inside the CUDA graph). Greedy only: sampling, repetition penalty, recording visual K/V and the
seed-compatible decode-step swap use ``model.generate`` (``Generator`` picks; ``decode="hf"`` forces it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from frankeneval.engine.interventions import RowPlan, decoder_layers, keep_mask
from frankeneval.errors import InterventionError

log = logging.getLogger(__name__)


def _text_parts(model):
    """(embed_tokens, rotary_emb, layers, norm, lm_head) of a Qwen2.5-VL model."""
    inner = getattr(model, "model", model)
    text = getattr(inner, "language_model", inner)
    lm_head = getattr(model, "lm_head", None)
    if lm_head is None or not hasattr(text, "embed_tokens") or not hasattr(text, "rotary_emb"):
        raise TypeError(f"static decoding does not know the layout of {type(model).__name__}")
    return text.embed_tokens, text.rotary_emb, decoder_layers(model), text.norm, lm_head


def supports_static_decode(model) -> bool:
    """Whether :class:`StaticDecoder` knows this model's layout (Qwen2.5-VL decoder layers, 3-D rope)."""
    try:
        _, rotary, layers, _, _ = _text_parts(model)
    except (TypeError, AttributeError, InterventionError):
        return False
    attn = layers[0].self_attn
    return (all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling"))
            and hasattr(layers[0], "mlp") and hasattr(rotary, "mrope_section"))


class StaticDecoder:
    """Greedy decode of a prefilled batch (see the module docstring).

    Allocate for ``rows`` prompts of at most ``prompt_len`` tokens (left-padded), fill with :meth:`write_prompt` (one
    call per prefill chunk), :meth:`set_eos`, then :meth:`run`.
    """

    GROW_TOKENS = 512  # new-token slots allocated at first; the cache doubles from there when needed

    def __init__(self, model, *, rows: int, prompt_len: int, max_new_tokens: int, device, dtype,
                 use_graph: bool | None = None, compile_step: bool = False):
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import rotate_half  # the model's own rope maths

        self.rotate_half = rotate_half
        self.embed, self.rotary, self.layers, self.norm, self.lm_head = _text_parts(model)
        attn0 = self.layers[0].self_attn
        self.n_heads = attn0.config.num_attention_heads
        self.n_kv = attn0.config.num_key_value_heads
        self.head_dim = attn0.head_dim
        self.scaling = attn0.scaling
        self.rows, self.prompt_len, self.max_new_tokens = rows, prompt_len, max_new_tokens
        device = torch.device(device)
        # the cache holds the prompt and the first GROW_TOKENS new tokens; it doubles when a step needs more (a task's
        # 8192-token budget must not reserve 8192 slots a row when answers stop after a few hundred)
        self.fed_max = max(max_new_tokens - 1, 1)  # new tokens ever fed back (the last one never is)
        length = prompt_len + min(self.fed_max, self.GROW_TOKENS)
        # zeros, not empty: masked slots are multiplied by 0 and must not hold NaN
        self.keys = [torch.zeros(rows, self.n_kv, length, self.head_dim, device=device, dtype=dtype)
                     for _ in self.layers]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.valid = torch.zeros(rows, length, dtype=torch.bool, device=device)  # slots a row attends to
        self.keep = torch.ones(len(self.layers), rows, 1, 1, device=device, dtype=dtype)
        self.ablating = False
        self.tok = torch.zeros(rows, dtype=torch.long, device=device)
        self.pos = torch.zeros(3, rows, 1, dtype=torch.long, device=device)
        self.slot = torch.tensor([prompt_len], device=device)
        self.step_idx = torch.tensor([1], device=device)
        self.out = torch.zeros(rows, max_new_tokens, dtype=torch.long, device=device)
        self.n_out = torch.ones(rows, dtype=torch.long, device=device)  # tokens in each row's ``out`` (per row: a
        # refilled row of ContinuousDecoder starts again at 1 while the others go on)
        self.slot_host = prompt_len  # ``slot`` on the host (no sync to read it)
        self.eos = torch.zeros(0, dtype=torch.long, device=device)
        self.finished = torch.zeros(rows, dtype=torch.bool, device=device)
        self.use_graph = (device.type == "cuda") if use_graph is None else use_graph
        self.graph = None
        # attention capture (CaptureAttention, query "generated"): rows, decoder layers (None: all), visual slots
        self.capture_rows: set[int] = set()
        self.capture_layers: set[int] = set()
        self.visual_slots = torch.zeros(rows, length, dtype=torch.bool, device=device)
        self.mass: torch.Tensor | None = None  # (captured layers, rows, heads, 1 + new-token slots), float32
        self.mass_index: dict[int, int] = {}  # decoder layer -> its row in ``mass``
        if compile_step:  # the instance's step, compiled (Dynamo caches by code object: compiled once per process)
            self._step = torch.compile(self._step)

    @staticmethod
    def cache_bytes(model, rows: int, length: int) -> int:
        """Bytes of the K/V cache :class:`StaticDecoder` allocates for ``rows`` x ``length`` tokens."""
        _, _, layers, _, _ = _text_parts(model)
        cfg = layers[0].self_attn.config
        head_dim = layers[0].self_attn.head_dim
        elt = next(model.parameters()).element_size()
        return 2 * len(layers) * rows * cfg.num_key_value_heads * length * head_dim * elt

    def write_prompt(self, rows, cache, attention_mask: torch.Tensor, last_positions: torch.Tensor,
                     first_tokens: torch.Tensor, plans: list[RowPlan] | None = None,
                     visual: torch.Tensor | None = None, end: int | None = None) -> None:
        """Rows ``rows`` (decoder row indices, in the prefill's order) from one prefill: its ``DynamicCache``, padding
        mask ``(rows, length)``, ``(3, rows)`` rope positions of the last prompt token, the tokens the prefill
        produced, and the rows' intervention plans (``plans``, one per row; their ablations zero the layers'
        attention and MLP outputs at every decode step, :func:`~frankeneval.engine.interventions.keep_mask`; their
        ``CaptureAttention(query="generated")`` records each step's attention mass on the visual slots, ``visual``
        ``(rows, length)`` marking the prompts' visual tokens). A prefill shorter than ``prompt_len`` is
        right-aligned; the slots before it stay masked. ``end``: the slot after the prompt (default ``prompt_len``;
        :class:`ContinuousDecoder` writes a refill so that it ends at the current slot)."""
        kv = cache_tensors(cache)
        dev = self.valid.device
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=dev)
        length = kv[0][0].shape[2]
        end = self.prompt_len if end is None else end
        off = end - length
        if off < 0:
            raise ValueError(f"a prefill of {length} tokens does not fit the {end}-token prompt slots")
        for j, (k, v) in enumerate(kv):
            self.keys[j][idx, :, off:end] = k
            self.values[j][idx, :, off:end] = v
        self.valid[idx] = False
        self.valid[idx, off:end] = attention_mask.to(dev).bool()
        self.pos[:, idx, 0] = last_positions.to(dev).long() + 1  # the first fed-back token's position
        self.tok[idx] = first_tokens.to(dev)
        self.out[idx, 0] = first_tokens.to(dev)
        self.n_out[idx] = 1
        if self.eos.numel():
            self.finished[idx] = torch.isin(self.tok[idx], self.eos)
        keep = keep_mask(plans, len(self.layers)) if plans is not None else None
        self.keep[:, idx, 0, 0] = 1.0 if keep is None else keep.to(dev, self.keep.dtype)  # a refilled row: reset
        if keep is not None and bool((keep == 0).any()):
            self.ablating = True
        for i, plan in enumerate(plans or ()):
            if plan.capture is None or plan.capture.query != "generated":
                continue
            if visual is None:
                raise InterventionError("CaptureAttention at decode steps needs the prompts' visual-token positions")
            if self.mass is not None:
                raise InterventionError("every prompt must be written before the first decode step")
            row = int(idx[i])
            self.capture_rows.add(row)
            every = set(range(len(self.layers)))
            self.capture_layers |= plan.capture_layers if plan.capture_layers is not None else every
            self.visual_slots[row, off : self.prompt_len] = visual[i].to(dev).bool()

    def set_eos(self, eos_ids: set[int]) -> None:
        self.eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=self.tok.device)
        self.finished = torch.isin(self.tok, self.eos)

    # ------------------------------------------------------------------------------------------------ one step
    def _step(self) -> None:
        """Feed ``tok`` at ``slot``; write the next greedy token into ``out[:, step_idx]``; advance the state."""
        h = self.embed(self.tok[:, None])  # (rows, 1, hidden)
        cos, sin = self.rotary(h, self.pos)  # (rows, 1, head_dim)
        cos, sin = cos[:, None], sin[:, None]
        self.valid.index_fill_(1, self.slot, True)
        mask = self.valid[:, None, None, :]
        rows, rep = self.rows, self.n_heads // self.n_kv
        for j, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(rows, 1, self.n_heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(rows, 1, self.n_kv, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(rows, 1, self.n_kv, self.head_dim).transpose(1, 2)
            q = q * cos + self.rotate_half(q) * sin
            k = k * cos + self.rotate_half(k) * sin
            self.keys[j].index_copy_(2, self.slot, k)
            self.values[j].index_copy_(2, self.slot, v)
            # query head h reads kv head h // rep (repeat_kv's order): group the heads instead of copying the cache
            qg = q.reshape(rows, self.n_kv, rep, self.head_dim)
            if j in self.mass_index:
                self._capture_mass(j, qg, mask)
            o = F.scaled_dot_product_attention(qg, self.keys[j], self.values[j], attn_mask=mask, scale=self.scaling)
            o = o.reshape(rows, 1, self.n_heads * self.head_dim)
            a = attn.o_proj(o)
            if self.ablating:
                a = a * self.keep[j]
            h = h + a
            m = layer.mlp(layer.post_attention_layernorm(h))
            if self.ablating:
                m = m * self.keep[j]
            h = h + m
        logits = self.lm_head(self.norm(h)[:, 0])
        nxt = logits.argmax(-1)
        self.out.scatter_(1, self.n_out.clamp(max=self.out.shape[1] - 1)[:, None], nxt[:, None])
        self.n_out += 1
        self.finished |= torch.isin(nxt, self.eos)
        self.tok.copy_(nxt)
        self.pos += 1
        self.slot += 1
        self.step_idx += 1

    def _capture_mass(self, j: int, qg: torch.Tensor, mask: torch.Tensor) -> None:
        """This step's attention mass on the visual slots at decoder layer ``j``, every row and head (float32 scores,
        masked softmax: what the hooked forward's capture computes), into ``mass[:, :, :, step_idx]``."""
        scores = torch.matmul(qg.float(), self.keys[j].float().transpose(-1, -2)).mul_(self.scaling)
        scores = scores.masked_fill(~mask, float("-inf"))  # (rows, kv heads, rep, slots)
        probs = torch.softmax(scores, dim=-1)
        share = (probs * self.visual_slots[:, None, None, :].to(probs.dtype)).sum(dim=-1)
        self.mass[self.mass_index[j]].index_copy_(2, self.step_idx, share.reshape(self.rows, self.n_heads, 1))

    def _alloc_capture(self) -> None:
        """The capture buffer, once every prompt is written (before a CUDA graph is recorded)."""
        if not self.capture_rows or self.mass is not None:
            return
        layers = sorted(self.capture_layers)
        self.mass_index = {j: c for c, j in enumerate(layers)}
        width = self.keys[0].shape[2] - self.prompt_len + 1
        self.mass = torch.zeros(len(layers), self.rows, self.n_heads, width, dtype=torch.float32,
                                device=self.tok.device)

    def generated_mass(self, row: int, layer: int, n: int) -> torch.Tensor:
        """``(heads, n - 1)``: the mass of decode steps 1 ... n - 1 (the queries that produced tokens 2 ... n) of a
        capturing row at decoder layer ``layer``; the first token's query is the prefill's."""
        return self.mass[self.mass_index[layer], row, :, 1:n]

    def _capture(self) -> None:
        """Record one step in a CUDA graph (after two warm-up steps on a side stream), then restore the state."""
        state = (self.tok, self.pos, self.slot, self.step_idx, self.valid, self.out, self.finished, self.n_out)
        saved = [t.clone() for t in state]
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._step()
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._step()
        finally:
            # the warm-up and capture wrote K/V into future slots: masked (not valid) until overwritten by their step;
            # the rest of the state goes back to where it was (also when the capture failed)
            torch.cuda.synchronize()
            for t, s in zip(state, saved):
                t.copy_(s)

    # ------------------------------------------------------------------------------------------------ the loop
    def run(self, done: Callable[[torch.Tensor, int], bool] | None = None, check_every: int = 16) -> torch.Tensor:
        """Decode up to ``max_new_tokens`` tokens per row; returns ``(rows, n)`` token ids, ``n <= max_new_tokens``.

        Stops early once every row has produced an EOS, or when ``done(tokens_so_far, n)`` says every row is finished
        (checked every ``check_every`` steps; rows keep generating after they finish, the caller cuts them).
        """
        n = 1
        self._alloc_capture()
        if self.use_graph and self.max_new_tokens > 1:
            self._capture_or_eager()
        while n < self.max_new_tokens:
            checking = n % check_every == 0 or n == 1
            if checking and (bool(self.finished.all()) or (done is not None and done(self.out[:, :n], n))):
                return self.out[:, :n]
            if self.prompt_len + n - 1 >= self.keys[0].shape[2]:  # this step's slot is past the cache: grow it
                self._grow()
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
            self.slot_host += 1
            n += 1
        return self.out[:, :n]

    def _grow(self) -> None:
        """Double the new-token slots (at most ``max_new_tokens - 1``), keeping every written slot; a CUDA graph is
        captured again for the new shapes."""
        old = self.keys[0].shape[2] - self.prompt_len
        self._resize(self.prompt_len + min(self.fed_max, 2 * old))

    def _resize(self, length: int) -> None:
        """Make the cache ``length`` slots long, keeping slots ``[0, min(old, length))``; a CUDA graph is captured
        again for the new shapes."""

        def resized(t: torch.Tensor, fill: float) -> torch.Tensor:
            shape = list(t.shape)
            shape[-2 if t.dim() == 4 else -1] = length
            new = torch.full(shape, fill, dtype=t.dtype, device=t.device)
            keep = min(length, t.shape[-2 if t.dim() == 4 else -1])
            if t.dim() == 4:
                new[:, :, :keep] = t[:, :, :keep]
            else:
                new[:, :keep] = t[:, :keep]
            return new

        recapture = self.graph is not None
        self.graph = None  # first: the old graph's memory and its hold on the old cache go before the new is made
        for cache in (self.keys, self.values):
            for i in range(len(cache)):  # one layer at a time (no name keeps an old one): at most one beside the new
                cache[i] = resized(cache[i], 0.0)
        self.valid = resized(self.valid, False)
        self.visual_slots = resized(self.visual_slots, False)
        if self.mass is not None:
            wider = self.mass.new_zeros(*self.mass.shape[:3], length - self.prompt_len + 1)
            keep = min(wider.shape[3], self.mass.shape[3])
            wider[..., :keep] = self.mass[..., :keep]
            self.mass = wider
        if recapture:
            self._capture_or_eager()

    def _capture_or_eager(self) -> None:
        try:
            self._capture()
        except RuntimeError as exc:  # e.g. a kernel that cannot be captured: same maths, launched step by step
            log.warning("CUDA graph capture failed (%s); decoding without it", " ".join(str(exc).split())[:200])
            self.graph = None
            torch.cuda.synchronize()


def returned_cache(out):
    """The KV cache a forward returned (``cache`` from transformers 5.24 on, ``past_key_values`` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def cache_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer ``(keys, values)`` of a transformers cache."""
    return [(layer.keys, layer.values) for layer in cache.layers]
