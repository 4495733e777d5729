//! POSIX semaphores, which `nix` does not wrap: small safe functions over
//! `libc`'s `sem_init`, `sem_post`, `sem_timedwait`, `sem_trywait`,
//! `sem_getvalue` and `sem_destroy`.
//!
//! A semaphore is a counter in the kernel's care: `post` adds one, `wait`
//! takes one, and a `wait` on zero sleeps until someone posts. An unnamed
//! semaphore ([`SharedSem`]) is a `sem_t` placed in memory; put in a
//! `MAP_SHARED` mapping and initialised with `pshared = 1`, it synchronises
//! the processes that map it.
//!
//! Every wait here has a timeout. A process that waits forever cannot
//! notice that its peer died, which is the classic way shared-memory
//! programs hang.

use std::time::Duration;

use nix::errno::Errno;

/// How a timed wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// We took one from the counter.
    Acquired,
    /// The timeout passed with the counter at zero.
    TimedOut,
    /// A signal handler ran (`EINTR`); check for a stop request, then wait again.
    Interrupted,
}

/// An unnamed POSIX semaphore inside shared memory. It does not own that
/// memory: the mapping must stay in place while the semaphore is used.
#[derive(Debug, Clone, Copy)]
pub struct SharedSem {
    sem: *mut libc::sem_t,
}

impl SharedSem {
    /// `sem_init(sem, pshared = 1, value)`: make a new process-shared semaphore.
    ///
    /// # Safety
    ///
    /// `sem` must point to writable memory, aligned for and as large as a
    /// `sem_t`, that stays mapped while the returned value (or a copy) is
    /// used, and that no other process uses before this returns.
    pub unsafe fn init(sem: *mut libc::sem_t, value: u32) -> nix::Result<SharedSem> {
        // SAFETY: the caller guarantees `sem` is valid memory for a sem_t.
        Errno::result(unsafe { libc::sem_init(sem, 1, value) })?;
        Ok(SharedSem { sem })
    }

    /// A semaphore that another process already initialised with [`init`](Self::init).
    ///
    /// # Safety
    ///
    /// As for [`init`](Self::init), and `sem` holds an initialised,
    /// not yet destroyed, process-shared semaphore.
    pub unsafe fn attach(sem: *mut libc::sem_t) -> SharedSem {
        SharedSem { sem }
    }

    /// `sem_post`: add one, waking one waiter if any.
    pub fn post(&self) -> nix::Result<()> {
        // SAFETY: `self.sem` is an initialised semaphore (constructor contract).
        Errno::result(unsafe { libc::sem_post(self.sem) }).map(drop)
    }

    /// `sem_timedwait`: take one, waiting at most `timeout`.
    pub fn wait_for(&self, timeout: Duration) -> nix::Result<Wait> {
        // sem_timedwait takes an absolute CLOCK_REALTIME deadline.
        let deadline = deadline_after(timeout)?;
        // SAFETY: initialised semaphore; `deadline` is a valid timespec.
        match Errno::result(unsafe { libc::sem_timedwait(self.sem, &deadline) }) {
            Ok(_) => Ok(Wait::Acquired),
            Err(Errno::ETIMEDOUT) => Ok(Wait::TimedOut),
            Err(Errno::EINTR) => Ok(Wait::Interrupted),
            Err(e) => Err(e),
        }
    }

    /// `sem_trywait`: take one if the counter is above zero, never waiting.
    pub fn try_wait(&self) -> nix::Result<bool> {
        // SAFETY: initialised semaphore.
        match Errno::result(unsafe { libc::sem_trywait(self.sem) }) {
            Ok(_) => Ok(true),
            Err(Errno::EAGAIN) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `sem_getvalue`: the counter now (already stale when you read it).
    pub fn value(&self) -> nix::Result<i32> {
        let mut value = 0;
        // SAFETY: initialised semaphore; `value` is a valid out-pointer.
        Errno::result(unsafe { libc::sem_getvalue(self.sem, &mut value) })?;
        Ok(value)
    }

    /// `sem_destroy`.
    ///
    /// # Safety
    ///
    /// No process is waiting on the semaphore or will use it again.
    pub unsafe fn destroy(self) -> nix::Result<()> {
        // SAFETY: the caller guarantees nobody uses it any more.
        Errno::result(unsafe { libc::sem_destroy(self.sem) }).map(drop)
    }
}

/// A named POSIX semaphore (`sem_open`): a kernel-backed counter that any
/// process can open by name (it shows up as `/dev/shm/sem.NAME`). Closed
/// on drop; the name stays until [`unlink`].
#[derive(Debug)]
pub struct NamedSem {
    sem: SharedSem,
}

impl NamedSem {
    /// `sem_open(name, O_CREAT | O_EXCL, mode, value)`: a new semaphore,
    /// failing with EEXIST rather than reuse somebody's.
    pub fn create(name: &str, mode: u32, value: u32) -> nix::Result<NamedSem> {
        let flags = libc::O_CREAT | libc::O_EXCL;
        let c_name = std::ffi::CString::new(name).map_err(|_| Errno::EINVAL)?;
        // SAFETY: c_name is NUL-terminated; with O_CREAT sem_open reads the
        // two variadic arguments, a mode_t and an unsigned int, as passed.
        let sem = unsafe { libc::sem_open(c_name.as_ptr(), flags, mode as libc::mode_t, value) };
        NamedSem::checked(sem)
    }

    /// `sem_open(name, 0)`: an existing semaphore.
    pub fn open(name: &str) -> nix::Result<NamedSem> {
        let c_name = std::ffi::CString::new(name).map_err(|_| Errno::EINVAL)?;
        // SAFETY: c_name is NUL-terminated; without O_CREAT no variadic
        // argument is read.
        let sem = unsafe { libc::sem_open(c_name.as_ptr(), 0) };
        NamedSem::checked(sem)
    }

    fn checked(sem: *mut libc::sem_t) -> nix::Result<NamedSem> {
        if sem == libc::SEM_FAILED {
            return Err(Errno::last());
        }
        Ok(NamedSem {
            sem: SharedSem { sem },
        })
    }

    /// The semaphore's operations (post, wait_for, try_wait, value). The
    /// copy must not be used after this `NamedSem` is dropped (closed).
    pub fn sem(&self) -> SharedSem {
        self.sem
    }
}

impl Drop for NamedSem {
    fn drop(&mut self) {
        // SAFETY: the pointer came from a successful sem_open and is closed
        // once, here.
        unsafe { libc::sem_close(self.sem.sem) };
    }
}

/// `sem_unlink(name)`: remove the name; processes that have it open keep
/// using it until they close it.
pub fn unlink(name: &str) -> nix::Result<()> {
    let c_name = std::ffi::CString::new(name).map_err(|_| Errno::EINVAL)?;
    // SAFETY: c_name is NUL-terminated.
    Errno::result(unsafe { libc::sem_unlink(c_name.as_ptr()) }).map(drop)
}

/// The largest value a semaphore can hold (`SEM_VALUE_MAX`).
pub fn value_max() -> u32 {
    // SAFETY: sysconf takes no pointers.
    let max = unsafe { libc::sysconf(libc::_SC_SEM_VALUE_MAX) };
    u32::try_from(max).unwrap_or(i32::MAX as u32)
}

/// Now + `timeout` on CLOCK_REALTIME, as `sem_timedwait` wants it.
fn deadline_after(timeout: Duration) -> nix::Result<libc::timespec> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)?;
    let mut sec = now.tv_sec() + timeout.as_secs() as libc::time_t;
    let mut nsec = now.tv_nsec() + timeout.subsec_nanos() as libc::c_long;
    if nsec >= 1_000_000_000 {
        sec += 1;
        nsec -= 1_000_000_000;
    }
    Ok(libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_semaphores_are_created_once_opened_and_unlinked() {
        let name = format!("/{}", crate::cleanup::unique_name("psem-test"));
        let sem = NamedSem::create(&name, 0o600, 2).unwrap();
        assert_eq!(
            NamedSem::create(&name, 0o600, 2).unwrap_err(),
            Errno::EEXIST
        );
        let again = NamedSem::open(&name).unwrap();
        assert!(again.sem().try_wait().unwrap());
        assert_eq!(sem.sem().value().unwrap(), 1);
        unlink(&name).unwrap();
        assert_eq!(NamedSem::open(&name).unwrap_err(), Errno::ENOENT);
        // Still usable through the handles we hold.
        sem.sem().post().unwrap();
        assert_eq!(again.sem().value().unwrap(), 2);
        assert!(value_max() >= 32767);
    }
    use std::mem::MaybeUninit;
    use std::time::Instant;

    #[test]
    fn post_wait_value_and_timeout() {
        // Private memory is enough to test the calls in one process.
        let mut memory = Box::new(MaybeUninit::<libc::sem_t>::uninit());
        // SAFETY: the box is aligned sem_t memory that outlives `sem`.
        let sem = unsafe { SharedSem::init(memory.as_mut_ptr(), 1) }.unwrap();
        assert_eq!(sem.value().unwrap(), 1);
        assert!(sem.try_wait().unwrap());
        assert!(!sem.try_wait().unwrap());
        let start = Instant::now();
        assert_eq!(
            sem.wait_for(Duration::from_millis(50)).unwrap(),
            Wait::TimedOut
        );
        assert!(start.elapsed() >= Duration::from_millis(40));
        sem.post().unwrap();
        assert_eq!(
            sem.wait_for(Duration::from_secs(5)).unwrap(),
            Wait::Acquired
        );
        // SAFETY: nobody else has it.
        unsafe { sem.destroy() }.unwrap();
    }
}
