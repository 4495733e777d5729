#!/usr/bin/env bash
# Runs README.md's copy recipe for every demo, exactly as written there,
# into a temporary directory; builds each copy offline against the
# dependencies already fetched; runs its default story and wants errors=0.
# A demo whose header lists too few `common` modules or nix features fails
# to build here. Called by .ci/run; run it from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# The recipe: the sh block after the marker in README.md.
recipe=$(awk '/<!-- copy-recipe -->/ { on = 1; next }
              on && /^```sh$/ { inside = 1; next }
              inside && /^```$/ { exit }
              inside' README.md)
[ -n "$recipe" ] || { echo "check-copies: no copy recipe in README.md" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# One target directory for all copies: the dependencies build once per
# set of nix features, not once per demo.
export CARGO_TARGET_DIR="$work/target"
failed=0
for dir in *-demo; do
  # As a reader would paste it, from the repository root; offline, and
  # bounded so that a story that hangs fails instead of stalling CI.
  if ! (cd "$root" && DEMO=$dir DEST="$work/$dir" timeout 900 \
        bash -euc "${recipe//cargo run/cargo run --offline --quiet}") >"$work/$dir.log" 2>&1; then
    echo "copy of $dir: FAILED"; tail -n 30 "$work/$dir.log"; failed=1; continue
  fi
  summary=$(grep '^summary:' "$work/$dir.log" | tail -n 1)
  case $summary in
    *" errors=0 "*) echo "copy of $dir: builds standalone, story ran: $summary" ;;
    *) echo "copy of $dir: the story did not end with errors=0"; tail -n 30 "$work/$dir.log"; failed=1 ;;
  esac
done
exit $failed
