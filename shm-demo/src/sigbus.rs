//! SIGBUS (and glibc's abort) while a segment is mapped: say what happened,
//! remove what is ours, exit 1. A first reading may skip this file.
//!
//! A mapping is a window onto an object; it does not keep the object's
//! size. If another process shrinks the object (`truncate -s 0
//! /dev/shm/NAME`, `ftruncate`), the pages past the new end are gone, and
//! the next load or store there is not an error code but a signal: SIGBUS.
//! A full tmpfs does the same to a page touched for the first time (which
//! is why `posix.rs` reserves the pages with `posix_fallocate`).
//!
//! No check before a load can prevent it: the truncation can happen
//! between the check and the load. The real cure is memory the other side
//! cannot shrink: `memfd_create` + `fcntl(F_ADD_SEALS, F_SEAL_SHRINK)`,
//! passed over a Unix socket (`SCM_RIGHTS`, see socket-demo). Here we can
//! only end well.
//!
//! The handler runs in the middle of whatever the program was doing (maybe
//! inside `malloc`), so it uses only async-signal-safe calls on data
//! prepared beforehand: `write`, `stat`, `unlink`, `shmctl`/`semctl`
//! (single system calls), `kill`, `_exit`.

use std::ffi::{CString, c_void};
use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

use anyhow::{Context, Result};
use nix::errno::Errno;

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
