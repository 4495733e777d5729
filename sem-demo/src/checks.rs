//! What is not the mechanism: the story's forked children (fork, reaping,
//! PR_SET_PDEATHSIG, stopping them on Ctrl-C) and the checks made before
//! sem-demo uses or removes an object it did not just create (owner,
//! shape, magic). Skippable on a first reading; the mechanism files call
//! these where a defence has to stay inline.

use std::sync::atomic::Ordering;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::cleanup::{check_stop, stop_requested};
use common::error::{self, Interrupted};
use common::peer::PeerExit;
use common::psem::{self, OpenError};
use common::report::{Narrator, Stream};
use common::sysv_sem::SemSet;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::shm_open;
use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::{Mode, fstat};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, Uid, User, fork, geteuid, getpid, getppid};

use crate::INIT_PATIENCE;
use crate::ipc_posix::{COUNTER_MAGIC, Counter};

/// A stopped child gets this long to exit by itself before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// The story's forked children
// ---------------------------------------------------------------------------

/// A forked child of the story. One that is dropped before it was reaped
/// (the parent failed, or was stopped) is stopped and reaped: no child
/// outlives a step of the story.
pub struct Child {
    pub pid: Pid,
    pub reaped: bool,
    /// How it ended, once reaped (a pid can be waited for only once).
    exit: Option<PeerExit>,
}

/// Fork a child that runs `work` and exits: 0 if it succeeded, 128+N if a
/// stop signal N ended it, 1 for any other error (printed on stderr).
pub fn fork_child(work: impl FnOnce() -> Result<()>) -> Result<Child> {
    let parent = getpid();
    // SAFETY: sem-demo is single-threaded: the child may do anything.
    match unsafe { fork() }.context("fork()")? {
        ForkResult::Child => {
            let code = child_main(parent, work);
            // exit, not return: the rest of main belongs to the parent.
            std::process::exit(code);
        }
        ForkResult::Parent { child } => Ok(Child {
            pid: child,
            reaped: false,
            exit: None,
        }),
    }
}

fn child_main(parent: Pid, work: impl FnOnce() -> Result<()>) -> i32 {
    let say = Narrator::new(format!("child {}", getpid()), false, Stream::Stderr);
    // If the parent dies (SIGKILL, a second Ctrl-C), the kernel sends us
    // SIGKILL: no worker outlives the story. The parent may already have
    // died before this call, and then no signal will ever come: getppid()
    // no longer names it (we were re-parented), so we leave at once.
    if let Err(e) = set_pdeathsig(Signal::SIGKILL) {
        say.step(format!("prctl(PR_SET_PDEATHSIG): {e}"));
        return 1;
    }
    if getppid() != parent {
        return 1;
    }
    // A panic must not unwind out of here: above us is the parent's code,
    // whose destructors would remove the parent's semaphores.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    match result {
        Err(_) => 101,
        Ok(Ok(())) => 0,
        Ok(Err(e)) => match error::find_in_chain::<Interrupted>(&e) {
            Some(Interrupted(signal)) => 128 + *signal as i32,
            None => {
                say.step(format!("error: {e:#}"));
                1
            }
        },
    }
}

impl Child {
    /// Has it ended? Reaps it if so.
    pub fn try_wait(&mut self) -> Result<Option<PeerExit>> {
        if self.reaped {
            return Ok(self.exit);
        }
        let exit = match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => PeerExit::Exited(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => PeerExit::Killed(signal),
            // Still running (or stopped, continued: not an end).
            Ok(_) | Err(Errno::EINTR) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("waitpid({})", self.pid)),
        };
        self.reaped = true;
        self.exit = Some(exit);
        Ok(Some(exit))
    }

    /// Wait for it to end, at most `timeout` (then SIGKILL). A stop signal
    /// ends the wait at once with `Interrupted`; dropping the child then
    /// stops it.
    pub fn wait(&mut self, timeout: Duration) -> Result<PeerExit> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.try_wait()? {
                return Ok(exit);
            }
            check_stop()?;
            if Instant::now() >= deadline {
                stop_all(std::slice::from_mut(self), Signal::SIGKILL);
                return Ok(PeerExit::TimedOut);
            }
            sleep(Duration::from_millis(2));
        }
    }
}

/// Stop every child not yet reaped: send `signal` to all, give them
/// STOP_GRACE together to end by themselves, then SIGKILL the rest (a
/// SIGSTOPped child handles nothing, but SIGKILL ends it too); reap all.
pub fn stop_all(children: &mut [Child], signal: Signal) {
    for child in children.iter().filter(|c| !c.reaped) {
        let _ = kill(child.pid, signal);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        let mut running = false;
        for child in children.iter_mut().filter(|c| !c.reaped) {
            running |= matches!(child.try_wait(), Ok(None));
        }
        if !running {
            return;
        }
        sleep(Duration::from_millis(2));
    }
    for child in children.iter_mut().filter(|c| !c.reaped) {
        let _ = kill(child.pid, Signal::SIGKILL);
        let _ = waitpid(child.pid, None);
        child.reaped = true;
        child.exit = Some(PeerExit::Killed(Signal::SIGKILL));
    }
}

/// The signal to pass on to children we stop: the one that stopped us
/// (`kill PARENT` reaches only the parent, not its children), else SIGTERM.
fn stop_signal() -> Signal {
    stop_requested().unwrap_or(Signal::SIGTERM)
}

impl Drop for Child {
    fn drop(&mut self) {
        stop_all(std::slice::from_mut(self), stop_signal());
    }
}

/// The story's workers; dropping them stops all those still running at
/// once (one grace period for all, not one each).
pub struct Workers(pub Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        stop_all(&mut self.0, stop_signal());
    }
}

// ---------------------------------------------------------------------------
// Small helpers of the narration
// ---------------------------------------------------------------------------

/// A duration for the narration: ms below 10 ms, else s.
pub fn secs(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.3} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.3} s", d.as_secs_f64())
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process, so
/// workers can stamp shared memory with it.
pub fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

// ---------------------------------------------------------------------------
// Before using or removing an object we did not just create
// ---------------------------------------------------------------------------

/// "nobody (uid 65534)".
pub fn whose(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("{} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
    }
}

/// Who we are: the effective uid, by name.
pub fn me() -> String {
    whose(geteuid().as_raw())
}

/// Wait (at most INIT_PATIENCE) for a counter's creator to write the
/// magic, then check it. Skippable on a first reading: hardening.
pub fn check_magic(counter: &Counter, what: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        match counter.magic.load(Ordering::Acquire) {
            COUNTER_MAGIC => return Ok(()),
            0 if start.elapsed() < INIT_PATIENCE => {}
            0 => bail!(
                "{what} was never set up (no magic number after {} s): its creator died half-way? \
                 'sem-demo remove' (or 'sem-demo sysv remove') removes it",
                INIT_PATIENCE.as_secs()
            ),
            other => bail!(
                "{what} is not a sem-demo counter (magic {other:#018x}): another program's \
                 object under the same name, refusing to use it"
            ),
        }
        check_stop()?;
        sleep(Duration::from_millis(5));
    }
}

/// What a failed `sem_open` means, with the fix.
pub fn open_hint(name: &str, e: Errno) -> anyhow::Error {
    match e {
        Errno::ENOENT => anyhow::anyhow!(
            "sem_open({name}): no such semaphore; create it with 'sem-demo wait --name {name}' \
             or 'sem-demo worker --name {name}'"
        ),
        Errno::EACCES => anyhow::anyhow!(
            "sem_open({name}): permission denied (EACCES): {} belongs to another user (mode 0600)",
            psem::sem_path(name)
        ),
        Errno::ELOOP => anyhow::anyhow!(
            "{} is a symbolic link, not a semaphore: refusing to follow it",
            psem::sem_path(name)
        ),
        e => anyhow::Error::new(e).context(format!("sem_open({name})")),
    }
}

/// Explain why an existing semaphore was refused.
pub fn refused(name: &str, e: OpenError) -> anyhow::Error {
    match e {
        OpenError::Sys(e) => open_hint(name, e),
        OpenError::Foreign { path, uid } => anyhow::anyhow!(
            "{path} belongs to {}, not to you, {}: sem-demo only uses its own semaphores, so it \
             leaves this one alone",
            whose(uid),
            me()
        ),
        e @ OpenError::NotASemaphore { .. } => anyhow::anyhow!("{e}"),
    }
}

/// Refuse a set that is not ours or not sem-demo's shape (one semaphore).
/// Skippable on a first reading: hardening.
pub fn check_set(set: SemSet, key: libc::key_t) -> Result<()> {
    let st = set.stat().context("semctl(IPC_STAT)")?;
    // The creator too: an owner can hand a set to us with IPC_SET, yet its
    // creator may still change or remove it at will.
    if st.uid != geteuid().as_raw() || st.cuid != geteuid().as_raw() {
        bail!(
            "semid {} (key {key:#010x}) belongs to {} and was created by {}, not by you, {}: \
             sem-demo leaves it alone",
            set.id,
            whose(st.uid),
            whose(st.cuid),
            me()
        );
    }
    if st.nsems != 1 {
        bail!(
            "semid {} (key {key:#010x}) has {} semaphores, sem-demo's sets have 1: another \
             program's set under the same key, refusing to use it",
            set.id,
            st.nsems
        );
    }
    Ok(())
}

/// `shmctl(IPC_STAT)`: (owner uid, size).
fn shm_owner_size(id: libc::c_int) -> Result<(u32, usize)> {
    // SAFETY: an all-zero shmid_ds is a valid value (integers only).
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one shmid_ds through the valid pointer.
    Errno::result(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) })
        .context("shmctl(IPC_STAT)")?;
    // An owner who is not the creator was handed the segment (IPC_SET):
    // the creator can still change or remove it; count it as theirs.
    let uid = if ds.shm_perm.cuid != ds.shm_perm.uid {
        ds.shm_perm.cuid
    } else {
        ds.shm_perm.uid
    };
    Ok((uid, ds.shm_segsz))
}

/// Refuse a segment that is not ours or not a Counter's size.
pub fn check_segment(id: libc::c_int) -> Result<()> {
    let (uid, size) = shm_owner_size(id)?;
    if uid != geteuid().as_raw() {
        bail!(
            "shmid {id} belongs to {}, not to you, {}: sem-demo leaves it alone",
            whose(uid),
            me()
        );
    }
    if size != size_of::<Counter>() {
        bail!(
            "shmid {id} is {size} bytes, where sem-demo's counter is {}: another program's \
             segment under the same key, refusing to use it",
            size_of::<Counter>()
        );
    }
    Ok(())
}

/// Before `shm_unlink`: is `name` there, ours, and a counter (also a
/// half-made one, size 0 or no magic yet, left by a killed worker)?
/// Ok(false): there is none. Skippable on a first reading: hardening.
pub fn counter_removable(name: &str) -> Result<bool> {
    use std::io::Read;
    let path = format!("/dev/shm{name}");
    let fd = match shm_open(name, OFlag::O_RDONLY, Mode::empty()) {
        Err(Errno::ENOENT) => return Ok(false),
        other => other.with_context(|| format!("shm_open({name}, O_RDONLY)"))?,
    };
    let st = fstat(&fd).with_context(|| format!("fstat({path})"))?;
    if st.st_uid != geteuid().as_raw() {
        bail!(
            "{path} belongs to {}, not to you, {}: sem-demo leaves it alone",
            whose(st.st_uid),
            me()
        );
    }
    let len = size_of::<Counter>() as libc::off_t;
    let mut magic = [0u8; 8];
    let ok = st.st_mode & libc::S_IFMT == libc::S_IFREG
        && (st.st_size == 0
            || (st.st_size == len
                && std::fs::File::from(fd).read_exact(&mut magic).is_ok()
                && matches!(u64::from_ne_bytes(magic), 0 | COUNTER_MAGIC)));
    if !ok {
        bail!(
            "{path} is not a sem-demo counter ({} bytes): another program's object under the \
             same name, left alone",
            st.st_size
        );
    }
    Ok(true)
}
