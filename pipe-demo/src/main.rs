//! # pipe-demo: anonymous pipes
//!
//! A pipe is a one-way byte stream kept by the kernel: `pipe()` returns two
//! file descriptors, a read end and a write end. It has no name, so only
//! processes that inherit the descriptors (after `fork`) can use it.
//!
//! | property          | anonymous pipe                                            |
//! |-------------------|-----------------------------------------------------------|
//! | direction         | one way; two pipes for a conversation                     |
//! | who can talk      | related processes: parent, children, siblings             |
//! | message boundaries| none: a byte stream, so messages are framed (`frame`)    |
//! | persistence       | gone when the last descriptor to it closes                |
//! | capacity          | 64 KiB (16 pages) by default on Linux (`F_GETPIPE_SZ`); `F_SETPIPE_SZ` up to `/proc/sys/fs/pipe-max-size` |
//! | blocking          | read waits for data; write waits for room; read gives 0 (EOF) once every write end is closed; write gives `EPIPE`/SIGPIPE once every read end is closed |
//!
//! ## Run it
//!
//! One terminal, the whole story (parent and forked child):
//!
//! ```text
//! cargo run -p pipe-demo
//! cargo run -p pipe-demo -- --count 1000 --size 4096 --quiet
//! ```
//!
//! Two programs joined by the shell's `|`, which is this same `pipe()`:
//!
//! ```text
//! cargo build -p pipe-demo
//! target/debug/pipe-demo sender --count 1000 | target/debug/pipe-demo receiver --count 1000
//! target/debug/pipe-demo pipeline "ls -l /" "wc -l"
//! ```
//!
//! ## What to look for
//!
//! - which process closes which end, and why EOF depends on it: a reader
//!   that never sees EOF because a write end was left open, and EOF used
//!   to wait until several children are done (TLPI's `pipe_sync`);
//! - `EPIPE` when the reader has gone, and SIGPIPE killing a process that
//!   keeps the default action;
//! - two writes that come out of one read: why every message is framed;
//! - the pipe's capacity, found by filling it until `EAGAIN`, and changed
//!   with `F_SETPIPE_SZ` up to `/proc/sys/fs/pipe-max-size`;
//! - `std::process::Command` with `Stdio::piped()`: the same pipes, and
//!   what it does for you;
//! - the end marker: how `receiver` tells a sender that finished from
//!   one that was killed, when both end in EOF;
//! - the summary line: `errors=0` means every message was checked.
//!
//! The mechanism is in `src/ipc.rs`; the story's steps in `src/story.rs`.
//!
//! Uses `common` modules: `cleanup`, `cli`, `error`, `frame`, `payload`,
//! `peer`, `report`; `nix` features: `feature`, `fs`, `poll`, `process`,
//! `signal`, `user`.
//!
//! Read next: `fifo-demo`, the same pipe with a name in the filesystem, so
//! that unrelated processes can meet.
//! See also: `signal-demo` (SIGPIPE and the other signals on their own),
//! `socket-demo` (`socketpair`: a two-way pipe that keeps message
//! boundaries if you ask for `SOCK_SEQPACKET`).

mod checks;
mod ipc;
mod story;

use std::ffi::CString;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use common::cleanup::{stop_on_signals, stop_requested};
use common::cli::{Args, DEFAULT_COUNT, DEFAULT_SIZE, MAX_COUNT};
use common::error::{self, Interrupted, usage};
use common::frame::MAX_FRAME;
use common::payload::MIN_SIZE;
use common::peer::Ticker;
use common::report::{Narrator, Stream};

const HELP: &str = "\
pipe-demo: anonymous pipes between related processes

USAGE:
    pipe-demo [--count N] [--size BYTES] [--timeout SECS] [--quiet]
        The whole story in one terminal: parent and forked child talk over
        two pipes; then EOF (and the hang when a write end is left open),
        EOF to wait for several children, EPIPE/SIGPIPE, bytes without
        message boundaries, the pipe's capacity and F_SETPIPE_SZ, and the
        same conversation with std::process::Command.
    pipe-demo sender [--count N] [--size BYTES] [--timeout SECS] [--quiet]
        Write N framed, checkable messages and the end marker to stdout
        (narration on stderr).
    pipe-demo receiver [--count N] [--timeout SECS] [--quiet]
        Read framed messages from stdin (which must be a pipe) up to the end
        marker and check each one; --count N is how many should arrive.
    pipe-demo pipeline \"CMD1 ARGS\" \"CMD2 ARGS\"
        Run CMD1 | CMD2 the way a shell does: pipe, fork, dup2, execvp.
        Arguments are split on spaces; there is no shell quoting. The bytes
        go from CMD1 to CMD2 without passing through pipe-demo, so it
        prints no summary line.

OPTIONS:
    --count N       messages to send or expect (default 5; 1 to 1000000000)
    --size BYTES    bytes per message (default 64; 8 to 16777216: a pipe has
                    no message size, so the limit is the frame module's 16 MiB)
    --timeout SECS  idle timeout (default 60; 1 to 86400): the longest a
                    sender waits for room in the pipe, and a receiver for
                    the next bytes, before it gives up with exit 1; the
                    story's parent and child wait on each other as long
    --quiet         no line per message, only the steps and the summary
    -h, --help      this text

FRAMES: every message is a frame (u32 little-endian length, then the
body). The sender ends with an END MARKER: the length 0xFFFFFFFF, then an
8-byte frame holding how many messages it sent. EOF before the end marker
means the sender was cut off (killed, Ctrl-C): the receiver reports it and
exits 1, with or without --count.

WAITS WITHOUT A TIME LIMIT: pipeline waits for its two commands as long as
they run (they are yours; Ctrl-C stops them). Every other wait is bounded.

EXAMPLES:
    pipe-demo
    pipe-demo sender --count 1000 | pipe-demo receiver --count 1000
    pipe-demo pipeline \"ls -l /\" \"wc -l\"

EXIT STATUS: 0 success, 1 runtime error (including data errors),
2 bad command line, 128+N stopped by signal N (130 for Ctrl-C).
";

/// Default idle timeout (`--timeout`).
const DEFAULT_TIMEOUT: u64 = 60;

/// How often blocked reads and writes wake (a SIGALRM tick) to look at the
/// clock: a blocked read() or write() has no timeout of its own.
pub const TICK: Duration = Duration::from_secs(1);

/// The options of the story, `sender` and `receiver`.
#[derive(Debug)]
pub struct Options {
    pub count: u64,
    /// Whether `--count` was given (the receiver then knows what to expect).
    pub count_given: bool,
    pub size: usize,
    /// The idle timeout: see `--timeout` in the help.
    pub timeout: Duration,
    pub quiet: bool,
}

fn main() -> ExitCode {
    error::run("pipe-demo", run)
}

fn run() -> Result<()> {
    let mut args = Args::from_env(HELP)?;
    let role = args.role(&["sender", "receiver", "pipeline"])?;
    if role.as_deref() == Some("pipeline") {
        return pipeline_command(&mut args);
    }
    let opts = parse_options(&mut args, role.as_deref())?;
    // Ctrl-C/SIGTERM end blocked calls with EINTR, so each role stops
    // cleanly and says so (exit 130/143) instead of dying mid-line.
    stop_on_signals()?;
    // A SIGALRM every second interrupts blocked reads and writes (EINTR),
    // so that each can look at its idle deadline; see frame::Idle.
    let _ticker = Ticker::start(TICK)?;
    let result = match role.as_deref() {
        None => story::story(&opts),
        Some("sender") => ipc::sender(&opts),
        _ => ipc::receiver(&opts),
    };
    // Stopped by a signal: that is the outcome (exit 128+N, and the one
    // line "stopped by SIGINT, cleaned up"), whatever the stop caused on the
    // way out: an EPIPE, a child's exit, or a sender that ended quietly
    // because its reader was stopped too.
    match stop_requested() {
        Some(signal) => Err(Interrupted(signal).into()),
        None => result,
    }
}

fn parse_options(args: &mut Args, role: Option<&str>) -> Result<Options> {
    let mut opts = Options {
        count: DEFAULT_COUNT,
        count_given: false,
        size: DEFAULT_SIZE,
        timeout: Duration::from_secs(DEFAULT_TIMEOUT),
        quiet: false,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--count" => {
                opts.count = args.number("--count", 1, MAX_COUNT)?;
                opts.count_given = true;
            }
            // The receiver learns each size from the frame header.
            "--size" if role != Some("receiver") => {
                opts.size = args.number("--size", MIN_SIZE, MAX_FRAME)?;
            }
            "--timeout" => {
                opts.timeout = Duration::from_secs(args.number("--timeout", 1, 86_400)?);
            }
            "--quiet" => opts.quiet = true,
            other => return Err(args.unknown(other)),
        }
    }
    Ok(opts)
}

/// `pipe-demo pipeline "CMD1 ARGS" "CMD2 ARGS"`: parse, then `ipc::pipeline`.
fn pipeline_command(args: &mut Args) -> Result<()> {
    let mut commands = Vec::new();
    let mut quiet = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quiet" => quiet = true,
            word if !word.starts_with('-') => commands.push(parse_command(word)?),
            other => return Err(args.unknown(other)),
        }
    }
    let [first, second]: [Vec<CString>; 2] = commands.try_into().map_err(|_| {
        usage("pipeline needs exactly two commands, e.g. pipe-demo pipeline \"ls -l /\" \"wc -l\"")
    })?;
    ipc::pipeline(
        &first,
        &second,
        &Narrator::new("pipeline", quiet, Stream::Stdout),
    )
}

/// "ls -l /" → ["ls", "-l", "/"] as C strings for execvp.
fn parse_command(text: &str) -> Result<Vec<CString>> {
    let words: Vec<CString> = text
        .split_whitespace()
        .map(CString::new)
        .collect::<Result<_, _>>()
        .map_err(|_| usage(format!("command {text:?} contains a NUL byte")))?;
    if words.is_empty() {
        return Err(usage("a pipeline command is empty"));
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::error::{UsageError, find_in_chain};

    fn options(words: &[&str], role: Option<&str>) -> Result<Options> {
        parse_options(&mut Args::new(words.iter().copied()), role)
    }

    #[test]
    fn commands_split_on_whitespace() {
        let argv = parse_command("  ls   -l /tmp ").unwrap();
        assert_eq!(argv, [c"ls", c"-l", c"/tmp"].map(CString::from));
        assert!(find_in_chain::<UsageError>(&parse_command("   ").unwrap_err()).is_some());
    }

    #[test]
    fn options_have_defaults_and_limits() {
        let opts = options(&[], None).unwrap();
        assert_eq!(
            (opts.count, opts.size, opts.quiet),
            (DEFAULT_COUNT, DEFAULT_SIZE, false)
        );
        assert!(!opts.count_given);
        let opts = options(&["--count", "9", "--size", "8", "--quiet"], Some("sender")).unwrap();
        assert_eq!(
            (opts.count, opts.size, opts.quiet, opts.count_given),
            (9, 8, true, true)
        );
        // The receiver takes sizes from the frames, so --size is refused.
        assert!(options(&["--size", "64"], Some("receiver")).is_err());
        assert!(options(&["--size", &(MAX_FRAME + 1).to_string()], None).is_err());
    }
}
