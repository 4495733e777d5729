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
//! `error::run` exits with 128 + the signal number.
//!
//! A second Ctrl-C must end the process at once, even one stuck in a call
//! that is never interrupted, yet still leave nothing behind. So every
//! guard also writes its object into a small fixed table (no allocation,
//! no lock) when it is made, and takes it out after removing it. On the
//! second signal the handler itself walks that table with plain system
//! calls: `unlink`, `rmdir` and `kill` (to stop our children), which POSIX
//! lists as async-signal-safe, and `mq_unlink` and
//! `msgctl`/`shmctl`/`semctl(IPC_RMID)`, which it does not list but which
//! glibc makes single system calls that take no lock; then it dies of the
//! signal with its default action.
//!
//! A name is not an object: while we run, somebody may remove our FIFO,
//! socket file, `/dev/shm` segment or queue and put their own under the
//! same name. So each guard notes the object's identity (device, inode,
//! owner and file type, from `lstat` or `fstat`: a freed inode number can
//! come back at once on some filesystems) when it takes charge, and removes the name only
//! if it still names that object, on drop and in the handler alike. (One
//! system call apart, the check and the removal still leave a window; the
//! 0700 directories and 0600 modes the demos use are what closes it.)
//!
//! A test hook, opt-in: with `DEMO_EINTR_ON_SIGWINCH=1` in the environment,
//! SIGWINCH gets a handler that does nothing, so that it too interrupts
//! blocked calls, and a test's `kill -WINCH` storm exercises every EINTR
//! path of a demo (see [`stop_on_signals`]).

use std::cell::UnsafeCell;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU32, AtomicU64, Ordering};

use anyhow::Context;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use crate::error::Interrupted;

// The signal that asked us to stop, or 0, is kept in `error`, which decides
// the exit status. A handler may only touch lock-free atomics: it can run
// between any two instructions, even inside `malloc` or while a lock is held.
use crate::error::STOP_SIGNAL;

extern "C" fn record_stop(signal: libc::c_int) {
    // The first stop signal is only recorded: the demo cleans up in order.
    if STOP_SIGNAL
        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        return;
    }
    // The second one (of any of the three) ends the process now, once.
    if EMERGENCY.swap(true, Ordering::SeqCst) {
        return;
    }
    remove_registered_objects();
    // SAFETY: sigaction with SIG_DFL and raise are async-signal-safe. The
    // signal is blocked while this handler runs, so the raised one stays
    // pending and ends the process by its default action when we return:
    // the parent sees "killed by SIGINT", as after any second Ctrl-C.
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(signal, &default, std::ptr::null_mut());
        libc::raise(signal);
    }
}

/// Set once the second stop signal has started the emergency removal.
static EMERGENCY: AtomicBool = AtomicBool::new(false);

/// Catch SIGINT, SIGTERM and SIGHUP so that the demo can clean up.
pub fn stop_on_signals() -> anyhow::Result<()> {
    // No SA_RESTART: blocked calls fail with EINTR so the demo notices.
    // The mask blocks the other two stop signals while the handler runs,
    // so the handler is never interrupted by itself.
    let mut mask = SigSet::empty();
    for signal in STOP_SIGNALS {
        mask.add(signal);
    }
    let action = SigAction::new(SigHandler::Handler(record_stop), SaFlags::empty(), mask);
    for signal in STOP_SIGNALS {
        // SAFETY: `record_stop` touches only atomics and the emergency
        // table, and calls only async-signal-safe system calls.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("sigaction({signal})"))?;
    }
    if std::env::var_os("DEMO_EINTR_ON_SIGWINCH").is_some_and(|v| v == "1") {
        interrupt_on_sigwinch()?;
    }
    Ok(())
}

const STOP_SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// Test hook: make SIGWINCH interrupt blocked calls.
///
/// SIGWINCH (the terminal was resized) is ignored by default and then
/// interrupts nothing. A handler that does nothing makes it interrupt
/// blocked calls with EINTR, like any handled signal: `kill -WINCH` in a
/// loop then exercises every EINTR path of a demo while it works. Only
/// installed when `DEMO_EINTR_ON_SIGWINCH=1`; the tests set it.
fn interrupt_on_sigwinch() -> anyhow::Result<()> {
    let nothing = SigAction::new(
        SigHandler::Handler(do_nothing),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: `do_nothing` does nothing, so it is async-signal-safe.
    unsafe { sigaction(Signal::SIGWINCH, &nothing) }.context("sigaction(SIGWINCH)")?;
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

// ---------------------------------------------------------------------------
// The emergency table: what a second Ctrl-C removes. A first reading may
// skip this part; the guards below are what a demo uses.

/// How many objects one process can have in the table at once; more than
/// any demo holds. A guard that finds no free entry still removes its
/// object on drop; only the second-Ctrl-C path misses it.
const ENTRIES: usize = 32;
/// Longest path (with its NUL) an entry holds; a longer one is not entered.
const PATH_BYTES: usize = 512;

const FREE: u8 = 0;
const BUSY: u8 = 1;
const READY: u8 = 2;

/// What the signal handler does with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Removal {
    /// `unlink(path)`: a FIFO, a socket file, `/dev/shm/NAME`.
    Unlink = 1,
    /// Empty the directory (one level), then `rmdir(path)`.
    Rmdir = 2,
    /// `mq_unlink(path)`.
    MqUnlink = 3,
    /// `msgctl`/`shmctl`/`semctl(id, IPC_RMID)`.
    MsgRmid = 4,
    ShmRmid = 5,
    SemRmid = 6,
    /// `kill(id, SIGTERM)`: a child that cleans up its own objects.
    StopChild = 7,
}

struct Entry {
    state: AtomicU8,
    removal: AtomicU8,
    /// The process that entered it: a forked child inherits the table but
    /// must never remove its parent's objects.
    owner: AtomicI32,
    /// System V id or child pid.
    id: AtomicI32,
    /// The object's identity when it was entered: the handler removes a
    /// name only if it still names that object. `kind` is the owner's uid
    /// in the high half and the file type bits in the low half.
    dev: AtomicU64,
    ino: AtomicU64,
    kind: AtomicU64,
    /// NUL-terminated; written only while `state` is BUSY.
    path: UnsafeCell<[u8; PATH_BYTES]>,
}

// SAFETY: `path` is written only by the thread that moved `state` from FREE
// to BUSY, and read only after `state` is READY (Acquire/Release pairs), so
// no read overlaps a write. The demos are single-threaded; a handler that
// interrupts a write sees BUSY and skips the entry.
unsafe impl Sync for Entry {}

static TABLE: [Entry; ENTRIES] = [const {
    Entry {
        state: AtomicU8::new(FREE),
        removal: AtomicU8::new(0),
        owner: AtomicI32::new(0),
        id: AtomicI32::new(0),
        dev: AtomicU64::new(0),
        ino: AtomicU64::new(0),
        kind: AtomicU64::new(0),
        path: UnsafeCell::new([0; PATH_BYTES]),
    }
}; ENTRIES];

/// An object's place in the emergency table; dropping it takes the object
/// out (after the guard has removed the object itself).
#[derive(Debug)]
pub struct Registration(Option<usize>);

impl Registration {
    fn enter(removal: Removal, id: i32, path: &[u8]) -> Registration {
        Self::enter_object(removal, id, path, (0, 0, 0))
    }

    fn enter_object(
        removal: Removal,
        id: i32,
        path: &[u8],
        (dev, ino, kind): Identity,
    ) -> Registration {
        if path.len() >= PATH_BYTES || path.contains(&0) {
            return Registration(None);
        }
        for (index, entry) in TABLE.iter().enumerate() {
            if entry
                .state
                .compare_exchange(FREE, BUSY, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // SAFETY: we moved this entry to BUSY, so nobody else writes it
            // and the handler does not read it until it is READY.
            let bytes = unsafe { &mut *entry.path.get() };
            bytes[..path.len()].copy_from_slice(path);
            bytes[path.len()] = 0;
            entry.removal.store(removal as u8, Ordering::Relaxed);
            entry.id.store(id, Ordering::Relaxed);
            entry.dev.store(dev, Ordering::Relaxed);
            entry.ino.store(ino, Ordering::Relaxed);
            entry.kind.store(kind, Ordering::Relaxed);
            entry
                .owner
                .store(std::process::id() as i32, Ordering::Relaxed);
            entry.state.store(READY, Ordering::Release);
            return Registration(Some(index));
        }
        Registration(None)
    }

    /// Enter a file name for `unlink` on a second Ctrl-C: the object the
    /// name has now (nothing, if it names nothing).
    pub fn unlink(path: &Path) -> Registration {
        match path_identity(path) {
            Some(object) => Self::enter_object(Removal::Unlink, 0, path_bytes(path), object),
            None => Registration(None),
        }
    }

    /// Enter a child process for SIGTERM on a second Ctrl-C (it then
    /// removes its own objects). Drop it once the child has been reaped:
    /// after that the pid may belong to somebody else.
    pub fn child(pid: i32) -> Registration {
        if pid <= 0 {
            return Registration(None);
        }
        Self::enter(Removal::StopChild, pid, b"")
    }
}

/// Which object a name stands for: (st_dev, st_ino, st_uid << 32 | the
/// file type bits of st_mode). The owner and type tell apart a new object
/// that got a freed inode number back.
pub type Identity = (u64, u64, u64);

fn identity_of(st: &libc::stat) -> Identity {
    let kind = (u64::from(st.st_uid) << 32) | u64::from(st.st_mode & libc::S_IFMT);
    (st.st_dev, st.st_ino, kind)
}

/// The object `path` names now (`lstat`: a symlink is itself, not its
/// target), if any.
pub fn path_identity(path: &Path) -> Option<Identity> {
    let path = std::ffi::CString::new(path_bytes(path)).ok()?;
    // SAFETY: a valid NUL-terminated path; `st` is written by lstat before
    // we read it.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::lstat(path.as_ptr(), &mut st) == 0).then(|| identity_of(&st))
    }
}

/// The POSIX message queue `name` (with its slash) names now: on Linux a
/// queue descriptor is a file descriptor of the mqueue filesystem, which
/// `fstat` describes, mounted or not.
pub fn mq_identity(name: &str) -> Option<Identity> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated name; O_RDONLY without O_CREAT takes
    // no further arguments.
    let mqd = unsafe { libc::mq_open(name.as_ptr(), libc::O_RDONLY) };
    if mqd < 0 {
        return None;
    }
    // SAFETY: `st` is written by fstat before we read it; mqd is ours to close.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        let ok = libc::fstat(mqd, &mut st) == 0;
        libc::mq_close(mqd);
        ok.then(|| identity_of(&st))
    }
}

fn path_bytes(path: &Path) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes()
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(index) = self.0 {
            TABLE[index].state.store(FREE, Ordering::Release);
        }
    }
}

/// The second stop signal's work: remove every object this process
/// entered, newest first (a socket file before its directory), with
/// async-signal-safe system calls only, then ask our children to stop.
fn remove_registered_objects() {
    // SAFETY: getpid is async-signal-safe.
    let me = unsafe { libc::getpid() };
    for pass in [false, true] {
        for entry in TABLE.iter().rev() {
            if entry.state.load(Ordering::Acquire) != READY
                || entry.owner.load(Ordering::Relaxed) != me
            {
                continue;
            }
            let removal = entry.removal.load(Ordering::Relaxed);
            // Objects first, then children (they clean up their own).
            if (removal == Removal::StopChild as u8) != pass {
                continue;
            }
            let id = entry.id.load(Ordering::Relaxed);
            let object = (
                entry.dev.load(Ordering::Relaxed),
                entry.ino.load(Ordering::Relaxed),
                entry.kind.load(Ordering::Relaxed),
            );
            let path = entry.path.get().cast::<libc::c_char>();
            // SAFETY: READY entries hold a NUL-terminated path that nobody
            // writes until the entry is freed; every call below is a plain
            // system call, async-signal-safe, whose failure we ignore
            // (the object may already be gone).
            unsafe {
                match removal {
                    r if r == Removal::Unlink as u8 => {
                        // lstat(2) first: only the object we made.
                        let mut st: libc::stat = std::mem::zeroed();
                        if libc::lstat(path, &mut st) == 0 && identity_of(&st) == object {
                            libc::unlink(path);
                        }
                    }
                    r if r == Removal::Rmdir as u8 => empty_and_rmdir(path),
                    r if r == Removal::MqUnlink as u8 => {
                        // The system calls take the name without its slash.
                        // mq_open + fstat first: only the queue we made.
                        let fd = libc::syscall(
                            libc::SYS_mq_open,
                            path.add(1),
                            libc::O_RDONLY,
                            0,
                            std::ptr::null::<libc::mq_attr>(),
                        ) as libc::c_int;
                        if fd >= 0 {
                            let mut st: libc::stat = std::mem::zeroed();
                            let same = libc::fstat(fd, &mut st) == 0 && identity_of(&st) == object;
                            libc::close(fd);
                            if same {
                                libc::syscall(libc::SYS_mq_unlink, path.add(1));
                            }
                        }
                    }
                    r if r == Removal::MsgRmid as u8 => {
                        libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut());
                    }
                    r if r == Removal::ShmRmid as u8 => {
                        libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                    }
                    r if r == Removal::SemRmid as u8 => {
                        libc::semctl(id, 0, libc::IPC_RMID);
                    }
                    r if r == Removal::StopChild as u8 => {
                        libc::kill(id, libc::SIGTERM);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Unlink every entry of directory `path` (one level: our private
/// directories hold FIFOs, sockets and key files), then remove it.
/// Only `open`, `getdents64`, `unlinkat`, `close`, `rmdir`: all system calls.
///
/// # Safety
/// `path` must point to a NUL-terminated string.
unsafe fn empty_and_rmdir(path: *const libc::c_char) {
    // SAFETY: the caller passes a NUL-terminated path; the buffer is ours
    // and getdents64 writes at most its length; each record's name is
    // NUL-terminated inside the bytes getdents64 returned.
    unsafe {
        let dir = libc::open(path, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW);
        if dir >= 0 {
            let mut buf = [0u8; 4096];
            loop {
                let n = libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len());
                if n <= 0 {
                    break;
                }
                let mut at = 0usize;
                while at < n as usize {
                    // struct linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name
                    let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
                    let name = buf.as_ptr().add(at + 19).cast::<libc::c_char>();
                    let dot = *name == b'.' as libc::c_char;
                    let is_dot = dot && *name.add(1) == 0;
                    let is_dotdot =
                        dot && *name.add(1) == b'.' as libc::c_char && *name.add(2) == 0;
                    if !is_dot && !is_dotdot {
                        libc::unlinkat(dir, name, 0);
                    }
                    if reclen == 0 {
                        break;
                    }
                    at += reclen;
                }
            }
            libc::close(dir);
        }
        libc::rmdir(path);
    }
}

/// A name no other process or test uses at the same time: `PREFIX-PID-N`.
///
/// N starts at a random number, chosen once per process, and counts up: a
/// local user who wants to stop a demo by creating its next file or object
/// first (a squatter) cannot predict it from the pid alone.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        let mut bytes = [0u8; 4];
        // SAFETY: getrandom writes at most `bytes.len()` bytes into `bytes`.
        let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if got == 4 {
            u32::from_ne_bytes(bytes) >> 4
        } else {
            // No getrandom (very old kernel): the clock is still not the pid.
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        }
    });
    let n = u64::from(start) + u64::from(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Where private directories go: `$XDG_RUNTIME_DIR` (a per-user tmpfs) if
/// set and writable, else the temp dir; always an absolute path.
pub fn runtime_dir() -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        // A directory we cannot create in (a read-only mount, a session
        // that ended) is no reason to fail: the temp dir will do.
        .filter(|p| p.is_dir() && may_create_in(p))
        .unwrap_or_else(std::env::temp_dir);
    // A relative TMPDIR would give relative paths, and those go into
    // messages a process in another directory acts on (the FIFO server
    // refuses a reply path that is not absolute): anchor it at the cwd.
    std::path::absolute(&dir).unwrap_or(dir)
}

/// access(W_OK | X_OK): may this process create names in `dir`? (Through
/// libc, as the guards: a copied demo's nix may lack the `fs` feature.)
fn may_create_in(dir: &Path) -> bool {
    let Ok(dir) = std::ffi::CString::new(path_bytes(dir)) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path; access only reads it.
    unsafe { libc::access(dir.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// A fresh 0700 directory, removed with its contents on drop.
///
/// FIFOs and socket files go in here rather than straight into `/tmp`:
/// nobody else can create, replace or open anything inside it.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
    /// Emptied and removed by a second Ctrl-C too.
    _entry: Registration,
}

impl PrivateDir {
    /// Create `<runtime dir>/<prefix>-<pid>-<n>` with mode 0700.
    pub fn create(prefix: &str) -> anyhow::Result<PrivateDir> {
        use std::os::unix::fs::DirBuilderExt;
        // mkdir fails if the name exists, like O_EXCL: we never reuse a
        // directory somebody else may have prepared; we take the next name.
        let mut tries = 0;
        let path = loop {
            let path = runtime_dir().join(unique_name(prefix));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => break path,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
                Err(e) => return Err(e).with_context(|| format!("mkdir({})", path.display())),
            }
        };
        // The mode given to mkdir is masked by the umask: set it exactly.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .with_context(|| format!("chmod({}, 0700)", path.display()))?;
        let _entry = Registration::enter(Removal::Rmdir, 0, path_bytes(&path));
        Ok(PrivateDir { path, _entry })
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

/// Removes a filesystem name (FIFO, socket file) on drop, if it still
/// names the object it named when the guard was made.
#[derive(Debug)]
pub struct PathGuard {
    path: PathBuf,
    object: Option<Identity>,
    _entry: Registration,
}

impl PathGuard {
    /// Take charge of removing `path`, which this process just created.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let object = path_identity(&path);
        let _entry = Registration::unlink(&path);
        PathGuard {
            path,
            object,
            _entry,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PathGuard {
    fn drop(&mut self) {
        // Gone (the peer may have removed it first) or replaced by somebody
        // else's file: not ours to remove.
        if self.object.is_some() && path_identity(&self.path) == self.object {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes a POSIX shared memory object (`/dev/shm/NAME`) on drop.
#[derive(Debug)]
pub struct ShmGuard {
    name: String,
    object: Option<Identity>,
    _entry: Registration,
}

impl ShmGuard {
    /// Take charge of `shm_unlink(name)` for the object `name` (starting
    /// with `/`) names now, which this process just created.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        // shm_unlink(NAME) is unlink("/dev/shm/NAME") on Linux; the handler
        // uses the plain system call.
        let path = format!("/dev/shm{name}");
        let object = path_identity(Path::new(&path));
        let _entry = Registration::unlink(Path::new(&path));
        ShmGuard {
            name,
            object,
            _entry,
        }
    }
}

impl Drop for ShmGuard {
    fn drop(&mut self) {
        // Still the segment we made? (Not somebody's under the same name.)
        let now = path_identity(Path::new(&format!("/dev/shm{}", self.name)));
        if self.object.is_none() || now != self.object {
            return;
        }
        // Unlinking removes the name; mappings still open stay valid until
        // they are unmapped, like an unlinked file. (Through libc: this file
        // goes into every copied demo, and so needs no nix feature of the
        // mechanisms it cleans up.)
        let Ok(name) = std::ffi::CString::new(self.name.as_str()) else {
            return;
        };
        // SAFETY: `name` is a valid NUL-terminated string.
        unsafe { libc::shm_unlink(name.as_ptr()) };
    }
}

/// Removes a POSIX message queue (`/dev/mqueue/NAME`) on drop.
#[derive(Debug)]
pub struct MqGuard {
    name: String,
    object: Option<Identity>,
    _entry: Registration,
}

impl MqGuard {
    /// Take charge of `mq_unlink(name)` for the queue `name` (starting with
    /// `/`) names now, which this process just created or took over.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        let object = mq_identity(&name);
        let _entry = match object {
            Some(object) => {
                Registration::enter_object(Removal::MqUnlink, 0, name.as_bytes(), object)
            }
            None => Registration(None),
        };
        MqGuard {
            name,
            object,
            _entry,
        }
    }
}

impl Drop for MqGuard {
    fn drop(&mut self) {
        // Still the queue we made? (Not somebody's under the same name.)
        if self.object.is_none() || mq_identity(&self.name) != self.object {
            return;
        }
        // Through libc, as for ShmGuard: no nix `mqueue` feature needed.
        let Ok(name) = std::ffi::CString::new(self.name.as_str()) else {
            return;
        };
        // SAFETY: `name` is a valid NUL-terminated string.
        unsafe { libc::mq_unlink(name.as_ptr()) };
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
    _entry: Registration,
}

impl SysvGuard {
    /// Take charge of removing the object `id` returned by `msgget`,
    /// `shmget` or `semget`.
    pub fn new(kind: SysvKind, id: libc::c_int) -> Self {
        let removal = match kind {
            SysvKind::MessageQueue => Removal::MsgRmid,
            SysvKind::SharedMemory => Removal::ShmRmid,
            SysvKind::SemaphoreSet => Removal::SemRmid,
        };
        let _entry = Registration::enter(removal, id, b"");
        SysvGuard { kind, id, _entry }
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
        // N starts at random, not at 0: a squatter cannot create "t-PID-0"
        // ahead of us. (Below 1000 by chance: about 4 runs in a million.)
        let n: u64 = a.rsplit('-').next().unwrap().parse().unwrap();
        assert!(n >= 1000, "{a}: N looks like a plain counter");
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
    fn guards_leave_alone_a_name_that_now_names_another_object() {
        // A file put under our FIFO's name while we ran.
        let dir = PrivateDir::create("common-test").unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
        let guard = PathGuard::new(&fifo);
        std::fs::remove_file(&fifo).unwrap();
        std::fs::write(&fifo, b"somebody else's").unwrap();
        drop(guard);
        assert_eq!(std::fs::read(&fifo).unwrap(), b"somebody else's");

        // A segment made again under our segment's name.
        let name = format!("/{}", unique_name("common-test-shm"));
        let make = || {
            nix::sys::mman::shm_open(
                name.as_str(),
                OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
                Mode::S_IRUSR | Mode::S_IWUSR,
            )
            .unwrap()
        };
        drop(make());
        let guard = ShmGuard::new(&name);
        nix::sys::mman::shm_unlink(name.as_str()).unwrap();
        let _other = make();
        drop(guard);
        assert!(nix::sys::mman::shm_open(name.as_str(), OFlag::O_RDWR, Mode::empty()).is_ok());
        nix::sys::mman::shm_unlink(name.as_str()).unwrap();

        // A queue made again under our queue's name.
        let name = format!("/{}", unique_name("common-test-mq"));
        let c_name = std::ffi::CString::new(name.as_str()).unwrap();
        let make = || {
            // SAFETY: a valid name; the mode and a null attr for O_CREAT.
            let mqd = unsafe {
                libc::mq_open(
                    c_name.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
                    0o600,
                    std::ptr::null::<libc::mq_attr>(),
                )
            };
            assert!(mqd >= 0, "mq_open: {}", io::Error::last_os_error());
            // SAFETY: ours to close.
            unsafe { libc::mq_close(mqd) };
        };
        make();
        let guard = MqGuard::new(&name);
        assert!(guard.object.is_some());
        // SAFETY: a valid name.
        unsafe { libc::mq_unlink(c_name.as_ptr()) };
        make();
        drop(guard);
        assert!(mq_identity(&name).is_some(), "the other queue was removed");
        // SAFETY: a valid name.
        unsafe { libc::mq_unlink(c_name.as_ptr()) };
        // And the guard of a queue still ours removes it.
        make();
        drop(MqGuard::new(&name));
        assert!(mq_identity(&name).is_none());
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
