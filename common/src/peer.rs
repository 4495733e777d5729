//! The other process: start it, wait for it (never forever), describe how
//! it ended.
//!
//! Two ways to get a peer:
//! - `fork()`, written out in the demo itself, when the mechanism needs a
//!   related process (an anonymous pipe is only inherited); wait for it
//!   with [`wait_pid`].
//! - [`Peer::spawn_self`]: a fresh run of this same program with a role,
//!   when the mechanism works between unrelated processes (FIFO, queues,
//!   shm, sockets). A `Peer` that is dropped while still running (the
//!   parent failed or was interrupted) is stopped and reaped, so no process
//!   is orphaned.
//!
//! Waits take a timeout: a peer that hangs is killed and reported, so a
//! demo never hangs with it. They also end on Ctrl-C
//! ([`cleanup::stop_requested`](crate::cleanup::stop_requested)).

use std::fmt;
use std::process::{Child, Command, ExitStatus};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// How often a wait with a timeout looks at the child again.
const POLL: Duration = Duration::from_millis(5);

/// How a peer process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerExit {
    /// It called `exit(code)` or returned from `main`.
    Exited(i32),
    /// A signal ended it (`WIFSIGNALED`; `WTERMSIG` is the signal).
    Killed(Signal),
    /// It was still running at the deadline; we killed it with SIGKILL.
    TimedOut,
}

impl PeerExit {
    pub fn success(self) -> bool {
        self == PeerExit::Exited(0)
    }
}

impl fmt::Display for PeerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerExit::Exited(code) => write!(f, "exited with status {code}"),
            PeerExit::Killed(signal) => write!(f, "was killed by {signal}"),
            PeerExit::TimedOut => f.write_str("did not finish in time and was killed"),
        }
    }
}

impl From<ExitStatus> for PeerExit {
    fn from(status: ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => PeerExit::Exited(code),
            (None, Some(n)) => {
                Signal::try_from(n).map_or(PeerExit::Exited(128 + n), PeerExit::Killed)
            }
            (None, None) => PeerExit::Exited(-1),
        }
    }
}

/// A child process running another role of this program.
#[derive(Debug)]
pub struct Peer {
    child: Child,
    /// Until reaped, a second Ctrl-C sends it SIGTERM (see `cleanup`).
    entry: Option<crate::cleanup::Registration>,
}

impl Peer {
    /// Start this program again with `args` (e.g. `["receiver", "--path",
    /// p]`), sharing our stdin, stdout and stderr. The child gets SIGTERM if
    /// we die first (`PR_SET_PDEATHSIG`; it fires when the thread that
    /// spawned it ends, so spawn from the main thread).
    pub fn spawn_self<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> anyhow::Result<Peer> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().context("current_exe()")?;
        let parent = std::process::id() as libc::pid_t;
        let mut command = Command::new(&exe);
        command.args(args);
        // SAFETY: between fork and exec the closure makes only
        // async-signal-safe calls (prctl, getppid, _exit).
        unsafe {
            command.pre_exec(move || {
                // If we die (even by SIGKILL, which runs no destructor), the
                // kernel sends the child SIGTERM, and it cleans up and ends:
                // no peer outlives its story.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                // We may have died before prctl: then it never fires.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("spawn({})", exe.display()))?;
        let entry = Some(crate::cleanup::Registration::child(child.id() as i32));
        Ok(Peer { child, entry })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How it ended, if it has (without waiting).
    pub fn try_wait(&mut self) -> anyhow::Result<Option<PeerExit>> {
        let pid = self.child.id();
        let status = self
            .child
            .try_wait()
            .with_context(|| format!("waitpid({pid})"))?;
        if status.is_some() {
            // Reaped: the pid is free for reuse, so forget it.
            self.entry = None;
        }
        Ok(status.map(PeerExit::from))
    }

    /// Wait for it to end, at most `timeout` (`None`: as long as it runs).
    /// Returns `Interrupted` if we are asked to stop meanwhile; dropping
    /// the `Peer` then stops the child too.
    pub fn wait(&mut self, timeout: Option<Duration>) -> anyhow::Result<PeerExit> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(exit) = self.try_wait()? {
                return Ok(exit);
            }
            crate::cleanup::check_stop()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.kill_and_reap();
                return Ok(PeerExit::TimedOut);
            }
            sleep(POLL);
        }
    }

    /// True if the child ends (and is reaped) within `timeout`.
    fn exits_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(POLL);
        }
    }

    fn kill_and_reap(&mut self) {
        // SIGKILL cannot be caught: the child ends now, then we reap it so
        // that it does not stay a zombie.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return; // already ended and reaped
        }
        // After Ctrl-C the child most likely got the same signal (a
        // terminal signals the whole process group) and is cleaning up: a
        // SIGTERM now would be its second stop signal, which ends it at
        // once. Give it a moment to finish on its own first.
        if crate::cleanup::stop_requested().is_some() && self.exits_within(Duration::from_secs(2)) {
            return;
        }
        // Ask politely first, so the child can clean up its own objects;
        // SIGKILL if it has not finished within a few seconds.
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        if !self.exits_within(Duration::from_secs(5)) {
            self.kill_and_reap();
        }
    }
}

/// Is process `pid` still running? A pid read from shared memory is
/// untrusted: 0 or a negative number would make `kill` address a whole
/// process group (or every process), so those are "not running".
/// A zombie (exited, not yet reaped by its parent) counts as not running.
pub fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // Signal 0: existence and permission check only, nothing is sent.
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    // /proc/PID/stat: "PID (comm) STATE ..."; comm may contain spaces and
    // parentheses, so the state is the first field after the last ')'.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false, // gone between kill and read
    }
}

/// A process watched through a pidfd (`pidfd_open`, Linux 5.3+).
///
/// A bare pid can lie: once the process exits and is reaped, the kernel may
/// give its number to a new, unrelated process, and `kill(pid, 0)` then
/// answers for that one. A pidfd refers to one process for as long as it is
/// open and becomes readable when that process exits. Open it while the pid
/// is known to be the peer (right after a handshake, or for a child we
/// started); [`alive`](Self::alive) then answers for that process only.
/// On kernels without `pidfd_open` (ENOSYS) it falls back to [`alive`]'s
/// pid check, and [`fallback`](Self::fallback) says so for the narration.
#[derive(Debug)]
pub struct PidWatch {
    pid: i32,
    fd: Option<std::os::fd::OwnedFd>,
}

impl PidWatch {
    /// Watch `pid`, which must be running now.
    pub fn open(pid: i32) -> anyhow::Result<PidWatch> {
        use std::os::fd::FromRawFd;
        if pid <= 0 {
            anyhow::bail!("pidfd_open({pid}): not a process id");
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
        // nix 0.32 has no wrapper for it.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        match Errno::result(fd) {
            Ok(fd) => Ok(PidWatch {
                pid,
                // SAFETY: the kernel just returned this fd and nobody else owns it.
                fd: Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }),
            }),
            Err(Errno::ENOSYS) if alive(pid) => Ok(PidWatch { pid, fd: None }),
            Err(Errno::ENOSYS | Errno::ESRCH) => {
                anyhow::bail!("pidfd_open({pid}): no such process")
            }
            Err(e) => Err(e).with_context(|| format!("pidfd_open({pid})")),
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Has the watched process not exited yet? (A zombie has exited.)
    pub fn alive(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, poll};
        use std::os::fd::AsFd;
        let Some(fd) = &self.fd else {
            return alive(self.pid);
        };
        // A pidfd polls readable once its process has exited; a zero
        // timeout asks without waiting.
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        loop {
            match poll(&mut fds, 0u8) {
                Ok(0) => return true,
                Ok(_) => return false,
                Err(Errno::EINTR) => continue,
                Err(_) => return alive(self.pid),
            }
        }
    }

    /// A note for the narration when there is no pidfd on this kernel.
    pub fn fallback(&self) -> Option<&'static str> {
        self.fd.is_none().then_some(
            "pidfd_open is missing (Linux before 5.3): checking the pid with kill(pid, 0), \
             which a reused pid can fool",
        )
    }
}

/// Watches whichever process a changing pid names: a queue's last
/// receiver (`msg_lrpid`), a lock's recorded holder. The first time a pid
/// is seen, its pidfd is opened; from then on the answer is about that
/// process, even after the number is reused by another one. A new pid
/// (another receiver, another holder) opens a new pidfd.
///
/// The first look at a pid is still a pid check (the process the number
/// names at that moment); what the pidfd closes is the window between
/// looks, which is where a waiter that checks every tick spends its time.
#[derive(Debug, Default)]
pub struct PidTracker {
    watch: Option<PidWatch>,
}

impl PidTracker {
    pub fn new() -> PidTracker {
        PidTracker::default()
    }

    /// Is the process that `pid` named when we first saw it still running?
    /// 0 and negative numbers (untrusted, from shared memory) are not.
    pub fn alive(&mut self, pid: i32) -> bool {
        if pid <= 0 {
            return false;
        }
        if let Some(watch) = self.watch.as_ref().filter(|w| w.pid() == pid) {
            return watch.alive();
        }
        // pidfd_open fails with ESRCH when nobody has the number (any more).
        match PidWatch::open(pid) {
            Ok(watch) => {
                let alive = watch.alive();
                self.watch = Some(watch);
                alive
            }
            Err(_) => {
                self.watch = None;
                false
            }
        }
    }

    /// The pid this tracker watches now, if any.
    pub fn pid(&self) -> Option<i32> {
        self.watch.as_ref().map(PidWatch::pid)
    }
}

/// A note for the narration when this kernel has no `pidfd_open` (before
/// Linux 5.3), so liveness checks fall back to `kill(pid, 0)`; `None` on
/// every kernel that has it. Asked once, of our own pid.
pub fn pidfd_note() -> Option<&'static str> {
    static NOTE: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();
    *NOTE.get_or_init(|| {
        PidWatch::open(std::process::id() as i32)
            .ok()
            .and_then(|w| w.fallback())
    })
}

/// Wakes this process's blocking system calls every `period`: a SIGALRM
/// interval timer whose handler does nothing, installed without
/// SA_RESTART, so a blocked `msgrcv`, `msgsnd`, `read`... returns EINTR and
/// the caller can look at its peer (or a deadline) before waiting again.
/// Some kernel objects never tell a waiter that the other side died (a
/// message queue, for one); this is how a waiter asks. Disarmed on drop.
#[derive(Debug)]
pub struct Ticker;

extern "C" fn tick(_: libc::c_int) {}

impl Ticker {
    pub fn start(period: Duration) -> anyhow::Result<Ticker> {
        let every = libc::timeval {
            tv_sec: period.as_secs() as libc::time_t,
            tv_usec: period.subsec_micros() as libc::suseconds_t,
        };
        let timer = libc::itimerval {
            it_interval: every,
            it_value: every,
        };
        // SAFETY: an all-zero sigaction is valid (empty mask, no flags); the
        // handler does nothing, so it is async-signal-safe; `timer` is a
        // valid itimerval and the old values are not wanted.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = tick as extern "C" fn(libc::c_int) as libc::sighandler_t;
            Errno::result(libc::sigaction(
                libc::SIGALRM,
                &action,
                std::ptr::null_mut(),
            ))
            .context("sigaction(SIGALRM)")?;
            Errno::result(libc::setitimer(
                libc::ITIMER_REAL,
                &timer,
                std::ptr::null_mut(),
            ))
            .context("setitimer(ITIMER_REAL)")?;
        }
        Ok(Ticker)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        // SAFETY: a zero itimerval disarms the timer.
        unsafe {
            let zero: libc::itimerval = std::mem::zeroed();
            libc::setitimer(libc::ITIMER_REAL, &zero, std::ptr::null_mut());
        }
    }
}

/// Wait for a forked child `pid` for at most `timeout`, reaping it.
///
/// `waitpid` with `WNOHANG` asks without blocking, so we can give up at the
/// deadline; a blocking `waitpid` would wait as long as the child lives.
pub fn wait_pid(pid: Pid, timeout: Duration) -> anyhow::Result<PeerExit> {
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(PeerExit::Exited(code)),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(PeerExit::Killed(signal)),
            // StillAlive, or stopped/continued (not an end): look again.
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).with_context(|| format!("waitpid({pid})")),
        }
        if Instant::now() >= deadline {
            let _ = kill(pid, Signal::SIGKILL);
            // Blocking is fine now: SIGKILL ends it promptly.
            waitpid(pid, None).with_context(|| format!("waitpid({pid})"))?;
            return Ok(PeerExit::TimedOut);
        }
        sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_signals_are_described() {
        let wait = |child| {
            Peer { child, entry: None }
                .wait(Some(Duration::from_secs(30)))
                .unwrap()
        };
        assert_eq!(
            wait(Command::new("true").spawn().unwrap()),
            PeerExit::Exited(0)
        );
        let exit = wait(Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap());
        assert_eq!(exit, PeerExit::Exited(3));
        assert_eq!(exit.to_string(), "exited with status 3");
        let exit = wait(
            Command::new("sh")
                .args(["-c", "kill -9 $$"])
                .spawn()
                .unwrap(),
        );
        assert_eq!(exit, PeerExit::Killed(Signal::SIGKILL));
        assert_eq!(exit.to_string(), "was killed by SIGKILL");
    }

    #[test]
    fn alive_sees_running_zombie_and_bogus_pids() {
        assert!(alive(std::process::id() as i32));
        assert!(!alive(0) && !alive(-1));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Exited but not reaped: a zombie, which is not alive.
        let deadline = Instant::now() + Duration::from_secs(30);
        while alive(pid) && Instant::now() < deadline {
            sleep(POLL);
        }
        assert!(!alive(pid));
        child.wait().unwrap();
        assert!(!alive(pid));
    }

    #[test]
    fn a_pid_watch_sees_its_process_exit() {
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let watch = PidWatch::open(child.id() as i32).unwrap();
        assert!(watch.alive());
        child.kill().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while watch.alive() && Instant::now() < deadline {
            sleep(POLL);
        }
        // Exited (a zombie until reaped): no longer alive.
        assert!(!watch.alive());
        child.wait().unwrap();
        assert!(!watch.alive());
        assert!(PidWatch::open(0).is_err() && PidWatch::open(-1).is_err());
    }

    #[test]
    fn a_pid_tracker_follows_a_changing_pid_and_keeps_answering_for_the_first_process() {
        let mut tracker = PidTracker::new();
        assert!(!tracker.alive(0) && !tracker.alive(-1) && tracker.pid().is_none());
        let mut first = Command::new("sleep").arg("60").spawn().unwrap();
        let mut second = Command::new("sleep").arg("60").spawn().unwrap();
        let (a, b) = (first.id() as i32, second.id() as i32);
        assert!(tracker.alive(a));
        assert_eq!(tracker.pid(), Some(a));
        // Another pid (another holder): a new pidfd for it.
        assert!(tracker.alive(b));
        assert_eq!(tracker.pid(), Some(b));
        second.kill().unwrap();
        second.wait().unwrap();
        // Exited and reaped: not alive, whoever gets the number next.
        assert!(!tracker.alive(b));
        assert!(tracker.alive(a));
        first.kill().unwrap();
        first.wait().unwrap();
        assert!(!tracker.alive(a));
        assert_eq!(pidfd_note(), None, "this kernel has pidfd_open");
    }

    #[test]
    fn a_dropped_peer_is_stopped_and_reaped() {
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        drop(Peer { child, entry: None });
        assert_eq!(waitpid(pid, Some(WaitPidFlag::WNOHANG)), Err(Errno::ECHILD));
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        let mut peer = Peer { child, entry: None };
        assert_eq!(peer.try_wait().unwrap(), None);
        assert_eq!(
            peer.wait(Some(Duration::from_millis(50))).unwrap(),
            PeerExit::TimedOut
        );
    }

    #[test]
    fn a_hanging_child_is_killed_and_reaped() {
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let exit = Peer { child, entry: None }
            .wait(Some(Duration::from_millis(100)))
            .unwrap();
        assert_eq!(exit, PeerExit::TimedOut);
        // Reaped: no zombie is left under that pid for us.
        assert_eq!(waitpid(pid, Some(WaitPidFlag::WNOHANG)), Err(Errno::ECHILD));
    }

    #[test]
    // The children are reaped by `wait_pid`, through their pid, which clippy
    // cannot see.
    #[allow(clippy::zombie_processes)]
    fn wait_pid_reaps_by_pid() {
        let child = Command::new("sh").args(["-c", "exit 4"]).spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        assert_eq!(
            wait_pid(pid, Duration::from_secs(30)).unwrap(),
            PeerExit::Exited(4)
        );
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        assert_eq!(
            wait_pid(pid, Duration::from_millis(100)).unwrap(),
            PeerExit::TimedOut
        );
    }
}
