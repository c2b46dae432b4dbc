#!/usr/bin/env bash
# The acceptance run's bulk outputs (results-sNN.tar.xz.NN) live in git history, not in the tree: the tree travels to
# the GPU machine with every call (64 MiB in all) and they would not fit beside the carried wheels. This writes each
# archive listed in ARCHIVES.tsv into DIR from the commit that holds it and checks its SHA-256; then
#   python bench/acceptance.py unpack --work W DIR --results     (e.g. to build the report where every sample is)
# Usage (repo root): bash bench/runs/issue28/restore_archives.sh DIR
set -euo pipefail
out=${1:?usage: restore_archives.sh DIR}
here=$(dirname "$0")
mkdir -p "$out"
grep -v '^#' "$here/ARCHIVES.tsv" | while IFS=$'\t' read -r name commit sha what; do
  [ -e "$out/$name" ] && { echo "restore_archives: $out/$name exists; not overwritten" >&2; exit 1; }
  git show "$commit:bench/runs/issue28/$name" > "$out/$name.tmp"
  echo "$sha  $out/$name.tmp" | sha256sum -c --quiet - || { rm -f "$out/$name.tmp"; echo "restore_archives: $name from $commit: SHA-256 differs" >&2; exit 1; }
  mv "$out/$name.tmp" "$out/$name"
  echo "$name ($what)"
done
