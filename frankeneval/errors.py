"""User-facing error types. The CLI prints these as one clear line (no traceback)."""

import errno


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


class OutputRefused(FrankenevalError):
    """An output folder or file is not frankeneval's to write: it is an input, a model checkpoint, a symbolic link,
    or holds files frankeneval did not write. Nothing was written."""


class NonFiniteWeights(FrankenevalError):
    """Weight matrices hold NaN or Inf values, so their updates and spectra cannot be measured (names them)."""


class NoTokenizer(FrankenevalError):
    """A model has no usable tokenizer (no tokenizer files: transformers would make an empty one)."""


# errno -> what it means for an output, and what the user can do (see disk_error_line)
DISK_ERRNOS = {
    errno.EROFS: ("read-only file system", "write the output to a writable folder (--out)"),
    errno.ENOSPC: ("no space left on the device", "free some space or write the output elsewhere (--out), then rerun"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write the output elsewhere (--out), then rerun"),
    errno.EACCES: ("permission denied", "check that path's permissions, or write the output elsewhere (--out)"),
    errno.EPERM: ("operation not permitted", "check that path's permissions, or write the output elsewhere (--out)"),
}


def disk_error(exc: BaseException) -> OSError | None:
    """The OSError of a read-only, full or forbidden disk (:data:`DISK_ERRNOS`) that ``exc`` is or was caused by;
    None for anything else."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def disk_error_line(exc: BaseException, fallback: str | None = None) -> str | None:
    """One line for a read-only / full / forbidden disk: the path (the error's own file, else ``fallback``: the
    command's output folder), what happened and what to do; None when ``exc`` is no such error."""
    err = disk_error(exc)
    if err is None:
        return None
    what, todo = DISK_ERRNOS[err.errno]
    path = err.filename if err.filename is not None else fallback
    verb = "access" if err.errno in (errno.EACCES, errno.EPERM) else "write"  # a permission may be a read's
    where = f"cannot {verb} {path}" if path is not None else f"cannot {verb} the output"
    if err.filename2 is not None:
        where += f" (or {err.filename2})"
    return f"{where}: {what} ({errno.errorcode.get(err.errno, err.errno)}); {todo}"
