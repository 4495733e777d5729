//! # signal-demo: signals, from handlers to signalfd
//!
//! A signal is the kernel's asynchronous notification to a process: a
//! number, a little information about who sent it (and, for real-time
//! signals, one integer), delivered between any two instructions. Its rules
//! are the ones students trip over:
//!
//! | rule              | what happens                                                   |
//! |-------------------|----------------------------------------------------------------|
//! | handler           | runs in the middle of whatever the process was doing: only async-signal-safe calls (an atomic store, `write` to a pipe), never `println!`, locks or allocation |
//! | blocked (masked)  | the signal waits as *pending* until unblocked                  |
//! | standard signals  | do not queue: sent 3 times while blocked, delivered once       |
//! | real-time signals | `SIGRTMIN..SIGRTMAX` queue, in order, each with its value (`sigqueue`) |
//! | blocking calls    | interrupted with `EINTR`, unless the handler has `SA_RESTART`  |
//! | SIGKILL, SIGSTOP  | cannot be caught, blocked or ignored                           |
//!
//! ## Run it
//!
//! ```text
//! cargo run -p signal-demo                       # the tour, eight steps
//! cargo run -p signal-demo -- receiver           # terminal 1: prints its pid
//! kill -USR1 PID                                 # terminal 2, or:
//! cargo run -p signal-demo -- sender --pid PID --signal RTMIN+1 --value 7 --count 3
//! ```
//!
//! ## What to look for
//!
//! - who sent each signal (`si_pid`) and how (`si_code`: kill, sigqueue, kernel);
//! - 3 sends of SIGUSR1 while blocked arriving once; 3 of SIGRTMIN+1 arriving 3 times;
//! - `read` failing with `EINTR`, then the same read restarted with `SA_RESTART`;
//! - a zombie in `/proc/PID/stat` until `waitpid`;
//! - SIGSEGV and SIGFPE from real faults, reported by `waitpid`;
//! - the same signals read as records from a `signalfd`.
//!
//! Uses `common` modules: `cli`, `error`, `peer`, `report`.

use std::ffi::c_void;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cli::{Args, MAX_COUNT};
use common::error::{self, usage};
use common::peer::{PeerExit, wait_pid};
use common::report::{Narrator, Stream, Summary};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{
    SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, kill, sigaction,
};
use nix::sys::signalfd::SignalFd;
use nix::unistd::{ForkResult, Pid, fork, pipe2};

const USAGE: &str = "\
signal-demo: signals, from handlers to signalfd

USAGE:
    signal-demo [--quiet]
        The tour with forked children: SA_SIGINFO handlers, blocking and
        pending, queued real-time signals, EINTR vs SA_RESTART, a timer,
        SIGCHLD and zombies, what cannot be caught, hardware faults, signalfd.
    signal-demo receiver [--count N]
        Print this process's pid, then one line per signal received. SIGINT and
        SIGTERM print the summary and exit 0; --count N exits after N signals.
    signal-demo sender --pid PID --signal SIG [--value V] [--count N]
        Send SIG to PID N times (default 1): with kill(2), or sigqueue(3) and the
        integer V when --value is given. SIG is USR1, SIGUSR1, RTMIN+2, RTMAX-1
        or a number.

OPTIONS:
    --pid PID       the process to signal (1 or more)
    --signal SIG    the signal (see above)
    --value V       an integer sent along with sigqueue(3)
    --count N       signals to send, or to receive before exiting
    --quiet         the tour: only the steps and the summary
    -h, --help      this text

EXIT STATUS: 0 success, 1 runtime error (ESRCH: no such process; EPERM: not
permitted; an expectation of the tour not met), 2 bad command line.
";

/// How long the tour waits for any one thing a child should do promptly.
const PROMPTLY: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    error::run("signal-demo", run)
}

// ---------------------------------------------------------------------------
// The handler: it only reads the siginfo and writes one record to a pipe
// ---------------------------------------------------------------------------

/// The write end of the self-pipe, for the handler (-1: none yet). A
/// handler may touch only lock-free atomics and async-signal-safe calls.
static RECORD_FD: AtomicI32 = AtomicI32::new(-1);

/// What the handler learned about one signal.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Record {
    signo: i32,
    /// si_code: who or what sent it (SI_USER = kill, SI_QUEUE = sigqueue, ...).
    code: i32,
    pid: i32,
    uid: u32,
    /// The sigqueue value, meaningful when code == SI_QUEUE.
    value: i32,
}

/// The SA_SIGINFO handler. Why not `println!` here: the signal may arrive
/// while the main code holds stdout's lock (deadlock) or is inside malloc
/// (corrupted heap). `write(2)` of a small record to a pipe is
/// async-signal-safe and atomic; the main loop prints it later.
extern "C" fn on_signal(signo: libc::c_int, info: *mut libc::siginfo_t, _context: *mut c_void) {
    let fd = RECORD_FD.load(Ordering::Relaxed);
    if fd < 0 || info.is_null() {
        return;
    }
    // SAFETY: errno is thread-local; save it, since write() may change it
    // under the code we interrupted.
    let saved_errno = unsafe { *libc::__errno_location() };
    // SAFETY: for an SA_SIGINFO handler the kernel passes a valid siginfo_t.
    // The union fields read here are plain integers for every si_code.
    let record = unsafe {
        let info = &*info;
        Record {
            signo,
            code: info.si_code,
            pid: info.si_pid(),
            uid: info.si_uid(),
            value: if info.si_code == libc::SI_QUEUE {
                info.si_int()
            } else {
                0
            },
        }
    };
    // SAFETY: write is async-signal-safe; `record` is plain data of the
    // given size. The write end is non-blocking: if the pipe is full the
    // record is dropped rather than the handler blocking.
    unsafe {
        libc::write(fd, (&record as *const Record).cast(), size_of::<Record>());
        *libc::__errno_location() = saved_errno;
    }
}

/// Install `on_signal` for `signo` with SA_SIGINFO, and SA_RESTART if asked.
/// Raw `libc::sigaction`, because nix's `Signal` has no real-time signals.
fn install(signo: libc::c_int, restart: bool) -> Result<()> {
    // SAFETY: an all-zero sigaction is a valid starting point (empty mask,
    // no flags); we set the handler and flags below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void) = on_signal;
    action.sa_sigaction = handler as libc::sighandler_t;
    action.sa_flags = libc::SA_SIGINFO | if restart { libc::SA_RESTART } else { 0 };
    // SAFETY: `action` is initialised; `on_signal` is async-signal-safe.
    let rc = unsafe { libc::sigaction(signo, &action, std::ptr::null_mut()) };
    Errno::result(rc).with_context(|| format!("sigaction({})", name(signo)))?;
    Ok(())
}

/// The pipe the handler writes records into and the main code reads.
struct Records {
    read: File,
    _write: OwnedFd,
}

impl Records {
    fn new() -> Result<Records> {
        let (read, write) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
        fcntl(write.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).context("fcntl(O_NONBLOCK)")?;
        RECORD_FD.store(write.as_raw_fd(), Ordering::Relaxed);
        Ok(Records {
            read: File::from(read),
            _write: write,
        })
    }

    /// The next record, or None if none arrives within `timeout`.
    fn next(&mut self, timeout: Duration) -> Result<Option<Record>> {
        if !readable(&self.read, timeout)? {
            return Ok(None);
        }
        let mut bytes = [0u8; size_of::<Record>()];
        // A record is written with one write() of less than PIPE_BUF bytes,
        // so it is read whole.
        read_retrying(&mut self.read, &mut bytes)?;
        // SAFETY: Record is repr(C) plain integers; every bit pattern is valid.
        Ok(Some(unsafe {
            std::mem::transmute::<[u8; size_of::<Record>()], Record>(bytes)
        }))
    }
}

/// Wait until `file` has data (or EOF), at most `timeout`.
fn readable(file: &File, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms =
            PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::NONE);
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) if left.is_zero() => return Ok(false),
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue, // a handler ran; its record is in the pipe
            Err(e) => return Err(e).context("poll"),
        }
    }
}

fn read_retrying(file: &mut File, buf: &mut [u8]) -> Result<()> {
    loop {
        match file.read_exact(buf) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("read"),
        }
    }
}

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

fn name(signo: libc::c_int) -> String {
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    if (min..=max).contains(&signo) {
        return if signo == min {
            "SIGRTMIN".into()
        } else {
            format!("SIGRTMIN+{}", signo - min)
        };
    }
    Signal::try_from(signo).map_or(format!("signal {signo}"), |s| s.as_str().to_string())
}

/// Where a signal came from, from its si_code.
fn origin(signo: i32, code: i32) -> &'static str {
    if signo == libc::SIGCHLD {
        return match code {
            libc::CLD_EXITED => "a child that exited (CLD_EXITED)",
            libc::CLD_KILLED => "a child killed by a signal (CLD_KILLED)",
            libc::CLD_DUMPED => "a child that dumped core (CLD_DUMPED)",
            _ => "a child that stopped or continued",
        };
    }
    match code {
        libc::SI_USER => "kill (SI_USER)",
        libc::SI_QUEUE => "sigqueue (SI_QUEUE)",
        libc::SI_TIMER => "a POSIX timer (SI_TIMER)",
        libc::SI_MESGQ => "a message queue (SI_MESGQ)",
        libc::SI_TKILL => "tkill/raise (SI_TKILL)",
        libc::SI_KERNEL => "the kernel (SI_KERNEL): a terminal key or a timer",
        _ => "the kernel, for a reason of its own",
    }
}

fn describe(r: &Record) -> String {
    let mut line = format!(
        "{} ({}) from pid {} uid {}, via {}",
        name(r.signo),
        r.signo,
        r.pid,
        r.uid,
        origin(r.signo, r.code)
    );
    if r.code == libc::SI_QUEUE {
        line.push_str(&format!(", value {}", r.value));
    }
    line
}

/// "USR1", "SIGUSR1", "RTMIN+2", "RTMAX-1" or a number.
fn parse_signal(text: &str) -> Result<libc::c_int> {
    let bad = || {
        usage(format!(
            "--signal {text:?}: not a signal; try USR1, SIGTERM, RTMIN+2 or a number"
        ))
    };
    let upper = text.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    let rt = |base: libc::c_int, rest: &str, sign: i32| -> Result<libc::c_int> {
        let n: i32 = if rest.is_empty() {
            0
        } else {
            rest[1..].parse().map_err(|_| bad())?
        };
        let signo = base + sign * n;
        if !(min..=max).contains(&signo) {
            return Err(usage(format!(
                "--signal {text}: out of range; real-time signals run from RTMIN ({min}) to RTMAX ({max})"
            )));
        }
        Ok(signo)
    };
    if let Some(rest) = bare.strip_prefix("RTMIN") {
        if !rest.is_empty() && !rest.starts_with('+') {
            return Err(bad());
        }
        return rt(min, rest, 1);
    }
    if let Some(rest) = bare.strip_prefix("RTMAX") {
        if !rest.is_empty() && !rest.starts_with('-') {
            return Err(bad());
        }
        return rt(max, rest, -1);
    }
    if let Ok(n) = text.parse::<i32>() {
        if (1..=max).contains(&n) {
            return Ok(n);
        }
        return Err(usage(format!(
            "--signal {n}: signal numbers run from 1 to {max}"
        )));
    }
    format!("SIG{bare}")
        .parse::<Signal>()
        .map(|s| s as libc::c_int)
        .map_err(|_| bad())
}

// ---------------------------------------------------------------------------
// Parent ↔ child: two pipes to say "ready" and "go"
// ---------------------------------------------------------------------------

/// One end of a two-way byte channel between the tour's parent and child.
struct Link {
    to: File,
    from: File,
}

/// Make the two pipes before fork; each side then takes its `Link`.
fn link_pair() -> Result<(Link, Link)> {
    let (a_read, a_write) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    let (b_read, b_write) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    Ok((
        Link {
            to: File::from(a_write),
            from: File::from(b_read),
        },
        Link {
            to: File::from(b_write),
            from: File::from(a_read),
        },
    ))
}

impl Link {
    fn tell(&mut self, tag: u8) -> Result<()> {
        self.to.write_all(&[tag]).context("write(link)")
    }

    /// Wait for `tag`, at most PROMPTLY.
    fn hear(&mut self, tag: u8) -> Result<()> {
        if !readable(&self.from, PROMPTLY)? {
            bail!(
                "no word from the other process within {PROMPTLY:?} (waiting for {:?})",
                tag as char
            );
        }
        let mut got = [0u8];
        read_retrying(&mut self.from, &mut got).context("the other process closed the link")?;
        if got[0] != tag {
            bail!(
                "expected {:?} from the other process, got {:?}",
                tag as char,
                got[0] as char
            );
        }
        Ok(())
    }
}

/// Send `signo` with kill(2), or sigqueue(3) carrying `value`.
fn send(pid: Pid, signo: libc::c_int, value: Option<i32>) -> nix::Result<()> {
    match value {
        None => {
            // SAFETY: kill takes no pointers.
            Errno::result(unsafe { libc::kill(pid.as_raw(), signo) }).map(drop)
        }
        Some(v) => {
            // The integer travels in the pointer-sized union sigval.
            let value = libc::sigval {
                sival_ptr: v as isize as *mut c_void,
            };
            // SAFETY: sigqueue takes the sigval by value.
            Errno::result(unsafe { libc::sigqueue(pid.as_raw(), signo, value) }).map(drop)
        }
    }
}

fn block(signos: &[libc::c_int], how: SigmaskHow) -> Result<()> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; signal numbers are in range.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in signos {
            libc::sigaddset(&mut set, s);
        }
    }
    let how = match how {
        SigmaskHow::SIG_BLOCK => libc::SIG_BLOCK,
        SigmaskHow::SIG_UNBLOCK => libc::SIG_UNBLOCK,
        _ => libc::SIG_SETMASK,
    };
    // SAFETY: valid set; the old mask is not wanted.
    Errno::result(unsafe { libc::sigprocmask(how, &set, std::ptr::null_mut()) })
        .context("sigprocmask")?;
    Ok(())
}

fn pending(signo: libc::c_int) -> Result<bool> {
    // SAFETY: sigpending fills the set we pass; sigismember reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        Errno::result(libc::sigpending(&mut set)).context("sigpending")?;
        Ok(libc::sigismember(&set, signo) == 1)
    }
}

// ---------------------------------------------------------------------------
// The tour
// ---------------------------------------------------------------------------

/// What the tour counts for its summary.
#[derive(Default)]
struct Count {
    signals: u64,
}

fn tour(quiet: bool) -> Result<()> {
    let say = Narrator::new("parent", quiet, Stream::Stdout);
    let start = Instant::now();
    let mut count = Count::default();
    say.line(format!(
        "signal-demo: a tour of signals (parent pid {})",
        std::process::id()
    ));

    // Steps 1 to 4 run in one child that installs handlers; we signal it.
    let (child, mut to_child) = fork_with_link(&say, handler_child)?;
    let outcome = handler_parent(child, &mut to_child, &say, &mut count);
    drop(to_child); // the child sees EOF if we stopped early, and ends
    let exit = wait_pid(child, PROMPTLY)?;
    outcome?;
    if !exit.success() {
        bail!("the handler child (pid {child}) {exit}");
    }

    say.line("\n== 5. SIGCHLD and zombies ==");
    zombies(&say, &mut count)?;
    say.line("\n== 6. What cannot be caught; SIGTERM vs SIGKILL ==");
    uncatchable(&say)?;
    say.line("\n== 7. Hardware faults: SIGSEGV and SIGFPE ==");
    faults(&say)?;
    say.line("\n== 8. signalfd: signals read from a file descriptor ==");
    signalfd_step(&say, &mut count)?;

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

/// Fork a child that runs `body` (as "[child]") with its end of a new
/// link and exits 0 or 1; returns its pid and our end.
fn fork_with_link(
    say: &Narrator,
    body: fn(&mut Link, &Narrator) -> Result<()>,
) -> Result<(Pid, Link)> {
    let (parent_side, mut child_side) = link_pair()?;
    // SAFETY: signal-demo is single-threaded: the child may call anything.
    match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            drop(parent_side);
            let say = say.with_role("child");
            let code = match body(&mut child_side, &say) {
                Ok(()) => 0,
                Err(e) => {
                    say.step(format!("error: {e:#}"));
                    1
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(child_side);
            Ok((child, parent_side))
        }
    }
}

/// The parent's half of steps 1–4.
fn handler_parent(child: Pid, link: &mut Link, say: &Narrator, count: &mut Count) -> Result<()> {
    let rt1 = libc::SIGRTMIN() + 1;
    say.line("\n== 1. sigaction with SA_SIGINFO: who sent it, and how ==");
    link.hear(b'1')?;
    send(child, libc::SIGUSR1, None).context("kill(SIGUSR1)")?;
    send(child, libc::SIGUSR2, None).context("kill(SIGUSR2)")?;
    say.step(format!("kill({child}, SIGUSR1), kill({child}, SIGUSR2)"));
    link.hear(b'a')?;
    count.signals += 2;

    say.line("\n== 2. Blocked signals wait as pending; only real-time signals queue ==");
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

    say.line("\n== 3. A blocking read interrupted: EINTR, or restarted with SA_RESTART ==");
    link.hear(b'3')?;
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

    say.line("\n== 4. SIGALRM as a timeout on a blocking call ==");
    link.hear(b'f')?;
    count.signals += 1;
    Ok(())
}

/// The child's half of steps 1–4.
fn handler_child(link: &mut Link, say: &Narrator) -> Result<()> {
    let mut records = Records::new()?;
    let rt1 = libc::SIGRTMIN() + 1;
    for signo in [libc::SIGUSR1, libc::SIGUSR2, rt1, libc::SIGALRM] {
        install(signo, false)?;
    }
    say.step("sigaction(SIGUSR1, SIGUSR2, SIGRTMIN+1, SIGALRM, SA_SIGINFO): the handler writes a record to a pipe");

    // Step 1
    link.tell(b'1')?;
    for _ in 0..2 {
        let r = records.next(PROMPTLY)?.context("a signal did not arrive")?;
        say.step(format!("handled {}", describe(&r)));
    }
    link.tell(b'a')?;

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
    install(libc::SIGUSR2, true)?;
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

    // Step 4: SIGALRM interrupts a read that would wait forever.
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

fn proc_state(pid: Pid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Our children in state Z, from /proc/*/stat (field 4 is the parent pid).
fn zombie_children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let mut fields = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace())
                .into_iter()
                .flatten();
            let state = fields.next();
            let ppid = fields.next();
            state == Some("Z") && ppid == Some(me.as_str())
        })
        .collect()
}

/// Step 5: a child exits, stays a zombie until waitpid, announced by SIGCHLD.
fn zombies(say: &Narrator, count: &mut Count) -> Result<()> {
    let mut records = Records::new()?;
    install(libc::SIGCHLD, true)?;
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
    if install(libc::SIGTERM, false).is_err() || link.tell(b'r').is_err() {
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

/// Load from address 0, in assembly: a null read in Rust would be undefined
/// behaviour the compiler may remove; the CPU's page fault is what we want.
fn read_address_zero() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: deliberately faults; this child process dies of SIGSEGV here.
    unsafe {
        std::arch::asm!("mov {v}, qword ptr [{a}]", a = in(reg) 0usize, v = out(reg) _, options(nostack, readonly));
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: raise takes no pointers.
    unsafe {
        libc::raise(libc::SIGSEGV);
    }
}

/// Divide by zero with the CPU's `idiv`: Rust's own `/` checks for zero and
/// panics before the CPU could trap.
fn divide_by_zero() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: deliberately traps (#DE); this child process dies of SIGFPE.
    unsafe {
        std::arch::asm!(
            "cqo",
            "idiv {d}",
            d = in(reg) 0i64,
            inout("rax") 1i64 => _,
            out("rdx") _,
            options(nostack, nomem)
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: raise takes no pointers.
    unsafe {
        libc::raise(libc::SIGFPE);
    }
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
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGUSR1);
    mask.add(Signal::SIGTERM);
    // SigSet has no real-time signals: add SIGRTMIN+2 through the raw set.
    let mut raw: libc::sigset_t = *mask.as_ref();
    // SAFETY: `raw` is a valid sigset_t copied from `mask`.
    unsafe { libc::sigaddset(&mut raw, rt2) };
    // SAFETY: `raw` came from a valid SigSet plus one valid signal number.
    let mask = unsafe { SigSet::from_sigset_t_unchecked(raw) };
    let sfd = SignalFd::new(&mask).context("signalfd")?;
    say.step("sigprocmask(SIG_BLOCK) + signalfd(SIGUSR1, SIGRTMIN+2, SIGTERM): signals become readable records");
    link.tell(b'r')?;
    let mut file = File::from(OwnedFd::from(sfd));
    let mut seen = Vec::new();
    while seen.len() < signals.len() {
        if !readable(&file, PROMPTLY)? {
            bail!("only {seen:?} arrived on the signalfd");
        }
        let mut raw = [0u8; size_of::<libc::signalfd_siginfo>()];
        read_retrying(&mut file, &mut raw)?;
        // SAFETY: signalfd_siginfo is plain integers; read filled all of it.
        let info: libc::signalfd_siginfo = unsafe { std::mem::transmute(raw) };
        let r = Record {
            signo: info.ssi_signo as i32,
            code: info.ssi_code,
            pid: info.ssi_pid as i32,
            uid: info.ssi_uid,
            value: info.ssi_int,
        };
        say.step(format!("read(signalfd) → {}", describe(&r)));
        seen.push(r.signo);
    }
    say.step(
        "all three read as data, lowest signal number first (the kernel's order for pending \
         signals); SIGTERM too, with no handler: a poll() loop over this fd and others needs none",
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Roles
// ---------------------------------------------------------------------------

fn receiver(count: Option<u64>) -> Result<()> {
    let say = Narrator::new("receiver", false, Stream::Stdout);
    let mut records = Records::new()?;
    let mut caught: Vec<libc::c_int> = vec![
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGHUP,
        libc::SIGALRM,
        libc::SIGQUIT,
        libc::SIGINT,
        libc::SIGTERM,
    ];
    caught.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    for &signo in &caught {
        install(signo, true)?;
    }
    let me = std::process::id();
    say.step(format!(
        "pid {me}; try: kill -USR1 {me}   or   signal-demo sender --pid {me} --signal RTMIN+1 --value 7"
    ));
    let start = Instant::now();
    let mut received = 0u64;
    loop {
        let Some(r) = records.next(Duration::from_secs(3600))? else {
            continue;
        };
        received += 1;
        let mut line = describe(&r);
        match r.signo {
            libc::SIGHUP => line.push_str(": would reload the configuration"),
            libc::SIGINT | libc::SIGTERM => line.push_str(": shutting down"),
            _ => {}
        }
        say.step(line);
        let last =
            matches!(r.signo, libc::SIGINT | libc::SIGTERM) || count.is_some_and(|n| received >= n);
        if last {
            break;
        }
    }
    say.line(Summary {
        mechanism: "signal",
        messages: received,
        bytes: 0,
        errors: 0,
        elapsed: start.elapsed(),
    });
    Ok(())
}

fn sender(pid: i32, signo: libc::c_int, value: Option<i32>, count: u64) -> Result<()> {
    let say = Narrator::new("sender", false, Stream::Stdout);
    let call = if value.is_some() { "sigqueue" } else { "kill" };
    for i in 0..count {
        match send(Pid::from_raw(pid), signo, value) {
            Ok(()) => {}
            Err(Errno::ESRCH) => bail!(
                "{call}({pid}, {}): ESRCH: no process has pid {pid}",
                name(signo)
            ),
            Err(Errno::EPERM) => bail!(
                "{call}({pid}, {}): EPERM: not permitted to signal pid {pid} (another user's process)",
                name(signo)
            ),
            Err(e) => return Err(e).with_context(|| format!("{call}({pid}, {})", name(signo))),
        }
        say.step(format!(
            "{call}({pid}, {}{}) #{}",
            name(signo),
            value.map_or(String::new(), |v| format!(", value {v}")),
            i + 1
        ));
    }
    Ok(())
}

fn run() -> Result<()> {
    let mut args = Args::from_env(USAGE)?;
    let role = args.role(&["receiver", "sender"])?;
    let (mut pid, mut signal, mut value, mut count, mut quiet) = (None, None, None, None, false);
    let mut given = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--pid" => pid = Some(args.number("--pid", 1u64, i32::MAX as u64)? as i32),
            "--signal" => signal = Some(parse_signal(&args.value("--signal")?)?),
            "--value" => {
                let text = args.value("--value")?;
                value = Some(text.parse::<i32>().map_err(|_| {
                    usage(format!(
                        "--value expects a whole number that fits in 32 bits, got '{text}'"
                    ))
                })?);
            }
            "--count" => count = Some(args.number("--count", 1, MAX_COUNT)?),
            "--quiet" => quiet = true,
            other => return Err(args.unknown(other)),
        }
        given.push(arg);
    }
    let allowed: &[&str] = match role.as_deref() {
        None => &["--quiet"],
        Some("receiver") => &["--count"],
        _ => &["--pid", "--signal", "--value", "--count"],
    };
    if let Some(bad) = given.iter().find(|g| !allowed.contains(&g.as_str())) {
        let whom = role
            .as_deref()
            .map_or("the tour".to_string(), |r| format!("the {r}"));
        return Err(usage(format!("{bad} is not an option of {whom}")));
    }
    match role.as_deref() {
        None => tour(quiet),
        Some("receiver") => receiver(count),
        _ => {
            let pid = pid.ok_or_else(|| usage("the sender needs --pid PID"))?;
            let signo =
                signal.ok_or_else(|| usage("the sender needs --signal SIG, e.g. --signal USR1"))?;
            sender(pid, signo, value, count.unwrap_or(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_parse() {
        assert_eq!(parse_signal("USR1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse_signal("sigterm").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("RTMIN+2").unwrap(), libc::SIGRTMIN() + 2);
        assert_eq!(parse_signal("SIGRTMAX-1").unwrap(), libc::SIGRTMAX() - 1);
        assert_eq!(parse_signal("RTMIN").unwrap(), libc::SIGRTMIN());
        assert_eq!(parse_signal("9").unwrap(), 9);
        for bad in ["RTMIN+99", "RTMAX+1", "USR3", "0", "65", "RTMIN2", ""] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
        assert_eq!(name(libc::SIGRTMIN() + 1), "SIGRTMIN+1");
        assert_eq!(name(libc::SIGUSR1), "SIGUSR1");
    }
}
