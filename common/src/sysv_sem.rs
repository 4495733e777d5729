//! System V semaphore sets, which `nix` does not wrap: small safe functions
//! over `libc`'s `ftok`, `semget`, `semctl` and `semop`/`semtimedop`.
//!
//! A System V semaphore *set* is a kernel object holding several counters,
//! named by a numeric key (often made from a path with `ftok`) and found
//! again by id. Unlike POSIX semaphores it lives in the kernel, not in your
//! memory; `semop` can change several counters of a set atomically; and
//! `SEM_UNDO` asks the kernel to reverse a process's changes when it exits.
//! The set stays until `IPC_RMID` (see `cleanup::SysvGuard`) or reboot:
//! `ipcs -s` lists them.

use std::ffi::CString;
use std::time::Duration;

use nix::errno::Errno;

use crate::psem::Wait;

// glibc provides semtimedop(2), but the libc crate does not declare it.
unsafe extern "C" {
    fn semtimedop(
        semid: libc::c_int,
        sops: *mut libc::sembuf,
        nsops: libc::size_t,
        timeout: *const libc::timespec,
    ) -> libc::c_int;
}

/// `ftok(path, project)`: a key from an existing file's inode and device
/// plus one byte, so unrelated processes can agree on a key by path.
pub fn ftok(path: &std::path::Path, project: u8) -> nix::Result<libc::key_t> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: c_path is a valid NUL-terminated string for the call's duration.
    let key = unsafe { libc::ftok(c_path.as_ptr(), libc::c_int::from(project)) };
    if key == -1 {
        Err(Errno::last())
    } else {
        Ok(key)
    }
}

/// An open semaphore set, by id. It does not remove the set when dropped:
/// use `cleanup::SysvGuard` for that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SemSet {
    pub id: libc::c_int,
}

impl SemSet {
    /// `semget(key, n, IPC_CREAT | IPC_EXCL | mode)`: a new set of `n`
    /// semaphores, failing with EEXIST rather than reuse someone's set.
    pub fn create(key: libc::key_t, n: u16, mode: u32) -> nix::Result<SemSet> {
        let flags = libc::IPC_CREAT | libc::IPC_EXCL | mode as libc::c_int;
        // SAFETY: semget takes no pointers.
        let id = unsafe { libc::semget(key, libc::c_int::from(n), flags) };
        Errno::result(id).map(|id| SemSet { id })
    }

    /// `semget(key, 0, 0)`: the existing set for `key`.
    pub fn open(key: libc::key_t) -> nix::Result<SemSet> {
        // SAFETY: semget takes no pointers.
        let id = unsafe { libc::semget(key, 0, 0) };
        Errno::result(id).map(|id| SemSet { id })
    }

    /// `semctl(SETVAL)`.
    pub fn set_value(&self, index: u16, value: i32) -> nix::Result<()> {
        // SAFETY: SETVAL passes the value as the variadic `int` argument
        // (the `val` member of union semun); no pointer is involved.
        let rc = unsafe { libc::semctl(self.id, libc::c_int::from(index), libc::SETVAL, value) };
        Errno::result(rc).map(drop)
    }

    /// `semctl(GETVAL)`: the counter now.
    pub fn value(&self, index: u16) -> nix::Result<i32> {
        self.get(index, libc::GETVAL)
    }

    /// `semctl(GETNCNT)`: how many processes wait for the counter to rise.
    pub fn waiting(&self, index: u16) -> nix::Result<i32> {
        self.get(index, libc::GETNCNT)
    }

    /// `semctl(GETPID)`: the pid of the last process to change the counter.
    pub fn last_pid(&self, index: u16) -> nix::Result<i32> {
        self.get(index, libc::GETPID)
    }

    fn get(&self, index: u16, cmd: libc::c_int) -> nix::Result<i32> {
        // SAFETY: the GET* commands take no fourth argument.
        let rc = unsafe { libc::semctl(self.id, libc::c_int::from(index), cmd) };
        Errno::result(rc)
    }

    /// `semop`/`semtimedop` on one semaphore: add `delta` (negative: take,
    /// waiting while the counter is too low, at most `timeout`). `undo`
    /// sets SEM_UNDO: the kernel reverses this change when we exit.
    pub fn op(&self, index: u16, delta: i16, undo: bool, timeout: Duration) -> nix::Result<Wait> {
        self.ops(&[(index, delta)], undo, timeout)
    }

    /// Several `(index, delta)` changes in one `semtimedop`: the kernel
    /// applies all of them at once, or waits until it can, never a part.
    pub fn ops(&self, changes: &[(u16, i16)], undo: bool, timeout: Duration) -> nix::Result<Wait> {
        let flags = if undo {
            libc::SEM_UNDO as libc::c_short
        } else {
            0
        };
        let mut sops: Vec<libc::sembuf> = changes
            .iter()
            .map(|&(sem_num, sem_op)| libc::sembuf {
                sem_num,
                sem_op,
                sem_flg: flags,
            })
            .collect();
        let timeout = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `sops` holds `sops.len()` valid sembufs and `timeout` is
        // a valid timespec, both alive for the call.
        let rc = unsafe { semtimedop(self.id, sops.as_mut_ptr(), sops.len(), &timeout) };
        match Errno::result(rc) {
            Ok(_) => Ok(Wait::Acquired),
            Err(Errno::EAGAIN) => Ok(Wait::TimedOut),
            Err(Errno::EINTR) => Ok(Wait::Interrupted),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cleanup::{SysvGuard, SysvKind};

    #[test]
    fn values_ops_and_timeouts() {
        let set = SemSet::create(libc::IPC_PRIVATE, 2, 0o600).unwrap();
        let _remove = SysvGuard::new(SysvKind::SemaphoreSet, set.id);
        set.set_value(0, 1).unwrap();
        assert_eq!(set.value(0).unwrap(), 1);
        assert_eq!(set.value(1).unwrap(), 0);
        let tick = Duration::from_millis(20);
        assert_eq!(set.op(0, -1, false, tick).unwrap(), Wait::Acquired);
        assert_eq!(set.op(0, -1, false, tick).unwrap(), Wait::TimedOut);
        assert_eq!(set.op(1, 1, false, tick).unwrap(), Wait::Acquired);
        assert_eq!(set.value(1).unwrap(), 1);
        assert_eq!(set.last_pid(1).unwrap(), std::process::id() as i32);
        assert_eq!(set.waiting(0).unwrap(), 0);
        // Both or neither: semaphore 0 is 0, so taking from 0 and 1 together
        // must wait (and time out) without touching semaphore 1.
        assert_eq!(
            set.ops(&[(1, -1), (0, -1)], false, tick).unwrap(),
            Wait::TimedOut
        );
        assert_eq!(set.value(1).unwrap(), 1);
        set.set_value(0, 1).unwrap();
        assert_eq!(
            set.ops(&[(1, -1), (0, -1)], false, tick).unwrap(),
            Wait::Acquired
        );
        assert_eq!((set.value(0).unwrap(), set.value(1).unwrap()), (0, 0));
    }

    #[test]
    fn ftok_needs_an_existing_path() {
        let dir = std::env::temp_dir();
        assert!(ftok(&dir, b'S').is_ok());
        assert_eq!(
            ftok(&dir.join("no-such-file-xyz"), b'S'),
            Err(Errno::ENOENT)
        );
    }
}
