#!/usr/bin/env bash
# Check the book (book/en and book/zh): called by .ci/run, runnable by hand.
#
#   tools/book-check.sh
#
# 1. Installs mdbook and mdbook-mermaid with `cargo install --locked` at the
#    pinned versions below, into cargo's bin directory (~/.cargo/bin), unless
#    those versions are there already.
# 2. Both editions must exist and list the same chapter files in
#    SUMMARY.md; every workspace demo crate must be included (by
#    {{#include ../../../DEMO/...}}) by some chapter of each edition; every
#    include must name a file that exists and, for FILE:ANCHOR, an anchor
#    with its ANCHOR and ANCHOR_END lines (mdbook 0.5 silently includes
#    nothing for a missing anchor). Each chapter of the two editions must
#    have the same shape: the same includes in order, heading levels, code
#    block languages, shell commands, table rows, chapter links and
#    pictures (book-check.py's shape() lists them), so a section added to
#    one edition only fails.
# 3. Builds each edition with mdbook; any WARN or ERROR line mdbook prints
#    (an unresolved include, a missing anchor, a preprocessor failure) fails
#    (tools/book-check.py mdbook-log names the one harmless line it allows).
# 4. Every relative link and #anchor in the built HTML must resolve.
# 5. The captured outputs in book/output must be current: tools/book-capture.sh
#    runs again into a temp dir, and tools/book-normalise.py compares the two
#    modulo pids, timings, rates, ids and temp names (its header lists the
#    rules); a mismatch is captured once more and fails if it recurs.
# 6. Three chapters of each edition are rendered in headless Chromium
#    (Debian's chromium, installed with apt-get when absent): the screenshot
#    must not be blank (decoded with python3's zlib, distinct colours
#    counted), the DOM after the scripts ran (--dump-dom) must hold a Rust
#    code block, a captured output and a Mermaid diagram rendered to SVG, and
#    the page must log nothing to the console (--enable-logging=stderr --v=0
#    prints every console message as an INFO:CONSOLE line; any one fails).
#    Every other chapter with a diagram is loaded too: no Mermaid syntax
#    error (it shows as an error picture, never as a build warning), no
#    console message.
#
# Time, measured on the project's 2-core machine: 3 min 40 s to 6 min on a
# fresh clone with the tools installed (the more the other load) (a release build of the workspace, every
# story run again, 2 x 11 pages loaded in Chromium); the two cargo installs
# add about 6 minutes once, apt-get install chromium about 1.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

MDBOOK_VERSION=0.5.4
# 0.17.x is the mdbook-mermaid series for mdbook 0.5 (its mdbook-preprocessor
# is 0.5.0; 0.16 and older speak mdbook 0.4's protocol and fail to parse 0.5's
# input: "Unable to parse the input").
MERMAID_VERSION=0.17.1
EDITIONS=(en zh)
PAGES=(pipes fifos shared-memory)

start=$SECONDS
tmp=$(mktemp -d /tmp/book-check.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail=0

bindir="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$bindir:$PATH"

echo "== book: tools"
if [ "$(mdbook --version 2>/dev/null)" != "mdbook v$MDBOOK_VERSION" ]; then
  cargo install --locked --quiet mdbook --version "$MDBOOK_VERSION"
fi
if [ "$(mdbook-mermaid --version 2>/dev/null)" != "mdbook-mermaid $MERMAID_VERSION" ]; then
  cargo install --locked --quiet mdbook-mermaid --version "$MERMAID_VERSION"
fi
mdbook --version
mdbook-mermaid --version
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing chromium (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq chromium >/dev/null
  else
    echo "book check: chromium is missing (apt-get install chromium, as root)"
    exit 1
  fi
fi
chromium --version 2>/dev/null | head -1

echo "== book: editions and chapters"
for ed in "${EDITIONS[@]}"; do
  if [ ! -f "book/$ed/book.toml" ]; then
    echo "book check: book/$ed/book.toml is missing: both editions (en, zh) must be present"
    fail=1
  fi
done
[ "$fail" = 0 ] || exit 1
python3 tools/book-check.py chapters "$root" "${EDITIONS[@]}" || fail=1

echo "== book: build"
for ed in "${EDITIONS[@]}"; do
  # Built outside the tree, so a check never leaves files in book/.
  if ! mdbook build "book/$ed" -d "$tmp/build-$ed" >"$tmp/mdbook-$ed.log" 2>&1; then
    cat "$tmp/mdbook-$ed.log"
    echo "book check: mdbook build book/$ed failed"
    fail=1
    continue
  fi
  python3 tools/book-check.py mdbook-log "$tmp/mdbook-$ed.log" || fail=1
  python3 tools/book-check.py links "$tmp/build-$ed" || fail=1
done

echo "== book: captured outputs"
capture_matches() {
  if ! bash tools/book-capture.sh "$tmp/$1" >"$tmp/$1.log" 2>&1; then
    cat "$tmp/$1.log"
    echo "book check: tools/book-capture.sh failed"
    return 1
  fi
  python3 tools/book-normalise.py book/output "$tmp/$1"
}
# A capture that is out of date differs on every run. One that differs
# once may have met what no rule can undo (two processes' lines cut into
# each other mid-line, as the kernel interleaves their writes): it is
# captured once more, and fails only if it differs again.
if ! capture_matches capture; then
  echo "book check: capturing once more, to tell a stale capture from a one-off"
  capture_matches capture-again || fail=1
fi

echo "== book: rendered in headless Chromium"
chrome() {
  # One fresh profile per call; --virtual-time-budget lets the page's
  # scripts (mermaid) finish before the screenshot or the DOM dump.
  local profile
  profile=$(mktemp -d "$tmp/profile.XXXXXX")
  timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic \
    --no-first-run --disable-background-networking --disable-component-update \
    --disable-sync --user-data-dir="$profile" --enable-logging=stderr --v=0 \
    --virtual-time-budget=10000 --window-size=1200,1600 "$@"
}
for ed in "${EDITIONS[@]}"; do
  [ -d "$tmp/build-$ed" ] || continue
  for page in "${PAGES[@]}"; do
    html="$tmp/build-$ed/$page.html"
    if [ ! -f "$html" ]; then
      echo "book check: book/$ed has no $page.html"
      fail=1
      continue
    fi
    out="$tmp/$ed-$page"
    chrome --screenshot="$out.png" "file://$html" >/dev/null 2>"$out.shot.log" || true
    chrome --dump-dom "file://$html" >"$out.dom.html" 2>"$out.dom.log" || true
    if [ ! -s "$out.png" ]; then
      echo "book check: $ed/$page: no screenshot"
      tail -5 "$out.shot.log"
      fail=1
    else
      python3 tools/book-check.py png "$out.png" 50 || fail=1
    fi
    python3 tools/book-check.py dom "$out.dom.html" || fail=1
    python3 tools/book-check.py console "$out.dom.log" || fail=1
    echo "book check: $ed/$page.html rendered"
  done
done

# Every other chapter: its diagrams must render too (a Mermaid syntax error
# shows as an error picture, not as a build warning), and it logs nothing.
for ed in "${EDITIONS[@]}"; do
  [ -d "$tmp/build-$ed" ] || continue
  for html in "$tmp/build-$ed"/*.html; do
    page=$(basename "$html" .html)
    case " ${PAGES[*]} print toc 404 index " in *" $page "*) continue ;; esac
    grep -q 'class="mermaid"' "$html" || continue
    out="$tmp/$ed-$page"
    chrome --dump-dom "file://$html" >"$out.dom.html" 2>"$out.dom.log" || true
    python3 tools/book-check.py mermaid "$out.dom.html" || fail=1
    python3 tools/book-check.py console "$out.dom.log" || fail=1
  done
  echo "book check: $ed: the diagrams of every other chapter rendered"
done

echo "== book: $((SECONDS - start)) s"
if [ "$fail" != 0 ]; then
  echo "book check failed"
  exit 1
fi
echo "book check passed"
