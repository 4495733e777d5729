//! The mechanism: anonymous pipes between related processes.
//!
//! Read top to bottom, as you would TLPI's `simple_pipe.c`:
//!
//! 1. the story's conversation: `pipe()` twice (a pipe is one-way),
//!    `fork()`, each process closes the ends it does not use, the parent
//!    writes and reads, then closes its write end — the child's `read`
//!    returns 0 (EOF) — and reaps the child with `waitpid`;
//! 2. `sender` and `receiver`: the same frames through a pipe the shell
//!    made (`sender | receiver`); `EPIPE` when the reader has left;
//! 3. `pipeline`: what a shell does for `CMD1 | CMD2`: `pipe2`, `fork`,
//!    `dup2` onto stdin or stdout, `execvp`.
//!
//! Dropping an `OwnedFd` (or a `File` made from one) is `close(2)`: each
//! such line says so, and why that end must be closed.

use std::ffi::CString;
use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use common::cleanup::{StopOnSignal, check_stop};
use common::frame::{self, Frame, FrameError, Idle, MAX_FRAME};
use common::payload::{self, Checker, Verdict};
use common::peer::{PeerExit, Ticker, wait_pid};
use common::report::{Narrator, Summary};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, dup2_stdin, dup2_stdout, execvp, fork, pipe, pipe2, write};

use crate::{Options, TICK, checks};

/// Replies are short text (`ack 3 ok`); anything longer is a broken peer.
const MAX_REPLY: usize = 256;

/// How long the parent waits for a child to exit once the work is done;
/// past that it kills the child and reports it, rather than hang.
pub const CHILD_EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// One end of a pipe as a reader or writer. A first reading may skip the
/// wrappers: `File` makes `read`/`write` plain read(2)/write(2), with no
/// buffer in between; `Idle` gives up after `--timeout` without progress
/// (a stopped peer); `StopOnSignal` ends a blocked call on Ctrl-C.
pub type PipeEnd = StopOnSignal<Idle<File>>;

pub fn pipe_end(fd: OwnedFd, timeout: Duration) -> PipeEnd {
    StopOnSignal(Idle::new(File::from(fd), timeout))
}

// ---------------------------------------------------------------------------
// The conversation: parent and child after fork
// ---------------------------------------------------------------------------

/// The parent's side after `fork`: the child, and the two ends it kept.
#[derive(Debug)]
pub struct Conversation {
    pub child: Pid,
    /// The write end of "down" (parent → child).
    to_child: PipeEnd,
    /// The read end of "up" (child → parent).
    from_child: PipeEnd,
}

// ANCHOR: pipe_fork
/// `pipe()` twice, `fork()`, and each side closes the ends it does not
/// use. The child runs [`child`] and exits; the parent gets its two ends.
pub fn start_conversation(opts: &Options, say: &Narrator) -> Result<Conversation> {
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
            // The child has copies of all four descriptors. read() gives
            // EOF only once *every* write end is closed, this copy too; and
            // write() gives EPIPE only once every read end is closed.
            drop(down_write); // close(2): else our read() never sees EOF
            drop(up_read); // close(2): else a dead parent blocks our write(), not EPIPE
            let say = say.with_role("child");
            say.step("closed the ends I do not use (parent→child write, child→parent read)");
            // fork() does not copy interval timers: the child starts its own.
            let code = match Ticker::start(TICK)
                .and_then(|_ticker| child(down_read, up_write, opts, &say))
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
    // The same rule: if the child dies, we must see EPIPE and EOF, not
    // wait for our own copies.
    drop(down_read); // close(2): else a dead child blocks our write(), not EPIPE
    drop(up_write); // close(2): else a dead child leaves our read() waiting
    say.step("closed the ends I do not use (parent→child read, child→parent write)");
    Ok(Conversation {
        child,
        to_child: pipe_end(down_write, opts.timeout),
        from_child: pipe_end(up_read, opts.timeout),
    })
}
// ANCHOR_END: pipe_fork

/// The parent: send `count` messages down, read a reply to each from "up".
/// Returns (messages sent, replies that were not "ok").
pub fn parent(talk: &mut Conversation, opts: &Options, say: &Narrator) -> Result<(u64, u64)> {
    let mut errors = 0;
    for seq in 0..opts.count {
        check_stop()?;
        let body = payload::make(seq, opts.size);
        // write(2) of a 4-byte length and the body, continued if short.
        frame::write_frame(&mut talk.to_child, &body).map_err(|e| match e {
            FrameError::Io(io) if io.kind() == ErrorKind::BrokenPipe => anyhow!(
                "write(parent→child pipe) failed with EPIPE at message {seq}: \
                 the child's read end is closed"
            ),
            other => anyhow::Error::new(other).context("write(parent→child pipe)"),
        })?;
        say.message(format!("sent message {seq} ({} bytes)", body.len()));

        // read(2) until the whole reply frame is in; 0 bytes is EOF.
        let reply = frame::read_frame(&mut talk.from_child, MAX_REPLY)
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

// ANCHOR: child_reads_to_eof
/// The child: read and check until EOF, answering each message.
pub fn child(input: OwnedFd, output: OwnedFd, opts: &Options, say: &Narrator) -> Result<()> {
    let mut input = pipe_end(input, opts.timeout);
    let mut output = pipe_end(output, opts.timeout);
    let mut checker = Checker::new(Some(opts.count));
    // read(2) returns 0 once no write end is open: read_frame says None.
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
// ANCHOR_END: child_reads_to_eof

/// Close the parent's ends, which ends the child's reading, and reap it:
/// at most `patience`, then SIGKILL (which ends even a stopped child).
pub fn hang_up(talk: Conversation, patience: Duration, say: &Narrator) -> Result<PeerExit> {
    let Conversation {
        child,
        to_child,
        from_child,
    } = talk;
    drop(to_child); // close(2) of the last write end of "down": the child's next read() returns 0
    drop(from_child); // close(2): we read no more replies
    say.step("closed my write end: the child's next read() returns 0 (EOF)");
    let exit = wait_pid(child, patience)?; // waitpid(2), so no zombie is left
    say.step(format!("waitpid({child}): the child {exit}"));
    Ok(exit)
}

// ---------------------------------------------------------------------------
// sender | receiver: the shell's pipe between two siblings
// ---------------------------------------------------------------------------

/// Write `--count` frames and the end marker to stdout, which the shell
/// made the write end of a pipe.
pub fn sender(opts: &Options) -> Result<()> {
    // stdout carries the data, so the story goes to stderr.
    let say = Narrator::new("sender", opts.quiet, common::report::Stream::Stderr);
    let stdout = std::io::stdout();
    checks::stdout_is_not_a_terminal(stdout.as_fd(), &say)?;
    // dup(2): our own descriptor for fd 1, unbuffered: one write() per frame.
    let fd = stdout.as_fd().try_clone_to_owned().context("dup(stdout)")?;
    let mut out = pipe_end(fd, opts.timeout);

    let start = Instant::now();
    let mut sent = 0u64;
    let mut reader_left = false;
    for seq in 0..opts.count {
        check_stop()?;
        let body = payload::make(seq, opts.size);
        // write(2); blocks while the pipe is full (until the reader reads).
        match frame::write_frame(&mut out, &body) {
            Ok(()) => {}
            // Every read end is closed (e.g. `| head -c 100` exited): like
            // `yes | head`, that is the reader's choice, not our failure.
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

/// Read frames from stdin, the read end of the shell's pipe, up to the end
/// marker, checking each one.
pub fn receiver(opts: &Options) -> Result<()> {
    let say = Narrator::new("receiver", opts.quiet, common::report::Stream::Stdout);
    let stdin = std::io::stdin();
    checks::stdin_is_a_pipe(stdin.as_fd())?;
    say.step(format!(
        "stdin is a pipe (fstat: S_IFIFO); reading frames up to the end marker (at most {} s \
         without data)",
        opts.timeout.as_secs()
    ));
    // dup(2): our own descriptor for fd 0, read with plain read(2).
    let fd = stdin.as_fd().try_clone_to_owned().context("dup(stdin)")?;
    let mut input = pipe_end(fd, opts.timeout);
    let mut checker = Checker::new(opts.count_given.then_some(opts.count));

    let start = Instant::now();
    let result = loop {
        // read(2) blocks until bytes arrive; 0 bytes: every writer closed.
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
                break Err(anyhow!(
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
            anyhow!(
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

// ---------------------------------------------------------------------------
// pipeline: CMD1 | CMD2, the way a shell builds it
// ---------------------------------------------------------------------------

// ANCHOR: pipeline
pub fn pipeline(first: &[CString], second: &[CString], say: &Narrator) -> Result<()> {
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
    // The parent must close both ends too:
    drop(read_end); // close(2): else `first` gets no SIGPIPE if `second` exits early
    drop(write_end); // close(2): else `second` never sees EOF
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
            drop(status_read); // close(2): only the parent reads the status
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
            drop(status_write); // close(2): else our own copy would keep the read below waiting
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
// ANCHOR_END: pipeline

/// Wait for a child of a pipeline for as long as it runs (a user's command
/// may legitimately run for long; Ctrl-C reaches it with us).
fn wait_blocking(pid: Pid) -> Result<PeerExit> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(PeerExit::Exited(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(PeerExit::Killed(sig)),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).with_context(|| format!("waitpid({pid})")),
        }
    }
}
