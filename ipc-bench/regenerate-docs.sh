#!/bin/sh
# Regenerate every benchmark figure the repository quotes, from one release
# run of ipc-bench (two to three minutes): docs/bench-results.md,
# docs/bench.json, docs/bench.svg, docs/bench-waiting.svg, and the parts of
# README.md (readme), docs/README.zh-CN.md (readme-zh) and docs/comparison.md
# (comparison-top, comparison-measured, comparison-waiting) between
# <!-- bench:begin NAME --> and <!-- bench:end NAME -->.
# Run it on a quiet machine: other load moves every figure. Extra arguments
# go to ipc-bench (e.g. --quick, to try the generator; the docs then say so).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
exec cargo run --quiet --release -p ipc-bench -- --docs . "$@"
