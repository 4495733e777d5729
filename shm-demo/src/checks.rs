//! The checks and hardening around the mechanism: a first reading may skip
//! this file. Each call site in `ipc_ring.rs`, `ipc_posix.rs` and
//! `ipc_sysv.rs` says in one line which check it makes.
//!
//! Shared memory has no protection inside it: any process that can write
//! the segment can change any byte at any moment. So:
//!
//! 1. [`validate`]: a header is checked field by field before one field is
//!    believed (magic, version, slot count and size against the object's
//!    real size, the kind of semaphores);
//! 2. [`check_sem_t`]: a `sem_t` is checked before glibc sees it (glibc
//!    aborts the process on a scribbled one);
//! 3. [`PeerWatch`]: the peer's pid, read from shared memory or the
//!    kernel's records, counts only if that process maps our segment
//!    (`/proc/PID/maps`); then a pidfd watches that very process;
//! 4. [`check_owner`]: an object we did not just create is someone else's
//!    until its owner is us (also as root);
//! 5. [`guard`]: a SIGBUS (the object truncated under us) or glibc's abort
//!    ends with a sentence and our objects removed, not "Bus error".
//!
//! `peer::PidWatch` in `common` does the pidfd part for other demos; this
//! one keeps its own `PeerWatch` because it adds the maps check.

use std::ffi::{CString, c_void};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::sys::stat::fstat;
use nix::unistd::Uid;

use crate::ipc_futex::sync_name;
use crate::ipc_ring::{MAGIC, MAX_SLOT_SIZE, MAX_SLOTS, Segment, VERSION, segment_len};

// ---------------------------------------------------------------------------
// 1. The header: every field checked before it is believed
// ---------------------------------------------------------------------------

/// The sender's side: check every header field of a published segment
/// (`magic`, what `Segment::wait_published` saw) before trusting it, then
/// take its slot count and size. `what` names the segment in errors.
pub fn validate(segment: &mut Segment, magic: u64, what: &str, sync: u32) -> Result<()> {
    let size = segment.len;
    let header = segment.header();
    if magic != MAGIC {
        bail!("{what} is not a shm-demo segment (magic {magic:#018x}, expected {MAGIC:#018x})");
    }
    let version = header.version.load(Ordering::Relaxed);
    if version != VERSION {
        bail!("{what} has layout version {version}; this program reads version {VERSION}");
    }
    // Another known kind, before the shape: the three kinds share the
    // first bytes, but not the rest (a futex segment's header is longer),
    // so say what it is rather than that its size does not match.
    let found = header.sync.load(Ordering::Relaxed);
    if found != sync && (1..=3).contains(&found) {
        bail!(
            "{what} is a {} segment, but this is the {} variant: refusing it (use the \
             matching variant of shm-demo)",
            sync_name(found),
            sync_name(sync)
        );
    }
    let slots = header.slot_count.load(Ordering::Relaxed);
    let slot_size = header.slot_size.load(Ordering::Relaxed);
    if !(1..=MAX_SLOTS).contains(&slots) || !(1..=MAX_SLOT_SIZE).contains(&slot_size) {
        bail!("{what}: header says {slots} slots of {slot_size} bytes: out of range, refusing it");
    }
    if segment_len(slots, slot_size) != size {
        bail!(
            "{what}: header says {slots} slots of {slot_size} bytes ({} bytes), but the \
             object is {size} bytes: refusing it",
            segment_len(slots, slot_size)
        );
    }
    if found != sync {
        bail!("{what} has an unknown sync kind {found}: refusing it");
    }
    segment.slot_count = slots as usize;
    segment.slot_size = slot_size as usize;
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. The sem_t guard
// ---------------------------------------------------------------------------

/// Refuse to hand glibc a `sem_t` that another process has scribbled on.
///
/// glibc trusts a `sem_t`'s bytes: the word after the counter (`private`)
/// becomes part of the futex operation code. Garbage there makes the
/// kernel answer ENOSYS ("no such futex operation"), which glibc takes for
/// its own bug: it prints "The futex facility returned an unexpected error
/// code." and aborts the process. So before each call we compare that
/// word with what `sem_init(pshared = 1)` writes on this C library. A peer
/// rewriting it *between* our check and glibc's read is beyond any check:
/// that is the trust boundary of shared memory (see main.rs).
pub fn check_sem_t(sem: *mut libc::sem_t) -> Result<()> {
    let Some(expected) = fresh_private_word() else {
        return Ok(()); // not glibc: no known layout to check
    };
    // SAFETY: `sem` points into a live mapping at a sem_t (the contract of
    // posix_sems); the word lies inside it; an atomic load is sound even
    // while another process writes the memory.
    let found = unsafe {
        (*sem.cast::<u8>().add(PRIVATE_OFFSET).cast::<AtomicU32>()).load(Ordering::Relaxed)
    };
    if found != expected {
        bail!(
            "a sem_t in the segment has been overwritten by another process (its private \
             word is {found:#x}, sem_init wrote {expected:#x}): refusing to pass it to glibc, \
             which would abort"
        );
    }
    Ok(())
}

/// Where glibc keeps `private` in a `sem_t`: after the 64-bit counter
/// (after value on 32-bit targets).
const PRIVATE_OFFSET: usize = if cfg!(target_pointer_width = "64") {
    8
} else {
    4
};

/// The `private` word of a fresh process-shared semaphore, learnt once by
/// `sem_init` on a local `sem_t` (glibc only).
fn fresh_private_word() -> Option<u32> {
    if !cfg!(target_env = "gnu") {
        return None;
    }
    static WORD: OnceLock<Option<u32>> = OnceLock::new();
    *WORD.get_or_init(|| {
        let mut sem = std::mem::MaybeUninit::<libc::sem_t>::zeroed();
        // SAFETY: a local, zeroed, aligned sem_t that nobody else sees; it is
        // destroyed before it goes out of scope.
        unsafe {
            if libc::sem_init(sem.as_mut_ptr(), 1, 0) != 0 {
                return None;
            }
            let word = sem
                .as_ptr()
                .cast::<u8>()
                .add(PRIVATE_OFFSET)
                .cast::<u32>()
                .read_unaligned();
            libc::sem_destroy(sem.as_mut_ptr());
            Some(word)
        }
    })
}

// ---------------------------------------------------------------------------
// 3. Liveness that does not rest on a pid read from shared memory
// ---------------------------------------------------------------------------

/// How to recognise our segment in a process's `/proc/PID/maps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapsId {
    /// A POSIX object: the device and inode of `/dev/shm/NAME`.
    File { dev: u64, ino: u64 },
    /// A System V segment: maps shows `/SYSV<key>` with the shmid as inode.
    SysV { shmid: i32 },
}

/// Does process `pid` map our segment? The kernel's own list of a
/// process's mappings: a pid forged into the header names some process,
/// but not one that maps this object.
pub fn maps_segment(pid: i32, id: MapsId) -> std::io::Result<bool> {
    if pid <= 0 {
        return Ok(false);
    }
    let maps = match std::fs::read_to_string(format!("/proc/{pid}/maps")) {
        // No such process (any more): it maps nothing.
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ESRCH) =>
        {
            return Ok(false);
        }
        other => other?,
    };
    Ok(maps.lines().any(|line| {
        // start-end perms offset major:minor inode path
        let mut fields = line.split_whitespace();
        let (Some(dev), Some(inode)) = (fields.nth(3), fields.next()) else {
            return false;
        };
        let path = fields.next().unwrap_or("");
        let inode: u64 = inode.parse().unwrap_or(0);
        match id {
            MapsId::File { dev: want, ino } => {
                let want = format!("{:02x}:{:02x}", libc::major(want), libc::minor(want));
                inode == ino && dev == want
            }
            MapsId::SysV { shmid } => path.starts_with("/SYSV") && inode == shmid as u64,
        }
    }))
}

/// The peer, watched through a pidfd: a descriptor for *that* process,
/// which becomes readable when it exits. Unlike a pid, it cannot come to
/// name another process later (pids are reused).
#[derive(Debug)]
pub struct PeerWatch {
    role: &'static str,
    pid: i32,
    /// `None`: the peer could not be confirmed (see `lost`).
    pidfd: Option<OwnedFd>,
    /// Why the peer counts as gone from the start.
    lost: Option<String>,
}

impl PeerWatch {
    /// The handshake: `pid` (read from the header or from the kernel's
    /// records) counts as our peer only if it maps our segment. Checked
    /// again after `pidfd_open`, so the pidfd is for a process that did.
    pub fn attach(role: &'static str, pid: i32, id: MapsId) -> Result<PeerWatch> {
        let maps = |pid| maps_segment(pid, id);
        match maps(pid) {
            Ok(true) => {}
            Ok(false) => bail!(
                "pid {pid}, named as the {role}, does not map this segment (a forged header, \
                 or a {role} that is gone): refusing to trust it"
            ),
            Err(e) => bail!(
                "pid {pid}, named as the {role}: its /proc/{pid}/maps cannot be read ({e}), so \
                 nothing confirms it maps this segment: refusing to trust it"
            ),
        }
        // SAFETY: pidfd_open takes a pid and flags, no pointers.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let e = Errno::last();
            if e == Errno::ESRCH {
                bail!("the {role} (pid {pid}) exited");
            }
            return Err(e).with_context(|| format!("pidfd_open({pid})"));
        }
        // SAFETY: a descriptor pidfd_open just returned, owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        if !maps(pid).unwrap_or(false) {
            bail!("the {role} (pid {pid}) exited");
        }
        Ok(PeerWatch {
            role,
            pid,
            pidfd: Some(pidfd),
            lost: None,
        })
    }

    /// Like `attach`, but a peer that cannot be confirmed is not an error
    /// yet: it counts as gone, which matters only if we ever have to wait
    /// for it. (A fast sender may have written everything, end marker
    /// included, and exited before the receiver looked.)
    pub fn attach_or_gone(role: &'static str, pid: i32, id: MapsId) -> PeerWatch {
        PeerWatch::attach(role, pid, id).unwrap_or_else(|e| PeerWatch {
            role,
            pid,
            pidfd: None,
            lost: Some(format!("{e:#}")),
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Why the peer is gone, or `None` while it runs.
    pub fn gone(&self) -> Option<String> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let Some(pidfd) = &self.pidfd else {
            return self.lost.clone();
        };
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) | Err(Errno::EINTR) => None,
            _ => Some(format!("the {} (pid {}) exited", self.role, self.pid)),
        }
    }
}

// ---------------------------------------------------------------------------
// 4. Whose object is it?
// ---------------------------------------------------------------------------

/// "uid 65534 (nobody)", for refusals.
pub fn who(uid: u32) -> String {
    match nix::unistd::User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("uid {uid} ({})", user.name),
        _ => format!("uid {uid}"),
    }
}

/// An object we did not just create is someone else's until its owner is
/// us: refuse it otherwise (also as root, who could open anything).
pub fn check_owner(name: &str, fd: &OwnedFd, doing: &str) -> Result<()> {
    let owner = fstat(fd.as_fd()).context("fstat")?.st_uid;
    let me = Uid::effective().as_raw();
    if owner != me {
        bail!(
            "shared memory {name} belongs to {}, not to you ({}): refusing to {doing} it; \
             choose another --name",
            who(owner),
            who(me)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. SIGBUS (and glibc's abort) while a segment is mapped: say what
// happened, remove what is ours, exit 1.
//
// A mapping is a window onto an object; it does not keep the object's
// size. If another process shrinks the object (`truncate -s 0
// /dev/shm/NAME`, `ftruncate`), the pages past the new end are gone, and
// the next load or store there is not an error code but a signal: SIGBUS.
// A full tmpfs does the same to a page touched for the first time (which
// is why `ipc_posix.rs` reserves the pages with `posix_fallocate`).
//
// No check before a load can prevent it: the truncation can happen
// between the check and the load. The real cure is memory the other side
// cannot shrink: `memfd_create` + `fcntl(F_ADD_SEALS, F_SEAL_SHRINK)`,
// passed over a Unix socket (`SCM_RIGHTS`, see socket-demo). Here we can
// only end well.
//
// The handler runs in the middle of whatever the program was doing (maybe
// inside `malloc`), so it uses only async-signal-safe calls on data
// prepared beforehand: `write`, `stat`, `unlink`, `shmctl`/`semctl`
// (single system calls), `kill`, `_exit`.
// ---------------------------------------------------------------------------

/// What the handler removes: only objects this process owns.
#[derive(Debug)]
pub enum Cleanup {
    /// The sender: the segment is the receiver's.
    Nothing,
    /// A POSIX receiver: unlink `/dev/shm/NAME` if it is still our object.
    Unlink { path: CString, dev: u64, ino: u64 },
    /// A System V receiver: IPC_RMID the segment and the semaphore set.
    SysV { shmid: i32, semid: i32 },
}

/// Everything the handler needs, prepared before it is installed.
#[derive(Debug)]
struct State {
    start: usize,
    end: usize,
    bus_message: Vec<u8>,
    abort_message: Vec<u8>,
    killed_message: Vec<u8>,
    removed_message: Vec<u8>,
    cleanup: Cleanup,
}

/// Set once (leaked), read by the handler with Acquire: it sees the whole
/// `State` written before the pointer was published.
static STATE: AtomicPtr<State> = AtomicPtr::new(std::ptr::null_mut());
/// A child to stop on the way out (the story's sender), or 0.
static CHILD: AtomicI32 = AtomicI32::new(0);

/// Catch SIGBUS for faults inside `start..start + len` (the mapping of the
/// segment called `what`), and SIGABRT, and end with a message and
/// `cleanup` instead of "Bus error" and a leaked object.
pub fn guard(what: &str, start: *const c_void, len: usize, cleanup: Cleanup) -> Result<()> {
    let removed = match &cleanup {
        Cleanup::Nothing => String::new(),
        Cleanup::Unlink { path, .. } => format!(
            "shm-demo: removed {} (ours) on the way out\n",
            path.to_string_lossy()
        ),
        Cleanup::SysV { shmid, semid } => {
            format!("shm-demo: removed shmid {shmid} and semid {semid} (ours) on the way out\n")
        }
    };
    let state = Box::new(State {
        start: start as usize,
        end: start as usize + len,
        bus_message: format!(
            "shm-demo: error: SIGBUS touching the shared segment {what}: its page has no memory \
             behind it. Another process truncated the object under us (e.g. truncate -s 0), or \
             the tmpfs behind it is full. A mapping cannot stop the object from shrinking; \
             sealed memory can (memfd_create + F_SEAL_SHRINK, the fd passed with SCM_RIGHTS \
             as socket-demo shows)\n"
        )
        .into_bytes(),
        abort_message: format!(
            "shm-demo: error: the C library aborted (SIGABRT) while {what} was in use: glibc \
             aborts when a futex call on a sem_t fails with EFAULT or ENOSYS, i.e. when another \
             process truncated the segment or overwrote a sem_t in it\n"
        )
        .into_bytes(),
        killed_message: b"shm-demo: stopped by SIGABRT from another process\n".to_vec(),
        removed_message: removed.into_bytes(),
        cleanup,
    });
    // Leaked on purpose: a handler may run at any moment until exit, so
    // the State must never be freed. (A second guard replaces the first.)
    STATE.store(Box::into_raw(state), Ordering::Release);
    for signal in [libc::SIGBUS, libc::SIGABRT] {
        // SAFETY: an all-zero sigaction is valid (empty mask); the handler
        // only makes async-signal-safe calls on the prepared State.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fault as Handler as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO;
            Errno::result(libc::sigaction(signal, &action, std::ptr::null_mut()))
                .with_context(|| format!("sigaction({signal})"))?;
        }
    }
    Ok(())
}

/// Stop `pid` too if the handler runs (the story's sender child).
pub fn stop_child_too(pid: u32) {
    CHILD.store(pid as i32, Ordering::Release);
}

type Handler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void);

fn write_stderr(bytes: &[u8]) {
    // SAFETY: write(2) on fd 2 with a valid buffer; async-signal-safe.
    unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}

extern "C" fn on_fault(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut c_void) {
    let state = STATE.load(Ordering::Acquire);
    // SAFETY: the kernel passes a valid siginfo_t with SA_SIGINFO.
    let addr = unsafe { (*info).si_addr() } as usize;
    // SAFETY: a published State is never freed while installed (see guard).
    let state = match unsafe { state.as_ref() } {
        Some(state) if signal == libc::SIGABRT || (state.start..state.end).contains(&addr) => state,
        _ => {
            // A SIGBUS elsewhere is not ours to explain: restore the default
            // action; returning re-runs the faulting access, which now kills.
            // SAFETY: signal(2) is async-signal-safe.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
            return;
        }
    };
    // abort() in this process signals itself; a `kill -ABRT` from outside
    // carries the sender's pid: that one is only a stop request.
    // SAFETY: siginfo_t from the kernel; getpid is async-signal-safe.
    let from_outside = signal == libc::SIGABRT && unsafe { (*info).si_pid() != libc::getpid() };
    write_stderr(match (signal, from_outside) {
        (libc::SIGBUS, _) => &state.bus_message,
        (_, false) => &state.abort_message,
        (_, true) => &state.killed_message,
    });
    let removed = match &state.cleanup {
        Cleanup::Nothing => false,
        Cleanup::Unlink { path, dev, ino } => {
            // Only if the name still is our object: a new receiver may
            // already have made a new segment under it.
            let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
            // SAFETY: stat and unlink are async-signal-safe; `path` is a
            // NUL-terminated string prepared beforehand; `st` is writable.
            unsafe {
                libc::stat(path.as_ptr(), st.as_mut_ptr()) == 0 && {
                    let st = st.assume_init();
                    st.st_dev == *dev && st.st_ino == *ino && libc::unlink(path.as_ptr()) == 0
                }
            }
        }
        Cleanup::SysV { shmid, semid } => {
            // SAFETY: IPC_RMID takes no buffer (null for shmctl, none for
            // semctl); both are single system calls.
            unsafe {
                let a = libc::shmctl(*shmid, libc::IPC_RMID, std::ptr::null_mut()) == 0;
                let b = libc::semctl(*semid, 0, libc::IPC_RMID) == 0;
                a || b
            }
        }
    };
    if removed {
        write_stderr(&state.removed_message);
    }
    let child = CHILD.load(Ordering::Acquire);
    if child > 0 {
        // SAFETY: kill(2) is async-signal-safe. SIGTERM lets it clean up.
        unsafe { libc::kill(child, libc::SIGTERM) };
    }
    // 128 + N for a stop by another process's signal, as for Ctrl-C.
    let status = if from_outside { 128 + signal } else { 1 };
    // SAFETY: _exit is async-signal-safe and skips atexit handlers and
    // destructors, which may not run inside a signal handler.
    unsafe { libc::_exit(status) };
}
