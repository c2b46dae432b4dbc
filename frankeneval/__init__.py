"""frankeneval: what does reinforcement learning change in a vision-language model, and where?

Frankenstein-style analysis of a Base -> IN (SFT / cold start) -> RL lineage: functional localization,
update characterization, transferability of spliced layer blocks, and necessity (freeze masks).
"""

__version__ = "0.1.0"
