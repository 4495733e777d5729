//! Leave nothing behind: Ctrl-C handling and guards for named kernel objects.
//!
//! Anonymous objects (pipes, socketpairs) vanish with the last descriptor.
//! Named ones (a FIFO path, `/dev/shm` segment, message queue, System V id,
//! socket file) outlive the process unless somebody removes them. Each guard
//! here removes one object when it is dropped, so a demo that returns, even
//! with an error, cleans up.
//!
//! Ctrl-C would normally kill the process at once and skip every `drop`.
//! [`stop_on_signals`] installs a handler for SIGINT, SIGTERM and SIGHUP
//! that only records the signal. Because it is installed *without*
//! `SA_RESTART`, a blocked `read`/`write`/`open` returns `EINTR`; the demo
//! then sees [`stop_requested`], returns
//! [`Interrupted`](crate::error::Interrupted), the guards drop, and
//! `error::run` exits with 128 + the signal number. `SA_RESETHAND` restores
//! the default action after the first signal, so a second Ctrl-C always
//! ends the process, even one stuck in a call that is never interrupted.
//! SIGWINCH gets a handler that does nothing, so that it too interrupts
//! blocked calls: a way to test every EINTR path (see `stop_on_signals`).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use anyhow::Context;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use crate::error::Interrupted;

/// The signal that asked us to stop, or 0. A handler may only touch
/// lock-free atomics: it can run between any two instructions, even inside
/// `malloc` or while a lock is held.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn record_stop(signal: libc::c_int) {
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
}

/// Catch SIGINT, SIGTERM and SIGHUP so that the demo can clean up.
pub fn stop_on_signals() -> anyhow::Result<()> {
    // No SA_RESTART: blocked calls fail with EINTR so the demo notices.
    // SA_RESETHAND: the second signal gets the default action (terminate).
    let action = SigAction::new(
        SigHandler::Handler(record_stop),
        SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: `record_stop` only stores to an atomic, which is
        // async-signal-safe; no other handler state exists to race with.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("sigaction({signal})"))?;
    }
    // SIGWINCH (the terminal was resized) is ignored by default and then
    // interrupts nothing. A handler that does nothing makes it interrupt
    // blocked calls with EINTR, like any handled signal: resizing the
    // terminal, or `kill -WINCH` in a loop, exercises every EINTR path of a
    // demo while it works. The tests do exactly that.
    let ignore = SigAction::new(
        SigHandler::Handler(do_nothing),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: `do_nothing` does nothing, so it is async-signal-safe.
    unsafe { sigaction(Signal::SIGWINCH, &ignore) }.context("sigaction(SIGWINCH)")?;
    Ok(())
}

extern "C" fn do_nothing(_: libc::c_int) {}

/// The stop signal received so far, if any.
pub fn stop_requested() -> Option<Signal> {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        n => Signal::try_from(n).ok(),
    }
}

/// `Err(Interrupted)` once a stop signal has arrived: call it in loops.
pub fn check_stop() -> anyhow::Result<()> {
    match stop_requested() {
        Some(signal) => Err(Interrupted(signal).into()),
        None => Ok(()),
    }
}

fn check_stop_io() -> io::Result<()> {
    match stop_requested() {
        Some(signal) => Err(io::Error::other(Interrupted(signal))),
        None => Ok(()),
    }
}

/// A `Read`/`Write` wrapper that ends a blocked call on a stop signal.
///
/// Careful readers retry `EINTR` (see `frame`), which would also retry
/// after Ctrl-C and block again. This wrapper checks the stop flag before
/// each call and after `EINTR`, and reports `Interrupted` as an error that
/// is not retried. Other signals' `EINTR` passes through to be retried.
#[derive(Debug)]
pub struct StopOnSignal<T>(pub T);

impl<T: Read> Read for StopOnSignal<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        check_stop_io()?;
        let result = self.0.read(buf);
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::Interrupted) {
            check_stop_io()?;
        }
        result
    }
}

impl<T: Write> Write for StopOnSignal<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        check_stop_io()?;
        let result = self.0.write(buf);
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::Interrupted) {
            check_stop_io()?;
        }
        result
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// A name no other process or test uses at the same time: `PREFIX-PID-N`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Where private directories go: `$XDG_RUNTIME_DIR` (a per-user tmpfs) if
/// set, else the temp dir.
pub fn runtime_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

/// A fresh 0700 directory, removed with its contents on drop.
///
/// FIFOs and socket files go in here rather than straight into `/tmp`:
/// nobody else can create, replace or open anything inside it.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// Create `<runtime dir>/<prefix>-<pid>-<n>` with mode 0700.
    pub fn create(prefix: &str) -> anyhow::Result<PrivateDir> {
        use std::os::unix::fs::DirBuilderExt;
        let path = runtime_dir().join(unique_name(prefix));
        // mkdir fails if the name exists, like O_EXCL: we never reuse a
        // directory somebody else may have prepared.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("mkdir({})", path.display()))?;
        Ok(PrivateDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes a filesystem name (FIFO, socket file) on drop.
#[derive(Debug)]
pub struct PathGuard {
    path: PathBuf,
}

impl PathGuard {
    /// Take charge of removing `path`, which this process just created.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PathGuard { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PathGuard {
    fn drop(&mut self) {
        // ENOENT is fine: the peer may have removed it first.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes a POSIX shared memory object (`/dev/shm/NAME`) on drop.
#[derive(Debug)]
pub struct ShmGuard {
    name: String,
}

impl ShmGuard {
    /// Take charge of `shm_unlink(name)`; `name` starts with `/`.
    pub fn new(name: impl Into<String>) -> Self {
        ShmGuard { name: name.into() }
    }
}

impl Drop for ShmGuard {
    fn drop(&mut self) {
        // Unlinking removes the name; mappings still open stay valid until
        // they are unmapped, like an unlinked file.
        let _ = nix::sys::mman::shm_unlink(self.name.as_str());
    }
}

/// Removes a POSIX message queue (`/dev/mqueue/NAME`) on drop.
#[derive(Debug)]
pub struct MqGuard {
    name: String,
}

impl MqGuard {
    /// Take charge of `mq_unlink(name)`; `name` starts with `/`.
    pub fn new(name: impl Into<String>) -> Self {
        MqGuard { name: name.into() }
    }
}

impl Drop for MqGuard {
    fn drop(&mut self) {
        let _ = nix::mqueue::mq_unlink(self.name.as_str());
    }
}

/// The three kinds of System V IPC object, each removed by its own call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysvKind {
    MessageQueue,
    SharedMemory,
    SemaphoreSet,
}

/// Removes a System V object by id (`IPC_RMID`) on drop. System V objects
/// have no file name: they live until removed or until reboot.
#[derive(Debug)]
pub struct SysvGuard {
    kind: SysvKind,
    id: libc::c_int,
}

impl SysvGuard {
    /// Take charge of removing the object `id` returned by `msgget`,
    /// `shmget` or `semget`.
    pub fn new(kind: SysvKind, id: libc::c_int) -> Self {
        SysvGuard { kind, id }
    }

    pub fn id(&self) -> libc::c_int {
        self.id
    }
}

/// `IPC_RMID` for one System V object (nix has no System V IPC).
pub fn sysv_remove(kind: SysvKind, id: libc::c_int) -> nix::Result<()> {
    // SAFETY: IPC_RMID reads no buffer: the pointer argument is null for
    // msgctl/shmctl and absent for semctl; an invalid id just fails EINVAL.
    let rc = unsafe {
        match kind {
            SysvKind::MessageQueue => libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()),
            SysvKind::SharedMemory => libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()),
            SysvKind::SemaphoreSet => libc::semctl(id, 0, libc::IPC_RMID),
        }
    };
    nix::errno::Errno::result(rc).map(drop)
}

impl Drop for SysvGuard {
    fn drop(&mut self) {
        let _ = sysv_remove(self.kind, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;

    #[test]
    fn unique_names_differ() {
        let (a, b) = (unique_name("t"), unique_name("t"));
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("t-{}-", std::process::id())));
    }

    #[test]
    fn private_dir_is_0700_and_removed_with_contents() {
        use std::os::unix::fs::PermissionsExt;
        let dir = PrivateDir::create("common-test").unwrap();
        let path = dir.path().to_path_buf();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::write(path.join("file"), b"x").unwrap();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn path_guard_removes_a_fifo() {
        let dir = PrivateDir::create("common-test").unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
        let guard = PathGuard::new(&fifo);
        assert!(fifo.exists());
        drop(guard);
        assert!(!fifo.exists());
        // Dropping a guard whose object is already gone is quiet.
        drop(PathGuard::new(&fifo));
    }

    #[test]
    fn shm_guard_unlinks() {
        let name = format!("/{}", unique_name("common-test-shm"));
        let fd = nix::sys::mman::shm_open(
            name.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .unwrap();
        drop(fd);
        drop(ShmGuard::new(&name));
        let again = nix::sys::mman::shm_open(name.as_str(), OFlag::O_RDWR, Mode::empty());
        assert_eq!(again.unwrap_err(), nix::errno::Errno::ENOENT);
    }

    #[test]
    fn sysv_guard_removes_a_queue() {
        // SAFETY: msgget takes no pointers; IPC_PRIVATE always makes a new queue.
        let id = unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600) };
        assert!(id >= 0, "msgget: {}", io::Error::last_os_error());
        drop(SysvGuard::new(SysvKind::MessageQueue, id));
        // A second removal of the same id fails: the first one happened.
        assert_eq!(
            sysv_remove(SysvKind::MessageQueue, id),
            Err(nix::errno::Errno::EINVAL)
        );
    }

    #[test]
    fn stop_on_signal_passes_data_through() {
        let mut r = StopOnSignal(&b"abc"[..]);
        let mut buf = [0u8; 3];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"abc");
        let mut w = StopOnSignal(Vec::new());
        w.write_all(b"xyz").unwrap();
        assert_eq!(w.0, b"xyz");
    }
}
