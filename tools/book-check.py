#!/usr/bin/env python3
"""The book's structural checks, for tools/book-check.sh.

    book-check.py links BUILD_DIR                 every relative link and #anchor resolves
    book-check.py chapters ROOT EDITION...         same chapter lists and the same shape
                                                   of each chapter; every demo included
    book-check.py mdbook-log LOG                   no WARN/ERROR line from mdbook
    book-check.py png FILE MIN_COLOURS             a screenshot that is not blank
    book-check.py dom FILE                         code, output and an SVG diagram in the DOM
    book-check.py mermaid FILE                     no Mermaid diagram failed to render
    book-check.py console LOG                      no console message from the page

Each prints one line per problem and exits 1 if there was any.
"""

import html.parser
import re
import struct
import sys
import zlib
from pathlib import Path
from urllib.parse import unquote, urlsplit

problems = []


def problem(msg):
    problems.append(msg)
    print("book check: " + msg)


# --- links ---------------------------------------------------------------


class Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("id", "name"):
            if a.get(key):
                self.ids.add(a[key])
        for key in ("href", "src"):
            if a.get(key) is not None and tag in ("a", "img", "script", "link"):
                self.links.append(a[key])


def parse(path, cache={}):
    if path not in cache:
        p = Links()
        p.feed(path.read_text(errors="replace"))
        cache[path] = p
    return cache[path]


def links(build):
    """Every relative href/src in the chapters' HTML must name a file of the
    built book, and every #fragment an id in that file. Skipped: links with
    a scheme (https:, mailto:), and mdbook's generated print.html, toc.html
    and 404.html (they repeat the chapters' links, rebased)."""
    build = Path(build).resolve()
    pages = [p for p in sorted(build.rglob("*.html"))
             if p.name not in ("print.html", "toc.html", "404.html")]
    checked = 0
    for page in pages:
        for link in parse(page).links:
            u = urlsplit(link)
            if u.scheme or link.startswith("//"):
                continue
            checked += 1
            target = page if not u.path else (page.parent / unquote(u.path)).resolve()
            if u.path.endswith("/"):
                target = target / "index.html"
            name = page.relative_to(build)
            if build not in target.parents and target != build:
                problem(f"{name}: link {link!r} leaves the book")
                continue
            if not target.exists():
                problem(f"{name}: broken link {link!r} (no {target.relative_to(build)})")
                continue
            if u.fragment and target.suffix == ".html":
                if unquote(u.fragment) not in parse(target).ids:
                    problem(f"{name}: broken anchor {link!r} (no id {u.fragment!r} in {target.name})")
    print(f"book check: {checked} internal links in {len(pages)} pages of {build.name}")


# --- chapters and demos ----------------------------------------------------


def summary_chapters(src):
    text = (src / "SUMMARY.md").read_text()
    return re.findall(r"\]\(([^)]+\.md)\)", text)


INCLUDE = re.compile(r"\{\{#(?:include|rustdoc_include)\s+([^}:\s]+)(?::([^}\s]*))?\s*\}\}")


def includes(chapter, ed):
    """mdbook 0.5 says nothing about an include whose anchor is missing (it
    includes nothing): every {{#include FILE:ANCHOR}} must name a file that
    exists and an anchor with both ANCHOR and ANCHOR_END lines around at
    least one line."""
    for m in INCLUDE.finditer(chapter.read_text()):
        path, anchor = m.group(1), m.group(2)
        target = (chapter.parent / path).resolve()
        where = f"book/{ed}/src/{chapter.name}"
        if not target.is_file():
            problem(f"{where}: includes {path}, which does not exist")
            continue
        if not anchor or re.fullmatch(r"[\d:]*", anchor):
            continue
        lines = target.read_text(errors="replace").split("\n")
        starts = [i for i, l in enumerate(lines) if re.search(r"ANCHOR:\s*%s\b" % re.escape(anchor), l)]
        ends = [i for i, l in enumerate(lines) if re.search(r"ANCHOR_END:\s*%s\b" % re.escape(anchor), l)]
        if len(starts) != 1 or len(ends) != 1 or ends[0] <= starts[0] + 1:
            problem(f"{where}: anchor {anchor!r} of {path}: {len(starts)} ANCHOR and {len(ends)} ANCHOR_END lines, or nothing between them")


def shape(text, ed):
    """What two editions of a chapter must share, whatever the language:
    the includes in order, the heading levels in order, the code blocks'
    languages, the commands a reader types (shell blocks, comments
    dropped), the number of table rows, the chapters it links to, and its
    pictures. The edition's own path (book/en, book/zh) counts as one."""
    text = text.replace(f"book/{ed}", "book/EDITION")
    outside, blocks, block = [], [], None
    for line in text.split("\n"):
        if line.startswith("```"):
            if block is None:
                block = (line[3:].strip(), [])
            else:
                blocks.append(block)
                block = None
        elif block is not None:
            block[1].append(line)
        else:
            outside.append(line)
    prose = "\n".join(outside)
    commands = [
        re.sub(r"\s+#.*$", "", l).rstrip()
        for lang, body in blocks
        if lang.split(",")[0] in ("sh", "shell", "bash", "console", "text", "")
        for l in body
        if l.strip() and not l.lstrip().startswith("#")
    ]
    return {
        "includes": INCLUDE.findall(text),
        "heading levels": [len(h) for h in re.findall(r"^(#{1,6}) ", prose, re.M)],
        "code block languages": [lang for lang, _ in blocks],
        "commands": commands,
        "table rows": sum(1 for l in outside if l.lstrip().startswith("|")),
        "chapters linked": sorted(set(re.findall(r"\]\(([\w-]+\.md)", prose))),
        "pictures": len(re.findall(r"<img\b|!\[", prose)),
    }


def parity(book, a, b, chapter):
    """The editions say the same things: a section, table row, command or
    include in one and not the other fails (the words are checked by
    readers; this catches what drifts without anyone noticing)."""
    sa = shape((book / a / "src" / chapter).read_text(), a)
    sb = shape((book / b / "src" / chapter).read_text(), b)
    for key in sa:
        if sa[key] != sb[key]:
            x, y = sa[key], sb[key]
            if isinstance(x, list):
                only_a = [v for v in x if v not in y][:3]
                only_b = [v for v in y if v not in x][:3]
                detail = f"only in {a}: {only_a}; only in {b}: {only_b}" if only_a or only_b else f"{a}: {x}; {b}: {y}"
            else:
                detail = f"{a}: {x}; {b}: {y}"
            problem(f"{chapter}: the {key} of book/{a} and book/{b} differ ({detail})")


def chapters(root, *editions):
    root = Path(root)
    members = re.search(r"members\s*=\s*\[([^\]]*)\]", (root / "Cargo.toml").read_text()).group(1)
    demos = [m for m in re.findall(r'"([^"]+)"', members) if m.endswith("-demo")]
    lists = {}
    for ed in editions:
        src = root / "book" / ed / "src"
        if not (src / "SUMMARY.md").exists():
            problem(f"book/{ed}: no src/SUMMARY.md (both editions, en and zh, must exist)")
            continue
        listed = summary_chapters(src)
        lists[ed] = listed
        files = sorted(p.name for p in src.glob("*.md") if p.name != "SUMMARY.md")
        for f in listed:
            if not (src / f).exists():
                problem(f"book/{ed}: SUMMARY.md lists {f}, which does not exist")
        for f in files:
            if f not in listed:
                problem(f"book/{ed}: {f} is not in SUMMARY.md")
        for f in files:
            includes(src / f, ed)
        text = "\n".join((src / f).read_text() for f in files)
        for demo in demos:
            if not re.search(r"\{\{#(include|rustdoc_include)\s+\.\./\.\./\.\./%s/" % re.escape(demo), text):
                problem(f"book/{ed}: no chapter includes code from {demo}")
    if len(lists) == len(editions) > 1:
        first = editions[0]
        for ed in editions[1:]:
            if lists[ed] != lists[first]:
                problem(f"book/{ed} and book/{first} list different chapters: {lists[ed]} vs {lists[first]}")
            for f in sorted(set(lists[ed]) & set(lists[first])):
                parity(root / "book", first, ed, f)
    print(f"book check: chapters of {', '.join(editions)} compared; {len(demos)} demos looked for")


# --- mdbook's log ------------------------------------------------------------

# The one line mdbook-mermaid always prints when mdbook is newer than the
# mdbook-preprocessor it was compiled against (0.5.0 for 0.17.1). Its author
# calls it "a warning, not an error" (badboy/mdbook-toc#54); the protocol is
# the same across 0.5.x. Anything else at WARN or ERROR fails.
HARMLESS = re.compile(
    r"^Warning: The mdbook-mermaid preprocessor was built against version 0\.5\.\d+ of mdbook, "
    r"but we're being called from version 0\.5\.\d+$"
)


def mdbook_log(log):
    for line in Path(log).read_text(errors="replace").splitlines():
        plain = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if HARMLESS.match(plain):
            continue
        if re.search(r"\b(WARN|ERROR|warning|error|Warning|Error)\b", plain):
            problem(f"mdbook: {plain}")


# --- screenshots -------------------------------------------------------------


def png_colours(path, limit=100000):
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", chunk[:10])
            if depth != 8 or ctype not in (2, 6):
                raise ValueError(f"unexpected PNG format (depth {depth}, colour type {ctype})")
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    colours = set()
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif f == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif f == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
        # Every 4th row is enough to count colours.
        if y % 4 == 0:
            colours.update(bytes(line[i:i + 3]) for i in range(0, stride, bpp * 2))
            if len(colours) >= limit:
                break
        prev = line
    return len(colours), width, height


def png(path, minimum):
    n, w, h = png_colours(path)
    if n < int(minimum):
        problem(f"{path}: screenshot looks blank ({n} distinct colours in {w}x{h}, want {minimum}+)")
    else:
        print(f"book check: {Path(path).name}: {w}x{h}, {n} distinct colours")


# --- the rendered DOM ----------------------------------------------------------


def dom(path):
    text = Path(path).read_text(errors="replace")
    name = Path(path).name
    if not re.search(r'<code class="[^"]*language-rust', text):
        problem(f"{name}: no Rust code block in the DOM")
    if not re.search(r'<code class="[^"]*language-text', text):
        problem(f"{name}: no output (text) block in the DOM")
    if "summary: mechanism=" not in text and "(exit status" not in text:
        problem(f"{name}: no captured output in the DOM")
    if not re.search(r'<svg[^>]*aria-roledescription="(?!error")[\w-]+"', text):
        problem(f"{name}: no Mermaid diagram rendered to SVG")
    if re.search(r'Syntax error in text|aria-roledescription="error"', text):
        problem(f"{name}: Mermaid reports a syntax error")
    if "{{#include" in text:
        problem(f"{name}: an unresolved {{{{#include}}}} is left in the page")


def mermaid(path):
    """Any chapter: no diagram that Mermaid failed to render."""
    text = Path(path).read_text(errors="replace")
    if re.search(r'Syntax error in text|aria-roledescription="error"', text):
        problem(f"{Path(path).name}: a Mermaid diagram failed to render (syntax error)")


def console(log):
    """Chromium's --enable-logging=stderr prints each console message of the
    page as INFO:CONSOLE(...) "text", source: URL (N), the same for
    console.log, .warn and .error (and for uncaught exceptions), so any
    such line fails: the book's pages log nothing when all is well."""
    for line in Path(log).read_text(errors="replace").splitlines():
        if re.search(r":CONSOLE[:(]", line):
            problem(f"console: {line.split('] ', 1)[-1]}")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {"links": links, "chapters": chapters, "mdbook-log": mdbook_log, "png": png,
     "dom": dom, "mermaid": mermaid, "console": console}[cmd](*args)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
