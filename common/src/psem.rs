//! POSIX semaphores, which `nix` does not wrap: small safe functions over
//! `libc`'s `sem_init`, `sem_open`, `sem_post`, `sem_timedwait`,
//! `sem_trywait`, `sem_getvalue`, `sem_destroy` and `sem_unlink`.
//!
//! A POSIX semaphore is a counter in *user memory*: `post` adds one, `wait`
//! takes one, and a `wait` on zero sleeps until someone posts. The counter
//! is changed with atomic instructions in the process itself; the kernel is
//! entered (through a futex) only to put a waiter to sleep or to wake one.
//! An unnamed semaphore ([`SharedSem`]) is a `sem_t` placed in memory; put
//! in a `MAP_SHARED` mapping and initialised with `pshared = 1`, it
//! synchronises the processes that map it. A named one ([`NamedSem`]) is
//! the same `sem_t` in a small file, `/dev/shm/sem.NAME`, that every
//! process opening the name maps.
//!
//! Every wait here has a timeout. A process that waits forever cannot
//! notice that its peer died, which is the classic way shared-memory
//! programs hang.

use std::fmt;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::sys::stat::{Mode, SFlag, fstat};

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

/// A named POSIX semaphore: a `sem_t` in the file `/dev/shm/sem.NAME`
/// (glibc keeps named semaphores there, beside `shm_open`'s segments, so
/// `sem_open("/x")` and `shm_open("/sem.x")` are the same file). Any process
/// allowed to open the file can map it and use the counter. Closed (or
/// unmapped) on drop; the name stays until [`unlink`].
#[derive(Debug)]
pub struct NamedSem {
    sem: SharedSem,
    /// true: we mapped the file ourselves ([`NamedSem::open_own`]), so drop
    /// unmaps it; false: it came from `sem_open`, so drop calls `sem_close`.
    mapped: bool,
}

/// Why [`NamedSem::open_own`] refused a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// A system call failed (`ENOENT`: no such semaphore, `EACCES`: not
    /// allowed to open it, `ELOOP`: a symbolic link).
    Sys(Errno),
    /// The file belongs to another user: using it would post into (or
    /// take from) somebody else's semaphore.
    Foreign { path: String, uid: u32 },
    /// It is not a semaphore: wrong size or not a regular file (another
    /// program's `shm_open` segment under the same name, for one).
    NotASemaphore { path: String, why: String },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Sys(e) => write!(f, "{e}"),
            OpenError::Foreign { path, uid } => write!(
                f,
                "{path} belongs to uid {uid}, not to us (euid {}): refusing to use it",
                nix::unistd::geteuid()
            ),
            OpenError::NotASemaphore { path, why } => {
                write!(f, "{path} is not a semaphore ({why}): refusing to use it")
            }
        }
    }
}

impl std::error::Error for OpenError {}

impl From<Errno> for OpenError {
    fn from(e: Errno) -> Self {
        OpenError::Sys(e)
    }
}

/// Where glibc keeps the named semaphore `name` ("/x" → "/dev/shm/sem.x").
pub fn sem_path(name: &str) -> String {
    format!("/dev/shm/sem.{}", name.strip_prefix('/').unwrap_or(name))
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

    /// `sem_open(name, 0)`: an existing semaphore, *unchecked*: whoever
    /// made the file, whatever its size. Prefer [`open_own`](Self::open_own).
    pub fn open(name: &str) -> nix::Result<NamedSem> {
        let c_name = std::ffi::CString::new(name).map_err(|_| Errno::EINVAL)?;
        // SAFETY: c_name is NUL-terminated; without O_CREAT no variadic
        // argument is read.
        let sem = unsafe { libc::sem_open(c_name.as_ptr(), 0) };
        NamedSem::checked(sem)
    }

    /// An existing semaphore of ours, checked before use. `sem_open(name,
    /// 0)` is `open("/dev/shm/sem.NAME")` + `mmap`, but gives no descriptor
    /// to check, so we do those two steps ourselves with an `fstat` in
    /// between: a regular file (`O_NOFOLLOW`: not a symbolic link), owned
    /// by our effective uid (also as root, who could open anyone's), exactly
    /// one `sem_t` long, holding a value from 0 to `SEM_VALUE_MAX`.
    pub fn open_own(name: &str) -> Result<NamedSem, OpenError> {
        let path = sem_path(name);
        // O_NONBLOCK: a FIFO planted under the name must not block the open.
        let fd = nix::fcntl::open(
            path.as_str(),
            OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let st = fstat(&fd)?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind != SFlag::S_IFREG {
            let why = "not a regular file".to_string();
            return Err(OpenError::NotASemaphore { path, why });
        }
        if st.st_uid != nix::unistd::geteuid().as_raw() {
            let uid = st.st_uid;
            return Err(OpenError::Foreign { path, uid });
        }
        let len = size_of::<libc::sem_t>();
        if st.st_size != len as libc::off_t {
            let why = format!(
                "{} bytes, where a sem_t is {len}: a shm_open(\"/sem.{}\") segment?",
                st.st_size,
                name.trim_start_matches('/')
            );
            return Err(OpenError::NotASemaphore { path, why });
        }
        let size = NonZeroUsize::new(len).expect("sem_t is not empty");
        // SAFETY: a new shared mapping at a kernel-chosen address of a file
        // exactly `len` bytes long (checked above).
        let base: NonNull<libc::c_void> = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }?;
        // The descriptor closes here; the mapping stays.
        let sem = NamedSem {
            sem: SharedSem {
                sem: base.as_ptr().cast(),
            },
            mapped: true,
        };
        let value = sem.sem.value()?;
        if value < 0 || value as u32 > value_max() {
            let why = format!("it holds the value {value}");
            return Err(OpenError::NotASemaphore { path, why });
        }
        Ok(sem)
    }

    fn checked(sem: *mut libc::sem_t) -> nix::Result<NamedSem> {
        if sem == libc::SEM_FAILED {
            return Err(Errno::last());
        }
        Ok(NamedSem {
            sem: SharedSem { sem },
            mapped: false,
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
        if self.mapped {
            if let Some(base) = NonNull::new(self.sem.sem.cast::<libc::c_void>()) {
                // SAFETY: exactly the mapping made in open_own, unmapped once.
                let _ = unsafe { munmap(base, size_of::<libc::sem_t>()) };
            }
        } else {
            // SAFETY: the pointer came from a successful sem_open and is
            // closed once, here.
            unsafe { libc::sem_close(self.sem.sem) };
        }
    }
}

/// `sem_unlink(name)`: remove the name; processes that have it open keep
/// using it until they close it.
pub fn unlink(name: &str) -> nix::Result<()> {
    let c_name = std::ffi::CString::new(name).map_err(|_| Errno::EINVAL)?;
    // SAFETY: c_name is NUL-terminated.
    Errno::result(unsafe { libc::sem_unlink(c_name.as_ptr()) }).map(drop)
}

/// Removes a named semaphore's name (`sem_unlink`) on drop, and on a second
/// Ctrl-C too (its file is `/dev/shm/sem.NAME`: see `cleanup`).
#[derive(Debug)]
pub struct NameGuard {
    name: String,
    object: Option<crate::cleanup::Identity>,
    _entry: crate::cleanup::Registration,
}

impl NameGuard {
    /// Take charge of `sem_unlink(name)` for a semaphore we just created.
    pub fn new(name: impl Into<String>) -> NameGuard {
        let name = name.into();
        let path = sem_path(&name);
        let object = crate::cleanup::path_identity(std::path::Path::new(&path));
        let _entry = crate::cleanup::Registration::unlink(std::path::Path::new(&path));
        NameGuard {
            name,
            object,
            _entry,
        }
    }
}

impl Drop for NameGuard {
    fn drop(&mut self) {
        // Only the semaphore we made, not one somebody put under its name.
        let now = crate::cleanup::path_identity(std::path::Path::new(&sem_path(&self.name)));
        if self.object.is_some() && now == self.object {
            let _ = unlink(&self.name);
        }
    }
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
    #[test]
    fn open_own_checks_kind_owner_and_size() {
        let name = format!("/{}", crate::cleanup::unique_name("psem-test"));
        let sem = NamedSem::create(&name, 0o600, 3).unwrap();
        let own = NamedSem::open_own(&name).unwrap();
        assert_eq!(own.sem().value().unwrap(), 3);
        own.sem().post().unwrap();
        assert_eq!(sem.sem().value().unwrap(), 4, "the same sem_t");
        drop(own);
        // Someone else's: as root we could open it, and must refuse.
        if nix::unistd::geteuid().is_root() {
            let path = sem_path(&name);
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            assert_eq!(
                NamedSem::open_own(&name).unwrap_err(),
                OpenError::Foreign { path, uid: 65534 }
            );
        }
        unlink(&name).unwrap();
        // A shm_open segment under the semaphore's file name.
        let other = format!("/{}", crate::cleanup::unique_name("psem-test"));
        let fd = nix::sys::mman::shm_open(
            format!("/sem.{}", &other[1..]).as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .unwrap();
        nix::unistd::ftruncate(&fd, 4096).unwrap();
        assert!(matches!(
            NamedSem::open_own(&other),
            Err(OpenError::NotASemaphore { .. })
        ));
        unlink(&other).unwrap();
        assert_eq!(
            NamedSem::open_own(&other).unwrap_err(),
            OpenError::Sys(Errno::ENOENT)
        );
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
