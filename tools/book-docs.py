#!/usr/bin/env python3
"""Extract the parts of docs/ that the book shows into OUTDIR/*.md.

    python3 tools/book-docs.py DOCS_DIR OUTDIR

Called by tools/book-capture.sh. The book never retypes a figure or a
table from docs/: docs/ is regenerated from a benchmark run
(ipc-bench/regenerate-docs.sh) and edited with the tests
(docs/reliability.md), and these extracts follow it.

An extract is a section of a doc, found by its heading (or its
`<!-- bench:begin NAME -->` marker), with three changes so that it reads
inside a book chapter:
- its own heading is left out (the chapter has one) and deeper headings
  move up one level less than the chapter's (### stays under the chapter's ##);
- links to files outside the book become plain text (the book is also read
  outside the repository; a link there would break), links to #anchors
  within the same section stay;
- an image line naming an SVG in docs/ becomes that SVG, inline (the
  book's HTML holds only what is under book/*/src); other images are left
  out. (The measured chart, docs/bench.svg, the chapter includes itself.)
"""

import re
import sys
from pathlib import Path


def section(text, heading, marker_end=None, optional=False):
    """Lines after the heading that starts with `heading` (so a heading may
    grow a parenthesis) up to the next heading of the same or a higher
    level, or up to `marker_end`. A missing heading is an error, unless
    `optional` (then None)."""
    lines = text.split("\n")
    found = [i for i, l in enumerate(lines) if l.startswith(heading)]
    if not found:
        if optional:
            return None
        sys.exit(f"book-docs: no heading starting with {heading!r}")
    start = found[0]
    level = len(heading) - len(heading.lstrip("#"))
    heading = lines[start]
    body = []
    for line in lines[start + 1 :]:
        if marker_end and line.startswith(marker_end):
            break
        m = re.match(r"(#+) ", line)
        if m and len(m.group(1)) <= level:
            break
        body.append(line)
    return body


def first_table(lines):
    """The first Markdown table in `lines` (consecutive lines starting with |)."""
    out = []
    for line in lines:
        if line.startswith("|"):
            out.append(line)
        elif out:
            break
    if not out:
        sys.exit("book-docs: no table found")
    return out


LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def unlink(line):
    def repl(m):
        bang, text, target = m.groups()
        if bang:
            return ""
        if target.startswith(("http://", "https://")):
            return m.group(0)
        return text

    return LINK.sub(repl, line)


def inline_svg(line, docs):
    """An image line naming an SVG in docs/ becomes the SVG itself (the book
    is built from book/*/src, which does not hold docs/' files); any other
    image line is left out."""
    m = re.match(r"\s*!\[[^\]]*\]\(([^)\s]+\.svg)\)\s*$", line)
    if m and docs and (docs / m.group(1)).is_file():
        svg = (docs / m.group(1)).read_text()
        # An HTML block ends at a blank line: drop blank lines inside.
        return "\n".join(l for l in svg.split("\n") if l.strip())
    return None


def tidy(lines, docs=None):
    out = []
    for line in lines:
        if line.startswith("<!--"):
            continue
        if re.match(r"\s*!\[", line):
            svg = inline_svg(line, docs)
            if svg:
                out.extend(["", svg, ""])
            continue
        out.append(unlink(line))
    # No leading or trailing blank lines.
    while out and not out[0].strip():
        out.pop(0)
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(out) + "\n"


def main():
    docs, out = Path(sys.argv[1]), Path(sys.argv[2])
    comparison = (docs / "comparison.md").read_text()
    results = (docs / "bench-results.md").read_text()
    reliability = (docs / "reliability.md").read_text()

    extracts = {
        # The properties of every mechanism, one column each.
        "doc-comparison-table": first_table(comparison.split("\n")),
        # The copy diagrams (Mermaid) and their notes.
        "doc-where-copied": section(
            comparison, "## Where the data is copied", "<!-- bench:begin"
        ),
        # The measured table and what the run shows.
        "doc-measured": section(
            comparison, "## Measured", "<!-- bench:end"
        ),
        # The run's reading of its own figures, and the targets.
        "doc-run-shows": section(
            comparison, "## What this run shows", "<!-- bench:end"
        ),
        # Round trips: what waiting costs.
        "doc-round-trip": section(results, "## Round trip of a 64 B message"),
        # The benchmark's own section on waiting (spin, yield, futex,
        # semaphores, a pipe), where docs/comparison.md has one.
        "doc-cost-of-waiting": section(
            comparison, "## The cost of waiting", "<!-- bench:end", optional=True
        ) or [
            "*(This version of docs/comparison.md has no \"cost of waiting\" "
            "section; the round trips above are what it measured of waiting.)*"
        ],
        # How each benchmark row waits (spin, yield, sleep in the kernel).
        "doc-bench-configuration": first_table(
            section(results, "## Configuration")
        ),
        # What every demo promises when its peer dies.
        "doc-peer-dies": section(reliability, "## When the peer dies"),
        # SIGINT, SIGTERM, SIGKILL to each role mid-transfer.
        "doc-fault-matrix": section(reliability, "## The fault matrix"),
        # Commands and bytes from a hostile peer.
        "doc-hostile-input": section(reliability, "## Hostile input"),
    }
    for name, lines in extracts.items():
        # Headings inside an extract sit under the chapter's own ## headings.
        lines = [("#" + l) if re.match(r"#{2,} ", l) else l for l in lines]
        (out / f"{name}.md").write_text(tidy(lines, docs))


if __name__ == "__main__":
    main()
