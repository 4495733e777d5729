//! # fifo-demo: named pipes (FIFOs)
//!
//! A FIFO is a pipe with a name in the filesystem. `mkfifo` creates the
//! name; any process allowed to open it can then read or write, so
//! processes that are not related meet by path. The data never touches the
//! disk: it goes through the same kernel buffer as an anonymous pipe.
//!
//! | property          | FIFO (named pipe)                                          |
//! |-------------------|------------------------------------------------------------|
//! | direction         | one way (open it twice, or use two FIFOs, for replies)     |
//! | who can talk      | any processes that can open the path (mode 0600: only you) |
//! | message boundaries| none: a byte stream, so messages are framed (`frame`)     |
//! | persistence       | the name stays until unlinked; the data only while open    |
//! | capacity          | 64 KiB by default on Linux, as for a pipe                  |
//! | blocking          | open(O_RDONLY) waits for a writer and open(O_WRONLY) for a reader; read gives 0 (EOF) once the last writer closes; write gives `EPIPE` once no reader is left |
//!
//! ## Run it
//!
//! One terminal, the whole story (the parent reads; the writers are
//! processes started from this program's own executable, not forked):
//!
//! ```text
//! cargo run -p fifo-demo
//! cargo run -p fifo-demo -- --writers 4 --count 1000 --quiet
//! ```
//!
//! Two terminals (or three: a receiver serves `--writers K` senders, one
//! after another or at once):
//!
//! ```text
//! cargo run -p fifo-demo -- receiver --path /tmp/demo.fifo
//! cargo run -p fifo-demo -- sender --path /tmp/demo.fifo --count 10
//! ```
//!
//! A server and its clients (TLPI's `fifo_seqnum`): one well-known FIFO
//! for requests, a reply FIFO per client, named in each request:
//!
//! ```text
//! cargo run -p fifo-demo -- server --path /tmp/seq.fifo
//! cargo run -p fifo-demo -- client --path /tmp/seq.fifo --count 3   # as often as you like
//! ```
//!
//! With shell tools, in `--lines` mode:
//!
//! ```text
//! fifo-demo receiver --path /tmp/demo.fifo --lines &   echo hello > /tmp/demo.fifo
//! cat /tmp/demo.fifo &   printf 'one\ntwo\n' | fifo-demo sender --path /tmp/demo.fifo --lines
//! ```
//!
//! ## What to look for
//!
//! - which `open` waits for whom, and the non-blocking variants (`ENXIO`);
//! - why opening with `O_RDWR` never waits, and why that is a trick;
//! - the dummy writer fd: a reader that holds a write end of its own sees
//!   no EOF between two writers, so it must know by other means when it is
//!   done (here: one end marker per writer);
//! - several writers whose frames never interleave, because each frame is
//!   one `write` of at most `PIPE_BUF` bytes;
//! - EOF only when the *last* writer closes; `EPIPE` when the reader left;
//! - the FIFO and its directory gone afterwards, also after Ctrl-C, and a
//!   FIFO left by a killed receiver taken over and removed by the next one;
//! - a server that holds its own write descriptor on its FIFO, so that no
//!   EOF comes between clients, and that refuses reply paths which are not
//!   FIFOs of the requesting uid (symlinks, files, someone else's FIFO):
//!   a server that writes wherever a request says is a *confused deputy*;
//! - text sent to a receiver that expects frames (`echo hello > P`):
//!   "hell" read as a frame length, and the hint to use `--lines`.
//!
//! The mechanism is in `src/ipc.rs`; the story's steps in `src/story.rs`.
//! (`src/checks.rs` holds what a first reading may skip: the checks of a
//! path before it is trusted, the per-writer bookkeeping, small helpers.)
//!
//! Uses `common` modules: `cleanup`, `cli`, `error`, `frame`, `payload`,
//! `peer`, `report`; `nix` features: `fs`, `poll`, `process`, `signal`, `user`.
//!
//! Read next: `signal-demo` (signals: what interrupted the blocked open()
//! and read() calls here).
//! See also: `pipe-demo` (the same kernel buffer without a name, between a
//! parent and its child), `socket-demo` (for a server with many clients:
//! a FIFO has no way to tell writers apart or to answer one of them).

mod checks;
mod ipc;
mod story;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use common::cleanup::{check_stop, stop_on_signals};
use common::cli::{Args, DEFAULT_COUNT, DEFAULT_SIZE, MAX_COUNT};
use common::error::{self, usage};
use common::frame::MAX_FRAME;
use common::payload::MIN_SIZE;
use common::peer::Ticker;
use common::report::{Narrator, Summary};

const HELP: &str = "\
fifo-demo: named pipes (FIFOs) between unrelated processes

USAGE:
    fifo-demo [--count N] [--size BYTES] [--writers K] [--timeout SECS] [--quiet]
        The whole story in one terminal: mkfifo in a private directory, the
        open() rules, K writer processes meeting the parent by name, the
        dummy writer fd, EOF; then a server with a reply FIFO per client.
    fifo-demo receiver --path P [--count N] [--writers K] [--timeout SECS] [--lines] [--quiet]
        Create the FIFO P (or take over a FIFO of yours left there), open it
        for reading, and check framed messages until K writers have sent
        their end marker; remove P on exit.
    fifo-demo sender --path P [--count N] [--size BYTES] [--timeout SECS] [--nonblock] [--lines] [--quiet]
        Open the FIFO P for writing, send N framed messages and the end marker.
    fifo-demo server --path P [--count N] [--timeout SECS] [--quiet]
        Create the well-known FIFO P (or take over a FIFO of yours left
        there) and answer each client's request with the next sequence
        number, written into the reply FIFO the request names; stop after N
        replies (default: never); remove P on exit.
    fifo-demo client --path P [--count N] [--timeout SECS] [--quiet]
        Make a reply FIFO in a private 0700 directory, send N requests
        (default 5) to the server at P, and check that the numbers grow.

OPTIONS:
    --path P        the FIFO's path (sender and receiver; the server's
                    well-known FIFO for server and client)
    --count N       messages per writer to send or expect (default 5; 1 to 1000000000)
    --size BYTES    bytes per message (default 64; 8 to 16777212: the 16 MiB
                    frame limit less the 4-byte writer pid in every frame)
    --writers K     writers: the story starts K (default 2: the parent shows
                    the gap between the first and the others); the receiver
                    waits for K end markers (default 1); 1 to 64
    --timeout SECS  idle timeout (default 60; 1 to 86400): the longest a
                    role waits for its peer to make progress before it gives
                    up with exit 1: a sender for a reader to open the FIFO
                    and for room in it; a receiver, once a first writer came,
                    for the next bytes or the next of its K writers; a
                    client for each reply. A server waits for requests
                    without a limit unless --timeout is given, and then
                    stops (exit 0) after SECS without one
    --lines         newline-delimited text instead of frames: the receiver
                    prints each line, the sender forwards its stdin; works
                    with 'echo hi > P' and 'cat P'. Text has no end marker:
                    the receiver stops at EOF (the last writer closing), so
                    a cut-off text stream cannot be told from a finished one
    --nonblock      sender: open with O_NONBLOCK, failing (ENXIO) at once
                    if no reader has the FIFO open
    --no-summary    roles: print the figures as a narration line instead of
                    the summary line (the story starts its writers and
                    clients so, and prints the run's one summary line)
    --quiet         no line per message, only the steps and the summary
    -h, --help      this text

FRAMES: every message is a frame (u32 little-endian length, then the
writer's pid as u32, then the checkable body). A sender ends with an END
MARKER: the length 0xFFFFFFFF, then a 12-byte frame holding its pid and how
many messages it sent. A receiver that reaches EOF before a writer's end
marker reports that writer's stream as cut off (exit 1), with or without
--count.

SERVER AND CLIENTS: a request is one frame: the client's pid (u32), then
the absolute path of its reply FIFO (at most 1024 bytes, so that a request
is one atomic write of at most PIPE_BUF). A FIFO carries no credentials, so
the server's FIFO is 0600 (only your uid can send requests) and the server
replies only into a FIFO owned by that uid: it refuses (and goes on
serving) a path that is a symlink, not a FIFO, someone else's FIFO, or a
FIFO nobody reads. The server's summary counts refused requests as errors.
For clients of other users, use a Unix socket, whose server learns each
client's uid (socket-demo, SO_PEERCRED).

WAITS WITHOUT A TIME LIMIT: the receiver's first open(O_RDONLY), which
waits for a first writer, and the server's wait for requests (without
--timeout): a server waits for its clients; Ctrl-C stops it.
Every other wait is bounded by --timeout, or in the story by a deadline.

EXIT STATUS: 0 success, 1 runtime error (including data errors, a cut-off
stream, a timeout and a peer that died), 2 bad command line, 128+N stopped
by signal N (130 for Ctrl-C), for the story too, whatever its writers did.
";

/// Most writers the story starts and the receiver tracks.
pub const MAX_WRITERS: u64 = 64;
/// Default idle timeout (`--timeout`).
const DEFAULT_TIMEOUT: u64 = 60;
/// How often blocked calls wake (a SIGALRM tick) to look at the clock: a
/// blocked open(), read() or write() has no timeout of its own.
const TICK: Duration = Duration::from_secs(1);

/// The command line, for the story and both roles.
#[derive(Debug)]
pub struct Options {
    pub path: Option<PathBuf>,
    pub count: u64,
    pub count_given: bool,
    pub size: usize,
    pub writers: u64,
    pub writers_given: bool,
    pub timeout: Duration,
    pub timeout_given: bool,
    pub lines: bool,
    pub nonblock: bool,
    pub no_summary: bool,
    pub quiet: bool,
}

fn main() -> ExitCode {
    error::run("fifo-demo", || {
        let mut args = Args::from_env(HELP)?;
        let role = args.role(&["sender", "receiver", "server", "client"])?;
        let opts = parse_options(&mut args, role.as_deref())?;
        // Ctrl-C/SIGTERM end blocked calls (open, read, write) with EINTR,
        // so each role can remove what it created before exiting.
        stop_on_signals()?;
        // A SIGALRM every second interrupts blocked calls too (EINTR), so
        // that each wait can look at its deadline; see frame::Idle.
        let _ticker = Ticker::start(TICK)?;
        let result = match role.as_deref() {
            None => story::story(&opts),
            Some("receiver") => ipc::receiver(&opts),
            Some("server") => ipc::server(&opts),
            Some("client") => ipc::client(&opts),
            _ => ipc::sender(&opts),
        };
        // A stop signal that came after the work was done still ends the
        // run as stopped (error::run turns any error after one into 128+N).
        result.and_then(|()| check_stop())
    })
}

/// The `summary:` line, or with `--no-summary` the same figures as a
/// narration line (the story prints the run's one summary line itself).
pub fn print_summary(opts: &Options, say: &Narrator, what: &str, summary: Summary) {
    if opts.no_summary {
        let line = summary.to_string();
        let figures = line.strip_prefix("summary: ").unwrap_or(&line);
        say.step(format!("{what}: {figures}"));
    } else {
        say.line(summary);
    }
}

fn parse_options(args: &mut Args, role: Option<&str>) -> Result<Options> {
    let mut opts = Options {
        path: None,
        count: DEFAULT_COUNT,
        count_given: false,
        size: DEFAULT_SIZE,
        // The story's default shows the gap between two writers.
        writers: if role.is_none() { 2 } else { 1 },
        writers_given: false,
        timeout: Duration::from_secs(DEFAULT_TIMEOUT),
        timeout_given: false,
        lines: false,
        nonblock: false,
        no_summary: false,
        quiet: false,
    };
    let mut size_given = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--path" => opts.path = Some(PathBuf::from(args.value("--path")?)),
            "--count" => {
                opts.count = args.number("--count", 1, MAX_COUNT)?;
                opts.count_given = true;
            }
            "--size" => {
                opts.size = args.number("--size", MIN_SIZE, MAX_FRAME - ipc::TAG_LEN)?;
                size_given = true;
            }
            "--writers" => {
                opts.writers = args.number("--writers", 1, MAX_WRITERS)?;
                opts.writers_given = true;
            }
            "--timeout" => {
                opts.timeout = Duration::from_secs(args.number("--timeout", 1, 86_400)?);
                opts.timeout_given = true;
            }
            "--lines" => opts.lines = true,
            "--nonblock" => opts.nonblock = true,
            "--no-summary" => opts.no_summary = true,
            "--quiet" => opts.quiet = true,
            other => return Err(args.unknown(other)),
        }
    }
    // Options that do not apply to a role are refused, not ignored.
    let not_for = |option: &str, what: &str| usage(format!("{option} is not an option {what}"));
    match role {
        None => {
            if opts.path.is_some() {
                return Err(not_for("--path", "of the story (it makes its own FIFO)"));
            }
            if opts.lines || opts.nonblock || opts.no_summary {
                return Err(not_for(
                    "--lines/--nonblock/--no-summary",
                    "of the story; use the roles",
                ));
            }
        }
        Some(role) => {
            if opts.path.is_none() {
                return Err(usage(format!(
                    "the {role} needs --path P, e.g. --path /tmp/demo.fifo"
                )));
            }
            if matches!(role, "server" | "client")
                && (size_given || opts.writers_given || opts.lines || opts.nonblock)
            {
                return Err(not_for(
                    "--size/--writers/--lines/--nonblock",
                    &format!("of the {role} (requests and replies have their own format)"),
                ));
            }
            if role == "receiver" && (size_given || opts.nonblock) {
                return Err(not_for("--size/--nonblock", "of the receiver"));
            }
            if role == "receiver" && opts.lines && opts.writers_given {
                return Err(usage(
                    "--lines reads text until EOF, which has no end markers to count: \
                     --writers does not apply",
                ));
            }
            if role == "sender" && opts.writers_given {
                return Err(not_for(
                    "--writers",
                    "of the sender (start several senders)",
                ));
            }
            if role == "sender" && opts.lines && (opts.count_given || size_given) {
                return Err(usage(
                    "--lines forwards stdin line by line: --count and --size do not apply",
                ));
            }
        }
    }
    Ok(opts)
}
