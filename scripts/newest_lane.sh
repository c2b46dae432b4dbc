#!/usr/bin/env bash
# The newest-versions lane (issue 28), run by .ci/run after the README's commands: a fresh venv with the newest
# releases pyproject's ranges allow (no constraints.txt; torch / torchvision as the README pins them, the machine's
# pip cap), then the smoke set (`pytest -m smoke`, tests/conftest.py SMOKE, ~3 min on 2 cores). A failure ends with
# one line naming every package whose version differs from constraints.txt, so a breaking release shows the day
# it appears.      scripts/newest_lane.sh [VENV_DIR]   (default .venv-newest)
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-newest}
t0=$(date +%s)
MARK="$VENV/.frankeneval-newest-lane"  # only a venv this script made is ever removed
if [ -e "$VENV" ] && [ ! -f "$MARK" ]; then
  echo "newest-versions lane: $VENV exists and was not made by this script; not touching it (pass another folder)" >&2
  exit 1
fi
rm -rf "$VENV"
python3 -m venv "$VENV" && touch "$MARK" || exit 1
P="$VENV/bin/python"
"$P" -m pip install -q torch==2.14.1 torchvision==0.29.1 || { echo "newest-versions lane: torch install failed" >&2; exit 1; }
if ! "$P" -m pip install -q --upgrade --upgrade-strategy eager -e ".[test]"; then
  echo "newest-versions lane FAILED: pip could not install the newest versions pyproject allows" >&2; exit 1
fi
"$P" -m pip freeze --exclude-editable > "$VENV/freeze.txt"
changed=$("$P" scripts/lock_diff.py constraints.txt "$VENV/freeze.txt")
echo "newest-versions lane: against constraints.txt: ${changed:-nothing newer}"
PATH="$PWD/$VENV/bin:$PATH" "$P" -m pytest -q -m smoke -p no:cacheprovider
rc=$?
if [ $rc -ne 0 ]; then
  echo "newest-versions lane FAILED (pytest rc $rc) with: ${changed:-the locked versions (nothing newer)}" >&2
  exit $rc
fi
echo "newest-versions lane passed in $(( $(date +%s) - t0 )) s with: ${changed:-the locked versions}"
