//! The one-terminal story: six steps, each narrated, each checking that
//! the kernel did what the narration says (and failing loudly if not).
//!
//! Steps 1-5 use `fork`: an eventfd has no name, so a child is the
//! simplest way to share one. Step 6 hands it to an unrelated program
//! over a Unix socket, with the roles of `ipc.rs`.

use std::os::fd::{AsFd, AsRawFd};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{PrivateDir, Registration, check_stop};
use common::peer::{Peer, PeerExit, wait_pid};
use common::report::{Narrator, Stream, Summary};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::EfdFlags;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, fork};

use crate::ipc::{self, EVENT_BYTES, counter_read, counter_write};

/// The largest value an eventfd counter holds: 2^64 - 2 (2^64 - 1 is
/// reserved: it is never a valid count, so a write of it is EINVAL).
const COUNTER_MAX: u64 = u64::MAX - 1;

/// How long the story lets a child sit blocked, to show that it waits.
const SHOW_BLOCKED: Duration = Duration::from_millis(300);

pub fn story(opts: &ipc::Options) -> Result<()> {
    let say = Narrator::new("parent", opts.quiet, Stream::Stdout);
    let start = Instant::now();
    say.line("eventfd-demo: a kernel counter behind a file descriptor, shared between processes");

    say.line("\n== 1. Counter mode: writes add up, one read takes the sum and resets it ==");
    counter_mode(opts, &say)?;
    say.line("\n== 2. EFD_SEMAPHORE: each read takes 1 ==");
    semaphore_mode(opts, &say)?;
    say.line(
        "\n== 3. Blocking rules: EAGAIN with EFD_NONBLOCK, a blocked read woken by a write ==",
    );
    blocking_rules(opts, &say)?;
    say.line("\n== 4. Overflow: the counter stops at 2^64-2 ==");
    overflow(opts, &say)?;
    say.line("\n== 5. epoll: one wait for an eventfd and a pipe at once ==");
    epoll_step(opts, &say)?;
    say.line("\n== 6. Handing the eventfd to an unrelated process (SCM_RIGHTS) ==");
    let tally = hand_over(opts, &say)?;

    say.line("");
    say.line(Summary {
        mechanism: "eventfd",
        messages: tally.events,
        bytes: tally.events * EVENT_BYTES,
        errors: 0,
        elapsed: start.elapsed(),
    });
    Ok(())
}

// ---------------------------------------------------------------------------
// Forked children
// ---------------------------------------------------------------------------

/// A forked child. If we return before reaping it (an error, Ctrl-C),
/// dropping it kills and reaps it, so no orphan stays blocked on a counter.
#[derive(Debug)]
struct Child {
    pid: Pid,
    reaped: bool,
    /// A second Ctrl-C sends it SIGTERM (common::cleanup).
    _entry: Registration,
}

impl Child {
    /// Wait (bounded) for it to exit; it must have succeeded.
    fn finish(mut self, timeout: Duration, what: &str) -> Result<()> {
        let exit = wait_pid(self.pid, timeout)?;
        self.reaped = true;
        check_stop()?;
        match exit {
            PeerExit::Exited(0) => Ok(()),
            other => bail!("{what} (pid {}) {other}", self.pid),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            // SIGKILL cannot be ignored; then reap it so no zombie stays.
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
        }
    }
}

/// `fork()`, run `body` in the child and exit 0 (or 1 after printing the
/// error). The child arms `alarm(30)`: should we die, SIGALRM's default
/// action ends it, so even its deliberately blocking calls are bounded.
fn fork_child(say: &Narrator, body: impl FnOnce(&Narrator) -> Result<()>) -> Result<Child> {
    // SAFETY: eventfd-demo is single-threaded, so no other thread can hold
    // a lock (say, the allocator's) that the child would then wait on.
    match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            nix::unistd::alarm::set(30);
            let say = say.with_role("child");
            let code = match body(&say) {
                Ok(()) => 0,
                Err(e) => {
                    say.step(format!("error: {e:#}"));
                    1
                }
            };
            // exit, not return: the parent's guards on our copied stack
            // (its directory, its peer) are not ours to drop.
            std::process::exit(code);
        }
        ForkResult::Parent { child } => Ok(Child {
            pid: child,
            reaped: false,
            _entry: Registration::child(child.as_raw()),
        }),
    }
}

/// Wait until `pid` sleeps in the kernel inside system call `nr`
/// (`/proc/PID/stat` state S; `/proc/PID/syscall` names the call where
/// the kernel lets us read it). Returns how we know, for the narration.
fn wait_asleep_in(pid: Pid, nr: libc::c_long, name: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        check_stop()?;
        if let Some(how) = asleep_in(pid, nr, name) {
            return Ok(how);
        }
        if Instant::now() >= deadline {
            bail!("the child (pid {pid}) never blocked in {name}(2) within {timeout:?}");
        }
        sleep(Duration::from_millis(5));
    }
}

/// After a while: the child has not returned from the call (it would
/// have exited right after) and is asleep in it. A signal may wake it for
/// a moment (EINTR, and the call is made again), so look for up to 5 s.
fn still_blocked(child: &Child, nr: libc::c_long, name: &str) -> Result<()> {
    if !common::peer::alive(child.pid.as_raw()) {
        bail!("the child returned from {name}(2) although nothing let it proceed");
    }
    wait_asleep_in(child.pid, nr, name, Duration::from_secs(5))?;
    Ok(())
}

fn asleep_in(pid: Pid, nr: libc::c_long, name: &str) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (comm) STATE ...": the state follows the last ')'.
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    if state != "S" {
        return None;
    }
    // "NR arg1 arg2 ..." while blocked in a call; "running" otherwise.
    match std::fs::read_to_string(format!("/proc/{pid}/syscall")) {
        Ok(text) => {
            let first = text.split_whitespace().next()?;
            (first.parse::<libc::c_long>().ok()? == nr)
                .then(|| format!("/proc/{pid}/syscall: {name}, state S"))
        }
        Err(_) => Some(format!("/proc/{pid}/stat: state S")),
    }
}

/// Is the counter readable right now (count > 0)? poll(2) with timeout 0
/// asks without waiting.
fn readable_now(fd: std::os::fd::BorrowedFd<'_>) -> Result<bool> {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, 0u16) {
            Ok(n) => return Ok(n > 0),
            Err(Errno::EINTR) => check_stop()?,
            Err(e) => return Err(e).context("poll(eventfd)"),
        }
    }
}

// ---------------------------------------------------------------------------
// 1. Counter mode
// ---------------------------------------------------------------------------

fn counter_mode(opts: &ipc::Options, say: &Narrator) -> Result<()> {
    let efd = ipc::new_counter(EfdFlags::empty())?;
    say.step(format!(
        "eventfd(0, EFD_CLOEXEC) → fd {}: a counter at 0; fork() shares it with the child",
        efd.as_raw_fd()
    ));
    let child = fork_child(say, |say| {
        for n in [1u64, 2, 3, 4] {
            counter_write(efd.as_fd(), n).context("write(eventfd)")?;
            say.step(format!("write(fd, {n})"));
        }
        Ok(())
    })?;
    child.finish(opts.timeout, "the writing child")?;
    // The child is gone; its four writes stayed in the counter.
    let sum = counter_read(efd.as_fd()).context("read(eventfd)")?;
    if sum != 10 {
        bail!("read returned {sum}; counter mode should have summed 1+2+3+4 = 10");
    }
    say.step("read(fd) → 10: four writes added up, and one read took the sum");
    if readable_now(efd.as_fd())? {
        bail!("the counter is still readable after the read: it was not reset to 0");
    }
    say.step("poll(fd, POLLIN, 0) → not readable: that read reset the counter to 0");

    counter_write(efd.as_fd(), 5).context("write(eventfd)")?;
    let mut short = [0u8; 4];
    match nix::unistd::read(efd.as_fd(), &mut short) {
        Err(Errno::EINVAL) => {}
        other => bail!("read(fd, buf, 4) gave {other:?}; expected EINVAL"),
    }
    let left = counter_read(efd.as_fd()).context("read(eventfd)")?;
    if left != 5 {
        bail!("after the refused short read the counter held {left}, not 5");
    }
    say.step(
        "write(fd, 5), then read(fd, buf, 4) → EINVAL: the counter is 8 bytes, a shorter \
         buffer is refused and takes nothing (the next read → 5)",
    );
    drop(efd); // close(2): the last fd, so the counter is freed
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. Semaphore mode
// ---------------------------------------------------------------------------

fn semaphore_mode(opts: &ipc::Options, say: &Narrator) -> Result<()> {
    let efd = ipc::new_counter(EfdFlags::EFD_SEMAPHORE | EfdFlags::EFD_NONBLOCK)?;
    say.step(format!(
        "eventfd(0, EFD_SEMAPHORE|EFD_NONBLOCK) → fd {}",
        efd.as_raw_fd()
    ));
    let child = fork_child(say, |say| {
        counter_write(efd.as_fd(), 3).context("write(eventfd)")?;
        say.step("write(fd, 3): three units at once, like sem_post three times");
        Ok(())
    })?;
    child.finish(opts.timeout, "the posting child")?;
    for left in [2u64, 1, 0] {
        let n = counter_read(efd.as_fd()).context("read(eventfd)")?;
        if n != 1 {
            bail!("an EFD_SEMAPHORE read returned {n}; it should return 1");
        }
        say.step(format!("read(fd) → 1; the counter is now {left}"));
    }
    match counter_read(efd.as_fd()) {
        Err(Errno::EAGAIN) => {}
        other => bail!("a fourth read gave {other:?}; expected EAGAIN on the empty counter"),
    }
    say.step(
        "read(fd) → EAGAIN: all three taken, one per read (counter mode would have returned \
         3 at once); with a blocking fd this is sem_wait",
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. Blocking rules
// ---------------------------------------------------------------------------

fn blocking_rules(opts: &ipc::Options, say: &Narrator) -> Result<()> {
    let nonblocking = ipc::new_counter(EfdFlags::EFD_NONBLOCK)?;
    match counter_read(nonblocking.as_fd()) {
        Err(Errno::EAGAIN) => {}
        other => bail!("read of a zero EFD_NONBLOCK counter gave {other:?}; expected EAGAIN"),
    }
    say.step("eventfd(0, EFD_NONBLOCK), read(fd) → EAGAIN at once: the counter is 0 and we asked not to wait");
    drop(nonblocking); // close(2)

    let efd = ipc::new_counter(EfdFlags::empty())?;
    say.step(format!(
        "eventfd(0) → fd {}: blocking; a child reads it while it is 0",
        efd.as_raw_fd()
    ));
    let child = fork_child(say, |say| {
        let since = Instant::now();
        let n = counter_read(efd.as_fd()).context("read(eventfd)")?;
        say.step(format!(
            "read(fd) returned {n} after {} ms asleep",
            since.elapsed().as_millis()
        ));
        if n != 7 {
            bail!("the blocked read returned {n}, not the 7 the parent wrote");
        }
        Ok(())
    })?;
    let how = wait_asleep_in(child.pid, libc::SYS_read, "read", opts.timeout)?;
    sleep(SHOW_BLOCKED);
    still_blocked(&child, libc::SYS_read, "read")?;
    say.step(format!(
        "the child is asleep in read(2) ({how}), still after {} ms: a zero counter blocks its reader",
        SHOW_BLOCKED.as_millis()
    ));
    counter_write(efd.as_fd(), 7).context("write(eventfd)")?;
    say.step("write(fd, 7): wakes the reader");
    child.finish(opts.timeout, "the blocked reader")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. Overflow
// ---------------------------------------------------------------------------

fn overflow(opts: &ipc::Options, say: &Narrator) -> Result<()> {
    let nonblocking = ipc::new_counter(EfdFlags::EFD_NONBLOCK)?;
    counter_write(nonblocking.as_fd(), COUNTER_MAX).context("write(eventfd, 2^64-2)")?;
    say.step(format!(
        "eventfd(0, EFD_NONBLOCK), write(fd, 2^64-2 = {COUNTER_MAX}) → accepted: the largest count"
    ));
    match counter_write(nonblocking.as_fd(), 1) {
        Err(Errno::EAGAIN) => {}
        other => bail!("write(fd, 1) on a full counter gave {other:?}; expected EAGAIN"),
    }
    say.step(
        "write(fd, 1) → EAGAIN: the sum would pass 2^64-2; a blocking fd would wait for a read",
    );
    match counter_write(nonblocking.as_fd(), u64::MAX) {
        Err(Errno::EINVAL) => {}
        other => bail!("write(fd, 2^64-1) gave {other:?}; expected EINVAL"),
    }
    say.step("write(fd, 2^64-1) → EINVAL: 0xffffffffffffffff is never a valid count");
    drop(nonblocking); // close(2)

    let efd = ipc::new_counter(EfdFlags::empty())?;
    counter_write(efd.as_fd(), COUNTER_MAX).context("write(eventfd, 2^64-2)")?;
    say.step(format!(
        "eventfd(0) → fd {}, blocking, filled to 2^64-2; a child writes 1 more",
        efd.as_raw_fd()
    ));
    let child = fork_child(say, |say| {
        let since = Instant::now();
        counter_write(efd.as_fd(), 1).context("write(eventfd, 1)")?;
        say.step(format!(
            "write(fd, 1) returned after {} ms asleep",
            since.elapsed().as_millis()
        ));
        Ok(())
    })?;
    let how = wait_asleep_in(child.pid, libc::SYS_write, "write", opts.timeout)?;
    sleep(SHOW_BLOCKED);
    still_blocked(&child, libc::SYS_write, "write")?;
    say.step(format!(
        "the child is asleep in write(2) ({how}), still after {} ms: a full counter blocks its writer",
        SHOW_BLOCKED.as_millis()
    ));
    let n = counter_read(efd.as_fd()).context("read(eventfd)")?;
    if n != COUNTER_MAX {
        bail!("read returned {n}, expected 2^64-2 = {COUNTER_MAX}");
    }
    say.step("read(fd) → 2^64-2: the counter is 0, room again");
    child.finish(opts.timeout, "the blocked writer")?;
    let n = counter_read(efd.as_fd()).context("read(eventfd)")?;
    if n != 1 {
        bail!("after the child's write the counter held {n}, not 1");
    }
    say.step("read(fd) → 1: the child's write went through once there was room");
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. epoll: an eventfd and a pipe in one wait
// ---------------------------------------------------------------------------

/// Tags for epoll_wait's answers.
const EVENTFD: u64 = 1;
const PIPE: u64 = 2;

fn epoll_step(opts: &ipc::Options, say: &Narrator) -> Result<()> {
    let efd = ipc::new_counter(EfdFlags::empty())?;
    let (pipe_r, pipe_w) = nix::unistd::pipe().context("pipe()")?;
    // epoll_create1 + epoll_ctl(ADD) twice: one set, two kinds of fd.
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create1")?;
    epoll
        .add(&efd, EpollEvent::new(EpollFlags::EPOLLIN, EVENTFD))
        .context("epoll_ctl(ADD, eventfd)")?;
    epoll
        .add(&pipe_r, EpollEvent::new(EpollFlags::EPOLLIN, PIPE))
        .context("epoll_ctl(ADD, pipe)")?;
    say.step(format!(
        "epoll_create1 + epoll_ctl(ADD) the eventfd (fd {}) and a pipe's read end (fd {})",
        efd.as_raw_fd(),
        pipe_r.as_raw_fd()
    ));

    // Level-triggered (the default): ready for as long as the count is > 0.
    let mut events = [EpollEvent::empty(); 2];
    counter_write(efd.as_fd(), 1).context("write(eventfd)")?;
    let first = epoll_now(&epoll, &mut events)?;
    let second = epoll_now(&epoll, &mut events)?;
    if first != [EVENTFD] || second != [EVENTFD] {
        bail!(
            "after write(fd, 1) epoll_wait reported {first:?} then {second:?}; expected the eventfd twice"
        );
    }
    counter_read(efd.as_fd()).context("read(eventfd)")?;
    let third = epoll_now(&epoll, &mut events)?;
    if !third.is_empty() {
        bail!("after the read epoll_wait still reported {third:?}");
    }
    say.step(
        "write(fd, 1): epoll_wait(timeout 0) reports the eventfd, and again if asked again \
         (level-triggered: ready while the count is > 0); after read(fd), nothing",
    );

    let child = fork_child(say, |say| {
        sleep(Duration::from_millis(100));
        nix::unistd::write(&pipe_w, b"ping").context("write(pipe)")?;
        say.step("write(pipe, \"ping\")");
        sleep(Duration::from_millis(100));
        counter_write(efd.as_fd(), 1).context("write(eventfd)")?;
        say.step("write(eventfd, 1)");
        sleep(Duration::from_millis(100));
        say.step("exit: closes the pipe's write end");
        Ok(())
    })?;
    drop(pipe_w); // close(2): the child holds the only write end now, so its exit is EOF

    let deadline = Instant::now() + opts.timeout;
    let (mut data, mut woken_by_counter, mut eof, mut wakes) = (Vec::new(), false, false, 0);
    while !(woken_by_counter && eof) {
        check_stop()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "epoll_wait: the child's pipe and eventfd did not both report within the timeout"
            );
        }
        let ms = left.as_millis().clamp(1, u16::MAX as u128) as u16;
        // epoll_wait(2): sleep until either fd is ready.
        let n = match epoll.wait(&mut events, ms) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("epoll_wait"),
        };
        if n > 0 {
            wakes += 1;
        }
        for event in &events[..n] {
            match event.data() {
                PIPE => {
                    let mut buf = [0u8; 64];
                    let got = nix::unistd::read(&pipe_r, &mut buf).context("read(pipe)")?;
                    if got == 0 {
                        // Level-triggered EPOLLHUP keeps reporting a closed
                        // pipe: take it out of the set.
                        epoll.delete(&pipe_r).context("epoll_ctl(DEL, pipe)")?;
                        eof = true;
                        say.step("epoll_wait → the pipe: read → 0 (EOF), the child has exited");
                    } else {
                        data.extend_from_slice(&buf[..got]);
                        say.step(format!(
                            "epoll_wait → the pipe: read → {:?}",
                            String::from_utf8_lossy(&buf[..got])
                        ));
                    }
                }
                _ => {
                    let value = counter_read(efd.as_fd()).context("read(eventfd)")?;
                    if value != 1 {
                        bail!("the eventfd read returned {value}, not the child's 1");
                    }
                    woken_by_counter = true;
                    say.step("epoll_wait → the eventfd: read → 1");
                }
            }
        }
    }
    if data != b"ping" {
        bail!(
            "the pipe brought {:?}, not \"ping\"",
            String::from_utf8_lossy(&data)
        );
    }
    child.finish(opts.timeout, "the epoll child")?;
    say.step(format!(
        "one epoll_wait call site, {wakes} wake-up(s), served both: the pipe's data and the \
         counter. A POSIX or System V semaphore cannot join this set: sem_wait blocks on the \
         semaphore alone, so a process in sem_wait cannot also read a pipe. An eventfd is a \
         file descriptor, so it composes with pipes, sockets, timerfd and signalfd"
    ));
    Ok(())
}

/// `epoll_wait(timeout 0)`: which tags are ready right now.
fn epoll_now(epoll: &Epoll, events: &mut [EpollEvent]) -> Result<Vec<u64>> {
    loop {
        match epoll.wait(events, 0u8) {
            Ok(n) => return Ok(events[..n].iter().map(|e| e.data()).collect()),
            Err(Errno::EINTR) => check_stop()?,
            Err(e) => return Err(e).context("epoll_wait"),
        }
    }
}

// ---------------------------------------------------------------------------
// 6. SCM_RIGHTS to an unrelated process
// ---------------------------------------------------------------------------

fn hand_over(opts: &ipc::Options, say: &Narrator) -> Result<ipc::Tally> {
    let count = opts.count.unwrap_or(common::cli::DEFAULT_COUNT);
    let dir = PrivateDir::create("eventfd-demo")?;
    say.step(format!(
        "mkdir({}, 0700): only we can reach the socket inside",
        dir.path().display()
    ));
    let server_say = say.with_role("server");
    let path = dir.path().join("eventfd.sock");
    let (listener, socket_file) = ipc::listen_at(&path, &server_say)?;
    let path_arg = path.to_str().context("the socket path is not UTF-8")?;
    let (count_arg, timeout_arg) = (count.to_string(), opts.timeout.as_secs().to_string());
    let mut args = vec![
        "client",
        "--path",
        path_arg,
        "--count",
        &count_arg,
        "--timeout",
        &timeout_arg,
        // The story prints the run's one summary line itself.
        "--no-summary",
    ];
    if opts.quiet {
        args.push("--quiet");
    }
    say.step(
        "starting the client: a fresh run of this program (current_exe), not a fork, so it \
         inherits no counter of ours",
    );
    let mut peer = Peer::spawn_self(&args)?;
    let tally = ipc::serve(&listener, opts, Some(&mut peer), &server_say)?;
    let exit = peer.wait(Some(opts.timeout))?;
    if !exit.success() {
        bail!("the client {exit}");
    }
    say.step(format!(
        "the client {exit}: {} events crossed between unrelated processes on a counter that \
         has no name, only fds",
        tally.events
    ));
    drop(listener); // close(2)
    drop(socket_file); // unlink(2) of the socket file
    drop(dir); // rmdir(2)
    if path.exists() {
        bail!("{} is still there", path.display());
    }
    say.step("removed the socket file and the private directory");
    Ok(tally)
}
