"""Print, on one line, the packages of a pip freeze whose versions differ from a lock (``name old -> new``).

    python scripts/lock_diff.py constraints.txt freeze.txt
"""

from __future__ import annotations

import re
import sys


def pins(path: str) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line (names normalized as pip does)."""
    out = {}
    for line in open(path, encoding="utf-8"):
        m = re.match(r"^\s*([A-Za-z0-9._-]+)\s*==\s*([^\s;#]+)", line)
        if m:
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return out


def main(lock: str, freeze: str) -> str:
    old, new = pins(lock), pins(freeze)
    return ", ".join(f"{name} {old.get(name, 'unlocked')} -> {v}" for name, v in sorted(new.items())
                     if old.get(name) != v)


if __name__ == "__main__":
    print(main(*sys.argv[1:3]))
