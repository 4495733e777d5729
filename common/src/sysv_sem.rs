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
//!
//! The initialisation race: `semget` creates a set and `semctl(SETVAL)`
//! gives it its values, in two calls. A process that finds the set by key
//! between them and posts has its post wiped by the creator's SETVAL. The
//! cure (TLPI's `svsem_good_init`): the creator sets the values, then makes
//! a first `semop`, which sets the set's `sem_otime`; everybody else waits
//! until `sem_otime != 0` before touching the set ([`SemSet::initialise`],
//! [`SemSet::create_initialised`], [`SemSet::initialised`]).

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

/// The largest value a System V semaphore can hold (`SEMVMX`, fixed in the
/// kernel: `kernel.sem` tunes the number of sets and semaphores, not this).
/// A SETVAL or semop beyond it fails with `ERANGE`.
pub const SEMVMX: u16 = 32767;

/// What `semctl(IPC_STAT)` tells about a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SemStat {
    /// The owner (`sem_perm.uid`): who may change or remove it.
    pub uid: u32,
    /// The creator (`sem_perm.cuid`), who keeps those rights even after
    /// handing the set to another owner with `IPC_SET`.
    pub cuid: u32,
    /// The permission bits (`sem_perm.mode & 0777`).
    pub mode: u32,
    /// How many semaphores the set has.
    pub nsems: u64,
    /// The time of the last `semop`, 0 if there was none yet.
    pub otime: i64,
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

    /// A new set with `values`, free of the initialisation race: `create`,
    /// then [`initialise`](Self::initialise). If any step fails the set is
    /// removed again: a failed create leaves nothing.
    pub fn create_initialised(key: libc::key_t, mode: u32, values: &[u16]) -> nix::Result<SemSet> {
        let n = u16::try_from(values.len()).map_err(|_| Errno::EINVAL)?;
        let set = SemSet::create(key, n, mode)?;
        if let Err(e) = set.initialise(values) {
            let _ = set.remove();
            return Err(e);
        }
        Ok(set)
    }

    /// The creator's half of the race-free start: SETVAL every semaphore to
    /// 0, then one `semop` adding `values` (no SEM_UNDO: the values must
    /// outlive us). That first semop sets `sem_otime`, the sign other
    /// processes wait for; a `sem_op` of 0 (for a value of 0) waits for zero,
    /// which succeeds at once and still counts as a semop.
    pub fn initialise(&self, values: &[u16]) -> nix::Result<()> {
        let mut sops = Vec::with_capacity(values.len());
        for (i, &value) in values.iter().enumerate() {
            let index = u16::try_from(i).map_err(|_| Errno::EINVAL)?;
            let delta = i16::try_from(value).map_err(|_| Errno::ERANGE)?;
            self.set_value(index, 0)?;
            sops.push((index, delta));
        }
        match self.ops(&sops, false, Duration::from_secs(1))? {
            Wait::Acquired => Ok(()),
            // Every value is 0, so nothing can make this wait.
            Wait::TimedOut | Wait::Interrupted => Err(Errno::EAGAIN),
        }
    }

    /// The others' half: has the creator made its first semop yet
    /// (`sem_otime != 0`)? Poll this, with a bound, before using a set you
    /// did not create.
    pub fn initialised(&self) -> nix::Result<bool> {
        Ok(self.stat()?.otime != 0)
    }

    /// `semctl(IPC_STAT)`: owner, mode, size and last semop time.
    pub fn stat(&self) -> nix::Result<SemStat> {
        // SAFETY: an all-zero semid_ds is a valid value (integers only).
        let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: IPC_STAT writes one semid_ds through the pointer passed as
        // the variadic argument (the `buf` member of union semun).
        let rc =
            unsafe { libc::semctl(self.id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) };
        Errno::result(rc)?;
        Ok(SemStat {
            uid: ds.sem_perm.uid,
            cuid: ds.sem_perm.cuid,
            mode: u32::from(ds.sem_perm.mode) & 0o777,
            nsems: ds.sem_nsems as u64,
            otime: ds.sem_otime as i64,
        })
    }

    /// `semctl(IPC_RMID)`: remove the set now; waiters fail with `EIDRM`.
    pub fn remove(&self) -> nix::Result<()> {
        // SAFETY: IPC_RMID takes no fourth argument.
        Errno::result(unsafe { libc::semctl(self.id, 0, libc::IPC_RMID) }).map(drop)
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
    fn the_first_semop_marks_a_set_initialised() {
        let set = SemSet::create(libc::IPC_PRIVATE, 2, 0o600).unwrap();
        let _remove = SysvGuard::new(SysvKind::SemaphoreSet, set.id);
        let stat = set.stat().unwrap();
        assert_eq!((stat.nsems, stat.mode, stat.otime), (2, 0o600, 0));
        assert_eq!(stat.uid, nix::unistd::geteuid().as_raw());
        assert!(!set.initialised().unwrap());
        // SETVAL alone does not count: only a semop sets sem_otime.
        set.set_value(0, 5).unwrap();
        assert!(!set.initialised().unwrap());
        set.initialise(&[0, SEMVMX]).unwrap();
        assert!(set.initialised().unwrap());
        assert_eq!((set.value(0).unwrap(), set.value(1).unwrap()), (0, 32767));
        // One more would pass SEMVMX.
        assert_eq!(
            set.op(1, 1, false, Duration::from_millis(10)),
            Err(Errno::ERANGE)
        );
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
