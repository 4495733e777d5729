//! The mechanism: signal handlers, masks, sending, waiting, signalfd,
//! pidfds, and the two roles, `receiver` and `sender`, for two terminals.
//!
//! Read it top to bottom: the handler (`on_signal`) and what it may touch,
//! `install` (sigaction), the self-pipe the handler writes to, `send`
//! (kill / sigqueue), `block` and `pending` (sigprocmask, sigpending),
//! `signalfd_of` (signals as records on a descriptor), the waits (`pause`,
//! `suspend` = sigsuspend, `wait_info` = sigtimedwait, `alarm_after` =
//! setitimer), a SIGCHLD handler that reaps (`reap_children`), pidfds
//! (`pidfd_open`, `pidfd_send_signal`, `pidfd_exited`), then the roles.
//! The tour's steps, which use these, are in `story.rs`.

use std::ffi::c_void;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::error::Interrupted;
use common::report::{Narrator, Stream, Summary};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{Pid, pipe2};

use crate::Options;
use crate::checks::{describe, name, sigpending_limit};

/// The receiver's idle timeout between signals of a --count run, when no
/// --timeout is given (the convention's default).
const IDLE_DEFAULT: Duration = Duration::from_secs(60);
/// The sender's patience with a full queue (EAGAIN) when no --timeout is given.
const FULL_QUEUE_DEFAULT: Duration = Duration::from_secs(60);

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
pub struct Record {
    pub signo: i32,
    /// si_code: who or what sent it (SI_USER = kill, SI_QUEUE = sigqueue, ...).
    pub code: i32,
    pub pid: i32,
    pub uid: u32,
    /// The sigqueue value, meaningful when code == SI_QUEUE.
    pub value: i32,
    /// TICK when the handler started, and when it had finished its work.
    pub entered: u32,
    pub left: u32,
    /// Explicit padding, so every byte of the record is initialised.
    pub _pad: u32,
    /// The signals blocked in the code the handler interrupted (bit n-1 for
    /// signal n). A handler blocks its own signal while it runs, so SIGUSR1
    /// here means "this handler interrupted SIGUSR1's handler".
    pub interrupted_mask: u64,
}

// ANCHOR: handler
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
// ANCHOR_END: handler

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

/// Signal `signo` as a bit of `Record::interrupted_mask`.
pub fn bit(signo: libc::c_int) -> u64 {
    1 << (signo - 1)
}

/// How many times the handler ran for `signo`, and how many of those
/// records were lost.
pub fn handled(signo: libc::c_int) -> (u64, u64) {
    let s = signo as usize;
    (
        HANDLED[s].load(Ordering::SeqCst),
        UNRECORDED[s].load(Ordering::SeqCst),
    )
}

// ANCHOR: install
/// Install `on_signal` for `signo` with SA_SIGINFO plus `flags` (SA_RESTART:
/// resume interrupted calls; SA_RESETHAND: back to the default action after
/// one delivery). `also_block`: the sa_mask, signals blocked while this handler runs (its
/// own signal always is). Raw `libc::sigaction`, because nix's `Signal` has
/// no real-time signals.
pub fn install(signo: libc::c_int, flags: libc::c_int, also_block: &[libc::c_int]) -> Result<()> {
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
// ANCHOR_END: install

/// The pipe the handler writes records into and the main code reads.
pub struct Records {
    /// The main code reads records here (poll, then read(2)).
    read: File,
    /// The handler writes here (its number is in RECORD_FD).
    write: OwnedFd,
}

impl Records {
    /// A self-pipe of the default size (64 KiB on Linux).
    pub fn new() -> Result<Records> {
        Records::with_pipe_size(None)
    }

    /// A self-pipe; `bytes` shrinks it (F_SETPIPE_SZ) to show it overflow.
    pub fn with_pipe_size(bytes: Option<libc::c_int>) -> Result<Records> {
        // pipe2(O_CLOEXEC): a program this process might exec does not inherit
        // the ends (the tour's children are forked, not exec'd: they keep them).
        let (read, write) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
        // Non-blocking write end: the handler must never wait for room.
        fcntl(write.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).context("fcntl(O_NONBLOCK)")?;
        if let Some(bytes) = bytes {
            fcntl(write.as_fd(), FcntlArg::F_SETPIPE_SZ(bytes)).context("fcntl(F_SETPIPE_SZ)")?;
        }
        // From here on the handler writes its records to this descriptor.
        RECORD_FD.store(write.as_raw_fd(), Ordering::SeqCst);
        Ok(Records {
            read: File::from(read),
            write,
        })
    }

    /// How many records the pipe holds before the handler's write fails.
    /// A pipe is a ring of pages, and a write of at most PIPE_BUF bytes is
    /// never split across two: each page holds a whole number of records.
    pub fn capacity(&self) -> Result<usize> {
        let bytes =
            fcntl(self.write.as_fd(), FcntlArg::F_GETPIPE_SZ).context("fcntl(F_GETPIPE_SZ)")?;
        // SAFETY: sysconf takes no pointers.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
        Ok(bytes as usize / page * (page / size_of::<Record>()))
    }

    /// The next record, or None if none arrives within `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Record>> {
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
    pub fn try_next(&mut self) -> Result<Option<Record>> {
        self.next(Duration::ZERO)
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        // First tell the handler there is no pipe: the fields drop after this
        // body, and dropping them is close(2) of both ends; a handler that
        // still wrote to the number might hit whatever a later open() reuses
        // it for.
        RECORD_FD.store(-1, Ordering::SeqCst);
    }
}

/// poll(2) until `file` has data (or EOF), at most `timeout`. Every wait
/// of the demo on a pipe or signalfd goes through here, so every one is
/// bounded.
pub fn readable(file: &File, timeout: Duration) -> Result<bool> {
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

/// read(2) until `buf` is full (std's read_exact), again after EINTR: a
/// handler that interrupted the read has nothing to do with it.
pub fn read_retrying(file: &mut File, buf: &mut [u8]) -> Result<()> {
    loop {
        match file.read_exact(buf) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("read"),
        }
    }
}

// ANCHOR: send
/// Send `signo` with kill(2), or sigqueue(3) carrying `value`.
pub fn send(pid: Pid, signo: libc::c_int, value: Option<i32>) -> nix::Result<()> {
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
// ANCHOR_END: send

/// What a sender met while the receiver's queue of pending signals was full.
#[derive(Default)]
pub struct FullQueue {
    /// How many times sigqueue said EAGAIN.
    pub refusals: u64,
    /// Time spent waiting before a retry.
    pub waited: Duration,
}

/// `send`, waiting and retrying while the kernel says EAGAIN: the
/// receiver's user has RLIMIT_SIGPENDING signals pending already (only
/// sigqueue of a real-time signal can fail so). Back-off from 1 ms to
/// 64 ms, for at most `patience` since the last signal that went through.
/// Ends early with EINTR if Ctrl-C or SIGTERM asked us to stop.
pub fn send_retrying(
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

// ---------------------------------------------------------------------------
// Masks: blocking a signal makes it wait as pending
// ---------------------------------------------------------------------------

/// A signal set holding `signos`. Built through libc's sigset_t, because
/// nix's `Signal` (and so `SigSet::add`) has no real-time signals.
fn sigset_of(signos: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; signal numbers are in range.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in signos {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

// ANCHOR: block_pending
/// sigprocmask(how, signos): SIG_BLOCK adds them to the mask (they stay
/// pending if sent), SIG_UNBLOCK removes them (a pending one is delivered
/// before sigprocmask returns).
pub fn block(signos: &[libc::c_int], how: SigmaskHow) -> Result<()> {
    let set = sigset_of(signos);
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

/// sigpending(2): is `signo` sent but blocked, waiting for delivery?
pub fn pending(signo: libc::c_int) -> Result<bool> {
    // SAFETY: sigpending fills the set we pass; sigismember reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        Errno::result(libc::sigpending(&mut set)).context("sigpending")?;
        Ok(libc::sigismember(&set, signo) == 1)
    }
}
// ANCHOR_END: block_pending

// ---------------------------------------------------------------------------
// signalfd: pending signals read as records from a descriptor
// ---------------------------------------------------------------------------

// ANCHOR: signalfd
/// signalfd(2) for `signos`. The caller must block them first
/// (sigprocmask): a blocked signal is not delivered to a handler or its
/// default action, it stays pending, and a read of the signalfd takes it
/// from the pending set, one `signalfd_siginfo` per signal. `flags`:
/// SFD_NONBLOCK makes a read with nothing pending fail with EAGAIN.
pub fn signalfd_of(signos: &[libc::c_int], flags: SfdFlags) -> Result<SignalFd> {
    // SAFETY: the set was built by sigemptyset/sigaddset of valid signals.
    let mask = unsafe { SigSet::from_sigset_t_unchecked(sigset_of(signos)) };
    SignalFd::with_flags(&mask, flags).context("signalfd")
}
// ANCHOR_END: signalfd

/// The next signal on a (blocking) signalfd, or None if none comes within
/// `timeout`: poll for POLLIN, then one read of one `signalfd_siginfo`.
pub fn read_signalfd(file: &mut File, timeout: Duration) -> Result<Option<Record>> {
    if !readable(file, timeout)? {
        return Ok(None);
    }
    let mut raw = [0u8; size_of::<libc::signalfd_siginfo>()];
    read_retrying(file, &mut raw).context("read(signalfd)")?;
    // SAFETY: signalfd_siginfo is plain integers; read filled all of it.
    let info: libc::signalfd_siginfo = unsafe { std::mem::transmute(raw) };
    Ok(Some(Record {
        signo: info.ssi_signo as i32,
        code: info.ssi_code,
        pid: info.ssi_pid as i32,
        uid: info.ssi_uid,
        value: info.ssi_int,
        ..Record::default()
    }))
}

// ---------------------------------------------------------------------------
// Waiting for a signal: pause, sigsuspend, sigtimedwait
// ---------------------------------------------------------------------------

/// pause(2): sleep until a handler has run. Its flaw: a signal that came
/// just *before* the call (after the code checked its flag) has already
/// been handled, and pause() then waits for the next one.
pub fn pause() {
    nix::unistd::pause();
}

/// sigprocmask(SIG_BLOCK, signos), returning the mask as it was, for
/// `suspend` to restore while it waits.
pub fn block_keeping_old(signos: &[libc::c_int]) -> Result<libc::sigset_t> {
    let set = sigset_of(signos);
    // SAFETY: sigset_t is plain data; sigprocmask fills it.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sets.
    Errno::result(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old) })
        .context("sigprocmask(SIG_BLOCK)")?;
    Ok(old)
}

/// sigprocmask(SIG_SETMASK, mask): put a mask back.
pub fn set_mask(mask: &libc::sigset_t) -> Result<()> {
    // SAFETY: a valid set; the old mask is not wanted.
    Errno::result(unsafe { libc::sigprocmask(libc::SIG_SETMASK, mask, std::ptr::null_mut()) })
        .context("sigprocmask(SIG_SETMASK)")?;
    Ok(())
}

// ANCHOR: suspend
/// sigsuspend(2): in ONE step, replace the mask with `mask` (which lets the
/// awaited signal through) and sleep until a handler has run; then put the
/// old mask back. A signal that arrived earlier, while it was blocked, is
/// pending, so it is delivered the moment the mask opens: no wake-up can
/// fall between the check and the sleep. Always "fails" with EINTR.
pub fn suspend(mask: &libc::sigset_t) -> Result<()> {
    // SAFETY: a valid set.
    match Errno::result(unsafe { libc::sigsuspend(mask) }) {
        Err(Errno::EINTR) => Ok(()),
        other => other.map(drop).context("sigsuspend"),
    }
}
// ANCHOR_END: suspend

/// sigtimedwait(2): take one of `signos` (which must be blocked) from the
/// pending set, synchronously: no handler runs, the siginfo comes back as
/// the result. None if none is pending within `timeout` (EAGAIN).
pub fn wait_info(signos: &[libc::c_int], timeout: Duration) -> Result<Option<Record>> {
    let set = sigset_of(signos);
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let limit = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: siginfo_t is plain data the call fills.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid set, siginfo and timespec.
        let signo = unsafe { libc::sigtimedwait(&set, &mut info, &limit) };
        match Errno::result(signo) {
            Ok(signo) => {
                // SAFETY: the kernel filled `info` for `signo`; the union
                // fields read are plain integers.
                let record = unsafe {
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
                return Ok(Some(record));
            }
            Err(Errno::EAGAIN) => return Ok(None),
            // Another signal's handler ran: wait again, for what is left.
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("sigtimedwait"),
        }
    }
}

/// setitimer(ITIMER_REAL): one SIGALRM after `after` (zero: cancel). The
/// tour's bound on a wait that could otherwise last for ever.
pub fn alarm_after(after: Duration) -> Result<()> {
    let timer = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: after.as_secs() as libc::time_t,
            tv_usec: after.subsec_micros() as libc::suseconds_t,
        },
    };
    // SAFETY: a valid itimerval; the old value is not wanted.
    Errno::result(unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) })
        .context("setitimer")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// SIGCHLD: a handler that reaps every child that has exited
// ---------------------------------------------------------------------------

/// How many times `reap_children` ran.
static CHLD_RUNS: AtomicU64 = AtomicU64::new(0);
/// How many children it reaped.
static REAPED: AtomicU64 = AtomicU64::new(0);

/// A SIGCHLD handler. SIGCHLD is a standard signal: children that exit
/// while one is pending merge into it, so one run may stand for several
/// children. Hence the loop: waitpid(-1, WNOHANG) until no exited child is
/// left (0: children still running; -1/ECHILD: no children at all).
/// waitpid is async-signal-safe; errno is saved for the interrupted code.
extern "C" fn reap_children(_signo: libc::c_int) {
    // SAFETY: errno is thread-local; see on_signal.
    let saved_errno = unsafe { *libc::__errno_location() };
    CHLD_RUNS.fetch_add(1, Ordering::SeqCst);
    loop {
        let mut status = 0;
        // SAFETY: a valid pointer; WNOHANG: never wait inside a handler.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
        REAPED.fetch_add(1, Ordering::SeqCst);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved_errno };
}

/// sigaction(SIGCHLD, reap_children, SA_RESTART | SA_NOCLDSTOP): reap in
/// the handler; SA_NOCLDSTOP: no SIGCHLD for children that merely stop.
pub fn install_reaper() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(reap_children),
        SaFlags::SA_RESTART | SaFlags::SA_NOCLDSTOP,
        SigSet::empty(),
    );
    // SAFETY: reap_children is async-signal-safe.
    unsafe { sigaction(Signal::SIGCHLD, &action) }.context("sigaction(SIGCHLD)")?;
    Ok(())
}

/// (runs of the SIGCHLD handler, children it reaped) so far.
pub fn reaper_counts() -> (u64, u64) {
    (
        CHLD_RUNS.load(Ordering::SeqCst),
        REAPED.load(Ordering::SeqCst),
    )
}

/// signal(signo, SIG_DFL): back to the default action (a standard signal).
pub fn default_action(signo: libc::c_int) -> Result<()> {
    let signal = Signal::try_from(signo).context("a standard signal")?;
    // SAFETY: SIG_DFL runs no code of ours.
    unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) }
        .with_context(|| format!("signal({signal}, SIG_DFL)"))?;
    Ok(())
}

/// sigaction(SIGCHLD, SIG_IGN) or SIG_DFL. SIG_IGN on SIGCHLD is special
/// (POSIX.1-2001): exited children are reaped by the kernel at once, no
/// zombie, and waitpid for them fails with ECHILD.
pub fn sigchld_disposition(handler: SigHandler) -> Result<()> {
    let action = SigAction::new(handler, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN and SIG_DFL run no code of ours.
    unsafe { sigaction(Signal::SIGCHLD, &action) }.context("sigaction(SIGCHLD)")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// pidfd: a descriptor that names one process for good
// ---------------------------------------------------------------------------

// ANCHOR: pidfd
/// pidfd_open(2): a descriptor for the process `pid` is *now*. Unlike the
/// number, it never comes to mean another process: when this one ends and
/// its pid is reused, the descriptor still names the one that ended.
/// (common::peer::PidWatch wraps the same call for the other demos; here it
/// is spelled out.) No libc wrapper on older glibc: the raw syscall.
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags (0), returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let fd = Errno::result(fd).with_context(|| format!("pidfd_open({pid})"))?;
    // SAFETY: the kernel just gave us this descriptor; we own it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// pidfd_send_signal(2): kill() aimed through a pidfd. ESRCH once that
/// process has ended, even if a newcomer has its pid.
pub fn pidfd_send_signal(pidfd: &OwnedFd, signo: libc::c_int) -> nix::Result<()> {
    // SAFETY: a valid descriptor, a signal number, no siginfo, flags 0.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signo,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(rc).map(drop)
}

/// poll(2) on a pidfd: it becomes readable (POLLIN) when the process
/// exits, before anyone reaps it. False if it is still running after
/// `timeout` (zero: just look).
pub fn pidfd_exited(pidfd: &OwnedFd, timeout: Duration) -> Result<bool> {
    let ms =
        PollTimeout::try_from(timeout.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::NONE);
    loop {
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(n) => return Ok(n > 0),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("poll(pidfd)"),
        }
    }
}
// ANCHOR_END: pidfd

// ---------------------------------------------------------------------------
// Roles
// ---------------------------------------------------------------------------

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
    // What each conventionally means; a program is free to do otherwise.
    line.push_str(match r.signo {
        libc::SIGHUP => ": the terminal hung up; a daemon would reload its configuration",
        libc::SIGINT => ": Ctrl-C, interrupt from the keyboard",
        libc::SIGQUIT => ": Ctrl-\\, quit (its default action also dumps core); here only counted",
        libc::SIGTERM => ": the polite request to end, kill's default",
        _ => "",
    });
    if is_stop(r.signo) {
        // Always shown, even with --quiet: it explains why the run ends.
        say.step(format!("{line}: asked to stop"));
    } else {
        say.message(line);
    }
}

pub fn receiver(opts: &Options) -> Result<()> {
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
                 reach a newcomer (the tour, step 15, shows both)",
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

pub fn sender(pid: i32, signo: libc::c_int, value: Option<i32>, opts: &Options) -> Result<()> {
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
