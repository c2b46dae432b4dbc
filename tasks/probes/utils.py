"""lmms-eval hooks of this task folder (``!function utils.X`` in its YAML); the implementation is shared in
frankeneval.tasks.common."""

from frankeneval.tasks.common import *  # noqa: F401,F403
