//! The tour, one terminal: fifteen steps, each a function that narrates one
//! rule of signals and checks that the kernel did what the narration says.
//! Every step heading is printed from `story()`, in order.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::peer::{PeerExit, wait_pid};
use common::report::{Narrator, Stream, Summary};
use nix::errno::Errno;
use nix::sys::signal::{
    SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, kill, sigaction,
};
use nix::sys::signalfd::SfdFlags;
use nix::unistd::{ForkResult, Pid, fork};

use crate::checks::{
    Link, PROMPTLY, describe, divide_by_zero, fork_with_link, link_pair, name, proc_state,
    read_address_zero, sigpending_limit, sigpending_rlimit, touch_past_the_end, zombie_children,
};
use crate::ipc::{
    FullQueue, Record, Records, alarm_after, bit, block, block_keeping_old, default_action,
    handled, install, install_reaper, pause, pending, pidfd_exited, pidfd_open, pidfd_send_signal,
    read_signalfd, reaper_counts, send, send_retrying, set_mask, sigchld_disposition, signalfd_of,
    suspend, wait_info,
};

/// What the tour counts for its summary.
#[derive(Default)]
struct Count {
    signals: u64,
}

pub fn story(quiet: bool) -> Result<()> {
    let say = Narrator::new("parent", quiet, Stream::Stdout);
    let start = Instant::now();
    let mut count = Count::default();
    say.line(format!(
        "signal-demo: a tour of signals (parent pid {})",
        std::process::id()
    ));

    // Steps 1 to 4 run in one child that installs handlers (handler_child,
    // below); we signal it, and the two take turns over a `Link`.
    let (child, mut link) = fork_with_link(&say, handler_child)?;
    let outcome = (|| -> Result<()> {
        heading(
            &say,
            "1. sigaction with SA_SIGINFO: who sent it, how, and which handler runs first",
        );
        siginfo_and_nesting(child, &mut link, &say, &mut count)?;
        heading(
            &say,
            "2. Blocked signals wait as pending; only real-time signals queue",
        );
        link.tell(b'h')?; // the heading is out: the child may go on
        pending_and_queued(child, &mut link, &say, &mut count)?;
        heading(
            &say,
            "3. A blocking read interrupted: EINTR, or restarted with SA_RESTART",
        );
        eintr_and_restart(child, &mut link, &say, &mut count)?;
        heading(&say, "4. SIGALRM as a timeout on a blocking call");
        alarm_timeout(&mut link, &mut count)
    })();
    // close(2) of our pipe ends: the child sees EOF if we stopped early, and ends.
    drop(link);
    let exit = wait_pid(child, PROMPTLY)?;
    outcome?;
    if !exit.success() {
        bail!("the handler child (pid {child}) {exit}");
    }

    heading(&say, "5. SIGCHLD and zombies");
    zombies(&say, &mut count)?;
    heading(&say, "6. What cannot be caught; SIGTERM vs SIGKILL");
    uncatchable(&say)?;
    heading(&say, "7. Hardware faults: SIGSEGV and SIGFPE");
    faults(&say)?;
    heading(&say, "8. signalfd: signals read from a file descriptor");
    signalfd_step(&say, &mut count)?;
    heading(
        &say,
        &format!(
            "9. A flood of {FLOOD} queued signals: a handler's self-pipe overflows, a signalfd does not"
        ),
    );
    flood_step(&say, &mut count)?;
    heading(&say, "10. sigsuspend: the wake-up pause() loses");
    pause_race(&say, &mut count)?;
    heading(
        &say,
        "11. sigtimedwait: a blocked signal accepted synchronously, with its siginfo",
    );
    wait_for_signal(&say, &mut count)?;
    heading(
        &say,
        "12. SIGCHLD: one signal for many exits, a WNOHANG loop; SIG_IGN reaps for you",
    );
    reaping(&say, &mut count)?;
    heading(
        &say,
        "13. SIGBUS: a mapping past the end of a truncated file",
    );
    bus_error(&say)?;
    heading(
        &say,
        "14. Ping-pong: signals as a round trip, sigsuspend on both sides",
    );
    ping_pong(&say, &mut count)?;
    heading(
        &say,
        "15. pidfd: a process named for good; kill(pid, 0) answers for a reused pid",
    );
    pidfds(&say, &mut count)?;

    let zombies = zombie_children();
    say.step(if zombies.is_empty() {
        "no zombie left: every child was reaped with waitpid".to_string()
    } else {
        format!("zombie children left: {zombies:?}")
    });
    if !zombies.is_empty() {
        bail!("the tour left zombies: {zombies:?}");
    }

    say.line("");
    say.line(Summary {
        mechanism: "signal",
        messages: count.signals,
        bytes: 0,
        errors: 0,
        elapsed: start.elapsed(),
    });
    Ok(())
}

fn heading(say: &Narrator, title: &str) {
    say.line(format!("\n== {title} =="));
}

// ---------------------------------------------------------------------------
// Steps 1 to 4: the parent signals one child that has handlers installed.
// Each step has a parent half (it sends) and a child half (it handles and
// checks); the two take turns over the `Link`.
// ---------------------------------------------------------------------------

/// Step 1, the parent: one SIGUSR1, then twice SIGUSR1 + SIGUSR2 while the
/// child blocks both (first with handlers that block only their own
/// signal, then with an sa_mask that makes them block each other).
fn siginfo_and_nesting(
    child: Pid,
    link: &mut Link,
    say: &Narrator,
    count: &mut Count,
) -> Result<()> {
    link.hear(b'1')?;
    send(child, libc::SIGUSR1, None).context("kill(SIGUSR1)")?;
    say.step(format!("kill({child}, SIGUSR1)"));
    for _ in 0..2 {
        link.hear(b'p')?;
        send(child, libc::SIGUSR1, None).context("kill(SIGUSR1)")?;
        send(child, libc::SIGUSR2, None).context("kill(SIGUSR2)")?;
        say.step(format!(
            "kill({child}, SIGUSR1), then kill({child}, SIGUSR2), while the child blocks both"
        ));
        link.tell(b'g')?;
    }
    link.hear(b'a')?;
    count.signals += 5;
    Ok(())
}

/// Step 2, the parent: 3 × SIGUSR1, then 3 × SIGRTMIN+1 with values, each
/// while the child blocks it.
fn pending_and_queued(
    child: Pid,
    link: &mut Link,
    say: &Narrator,
    count: &mut Count,
) -> Result<()> {
    let rt1 = libc::SIGRTMIN() + 1;
    link.hear(b'2')?;
    for _ in 0..3 {
        send(child, libc::SIGUSR1, None).context("kill(SIGUSR1)")?;
    }
    say.step("kill(SIGUSR1) three times while the child blocks it");
    link.tell(b'g')?;
    link.hear(b'b')?;
    for v in 1..=3 {
        send(child, rt1, Some(v)).context("sigqueue(SIGRTMIN+1)")?;
    }
    say.step("sigqueue(SIGRTMIN+1) three times, with values 1, 2, 3, while the child blocks it");
    link.tell(b'g')?;
    link.hear(b'c')?;
    count.signals += 4;
    Ok(())
}

/// Step 3, the parent: SIGUSR2 while the child sits in read(), twice; the
/// second time data follows, for the restarted read to return.
fn eintr_and_restart(child: Pid, link: &mut Link, say: &Narrator, count: &mut Count) -> Result<()> {
    link.hear(b'3')?;
    // 200 ms: time for the child to be inside read() when the signal comes.
    sleep(Duration::from_millis(200));
    send(child, libc::SIGUSR2, None).context("kill(SIGUSR2)")?;
    say.step("the child is blocked in read(); kill(SIGUSR2) after 200 ms");
    link.hear(b'4')?;
    sleep(Duration::from_millis(200));
    send(child, libc::SIGUSR2, None).context("kill(SIGUSR2)")?;
    say.step("the child reinstalled the handler with SA_RESTART and reads again; kill(SIGUSR2), then data 200 ms later");
    sleep(Duration::from_millis(200));
    link.tell(b'd')?;
    link.hear(b'e')?;
    count.signals += 2;
    Ok(())
}

/// Step 4, the parent: nothing to send (the child's own timer fires); it
/// waits for the child's word that the timer interrupted its read.
fn alarm_timeout(link: &mut Link, count: &mut Count) -> Result<()> {
    link.hear(b'f')?;
    count.signals += 1;
    Ok(())
}

/// The child of steps 1 to 4: one handler for four signals, then each
/// step's half in turn.
fn handler_child(link: &mut Link, say: &Narrator) -> Result<()> {
    let mut records = Records::new()?;
    let rt1 = libc::SIGRTMIN() + 1;
    for signo in [libc::SIGUSR1, libc::SIGUSR2, rt1, libc::SIGALRM] {
        install(signo, 0, &[])?;
    }
    say.step("sigaction(SIGUSR1, SIGUSR2, SIGRTMIN+1, SIGALRM, SA_SIGINFO): the handler counts the signal and writes a record to a pipe");
    siginfo_and_nesting_child(link, &mut records, say)?;
    pending_and_queued_child(link, &mut records, say)?;
    eintr_and_restart_child(link, &mut records, say)?;
    alarm_timeout_child(link, &mut records, say)
}

/// Step 1, the child: who sent it (siginfo), and how two handlers nest.
fn siginfo_and_nesting_child(link: &mut Link, records: &mut Records, say: &Narrator) -> Result<()> {
    // Step 1: one signal
    link.tell(b'1')?;
    let r = records.next(PROMPTLY)?.context("SIGUSR1 did not arrive")?;
    say.step(format!("handled {}", describe(&r)));

    // Step 1: two signals pending at once, handlers that block only their own.
    let pair = two_at_once(link, records, say)?;
    explain_pair(say, &pair, false);
    // The same with sa_mask: while one handler runs, the other signal waits.
    let both = [libc::SIGUSR1, libc::SIGUSR2];
    for signo in both {
        install(signo, 0, &both)?;
    }
    say.step("sigaction(SIGUSR1 and SIGUSR2, sa_mask = {SIGUSR1, SIGUSR2}): now each handler blocks the other signal while it runs");
    let pair = two_at_once(link, records, say)?;
    explain_pair(say, &pair, true);
    for signo in both {
        install(signo, 0, &[])?;
    }
    link.tell(b'a')?;
    link.hear(b'h')?;

    Ok(())
}

/// Step 2, the child: a blocked standard signal coalesces; a real-time one queues.
fn pending_and_queued_child(link: &mut Link, records: &mut Records, say: &Narrator) -> Result<()> {
    let rt1 = libc::SIGRTMIN() + 1;
    // Step 2: a standard signal
    block(&[libc::SIGUSR1], SigmaskHow::SIG_BLOCK)?;
    say.step("sigprocmask(SIG_BLOCK, SIGUSR1)");
    link.tell(b'2')?;
    link.hear(b'g')?;
    say.step(format!(
        "sigpending: SIGUSR1 is {}",
        if pending(libc::SIGUSR1)? {
            "pending"
        } else {
            "NOT pending"
        }
    ));
    block(&[libc::SIGUSR1], SigmaskHow::SIG_UNBLOCK)?;
    let mut got = 0;
    while let Some(r) = records.next(Duration::from_millis(300))? {
        say.step(format!("after unblocking: {}", describe(&r)));
        got += 1;
    }
    say.step(format!("sent 3 times, handled {got} time(s): standard signals do not queue, a pending one is a single bit"));
    if got != 1 {
        bail!("expected SIGUSR1 once, got it {got} times");
    }
    // Step 2: a real-time signal
    block(&[rt1], SigmaskHow::SIG_BLOCK)?;
    link.tell(b'b')?;
    link.hear(b'g')?;
    say.step(format!(
        "sigpending: SIGRTMIN+1 is {}",
        if pending(rt1)? {
            "pending"
        } else {
            "NOT pending"
        }
    ));
    block(&[rt1], SigmaskHow::SIG_UNBLOCK)?;
    let mut values = Vec::new();
    while let Some(r) = records.next(Duration::from_millis(300))? {
        say.step(format!("after unblocking: {}", describe(&r)));
        values.push(r.value);
    }
    say.step(format!(
        "sent 3 times, handled {} times, values {values:?}: real-time signals queue, in order",
        values.len()
    ));
    if values != [1, 2, 3] {
        bail!("expected values [1, 2, 3], got {values:?}");
    }
    link.tell(b'c')?;

    Ok(())
}

/// Step 3, the child: read() interrupted (EINTR), then restarted (SA_RESTART).
fn eintr_and_restart_child(link: &mut Link, records: &mut Records, say: &Narrator) -> Result<()> {
    // Step 3: EINTR without SA_RESTART
    link.tell(b'3')?;
    let mut byte = [0u8];
    let start = Instant::now();
    // SAFETY: a plain read(2) into a 1-byte buffer; std's read would retry EINTR.
    let rc = unsafe { libc::read(link.from.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
    let errno = Errno::last();
    if rc != -1 || errno != Errno::EINTR {
        bail!("expected read() to fail with EINTR, got {rc} ({errno})");
    }
    records
        .next(PROMPTLY)?
        .context("the SIGUSR2 record is missing")?;
    say.step(format!(
        "read() → EINTR after {:.0} ms: the handler (no SA_RESTART) ran, and the call gave up",
        start.elapsed().as_secs_f64() * 1e3
    ));
    // Step 3: SA_RESTART
    install(libc::SIGUSR2, libc::SA_RESTART, &[])?;
    link.tell(b'4')?;
    let start = Instant::now();
    // SAFETY: as above.
    let rc = unsafe { libc::read(link.from.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
    if rc != 1 || byte[0] != b'd' {
        bail!(
            "expected the restarted read() to return the data, got {rc} ({})",
            Errno::last()
        );
    }
    let handled = records.next(Duration::from_millis(100))?.is_some();
    say.step(format!(
        "read() returned the data after {:.0} ms; the handler ran in between ({}), and SA_RESTART made the kernel resume the read",
        start.elapsed().as_secs_f64() * 1e3,
        if handled { "its record is here" } else { "record missing" }
    ));
    if !handled {
        bail!("the SIGUSR2 handler did not run during the restarted read");
    }
    link.tell(b'e')?;

    Ok(())
}

/// Step 4, the child: a timer signal bounds a read nobody will answer.
fn alarm_timeout_child(link: &mut Link, records: &mut Records, say: &Narrator) -> Result<()> {
    // Step 4: SIGALRM interrupts a read that would wait forever.
    let mut byte = [0u8];
    let timer = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: 0,
            tv_usec: 300_000,
        },
    };
    // SAFETY: a valid itimerval; the old value is not wanted.
    Errno::result(unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) })
        .context("setitimer")?;
    let start = Instant::now();
    // SAFETY: as above; nobody will write to the link now.
    let rc = unsafe { libc::read(link.from.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
    let errno = Errno::last();
    let alarm = records
        .next(PROMPTLY)?
        .context("the SIGALRM record is missing")?;
    say.step(format!(
        "setitimer(ITIMER_REAL, 300 ms), then a read() nobody will answer: {} after {:.0} ms ({})",
        if rc == -1 {
            format!("{errno}")
        } else {
            format!("returned {rc}")
        },
        start.elapsed().as_secs_f64() * 1e3,
        describe(&alarm)
    ));
    if rc != -1 || errno != Errno::EINTR {
        bail!("expected the timer to interrupt read() with EINTR");
    }
    link.tell(b'f')?;
    Ok(())
}

/// Step 1: block SIGUSR1 and SIGUSR2, let the parent send both, then
/// unblock both with one call, so that both are pending at the same moment:
/// what the kernel does next is the same on every run.
fn two_at_once(link: &mut Link, records: &mut Records, say: &Narrator) -> Result<[Record; 2]> {
    let both = [libc::SIGUSR1, libc::SIGUSR2];
    block(&both, SigmaskHow::SIG_BLOCK)?;
    link.tell(b'p')?;
    link.hear(b'g')?;
    if !(pending(libc::SIGUSR1)? && pending(libc::SIGUSR2)?) {
        bail!("expected SIGUSR1 and SIGUSR2 both pending");
    }
    block(&both, SigmaskHow::SIG_UNBLOCK)?;
    say.step("both pending; sigprocmask(SIG_UNBLOCK, SIGUSR1 SIGUSR2) in one call");
    let first = records.next(PROMPTLY)?.context("no handler ran")?;
    let second = records
        .next(PROMPTLY)?
        .context("only one of the two handlers ran")?;
    Ok([first, second])
}

/// Say what the two records of `two_at_once` show: which handler started
/// first, and whether one ran inside the other. Told from the records
/// (clock ticks and the interrupted code's mask), so it is true on any run.
fn explain_pair(say: &Narrator, pair: &[Record; 2], masked: bool) {
    let mut by_start = pair.to_vec();
    by_start.sort_by_key(|r| r.entered);
    let other = |signo| {
        if signo == libc::SIGUSR1 {
            libc::SIGUSR2
        } else {
            libc::SIGUSR1
        }
    };
    for r in &by_start {
        let o = other(r.signo);
        say.step(format!(
            "{}'s handler: started at tick {}, done at tick {}; {}",
            name(r.signo),
            r.entered,
            r.left,
            if r.interrupted_mask & bit(o) != 0 {
                format!(
                    "the code it interrupted had {} blocked: it ran on top of {}'s handler",
                    name(o),
                    name(o)
                )
            } else {
                "it interrupted the main code".to_string()
            }
        ));
    }
    let (first, second) = (&by_start[0], &by_start[1]);
    let on_top = first.interrupted_mask & bit(second.signo) != 0;
    let inside = second.interrupted_mask & bit(first.signo) != 0 && second.entered < first.left;
    let (f, s) = (name(first.signo), name(second.signo));
    let lesson = if on_top {
        format!(
            "{f}'s handler ran first, inside {s}'s. Both were pending when sigprocmask returned; the \
             kernel takes pending signals lowest number first, so it set up {s}'s handler frame \
             first (blocking only {s}), then, still on its way back to user mode, found {f} \
             pending and not blocked, and stacked {f}'s frame on top. The frame on top runs \
             first: {f}'s handler ran to its end, and its return (sigreturn) started {s}'s \
             handler. A signal that arrives while a handler runs interrupts it the same way."
        )
    } else if inside {
        format!(
            "{s} arrived while {f}'s handler was running and interrupted it: {s}'s handler \
             ran to its end inside {f}'s, which then went on."
        )
    } else if masked {
        format!(
            "one after the other: {f}'s handler first, then {s}'s. The kernel took {f} first \
             (lowest number first); {s} stayed pending, blocked by sa_mask, until {f}'s \
             handler returned and sigreturn restored the mask. Handlers that share data \
             should block each other like this. Lowest number first is also the order a \
             signalfd reads pending signals in (step 8)."
        )
    } else {
        format!(
            "one after the other this time: {f}'s handler first, then {s}'s; neither ran inside \
             the other."
        )
    };
    say.step(lesson);
}

/// Step 5: a child exits, stays a zombie until waitpid, announced by SIGCHLD.
fn zombies(say: &Narrator, count: &mut Count) -> Result<()> {
    let mut records = Records::new()?;
    install(libc::SIGCHLD, libc::SA_RESTART, &[])?;
    // SAFETY: single-threaded, as above.
    let child = match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => std::process::exit(7),
        ForkResult::Parent { child } => child,
    };
    let r = records.next(PROMPTLY)?.context("no SIGCHLD")?;
    count.signals += 1;
    say.step(format!(
        "fork() → pid {child}, which exits with status 7; {}",
        describe(&r)
    ));
    let state = proc_state(child);
    say.step(format!(
        "/proc/{child}/stat state: {}",
        match state {
            Some('Z') =>
                "Z (zombie): it has exited, but its exit status waits for the parent".to_string(),
            Some(s) => format!("{s}"),
            None => "gone".to_string(),
        }
    ));
    if state != Some('Z') {
        bail!("expected the exited child to be a zombie before waitpid");
    }
    let exit = wait_pid(child, PROMPTLY)?;
    say.step(format!(
        "waitpid({child}): it {exit}; /proc/{child}: {}",
        if proc_state(child).is_none() {
            "gone, reaped"
        } else {
            "still there?"
        }
    ));
    // Back to the default, so later children do not keep writing records.
    // SAFETY: SIG_DFL installs no handler of ours.
    unsafe { nix::sys::signal::signal(Signal::SIGCHLD, SigHandler::SigDfl) }
        .context("signal(SIGCHLD, SIG_DFL)")?;
    if exit != PeerExit::Exited(7) {
        bail!("expected exit status 7, got: {exit}");
    }
    Ok(())
}

/// Step 6: SIGKILL/SIGSTOP cannot be caught; SIGTERM can be, SIGKILL ends.
fn uncatchable(say: &Narrator) -> Result<()> {
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGKILL, Signal::SIGSTOP] {
        // SAFETY: the call is expected to fail; SIG_IGN runs no code of ours.
        match unsafe { sigaction(signal, &ignore) } {
            Err(Errno::EINVAL) => say.step(format!(
                "sigaction({signal}, SIG_IGN) → EINVAL: it cannot be caught, blocked or ignored"
            )),
            other => bail!("sigaction({signal}) should fail with EINVAL, got {other:?}"),
        }
    }
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        let (mut parent_side, mut child_side) = link_pair()?;
        // SAFETY: single-threaded, as above.
        let child = match unsafe { fork() }.context("fork()")? {
            ForkResult::Child => {
                drop(parent_side);
                std::process::exit(graceful_child(&mut child_side, &say.with_role("child")));
            }
            ForkResult::Parent { child } => child,
        };
        drop(child_side);
        parent_side.hear(b'r')?;
        kill(child, signal).with_context(|| format!("kill({signal})"))?;
        let exit = wait_pid(child, PROMPTLY)?;
        say.step(format!("kill({child}, {signal}): waitpid says it {exit}"));
        let expected = if signal == Signal::SIGTERM {
            PeerExit::Exited(0)
        } else {
            PeerExit::Killed(Signal::SIGKILL)
        };
        if exit != expected {
            bail!("after {signal}: expected the child to have {expected}, it {exit}");
        }
    }
    say.step("SIGTERM asks (the handler finished the work and exited 0); SIGKILL ends at once, no handler, no cleanup (WIFSIGNALED, WTERMSIG = SIGKILL)");
    Ok(())
}

/// A child with a SIGTERM handler that shuts down gracefully.
fn graceful_child(link: &mut Link, say: &Narrator) -> i32 {
    let mut records = match Records::new() {
        Ok(r) => r,
        Err(_) => return 1,
    };
    if install(libc::SIGTERM, 0, &[]).is_err() || link.tell(b'r').is_err() {
        return 1;
    }
    match records.next(PROMPTLY) {
        Ok(Some(r)) => {
            say.step(format!(
                "{}: finishing the current work, cleaning up, exiting 0",
                describe(&r)
            ));
            0
        }
        _ => 1,
    }
}

/// Step 7: real faults, caught by the CPU, reported by waitpid.
fn faults(say: &Narrator) -> Result<()> {
    for (signal, what) in [
        (Signal::SIGSEGV, "reads address 0"),
        (Signal::SIGFPE, "divides an integer by zero"),
    ] {
        // SAFETY: single-threaded, as above.
        let child = match unsafe { fork() }.context("fork()")? {
            ForkResult::Child => {
                if signal == Signal::SIGSEGV {
                    read_address_zero()
                } else {
                    divide_by_zero()
                }
                std::process::exit(0); // not reached if the fault happened
            }
            ForkResult::Parent { child } => child,
        };
        let exit = wait_pid(child, PROMPTLY)?;
        say.step(format!("a child {what}: waitpid says it {exit}"));
        if exit != PeerExit::Killed(signal) {
            bail!("expected {signal}, the child {exit}");
        }
    }
    if !cfg!(target_arch = "x86_64") {
        say.step("(not x86-64: the faults were raised with raise(), not by the CPU)");
    }
    Ok(())
}

/// Step 8: block the signals, then read them as records from a signalfd.
fn signalfd_step(say: &Narrator, count: &mut Count) -> Result<()> {
    let (child, mut parent_side) = fork_with_link(say, signalfd_child)?;
    parent_side.hear(b'r')?;
    let rt2 = libc::SIGRTMIN() + 2;
    send(child, libc::SIGUSR1, None).context("kill(SIGUSR1)")?;
    send(child, rt2, Some(42)).context("sigqueue(SIGRTMIN+2, 42)")?;
    send(child, libc::SIGTERM, None).context("kill(SIGTERM)")?;
    say.step("kill(SIGUSR1), sigqueue(SIGRTMIN+2, 42), kill(SIGTERM)");
    let exit = wait_pid(child, PROMPTLY)?;
    if !exit.success() {
        bail!("the signalfd child {exit}");
    }
    count.signals += 3;
    Ok(())
}

fn signalfd_child(link: &mut Link, say: &Narrator) -> Result<()> {
    let rt2 = libc::SIGRTMIN() + 2;
    let signals = [libc::SIGUSR1, rt2, libc::SIGTERM];
    // Blocked signals are not delivered to handlers; the signalfd reads
    // them from the pending set instead, one record per signal.
    block(&signals, SigmaskHow::SIG_BLOCK)?;
    let sfd = signalfd_of(&signals, SfdFlags::empty())?;
    say.step("sigprocmask(SIG_BLOCK) + signalfd(SIGUSR1, SIGRTMIN+2, SIGTERM): signals become readable records");
    link.tell(b'r')?;
    // Read only once all three are pending: the parent sends them one by
    // one, and a read before the last arrives would return them in the
    // order they came, not the kernel's order for what is pending.
    let deadline = Instant::now() + PROMPTLY;
    while !signals.iter().all(|&s| pending(s).unwrap_or(false)) {
        if Instant::now() > deadline {
            bail!("the three signals were not all pending within {PROMPTLY:?}");
        }
        sleep(Duration::from_millis(1));
    }
    let mut file = File::from(OwnedFd::from(sfd));
    let mut seen = Vec::new();
    while seen.len() < signals.len() {
        let Some(r) = read_signalfd(&mut file, PROMPTLY)? else {
            bail!("only {seen:?} arrived on the signalfd");
        };
        say.step(format!("read(signalfd) → {}", describe(&r)));
        seen.push(r.signo);
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    let numbers = seen
        .iter()
        .map(|&n| format!("{} ({n})", name(n)))
        .collect::<Vec<_>>()
        .join(", ");
    if seen == sorted {
        say.step(format!(
            "all three read as data in the order {numbers}: lowest signal number first, the \
             kernel's order for pending signals. Step 1's handlers started in that order too; \
             there SIGUSR2's handler ran first only because its frame was stacked on top of \
             SIGUSR1's. A signalfd runs no handler, so nothing nests: you read the kernel's order."
        ));
    } else {
        say.step(format!(
            "all three read as data, in the order {numbers} (not lowest number first this time)"
        ));
    }
    say.step("SIGTERM too, with no handler: a poll() loop over this fd and others needs none");
    Ok(())
}

/// How many queued signals step 9 sends to each child.
const FLOOD: i32 = 500;
/// Step 9's self-pipe: one page, so that it overflows on every run.
const SMALL_PIPE: libc::c_int = 4096;

/// Step 9: a flood of queued signals, once to a handler with a self-pipe,
/// once to a signalfd; neither child reads until the flood is over.
fn flood_step(say: &Narrator, count: &mut Count) -> Result<()> {
    let rt3 = libc::SIGRTMIN() + 3;
    // The flood waits in the kernel's queue until the child reads it, so a
    // per-user limit below it (plus room for the user's other processes)
    // could never be met: say so instead of waiting for a child that waits.
    let needed = FLOOD as libc::rlim_t + 100;
    if let Some(limit) = sigpending_rlimit().filter(|&l| l < needed) {
        bail!(
            "step 9 queues {FLOOD} signals to a child that reads none until they are all sent, \
             but RLIMIT_SIGPENDING is {limit} here (queued signals per user): raise it \
             (ulimit -i {needed}) and run again"
        );
    }
    for body in [flood_handler_child, flood_signalfd_child] {
        let (child, mut link) = fork_with_link(say, body)?;
        link.hear(b'r')?;
        let mut full = FullQueue::default();
        for v in 1..=FLOOD {
            send_retrying(child, rt3, Some(v), PROMPTLY, &mut full)
                .with_context(|| format!("sigqueue(SIGRTMIN+3, {v})"))?;
        }
        say.step(format!(
            "sigqueue({child}, SIGRTMIN+3) {FLOOD} times, values 1..={FLOOD}, as fast as it goes{}",
            if full.refusals > 0 {
                format!(" (EAGAIN {} times: the queue was full)", full.refusals)
            } else {
                String::new()
            }
        ));
        link.tell(b's')?;
        let exit = wait_pid(child, PROMPTLY)?;
        if !exit.success() {
            bail!("the flood child {exit}");
        }
        count.signals += FLOOD as u64;
    }
    Ok(())
}

fn flood_handler_child(link: &mut Link, say: &Narrator) -> Result<()> {
    let rt3 = libc::SIGRTMIN() + 3;
    let mut records = Records::with_pipe_size(Some(SMALL_PIPE))?;
    let capacity = records.capacity()?;
    install(rt3, libc::SA_RESTART, &[])?;
    say.step(format!(
        "a handler for SIGRTMIN+3 with a self-pipe of {SMALL_PIPE} bytes: room for {capacity} \
         records of {} bytes; this child reads none until the parent is done",
        size_of::<Record>()
    ));
    link.tell(b'r')?;
    link.hear(b's')?;
    let mut values = Vec::new();
    while let Some(r) = records.try_next()? {
        values.push(r.value);
    }
    let (ran, lost) = handled(rt3);
    say.step(format!(
        "the handler ran {ran} times (its atomic counter says so); {} records were in the pipe \
         (values {}..={}), {lost} did not fit and were dropped: who sent those and their values \
         are gone, only the count is left",
        values.len(),
        values.first().copied().unwrap_or(0),
        values.last().copied().unwrap_or(0),
    ));
    if ran != FLOOD as u64 || values.len() as u64 + lost != ran {
        bail!(
            "expected {FLOOD} runs = records + dropped, got {ran} runs, {} records, {lost} dropped",
            values.len()
        );
    }
    say.step(
        "a handler may not wait for room (it would stop the code it interrupted), so a full \
         self-pipe loses records. What a handler can always do is count: an atomic add per \
         signal never fails, and a loop that reads the counters (the pipe only to wake it) \
         misses nothing it counts",
    );
    Ok(())
}

fn flood_signalfd_child(link: &mut Link, say: &Narrator) -> Result<()> {
    let rt3 = libc::SIGRTMIN() + 3;
    block(&[rt3], SigmaskHow::SIG_BLOCK)?;
    // Non-blocking: read until the queue is empty, then stop.
    let sfd = signalfd_of(&[rt3], SfdFlags::SFD_NONBLOCK)?;
    say.step(
        "sigprocmask(SIG_BLOCK, SIGRTMIN+3) + signalfd: the signals wait in the kernel's queue; \
         this child reads none until the parent is done",
    );
    link.tell(b'r')?;
    link.hear(b's')?;
    let mut values = Vec::new();
    while let Some(info) = sfd.read_signal().context("read(signalfd)")? {
        values.push(info.ssi_int);
    }
    let in_order = values.iter().copied().eq(1..=FLOOD);
    say.step(format!(
        "read(signalfd) → {} records, values {}: every signal kept, with its sender and value",
        values.len(),
        if in_order {
            format!("1..={FLOOD} in order")
        } else {
            "NOT 1..N in order".to_string()
        }
    ));
    if !in_order {
        bail!("expected values 1..={FLOOD} in order");
    }
    say.step(format!(
        "the queue is the kernel's, bounded by RLIMIT_SIGPENDING ({} pending signals for this \
         user here): past it sigqueue fails with EAGAIN, so the sender is told and can wait \
         (signal-demo sender does) instead of a record vanishing. signalfd is the robust design",
        sigpending_limit()
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// Steps 10 to 14: waiting for a signal, SIGCHLD done right, SIGBUS, speed
// ---------------------------------------------------------------------------

/// The bound on a wait that would otherwise last for ever (steps 10, 14).
const BOUND: Duration = Duration::from_millis(300);

/// Step 10: a child checks a flag, then sleeps until the wake-up signal.
fn pause_race(say: &Narrator, count: &mut Count) -> Result<()> {
    let (child, link) = fork_with_link(say, pause_race_child)?;
    drop(link); // close(2): this step needs no word from the child
    let exit = wait_pid(child, PROMPTLY)?;
    if !exit.success() {
        bail!("the pause/sigsuspend child {exit}");
    }
    count.signals += 3;
    Ok(())
}

fn pause_race_child(_link: &mut Link, say: &Narrator) -> Result<()> {
    let _records = Records::new()?;
    install(libc::SIGUSR1, 0, &[])?;
    install(libc::SIGALRM, 0, &[])?;
    let me = Pid::this();
    let alarms = handled(libc::SIGALRM).0;

    // pause(): check, then sleep. The handler's counter is the flag.
    let woken = handled(libc::SIGUSR1).0;
    if handled(libc::SIGUSR1).0 != woken {
        bail!("the wake-up came before the check");
    }
    // The window between the check and pause(). Another process's signal
    // can land here on any run; this one lands here on every run, on
    // purpose: a signal sent to oneself, unblocked, is handled before kill()
    // returns.
    send(me, libc::SIGUSR1, None).context("kill(self, SIGUSR1)")?;
    let handled_in_window = handled(libc::SIGUSR1).0 == woken + 1;
    alarm_after(BOUND)?;
    let start = Instant::now();
    pause();
    let slept = start.elapsed();
    alarm_after(Duration::ZERO)?;
    let alarm_ended_it = handled(libc::SIGALRM).0 == alarms + 1;
    say.step(format!(
        "flag checked: no wake-up yet. In the window before pause(), kill(self, SIGUSR1): the \
         handler {} at once; then pause() slept {:.0} ms, until the {} ms SIGALRM bound {}: the \
         wake-up was lost (without the bound, pause() would sleep for ever)",
        if handled_in_window {
            "ran"
        } else {
            "did NOT run"
        },
        slept.as_secs_f64() * 1e3,
        BOUND.as_millis(),
        if alarm_ended_it {
            "ended it"
        } else {
            "(which did NOT end it)"
        }
    ));
    if !(handled_in_window && alarm_ended_it) {
        bail!("expected the wake-up handled before pause(), and pause() ended by SIGALRM");
    }

    // sigsuspend(): block first, check, then unblock-and-sleep in one call.
    let old = block_keeping_old(&[libc::SIGUSR1])?;
    let woken = handled(libc::SIGUSR1).0;
    if handled(libc::SIGUSR1).0 != woken {
        bail!("the wake-up came before the check");
    }
    // The same window, the same wake-up sent into it.
    send(me, libc::SIGUSR1, None).context("kill(self, SIGUSR1)")?;
    let waiting = pending(libc::SIGUSR1)? && handled(libc::SIGUSR1).0 == woken;
    alarm_after(BOUND)?;
    let start = Instant::now();
    suspend(&old)?; // the mask of before: SIGUSR1 not blocked
    let took = start.elapsed();
    alarm_after(Duration::ZERO)?;
    set_mask(&old)?;
    let woke_on_it = handled(libc::SIGUSR1).0 == woken + 1;
    let alarm_free = handled(libc::SIGALRM).0 == alarms + 1;
    say.step(format!(
        "sigprocmask(SIG_BLOCK, SIGUSR1), flag checked, the same kill(self, SIGUSR1) in the \
         window: {}; sigsuspend(mask without SIGUSR1) unblocked and slept in one step, so the \
         pending signal was delivered at once: it returned after {:.3} ms, {}",
        if waiting {
            "not handled, pending (blocked)"
        } else {
            "NOT pending"
        },
        took.as_secs_f64() * 1e3,
        if woke_on_it && alarm_free {
            "woken by the handler of that very SIGUSR1, no SIGALRM needed: no wake-up is lost"
        } else {
            "NOT by that SIGUSR1"
        }
    ));
    if !(waiting && woke_on_it && alarm_free) {
        bail!("expected sigsuspend to return on the pending SIGUSR1 without the SIGALRM bound");
    }
    Ok(())
}

/// Step 11: accept a blocked signal synchronously, with its siginfo.
fn wait_for_signal(say: &Narrator, count: &mut Count) -> Result<()> {
    let rt4 = libc::SIGRTMIN() + 4;
    let old = block_keeping_old(&[rt4])?;
    let result = (|| -> Result<()> {
        // SAFETY: single-threaded, as above.
        let child = match unsafe { fork() }.context("fork()")? {
            ForkResult::Child => {
                let parent = nix::unistd::getppid();
                let sent = send(parent, rt4, Some(77));
                std::process::exit(if sent.is_ok() { 0 } else { 1 });
            }
            ForkResult::Parent { child } => child,
        };
        let got = wait_info(&[rt4], PROMPTLY)?;
        let exit = wait_pid(child, PROMPTLY)?;
        let Some(r) = got else {
            bail!("no SIGRTMIN+4 from the child (pid {child}, which {exit})");
        };
        say.step(format!(
            "sigprocmask(SIG_BLOCK, SIGRTMIN+4); a child (pid {child}) sigqueues it to us; \
             sigtimedwait(SIGRTMIN+4, {} s) → {}: accepted synchronously, no handler ran, the \
             siginfo is the call's result",
            PROMPTLY.as_secs(),
            describe(&r)
        ));
        if r.signo != rt4 || r.pid != child.as_raw() || r.value != 77 {
            bail!("expected SIGRTMIN+4 from pid {child} with value 77");
        }
        count.signals += 1;
        let start = Instant::now();
        let none = wait_info(&[rt4], Duration::from_millis(200))?;
        say.step(format!(
            "sigtimedwait(SIGRTMIN+4, 200 ms) with nothing pending → {} after {:.0} ms. \
             sigwaitinfo is the same call without the limit; sigwaitinfo and a signalfd (step \
             8) both take blocked signals as data, in the order the code chooses",
            if none.is_none() {
                "EAGAIN".to_string()
            } else {
                "a signal?".to_string()
            },
            start.elapsed().as_secs_f64() * 1e3
        ));
        if none.is_some() {
            bail!("expected sigtimedwait to time out with EAGAIN");
        }
        Ok(())
    })();
    set_mask(&old)?;
    result
}

/// How many children step 12 starts at once.
const CHILDREN: u64 = 5;

/// Step 12: several children exit while SIGCHLD is pending: one handler
/// run, and its WNOHANG loop reaps them all. Then SIG_IGN: no zombie.
fn reaping(say: &Narrator, count: &mut Count) -> Result<()> {
    install_reaper()?;
    let (runs, reaped) = reaper_counts();
    let old = block_keeping_old(&[libc::SIGCHLD])?;
    let mut children = Vec::new();
    for code in 0..CHILDREN {
        // SAFETY: single-threaded, as above.
        match unsafe { fork() }.context("fork()")? {
            ForkResult::Child => std::process::exit(code as i32),
            ForkResult::Parent { child } => children.push(child),
        }
    }
    // Bounded: until every one of them has exited (is a zombie).
    let deadline = Instant::now() + PROMPTLY;
    while !children.iter().all(|&c| proc_state(c) == Some('Z')) {
        if Instant::now() >= deadline {
            set_mask(&old)?;
            bail!("the children did not all exit within {PROMPTLY:?}");
        }
        sleep(Duration::from_millis(5));
    }
    let one_pending = pending(libc::SIGCHLD)?;
    say.step(format!(
        "sigprocmask(SIG_BLOCK, SIGCHLD); {CHILDREN} children forked, and all {CHILDREN} have \
         exited (zombies in /proc); SIGCHLD is {}",
        if one_pending {
            "pending: one bit for five exits"
        } else {
            "NOT pending"
        }
    ));
    set_mask(&old)?; // the pending SIGCHLD is delivered before this returns
    let (runs_now, reaped_now) = reaper_counts();
    let (ran, took) = (runs_now - runs, reaped_now - reaped);
    let left = zombie_children();
    say.step(format!(
        "unblocked: the SIGCHLD handler ran {ran} time(s) for {CHILDREN} exits (standard \
         signals coalesce), and its waitpid(-1, WNOHANG) loop reaped {took}; zombies left: {}. \
         A handler that reaped one child per SIGCHLD would have left {} zombies",
        left.len(),
        CHILDREN - 1
    ));
    sigchld_disposition(SigHandler::SigDfl)?;
    if !(one_pending && ran == 1 && took == CHILDREN && left.is_empty()) {
        bail!("expected one SIGCHLD, {CHILDREN} reaped by its loop, no zombie");
    }
    count.signals += 1;

    // SIG_IGN on SIGCHLD: the kernel reaps at once.
    sigchld_disposition(SigHandler::SigIgn)?;
    let result = (|| -> Result<()> {
        // SAFETY: single-threaded, as above.
        let child = match unsafe { fork() }.context("fork()")? {
            ForkResult::Child => std::process::exit(3),
            ForkResult::Parent { child } => child,
        };
        let deadline = Instant::now() + PROMPTLY;
        while proc_state(child).is_some() {
            if Instant::now() >= deadline {
                bail!("child {child} still in /proc after {PROMPTLY:?}");
            }
            sleep(Duration::from_millis(5));
        }
        let waited = nix::sys::wait::waitpid(child, None);
        say.step(format!(
            "sigaction(SIGCHLD, SIG_IGN); a child (pid {child}) exits with status 3: no zombie, \
             /proc/{child} is gone at once, and waitpid({child}) → {}: the kernel reaped it, \
             its exit status is lost",
            match waited {
                Err(e) => format!("{e:?}"),
                Ok(s) => format!("{s:?}"),
            }
        ));
        if waited != Err(Errno::ECHILD) {
            bail!("expected waitpid to fail with ECHILD under SIG_IGN");
        }
        Ok(())
    })();
    sigchld_disposition(SigHandler::SigDfl)?;
    result
}

/// Step 13: SIGBUS from a mapping whose file shrank under it.
fn bus_error(say: &Narrator) -> Result<()> {
    // SAFETY: single-threaded, as above.
    let child = match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            let say = say.with_role("child");
            if let Err(e) = touch_past_the_end(&say) {
                say.step(format!("error: {e:#}"));
                std::process::exit(1);
            }
            std::process::exit(0); // not reached if the fault happened
        }
        ForkResult::Parent { child } => child,
    };
    let exit = wait_pid(child, PROMPTLY)?;
    say.step(format!(
        "the child touched its mapping past the file's new end: waitpid says it {exit}. SIGSEGV \
         is an address with no mapping; SIGBUS is a mapping with no file page behind it (the \
         trap of every shared-memory reader whose segment is truncated: shm-demo, memfd-demo)"
    ));
    if exit != PeerExit::Killed(Signal::SIGBUS) {
        bail!("expected SIGBUS, the child {exit}");
    }
    Ok(())
}

/// Step 14's round trips.
const ROUND_TRIPS: u64 = 10_000;

/// Step 14: signal ping-pong (TLPI's sig_speed_sigsuspend): each side
/// blocks SIGUSR1 and waits for it in sigsuspend, then sends it back.
fn ping_pong(say: &Narrator, count: &mut Count) -> Result<()> {
    install(libc::SIGUSR1, 0, &[])?;
    install(libc::SIGALRM, 0, &[])?;
    // Blocked before fork, so the child inherits the mask and no reply can
    // come before we wait for it: it stays pending until sigsuspend.
    let old = block_keeping_old(&[libc::SIGUSR1])?;
    let result = (|| -> Result<()> {
        let (child, mut link) = fork_with_link(say, pong_child)?;
        link.hear(b'r')?;
        let alarms = handled(libc::SIGALRM).0;
        let base = handled(libc::SIGUSR1).0;
        // The bound: if the child stops answering, SIGALRM ends our wait.
        alarm_after(PROMPTLY)?;
        let start = Instant::now();
        for trip in 1..=ROUND_TRIPS {
            send(child, libc::SIGUSR1, None).context("kill(child, SIGUSR1)")?;
            while handled(libc::SIGUSR1).0 < base + trip {
                if handled(libc::SIGALRM).0 != alarms {
                    bail!("no answer from the child within {PROMPTLY:?} (round trip {trip})");
                }
                suspend(&old)?;
            }
        }
        let took = start.elapsed();
        alarm_after(Duration::ZERO)?;
        drop(link); // close(2)
        let exit = wait_pid(child, PROMPTLY)?;
        if !exit.success() {
            bail!("the ping-pong child {exit}");
        }
        say.step(format!(
            "{ROUND_TRIPS} round trips of SIGUSR1 (kill, then sigsuspend for the reply) in {:.0} \
             ms: about {:.0} round trips per second on this run (a narrated figure, not a \
             benchmark: each trip is two signals and four system calls, kill and sigsuspend on \
             each side)",
            took.as_secs_f64() * 1e3,
            ROUND_TRIPS as f64 / took.as_secs_f64().max(1e-9)
        ));
        count.signals += 2 * ROUND_TRIPS;
        Ok(())
    })();
    alarm_after(Duration::ZERO)?; // also when the loop gave up early
    set_mask(&old)?;
    // Back to the default actions: the tour has no handler for them now.
    default_action(libc::SIGUSR1)?;
    default_action(libc::SIGALRM)?;
    result
}

fn pong_child(link: &mut Link, _say: &Narrator) -> Result<()> {
    // The handler and the blocked SIGUSR1 came with fork; the parent is
    // the one to answer. A bound, should the parent vanish: SIGALRM's
    // handler ends a wait, and the loop gives up.
    let parent = nix::unistd::getppid();
    // SAFETY: sigprocmask with a null new set only reads the mask.
    let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer; SIG_BLOCK with no set changes nothing.
    Errno::result(unsafe { libc::sigprocmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask) })
        .context("sigprocmask")?;
    // SAFETY: `mask` is the valid set just read.
    unsafe { libc::sigdelset(&mut mask, libc::SIGUSR1) };
    let alarms = handled(libc::SIGALRM).0;
    let base = handled(libc::SIGUSR1).0;
    alarm_after(PROMPTLY)?;
    link.tell(b'r')?;
    for trip in 1..=ROUND_TRIPS {
        while handled(libc::SIGUSR1).0 < base + trip {
            if handled(libc::SIGALRM).0 != alarms {
                bail!("no ping from the parent within {PROMPTLY:?} (round trip {trip})");
            }
            suspend(&mask)?;
        }
        send(parent, libc::SIGUSR1, None).context("kill(parent, SIGUSR1)")?;
    }
    Ok(())
}

/// Step 15: a pidfd names one process; a pid names whoever has it now.
fn pidfds(say: &Narrator, count: &mut Count) -> Result<()> {
    // A child that would wait PROMPTLY for a word that never comes.
    let (child, link) = fork_with_link(say, |link, _say| {
        let _ = link.hear(b'x');
        Ok(())
    })?;
    let pidfd = pidfd_open(child)?;
    let alive = !pidfd_exited(&pidfd, Duration::ZERO)?;
    pidfd_send_signal(&pidfd, libc::SIGTERM).context("pidfd_send_signal(SIGTERM)")?;
    count.signals += 1;
    let exited = pidfd_exited(&pidfd, PROMPTLY)?;
    say.step(format!(
        "pidfd_open({child}) → a descriptor for that process; poll: {}; \
         pidfd_send_signal(pidfd, SIGTERM); poll(pidfd, POLLIN) → {}",
        if alive {
            "not readable, it runs"
        } else {
            "readable already?"
        },
        if exited {
            "readable: it has exited (the parent learns it without SIGCHLD or a blocking waitpid)"
        } else {
            "NOT readable"
        }
    ));
    let exit = wait_pid(child, PROMPTLY)?;
    drop(link); // close(2)
    let after = pidfd_send_signal(&pidfd, libc::SIGTERM);
    say.step(format!(
        "waitpid({child}): it {exit}; pidfd_send_signal on the same pidfd now → {}: it names \
         that process for good, which is gone",
        match after {
            Err(e) => format!("{e:?}"),
            Ok(()) => "success?".to_string(),
        }
    ));
    drop(pidfd); // close(2)
    if !(alive && exited && exit == PeerExit::Killed(Signal::SIGTERM) && after == Err(Errno::ESRCH))
    {
        bail!("expected: alive, then readable after SIGTERM, then ESRCH after waitpid");
    }

    // The pid-reuse race, made to happen: in a new pid namespace, where
    // this demo's pids are the only ones and ns_last_pid says which comes
    // next. Needs root (CAP_SYS_ADMIN); without, it is told in words.
    // SAFETY: single-threaded, as above.
    let helper = match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => std::process::exit(in_new_pid_namespace(&say.with_role("child"))),
        ForkResult::Parent { child } => child,
    };
    match wait_pid(helper, PROMPTLY)? {
        PeerExit::Exited(0) => Ok(()),
        PeerExit::Exited(3) => {
            say.step(
                "(not shown here: a new pid namespace and its ns_last_pid need root. The race \
                 in words: a process exits and is reaped; the kernel hands its pid to the next \
                 fork; kill(pid, 0) and kill(pid, SIGTERM) now reach the newcomer. A pidfd \
                 opened before the exit answers ESRCH instead: it can never reach a newcomer)",
            );
            Ok(())
        }
        other => bail!("the pid-reuse child {other}"),
    }
}

/// In a forked helper: unshare(CLONE_NEWPID), so that its next child is
/// pid 1 of a new namespace; that child shows a pid reused. Returns the
/// exit status: 0 shown, 3 not permitted (no namespace, or ns_last_pid
/// refused), 1 failed.
fn in_new_pid_namespace(say: &Narrator) -> i32 {
    // SAFETY: unshare takes flags only.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return 3;
    }
    // SAFETY: single-threaded, as above.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => std::process::exit(match reuse_a_pid(say) {
            Ok(true) => 0,
            Ok(false) => 3,
            Err(e) => {
                say.step(format!("error: {e:#}"));
                1
            }
        }),
        Ok(ForkResult::Parent { child }) => match wait_pid(child, PROMPTLY) {
            Ok(PeerExit::Exited(code)) => code,
            _ => 1,
        },
        Err(_) => 1,
    }
}

/// Pid 1 of a new pid namespace (when it exits, the kernel kills every
/// process left in it): fork A, open a pidfd on it, let it exit and reap
/// it; set ns_last_pid so the next fork gets A's number; fork B.
/// Ok(false): not permitted to set ns_last_pid.
fn reuse_a_pid(say: &Narrator) -> Result<bool> {
    // SAFETY: single-threaded, as above.
    let a = match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => std::process::exit(0),
        ForkResult::Parent { child } => child,
    };
    let pidfd_a = pidfd_open(a)?;
    let exit = wait_pid(a, PROMPTLY)?;
    // The next pid this namespace hands out is ns_last_pid + 1. Refused
    // without CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE): then say so.
    if std::fs::write(
        "/proc/sys/kernel/ns_last_pid",
        format!("{}", a.as_raw() - 1),
    )
    .is_err()
    {
        return Ok(false);
    }
    // SAFETY: single-threaded, as above.
    let b = match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            // B waits to be killed; bounded, should that not come.
            sleep(PROMPTLY);
            std::process::exit(0);
        }
        ForkResult::Parent { child } => child,
    };
    let probe = send(a, 0, None);
    let through_pidfd = pidfd_send_signal(&pidfd_a, libc::SIGKILL);
    say.step(format!(
        "in a new pid namespace (unshare(CLONE_NEWPID), I am its pid 1): process A = pid {a} \
         {exit}, reaped; ns_last_pid = {}, then fork → B = pid {b}{}",
        a.as_raw() - 1,
        if a == b {
            ": A's number, reused"
        } else {
            ": NOT A's number"
        }
    ));
    say.step(format!(
        "kill({a}, 0) → {}: it answers for B, not the A you meant; pidfd_send_signal(A's pidfd, \
         SIGKILL) → {}: the pidfd cannot reach the newcomer",
        match probe {
            Ok(()) => "success".to_string(),
            Err(e) => format!("{e:?}"),
        },
        match through_pidfd {
            Ok(()) => "success?!".to_string(),
            Err(e) => format!("{e:?}"),
        }
    ));
    kill(b, Signal::SIGKILL).context("kill(B)")?;
    let _ = wait_pid(b, PROMPTLY)?;
    if !(a == b && probe.is_ok() && through_pidfd == Err(Errno::ESRCH)) {
        bail!("expected pid {a} reused by B, kill(pid, 0) to succeed and the pidfd to say ESRCH");
    }
    Ok(true)
}
