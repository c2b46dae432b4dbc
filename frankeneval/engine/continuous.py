"""Continuous batching on the static decoder: a finished row's slot is refilled while the other rows decode on.

:class:`ContinuousDecoder` is a :class:`~frankeneval.engine.decode.StaticDecoder` whose rows are independent: each
row has its own output counter (``n_out``), rope positions and padding mask, so a new request's prefill can be
written into a freed row (its prompt ending at the current cache slot) between two decode steps. All rows still
write each step's keys and values at one shared slot, which is what lets the step be one CUDA graph.

The cache is a window over that shared slot axis. When the slot reaches the window's end, the live rows' content
(the last ``longest live row`` slots) is moved to the front, in place (the CUDA graph keeps its tensors), and the
window grows only when the live rows need more. A refill whose prompt is longer than the current slot moves the
content to the right first. Every step attends over the whole window, and at 7B with a hundred rows reading a
window of 4,000 slots costs as much as reading the weights, so a window longer than the live rows need (the long
prompts of the first waves answered, the Generator running the longest prompts first) is shrunk: when it is 1.5
times the live content plus room for the next steps and ``GROW_TOKENS`` new tokens or more, the content moves to
the front and the window is cut to that (``SHRINK``; the CUDA graph is captured again, a fraction of a second
against the hundreds of steps a wave runs). Masked slots are never read, so a moved, shrunk or refilled row decodes
exactly as it would have in a batch of its own (float32: the tests compare token for token).

The Generator drives it (:meth:`frankeneval.engine.generation.Generator._generate_continuous`): ``steps`` of
``check_every`` tokens, then harvest the finished rows (EOS, a stop string, the token budget) and refill them from
the queue; a row with nothing left to take is retired (it keeps computing, unread, until the queue drains).
"""

from __future__ import annotations

from frankeneval.engine.decode import StaticDecoder


class ContinuousDecoder(StaticDecoder):
    """A :class:`StaticDecoder` whose rows are refilled (see the module docstring)."""

    CHECK_EVERY = 16  # decode steps between two harvests
    SHRINK = True  # cut a window 1.5 times what the live rows need, or longer (module docstring); False: never
    SHRINK_RATIO = 1.5

    def __init__(self, model, *, rows: int, prompt_len: int, max_new_tokens: int, device, dtype,
                 check_every: int | None = None, use_graph: bool | None = None, compile_step: bool = False):
        check_every = check_every or self.CHECK_EVERY
        # a row may run up to check_every tokens past its budget before it is harvested: room for them in ``out``
        super().__init__(model, rows=rows, prompt_len=prompt_len, max_new_tokens=max_new_tokens + check_every + 1,
                         device=device, dtype=dtype, use_graph=use_graph, compile_step=compile_step)
        self.check_every = check_every
        self.start = [prompt_len] * rows  # the first slot of each row's content (host)
        self.live: set[int] = set()

    # ------------------------------------------------------------------------------------------------ rows
    def started(self, rows: list[int], prompt_slots: int) -> None:
        """Rows ``rows`` now hold a prompt of ``prompt_slots`` slots ending at the current slot."""
        for r in rows:
            self.start[r] = self.slot_host - prompt_slots
            self.live.add(r)

    def retire(self, row: int) -> None:
        """Row ``row`` has nothing more to decode (its slot keeps computing, unread)."""
        self.live.discard(row)

    def room_for_prompt(self, prompt_slots: int) -> int:
        """The slot a refill's prompt of ``prompt_slots`` slots ends at (the current one, moved right first when the
        prompt is longer than that)."""
        if self.slot_host < prompt_slots:
            self._move(prompt_slots)
        return self.slot_host

    # ------------------------------------------------------------------------------------------------ steps
    def steps(self, n: int) -> None:
        """Decode ``n`` steps for every row (made room for first)."""
        self._shrink(n)
        self._ensure(n)
        if self.use_graph and self.graph is None:
            self._capture_or_eager()
        for _ in range(n):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
        self.slot_host += n

    def _live_length(self) -> int:
        return max((self.slot_host - self.start[r] for r in self.live), default=0)

    def _ensure(self, n: int) -> None:
        """Room for ``n`` more steps: move the live content to the front, growing the window when it must."""
        length = self.keys[0].shape[2]
        if self.slot_host + n <= length:
            return
        target = self._live_length()
        if target + n > length:
            self._resize(max(2 * length, target + n + self.GROW_TOKENS))
        self._move(target)

    def _shrink(self, n: int) -> None:
        """Cut the window to what the live rows, ``n`` more steps and ``GROW_TOKENS`` new tokens need, when it is
        ``SHRINK_RATIO`` times that or longer (the content moves to the front first; a refill with a longer prompt
        makes room again, room_for_prompt; a row that outgrows it grows it, _ensure)."""
        if not self.SHRINK or self.mass is not None:
            return
        target = self._live_length() + n + self.check_every + self.GROW_TOKENS
        if self.keys[0].shape[2] < self.SHRINK_RATIO * target:
            return
        self._move(self._live_length())
        self._resize(target)

    def _move(self, new_slot: int) -> None:
        """Move the content of the last ``min(slot, new_slot)`` slots so that it ends at ``new_slot`` (in place)."""
        old = self.slot_host
        if new_slot == old:
            return
        if new_slot + self.check_every > self.keys[0].shape[2]:
            self._resize(new_slot + self.check_every + self.GROW_TOKENS)
        keep = min(old, new_slot)
        src, dst = slice(old - keep, old), slice(new_slot - keep, new_slot)
        for t in (*self.keys, *self.values):
            t[:, :, dst] = t[:, :, src].clone()
        for t in (self.valid, self.visual_slots):
            window = t[:, src].clone()
            t.zero_()
            t[:, dst] = window
        self.slot.fill_(new_slot)
        self.slot_host = new_slot
        self.start = [s + new_slot - old for s in self.start]
