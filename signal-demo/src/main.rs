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
//! | nesting           | a handler blocks only its own signal (plus `sa_mask`): another signal interrupts it, and its handler runs first |
//! | blocked (masked)  | the signal waits as *pending* until unblocked; pending signals are taken lowest number first |
//! | standard signals  | do not queue: sent 3 times while pending, delivered once (they *coalesce*, and nobody is told) |
//! | real-time signals | `SIGRTMIN..SIGRTMAX` queue, in order, each with its value (`sigqueue`), up to `RLIMIT_SIGPENDING`; past it `sigqueue` fails with `EAGAIN` |
//! | blocking calls    | interrupted with `EINTR`, unless the handler has `SA_RESTART`  |
//! | SIGKILL, SIGSTOP  | cannot be caught, blocked or ignored                           |
//! | signal 0          | `kill(pid, 0)` delivers nothing: it asks "does pid exist, may I signal it?" |
//!
//! ## Run it
//!
//! ```text
//! cargo run -p signal-demo                       # the tour, nine steps
//! cargo run -p signal-demo -- receiver           # terminal 1: prints its pid
//! kill -USR1 PID                                 # terminal 2, or:
//! cargo run -p signal-demo -- sender --pid PID --signal RTMIN+1 --value 7 --count 3
//! cargo run -p signal-demo -- sender --pid PID --signal 0     # a probe: is PID there?
//! ```
//!
//! The receiver waits for signals without a time limit (it waits for a
//! person); `--timeout SECS` bounds every wait, and with `--count N` it waits
//! at most 60 s for each signal after the first. Ctrl-C or SIGTERM makes it
//! print its counts and summary, then exit 130 or 143.
//!
//! ## What to look for
//!
//! - who sent each signal (`si_pid`) and how (`si_code`: kill, sigqueue, kernel);
//! - two signals pending at once: SIGUSR2's handler runs *inside* SIGUSR1's,
//!   unless `sa_mask` makes them take turns (lowest number first);
//! - 3 sends of SIGUSR1 while blocked arriving once; 3 of SIGRTMIN+1 arriving 3 times;
//! - `read` failing with `EINTR`, then the same read restarted with `SA_RESTART`;
//! - a zombie in `/proc/PID/stat` until `waitpid`;
//! - SIGSEGV and SIGFPE from real faults, reported by `waitpid`;
//! - the same signals read as records from a `signalfd`, lowest number first;
//! - a flood: a handler's self-pipe overflows and loses records (counted),
//!   a `signalfd` keeps every one queued in the kernel;
//! - `sender --signal USR2 --count 2000`: the receiver counts far fewer.
//!
//! The mechanism is all in this file: the handler (`on_signal`), the tour's
//! steps, then the two roles (`receiver`, `sender`).
//!
//! Uses `common` modules: `cleanup`, `cli`, `error`, `peer`, `report`.
//!
//! See also: signal(7), sigaction(2), signalfd(2), sigqueue(3), pidfd_open(2).

use std::ffi::c_void;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cli::{Args, MAX_COUNT};
use common::error::{self, Interrupted, usage};
use common::peer::{PeerExit, wait_pid};
use common::report::{Narrator, Stream, Summary};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{
    SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, kill, sigaction,
};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{ForkResult, Pid, fork, pipe2};

const USAGE: &str = "\
signal-demo: signals, from handlers to signalfd

USAGE:
    signal-demo [--quiet]
        The tour, nine steps, with forked children: SA_SIGINFO handlers and
        how they nest, blocking and pending, queued real-time signals, EINTR
        vs SA_RESTART, a timer, SIGCHLD and zombies, what cannot be caught,
        hardware faults, signalfd, and a flood (self-pipe vs signalfd).
    signal-demo receiver [--count N] [--timeout SECS] [--quiet]
        Print this process's pid, then one line per signal handled (SIGUSR1,
        SIGUSR2, SIGHUP, SIGALRM, SIGQUIT, SIGRTMIN..SIGRTMAX), then a count
        per signal and the summary. Ends after N signals with --count. SIGINT
        (Ctrl-C) and SIGTERM ask it to stop: it prints its counts and the
        summary, then exits 130 or 143, like every demo stopped by a signal;
        a second one ends it at once.
    signal-demo sender --pid PID --signal SIG [--value V] [--count N]
                       [--timeout SECS] [--quiet]
        Send SIG to PID N times (default 1): with kill(2), or sigqueue(3) and
        the integer V when --value is given; then the summary. SIG is USR1,
        SIGUSR1, RTMIN+2, RTMAX-1 or a number; 0 only probes (below).

OPTIONS:
    --pid PID       the process to signal (1 or more)
    --signal SIG    the signal. 0 is kill(PID, 0): a probe that delivers
                    nothing; exit 0 if PID exists and we may signal it, 1 if
                    not (ESRCH, EPERM). It cannot tell whether PID is still
                    the process you meant: pids are reused (a pidfd can).
    --value V       an integer sent along with sigqueue(3)
    --count N       signals to send, or to handle before exiting
    --timeout SECS  1..86400. Receiver: the longest it waits for the next
                    signal before it gives up (exit 1). Without it, the first
                    wait has no limit (the receiver waits for a person or a
                    script, as a server waits for its first client); with
                    --count, each later wait is at most 60 s; without --count
                    the receiver waits until it is stopped. Sender: the
                    longest it retries while the receiver's queue of pending
                    signals is full (EAGAIN), default 60.
    --quiet         no line per signal: the steps, the counts, the summary
    -h, --help      this text

COUNTING: standard signals (1-31) coalesce: one sent while the same signal
is still pending merges into it, and neither side is told, so a receiver
may handle fewer than were sent. Real-time signals queue, one delivery each,
up to RLIMIT_SIGPENDING pending signals per user; past that sigqueue fails
with EAGAIN (the sender waits and retries). The receiver's handler counts
every signal with an atomic counter; a record it could not write to its
self-pipe (full) is counted as an error: the signal was handled, who sent
it and its value are lost.

EXIT STATUS: 0 success, 1 runtime error (ESRCH: no such process; EPERM: not
permitted; records lost; --count not reached within the idle timeout; an
expectation of the tour not met), 2 bad command line, 130/143 stopped by
SIGINT/SIGTERM (the receiver prints its summary first).
";

/// How long the tour waits for any one thing a child should do promptly.
const PROMPTLY: Duration = Duration::from_secs(10);
/// The receiver's idle timeout between signals of a --count run, when no
/// --timeout is given (the convention's default).
const IDLE_DEFAULT: Duration = Duration::from_secs(60);
/// The sender's patience with a full queue (EAGAIN) when no --timeout is given.
const FULL_QUEUE_DEFAULT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    error::run("signal-demo", run)
}

// ---------------------------------------------------------------------------
// The handler: it counts the signal, then writes one record to a pipe
// ---------------------------------------------------------------------------

/// Signal numbers run from 1 to SIGRTMAX (64 on Linux): one slot each.
const SLOTS: usize = 65;

/// The write end of the self-pipe, for the handler (-1: none). A handler
/// may touch only lock-free atomics and async-signal-safe calls.
static RECORD_FD: AtomicI32 = AtomicI32::new(-1);
/// Per signal: how many times the handler ran. An atomic add cannot fail,
/// so this count is exact even when the record (below) is lost.
static HANDLED: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
/// Per signal: records the handler could not write (the pipe was full).
static UNRECORDED: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
/// The first SIGINT or SIGTERM, set whatever room the pipe has: a request
/// to stop must never be lost with its record.
static STOP: AtomicI32 = AtomicI32::new(0);
/// A clock the handlers share: each one reads it when it starts and when
/// it ends, so the records show which handler ran inside which.
static TICK: AtomicU32 = AtomicU32::new(0);

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
    /// TICK when the handler started, and when it had finished its work.
    entered: u32,
    left: u32,
    /// Explicit padding, so every byte of the record is initialised.
    _pad: u32,
    /// The signals blocked in the code the handler interrupted (bit n-1 for
    /// signal n). A handler blocks its own signal while it runs, so SIGUSR1
    /// here means "this handler interrupted SIGUSR1's handler".
    interrupted_mask: u64,
}

/// The SA_SIGINFO handler. Why not `println!` here: the signal may arrive
/// while the main code holds stdout's lock (deadlock) or is inside malloc
/// (corrupted heap). An atomic add, and `write(2)` of a small record to a
/// pipe, are async-signal-safe; the main loop prints the record later.
extern "C" fn on_signal(signo: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    let entered = TICK.fetch_add(1, Ordering::SeqCst) + 1;
    // Count first: whatever happens to the record, the count is exact.
    let slot = usize::try_from(signo).ok().filter(|&s| s < SLOTS);
    if let Some(s) = slot {
        HANDLED[s].fetch_add(1, Ordering::SeqCst);
    }
    if signo == libc::SIGINT || signo == libc::SIGTERM {
        // Only the first stop request is kept; a second one changes nothing.
        let _ = STOP.compare_exchange(0, signo, Ordering::SeqCst, Ordering::SeqCst);
    }
    let fd = RECORD_FD.load(Ordering::SeqCst);
    if fd < 0 || info.is_null() {
        if let Some(s) = slot {
            UNRECORDED[s].fetch_add(1, Ordering::SeqCst);
        }
        return;
    }
    // SAFETY: errno is thread-local; save it, since write() may change it
    // under the code we interrupted.
    let saved_errno = unsafe { *libc::__errno_location() };
    // SAFETY: for an SA_SIGINFO handler the kernel passes a valid siginfo_t.
    // The union fields read here are plain integers for every si_code.
    let mut record = unsafe {
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
            ..Record::default()
        }
    };
    record.entered = entered;
    record.interrupted_mask = interrupted_mask(context);
    record.left = TICK.fetch_add(1, Ordering::SeqCst) + 1;
    // SAFETY: write is async-signal-safe; `record` is plain data of the
    // given size. The write end is non-blocking: a handler must never wait
    // (it would stop the code it interrupted), so if the pipe is full the
    // record is dropped, and counted as dropped.
    let written =
        unsafe { libc::write(fd, (&record as *const Record).cast(), size_of::<Record>()) };
    if written != size_of::<Record>() as isize
        && let Some(s) = slot
    {
        UNRECORDED[s].fetch_add(1, Ordering::SeqCst);
    }
    // SAFETY: as above; give the interrupted code its errno back.
    unsafe { *libc::__errno_location() = saved_errno };
}

/// The signal mask of the code a handler interrupted, as bits.
fn interrupted_mask(context: *mut c_void) -> u64 {
    if context.is_null() {
        return 0;
    }
    // SAFETY: for an SA_SIGINFO handler the third argument is the
    // ucontext_t the kernel saved for the interrupted code; uc_sigmask is
    // the mask sigreturn restores. sigismember is async-signal-safe.
    let saved = unsafe { &(*(context as *const libc::ucontext_t)).uc_sigmask };
    let mut mask = 0u64;
    for signo in 1..SLOTS as libc::c_int {
        // SAFETY: `saved` is a valid sigset_t; signo is in 1..=64.
        if unsafe { libc::sigismember(saved, signo) } == 1 {
            mask |= 1 << (signo - 1);
        }
    }
    mask
}

fn bit(signo: libc::c_int) -> u64 {
    1 << (signo - 1)
}

/// How many times the handler ran for `signo`, and how many of those
/// records were lost.
fn handled(signo: libc::c_int) -> (u64, u64) {
    let s = signo as usize;
    (
        HANDLED[s].load(Ordering::SeqCst),
        UNRECORDED[s].load(Ordering::SeqCst),
    )
}

/// Install `on_signal` for `signo` with SA_SIGINFO plus `flags` (SA_RESTART:
/// resume interrupted calls; SA_RESETHAND: back to the default action after
/// one delivery). `also_block`: the sa_mask, signals blocked while this handler runs (its
/// own signal always is). Raw `libc::sigaction`, because nix's `Signal` has
/// no real-time signals.
fn install(signo: libc::c_int, flags: libc::c_int, also_block: &[libc::c_int]) -> Result<()> {
    // SAFETY: an all-zero sigaction is a valid starting point (empty mask,
    // no flags); we set the handler, mask and flags below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void) = on_signal;
    action.sa_sigaction = handler as libc::sighandler_t;
    action.sa_flags = libc::SA_SIGINFO | flags;
    // SAFETY: sa_mask is a valid sigset_t; the signal numbers are in range.
    unsafe {
        libc::sigemptyset(&mut action.sa_mask);
        for &s in also_block {
            libc::sigaddset(&mut action.sa_mask, s);
        }
    }
    // SAFETY: `action` is initialised; `on_signal` is async-signal-safe.
    let rc = unsafe { libc::sigaction(signo, &action, std::ptr::null_mut()) };
    Errno::result(rc).with_context(|| format!("sigaction({})", name(signo)))?;
    Ok(())
}

/// The pipe the handler writes records into and the main code reads.
struct Records {
    read: File,
    write: OwnedFd,
}

impl Records {
    /// A self-pipe of the default size (64 KiB on Linux).
    fn new() -> Result<Records> {
        Records::with_pipe_size(None)
    }

    /// A self-pipe; `bytes` shrinks it (F_SETPIPE_SZ) to show it overflow.
    fn with_pipe_size(bytes: Option<libc::c_int>) -> Result<Records> {
        let (read, write) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
        // Non-blocking write end: the handler must never wait for room.
        fcntl(write.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).context("fcntl(O_NONBLOCK)")?;
        if let Some(bytes) = bytes {
            fcntl(write.as_fd(), FcntlArg::F_SETPIPE_SZ(bytes)).context("fcntl(F_SETPIPE_SZ)")?;
        }
        RECORD_FD.store(write.as_raw_fd(), Ordering::SeqCst);
        Ok(Records {
            read: File::from(read),
            write,
        })
    }

    /// How many records the pipe holds before the handler's write fails.
    /// A pipe is a ring of pages, and a write of at most PIPE_BUF bytes is
    /// never split across two: each page holds a whole number of records.
    fn capacity(&self) -> Result<usize> {
        let bytes =
            fcntl(self.write.as_fd(), FcntlArg::F_GETPIPE_SZ).context("fcntl(F_GETPIPE_SZ)")?;
        // SAFETY: sysconf takes no pointers.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
        Ok(bytes as usize / page * (page / size_of::<Record>()))
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
        // SAFETY: Record is repr(C) plain integers with no hidden padding;
        // every bit pattern is valid.
        Ok(Some(unsafe {
            std::mem::transmute::<[u8; size_of::<Record>()], Record>(bytes)
        }))
    }

    /// A record already in the pipe, without waiting.
    fn try_next(&mut self) -> Result<Option<Record>> {
        self.next(Duration::ZERO)
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        // The write end closes with `self`: stop the handler writing to a
        // descriptor number that a later open() may reuse for something else.
        RECORD_FD.store(-1, Ordering::SeqCst);
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

/// "USR1", "SIGUSR1", "RTMIN+2", "RTMAX-1" or a number (0: the probe).
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
        // 0 is not a signal but a probe: kill(pid, 0) checks, delivers nothing.
        if (0..=max).contains(&n) {
            return Ok(n);
        }
        return Err(usage(format!(
            "--signal {n}: signal numbers run from 1 to {max} (0: a probe that sends nothing)"
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

/// What a sender met while the receiver's queue of pending signals was full.
#[derive(Default)]
struct FullQueue {
    /// How many times sigqueue said EAGAIN.
    refusals: u64,
    /// Time spent waiting before a retry.
    waited: Duration,
}

/// `send`, waiting and retrying while the kernel says EAGAIN: the
/// receiver's user has RLIMIT_SIGPENDING signals pending already (only
/// sigqueue of a real-time signal can fail so). Back-off from 1 ms to
/// 64 ms, for at most `patience` since the last signal that went through.
/// Ends early with EINTR if Ctrl-C or SIGTERM asked us to stop.
fn send_retrying(
    pid: Pid,
    signo: libc::c_int,
    value: Option<i32>,
    patience: Duration,
    full: &mut FullQueue,
) -> nix::Result<()> {
    let since = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match send(pid, signo, value) {
            Err(Errno::EAGAIN) => {}
            other => return other,
        }
        full.refusals += 1;
        if since.elapsed() >= patience {
            return Err(Errno::EAGAIN);
        }
        if common::cleanup::stop_requested().is_some() {
            return Err(Errno::EINTR);
        }
        // Waiting is the only cure: the receiver must take some signals
        // before the kernel queues more for its user.
        sleep(pause);
        full.waited += pause;
        pause = (pause * 2).min(Duration::from_millis(64));
    }
}

/// RLIMIT_SIGPENDING of this process, for the narration ("unlimited" or a number).
fn sigpending_limit() -> String {
    // SAFETY: getrlimit fills the struct we pass.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: a valid resource and a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_SIGPENDING, &mut limit) } != 0 {
        return "unknown".into();
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        limit.rlim_cur.to_string()
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
    say.line(format!(
        "\n== 9. A flood of {FLOOD} queued signals: a handler's self-pipe overflows, a signalfd does not =="
    ));
    flood_step(&say, &mut count)?;

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
    say.line(
        "\n== 1. sigaction with SA_SIGINFO: who sent it, how, and which handler runs first ==",
    );
    link.hear(b'1')?;
    send(child, libc::SIGUSR1, None).context("kill(SIGUSR1)")?;
    say.step(format!("kill({child}, SIGUSR1)"));
    // Twice: first with handlers that block only their own signal, then
    // with an sa_mask that makes them block each other.
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

    say.line("\n== 2. Blocked signals wait as pending; only real-time signals queue ==");
    link.tell(b'h')?; // the heading is out: the child may go on
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
        install(signo, 0, &[])?;
    }
    say.step("sigaction(SIGUSR1, SIGUSR2, SIGRTMIN+1, SIGALRM, SA_SIGINFO): the handler counts the signal and writes a record to a pipe");

    // Step 1: one signal
    link.tell(b'1')?;
    let r = records.next(PROMPTLY)?.context("SIGUSR1 did not arrive")?;
    say.step(format!("handled {}", describe(&r)));

    // Step 1: two signals pending at once, handlers that block only their own.
    let pair = two_at_once(link, &mut records, say)?;
    explain_pair(say, &pair, false);
    // The same with sa_mask: while one handler runs, the other signal waits.
    let both = [libc::SIGUSR1, libc::SIGUSR2];
    for signo in both {
        install(signo, 0, &both)?;
    }
    say.step("sigaction(SIGUSR1 and SIGUSR2, sa_mask = {SIGUSR1, SIGUSR2}): now each handler blocks the other signal while it runs");
    let pair = two_at_once(link, &mut records, say)?;
    explain_pair(say, &pair, true);
    for signo in both {
        install(signo, 0, &[])?;
    }
    link.tell(b'a')?;
    link.hear(b'h')?;

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
            ..Record::default()
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
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    let mut raw: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid sigset_t and a valid signal number.
    unsafe {
        libc::sigemptyset(&mut raw);
        libc::sigaddset(&mut raw, rt3);
    }
    // SAFETY: `raw` holds one valid signal.
    let mask = unsafe { SigSet::from_sigset_t_unchecked(raw) };
    // Non-blocking: read until the queue is empty, then stop.
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK).context("signalfd")?;
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
// Roles
// ---------------------------------------------------------------------------

/// The options the two roles share.
struct RoleOpts {
    count: Option<u64>,
    timeout: Option<Duration>,
    quiet: bool,
}

/// How the receiver's loop ended.
enum End {
    /// SIGINT or SIGTERM asked it to stop.
    Stopped(libc::c_int),
    /// --count signals were handled.
    Counted,
    /// No signal within the idle timeout.
    Idle(Duration),
}

fn is_stop(signo: libc::c_int) -> bool {
    signo == libc::SIGINT || signo == libc::SIGTERM
}

/// Signals handled so far, not counting the requests to stop.
fn handled_messages(caught: &[libc::c_int]) -> u64 {
    caught
        .iter()
        .filter(|&&s| !is_stop(s))
        .map(|&s| handled(s).0)
        .sum()
}

fn show(say: &Narrator, r: &Record) {
    let mut line = describe(r);
    if r.signo == libc::SIGHUP {
        line.push_str(": would reload the configuration");
    }
    if is_stop(r.signo) {
        // Always shown, even with --quiet: it explains why the run ends.
        say.step(format!("{line}: asked to stop"));
    } else {
        say.message(line);
    }
}

fn receiver(opts: &RoleOpts) -> Result<()> {
    let say = Narrator::new("receiver", opts.quiet, Stream::Stdout);
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
        // SA_RESETHAND on the stop signals: the first asks to stop; should
        // the loop be stuck (stdout blocked), a second one ends the process.
        let once = if is_stop(signo) {
            libc::SA_RESETHAND
        } else {
            0
        };
        install(signo, libc::SA_RESTART | once, &[])?;
    }
    let me = std::process::id();
    say.step(format!(
        "pid {me}; try: kill -USR1 {me}   or   signal-demo sender --pid {me} --signal RTMIN+1 --value 7"
    ));
    say.step(match (opts.count, opts.timeout) {
        (_, Some(t)) => format!(
            "waiting at most {}s for each signal (--timeout); Ctrl-C or SIGTERM stops me",
            t.as_secs()
        ),
        (Some(n), None) => format!(
            "waiting for {n} signal(s): for the first without a time limit, then at most {}s for \
             each next one (--timeout SECS to change it); Ctrl-C or SIGTERM stops me",
            IDLE_DEFAULT.as_secs()
        ),
        (None, None) => "waiting for signals without a time limit (I wait for a person; \
             --timeout SECS bounds it): Ctrl-C or SIGTERM stops me"
            .to_string(),
    });
    let start = Instant::now();
    let mut last_total = 0u64;
    let mut last_progress = Instant::now();
    let end = loop {
        while let Some(r) = records.try_next()? {
            show(&say, &r);
        }
        // The counters, not the records, decide: a record may have been
        // dropped (full pipe), a count never is.
        let stop = STOP.load(Ordering::SeqCst);
        if stop != 0 {
            break End::Stopped(stop);
        }
        let total = handled_messages(&caught);
        if total != last_total {
            last_total = total;
            last_progress = Instant::now();
        }
        if opts.count.is_some_and(|n| total >= n) {
            break End::Counted;
        }
        let limit = opts.timeout.or(if opts.count.is_some() && total > 0 {
            Some(IDLE_DEFAULT)
        } else {
            None
        });
        let wait = match limit {
            Some(limit) => {
                let left = limit.saturating_sub(last_progress.elapsed());
                if left.is_zero() {
                    break End::Idle(limit);
                }
                left
            }
            // Deliberately unbounded (see --help): loop on long polls.
            None => Duration::from_secs(3600),
        };
        // A handler that ran has written a record, or found the pipe full,
        // and then the pipe is readable anyway: no wake-up is missed.
        readable(&records.read, wait)?;
    };
    // From here on no handler may run: block every caught signal, so that
    // the counts read below stay the counts reported. Signals arriving now
    // stay pending and die with the process.
    block(&caught, SigmaskHow::SIG_BLOCK)?;
    while let Some(r) = records.try_next()? {
        show(&say, &r);
    }
    let (mut messages, mut lost, mut standard, mut realtime) = (0u64, 0u64, false, false);
    for &signo in &caught {
        let (ran, dropped) = handled(signo);
        if ran == 0 {
            continue;
        }
        let what = match (is_stop(signo), dropped > 0) {
            (true, true) => {
                " (a request to stop, not counted as a message; its record was lost, but the \
                 handler had set the stop flag first: a stop request is never lost)"
            }
            (true, false) => " (a request to stop, not counted as a message)",
            _ => "",
        };
        say.step(format!(
            "{} ({signo}): handled {ran} time(s), {} recorded{}{what}",
            name(signo),
            ran - dropped,
            if dropped > 0 {
                format!(", {dropped} NOT recorded: the self-pipe was full")
            } else {
                String::new()
            }
        ));
        if !is_stop(signo) {
            messages += ran;
            lost += dropped;
            if signo < libc::SIGRTMIN() {
                standard = true;
            } else {
                realtime = true;
            }
        }
    }
    if standard {
        say.step(
            "standard signals coalesce: one sent while the same signal is still pending here \
             merges into it, and neither side is told. A sender may have sent more than I \
             handled (sender --signal USR2 --count 2000 arrives as a few hundred); count with \
             real-time signals to see each one",
        );
    }
    if realtime {
        say.step(format!(
            "real-time signals queue: each one sent is handled, in order, as long as fewer than \
             RLIMIT_SIGPENDING ({} here) are pending for my user; past that sigqueue fails with \
             EAGAIN at the sender",
            sigpending_limit()
        ));
    }
    if lost > 0 {
        say.step(format!(
            "{lost} signal(s) were handled and counted, but their records did not fit the \
             self-pipe ({} records): they came faster than this loop reads (while signals keep \
             coming, the kernel runs handler after handler and the loop waits), and a handler \
             cannot wait for room. The counts are exact (an atomic counter per signal); who sent \
             those and their values are lost. A signalfd keeps every one queued in the kernel \
             instead (the tour, step 9)",
            records.capacity()?
        ));
    }
    say.line(Summary {
        mechanism: "signal",
        messages,
        bytes: 0,
        errors: lost,
        elapsed: start.elapsed(),
    });
    match end {
        End::Stopped(signo) => {
            let signal = Signal::try_from(signo).context("the stop signal")?;
            Err(Interrupted(signal).into())
        }
        End::Idle(limit) => {
            let wanted = opts
                .count
                .map_or(String::new(), |n| format!(": {messages} of {n} arrived"));
            bail!(
                "no signal for {}s{wanted}{}",
                limit.as_secs(),
                if standard && opts.count.is_some() {
                    " (standard signals coalesce, so the rest may never come)"
                } else {
                    ""
                }
            )
        }
        End::Counted if lost > 0 => bail!("{lost} of {messages} signals lost their record"),
        End::Counted => Ok(()),
    }
}

/// `--signal 0`: kill(pid, 0) delivers nothing; the kernel only checks
/// that the process exists and that we may signal it.
fn probe(pid: i32, say: &Narrator) -> Result<()> {
    match send(Pid::from_raw(pid), 0, None) {
        Ok(()) => {
            say.step(format!(
                "kill({pid}, 0) succeeded: a process with pid {pid} exists and we may signal it. \
                 Signal 0 is a probe: the kernel checked existence and permission and delivered \
                 nothing"
            ));
            say.step(
                "it cannot tell whether that is still the process you meant: when a process ends \
                 its pid is reused, and kill(pid, 0) answers for whoever has it now. A pidfd \
                 (pidfd_open(2)) names one process for good; pidfd_send_signal(2) can never \
                 reach a newcomer (taught later)",
            );
            Ok(())
        }
        Err(Errno::ESRCH) => {
            bail!("kill({pid}, 0): ESRCH: no process has pid {pid} (signal 0 only probes)")
        }
        Err(Errno::EPERM) => bail!(
            "kill({pid}, 0): EPERM: pid {pid} exists but is another user's: we may not signal \
             it (signal 0 only probes)"
        ),
        Err(e) => Err(e).with_context(|| format!("kill({pid}, 0)")),
    }
}

fn sender(pid: i32, signo: libc::c_int, value: Option<i32>, opts: &RoleOpts) -> Result<()> {
    let say = Narrator::new("sender", opts.quiet, Stream::Stdout);
    if signo == 0 {
        return probe(pid, &say);
    }
    // Ctrl-C/SIGTERM: stop between two sends, report, exit 128+N.
    common::cleanup::stop_on_signals()?;
    let call = if value.is_some() { "sigqueue" } else { "kill" };
    let count = opts.count.unwrap_or(1);
    let patience = opts.timeout.unwrap_or(FULL_QUEUE_DEFAULT);
    let target = Pid::from_raw(pid);
    let mut full = FullQueue::default();
    let start = Instant::now();
    let mut sent = 0u64;
    let outcome: Result<()> = loop {
        if sent == count {
            break Ok(());
        }
        if let Err(e) = common::cleanup::check_stop() {
            break Err(e);
        }
        let what = || format!("{call}({pid}, {})", name(signo));
        match send_retrying(target, signo, value, patience, &mut full) {
            Ok(()) => {}
            Err(Errno::EINTR) => continue, // Ctrl-C during a back-off: checked above
            Err(Errno::ESRCH) => {
                break Err(anyhow::anyhow!(
                    "{}: ESRCH: no process has pid {pid}{}",
                    what(),
                    if sent > 0 { " any more" } else { "" }
                ));
            }
            Err(Errno::EPERM) => {
                break Err(anyhow::anyhow!(
                    "{}: EPERM: not permitted to signal pid {pid} (another user's process)",
                    what()
                ));
            }
            Err(Errno::EAGAIN) => {
                break Err(anyhow::anyhow!(
                    "{}: EAGAIN for {}s: the receiver's queue of pending signals stays full \
                     (RLIMIT_SIGPENDING); is pid {pid} stopped, or blocking {}?",
                    what(),
                    patience.as_secs(),
                    name(signo)
                ));
            }
            Err(e) => break Err(anyhow::Error::new(e).context(what())),
        }
        sent += 1;
        say.message(format!(
            "{call}({pid}, {}{}) #{sent}",
            name(signo),
            value.map_or(String::new(), |v| format!(", value {v}"))
        ));
    };
    // A first send that failed moved nothing: the error line says why.
    if sent == 0 {
        return outcome;
    }
    say.step(format!(
        "{call}() sent {sent} of {count} {} to pid {pid} (the kernel took each one)",
        name(signo)
    ));
    if full.refusals > 0 {
        say.step(format!(
            "the receiver's queue was full {} time(s) (EAGAIN: RLIMIT_SIGPENDING signals pending \
             for its user): waited {} ms in all, retrying with a back-off from 1 to 64 ms",
            full.refusals,
            full.waited.as_millis()
        ));
    }
    if signo < libc::SIGRTMIN() {
        if sent > 1 {
            say.step(format!(
                "{} is a standard signal: one sent while the last is still pending at pid {pid} \
                 merges into it (coalesces), and the kernel tells neither side; the receiver may \
                 count fewer than {sent}",
                name(signo)
            ));
        }
    } else {
        say.step(format!(
            "{} is a real-time signal: each one queues, in order{}, up to RLIMIT_SIGPENDING \
             pending signals for the receiver's user (ours: {}); past that sigqueue fails with \
             EAGAIN{}",
            name(signo),
            if value.is_some() {
                ", with its value"
            } else {
                ""
            },
            sigpending_limit(),
            if value.is_none() {
                " (kill does not fail: the signal is kept without its details)"
            } else {
                ""
            }
        ));
    }
    say.line(Summary {
        mechanism: "signal",
        messages: sent,
        bytes: 0,
        errors: 0,
        elapsed: start.elapsed(),
    });
    outcome
}

fn run() -> Result<()> {
    let mut args = Args::from_env(USAGE)?;
    let role = args.role(&["receiver", "sender"])?;
    let (mut pid, mut signal, mut value, mut quiet) = (None, None, None, false);
    let (mut count, mut timeout) = (None, None);
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
            "--timeout" => {
                timeout = Some(Duration::from_secs(args.number(
                    "--timeout",
                    1u64,
                    86_400,
                )?))
            }
            "--quiet" => quiet = true,
            other => return Err(args.unknown(other)),
        }
        given.push(arg);
    }
    let allowed: &[&str] = match role.as_deref() {
        None => &["--quiet"],
        Some("receiver") => &["--count", "--timeout", "--quiet"],
        _ => &[
            "--pid",
            "--signal",
            "--value",
            "--count",
            "--timeout",
            "--quiet",
        ],
    };
    if let Some(bad) = given.iter().find(|g| !allowed.contains(&g.as_str())) {
        let whom = role
            .as_deref()
            .map_or("the tour".to_string(), |r| format!("the {r}"));
        return Err(usage(format!("{bad} is not an option of {whom}")));
    }
    let opts = RoleOpts {
        count,
        timeout,
        quiet,
    };
    match role.as_deref() {
        None => tour(quiet),
        Some("receiver") => receiver(&opts),
        _ => {
            let pid = pid.ok_or_else(|| usage("the sender needs --pid PID"))?;
            let signo =
                signal.ok_or_else(|| usage("the sender needs --signal SIG, e.g. --signal USR1"))?;
            if signo == 0
                && let Some(bad) = ["--count", "--value", "--timeout"]
                    .iter()
                    .find(|o| given.iter().any(|g| g == *o))
            {
                return Err(usage(format!(
                    "{bad} does not go with --signal 0: a probe sends nothing"
                )));
            }
            sender(pid, signo, value, &opts)
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
        assert_eq!(parse_signal("0").unwrap(), 0);
        for bad in ["RTMIN+99", "RTMAX+1", "USR3", "-1", "65", "RTMIN2", ""] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
        assert_eq!(name(libc::SIGRTMIN() + 1), "SIGRTMIN+1");
        assert_eq!(name(libc::SIGUSR1), "SIGUSR1");
    }
}
