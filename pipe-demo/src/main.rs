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
//! | capacity          | 64 KiB by default on Linux (`F_GETPIPE_SZ`)              |
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
//! - which process closes which end, and why EOF depends on it;
//! - `EPIPE` when the reader has gone, and SIGPIPE killing a process that
//!   keeps the default action;
//! - the pipe's capacity, found by filling it until `EAGAIN`;
//! - the end marker: how `receiver` tells a sender that finished from
//!   one that was killed, when both end in EOF;
//! - the summary line: `errors=0` means every message was checked.
//!
//! Uses `common` modules: `cleanup`, `cli`, `error`, `frame`, `payload`,
//! `peer`, `report`.

use std::ffi::CString;
use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{StopOnSignal, check_stop, stop_on_signals, stop_requested};
use common::cli::{Args, DEFAULT_COUNT, DEFAULT_SIZE, MAX_COUNT};
use common::error::{self, Interrupted, usage};
use common::frame::{self, Frame, FrameError, Idle, MAX_FRAME};
use common::payload::{self, Checker, MIN_SIZE, Verdict};
use common::peer::{PeerExit, Ticker, wait_pid};
use common::report::{Narrator, Stream, Summary};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::stat::{SFlag, fstat};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, dup2_stdin, dup2_stdout, execvp, fork, pipe, pipe2, write};

const USAGE: &str = "\
pipe-demo: anonymous pipes between related processes

USAGE:
    pipe-demo [--count N] [--size BYTES] [--timeout SECS] [--quiet]
        The whole story in one terminal: parent and forked child talk over
        two pipes, then EOF, EPIPE/SIGPIPE and the pipe's capacity.
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

/// How long the parent waits for a child to exit once the work is done;
/// past that it kills the child and reports it, rather than hang.
const CHILD_EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Replies are short text (`ack 3 ok`); anything longer is a broken peer.
const MAX_REPLY: usize = 256;

/// Default idle timeout (`--timeout`).
const DEFAULT_TIMEOUT: u64 = 60;

/// How often blocked reads and writes wake (a SIGALRM tick) to look at the
/// clock: a blocked read() or write() has no timeout of its own.
const TICK: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    error::run("pipe-demo", run)
}

/// The options shared by the roles.
struct Options {
    count: u64,
    /// Whether `--count` was given (the receiver then knows what to expect).
    count_given: bool,
    size: usize,
    /// The idle timeout: see `--timeout` in the help.
    timeout: Duration,
    quiet: bool,
}

fn run() -> Result<()> {
    let mut args = Args::from_env(USAGE)?;
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
        None => story(&opts),
        Some("sender") => sender(&opts),
        _ => receiver(&opts),
    };
    // Stopped by a signal: that is the outcome (exit 128+N), whatever
    // error the stop caused on the way out (an EPIPE, a child's exit).
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

// ---------------------------------------------------------------------------
// The story: parent and child after fork
// ---------------------------------------------------------------------------

fn story(opts: &Options) -> Result<()> {
    let say = Narrator::new("parent", opts.quiet, Stream::Stdout);
    say.line(format!(
        "pipe-demo: {} messages of {} bytes over anonymous pipes (parent pid {})",
        opts.count,
        opts.size,
        std::process::id()
    ));

    say.line("\n== 1. Two pipes, one each way: a conversation with a forked child ==");
    let (sent, errors, elapsed) = conversation(opts, &say)?;

    say.line("\n== 3. Writing to a pipe nobody reads: EPIPE and SIGPIPE ==");
    broken_pipe(&say)?;

    say.line("\n== 4. Capacity: how much a pipe holds before a writer must wait ==");
    capacity(&say)?;

    let summary = Summary {
        mechanism: "pipe",
        messages: sent,
        bytes: sent * opts.size as u64,
        errors,
        elapsed,
    };
    say.line("");
    say.line(&summary);
    if errors > 0 {
        bail!("{errors} message(s) failed the check");
    }
    Ok(())
}

/// Steps 1 and 2: send `count` messages down one pipe, read a reply for each
/// from the other, then close and reap. Returns (sent, errors, time).
fn conversation(opts: &Options, say: &Narrator) -> Result<(u64, u64, Duration)> {
    // A pipe is one-way, so a conversation needs two: "down" carries
    // messages parent → child, "up" carries replies child → parent.
    let (down_read, down_write) = pipe().context("pipe() for parent → child")?;
    let (up_read, up_write) = pipe().context("pipe() for child → parent")?;
    say.step(format!(
        "pipe() twice: parent→child read fd {}, write fd {}; child→parent read fd {}, write fd {}",
        down_read.as_raw_fd(),
        down_write.as_raw_fd(),
        up_read.as_raw_fd(),
        up_write.as_raw_fd()
    ));

    // SAFETY: pipe-demo is single-threaded, so the child, a copy of this one
    // thread, may call anything (allocate, print) until it exits.
    let child = match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            // The child has copies of all four descriptors. It must close
            // the write end of "down": the kernel reports EOF to a reader
            // only when *every* write end is closed, including its own.
            drop(down_write);
            drop(up_read);
            let say = say.with_role("child");
            say.step("closed the ends I do not use (parent→child write, child→parent read)");
            // fork() does not copy interval timers: the child starts its own.
            let code = match Ticker::start(TICK)
                .and_then(|_ticker| child_role(down_read, up_write, opts, &say))
            {
                Ok(()) => 0,
                Err(e) => {
                    say.step(format!("error: {e:#}"));
                    1
                }
            };
            // Exit here: returning would run the parent's code in the child.
            // `exit` runs no destructors of the parent's objects.
            std::process::exit(code);
        }
        ForkResult::Parent { child } => child,
    };
    say.step(format!("fork() → child pid {child}"));
    // Same rule here: without this, the parent could never see EOF on "up"
    // if the child died, because its own write end would keep it open.
    drop(down_read);
    drop(up_write);
    say.step("closed the ends I do not use (parent→child read, child→parent write)");

    // Idle: if the child stops (SIGSTOP) or hangs, a read or write gives
    // up after --timeout instead of waiting forever.
    let mut to_child = StopOnSignal(Idle::new(File::from(down_write), opts.timeout));
    let mut from_child = StopOnSignal(Idle::new(File::from(up_read), opts.timeout));
    let start = Instant::now();
    let outcome = send_and_collect(opts, say, &mut to_child, &mut from_child);
    let elapsed = start.elapsed();

    say.line("\n== 2. EOF: closing the write end ends the child's reading ==");
    // Dropping the last write end of "down": the child's next read() sees
    // no data and no writer, and returns 0.
    drop(to_child);
    drop(from_child);
    say.step("closed my write end: the child's next read() returns 0 (EOF)");
    // After a failure the child may be stopped or stuck: a short wait, then
    // SIGKILL (which ends even a stopped process).
    let patience = if outcome.is_ok() {
        CHILD_EXIT_TIMEOUT
    } else {
        Duration::from_secs(5)
    };
    let exit = wait_pid(child, patience)?;
    say.step(format!("waitpid({child}): the child {exit}"));

    match (outcome, exit) {
        (Ok((sent, errors)), PeerExit::Exited(0)) => Ok((sent, errors, elapsed)),
        (Ok(_), exit) => bail!("the child (pid {child}) {exit}"),
        (Err(e), exit) if !exit.success() => {
            Err(e.context(format!("the child (pid {child}) {exit}")))
        }
        (Err(e), _) => Err(e),
    }
}

/// The parent's side of step 1. Returns (messages sent, errors).
fn send_and_collect(
    opts: &Options,
    say: &Narrator,
    to_child: &mut StopOnSignal<Idle<File>>,
    from_child: &mut StopOnSignal<Idle<File>>,
) -> Result<(u64, u64)> {
    let mut errors = 0;
    for seq in 0..opts.count {
        check_stop()?;
        let body = payload::make(seq, opts.size);
        frame::write_frame(to_child, &body).map_err(|e| match e {
            FrameError::Io(io) if io.kind() == ErrorKind::BrokenPipe => anyhow::anyhow!(
                "write(parent→child pipe) failed with EPIPE at message {seq}: \
                 the child's read end is closed"
            ),
            other => anyhow::Error::new(other).context("write(parent→child pipe)"),
        })?;
        say.message(format!("sent message {seq} ({} bytes)", body.len()));

        let reply = frame::read_frame(from_child, MAX_REPLY)
            .context("read(child→parent pipe)")?
            .with_context(|| {
                format!(
                    "read(child→parent pipe) returned EOF before the reply to message {seq}: \
                     the child closed its end"
                )
            })?;
        let reply = String::from_utf8_lossy(&reply);
        if reply != format!("ack {seq} ok") {
            errors += 1;
        }
        say.message(format!("reply: {reply}"));
    }
    Ok((opts.count, errors))
}

/// The child's side: read and check until EOF, answering each message.
fn child_role(input: OwnedFd, output: OwnedFd, opts: &Options, say: &Narrator) -> Result<()> {
    let mut input = StopOnSignal(Idle::new(File::from(input), opts.timeout));
    let mut output = StopOnSignal(Idle::new(File::from(output), opts.timeout));
    let mut checker = Checker::new(Some(opts.count));
    while let Some(body) =
        frame::read_frame(&mut input, MAX_FRAME).context("read(parent→child pipe)")?
    {
        let verdict = checker.check(&body);
        let seq = payload::seq_of(&body).map_or("?".to_string(), |s| s.to_string());
        say.message(format!(
            "got message {seq} ({} bytes): {verdict}",
            body.len()
        ));
        let reply = format!("ack {seq} {verdict}");
        frame::write_frame(&mut output, reply.as_bytes()).context("write(child→parent pipe)")?;
    }
    say.step("read() returned 0 (EOF): no write end is open any more");
    let report = checker.report();
    say.step(format!("checked: {report}"));
    if report.errors() > 0 {
        bail!("{} message(s) failed the check", report.errors());
    }
    Ok(())
}

/// Step 3: a pipe whose read end is closed.
fn broken_pipe(say: &Narrator) -> Result<()> {
    let (read_end, write_end) = pipe().context("pipe()")?;
    drop(read_end);
    say.step("pipe(), then closed its only read end");
    match write(&write_end, b"x") {
        Err(Errno::EPIPE) => say.step(
            "write() → EPIPE (Broken pipe): the data could never be read. Rust sets \
             SIGPIPE to 'ignore' before main, so the error comes back from write()",
        ),
        other => bail!("write() to a pipe without reader: expected EPIPE, got {other:?}"),
    }

    // The default action for SIGPIPE is to terminate: show it in a child.
    // SAFETY: single-threaded, as above.
    match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            // SAFETY: SIG_DFL installs no handler of ours; nothing can race.
            let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
            let _ = write(&write_end, b"x"); // the kernel sends SIGPIPE here
            std::process::exit(0); // reached only if SIGPIPE did not kill us
        }
        ForkResult::Parent { child } => {
            say.step(format!(
                "fork() → child pid {child} restores the default SIGPIPE action and writes"
            ));
            let exit = wait_pid(child, CHILD_EXIT_TIMEOUT)?;
            say.step(format!("waitpid({child}): the child {exit}"));
            if exit != PeerExit::Killed(Signal::SIGPIPE) {
                bail!("expected the child to be killed by SIGPIPE, but it {exit}");
            }
            say.step(
                "that is how `yes | head -1` stops `yes`: killed by SIGPIPE, silently, \
                 as soon as head exits",
            );
        }
    }
    Ok(())
}

/// Step 4: fill a non-blocking pipe until it refuses more.
fn capacity(say: &Narrator) -> Result<()> {
    // O_NONBLOCK: a write to a full pipe fails with EAGAIN instead of
    // sleeping until a reader makes room (there is no reader here).
    let (_read_end, write_end) = pipe2(OFlag::O_NONBLOCK).context("pipe2(O_NONBLOCK)")?;
    let size = fcntl(&write_end, FcntlArg::F_GETPIPE_SZ).context("fcntl(F_GETPIPE_SZ)")?;
    say.step(format!("fcntl(F_GETPIPE_SZ) = {size} bytes"));

    // 1 KiB at a time: at most PIPE_BUF, so each write goes in whole or
    // not at all, and the total lands exactly on the capacity.
    let chunk = [0u8; 1024];
    let mut total = 0usize;
    let mut writes = 0;
    loop {
        match write(&write_end, &chunk) {
            Ok(n) => {
                total += n;
                writes += 1;
            }
            Err(Errno::EAGAIN) => break,
            Err(e) => return Err(e).context("write(non-blocking pipe)"),
        }
    }
    let verdict = if total == size as usize {
        "the same as F_GETPIPE_SZ"
    } else {
        "not F_GETPIPE_SZ: the kernel packs data into pages, so the fit depends on write sizes"
    };
    say.step(format!(
        "{writes} non-blocking writes of 1024 bytes, then EAGAIN: the pipe held {total} bytes, {verdict}"
    ));
    say.step(format!(
        "PIPE_BUF = {} bytes: a write of at most PIPE_BUF is atomic (never mixed with another \
         writer's data); a larger one may be split. A blocking writer would now sleep until \
         the reader makes room",
        libc::PIPE_BUF
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// sender | receiver: the shell's pipe between two siblings
// ---------------------------------------------------------------------------

fn sender(opts: &Options) -> Result<()> {
    // stdout carries the data, so the story goes to stderr.
    let say = Narrator::new("sender", opts.quiet, Stream::Stderr);
    let stdout = std::io::stdout();
    if nix::unistd::isatty(stdout.as_fd()).unwrap_or(false) {
        return Err(usage(
            "stdout is a terminal, and the messages are binary: pipe them into a receiver, \
             e.g. 'pipe-demo sender | pipe-demo receiver'",
        ));
    }
    say.step(format!("stdout is {}", describe_fd(stdout.as_fd())));
    // Our own descriptor for fd 1, unbuffered: one write() per frame.
    // Idle: a reader that stops reading (SIGSTOP, a hang) leaves us
    // blocked in write() on a full pipe; after --timeout we give up.
    let fd = stdout.as_fd().try_clone_to_owned().context("dup(stdout)")?;
    let mut out = StopOnSignal(Idle::new(File::from(fd), opts.timeout));

    let start = Instant::now();
    let mut sent = 0u64;
    let mut reader_left = false;
    for seq in 0..opts.count {
        check_stop()?;
        let body = payload::make(seq, opts.size);
        match frame::write_frame(&mut out, &body) {
            Ok(()) => {}
            // The reader exited (e.g. `| head -c 100`): like `yes | head`,
            // that is the reader's choice, not our failure. Stop quietly.
            Err(FrameError::Io(e)) if e.kind() == ErrorKind::BrokenPipe => {
                say.step(format!(
                    "write() → EPIPE after {sent} of {} messages: the reader closed the pipe; stopping",
                    opts.count
                ));
                reader_left = true;
                break;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("write(stdout) after {sent} messages"));
            }
        }
        sent += 1;
        say.message(format!("sent message {seq} ({} bytes)", body.len()));
    }
    if !reader_left {
        // Without it, the receiver could not tell this EOF from that of a
        // sender killed half-way. One write() of 16 bytes.
        match frame::write_end(&mut out, &sent.to_le_bytes()) {
            Ok(()) => say.step(format!(
                "sent the end marker (length 0xFFFFFFFF, then the count {sent}): the reader \
                 can tell a finished stream from one cut off"
            )),
            Err(FrameError::Io(e)) if e.kind() == ErrorKind::BrokenPipe => {
                say.step("write() → EPIPE at the end marker: the reader closed the pipe");
            }
            Err(e) => return Err(e).context("write(stdout) of the end marker"),
        }
    }
    say.line(Summary {
        mechanism: "pipe",
        messages: sent,
        bytes: sent * opts.size as u64,
        errors: 0,
        elapsed: start.elapsed(),
    });
    Ok(())
}

fn receiver(opts: &Options) -> Result<()> {
    let say = Narrator::new("receiver", opts.quiet, Stream::Stdout);
    let stdin = std::io::stdin();
    let stat = fstat(stdin.as_fd()).context("fstat(stdin)")?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFIFO {
        return Err(usage(format!(
            "stdin is {}, not a pipe: feed it from a sender, \
             e.g. 'pipe-demo sender | pipe-demo receiver'",
            describe_fd(stdin.as_fd())
        )));
    }
    say.step(format!(
        "stdin is a pipe (fstat: S_IFIFO); reading frames up to the end marker (at most {} s \
         without data)",
        opts.timeout.as_secs()
    ));
    let fd = stdin.as_fd().try_clone_to_owned().context("dup(stdin)")?;
    // Idle: a sender that stalls (SIGSTOP, half a frame and then nothing)
    // makes read() give up after --timeout instead of waiting forever.
    let mut input = StopOnSignal(Idle::new(File::from(fd), opts.timeout));
    let mut checker = Checker::new(opts.count_given.then_some(opts.count));

    let start = Instant::now();
    let result = loop {
        match frame::read_frame_or_end(&mut input, MAX_FRAME) {
            Ok(Some(Frame::Data(body))) => {
                let verdict = checker.check(&body);
                if verdict != Verdict::Ok || !opts.quiet {
                    let seq = payload::seq_of(&body).map_or("?".into(), |s| s.to_string());
                    say.step(format!("message {seq} ({} bytes): {verdict}", body.len()));
                }
            }
            Ok(Some(Frame::End(count))) => break end_marker(&count, &checker, opts, &say),
            Ok(None) => {
                // EOF alone proves nothing: a killed sender's pipe ends so too.
                let n = checker.report().received;
                break Err(anyhow::anyhow!(
                    "read(stdin) returned 0 (EOF) after {n} messages but before the end \
                     marker: the sender stopped early (killed or interrupted)"
                ));
            }
            Err(e) => break Err(anyhow::Error::new(e).context("read(stdin)")),
        }
    };
    let mut report = checker.report();
    if let Ok(sent) = result {
        // What the sender sent and did not arrive is lost.
        let arrived = report.received - report.duplicated - report.corrupted;
        report.lost = report.lost.max(sent.saturating_sub(arrived));
    }
    say.step(format!("checked: {report}"));
    // A stream cut off (or a bad end marker) is an error even when no
    // message was lost.
    let errors = report.errors() + u64::from(result.is_err() && report.errors() == 0);
    say.line(Summary {
        mechanism: "pipe",
        messages: report.received,
        bytes: report.bytes,
        errors,
        elapsed: start.elapsed(),
    });
    result?;
    if report.errors() > 0 {
        bail!("{} message(s) failed the check ({report})", report.errors());
    }
    Ok(())
}

/// The end marker: its count, checked against --count. Returns the count.
fn end_marker(payload: &[u8], checker: &Checker, opts: &Options, say: &Narrator) -> Result<u64> {
    let sent = <[u8; 8]>::try_from(payload)
        .map(u64::from_le_bytes)
        .map_err(|_| {
            anyhow::anyhow!(
                "read(stdin): an end marker of {} bytes, not 8: corrupted",
                payload.len()
            )
        })?;
    say.step(format!(
        "end marker: the sender says it sent {sent} messages; {} arrived",
        checker.report().received
    ));
    if opts.count_given && sent != opts.count {
        bail!(
            "the sender sent {sent} messages, but --count expects {}",
            opts.count
        );
    }
    Ok(sent)
}

/// What kind of file a descriptor refers to, for messages.
fn describe_fd(fd: std::os::fd::BorrowedFd<'_>) -> &'static str {
    let Ok(stat) = fstat(fd) else {
        return "not an open file";
    };
    match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFIFO => "a pipe",
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFCHR if nix::unistd::isatty(fd).unwrap_or(false) => "a terminal",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFDIR => "a directory",
        _ => "not a pipe",
    }
}

// ---------------------------------------------------------------------------
// pipeline: CMD1 | CMD2, the way a shell builds it
// ---------------------------------------------------------------------------

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
    pipeline(
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

fn pipeline(first: &[CString], second: &[CString], say: &Narrator) -> Result<()> {
    let show = |argv: &[CString]| {
        argv.iter()
            .map(|w| w.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (name1, name2) = (show(first), show(second));
    // O_CLOEXEC: each child keeps only the copy it dup2()s onto stdin or
    // stdout; exec closes the originals, so no process holds a stray end.
    let (read_end, write_end) = pipe2(OFlag::O_CLOEXEC).context("pipe2(O_CLOEXEC)")?;
    say.step(format!(
        "pipe2(O_CLOEXEC): read fd {}, write fd {}",
        read_end.as_raw_fd(),
        write_end.as_raw_fd()
    ));

    let left = start_command(first, Redirect::Stdout(&write_end));
    let right = start_command(second, Redirect::Stdin(&read_end));
    // The parent must close both ends too: while it holds the write end,
    // `second` never sees EOF; while it holds the read end, `first` never
    // gets EPIPE/SIGPIPE when `second` exits early.
    drop(read_end);
    drop(write_end);
    for (name, started) in [(&name1, &left), (&name2, &right)] {
        if let Ok(pid) = started {
            say.step(format!(
                "fork() + dup2() + execvp(): '{name}' runs as pid {pid}"
            ));
        }
    }
    say.step("closed both ends in the parent; waiting for the commands");

    // Reap every child that started, whatever happened to the other one.
    let mut exits = Vec::new();
    let mut exec_error = None;
    for (name, started) in [(&name1, left), (&name2, right)] {
        match started {
            Ok(pid) => {
                let exit = wait_blocking(pid)?;
                say.step(format!("waitpid({pid}): '{name}' {exit}"));
                exits.push(exit);
            }
            Err(e) => exec_error = exec_error.or(Some(e)),
        }
    }
    if let Some(e) = exec_error {
        return Err(e.context("pipeline failed"));
    }
    if exits[0] == PeerExit::Killed(Signal::SIGPIPE) {
        say.step(format!(
            "'{name1}' was killed by SIGPIPE because '{name2}' stopped reading: normal in a pipeline"
        ));
    }
    // Like a shell: the pipeline's status is the last command's.
    if !exits[1].success() {
        bail!("pipeline failed: '{name2}' {}", exits[1]);
    }
    Ok(())
}

/// Which standard stream of the child the pipe end replaces.
enum Redirect<'a> {
    Stdin(&'a OwnedFd),
    Stdout(&'a OwnedFd),
}

/// fork, redirect, execvp. The child reports an exec failure through a
/// close-on-exec pipe: if exec succeeds, the kernel closes that pipe and
/// the parent reads 0 bytes; if it fails, the child writes its errno.
fn start_command(argv: &[CString], redirect: Redirect<'_>) -> Result<Pid> {
    let name = argv[0].to_string_lossy().into_owned();
    let (status_read, status_write) = pipe2(OFlag::O_CLOEXEC).context("pipe2(O_CLOEXEC)")?;
    // SAFETY: pipe-demo is single-threaded, so the child may call anything
    // until execvp replaces it.
    match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            drop(status_read);
            // Rust set SIGPIPE to "ignore", and an ignored signal stays
            // ignored across exec: give the command the default back, as a
            // shell would, so `yes | head -1` ends `yes`.
            // SAFETY: SIG_DFL installs no handler of ours; nothing can race.
            let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
            // dup2 makes fd 0 or 1 a copy of the pipe end; the copy does
            // not inherit O_CLOEXEC, so it survives exec.
            let redirected = match redirect {
                Redirect::Stdin(fd) => dup2_stdin(fd),
                Redirect::Stdout(fd) => dup2_stdout(fd),
            };
            let errno = match redirected {
                Ok(()) => execvp(&argv[0], argv).unwrap_err(), // returns only on failure
                Err(e) => e,
            };
            let _ = write(&status_write, &(errno as i32).to_ne_bytes());
            std::process::exit(127); // the shell's status for "could not run"
        }
        ForkResult::Parent { child } => {
            drop(status_write); // else our own copy would keep the read below waiting
            let mut buf = [0u8; 4];
            let got = loop {
                match nix::unistd::read(&status_read, &mut buf) {
                    Err(Errno::EINTR) => continue,
                    other => break other.context("read(exec status pipe)")?,
                }
            };
            if got == 0 {
                return Ok(child); // exec succeeded: the pipe closed on exec
            }
            let errno = Errno::from_raw(i32::from_ne_bytes(buf));
            // Reap the failed child now, so it does not stay a zombie.
            wait_blocking(child)?;
            let hint = if errno == Errno::ENOENT {
                " (command not found)"
            } else {
                ""
            };
            bail!("execvp(\"{name}\"): {}{hint}", errno.desc())
        }
    }
}

/// Wait for a child of a pipeline for as long as it runs (a user's command
/// may legitimately run for long; Ctrl-C reaches it with us).
fn wait_blocking(pid: Pid) -> Result<PeerExit> {
    use nix::sys::wait::WaitStatus;
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(PeerExit::Exited(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(PeerExit::Killed(sig)),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).with_context(|| format!("waitpid({pid})")),
        }
    }
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
