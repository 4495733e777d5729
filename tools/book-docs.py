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
- image lines are left out (the chapter includes docs/bench.svg itself).
"""

import re
import sys
from pathlib import Path


def section(text, heading, marker_end=None):
    """Lines after `heading` (a whole line) up to the next heading of the
    same or a higher level, or up to `marker_end`."""
    lines = text.split("\n")
    try:
        start = lines.index(heading)
    except ValueError:
        sys.exit(f"book-docs: heading {heading!r} not found")
    level = len(heading) - len(heading.lstrip("#"))
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


def tidy(lines):
    out = []
    for line in lines:
        if line.startswith("<!--"):
            continue
        if re.match(r"\s*!\[", line):
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
        "doc-round-trip": section(
            results, "## Round trip of a 64 B message (ping-pong), µs (× spin median)"
        ),
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
        (out / f"{name}.md").write_text(tidy(lines))


if __name__ == "__main__":
    main()
