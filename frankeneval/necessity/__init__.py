"""Analysis 4, necessity: which blocks RL must update, as freeze specs for trainers (``freeze``)."""
