//! The story, one terminal: each step shows one property of a pipe and
//! checks that the kernel did what the narration says.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{StopOnSignal, check_stop};
use common::frame::{self, Idle};
use common::payload;
use common::peer::{PeerExit, wait_pid};
use common::report::{Narrator, Stream, Summary};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigHandler, Signal, kill, signal};
use nix::sys::stat::fstat;
use nix::unistd::{
    ForkResult, Gid, SysconfVar, Uid, fork, geteuid, pipe, pipe2, read, setgid, setgroups, setuid,
    sysconf, write,
};

use crate::Options;
use crate::ipc::{self, CHILD_EXIT_TIMEOUT, Conversation};

/// Step 3: how long the parent looks for an EOF that cannot come.
const FORGOTTEN_WAIT: Duration = Duration::from_millis(1000);
/// Step 4: children, and the work each does before it closes its end
/// (child N works N × SYNC_STEP).
const SYNC_CHILDREN: u32 = 3;
const SYNC_STEP: Duration = Duration::from_millis(100);
/// Step 8: the limit on what an unprivileged process may ask for.
const PIPE_MAX_SIZE: &str = "/proc/sys/fs/pipe-max-size";
/// Step 8: the uid of `nobody`, which a child of root becomes.
const NOBODY: u32 = 65534;
/// Step 9: messages through the Command's pipes.
const COMMAND_MESSAGES: u64 = 5;

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

    heading(
        &say,
        "3. A forgotten write end: the reader waits for an EOF that never comes",
    );
    forgotten_write_end(&say)?;

    heading(
        &say,
        "4. EOF as a signal: waiting until several children are done",
    );
    sync_by_eof(&say)?;

    heading(&say, "5. Writing to a pipe nobody reads: EPIPE and SIGPIPE");
    broken_pipe(&say)?;

    heading(&say, "6. No message boundaries: two writes, one read");
    no_boundaries(&say)?;

    heading(
        &say,
        "7. Capacity: how much a pipe holds before a writer must wait",
    );
    capacity(&say)?;

    heading(
        &say,
        "8. Resizing a pipe: F_SETPIPE_SZ and /proc/sys/fs/pipe-max-size",
    );
    resize(&say)?;

    heading(
        &say,
        "9. The same conversation with std::process::Command and Stdio::piped()",
    );
    with_command(opts, &say)?;

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

/// Step 3: the classic hang. A child writes one message and exits; the
/// parent reads it, but has "forgotten" to close its own write end, so no
/// EOF comes: a reader sees EOF only when *every* write end is closed.
fn forgotten_write_end(say: &Narrator) -> Result<()> {
    let (read_end, write_end) = pipe().context("pipe()")?;
    // SAFETY: pipe-demo is single-threaded, so the child may call anything.
    let child = match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            drop(read_end); // close(2): the child only writes
            let code = match write(&write_end, b"hello") {
                Ok(5) => 0,
                _ => 1,
            };
            std::process::exit(code); // exit closes its write end
        }
        ForkResult::Parent { child } => child,
    };
    // The bug: no drop(write_end) here.
    let exit = wait_pid(child, CHILD_EXIT_TIMEOUT)?;
    if exit != PeerExit::Exited(0) {
        bail!("the writing child (pid {child}) {exit}");
    }
    say.step(format!(
        "the child (pid {child}) wrote \"hello\" and exited, so its write end is closed; \
         I did not close mine"
    ));
    let mut buf = [0u8; 64];
    let n = read(&read_end, &mut buf).context("read(pipe)")?;
    say.step(format!(
        "read() → {n} bytes {:?}",
        String::from_utf8_lossy(&buf[..n])
    ));
    // A bounded look at what the next read() would do: poll(2) says
    // whether the read end is readable (data, or EOF) within the time.
    match poll_read_end(read_end.as_fd(), FORGOTTEN_WAIT)? {
        None => say.step(format!(
            "poll(read end, {} ms) → timed out: no data and no EOF. A read() here would \
             block forever: my own write end, still open, counts as a writer",
            FORGOTTEN_WAIT.as_millis()
        )),
        Some(events) => bail!(
            "expected the read end to stay unreadable while a write end is open, got {events:?}"
        ),
    }
    drop(write_end); // close(2): the fix; now no write end is left
    match poll_read_end(read_end.as_fd(), CHILD_EXIT_TIMEOUT)? {
        Some(events) if events.contains(PollFlags::POLLHUP) => {}
        other => bail!("expected POLLHUP once every write end is closed, got {other:?}"),
    }
    let n = read(&read_end, &mut buf).context("read(pipe)")?;
    if n != 0 {
        bail!("expected read() → 0 (EOF) after the last write end closed, got {n} bytes");
    }
    say.step(
        "closed my write end: poll → POLLHUP, and read() → 0 (EOF). Close the ends you do \
         not use right after fork()",
    );
    Ok(())
}

/// Step 4: TLPI's `pipe_sync`. Each child closes its write end when its
/// work is done; the parent, which closed its own first, reads, and the
/// read returns 0 only when the last child has closed.
fn sync_by_eof(say: &Narrator) -> Result<()> {
    let (read_end, write_end) = pipe().context("pipe()")?;
    let mut children = Vec::new();
    let start = Instant::now();
    for n in 1..=SYNC_CHILDREN {
        let work = SYNC_STEP * n;
        // SAFETY: pipe-demo is single-threaded, so the child may call anything.
        match unsafe { fork() }.context("fork()")? {
            ForkResult::Child => {
                drop(read_end); // close(2): the child never reads
                std::thread::sleep(work); // the child's "work"
                let say = say.with_role(format!("child {n}"));
                say.step(format!(
                    "done after {} ms: closing my write end",
                    work.as_millis()
                ));
                drop(write_end); // close(2): the signal "I am done"
                std::process::exit(0);
            }
            ForkResult::Parent { child } => children.push(child),
        }
    }
    say.step(format!(
        "forked {SYNC_CHILDREN} children; each will close its write end when done (after \
         {} to {} ms)",
        SYNC_STEP.as_millis(),
        (SYNC_STEP * SYNC_CHILDREN).as_millis()
    ));
    drop(write_end); // close(2): else our own write end would keep the read below from EOF
    say.step("closed my own write end; now read() waits until no write end is left");
    // read() would block; poll first, so that the wait is bounded.
    let polled = poll_read_end(read_end.as_fd(), CHILD_EXIT_TIMEOUT);
    let waited = start.elapsed();
    if !matches!(polled, Ok(Some(_))) {
        // Stopped (Ctrl-C) or timed out: do not leave the children running.
        for &child in &children {
            let _ = kill(child, Signal::SIGKILL);
        }
    }
    for child in children {
        let exit = wait_pid(child, CHILD_EXIT_TIMEOUT)?; // waitpid(2): reap each child
        if exit != PeerExit::Exited(0) && polled.is_ok() {
            bail!("child pid {child} {exit}");
        }
    }
    if polled?.is_none() {
        bail!(
            "no EOF within {} s: a write end is still open",
            CHILD_EXIT_TIMEOUT.as_secs()
        );
    }
    let mut buf = [0u8; 1];
    let n = read(&read_end, &mut buf).context("read(pipe)")?; // poll said it will not block
    let last = SYNC_STEP * SYNC_CHILDREN;
    if n != 0 || waited < last {
        bail!(
            "expected read() → 0 (EOF) once the last child closed (at {} ms), got {n} bytes \
             after {} ms",
            last.as_millis(),
            waited.as_millis()
        );
    }
    say.step(format!(
        "read() → 0 (EOF) after {} ms: every child has closed its write end. No data was \
         sent: the EOF itself is the message",
        waited.as_millis()
    ));
    Ok(())
}

/// Step 5: a pipe whose read end is closed.
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

/// Step 6: a pipe keeps bytes, not messages.
fn no_boundaries(say: &Narrator) -> Result<()> {
    let (read_end, write_end) = pipe().context("pipe()")?;
    write(&write_end, b"hello").context("write(pipe)")?;
    write(&write_end, b"world").context("write(pipe)")?;
    let mut buf = [0u8; 64];
    let n = read(&read_end, &mut buf).context("read(pipe)")?;
    let got = String::from_utf8_lossy(&buf[..n]);
    say.step(format!(
        "write(\"hello\"), write(\"world\"), then one read() of up to 64 bytes → {n} bytes {got:?}"
    ));
    if got != "helloworld" {
        bail!("expected one read to return both writes, got {got:?}");
    }
    say.step(
        "the pipe kept the bytes, not where one write ended: the reader cannot tell \
         \"hello\" + \"world\" from \"helloworld\" (nor, with a small buffer, from \"hel\" + \"lo\")",
    );
    // The fix: frame each message, a 4-byte length before the bytes.
    let mut to = File::from(write_end);
    let mut from = File::from(read_end);
    frame::write_frame(&mut to, b"hello").context("write(pipe)")?;
    frame::write_frame(&mut to, b"world").context("write(pipe)")?;
    drop(to); // close(2): so the third read_frame below sees EOF
    let mut frames = Vec::new();
    while let Some(body) = frame::read_frame(&mut from, 64).context("read(pipe)")? {
        frames.push(String::from_utf8_lossy(&body).into_owned());
    }
    if frames != ["hello", "world"] {
        bail!("expected two frames back, got {frames:?}");
    }
    say.step(format!(
        "framed (a u32 length, then the bytes, as every message in this demo): read_frame → \
         {frames:?}, two messages again"
    ));
    Ok(())
}

/// Step 7: fill a non-blocking pipe until it refuses more.
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

/// Step 8: a pipe's buffer can be resized, within a limit.
fn resize(say: &Narrator) -> Result<()> {
    let (_read_end, write_end) = pipe().context("pipe()")?;
    let page = sysconf(SysconfVar::PAGE_SIZE)
        .context("sysconf(_SC_PAGESIZE)")?
        .unwrap_or(4096) as usize;
    let size = pipe_size(&write_end)?;
    say.step(format!(
        "a new pipe: F_GETPIPE_SZ = {size} bytes = {} pages of {page} bytes. (Since Linux \
         2.6.11 the default is 16 pages; 1990s texts, and Linux before that, say one page)",
        size / page
    ));
    if size != 16 * page {
        say.step(
            "not 16 pages this time: this user owns more pipe buffers than \
             /proc/sys/fs/pipe-user-pages-soft, so the kernel gives new pipes less",
        );
    }
    let max: usize = std::fs::read_to_string(PIPE_MAX_SIZE)
        .with_context(|| format!("read {PIPE_MAX_SIZE}"))?
        .trim()
        .parse()
        .with_context(|| format!("parse {PIPE_MAX_SIZE}"))?;
    say.step(format!(
        "{PIPE_MAX_SIZE} = {max}: the most an unprivileged process may ask for"
    ));

    // The kernel rounds up to a power-of-two number of pages.
    let ask = 100_000;
    set_pipe_size(&write_end, ask)?;
    let got = pipe_size(&write_end)?;
    say.step(format!(
        "fcntl(F_SETPIPE_SZ, {ask}) → F_GETPIPE_SZ = {got}: rounded up to a power-of-two \
         number of pages"
    ));
    if got < ask || !(got / page).is_power_of_two() {
        bail!("expected F_SETPIPE_SZ({ask}) to give a power of two pages >= {ask}, got {got}");
    }

    // Above pipe-max-size: EPERM, unless the process has CAP_SYS_RESOURCE.
    let big = 2 * max;
    match fcntl(&write_end, FcntlArg::F_SETPIPE_SZ(big as libc::c_int)) {
        Ok(_) => say.step(format!(
            "fcntl(F_SETPIPE_SZ, {big}) succeeded: this process has CAP_SYS_RESOURCE (root), \
             which may pass pipe-max-size. Now as an unprivileged user:"
        )),
        Err(Errno::EPERM) if geteuid().is_root() => {
            if has_cap_sys_resource()? {
                bail!("F_SETPIPE_SZ({big}) → EPERM, although this process has CAP_SYS_RESOURCE");
            }
            say.step(format!(
                "fcntl(F_SETPIPE_SZ, {big}) → EPERM even as root: CapEff in /proc/self/status \
                 lacks CAP_SYS_RESOURCE (a container drops it), and uid 0 alone is not enough. \
                 Now as an unprivileged user:"
            ))
        }
        Err(Errno::EPERM) => {
            say.step(format!(
                "fcntl(F_SETPIPE_SZ, {big}) → EPERM (Operation not permitted): above \
                 pipe-max-size needs CAP_SYS_RESOURCE"
            ));
            return Ok(());
        }
        Err(e) => return Err(e).context(format!("fcntl(F_SETPIPE_SZ, {big})")),
    }
    // Root: show the refusal in a child that becomes the user `nobody`.
    // SAFETY: pipe-demo is single-threaded, so the child may call anything.
    match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            // setuid from root to another uid drops every capability.
            let code = match setgroups(&[])
                .and_then(|()| setgid(Gid::from_raw(NOBODY)))
                .and_then(|()| setuid(Uid::from_raw(NOBODY)))
                .and_then(|()| pipe())
                .and_then(|(_r, w)| fcntl(&w, FcntlArg::F_SETPIPE_SZ(big as libc::c_int)))
            {
                Err(Errno::EPERM) => 0,
                Ok(_) => 2,
                Err(_) => 3,
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => match wait_pid(child, CHILD_EXIT_TIMEOUT)? {
            PeerExit::Exited(0) => say.step(format!(
                "a child that setuid()s to uid {NOBODY} (nobody): fcntl(F_SETPIPE_SZ, {big}) → \
                 EPERM (Operation not permitted)"
            )),
            PeerExit::Exited(2) => {
                bail!("expected EPERM for F_SETPIPE_SZ({big}) as uid {NOBODY}, but it succeeded")
            }
            exit => bail!("the child that became uid {NOBODY} (pid {child}) {exit}"),
        },
    }
    Ok(())
}

/// Whether this process's effective capabilities hold CAP_SYS_RESOURCE,
/// from the `CapEff:` bit mask in /proc/self/status.
fn has_cap_sys_resource() -> Result<bool> {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .context("no CapEff line in /proc/self/status")?;
    Ok(mask & (1 << CAP_SYS_RESOURCE) != 0)
}

/// F_GETPIPE_SZ: the pipe's capacity in bytes.
fn pipe_size(fd: &OwnedFd) -> Result<usize> {
    let size = fcntl(fd, FcntlArg::F_GETPIPE_SZ).context("fcntl(F_GETPIPE_SZ)")?;
    Ok(size as usize)
}

/// F_SETPIPE_SZ: ask for a capacity of at least `size` bytes.
fn set_pipe_size(fd: &OwnedFd, size: usize) -> Result<()> {
    fcntl(fd, FcntlArg::F_SETPIPE_SZ(size as libc::c_int))
        .with_context(|| format!("fcntl(F_SETPIPE_SZ, {size})"))?;
    Ok(())
}

/// Step 9: `Command` with `Stdio::piped()` makes the two pipes of step 1
/// and does the fork, exec, closing and reaping for you. The child is this
/// program's own `receiver` role.
fn with_command(opts: &Options, say: &Narrator) -> Result<()> {
    let exe = std::env::current_exe().context("current_exe()")?;
    let count = COMMAND_MESSAGES.to_string();
    let mut child = Command::new(&exe)
        .args(["receiver", "--count", &count, "--quiet"])
        .stdin(Stdio::piped()) // a pipe: we hold its write end, the child's fd 0 is its read end
        .stdout(Stdio::piped()) // and one back: the child's fd 1 → our read end
        .spawn()
        .with_context(|| format!("spawn {} receiver", exe.display()))?;
    let result = converse(&mut child, opts, say);
    if result.is_err() {
        // Stopped or failed half-way: end the child and reap it.
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

/// Step 9, once the child runs: talk to it through the pipes Command made.
fn converse(child: &mut Child, opts: &Options, say: &Narrator) -> Result<()> {
    let pid = child.id();
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        bail!("Command gave no stdin/stdout pipe");
    };
    let cloexec = |fd: BorrowedFd<'_>| {
        fcntl(fd, FcntlArg::F_GETFD)
            .map(|flags| FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC))
    };
    let held = (held_ends(stdin.as_fd())?, held_ends(stdout.as_fd())?);
    say.step(format!(
        "spawn() → pid {pid}: pipe2(O_CLOEXEC) twice (FD_CLOEXEC on our ends: {}, {}), \
         fork+exec (posix_spawn where it can), dup2 onto the child's fd 0 and 1; we hold {} \
         and {} descriptor(s) of the two pipes: the ends we do not use are closed already",
        cloexec(stdin.as_fd())?,
        cloexec(stdout.as_fd())?,
        held.0,
        held.1
    ));
    if held != (1, 1) || !cloexec(stdin.as_fd())? || !cloexec(stdout.as_fd())? {
        bail!("expected one close-on-exec end of each pipe in the parent, got {held:?}");
    }

    // The same bounded reads and writes as step 1 (see ipc::PipeEnd).
    let mut to_child = StopOnSignal(Idle::new(stdin, opts.timeout));
    for seq in 0..COMMAND_MESSAGES {
        frame::write_frame(&mut to_child, &payload::make(seq, opts.size))
            .context("write(child's stdin pipe)")?;
    }
    frame::write_end(&mut to_child, &COMMAND_MESSAGES.to_le_bytes())
        .context("write(child's stdin pipe)")?;
    drop(to_child); // close(2) of ChildStdin: the child's read() returns 0 after the end marker
    say.step(format!(
        "wrote {COMMAND_MESSAGES} frames and the end marker to its stdin, then dropped \
         ChildStdin: close(2), so the child sees EOF"
    ));
    let mut from_child = StopOnSignal(Idle::new(stdout, opts.timeout));
    let mut text = String::new();
    from_child
        .read_to_string(&mut text)
        .context("read(child's stdout pipe)")?;
    let status = wait_child(child)?; // waitpid(2), bounded
    let checked = text
        .lines()
        .find(|l| l.contains("checked: "))
        .unwrap_or("(no checked line)")
        .trim();
    say.step(format!(
        "read its stdout to EOF; it said {checked:?}; wait() (waitpid) → {status}"
    ));
    let clean = format!("received={COMMAND_MESSAGES} lost=0 duplicated=0 reordered=0 corrupted=0");
    if !status.success() || !checked.contains(&clean) {
        bail!("the receiver (pid {pid}) {status}; it said: {text}");
    }
    say.step(
        "what Command did for us: pipe2 with O_CLOEXEC (no stray ends in other children), \
         fork/exec, dup2, closing the unused ends, and waitpid (Child::wait also closes \
         ChildStdin first). What it cannot do: read the child's stdout while we write its \
         stdin. Had the child written 64 KiB back before reading on, each side would wait \
         in write() for the other to read; this receiver is --quiet, so its few lines fit in the pipe",
    );
    Ok(())
}

/// How many descriptors of this process refer to the same pipe as `fd`:
/// each `/proc/self/fd/N` link of a pipe reads `pipe:[INODE]`.
fn held_ends(fd: BorrowedFd<'_>) -> Result<usize> {
    let inode = fstat(fd).context("fstat(pipe end)")?.st_ino;
    let name = format!("pipe:[{inode}]");
    let mut n = 0;
    for entry in std::fs::read_dir("/proc/self/fd").context("read_dir(/proc/self/fd)")? {
        let link = std::fs::read_link(entry.context("read_dir(/proc/self/fd)")?.path());
        if link.is_ok_and(|l| l.as_os_str() == name.as_str()) {
            n += 1;
        }
    }
    Ok(n)
}

/// Wait for a `Command` child at most CHILD_EXIT_TIMEOUT, then kill it.
fn wait_child(child: &mut Child) -> Result<PeerExit> {
    let deadline = Instant::now() + CHILD_EXIT_TIMEOUT;
    loop {
        // try_wait is waitpid(WNOHANG): it never blocks.
        if let Some(status) = child.try_wait().context("waitpid(receiver)")? {
            return Ok(PeerExit::from(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(PeerExit::TimedOut);
        }
        check_stop()?;
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// poll(2) a read end for at most `limit`: its events (data, or POLLHUP:
/// no write end left), or None if nothing happened in time. A signal
/// (the 1 s SIGALRM tick) ends poll with EINTR: poll again for the rest.
fn poll_read_end(fd: BorrowedFd<'_>, limit: Duration) -> Result<Option<PollFlags>> {
    let deadline = Instant::now() + limit;
    loop {
        check_stop()?;
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) if left.is_zero() => return Ok(None),
            Ok(0) => {}
            Ok(_) => return Ok(fds[0].revents()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll(pipe read end)"),
        }
    }
}
