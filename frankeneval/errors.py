"""User-facing error types. The CLI prints these as one clear line (no traceback)."""


class FrankenevalError(Exception):
    """Base class of every expected, user-facing frankeneval failure."""


class CheckpointNotFound(FrankenevalError):
    """A lineage member could not be found locally or resolved through the hub cache."""


class MissingShard(FrankenevalError):
    """The safetensors index names a shard file that is not on disk."""


class UnsafeWeights(FrankenevalError):
    """A checkpoint holds only pickle (``.bin``/``.pt``) weights and loading them was not allowed."""


class ArchitectureMismatch(FrankenevalError):
    """Two or more checkpoints do not share tensor names and shapes."""


class SpecError(FrankenevalError):
    """A merge, intervention or run specification is malformed."""


class InterventionError(FrankenevalError):
    """An intervention cannot be applied to this input (bad layer, visual-token count mismatch, ...)."""


class CorruptCheckpoint(FrankenevalError):
    """A weights file or weights index is malformed (bad header, offsets outside the file, overlapping tensors, ...)."""
