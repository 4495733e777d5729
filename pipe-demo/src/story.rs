//! The story, one terminal: each step shows one property of a pipe and
//! checks that the kernel did what the narration says.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::peer::{PeerExit, wait_pid};
use common::report::{Narrator, Stream, Summary};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{SigHandler, Signal, signal};
use nix::unistd::{ForkResult, fork, pipe, pipe2, write};

use crate::Options;
use crate::ipc::{self, CHILD_EXIT_TIMEOUT, Conversation};

pub fn story(opts: &Options) -> Result<()> {
    let say = Narrator::new("parent", opts.quiet, Stream::Stdout);
    say.line(format!(
        "pipe-demo: {} messages of {} bytes over anonymous pipes (parent pid {})",
        opts.count,
        opts.size,
        std::process::id()
    ));

    heading(
        &say,
        "1. Two pipes, one each way: a conversation with a forked child",
    );
    let talked = conversation(opts, &say)?;
    let elapsed = talked.elapsed;

    heading(
        &say,
        "2. EOF: closing the write end ends the child's reading",
    );
    let (sent, errors) = eof(talked, &say)?;

    heading(&say, "3. Writing to a pipe nobody reads: EPIPE and SIGPIPE");
    broken_pipe(&say)?;

    heading(
        &say,
        "4. Capacity: how much a pipe holds before a writer must wait",
    );
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

fn heading(say: &Narrator, title: &str) {
    say.line(format!("\n== {title} =="));
}

/// What step 1 leaves for step 2: the conversation, still open, and how
/// the parent's side went: (messages sent, bad replies), and its time.
struct Talked {
    talk: Conversation,
    outcome: Result<(u64, u64)>,
    elapsed: Duration,
}

/// Step 1: fork a child and talk to it.
fn conversation(opts: &Options, say: &Narrator) -> Result<Talked> {
    let mut talk = ipc::start_conversation(opts, say)?;
    let start = Instant::now();
    let outcome = ipc::parent(&mut talk, opts, say);
    Ok(Talked {
        talk,
        outcome,
        elapsed: start.elapsed(),
    })
}

/// Step 2: close the parent's ends; the child sees EOF, says so, exits 0.
/// Returns (messages sent, bad replies).
fn eof(talked: Talked, say: &Narrator) -> Result<(u64, u64)> {
    let Talked { talk, outcome, .. } = talked;
    let child = talk.child;
    // After a failure the child may be stopped or stuck: a short wait, then
    // SIGKILL (which ends even a stopped process).
    let patience = if outcome.is_ok() {
        CHILD_EXIT_TIMEOUT
    } else {
        Duration::from_secs(5)
    };
    let exit = ipc::hang_up(talk, patience, say)?;
    match (outcome, exit) {
        (Ok(done), PeerExit::Exited(0)) => Ok(done),
        (Ok(_), exit) => bail!("the child (pid {child}) {exit}"),
        (Err(e), exit) if !exit.success() => {
            Err(e.context(format!("the child (pid {child}) {exit}")))
        }
        (Err(e), _) => Err(e),
    }
}

/// Step 3: a pipe whose read end is closed.
fn broken_pipe(say: &Narrator) -> Result<()> {
    let (read_end, write_end) = pipe().context("pipe()")?;
    drop(read_end); // close(2) of the only read end
    say.step("pipe(), then closed its only read end");
    match write(&write_end, b"x") {
        Err(Errno::EPIPE) => say.step(
            "write() → EPIPE (Broken pipe): the data could never be read. Rust sets \
             SIGPIPE to 'ignore' before main, so the error comes back from write()",
        ),
        other => bail!("write() to a pipe without reader: expected EPIPE, got {other:?}"),
    }

    // The default action for SIGPIPE is to terminate: show it in a child.
    // SAFETY: pipe-demo is single-threaded, so the child may call anything.
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
