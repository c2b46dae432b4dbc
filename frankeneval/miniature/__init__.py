"""The miniature world: tiny Qwen2.5-VL lineages with the hub's layout (``lineage``), the rendered world and its
tasks (``world``), the trained Base → IN → RL lineage (``training``) and the end-to-end demo (``demo``)."""
