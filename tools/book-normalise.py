#!/usr/bin/env python3
"""Compare two captures of the book's outputs, modulo what a run cannot fix.

    python3 tools/book-normalise.py COMMITTED_DIR FRESH_DIR
    python3 tools/book-normalise.py --show DIR FILE     (print FILE normalised)

Exit 0 if every file matches, 1 with a diff per file otherwise. Used by
tools/book-check.sh: FRESH_DIR is a new run of tools/book-capture.sh, so
a demo whose narration changed since book/output was captured fails the
check until the capture is re-run and committed.

The rules, applied to both sides before comparing (each undoes one thing
that differs from run to run on any machine, and nothing else):

1. pids: a number the capture names as a pid anywhere ("pid N", "pids N",
   "pid=N", "waitpid(N)", "kill(N", "/proc/N/", "[role N]", ...) becomes
   PID where it stands in such a context, and in every other place of
   every file of that capture too (the same pid turns up in the other
   terminal's file, after "writer", in a list), unless the number occurs
   anywhere in the other capture: then, outside a pid context, it is a
   constant (a size, a count) that this run's pid happens to equal.
   Outside pid contexts this comes last, after rules 2-5 have made this
   run's counts and timings N, so a count that equals a pid stays a count;
2. the capture's private directory /tmp/book-capture.XXXXXX becomes $TMP,
   and the unique suffix of the demos' own temp and object names
   (NAME-PID-N) becomes NAME-PID-N;
3. decimal fractions (timings, rates: seconds=0.012, MB/s=341.3, 203.2 ms)
   become #.#; whole durations in ns, µs or ms become # ms;
4. System V ids and keys (msqid/semid/shmid N, 0x1234abcd), ports on
   127.0.0.1, inode and device numbers, and descriptor counts that depend
   on the environment become N;
5. figures a story narrates that the scheduler or the clock decides (how
   many updates a race lost, sem_otime, seconds since boot, round trips per
   second, RLIMIT_SIGPENDING, the futex ring's counts of waits, wakes,
   spins and yields and its CPU shares) and the one error a refused client may see
   either way (EPIPE or ECONNRESET) are named, one rule each, in RULES;
6. lines printed by different processes interleave as the scheduler
   decides, also across a story's step headings (a peer prints while the
   main process moves on): so the command line, the "== N. step ==" headings,
   the summary and the exit status must match in order, and all lines must match as a sorted list: the same lines,
   each role's in any order. (The diff printed on a mismatch is of those
   ordered lines if they differ, else of the sorted lines.)
"""

import difflib
import re
import sys
from pathlib import Path

PID_PATTERNS = [
    r"\bpids? (\d{2,})",
    r"\bpid[= ](\d{2,})",
    r"\bPID (\d{2,})",
    r"\bwaitpid\((\d{2,})",
    r"\[[a-z][\w -]* (\d{2,})\]",
    r"\bpid (?:\d{2,}, )+(\d{2,})",
    # Lists ("pids 1201, 1202, 1203"); PID: the first may be replaced already.
    r"\b(?:clients|children|pids) ((?:(?:\d{2,}|PID), )*(?:\d{2,}|PID))",
    r"\b(?:kill|sigqueue|pidfd_open|waitid)\((\d{2,})",
    r"/proc/(\d{2,})/",
    r"\bthread (\d{2,})",
    r"\b(\d{2,}) was killed",
    r"pid = (\d{2,})",
    r"\bwriter (\d{2,})",
    r"_pid 0 -> (\d{2,})",
    r"/proc/(\d{2,})\b",
    r"\bNOTIFY_PID:(\d{2,})",
    r"\bGETPID\(\d+\) = (\d{2,})",
    r"\bkill -\w+ (\d{2,})",
    r"\bchild (\d{2,})",
]


def pids_of(texts):
    found = set()
    for text in texts:
        for pat in PID_PATTERNS:
            for m in re.finditer(pat, text):
                for n in re.findall(r"\d+", m.group(1)):
                    if len(n) >= 2:
                        found.add(n)
    return found


RULES = [
    (r"/tmp/book-capture\.[A-Za-z0-9]+", "$TMP"),
    (r"([a-z]-demo[\w-]*?)-(?:\d+|PID)-\d+", r"\1-PID-N"),
    (r"/book-(demo|futex)-\d+", r"/book-\1-N"),
    (r"/proc/self/task/\d+/", "/proc/self/task/N/"),
    (r"\b\d+\.\d+\b", "#.#"),
    (r"\b\d+ (ns|µs|us|ms)\b", "# ms"),
    (r"\b(msqid|semid|shmid|semids|shmids|msqids|id|ids) \d+", r"\1 N"),
    (r"\bipcrm -[msq] \d+", "ipcrm -X N"),
    (r"\b0x[0-9a-f]{8}\b", "0xKEY"),
    (r"127\.0\.0\.1:\d+", "127.0.0.1:N"),
    (r"\bport \d+", "port N"),
    (r"\b(inode|ino|dev|device) \d+(:\d+)?", r"\1 N"),
    # How many descriptors a process has open includes those it inherited
    # (CI's shell passes fewer than a terminal): the step's lesson is the
    # difference, so that is what stays.
    (r"\bopen fds went from (\d+) to (\d+)",
     lambda m: f"open fds went from N to N{int(m.group(2)) - int(m.group(1)):+d}"),
    # Figures a story narrates that the scheduler or the clock decides.
    (r"got \d+: \d+ updates lost", "got N: N updates lost"),
    (r"\bsem_otime = [1-9]\d*", "sem_otime = N"),
    (r"\(\d+ s since boot\)", "(N s since boot)"),
    (r"\b\d+ times a worker found", "N times a worker found"),
    (r"about \d+ round trips per second", "about N round trips per second"),
    (r"\(\d+ pending signals", "(N pending signals"),
    (r"\(ours: \d+\)", "(ours: N)"),
    (r"\(\d+ here\)", "(N here)"),
    # The futex ring's counts of waits, wakes, spins and yields, and CPU
    # shares: how often a side found the other asleep is the scheduler's.
    (r"\b\d+ (times?|FUTEX_WAKE calls?|FUTEX_WAIT calls?|spin iterations|sched_yield calls|yields)\b",
     r"N \1"),
    (r"\b(waking|woke|spun) \d+", r"\1 N"),
    (r"\b\d+%", "N%"),
    (r"\b\d+ ns per message", "N ns per message"),
    # shm-demo futex step 6 says which ring won this run, in one of two
    # sentences with this run's figures: the comparison is the run's.
    (r"on this run the futex ring .*?\. Why a semaphore ring",
     "on this run the futex ring <this run's comparison>. Why a semaphore ring"),
    # A client refused mid-handshake sees one or the other, by timing.
    (r"\((?:Broken pipe \(os error 32\)|Connection reset by peer \(os error 104\))\)",
     "(EPIPE or ECONNRESET)"),
]


def in_context(text):
    """Phase 1: every number in a pid context (PID_PATTERNS) becomes PID."""
    for pat in PID_PATTERNS:
        def repl(m):
            a, b = m.span(1)
            inner = re.sub(r"\d{2,}", "PID", m.string[a:b])
            return m.string[m.start():a] + inner + m.string[b:m.end()]
        text = re.sub(pat, repl, text)
    return text


def normalise(text, pids):
    text = in_context(text)
    # The run-to-run figures first (counts, timings, ids): a count that
    # equals one of this run's pids ("blocked 469 times") is a count.
    for pat, rep in RULES:
        text = re.sub(pat, rep, text)
    if pids:
        alt = "|".join(sorted(pids, key=len, reverse=True))
        text = re.sub(r"(?<![\d.])(?:%s)(?![\d])" % alt, "PID", text)
    return text


def shape(text):
    """What must match: the untagged lines (step headings, the command,
    the summary, the exit status) in order, and every line, in any order."""
    lines = text.split("\n")
    untagged = [l for l in lines if l.startswith(("$ ", "== ", "summary:", "(exit status"))]
    return untagged, sorted(lines)


def read(d):
    return {p.name: p.read_text(errors="replace") for p in sorted(Path(d).iterdir()) if p.is_file()}


def numbers(files):
    return {n for name, t in files.items() if name.endswith(".txt") for n in re.findall(r"\d+", t)}


def load(files, other=None):
    """Normalised texts. A pid is replaced only if it does not occur in the
    other capture at all: a number in both (65536, 33408 bytes) is a
    constant, even where this run's pid happens to be that number."""
    pids = pids_of(t for n, t in files.items() if n.endswith(".txt"))
    if other is not None:
        pids -= numbers(other)
    return {n: (normalise(t, pids) if n.endswith(".txt") else t) for n, t in files.items()}


def main():
    if sys.argv[1] == "--show":
        sys.stdout.write(load(read(sys.argv[2]))[sys.argv[3]])
        return 0
    ra, rb = read(sys.argv[1]), read(sys.argv[2])
    a, b = load(ra, rb), load(rb, ra)
    bad = 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"book output {name}: only in {'the fresh capture' if name in b else 'book/output'}")
            bad += 1
            continue
        if shape(a[name]) != shape(b[name]):
            bad += 1
            print(f"book output {name}: differs from a fresh run (after normalising):")
            (ua, la), (ub, lb) = shape(a[name]), shape(b[name])
            # The lines that must match in order, if they differ; else the
            # lines that differ once sorted (what one run printed, the other not).
            left, right = (ua, ub) if ua != ub else (la, lb)
            diff = difflib.unified_diff(
                left,
                right,
                "book/output/" + name,
                "fresh/" + name,
                lineterm="",
                n=1,
            )
            for line in list(diff)[:40]:
                print("  " + line)
    if bad:
        print(f"{bad} book output file(s) are not current: run tools/book-capture.sh and commit book/output")
        return 1
    print(f"book outputs current: {len(a)} files match a fresh capture")
    return 0


if __name__ == "__main__":
    sys.exit(main())
