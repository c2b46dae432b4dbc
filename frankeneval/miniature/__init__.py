"""The miniature world: tiny Qwen2.5-VL lineages with the hub's layout (``lineage``), the rendered world and its
tasks (``world``), the trained Base → IN → RL lineage (``training``) and the built-in lineages as merge-spec sources
(``refs``). The end-to-end demo that runs every analysis on them is :mod:`frankeneval.commands._demo`."""
