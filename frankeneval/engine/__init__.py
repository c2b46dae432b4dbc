"""The generation engine: batched Qwen2.5-VL generation with per-row interventions.

``generation`` (the :class:`~frankeneval.engine.generation.Generator`), ``interventions`` (ablation, the visual-KV
swap, attention capture: each row's interventions resolved into one :class:`~frankeneval.engine.interventions.RowPlan`
that the hooked forward, the shared-prefix branch and the static decoder all consume), ``branch`` (swap rows
prefilled from their prompt's shared prefix), ``decode`` (the static greedy decoder), ``encoding`` (prompts and
images encoded once) and ``vision_attention`` (the vision tower's windows batched). Imports only
:mod:`frankeneval.core` and :mod:`frankeneval.weights`."""
