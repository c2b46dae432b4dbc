"""Inputs checked before any model work: every image a run selects is decoded and every row parsed first.

A broken input stops the run before it starts, with one line naming the first broken file (or ``file:line`` of a
row) and how many are broken (:class:`BrokenInput`). With ``skip`` (``--skip-broken``) the broken ones are left
out instead and returned as records ``{"id", "path", "reason"}``, which the run writes into its outputs and its
report prints (:func:`format_skipped`): never silently dropped. Checks run after selection, so skipping never
changes which items are selected: a skipped item is not replaced by another.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from frankeneval.errors import FrankenevalError

__all__ = ["SKIP_BROKEN_HELP", "Broken", "BrokenInput", "BrokenRow", "check_inputs", "format_skipped",
           "image_problem", "parse_row"]

T = TypeVar("T")

SKIP_BROKEN_HELP = (
    "skip selected inputs that cannot be read (a truncated or missing image, a malformed data row) instead of "
    "stopping before the run starts; they are checked after selection (a skipped item is not replaced by another, "
    "so the same items are selected either way), listed in the output's 'skipped' record and shown in the report")


class BrokenInput(FrankenevalError):
    """Selected inputs cannot be read; raised before any model work (one line: the first one and the count)."""


class Broken(Exception):
    """Raised by an item check: ``where`` (a file, or ``file:line`` of a row) cannot be used, because ``reason``."""

    def __init__(self, where: str | Path, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where, self.reason = str(where), reason


@dataclass(frozen=True)
class BrokenRow:
    """A data line that is not valid JSON, kept in its row's place so index-based sub-samples do not shift."""

    where: str  # file:line
    reason: str


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, KeyError):
        return f"missing field {text}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def _strict_images():
    """PIL refuses truncated images while checking, even if a library (lmms-eval does) told it to accept them."""
    from PIL import ImageFile

    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def image_problem(path: str | Path) -> str | None:
    """Why the image file at ``path`` cannot be used (not found, not an image, truncated ...), or None.

    Every pixel is decoded (``Image.open`` reads the header only; ``verify()`` misses a truncated JPEG)."""
    from PIL import Image

    if not Path(path).is_file():
        return "image not found"
    try:
        with _strict_images(), Image.open(path) as im:
            im.load()
    except Exception as exc:  # noqa: BLE001 - OSError (truncated), UnidentifiedImageError, DecompressionBombError, ...
        return f"unreadable image ({_reason(exc)})"
    return None


def parse_row(row: Any, where: str, parse: Callable[[Any], T]) -> T:
    """``parse(row)``, or :class:`Broken` naming ``where`` when the row is a :class:`BrokenRow` or lacks a field."""
    if isinstance(row, BrokenRow):
        raise Broken(row.where, row.reason)
    try:
        return parse(row)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise Broken(where, f"bad row ({_reason(exc)})") from None


def check_inputs(items: Iterable[T], check: Callable[[T], Any], *, ident: Callable[[T], str] = str,
                 skip: bool = False, what: str = "inputs", progress: bool = True) -> tuple[list, list[dict]]:
    """Check every item: ``check(item)`` returns what the run uses (the item, or the parsed row) or raises
    :class:`Broken`. Returns ``(usable, skipped)``; without ``skip`` any broken item raises one
    :class:`BrokenInput` naming the first and the count. A progress bar shows on long lists."""
    items = list(items)
    good, skipped = [], []
    bar = None
    if progress and len(items) >= 200:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=f"checking {what}", unit="item", leave=False)
    try:
        for item in items:
            try:
                good.append(check(item))
            except Broken as exc:
                skipped.append({"id": ident(item), "path": exc.where, "reason": exc.reason})
            if bar:
                bar.update()
    finally:
        if bar:
            bar.close()
    if skipped and not skip:
        first = skipped[0]
        raise BrokenInput(
            f"{first['path']}: {first['reason']} ({first['id']}; {len(skipped)} of {len(items)} selected {what} "
            "broken). Nothing was run: fix or remove the file, or rerun with --skip-broken to skip the broken ones "
            "(recorded in the outputs)")
    return good, skipped


def format_skipped(skipped: Sequence[dict] | None, limit: int = 20) -> list[str]:
    """Report lines for skipped inputs (none when nothing was skipped)."""
    if not skipped:
        return []
    lines = [(f"skipped {len(skipped)} broken input{'s' if len(skipped) != 1 else ''} (--skip-broken; "
              "not in the figures above):")]
    lines += [f"  {s.get('task') + ' ' if s.get('task') else ''}{s['id']}: {s['path']}: {s['reason']}"
              for s in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more (see the output's 'skipped' record)")
    return lines
