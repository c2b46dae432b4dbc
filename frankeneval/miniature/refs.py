"""The miniature world's built-in lineages as merge-spec sources.

The built-in ``tiny`` recipe (``merges/tiny.yaml``) names its models ``lineage:tiny/<member>``; the transfer analysis
resolves such refs through lineages registered with
:func:`frankeneval.transferability.mergespec.register_lineage` and never imports the miniature world itself.
:func:`register_builtin_lineages` registers the tiny random lineage (written once into frankeneval's cache on first
use); the ``frankeneval`` command and the model wrappers call it before reading any recipe.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["register_builtin_lineages", "tiny_members"]


def tiny_members() -> dict[str, Path]:
    """Member -> folder of the tiny random lineage, written once into the cache (:func:`lineage.tiny_lineage`)."""
    from frankeneval.miniature.lineage import tiny_lineage

    return tiny_lineage().paths


def register_builtin_lineages() -> None:
    """Let ``lineage:tiny/<member>`` refs resolve (idempotent; nothing is written until a ref is resolved)."""
    from frankeneval.transferability.mergespec import register_lineage

    register_lineage("tiny", tiny_members)
