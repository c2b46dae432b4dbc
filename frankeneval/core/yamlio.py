"""The one YAML reader of user-written files (merge specs, recipes): safe, and strict about duplicate keys.

PyYAML's ``safe_load`` keeps the last of two equal keys without a word, so ``host: in`` followed further down by
``host: rl`` silently changes the merge. :func:`load_yaml` refuses a duplicate key with one line naming the key,
the file and the line, and turns every other YAML error into one line as well.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from frankeneval.errors import SpecError

__all__ = ["load_yaml"]

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _DuplicateKey(yaml.constructor.ConstructorError):
    def __init__(self, key: Any, mark: yaml.Mark) -> None:
        super().__init__(None, None, f"duplicate key {key!r}", mark)
        self.key = key


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises on a key given twice in one mapping (``<<`` merges may still be overridden)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                except TypeError:  # unhashable: the base class reports it
                    continue
                if duplicate:
                    raise _DuplicateKey(key, key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str | os.PathLike) -> Any:
    """The YAML document in ``text`` (from ``source``: a file path or a short description, named in errors).

    Raises :class:`SpecError` with one line for invalid YAML and for a key that appears twice in one mapping.
    """
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        line = f" (line {exc.problem_mark.line + 1})" if exc.problem_mark else ""
        raise SpecError(f"{source}: duplicate key {exc.key!r}{line}; each key may appear only once") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise SpecError(f"{source}: not valid YAML: {problem}{where}") from None
