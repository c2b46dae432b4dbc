"""The ``frankeneval`` console script.

Each subcommand lives in its own module under :mod:`frankeneval.commands` and is discovered
automatically. A command module defines:

* ``COMMAND`` -- the subcommand name (e.g. ``"splice"``),
* ``HELP`` -- one line for ``frankeneval --help``,
* ``add_arguments(parser)`` -- its arguments (the parser's description is the module docstring),
* ``run(args) -> int`` -- a thin shell over library functions; returns the exit code.

Commands are thin: the work is done by library functions that the tests call directly.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from types import ModuleType

from frankeneval import __version__
from frankeneval.errors import FrankenevalError, disk_error_line


def _command_modules() -> list[ModuleType]:
    import frankeneval.commands as pkg

    modules = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        if hasattr(module, "COMMAND") and hasattr(module, "run"):
            modules.append(module)
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="frankeneval",
        description=(
            "Frankenstein-style analysis of Base -> IN -> RL vision-language model lineages: "
            "where abilities live, what RL changes, and whether RL-updated layer blocks transfer. "
            "Run `frankeneval COMMAND --help` for each command."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"frankeneval {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        p = sub.add_parser(
            module.COMMAND,
            help=module.HELP,
            description=(module.__doc__ or module.HELP).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from frankeneval.miniature.refs import register_builtin_lineages

    register_builtin_lineages()  # the built-in tiny recipe's lineage:tiny/<member> refs (written on first use)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except FrankenevalError as exc:  # expected, user-facing failures: one clear line, no traceback
        print(f"frankeneval {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"frankeneval {args.command}: interrupted; finished work is kept, rerun to resume.", file=sys.stderr)
        return 130
    except Exception as exc:  # a read-only, full or forbidden disk: one line naming the path, no traceback
        line = disk_error_line(exc, fallback=_output_of(args))
        if line is None:
            raise
        print(f"frankeneval {args.command}: error: {line}", file=sys.stderr)
        return 1


def _output_of(args: argparse.Namespace) -> str | None:
    """The command's output path (``--out`` or its positional output folder), named by a disk error whose own
    message names no file (a write to an open descriptor)."""
    for name in ("out", "dir", "run_dir"):
        value = getattr(args, name, None)
        if value:
            return str(value)
    return None


if __name__ == "__main__":
    sys.exit(main())
